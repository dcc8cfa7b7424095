//! Running containers: start, exit status, stop.
//!
//! A container is one supervised tokio task. For a command it instantiates the image in a
//! fresh store and calls `_start` (preview1) or `wasi:cli/run` (component) until it returns,
//! traps, exits or is stopped. For an HTTP component it serves `wasi:http` on the spec's
//! address until stopped (see `http`). Either way the task ends by publishing an
//! [`ExitStatus`] and flushing the container's log.
//!
//! **Exit statuses** follow Kubernetes' conventions for what a process would have done:
//!
//! | what happened                                  | reason       | code            |
//! |------------------------------------------------|--------------|-----------------|
//! | returned, `exit(0)`, `wasi:cli/run` ok         | `Completed`  | 0               |
//! | `exit(n)`, n != 0                              | `Error`      | n               |
//! | `wasi:cli/run` returned its error              | `Error`      | 1               |
//! | trap after the memory limit refused a growth   | `OOMKilled`  | 137 (SIGKILL)   |
//! | `unreachable` (Rust panics/aborts land here)   | `Error`      | 134 (SIGABRT)   |
//! | out-of-bounds access, stack overflow, bad call | `Error`      | 139 (SIGSEGV)   |
//! | misaligned atomic access                       | `Error`      | 135 (SIGBUS)    |
//! | integer divide by zero / overflow, bad float   | `Error`      | 136 (SIGFPE)    |
//! | any other trap                                 | `Error`      | 132 (SIGILL)    |
//! | an error raised by the host (not a wasm trap)  | `Error`      | 1               |
//! | killed by `stop` (commands; HTTP after grace)  | `Error`      | 137 (SIGKILL)   |
//! | HTTP server drained within the grace period    | `Completed`  | 0               |
//! | instantiation failed                           | `StartError` | 128             |
//!
//! The message carries wasmtime's explanation (with the wasm backtrace), and the same text is
//! written to the container's stderr log, as a crashing native process would print.
//!
//! **Stop.** WASI has no signals, so a command cannot be asked to terminate: `stop(grace)`
//! kills it at once (the guest future is dropped at its next epoch yield, at most one epoch
//! interval later even for `loop {}`); waiting out the grace would only delay deletion. An
//! HTTP container stops accepting, lets in-flight requests finish for up to `grace`, and is
//! then killed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::image::WorkloadKind;
use crate::limits::{CpuThrottle, MemoryBudget};
use crate::logs::{LogError, LogSink, LogStream};

/// Why a container ended (Kubernetes' `state.terminated.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// Exited with status 0.
    Completed,
    /// Exited non-zero, trapped, or was killed.
    Error,
    /// Trapped after hitting its memory limit.
    OOMKilled,
    /// Could not be instantiated.
    StartError,
}

impl ExitReason {
    /// The reason as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OOMKilled => "OOMKilled",
            ExitReason::StartError => "StartError",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code (see the module docs for traps and kills).
    pub code: i32,
    /// Why it ended.
    pub reason: ExitReason,
    /// A human-readable explanation (empty for a clean exit).
    pub message: String,
}

/// Kubernetes caps termination messages at 4096 bytes.
const MAX_MESSAGE: usize = 4096;

impl ExitStatus {
    pub(crate) fn completed(message: impl Into<String>) -> Self {
        Self {
            code: 0,
            reason: ExitReason::Completed,
            message: message.into(),
        }
    }

    pub(crate) fn error(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: ExitReason::Error,
            message: truncate(message.into()),
        }
    }

    pub(crate) fn killed(message: impl Into<String>) -> Self {
        Self::error(137, message)
    }

    pub(crate) fn oom_killed(limit: Option<u64>) -> Self {
        let message = match limit {
            Some(l) => format!("memory limit of {l} bytes reached"),
            None => "out of memory".to_string(),
        };
        Self {
            code: 137,
            reason: ExitReason::OOMKilled,
            message,
        }
    }

    pub(crate) fn start_error(message: impl Into<String>) -> Self {
        Self {
            code: 128,
            reason: ExitReason::StartError,
            message: truncate(message.into()),
        }
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Why a container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The id is not a single safe path segment.
    #[error("invalid container id {0:?}: use ASCII letters, digits, '.', '_' and '-'")]
    InvalidId(String),
    /// The container's log could not be created.
    #[error("creating the container log: {0}")]
    Logs(#[from] LogError),
    /// A mount could not be opened.
    #[error("{0}")]
    Mount(String),
    /// An HTTP component was started without an address to serve on.
    #[error(
        "image {image} is a wasi:http component: the spec needs http_listen (pod IP and containerPort)"
    )]
    NoListenAddress {
        /// The image reference.
        image: String,
    },
    /// The HTTP address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The runtime has been shut down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

/// Counters of a running container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// HTTP requests received (HTTP containers).
    pub requests: u64,
    /// Bytes of linear memory its live instances hold now.
    pub memory_bytes: u64,
    /// Instances that trapped after being refused memory. For an HTTP container each one is
    /// a failed request (answered 500); the container keeps serving.
    pub oom_events: u64,
    /// CPU time used by guest code (measured at epoch yields: about one epoch interval of
    /// accuracy per slice).
    pub cpu_time: Duration,
    /// Time the guest was made to sleep by its CPU limit (cgroups' `throttled_time`).
    pub cpu_throttled: Duration,
    /// Request instances alive now (HTTP containers): each holds a slot of the node's pool.
    pub in_flight: u64,
    /// Requests refused with 503 because the container was at its concurrency limit.
    pub rejected: u64,
    /// Requests whose instance was dropped at the request timeout (answered 504 if they
    /// had not answered yet).
    pub timed_out: u64,
}

/// The resource usage of one running container, as the node measures it (see `limits`):
/// what `kubectl top` and the HorizontalPodAutoscaler read, through the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    /// The container id from its spec.
    pub id: String,
    /// When this run of the container started: the cumulative counters start from zero
    /// then (a restarted container is a new run).
    pub started_at: std::time::SystemTime,
    /// CPU time its instances have spent executing guest code since it started, in
    /// nanoseconds (cumulative, as cgroups' `cpuacct.usage`).
    pub cpu_nanos: u64,
    /// Memory now: its instances' linear memories plus
    /// [`crate::INSTANCE_OVERHEAD_BYTES`] per live instance.
    pub memory_bytes: u64,
    /// The highest `memory_bytes` since it started.
    pub peak_memory_bytes: u64,
    /// Instances alive now.
    pub instances: u64,
    /// HTTP requests it has received since it started (cumulative); `None` for a command,
    /// which serves none.
    pub requests: Option<u64>,
}

/// The usage of every running container at one moment: [`crate::Runtime::usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSnapshot {
    /// When it was taken.
    pub taken_at: std::time::SystemTime,
    /// One entry per running container, by id.
    pub containers: Vec<ContainerUsage>,
}

/// The shared, observable part of a container.
pub(crate) struct ContainerShared {
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) cpu: Arc<CpuThrottle>,
    /// A `wasi:http` handler (it counts requests).
    pub(crate) serves_http: bool,
    pub(crate) requests: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

impl ContainerShared {
    /// The container's usage now.
    pub(crate) fn usage(&self, id: &str, started_at: std::time::SystemTime) -> ContainerUsage {
        ContainerUsage {
            id: id.to_string(),
            started_at,
            cpu_nanos: u64::try_from(self.cpu.used().as_nanos()).unwrap_or(u64::MAX),
            memory_bytes: self.budget.usage(),
            peak_memory_bytes: self.budget.peak(),
            instances: self.budget.instances(),
            requests: self
                .serves_http
                .then(|| self.requests.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn new(
        budget: Arc<MemoryBudget>,
        cpu: Arc<CpuThrottle>,
        serves_http: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            budget,
            cpu,
            serves_http,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        })
    }
}

/// A running (or finished) container. Dropping it kills the guest; keep it for as long as
/// the container should run.
pub struct Container {
    pub(crate) id: String,
    pub(crate) kind: WorkloadKind,
    pub(crate) http_addr: Option<SocketAddr>,
    pub(crate) status: watch::Receiver<Option<ExitStatus>>,
    /// Cancelled to stop gracefully; a child of `kill`.
    pub(crate) stop: CancellationToken,
    /// Cancelled to kill at once.
    pub(crate) kill: CancellationToken,
    pub(crate) shared: Arc<ContainerShared>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("http_addr", &self.http_addr)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Container {
    /// The container id from the spec.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What kind of workload this is.
    pub fn kind(&self) -> WorkloadKind {
        self.kind
    }

    /// For an HTTP component, the address it is listening on. The socket is bound and
    /// listening before [`crate::Runtime::start`] returns, so the container is ready for
    /// connections as soon as you have it (this is what a readiness check can use).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The exit status if the container has ended.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status.borrow().clone()
    }

    /// Waits until the container ends (its log is complete by then).
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.status.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(status) => status.clone().unwrap_or_else(lost),
            // The supervisor is gone without a status: it panicked (a bug, not the guest).
            Err(_) => lost(),
        }
    }

    /// Stops the container: an HTTP container stops accepting and drains in-flight requests
    /// for up to `grace`, then is killed; a command is killed at once (module docs). Returns
    /// the exit status.
    pub async fn stop(&self, grace: Duration) -> ExitStatus {
        self.stop.cancel();
        if self.kind != WorkloadKind::WasiHttp {
            self.kill.cancel();
        }
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.kill.cancel();
                self.wait().await
            }
        }
    }

    /// Kills the container at once.
    pub async fn kill(&self) -> ExitStatus {
        self.kill.cancel();
        self.wait().await
    }

    /// Current counters.
    pub fn stats(&self) -> ContainerStats {
        ContainerStats {
            requests: self.shared.requests.load(Ordering::Relaxed),
            memory_bytes: self.shared.budget.used(),
            oom_events: self.shared.budget.oom_events(),
            cpu_time: self.shared.cpu.used(),
            cpu_throttled: self.shared.cpu.throttled(),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            timed_out: self.shared.timed_out.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

fn lost() -> ExitStatus {
    ExitStatus::error(
        1,
        "the runtime lost track of this container (internal error)",
    )
}

/// How a guest run ended, before it becomes an [`ExitStatus`].
pub(crate) enum Outcome {
    /// The entry point returned (`Ok`) or failed with an error or trap (`Err`).
    Ran(Result<(), wasmtime::Error>),
    /// `wasi:cli/run` returned `Err(())`.
    CliFailed,
    /// Instantiation failed.
    StartFailed(wasmtime::Error),
    /// Stopped by the runtime.
    Killed,
}

/// Turns an outcome into a status, logging what went wrong to the container's stderr.
pub(crate) fn exit_status(
    outcome: Outcome,
    limit_hit: bool,
    budget: &MemoryBudget,
    logs: &LogSink,
) -> ExitStatus {
    let status = match outcome {
        Outcome::Ran(Ok(())) => ExitStatus::completed(""),
        Outcome::Ran(Err(e)) => classify_error(&e, limit_hit, budget),
        Outcome::CliFailed => ExitStatus::error(1, "wasi:cli/run returned an error"),
        Outcome::StartFailed(e) => ExitStatus::start_error(format!("instantiating: {e:?}")),
        Outcome::Killed => ExitStatus::killed("killed: stopped by the runtime"),
    };
    // A plain exit(n) is the guest's own doing and needs no commentary; anything else is
    // what a native process would have printed (or the kernel would have logged).
    let quiet =
        status.reason == ExitReason::Completed || status.message.starts_with("exited with status");
    if !quiet {
        logs.write_line(
            LogStream::Stderr,
            &format!("wharf: {}: {}", status.reason, status.message),
        );
    }
    status
}

/// Classifies an error from a guest call: exit, OOM, trap, or host error.
pub(crate) fn classify_error(
    e: &wasmtime::Error,
    limit_hit: bool,
    budget: &MemoryBudget,
) -> ExitStatus {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return match exit.0 {
            0 => ExitStatus::completed(""),
            n => ExitStatus::error(n, format!("exited with status {n}")),
        };
    }
    if limit_hit {
        budget.record_oom();
        return ExitStatus::oom_killed(budget.limit());
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => ExitStatus::error(trap_exit_code(*trap), format!("wasm trap: {e:?}")),
        None => ExitStatus::error(1, format!("{e:?}")),
    }
}

/// The exit code a native process would have had (128 + the signal it would have got).
fn trap_exit_code(trap: wasmtime::Trap) -> i32 {
    use wasmtime::Trap;
    match trap {
        Trap::UnreachableCodeReached => 128 + 6, // SIGABRT: abort(), Rust's panic=abort
        Trap::StackOverflow
        | Trap::MemoryOutOfBounds
        | Trap::TableOutOfBounds
        | Trap::IndirectCallToNull
        | Trap::BadSignature => 128 + 11, // SIGSEGV
        Trap::HeapMisaligned => 128 + 7,         // SIGBUS
        Trap::IntegerOverflow | Trap::IntegerDivisionByZero | Trap::BadConversionToInteger => {
            128 + 8 // SIGFPE
        }
        _ => 128 + 4, // SIGILL
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trap_codes() {
        assert_eq!(trap_exit_code(wasmtime::Trap::UnreachableCodeReached), 134);
        assert_eq!(trap_exit_code(wasmtime::Trap::StackOverflow), 139);
        assert_eq!(trap_exit_code(wasmtime::Trap::IntegerDivisionByZero), 136);
        assert_eq!(trap_exit_code(wasmtime::Trap::Interrupt), 132);
    }

    #[test]
    fn classify() {
        let budget = MemoryBudget::new(Some(1 << 20));
        let exit = wasmtime::Error::new(wasmtime_wasi::I32Exit(3));
        assert_eq!(
            classify_error(&exit, false, &budget),
            ExitStatus::error(3, "exited with status 3")
        );
        let zero = wasmtime::Error::new(wasmtime_wasi::I32Exit(0));
        assert_eq!(
            classify_error(&zero, true, &budget).reason,
            ExitReason::Completed
        );
        let trap = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        let st = classify_error(&trap, false, &budget);
        assert_eq!((st.reason, st.code), (ExitReason::Error, 134));
        let st = classify_error(&trap, true, &budget);
        assert_eq!((st.reason, st.code), (ExitReason::OOMKilled, 137));
        assert_eq!(budget.oom_events(), 1);
        let host = wasmtime::format_err!("host failure");
        assert_eq!(classify_error(&host, false, &budget).code, 1);
        assert_eq!(truncate("é".repeat(3000)).len(), 4096);
    }
}
