//! Moving objects between their stored form and their API form.
//!
//! The store keeps an object's JSON without `metadata.resourceVersion`; the version is
//! the revision of the write, stamped in on the way out. Keeping it out of the stored
//! bytes means a write never has to know its revision before it is assigned.

use super::error::ApiError;
use crate::store::StoredObject;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

/// The API form of a stored object.
pub fn decode(stored: &StoredObject) -> Result<Value, ApiError> {
    decode_at(stored, stored.mod_revision)
}

/// The API form with `resourceVersion` set to `revision` (a delete event carries the
/// revision of the delete).
pub fn decode_at(stored: &StoredObject, revision: u64) -> Result<Value, ApiError> {
    let mut v: Value = decode_as(stored)?;
    set_resource_version(&mut v, revision);
    Ok(v)
}

/// The stored JSON read as `T`: a type that names only the fields a caller reads skips
/// the rest of the object instead of building it (no resourceVersion stamped in).
pub fn decode_as<T: serde::de::DeserializeOwned>(stored: &StoredObject) -> Result<T, ApiError> {
    serde_json::from_slice(&stored.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", stored.key)))
}

pub fn set_resource_version(v: &mut Value, revision: u64) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The largest object the API server stores, in bytes of its stored JSON: etcd's default
/// request limit (`--max-request-bytes`, 1.5 MiB), so that an object that fits one
/// backend fits the other, and so that what a client (or a node writing status) can make
/// the control plane hold, and replay to every watcher, is bounded per object.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// The stored form: the object without its resourceVersion. Every write of the API
/// server goes through here, so this is where [`MAX_OBJECT_BYTES`] is enforced (413).
pub fn encode(v: &Value) -> Result<Bytes, ApiError> {
    let bytes = serde_json::to_vec(&stored_form(v))
        .map_err(|e| ApiError::Internal(format!("encoding an object: {e}")))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::EntityTooLarge(format!(
            "the object is too large to store: {} bytes, the limit is {MAX_OBJECT_BYTES} bytes",
            bytes.len()
        )));
    }
    Ok(Bytes::from(bytes))
}

/// `v` as it is stored: serialized without `metadata.resourceVersion`, in place (every
/// write goes through [`encode`], and a copy of the whole object only to drop one field
/// showed in the write path's profile).
fn stored_form(v: &Value) -> WithoutMetadataField<'_> {
    WithoutMetadataField {
        object: v,
        field: "resourceVersion",
    }
}

/// `object` serialized without `metadata.managedFields`, without copying it first: the
/// watch lines of the control plane's own informers ([`super::WithoutManagedFields`]).
pub fn without_managed_fields(object: &Value) -> WithoutMetadataField<'_> {
    WithoutMetadataField {
        object,
        field: "managedFields",
    }
}

/// An object serialized without one field of its `metadata`.
pub struct WithoutMetadataField<'a> {
    object: &'a Value,
    field: &'static str,
}

impl Serialize for WithoutMetadataField<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(map) = self.object.as_object() else {
            return self.object.serialize(serializer);
        };
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for (key, value) in map {
            match value.as_object() {
                Some(meta) if key == "metadata" => out.serialize_entry(
                    key,
                    &MetadataWithout {
                        meta,
                        field: self.field,
                    },
                )?,
                _ => out.serialize_entry(key, value)?,
            }
        }
        out.end()
    }
}

/// An object's `metadata` without one of its fields.
struct MetadataWithout<'a> {
    meta: &'a Map<String, Value>,
    field: &'static str,
}

impl Serialize for MetadataWithout<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.meta.iter().filter(|(k, _)| *k != self.field))
    }
}

/// `metadata.FIELD` as a string.
pub fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// The resourceVersion a client sent, if any; a malformed one is a 400.
pub fn sent_resource_version(v: &Value) -> Result<Option<u64>, ApiError> {
    match meta_str(v, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!(
                "metadata.resourceVersion: invalid value {s:?}: must be a number"
            ))
        }),
    }
}

/// Now, as Kubernetes formats timestamps (RFC 3339, seconds, `Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A JSON response.
pub fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_drops_only_the_resource_version_and_keeps_field_order() {
        let obj = json!({
            "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "namespace": "ns", "uid": "u"},
            "data": {"z": "1", "a": "2"},
        });
        let bytes = encode(&obj).expect("encodes");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            r#"{"kind":"ConfigMap","metadata":{"name":"a","namespace":"ns","uid":"u"},"data":{"z":"1","a":"2"}}"#
        );
        // Not an object, or metadata not an object: stored as they are.
        assert_eq!(&encode(&json!([1, 2])).expect("encodes")[..], b"[1,2]");
        assert_eq!(
            &encode(&json!({"metadata": "x"})).expect("encodes")[..],
            br#"{"metadata":"x"}"#
        );
    }

    #[test]
    fn encode_refuses_objects_over_the_limit() {
        let obj = json!({"metadata": {"name": "big"}, "data": {"x": "v".repeat(MAX_OBJECT_BYTES)}});
        assert!(matches!(encode(&obj), Err(ApiError::EntityTooLarge(_))));
    }
}
