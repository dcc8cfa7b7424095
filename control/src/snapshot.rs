//! Snapshots of the whole cluster state: `wharf snapshot save|restore|ls` and the
//! scheduled ones of `wharf control --snapshot-interval`.
//!
//! A snapshot is every object of the store at one revision (one consistent list of every
//! key, taken through the API server's store, so it is online and works on either
//! backend), with each object's revisions. The file is:
//!
//! ```text
//! wharf-snapshot\n
//! {"version":1,"revision":R,"created":"2026-…Z","objects":N,"length":L,"sha256":"…"}\n
//! L bytes: per object, u32 BE key length, key, u64 BE mod_revision, u64 BE
//!          create_revision, u32 BE value length, value
//! ```
//!
//! [`decode`] checks everything (marker, header, exact length, checksum, every record)
//! before anything is written, so a truncated or corrupt file is refused whole. A restore
//! ([`restore`]) builds a new embedded store in a data dir that has none, with the
//! objects' revisions kept and the store's revision moved far past the snapshot's and
//! everything before marked compacted (as `etcdutl snapshot restore --bump-revision
//! --mark-compacted`): clients that saw later revisions before the restore get 410 on
//! their next watch and list again, so nodes drop pods that no longer exist.

use crate::store::{Revision, Store, StoreError, StoredObject};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The first line of every snapshot file.
pub const MAGIC: &[u8] = b"wharf-snapshot\n";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// How far a restore moves the store's revision past the snapshot's.
pub const REVISION_BUMP: Revision = 1_000_000_000;
/// The API path that answers a snapshot (admin only: a non-resource URL in RBAC).
pub const API_PATH: &str = "/wharf/v1/snapshot";
/// Scheduled snapshot files are named `PREFIX<unix seconds>-r<revision>.snap`.
const FILE_PREFIX: &str = "wharf-snapshot-";
const FILE_SUFFIX: &str = ".snap";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a wharf snapshot (it does not start with \"wharf-snapshot\")")]
    NotASnapshot,
    #[error("corrupt snapshot header: {0}")]
    Header(String),
    #[error("snapshot format version {0} is not supported (this wharf reads version 1)")]
    Version(u32),
    #[error(
        "truncated snapshot: the header says {expected} bytes of objects, the file has {actual}"
    )]
    Truncated { expected: u64, actual: u64 },
    #[error(
        "corrupt snapshot: the checksum does not match (sha256 {actual}, header says {expected})"
    )]
    Checksum { expected: String, actual: String },
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub version: u32,
    pub revision: Revision,
    /// RFC 3339, UTC.
    pub created: String,
    pub objects: u64,
    pub length: u64,
    pub sha256: String,
}

/// A snapshot in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: Revision,
    pub created: jiff::Timestamp,
    pub objects: Vec<StoredObject>,
}

/// Every object of `store` at one revision.
pub async fn take(store: &dyn Store) -> Result<Snapshot, SnapshotError> {
    let listed = store.list("").await?;
    Ok(Snapshot {
        revision: listed.revision,
        created: jiff::Timestamp::now(),
        objects: listed.items,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's bytes.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut body = Vec::new();
    for o in &snapshot.objects {
        let key = o.key.as_bytes();
        body.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(&o.mod_revision.to_be_bytes());
        body.extend_from_slice(&o.create_revision.to_be_bytes());
        body.extend_from_slice(
            &u32::try_from(o.value.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        body.extend_from_slice(&o.value);
    }
    let header = Header {
        version: VERSION,
        revision: snapshot.revision,
        created: snapshot.created.to_string(),
        objects: snapshot.objects.len() as u64,
        length: body.len() as u64,
        sha256: hex(&Sha256::digest(&body)),
    };
    let mut out = MAGIC.to_vec();
    // A header of plain fields always serializes.
    out.extend_from_slice(
        serde_json::to_string(&header)
            .unwrap_or_default()
            .as_bytes(),
    );
    out.push(b'\n');
    out.extend_from_slice(&body);
    out
}

/// Reads and checks the header; answers it and the body.
pub fn decode_header(bytes: &[u8]) -> Result<(Header, &[u8]), SnapshotError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or(SnapshotError::NotASnapshot)?;
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| SnapshotError::Header("no end of header".into()))?;
    let header: Header =
        serde_json::from_slice(&rest[..end]).map_err(|e| SnapshotError::Header(e.to_string()))?;
    if header.version != VERSION {
        return Err(SnapshotError::Version(header.version));
    }
    let body = &rest[end + 1..];
    if body.len() as u64 != header.length {
        return Err(SnapshotError::Truncated {
            expected: header.length,
            actual: body.len() as u64,
        });
    }
    let actual = hex(&Sha256::digest(body));
    if actual != header.sha256 {
        return Err(SnapshotError::Checksum {
            expected: header.sha256,
            actual,
        });
    }
    Ok((header, body))
}

/// Reads and checks a whole snapshot.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let (header, mut body) = decode_header(bytes)?;
    let corrupt = |what: &str| SnapshotError::Corrupt(what.to_string());
    let mut objects = Vec::new();
    fn take_n<'a>(body: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if body.len() < n {
            return None;
        }
        let (head, tail) = body.split_at(n);
        *body = tail;
        Some(head)
    }
    let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as usize;
    let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    while !body.is_empty() {
        let record = (|| {
            let key_len = u32_of(take_n(&mut body, 4)?);
            let key = take_n(&mut body, key_len)?;
            let mod_revision = u64_of(take_n(&mut body, 8)?);
            let create_revision = u64_of(take_n(&mut body, 8)?);
            let value_len = u32_of(take_n(&mut body, 4)?);
            let value = take_n(&mut body, value_len)?;
            Some((key, mod_revision, create_revision, value))
        })()
        .ok_or_else(|| corrupt("an object record runs past the end"))?;
        let (key, mod_revision, create_revision, value) = record;
        let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt("a key is not UTF-8"))?;
        if mod_revision > header.revision || create_revision > mod_revision {
            return Err(corrupt(&format!("{key}: revisions out of order")));
        }
        objects.push(StoredObject {
            key,
            value: Bytes::copy_from_slice(value),
            mod_revision,
            create_revision,
        });
    }
    if objects.len() as u64 != header.objects {
        return Err(corrupt(&format!(
            "the header says {} objects, the file holds {}",
            header.objects,
            objects.len()
        )));
    }
    let created = header
        .created
        .parse()
        .map_err(|e| SnapshotError::Header(format!("created: {e}")))?;
    Ok(Snapshot {
        revision: header.revision,
        created,
        objects,
    })
}

/// Reads and checks the snapshot file at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|error| SnapshotError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    decode(&bytes)
}

/// Writes `bytes` to `path` (mode 0600, atomically: a crash leaves the old file or none).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    crate::fsutil::write_private(path, bytes).map_err(|error| SnapshotError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// Restores the snapshot file `path` as the embedded store of `data_dir` (which must have
/// none: nothing is overwritten). Events expire `event_ttl` after the restore. Answers
/// the snapshot's header. Blocking.
pub fn restore(path: &Path, data_dir: &Path, event_ttl: Duration) -> Result<Header, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|error| SnapshotError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let snapshot = decode(&bytes)?;
    let (header, _) = decode_header(&bytes)?;
    crate::store::create_restored(
        &data_dir.join("store"),
        &snapshot.objects,
        snapshot.revision.saturating_add(REVISION_BUMP),
        |key| crate::store::migrate::is_event(key).then_some(event_ttl),
        &crate::store::Clock::system(),
    )?;
    Ok(header)
}

/// One snapshot file in a directory, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: PathBuf,
    pub size: u64,
    /// The header if the file checks out, else why not.
    pub header: Result<Header, String>,
}

/// The snapshot files (`*.snap`) of `dir`, oldest first by name, each checked.
pub fn list(dir: &Path) -> Result<Vec<Listed>, SnapshotError> {
    let io = |error| SnapshotError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.extension().is_none_or(|e| e != "snap") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        out.push(Listed {
            size: bytes.len() as u64,
            header: decode_header(&bytes)
                .map(|(h, _)| h)
                .map_err(|e| e.to_string()),
            path,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Scheduled snapshots.

/// `--snapshot-interval`, `--snapshot-retention`, `--snapshot-dir`.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub interval: Duration,
    /// How many scheduled snapshots are kept (the oldest beyond are deleted).
    pub retention: usize,
    pub dir: PathBuf,
}

/// The name of a scheduled snapshot taken at `at` (unix seconds) at `revision`.
pub fn file_name(at: u64, revision: Revision) -> String {
    format!("{FILE_PREFIX}{at:012}-r{revision}{FILE_SUFFIX}")
}

/// When a scheduled snapshot's name says it was taken (unix seconds).
pub fn taken_at(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    rest.split("-r").next()?.parse().ok()
}

/// How long to wait before the next scheduled snapshot, given when the newest was taken
/// (unix seconds; none: take one now) and the time now.
pub fn next_due(newest: Option<u64>, interval: Duration, now: u64) -> Duration {
    match newest {
        None => Duration::ZERO,
        Some(at) => {
            let due = at.saturating_add(interval.as_secs().max(1));
            Duration::from_secs(due.saturating_sub(now))
        }
    }
}

/// Which scheduled snapshots to delete so that `retention` are left: the oldest.
pub fn to_prune(names: &[String], retention: usize) -> Vec<String> {
    let mut scheduled: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| Some((taken_at(n)?, n)))
        .collect();
    scheduled.sort();
    let excess = scheduled.len().saturating_sub(retention.max(1));
    scheduled
        .into_iter()
        .take(excess)
        .map(|(_, n)| n.clone())
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Takes a snapshot of `store` every `interval` into `dir`, keeping `retention`; until
/// `shutdown`. A failed snapshot is logged and tried again at the next interval.
pub async fn run_schedule(
    store: std::sync::Arc<dyn Store>,
    config: ScheduleConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let dir = config.dir.clone();
        let names = tokio::task::spawn_blocking(move || names_in(&dir))
            .await
            .unwrap_or_default();
        let newest = names.iter().filter_map(|n| taken_at(n)).max();
        let wait = next_due(newest, config.interval, unix_now());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match take(store.as_ref()).await {
            Ok(snapshot) => {
                let at = u64::try_from(snapshot.created.as_second()).unwrap_or(0);
                let path = config.dir.join(file_name(at, snapshot.revision));
                let dir = config.dir.clone();
                let retention = config.retention;
                let written = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|error| SnapshotError::Io {
                        path: dir.clone(),
                        error,
                    })?;
                    write(&path, &encode(&snapshot))?;
                    for old in to_prune(&names_in(&dir), retention) {
                        if let Err(e) = std::fs::remove_file(dir.join(&old)) {
                            tracing::warn!(file = old, error = %e, "removing an old snapshot");
                        }
                    }
                    Ok::<_, SnapshotError>(path)
                })
                .await;
                match written {
                    Ok(Ok(path)) => tracing::info!(path = %path.display(), "took a snapshot"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "scheduled snapshot failed"),
                    Err(e) => tracing::warn!(error = %e, "scheduled snapshot failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduled snapshot failed"),
        }
        // Never twice in one second, whatever the clock says.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `GET /wharf/v1/snapshot`: the snapshot file, taken now (RBAC allows it to admins as a
/// non-resource URL).
pub async fn serve(
    axum::extract::State(state): axum::extract::State<crate::apiserver::AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match take(state.store.as_ref()).await {
        Ok(snapshot) => (
            [(http::header::CONTENT_TYPE, "application/octet-stream")],
            encode(&snapshot),
        )
            .into_response(),
        Err(SnapshotError::Store(e)) => {
            let subject = crate::apiserver::error::Subject {
                group: String::new(),
                resource: String::new(),
                name: String::new(),
            };
            crate::apiserver::error::ApiError::from_store(e, subject).into_response()
        }
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            revision: 42,
            created: "2026-12-06T10:00:00Z".parse().unwrap(),
            objects: vec![
                StoredObject {
                    key: "core/configmaps/default/a".into(),
                    value: Bytes::from_static(b"{\"data\":{\"k\":\"v\"}}"),
                    mod_revision: 40,
                    create_revision: 7,
                },
                StoredObject {
                    key: "core/events/default/e".into(),
                    value: Bytes::from_static(b"{}"),
                    mod_revision: 42,
                    create_revision: 42,
                },
            ],
        }
    }

    #[test]
    fn a_snapshot_reads_back_whole_with_its_header() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes).unwrap(), sample());
        let (header, _) = decode_header(&bytes).unwrap();
        assert_eq!(
            (header.revision, header.objects, header.created.as_str()),
            (42, 2, "2026-12-06T10:00:00Z")
        );
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_refused_with_what_is_wrong() {
        let bytes = encode(&sample());
        let err = decode(&bytes[..bytes.len() - 3]).unwrap_err().to_string();
        assert!(
            err.starts_with("truncated snapshot: the header says"),
            "{err}"
        );
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let err = decode(&flipped).unwrap_err().to_string();
        assert!(
            err.starts_with("corrupt snapshot: the checksum does not match"),
            "{err}"
        );
        assert!(matches!(decode(b"hello"), Err(SnapshotError::NotASnapshot)));
        assert!(matches!(
            decode(&bytes[..20]),
            Err(SnapshotError::Header(_))
        ));
    }

    #[test]
    fn restore_builds_a_store_with_the_objects_and_a_bumped_compacted_revision() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("s.snap");
        write(&file, &encode(&sample())).unwrap();
        let data = tmp.path().join("data");
        let header = restore(&file, &data, Duration::from_secs(3600)).unwrap();
        assert_eq!(header.revision, 42);
        // Nothing is overwritten: a second restore into the same data dir is refused.
        let again = restore(&file, &data, Duration::from_secs(3600)).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store =
                crate::store::FjallStore::open(crate::store::StoreConfig::new(data.join("store")))
                    .unwrap();
            let listed = store.list("").await.unwrap();
            assert_eq!(listed.items, sample().objects);
            assert_eq!(listed.revision, 42 + REVISION_BUMP);
            // History before the restore is gone: a watch from an old revision is 410.
            use futures::StreamExt as _;
            let mut w = store.watch("", 41).await.unwrap();
            assert!(matches!(
                w.next().await,
                Some(Err(StoreError::Expired { .. }))
            ));
            // New writes continue after the bumped revision.
            let ev = store
                .create("core/configmaps/default/b", Bytes::from_static(b"{}"))
                .await
                .unwrap();
            assert_eq!(ev.mod_revision, 43 + REVISION_BUMP);
        });
    }

    #[test]
    fn a_corrupt_file_restores_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("s.snap");
        let bytes = encode(&sample());
        write(&file, &bytes[..bytes.len() - 1]).unwrap();
        let data = tmp.path().join("data");
        assert!(restore(&file, &data, Duration::from_secs(1)).is_err());
        assert!(!data.join("store").exists());
    }

    #[test]
    fn the_schedule_takes_one_at_once_then_every_interval() {
        let six_h = Duration::from_secs(6 * 3600);
        assert_eq!(next_due(None, six_h, 1_000), Duration::ZERO);
        assert_eq!(next_due(Some(1_000), six_h, 1_000), six_h);
        assert_eq!(
            next_due(Some(1_000), six_h, 1_000 + 3600),
            Duration::from_secs(5 * 3600)
        );
        // Overdue (the control plane was down): at once.
        assert_eq!(
            next_due(Some(1_000), six_h, 1_000 + 7 * 3600),
            Duration::ZERO
        );
    }

    #[test]
    fn retention_deletes_the_oldest_scheduled_snapshots_only() {
        let names: Vec<String> = [5u64, 1, 3, 2, 4]
            .iter()
            .map(|&t| file_name(t * 100, t))
            .chain(["mine.snap".to_string(), "notes.txt".to_string()])
            .collect();
        assert_eq!(taken_at(&file_name(300, 9)), Some(300));
        let pruned = to_prune(&names, 3);
        assert_eq!(pruned, vec![file_name(100, 1), file_name(200, 2)]);
        assert!(to_prune(&names, 5).is_empty());
    }
}
