//! A container's environment, as Kubernetes builds it: `envFrom` sources first, then
//! `env` entries in order, with `$(VAR)` references to earlier variables expanded.
//!
//! Values may come from ConfigMaps and Secrets (`configMapKeyRef`, `secretKeyRef`,
//! `envFrom`) and from the pod itself (`fieldRef`: the downward API). The worker first
//! asks [`references`] which objects to fetch, fetches them, then calls the pure
//! [`resolve`]; a missing required reference is the `CreateContainerConfigError` message.

use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::{BTreeMap, BTreeSet};

/// ConfigMaps and Secrets (by name) that a container's environment reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

pub fn references(c: &Container) -> References {
    let mut r = References::default();
    for e in c.env.iter().flatten() {
        if let Some(from) = &e.value_from {
            if let Some(cm) = &from.config_map_key_ref {
                r.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &from.secret_key_ref {
                r.secrets.insert(s.name.clone());
            }
        }
    }
    for f in c.env_from.iter().flatten() {
        if let Some(cm) = &f.config_map_ref {
            r.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &f.secret_ref {
            r.secrets.insert(s.name.clone());
        }
    }
    r
}

/// The data that was fetched: name → key → value (Secret values already decoded).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// Pod facts the downward API can expose.
#[derive(Debug, Default, Clone)]
pub struct Downward {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

fn field_ref(pod: &Pod, path: &str, facts: &Downward) -> Result<String, String> {
    let meta = &pod.metadata;
    let label_or_annotation = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| {
                map.as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default()
            })
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(v) = label_or_annotation("metadata.labels['", &meta.labels) {
                v
            } else if let Some(v) = label_or_annotation("metadata.annotations['", &meta.annotations)
            {
                v
            } else {
                return Err(format!("unsupported fieldRef {path:?}"));
            }
        }
    })
}

/// Expands `$(NAME)` with variables defined so far; `$$` escapes; unknown stays as is.
fn expand(value: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of `c`, or the message of why it cannot be built.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
    facts: &Downward,
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(name, _)| *name != k);
        vars.push((k, v));
    };
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(cm) = &f.config_map_ref {
            (
                "configmap",
                cm.name.clone(),
                cm.optional.unwrap_or(false),
                sources.config_maps.get(&cm.name),
            )
        } else if let Some(s) = &f.secret_ref {
            (
                "secret",
                s.name.clone(),
                s.optional.unwrap_or(false),
                sources.secrets.get(&s.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut vars, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional => {}
            None => return Err(format!("{kind} \"{name}\" not found")),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                match sources.config_maps.get(&r.name).map(|d| d.get(&r.key)) {
                    Some(Some(v)) => v.clone(),
                    _ if r.optional.unwrap_or(false) => continue,
                    Some(None) => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {}",
                            r.key, r.name
                        ));
                    }
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match sources.secrets.get(&r.name).map(|d| d.get(&r.key)) {
                    Some(Some(v)) => v.clone(),
                    _ if r.optional.unwrap_or(false) => continue,
                    Some(None) => {
                        return Err(format!("couldn't find key {} in Secret {}", r.key, r.name));
                    }
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else if let Some(f) = &from.field_ref {
                field_ref(pod, &f.field_path, facts)?
            } else {
                return Err(format!("env {}: resourceFieldRef is not supported", e.name));
            }
        } else {
            String::new()
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "prod", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{
                "name": "app", "image": "a.wasm",
                "envFrom": [{"configMapRef": {"name": "base"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "base", "key": "greeting"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "URL", "value": "http://$(IP):8080/$(MISSING)$$"}
                ]}]}
        }))
        .expect("pod")
    }

    #[test]
    fn resolves_every_source_in_order() {
        let pod = pod();
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let refs = references(c);
        assert_eq!(refs.config_maps.iter().collect::<Vec<_>>(), ["base"]);
        assert_eq!(refs.secrets.iter().collect::<Vec<_>>(), ["creds"]);
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "base".into(),
            [("greeting".to_string(), "hi".to_string())].into(),
        );
        sources.secrets.insert(
            "creds".into(),
            [("token".to_string(), "s3".to_string())].into(),
        );
        let facts = Downward {
            pod_ip: "127.64.0.2".into(),
            host_ip: "127.0.0.1".into(),
            node_name: "node-1".into(),
        };
        let env = resolve(&pod, c, &sources, &facts).expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CFG_greeting"), Some("hi"));
        assert_eq!(get("GREETING"), Some("hi"));
        assert_eq!(get("TOKEN"), Some("s3"));
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("URL"), Some("http://127.64.0.2:8080/$(MISSING)$"));

        sources.secrets.clear();
        assert_eq!(
            resolve(&pod, c, &sources, &facts),
            Err("secret \"creds\" not found".into())
        );
    }
}
