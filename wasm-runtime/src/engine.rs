//! The node's one wasmtime [`Engine`], its epoch ticker and its configuration.
//!
//! One engine per node, shared by every container: compiled code, the instance pool and the
//! epoch counter are per engine. Its settings:
//!
//! - **Epoch interruption** with a ticker thread (`std::thread`, not a tokio task, so that it
//!   keeps ticking even when every tokio worker is busy running guest code). Every store's
//!   deadline is one tick, and on each deadline the guest yields to the executor (and, under
//!   a CPU limit, sleeps; see `limits`). One spinning guest therefore occupies a worker for
//!   at most one epoch interval at a time.
//! - **The pooling allocator** when the host allows it: instance slots, linear memories and
//!   fiber stacks are reserved up front and recycled, which makes instantiation (one per
//!   HTTP request) several times cheaper. Reserving the pool needs a lot of *virtual* address
//!   space (every memory slot reserves 4 GiB + guard); where that fails (a `ulimit -v`, a
//!   32-bit host, a sandbox) the engine falls back to on-demand allocation, logs why, and
//!   [`AllocatorKind`] says which one is in use.
//! - Compiled artifacts are only valid for an engine with the same settings and wasmtime
//!   build: [`engine_fingerprint`] names them on disk (see `cache`).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::image::LocalImages;
use sha2::{Digest as _, Sha256};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How the runtime is set up. [`RuntimeConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where images (blobs), compiled artifacts and container logs live.
    pub data_dir: PathBuf,
    /// Use the pooling allocator (falling back to on-demand if it cannot be set up), or
    /// `None` for on-demand allocation only.
    pub pooling: Option<PoolingConfig>,
    /// How often the epoch advances: the longest a guest runs before yielding. Default 10 ms.
    pub epoch_interval: Duration,
    /// A container's log file is rotated when it reaches this size. Default 10 MiB
    /// (Kubernetes' `containerLogMaxSize`).
    pub log_max_bytes: u64,
    /// Rotated log files kept besides the current one. Default 4 (Kubernetes keeps 5 files
    /// in all by default).
    pub log_max_files: usize,
    /// Upper bound on a whole pull (fetch + compile). Default 5 minutes.
    pub pull_timeout: Duration,
    /// Largest image accepted, in bytes. Default 256 MiB.
    pub max_image_bytes: u64,
    /// Which local paths may be images. Default [`LocalImages::Any`]: the binary that
    /// embeds the runtime decides (`wharf node` allows only its `--image-dir`s).
    pub local_images: LocalImages,
    /// How long a local image file must have been unchanged (by its modification and
    /// change times) for a pull to trust that equal times mean equal bytes. A pull of an
    /// image held in memory whose file is unchanged then neither reads nor hashes it.
    /// Default 1 s: file times move in coarse ticks, so a write just after a read may
    /// leave them as they were; a file still for longer than a tick gets visibly newer
    /// times from any later write.
    pub local_image_settle: Duration,
    /// Registry mirrors, credentials and TLS roots. Default: none (registries reached
    /// directly over TLS with the system's roots, anonymously unless a pod brings
    /// credentials).
    pub registries: crate::registry::Registries,
    /// CA certificates (PEM) that guests' outgoing `https` requests trust besides the
    /// system's roots. A node gives its cluster's CA, so that pods reach the API server.
    pub egress_ca_pems: Vec<String>,
}

impl RuntimeConfig {
    /// Defaults, with the given data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            pooling: Some(PoolingConfig::default()),
            epoch_interval: Duration::from_millis(10),
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 4,
            pull_timeout: Duration::from_secs(300),
            max_image_bytes: 256 * 1024 * 1024,
            local_images: LocalImages::Any,
            local_image_settle: Duration::from_secs(1),
            registries: crate::registry::Registries::default(),
            egress_ca_pems: Vec::new(),
        }
    }
}

/// Size of the instance pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolingConfig {
    /// Concurrent instances (a running command is one; an HTTP container uses one per
    /// in-flight request). Linear memories and fiber stacks are sized to match; core
    /// instance slots are four times this, since a component has several. Default 1000.
    pub total_instances: u32,
    /// Largest linear memory an instance may have, in bytes. Default 4 GiB.
    pub max_memory_bytes: usize,
}

impl PoolingConfig {
    /// A pool sized for a machine with `memory_bytes` of RAM: one instance slot per 4 MiB
    /// (twice what a small guest's instance holds, so the slots run out before the memory
    /// does), at least 64 and at most the default 1000.
    pub fn for_memory(memory_bytes: u64) -> Self {
        let slots = (memory_bytes / (4 << 20)).clamp(64, 1000);
        Self {
            total_instances: u32::try_from(slots).unwrap_or(1000),
            ..Self::default()
        }
    }
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self {
            total_instances: 1000,
            max_memory_bytes: 4 << 30,
        }
    }
}

/// Which instance allocator the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocatorKind {
    /// The pooling allocator, with this many instance slots.
    Pooling {
        /// Concurrent instances the pool holds.
        total_instances: u32,
    },
    /// On-demand allocation: pooling was not requested, or setting it up failed (`reason`).
    OnDemand {
        /// Why the pool is not in use.
        reason: String,
    },
}

/// Errors setting up the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("creating the wasmtime engine: {0}")]
    Engine(String),
    /// Adding WASI to the linkers failed.
    #[error("setting up the WASI linkers: {0}")]
    Linker(String),
    /// The data dir could not be prepared.
    #[error("preparing data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The epoch ticker thread could not be started.
    #[error("starting the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
    /// A configuration value is out of range.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// The guests' TLS client could not be set up (a bad extra CA).
    #[error("guests' outgoing TLS: {0}")]
    EgressTls(#[from] crate::egress_tls::EgressTlsError),
}

/// Bytes of a returned linear memory (and table) slot reset in place rather than
/// decommitted (see [`build_engine`]).
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Slots whose remaining pages are decommitted together.
const DECOMMIT_BATCH: usize = 8;

/// The settings every engine shares, pooling or not.
fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Builds the engine: pooling if asked and possible, else on-demand.
pub(crate) fn build_engine(
    pooling: Option<PoolingConfig>,
) -> Result<(Engine, AllocatorKind), RuntimeError> {
    if let Some(p) = pooling {
        if p.total_instances == 0 {
            return Err(RuntimeError::Config(
                "pooling.total_instances must be > 0".into(),
            ));
        }
        let mut pool = PoolingAllocationConfig::new();
        let n = p.total_instances;
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(2))
            .total_stacks(n)
            .max_memory_size(p.max_memory_bytes)
            // An HTTP container instantiates per request, so a slot is given back as
            // often. Zeroing what the request dirtied with memset, found with the
            // PAGEMAP_SCAN ioctl where the kernel has it (6.7+), keeps the slot's pages
            // mapped: an madvise per request instead cost a TLB shootdown across every
            // CPU, a fifth of the node's CPU time under load in a profile of the pods
            // benchmark. Only pages a request touched stay resident, at most this much
            // per warm slot.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto)
            // What is still decommitted goes in batches: one shootdown for several.
            .decommit_batch_size(DECOMMIT_BATCH);
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => {
                tracing::info!(
                    total_instances = n,
                    "wasmtime engine uses the pooling allocator"
                );
                return Ok((engine, AllocatorKind::Pooling { total_instances: n }));
            }
            Err(e) => {
                let reason = format!("pooling allocator unavailable: {e:#}");
                tracing::warn!("{reason}; falling back to on-demand allocation");
                let engine = Engine::new(&base_config())
                    .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
                return Ok((engine, AllocatorKind::OnDemand { reason }));
            }
        }
    }
    let engine = Engine::new(&base_config()).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
    Ok((
        engine,
        AllocatorKind::OnDemand {
            reason: "pooling not requested".into(),
        },
    ))
}

/// A short hex name for "artifacts compiled by this engine": wasmtime's own compatibility
/// hash (its version and every setting that affects compiled code), through SHA-256.
pub(crate) fn engine_fingerprint(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    // Also our own layout version, so a change in how we store artifacts starts afresh.
    hasher.0.update(b"wharf-artifact-v1");
    let digest = hasher.0.finalize();
    crate::image::hex(&digest[..8])
}

/// Advances the engine's epoch every interval on a dedicated thread until dropped.
pub(crate) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, interval: Duration) -> Result<Self, RuntimeError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wharf-epoch".into())
            .spawn(move || {
                // recv_timeout doubles as the sleep: dropping the sender wakes us at once.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    engine.increment_epoch();
                }
            })
            .map_err(RuntimeError::Ticker)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread exits as soon as it sees the disconnect; this join is immediate.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_sized_from_the_machines_memory() {
        let slots = |gib: u64| PoolingConfig::for_memory(gib << 30).total_instances;
        assert_eq!(slots(1), 256);
        assert_eq!(slots(2), 512);
        assert_eq!(slots(8), 1000);
        assert_eq!(PoolingConfig::for_memory(100 << 20).total_instances, 64);
    }
}
