//! The ReplicationController controller: the ReplicaSet controller
//! ([`super::replicaset::run_for`]) over ReplicationControllers read as ReplicaSets, as
//! Kubernetes runs it. This module is only the conversion both ways: the label-map
//! selector becomes `matchLabels`, and the status goes back in the ReplicationController's
//! shape (which has no `terminatingReplicas`).

use super::replicaset::{self, Flavor};
use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::{
    ReplicationController, ReplicationControllerCondition, ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The name events are recorded under.
pub const COMPONENT: &str = "replication-controller";

/// ReplicationControllers, read as ReplicaSets.
pub static REPLICATION_CONTROLLER: Flavor = Flavor {
    kind: "ReplicationController",
    group: "",
    version: "v1",
    plural: "replicationcontrollers",
    component: COMPONENT,
    status_json: |s| serde_json::to_value(status_back(s)).unwrap_or(Value::Null),
};

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &super::ControllerConfig,
    pods: &mut super::informer::SharedInformer<k8s_openapi::api::core::v1::Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tasks.spawn(replicaset::run_for::<ReplicationController>(
        client,
        config.workqueue.queue("replicationmanager"),
        pods.feed(),
        shutdown,
        &REPLICATION_CONTROLLER,
        as_replica_set,
    ));
}

/// The ReplicaSet a ReplicationController is read as.
pub fn as_replica_set(rc: ReplicationController) -> ReplicaSet {
    let spec = rc.spec.unwrap_or_default();
    ReplicaSet {
        metadata: rc.metadata,
        spec: ReplicaSetSpec {
            min_ready_seconds: spec.min_ready_seconds,
            replicas: spec.replicas,
            selector: LabelSelector {
                match_labels: spec.selector,
                match_expressions: None,
            },
            template: spec.template,
        },
        status: rc.status.map(|s| ReplicaSetStatus {
            available_replicas: s.available_replicas,
            conditions: s.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| ReplicaSetCondition {
                        last_transition_time: c.last_transition_time,
                        message: c.message,
                        reason: c.reason,
                        status: Some(c.status),
                        type_: Some(c.type_),
                    })
                    .collect()
            }),
            fully_labeled_replicas: s.fully_labeled_replicas,
            observed_generation: s.observed_generation,
            ready_replicas: s.ready_replicas,
            replicas: s.replicas,
            terminating_replicas: None,
        }),
    }
}

/// A ReplicaSet status in the ReplicationController's shape.
pub fn status_back(s: &ReplicaSetStatus) -> ReplicationControllerStatus {
    ReplicationControllerStatus {
        available_replicas: s.available_replicas,
        conditions: s.conditions.as_ref().map(|cs| {
            cs.iter()
                .map(|c| ReplicationControllerCondition {
                    last_transition_time: c.last_transition_time.clone(),
                    message: c.message.clone(),
                    reason: c.reason.clone(),
                    status: c.status.clone().unwrap_or_default(),
                    type_: c.type_.clone().unwrap_or_default(),
                })
                .collect()
        }),
        fully_labeled_replicas: s.fully_labeled_replicas,
        observed_generation: s.observed_generation,
        ready_replicas: s.ready_replicas,
        replicas: s.replicas,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ReplicationControllerSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    #[test]
    fn a_replication_controller_reads_as_a_replica_set_and_its_status_goes_back() {
        let selector = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let rc = ReplicationController {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(ReplicationControllerSpec {
                replicas: Some(3),
                selector: Some(selector.clone()),
                ..Default::default()
            }),
            status: Some(ReplicationControllerStatus {
                replicas: 2,
                ready_replicas: Some(1),
                ..Default::default()
            }),
        };
        let rs = as_replica_set(rc);
        assert_eq!(rs.spec.selector.match_labels, Some(selector));
        assert_eq!(rs.spec.replicas, Some(3));
        assert_eq!(rs.metadata.uid.as_deref(), Some("u1"));
        let mut status = rs.status.clone().unwrap();
        status.terminating_replicas = Some(4);
        let back = (REPLICATION_CONTROLLER.status_json)(&status);
        assert_eq!(back, serde_json::json!({"replicas": 2, "readyReplicas": 1}));
        let pod = replicaset::pod_from_template(
            &ReplicaSet {
                spec: ReplicaSetSpec {
                    template: Some(Default::default()),
                    ..rs.spec
                },
                ..rs
            },
            &REPLICATION_CONTROLLER,
        )
        .unwrap();
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.api_version.as_str()),
            ("ReplicationController", "v1")
        );
    }

    /// Through the API: the selector defaults from the template, the controller makes the
    /// pods (owned by the ReplicationController) and writes the status in its shape, and
    /// the scale subresource moves `spec.replicas`.
    #[tokio::test]
    async fn a_replication_controller_gets_its_pods_and_scales() {
        use crate::apiserver::testing::TestApi;
        use http::StatusCode;
        use serde_json::json;
        use std::time::{Duration, Instant};

        let api = TestApi::new().await;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut informers = crate::controllers::informer::Informers::new(&api.client());
        start(
            api.client(),
            &Default::default(),
            &mut informers.pods,
            shutdown.clone(),
            &mut tasks,
        );
        informers.start(shutdown.clone(), &mut tasks);
        let rcs = "/api/v1/namespaces/default/replicationcontrollers";
        let (code, rc) = api
            .send(
                "POST",
                rcs,
                Some(json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}}})),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{rc}");
        assert_eq!(rc["spec"]["selector"], json!({"app": "web"}));
        let (code, bad) = api
            .send(
                "POST",
                rcs,
                Some(
                    json!({"metadata": {"name": "bad"}, "spec": {"selector": {"app": "x"},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "web.wasm"}]}}}}),
                ),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");

        let owned_pods = |want: usize| {
            let api = api.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let (_, pods) = api
                        .send("GET", "/api/v1/namespaces/default/pods", None)
                        .await;
                    let owned: Vec<Value> = pods["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|p| {
                            p["metadata"]["deletionTimestamp"].is_null()
                                && p["metadata"]["ownerReferences"][0]["kind"]
                                    == "ReplicationController"
                                && p["metadata"]["ownerReferences"][0]["apiVersion"] == "v1"
                        })
                        .collect();
                    if owned.len() == want {
                        return;
                    }
                    if Instant::now() > deadline {
                        let (_, events) = api.send("GET", "/api/v1/events", None).await;
                        panic!(
                            "{} pods, want {want}: {pods}\nevents: {events}",
                            owned.len()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        owned_pods(2).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, rc) = api.send("GET", &format!("{rcs}/web"), None).await;
            if rc["status"]["replicas"] == 2 {
                assert!(rc["status"].get("terminatingReplicas").is_none(), "{rc}");
                break;
            }
            assert!(Instant::now() < deadline, "no status: {rc}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (code, scale) = api.send("GET", &format!("{rcs}/web/scale"), None).await;
        assert_eq!(code, StatusCode::OK, "{scale}");
        assert_eq!(scale["status"]["selector"], "app=web");
        let (code, scaled) = api
            .send_as(
                "PATCH",
                &format!("{rcs}/web/scale"),
                "application/merge-patch+json",
                Some(json!({"spec": {"replicas": 3}})),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{scaled}");
        owned_pods(3).await;
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
