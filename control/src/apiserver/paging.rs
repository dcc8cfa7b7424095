//! List pagination: `limit` and `continue`, as kube-apiserver serves them.
//!
//! A list with `limit=N` answers at most N items, and when more follow, an opaque
//! `metadata.continue` token (the first page's revision and the key to resume at, base64
//! of JSON) and `metadata.remainingItemCount`. kubectl (`--chunk-size`, 500 by default) and
//! the kube client's watcher (pages of 500) list this way, and a `?limit=1` over 50,000
//! objects no longer serialises them all.
//!
//! Every page shows the collection at the *first* page's revision, as etcd-backed pages
//! do: a continuation lists the current state and undoes what the revision log holds since
//! that revision ([`crate::store::list_at`]), so an object deleted, changed or created
//! between pages appears in later pages as it was. When the log no longer reaches that
//! revision, the continuation is refused with 410 Expired, as kube-apiserver refuses a
//! continue token whose revision was compacted.
//!
//! Invalid parameters are 400s before the store is touched: `limit=abc`, `continue=garbage`,
//! `resourceVersion=abc`, `watch=maybe`.

use super::error::ApiError;
use super::request::Query;
use crate::store::StoredObject;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The `v` of every token: a token from another format is refused, not misread.
const TOKEN_VERSION: &str = "wharf.dev/v1";

/// Where a paginated list resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    #[serde(rename = "v")]
    version: String,
    /// The first page's revision.
    #[serde(rename = "rv")]
    pub revision: u64,
    /// The first key (relative to the collection's prefix) the next page may hold.
    pub start: String,
}

impl ContinueToken {
    pub fn new(revision: u64, start: String) -> Self {
        ContinueToken {
            version: TOKEN_VERSION.into(),
            revision,
            start,
        }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A token this server issued, or why not (400 `invalid continue token: ...`).
    pub fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = |why: String| ApiError::BadRequest(format!("invalid continue token: {why}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|e| invalid(format!("continue key is not valid: {e}")))?;
        let parsed: ContinueToken = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("continue key is not valid: {e}")))?;
        if parsed.version != TOKEN_VERSION {
            return Err(invalid(format!(
                "continue key is not valid: incorrect encoded start resourceVersion (version {})",
                parsed.version
            )));
        }
        if parsed.revision == 0 {
            return Err(invalid(
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
            ));
        }
        Ok(parsed)
    }
}

/// `limit` and `continue` of a list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// At most this many items; `None` for all (`limit` absent, zero or negative, as
    /// kube-apiserver reads it).
    pub limit: Option<usize>,
    pub resume: Option<ContinueToken>,
}

impl ListOptions {
    pub fn from_query(query: &Query) -> Result<Self, ApiError> {
        let limit = match query.get("limit").filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => {
                let n: i64 = raw.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "limit: Invalid value: {raw:?}: must be an integer"
                    ))
                })?;
                usize::try_from(n).ok().filter(|&n| n > 0)
            }
        };
        let resume = query
            .get("continue")
            .filter(|s| !s.is_empty())
            .map(ContinueToken::decode)
            .transpose()?;
        let rv = resource_version(query)?;
        if resume.is_some() && rv.is_some_and(|rv| rv != 0) {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        Ok(ListOptions { limit, resume })
    }
}

/// The `resourceVersion` parameter, if given: a revision (400 otherwise).
pub fn resource_version(query: &Query) -> Result<Option<u64>, ApiError> {
    match query.get("resourceVersion").filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!(
                "resourceVersion: Invalid value: {raw:?}: must be a non-negative integer"
            ))
        }),
    }
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it (`1`, `t`, `true`,
/// `0`, `f`, `false`, ...); absent or empty is false, anything else a 400.
pub fn bool_param(query: &Query, name: &str) -> Result<bool, ApiError> {
    match query.get(name).unwrap_or("") {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        other => Err(ApiError::BadRequest(format!(
            "{name}: Invalid value: {other:?}: must be a boolean"
        ))),
    }
}

/// One page of a list: the items kept and, when more follow, where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The relative key the next page starts at.
    pub next_start: Option<String>,
    /// The stored items not examined yet (what follows this page, before filtering).
    pub remaining: usize,
}

/// Picks a page from `items` (ordered by key, every key starting with `prefix`): from the
/// token's start key, the first `limit` that `keep` maps to `Some`. Only what the page
/// needs is examined, so a small page of a large collection decodes little.
pub fn page<T, E>(
    items: &[StoredObject],
    prefix: &str,
    opts: &ListOptions,
    mut keep: impl FnMut(&StoredObject) -> Result<Option<T>, E>,
) -> Result<Page<T>, E> {
    let relative = |o: &StoredObject| o.key.strip_prefix(prefix).unwrap_or(&o.key).to_string();
    let from = match &opts.resume {
        Some(t) => items.partition_point(|o| relative(o) < t.start),
        None => 0,
    };
    let mut kept = Vec::new();
    for (i, stored) in items.iter().enumerate().skip(from) {
        if opts.limit.is_some_and(|limit| kept.len() >= limit) {
            return Ok(Page {
                items: kept,
                next_start: Some(relative(stored)),
                remaining: items.len() - i,
            });
        }
        if let Some(v) = keep(stored)? {
            kept.push(v);
        }
    }
    Ok(Page {
        items: kept,
        next_start: None,
        remaining: 0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stored(keys: &[&str]) -> Vec<StoredObject> {
        keys.iter()
            .map(|k| StoredObject {
                key: format!("core/configmaps/default/{k}"),
                value: Bytes::new(),
                mod_revision: 1,
                create_revision: 1,
            })
            .collect()
    }

    fn query(q: &str) -> Query {
        Query::parse(Some(q))
    }

    const PREFIX: &str = "core/configmaps/";

    fn names(p: &Page<String>) -> Vec<&str> {
        p.items.iter().map(String::as_str).collect()
    }

    fn all(o: &StoredObject) -> Result<Option<String>, ()> {
        Ok(Some(o.key.rsplit('/').next().unwrap().to_string()))
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items = stored(&["a", "b", "c", "d", "e"]);
        let mut opts = ListOptions {
            limit: Some(2),
            resume: None,
        };
        let mut seen = Vec::new();
        let mut remaining = Vec::new();
        loop {
            let p = page(&items, PREFIX, &opts, all).unwrap();
            seen.extend(names(&p).iter().map(|s| s.to_string()));
            remaining.push(p.remaining);
            match p.next_start {
                Some(start) => opts.resume = Some(ContinueToken::new(7, start)),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert_eq!(remaining, [3, 1, 0]);
    }

    #[test]
    fn a_page_resumes_at_its_key_even_when_that_object_is_gone() {
        let items = stored(&["a", "c", "d"]);
        let opts = ListOptions {
            limit: Some(1),
            resume: Some(ContinueToken::new(3, "default/b".into())),
        };
        let p = page(&items, PREFIX, &opts, all).unwrap();
        assert_eq!(names(&p), ["c"]);
        assert_eq!(p.next_start.as_deref(), Some("default/d"));
    }

    #[test]
    fn filtered_pages_hold_up_to_limit_matches() {
        let items = stored(&["a1", "b2", "c1", "d2", "e1"]);
        let odd = |o: &StoredObject| -> Result<Option<String>, ()> {
            let name = o.key.rsplit('/').next().unwrap();
            Ok(name.ends_with('1').then(|| name.to_string()))
        };
        let opts = ListOptions {
            limit: Some(2),
            resume: None,
        };
        let p = page(&items, PREFIX, &opts, odd).unwrap();
        assert_eq!(names(&p), ["a1", "c1"]);
        assert_eq!(p.next_start.as_deref(), Some("default/d2"));
        let p = page(&items, PREFIX, &ListOptions::default(), odd).unwrap();
        assert_eq!(names(&p), ["a1", "c1", "e1"]);
        assert_eq!(p.next_start, None);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = ContinueToken::new(42, "default/web\u{0}".into());
        assert_eq!(ContinueToken::decode(&t.encode()).unwrap(), t);
        for bad in [
            "garbage",
            "e30",
            "!!!",
            "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MSwic3RhcnQiOiJhIn0",
        ] {
            let e = ContinueToken::decode(bad).unwrap_err();
            assert!(
                matches!(&e, ApiError::BadRequest(m) if m.starts_with("invalid continue token: ")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(
            ListOptions::from_query(&query("limit=3")).unwrap().limit,
            Some(3)
        );
        for none in ["", "limit=", "limit=0", "limit=-5"] {
            assert_eq!(ListOptions::from_query(&query(none)).unwrap().limit, None);
        }
        let token = ContinueToken::new(5, "a".into()).encode();
        for bad in [
            "limit=abc".to_string(),
            "limit=1.5".to_string(),
            "continue=garbage".to_string(),
            "resourceVersion=abc".to_string(),
            format!("continue={token}&resourceVersion=5"),
        ] {
            let e = ListOptions::from_query(&query(&bad)).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e}");
        }
        assert!(
            ListOptions::from_query(&query(&format!("continue={token}&resourceVersion=0"))).is_ok()
        );
        assert!(bool_param(&query("watch=true"), "watch").unwrap());
        assert!(bool_param(&query("watch=1"), "watch").unwrap());
        assert!(!bool_param(&query("watch=false"), "watch").unwrap());
        assert!(!bool_param(&query(""), "watch").unwrap());
        assert!(bool_param(&query("watch=maybe"), "watch").is_err());
    }
}
