//! Container probes: `startupProbe`, `readinessProbe` and `livenessProbe`, as the kubelet
//! runs them.
//!
//! A Service sends traffic only to ready pods, and a wedged guest that still "runs" (a
//! handler stuck on a lock, a command spinning without progress) is only noticed by asking
//! it. The node asks it the Kubernetes way, so manifests written for Kubernetes behave the
//! same here:
//!
//! - **Startup** gates the others: until it succeeds the container is not started and not
//!   ready, and neither readiness nor liveness runs. Failing `failureThreshold` times in a
//!   row kills the container, which is then restarted per `restartPolicy`.
//! - **Readiness** decides the container's `ready` flag (and so the pod's ContainersReady
//!   and Ready conditions, and whether it is in its Services' endpoints). It starts out
//!   failed: a container with a readiness probe is not ready until the probe passes. A
//!   container without one is ready once it runs and has started.
//! - **Liveness** starts out healthy; failing `failureThreshold` times in a row kills the
//!   container, which is then restarted per `restartPolicy`.
//!
//! A result flips only after `successThreshold` successes (default 1, and always 1 for
//! liveness and startup) or `failureThreshold` failures (default 3) in a row. Probes run
//! every `periodSeconds` (default 10) from `initialDelaySeconds` after the container
//! started, and an attempt that takes longer than `timeoutSeconds` (default 1) fails.
//!
//! **Handlers.** `httpGet` (scheme HTTP; 2xx and 3xx succeed) and `tcpSocket` (a connect
//! succeeds) run over the network from the node to the pod's address, exactly as a client
//! would reach the guest. `exec` cannot run on wasm (a guest has no processes to exec
//! into) and `grpc` is not implemented: a container with either is refused at start
//! (`CreateContainerConfigError` with the field path) rather than run with a probe that
//! could never pass or would be silently skipped. Invalid values are refused the same way.
//!
//! Decide apart from do: [`ProbeSpecs::parse`] checks and defaults a container's probes,
//! [`ContainerProbes`] is the pure per-container state machine (results in, readiness and
//! kill decisions out, the clock a parameter), and [`execute`] is the thin executor of one
//! attempt. The pod worker owns the timers, runs the attempts as tasks, feeds the results
//! back to the state machine and writes the status, so status stays level-triggered.

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    /// The container field: `startupProbe`, ...
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startupProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Liveness => "livenessProbe",
        }
    }

    /// As event messages name it: `Startup`, `Readiness`, `Liveness`.
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }

    /// Lower case: `startup`, `readiness`, `liveness`.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }

    /// What a probe says before its first result counts: startup has not passed yet,
    /// readiness is not ready, liveness is alive.
    fn initial(self) -> Health {
        match self {
            ProbeKind::Startup => Health::Unknown,
            ProbeKind::Readiness => Health::Failure,
            ProbeKind::Liveness => Health::Success,
        }
    }
}

/// What one attempt does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET http://HOST:PORT/PATH`; HOST is the pod's address unless the probe names one.
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A TCP connect to HOST:PORT.
    Tcp { host: Option<String>, port: u16 },
}

/// One probe, checked and with Kubernetes' defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The grace period of a kill this probe causes (liveness and startup), if it
    /// overrides the pod's.
    pub termination_grace: Option<Duration>,
}

/// The probes of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSpecs {
    pub startup: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
}

impl ProbeSpecs {
    /// Checks and defaults the probes of `container`, whose field path is `at` (for
    /// example `spec.containers[0]`). The error names the field and what is wrong with it.
    pub fn parse(container: &Container, at: &str) -> Result<ProbeSpecs, String> {
        let one = |kind: ProbeKind, probe: &Option<Probe>| {
            probe
                .as_ref()
                .map(|p| parse(kind, p, container, &format!("{at}.{}", kind.field())))
                .transpose()
        };
        Ok(ProbeSpecs {
            startup: one(ProbeKind::Startup, &container.startup_probe)?,
            readiness: one(ProbeKind::Readiness, &container.readiness_probe)?,
            liveness: one(ProbeKind::Liveness, &container.liveness_probe)?,
        })
    }
}

/// A non-negative count or number of seconds, 0 or absent meaning `default`.
fn positive(value: Option<i32>, default: u32, field: &str) -> Result<u32, String> {
    match value {
        None | Some(0) => Ok(default),
        Some(v) if v < 0 => Err(format!(
            "{field}: Invalid value: {v}: must be greater than or equal to 0"
        )),
        Some(v) => Ok(v.unsigned_abs()),
    }
}

fn parse(kind: ProbeKind, p: &Probe, c: &Container, at: &str) -> Result<ProbeSpec, String> {
    let handlers = [
        p.exec.is_some(),
        p.grpc.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    if handlers == 0 {
        return Err(format!("{at}: Required value: must specify a handler type"));
    }
    if handlers > 1 {
        return Err(format!(
            "{at}: Forbidden: may not specify more than 1 handler type"
        ));
    }
    let action = if p.exec.is_some() {
        return Err(format!(
            "{at}.exec: Unsupported value: exec probes cannot run on wasm (a guest has no \
             processes to exec into); use httpGet or tcpSocket"
        ));
    } else if p.grpc.is_some() {
        return Err(format!(
            "{at}.grpc: Unsupported value: gRPC probes are not supported by wharf; use \
             httpGet or tcpSocket"
        ));
    } else if let Some(h) = &p.http_get {
        let at = format!("{at}.httpGet");
        match h.scheme.as_deref() {
            None | Some("HTTP") => {}
            Some(other) => {
                return Err(format!(
                    "{at}.scheme: Unsupported value: \"{other}\": supported values: \"HTTP\""
                ));
            }
        }
        let mut headers = Vec::new();
        for (i, header) in h.http_headers.iter().flatten().enumerate() {
            let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                format!(
                    "{at}.httpHeaders[{i}].name: Invalid value: \"{}\": not a valid HTTP header name",
                    header.name
                )
            })?;
            let value = HeaderValue::from_str(&header.value).map_err(|_| {
                format!(
                    "{at}.httpHeaders[{i}].value: Invalid value: \"{}\": not a valid HTTP header value",
                    header.value
                )
            })?;
            headers.push((name, value));
        }
        let path = h.path.clone().unwrap_or_default();
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        if path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(format!(
                "{at}.path: Invalid value: {path:?}: must not contain spaces or control characters"
            ));
        }
        Action::Http {
            host: h.host.clone().filter(|s| !s.is_empty()),
            port: port(&h.port, c, &format!("{at}.port"))?,
            path,
            headers,
        }
    } else if let Some(t) = &p.tcp_socket {
        let at = format!("{at}.tcpSocket");
        Action::Tcp {
            host: t.host.clone().filter(|s| !s.is_empty()),
            port: port(&t.port, c, &format!("{at}.port"))?,
        }
    } else {
        return Err(format!("{at}: Required value: must specify a handler type"));
    };
    let success_threshold = positive(p.success_threshold, 1, &format!("{at}.successThreshold"))?;
    if kind != ProbeKind::Readiness && success_threshold != 1 {
        return Err(format!(
            "{at}.successThreshold: Invalid value: {success_threshold}: must be 1"
        ));
    }
    let initial_delay = match p.initial_delay_seconds {
        Some(v) if v < 0 => {
            return Err(format!(
                "{at}.initialDelaySeconds: Invalid value: {v}: must be greater than or equal to 0"
            ));
        }
        v => Duration::from_secs(u64::from(v.unwrap_or(0).unsigned_abs())),
    };
    let termination_grace = match p.termination_grace_period_seconds {
        None => None,
        Some(_) if kind == ProbeKind::Readiness => {
            return Err(format!(
                "{at}.terminationGracePeriodSeconds: Invalid value: must not be set for readinessProbes"
            ));
        }
        Some(v) if v <= 0 => {
            return Err(format!(
                "{at}.terminationGracePeriodSeconds: Invalid value: {v}: must be greater than 0"
            ));
        }
        Some(v) => Some(Duration::from_secs(v.unsigned_abs())),
    };
    Ok(ProbeSpec {
        kind,
        action,
        initial_delay,
        period: Duration::from_secs(u64::from(positive(
            p.period_seconds,
            10,
            &format!("{at}.periodSeconds"),
        )?)),
        timeout: Duration::from_secs(u64::from(positive(
            p.timeout_seconds,
            1,
            &format!("{at}.timeoutSeconds"),
        )?)),
        success_threshold,
        failure_threshold: positive(p.failure_threshold, 3, &format!("{at}.failureThreshold"))?,
        termination_grace,
    })
}

/// A port number, or the name of one of the container's ports.
fn port(port: &IntOrString, c: &Container, at: &str) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{at}: Invalid value: {n}: must be between 1 and 65535")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| {
                format!(
                    "{at}: Invalid value: \"{name}\": the container has no port named \"{name}\""
                )
            }),
    }
}

/// Where a probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No result yet (a startup probe that has not passed).
    Unknown,
    Success,
    Failure,
}

/// One probe of one running container: its result with thresholds, and its schedule.
#[derive(Debug, Clone)]
pub struct ProbeState {
    spec: ProbeSpec,
    health: Health,
    /// The outcome of the last attempt, and how many in a row had it.
    last: Option<bool>,
    run: u32,
    next_at: Instant,
    in_flight: bool,
}

impl ProbeState {
    pub fn new(spec: ProbeSpec, started: Instant) -> Self {
        ProbeState {
            health: spec.kind.initial(),
            last: None,
            run: 0,
            next_at: started + spec.initial_delay,
            in_flight: false,
            spec,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Feeds the outcome of one attempt; returns the new health if it changed. The result
    /// only turns after `successThreshold` successes or `failureThreshold` failures in a
    /// row.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        self.in_flight = false;
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.spec.success_threshold
        } else {
            self.spec.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        let health = if ok { Health::Success } else { Health::Failure };
        (health != self.health).then(|| {
            self.health = health;
            health
        })
    }
}

/// One attempt to run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub kind: ProbeKind,
    pub action: Action,
    pub timeout: Duration,
}

/// What a probe result asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing beyond updating the container's `ready` and `started` flags.
    Keep,
    /// The liveness or startup probe failed past its threshold: kill the container (it is
    /// restarted per `restartPolicy`).
    Kill(ProbeKind),
}

/// The probes of one running container instance (a restarted container gets fresh ones).
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
}

impl ContainerProbes {
    /// The probes of a container instance that started at `started`.
    pub fn new(specs: &ProbeSpecs, started: Instant) -> Self {
        let state = |s: &Option<ProbeSpec>| s.clone().map(|s| ProbeState::new(s, started));
        ContainerProbes {
            startup: state(&specs.startup),
            readiness: state(&specs.readiness),
            liveness: state(&specs.liveness),
        }
    }

    fn probe(&self, kind: ProbeKind) -> Option<&ProbeState> {
        match kind {
            ProbeKind::Startup => self.startup.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
            ProbeKind::Liveness => self.liveness.as_ref(),
        }
    }

    fn probe_mut(&mut self, kind: ProbeKind) -> Option<&mut ProbeState> {
        match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
        }
    }

    /// The startup probe passed, or there is none (`containerStatuses[].started`).
    pub fn started(&self) -> bool {
        self.startup
            .as_ref()
            .is_none_or(|s| s.health == Health::Success)
    }

    /// Started, and the readiness probe passes or there is none.
    pub fn ready(&self) -> bool {
        self.started()
            && self
                .readiness
                .as_ref()
                .is_none_or(|r| r.health == Health::Success)
    }

    /// Whether a probe runs at all now: startup until it passed, the others after.
    fn active(&self, kind: ProbeKind) -> bool {
        match kind {
            ProbeKind::Startup => !self.started(),
            ProbeKind::Readiness | ProbeKind::Liveness => self.started(),
        }
    }

    const KINDS: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Readiness,
        ProbeKind::Liveness,
    ];

    /// The probes due at `now`, marked in flight and rescheduled a period later.
    pub fn take_due(&mut self, now: Instant) -> Vec<Attempt> {
        let mut due = Vec::new();
        for kind in Self::KINDS {
            if !self.active(kind) {
                continue;
            }
            let Some(p) = self.probe_mut(kind) else {
                continue;
            };
            if p.in_flight || p.next_at > now {
                continue;
            }
            p.in_flight = true;
            p.next_at = now + p.spec.period;
            due.push(Attempt {
                kind,
                action: p.spec.action.clone(),
                timeout: p.spec.timeout,
            });
        }
        due
    }

    /// When the next probe is due (none in flight), if any probe is active.
    pub fn next_due(&self) -> Option<Instant> {
        Self::KINDS
            .iter()
            .filter(|k| self.active(**k))
            .filter_map(|k| self.probe(*k))
            .filter(|p| !p.in_flight)
            .map(|p| p.next_at)
            .min()
    }

    /// Feeds the outcome of an attempt of probe `kind`.
    pub fn observe(&mut self, kind: ProbeKind, ok: bool) -> Verdict {
        let Some(p) = self.probe_mut(kind) else {
            return Verdict::Keep;
        };
        match (kind, p.observe(ok)) {
            (ProbeKind::Startup | ProbeKind::Liveness, Some(Health::Failure)) => {
                Verdict::Kill(kind)
            }
            _ => Verdict::Keep,
        }
    }

    /// The kill grace period the probe `kind` asks for, if it sets one.
    pub fn termination_grace(&self, kind: ProbeKind) -> Option<Duration> {
        self.probe(kind)?.spec.termination_grace
    }
}

/// How many `Unhealthy` Events one pod may record: a burst, then one per interval, as the
/// kubelet's spam filter allows (25, then one every 5 minutes per object). A probe failing
/// every second on every pod of a node would otherwise be an API write per second per pod;
/// the container's status and the `Killing` Events (never limited) still tell the story.
#[derive(Debug, Clone)]
pub struct EventBudget {
    tokens: f64,
    last: Instant,
}

impl EventBudget {
    pub const BURST: f64 = 25.0;
    pub const REFILL: Duration = Duration::from_secs(300);

    pub fn new(now: Instant) -> Self {
        EventBudget {
            tokens: Self::BURST,
            last: now,
        }
    }

    /// Whether an Event may be recorded at `now` (and takes its token if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        let earned =
            now.saturating_duration_since(self.last).as_secs_f64() / Self::REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(Self::BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The `User-Agent` of HTTP probes.
const USER_AGENT: &str = concat!("wharf-probe/", env!("CARGO_PKG_VERSION"));

/// Runs one attempt against the pod at `pod_ip`: `Ok` if it passed, else why not (as the
/// `Unhealthy` event says it).
pub async fn execute(action: &Action, pod_ip: IpAddr, timeout: Duration) -> Result<(), String> {
    let target = |host: &Option<String>, port: u16| match host {
        Some(h) => format!("{h}:{port}"),
        None => SocketAddr::new(pod_ip, port).to_string(),
    };
    match action {
        Action::Tcp { host, port } => {
            let addr = target(host, *port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Http {
            host,
            port,
            path,
            headers,
        } => {
            let addr = target(host, *port);
            let url = format!("http://{addr}{path}");
            match tokio::time::timeout(timeout, http_get(&addr, path, headers)).await {
                Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
                Ok(Ok(status)) => Err(format!("HTTP probe failed with statuscode: {status}")),
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Err(_) => Err(format!(
                    "Get \"{url}\": timed out after {}s awaiting headers",
                    timeout.as_secs_f64()
                )),
            }
        }
    }
}

/// One `GET` on a fresh connection; the status code.
async fn http_get(
    addr: &str,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<u16, String> {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let mut request = http::Request::builder()
        .method(http::Method::GET)
        .uri(path)
        .header(http::header::HOST, addr)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    // Headers of the probe replace the defaults (a `Host` header included).
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    // The connection is driven alongside the request; the answer's head is all we need.
    // A connection that ends (the server closes after answering) may still have handed
    // over the response, so the request is asked once more.
    let response = tokio::select! {
        response = &mut response => response,
        ended = conn => match response.await {
            Ok(r) => Ok(r),
            Err(e) => return Err(match ended {
                Err(conn_error) => conn_error.to_string(),
                Ok(()) => e.to_string(),
            }),
        },
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(probes: serde_json::Value) -> Container {
        let mut c = serde_json::json!({
            "name": "app",
            "image": "app.wasm",
            "ports": [{"name": "http", "containerPort": 8080}],
        });
        if let (Some(c), Some(p)) = (c.as_object_mut(), probes.as_object()) {
            c.extend(p.clone());
        }
        serde_json::from_value(c).expect("a container")
    }

    fn parse_one(probe: serde_json::Value) -> Result<ProbeSpecs, String> {
        ProbeSpecs::parse(
            &container(serde_json::json!({"readinessProbe": probe})),
            "spec.containers[0]",
        )
    }

    #[test]
    fn defaults_and_named_ports() {
        let specs = ProbeSpecs::parse(
            &container(serde_json::json!({
                "readinessProbe": {"httpGet": {"port": "http", "path": "healthz",
                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]}},
                "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1,
                    "initialDelaySeconds": 2, "failureThreshold": 5,
                    "terminationGracePeriodSeconds": 3},
            })),
            "spec.containers[0]",
        )
        .expect("valid probes");
        let r = specs.readiness.expect("readiness");
        assert_eq!(
            (
                r.period,
                r.timeout,
                r.success_threshold,
                r.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        assert_eq!(r.initial_delay, Duration::ZERO);
        match r.action {
            Action::Http {
                port,
                path,
                headers,
                host,
            } => {
                assert_eq!((port, path.as_str(), host), (8080, "/healthz", None));
                assert_eq!(headers.len(), 1);
            }
            other => panic!("not httpGet: {other:?}"),
        }
        let l = specs.liveness.expect("liveness");
        assert_eq!(
            l.action,
            Action::Tcp {
                host: None,
                port: 9000
            }
        );
        assert_eq!(
            (l.period, l.initial_delay, l.failure_threshold),
            (Duration::from_secs(1), Duration::from_secs(2), 5)
        );
        assert_eq!(l.termination_grace, Some(Duration::from_secs(3)));
        assert!(specs.startup.is_none());
        let none = ProbeSpecs::parse(&container(serde_json::json!({})), "spec.containers[0]");
        assert_eq!(none, Ok(ProbeSpecs::default()));
    }

    #[test]
    fn bad_probes_name_the_field() {
        let err = |probe| parse_one(probe).expect_err("refused");
        assert!(
            err(serde_json::json!({"exec": {"command": ["true"]}}))
                .starts_with("spec.containers[0].readinessProbe.exec: Unsupported value")
        );
        assert!(
            err(serde_json::json!({"grpc": {"port": 9000}}))
                .starts_with("spec.containers[0].readinessProbe.grpc: Unsupported value")
        );
        assert_eq!(
            err(serde_json::json!({"periodSeconds": 1})),
            "spec.containers[0].readinessProbe: Required value: must specify a handler type"
        );
        assert!(
            err(serde_json::json!({"httpGet": {"port": 1}, "tcpSocket": {"port": 1}}))
                .contains("more than 1 handler type")
        );
        assert_eq!(
            err(serde_json::json!({"httpGet": {"port": "web"}})),
            "spec.containers[0].readinessProbe.httpGet.port: Invalid value: \"web\": the \
             container has no port named \"web\""
        );
        assert!(
            err(serde_json::json!({"tcpSocket": {"port": 70000}}))
                .starts_with("spec.containers[0].readinessProbe.tcpSocket.port: Invalid value")
        );
        assert!(
            err(serde_json::json!({"httpGet": {"port": 80, "scheme": "HTTPS"}}))
                .starts_with("spec.containers[0].readinessProbe.httpGet.scheme")
        );
        assert!(
            err(serde_json::json!({"httpGet": {"port": 80}, "periodSeconds": -1}))
                .starts_with("spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1")
        );
        assert!(
            err(serde_json::json!({"httpGet": {"port": 80,
                "httpHeaders": [{"name": "bad name", "value": "x"}]}}))
            .starts_with("spec.containers[0].readinessProbe.httpGet.httpHeaders[0].name")
        );
        // successThreshold may be more than 1 for readiness only.
        assert!(
            parse_one(serde_json::json!({"tcpSocket": {"port": 80}, "successThreshold": 2}))
                .is_ok()
        );
        let liveness = ProbeSpecs::parse(
            &container(serde_json::json!({
                "livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2}})),
            "spec.containers[1]",
        );
        assert_eq!(
            liveness,
            Err(
                "spec.containers[1].livenessProbe.successThreshold: Invalid value: 2: must be 1"
                    .into()
            )
        );
    }

    fn spec(kind: ProbeKind, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            kind,
            action: Action::Tcp {
                host: None,
                port: 80,
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
            termination_grace: None,
        }
    }

    #[test]
    fn results_turn_only_past_their_thresholds() {
        let mut p = ProbeState::new(spec(ProbeKind::Readiness, 2, 3), Instant::now());
        assert_eq!(p.health(), Health::Failure, "readiness starts failed");
        assert_eq!(p.observe(true), None, "one success of two");
        assert_eq!(p.observe(true), Some(Health::Success));
        assert_eq!(p.observe(true), None, "no change");
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(true), None, "a success resets the failure run");
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(false), None);
        assert_eq!(p.observe(false), Some(Health::Failure), "three in a row");
        assert_eq!(p.observe(false), None);

        let mut l = ProbeState::new(spec(ProbeKind::Liveness, 1, 1), Instant::now());
        assert_eq!(l.health(), Health::Success, "liveness starts alive");
        assert_eq!(l.observe(true), None);
        assert_eq!(l.observe(false), Some(Health::Failure));

        let mut s = ProbeState::new(spec(ProbeKind::Startup, 1, 3), Instant::now());
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(s.observe(true), Some(Health::Success));
    }

    fn all(startup: bool, readiness: bool, liveness: bool) -> ProbeSpecs {
        ProbeSpecs {
            startup: startup.then(|| spec(ProbeKind::Startup, 1, 2)),
            readiness: readiness.then(|| spec(ProbeKind::Readiness, 1, 1)),
            liveness: liveness.then(|| spec(ProbeKind::Liveness, 1, 2)),
        }
    }

    fn kinds(attempts: &[Attempt]) -> Vec<ProbeKind> {
        attempts.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn without_probes_a_container_is_ready_at_once() {
        let mut p = ContainerProbes::new(&ProbeSpecs::default(), Instant::now());
        assert!(p.started() && p.ready());
        assert!(p.take_due(Instant::now()).is_empty());
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn startup_gates_readiness_and_liveness() {
        let t0 = Instant::now();
        let mut p = ContainerProbes::new(&all(true, true, true), t0);
        assert!(!p.started() && !p.ready());
        // Only the startup probe runs until it passes.
        assert_eq!(kinds(&p.take_due(t0)), [ProbeKind::Startup]);
        assert_eq!(p.next_due(), None, "the startup attempt is in flight");
        assert!(p.take_due(t0).is_empty());
        assert_eq!(p.observe(ProbeKind::Startup, true), Verdict::Keep);
        assert!(p.started());
        assert!(!p.ready(), "started, but readiness has not passed yet");
        // Readiness and liveness were due since the start: they run now.
        assert_eq!(p.next_due(), Some(t0));
        let due = p.take_due(t0);
        assert_eq!(kinds(&due), [ProbeKind::Readiness, ProbeKind::Liveness]);
        assert_eq!(p.next_due(), None);
        assert_eq!(p.observe(ProbeKind::Readiness, true), Verdict::Keep);
        assert!(p.ready());
        assert_eq!(p.observe(ProbeKind::Liveness, true), Verdict::Keep);
        // The startup probe never runs again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(p.next_due(), Some(t1));
        assert_eq!(
            kinds(&p.take_due(t1)),
            [ProbeKind::Readiness, ProbeKind::Liveness]
        );
        // Readiness failing makes the container unready, not killed.
        assert_eq!(p.observe(ProbeKind::Readiness, false), Verdict::Keep);
        assert!(!p.ready() && p.started());
    }

    #[test]
    fn startup_failure_past_threshold_kills() {
        let t0 = Instant::now();
        let mut p = ContainerProbes::new(&all(true, false, true), t0);
        let _ = p.take_due(t0);
        assert_eq!(p.observe(ProbeKind::Startup, false), Verdict::Keep);
        let _ = p.take_due(t0 + Duration::from_secs(1));
        assert_eq!(
            p.observe(ProbeKind::Startup, false),
            Verdict::Kill(ProbeKind::Startup)
        );
        assert!(!p.ready());
    }

    #[test]
    fn liveness_failure_past_threshold_kills() {
        let t0 = Instant::now();
        let mut p = ContainerProbes::new(&all(false, false, true), t0);
        assert!(p.ready(), "no readiness probe: ready once started");
        assert_eq!(p.observe(ProbeKind::Liveness, false), Verdict::Keep);
        assert_eq!(
            p.observe(ProbeKind::Liveness, false),
            Verdict::Kill(ProbeKind::Liveness)
        );
    }

    #[test]
    fn initial_delay_and_period_schedule_attempts() {
        let t0 = Instant::now();
        let mut s = spec(ProbeKind::Readiness, 1, 1);
        s.initial_delay = Duration::from_secs(5);
        s.period = Duration::from_secs(2);
        let mut p = ContainerProbes::new(
            &ProbeSpecs {
                readiness: Some(s),
                ..Default::default()
            },
            t0,
        );
        assert_eq!(p.next_due(), Some(t0 + Duration::from_secs(5)));
        assert!(p.take_due(t0 + Duration::from_secs(4)).is_empty());
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(p.take_due(t5).len(), 1);
        p.observe(ProbeKind::Readiness, true);
        assert_eq!(p.next_due(), Some(t5 + Duration::from_secs(2)));
    }

    #[test]
    fn unhealthy_events_are_limited_to_a_burst_then_a_trickle() {
        let t0 = Instant::now();
        let mut budget = EventBudget::new(t0);
        let allowed = (0..100).filter(|_| budget.allow(t0)).count();
        assert_eq!(allowed, 25);
        assert!(!budget.allow(t0 + Duration::from_secs(299)));
        assert!(budget.allow(t0 + Duration::from_secs(300)));
        assert!(!budget.allow(t0 + Duration::from_secs(301)));
    }

    /// A server answering every connection with `status`, once per connection.
    async fn answering(status: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn executor_checks_http_status_and_tcp_connects() {
        let timeout = Duration::from_secs(5);
        let http = |port| Action::Http {
            host: None,
            port,
            path: "/healthz".into(),
            headers: vec![],
        };
        let run = |action: Action| async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                execute(&action, IpAddr::from([127, 0, 0, 1]), timeout),
            )
            .await
            .expect("the attempt ends within its timeout")
        };
        let (ok, ok_task) = answering(204).await;
        let (moved, moved_task) = answering(302).await;
        let (bad, bad_task) = answering(503).await;
        assert_eq!(run(http(ok.port())).await, Ok(()));
        assert_eq!(run(http(moved.port())).await, Ok(()));
        assert_eq!(
            run(http(bad.port())).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(
            run(Action::Tcp {
                host: None,
                port: ok.port()
            })
            .await,
            Ok(())
        );
        ok_task.abort();
        moved_task.abort();
        bad_task.abort();
        // Nothing listens on a port just released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let refused = run(http(closed)).await.expect_err("refused");
        assert!(refused.starts_with("Get \"http://127.0.0.1:"), "{refused}");
        let refused = run(Action::Tcp {
            host: None,
            port: closed,
        })
        .await
        .expect_err("refused");
        assert!(refused.starts_with("dial tcp 127.0.0.1:"), "{refused}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts (the kernel does) and never answers.
        let action = Action::Http {
            host: None,
            port,
            path: "/".into(),
            headers: vec![],
        };
        let started = Instant::now();
        let result = execute(
            &action,
            IpAddr::from([127, 0, 0, 1]),
            Duration::from_millis(200),
        )
        .await;
        assert!(result.expect_err("timed out").contains("timed out"));
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
