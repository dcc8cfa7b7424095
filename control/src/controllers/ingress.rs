//! The Ingress status controller: every Ingress the node proxies serve (class `wharf`, or
//! no class) gets `status.loadBalancer.ingress` with the address of every Ready node, as
//! k3s's Ingress controller reports the nodes it listens on; each node's proxy serves
//! Ingresses on its own address (`node::proxy::ingress`).
//!
//! Ingresses and Nodes are few; every change to either re-plans all of them ([`plan`],
//! pure) against reflectors' views and writes the statuses that differ.

use super::servicelb::node_addresses;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The class the node proxies serve.
pub const CLASS: &str = crate::apiserver::registry::strategies::ingressclass::WHARF_CLASS;

pub fn start(client: kube::Client, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    tasks.spawn(run(client, shutdown));
}

/// Whether the node proxies serve `ingress`: its class is `wharf`, or it names none.
pub fn served(ingress: &Ingress) -> bool {
    let annotated = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::apiserver::registry::strategies::ingress::CLASS_ANNOTATION));
    match (
        ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref()),
        annotated,
    ) {
        (Some(class), _) => class == CLASS,
        (None, Some(class)) => class == CLASS,
        (None, None) => true,
    }
}

fn key(ing: &Ingress) -> String {
    format!(
        "{}/{}",
        ing.metadata.namespace.as_deref().unwrap_or_default(),
        ing.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The `status.loadBalancer` each served Ingress should have, by `namespace/name` (pure).
pub fn plan(ingresses: &[Ingress], addresses: &[String]) -> BTreeMap<String, Value> {
    let ingress: Vec<Value> = addresses.iter().map(|ip| json!({"ip": ip})).collect();
    ingresses
        .iter()
        .filter(|i| served(i))
        .map(|i| (key(i), json!({"ingress": ingress})))
        .collect()
}

/// Whether a watch event calls for a new plan (see `servicelb`): the end of the initial
/// list (`true`) and every change after; `nodes` says which watch it came from.
fn relevant<K>(
    event: Result<watcher::Event<K>, watcher::Error>,
    nodes: bool,
) -> Option<Result<(bool, bool), String>> {
    match event {
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Ok(watcher::Event::InitDone) => Some(Ok((nodes, true))),
        Ok(_) => Some(Ok((nodes, false))),
        Err(e) => Some(Err(e.to_string())),
    }
}

async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (ingresses, ing_writer) = reflector::store::<Ingress>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let ing_events = reflector(
        ing_writer,
        watcher(
            Api::<Ingress>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .filter_map(|e| futures::future::ready(relevant(e, false)));
    let node_events = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .filter_map(|e| futures::future::ready(relevant(e, true)));
    let events = futures::stream::select(ing_events, node_events);
    futures::pin_mut!(events);
    let (mut ingresses_listed, mut nodes_listed) = (false, false);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "ingress status: watch");
                continue;
            }
            Some(Ok((true, l))) => nodes_listed |= l,
            Some(Ok((false, l))) => ingresses_listed |= l,
        }
        if !(ingresses_listed && nodes_listed) {
            continue;
        }
        let all: Vec<Ingress> = ingresses.state().iter().map(|i| (**i).clone()).collect();
        // Nothing to plan without a served Ingress; a Node event (thousands while a fleet
        // registers) then costs no walk over every Node.
        if !all.iter().any(served) {
            continue;
        }
        let wanted = plan(&all, &node_addresses(nodes.state().iter().map(|n| &**n)));
        for ing in &all {
            let Some(want) = wanted.get(&key(ing)) else {
                continue;
            };
            let current = ing
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .map(|lb| serde_json::to_value(lb).unwrap_or_default())
                .unwrap_or_else(|| json!({}));
            let empty = want["ingress"].as_array().is_some_and(Vec::is_empty);
            if &current == want || (empty && current == json!({})) {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(
                client.clone(),
                ing.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let name = ing.metadata.name.clone().unwrap_or_default();
            let patch = json!({"status": {"loadBalancer": want}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(error = %e, ingress = %key(ing), "ingress status: write");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ing(name: &str, class: Option<&str>) -> Ingress {
        let mut v = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {}});
        if let Some(c) = class {
            v["spec"]["ingressClassName"] = json!(c);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn served_ingresses_get_every_ready_node_address() {
        let addrs = vec!["127.0.0.1".to_string(), "192.0.2.7".to_string()];
        let plan = plan(
            &[
                ing("a", Some("wharf")),
                ing("b", None),
                ing("c", Some("nginx")),
            ],
            &addrs,
        );
        assert_eq!(
            plan.keys().collect::<Vec<_>>(),
            vec!["default/a", "default/b"]
        );
        assert_eq!(
            plan["default/a"],
            json!({"ingress": [{"ip": "127.0.0.1"}, {"ip": "192.0.2.7"}]})
        );
    }
}
