//! Dispatch: a resource URL and method to the kind, verb and subresource they name, and
//! the registry operation that serves them. Every request is authorized
//! ([`super::authz`]) first; the body is read and checked here, the object is then
//! handed to the generic registry ([`super::registry::store`]), which asks the kind's
//! strategy wherever kinds differ. A subresource is served as the one table of
//! subresources ([`super::registry::subresources`]) says, for the kinds whose strategy
//! lists it: `status` by the generic verbs, the others by their own handlers.
//!
//! Nothing here knows a kind by name.

use super::AppState;
use super::auth::Identity;
use super::authz::{self, Verb};
use super::error::ApiError;
use super::fieldcheck::FieldCheck;
use super::objects::{json_response, now_rfc3339};
use super::paging;
use super::registry::store::{
    self, DeleteOptions, MAX_RETRIES, apply_patch, delete_options_from, list_object, subject,
    update_with,
};
use super::registry::subresources::{self, Serve, SubRequest, Subresource};
use super::request::{
    self, JSON, PATCH_TYPES, Target, content_type, read_json_checked, read_limited,
};
use super::table::{self, Output};
use super::watch;
use crate::api::apply;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

// The watch handler still reaches these through here.
pub use super::registry::store::{Filter, list_prefix};
pub use super::request::Query;

pub async fn dispatch(
    state: AppState,
    group: &str,
    version: &str,
    rest: &str,
    req: Request,
) -> Response {
    match handle(state, group, version, rest, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: AppState,
    group: &str,
    version: &str,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let custom = state.kinds.custom(&state).await;
    let target = match request::parse(group, version, rest, &custom.rows) {
        // A definition written a moment ago, before the watch has brought it.
        Err(ApiError::NotFound { .. }) if !group.is_empty() => {
            let custom = state.kinds.fresh(&state).await;
            request::parse(group, version, rest, &custom.rows)?
        }
        other => other?,
    };
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    // Authorization before any work: no body is read and the store is not touched for a
    // request the caller may not make.
    let watch = paging::bool_param(&query, "watch")?;
    if let Some(verb) = Verb::of_target(&parts.method, &target, watch) {
        authz::enforce(&state, parts.extensions.get::<Identity>(), verb, &target).await?;
    }
    if let Some(serve) = target.kind.strategy.computed() {
        return match (&parts.method, target.subresource.as_deref()) {
            (&Method::GET, None) if !watch => {
                let value = serve(&state, &target, &query).await?;
                Ok(super::objects::json_response(StatusCode::OK, &value))
            }
            (m, _) => Err(ApiError::MethodNotAllowed(format!(
                "{m} is not supported on {}: it is computed, only get and list are served",
                target.kind.qualified_plural()
            ))),
        };
    }
    let status_sub = match target.subresource.as_deref() {
        None => false,
        Some(name) => match subresources::find(target.kind.strategy.subresources(), name) {
            Some(Subresource {
                serve: Serve::Status,
                ..
            }) => true,
            Some(Subresource {
                serve: Serve::Handler(serve),
                ..
            }) => {
                return serve(SubRequest {
                    state: &state,
                    target: &target,
                    query: &query,
                    parts: &parts,
                    body,
                })
                .await;
            }
            None => {
                return Err(ApiError::NotFound {
                    subject: subject(&target, target.name.as_deref().unwrap_or("")),
                    message: format!(
                        "the server could not find the requested resource: {} has no subresource {name:?}",
                        target.kind.qualified_plural()
                    ),
                });
            }
        },
    };
    let name = target.name.clone();
    let output = Output::negotiate(&parts.headers, &query)?;
    // The control plane's own informers list and watch without managedFields.
    let collection_output = match parts.extensions.get::<super::WithoutManagedFields>() {
        Some(_) => output.without_managed_fields(),
        None => output,
    };
    match (&parts.method, name) {
        (&Method::GET, None) if watch => {
            watch::serve(state, &target, &query, collection_output).await
        }
        (&Method::GET, None) => list(&state, &target, &query, collection_output).await,
        (&Method::GET, Some(name)) => {
            let obj = store::get_object(&state, &target, &name).await?;
            Ok(json_response(
                StatusCode::OK,
                &table::shape_object(target.kind, output, obj),
            ))
        }
        (&Method::POST, None) if !status_sub => {
            let (mut body, dups) = read_json_checked(body, &parts.headers, &state, JSON).await?;
            if let Some(identity) = parts.extensions.get::<Identity>() {
                super::auth::admit_create(&state, identity, target.kind, &mut body).await?;
            }
            let identity = parts.extensions.get::<Identity>();
            authz::write_guard(&state, identity, &target)
                .await?
                .check(&target, &body)?;
            let fields = FieldCheck::new(&query, dups)?
                .recording(FieldCheck::manager_of(&query, &parts.headers));
            let obj = store::create(&state, &target, &query, body, &fields).await?;
            Ok(fields.respond(json_response(StatusCode::CREATED, &obj)))
        }
        (&Method::PUT, Some(name)) => {
            let (body, dups) = read_json_checked(body, &parts.headers, &state, JSON).await?;
            let identity = parts.extensions.get::<Identity>();
            authz::write_guard(&state, identity, &target)
                .await?
                .check(&target, &body)?;
            let (dry, fields) = (query.dry_run()?, FieldCheck::new(&query, dups)?);
            let fields = fields.recording(FieldCheck::manager_of(&query, &parts.headers));
            let obj = update_with(&state, &target, &name, status_sub, dry, &fields, |_| {
                Ok(body.clone())
            })
            .await?;
            Ok(fields.respond(json_response(StatusCode::OK, &obj)))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = content_type(&parts.headers);
            let (patch, mut dups) =
                read_json_checked(body, &parts.headers, &state, PATCH_TYPES).await?;
            let guard =
                authz::write_guard(&state, parts.extensions.get::<Identity>(), &target).await?;
            if content_type == apply::CONTENT_TYPE {
                return server_side_apply(
                    &state, &target, &name, status_sub, &query, &patch, &guard,
                )
                .await;
            }
            if query.get("force").is_some() {
                return Err(ApiError::BadRequest(
                    "force: Invalid value: may only be set for apply patches (application/apply-patch+yaml)".into(),
                ));
            }
            if content_type == "application/json-patch+json" {
                dups.clear(); // keys of the operations, not of the object
            }
            let (dry, fields) = (query.dry_run()?, FieldCheck::new(&query, dups)?);
            let fields = fields.recording(FieldCheck::manager_of(&query, &parts.headers));
            let obj = update_with(
                &state,
                &target,
                &name,
                status_sub,
                dry,
                &fields,
                |current| {
                    let new = apply_patch(target.kind, &content_type, current, &patch)?;
                    guard.check(&target, &new)?;
                    Ok(new)
                },
            )
            .await?;
            Ok(fields.respond(json_response(StatusCode::OK, &obj)))
        }
        (&Method::DELETE, Some(name)) if !status_sub => {
            let opts = delete_options(body, &parts.headers, &state, &query).await?;
            let obj = store::delete(&state, &target, &name, &opts).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::DELETE, None) => {
            let opts = delete_options(body, &parts.headers, &state, &query).await?;
            delete_collection(&state, &target, &query, &opts).await
        }
        (m, _) => Err(ApiError::MethodNotAllowed(format!(
            "{m} is not supported on {}{}",
            target.kind.qualified_plural(),
            if status_sub { "/status" } else { "" }
        ))),
    }
}

async fn list(
    state: &AppState,
    target: &Target,
    query: &Query,
    output: Output,
) -> Result<Response, ApiError> {
    let filter = Filter::from_query(target.kind, query)?;
    let opts = paging::ListOptions::from_query(query)?;
    let (revision, page) = store::list(state, target, &filter, &opts).await?;
    let mut body = match output {
        Output::Objects => list_object(target.kind, page.items, revision),
        Output::ObjectsWithoutManagedFields => {
            let mut items = page.items;
            items.iter_mut().for_each(table::strip_managed_fields);
            list_object(target.kind, items, revision)
        }
        Output::Metadata => table::partial_metadata_list(&page.items, revision),
        Output::MetadataWithoutManagedFields => {
            let mut list = table::partial_metadata_list(&page.items, revision);
            if let Some(items) = list.get_mut("items").and_then(Value::as_array_mut) {
                items.iter_mut().for_each(table::strip_managed_fields);
            }
            list
        }
        Output::Table { version, include } => table::table(
            target.kind,
            version,
            include,
            &page.items,
            Some(revision.to_string()),
            jiff::Timestamp::now(),
        ),
    };
    if let Some(start) = page.next_start {
        body["metadata"]["continue"] = json!(paging::ContinueToken::new(revision, start).encode());
        // As kube-apiserver: counted only when no selector filters what follows.
        let filtered = ["labelSelector", "fieldSelector"]
            .iter()
            .any(|k| query.get(k).is_some_and(|s| !s.is_empty()));
        if !filtered {
            body["metadata"]["remainingItemCount"] = json!(page.remaining);
        }
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// Server-side apply ([`apply`]): merges the configuration into the live object, or
/// creates the object when there is none (main resource only; `dryRun` honoured by both).
async fn server_side_apply(
    state: &AppState,
    target: &Target,
    name: &str,
    status_sub: bool,
    query: &Query,
    config: &Value,
    guard: &authz::WriteGuard,
) -> Result<Response, ApiError> {
    let now = now_rfc3339();
    let applier = apply::Applier {
        manager: apply::check_manager(query.get("fieldManager"))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        force: query.flag("force"),
        subresource: status_sub.then_some("status"),
        now: &now,
    };
    let dry = query.dry_run()?;
    let fields = FieldCheck::new(query, Vec::new())?;
    let to_api = |e: apply::ApplyError| match e {
        apply::ApplyError::Malformed(m) => ApiError::BadRequest(m),
        apply::ApplyError::Conflict(message) => ApiError::Conflict {
            subject: subject(target, name),
            message,
        },
    };
    // A create that loses the race to another creator applies to what it created.
    for _ in 0..MAX_RETRIES {
        let updated = update_with(state, target, name, status_sub, dry, &fields, |live| {
            let new = apply::apply(target.kind, live, config, &applier).map_err(to_api)?;
            guard.check(target, &new)?;
            Ok(new)
        })
        .await;
        match updated {
            Err(ApiError::NotFound { .. }) if !status_sub => {
                let obj = apply::create(target.kind, name, config, &applier).map_err(to_api)?;
                guard.check(target, &obj)?;
                match store::create(state, target, query, obj, &fields).await {
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    other => {
                        return other
                            .map(|obj| fields.respond(json_response(StatusCode::CREATED, &obj)));
                    }
                }
            }
            other => return other.map(|obj| fields.respond(json_response(StatusCode::OK, &obj))),
        }
    }
    Err(ApiError::conflict(
        subject(target, name),
        "too many concurrent writers; please try again",
    ))
}

async fn delete_options(
    body: Body,
    headers: &HeaderMap,
    state: &AppState,
    query: &Query,
) -> Result<DeleteOptions, ApiError> {
    let bytes = read_limited(body, headers, state.config.max_body_bytes).await?;
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("DeleteOptions is not valid JSON: {e}")))?
    };
    let mut opts = delete_options_from(&body)?;
    if let Some(g) = query.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(g.parse().map_err(|_| {
            ApiError::BadRequest(format!("gracePeriodSeconds {g:?} is not a number"))
        })?);
    }
    if let Some(p) = query.get("propagationPolicy") {
        opts.propagation_policy = Some(p.to_string());
    }
    if query.get("orphanDependents").is_some() && opts.propagation_policy.is_none() {
        opts.propagation_policy = Some(store::orphan_policy(query.flag("orphanDependents")).into());
    }
    if query.dry_run()? {
        opts.dry_run = true;
    }
    store::check_policy(&opts)?;
    Ok(opts)
}

async fn delete_collection(
    state: &AppState,
    target: &Target,
    query: &Query,
    opts: &DeleteOptions,
) -> Result<Response, ApiError> {
    let deleted = store::delete_all(state, target, query, opts).await?;
    let revision = state
        .store
        .revision()
        .await
        .map_err(|e| ApiError::from_store(e, store::subject(target, "")))?;
    Ok(json_response(
        StatusCode::OK,
        &list_object(target.kind, deleted, revision),
    ))
}
