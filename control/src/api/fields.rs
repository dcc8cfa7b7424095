//! Field validation: fields an object's kind does not declare, and fields given twice.
//!
//! Kubernetes decodes every written object into its typed form, so a field the schema
//! does not know never reaches storage; what the client hears about it depends on the
//! request's `fieldValidation` ([`Directive`]): `Strict` refuses the write, `Warn` (the
//! default) stores the object without the field and answers with a warning per field,
//! `Ignore` drops it silently. wharf stores JSON, so it does the same explicitly: the
//! object is decoded into its `k8s-openapi` type (which skips what it does not know) and
//! encoded again, and every non-null field of the input that the round trip lost is
//! unknown. Comparing only *which keys survive*, never their values, keeps the check
//! independent of how the typed form re-encodes values (quantities, int-or-string,
//! timestamps, base64 data). Null values are dropped without a word: a null is the same
//! as an absent field, and the round trip cannot tell a null known field from a null
//! unknown one.
//!
//! Duplicate keys are lost once a body is parsed into a JSON value (the last one wins, as
//! in Kubernetes), so [`duplicate_fields`] looks for them in the raw bytes.
//!
//! An object that does not decode at all (a wrong type somewhere) is left as it is:
//! validation reports the type error with its field path.

use super::kinds::ResourceKind;
use super::validation::{FieldError, Reason};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// What to do with unknown and duplicate fields, from the `fieldValidation` query
/// parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Directive {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn the client, once per field (the default).
    #[default]
    Warn,
    /// Refuse the write.
    Strict,
}

impl Directive {
    /// Parses the query parameter; absent or empty is `Warn`. Values are case-sensitive,
    /// as in Kubernetes.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(Directive::Warn),
            Some("Ignore") => Ok(Directive::Ignore),
            Some("Strict") => Ok(Directive::Strict),
            Some(other) => Err(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )),
        }
    }
}

/// One field problem, displayed as Kubernetes words it: `unknown field "spec.foo"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Unknown(String),
    Duplicate(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unknown(path) => write!(f, "unknown field {path:?}"),
            Problem::Duplicate(path) => write!(f, "duplicate field {path:?}"),
        }
    }
}

/// Applies `directive` to `obj` (the whole object about to be written) given the
/// duplicate fields found in the request body. Removes unknown fields (and nulls the
/// kind's type does not keep) from `obj`, then answers the warnings to send (none for
/// `Ignore`), or, for `Strict` with any problem, the message of the refusal.
pub fn check(
    kind: &ResourceKind,
    obj: &mut Value,
    duplicates: &[String],
    directive: Directive,
) -> Result<Vec<String>, Refused> {
    let mut problems: Vec<Problem> = prune_unknown(kind, obj)
        .into_iter()
        .map(Problem::Unknown)
        .collect();
    problems.extend(duplicates.iter().cloned().map(Problem::Duplicate));
    match directive {
        Directive::Ignore => Ok(Vec::new()),
        Directive::Warn => Ok(problems.iter().map(Problem::to_string).collect()),
        Directive::Strict if problems.is_empty() => Ok(Vec::new()),
        Directive::Strict => Err(Refused {
            message: format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {list}",
                kind = kind.kind,
                version = kind.version,
                list = problems
                    .iter()
                    .map(Problem::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            causes: problems.iter().map(Problem::cause).collect(),
        }),
    }
}

/// A `Strict` refusal: kube-apiserver's strict decoding message, and one field error per
/// problem (the API server answers them as a 422 with `details.causes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub message: String,
    pub causes: Vec<FieldError>,
}

impl Problem {
    fn cause(&self) -> FieldError {
        match self {
            Problem::Unknown(path) => FieldError::new(
                path.clone(),
                Reason::Invalid,
                None,
                "unknown field: the kind does not declare it",
            ),
            Problem::Duplicate(path) => {
                FieldError::new(path.clone(), Reason::Duplicate, None, "duplicate field")
            }
        }
    }
}

/// Removes from `obj` every field its kind does not declare and answers their paths
/// (`spec.template.spec.containers[0].imagee`). Nulls the typed form drops are removed
/// too, without being reported. An object that does not decode is left untouched.
pub fn prune_unknown(kind: &ResourceKind, obj: &mut Value) -> Vec<String> {
    let mut unknown = kind.strategy.prune_unknown(obj);
    let Some(typed) = (kind.typed.round_trip)(obj) else {
        return unknown;
    };
    prune(obj, &typed, "", &mut unknown);
    unknown
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Walks `input` beside its round-tripped form `typed`, removing what `typed` lost.
fn prune(input: &mut Value, typed: &Value, path: &str, unknown: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(map), Value::Object(kept)) => map.retain(|key, value| {
            let field = child(path, key);
            match kept.get(key) {
                Some(t) => {
                    prune(value, t, &field, unknown);
                    true
                }
                None => {
                    if !value.is_null() {
                        unknown.push(field);
                    }
                    false
                }
            }
        }),
        (Value::Array(items), Value::Array(kept)) if items.len() == kept.len() => {
            for (i, (item, t)) in items.iter_mut().zip(kept).enumerate() {
                prune(item, t, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// The paths of keys that appear more than once in the same JSON object of `body`
/// (`metadata.name`, `spec.containers[0].image`). Not JSON at all: none (the parser
/// reports that).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    // An error (malformed JSON, nesting too deep) ends the scan with what was found.
    let _ = Duplicates {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// A visitor that parses nothing but remembers every key per object.
struct Duplicates<'a> {
    path: String,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Duplicates<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Duplicates<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let element = Duplicates {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
            };
            if seq.next_element_seed(element)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let field = child(&self.path, &key);
            if !seen.insert(key) && !self.found.contains(&field) {
                self.found.push(field.clone());
            }
            map.next_value_seed(Duplicates {
                path: field,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {}, "annotations": {"a.b/c": "d"},
                         "creationTimestamp": null, "finalizers": []},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "a.wasm",
                        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                        "ports": [{"containerPort": 8080}], "env": []}]}}},
            "status": {"replicas": 1, "conditions": []}})
    }

    #[test]
    fn a_known_object_survives_untouched() {
        let kind = resolve("deploy").expect("deploy");
        let mut obj = deployment();
        let unknown = prune_unknown(kind, &mut obj);
        assert!(unknown.is_empty(), "{unknown:?}");
        let mut expected = deployment();
        expected["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("creationTimestamp");
        assert_eq!(obj, expected, "only the null is gone");
    }

    #[test]
    fn unknown_fields_are_found_anywhere_and_removed() {
        let kind = resolve("deploy").expect("deploy");
        let mut obj = deployment();
        obj["spec"]["foo"] = json!({"deep": 1});
        obj["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
        obj["metadata"]["colour"] = json!("blue");
        obj["spec"]["ghost"] = json!(null);
        obj["status"]["extra"] = json!([1]);
        obj["top"] = json!(false);
        let mut unknown = prune_unknown(kind, &mut obj);
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "metadata.colour",
                "spec.foo",
                "spec.template.spec.containers[0].imagee",
                "status.extra",
                "top",
            ]
        );
        assert_eq!(obj, {
            let mut d = deployment();
            d["metadata"]
                .as_object_mut()
                .expect("m")
                .remove("creationTimestamp");
            d
        });
    }

    #[test]
    fn maps_and_free_form_fields_keep_every_key() {
        let cm = resolve("cm").expect("cm");
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"any.thing/x": "1"}},
            "data": {"whatever": "v", "other": ""}, "binaryData": {"b": "AAE="}});
        let before = obj.clone();
        assert!(prune_unknown(cm, &mut obj).is_empty());
        assert_eq!(obj, before);
        // managedFields.fieldsV1 is free-form JSON.
        let pod = resolve("pod").expect("pod");
        let mut obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "managedFields": [{"manager": "m",
                "fieldsV1": {"f:spec": {"f:anything": {}}}}]},
            "spec": {"containers": [{"name": "a", "image": "a.wasm",
                "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}],
                "overhead": {"cpu": "1"}}});
        let before = obj.clone();
        assert!(prune_unknown(pod, &mut obj).is_empty());
        assert_eq!(obj, before);
    }

    #[test]
    fn an_object_that_does_not_decode_is_left_to_validation() {
        let kind = resolve("deploy").expect("deploy");
        let mut obj = deployment();
        obj["spec"]["replicas"] = json!("three");
        obj["spec"]["foo"] = json!(1);
        let before = obj.clone();
        assert!(prune_unknown(kind, &mut obj).is_empty());
        assert_eq!(obj, before);
    }

    #[test]
    fn directives_decide_between_refusing_warning_and_dropping() {
        let kind = resolve("deploy").expect("deploy");
        let mut with_unknown = deployment();
        with_unknown["spec"]["foo"] = json!(1);
        let dups = vec!["spec.replicas".to_string()];

        let mut obj = with_unknown.clone();
        let err = check(kind, &mut obj, &dups, Directive::Strict).expect_err("strict");
        let fields: Vec<&str> = err.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.foo", "spec.replicas"]);
        assert_eq!(
            err.message,
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: \
             unknown field \"spec.foo\", duplicate field \"spec.replicas\""
        );

        let mut obj = with_unknown.clone();
        let warnings = check(kind, &mut obj, &dups, Directive::Warn).expect("warn");
        assert_eq!(
            warnings,
            [
                "unknown field \"spec.foo\"",
                "duplicate field \"spec.replicas\""
            ]
        );
        assert!(obj["spec"].get("foo").is_none());

        let mut obj = with_unknown.clone();
        assert_eq!(
            check(kind, &mut obj, &dups, Directive::Ignore),
            Ok(Vec::new())
        );
        assert!(obj["spec"].get("foo").is_none());

        let mut clean = deployment();
        assert_eq!(
            check(kind, &mut clean, &[], Directive::Strict),
            Ok(Vec::new())
        );
    }

    #[test]
    fn directives_parse_as_kubernetes_spells_them() {
        assert_eq!(Directive::parse(None), Ok(Directive::Warn));
        assert_eq!(Directive::parse(Some("")), Ok(Directive::Warn));
        assert_eq!(Directive::parse(Some("Strict")), Ok(Directive::Strict));
        assert_eq!(Directive::parse(Some("Ignore")), Ok(Directive::Ignore));
        let err = Directive::parse(Some("strict")).expect_err("case matters");
        assert!(err.contains("\"strict\"") && err.contains("fieldValidation"));
    }

    #[test]
    fn duplicates_are_found_in_the_raw_body() {
        let body = br#"{"metadata": {"name": "a", "name": "b", "labels": {"x": "1", "x": "2"}},
            "spec": {"containers": [{"name": "c"}, {"name": "d", "image": "i", "image": "j", "image": "k"}]},
            "spec2": [[{"k": 1, "k": 2}]], "s": "{\"q\": 1, \"q\": 2}"}"#;
        assert_eq!(
            duplicate_fields(body),
            [
                "metadata.name",
                "metadata.labels.x",
                "spec.containers[1].image",
                "spec2[0][0].k"
            ]
        );
        assert!(duplicate_fields(br#"{"a": 1, "b": {"a": 2}}"#).is_empty());
        assert!(duplicate_fields(b"not json").is_empty());
        assert!(duplicate_fields(br#"{"a": 1, "a": "#).contains(&"a".to_string()));
    }
}
