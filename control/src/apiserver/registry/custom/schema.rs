//! The structural schema of a custom resource version (`openAPIV3Schema`), enforced as
//! Kubernetes enforces it, in the order it applies the steps on a write:
//!
//! 1. [`prune`]: fields the schema does not declare are dropped (unless a level says
//!    `x-kubernetes-preserve-unknown-fields` or has `additionalProperties`), so what is
//!    stored is what the schema describes;
//! 2. [`default`]: every absent property with a `default` gets it (and the defaults
//!    inside what was defaulted), on writes and again on reads, so an object stored
//!    before a default was added reads with it;
//! 3. [`validate`]: every violation, each with its field path and in Kubernetes' words,
//!    so the client's 422 lists them all at once.
//!
//! The schema is the CRD's JSON as stored (`JSONSchemaProps`): nothing is compiled, the
//! functions walk it beside the object. All pure.

use crate::api::validation::{FieldError, Reason};
use serde_json::{Map, Value};

/// What every object carries at its root (and an embedded resource at its own) that the
/// schema does not govern: the generic layer checks them.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn properties(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

/// A level whose own `apiVersion`, `kind` and `metadata` are kept as at the root.
fn is_resource(s: &Value, root: bool) -> bool {
    root || flag(s, "x-kubernetes-embedded-resource")
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---- Pruning ----------------------------------------------------------------------------

/// Drops from `obj` every field `schema` does not declare, as Kubernetes prunes, and
/// answers the paths of those that held a value (`spec.bogus`), for field validation.
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune_at(schema, obj, "", true, &mut pruned);
    pruned
}

fn prune_at(s: &Value, v: &mut Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let props = properties(s);
            let additional = s.get("additionalProperties");
            let keep_unknown = flag(s, "x-kubernetes-preserve-unknown-fields")
                || additional.is_some_and(|a| a == &Value::Bool(true));
            let resource = is_resource(s, root);
            map.retain(|key, value| {
                let field = child(path, key);
                // Even where the schema declares them (`metadata: {type: object}`, as
                // generated schemas do): the generic layer owns them.
                if resource && ROOT_FIELDS.contains(&key.as_str()) {
                    return true;
                }
                if let Some(ps) = props.and_then(|p| p.get(key)) {
                    prune_at(ps, value, &field, false, pruned);
                    return true;
                }
                match additional {
                    Some(a) if a.is_object() => {
                        prune_at(a, value, &field, false, pruned);
                        true
                    }
                    _ if keep_unknown => true,
                    _ => {
                        if !value.is_null() {
                            pruned.push(field);
                        }
                        false
                    }
                }
            });
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item_schema, item, &format!("{path}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

// ---- Defaulting -------------------------------------------------------------------------

/// Sets every absent property that has a `default`, and the defaults within it. A
/// `null` where the schema does not allow one is defaulted too, as Kubernetes does.
pub fn default(schema: &Value, obj: &mut Value) {
    match obj {
        Value::Object(map) => {
            if let Some(props) = properties(schema) {
                for (key, ps) in props {
                    let absent = match map.get(key) {
                        None => true,
                        Some(Value::Null) => !flag(ps, "nullable"),
                        Some(_) => false,
                    };
                    if absent && let Some(d) = ps.get("default") {
                        map.insert(key.clone(), d.clone());
                    }
                    if let Some(value) = map.get_mut(key) {
                        default(ps, value);
                    }
                }
            }
            if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let props = properties(schema);
                for (key, value) in map.iter_mut() {
                    if props.is_none_or(|p| !p.contains_key(key)) {
                        default(a, value);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|i| i.is_object()) {
                for item in items {
                    default(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

// ---- Validation -------------------------------------------------------------------------

/// Every violation of `schema` in `obj`, each with its field path
/// (`spec.replicas: Invalid value: "string": spec.replicas in body must be of type
/// integer: "string"`). The root's `apiVersion`, `kind` and `metadata` are the generic
/// layer's.
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_at(schema, obj, "", true, &mut errs);
    errs
}

/// The JSON type of a value, as the messages name it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    }
}

/// How a value shows in a message: strings quoted, the rest as JSON.
fn shown(v: &Value) -> String {
    v.to_string()
}

/// A number as the schema wrote it (`1`, not `1.0`).
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

fn validate_at(s: &Value, v: &Value, path: &str, root: bool, errs: &mut Vec<FieldError>) {
    let shown_path = if path.is_empty() { "<root>" } else { path };
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    let ty = s.get("type").and_then(Value::as_str);
    if v.is_null() && (flag(s, "nullable") || (ty.is_none() && !int_or_string)) {
        return;
    }
    let wanted = if int_or_string {
        (!(v.is_string() || v.is_i64() || v.is_u64())).then_some("integer,string")
    } else {
        ty.filter(|t| !has_type(v, t))
    };
    if let Some(t) = wanted {
        let actual = type_name(v);
        errs.push(FieldError::new(
            shown_path,
            Reason::TypeInvalid,
            Some(format!("{actual:?}")),
            format!("{shown_path} in body must be of type {t}: {actual:?}"),
        ));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list = allowed.iter().map(shown).collect::<Vec<_>>().join(", ");
        errs.push(FieldError::new(
            shown_path,
            Reason::NotSupported,
            Some(shown(v)),
            format!("supported values: {list}"),
        ));
    }
    match v {
        Value::String(text) => validate_string(s, text, v, path, shown_path, errs),
        Value::Number(_) => validate_number(s, v, shown_path, errs),
        Value::Array(items) => {
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errs.push(FieldError::new(
                    shown_path,
                    Reason::TooMany,
                    Some(items.len().to_string()),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(FieldError::new(
                    shown_path,
                    Reason::Invalid,
                    Some(shown(v)),
                    format!("{shown_path} in body should have at least {min} items"),
                ));
            }
            if let Some(item_schema) = s.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    validate_at(item_schema, item, &format!("{path}[{i}]"), false, errs);
                }
            }
        }
        Value::Object(map) => {
            let resource = is_resource(s, root);
            let skipped = |key: &str| resource && ROOT_FIELDS.contains(&key);
            if let Some(required) = s.get("required").and_then(Value::as_array) {
                for key in required.iter().filter_map(Value::as_str) {
                    if !skipped(key) && !map.contains_key(key) {
                        errs.push(FieldError::required(child(path, key), ""));
                    }
                }
            }
            let props = properties(s);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (key, value) in map {
                if skipped(key) {
                    continue;
                }
                let ps = props.and_then(|p| p.get(key)).or(additional);
                if let Some(ps) = ps {
                    validate_at(ps, value, &child(path, key), false, errs);
                }
            }
        }
        _ => {}
    }
}

fn validate_string(
    s: &Value,
    text: &str,
    v: &Value,
    path: &str,
    shown_path: &str,
    errs: &mut Vec<FieldError>,
) {
    let _ = path;
    let len = text.chars().count() as u64;
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        errs.push(FieldError::new(
            shown_path,
            Reason::TooLong,
            None,
            format!("may not be more than {max} bytes"),
        ));
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        errs.push(FieldError::new(
            shown_path,
            Reason::Invalid,
            Some(shown(v)),
            format!("{shown_path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        // A pattern that does not compile was refused when the CRD was written.
        if regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text)) {
            errs.push(FieldError::new(
                shown_path,
                Reason::Invalid,
                Some(shown(v)),
                format!("{shown_path} in body should match '{pattern}'"),
            ));
        }
    }
}

fn validate_number(s: &Value, v: &Value, shown_path: &str, errs: &mut Vec<FieldError>) {
    let Some(x) = v.as_f64() else { return };
    let mut bound = |limit: &str, exclusive: &str, below: bool| {
        let Some(l) = s.get(limit).filter(|l| l.is_number()) else {
            return;
        };
        let lf = l.as_f64().unwrap_or_default();
        let strict = flag(s, exclusive);
        let broken = match (below, strict) {
            (true, false) => x < lf,
            (true, true) => x <= lf,
            (false, false) => x > lf,
            (false, true) => x >= lf,
        };
        if broken {
            let relation = match (below, strict) {
                (true, false) => "greater than or equal to",
                (true, true) => "greater than",
                (false, false) => "less than or equal to",
                (false, true) => "less than",
            };
            errs.push(FieldError::new(
                shown_path,
                Reason::Invalid,
                Some(number(v)),
                format!("{shown_path} in body should be {relation} {}", number(l)),
            ));
        }
    };
    bound("minimum", "exclusiveMinimum", true);
    bound("maximum", "exclusiveMaximum", false);
}

/// Checks that `schema` is one the functions above can enforce: an object at the root,
/// and every `pattern` a regular expression. Violations under `path`.
pub fn check_schema(schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        errs.push(FieldError::new(
            format!("{path}.type"),
            Reason::Invalid,
            Some(shown(schema.get("type").unwrap_or(&Value::Null))),
            "must be object at the root",
        ));
    }
    check_patterns(schema, path, errs);
}

fn check_patterns(s: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(p) = s.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(p)
    {
        errs.push(FieldError::new(
            format!("{path}.pattern"),
            Reason::Invalid,
            Some(format!("{p:?}")),
            format!("must be a valid regular expression: {e}"),
        ));
    }
    if let Some(props) = properties(s) {
        for (k, ps) in props {
            check_patterns(ps, &format!("{path}.properties[{k}]"), errs);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = s.get(key).filter(|x| x.is_object()) {
            check_patterns(sub, &format!("{path}.{key}"), errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "replicas": {"type": "integer", "default": 1, "minimum": 0, "maximum": 10},
                        "size": {"type": "string", "minLength": 1, "maxLength": 5},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "name": {"type": "string", "pattern": "^[a-z]+$"},
                        "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": true,
                                  "maximum": 1, "exclusiveMaximum": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "minItems": 1,
                                 "items": {"type": "string", "maxLength": 3}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "note": {"type": "string", "nullable": true},
                        "nested": {"type": "object", "default": {},
                                   "properties": {"depth": {"type": "integer", "default": 3}}},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        })
    }

    fn messages(obj: Value) -> Vec<String> {
        validate(&schema(), &obj)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_valid_object_has_no_violation() {
        let obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "spec": {"size": "s", "replicas": 3, "color": "red", "name": "abc", "ratio": 0.5,
                     "port": "http", "tags": ["a"], "labels": {"k": "v"},
                     "free": {"anything": [1]}, "note": null}});
        assert_eq!(messages(obj), Vec::<String>::new());
        let port = json!({"spec": {"size": "s", "port": 8080}});
        assert_eq!(messages(port), Vec::<String>::new());
    }

    #[test]
    fn every_violation_is_listed_in_kubernetes_words() {
        let obj = json!({"spec": {"replicas": "string", "color": "pink", "name": "ABC",
            "ratio": 1, "port": true, "tags": ["abcd", "b", "c"], "labels": {"k": 5}}});
        assert_eq!(
            messages(obj),
            [
                "spec.size: Required value",
                "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
                "spec.color: Unsupported value: \"pink\": supported values: \"red\", \"blue\"",
                "spec.name: Invalid value: \"ABC\": spec.name in body should match '^[a-z]+$'",
                "spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1",
                "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
                "spec.tags: Too many: 3: must have at most 2 items",
                "spec.tags[0]: Too long: may not be more than 3 bytes",
                "spec.labels.k: Invalid value: \"integer\": spec.labels.k in body must be of type string: \"integer\"",
            ]
        );
        let bounds = json!({"spec": {"size": "", "replicas": 11, "ratio": 0, "tags": []}});
        assert_eq!(
            messages(bounds),
            [
                "spec.size: Invalid value: \"\": spec.size in body should be at least 1 chars long",
                "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
                "spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0",
                "spec.tags: Invalid value: []: spec.tags in body should have at least 1 items",
            ]
        );
        let low = json!({"spec": {"size": "s", "replicas": -1, "note": 5}});
        assert_eq!(
            messages(low),
            [
                "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
                "spec.note: Invalid value: \"integer\": spec.note in body must be of type string: \"integer\"",
            ]
        );
        let null = json!({"spec": {"size": null}});
        assert_eq!(
            messages(null),
            [
                "spec.size: Invalid value: \"null\": spec.size in body must be of type string: \"null\""
            ]
        );
    }

    #[test]
    fn unknown_fields_are_pruned_except_where_preserved() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "extra": 1,
            "spec": {"size": "s", "bogus": true, "labels": {"any": "v"},
                     "free": {"kept": {"deep": 1}}, "nested": {"depth": 1, "gone": 2}},
            "status": {"ready": true, "phase": "x"}});
        let mut declared = schema();
        declared["properties"]["metadata"] = json!({"type": "object"});
        let pruned = prune(&declared, &mut obj);
        assert_eq!(
            pruned,
            ["extra", "spec.bogus", "spec.nested.gone", "status.phase"]
        );
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
                "spec": {"size": "s", "labels": {"any": "v"},
                         "free": {"kept": {"deep": 1}}, "nested": {"depth": 1}},
                "status": {"ready": true}})
        );
    }

    #[test]
    fn defaults_fill_absent_fields_and_what_they_contain() {
        let mut obj = json!({"spec": {"size": "s"}});
        default(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({"spec": {"size": "s", "replicas": 1, "nested": {"depth": 3}}})
        );
        let mut set = json!({"spec": {"size": "s", "replicas": 5, "nested": {"depth": 0}}});
        let before = set.clone();
        default(&schema(), &mut set);
        assert_eq!(set, before, "set values are kept");
        let mut none = json!({});
        default(&schema(), &mut none);
        assert_eq!(none, json!({}), "no spec: nothing below it is defaulted");
    }

    #[test]
    fn schemas_that_cannot_be_enforced_are_refused() {
        let mut errs = Vec::new();
        check_schema(
            &json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}),
            "spec.versions[0].schema.openAPIV3Schema",
            &mut errs,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].field,
            "spec.versions[0].schema.openAPIV3Schema.properties[a].pattern"
        );
        let mut errs = Vec::new();
        check_schema(&json!({"type": "string"}), "s", &mut errs);
        assert_eq!(errs[0].field, "s.type");
    }
}
