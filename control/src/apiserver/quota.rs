//! ResourceQuota admission: every create in a namespace with quotas is charged to them
//! before it is stored, as kube-apiserver's quota admission does.
//!
//! Why a compare-and-swap on the quota and not a lock: two API servers (or two requests
//! on one) may create pods at once; each raises `status.used` of the quota by what it
//! creates with a compare-and-swap on the quota's resourceVersion, so the second one
//! re-reads the used amount the first one left and is refused if it no longer fits.
//! A create that fails after it was charged leaves the quota over-counted until the
//! resource quota controller recounts (it recounts on every change in the namespace).
//! The arithmetic is [`crate::api::quota`]; a refusal is 403 Forbidden worded as
//! Kubernetes words it (`exceeded quota: NAME, requested: ..., used: ..., limited: ...`).

use super::AppState;
use super::error::ApiError;
use super::fieldcheck::FieldCheck;
use super::paging::ListOptions;
use super::registry::store;
use super::request::{Query, Target};
use crate::api::quota;
use serde_json::Value;

/// Charges the create of `obj` (of `target`'s kind) to the namespace's quotas; with
/// `dry_run`, only checks.
pub async fn admit_create(
    state: &AppState,
    target: &Target,
    obj: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let kind = target.kind;
    let Some(ns) = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|_| kind.namespaced)
    else {
        return Ok(());
    };
    let Some(quota_kind) = crate::api::find_kind("v1", "ResourceQuota") else {
        return Ok(());
    };
    let quotas = Target {
        kind: quota_kind,
        namespace: Some(ns.to_string()),
        name: None,
        subresource: None,
    };
    let filter = store::Filter::from_query(quota_kind, &Query::parse(None))?;
    let (_, page) = store::list(state, &quotas, &filter, &ListOptions::default()).await?;
    if page.items.is_empty() {
        return Ok(());
    }
    let (delta, missing) = quota::usage(kind, obj);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let forbidden = |r: quota::Refusal| {
        ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: {r}",
            kind.qualified_plural()
        ))
    };
    // Every quota must take it before any is charged.
    let mut charged = Vec::new();
    for q in &page.items {
        if quota::charge(q, &delta, &missing)
            .map_err(forbidden)?
            .is_some()
        {
            charged.push(
                q.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    let fields = FieldCheck::new(&Query::parse(None), Vec::new())?;
    for q in charged {
        let target = Target {
            name: Some(q.clone()),
            subresource: Some("status".into()),
            ..quotas.clone()
        };
        store::update_with(state, &target, &q, true, dry_run, &fields, |current| {
            Ok(quota::charge(current, &delta, &missing)
                .map_err(forbidden)?
                .unwrap_or_else(|| current.clone()))
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::api::core::v1::{LimitRange, Pod, ResourceQuota};
    use kube::api::{Api, PostParams};
    use serde_json::json;
    use std::time::Duration;

    fn pod(name: &str, cpu: Option<&str>) -> Pod {
        let resources = cpu.map_or(json!({}), |c| json!({"requests": {"cpu": c}}));
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "a", "image": "a.wasm", "resources": resources}]}}))
        .unwrap()
    }

    /// Concurrent creates against a quota of two pods: exactly two get in, whatever the
    /// interleaving, and the others read Kubernetes' refusal.
    #[tokio::test]
    async fn concurrent_creates_never_exceed_the_quota() {
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut informers = crate::controllers::informer::Informers::new(&client);
        crate::controllers::resourcequota::start(
            client.clone(),
            &mut informers.pods,
            shutdown.clone(),
            &mut tasks,
        );
        informers.start(shutdown.clone(), &mut tasks);
        let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "default");
        let q: ResourceQuota = serde_json::from_value(
            json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}}),
        )
        .unwrap();
        quotas.create(&PostParams::default(), &q).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while quotas
            .get_status("compute")
            .await
            .unwrap()
            .status
            .and_then(|s| s.used)
            .is_none()
        {
            assert!(tokio::time::Instant::now() < deadline, "quota status");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        // A pod that says nothing of a CPU the quota tracks.
        match pods
            .create(&PostParams::default(), &pod("bare", None))
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert_eq!(
                    s.message,
                    "pods \"bare\" is forbidden: failed quota: compute: must specify requests.cpu"
                );
            }
            other => panic!("{other:?}"),
        }
        let creates = (0..6).map(|i| {
            let pods = pods.clone();
            tokio::spawn(async move {
                pods.create(&PostParams::default(), &pod(&format!("p{i}"), Some("100m")))
                    .await
            })
        });
        let mut ok = 0;
        for c in creates {
            match c.await.unwrap() {
                Ok(_) => ok += 1,
                Err(kube::Error::Api(s)) => {
                    assert_eq!(s.code, 403, "{s:?}");
                    assert!(
                        s.message.contains(
                            "is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
                        ),
                        "{}",
                        s.message
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 2);
        let used = quotas
            .get_status("compute")
            .await
            .unwrap()
            .status
            .unwrap()
            .used
            .unwrap();
        assert_eq!(used["pods"].0, "2");
        assert_eq!(used["requests.cpu"].0, "200m");

        // A pod deleted frees its share once the controller recounts.
        let name = pods.list(&Default::default()).await.unwrap().items[0]
            .metadata
            .name
            .clone()
            .unwrap();
        pods.delete(&name, &Default::default()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let used = quotas
                .get_status("compute")
                .await
                .unwrap()
                .status
                .unwrap()
                .used
                .unwrap();
            if used["pods"].0 == "1" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{used:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pods.create(&PostParams::default(), &pod("again", Some("100m")))
            .await
            .unwrap();
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }

    #[tokio::test]
    async fn limit_ranges_default_and_bound_pods() {
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
        let ranges: Api<LimitRange> = Api::namespaced(client.clone(), "default");
        let lr: LimitRange = serde_json::from_value(json!({"metadata": {"name": "limits"},
            "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"},
                "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}}]}}))
        .unwrap();
        ranges.create(&PostParams::default(), &lr).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let created = pods
            .create(&PostParams::default(), &pod("d", None))
            .await
            .unwrap();
        let resources = created.spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(resources.limits.unwrap()["cpu"].0, "500m");
        assert_eq!(resources.requests.unwrap()["cpu"].0, "100m");
        assert_eq!(
            created.status.unwrap().qos_class.as_deref(),
            Some("Burstable")
        );
        let mut big = pod("big", None);
        big.spec.as_mut().unwrap().containers[0].resources =
            Some(serde_json::from_value(json!({"limits": {"cpu": "2"}})).unwrap());
        match pods.create(&PostParams::default(), &big).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert_eq!(
                    s.message,
                    "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
