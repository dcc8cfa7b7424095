//! CustomResourceDefinitions: the kinds table grows at runtime.
//!
//! Built-ins and custom resources go through the same registry. The built-in rows are
//! static ([`crate::api::kinds::KINDS`]); every served version of a definition whose names
//! are accepted adds one more row ([`rows_of`]), whose strategy is the one generic
//! [`CustomResource`] strategy, driven by that version's schema. [`Kinds`] is the set a
//! server serves: the static rows plus the rows of the stored definitions, followed by a
//! watch on the definitions ([`crate::apiserver::followed`]), and read by dispatch,
//! discovery, the OpenAPI documents and the authorizer alike.
//!
//! Rows are `&'static` like the built-in ones, so that every layer keeps taking
//! `&'static ResourceKind`: a definition's rows are built once per distinct spec and
//! kept for the life of the process (a definition changed a thousand times holds a
//! thousand small rows; definitions change rarely).
//!
//! The parts: [`definition`], the definition itself (validation, defaults, names,
//! conditions); [`schema`], structural schemas (pruning, defaults, validation);
//! [`columns`], `additionalPrinterColumns`.

pub mod columns;
pub mod definition;
pub mod schema;

use super::strategies::customresource::CustomResource;
use super::subresources::{STATUS, Subresource};
use crate::api::kinds::{KINDS, ResourceKind};
use crate::api::typed::TypeOps;
use crate::apiserver::AppState;
use crate::apiserver::followed::Followed;
use crate::apiserver::scale::{SCALE, ScalePaths};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// The group and resource definitions are served as.
pub const GROUP: &str = "apiextensions.k8s.io";
pub const RESOURCE: &str = "customresourcedefinitions";

/// What the stored definitions add.
#[derive(Debug, Default)]
pub struct Custom {
    /// Every stored definition.
    pub definitions: Vec<Value>,
    /// The rows of the definitions whose names are accepted, one per served version.
    pub rows: Vec<&'static ResourceKind>,
}

/// The kinds a server serves: the built-ins and what the stored definitions add.
pub struct Kinds {
    custom: Followed<Custom>,
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kinds").finish_non_exhaustive()
    }
}

impl Default for Kinds {
    fn default() -> Self {
        Kinds {
            custom: Followed::new(
                crate::store::collection_prefix(GROUP, RESOURCE, None),
                Arc::new(build),
            ),
        }
    }
}

impl Kinds {
    /// What the definitions add, as last seen (the first call lists).
    pub async fn custom(&self, state: &AppState) -> Arc<Custom> {
        match self.custom.get(&state.store, &state.shutdown).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing CustomResourceDefinitions");
                Arc::default()
            }
        }
    }

    /// What the definitions add as stored now: for a reader that must see a definition
    /// written a moment ago.
    pub async fn fresh(&self, state: &AppState) -> Arc<Custom> {
        match self.custom.refresh(&state.store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing CustomResourceDefinitions");
                self.custom(state).await
            }
        }
    }

    /// Whether `group`/`resource` is a kind served (built-in, or as last seen of the
    /// definitions): for metric labels, which name only what exists.
    pub async fn serves(&self, state: &AppState, group: &str, resource: &str) -> bool {
        let known = |k: &&ResourceKind| k.group == group && k.plural == resource;
        KINDS.iter().any(|k| known(&k)) || self.custom(state).await.rows.iter().any(known)
    }

    /// Every kind served, built-ins first, as stored now.
    pub async fn all(&self, state: &AppState) -> Vec<&'static ResourceKind> {
        let custom = self.fresh(state).await;
        KINDS.iter().chain(custom.rows.iter().copied()).collect()
    }
}

/// The snapshot from the stored definitions.
fn build(stored: Vec<(String, Value)>) -> Custom {
    let definitions: Vec<Value> = stored.into_iter().map(|(_, v)| v).collect();
    let builtins: Vec<(&str, &str, &str)> =
        KINDS.iter().map(|k| (k.group, k.plural, k.kind)).collect();
    let rows = definitions
        .iter()
        .filter(|d| definition::names_accepted(d, &definitions, &builtins).is_ok())
        .flat_map(|d| rows_of(d).iter().copied())
        .collect();
    Custom { definitions, rows }
}

/// Rows already built, by the definition's spec.
static INTERNED: LazyLock<Mutex<HashMap<String, &'static [&'static ResourceKind]>>> =
    LazyLock::new(Default::default);

/// The rows of a definition: one per served version.
pub fn rows_of(crd: &Value) -> &'static [&'static ResourceKind] {
    let key = crd.get("spec").map(Value::to_string).unwrap_or_default();
    if let Ok(interned) = INTERNED.lock()
        && let Some(rows) = interned.get(&key)
    {
        return rows;
    }
    let rows: &'static [&'static ResourceKind] = Box::leak(build_rows(crd).into_boxed_slice());
    if let Ok(mut interned) = INTERNED.lock() {
        interned.insert(key, rows);
    }
    rows
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_strings(v: Option<&Value>) -> &'static [&'static str] {
    let list: Vec<&'static str> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
        .unwrap_or_default();
    Box::leak(list.into_boxed_slice())
}

fn build_rows(crd: &Value) -> Vec<&'static ResourceKind> {
    let at = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let group = leak(at("/spec/group"));
    let names = crd.pointer("/spec/names");
    let kind = leak(at("/spec/names/kind"));
    let plural = leak(at("/spec/names/plural"));
    let singular = leak(at("/spec/names/singular"));
    let short_names = leak_strings(names.and_then(|n| n.get("shortNames")));
    let categories = leak_strings(names.and_then(|n| n.get("categories")));
    let namespaced = at("/spec/scope") != "Cluster";
    let mut versions: Vec<&Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| vs.iter().collect())
        .unwrap_or_default();
    // In the order discovery ranks them: the first is the preferred version.
    let name = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    versions.sort_by(|a, b| definition::version_order(&name(a), &name(b)));
    let storage = definition::storage_version(crd);
    versions
        .into_iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .map(|v| {
            let version = leak(v.get("name").and_then(Value::as_str).unwrap_or_default());
            let scale = scale_paths(v);
            let status = v.pointer("/subresources/status").is_some();
            let subresources: &'static [&'static Subresource] = match (status, scale.is_some()) {
                (true, true) => STATUS_AND_SCALE,
                (true, false) => STATUS_ONLY,
                (false, true) => SCALE_ONLY,
                (false, false) => &[],
            };
            let strategy = Box::leak(Box::new(CustomResource {
                api_version: format!("{group}/{version}"),
                storage_api_version: format!("{group}/{}", storage.as_deref().unwrap_or(version)),
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                subresources,
                scale,
                columns: columns::columns_of(v),
                categories,
            }));
            &*Box::leak(Box::new(ResourceKind {
                group,
                version,
                kind,
                plural,
                singular,
                namespaced,
                short_names,
                in_all: categories.contains(&"all"),
                strategy,
                typed: TypeOps::untyped(),
            }))
        })
        .collect()
}

static STATUS_AND_SCALE: &[&Subresource] = &[&STATUS, &SCALE];
static STATUS_ONLY: &[&Subresource] = &[&STATUS];
static SCALE_ONLY: &[&Subresource] = &[&SCALE];

fn scale_paths(version: &Value) -> Option<ScalePaths> {
    let scale = version.pointer("/subresources/scale")?;
    let path = |f: &str| {
        scale
            .get(f)
            .and_then(Value::as_str)
            .and_then(definition::json_pointer)
    };
    Some(ScalePaths {
        spec_replicas: path("specReplicasPath")?,
        status_replicas: path("statusReplicasPath").unwrap_or_else(|| "/status/replicas".into()),
        label_selector: path("labelSelectorPath"),
    })
}
