//! From a row of the kinds table to its `k8s-openapi` type.
//!
//! The handlers are generic over JSON, but two things need the kind's Rust type: the
//! field check ([`super::fields`]) round-trips an object through it, and the OpenAPI
//! documents take their schemas from it. Rust cannot pick a type from a runtime value, so
//! this module turns the question around: the caller writes a [`KindVisitor`] with one
//! generic method, and [`visit`] calls it with the type of the kind. The match below is
//! the only place that pairs the table with the types.

use super::kinds::ResourceKind;
use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core,
    discovery::v1 as disc,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What every served kind's type can do.
pub trait Typed:
    k8s_openapi::ListableResource + Serialize + DeserializeOwned + schemars::JsonSchema
{
}

impl<T> Typed for T where
    T: k8s_openapi::ListableResource + Serialize + DeserializeOwned + schemars::JsonSchema
{
}

/// A computation generic over the kind's type.
pub trait KindVisitor {
    type Output;
    fn visit<T: Typed>(self) -> Self::Output;
}

/// Runs `visitor` with the type of `kind`; `None` for a kind without a typed form.
pub fn visit<V: KindVisitor>(kind: &ResourceKind, visitor: V) -> Option<V::Output> {
    Some(match (kind.group, kind.version, kind.kind) {
        ("", "v1", "Namespace") => visitor.visit::<core::Namespace>(),
        ("", "v1", "Pod") => visitor.visit::<core::Pod>(),
        ("", "v1", "Service") => visitor.visit::<core::Service>(),
        ("", "v1", "Endpoints") => visitor.visit::<core::Endpoints>(),
        ("", "v1", "Node") => visitor.visit::<core::Node>(),
        ("", "v1", "ConfigMap") => visitor.visit::<core::ConfigMap>(),
        ("", "v1", "Secret") => visitor.visit::<core::Secret>(),
        ("", "v1", "Event") => visitor.visit::<core::Event>(),
        ("apps", "v1", "Deployment") => visitor.visit::<apps::Deployment>(),
        ("apps", "v1", "ReplicaSet") => visitor.visit::<apps::ReplicaSet>(),
        ("apps", "v1", "DaemonSet") => visitor.visit::<apps::DaemonSet>(),
        ("batch", "v1", "Job") => visitor.visit::<batch::Job>(),
        ("coordination.k8s.io", "v1", "Lease") => visitor.visit::<coord::Lease>(),
        ("discovery.k8s.io", "v1", "EndpointSlice") => visitor.visit::<disc::EndpointSlice>(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::KINDS;

    struct Names;
    impl KindVisitor for Names {
        type Output = (&'static str, &'static str);
        fn visit<T: Typed>(self) -> Self::Output {
            (T::API_VERSION, T::KIND)
        }
    }

    #[test]
    fn every_kind_has_its_own_type() {
        for k in KINDS {
            let (api_version, kind) = visit(k, Names).expect("typed");
            assert_eq!((api_version, kind), (k.api_version().as_str(), k.kind));
        }
    }
}
