//! Turning a URL into what it names: the kind, namespace, name and subresource.
//!
//! Kubernetes paths are ambiguous at one point: `/api/v1/namespaces/NAME/status` is the
//! status of a Namespace, while `/api/v1/namespaces/NS/pods` is a collection inside one.
//! As kube-apiserver's request-info resolver does, a third segment that is a namespace
//! subresource (`status`, `finalize`) names the Namespace; anything else is a namespaced
//! resource.

use super::error::ApiError;
use crate::api::kinds::{self, ResourceKind};

/// What a resource URL names.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: &'static ResourceKind,
    /// The namespace from the URL; `None` for cluster-scoped kinds and all-namespace lists.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Resolves `rest`, the path after `/api/v1/` or `/apis/GROUP/VERSION/`.
pub fn parse(group: &str, version: &str, rest: &str) -> Result<Target, ApiError> {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, parts) = if parts.len() >= 3
        && parts[0] == "namespaces"
        && (parts.len() > 3 || !NAMESPACE_SUBRESOURCES.contains(&parts[2]))
    {
        (Some(parts[1].to_string()), &parts[2..])
    } else {
        (None, &parts[..])
    };
    let Some(plural) = parts.first() else {
        return Err(not_served(group, version, ""));
    };
    let kind = kinds::find_by_plural(group, version, plural)
        .ok_or_else(|| not_served(group, version, plural))?;
    if namespace.is_some() && !kind.namespaced {
        return Err(ApiError::BadRequest(format!(
            "{} is not namespaced; its path has no namespaces/NS segment",
            kind.qualified_plural()
        )));
    }
    let target = Target {
        kind,
        namespace,
        name: parts.get(1).map(|s| s.to_string()),
        subresource: parts.get(2).map(|s| s.to_string()),
    };
    if parts.len() > 3 {
        return Err(ApiError::BadRequest(format!("unsupported path /{rest}")));
    }
    Ok(target)
}

fn not_served(group: &str, version: &str, plural: &str) -> ApiError {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    ApiError::NotFound {
        subject: super::error::Subject {
            group: group.to_string(),
            resource: plural.to_string(),
            name: String::new(),
        },
        message: format!(
            "the server could not find the requested resource: {gv} {plural:?} is not served; served kinds are {}",
            kinds::served_list()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_kubernetes_paths() {
        let t = parse("", "v1", "namespaces/default/pods/web/status").expect("pod status");
        assert_eq!(t.kind.kind, "Pod");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("status"));

        let t = parse("", "v1", "namespaces/prod/status").expect("namespace status");
        assert_eq!(t.kind.kind, "Namespace");
        assert_eq!(t.name.as_deref(), Some("prod"));
        assert_eq!(t.subresource.as_deref(), Some("status"));

        let t = parse("", "v1", "namespaces/prod").expect("namespace");
        assert_eq!(
            (t.kind.kind, t.name.as_deref(), t.namespace),
            ("Namespace", Some("prod"), None)
        );

        let t = parse("", "v1", "pods").expect("all pods");
        assert_eq!(
            (t.kind.kind, t.namespace.clone(), t.name.clone()),
            ("Pod", None, None)
        );

        let t = parse("apps", "v1", "namespaces/a/deployments").expect("deployments");
        assert_eq!(t.kind.kind, "Deployment");
        assert!(parse("apps", "v2", "namespaces/a/deployments").is_err());
        assert!(parse("", "v1", "namespaces/a/nodes").is_err());
        let err = parse("", "v1", "widgets").expect_err("unknown");
        assert!(err.to_string().contains("served kinds are"), "{err}");
    }
}
