//! The HorizontalPodAutoscaler controller: sizes anything with a `scale` subresource from
//! its pods' resource metrics.
//!
//! Every sync period (15 s by default, as kube-controller-manager's
//! `--horizontal-pod-autoscaler-sync-period`) and whenever an HPA's spec changes, for each
//! HPA it reads the target's `scale` (current replicas and pod selector), the selected pods
//! (their requests) and their `metrics.k8s.io` PodMetrics, all through the API as any client
//! would; [`decide::decide`] computes the size and the status; this module then writes the
//! `scale`, records the `SuccessfulRescale` Event, and writes the status.
//!
//! **Time and memory.** What Kubernetes' controller keeps in memory between syncs (recent
//! recommendations and rescales, for stabilization windows and rate policies) is kept
//! here per HPA as a [`decide::History`], and the time every decision is made at comes from
//! a [`Clock`], so that tests drive the windows without waiting them out.
//!
//! Status-only changes do not trigger a sync (only `metadata.generation` does, besides the
//! period): the controller's own status writes would otherwise wake it in a loop.

pub mod decide;

use super::ControllerConfig;
use super::common::{self, Backoff, Error};
use crate::api::kinds::split_api_version;
use crate::api::quantity;
use crate::events::{self, EventType, Recorder};
use decide::{Decision, History, PodInfo};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "horizontal-pod-autoscaler";

/// Where the controller's decisions take the time from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Starts the controller on the wall clock; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    start_with_clock(
        client,
        config.hpa_sync_period,
        Arc::new(SystemClock),
        shutdown,
        tasks,
    );
}

/// Starts the controller with `clock`.
pub fn start_with_clock(
    client: kube::Client,
    sync_period: Duration,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        backoff: Backoff::default(),
        clock,
        sync_period,
        history: Mutex::new(HashMap::new()),
        evaluated: Mutex::new(HashMap::new()),
    });
    let api = Api::<HorizontalPodAutoscaler>::all(client);
    let reconciles = Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|outcome| {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "horizontal pod autoscaler");
            }
            futures::future::ready(())
        });
    tasks.spawn(super::gc::run_until_shutdown(shutdown, reconciles));
}

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    sync_period: Duration,
    /// Per HPA (by uid): what [`decide::decide`] needs from earlier syncs.
    history: Mutex<HashMap<String, History>>,
    /// Per HPA (by uid): the generation last evaluated, and when (monotonic time: this
    /// paces the work, the decisions' clock is [`Ctx::clock`]).
    evaluated: Mutex<HashMap<String, (Option<i64>, Instant)>>,
}

/// How long until an HPA last evaluated at `last` (for generation `generation`) is due
/// again; `None`: now. A new generation (a spec change) is due at once; anything else
/// (its own status writes, which wake the controller too) waits for the period.
pub fn wait_before_sync(
    last: Option<(Option<i64>, Instant)>,
    generation: Option<i64>,
    now: Instant,
    period: Duration,
) -> Option<Duration> {
    let (seen, at) = last?;
    if seen != generation {
        return None;
    }
    period
        .checked_sub(now.saturating_duration_since(at))
        .filter(|d| !d.is_zero())
}

impl Ctx {
    fn history(&self, uid: &str) -> History {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
            .unwrap_or_default()
    }

    fn keep(&self, uid: &str, history: History) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), history);
    }
}

// ---- Reading the inputs ----------------------------------------------------------------

/// A Quantity in base units: cores for `cpu`, bytes for `memory`.
fn amount(q: &str) -> Option<f64> {
    Some(quantity::milli_value(q)? as f64 / 1000.0)
}

/// The pod's requests summed over its containers, and the containers lacking one.
fn requests_of(pod: &Pod) -> (BTreeMap<String, f64>, Vec<(String, String)>) {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut unrequested = Vec::new();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    for resource in ["cpu", "memory"] {
        let mut total = 0.0;
        let mut all = true;
        for c in containers {
            match c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| amount(&q.0))
            {
                Some(v) => total += v,
                None => {
                    all = false;
                    unrequested.push((resource.to_string(), c.name.clone()));
                }
            }
        }
        if all && !containers.is_empty() {
            sums.insert(resource.to_string(), total);
        }
    }
    (sums, unrequested)
}

/// The usage per pod name in a PodMetricsList.
fn usage_by_pod(list: &Value) -> HashMap<String, BTreeMap<String, f64>> {
    let mut out = HashMap::new();
    for item in list
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(name) = item.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        let mut usage: BTreeMap<String, f64> = BTreeMap::new();
        for c in item
            .get("containers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(u) = c.get("usage").and_then(Value::as_object) {
                for (resource, q) in u {
                    if let Some(v) = q.as_str().and_then(amount) {
                        *usage.entry(resource.clone()).or_default() += v;
                    }
                }
            }
        }
        out.insert(name.to_string(), usage);
    }
    out
}

/// The target's live pods, with their metrics.
pub fn pod_infos(pods: &[Pod], metrics: &Value) -> Vec<PodInfo> {
    let usage = usage_by_pod(metrics);
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let (requests, unrequested) = requests_of(p);
            PodInfo {
                usage: usage.get(&name).cloned(),
                name,
                requests,
                unrequested,
            }
        })
        .collect()
}

// ---- Writing the outcome ---------------------------------------------------------------

fn value_quantity(resource: &str, v: f64) -> Quantity {
    if resource == "cpu" {
        Quantity(format!("{}m", (v * 1000.0).round() as i64))
    } else {
        Quantity(format!("{}", v.round() as i64))
    }
}

/// The status the decision implies, conditions keeping their transition times.
pub fn status_of(
    hpa: &HorizontalPodAutoscaler,
    decision: &Decision,
    now: Timestamp,
    rescaled: bool,
) -> HorizontalPodAutoscalerStatus {
    let old = hpa.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let conditions = decision
        .conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = old_conditions
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .and_then(|o| o.last_transition_time.clone())
                .unwrap_or(Time(now));
            HorizontalPodAutoscalerCondition {
                type_: c.type_.to_string(),
                status: status.to_string(),
                reason: Some(c.reason.clone()),
                message: Some(c.message.clone()),
                last_transition_time: Some(since),
                ..Default::default()
            }
        })
        .collect();
    let current_metrics: Vec<MetricStatus> = decision
        .current_metrics
        .iter()
        .map(|m| MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: m.resource.clone(),
                current: MetricValueStatus {
                    average_utilization: m.average_utilization,
                    average_value: Some(value_quantity(&m.resource, m.average_value)),
                    value: None,
                },
            }),
            ..Default::default()
        })
        .collect();
    HorizontalPodAutoscalerStatus {
        conditions: Some(conditions),
        current_metrics: (!current_metrics.is_empty()).then_some(current_metrics),
        current_replicas: Some(decision.current_replicas),
        desired_replicas: decision.desired_replicas,
        last_scale_time: if rescaled {
            Some(Time(now))
        } else {
            old.last_scale_time
        },
        observed_generation: hpa.metadata.generation,
    }
}

fn failed_scale_status(
    hpa: &HorizontalPodAutoscaler,
    reason: &str,
    message: String,
    now: Timestamp,
) -> HorizontalPodAutoscalerStatus {
    let old = hpa.status.clone().unwrap_or_default();
    let decision = Decision {
        current_replicas: old.current_replicas.unwrap_or(0),
        desired_replicas: old.desired_replicas,
        rescale_reason: None,
        current_metrics: Vec::new(),
        conditions: vec![decide::Condition {
            type_: "AbleToScale",
            status: false,
            reason: reason.into(),
            message,
        }],
        history: History::default(),
        metric_error: None,
    };
    status_of(hpa, &decision, now, false)
}

// ---- Doing ----------------------------------------------------------------------------

async fn write_status(
    api: &Api<HorizontalPodAutoscaler>,
    hpa: &HorizontalPodAutoscaler,
    status: HorizontalPodAutoscalerStatus,
    key: &str,
) -> Result<(), Error> {
    if hpa.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = hpa.metadata.name.clone().unwrap_or_default();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(Error::api("writing the status of", key))?;
    Ok(())
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&hpa.metadata);
    let uid = hpa.metadata.uid.clone().unwrap_or_default();
    if hpa.metadata.deletion_timestamp.is_some() {
        ctx.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
        ctx.evaluated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
        return Ok(Action::await_change());
    }
    let requeue = Action::requeue(ctx.sync_period);
    {
        let mut evaluated = ctx.evaluated.lock().unwrap_or_else(|p| p.into_inner());
        let last = evaluated.get(&uid).copied();
        let started = Instant::now();
        if let Some(wait) =
            wait_before_sync(last, hpa.metadata.generation, started, ctx.sync_period)
        {
            return Ok(Action::requeue(wait));
        }
        evaluated.insert(uid.clone(), (hpa.metadata.generation, started));
    }
    let now = ctx.clock.now();
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    let about = events::reference("HorizontalPodAutoscaler", "autoscaling/v2", &hpa.metadata);
    let spec = hpa.spec.clone();
    let target = &spec.scale_target_ref;
    let (group, version) = split_api_version(target.api_version.as_deref().unwrap_or("v1"));
    let gvk = GroupVersionKind::gvk(group, version, &target.kind);
    let scale = match kube::discovery::pinned_kind(&ctx.client, &gvk).await {
        Ok((resource, _)) => {
            let targets: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &resource);
            targets.get_scale(&target.name).await.map(|s| (targets, s))
        }
        Err(e) => Err(e),
    };
    let (targets, scale) = match scale {
        Ok(found) => found,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            ctx.recorder
                .record(&about, EventType::Warning, "FailedGetScale", &e.to_string())
                .await;
            let status = failed_scale_status(&hpa, "FailedGetScale", message, now);
            write_status(&hpas, &hpa, status, &key).await?;
            return Ok(requeue);
        }
    };
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods = if selector.is_empty() {
        Vec::new()
    } else {
        Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::api("listing the pods of", &key))?
            .items
    };
    let metrics = if pods.is_empty() {
        json!({"items": []})
    } else {
        let mut url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?");
        url.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .append_pair("labelSelector", &selector)
                .finish(),
        );
        let request = http::Request::get(url)
            .body(Vec::new())
            .map_err(|e| Error::Invalid(format!("building the metrics request: {e}")))?;
        match ctx.client.request::<Value>(request).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(hpa = %key, error = %e, "no pod metrics");
                json!({"items": []})
            }
        }
    };
    let infos = pod_infos(&pods, &metrics);
    let decision = decide::decide(&spec, current, &infos, &ctx.history(&uid), now);
    let mut history = decision.history.clone();
    let mut status = status_of(&hpa, &decision, now, false);
    if let Some(error) = &decision.metric_error {
        ctx.recorder
            .record(&about, EventType::Warning, "FailedGetResourceMetric", error)
            .await;
    }
    if decision.rescale() {
        let reason = decision.rescale_reason.clone().unwrap_or_default();
        let desired = decision.desired_replicas;
        let patched = targets
            .patch_scale(
                &target.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": desired}})),
            )
            .await;
        match patched {
            Ok(_) => {
                history.record_rescale(&spec, current, desired, now);
                ctx.recorder
                    .record(
                        &about,
                        EventType::Normal,
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {reason}"),
                    )
                    .await;
                let mut rescaled = decision.clone();
                if let Some(c) = rescaled
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == "AbleToScale")
                {
                    *c = decide::Condition {
                        type_: "AbleToScale",
                        status: true,
                        reason: "SucceededRescale".into(),
                        message: format!(
                            "the HPA controller was able to update the target scale to {desired}"
                        ),
                    };
                }
                status = status_of(&hpa, &rescaled, now, true);
            }
            Err(e) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Warning,
                        "FailedRescale",
                        &format!("New size: {desired}; reason: {reason}; error: {e}"),
                    )
                    .await;
                let mut failed = decision.clone();
                failed.desired_replicas = current;
                if let Some(c) = failed
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == "AbleToScale")
                {
                    *c = decide::Condition {
                        type_: "AbleToScale",
                        status: false,
                        reason: "FailedUpdateScale".into(),
                        message: format!(
                            "the HPA controller was unable to update the target scale: {e}"
                        ),
                    };
                }
                status = status_of(&hpa, &failed, now, false);
            }
        }
    }
    ctx.keep(&uid, history);
    write_status(&hpas, &hpa, status, &key).await?;
    Ok(requeue)
}

fn error_policy(hpa: Arc<HorizontalPodAutoscaler>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&hpa.metadata);
    if error.code() != Some(409) {
        tracing::warn!(hpa = %key, %error, "horizontal pod autoscaler");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu_request: Option<&str>, phase: &str) -> Pod {
        let resources = match cpu_request {
            Some(r) => json!({"requests": {"cpu": r, "memory": "16Mi"}}),
            None => json!({}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "x.wasm", "resources": resources}]},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    #[test]
    fn status_writes_do_not_wake_an_evaluation_before_the_period() {
        let t0 = Instant::now();
        let t = |s: u64| t0 + Duration::from_secs(s);
        let period = Duration::from_secs(15);
        assert_eq!(wait_before_sync(None, Some(1), t(0), period), None);
        assert_eq!(
            wait_before_sync(Some((Some(1), t(0))), Some(1), t(5), period),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait_before_sync(Some((Some(1), t(0))), Some(1), t(15), period),
            None
        );
        assert_eq!(
            wait_before_sync(Some((Some(1), t(0))), Some(2), t(1), period),
            None
        );
    }

    #[test]
    fn pods_get_their_metrics_and_requests() {
        let pods = vec![
            pod("a", Some("100m"), "Running"),
            pod("b", None, "Running"),
            pod("done", Some("100m"), "Succeeded"),
        ];
        let metrics = json!({"items": [
            {"metadata": {"name": "a"}, "containers": [
                {"name": "app", "usage": {"cpu": "50000000n", "memory": "2048Ki"}}]},
        ]});
        let infos = pod_infos(&pods, &metrics);
        assert_eq!(infos.len(), 2, "finished pods do not count");
        assert_eq!(infos[0].requests.get("cpu"), Some(&0.1));
        assert_eq!(
            infos[0].requests.get("memory"),
            Some(&(16.0 * 1024.0 * 1024.0))
        );
        let usage = infos[0].usage.as_ref().expect("metrics");
        assert_eq!(usage.get("cpu"), Some(&0.05));
        assert_eq!(usage.get("memory"), Some(&(2048.0 * 1024.0)));
        assert!(infos[1].usage.is_none());
        assert_eq!(
            infos[1].unrequested,
            vec![
                ("cpu".to_string(), "app".to_string()),
                ("memory".into(), "app".into())
            ]
        );
    }

    #[test]
    fn the_status_keeps_transition_times_and_reports_metrics() {
        let t1 = Timestamp::from_second(1_800_000_060).expect("time");
        let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5},
            "status": {"desiredReplicas": 1, "conditions": [
                {"type": "AbleToScale", "status": "True", "lastTransitionTime": "2027-01-01T00:00:00Z"}]},
        }))
        .expect("hpa");
        let decision = Decision {
            current_replicas: 1,
            desired_replicas: 3,
            rescale_reason: Some("x".into()),
            current_metrics: vec![decide::MetricValue {
                resource: "cpu".into(),
                average_utilization: Some(120),
                average_value: 0.12,
            }],
            conditions: vec![
                decide::Condition {
                    type_: "AbleToScale",
                    status: true,
                    reason: "ReadyForNewScale".into(),
                    message: "m".into(),
                },
                decide::Condition {
                    type_: "ScalingActive",
                    status: true,
                    reason: "ValidMetricFound".into(),
                    message: "m".into(),
                },
            ],
            history: History::default(),
            metric_error: None,
        };
        let s = status_of(&hpa, &decision, t1, true);
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(
            v["conditions"][0]["lastTransitionTime"],
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            v["conditions"][1]["lastTransitionTime"],
            "2027-01-15T08:01:00Z"
        );
        assert_eq!(
            v["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            120
        );
        assert_eq!(
            v["currentMetrics"][0]["resource"]["current"]["averageValue"],
            "120m"
        );
        assert_eq!(v["lastScaleTime"], "2027-01-15T08:01:00Z");
        assert_eq!(v["observedGeneration"], 2);
        assert_eq!(v["desiredReplicas"], 3);
    }
}
