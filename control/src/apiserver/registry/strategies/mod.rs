//! One strategy per kind that behaves differently from [`Plain`]; see
//! [`super::strategy`] for what a strategy decides.

pub mod apiservice;
pub mod configmap;
pub mod cronjob;
pub mod customresource;
pub mod customresourcedefinition;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod event;
pub mod horizontalpodautoscaler;
pub mod ingress;
pub mod ingressclass;
pub mod job;
pub mod limitrange;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod persistentvolume;
pub mod persistentvolumeclaim;
pub mod pod;
pub mod poddisruptionbudget;
pub mod priorityclass;
pub mod rbac;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resourcequota;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;
pub mod storageclass;

use super::Strategy;
use super::subresources::{STATUS, Subresource};
use crate::api::printers;

/// The strategy of a kind with nothing special: it says only whether the kind has a
/// spec (counted in `metadata.generation`) and a `status` subresource, and how it prints.
#[derive(Debug)]
pub struct Plain {
    pub spec: bool,
    pub status: bool,
    pub printer: &'static printers::Printer,
}

/// `status` alone.
pub(crate) static STATUS_ONLY: &[&Subresource] = &[&STATUS];

impl Strategy for Plain {
    fn subresources(&self) -> &'static [&'static Subresource] {
        if self.status { STATUS_ONLY } else { &[] }
    }

    fn has_spec(&self) -> bool {
        self.spec
    }

    fn printer(&self) -> &'static printers::Printer {
        self.printer
    }
}
