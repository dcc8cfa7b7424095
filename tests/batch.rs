//! End-to-end: scheduled and budgeted workloads. CronJobs through kubectl (`create
//! cronjob`, `create job --from=cronjob/...`), PodDisruptionBudgets holding a drain,
//! ResourceQuotas refusing pods, and preemption by priority.
//!
//! A CronJob firing on schedule is tested at the controller level against a real API
//! server in-process with a driven clock (`controllers::cronjob` tests): a whole cluster
//! cannot be made to reach the next minute without waiting for it.
#![allow(clippy::unwrap_used)]

mod common;

use common::ControlProcess;
use common::kubectl::Kubectl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_cron_jobs_and_jobs_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };

    let out = k
        .ok(&[
            "create",
            "cronjob",
            "tick",
            "--image=hello.wasm",
            "--schedule=*/1 * * * *",
        ])
        .await;
    assert!(out.contains("cronjob.batch/tick created"), "{out}");
    let table = k.ok(&["get", "cronjobs"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    assert!(table.contains("*/1 * * * *"), "{table}");
    let spec = k
        .ok(&[
            "get",
            "cj",
            "tick",
            "-o",
            "jsonpath={.spec.concurrencyPolicy} {.spec.successfulJobsHistoryLimit} {.spec.jobTemplate.spec.template.spec.restartPolicy}",
        ])
        .await;
    assert_eq!(spec, "Allow 3 OnFailure");

    // A Job made now from the CronJob's template, owned by it.
    let out = k
        .ok(&["create", "job", "by-hand", "--from=cronjob/tick"])
        .await;
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    let job = k
        .ok(&[
            "get",
            "job",
            "by-hand",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate} {.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(job, "CronJob/tick manual hello.wasm");

    // Kubernetes' words for a bad schedule and zone.
    let bad = k
        .run(&[
            "create",
            "cronjob",
            "bad",
            "--image=hello.wasm",
            "--schedule=61 * * * *",
        ])
        .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains(
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        ),
        "{}",
        bad.stderr
    );
    let zone = k
        .run(&[
            "patch",
            "cronjob",
            "tick",
            "--type=merge",
            "-p",
            r#"{"spec":{"timeZone":"Mars/Base"}}"#,
        ])
        .await;
    assert!(
        zone.stderr
            .contains("spec.timeZone: Invalid value: \"Mars/Base\": unknown time zone Mars/Base"),
        "{}",
        zone.stderr
    );
}
