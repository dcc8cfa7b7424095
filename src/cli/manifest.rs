//! Reading manifests for `apply -f` and `delete -f`: files, directories and stdin, YAML
//! (many documents per file) or JSON (an object or a `List`), into one [`Document`] per
//! object.
//!
//! Each YAML document is parsed on its own, so a malformed one is reported with its file,
//! index, line and column while the others in the same file still apply. The documents
//! are split at `---` (and `...`) lines, which YAML forbids inside a document's content.
//! YAML is read with strict booleans (only `true` and `false`): under YAML 1.1 rules an
//! unquoted `no`, `yes`, `on` or `off` would become a boolean, and labels, annotations,
//! ConfigMap data and env values are strings where such words are common.

use anyhow::{Context, bail};
use serde_json::Value;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use wharf_control::api::kinds::{ResourceKind, find_kind, served_list};

/// One object from a manifest, with where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub origin: Origin,
    pub object: Value,
}

/// Where an object or an error is: a file (or `STDIN`), the document's 1-based index in
/// it, and for an item of a `List`, the item's 1-based index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// A document that cannot be used: malformed, or not a Kubernetes object.
#[derive(Debug, thiserror::Error)]
pub struct ManifestError {
    pub origin: Origin,
    /// 1-based line and column in the file, when the parser knows them.
    pub location: Option<(u64, u64)>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some((line, column)) = self.location {
            write!(f, "line {line} column {column}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Document {
    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn error(&self, message: String) -> ManifestError {
        ManifestError {
            origin: self.origin.clone(),
            location: None,
            message,
        }
    }

    /// The served kind of this object, from its `apiVersion` and `kind`.
    pub fn kind(&self) -> Result<&'static ResourceKind, ManifestError> {
        let field = |f: &str| {
            self.object
                .get(f)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        find_kind(api_version, kind).ok_or_else(|| {
            self.error(format!(
                "no kind \"{kind}\" is served in \"{api_version}\"; wharf serves {}",
                served_list()
            ))
        })
    }

    /// Puts the object in its namespace: its own, else `flag` (`-n`), else `default`;
    /// `None` for cluster-scoped kinds. Like kubectl, an object that names a namespace
    /// other than an explicit `-n` is refused.
    pub fn place(
        &mut self,
        kind: &ResourceKind,
        flag: Option<&str>,
        default: &str,
    ) -> Result<Option<String>, ManifestError> {
        if !kind.namespaced {
            return Ok(None);
        }
        let own = self
            .object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let namespace = match (own, flag) {
            (Some(own), Some(flag)) if own != flag => {
                return Err(self.error(format!(
                    "the namespace from the provided object \"{own}\" does not match the \
                     namespace \"{flag}\"; pass --namespace={own} or remove it from the manifest"
                )));
            }
            (Some(own), _) => own.to_string(),
            (None, flag) => flag.unwrap_or(default).to_string(),
        };
        if let Some(metadata) = self
            .object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            metadata.insert("namespace".into(), Value::String(namespace.clone()));
        }
        Ok(Some(namespace))
    }
}

/// Reads every manifest named by `-f`: a file, a directory (its `.yaml`, `.yml` and
/// `.json` files, sorted, not recursive) or `-` for stdin. A path that cannot be read is
/// an error for the whole command; a bad document is one `Err` among the documents.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Result<Document, ManifestError>>> {
    let mut documents = Vec::new();
    for path in paths {
        for (source, text, json) in read_sources(path)? {
            let base = (source != "STDIN")
                .then(|| Path::new(&source).parent().map(Path::to_path_buf))
                .flatten();
            documents.extend(parse(&source, &text, json).into_iter().map(|doc| {
                doc.map(|mut d| {
                    if let Some(base) = &base {
                        resolve_images(&mut d.object, base);
                    }
                    d
                })
            }));
        }
    }
    Ok(documents)
}

/// Makes a relative `image` path absolute against the manifest's directory, so that a
/// manifest next to its `.wasm` applies from any working directory. Registry images,
/// URLs (`file://`, `http://`, ...) and absolute paths are left alone; an `@sha256:` pin is
/// kept.
pub fn resolve_images(object: &mut Value, manifest_dir: &Path) {
    let pointer = if object.get("kind").and_then(Value::as_str) == Some("Pod") {
        "/spec"
    } else {
        "/spec/template/spec"
    };
    let Some(spec) = object.pointer_mut(pointer) else {
        return;
    };
    for section in ["initContainers", "containers"] {
        let Some(list) = spec.get_mut(section).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in list {
            let Some(image) = c.get("image").and_then(Value::as_str) else {
                continue;
            };
            let (path, pin) = match image.split_once('@') {
                Some((p, pin)) => (p, Some(pin)),
                None => (image, None),
            };
            if path.is_empty()
                || path.contains("://")
                || Path::new(path).is_absolute()
                || wharf_runtime::is_registry_reference(image)
            {
                continue;
            }
            let joined = manifest_dir.join(path);
            let absolute = std::path::absolute(&joined).unwrap_or(joined);
            let mut resolved = absolute.display().to_string();
            if let Some(pin) = pin {
                resolved.push('@');
                resolved.push_str(pin);
            }
            c["image"] = Value::String(resolved);
        }
    }
}

/// `(label, text, is_json)` of every manifest file `path` names.
fn read_sources(path: &Path) -> anyhow::Result<Vec<(String, String, bool)>> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        let json = text.trim_start().starts_with('{');
        return Ok(vec![("STDIN".to_string(), text, json)]);
    }
    let read = |file: &Path| -> anyhow::Result<(String, String, bool)> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let json = file.extension().is_some_and(|e| e == "json");
        Ok((file.display().to_string(), text, json))
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("the path \"{}\" does not exist", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_dir() {
        return Ok(vec![read(path)?]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let file = entry
            .with_context(|| format!("reading {}", path.display()))?
            .path();
        let manifest = file
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if manifest && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    files.iter().map(|f| read(f)).collect()
}

/// Parses the text of one manifest file into its objects, `List`s flattened.
pub fn parse(source: &str, text: &str, json: bool) -> Vec<Result<Document, ManifestError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let origin = |document| Origin {
        source: source.to_string(),
        document,
        item: None,
    };
    if json {
        return match serde_json::from_str::<Value>(text) {
            Ok(value) => objects(origin(1), value),
            Err(e) => vec![Err(ManifestError {
                origin: origin(1),
                location: Some((e.line() as u64, e.column() as u64)),
                message: strip_location(&e.to_string()),
            })],
        };
    }
    let mut results = Vec::new();
    let documents = split_documents(text)
        .into_iter()
        .filter(|(_, doc)| !is_blank(doc));
    for (index, (first_line, doc)) in documents.enumerate() {
        let options = serde_saphyr::options! { strict_booleans: true, with_snippet: false };
        match serde_saphyr::from_str_with_options::<Value>(&doc, options) {
            Ok(Value::Null) => {}
            Ok(value) => results.extend(objects(origin(index + 1), value)),
            Err(e) => results.push(Err(ManifestError {
                origin: origin(index + 1),
                location: e
                    .location()
                    .map(|l| (first_line as u64 + l.line(), l.column())),
                message: strip_location(&e.to_string()),
            })),
        }
    }
    results
}

/// The objects of one document: itself, or the items of a `List`, each checked to be a
/// Kubernetes object.
fn objects(origin: Origin, value: Value) -> Vec<Result<Document, ManifestError>> {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        return vec![check(Document {
            origin,
            object: value,
        })];
    }
    let Some(Value::Array(items)) = value.get("items").cloned() else {
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, object)| {
            check(Document {
                origin: Origin {
                    item: Some(i + 1),
                    ..origin.clone()
                },
                object,
            })
        })
        .collect()
}

fn check(doc: Document) -> Result<Document, ManifestError> {
    if !doc.object.is_object() {
        return Err(
            doc.error("not an object (a mapping with apiVersion, kind and metadata)".into())
        );
    }
    let missing: Vec<&str> = [
        ("apiVersion", "/apiVersion"),
        ("kind", "/kind"),
        ("metadata.name", "/metadata/name"),
    ]
    .into_iter()
    .filter(|(_, ptr)| {
        doc.object
            .pointer(ptr)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    })
    .map(|(field, _)| field)
    .collect();
    if missing.is_empty() {
        Ok(doc)
    } else {
        Err(doc.error(format!("missing {}", missing.join(", "))))
    }
}

/// Splits a YAML stream into documents, each with the 0-based line its separator is on
/// (so a parser's 1-based line inside it plus that number is the line in the file). The
/// separator line stays in the document, blanked, so lines and columns are unchanged.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = vec![(0, String::new())];
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let marker = ["---", "..."].into_iter().find(|m| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
        });
        match marker {
            Some(marker) => {
                let blanked = format!("{}{}", " ".repeat(marker.len()), &line[marker.len()..]);
                documents.push((number, blanked));
            }
            None => {
                if let Some((_, doc)) = documents.last_mut() {
                    doc.push_str(line);
                }
            }
        }
    }
    documents
}

/// Nothing but blank lines, comments and directives: not a document.
fn is_blank(doc: &str) -> bool {
    doc.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with('%')
    })
}

/// Parser messages end in ` at line L, column C`; the location is reported on its own.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(results: &[Result<Document, ManifestError>]) -> Vec<(String, Option<usize>, String)> {
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|d| (d.origin.source.clone(), d.origin.item, d.name().to_string()))
            .collect()
    }

    #[test]
    fn multi_document_yaml_with_a_malformed_document_in_the_middle() {
        let text = "\
# leading comment
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: first
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: broken
data: [1, 2
  x: y
--- # the third
apiVersion: v1
kind: Service
metadata: {name: third}
...
";
        let results = parse("app.yaml", text, false);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().name(), "first");
        assert_eq!(results[2].as_ref().unwrap().name(), "third");
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(err.origin.document, 2);
        let (line, column) = err.location.unwrap();
        assert!(
            (12..=13).contains(&line),
            "line {line} should point into the broken document"
        );
        assert!(column >= 1);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "app.yaml: document 2: line {line} column {column}: "
            )),
            "{shown}"
        );
        assert!(!shown.contains(" at line "), "{shown}");
    }

    #[test]
    fn error_location_counts_lines_from_the_top_of_the_file() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n   bad: indent\n";
        let results = parse("f.yaml", text, false);
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(err.origin.document, 2);
        assert_eq!(err.location.map(|l| l.0), Some(9));
    }

    #[test]
    fn documents_without_kind_or_name_are_reported_with_their_index() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {}\n---\n- a list\n";
        let results = parse("x.yaml", text, false);
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            "x.yaml: document 2: missing apiVersion, metadata.name"
        );
        assert!(
            results[2]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("x.yaml: document 3: not an object")
        );
    }

    #[test]
    fn relative_images_resolve_against_the_manifest() {
        let mut pod = serde_json::json!({"kind": "Pod", "spec": {"containers": [
            {"image": "app.wasm@sha256:ab"}, {"image": "/abs/x.wasm"}, {"image": "https://h/x.wasm"},
            {"image": "registry.example.com/team/app:1.0"}]}});
        resolve_images(&mut pod, Path::new("/srv/apps"));
        assert_eq!(
            pod.pointer("/spec/containers/0/image"),
            Some(&serde_json::json!("/srv/apps/app.wasm@sha256:ab"))
        );
        assert_eq!(
            pod.pointer("/spec/containers/1/image"),
            Some(&serde_json::json!("/abs/x.wasm"))
        );
        assert_eq!(
            pod.pointer("/spec/containers/2/image"),
            Some(&serde_json::json!("https://h/x.wasm"))
        );
        assert_eq!(
            pod.pointer("/spec/containers/3/image"),
            Some(&serde_json::json!("registry.example.com/team/app:1.0"))
        );
        let mut deploy = serde_json::json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"image": "a.wasm"}]}}}});
        resolve_images(&mut deploy, Path::new("/m"));
        assert_eq!(
            deploy.pointer("/spec/template/spec/containers/0/image"),
            Some(&serde_json::json!("/m/a.wasm"))
        );
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let text = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: flags
  labels: {enabled: yes, legacy: no, mode: on}
data:
  answer: no
  off: off
  real: 'true'
immutable: true
";
        let doc = parse("cm.yaml", text, false).remove(0).unwrap();
        assert_eq!(
            doc.object["metadata"]["labels"],
            json!({"enabled": "yes", "legacy": "no", "mode": "on"})
        );
        assert_eq!(
            doc.object["data"],
            json!({"answer": "no", "off": "off", "real": "true"})
        );
        assert_eq!(doc.object["immutable"], json!(true));
    }

    #[test]
    fn json_object_and_list() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"}}
        ]});
        let results = parse("list.json", &list.to_string(), true);
        assert_eq!(
            ok(&results),
            [
                ("list.json".into(), Some(1), "p1".into()),
                ("list.json".into(), Some(3), "d1".into())
            ]
        );
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            "list.json: document 1, item 2: missing metadata.name"
        );
        let single = parse(
            "one.json",
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n"}}"#,
            true,
        );
        assert_eq!(ok(&single), [("one.json".into(), None, "n".into())]);
        let bad = parse("bad.json", "{\n  \"kind\": \n}", true);
        let err = bad[0].as_ref().unwrap_err();
        assert_eq!(err.location, Some((3, 1)));
        assert!(
            err.to_string()
                .starts_with("bad.json: document 1: line 3 column 1: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_kinds_name_the_document_and_what_is_served() {
        let doc = parse(
            "w.yaml",
            "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n",
            false,
        )
        .remove(0)
        .unwrap();
        let err = doc.kind().unwrap_err().to_string();
        assert!(
            err.starts_with("w.yaml: document 1: no kind \"Widget\" is served in \"v1\""),
            "{err}"
        );
        assert!(err.contains("apps/v1/Deployment"), "{err}");
    }

    #[test]
    fn namespaces_come_from_the_object_then_the_flag_then_the_default() {
        let mut doc = parse(
            "d.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
            false,
        )
        .remove(0)
        .unwrap();
        let kind = doc.kind().unwrap();
        assert_eq!(
            doc.place(kind, None, "default").unwrap().as_deref(),
            Some("default")
        );
        assert_eq!(doc.object["metadata"]["namespace"], "default");
        assert!(doc.place(kind, Some("other"), "default").is_err());
        let mut ns = parse(
            "n.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n",
            false,
        )
        .remove(0)
        .unwrap();
        let kind = ns.kind().unwrap();
        assert_eq!(ns.place(kind, Some("x"), "default").unwrap(), None);
    }

    #[test]
    fn directories_are_read_sorted_and_flat() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        );
        write(
            "a.json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}"#,
        );
        write("notes.txt", "not a manifest");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/c.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        )
        .unwrap();
        let docs = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = docs
            .iter()
            .map(|d| d.as_ref().unwrap().name().to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let missing = load(&[dir.path().join("nope.yaml")])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("does not exist"), "{missing}");
    }
}
