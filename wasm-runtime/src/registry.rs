//! Images from OCI registries.
//!
//! A reference such as `registry.example.com/team/app:1.0` (or `...@sha256:<hex>`) names an
//! image in a registry that speaks the OCI distribution API. The runtime pulls it with
//! `oci-client`, which answers the registry's `WWW-Authenticate` challenge (anonymous pulls,
//! bearer tokens from the registry's token service, basic auth). Two shapes of image hold a
//! wasm binary, and only those are accepted:
//!
//! - the CNCF wasm artifact: config `application/vnd.wasm.config.v0+json` and one
//!   `application/wasm` layer, which is the `.wasm` itself;
//! - the `wasi/wasm` platform image: an image index with a `wasi/wasm` entry, or a plain image
//!   manifest, whose single layer (tar, or tar+gzip) holds the `.wasm`.
//!
//! Anything else fails the pull with a message naming the media types found and the ones
//! accepted: a node never guesses which layer of a Linux image might be a program.
//!
//! Everything fetched is verified against its digest (manifests against the pin or the
//! registry's `Docker-Content-Digest`, layers against the manifest) before it is kept in the
//! node's content-addressed blob store, and what a tag resolved to is kept in the reference
//! index; so under `IfNotPresent` a restarted pod, or a restarted node, finds its image
//! without the network. Pulls are serialized per reference and blob downloads per digest
//! (see [`KeyedLocks`]), so many pods pulling one new image at once cause one download.
//!
//! Where to connect, and with which credentials, is the node's [`Registries`] configuration
//! (mirrors, TLS roots, plain-HTTP endpoints, credentials), as a node's `registries.yaml`
//! gives it; a pod's `imagePullSecrets` come as [`RegistryCredential`]s with each pull.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference as OciReference};
use serde_json::Value;

use crate::image::Digest;

/// The config media type of a CNCF wasm artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a CNCF wasm artifact: the `.wasm` itself.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What the runtime asks registries for (and all it can read).
const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

const TAR_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];
const TAR_GZIP_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// What the runtime accepts, for error messages.
const ACCEPTED: &str = "accepted: a wasm artifact (config application/vnd.wasm.config.v0+json \
     with one application/wasm layer) or a wasi/wasm image (one layer of \
     application/vnd.oci.image.layer.v1.tar or application/vnd.oci.image.layer.v1.tar+gzip \
     holding the .wasm)";

/// How the `.wasm` sits in its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    /// The layer is the `.wasm`.
    Raw,
    /// A tar archive holding one `.wasm`.
    Tar,
    /// A gzip-compressed tar archive holding one `.wasm`.
    TarGzip,
}

/// What a manifest says to fetch next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// An image index: the `wasi/wasm` platform manifest, by digest.
    Manifest(Digest),
    /// An image manifest: the layer holding the `.wasm`.
    Layer {
        digest: Digest,
        size: u64,
        packing: Packing,
    },
}

fn media_type(v: &Value) -> &str {
    v.get("mediaType").and_then(Value::as_str).unwrap_or("")
}

fn descriptor_digest(v: &Value) -> Result<Digest, String> {
    let d = v.get("digest").and_then(Value::as_str).unwrap_or("");
    if !d.starts_with("sha256:") {
        return Err(format!(
            "unsupported digest {d:?} (only sha256 is supported)"
        ));
    }
    Digest::parse(d).ok_or_else(|| format!("malformed digest {d:?}"))
}

/// Decides what a manifest (or index) leads to. Pure: the manifest's bytes in, the next
/// fetch out, or why the image is not one this runtime runs.
pub(crate) fn next_step(manifest: &[u8]) -> Result<Step, String> {
    let v: Value =
        serde_json::from_slice(manifest).map_err(|e| format!("malformed manifest: {e}"))?;
    let mt = media_type(&v);
    let is_index =
        mt == OCI_INDEX || mt == DOCKER_LIST || (mt.is_empty() && v.get("manifests").is_some());
    if is_index {
        let entries = v
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let platform = |e: &Value| {
            let p = e.get("platform");
            let field = |k| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (field("os"), field("architecture"))
        };
        if let Some(entry) = entries
            .iter()
            .find(|e| platform(e) == ("wasi".to_string(), "wasm".to_string()))
        {
            return descriptor_digest(entry).map(Step::Manifest);
        }
        let found: Vec<String> = entries
            .iter()
            .map(|e| match platform(e) {
                (os, arch) if os.is_empty() && arch.is_empty() => "(none)".to_string(),
                (os, arch) => format!("{os}/{arch}"),
            })
            .collect();
        return Err(format!(
            "image index ({}) has no manifest for platform wasi/wasm (platforms found: {}); {ACCEPTED}",
            if mt.is_empty() { OCI_INDEX } else { mt },
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        ));
    }
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let config_type = v.get("config").map(media_type).unwrap_or("");
    let layer_types: Vec<&str> = layers.iter().map(media_type).collect();
    let unsupported = || {
        format!(
            "unsupported image: manifest {}, config {}, layers [{}]; {ACCEPTED}",
            if mt.is_empty() { OCI_MANIFEST } else { mt },
            if config_type.is_empty() {
                "(none)"
            } else {
                config_type
            },
            layer_types.join(", ")
        )
    };
    if !(mt.is_empty() || mt == OCI_MANIFEST || mt == DOCKER_MANIFEST) {
        return Err(unsupported());
    }
    let layer = |l: &Value, packing| {
        Ok(Step::Layer {
            digest: descriptor_digest(l)?,
            size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
            packing,
        })
    };
    if config_type == WASM_CONFIG_MEDIA_TYPE {
        let wasm: Vec<&Value> = layers
            .iter()
            .filter(|l| media_type(l) == WASM_LAYER_MEDIA_TYPE)
            .collect();
        return match wasm.as_slice() {
            [one] => layer(one, Packing::Raw),
            _ => Err(unsupported()),
        };
    }
    match layers.as_slice() {
        [one] if TAR_LAYERS.contains(&media_type(one)) => layer(one, Packing::Tar),
        [one] if TAR_GZIP_LAYERS.contains(&media_type(one)) => layer(one, Packing::TarGzip),
        _ => Err(unsupported()),
    }
}

/// The `.wasm` inside a tar layer: the one regular file whose name ends in `.wasm`, at most
/// `limit` bytes. Blocking.
pub(crate) fn wasm_from_tar(layer: &[u8], packing: Packing, limit: u64) -> Result<Bytes, String> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match packing {
        Packing::Raw => return Ok(Bytes::copy_from_slice(layer)),
        Packing::Tar => Box::new(layer),
        Packing::TarGzip => Box::new(flate2::read::GzDecoder::new(layer)),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("reading the layer's tar: {e}"))?;
    let mut found: Option<(String, Vec<u8>)> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the layer's tar: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if !name.ends_with(".wasm") {
            continue;
        }
        if let Some((first, _)) = &found {
            return Err(format!(
                "the layer holds more than one .wasm ({first}, {name}); a wasi/wasm image \
                 must hold exactly one"
            ));
        }
        if entry.size() > limit {
            return Err(format!("{name} is larger than the limit of {limit} bytes"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {name} from the layer: {e}"))?;
        found = Some((name, bytes));
    }
    found
        .map(|(_, b)| Bytes::from(b))
        .ok_or_else(|| "the layer's tar holds no .wasm file".to_string())
}

/// A parsed registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryRef {
    pub(crate) oci: OciReference,
}

impl RegistryRef {
    pub(crate) fn parse(reference: &str) -> Result<Self, String> {
        let oci = OciReference::try_from(reference.trim()).map_err(|e| e.to_string())?;
        if oci.digest().is_some_and(|d| !d.starts_with("sha256:")) {
            return Err("only sha256 digests are supported".to_string());
        }
        Ok(Self { oci })
    }

    /// `REGISTRY/REPO`, as an imageID names it.
    pub(crate) fn repository(&self) -> String {
        format!("{}/{}", self.oci.registry(), self.oci.repository())
    }

    /// The image ID of the manifest pulled: `REGISTRY/REPO@sha256:...`.
    pub(crate) fn image_id(&self, manifest: &Digest) -> String {
        format!("{}@{manifest}", self.repository())
    }

    /// The pin, if any.
    pub(crate) fn pin(&self) -> Option<Digest> {
        self.oci.digest().and_then(Digest::parse)
    }

    /// The key of the reference index for a tag: `REGISTRY/REPO:TAG`.
    pub(crate) fn tag_key(&self) -> String {
        format!(
            "{}:{}",
            self.repository(),
            self.oci.tag().unwrap_or("latest")
        )
    }
}

/// A username and password for one registry, from a pod's `imagePullSecrets` or the node's
/// configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The registry host (`host` or `host:port`), as a docker config's `auths` key names it
    /// (a scheme or path there is ignored).
    pub registry: String,
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The host a docker config `auths` key names: `https://index.docker.io/v1/` ->
/// `index.docker.io`, `registry:5000` -> `registry:5000`.
pub fn credential_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn same_registry(a: &str, b: &str) -> bool {
    let docker = |h: &str| {
        if matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
            "docker.io".to_string()
        } else {
            h.to_ascii_lowercase()
        }
    };
    docker(credential_host(a)) == docker(credential_host(b))
}

/// One registry host's settings in the node's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryHost {
    /// Credentials for this host (used when a pod's secrets name none).
    pub username: Option<String>,
    /// The password or token.
    pub password: Option<String>,
    /// Skip verifying the host's certificate (TLS stays on).
    pub insecure_skip_verify: bool,
}

/// The node's registry configuration, in the spirit of a `registries.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries {
    /// Registry host -> endpoints to pull from instead, in order (`https://host[:port]` or
    /// `http://host[:port]`; a plain-HTTP endpoint is the only way a registry is reached
    /// without TLS). The registry itself is tried after its mirrors, unless it is listed as
    /// its own endpoint.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Per-host credentials and TLS settings (the host of a registry or of an endpoint).
    pub hosts: BTreeMap<String, RegistryHost>,
    /// Extra CA certificates (PEM files) trusted besides the system's roots.
    pub ca_files: Vec<PathBuf>,
}

impl Registries {
    /// Where to pull `registry`'s images from: `(host, plain_http)` in order.
    fn endpoints(&self, registry: &str) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = Vec::new();
        let listed = self.mirrors.get(registry).or_else(|| {
            self.mirrors
                .iter()
                .find(|(k, _)| same_registry(k, registry))
                .map(|(_, v)| v)
        });
        for endpoint in listed.into_iter().flatten() {
            let (host, plain) = match endpoint.split_once("://") {
                Some(("http", rest)) => (rest, true),
                Some((_, rest)) => (rest, false),
                None => (endpoint.as_str(), false),
            };
            let host = host.trim_end_matches('/').split('/').next().unwrap_or(host);
            if !host.is_empty() && !out.iter().any(|(h, _)| h == host) {
                out.push((host.to_string(), plain));
            }
        }
        let resolved = if registry == "docker.io" {
            "index.docker.io"
        } else {
            registry
        };
        if !out.iter().any(|(h, _)| h == resolved || h == registry) {
            out.push((resolved.to_string(), false));
        }
        out
    }

    fn host(&self, host: &str) -> Option<&RegistryHost> {
        self.hosts.get(host).or_else(|| {
            self.hosts
                .iter()
                .find(|(k, _)| same_registry(k, host))
                .map(|(_, v)| v)
        })
    }
}

/// The credential to use for `host` (an endpoint): the pod's first secret naming that host,
/// else the node's configured one, else none. A credential goes only to the host it names:
/// a mirror never sees the registry's.
fn auth_for(
    registries: &Registries,
    credentials: &[RegistryCredential],
    host: &str,
) -> RegistryAuth {
    if let Some(c) = credentials
        .iter()
        .find(|c| same_registry(&c.registry, host))
    {
        return RegistryAuth::Basic(c.username.clone(), c.password.clone());
    }
    if let Some(RegistryHost {
        username: Some(u),
        password,
        ..
    }) = registries.host(host)
    {
        return RegistryAuth::Basic(u.clone(), password.clone().unwrap_or_default());
    }
    RegistryAuth::Anonymous
}

/// Why a registry pull failed; the runtime wraps it with the reference.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The registry answered with an error, or could not be reached.
    #[error("{0}")]
    Remote(String),
    /// The content is not an image this runtime runs, or not what its digest says.
    #[error("{0}")]
    Content(String),
    /// Reading or writing the node's blob store failed.
    #[error("{0}")]
    Store(String),
}

/// Async locks by key (a reference, a blob digest): the first to come does the work, the
/// others wait and then find it done. Entries are dropped when no one holds or waits.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A held [`KeyedLocks`] entry.
pub(crate) struct KeyedGuard<'a> {
    owner: &'a KeyedLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        let mut map = self
            .owner
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(self.guard.take());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

impl KeyedLocks {
    pub(crate) async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let mutex = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        KeyedGuard {
            owner: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }
}

/// How many registry clients a node keeps (see [`RegistryClients`]).
const MAX_CLIENTS: usize = 64;

/// The registry clients of a node: one per (endpoint, credential, TLS setting), since a
/// client remembers the credential and tokens of each registry it talked to.
pub(crate) struct RegistryClients {
    pub(crate) config: Registries,
    extra_roots: Vec<Certificate>,
    clients: Mutex<HashMap<String, Client>>,
    read_timeout: Duration,
}

impl std::fmt::Debug for RegistryClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClients")
            .field("config", &self.config)
            .finish()
    }
}

impl RegistryClients {
    /// Reads the configured CA files (blocking).
    pub(crate) fn new(config: Registries, read_timeout: Duration) -> Result<Self, String> {
        // rustls without a bundled provider: the ring one, as the rest of wharf uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut extra_roots = Vec::new();
        for file in &config.ca_files {
            let data = std::fs::read(file)
                .map_err(|e| format!("reading CA file {}: {e}", file.display()))?;
            extra_roots.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        Ok(Self {
            config,
            extra_roots,
            clients: Mutex::new(HashMap::new()),
            read_timeout,
        })
    }

    fn client(&self, host: &str, plain_http: bool, auth: &RegistryAuth) -> Client {
        let skip_verify = self
            .config
            .host(host)
            .is_some_and(|h| h.insecure_skip_verify);
        let auth_key = match auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Basic(u, p) => Digest::of(format!("{u}\0{p}").as_bytes()).hex(),
            RegistryAuth::Bearer(t) => Digest::of(t.as_bytes()).hex(),
        };
        let key = format!("{host}|{plain_http}|{skip_verify}|{auth_key}");
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // One client per credential ever seen would grow without bound as secrets change:
        // past a bound, start over (a client is cheap; its tokens are fetched again).
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&key) {
            clients.clear();
        }
        clients
            .entry(key)
            .or_insert_with(|| {
                Client::new(ClientConfig {
                    protocol: if plain_http {
                        ClientProtocol::HttpsExcept(vec![host.to_string()])
                    } else {
                        ClientProtocol::Https
                    },
                    accept_invalid_certificates: skip_verify,
                    extra_root_certificates: self.extra_roots.clone(),
                    platform_resolver: None,
                    connect_timeout: Some(Duration::from_secs(10)),
                    read_timeout: Some(self.read_timeout),
                    user_agent: "wharf-node",
                    ..ClientConfig::default()
                })
            })
            .clone()
    }
}

/// One endpoint of a pull: the client, the reference rewritten for the endpoint, and the
/// credential.
pub(crate) struct Endpoint {
    client: Client,
    reference: OciReference,
    auth: RegistryAuth,
    host: String,
}

impl RegistryClients {
    /// The endpoints to try for `r`, in order.
    pub(crate) fn endpoints(
        &self,
        r: &RegistryRef,
        credentials: &[RegistryCredential],
    ) -> Vec<Endpoint> {
        let registry = r.oci.registry();
        self.config
            .endpoints(registry)
            .into_iter()
            .map(|(host, plain)| {
                let mut reference = r.oci.clone();
                if host != r.oci.resolve_registry() {
                    reference.set_mirror_registry(host.clone());
                }
                let auth = auth_for(&self.config, credentials, &host);
                Endpoint {
                    client: self.client(&host, plain, &auth),
                    reference,
                    auth,
                    host,
                }
            })
            .collect()
    }
}

fn remote_err(host: &str, e: oci_client::errors::OciDistributionError) -> RegistryError {
    use oci_client::errors::OciDistributionError as E;
    let message = match &e {
        E::RequestError(r) => {
            // reqwest's Display leaves out the cause (refused, timed out, TLS).
            let mut m = r.to_string();
            let mut source = std::error::Error::source(r);
            while let Some(s) = source {
                m.push_str(": ");
                m.push_str(&s.to_string());
                source = s.source();
            }
            m
        }
        // The registry's own words (`manifest unknown`, `unauthorized`), with the request.
        E::RegistryError { envelope, url } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    let code = serde_json::to_value(&e.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    format!("{} ({code})", e.message)
                })
                .collect();
            return RegistryError::Remote(format!("GET {url}: {}", errors.join("; ")));
        }
        E::UnauthorizedError { url } => {
            return RegistryError::Remote(format!(
                "GET {url}: 401 Unauthorized: the registry needs credentials (imagePullSecrets) \
                 or refused the ones given"
            ));
        }
        E::ServerError { code, url, message } => {
            return RegistryError::Remote(format!("GET {url}: HTTP {code}: {}", message.trim()));
        }
        _ => e.to_string(),
    };
    RegistryError::Remote(format!("{host}: {message}"))
}

impl Endpoint {
    /// Fetches the manifest `r` names (by its tag or digest, or by `digest` if given), and
    /// checks it against the digest it was asked by.
    pub(crate) async fn manifest(
        &self,
        digest: Option<&Digest>,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| remote_err(&self.host, e))?;
        let actual = Digest::of(&bytes);
        let expected = digest
            .copied()
            .or_else(|| reference.digest().and_then(Digest::parse));
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(RegistryError::Content(format!(
                "manifest {expected}: the registry sent content whose digest is {actual}"
            )));
        }
        Ok((bytes, actual))
    }

    /// Fetches a blob, at most `limit` bytes, and checks its digest.
    pub(crate) async fn blob(
        &self,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        if size > limit {
            return Err(RegistryError::Content(format!(
                "layer {digest} ({size} bytes) is larger than the limit of {limit} bytes"
            )));
        }
        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, &descriptor)
            .await
            .map_err(|e| remote_err(&self.host, e))?;
        let mut bytes = BytesMut::new();
        let mut verify_failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        return Err(RegistryError::Content(format!(
                            "layer {digest} is larger than the limit of {limit} bytes"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Err(e) => {
                    verify_failed = Some(e);
                    break;
                }
            }
        }
        let bytes = bytes.freeze();
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::Content(format!(
                "layer {digest}: the bytes received have digest {actual}: they do not match \
                 the digest the manifest names"
            )));
        }
        if let Some(e) = verify_failed {
            return Err(RegistryError::Remote(format!(
                "{}: reading layer {digest}: {e}",
                self.host
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_refs() {
        let r = RegistryRef::parse("127.0.0.1:5000/team/app:1.0").unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/team/app");
        assert_eq!(r.tag_key(), "127.0.0.1:5000/team/app:1.0");
        let d = Digest::parse(HEX).unwrap();
        assert_eq!(
            r.image_id(&d),
            format!("127.0.0.1:5000/team/app@sha256:{HEX}")
        );
        let r = RegistryRef::parse(&format!("r.io/app@sha256:{HEX}")).unwrap();
        assert_eq!(r.pin(), Some(d));
        let r = RegistryRef::parse("hello").unwrap();
        assert_eq!(r.repository(), "docker.io/library/hello");
        assert!(RegistryRef::parse("reg.io/app:bad tag").is_err());
    }

    fn desc(mt: &str, hex: &str, size: u64) -> Value {
        serde_json::json!({"mediaType": mt, "digest": format!("sha256:{hex}"), "size": size})
    }

    #[test]
    fn wasm_artifacts_and_wasi_images_are_accepted() {
        let artifact = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc(WASM_CONFIG_MEDIA_TYPE, HEX, 2),
            "layers": [desc(WASM_LAYER_MEDIA_TYPE, HEX, 81234)]});
        assert_eq!(
            next_step(artifact.to_string().as_bytes()).unwrap(),
            Step::Layer {
                digest: Digest::parse(HEX).unwrap(),
                size: 81234,
                packing: Packing::Raw
            }
        );
        // No mediaType field (allowed by the OCI spec), a gzip tar layer.
        let image = serde_json::json!({
            "schemaVersion": 2,
            "config": desc("application/vnd.oci.image.config.v1+json", HEX, 2),
            "layers": [desc(TAR_GZIP_LAYERS[0], HEX, 10)]});
        assert!(matches!(
            next_step(image.to_string().as_bytes()).unwrap(),
            Step::Layer {
                packing: Packing::TarGzip,
                ..
            }
        ));
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 1,
                 "platform": {"os": "unknown", "architecture": "unknown"}},
                {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{HEX}"), "size": 1,
                 "platform": {"os": "wasi", "architecture": "wasm"}}]});
        assert_eq!(
            next_step(index.to_string().as_bytes()).unwrap(),
            Step::Manifest(Digest::parse(HEX).unwrap())
        );
    }

    #[test]
    fn other_images_are_refused_naming_the_media_types() {
        let linux = serde_json::json!({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": desc("application/vnd.docker.container.image.v1+json", HEX, 2),
            "layers": [desc(TAR_GZIP_LAYERS[1], HEX, 1), desc(TAR_GZIP_LAYERS[1], HEX, 1)]});
        let e = next_step(linux.to_string().as_bytes()).unwrap_err();
        assert!(
            e.contains("config application/vnd.docker.container.image.v1+json"),
            "{e}"
        );
        assert!(e.contains("application/vnd.docker.image.rootfs.diff.tar.gzip, application/vnd.docker.image.rootfs.diff.tar.gzip"), "{e}");
        assert!(e.contains("accepted: a wasm artifact"), "{e}");
        let helm = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.cncf.helm.config.v1+json", HEX, 2),
            "layers": [desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", HEX, 1)]});
        let e = next_step(helm.to_string().as_bytes()).unwrap_err();
        assert!(
            e.contains("application/vnd.cncf.helm.chart.content.v1.tar+gzip"),
            "{e}"
        );
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": format!("sha256:{HEX}"), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}}]});
        let e = next_step(index.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("platforms found: linux/amd64"), "{e}");
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_wasm_is_taken_from_a_tar_or_gzip_layer() {
        let layer = tar_of(&[("etc/x.txt", b"x"), ("app/hello.wasm", b"\0asm")]);
        assert_eq!(
            wasm_from_tar(&layer, Packing::Tar, 100).unwrap().as_ref(),
            b"\0asm"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            wasm_from_tar(&gz, Packing::TarGzip, 100).unwrap().as_ref(),
            b"\0asm"
        );
        assert!(
            wasm_from_tar(&layer, Packing::Tar, 2)
                .unwrap_err()
                .contains("limit")
        );
        let none = tar_of(&[("a.txt", b"x")]);
        assert!(
            wasm_from_tar(&none, Packing::Tar, 100)
                .unwrap_err()
                .contains("no .wasm")
        );
        let two = tar_of(&[("a.wasm", b"x"), ("b.wasm", b"y")]);
        assert!(
            wasm_from_tar(&two, Packing::Tar, 100)
                .unwrap_err()
                .contains("more than one")
        );
    }

    #[test]
    fn endpoints_and_credentials() {
        let mut config = Registries::default();
        config.mirrors.insert(
            "docker.io".into(),
            vec![
                "http://127.0.0.1:5000".into(),
                "https://m.example/v2".into(),
            ],
        );
        config
            .mirrors
            .insert("local:5000".into(), vec!["http://local:5000".into()]);
        config.hosts.insert(
            "m.example".into(),
            RegistryHost {
                username: Some("node".into()),
                password: Some("pw".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            config.endpoints("docker.io"),
            vec![
                ("127.0.0.1:5000".to_string(), true),
                ("m.example".to_string(), false),
                ("index.docker.io".to_string(), false)
            ]
        );
        assert_eq!(
            config.endpoints("local:5000"),
            vec![("local:5000".to_string(), true)]
        );
        assert_eq!(
            config.endpoints("other.io"),
            vec![("other.io".to_string(), false)]
        );
        let pod = vec![RegistryCredential {
            registry: "https://index.docker.io/v1/".into(),
            username: "u".into(),
            password: "p".into(),
        }];
        assert_eq!(
            auth_for(&config, &pod, "index.docker.io"),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(
            auth_for(&config, &[], "m.example"),
            RegistryAuth::Basic("node".into(), "pw".into())
        );
        assert_eq!(
            auth_for(&config, &pod, "127.0.0.1:5000"),
            RegistryAuth::Anonymous
        );
        assert_eq!(auth_for(&config, &[], "other.io"), RegistryAuth::Anonymous);
    }
}
