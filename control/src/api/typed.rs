//! From a row of the kinds table to its `k8s-openapi` type.
//!
//! The handlers are generic over JSON, but three things need the kind's Rust type:
//! validation decodes the body into it (so a wrong type is reported with its field
//! path), the field check ([`super::fields`]) round-trips an object through it, and the
//! OpenAPI documents take their schemas from it. Rust cannot pick a type from a runtime
//! value, so each row carries [`TypeOps`]: those three operations instantiated for its
//! type when the row is built ([`super::kinds::builtin`]).

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use schemars::SchemaGenerator;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What every served kind's type can do.
pub trait Typed:
    k8s_openapi::ListableResource + Serialize + DeserializeOwned + schemars::JsonSchema
{
}

impl<T> Typed for T where
    T: k8s_openapi::ListableResource + Serialize + DeserializeOwned + schemars::JsonSchema
{
}

/// Whether a `k8s-openapi` scope is a namespace's.
pub trait Scoped {
    const NAMESPACED: bool;
}

impl Scoped for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scoped for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A failed typed decode, with the path of the field.
pub type DecodeError = serde_path_to_error::Error<serde_json::Error>;

/// The operations that need a kind's type, instantiated for it.
#[derive(Clone, Copy)]
pub struct TypeOps {
    /// Decodes an object as the type; the error names the field.
    pub check: fn(&Value) -> Result<(), DecodeError>,
    /// Decodes and encodes back; `None` when it does not decode.
    pub round_trip: fn(&Value) -> Option<Value>,
    /// Registers the type's schema (and what it references); answers its name.
    pub schema: fn(&mut SchemaGenerator) -> String,
}

impl TypeOps {
    pub const fn of<T: Typed>() -> TypeOps {
        TypeOps {
            check: check::<T>,
            round_trip: round_trip::<T>,
            schema: schema::<T>,
        }
    }
}

/// A custom resource: no Rust type, so only what every object has is typed
/// (`metadata`); the rest is its definition's schema's, checked by its strategy.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Untyped {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl TypeOps {
    /// The operations of a kind without a Rust type (see [`Untyped`]).
    pub const fn untyped() -> TypeOps {
        TypeOps {
            check: check::<Untyped>,
            round_trip: round_trip::<Untyped>,
            // The OpenAPI documents take a custom resource's schema from its strategy
            // (its definition's); only the metadata is typed here.
            schema: schema::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
        }
    }
}

fn check<T: DeserializeOwned>(value: &Value) -> Result<(), DecodeError> {
    serde_path_to_error::deserialize::<_, T>(value).map(|_| ())
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &Value) -> Option<Value> {
    let typed = T::deserialize(value).ok()?;
    serde_json::to_value(&typed).ok()
}

/// Registers `T`'s schema with `generator` and answers its name.
pub fn schema<T: schemars::JsonSchema>(generator: &mut SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

#[cfg(test)]
mod tests {
    use crate::api::kinds::KINDS;
    use serde_json::json;

    #[test]
    fn every_kind_has_its_own_type() {
        // Computed kinds (resource metrics) have no Rust type.
        for k in KINDS.iter().filter(|k| k.strategy.computed().is_none()) {
            let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
            let name = (k.typed.schema)(&mut generator);
            assert!(name.ends_with(k.kind), "{name} for {}", k.kind);
            let wrong = json!({"metadata": {"name": 5}});
            let err = (k.typed.check)(&wrong).expect_err(k.kind);
            assert_eq!(err.path().to_string(), "metadata.name", "{}", k.kind);
        }
    }
}
