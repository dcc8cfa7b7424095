//! A `wasi:http` pod's request bounds, from its annotations.
//!
//! - `wharf.dev/request-timeout: 30s` (`ms`, `s`, `m`, `h`, or a combination such as
//!   `1m30s`): the longest one request may run; past it the request gets 504 and its
//!   instance is dropped. Default 60 s.
//! - `wharf.dev/max-concurrency: 50`: the most requests the pod's container serves at
//!   once; beyond, 503. Default: what its memory limit holds, at most a quarter of the
//!   node's instance pool (see `wharf_runtime::max_concurrency`).
//!
//! Pure; a value that does not parse is reported and the default applies.

use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;
use wharf_runtime::HttpLimits;

pub const REQUEST_TIMEOUT_ANNOTATION: &str = "wharf.dev/request-timeout";
pub const MAX_CONCURRENCY_ANNOTATION: &str = "wharf.dev/max-concurrency";

/// The limits the pod's annotations ask for, and a message per value that was ignored.
pub fn http_limits(pod: &Pod) -> (HttpLimits, Vec<String>) {
    let annotations = pod.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
    let mut limits = HttpLimits::default();
    let mut ignored = Vec::new();
    if let Some(v) = get(REQUEST_TIMEOUT_ANNOTATION) {
        match parse_duration(v) {
            Some(d) if !d.is_zero() => limits.request_timeout = Some(d),
            _ => ignored.push(format!(
                "{REQUEST_TIMEOUT_ANNOTATION}: Invalid value: {v:?}: must be a positive duration such as 30s, 500ms or 2m"
            )),
        }
    }
    if let Some(v) = get(MAX_CONCURRENCY_ANNOTATION) {
        match v.parse::<u32>() {
            Ok(n) if n > 0 => limits.max_concurrency = Some(n),
            _ => ignored.push(format!(
                "{MAX_CONCURRENCY_ANNOTATION}: Invalid value: {v:?}: must be a positive integer"
            )),
        }
    }
    (limits, ignored)
}

/// `30s`, `500ms`, `2m`, `1h`, `1m30s` (Go's duration syntax, integers only).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "30", "s", "1.5s", "-1s", "10x", "1m30"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn annotations_set_the_limits_and_bad_values_are_reported() {
        let (limits, ignored) = http_limits(&pod(&[
            (REQUEST_TIMEOUT_ANNOTATION, "5s"),
            (MAX_CONCURRENCY_ANNOTATION, "8"),
        ]));
        assert_eq!(limits.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(limits.max_concurrency, Some(8));
        assert!(ignored.is_empty());

        let (limits, ignored) = http_limits(&pod(&[
            (REQUEST_TIMEOUT_ANNOTATION, "0s"),
            (MAX_CONCURRENCY_ANNOTATION, "lots"),
        ]));
        assert_eq!(limits, HttpLimits::default());
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(
            ignored[1].contains("must be a positive integer"),
            "{ignored:?}"
        );

        assert_eq!(
            http_limits(&Pod::default()),
            (HttpLimits::default(), vec![])
        );
    }
}
