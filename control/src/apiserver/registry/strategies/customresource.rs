//! Custom resources: the one strategy every kind a CustomResourceDefinition adds shares,
//! driven by what its definition's version says (see [`super::super::custom`]): its
//! structural schema prunes, defaults and validates every write (and defaults every
//! read), `status` and `scale` are offered when the definition asks, `kubectl get`
//! prints its `additionalPrinterColumns`, and strategic merge patches are refused, as
//! Kubernetes refuses them for custom resources. All versions of a definition are one
//! stored collection (conversion `None`): an object is stored at the definition's storage
//! version and reads in the version asked for, `apiVersion` rewritten both ways.

use super::super::Strategy;
use super::super::custom::columns::{self, Column};
use super::super::custom::schema;
use super::super::subresources::Subresource;
use crate::api::validation::FieldError;
use crate::apiserver::scale::ScalePaths;
use jiff::Timestamp;
use serde_json::{Value, json};

/// What one served version of a definition does.
#[derive(Debug)]
pub struct CustomResource {
    /// `GROUP/VERSION` of the row this strategy serves.
    pub api_version: String,
    /// `GROUP/VERSION` of the definition's storage version, which objects are stored at.
    pub storage_api_version: String,
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
    pub subresources: &'static [&'static Subresource],
    pub scale: Option<ScalePaths>,
    pub columns: Vec<Column>,
    pub categories: &'static [&'static str],
}

impl CustomResource {
    fn shown(&self, wide: bool) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(move |c| wide || c.priority == 0)
    }
}

impl Strategy for CustomResource {
    fn subresources(&self) -> &'static [&'static Subresource] {
        self.subresources
    }

    fn has_spec(&self) -> bool {
        true
    }

    /// As Kubernetes counts for custom resources: any change but metadata (and the
    /// status, when it is a subresource) is a new generation.
    fn generation_changed(&self, old: &Value, new: &Value) -> bool {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("apiVersion");
                if self.has_status() {
                    m.remove("status");
                }
            }
            v
        };
        strip(old) != strip(new)
    }

    /// Prunes what the schema does not declare, then fills its defaults.
    fn default(&self, obj: &mut Value) {
        schema::prune(&self.schema, obj);
        schema::default(&self.schema, obj);
    }

    fn prune_unknown(&self, obj: &mut Value) -> Vec<String> {
        schema::prune(&self.schema, obj)
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        errs.extend(schema::validate(&self.schema, obj));
    }

    fn columns(&self, wide: bool) -> Vec<&'static str> {
        std::iter::once("NAME")
            .chain(self.shown(wide).map(|c| c.header))
            .collect()
    }

    fn cells(&self, obj: &Value, wide: bool, now: Timestamp) -> Vec<String> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        std::iter::once(name)
            .chain(self.shown(wide).map(|c| columns::cell(c, obj, now)))
            .collect()
    }

    fn strategic_merge(&self) -> bool {
        false
    }

    fn present(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            map.insert("apiVersion".into(), json!(self.api_version));
        }
        schema::default(&self.schema, obj);
    }

    fn presents(&self) -> bool {
        true
    }

    fn storage_form(&self, obj: &Value) -> Option<Value> {
        if obj.get("apiVersion").and_then(Value::as_str) == Some(self.storage_api_version.as_str())
        {
            return None;
        }
        let mut stored = obj.clone();
        if let Some(map) = stored.as_object_mut() {
            map.insert("apiVersion".into(), json!(self.storage_api_version));
        }
        Some(stored)
    }

    fn openapi_schema(&self) -> Option<&Value> {
        Some(&self.schema)
    }

    fn categories(&self) -> &'static [&'static str] {
        self.categories
    }

    fn scale_paths(&self) -> Option<&ScalePaths> {
        self.scale.as_ref()
    }
}
