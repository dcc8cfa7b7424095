//! Pod volumes as host directories the runtime preopens in the guest.
//!
//! - `emptyDir`: a directory under the node's data dir, per pod, shared by the pod's
//!   containers, removed with the pod;
//! - `configMap` and `secret`: a directory holding one file per key (or per `items`
//!   entry), written before the containers start and mounted read-only;
//! - `hostPath`: the host directory itself, only when the node allows it.
//!
//! Nothing else of the host file system is visible to a guest.

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wharf_runtime::Mount;

/// Where a pod's volumes live on the node.
pub fn pod_dir(data_dir: &Path, pod_uid: &str) -> PathBuf {
    data_dir.join("pods").join(pod_uid)
}

/// The data a configMap or secret volume projects: key → bytes.
pub type Projection = BTreeMap<String, Vec<u8>>;

/// Which ConfigMaps and Secrets (by name) the pod's volumes project.
pub fn projected_sources(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = &v.secret
            && let Some(name) = &s.secret_name
        {
            secrets.push(name.clone());
        }
    }
    (cms, secrets)
}

/// A ConfigMap's data (and binaryData) as bytes.
pub fn config_map_projection(
    data: Option<&BTreeMap<String, String>>,
    binary: Option<&BTreeMap<String, Vec<u8>>>,
) -> Projection {
    let mut out: Projection = data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    for (k, v) in binary.into_iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Decodes base64 secret data as the API returns it in JSON.
pub fn decode_secret_value(v: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(v).ok()
}

/// Makes every volume's directory; returns volume name → host directory.
/// Blocking file I/O: call from `spawn_blocking`.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    config_maps: &BTreeMap<String, Projection>,
    secrets: &BTreeMap<String, Projection>,
    allow_host_path: bool,
) -> Result<BTreeMap<String, (PathBuf, bool)>, String> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&v.name);
        let (path, read_only) = prepare_one(v, &dir, config_maps, secrets, allow_host_path)?;
        out.insert(v.name.clone(), (path, read_only));
    }
    Ok(out)
}

fn prepare_one(
    v: &Volume,
    dir: &Path,
    config_maps: &BTreeMap<String, Projection>,
    secrets: &BTreeMap<String, Projection>,
    allow_host_path: bool,
) -> Result<(PathBuf, bool), String> {
    let mkdir = |d: &Path| {
        std::fs::create_dir_all(d)
            .map_err(|e| format!("volume {:?}: creating {}: {e}", v.name, d.display()))
    };
    if v.empty_dir.is_some() {
        mkdir(dir)?;
        return Ok((dir.to_path_buf(), false));
    }
    if let Some(h) = &v.host_path {
        if !allow_host_path {
            return Err(format!(
                "volume {:?}: hostPath volumes are not allowed on this node",
                v.name
            ));
        }
        let path = PathBuf::from(&h.path);
        if h.type_.as_deref() == Some("DirectoryOrCreate") {
            mkdir(&path)?;
        }
        if !path.is_dir() {
            return Err(format!(
                "volume {:?}: hostPath {} is not a directory",
                v.name,
                path.display()
            ));
        }
        return Ok((path, false));
    }
    let (data, items, optional, what) = if let Some(cm) = &v.config_map {
        (
            config_maps.get(&cm.name),
            cm.items.as_ref(),
            cm.optional.unwrap_or(false),
            format!("configmap \"{}\"", cm.name),
        )
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        (
            secrets.get(&name),
            s.items.as_ref(),
            s.optional.unwrap_or(false),
            format!("secret \"{name}\""),
        )
    } else {
        return Err(format!(
            "volume {:?}: only emptyDir, configMap, secret and hostPath volumes are supported",
            v.name
        ));
    };
    // Written anew each time: a fresh directory, files, then swapped in place.
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    mkdir(&staging)?;
    match data {
        Some(data) => {
            let files: Vec<(String, &Vec<u8>)> = match items {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        data.get(&i.key)
                            .map(|d| (i.path.clone(), d))
                            .ok_or_else(|| {
                                format!("volume {:?}: key {:?} not found in {what}", v.name, i.key)
                            })
                    })
                    .collect::<Result<_, _>>()?,
                None => data.iter().map(|(k, d)| (k.clone(), d)).collect(),
            };
            for (rel, bytes) in files {
                if rel.split('/').any(|p| p == ".." || p.is_empty()) {
                    return Err(format!("volume {:?}: invalid path {rel:?}", v.name));
                }
                let file = staging.join(&rel);
                if let Some(parent) = file.parent() {
                    mkdir(parent)?;
                }
                std::fs::write(&file, bytes)
                    .map_err(|e| format!("volume {:?}: writing {rel}: {e}", v.name))?;
            }
        }
        None if optional => {}
        None => return Err(format!("{what} not found")),
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).map_err(|e| format!("volume {:?}: {e}", v.name))?;
    Ok((dir.to_path_buf(), true))
}

/// The runtime mounts of one container.
pub fn mounts(
    c: &Container,
    volumes: &BTreeMap<String, (PathBuf, bool)>,
) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let (path, forced_ro) = volumes
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {:?}: no such volume", m.name))?;
        let mut host = path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|p| p == "..") {
                return Err(format!(
                    "volumeMount {:?}: subPath may not contain '..'",
                    m.name
                ));
            }
            host = host.join(sub);
        }
        out.push(Mount {
            host_path: host,
            guest_path: m.mount_path.clone(),
            read_only: *forced_ro || m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projects_config_maps_and_refuses_host_paths_by_default() {
        let dir = tempfile::tempdir().expect("tmp");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "a.wasm",
                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"},
                                         {"name": "scratch", "mountPath": "/tmp"}]}],
                     "volumes": [{"name": "cfg", "configMap": {"name": "settings"}},
                                 {"name": "scratch", "emptyDir": {}}]}
        }))
        .expect("pod");
        let mut cms = BTreeMap::new();
        cms.insert(
            "settings".to_string(),
            Projection::from([("mode".to_string(), b"fast".to_vec())]),
        );
        let vols = prepare(&pod, dir.path(), &cms, &BTreeMap::new(), false).expect("prepare");
        let (cfg, ro) = &vols["cfg"];
        assert!(*ro);
        assert_eq!(
            std::fs::read_to_string(cfg.join("mode")).expect("file"),
            "fast"
        );
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let m = mounts(c, &vols).expect("mounts");
        assert_eq!(m[0].guest_path, "/etc/app");
        assert!(m[0].read_only && !m[1].read_only);

        let missing = prepare(&pod, dir.path(), &BTreeMap::new(), &BTreeMap::new(), false);
        assert_eq!(missing, Err("configmap \"settings\" not found".into()));

        let host: Pod = serde_json::from_value(json!({
            "metadata": {"name": "h"},
            "spec": {"containers": [], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
        }))
        .expect("pod");
        assert!(prepare(&host, dir.path(), &BTreeMap::new(), &BTreeMap::new(), false).is_err());
        assert!(prepare(&host, dir.path(), &BTreeMap::new(), &BTreeMap::new(), true).is_ok());
    }
}
