//! The resource registry, layered as kube-apiserver's `registry/generic` is:
//!
//! - [`store`]: the store-facing generic registry (get, create, update with the
//!   compare-and-swap retry loop, delete with finalizers and propagation, dry run), the
//!   same code for every kind;
//! - [`strategy`]: the [`Strategy`] trait, everything a kind may do differently
//!   (defaults, validation, the spec/status split, immutable fields, what counts in
//!   `metadata.generation`, how a delete is held, admission against the cluster's state);
//! - [`strategies`]: one file per kind that does something differently, and [`Plain`]
//!   for the rest;
//! - [`subresources`]: the one table of subresources that routing, discovery and the
//!   OpenAPI documents read.
//!
//! Dispatch (path to kind, verb and subresource) is [`super::resources`]; the kinds table
//! that pairs each kind with its strategy is [`crate::api::kinds`].

pub mod store;
pub mod strategies;
pub mod strategy;
pub mod subresources;

pub use strategies::Plain;
pub use strategy::{Admitted, Strategy};
pub use subresources::Subresource;
