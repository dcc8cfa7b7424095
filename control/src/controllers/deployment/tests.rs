//! Unit tests of the Deployment controller's decisions: the arithmetic, the rolling step
//! and its bounds (over a grid of cases and through whole simulated rollouts), scaling,
//! revisions, cleanup, Recreate, and the status it writes.

use super::*;
use k8s_openapi::api::apps::v1::{
    DeploymentSpec, DeploymentStrategy, ReplicaSetCondition, ReplicaSetStatus,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn int(n: i32) -> IntOrString {
    IntOrString::Int(n)
}

fn pct(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

fn rolling(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("d-uid".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            },
            template: template("v1.wasm"),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            revision_history_limit: Some(10),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        },
        status: None,
    }
}

fn recreate_deployment(replicas: i32) -> Deployment {
    let mut d = rolling(replicas, int(0), int(1));
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    d
}

/// A ReplicaSet of `d` for `image`: `spec` replicas, `pods` existing, `available` of them.
fn rs_for(
    d: &Deployment,
    image: &str,
    created: i64,
    spec: i32,
    pods: i32,
    available: i32,
) -> ReplicaSet {
    let mut dd = d.clone();
    dd.spec.template = template(image);
    let hash = pod_template_hash(&dd.spec.template, None);
    let mut rs = new_replica_set(&dd, &hash);
    rs.metadata.uid = Some(format!("uid-{image}"));
    rs.metadata.resource_version = Some("1".into());
    rs.metadata.creation_timestamp = Some(Time(at(created)));
    rs.spec.replicas = Some(spec);
    rs.status = Some(ReplicaSetStatus {
        replicas: pods,
        ready_replicas: Some(available),
        available_replicas: Some(available),
        observed_generation: Some(1),
        ..Default::default()
    });
    rs
}

fn with_revision(mut rs: ReplicaSet, revision: i64) -> ReplicaSet {
    rs.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION.into(), revision.to_string());
    rs
}

fn sizes(ops: &[Scale]) -> Vec<(String, i32)> {
    ops.iter().map(|o| (o.name.clone(), o.to)).collect()
}

#[test]
fn surge_rounds_up_and_unavailable_rounds_down() {
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 3),
        Ok((1, 0))
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 4),
        Ok((1, 1))
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10),
        Ok((3, 2))
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("50%")), Some(&pct("50%")), 5),
        Ok((3, 2))
    );
    assert_eq!(
        resolve_fenceposts(Some(&int(2)), Some(&int(0)), 5),
        Ok((2, 0))
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("100%")), Some(&int(0)), 3),
        Ok((3, 0))
    );
    // Both resolving to zero: one may be unavailable.
    assert_eq!(
        resolve_fenceposts(Some(&int(0)), Some(&int(0)), 5),
        Ok((0, 1))
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("10%")), Some(&pct("10%")), 5),
        Ok((1, 0))
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("1%")), Some(&pct("1%")), 5),
        Ok((1, 0))
    );
    assert_eq!(resolve_fenceposts(None, Some(&pct("1%")), 5), Ok((0, 1)));
    assert!(resolve_fenceposts(Some(&pct("abc")), None, 5).is_err());
    assert!(resolve_fenceposts(Some(&pct("3")), None, 5).is_err());
}

#[test]
fn max_unavailable_is_capped_and_zero_for_recreate() {
    assert_eq!(max_unavailable(&rolling(2, int(0), int(5))), 2);
    assert_eq!(max_unavailable(&rolling(0, int(0), int(5))), 0);
    assert_eq!(max_unavailable(&recreate_deployment(3)), 0);
    assert_eq!(max_surge(&recreate_deployment(3)), 0);
    assert_eq!(max_surge(&rolling(10, pct("25%"), int(0))), 3);
}

#[test]
fn template_hash_is_stable_and_spelled_safely() {
    let t = template("v1.wasm");
    let h = pod_template_hash(&t, None);
    assert_eq!(h, pod_template_hash(&t.clone(), None));
    assert!(h.len() >= 6 && h.len() <= 10, "{h}");
    assert!(
        h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
        "{h}"
    );
    assert_ne!(h, pod_template_hash(&template("v2.wasm"), None));
    assert_ne!(h, pod_template_hash(&t, Some(1)));
    let mut labelled = t.clone();
    labelled
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert(POD_TEMPLATE_HASH.into(), h.clone());
    assert!(equal_ignore_hash(&t, &labelled));
    assert!(!equal_ignore_hash(&t, &template("v2.wasm")));
}

#[test]
fn new_replica_set_is_named_labelled_and_selected_by_hash() {
    let d = rolling(3, pct("25%"), pct("25%"));
    let hash = pod_template_hash(&d.spec.template, None);
    let rs = new_replica_set(&d, &hash);
    assert_eq!(rs.metadata.name, Some(format!("web-{hash}")));
    let expected = labels(&[("app", "web"), (POD_TEMPLATE_HASH, &hash)]);
    assert_eq!(rs.metadata.labels.as_ref(), Some(&expected));
    assert_eq!(rs.spec.selector.match_labels.as_ref(), Some(&expected));
    assert_eq!(
        rs.spec
            .template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref(),
        Some(&expected)
    );
    let owner = common::controller_of(&rs.metadata).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Deployment", "d-uid")
    );
    assert_eq!(owner.block_owner_deletion, Some(true));
}

#[test]
fn rolling_step_surges_then_scales_down_old() {
    // replicas 3, maxSurge 1, maxUnavailable 0.
    let d = rolling(3, int(1), int(0));
    let old = rs_for(&d, "v1.wasm", 1, 3, 3, 3);
    let new = rs_for(&d, "v2.wasm", 2, 1, 1, 0);
    // The surge is used up and the new pod is not available: nothing to do.
    assert_eq!(rolling_step(&d, &new, &[&old]), vec![]);
    // Once it is available, one old pod may go.
    let new = rs_for(&d, "v2.wasm", 2, 1, 1, 1);
    assert_eq!(
        sizes(&rolling_step(&d, &new, &[&old])),
        vec![(old.metadata.name.clone().unwrap(), 2)]
    );
    // The old ReplicaSet scaled down but still has its pod: no surge yet.
    let old = rs_for(&d, "v1.wasm", 1, 2, 3, 3);
    assert_eq!(rolling_step(&d, &new, &[&old]), vec![]);
    // Pod gone: the new ReplicaSet grows.
    let old = rs_for(&d, "v1.wasm", 1, 2, 2, 2);
    let ops = rolling_step(&d, &new, &[&old]);
    assert_eq!(sizes(&ops), vec![(new.metadata.name.clone().unwrap(), 2)]);
    assert_eq!((ops[0].from, ops[0].desired, ops[0].max), (1, 3, 4));
}

#[test]
fn rolling_step_removes_unhealthy_old_pods_first() {
    // replicas 4, maxSurge 0, maxUnavailable 1; old has 2 of 4 available.
    let d = rolling(4, int(0), int(1));
    let old = rs_for(&d, "v1.wasm", 1, 4, 4, 2);
    let new = rs_for(&d, "v2.wasm", 2, 0, 0, 0);
    // max scaled down = 4 - 3 - 0 = 1: one unhealthy pod goes, availability intact.
    assert_eq!(
        sizes(&rolling_step(&d, &new, &[&old])),
        vec![(old.metadata.name.clone().unwrap(), 3)]
    );
}

/// `(pods, available)` a ReplicaSet will have once its controller acted on `to` (it
/// deletes unavailable pods first; created pods are not available yet).
fn after_scale(rs: &ReplicaSet, to: i32) -> (i32, i32) {
    let (pods, _, available) = status_of(rs);
    let available = available.min(pods);
    if to >= pods {
        (to, available)
    } else {
        let unavailable = pods - available;
        let remove = pods - to;
        (to, available - (remove - remove.min(unavailable)))
    }
}

#[test]
fn rolling_step_never_crosses_the_bounds() {
    let strategies = [
        (int(1), int(0)),
        (int(0), int(1)),
        (int(2), int(2)),
        (pct("25%"), pct("25%")),
        (pct("50%"), int(0)),
        (int(0), pct("50%")),
        (int(0), int(0)),
    ];
    let mut cases = 0;
    for replicas in 0..=5 {
        for (surge, unavailable) in &strategies {
            let d = rolling(replicas, surge.clone(), unavailable.clone());
            let (max_surge, max_unavail) = (max_surge(&d), max_unavailable(&d));
            let max_pods = replicas + max_surge;
            let min_available = replicas - max_unavail;
            for old_spec in 0..=max_pods {
                for old_pods in old_spec..=(old_spec + 1).min(max_pods) {
                    for old_avail in 0..=old_pods {
                        for new_spec in 0..=max_pods - old_spec {
                            for new_avail in 0..=new_spec {
                                let old = rs_for(&d, "v1.wasm", 1, old_spec, old_pods, old_avail);
                                let new = rs_for(&d, "v2.wasm", 2, new_spec, new_spec, new_avail);
                                let before_pods = old_pods.max(old_spec) + new_spec;
                                if before_pods > max_pods {
                                    continue;
                                }
                                let before_avail = old_avail.min(old_spec) + new_avail;
                                let ops = rolling_step(&d, &new, &[&old]);
                                let size = |rs: &ReplicaSet| {
                                    let name = rs.metadata.name.as_ref().unwrap();
                                    ops.iter()
                                        .find(|o| &o.name == name)
                                        .map_or(spec_replicas(rs), |o| o.to)
                                };
                                let (op, oa) = after_scale(&old, size(&old));
                                let (np, na) = after_scale(&new, size(&new));
                                let case = format!(
                                    "replicas {replicas} surge {max_surge} unavail {max_unavail} \
                                     old {old_spec}/{old_pods}/{old_avail} new {new_spec}/{new_avail}: {ops:?}"
                                );
                                assert!(op.max(old_pods) + np <= max_pods, "too many pods: {case}");
                                assert!(
                                    oa + na >= min_available.min(before_avail),
                                    "too few available: {case}"
                                );
                                for o in &ops {
                                    assert!(o.to >= 0 && o.to <= replicas.max(o.from), "{case}");
                                }
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(cases > 1000, "{cases}");
}

/// A cluster in miniature: ReplicaSets that reach their size at once, pods that become
/// available one round after they are created.
struct Sim {
    d: Deployment,
    rss: Vec<ReplicaSet>,
    /// Pods created this round (not available until the next one).
    fresh: HashMap<String, i32>,
    clock: i64,
}

impl Sim {
    fn snapshot(&self) -> Vec<&ReplicaSet> {
        self.rss.iter().collect()
    }

    /// One reconcile of the Deployment, then the ReplicaSet controllers and the pods.
    fn round(&mut self) -> Plan {
        self.clock += 1;
        let plan = plan(&Observed {
            deployment: &self.d,
            replica_sets: self.snapshot(),
            pods: vec![],
            now: at(self.clock),
        })
        .unwrap();
        if let Some(mut rs) = plan.create.clone() {
            rs.metadata.uid = Some(format!("uid-{}", self.rss.len()));
            rs.metadata.creation_timestamp = Some(Time(at(self.clock)));
            rs.status = Some(ReplicaSetStatus::default());
            self.rss.push(rs);
        }
        if let Some(update) = &plan.update {
            let rs = self
                .rss
                .iter_mut()
                .find(|r| r.metadata.name == update.metadata.name)
                .unwrap();
            rs.metadata.annotations = update.metadata.annotations.clone();
        }
        for op in &plan.scale {
            let rs = self
                .rss
                .iter_mut()
                .find(|r| r.metadata.name.as_ref() == Some(&op.name))
                .unwrap();
            rs.spec.replicas = Some(op.to);
            set_replicas_annotations(rs, op.desired, op.max);
        }
        self.rss.retain(|rs| {
            !plan
                .delete
                .iter()
                .any(|(n, _)| rs.metadata.name.as_ref() == Some(n))
        });
        if let Some(rev) = &plan.revision {
            self.d
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(REVISION.into(), rev.clone());
        }
        if let Some(status) = &plan.status {
            self.d.status = Some(status.clone());
        }
        // Pods created last round are available now.
        for rs in &mut self.rss {
            let name = rs.metadata.name.clone().unwrap();
            let status = rs.status.get_or_insert_with(Default::default);
            let fresh = self.fresh.remove(&name).unwrap_or(0);
            status.available_replicas = Some(status.available_replicas.unwrap_or(0) + fresh);
            status.ready_replicas = status.available_replicas;
        }
        // The ReplicaSet controllers: delete unavailable pods first, create new ones.
        for rs in &mut self.rss {
            let name = rs.metadata.name.clone().unwrap();
            let to = spec_replicas(rs);
            let (pods, available) = after_scale(rs, to);
            let created = (pods - status_of(rs).0).max(0);
            if created > 0 {
                self.fresh.insert(name, created);
            }
            let status = rs.status.get_or_insert_with(Default::default);
            status.replicas = pods;
            status.available_replicas = Some(available);
            status.ready_replicas = Some(available);
            status.observed_generation = rs.metadata.generation;
        }
        plan
    }

    fn pods(&self) -> i32 {
        self.rss.iter().map(|rs| status_of(rs).0).sum()
    }

    fn available(&self) -> i32 {
        self.rss.iter().map(|rs| status_of(rs).2).sum()
    }

    fn settle(&mut self, rounds: usize, check: impl Fn(&Sim)) {
        for _ in 0..rounds {
            let plan = self.round();
            check(self);
            if plan == Plan::default() {
                return;
            }
        }
        panic!("did not settle in {rounds} rounds: {:#?}", self.rss);
    }
}

#[test]
fn simulated_rollouts_finish_within_bounds() {
    for (replicas, surge, unavailable) in [
        (3, int(1), int(0)),
        (3, pct("25%"), pct("25%")),
        (10, pct("25%"), pct("25%")),
        (5, int(0), int(2)),
        (4, int(2), int(2)),
        (6, pct("50%"), pct("50%")),
        (1, int(0), int(0)),
    ] {
        let mut sim = Sim {
            d: rolling(replicas, surge, unavailable),
            rss: vec![],
            fresh: HashMap::new(),
            clock: 0,
        };
        sim.settle(50, |_| {});
        assert_eq!(sim.rss.len(), 1);
        assert_eq!(sim.available(), replicas);
        let status = sim.d.status.clone().unwrap();
        assert_eq!(
            condition(&status, PROGRESSING).unwrap().reason.as_deref(),
            Some(NEW_RS_AVAILABLE)
        );
        assert_eq!(
            condition(&status, AVAILABLE).unwrap().status.as_deref(),
            Some("True")
        );
        assert_eq!(sim.d.metadata.annotations.as_ref().unwrap()[REVISION], "1");

        // Change the image and roll.
        sim.d.spec.template = template("v2.wasm");
        sim.d.metadata.generation = Some(2);
        let max_pods = replicas + max_surge(&sim.d);
        let min_available = replicas - max_unavailable(&sim.d);
        sim.settle(200, |s| {
            assert!(
                s.pods() <= max_pods,
                "{} pods > {max_pods}: {:#?}",
                s.pods(),
                s.rss
            );
            assert!(
                s.available() >= min_available,
                "{} available < {min_available}: {:#?}",
                s.available(),
                s.rss
            );
        });
        let (new, old) = split_new_old(&sim.d, &sim.snapshot());
        let new = new.unwrap();
        assert_eq!(spec_replicas(new), replicas);
        assert_eq!(annotation(&new.metadata, REVISION), Some("2"));
        assert!(old.iter().all(|rs| spec_replicas(rs) == 0));
        assert_eq!(sim.d.metadata.annotations.as_ref().unwrap()[REVISION], "2");
        let status = sim.d.status.clone().unwrap();
        assert_eq!(status.updated_replicas, nonzero(replicas));
        assert_eq!(status.observed_generation, Some(2));
        assert!(deployment_complete(&sim.d, &status));

        // Roll back to the first template: the old ReplicaSet comes back as revision 3.
        sim.d.spec.template = template("v1.wasm");
        sim.d.metadata.generation = Some(3);
        sim.settle(200, |s| {
            assert!(s.pods() <= max_pods && s.available() >= min_available)
        });
        let (new, _) = split_new_old(&sim.d, &sim.snapshot());
        let new = new.unwrap();
        assert_eq!(
            new.metadata.uid.as_deref(),
            Some("uid-0"),
            "the v1 ReplicaSet is reused"
        );
        assert_eq!(annotation(&new.metadata, REVISION), Some("3"));
        assert_eq!(annotation(&new.metadata, REVISION_HISTORY), Some("1"));
        assert_eq!(sim.rss.len(), 2);
    }
}

#[test]
fn a_new_deployment_gets_its_replica_set_at_full_size() {
    let mut d = rolling(3, pct("25%"), pct("25%"));
    d.metadata.annotations = Some(labels(&[(CHANGE_CAUSE, "first"), (LAST_APPLIED, "{}")]));
    let plan = plan(&Observed {
        deployment: &d,
        replica_sets: vec![],
        pods: vec![],
        now: at(0),
    })
    .unwrap();
    let rs = plan.create.clone().unwrap();
    assert_eq!(rs.spec.replicas, Some(3));
    let annotations = rs.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[REVISION], "1");
    assert_eq!(annotations[DESIRED_REPLICAS], "3");
    assert_eq!(annotations[MAX_REPLICAS], "4");
    assert_eq!(annotations[CHANGE_CAUSE], "first");
    assert!(!annotations.contains_key(LAST_APPLIED));
    assert_eq!(plan.revision.as_deref(), Some("1"));
    let status = plan.status.unwrap();
    let progressing = condition(&status, PROGRESSING).unwrap();
    assert_eq!(progressing.reason.as_deref(), Some(NEW_RS_CREATED));
    assert_eq!(
        progressing.message.clone().unwrap(),
        format!("Created new replica set {:?}", rs.metadata.name.unwrap())
    );
    let available = condition(&status, AVAILABLE).unwrap();
    assert_eq!(
        (available.status.as_deref(), available.reason.as_deref()),
        (Some("False"), Some(MIN_UNAVAILABLE))
    );
    assert_eq!(status.observed_generation, Some(1));
    assert!(plan.requeue_after.is_some());
}

#[test]
fn scaling_spreads_over_active_replica_sets_in_proportion() {
    // 10 -> 20 with maxSurge 2: old 5 and new 7 (sized for max 12) become 9 and 13.
    let mut d = rolling(20, int(2), int(0));
    let mut old = rs_for(&d, "v1.wasm", 1, 5, 5, 5);
    let mut new = rs_for(&d, "v2.wasm", 2, 7, 7, 7);
    for rs in [&mut old, &mut new] {
        set_replicas_annotations(rs, 10, 12);
    }
    d.spec.template = template("v2.wasm");
    assert!(is_scaling_event(&d, Some(&new), &[&old]));
    let mut got = sizes(&proportional_scale(&d, Some(&new), &[&old]));
    got.sort();
    let mut want = vec![
        (old.metadata.name.clone().unwrap(), 9),
        (new.metadata.name.clone().unwrap(), 13),
    ];
    want.sort();
    assert_eq!(got, want);

    // And back down to 10: 7 and 5 again.
    d.spec.replicas = Some(10);
    let mut old = rs_for(&d, "v1.wasm", 1, 9, 9, 9);
    let mut new = rs_for(&d, "v2.wasm", 2, 13, 13, 13);
    for rs in [&mut old, &mut new] {
        set_replicas_annotations(rs, 20, 22);
    }
    let mut got = sizes(&proportional_scale(&d, Some(&new), &[&old]));
    got.sort();
    let mut want = vec![
        (old.metadata.name.clone().unwrap(), 5),
        (new.metadata.name.clone().unwrap(), 7),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn scaling_a_settled_deployment_resizes_its_only_replica_set() {
    let mut d = rolling(6, pct("25%"), pct("25%"));
    let mut rs = rs_for(&d, "v1.wasm", 1, 6, 6, 6);
    set_replicas_annotations(&mut rs, 6, 8);
    assert!(!is_scaling_event(&d, Some(&rs), &[]));
    d.spec.replicas = Some(9);
    assert!(is_scaling_event(&d, Some(&rs), &[]));
    let plan = plan(&Observed {
        deployment: &d,
        replica_sets: vec![&rs],
        pods: vec![],
        now: at(0),
    })
    .unwrap();
    assert_eq!(plan.create, None);
    let ops = plan.scale;
    assert_eq!(sizes(&ops), vec![(rs.metadata.name.clone().unwrap(), 9)]);
    assert_eq!((ops[0].desired, ops[0].max), (9, 12));
}

#[test]
fn old_replica_sets_beyond_the_history_limit_are_deleted_oldest_first() {
    let mut d = rolling(3, int(1), int(0));
    d.spec.revision_history_limit = Some(1);
    let r1 = with_revision(rs_for(&d, "v1.wasm", 1, 0, 0, 0), 1);
    let r2 = with_revision(rs_for(&d, "v2.wasm", 2, 0, 0, 0), 2);
    let r3 = with_revision(rs_for(&d, "v3.wasm", 3, 0, 0, 0), 3);
    let busy = with_revision(rs_for(&d, "v0.wasm", 0, 1, 1, 1), 0);
    let deleted = cleanup(&d, &[&r3, &busy, &r1, &r2]);
    let names: Vec<String> = deleted.into_iter().map(|(n, _)| n).collect();
    // Four old, keep one: the three lowest revisions go, but the busy one stays.
    assert_eq!(
        names,
        vec![
            r1.metadata.name.clone().unwrap(),
            r2.metadata.name.clone().unwrap()
        ]
    );
    d.spec.revision_history_limit = None;
    assert!(cleanup(&d, &[&r1, &r2, &r3]).is_empty());
}

#[test]
fn recreate_stops_old_pods_before_starting_new_ones() {
    let mut d = recreate_deployment(2);
    d.spec.template = template("v2.wasm");
    let old = rs_for(&d, "v1.wasm", 1, 2, 2, 2);
    let observe = |rss: Vec<&ReplicaSet>, pods: Vec<&Pod>| {
        plan(&Observed {
            deployment: &d,
            replica_sets: rss,
            pods,
            now: at(10),
        })
        .unwrap()
    };
    // Old ReplicaSet first, nothing new yet.
    let p = observe(vec![&old], vec![]);
    assert_eq!(
        sizes(&p.scale),
        vec![(old.metadata.name.clone().unwrap(), 0)]
    );
    assert_eq!(p.create, None);
    // Scaled down, but a pod still runs: wait.
    let old = rs_for(&d, "v1.wasm", 1, 0, 0, 0);
    let running = Pod {
        metadata: ObjectMeta {
            name: Some("web-old-1".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: old.metadata.name.clone().unwrap(),
                uid: old.metadata.uid.clone().unwrap(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        }),
    };
    assert!(old_pods_running(None, &[&old], &[&running]));
    let p = observe(vec![&old], vec![&running]);
    assert_eq!((p.create.clone(), p.scale.clone()), (None, vec![]));
    // Gone: the new ReplicaSet is created at full size.
    let p = observe(vec![&old], vec![]);
    assert_eq!(p.create.unwrap().spec.replicas, Some(2));
}

#[test]
fn progress_is_reported_and_a_stall_times_out() {
    let mut d = rolling(3, int(1), int(0));
    d.spec.progress_deadline_seconds = Some(10);
    d.spec.template = template("v2.wasm");
    let old = with_revision(rs_for(&d, "v1.wasm", 1, 3, 3, 3), 1);
    let new = with_revision(rs_for(&d, "v2.wasm", 2, 1, 1, 0), 2);
    let mut base = DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(3),
        available_replicas: Some(3),
        ..Default::default()
    };
    set_condition(
        &mut base,
        new_condition(PROGRESSING, "True", NEW_RS_CREATED, "created".into(), at(0)),
    );
    // The new pod shows up: progressing, transition time kept.
    let s = rollout_status(&d, &base, &[&old, &new], Some(&new), at(5));
    let c = condition(&s, PROGRESSING).unwrap();
    assert_eq!(c.reason.as_deref(), Some(RS_UPDATED));
    assert_eq!(c.last_update_time, Some(Time(at(5))));
    assert_eq!(c.last_transition_time, Some(Time(at(0))));
    assert_eq!(s.updated_replicas, Some(1));
    assert_eq!(s.unavailable_replicas, Some(1));

    // No progress for longer than the deadline: ProgressDeadlineExceeded.
    d.status = Some(s.clone());
    let later = rollout_status(&d, &s, &[&old, &new], Some(&new), at(16));
    let c = condition(&later, PROGRESSING).unwrap();
    assert_eq!(
        (c.status.as_deref(), c.reason.as_deref()),
        (Some("False"), Some(TIMED_OUT))
    );
    assert_eq!(
        c.message.as_deref(),
        Some(
            format!(
                "ReplicaSet {:?} has timed out progressing.",
                new.metadata.name.clone().unwrap()
            )
            .as_str()
        )
    );
    assert_eq!(
        progress_check_after(&d, &s, at(6)),
        Some(Duration::from_secs(10))
    );
    assert_eq!(progress_check_after(&d, &later, at(16)), None);
}

#[test]
fn paused_deployments_say_so_and_do_not_roll() {
    let mut d = rolling(2, int(1), int(0));
    let old = with_revision(rs_for(&d, "v1.wasm", 1, 2, 2, 2), 1);
    d.spec.template = template("v2.wasm");
    d.spec.paused = Some(true);
    let p = plan(&Observed {
        deployment: &d,
        replica_sets: vec![&old],
        pods: vec![],
        now: at(0),
    })
    .unwrap();
    assert_eq!((p.create, p.scale), (None, vec![]));
    let status = p.status.unwrap();
    let c = condition(&status, PROGRESSING).unwrap();
    assert_eq!(
        (c.status.as_deref(), c.reason.as_deref()),
        (Some("Unknown"), Some(PAUSED))
    );
}

#[test]
fn replica_failures_are_copied_from_the_new_replica_set() {
    let d = rolling(2, int(1), int(0));
    let mut new = rs_for(&d, "v1.wasm", 1, 2, 0, 0);
    new.status.as_mut().unwrap().conditions = Some(vec![ReplicaSetCondition {
        type_: Some(REPLICA_FAILURE.into()),
        status: Some("True".into()),
        reason: Some("FailedCreate".into()),
        message: Some("quota".into()),
        last_transition_time: Some(Time(at(0))),
    }]);
    let s = rollout_status(&d, &DeploymentStatus::default(), &[&new], Some(&new), at(1));
    let c = condition(&s, REPLICA_FAILURE).unwrap();
    assert_eq!(c.reason.as_deref(), Some("FailedCreate"));
}

#[test]
fn a_complete_rollout_is_not_reopened() {
    let d = rolling(2, int(1), int(0));
    let rs = with_revision(rs_for(&d, "v1.wasm", 1, 2, 2, 2), 1);
    let mut base = DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(2),
        updated_replicas: Some(2),
        ready_replicas: Some(2),
        available_replicas: Some(2),
        ..Default::default()
    };
    set_condition(
        &mut base,
        new_condition(
            AVAILABLE,
            "True",
            MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            at(0),
        ),
    );
    set_condition(
        &mut base,
        new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, "done".into(), at(0)),
    );
    let s = rollout_status(&d, &base, &[&rs], Some(&rs), at(100));
    assert_eq!(s, base);
}
