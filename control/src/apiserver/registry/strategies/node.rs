//! Nodes: a pod range no other node holds, assigned when the node registers (node IPAM,
//! [`crate::apiserver::ipam`]), that no update may move once set.

use super::super::store::subject;
use super::super::subresources::Subresource;
use super::super::{Admitted, Strategy};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{FieldError, Reason};
use crate::apiserver::objects::decode;
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError, ipam};
use crate::store::collection_prefix;
use futures::future::BoxFuture;
use serde_json::Value;

pub struct NodeStrategy;

pub static STRATEGY: NodeStrategy = NodeStrategy;

impl Strategy for NodeStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::NODE
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::NODE
    }

    /// A node's `spec.podCIDR` is immutable once set: its pods' addresses come from it,
    /// and another node may hold the range it would move to.
    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let at = |v: &Value| v.pointer("/spec/podCIDR").cloned().unwrap_or(Value::Null);
        let (before, after) = (at(old), at(new));
        let set = before.as_str().is_some_and(|s| !s.is_empty());
        if set && before != after {
            errs.push(FieldError::new(
                "spec.podCIDR",
                Reason::Forbidden,
                None,
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    /// Node IPAM: a registering node gets a pod range no other node holds. The lock is
    /// held until the create is stored, so concurrent registrations see each other.
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            let name = crate::apiserver::objects::meta_str(obj, "name")
                .unwrap_or_default()
                .to_string();
            let guard = ipam::LOCK.lock().await;
            let nodes = state
                .store
                .list(&collection_prefix(
                    target.kind.group,
                    target.kind.plural,
                    None,
                ))
                .await
                .map_err(|e| ApiError::from_store(e, subject(target, &name)))?;
            let existing = nodes
                .items
                .iter()
                .map(decode)
                .collect::<Result<Vec<_>, _>>()?;
            ipam::assign(obj, &existing).map_err(|e| {
                ApiError::invalid(
                    subject(target, &name),
                    target.kind.kind,
                    vec![FieldError::new("spec.podCIDR", Reason::Invalid, None, e)],
                )
            })?;
            Ok(Admitted::holding(Some(guard)))
        })
    }
}
