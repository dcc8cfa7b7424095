//! The audit log (`--audit-log FILE`): `audit.k8s.io/v1` Events as JSON lines, at the
//! Metadata level, for every request that changes state and every request refused (401,
//! 403), as kube-apiserver writes them with `--audit-log-path`: who (user, groups, source
//! address, user agent), what (verb, requestURI, objectRef), the answer (responseStatus),
//! when (requestReceivedTimestamp, stageTimestamp), and the authorization decision.
//!
//! Why a writer thread: the middleware must not block the async workers on file I/O, and
//! the order of lines should be the order of answers. Requests hand their line to a
//! bounded channel; one thread appends and rotates (when the file would pass
//! `max_size_bytes` it becomes `FILE.1`, `FILE.1` becomes `FILE.2`, ... up to
//! `max_backups`). A full channel drops the line and counts it, rather than slowing the
//! API down; the count is logged.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use serde_json::{Value, json};

use super::auth::Identity;

/// Where and how much to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate when the file would pass this size (kube-apiserver's `--audit-log-maxsize`,
    /// in MB there).
    pub max_size_bytes: u64,
    /// Rotated files kept (`--audit-log-maxbackup`).
    pub max_backups: usize,
}

impl AuditConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            path: path.into(),
            max_size_bytes: 100 << 20,
            max_backups: 10,
        }
    }
}

/// The running audit log: a handle to its writer thread.
#[derive(Clone)]
pub struct AuditLog {
    lines: std::sync::mpsc::SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

/// A file that rotates by size.
struct Rotating {
    config: AuditConfig,
    file: std::fs::File,
    size: u64,
}

impl Rotating {
    fn open(config: AuditConfig) -> std::io::Result<Rotating> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let size = file.metadata()?.len();
        Ok(Rotating { config, file, size })
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.config.max_size_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.config.path;
        let numbered = |n: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.config.max_backups == 0 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.config.max_backups));
            for n in (1..self.config.max_backups).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.file = open_append(path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl AuditLog {
    /// Opens (or creates) the log and starts its writer thread, which ends when every
    /// handle is dropped.
    pub fn start(config: AuditConfig) -> std::io::Result<AuditLog> {
        let mut file = Rotating::open(config)?;
        let (lines, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(65_536);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut reported = 0;
                while let Ok(line) = rx.recv() {
                    if let Err(e) = file.write(&line) {
                        tracing::error!(
                            "writing the audit log {}: {e}",
                            file.config.path.display()
                        );
                    }
                    let lost = counted.load(Ordering::Relaxed);
                    if lost > reported {
                        tracing::warn!(lost, "audit events dropped: the audit log fell behind");
                        reported = lost;
                    }
                }
                let _ = file.file.flush();
            })?;
        Ok(AuditLog { lines, dropped })
    }

    fn record(&self, event: &Value) {
        let mut line = event.to_string().into_bytes();
        line.push(b'\n');
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a request's path names, read from the path alone (as kube-apiserver's request
/// info resolver does, without knowing which kinds are served).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// The object reference of a resource path (`None` for other paths).
pub fn object_ref(path: &str) -> Option<ObjectRef> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/NAME/status` is the Namespace's own subresource.
        ["namespaces", ns, more @ ..] if !matches!(more, [] | ["status" | "finalize"]) => {
            (Some(ns.to_string()), more)
        }
        _ => (None, rest),
    };
    let resource = rest.first()?.to_string();
    Some(ObjectRef {
        api_group: group.to_owned(),
        api_version: version.to_owned(),
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

/// The Kubernetes verb of a request.
pub fn verb(method: &Method, object: Option<&ObjectRef>, query: &str) -> String {
    let named = object.is_some_and(|o| o.name.is_some());
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=1" || kv == "watch=true");
    match (object, method.as_str()) {
        (None, m) => m.to_ascii_lowercase(),
        (Some(_), "GET" | "HEAD") if watch => "watch".into(),
        (Some(_), "GET" | "HEAD") => if named { "get" } else { "list" }.into(),
        (Some(_), "POST") => "create".into(),
        (Some(_), "PUT") => "update".into(),
        (Some(_), "PATCH") => "patch".into(),
        (Some(_), "DELETE") => if named { "delete" } else { "deletecollection" }.into(),
        (Some(_), m) => m.to_ascii_lowercase(),
    }
}

fn format(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The middleware: records the request once it is answered, if it changed state or was
/// refused. The identity comes from the response (the authentication layer leaves it
/// there); the source address from the connection.
pub async fn record(State(log): State<AuditLog>, req: Request, next: Next) -> Response {
    // Taken as an instant; formatted only for the requests that are recorded (reads are
    // most requests and are not).
    let received = jiff::Timestamp::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(req).await;
    let status = response.status();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let refused = status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN;
    if !(changes || refused) {
        return response;
    }
    let identity = response.extensions().get::<Identity>();
    let object = object_ref(uri.path());
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": uuid::Uuid::new_v4().to_string(),
        "stage": "ResponseComplete",
        "requestURI": uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        "verb": verb(&method, object.as_ref(), uri.query().unwrap_or("")),
        "user": match identity {
            Some(i) => json!({"username": i.user, "groups": i.groups}),
            None => json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]}),
        },
        "sourceIPs": source.into_iter().collect::<Vec<_>>(),
        "responseStatus": {"metadata": {}, "code": status.as_u16()},
        "requestReceivedTimestamp": format(received),
        "stageTimestamp": format(jiff::Timestamp::now()),
        "annotations": {
            "authorization.k8s.io/decision": if status == http::StatusCode::FORBIDDEN { "forbid" } else { "allow" },
        },
    });
    if let Some(agent) = user_agent {
        event["userAgent"] = agent.into();
    }
    if let Some(o) = object {
        let mut r = json!({"resource": o.resource, "apiVersion": o.api_version});
        if !o.api_group.is_empty() {
            r["apiGroup"] = o.api_group.into();
        }
        if let Some(ns) = o.namespace {
            r["namespace"] = ns.into();
        }
        if let Some(name) = o.name {
            r["name"] = name.into();
        }
        if let Some(sub) = o.subresource {
            r["subresource"] = sub.into();
        }
        event["objectRef"] = r;
    }
    if status == http::StatusCode::UNAUTHORIZED {
        event["annotations"] = json!({});
    }
    log.record(&event);
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apiserver::testing::{ADMIN_TOKEN, TestApi};
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn paths_name_their_object_and_methods_their_verb() {
        let o = object_ref("/api/v1/namespaces/a/pods/web/log").unwrap();
        assert_eq!(
            (
                o.api_group.as_str(),
                o.resource.as_str(),
                o.namespace.as_deref(),
                o.name.as_deref(),
                o.subresource.as_deref()
            ),
            ("", "pods", Some("a"), Some("web"), Some("log"))
        );
        let o = object_ref("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (o.api_group.as_str(), o.resource.as_str(), o.namespace),
            ("apps", "deployments", None)
        );
        let o = object_ref("/api/v1/namespaces/a").unwrap();
        assert_eq!(
            (o.resource.as_str(), o.name.as_deref(), o.namespace),
            ("namespaces", Some("a"), None)
        );
        let o = object_ref("/api/v1/namespaces/a/status").unwrap();
        assert_eq!(
            (o.name.as_deref(), o.subresource.as_deref()),
            (Some("a"), Some("status"))
        );
        assert!(object_ref("/healthz").is_none());
        let pods = object_ref("/api/v1/namespaces/a/pods");
        let pod = object_ref("/api/v1/namespaces/a/pods/x");
        assert_eq!(verb(&Method::GET, pods.as_ref(), ""), "list");
        assert_eq!(verb(&Method::GET, pods.as_ref(), "watch=1"), "watch");
        assert_eq!(verb(&Method::GET, pod.as_ref(), ""), "get");
        assert_eq!(verb(&Method::DELETE, pods.as_ref(), ""), "deletecollection");
        assert_eq!(verb(&Method::DELETE, pod.as_ref(), ""), "delete");
        assert_eq!(verb(&Method::POST, None, ""), "post");
    }

    #[test]
    fn the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = Rotating::open(AuditConfig {
            path: path.clone(),
            max_size_bytes: 10,
            max_backups: 2,
        })
        .unwrap();
        for line in [b"aaaaaa\n", b"bbbbbb\n", b"cccccc\n", b"dddddd\n"] {
            f.write(line).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"dddddd\n");
        assert_eq!(
            std::fs::read(dir.path().join("audit.log.1")).unwrap(),
            b"cccccc\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("audit.log.2")).unwrap(),
            b"bbbbbb\n"
        );
        assert!(!dir.path().join("audit.log.3").exists());
    }

    /// A create, a refused request and a delete, each with who, what, the answer and
    /// when; reads are not recorded.
    #[tokio::test]
    async fn creates_denials_and_deletes_are_recorded_with_their_fields() {
        let api = TestApi::new().await;
        api.add_token(
            "jane-token",
            Identity {
                user: "jane".into(),
                groups: vec!["system:authenticated".into()],
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(AuditConfig::new(&path)).unwrap();
        let router = api
            .router
            .clone()
            .layer(axum::middleware::from_fn_with_state(log, record))
            .layer(axum::Extension(ConnectInfo(SocketAddr::from((
                [127, 0, 0, 9],
                40000,
            )))));
        let send = |token: &str, method: &str, uri: &str, body: Option<Value>| {
            let req = http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("user-agent", "audit-test/1.0")
                .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
                .unwrap();
            router.clone().oneshot(req)
        };
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}});
        let r = send(
            ADMIN_TOKEN,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(cm),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
        let r = send(
            ADMIN_TOKEN,
            "GET",
            "/api/v1/namespaces/default/configmaps/cfg",
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let r = send(
            "jane-token",
            "DELETE",
            "/api/v1/namespaces/default/configmaps/cfg",
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 403);
        let r = send(
            ADMIN_TOKEN,
            "DELETE",
            "/api/v1/namespaces/default/configmaps/cfg",
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let r = send("no-such-token", "GET", "/api/v1/pods", None)
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let lines = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.lines().count() >= 4 {
                    return text;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        let events: Vec<Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 4, "{lines}");
        let created = &events[0];
        assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(created["level"], "Metadata");
        assert_eq!(created["verb"], "create");
        assert_eq!(created["user"]["username"], "admin");
        assert_eq!(
            created["objectRef"],
            json!({"resource": "configmaps", "apiVersion": "v1", "namespace": "default"})
        );
        assert_eq!(created["responseStatus"]["code"], 201);
        assert_eq!(created["sourceIPs"], json!(["127.0.0.9"]));
        assert_eq!(created["userAgent"], "audit-test/1.0");
        assert!(
            created["requestReceivedTimestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        let denied = &events[1];
        assert_eq!(
            (denied["verb"].as_str(), denied["user"]["username"].as_str()),
            (Some("delete"), Some("jane"))
        );
        assert_eq!(denied["responseStatus"]["code"], 403);
        assert_eq!(
            denied["annotations"]["authorization.k8s.io/decision"],
            "forbid"
        );
        assert_eq!(denied["objectRef"]["name"], "cfg");
        let deleted = &events[2];
        assert_eq!(
            (
                deleted["verb"].as_str(),
                deleted["responseStatus"]["code"].as_u64()
            ),
            (Some("delete"), Some(200))
        );
        let unauthenticated = &events[3];
        assert_eq!(unauthenticated["responseStatus"]["code"], 401);
        assert_eq!(unauthenticated["user"]["username"], "system:anonymous");
    }
}
