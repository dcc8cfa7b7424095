//! The node tunnel: how pods on one machine are reached from another.
//!
//! Pod addresses are loopback addresses (see [`crate::agent::addresses`]): every node on
//! one machine reaches every pod there directly, but loopback never leaves the machine.
//! So each node also listens on one **tunnel port** on its real address (`--address`,
//! `--tunnel-port`, 10251 by default) and publishes it on its Node as the annotation
//! `wharf.dev/tunnel: "IP:PORT"`. A peer that must reach a pod on a node at another
//! address connects there and asks for the pod with an HTTP/1.1 `CONNECT POD-IP:PORT`;
//! after `200` the connection carries the pod's bytes both ways ([`server`], [`client`]).
//!
//! **Who may use it.** Requests must carry `Proxy-Authorization: Bearer SECRET`, where
//! SECRET is the cluster's node credential: the token in `kube-system/wharf-node-proxy`,
//! which the control plane creates on its first start and which only the control plane
//! and nodes may read (a node reads Secrets one by one, by name; nobody else but an admin
//! reads them at all). It is the same trust domain as the tunnel's: the control plane and
//! the cluster's nodes. A second Secret would need a writer (nodes may not create Secrets)
//! and the same readers, so wharf uses this one; rotating it (delete the Secret, restart
//! the control plane and the nodes) rotates both. Unauthenticated requests get `407`; a
//! target that is not a declared `containerPort` of a pod with an address on this node
//! gets `403`, so the tunnel is never a way into the node's machine beyond its pods (not
//! even to a host service on `0.0.0.0`, which answers at every pod address).
//!
//! **Encrypted.** The tunnel speaks TLS only, with the node's certificate (signed by the
//! cluster CA for the node's addresses, see [`crate::tls`]), and requires a client
//! certificate of the same CA: peers present their node certificate and verify the
//! tunnel's against the CA and the tunnel's IP, so the credential never crosses the wire
//! in clear and a peer outside the cluster fails the handshake.
//!
//! **Who uses it.**
//! - The node proxy: when the endpoint it picked runs on a node at another address, it
//!   dials through that node's tunnel instead of directly ([`client::Dialer`], with the
//!   route table the proxy computes in [`crate::proxy::route`]).
//! - Pods calling a remote pod's IP directly ([`mirror`]): for every pod of a node at
//!   another address, this node listens on that pod's `podIP:containerPort` on its own
//!   loopback (possible because every node has its own pod range) and forwards each
//!   connection through the pod's node's tunnel. When the pod is in fact on this machine
//!   (two nodes of one machine with different addresses), its address is taken and the
//!   mirror is skipped.
//!
//! Counters (`wharf_tunnel_*`) are on the node server's `/metrics` ([`metrics`]).

pub mod client;
pub mod metrics;
pub mod mirror;
pub mod server;

/// The Node annotation where a node publishes its tunnel, `IP:PORT`.
pub use wharf_control::api::wellknown::TUNNEL_ANNOTATION;

/// The tunnel port of `wharf node` unless `--tunnel-port` says otherwise (the node
/// server's 10250, plus one).
pub const DEFAULT_PORT: u16 = 10251;

/// The header value a peer presents: `Bearer SECRET`.
pub fn authorization(credential: &str) -> String {
    format!("Bearer {credential}")
}
