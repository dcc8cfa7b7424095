//! wharf-control: the control plane of wharf.
//!
//! - [`api`]: the kinds wharf serves, selectors, validation and defaults;
//! - [`store`]: the durable store (fjall) with its revision log and watch;
//! - [`apiserver`]: the Kubernetes-shaped HTTP API over the store;
//! - [`pki`]: the cluster's own CA and the API server's serving certificate;
//! - [`dashboard`]: the web dashboard at `/ui/`, static files over the same API;
//! - [`controlplane`]: [`start`] puts them together as one serving control plane.
//!
//! Everything talks to the API server; nothing but the API server talks to the store.

pub mod api;
pub mod apiserver;
pub mod controllers;
pub mod controlplane;
pub mod dashboard;
pub mod events;
pub mod fsutil;
pub mod kubeconfig;
pub mod leaderelection;
pub mod metrics;
pub mod nodetls;
pub mod oci;
pub mod pki;
pub mod scheduler;
pub mod snapshot;
pub mod store;

pub use controlplane::{
    ControlConfig, ControlError, ControlPlane, ServeTimeouts, StoreBackend, start,
};
