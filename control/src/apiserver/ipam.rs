//! Pod address ranges for nodes (the node IPAM step of node registration).
//!
//! Every node gets a distinct /16 inside 127.0.0.0/8 as its `spec.podCIDR`, so that pods of
//! several nodes on one machine never share an address and any user may bind them (all of
//! 127/8 is loopback on Linux). Ranges are handed out from 127.64.0.0 to 127.127.0.0 (64
//! nodes per machine), skipping ranges other nodes already hold; a Node that brings its own
//! `podCIDR` keeps it. Assignment is serialized within the control plane so that two nodes
//! registering at once never receive the same range.

use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Serializes assignment + create of Nodes.
pub static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The first pod range after the ones in `taken` (pure).
pub fn next_free(taken: &BTreeSet<String>) -> Option<String> {
    (64u8..=127)
        .map(|x| format!("127.{x}.0.0/16"))
        .find(|cidr| !taken.contains(cidr))
}

/// Sets `spec.podCIDR` on a Node object that has none. `existing` are the stored Nodes.
pub fn assign(node: &mut Value, existing: &[Value]) -> Result<(), String> {
    if node
        .pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(());
    }
    let taken: BTreeSet<String> = existing
        .iter()
        .filter_map(|n| n.pointer("/spec/podCIDR").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let cidr = next_free(&taken).ok_or("every pod range in 127.64.0.0-127.127.255.255 is taken")?;
    if let Some(map) = node.as_object_mut() {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("podCIDR".into(), json!(cidr));
            spec.insert("podCIDRs".into(), json!([cidr]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_distinct_ranges_and_keeps_given_ones() {
        let a = json!({"spec": {"podCIDR": "127.64.0.0/16"}});
        let mut b = json!({"metadata": {"name": "b"}});
        assign(&mut b, std::slice::from_ref(&a)).expect("free");
        assert_eq!(b.pointer("/spec/podCIDR"), Some(&json!("127.65.0.0/16")));
        let mut c = json!({"spec": {"podCIDR": "10.1.0.0/16"}});
        assign(&mut c, &[a, b]).expect("kept");
        assert_eq!(c.pointer("/spec/podCIDR"), Some(&json!("10.1.0.0/16")));
        let all: Vec<Value> = (64..=127)
            .map(|x| json!({"spec": {"podCIDR": format!("127.{x}.0.0/16")}}))
            .collect();
        assert!(assign(&mut json!({}), &all).is_err());
    }
}
