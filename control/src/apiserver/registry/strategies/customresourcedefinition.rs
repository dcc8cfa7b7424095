//! CustomResourceDefinitions: a definition is checked and defaulted as Kubernetes does
//! ([`definition`]), is created with the finalizer that holds it until the CRD
//! controller has deleted its objects, and gets its `NamesAccepted` and `Established`
//! conditions on create (names taken by an earlier definition are refused there); the
//! controller ([`crate::controllers::crd`]) keeps them current as other definitions
//! come and go. What a definition adds to the kinds table is [`super::super::custom`].

use super::super::custom::definition;
use super::super::subresources::Subresource;
use super::super::{Admitted, Strategy};
use super::STATUS_ONLY;
use crate::api::kinds::KINDS;
use crate::api::printers;
use crate::api::validation::FieldError;
use crate::apiserver::AppState;
use crate::apiserver::error::ApiError;
use crate::apiserver::objects::now_rfc3339;
use crate::apiserver::request::Target;
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct DefinitionStrategy;

/// `kubectl get crd`: the name and when it was created, as Kubernetes prints them.
static PRINTER: printers::Printer = printers::Printer {
    narrow: &["NAME", "CREATED AT"],
    extra: &[],
    wide: None,
    cells: |v, _, _| {
        let at = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default();
        vec![
            at("/metadata/name").to_string(),
            at("/metadata/creationTimestamp").to_string(),
        ]
    },
};

pub static STRATEGY: DefinitionStrategy = DefinitionStrategy;

/// The status a definition has among `others` (the stored ones) now.
pub fn status_among(crd: &Value, others: &[Value]) -> Value {
    let builtins: Vec<(&str, &str, &str)> =
        KINDS.iter().map(|k| (k.group, k.plural, k.kind)).collect();
    let name = crd.pointer("/metadata/name");
    let mut all: Vec<Value> = others
        .iter()
        .filter(|o| o.pointer("/metadata/name") != name)
        .cloned()
        .collect();
    all.push(crd.clone());
    let accepted = definition::names_accepted(crd, &all, &builtins);
    definition::status(crd, &accepted, &now_rfc3339())
}

impl Strategy for DefinitionStrategy {
    fn subresources(&self) -> &'static [&'static Subresource] {
        STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn printer(&self) -> &'static printers::Printer {
        &PRINTER
    }

    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut()
                && !list.iter().any(|f| f == definition::CLEANUP_FINALIZER)
            {
                list.push(json!(definition::CLEANUP_FINALIZER));
            }
        }
    }

    fn default(&self, obj: &mut Value) {
        definition::default(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        definition::validate(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        for (pointer, field) in [("/spec/group", "spec.group"), ("/spec/scope", "spec.scope")] {
            if let (Some(o), Some(n)) = (old.pointer(pointer), new.pointer(pointer))
                && o != n
            {
                errs.push(FieldError::invalid(
                    field,
                    n.as_str().unwrap_or_default(),
                    "field is immutable",
                ));
            }
        }
    }

    /// The conditions, at once: clients wait for `Established` right after creating.
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        _target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            let custom = state.kinds.fresh(state).await;
            let status = status_among(obj, &custom.definitions);
            if let Some(map) = obj.as_object_mut() {
                map.insert("status".into(), status);
            }
            Ok(Admitted::none())
        })
    }
}
