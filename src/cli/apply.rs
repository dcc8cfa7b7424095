//! `wharf apply -f`: create or update objects from manifests, as kubectl's client-side
//! apply does.
//!
//! The applied configuration is kept on the object in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, so the next apply knows
//! which fields the manifest owns and can delete the ones dropped from it (see
//! [`super::merge`]), and kubectl sees the same annotation it would have written. Each
//! object is applied on its own: one failure is reported and the others still apply.

use super::cluster::{Cluster, is_not_found};
use super::manifest::{self, Document};
use super::{during, finish, merge, report};
use anyhow::bail;
use clap::Args;
use k8s_openapi::ByteString;
use kube::api::{GetParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::path::PathBuf;
use wharf_control::api::ResourceKind;

/// The annotation kubectl keeps the last applied configuration in.
pub use wharf_control::api::wellknown::LAST_APPLIED_ANNOTATION as LAST_APPLIED;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file, directory (its .yaml, .yml and .json files) or - for stdin; repeatable
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    /// Namespace of objects that name none [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,
}

pub async fn run(cluster: &Cluster, args: ApplyArgs) -> anyhow::Result<()> {
    let documents = manifest::load(&args.files)?;
    if documents.is_empty() {
        bail!("no objects passed to apply");
    }
    let mut failed = false;
    for document in documents {
        let outcome = match document {
            Ok(doc) => apply(cluster, doc, args.namespace.as_deref()).await,
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                report(&e);
                failed = true;
            }
        }
    }
    finish(failed)
}

/// The custom kind of `doc`, from the cluster's CustomResourceDefinitions (one applied
/// earlier in the same manifest included): the row the API server serves it by.
async fn custom_kind(cluster: &Cluster, doc: &Document) -> Option<&'static ResourceKind> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use wharf_control::api::kinds::split_api_version;
    use wharf_control::apiserver::registry::custom::rows_of;
    let field = |f: &str| {
        doc.object
            .get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (group, version) = split_api_version(field("apiVersion"));
    let kind = field("kind");
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(cluster.client());
    let list = crds.list(&Default::default()).await.ok()?;
    list.items
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .flat_map(|c| rows_of(&c).iter().copied())
        .find(|k| k.group == group && k.version == version && k.kind == kind)
}

/// Applies one object; answers the line to print (`deployment.apps/web created`).
async fn apply(
    cluster: &Cluster,
    mut doc: Document,
    namespace: Option<&str>,
) -> anyhow::Result<String> {
    let kind = match doc.kind() {
        Ok(kind) => kind,
        Err(e) => custom_kind(cluster, &doc).await.ok_or(e)?,
    };
    let namespace = doc.place(kind, namespace, &cluster.namespace)?;
    let name = doc.name().to_string();
    let shown = format!("{}/{name}", kind.qualified_singular());
    let source = doc.origin.source.clone();
    let object = with_last_applied(doc.object)?;
    let at = cluster.at(kind, namespace.as_deref());

    let live = match cluster.send(at.get(&name, &GetParams::default())).await {
        Ok(live) => live,
        Err(e) if is_not_found(&e) => {
            let body = serde_json::to_vec(&object)?;
            cluster
                .send(at.create(&PostParams::default(), body))
                .await
                .map_err(|e| {
                    during(
                        cluster.explain(e),
                        format!("error when creating \"{source}\""),
                    )
                })?;
            return Ok(format!("{shown} created"));
        }
        Err(e) => {
            let context =
                format!("error when retrieving current configuration of {shown} from \"{source}\"");
            return Err(during(cluster.explain(e), context));
        }
    };
    let original = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    let original = original.map(|o| as_stored(kind, o));
    let patch = merge::three_way(original.as_ref(), &as_stored(kind, object), &live);
    if patch.is_empty() {
        return Ok(format!("{shown} unchanged"));
    }
    cluster
        .send(at.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
        .await
        .map_err(|e| {
            during(
                cluster.explain(e),
                format!("error when patching \"{source}\""),
            )
        })?;
    Ok(format!("{shown} configured"))
}

/// An object as the server stores it, for comparing with the live one: a Secret's
/// `stringData` is write-only (the server folds it into `data`, base64-encoded, and never
/// returns it), so it is compared, and patched, as the `data` it becomes.
fn as_stored(kind: &ResourceKind, mut object: Value) -> Value {
    let secret = kind.group.is_empty() && kind.kind == "Secret";
    if let Some(fields) = object.as_object_mut().filter(|_| secret)
        && let Some(Value::Object(plain)) = fields.remove("stringData")
        && let Value::Object(data) = fields.entry("data").or_insert_with(|| json!({}))
    {
        for (key, value) in plain {
            let bytes = value.as_str().unwrap_or_default().as_bytes().to_vec();
            data.insert(key, json!(ByteString(bytes)));
        }
    }
    object
}

/// The object as sent: the manifest, annotated with itself (compact JSON, without a
/// last-applied annotation it may carry).
fn with_last_applied(mut object: Value) -> anyhow::Result<Value> {
    fn metadata(object: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
        object.get_mut("metadata").and_then(Value::as_object_mut)
    }
    if let Some(metadata) = metadata(&mut object)
        && let Some(Value::Object(annotations)) = metadata.get_mut("annotations")
    {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
    let applied = serde_json::to_string(&object)?;
    let annotations =
        metadata(&mut object).map(|m| m.entry("annotations").or_insert_with(|| json!({})));
    let Some(Value::Object(annotations)) = annotations else {
        bail!("metadata.annotations must be a map of strings");
    };
    annotations.insert(LAST_APPLIED.to_string(), Value::String(applied));
    Ok(object)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_control::api::resolve;

    #[test]
    fn secret_string_data_compares_as_data() {
        let secret =
            json!({"kind": "Secret", "data": {"a": "eA=="}, "stringData": {"b": "s3cret"}});
        assert_eq!(
            as_stored(resolve("secret").unwrap(), secret.clone()),
            json!({"kind": "Secret", "data": {"a": "eA==", "b": "czNjcmV0"}})
        );
        assert_eq!(as_stored(resolve("cm").unwrap(), secret.clone()), secret);
    }

    #[test]
    fn last_applied_is_the_manifest_without_itself() {
        let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {LAST_APPLIED: "stale", "team": "a"}}, "data": {"k": "v"}});
        let sent = with_last_applied(manifest).unwrap();
        let applied: Value = serde_json::from_str(
            sent["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            applied,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"team": "a"}}, "data": {"k": "v"}})
        );
        assert_eq!(sent["metadata"]["annotations"]["team"], "a");

        let bare =
            with_last_applied(json!({"kind": "ConfigMap", "metadata": {"name": "c"}})).unwrap();
        assert_eq!(
            bare["metadata"]["annotations"][LAST_APPLIED],
            r#"{"kind":"ConfigMap","metadata":{"name":"c"}}"#
        );
    }
}
