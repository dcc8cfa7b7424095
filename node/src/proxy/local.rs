//! This node's own pods that it knows are Ready, for the Services asleep at zero.
//!
//! A request held for a Service scaled to zero ([`super::wake`]) waits for the woken pod
//! to show up in the Service's EndpointSlice. When that pod runs on this very node, the
//! node knew it was Ready well before: after the pod worker finds it Ready come its status
//! write, the endpoint controller's watch delivery and slice write, and this node's watch
//! delivery of the slice; on a wake-up those are about a fifth of the time from the first
//! request to its answer.
//!
//! So the pod workers publish here every pod the moment they find it Ready (all its
//! containers ready, as the pod's `Ready` condition says) and withdraw it the moment it is
//! not, or is being deleted. The Service watch joins these into its snapshot ([`join`]),
//! and publishes a new one for a readiness change only when the join changes,
//! which is for the Services marked for wake-ups only (everywhere else the EndpointSlice
//! stays the one source, and a pod's readiness costs the proxy and the DNS nothing), matching selectors and target ports with the endpoint controller's own
//! functions: the proxy's view is what the slice is about to say, a few writes sooner.
//! Once the slice says it, the two entries are one ([`super::model`] merges duplicates).

use super::model::{Backend, ClusterIp, Conditions, ServiceKey, Snapshot};
use k8s_openapi::api::core::v1::{Pod, Service};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;
use wharf_control::controllers::endpoints;

/// A Ready pod of this node and its address.
#[derive(Debug, Clone)]
pub struct ReadyPod {
    pub pod: Arc<Pod>,
    pub ip: IpAddr,
}

impl ReadyPod {
    /// Whether `other` says the same for the join: same pod, address and labels.
    fn same(&self, other: &ReadyPod) -> bool {
        self.ip == other.ip
            && self.pod.metadata.uid == other.pod.metadata.uid
            && self.pod.metadata.labels == other.pod.metadata.labels
    }
}

/// The Ready pods of this node by `namespace/name`.
pub type ReadyPods = Arc<BTreeMap<String, ReadyPod>>;

/// Where the pod workers publish, and the Service watch reads.
#[derive(Debug)]
pub struct LocalReady {
    tx: watch::Sender<ReadyPods>,
}

impl Default for LocalReady {
    fn default() -> Self {
        LocalReady {
            tx: watch::channel(ReadyPods::default()).0,
        }
    }
}

impl LocalReady {
    /// Records whether the pod `key` (`namespace/name`) is Ready here; readers are told
    /// only when that changes.
    pub fn set(&self, key: &str, ready: Option<ReadyPod>) {
        self.tx.send_if_modified(|pods| match ready {
            Some(ready) => {
                if pods.get(key).is_some_and(|old| old.same(&ready)) {
                    return false;
                }
                Arc::make_mut(pods).insert(key.to_string(), ready);
                true
            }
            None => pods.contains_key(key) && Arc::make_mut(pods).remove(key).is_some(),
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<ReadyPods> {
        self.tx.subscribe()
    }
}

/// Backends a Service port gains from this node's Ready pods, by Service and port name.
pub type LocalBackends = BTreeMap<(ServiceKey, String), Vec<Backend>>;

/// The Ready pods of this node that each Service marked for wake-ups selects, port by
/// port, as the endpoint controller will publish them (pure). Empty unless some marked
/// Service has a ready pod here, so the readiness of every other pod changes nothing.
pub fn backends<'a>(
    snapshot: &Snapshot,
    services: impl IntoIterator<Item = &'a Service>,
    ready: &BTreeMap<String, ReadyPod>,
) -> LocalBackends {
    let mut out = LocalBackends::new();
    if ready.is_empty() {
        return out;
    }
    // Runs on every readiness change of a pod here: Services not marked for wake-ups are
    // passed over on their annotation alone, before any lookup.
    let marked = services.into_iter().filter(|svc| {
        svc.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(super::model::WAKE_ANNOTATION))
    });
    for svc in marked {
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let key = ServiceKey::new(ns, name);
        let Some(info) = snapshot.services.get(&key) else {
            continue;
        };
        if info.wake.is_none()
            || !matches!(info.cluster_ip, ClusterIp::Ip(_))
            || !endpoints::manages(svc)
        {
            continue;
        }
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or_default();
        for local in ready.values().filter(|r| endpoints::selects(svc, &r.pod)) {
            for sp in ports {
                let Some(port) = endpoints::find_port(&local.pod, sp)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                else {
                    continue;
                };
                out.entry((key.clone(), sp.name.clone().unwrap_or_default()))
                    .or_default()
                    .push(Backend {
                        addr: SocketAddr::new(local.ip, port),
                        conditions: Conditions {
                            ready: true,
                            serving: true,
                            terminating: false,
                        },
                        hostname: None,
                        node_name: local.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                        node_address: None,
                        pod: local.pod.metadata.name.clone(),
                    });
            }
        }
    }
    out
}

/// Adds `local` (from [`backends`]) to the snapshot's Services (pure).
pub fn join(snapshot: &mut Snapshot, local: &LocalBackends) {
    for ((key, port), list) in local {
        if let Some(info) = snapshot.services.get_mut(key) {
            let backends = info.backends.entry(port.clone()).or_default();
            backends.extend(list.iter().cloned());
            super::model::normalize(backends);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::model;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn service(name: &str, wake: bool, target_port: serde_json::Value) -> Service {
        let mut annotations = serde_json::Map::new();
        if wake {
            annotations.insert(model::WAKE_ANNOTATION.into(), json!(name));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"selector": {"app": name}, "clusterIP": "127.250.0.9",
                     "ports": [{"name": "http", "port": 80, "targetPort": target_port}]},
        }))
        .unwrap()
    }

    fn ready_pod(name: &str, app: &str, ip: &str) -> ReadyPod {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x.wasm",
                     "ports": [{"name": "web", "containerPort": 8080}]}]},
        }))
        .unwrap();
        ReadyPod {
            pod: Arc::new(pod),
            ip: ip.parse().unwrap(),
        }
    }

    fn snapshot(services: &[Service], slices: &[EndpointSlice]) -> Snapshot {
        model::build(1, services, slices)
    }

    #[test]
    fn a_sleeping_service_gains_the_local_pods_it_selects_with_their_ports() {
        let services = [
            service("web", true, json!("web")),
            service("api", false, json!(8080)),
        ];
        let mut snap = snapshot(&services, &[]);
        let ready = BTreeMap::from([
            (
                "default/web-1".to_string(),
                ready_pod("web-1", "web", "127.64.0.5"),
            ),
            (
                "default/api-1".to_string(),
                ready_pod("api-1", "api", "127.64.0.6"),
            ),
        ]);
        let local = backends(&snap, &services, &ready);
        join(&mut snap, &local);
        let web = &snap.services[&ServiceKey::new("default", "web")];
        assert_eq!(
            model::routable(web.backends_of("http")),
            vec!["127.64.0.5:8080".parse::<SocketAddr>().unwrap()]
        );
        // A Service not marked for wake-ups keeps to its EndpointSlices, and the pods it
        // selects change nothing.
        let api = &snap.services[&ServiceKey::new("default", "api")];
        assert!(api.backends_of("http").is_empty());
        assert_eq!(local.len(), 1);
        let only_api = BTreeMap::from([(
            "default/api-1".to_string(),
            ready_pod("api-1", "api", "127.64.0.6"),
        )]);
        assert!(backends(&snap, &services, &only_api).is_empty());
    }

    #[test]
    fn the_slice_and_the_local_pod_are_one_endpoint() {
        let services = [service("web", true, json!(8080))];
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {model::SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.64.0.5"], "conditions": {"ready": false}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        let mut snap = snapshot(&services, &[slice]);
        let ready = BTreeMap::from([(
            "default/web-1".to_string(),
            ready_pod("web-1", "web", "127.64.0.5"),
        )]);
        let local = backends(&snap, &services, &ready);
        join(&mut snap, &local);
        let web = &snap.services[&ServiceKey::new("default", "web")];
        // The slice still says not ready; the node knows better, and there is one entry.
        assert_eq!(web.backends_of("http").len(), 1);
        assert_eq!(model::routable(web.backends_of("http")).len(), 1);
    }

    #[test]
    fn readers_hear_of_changes_only() {
        let local = LocalReady::default();
        let mut rx = local.subscribe();
        local.set(
            "default/web-1",
            Some(ready_pod("web-1", "web", "127.64.0.5")),
        );
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        local.set(
            "default/web-1",
            Some(ready_pod("web-1", "web", "127.64.0.5")),
        );
        assert!(!rx.has_changed().unwrap());
        local.set("default/other", None);
        assert!(!rx.has_changed().unwrap());
        local.set("default/web-1", None);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().is_empty());
    }
}
