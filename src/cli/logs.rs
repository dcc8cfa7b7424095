//! `wharf logs POD`: a container's log through the API server's `pods/NAME/log`, which
//! proxies to the node running the pod. Bytes are written to stdout as they arrive and
//! flushed each time, so `-f` shows lines as the container prints them, until the
//! container's log ends or Ctrl-C.

use super::cluster::Cluster;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::{AsyncBufRead as _, AsyncBufReadExt};
use kube::api::LogParams;
use tokio::io::AsyncWriteExt;
use wharf_control::api::kinds::resolve;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The pod: NAME or pod/NAME
    #[arg(value_name = "POD")]
    pub pod: String,

    /// The container [default: the pod's only container]
    #[arg(short, long)]
    pub container: Option<String>,

    /// Keep streaming new lines until the container's log ends or Ctrl-C
    #[arg(short, long)]
    pub follow: bool,

    /// Only the last N lines; -1 for the whole log
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,

    /// The log of the previous, ended instance of the container
    #[arg(short, long)]
    pub previous: bool,

    /// Prefix each line with its RFC 3339 timestamp
    #[arg(long)]
    pub timestamps: bool,

    /// Namespace of the pod [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// The pod name in `NAME` or `pod/NAME` (any name of the Pod kind before the slash).
fn pod_name(arg: &str) -> anyhow::Result<&str> {
    let name = match arg.split_once('/') {
        None => arg,
        Some((kind, name)) if resolve(kind).is_some_and(|k| k.kind == "Pod") => name,
        Some((kind, _)) => {
            bail!("wharf logs reads the log of a pod, not of a {kind}: use POD or pod/POD")
        }
    };
    if name.is_empty() {
        bail!("a pod name is required: wharf logs POD");
    }
    Ok(name)
}

impl LogsArgs {
    fn params(&self) -> LogParams {
        LogParams {
            container: self.container.clone(),
            follow: self.follow,
            previous: self.previous,
            timestamps: self.timestamps,
            tail_lines: (self.tail >= 0).then_some(self.tail),
            ..Default::default()
        }
    }
}

pub async fn run(cluster: &Cluster, args: LogsArgs) -> anyhow::Result<()> {
    let name = pod_name(&args.pod)?;
    let kind = resolve("pod").ok_or_else(|| anyhow!("the Pod kind is not served"))?;
    let namespace = args.namespace.as_deref().unwrap_or(&cluster.namespace);
    let at = cluster.at(kind, Some(namespace));
    let log = cluster
        .stream(at.logs(name, &args.params()))
        .await
        .map_err(|e| cluster.explain(e))?;
    let mut log = std::pin::pin!(log);
    let mut stdout = tokio::io::stdout();
    loop {
        let chunk = log
            .fill_buf()
            .await
            .with_context(|| format!("reading the log of pod {name}"))?;
        if chunk.is_empty() {
            return Ok(());
        }
        let n = chunk.len();
        let written = async {
            stdout.write_all(chunk).await?;
            stdout.flush().await
        };
        match written.await {
            Ok(()) => {}
            // `wharf logs web | head`: the reader is gone, so is the need to read.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        log.as_mut().consume(n);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_with_or_without_their_kind() {
        assert_eq!(pod_name("web").unwrap(), "web");
        assert_eq!(pod_name("pod/web").unwrap(), "web");
        assert_eq!(pod_name("po/web").unwrap(), "web");
        assert!(pod_name("deploy/web").is_err());
        assert!(pod_name("pod/").is_err());
    }

    #[test]
    fn flags_become_kubectls_query() {
        let args = LogsArgs {
            pod: "web".into(),
            container: Some("app".into()),
            follow: true,
            tail: 10,
            previous: false,
            timestamps: true,
            namespace: None,
        };
        let p = args.params();
        assert_eq!(p.container.as_deref(), Some("app"));
        assert!(p.follow && p.timestamps && !p.previous);
        assert_eq!(p.tail_lines, Some(10));
        let all = LogsArgs { tail: -1, ..args };
        assert_eq!(all.params().tail_lines, None);
    }
}
