//! The on-disk cache of compiled artifacts.
//!
//! Compiling an image with Cranelift takes tens to hundreds of milliseconds (seconds for a
//! large one, and far more in a debug build); loading a compiled artifact takes a fraction of
//! a millisecond. So every image is compiled once per digest and engine, and the artifact
//! (`Module::serialize` / `Component::serialize`) is kept in
//! `DATA_DIR/compiled/<engine fingerprint>/<digest hex>.cwasm`, reused by every container and
//! across restarts of the node. The fingerprint (see `engine`) changes whenever wasmtime or
//! a setting that affects code generation changes, so stale artifacts are never even looked
//! at.
//!
//! Loading compiled code is trusting it with the process: wasmtime's `deserialize` is
//! `unsafe` because a crafted artifact is arbitrary native code. An artifact is therefore
//! only ever loaded if (1) this cache wrote it, (2) its SHA-256, recorded by us next to it
//! (`.cwasm.sha256`) when we wrote it, matches the bytes read back, and (3) wasmtime accepts
//! its header for this engine. Anything else — a missing or mismatching checksum, a torn
//! write, bit rot, an artifact wasmtime rejects — is deleted and the image recompiled: a
//! corrupt entry costs a compile, never a crash. Both files are written to temporary names
//! and renamed into place, the checksum last.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use crate::image::{Digest, hex, write_atomic};

/// A compiled image.
#[derive(Clone)]
pub(crate) enum Compiled {
    Module(Module),
    Component(Component),
}

/// Why an artifact could not be stored (not fatal: the image still runs from memory).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("serializing the compiled artifact: {0}")]
    Serialize(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `load` found.
pub(crate) enum Lookup {
    Hit(Compiled),
    Miss,
    /// There was an entry but it could not be trusted or loaded; it has been deleted (and
    /// the reason logged).
    Discarded,
}

/// The artifact directory of one engine.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    pub(crate) fn new(data_dir: &Path, fingerprint: &str) -> Self {
        Self {
            dir: data_dir.join("compiled").join(fingerprint),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact and checksum paths for an image.
    pub(crate) fn paths(&self, digest: &Digest) -> (PathBuf, PathBuf) {
        let base = digest.hex();
        (
            self.dir.join(format!("{base}.cwasm")),
            self.dir.join(format!("{base}.cwasm.sha256")),
        )
    }

    /// Loads a verified artifact. Blocking (file I/O and deserialization).
    pub(crate) fn load(&self, engine: &Engine, digest: &Digest) -> Lookup {
        let (artifact, checksum) = self.paths(digest);
        let bytes = match std::fs::read(&artifact) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return self.discard(digest, format!("reading {}: {e}", artifact.display())),
        };
        let recorded = match std::fs::read_to_string(&checksum) {
            Ok(s) => s.trim().to_string(),
            Err(e) => return self.discard(digest, format!("reading {}: {e}", checksum.display())),
        };
        let actual = hex(&Sha256::digest(&bytes));
        if recorded != actual {
            return self.discard(
                digest,
                format!("checksum mismatch (recorded {recorded}, file has {actual})"),
            );
        }
        match deserialize_verified(engine, &bytes) {
            Ok(compiled) => Lookup::Hit(compiled),
            Err(e) => self.discard(digest, format!("wasmtime rejected it: {e:#}")),
        }
    }

    fn discard(&self, digest: &Digest, why: String) -> Lookup {
        let (artifact, checksum) = self.paths(digest);
        tracing::warn!(artifact = %artifact.display(), "discarding compiled artifact: {why}");
        let _ = std::fs::remove_file(&checksum);
        let _ = std::fs::remove_file(&artifact);
        Lookup::Discarded
    }

    /// Serializes and stores an artifact with its checksum. Blocking.
    pub(crate) fn store(&self, compiled: &Compiled, digest: &Digest) -> Result<(), CacheError> {
        let bytes = match compiled {
            Compiled::Module(m) => m.serialize(),
            Compiled::Component(c) => c.serialize(),
        }
        .map_err(|e| CacheError::Serialize(format!("{e:#}")))?;
        let (artifact, checksum) = self.paths(digest);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        crate::private::create_private_dir(&self.dir).map_err(io(&self.dir))?;
        // The checksum goes last: an artifact without one is never loaded.
        let _ = std::fs::remove_file(&checksum);
        write_atomic(&artifact, &bytes).map_err(io(&artifact))?;
        write_atomic(&checksum, hex(&Sha256::digest(&bytes)).as_bytes()).map_err(io(&checksum))?;
        Ok(())
    }
}

/// Deserializes an artifact this cache wrote and whose checksum it has just verified.
///
/// This is the one place in the crate that uses `unsafe` (the crate's lints are
/// `unsafe_code = "deny"` instead of the workspace's `forbid` for this function alone).
#[allow(unsafe_code)]
fn deserialize_verified(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Compiled> {
    match Engine::detect_precompiled(bytes) {
        // SAFETY: `Module::deserialize` / `Component::deserialize` require that the bytes are
        // an artifact produced by wasmtime's own `serialize` (they contain native code that
        // will be executed). The only caller, `ArtifactCache::load`, passes bytes that
        // (a) live under this runtime's private data dir, in a directory named for this
        // exact engine configuration, where only `ArtifactCache::store` writes, from
        // `serialize`; and (b) have just been checked, in memory, against the SHA-256 that
        // `store` recorded when it wrote them, so they are exactly what wasmtime produced
        // (the check is on the same buffer we deserialize, so there is no window for the
        // file to change in between). wasmtime additionally validates the header, version
        // and engine compatibility and returns an error (never UB) on a mismatch. What
        // remains is an attacker able to write both files in the node's data dir, who can
        // already replace the node binary itself.
        Some(Precompiled::Module) => {
            unsafe { Module::deserialize(engine, bytes) }.map(Compiled::Module)
        }
        // SAFETY: as above.
        Some(Precompiled::Component) => {
            unsafe { Component::deserialize(engine, bytes) }.map(Compiled::Component)
        }
        None => Err(wasmtime::format_err!("not a wasmtime artifact")),
    }
}
