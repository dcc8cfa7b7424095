//! Per-store guest state: the WASI context built from the spec, limits, the epoch policy,
//! and the linkers every image is instantiated against.
//!
//! What a guest gets is exactly what the spec grants: argv, the resolved environment, the
//! working directory, the preopened mounts (read-only or read-write), stdin at EOF (or a pipe the
//! node writes to, when the spec asks: [`crate::stdin`]), stdout and stderr into the
//! container log, and the network only when `ContainerSpec::network` allows
//! it (wasi:sockets TCP/UDP/name lookup are off otherwise, and every address is checked
//! against the allow list; outgoing wasi:http requests go through [`EgressHooks`]). Clocks and
//! random are the host's. Nothing else of the host is reachable.
//!
//! **localhost is the pod.** In Kubernetes the containers of a pod share a network
//! namespace, so one reaches another at `localhost:PORT`. wharf's pods share an address
//! instead (their pod IP on the host's loopback), so an outgoing wasi:http request to
//! `localhost`, `127.0.0.1` or `[::1]` at a port the pod's containers declare is sent to
//! the pod's own IP, same port ([`egress_target`]), and needs no allow-list entry; any
//! other localhost port is denied, whatever the allow list says: the pod's own address is
//! all localhost reaches, never the host's 127.0.0.1. The declared port must also be one
//! an HTTP container of this runtime is serving at that moment ([`Serving`]): a host
//! service bound to `0.0.0.0:P` answers on every loopback address, the pod's included, so
//! a port declared but not served would reach it. (The pod's IP written out is an
//! address like any other: the allow list decides.) wasi:sockets cannot get the same
//! treatment: wasmtime 48's only hook there (`socket_addr_check`) allows or denies an
//! address but cannot change it, so a socket to 127.0.0.1 is judged by the allow list like
//! any other address.
//!
//! **https.** Outgoing `https` requests are sent over TLS (`egress_tls`), verified against
//! the host the guest wrote, whatever address a Service or an alias routes them to.
//! **Aliases** ([`ContainerSpec::host_aliases`]) come after the allow list: a host is
//! first allowed as written, then connected to where the node says. That is how
//! `https://kubernetes.default.svc` reaches the API server from a pod that allows it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::component::{Linker as ComponentLinker, ResourceTable};
use wasmtime::{Engine, Linker, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::limits::{CpuThrottle, MemoryBudget, StoreLimiter};
use crate::logs::{LogSink, LogStream};
use crate::spec::{ContainerSpec, HostAlias, NetworkAccess};

/// State every store carries, whatever the kind of guest.
pub(crate) struct GuestCommon {
    pub(crate) limiter: StoreLimiter,
    cpu: Arc<CpuThrottle>,
    epoch_interval: Duration,
    slice_start: Instant,
}

impl Drop for GuestCommon {
    /// Charges the last slice (from the last epoch deadline to the end of the instance, at
    /// most one interval, as at every deadline), so that an instance that ends within one
    /// interval, such as a short request, is not free in the usage the node reports.
    fn drop(&mut self) {
        let used = Instant::now()
            .saturating_duration_since(self.slice_start)
            .min(self.epoch_interval);
        let _ = self.cpu.charge(used);
    }
}

/// Store data for a preview1 module.
pub(crate) struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) common: GuestCommon,
}

/// Store data for a component (command or HTTP handler).
pub(crate) struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    pub(crate) common: GuestCommon,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Access to the common part of either state, for the epoch callback.
pub(crate) trait HasCommon: Send + 'static {
    fn common(&mut self) -> &mut GuestCommon;
}

impl HasCommon for P1State {
    fn common(&mut self) -> &mut GuestCommon {
        &mut self.common
    }
}

impl HasCommon for P2State {
    fn common(&mut self) -> &mut GuestCommon {
        &mut self.common
    }
}

/// The linkers, built once per runtime: WASI preview1 for modules; WASI preview2 plus
/// wasi:http for components (a command may make outgoing requests, a handler may read its
/// environment and mounts).
pub(crate) struct Linkers {
    pub(crate) p1: Linker<P1State>,
    pub(crate) p2: ComponentLinker<P2State>,
}

impl Linkers {
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let mut p1 = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1, |s: &mut P1State| &mut s.wasi)?;
        let mut p2 = ComponentLinker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2)?;
        Ok(Self { p1, p2 })
    }
}

/// The addresses the runtime's HTTP containers are serving on now (counted: a restart may
/// overlap its predecessor for a moment).
#[derive(Debug, Default)]
pub(crate) struct Serving(Mutex<HashMap<SocketAddr, usize>>);

impl Serving {
    /// Records `addr` as served until the guard is dropped.
    pub(crate) fn add(self: &Arc<Self>, addr: SocketAddr) -> ServingGuard {
        *self.lock().entry(addr).or_default() += 1;
        ServingGuard {
            serving: self.clone(),
            addr,
        }
    }

    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.lock().contains_key(&addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One served address, given up when dropped (with the HTTP container's serve loop).
pub(crate) struct ServingGuard {
    serving: Arc<Serving>,
    addr: SocketAddr,
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        let mut map = self.serving.lock();
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// What a container's stores are made from: its spec, and the budget, throttle and log it
/// shares across all its stores (one for a command, one per request for HTTP).
#[derive(Clone)]
pub(crate) struct StoreFactory {
    pub(crate) engine: Engine,
    /// What `localhost` may reach (see the module docs).
    pub(crate) serving: Arc<Serving>,
    /// The client configuration of `https` requests (`egress_tls`).
    pub(crate) egress_tls: Arc<rustls::ClientConfig>,
    pub(crate) spec: Arc<ContainerSpec>,
    pub(crate) argv: Arc<Vec<String>>,
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) cpu: Arc<CpuThrottle>,
    pub(crate) logs: LogSink,
    pub(crate) epoch_interval: Duration,
    /// The guest's end of its standard input pipe, for the first store made (a command
    /// has one); `None` (or taken): stdin at end of file.
    pub(crate) stdin: Arc<Mutex<Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>>>,
    /// Counts every store made: each is one instantiation.
    pub(crate) instantiations: Arc<std::sync::atomic::AtomicU64>,
}

/// Why a store could not be made (a mount that cannot be opened).
#[derive(Debug, thiserror::Error)]
#[error("mount {guest_path} (host path {host_path}): {message}")]
pub(crate) struct StoreError {
    pub(crate) host_path: String,
    pub(crate) guest_path: String,
    pub(crate) message: String,
}

impl StoreFactory {
    fn wasi_builder(&self) -> Result<WasiCtxBuilder, StoreError> {
        let spec = &self.spec;
        let mut b = WasiCtxBuilder::new();
        b.args(&self.argv);
        b.envs(&spec.env);
        if let Some(dir) = &spec.working_dir {
            b.initial_cwd(dir);
        }
        if let Some(reader) = self
            .stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            b.stdin(wasmtime_wasi::cli::AsyncStdinStream::new(reader));
        }
        b.stdout(self.logs.stdio(LogStream::Stdout));
        b.stderr(self.logs.stdio(LogStream::Stderr));
        for m in &spec.mounts {
            let perms = if m.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            b.preopened_dir(&m.host_path, &m.guest_path, perms)
                .map_err(|e| StoreError {
                    host_path: m.host_path.display().to_string(),
                    guest_path: m.guest_path.clone(),
                    message: format!("{e:#}"),
                })?;
        }
        if spec.network.any() {
            let policy = spec.network.clone();
            b.allow_tcp(true).allow_udp(true).allow_ip_name_lookup(true);
            b.socket_addr_check(move |addr: SocketAddr, _use: SocketAddrUse| {
                let allowed = policy.allows_addr(addr);
                Box::pin(async move { allowed })
            });
        }
        Ok(b)
    }

    fn common(&self) -> GuestCommon {
        GuestCommon {
            limiter: StoreLimiter::new(self.budget.clone()),
            cpu: self.cpu.clone(),
            epoch_interval: self.epoch_interval,
            slice_start: Instant::now(),
        }
    }

    pub(crate) fn p1_store(&self) -> Result<Store<P1State>, StoreError> {
        let state = P1State {
            wasi: self.wasi_builder()?.build_p1(),
            common: self.common(),
        };
        Ok(self.finish(Store::new(&self.engine, state)))
    }

    pub(crate) fn p2_store(&self) -> Result<Store<P2State>, StoreError> {
        let state = P2State {
            ctx: self.wasi_builder()?.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: EgressHooks {
                policy: self.spec.network.clone(),
                services: self.spec.services.clone(),
                pod_ip: self.spec.pod_ip,
                pod_ports: self.spec.pod_ports.clone(),
                serving: self.serving.clone(),
                tls: self.egress_tls.clone(),
                spec: self.spec.clone(),
            },
            common: self.common(),
        };
        Ok(self.finish(Store::new(&self.engine, state)))
    }

    fn finish<T: HasCommon>(&self, mut store: Store<T>) -> Store<T> {
        self.instantiations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        store.limiter(|s| &mut s.common().limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(on_epoch_deadline::<T>);
        store
    }
}

/// Called when a guest has run past its deadline (one epoch tick): yield to the executor,
/// after sleeping off any CPU debt (see `limits`).
fn on_epoch_deadline<T: HasCommon>(
    mut ctx: wasmtime::StoreContextMut<'_, T>,
) -> wasmtime::Result<UpdateDeadline> {
    let g = ctx.data_mut().common();
    let now = Instant::now();
    // Charge at most one interval: beyond that the guest was blocked in a host call or not
    // scheduled, not computing.
    let used = now
        .saturating_duration_since(g.slice_start)
        .min(g.epoch_interval);
    match g.cpu.charge(used) {
        Some(sleep) if !sleep.is_zero() => {
            g.slice_start = now + sleep;
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::time::sleep(sleep)),
            ))
        }
        _ => {
            g.slice_start = now;
            Ok(UpdateDeadline::Yield(1))
        }
    }
}

/// The egress policy for outgoing wasi:http requests ([`egress_target`]). Requests are sent
/// as HTTP/1.1 with the guest's Host header, over TLS for `https` (`egress_tls`).
pub(crate) struct EgressHooks {
    policy: NetworkAccess,
    services: Option<Arc<dyn crate::spec::ServiceResolver>>,
    pod_ip: Option<IpAddr>,
    pod_ports: Vec<u16>,
    serving: Arc<Serving>,
    tls: Arc<rustls::ClientConfig>,
    /// For its host aliases.
    spec: Arc<ContainerSpec>,
}

/// Whether a request host names the local machine's loopback the way a container means
/// its own pod: `localhost` (any case, with or without the root dot), `127.0.0.1`, `::1`.
/// Other 127.x addresses are other pods' and Services' addresses, not "this pod".
pub(crate) fn is_localhost(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| {
            ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        })
}

/// Where an outgoing request to `host:port` is sent, or `None` when it is denied (pure):
///
/// 1. `localhost`/`127.0.0.1`/`::1` from a pod: its own pod IP, same port, if one of the
///    pod's containers declares the port (`pod_ports`) and something of this runtime
///    serves it (`served`), else denied;
/// 2. a host the service resolver knows: the address it names (Services are
///    cluster-internal and need no allow-list entry);
/// 3. anything else, if the network policy allows the authority as written: where an
///    alias for `host:port` points, else as it is.
///
/// `host` is as written in the request (brackets and a trailing root dot are ignored).
/// The scheme does not matter: an `https` request goes the same way, with TLS on top.
pub(crate) fn egress_target(
    host: &str,
    port: u16,
    pod: Option<(IpAddr, &[u16])>,
    served: &dyn Fn(SocketAddr) -> bool,
    services: Option<&dyn crate::spec::ServiceResolver>,
    policy: &NetworkAccess,
    aliases: &[HostAlias],
) -> Option<(String, u16)> {
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    if let Some((ip, ports)) = pod
        && is_localhost(bare)
    {
        let ours = ports.contains(&port) && served(SocketAddr::new(ip, port));
        return ours.then(|| (ip.to_string(), port));
    }
    if let Some(addr) = services.and_then(|s| s.resolve(bare, port)) {
        return Some((addr.ip().to_string(), addr.port()));
    }
    if !policy.allows_http(host, port) {
        return None;
    }
    let alias = aliases
        .iter()
        .find(|a| a.port == port && a.host.eq_ignore_ascii_case(bare));
    Some(match alias {
        Some(a) => (a.target_host.clone(), a.target_port),
        None => (host.to_string(), port),
    })
}

type SendResult = Result<
    (
        http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let written = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let pod = self.pod_ip.map(|ip| (ip, self.pod_ports.as_slice()));
        let serving = &self.serving;
        let Some((host, port)) = egress_target(
            &written,
            port,
            pod,
            &|addr| serving.contains(addr),
            self.services.as_deref(),
            &self.policy,
            &self.spec.host_aliases,
        ) else {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        // TLS proves the host the guest wrote, wherever the connection goes.
        let tls = if https {
            match crate::egress_tls::server_name(&written) {
                Some(name) => Some((self.tls.clone(), name)),
                None => {
                    return Box::new(async {
                        Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid)
                    });
                }
            }
        } else {
            None
        };
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(Duration::from_secs(30));
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(Duration::from_secs(600));
        Box::new(send_http(
            request,
            Upstream { host, port, tls },
            connect_timeout,
            first_byte_timeout,
        ))
    }

    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }
}

/// Where a request is sent: the address to connect to and, for `https`, the TLS client
/// configuration and the name the server must prove.
pub(crate) struct Upstream {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// Connects (TCP, then TLS for `https`, both within `connect_timeout`) and sends.
pub(crate) async fn send_http(
    request: http::Request<wasmtime_wasi_http::WasiBody>,
    upstream: Upstream,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
) -> SendResult {
    use wasmtime_wasi_http::Error;
    let Upstream { host, port, tls } = upstream;
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let stream = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;
    match tls {
        None => send_over(request, stream, first_byte_timeout).await,
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(crate::egress_tls::handshake_error)?;
            send_over(request, stream, first_byte_timeout).await
        }
    }
}

/// Sends one HTTP/1.1 request over a connected stream (plain or TLS).
async fn send_over<S>(
    mut request: http::Request<wasmtime_wasi_http::WasiBody>,
    stream: S,
    first_byte_timeout: Duration,
) -> SendResult
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use wasmtime_wasi_http::Error;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    // The request line carries only the path: we are not talking to a proxy.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|e| Error::InternalError(Some(e.to_string())))?;
    let mut conn = Box::pin(conn);
    let send = tokio::time::timeout(first_byte_timeout, sender.send_request(request));
    tokio::pin!(send);
    // The connection must be driven for the response to arrive. An upstream that sends a
    // complete response and closes ends the connection in the very poll that hands the
    // response over, so the connection ending first says nothing: the response is then
    // already waiting in `send` (or `send` fails, if there was none).
    let mut conn_ended = false;
    let response = tokio::select! {
        response = &mut send => response,
        done = &mut conn => {
            done?;
            conn_ended = true;
            send.await
        }
    };
    let response = response.map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        if conn_ended {
            return Ok(());
        }
        conn.await.map_err(Error::from)
    });
    Ok((response, io))
}

/// An empty-bodied error response for requests the guest could not answer.
pub(crate) fn error_response(
    status: http::StatusCode,
    message: &str,
) -> http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody> {
    let body = http_body_util::Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::ServiceResolver;

    #[derive(Debug)]
    struct Backend;

    impl ServiceResolver for Backend {
        fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
            (host == "backend" && port == 80).then(|| "127.250.0.9:80".parse().unwrap())
        }
    }

    /// The pod's containers declare 8081 and 9000.
    fn target(
        host: &str,
        port: u16,
        pod_ip: Option<&str>,
        policy: &NetworkAccess,
    ) -> Option<String> {
        let pod = pod_ip.map(|p| (p.parse().unwrap(), [8081, 9000].as_slice()));
        // 9000 is declared but nothing serves it.
        let served = |a: SocketAddr| a.port() != 9000;
        egress_target(host, port, pod, &served, Some(&Backend), policy, &[])
            .map(|(h, p)| format!("{h}:{p}"))
    }

    #[test]
    fn localhost_is_the_pods_own_address_without_an_allow_list() {
        let none = NetworkAccess::None;
        let pod = Some("127.64.0.7");
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "[::1]",
            "::1",
        ] {
            assert_eq!(
                target(host, 8081, pod, &none).as_deref(),
                Some("127.64.0.7:8081"),
                "{host}"
            );
        }
        // Declared but served by nothing of the pod: a host service on 0.0.0.0:9000 would
        // answer at the pod's address, so localhost does not go there.
        for policy in [&none, &NetworkAccess::All] {
            assert_eq!(target("localhost", 9000, pod, policy), None);
        }
        // The pod's IP written out, other pods, the host's services: the allow list decides.
        assert_eq!(target("127.64.0.7", 9000, pod, &none), None);
        assert_eq!(
            target("127.64.0.7", 9000, pod, &NetworkAccess::All).as_deref(),
            Some("127.64.0.7:9000")
        );
        assert_eq!(target("127.64.0.8", 9000, pod, &none), None);
        assert_eq!(target("127.0.0.2", 9000, pod, &none), None);
        // Without a pod address (a container outside a pod), localhost follows the policy.
        assert_eq!(target("localhost", 8081, None, &none), None);
        assert_eq!(
            target("localhost", 8081, None, &NetworkAccess::All).as_deref(),
            Some("localhost:8081")
        );
        // Even with `*`, localhost from a pod is the pod, not the host: a port no
        // container declares is denied rather than sent to the host's 127.0.0.1.
        for policy in [&none, &NetworkAccess::All] {
            assert_eq!(
                target("127.0.0.1", 8081, pod, policy).as_deref(),
                Some("127.64.0.7:8081")
            );
            assert_eq!(target("localhost", 5432, pod, policy), None);
            assert_eq!(target("127.0.0.1", 6443, pod, policy), None);
        }
    }

    #[test]
    fn services_then_the_allow_list() {
        let hosts = NetworkAccess::Hosts(vec!["example.com:8080".into()]);
        assert_eq!(
            target("backend", 80, None, &NetworkAccess::None).as_deref(),
            Some("127.250.0.9:80")
        );
        assert_eq!(
            target("backend.", 80, None, &NetworkAccess::None).as_deref(),
            Some("127.250.0.9:80")
        );
        assert_eq!(target("backend", 81, None, &NetworkAccess::None), None);
        assert_eq!(
            target("example.com", 8080, None, &hosts).as_deref(),
            Some("example.com:8080")
        );
        assert_eq!(target("example.com", 80, None, &hosts), None);
    }

    #[test]
    fn aliases_come_after_the_allow_list() {
        let api = [HostAlias {
            host: "kubernetes.default.svc".into(),
            port: 443,
            target_host: "10.1.2.3".into(),
            target_port: 6443,
        }];
        let to = |host: &str, port: u16, policy: &NetworkAccess| {
            egress_target(host, port, None, &|_| true, Some(&Backend), policy, &api)
                .map(|(h, p)| format!("{h}:{p}"))
        };
        let allowed = NetworkAccess::Hosts(vec!["kubernetes.default.svc:443".into()]);
        // Not allowed: the alias does not open the way.
        assert_eq!(
            to("kubernetes.default.svc", 443, &NetworkAccess::None),
            None
        );
        // Allowed as written: connected where the alias says.
        for host in ["kubernetes.default.svc", "Kubernetes.Default.SVC"] {
            assert_eq!(
                to(host, 443, &allowed).as_deref(),
                Some("10.1.2.3:6443"),
                "{host}"
            );
        }
        assert_eq!(
            to("kubernetes.default.svc", 443, &NetworkAccess::All).as_deref(),
            Some("10.1.2.3:6443")
        );
        // Another port is no alias, and the allow list named only 443.
        assert_eq!(to("kubernetes.default.svc", 80, &allowed), None);
        assert_eq!(
            to("kubernetes.default.svc", 80, &NetworkAccess::All).as_deref(),
            Some("kubernetes.default.svc:80")
        );
        // Services still resolve first.
        assert_eq!(
            to("backend", 80, &NetworkAccess::None).as_deref(),
            Some("127.250.0.9:80")
        );
    }

    /// A CA, and a TLS server with a certificate from it for `kubernetes.default.svc`
    /// answering every request with `hello`. Returns the CA (PEM) and the server's port.
    async fn tls_upstream() -> (String, u16, tokio::task::JoinHandle<()>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["kubernetes.default.svc".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (ca.pem(), port, task)
    }

    fn get(url: &str) -> http::Request<wasmtime_wasi_http::WasiBody> {
        http::Request::get(url)
            .body(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    /// `https` is verified against the extra CA and the host as written, while the
    /// connection goes to another address (as an alias or a Service sends it).
    #[tokio::test]
    async fn https_verifies_the_written_host_against_the_extra_ca() {
        let (ca, port, server) = tls_upstream().await;
        let send = |config: Arc<rustls::ClientConfig>, name: &str| {
            let upstream = Upstream {
                host: "127.0.0.1".into(),
                port,
                tls: Some((config, crate::egress_tls::server_name(name).unwrap())),
            };
            tokio::time::timeout(
                Duration::from_secs(10),
                send_http(
                    get("https://kubernetes.default.svc/"),
                    upstream,
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                ),
            )
        };
        let with_ca = crate::egress_tls::client_config(std::slice::from_ref(&ca)).unwrap();
        let (response, _io) = match send(with_ca.clone(), "kubernetes.default.svc")
            .await
            .unwrap()
        {
            Ok(r) => r,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"hello");
        // The certificate names kubernetes.default.svc, not what the guest wrote.
        match send(with_ca, "example.com").await.unwrap() {
            Err(wasmtime_wasi_http::Error::TlsCertificateError) => {}
            other => panic!("{:?}", other.map(|(r, _)| r.status())),
        }
        // Without the cluster CA the server is not trusted.
        let system_only = crate::egress_tls::client_config(&[]).unwrap();
        match send(system_only, "kubernetes.default.svc").await.unwrap() {
            Err(wasmtime_wasi_http::Error::TlsCertificateError) => {}
            other => panic!("{:?}", other.map(|(r, _)| r.status())),
        }
        server.abort();
    }

    #[test]
    fn localhost_names() {
        assert!(is_localhost("localhost"));
        assert!(is_localhost("127.0.0.1"));
        assert!(is_localhost("::1"));
        assert!(!is_localhost("127.0.0.2"));
        assert!(!is_localhost("localhost.example"));
    }

    /// An upstream that sends a complete response (Content-Length) and closes at once: the
    /// connection ends in the same poll that delivers the response, which must still be
    /// the guest's, whole, every time.
    #[tokio::test]
    async fn a_complete_response_then_close_is_a_response() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .await;
                // Closed right after the last byte.
            }
        });
        for i in 0..100 {
            let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
                .body(
                    http_body_util::Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap();
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                send_http(
                    request,
                    Upstream {
                        host: "127.0.0.1".into(),
                        port,
                        tls: None,
                    },
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                ),
            )
            .await
            .unwrap();
            let (response, io) = match sent {
                Ok(r) => r,
                Err(e) => panic!("attempt {i}: {e:?}"),
            };
            assert_eq!(response.status(), 200);
            let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("attempt {i}: body: {e:?}"))
                .to_bytes();
            assert_eq!(&body[..], b"hello", "attempt {i}");
            tokio::time::timeout(Duration::from_secs(5), Box::into_pin(io))
                .await
                .unwrap()
                .unwrap();
        }
        server.abort();
    }
}
