//! `wharf push FILE.wasm REF`: pushes a `.wasm` to the cluster registry as a CNCF wasm
//! OCI artifact (config `application/vnd.wasm.config.v0+json`, one `application/wasm`
//! layer), and `wharf registry gc`: garbage collection of the registry's files.
//!
//! `REF` is `registry.wharf.local/REPO[:TAG]` (the name manifests use; `REPO[:TAG]` alone
//! means the same), the tag `latest` when none is given. The push goes through the
//! kubeconfig's server and credential, like every other command: the layer in 4 MiB
//! chunks (a blob the registry holds already is not sent again), with progress on stderr
//! when it is a terminal; the image's reference by digest is printed on stdout, for
//! `IMAGE=$(wharf push app.wasm registry.wharf.local/app:1.0)`.

use super::cluster::Cluster;
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use wharf_control::oci::RESERVED_HOST;
use wharf_control::oci::storage::{digest_of, valid_repository, valid_tag};

const CHUNK: usize = 4 << 20;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";
const LAYER_TYPE: &str = "application/wasm";

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The .wasm file (a component or a core module)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// registry.wharf.local/REPO[:TAG]
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Delete manifests no tag names and blobs nothing references, from a control plane's
    /// data dir (run it while nothing pushes: an upload in progress may lose its blobs)
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The control plane's data dir [default: the default data dir]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep manifests no tag names (delete only unreferenced blobs)
    #[arg(long)]
    pub keep_untagged: bool,
}

/// `REPO` and `TAG` of a reference to the cluster registry.
pub fn parse_reference(reference: &str) -> anyhow::Result<(String, String)> {
    let rest = match reference.split_once('/') {
        Some((host, rest)) if host == RESERVED_HOST => rest,
        Some((host, _)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            bail!(
                "{reference:?} names the registry {host:?}: wharf push pushes to the cluster \
                 registry ({RESERVED_HOST}/REPO[:TAG]); push to other registries with their tools"
            )
        }
        _ => reference,
    };
    if rest.contains('@') {
        bail!("{reference:?}: push by tag, not by digest (the digest is printed after the push)");
    }
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (rest, "latest"),
    };
    if !valid_repository(repo) {
        bail!(
            "{reference:?}: invalid repository name {repo:?} (lowercase letters, digits and \
             separators . _ __ -, components joined by /)"
        );
    }
    if !valid_tag(tag) {
        bail!("{reference:?}: invalid tag {tag:?}");
    }
    Ok((repo.to_owned(), tag.to_owned()))
}

/// The artifact's config: wasm, and `wasip2` for a component or `wasip1` for a module.
fn config_json(wasm: &[u8], layer_digest: &str) -> anyhow::Result<Vec<u8>> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        bail!("not a WebAssembly binary (no \\0asm header)");
    }
    let os = if wasm[4..8] == [1, 0, 0, 0] {
        "wasip1"
    } else {
        "wasip2"
    };
    Ok(serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
    }))?)
}

fn manifest_json(config: &[u8], wasm: &[u8], title: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": CONFIG_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": digest_of(config), "size": config.len()},
        "layers": [{"mediaType": LAYER_TYPE, "digest": digest_of(wasm), "size": wasm.len(),
                    "annotations": {"org.opencontainers.image.title": title}}],
    }))?)
}

struct Registry<'a> {
    cluster: &'a Cluster,
    repo: String,
}

impl Registry<'_> {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, http::HeaderMap, Vec<u8>)> {
        let mut req = Request::builder().method(method.clone()).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(kube::client::Body::from(body))?;
        let resp = self
            .cluster
            .client()
            .send(req)
            .await
            .with_context(|| format!("{method} {uri}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .with_context(|| format!("reading the answer to {method} {uri}"))?
            .to_bytes()
            .to_vec();
        Ok((status, headers, body))
    }

    /// Fails with the registry's own error message unless `status` is `want`.
    fn expect(what: &str, want: StatusCode, status: StatusCode, body: &[u8]) -> anyhow::Result<()> {
        if status == want {
            return Ok(());
        }
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let message = parsed["errors"][0]["message"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| parsed["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        Err(anyhow!("{what}: {status}: {message}"))
    }

    async fn has_blob(&self, digest: &str) -> anyhow::Result<bool> {
        let uri = format!("/v2/{}/blobs/{digest}", self.repo);
        let (status, _, body) = self.send(Method::HEAD, &uri, &[], Vec::new()).await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => {
                Self::expect("checking for a blob", StatusCode::OK, other, &body).map(|()| false)
            }
        }
    }

    /// Uploads a blob in chunks, calling `progress(sent)` after each.
    async fn put_blob(&self, bytes: &[u8], mut progress: impl FnMut(usize)) -> anyhow::Result<()> {
        let digest = digest_of(bytes);
        if self.has_blob(&digest).await? {
            progress(bytes.len());
            return Ok(());
        }
        let uri = format!("/v2/{}/blobs/uploads/", self.repo);
        let (status, headers, body) = self.send(Method::POST, &uri, &[], Vec::new()).await?;
        Self::expect("starting an upload", StatusCode::ACCEPTED, status, &body)?;
        let mut location = location(&headers)?;
        let mut sent = 0;
        for chunk in bytes.chunks(CHUNK) {
            let range = format!("{}-{}", sent, sent + chunk.len() - 1);
            let (status, headers, body) = self
                .send(
                    Method::PATCH,
                    &location,
                    &[
                        ("content-type", "application/octet-stream".into()),
                        ("content-range", range),
                    ],
                    chunk.to_vec(),
                )
                .await?;
            Self::expect("uploading a chunk", StatusCode::ACCEPTED, status, &body)?;
            location = location_or(&headers, location);
            sent += chunk.len();
            progress(sent);
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .send(
                Method::PUT,
                &format!("{location}{sep}digest={digest}"),
                &[],
                Vec::new(),
            )
            .await?;
        Self::expect("finishing the upload", StatusCode::CREATED, status, &body)
    }
}

fn location(headers: &http::HeaderMap) -> anyhow::Result<String> {
    headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the registry answered an upload without a Location"))
}

fn location_or(headers: &http::HeaderMap, previous: String) -> String {
    location(headers).unwrap_or(previous)
}

/// `12.3 MB`.
fn megabytes(n: usize) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

pub async fn run(cluster: &Cluster, args: PushArgs) -> anyhow::Result<()> {
    let (repo, tag) = parse_reference(&args.reference)?;
    let wasm = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("reading {}", args.file.display()))?;
    let layer_digest = digest_of(&wasm);
    let config =
        config_json(&wasm, &layer_digest).with_context(|| format!("{}", args.file.display()))?;
    let title = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module.wasm".into());
    let manifest = manifest_json(&config, &wasm, &title)?;
    let registry = Registry {
        cluster,
        repo: repo.clone(),
    };
    registry.put_blob(&config, |_| {}).await?;
    let total = wasm.len();
    let tty = std::io::stderr().is_terminal();
    registry
        .put_blob(&wasm, |sent| {
            if tty {
                let mut err = std::io::stderr();
                let _ = write!(
                    err,
                    "\rpushing {title}: {} / {}",
                    megabytes(sent),
                    megabytes(total)
                );
                let _ = err.flush();
            }
        })
        .await?;
    if tty {
        eprintln!();
    }
    let uri = format!("/v2/{repo}/manifests/{tag}");
    let (status, headers, body) = registry
        .send(
            Method::PUT,
            &uri,
            &[("content-type", MANIFEST_TYPE.into())],
            manifest.clone(),
        )
        .await?;
    Registry::expect("pushing the manifest", StatusCode::CREATED, status, &body)?;
    let digest = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| digest_of(&manifest));
    eprintln!(
        "{RESERVED_HOST}/{repo}:{tag}: pushed {} ({})",
        megabytes(total),
        digest
    );
    println!("{RESERVED_HOST}/{repo}@{digest}");
    Ok(())
}

pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => super::default_data_dir()?,
    };
    let root = data_dir.join("registry");
    if !root.is_dir() {
        bail!(
            "no cluster registry in {} (nothing was pushed there)",
            data_dir.display()
        );
    }
    let storage = wharf_control::oci::storage::Storage::new(&root);
    let keep = args.keep_untagged;
    let report = tokio::task::spawn_blocking(move || {
        storage.gc(keep, std::time::Duration::from_secs(24 * 3600))
    })
    .await?
    .with_context(|| format!("collecting {}", root.display()))?;
    for m in &report.manifests {
        println!("deleted untagged manifest {m}");
    }
    println!(
        "deleted {} blobs ({}), {} stale uploads",
        report.blobs,
        megabytes(usize::try_from(report.bytes).unwrap_or(usize::MAX)),
        report.uploads
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_name_the_cluster_registry() {
        let p = |r: &str| parse_reference(r).map_err(|e| e.to_string());
        assert_eq!(
            p("registry.wharf.local/hello:1.0").unwrap(),
            ("hello".into(), "1.0".into())
        );
        assert_eq!(p("team/app").unwrap(), ("team/app".into(), "latest".into()));
        assert_eq!(p("hello:2").unwrap(), ("hello".into(), "2".into()));
        assert!(
            p("docker.io/library/x:1")
                .unwrap_err()
                .contains("pushes to the cluster registry")
        );
        assert!(
            p("localhost:5000/x:1")
                .unwrap_err()
                .contains("names the registry")
        );
        assert!(
            p("registry.wharf.local/Hello:1")
                .unwrap_err()
                .contains("invalid repository name")
        );
        assert!(
            p("registry.wharf.local/x@sha256:00")
                .unwrap_err()
                .contains("not by digest")
        );
    }

    #[test]
    fn the_artifact_is_a_cncf_wasm_artifact() {
        let module = b"\0asm\x01\0\0\0rest";
        let component = b"\0asm\x0d\0\x01\0rest";
        let c: serde_json::Value =
            serde_json::from_slice(&config_json(module, "sha256:x").unwrap()).unwrap();
        assert_eq!(
            (c["architecture"].as_str(), c["os"].as_str()),
            (Some("wasm"), Some("wasip1"))
        );
        let c: serde_json::Value =
            serde_json::from_slice(&config_json(component, "sha256:x").unwrap()).unwrap();
        assert_eq!(c["os"], "wasip2");
        assert!(config_json(b"#!/bin/sh", "x").is_err());
        let config = config_json(component, &digest_of(component)).unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&manifest_json(&config, component, "app.wasm").unwrap())
                .unwrap();
        assert_eq!(m["config"]["mediaType"], CONFIG_TYPE);
        assert_eq!(m["layers"][0]["mediaType"], LAYER_TYPE);
        assert_eq!(m["layers"][0]["digest"], digest_of(component));
        assert_eq!(
            m["layers"][0]["annotations"]["org.opencontainers.image.title"],
            "app.wasm"
        );
    }
}
