//! [`LocalEtcd`]: an etcd server started from the `etcd` binary on loopback, with a
//! temporary data dir, for the tests of the etcd backend and for trying it on one machine.
//!
//! Why a watchdog: a test binary may share one server between its tests from a static,
//! which is never dropped, and a test may abort. The server is run under a shell that
//! kills it as soon as its stdin (a pipe this process holds) closes, which happens on
//! [`Drop`] and also when this process ends in any way, so no etcd outlives its tests.

use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a started server has to answer `/health`.
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("picking a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("etcdctl snapshot restore failed: {0}")]
    Restore(String),
    #[error("etcd at {url} was not healthy within {within:?}; its log ends with:\n{log}")]
    NotHealthy {
        url: String,
        within: Duration,
        log: String,
    },
}

/// One running etcd member; stopped (and its data dir removed) on drop.
pub struct LocalEtcd {
    /// `http://127.0.0.1:PORT`, for clients.
    pub client_url: String,
    dir: PathBuf,
    watchdog: Option<ChildStdin>,
    shell: Child,
}

impl std::fmt::Debug for LocalEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEtcd")
            .field("client_url", &self.client_url)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The etcd binary: `$WHARF_ETCD_BIN`, else `etcd` on the PATH.
pub fn etcd_binary() -> String {
    std::env::var("WHARF_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())
}

/// Free loopback ports, `n` distinct ones (bound at once, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, LocalEtcdError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LocalEtcdError::Port)?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LocalEtcdError::Port)
}

fn fresh_dir() -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("wharf-etcd-{}-{n}-{nanos}", std::process::id()))
}

/// A member of a cluster being started: its name and ports.
struct Plan {
    name: String,
    client: u16,
    peer: u16,
}

impl LocalEtcd {
    /// Starts a one-member etcd and waits until it is healthy. Blocking: from async code
    /// call it in `spawn_blocking`.
    pub fn start() -> Result<LocalEtcd, LocalEtcdError> {
        Ok(Self::cluster(1)?.remove(0))
    }

    /// One server for the whole process, started on first use and stopped when the
    /// process ends (see the module doc); callers keep their data apart by key prefix.
    /// Blocking, like [`LocalEtcd::start`].
    pub fn shared() -> Result<&'static LocalEtcd, String> {
        static SHARED: std::sync::OnceLock<Result<LocalEtcd, String>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| LocalEtcd::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts an etcd cluster of `members` members on loopback and waits until every one
    /// is healthy (which needs a quorum). Blocking, like [`LocalEtcd::start`].
    pub fn cluster(members: usize) -> Result<Vec<LocalEtcd>, LocalEtcdError> {
        Self::cluster_from(members, None)
    }

    /// A one-member etcd whose data is restored from an `etcdctl snapshot save` file with
    /// `etcdctl snapshot restore` (`$WHARF_ETCDCTL_BIN`, else `etcdctl`), as an operator
    /// restores a backup. Blocking, like [`LocalEtcd::start`].
    pub fn restored(snapshot: &Path) -> Result<LocalEtcd, LocalEtcdError> {
        Ok(Self::cluster_from(1, Some(snapshot))?.remove(0))
    }

    fn cluster_from(
        members: usize,
        snapshot: Option<&Path>,
    ) -> Result<Vec<LocalEtcd>, LocalEtcdError> {
        let ports = free_ports(members * 2)?;
        let cluster_tag = fresh_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let plans: Vec<Plan> = (0..members)
            .map(|i| Plan {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
            })
            .collect();
        let initial = plans
            .iter()
            .map(|p| format!("{}=http://127.0.0.1:{}", p.name, p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut started = Vec::new();
        for plan in &plans {
            started.push(Self::spawn(plan, &initial, &cluster_tag, snapshot)?);
        }
        for member in &started {
            member.wait_healthy()?;
        }
        Ok(started)
    }

    fn spawn(
        plan: &Plan,
        initial: &str,
        tag: &str,
        snapshot: Option<&Path>,
    ) -> Result<LocalEtcd, LocalEtcdError> {
        let dir = fresh_dir();
        let binary = etcd_binary();
        let spawn_error = |source| LocalEtcdError::Spawn {
            binary: binary.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(spawn_error)?;
        let client_url = format!("http://127.0.0.1:{}", plan.client);
        let peer_url = format!("http://127.0.0.1:{}", plan.peer);
        let data = dir.join("data");
        if let Some(snapshot) = snapshot {
            let etcdctl =
                std::env::var("WHARF_ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_owned());
            let out = Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(snapshot)
                .arg("--data-dir")
                .arg(&data)
                .args(["--name", &plan.name, "--initial-cluster", initial])
                .args(["--initial-cluster-token", tag])
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .output()
                .map_err(|e| LocalEtcdError::Restore(format!("{etcdctl}: {e}")))?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(LocalEtcdError::Restore(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        // The shell starts etcd, then waits for its stdin to close, stops etcd and removes
        // the member's directory (a shared member is never dropped).
        let script = r#"bin="$1"; dir="$2"; shift 2
"$bin" "$@" >"$dir/etcd.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/etcd.pid"
read -r _ignored
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;
        let shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&binary)
            .arg(&dir)
            .arg("--name")
            .arg(&plan.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-token")
            .arg(tag)
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(spawn_error)?;
        let mut member = LocalEtcd {
            client_url,
            dir,
            watchdog: None,
            shell,
        };
        member.watchdog = member.shell.stdin.take();
        Ok(member)
    }

    /// Waits until `/health` says so, or [`READY_WITHIN`] passes.
    fn wait_healthy(&self) -> Result<(), LocalEtcdError> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LocalEtcdError::NotHealthy {
            url: self.client_url.clone(),
            within: READY_WITHIN,
            log: self.log_tail(),
        })
    }

    fn healthy(&self) -> bool {
        let Some(addr) = self
            .client_url
            .strip_prefix("http://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return false;
        };
        let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        if conn.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// The last lines of the member's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the member with SIGKILL (a crash: no clean shutdown) and waits until it is
    /// gone; its directory stays until the value is dropped.
    pub fn kill(&self) -> std::io::Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("etcd.pid"))?;
        let pid = pid.trim();
        let status = Command::new("kill").args(["-KILL", pid]).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("kill -KILL {pid}: {status}")));
        }
        let deadline = Instant::now() + READY_WITHIN;
        while Path::new("/proc").join(pid).join("exe").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The member's directory (data dir and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        // Closing the pipe makes the shell stop etcd.
        drop(self.watchdog.take());
        let _ = self.shell.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
