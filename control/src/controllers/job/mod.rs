//! The Job controller: runs a Job's pods until enough of them succeed, or the Job fails.
//!
//! - **Counting.** `spec.parallelism` pods run at once, never more than the completions
//!   still missing; the Job is done when `spec.completions` pods succeeded (without
//!   `completions`, a work queue: when one succeeded and none is left running). Failures
//!   count against `spec.backoffLimit`: failed pods (`restartPolicy: Never`), plus, with
//!   `OnFailure`, the container restarts of the running pods, as Kubernetes counts them.
//!   A failed pod is replaced after a back-off that doubles per failure (Kubernetes' pod
//!   failure back-off; `job_backoff`, 10 s, to 6 minutes).
//! - **Tracking without finalizers.** Kubernetes puts a `batch.kubernetes.io/job-tracking`
//!   finalizer on Job pods so that a pod deleted after it finished is still counted.
//!   wharf keeps the older way: finished pods stay (until the Job goes) and are counted
//!   from the list, and `succeeded`/`failed` never go down, so a finished pod that someone
//!   deletes is not counted twice nor lost. A pod deleted while it was running is not a
//!   failure here; it is replaced.
//! - **Ending** follows Kubernetes 1.31+: once the success criteria are met the Job gets
//!   `SuccessCriteriaMet` (reason `CompletionsReached`), once it fails `FailureTarget`
//!   (reason `BackoffLimitExceeded`, or `DeadlineExceeded` after
//!   `activeDeadlineSeconds`); its remaining pods are deleted, and when none is left
//!   running or terminating the terminal condition follows, `Complete` (with
//!   `completionTime`) or `Failed`. `spec.suspend` deletes the running pods and adds
//!   `Suspended`.
//! - **TTL after finished.** A finished Job with `ttlSecondsAfterFinished` is deleted
//!   (foreground, so its pods go first) that long after its `completionTime` (or its
//!   `Failed` condition), as Kubernetes' TTL-after-finished controller does; the time
//!   comes from the controllers' [`super::clock::Clock`].
//! - **Level-triggered, live reads**, as the DaemonSet controller: the Job's pods are
//!   listed through the API (by the selector the API server generated at create,
//!   `batch.kubernetes.io/controller-uid`) in every reconcile, so pods created by the
//!   previous reconcile are always seen and no expectations are needed. Pods get the
//!   template's labels (which include the selector's) and a controller ownerReference;
//!   matching orphans are adopted. [`decide`] is pure and unit-tested.
//!
//! - **Indexed Jobs** ([`indexed`]) give each pod one of `completions` indexes and finish
//!   when every index has succeeded; a **pod failure policy** ([`failure_policy`]) can
//!   fail the Job on a given exit code or ignore a failure (an evicted pod).
//!
//! Events (`job-controller`): `SuccessfulCreate`, `SuccessfulDelete`, `Completed`,
//! `BackoffLimitExceeded`, `DeadlineExceeded`, `PodFailurePolicy`, `Suspended`, `Resumed`.

pub mod failure_policy;
pub mod indexed;

use super::ControllerConfig;
use super::common::{self, Backoff, Claim, Error};
use crate::events::{self, EventType, Recorder};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "job-controller";
/// The longest pod failure back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(360);
/// At most this many pods are created in one reconcile.
const BURST: i32 = 500;

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    config: &ControllerConfig,
    pods: &mut super::informer::SharedInformer<Pod>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        backoff: Backoff::default(),
        pod_backoff: config.job_backoff,
        clock: config.clock.clone(),
    });
    let reconciles = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns_shared_stream(pods.subscribe())
        .reconcile_all_on(config.clock.ticks())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            common::metered(config.workqueue.queue("job"), reconcile),
            error_policy,
            ctx,
        )
        .for_each(|outcome| {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "job controller");
            }
            futures::future::ready(())
        });
    tasks.spawn(super::gc::run_until_shutdown(shutdown, reconciles));
}

// ---------------------------------------------------------------------------------------
// Deciding

/// An event the decision implies: type, reason, message.
pub type Note = (EventType, &'static str, String);

#[derive(Debug, PartialEq)]
pub struct Plan {
    /// How many pods to create.
    pub create: i32,
    /// For an Indexed Job, the indexes of the pods to create (`create` of them).
    pub indexes: Vec<i32>,
    /// Pods to delete: (name, uid).
    pub delete: Vec<(String, String)>,
    pub status: JobStatus,
    pub events: Vec<Note>,
    pub requeue: Option<Duration>,
    /// The Job finished `ttlSecondsAfterFinished` ago: delete it (and its pods).
    pub expired: bool,
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn has(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set_condition(status: &mut JobStatus, new: JobCondition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) if c.status == new.status => {}
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// When a finished Job finished: its `completionTime`, else when it became `Failed`
/// (or `Complete`), as the TTL-after-finished controller reads it.
fn finish_time(status: &JobStatus) -> Option<Timestamp> {
    status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    })
}

/// When the pod ended: its containers' last `finishedAt`, else its creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The pod failure back-off after `failures` failures.
pub fn backoff_after(base: Duration, failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let shift = u32::try_from(failures - 1).unwrap_or(0).min(16);
    base.saturating_mul(1u32 << shift).min(MAX_BACKOFF)
}

fn to_duration(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or_default() + Duration::from_millis(50)
}

/// Which active pods go first when there are too many: unscheduled, then not running,
/// then not ready, then the newest.
fn deletion_rank(pod: &Pod) -> (bool, bool, bool, std::cmp::Reverse<Option<Timestamp>>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    (
        scheduled,
        phase(pod) == "Running",
        common::is_pod_ready(pod),
        std::cmp::Reverse(pod.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    )
}

fn pod_ref(pod: &Pod) -> (String, String) {
    (
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

/// Decides what the Job needs now: `pods` are the ones it controls.
pub fn decide(job: &Job, pods: &[Pod], now: Timestamp, backoff_base: Duration) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut plan = Plan {
        create: 0,
        indexes: Vec::new(),
        delete: Vec::new(),
        status: JobStatus::default(),
        events: Vec::new(),
        requeue: None,
        expired: false,
    };
    let active: Vec<&Pod> = pods.iter().filter(|p| common::is_pod_active(p)).collect();
    let terminating = pods
        .iter()
        .filter(|p| common::is_pod_terminating(p))
        .count();
    let count = |ph: &str| {
        i32::try_from(pods.iter().filter(|p| phase(p) == ph).count()).unwrap_or(i32::MAX)
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(1).max(0);
    let done = if indexed {
        indexed::completed(old.completed_indexes.as_deref(), pods, completions)
    } else {
        Default::default()
    };
    let succeeded = if indexed {
        i32::try_from(done.len()).unwrap_or(i32::MAX)
    } else {
        count("Succeeded")
    }
    .max(old.succeeded.unwrap_or(0));
    // The pod failure policy judges each failed pod: ignored failures are not counted,
    // and one matching a FailJob rule fails the Job.
    let mut fail_job = None;
    let mut counted_failures = 0;
    for pod in pods.iter().filter(|p| phase(p) == "Failed") {
        match failure_policy::judge(spec.pod_failure_policy.as_ref(), pod) {
            failure_policy::Verdict::Ignore => {}
            failure_policy::Verdict::Count => counted_failures += 1,
            failure_policy::Verdict::FailJob(message) => {
                counted_failures += 1;
                fail_job.get_or_insert(message);
            }
        }
    }
    let failed = counted_failures.max(old.failed.unwrap_or(0));
    if indexed && !done.is_empty() {
        status.completed_indexes = Some(indexed::format(&done));
    }
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.active = Some(i32::try_from(active.len()).unwrap_or(i32::MAX));
    status.ready = Some(
        i32::try_from(active.iter().filter(|p| common::is_pod_ready(p)).count())
            .unwrap_or(i32::MAX),
    );
    status.terminating = Some(i32::try_from(terminating).unwrap_or(i32::MAX));
    let delete_active = |plan: &mut Plan| plan.delete.extend(active.iter().map(|p| pod_ref(p)));

    // A finished Job only keeps its counts current, until its TTL runs out.
    if has(&old, "Complete") || has(&old, "Failed") {
        delete_active(&mut plan);
        if let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, finish_time(&old)) {
            let expires = at + SignedDuration::from_secs(i64::from(ttl.max(0)));
            if expires <= now {
                plan.expired = true;
            } else {
                plan.requeue = Some(to_duration(expires.duration_since(now)));
            }
        }
        plan.status = status;
        return plan;
    }

    if spec.suspend == Some(true) {
        delete_active(&mut plan);
        if !has(&old, "Suspended") {
            set_condition(
                &mut status,
                condition("Suspended", "True", "JobSuspended", "Job suspended", now),
            );
            plan.events
                .push((EventType::Normal, "Suspended", "Job suspended".into()));
        }
        status.start_time = None;
        plan.status = status;
        return plan;
    }
    if has(&old, "Suspended") {
        set_condition(
            &mut status,
            condition("Suspended", "False", "JobResumed", "Job resumed", now),
        );
        plan.events
            .push((EventType::Normal, "Resumed", "Job resumed".into()));
    }
    let start = status.start_time.as_ref().map_or(now, |t| t.0);
    status.start_time = Some(Time(start));

    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restarts: i32 = if on_failure {
        active
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };

    // Failure: the backoff limit, then the deadline.
    let existing_failure = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "FailureTarget" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let mut failure = existing_failure.clone();
    if failure.is_none() {
        if let Some(message) = fail_job {
            failure = Some(("PodFailurePolicy".into(), message));
        } else if failed + restarts > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let Some(ads) = spec.active_deadline_seconds {
            let deadline = start + SignedDuration::from_secs(ads.max(0));
            if deadline <= now {
                failure = Some((
                    "DeadlineExceeded".into(),
                    "Job was active longer than specified deadline".into(),
                ));
            } else {
                plan.requeue = Some(to_duration(deadline.duration_since(now)));
            }
        }
    }
    let success = has(&old, "SuccessCriteriaMet")
        || match spec.completions {
            Some(c) if indexed => done.len() >= usize::try_from(c).unwrap_or(0),
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };

    if let Some((reason, message)) = failure.filter(|_| !has(&old, "SuccessCriteriaMet")) {
        if existing_failure.is_none() {
            set_condition(
                &mut status,
                condition("FailureTarget", "True", &reason, &message, now),
            );
            let reason = match reason.as_str() {
                "DeadlineExceeded" => "DeadlineExceeded",
                "PodFailurePolicy" => "PodFailurePolicy",
                _ => "BackoffLimitExceeded",
            };
            plan.events
                .push((EventType::Warning, reason, message.clone()));
        }
        delete_active(&mut plan);
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                condition("Failed", "True", &reason, &message, now),
            );
        }
        plan.requeue = None;
    } else if success {
        if !has(&old, "SuccessCriteriaMet") {
            set_condition(
                &mut status,
                condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            );
        }
        delete_active(&mut plan);
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                condition(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            );
            status.completion_time = Some(Time(now));
            plan.events
                .push((EventType::Normal, "Completed", "Job completed".into()));
        }
        plan.requeue = None;
    } else {
        // An Indexed Job first drops pods of indexes already done, duplicates and pods
        // without a valid index.
        let mut active = active.clone();
        if indexed {
            let extra = indexed::surplus(&active, completions, &done, deletion_rank);
            plan.delete.extend(extra.iter().map(|p| pod_ref(p)));
            active.retain(|p| !extra.iter().any(|e| std::ptr::eq(*e, *p)));
        }
        let want = match spec.completions {
            Some(c) if indexed => {
                parallelism.min((c - i32::try_from(done.len()).unwrap_or(i32::MAX)).max(0))
            }
            Some(c) => parallelism.min((c - succeeded).max(0)),
            // A work queue: once one pod succeeded, no new pods; the rest finish.
            None if succeeded > 0 => i32::try_from(active.len()).unwrap_or(0).min(parallelism),
            None => parallelism,
        };
        let have = i32::try_from(active.len()).unwrap_or(i32::MAX);
        if have > want {
            let mut doomed: Vec<&Pod> = active.clone();
            doomed.sort_by_key(|p| deletion_rank(p));
            let n = usize::try_from(have - want).unwrap_or(0);
            plan.delete.extend(doomed.into_iter().take(n).map(pod_ref));
        } else if have < want {
            // After failures, replacements wait for the back-off.
            let wait_from = pods
                .iter()
                .filter(|p| phase(p) == "Failed")
                .filter_map(finished_at)
                .max();
            let ready_at = wait_from.map(|t| {
                t + SignedDuration::try_from(backoff_after(backoff_base, failed))
                    .unwrap_or_default()
            });
            match ready_at {
                Some(at) if at > now => {
                    let wait = to_duration(at.duration_since(now));
                    plan.requeue = Some(plan.requeue.map_or(wait, |r| r.min(wait)));
                }
                _ => {
                    plan.create = (want - have).min(BURST);
                    if indexed {
                        plan.indexes = indexed::missing(&active, completions, &done, plan.create);
                        plan.create = i32::try_from(plan.indexes.len()).unwrap_or(0);
                    }
                }
            }
        }
    }
    plan.status = status;
    plan
}

/// The pod a Job creates; for an Indexed Job, the pod of `index`.
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let job_name = job.metadata.name.as_deref().unwrap_or("job");
    let (mut labels, mut annotations, mut spec) = (meta.labels, meta.annotations, template.spec);
    if let Some(i) = index {
        let i = i.to_string();
        labels
            .get_or_insert_default()
            .insert(indexed::INDEX_KEY.into(), i.clone());
        annotations
            .get_or_insert_default()
            .insert(indexed::INDEX_KEY.into(), i.clone());
        if let Some(spec) = spec.as_mut() {
            spec.hostname
                .get_or_insert_with(|| format!("{job_name}-{i}"));
            let containers = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            for c in containers {
                let env = c.env.get_or_insert_default();
                env.retain(|e| e.name != indexed::INDEX_ENV);
                env.push(EnvVar {
                    name: indexed::INDEX_ENV.into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: format!("metadata.annotations['{}']", indexed::INDEX_KEY),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
    }
    let generate_name = match index {
        Some(i) => format!("{job_name}-{i}-"),
        None => format!("{job_name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels,
            annotations,
            owner_references: Some(vec![common::controller_ref(
                "Job",
                "batch/v1",
                &job.metadata,
            )]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff,
    pod_backoff: Duration,
    clock: super::clock::Clock,
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&job.metadata);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let Some(selector) = job.spec.as_ref().and_then(|s| s.selector.clone()) else {
        return Ok(Action::await_change());
    };
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let listed = pods_api
        .list(&ListParams::default().labels(&common::selector_string(&selector)))
        .await
        .map_err(Error::api("listing pods of job", &key))?
        .items;
    let owner = common::controller_ref("Job", "batch/v1", &job.metadata);
    let mut pods = Vec::new();
    for pod in listed {
        let matches = common::selects(Some(&selector), pod.metadata.labels.as_ref());
        match common::claim(&uid, false, matches, &pod.metadata) {
            Claim::Owned => pods.push(pod),
            Claim::Adopt => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                pods_api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(common::adopt_patch(&pod.metadata, &owner)),
                    )
                    .await
                    .map_err(Error::api("adopting pod", format!("{ns}/{name}")))?;
                pods.push(pod);
            }
            Claim::Release | Claim::Ignore => {}
        }
    }

    let plan = decide(&job, &pods, ctx.clock.now(), ctx.pod_backoff);
    let about = events::reference("Job", "batch/v1", &job.metadata);
    if plan.expired {
        // ttlSecondsAfterFinished: the Job goes, its pods with it (foreground, as the
        // TTL-after-finished controller deletes), and only the Job that was judged.
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = job.metadata.name.as_deref().unwrap_or_default();
        return match Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .delete(name, &params)
            .await
        {
            Ok(_) => Ok(Action::await_change()),
            Err(e) if matches!(common::code_of(&e), Some(404 | 409)) => Ok(Action::await_change()),
            Err(e) => Err(Error::api("deleting the expired job", &key)(e)),
        };
    }
    for (name, pod_uid) in &plan.delete {
        let deleted = common::delete_pod_with_uid(&pods_api, name, pod_uid)
            .await
            .map_err(Error::api("deleting a pod of job", &key))?;
        if deleted {
            ctx.recorder
                .record(
                    &about,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
        }
    }
    let templates: Vec<Pod> = if plan.indexes.is_empty() {
        let template = pod_for(&job, None);
        (0..plan.create).map(|_| template.clone()).collect()
    } else {
        plan.indexes
            .iter()
            .map(|i| pod_for(&job, Some(*i)))
            .collect()
    };
    for template in &templates {
        common::create_pod_recorded(&pods_api, template, &ctx.recorder, &about)
            .await
            .map_err(Error::api("creating a pod for job", &key))?;
    }
    let mut status = plan.status.clone();
    if plan.create > 0 {
        status.active = Some(status.active.unwrap_or(0) + plan.create);
    }
    common::write_status_if_changed(
        &Api::<Job>::namespaced(ctx.client.clone(), &ns),
        job.metadata.name.as_deref().unwrap_or_default(),
        job.status.as_ref(),
        &status,
    )
    .await
    .map_err(Error::api("writing the status of job", &key))?;
    // Events about the outcome only once it is recorded in the status.
    for (ty, reason, message) in &plan.events {
        ctx.recorder.record(&about, *ty, reason, message).await;
    }
    ctx.backoff.succeeded(&key);
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn error_policy(job: Arc<Job>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&job.metadata);
    if error.code() != Some(409) {
        tracing::warn!(job = %key, %error, "job");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const BASE: Duration = Duration::from_secs(10);

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn job(spec: Value, status: Value) -> Job {
        let mut s = json!({
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "job-uid"}},
            "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "job-uid", "job-name": "pi"}},
                         "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "pi.wasm"}]}},
            "parallelism": 1, "completions": 1, "backoffLimit": 6,
        });
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": s, "status": status,
        }))
        .unwrap()
    }

    fn pod(name: &str, phase: &str, age: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": ts(-age).to_string()},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn conditions(status: &JobStatus) -> Vec<(&str, &str, &str)> {
        status
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_deref().unwrap_or(""),
                )
            })
            .collect()
    }

    fn indexed_pod(name: &str, index: i32, phase: &str) -> Pod {
        let mut p = pod(name, phase, 1);
        p.metadata.annotations = Some([(indexed::INDEX_KEY.to_string(), index.to_string())].into());
        p
    }

    #[test]
    fn an_indexed_job_runs_each_missing_index_once_and_completes_when_all_succeeded() {
        let j = job(
            json!({"completionMode": "Indexed", "parallelism": 2, "completions": 4}),
            json!({}),
        );
        let plan = decide(&j, &[], ts(0), BASE);
        assert_eq!((plan.create, plan.indexes.clone()), (2, vec![0, 1]));

        // 0 succeeded, 1 runs (twice: one goes), 2 failed: 2 and 3 are missing, one slot.
        let pods = [
            indexed_pod("a", 0, "Succeeded"),
            indexed_pod("b", 1, "Running"),
            indexed_pod("b2", 1, "Pending"),
            indexed_pod("c", 2, "Failed"),
        ];
        let plan = decide(&j, &pods, ts(3600), BASE);
        assert_eq!(plan.delete, [("b2".to_string(), "uid-b2".to_string())]);
        assert_eq!(plan.indexes, [2]);
        assert_eq!(plan.status.completed_indexes.as_deref(), Some("0"));
        assert_eq!(
            (plan.status.succeeded, plan.status.failed),
            (Some(1), Some(1))
        );

        // Every index done (3 recorded before, the others now): complete.
        let pods = [
            indexed_pod("a", 0, "Succeeded"),
            indexed_pod("b", 1, "Succeeded"),
            indexed_pod("c", 2, "Succeeded"),
        ];
        let j = job(
            json!({"completionMode": "Indexed", "parallelism": 2, "completions": 4}),
            json!({"completedIndexes": "3", "succeeded": 1}),
        );
        let plan = decide(&j, &pods, ts(0), BASE);
        assert_eq!(plan.status.completed_indexes.as_deref(), Some("0-3"));
        assert_eq!(plan.status.succeeded, Some(4));
        assert!(has(&plan.status, "Complete"), "{:?}", plan.status);
    }

    #[test]
    fn the_pod_failure_policy_fails_the_job_or_ignores_a_failure() {
        let policy = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]});
        let j = job(
            json!({"backoffLimit": 0, "podFailurePolicy": policy}),
            json!({}),
        );
        let mut evicted = pod("a", "Failed", 5);
        evicted.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({"type": "DisruptionTarget", "status": "True"})).unwrap(),
        ]);
        // An evicted pod is not counted (backoffLimit 0 is not exceeded) and is replaced.
        let plan = decide(&j, std::slice::from_ref(&evicted), ts(0), BASE);
        assert_eq!(plan.status.failed, Some(0));
        assert!(conditions(&plan.status).is_empty());
        assert_eq!(plan.create, 1);

        let mut crashed = pod("b", "Failed", 5);
        crashed.metadata.namespace = Some("default".into());
        crashed.status.as_mut().unwrap().container_statuses = Some(vec![
            serde_json::from_value(json!({"name": "pi", "ready": false, "restartCount": 0,
                "image": "pi.wasm", "imageID": "", "state": {"terminated": {"exitCode": 42}}}))
            .unwrap(),
        ]);
        let plan = decide(&j, &[evicted, crashed], ts(0), BASE);
        assert_eq!(
            conditions(&plan.status),
            [
                ("FailureTarget", "True", "PodFailurePolicy"),
                ("Failed", "True", "PodFailurePolicy")
            ]
        );
        let message = plan.status.conditions.as_ref().unwrap()[1].message.clone();
        assert_eq!(
            message.as_deref(),
            Some(
                "Container pi for pod default/b failed with exit code 42 matching FailJob rule at index 0"
            )
        );
        assert_eq!(plan.events[0].1, "PodFailurePolicy");
    }

    #[test]
    fn indexed_pods_carry_their_index_name_hostname_and_variable() {
        let j = job(
            json!({"completionMode": "Indexed", "completions": 3}),
            json!({}),
        );
        let p = pod_for(&j, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(
            p.metadata
                .annotations
                .unwrap()
                .get(indexed::INDEX_KEY)
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            p.metadata
                .labels
                .unwrap()
                .get(indexed::INDEX_KEY)
                .map(String::as_str),
            Some("2")
        );
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env = spec.containers[0].env.clone().unwrap();
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
    }

    #[test]
    fn runs_parallelism_pods_up_to_the_completions_left() {
        let j = job(json!({"parallelism": 3, "completions": 5}), json!({}));
        let plan = decide(&j, &[], ts(0), BASE);
        assert_eq!(plan.create, 3);
        assert_eq!(plan.status.start_time, Some(Time(ts(0))));
        assert_eq!(plan.status.active, Some(0));

        // Three succeeded, two running: two missing, both running: nothing to add.
        let pods = [
            pod("a", "Succeeded", 9),
            pod("b", "Succeeded", 9),
            pod("c", "Succeeded", 9),
            pod("d", "Running", 2),
            pod("e", "Pending", 1),
        ];
        let plan = decide(&j, &pods, ts(0), BASE);
        assert_eq!(plan.create, 0);
        assert!(plan.delete.is_empty());
        assert_eq!(
            (plan.status.succeeded, plan.status.active),
            (Some(3), Some(2))
        );

        // Parallelism lowered: the pending pod goes first.
        let j1 = job(json!({"parallelism": 1, "completions": 5}), json!({}));
        let plan = decide(&j1, &pods, ts(0), BASE);
        assert_eq!(plan.delete, [("e".to_string(), "uid-e".to_string())]);
    }

    #[test]
    fn completes_after_the_last_pod_ended() {
        let j = job(
            json!({"parallelism": 2, "completions": 2}),
            json!({"startTime": ts(-10).to_string()}),
        );
        let pods = [pod("a", "Succeeded", 9), pod("b", "Succeeded", 5)];
        let plan = decide(&j, &pods, ts(0), BASE);
        assert_eq!(
            conditions(&plan.status),
            [
                ("SuccessCriteriaMet", "True", "CompletionsReached"),
                ("Complete", "True", "CompletionsReached")
            ]
        );
        assert_eq!(plan.status.completion_time, Some(Time(ts(0))));
        assert_eq!(
            plan.events,
            [(EventType::Normal, "Completed", "Job completed".to_string())]
        );
        assert_eq!(plan.create, 0);

        // Criteria met while a pod still runs (work queue): it is stopped first.
        let queue = job(json!({"parallelism": 2, "completions": null}), json!({}));
        let pods = [pod("a", "Succeeded", 9), pod("b", "Running", 5)];
        let plan = decide(&queue, &pods, ts(0), BASE);
        assert!(
            conditions(&plan.status).is_empty(),
            "a work queue waits for its pods"
        );
        assert!(plan.delete.is_empty());
        assert_eq!(plan.create, 0);
        let pods = [pod("a", "Succeeded", 9), pod("b", "Succeeded", 5)];
        let plan = decide(&queue, &pods, ts(0), BASE);
        assert!(plan.status.completion_time.is_some());

        let extra = job(json!({"parallelism": 2, "completions": 1}), json!({}));
        let pods = [pod("a", "Succeeded", 9), pod("b", "Running", 5)];
        let plan = decide(&extra, &pods, ts(0), BASE);
        assert_eq!(
            conditions(&plan.status),
            [("SuccessCriteriaMet", "True", "CompletionsReached")]
        );
        assert_eq!(plan.delete.len(), 1);
        assert!(plan.status.completion_time.is_none());
    }

    #[test]
    fn fails_past_the_backoff_limit() {
        let j = job(json!({"backoffLimit": 1}), json!({}));
        // One failure: the replacement waits 10 s after the failure.
        let pods = [pod("a", "Failed", 3)];
        let plan = decide(&j, &pods, ts(0), BASE);
        assert_eq!(plan.create, 0);
        assert_eq!(plan.requeue, Some(Duration::from_millis(7050)));
        assert_eq!(decide(&j, &pods, ts(7), BASE).create, 1);
        // Two failures with a limit of one: FailureTarget, then Failed.
        let pods = [pod("a", "Failed", 30), pod("b", "Failed", 3)];
        let plan = decide(&j, &pods, ts(0), BASE);
        assert_eq!(
            conditions(&plan.status),
            [
                ("FailureTarget", "True", "BackoffLimitExceeded"),
                ("Failed", "True", "BackoffLimitExceeded")
            ]
        );
        assert_eq!(plan.events[0].1, "BackoffLimitExceeded");
        assert_eq!(plan.status.failed, Some(2));

        // OnFailure: container restarts count too.
        let j = job(
            json!({"backoffLimit": 2, "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "job-uid"}},
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "pi", "image": "pi.wasm"}]}}}),
            json!({}),
        );
        let mut restarting = pod("a", "Running", 30);
        restarting.status = Some(serde_json::from_value(json!({"phase": "Running",
            "containerStatuses": [{"name": "pi", "image": "pi.wasm", "imageID": "", "ready": false, "restartCount": 3}]})).unwrap());
        let plan = decide(&j, &[restarting], ts(0), BASE);
        assert_eq!(
            conditions(&plan.status)[0],
            ("FailureTarget", "True", "BackoffLimitExceeded")
        );
        assert_eq!(plan.delete.len(), 1, "the running pod is stopped");
        assert!(
            !has(&plan.status, "Failed"),
            "Failed waits for the pod to be gone"
        );
    }

    #[test]
    fn fails_past_the_active_deadline() {
        let j = job(
            json!({"activeDeadlineSeconds": 30, "parallelism": 2, "completions": 4}),
            json!({"startTime": ts(-10).to_string()}),
        );
        let pods = [pod("a", "Running", 9), pod("b", "Running", 9)];
        let plan = decide(&j, &pods, ts(0), BASE);
        assert_eq!(plan.requeue, Some(Duration::from_millis(20_050)));
        assert!(plan.delete.is_empty());
        let plan = decide(&j, &pods, ts(20), BASE);
        assert_eq!(
            conditions(&plan.status),
            [("FailureTarget", "True", "DeadlineExceeded")]
        );
        assert_eq!(plan.delete.len(), 2);
        assert_eq!(plan.events[0].1, "DeadlineExceeded");
        // Once the pods are gone: Failed, and nothing more happens.
        let failing: Job = {
            let mut f = j.clone();
            f.status = Some(plan.status.clone());
            f
        };
        let plan = decide(&failing, &[], ts(25), BASE);
        assert_eq!(
            conditions(&plan.status),
            [
                ("FailureTarget", "True", "DeadlineExceeded"),
                ("Failed", "True", "DeadlineExceeded")
            ]
        );
        assert_eq!(plan.create, 0);
        assert!(plan.events.is_empty());
        let mut done = failing.clone();
        done.status = Some(plan.status.clone());
        let plan = decide(&done, &[], ts(40), BASE);
        assert_eq!(plan.status, done.status.unwrap());
    }

    #[test]
    fn counts_never_go_down_and_suspend_stops_pods() {
        let j = job(json!({"completions": 3}), json!({"succeeded": 2}));
        let plan = decide(&j, &[pod("c", "Running", 1)], ts(0), BASE);
        assert_eq!(plan.status.succeeded, Some(2));
        let suspended = job(
            json!({"suspend": true}),
            json!({"startTime": ts(-5).to_string()}),
        );
        let plan = decide(&suspended, &[pod("c", "Running", 1)], ts(0), BASE);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(
            conditions(&plan.status),
            [("Suspended", "True", "JobSuspended")]
        );
        assert_eq!(plan.status.start_time, None);
    }

    #[test]
    fn pods_carry_the_template_labels_and_the_owner() {
        let j = job(json!({}), json!({}));
        let pod = pod_for(&j, None);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(
            labels
                .get(crate::api::wellknown::JOB_CONTROLLER_UID_LABEL)
                .map(String::as_str),
            Some("job-uid")
        );
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.api_version.as_str(),
                owner.controller
            ),
            ("Job", "batch/v1", Some(true))
        );
        assert_eq!(pod.spec.unwrap().restart_policy.as_deref(), Some("Never"));
        assert_eq!(backoff_after(BASE, 0), Duration::ZERO);
        assert_eq!(backoff_after(BASE, 3), Duration::from_secs(40));
        assert_eq!(backoff_after(BASE, 30), MAX_BACKOFF);
    }

    #[test]
    fn finished_jobs_expire_after_their_ttl() {
        let done = json!({"conditions": [{"type": "Complete", "status": "True"}],
            "completionTime": ts(-10).to_string(), "succeeded": 1});
        let j = job(json!({"ttlSecondsAfterFinished": 30}), done.clone());
        let plan = decide(&j, &[], ts(0), BASE);
        assert!(!plan.expired);
        assert_eq!(plan.requeue, Some(Duration::from_millis(20_050)));
        assert!(decide(&j, &[], ts(20), BASE).expired);
        // Failed: from when it failed.
        let failed = job(
            json!({"ttlSecondsAfterFinished": 0}),
            json!({"conditions": [{"type": "Failed", "status": "True",
                "lastTransitionTime": ts(-1).to_string()}]}),
        );
        assert!(decide(&failed, &[], ts(0), BASE).expired);
        // Without a TTL a finished Job stays.
        let kept = job(json!({}), done);
        let plan = decide(&kept, &[], ts(1000), BASE);
        assert!(!plan.expired);
        assert_eq!(plan.requeue, None);
        // An unfinished Job never expires.
        let running = job(json!({"ttlSecondsAfterFinished": 0}), json!({}));
        assert!(!decide(&running, &[], ts(1000), BASE).expired);
    }
}
