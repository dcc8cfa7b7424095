//! The cluster registry's files, in `DATA_DIR/registry`:
//!
//! ```text
//! blobs/sha256/HEX                       every blob and manifest, by digest (shared by all
//!                                        repositories: a blob pushed once is stored once)
//! uploads/ID                             an upload in progress (appended to, then moved)
//! repositories/REPO/manifests/HEX        a manifest in REPO; the file holds its media type
//! repositories/REPO/tags/TAG             a tag of REPO; the file holds the manifest digest
//! ```
//!
//! Crash story: a blob or manifest is written to a temporary file, synced and renamed into
//! place, so a digest name never holds partial content; tags and manifest records are
//! written the same way. A crash leaves at most an upload or a temporary file, which
//! `gc` deletes, and blobs nothing refers to, which `gc` deletes too.
//!
//! Every function here blocks (file I/O): the handlers call them in `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// `sha256:HEX` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The hex of a `sha256:` digest, if it is one (64 lowercase hex digits).
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// Whether `name` is a repository name the distribution spec allows: path components of
/// lowercase letters and digits separated by `.`, `_`, `__` or dashes, joined by `/`.
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|component| {
            let b = component.as_bytes();
            let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
                return false;
            }
            // Separators: one `.`, one or two `_`, or any number of `-`, between alnums.
            let mut i = 0;
            while i < b.len() {
                if alnum(b[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && !alnum(b[i]) {
                    i += 1;
                }
                let sep = &component[start..i];
                let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
                if !ok {
                    return false;
                }
            }
            true
        })
}

/// Whether `tag` is a valid tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// One manifest of a repository, as the referrers API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Storage { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join("repositories").join(repo)
    }

    pub fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// The path of a stored blob (or manifest) and its size, if stored.
    pub fn blob(&self, digest: &str) -> Option<(PathBuf, u64)> {
        let path = self.blob_path(sha256_hex(digest)?);
        let meta = std::fs::metadata(&path).ok()?;
        meta.is_file().then_some((path, meta.len()))
    }

    /// Stores `bytes` under their digest (if not stored yet); returns the digest.
    pub fn put_blob(&self, bytes: &[u8]) -> std::io::Result<String> {
        let digest = digest_of(bytes);
        let path = self.blob_path(&digest["sha256:".len()..]);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Deletes a blob; false if it was not stored.
    pub fn delete_blob(&self, digest: &str) -> std::io::Result<bool> {
        let Some((path, _)) = self.blob(digest) else {
            return Ok(false);
        };
        std::fs::remove_file(path)?;
        Ok(true)
    }

    /// Starts an upload; returns its id.
    pub fn start_upload(&self) -> std::io::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.upload_path(&id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(id)
    }

    /// The bytes received so far of an upload, if it exists.
    pub fn upload_size(&self, id: &str) -> Option<u64> {
        if uuid::Uuid::parse_str(id).is_err() {
            return None;
        }
        std::fs::metadata(self.upload_path(id))
            .ok()
            .map(|m| m.len())
    }

    /// Appends to an upload; returns its new size.
    pub fn append_upload(&self, id: &str, bytes: &[u8]) -> std::io::Result<u64> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.upload_path(id))?;
        file.write_all(bytes)?;
        Ok(file.metadata()?.len())
    }

    /// Ends an upload: checks the whole content has `digest` and moves it into place.
    /// `Ok(Err(actual))` when the digest does not match (the upload is discarded).
    pub fn finish_upload(&self, id: &str, digest: &str) -> std::io::Result<Result<u64, String>> {
        let path = self.upload_path(id);
        let actual = {
            let mut file = std::fs::File::open(&path)?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher)?;
            format!("sha256:{}", hex(&hasher.finalize()))
        };
        if actual != digest {
            let _ = std::fs::remove_file(&path);
            return Ok(Err(actual));
        }
        let size = std::fs::metadata(&path)?.len();
        let target = self.blob_path(&actual["sha256:".len()..]);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::open(&path)?.sync_all()?;
        std::fs::rename(&path, &target)?;
        Ok(Ok(size))
    }

    pub fn cancel_upload(&self, id: &str) -> std::io::Result<bool> {
        match std::fs::remove_file(self.upload_path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records a stored manifest in `repo`, and `tag` (if any) pointing at it.
    pub fn put_manifest(
        &self,
        repo: &str,
        digest: &str,
        media_type: &str,
        tag: Option<&str>,
    ) -> std::io::Result<()> {
        let Some(hex) = sha256_hex(digest) else {
            return Err(std::io::Error::other(format!(
                "not a sha256 digest: {digest}"
            )));
        };
        let dir = self.repo_dir(repo);
        write_atomic(&dir.join("manifests").join(hex), media_type.as_bytes())?;
        if let Some(tag) = tag {
            write_atomic(&dir.join("tags").join(tag), digest.as_bytes())?;
        }
        Ok(())
    }

    /// What `reference` (a tag or a digest) names in `repo`: the manifest's digest and
    /// media type, if the repository holds it.
    pub fn resolve(&self, repo: &str, reference: &str) -> Option<(String, String)> {
        let dir = self.repo_dir(repo);
        let digest = if sha256_hex(reference).is_some() {
            reference.to_owned()
        } else {
            if !valid_tag(reference) {
                return None;
            }
            std::fs::read_to_string(dir.join("tags").join(reference))
                .ok()?
                .trim()
                .to_owned()
        };
        let hex = sha256_hex(&digest)?;
        let media_type = std::fs::read_to_string(dir.join("manifests").join(hex)).ok()?;
        self.blob(&digest)?;
        Some((digest, media_type))
    }

    /// The tags of `repo`, sorted; `None` if the repository does not exist.
    pub fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let dir = self.repo_dir(repo);
        if !dir.join("manifests").is_dir() {
            return None;
        }
        let mut tags: Vec<String> = std::fs::read_dir(dir.join("tags"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|t| valid_tag(t))
            .collect();
        tags.sort();
        Some(tags)
    }

    /// Deletes a tag; false if it did not exist.
    pub fn delete_tag(&self, repo: &str, tag: &str) -> std::io::Result<bool> {
        if !valid_tag(tag) {
            return Ok(false);
        }
        remove_if_present(&self.repo_dir(repo).join("tags").join(tag))
    }

    /// Deletes a manifest from `repo`, with every tag pointing at it; false if the
    /// repository did not hold it. (Its blob stays until `gc`: other repositories may
    /// hold the same manifest.)
    pub fn delete_manifest(&self, repo: &str, digest: &str) -> std::io::Result<bool> {
        let Some(hex) = sha256_hex(digest) else {
            return Ok(false);
        };
        let dir = self.repo_dir(repo);
        let existed = remove_if_present(&dir.join("manifests").join(hex))?;
        for tag in self.tags(repo).unwrap_or_default() {
            let path = dir.join("tags").join(&tag);
            if std::fs::read_to_string(&path).is_ok_and(|d| d.trim() == digest) {
                remove_if_present(&path)?;
            }
        }
        Ok(existed)
    }

    /// The manifests of `repo`.
    pub fn manifests(&self, repo: &str) -> Vec<StoredManifest> {
        std::fs::read_dir(self.repo_dir(repo).join("manifests"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let hex = e.file_name().to_str()?.to_owned();
                let digest = format!("sha256:{hex}");
                sha256_hex(&digest)?;
                let media_type = std::fs::read_to_string(e.path()).ok()?;
                let (_, size) = self.blob(&digest)?;
                Some(StoredManifest {
                    digest,
                    media_type,
                    size,
                })
            })
            .collect()
    }

    /// Every repository (`a`, `team/app`), sorted.
    pub fn repositories(&self) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let path = entry.path();
                if name == "manifests" && path.is_dir() && !prefix.is_empty() {
                    out.push(prefix.trim_end_matches('/').to_owned());
                } else if name != "tags" && path.is_dir() {
                    walk(&path, &format!("{prefix}{name}/"), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root.join("repositories"), "", &mut out);
        out.sort();
        out
    }

    /// Garbage collection, as `wharf registry gc` runs it: manifests no tag names are
    /// removed (unless `keep_untagged`), then every blob no remaining manifest references
    /// (directly, or through an index) is deleted, and uploads older than `upload_age`.
    /// Returns what was deleted.
    pub fn gc(
        &self,
        keep_untagged: bool,
        upload_age: std::time::Duration,
    ) -> std::io::Result<GcReport> {
        let mut report = GcReport::default();
        let mut live: BTreeSet<String> = BTreeSet::new();
        for repo in self.repositories() {
            let tagged: BTreeMap<String, ()> = self
                .tags(&repo)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| self.resolve(&repo, &t).map(|(d, _)| (d, ())))
                .collect();
            let manifests = self.manifests(&repo);
            // Manifests an index or a subject link keeps alive count as referenced.
            let mut keep: BTreeSet<String> = tagged.keys().cloned().collect();
            let mut changed = true;
            while changed {
                changed = false;
                for m in &manifests {
                    if keep.contains(&m.digest) {
                        for child in self
                            .references(&m.digest)
                            .into_iter()
                            .filter(|c| manifests.iter().any(|x| &x.digest == c))
                        {
                            changed |= keep.insert(child);
                        }
                    }
                }
                // A referrer (an artifact whose subject is kept) stays with its subject.
                for m in &manifests {
                    if !keep.contains(&m.digest)
                        && self.subject(&m.digest).is_some_and(|s| keep.contains(&s))
                    {
                        changed |= keep.insert(m.digest.clone());
                    }
                }
            }
            for m in manifests {
                if keep_untagged || keep.contains(&m.digest) {
                    live.insert(m.digest.clone());
                    live.extend(self.references(&m.digest));
                } else {
                    self.delete_manifest(&repo, &m.digest)?;
                    report.manifests.push(format!("{repo}@{}", m.digest));
                }
            }
        }
        for entry in std::fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let digest = format!("sha256:{name}");
            if sha256_hex(&digest).is_some() && !live.contains(&digest) {
                let size = entry.metadata().map_or(0, |m| m.len());
                std::fs::remove_file(entry.path())?;
                report.blobs += 1;
                report.bytes += size;
            }
        }
        let now = std::time::SystemTime::now();
        for entry in std::fs::read_dir(self.root.join("uploads"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= upload_age);
            if old {
                std::fs::remove_file(entry.path())?;
                report.uploads += 1;
            }
        }
        Ok(report)
    }

    /// The digests a stored manifest names: config, layers, an index's manifests, its
    /// subject.
    pub fn references(&self, digest: &str) -> Vec<String> {
        let Some(json) = self.manifest_json(digest) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut push = |d: &serde_json::Value| {
            if let Some(d) = d.get("digest").and_then(|d| d.as_str()) {
                out.push(d.to_owned());
            }
        };
        if let Some(c) = json.get("config") {
            push(c);
        }
        for key in ["layers", "manifests", "blobs"] {
            for d in json
                .get(key)
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
            {
                push(d);
            }
        }
        out
    }

    /// The `subject` digest of a stored manifest, if it has one.
    pub fn subject(&self, digest: &str) -> Option<String> {
        self.manifest_json(digest)?
            .get("subject")?
            .get("digest")?
            .as_str()
            .map(str::to_owned)
    }

    pub fn manifest_json(&self, digest: &str) -> Option<serde_json::Value> {
        let (path, size) = self.blob(digest)?;
        if size > super::MAX_MANIFEST_BYTES as u64 {
            return None;
        }
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// What `Storage::gc` deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// `REPO@DIGEST` of each untagged manifest removed.
    pub manifests: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
    pub uploads: usize,
}

fn remove_if_present(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes a file whole (the one atomic writer, after making its directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_private(path, bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_follow_the_distribution_spec() {
        for ok in ["a", "team/app", "a.b/c_d/e__f", "x-y--z", "0/1"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "-a", "a.", "a..b", "a___b", "a/../b", "a b",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
        assert!(valid_tag("1.0") && valid_tag("_x") && valid_tag("latest"));
        assert!(
            !valid_tag("") && !valid_tag(".x") && !valid_tag("a/b") && !valid_tag(&"a".repeat(129))
        );
    }

    #[test]
    fn uploads_manifests_tags_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(dir.path());
        let id = s.start_upload().unwrap();
        s.append_upload(&id, b"hello ").unwrap();
        assert_eq!(s.append_upload(&id, b"world").unwrap(), 11);
        let digest = digest_of(b"hello world");
        assert_eq!(s.finish_upload(&id, &digest).unwrap(), Ok(11));
        assert_eq!(s.blob(&digest).unwrap().1, 11);
        // A wrong digest discards the upload.
        let id = s.start_upload().unwrap();
        s.append_upload(&id, b"x").unwrap();
        assert_eq!(s.finish_upload(&id, &digest).unwrap(), Err(digest_of(b"x")));
        assert!(s.upload_size(&id).is_none());

        let config = s.put_blob(b"{}").unwrap();
        let manifest = serde_json::json!({"schemaVersion": 2,
            "config": {"digest": config, "size": 2, "mediaType": "application/vnd.wasm.config.v0+json"},
            "layers": [{"digest": digest, "size": 11, "mediaType": "application/wasm"}]});
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let m = s.put_blob(&bytes).unwrap();
        s.put_manifest(
            "team/app",
            &m,
            "application/vnd.oci.image.manifest.v1+json",
            Some("1.0"),
        )
        .unwrap();
        assert_eq!(s.resolve("team/app", "1.0").unwrap().0, m);
        assert_eq!(s.resolve("team/app", &m).unwrap().0, m);
        assert!(s.resolve("team/other", "1.0").is_none());
        assert_eq!(s.tags("team/app").unwrap(), ["1.0"]);
        assert_eq!(s.repositories(), ["team/app"]);
        // Tagged: gc keeps everything it references and drops what nothing does.
        let stray = s.put_blob(b"stray").unwrap();
        let r = s.gc(false, std::time::Duration::ZERO).unwrap();
        assert_eq!(r.blobs, 1);
        assert!(s.blob(&stray).is_none() && s.blob(&digest).is_some() && s.blob(&config).is_some());
        // Untagged: the manifest and its blobs go.
        assert!(s.delete_tag("team/app", "1.0").unwrap());
        let r = s.gc(false, std::time::Duration::ZERO).unwrap();
        assert_eq!(r.manifests, [format!("team/app@{m}")]);
        assert_eq!(r.blobs, 3);
        assert!(s.blob(&digest).is_none());
    }
}
