//! Server-side apply (`PATCH` with `application/apply-patch+yaml`, `kubectl apply
//! --server-side`): the client sends the configuration it wants (a YAML or JSON object)
//! and a `fieldManager` name, and the server merges it into the live object, remembering
//! which manager set which field in `metadata.managedFields`.
//!
//! Remembering is what makes apply declarative. A field a manager applied before and no
//! longer applies is removed, unless another manager also set it; a field another
//! applier owns cannot be changed to a different value without `force=true` (409
//! Conflict listing the fields and their managers), and forcing moves the ownership.
//! Two appliers that set a field to the same value share it.
//!
//! What wharf tracks, and what it does not (the README says the same):
//!
//! - Ownership is recorded for `Apply` operations only. Create, update and the other
//!   patch types change the object without recording a manager, so their fields are
//!   never removed by an apply and never conflict with one.
//! - A field set is the set of paths the applied configuration sets, in the `FieldsV1`
//!   format (`f:` fields, `k:{...}` list elements by their merge key, `v:` values of
//!   sets): leaves (scalars, lists without a merge key, empty maps) and each element of
//!   a list with a merge key. Which list is keyed by what comes from the strategic merge
//!   table ([`super::strategic`]); a missing `protocol` in a port's key is `TCP`.
//! - The applied configuration is merged into the live object with the strategic merge
//!   rules, in the order of its lists; `null`s in it mean "not set". Directives (`$patch`
//!   ...) are refused: an apply configuration is an object, not a patch.
//! - Identity and server-owned metadata (`name`, `namespace`, `uid`, `resourceVersion`,
//!   `generation`, timestamps) are never owned; `resourceVersion` and `uid` in the
//!   configuration are preconditions. On the main resource `status` is not applied;
//!   applying to the `status` subresource owns only `status` (the API server's status
//!   writes keep the stored metadata, so that ownership is computed but not stored yet).
//!
//! Everything here is pure: the live object, the configuration and the applier in, the
//! object to store out. The API server reads, calls [`apply`] (or [`create`] when the
//! object is absent) and writes with compare-and-swap.

use super::kinds::ResourceKind;
use super::strategic::{self, Key, ListStrategy, Path, element_key, list_strategy};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The media type of a server-side apply request.
pub const CONTENT_TYPE: &str = "application/apply-patch+yaml";
/// `managedFields[].operation` of an apply.
pub const OPERATION: &str = "Apply";
/// Longest `fieldManager`, as Kubernetes allows.
const MAX_MANAGER_LEN: usize = 128;

/// Why an apply is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The request or the configuration is malformed (400).
    #[error("{0}")]
    Malformed(String),
    /// Fields another manager owns would change (409); the message lists them.
    #[error("{0}")]
    Conflict(String),
}

impl From<strategic::PatchError> for ApplyError {
    fn from(e: strategic::PatchError) -> Self {
        ApplyError::Malformed(e.to_string())
    }
}

/// Who applies, and how.
#[derive(Debug, Clone, Copy)]
pub struct Applier<'a> {
    pub manager: &'a str,
    /// Take the fields other managers own instead of failing with a conflict.
    pub force: bool,
    /// `Some("status")` for an apply to the status subresource.
    pub subresource: Option<&'a str>,
    /// Now, RFC 3339, for `managedFields[].time`.
    pub now: &'a str,
}

/// Checks the `fieldManager` query parameter an apply must have.
pub fn check_manager(manager: Option<&str>) -> Result<&str, ApplyError> {
    match manager {
        None | Some("") => Err(ApplyError::Malformed(
            "fieldManager: Required value: is required for apply requests".into(),
        )),
        Some(m) if m.len() > MAX_MANAGER_LEN => Err(ApplyError::Malformed(format!(
            "fieldManager: Too long: may not be more than {MAX_MANAGER_LEN} bytes"
        ))),
        Some(m) if m.chars().any(char::is_control) => Err(ApplyError::Malformed(
            "fieldManager: Invalid value: may not contain control characters".into(),
        )),
        Some(m) => Ok(m),
    }
}

/// Parses an apply body: JSON (what kubectl and the client libraries send) or a single
/// YAML document. YAML 1.1 booleans (`yes`, `on`) stay strings, as Kubernetes reads them.
pub fn parse_body(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("the apply configuration is not UTF-8: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // JSON first: it is what clients send, and JSON numbers and strings then keep
    // exactly their JSON meaning. Anything else (a YAML flow mapping too) is YAML.
    let json = text
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Value>(text).ok())
        .flatten();
    let value = match json {
        Some(v) => v,
        None => {
            let options = serde_saphyr::options! { strict_booleans: true, with_snippet: false };
            serde_saphyr::from_str_with_options::<Value>(text, options)
                .map_err(|e| format!("the apply configuration is not valid YAML: {e}"))?
        }
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Err("the apply configuration is empty".into()),
        _ => Err("the apply configuration must be an object".into()),
    }
}

/// The live object with `config` applied by `applier`.
pub fn apply(
    kind: &ResourceKind,
    live: &Value,
    config: &Value,
    applier: &Applier,
) -> Result<Value, ApplyError> {
    let applied = Applied::new(kind, config, applier.subresource)?;
    let subresource = applier.subresource.unwrap_or("");
    let mut entries = managed_entries(live);
    let mine = entries
        .iter()
        .position(|e| e.is(applier.manager, OPERATION, subresource));
    let previous = mine
        .and_then(|i| entries[i].fields.clone())
        .unwrap_or_default();

    // A field another applier owns, set here to something else, is a conflict.
    let mut conflicts: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if Some(i) == mine || entry.operation != OPERATION || entry.subresource != subresource {
            continue;
        }
        let Some(owned) = &entry.fields else { continue };
        for path in applied.fields.leaves() {
            let is_set_value = path.last().is_some_and(|s| s.starts_with("v:"));
            if owned.0.contains(path)
                && !is_set_value
                && value_at(live, path) != value_at(&applied.managed, path)
            {
                conflicts.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !applier.force {
            return Err(ApplyError::Conflict(conflict_message(&entries, &conflicts)));
        }
        for (i, path) in &conflicts {
            if let Some(owned) = &mut entries[*i].fields {
                owned.0.remove(path);
                entries[*i].changed = true;
            }
        }
    }

    let mut merged = strategic::strategic_merge(kind, live, &applied.patch)?;
    // What this manager applied before and no longer does, that nobody else holds.
    let mut held = FieldSet::default();
    for (i, entry) in entries.iter().enumerate() {
        if Some(i) != mine
            && entry.subresource == subresource
            && let Some(owned) = &entry.fields
        {
            held.0.extend(owned.0.iter().cloned());
        }
    }
    for path in previous.0.difference(&applied.fields.0) {
        if !held.0.contains(path) {
            remove_path(&mut merged, path);
        }
    }

    let unchanged = without_managed_fields(&merged) == without_managed_fields(live);
    let mut out = Vec::with_capacity(entries.len() + 1);
    let mut mine_written = false;
    for (i, entry) in entries.into_iter().enumerate() {
        if Some(i) == mine {
            mine_written = true;
            if applied.fields.0.is_empty() {
                continue;
            }
            let same = previous == applied.fields
                && unchanged
                && entry.raw.get("apiVersion") == Some(&json!(kind.api_version()));
            out.push(if same {
                entry.raw
            } else {
                new_entry(kind, applier, &applied.fields)
            });
        } else if entry.changed {
            let Some(owned) = entry.fields.filter(|f| !f.0.is_empty()) else {
                continue;
            };
            let mut raw = entry.raw;
            if let Some(map) = raw.as_object_mut() {
                map.insert("fieldsV1".into(), owned.to_fields_v1());
            }
            out.push(raw);
        } else {
            out.push(entry.raw);
        }
    }
    if !mine_written && !applied.fields.0.is_empty() {
        out.push(new_entry(kind, applier, &applied.fields));
    }
    set_managed_fields(&mut merged, out);
    Ok(merged)
}

/// The object an apply creates when none is stored under `name`.
pub fn create(
    kind: &ResourceKind,
    name: &str,
    config: &Value,
    applier: &Applier,
) -> Result<Value, ApplyError> {
    let applied = Applied::new(kind, config, applier.subresource)?;
    let mut obj = strategic::strategic_merge(kind, &json!({}), &applied.patch)?;
    if let Some(map) = obj.as_object_mut() {
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            match meta.get("name").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("name".into(), json!(name));
                }
                Some(sent) if sent != name => {
                    return Err(ApplyError::Malformed(format!(
                        "the name of the object ({sent}) does not match the name on the URL ({name})"
                    )));
                }
                Some(_) => {}
            }
        }
    }
    let entries = if applied.fields.0.is_empty() {
        Vec::new()
    } else {
        vec![new_entry(kind, applier, &applied.fields)]
    };
    set_managed_fields(&mut obj, entries);
    Ok(obj)
}

/// `managedFields[].operation` of every write that is not an apply.
pub const UPDATE: &str = "Update";

/// The fields of an object a write may own: without apiVersion and kind, the server's
/// metadata, and the part the operation does not write (the status for the main
/// resource of a kind with a status subresource, everything else for `status`).
fn owned_part(kind: &ResourceKind, obj: &Value, subresource: Option<&str>) -> Value {
    let Value::Object(map) = obj else {
        return without_nulls(obj);
    };
    // Only what is kept is copied: a status write copies the status, not the spec.
    let kept = |k: &str| match subresource {
        Some("status") => k == "status",
        _ => k != "apiVersion" && k != "kind" && !(k == "status" && kind.has_status()),
    };
    let mut out = Map::new();
    for (k, v) in map.iter().filter(|(k, v)| kept(k) && !v.is_null()) {
        let v = match v {
            Value::Object(meta) if k == "metadata" => {
                let meta: Map<String, Value> = meta
                    .iter()
                    .filter(|(f, v)| !v.is_null() && !SERVER_METADATA.contains(&f.as_str()))
                    .map(|(f, v)| (f.clone(), without_nulls(v)))
                    .collect();
                // Metadata with nothing but the server's is not a field anyone sets.
                if meta.is_empty() {
                    continue;
                }
                Value::Object(meta)
            }
            v => without_nulls(v),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

/// Records a write that is not an apply (a create, an update or a patch) by `manager` in
/// `new`'s `metadata.managedFields`, as Kubernetes does: the fields it set (all of them
/// on create, those whose value changed otherwise) become owned by its `Update` entry
/// and by no one else; fields gone from the object are no one's; an entry left owning
/// nothing is dropped. `live` is the object before the write (`None` for a create).
/// An object whose fields cannot be read is left as it is.
pub fn record_update(
    kind: &ResourceKind,
    live: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    // A create that names no managers (what clients send): its entry owns every field
    // of the object and nobody else owns anything, so the entry's fields are made from
    // the object in one walk, without the path sets an update compares.
    let named = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(Value::is_object));
    if live.is_none() && !named {
        let part = owned_part(kind, new, subresource);
        let Ok(fields) = fields_v1_of(kind, &part, &mut String::new()) else {
            return;
        };
        let entries = match fields {
            Value::Object(map) if map.is_empty() => Vec::new(),
            fields => vec![update_entry(kind, manager, subresource, now, fields)],
        };
        set_managed_fields(new, entries);
        return;
    }
    record_changes(kind, live, new, manager, subresource, now);
}

/// The `Update` entry of `manager` owning `fields` (`FieldsV1`).
fn update_entry(
    kind: &ResourceKind,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
    fields: Value,
) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": UPDATE,
        "apiVersion": kind.api_version(),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    entry
}

/// The `FieldsV1` of every field `value` (without nulls, at schema path `schema`) sets:
/// what `FieldSet::of(..).leaves()` turned into `FieldsV1` gives, in one walk. Fails
/// where [`FieldSet::of`] fails (a list element without its key, or twice the same key;
/// an object in a set).
fn fields_v1_of(kind: &ResourceKind, value: &Value, schema: &mut String) -> Result<Value, ()> {
    let mut out = BTreeMap::new();
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let mark = push_field(schema, k);
                let child = fields_v1_of(kind, v, schema);
                schema.truncate(mark);
                out.insert(format!("f:{k}"), child?);
            }
        }
        Value::Array(items) if !items.is_empty() => match list_strategy(kind, schema) {
            ListStrategy::Keyed(fields) => {
                for element in items {
                    let key = Key::of(element, fields).ok_or(())?;
                    let child = fields_v1_of(kind, element, schema)?;
                    if out.insert(key_segment(&key), child).is_some() {
                        return Err(());
                    }
                }
            }
            ListStrategy::Set => {
                for element in items {
                    if element.is_object() || element.is_array() {
                        return Err(());
                    }
                    out.insert(format!("v:{element}"), json!({}));
                }
            }
            ListStrategy::Replace => {}
        },
        _ => {}
    }
    Ok(Value::Object(out.into_iter().collect()))
}

/// [`record_update`] of a write that changes an object, or names managers: what each
/// entry owns is compared with what the write changed.
fn record_changes(
    kind: &ResourceKind,
    live: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let part = owned_part(kind, new, subresource);
    let Ok(present) = FieldSet::of(kind, &part) else {
        return;
    };
    let before = live.map(|l| owned_part(kind, l, subresource));
    let changed: BTreeSet<Vec<String>> = present
        .leaves()
        .filter(|p| {
            before
                .as_ref()
                .is_none_or(|b| value_at(b, p) != value_at(&part, p))
        })
        .cloned()
        .collect();
    let sub = subresource.unwrap_or("");
    let mut entries = managed_entries(new);
    let mine = entries.iter().position(|e| e.is(manager, UPDATE, sub));
    let mine_before = mine.and_then(|i| entries[i].fields.clone());
    let mut out = Vec::with_capacity(entries.len() + 1);
    let mut mine_fields = FieldSet::default();
    for (i, entry) in entries.iter_mut().enumerate() {
        let Some(owned) = entry.fields.as_mut() else {
            if Some(i) != mine {
                out.push(Some(entry.raw.clone()));
            }
            continue;
        };
        let before_len = owned.0.len();
        let is_mine = Some(i) == mine;
        // A field gone from the object is no one's. Checked path by path: the object's
        // whole field set (every leaf of a pod) cost more than the few paths owned.
        owned.0.retain(|p| {
            (is_mine || !changed.iter().any(|c| p.starts_with(c))) && sets(kind, new, p)
        });
        if is_mine {
            mine_fields = owned.clone();
            out.push(None);
            continue;
        }
        if owned.0.len() == before_len {
            out.push(Some(entry.raw.clone()));
        } else if !owned.0.is_empty() {
            let mut raw = entry.raw.clone();
            if let Some(map) = raw.as_object_mut() {
                map.insert("fieldsV1".into(), owned.to_fields_v1());
            }
            out.push(Some(raw));
        }
    }
    let unchanged_mine = changed.is_empty() && mine_before.as_ref() == Some(&mine_fields);
    mine_fields.0.extend(changed);
    let mine_entry = if unchanged_mine {
        mine.map(|i| entries[i].raw.clone())
    } else if mine_fields.0.is_empty() {
        None
    } else {
        Some(update_entry(
            kind,
            manager,
            subresource,
            now,
            mine_fields.to_fields_v1(),
        ))
    };
    let mut list: Vec<Value> = Vec::new();
    let mut placed = false;
    for slot in out {
        match slot {
            Some(v) => list.push(v),
            None => {
                placed = true;
                list.extend(mine_entry.clone());
            }
        }
    }
    if !placed {
        list.extend(mine_entry);
    }
    set_managed_fields(new, list);
}

/// `metadata` fields that identify the object or belong to the server: never owned.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];
/// `metadata` fields of the configuration that are passed on (as identity and
/// preconditions) without being owned.
const IDENTITY_METADATA: &[&str] = &["name", "namespace", "uid", "resourceVersion"];

/// An applied configuration, taken apart.
struct Applied {
    /// The fields it sets, and their values: the configuration without identity, without
    /// nulls, and restricted to what the operation may change.
    managed: Value,
    /// Their paths.
    fields: FieldSet,
    /// What is merged into the live object: `managed` with the configuration's identity
    /// and `$setElementOrder` for each merged list, so the result has its order.
    patch: Value,
}

impl Applied {
    fn new(
        kind: &ResourceKind,
        config: &Value,
        subresource: Option<&str>,
    ) -> Result<Applied, ApplyError> {
        let Value::Object(config) = config else {
            return Err(ApplyError::Malformed(
                "the apply configuration must be an object".into(),
            ));
        };
        for field in ["apiVersion", "kind"] {
            if config
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApplyError::Malformed(format!(
                    "{field}: Required value: an apply configuration must set apiVersion and kind"
                )));
            }
        }
        refuse_directives(&Value::Object(config.clone()), &Path::default())?;
        let Value::Object(mut managed) = without_nulls(&Value::Object(config.clone())) else {
            return Err(ApplyError::Malformed(
                "the apply configuration must be an object".into(),
            ));
        };
        if config.get("metadata").is_some_and(|m| !m.is_object()) {
            return Err(ApplyError::Malformed("metadata must be an object".into()));
        }
        if config
            .get("metadata")
            .and_then(|m| m.get("managedFields"))
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApplyError::Malformed(
                "metadata.managedFields must be nil".into(),
            ));
        }
        let mut patch = Map::new();
        for field in ["apiVersion", "kind"] {
            if let Some(v) = managed.shift_remove(field) {
                patch.insert(field.into(), v);
            }
        }
        let mut identity = Map::new();
        if let Some(Value::Object(meta)) = managed.get_mut("metadata") {
            for field in SERVER_METADATA {
                if let Some(v) = meta.shift_remove(*field)
                    && IDENTITY_METADATA.contains(field)
                {
                    identity.insert((*field).into(), v);
                }
            }
            if meta.is_empty() {
                managed.shift_remove("metadata");
            }
        }
        match subresource {
            Some("status") => managed.retain(|k, _| k == "status"),
            _ if kind.has_status() => {
                managed.shift_remove("status");
            }
            _ => {}
        }
        let managed = Value::Object(managed);
        let fields = FieldSet::of(kind, &managed)?;
        let Value::Object(ordered) = in_order(kind, &managed, &Path::default()) else {
            return Err(ApplyError::Malformed(
                "the apply configuration must be an object".into(),
            ));
        };
        patch.extend(ordered);
        if !identity.is_empty() {
            let meta = patch.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.extend(identity);
            }
        }
        Ok(Applied {
            managed,
            fields,
            patch: Value::Object(patch),
        })
    }
}

fn refuse_directives(value: &Value, at: &Path) -> Result<(), ApplyError> {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k.starts_with('$') {
                    return Err(ApplyError::Malformed(format!(
                        "{}: an apply configuration is an object, not a patch: it may not contain directives",
                        at.field(k).shown
                    )));
                }
                refuse_directives(v, &at.field(k))?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| refuse_directives(v, &at.index(i))),
        _ => Ok(()),
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|v| !v.is_null())
                .map(without_nulls)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `value` with a `$setElementOrder` beside every list merged by key or as a set.
fn in_order(kind: &ResourceKind, value: &Value, at: &Path) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let child = at.field(k);
                if let Value::Array(items) = v {
                    let order = match list_strategy(kind, &child.schema) {
                        ListStrategy::Keyed(fields) => Some(
                            items
                                .iter()
                                .filter_map(|e| Key::of(e, fields))
                                .map(|key| {
                                    Value::Object(
                                        key.values
                                            .into_iter()
                                            .map(|(f, v)| (f.into(), v))
                                            .collect(),
                                    )
                                })
                                .collect(),
                        ),
                        ListStrategy::Set => Some(items.clone()),
                        ListStrategy::Replace => None,
                    };
                    if let Some(order) = order {
                        out.insert(format!("$setElementOrder/{k}"), Value::Array(order));
                    }
                }
                out.insert(k.clone(), in_order(kind, v, &child));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| in_order(kind, v, &at.index(i)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A set of field paths, each a list of `FieldsV1` segments: `f:name` (a field),
/// `k:{"name":"app"}` (a list element by its key), `v:"x"` (a value of a set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Vec<String>>);

/// Key fields that have a default where Kubernetes defaults them, so that a port applied
/// without `protocol` has the same key as the live port with `protocol: TCP`.
const KEY_DEFAULTS: &[(&str, &str)] = &[("protocol", "TCP")];

impl FieldSet {
    /// The fields `value` (an object of `kind`, from its root) sets.
    pub fn of(kind: &ResourceKind, value: &Value) -> Result<FieldSet, ApplyError> {
        let mut set = FieldSet::default();
        collect(
            kind,
            value,
            &mut Walk::default(),
            &mut Vec::new(),
            &mut set.0,
        )?;
        Ok(set)
    }

    /// The paths no other path in the set lies under: the values themselves.
    pub fn leaves(&self) -> impl Iterator<Item = &Vec<String>> {
        let paths: Vec<_> = self.0.iter().collect();
        (0..paths.len()).filter_map(move |i| {
            let p = paths[i];
            let parent = paths.get(i + 1).is_some_and(|next| next.starts_with(p));
            (!parent).then_some(p)
        })
    }

    /// The `FieldsV1` JSON of the set: a tree of segments, `{}` at a member without
    /// members under it, `".": {}` at a member with some.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Tree {
            member: bool,
            children: BTreeMap<String, Tree>,
        }
        fn to_json(tree: &Tree) -> Value {
            let mut map = Map::new();
            if tree.member && !tree.children.is_empty() {
                map.insert(".".into(), json!({}));
            }
            for (k, child) in &tree.children {
                map.insert(k.clone(), to_json(child));
            }
            Value::Object(map)
        }
        let mut root = Tree::default();
        for path in &self.0 {
            let mut node = &mut root;
            for seg in path {
                node = node.children.entry(seg.clone()).or_default();
            }
            node.member = true;
        }
        to_json(&root)
    }

    /// Reads `FieldsV1` JSON; `None` if it is not that format.
    pub fn from_fields_v1(value: &Value) -> Option<FieldSet> {
        fn walk(value: &Value, prefix: &mut Vec<String>, out: &mut BTreeSet<Vec<String>>) -> bool {
            let Value::Object(map) = value else {
                return false;
            };
            if map.is_empty() && !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            for (k, v) in map {
                if k == "." {
                    out.insert(prefix.clone());
                    continue;
                }
                if !["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                    return false;
                }
                prefix.push(k.clone());
                let ok = walk(v, prefix, out);
                prefix.pop();
                if !ok {
                    return false;
                }
            }
            true
        }
        let mut set = FieldSet::default();
        walk(value, &mut Vec::new(), &mut set.0).then_some(set)
    }
}

/// Appends field `k` to the dotted path `path` (grown in place by the walks below);
/// returns the length to truncate back to.
fn push_field(path: &mut String, k: &str) -> usize {
    let mark = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(k);
    mark
}

/// Where [`collect`] is: the schema path (field names only) picks the list rules, the
/// shown path (with indices) names the place in errors. Both are grown and cut back in
/// place as the walk goes, so that a field costs no allocation of its own.
#[derive(Default)]
struct Walk {
    schema: String,
    shown: String,
}

impl Walk {
    /// Enters field `k`; returns the lengths to [`Walk::leave`] back to.
    fn field(&mut self, k: &str) -> (usize, usize) {
        (
            push_field(&mut self.schema, k),
            push_field(&mut self.shown, k),
        )
    }

    /// Enters element `i` of the list here (the schema path stays the list's).
    fn index(&mut self, i: usize) -> usize {
        let mark = self.shown.len();
        let _ = write!(self.shown, "[{i}]");
        mark
    }

    fn leave(&mut self, (schema, shown): (usize, usize)) {
        self.schema.truncate(schema);
        self.shown.truncate(shown);
    }

    fn path(&self) -> Path {
        Path {
            schema: self.schema.clone(),
            shown: self.shown.clone(),
        }
    }
}

fn collect(
    kind: &ResourceKind,
    value: &Value,
    at: &mut Walk,
    prefix: &mut Vec<String>,
    out: &mut BTreeSet<Vec<String>>,
) -> Result<(), ApplyError> {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(format!("f:{k}"));
                let marks = at.field(k);
                collect(kind, v, at, prefix, out)?;
                at.leave(marks);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_strategy(kind, &at.schema) {
            ListStrategy::Keyed(fields) => {
                for (i, element) in items.iter().enumerate() {
                    let mark = at.index(i);
                    let key = match Key::of(element, fields) {
                        Some(key) => key,
                        None => element_key(element, fields, &at.path())?,
                    };
                    prefix.push(key_segment(&key));
                    if !out.insert(prefix.clone()) {
                        return Err(ApplyError::Malformed(format!(
                            "{}: duplicate element: another element of the list has the key {}",
                            at.shown,
                            key_display(prefix.last().map(String::as_str).unwrap_or_default())
                        )));
                    }
                    collect(kind, element, at, prefix, out)?;
                    prefix.pop();
                    at.shown.truncate(mark);
                }
            }
            ListStrategy::Set => {
                for (i, element) in items.iter().enumerate() {
                    if element.is_object() || element.is_array() {
                        return Err(ApplyError::Malformed(format!(
                            "{}[{i}]: must be a single value: the list is a set of values",
                            at.shown
                        )));
                    }
                    prefix.push(format!("v:{element}"));
                    out.insert(prefix.clone());
                    prefix.pop();
                }
            }
            ListStrategy::Replace => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
    Ok(())
}

/// Whether `path` is one of the fields `value` sets, nulls left out: what
/// `FieldSet::of(kind, &without_nulls(value)).contains(path)` says, found by walking
/// the one path instead of collecting every field of the object.
fn sets(kind: &ResourceKind, value: &Value, path: &[String]) -> bool {
    let mut at = value;
    let mut schema = String::new();
    for seg in path {
        let next = if let Some(field) = seg.strip_prefix("f:") {
            push_field(&mut schema, field);
            at.as_object().and_then(|m| m.get(field))
        } else {
            let items = at
                .as_array()
                .map(|items| items.iter().filter(|e| !e.is_null()));
            match (items, list_strategy(kind, &schema)) {
                (Some(mut items), ListStrategy::Keyed(fields)) => items.find(|e| {
                    e.is_object() && Key::of(e, fields).is_some_and(|k| key_segment(&k) == *seg)
                }),
                (Some(mut items), ListStrategy::Set) => {
                    let want = seg
                        .strip_prefix("v:")
                        .and_then(|v| serde_json::from_str::<Value>(v).ok());
                    items.find(|e| !e.is_object() && !e.is_array() && want.as_ref() == Some(*e))
                }
                _ => None,
            }
        };
        match next {
            Some(v) if !v.is_null() => at = v,
            _ => return false,
        }
    }
    match path.last() {
        None => false,
        // A list element (`k:` or `v:`) is a field of its own.
        Some(seg) if !seg.starts_with("f:") => true,
        // A field is one if nothing under it is: no member, no element merged by key
        // or as a set.
        Some(_) => match at {
            Value::Object(map) => map.values().all(Value::is_null),
            Value::Array(items) => {
                items.iter().all(Value::is_null)
                    || matches!(list_strategy(kind, &schema), ListStrategy::Replace)
            }
            _ => true,
        },
    }
}

/// `k:{...}`: the element's key fields, sorted by name, defaults filled in.
fn key_segment(key: &Key) -> String {
    let mut fields: BTreeMap<&str, Value> =
        key.values.iter().map(|(f, v)| (*f, v.clone())).collect();
    for (field, default) in KEY_DEFAULTS {
        if key.fields.contains(field) && !fields.contains_key(field) {
            fields.insert(field, json!(default));
        }
    }
    format!("k:{}", serde_json::to_string(&fields).unwrap_or_default())
}

/// The value at `path` in `value`.
fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| step(v, seg))
}

fn step<'a>(value: &'a Value, seg: &str) -> Option<&'a Value> {
    if let Some(field) = seg.strip_prefix("f:") {
        return value.as_object()?.get(field);
    }
    let items = value.as_array()?;
    items.iter().find(|e| element_is(e, seg))
}

/// Whether list element `e` is the one segment `seg` (`k:` or `v:`) names. A key field
/// the element lacks matches (a default the live object left out), as long as one
/// field matches.
fn element_is(e: &Value, seg: &str) -> bool {
    if let Some(key) = seg.strip_prefix("k:") {
        let Ok(Value::Object(key)) = serde_json::from_str::<Value>(key) else {
            return false;
        };
        let Some(obj) = e.as_object() else {
            return false;
        };
        let mut matched = false;
        for (f, want) in &key {
            match obj.get(f) {
                Some(have) if have == want => matched = true,
                Some(_) => return false,
                None => {}
            }
        }
        return matched;
    }
    if let Some(v) = seg.strip_prefix("v:") {
        return serde_json::from_str::<Value>(v).is_ok_and(|v| v == *e);
    }
    false
}

/// Removes the field `path` names; containers left empty by the removal go too.
fn remove_path(value: &mut Value, path: &[String]) -> bool {
    let Some((seg, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return remove_child(value, seg);
    }
    let child = if let Some(field) = seg.strip_prefix("f:") {
        value.as_object_mut().and_then(|m| m.get_mut(field))
    } else {
        value
            .as_array_mut()
            .and_then(|items| items.iter_mut().find(|e| element_is(e, seg)))
    };
    let Some(child) = child else {
        return false;
    };
    if !remove_path(child, rest) {
        return false;
    }
    let emptied = match child {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if emptied {
        remove_child(value, seg);
    }
    true
}

fn remove_child(value: &mut Value, seg: &str) -> bool {
    if let Some(field) = seg.strip_prefix("f:") {
        return value
            .as_object_mut()
            .is_some_and(|m| m.shift_remove(field).is_some());
    }
    let Some(items) = value.as_array_mut() else {
        return false;
    };
    let before = items.len();
    items.retain(|e| !element_is(e, seg));
    items.len() != before
}

/// One entry of `metadata.managedFields`.
struct Entry {
    raw: Value,
    manager: String,
    operation: String,
    subresource: String,
    /// `None` when its `fieldsV1` is not readable: kept, but owns nothing.
    fields: Option<FieldSet>,
    /// Fields were taken from it (a forced apply).
    changed: bool,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

fn managed_entries(obj: &Value) -> Vec<Entry> {
    let Some(Value::Array(list)) = obj.pointer("/metadata/managedFields") else {
        return Vec::new();
    };
    let text = |e: &Value, f: &str| e.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    list.iter()
        .filter(|e| e.is_object())
        .map(|e| Entry {
            raw: e.clone(),
            manager: text(e, "manager"),
            operation: text(e, "operation"),
            subresource: text(e, "subresource"),
            fields: e
                .get("fieldsV1")
                .filter(|_| text(e, "fieldsType") == "FieldsV1")
                .and_then(FieldSet::from_fields_v1),
            changed: false,
        })
        .collect()
}

fn new_entry(kind: &ResourceKind, applier: &Applier, fields: &FieldSet) -> Value {
    let mut entry = json!({
        "manager": applier.manager,
        "operation": OPERATION,
        "apiVersion": kind.api_version(),
        "time": applier.now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields.to_fields_v1(),
    });
    if let Some(sub) = applier.subresource {
        entry["subresource"] = json!(sub);
    }
    entry
}

fn set_managed_fields(obj: &mut Value, entries: Vec<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.shift_remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.shift_remove("managedFields");
    }
    obj
}

/// `Apply failed with 2 conflicts: conflicts with "a" using apps/v1: .spec.replicas, ...`
fn conflict_message(entries: &[Entry], conflicts: &[(usize, Vec<String>)]) -> String {
    let mut by_manager: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, path) in conflicts {
        let shown = show_path(path);
        match by_manager.iter_mut().find(|(j, _)| j == i) {
            Some((_, paths)) => paths.push(shown),
            None => by_manager.push((*i, vec![shown])),
        }
    }
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(i, paths)| {
            let entry = &entries[*i];
            let api_version = entry
                .raw
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            format!(
                "conflict{} with {:?} using {api_version}: {}",
                if paths.len() > 1 { "s" } else { "" },
                entry.manager,
                paths.join(", ")
            )
        })
        .collect();
    format!(
        "Apply failed with {} conflict{}: {}; apply with force=true to take ownership of the field{}",
        conflicts.len(),
        if conflicts.len() > 1 { "s" } else { "" },
        parts.join("; "),
        if conflicts.len() > 1 { "s" } else { "" },
    )
}

/// `.spec.template.spec.containers[name="app"].image`
fn show_path(path: &[String]) -> String {
    path.iter()
        .map(|seg| {
            if let Some(f) = seg.strip_prefix("f:") {
                format!(".{f}")
            } else if seg.starts_with("k:") {
                key_display(seg)
            } else if let Some(v) = seg.strip_prefix("v:") {
                format!("[={v}]")
            } else {
                format!(".{seg}")
            }
        })
        .collect()
}

fn key_display(seg: &str) -> String {
    let fields = seg
        .strip_prefix("k:")
        .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
        .map(|m| {
            m.iter()
                .map(|(f, v)| format!("{f}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    format!("[{fields}]")
}

#[cfg(test)]
mod tests {

    /// A create owns every field it set; an update takes what it changes from everyone,
    /// and fields that go away are no one's.
    #[test]
    fn updates_own_what_they_write() {
        let cm = crate::api::kinds::resolve("configmap").expect("configmaps");
        let mut created = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "uid": "u", "labels": {"a": "1"}},
            "data": {"x": "1", "y": "2"}});
        record_update(cm, None, &mut created, "alice", None, "T1");
        let entries = created["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .clone();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "alice");
        assert_eq!(entries[0]["operation"], "Update");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:data": {"f:x": {}, "f:y": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
        );
        let mut updated = created.clone();
        updated["data"] = json!({"x": "changed"});
        record_update(cm, Some(&created), &mut updated, "bob", None, "T2");
        let entries = updated["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .clone();
        let fields = |m: &str| {
            entries
                .iter()
                .find(|e| e["manager"] == m)
                .map(|e| e["fieldsV1"].clone())
        };
        assert_eq!(
            fields("alice"),
            Some(json!({"f:metadata": {"f:labels": {"f:a": {}}}}))
        );
        assert_eq!(fields("bob"), Some(json!({"f:data": {"f:x": {}}})));
        // Writing the same again changes nothing, not even the time.
        let mut again = updated.clone();
        record_update(cm, Some(&updated), &mut again, "bob", None, "T3");
        assert_eq!(again, updated);
    }

    /// `sets` (one path walked) says what the whole field set of the object says, for
    /// every field and every prefix of one, through keyed lists, sets, replaced lists,
    /// nulls and empty maps.
    #[test]
    fn one_path_walked_agrees_with_the_whole_field_set() {
        let pod = resolve("pod").expect("pods");
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "1", "gone": null},
                "finalizers": ["x/y", "z"], "annotations": {}},
            "spec": {"nodeName": null, "containers": [
                {"name": "c", "image": "i", "args": ["--a", "b"],
                 "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                 "env": [{"name": "E", "value": "v"}, {"name": "F", "value": null}],
                 "resources": {"limits": {"memory": null}}},
                null,
                {"name": "d", "image": "j", "ports": []}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let all = FieldSet::of(pod, &without_nulls(&obj)).expect("fields");
        let mut asked: BTreeSet<Vec<String>> = BTreeSet::new();
        for path in &all.0 {
            for end in 1..=path.len() {
                asked.insert(path[..end].to_vec());
            }
        }
        let made_up = [
            vec!["f:spec", "f:nodeName"],
            vec!["f:metadata", "f:labels", "f:gone"],
            vec!["f:spec", "f:containers", "k:{\"name\":\"e\"}"],
            vec![
                "f:spec",
                "f:containers",
                "k:{\"name\":\"c\"}",
                "f:resources",
                "f:limits",
                "f:memory",
            ],
            vec!["f:metadata", "f:finalizers", "v:\"w\""],
            vec!["f:spec", "f:containers", "i:0"],
            vec!["f:nothing"],
        ];
        for path in made_up {
            let path: Vec<String> = path.into_iter().map(String::from).collect();
            assert!(!all.0.contains(&path), "{path:?} is made up");
            asked.insert(path);
        }
        assert!(asked.len() > all.0.len() + 10, "prefixes were asked too");
        for path in &asked {
            assert_eq!(
                sets(pod, &obj, path),
                all.0.contains(path),
                "{path:?} in {all:?}"
            );
        }
        assert!(sets(
            pod,
            &obj,
            &[
                "f:spec".into(),
                "f:containers".into(),
                "k:{\"name\":\"c\"}".into(),
                "f:ports".into(),
                "k:{\"containerPort\":80,\"protocol\":\"TCP\"}".into()
            ]
        ));
    }

    /// A create's entry made in one walk is the one the general comparison makes, for
    /// objects with keyed lists, sets, replaced lists, nulls and empty maps, on the main
    /// resource and on the status; objects the field set refuses are left as they were.
    #[test]
    fn a_create_records_what_the_general_comparison_records() {
        let pod = resolve("pod").expect("pods");
        let cm = resolve("configmap").expect("configmaps");
        let objects = [
            (
                pod,
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "uid": "u", "labels": {"a": "1", "b": null},
                    "finalizers": ["x/y", "z"], "annotations": {}},
                "spec": {"containers": [
                    {"name": "c", "image": "i", "args": ["--a", "b"],
                     "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                     "env": [{"name": "E", "value": "v"}, {"name": "F", "value": null}],
                     "resources": {"limits": {"memory": null}}},
                    {"name": "d", "image": "j", "ports": []}]},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled"}]}}),
            ),
            (
                cm,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "n"}, "data": {"x": "1", "y": ""}}),
            ),
            (
                cm,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "e"}}),
            ),
            // Two containers with one name: the field set refuses it.
            (
                pod,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d"},
                "spec": {"containers": [{"name": "c"}, {"name": "c"}]}}),
            ),
        ];
        for (kind, obj) in objects {
            for sub in [None, Some("status")] {
                let mut fast = obj.clone();
                record_update(kind, None, &mut fast, "m", sub, "T");
                let mut general = obj.clone();
                record_changes(kind, None, &mut general, "m", sub, "T");
                assert_eq!(fast, general, "{sub:?} {obj}");
            }
        }
        let mut refused = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d"},
            "spec": {"containers": [{"name": "c"}, {"name": "c"}]}});
        let before = refused.clone();
        record_update(pod, None, &mut refused, "m", None, "T");
        assert_eq!(refused, before);
        let mut created = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"x": "1"}});
        record_update(cm, None, &mut created, "m", None, "T");
        assert_eq!(
            created["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:x": {}}})
        );
    }

    /// A status write owns the status fields it changed and leaves the spec's owner as it
    /// was; a later update that drops a container field takes it from that owner.
    #[test]
    fn status_writes_own_the_status_alone() {
        let pod = resolve("pod").expect("pods");
        let mut created = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["a"]}]}});
        record_update(pod, None, &mut created, "alice", None, "T1");
        let alice = created["metadata"]["managedFields"][0]["fieldsV1"].clone();
        assert_eq!(
            alice,
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                "f:args": {}, "f:image": {}, "f:name": {}}}}})
        );
        let mut running = created.clone();
        running["status"] = json!({"phase": "Running", "podIP": "127.64.0.2"});
        record_update(
            pod,
            Some(&created),
            &mut running,
            "node",
            Some("status"),
            "T2",
        );
        let entries = running["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["fieldsV1"], alice);
        assert_eq!(entries[1]["manager"], "node");
        assert_eq!(entries[1]["subresource"], "status");
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:status": {"f:phase": {}, "f:podIP": {}}})
        );
        let mut updated = running.clone();
        updated["spec"]["containers"][0]
            .as_object_mut()
            .expect("container")
            .remove("args");
        record_update(pod, Some(&running), &mut updated, "bob", None, "T3");
        let entries = updated["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(
            entries[1]["manager"], "node",
            "the status owner is untouched"
        );
    }
    use super::*;
    use crate::api::kinds::resolve;

    fn deploy() -> &'static ResourceKind {
        resolve("deploy").expect("deploy")
    }

    fn applier(manager: &str) -> Applier<'_> {
        Applier {
            manager,
            force: false,
            subresource: None,
            now: "2030-01-01T00:00:00Z",
        }
    }

    fn config(replicas: Option<i64>, containers: Value) -> Value {
        let mut c = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": containers}}}});
        if let Some(r) = replicas {
            c["spec"]["replicas"] = json!(r);
        }
        c
    }

    /// The stored object after a create: what the server adds (identity, a default).
    fn stored(obj: Value) -> Value {
        let mut obj = obj;
        obj["metadata"]["uid"] = json!("u1");
        obj["metadata"]["resourceVersion"] = json!("7");
        obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        obj
    }

    fn managers(obj: &Value) -> Vec<String> {
        obj.pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|e| e["manager"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn bodies_are_json_or_one_yaml_document() {
        let json_body = br#"{"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "yes"}}"#;
        assert_eq!(
            parse_body(json_body).expect("json")["data"]["a"],
            json!("yes")
        );
        let yaml = b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: yes\n  b: on\n  n: '1'\nx: 3\n";
        let v = parse_body(yaml).expect("yaml");
        assert_eq!(v["data"], json!({"a": "yes", "b": "on", "n": "1"}));
        assert_eq!(v["x"], json!(3));
        assert!(parse_body(b"").is_err());
        assert!(parse_body(b"- a\n- b\n").is_err());
        assert!(parse_body(b"a: [").is_err());
        assert!(parse_body(b"{\"a\": ").is_err());
        assert_eq!(
            parse_body(b"{kind: ConfigMap, data: {a: on}}").expect("flow YAML"),
            json!({"kind": "ConfigMap", "data": {"a": "on"}})
        );
        assert!(parse_body(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn managers_are_required_and_bounded() {
        assert!(check_manager(None).is_err());
        assert!(check_manager(Some("")).is_err());
        assert!(check_manager(Some(&"m".repeat(129))).is_err());
        assert!(check_manager(Some("a\nb")).is_err());
        assert_eq!(check_manager(Some("kubectl")), Ok("kubectl"));
    }

    #[test]
    fn field_sets_use_the_kubernetes_format() {
        let c = config(
            Some(2),
            json!([{"name": "app", "image": "a.wasm", "ports": [{"containerPort": 80}],
                    "args": ["x"]}]),
        );
        let created = create(deploy(), "web", &c, &applier("m")).expect("create");
        let entry = &created["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "m");
        assert_eq!(entry["operation"], "Apply");
        assert_eq!(entry["apiVersion"], "apps/v1");
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(entry["time"], "2030-01-01T00:00:00Z");
        assert_eq!(
            entry["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {"f:matchLabels": {"f:app": {}}},
                    "f:template": {
                        "f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                            ".": {},
                            "f:args": {},
                            "f:image": {},
                            "f:name": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}}}}}}}}})
        );
        let set = FieldSet::from_fields_v1(&entry["fieldsV1"]).expect("readable");
        assert_eq!(set.to_fields_v1(), entry["fieldsV1"]);
        assert_eq!(
            set,
            FieldSet::of(deploy(), &{
                let mut m = c.clone();
                m.as_object_mut().map(|o| {
                    o.shift_remove("apiVersion");
                    o.shift_remove("kind")
                });
                m["metadata"]
                    .as_object_mut()
                    .map(|o| o.shift_remove("name"));
                m
            })
            .expect("set")
        );
        assert!(FieldSet::from_fields_v1(&json!({"spec": {}})).is_none());
        // Name, kind and apiVersion are the object's, not a manager's.
        assert_eq!(created["metadata"]["name"], "web");
        assert_eq!(created["kind"], "Deployment");
    }

    #[test]
    fn applying_again_changes_nothing_and_dropping_a_field_removes_it() {
        let c = config(
            Some(2),
            json!([{"name": "app", "image": "a.wasm",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]),
        );
        let live = stored(create(deploy(), "web", &c, &applier("m")).expect("create"));
        let later = Applier {
            now: "2031-01-01T00:00:00Z",
            ..applier("m")
        };
        let again = apply(deploy(), &live, &c, &later).expect("apply");
        assert_eq!(again, live, "nothing changes, not even the entry's time");

        let mut changed = c.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b.wasm");
        let out = apply(deploy(), &live, &changed, &later).expect("apply");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "b.wasm"
        );
        assert_eq!(
            out["metadata"]["managedFields"][0]["time"],
            "2031-01-01T00:00:00Z"
        );
        // The server's default stays: nobody applied it.
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );

        // Drop replicas, env B and the label: they go; add env C.
        let dropped = {
            let mut d = config(
                None,
                json!([{"name": "app", "image": "b.wasm",
                        "env": [{"name": "C", "value": "3"}, {"name": "A", "value": "1"}]}]),
            );
            d["metadata"]
                .as_object_mut()
                .map(|m| m.shift_remove("labels"));
            d
        };
        let out = apply(deploy(), &out, &dropped, &later).expect("apply");
        assert!(out["spec"].get("replicas").is_none(), "{out}");
        assert!(
            out["metadata"].get("labels").is_none(),
            "emptied maps go: {out}"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "C", "value": "3"}, {"name": "A", "value": "1"}])
        );
        assert_eq!(out["metadata"]["uid"], "u1");
    }

    #[test]
    fn dropping_a_container_removes_it_whole() {
        let two = config(
            None,
            json!([{"name": "app", "image": "a"}, {"name": "side", "image": "s"}]),
        );
        let live = stored(create(deploy(), "web", &two, &applier("m")).expect("create"));
        let one = config(None, json!([{"name": "app", "image": "a"}]));
        let out = apply(deploy(), &live, &one, &applier("m")).expect("apply");
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(1));
        assert_eq!(containers[0]["name"], "app");
    }

    #[test]
    fn other_appliers_conflict_share_and_are_overruled_by_force() {
        let c = config(Some(2), json!([{"name": "app", "image": "a"}]));
        let live = stored(create(deploy(), "web", &c, &applier("alice")).expect("create"));

        // Bob sets replicas to another value: a conflict naming the field and alice.
        let bob_config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = apply(deploy(), &live, &bob_config, &applier("bob")).expect_err("conflict");
        let ApplyError::Conflict(message) = err else {
            panic!("not a conflict: {err:?}")
        };
        assert_eq!(
            message,
            "Apply failed with 1 conflict: conflict with \"alice\" using apps/v1: .spec.replicas; \
             apply with force=true to take ownership of the field"
        );
        // A conflict on a field inside a container names it by key.
        let bob_image = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 5, "template": {"spec": {
                "containers": [{"name": "app", "image": "b"}]}}}});
        let ApplyError::Conflict(message) =
            apply(deploy(), &live, &bob_image, &applier("bob")).expect_err("conflict")
        else {
            panic!("not a conflict")
        };
        assert!(
            message.contains(
                "conflicts with \"alice\" using apps/v1: .spec.replicas, .spec.template.spec.containers[name=\"app\"].image"
            ),
            "{message}"
        );

        // The same value is shared: no conflict, both own it.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = apply(deploy(), &live, &same, &applier("bob")).expect("shared");
        assert_eq!(managers(&shared), ["alice", "bob"]);
        // Alice drops replicas; bob still holds it, so it stays.
        let without = config(None, json!([{"name": "app", "image": "a"}]));
        let kept = apply(deploy(), &shared, &without, &applier("alice")).expect("apply");
        assert_eq!(kept["spec"]["replicas"], 2);

        // Forced, bob takes replicas from alice.
        let forced = Applier {
            force: true,
            ..applier("bob")
        };
        let out = apply(deploy(), &live, &bob_config, &forced).expect("forced");
        assert_eq!(out["spec"]["replicas"], 5);
        let alice = FieldSet::from_fields_v1(&out["metadata"]["managedFields"][0]["fieldsV1"])
            .expect("alice's set");
        assert!(
            !alice
                .0
                .contains(&vec!["f:spec".to_string(), "f:replicas".to_string()])
        );
        assert!(alice.0.contains(&vec![
            "f:metadata".into(),
            "f:labels".into(),
            "f:app".into()
        ]));
        // Alice applying her old config now conflicts with bob.
        let ApplyError::Conflict(message) =
            apply(deploy(), &out, &c, &applier("alice")).expect_err("conflict")
        else {
            panic!("not a conflict")
        };
        assert!(message.contains("\"bob\""), "{message}");
        // A manager left with nothing is dropped.
        let only = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 1}});
        let live_only = stored(create(deploy(), "web", &c, &applier("alice")).expect("create"));
        let small = apply(deploy(), &live_only, &only, &applier("alice")).expect("apply");
        let taken = apply(deploy(), &small, &bob_config, &forced).expect("forced");
        assert_eq!(managers(&taken), ["bob"]);
    }

    #[test]
    fn ports_match_with_and_without_the_default_protocol() {
        let svc = resolve("svc").expect("svc");
        let c = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let mut live = create(svc, "s", &c, &applier("m")).expect("create");
        live["spec"]["ports"][0]["protocol"] = json!("TCP");
        let again = apply(svc, &live, &c, &applier("m")).expect("apply");
        assert_eq!(again, live);
        let other = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 9090}]}});
        assert!(matches!(
            apply(svc, &live, &other, &applier("n")),
            Err(ApplyError::Conflict(_))
        ));
    }

    #[test]
    fn status_is_applied_only_through_the_status_subresource() {
        let c = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1}, "status": {"replicas": 3}});
        let main = create(deploy(), "web", &c, &applier("m")).expect("create");
        assert!(main.get("status").is_none());
        let status = Applier {
            subresource: Some("status"),
            ..applier("m")
        };
        let out = apply(deploy(), &main, &c, &status).expect("status apply");
        assert_eq!(out["status"]["replicas"], 3);
        let entries = out["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["subresource"], "status");
        assert_eq!(
            entries[1]["fieldsV1"],
            json!({"f:status": {"f:replicas": {}}})
        );
    }

    #[test]
    fn malformed_configurations_are_refused_with_the_place() {
        let bad = |c: Value| match create(deploy(), "web", &c, &applier("m")) {
            Err(ApplyError::Malformed(m)) => m,
            other => panic!("accepted: {other:?}"),
        };
        let m = bad(json!({"kind": "Deployment", "metadata": {"name": "web"}}));
        assert!(m.starts_with("apiVersion: Required value"), "{m}");
        let m = bad(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": [{"image": "a"}]}}}}));
        assert!(m.starts_with("spec.template.spec.containers[0]: "), "{m}");
        assert!(m.contains("merge key \"name\""), "{m}");
        let m = bad(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}}));
        assert!(
            m.starts_with("spec.template.spec.containers[1]: duplicate"),
            "{m}"
        );
        let m = bad(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"$setElementOrder/containers": []}}}}));
        assert!(
            m.starts_with("spec.template.spec.$setElementOrder/containers: "),
            "{m}"
        );
        let m = bad(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "managedFields": [{}]}}));
        assert_eq!(m, "metadata.managedFields must be nil");
        let m = bad(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "other"}}));
        assert!(m.contains("does not match the name on the URL"), "{m}");
    }
}
