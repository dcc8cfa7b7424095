//! Preemption (Kubernetes' DefaultPreemption, PostFilter): a pending pod that fits no node
//! may take the place of lower-priority pods on one node.
//!
//! - **Who may preempt.** A pod whose `preemptionPolicy` is not `Never`, and that is not
//!   already waiting for victims it chose to go (its nominated node still has lower-priority
//!   pods terminating): otherwise every retry would evict more pods elsewhere.
//! - **Where.** Every node the pod failed on for a reason preemption can help
//!   (`Unschedulable`, not `UnschedulableAndUnresolvable`: no eviction removes a taint).
//!   On each, all pods of lower priority that are not already going are removed in the
//!   filters' eyes; if the pod then fits, victims are given back highest priority first
//!   while it still fits (Kubernetes' reprieve), so the victims left are a minimal set.
//! - **Which node.** The one whose most important victim has the lowest priority, then the
//!   lowest sum of victim priorities, then the fewest victims, then by name.
//!
//! [`select`] is pure over the scheduler's cache; the scheduler carries out its choice:
//! each victim gets the `DisruptionTarget` condition (reason `PreemptionByScheduler`) and
//! a `Preempted` Event, and is deleted gracefully; the preemptor gets
//! `status.nominatedNodeName` and is scheduled once the victims are gone.

use super::algorithm::{Profile, run_filters};
use super::cache::Cache;
use super::framework::{Code, Cycle, NodeInfo, PodInfo};
use super::plugins::{inter_pod_affinity, volume_binding};
use crate::events::{self, EventType, Recorder};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use std::sync::Arc;

/// A node and the pods to evict from it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: Arc<str>,
    pub victims: Vec<Arc<PodInfo>>,
}

impl Candidate {
    fn rank(&self) -> (i32, i64, usize, Arc<str>) {
        (
            self.victims
                .iter()
                .map(|v| v.priority)
                .max()
                .unwrap_or(i32::MIN),
            self.victims.iter().map(|v| i64::from(v.priority)).sum(),
            self.victims.len(),
            self.node.clone(),
        )
    }
}

/// Whether the pod may preempt now (see the module documentation).
pub fn eligible(pod: &PodInfo, cache: &Cache) -> bool {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return false;
    }
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty());
    match nominated.and_then(|n| cache.node(n)) {
        Some(node) => !node
            .pods
            .values()
            .any(|p| p.deleting && p.priority < pod.priority),
        None => true,
    }
}

/// The victims on `node` that make room for the pod, if any set does.
fn victims_on(profile: &Profile, cycle: &Cycle, node: &NodeInfo) -> Option<Vec<Arc<PodInfo>>> {
    let pod = cycle.pod;
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .values()
        .filter(|p| p.priority < pod.priority && !p.deleting)
        .cloned()
        .collect();
    if lower.is_empty() {
        return None;
    }
    let mut trial = node.clone();
    for v in &lower {
        trial.remove_pod(&v.uid);
    }
    if !run_filters(&profile.filters, cycle, &trial).is_success() {
        return None;
    }
    // Reprieve: most important first (then the older), keep every pod that still leaves
    // room.
    lower.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| {
                a.pod
                    .metadata
                    .creation_timestamp
                    .cmp(&b.pod.metadata.creation_timestamp)
            })
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut victims = Vec::new();
    for v in lower {
        trial.add_pod(v.clone());
        if !run_filters(&profile.filters, cycle, &trial).is_success() {
            trial.remove_pod(&v.uid);
            victims.push(v);
        }
    }
    (!victims.is_empty()).then_some(victims)
}

/// The node to preempt on and its victims, or `None` when preemption cannot help.
pub fn select(profile: &Profile, cache: &Cache, pod: &PodInfo) -> Option<Candidate> {
    if !eligible(pod, cache) {
        return None;
    }
    let affinity =
        inter_pod_affinity::pre_filter(pod, cache.placed_pods(), cache.anti_affinity_pods())
            .ok()?;
    // A pod whose claims cannot be bound anywhere is not helped by removing pods.
    let volumes = volume_binding::pre_filter(pod, &cache.volumes).ok()?;
    let cycle = Cycle {
        pod,
        num_nodes: cache.num_nodes(),
        image_nodes: cache.image_nodes(),
        affinity,
        volumes,
    };
    cache
        .nodes()
        .iter()
        .filter(|n| n.node.is_some())
        .filter(|n| run_filters(&profile.filters, &cycle, n).code == Code::Unschedulable)
        .filter_map(|n| {
            Some(Candidate {
                node: n.name.clone(),
                victims: victims_on(profile, &cycle, n)?,
            })
        })
        .min_by_key(Candidate::rank)
}

/// Carries out a preemption: marks and deletes each victim (recording `Preempted`), then
/// nominates the node on the preemptor's status.
pub async fn preempt(
    client: &kube::Client,
    recorder: &Recorder,
    preemptor: &PodInfo,
    candidate: &Candidate,
) -> Result<(), kube::Error> {
    let scheduler = super::framework::DEFAULT_SCHEDULER;
    for v in &candidate.victims {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": crate::controllers::common::now().to_string(),
        }]}});
        match pods
            .patch_status(
                &v.name,
                &PatchParams::default(),
                &Patch::Strategic(condition),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e),
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(v.uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&v.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => continue,
            Err(e) => return Err(e),
        }
        recorder
            .record(
                &events::reference("Pod", "v1", &v.pod.metadata),
                EventType::Normal,
                "Preempted",
                &format!(
                    "Preempted by pod {} on node {}",
                    preemptor.uid, candidate.node
                ),
            )
            .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &preemptor.namespace);
    let nominated = json!({"status": {"nominatedNodeName": &*candidate.node}});
    pods.patch_status(
        &preemptor.name,
        &PatchParams::default(),
        &Patch::Merge(nominated),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scheduler::framework::testing::{node, pod_with};

    fn pod(name: &str, priority: i32, milli_cpu: i64, node_name: &str) -> Arc<PodInfo> {
        let mut spec = json!({"priority": priority, "containers": [{"name": "a", "image": "a.wasm",
            "resources": {"requests": {"cpu": format!("{milli_cpu}m")}}}]});
        if !node_name.is_empty() {
            spec["nodeName"] = json!(node_name);
        }
        Arc::new(pod_with(name, json!({}), spec))
    }

    fn cache(nodes: &[(&str, i64)], pods: &[Arc<PodInfo>]) -> Cache {
        let mut c = Cache::new();
        for (n, cpu) in nodes {
            c.upsert_node(node(n, *cpu, 8 << 30, 110));
        }
        for p in pods {
            c.add_pod(p.clone());
        }
        c
    }

    fn names(c: &Candidate) -> Vec<&str> {
        let mut v: Vec<&str> = c.victims.iter().map(|p| p.name.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_fewest_lowest_priority_victims_on_one_node() {
        // n1: two small low pods and one medium; n2: one pod of priority 50.
        let c = cache(
            &[("n1", 1000), ("n2", 1000)],
            &[
                pod("a", 10, 300, "n1"),
                pod("b", 10, 300, "n1"),
                pod("m", 20, 400, "n1"),
                pod("x", 50, 1000, "n2"),
            ],
        );
        let high = pod("high", 100, 500, "");
        let chosen = select(&Profile::default(), &c, &high).unwrap();
        // n1: the medium pod, the most important, is given back first and fits beside
        // the preemptor; the two low ones go. Their priority 10 beats n2's 50.
        assert_eq!(&*chosen.node, "n1");
        assert_eq!(names(&chosen), ["a", "b"]);
        // Once the low pods are so small that one is enough, only one goes.
        let c2 = cache(
            &[("n1", 1000)],
            &[
                pod("a", 10, 100, "n1"),
                pod("b", 10, 500, "n1"),
                pod("m", 20, 300, "n1"),
            ],
        );
        let chosen = select(&Profile::default(), &c2, &pod("high", 100, 500, "")).unwrap();
        assert_eq!(names(&chosen), ["b"]);

        // A pod of the same priority preempts nothing; nor one with policy Never.
        assert!(select(&Profile::default(), &c, &pod("peer", 10, 500, "")).is_none());
        let never = Arc::new(pod_with(
            "never",
            json!({}),
            json!({"priority": 100, "preemptionPolicy": "Never", "containers": [{"name": "a",
                "image": "a.wasm", "resources": {"requests": {"cpu": "500m"}}}]}),
        ));
        assert!(select(&Profile::default(), &c, &never).is_none());
    }

    #[test]
    fn several_victims_when_one_is_not_enough_and_none_when_nothing_helps() {
        let c = cache(
            &[("n1", 1000)],
            &[
                pod("a", 10, 400, "n1"),
                pod("b", 5, 400, "n1"),
                pod("keep", 200, 200, "n1"),
            ],
        );
        let chosen = select(&Profile::default(), &c, &pod("high", 100, 800, "")).unwrap();
        assert_eq!(names(&chosen), ["a", "b"]);
        // More than the node has even without the lower pods.
        assert!(select(&Profile::default(), &c, &pod("huge", 100, 900, "")).is_none());
    }

    #[test]
    fn a_pod_waiting_for_its_victims_does_not_preempt_again() {
        let mut going = (*pod("a", 10, 600, "n1")).clone();
        going.deleting = true;
        let c = cache(
            &[("n1", 1000), ("n2", 1000)],
            &[Arc::new(going), pod("b", 10, 600, "n2")],
        );
        let mut waiting = (*pod("high", 100, 600, "")).clone();
        let mut p = (*waiting.pod).clone();
        p.status = Some(serde_json::from_value(json!({"nominatedNodeName": "n1"})).unwrap());
        waiting.pod = Arc::new(p);
        assert!(!eligible(&waiting, &c));
        assert!(select(&Profile::default(), &c, &waiting).is_none());
        // Without a nomination it would preempt on n2 (n1's pod is already going).
        let fresh = pod("fresh", 100, 600, "");
        assert_eq!(
            &*select(&Profile::default(), &c, &fresh).unwrap().node,
            "n2"
        );
    }
}
