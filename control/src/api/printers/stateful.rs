//! The columns of the storage kinds and StatefulSets, as kubectl prints them.

use super::{Obj, Printer, basics, containers};
use crate::api::storage::{DEFAULT_CLASS_ANNOTATION, access_mode_short};

fn access_modes(o: Obj<'_>, ptr: &str) -> String {
    let modes: Vec<&str> = o
        .arr(ptr)
        .iter()
        .filter_map(serde_json::Value::as_str)
        .map(access_mode_short)
        .collect();
    modes.join(",")
}

pub static STORAGE_CLASS: Printer = Printer {
    narrow: &[
        "NAME",
        "PROVISIONER",
        "RECLAIMPOLICY",
        "VOLUMEBINDINGMODE",
        "ALLOWVOLUMEEXPANSION",
        "AGE",
    ],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, mut name, age) = basics(v, now);
        let annotation = format!(
            "/metadata/annotations/{}",
            DEFAULT_CLASS_ANNOTATION.replace('/', "~1")
        );
        if o.str(&annotation) == "true" {
            name.push_str(" (default)");
        }
        vec![
            name,
            o.str("/provisioner").to_string(),
            o.str_or("/reclaimPolicy", "Delete").to_string(),
            o.str_or("/volumeBindingMode", "Immediate").to_string(),
            o.bool("/allowVolumeExpansion").to_string(),
            age,
        ]
    },
};

pub static PERSISTENT_VOLUME: Printer = Printer {
    narrow: &[
        "NAME",
        "CAPACITY",
        "ACCESS MODES",
        "RECLAIM POLICY",
        "STATUS",
        "CLAIM",
        "STORAGECLASS",
        "VOLUMEATTRIBUTESCLASS",
        "REASON",
        "AGE",
    ],
    extra: &["VOLUMEMODE"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let claim = match (
            o.str("/spec/claimRef/namespace"),
            o.str("/spec/claimRef/name"),
        ) {
            (_, "") => String::new(),
            (ns, n) => format!("{ns}/{n}"),
        };
        let mut cells = vec![
            name,
            o.str("/spec/capacity/storage").to_string(),
            access_modes(o, "/spec/accessModes"),
            o.str("/spec/persistentVolumeReclaimPolicy").to_string(),
            o.str("/status/phase").to_string(),
            claim,
            o.str("/spec/storageClassName").to_string(),
            o.str_or("/spec/volumeAttributesClassName", "<unset>")
                .to_string(),
            o.str("/status/reason").to_string(),
            age,
        ];
        if wide {
            cells.push(o.str("/spec/volumeMode").to_string());
        }
        cells
    },
};

pub static PERSISTENT_VOLUME_CLAIM: Printer = Printer {
    narrow: &[
        "NAME",
        "STATUS",
        "VOLUME",
        "CAPACITY",
        "ACCESS MODES",
        "STORAGECLASS",
        "VOLUMEATTRIBUTESCLASS",
        "AGE",
    ],
    extra: &["VOLUMEMODE"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let bound = o.str("/status/phase") == "Bound";
        let mut cells = vec![
            name,
            o.str("/status/phase").to_string(),
            o.str("/spec/volumeName").to_string(),
            if bound {
                o.str("/status/capacity/storage").to_string()
            } else {
                String::new()
            },
            if bound {
                access_modes(o, "/status/accessModes")
            } else {
                String::new()
            },
            o.str("/spec/storageClassName").to_string(),
            o.str_or("/spec/volumeAttributesClassName", "<unset>")
                .to_string(),
            age,
        ];
        if wide {
            cells.push(o.str("/spec/volumeMode").to_string());
        }
        cells
    },
};

pub static STATEFUL_SET: Printer = Printer {
    narrow: &["NAME", "READY", "AGE"],
    extra: &["CONTAINERS", "IMAGES"],
    wide: None,
    cells: |v, wide, now| {
        let (o, name, age) = basics(v, now);
        let mut cells = vec![
            name,
            format!(
                "{}/{}",
                o.int("/status/readyReplicas"),
                o.int_or("/spec/replicas", 1)
            ),
            age,
        ];
        if wide {
            let (names, images) = containers(o.arr("/spec/template/spec/containers"));
            cells.extend([names, images]);
        }
        cells
    },
};

pub static CONTROLLER_REVISION: Printer = Printer {
    narrow: &["NAME", "CONTROLLER", "REVISION", "AGE"],
    extra: &[],
    wide: None,
    cells: |v, _, now| {
        let (o, name, age) = basics(v, now);
        let controller = o
            .arr("/metadata/ownerReferences")
            .iter()
            .find(|r| r.get("controller").and_then(serde_json::Value::as_bool) == Some(true))
            .map(|r| {
                let kind = r
                    .get("kind")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                let api = r
                    .get("apiVersion")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                let group = api.split_once('/').map_or("", |(g, _)| g);
                let n = r
                    .get("name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                format!("{}.{group}/{n}", kind.to_lowercase())
            })
            .unwrap_or_else(|| "<none>".into());
        vec![name, controller, o.int("/revision").to_string(), age]
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use serde_json::json;

    #[test]
    fn claims_and_classes_print_as_kubectl_does() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let pvc = json!({"metadata": {"name": "data-web-0", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"volumeName": "pvc-1", "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        assert_eq!(
            (PERSISTENT_VOLUME_CLAIM.cells)(&pvc, false, now),
            [
                "data-web-0",
                "Bound",
                "pvc-1",
                "1Gi",
                "RWO",
                "local-path",
                "<unset>",
                "60s"
            ]
        );
        let sc = json!({"metadata": {"name": "local-path", "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": "wharf.dev/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            (STORAGE_CLASS.cells)(&sc, false, now),
            [
                "local-path (default)",
                "wharf.dev/local-path",
                "Delete",
                "WaitForFirstConsumer",
                "false",
                "60s"
            ]
        );
    }
}
