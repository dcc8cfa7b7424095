//! Helpers for end-to-end tests: the real `wharf` binary started on port 0 in a temp dir.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A `wharf control` process; killed when dropped.
pub struct ControlProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl ControlProcess {
    /// Starts `wharf control` on 127.0.0.1:0 and waits for its "serving on" line.
    pub async fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["control", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("serving on https://").nth(1) {
                    let addr = rest.split([',', ' ']).next().unwrap();
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
            panic!("wharf control exited before serving");
        })
        .await
        .expect("wharf control did not start in time");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ControlProcess {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// A kube client from the kubeconfig the control plane wrote.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// SIGTERM: the control plane drains and exits 0.
    pub async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            exit.success(),
            "wharf control exited with {exit} after SIGTERM"
        );
    }
}

pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs a `wharf` client command against the cluster of `kubeconfig`.
pub async fn wharf(kubeconfig: &Path, args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output(),
    )
    .await
    .expect("wharf command timed out")
    .unwrap();
    Output {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    }
}
