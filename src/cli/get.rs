//! `wharf get`: objects as kubectl shows them: aligned tables with each kind's columns
//! (from [`wharf_control::api::printers`], which the API server's Table answers share),
//! `-o yaml|json|name`, and `-w` to follow changes after the first listing.

use super::cluster::{Cluster, server_error};
use super::target::{self, Target};
use super::{finish, report};
use anyhow::bail;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use kube::api::{GetParams, ListParams, WatchParams};
use kube::core::WatchEvent;
use serde_json::{Map, Value, json};
use wharf_control::api::ResourceKind;
use wharf_control::api::printers;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// KIND[,KIND...] [NAME...] or KIND/NAME...; `all` for the workload kinds
    #[arg(value_name = "KIND", required = true)]
    pub args: Vec<String>,

    /// Namespace to look in [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Look in every namespace
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// Only objects with matching labels (`app=web,tier!=db`)
    #[arg(short = 'l', long)]
    pub selector: Option<String>,

    /// Only objects with matching fields (`status.phase=Running`)
    #[arg(long)]
    pub field_selector: Option<String>,

    /// Output format [default: a table]
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,

    /// After listing, print every change until Ctrl-C
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
    Name,
}

/// How results are printed, decided once for the whole command.
struct Printer {
    output: Option<Output>,
    /// `-A`: a NAMESPACE column first.
    all_namespaces: bool,
    /// More than one kind asked for: names print as `pod/web-1`.
    qualify: bool,
}

pub async fn run(cluster: &Cluster, args: GetArgs) -> anyhow::Result<()> {
    let targets = target::parse(&args.args)?;
    if args.all_namespaces
        && targets
            .iter()
            .any(|t| t.kind.namespaced && t.name.is_some())
    {
        bail!("a resource cannot be retrieved by name across all namespaces: use -n NAMESPACE");
    }
    let namespace = match (&args.namespace, args.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.clone()),
        (None, false) => Some(cluster.namespace.clone()),
    };
    let printer = Printer {
        output: args.output,
        all_namespaces: args.all_namespaces,
        qualify: targets
            .iter()
            .any(|t| !std::ptr::eq(t.kind, targets[0].kind)),
    };
    let params = ListParams {
        label_selector: args.selector.clone(),
        field_selector: args.field_selector.clone(),
        ..ListParams::default()
    };
    if args.watch {
        let [Target { kind, name }] = targets.as_slice() else {
            bail!("watch is only supported on one kind at a time");
        };
        let watch = watch(
            cluster,
            &printer,
            kind,
            name.as_deref(),
            namespace.as_deref(),
            params,
        );
        return tokio::select! {
            result = watch => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        };
    }

    // One group of objects per kind, in the order asked.
    let mut groups: Vec<(&'static ResourceKind, Vec<Value>)> = Vec::new();
    let mut failed = false;
    for Target { kind, name } in &targets {
        let at = cluster.at(kind, namespace.as_deref());
        let objects = match name {
            Some(name) => match cluster.send(at.get(name, &GetParams::default())).await {
                Ok(object) => vec![object],
                Err(e) => {
                    report(&cluster.explain(e));
                    failed = true;
                    continue;
                }
            },
            None => {
                let list = cluster
                    .send(at.list(&params))
                    .await
                    .map_err(|e| cluster.explain(e))?;
                items(kind, list)
            }
        };
        match groups.last_mut() {
            Some((k, group)) if std::ptr::eq(*k, *kind) => group.extend(objects),
            _ => groups.push((kind, objects)),
        }
    }
    for (kind, objects) in &mut groups {
        if kind.kind == "Event" && kind.group.is_empty() {
            sort_events(objects);
        }
    }

    let single = matches!(targets.as_slice(), [Target { name: Some(_), .. }]);
    match printer.output {
        Some(Output::Json | Output::Yaml) => {
            let mut objects = groups.into_iter().flat_map(|(_, objects)| objects);
            let value = match (single, objects.next()) {
                (true, Some(object)) => object,
                (_, first) => json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": first.into_iter().chain(objects).collect::<Vec<_>>(),
                    "metadata": {"resourceVersion": ""},
                }),
            };
            if !(single && failed) {
                print!("{}", printer.document(&value)?);
            }
        }
        Some(Output::Name) => {
            for (kind, objects) in &groups {
                for object in objects {
                    println!("{}", printer.name(kind, object));
                }
            }
        }
        Some(Output::Wide) | None => {
            let mut first = true;
            for (kind, objects) in groups.iter().filter(|(_, objects)| !objects.is_empty()) {
                if !first {
                    println!();
                }
                first = false;
                let table = printer.table(kind, objects);
                for line in table.lines() {
                    println!("{line}");
                }
            }
            if first && !failed {
                let all_cluster_scoped = targets.iter().all(|t| !t.kind.namespaced);
                match namespace {
                    Some(ns) if !all_cluster_scoped => {
                        eprintln!("No resources found in {ns} namespace.")
                    }
                    _ => eprintln!("No resources found"),
                }
            }
        }
    }
    finish(failed)
}

/// Prints the current objects, then one line (or document) per change, re-watching when
/// the server ends a watch and listing again when the version is too old (410).
async fn watch(
    cluster: &Cluster,
    printer: &Printer,
    kind: &'static ResourceKind,
    name: Option<&str>,
    namespace: Option<&str>,
    mut params: ListParams,
) -> anyhow::Result<()> {
    if let Some(name) = name {
        let by_name = format!("metadata.name={name}");
        params.field_selector = Some(match params.field_selector {
            Some(fields) => format!("{fields},{by_name}"),
            None => by_name,
        });
    }
    let at = cluster.at(kind, namespace);
    let watch_params = WatchParams {
        label_selector: params.label_selector.clone(),
        field_selector: params.field_selector.clone(),
        ..WatchParams::default()
    };

    let list = cluster
        .send(at.list(&params))
        .await
        .map_err(|e| cluster.explain(e))?;
    let mut version = resource_version(&list);
    let objects = items(kind, list);
    let mut widths = Vec::new();
    if matches!(printer.output, None | Some(Output::Wide)) {
        let table = printer.table(kind, &objects);
        for line in table.lines() {
            println!("{line}");
        }
        widths = table.widths;
    } else {
        for object in &objects {
            printer.print_one(kind, object, &widths)?;
        }
    }

    loop {
        let events = cluster
            .watch(at.watch(&watch_params, &version))
            .await
            .map_err(|e| cluster.explain(e))?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event.map_err(|e| cluster.explain(e))? {
                WatchEvent::Added(object)
                | WatchEvent::Modified(object)
                | WatchEvent::Deleted(object) => {
                    version = resource_version(&object);
                    printer.print_one(kind, &with_type(kind, object), &widths)?;
                }
                WatchEvent::Bookmark(bookmark) => version = bookmark.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => {
                    let list = cluster
                        .send(at.list(&params))
                        .await
                        .map_err(|e| cluster.explain(e))?;
                    version = resource_version(&list);
                    for object in items(kind, list) {
                        printer.print_one(kind, &object, &widths)?;
                    }
                    break;
                }
                WatchEvent::Error(status) => return Err(server_error(*status).into()),
            }
        }
    }
}

/// Events oldest first by when they were last seen, as kubectl lists them, so the
/// newest is at the bottom of the terminal.
fn sort_events(events: &mut [Value]) {
    let last_seen = |e: &Value| {
        [
            "/lastTimestamp",
            "/series/lastObservedTime",
            "/eventTime",
            "/firstTimestamp",
            "/metadata/creationTimestamp",
        ]
        .iter()
        .filter_map(|p| e.pointer(p).and_then(Value::as_str))
        .find_map(|t| t.parse::<jiff::Timestamp>().ok())
    };
    events.sort_by_key(|e| last_seen(e));
}

fn resource_version(object: &Value) -> String {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .to_string()
}

/// The items of a list, each with its apiVersion and kind.
fn items(kind: &ResourceKind, mut list: Value) -> Vec<Value> {
    match list.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items.into_iter().map(|o| with_type(kind, o)).collect(),
        _ => Vec::new(),
    }
}

/// Puts `apiVersion` and `kind` first in an object that lacks them (list items may).
fn with_type(kind: &ResourceKind, object: Value) -> Value {
    match object {
        Value::Object(fields) if !fields.contains_key("kind") => {
            let mut typed = Map::new();
            typed.insert("apiVersion".into(), Value::String(kind.api_version()));
            typed.insert("kind".into(), Value::String(kind.kind.to_string()));
            typed.extend(fields);
            Value::Object(typed)
        }
        other => other,
    }
}

/// Rows of cells under a header, with each column's width.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    widths: Vec<usize>,
}

impl Table {
    /// The header and the rows, columns padded to their widths, three spaces apart.
    fn lines(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|cells| align(cells, &self.widths))
    }
}

fn align(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str("   ");
        }
        let width = widths.get(i).copied().unwrap_or(0);
        line.push_str(&format!("{cell:<width$}"));
    }
    line.trim_end().to_string()
}

impl Printer {
    fn table(&self, kind: &ResourceKind, objects: &[Value]) -> Table {
        let wide = self.output == Some(Output::Wide);
        let now = jiff::Timestamp::now();
        let mut header: Vec<String> = printers::columns(kind, wide)
            .into_iter()
            .map(String::from)
            .collect();
        let rows: Vec<Vec<String>> = objects.iter().map(|o| self.row(kind, o, now)).collect();
        if self.all_namespaces && kind.namespaced {
            header.insert(0, "NAMESPACE".to_string());
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        Table {
            header,
            rows,
            widths,
        }
    }

    fn row(&self, kind: &ResourceKind, object: &Value, now: jiff::Timestamp) -> Vec<String> {
        let wide = self.output == Some(Output::Wide);
        let mut row = printers::row(kind, object, wide, now);
        let name_column = printers::columns(kind, wide)
            .iter()
            .position(|c| *c == "NAME");
        if let Some(i) = name_column.filter(|_| self.qualify) {
            row[i] = format!("{}/{}", kind.qualified_singular(), row[i]);
        }
        if self.all_namespaces && kind.namespaced {
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str);
            row.insert(0, namespace.unwrap_or_default().to_string());
        }
        row
    }

    fn name(&self, kind: &ResourceKind, object: &Value) -> String {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        format!("{}/{name}", kind.qualified_singular())
    }

    fn document(&self, value: &Value) -> anyhow::Result<String> {
        Ok(match self.output {
            Some(Output::Json) => format!("{}\n", serde_json::to_string_pretty(value)?),
            _ => serde_saphyr::to_string(value)?,
        })
    }

    /// One object while watching: a row aligned to the first table, a name, or a document.
    fn print_one(
        &self,
        kind: &ResourceKind,
        object: &Value,
        widths: &[usize],
    ) -> anyhow::Result<()> {
        match self.output {
            None | Some(Output::Wide) => {
                println!(
                    "{}",
                    align(&self.row(kind, object, jiff::Timestamp::now()), widths)
                )
            }
            Some(Output::Name) => println!("{}", self.name(kind, object)),
            Some(Output::Yaml) => print!("---\n{}", self.document(object)?),
            Some(Output::Json) => print!("{}", self.document(object)?),
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_control::api::resolve;

    #[test]
    fn tables_align_with_three_spaces_and_namespaces_first() {
        let printer = Printer {
            output: None,
            all_namespaces: true,
            qualify: false,
        };
        let kind = resolve("cm").unwrap();
        let objects = [
            json!({"metadata": {"name": "a", "namespace": "default"}, "data": {"k": "v"}}),
            json!({"metadata": {"name": "longer-name", "namespace": "kube-system"}}),
        ];
        let table = printer.table(kind, &objects);
        let lines: Vec<String> = table.lines().collect();
        assert_eq!(lines[0], "NAMESPACE     NAME          DATA   AGE");
        assert_eq!(lines[1], "default       a             1      <unknown>");
        assert_eq!(lines[2], "kube-system   longer-name   0      <unknown>");
    }

    #[test]
    fn several_kinds_qualify_names() {
        let printer = Printer {
            output: Some(Output::Name),
            all_namespaces: false,
            qualify: true,
        };
        let kind = resolve("deploy").unwrap();
        let object = json!({"metadata": {"name": "web"}});
        assert_eq!(printer.name(kind, &object), "deployment.apps/web");
        let table = Printer {
            output: None,
            ..printer
        }
        .table(kind, &[object]);
        assert!(table.rows[0][0] == "deployment.apps/web");
    }

    #[test]
    fn events_list_by_last_seen() {
        let mut events = vec![
            json!({"metadata": {"name": "b"}, "lastTimestamp": "2024-01-01T00:00:05Z"}),
            json!({"metadata": {"name": "c"}, "eventTime": "2024-01-01T00:00:09.000000Z"}),
            json!({"metadata": {"name": "a"}, "lastTimestamp": "2024-01-01T00:00:01Z",
                   "firstTimestamp": "2024-01-01T00:00:00Z"}),
        ];
        sort_events(&mut events);
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn list_items_get_their_type() {
        let kind = resolve("po").unwrap();
        let list = json!({"items": [{"metadata": {"name": "p"}}]});
        let items = items(kind, list);
        assert_eq!(
            items[0],
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
        );
        assert_eq!(
            items[0].as_object().unwrap().keys().next().unwrap(),
            "apiVersion"
        );
    }
}
