//! `wharf rollout`: follow, inspect and steer Deployment rollouts, as `kubectl rollout`.
//!
//! - `status` watches the Deployment (no polling) and prints kubectl's progress lines as
//!   they change; it exits 0 once the rollout is complete and 1 when the controller says
//!   the progress deadline passed, or at `--timeout`.
//! - `history` lists the revisions from the `deployment.kubernetes.io/revision`
//!   annotations of the Deployment's ReplicaSets, with their `kubernetes.io/change-cause`.
//! - `undo` is client side, as kubectl's: it finds the ReplicaSet of the wanted revision
//!   (the previous one by default) and puts its pod template back into the Deployment
//!   with one JSON patch; the controller then rolls that template out as a new revision.
//! - `restart`, `pause` and `resume` patch the template annotation `restartedAt` and
//!   `spec.paused`.
//!
//! Daemon sets roll out too (their controller writes the same kind of status), so
//! `status` follows them as well.

use super::cluster::{Cluster, server_error};
use super::describe::{Writer, describe_pod_template, tabwrite};
use super::target::{self, Target};
use super::{finish, report};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{GetParams, ListParams, Patch, PatchParams, WatchParams};
use kube::core::WatchEvent;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use wharf_control::api::{ResourceKind, resolve};
use wharf_control::controllers::deployment::{
    ANNOTATIONS_NOT_COPIED, CHANGE_CAUSE, POD_TEMPLATE_HASH, TIMED_OUT, equal_ignore_hash, revision,
};

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait for a rollout to finish, printing its progress
    Status(StatusArgs),
    /// List a deployment's revisions
    History(HistoryArgs),
    /// Roll a deployment back to an earlier revision
    Undo(UndoArgs),
    /// Restart a deployment's pods with a new rollout of the same template
    Restart(TargetArgs),
    /// Stop rolling out changes to a deployment's template
    Pause(TargetArgs),
    /// Roll out changes again after a pause
    Resume(TargetArgs),
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// KIND/NAME... or KIND NAME...
    #[arg(value_name = "KIND NAME", required = true)]
    pub args: Vec<String>,

    /// Namespace [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Give up after this long (e.g. 90s, 5m); 0 waits for ever
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = super::node::parse_duration)]
    pub timeout: Duration,

    /// Keep watching until the rollout finishes (false: print the status once)
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Show the pod template of this revision
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub revision: i64,
}

#[derive(Debug, Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// The revision to roll back to; 0 is the previous one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub to_revision: i64,
}

pub async fn run(cluster: &Cluster, args: RolloutArgs) -> anyhow::Result<()> {
    match args.command {
        RolloutCommand::Status(a) => status(cluster, a).await,
        RolloutCommand::History(a) => {
            each(
                cluster,
                &a.target,
                &["Deployment", "StatefulSet"],
                |c, k, ns, n| match k.kind {
                    "StatefulSet" => Box::pin(statefulset_history(c, k, ns, n)),
                    _ => Box::pin(history(c, k, ns, n, a.revision)),
                },
            )
            .await
        }
        RolloutCommand::Undo(a) => {
            each(
                cluster,
                &a.target,
                &["Deployment", "StatefulSet"],
                |c, k, ns, n| match k.kind {
                    "StatefulSet" => Box::pin(statefulset_undo(c, k, ns, n, a.to_revision)),
                    _ => Box::pin(undo(c, k, ns, n, a.to_revision)),
                },
            )
            .await
        }
        RolloutCommand::Restart(a) => {
            each(
                cluster,
                &a,
                &["Deployment", "DaemonSet", "StatefulSet"],
                |c, k, ns, n| Box::pin(restart(c, k, ns, n)),
            )
            .await
        }
        RolloutCommand::Pause(a) => {
            each(cluster, &a, &["Deployment"], |c, k, ns, n| {
                Box::pin(set_paused(c, k, ns, n, true))
            })
            .await
        }
        RolloutCommand::Resume(a) => {
            each(cluster, &a, &["Deployment"], |c, k, ns, n| {
                Box::pin(set_paused(c, k, ns, n, false))
            })
            .await
        }
    }
}

type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>;

/// Runs `f` for every named object of the command line, reporting failures one by one.
async fn each<'a>(
    cluster: &'a Cluster,
    args: &'a TargetArgs,
    kinds: &[&str],
    f: impl Fn(&'a Cluster, &'static ResourceKind, &'a str, String) -> Step<'a>,
) -> anyhow::Result<()> {
    let namespace = args.namespace.as_deref().unwrap_or(&cluster.namespace);
    let mut failed = false;
    for (kind, name) in named(&args.args, kinds)? {
        if let Err(e) = f(cluster, kind, namespace, name).await {
            report(&e);
            failed = true;
        }
    }
    finish(failed)
}

fn named(args: &[String], kinds: &[&str]) -> anyhow::Result<Vec<(&'static ResourceKind, String)>> {
    let mut out = Vec::new();
    for Target { kind, name } in target::parse(args)? {
        if kind.group != "apps" || !kinds.contains(&kind.kind) {
            bail!(
                "no rollout support for {}: use {}",
                kind.qualified_plural(),
                kinds
                    .iter()
                    .map(|k| format!("{}/NAME", k.to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
        }
        let Some(name) = name else {
            bail!("a {} needs a name: {}/NAME", kind.singular, kind.singular);
        };
        out.push((kind, name));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// status

/// kubectl's status viewers: the line to print, and whether the rollout is done; an
/// error when it failed.
pub fn rollout_message(kind: &str, object: &Value) -> Result<(String, bool), String> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let int = |ptr: &str| object.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    if kind == "StatefulSet" {
        return statefulset_message(object, generation, observed);
    }
    if kind == "DaemonSet" {
        let strategy = object
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            .unwrap_or("RollingUpdate");
        if strategy != "RollingUpdate" {
            return Err("rollout status is only available for RollingUpdate strategy type".into());
        }
        if generation > observed {
            return Ok((
                "Waiting for daemon set spec update to be observed...\n".into(),
                false,
            ));
        }
        let desired = int("/status/desiredNumberScheduled");
        let updated = int("/status/updatedNumberScheduled");
        let available = int("/status/numberAvailable");
        if updated < desired {
            return Ok((
                format!(
                    "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated...\n"
                ),
                false,
            ));
        }
        if available < desired {
            return Ok((
                format!(
                    "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available...\n"
                ),
                false,
            ));
        }
        return Ok((
            format!("daemon set {name:?} successfully rolled out\n"),
            true,
        ));
    }
    if generation > observed {
        return Ok((
            "Waiting for deployment spec update to be observed...\n".into(),
            false,
        ));
    }
    let timed_out = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Progressing")
                && c.get("reason").and_then(Value::as_str) == Some(TIMED_OUT)
        });
    if timed_out {
        return Err(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let replicas = object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int("/status/updatedReplicas");
    let total = int("/status/replicas");
    let available = int("/status/availableReplicas");
    if updated < replicas {
        return Ok((
            format!(
                "Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated...\n"
            ),
            false,
        ));
    }
    if total > updated {
        return Ok((
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...\n",
                total - updated
            ),
            false,
        ));
    }
    if available < updated {
        return Ok((
            format!(
                "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available...\n"
            ),
            false,
        ));
    }
    Ok((
        format!("deployment {name:?} successfully rolled out\n"),
        true,
    ))
}

async fn status(cluster: &Cluster, args: StatusArgs) -> anyhow::Result<()> {
    let targets = named(
        &args.target.args,
        &["Deployment", "DaemonSet", "StatefulSet"],
    )?;
    let [(kind, name)] = targets.as_slice() else {
        bail!("rollout status takes one object");
    };
    let namespace = args
        .target
        .namespace
        .as_deref()
        .unwrap_or(&cluster.namespace);
    let follow = follow(cluster, kind, namespace, name, args.watch);
    if args.timeout.is_zero() {
        return follow.await;
    }
    match tokio::time::timeout(args.timeout, follow).await {
        Ok(result) => result,
        Err(_) => bail!("timed out waiting for the condition"),
    }
}

/// Prints the status line whenever it changes, until the rollout is done or failed.
async fn follow(
    cluster: &Cluster,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
    watch: bool,
) -> anyhow::Result<()> {
    let at = cluster.at(kind, Some(namespace));
    let mut last = String::new();
    let mut show = |object: &Value| -> anyhow::Result<bool> {
        let (message, done) = rollout_message(kind.kind, object).map_err(|e| anyhow!(e))?;
        if message != last {
            print!("{message}");
            last = message;
        }
        Ok(done)
    };
    let object = cluster
        .send(at.get(name, &GetParams::default()))
        .await
        .map_err(|e| cluster.explain(e))?;
    if show(&object)? || !watch {
        return Ok(());
    }
    let mut version = resource_version(&object);
    let params = WatchParams {
        field_selector: Some(format!("metadata.name={name}")),
        ..WatchParams::default()
    };
    loop {
        let events = cluster
            .watch(at.watch(&params, &version))
            .await
            .map_err(|e| cluster.explain(e))?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event.map_err(|e| cluster.explain(e))? {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    version = resource_version(&object);
                    if show(&object)? {
                        return Ok(());
                    }
                }
                WatchEvent::Deleted(_) => bail!("object has been deleted"),
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => {
                    let object = cluster
                        .send(at.get(name, &GetParams::default()))
                        .await
                        .map_err(|e| cluster.explain(e))?;
                    version = resource_version(&object);
                    if show(&object)? {
                        return Ok(());
                    }
                    break;
                }
                WatchEvent::Error(status) => return Err(server_error(*status).into()),
            }
        }
    }
}

fn resource_version(object: &Value) -> String {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_string()
}

/// kubectl's StatefulSet status viewer.
fn statefulset_message(
    object: &Value,
    generation: i64,
    observed: i64,
) -> Result<(String, bool), String> {
    let int = |ptr: &str| object.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
    let text = |ptr: &str| {
        object
            .pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let strategy = object
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    if strategy != "RollingUpdate" {
        return Err("rollout status is only available for RollingUpdate strategy type".into());
    }
    if observed == 0 || generation > observed {
        return Ok((
            "Waiting for statefulset spec update to be observed...\n".into(),
            false,
        ));
    }
    let replicas = object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int("/status/readyReplicas");
    if ready < replicas {
        return Ok((
            format!("Waiting for {} pods to be ready...\n", replicas - ready),
            false,
        ));
    }
    let partition = int("/spec/updateStrategy/rollingUpdate/partition");
    let updated = int("/status/updatedReplicas");
    if partition > 0 {
        if updated < replicas - partition {
            return Ok((
                format!(
                    "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...\n",
                    replicas - partition
                ),
                false,
            ));
        }
        return Ok((
            format!("partitioned roll out complete: {updated} new pods have been updated...\n"),
            true,
        ));
    }
    let update_revision = text("/status/updateRevision");
    if update_revision != text("/status/currentRevision") {
        return Ok((
            format!(
                "waiting for statefulset rolling update to complete {updated} pods at revision {update_revision}...\n"
            ),
            false,
        ));
    }
    Ok((
        format!(
            "statefulset rolling update complete {} pods at revision {}...\n",
            int("/status/currentReplicas"),
            text("/status/currentRevision")
        ),
        true,
    ))
}

// ---------------------------------------------------------------------------------------
// StatefulSet history and undo (its ControllerRevisions)

/// The ControllerRevisions `sts` controls, by revision number.
async fn controller_revisions(
    cluster: &Cluster,
    namespace: &str,
    sts: &Value,
) -> anyhow::Result<BTreeMap<i64, Value>> {
    let kind = resolve("controllerrevisions.apps")
        .ok_or_else(|| anyhow!("controllerrevisions are not served"))?;
    let list = cluster
        .send(
            cluster
                .at(kind, Some(namespace))
                .list(&ListParams::default()),
        )
        .await
        .map_err(|e| cluster.explain(e))?;
    let uid = sts.pointer("/metadata/uid").and_then(Value::as_str);
    Ok(list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| {
            r.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|o| {
                    o.get("controller").and_then(Value::as_bool) == Some(true)
                        && o.get("uid").and_then(Value::as_str) == uid
                })
        })
        .filter_map(|r| Some((r.get("revision")?.as_i64()?, r.clone())))
        .collect())
}

async fn statefulset_history(
    cluster: &Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: String,
) -> anyhow::Result<()> {
    let sts = get(cluster, kind, namespace, &name).await?;
    let revisions = controller_revisions(cluster, namespace, &sts).await?;
    let mut text = String::from("REVISION\tCHANGE-CAUSE\n");
    for (revision, r) in &revisions {
        let cause = r
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CHANGE_CAUSE))
            .and_then(Value::as_str)
            .unwrap_or("<none>");
        text.push_str(&format!("{revision}\t{cause}\n"));
    }
    println!("{}/{name}", kind.qualified_singular());
    println!("{}", tabwrite(&text));
    Ok(())
}

/// The revision a StatefulSet rolls back to: `to`, or the one before the newest.
pub fn statefulset_rollback_target<'a>(
    name: &str,
    revisions: &'a BTreeMap<i64, Value>,
    to: i64,
) -> anyhow::Result<&'a Value> {
    if to > 0 {
        return revisions
            .get(&to)
            .ok_or_else(|| anyhow!("unable to find specified revision {to} in history"));
    }
    if to < 0 {
        bail!("unable to find specified revision {to} in history");
    }
    revisions
        .values()
        .rev()
        .nth(1)
        .ok_or_else(|| anyhow!("no rollout history found for statefulset {name:?}"))
}

async fn statefulset_undo(
    cluster: &Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: String,
    to: i64,
) -> anyhow::Result<()> {
    let sts = get(cluster, kind, namespace, &name).await?;
    let revisions = controller_revisions(cluster, namespace, &sts).await?;
    let target = statefulset_rollback_target(&name, &revisions, to)?;
    let data = target.get("data").cloned().unwrap_or(Value::Null);
    let qualified = format!("{}/{name}", kind.qualified_singular());
    let mut template = data
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(m) = template.as_object_mut() {
        m.remove("$patch");
    }
    if sts.pointer("/spec/template") == Some(&template) {
        println!("{qualified} skipped rollback (current template already matches revision)");
        return Ok(());
    }
    // The revision's data is the strategic merge patch that restores its template.
    let request = http::Request::patch(kind.object_path(Some(namespace), &name))
        .header(
            http::header::CONTENT_TYPE,
            "application/strategic-merge-patch+json",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(serde_json::to_vec(&data)?)
        .map_err(|e| anyhow!("building the patch request: {e}"))?;
    cluster
        .send(Ok(request))
        .await
        .map_err(|e| cluster.explain(e))?;
    println!("{qualified} rolled back");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// history and undo

async fn get_deployment(
    cluster: &Cluster,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Deployment> {
    let object = cluster
        .send(
            cluster
                .at(kind, Some(namespace))
                .get(name, &GetParams::default()),
        )
        .await
        .map_err(|e| cluster.explain(e))?;
    serde_json::from_value(object).with_context(|| format!("reading deployment {name}"))
}

/// The ReplicaSets the Deployment controls.
async fn replica_sets(cluster: &Cluster, d: &Deployment) -> anyhow::Result<Vec<ReplicaSet>> {
    let kind = resolve("replicasets").ok_or_else(|| anyhow!("replicasets are not served"))?;
    let list = cluster
        .send(
            cluster
                .at(kind, d.metadata.namespace.as_deref())
                .list(&ListParams::default()),
        )
        .await
        .map_err(|e| cluster.explain(e))?;
    let items: Vec<ReplicaSet> = list
        .get("items")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| serde_json::from_value(i.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(items
        .into_iter()
        .filter(|rs| {
            rs.metadata.owner_references.iter().flatten().any(|r| {
                r.controller == Some(true) && Some(r.uid.as_str()) == d.metadata.uid.as_deref()
            })
        })
        .collect())
}

/// Revision → ReplicaSet (a later one with the same revision wins, as in kubectl).
fn by_revision(rss: Vec<ReplicaSet>) -> BTreeMap<i64, ReplicaSet> {
    rss.into_iter()
        .filter_map(|rs| revision(&rs).map(|r| (r, rs)))
        .collect()
}

/// The history table: `REVISION  CHANGE-CAUSE`, oldest first.
pub fn history_table(rss: &BTreeMap<i64, ReplicaSet>) -> String {
    let mut text = String::from("REVISION\tCHANGE-CAUSE\n");
    for (revision, rs) in rss {
        let cause = rs
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHANGE_CAUSE))
            .filter(|c| !c.is_empty())
            .map_or("<none>", String::as_str);
        text.push_str(&format!("{revision}\t{cause}\n"));
    }
    tabwrite(&text)
}

async fn history(
    cluster: &Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: String,
    revision: i64,
) -> anyhow::Result<()> {
    let d = get_deployment(cluster, kind, namespace, &name).await?;
    let revisions = by_revision(replica_sets(cluster, &d).await?);
    if revision > 0 {
        let rs = revisions
            .get(&revision)
            .ok_or_else(|| anyhow!("unable to find the specified revision"))?;
        let mut w = Writer::default();
        describe_pod_template(&mut w, rs.spec.template.as_ref());
        println!(
            "{}/{name} with revision #{revision}",
            kind.qualified_singular()
        );
        println!("{}", w.finish());
        return Ok(());
    }
    println!("{}/{name}", kind.qualified_singular());
    println!("{}", history_table(&revisions));
    Ok(())
}

/// The ReplicaSet to roll back to: revision `to`, or the second-newest when `to` is 0
/// (`deploymentRevision`).
pub fn rollback_target<'a>(
    name: &str,
    revisions: &'a BTreeMap<i64, ReplicaSet>,
    to: i64,
) -> anyhow::Result<&'a ReplicaSet> {
    if to < 0 {
        bail!("unable to find specified revision {to} in history");
    }
    if to > 0 {
        return revisions
            .get(&to)
            .ok_or_else(|| anyhow!("unable to find specified revision {to} in history"));
    }
    revisions
        .values()
        .rev()
        .nth(1)
        .ok_or_else(|| anyhow!("no rollout history found for deployment {name:?}"))
}

/// The JSON patch that restores `rs`'s template (without its hash label) and its
/// annotations, keeping the Deployment's own bookkeeping annotations.
pub fn rollback_patch(d: &Deployment, rs: &ReplicaSet) -> Value {
    let mut template = rs.spec.template.clone().unwrap_or_default();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if ANNOTATIONS_NOT_COPIED.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in rs.metadata.annotations.iter().flatten() {
        if !ANNOTATIONS_NOT_COPIED.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ])
}

async fn undo(
    cluster: &Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: String,
    to: i64,
) -> anyhow::Result<()> {
    let d = get_deployment(cluster, kind, namespace, &name).await?;
    if d.spec.paused == Some(true) {
        bail!(
            "you cannot rollback a paused deployment; resume it first with 'wharf rollout resume' and try again"
        );
    }
    let revisions = by_revision(replica_sets(cluster, &d).await?);
    let rs = rollback_target(&name, &revisions, to)?;
    let qualified = format!("{}/{name}", kind.qualified_singular());
    if rs
        .spec
        .template
        .as_ref()
        .is_some_and(|t| equal_ignore_hash(t, &d.spec.template))
    {
        let which = revision(rs).unwrap_or(to);
        println!(
            "{qualified} skipped rollback (current template already matches revision {which})"
        );
        return Ok(());
    }
    let patch = serde_json::to_vec(&rollback_patch(&d, rs))?;
    let request = http::Request::patch(kind.object_path(Some(namespace), &name))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .header(http::header::ACCEPT, "application/json")
        .body(patch)
        .map_err(|e| anyhow!("building the patch request: {e}"))?;
    cluster
        .send(Ok(request))
        .await
        .map_err(|e| cluster.explain(e))
        .with_context(|| format!("failed restoring revision {}", revision(rs).unwrap_or(to)))?;
    println!("{qualified} rolled back");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// restart, pause, resume

async fn patch(
    cluster: &Cluster,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
    body: Value,
) -> anyhow::Result<Value> {
    cluster
        .send(cluster.at(kind, Some(namespace)).patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&body),
        ))
        .await
        .map_err(|e| cluster.explain(e))
}

async fn get(
    cluster: &Cluster,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Value> {
    cluster
        .send(
            cluster
                .at(kind, Some(namespace))
                .get(name, &GetParams::default()),
        )
        .await
        .map_err(|e| cluster.explain(e))
}

async fn restart(
    cluster: &Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: String,
) -> anyhow::Result<()> {
    let object = get(cluster, kind, namespace, &name).await?;
    if object.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        bail!(
            "can't restart paused {} (run rollout resume first)",
            kind.singular
        );
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let body = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": now
    }}}}});
    patch(cluster, kind, namespace, &name, body).await?;
    println!("{}/{name} restarted", kind.qualified_singular());
    Ok(())
}

async fn set_paused(
    cluster: &Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: String,
    paused: bool,
) -> anyhow::Result<()> {
    let object = get(cluster, kind, namespace, &name).await?;
    let now = object.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
    if now == paused {
        let state = if paused {
            "already paused"
        } else {
            "not paused"
        };
        bail!("{} {name:?} is {state}", kind.qualified_plural());
    }
    let body = json!({"spec": {"paused": if paused { Value::Bool(true) } else { Value::Null }}});
    patch(cluster, kind, namespace, &name, body).await?;
    let done = if paused { "paused" } else { "resumed" };
    println!("{}/{name} {done}", kind.qualified_singular());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": generation},
               "spec": {"replicas": 3}, "status": status})
    }

    #[test]
    fn statefulset_status_lines_follow_kubectl() {
        let sts = |status: Value, partition: i64| {
            json!({"metadata": {"name": "web", "generation": 2},
                   "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate",
                            "rollingUpdate": {"partition": partition}}},
                   "status": status})
        };
        let msg = |v: &Value| rollout_message("StatefulSet", v).unwrap();
        assert_eq!(
            msg(&sts(json!({"observedGeneration": 1}), 0)).0,
            "Waiting for statefulset spec update to be observed...\n"
        );
        assert_eq!(
            msg(&sts(
                json!({"observedGeneration": 2, "readyReplicas": 1}),
                0
            )),
            ("Waiting for 2 pods to be ready...\n".to_string(), false)
        );
        let rolling = json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1,
            "currentReplicas": 2, "currentRevision": "web-a", "updateRevision": "web-b"});
        assert_eq!(
            msg(&sts(rolling.clone(), 0)),
            (
                "waiting for statefulset rolling update to complete 1 pods at revision web-b...\n"
                    .to_string(),
                false
            )
        );
        assert_eq!(
            msg(&sts(rolling, 2)),
            (
                "partitioned roll out complete: 1 new pods have been updated...\n".to_string(),
                true
            )
        );
        let done = json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3,
            "currentReplicas": 3, "currentRevision": "web-b", "updateRevision": "web-b"});
        assert_eq!(
            msg(&sts(done, 0)),
            (
                "statefulset rolling update complete 3 pods at revision web-b...\n".to_string(),
                true
            )
        );
        let on_delete =
            json!({"metadata": {"name": "web"}, "spec": {"updateStrategy": {"type": "OnDelete"}}});
        assert!(rollout_message("StatefulSet", &on_delete).is_err());
    }

    #[test]
    fn status_lines_follow_kubectl() {
        let msg = |g, s| rollout_message("Deployment", &deployment(g, s));
        assert_eq!(
            msg(2, json!({"observedGeneration": 1})),
            Ok((
                "Waiting for deployment spec update to be observed...\n".into(),
                false
            ))
        );
        assert_eq!(
            msg(1, json!({"observedGeneration": 1, "updatedReplicas": 1, "replicas": 3})),
            Ok(("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...\n".into(), false))
        );
        assert_eq!(
            msg(1, json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 4})),
            Ok(("Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...\n".into(), false))
        );
        assert_eq!(
            msg(1, json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 1})),
            Ok(("Waiting for deployment \"web\" rollout to finish: 1 of 3 updated replicas are available...\n".into(), false))
        );
        assert_eq!(
            msg(
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 3})
            ),
            Ok(("deployment \"web\" successfully rolled out\n".into(), true))
        );
        assert_eq!(
            msg(
                1,
                json!({"observedGeneration": 1, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]})
            ),
            Err("deployment \"web\" exceeded its progress deadline".into())
        );
    }

    fn rs(rev: &str, image: &str, cause: Option<&str>) -> ReplicaSet {
        let mut annotations = json!({"deployment.kubernetes.io/revision": rev});
        if let Some(c) = cause {
            annotations["kubernetes.io/change-cause"] = json!(c);
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{rev}"), "annotations": annotations},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "h"}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn history_lists_revisions_with_their_causes() {
        let revisions = by_revision(vec![rs("2", "v2", Some("image v2")), rs("1", "v1", None)]);
        assert_eq!(
            history_table(&revisions),
            "REVISION  CHANGE-CAUSE\n1         <none>\n2         image v2\n"
        );
    }

    #[test]
    fn undo_picks_the_previous_revision_and_restores_its_template() {
        let revisions = by_revision(vec![
            rs("1", "v1", None),
            rs("3", "v3", None),
            rs("2", "v2", Some("two")),
        ]);
        let target = rollback_target("web", &revisions, 0).unwrap();
        assert_eq!(target.metadata.name.as_deref(), Some("web-2"));
        assert_eq!(
            rollback_target("web", &revisions, 1)
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("web-1")
        );
        assert!(rollback_target("web", &revisions, 9).is_err());
        let only = by_revision(vec![rs("1", "v1", None)]);
        assert_eq!(
            rollback_target("web", &only, 0).unwrap_err().to_string(),
            "no rollout history found for deployment \"web\""
        );

        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {
                "deployment.kubernetes.io/revision": "3", "kubernetes.io/change-cause": "three"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "v3"}]}}}
        }))
        .unwrap();
        let patch = rollback_patch(&d, target);
        assert_eq!(patch[0]["path"], "/spec/template");
        assert_eq!(
            patch[0]["value"]["metadata"]["labels"],
            json!({"app": "web"})
        );
        assert_eq!(patch[0]["value"]["spec"]["containers"][0]["image"], "v2");
        assert_eq!(
            patch[1]["value"],
            json!({"deployment.kubernetes.io/revision": "3", "kubernetes.io/change-cause": "two"})
        );
    }
}
