//! Events: nothing special but the fields `kubectl events` and controllers select them by.

use super::super::Strategy;

pub struct EventStrategy;

pub static STRATEGY: EventStrategy = EventStrategy;

impl Strategy for EventStrategy {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    }
}
