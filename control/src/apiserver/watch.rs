//! `?watch=true`: a stream of `{"type","object"}` lines, one per event, flushed per event.
//!
//! The stream is the store's watch (in revision order, no gaps, no duplicates) passed
//! through the request's selectors. Selectors are applied to both the new and the previous
//! state of each object, as kube-apiserver does: an object that starts matching arrives as
//! ADDED, one that stops matching as DELETED, so a client's cache built from the stream
//! always equals a fresh filtered list.
//!
//! A watch ends only when the client goes away, `timeoutSeconds` passes, or the server
//! shuts down; a start revision older than the store's log answers a single ERROR event
//! carrying a 410 `Status`, inside a 200 response, which is what clients expect.

use super::AppState;
use super::error::ApiError;
use super::objects::{decode, decode_at, without_managed_fields};
use super::request::Target;
use super::resources::{Filter, Query, list_prefix};
use super::table::{Output, partial_metadata, shape_object, strip_managed_fields};
use crate::api::kinds::ResourceKind;
use crate::store::{Event, EventKind};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One line of the stream, and whether it is the last.
struct Line(Bytes, bool);

fn line<T: serde::Serialize + ?Sized>(kind: &str, object: &T) -> Bytes {
    // Written around the object rather than through `json!`, which would copy the whole
    // object into a new value first (once per event, for every pod event).
    #[derive(serde::Serialize)]
    struct WatchLine<'a, T: ?Sized> {
        #[serde(rename = "type")]
        ty: &'a str,
        object: &'a T,
    }
    let mut v = serde_json::to_vec(&WatchLine { ty: kind, object }).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: &ResourceKind, revision: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

fn error_line(err: &ApiError) -> Bytes {
    line("ERROR", &err.status())
}

/// An event's JSON, parsed once for every watcher (kept in the event's [`Memo`]), and its
/// watch lines, encoded once per event type for every watcher that wants plain objects.
///
/// [`Memo`]: crate::store::Memo
pub struct Decoded {
    /// The object the event carries, with its resourceVersion stamped in.
    object: Value,
    /// The object before the write, for selector transitions.
    prev: Option<Value>,
    /// `ADDED`, `MODIFIED`, `DELETED` lines of `object`, made on first use.
    lines: [OnceLock<Bytes>; 3],
    /// The same lines of `object` as a `PartialObjectMetadata` (for metadata watchers).
    metadata_lines: [OnceLock<Bytes>; 3],
    /// The same lines without `metadata.managedFields` (the control plane's informers).
    lean_lines: [OnceLock<Bytes>; 3],
    /// The metadata lines without `managedFields` (the control plane's metadata watches).
    lean_metadata_lines: [OnceLock<Bytes>; 3],
}

const EVENT_TYPES: [&str; 3] = ["ADDED", "MODIFIED", "DELETED"];

impl Decoded {
    fn of(event: &Event) -> Result<Decoded, String> {
        let (object, prev) = match event.kind {
            EventKind::Put => (
                decode(&event.object),
                event.prev.as_ref().map(decode).transpose(),
            ),
            EventKind::Delete => (decode_at(&event.object, event.revision), Ok(None)),
        };
        Ok(Decoded {
            object: object.map_err(|e| e.to_string())?,
            prev: prev.map_err(|e| e.to_string())?,
            lines: Default::default(),
            metadata_lines: Default::default(),
            lean_lines: Default::default(),
            lean_metadata_lines: Default::default(),
        })
    }

    /// The line of `object` as event type `ty` (an index into [`EVENT_TYPES`]).
    fn line(&self, ty: usize) -> Bytes {
        self.lines[ty]
            .get_or_init(|| line(EVENT_TYPES[ty], &self.object))
            .clone()
    }

    /// The line of `object` without its managedFields as event type `ty`.
    fn lean_line(&self, ty: usize) -> Bytes {
        self.lean_lines[ty]
            .get_or_init(|| line(EVENT_TYPES[ty], &without_managed_fields(&self.object)))
            .clone()
    }

    /// The line of `object`'s metadata alone, without managedFields, as event type `ty`.
    fn lean_metadata_line(&self, ty: usize) -> Bytes {
        self.lean_metadata_lines[ty]
            .get_or_init(|| {
                let mut metadata = partial_metadata(&self.object);
                strip_managed_fields(&mut metadata);
                line(EVENT_TYPES[ty], &metadata)
            })
            .clone()
    }

    /// The line of `object`'s metadata alone as event type `ty`.
    fn metadata_line(&self, ty: usize) -> Bytes {
        self.metadata_lines[ty]
            .get_or_init(|| line(EVENT_TYPES[ty], &partial_metadata(&self.object)))
            .clone()
    }
}

/// An event parsed once: shared by every watcher of the event.
pub type Parsed = Arc<Result<Decoded, String>>;

/// An event's parsed JSON, from its memo or parsed now (and memoized for the others).
fn parsed(event: &Event) -> Parsed {
    event
        .memo
        .get_or_init(|| Decoded::of(event))
        // Another consumer memoized something else: parse for this watcher alone.
        .unwrap_or_else(|| Arc::new(Decoded::of(event)))
}

/// What a store event means to a watcher with `filter`: the event type (an index into
/// [`EVENT_TYPES`]) and the parsed event, or nothing. Selectors see both the new and the
/// previous state (see the module docs).
pub fn classify(event: &Event, filter: &Filter) -> Result<Option<(usize, Parsed)>, ApiError> {
    let parsed = parsed(event);
    let d = match &*parsed {
        Ok(d) => d,
        Err(e) => return Err(ApiError::Internal(e.clone())),
    };
    let ty = match event.kind {
        EventKind::Put => {
            let new_matches = filter.matches(&d.object);
            let prev_matches = d.prev.as_ref().is_some_and(|p| filter.matches(p));
            match (prev_matches, new_matches) {
                (true, true) => Some(1),
                (false, true) => Some(0),
                (true, false) => Some(2),
                (false, false) => None,
            }
        }
        EventKind::Delete => filter.matches(&d.object).then_some(2),
    };
    Ok(ty.map(|ty| (ty, parsed.clone())))
}

/// The watch line of a classified event, shaped for `output`.
fn event_line(kind: &ResourceKind, output: Output, ty: usize, parsed: &Parsed) -> Bytes {
    match (&**parsed, output) {
        (Ok(d), Output::Objects) if !kind.strategy.presents() => d.line(ty),
        (Ok(d), Output::Metadata) if !kind.strategy.presents() => d.metadata_line(ty),
        (Ok(d), Output::ObjectsWithoutManagedFields) if !kind.strategy.presents() => {
            d.lean_line(ty)
        }
        (Ok(d), Output::MetadataWithoutManagedFields) if !kind.strategy.presents() => {
            d.lean_metadata_line(ty)
        }
        (Ok(d), output) => {
            let mut object = d.object.clone();
            kind.strategy.present(&mut object);
            line(EVENT_TYPES[ty], &shape_object(kind, output, object))
        }
        (Err(e), _) => error_line(&ApiError::Internal(e.clone())),
    }
}

pub async fn serve(
    state: AppState,
    target: &Target,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let kind = target.kind;
    let filter = Arc::new(Filter::from_query(kind, query)?);
    let prefix = list_prefix(target);
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::BadRequest(format!("timeoutSeconds {t:?} is not a number"))
        })?)),
        None => None,
    };
    let requested =
        match query.get("resourceVersion") {
            None | Some("") | Some("0") => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("resourceVersion {s:?} is not a number"))
            })?),
        };

    // Where the live part starts, and what comes before it.
    let mut initial: Vec<Bytes> = Vec::new();
    let start = match requested {
        Some(rv) if !send_initial => rv,
        _ => {
            let listed = state
                .store
                .list(&prefix)
                .await
                .map_err(|e| ApiError::from_store(e, Default::default()))?;
            for stored in &listed.items {
                let obj = super::registry::store::read(kind, stored)?;
                if filter.matches(&obj) {
                    initial.push(line("ADDED", &shape_object(kind, output, obj)));
                }
            }
            if send_initial && bookmarks {
                initial.push(bookmark(kind, listed.revision, true));
            }
            listed.revision
        }
    };

    // A start revision the store no longer holds arrives as the stream's first item
    // (`Expired`), answered below as an ERROR event with a 410 Status.
    let live = state
        .store
        .watch(&prefix, start)
        .await
        .map_err(|e| ApiError::from_store(e, Default::default()))?;

    let seen = Arc::new(AtomicU64::new(start));
    // `apiserver_watch_events_total`: every event line sent to this watcher.
    let sent = state
        .metrics
        .apiserver
        .watch_events
        .get_or_create(&crate::metrics::WatchEventLabels {
            group: kind.group.into(),
            version: kind.version.into(),
            kind: kind.kind.into(),
        })
        .clone();
    let events = {
        let seen = seen.clone();
        let filter = filter.clone();
        live.filter_map(move |item| {
            let out = match item {
                Ok(event) => {
                    seen.store(event.revision, Ordering::Relaxed);
                    match classify(&event, &filter) {
                        Ok(Some((ty, parsed))) => {
                            sent.inc();
                            Some(Line(event_line(kind, output, ty, &parsed), false))
                        }
                        Ok(None) => None,
                        Err(e) => Some(Line(error_line(&e), true)),
                    }
                }
                Err(e) => Some(Line(
                    error_line(&ApiError::from_store(e, Default::default())),
                    true,
                )),
            };
            futures::future::ready(out)
        })
    };
    let ticks: std::pin::Pin<Box<dyn Stream<Item = Line> + Send>> = if bookmarks {
        let interval = state.config.bookmark_interval;
        let seen = seen.clone();
        Box::pin(
            tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
                tokio::time::Instant::now() + interval,
                interval,
            ))
            .map(move |_| Line(bookmark(kind, seen.load(Ordering::Relaxed), false), false)),
        )
    } else {
        Box::pin(stream::pending())
    };
    let body = stream::iter(initial.into_iter().map(|b| Line(b, false)))
        .chain(stream::select(events, ticks));
    let deadline = async move {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let body = body
        .take_until(state.shutdown.clone().cancelled_owned())
        .take_until(Box::pin(deadline));
    Ok(stream_response(body))
}

/// A chunked response that ends after a line marked last.
fn stream_response(lines: impl Stream<Item = Line> + Send + 'static) -> Response {
    let body = stream::unfold((Box::pin(lines), false), |(mut lines, done)| async move {
        if done {
            return None;
        }
        let Line(bytes, last) = lines.next().await?;
        Some((Ok::<_, Infallible>(bytes), (lines, last)))
    });
    Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
