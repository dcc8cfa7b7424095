//! Secrets encrypted at rest: a [`Store`] that encrypts the values under given key
//! prefixes (Secrets) before they reach the backend and decrypts what it reads, so neither
//! fjall's files nor etcd ever hold a Secret in clear, and nothing above the store (the
//! watch cache, the registry, the authenticators reading node tokens) changes.
//!
//! A value is stored as `k8s:enc:aesgcm:v1:KEY:` + a 12-byte random nonce + AES-256-GCM
//! ciphertext and tag, the storage key as additional data (a value copied under another
//! key does not decrypt), as Kubernetes' `aesgcm` provider stores them. The key name in
//! each value lets several keys be in use at once: the primary encrypts, every key in the
//! ring decrypts, and a value without the prefix is read as plaintext (Secrets written
//! before encryption was turned on) until a rotation rewrites it.
//!
//! The keys live in `DATA_DIR/pki/encryption-keys.json` (mode 0600), created with one key
//! on first start. Rotation ([`Encryption::rotate`]): a new key becomes primary and is
//! saved, every Secret is rewritten with it (compare-and-swap on its revision; a Secret
//! written meanwhile already used the new key), then the old keys are retired and the
//! file saved again; readers never meet a value whose key is not in the ring. Several
//! control plane members must share the keys file (like the rest of the pki dir).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use super::{Event, ListResult, Revision, Store, StoreError, StoredObject, WatchStream, Write};

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// The key file's shape.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeyFile {
    primary: String,
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeyEntry {
    name: String,
    /// 32 bytes, base64.
    secret: String,
}

/// The keys values are encrypted and decrypted with.
#[derive(Clone)]
pub struct KeyRing {
    primary: String,
    keys: BTreeMap<String, Arc<LessSafeKey>>,
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("reading the encryption keys {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the encryption keys {path} are malformed: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("writing the encryption keys {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating a key: no randomness")]
    Random,
    #[error("rewriting the Secrets: {0}")]
    Store(#[from] StoreError),
}

fn random_key() -> Result<[u8; 32], EncryptionError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| EncryptionError::Random)?;
    Ok(key)
}

impl KeyRing {
    /// A ring of one new key, `key-1`.
    pub fn generate() -> Result<KeyRing, EncryptionError> {
        let mut ring = KeyRing {
            primary: String::new(),
            keys: BTreeMap::new(),
            secrets: BTreeMap::new(),
        };
        ring.add_primary("key-1", random_key()?);
        Ok(ring)
    }

    fn add_primary(&mut self, name: &str, secret: [u8; 32]) {
        let key = UnboundKey::new(&AES_256_GCM, &secret).map(LessSafeKey::new);
        if let Ok(key) = key {
            self.keys.insert(name.to_owned(), Arc::new(key));
            self.secrets.insert(
                name.to_owned(),
                base64::engine::general_purpose::STANDARD.encode(secret),
            );
            self.primary = name.to_owned();
        }
    }

    /// The key that encrypts.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// Every key's name.
    pub fn names(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// Reads the ring from `path`, or creates it there with one new key.
    pub fn load_or_create(path: &Path) -> Result<KeyRing, EncryptionError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::generate()?;
                ring.save(path)?;
                Ok(ring)
            }
            Err(source) => Err(EncryptionError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<KeyRing, EncryptionError> {
        let malformed = |message: String| EncryptionError::Malformed {
            path: path.to_owned(),
            message,
        };
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let mut ring = KeyRing {
            primary: String::new(),
            keys: BTreeMap::new(),
            secrets: BTreeMap::new(),
        };
        for entry in &file.keys {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(&entry.secret)
                .ok()
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
                .ok_or_else(|| {
                    malformed(format!("key {:?} is not 32 bytes of base64", entry.name))
                })?;
            if entry.name.is_empty() || entry.name.contains(':') {
                return Err(malformed(format!("invalid key name {:?}", entry.name)));
            }
            ring.add_primary(&entry.name, secret);
        }
        if !ring.keys.contains_key(&file.primary) {
            return Err(malformed(format!(
                "the primary key {:?} is not listed",
                file.primary
            )));
        }
        ring.primary = file.primary;
        Ok(ring)
    }

    fn save(&self, path: &Path) -> Result<(), EncryptionError> {
        let file = KeyFile {
            primary: self.primary.clone(),
            keys: self
                .secrets
                .iter()
                .map(|(name, secret)| KeyEntry {
                    name: name.clone(),
                    secret: secret.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| EncryptionError::Malformed {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| EncryptionError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        crate::fsutil::write_private(path, &bytes).map_err(|source| EncryptionError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Encrypts `value` stored under `key` with the primary key.
    pub fn encrypt(&self, key: &str, value: &[u8]) -> Result<Bytes, StoreError> {
        let cipher = self
            .keys
            .get(&self.primary)
            .ok_or_else(|| StoreError::Io("no primary encryption key".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Io("no randomness for a nonce".into()))?;
        let mut sealed = value.to_vec();
        cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| StoreError::Io(format!("encrypting {key}")))?;
        let mut out =
            Vec::with_capacity(PREFIX.len() + self.primary.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(self.primary.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Bytes::from(out))
    }

    /// The key a stored value is encrypted with (`None`: plaintext).
    pub fn key_of(value: &[u8]) -> Option<&str> {
        let rest = value.strip_prefix(PREFIX)?;
        let end = rest.iter().position(|&b| b == b':')?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// Decrypts a stored value (plaintext passes through).
    pub fn decrypt(&self, key: &str, value: &Bytes) -> Result<Bytes, StoreError> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.clone());
        };
        let corrupt = |why: &str| StoreError::Io(format!("cannot decrypt {key}: {why}"));
        let end = rest
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| corrupt("no key name"))?;
        let name = std::str::from_utf8(&rest[..end]).map_err(|_| corrupt("bad key name"))?;
        let cipher = self
            .keys
            .get(name)
            .ok_or_else(|| corrupt(&format!("the key {name:?} is not in the keys file")))?;
        let body = &rest[end + 1..];
        if body.len() < NONCE_LEN {
            return Err(corrupt("truncated"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN])
            .map_err(|_| corrupt("bad nonce"))?;
        let mut sealed = body[NONCE_LEN..].to_vec();
        let plain = cipher
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut sealed)
            .map_err(|_| corrupt("authentication failed"))?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

/// The key ring every reader shares: a read takes the current ring by cloning the `Arc`
/// (no key material is copied), and a rotation swaps in a new ring whole.
pub type SharedRing = Arc<RwLock<Arc<KeyRing>>>;

/// The store decorator and its key ring.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    ring: SharedRing,
    prefixes: Vec<String>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, ring: SharedRing, prefixes: Vec<String>) -> Self {
        EncryptedStore {
            inner,
            ring,
            prefixes,
        }
    }

    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn open(&self, ring: &KeyRing, mut object: StoredObject) -> Result<StoredObject, StoreError> {
        if self.covers(&object.key) {
            object.value = ring.decrypt(&object.key, &object.value)?;
        }
        Ok(object)
    }

    fn open_event(&self, ring: &KeyRing, event: &Event) -> Result<Event, StoreError> {
        Ok(Event {
            revision: event.revision,
            kind: event.kind,
            object: self.open(ring, event.object.clone())?,
            prev: event.prev.clone().map(|p| self.open(ring, p)).transpose()?,
            memo: Default::default(),
        })
    }
}

impl Store for EncryptedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        Box::pin(async move {
            let object = self.inner.get(key).await?;
            if !self.covers(key) {
                return Ok(object);
            }
            let ring = self.ring();
            object.map(|o| self.open(&ring, o)).transpose()
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        Box::pin(async move {
            let listed = self.inner.list(prefix).await?;
            if !listed.items.iter().any(|o| self.covers(&o.key)) {
                return Ok(listed);
            }
            let ring = self.ring();
            let items = listed
                .items
                .into_iter()
                .map(|o| self.open(&ring, o))
                .collect::<Result<_, _>>()?;
            Ok(ListResult {
                items,
                revision: listed.revision,
            })
        })
    }

    fn txn<'a>(&'a self, writes: Vec<Write>) -> BoxFuture<'a, Result<Vec<Arc<Event>>, StoreError>> {
        Box::pin(async move {
            if !writes.iter().any(|w| self.covers(w.key())) {
                return self.inner.txn(writes).await;
            }
            let ring = self.ring();
            let mut sealed = Vec::with_capacity(writes.len());
            for write in writes {
                sealed.push(match write {
                    Write::Create { key, value, ttl } if self.covers(&key) => Write::Create {
                        value: ring.encrypt(&key, &value)?,
                        key,
                        ttl,
                    },
                    Write::Update {
                        key,
                        value,
                        expected,
                        ttl,
                    } if self.covers(&key) => Write::Update {
                        value: ring.encrypt(&key, &value)?,
                        key,
                        expected,
                        ttl,
                    },
                    other => other,
                });
            }
            let events = self.inner.txn(sealed).await?;
            events
                .iter()
                .map(|e| self.open_event(&ring, e).map(Arc::new))
                .collect()
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let stream = self.inner.watch(prefix, after).await?;
            let ring = self.ring.clone();
            let prefixes = self.prefixes.clone();
            let this = EncryptedStore {
                inner: self.inner.clone(),
                ring: ring.clone(),
                prefixes,
            };
            let mapped = stream.map(move |item| {
                let event = item?;
                if !this.covers(&event.object.key) {
                    return Ok(event);
                }
                let ring = this.ring();
                this.open_event(&ring, &event).map(Arc::new)
            });
            Ok(Box::pin(mapped) as WatchStream)
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.inner.revision()
    }
}

/// Encryption at rest as the control plane runs it: the ring, its file, the backend
/// below the decorator (to count what is stored how) and the prefixes it covers.
pub struct Encryption {
    path: PathBuf,
    ring: SharedRing,
    backend: Arc<dyn Store>,
    prefixes: Vec<String>,
    /// One rotation at a time.
    rotating: tokio::sync::Mutex<()>,
}

/// What `wharf secrets-encrypt status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionStatus {
    pub enabled: bool,
    pub primary_key: String,
    pub keys: Vec<String>,
    /// Stored Secrets by the key that encrypts them (`plaintext` for none).
    pub secrets_by_key: BTreeMap<String, usize>,
}

impl Encryption {
    /// Loads (or creates) the keys at `path` and wraps `backend`.
    pub fn open(
        path: PathBuf,
        backend: Arc<dyn Store>,
        prefixes: Vec<String>,
    ) -> Result<(Arc<Encryption>, Arc<dyn Store>), EncryptionError> {
        let ring = Arc::new(RwLock::new(Arc::new(KeyRing::load_or_create(&path)?)));
        let store: Arc<dyn Store> = Arc::new(EncryptedStore::new(
            backend.clone(),
            ring.clone(),
            prefixes.clone(),
        ));
        Ok((
            Arc::new(Encryption {
                path,
                ring,
                backend,
                prefixes,
                rotating: Default::default(),
            }),
            store,
        ))
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn status(&self) -> Result<EncryptionStatus, StoreError> {
        let ring = self.ring();
        let mut by_key = BTreeMap::new();
        for prefix in &self.prefixes {
            for o in self.backend.list(prefix).await?.items {
                let key = KeyRing::key_of(&o.value).unwrap_or("plaintext").to_owned();
                *by_key.entry(key).or_insert(0) += 1;
            }
        }
        Ok(EncryptionStatus {
            enabled: true,
            primary_key: ring.primary().to_owned(),
            keys: ring.names(),
            secrets_by_key: by_key,
        })
    }

    /// Adds a new primary key, rewrites every Secret with it through `store` (the store
    /// the API server uses, so its cache and watchers see the writes), and retires the
    /// other keys. Returns the new key's name.
    pub async fn rotate(&self, store: &dyn Store) -> Result<String, EncryptionError> {
        let _one = self.rotating.lock().await;
        let mut ring = KeyRing::clone(&self.ring());
        let next = (1..)
            .map(|n| format!("key-{n}"))
            .find(|n| !ring.keys.contains_key(n))
            .unwrap_or_else(|| "key-x".into());
        ring.add_primary(&next, random_key()?);
        let path = self.path.clone();
        let saved = ring.clone();
        tokio::task::spawn_blocking(move || saved.save(&path))
            .await
            .map_err(|e| EncryptionError::Store(StoreError::Io(e.to_string())))??;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring.clone());
        // Rewrite: a value not yet under the new key is written again (its bytes as they
        // are; the decorator encrypts with the primary).
        for prefix in &self.prefixes {
            loop {
                let mut stale = Vec::new();
                for o in self.backend.list(prefix).await?.items {
                    if KeyRing::key_of(&o.value) != Some(next.as_str()) {
                        stale.push(o.key);
                    }
                }
                if stale.is_empty() {
                    break;
                }
                for key in stale {
                    let Some(current) = store.get(&key).await? else {
                        continue;
                    };
                    match store
                        .update(&key, current.value.clone(), Some(current.mod_revision))
                        .await
                    {
                        Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        // Every Secret is under the new key: retire the others.
        let mut retired = ring.clone();
        retired.keys.retain(|n, _| n == &next);
        retired.secrets.retain(|n, _| n == &next);
        let path = self.path.clone();
        let saved = retired.clone();
        tokio::task::spawn_blocking(move || saved.save(&path))
            .await
            .map_err(|e| EncryptionError::Store(StoreError::Io(e.to_string())))??;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(retired);
        Ok(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{FjallStore, StoreConfig};

    fn fjall(dir: &Path) -> Arc<dyn Store> {
        Arc::new(FjallStore::open(StoreConfig::new(dir.join("store"))).unwrap())
    }

    #[test]
    fn values_round_trip_and_are_bound_to_their_key() {
        let ring = KeyRing::generate().unwrap();
        let sealed = ring.encrypt("core/secrets/ns/a", b"{\"data\":1}").unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key-1:"));
        assert!(!sealed.windows(8).any(|w| w == b"\"data\":1"));
        assert_eq!(
            &ring.decrypt("core/secrets/ns/a", &sealed).unwrap()[..],
            b"{\"data\":1}"
        );
        // Under another key it does not open; plaintext passes through.
        assert!(ring.decrypt("core/secrets/ns/b", &sealed).is_err());
        let plain = Bytes::from_static(b"{}");
        assert_eq!(ring.decrypt("k", &plain).unwrap(), plain);
        // Another ring's key does not open it either.
        assert!(
            KeyRing::generate()
                .unwrap()
                .decrypt("core/secrets/ns/a", &sealed)
                .is_err()
        );
    }

    #[test]
    fn the_keys_file_is_created_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki/encryption-keys.json");
        let ring = KeyRing::load_or_create(&path).unwrap();
        let again = KeyRing::load_or_create(&path).unwrap();
        let sealed = ring.encrypt("k", b"v").unwrap();
        assert_eq!(&again.decrypt("k", &sealed).unwrap()[..], b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"{\"primary\":\"x\",\"keys\":[]}").unwrap();
        let err = KeyRing::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("the primary key \"x\" is not listed"), "{err}");
    }

    #[tokio::test]
    async fn the_backend_holds_ciphertext_readers_get_plaintext_and_rotation_rewrites_all() {
        let dir = tempfile::tempdir().unwrap();
        let backend = fjall(dir.path());
        // Written before encryption: plaintext in the backend.
        backend
            .create("core/secrets/ns/old", Bytes::from_static(b"{\"old\":true}"))
            .await
            .unwrap();
        let (enc, store) = Encryption::open(
            dir.path().join("keys.json"),
            backend.clone(),
            vec!["core/secrets/".into()],
        )
        .unwrap();
        let mut watch = store.watch("", 0).await.unwrap();
        store
            .create("core/secrets/ns/new", Bytes::from_static(b"{\"new\":true}"))
            .await
            .unwrap();
        store
            .create("core/configmaps/ns/c", Bytes::from_static(b"{\"c\":1}"))
            .await
            .unwrap();
        let raw = backend.get("core/secrets/ns/new").await.unwrap().unwrap();
        assert_eq!(KeyRing::key_of(&raw.value), Some("key-1"));
        let raw = backend.get("core/configmaps/ns/c").await.unwrap().unwrap();
        assert_eq!(
            &raw.value[..],
            b"{\"c\":1}",
            "other kinds are not encrypted"
        );
        assert_eq!(
            &store
                .get("core/secrets/ns/new")
                .await
                .unwrap()
                .unwrap()
                .value[..],
            b"{\"new\":true}"
        );
        assert_eq!(
            &store
                .get("core/secrets/ns/old")
                .await
                .unwrap()
                .unwrap()
                .value[..],
            b"{\"old\":true}"
        );
        let listed = store.list("core/secrets/").await.unwrap();
        assert!(listed.items.iter().all(|o| o.value.starts_with(b"{")));
        for _ in 0..3 {
            let e = watch.next().await.unwrap().unwrap();
            assert!(e.object.value.starts_with(b"{"), "{:?}", e.object.value);
        }
        let status = enc.status().await.unwrap();
        assert_eq!(
            status.secrets_by_key,
            BTreeMap::from([("key-1".into(), 1), ("plaintext".into(), 1)])
        );

        let next = enc.rotate(store.as_ref()).await.unwrap();
        assert_eq!(next, "key-2");
        let status = enc.status().await.unwrap();
        assert_eq!(status.keys, ["key-2"]);
        assert_eq!(status.secrets_by_key, BTreeMap::from([("key-2".into(), 2)]));
        assert_eq!(
            &store
                .get("core/secrets/ns/old")
                .await
                .unwrap()
                .unwrap()
                .value[..],
            b"{\"old\":true}"
        );
        // The keys file now holds only key-2, and a fresh ring from it reads everything.
        let ring = KeyRing::load_or_create(&dir.path().join("keys.json")).unwrap();
        assert_eq!(ring.names(), ["key-2"]);
        let raw = backend.get("core/secrets/ns/new").await.unwrap().unwrap();
        assert_eq!(
            &ring.decrypt(&raw.key, &raw.value).unwrap()[..],
            b"{\"new\":true}"
        );
    }
}
