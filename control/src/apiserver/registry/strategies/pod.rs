//! Pods: a first status (`Pending`, the QoS class) at creation, the pod spec's defaults
//! and checks, its ServiceAccount (`default` unless named; it must exist), graceful
//! deletion while a node runs the pod, and the subresources a scheduler, `kubectl drain`
//! and `kubectl logs` use.

use super::super::Strategy;
use super::super::store::DeleteOptions;
use super::super::strategy::{Admitted, pod_spec_warnings};
use super::super::subresources::{STATUS, Subresource};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError};
use crate::apiserver::error::ApiError;
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, serviceaccounts};
use crate::apiserver::{binding, eviction, exec, portforward, proxy};
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct PodStrategy;

pub static STRATEGY: PodStrategy = PodStrategy;

/// How long a pod on a node gets to stop when neither the delete nor the pod says.
const DEFAULT_GRACE_SECONDS: i64 = 30;

static SUBRESOURCES: &[&Subresource] = &[
    &STATUS,
    &binding::BINDING,
    &eviction::EVICTION,
    &proxy::LOG,
    &exec::EXEC,
    &crate::apiserver::attach::ATTACH,
    &portforward::PORTFORWARD,
];

impl Strategy for PodStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::POD
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        SUBRESOURCES
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::POD
    }

    fn pod_spec(&self) -> Option<(&'static str, &'static str)> {
        Some(("/spec", "spec"))
    }

    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        let qos = crate::api::qos::qos_class(obj);
        if let Some(map) = obj.as_object_mut() {
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            validation::default_pod_spec(spec);
            default_service_account(spec);
        }
    }

    /// The pod's ServiceAccount ([`serviceaccounts::admit_pod`]), then the hostPath
    /// warnings every kind with a pod spec gets.
    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            serviceaccounts::admit_pod(state, target, obj).await?;
            crate::apiserver::priority::admit_pod(state, target, obj).await?;
            crate::apiserver::limitranger::admit_pod(state, target, obj).await?;
            pod_spec_warnings(self.pod_spec(), state, target, obj, false).await
        })
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match obj.get("spec") {
            Some(s) => validation::validate_pod_spec(s, "spec", errs),
            None => errs.push(FieldError::required("spec", "")),
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.schedulerName",
            "spec.restartPolicy",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ]
    }

    /// A pod bound to a node that has not stopped it gets its grace period (the node
    /// confirms with grace 0); one that never reached a node, or that ended, has nothing
    /// to stop.
    fn grace_period(&self, obj: &Value, opts: &DeleteOptions) -> i64 {
        let on_node = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        let stopped = matches!(phase, "Succeeded" | "Failed");
        if !on_node || stopped {
            return 0;
        }
        opts.grace_period_seconds
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(DEFAULT_GRACE_SECONDS)
            .max(0)
    }
}

/// A pod runs as `default` unless it names a ServiceAccount; the deprecated
/// `serviceAccount` names it too (and is read when only it is given), as Kubernetes keeps
/// them.
fn default_service_account(spec: &mut Value) {
    let named = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let name = named("serviceAccountName")
        .or_else(|| named("serviceAccount"))
        .unwrap_or_else(|| crate::controllers::serviceaccount::DEFAULT.to_string());
    if let Some(map) = spec.as_object_mut() {
        map.insert("serviceAccountName".into(), json!(name));
        map.insert("serviceAccount".into(), json!(name));
    }
}
