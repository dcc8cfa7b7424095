//! Secrets: write-only `stringData` merged into `data`, `Opaque` by default, a `type`
//! that never changes, and the config-key rule of ConfigMaps.

use super::super::Strategy;
use crate::api::validation::{self, FieldError};
use base64::Engine as _;
use serde_json::{Map, Value, json};

pub struct SecretStrategy;

pub static STRATEGY: SecretStrategy = SecretStrategy;

impl Strategy for SecretStrategy {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        if let Some(map) = obj.as_object_mut() {
            merge_string_data(map);
        }
    }

    fn prepare_for_update(&self, _current: &Value, new: &mut Value) {
        if let Some(map) = new.as_object_mut() {
            merge_string_data(map);
        }
    }

    fn default(&self, obj: &mut Value) {
        validation::set_default(obj, "/type", json!("Opaque"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_config_keys(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let at = |v: &Value| v.get("type").cloned().unwrap_or(Value::Null);
        let (before, after) = (at(old), at(new));
        if before != after {
            errs.push(FieldError::invalid(
                "type",
                after.as_str().unwrap_or_default(),
                "field is immutable",
            ));
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }
}

/// A Secret's `stringData` is write-only: it is merged into `data`, base64-encoded.
fn merge_string_data(map: &mut Map<String, Value>) {
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            let plain = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(plain)),
            );
        }
    }
}
