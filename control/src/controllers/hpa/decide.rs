//! The HorizontalPodAutoscaler's decision: a pure function of (metrics, spec, history, now).
//!
//! It follows kube-controller-manager's algorithm so that an HPA written for Kubernetes
//! behaves the same here:
//!
//! 1. **Per metric** (resource metrics: `cpu`, `memory`), the usage ratio is the pods'
//!    utilization (usage over requests, in percent) over the target utilization, or the
//!    average usage over the target average value. Within the tolerance (10 %, or the
//!    behavior's `tolerance`) nothing changes; else the proposal is
//!    `ceil(ratio × pods with metrics)`. Pods without metrics count as using their whole
//!    request (or the target) on a scale down and nothing on a scale up, and a proposal
//!    that this turns around keeps the current size.
//! 2. **Across metrics** the largest proposal wins; a metric that cannot be computed
//!    blocks a scale down (the others could be wrong about it) but not a scale up.
//! 3. **Stabilization**: the recommendations of the last `stabilizationWindowSeconds`
//!    bound the result (scale down to the highest recent one, scale up to the lowest),
//!    so a dip shorter than the window (300 s by default for scale down) changes nothing.
//! 4. **Rate policies**: the change over each policy's period (the rescales kept in the
//!    history) is bounded by `Pods` or `Percent` per period, `selectPolicy` choosing the
//!    most (`Max`) or least (`Min`) permissive policy, or none (`Disabled`); then
//!    `minReplicas` and `maxReplicas`.
//!
//! Without `behavior`, Kubernetes' defaults apply (scale up: no stabilization, at most
//! +100 % or +4 pods per 15 s, whichever is more; scale down: 300 s stabilization, at
//! most -100 % per 15 s). The conditions (`AbleToScale`, `ScalingActive`,
//! `ScalingLimited`) and their reasons and messages are Kubernetes'.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec,
};
use std::collections::BTreeMap;

/// How far from 1 a usage ratio may be and change nothing.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// The scale-down stabilization window when none is given.
pub const DEFAULT_SCALE_DOWN_WINDOW: i64 = 300;

/// What the controller knows of one pod of the target.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub name: String,
    /// Usage by resource name (`cpu` in cores, `memory` in bytes); `None` when the pod
    /// has no metrics (yet).
    pub usage: Option<BTreeMap<String, f64>>,
    /// The sum of its containers' requests by resource (same units), for the resources
    /// every container requests.
    pub requests: BTreeMap<String, f64>,
    /// A container without a request, by resource: (resource, container).
    pub unrequested: Vec<(String, String)>,
}

/// What the controller remembers of one HPA between decisions (kube-controller-manager
/// keeps the same in memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Recent unstabilized recommendations.
    pub recommendations: Vec<(Timestamp, i32)>,
    /// Recent rescales up and down: (when, by how many replicas).
    pub scale_ups: Vec<(Timestamp, i32)>,
    pub scale_downs: Vec<(Timestamp, i32)>,
}

impl History {
    /// Records a rescale from `from` to `to` at `now`, forgetting rescales older than the
    /// longest policy period.
    pub fn record_rescale(
        &mut self,
        spec: &HorizontalPodAutoscalerSpec,
        from: i32,
        to: i32,
        now: Timestamp,
    ) {
        self.record_rescale_by(spec.behavior.as_ref(), from, to, now);
    }

    /// [`History::record_rescale`] under `behavior` (an HPA's, or the request-driven
    /// autoscaler's).
    pub fn record_rescale_by(
        &mut self,
        behavior: Option<&HorizontalPodAutoscalerBehavior>,
        from: i32,
        to: i32,
        now: Timestamp,
    ) {
        let (up, down) = rules_of(behavior);
        let keep = |events: &mut Vec<(Timestamp, i32)>, rules: &Rules| {
            let longest = rules.policies.iter().map(|p| p.period).max().unwrap_or(0);
            events.retain(|(t, _)| now.duration_since(*t) <= SignedDuration::from_secs(longest));
        };
        if to > from {
            keep(&mut self.scale_ups, &up);
            self.scale_ups.push((now, to - from));
        } else if to < from {
            keep(&mut self.scale_downs, &down);
            self.scale_downs.push((now, from - to));
        }
    }
}

/// One condition of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The current value of one metric, as the status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub resource: String,
    /// Usage over requests, in percent (utilization targets only).
    pub average_utilization: Option<i32>,
    /// The average usage per pod (cores or bytes).
    pub average_value: f64,
}

/// What [`decide`] concludes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub current_replicas: i32,
    pub desired_replicas: i32,
    /// Why the size changes (the Event's reason text), when it does.
    pub rescale_reason: Option<String>,
    pub current_metrics: Vec<MetricValue>,
    pub conditions: Vec<Condition>,
    /// The history to keep (this recommendation added); rescales are added by
    /// [`History::record_rescale`] once the rescale is done.
    pub history: History,
    /// A metric could not be computed: its error (also in `ScalingActive`).
    pub metric_error: Option<String>,
}

impl Decision {
    pub fn rescale(&self) -> bool {
        self.desired_replicas != self.current_replicas
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    pods: bool,
    value: i32,
    period: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Rules {
    window: i64,
    select: Select,
    policies: Vec<Policy>,
    tolerance: f64,
}

fn policy(pods: bool, value: i32, period: i64) -> Policy {
    Policy {
        pods,
        value,
        period,
    }
}

/// The scale-up and scale-down rules of `spec`, Kubernetes' defaults filled in.
fn rules(spec: &HorizontalPodAutoscalerSpec) -> (Rules, Rules) {
    rules_of(spec.behavior.as_ref())
}

/// The scale-up and scale-down rules of `behavior`, Kubernetes' defaults filled in.
fn rules_of(behavior: Option<&HorizontalPodAutoscalerBehavior>) -> (Rules, Rules) {
    let up_default = Rules {
        window: 0,
        select: Select::Max,
        policies: vec![policy(false, 100, 15), policy(true, 4, 15)],
        tolerance: DEFAULT_TOLERANCE,
    };
    let down_default = Rules {
        window: DEFAULT_SCALE_DOWN_WINDOW,
        select: Select::Max,
        policies: vec![policy(false, 100, 15)],
        tolerance: DEFAULT_TOLERANCE,
    };
    let merge = |given: Option<&HPAScalingRules>, default: Rules| -> Rules {
        let Some(g) = given else { return default };
        Rules {
            window: g
                .stabilization_window_seconds
                .map_or(default.window, i64::from),
            select: match g.select_policy.as_deref() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            policies: match &g.policies {
                Some(p) if !p.is_empty() => p
                    .iter()
                    .map(|p| policy(p.type_ == "Pods", p.value, i64::from(p.period_seconds)))
                    .collect(),
                _ => default.policies,
            },
            tolerance: g
                .tolerance
                .as_ref()
                .and_then(|q| crate::api::quantity::milli_value(&q.0))
                .map_or(default.tolerance, |m| m as f64 / 1000.0),
        }
    };
    (
        merge(behavior.and_then(|b| b.scale_up.as_ref()), up_default),
        merge(behavior.and_then(|b| b.scale_down.as_ref()), down_default),
    )
}

/// What one metric proposes.
struct Proposal {
    replicas: i32,
    /// How the Event and the condition name the metric.
    name: String,
    value: MetricValue,
}

fn metric_name(m: &MetricSpec) -> Result<(String, &str, Target), String> {
    let Some(r) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
        return Err(format!(
            "invalid metric source type {:?}: only Resource metrics (cpu, memory) are supported",
            m.type_
        ));
    };
    let target = match (
        r.target.type_.as_str(),
        r.target.average_utilization,
        r.target.average_value.as_ref(),
    ) {
        ("Utilization", Some(u), _) => Target::Utilization(u),
        ("AverageValue", _, Some(v)) => {
            let milli = crate::api::quantity::milli_value(&v.0)
                .ok_or_else(|| format!("invalid averageValue {:?}", v.0))?;
            Target::AverageValue(milli as f64 / 1000.0)
        }
        (t, _, _) => {
            return Err(format!(
                "invalid resource metric target {t:?} for {}: Utilization with averageUtilization or AverageValue with averageValue",
                r.name
            ));
        }
    };
    let name = match target {
        Target::Utilization(_) => {
            format!("{} resource utilization (percentage of request)", r.name)
        }
        Target::AverageValue(_) => format!("{} resource", r.name),
    };
    Ok((name, r.name.as_str(), target))
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Utilization(i32),
    AverageValue(f64),
}

/// The replicas one resource metric asks for (step 1 of the module docs).
fn propose(
    metric: &MetricSpec,
    pods: &[PodInfo],
    current: i32,
    tolerance: f64,
) -> Result<Proposal, String> {
    let (name, resource, target) = metric_name(metric)?;
    let with: Vec<(&PodInfo, f64)> = pods
        .iter()
        .filter_map(|p| Some((p, *p.usage.as_ref()?.get(resource)?)))
        .collect();
    let missing: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| p.usage.as_ref().and_then(|u| u.get(resource)).is_none())
        .collect();
    if with.is_empty() {
        return Err(format!(
            "failed to get {resource} utilization: did not receive metrics for targeted pods (pods might be unready)"
        ));
    }
    let usage: f64 = with.iter().map(|(_, u)| u).sum();
    let average_value = usage / with.len() as f64;
    // (ratio, utilization, per-pod fallback usage on a scale down)
    let (ratio, utilization, requests) = match target {
        Target::Utilization(target) => {
            let mut requests = BTreeMap::new();
            for p in pods {
                match p.requests.get(resource) {
                    Some(r) => {
                        requests.insert(p.name.as_str(), *r);
                    }
                    None => {
                        let container = p
                            .unrequested
                            .iter()
                            .find(|(r, _)| r == resource)
                            .map_or("", |(_, c)| c.as_str());
                        return Err(format!(
                            "failed to get {resource} utilization: missing request for {resource} in container {container} of Pod {}",
                            p.name
                        ));
                    }
                }
            }
            let requested: f64 = with.iter().map(|(p, _)| requests[p.name.as_str()]).sum();
            if requested <= 0.0 {
                return Err(format!(
                    "failed to get {resource} utilization: the pods request no {resource}"
                ));
            }
            let utilization = usage * 100.0 / requested;
            (
                utilization / f64::from(target.max(1)),
                Some(utilization as i32),
                Some((requests, target)),
            )
        }
        Target::AverageValue(target) => (average_value / target.max(f64::MIN_POSITIVE), None, None),
    };
    let value = MetricValue {
        resource: resource.to_string(),
        average_utilization: utilization,
        average_value,
    };
    let replicas = if missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            current
        } else {
            (ratio * with.len() as f64).ceil() as i32
        }
    } else {
        // Pods without metrics: their whole request (or the target) on a scale down,
        // nothing on a scale up.
        let fallback = |p: &PodInfo| -> f64 {
            if ratio >= 1.0 {
                return 0.0;
            }
            match (&requests, target) {
                (Some((reqs, t)), _) => {
                    reqs.get(p.name.as_str()).copied().unwrap_or(0.0) * f64::from((*t).max(100))
                        / 100.0
                }
                (None, Target::AverageValue(t)) => t,
                (None, Target::Utilization(_)) => 0.0,
            }
        };
        let all_usage = usage + missing.iter().map(|p| fallback(p)).sum::<f64>();
        let count = (with.len() + missing.len()) as f64;
        let new_ratio = match (&requests, target) {
            (Some((reqs, t)), _) => {
                let total: f64 = reqs.values().sum();
                if total <= 0.0 {
                    ratio
                } else {
                    all_usage * 100.0 / total / f64::from((*t).max(1))
                }
            }
            (None, Target::AverageValue(t)) => all_usage / count / t.max(f64::MIN_POSITIVE),
            (None, Target::Utilization(_)) => ratio,
        };
        let flipped = (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0);
        if (1.0 - new_ratio).abs() <= tolerance || flipped {
            current
        } else {
            let n = (new_ratio * count).ceil() as i32;
            if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
                current
            } else {
                n
            }
        }
    };
    Ok(Proposal {
        replicas,
        name,
        value,
    })
}

fn condition(type_: &'static str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_,
        status,
        reason: reason.to_string(),
        message,
    }
}

/// Step 3: the recommendation within the recent ones' bounds; records `desired`.
fn stabilize(
    desired: i32,
    current: i32,
    up: &Rules,
    down: &Rules,
    history: &mut History,
    now: Timestamp,
) -> (i32, &'static str, &'static str) {
    let up_cutoff = now - SignedDuration::from_secs(up.window);
    let down_cutoff = now - SignedDuration::from_secs(down.window);
    let (mut up_rec, mut down_rec) = (desired, desired);
    for (t, r) in &history.recommendations {
        if *t > up_cutoff {
            up_rec = up_rec.min(*r);
        }
        if *t > down_cutoff {
            down_rec = down_rec.max(*r);
        }
    }
    let recommendation = current.max(up_rec).min(down_rec);
    let oldest = up_cutoff.min(down_cutoff);
    history.recommendations.retain(|(t, _)| *t >= oldest);
    history.recommendations.push((now, desired));
    if desired >= current {
        (
            recommendation,
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        )
    } else {
        (
            recommendation,
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    }
}

fn changed_within(events: &[(Timestamp, i32)], period: i64, now: Timestamp) -> i32 {
    let cutoff = now - SignedDuration::from_secs(period);
    events
        .iter()
        .filter(|(t, _)| *t > cutoff)
        .map(|(_, n)| n)
        .sum()
}

/// The most replicas the scale-up policies allow now.
fn scale_up_limit(current: i32, history: &History, rules: &Rules, now: Timestamp) -> i32 {
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i64::MAX, i64::min),
        Select::Max => (i64::MIN, i64::max),
    };
    for p in &rules.policies {
        let start = i64::from(current)
            - i64::from(changed_within(&history.scale_ups, p.period, now))
            + i64::from(changed_within(&history.scale_downs, p.period, now));
        let proposed = if p.pods {
            start + i64::from(p.value)
        } else {
            (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
        };
        result = pick(result, proposed);
    }
    i32::try_from(result.clamp(0, i64::from(i32::MAX))).unwrap_or(i32::MAX)
}

/// The fewest replicas the scale-down policies allow now.
fn scale_down_limit(current: i32, history: &History, rules: &Rules, now: Timestamp) -> i32 {
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i64::MIN, i64::max),
        Select::Max => (i64::MAX, i64::min),
    };
    for p in &rules.policies {
        let start = i64::from(current)
            - i64::from(changed_within(&history.scale_ups, p.period, now))
            + i64::from(changed_within(&history.scale_downs, p.period, now));
        let proposed = if p.pods {
            start - i64::from(p.value)
        } else {
            (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64
        };
        result = pick(result, proposed);
    }
    i32::try_from(result.clamp(0, i64::from(i32::MAX))).unwrap_or(i32::MAX)
}

/// Step 4: the rate policies, then the bounds.
fn limit(
    desired: i32,
    current: i32,
    (min, max): (i32, i32),
    (up, down): (&Rules, &Rules),
    history: &History,
    now: Timestamp,
) -> (i32, &'static str, &'static str) {
    if desired > current {
        let limit = scale_up_limit(current, history, up, now).max(current);
        let (allowed, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if desired > allowed {
            return (allowed, reason, message);
        }
    } else if desired < current {
        let limit = scale_down_limit(current, history, down, now).min(current);
        let (allowed, reason, message) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if desired < allowed {
            return (allowed, reason, message);
        }
    }
    (
        desired,
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    )
}

/// Steps 3 and 4 for a recommendation made elsewhere (the request-driven autoscaler's,
/// [`crate::controllers::requestscale`]): `desired` stabilized by `behavior`'s windows
/// (recorded in `history`), then limited by its rate policies and `(min, max)`.
pub fn settle(
    desired: i32,
    current: i32,
    bounds: (i32, i32),
    behavior: Option<&HorizontalPodAutoscalerBehavior>,
    history: &mut History,
    now: Timestamp,
) -> i32 {
    let (up, down) = rules_of(behavior);
    let (stabilized, _, _) = stabilize(desired, current, &up, &down, history, now);
    limit(stabilized, current, bounds, (&up, &down), history, now).0
}

/// Decides the size of the target (see the module docs). `current` is the target's
/// `spec.replicas`; `pods` are its live pods (not terminating, not finished).
pub fn decide(
    spec: &HorizontalPodAutoscalerSpec,
    current: i32,
    pods: &[PodInfo],
    history: &History,
    now: Timestamp,
) -> Decision {
    let mut history = history.clone();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let (up, down) = rules(spec);
    let mut conditions = vec![condition(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".into(),
    )];
    let mut decision = Decision {
        current_replicas: current,
        desired_replicas: current,
        rescale_reason: None,
        current_metrics: Vec::new(),
        conditions: Vec::new(),
        history: History::default(),
        metric_error: None,
    };
    if current == 0 && min != 0 {
        conditions.push(condition(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        ));
        decision.desired_replicas = 0;
        decision.conditions = conditions;
        decision.history = history;
        return decision;
    }
    if current > max || current < min {
        let (desired, reason) = if current > max {
            (max, "Current number of replicas above Spec.MaxReplicas")
        } else {
            (min, "Current number of replicas below Spec.MinReplicas")
        };
        conditions.push(condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count".into(),
        ));
        conditions.push(condition(
            "ScalingLimited",
            true,
            if current > max {
                "TooManyReplicas"
            } else {
                "TooFewReplicas"
            },
            if current > max {
                "the desired replica count is more than the maximum replica count".into()
            } else {
                "the desired replica count is less than the minimum replica count".into()
            },
        ));
        decision.desired_replicas = desired;
        decision.rescale_reason = Some(reason.into());
        decision.conditions = conditions;
        decision.history = history;
        return decision;
    }
    // Steps 1 and 2: every metric's proposal, the largest wins.
    let metrics: Vec<MetricSpec> = spec.metrics.clone().unwrap_or_default();
    let mut best: Option<Proposal> = None;
    let mut errors = Vec::new();
    for m in &metrics {
        match propose(m, pods, current, up.tolerance.min(down.tolerance)) {
            Ok(p) => {
                decision.current_metrics.push(p.value.clone());
                if best.as_ref().is_none_or(|b| p.replicas > b.replicas) {
                    best = Some(p);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let Some(best) = best else {
        let message = errors
            .first()
            .cloned()
            .unwrap_or_else(|| "no metrics to compute a replica count from".into());
        conditions.push(condition(
            "ScalingActive",
            false,
            "FailedGetResourceMetric",
            format!("the HPA was unable to compute the replica count: {message}"),
        ));
        decision.metric_error = Some(message);
        decision.conditions = conditions;
        decision.history = history;
        return decision;
    };
    let mut desired = best.replicas;
    if !errors.is_empty() && desired < current {
        // An invalid metric might want more: do not scale down on the others.
        desired = current;
    }
    decision.metric_error = errors.first().cloned();
    conditions.push(condition(
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!(
            "the HPA was able to successfully calculate a replica count from {}",
            best.name
        ),
    ));
    let reason = if desired > current {
        Some(format!("{} above target", best.name))
    } else if desired < current {
        Some("All metrics below target".to_string())
    } else {
        None
    };
    // Steps 3 and 4.
    let (stabilized, st_reason, st_message) =
        stabilize(desired, current, &up, &down, &mut history, now);
    conditions[0] = if stabilized != desired {
        condition("AbleToScale", true, st_reason, st_message.into())
    } else {
        condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size".into(),
        )
    };
    let (limited, l_reason, l_message) =
        limit(stabilized, current, (min, max), (&up, &down), &history, now);
    conditions.push(condition(
        "ScalingLimited",
        limited != stabilized,
        l_reason,
        l_message.into(),
    ));
    decision.desired_replicas = limited;
    decision.rescale_reason = reason.filter(|_| limited != current);
    decision.conditions = conditions;
    decision.history = history;
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> HorizontalPodAutoscalerSpec {
        let mut base = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
        });
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            for (k, val) in o {
                b.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(base).expect("spec")
    }

    /// `n` pods each requesting 100m and using `cpu` cores.
    fn pods(cpus: &[Option<f64>]) -> Vec<PodInfo> {
        cpus.iter()
            .enumerate()
            .map(|(i, cpu)| PodInfo {
                name: format!("web-{i}"),
                usage: cpu
                    .map(|c| BTreeMap::from([("cpu".to_string(), c), ("memory".to_string(), 4e6)])),
                requests: BTreeMap::from([("cpu".to_string(), 0.1)]),
                unrequested: vec![("memory".into(), "app".into())],
            })
            .collect()
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn cond<'a>(d: &'a Decision, type_: &str) -> &'a Condition {
        d.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} in {d:?}"))
    }

    #[test]
    fn utilization_above_target_scales_up_with_kubernetes_reason() {
        // Two pods at 100% of a 100m request, target 50%: four pods.
        let d = decide(
            &spec(json!({})),
            2,
            &pods(&[Some(0.1), Some(0.1)]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 4);
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("cpu resource utilization (percentage of request) above target")
        );
        assert_eq!(d.current_metrics[0].average_utilization, Some(100));
        assert!(cond(&d, "ScalingActive").status);
        assert_eq!(cond(&d, "ScalingActive").reason, "ValidMetricFound");
        assert!(!cond(&d, "ScalingLimited").status);
        assert_eq!(cond(&d, "AbleToScale").reason, "ReadyForNewScale");
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        // 54% against 50%: ratio 1.08.
        let d = decide(
            &spec(json!({})),
            2,
            &pods(&[Some(0.054), Some(0.054)]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 2);
        assert!(!d.rescale());
        assert_eq!(d.rescale_reason, None);
    }

    #[test]
    fn max_replicas_and_the_rate_limit_bound_a_scale_up() {
        // 10 pods' worth of demand from 1 pod, max 10: the default policies allow
        // max(+100%, +4) = 5 in the first 15 s.
        let d = decide(
            &spec(json!({})),
            1,
            &pods(&[Some(0.5)]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 5);
        assert!(cond(&d, "ScalingLimited").status);
        assert_eq!(cond(&d, "ScalingLimited").reason, "ScaleUpLimit");
        // With the history of that rescale, 10 s later nothing more is allowed yet ...
        let mut h = d.history.clone();
        h.record_rescale(&spec(json!({})), 1, 5, t(0));
        let five = pods(&[Some(0.5), Some(0.5), Some(0.5), Some(0.5), Some(0.5)]);
        let d = decide(&spec(json!({})), 5, &five, &h, t(10));
        assert_eq!(d.desired_replicas, 5, "{d:?}");
        // ... and after the period the max bounds it.
        let d = decide(&spec(json!({})), 5, &five, &h, t(16));
        assert_eq!(d.desired_replicas, 10);
        assert_eq!(cond(&d, "ScalingLimited").reason, "TooManyReplicas");
        assert!(cond(&d, "ScalingLimited").status);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let s = spec(json!({}));
        let busy = pods(&[Some(0.1), Some(0.1), Some(0.1), Some(0.1)]);
        let idle = pods(&[Some(0.0), Some(0.0), Some(0.0), Some(0.0)]);
        // Busy at 4 replicas: the recommendation is 8 (capped by rate to 8).
        let d = decide(&s, 4, &busy, &History::default(), t(0));
        assert_eq!(d.desired_replicas, 8);
        let h = d.history;
        // Suppose it stayed at 4 and went idle: the busy recommendation holds it up
        // (the highest of the last 300 s is 8, above the current 4).
        let d = decide(&s, 4, &idle, &h, t(60));
        assert_eq!(d.desired_replicas, 4, "{d:?}");
        assert_eq!(cond(&d, "AbleToScale").reason, "ScaleDownStabilized");
        // 300 s after the busy recommendation, down to min.
        let d = decide(&s, 4, &idle, &d.history, t(301));
        assert_eq!(d.desired_replicas, 1);
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("All metrics below target")
        );
        assert_eq!(cond(&d, "ScalingLimited").reason, "TooFewReplicas");
    }

    #[test]
    fn behavior_shortens_the_window_and_limits_the_rate() {
        let s = spec(json!({"behavior": {"scaleDown": {
            "stabilizationWindowSeconds": 5,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]}}}));
        let idle = pods(&[Some(0.0), Some(0.0), Some(0.0), Some(0.0)]);
        let d = decide(&s, 4, &pods(&[Some(0.05); 4]), &History::default(), t(0));
        assert_eq!(d.desired_replicas, 4);
        let d = decide(&s, 4, &idle, &d.history, t(3));
        assert_eq!(d.desired_replicas, 4, "within the 5 s window");
        let d = decide(&s, 4, &idle, &d.history, t(6));
        assert_eq!(d.desired_replicas, 3, "one pod per 10 s");
        assert_eq!(cond(&d, "ScalingLimited").reason, "ScaleDownLimit");
        let mut h = d.history.clone();
        h.record_rescale(&s, 4, 3, t(6));
        let d = decide(&s, 3, &idle[..3], &h, t(10));
        assert_eq!(d.desired_replicas, 3, "the period is not over");
        let d = decide(&s, 3, &idle[..3], &h, t(17));
        assert_eq!(d.desired_replicas, 2);
        // Disabled: no scale down at all.
        let off = spec(json!({"behavior": {"scaleDown": {"selectPolicy": "Disabled"}}}));
        let d = decide(&off, 4, &idle, &History::default(), t(0));
        assert_eq!(d.desired_replicas, 4);
    }

    #[test]
    fn missing_metrics_are_assumed_against_the_change() {
        // Scale up: one pod at 100%, one without metrics counted as 0: ratio 1 → keep.
        let d = decide(
            &spec(json!({})),
            2,
            &pods(&[Some(0.1), None]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 2, "{d:?}");
        // Two busy, one missing: (0.2 + 0) / 0.3 = 67% → ratio 1.33 → ceil(4) = 4.
        let d = decide(
            &spec(json!({})),
            3,
            &pods(&[Some(0.1), Some(0.1), None]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 4);
        // No metrics at all: ScalingActive False.
        let d = decide(
            &spec(json!({})),
            2,
            &pods(&[None, None]),
            &History::default(),
            t(0),
        );
        assert!(!d.rescale());
        assert_eq!(cond(&d, "ScalingActive").reason, "FailedGetResourceMetric");
        assert!(!cond(&d, "ScalingActive").status);
    }

    #[test]
    fn utilization_needs_requests_and_average_value_does_not() {
        let mem = spec(
            json!({"metrics": [{"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "Utilization", "averageUtilization": 50}}}]}),
        );
        let d = decide(
            &mem,
            2,
            &pods(&[Some(0.1), Some(0.1)]),
            &History::default(),
            t(0),
        );
        assert_eq!(
            d.metric_error.as_deref(),
            Some(
                "failed to get memory utilization: missing request for memory in container app of Pod web-0"
            )
        );
        // 4 MB average against 2 MB: double.
        let avg = spec(
            json!({"metrics": [{"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "AverageValue", "averageValue": "2M"}}}]}),
        );
        let d = decide(
            &avg,
            2,
            &pods(&[Some(0.1), Some(0.1)]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 4);
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("memory resource above target")
        );
        assert_eq!(d.current_metrics[0].average_value, 4e6);
    }

    #[test]
    fn bounds_and_a_target_at_zero() {
        let d = decide(&spec(json!({})), 0, &[], &History::default(), t(0));
        assert_eq!(d.desired_replicas, 0);
        assert_eq!(cond(&d, "ScalingActive").reason, "ScalingDisabled");
        let d = decide(&spec(json!({})), 12, &[], &History::default(), t(0));
        assert_eq!(d.desired_replicas, 10);
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("Current number of replicas above Spec.MaxReplicas")
        );
        let d = decide(
            &spec(json!({"minReplicas": 3})),
            1,
            &[],
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 3);
    }

    #[test]
    fn several_metrics_take_the_largest_and_an_error_blocks_scale_down() {
        let both = spec(json!({"metrics": [
            {"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "AverageValue", "averageValue": "1M"}}}]}));
        // cpu wants 2, memory wants 8.
        let d = decide(
            &both,
            2,
            &pods(&[Some(0.05), Some(0.05)]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 6, "rate-limited 2 → max(4, 6)");
        assert_eq!(
            d.rescale_reason.as_deref(),
            Some("memory resource above target")
        );
        let broken = spec(json!({"metrics": [
            {"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}},
            {"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}));
        let d = decide(
            &broken,
            4,
            &pods(&[Some(0.0); 4]),
            &History::default(),
            t(0),
        );
        assert_eq!(d.desired_replicas, 4);
        assert!(d.metric_error.is_some());
    }
}
