//! Shared informers: one watch and one cache of a kind for every controller that reads it.
//!
//! Pods are the objects a cluster has most of, and nearly every controller looks at them:
//! ReplicaSets, Deployments, endpoints, node lifecycle, StatefulSets, Jobs, DaemonSets,
//! disruption budgets, quotas and volumes. Each one watching on its own meant every pod
//! change was encoded, sent and decoded once per controller, and each of the five that
//! cache pods held a copy of every pod: most of the control plane's memory per pod, and
//! much of its CPU per scheduled pod. Like client-go's shared informer factory, the
//! controller manager now watches such a kind once ([`SharedInformer`]): one decode per
//! event, one cache (a kube-runtime [`Store`], so readers keep its API), and every
//! subscriber gets the same `Arc` of each object it is told about.
//!
//! **Order.** A subscriber hears of an object after the cache has it (or no longer has
//! it, for a deletion), as with a reflector in front of a watch; objects of a (re)list
//! are in the cache once the whole list is, as a [`Store`] reports through
//! `wait_until_ready`.
//!
//! **No subscriber holds up another.** Each one has its own unbounded queue of `Arc`s,
//! as client-go's listeners have growing ring buffers: a slow reconciler delays its own
//! triggers, never the cache or the other controllers. A queued event costs a pointer.

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One watch of the kind `K`, its cache, and who is told of its changes. Subscribe
/// everyone, then [`start`](SharedInformer::start) it.
pub struct SharedInformer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    reader: Store<K>,
    subscribers: Vec<mpsc::UnboundedSender<Arc<K>>>,
}

impl<K> SharedInformer<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// An informer of every object `api` lists.
    pub fn new(api: Api<K>) -> Self {
        let writer = reflector::store::Writer::default();
        let reader = writer.as_reader();
        SharedInformer {
            api,
            writer,
            reader,
            subscribers: Vec::new(),
        }
    }

    /// The shared cache: complete once `wait_until_ready` returns.
    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Every object created, changed or deleted from now on, and every object of each
    /// (re)list, told after the cache took the change in. The stream ends when the
    /// informer stops.
    pub fn subscribe(&mut self) -> impl Stream<Item = Arc<K>> + Send + Unpin + 'static {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers.push(tx);
        rx
    }

    /// The cache and a new subscription, for a controller that reads both.
    pub fn feed(&mut self) -> Feed<K> {
        Feed {
            store: self.store(),
            changes: self.subscribe().boxed(),
        }
    }

    /// Watches until `shutdown`, in a task of `tasks`.
    pub fn start(self, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
        tasks.spawn(self.run(shutdown));
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let kind = K::kind(&());
        let stream = watcher(self.api.clone(), watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream.take_until(shutdown.cancelled_owned()));
        while let Some(next) = stream.next().await {
            let event = match next {
                Ok(event) => event,
                Err(e) => {
                    // The stream backs off and lists again by itself.
                    tracing::warn!(%kind, error = %e, "shared informer: watch failed; retrying");
                    continue;
                }
            };
            self.dispatch(event);
        }
    }

    /// Takes `event` in and tells every subscriber still listening.
    fn dispatch(&mut self, event: watcher::Event<K>) {
        if let Some(touched) = self.take_in(event) {
            self.subscribers
                .retain(|s| s.unbounded_send(touched.clone()).is_ok());
        }
    }

    /// Applies `event` to the cache and returns the object to tell subscribers of: for a
    /// change, the cache's own `Arc`, so the object is held once however many queues it
    /// waits in.
    fn take_in(&mut self, event: watcher::Event<K>) -> Option<Arc<K>> {
        self.writer.apply_watcher_event(&event);
        match event {
            watcher::Event::Apply(obj) => {
                let cached = self.reader.get(&ObjectRef::from_obj(&obj));
                Some(cached.unwrap_or_else(|| Arc::new(obj)))
            }
            // A list's objects wait in the writer's buffer until the list is whole.
            watcher::Event::InitApply(obj) | watcher::Event::Delete(obj) => Some(Arc::new(obj)),
            watcher::Event::Init | watcher::Event::InitDone => None,
        }
    }
}

/// What a controller takes from a shared informer: the cache, and its own subscription.
pub struct Feed<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    pub store: Store<K>,
    pub changes: futures::stream::BoxStream<'static, Arc<K>>,
}

impl<K> Feed<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// The changes as a watch-shaped stream (`Result`s that are never errors: the
    /// informer handles those), for streams merged with a controller's own watches.
    pub fn results(self) -> impl Stream<Item = Result<Arc<K>, watcher::Error>> + Send + 'static {
        self.changes.map(Ok)
    }
}

/// The shared informers the controller manager's controllers read from.
pub struct Informers {
    pub pods: SharedInformer<k8s_openapi::api::core::v1::Pod>,
}

impl Informers {
    /// Informers over `client`; subscribe, then [`start`](Informers::start).
    pub fn new(client: &kube::Client) -> Self {
        Informers {
            pods: SharedInformer::new(Api::all(client.clone())),
        }
    }

    /// Starts every informer (after the controllers subscribed).
    pub fn start(self, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
        self.pods.start(shutdown, tasks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    fn pod(name: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn informer() -> SharedInformer<Pod> {
        // The client is never called: these tests feed events by hand.
        let client = crate::apiserver::in_process_client(axum::Router::new());
        SharedInformer::new(Api::all(client))
    }

    #[tokio::test]
    async fn a_change_reaches_every_subscriber_as_the_cached_object() {
        let at = ObjectRef::new("p1").within("default");
        let mut inf = informer();
        let mut a = inf.subscribe();
        let mut b = inf.subscribe();
        let dropped = inf.subscribe();
        drop(dropped);

        inf.dispatch(watcher::Event::Init);
        inf.dispatch(watcher::Event::InitApply(pod("p1", "1")));
        assert!(
            inf.store().get(&at).is_none(),
            "a list is cached when whole"
        );
        let listed = a.next().await.expect("a hears of the listed pod");
        assert_eq!(listed.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(inf.subscribers.len(), 2, "a gone subscriber is let go");
        inf.dispatch(watcher::Event::InitDone);
        assert!(inf.store().get(&at).is_some());
        b.next().await.expect("b hears of the listed pod");

        inf.dispatch(watcher::Event::Apply(pod("p1", "2")));
        let cached = inf.store().get(&at).expect("cached");
        let got_a = a.next().await.expect("a hears");
        let got_b = b.next().await.expect("b hears");
        assert!(
            Arc::ptr_eq(&got_a, &cached),
            "one copy, shared with the cache"
        );
        assert!(Arc::ptr_eq(&got_a, &got_b), "and between subscribers");
        assert_eq!(got_a.metadata.resource_version.as_deref(), Some("2"));

        inf.dispatch(watcher::Event::Delete(pod("p1", "3")));
        assert!(inf.store().get(&at).is_none(), "gone from the cache first");
        let gone = a.next().await.expect("a hears of the deletion");
        assert_eq!(gone.metadata.resource_version.as_deref(), Some("3"));
    }
}
