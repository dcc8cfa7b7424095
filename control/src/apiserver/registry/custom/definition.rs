//! What a CustomResourceDefinition says, read from its JSON: validation of the
//! definition itself, its defaults, which of several definitions' names are accepted
//! (first come, first served, as Kubernetes' naming controller decides), the conditions
//! that says, and the served versions the kinds table grows by. All pure.

use crate::api::validation::{self, FieldError, Reason};
use serde_json::{Value, json};

/// The finalizer that holds a definition until its objects are deleted.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Fills what Kubernetes fills: the singular and list kind from the kind, conversion
/// `None`.
pub fn default(crd: &mut Value) {
    let kind = str_at(crd, "/spec/names/kind").to_string();
    if let Some(names) = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
        && !kind.is_empty()
    {
        names
            .entry("singular")
            .or_insert_with(|| json!(kind.to_ascii_lowercase()));
        names
            .entry("listKind")
            .or_insert_with(|| json!(format!("{kind}List")));
    }
    if let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) {
        let conversion = spec
            .entry("conversion")
            .or_insert_with(|| json!({"strategy": "None"}));
        if let Some(c) = conversion.as_object_mut() {
            c.entry("strategy").or_insert_with(|| json!("None"));
        }
    }
}

/// Checks a definition as Kubernetes does: the name is `<plural>.<group>`, the names are
/// DNS labels, the scope is known, and of the versions (each named, with a schema)
/// exactly one is the storage version.
pub fn validate(crd: &Value, errs: &mut Vec<FieldError>) {
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let name = str_at(crd, "/metadata/name");
    if !name.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    } else if !validation::is_dns1123_subdomain(group) {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            validation::DNS1123_SUBDOMAIN_MSG,
        ));
    }
    for field in ["plural", "singular"] {
        let v = str_at(crd, &format!("/spec/names/{field}"));
        if v.is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}"), ""));
        } else if !validation::is_dns1035_label(v) {
            errs.push(FieldError::invalid(
                format!("spec.names.{field}"),
                v,
                validation::DNS1035_LABEL_MSG,
            ));
        }
    }
    for (i, short) in strings(crd.pointer("/spec/names/shortNames"))
        .iter()
        .enumerate()
    {
        if !validation::is_dns1035_label(short) {
            errs.push(FieldError::invalid(
                format!("spec.names.shortNames[{i}]"),
                short,
                validation::DNS1035_LABEL_MSG,
            ));
        }
    }
    for field in ["kind", "listKind"] {
        let v = str_at(crd, &format!("/spec/names/{field}"));
        if v.is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}"), ""));
        } else if !v.starts_with(|c: char| c.is_ascii_alphabetic())
            || !v.chars().all(|c| c.is_ascii_alphanumeric())
        {
            errs.push(FieldError::invalid(
                format!("spec.names.{field}"),
                v,
                "may have mixed case, but should otherwise match: ^[a-z][-a-z0-9]*$",
            ));
        }
    }
    match str_at(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => errs.push(FieldError::required("spec.scope", "")),
        other => errs.push(FieldError::new(
            "spec.scope",
            Reason::NotSupported,
            Some(format!("{other:?}")),
            "supported values: \"Cluster\", \"Namespaced\"",
        )),
    }
    match str_at(crd, "/spec/conversion/strategy") {
        "" | "None" => {}
        other => errs.push(FieldError::new(
            "spec.conversion.strategy",
            Reason::NotSupported,
            Some(format!("{other:?}")),
            "supported values: \"None\"",
        )),
    }
    validate_versions(crd, errs);
}

fn validate_versions(crd: &Value, errs: &mut Vec<FieldError>) {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            "null",
            "must have exactly one version marked as storage version",
        ));
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut storage = 0;
    let mut served = 0;
    for (i, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        let name = str_at(v, "/name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{path}.name"), ""));
        } else if !validation::is_dns1035_label(name) {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                name,
                validation::DNS1035_LABEL_MSG,
            ));
        } else if seen.contains(&name) {
            errs.push(FieldError::new(
                format!("{path}.name"),
                Reason::Duplicate,
                Some(format!("{name:?}")),
                "",
            ));
        }
        seen.push(name);
        if v.get("storage").and_then(Value::as_bool) == Some(true) {
            storage += 1;
        }
        if v.get("served").and_then(Value::as_bool) == Some(true) {
            served += 1;
        }
        match v.pointer("/schema/openAPIV3Schema") {
            Some(schema) if schema.is_object() => {
                super::schema::check_schema(schema, &format!("{path}.schema.openAPIV3Schema"), errs)
            }
            _ => errs.push(FieldError::required(
                format!("{path}.schema.openAPIV3Schema"),
                "schemas are required",
            )),
        }
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (j, c) in columns.iter().enumerate() {
            let at = format!("{path}.additionalPrinterColumns[{j}]");
            for field in ["name", "jsonPath"] {
                if str_at(c, &format!("/{field}")).is_empty() {
                    errs.push(FieldError::required(format!("{at}.{field}"), ""));
                }
            }
            let ty = str_at(c, "/type");
            if !matches!(ty, "integer" | "number" | "string" | "boolean" | "date") {
                errs.push(FieldError::new(
                    format!("{at}.type"),
                    Reason::NotSupported,
                    Some(format!("{ty:?}")),
                    "supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\"",
                ));
            }
        }
        for (field, json_path) in scale_paths(v) {
            if !json_path.is_empty() && json_pointer(&json_path).is_none() {
                errs.push(FieldError::invalid(
                    format!("{path}.subresources.scale.{field}"),
                    &json_path,
                    "should be a json path under either `.spec` or `.status`",
                ));
            }
        }
    }
    if storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            "[...]",
            "must have exactly one version marked as storage version",
        ));
    }
    if served == 0 {
        errs.push(FieldError::invalid(
            "spec.versions",
            "[...]",
            "must have at least one version marked as served",
        ));
    }
}

fn scale_paths(version: &Value) -> Vec<(&'static str, String)> {
    let Some(scale) = version.pointer("/subresources/scale") else {
        return Vec::new();
    };
    [
        "specReplicasPath",
        "statusReplicasPath",
        "labelSelectorPath",
    ]
    .into_iter()
    .map(|f| (f, str_at(scale, &format!("/{f}")).to_string()))
    .collect()
}

/// `.spec.replicas` as a JSON pointer (`/spec/replicas`): only a plain field path under
/// `.spec` or `.status`.
pub fn json_pointer(path: &str) -> Option<String> {
    let rest = path.strip_prefix('.')?;
    let fields: Vec<&str> = rest.split('.').collect();
    let plain = fields
        .iter()
        .all(|f| !f.is_empty() && !f.contains(['[', ']', '*', '@', '?', '/', '~']));
    (plain && matches!(fields.first(), Some(&"spec") | Some(&"status")) && fields.len() > 1)
        .then(|| fields.iter().map(|f| format!("/{f}")).collect())
}

// ---- Names ------------------------------------------------------------------------------

/// The names at `at` (`/spec/names`, `/status/acceptedNames`).
fn claimed(crd: &Value, at: &str) -> Vec<(&'static str, String)> {
    let mut names: Vec<(&'static str, String)> = ["plural", "singular", "kind", "listKind"]
        .into_iter()
        .map(|f| (f, str_at(crd, &format!("{at}/{f}")).to_string()))
        .collect();
    for s in strings(crd.pointer(&format!("{at}/shortNames"))) {
        names.push(("shortNames", s));
    }
    names.retain(|(_, n)| !n.is_empty());
    names
}

/// Whether a definition has been judged already (it has a `NamesAccepted` condition).
fn judged(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "NamesAccepted"))
}

/// Whether the names of `crd` are accepted among `all` definitions (and the built-in
/// kinds of `builtins`, as (group, plural, kind) rows). A name is taken by a definition
/// that holds it (its `status.acceptedNames`), or, among definitions not judged yet,
/// by the earliest to claim it. `Err` says which name is taken, in Kubernetes' words.
pub fn names_accepted(
    crd: &Value,
    all: &[Value],
    builtins: &[(&str, &str, &str)],
) -> Result<(), String> {
    let group = str_at(crd, "/spec/group");
    let name = str_at(crd, "/metadata/name");
    let key = |c: &Value| {
        (
            str_at(c, "/metadata/creationTimestamp").to_string(),
            str_at(c, "/metadata/name").to_string(),
        )
    };
    let mine = key(crd);
    let others: Vec<&Value> = all
        .iter()
        .filter(|c| str_at(c, "/spec/group") == group && str_at(c, "/metadata/name") != name)
        .collect();
    let holds = |c: &Value, n: &str| {
        let held = claimed(c, "/status/acceptedNames");
        let first = !judged(c) && key(c) < mine;
        let claims = if first {
            claimed(c, "/spec/names")
        } else {
            Vec::new()
        };
        held.iter()
            .chain(claims.iter())
            .any(|(_, other)| other.eq_ignore_ascii_case(n))
    };
    for (field, n) in claimed(crd, "/spec/names") {
        let lower = n.to_ascii_lowercase();
        let builtin = builtins.iter().any(|(g, plural, kind)| {
            *g == group && (*plural == lower || kind.eq_ignore_ascii_case(&n))
        });
        let taken = builtin || others.iter().any(|c| holds(c, &n));
        if taken {
            let reason = match field {
                "kind" | "listKind" => "KindConflict",
                _ => "PluralConflict",
            };
            return Err(format!("{reason}: {n:?} is already in use"));
        }
    }
    Ok(())
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str, now: &str, old: &Value) -> Value {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == kind && c["status"] == status)
        })
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({"type": kind, "status": status, "lastTransitionTime": since,
           "reason": reason, "message": message})
}

/// The status a definition gets from whether its names are `accepted`: `NamesAccepted`,
/// `Established` (served as soon as its names are), `acceptedNames` and the stored
/// versions (kept, plus the current storage version).
pub fn status(crd: &Value, accepted: &Result<(), String>, now: &str) -> Value {
    let (names_ok, names_reason, names_msg) = match accepted {
        Ok(()) => (
            true,
            "NoConflicts".to_string(),
            "no conflicts found".to_string(),
        ),
        Err(e) => {
            let (reason, msg) = e.split_once(": ").unwrap_or(("NameConflict", e));
            (false, reason.to_string(), msg.to_string())
        }
    };
    let established = if names_ok {
        condition(
            "Established",
            true,
            "InitialNamesAccepted",
            "the initial names have been accepted",
            now,
            crd,
        )
    } else {
        condition(
            "Established",
            false,
            "NotAccepted",
            "not all names are accepted",
            now,
            crd,
        )
    };
    let mut stored = strings(crd.pointer("/status/storedVersions"));
    if let Some(v) = storage_version(crd)
        && !stored.contains(&v)
    {
        stored.push(v);
    }
    let accepted_names = if names_ok {
        crd.pointer("/spec/names").cloned().unwrap_or(json!({}))
    } else {
        crd.pointer("/status/acceptedNames")
            .cloned()
            .unwrap_or(json!({"plural": "", "kind": ""}))
    };
    json!({
        "conditions": [
            condition("NamesAccepted", names_ok, &names_reason, &names_msg, now, crd),
            established,
        ],
        "acceptedNames": accepted_names,
        "storedVersions": stored,
    })
}

/// Orders version names as Kubernetes ranks them for discovery (the first is the
/// preferred version): GA before beta before alpha, a higher major first, then a higher
/// minor (`v2`, `v1`, `v1beta2`, `v1beta1`, `v1alpha1`), then any other name
/// alphabetically.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    /// (stability: 2 GA, 1 beta, 0 alpha; major; minor), or `None` for another name.
    fn rank(v: &str) -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok().filter(|m| *m > 0)?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((2, major, 0));
        }
        let (stability, minor) = if let Some(m) = tail.strip_prefix("beta") {
            (1, m)
        } else {
            (0, tail.strip_prefix("alpha")?)
        };
        (!minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
            .then(|| minor.parse().ok())
            .flatten()
            .map(|m| (stability, major, m))
    }
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The name of the storage version.
pub fn storage_version(crd: &Value) -> Option<String> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)?
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_string)
}

/// Whether the definition is established: its kinds are served.
pub fn is_established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, created: &str) -> Value {
        let (plural, group) = name.split_once('.').unwrap_or((name, ""));
        let mut c = json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"plural": plural, "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}]},
        });
        default(&mut c);
        c
    }

    fn messages(c: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(c, &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_well_formed_definition_is_valid_and_defaulted() {
        let c = crd("widgets.example.com", "2026-01-01T00:00:00Z");
        assert_eq!(messages(&c), Vec::<String>::new());
        assert_eq!(c["spec"]["names"]["singular"], "widget");
        assert_eq!(c["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(c["spec"]["conversion"]["strategy"], "None");
    }

    #[test]
    fn names_scope_and_versions_are_checked() {
        let mut c = crd("widgets.example.com", "t");
        c["metadata"]["name"] = json!("gadgets.example.com");
        c["spec"]["scope"] = json!("Global");
        c["spec"]["versions"] = json!([
            {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}},
            {"name": "v2", "served": true, "storage": true},
        ]);
        assert_eq!(
            messages(&c),
            [
                "metadata.name: Invalid value: \"gadgets.example.com\": must be spec.names.plural+\".\"+spec.group",
                "spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"",
                "spec.versions[1].schema.openAPIV3Schema: Required value: schemas are required",
                "spec.versions: Invalid value: \"[...]\": must have exactly one version marked as storage version",
            ]
        );
        let mut columns = crd("widgets.example.com", "t");
        columns["spec"]["versions"][0]["additionalPrinterColumns"] =
            json!([{"name": "Size", "type": "text"}]);
        assert_eq!(
            messages(&columns),
            [
                "spec.versions[0].additionalPrinterColumns[0].jsonPath: Required value",
                "spec.versions[0].additionalPrinterColumns[0].type: Unsupported value: \"text\": supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\"",
            ]
        );
        let mut nogroup = crd("widgets.example", "t");
        nogroup["spec"]["group"] = json!("example");
        nogroup["metadata"]["name"] = json!("widgets.example");
        assert!(
            messages(&nogroup).iter().any(
                |m| m.starts_with("spec.group: Invalid value: \"example\": should be a domain")
            )
        );
    }

    #[test]
    fn the_first_definition_keeps_a_name() {
        let first = crd("widgets.example.com", "2026-01-01T00:00:00Z");
        let mut second = crd("gizmos.example.com", "2026-01-02T00:00:00Z");
        second["spec"]["names"]["shortNames"] = json!(["wd"]);
        second["spec"]["names"]["kind"] = json!("Gizmo");
        second["spec"]["names"]["listKind"] = json!("GizmoList");
        second["spec"]["names"]["singular"] = json!("gizmo");
        let all = vec![first.clone(), second.clone()];
        assert_eq!(names_accepted(&first, &all, &[]), Ok(()));
        assert_eq!(
            names_accepted(&second, &all, &[]),
            Err("PluralConflict: \"wd\" is already in use".into())
        );
        let other_group = crd("widgets.example.org", "2026-01-03T00:00:00Z");
        assert_eq!(names_accepted(&other_group, &all, &[]), Ok(()));
        let builtin = [("example.com", "widgets", "Thing")];
        assert!(names_accepted(&first, &all, &builtin).is_err());
    }

    #[test]
    fn status_says_whether_names_are_accepted() {
        let c = crd("widgets.example.com", "t");
        let s = status(&c, &Ok(()), "2026-01-01T00:00:00Z");
        assert_eq!(s["conditions"][0]["type"], "NamesAccepted");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["conditions"][1]["type"], "Established");
        assert_eq!(s["conditions"][1]["status"], "True");
        assert_eq!(s["storedVersions"], json!(["v1"]));
        assert_eq!(s["acceptedNames"]["plural"], "widgets");
        let refused = status(
            &c,
            &Err("PluralConflict: \"wd\" is already in use".into()),
            "now",
        );
        assert_eq!(refused["conditions"][0]["status"], "False");
        assert_eq!(refused["conditions"][0]["reason"], "PluralConflict");
        assert_eq!(
            refused["conditions"][0]["message"],
            "\"wd\" is already in use"
        );
        assert_eq!(refused["conditions"][1]["status"], "False");
        // The transition time stays while the status does.
        let mut later = c.clone();
        later["status"] = s.clone();
        let again = status(&later, &Ok(()), "2027-01-01T00:00:00Z");
        assert_eq!(
            again["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn versions_rank_as_kubernetes_ranks_them() {
        let mut v = vec![
            "v1alpha1",
            "foo",
            "v1",
            "v11alpha2",
            "v1beta1",
            "v2",
            "v1beta2",
            "v12",
            "bar",
        ];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            v,
            [
                "v12",
                "v2",
                "v1",
                "v1beta2",
                "v1beta1",
                "v11alpha2",
                "v1alpha1",
                "bar",
                "foo"
            ]
        );
    }

    #[test]
    fn scale_paths_are_plain_field_paths() {
        assert_eq!(
            json_pointer(".spec.replicas").as_deref(),
            Some("/spec/replicas")
        );
        assert_eq!(json_pointer(".status.a.b").as_deref(), Some("/status/a/b"));
        assert_eq!(json_pointer(".metadata.name"), None);
        assert_eq!(json_pointer("spec.replicas"), None);
        assert_eq!(json_pointer(".spec.items[0]"), None);
    }
}
