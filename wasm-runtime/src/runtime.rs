//! The [`Runtime`]: one per node. It owns the engine and ticker, pulls and compiles images,
//! starts containers, and gives access to their logs.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, InstancePre, Module, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cache::{ArtifactCache, Compiled, Lookup};
use crate::container::{
    Container, ContainerShared, ContainerUsage, ExitStatus, Outcome, StartError, UsageSnapshot,
    exit_status,
};
use crate::engine::{
    AllocatorKind, EpochTicker, RuntimeConfig, RuntimeError, build_engine, engine_fingerprint,
};
use crate::guest::{Linkers, P1State, P2State, Serving, StoreFactory};
use crate::http::HttpServer;
use crate::image::{
    BlobStore, Digest, FileStamp, HttpClient, ImagePullError, PullPolicy, Reference, Source,
    WorkloadKind, fetch_http, http_client, parse_reference, read_local, stamp_local,
};
use crate::limits::{CpuThrottle, MemoryBudget};
use crate::logs::{self, ContainerLogs, LogConfig, LogError, LogSink};
use crate::registry::{
    Endpoint, KeyedLocks, RegistryClients, RegistryCredential, RegistryError, RegistryRef, Step,
    next_step, wasm_from_tar,
};
use crate::spec::{ContainerSpec, valid_id};

/// A pulled, compiled and pre-linked image, shared by every container that runs it.
pub struct Image {
    reference: String,
    digest: Digest,
    kind: WorkloadKind,
    size: u64,
    pub(crate) prepared: Prepared,
}

/// The pre-instantiated form of each kind (imports resolved and type-checked once).
pub(crate) enum Prepared {
    P1(InstancePre<P1State>),
    Cli(CommandPre<P2State>),
    Http(ProxyPre<P2State>),
}

impl Image {
    /// The reference it was first pulled by.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The SHA-256 of its bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// What kind of workload it is.
    pub fn kind(&self) -> WorkloadKind {
        self.kind
    }

    /// Its size in bytes (the `.wasm`, not the compiled code).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("reference", &self.reference)
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .finish()
    }
}

/// How to pull an image.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// When to fetch it again.
    pub policy: PullPolicy,
    /// Registry credentials (a pod's `imagePullSecrets`), tried for the registry host each
    /// names.
    pub credentials: Vec<RegistryCredential>,
}

/// A pulled image and how the pull went.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The compiled image.
    pub image: Arc<Image>,
    /// What a container status's `imageID` shows: `REGISTRY/REPO@sha256:<manifest>` for a
    /// registry image (the manifest, or index, the reference resolved to), `sha256:<hex>` of
    /// the `.wasm` otherwise.
    pub image_id: String,
    /// Whether anything was fetched over the network (false: served from the node's store).
    pub fetched: bool,
    /// The image's size in bytes (the layer holding the `.wasm`, or the `.wasm`).
    pub size: u64,
    /// How long the pull waited for another pull of the same image or blob to finish.
    pub waited: Duration,
}

/// What a fetch produced, before compiling.
struct Fetched {
    digest: Digest,
    bytes: Bytes,
    /// The image already held for `digest`, when `bytes` were not read for it.
    held: Option<Arc<Image>>,
    image_id: String,
    fetched: bool,
    size: u64,
    waited: Duration,
}

/// Why pulling from one registry endpoint failed: the registry (its answer or its
/// content; a remote failure lets the next endpoint try), or the node itself.
enum WalkError {
    Registry(RegistryError),
    Node(ImagePullError),
}

impl From<RegistryError> for WalkError {
    fn from(e: RegistryError) -> Self {
        WalkError::Registry(e)
    }
}

impl From<ImagePullError> for WalkError {
    fn from(e: ImagePullError) -> Self {
        WalkError::Node(e)
    }
}

/// Counters of the image pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Images compiled with Cranelift (a cache miss).
    pub compiles: u64,
    /// Compiled artifacts loaded from the disk cache.
    pub cache_hits: u64,
    /// Cache entries discarded as corrupt (then recompiled).
    pub cache_discarded: u64,
    /// Remote fetches over the network.
    pub fetches: u64,
    /// Local image files read (a pull of a held image whose file is unchanged reads none).
    pub local_reads: u64,
    /// Distinct images held in memory.
    pub images: usize,
    /// Guest instances made (a command's run, one per wasi:http request).
    pub instantiations: u64,
}

/// What the runtime remembers of a held image for garbage collection.
#[derive(Debug, Clone)]
struct ImageRecord {
    first_seen: Instant,
    last_used: Instant,
    /// The stored blobs its pulls started from: a registry image's top manifest (by tag
    /// or digest), a file or URL image's own blob.
    roots: std::collections::BTreeSet<Digest>,
}

/// What one image garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageGcReport {
    /// The images removed, by the names they were pulled by.
    pub removed: Vec<Vec<String>>,
    /// Bytes of blobs and compiled artifacts deleted.
    pub bytes_freed: u64,
    /// Disk usage before, in percent.
    pub usage_percent: u64,
}

#[derive(Default)]
struct Counters {
    compiles: AtomicU64,
    cache_hits: AtomicU64,
    cache_discarded: AtomicU64,
    fetches: AtomicU64,
    local_reads: AtomicU64,
    /// Shared with every container's store factory.
    instantiations: Arc<AtomicU64>,
}

/// The node's wasm container runtime. Cheap to clone (a handle).
///
/// Containers outlive the handles: each one runs until it ends, is stopped, or its
/// [`Container`] is dropped, and the engine and epoch ticker live as long as any container
/// does. [`Runtime::shutdown`] kills whatever is left.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    engine: Engine,
    allocator: AllocatorKind,
    fingerprint: String,
    linkers: Linkers,
    blobs: BlobStore,
    cache: ArtifactCache,
    logs_dir: PathBuf,
    http: HttpClient,
    registries: RegistryClients,
    /// Serializes pulls per registry reference and downloads per blob digest.
    pull_locks: KeyedLocks,
    /// The names each held image was pulled by (references, registry image IDs, digests),
    /// by the digest of its `.wasm`: what a Node's `status.images` lists.
    names: Mutex<HashMap<Digest, std::collections::BTreeSet<String>>>,
    /// One cell per digest: concurrent pulls of one image share one compile.
    images: Mutex<HashMap<Digest, Arc<OnceCell<Arc<Image>>>>>,
    /// When each held image was first pulled and last used, and the store entries that
    /// keep it (top manifests, or the blob of a file or URL image): what image garbage
    /// collection decides by and keeps.
    usage: Mutex<HashMap<Digest, ImageRecord>>,
    /// Each local image file as it was when last read, and the digest of what was read:
    /// a pod start whose file is unchanged neither reads nor hashes it again.
    local_seen: Mutex<HashMap<PathBuf, (FileStamp, Digest)>>,
    /// Held shared by every pull in progress; the garbage collection's sweep of the blob
    /// store takes it exclusively, and skips its turn while any pull runs (a pull's blobs
    /// are stored before its image is held, so a sweep then would take them).
    pulls: tokio::sync::RwLock<()>,
    /// A collection removed images but could not sweep: the next one sweeps.
    sweep_pending: std::sync::atomic::AtomicBool,
    /// The running containers' observable parts and start times, by id: what
    /// [`Runtime::usage`] reads. Removed by the supervisor when the container ends.
    running: Mutex<HashMap<String, (Arc<ContainerShared>, std::time::SystemTime)>>,
    /// The standard input of running commands started with `stdin: true`, by id.
    stdins: Mutex<HashMap<String, crate::stdin::Stdin>>,
    /// The latest attempt of every container started here, by id, with its log writer's
    /// progress while it runs (for followers). Readers need the attempt: a container's
    /// first attempt makes its log file only when it writes (see `logs::open`). Removed
    /// with the container's logs.
    log_attempts: Mutex<HashMap<String, logs::LatestAttempt>>,
    counters: Counters,
    /// Parent of every container's kill token.
    root: CancellationToken,
    /// Every container's supervisor task.
    tracker: TaskTracker,
    ticker: Mutex<Option<EpochTicker>>,
    /// The addresses HTTP containers serve on now (what a pod's `localhost` may reach).
    serving: Arc<Serving>,
    /// The client configuration of guests' `https` requests (`egress_tls`).
    egress_tls: Arc<rustls::ClientConfig>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("data_dir", &self.inner.config.data_dir)
            .field("allocator", &self.inner.allocator)
            .field("fingerprint", &self.inner.fingerprint)
            .finish()
    }
}

/// How long a finished container's log writer may take to flush before we give up on it.
const LOG_FLUSH: Duration = Duration::from_secs(10);

impl Runtime {
    /// Creates the engine (pooling if possible), the data dir layout and the epoch ticker.
    ///
    /// This does a little blocking work (creating directories, reserving the instance pool):
    /// call it at startup, not from a latency-sensitive task.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        if config.epoch_interval.is_zero() {
            return Err(RuntimeError::Config("epoch_interval must be > 0".into()));
        }
        if config.log_max_files == 0 || config.log_max_bytes < 1024 {
            return Err(RuntimeError::Config(
                "log_max_files must be >= 1 and log_max_bytes >= 1024".into(),
            ));
        }
        let (engine, allocator) = build_engine(config.pooling)?;
        let fingerprint = engine_fingerprint(&engine);
        let linkers = Linkers::new(&engine).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        let blobs = BlobStore::new(&config.data_dir);
        let cache = ArtifactCache::new(&config.data_dir, &fingerprint);
        let logs_dir = config.data_dir.join("logs");
        // Owner-only (see `private`): blobs are whatever files pods named as images, logs
        // what guests print. What an older version left readable is fixed here.
        let data_dir_err = |dir: &Path| {
            let path = dir.to_path_buf();
            move |source| RuntimeError::DataDir { path, source }
        };
        crate::private::create_private_dir(&config.data_dir)
            .map_err(data_dir_err(&config.data_dir))?;
        for dir in blobs
            .dirs()
            .into_iter()
            .chain([cache.dir(), logs_dir.as_path()])
        {
            crate::private::create_private_dir(dir)
                .and_then(|()| crate::private::restrict_tree(dir).map(drop))
                .map_err(data_dir_err(dir))?;
        }
        let registries = RegistryClients::new(config.registries.clone(), Duration::from_secs(30))
            .map_err(RuntimeError::Config)?;
        let egress_tls = crate::egress_tls::client_config(&config.egress_ca_pems)?;
        let ticker = EpochTicker::start(engine.clone(), config.epoch_interval)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                engine,
                allocator,
                fingerprint,
                linkers,
                blobs,
                cache,
                logs_dir,
                http: http_client(),
                registries,
                pull_locks: KeyedLocks::default(),
                names: Mutex::new(HashMap::new()),
                images: Mutex::new(HashMap::new()),
                usage: Mutex::new(HashMap::new()),
                local_seen: Mutex::new(HashMap::new()),
                pulls: tokio::sync::RwLock::new(()),
                sweep_pending: std::sync::atomic::AtomicBool::new(false),
                stdins: Mutex::new(HashMap::new()),
                log_attempts: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                root: CancellationToken::new(),
                tracker: TaskTracker::new(),
                ticker: Mutex::new(Some(ticker)),
                serving: Arc::default(),
                egress_tls,
            }),
        })
    }

    /// Which instance allocator is in use (pooling, or on-demand and why).
    pub fn allocator(&self) -> &AllocatorKind {
        &self.inner.allocator
    }

    /// The engine fingerprint naming this engine's compiled artifacts.
    pub fn engine_fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The configuration the runtime was created with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The resource usage of every running container now (see `limits`): a snapshot of
    /// the counters the limits keep, nothing measured anew.
    pub fn usage(&self) -> UsageSnapshot {
        let taken_at = std::time::SystemTime::now();
        let mut containers: Vec<ContainerUsage> = lock(&self.inner.running)
            .iter()
            .map(|(id, (shared, started))| shared.usage(id, *started))
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        UsageSnapshot {
            taken_at,
            containers,
        }
    }

    /// Image pipeline counters.
    pub fn stats(&self) -> RuntimeStats {
        let c = &self.inner.counters;
        RuntimeStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_discarded: c.cache_discarded.load(Ordering::Relaxed),
            fetches: c.fetches.load(Ordering::Relaxed),
            local_reads: c.local_reads.load(Ordering::Relaxed),
            instantiations: c.instantiations.load(Ordering::Relaxed),
            images: lock(&self.inner.images)
                .values()
                .filter(|c| c.initialized())
                .count(),
        }
    }

    /// Pulls an image with [`PullPolicy::IfNotPresent`] and no credentials.
    pub async fn pull(&self, reference: &str) -> Result<Arc<Image>, ImagePullError> {
        Ok(self
            .pull_with(reference, &PullOptions::default())
            .await?
            .image)
    }

    /// Pulls an image: fetch (or find) its bytes, check the pin, compile it (or load the
    /// compiled artifact), detect its kind and pre-link it. Bounded by `pull_timeout`.
    pub async fn pull_with(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<Pulled, ImagePullError> {
        let timeout = self.inner.config.pull_timeout;
        let _pulling = self.inner.pulls.read().await;
        match tokio::time::timeout(timeout, self.pull_inner(reference, options)).await {
            Ok(result) => result,
            Err(_) => Err(ImagePullError::Timeout {
                reference: reference.to_string(),
                timeout,
            }),
        }
    }

    async fn pull_inner(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<Pulled, ImagePullError> {
        let parsed = parse_reference(reference)?;
        // A pinned file or URL image already in memory needs nothing at all.
        if !matches!(parsed.source, Source::Registry(_))
            && let Some(pin) = parsed.pin
            && let Some(image) = self.cached_image(&pin)
        {
            return Ok(Pulled {
                image_id: pin.to_string(),
                size: image.size,
                image,
                fetched: false,
                waited: Duration::ZERO,
            });
        }
        let fetched = self.fetch(&parsed, options).await?;
        let cell = lock(&self.inner.images)
            .entry(fetched.digest)
            .or_default()
            .clone();
        let (held, bytes) = (fetched.held, fetched.bytes);
        let image = cell
            .get_or_try_init(|| async {
                match held {
                    Some(image) => Ok(image),
                    None => {
                        self.compile(parsed.original.clone(), fetched.digest, bytes)
                            .await
                    }
                }
            })
            .await?
            .clone();
        let root = fetched
            .image_id
            .rsplit_once('@')
            .map_or(fetched.image_id.as_str(), |(_, d)| d);
        if let Some(root) = Digest::parse(root) {
            let now = Instant::now();
            lock(&self.inner.usage)
                .entry(fetched.digest)
                .or_insert_with(|| ImageRecord {
                    first_seen: now,
                    last_used: now,
                    roots: Default::default(),
                })
                .roots
                .insert(root);
        }
        self.touch(&fetched.digest);
        {
            let mut names = lock(&self.inner.names);
            let names = names.entry(fetched.digest).or_default();
            names.insert(parsed.original.trim().to_string());
            names.insert(fetched.digest.to_string());
            if let Some((_, hex)) = fetched.image_id.rsplit_once("@sha256:") {
                names.insert(fetched.image_id.clone());
                names.insert(format!("sha256:{hex}"));
            }
        }
        Ok(Pulled {
            image,
            image_id: fetched.image_id,
            fetched: fetched.fetched,
            size: fetched.size,
            waited: fetched.waited,
        })
    }

    /// Whether pulling `reference` needs no download: a registry image whose manifest is in
    /// the node's store (by its pin, or by what its tag last resolved to), or a file or URL
    /// image held in memory.
    pub async fn image_present(&self, reference: &str) -> bool {
        let Ok(parsed) = parse_reference(reference) else {
            return false;
        };
        let Source::Registry(r) = &parsed.source else {
            return self.images().iter().any(|i| i.reference() == reference);
        };
        let (inner, r) = (self.inner.clone(), r.clone());
        tokio::task::spawn_blocking(move || {
            let digest = r.pin().or_else(|| inner.blobs.lookup_ref(&r.tag_key()));
            digest.is_some_and(|d| inner.blobs.contains(&d))
        })
        .await
        .unwrap_or(false)
    }

    fn cached_image(&self, digest: &Digest) -> Option<Arc<Image>> {
        lock(&self.inner.images)
            .get(digest)
            .and_then(|cell| cell.get().cloned())
    }

    /// Gets the image's bytes and digest (checking the pin), storing them as a blob.
    async fn fetch(&self, r: &Reference, options: &PullOptions) -> Result<Fetched, ImagePullError> {
        let policy = options.policy;
        let sha = |digest: Digest, bytes: Bytes, fetched: bool| Fetched {
            digest,
            image_id: digest.to_string(),
            size: bytes.len() as u64,
            bytes,
            held: None,
            fetched,
            waited: Duration::ZERO,
        };
        let inner = self.inner.clone();
        let task_err = |e: tokio::task::JoinError| ImagePullError::Task {
            reference: r.original.clone(),
            message: e.to_string(),
        };
        let limit = inner.config.max_image_bytes;
        let mut local = None;
        let (bytes, remote) = match &r.source {
            Source::File(path) => {
                let (path, reference) = (path.clone(), r.original.clone());
                let policy = inner.config.local_images.clone();
                // An unchanged file whose image is held is not read again. The checks of
                // a read (allowed, a regular file) still run on every pull.
                let seen = lock(&inner.local_seen).get(&path).copied();
                // A pin other than what the file held is checked (and refused) by a read.
                if let Some((was, digest)) = seen
                    && r.pin.is_none_or(|pin| pin == digest)
                    && let Some(image) = self.cached_image(&digest)
                {
                    let (path, reference, policy) =
                        (path.clone(), reference.clone(), policy.clone());
                    let now = tokio::task::spawn_blocking(move || {
                        stamp_local(&path, &reference, &policy)
                    })
                    .await
                    .map_err(task_err)??;
                    if now == was {
                        return Ok(Fetched {
                            size: image.size,
                            held: Some(image),
                            ..sha(digest, Bytes::new(), false)
                        });
                    }
                }
                inner.counters.local_reads.fetch_add(1, Ordering::Relaxed);
                let (bytes, stamp) = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || read_local(&path, &reference, limit, &policy)
                })
                .await
                .map_err(task_err)??;
                local = Some((path, stamp));
                (bytes, false)
            }
            Source::Registry(registry_ref) => {
                return self.fetch_registry(r, registry_ref, options).await;
            }
            Source::Http(uri) => {
                let known = match (r.pin, policy) {
                    (Some(pin), _) => Some(pin),
                    (None, PullPolicy::IfNotPresent | PullPolicy::Never) => {
                        let (inner, original) = (inner.clone(), r.original.clone());
                        tokio::task::spawn_blocking(move || inner.blobs.lookup_ref(&original))
                            .await
                            .map_err(task_err)?
                    }
                    (None, PullPolicy::Always) => None,
                };
                if let Some(digest) = known {
                    let inner = inner.clone();
                    let stored =
                        tokio::task::spawn_blocking(move || inner.blobs.read_verified(&digest))
                            .await
                            .map_err(task_err)?;
                    if let Some(bytes) = stored {
                        return Ok(sha(digest, bytes, false));
                    }
                }
                if policy == PullPolicy::Never {
                    return Err(ImagePullError::NeverPull {
                        reference: r.original.clone(),
                    });
                }
                inner.counters.fetches.fetch_add(1, Ordering::Relaxed);
                (
                    fetch_http(&inner.http, &r.original, uri, limit).await?,
                    true,
                )
            }
        };
        let (pin, original) = (r.pin, r.original.clone());
        tokio::task::spawn_blocking(move || {
            let digest = Digest::of(&bytes);
            if let Some(expected) = pin
                && expected != digest
            {
                return Err(ImagePullError::DigestMismatch {
                    reference: original,
                    expected,
                    actual: digest,
                });
            }
            inner
                .blobs
                .write(&digest, &bytes)
                .map_err(|source| ImagePullError::Store {
                    path: inner.config.data_dir.join("blobs"),
                    source,
                })?;
            if remote
                && pin.is_none()
                && let Err(e) = inner.blobs.record_ref(&original, &digest)
            {
                tracing::warn!("remembering {original} -> {digest} failed: {e}");
            }
            if let Some((path, stamp)) = local {
                let mut seen = lock(&inner.local_seen);
                if stamp.settled(inner.config.local_image_settle) {
                    seen.insert(path, (stamp, digest));
                } else {
                    seen.remove(&path);
                }
            }
            Ok(sha(digest, bytes, remote))
        })
        .await
        .map_err(task_err)?
    }

    /// Runs blocking store work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        reference: &str,
        f: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, ImagePullError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| ImagePullError::Task {
                reference: reference.to_string(),
                message: e.to_string(),
            })
    }

    /// Pulls a registry image: from the node's store if the policy allows and it is there,
    /// otherwise from the registry's endpoints in order (mirrors first). One pull per
    /// reference at a time, so pods pulling one image at once share its download.
    async fn fetch_registry(
        &self,
        r: &Reference,
        registry_ref: &RegistryRef,
        options: &PullOptions,
    ) -> Result<Fetched, ImagePullError> {
        let started = std::time::Instant::now();
        let _pulling = self
            .inner
            .pull_locks
            .lock(&format!("ref:{}", registry_ref.oci.whole()))
            .await;
        let waited = started.elapsed();
        let wrap = |e: RegistryError| ImagePullError::Registry {
            reference: r.original.clone(),
            message: e.to_string(),
        };
        let pin = registry_ref.pin();
        let known = match (pin, options.policy) {
            (Some(pin), _) => Some(pin),
            (None, PullPolicy::Always) => None,
            (None, _) => {
                let key = registry_ref.tag_key();
                self.blocking(&r.original, move |inner| inner.blobs.lookup_ref(&key))
                    .await?
            }
        };
        if let Some(top) = known
            && let Some((digest, bytes, size)) = self.walk_stored(&r.original, top).await?
        {
            return Ok(Fetched {
                digest,
                bytes,
                held: None,
                image_id: registry_ref.image_id(&top),
                fetched: false,
                size,
                waited,
            });
        }
        if options.policy == PullPolicy::Never {
            return Err(ImagePullError::NeverPull {
                reference: r.original.clone(),
            });
        }
        let mut failures = Vec::new();
        for endpoint in self
            .inner
            .registries
            .endpoints(registry_ref, &options.credentials)
        {
            match self.walk_remote(&r.original, &endpoint).await {
                Ok((top, digest, bytes, size)) => {
                    if pin.is_none() {
                        let key = registry_ref.tag_key();
                        let recorded = self
                            .blocking(&r.original, move |inner| inner.blobs.record_ref(&key, &top))
                            .await?;
                        if let Err(e) = recorded {
                            tracing::warn!("remembering {} -> {top} failed: {e}", r.original);
                        }
                    }
                    return Ok(Fetched {
                        digest,
                        bytes,
                        held: None,
                        image_id: registry_ref.image_id(&top),
                        fetched: true,
                        size,
                        waited,
                    });
                }
                // Content that is wrong is wrong everywhere: no point asking a fallback.
                Err(WalkError::Registry(e @ RegistryError::Content(_))) => return Err(wrap(e)),
                Err(WalkError::Registry(e)) => failures.push(e.to_string()),
                Err(WalkError::Node(e)) => return Err(e),
            }
        }
        Err(wrap(RegistryError::Remote(failures.join("; "))))
    }

    /// Follows a manifest (and an index's `wasi/wasm` entry) to the `.wasm` using only the
    /// node's store: `None` if anything is missing (or damaged, then removed).
    async fn walk_stored(
        &self,
        reference: &str,
        top: Digest,
    ) -> Result<Option<(Digest, Bytes, u64)>, ImagePullError> {
        let limit = self.inner.config.max_image_bytes;
        self.blocking(reference, move |inner| {
            let mut manifest = inner.blobs.read_verified(&top)?;
            for _ in 0..2 {
                match next_step(&manifest).ok()? {
                    Step::Manifest(child) => manifest = inner.blobs.read_verified(&child)?,
                    Step::Layer {
                        digest, packing, ..
                    } => {
                        let layer = inner.blobs.read_verified(&digest)?;
                        let wasm = wasm_from_tar(&layer, packing, limit).ok()?;
                        return Some((Digest::of(&wasm), wasm, layer.len() as u64));
                    }
                }
            }
            None
        })
        .await
    }

    /// Fetches the manifest (by tag or pin), the `wasi/wasm` manifest of an index, and the
    /// layer (unless stored), storing each once verified. Returns the top manifest's digest,
    /// the `.wasm`'s digest and bytes, and the layer's size.
    async fn walk_remote(
        &self,
        reference: &str,
        endpoint: &Endpoint,
    ) -> Result<(Digest, Digest, Bytes, u64), WalkError> {
        let limit = self.inner.config.max_image_bytes;
        let (mut manifest, top) = endpoint.manifest(None).await?;
        self.store_blob(reference, top, manifest.clone()).await?;
        let mut step = next_step(&manifest).map_err(RegistryError::Content)?;
        if let Step::Manifest(child) = step {
            let (bytes, digest) = endpoint.manifest(Some(&child)).await?;
            self.store_blob(reference, digest, bytes.clone()).await?;
            manifest = bytes;
            step = next_step(&manifest).map_err(RegistryError::Content)?;
        }
        let Step::Layer {
            digest,
            size,
            packing,
        } = step
        else {
            return Err(RegistryError::Content(format!(
                "the wasi/wasm entry of index {top} is another index"
            ))
            .into());
        };
        // One download per blob, whichever references name it.
        let _downloading = self.inner.pull_locks.lock(&format!("blob:{digest}")).await;
        let stored = self
            .blocking(reference, move |inner| inner.blobs.read_verified(&digest))
            .await?;
        let layer = match stored {
            Some(layer) => layer,
            None => {
                self.inner.counters.fetches.fetch_add(1, Ordering::Relaxed);
                let layer = endpoint.blob(&digest, size, limit).await?;
                self.store_blob(reference, digest, layer.clone()).await?;
                layer
            }
        };
        let size = layer.len() as u64;
        let wasm = self
            .blocking(reference, move |_| wasm_from_tar(&layer, packing, limit))
            .await?
            .map_err(|e| RegistryError::Content(format!("layer {digest}: {e}")))?;
        Ok((top, Digest::of(&wasm), wasm, size))
    }

    /// Stores a verified blob (blocking work off the async workers).
    async fn store_blob(
        &self,
        reference: &str,
        digest: Digest,
        bytes: Bytes,
    ) -> Result<(), WalkError> {
        self.blocking(reference, move |inner| inner.blobs.write(&digest, &bytes))
            .await?
            .map_err(|e| RegistryError::Store(format!("storing blob {digest}: {e}")).into())
    }

    /// Loads the compiled artifact or compiles (off the async workers), then prepares.
    async fn compile(
        &self,
        reference: String,
        digest: Digest,
        bytes: Bytes,
    ) -> Result<Arc<Image>, ImagePullError> {
        let inner = self.inner.clone();
        let task_reference = reference.clone();
        tokio::task::spawn_blocking(move || {
            let c = &inner.counters;
            let compiled = match inner.cache.load(&inner.engine, &digest) {
                Lookup::Hit(compiled) => {
                    c.cache_hits.fetch_add(1, Ordering::Relaxed);
                    compiled
                }
                lookup => {
                    if let Lookup::Discarded = lookup {
                        c.cache_discarded.fetch_add(1, Ordering::Relaxed);
                    }
                    c.compiles.fetch_add(1, Ordering::Relaxed);
                    let compiled = compile_bytes(&inner.engine, &bytes).map_err(|message| {
                        ImagePullError::Invalid {
                            reference: reference.clone(),
                            digest,
                            message,
                        }
                    })?;
                    if let Err(e) = inner.cache.store(&compiled, &digest) {
                        tracing::warn!("caching the compiled {reference}: {e}");
                    }
                    compiled
                }
            };
            let (kind, prepared) =
                prepare(&inner.engine, &inner.linkers, compiled).map_err(|message| {
                    ImagePullError::NotRunnable {
                        reference: reference.clone(),
                        digest,
                        message,
                    }
                })?;
            Ok(Arc::new(Image {
                reference,
                digest,
                kind,
                size: bytes.len() as u64,
                prepared,
            }))
        })
        .await
        .map_err(|e| ImagePullError::Task {
            reference: task_reference,
            message: e.to_string(),
        })?
    }

    /// Marks a held image as used now.
    fn touch(&self, digest: &Digest) {
        if let Some(r) = lock(&self.inner.usage).get_mut(digest) {
            r.last_used = Instant::now();
        }
    }

    /// Image garbage collection (see [`crate::gc`]): marks the held images that `in_use`
    /// says a pod names (by any name they were pulled by) as used now, decides with
    /// `policy` against the disk holding the data dir, and removes what the plan names: the
    /// held image, its compiled artifact, and then every stored blob that no remaining
    /// image reaches (also those left from before a restart), with the tag records that
    /// pointed at them. Blobs written less than the minimum age ago are kept (a pull in
    /// progress). Images held only by running containers stay usable by them.
    pub async fn collect_images(
        &self,
        policy: &crate::gc::ImageGcPolicy,
        in_use: impl Fn(&str) -> bool,
    ) -> std::io::Result<ImageGcReport> {
        let now = Instant::now();
        let held: Vec<Arc<Image>> = self.images();
        let mut usages = Vec::with_capacity(held.len());
        for image in &held {
            let used = self.image_names(&image.digest).iter().any(|n| in_use(n));
            if used {
                self.touch(&image.digest);
            }
            let record = lock(&self.inner.usage).get(&image.digest).cloned();
            let (first_seen, last_used) =
                record.map_or((now, now), |r| (r.first_seen, r.last_used));
            usages.push(crate::gc::ImageUsage {
                digest: image.digest,
                size: image.size,
                first_seen,
                last_used,
                in_use: used,
            });
        }
        let dir = self.inner.config.data_dir.clone();
        let disk = tokio::task::spawn_blocking(move || crate::gc::disk_usage(&dir))
            .await
            .map_err(std::io::Error::other)??;
        let plan = crate::gc::plan(&usages, disk, policy, now);
        let mut report = ImageGcReport {
            usage_percent: disk.percent(),
            ..Default::default()
        };
        let pending = self.inner.sweep_pending.load(Ordering::Relaxed);
        if plan.is_empty() && plan.bytes_to_free == 0 && !pending {
            return Ok(report);
        }
        let mut artifacts = Vec::new();
        for digest in plan.all() {
            report.removed.push(self.image_names(digest));
            self.forget_image(digest);
            lock(&self.inner.usage).remove(digest);
            let (artifact, sum) = self.inner.cache.paths(digest);
            artifacts.extend([artifact, sum]);
        }
        let sweeping = self.inner.pulls.try_write();
        if sweeping.is_err() {
            tracing::debug!("image pulls in progress: the blob store is swept next time");
        }
        self.inner
            .sweep_pending
            .store(sweeping.is_err(), Ordering::Relaxed);
        let roots: Vec<Digest> = lock(&self.inner.usage)
            .values()
            .flat_map(|r| r.roots.iter().copied())
            .collect();
        let inner = self.inner.clone();
        let min_age = policy.minimum_age;
        let sweep = sweeping.is_ok();
        report.bytes_freed = tokio::task::spawn_blocking(move || {
            let mut freed = 0;
            for path in artifacts {
                freed += remove_counted(&path);
            }
            if sweep {
                freed += inner.blobs.sweep(&roots, min_age);
            }
            freed
        })
        .await
        .map_err(std::io::Error::other)?;
        drop(sweeping);
        Ok(report)
    }

    /// Drops the in-memory compiled image for `digest` (running containers keep theirs); a
    /// later pull loads the artifact from the disk cache again. Returns whether it was held.
    pub fn forget_image(&self, digest: &Digest) -> bool {
        lock(&self.inner.names).remove(digest);
        lock(&self.inner.images).remove(digest).is_some()
    }

    /// The names a held image was pulled by: each reference as written, and for registry
    /// images `REGISTRY/REPO@sha256:<manifest>` and `sha256:<manifest>`, plus the
    /// `.wasm`'s own digest; sorted.
    pub fn image_names(&self, digest: &Digest) -> Vec<String> {
        lock(&self.inner.names)
            .get(digest)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_else(|| vec![digest.to_string()])
    }

    /// The images pulled and compiled, held in memory (what a node reports in
    /// `status.images`, for the scheduler's image locality).
    pub fn images(&self) -> Vec<Arc<Image>> {
        lock(&self.inner.images)
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    /// Starts a container from a pulled image. For an HTTP component the listening socket is
    /// bound before this returns ([`Container::http_addr`]).
    pub async fn start(&self, spec: ContainerSpec, image: &Image) -> Result<Container, StartError> {
        let inner = &self.inner;
        if inner.root.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if !valid_id(&spec.id) {
            return Err(StartError::InvalidId(spec.id));
        }
        let listener = match &image.prepared {
            Prepared::Http(_) => {
                let addr = spec
                    .http_listen
                    .ok_or_else(|| StartError::NoListenAddress {
                        image: image.reference.clone(),
                    })?;
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind { addr, source })?,
                )
            }
            _ => None,
        };
        let http_addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
                addr: spec.http_listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                source,
            })?),
            None => None,
        };
        let id = spec.id.clone();
        let attempt = spec.restart_count;
        let log_config = LogConfig {
            max_bytes: inner.config.log_max_bytes,
            max_files: inner.config.log_max_files,
        };
        let (sink, writer) = logs::open(inner.logs_dir.join(&id), attempt, log_config).await?;
        let argv = if spec.argv.is_empty() {
            vec![image.reference.clone()]
        } else {
            spec.argv.clone()
        };
        let budget = MemoryBudget::new(spec.resources.memory_bytes);
        let cpu = CpuThrottle::new(spec.resources.cpu_millicores);
        let (spec_http, spec_memory) = (spec.http, spec.resources.memory_bytes);
        // A command started with `stdin: true` reads a pipe the node writes to.
        let (stdin_reader, stdin) = match (&image.prepared, spec.stdin) {
            (Prepared::P1(_) | Prepared::Cli(_), true) => {
                let (reader, stdin) = crate::stdin::pipe();
                (Some(reader), Some(stdin))
            }
            _ => (None, None),
        };
        let factory = StoreFactory {
            engine: inner.engine.clone(),
            serving: inner.serving.clone(),
            egress_tls: inner.egress_tls.clone(),
            cpu: cpu.clone(),
            spec: Arc::new(spec),
            argv: Arc::new(argv),
            budget: budget.clone(),
            logs: sink.clone(),
            epoch_interval: inner.config.epoch_interval,
            stdin: Arc::new(Mutex::new(stdin_reader)),
            instantiations: inner.counters.instantiations.clone(),
        };
        let kill = inner.root.child_token();
        let stop = kill.child_token();
        let serves_http = matches!(image.prepared, Prepared::Http(_));
        let shared = ContainerShared::new(budget.clone(), cpu, serves_http);
        let mount_err = |e: crate::guest::StoreError| StartError::Mount(e.to_string());
        let run: Pin<Box<dyn Future<Output = ExitStatus> + Send>> =
            match (&image.prepared, listener) {
                (Prepared::P1(pre), _) => {
                    let store = factory.p1_store().map_err(mount_err)?;
                    Box::pin(run_p1(pre.clone(), store, stop.clone(), budget, sink))
                }
                (Prepared::Cli(pre), _) => {
                    let store = factory.p2_store().map_err(mount_err)?;
                    Box::pin(run_cli(pre.clone(), store, stop.clone(), budget, sink))
                }
                (Prepared::Http(pre), Some(listener)) => {
                    // Check the mounts once now, so that a bad one fails the start rather than
                    // every request.
                    drop(factory.p2_store().map_err(mount_err)?);
                    drop(sink);
                    let pool = match &inner.allocator {
                        AllocatorKind::Pooling { total_instances } => Some(*total_instances),
                        AllocatorKind::OnDemand { .. } => None,
                    };
                    let max = crate::spec::max_concurrency(&spec_http, spec_memory, pool);
                    let server = Arc::new(HttpServer {
                        pre: pre.clone(),
                        factory,
                        shared: shared.clone(),
                        stop: stop.clone(),
                        kill: kill.clone(),
                        tracker: TaskTracker::new(),
                        slots: Arc::new(tokio::sync::Semaphore::new(max as usize)),
                        max_concurrency: max,
                        request_timeout: spec_http
                            .request_timeout
                            .unwrap_or(crate::spec::DEFAULT_REQUEST_TIMEOUT),
                    });
                    // Served (for the pod's `localhost`) for as long as the serve loop runs.
                    let serving = http_addr.map(|a| inner.serving.add(a));
                    Box::pin(async move {
                        let _serving = serving;
                        crate::http::serve(listener, server).await
                    })
                }
                (Prepared::Http(_), None) => {
                    return Err(StartError::NoListenAddress {
                        image: image.reference.clone(),
                    });
                }
            };
        lock(&inner.log_attempts).insert(id.clone(), (attempt, Some(writer.progress.clone())));
        match &stdin {
            Some(stdin) => lock(&inner.stdins).insert(id.clone(), stdin.clone()),
            None => lock(&inner.stdins).remove(&id),
        };
        lock(&inner.running).insert(id.clone(), (shared.clone(), std::time::SystemTime::now()));
        let running_shared = shared.clone();
        let (status_tx, status_rx) = watch::channel(None);
        let supervisor_inner = inner.clone();
        let supervisor_id = id.clone();
        inner.tracker.spawn(async move {
            let status = run.await;
            // Every store and log sink is gone with `run`: the writer flushes and ends.
            match tokio::time::timeout(LOG_FLUSH, writer.task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(container = %supervisor_id, "log writer failed: {e}"),
                Err(_) => tracing::error!(container = %supervisor_id, "log writer did not finish in {LOG_FLUSH:?}"),
            }
            if let Some((a, live)) = lock(&supervisor_inner.log_attempts).get_mut(&supervisor_id)
                && *a == attempt
            {
                *live = None;
            }
            if let Some(stdin) = &stdin {
                let mut stdins = lock(&supervisor_inner.stdins);
                if stdins.get(&supervisor_id).is_some_and(|s| s.same(stdin)) {
                    stdins.remove(&supervisor_id);
                }
            }
            {
                let mut running = lock(&supervisor_inner.running);
                if running
                    .get(&supervisor_id)
                    .is_some_and(|(s, _)| Arc::ptr_eq(s, &running_shared))
                {
                    running.remove(&supervisor_id);
                }
            }
            tracing::debug!(container = %supervisor_id, reason = %status.reason, code = status.code, "container ended");
            let _ = status_tx.send(Some(status));
        });
        Ok(Container {
            id,
            kind: image.kind,
            http_addr,
            status: status_rx,
            stop,
            kill,
            shared,
        })
    }

    /// The logs of a container (running or not).
    pub fn logs(&self, id: &str) -> Result<ContainerLogs, LogError> {
        if !valid_id(id) {
            return Err(LogError::InvalidId(id.to_string()));
        }
        let (attempt, live) = lock(&self.inner.log_attempts)
            .get(id)
            .cloned()
            .map_or((None, None), |(attempt, live)| (Some(attempt), live));
        Ok(ContainerLogs::new(
            id.to_string(),
            self.inner.logs_dir.join(id),
            attempt,
            live,
        ))
    }

    /// The standard input of the running command `id`, if it was started with
    /// `stdin: true` ([`ContainerSpec::stdin`]).
    pub fn stdin(&self, id: &str) -> Option<crate::stdin::Stdin> {
        lock(&self.inner.stdins).get(id).cloned()
    }

    /// Deletes every log file of a container (when its pod is gone).
    pub async fn remove_logs(&self, id: &str) -> Result<(), LogError> {
        if !valid_id(id) {
            return Err(LogError::InvalidId(id.to_string()));
        }
        lock(&self.inner.log_attempts).remove(id);
        logs::remove_all(self.inner.logs_dir.join(id)).await
    }

    /// Kills every container, waits up to `timeout` for them to end, and stops the epoch
    /// ticker. Stop containers gracefully first ([`Container::stop`]) if they deserve it.
    /// Returns whether everything ended in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.inner.root.cancel();
        self.inner.tracker.close();
        let done = tokio::time::timeout(timeout, self.inner.tracker.wait())
            .await
            .is_ok();
        if done {
            // Safe to stop ticking: no guest is left to interrupt.
            drop(lock(&self.inner.ticker).take());
        } else {
            tracing::warn!(
                "containers still running after {timeout:?}; the epoch ticker keeps running"
            );
        }
        done
    }
}

/// Compiles a core module or a component, by its header. Blocking (Cranelift).
fn compile_bytes(engine: &Engine, bytes: &[u8]) -> Result<Compiled, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a wasm binary (no \\0asm header)".to_string());
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Module::from_binary(engine, bytes).map(Compiled::Module),
        [0x0d, 0, 1, 0] => Component::from_binary(engine, bytes).map(Compiled::Component),
        _ => return Err(format!("unknown wasm version/layer {:?}", &bytes[4..8])),
    }
    .map_err(|e| format!("{e:#}"))
}

/// Detects the workload kind and pre-instantiates against the linkers.
fn prepare(
    engine: &Engine,
    linkers: &Linkers,
    compiled: Compiled,
) -> Result<(WorkloadKind, Prepared), String> {
    match compiled {
        Compiled::Module(module) => {
            let has_start = module
                .exports()
                .any(|e| e.name() == "_start" && matches!(e.ty(), ExternType::Func(_)));
            if !has_start {
                return Err(
                    "a core module without a `_start` export (only WASI preview1 commands run as \
                            modules; reactors are not supported)"
                        .to_string(),
                );
            }
            let pre = linkers
                .p1
                .instantiate_pre(&module)
                .map_err(|e| format!("{e:#}"))?;
            Ok((WorkloadKind::WasiP1Command, Prepared::P1(pre)))
        }
        Compiled::Component(component) => {
            let exports: Vec<String> = component
                .component_type()
                .exports(engine)
                .map(|(name, _)| name.to_string())
                .collect();
            let exports_interface = |prefix: &str| exports.iter().any(|n| n.starts_with(prefix));
            let http = exports_interface("wasi:http/incoming-handler@0.2");
            let cli = exports_interface("wasi:cli/run@0.2");
            if !http && !cli {
                return Err(format!(
                    "a component exporting neither wasi:http/incoming-handler@0.2 nor wasi:cli/run@0.2 \
                     (it exports: {})",
                    exports.join(", ")
                ));
            }
            let pre = linkers
                .p2
                .instantiate_pre(&component)
                .map_err(|e| format!("{e:#}"))?;
            if http {
                Ok((
                    WorkloadKind::WasiHttp,
                    Prepared::Http(ProxyPre::new(pre).map_err(|e| format!("{e:#}"))?),
                ))
            } else {
                Ok((
                    WorkloadKind::WasiCliCommand,
                    Prepared::Cli(CommandPre::new(pre).map_err(|e| format!("{e:#}"))?),
                ))
            }
        }
    }
}

async fn run_p1(
    pre: InstancePre<P1State>,
    mut store: Store<P1State>,
    stop: CancellationToken,
    budget: Arc<MemoryBudget>,
    logs: LogSink,
) -> ExitStatus {
    let outcome = {
        let run = async {
            let instance = match pre.instantiate_async(&mut store).await {
                Ok(instance) => instance,
                Err(e) => return Outcome::StartFailed(e),
            };
            let start = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                Ok(start) => start,
                Err(e) => return Outcome::StartFailed(e),
            };
            Outcome::Ran(start.call_async(&mut store, ()).await)
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => Outcome::Killed,
            outcome = run => outcome,
        }
    };
    let limit_hit = store.data().common.limiter.limit_hit();
    drop(store);
    exit_status(outcome, limit_hit, &budget, &logs)
}

async fn run_cli(
    pre: CommandPre<P2State>,
    mut store: Store<P2State>,
    stop: CancellationToken,
    budget: Arc<MemoryBudget>,
    logs: LogSink,
) -> ExitStatus {
    let outcome = {
        let run = async {
            let command = match pre.instantiate_async(&mut store).await {
                Ok(command) => command,
                Err(e) => return Outcome::StartFailed(e),
            };
            match command.wasi_cli_run().call_run(&mut store).await {
                Ok(Ok(())) => Outcome::Ran(Ok(())),
                Ok(Err(())) => Outcome::CliFailed,
                Err(e) => Outcome::Ran(Err(e)),
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => Outcome::Killed,
            outcome = run => outcome,
        }
    };
    let limit_hit = store.data().common.limiter.limit_hit();
    drop(store);
    exit_status(outcome, limit_hit, &budget, &logs)
}

/// Removes a file, returning its size (0 if it was not there or could not be removed).
fn remove_counted(path: &std::path::Path) -> u64 {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    match std::fs::remove_file(path) {
        Ok(()) => size,
        Err(_) => 0,
    }
}
