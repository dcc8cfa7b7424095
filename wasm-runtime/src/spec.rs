//! The container spec: everything the runtime needs to run one container, and nothing else.
//!
//! The node agent translates a pod's container (command, args, resolved env, volume mounts,
//! `resources.limits`, the pod IP and `containerPort`) into this struct. Keeping it free of
//! Kubernetes API types means the runtime can be tested and benchmarked on its own, and the
//! API types can change without recompiling wasmtime-using code.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Maps the host of a guest's outgoing HTTP request to a cluster service's address.
///
/// The node implements it over its view of the cluster's Services (with the pod's
/// namespace as the search path, as a pod's resolv.conf would); the runtime only asks it.
/// It must answer without blocking: it is called on the request path.
pub trait ServiceResolver: Send + Sync + std::fmt::Debug {
    /// Where to connect for `host:port` (`host` as written in the request, without
    /// brackets or a trailing dot), or `None` when it names no service.
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr>;
}

/// One container to run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Unique, stable name of the container (for example `ns_pod_uid_container`). Its logs
    /// live under `DATA_DIR/logs/<id>/`, so it must be a single path segment of ASCII
    /// letters, digits, `.`, `_` and `-` (and not `.` or `..`).
    pub id: String,
    /// How many times this container has been restarted (Kubernetes' `restartCount`). Each
    /// attempt logs to its own file; the previous attempt's log is kept for `--previous`.
    pub restart_count: u32,
    /// The full argv, including argv[0] (the program name). The node builds it from the
    /// container's `command` and `args`; when empty, argv is just the image reference.
    pub argv: Vec<String>,
    /// Environment, already resolved (ConfigMap/Secret/downward API values filled in).
    pub env: Vec<(String, String)>,
    /// The guest's initial working directory (`workingDir`), a guest path. Components get it
    /// as `wasi:cli/environment.initial-cwd`. WASI preview1 has no working directory at all,
    /// and wasi-libc (so Rust's `std::env::current_dir`) currently starts every guest at `/`
    /// whatever initial-cwd says; guests that care read initial-cwd themselves.
    pub working_dir: Option<String>,
    /// Host directories made visible to the guest. Nothing else of the host filesystem is.
    pub mounts: Vec<Mount>,
    /// Memory and CPU limits, enforced inside wasmtime.
    pub resources: Resources,
    /// What the guest may reach on the network. Default: nothing.
    pub network: NetworkAccess,
    /// The cluster's services, as this container sees them: outgoing wasi:http requests to
    /// a host the resolver knows (`http://backend`, `http://backend.ns`, a cluster IP) go
    /// to the address it returns, whatever `network` says (services are cluster-internal);
    /// every other host stays subject to `network`. `None`: no service names.
    pub services: Option<Arc<dyn ServiceResolver>>,
    /// The pod's own address (`status.podIP`), shared by all its containers. Outgoing
    /// wasi:http requests to `localhost`, `127.0.0.1` or `::1` at one of [`Self::pod_ports`]
    /// go to this address instead (the same port), so the containers of a pod reach each
    /// other at `localhost:PORT` as in Kubernetes, with no `network` entry. Other
    /// localhost ports are denied: nothing of the host's own loopback is reachable that
    /// way. `None`: localhost is not rewritten.
    pub pod_ip: Option<IpAddr>,
    /// The ports the pod's containers declare (`containerPort`s): what `localhost:PORT`
    /// reaches when [`Self::pod_ip`] is set.
    pub pod_ports: Vec<u16>,
    /// Where a `wasi:http` component is served (the pod IP and its `containerPort`).
    /// Required for HTTP components, ignored for commands. Port 0 picks a free port; the
    /// bound address is [`crate::Container::http_addr`].
    pub http_listen: Option<SocketAddr>,
    /// Bounds on a `wasi:http` container's request instances (ignored for commands).
    pub http: HttpLimits,
    /// Whether a command's standard input is a pipe the host writes to
    /// ([`crate::Runtime::stdin`], Kubernetes' `stdin: true`); else it is at end of file.
    /// Ignored for HTTP components.
    pub stdin: bool,
    /// Hosts that are connected to elsewhere once `network` has allowed them, as
    /// `/etc/hosts` entries would send them: the node maps the API server's in-cluster
    /// names (`kubernetes.default.svc:443`, ...) to the API server's address. An `https`
    /// request is still verified against the host as written.
    pub host_aliases: Vec<HostAlias>,
}

/// One entry of [`ContainerSpec::host_aliases`]: `host:port` (as a guest writes it in a
/// URL, any case, without a trailing dot) is connected to at `target_host:target_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAlias {
    pub host: String,
    pub port: u16,
    pub target_host: String,
    pub target_port: u16,
}

/// Bounds on the request instances of a `wasi:http` container, so that one slow or
/// overloaded pod cannot take every instance of the node's pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpLimits {
    /// The longest a request's instance may run (answer and body); a request not answered
    /// by then gets `504 Gateway Timeout` and its instance is dropped. `None`:
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Option<Duration>,
    /// The most request instances the container runs at once; a request beyond gets `503
    /// Service Unavailable` at once. `None`: derived by [`max_concurrency`].
    pub max_concurrency: Option<u32>,
}

/// The request timeout of a `wasi:http` container that sets none.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The linear memory one request instance is taken to need when a container's concurrency
/// is derived from its memory limit (a small Rust guest starts at about 1 MiB).
pub const INSTANCE_MEMORY_ESTIMATE: u64 = 2 * 1024 * 1024;

/// Concurrency when neither the container nor the pool says: with on-demand allocation
/// there is no pool to take a share of.
const UNPOOLED_MAX_CONCURRENCY: u32 = 250;

/// How many request instances a `wasi:http` container may run at once, given its limits,
/// its memory limit and the node's pool (`None`: on-demand allocation):
///
/// - an explicit `max_concurrency`, up to the whole pool;
/// - else what its memory limit holds at [`INSTANCE_MEMORY_ESTIMATE`] each, so that a
///   burst is refused with 503 before the instances run out of memory and trap;
/// - and never, unless explicit, more than a quarter of the pool: the share one pod may
///   take, so that a pod whose requests hang leaves the node's other pods their instances.
pub fn max_concurrency(limits: &HttpLimits, memory_bytes: Option<u64>, pool: Option<u32>) -> u32 {
    if let Some(n) = limits.max_concurrency {
        return pool.map_or(n, |p| n.min(p)).max(1);
    }
    let share = pool.map_or(UNPOOLED_MAX_CONCURRENCY, |p| (p / 4).max(1));
    let by_memory = memory_bytes
        .map(|m| u32::try_from(m / INSTANCE_MEMORY_ESTIMATE).unwrap_or(u32::MAX))
        .unwrap_or(u32::MAX);
    by_memory.min(share).max(1)
}

impl ContainerSpec {
    /// A spec with the given id and every other field at its default (no args, no env, no
    /// mounts, no limits, no network).
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            restart_count: 0,
            argv: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            mounts: Vec::new(),
            resources: Resources::default(),
            network: NetworkAccess::None,
            services: None,
            pod_ip: None,
            pod_ports: Vec::new(),
            http_listen: None,
            http: HttpLimits::default(),
            stdin: false,
            host_aliases: Vec::new(),
        }
    }
}

/// A host directory preopened in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory on the host (an emptyDir, a hostPath, a projected ConfigMap, ...).
    pub host_path: PathBuf,
    /// Where the guest sees it (`mountPath`).
    pub guest_path: String,
    /// `readOnly`: the guest may read but not create, write or delete.
    pub read_only: bool,
}

/// Limits from `resources.limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Upper bound on the total linear memory of the container's instances, in bytes. For an
    /// HTTP container the bound is shared by all in-flight request instances.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores (1000 = one core). `None` means no throttling; the guest still
    /// yields every epoch so that it cannot starve other pods.
    pub cpu_millicores: Option<u32>,
}

/// Network access granted to the guest. wasi:sockets (TCP, UDP, name lookup) and outgoing
/// wasi:http requests are both governed by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkAccess {
    /// No network at all (the default).
    #[default]
    None,
    /// Any address (sockets and outgoing HTTP).
    All,
    /// Only these peers. Each entry is `host` or `host:port`, where `host` is an IP address
    /// or a name. Socket connections are checked by IP (names cannot be checked there, so a
    /// name entry only admits outgoing HTTP requests to that authority).
    Hosts(Vec<String>),
}

impl NetworkAccess {
    /// Whether the guest may use sockets at all.
    pub(crate) fn any(&self) -> bool {
        !matches!(self, NetworkAccess::None)
    }

    /// Whether a socket address may be bound or connected to.
    pub(crate) fn allows_addr(&self, addr: SocketAddr) -> bool {
        match self {
            NetworkAccess::None => false,
            NetworkAccess::All => true,
            NetworkAccess::Hosts(hosts) => hosts.iter().any(|h| {
                let (host, port) = split_host_port(h);
                host.parse::<IpAddr>().is_ok_and(|ip| ip == addr.ip())
                    && port.is_none_or(|p| p == addr.port())
            }),
        }
    }

    /// Whether an outgoing HTTP request to `host` and `port` is allowed.
    pub(crate) fn allows_http(&self, host: &str, port: u16) -> bool {
        match self {
            NetworkAccess::None => false,
            NetworkAccess::All => true,
            NetworkAccess::Hosts(hosts) => hosts.iter().any(|h| {
                let (allowed_host, allowed_port) = split_host_port(h);
                allowed_host
                    .eq_ignore_ascii_case(host.trim_start_matches('[').trim_end_matches(']'))
                    && allowed_port.is_none_or(|p| p == port)
            }),
        }
    }
}

/// Splits `host:port`, `[v6]:port`, `v6` or `host` into host and optional port.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match s.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => (s, None),
        Some((host, port)) => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (s, None),
        },
        None => (s, None),
    }
}

/// Whether `id` is usable as a container id (a single safe path segment).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_from_the_annotation_the_memory_limit_or_the_pools_share() {
        let none = HttpLimits::default();
        let explicit = HttpLimits {
            max_concurrency: Some(600),
            ..HttpLimits::default()
        };
        const MIB: u64 = 1024 * 1024;
        // A quarter of a 1000-instance pool, whatever the memory limit allows beyond it.
        assert_eq!(max_concurrency(&none, None, Some(1000)), 250);
        assert_eq!(max_concurrency(&none, Some(4096 * MIB), Some(1000)), 250);
        // A 64Mi pod: 32 instances of 2 MiB, not the ~60 that broke it.
        assert_eq!(max_concurrency(&none, Some(64 * MIB), Some(1000)), 32);
        assert_eq!(max_concurrency(&none, Some(MIB), Some(1000)), 1);
        // Explicit: as asked, up to the whole pool.
        assert_eq!(max_concurrency(&explicit, Some(64 * MIB), Some(1000)), 600);
        assert_eq!(max_concurrency(&explicit, None, Some(100)), 100);
        // No pool: a fixed default.
        assert_eq!(max_concurrency(&none, None, None), 250);
        assert_eq!(max_concurrency(&none, None, Some(2)), 1);
    }

    #[test]
    fn ids() {
        assert!(valid_id("default_web-1_0b1c_app"));
        assert!(!valid_id(""));
        assert!(!valid_id(".."));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a b"));
    }

    #[test]
    fn network_policy() {
        let none = NetworkAccess::None;
        assert!(!none.any());
        assert!(!none.allows_http("example.com", 80));
        let hosts = NetworkAccess::Hosts(vec![
            "10.0.0.1:8080".into(),
            "example.com".into(),
            "[::1]:80".into(),
        ]);
        assert!(hosts.allows_addr("10.0.0.1:8080".parse().unwrap()));
        assert!(!hosts.allows_addr("10.0.0.1:8081".parse().unwrap()));
        assert!(!hosts.allows_addr("10.0.0.2:8080".parse().unwrap()));
        assert!(hosts.allows_addr("[::1]:80".parse().unwrap()));
        assert!(hosts.allows_http("EXAMPLE.com", 443));
        assert!(hosts.allows_http("10.0.0.1", 8080));
        assert!(!hosts.allows_http("10.0.0.1", 80));
        assert!(NetworkAccess::All.allows_http("anything", 1));
    }
}
