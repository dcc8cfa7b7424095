//! wharf-node: everything that runs on a node.
//!
//! - [`agent`]: wharf's kubelet. It registers the Node, renews its Lease, and runs the
//!   pods bound to it on the wasm runtime (`wharf-runtime`), writing their status.
//! - [`daemon`]: the node's own HTTP server (container logs for `pods/log`).
//!
//! The proxy and cluster DNS that give Services their addresses and names come next.

pub mod agent;
pub mod daemon;
