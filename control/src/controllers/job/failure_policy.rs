//! A Job's `podFailurePolicy`: what a failed pod means for the Job, decided by the first
//! rule that matches it, as Kubernetes' Job controller decides.
//!
//! - `FailJob`: the Job fails at once (reason `PodFailurePolicy`), whatever its
//!   `backoffLimit`, with a message naming the pod, the container and the rule.
//! - `Ignore`: the failure is not counted against `backoffLimit` (for example a pod evicted
//!   by a drain, which carries the `DisruptionTarget` condition); the pod is replaced.
//! - `Count`: counted, as without a policy. So is a failed pod no rule matches.
//!
//! A rule matches on the exit codes of the pod's containers (`onExitCodes`: `In` or
//! `NotIn` a list, optionally for one container; exit code 0 never matches) or on the
//! pod's conditions (`onPodConditions`: type and status). `FailIndex` needs
//! `backoffLimitPerIndex`, which the API server refuses as not supported, so it is never
//! seen here.

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::Pod;

/// What a failed pod does to its Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fail the Job with this message.
    FailJob(String),
    /// Do not count the failure.
    Ignore,
    /// Count the failure against `backoffLimit`.
    Count,
}

/// The verdict of `policy` on the failed `pod`.
pub fn judge(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Verdict {
    let Some(policy) = policy else {
        return Verdict::Count;
    };
    for (index, rule) in policy.rules.iter().enumerate() {
        let Some(what) = matches(rule, pod) else {
            continue;
        };
        return match rule.action.as_str() {
            "FailJob" => Verdict::FailJob(format!(
                "{what} matching {} rule at index {index}",
                rule.action
            )),
            "Ignore" => Verdict::Ignore,
            _ => Verdict::Count,
        };
    }
    Verdict::Count
}

/// How `rule` matches `pod`, in the words of the Job's failure message; `None` when it
/// does not.
fn matches(rule: &PodFailurePolicyRule, pod: &Pod) -> Option<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref()?;
    if let Some(req) = &rule.on_exit_codes {
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for c in statuses {
            if req.container_name.as_ref().is_some_and(|n| *n != c.name) {
                continue;
            }
            let Some(code) = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
            else {
                continue;
            };
            let listed = req.values.contains(&code);
            let hit = code != 0
                && match req.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    _ => false,
                };
            if hit {
                return Some(format!(
                    "Container {} for pod {ns}/{name} failed with exit code {code}",
                    c.name
                ));
            }
        }
        return None;
    }
    for pattern in rule.on_pod_conditions.iter().flatten() {
        let want = pattern.status.as_deref().unwrap_or("True");
        if status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == pattern.type_ && c.status == want)
        {
            return Some(format!("Pod {ns}/{name} has condition {}", pattern.type_));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(json!({ "rules": rules })).unwrap()
    }

    fn failed(containers: serde_json::Value, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "containerStatuses": containers,
                "conditions": conditions}
        }))
        .unwrap()
    }

    fn exited(name: &str, code: i32) -> serde_json::Value {
        json!({"name": name, "ready": false, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": code}}})
    }

    #[test]
    fn exit_codes_in_and_not_in_with_zero_never_matching() {
        let p = policy(json!([
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [1, 2]}},
        ]));
        let pod = failed(json!([exited("main", 3)]), json!([]));
        assert_eq!(judge(Some(&p), &pod), Verdict::Ignore);
        let pod = failed(json!([exited("main", 42)]), json!([]));
        assert_eq!(
            judge(Some(&p), &pod),
            Verdict::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        // Another container's code, a listed code, and 0: counted.
        let pod = failed(json!([exited("side", 42), exited("main", 0)]), json!([]));
        assert_eq!(judge(Some(&p), &pod), Verdict::Count);
        let pod = failed(json!([exited("main", 2)]), json!([]));
        assert_eq!(judge(Some(&p), &pod), Verdict::Count);
        assert_eq!(judge(None, &pod), Verdict::Count);
    }

    #[test]
    fn pod_conditions_match_type_and_status_defaulting_to_true() {
        let p = policy(json!([
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onPodConditions": [{"type": "ConfigIssue", "status": "False"}]},
        ]));
        let evicted = failed(
            json!([]),
            json!([{"type": "DisruptionTarget", "status": "True"}]),
        );
        assert_eq!(judge(Some(&p), &evicted), Verdict::Ignore);
        let not = failed(
            json!([]),
            json!([{"type": "DisruptionTarget", "status": "False"}]),
        );
        assert_eq!(judge(Some(&p), &not), Verdict::Count);
        let config = failed(
            json!([]),
            json!([{"type": "ConfigIssue", "status": "False"}]),
        );
        assert_eq!(
            judge(Some(&p), &config),
            Verdict::FailJob(
                "Pod ns/p has condition ConfigIssue matching FailJob rule at index 1".into()
            )
        );
    }
}
