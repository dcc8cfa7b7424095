//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` carry them.
//!
//! Parsing is separate from matching so that a bad selector is refused (400) before any
//! list or watch starts, and matching is a pure function over the object's JSON.

use crate::api::kinds::ResourceKind;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

impl LabelSelector {
    /// Parses the Kubernetes selector syntax: `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Matches the `metadata.labels` of an object.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&object_labels(object))
    }
}

/// The labels of an object's JSON.
pub fn object_labels(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn split_top_level(input: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!(
                        "unbalanced ')' in selector {input:?}"
                    )));
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!(
            "unbalanced '(' in selector {input:?}"
        )));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<LabelRequirement, SelectorError> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(LabelRequirement::DoesNotExist(key.to_string()));
    }
    if let Some((k, v)) = part.split_once("!=") {
        let (k, v) = (k.trim(), v.trim());
        validate_key(k)?;
        validate_value(v)?;
        return Ok(LabelRequirement::NotEquals(k.into(), v.into()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        let (k, v) = (k.trim(), v.trim());
        validate_key(k)?;
        validate_value(v)?;
        return Ok(LabelRequirement::Equals(k.into(), v.into()));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0].trim();
        let rest = words[1].trim();
        let (op, set) = if let Some(set) = rest.strip_prefix("notin") {
            ("notin", set)
        } else if let Some(set) = rest.strip_prefix("in") {
            ("in", set)
        } else {
            return Err(SelectorError(format!(
                "unable to parse requirement {part:?}: expected one of =, ==, !=, in, notin"
            )));
        };
        let set = set.trim();
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| {
                SelectorError(format!(
                    "expected a set in parentheses after {op} in {part:?}"
                ))
            })?;
        validate_key(key)?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        for v in &values {
            validate_value(v)?;
        }
        if values.is_empty() && op == "in" {
            return Err(SelectorError(format!(
                "'in' needs at least one value in {part:?}"
            )));
        }
        return Ok(if op == "in" {
            LabelRequirement::In(key.into(), values)
        } else {
            LabelRequirement::NotIn(key.into(), values)
        });
    }
    validate_key(part)?;
    Ok(LabelRequirement::Exists(part.to_string()))
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(SelectorError(format!("invalid label key {key:?}")));
    }
    Ok(())
}

fn validate_value(v: &str) -> Result<(), SelectorError> {
    if v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(SelectorError(format!("invalid label value {v:?}")));
    }
    Ok(())
}

/// A parsed field selector: `metadata.name=x,spec.nodeName!=y`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

/// Fields every kind can be selected by.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

impl FieldSelector {
    /// Parses and checks that every field is one `kind` can be selected by (its
    /// strategy's [`selectable_fields`]).
    ///
    /// [`selectable_fields`]: crate::apiserver::registry::Strategy::selectable_fields
    pub fn parse(input: &str, kind: &ResourceKind) -> Result<Self, SelectorError> {
        let kind_fields = kind.strategy.selectable_fields();
        let mut reqs = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid field selector {part:?}: expected field=value or field!=value"
                )));
            };
            let field = field.trim();
            if !COMMON_FIELDS.contains(&field) && !kind_fields.contains(&field) {
                return Err(SelectorError(format!(
                    "field label not supported: {field} (for {}: {})",
                    kind.kind,
                    COMMON_FIELDS
                        .iter()
                        .chain(kind_fields)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field_value(object, field);
            (actual == *value) == *equal
        })
    }

    /// The value a selector requires `field` to equal, if it has such a term.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// The string value of a dotted field path; absent fields are the empty string, as
/// Kubernetes' field sets have them.
fn field_value(object: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Object(o)) if field == "source" => o
            .get("component")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// A JSON `{"k": "v"}` map as labels.
pub fn object_labels_of_map(map: &Value) -> BTreeMap<String, String> {
    map.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse(
            "app=web,tier!=db,env in (prod, staging),zone notin (a),ready,!legacy",
        )
        .expect("parse");
        assert_eq!(s.0.len(), 6);
        let l = labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("ready", ""),
            ("zone", "b"),
        ]);
        assert!(s.matches(&l));
        let l2 = labels(&[("app", "web"), ("env", "dev"), ("ready", "")]);
        assert!(!s.matches(&l2));
        let l3 = labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("ready", ""),
            ("legacy", "1"),
        ]);
        assert!(!s.matches(&l3));
        assert!(
            LabelSelector::parse("app==web")
                .expect("==")
                .matches(&labels(&[("app", "web")]))
        );
    }

    #[test]
    fn notin_and_not_equals_match_missing_keys() {
        let s = LabelSelector::parse("tier!=db,zone notin (a)").expect("parse");
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn rejects_malformed_selectors() {
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("env in (a").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("app=we b").is_err());
        assert!(LabelSelector::parse("").expect("empty").is_empty());
    }

    #[test]
    fn field_selectors_check_supported_fields() {
        let pod = json!({"metadata": {"name": "p1", "namespace": "default"},
                         "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let pod_kind = resolve("pod").expect("pod");
        let s = FieldSelector::parse("spec.nodeName=node-1,status.phase!=Failed", pod_kind)
            .expect("parse");
        assert!(s.matches(&pod));
        assert!(
            !FieldSelector::parse("metadata.name=p2", pod_kind)
                .expect("parse")
                .matches(&pod)
        );
        assert!(
            FieldSelector::parse("spec.nodeName=", pod_kind)
                .expect("parse")
                .matches(&json!({}))
        );
        let err = FieldSelector::parse("spec.nodeName=x", resolve("cm").expect("cm"))
            .expect_err("unsupported");
        assert!(
            err.0.contains("field label not supported: spec.nodeName"),
            "{err}"
        );
        assert_eq!(s.required("spec.nodeName"), Some("node-1"));
    }
}
