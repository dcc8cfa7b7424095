//! Finding the cluster a client command talks to, and talking to it.
//!
//! The kubeconfig is looked up as kubectl does, with wharf's data dir as the last resort
//! because `wharf control` writes one there on first start: `--kubeconfig`, else the
//! first path in `$KUBECONFIG`, else `DATA_DIR/kubeconfig`. Requests are built with
//! kube's [`Request`] from a kind's paths and answered as JSON, so one code path serves
//! every kind; kube turns every non-2xx answer into the server's `Status`.

use super::ServerError;
use anyhow::{Context, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Request;
use serde_json::Value;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use wharf_control::api::ResourceKind;

/// A connected client and what messages need to know about it.
pub struct Cluster {
    client: kube::Client,
    /// The configuration the client was built from, for clients that differ.
    config: kube::Config,
    /// The server URL, for "unreachable" messages.
    url: String,
    /// The kubeconfig context's namespace, else `default`: where `-n` defaults to.
    pub namespace: String,
}

/// wharf's data dir: `$XDG_DATA_HOME/wharf`, else `~/.local/share/wharf`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    data_dir_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
        .ok_or_else(|| anyhow!("neither $XDG_DATA_HOME nor $HOME is set: pass --data-dir"))
}

fn data_dir_from(xdg_data_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG spec says relative values are invalid and must be ignored.
    let xdg = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute());
    xdg.map(|p| p.join("wharf")).or_else(|| {
        home.filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".local/share/wharf"))
    })
}

/// Where a kubeconfig path came from, for the message when the file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    DataDir,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Flag => "given with --kubeconfig",
            Origin::Env => "the first path in $KUBECONFIG",
            Origin::DataDir => "the default, as neither --kubeconfig nor $KUBECONFIG is set",
        })
    }
}

/// The kubeconfig a client command uses, from `--kubeconfig` and the environment.
pub fn kubeconfig_path(flag: Option<PathBuf>) -> anyhow::Result<(PathBuf, Origin)> {
    lookup(flag, std::env::var_os("KUBECONFIG"), default_data_dir().ok())
        .ok_or_else(|| anyhow!("no kubeconfig: pass --kubeconfig or set $KUBECONFIG (neither $XDG_DATA_HOME nor $HOME is set)"))
}

fn lookup(
    flag: Option<PathBuf>,
    kubeconfig_env: Option<OsString>,
    data_dir: Option<PathBuf>,
) -> Option<(PathBuf, Origin)> {
    let from_env = kubeconfig_env
        .and_then(|paths| std::env::split_paths(&paths).find(|p| !p.as_os_str().is_empty()));
    flag.map(|p| (p, Origin::Flag))
        .or_else(|| from_env.map(|p| (p, Origin::Env)))
        .or_else(|| data_dir.map(|d| (d.join("kubeconfig"), Origin::DataDir)))
}

/// Builds a client from the kubeconfig; no request is made yet.
pub async fn connect(flag: Option<PathBuf>) -> anyhow::Result<Cluster> {
    let (config, path) = load_config(flag).await?;
    let context = || format!("kubeconfig {}", path.display());
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(config.clone()).with_context(context)?;
    let namespace = client.default_namespace().to_string();
    Ok(Cluster {
        client,
        config,
        url,
        namespace,
    })
}

/// The client configuration of the kubeconfig found as [`connect`] finds it, and its path.
pub async fn load_config(flag: Option<PathBuf>) -> anyhow::Result<(kube::Config, PathBuf)> {
    let (path, origin) = kubeconfig_path(flag)?;
    if !path.exists() {
        bail!(
            "no kubeconfig at {} ({origin}): start a cluster with `wharf control` or `wharf up`, \
             or point --kubeconfig at one",
            path.display()
        );
    }
    let context = || format!("kubeconfig {}", path.display());
    let kubeconfig = Kubeconfig::read_from(&path).with_context(context)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(context)?;
    Ok((config, path))
}

impl Cluster {
    /// The kube client, for long-running components (a node agent) started from the CLI.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A client that answers a 429 at once instead of retrying it (kube's default retries
    /// 429s with a back-off growing to minutes): `drain` handles a refused eviction itself,
    /// every 5 s, as kubectl does.
    pub fn client_without_retries(&self) -> anyhow::Result<kube::Client> {
        let mut config = self.config.clone();
        config.default_retry = false;
        Ok(kube::Client::try_from(config)?)
    }

    /// The request builder for `kind` in `namespace` (all namespaces when `None`).
    pub fn at(&self, kind: &ResourceKind, namespace: Option<&str>) -> Request {
        Request::new(kind.collection_path(namespace))
    }

    /// Sends a request built by [`Cluster::at`], answering the JSON body.
    pub async fn send(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Value, kube::Error> {
        self.client
            .request(request.map_err(kube::Error::BuildRequest)?)
            .await
    }

    /// Sends a watch request; the stream yields the server's watch events.
    pub async fn watch(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<
        impl futures::Stream<Item = Result<kube::core::WatchEvent<Value>, kube::Error>> + use<>,
        kube::Error,
    > {
        let request = request.map_err(kube::Error::BuildRequest)?;
        self.client.request_events(request).await
    }

    /// Sends a request whose answer is a byte stream (`pods/NAME/log`): its body as it
    /// comes, or the server's `Status`.
    pub async fn stream(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<impl futures::AsyncBufRead + use<>, kube::Error> {
        let request = request.map_err(kube::Error::BuildRequest)?;
        self.client.request_stream(request).await
    }

    /// A client error as users should read it: the server's `Status`, or that the server
    /// cannot be reached, or the error itself with the server's URL.
    pub fn explain(&self, err: kube::Error) -> anyhow::Error {
        match err {
            kube::Error::Api(status) => server_error(*status).into(),
            err => match io_cause(&err) {
                Some(io) => anyhow!(
                    "the server at {} is unreachable: {io} (is `wharf control` or `wharf up` running?)",
                    self.url
                ),
                None => anyhow::Error::new(err).context(format!("talking to {}", self.url)),
            },
        }
    }
}

pub fn server_error(status: kube::core::Status) -> ServerError {
    let message = if status.message.is_empty() {
        format!("the server answered {}", status.code)
    } else {
        status.message
    };
    ServerError {
        reason: status.reason,
        code: status.code,
        message,
        context: None,
    }
}

pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// The I/O error under a transport error (connection refused, reset, timed out).
fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_lookup_order() {
        let data = Some(PathBuf::from("/data/wharf"));
        let env = Some(OsString::from("/env/first:/env/second"));
        assert_eq!(
            lookup(Some("/flag".into()), env.clone(), data.clone()),
            Some(("/flag".into(), Origin::Flag))
        );
        assert_eq!(
            lookup(None, env, data.clone()),
            Some(("/env/first".into(), Origin::Env))
        );
        // An empty $KUBECONFIG is as good as unset, as for kubectl.
        assert_eq!(
            lookup(None, Some(OsString::new()), data.clone()),
            Some(("/data/wharf/kubeconfig".into(), Origin::DataDir))
        );
        assert_eq!(lookup(None, None, None), None);
    }

    #[test]
    fn data_dir_follows_xdg() {
        let home = Some(OsString::from("/home/u"));
        assert_eq!(
            data_dir_from(Some("/xdg".into()), home.clone()),
            Some(PathBuf::from("/xdg/wharf"))
        );
        assert_eq!(
            data_dir_from(Some("relative".into()), home.clone()),
            Some(PathBuf::from("/home/u/.local/share/wharf"))
        );
        assert_eq!(
            data_dir_from(None, home),
            Some(PathBuf::from("/home/u/.local/share/wharf"))
        );
        assert_eq!(data_dir_from(None, None), None);
    }
}
