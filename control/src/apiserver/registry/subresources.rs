//! The one table of subresources: what routing, discovery and the OpenAPI documents read.
//!
//! A subresource is defined once here (its name, the type of object it takes and answers,
//! its verbs, how it is served); a kind's strategy lists which of them the kind has
//! ([`super::Strategy::subresources`]). Routing ([`crate::apiserver::resources`]) serves
//! `KIND/NAME/SUB` only for a subresource of that list, discovery advertises the same
//! list, and the OpenAPI documents describe the same list with the body type named here,
//! so a client that trusts discovery never meets a 404 it could not have predicted.

use super::super::AppState;
use super::super::error::ApiError;
use super::super::request::{Query, Target};
use axum::body::Body;
use axum::response::Response;
use futures::future::BoxFuture;
use http::request::Parts;
use schemars::SchemaGenerator;

/// A subresource request, as its handler gets it (authorized already for the verb the
/// method maps to; a handler whose verb the method does not show authorizes itself).
pub struct SubRequest<'a> {
    pub state: &'a AppState,
    pub target: &'a Target,
    pub query: &'a Query,
    pub parts: &'a Parts,
    pub body: Body,
}

/// A handler of a subresource.
pub type Handler = for<'a> fn(SubRequest<'a>) -> BoxFuture<'a, Result<Response, ApiError>>;

/// How a subresource is served.
#[derive(Clone, Copy)]
pub enum Serve {
    /// By the generic verbs (get, update, patch), writing the status only.
    Status,
    /// By its own handler.
    Handler(Handler),
}

/// Registers the schema of a subresource's body type in an OpenAPI document and answers
/// its name.
pub type Schema = fn(&mut SchemaGenerator) -> String;

/// One subresource.
#[derive(Clone, Copy)]
pub struct Subresource {
    /// Its name in the URL: `status`, `scale`.
    pub name: &'static str,
    /// Group, version and kind of the object it takes and answers; `None` when it is the
    /// parent's own (`status`, `log`, `finalize`).
    pub body: Option<(&'static str, &'static str, &'static str)>,
    /// The schema of that body type, for the OpenAPI documents (with `body`).
    pub schema: Option<Schema>,
    pub verbs: &'static [&'static str],
    pub serve: Serve,
}

impl std::fmt::Debug for Subresource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subresource")
            .field("name", &self.name)
            .field("body", &self.body)
            .field("verbs", &self.verbs)
            .finish()
    }
}

/// `KIND/NAME/status`: the status, through the generic verbs.
pub static STATUS: Subresource = Subresource {
    name: "status",
    body: None,
    schema: None,
    verbs: &["get", "patch", "update"],
    serve: Serve::Status,
};

/// Every subresource wharf serves, in one place.
pub static SUBRESOURCES: &[&Subresource] = &[
    &STATUS,
    &super::super::scale::SCALE,
    &super::super::eviction::EVICTION,
    &super::super::binding::BINDING,
    &super::super::proxy::LOG,
    &super::super::exec::EXEC,
    &super::super::attach::ATTACH,
    &super::super::portforward::PORTFORWARD,
    &super::strategies::namespace::FINALIZE,
    &super::super::serviceaccounts::TOKEN,
    &super::super::nodecert::CERTIFICATE,
];

/// The subresource `name` of a kind whose strategy lists `offered`.
pub fn find(offered: &[&'static Subresource], name: &str) -> Option<&'static Subresource> {
    offered.iter().copied().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::KINDS;

    #[test]
    fn every_kinds_subresources_come_from_the_table() {
        for k in KINDS {
            for s in k.strategy.subresources() {
                assert!(
                    SUBRESOURCES.iter().any(|t| std::ptr::eq(*t, *s)),
                    "{}/{} is not in the table",
                    k.plural,
                    s.name
                );
            }
        }
        let mut names: Vec<_> = SUBRESOURCES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SUBRESOURCES.len(), "names are unique");
    }
}
