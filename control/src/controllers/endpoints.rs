//! The Endpoints and EndpointSlice controller: for every Service with a selector, the
//! addresses of the pods it selects, as the `Endpoints` object named like the Service and
//! as `discovery.k8s.io/v1` EndpointSlices. The node proxies and DNS read these to know
//! where a Service's traffic goes, so a pod that becomes ready (or stops being ready)
//! must show here at once: the path from a pod change to the written slice has no batching
//! and no debounce, only the watch, a cache lookup and two concurrent writes.
//!
//! Shape (Kubernetes' `pkg/controller/endpoint` and `endpointslice`, on kube-runtime's
//! `applier`, the engine under `Controller`, as the ReplicaSet controller uses it):
//!
//! - **Triggers.** Services (their own changes), Pods (mapped to the Services that select
//!   them, and to the Services whose slices list them, so a pod whose labels stopped
//!   matching leaves its old Service too), and our own Endpoints and EndpointSlices
//!   (mapped to their Service, so an edited or deleted one is put back). Pods and
//!   EndpointSlices are cached by reflectors fed by the same watch streams that trigger,
//!   so a reconcile caused by a pod already sees that pod in the cache.
//! - **Decide apart from do.** [`decide`] computes, from the Service, the pods and what
//!   exists now, which objects to create, replace or delete; it is pure and unit-tested.
//!   The current Endpoints and slices are read fresh from the API for every reconcile (not
//!   from a cache that may lag behind our own last write), and replaced with
//!   compare-and-swap on their resourceVersion.
//! - **Which pods, and how.** A pod counts when it has an IPv4 `status.podIP` and has not
//!   ended (Succeeded/Failed). Endpoints list ready pods in `addresses` and the others in
//!   `notReadyAddresses`, and leave out pods being deleted; slices list pods being
//!   deleted too, with `terminating: true`, `ready: false` and `serving` still saying
//!   whether the pod is ready (so a proxy can drain to it when nothing else serves).
//!   `publishNotReadyAddresses` makes every pod ready. A named `targetPort` is resolved
//!   per pod through its containers' `ports[].name` (and protocol); pods that resolve to
//!   different port numbers end up in different subsets and slices.
//! - **Slices** are named `SERVICE-xxxxx`, with `xxxxx` derived from the Service's uid and
//!   the slice's ports: deterministic, so two reconciles never create two slices for one
//!   port set. A Service with no endpoints gets one empty placeholder slice, as in
//!   Kubernetes. Labels: the Service's, `kubernetes.io/service-name`,
//!   `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`.
//! - **Node addresses.** Each endpoint names its `nodeName`; for proxies on other machines
//!   (which will reach a remote pod through its node's tunnel) the slice carries the
//!   annotation `wharf.dev/node-addresses`, a JSON object `{"NODE": "HOST-IP"}` from the
//!   pods' `status.hostIP`. Nothing reads it yet.
//! - **Ownership.** Both objects have the Service as their controlling owner reference.
//!   When a Service is deleted, this controller deletes them itself (the garbage
//!   collector would too, through the owner references).
//! - Services without a selector (their Endpoints are the user's) and ExternalName
//!   Services get nothing from this controller.

use super::common::{self, Backoff, Error};
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The label that names a slice's Service.
pub use crate::api::wellknown::SERVICE_NAME_LABEL;
/// The label that says which controller manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`], as Kubernetes' controller names itself.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// On Endpoints this controller writes: the EndpointSlice mirroring controller skips them.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// On the Endpoints and slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// `{"NODE": "HOST-IP"}` of the nodes a slice's endpoints run on (wharf's own).
pub use crate::api::wellknown::NODE_ADDRESSES_ANNOTATION;

/// Every Service is looked at again after this long without a change: a repair, in case a
/// trigger was missed (a pod that changed labels before its slice was cached).
const RESYNC: Duration = Duration::from_secs(60);
/// How long shutdown waits for running reconciles to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &super::ControllerConfig,
    pods: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(run(
        client,
        config.workqueue.queue("endpoint"),
        pods.feed(),
        shutdown,
    ));
}

// ---------------------------------------------------------------------------------------
// Deciding

/// One resolved port of an endpoint: the Service port's name, protocol and appProtocol
/// with the pod's port number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

/// One pod as an endpoint.
#[derive(Debug, Clone)]
struct Member<'a> {
    pod: &'a Pod,
    ip: String,
    ready: bool,
    terminating: bool,
}

/// What to write for one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<T> {
    Create(T),
    /// Replace the current object (the value carries its resourceVersion).
    Replace(T),
}

/// What a reconcile does: each part is independent of the others.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub endpoints: Option<Write<Endpoints>>,
    pub slices: Vec<Write<EndpointSlice>>,
    /// Names of managed slices to delete (their port set is gone).
    pub delete_slices: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_none() && self.slices.is_empty() && self.delete_slices.is_empty()
    }
}

/// The Service's selector, if it has a non-empty one (Kubernetes drops an empty map).
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// Does this controller manage endpoints for `svc`?
pub fn manages(svc: &Service) -> bool {
    let external = svc
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "ExternalName");
    selector(svc).is_some() && !external
}

/// Does `svc` select `pod` (same namespace, every selector label)? Also the nodes' view
/// of their own Ready pods for Services asleep at zero.
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    let Some(selector) = selector(svc) else {
        return false;
    };
    if pod.metadata.namespace != svc.metadata.namespace {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The pod's port for a Service port (`podutil.FindPort`): a number as it is, a name
/// through the containers' (and sidecars') named ports of the same protocol.
pub fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) if *n == 0 => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) if name.is_empty() => Some(sp.port),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The ports of `pod` for the Service, in the Service's order; `None` when the Service
/// has ports and the pod resolves none of them.
fn pod_ports(svc: &Service, pod: &Pod) -> Option<Vec<Port>> {
    let wanted = service_ports(svc);
    let ports: Vec<Port> = wanted
        .iter()
        .filter_map(|sp| {
            find_port(pod, sp).map(|port| Port {
                name: sp.name.clone().unwrap_or_default(),
                port,
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    (wanted.is_empty() || !ports.is_empty()).then_some(ports)
}

/// The pods that are endpoints of the Service (`ShouldPodBeInEndpoints`, terminating
/// included), grouped by their resolved ports, sorted by address.
fn members<'a>(svc: &Service, pods: &[&'a Pod]) -> BTreeMap<Vec<Port>, Vec<Member<'a>>> {
    let publish = publish_not_ready(svc);
    let mut groups: BTreeMap<Vec<Port>, Vec<Member<'a>>> = BTreeMap::new();
    for pod in pods.iter().copied().filter(|p| selects(svc, p)) {
        let status = pod.status.as_ref();
        let ended = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| ip.parse::<Ipv4Addr>().is_ok());
        let (Some(ip), false) = (ip, ended) else {
            continue;
        };
        let Some(ports) = pod_ports(svc, pod) else {
            continue;
        };
        groups.entry(ports).or_default().push(Member {
            pod,
            ip: ip.to_string(),
            ready: publish || common::is_pod_ready(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        });
    }
    for list in groups.values_mut() {
        list.sort_by(|a, b| {
            let ip = |m: &Member<'_>| m.ip.parse::<Ipv4Addr>().ok();
            ip(a)
                .cmp(&ip(b))
                .then_with(|| a.pod.metadata.name.cmp(&b.pod.metadata.name))
        });
    }
    groups
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// A pod's DNS hostname within a headless Service: its `hostname` when its `subdomain`
/// names the Service.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then(|| hostname.to_string())
}

fn owner(svc: &Service) -> OwnerReference {
    common::controller_ref("Service", "v1", &svc.metadata)
}

fn labels(svc: &Service, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    for (k, v) in extra {
        labels.insert(k.to_string(), v.to_string());
    }
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// The Endpoints object the Service should have.
fn desired_endpoints(svc: &Service, groups: &BTreeMap<Vec<Port>, Vec<Member<'_>>>) -> Endpoints {
    let publish = publish_not_ready(svc);
    let subsets: Vec<EndpointSubset> = groups
        .iter()
        .filter_map(|(ports, members)| {
            let address = |m: &Member<'_>| EndpointAddress {
                ip: m.ip.clone(),
                hostname: hostname(svc, m.pod),
                node_name: m.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(target_ref(m.pod)),
            };
            // Endpoints leave pods being deleted out (unless every pod is published).
            let shown = members.iter().filter(|m| publish || !m.terminating);
            let ready: Vec<EndpointAddress> =
                shown.clone().filter(|m| m.ready).map(address).collect();
            let not_ready: Vec<EndpointAddress> = shown.filter(|m| !m.ready).map(address).collect();
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            let ports: Vec<CorePort> = ports
                .iter()
                .map(|p| CorePort {
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                    port: p.port,
                    protocol: Some(p.protocol.clone()),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect();
            Some(EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            })
        })
        .collect();
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels(svc, &[(SKIP_MIRROR_LABEL, "true")])),
            owner_references: Some(vec![owner(svc)]),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// `SERVICE-xxxxx`: five characters from the Service's uid and the slice's ports.
fn slice_name(svc: &Service, ports: &[Port]) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut key = svc.metadata.uid.clone().unwrap_or_default();
    for p in ports {
        key.push_str(&format!(
            "/{}:{}:{}:{}",
            p.name,
            p.port,
            p.protocol,
            p.app_protocol.as_deref().unwrap_or("")
        ));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let suffix: String = digest
        .as_ref()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!(
        "{}-{suffix}",
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The slices the Service should have: one per port set, or one empty placeholder.
fn desired_slices(
    svc: &Service,
    groups: &BTreeMap<Vec<Port>, Vec<Member<'_>>>,
) -> Vec<EndpointSlice> {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let slice = |ports: &[Port], members: &[Member<'_>]| {
        let endpoints: Vec<Endpoint> = members
            .iter()
            .map(|m| Endpoint {
                addresses: vec![m.ip.clone()],
                conditions: Some(EndpointConditions {
                    // A pod being deleted is never ready, unless every pod is published.
                    ready: Some(m.ready && (!m.terminating || publish_not_ready(svc))),
                    serving: Some(m.ready),
                    terminating: Some(m.terminating),
                }),
                hostname: hostname(svc, m.pod),
                node_name: m.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(target_ref(m.pod)),
                ..Default::default()
            })
            .collect();
        let nodes: BTreeMap<&str, &str> = members
            .iter()
            .filter_map(|m| {
                let node = m.pod.spec.as_ref()?.node_name.as_deref()?;
                let host = m.pod.status.as_ref()?.host_ip.as_deref()?;
                (!node.is_empty() && !host.is_empty()).then_some((node, host))
            })
            .collect();
        let annotations = (!nodes.is_empty())
            .then(|| serde_json::to_string(&nodes).ok())
            .flatten()
            .map(|v| BTreeMap::from([(NODE_ADDRESSES_ANNOTATION.to_string(), v)]));
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(svc, ports)),
                namespace: svc.metadata.namespace.clone(),
                labels: Some(labels(
                    svc,
                    &[
                        (SERVICE_NAME_LABEL, &svc_name),
                        (MANAGED_BY_LABEL, MANAGED_BY),
                    ],
                )),
                annotations,
                owner_references: Some(vec![owner(svc)]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: Some(p.name.clone()),
                        port: Some(p.port),
                        protocol: Some(p.protocol.clone()),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect(),
            ),
        }
    };
    if groups.is_empty() {
        return vec![slice(&[], &[])];
    }
    groups
        .iter()
        .map(|(ports, members)| slice(ports, members))
        .collect()
}

fn our_annotation(meta: &ObjectMeta) -> Option<&String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ADDRESSES_ANNOTATION))
}

/// `desired`, to replace `current`: its resourceVersion, and annotations others set kept.
fn replacing(mut desired: ObjectMeta, current: &ObjectMeta) -> ObjectMeta {
    let mut annotations = current.annotations.clone().unwrap_or_default();
    annotations.remove(NODE_ADDRESSES_ANNOTATION);
    annotations.extend(desired.annotations.take().unwrap_or_default());
    desired.annotations = (!annotations.is_empty()).then_some(annotations);
    desired.resource_version = current.resource_version.clone();
    desired
}

/// What to do for `svc`, given the `pods` (any; those the Service selects are picked),
/// its current Endpoints and the slices this controller manages for it (pure).
pub fn decide(
    svc: &Service,
    pods: &[&Pod],
    current_endpoints: Option<&Endpoints>,
    current_slices: &[EndpointSlice],
) -> Plan {
    if !manages(svc) {
        return Plan::default();
    }
    let groups = members(svc, pods);
    let mut plan = Plan::default();

    let endpoints = desired_endpoints(svc, &groups);
    plan.endpoints = match current_endpoints {
        None => Some(Write::Create(endpoints)),
        Some(current) => {
            let same = current.metadata.labels == endpoints.metadata.labels
                && current.metadata.owner_references == endpoints.metadata.owner_references
                && current.subsets.clone().unwrap_or_default()
                    == endpoints.subsets.clone().unwrap_or_default();
            (!same).then(|| {
                Write::Replace(Endpoints {
                    metadata: replacing(endpoints.metadata, &current.metadata),
                    subsets: endpoints.subsets,
                })
            })
        }
    };

    let desired = desired_slices(svc, &groups);
    let wanted: BTreeSet<&str> = desired
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    for slice in &desired {
        let current = current_slices
            .iter()
            .find(|c| c.metadata.name == slice.metadata.name);
        match current {
            None => plan.slices.push(Write::Create(slice.clone())),
            Some(current) => {
                let same = current.metadata.labels == slice.metadata.labels
                    && current.metadata.owner_references == slice.metadata.owner_references
                    && our_annotation(&current.metadata) == our_annotation(&slice.metadata)
                    && current.address_type == slice.address_type
                    && current.endpoints.clone().unwrap_or_default()
                        == slice.endpoints.clone().unwrap_or_default()
                    && current.ports.clone().unwrap_or_default()
                        == slice.ports.clone().unwrap_or_default();
                if !same {
                    plan.slices.push(Write::Replace(EndpointSlice {
                        metadata: replacing(slice.metadata.clone(), &current.metadata),
                        ..slice.clone()
                    }));
                }
            }
        }
    }
    plan.delete_slices = current_slices
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .filter(|n| !wanted.contains(n.as_str()))
        .collect();
    plan
}

/// The Services a pod event concerns (pure): those in its namespace that select it, and
/// those whose slices list it (it may have stopped matching).
pub fn services_for_pod(
    pod: &Pod,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> Vec<ObjectRef<Service>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut refs: BTreeSet<String> = services
        .iter()
        .filter(|s| manages(s) && selects(s, pod))
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    for slice in slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
    {
        let lists_pod = slice.endpoints.iter().flatten().any(|e| {
            e.target_ref
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        });
        if lists_pod
            && let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            refs.insert(svc.clone());
        }
    }
    refs.into_iter()
        .map(|n| ObjectRef::new(&n).within(ns))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    backoff: Backoff,
}

type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

fn managed_selector(service: &str) -> String {
    format!("{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={MANAGED_BY}")
}

async fn run(
    client: kube::Client,
    queue: crate::metrics::QueueMetrics,
    pod_feed: super::informer::Feed<Pod>,
    shutdown: CancellationToken,
) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: pod_feed.store.clone(),
        services: services.clone(),
        slices,
        backoff: Backoff::default(),
    });

    let svc_triggers = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .touched_objects()
    .map_ok(|svc| ObjectRef::from_obj(&svc));
    let pod_triggers = pod_feed
        .results()
        .map_ok({
            let ctx = ctx.clone();
            move |pod| {
                let refs = services_for_pod(&pod, &ctx.services.state(), &ctx.slices.state());
                stream::iter(refs.into_iter().map(Ok))
            }
        })
        .try_flatten();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let slice_triggers = watcher(Api::<EndpointSlice>::all(client.clone()), managed)
        .default_backoff()
        .reflect(slice_writer)
        .touched_objects()
        .try_filter_map(|slice: EndpointSlice| {
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .zip(slice.metadata.namespace.as_ref())
                .map(|(name, ns)| ObjectRef::<Service>::new(name).within(ns));
            futures::future::ready(Ok(svc))
        });
    let ours = watcher::Config::default().labels(&format!("{SKIP_MIRROR_LABEL}=true"));
    let endpoints_triggers = watcher(Api::<Endpoints>::all(client.clone()), ours)
        .default_backoff()
        .touched_objects()
        .try_filter_map(|ep: Endpoints| {
            let svc = ep
                .metadata
                .name
                .as_ref()
                .zip(ep.metadata.namespace.as_ref())
                .map(|(name, ns)| ObjectRef::<Service>::new(name).within(ns));
            futures::future::ready(Ok(svc))
        });

    let triggers = stream::select_all([
        svc_triggers.boxed(),
        pod_triggers.boxed(),
        slice_triggers.boxed(),
        endpoints_triggers.boxed(),
    ])
    .take_until(shutdown.clone().cancelled_owned());
    let mut outcomes = applier(
        common::metered(queue, |svc, ctx| -> ReconcileFuture {
            Box::pin(reconcile(svc, ctx))
        }),
        error_policy,
        ctx.clone(),
        services,
        triggers,
        controller::Config::default(),
    )
    .boxed();

    // Deleted Services show up as triggers for objects no longer in the cache: their
    // Endpoints and slices are removed next to the reconciles, not in their way.
    let mut cleanups = FuturesUnordered::new();
    let work = async {
        loop {
            tokio::select! {
                outcome = outcomes.next() => match outcome {
                    None => break,
                    Some(Ok(_)) | Some(Err(controller::Error::ReconcilerFailed(..))) => {}
                    Some(Err(controller::Error::ObjectNotFound(gone))) => {
                        let ns = gone.namespace.clone().unwrap_or_default();
                        cleanups.push(remove_leftovers(ctx.client.clone(), ns, gone.name.clone()));
                    }
                    Some(Err(controller::Error::QueueError(e))) => {
                        tracing::warn!(error = %e, "endpoints controller: watch failed");
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "endpoints controller"),
                },
                Some(()) = cleanups.next(), if !cleanups.is_empty() => {}
            }
        }
        while cleanups.next().await.is_some() {}
    };
    // The trigger stream ends on shutdown and the applier then finishes what runs; that
    // gets DRAIN at most.
    tokio::select! {
        _ = work => {}
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        } => tracing::warn!("endpoints controller: reconciles still running at shutdown"),
    }
}

fn error_policy(svc: Arc<Service>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&svc.metadata);
    let delay = ctx.backoff.failed(&key);
    if matches!(error.code(), Some(409)) {
        tracing::debug!(service = %key, %error, ?delay, "conflict; retrying");
    } else {
        tracing::warn!(service = %key, %error, ?delay, "reconciling endpoints failed; retrying");
    }
    Action::requeue(delay)
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !manages(&svc) {
        return Ok(Action::await_change());
    }
    common::synced(&ctx.pods, "pod").await?;
    let key = common::key(&svc.metadata);
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let endpoints_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);

    let (current_endpoints, current_slices) = futures::try_join!(
        async {
            endpoints_api
                .get_opt(&name)
                .await
                .map_err(Error::api("reading endpoints", &key))
        },
        async {
            slices_api
                .list(&ListParams::default().labels(&managed_selector(&name)))
                .await
                .map_err(Error::api("listing endpoint slices of", &key))
        },
    )?;
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let pods: Vec<&Pod> = pods.iter().map(Arc::as_ref).collect();
    let plan = decide(
        &svc,
        &pods,
        current_endpoints.as_ref(),
        &current_slices.items,
    );
    if !plan.is_empty() {
        execute(&endpoints_api, &slices_api, &key, plan).await?;
    }
    ctx.backoff.succeeded(&key);
    Ok(Action::requeue(RESYNC))
}

/// Carries a plan out; its writes go concurrently (they are independent).
async fn execute(
    endpoints_api: &Api<Endpoints>,
    slices_api: &Api<EndpointSlice>,
    key: &str,
    plan: Plan,
) -> Result<(), Error> {
    let pp = &PostParams::default();
    let endpoints = async {
        match plan.endpoints {
            None => Ok(()),
            Some(Write::Create(e)) => endpoints_api
                .create(pp, &e)
                .await
                .map(drop)
                .map_err(Error::api("creating endpoints", key)),
            Some(Write::Replace(e)) => endpoints_api
                .replace(e.metadata.name.as_deref().unwrap_or_default(), pp, &e)
                .await
                .map(drop)
                .map_err(Error::api("updating endpoints", key)),
        }
    };
    let writes = futures::future::try_join_all(plan.slices.into_iter().map(|w| async move {
        match w {
            Write::Create(s) => slices_api
                .create(pp, &s)
                .await
                .map(drop)
                .map_err(Error::api("creating endpoint slice for", key)),
            Write::Replace(s) => slices_api
                .replace(s.metadata.name.as_deref().unwrap_or_default(), pp, &s)
                .await
                .map(drop)
                .map_err(Error::api("updating endpoint slice for", key)),
        }
    }));
    let deletes =
        futures::future::try_join_all(plan.delete_slices.into_iter().map(|name| async move {
            match slices_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if common::code_of(&e) == Some(404) => Ok(()),
                Err(e) => Err(Error::api("deleting endpoint slice", name)(e)),
            }
        }));
    futures::try_join!(endpoints, writes, deletes).map(drop)
}

/// The Service `ns/name` is gone: delete the Endpoints and slices this controller made
/// for it, each only as the object that was read (uid precondition), and nothing if a
/// Service of that name exists again (its own reconcile takes over).
async fn remove_leftovers(client: kube::Client, ns: String, name: String) {
    let result: Result<(), kube::Error> = async {
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        if services.get_opt(&name).await?.is_some() {
            return Ok(());
        }
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let guarded = |meta: &ObjectMeta| DeleteParams {
            preconditions: Some(Preconditions {
                uid: meta.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Some(ep) = endpoints.get_opt(&name).await?
            && ep
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get(SKIP_MIRROR_LABEL).map(String::as_str) == Some("true"))
        {
            ignore_gone(endpoints.delete(&name, &guarded(&ep.metadata)).await)?;
        }
        let listed = slices
            .list(&ListParams::default().labels(&managed_selector(&name)))
            .await?;
        for slice in listed.items {
            let slice_name = slice.metadata.name.clone().unwrap_or_default();
            ignore_gone(slices.delete(&slice_name, &guarded(&slice.metadata)).await)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(service = %format!("{ns}/{name}"), error = %e, "removing endpoints of a deleted service");
    }
}

fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                         "labels": {"team": "a"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web() -> Service {
        service(
            json!({"selector": {"app": "web"}, "clusterIP": "127.250.0.7",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}),
        )
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool) -> Pod {
        let mut status = json!({"phase": "Running", "hostIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "a.wasm",
                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": status,
        }))
        .unwrap()
    }

    fn with_port(mut pod: Pod, port: i32) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers[0].ports.as_mut().unwrap()[0].container_port = port;
        }
        pod
    }

    fn terminating(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        pod
    }

    fn created<T: Clone>(w: &Option<Write<T>>) -> T {
        match w {
            Some(Write::Create(t)) => t.clone(),
            other => panic!("expected a create, got {}", other.is_some()),
        }
    }

    fn ips(addresses: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        addresses.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_with_numeric_target_ports() {
        let a = pod("a", Some("127.64.0.3"), true);
        let b = pod("b", Some("127.64.0.2"), true);
        let c = pod("c", Some("127.64.0.4"), false);
        let no_ip = pod("d", None, true);
        let mut other_ns = pod("e", Some("127.64.0.9"), true);
        other_ns.metadata.namespace = Some("other".into());
        let mut unlabelled = pod("f", Some("127.64.0.8"), true);
        unlabelled.metadata.labels = None;
        let mut ended = pod("g", Some("127.64.0.7"), true);
        ended.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [&a, &b, &c, &no_ip, &other_ns, &unlabelled, &ended];
        let plan = decide(&web(), &pods, None, &[]);

        let ep = created(&plan.endpoints);
        assert_eq!(ep.metadata.name.as_deref(), Some("web"));
        let labels = ep.metadata.labels.clone().unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[SKIP_MIRROR_LABEL], "true");
        assert_eq!(
            ep.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
        let subsets = ep.subsets.clone().unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["127.64.0.2", "127.64.0.3"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["127.64.0.4"]);
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
        let addr = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(addr.node_name.as_deref(), Some("node-1"));
        assert_eq!(addr.target_ref.as_ref().unwrap().name.as_deref(), Some("b"));

        assert_eq!(plan.slices.len(), 1);
        let Write::Create(slice) = &plan.slices[0] else {
            panic!("expected a create");
        };
        let name = slice.metadata.name.clone().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(slice.address_type, "IPv4");
        let conditions: Vec<(&str, bool, bool, bool)> = slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (
                    e.addresses[0].as_str(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [
                ("127.64.0.2", true, true, false),
                ("127.64.0.3", true, true, false),
                ("127.64.0.4", false, false, false)
            ]
        );
        assert_eq!(
            slice.metadata.annotations.as_ref().unwrap()[NODE_ADDRESSES_ANNOTATION],
            r#"{"node-1":"10.0.0.1"}"#
        );
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.protocol.as_deref()),
            (Some(8080), Some("TCP"))
        );
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}));
        let a = pod("a", Some("127.64.0.2"), true);
        let b = with_port(pod("b", Some("127.64.0.3"), true), 9090);
        let mut unnamed = pod("c", Some("127.64.0.4"), true);
        unnamed.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .name = None;
        let plan = decide(&svc, &[&a, &b, &unnamed], None, &[]);
        let ep = created(&plan.endpoints);
        let subsets = ep.subsets.unwrap();
        let by_port: Vec<(i32, Vec<&str>)> = subsets
            .iter()
            .map(|s| (s.ports.as_ref().unwrap()[0].port, ips(&s.addresses)))
            .collect();
        assert_eq!(
            by_port,
            [(8080, vec!["127.64.0.2"]), (9090, vec!["127.64.0.3"])]
        );
        // One slice per port set, deterministic and distinct names.
        let names: BTreeSet<String> = plan
            .slices
            .iter()
            .map(|w| match w {
                Write::Create(s) | Write::Replace(s) => s.metadata.name.clone().unwrap(),
            })
            .collect();
        assert_eq!(names.len(), 2);
        let again = decide(&svc, &[&a, &b], None, &[]);
        assert_eq!(again.slices, plan.slices);
    }

    #[test]
    fn terminating_pods_leave_endpoints_and_stay_in_slices_as_serving() {
        let a = terminating(pod("a", Some("127.64.0.2"), true));
        let b = pod("b", Some("127.64.0.3"), true);
        let plan = decide(&web(), &[&a, &b], None, &[]);
        let ep = created(&plan.endpoints);
        let subsets = ep.subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["127.64.0.3"]);
        assert!(subsets[0].not_ready_addresses.is_none());
        let Write::Create(slice) = &plan.slices[0] else {
            panic!("expected a create");
        };
        let c = slice.endpoints.as_ref().unwrap()[0]
            .conditions
            .clone()
            .unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );

        // publishNotReadyAddresses: every pod is ready, terminating ones too.
        let mut publish = web();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let c = pod("c", Some("127.64.0.4"), false);
        let plan = decide(&publish, &[&a, &c], None, &[]);
        let ep = created(&plan.endpoints);
        assert_eq!(
            ips(&ep.subsets.unwrap()[0].addresses),
            ["127.64.0.2", "127.64.0.4"]
        );
    }

    #[test]
    fn no_pods_is_an_empty_endpoints_and_a_placeholder_slice() {
        let plan = decide(&web(), &[], None, &[]);
        assert!(created(&plan.endpoints).subsets.is_none());
        let Write::Create(slice) = &plan.slices[0] else {
            panic!("expected a create");
        };
        assert_eq!(slice.endpoints, Some(vec![]));
        assert_eq!(slice.ports, Some(vec![]));
        // Services without a selector, and ExternalName ones, are left alone.
        let manual = service(json!({"ports": [{"port": 80}]}));
        assert!(decide(&manual, &[], None, &[]).is_empty());
        let alias = service(json!({"type": "ExternalName", "externalName": "x.example",
            "selector": {"app": "web"}}));
        assert!(decide(&alias, &[], None, &[]).is_empty());
    }

    #[test]
    fn only_differences_are_written_and_stale_slices_deleted() {
        let a = pod("a", Some("127.64.0.2"), true);
        let first = decide(&web(), &[&a], None, &[]);
        let mut ep = created(&first.endpoints);
        ep.metadata.resource_version = Some("10".into());
        ep.metadata.uid = Some("ep-uid".into());
        let Write::Create(mut slice) = first.slices[0].clone() else {
            panic!("expected a create");
        };
        slice.metadata.resource_version = Some("11".into());
        let mut stale = slice.clone();
        stale.metadata.name = Some("web-old".into());

        let plan = decide(&web(), &[&a], Some(&ep), std::slice::from_ref(&slice));
        assert!(plan.is_empty(), "{plan:?}");

        // The pod stops being ready: both are replaced, at their versions.
        let not_ready = pod("a", Some("127.64.0.2"), false);
        let plan = decide(&web(), &[&not_ready], Some(&ep), &[slice.clone(), stale]);
        let Some(Write::Replace(new_ep)) = &plan.endpoints else {
            panic!("expected a replace: {plan:?}");
        };
        assert_eq!(new_ep.metadata.resource_version.as_deref(), Some("10"));
        assert_eq!(
            ips(&new_ep.subsets.as_ref().unwrap()[0].not_ready_addresses),
            ["127.64.0.2"]
        );
        let Write::Replace(new_slice) = &plan.slices[0] else {
            panic!("expected a replace");
        };
        assert_eq!(new_slice.metadata.resource_version.as_deref(), Some("11"));
        assert_eq!(
            new_slice.endpoints.as_ref().unwrap()[0]
                .conditions
                .as_ref()
                .unwrap()
                .ready,
            Some(false)
        );
        assert_eq!(plan.delete_slices, ["web-old"]);
    }

    #[test]
    fn pods_map_to_selecting_services_and_to_those_listing_them() {
        let svc = Arc::new(web());
        let mut api = web();
        api.metadata.name = Some("api".into());
        api.spec.as_mut().unwrap().selector = Some(BTreeMap::from([("app".into(), "api".into())]));
        let api = Arc::new(api);
        let a = pod("a", Some("127.64.0.2"), true);
        let refs = services_for_pod(&a, &[svc.clone(), api.clone()], &[]);
        assert_eq!(refs, [ObjectRef::new("web").within("default")]);

        // The pod moved to app=api; the web slice still lists it.
        let plan = decide(&web(), &[&a], None, &[]);
        let Write::Create(slice) = plan.slices[0].clone() else {
            panic!("expected a create");
        };
        let mut moved = a.clone();
        moved.metadata.labels = Some(BTreeMap::from([("app".into(), "api".into())]));
        let refs = services_for_pod(&moved, &[svc, api], &[Arc::new(slice)]);
        assert_eq!(
            refs,
            [
                ObjectRef::new("api").within("default"),
                ObjectRef::new("web").within("default")
            ]
        );
    }
}

/// The controller against a real API server (in process, on a temp store).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod live_tests {
    use super::*;
    use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
    use serde_json::json;
    use std::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(20);

    /// Waits (on a watch, under [`TIMEOUT`]) until a slice of `svc` satisfies `done`.
    async fn slice_until(
        slices: &Api<EndpointSlice>,
        svc: &str,
        done: impl Fn(&EndpointSlice) -> bool,
    ) -> EndpointSlice {
        tokio::time::timeout(TIMEOUT, async {
            let lp = ListParams::default().labels(&managed_selector(svc));
            let list = slices.list(&lp).await.unwrap();
            if let Some(s) = list.items.into_iter().find(|s| done(s)) {
                return s;
            }
            let wp = WatchParams::default().labels(&managed_selector(svc));
            let rv = list.metadata.resource_version.unwrap_or_default();
            let mut events = slices.watch(&wp, &rv).await.unwrap().boxed();
            while let Some(event) = events.next().await {
                if let WatchEvent::Added(s) | WatchEvent::Modified(s) = event.unwrap()
                    && done(&s)
                {
                    return s;
                }
            }
            panic!("the watch ended");
        })
        .await
        .expect("the slice did not reach the expected state in time")
    }

    fn ready(slice: &EndpointSlice, ip: &str) -> Option<bool> {
        slice
            .endpoints
            .iter()
            .flatten()
            .find(|e| e.addresses.first().map(String::as_str) == Some(ip))
            .and_then(|e| e.conditions.as_ref()?.ready)
    }

    #[tokio::test]
    async fn slices_follow_pod_readiness_at_once_and_leave_with_the_service() {
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut informers = crate::controllers::informer::Informers::new(&client.clone());
        start(
            client.clone(),
            &Default::default(),
            &mut informers.pods,
            shutdown.clone(),
            &mut tasks,
        );
        informers.start(shutdown.clone(), &mut tasks);

        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
        services
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"},
                             "ports": [{"port": 80, "targetPort": "http"}]}}))
                .unwrap(),
            )
            .await
            .unwrap();
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"app": "web"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "a.wasm",
                         "ports": [{"name": "http", "containerPort": 8080}]}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
        slice_until(&slices, "web", |s| {
            s.endpoints.as_ref().is_none_or(Vec::is_empty)
        })
        .await;

        let status = |ready: bool| {
            Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.64.0.2",
                "hostIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        };
        let mut latencies = Vec::new();
        for want in [true, false, true] {
            let started = Instant::now();
            pods.patch_status("a", &PatchParams::default(), &status(want))
                .await
                .unwrap();
            let slice = slice_until(&slices, "web", |s| ready(s, "127.64.0.2") == Some(want)).await;
            latencies.push(started.elapsed());
            assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
        }
        eprintln!("pod readiness change -> EndpointSlice written: {latencies:?}");
        let ep = endpoints.get("web").await.unwrap();
        assert_eq!(
            ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
            "127.64.0.2"
        );

        // A deleted slice is put back; a deleted Service takes both with it.
        let name = slice_until(&slices, "web", |_| true)
            .await
            .metadata
            .name
            .unwrap();
        slices
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        slice_until(&slices, "web", |s| ready(s, "127.64.0.2") == Some(true)).await;
        services
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        gone(
            &endpoints,
            ListParams::default().fields("metadata.name=web"),
        )
        .await;
        gone(
            &slices,
            ListParams::default().labels(&managed_selector("web")),
        )
        .await;

        shutdown.cancel();
        tokio::time::timeout(TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .expect("the controller did not stop");
    }

    /// Waits (on watches, under [`TIMEOUT`]) until nothing matches `lp`.
    async fn gone<K>(api: &Api<K>, lp: ListParams)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let list = api.list(&lp).await.unwrap();
                if list.items.is_empty() {
                    return;
                }
                let wp = WatchParams {
                    label_selector: lp.label_selector.clone(),
                    field_selector: lp.field_selector.clone(),
                    ..Default::default()
                };
                let rv = list.metadata.resource_version.unwrap_or_default();
                let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
                while let Some(event) = events.next().await {
                    if let Ok(WatchEvent::Deleted(_)) = event {
                        break;
                    }
                }
            }
        })
        .await
        .expect("objects of a deleted service stayed");
    }
}
