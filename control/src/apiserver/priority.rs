//! Pod priority, as kube-apiserver's Priority admission: a pod's `priorityClassName`
//! resolves to `spec.priority` and `spec.preemptionPolicy` from its PriorityClass (the
//! global default class, or priority 0, when it names none), so the scheduler orders its
//! queue and preempts by an integer it can trust. The two built-in classes,
//! `system-cluster-critical` (2,000,000,000) and `system-node-critical` (2,000,001,000),
//! are created when the control plane starts ([`bootstrap`]) and are known to admission
//! even before.

use super::AppState;
use super::error::ApiError;
use super::paging::ListOptions;
use super::registry::store;
use super::request::{Query, Target};
use serde_json::{Value, json};

/// Names only the built-in classes may have.
pub const SYSTEM_PREFIX: &str = "system-";
/// The highest value a user's class may have.
pub const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;
/// The built-in classes: name, value, description.
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// Whether `name` with `value` is one of the built-in classes, else why not.
pub fn known_system_class(name: &str, value: i64, global: bool) -> Result<(), String> {
    match SYSTEM_CLASSES.iter().find(|(n, _, _)| *n == name) {
        None => Err(format!("{name:?} is not a known system priority class")),
        Some((_, v, _)) if *v != value => Err(format!("value of {name} PriorityClass must be {v}")),
        Some(_) if global => Err(format!(
            "globalDefault of {name} PriorityClass must be false"
        )),
        Some(_) => Ok(()),
    }
}

fn classes_target() -> Option<Target> {
    Some(Target {
        kind: crate::api::find_kind("scheduling.k8s.io/v1", "PriorityClass")?,
        namespace: None,
        name: None,
        subresource: None,
    })
}

async fn classes(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let Some(target) = classes_target() else {
        return Ok(Vec::new());
    };
    let filter = store::Filter::from_query(target.kind, &Query::parse(None))?;
    let (_, page) = store::list(state, &target, &filter, &ListOptions::default()).await?;
    Ok(page.items)
}

/// Refuses a second global default.
pub async fn admit_class(
    state: &AppState,
    obj: &Value,
    current: Option<&Value>,
) -> Result<(), ApiError> {
    if obj.get("globalDefault").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let _ = current;
    for c in classes(state).await? {
        let other = c
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if other != name && c.get("globalDefault").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::Forbidden(format!(
                "priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: PriorityClass {other} is already marked as default. Only one default can exist"
            )));
        }
    }
    Ok(())
}

/// The class a pod names (or the default), resolved against `classes`: (name, value,
/// preemption policy); `Err` with Kubernetes' message when it names an unknown class.
pub fn resolve(
    named: Option<&str>,
    classes: &[Value],
) -> Result<Option<(String, i64, String)>, String> {
    let of = |c: &Value| {
        (
            c.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            c.get("value").and_then(Value::as_i64).unwrap_or(0),
            c.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        )
    };
    match named.filter(|n| !n.is_empty()) {
        Some(name) => {
            if let Some(c) = classes
                .iter()
                .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
            {
                return Ok(Some(of(c)));
            }
            match SYSTEM_CLASSES.iter().find(|(n, _, _)| *n == name) {
                Some((n, v, _)) => Ok(Some((n.to_string(), *v, "PreemptLowerPriority".into()))),
                None => Err(format!("no PriorityClass with name {name} was found")),
            }
        }
        None => Ok(classes
            .iter()
            .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
            .map(of)
            .min_by_key(|(_, v, _)| *v)),
    }
}

/// Sets a pod's priority from its class.
pub async fn admit_pod(state: &AppState, target: &Target, pod: &mut Value) -> Result<(), ApiError> {
    let named = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .map(String::from);
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let forbidden = |m: String| {
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {m}",
            target.kind.qualified_plural()
        ))
    };
    let classes = classes(state).await?;
    let resolved = resolve(named.as_deref(), &classes).map_err(forbidden)?;
    let (class, value, policy) =
        resolved.unwrap_or_else(|| (String::new(), 0, "PreemptLowerPriority".into()));
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64)
        && given != value
    {
        return Err(forbidden(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("priority".into(), json!(value));
        if !class.is_empty() {
            spec.insert("priorityClassName".into(), json!(class));
        }
        spec.entry("preemptionPolicy").or_insert(json!(policy));
    }
    Ok(())
}

/// Creates the built-in classes (through the API, like any client would).
pub async fn bootstrap(client: kube::Client) -> Result<(), kube::Error> {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    use kube::api::{Api, PostParams};
    let api: Api<PriorityClass> = Api::all(client);
    for (name, value, description) in SYSTEM_CLASSES {
        let pc: PriorityClass = serde_json::from_value(json!({
            "metadata": {"name": name}, "value": value, "description": description,
        }))
        .map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &pc).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classes_resolve_by_name_or_default() {
        let classes = [
            json!({"metadata": {"name": "high"}, "value": 1000, "preemptionPolicy": "Never"}),
            json!({"metadata": {"name": "low"}, "value": 10, "globalDefault": true}),
        ];
        assert_eq!(
            resolve(Some("high"), &classes).unwrap(),
            Some(("high".into(), 1000, "Never".into()))
        );
        assert_eq!(resolve(None, &classes).unwrap().unwrap().1, 10);
        assert_eq!(resolve(None, &[]).unwrap(), None);
        assert_eq!(
            resolve(Some("system-node-critical"), &[])
                .unwrap()
                .unwrap()
                .1,
            2_000_001_000
        );
        assert_eq!(
            resolve(Some("nope"), &classes).unwrap_err(),
            "no PriorityClass with name nope was found"
        );
        assert!(known_system_class("system-cluster-critical", 2_000_000_000, false).is_ok());
        assert!(known_system_class("system-cluster-critical", 5, false).is_err());
        assert!(known_system_class("system-mine", 5, false).is_err());
    }
}
