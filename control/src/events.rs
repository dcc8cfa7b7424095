//! Recording core/v1 Events, as `kubectl describe` and `wharf get events` show them.
//!
//! Every component that decides something a user would want to see (a pod scheduled, a
//! replica created, a container restarted) records an Event about the object, through the
//! API like any client. Repeats of the same event (same object, reason and message) are
//! folded into one Event whose `count` and `lastTimestamp` move, as the kubelet's and
//! controllers' recorders do, so a crash loop does not flood the store.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What makes two events the same: (object uid, reason, message).
type Repeat = (String, String, String);
/// Where a recorded event is: (namespace, name, count).
type Recorded = (String, String, i32);

/// Records Events for one component (`default-scheduler`, `replicaset-controller`, ...).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<HashMap<Repeat, Recorded>>>,
}

/// The reference to an object that an Event is about.
pub fn reference(kind: &str, api_version: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        kind: Some(kind.to_string()),
        api_version: Some(api_version.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: kube::Client, component: impl Into<String>) -> Self {
        Recorder {
            client,
            component: component.into(),
            host: None,
            seen: Arc::default(),
        }
    }

    /// The node a kubelet-like component runs on (`source.host`).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Records an event; failures are logged, never returned: an event is information,
    /// not part of the decision it reports.
    pub async fn record(
        &self,
        about: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(about, kind, reason, message).await {
            tracing::debug!(component = %self.component, reason, error = %e, "recording an event failed");
        }
    }

    async fn try_record(
        &self,
        about: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        // Events about cluster-scoped objects (nodes) live in `default`.
        let ns = about
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = Timestamp::now();
        let key = (
            about
                .uid
                .clone()
                .unwrap_or_else(|| about.name.clone().unwrap_or_default()),
            reason.to_string(),
            message.to_string(),
        );
        let known = self.seen.lock().ok().and_then(|s| s.get(&key).cloned());
        if let Some((ev_ns, ev_name, count)) = known {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            let events: Api<Event> = Api::namespaced(self.client.clone(), &ev_ns);
            if events
                .patch(&ev_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                if let Ok(mut s) = self.seen.lock() {
                    s.insert(key, (ev_ns, ev_name, count + 1));
                }
                return Ok(());
            }
        }
        let suffix = format!("{:x}", now.as_nanosecond());
        let name = format!(
            "{}.{}",
            about.name.clone().unwrap_or_else(|| "object".into()),
            &suffix[suffix.len().saturating_sub(16)..]
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: about.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.as_str().to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            action: Some(reason.to_string()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        if let Ok(mut s) = self.seen.lock() {
            if s.len() > 10_000 {
                s.clear();
            }
            s.insert(key, (ns, name, 1));
        }
        Ok(())
    }
}
