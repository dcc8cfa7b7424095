//! Server-side printing: `meta.k8s.io` `Table` responses for get, list and watch, and
//! `PartialObjectMetadata` ones (only each object's metadata).
//!
//! `kubectl get` asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints
//! whatever columns the server describes; without a Table it can only show NAME and AGE.
//! The cells come from [`crate::api::printers`], the same functions `wharf get` uses, so
//! both clients print the same thing. Every column is sent; those kubectl shows only with
//! `-o wide` carry `priority: 1`.
//!
//! Clients that need only metadata (a garbage collector, a metadata informer: kube-runtime's
//! `metadata_watcher`, client-go's metadata client) ask for
//! `application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1` (and
//! `as=PartialObjectMetadataList` for lists): each object becomes its `metadata` alone,
//! which is far less to send and to parse than a pod with its spec and status.
//!
//! The decision (does this request want a Table, which version, which embedded object) is a
//! pure function of the headers and query; turning objects into rows is pure too, with the
//! clock as a parameter.

use super::error::ApiError;
use super::request::Query;
use crate::api::kinds::ResourceKind;
use crate::api::printers;
use http::HeaderMap;
use jiff::Timestamp;
use serde_json::{Value, json};

/// How a response body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The objects themselves.
    Objects,
    /// The objects without `metadata.managedFields`: the lists and watches of the control
    /// plane's own components ([`super::WithoutManagedFields`]), never negotiated.
    ObjectsWithoutManagedFields,
    /// A `Table` of `meta.k8s.io/{version}` embedding each row's object as `include` says.
    Table {
        version: TableVersion,
        include: Include,
    },
    /// Each object as a `meta.k8s.io/v1` `PartialObjectMetadata`, lists as a
    /// `PartialObjectMetadataList`.
    Metadata,
    /// [`Output::Metadata`] without `managedFields`, as [`Output::ObjectsWithoutManagedFields`].
    MetadataWithoutManagedFields,
}

impl Output {
    /// What a request of the control plane's own components gets instead
    /// ([`super::WithoutManagedFields`]): objects and metadata without managedFields.
    pub fn without_managed_fields(self) -> Output {
        match self {
            Output::Objects => Output::ObjectsWithoutManagedFields,
            Output::Metadata => Output::MetadataWithoutManagedFields,
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableVersion {
    V1,
    V1beta1,
}

impl TableVersion {
    fn api_version(self) -> &'static str {
        match self {
            TableVersion::V1 => "meta.k8s.io/v1",
            TableVersion::V1beta1 => "meta.k8s.io/v1beta1",
        }
    }
}

/// `includeObject`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    /// A `PartialObjectMetadata` (the default, as in Kubernetes).
    Metadata,
    Object,
}

impl Output {
    /// Chooses the shape from the Accept header: the first media type we can serve wins,
    /// in the client's order (q-values are not used by Kubernetes clients to rank these).
    pub fn negotiate(headers: &HeaderMap, query: &Query) -> Result<Output, ApiError> {
        let accept = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        for media in accept.split(',') {
            let mut parts = media.split(';').map(str::trim);
            let essence = parts.next().unwrap_or("").to_ascii_lowercase();
            let params: Vec<(String, String)> = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let param = |k: &str| {
                params
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            match (essence.as_str(), param("as")) {
                ("application/json" | "*/*" | "application/*", Some("Table"))
                    if param("g") == Some("meta.k8s.io") =>
                {
                    let version = match param("v") {
                        Some("v1") => TableVersion::V1,
                        Some("v1beta1") => TableVersion::V1beta1,
                        _ => continue,
                    };
                    return Ok(Output::Table {
                        version,
                        include: include_object(query)?,
                    });
                }
                (
                    "application/json" | "*/*" | "application/*",
                    Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                ) if param("g") == Some("meta.k8s.io") && param("v") == Some("v1") => {
                    return Ok(Output::Metadata);
                }
                // Another `as=` we do not serve: try the next media type.
                (_, Some(_)) => continue,
                // Plain JSON, YAML-or-protobuf-first clients, anything else: JSON objects
                // (protobuf is never served; clients fall back to JSON when they see it).
                _ => return Ok(Output::Objects),
            }
        }
        Ok(Output::Objects)
    }
}

fn include_object(query: &Query) -> Result<Include, ApiError> {
    match query.get("includeObject") {
        None | Some("") | Some("Metadata") => Ok(Include::Metadata),
        Some("None") => Ok(Include::None),
        Some("Object") => Ok(Include::Object),
        Some(other) => Err(ApiError::BadRequest(format!(
            "includeObject: unsupported value {other:?}: supported values: \"None\", \"Metadata\", \"Object\""
        ))),
    }
}

/// The column definitions of `kind`: every wide column, narrow ones at priority 0.
pub fn column_definitions(kind: &ResourceKind) -> Vec<Value> {
    let narrow = printers::columns(kind, false);
    printers::columns(kind, true)
        .into_iter()
        .map(|name| {
            let priority = if narrow.contains(&name) { 0 } else { 1 };
            let format = if name == "NAME" { "name" } else { "" };
            json!({
                "name": title_case(name),
                "type": "string",
                "format": format,
                "description": column_description(name),
                "priority": priority,
            })
        })
        .collect()
}

/// `NOMINATED NODE` → `Nominated Node`, `CLUSTER-IP` → `Cluster-IP`, `UP-TO-DATE` →
/// `Up-to-date`: kube-apiserver's
/// spelling (kubectl upper-cases it again when printing).
fn title_case(header: &str) -> String {
    let word = |w: &str| {
        if w == "IP" {
            return w.to_string();
        }
        let mut chars = w.chars();
        match chars.next() {
            Some(first) => first.to_string() + &chars.as_str().to_ascii_lowercase(),
            None => String::new(),
        }
    };
    // Words are capitalised; after a hyphen only `IP` keeps its capitals (`Up-to-date`).
    header
        .split(' ')
        .map(|w| {
            w.split('-')
                .enumerate()
                .map(|(i, part)| match (i, part) {
                    (_, "IP") => part.to_string(),
                    (0, _) => word(part),
                    _ => part.to_ascii_lowercase(),
                })
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn column_description(name: &str) -> &'static str {
    match name {
        "NAME" => {
            "Name must be unique within a namespace. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
        }
        "AGE" => {
            "CreationTimestamp is a timestamp representing the server time when this object was created."
        }
        _ => "",
    }
}

/// `object` as a `PartialObjectMetadata`: its metadata alone.
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A `PartialObjectMetadataList` of `objects` at `resource_version`.
pub fn partial_metadata_list(objects: &[Value], resource_version: u64) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "items": objects.iter().map(partial_metadata).collect::<Vec<_>>(),
    })
}

/// One row: the cells and the embedded object.
fn row(kind: &ResourceKind, object: &Value, include: Include, now: Timestamp) -> Value {
    let cells = printers::row(kind, object, true, now);
    let mut row = json!({ "cells": cells });
    match include {
        Include::None => {}
        Include::Object => row["object"] = object.clone(),
        Include::Metadata => row["object"] = partial_metadata(object),
    }
    row
}

/// A Table of `objects` at `resource_version` (the list's, or the single object's).
pub fn table(
    kind: &ResourceKind,
    version: TableVersion,
    include: Include,
    objects: &[Value],
    resource_version: Option<String>,
    now: Timestamp,
) -> Value {
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": version.api_version(),
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": objects.iter().map(|o| row(kind, o, include, now)).collect::<Vec<_>>(),
    })
}

/// Takes `metadata.managedFields` out of `object`.
pub fn strip_managed_fields(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("managedFields");
    }
}

/// Shapes one object (a get, or a watch event's object) for `output`.
pub fn shape_object(kind: &ResourceKind, output: Output, object: Value) -> Value {
    match output {
        Output::Objects => object,
        Output::ObjectsWithoutManagedFields => {
            let mut object = object;
            strip_managed_fields(&mut object);
            object
        }
        Output::Metadata => partial_metadata(&object),
        Output::MetadataWithoutManagedFields => {
            let mut metadata = partial_metadata(&object);
            strip_managed_fields(&mut metadata);
            metadata
        }
        Output::Table { version, include } => {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            table(kind, version, include, &[object], rv, Timestamp::now())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::kinds::find_kind;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, accept.parse().unwrap());
        h
    }

    fn query(q: &str) -> Query {
        Query::parse(Some(q))
    }

    #[test]
    fn kubectl_get_asks_for_a_v1_table() {
        let out = Output::negotiate(
            &headers("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
            &query(""),
        )
        .unwrap();
        assert_eq!(
            out,
            Output::Table {
                version: TableVersion::V1,
                include: Include::Metadata
            }
        );
    }

    #[test]
    fn plain_json_protobuf_and_missing_accept_get_objects() {
        for accept in [
            "application/json",
            "application/vnd.kubernetes.protobuf, */*",
            "application/vnd.kubernetes.protobuf",
            "*/*",
        ] {
            assert_eq!(
                Output::negotiate(&headers(accept), &query("")).unwrap(),
                Output::Objects,
                "{accept}"
            );
        }
        assert_eq!(
            Output::negotiate(&HeaderMap::new(), &query("")).unwrap(),
            Output::Objects
        );
    }

    #[test]
    fn metadata_clients_get_partial_object_metadata() {
        // kube-runtime's metadata_watcher and client-go's metadata client send these.
        for accept in [
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        ] {
            let out = Output::negotiate(&headers(accept), &query("")).unwrap();
            assert_eq!(out, Output::Metadata, "{accept}");
        }
        let pod = json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "p", "resourceVersion": "7", "ownerReferences": [{"name": "o"}]},
            "spec": {"containers": []}, "status": {"phase": "Running"}});
        let kind = find_kind("v1", "Pod").unwrap();
        let shaped = shape_object(kind, Output::Metadata, pod.clone());
        assert_eq!(
            shaped,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": pod["metadata"]})
        );
        let list = partial_metadata_list(&[pod], 9);
        assert_eq!(list["kind"], "PartialObjectMetadataList");
        assert_eq!(list["metadata"]["resourceVersion"], "9");
        assert_eq!(list["items"][0], shaped);
    }

    #[test]
    fn unknown_as_falls_through_to_the_next_media_type() {
        let out = Output::negotiate(
            &headers("application/json;as=PartialObjectMetadata;v=v1beta1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            &query("includeObject=Object"),
        )
        .unwrap();
        assert_eq!(
            out,
            Output::Table {
                version: TableVersion::V1beta1,
                include: Include::Object
            }
        );
    }

    #[test]
    fn a_bad_include_object_is_a_400() {
        let err = Output::negotiate(
            &headers("application/json;as=Table;v=v1;g=meta.k8s.io"),
            &query("includeObject=Everything"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("includeObject"), "{err}");
    }

    #[test]
    fn pod_table_has_wide_columns_at_priority_one() {
        let kind = find_kind("v1", "Pod").unwrap();
        let cols = column_definitions(kind);
        let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        let priorities: Vec<i64> = cols
            .iter()
            .map(|c| c["priority"].as_i64().unwrap())
            .collect();
        assert_eq!(priorities, [0, 0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(cols[0]["format"], "name");
    }

    #[test]
    fn rows_carry_every_cell_and_the_chosen_object() {
        let kind = find_kind("v1", "Pod").unwrap();
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "127.64.0.2",
                       "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                                              "state": {"running": {}}}]},
        });
        let now: Timestamp = "2026-01-01T00:01:05Z".parse().unwrap();
        let t = table(
            kind,
            TableVersion::V1,
            Include::Metadata,
            std::slice::from_ref(&pod),
            Some("9".into()),
            now,
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[4], "65s");
        assert_eq!(cells[5], "127.64.0.2");
        assert_eq!(cells[6], "node-1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web");
        let t = table(kind, TableVersion::V1, Include::None, &[pod], None, now);
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn every_kind_has_one_cell_per_column() {
        let now = Timestamp::now();
        for kind in crate::api::kinds::KINDS {
            let obj =
                json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
            let t = table(kind, TableVersion::V1, Include::None, &[obj], None, now);
            let cols = t["columnDefinitions"].as_array().unwrap().len();
            let cells = t["rows"][0]["cells"].as_array().unwrap().len();
            assert_eq!(cols, cells, "{}", kind.kind);
        }
    }
}
