//! Ingresses (`networking.k8s.io/v1`): host and path rules to Service backends, TLS from
//! Secrets, a default backend; `status.loadBalancer` is the controller's. Validation
//! speaks Kubernetes' field paths; a create without a class gets the default
//! IngressClass, as Kubernetes' `DefaultIngressClass` admission does.

use super::super::{Admitted, Strategy};
use super::STATUS_ONLY;
use crate::api::printers;
use crate::api::validation::{FieldError, Reason, is_dns1123_subdomain};
use crate::apiserver::registry::subresources::Subresource;
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError};
use futures::future::BoxFuture;
use serde_json::Value;

pub struct IngressStrategy;

pub static STRATEGY: IngressStrategy = IngressStrategy;

/// The annotation that marks an IngressClass as the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older manifests name their class with.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const PATH_TYPES: [&str; 3] = ["Exact", "ImplementationSpecific", "Prefix"];

/// `host` as Kubernetes accepts it on a rule or a TLS entry: a DNS-1123 subdomain, or one
/// with a leading `*.` label; not an IP address.
pub fn host_errors(host: &str, field: &str) -> Option<FieldError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some(FieldError::invalid(
            field,
            host,
            "must be a DNS name, not an IP address",
        ));
    }
    let ok = match host.strip_prefix("*.") {
        Some(rest) => is_dns1123_subdomain(rest),
        None => is_dns1123_subdomain(host),
    };
    (!ok).then(|| {
        let detail = if host.contains('*') {
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character"
        } else {
            crate::api::validation::DNS1123_SUBDOMAIN_MSG
        };
        FieldError::invalid(field, host, detail)
    })
}

fn validate_backend(backend: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let service = backend.get("service");
    let resource = backend.get("resource");
    match (service, resource) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            field,
            "",
            "cannot set both resource and service backends",
        )),
        (None, None) => errs.push(FieldError::invalid(
            field,
            "",
            "resource or service backend is required",
        )),
        (None, Some(_)) => {}
        (Some(svc), None) => {
            match svc.get("name").and_then(Value::as_str) {
                None | Some("") => {
                    errs.push(FieldError::required(format!("{field}.service.name"), ""))
                }
                Some(name) if !crate::api::validation::is_dns1035_label(name) => {
                    errs.push(FieldError::invalid(
                        format!("{field}.service.name"),
                        name,
                        crate::api::validation::DNS1035_LABEL_MSG,
                    ))
                }
                Some(_) => {}
            }
            let port = svc.get("port");
            let number = port.and_then(|p| p.get("number")).and_then(Value::as_i64);
            let name = port
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            match (number, name) {
                (Some(_), Some(_)) => errs.push(FieldError::invalid(
                    format!("{field}.service.port"),
                    "",
                    "cannot set both port name & port number",
                )),
                (None, None) => errs.push(FieldError::invalid(
                    format!("{field}.service.port"),
                    "",
                    "port name or number is required",
                )),
                (Some(n), None) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                    format!("{field}.service.port.number"),
                    n,
                    "must be between 1 and 65535, inclusive",
                )),
                _ => {}
            }
        }
    }
}

/// Checks an Ingress's spec (pure).
pub fn validate_spec(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let rules = spec.get("rules").and_then(Value::as_array);
    let default = spec.get("defaultBackend");
    if default.is_none() && rules.is_none_or(|r| r.is_empty()) {
        errs.push(FieldError::invalid(
            "spec",
            "",
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(backend) = default {
        validate_backend(backend, "spec.defaultBackend", errs);
    }
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(host) = rule
            .get("host")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            && let Some(e) = host_errors(host, &format!("{at}.host"))
        {
            errs.push(e);
        }
        let Some(http) = rule.get("http") else {
            continue;
        };
        let paths = http.get("paths").and_then(Value::as_array);
        if paths.is_none_or(|p| p.is_empty()) {
            errs.push(FieldError::required(format!("{at}.http.paths"), ""));
        }
        for (j, path) in paths.into_iter().flatten().enumerate() {
            let pat = format!("{at}.http.paths[{j}]");
            let path_type = path.get("pathType").and_then(Value::as_str);
            match path_type {
                None => errs.push(FieldError::required(
                    format!("{pat}.pathType"),
                    "pathType must be specified",
                )),
                Some(t) if !PATH_TYPES.contains(&t) => errs.push(FieldError::new(
                    format!("{pat}.pathType"),
                    Reason::NotSupported,
                    Some(format!("{t:?}")),
                    "supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"",
                )),
                Some(_) => {}
            }
            let p = path.get("path").and_then(Value::as_str).unwrap_or("");
            if matches!(path_type, Some("Exact" | "Prefix")) || !p.is_empty() {
                if !p.starts_with('/') {
                    errs.push(FieldError::invalid(
                        format!("{pat}.path"),
                        p,
                        "must be an absolute path",
                    ));
                } else if matches!(path_type, Some("Exact" | "Prefix"))
                    && (p.contains("//") || p.split('/').any(|s| s == "." || s == ".."))
                {
                    errs.push(FieldError::invalid(
                        format!("{pat}.path"),
                        p,
                        "must not contain '//', '/./' or '/../' segments",
                    ));
                }
            }
            match path.get("backend") {
                Some(b) => validate_backend(b, &format!("{pat}.backend"), errs),
                None => errs.push(FieldError::required(format!("{pat}.backend"), "")),
            }
        }
    }
    for (i, tls) in spec
        .get("tls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (j, host) in tls
            .get("hosts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(e) = host
                .as_str()
                .and_then(|h| host_errors(h, &format!("spec.tls[{i}].hosts[{j}]")))
            {
                errs.push(e);
            }
        }
    }
}

/// The name of the default IngressClass among `classes` (JSON objects), if exactly one
/// is marked.
pub fn default_class(classes: &[Value]) -> Option<String> {
    let marked: Vec<&str> = classes
        .iter()
        .filter(|c| {
            c.pointer("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true")
        })
        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    match marked.as_slice() {
        [one] => Some((*one).to_owned()),
        _ => None,
    }
}

impl Strategy for IngressStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn printer(&self) -> &'static printers::Printer {
        &printers::INGRESS
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_spec(obj, errs);
    }

    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        _target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            let has_class = obj.pointer("/spec/ingressClassName").is_some()
                || obj
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(CLASS_ANNOTATION))
                    .is_some();
            if has_class {
                return Ok(Admitted::none());
            }
            let prefix =
                crate::store::collection_prefix("networking.k8s.io", "ingressclasses", None);
            let listed = state
                .store
                .list(&prefix)
                .await
                .map_err(|e| ApiError::from_store(e, Default::default()))?;
            let classes: Vec<Value> = listed
                .items
                .iter()
                .filter_map(|o| serde_json::from_slice(&o.value).ok())
                .collect();
            if let (Some(class), Some(spec)) = (
                default_class(&classes),
                obj.get_mut("spec").and_then(Value::as_object_mut),
            ) {
                spec.insert("ingressClassName".into(), Value::String(class));
            }
            Ok(Admitted::none())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate_spec(&json!({ "spec": spec }), &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ingresses_are_validated_with_kubernetes_field_paths() {
        let svc = json!({"service": {"name": "web", "port": {"number": 80}}});
        assert_eq!(
            errors(json!({"rules": [{"host": "a.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": svc}]}}]})),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(json!({"rules": [{"host": "*.example", "http": {"paths": [
                {"path": "/x", "pathType": "Exact", "backend": svc},
                {"pathType": "ImplementationSpecific", "backend": svc}]}}]})),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(json!({})),
            vec!["spec: Invalid value: \"\": either `defaultBackend` or `rules` must be specified"]
        );
        let errs = errors(json!({"rules": [{"host": "Bad_Host", "http": {"paths": [
            {"path": "rel", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "pathType": "Regex", "backend": svc},
            {"path": "/", "backend": svc}]}}]}));
        assert_eq!(
            errs,
            vec![
                format!(
                    "spec.rules[0].host: Invalid value: \"Bad_Host\": {}",
                    crate::api::validation::DNS1123_SUBDOMAIN_MSG
                ),
                "spec.rules[0].http.paths[0].path: Invalid value: \"rel\": must be an absolute path".to_string(),
                "spec.rules[0].http.paths[0].backend.service.port: Invalid value: \"\": port name or number is required".to_string(),
                "spec.rules[0].http.paths[1].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\"".to_string(),
                "spec.rules[0].http.paths[2].pathType: Required value: pathType must be specified".to_string(),
            ]
        );
        assert_eq!(
            errors(json!({"defaultBackend": svc, "tls": [{"hosts": ["10.0.0.1"]}]})),
            vec![
                "spec.tls[0].hosts[0]: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address"
            ]
        );
    }

    #[test]
    fn the_default_class_is_the_one_marked() {
        let class = |name: &str, default: &str| json!({"metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: default}}});
        assert_eq!(
            default_class(&[class("a", "false"), class("wharf", "true")]),
            Some("wharf".into())
        );
        assert_eq!(
            default_class(&[class("a", "true"), class("wharf", "true")]),
            None
        );
    }
}
