//! ConfigMaps: keys that can name files and environment variables.

use super::super::Strategy;
use crate::api::validation::{self, FieldError};
use serde_json::Value;

pub struct ConfigMapStrategy;

pub static STRATEGY: ConfigMapStrategy = ConfigMapStrategy;

impl Strategy for ConfigMapStrategy {
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::validate_config_keys(obj, errs);
    }
}
