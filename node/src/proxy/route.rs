//! Which endpoints the proxy reaches through a node tunnel, decided from the snapshot.
//!
//! Pod addresses are loopback addresses: a node reaches the pods of every node on its own
//! machine directly, and those of a node on another machine only through that node's
//! tunnel ([`crate::tunnel`]). The proxy tells the two apart by address: an endpoint
//! whose node has the same address as this node is local; one whose node has another
//! address goes through that node's tunnel, if the node publishes one. Everything else
//! (no node known, no address, no tunnel) is dialed directly, as before tunnels existed:
//! on one machine that works, and across machines there is nothing better to do.
//!
//! [`route`] is the decision for one endpoint and [`routes`] the table for a whole
//! snapshot; both are pure. The proxy hands the table to its [`Dialer`], which consults it
//! on every connect, so an endpoint's route follows its node without touching listeners,
//! endpoint sets or connections in flight.
//!
//! [`Dialer`]: crate::tunnel::client::Dialer

use super::model::Snapshot;
use crate::tunnel::client::Routes;
use std::net::{IpAddr, SocketAddr};

/// How the proxy reaches one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Connect to the pod address itself.
    Direct,
    /// Connect through this node tunnel, naming the pod address.
    Tunnel(SocketAddr),
}

/// The route to an endpoint whose node is at `node_address` with its tunnel at `tunnel`,
/// from a node at `own_address` (pure).
pub fn route(
    own_address: IpAddr,
    node_address: Option<IpAddr>,
    tunnel: Option<SocketAddr>,
) -> Route {
    match (node_address, tunnel) {
        (Some(address), Some(tunnel)) if address != own_address => Route::Tunnel(tunnel),
        _ => Route::Direct,
    }
}

/// The tunnel of every endpoint of the snapshot that is not reached directly, by pod IP.
/// An endpoint's node address is the slice's (`wharf.dev/node-addresses`), else its
/// Node's `InternalIP`; its tunnel is its Node's.
pub fn routes(snapshot: &Snapshot, own_address: IpAddr) -> Routes {
    let mut out = Routes::new();
    let backends = snapshot
        .services
        .values()
        .flat_map(|s| s.backends.values().flatten().chain(s.pods.iter()));
    for backend in backends {
        let node = backend
            .node_name
            .as_ref()
            .and_then(|n| snapshot.nodes.get(n));
        let node_address = backend
            .node_address
            .or_else(|| node.and_then(|n| n.address));
        if let Route::Tunnel(tunnel) = route(own_address, node_address, node.and_then(|n| n.tunnel))
        {
            out.insert(backend.addr.ip(), tunnel);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::model::{self, NodeInfo};
    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tunnel_only_to_nodes_at_other_addresses_that_publish_one() {
        let own = ip("10.0.0.1");
        let tunnel = Some(sa("10.0.0.2:10251"));
        assert_eq!(
            route(own, Some(ip("10.0.0.2")), tunnel),
            Route::Tunnel(sa("10.0.0.2:10251"))
        );
        // The same address: the same machine, direct.
        assert_eq!(
            route(own, Some(own), Some(sa("10.0.0.1:10251"))),
            Route::Direct
        );
        // Unknown node address or no tunnel: direct, the best there is.
        assert_eq!(route(own, None, tunnel), Route::Direct);
        assert_eq!(route(own, Some(ip("10.0.0.2")), None), Route::Direct);
    }

    fn node(name: &str, address: &str, tunnel: Option<&str>) -> Node {
        let annotations = tunnel
            .map(|t| serde_json::json!({crate::tunnel::TUNNEL_ANNOTATION: t}))
            .unwrap_or(serde_json::json!({}));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"addresses": [
                {"type": "Hostname", "address": "host"},
                {"type": "InternalIP", "address": address},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn routes_follow_slices_and_nodes() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "127.250.0.5", "ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {model::SERVICE_NAME_LABEL: "web"},
                         "annotations": {model::NODE_ADDRESSES_ANNOTATION:
                             r#"{"a": "10.0.0.1", "b": "10.0.0.2"}"#}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["127.64.0.2"], "nodeName": "a"},
                {"addresses": ["127.65.0.2"], "nodeName": "b"},
                // Not in the annotation: the Node's own address says where it is.
                {"addresses": ["127.66.0.2"], "nodeName": "c"},
                // A node that publishes no tunnel, and an endpoint without a node.
                {"addresses": ["127.67.0.2"], "nodeName": "d"},
                {"addresses": ["127.68.0.2"]},
            ],
        }))
        .unwrap();
        let mut snap = model::build(1, [&svc], [&slice]);
        let backends = snap.services.values().next().unwrap().backends_of("http");
        assert_eq!(backends[1].node_address, Some(ip("10.0.0.2")));
        assert_eq!(backends[2].node_address, None);
        snap.nodes = [
            node("a", "10.0.0.1", Some("10.0.0.1:10251")),
            node("b", "10.0.0.2", Some("10.0.0.2:10251")),
            node("c", "10.0.0.3", Some("10.0.0.3:4000")),
            node("d", "10.0.0.4", None),
        ]
        .iter()
        .filter_map(NodeInfo::of)
        .collect();
        assert_eq!(
            snap.nodes["c"],
            NodeInfo {
                address: Some(ip("10.0.0.3")),
                tunnel: Some(sa("10.0.0.3:4000")),
                pod_range: None,
            }
        );
        let table = routes(&snap, ip("10.0.0.1"));
        assert_eq!(
            table,
            Routes::from([
                (ip("127.65.0.2"), sa("10.0.0.2:10251")),
                (ip("127.66.0.2"), sa("10.0.0.3:4000")),
            ])
        );
        // From node b, a's pods are the remote ones.
        assert_eq!(
            routes(&snap, ip("10.0.0.2"))[&ip("127.64.0.2")],
            sa("10.0.0.1:10251")
        );
        // A malformed annotation loses only the addresses.
        let mut bad = slice.clone();
        bad.metadata.annotations = Some(
            [(
                model::NODE_ADDRESSES_ANNOTATION.to_string(),
                "not json".to_string(),
            )]
            .into(),
        );
        let snap = model::build(2, [&svc], [&bad]);
        assert_eq!(
            snap.services
                .values()
                .next()
                .unwrap()
                .backends_of("http")
                .len(),
            5
        );
    }
}
