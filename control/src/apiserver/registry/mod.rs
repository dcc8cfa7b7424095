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
//!   OpenAPI documents read;
//! - [`custom`]: the rows CustomResourceDefinitions add to the kinds table at runtime,
//!   all served by one strategy driven by the definition's schema.
//!
//! Dispatch (path to kind, verb and subresource) is [`super::resources`]; the kinds table
//! that pairs each kind with its strategy is [`crate::api::kinds`].

pub mod custom;
pub mod store;
pub mod strategies;
pub mod strategy;
pub mod subresources;

pub use strategies::Plain;
pub use strategy::{Admitted, Strategy};
pub use subresources::Subresource;

#[cfg(test)]
mod tests {
    use crate::api::kinds::KINDS;

    /// The acceptance rule of the layering: the dispatch and the generic store name no
    /// kind; what a kind does differently is in its strategy file.
    #[test]
    fn the_generic_layers_name_no_kind() {
        let layers = [
            ("resources.rs", include_str!("../resources.rs")),
            ("registry/store.rs", include_str!("store.rs")),
            ("registry/strategy.rs", include_str!("strategy.rs")),
            ("registry/subresources.rs", include_str!("subresources.rs")),
        ];
        for (file, text) in layers {
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for k in KINDS {
                for name in [format!("\"{}\"", k.kind), format!("\"{}\"", k.plural)] {
                    assert!(!code.contains(&name), "{file} names the kind {name}");
                }
            }
        }
    }
}
