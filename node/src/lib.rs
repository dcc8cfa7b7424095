//! wharf-node: everything that runs on a node.
//!
//! [`start`] assembles a node from a [`NodeConfig`]: its runtime and everything below.
//!
//! - [`agent`]: wharf's kubelet. It registers the Node, renews its Lease, and runs the
//!   pods bound to it on the wasm runtime (`wharf-runtime`), writing their status.
//! - [`daemon`]: the node's own HTTP server (container logs for `pods/log`, `/metrics`,
//!   `/stats/summary`); [`stats`]: the guests' resource usage it serves.
//! - [`proxy`]: wharf's kube-proxy, a user-space tower load balancer listening on every
//!   Service's cluster IP, and the name table pods resolve Services from.
//! - [`dns`]: the cluster DNS (hickory), answering for `cluster.local` from the same view.
//! - [`tunnel`]: the node tunnel, through which nodes on other machines reach this node's
//!   pods (the proxy for remote endpoints, and mirrors of remote pods' addresses).

pub mod agent;
mod assembly;
pub mod daemon;
pub mod dns;
pub mod metrics;
pub mod proxy;
pub mod reachability;
pub mod stats;
pub mod tls;
pub mod tunnel;

pub use assembly::{NodeConfig, NodeHandle, StartError, start};

/// The runtime's id for a container of a pod: stable across restarts of the container
/// (its log attempts are numbered by restart count) and unique per pod instance. The
/// kubelet names containers with it and the node server finds their logs by it.
pub fn container_id(pod_uid: &str, container: &str) -> String {
    format!("{pod_uid}_{container}")
}
