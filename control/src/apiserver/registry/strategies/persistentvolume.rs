//! PersistentVolumes: a piece of storage in the cluster. wharf's nodes mount only
//! directories, so a volume is `local` (a directory on one node, which its required node
//! affinity names) or `hostPath`; any other source is refused at admission rather than
//! left for a pod that would never start. Kubernetes' validation and defaults otherwise
//! (capacity, access modes, reclaim policy `Retain`, the source immutable); a new volume
//! starts `Pending` until the PV controller looks at it.

use super::super::Strategy;
use crate::api::printers;
use crate::api::validation::{self, FieldError, Reason};
use serde_json::{Value, json};

pub struct PersistentVolumeStrategy;

pub static STRATEGY: PersistentVolumeStrategy = PersistentVolumeStrategy;

/// The access modes Kubernetes knows, sorted as its messages list them.
pub const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// Volume sources a node could be asked to mount; wharf mounts the first two.
const SOURCES: &[&str] = &[
    "local",
    "hostPath",
    "nfs",
    "csi",
    "iscsi",
    "fc",
    "cephfs",
    "rbd",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
];

impl Strategy for PersistentVolumeStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::stateful::PERSISTENT_VOLUME
    }

    fn subresources(&self) -> &'static [&'static super::super::subresources::Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        if let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
    }

    fn default(&self, obj: &mut Value) {
        validation::set_default(obj, "/spec/persistentVolumeReclaimPolicy", json!("Retain"));
        validation::set_default(obj, "/spec/volumeMode", json!("Filesystem"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate(obj.get("spec").unwrap_or(&Value::Null), errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let source = |v: &Value| {
            SOURCES
                .iter()
                .map(|s| v.pointer(&format!("/spec/{s}")).cloned())
                .collect::<Vec<_>>()
        };
        if source(old) != source(new) {
            errs.push(FieldError::new(
                "spec.persistentvolumesource",
                Reason::Forbidden,
                None,
                "spec.persistentvolumesource is immutable after creation",
            ));
        }
        let affinity = |v: &Value| v.pointer("/spec/nodeAffinity").cloned();
        if affinity(old).is_some() && affinity(old) != affinity(new) {
            errs.push(FieldError::new(
                "spec.nodeAffinity",
                Reason::Invalid,
                None,
                "field is immutable",
            ));
        }
    }
}

/// Capacity, access modes and the accessModes shared with claims.
pub(crate) fn validate_access_modes(spec: &Value, at: &str, errs: &mut Vec<FieldError>) {
    let modes = spec.get("accessModes").and_then(Value::as_array);
    match modes {
        None => errs.push(FieldError::required(format!("{at}.accessModes"), "")),
        Some(m) if m.is_empty() => errs.push(FieldError::required(format!("{at}.accessModes"), "")),
        Some(m) => {
            for mode in m.iter().filter_map(Value::as_str) {
                if !ACCESS_MODES.contains(&mode) {
                    let list = ACCESS_MODES
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    errs.push(FieldError::new(
                        format!("{at}.accessModes"),
                        Reason::NotSupported,
                        Some(format!("{mode:?}")),
                        format!("supported values: {list}"),
                    ));
                }
            }
        }
    }
}

/// A storage quantity that must be there and be positive.
pub(crate) fn validate_storage(q: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    match q.and_then(Value::as_str) {
        None => errs.push(FieldError::required(field, "")),
        Some(s) => match crate::api::quantity::value(s) {
            Some(v) if v > 0 => {}
            _ => errs.push(FieldError::invalid(field, s, "must be greater than zero")),
        },
    }
}

pub fn validate(spec: &Value, errs: &mut Vec<FieldError>) {
    match spec.get("capacity").and_then(Value::as_object) {
        Some(c) if !c.is_empty() => {
            validate_storage(c.get("storage"), "spec.capacity[storage]", errs)
        }
        _ => errs.push(FieldError::required("spec.capacity", "")),
    }
    validate_access_modes(spec, "spec", errs);
    if let Some(p) = spec
        .get("persistentVolumeReclaimPolicy")
        .and_then(Value::as_str)
        && !["Delete", "Recycle", "Retain"].contains(&p)
    {
        errs.push(FieldError::new(
            "spec.persistentVolumeReclaimPolicy",
            Reason::NotSupported,
            Some(format!("{p:?}")),
            "supported values: \"Delete\", \"Recycle\", \"Retain\"",
        ));
    }
    let present: Vec<&str> = SOURCES
        .iter()
        .copied()
        .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match present.as_slice() {
        [] => errs.push(FieldError::required("spec", "must specify a volume type")),
        [_, _, ..] => errs.push(FieldError::new(
            "spec",
            Reason::Forbidden,
            None,
            "may not specify more than 1 volume type",
        )),
        ["local"] => {
            check_path(spec.pointer("/local/path"), "spec.local.path", errs);
            if spec
                .pointer("/nodeAffinity/required")
                .is_none_or(Value::is_null)
            {
                errs.push(FieldError::required(
                    "spec.nodeAffinity",
                    "Local volume requires node affinity",
                ));
            }
        }
        ["hostPath"] => check_path(spec.pointer("/hostPath/path"), "spec.hostPath.path", errs),
        [other] => errs.push(FieldError::new(
            format!("spec.{other}"),
            Reason::Forbidden,
            None,
            "wharf nodes mount only local and hostPath volumes",
        )),
    }
}

fn check_path(path: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    match path.and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required(field, "")),
        Some(p) if !p.starts_with('/') => {
            errs.push(FieldError::invalid(field, p, "must be an absolute path"))
        }
        Some(p) if p.split('/').any(|c| c == "..") => {
            errs.push(FieldError::invalid(field, p, "must not contain '..'"))
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(&spec, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn local_volumes_need_a_path_and_node_affinity() {
        assert_eq!(
            errors(
                json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                          "local": {"path": "rel"}})
            ),
            [
                "spec.local.path: Invalid value: \"rel\": must be an absolute path",
                "spec.nodeAffinity: Required value: Local volume requires node affinity"
            ]
        );
        assert_eq!(
            errors(json!({"accessModes": ["ReadWriteSome"]})),
            [
                "spec.capacity: Required value",
                "spec.accessModes: Unsupported value: \"ReadWriteSome\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec: Required value: must specify a volume type"
            ]
        );
        assert!(
            errors(
                json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                          "hostPath": {"path": "/srv/data"}})
            )
            .is_empty()
        );
    }

    #[test]
    fn the_source_is_immutable() {
        let old = json!({"spec": {"hostPath": {"path": "/a"}}});
        let new = json!({"spec": {"hostPath": {"path": "/b"}}});
        let mut errs = Vec::new();
        STRATEGY.validate_update(&old, &old, &mut errs);
        assert!(errs.is_empty());
        STRATEGY.validate_update(&old, &new, &mut errs);
        assert_eq!(
            errs[0].to_string(),
            "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"
        );
    }
}
