//! Validation and defaulting of objects before they are stored.
//!
//! Both are pure functions of the object's JSON so that they can be tested without a
//! server. Validation first decodes the object into its `k8s-openapi` type, which catches
//! every wrong type with the path of the field (`spec.replicas: invalid type: string
//! "three", expected i32`), then checks the rules Kubernetes checks: names, required
//! fields, selectors that match their templates, ports in range. Every failure names its
//! field, so the API server answers 422 Invalid with `details.causes[].field` set.

use crate::api::kinds::ResourceKind;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::fmt;

/// Why a field is invalid, as Kubernetes' `field.ErrorType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    TypeInvalid,
    Forbidden,
    TooLong,
    TooMany,
}

impl Reason {
    /// The `details.causes[].reason` string.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Required => "FieldValueRequired",
            Reason::Invalid => "FieldValueInvalid",
            Reason::NotSupported => "FieldValueNotSupported",
            Reason::Duplicate => "FieldValueDuplicate",
            Reason::TypeInvalid => "FieldValueTypeInvalid",
            Reason::Forbidden => "FieldValueForbidden",
            Reason::TooLong => "FieldValueTooLong",
            Reason::TooMany => "FieldValueTooMany",
        }
    }

    fn text(&self) -> &'static str {
        match self {
            Reason::Required => "Required value",
            Reason::Invalid => "Invalid value",
            Reason::NotSupported => "Unsupported value",
            Reason::Duplicate => "Duplicate value",
            Reason::TypeInvalid => "Invalid value",
            Reason::Forbidden => "Forbidden",
            Reason::TooLong => "Too long",
            Reason::TooMany => "Too many",
        }
    }
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indices: `spec.template.spec.containers[0].image`.
    pub field: String,
    pub reason: Reason,
    /// The offending value, quoted, if there is one to show.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn new(
        field: impl Into<String>,
        reason: Reason,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            reason,
            value,
            detail: detail.into(),
        }
    }

    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(field, Reason::Required, None, detail)
    }

    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(
            field,
            Reason::Invalid,
            Some(format!("{:?}", value.to_string())),
            detail,
        )
    }

    /// The message without the field, as `details.causes[].message` carries it.
    pub fn message_with_value(&self) -> String {
        let mut s = self.reason.text().to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message_with_value())
    }
}

pub const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
pub const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
pub const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

/// RFC 1123 label: at most 63 characters of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Decodes `value` as the kind's typed struct; the error names the field that failed.
fn decode_typed(kind: &ResourceKind, value: &Value) -> Result<(), FieldError> {
    (kind.typed.check)(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "<body>".to_string()
        } else {
            path
        };
        FieldError::new(field, Reason::TypeInvalid, None, e.into_inner().to_string())
    })
}

/// Checks an object (already defaulted) of `kind`. An empty result means valid.
pub fn validate(kind: &ResourceKind, obj: &Value) -> Vec<FieldError> {
    if let Err(e) = decode_typed(kind, obj) {
        return vec![e];
    }
    let mut errs = Vec::new();
    validate_metadata(kind, obj, &mut errs);
    kind.strategy.validate(obj, &mut errs);
    errs
}

fn validate_metadata(kind: &ResourceKind, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        if let Some(msg) = kind.strategy.name_invalid(name) {
            errs.push(FieldError::invalid("metadata.name", name, msg));
        }
    }
    if kind.namespaced {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !is_dns1123_label(ns) {
            errs.push(FieldError::invalid(
                "metadata.namespace",
                ns,
                DNS1123_LABEL_MSG,
            ));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
            if !v.as_str().is_some_and(is_label_value) {
                errs.push(FieldError::invalid(
                    format!("metadata.labels[{k}]"),
                    v.as_str().unwrap_or_default(),
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (63 characters at most)",
                ));
            }
        }
    }
    if let Some(annotations) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for k in annotations.keys() {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    k,
                    "invalid annotation key",
                ));
            }
        }
        let total: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > MAX_ANNOTATIONS_BYTES {
            errs.push(FieldError::new(
                "metadata.annotations",
                Reason::TooLong,
                None,
                format!("may not be more than {MAX_ANNOTATIONS_BYTES} bytes"),
            ));
        }
    }
}

/// What an update may not change (the kind's immutable fields).
pub fn validate_update(kind: &ResourceKind, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    kind.strategy.validate_update(old, new, &mut errs);
    errs
}

/// The keys of a ConfigMap's or Secret's `data`, `binaryData` and `stringData`.
pub fn validate_config_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    for section in ["data", "binaryData", "stringData"] {
        if let Some(map) = obj.get(section).and_then(Value::as_object) {
            for key in map.keys() {
                if key.is_empty()
                    || key.len() > 253
                    || !key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    errs.push(FieldError::invalid(
                        format!("{section}[{key}]"),
                        key,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    ));
                }
            }
        }
    }
}

/// Most bytes of annotation keys and values on one object (Kubernetes' limit).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Most containers of each list (`containers`, `initContainers`) of one pod. Kubernetes
/// sets no number, but every container is a status entry its node rewrites on each
/// change; a pod of thousands of containers only makes its node and the control plane
/// churn.
pub const MAX_CONTAINERS_PER_POD: usize = 100;

pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => errs.push(FieldError::required(
            format!("{path}.containers"),
            "a pod needs at least one container",
        )),
        Some(c) if c.is_empty() => errs.push(FieldError::required(
            format!("{path}.containers"),
            "a pod needs at least one container",
        )),
        Some(_) => {}
    }
    for list in ["containers", "initContainers"] {
        let n = spec.get(list).and_then(Value::as_array).map_or(0, Vec::len);
        if n > MAX_CONTAINERS_PER_POD {
            errs.push(FieldError::new(
                format!("{path}.{list}"),
                Reason::TooMany,
                Some(n.to_string()),
                format!("must have at most {MAX_CONTAINERS_PER_POD} items"),
            ));
        }
    }
    let volume_names: HashSet<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut seen = HashSet::new();
    for section in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(list) = spec.get(section).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in list.iter().enumerate() {
            let at = format!("{path}.{section}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{at}.name"), ""));
            } else if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{at}.name"),
                    name,
                    DNS1123_LABEL_MSG,
                ));
            } else if !seen.insert(name.to_string()) {
                errs.push(FieldError::new(
                    format!("{at}.name"),
                    Reason::Duplicate,
                    Some(format!("{name:?}")),
                    "",
                ));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                errs.push(FieldError::required(
                    format!("{at}.image"),
                    "the .wasm the container runs",
                ));
            }
            if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                for (j, p) in ports.iter().enumerate() {
                    let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        errs.push(FieldError::invalid(
                            format!("{at}.ports[{j}].containerPort"),
                            port,
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                    check_protocol(p, &format!("{at}.ports[{j}].protocol"), errs);
                }
            }
            if let Some(mounts) = c.get("volumeMounts").and_then(Value::as_array) {
                for (j, m) in mounts.iter().enumerate() {
                    let v = m.get("name").and_then(Value::as_str).unwrap_or("");
                    if !volume_names.contains(v) {
                        errs.push(FieldError::new(
                            format!("{at}.volumeMounts[{j}].name"),
                            Reason::NotSupported,
                            Some(format!("{v:?}")),
                            "no volume of that name in the pod",
                        ));
                    }
                    if m.get("mountPath")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        errs.push(FieldError::required(
                            format!("{at}.volumeMounts[{j}].mountPath"),
                            "",
                        ));
                    }
                    for key in ["subPath", "subPathExpr"] {
                        if let Some(sub) = m.get(key).and_then(Value::as_str)
                            && !sub.is_empty()
                        {
                            check_local_descending_path(
                                sub,
                                &format!("{at}.volumeMounts[{j}].{key}"),
                                errs,
                            );
                        }
                    }
                }
            }
            validate_resources(c.get("resources"), &format!("{at}.resources"), errs);
            if let Some(env) = c.get("env").and_then(Value::as_array) {
                for (j, e) in env.iter().enumerate() {
                    if e.get("name")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        errs.push(FieldError::required(format!("{at}.env[{j}].name"), ""));
                    }
                }
            }
        }
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        errs.push(FieldError::new(
            format!("{path}.restartPolicy"),
            Reason::NotSupported,
            Some(format!("{p:?}")),
            "supported values: \"Always\", \"OnFailure\", \"Never\"",
        ));
    }
    let mut vols = HashSet::new();
    if let Some(list) = spec.get("volumes").and_then(Value::as_array) {
        for (i, v) in list.iter().enumerate() {
            let name = v.get("name").and_then(Value::as_str).unwrap_or("");
            if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{path}.volumes[{i}].name"),
                    name,
                    DNS1123_LABEL_MSG,
                ));
            } else if !vols.insert(name) {
                errs.push(FieldError::new(
                    format!("{path}.volumes[{i}].name"),
                    Reason::Duplicate,
                    Some(format!("{name:?}")),
                    "",
                ));
            }
            validate_volume_item_paths(v, &format!("{path}.volumes[{i}]"), errs);
        }
    }
}

/// `resources.limits` and `requests` as Kubernetes checks them: every quantity readable
/// and not negative, and no request above its limit. (kube-apiserver refuses an
/// unreadable quantity while decoding, with a 400 and no field; here it is one more 422
/// cause, with its field, like the others.)
fn validate_resources(resources: Option<&Value>, at: &str, errs: &mut Vec<FieldError>) {
    use crate::api::quantity::Quantity;
    let Some(resources) = resources else {
        return;
    };
    let section = |name: &str| {
        resources
            .get(name)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
    };
    let mut check = |name: &str, resource: &str, raw: &str| {
        let field = format!("{at}.{name}[{resource}]");
        match Quantity::parse(raw) {
            Err(e) => {
                errs.push(FieldError::invalid(field, raw, e.to_string()));
                None
            }
            Ok(q) if q.is_negative() => {
                errs.push(FieldError::invalid(
                    field,
                    raw,
                    "must be greater than or equal to 0",
                ));
                None
            }
            Ok(q) => Some(q),
        }
    };
    let mut above = Vec::new();
    let limits: Vec<(&str, &str, Option<Quantity>)> = section("limits")
        .map(|(k, raw)| (k, raw, check("limits", k, raw)))
        .collect();
    for (resource, raw) in section("requests") {
        let Some(request) = check("requests", resource, raw) else {
            continue;
        };
        if let Some((_, raw_limit, Some(limit))) = limits.iter().find(|(k, _, _)| *k == resource)
            && request > *limit
        {
            above.push(FieldError::invalid(
                format!("{at}.requests"),
                raw,
                format!("must be less than or equal to {resource} limit of {raw_limit}"),
            ));
        }
    }
    errs.append(&mut above);
}

/// A path that must stay inside the directory it is joined to, as Kubernetes checks
/// `subPath`: relative, and no `..` element (joining an absolute path replaces the base,
/// and `..` climbs out of it).
fn check_local_descending_path(p: &str, field: &str, errs: &mut Vec<FieldError>) {
    if p.starts_with('/') {
        errs.push(FieldError::invalid(field, p, "must be a relative path"));
    }
    if p.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid(field, p, "must not contain '..'"));
    }
}

/// The `items[].path` of configMap, secret, downwardAPI and projected volumes: a file
/// name inside the volume, as Kubernetes checks it (required, relative, no `..` element,
/// not starting with `..`).
fn validate_volume_item_paths(volume: &Value, at: &str, errs: &mut Vec<FieldError>) {
    let mut check_items = |items: Option<&Value>, items_at: String| {
        let Some(items) = items.and_then(Value::as_array) else {
            return;
        };
        for (k, item) in items.iter().enumerate() {
            let field = format!("{items_at}[{k}].path");
            match item.get("path").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required(field, "")),
                Some(p) => {
                    check_local_descending_path(p, &field, errs);
                    if p.starts_with("..") {
                        errs.push(FieldError::invalid(&field, p, "must not start with '..'"));
                    }
                }
            }
        }
    };
    for source in ["configMap", "secret", "downwardAPI"] {
        if let Some(src) = volume.get(source) {
            check_items(src.get("items"), format!("{at}.{source}.items"));
        }
    }
    if let Some(sources) = volume
        .pointer("/projected/sources")
        .and_then(Value::as_array)
    {
        for (s, src) in sources.iter().enumerate() {
            for source in ["configMap", "secret", "downwardAPI"] {
                if let Some(inner) = src.get(source) {
                    check_items(
                        inner.get("items"),
                        format!("{at}.projected.sources[{s}].{source}.items"),
                    );
                }
            }
        }
    }
}

fn check_protocol(port: &Value, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(p) = port.get("protocol").and_then(Value::as_str)
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        errs.push(FieldError::new(
            field,
            Reason::NotSupported,
            Some(format!("{p:?}")),
            "supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ));
    }
}

pub fn validate_workload(kind: &str, spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required("spec", ""));
        return;
    };
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    validate_selector_and_template(spec, errs);
    if let Some(p) = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
        && p != "Always"
    {
        errs.push(FieldError::new(
            "spec.template.spec.restartPolicy",
            Reason::NotSupported,
            Some(format!("{p:?}")),
            format!("supported values: \"Always\" (a {kind} keeps its pods running)"),
        ));
    }
}

fn validate_selector_and_template(spec: &Value, errs: &mut Vec<FieldError>) {
    let selector = spec.get("selector");
    let match_labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    let match_exprs = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && match_exprs.is_none_or(|m| m.is_empty()) {
        errs.push(FieldError::required(
            "spec.selector",
            "a selector is required and must not be empty",
        ));
    }
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .map(crate::api::selector::object_labels_of_map)
        .unwrap_or_default();
    if let Some(sel) = selector
        && !label_selector_matches(sel, &template_labels)
    {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            format_labels(&template_labels),
            "`selector` does not match template `labels`",
        ));
    }
    match spec.pointer("/template/spec") {
        Some(t) => validate_pod_spec(t, "spec.template.spec", errs),
        None => errs.push(FieldError::required("spec.template.spec", "")),
    }
}

fn format_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Does a metav1 `LabelSelector` in JSON match `labels`? (A selector that does not
/// decode matches nothing.) See [`crate::api::selector::matches_selector`].
pub fn label_selector_matches(
    selector: &Value,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    serde_json::from_value(selector.clone())
        .is_ok_and(|s| crate::api::selector::matches_selector(&s, labels))
}

pub fn validate_job(spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required("spec", ""));
        return;
    };
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        if let Some(n) = spec.get(field).and_then(Value::as_i64)
            && (n < 0 || (field == "activeDeadlineSeconds" && n == 0))
        {
            errs.push(FieldError::invalid(
                format!("spec.{field}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
    validate_selector_and_template(spec, errs);
    validate_job_modes(spec, errs);
    match spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        Some("OnFailure") | Some("Never") => {}
        other => errs.push(FieldError::new(
            "spec.template.spec.restartPolicy",
            if other.is_none() {
                Reason::Required
            } else {
                Reason::NotSupported
            },
            other.map(|p| format!("{p:?}")),
            "supported values: \"OnFailure\", \"Never\"",
        )),
    }
}

/// A Job's completion mode and pod failure policy, with Kubernetes' messages.
fn validate_job_modes(spec: &Value, errs: &mut Vec<FieldError>) {
    let mode = spec.get("completionMode").and_then(Value::as_str);
    match mode {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.get("completions").is_none_or(Value::is_null) {
                errs.push(FieldError::required(
                    "spec.completions",
                    "when completion mode is Indexed",
                ));
            }
        }
        Some(other) => errs.push(FieldError::new(
            "spec.completionMode",
            Reason::NotSupported,
            Some(format!("{other:?}")),
            "supported values: \"NonIndexed\", \"Indexed\"",
        )),
    }
    if let Some(v) = spec.get("backoffLimitPerIndex").filter(|v| !v.is_null()) {
        errs.push(FieldError::invalid(
            "spec.backoffLimitPerIndex",
            v,
            "per-index backoff limits are not supported by wharf; use backoffLimit",
        ));
    }
    let Some(policy) = spec.get("podFailurePolicy").filter(|v| !v.is_null()) else {
        return;
    };
    if let Some(p) = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .filter(|p| *p != "Never")
    {
        errs.push(FieldError::invalid(
            "spec.template.spec.restartPolicy",
            p,
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    let rules = policy.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = format!("spec.podFailurePolicy.rules[{i}]");
        match rule.get("action").and_then(Value::as_str) {
            Some("FailJob" | "Ignore" | "Count") => {}
            Some("FailIndex") => errs.push(FieldError::invalid(
                format!("{at}.action"),
                "FailIndex",
                "requires the backoffLimitPerIndex to be set",
            )),
            other => errs.push(FieldError::new(
                format!("{at}.action"),
                if other.is_none() {
                    Reason::Required
                } else {
                    Reason::NotSupported
                },
                other.map(|a| format!("{a:?}")),
                "supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
            )),
        }
        let codes = rule.get("onExitCodes").filter(|v| !v.is_null());
        let conditions = rule.get("onPodConditions").filter(|v| !v.is_null());
        match (codes, conditions) {
            (Some(_), Some(_)) => errs.push(FieldError::new(
                &at,
                Reason::Invalid,
                None,
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (None, None) => errs.push(FieldError::new(
                &at,
                Reason::Invalid,
                None,
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
        if let Some(codes) = codes {
            let at = format!("{at}.onExitCodes");
            match codes.get("operator").and_then(Value::as_str) {
                Some("In" | "NotIn") => {}
                other => errs.push(FieldError::new(
                    format!("{at}.operator"),
                    if other.is_none() {
                        Reason::Required
                    } else {
                        Reason::NotSupported
                    },
                    other.map(|o| format!("{o:?}")),
                    "supported values: \"In\", \"NotIn\"",
                )),
            }
            let values = codes.get("values").and_then(Value::as_array);
            if values.is_none_or(|v| v.is_empty()) {
                errs.push(FieldError::required(
                    format!("{at}.values"),
                    "at least one value is required",
                ));
            }
        }
    }
}

pub fn validate_service(spec: Option<&Value>, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required("spec", ""));
        return;
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(FieldError::new(
            "spec.type",
            Reason::NotSupported,
            Some(format!("{ty:?}")),
            "supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        ));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                format!("{at}.port"),
                port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                errs.push(FieldError::invalid(
                    format!("{at}.targetPort"),
                    n,
                    "must be between 1 and 65535, inclusive",
                ))
            }
            Some(Value::String(s)) if !is_dns1123_label(s) || s.len() > 15 => {
                errs.push(FieldError::invalid(
                    format!("{at}.targetPort"),
                    s,
                    "must be a port number or an IANA_SVC_NAME (at most 15 lowercase characters)",
                ))
            }
            _ => {}
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && ty != "NodePort"
            && ty != "LoadBalancer"
            && np != 0
        {
            errs.push(FieldError::new(
                format!("{at}.nodePort"),
                Reason::Forbidden,
                None,
                format!("may not be used when `type` is '{ty}'"),
            ));
        } else if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && !(0..=65535).contains(&np)
        {
            errs.push(FieldError::new(
                format!("{at}.nodePort"),
                Reason::Invalid,
                Some(np.to_string()),
                "must be between 1 and 65535, inclusive",
            ));
        }
        check_protocol(p, &format!("{at}.protocol"), errs);
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(
                format!("{at}.name"),
                "names are required when a service has several ports",
            ));
        } else if !name.is_empty() && !is_dns1123_label(name) {
            errs.push(FieldError::invalid(
                format!("{at}.name"),
                name,
                DNS1123_LABEL_MSG,
            ));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            errs.push(FieldError::new(
                format!("{at}.name"),
                Reason::Duplicate,
                Some(format!("{name:?}")),
                "",
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !seen.insert((port, proto.to_string())) {
            errs.push(FieldError::new(
                at.clone(),
                Reason::Duplicate,
                Some(format!("{{port: {port}, protocol: {proto}}}")),
                "",
            ));
        }
    }
    validate_service_addresses(spec, ty, headless, errs);
}

/// The address fields of a Service. Which addresses are free and inside the configured
/// ranges is the allocator's to check (`apiserver::services`); here is what holds in
/// every cluster: well-formed values, and only those the type and this single-stack IPv4
/// cluster can have.
fn validate_service_addresses(spec: &Value, ty: &str, headless: bool, errs: &mut Vec<FieldError>) {
    let cluster_ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
    let cluster_ips: Vec<&str> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    if ty == "ExternalName" {
        let name = spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        } else if !is_dns1123_subdomain(name.trim_end_matches('.')) {
            errs.push(FieldError::invalid(
                "spec.externalName",
                name,
                DNS1123_SUBDOMAIN_MSG,
            ));
        }
        if !cluster_ip.is_empty() {
            errs.push(FieldError::invalid(
                "spec.clusterIP",
                cluster_ip,
                "may not be set for ExternalName services",
            ));
        }
        return;
    }
    if !cluster_ip.is_empty()
        && cluster_ip != "None"
        && cluster_ip.parse::<std::net::IpAddr>().is_err()
    {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            cluster_ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if headless && matches!(ty, "NodePort" | "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            cluster_ip,
            format!("may not be set to 'None' for {ty} services"),
        ));
    }
    if let Some(first) = cluster_ips.first()
        && !cluster_ip.is_empty()
        && *first != cluster_ip
    {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            first,
            "must match `clusterIP` when both are specified",
        ));
    }
    if cluster_ips.len() > 1 {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            cluster_ips.join(","),
            "this cluster is single-stack IPv4: at most one address",
        ));
    }
    if let Some(families) = spec.get("ipFamilies").and_then(Value::as_array) {
        for (i, f) in families.iter().enumerate() {
            let f = f.as_str().unwrap_or("");
            if f != "IPv4" {
                errs.push(FieldError::new(
                    format!("spec.ipFamilies[{i}]"),
                    Reason::NotSupported,
                    Some(format!("{f:?}")),
                    "this cluster is single-stack IPv4: supported values: \"IPv4\"",
                ));
            }
        }
    }
    let one_of = |field: &str, allowed: &[&str], errs: &mut Vec<FieldError>| {
        if let Some(v) = spec.get(field).and_then(Value::as_str)
            && !allowed.contains(&v)
        {
            let list = allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            errs.push(FieldError::new(
                format!("spec.{field}"),
                Reason::NotSupported,
                Some(format!("{v:?}")),
                format!("supported values: {list}"),
            ));
        }
    };
    one_of("ipFamilyPolicy", &["PreferDualStack", "SingleStack"], errs);
    one_of("sessionAffinity", &["ClientIP", "None"], errs);
    one_of("internalTrafficPolicy", &["Cluster", "Local"], errs);
    one_of("externalTrafficPolicy", &["Cluster", "Local"], errs);
    if spec
        .get("externalTrafficPolicy")
        .is_some_and(|v| !v.is_null())
        && !matches!(ty, "NodePort" | "LoadBalancer")
    {
        errs.push(FieldError::new(
            "spec.externalTrafficPolicy",
            Reason::Invalid,
            None,
            "may only be set for externally-accessible services",
        ));
    }
    if let Some(selector) = spec.get("selector").and_then(Value::as_object) {
        for (k, v) in selector {
            if !is_qualified_name(k) || !v.as_str().is_some_and(is_label_value) {
                errs.push(FieldError::invalid(
                    format!("spec.selector[{k}]"),
                    v.as_str().unwrap_or_default(),
                    "a valid label selector needs qualified keys and label values",
                ));
            }
        }
    }
}

pub fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    if obj.pointer(pointer).is_some_and(|v| !v.is_null()) {
        return;
    }
    let mut cur = obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        let map = match cur.as_object_mut() {
            Some(m) => m,
            None => return,
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return;
        }
        cur = map.entry((*part).to_string()).or_insert_with(|| json!({}));
    }
}

pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "/restartPolicy", json!("Always"));
    set_default(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "/terminationGracePeriodSeconds", json!(30));
    set_default(spec, "/schedulerName", json!("default-scheduler"));
    set_default(spec, "/securityContext", json!({}));
    set_default(spec, "/enableServiceLinks", json!(true));
    for section in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(list) = spec.get_mut(section).and_then(Value::as_array_mut) {
            for c in list {
                let policy = c
                    .get("image")
                    .and_then(Value::as_str)
                    .map_or("IfNotPresent", wharf_image_ref::default_pull_policy);
                set_default(c, "/imagePullPolicy", json!(policy));
                set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "/terminationMessagePolicy", json!("File"));
                set_default(c, "/resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "/protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Fills the defaults Kubernetes fills, so that a stored object reads back as it would
/// from a Kubernetes API server: the kind's own ([`Strategy::default`]), then those of a
/// pod template wherever the kind has one.
///
/// [`Strategy::default`]: crate::apiserver::registry::Strategy::default
pub fn apply_defaults(kind: &ResourceKind, obj: &mut Value) {
    kind.strategy.default(obj);
    if let Some(template) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(template);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;

    fn kind(name: &str) -> &'static ResourceKind {
        resolve(name).expect("kind")
    }

    fn pod(containers: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"containers": containers}})
    }

    #[test]
    fn names_follow_rfc1123() {
        assert!(is_dns1123_subdomain("web-1.example"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_subdomain("-web"));
        assert!(is_dns1123_label("a1"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(!is_dns1035_label("1web"));
    }

    #[test]
    fn a_pod_needs_containers_with_name_and_image() {
        let errs = validate(kind("pod"), &pod(json!([])));
        assert_eq!(errs[0].field, "spec.containers");
        assert_eq!(errs[0].reason, Reason::Required);
        let errs = validate(kind("pod"), &pod(json!([{"name": "app"}])));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.containers[0].image");
        let errs = validate(
            kind("pod"),
            &pod(json!([{"name": "a", "image": "x.wasm"}, {"name": "a", "image": "y.wasm"}])),
        );
        assert_eq!(errs[0].reason, Reason::Duplicate);
        assert!(
            validate(
                kind("pod"),
                &pod(json!([{"name": "app", "image": "app.wasm"}]))
            )
            .is_empty()
        );
    }

    #[test]
    fn wrong_types_name_their_field() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"replicas": "three"}});
        let errs = validate(kind("deploy"), &d);
        assert_eq!(errs[0].field, "spec.replicas");
        assert!(errs[0].detail.contains("invalid type"), "{}", errs[0]);
    }

    #[test]
    fn selector_must_match_template() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"selector": {"matchLabels": {"app": "web"}},
                                "template": {"metadata": {"labels": {"app": "other"}},
                                             "spec": {"containers": [{"name": "a", "image": "a.wasm"}]}}}});
        let errs = validate(kind("deploy"), &d);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
        assert!(
            errs[0]
                .to_string()
                .contains("`selector` does not match template `labels`")
        );
    }

    #[test]
    fn service_ports_are_checked() {
        let s = json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"ports": [{"port": 70000}]}});
        let errs = validate(kind("svc"), &s);
        assert_eq!(errs[0].field, "spec.ports[0].port");
    }

    #[test]
    fn service_addresses_are_checked() {
        let svc = |spec: Value| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
        };
        let fields = |spec: Value| -> Vec<String> {
            validate(kind("svc"), &svc(spec))
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(json!({"clusterIP": "nope", "ports": [{"port": 80}]})),
            ["spec.clusterIP"]
        );
        assert_eq!(
            fields(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]})),
            ["spec.clusterIP"]
        );
        assert_eq!(
            fields(
                json!({"clusterIP": "127.250.0.1", "clusterIPs": ["127.250.0.2"],
                          "ports": [{"port": 80}]})
            ),
            ["spec.clusterIPs[0]"]
        );
        assert_eq!(
            fields(json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]})),
            ["spec.ipFamilies[0]"]
        );
        assert_eq!(
            fields(json!({"externalTrafficPolicy": "Local", "ports": [{"port": 80}]})),
            ["spec.externalTrafficPolicy"]
        );
        assert_eq!(
            fields(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]})),
            ["spec.ports[0].nodePort"]
        );
        assert_eq!(
            fields(json!({"ports": [{"port": 80, "nodePort": 30080}]})),
            ["spec.ports[0].nodePort"]
        );
        assert_eq!(
            fields(json!({"type": "ExternalName"})),
            ["spec.externalName"]
        );
        assert!(
            fields(json!({"type": "ExternalName", "externalName": "db.example.com"})).is_empty()
        );
        assert!(fields(json!({"clusterIP": "None", "selector": {"app": "web"}})).is_empty());
    }

    #[test]
    fn defaults_fill_what_kubernetes_fills() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "web"},
                           "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a.wasm",
                                    "ports": [{"containerPort": 8080}]}]}}}});
        apply_defaults(kind("deploy"), &mut d);
        assert_eq!(d.pointer("/spec/replicas"), Some(&json!(1)));
        assert_eq!(
            d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
            Some(&json!("25%"))
        );
        assert_eq!(
            d.pointer("/spec/template/spec/restartPolicy"),
            Some(&json!("Always"))
        );
        assert_eq!(
            d.pointer("/spec/template/spec/containers/0/ports/0/protocol"),
            Some(&json!("TCP"))
        );
        // imagePullPolicy as Kubernetes defaults it: Always for a registry image tagged
        // :latest or untagged, IfNotPresent for a tag, a digest or a file; a policy the
        // user wrote is kept.
        let mut p = json!({"spec": {"initContainers": [{"name": "i", "image": "r.io/init"}],
            "containers": [
                {"name": "a", "image": "r.io/app:latest"},
                {"name": "b", "image": "r.io/app:1.0"},
                {"name": "c", "image": "samples/app.wasm"},
                {"name": "d", "image": "r.io/app", "imagePullPolicy": "Never"}]}});
        apply_defaults(kind("pod"), &mut p);
        let policy = |ptr: &str| p.pointer(ptr).and_then(Value::as_str).map(str::to_owned);
        assert_eq!(
            policy("/spec/initContainers/0/imagePullPolicy").as_deref(),
            Some("Always")
        );
        let got: Vec<_> = (0..4)
            .map(|i| policy(&format!("/spec/containers/{i}/imagePullPolicy")))
            .collect();
        assert_eq!(
            got,
            ["Always", "IfNotPresent", "IfNotPresent", "Never"].map(|s| Some(s.to_owned()))
        );
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults(kind("svc"), &mut s);
        assert_eq!(s.pointer("/spec/ports/0/targetPort"), Some(&json!(80)));
        assert_eq!(s.pointer("/spec/type"), Some(&json!("ClusterIP")));
        assert_eq!(
            s.pointer("/spec/ipFamilyPolicy"),
            Some(&json!("SingleStack"))
        );
        assert_eq!(
            s.pointer("/spec/internalTrafficPolicy"),
            Some(&json!("Cluster"))
        );
        let mut np =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 0}]}});
        apply_defaults(kind("svc"), &mut np);
        assert_eq!(np.pointer("/spec/ports/0/targetPort"), Some(&json!(80)));
        assert_eq!(
            np.pointer("/spec/externalTrafficPolicy"),
            Some(&json!("Cluster"))
        );
        let mut alias = json!({"spec": {"type": "ExternalName", "externalName": "x.example"}});
        apply_defaults(kind("svc"), &mut alias);
        assert!(alias.pointer("/spec/ipFamilies").is_none());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod job_tests {
    use super::*;
    use serde_json::json;

    fn errors(spec: Value) -> Vec<String> {
        let mut base = json!({
            "selector": {"matchLabels": {"app": "pi"}},
            "template": {"metadata": {"labels": {"app": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "pi.wasm"}]}},
        });
        json_patch_merge(&mut base, &spec);
        let mut errs = Vec::new();
        validate_job(Some(&base), &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    fn json_patch_merge(a: &mut Value, b: &Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    json_patch_merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b.clone(),
        }
    }

    #[test]
    fn completion_modes_and_failure_policies_read_as_kubernetes() {
        assert!(errors(json!({"completionMode": "Indexed", "completions": 3})).is_empty());
        assert_eq!(
            errors(json!({"completionMode": "Indexed"})),
            ["spec.completions: Required value: when completion mode is Indexed"]
        );
        assert_eq!(
            errors(json!({"completionMode": "Sometimes"})),
            [
                "spec.completionMode: Unsupported value: \"Sometimes\": supported values: \"NonIndexed\", \"Indexed\""
            ]
        );
        let ok = json!({"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}});
        assert!(errors(ok).is_empty());
        let bad = json!({
            "template": {"spec": {"restartPolicy": "OnFailure"}},
            "podFailurePolicy": {"rules": [
                {"action": "FailIndex", "onExitCodes": {"operator": "Is", "values": []}},
                {"action": "Ignore"},
                {"action": "Count", "onExitCodes": {"operator": "In", "values": [1]},
                 "onPodConditions": [{"type": "X"}]}]}});
        assert_eq!(
            errors(bad),
            [
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified",
                "spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set",
                "spec.podFailurePolicy.rules[0].onExitCodes.operator: Unsupported value: \"Is\": supported values: \"In\", \"NotIn\"",
                "spec.podFailurePolicy.rules[0].onExitCodes.values: Required value: at least one value is required",
                "spec.podFailurePolicy.rules[1]: Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
                "spec.podFailurePolicy.rules[2]: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported",
            ]
        );
    }
}
