//! The request-driven autoscaler: sizes Deployments by the HTTP requests in flight to
//! their Services (`wharf.dev/target-concurrency`), puts idle ones to sleep at zero
//! replicas (`wharf.dev/scale-to-zero-after`), and wakes them when a request arrives.
//!
//! **The signal, and why it is read this way.** Every node's proxy counts, per Service
//! port, the requests it took and those awaiting a response (held ones included) and
//! already serves them at the node's `/metrics` (`wharf_proxy_requests_total`,
//! `wharf_proxy_active`), unauthenticated as kube-proxy's metrics port is. The API server
//! knows every node's server address (`status.addresses`, `daemonEndpoints`, as for
//! `pods/log`). So this controller reads each node's `/metrics` directly every sync
//! period (500 ms by default: a burst is seen within a second), sums the series per
//! Service, and maps Services to the Deployments whose pod template they select. Nothing
//! is added to the API (no custom metrics group, no write per node per second to the
//! store), and nothing is read unless some Deployment opts in.
//!
//! **Waking.** Polling alone would wake a sleeping Deployment only at the next sync. A node
//! proxy holding a request for a sleeping Service (marked by this controller with
//! `wharf.dev/wake-on-request`, see the node's `proxy::wake`) records an Event
//! `WakeUpRequested` about the Deployment; this controller watches those Events and
//! scales the Deployment to 1 at once, without waiting for the period or reading any
//! node. (Nodes may record Events; they may not write a Deployment's scale.) "At once"
//! includes while the nodes are being read: a read runs as a task of its own (a node may
//! take up to [`SCRAPE_TIMEOUT`] to answer, and a wake-up is the request a user is
//! waiting on), and its counters are weighed when it ends.
//!
//! Deciding is [`decide::decide`] (pure, unit-tested); this module reads the inputs,
//! writes the `scale` subresource, and records `ScaledToZero`, `WokenUp` and
//! `SuccessfulRescale` Events on the Deployment.

pub mod decide;

use super::ControllerConfig;
use crate::api::wellknown::{WAKE_ON_REQUEST_ANNOTATION, WAKE_UP_REQUESTED_REASON};
use crate::events::{self, EventType, Recorder};
use bytes::Bytes;
use decide::{Load, Memory, Options};
use futures::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "request-autoscaler";

/// How long a node may take to answer for its counters.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest `/metrics` document read from a node.
const SCRAPE_LIMIT: usize = 8 * 1024 * 1024;
/// A wake-up Event older than this (seen again on a re-list) is stale.
const WAKE_EVENT_MAX_AGE: Duration = Duration::from_secs(30);

/// `(namespace, service)`.
pub type ServiceRef = (String, String);

/// The in-flight and request counters per Service in a node's `/metrics` text (pure):
/// `wharf_proxy_active` and `wharf_proxy_requests_total`, summed over the ports.
pub fn parse_series(text: &str) -> HashMap<ServiceRef, Load> {
    let mut out: HashMap<ServiceRef, Load> = HashMap::new();
    for line in text.lines() {
        let (active, rest) = if let Some(r) = line.strip_prefix("wharf_proxy_active{") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("wharf_proxy_requests_total{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<i64>() else {
            continue;
        };
        let label = |name: &str| -> Option<String> {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_string())
        };
        let (Some(ns), Some(svc)) = (label("namespace"), label("service")) else {
            continue;
        };
        let entry = out.entry((ns, svc)).or_default();
        let value = u64::try_from(value).unwrap_or(0);
        if active {
            entry.in_flight += value;
        } else {
            entry.requests += value;
        }
    }
    out
}

/// The Services in the Deployment's namespace whose selector selects its pods (pure).
pub fn services_of<'a>(deployment: &Deployment, services: &'a [Arc<Service>]) -> Vec<&'a Service> {
    let ns = deployment.metadata.namespace.as_deref();
    let empty = BTreeMap::new();
    let labels = deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .unwrap_or(&empty);
    services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == ns)
        .filter(|s| {
            let selector = s.spec.as_ref().and_then(|sp| sp.selector.as_ref());
            selector.is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
        })
        .map(|s| s.as_ref())
        .collect()
}

/// The Services marked for wake-ups whose Deployment no longer may sleep (it lost the
/// annotation, or is gone), pure: their mark is removed, so that their proxies answer at
/// once again when they have no endpoint.
pub fn stale_marks<'a>(
    services: &'a [Arc<Service>],
    sleepers: &HashSet<(String, String)>,
) -> Vec<&'a Service> {
    services
        .iter()
        .filter(|s| {
            let Some(marked) = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(WAKE_ON_REQUEST_ANNOTATION))
            else {
                return false;
            };
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            !sleepers.contains(&(ns, marked.clone()))
        })
        .map(|s| s.as_ref())
        .collect()
}

/// The Deployment a wake-up Event asks for, if it is one and recent (pure).
pub fn wake_target(event: &Event, now: Timestamp) -> Option<(String, String)> {
    if event.reason.as_deref() != Some(WAKE_UP_REQUESTED_REASON) {
        return None;
    }
    let about = &event.involved_object;
    if about.kind.as_deref() != Some("Deployment") {
        return None;
    }
    let at = event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))?;
    let age = now.duration_since(at);
    if age > jiff::SignedDuration::try_from(WAKE_EVENT_MAX_AGE).ok()? {
        return None;
    }
    Some((about.namespace.clone()?, about.name.clone()?))
}

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let period = config.request_scale_sync_period;
    let node_tls = config.node_tls.clone();
    tasks.spawn(super::gc::run_until_shutdown(
        shutdown.clone(),
        run(client, node_tls, period, shutdown),
    ));
}

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    deployments: Store<Deployment>,
    services: Store<Service>,
    nodes: Store<Node>,
    /// TLS towards the nodes' servers (their `/metrics`).
    node_tls: Option<Arc<rustls::ClientConfig>>,
    /// Per Deployment uid.
    memory: HashMap<String, Memory>,
    /// Invalid annotations already reported, per Deployment uid.
    warned: HashMap<String, String>,
}

async fn run(
    client: kube::Client,
    node_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    period: Duration,
    shutdown: CancellationToken,
) {
    let (deployments, deploy_writer) = reflector::store::<Deployment>();
    let (services, svc_writer) = reflector::store::<Service>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let mut feeds = JoinSet::new();
    feeds.spawn(
        watcher(Api::<Deployment>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(deploy_writer)
            .for_each(|_| futures::future::ready(())),
    );
    feeds.spawn(
        watcher(Api::<Service>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(svc_writer)
            .for_each(|_| futures::future::ready(())),
    );
    feeds.spawn(
        watcher(Api::<Node>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(node_writer)
            .for_each(|_| futures::future::ready(())),
    );
    let wakes = watcher(
        Api::<Event>::all(client.clone()),
        watcher::Config::default().fields(&format!("reason={WAKE_UP_REQUESTED_REASON}")),
    )
    .default_backoff()
    .applied_objects();
    let mut wakes = std::pin::pin!(wakes);
    let mut ctx = Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        deployments,
        services,
        nodes,
        node_tls,
        memory: HashMap::new(),
        warned: HashMap::new(),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The nodes' counters being read (one read at a time), apart from this loop so that a
    // wake-up never waits for a slow node.
    let mut scrapes: JoinSet<Option<HashMap<ServiceRef, Load>>> = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(event) = wakes.next() => {
                if let Ok(event) = event
                    && let Some((ns, name)) = wake_target(&event, Timestamp::now())
                {
                    ctx.wake(&ns, &name).await;
                }
            }
            Some(loads) = scrapes.join_next(), if !scrapes.is_empty() => {
                ctx.apply(loads.unwrap_or(None)).await;
            }
            _ = tick.tick(), if scrapes.is_empty() => {
                if ctx.prepare().await {
                    scrapes.spawn(scrape(ready_nodes(&ctx.nodes), ctx.node_tls.clone()));
                }
            }
        }
    }
    scrapes.abort_all();
    feeds.abort_all();
}

/// The Nodes whose `Ready` condition is `True`: those whose counters are read.
fn ready_nodes(nodes: &Store<Node>) -> Vec<Arc<Node>> {
    nodes
        .state()
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True")
        })
        .collect()
}

/// Every node's counters by Service; `None` when a node did not answer.
async fn scrape(
    nodes: Vec<Arc<Node>>,
    node_tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<HashMap<ServiceRef, Load>> {
    let answers =
        futures::future::join_all(nodes.iter().map(|n| scrape_node(n, node_tls.clone()))).await;
    let mut total: HashMap<ServiceRef, Load> = HashMap::new();
    for answer in answers {
        for (svc, load) in answer? {
            let t = total.entry(svc).or_default();
            t.in_flight += load.in_flight;
            t.requests += load.requests;
        }
    }
    Some(total)
}

async fn scrape_node(
    node: &Node,
    node_tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<HashMap<ServiceRef, Load>> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let value = serde_json::to_value(node).ok()?;
    let (host, port) = match crate::apiserver::proxy::node_endpoint(&value) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(node = %name, error = %e, "no counters from node");
            return None;
        }
    };
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host,
    };
    let uri = format!("https://{host}:{port}/metrics");
    let read = async {
        // The node's `/metrics` needs no token; the TLS is the API server's.
        let response = crate::apiserver::proxy::send_to_node(
            node_tls,
            &name,
            (host.trim_start_matches('[').trim_end_matches(']'), port),
            &uri,
            "",
            http::Method::GET,
            Empty::<Bytes>::new(),
            false,
        )
        .await
        .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), SCRAPE_LIMIT)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(parse_series(&String::from_utf8_lossy(&body)))
    };
    match tokio::time::timeout(SCRAPE_TIMEOUT, read).await {
        Ok(Ok(series)) => Some(series),
        Ok(Err(e)) => {
            tracing::debug!(node = %name, error = %e, "no counters from node");
            None
        }
        Err(_) => {
            tracing::debug!(node = %name, "no counters from node in time");
            None
        }
    }
}

impl Ctx {
    /// The Deployments that opt in, with their options; invalid annotations are
    /// reported once as a Warning Event.
    async fn opted(&mut self) -> Vec<(Arc<Deployment>, Options)> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for d in self.deployments.state() {
            let uid = d.metadata.uid.clone().unwrap_or_default();
            let empty = BTreeMap::new();
            match decide::options(d.metadata.annotations.as_ref().unwrap_or(&empty)) {
                Ok(Some(o)) => {
                    seen.insert(uid);
                    out.push((d, o));
                }
                Ok(None) => {}
                Err(message) => {
                    seen.insert(uid.clone());
                    if self.warned.get(&uid) != Some(&message) {
                        let about = events::reference("Deployment", "apps/v1", &d.metadata);
                        self.recorder
                            .record(&about, EventType::Warning, "InvalidAnnotation", &message)
                            .await;
                        self.warned.insert(uid, message);
                    }
                }
            }
        }
        self.memory.retain(|uid, _| seen.contains(uid));
        self.warned.retain(|uid, _| seen.contains(uid));
        out
    }

    /// The start of a period: removes stale wake-up marks; whether some Deployment opts in
    /// (then the nodes' counters are read, and [`Ctx::apply`]d when they are).
    async fn prepare(&mut self) -> bool {
        let opted = self.opted().await;
        let services = self.services.state();
        if self.deployments.wait_until_ready().now_or_never().is_some() {
            let sleepers: HashSet<(String, String)> = opted
                .iter()
                .filter(|(_, o)| o.idle_after.is_some())
                .map(|(d, _)| {
                    (
                        d.metadata.namespace.clone().unwrap_or_default(),
                        d.metadata.name.clone().unwrap_or_default(),
                    )
                })
                .collect();
            self.unmark_services(&stale_marks(&services, &sleepers))
                .await;
        }
        !opted.is_empty()
    }

    /// The end of a period: every opted-in Deployment (as it is now) against the nodes'
    /// counters just read (`None`: not every node answered).
    async fn apply(&mut self, loads: Option<HashMap<ServiceRef, Load>>) {
        let opted = self.opted().await;
        let services = self.services.state();
        for (d, options) in opted {
            let selected = services_of(&d, &services);
            if options.idle_after.is_some() {
                self.mark_services(&d, &selected).await;
            }
            let load = loads.as_ref().map(|loads| {
                selected.iter().fold(Load::default(), |mut sum, s| {
                    let key = (
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    );
                    if let Some(l) = loads.get(&key) {
                        sum.in_flight += l.in_flight;
                        sum.requests += l.requests;
                    }
                    sum
                })
            });
            self.decide_and_apply(&d, &options, load, false).await;
        }
    }

    /// A node asked for `ns/name` to wake up.
    async fn wake(&mut self, ns: &str, name: &str) {
        let Some(d) = self
            .deployments
            .get(&reflector::ObjectRef::new(name).within(ns))
        else {
            return;
        };
        let empty = BTreeMap::new();
        let Ok(Some(options)) = decide::options(d.metadata.annotations.as_ref().unwrap_or(&empty))
        else {
            return;
        };
        self.decide_and_apply(&d, &options, None, true).await;
    }

    /// Makes the Services of a Deployment that may sleep say so to the node proxies.
    async fn mark_services(&self, d: &Deployment, services: &[&Service]) {
        let Some(name) = d.metadata.name.as_deref() else {
            return;
        };
        for s in services {
            let current = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(WAKE_ON_REQUEST_ANNOTATION));
            if current.map(String::as_str) == Some(name) {
                continue;
            }
            let (Some(ns), Some(svc)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            else {
                continue;
            };
            let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
            let patch = json!({"metadata": {"annotations": {WAKE_ON_REQUEST_ANNOTATION: name}}});
            if let Err(e) = api
                .patch(svc, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(service = %format!("{ns}/{svc}"), error = %e, "marking a service of a deployment that may sleep");
            }
        }
    }

    /// Removes the wake-up mark of Services whose Deployment no longer may sleep.
    async fn unmark_services(&self, services: &[&Service]) {
        for s in services {
            let (Some(ns), Some(svc)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            else {
                continue;
            };
            let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
            let patch = json!({"metadata": {"annotations": {WAKE_ON_REQUEST_ANNOTATION: null}}});
            if let Err(e) = api
                .patch(svc, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(service = %format!("{ns}/{svc}"), error = %e, "unmarking a service whose deployment no longer sleeps");
            }
        }
    }

    async fn decide_and_apply(
        &mut self,
        d: &Deployment,
        options: &Options,
        load: Option<Load>,
        wake: bool,
    ) {
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let current = d.spec.replicas.unwrap_or(1);
        let now = Timestamp::now();
        let memory = self.memory.get(&uid).cloned().unwrap_or_default();
        let decision = decide::decide(options, current, load, wake, &memory, now);
        let mut memory = decision.memory.clone();
        if let Some(why) = decision
            .why
            .as_ref()
            .filter(|_| decision.desired != current)
        {
            let (Some(ns), Some(name)) =
                (d.metadata.namespace.as_deref(), d.metadata.name.as_deref())
            else {
                return;
            };
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
            let about = events::reference("Deployment", "apps/v1", &d.metadata);
            let patch = json!({"spec": {"replicas": decision.desired}});
            match api
                .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    memory.history.record_rescale_by(
                        Some(&decide::behavior()),
                        current,
                        decision.desired,
                        now,
                    );
                    tracing::info!(deployment = %format!("{ns}/{name}"), from = current, to = decision.desired, reason = why.reason(), "request autoscaler");
                    self.recorder
                        .record(
                            &about,
                            EventType::Normal,
                            why.reason(),
                            &why.message(decision.desired),
                        )
                        .await;
                }
                Err(e) => {
                    self.recorder
                        .record(
                            &about,
                            EventType::Warning,
                            "FailedRescale",
                            &format!("{}; error: {e}", why.message(decision.desired)),
                        )
                        .await;
                    return;
                }
            }
        }
        self.memory.insert(uid, memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::testing::TestApi;
    use http::StatusCode;

    /// Set when the request it is part of is abandoned by the client.
    struct Abandoned(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Abandoned {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A node whose server never answers `/metrics`, and the Deployment `web` asleep at
    /// zero: a wake-up is carried out while the node's counters are still being read,
    /// not after the read gives up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wake_up_does_not_wait_for_a_node_that_is_slow_to_answer() {
        let api = TestApi::new().await;
        let (scraped_tx, mut scraped) = tokio::sync::mpsc::unbounded_channel::<()>();
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let app = axum::Router::new().fallback({
            let abandoned = abandoned.clone();
            move || {
                let guard = Abandoned(abandoned.clone());
                let _ = scraped_tx.send(());
                async move {
                    let _guard = guard;
                    futures::future::pending::<()>().await;
                    "never"
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("address").port();
        api.serve_node(listener, app);
        api.ready_node("n1", Some(port)).await;
        let (code, body) = api
            .send(
                "POST",
                "/apis/apps/v1/namespaces/default/deployments",
                Some(json!({
                    "metadata": {"name": "web", "annotations": {
                        crate::api::wellknown::SCALE_TO_ZERO_AFTER_ANNOTATION: "60s"}},
                    "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                             "template": {"metadata": {"labels": {"app": "web"}},
                                          "spec": {"containers": [{"name": "web", "image": "web.wasm"}]}}},
                })),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");

        let config = crate::controllers::ControllerConfig {
            node_tls: api.state.config.node_tls.clone(),
            request_scale_sync_period: Duration::from_millis(20),
            ..Default::default()
        };
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        start(api.client(), &config, shutdown.clone(), &mut tasks);

        // A read of the node's counters is under way (and will not be answered).
        tokio::time::timeout(Duration::from_secs(30), scraped.recv())
            .await
            .expect("the node's counters were not read")
            .expect("scrape channel");
        let (code, body) = api
            .send(
                "POST",
                "/api/v1/namespaces/default/events",
                Some(json!({
                    "metadata": {"name": "web.wake"},
                    "involvedObject": {"kind": "Deployment", "apiVersion": "apps/v1",
                                       "namespace": "default", "name": "web"},
                    "reason": WAKE_UP_REQUESTED_REASON,
                    "message": "a request for Service web port 80 is waiting for an endpoint",
                    "type": "Normal",
                    "lastTimestamp": Timestamp::now().to_string(),
                })),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");

        let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
        let woken = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let d = deployments.get("web").await.expect("deployment");
                if d.spec.replicas == Some(1) {
                    // Whether the read of the node's counters was given up by then.
                    return abandoned.load(std::sync::atomic::Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the deployment was not woken up");
        assert!(
            !woken,
            "the wake-up waited for the node's read to time out ({SCRAPE_TIMEOUT:?})"
        );
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }

    #[test]
    fn node_counters_are_summed_per_service() {
        let text = "# HELP wharf_proxy_requests_total x\n\
            # TYPE wharf_proxy_requests_total counter\n\
            wharf_proxy_requests_total{namespace=\"default\",service=\"web\",port=\"80\"} 7\n\
            wharf_proxy_requests_total{namespace=\"default\",service=\"web\",port=\"8080\"} 3\n\
            wharf_proxy_requests_total{namespace=\"other\",service=\"web\",port=\"80\"} 1\n\
            wharf_proxy_active{namespace=\"default\",service=\"web\",port=\"80\"} 4\n\
            wharf_proxy_active{namespace=\"default\",service=\"web\",port=\"8080\"} 1\n\
            wharf_proxy_failures_total{namespace=\"default\",service=\"web\",port=\"80\"} 9\n\
            wharf_proxy_endpoints{namespace=\"default\",service=\"web\",port=\"80\"} 2\n";
        let got = parse_series(text);
        assert_eq!(
            got[&("default".to_string(), "web".to_string())],
            Load {
                in_flight: 5,
                requests: 10
            }
        );
        assert_eq!(
            got[&("other".to_string(), "web".to_string())],
            Load {
                in_flight: 0,
                requests: 1
            }
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn services_selecting_the_template_belong_to_the_deployment() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "front"}}}},
        }))
        .expect("deployment");
        let svc = |ns: &str, name: &str, selector: serde_json::Value| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"namespace": ns, "name": name},
                    "spec": {"selector": selector},
                }))
                .expect("service"),
            )
        };
        let services = vec![
            svc("default", "web", json!({"app": "web"})),
            svc("default", "front", json!({"tier": "front", "app": "web"})),
            svc("default", "db", json!({"app": "db"})),
            svc("other", "web", json!({"app": "web"})),
            svc("default", "all", json!({})),
        ];
        let names: Vec<&str> = services_of(&d, &services)
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["web", "front"]);
    }

    #[test]
    fn marks_of_deployments_that_no_longer_sleep_are_stale() {
        let svc = |ns: &str, name: &str, mark: Option<&str>| -> Arc<Service> {
            let mut s: Service = serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name},
            }))
            .expect("service");
            s.metadata.annotations = mark.map(|m| {
                [(WAKE_ON_REQUEST_ANNOTATION.to_string(), m.to_string())]
                    .into_iter()
                    .collect()
            });
            Arc::new(s)
        };
        let services = vec![
            svc("default", "web", Some("web")),
            svc("default", "old", Some("gone")),
            svc("other", "web", Some("web")),
            svc("default", "plain", None),
        ];
        let sleepers: HashSet<(String, String)> = [("default".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let stale: Vec<(Option<&str>, Option<&str>)> = stale_marks(&services, &sleepers)
            .iter()
            .map(|s| (s.metadata.namespace.as_deref(), s.metadata.name.as_deref()))
            .collect();
        assert_eq!(
            stale,
            [(Some("default"), Some("old")), (Some("other"), Some("web"))]
        );
    }

    #[test]
    fn only_recent_wake_up_events_about_deployments_count() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let event = |reason: &str, kind: &str, age: i64| -> Event {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "e"},
                "reason": reason,
                "involvedObject": {"kind": kind, "namespace": "default", "name": "web"},
                "lastTimestamp": (now - jiff::SignedDuration::from_secs(age)).to_string(),
            }))
            .expect("event")
        };
        assert_eq!(
            wake_target(&event(WAKE_UP_REQUESTED_REASON, "Deployment", 1), now),
            Some(("default".into(), "web".into()))
        );
        assert_eq!(
            wake_target(&event(WAKE_UP_REQUESTED_REASON, "Deployment", 300), now),
            None
        );
        assert_eq!(wake_target(&event("Other", "Deployment", 1), now), None);
        assert_eq!(
            wake_target(&event(WAKE_UP_REQUESTED_REASON, "Service", 1), now),
            None
        );
    }
}
