//! Services: names that are DNS-1035 labels (they become DNS names), their defaults and
//! checks, and the cluster IP and node ports allocated to them on every write of the main
//! resource ([`crate::apiserver::services`]).

use super::super::subresources::Subresource;
use super::super::{Admitted, Strategy};
use crate::api::printers;
use crate::api::strategic;
use crate::api::validation::{self, FieldError};
use crate::apiserver::request::Target;
use crate::apiserver::{AppState, error::ApiError, services};
use futures::future::BoxFuture;
use serde_json::{Value, json};

pub struct ServiceStrategy;

pub static STRATEGY: ServiceStrategy = ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn printer(&self) -> &'static printers::Printer {
        &printers::SERVICE
    }

    fn subresources(&self) -> &'static [&'static Subresource] {
        super::STATUS_ONLY
    }

    fn has_spec(&self) -> bool {
        true
    }

    fn merge_rules(&self) -> &'static strategic::Section {
        &strategic::SERVICE
    }

    fn name_invalid(&self, name: &str) -> Option<&'static str> {
        (!validation::is_dns1035_label(name)).then_some(validation::DNS1035_LABEL_MSG)
    }

    fn default(&self, obj: &mut Value) {
        use validation::set_default;

        set_default(obj, "/spec/type", json!("ClusterIP"));
        set_default(obj, "/spec/sessionAffinity", json!("None"));
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports {
                set_default(p, "/protocol", json!("TCP"));
                // Kubernetes reads a targetPort of 0 or "" as unset too.
                if matches!(p.get("targetPort"), Some(t) if *t == json!(0) || *t == json!(""))
                    && let Some(map) = p.as_object_mut()
                {
                    map.remove("targetPort");
                }
                if let Some(port) = p.get("port").cloned() {
                    set_default(p, "/targetPort", port);
                }
            }
        }
        // What Kubernetes fills on a single-stack IPv4 cluster. The addresses
        // themselves are allocated by the API server (`apiserver::services`).
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty != "ExternalName" {
            set_default(obj, "/spec/ipFamilies", json!(["IPv4"]));
            set_default(obj, "/spec/ipFamilyPolicy", json!("SingleStack"));
            set_default(obj, "/spec/internalTrafficPolicy", json!("Cluster"));
        }
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            set_default(obj, "/spec/externalTrafficPolicy", json!("Cluster"));
        }
        if ty == "LoadBalancer" {
            set_default(obj, "/spec/allocateLoadBalancerNodePorts", json!(true));
        }
        // Every Service has a status, if only an empty load balancer one, as Kubernetes
        // gives it (clients read `status.loadBalancer` without checking).
        set_default(obj, "/status/loadBalancer", json!({}));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_service(obj.get("spec"), errs);
    }

    fn admit_create<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        obj: &'a mut Value,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        // What it allocates is stored with the Service in one txn (`ipam`).
        Box::pin(async move {
            services::admit_create(state, target, obj).await?;
            Ok(Admitted::none())
        })
    }

    fn admit_update<'a>(
        &'a self,
        state: &'a AppState,
        target: &'a Target,
        current: &'a Value,
        new: &'a mut Value,
        status_only: bool,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            services::admit_update(state, target, current, new, status_only).await?;
            Ok(Admitted::none())
        })
    }
}
