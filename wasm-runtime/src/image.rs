//! Images: references, digests, fetching and the content-addressed blob store.
//!
//! An image is a registry image (`REGISTRY/REPO[:TAG][@sha256:DIGEST]`, see `registry`),
//! or a `.wasm` file named by a path (relative to the node's working directory; a path
//! ends in `.wasm` or starts with `/` or `.`), a `file://` URL, or an `http://` URL,
//! optionally pinned with
//! `@sha256:<64 hex digits>`. Its identity is the SHA-256 of its bytes (the digest), as for
//! OCI images: two references with the same bytes are one image, compiled once.
//!
//! Fetched bytes are kept in `DATA_DIR/blobs/sha256/<hex>` (written to a temporary file and
//! renamed, so a crash never leaves a partial blob under a digest name). A pinned remote
//! image whose blob is present is not fetched again; an unpinned remote reference is
//! remembered (`DATA_DIR/refs/`) and, with [`PullPolicy::IfNotPresent`], not fetched again
//! either. Local files are read on every pull: they are cheap to read and are what a
//! developer rebuilds.
//!
//! A local path is read only if it names a regular file (never a FIFO, a device or a
//! directory: opened non-blocking, its type checked on the open file, its size bounded while
//! reading) and, unless the node allows any local file ([`LocalImages::Any`]), only inside
//! one of the node's image directories after symlinks are resolved: otherwise a pod could
//! name any file the node can read (a token, a key) and have it copied into the blob store
//! with its digest shown in the pod's status.
//!
//! `https://` URL references are refused with a clear error: images that travel over TLS
//! come from registries (see `registry`), which verify every blob against its digest. Serve
//! URL images over plain HTTP inside a trusted network, and pin them with `@sha256:` so
//! that the transport does not matter for integrity.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sha2::{Digest as _, Sha256};

use crate::registry::RegistryRef;
use wharf_image_ref::is_registry_reference;

/// How a workload runs, detected from the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// A WASI preview1 core module with a `_start` export.
    WasiP1Command,
    /// A component exporting `wasi:cli/run`.
    WasiCliCommand,
    /// A component exporting `wasi:http/incoming-handler`: served over HTTP, one instance
    /// per request.
    WasiHttp,
}

impl WorkloadKind {
    /// A short name: `wasi-p1-command`, `wasi-cli-command`, `wasi-http`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::WasiP1Command => "wasi-p1-command",
            WorkloadKind::WasiCliCommand => "wasi-cli-command",
            WorkloadKind::WasiHttp => "wasi-http",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses `sha256:<64 hex>` (or the bare hex).
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// When to fetch a remote image again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use the stored copy if there is one (pinned: by digest; unpinned: the last fetch).
    #[default]
    IfNotPresent,
    /// Always fetch an unpinned remote reference (a pinned one is still served from the
    /// blob store: its content cannot have changed).
    Always,
    /// Never fetch: a remote image must already be in the node's store
    /// ([`ImagePullError::NeverPull`] otherwise).
    Never,
}

impl PullPolicy {
    /// Parses a container's `imagePullPolicy` (`Always`, `IfNotPresent`, `Never`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Always" => Some(Self::Always),
            "IfNotPresent" => Some(Self::IfNotPresent),
            "Never" => Some(Self::Never),
            _ => None,
        }
    }
}

/// Why a pull failed. The node reports every variant as the container's `ErrImagePull`
/// (see [`ImagePullError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum ImagePullError {
    /// The reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The scheme is not supported by this build.
    #[error("image {reference}: {reason}")]
    UnsupportedScheme {
        /// The reference as given.
        reference: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The bytes do not match the `@sha256:` pin.
    #[error("image {reference}: digest mismatch: pinned {expected}, fetched content is {actual}")]
    DigestMismatch {
        /// The reference as given.
        reference: String,
        /// The pinned digest.
        expected: Digest,
        /// The digest of what was fetched.
        actual: Digest,
    },
    /// A local image could not be read.
    #[error("image {reference}: reading {path}: {source}")]
    Read {
        /// The reference as given.
        reference: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A remote image could not be fetched.
    #[error("image {reference}: fetching {url}: {message}")]
    Fetch {
        /// The reference as given.
        reference: String,
        /// The URL that failed (after redirects).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A local path the node does not read as an image: not a regular file, or outside the
    /// node's image directories.
    #[error("image {reference}: {reason}")]
    LocalRefused {
        /// The reference as given.
        reference: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The image is larger than `RuntimeConfig::max_image_bytes`.
    #[error("image {reference} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The reference as given.
        reference: String,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a valid wasm module or component.
    #[error("image {reference} ({digest}) is not a valid wasm module or component: {message}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// Its digest.
        digest: Digest,
        /// wasmtime's explanation.
        message: String,
    },
    /// Valid wasm, but not something this runtime can run (no `_start`, no `wasi:cli/run`
    /// or `wasi:http/incoming-handler` export, or imports outside WASI and wasi:http).
    #[error("image {reference} ({digest}) cannot run here: {message}")]
    NotRunnable {
        /// The reference as given.
        reference: String,
        /// Its digest.
        digest: Digest,
        /// What is missing.
        message: String,
    },
    /// The local blob store failed.
    #[error("image store {path}: {source}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The pull took longer than `RuntimeConfig::pull_timeout`.
    #[error("pulling image {reference} timed out after {timeout:?}")]
    Timeout {
        /// The reference as given.
        reference: String,
        /// The limit.
        timeout: Duration,
    },
    /// A registry pull failed: the registry refused or could not be reached, or its content
    /// is not a wasm image or not what its digest says.
    #[error("image {reference}: {message}")]
    Registry {
        /// The reference as given.
        reference: String,
        /// What went wrong, naming the registry host or the digest.
        message: String,
    },
    /// `imagePullPolicy: Never` and the image is not on the node.
    #[error("Container image {reference:?} is not present with pull policy of Never")]
    NeverPull {
        /// The reference as given.
        reference: String,
    },
    /// A blocking compile or I/O task died.
    #[error("pulling image {reference}: internal task failed: {message}")]
    Task {
        /// The reference as given.
        reference: String,
        /// What happened.
        message: String,
    },
}

impl ImagePullError {
    /// The Kubernetes waiting reason to report: `InvalidImageName` for a reference that
    /// cannot be parsed, `ErrImageNeverPull` for a missing image under `Never`,
    /// `ErrImagePull` for everything else.
    pub fn reason(&self) -> &'static str {
        match self {
            ImagePullError::InvalidReference { .. } => "InvalidImageName",
            ImagePullError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// Which local paths the node reads as images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LocalImages {
    /// Any regular file the node's user can read: a laptop cluster, where the node's user
    /// and the cluster's user are the same person.
    #[default]
    Any,
    /// Only regular files inside these directories (symlinks resolved). Empty: no local
    /// images at all, only `http://` ones.
    Within(Vec<PathBuf>),
}

impl LocalImages {
    /// Refuses `path` (already canonical) unless the policy allows it.
    fn check(&self, path: &Path) -> Result<(), String> {
        let dirs = match self {
            LocalImages::Any => return Ok(()),
            LocalImages::Within(dirs) => dirs,
        };
        let inside = dirs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|d| path.starts_with(d)));
        if inside {
            return Ok(());
        }
        Err(if dirs.is_empty() {
            "local image paths are not allowed on this node (start it with --image-dir DIR \
             or --allow-any-local-image, or serve the image over http://)"
                .to_string()
        } else {
            let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!(
                "{} is outside the node's image directories ({})",
                path.display(),
                list.join(", ")
            )
        })
    }
}

/// What kind of file a non-regular file is, for the error message.
fn file_kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// What a local image file is on disk: which file (device and inode), its size, and
/// when its contents or metadata last changed. Equal stamps mean the same bytes, as long
/// as the file had not changed within a moment of being read (see [`FileStamp::settled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file had been still for `window` when stamped (see
    /// `RuntimeConfig::local_image_settle`).
    pub(crate) fn settled(&self, window: Duration) -> bool {
        let at = |(secs, nanos): (i64, i64)| {
            Duration::from_secs(u64::try_from(secs).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
        };
        let changed = at(self.mtime).max(at(self.ctime));
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| changed + window <= now)
    }
}

/// Checks a local image the way [`read_local`] does before opening it (allowed by
/// `policy`, a regular file) and stamps it, without reading it. Blocking.
pub(crate) fn stamp_local(
    path: &Path,
    reference: &str,
    policy: &LocalImages,
) -> Result<FileStamp, ImagePullError> {
    let (_, meta) = checked_local(path, reference, policy)?;
    Ok(FileStamp::of(&meta))
}

/// The canonical path and metadata of a local image allowed by `policy` and regular.
fn checked_local(
    path: &Path,
    reference: &str,
    policy: &LocalImages,
) -> Result<(PathBuf, std::fs::Metadata), ImagePullError> {
    let read_err = |source| ImagePullError::Read {
        reference: reference.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(read_err)?;
    policy
        .check(&canonical)
        .map_err(|reason| ImagePullError::LocalRefused {
            reference: reference.to_string(),
            reason,
        })?;
    let meta = std::fs::metadata(&canonical).map_err(read_err)?;
    if !meta.is_file() {
        return Err(not_regular(path, reference, meta.file_type()));
    }
    Ok((canonical, meta))
}

fn not_regular(path: &Path, reference: &str, t: std::fs::FileType) -> ImagePullError {
    ImagePullError::LocalRefused {
        reference: reference.to_string(),
        reason: format!("{} is {}, not a regular file", path.display(), file_kind(t)),
    }
}

/// Reads a local image: a regular file, allowed by `policy`, at most `limit` bytes. The
/// type is checked before opening (so a FIFO or device is never opened) and again on the
/// open file (opened non-blocking, so one swapped in meanwhile cannot block the thread);
/// the limit is enforced while reading, not taken from the metadata. Answers the bytes
/// and the stamp of the open file, taken before reading. Blocking.
pub(crate) fn read_local(
    path: &Path,
    reference: &str,
    limit: u64,
    policy: &LocalImages,
) -> Result<(Bytes, FileStamp), ImagePullError> {
    use std::io::Read;
    let read_err = |source| ImagePullError::Read {
        reference: reference.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let (canonical, _) = checked_local(path, reference, policy)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(&canonical).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(not_regular(path, reference, meta.file_type()));
    }
    let stamp = FileStamp::of(&meta);
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(limit)).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(ImagePullError::TooLarge {
            reference: reference.to_string(),
            limit,
        });
    }
    Ok((Bytes::from(bytes), stamp))
}

/// Where an image's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    File(PathBuf),
    Http(http::Uri),
    Registry(RegistryRef),
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub(crate) original: String,
    pub(crate) source: Source,
    pub(crate) pin: Option<Digest>,
}

pub(crate) fn parse_reference(reference: &str) -> Result<Reference, ImagePullError> {
    let invalid = |reason: &str| ImagePullError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = reference.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if is_registry_reference(trimmed) {
        let parsed = RegistryRef::parse(trimmed).map_err(|e| invalid(&e))?;
        return Ok(Reference {
            original: reference.to_string(),
            pin: parsed.pin(),
            source: Source::Registry(parsed),
        });
    }
    let (location, pin) = match trimmed.rsplit_once("@sha256:") {
        Some((location, hex)) => {
            let digest = Digest::parse(hex)
                .ok_or_else(|| invalid("the @sha256: pin must be 64 hex digits"))?;
            (location, Some(digest))
        }
        None => (trimmed, None),
    };
    if location.is_empty() {
        return Err(invalid("no location before the @sha256: pin"));
    }
    let source = if let Some(path) = location.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid(
                "a file:// URL needs an absolute path (file:///path/app.wasm)",
            ));
        }
        Source::File(PathBuf::from(path))
    } else if location.starts_with("https://") {
        return Err(ImagePullError::UnsupportedScheme {
            reference: reference.to_string(),
            reason: "https:// URLs are not supported; push the image to a registry and \
                     name it REGISTRY/REPO:TAG (pulled over TLS), or use http:// (pin it \
                     with @sha256: for integrity) or a local path"
                .to_string(),
        });
    } else if location.starts_with("http://") {
        let uri: http::Uri = location
            .parse()
            .map_err(|e| invalid(&format!("bad URL: {e}")))?;
        if uri.host().is_none() {
            return Err(invalid("the URL has no host"));
        }
        Source::Http(uri)
    } else if location.contains("://") {
        return Err(ImagePullError::UnsupportedScheme {
            reference: reference.to_string(),
            reason:
                "supported references are registry images (REGISTRY/REPO[:TAG][@sha256:DIGEST]), \
                     paths, file://, and http:// URLs"
                    .to_string(),
        });
    } else {
        Source::File(PathBuf::from(location))
    };
    Ok(Reference {
        original: reference.to_string(),
        source,
        pin,
    })
}

/// The content-addressed store of fetched images, plus the reference index.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    blobs: PathBuf,
    refs: PathBuf,
}

impl BlobStore {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            blobs: data_dir.join("blobs").join("sha256"),
            refs: data_dir.join("refs"),
        }
    }

    pub(crate) fn dirs(&self) -> [&Path; 2] {
        [&self.blobs, &self.refs]
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.refs.join(Digest::of(reference.as_bytes()).hex())
    }

    /// Reads a blob and checks it still has its digest (a damaged blob is deleted). Blocking.
    pub(crate) fn read_verified(&self, digest: &Digest) -> Option<Bytes> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).ok()?;
        if Digest::of(&bytes) == *digest {
            return Some(Bytes::from(bytes));
        }
        tracing::warn!(path = %path.display(), "stored image does not match its digest; discarding it");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Whether a blob is stored under `digest` (not read or verified). Blocking.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores a blob under its digest if it is not there yet. Blocking.
    pub(crate) fn write(&self, digest: &Digest, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    /// The digest an unpinned remote reference had when last fetched. Blocking.
    pub(crate) fn lookup_ref(&self, reference: &str) -> Option<Digest> {
        let s = std::fs::read_to_string(self.ref_path(reference)).ok()?;
        Digest::parse(s.trim())
    }

    /// Deletes every blob that none of `roots` reaches (a root, the manifest an index
    /// names, the layer a manifest names) and that was written at least `min_age` ago,
    /// then every tag record pointing at a blob no longer stored. Returns the bytes
    /// deleted. Blocking.
    pub(crate) fn sweep(&self, roots: &[Digest], min_age: Duration) -> u64 {
        let mut live = std::collections::HashSet::new();
        for root in roots {
            let mut at = *root;
            live.insert(at);
            // An index leads to a manifest, a manifest to its layer: two steps at most.
            for _ in 0..2 {
                let Some(bytes) = std::fs::read(self.blob_path(&at)).ok() else {
                    break;
                };
                if bytes.first() != Some(&b'{') {
                    break;
                }
                match crate::registry::next_step(&bytes) {
                    Ok(crate::registry::Step::Manifest(child)) => at = child,
                    Ok(crate::registry::Step::Layer { digest, .. }) => {
                        live.insert(digest);
                        break;
                    }
                    Err(_) => break,
                }
                live.insert(at);
            }
        }
        let mut freed = 0;
        let now = std::time::SystemTime::now();
        for entry in std::fs::read_dir(&self.blobs)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(Digest::parse) else {
                continue; // a temporary file of a write in progress, or a stranger
            };
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if live.contains(&digest) || age < min_age {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                freed += meta.len();
            }
        }
        for entry in std::fs::read_dir(&self.refs)
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| Digest::parse(s.trim()));
            if target.is_some_and(|d| !self.contains(&d)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        freed
    }

    /// Remembers what an unpinned remote reference resolved to. Blocking.
    pub(crate) fn record_ref(&self, reference: &str, digest: &Digest) -> std::io::Result<()> {
        write_atomic(&self.ref_path(reference), digest.to_string().as_bytes())
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
    // Unique per process and per call: concurrent writers (threads, or several runtimes
    // sharing a data dir) never share a temporary file; the last rename wins, whole.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut file = crate::private::private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GETs `uri`, following up to five redirects, reading at most `limit` bytes.
pub(crate) async fn fetch_http(
    client: &HttpClient,
    reference: &str,
    uri: &http::Uri,
    limit: u64,
) -> Result<Bytes, ImagePullError> {
    let mut uri = uri.clone();
    for _ in 0..=5 {
        let fetch_err = |uri: &http::Uri, message: String| ImagePullError::Fetch {
            reference: reference.to_string(),
            url: uri.to_string(),
            message,
        };
        let request = http::Request::get(uri.clone())
            .header(http::header::USER_AGENT, "wharf-runtime")
            .body(Empty::new())
            .map_err(|e| fetch_err(&uri, e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| fetch_err(&uri, format!("{e:#}")))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| fetch_err(&uri, format!("HTTP {status} without a Location")))?;
            let next = resolve_location(&uri, location)
                .ok_or_else(|| fetch_err(&uri, format!("unsupported redirect to {location:?}")))?;
            uri = next;
            continue;
        }
        if !status.is_success() {
            return Err(fetch_err(&uri, format!("HTTP {status}")));
        }
        let too_large = || ImagePullError::TooLarge {
            reference: reference.to_string(),
            limit,
        };
        if response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > limit)
        {
            return Err(too_large());
        }
        let body = Limited::new(
            response.into_body(),
            usize::try_from(limit).unwrap_or(usize::MAX),
        );
        return match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(fetch_err(&uri, e.to_string())),
        };
    }
    Err(ImagePullError::Fetch {
        reference: reference.to_string(),
        url: uri.to_string(),
        message: "too many redirects".to_string(),
    })
}

/// Resolves a redirect target: an absolute `http://` URL or an absolute path.
fn resolve_location(base: &http::Uri, location: &str) -> Option<http::Uri> {
    if location.starts_with("http://") {
        return location.parse().ok();
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let authority = base.authority()?;
        return format!("http://{authority}{location}").parse().ok();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references() {
        let r = parse_reference("samples/x.wasm").unwrap();
        assert_eq!(r.source, Source::File("samples/x.wasm".into()));
        assert_eq!(r.pin, None);

        let r = parse_reference(&format!("file:///a/b@c.wasm@sha256:{HEX}")).unwrap();
        assert_eq!(r.source, Source::File("/a/b@c.wasm".into()));
        assert_eq!(r.pin.unwrap().hex(), HEX);

        let r = parse_reference("http://127.0.0.1:8080/app.wasm").unwrap();
        assert!(matches!(r.source, Source::Http(ref u) if u.port_u16() == Some(8080)));

        for bad in [
            "",
            "x.wasm@sha256:abc",
            "@sha256:".to_string().as_str(),
            "file://rel.wasm",
        ] {
            let e = parse_reference(bad).unwrap_err();
            assert_eq!(e.reason(), "InvalidImageName", "{bad}: {e}");
        }
        assert!(matches!(
            parse_reference("https://example.com/a.wasm"),
            Err(ImagePullError::UnsupportedScheme { .. })
        ));
        let r = parse_reference(&format!("127.0.0.1:5000/app:1.0@sha256:{HEX}")).unwrap();
        assert!(matches!(r.source, Source::Registry(_)));
        assert_eq!(r.pin.unwrap().hex(), HEX);
        let e = parse_reference("reg.io/app:bad tag").unwrap_err();
        assert_eq!(e.reason(), "InvalidImageName", "{e}");
        assert!(matches!(
            parse_reference("oci://registry/a"),
            Err(ImagePullError::UnsupportedScheme { .. })
        ));
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(
            d.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert_eq!(Digest::parse("sha256:zz"), None);
    }

    #[test]
    fn redirects() {
        let base: http::Uri = "http://h:1/a/b".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "/c").unwrap().to_string(),
            "http://h:1/c"
        );
        assert_eq!(
            resolve_location(&base, "http://x/y").unwrap().to_string(),
            "http://x/y"
        );
        assert!(resolve_location(&base, "https://x/y").is_none());
        assert!(resolve_location(&base, "rel").is_none());
    }

    #[test]
    fn blob_store_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        for d in store.dirs() {
            std::fs::create_dir_all(d).unwrap();
        }
        let digest = Digest::of(b"wasm");
        store.write(&digest, b"wasm").unwrap();
        assert_eq!(store.read_verified(&digest).unwrap().as_ref(), b"wasm");
        std::fs::write(store.blob_path(&digest), b"tampered").unwrap();
        assert!(store.read_verified(&digest).is_none());
        assert!(!store.blob_path(&digest).exists());
        store.record_ref("http://x/a.wasm", &digest).unwrap();
        assert_eq!(store.lookup_ref("http://x/a.wasm"), Some(digest));
    }

    /// `read_local` on another thread, which must answer within 5 s (a blocked read of a
    /// FIFO never would).
    fn read_quickly(path: &Path, limit: u64, policy: LocalImages) -> Result<Bytes, ImagePullError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(
                read_local(&path, &path.display().to_string(), limit, &policy).map(|(b, _)| b),
            );
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("read_local blocked or took longer than 5 s")
    }

    #[test]
    fn local_images_are_bounded_regular_files_inside_the_image_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let images = tmp.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let app = images.join("app.wasm");
        std::fs::write(&app, b"\0asm\x01\0\0\0").unwrap();
        let within = LocalImages::Within(vec![images.clone()]);
        assert_eq!(
            &read_quickly(&app, 1024, within.clone()).unwrap()[..4],
            b"\0asm"
        );

        // A FIFO with no writer: refused at once, never opened.
        let fifo = images.join("fifo.wasm");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_quickly(&fifo, 1024, LocalImages::Any).unwrap_err();
        assert_eq!(e.reason(), "ErrImagePull");
        assert!(
            e.to_string().ends_with("is a FIFO, not a regular file"),
            "{e}"
        );

        // A device whose metadata says 0 bytes but that never ends.
        let e = read_quickly(Path::new("/dev/zero"), 1024, LocalImages::Any).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("/dev/zero is a character device, not a regular file"),
            "{e}"
        );

        // A directory.
        let e = read_quickly(&images, 1024, LocalImages::Any).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is a directory, not a regular file"),
            "{e}"
        );

        // Outside the image dirs, directly or through a symlink inside them.
        let secret = tmp.path().join("admin.token");
        std::fs::write(&secret, "token").unwrap();
        let e = read_quickly(&secret, 1024, within.clone()).unwrap_err();
        assert!(matches!(e, ImagePullError::LocalRefused { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("is outside the node's image directories"),
            "{e}"
        );
        std::os::unix::fs::symlink(&secret, images.join("link.wasm")).unwrap();
        let e = read_quickly(&images.join("link.wasm"), 1024, within.clone()).unwrap_err();
        assert!(
            e.to_string()
                .contains("is outside the node's image directories"),
            "{e}"
        );
        let e = read_quickly(&images.join("../admin.token"), 1024, within).unwrap_err();
        assert!(
            e.to_string()
                .contains("is outside the node's image directories"),
            "{e}"
        );
        // No image dirs: no local images at all.
        let e = read_quickly(&app, 1024, LocalImages::Within(vec![])).unwrap_err();
        assert!(e.to_string().contains("--image-dir"), "{e}");

        // The size limit holds while reading.
        let e = read_quickly(&app, 4, LocalImages::Any).unwrap_err();
        assert!(
            matches!(e, ImagePullError::TooLarge { limit: 4, .. }),
            "{e}"
        );
    }
}
