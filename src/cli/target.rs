//! What `get` and `delete` are asked for on the command line, kubectl's ways:
//! `KIND[,KIND...] [NAME...]` or `KIND/NAME...`, kinds by any name the served-kinds table
//! knows (`po`, `pods`, `pod`, `Pod`, `deployments.apps`), and `all` for the workload kinds.

use anyhow::{anyhow, bail};
use wharf_control::api::kinds::{KINDS, ResourceKind, resolve};

/// One kind, and one name of it or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: &'static ResourceKind,
    pub name: Option<String>,
}

/// Parses the positional arguments of `get` or `delete`.
pub fn parse(args: &[String]) -> anyhow::Result<Vec<Target>> {
    let Some((first, names)) = args.split_first() else {
        bail!(
            "you must specify the type of resource (e.g. `pods`, `deployments`); served: {}",
            served()
        );
    };
    if first.contains('/') {
        return args
            .iter()
            .map(|arg| match arg.split_once('/') {
                Some((kind, name)) if !name.is_empty() => {
                    Ok(Target { kind: kind_named(kind)?, name: Some(name.to_string()) })
                }
                _ => bail!("there is no name in \"{arg}\": use KIND/NAME for every argument, or KIND NAME..."),
            })
            .collect();
    }
    let kinds = kinds(first)?;
    if names.is_empty() {
        return Ok(kinds
            .into_iter()
            .map(|kind| Target { kind, name: None })
            .collect());
    }
    Ok(kinds
        .into_iter()
        .flat_map(|kind| {
            names.iter().map(move |name| Target {
                kind,
                name: Some(name.clone()),
            })
        })
        .collect())
}

/// `pods,svc` or `all` to kinds, in the order given.
pub fn kinds(spec: &str) -> anyhow::Result<Vec<&'static ResourceKind>> {
    let mut kinds: Vec<&'static ResourceKind> = Vec::new();
    for name in spec.split(',').filter(|s| !s.is_empty()) {
        let found = if name == "all" {
            KINDS.iter().filter(|k| k.in_all).collect()
        } else {
            vec![kind_named(name)?]
        };
        for kind in found {
            if !kinds.iter().any(|k| std::ptr::eq(*k, kind)) {
                kinds.push(kind);
            }
        }
    }
    if kinds.is_empty() {
        bail!("no resource type in \"{spec}\"");
    }
    Ok(kinds)
}

fn kind_named(name: &str) -> anyhow::Result<&'static ResourceKind> {
    resolve(name).ok_or_else(|| {
        anyhow!(
            "the server doesn't have a resource type \"{name}\"; served: {}",
            served()
        )
    })
}

fn served() -> String {
    KINDS
        .iter()
        .map(|k| k.qualified_plural())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Vec<(&'static str, Option<String>)> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args)
            .unwrap()
            .into_iter()
            .map(|t| (t.kind.kind, t.name))
            .collect()
    }

    #[test]
    fn short_names_lists_and_names() {
        assert_eq!(parsed(&["po"]), [("Pod", None)]);
        assert_eq!(
            parsed(&["deploy,svc"]),
            [("Deployment", None), ("Service", None)]
        );
        assert_eq!(
            parsed(&["deployments.apps", "a", "b"]),
            [
                ("Deployment", Some("a".into())),
                ("Deployment", Some("b".into()))
            ]
        );
        assert_eq!(
            parsed(&["pod/x", "rs/y"]),
            [("Pod", Some("x".into())), ("ReplicaSet", Some("y".into()))]
        );
        for (short, kind) in [
            ("ns", "Namespace"),
            ("cm", "ConfigMap"),
            ("ep", "Endpoints"),
            ("no", "Node"),
            ("ds", "DaemonSet"),
            ("ev", "Event"),
            ("Pod", "Pod"),
            ("leases", "Lease"),
        ] {
            assert_eq!(parsed(&[short]), [(kind, None)], "{short}");
        }
    }

    #[test]
    fn all_is_the_workload_kinds_without_duplicates() {
        let kinds: Vec<_> = parsed(&["all,po"]).into_iter().map(|(k, _)| k).collect();
        assert!(
            kinds.contains(&"Pod") && kinds.contains(&"Deployment") && kinds.contains(&"Service")
        );
        assert!(!kinds.contains(&"ConfigMap"));
        assert_eq!(kinds.iter().filter(|k| **k == "Pod").count(), 1);
    }

    #[test]
    fn unknown_kinds_and_missing_names_are_errors() {
        let err = parse(&["widgets".to_string()]).unwrap_err().to_string();
        assert!(
            err.starts_with("the server doesn't have a resource type \"widgets\""),
            "{err}"
        );
        assert!(err.contains("deployments.apps"), "{err}");
        assert!(parse(&["pod/".to_string()]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["deployments.batch".to_string()]).is_err());
    }
}
