//! `wharf cordon`, `wharf uncordon` and `wharf drain`: taking a node out of service, as
//! kubectl does.
//!
//! - `cordon NODE` sets `spec.unschedulable` (the scheduler then places no new pods there,
//!   and the node lifecycle controller adds the `node.kubernetes.io/unschedulable`
//!   taint); `uncordon NODE` clears it. Both print `node/NAME cordoned` (or `already
//!   cordoned`), as kubectl.
//! - `drain NODE` cordons, then evicts every pod on the node through the `pods/eviction`
//!   subresource, so the eviction goes through the same checks as kubectl's: an eviction
//!   a PodDisruptionBudget refuses (429) is retried every 5 s as kubectl does, until the
//!   budget's workload has a replacement Ready elsewhere, and it waits until the pods
//!   are gone. As kubectl, it refuses
//!   pods managed by a DaemonSet (their controller would put them right back) unless
//!   `--ignore-daemonsets` skips them, and pods without a controller (nothing would
//!   recreate them) unless `--force` deletes them anyway. Pods that already ended are
//!   removed without question. kubectl's `--delete-emptydir-data` check is not made:
//!   emptyDir data on a wharf node is the pod's scratch space either way.

use super::cluster::Cluster;
use anyhow::{anyhow, bail};
use clap::Args;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct CordonArgs {
    /// The node to mark unschedulable
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct UncordonArgs {
    /// The node to mark schedulable again
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node to drain
    #[arg(value_name = "NODE")]
    pub node: String,

    /// Leave pods managed by a DaemonSet where they are
    #[arg(long)]
    pub ignore_daemonsets: bool,

    /// Also delete pods that no controller would recreate
    #[arg(long)]
    pub force: bool,

    /// Seconds each pod gets to stop; -1 uses the pod's own terminationGracePeriodSeconds
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,

    /// Give up after this long (e.g. 30s, 2m); 0 waits forever
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = super::node::parse_duration)]
    pub timeout: Duration,
}

/// Sets `spec.unschedulable` of `node`; prints what happened as kubectl does.
async fn set_unschedulable(cluster: &Cluster, node: &str, cordon: bool) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(cluster.client());
    let current = nodes.get(node).await.map_err(|e| cluster.explain(e))?;
    let is = current
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let word = if cordon { "cordoned" } else { "uncordoned" };
    if is == cordon {
        println!("node/{node} already {word}");
        return Ok(());
    }
    let patch = serde_json::json!({"spec": {"unschedulable": if cordon { serde_json::json!(true) } else { serde_json::Value::Null }}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.explain(e))?;
    println!("node/{node} {word}");
    Ok(())
}

pub async fn cordon(cluster: &Cluster, args: CordonArgs) -> anyhow::Result<()> {
    set_unschedulable(cluster, &args.node, true).await
}

pub async fn uncordon(cluster: &Cluster, args: UncordonArgs) -> anyhow::Result<()> {
    set_unschedulable(cluster, &args.node, false).await
}

/// How drain treats one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Evict,
    /// A DaemonSet pod left alone (`--ignore-daemonsets`).
    SkipDaemon,
    /// A DaemonSet pod without `--ignore-daemonsets`.
    RefuseDaemon,
    /// No controller, and no `--force`.
    RefuseUnmanaged,
    /// No controller, evicted because of `--force`.
    EvictUnmanaged,
}

/// kubectl's drain filters, as a decision per pod.
pub fn verdict(pod: &Pod, ignore_daemonsets: bool, force: bool) -> Verdict {
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if finished {
        return Verdict::Evict;
    }
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match controller {
        Some(r) if r.kind == "DaemonSet" => {
            if ignore_daemonsets {
                Verdict::SkipDaemon
            } else {
                Verdict::RefuseDaemon
            }
        }
        Some(_) => Verdict::Evict,
        None if force => Verdict::EvictUnmanaged,
        None => Verdict::RefuseUnmanaged,
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

pub async fn drain(cluster: &Cluster, args: DrainArgs) -> anyhow::Result<()> {
    let node = &args.node;
    set_unschedulable(cluster, node, true).await?;
    let deadline = (!args.timeout.is_zero()).then(|| tokio::time::Instant::now() + args.timeout);
    let pods: Api<Pod> = Api::all(cluster.client());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|e| cluster.explain(e))?
        .items;

    let mut evict = Vec::new();
    let (mut skipped, mut daemons, mut unmanaged, mut forced) = (vec![], vec![], vec![], vec![]);
    for pod in on_node {
        match verdict(&pod, args.ignore_daemonsets, args.force) {
            Verdict::Evict => evict.push(pod),
            Verdict::EvictUnmanaged => {
                forced.push(pod_key(&pod));
                evict.push(pod);
            }
            Verdict::SkipDaemon => skipped.push(pod_key(&pod)),
            Verdict::RefuseDaemon => daemons.push(pod_key(&pod)),
            Verdict::RefuseUnmanaged => unmanaged.push(pod_key(&pod)),
        }
    }
    let mut refusals = Vec::new();
    if !unmanaged.is_empty() {
        refusals.push(format!(
            "cannot delete Pods that declare no controller (use --force to override): {}",
            unmanaged.join(", ")
        ));
    }
    if !daemons.is_empty() {
        refusals.push(format!(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
            daemons.join(", ")
        ));
    }
    if !refusals.is_empty() {
        bail!(
            "unable to drain node {node:?} due to error: {}",
            refusals.join(", ")
        );
    }
    if !forced.is_empty() {
        eprintln!(
            "Warning: deleting Pods that declare no controller: {}",
            forced.join(", ")
        );
    }
    if !skipped.is_empty() {
        eprintln!(
            "Warning: ignoring DaemonSet-managed Pods: {}",
            skipped.join(", ")
        );
    }

    let params = EvictParams {
        delete_options: Some(DeleteParams {
            grace_period_seconds: u32::try_from(args.grace_period).ok(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let evictions = cluster.client_without_retries()?;
    for pod in &evict {
        let key = pod_key(pod);
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(evictions.clone(), ns);
        println!("evicting pod {key}");
        loop {
            match api.evict(name, &params).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    eprintln!(
                        "error when evicting pods/{name:?} -n {ns:?} (will retry after 5s): {}",
                        s.message
                    );
                    if deadline
                        .is_some_and(|d| tokio::time::Instant::now() + Duration::from_secs(5) > d)
                    {
                        bail!(
                            "error when evicting pods/{name:?} -n {ns:?}: global timeout reached: {:?}",
                            args.timeout
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => return Err(cluster.explain(e)),
            }
        }
    }
    for pod in &evict {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(cluster.client(), ns);
        wait_gone(cluster, &api, pod, deadline, args.timeout).await?;
        println!("pod/{name} evicted");
    }
    println!("node/{node} drained");
    Ok(())
}

/// Waits until `pod` (this uid) is gone, polling, until `deadline`.
async fn wait_gone(
    cluster: &Cluster,
    api: &Api<Pod>,
    pod: &Pod,
    deadline: Option<tokio::time::Instant>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    loop {
        let current = api.get_opt(name).await.map_err(|e| cluster.explain(e))?;
        if current.is_none_or(|p| p.metadata.uid != pod.metadata.uid) {
            return Ok(());
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(anyhow!(
                "error when waiting for pod {name:?} terminating: global timeout reached: {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(owner: Option<&str>, phase: &str) -> Pod {
        let owners = owner.map(|kind| {
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "u", "controller": true}])
        });
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default", "ownerReferences": owners},
            "status": {"phase": phase}}),
        )
        .unwrap()
    }

    #[test]
    fn drain_filters_follow_kubectl() {
        assert_eq!(
            verdict(&pod(Some("ReplicaSet"), "Running"), false, false),
            Verdict::Evict
        );
        assert_eq!(
            verdict(&pod(Some("DaemonSet"), "Running"), false, false),
            Verdict::RefuseDaemon
        );
        assert_eq!(
            verdict(&pod(Some("DaemonSet"), "Running"), true, false),
            Verdict::SkipDaemon
        );
        assert_eq!(
            verdict(&pod(None, "Running"), false, false),
            Verdict::RefuseUnmanaged
        );
        assert_eq!(
            verdict(&pod(None, "Running"), false, true),
            Verdict::EvictUnmanaged
        );
        // A pod that ended holds nothing: it goes whoever owns it.
        assert_eq!(
            verdict(&pod(None, "Succeeded"), false, false),
            Verdict::Evict
        );
    }
}
