//! The service load balancer, as k3s's ServiceLB gives a laptop cluster one: every
//! `type: LoadBalancer` Service gets `status.loadBalancer.ingress` with the address of
//! every Ready node, and each node's proxy serves the Service's ports on its own address
//! (`node::proxy::plan`), so `INGRESS_IP:PORT` reaches the Service from outside.
//!
//! A node address and port can carry one Service only: the oldest Service that asks for a
//! port keeps it, and a later one that asks for a taken port (on any protocol it shares)
//! stays pending (no ingress) until the port is free, as ServiceLB leaves it. Services
//! with a `loadBalancerClass` belong to another implementation and are left alone.
//!
//! Services and Nodes are few; every change to either re-plans all of them
//! ([`plan`], pure) against reflectors' views and writes the statuses that differ.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub fn start(client: kube::Client, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    tasks.spawn(run(client, shutdown));
}

/// The addresses of the Ready nodes (their `InternalIP`), sorted, without duplicates
/// (several nodes of one machine share one). Takes the nodes by reference: callers pass
/// their informer's cache, which copied every Node on every Node event before (quadratic
/// in the node count while nodes register).
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let set: BTreeSet<String> = nodes
        .into_iter()
        .filter(|n| ready(n))
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            addrs
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    set.into_iter().collect()
}

/// Whether this controller gives `svc` addresses: a LoadBalancer Service of no other class,
/// not being deleted. Only these need the node addresses in [`plan`].
fn is_ours(svc: &Service) -> bool {
    svc.metadata.deletion_timestamp.is_none()
        && svc.spec.as_ref().is_some_and(|spec| {
            spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.is_none()
        })
}

/// The `status.loadBalancer` every Service should have: `{}` for those that are not
/// ours or are pending, the ingress list for the others. Keyed by `namespace/name`.
pub fn plan(services: &[Service], addresses: &[String]) -> BTreeMap<String, Value> {
    let mut ours: Vec<&Service> = services.iter().filter(|s| is_ours(s)).collect();
    ours.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.as_ref().map(|t| t.0),
            s.metadata.namespace.clone(),
            s.metadata.name.clone(),
        )
    });
    let mut taken: BTreeSet<(i32, String)> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for svc in services {
        out.insert(key(svc), json!({}));
    }
    for svc in ours {
        let ports: Vec<(i32, String)> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into())))
            .collect();
        if addresses.is_empty() || ports.iter().any(|p| taken.contains(p)) {
            continue;
        }
        taken.extend(ports.iter().cloned());
        let port_status: Vec<Value> = ports
            .iter()
            .map(|(port, protocol)| json!({"port": port, "protocol": protocol}))
            .collect();
        let ingress: Vec<Value> = addresses
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP", "ports": port_status}))
            .collect();
        out.insert(key(svc), json!({"ingress": ingress}));
    }
    out
}

/// Which watch an event came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Services,
    Nodes,
}

/// Whether a watch event calls for a new plan: not the objects of an initial list one by
/// one, only the end of it (`true`: the cache is listed) and every change after.
fn relevant<K>(
    event: Result<watcher::Event<K>, watcher::Error>,
    source: Source,
) -> Option<Result<(Source, bool), String>> {
    match event {
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Ok(watcher::Event::InitDone) => Some(Ok((source, true))),
        Ok(_) => Some(Ok((source, false))),
        Err(e) => Some(Err(e.to_string())),
    }
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let svc_events = reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .filter_map(|e| futures::future::ready(relevant(e, Source::Services)));
    let node_events = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .filter_map(|e| futures::future::ready(relevant(e, Source::Nodes)));
    let events = futures::stream::select(svc_events, node_events);
    futures::pin_mut!(events);
    // Plans start once both caches hold their first list.
    let (mut services_listed, mut nodes_listed) = (false, false);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "service load balancer: watch");
                continue;
            }
            Some(Ok((source, listed))) => match source {
                Source::Services => services_listed |= listed,
                Source::Nodes => nodes_listed |= listed,
            },
        }
        if !(services_listed && nodes_listed) {
            continue;
        }
        let all: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
        // The node addresses only matter to a Service of ours; without one, a Node event
        // (thousands while a fleet registers) costs no walk over every Node.
        let addresses = if all.iter().any(is_ours) {
            node_addresses(nodes.state().iter().map(|n| &**n))
        } else {
            Vec::new()
        };
        let wanted = plan(&all, &addresses);
        for svc in &all {
            let current = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .map(|lb| serde_json::to_value(lb).unwrap_or_default())
                .unwrap_or_else(|| json!({}));
            let Some(want) = wanted.get(&key(svc)) else {
                continue;
            };
            if &current == want {
                continue;
            }
            let api: Api<Service> = Api::namespaced(
                client.clone(),
                svc.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let name = svc.metadata.name.clone().unwrap_or_default();
            let patch = json!({"status": {"loadBalancer": {"ingress": want.get("ingress").cloned().unwrap_or(Value::Null)}}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(error = %e, service = %key(svc), "service load balancer: write");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn svc(name: &str, created: i64, ty: &str, ports: &[i32]) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                "creationTimestamp": jiff::Timestamp::from_second(created).unwrap().to_string()},
            "spec": {"type": ty, "ports": ports.iter().map(|p| json!({"port": p, "protocol": "TCP"})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn node(ip: &str, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": ip},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }

    #[test]
    fn ready_node_addresses_are_the_ingress_and_ports_go_to_the_oldest() {
        let nodes = [
            node("127.0.0.1", "True"),
            node("127.0.0.1", "True"),
            node("10.0.0.9", "False"),
        ];
        let addrs = node_addresses(&nodes);
        assert_eq!(addrs, ["127.0.0.1"]);
        let services = [
            svc("late", 20, "LoadBalancer", &[8080, 9000]),
            svc("web", 10, "LoadBalancer", &[8080]),
            svc("plain", 5, "ClusterIP", &[8080]),
            svc("other", 30, "LoadBalancer", &[9000]),
        ];
        let plan = plan(&services, &addrs);
        assert_eq!(
            plan["default/web"],
            json!({"ingress": [{"ip": "127.0.0.1", "ipMode": "VIP",
                "ports": [{"port": 8080, "protocol": "TCP"}]}]})
        );
        // 8080 is web's: `late` waits, and does not hold 9000 meanwhile.
        assert_eq!(plan["default/late"], json!({}));
        assert_eq!(plan["default/other"]["ingress"][0]["ip"], "127.0.0.1");
        assert_eq!(plan["default/plain"], json!({}));
        // No ready node: nothing to give.
        assert_eq!(super::plan(&services, &[])["default/web"], json!({}));
    }

    /// The controller plans without the node addresses when no Service is ours: the plan
    /// must be the same as with them.
    #[test]
    fn without_a_service_of_ours_the_plan_needs_no_node_addresses() {
        let mut deleted = svc("going", 1, "LoadBalancer", &[80]);
        deleted.metadata.deletion_timestamp = svc("going", 1, "ClusterIP", &[])
            .metadata
            .creation_timestamp;
        let mut classed = svc("elsewhere", 2, "LoadBalancer", &[81]);
        if let Some(spec) = classed.spec.as_mut() {
            spec.load_balancer_class = Some("example.com/lb".into());
        }
        let services = [svc("plain", 3, "ClusterIP", &[80]), deleted, classed];
        assert!(!services.iter().any(is_ours));
        let addrs = node_addresses(&[node("127.0.0.1", "True")]);
        assert_eq!(plan(&services, &addrs), plan(&services, &[]));
        assert!(is_ours(&svc("web", 4, "LoadBalancer", &[80])));
    }

    /// Through the API: every Service has `status.loadBalancer`, and a LoadBalancer one
    /// gets the Ready node's address as its ingress.
    #[tokio::test]
    async fn a_load_balancer_service_gets_the_node_address() {
        use crate::apiserver::testing::TestApi;
        use http::StatusCode;
        use std::time::{Duration, Instant};

        let api = TestApi::new().await;
        api.ready_node("n1", None).await;
        let services = "/api/v1/namespaces/default/services";
        let (code, plain) = api
            .send(
                "POST",
                services,
                Some(json!({"metadata": {"name": "plain"}, "spec": {"ports": [{"port": 80}]}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{plain}");
        assert_eq!(plain["status"], json!({"loadBalancer": {}}));
        let (code, lb) = api
            .send(
                "POST",
                services,
                Some(
                    json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer",
                    "ports": [{"port": 8088}]}}),
                ),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{lb}");
        assert_eq!(lb["status"], json!({"loadBalancer": {}}));

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        start(api.client(), shutdown.clone(), &mut tasks);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, lb) = api.send("GET", &format!("{services}/lb"), None).await;
            if lb["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1" {
                assert_eq!(
                    lb["status"]["loadBalancer"]["ingress"][0]["ports"],
                    json!([{"port": 8088, "protocol": "TCP"}])
                );
                break;
            }
            assert!(Instant::now() < deadline, "no ingress: {lb}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, plain) = api.send("GET", &format!("{services}/plain"), None).await;
        assert_eq!(plain["status"], json!({"loadBalancer": {}}));
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
