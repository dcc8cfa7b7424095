//! JSON patch (RFC 6902) with bounds, so that a small request cannot make a huge object.
//!
//! Why: a `copy` operation duplicates a part of the document, and the next `copy` can
//! duplicate the result, so 2 KB of chained copies double the document each time and
//! reach gigabytes within forty operations, long before anything is stored or checked.
//! As kube-apiserver does, the patch is refused when it has more than
//! [`MAX_OPERATIONS`] operations, or when the values its `copy` operations duplicate add up
//! to more than [`MAX_COPIED_BYTES`] (measured as compact JSON before each copy is made),
//! so the patched document can never outgrow the current one by more than the request
//! body plus that bound. The operations are applied one at a time to the caller's copy of
//! the document; any failure leaves the stored object untouched.

use json_patch::PatchOperation;
use serde_json::Value;

/// Most operations one JSON patch may have (kube-apiserver's limit).
pub const MAX_OPERATIONS: usize = 10_000;

/// Most bytes the `copy` operations of one patch may duplicate, in total (twice the
/// largest request body, as kube-apiserver bounds it).
pub const MAX_COPIED_BYTES: usize = 2 * 3 * 1024 * 1024;

/// Why a JSON patch was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonPatchError {
    #[error("the JSON patch is malformed: {0}")]
    Malformed(String),
    #[error("the allowed maximum operations in a JSON patch is {MAX_OPERATIONS}, got: {0}")]
    TooManyOperations(usize),
    #[error(
        "the JSON patch's copy operations would duplicate more than {MAX_COPIED_BYTES} bytes \
         (operation {index} reaches {total})"
    )]
    CopiesTooLarge { index: usize, total: usize },
    #[error("the JSON patch could not be applied: operation {index}: {message}")]
    Failed { index: usize, message: String },
}

/// Applies the JSON patch `patch` (the request body, an array of operations) to `doc`.
/// On error `doc` may hold the operations before the failing one: callers pass a copy.
pub fn apply(doc: &mut Value, patch: &Value) -> Result<(), JsonPatchError> {
    let count = patch.as_array().map(Vec::len).unwrap_or_default();
    if count > MAX_OPERATIONS {
        return Err(JsonPatchError::TooManyOperations(count));
    }
    let ops: Vec<PatchOperation> = serde_json::from_value(patch.clone())
        .map_err(|e| JsonPatchError::Malformed(e.to_string()))?;
    let mut copied = 0usize;
    for (index, op) in ops.iter().enumerate() {
        if let PatchOperation::Copy(copy) = op {
            // A missing source is reported by the copy itself, below.
            if let Some(source) = doc.pointer(copy.from.as_str()) {
                copied = copied.saturating_add(json_size(source));
                if copied > MAX_COPIED_BYTES {
                    return Err(JsonPatchError::CopiesTooLarge {
                        index,
                        total: copied,
                    });
                }
            }
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| {
            JsonPatchError::Failed {
                index,
                message: e.kind.to_string(),
            }
        })?;
    }
    Ok(())
}

/// The length of `v` as compact JSON, without allocating it.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applies_operations_in_order() {
        let mut doc = json!({"a": {"b": 1}});
        let patch = json!([
            {"op": "add", "path": "/a/c", "value": 2},
            {"op": "copy", "from": "/a", "path": "/d"},
            {"op": "remove", "path": "/a/b"},
            {"op": "test", "path": "/d/b", "value": 1},
        ]);
        apply(&mut doc, &patch).expect("applies");
        assert_eq!(doc, json!({"a": {"c": 2}, "d": {"b": 1, "c": 2}}));
    }

    #[test]
    fn chained_copies_are_refused_before_they_grow() {
        // 40 doublings of a 1 KB string would be a terabyte; the bound stops it at a few
        // megabytes, early in the chain.
        let mut doc = json!({"data": {"x": "y".repeat(1024)}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}))
            .collect();
        let err = apply(&mut doc, &Value::Array(ops)).expect_err("refused");
        let JsonPatchError::CopiesTooLarge { index, total } = err else {
            panic!("unexpected {err:?}");
        };
        assert!(index < 20, "stopped at operation {index}");
        assert!(total > MAX_COPIED_BYTES);
        assert!(json_size(&doc) <= MAX_COPIED_BYTES + 2048);
    }

    #[test]
    fn too_many_operations_are_refused_unparsed() {
        let ops = vec![json!({"op": "test", "path": "", "value": {}}); MAX_OPERATIONS + 1];
        let err = apply(&mut json!({}), &Value::Array(ops)).expect_err("refused");
        assert_eq!(err, JsonPatchError::TooManyOperations(MAX_OPERATIONS + 1));
    }

    #[test]
    fn failures_name_the_operation() {
        let patch = json!([
            {"op": "add", "path": "/a", "value": 1},
            {"op": "remove", "path": "/missing"},
        ]);
        let err = apply(&mut json!({}), &patch).expect_err("fails");
        assert!(
            matches!(&err, JsonPatchError::Failed { index: 1, .. }),
            "{err:?}"
        );
        let malformed = apply(&mut json!({}), &json!([{"op": "frobnicate", "path": "/a"}]));
        assert!(matches!(malformed, Err(JsonPatchError::Malformed(_))));
    }

    #[test]
    fn sizes_are_compact_json() {
        let v = json!({"a": [1, "x", null, true]});
        assert_eq!(json_size(&v), serde_json::to_vec(&v).expect("json").len());
    }
}
