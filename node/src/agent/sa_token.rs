//! The ServiceAccount token a pod's guests see, as the kubelet projects it: with
//! `automountServiceAccountToken` (true unless the pod or its ServiceAccount says no; the
//! API server settles it at admission), every container gets the read-only directory
//! `/var/run/secrets/kubernetes.io/serviceaccount` holding `token` (a token of the pod's
//! ServiceAccount bound to the pod), `ca.crt` (the cluster CA, to verify the API server)
//! and `namespace`.
//!
//! Why bound and short-lived: the token dies with the pod (the API server refuses a token
//! whose pod is gone) and expires on its own; the node asks the API for a new one when 80%
//! of the current one's life has passed ([`refresh_at`], as the kubelet does) and replaces
//! the file in place, so a guest that reads the file for each request always holds a
//! valid token. The node may ask only for tokens of its own pods' ServiceAccounts, bound to
//! those pods (the API server's Node authorizer checks it).
//!
//! The files live in a directory of their own per pod ([`dir`]), outside the pod's
//! volumes, written in place when the directory is new and replaced afterwards by renaming
//! a new file over the old one inside the directory: the guest's preopened directory
//! stays the same, and never shows a half-written token. `ca.crt` and
//! `namespace` are the same for many pods: they are hard links to one copy per content in
//! the node's [`shared_dir`], so a pod costs the filesystem one new file (its token), not
//! three; creating files is what a node starting ten thousand pods spends most on.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use std::path::{Path, PathBuf};
use wharf_runtime::{Mount, private};

/// Where guests find the token, the CA and the namespace.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long a token the node asks for lives (the kubelet asks for an hour and 7 s).
pub const EXPIRATION_SECONDS: i64 = 3607;

/// Whether `pod`'s containers get the token: automount is on and no container mounts a
/// volume of its own at the same place.
pub fn wanted(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let own_mount = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.mount_path.trim_end_matches('/') == MOUNT_PATH);
    spec.automount_service_account_token.unwrap_or(true) && !own_mount
}

/// The directory of a pod's token files on the node: `DATA_DIR/tokens/<pod uid>`, beside
/// the pod's volume directory rather than in it, so that a pod without volumes costs the
/// node one directory for its token and none for itself.
pub fn dir(data_dir: &Path, pod_uid: &str) -> PathBuf {
    data_dir.join("tokens").join(pod_uid)
}

/// The mount every container of a pod that [`wanted`] the token gets.
pub fn mount(data_dir: &Path, pod_uid: &str) -> Mount {
    Mount {
        host_path: dir(data_dir, pod_uid),
        guest_path: MOUNT_PATH.into(),
        read_only: true,
    }
}

/// A token the node holds for a pod.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    pub issued: Timestamp,
    pub expires: Timestamp,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("issued", &self.issued)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// When a token issued at `issued` and expiring at `expires` is replaced: once 80% of its
/// life has passed.
pub fn refresh_at(issued: Timestamp, expires: Timestamp) -> Timestamp {
    let life = expires.duration_since(issued);
    let part = SignedDuration::from_millis(life.as_millis() as i64 * 8 / 10);
    issued.checked_add(part).unwrap_or(issued)
}

/// Asks the API for a token of `pod`'s ServiceAccount bound to `pod`, at `now`.
pub async fn request(client: &kube::Client, pod: &Pod, now: Timestamp) -> Result<Issued, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    // From JSON: the type's fields change with the API version k8s-openapi targets.
    let body: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": EXPIRATION_SECONDS,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name,
                               "uid": pod.metadata.uid},
        },
    }))
    .map_err(|e| format!("building a token request: {e}"))?;
    let answer = api
        .create_token_request(&sa, &PostParams::default(), &body)
        .await
        .map_err(|e| format!("requesting a token of service account {ns}/{sa}: {e}"))?;
    let status = answer.status.unwrap_or_default();
    match (status.token, status.expiration_timestamp) {
        (Some(token), Some(expires)) if !token.is_empty() => Ok(Issued {
            token,
            issued: now,
            expires: expires.0,
        }),
        _ => Err(format!(
            "the token request for {ns}/{sa} was answered without a token"
        )),
    }
}

/// Where a node keeps the one copy of each `ca.crt` and `namespace` its pods' token
/// directories link to.
pub fn shared_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("serviceaccount-files")
}

/// Writes (or replaces) the token files in `dir`: `token`, `ca.crt` (when the node knows
/// the CA) and `namespace`, the last two linked from `shared` (see the module doc).
/// Blocking file I/O.
pub fn write(
    dir: &Path,
    shared: &Path,
    token: &str,
    ca_pem: Option<&str>,
    namespace: &str,
) -> Result<(), String> {
    // A directory made by this call has not been mounted by any guest yet: its files are
    // written in place. One that was there (a refresh, an agent restarted under running
    // pods) gets each file by rename, so a guest never reads half a token.
    let fresh = private::create_private_dir_fresh(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let replace = |name: &str, bytes: &[u8], linked: Option<String>| {
        let target = dir.join(name);
        let staged = if fresh {
            target.clone()
        } else {
            let staged = dir.join(format!("..{name}.new"));
            let _ = std::fs::remove_file(&staged);
            staged
        };
        let link = linked.and_then(|key| link_shared(shared, &key, bytes, &staged).ok());
        match link {
            Some(()) => Ok(()),
            None => private::private_file_options()
                .write(true)
                .create_new(true)
                .open(&staged)
                .and_then(|mut f| std::io::Write::write_all(&mut f, bytes)),
        }
        .and_then(|()| match fresh {
            true => Ok(()),
            false => std::fs::rename(&staged, &target),
        })
        .map_err(|e| format!("writing {}/{name}: {e}", dir.display()))?;
        if !fresh {
            // Renaming a link over another link to the same file leaves both names
            // (POSIX): the staged one goes now.
            let _ = std::fs::remove_file(&staged);
        }
        Ok::<(), String>(())
    };
    replace("token", token.as_bytes(), None)?;
    replace(
        "namespace",
        namespace.as_bytes(),
        Some(shared_name("namespace", namespace.as_bytes())),
    )?;
    if let Some(ca) = ca_pem {
        replace(
            "ca.crt",
            ca.as_bytes(),
            Some(shared_name("ca.crt", ca.as_bytes())),
        )?;
    }
    Ok(())
}

/// The name of the shared copy of `bytes`: the file's name, the length and a hash of the
/// content (the content is compared before a link is made, so a collision only costs a
/// file of its own).
fn shared_name(name: &str, bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{name}-{}-{:016x}", bytes.len(), h.finish())
}

/// Links `at` to the shared copy `key` of `bytes`, writing the copy first when there is
/// none. Fails (the caller then writes a file of its own) when the copy holds anything
/// else or the link cannot be made.
fn link_shared(shared: &Path, key: &str, bytes: &[u8], at: &Path) -> std::io::Result<()> {
    let copy = shared.join(key);
    match std::fs::read(&copy) {
        Ok(held) if held == bytes => {}
        Ok(_) => return Err(std::io::Error::other("a different shared copy")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Two pods of one namespace may get here at once: each writes its own
            // temporary file, and the copy is whole whichever rename lands last.
            private::create_private_dir(shared)?;
            wharf_control::fsutil::write_private(&copy, bytes)?;
        }
        Err(e) => return Err(e),
    }
    std::fs::hard_link(&copy, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: serde_json::Value) -> Pod {
        serde_json::from_value(yaml).expect("pod")
    }

    #[test]
    fn automount_unless_the_pod_says_no_or_mounts_its_own() {
        let c = serde_json::json!([{"name": "c", "image": "a.wasm"}]);
        assert!(wanted(&pod(serde_json::json!({"spec": {"containers": c}}))));
        assert!(wanted(&pod(serde_json::json!({"spec": {
            "automountServiceAccountToken": true, "containers": c}}))));
        assert!(!wanted(&pod(serde_json::json!({"spec": {
            "automountServiceAccountToken": false, "containers": c}}))));
        let own = serde_json::json!([{"name": "c", "image": "a.wasm",
            "volumeMounts": [{"name": "v", "mountPath": format!("{MOUNT_PATH}/")}]}]);
        assert!(!wanted(&pod(
            serde_json::json!({"spec": {"containers": own}})
        )));
    }

    #[test]
    fn tokens_are_refreshed_at_four_fifths_of_their_life() {
        let issued: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
        let expires = issued + SignedDuration::from_secs(3600);
        assert_eq!(
            refresh_at(issued, expires),
            issued + SignedDuration::from_secs(2880)
        );
        assert_eq!(refresh_at(issued, issued), issued);
    }

    #[test]
    fn files_are_written_in_place_then_replaced_by_rename() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = dir(tmp.path(), "uid-1");
        assert_eq!(d, tmp.path().join("tokens/uid-1"));
        let shared = shared_dir(tmp.path());
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(&d)
                .expect("dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        // A new directory: the files are written where they belong.
        write(&d, &shared, "first", Some("CA"), "team").expect("write");
        let read = |n: &str| std::fs::read_to_string(d.join(n)).expect(n);
        assert_eq!(
            (read("token"), read("ca.crt"), read("namespace")),
            ("first".into(), "CA".into(), "team".into())
        );
        assert_eq!(names(), ["ca.crt", "namespace", "token"]);
        let meta = |n: &str| std::fs::metadata(d.join(n)).expect(n);
        assert_eq!(meta("token").permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&d).expect("dir").permissions().mode() & 0o777,
            0o700
        );
        // A refresh replaces the token by rename: a guest holding the old file reads it
        // whole, and the next open gets the new one.
        let before = meta("token").ino();
        write(&d, &shared, "second", None, "team").expect("rewrite");
        assert_eq!(read("token"), "second");
        assert_ne!(
            meta("token").ino(),
            before,
            "replaced, not rewritten in place"
        );
        assert_eq!(names(), ["ca.crt", "namespace", "token"]);
        let m = mount(tmp.path(), "uid-1");
        assert_eq!((m.host_path, m.guest_path), (d.clone(), MOUNT_PATH.into()));
        assert!(m.read_only);
    }

    #[test]
    fn pods_share_one_copy_of_ca_and_namespace_and_never_a_wrong_one() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let shared = shared_dir(tmp.path());
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write(&a, &shared, "ta", Some("CA"), "team").expect("a");
        write(&b, &shared, "tb", Some("CA"), "team").expect("b");
        let ino = |p: PathBuf| std::fs::metadata(p).expect("file").ino();
        assert_eq!(ino(a.join("ca.crt")), ino(b.join("ca.crt")));
        assert_eq!(ino(a.join("namespace")), ino(b.join("namespace")));
        assert_ne!(ino(a.join("token")), ino(b.join("token")));
        // A shared copy that holds something else (a collision, or tampering) is not
        // linked: the pod gets its own file with the right content.
        let key = shared_name("namespace", b"other");
        std::fs::write(shared.join(&key), "not other").expect("plant");
        let c = tmp.path().join("c");
        write(&c, &shared, "tc", None, "other").expect("c");
        assert_eq!(
            std::fs::read_to_string(c.join("namespace")).expect("ns"),
            "other"
        );
        assert_ne!(ino(c.join("namespace")), ino(shared.join(key)));
    }
}
