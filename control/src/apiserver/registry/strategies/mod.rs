//! One strategy per kind that behaves differently from [`Plain`]; see
//! [`super::strategy`] for what a strategy decides.

pub mod configmap;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod event;
pub mod job;
pub mod namespace;
pub mod node;
pub mod pod;
pub mod replicaset;
pub mod secret;
pub mod service;

use super::Strategy;
use super::subresources::{STATUS, Subresource};

/// The strategy of a kind with nothing special: it says only whether the kind has a
/// spec (counted in `metadata.generation`) and a `status` subresource.
#[derive(Debug)]
pub struct Plain {
    pub spec: bool,
    pub status: bool,
}

impl Plain {
    /// Neither spec nor status: ConfigMaps, Events.
    pub const DATA: Plain = Plain {
        spec: false,
        status: false,
    };
    /// A spec, no status subresource: Leases.
    pub const SPEC: Plain = Plain {
        spec: true,
        status: false,
    };
    /// A spec and a status subresource.
    pub const SPEC_STATUS: Plain = Plain {
        spec: true,
        status: true,
    };
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
}
