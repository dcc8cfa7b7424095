//! APIService registration, as kube-apiserver's autoregister controller: one local
//! `apiregistration.k8s.io/v1` APIService (`spec.service` null, `Available=True`) for
//! every group/version the server serves, named `VERSION.GROUP` (`v1` for the core
//! group), labelled `kube-aggregator.kubernetes.io/automanaged`, and deleted when its
//! group/version is no longer served.
//!
//! What is served is read from discovery through the API itself (`/api`, `/apis`), so
//! whatever discovery lists (built-in kinds, and groups added at run time) is
//! registered without this controller knowing where it comes from. Discovery has no
//! watch: it is read again every [`RESYNC`].
//!
//! APIServices a user creates with a `spec.service` stay as they are, marked
//! `Available=False`: wharf does not proxy to aggregated API servers.

use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often discovery is read again.
pub const RESYNC: Duration = Duration::from_secs(3);
/// The label of the APIServices this controller keeps.
pub const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";

pub fn start(client: kube::Client, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
    tasks.spawn(async move {
        loop {
            if let Err(e) = sync(&client).await {
                tracing::debug!(error = %e, "apiservice registration");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    });
}

/// The local APIServices for the served group/versions `served` (`(group, versions)`,
/// in discovery's order, preferred version first): spec and labels, keyed by name.
pub fn desired(served: &[(String, Vec<String>)]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (i, (group, versions)) in served.iter().enumerate() {
        let group_priority = 18000_i64.saturating_sub(100 * i as i64).max(1000);
        for (j, version) in versions.iter().enumerate() {
            let name = if group.is_empty() {
                version.clone()
            } else {
                format!("{version}.{group}")
            };
            out.insert(
                name.clone(),
                json!({
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": name, "labels": {AUTOMANAGED: "onstart"}},
                    "spec": {
                        "group": group,
                        "version": version,
                        "groupPriorityMinimum": group_priority,
                        "versionPriority": (15 - j as i64).max(1),
                    },
                }),
            );
        }
    }
    out
}

/// The status of an APIService: local ones are available, others are not served.
pub fn status_of(spec_service: Option<&Value>) -> Value {
    let (status, reason, message) = match spec_service {
        None | Some(Value::Null) => ("True", "Local", "Local APIServices are always available"),
        Some(_) => (
            "False",
            "ServiceNotProxied",
            "wharf does not proxy to aggregated API servers",
        ),
    };
    json!({"conditions": [{
        "type": "Available",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": crate::apiserver::objects::now_rfc3339(),
    }]})
}

async fn served(client: &kube::Client) -> Result<Vec<(String, Vec<String>)>, kube::Error> {
    let core = client.list_core_api_versions().await?;
    let mut out = vec![(String::new(), core.versions)];
    for g in client.list_api_groups().await?.groups {
        let mut versions: Vec<String> = Vec::new();
        if let Some(p) = &g.preferred_version {
            versions.push(p.version.clone());
        }
        for v in g.versions {
            if !versions.contains(&v.version) {
                versions.push(v.version);
            }
        }
        out.push((g.name, versions));
    }
    Ok(out)
}

async fn sync(client: &kube::Client) -> Result<(), kube::Error> {
    let want = desired(&served(client).await?);
    let api: Api<APIService> = Api::all(client.clone());
    let have = api.list(&ListParams::default()).await?.items;
    let params = PatchParams::default();
    for (name, obj) in &want {
        let current = have
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
        let current = match current {
            Some(c) => {
                let spec = serde_json::to_value(&c.spec).unwrap_or_default();
                let managed = c
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(AUTOMANAGED));
                if !managed {
                    continue; // the user's own, by that name
                }
                if spec.get("group") != obj.pointer("/spec/group")
                    || spec.get("version") != obj.pointer("/spec/version")
                    || spec.get("service").is_some_and(|s| !s.is_null())
                {
                    api.patch(name, &params, &Patch::Merge(json!({"spec": obj["spec"]})))
                        .await?;
                }
                c.clone()
            }
            None => {
                let new: APIService =
                    serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
                match api.create(&PostParams::default(), &new).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        mark(&api, &current).await?;
    }
    for svc in &have {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let managed = svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(AUTOMANAGED));
        if managed && !want.contains_key(&name) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        } else if !managed {
            mark(&api, svc).await?;
        }
    }
    Ok(())
}

/// Writes the Available condition when it says something else.
async fn mark(api: &Api<APIService>, svc: &APIService) -> Result<(), kube::Error> {
    let service = serde_json::to_value(&svc.spec)
        .unwrap_or_default()
        .get("service")
        .cloned();
    let want = status_of(service.as_ref());
    let has = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
    if has.is_some_and(|c| {
        Some(c.status.as_str()) == want.pointer("/conditions/0/status").and_then(Value::as_str)
            && c.reason.as_deref() == want.pointer("/conditions/0/reason").and_then(Value::as_str)
    }) {
        return Ok(());
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": want})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apiserver::testing::TestApi;
    use std::time::Instant;

    #[test]
    fn one_local_apiservice_per_served_group_version() {
        let served = vec![
            (String::new(), vec!["v1".to_string()]),
            ("apps".to_string(), vec!["v1".to_string()]),
            (
                "example.com".to_string(),
                vec!["v2".to_string(), "v1".to_string()],
            ),
        ];
        let want = desired(&served);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            ["v1", "v1.apps", "v1.example.com", "v2.example.com"]
        );
        assert_eq!(
            want["v1"]["spec"],
            json!({"group": "", "version": "v1",
            "groupPriorityMinimum": 18000, "versionPriority": 15})
        );
        assert_eq!(want["v1.example.com"]["spec"]["versionPriority"], 14);
        assert_eq!(
            want["v2.example.com"]["spec"]["groupPriorityMinimum"],
            17800
        );
    }

    /// Every group/version discovery lists gets its APIService, available and local.
    #[tokio::test]
    async fn served_group_versions_are_registered() {
        let api = TestApi::new().await;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        start(api.client(), shutdown.clone(), &mut tasks);
        let (_, groups) = api.send("GET", "/apis", None).await;
        let mut expected = vec!["v1".to_string()];
        for g in groups["groups"].as_array().unwrap() {
            for v in g["versions"].as_array().unwrap() {
                expected.push(format!(
                    "{}.{}",
                    v["version"].as_str().unwrap(),
                    g["name"].as_str().unwrap()
                ));
            }
        }
        assert!(expected.contains(&"v1.apiregistration.k8s.io".to_string()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, list) = api
                .send("GET", "/apis/apiregistration.k8s.io/v1/apiservices", None)
                .await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let available = |name: &str| {
                items.iter().any(|i| {
                    i["metadata"]["name"] == name
                        && i["status"]["conditions"][0]["status"] == "True"
                        && i["spec"].get("service").is_none_or(Value::is_null)
                })
            };
            if expected.iter().all(|n| available(n)) {
                break;
            }
            assert!(Instant::now() < deadline, "not all registered: {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
