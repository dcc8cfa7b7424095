//! The CronJob controller: creates a Job at each time the schedule names, as Kubernetes'
//! CronJob controller (v2) does.
//!
//! - **When.** The most recent scheduled time at or before now, after the last one
//!   handled (`status.lastScheduleTime`, else the CronJob's creation), in
//!   `spec.timeZone` ([`crate::api::cron`]). With `startingDeadlineSeconds`, times older
//!   than the deadline are never started (`MissSchedule`). More than 100 missed times
//!   get a `TooManyMissedTimes` warning and only the most recent runs. Then the
//!   controller requeues itself for the next time.
//! - **Which Job.** `NAME-<scheduled time in minutes since the epoch>`, so one time makes
//!   one Job whatever the retries; it carries the template's labels and annotations, the
//!   `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation and a controller
//!   ownerReference.
//! - **Concurrency.** `Allow` runs Jobs side by side; `Forbid` skips a time while a Job
//!   is active (`JobAlreadyActive`; the time still runs later if it is the most recent
//!   and within the deadline); `Replace` deletes the active Jobs first.
//! - **Status.** `active` lists the CronJob's unfinished Jobs (level-triggered, from the
//!   list: a Job created just before a crash is still counted), `lastScheduleTime` and
//!   `lastSuccessfulTime`. Finished Jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit` are deleted, oldest first.
//! - **Time** comes from a [`Clock`] that tests drive; [`decide`] is pure over (cronjob,
//!   its jobs, now).
//!
//! Events (`cronjob-controller`): `SuccessfulCreate`, `SuccessfulDelete`,
//! `SawCompletedJob`, `MissingJob`, `JobAlreadyActive`, `MissSchedule`,
//! `TooManyMissedTimes`, `UnparseableSchedule`, `UnknownTimeZone`, `FailedCreate`.

use super::clock::Clock;
use super::common::{self, Backoff, Error};
use crate::api::cron::{self, Schedule};
use crate::events::{self, EventType, Recorder};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "cronjob-controller";
/// The annotation with the time a Job was scheduled for, in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Beyond this many missed times, a warning.
const TOO_MANY_MISSED: usize = 100;

/// Starts the controller; it stops when `shutdown` is cancelled.
pub fn start(
    client: kube::Client,
    clock: Clock,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        backoff: Backoff::default(),
        clock: clock.clone(),
    });
    let outcomes = Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .reconcile_all_on(clock.ticks())
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(reconcile, error_policy, ctx);
    tasks.spawn(common::drive("cronjob", outcomes, shutdown));
}

// ---------------------------------------------------------------------------------------
// Deciding

/// An event the decision implies: type, reason, message.
pub type Note = (EventType, &'static str, String);

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The Job to create, if a scheduled time is due.
    pub create: Option<Job>,
    /// Jobs to delete with their pods: active ones (`Replace`), then old finished ones.
    pub delete: Vec<(String, &'static str)>,
    pub status: CronJobStatus,
    pub events: Vec<Note>,
    /// When to look again (the next scheduled time).
    pub requeue: Option<Duration>,
}

fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The Job's name for a scheduled time: the CronJob's name and the minutes since the
/// epoch, as Kubernetes names them.
pub fn job_name(cron_job: &str, scheduled: Timestamp) -> String {
    format!("{cron_job}-{}", scheduled.as_second().div_euclid(60))
}

/// The Job a CronJob creates for `scheduled`.
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let spec = cj.spec.clone();
    let template = spec.job_template;
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    let mut owner = common::controller_ref("CronJob", "batch/v1", &cj.metadata);
    owner.block_owner_deletion = Some(true);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cj.metadata.name.as_deref().unwrap_or_default(),
                scheduled,
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn to_duration(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or_default() + Duration::from_millis(100)
}

/// The scheduled times in (`earliest`, `now`]: how many there are (counted up to
/// [`TOO_MANY_MISSED`] + 1) and the most recent.
fn missed(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (usize, Option<Timestamp>) {
    let mut count = 0;
    let mut last = None;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t, tz) {
        if next > now {
            return (count, last);
        }
        count += 1;
        last = Some(next);
        t = next;
        if count > TOO_MANY_MISSED {
            break;
        }
    }
    if count <= TOO_MANY_MISSED {
        return (count, last);
    }
    // Far behind: find the most recent time from windows that end now.
    for window in [3_600, 86_400, 32 * 86_400, 366 * 86_400, 5 * 366 * 86_400] {
        let from = (now - SignedDuration::from_secs(window)).max(t);
        let mut recent = None;
        let mut s = from;
        while let Some(next) = schedule.next_after(s, tz) {
            if next > now {
                break;
            }
            recent = Some(next);
            s = next;
        }
        if recent.is_some() {
            return (count, recent);
        }
    }
    (count, last)
}

/// Decides what the CronJob needs at `now`: `jobs` are the Jobs it controls.
pub fn decide(cj: &CronJob, jobs: &[Job], now: Timestamp) -> Plan {
    let spec = cj.spec.clone();
    let old = cj.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let mut status = old.clone();

    // What the Jobs say: the active ones, the ones seen finishing, the last success.
    let old_active = old.active.clone().unwrap_or_default();
    let was_active = |uid: &Option<String>| old_active.iter().any(|r| &r.uid == uid);
    let mut active: Vec<&Job> = jobs.iter().filter(|j| finished(j).is_none()).collect();
    active.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for j in jobs {
        if let Some(condition) = finished(j)
            && was_active(&j.metadata.uid)
        {
            plan.events.push((
                EventType::Normal,
                "SawCompletedJob",
                format!(
                    "Saw completed job: {}, condition: {condition}",
                    j.metadata.name.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    for r in &old_active {
        if !jobs.iter().any(|j| j.metadata.uid == r.uid) {
            plan.events.push((
                EventType::Normal,
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    r.name.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    let last_success = jobs
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(|t| t.0))
        .max();
    if let Some(t) = last_success
        && old.last_successful_time.as_ref().is_none_or(|o| o.0 < t)
    {
        status.last_successful_time = Some(Time(t));
    }

    // History: the oldest finished Jobs beyond the limits go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs.iter().filter(|j| finished(j) == Some(kind)).collect();
        done.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .or(j.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0),
                j.metadata.name.clone(),
            )
        });
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for j in done.into_iter().take(excess) {
            plan.delete
                .push((j.metadata.name.clone().unwrap_or_default(), "history"));
        }
    }

    let finish = |mut plan: Plan, active: Vec<&Job>, status: CronJobStatus| {
        let mut status = status;
        status.active = (!active.is_empty()).then(|| active.iter().map(|j| job_ref(j)).collect());
        plan.status = status;
        plan
    };

    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        return finish(plan, active, status);
    }
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            plan.events.push((
                EventType::Warning,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return finish(plan, active, status);
        }
    };
    let tz = match cron::time_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            plan.events.push((
                EventType::Warning,
                "UnknownTimeZone",
                format!(
                    "invalid timeZone: {:?}: {e}",
                    spec.time_zone.unwrap_or_default()
                ),
            ));
            return finish(plan, active, status);
        }
    };
    if let Some(next) = schedule.next_after(now, &tz) {
        plan.requeue = Some(to_duration(next.duration_since(now)));
    }

    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut earliest = old.last_schedule_time.as_ref().map_or(created, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - SignedDuration::from_secs(deadline.max(0)));
    }
    let (count, most_recent) = missed(&schedule, &tz, earliest, now);
    let Some(scheduled) = most_recent else {
        return finish(plan, active, status);
    };
    if count > TOO_MANY_MISSED {
        plan.events.push((
            EventType::Warning,
            "TooManyMissedTimes",
            format!(
                "too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
            ),
        ));
    }
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled + SignedDuration::from_secs(deadline.max(0)) < now
    {
        plan.events.push((
            EventType::Warning,
            "MissSchedule",
            format!(
                "Missed scheduled time to start a job: {}",
                scheduled.strftime("%a, %d %b %Y %H:%M:%S +0000")
            ),
        ));
        return finish(plan, active, status);
    }
    let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled);
    let handled = old
        .last_schedule_time
        .as_ref()
        .is_some_and(|t| t.0 >= scheduled)
        || jobs
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some(&name));
    if handled {
        return finish(plan, active, status);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push((
                EventType::Normal,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid"
                    .into(),
            ));
            return finish(plan, active, status);
        }
        Some("Replace") => {
            for j in active.drain(..) {
                plan.delete
                    .insert(0, (j.metadata.name.clone().unwrap_or_default(), "replace"));
            }
        }
        _ => {}
    }
    let job = job_for(cj, scheduled, &tz);
    status.last_schedule_time = Some(Time(scheduled));
    plan.create = Some(job);
    finish(plan, active, status)
}

// ---------------------------------------------------------------------------------------
// Doing

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    backoff: Backoff,
    clock: Clock,
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = common::key(&cj.metadata);
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs_api = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(Error::api("listing jobs of cronjob", &key))?
        .items
        .into_iter()
        .filter(|j| common::controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .collect();

    let mut plan = decide(&cj, &jobs, ctx.clock.now());
    let about = events::reference("CronJob", "batch/v1", &cj.metadata);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for (name, _why) in &plan.delete {
        match jobs_api.delete(name, &background).await {
            Ok(_) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted job {name}"),
                    )
                    .await
            }
            Err(e) if common::code_of(&e) == Some(404) => {}
            Err(e) => return Err(Error::api("deleting a job of cronjob", &key)(e)),
        }
    }
    if let Some(job) = &plan.create {
        let name = job.metadata.name.clone().unwrap_or_default();
        match jobs_api.create(&PostParams::default(), job).await {
            Ok(created) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created job {name}"),
                    )
                    .await;
                plan.status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(job_ref(&created));
            }
            // Created before (a retry after a lost status write): it is in the list
            // the next time.
            Err(e) if common::code_of(&e) == Some(409) => {}
            Err(e) => {
                ctx.recorder
                    .record(
                        &about,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating job: {e}"),
                    )
                    .await;
                return Err(Error::api("creating a job for cronjob", &key)(e));
            }
        }
    }
    common::write_status_if_changed(
        &Api::<CronJob>::namespaced(ctx.client.clone(), &ns),
        cj.metadata.name.as_deref().unwrap_or_default(),
        cj.status.as_ref(),
        &plan.status,
    )
    .await
    .map_err(Error::api("writing the status of cronjob", &key))?;
    for (ty, reason, message) in &plan.events {
        ctx.recorder.record(&about, *ty, reason, message).await;
    }
    ctx.backoff.succeeded(&key);
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn error_policy(cj: Arc<CronJob>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let key = common::key(&cj.metadata);
    if error.code() != Some(409) {
        tracing::warn!(cronjob = %key, %error, "cronjob");
    }
    Action::requeue(ctx.backoff.failed(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cron_job(spec: Value, status: Value) -> CronJob {
        let mut s = json!({"schedule": "*/1 * * * *", "concurrencyPolicy": "Allow",
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "a", "image": "a.wasm"}]}}}}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": {"name": "tick", "namespace": "default", "uid": "cj-uid",
                "creationTimestamp": "2026-12-06T10:00:30Z"},
            "spec": s, "status": status,
        }))
        .unwrap()
    }

    fn job(name: &str, condition: Option<&str>, completed: Option<&str>) -> Job {
        let conditions: Vec<Value> = condition
            .map(|c| json!({"type": c, "status": "True"}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "creationTimestamp": completed.unwrap_or("2026-12-06T10:00:00Z")},
            "status": {"conditions": conditions, "completionTime": completed, "startTime": completed},
        }))
        .unwrap()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.status
            .active
            .iter()
            .flatten()
            .filter_map(|r| r.name.as_deref())
            .collect()
    }

    fn reasons(plan: &Plan) -> Vec<&str> {
        plan.events.iter().map(|e| e.1).collect()
    }

    #[test]
    fn nothing_before_the_first_time_then_one_job_named_by_its_minute() {
        let cj = cron_job(json!({}), json!({}));
        let plan = decide(&cj, &[], ts("2026-12-06T10:00:50Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue, Some(Duration::from_millis(10_100)));

        let plan = decide(&cj, &[], ts("2026-12-06T10:01:05Z"));
        let created = plan.create.clone().unwrap();
        // 10:01 UTC on 2026-12-06 is minute 29,942,521 since the epoch.
        assert_eq!(created.metadata.name.as_deref(), Some("tick-29942521"));
        assert_eq!(
            created.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP],
            "2026-12-06T10:01:00+00:00"
        );
        assert_eq!(created.metadata.labels.unwrap()["app"], "tick");
        let owner = &created.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
        assert_eq!(
            plan.status.last_schedule_time,
            Some(Time(ts("2026-12-06T10:01:00Z")))
        );
        assert_eq!(plan.requeue, Some(Duration::from_millis(55_100)));

        // Handled once: the same minute again creates nothing.
        let mut after = cj.clone();
        after.status = Some(plan.status.clone());
        let running = job("tick-29942521", None, None);
        let plan = decide(&after, &[running], ts("2026-12-06T10:01:30Z"));
        assert_eq!(plan.create, None);
        assert_eq!(names(&plan), ["tick-29942521"]);
    }

    #[test]
    fn concurrency_policies() {
        let status = json!({"lastScheduleTime": "2026-12-06T10:01:00Z",
            "active": [{"name": "tick-29942521", "uid": "uid-tick-29942521"}]});
        let running = [job("tick-29942521", None, None)];
        let now = ts("2026-12-06T10:02:01Z");

        let allow = decide(&cron_job(json!({}), status.clone()), &running, now);
        assert!(allow.create.is_some());
        assert_eq!(
            names(&allow),
            ["tick-29942521"],
            "plus the new one once created"
        );

        let forbid = cron_job(json!({"concurrencyPolicy": "Forbid"}), status.clone());
        let plan = decide(&forbid, &running, now);
        assert_eq!(plan.create, None);
        assert_eq!(reasons(&plan), ["JobAlreadyActive"]);
        assert_eq!(
            plan.status.last_schedule_time,
            Some(Time(ts("2026-12-06T10:01:00Z")))
        );
        // Once the running Job finished, the skipped time still runs.
        let done = [job(
            "tick-29942521",
            Some("Complete"),
            Some("2026-12-06T10:02:20Z"),
        )];
        let plan = decide(&forbid, &done, ts("2026-12-06T10:02:30Z"));
        assert_eq!(
            plan.create.as_ref().unwrap().metadata.name.as_deref(),
            Some("tick-29942522")
        );
        assert_eq!(reasons(&plan), ["SawCompletedJob"]);
        assert_eq!(
            plan.status.last_successful_time,
            Some(Time(ts("2026-12-06T10:02:20Z")))
        );

        let replace = cron_job(json!({"concurrencyPolicy": "Replace"}), status);
        let plan = decide(&replace, &running, now);
        assert_eq!(plan.delete, [("tick-29942521".to_string(), "replace")]);
        assert!(plan.create.is_some());
        assert!(names(&plan).is_empty());
    }

    #[test]
    fn suspend_deadline_and_missed_times() {
        let suspended = cron_job(json!({"suspend": true}), json!({}));
        assert_eq!(
            decide(&suspended, &[], ts("2026-12-06T11:00:00Z")).create,
            None
        );

        // Down for an hour: only the most recent time runs.
        let cj = cron_job(json!({}), json!({}));
        let plan = decide(&cj, &[], ts("2026-12-06T11:00:10Z"));
        assert_eq!(
            plan.create.unwrap().metadata.name.as_deref(),
            Some(job_name("tick", ts("2026-12-06T11:00:00Z")).as_str())
        );
        assert!(plan.events.is_empty());

        // Down for three hours: more than 100 missed minutes.
        let plan = decide(&cj, &[], ts("2026-12-06T13:00:10Z"));
        assert_eq!(reasons(&plan), ["TooManyMissedTimes"]);
        assert_eq!(
            plan.status.last_schedule_time,
            Some(Time(ts("2026-12-06T13:00:00Z")))
        );
        // A deadline bounds how far back it looks: no warning.
        let bounded = cron_job(json!({"startingDeadlineSeconds": 200}), json!({}));
        let plan = decide(&bounded, &[], ts("2026-12-06T13:00:10Z"));
        assert!(plan.events.is_empty());
        assert!(plan.create.is_some());

        // A daily schedule and a deadline of 10 s: at 00:00:30 it is too late.
        let daily = cron_job(
            json!({"schedule": "@daily", "startingDeadlineSeconds": 10}),
            json!({}),
        );
        let plan = decide(&daily, &[], ts("2026-12-07T00:00:30Z"));
        assert_eq!(plan.create, None);
        let plan = decide(&daily, &[], ts("2026-12-07T00:00:05Z"));
        assert!(plan.create.is_some());
    }

    #[test]
    fn time_zones_name_the_job_by_its_utc_minute() {
        let cj = cron_job(
            json!({"schedule": "0 9 * * *", "timeZone": "Europe/Paris"}),
            json!({}),
        );
        // 09:00 in Paris is 08:00 UTC in December.
        assert_eq!(decide(&cj, &[], ts("2026-12-07T07:59:00Z")).create, None);
        let job = decide(&cj, &[], ts("2026-12-07T08:00:01Z")).create.unwrap();
        assert_eq!(
            job.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP],
            "2026-12-07T09:00:00+01:00"
        );
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let cj = cron_job(
            json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0, "suspend": true}),
            json!({"active": [{"name": "gone", "uid": "uid-gone"}]}),
        );
        let jobs = [
            job("a", Some("Complete"), Some("2026-12-06T10:01:00Z")),
            job("b", Some("Complete"), Some("2026-12-06T10:02:00Z")),
            job("c", Some("Failed"), Some("2026-12-06T10:03:00Z")),
        ];
        let plan = decide(&cj, &jobs, ts("2026-12-06T10:05:00Z"));
        assert_eq!(
            plan.delete,
            [("a".to_string(), "history"), ("c".to_string(), "history")]
        );
        assert_eq!(reasons(&plan), ["MissingJob"]);
        assert_eq!(plan.status.active, None);
    }

    /// The controller against a real API server in-process, its clock driven by the test.
    #[tokio::test]
    async fn fires_when_the_driven_clock_reaches_the_minute_and_forbid_waits() {
        use k8s_openapi::api::core::v1::Event;
        let api = crate::apiserver::testing::TestApi::new().await;
        let client = api.client();
        let clock = Clock::manual(Timestamp::now());
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        start(client.clone(), clock.clone(), shutdown.clone(), &mut tasks);
        let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let mut cj = cron_job(json!({"concurrencyPolicy": "Forbid"}), json!({}));
        cj.metadata = ObjectMeta {
            name: Some("tick".into()),
            ..Default::default()
        };
        cj.status = None;
        cron_jobs.create(&PostParams::default(), &cj).await.unwrap();

        async fn until<F, Fut>(what: &str, mut f: F)
        where
            F: FnMut() -> Fut,
            Fut: std::future::Future<Output = bool>,
        {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !f().await {
                assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let count = || async { jobs.list(&ListParams::default()).await.unwrap().items.len() };
        let reasons = || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect::<Vec<_>>()
        };

        // Nothing until the clock reaches the next minute, which no test waits for.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count().await, 0);
        clock.advance(SignedDuration::from_secs(61));
        until("the first job", || async { count().await == 1 }).await;
        let first = jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .remove(0);
        let first_name = first.metadata.name.clone().unwrap();
        assert!(first_name.starts_with("tick-"));
        until("status.active", || async {
            cron_jobs
                .get_status("tick")
                .await
                .unwrap()
                .status
                .and_then(|s| s.active)
                .map(|a| a.len())
                == Some(1)
        })
        .await;

        // Forbid: a minute later the first job still runs, nothing new starts.
        clock.advance(SignedDuration::from_secs(60));
        until("JobAlreadyActive", || async {
            reasons().await.iter().any(|r| r == "JobAlreadyActive")
        })
        .await;
        assert_eq!(count().await, 1);

        // The first job completes: the skipped minute runs now.
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}],
            "completionTime": clock.now().to_string(), "startTime": clock.now().to_string()}});
        jobs.patch_status(
            &first_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(done),
        )
        .await
        .unwrap();
        until("the second job", || async { count().await == 2 }).await;
        until("SawCompletedJob", || async {
            reasons().await.iter().any(|r| r == "SawCompletedJob")
        })
        .await;
        let status = cron_jobs.get_status("tick").await.unwrap().status.unwrap();
        assert!(status.last_successful_time.is_some());
        assert!(status.last_schedule_time.is_some());
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
