//! A [`Store`] that times every call to the backend under it, as
//! `etcd_request_duration_seconds{operation,type}` (Kubernetes' name, kept for whatever
//! backend runs: dashboards read it for the store's latency).
//!
//! Why at the seam: it wraps the backend below the watch cache, so it measures what the
//! backend does (fjall or etcd alike) and neither backend knows about metrics. `type` is
//! the resource of the key (`pods`, `deployments.apps`), as Kubernetes labels it; a txn
//! over several resources is counted once, under its first key's.

use super::{ListResult, Revision, Store, StoreError, StoredObject, WatchStream, Write};
use crate::metrics::{StoreLabels, StoreMetrics};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Instant;

/// Times the calls to `inner`.
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, metrics: StoreMetrics) -> Metered {
        Metered { inner, metrics }
    }

    fn observe(&self, operation: &str, key: &str, started: Instant) {
        self.metrics
            .durations
            .get_or_create(&StoreLabels {
                operation: operation.into(),
                r#type: resource_of_key(key),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The resource a key or prefix is about, as Kubernetes names it in metrics: `pods` for
/// the core group, `deployments.apps` for others; empty for a prefix above resources.
pub fn resource_of_key(key: &str) -> String {
    let mut parts = key.split('/');
    match (parts.next(), parts.next()) {
        (Some(group), Some(resource)) if !resource.is_empty() => {
            if group == "core" {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            }
        }
        _ => String::new(),
    }
}

/// What a txn is called: the one write it holds, or `txn`.
fn txn_operation(writes: &[Write]) -> &'static str {
    match writes {
        [Write::Create { .. }] => "create",
        [Write::Update { .. }] => "update",
        [Write::Delete { .. }] => "delete",
        _ => "txn",
    }
}

impl Store for Metered {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<StoredObject>, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.get(key).await;
            self.observe("get", key, started);
            r
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.list(prefix).await;
            self.observe("list", prefix, started);
            r
        })
    }

    fn txn<'a>(
        &'a self,
        writes: Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Arc<super::Event>>, StoreError>> {
        Box::pin(async move {
            let operation = txn_operation(&writes);
            let key = writes
                .first()
                .map(|w| w.key().to_owned())
                .unwrap_or_default();
            let started = Instant::now();
            let r = self.inner.txn(writes).await;
            self.observe(operation, &key, started);
            r
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.watch(prefix, after).await;
            self.observe("watch", prefix, started);
            r
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.inner.revision().await;
            self.observe("revision", "", started);
            r
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{FjallStore, StoreConfig};

    #[test]
    fn keys_name_their_resource_as_kubernetes_does() {
        assert_eq!(resource_of_key("core/pods/default/web"), "pods");
        assert_eq!(
            resource_of_key("apps/deployments/default/web"),
            "deployments.apps"
        );
        assert_eq!(resource_of_key("core/pods/"), "pods");
        assert_eq!(resource_of_key(""), "");
    }

    #[tokio::test]
    async fn every_backend_call_is_timed_under_its_operation() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FjallStore::open(StoreConfig::new(dir.path())).unwrap();
        let metrics = StoreMetrics::default();
        let store = Metered::new(Arc::new(backend), metrics.clone());
        let limit = std::time::Duration::from_secs(10);
        tokio::time::timeout(limit, store.create("core/pods/default/a", "{}".into()))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(limit, store.get("core/pods/default/a"))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(limit, store.list("apps/deployments/"))
            .await
            .unwrap()
            .unwrap();
        let count = |operation: &str, ty: &str| {
            let h = metrics.durations.get_or_create(&StoreLabels {
                operation: operation.into(),
                r#type: ty.into(),
            });
            let mut text = String::new();
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register("h", "h", h.clone());
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text.lines()
                .find(|l| l.starts_with("h_count"))
                .and_then(|l| l.split(' ').nth(1))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert_eq!(count("create", "pods"), "1");
        assert_eq!(count("get", "pods"), "1");
        assert_eq!(count("list", "deployments.apps"), "1");
        assert_eq!(count("delete", "pods"), "0");
    }
}
