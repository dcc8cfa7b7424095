//! Nodes: a pod range no other node holds, assigned when the node registers (node IPAM,
//! [`crate::apiserver::ipam`]), that no update may move once set.

use super::super::subresources::Subresource;
use super::super::{Admitted, Strategy};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{FieldError, Reason};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError, ipam};
use futures::future::BoxFuture;
use serde_json::Value;

pub struct NodeStrategy;

pub static STRATEGY: NodeStrategy = NodeStrategy;

impl Strategy for NodeStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::NODE
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        static NODE: &[&Subresource] = &[
            &super::super::subresources::STATUS,
            &crate::apiserver::nodecert::CERTIFICATE,
        ];
        NODE
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

    /// Node IPAM: a registering node gets a pod range no other node holds, stored with
    /// the Node in one txn (`ipam`), so concurrent registrations, on any API server, never
    /// share one.
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            ipam::admit_node(state, target, obj).await?;
            Ok(Admitted::none())
        })
    }
}
