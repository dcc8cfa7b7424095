//! The CustomResourceDefinition controller, as Kubernetes' naming, establishing and
//! finalizing controllers together:
//!
//! - it keeps each definition's `NamesAccepted` and `Established` conditions (and
//!   `acceptedNames`, `storedVersions`) equal to what the definitions as a whole decide
//!   (the earliest definition keeps a contested name; a definition whose rival is gone
//!   is accepted then), with the same pure function the API server uses on create
//!   ([`status_among`]);
//! - a definition being deleted has its objects deleted, in every namespace, and only
//!   then loses the `customresourcecleanup` finalizer that holds it, so its kind is
//!   served until its last object is gone and nothing it stored outlives it.
//!
//! Definitions are few, so every change to any of them re-checks all of them against a
//! reflector's view. Objects that hold finalizers of their own keep a definition
//! waiting; it is looked at again every half second until they are gone.

use crate::apiserver::registry::custom::definition::CLEANUP_FINALIZER;
use crate::apiserver::registry::strategies::customresourcedefinition::status_among;
use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a definition whose objects are still going is looked at again.
const RECHECK: Duration = Duration::from_millis(500);

pub fn start(client: kube::Client, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    tasks.spawn(run(client, shutdown));
}

/// What the conditions say, without their times: whether a write would change anything.
fn essence(status: Option<&Value>) -> Value {
    let Some(s) = status else { return Value::Null };
    let conditions: Vec<Value> = s
        .get("conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| json!([c["type"], c["status"], c["reason"], c["message"]]))
                .collect()
        })
        .unwrap_or_default();
    json!([conditions, s.get("acceptedNames"), s.get("storedVersions")])
}

async fn run(client: kube::Client, shutdown: CancellationToken) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let events =
        reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff();
    futures::pin_mut!(events);
    let mut pending = false;
    loop {
        let recheck = async {
            if pending {
                tokio::time::sleep(RECHECK).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = recheck => {}
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "crd controller: watch");
                    continue;
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(_)) => {}
            },
        }
        let all: Vec<Value> = reader
            .state()
            .iter()
            .filter_map(|c| serde_json::to_value(&**c).ok())
            .collect();
        pending = false;
        for crd in &all {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            let deleting = crd.pointer("/metadata/deletionTimestamp").is_some();
            let held = crd
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|f| f == CLEANUP_FINALIZER));
            if deleting {
                if held {
                    match clean_up(&client, &api, crd).await {
                        Ok(true) => {}
                        Ok(false) => pending = true,
                        Err(e) => {
                            tracing::debug!(error = %e, crd = name, "crd controller: clean-up");
                            pending = true;
                        }
                    }
                }
                continue;
            }
            // A definition being deleted holds its names until it is gone, as the API
            // server, which serves it until then, sees it.
            let wanted = status_among(crd, &all);
            if essence(crd.get("status")) == essence(Some(&wanted)) {
                continue;
            }
            let patch = json!({"status": wanted});
            if let Err(e) = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(error = %e, crd = name, "crd controller: status");
            }
        }
    }
}

/// Deletes the objects of a definition being deleted; once none is left, removes its
/// finalizer. `Ok(false)`: objects are still going.
async fn clean_up(
    client: &kube::Client,
    api: &Api<CustomResourceDefinition>,
    crd: &Value,
) -> Result<bool, kube::Error> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let served = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v["served"] == true)
                .and_then(|v| v["name"].as_str())
        });
    if let Some(version) = served {
        let ar = ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: format!("{group}/{version}"),
            kind: crd
                .pointer("/spec/names/kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            plural: crd
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
        let objects: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let left = objects.list(&ListParams::default()).await?;
        if !left.items.is_empty() {
            objects
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await?;
            if !objects.list(&ListParams::default()).await?.items.is_empty() {
                return Ok(false);
            }
        }
    }
    let finalizers: Vec<Value> = crd
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter(|f| *f != CLEANUP_FINALIZER)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let patch = json!({"metadata": {"finalizers": finalizers,
        "resourceVersion": crd["metadata"]["resourceVersion"]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::essence;
    use serde_json::json;

    #[test]
    fn only_what_the_conditions_say_counts() {
        let a = json!({"conditions": [{"type": "Established", "status": "True", "reason": "R",
            "message": "m", "lastTransitionTime": "t1"}], "acceptedNames": {"plural": "ws"},
            "storedVersions": ["v1"]});
        let mut b = a.clone();
        b["conditions"][0]["lastTransitionTime"] = json!("t2");
        assert_eq!(essence(Some(&a)), essence(Some(&b)));
        b["conditions"][0]["status"] = json!("False");
        assert_ne!(essence(Some(&a)), essence(Some(&b)));
        assert_ne!(essence(None), essence(Some(&a)));
    }
}
