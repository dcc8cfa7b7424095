//! `additionalPrinterColumns`: the columns `kubectl get` shows for a custom resource,
//! each a JSONPath into the object, as Kubernetes' table convertor for custom resources
//! prints them. NAME comes first; AGE comes last unless a column already shows the
//! creation timestamp. Pure, with the clock as a parameter.

use crate::api::printers;
use jiff::Timestamp;
use serde_json::Value;

/// One column of a definition's version.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The header as kubectl prints it (upper case).
    pub header: &'static str,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub ty: String,
    pub json_path: String,
    /// 0 for the default view, more for `-o wide` only.
    pub priority: i64,
}

const CREATED: &str = ".metadata.creationTimestamp";

/// The columns of a version's `additionalPrinterColumns` (leaking the headers once per
/// definition), then AGE.
pub fn columns_of(version: &Value) -> Vec<Column> {
    let mut cols: Vec<Column> = version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| Column {
            header: leak(c["name"].as_str().unwrap_or("").to_ascii_uppercase()),
            ty: c["type"].as_str().unwrap_or("string").to_string(),
            json_path: c["jsonPath"].as_str().unwrap_or("").to_string(),
            priority: c["priority"].as_i64().unwrap_or(0),
        })
        .collect();
    if !cols.iter().any(|c| c.json_path == CREATED) {
        cols.push(Column {
            header: "AGE",
            ty: "date".into(),
            json_path: CREATED.into(),
            priority: 0,
        });
    }
    cols
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The cell of `column` for `obj`: empty when the path finds nothing, a date as an age.
pub fn cell(column: &Column, obj: &Value, now: Timestamp) -> String {
    let Some(found) = find(obj, &column.json_path) else {
        return String::new();
    };
    match (column.ty.as_str(), found) {
        ("date", Value::String(s)) => s
            .parse::<Timestamp>()
            .map(|t| printers::age(t, now))
            .unwrap_or_else(|_| s.clone()),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Null) => String::new(),
        (_, other) => other.to_string(),
    }
}

/// What a JSONPath finds first in `obj`: fields (`.spec.size`, `['a.b']`), indexes
/// (`[0]`, `[-1]`) and filters (`[?(@.type=="Ready")]`), the subset printer columns use.
pub fn find<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    let mut current = obj;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let (field, after) = r.split_at(end);
            if !field.is_empty() {
                current = current.get(field)?;
            }
            rest = after;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = bracket_end(r)?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            current = step(current, inner)?;
        } else {
            return None;
        }
    }
    Some(current)
}

/// The index of the `]` that closes a bracket (quotes may hold one).
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
        .unwrap_or(s)
}

fn step<'a>(current: &'a Value, inner: &str) -> Option<&'a Value> {
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, rhs) = filter.split_once("==")?;
        let field = lhs.trim().strip_prefix("@.")?;
        let wanted = unquote(rhs);
        return current.as_array()?.iter().find(|item| {
            find(item, &format!(".{field}")).is_some_and(|v| match v {
                Value::String(s) => s == wanted,
                other => serde_json::from_str::<Value>(wanted).is_ok_and(|w| w == *other),
            })
        });
    }
    if let Ok(i) = inner.trim().parse::<i64>() {
        let items = current.as_array()?;
        let idx = if i < 0 { items.len() as i64 + i } else { i };
        return items.get(usize::try_from(idx).ok()?);
    }
    current.get(unquote(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_find_fields_indexes_and_filters() {
        let obj = json!({"spec": {"size": "m", "a.b": 1, "list": [1, 2, 3]},
            "status": {"conditions": [{"type": "Synced", "status": "False"},
                                      {"type": "Ready", "status": "True"}]}});
        assert_eq!(find(&obj, ".spec.size"), Some(&json!("m")));
        assert_eq!(find(&obj, "{.spec.size}"), Some(&json!("m")));
        assert_eq!(find(&obj, ".spec['a.b']"), Some(&json!(1)));
        assert_eq!(find(&obj, ".spec.list[1]"), Some(&json!(2)));
        assert_eq!(find(&obj, ".spec.list[-1]"), Some(&json!(3)));
        assert_eq!(
            find(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(find(&obj, ".spec.missing"), None);
    }

    #[test]
    fn cells_print_values_and_ages() {
        let version = json!({"additionalPrinterColumns": [
            {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1},
        ]});
        let cols = columns_of(&version);
        let headers: Vec<_> = cols.iter().map(|c| c.header).collect();
        assert_eq!(headers, ["SIZE", "REPLICAS", "AGE"]);
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let obj = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
                         "spec": {"replicas": 3}});
        let cells: Vec<_> = cols.iter().map(|c| cell(c, &obj, now)).collect();
        assert_eq!(cells, ["", "3", "10m"]);
    }
}
