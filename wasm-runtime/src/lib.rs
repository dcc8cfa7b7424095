//! wharf-runtime: the wasm "container runtime" of a wharf node.
//!
//! It plays the part containerd plays for a kubelet: pull an image, start a container from
//! it with a spec, report how it ended, stop it, and keep its logs. Containers are wasm:
//!
//! - a **WASI preview1 command module** (`_start`), run to completion;
//! - a **component exporting `wasi:cli/run`**, run to completion;
//! - a **component exporting `wasi:http/incoming-handler`**, served over HTTP/1.1 on the
//!   spec's address (the pod IP and `containerPort`), one fresh instance per request.
//!
//! The kind is detected from the binary, never declared. The runtime knows nothing of the
//! Kubernetes API: the node agent translates a pod's container into a [`ContainerSpec`]
//! (argv, resolved env, working dir, mounts, limits, network, listen address), which keeps
//! this crate — the only one that compiles wasmtime, the build's critical path — independent
//! of API changes, and testable and benchmarkable on its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wharf_runtime::{ContainerSpec, Runtime, RuntimeConfig};
//! let runtime = Runtime::new(RuntimeConfig::new("/var/lib/wharf/runtime"))?;
//! let image = runtime.pull("samples/hello-http/hello_http.wasm").await?;
//! let mut spec = ContainerSpec::new("default_hello_0_web");
//! spec.http_listen = Some("127.0.0.1:0".parse()?);
//! let container = runtime.start(spec, &image).await?;
//! println!("{} serving on {:?}", image.kind(), container.http_addr());
//! let status = container.stop(std::time::Duration::from_secs(30)).await;
//! println!("{} ({})", status.reason, status.code);
//! # Ok(()) }
//! ```
//!
//! How each concern works is documented where it is implemented:
//! `engine` (one engine per node, epoch ticker, pooling with fallback), `image` (references,
//! digests, fetch, blob store), `cache` (compiled artifacts on disk and why loading them is
//! trusted), `guest` (the WASI context a spec grants), `limits` (memory and CPU), `container`
//! (exit statuses and stop), `http` (serving wasi:http), [`logs`] (CRI-format log files,
//! rotation, tail and follow).
//!
//! Guest code runs as async wasmtime calls on the caller's tokio runtime (a multi-threaded
//! one is expected); compiles, file I/O and other blocking work run in `spawn_blocking`.
//! Nothing a guest does — trap, loop, exhaust memory, exit — panics or aborts the process.
//!
//! Registry images are pulled over TLS (rustls with the system's roots plus the node's
//! configured CAs; plain HTTP only for endpoints the node's configuration lists as
//! `http://`). `http(s)://` URL images are fetched over plain `http://` only; pin URL
//! images with `@sha256:` for integrity. Guests' outgoing wasi:http requests may be
//! `http` or `https` (`egress_tls`: the system's roots plus the node's cluster CA).

mod cache;
mod coalesce;
mod container;
mod egress_tls;
mod engine;
pub mod gc;
mod guest;
mod http;
mod image;
mod limits;
pub mod logs;
pub mod private;
mod registry;
mod runtime;
mod spec;
mod stdin;

pub use container::{
    Container, ContainerStats, ContainerUsage, ExitReason, ExitStatus, StartError, UsageSnapshot,
};
pub use egress_tls::EgressTlsError;
pub use engine::{AllocatorKind, PoolingConfig, RuntimeConfig, RuntimeError};
pub use image::{Digest, ImagePullError, LocalImages, PullPolicy, WorkloadKind};
pub use limits::INSTANCE_OVERHEAD_BYTES;
pub use logs::{ContainerLogs, LogError, LogLine, LogOptions, LogStream};
pub use registry::{
    Registries, RegistryCredential, RegistryHost, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
    credential_host,
};
pub use runtime::{Image, ImageGcReport, PullOptions, Pulled, Runtime, RuntimeStats};
pub use spec::{
    ContainerSpec, DEFAULT_REQUEST_TIMEOUT, HostAlias, HttpLimits, INSTANCE_MEMORY_ESTIMATE, Mount,
    NetworkAccess, Resources, ServiceResolver, max_concurrency,
};
pub use stdin::Stdin;
pub use wharf_image_ref::{default_pull_policy, is_registry_reference};

#[cfg(test)]
mod tests {
    /// The node agent keeps these in maps shared across tasks.
    #[test]
    fn public_handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Runtime>();
        check::<super::Image>();
        check::<super::Container>();
        check::<super::ContainerLogs>();
        check::<super::ExitStatus>();
        check::<super::ImagePullError>();
        check::<super::StartError>();
        check::<super::LogError>();
    }
}
