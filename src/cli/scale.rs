//! `wharf scale`: sets `spec.replicas` of deployments and replica sets, as `kubectl scale`.
//!
//! `--current-replicas` and `--resource-version` are preconditions: the object is read,
//! checked, and patched with the resourceVersion it was read at, so a change in between
//! gives a conflict and the check runs again on a fresh read, never a scale the user did
//! not ask for.

use super::cluster::Cluster;
use super::target::{self, Target};
use super::{finish, report};
use anyhow::{anyhow, bail};
use clap::Args;
use kube::api::{GetParams, Patch, PatchParams};
use serde_json::{Value, json};
use wharf_control::api::ResourceKind;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// KIND/NAME... or KIND NAME... (deployments, replicasets)
    #[arg(value_name = "KIND NAME", required = true)]
    pub args: Vec<String>,

    /// The new number of replicas
    #[arg(long, value_name = "COUNT")]
    pub replicas: i32,

    /// Scale only if the object has this many replicas now
    #[arg(long, value_name = "COUNT")]
    pub current_replicas: Option<i32>,

    /// Scale only if the object is at this resourceVersion
    #[arg(long, value_name = "VERSION")]
    pub resource_version: Option<String>,

    /// Namespace of the objects [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// How often a precondition is checked again after a conflicting write.
const ATTEMPTS: usize = 5;

/// Kinds with `spec.replicas` that `scale` works on.
fn scalable(kind: &ResourceKind) -> bool {
    matches!(
        (kind.group, kind.kind),
        ("apps", "Deployment" | "ReplicaSet")
    )
}

pub async fn run(cluster: &Cluster, args: ScaleArgs) -> anyhow::Result<()> {
    if args.replicas < 0 {
        bail!(
            "the --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0"
        );
    }
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let mut failed = false;
    for Target { kind, name } in target::parse(&args.args)? {
        let Some(name) = name else {
            bail!(
                "a {} needs a name: wharf scale {}/NAME --replicas=COUNT",
                kind.singular,
                kind.plural
            );
        };
        if !scalable(kind) {
            report(&anyhow!(
                "cannot scale {}/{name}: only deployments and replica sets have replicas",
                kind.qualified_plural()
            ));
            failed = true;
            continue;
        }
        match scale_one(cluster, kind, &namespace, &name, &args).await {
            Ok(()) => println!("{}/{name} scaled", kind.qualified_singular()),
            Err(e) => {
                report(&e);
                failed = true;
            }
        }
    }
    finish(failed)
}

/// Checks a precondition against the object as read: `Err` says what differs.
pub fn check_preconditions(
    object: &Value,
    current_replicas: Option<i32>,
    resource_version: Option<&str>,
) -> Result<(), String> {
    if let Some(expected) = current_replicas {
        let actual = object
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if actual != i64::from(expected) {
            return Err(format!("Expected replicas to be {expected}, was {actual}"));
        }
    }
    if let Some(expected) = resource_version {
        let actual = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if actual != expected {
            return Err(format!(
                "Expected resourceVersion to be {expected}, was {actual}"
            ));
        }
    }
    Ok(())
}

async fn scale_one(
    cluster: &Cluster,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
    args: &ScaleArgs,
) -> anyhow::Result<()> {
    let at = cluster.at(kind, Some(namespace));
    let guarded = args.current_replicas.is_some() || args.resource_version.is_some();
    for _ in 0..ATTEMPTS {
        let mut patch = json!({"spec": {"replicas": args.replicas}});
        if guarded {
            let object = cluster
                .send(at.get(name, &GetParams::default()))
                .await
                .map_err(|e| cluster.explain(e))?;
            check_preconditions(
                &object,
                args.current_replicas,
                args.resource_version.as_deref(),
            )
            .map_err(|e| anyhow!(e))?;
            patch["metadata"] =
                json!({"resourceVersion": object.pointer("/metadata/resourceVersion")});
        }
        match cluster
            .send(at.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .await
        {
            Ok(_) => return Ok(()),
            // Changed since it was checked: check again, unless the user named the version.
            Err(kube::Error::Api(status))
                if status.code == 409 && guarded && args.resource_version.is_none() => {}
            Err(e) => return Err(cluster.explain(e)),
        }
    }
    bail!(
        "{}/{name} kept changing; try again",
        kind.qualified_singular()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_name_what_differs() {
        let d = json!({"metadata": {"resourceVersion": "12"}, "spec": {"replicas": 3}});
        assert_eq!(check_preconditions(&d, Some(3), Some("12")), Ok(()));
        assert_eq!(
            check_preconditions(&d, Some(5), None),
            Err("Expected replicas to be 5, was 3".to_string())
        );
        assert_eq!(
            check_preconditions(&d, None, Some("11")),
            Err("Expected resourceVersion to be 11, was 12".to_string())
        );
        // An unset spec.replicas is the default, 1.
        assert_eq!(check_preconditions(&json!({}), Some(1), None), Ok(()));
    }
}
