//! Which addresses Endpoints and EndpointSlices may name.
//!
//! Kubernetes refuses endpoint addresses in the loopback range, because the proxy would
//! then connect to the node itself: a selector-less Service with a hand-written endpoint
//! at 127.0.0.1 reaches a host-only service no pod may reach. wharf's pods *are* on
//! loopback (each node holds a pod range inside 127.0.0.0/8, see [`super::ipam`]), so the
//! rule here is: a loopback address must lie in a pod range of the cluster (a Node's
//! `spec.podCIDR(s)`, or the range node IPAM hands out). Link-local, link-local multicast
//! and unspecified addresses are refused as Kubernetes refuses them; other addresses (a
//! backend outside the cluster) are allowed, as in Kubernetes.
//!
//! The decision is pure ([`check`]); [`admit`] is the hook create and update call.

use super::AppState;
use super::error::{ApiError, Subject};
use super::request::Target;
use super::services::Ipv4Cidr;
use crate::api::validation::FieldError;
use crate::store::collection_prefix;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

/// The range node IPAM hands pod ranges out of (127.64.0.0 - 127.127.255.255).
pub const IPAM_RANGE: Ipv4Cidr = Ipv4Cidr::const_new(Ipv4Addr::new(127, 64, 0, 0), 10);

/// Why `address` may not be an endpoint, if it may not (`pod_ranges`: the cluster's).
pub fn refusal(address: &str, pod_ranges: &[Ipv4Cidr]) -> Option<String> {
    let Ok(ip) = address.parse::<IpAddr>() else {
        return Some("must be a valid IP address".into());
    };
    if ip.is_unspecified() {
        return Some(format!("may not be unspecified ({ip})"));
    }
    let in_pod_range = |v4: Ipv4Addr| pod_ranges.iter().any(|r| r.contains(v4));
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() && !in_pod_range(v4) => Some(loopback(pod_ranges)),
        IpAddr::V6(v6) if v6.is_loopback() => Some(loopback(pod_ranges)),
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into())
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into())
        }
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => Some(LINK_LOCAL_MULTICAST.into()),
        IpAddr::V6(v6) if v6.segments()[0] >> 8 == 0xff && v6.segments()[0] & 0xf == 2 => {
            Some(LINK_LOCAL_MULTICAST.into())
        }
        _ => None,
    }
}

const LINK_LOCAL_MULTICAST: &str =
    "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)";

fn loopback(pod_ranges: &[Ipv4Cidr]) -> String {
    let ranges: Vec<String> = pod_ranges.iter().map(ToString::to_string).collect();
    format!(
        "may not be in the loopback range (127.0.0.0/8, ::1/128) outside the cluster's pod ranges ({})",
        ranges.join(", ")
    )
}

/// How a kind lists the addresses of its objects, with their field paths.
pub type Addresses = fn(&Value) -> Vec<(String, String)>;

fn list(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The addresses of an EndpointSlice (none for an FQDN slice: it names hosts).
pub fn slice_addresses(obj: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if obj.get("addressType").and_then(Value::as_str) == Some("FQDN") {
        return out;
    }
    for (i, e) in list(obj.get("endpoints")).iter().enumerate() {
        for (j, a) in list(e.get("addresses")).iter().enumerate() {
            let a = a.as_str().unwrap_or_default().to_string();
            out.push((format!("endpoints[{i}].addresses[{j}]"), a));
        }
    }
    out
}

/// The addresses of an Endpoints object, ready or not.
pub fn endpoints_addresses(obj: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, s) in list(obj.get("subsets")).iter().enumerate() {
        for section in ["addresses", "notReadyAddresses"] {
            for (j, a) in list(s.get(section)).iter().enumerate() {
                let ip = a.get("ip").and_then(Value::as_str).unwrap_or_default();
                out.push((format!("subsets[{i}].{section}[{j}].ip"), ip.to_string()));
            }
        }
    }
    out
}

/// Every refused address of `obj` (listed by `addresses`) as a field error.
pub fn check(addresses: Addresses, obj: &Value, pod_ranges: &[Ipv4Cidr]) -> Vec<FieldError> {
    addresses(obj)
        .into_iter()
        .filter_map(|(field, addr)| {
            refusal(&addr, pod_ranges).map(|why| FieldError::invalid(field, &addr, why))
        })
        .collect()
}

/// The cluster's pod ranges: node IPAM's, and every Node's `podCIDR(s)`.
pub fn pod_ranges(nodes: &[Value]) -> Vec<Ipv4Cidr> {
    let mut ranges = vec![IPAM_RANGE];
    for n in nodes {
        let single = n.pointer("/spec/podCIDR").into_iter();
        let many = n
            .pointer("/spec/podCIDRs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for cidr in single.chain(many).filter_map(Value::as_str) {
            if let Ok(c) = cidr.parse::<Ipv4Cidr>()
                && !ranges.contains(&c)
            {
                ranges.push(c);
            }
        }
    }
    ranges
}

/// Refuses (422) an Endpoints or EndpointSlice write naming an address [`refusal`] refuses
/// (run by those kinds' strategies).
pub async fn admit(
    state: &AppState,
    target: &Target,
    obj: &Value,
    addresses: Addresses,
) -> Result<(), ApiError> {
    let kind = target.kind;
    // Addresses in the IPAM range (every pod of a laptop cluster) need no Node lookup.
    if check(addresses, obj, &[IPAM_RANGE]).is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = Subject {
        group: kind.group.to_string(),
        resource: kind.plural.to_string(),
        name: name.to_string(),
    };
    let nodes = state
        .store
        .list(&collection_prefix("", "nodes", None))
        .await
        .map_err(|e| ApiError::from_store(e, subject.clone()))?;
    let nodes: Vec<Value> = nodes
        .items
        .iter()
        .filter_map(|s| serde_json::from_slice(&s.value).ok())
        .collect();
    let errs = check(addresses, obj, &pod_ranges(&nodes));
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(subject, kind.kind, errs))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ranges() -> Vec<Ipv4Cidr> {
        pod_ranges(&[
            json!({"spec": {"podCIDR": "127.64.0.0/16", "podCIDRs": ["127.64.0.0/16"]}}),
            json!({"spec": {"podCIDR": "10.1.0.0/16"}}),
            json!({"spec": {}}),
        ])
    }

    #[test]
    fn loopback_only_inside_pod_ranges() {
        let r = ranges();
        assert_eq!(r.len(), 3, "{r:?}");
        for ok in [
            "127.64.0.2",
            "127.100.3.4",
            "127.127.255.254",
            "10.1.2.3",
            "192.168.1.5",
            "2001:db8::1",
        ] {
            assert_eq!(refusal(ok, &r), None, "{ok}");
        }
        for (bad, why) in [
            ("127.0.0.1", "loopback"),
            ("127.250.0.1", "loopback"),
            ("127.128.0.1", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local range"),
            ("fe80::1", "link-local range"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("not-an-ip", "valid IP"),
            ("", "valid IP"),
        ] {
            let refused = refusal(bad, &r).unwrap_or_default();
            assert!(refused.contains(why), "{bad}: {refused}");
        }
        assert_eq!(
            refusal("127.0.0.1", &[IPAM_RANGE]).unwrap(),
            "may not be in the loopback range (127.0.0.0/8, ::1/128) outside the cluster's pod ranges (127.64.0.0/10)"
        );
    }

    #[test]
    fn every_address_of_both_kinds_is_checked() {
        let r = ranges();
        let slice = json!({"addressType": "IPv4", "endpoints": [
            {"addresses": ["127.64.0.2"]},
            {"addresses": ["127.64.0.3", "127.0.0.1"]},
        ]});
        let errs = check(slice_addresses, &slice, &r);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "endpoints[1].addresses[1]");
        let fqdn = json!({"addressType": "FQDN", "endpoints": [{"addresses": ["localhost"]}]});
        assert!(check(slice_addresses, &fqdn, &r).is_empty());
        let eps = json!({"subsets": [{"addresses": [{"ip": "127.64.0.2"}],
                                      "notReadyAddresses": [{"ip": "169.254.1.1"}]}]});
        let errs = check(endpoints_addresses, &eps, &r);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "subsets[0].notReadyAddresses[0].ip");
    }
}
