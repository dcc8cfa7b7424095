//! Driving the real `kubectl` against a test cluster.

use super::{POD_TIMEOUT, TIMEOUT};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// `kubectl` with the cluster's kubeconfig and a discovery cache of its own.
pub struct Kubectl<'a> {
    pub kubeconfig: &'a Path,
}

pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl<'_> {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig)
            // A cache of its own: no discovery cached from another cluster on the same port.
            .arg("--cache-dir")
            .arg(self.kubeconfig.with_file_name("kube-cache"))
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Ran {
        let out = tokio::time::timeout(TIMEOUT * 2, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap_or_else(|e| {
                panic!("running kubectl: {e}; install it (scripts/deps does: apt-get install kubernetes-client)")
            });
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args).await;
        assert!(
            r.ok,
            "kubectl {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Retries a read-only command until `pred` holds on its stdout (state that converges).
    pub async fn until(&self, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + POD_TIMEOUT;
        loop {
            let r = self.run(args).await;
            if r.ok && pred(&r.stdout) {
                return r.stdout;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {} never satisfied the check; last output:\n{}{}",
                args.join(" "),
                r.stdout,
                r.stderr
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
