//! Container logs: capture of the guests' stdout/stderr into files, and reading them back.
//!
//! **Format.** One file per container attempt, in the CRI log format that Kubernetes'
//! kubelet and `kubectl logs` understand, one line per line of output:
//!
//! ```text
//! 2026-11-21T10:00:00.000000000Z stdout F hello
//! ```
//!
//! (RFC 3339 UTC timestamp with nanoseconds, the stream, `F` for a full line or `P` for a
//! partial one — a line longer than 16 KiB is split into `P` pieces and a final `F`, as
//! containerd does — and the text.)
//!
//! **Layout.** `DATA_DIR/logs/<container id>/<restart count>.log`, rotated to
//! `<n>.log.1` (newest) .. `<n>.log.<max_files>` when it reaches `log_max_bytes`. When
//! attempt `n` starts, the files of attempt `n - 1` are kept (that is `kubectl logs
//! --previous`) and older attempts are deleted. A container's first attempt makes its
//! directory and file at its first output instead (a node starting thousands of quiet
//! servers then makes no log inodes for them); readers take the attempt number from the
//! runtime, so an attempt without a file has an empty log.
//!
//! **Capture path.** Guests write through a [`LogSink`]: its wasi `OutputStream` never blocks
//! the guest, it hands the bytes to the container's writer task through a channel. The writer
//! formats lines and does the file I/O in `spawn_blocking` (one hop per batch of writes), so
//! no file I/O runs on the async workers. The file is open only while output comes: it is
//! closed once nothing was written for [`LINGER`], so an idle container holds no descriptor
//! for its log, while one that logs every request does not reopen its file per request.
//! Backpressure: when more than 1 MiB is waiting to be written, `check-write` returns 0 and
//! the guest's stream becomes ready again only once the writer has caught up, so a guest
//! printing in a loop cannot grow the host's memory.
//!
//! **Reading.** [`ContainerLogs`] reads the last N lines (across rotated files), the previous
//! attempt's log, or follows the live file as an async stream: the writer publishes its
//! progress (bytes written, rotations) on a `watch` channel, so followers wake on new data
//! instead of polling, survive rotations (an open file handle keeps reading the renamed file
//! to its end before switching to the new one), and end when the container has exited.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Lines longer than this are split into partial (`P`) records, as containerd does.
const MAX_LINE: usize = 16 * 1024;
/// Bytes that may wait for the writer before guests are made to wait.
const MAX_IN_FLIGHT: usize = 1024 * 1024;
/// Largest single write a guest is offered by `check-write`.
const MAX_WRITE: usize = 64 * 1024;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`, as in the CRI format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339 UTC timestamp with nanoseconds, as written.
    pub timestamp: String,
    /// Which stream the text came from.
    pub stream: LogStream,
    /// A piece of a longer line (`P`); the line continues in the next record.
    pub partial: bool,
    /// The text, without the newline.
    pub text: String,
}

impl LogLine {
    /// Parses one CRI log line (without its newline).
    pub fn parse(line: &str) -> Option<LogLine> {
        let mut parts = line.splitn(4, ' ');
        let timestamp = parts.next()?.to_string();
        let stream = match parts.next()? {
            "stdout" => LogStream::Stdout,
            "stderr" => LogStream::Stderr,
            _ => return None,
        };
        let partial = match parts.next()? {
            "F" => false,
            "P" => true,
            _ => return None,
        };
        let text = parts.next().unwrap_or("").to_string();
        Some(LogLine {
            timestamp,
            stream,
            partial,
            text,
        })
    }
}

impl fmt::Display for LogLine {
    /// The record in CRI format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.partial { "P" } else { "F" };
        write!(
            f,
            "{} {} {} {}",
            self.timestamp,
            self.stream.as_str(),
            tag,
            self.text
        )
    }
}

/// What to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (`--tail`); `None` for all.
    pub tail: Option<usize>,
    /// The previous attempt's log instead of the current one (`--previous`).
    pub previous: bool,
}

/// Errors reading or writing logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The container id is not a single safe path segment.
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    /// No log exists for this container (or no previous attempt's log).
    #[error("no logs for container {id}{}", if *.previous { " (previous attempt)" } else { "" })]
    NotFound {
        /// The container id.
        id: String,
        /// Whether the previous attempt was asked for.
        previous: bool,
    },
    /// File I/O failed.
    #[error("log file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A blocking log task failed to complete.
    #[error("log task failed: {0}")]
    Task(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Log rotation settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogConfig {
    pub(crate) max_bytes: u64,
    pub(crate) max_files: usize,
}

/// Progress of a live log writer, published to followers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogProgress {
    pub(crate) rotations: u64,
    pub(crate) bytes: u64,
}

/// A container's latest attempt and, while it runs, its log writer's progress.
pub(crate) type LatestAttempt = (u32, Option<watch::Receiver<LogProgress>>);

fn attempt_path(dir: &Path, attempt: u32) -> PathBuf {
    dir.join(format!("{attempt}.log"))
}

fn rotated_path(current: &Path, i: usize) -> PathBuf {
    let mut s = current.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// The attempts that have a log in `dir`, ascending.
fn attempts_in(dir: &Path) -> io::Result<Vec<u32>> {
    let mut attempts = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(attempts),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u32>().ok())
        {
            attempts.push(n);
        }
    }
    attempts.sort_unstable();
    attempts.dedup();
    Ok(attempts)
}

// ---------------------------------------------------------------------------------------
// Capture: the sink guests write to.

/// Shared between the sink (every guest stream) and the writer: the sender lives only on
/// the sink side, so the channel closes when the last guest stream is gone.
struct SinkShared {
    tx: mpsc::UnboundedSender<(LogStream, Bytes)>,
    acct: Arc<Accounting>,
}

/// Bytes handed to the writer and not yet written, and a wake-up for guests waiting on it.
struct Accounting {
    in_flight: AtomicUsize,
    space: Notify,
}

/// Where a container's guests write their stdout and stderr. Cheap to clone; the writer
/// finishes (flushing the last partial lines) once every clone and every stream made from
/// it are dropped.
#[derive(Clone)]
pub(crate) struct LogSink {
    shared: Arc<SinkShared>,
}

impl LogSink {
    /// A `StdoutStream` for a `WasiCtxBuilder`.
    pub(crate) fn stdio(&self, stream: LogStream) -> LogStdio {
        LogStdio {
            shared: self.shared.clone(),
            stream,
        }
    }

    /// Writes a line on behalf of the runtime (for example why a request failed), as if the
    /// guest had written it to `stream`.
    pub(crate) fn write_line(&self, stream: LogStream, text: &str) {
        let mut line = text.to_string();
        line.push('\n');
        self.shared.push(stream, Bytes::from(line));
    }
}

impl SinkShared {
    fn push(&self, stream: LogStream, bytes: Bytes) {
        let len = bytes.len();
        self.acct.in_flight.fetch_add(len, Ordering::AcqRel);
        if self.tx.send((stream, bytes)).is_err() {
            // The writer is gone: the output is dropped.
            self.acct.in_flight.fetch_sub(len, Ordering::AcqRel);
        }
    }

    fn room(&self) -> usize {
        MAX_IN_FLIGHT
            .saturating_sub(self.acct.in_flight.load(Ordering::Acquire))
            .min(MAX_WRITE)
    }
}

/// The guest's stdout or stderr (a `StdoutStream` for `WasiCtxBuilder`).
pub(crate) struct LogStdio {
    shared: Arc<SinkShared>,
    stream: LogStream,
}

impl IsTerminal for LogStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogOutput {
            shared: self.shared.clone(),
            stream: self.stream,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 uses this path, which this runtime does not enable; it still works,
        // without backpressure.
        Box::new(LogAsyncWrite {
            shared: self.shared.clone(),
            stream: self.stream,
        })
    }
}

struct LogOutput {
    shared: Arc<SinkShared>,
    stream: LogStream,
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {
        loop {
            // Register before checking, so a wake-up between the check and the wait is kept.
            let notified = self.shared.acct.space.notified();
            if self.shared.room() > 0 {
                return;
            }
            notified.await;
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !bytes.is_empty() {
            self.shared.push(self.stream, bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(self.shared.room())
    }
}

struct LogAsyncWrite {
    shared: Arc<SinkShared>,
    stream: LogStream,
}

impl tokio::io::AsyncWrite for LogAsyncWrite {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.shared.push(self.stream, Bytes::copy_from_slice(buf));
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------
// The writer: line framing, CRI formatting, rotation. All of it runs in spawn_blocking.

struct LogFile {
    dir: PathBuf,
    attempt: u32,
    path: PathBuf,
    /// Whether [`LogFile::prepare`] ran: at start for a restart, at the first output for a
    /// container's first attempt (see `open`).
    prepared: bool,
    /// Open while output is flowing: the writer closes it whenever it has nothing queued
    /// ([`LogFile::close`]) and the next write opens it again for appending. An idle pod
    /// then holds no descriptor for its log, which is what lets one node hold 10 000 pods
    /// under a 20 000 open-files limit.
    file: Option<File>,
    size: u64,
    config: LogConfig,
    pending: [Vec<u8>; 2],
    progress: LogProgress,
}

impl LogFile {
    /// The log of `attempt` in `dir`; nothing is made on disk until [`LogFile::prepare`].
    fn new(dir: &Path, attempt: u32, config: LogConfig) -> Self {
        Self {
            dir: dir.to_path_buf(),
            attempt,
            path: attempt_path(dir, attempt),
            prepared: false,
            file: None,
            size: 0,
            config,
            pending: [Vec::new(), Vec::new()],
            progress: LogProgress::default(),
        }
    }

    /// Makes the directory (keeping only the previous attempt's files) and creates this
    /// attempt's file, empty.
    fn prepare(&mut self) -> Result<(), LogError> {
        let dir = &self.dir;
        // A directory made just now holds no older attempts to list.
        let fresh = crate::private::create_private_dir_fresh(dir).map_err(io_err(dir))?;
        let older = if fresh {
            Vec::new()
        } else {
            attempts_in(dir).map_err(io_err(dir))?
        };
        for old in older {
            if old + 1 == self.attempt {
                continue;
            }
            remove_attempt(dir, old, self.config.max_files)?;
        }
        crate::private::private_file_options()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.prepared = true;
        Ok(())
    }

    fn write_chunks(&mut self, chunks: &[(LogStream, Bytes)]) -> io::Result<()> {
        let timestamp = rfc3339_nanos(SystemTime::now());
        let mut out = Vec::new();
        for (stream, data) in chunks {
            let idx = *stream as usize;
            self.pending[idx].extend_from_slice(data);
            let mut pending = std::mem::take(&mut self.pending[idx]);
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
                self.emit(
                    &mut out,
                    &timestamp,
                    *stream,
                    false,
                    &pending[start..start + pos],
                )?;
                start += pos + 1;
            }
            pending.drain(..start);
            while pending.len() >= MAX_LINE {
                self.emit(&mut out, &timestamp, *stream, true, &pending[..MAX_LINE])?;
                pending.drain(..MAX_LINE);
            }
            self.pending[idx] = pending;
        }
        self.write_out(&mut out)
    }

    /// Formats one record into `out`, rotating first if it would overflow the file.
    fn emit(
        &mut self,
        out: &mut Vec<u8>,
        timestamp: &str,
        stream: LogStream,
        partial: bool,
        text: &[u8],
    ) -> io::Result<()> {
        let record_len = timestamp.len() + 10 + text.len();
        if self.size + out.len() as u64 > 0
            && self.size + (out.len() + record_len) as u64 > self.config.max_bytes
        {
            self.write_out(out)?;
            self.rotate()?;
        }
        out.extend_from_slice(timestamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.extend_from_slice(if partial { b" P " } else { b" F " });
        out.extend_from_slice(text);
        out.push(b'\n');
        Ok(())
    }

    fn write_out(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        if !self.prepared {
            self.prepare().map_err(io::Error::other)?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                crate::private::private_file_options()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(out)?;
        self.size += out.len() as u64;
        self.progress.bytes += out.len() as u64;
        out.clear();
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let max = self.config.max_files.max(1);
        match std::fs::remove_file(rotated_path(&self.path, max)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for i in (1..max).rev() {
            let from = rotated_path(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        // The next write creates the new file.
        self.file = None;
        self.size = 0;
        self.progress.rotations += 1;
        Ok(())
    }

    /// Writes out what is left of unterminated lines (as full records: the stream ended).
    fn finish(&mut self) -> io::Result<()> {
        let timestamp = rfc3339_nanos(SystemTime::now());
        let mut out = Vec::new();
        for (idx, stream) in [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .enumerate()
        {
            let pending = std::mem::take(&mut self.pending[idx]);
            if !pending.is_empty() {
                self.emit(&mut out, &timestamp, stream, false, &pending)?;
            }
        }
        self.write_out(&mut out)?;
        self.close();
        Ok(())
    }

    /// Lets go of the file's descriptor until the next write (writes are unbuffered, so
    /// nothing is lost).
    fn close(&mut self) {
        self.file = None;
    }
}

fn remove_attempt(dir: &Path, attempt: u32, max_files: usize) -> Result<(), LogError> {
    let path = attempt_path(dir, attempt);
    // Rotated files beyond the current max_files could exist from an older config: sweep a
    // generous range.
    for i in 0..=max_files.max(1) + 8 {
        let p = if i == 0 {
            path.clone()
        } else {
            rotated_path(&path, i)
        };
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::Io { path: p, source: e }),
        }
    }
    Ok(())
}

/// A running log writer: the task (await it after the guest is gone and every sink dropped)
/// and its progress channel for followers.
pub(crate) struct LogWriter {
    pub(crate) task: JoinHandle<()>,
    pub(crate) progress: watch::Receiver<LogProgress>,
}

/// Starts the log writer for `attempt` of the container whose log dir is `dir`.
///
/// A restart (`attempt > 0`) makes its file now, so that `--previous` and the current log
/// both have a file, and older attempts are removed when the new one starts. A container's
/// first attempt touches the disk only when it writes its first byte: most pods (a server
/// that logs nothing until asked) then cost no directory and no file at start, which on a
/// node starting thousands of pods at once is a large share of the start's work. Readers
/// know the attempt from the runtime, so a missing file reads as an empty log.
pub(crate) async fn open(
    dir: PathBuf,
    attempt: u32,
    config: LogConfig,
) -> Result<(LogSink, LogWriter), LogError> {
    let mut file = LogFile::new(&dir, attempt, config);
    if attempt > 0 {
        file = tokio::task::spawn_blocking(move || file.prepare().map(|()| file))
            .await
            .map_err(|e| LogError::Task(e.to_string()))??;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let acct = Arc::new(Accounting {
        in_flight: AtomicUsize::new(0),
        space: Notify::new(),
    });
    let shared = Arc::new(SinkShared {
        tx,
        acct: acct.clone(),
    });
    let (progress_tx, progress_rx) = watch::channel(LogProgress::default());
    let task = tokio::spawn(run_writer(file, rx, acct, progress_tx, LINGER));
    Ok((
        LogSink { shared },
        LogWriter {
            task,
            progress: progress_rx,
        },
    ))
}

/// How long the writer keeps its file open after the last output.
pub const LINGER: Duration = Duration::from_millis(250);

async fn run_writer(
    mut file: LogFile,
    mut rx: mpsc::UnboundedReceiver<(LogStream, Bytes)>,
    acct: Arc<Accounting>,
    progress: watch::Sender<LogProgress>,
    linger: Duration,
) {
    let mut batch = Vec::with_capacity(64);
    let mut failed = false;
    loop {
        let received = if file.file.is_some() {
            match tokio::time::timeout(linger, rx.recv_many(&mut batch, 64)).await {
                Ok(n) => n,
                Err(_) => {
                    // Quiet for `linger`: let go of the descriptor (see `LogFile::file`).
                    match tokio::task::spawn_blocking(move || {
                        file.close();
                        file
                    })
                    .await
                    {
                        Ok(f) => file = f,
                        Err(e) => {
                            tracing::error!("container log writer task failed: {e}");
                            return;
                        }
                    }
                    continue;
                }
            }
        } else {
            rx.recv_many(&mut batch, 64).await
        };
        if received == 0 {
            break;
        }
        let bytes: usize = batch.iter().map(|(_, b)| b.len()).sum();
        let chunks = std::mem::take(&mut batch);
        let result = tokio::task::spawn_blocking(move || {
            let r = if failed {
                Ok(())
            } else {
                file.write_chunks(&chunks)
            };
            (file, r)
        })
        .await;
        match result {
            Ok((f, r)) => {
                file = f;
                if let Err(e) = r {
                    tracing::warn!(path = %file.path.display(), "writing container log failed, dropping further output: {e}");
                    failed = true;
                }
            }
            Err(e) => {
                tracing::error!("container log writer task failed: {e}");
                acct.in_flight.fetch_sub(bytes, Ordering::AcqRel);
                acct.space.notify_waiters();
                return;
            }
        }
        acct.in_flight.fetch_sub(bytes, Ordering::AcqRel);
        acct.space.notify_waiters();
        progress.send_replace(file.progress);
    }
    if !failed {
        match tokio::task::spawn_blocking(move || {
            let r = file.finish();
            (file, r)
        })
        .await
        {
            Ok((f, r)) => {
                if let Err(e) = r {
                    tracing::warn!(path = %f.path.display(), "finishing container log failed: {e}");
                }
                progress.send_replace(f.progress);
            }
            Err(e) => tracing::error!("container log writer task failed: {e}"),
        }
    }
}

/// Formats a time as RFC 3339 UTC with nanoseconds: `2026-11-21T10:00:00.000000000Z`.
pub(crate) fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

// ---------------------------------------------------------------------------------------
// Reading.

/// The logs of one container (current and previous attempt). Get it from
/// [`crate::Runtime::logs`].
#[derive(Clone)]
pub struct ContainerLogs {
    id: String,
    dir: PathBuf,
    /// The latest attempt this runtime started, running or ended; `None` for a container
    /// it has not started (its logs are then found by listing the directory).
    attempt: Option<u32>,
    /// The live writer's progress, when that attempt is running.
    live: Option<watch::Receiver<LogProgress>>,
}

impl ContainerLogs {
    pub(crate) fn new(
        id: String,
        dir: PathBuf,
        attempt: Option<u32>,
        live: Option<watch::Receiver<LogProgress>>,
    ) -> Self {
        Self {
            id,
            dir,
            attempt,
            live,
        }
    }

    /// The attempt being written now, when the container is running.
    pub fn live_attempt(&self) -> Option<u32> {
        self.attempt.filter(|_| self.live.is_some())
    }

    /// Reads the current (or previous) attempt's log, or its last `tail` lines, including
    /// rotated files as needed. An attempt that has written nothing has an empty log.
    pub async fn read(&self, options: LogOptions) -> Result<Vec<LogLine>, LogError> {
        let dir = self.dir.clone();
        let id = self.id.clone();
        let known = self.attempt;
        tokio::task::spawn_blocking(move || {
            let attempt = pick_attempt(&dir, &id, known, options.previous)?;
            match read_tail(&attempt_path(&dir, attempt), options.tail, None) {
                Ok((lines, _)) => Ok(lines),
                Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    Ok(Vec::new())
                }
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| LogError::Task(e.to_string()))?
    }

    /// Follows the current attempt's log: the last `tail` lines (all with `None`), then every
    /// new line as it is written, ending when the container exits. For a container that is
    /// not running, yields what is there and ends.
    pub fn follow(
        &self,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<LogLine, LogError>> + Send + 'static {
        let state = Follow {
            id: self.id.clone(),
            dir: self.dir.clone(),
            attempt: self.attempt,
            live: self.live.clone(),
            tail,
            phase: Phase::Start,
            queue: VecDeque::new(),
            partial: Vec::new(),
            seen_rotations: 0,
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(line) = st.queue.pop_front() {
                    return Some((Ok(line), st));
                }
                if matches!(st.phase, Phase::Done) {
                    return None;
                }
                if let Err(e) = st.step().await {
                    st.phase = Phase::Done;
                    return Some((Err(e), st));
                }
            }
        })
    }
}

/// The attempt to read: the latest (`known`, else the newest on disk), or the one before it.
fn pick_attempt(dir: &Path, id: &str, known: Option<u32>, previous: bool) -> Result<u32, LogError> {
    let not_found = || LogError::NotFound {
        id: id.to_string(),
        previous,
    };
    if let Some(latest) = known {
        return if previous {
            latest.checked_sub(1).ok_or_else(not_found)
        } else {
            Ok(latest)
        };
    }
    let attempts = attempts_in(dir).map_err(io_err(dir))?;
    let latest = *attempts.last().ok_or_else(not_found)?;
    if !previous {
        return Ok(latest);
    }
    attempts
        .iter()
        .rev()
        .copied()
        .find(|&a| a < latest)
        .ok_or_else(not_found)
}

/// Reads the last `tail` lines of a log (all if `None`), looking into rotated files when the
/// current one has fewer. With `handle`, the current file is read through it (and the handle
/// is left at the end). Returns the lines and any trailing bytes of an unterminated line.
fn read_tail(
    current: &Path,
    tail: Option<usize>,
    handle: Option<&mut File>,
) -> Result<(Vec<LogLine>, Vec<u8>), LogError> {
    let mut content = Vec::new();
    match handle {
        Some(file) => file.read_to_end(&mut content).map_err(io_err(current))?,
        None => File::open(current)
            .and_then(|mut f| f.read_to_end(&mut content))
            .map_err(io_err(current))?,
    };
    let (mut lines, rest) = split_lines(&content);
    let mut i = 1;
    while tail.is_none_or(|n| lines.len() < n) {
        let path = rotated_path(current, i);
        let mut older = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut older).map_err(io_err(&path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(LogError::Io { path, source: e }),
        }
        let (mut older_lines, _) = split_lines(&older);
        older_lines.append(&mut lines);
        lines = older_lines;
        i += 1;
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok((lines, rest.to_vec()))
}

/// Splits complete lines off `bytes` and parses them; returns them and the unterminated rest.
fn split_lines(bytes: &[u8]) -> (Vec<LogLine>, &[u8]) {
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(pos) = bytes[start..].iter().position(|&b| b == b'\n') {
        let raw = String::from_utf8_lossy(&bytes[start..start + pos]);
        if let Some(line) = LogLine::parse(&raw) {
            lines.push(line);
        }
        start += pos + 1;
    }
    (lines, &bytes[start..])
}

enum Phase {
    Start,
    Reading {
        file: File,
    },
    /// The writer has finished: read what is left, then stop.
    Draining {
        file: File,
    },
    Done,
}

struct Follow {
    id: String,
    dir: PathBuf,
    attempt: Option<u32>,
    live: Option<watch::Receiver<LogProgress>>,
    tail: Option<usize>,
    phase: Phase,
    queue: VecDeque<LogLine>,
    partial: Vec<u8>,
    seen_rotations: u64,
}

impl Follow {
    async fn step(&mut self) -> Result<(), LogError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Start => {
                // Snapshot the rotation count before opening: a rotation in between makes us
                // re-read the new file from its start (possible duplicates, never a gap).
                if let Some(rx) = &mut self.live {
                    self.seen_rotations = rx.borrow_and_update().rotations;
                }
                let (dir, id, tail, known) =
                    (self.dir.clone(), self.id.clone(), self.tail, self.attempt);
                let opened = blocking(move || {
                    let attempt = pick_attempt(&dir, &id, known, false)?;
                    let path = attempt_path(&dir, attempt);
                    let mut file = match File::open(&path) {
                        Ok(file) => file,
                        // The attempt has written nothing yet (or, ended, nothing at all).
                        Err(e) if e.kind() == io::ErrorKind::NotFound && known.is_some() => {
                            return Ok(None);
                        }
                        Err(e) => return Err(LogError::Io { path, source: e }),
                    };
                    let (lines, partial) = read_tail(&path, tail, Some(&mut file))?;
                    Ok(Some((file, lines, partial)))
                })
                .await?;
                let Some((file, lines, partial)) = opened else {
                    // Wait for the first output: every line from then on is new.
                    self.tail = None;
                    let changed = match &mut self.live {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => false,
                    };
                    // Ended without a file: one more look (the last write may have made
                    // it), then done.
                    self.phase = if changed || self.live.take().is_some() {
                        Phase::Start
                    } else {
                        Phase::Done
                    };
                    return Ok(());
                };
                self.queue.extend(lines);
                self.partial = partial;
                self.phase = if self.live.is_some() {
                    Phase::Reading { file }
                } else {
                    Phase::Draining { file }
                };
                Ok(())
            }
            Phase::Reading { file } => {
                let rotations = match &mut self.live {
                    Some(rx) => rx.borrow_and_update().rotations,
                    None => self.seen_rotations,
                };
                let file = self.read_more(file).await?;
                if !self.queue.is_empty() {
                    self.phase = Phase::Reading { file };
                    return Ok(());
                }
                if rotations > self.seen_rotations {
                    // The old file is read to its end: switch to the new one.
                    self.seen_rotations = rotations;
                    self.phase = Phase::Reading {
                        file: self.reopen().await?,
                    };
                    return Ok(());
                }
                let changed = match &mut self.live {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => false,
                };
                self.phase = if changed {
                    Phase::Reading { file }
                } else {
                    Phase::Draining { file }
                };
                Ok(())
            }
            Phase::Draining { file } => {
                let rotations = match &mut self.live {
                    Some(rx) => rx.borrow_and_update().rotations,
                    None => self.seen_rotations,
                };
                let file = self.read_more(file).await?;
                if rotations > self.seen_rotations {
                    self.seen_rotations = rotations;
                    self.phase = Phase::Draining {
                        file: self.reopen().await?,
                    };
                    return Ok(());
                }
                drop(file);
                if !self.partial.is_empty() {
                    let raw = String::from_utf8_lossy(&self.partial).into_owned();
                    self.queue.extend(LogLine::parse(&raw));
                    self.partial.clear();
                }
                self.phase = Phase::Done;
                Ok(())
            }
            Phase::Done => Ok(()),
        }
    }

    /// Reads what was appended since the last read; queues complete lines.
    async fn read_more(&mut self, mut file: File) -> Result<File, LogError> {
        let path = self.current_path();
        let (file, bytes) = blocking(move || {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io_err(&path))?;
            Ok((file, bytes))
        })
        .await?;
        if !bytes.is_empty() {
            self.partial.extend_from_slice(&bytes);
            let (lines, rest) = split_lines(&self.partial);
            let rest = rest.to_vec();
            self.queue.extend(lines);
            self.partial = rest;
        }
        Ok(file)
    }

    async fn reopen(&mut self) -> Result<File, LogError> {
        self.partial.clear();
        let path = self.current_path();
        blocking(move || File::open(&path).map_err(io_err(&path))).await
    }

    fn current_path(&self) -> PathBuf {
        let attempt = pick_attempt(&self.dir, &self.id, self.attempt, false).unwrap_or(0);
        attempt_path(&self.dir, attempt)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Task(e.to_string()))?
}

/// Deletes every log file of a container (when its pod is deleted).
pub(crate) async fn remove_all(dir: PathBuf) -> Result<(), LogError> {
    blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::Io {
            path: dir,
            source: e,
        }),
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_255_200, 5); // 2026-11-21T10:00:00Z
        assert_eq!(rfc3339_nanos(t), "2026-11-21T10:00:00.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_nanos(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn parse_and_display() {
        let raw = "2026-11-21T10:00:00.000000000Z stdout F hello world";
        let line = LogLine::parse(raw).unwrap();
        assert_eq!(line.stream, LogStream::Stdout);
        assert!(!line.partial);
        assert_eq!(line.text, "hello world");
        assert_eq!(line.to_string(), raw);
        assert_eq!(LogLine::parse("2026 stderr P ").unwrap().text, "");
        assert!(LogLine::parse("garbage").is_none());
    }

    fn config(max_bytes: u64) -> LogConfig {
        LogConfig {
            max_bytes,
            max_files: 2,
        }
    }

    fn prepared(dir: &Path, attempt: u32, config: LogConfig) -> LogFile {
        let mut file = LogFile::new(dir, attempt, config);
        file.prepare().unwrap();
        file
    }

    #[test]
    fn framing_partial_long_lines_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = prepared(dir.path(), 0, config(1 << 30));
        f.write_chunks(&[
            (LogStream::Stdout, Bytes::from_static(b"one\ntw")),
            (LogStream::Stderr, Bytes::from_static(b"err\n")),
            (LogStream::Stdout, Bytes::from_static(b"o\nthree")),
        ])
        .unwrap();
        f.write_chunks(&[(LogStream::Stdout, Bytes::from(vec![b'x'; MAX_LINE + 5]))])
            .unwrap();
        f.finish().unwrap();
        let (lines, rest) = read_tail(&attempt_path(dir.path(), 0), None, None).unwrap();
        assert!(rest.is_empty());
        let texts: Vec<_> = lines
            .iter()
            .map(|l| (l.stream, l.partial, l.text.len()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (LogStream::Stdout, false, 3),
                (LogStream::Stderr, false, 3),
                (LogStream::Stdout, false, 3),
                (LogStream::Stdout, true, MAX_LINE),
                (LogStream::Stdout, false, 10),
            ]
        );
        assert!(lines[3].text.starts_with("three"));
    }

    /// Whether this process holds a descriptor for `path`.
    fn held_open(path: &Path) -> bool {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target == path)
    }

    #[test]
    fn the_file_is_open_only_while_written_and_appends_after_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = prepared(dir.path(), 0, config(1 << 30));
        let path = attempt_path(dir.path(), 0);
        assert!(!held_open(&path), "created, not yet written");
        f.write_chunks(&[(LogStream::Stdout, Bytes::from_static(b"one\n"))])
            .unwrap();
        assert!(held_open(&path));
        f.close();
        assert!(!held_open(&path));
        f.write_chunks(&[(LogStream::Stdout, Bytes::from_static(b"two\n"))])
            .unwrap();
        f.finish().unwrap();
        assert!(!held_open(&path));
        let (lines, _) = read_tail(&path, None, None).unwrap();
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two"]);
    }

    #[tokio::test]
    async fn the_writer_keeps_its_file_open_while_output_comes_and_closes_it_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let path = attempt_path(dir.path(), 0);
        let start = |linger| {
            let file = prepared(dir.path(), 0, config(1 << 30));
            let (tx, rx) = mpsc::unbounded_channel();
            let acct = Arc::new(Accounting {
                in_flight: AtomicUsize::new(0),
                space: Notify::new(),
            });
            let (progress_tx, progress) = watch::channel(LogProgress::default());
            let task = tokio::spawn(run_writer(file, rx, acct, progress_tx, linger));
            (tx, progress, task)
        };
        async fn written(progress: &mut watch::Receiver<LogProgress>, bytes: u64) {
            tokio::time::timeout(
                Duration::from_secs(10),
                progress.wait_for(|p| p.bytes >= bytes),
            )
            .await
            .expect("the line is written")
            .unwrap();
        }

        // Within its linger (an hour here) the file stays open between writes.
        let (tx, mut progress, task) = start(Duration::from_secs(3600));
        tx.send((LogStream::Stdout, Bytes::from_static(b"one\n")))
            .unwrap();
        written(&mut progress, 1).await;
        assert!(held_open(&path), "open while output comes");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the writer ends")
            .unwrap();
        assert!(!held_open(&path), "closed when the container is done");

        // Quiet for its linger: closed, and the next line reopens it to append.
        let (tx, mut progress, task) = start(Duration::from_millis(20));
        tx.send((LogStream::Stdout, Bytes::from_static(b"two\n")))
            .unwrap();
        written(&mut progress, 1).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while held_open(&path) {
            assert!(
                std::time::Instant::now() < deadline,
                "an idle writer holds no descriptor"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = progress.borrow().bytes;
        tx.send((LogStream::Stdout, Bytes::from_static(b"three\n")))
            .unwrap();
        written(&mut progress, before + 1).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the writer ends")
            .unwrap();
        let (lines, _) = read_tail(&path, None, None).unwrap();
        let texts: Vec<_> = lines.iter().map(|l| l.text.clone()).collect();
        assert_eq!(texts, ["two", "three"]);
    }

    #[test]
    fn rotation_keeps_max_files_and_tail_spans_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = prepared(dir.path(), 3, config(200));
        for i in 0..40 {
            f.write_chunks(&[(LogStream::Stdout, Bytes::from(format!("line {i}\n")))])
                .unwrap();
        }
        f.finish().unwrap();
        let current = attempt_path(dir.path(), 3);
        assert!(rotated_path(&current, 1).exists());
        assert!(rotated_path(&current, 2).exists());
        assert!(!rotated_path(&current, 3).exists());
        for p in [current.clone(), rotated_path(&current, 1)] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        }
        let (last, _) = read_tail(&current, Some(6), None).unwrap();
        let texts: Vec<_> = last.iter().map(|l| l.text.clone()).collect();
        assert_eq!(
            texts,
            (34..40).map(|i| format!("line {i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn new_attempt_keeps_only_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..3 {
            let mut f = prepared(dir.path(), attempt, config(1 << 20));
            f.write_chunks(&[(
                LogStream::Stdout,
                Bytes::from(format!("attempt {attempt}\n")),
            )])
            .unwrap();
            f.finish().unwrap();
        }
        assert_eq!(attempts_in(dir.path()).unwrap(), vec![1, 2]);
        assert_eq!(pick_attempt(dir.path(), "c", None, true).unwrap(), 1);
        assert_eq!(pick_attempt(dir.path(), "c", None, false).unwrap(), 2);
        // An attempt the runtime knows is read whether or not it has a file.
        assert_eq!(pick_attempt(dir.path(), "c", Some(4), false).unwrap(), 4);
        assert_eq!(pick_attempt(dir.path(), "c", Some(4), true).unwrap(), 3);
        assert!(matches!(
            pick_attempt(dir.path(), "c", Some(0), true),
            Err(LogError::NotFound { previous: true, .. })
        ));
    }

    #[tokio::test]
    async fn a_first_attempt_makes_its_log_at_its_first_output() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        let (sink, writer) = open(dir.clone(), 0, config(1 << 20)).await.unwrap();
        assert!(!dir.exists(), "nothing on disk before the first output");
        let logs = ContainerLogs::new(
            "c".into(),
            dir.clone(),
            Some(0),
            Some(writer.progress.clone()),
        );
        let read = logs.read(LogOptions::default()).await.unwrap();
        assert!(
            read.is_empty(),
            "an attempt without output has an empty log"
        );
        // A follower started before the first line waits for it.
        let mut stream = Box::pin(logs.follow(Some(1)));
        let waiting = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(waiting.is_err(), "no line yet: {waiting:?}");
        for i in 0..3 {
            sink.write_line(LogStream::Stdout, &format!("line {i}"));
        }
        for i in 0..3 {
            assert_eq!(next(&mut stream).await, format!("line {i}"));
        }
        drop(sink);
        tokio::time::timeout(Duration::from_secs(5), writer.task)
            .await
            .unwrap()
            .unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(rest.unwrap().is_none(), "the stream ends with the writer");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(attempt_path(&dir, 0))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the log is private: {mode:o}");

        // A first attempt of a container that left files behind (an earlier run of the
        // node) removes them at its first output; an ended attempt without output reads
        // as empty, and following it ends at once.
        let (sink, writer) = open(dir.clone(), 0, config(1 << 20)).await.unwrap();
        drop(sink);
        tokio::time::timeout(Duration::from_secs(5), writer.task)
            .await
            .unwrap()
            .unwrap();
        let mut old = prepared(&dir, 5, config(1 << 20));
        old.write_chunks(&[(LogStream::Stdout, Bytes::from_static(b"old\n"))])
            .unwrap();
        old.finish().unwrap();
        let ended = ContainerLogs::new("c".into(), root.path().join("d"), Some(0), None);
        assert!(ended.read(LogOptions::default()).await.unwrap().is_empty());
        let lines: Vec<_> = tokio::time::timeout(
            Duration::from_secs(5),
            Box::pin(ended.follow(None)).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        assert!(lines.is_empty(), "{lines:?}");
        let (sink, writer) = open(dir.clone(), 0, config(1 << 20)).await.unwrap();
        assert_eq!(
            attempts_in(&dir).unwrap(),
            vec![5],
            "untouched until output"
        );
        sink.write_line(LogStream::Stdout, "new");
        drop(sink);
        tokio::time::timeout(Duration::from_secs(5), writer.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(attempts_in(&dir).unwrap(), vec![0]);
        let (lines, _) = read_tail(&attempt_path(&dir, 0), None, None).unwrap();
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["new"]);
    }

    async fn next<S: Stream<Item = Result<LogLine, LogError>> + Unpin>(stream: &mut S) -> String {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap();
        item.unwrap().unwrap().text
    }

    #[tokio::test]
    async fn follow_sees_new_lines_across_rotation_and_ends_with_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny files: about two lines each, so following crosses many rotations.
        let (sink, writer) = open(dir.path().to_path_buf(), 0, config(120))
            .await
            .unwrap();
        sink.write_line(LogStream::Stdout, "before");
        // Wait until "before" is on disk, through the progress channel.
        let mut progress = writer.progress.clone();
        tokio::time::timeout(Duration::from_secs(5), progress.wait_for(|p| p.bytes > 0))
            .await
            .unwrap()
            .unwrap();
        let logs = ContainerLogs::new(
            "c".into(),
            dir.path().to_path_buf(),
            Some(0),
            Some(writer.progress.clone()),
        );
        let mut stream = Box::pin(logs.follow(Some(10)));
        assert_eq!(next(&mut stream).await, "before");
        for i in 0..20 {
            sink.write_line(
                if i % 2 == 0 {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                },
                &format!("after {i}"),
            );
            assert_eq!(next(&mut stream).await, format!("after {i}"));
        }
        assert!(progress.borrow().rotations >= 5, "{:?}", *progress.borrow());
        // The last line is unterminated: it is written when the writer finishes, and the
        // stream ends after it.
        sink.shared
            .push(LogStream::Stdout, Bytes::from_static(b"no newline"));
        drop(sink);
        tokio::time::timeout(Duration::from_secs(5), writer.task)
            .await
            .unwrap()
            .unwrap();
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
            .await
            .unwrap();
        let texts: Vec<_> = rest.into_iter().map(|l| l.unwrap().text).collect();
        assert_eq!(texts, vec!["no newline".to_string()]);
    }
}
