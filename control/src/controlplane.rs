//! Starting and stopping a whole control plane: store, API server, credentials.
//!
//! [`start`] returns once the listener is bound and the store is open, with the bound
//! address (so tests and `wharf up` can use port 0), and serves until the shutdown token
//! is cancelled; [`ControlPlane::wait`] then resolves after open connections drained.
//!
//! First start of a data dir generates the admin token (`DATA_DIR/admin.token`, mode 0600)
//! and a kubeconfig (`DATA_DIR/kubeconfig`, mode 0600) that points at the server with it;
//! later starts reuse the token and rewrite the kubeconfig with the address now bound.

use crate::apiserver::auth::{Authenticator, Identity, generate_token};
use crate::apiserver::{self, ApiConfig, AppState};
use crate::store::{FjallStore, Store, StoreConfig, StoreError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How to run a control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api: ApiConfig,
}

impl ControlConfig {
    /// Defaults: listen on 127.0.0.1:6443, 3 MiB bodies.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ControlConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            api: ApiConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot open the store in {dir}: {error}")]
    Store { dir: PathBuf, error: StoreError },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bootstrapping the cluster: {0}")]
    Bootstrap(String),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// A running control plane.
pub struct ControlPlane {
    pub local_addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub admin_token: String,
    pub state: AppState,
    router: axum::Router,
    server: JoinHandle<Result<(), std::io::Error>>,
}

impl ControlPlane {
    /// A client that calls this control plane's API in process, as the system identity.
    pub fn client(&self) -> kube::Client {
        apiserver::in_process_client(self.router.clone())
    }

    /// The store (for components that are part of the control plane process).
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Resolves when the server has stopped after the shutdown token was cancelled.
    pub async fn wait(self) -> Result<(), ControlError> {
        match self.server.await {
            Ok(r) => r.map_err(ControlError::Serve),
            Err(e) => Err(ControlError::Serve(std::io::Error::other(e))),
        }
    }
}

/// Opens the store, bootstraps credentials and system namespaces, binds and serves.
pub async fn start(
    config: ControlConfig,
    shutdown: CancellationToken,
) -> Result<ControlPlane, ControlError> {
    let dir = config.data_dir.clone();
    create_private_dir(&dir)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|error| ControlError::Listen {
                addr: config.listen,
                error,
            })?;
    let local_addr = listener
        .local_addr()
        .map_err(|error| ControlError::Listen {
            addr: config.listen,
            error,
        })?;
    let store_dir = dir.join("store");
    let store =
        tokio::task::spawn_blocking(move || FjallStore::open(StoreConfig::new(store_dir.clone())))
            .await
            .map_err(|e| ControlError::Bootstrap(format!("opening the store: {e}")))?
            .map_err(|error| ControlError::Store {
                dir: dir.join("store"),
                error,
            })?;
    let store: Arc<dyn Store> = Arc::new(store);

    let admin_token = load_or_create_token(&dir.join("admin.token")).await?;
    let auth = Arc::new(Authenticator::new());
    auth.add_token(admin_token.clone(), Identity::admin());
    let kubeconfig = dir.join("kubeconfig");
    write_private(
        &kubeconfig,
        kubeconfig_yaml(local_addr, &admin_token).as_bytes(),
    )
    .await?;

    let state = AppState {
        store: store.clone(),
        auth,
        config: Arc::new(config.api.clone()),
        shutdown: shutdown.clone(),
    };
    let router = apiserver::router(state.clone());
    bootstrap_namespaces(&router).await?;

    let app = router.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    tracing::info!(%local_addr, kubeconfig = %kubeconfig.display(), "control plane serving");
    Ok(ControlPlane {
        local_addr,
        kubeconfig,
        admin_token,
        state,
        router,
        server,
    })
}

/// Creates the namespaces every cluster has, through the API like any client would.
async fn bootstrap_namespaces(router: &axum::Router) -> Result<(), ControlError> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let client = apiserver::in_process_client(router.clone());
    let api: Api<Namespace> = Api::all(client);
    for name in apiserver::resources::SYSTEM_NAMESPACES {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(ControlError::Bootstrap(format!(
                    "creating namespace {name}: {e}"
                )));
            }
        }
    }
    Ok(())
}

fn kubeconfig_yaml(addr: SocketAddr, token: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: wharf\n  cluster:\n    server: http://{addr}\n\
         users:\n\
         - name: wharf-admin\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: wharf\n  context:\n    cluster: wharf\n    user: wharf-admin\n    namespace: default\n\
         current-context: wharf\n\
         preferences: {{}}\n"
    )
}

fn create_private_dir(dir: &Path) -> Result<(), ControlError> {
    std::fs::create_dir_all(dir).map_err(|error| ControlError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|error| {
            ControlError::Io {
                path: dir.to_path_buf(),
                error,
            }
        })?;
    }
    Ok(())
}

async fn load_or_create_token(path: &Path) -> Result<String, ControlError> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => create_token(path).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_token(path).await,
        Err(error) => Err(ControlError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

async fn create_token(path: &Path) -> Result<String, ControlError> {
    let token = generate_token();
    write_private(path, format!("{token}\n").as_bytes()).await?;
    Ok(token)
}

/// Writes a file readable only by its owner, atomically (temp file, fsync, rename), so a
/// crash never leaves a half-written credential.
async fn write_private(path: &Path, contents: &[u8]) -> Result<(), ControlError> {
    let path = path.to_path_buf();
    let contents = contents.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let io = |error| ControlError::Io {
            path: path.clone(),
            error,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&contents).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    })
    .await
    .map_err(|e| ControlError::Bootstrap(format!("writing a credential: {e}")))?
}
