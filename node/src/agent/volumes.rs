//! Pod volumes as host directories the runtime preopens in the guest.
//!
//! - `emptyDir`: a directory under the node's data dir, per pod, shared by the pod's
//!   containers, removed with the pod;
//! - `configMap` and `secret`: a directory holding one file per key (or per `items`
//!   entry), written before the containers start and mounted read-only;
//! - `hostPath`: the host directory itself, only when the node allows it;
//! - `persistentVolumeClaim`: the directory of the claim's bound PersistentVolume
//!   (`local.path` or `hostPath.path`), resolved by the worker through the API
//!   ([`claim_dir`]) and made here if missing. Volumes the `local-path` provisioner made
//!   live under [`storage_root`]; a volume elsewhere on the host runs only where hostPath
//!   volumes are allowed. A directory under the root whose PersistentVolume is gone
//!   (reclaim policy `Delete`) is removed ([`orphaned`]). Capacity is not enforced: the
//!   directory can grow as far as the node's file system lets it.
//!
//! Nothing else of the host file system is visible to a guest.

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use wharf_runtime::{Mount, private};

/// Where a pod's volumes live on the node.
pub fn pod_dir(data_dir: &Path, pod_uid: &str) -> PathBuf {
    data_dir.join("pods").join(pod_uid)
}

/// Where the node keeps `local-path` PersistentVolumes (published on its Node).
pub fn storage_root(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// The host directory of a claim's volume, given the PersistentVolume's path and the
/// node it is pinned to: refused when the volume belongs to another node, or lies
/// outside the node's storage root on a node that does not run hostPath volumes.
pub fn claim_dir(
    claim: &str,
    volume_path: Option<&str>,
    volume_node: Option<&str>,
    node: &str,
    root: &Path,
    allow_host_path: bool,
) -> Result<PathBuf, String> {
    let path = volume_path
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .ok_or_else(|| {
            format!("persistentvolumeclaim {claim:?}: its volume has no local or hostPath path")
        })?;
    if let Some(other) = volume_node.filter(|n| *n != node) {
        return Err(format!(
            "persistentvolumeclaim {claim:?}: its volume is on node {other:?}"
        ));
    }
    let climbs = path
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    if climbs || (!path.starts_with(root) && !allow_host_path) {
        return Err(format!(
            "persistentvolumeclaim {claim:?}: volume path {} is outside {} and hostPath volumes are not allowed on this node",
            path.display(),
            root.display()
        ));
    }
    Ok(path)
}

/// The entries of the storage root that no PersistentVolume names any more: what a
/// `Delete` reclaim leaves for the node to remove. `entries` are the names under the
/// root, `volume_paths` every volume's path (of any node).
pub fn orphaned(root: &Path, entries: &[String], volume_paths: &[String]) -> Vec<PathBuf> {
    entries
        .iter()
        .map(|e| root.join(e))
        .filter(|p| !volume_paths.iter().any(|v| Path::new(v) == p))
        .collect()
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
/// `claims` maps a claim name to its volume's directory ([`claim_dir`]).
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    config_maps: &BTreeMap<String, Projection>,
    secrets: &BTreeMap<String, Projection>,
    claims: &BTreeMap<String, PathBuf>,
    allow_host_path: bool,
) -> Result<BTreeMap<String, (PathBuf, bool)>, String> {
    let mut out = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(c) = &v.persistent_volume_claim {
            let dir = claims
                .get(&c.claim_name)
                .ok_or_else(|| format!("persistentvolumeclaim {:?} is not bound", c.claim_name))?;
            // The volume's own directory: owner-only, like an emptyDir.
            if !dir.is_dir() {
                private::create_private_dir(dir)
                    .map_err(|e| format!("volume {:?}: creating {}: {e}", v.name, dir.display()))?;
            }
            out.insert(v.name.clone(), (dir.clone(), c.read_only.unwrap_or(false)));
            continue;
        }
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
        private::create_private_dir(d)
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
            // The host's directory: made as the host's umask says, its mode left alone.
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("volume {:?}: creating {}: {e}", v.name, path.display()))?;
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
            "volume {:?}: only emptyDir, configMap, secret, hostPath and persistentVolumeClaim volumes are supported",
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
                let checked =
                    relative_inside(&rel).and_then(|()| match rel.split('/').any(str::is_empty) {
                        true => Err("must not contain empty path elements"),
                        false => Ok(()),
                    });
                if let Err(e) = checked {
                    return Err(format!("volume {:?}: path {rel:?}: {e}", v.name));
                }
                let file = staging.join(&rel);
                if let Some(parent) = file.parent() {
                    mkdir(parent)?;
                }
                // Owner-only on the host: the guest runs as the node's user.
                private::private_file_options()
                    .write(true)
                    .create_new(true)
                    .open(&file)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
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

/// The runtime mounts of one container. A `subPath` is resolved inside its volume by
/// [`sub_path_dir`] (created if missing, as Kubernetes does).
/// Blocking file I/O when [`mounts_touch_disk`]: then call from `spawn_blocking`.
pub fn mounts(
    c: &Container,
    volumes: &BTreeMap<String, (PathBuf, bool)>,
) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let (path, forced_ro) = volumes
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {:?}: no such volume", m.name))?;
        let host = match sub_path_of(m) {
            Some(sub) => sub_path_dir(path, sub)
                .map_err(|e| format!("volumeMount {:?}: subPath {sub:?}: {e}", m.name))?,
            None => path.clone(),
        };
        out.push(Mount {
            host_path: host,
            guest_path: m.mount_path.clone(),
            read_only: *forced_ro || m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Whether [`mounts`] of `c` resolves a `subPath` on disk; without one it only looks
/// names up.
pub fn mounts_touch_disk(c: &Container) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| sub_path_of(m).is_some())
}

fn sub_path_of(m: &k8s_openapi::api::core::v1::VolumeMount) -> Option<&str> {
    m.sub_path.as_deref().filter(|s| !s.is_empty())
}

/// Refuses a path that is absolute or climbs with `..` (a subPath, an `items[].path`), in
/// Kubernetes' words.
fn relative_inside(path: &str) -> Result<(), &'static str> {
    let path = Path::new(path);
    if path.is_absolute() {
        return Err("must be a relative path");
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err("must not contain '..'");
    }
    Ok(())
}

/// The directory `sub` names inside `volume`, made if missing, refused unless it stays inside
/// the volume. A guest writes into its emptyDir and could plant a symlink there (`escape ->
/// /`), and `PathBuf::join` with an absolute path replaces the base: so the path is walked one
/// component at a time, each component canonicalised (symlinks resolved) and checked to be
/// under the canonical volume directory before anything is created below it. What the
/// runtime mounts is the canonical path, never one that still goes through a symlink.
pub fn sub_path_dir(volume: &Path, sub: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    relative_inside(sub)?;
    let rel = Path::new(sub);
    let root = std::fs::canonicalize(volume)
        .map_err(|e| format!("volume directory {}: {e}", volume.display()))?;
    let mut dir = root.clone();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            continue; // `.`
        };
        let next = dir.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // `dir` is canonical and inside the volume, so this creates inside it.
                let mut builder = std::fs::DirBuilder::new();
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
                builder
                    .create(&next)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(|e| format!("creating {}: {e}", next.display()))?;
            }
            Err(e) => return Err(format!("{}: {e}", next.display())),
        }
        let canonical =
            std::fs::canonicalize(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        if !canonical.starts_with(&root) {
            return Err("resolves outside the volume".into());
        }
        dir = canonical;
    }
    if !dir.is_dir() {
        return Err("is not a directory".into());
    }
    Ok(dir)
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
        let vols = prepare(
            &pod,
            dir.path(),
            &cms,
            &BTreeMap::new(),
            &BTreeMap::new(),
            false,
        )
        .expect("prepare");
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

        let missing = prepare(
            &pod,
            dir.path(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            false,
        );
        assert_eq!(missing, Err("configmap \"settings\" not found".into()));

        let host: Pod = serde_json::from_value(json!({
            "metadata": {"name": "h"},
            "spec": {"containers": [], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
        }))
        .expect("pod");
        assert!(
            prepare(
                &host,
                dir.path(),
                &BTreeMap::new(),
                &BTreeMap::new(),
                &BTreeMap::new(),
                false
            )
            .is_err()
        );
        assert!(
            prepare(
                &host,
                dir.path(),
                &BTreeMap::new(),
                &BTreeMap::new(),
                &BTreeMap::new(),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn projected_item_paths_stay_inside_the_volume() {
        let dir = tempfile::tempdir().expect("tmp");
        let cms = BTreeMap::from([(
            "settings".to_string(),
            Projection::from([("mode".to_string(), b"fast".to_vec())]),
        )]);
        let with_path = |path: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [], "volumes": [{"name": "cfg", "configMap": {
                    "name": "settings", "items": [{"key": "mode", "path": path}]}}]}
            }))
            .expect("pod")
        };
        for (path, why) in [
            ("/etc/passwd", "must be a relative path"),
            ("../../escape", "must not contain '..'"),
            ("a//b", "must not contain empty path elements"),
        ] {
            let err = prepare(
                &with_path(path),
                dir.path(),
                &cms,
                &BTreeMap::new(),
                &BTreeMap::new(),
                false,
            )
            .expect_err(path);
            assert_eq!(err, format!("volume \"cfg\": path {path:?}: {why}"));
        }
        let vols = prepare(
            &with_path("conf/mode"),
            dir.path(),
            &cms,
            &BTreeMap::new(),
            &BTreeMap::new(),
            false,
        )
        .expect("a relative path");
        let file = vols["cfg"].0.join("conf/mode");
        assert_eq!(std::fs::read(&file).expect("file"), b"fast");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn mount_of(sub: &str) -> Container {
        serde_json::from_value(json!({"name": "a", "image": "a.wasm",
            "volumeMounts": [{"name": "scratch", "mountPath": "/data", "subPath": sub}]}))
        .expect("container")
    }

    #[test]
    fn sub_path_stays_inside_its_volume() {
        let dir = tempfile::tempdir().expect("tmp");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).expect("mkdir");
        let vols = BTreeMap::from([("scratch".to_string(), (scratch.clone(), false))]);
        let root = std::fs::canonicalize(&scratch).expect("canonical");

        // A relative subPath is made inside the volume, as Kubernetes does.
        let m = mounts(&mount_of("app/cache"), &vols).expect("relative subPath");
        assert_eq!(m[0].host_path, root.join("app/cache"));
        assert!(root.join("app/cache").is_dir());

        // Absolute: `join` would have replaced the volume with the host's root.
        let err = mounts(&mount_of("/"), &vols).expect_err("absolute subPath");
        assert_eq!(
            err,
            r#"volumeMount "scratch": subPath "/": must be a relative path"#
        );
        assert!(mounts(&mount_of("/etc"), &vols).is_err());
        // Climbing out.
        let err = mounts(&mount_of("a/../../x"), &vols).expect_err("..");
        assert!(err.contains("must not contain '..'"), "{err}");

        // A symlink the guest planted in its emptyDir, pointing at the host's root.
        std::os::unix::fs::symlink("/", scratch.join("escape")).expect("symlink");
        let err = mounts(&mount_of("escape"), &vols).expect_err("symlink to /");
        assert!(err.ends_with("resolves outside the volume"), "{err}");
        // ... and nothing is created through it.
        let marker = format!("wharf-subpath-test-{}", std::process::id());
        let err = mounts(&mount_of(&format!("escape/tmp/{marker}")), &vols).expect_err("below");
        assert!(err.ends_with("resolves outside the volume"), "{err}");
        assert!(!Path::new("/tmp").join(&marker).exists());
        // A symlink that stays inside is fine, and resolved to its target.
        std::os::unix::fs::symlink("app", scratch.join("inner")).expect("symlink");
        let m = mounts(&mount_of("inner/cache"), &vols).expect("inner symlink");
        assert_eq!(m[0].host_path, root.join("app/cache"));
    }

    #[test]
    fn claims_mount_their_volume_directory_on_its_node_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = storage_root(dir.path());
        let inside = root.join("pvc-1_default_data");
        let inside_str = inside.to_string_lossy().into_owned();
        assert_eq!(
            claim_dir("data", Some(&inside_str), Some("n1"), "n1", &root, false),
            Ok(inside.clone())
        );
        assert!(
            claim_dir("data", Some(&inside_str), Some("n2"), "n1", &root, false)
                .expect_err("another node's")
                .contains("is on node \"n2\"")
        );
        assert!(claim_dir("data", Some("/srv/x"), None, "n1", &root, false).is_err());
        assert!(claim_dir("data", Some("/srv/x"), None, "n1", &root, true).is_ok());
        let climbing = format!("{}/../../etc", root.display());
        assert!(claim_dir("data", Some(&climbing), None, "n1", &root, true).is_err());

        // The directory is made when the pod first mounts it, and survives the pod.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "a.wasm"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}
        }))
        .expect("pod");
        let claims = BTreeMap::from([("data".to_string(), inside.clone())]);
        let pod_dir = dir.path().join("pods/u");
        let vols = prepare(
            &pod,
            &pod_dir,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &claims,
            false,
        )
        .expect("prepare");
        assert_eq!(vols["d"], (inside.clone(), false));
        assert!(inside.is_dir());
        let unbound = prepare(
            &pod,
            &pod_dir,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            false,
        );
        assert_eq!(
            unbound,
            Err("persistentvolumeclaim \"data\" is not bound".to_string())
        );
    }

    #[test]
    fn directories_without_a_volume_are_orphans() {
        let root = Path::new("/d/storage");
        let entries = ["pvc-a_ns_x".to_string(), "pvc-b_ns_y".to_string()];
        let paths = [
            "/d/storage/pvc-a_ns_x".to_string(),
            "/elsewhere".to_string(),
        ];
        assert_eq!(
            orphaned(root, &entries, &paths),
            [PathBuf::from("/d/storage/pvc-b_ns_y")]
        );
    }
}
