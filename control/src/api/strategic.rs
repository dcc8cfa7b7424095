//! Strategic merge patch (`application/strategic-merge-patch+json`), the patch kubectl
//! (`apply`, `edit`, `set image`, `taint`...) and the Kubernetes client libraries send
//! for built-in kinds.
//!
//! It is a JSON merge patch (RFC 7386: objects merge, `null` deletes a key, scalars
//! replace) except for lists: a JSON merge patch can only replace a list whole, so a
//! patch could never change one container's image without restating every container.
//! Here a list declared with a *merge key* merges element by element (containers by
//! `name`, conditions by `type`...), a list declared as a *set* of scalars (finalizers)
//! takes the union, and every other list is replaced. Which list is which is what the
//! Kubernetes API types declare (`patchStrategy` / `patchMergeKey`); wharf keeps that
//! knowledge in one table, [`section_for`], a tree of the API structs that contain such
//! lists, so that adding a field is one line.
//!
//! The patch may carry directives, all of them handled here:
//!
//! - `$patch: replace | merge | delete` on a map (replace it with the rest of the patch,
//!   merge as usual, remove the field) and as a list element (`{"$patch": "replace"}`
//!   replaces the whole list with the other elements; `{"$patch": "delete", "name": "x"}`
//!   removes the element with that key; `{"$patch": "merge"}` asks for the default);
//! - `$setElementOrder/FIELD`: the order the merged list should have (kubectl sends the
//!   order of the manifest); elements only the server has keep their place between them;
//! - `$retainKeys`: the fields of a map to keep; every other field of the live map goes
//!   (a Deployment's `strategy` switching from RollingUpdate to Recreate);
//! - `$deleteFromPrimitiveList/FIELD`: values to remove from a set of scalars.
//!
//! [`strategic_merge`] is pure: the live object and the patch in, the patched object (or
//! a [`PatchError`] naming the field path of what is malformed) out.

use super::kinds::ResourceKind;
use serde_json::{Map, Value};
use std::fmt;

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole by the patch's list (the default for lists not in the table).
    Replace,
    /// A set of scalars: the patch's values are added, `$deleteFromPrimitiveList`
    /// removes values.
    Set,
    /// Objects merged element by element, matched by these fields. The first is the
    /// merge key every element must carry; the others (a port's `protocol`, a spread
    /// constraint's `whenUnsatisfiable`) narrow the match when both sides have them, so
    /// a patch that leaves out a defaulted `protocol: TCP` still finds its port.
    Keyed(&'static [&'static str]),
}

use ListStrategy::{Keyed, Replace, Set};

/// The list fields of one API struct, and the structs nested in it that have some.
/// Paths are dot-separated and relative to where the section applies; the elements of a
/// list add no segment (`containers.env` is the env of every container).
pub struct Section {
    pub lists: &'static [(&'static str, ListStrategy)],
    pub nested: &'static [(&'static str, &'static Section)],
}

const NAME: ListStrategy = Keyed(&["name"]);
const TYPE: ListStrategy = Keyed(&["type"]);
const IP: ListStrategy = Keyed(&["ip"]);

/// `metadata` of every object and of pod templates.
static OBJECT_META: Section = Section {
    lists: &[
        ("finalizers", Set),
        ("ownerReferences", Keyed(&["uid"])),
        ("managedFields", Replace),
    ],
    nested: &[],
};

/// Containers, init containers and ephemeral containers.
static CONTAINER: Section = Section {
    lists: &[
        ("ports", Keyed(&["containerPort", "protocol"])),
        ("env", NAME),
        ("envFrom", Replace),
        ("volumeMounts", Keyed(&["mountPath"])),
        ("volumeDevices", Keyed(&["devicePath"])),
        ("resizePolicy", Replace),
        ("command", Replace),
        ("args", Replace),
    ],
    nested: &[],
};

static POD_SPEC: Section = Section {
    lists: &[
        ("containers", NAME),
        ("initContainers", NAME),
        ("ephemeralContainers", NAME),
        ("volumes", NAME),
        ("imagePullSecrets", NAME),
        ("hostAliases", IP),
        (
            "topologySpreadConstraints",
            Keyed(&["topologyKey", "whenUnsatisfiable"]),
        ),
        ("tolerations", Replace),
        ("readinessGates", Replace),
        ("resourceClaims", NAME),
        ("schedulingGates", NAME),
    ],
    nested: &[
        ("containers", &CONTAINER),
        ("initContainers", &CONTAINER),
        ("ephemeralContainers", &CONTAINER),
    ],
};

static POD_STATUS: Section = Section {
    lists: &[
        ("conditions", TYPE),
        ("podIPs", IP),
        ("hostIPs", IP),
        ("containerStatuses", Replace),
        ("initContainerStatuses", Replace),
        ("ephemeralContainerStatuses", Replace),
        ("resourceClaimStatuses", NAME),
    ],
    nested: &[],
};

static POD_TEMPLATE: Section = Section {
    lists: &[],
    nested: &[("metadata", &OBJECT_META), ("spec", &POD_SPEC)],
};

/// Kinds with no list of their own to merge: only `metadata` has some.
pub static PLAIN: Section = Section {
    lists: &[],
    nested: &[("metadata", &OBJECT_META)],
};

pub static NAMESPACE: Section = Section {
    lists: &[("spec.finalizers", Replace), ("status.conditions", TYPE)],
    nested: &[("metadata", &OBJECT_META)],
};

pub static POD: Section = Section {
    lists: &[],
    nested: &[
        ("metadata", &OBJECT_META),
        ("spec", &POD_SPEC),
        ("status", &POD_STATUS),
    ],
};

pub static SERVICE: Section = Section {
    lists: &[
        ("spec.ports", Keyed(&["port", "protocol"])),
        ("spec.clusterIPs", Replace),
        ("spec.externalIPs", Replace),
        ("spec.ipFamilies", Replace),
        ("status.conditions", TYPE),
        ("status.loadBalancer.ingress", Replace),
    ],
    nested: &[("metadata", &OBJECT_META)],
};

pub static ENDPOINTS: Section = Section {
    lists: &[("subsets", Replace)],
    nested: &[("metadata", &OBJECT_META)],
};

pub static NODE: Section = Section {
    lists: &[
        ("spec.podCIDRs", Set),
        // No merge key in the Kubernetes types: `kubectl taint` sends the whole list,
        // so a taint it removes must go.
        ("spec.taints", Replace),
        ("status.conditions", TYPE),
        ("status.addresses", TYPE),
        ("status.images", Replace),
        ("status.volumesInUse", Replace),
        ("status.volumesAttached", Replace),
    ],
    nested: &[("metadata", &OBJECT_META)],
};

/// Deployments, ReplicaSets and DaemonSets.
pub static WORKLOAD: Section = Section {
    lists: &[("status.conditions", TYPE)],
    nested: &[("metadata", &OBJECT_META), ("spec.template", &POD_TEMPLATE)],
};

pub static JOB: Section = Section {
    lists: &[
        ("status.conditions", TYPE),
        ("spec.podFailurePolicy.rules", Replace),
    ],
    nested: &[("metadata", &OBJECT_META), ("spec.template", &POD_TEMPLATE)],
};

/// CronJobs: the pod template inside the job template.
pub static CRON_JOB: Section = Section {
    lists: &[("status.active", Replace)],
    nested: &[
        ("metadata", &OBJECT_META),
        ("spec.jobTemplate.metadata", &OBJECT_META),
        ("spec.jobTemplate.spec.template", &POD_TEMPLATE),
    ],
};

/// PodDisruptionBudgets: conditions by type.
pub static PDB: Section = Section {
    lists: &[("status.conditions", TYPE)],
    nested: &[("metadata", &OBJECT_META)],
};

pub static ENDPOINT_SLICE: Section = Section {
    lists: &[("endpoints", Replace), ("ports", Replace)],
    nested: &[("metadata", &OBJECT_META)],
};

/// The merge rules of a kind's objects, as its strategy names them
/// ([`merge_rules`](crate::apiserver::registry::Strategy::merge_rules)).
pub fn section_for(kind: &ResourceKind) -> &'static Section {
    kind.strategy.merge_rules()
}

/// How the list at `path` (dot-separated field names from the object's root, no list
/// indices) is patched in objects of `kind`.
pub fn list_strategy(kind: &ResourceKind, path: &str) -> ListStrategy {
    strategy_in(section_for(kind), path).unwrap_or(Replace)
}

fn strategy_in(section: &Section, path: &str) -> Option<ListStrategy> {
    if let Some((_, s)) = section.lists.iter().find(|(p, _)| *p == path) {
        return Some(*s);
    }
    section.nested.iter().find_map(|(prefix, sub)| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| strategy_in(sub, rest))
    })
}

/// A malformed patch: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PatchError {
    /// Where, as `spec.template.spec.containers[1]`; empty for the patch itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Where the merge is: `schema` (field names only) finds the list rules, `shown` (with
/// indices) names the place in errors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Path {
    pub schema: String,
    pub shown: String,
}

impl Path {
    pub fn field(&self, name: &str) -> Path {
        let join = |base: &str| {
            if base.is_empty() {
                name.to_string()
            } else {
                format!("{base}.{name}")
            }
        };
        Path {
            schema: join(&self.schema),
            shown: join(&self.shown),
        }
    }

    pub fn index(&self, i: usize) -> Path {
        Path {
            schema: self.schema.clone(),
            shown: format!("{}[{i}]", self.shown),
        }
    }

    pub fn error(&self, message: impl Into<String>) -> PatchError {
        PatchError {
            path: self.shown.clone(),
            message: message.into(),
        }
    }
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `current`, an object of `kind`.
pub fn strategic_merge(
    kind: &ResourceKind,
    current: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(Path::default().error("a strategic merge patch must be a JSON object"));
    };
    let original = match current {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let merger = Merger {
        section: section_for(kind),
    };
    match merger.merge_map(original, patch, &Path::default())? {
        Some(map) => Ok(Value::Object(map)),
        None => Err(Path::default().error(format!(
            "{PATCH}: delete cannot delete the whole object; use DELETE"
        ))),
    }
}

struct Merger {
    section: &'static Section,
}

impl Merger {
    fn strategy(&self, path: &Path) -> ListStrategy {
        strategy_in(self.section, &path.schema).unwrap_or(Replace)
    }

    /// Merges `patch` into `original`; `None` when the patch deletes the map.
    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
        path: &Path,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        if let Some(directive) = patch.get(PATCH) {
            match directive.as_str() {
                Some("delete") => return Ok(None),
                Some("replace") => original.clear(),
                Some("merge") => {}
                _ => {
                    return Err(path.field(PATCH).error(format!(
                        "unknown directive {directive}: expected \"replace\", \"merge\" or \"delete\""
                    )));
                }
            }
        }
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let at = path.field(RETAIN_KEYS);
            let keys = strings(retain).ok_or_else(|| at.error("must be a list of field names"))?;
            for (k, v) in patch {
                if !k.starts_with('$') && !v.is_null() && !keys.contains(&k.as_str()) {
                    return Err(path.field(k).error(format!(
                        "the field is set but not listed in {RETAIN_KEYS} {keys:?}"
                    )));
                }
            }
            original.retain(|k, _| keys.contains(&k.as_str()));
        }
        for (k, v) in patch {
            let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
                continue;
            };
            let at = path.field(k);
            if field.is_empty() {
                return Err(at.error("the directive names no field"));
            }
            let Value::Array(gone) = v else {
                return Err(at.error("must be a list of the values to delete"));
            };
            match original.get_mut(field) {
                Some(Value::Array(list)) => list.retain(|x| !gone.contains(x)),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(at.error(format!("{field} is not a list in the object")));
                }
            }
        }
        for (k, v) in patch {
            if k.starts_with('$') {
                check_directive(k, path)?;
                continue;
            }
            let at = path.field(k);
            match v {
                Value::Null => {
                    original.shift_remove(k);
                }
                Value::Object(p) => {
                    let base = match original.get_mut(k).map(std::mem::take) {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    match self.merge_map(base, p, &at)? {
                        Some(m) => {
                            original.insert(k.clone(), Value::Object(m));
                        }
                        None => {
                            original.shift_remove(k);
                        }
                    }
                }
                Value::Array(p) => {
                    let base = match original.get_mut(k).map(std::mem::take) {
                        Some(Value::Array(a)) => a,
                        _ => Vec::new(),
                    };
                    let order = patch.get(&format!("{SET_ELEMENT_ORDER}{k}"));
                    let merged = self.merge_list(base, p, order, &at)?;
                    original.insert(k.clone(), Value::Array(merged));
                }
                scalar => {
                    original.insert(k.clone(), scalar.clone());
                }
            }
        }
        // An order for a list the patch does not otherwise touch.
        for (k, order) in patch {
            let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) else {
                continue;
            };
            if field.is_empty() {
                return Err(path.field(k).error("the directive names no field"));
            }
            if patch.contains_key(field) {
                continue;
            }
            if let Some(Value::Array(list)) = original.get_mut(field) {
                let base = std::mem::take(list);
                *list = self.merge_list(base, &[], Some(order), &path.field(field))?;
            }
        }
        Ok(Some(original))
    }

    /// Merges the list `patch` into `original` by the rule for `path`.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: &[Value],
        order: Option<&Value>,
        path: &Path,
    ) -> Result<Vec<Value>, PatchError> {
        let strategy = self.strategy(path);
        let mut replace = false;
        let mut merge = false;
        let mut deletes = Vec::new();
        let mut items = Vec::new();
        for (i, element) in patch.iter().enumerate() {
            let Some(directive) = element.as_object().and_then(|o| o.get(PATCH)) else {
                items.push((i, element));
                continue;
            };
            match directive.as_str() {
                Some("replace") => replace = true,
                Some("delete") => deletes.push(i),
                // `{"$patch": "merge"}` alone asks for the default; with fields it is an
                // element like any other.
                Some("merge") if element.as_object().is_some_and(|o| o.len() == 1) => merge = true,
                Some("merge") => items.push((i, element)),
                _ => {
                    return Err(path.index(i).field(PATCH).error(format!(
                        "unknown directive {directive}: expected \"replace\", \"merge\" or \"delete\""
                    )));
                }
            }
        }
        let field = path.shown.rsplit('.').next().unwrap_or_default();
        match strategy {
            Replace => {
                if let Some(&i) = deletes.first() {
                    return Err(path.index(i).error(format!(
                        "{PATCH}: delete needs a merge key, and {field} has none: send the whole list"
                    )));
                }
                if merge && !replace {
                    if items.iter().all(|(_, e)| !e.is_object() && !e.is_array()) {
                        return self.merge_set(original, &items, order, path);
                    }
                    return Err(path.error(format!(
                        "{PATCH}: merge: {field} has no merge key, so it can only be replaced"
                    )));
                }
                items
                    .into_iter()
                    .map(|(i, e)| self.fresh(e, &path.index(i)))
                    .collect()
            }
            Set => {
                if let Some(&i) = deletes.first() {
                    return Err(path.index(i).error(format!(
                        "{field} is a list of values: remove values with {DELETE_FROM_PRIMITIVE_LIST}{field}"
                    )));
                }
                let base = if replace { Vec::new() } else { original };
                self.merge_set(base, &items, order, path)
            }
            Keyed(keys) => {
                let mut merged = if replace {
                    Vec::new()
                } else {
                    original.clone()
                };
                for &i in &deletes {
                    let key = element_key(&patch[i], keys, &path.index(i))?;
                    merged.retain(|e| !key.matches(e));
                }
                let mut patched = Vec::with_capacity(items.len());
                for (i, element) in items {
                    let at = path.index(i);
                    let key = element_key(element, keys, &at)?;
                    let Some(p) = element.as_object() else {
                        return Err(at.error("must be an object"));
                    };
                    match merged.iter().position(|e| key.matches(e)) {
                        Some(pos) => {
                            let base = match std::mem::take(&mut merged[pos]) {
                                Value::Object(m) => m,
                                _ => Map::new(),
                            };
                            match self.merge_map(base, p, &at)? {
                                Some(m) => merged[pos] = Value::Object(m),
                                None => {
                                    merged.remove(pos);
                                }
                            }
                        }
                        None => {
                            if let Some(m) = self.merge_map(Map::new(), p, &at)? {
                                merged.push(Value::Object(m));
                            }
                        }
                    }
                    patched.push(key);
                }
                let Some(order) = order else {
                    return Ok(merged);
                };
                let at = order_path(path);
                let Value::Array(order) = order else {
                    return Err(at.error("must be a list"));
                };
                let wanted = order
                    .iter()
                    .enumerate()
                    .map(|(i, o)| element_key(o, keys, &at.index(i)))
                    .collect::<Result<Vec<_>, _>>()?;
                let position = |e: &Value, among: &[Key]| among.iter().position(|k| k.matches(e));
                let server = original
                    .iter()
                    .filter_map(|e| Key::of(e, keys))
                    .collect::<Vec<_>>();
                Ok(reorder(
                    merged,
                    |e| position(e, &wanted),
                    |e| position(e, &patched).is_some(),
                    |e| position(e, &server),
                ))
            }
        }
    }

    /// The union of a set of scalars with the patch's values, in `order` if given.
    fn merge_set(
        &self,
        mut merged: Vec<Value>,
        items: &[(usize, &Value)],
        order: Option<&Value>,
        path: &Path,
    ) -> Result<Vec<Value>, PatchError> {
        let original = merged.clone();
        for (i, element) in items {
            if element.is_object() || element.is_array() {
                return Err(path
                    .index(*i)
                    .error("must be a single value: the list is a set of values"));
            }
            if !merged.contains(element) {
                merged.push((*element).clone());
            }
        }
        let Some(order) = order else {
            return Ok(merged);
        };
        let Value::Array(order) = order else {
            return Err(order_path(path).error("must be a list"));
        };
        Ok(reorder(
            merged,
            |e| order.iter().position(|o| o == e),
            |e| items.iter().any(|(_, i)| *i == e),
            |e| original.iter().position(|o| o == e),
        ))
    }

    /// A value the patch brings in new: its directives are processed against nothing
    /// (so they do not end up stored) and its nulls dropped.
    fn fresh(&self, value: &Value, path: &Path) -> Result<Value, PatchError> {
        Ok(match value {
            Value::Object(p) => match self.merge_map(Map::new(), p, path)? {
                Some(m) => Value::Object(m),
                None => Value::Object(Map::new()),
            },
            other => other.clone(),
        })
    }
}

fn order_path(list: &Path) -> Path {
    let field = list.shown.rsplit('.').next().unwrap_or_default();
    let parent = list
        .shown
        .strip_suffix(field)
        .unwrap_or_default()
        .trim_end_matches('.');
    Path {
        schema: String::new(),
        shown: if parent.is_empty() {
            format!("{SET_ELEMENT_ORDER}{field}")
        } else {
            format!("{parent}.{SET_ELEMENT_ORDER}{field}")
        },
    }
}

fn check_directive(key: &str, path: &Path) -> Result<(), PatchError> {
    let known = key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ELEMENT_ORDER)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
    if known {
        Ok(())
    } else {
        Err(path.field(key).error(
            "unknown directive: expected $patch, $retainKeys, $setElementOrder/FIELD or $deleteFromPrimitiveList/FIELD",
        ))
    }
}

fn strings(value: &Value) -> Option<Vec<&str>> {
    value.as_array()?.iter().map(Value::as_str).collect()
}

/// The merge key of one list element: the values of the key fields it has (the first
/// always).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key fields of the list, as the table has them.
    pub fields: &'static [&'static str],
    /// The element's values of those it has.
    pub values: Vec<(&'static str, Value)>,
}

impl Key {
    /// The key of `element`, if it is an object with the merge key.
    pub fn of(element: &Value, fields: &'static [&'static str]) -> Option<Key> {
        let obj = element.as_object()?;
        let values = fields
            .iter()
            .filter_map(|f| {
                obj.get(*f)
                    .filter(|v| !v.is_null())
                    .map(|v| (*f, v.clone()))
            })
            .collect::<Vec<_>>();
        let first = fields.first()?;
        values
            .first()
            .is_some_and(|(f, _)| f == first)
            .then_some(Key { fields, values })
    }

    /// Whether `element` is the one this key names: the merge key is equal, and every
    /// other key field is equal where both have it.
    pub fn matches(&self, element: &Value) -> bool {
        let Some(obj) = element.as_object() else {
            return false;
        };
        self.values
            .iter()
            .enumerate()
            .all(|(i, (f, v))| match obj.get(*f) {
                Some(have) if !have.is_null() => have == v,
                _ => i > 0,
            })
    }
}

/// The key of a patch element, or an error saying it has none.
pub(crate) fn element_key(
    element: &Value,
    fields: &'static [&'static str],
    path: &Path,
) -> Result<Key, PatchError> {
    if !element.is_object() {
        return Err(path.error(format!(
            "must be an object: the elements of this list are merged by {:?}",
            fields[0]
        )));
    }
    Key::of(element, fields).ok_or_else(|| {
        path.error(format!(
            "the element has no merge key {:?}: elements of this list are matched by it",
            fields[0]
        ))
    })
}

/// Puts a merged list in order: the elements the patch names (in `$setElementOrder`, or
/// as patch elements) in the order of `$setElementOrder` (patch elements it leaves out
/// after those), and the elements only the server has between them where they were in
/// the live list. `wanted` is an element's place in `$setElementOrder`, `in_patch` says
/// whether the patch has it, `live` is its place in the live list.
fn reorder(
    merged: Vec<Value>,
    wanted: impl Fn(&Value) -> Option<usize>,
    in_patch: impl Fn(&Value) -> bool,
    live: impl Fn(&Value) -> Option<usize>,
) -> Vec<Value> {
    let (mut named, server_only): (Vec<_>, Vec<_>) = merged
        .into_iter()
        .partition(|e| wanted(e).is_some() || in_patch(e));
    named.sort_by_key(|e| wanted(e).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(named.len() + server_only.len());
    let mut named = named.into_iter().peekable();
    let mut server_only = server_only.into_iter().peekable();
    loop {
        let take_server = match (server_only.peek(), named.peek()) {
            (Some(s), Some(n)) => matches!((live(s), live(n)), (Some(a), Some(b)) if a < b),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let next = if take_server {
            server_only.next()
        } else {
            named.next()
        };
        match next {
            Some(e) => out.push(e),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::resolve;
    use serde_json::json;

    fn kind(name: &str) -> &'static ResourceKind {
        resolve(name).expect("kind")
    }

    fn merge(kind_name: &str, current: Value, patch: Value) -> Value {
        strategic_merge(kind(kind_name), &current, &patch).expect("patch applies")
    }

    fn fails(kind_name: &str, current: Value, patch: Value) -> PatchError {
        strategic_merge(kind(kind_name), &current, &patch).expect_err("patch is refused")
    }

    fn deployment(containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": containers}}}})
    }

    #[test]
    fn the_table_reads_through_nested_sections() {
        let deploy = kind("deploy");
        assert_eq!(list_strategy(deploy, "spec.template.spec.containers"), NAME);
        assert_eq!(
            list_strategy(deploy, "spec.template.spec.initContainers.env"),
            NAME
        );
        assert_eq!(
            list_strategy(deploy, "spec.template.spec.containers.ports"),
            Keyed(&["containerPort", "protocol"])
        );
        assert_eq!(list_strategy(deploy, "metadata.finalizers"), Set);
        assert_eq!(
            list_strategy(deploy, "spec.template.metadata.finalizers"),
            Set
        );
        assert_eq!(list_strategy(deploy, "status.conditions"), TYPE);
        assert_eq!(
            list_strategy(deploy, "spec.template.spec.tolerations"),
            Replace
        );
        assert_eq!(list_strategy(deploy, "spec.containers"), Replace);
        let pod = kind("pod");
        assert_eq!(
            list_strategy(pod, "spec.containers.volumeMounts"),
            Keyed(&["mountPath"])
        );
        assert_eq!(list_strategy(pod, "status.conditions"), TYPE);
        assert_eq!(list_strategy(pod, "spec.template.spec.containers"), Replace);
        assert_eq!(list_strategy(kind("node"), "status.addresses"), TYPE);
        assert_eq!(list_strategy(kind("node"), "spec.taints"), Replace);
        assert_eq!(
            list_strategy(kind("svc"), "spec.ports"),
            Keyed(&["port", "protocol"])
        );
        assert_eq!(list_strategy(kind("ep"), "subsets"), Replace);
        assert_eq!(
            list_strategy(kind("cm"), "metadata.ownerReferences"),
            Keyed(&["uid"])
        );
        assert_eq!(list_strategy(kind("job"), "status.conditions"), TYPE);
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let current = json!({"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}},
                             "data": {"x": "1"}});
        let out = merge(
            "cm",
            current,
            json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": {"y": "2"}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(out["data"], json!({"x": "1", "y": "2"}));
        assert_eq!(out["metadata"]["name"], "c");
    }

    #[test]
    fn one_containers_image_changes_and_the_others_stay() {
        let current = deployment(json!([
            {"name": "app", "image": "a.wasm", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "s.wasm"}
        ]));
        let out = merge(
            "deploy",
            current,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "s2.wasm"}]}}}}),
        );
        assert_eq!(
            out.pointer("/spec/template/spec/containers"),
            Some(&json!([
                {"name": "app", "image": "a.wasm", "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "s2.wasm"}
            ]))
        );
        assert_eq!(out["spec"]["replicas"], 2);
    }

    #[test]
    fn kubectl_apply_patch_with_set_element_order() {
        let current = deployment(json!([
            {"name": "app", "image": "a.wasm", "imagePullPolicy": "IfNotPresent",
             "env": [{"name": "KEEP", "value": "1"}, {"name": "OLD", "value": "x"}]},
            {"name": "side", "image": "s.wasm"}
        ]));
        // What kubectl's client-side apply sends when the manifest changes app's image,
        // drops OLD and adds NEW.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "KEEP"}, {"name": "NEW"}],
                    "env": [{"name": "NEW", "value": "2"}, {"$patch": "delete", "name": "OLD"}],
                    "image": "b.wasm", "name": "app"}]}}}});
        let out = merge("deploy", current, patch);
        assert_eq!(
            out.pointer("/spec/template/spec/containers"),
            Some(&json!([
                {"name": "app", "image": "b.wasm", "imagePullPolicy": "IfNotPresent",
                 "env": [{"name": "KEEP", "value": "1"}, {"name": "NEW", "value": "2"}]},
                {"name": "side", "image": "s.wasm"}
            ]))
        );
        assert!(
            out.pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
                .is_some()
        );
        assert_eq!(out["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn set_element_order_orders_patch_elements_and_keeps_server_ones_in_place() {
        let current = deployment(json!([
            {"name": "a", "image": "a"}, {"name": "server", "image": "s"}, {"name": "b", "image": "b"}
        ]));
        let out = merge(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
                "containers": [{"name": "c", "image": "c"}]}}}}),
        );
        let names: Vec<_> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_string())
            .collect();
        // `server` was before `b` in the live list and stays before it.
        assert_eq!(names, ["c", "server", "b", "a"]);
        // An order alone reorders the live list.
        let out = merge(
            "deploy",
            current,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "server"}, {"name": "a"}]}}}}),
        );
        let names: Vec<_> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_string())
            .collect();
        assert_eq!(names, ["b", "server", "a"]);
    }

    #[test]
    fn list_directives_replace_and_delete() {
        let current = deployment(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let replaced = merge(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": "c"}, {"$patch": "replace"}]}}}}),
        );
        assert_eq!(
            replaced.pointer("/spec/template/spec/containers"),
            Some(&json!([{"name": "c", "image": "c"}]))
        );
        let deleted = merge(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "delete", "name": "a"}, {"$patch": "delete", "name": "absent"}]}}}}),
        );
        assert_eq!(
            deleted.pointer("/spec/template/spec/containers"),
            Some(&json!([{"name": "b", "image": "b"}]))
        );
        let merged = merge(
            "deploy",
            current,
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "merge"}, {"name": "b", "image": "b2", "$patch": "merge"}]}}}}),
        );
        assert_eq!(
            merged.pointer("/spec/template/spec/containers"),
            Some(&json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b2"}]))
        );
    }

    #[test]
    fn map_directives_replace_merge_and_delete() {
        let current = json!({"metadata": {"name": "c", "labels": {"a": "1", "b": "2"},
                                          "annotations": {"x": "y"}}});
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"c": "3"}));
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"labels": {"$patch": "merge", "c": "3"}}}),
        );
        assert_eq!(
            out["metadata"]["labels"],
            json!({"a": "1", "b": "2", "c": "3"})
        );
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"annotations": {"$patch": "delete"}}}),
        );
        assert!(out["metadata"].get("annotations").is_none());
        assert_eq!(out["metadata"]["labels"]["a"], "1");
        let err = fails("cm", current.clone(), json!({"$patch": "delete"}));
        assert!(err.message.contains("whole object"), "{err}");
        let err = fails(
            "cm",
            current,
            json!({"metadata": {"labels": {"$patch": "sideways"}}}),
        );
        assert_eq!(err.path, "metadata.labels.$patch");
    }

    #[test]
    fn elements_merge_deeply_and_nulls_delete_inside_them() {
        let current = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "a", "resources": {"limits": {"memory": "64Mi", "cpu": "1"}},
             "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}],
             "volumeMounts": [{"name": "v", "mountPath": "/data"}]}]}});
        let out = merge(
            "pod",
            current,
            json!({"spec": {"containers": [{"name": "app",
                "resources": {"limits": {"cpu": null}},
                "ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 81}],
                "volumeMounts": [{"mountPath": "/data", "readOnly": true}]}]}}),
        );
        let app = &out["spec"]["containers"][0];
        assert_eq!(app["resources"]["limits"], json!({"memory": "64Mi"}));
        assert_eq!(
            app["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "web"}, {"containerPort": 81}])
        );
        assert_eq!(
            app["volumeMounts"],
            json!([{"name": "v", "mountPath": "/data", "readOnly": true}])
        );
    }

    #[test]
    fn composite_keys_tell_protocols_and_effects_apart() {
        let current = json!({"metadata": {"name": "dns"}, "spec": {"ports": [
            {"port": 53, "protocol": "UDP", "name": "dns"},
            {"port": 53, "protocol": "TCP", "name": "dns-tcp"}]}});
        let out = merge(
            "svc",
            current,
            json!({"spec": {"ports": [{"port": 53, "protocol": "TCP", "targetPort": 5353}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 53, "protocol": "UDP", "name": "dns"},
                   {"port": 53, "protocol": "TCP", "name": "dns-tcp", "targetPort": 5353}])
        );
        let current = json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "topologySpreadConstraints": [
                {"topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "maxSkew": 1},
                {"topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "maxSkew": 1}]}});
        let out = merge(
            "pod",
            current,
            json!({"spec": {"topologySpreadConstraints": [
                {"topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "maxSkew": 3}]}}),
        );
        assert_eq!(
            out["spec"]["topologySpreadConstraints"][0]["maxSkew"],
            json!(1)
        );
        assert_eq!(
            out["spec"]["topologySpreadConstraints"][1]["maxSkew"],
            json!(3)
        );
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let current = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "a", "args": ["1", "2"]}],
            "tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]}});
        let out = merge(
            "pod",
            current,
            json!({"spec": {"tolerations": [{"key": "c", "operator": "Exists", "value": null}],
                "containers": [{"name": "a", "args": ["3"]}]}}),
        );
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "c", "operator": "Exists"}])
        );
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
        // A node's taints have no merge key: removing one sends the rest.
        let node = json!({"metadata": {"name": "n"}, "spec": {"taints": [
            {"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]}});
        let out = merge(
            "node",
            node,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoSchedule"}])
        );
        let err = fails(
            "pod",
            json!({"spec": {}}),
            json!({"spec": {"tolerations": [{"$patch": "delete", "key": "a"}]}}),
        );
        assert_eq!(err.path, "spec.tolerations[0]");
    }

    #[test]
    fn sets_of_values_union_and_delete() {
        let current = json!({"metadata": {"name": "c", "finalizers": ["a", "b"]}});
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"finalizers": ["c", "a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "zz"],
                                "finalizers": ["d"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "d"]));
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"$setElementOrder/finalizers": ["c", "b"],
                                "finalizers": ["c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
        let out = merge(
            "cm",
            current.clone(),
            json!({"metadata": {"finalizers": ["x", {"$patch": "replace"}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["x"]));
        let err = fails(
            "cm",
            current,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
        );
        assert_eq!(err.path, "metadata.$deleteFromPrimitiveList/finalizers");
    }

    #[test]
    fn retain_keys_drops_the_other_fields() {
        let current = json!({"metadata": {"name": "web"}, "spec": {"strategy": {
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = merge(
            "deploy",
            current.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate",
                                         "rollingUpdate": null}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 2}}}}),
        );
        assert_eq!(err.path, "spec.strategy.rollingUpdate");
        let err = fails(
            "deploy",
            current,
            json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
        );
        assert_eq!(err.path, "spec.strategy.$retainKeys");
    }

    #[test]
    fn status_conditions_and_addresses_merge_by_type() {
        let node = json!({"metadata": {"name": "n"}, "status": {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
        let out = merge(
            "node",
            node,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}],
                              "addresses": [{"type": "Hostname", "address": "n"}]}}),
        );
        assert_eq!(
            out["status"]["conditions"][0],
            json!({"type": "Ready", "status": "True"})
        );
        assert_eq!(out["status"]["conditions"][1]["type"], "MemoryPressure");
        assert_eq!(out["status"]["addresses"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let current = json!({"metadata": {"name": "rs", "ownerReferences": [
            {"uid": "1", "name": "a", "kind": "Deployment"}]}});
        let out = merge(
            "rs",
            current,
            json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b", "kind": "Deployment"},
                                                    {"uid": "1", "controller": true}]}}),
        );
        assert_eq!(out["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(out["metadata"]["ownerReferences"][1]["uid"], "2");
    }

    #[test]
    fn malformed_patches_name_the_field() {
        let current = deployment(json!([{"name": "a", "image": "a"}]));
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "a"}, {"image": "b"}]}}}}),
        );
        assert_eq!(err.path, "spec.template.spec.containers[1]");
        assert!(err.message.contains("merge key \"name\""), "{err}");
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a",
                "env": [{"value": "x"}]}]}}}}),
        );
        assert_eq!(err.path, "spec.template.spec.containers[0].env[0]");
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"containers": ["a"]}}}}),
        );
        assert_eq!(err.path, "spec.template.spec.containers[0]");
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete"}]}}}}),
        );
        assert_eq!(err.path, "spec.template.spec.containers[0]");
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"image": "a"}]}}}}),
        );
        assert_eq!(
            err.path,
            "spec.template.spec.$setElementOrder/containers[0]"
        );
        let err = fails(
            "deploy",
            current.clone(),
            json!({"spec": {"template": {"spec": {"$setElementOrder/containers": {"name": "a"},
                "containers": [{"name": "a"}]}}}}),
        );
        assert_eq!(err.path, "spec.template.spec.$setElementOrder/containers");
        let err = fails("deploy", current.clone(), json!({"spec": {"$bogus": 1}}));
        assert_eq!(err.path, "spec.$bogus");
        let err = fails(
            "cm",
            json!({"metadata": {"finalizers": ["a"]}}),
            json!({"metadata": {"finalizers": [{"a": 1}]}}),
        );
        assert_eq!(err.path, "metadata.finalizers[0]");
        let err = fails("deploy", current, json!([{"op": "add"}]));
        assert_eq!(err.path, "");
        assert_eq!(
            err.to_string(),
            "a strategic merge patch must be a JSON object"
        );
    }

    #[test]
    fn new_elements_and_fields_lose_their_directives() {
        let current = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        let out = merge(
            "pod",
            current,
            json!({"spec": {"containers": [{"name": "a", "image": "a",
                "$setElementOrder/env": [{"name": "X"}],
                "env": [{"name": "X", "value": "1", "valueFrom": null}]}],
                "volumes": [{"name": "v", "emptyDir": {"$patch": "replace"}}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}]}])
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}])
        );
    }
}
