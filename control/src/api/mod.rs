//! The API types wharf serves and the table of kinds that drives every generic handler.
//!
//! Objects travel and are stored as JSON (`serde_json::Value`): the handlers are generic
//! over [`ResourceKind`], one entry per kind in [`KINDS`], instead of a copy per type. The
//! typed `k8s-openapi` structs are used where shape matters: validation decodes the body
//! into the kind's type (so a wrong type is reported with its field path), and the
//! in-process controllers work with typed objects through `kube`. [`typed`] pairs each
//! row of the table with its type; [`fields`] uses it to find fields a kind does not
//! declare.

pub mod apply;
pub mod cron;
pub mod fields;
pub mod jsonpatch;
pub mod kinds;
pub mod printers;
pub mod protobuf;
pub mod qos;
pub mod quantity;
pub mod quota;
pub mod selector;
pub mod storage;
pub mod strategic;
pub mod tolerations;
pub mod typed;
pub mod validation;
pub mod wellknown;

pub use kinds::{KINDS, ResourceKind, find_by_plural, find_kind, resolve};
