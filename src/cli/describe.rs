//! `wharf describe`: an object as `kubectl describe` shows it, with its Events at the
//! bottom.
//!
//! kubectl writes descriptions as tab-separated lines through Go's `text/tabwriter`
//! (minimum width 0, padding 2), which aligns each run of consecutive lines that share a
//! column; [`tabwrite`] is a port of that algorithm, so the output lines up the way users
//! of kubectl expect (and as scripts that cut columns expect). The describers follow
//! kubectl's `pkg/describe` for pods, deployments, replica sets, nodes, services,
//! config maps and secrets (never printing secret values); any other kind gets kubectl's
//! generic description: name, labels and annotations, then every field of the object.
//!
//! Events are the core/v1 Events whose `involvedObject` is this object (selected by name,
//! namespace and uid), oldest first, under `Events:`; `<none>` when there are none.

use super::cluster::{Cluster, is_not_found};
use super::target::{self, Target};
use super::{finish, report};
use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, Endpoints, Event, Node, Pod, PodTemplateSpec,
    Probe, ResourceRequirements, Service, Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{GetParams, ListParams};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use wharf_control::api::printers;
use wharf_control::api::{ResourceKind, resolve};
use wharf_control::controllers::common::selector_string;
use wharf_control::controllers::deployment::split_new_old;

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// KIND NAME..., KIND/NAME..., or KIND for every object of the kind
    #[arg(value_name = "KIND", required = true)]
    pub args: Vec<String>,

    /// Namespace to look in [default: the kubeconfig context's, else default]
    #[arg(short, long)]
    pub namespace: Option<String>,

    /// Only objects with matching labels, when no name is given
    #[arg(short = 'l', long)]
    pub selector: Option<String>,

    /// Show the objects' events
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub show_events: bool,
}

pub async fn run(cluster: &Cluster, args: DescribeArgs) -> anyhow::Result<()> {
    let targets = target::parse(&args.args)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let mut failed = false;
    let mut first = true;
    for Target { kind, name } in &targets {
        let at = cluster.at(kind, Some(&namespace));
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
                let params = ListParams {
                    label_selector: args.selector.clone(),
                    ..ListParams::default()
                };
                let list = cluster
                    .send(at.list(&params))
                    .await
                    .map_err(|e| cluster.explain(e))?;
                let items = match list.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => Vec::new(),
                };
                if items.is_empty() {
                    if kind.namespaced {
                        eprintln!("No resources found in {namespace} namespace.");
                    } else {
                        eprintln!("No resources found");
                    }
                }
                items
            }
        };
        for object in objects {
            let events = if args.show_events && kind.kind != "Secret" {
                Some(events_of(cluster, kind, &object).await?)
            } else {
                None
            };
            let text = describe(cluster, kind, &object, events.as_deref()).await?;
            if !first {
                print!("\n\n");
            }
            first = false;
            print!("{text}");
        }
    }
    finish(failed)
}

/// The description of one object, by its kind's describer.
async fn describe(
    cluster: &Cluster,
    kind: &ResourceKind,
    object: &Value,
    events: Option<&[Event]>,
) -> anyhow::Result<String> {
    let now = Timestamp::now();
    let text = match (kind.group, kind.kind) {
        ("", "Pod") => typed::<Pod>(object).map(|p| describe_pod(&p, events, now)),
        ("apps", "Deployment") => match typed::<Deployment>(object) {
            Some(d) => {
                let rss = owned_replica_sets(cluster, &d.metadata).await?;
                Some(describe_deployment(&d, &rss, events, now))
            }
            None => None,
        },
        ("apps", "ReplicaSet") => match typed::<ReplicaSet>(object) {
            Some(rs) => {
                let pods = pods_of(cluster, &rs).await?;
                Some(describe_replica_set(&rs, &pods, events, now))
            }
            None => None,
        },
        ("", "Node") => match typed::<Node>(object) {
            Some(node) => {
                let pods = pods_on_node(cluster, &node).await?;
                let lease = node_lease(cluster, &node).await;
                Some(describe_node(&node, lease.as_ref(), &pods, events, now))
            }
            None => None,
        },
        ("", "Service") => match typed::<Service>(object) {
            Some(svc) => {
                let endpoints = service_endpoints(cluster, &svc).await;
                Some(describe_service(&svc, endpoints.as_ref(), events, now))
            }
            None => None,
        },
        ("", "Secret") => Some(describe_secret(object)),
        ("", "ConfigMap") => Some(describe_config_map(object, events, now)),
        _ => None,
    };
    Ok(text.unwrap_or_else(|| describe_generic(object, events, now)))
}

fn typed<T: DeserializeOwned>(object: &Value) -> Option<T> {
    serde_json::from_value(object.clone()).ok()
}

// ---------------------------------------------------------------------------------------
// Fetching what descriptions show besides the object

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The Events about `object`, oldest first.
async fn events_of(
    cluster: &Cluster,
    kind: &ResourceKind,
    object: &Value,
) -> anyhow::Result<Vec<Event>> {
    let events_kind = resolve("events").ok_or_else(|| anyhow::anyhow!("events are not served"))?;
    let namespace = meta_str(object, "namespace");
    let selector = format!(
        "involvedObject.name={},involvedObject.namespace={namespace},involvedObject.uid={}",
        meta_str(object, "name"),
        meta_str(object, "uid"),
    );
    // Events about cluster-scoped objects may live in any namespace.
    let in_namespace = kind.namespaced.then_some(namespace);
    let params = ListParams {
        field_selector: Some(selector),
        ..ListParams::default()
    };
    let list = cluster
        .send(cluster.at(events_kind, in_namespace).list(&params))
        .await
        .map_err(|e| cluster.explain(e))?;
    let mut events: Vec<Event> = list_items(&list);
    events.sort_by_key(|e| last_seen(e).map(|t| t.as_nanosecond()));
    Ok(events)
}

fn list_items<T: DeserializeOwned>(list: &Value) -> Vec<T> {
    list.get("items")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(typed).collect())
        .unwrap_or_default()
}

fn last_seen(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
}

async fn list_json(
    cluster: &Cluster,
    kind: &str,
    namespace: Option<&str>,
    params: &ListParams,
) -> anyhow::Result<Value> {
    let kind = resolve(kind).ok_or_else(|| anyhow::anyhow!("{kind} are not served"))?;
    cluster
        .send(cluster.at(kind, namespace).list(params))
        .await
        .map_err(|e| cluster.explain(e))
}

/// The ReplicaSets a Deployment controls.
async fn owned_replica_sets(cluster: &Cluster, d: &ObjectMeta) -> anyhow::Result<Vec<ReplicaSet>> {
    let list = list_json(
        cluster,
        "replicasets",
        d.namespace.as_deref(),
        &ListParams::default(),
    )
    .await?;
    let rss: Vec<ReplicaSet> = list_items(&list);
    Ok(rss
        .into_iter()
        .filter(|rs| controlled_by(&rs.metadata, d.uid.as_deref()))
        .collect())
}

fn controlled_by(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// The pods a ReplicaSet controls.
async fn pods_of(cluster: &Cluster, rs: &ReplicaSet) -> anyhow::Result<Vec<Pod>> {
    let params = ListParams {
        label_selector: Some(selector_string(&rs.spec.selector)).filter(|s| !s.is_empty()),
        ..ListParams::default()
    };
    let list = list_json(cluster, "pods", rs.metadata.namespace.as_deref(), &params).await?;
    let pods: Vec<Pod> = list_items(&list);
    Ok(pods
        .into_iter()
        .filter(|p| controlled_by(&p.metadata, rs.metadata.uid.as_deref()))
        .collect())
}

/// The pods on a node that have not ended.
async fn pods_on_node(cluster: &Cluster, node: &Node) -> anyhow::Result<Vec<Pod>> {
    let params = ListParams {
        field_selector: Some(format!(
            "spec.nodeName={},status.phase!=Failed,status.phase!=Succeeded",
            node.metadata.name.as_deref().unwrap_or_default()
        )),
        ..ListParams::default()
    };
    let list = list_json(cluster, "pods", None, &params).await?;
    Ok(list_items(&list))
}

async fn node_lease(cluster: &Cluster, node: &Node) -> Option<Value> {
    let kind = resolve("leases")?;
    let name = node.metadata.name.as_deref()?;
    cluster
        .send(
            cluster
                .at(kind, Some("kube-node-lease"))
                .get(name, &GetParams::default()),
        )
        .await
        .ok()
}

async fn service_endpoints(cluster: &Cluster, svc: &Service) -> Option<Endpoints> {
    let kind = resolve("endpoints")?;
    let name = svc.metadata.name.as_deref()?;
    match cluster
        .send(
            cluster
                .at(kind, svc.metadata.namespace.as_deref())
                .get(name, &GetParams::default()),
        )
        .await
    {
        Ok(v) => typed(&v),
        Err(e) if is_not_found(&e) => None,
        Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------
// Go's text/tabwriter, as kubectl configures it

/// Aligns tab-separated cells as Go's `tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)` does:
/// a column's width is the widest cell (plus 2) among the consecutive lines that have
/// a cell in that column; the text after a line's last tab is not a cell.
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    format_block(&lines, 0, lines.len(), &mut widths, &mut out);
    out
}

const PADDING: usize = 2;

fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = 0;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(lines[this][column].chars().count() + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

fn write_lines(lines: &[Vec<&str>], from: usize, to: usize, widths: &[usize], out: &mut String) {
    for (i, line) in lines.iter().enumerate().take(to).skip(from) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() {
                let pad = widths[j].saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

/// Lines at indentation levels (two spaces each), tab-aligned when finished; `flush`
/// starts a new alignment block, as kubectl does before the events table.
#[derive(Default)]
pub struct Writer {
    pending: String,
    done: String,
}

impl Writer {
    pub fn line(&mut self, level: usize, text: impl AsRef<str>) {
        for _ in 0..level {
            self.pending.push_str("  ");
        }
        self.pending.push_str(text.as_ref());
        self.pending.push('\n');
    }

    /// Text without indentation or a newline added (for multi-line values).
    pub fn raw(&mut self, text: impl AsRef<str>) {
        self.pending.push_str(text.as_ref());
    }

    pub fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.done.push_str(&tabwrite(&pending));
    }

    pub fn finish(mut self) -> String {
        self.flush();
        self.done
    }
}

// ---------------------------------------------------------------------------------------
// Pieces every describer uses

const NONE: &str = "<none>";

/// `Mon, 02 Jan 2006 15:04:05 -0700` in local time (Go's RFC1123Z).
pub fn rfc1123z(t: Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

fn time_str(t: Option<&Time>) -> String {
    t.map_or_else(|| "<unset>".to_string(), |t| rfc1123z(t.0))
}

fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(|| "<unknown>".into(), |t| printers::age(t, now))
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { NONE } else { s }
}

/// `Labels:  a=b` then one `k=v` per line, aligned (`printLabelsMultiline`).
fn labels_multiline(
    w: &mut Writer,
    indent: &str,
    title: &str,
    labels: Option<&BTreeMap<String, String>>,
) {
    let labels: Vec<(&String, &String)> = labels.into_iter().flatten().collect();
    if labels.is_empty() {
        w.line(0, format!("{indent}{title}:\t{NONE}"));
        return;
    }
    for (i, (k, v)) in labels.iter().enumerate() {
        if i == 0 {
            w.line(0, format!("{indent}{title}:\t{k}={v}"));
        } else {
            w.line(0, format!("{indent}\t{k}={v}"));
        }
    }
}

const MAX_ANNOTATION_LEN: usize = 140;

/// `printAnnotationsMultiline`: the last-applied configuration is left out, long or
/// multi-line values go on lines of their own.
fn annotations_multiline(
    w: &mut Writer,
    indent: &str,
    title: &str,
    annotations: Option<&BTreeMap<String, String>>,
) {
    let entries: Vec<(&String, &String)> = annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != wharf_control::api::wellknown::LAST_APPLIED_ANNOTATION)
        .collect();
    if entries.is_empty() {
        w.line(0, format!("{indent}{title}:\t{NONE}"));
        return;
    }
    for (i, (k, v)) in entries.iter().enumerate() {
        let lead = if i == 0 {
            format!("{indent}{title}:\t")
        } else {
            format!("{indent}\t")
        };
        let value = v.trim_end_matches('\n');
        if value.len() + k.len() + 2 > MAX_ANNOTATION_LEN || value.contains('\n') {
            w.line(0, format!("{lead}{k}:"));
            for part in value.split('\n') {
                let shown: String = if part.chars().count() > MAX_ANNOTATION_LEN - 2 {
                    let cut: String = part.chars().take(MAX_ANNOTATION_LEN - 5).collect();
                    format!("{cut}...")
                } else {
                    part.to_string()
                };
                w.line(0, format!("{indent}\t  {shown}"));
            }
        } else {
            w.line(0, format!("{lead}{k}: {value}"));
        }
    }
}

fn tolerations_multiline(w: &mut Writer, indent: &str, title: &str, tolerations: &[Toleration]) {
    if tolerations.is_empty() {
        w.line(0, format!("{indent}{title}:\t{NONE}"));
        return;
    }
    let mut sorted: Vec<&Toleration> = tolerations.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for (i, t) in sorted.iter().enumerate() {
        let mut text = t.key.clone().unwrap_or_default();
        if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty()) {
            let _ = write!(text, "={v}");
        }
        if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
            let _ = write!(text, ":{e}");
        }
        if t.operator.as_deref() == Some("Exists") && t.value.as_deref().unwrap_or("").is_empty() {
            if text.is_empty() {
                text.push_str("op=Exists");
            } else {
                text.push_str(" op=Exists");
            }
        }
        if let Some(s) = t.toleration_seconds {
            let _ = write!(text, " for {s}s");
        }
        if i == 0 {
            w.line(0, format!("{indent}{title}:\t{text}"));
        } else {
            w.line(0, format!("{indent}\t{text}"));
        }
    }
}

/// The `Events:` section (kubectl's `DescribeEvents`, in its own alignment block).
fn describe_events(w: &mut Writer, events: Option<&[Event]>, now: Timestamp) {
    let Some(events) = events else { return };
    if events.is_empty() {
        w.line(0, format!("Events:\t{NONE}"));
        return;
    }
    w.flush();
    w.line(0, "Events:");
    w.line(1, "LAST SEEN\tTYPE\tREASON\tFROM\tMESSAGE");
    w.line(1, "---------\t----\t------\t----\t-------");
    for e in events {
        let first = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0));
        let first_since = since(first, now);
        let count = e.count.unwrap_or(1);
        let seen = if count > 1 {
            format!(
                "{} (x{count} over {first_since})",
                since(e.last_timestamp.as_ref().map(|t| t.0), now)
            )
        } else {
            first_since
        };
        let from = e
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| e.reporting_component.clone())
            .unwrap_or_default();
        w.line(
            1,
            format!(
                "{seen}\t{}\t{}\t{from}\t{}",
                e.type_.as_deref().unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default().trim()
            ),
        );
    }
}

fn controller_of(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| format!("{}/{}", r.kind, r.name))
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Containers, volumes, pod templates

fn ports(c: &Container, host: bool) -> String {
    c.ports
        .iter()
        .flatten()
        .map(|p| {
            let port = if host {
                p.host_port.unwrap_or(0)
            } else {
                p.container_port
            };
            format!("{port}/{}", p.protocol.as_deref().unwrap_or("TCP"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn probe_text(p: &Probe) -> String {
    let attrs = format!(
        "delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds.unwrap_or(0),
        p.timeout_seconds.unwrap_or(1),
        p.period_seconds.unwrap_or(10),
        p.success_threshold.unwrap_or(1),
        p.failure_threshold.unwrap_or(3)
    );
    if let Some(exec) = &p.exec {
        return format!(
            "exec [{}] {attrs}",
            exec.command.clone().unwrap_or_default().join(" ")
        );
    }
    if let Some(h) = &p.http_get {
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
        let host = h.host.clone().unwrap_or_default();
        return format!(
            "http-get {scheme}://{host}:{}{} {attrs}",
            int_or_string(&h.port),
            h.path.as_deref().unwrap_or("")
        );
    }
    if let Some(t) = &p.tcp_socket {
        return format!(
            "tcp-socket {}:{} {attrs}",
            t.host.as_deref().unwrap_or(""),
            int_or_string(&t.port)
        );
    }
    if let Some(g) = &p.grpc {
        return format!(
            "grpc <pod>:{} {} {attrs}",
            g.port,
            g.service.as_deref().unwrap_or("")
        );
    }
    format!("unknown {attrs}")
}

fn describe_resources(w: &mut Writer, resources: Option<&ResourceRequirements>, level: usize) {
    let Some(r) = resources else { return };
    for (title, list) in [("Limits", &r.limits), ("Requests", &r.requests)] {
        let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
            continue;
        };
        w.line(level, format!("{title}:"));
        for (name, q) in list {
            w.line(level + 1, format!("{name}:\t{}", q.0));
        }
    }
}

fn describe_state(w: &mut Writer, title: &str, state: Option<&ContainerState>) {
    match state {
        Some(ContainerState {
            running: Some(r), ..
        }) => {
            w.line(2, format!("{title}:\tRunning"));
            w.line(3, format!("Started:\t{}", time_str(r.started_at.as_ref())));
        }
        Some(ContainerState {
            waiting: Some(wt), ..
        }) => {
            w.line(2, format!("{title}:\tWaiting"));
            if let Some(reason) = wt.reason.as_deref().filter(|r| !r.is_empty()) {
                w.line(3, format!("Reason:\t{reason}"));
            }
        }
        Some(ContainerState {
            terminated: Some(t),
            ..
        }) => {
            w.line(2, format!("{title}:\tTerminated"));
            if let Some(reason) = t.reason.as_deref().filter(|r| !r.is_empty()) {
                w.line(3, format!("Reason:\t{reason}"));
            }
            if let Some(message) = t.message.as_deref().filter(|m| !m.is_empty()) {
                w.line(3, format!("Message:\t{message}"));
            }
            w.line(3, format!("Exit Code:\t{}", t.exit_code));
            if let Some(signal) = t.signal.filter(|s| *s > 0) {
                w.line(3, format!("Signal:\t{signal}"));
            }
            w.line(3, format!("Started:\t{}", time_str(t.started_at.as_ref())));
            w.line(
                3,
                format!("Finished:\t{}", time_str(t.finished_at.as_ref())),
            );
        }
        _ => w.line(2, format!("{title}:\tWaiting")),
    }
}

fn describe_containers(
    w: &mut Writer,
    label: &str,
    containers: &[Container],
    statuses: Option<&[ContainerStatus]>,
    space: &str,
) {
    let none = if containers.is_empty() { " <none>" } else { "" };
    w.line(0, format!("{space}{label}:{none}"));
    let name_indent = if space.is_empty() { "" } else { " " };
    for c in containers {
        let status = statuses.and_then(|s| s.iter().find(|s| s.name == c.name));
        w.line(1, format!("{name_indent}{}:", c.name));
        if let Some(s) = status {
            w.line(
                2,
                format!("Container ID:\t{}", s.container_id.as_deref().unwrap_or("")),
            );
        }
        w.line(2, format!("Image:\t{}", c.image.as_deref().unwrap_or("")));
        if let Some(s) = status {
            w.line(2, format!("Image ID:\t{}", s.image_id));
        }
        let p = ports(c, false);
        if p.contains(',') {
            w.line(2, format!("Ports:\t{p}"));
        } else {
            w.line(2, format!("Port:\t{}", or_none(&p)));
        }
        let hp = ports(c, true);
        if hp.contains(',') {
            w.line(2, format!("Host Ports:\t{hp}"));
        } else {
            w.line(2, format!("Host Port:\t{}", or_none(&hp)));
        }
        for (title, list) in [("Command", &c.command), ("Args", &c.args)] {
            if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
                w.line(2, format!("{title}:"));
                for item in list {
                    for part in item.split('\n') {
                        w.line(3, part);
                    }
                }
            }
        }
        if let Some(s) = status {
            describe_state(w, "State", s.state.as_ref());
            if s.last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
            {
                describe_state(w, "Last State", s.last_state.as_ref());
            }
            w.line(
                2,
                format!("Ready:\t{}", if s.ready { "True" } else { "False" }),
            );
            w.line(2, format!("Restart Count:\t{}", s.restart_count));
        }
        describe_resources(w, c.resources.as_ref(), 2);
        for (title, probe) in [
            ("Liveness", &c.liveness_probe),
            ("Readiness", &c.readiness_probe),
            ("Startup", &c.startup_probe),
        ] {
            if let Some(p) = probe {
                w.line(2, format!("{title}:\t{}", probe_text(p)));
            }
        }
        if let Some(env_from) = c.env_from.as_ref().filter(|e| !e.is_empty()) {
            w.line(2, "Environment Variables from:");
            for e in env_from {
                let (name, from, optional) = match (&e.config_map_ref, &e.secret_ref) {
                    (Some(cm), _) => (cm.name.clone(), "ConfigMap", cm.optional.unwrap_or(false)),
                    (None, Some(s)) => (s.name.clone(), "Secret", s.optional.unwrap_or(false)),
                    (None, None) => (String::new(), "", false),
                };
                match e.prefix.as_deref().filter(|p| !p.is_empty()) {
                    None => w.line(3, format!("{name}\t{from}\tOptional: {optional}")),
                    Some(prefix) => w.line(
                        3,
                        format!("{name}\t{from} with prefix '{prefix}'\tOptional: {optional}"),
                    ),
                }
            }
        }
        let env = c.env.as_deref().unwrap_or_default();
        if env.is_empty() {
            w.line(2, format!("Environment:\t{NONE}"));
        } else {
            w.line(2, "Environment:");
        }
        for e in env {
            let Some(from) = &e.value_from else {
                for (i, part) in e.value.as_deref().unwrap_or("").split('\n').enumerate() {
                    if i == 0 {
                        w.line(3, format!("{}:\t{part}", e.name));
                    } else {
                        w.line(3, format!("\t{part}"));
                    }
                }
                continue;
            };
            if let Some(f) = &from.field_ref {
                w.line(
                    3,
                    format!(
                        "{}:\t ({}:{})",
                        e.name,
                        f.api_version.as_deref().unwrap_or("v1"),
                        f.field_path
                    ),
                );
            } else if let Some(s) = &from.secret_key_ref {
                w.line(
                    3,
                    format!(
                        "{}:\t<set to the key '{}' in secret '{}'>\tOptional: {}",
                        e.name,
                        s.key,
                        s.name,
                        s.optional.unwrap_or(false)
                    ),
                );
            } else if let Some(c) = &from.config_map_key_ref {
                w.line(
                    3,
                    format!(
                        "{}:\t<set to the key '{}' of config map '{}'>\tOptional: {}",
                        e.name,
                        c.key,
                        c.name,
                        c.optional.unwrap_or(false)
                    ),
                );
            } else if let Some(r) = &from.resource_field_ref {
                w.line(3, format!("{}:\t{} of container", e.name, r.resource));
            }
        }
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        if mounts.is_empty() {
            w.line(2, format!("Mounts:\t{NONE}"));
        } else {
            w.line(2, "Mounts:");
            let mut sorted: Vec<_> = mounts.iter().collect();
            sorted.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
            for m in sorted {
                let mut flags = vec![if m.read_only == Some(true) {
                    "ro".to_string()
                } else {
                    "rw".to_string()
                }];
                if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    flags.push(format!("path={sub:?}"));
                }
                w.line(
                    3,
                    format!("{} from {} ({})", m.mount_path, m.name, flags.join(",")),
                );
            }
        }
    }
}

fn describe_volumes(w: &mut Writer, volumes: &[Volume], space: &str) {
    if volumes.is_empty() {
        w.line(0, format!("{space}Volumes:\t{NONE}"));
        return;
    }
    w.line(0, format!("{space}Volumes:"));
    let name_indent = if space.is_empty() { "" } else { " " };
    for v in volumes {
        w.line(1, format!("{name_indent}{}:", v.name));
        if let Some(h) = &v.host_path {
            w.line(2, "Type:\tHostPath (bare host directory volume)");
            w.line(2, format!("Path:\t{}", h.path));
            w.line(
                2,
                format!("HostPathType:\t{}", h.type_.as_deref().unwrap_or(NONE)),
            );
        } else if let Some(e) = &v.empty_dir {
            w.line(
                2,
                "Type:\tEmptyDir (a temporary directory that shares a pod's lifetime)",
            );
            w.line(2, format!("Medium:\t{}", e.medium.as_deref().unwrap_or("")));
            let limit = e
                .size_limit
                .as_ref()
                .map(|q| q.0.clone())
                .filter(|q| !q.is_empty() && q != "0")
                .unwrap_or_else(|| "<unset>".into());
            w.line(2, format!("SizeLimit:\t{limit}"));
        } else if let Some(s) = &v.secret {
            w.line(2, "Type:\tSecret (a volume populated by a Secret)");
            w.line(
                2,
                format!("SecretName:\t{}", s.secret_name.as_deref().unwrap_or("")),
            );
            w.line(2, format!("Optional:\t{}", s.optional.unwrap_or(false)));
        } else if let Some(c) = &v.config_map {
            w.line(2, "Type:\tConfigMap (a volume populated by a ConfigMap)");
            w.line(2, format!("Name:\t{}", c.name));
            w.line(2, format!("Optional:\t{}", c.optional.unwrap_or(false)));
        } else {
            w.line(1, "<unknown>");
        }
    }
}

/// `Pod Template:` with labels, annotations, containers and volumes
/// (kubectl's `DescribePodTemplate`).
pub fn describe_pod_template(w: &mut Writer, template: Option<&PodTemplateSpec>) {
    w.line(0, "Pod Template:");
    let Some(template) = template else {
        w.line(1, "<unset>");
        return;
    };
    let meta = template.metadata.clone().unwrap_or_default();
    labels_multiline(w, "  ", "Labels", meta.labels.as_ref());
    if meta.annotations.as_ref().is_some_and(|a| !a.is_empty()) {
        annotations_multiline(w, "  ", "Annotations", meta.annotations.as_ref());
    }
    let spec = template.spec.clone().unwrap_or_default();
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        w.line(1, format!("Service Account:\t{sa}"));
    }
    if let Some(init) = spec.init_containers.as_ref().filter(|i| !i.is_empty()) {
        describe_containers(w, "Init Containers", init, None, "  ");
    }
    describe_containers(w, "Containers", &spec.containers, None, "  ");
    describe_volumes(w, spec.volumes.as_deref().unwrap_or_default(), "  ");
    if let Some(pc) = spec
        .priority_class_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        w.line(1, format!("Priority Class Name:\t{pc}"));
    }
    labels_multiline(w, "  ", "Node-Selectors", spec.node_selector.as_ref());
    tolerations_multiline(
        w,
        "  ",
        "Tolerations",
        spec.tolerations.as_deref().unwrap_or_default(),
    );
}

// ---------------------------------------------------------------------------------------
// The describers

pub fn describe_pod(pod: &Pod, events: Option<&[Event]>, now: Timestamp) -> String {
    let mut w = Writer::default();
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    w.line(0, format!("Name:\t{}", meta.name.as_deref().unwrap_or("")));
    w.line(
        0,
        format!("Namespace:\t{}", meta.namespace.as_deref().unwrap_or("")),
    );
    if let Some(p) = spec.priority {
        w.line(0, format!("Priority:\t{p}"));
    }
    if let Some(pc) = spec
        .priority_class_name
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        w.line(0, format!("Priority Class Name:\t{pc}"));
    }
    w.line(
        0,
        format!(
            "Service Account:\t{}",
            spec.service_account_name.as_deref().unwrap_or("")
        ),
    );
    match spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        None => w.line(0, format!("Node:\t{NONE}")),
        Some(node) => w.line(
            0,
            format!("Node:\t{node}/{}", status.host_ip.as_deref().unwrap_or("")),
        ),
    }
    if let Some(start) = &status.start_time {
        w.line(0, format!("Start Time:\t{}", rfc1123z(start.0)));
    }
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "", "Annotations", meta.annotations.as_ref());
    if let Some(deleting) = &meta.deletion_timestamp {
        w.line(
            0,
            format!(
                "Status:\tTerminating (lasts {})",
                printers::age(deleting.0, now)
            ),
        );
        w.line(
            0,
            format!(
                "Termination Grace Period:\t{}s",
                meta.deletion_grace_period_seconds.unwrap_or(0)
            ),
        );
    } else {
        w.line(
            0,
            format!("Status:\t{}", status.phase.as_deref().unwrap_or("")),
        );
    }
    if let Some(reason) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        w.line(0, format!("Reason:\t{reason}"));
    }
    if let Some(message) = status.message.as_deref().filter(|m| !m.is_empty()) {
        w.line(0, format!("Message:\t{message}"));
    }
    w.line(
        0,
        format!("IP:\t{}", status.pod_ip.as_deref().unwrap_or("")),
    );
    let ips = status.pod_ips.clone().unwrap_or_default();
    if ips.is_empty() {
        w.line(0, format!("IPs:\t{NONE}"));
    } else {
        w.line(0, "IPs:");
        for ip in ips {
            w.line(1, format!("IP:\t{}", ip.ip));
        }
    }
    if let Some(by) = controller_of(meta) {
        w.line(0, format!("Controlled By:\t{by}"));
    }
    if let Some(nominated) = status
        .nominated_node_name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        w.line(0, format!("NominatedNodeName:\t{nominated}"));
    }
    if let Some(init) = spec.init_containers.as_ref().filter(|i| !i.is_empty()) {
        describe_containers(
            &mut w,
            "Init Containers",
            init,
            status.init_container_statuses.as_deref(),
            "",
        );
    }
    describe_containers(
        &mut w,
        "Containers",
        &spec.containers,
        status.container_statuses.as_deref(),
        "",
    );
    if let Some(conditions) = status.conditions.as_ref().filter(|c| !c.is_empty()) {
        w.line(0, "Conditions:");
        w.line(1, "Type\tStatus");
        for c in conditions {
            w.line(1, format!("{} \t{} ", c.type_, c.status));
        }
    }
    describe_volumes(&mut w, spec.volumes.as_deref().unwrap_or_default(), "");
    w.line(
        0,
        format!("QoS Class:\t{}", status.qos_class.as_deref().unwrap_or("")),
    );
    labels_multiline(&mut w, "", "Node-Selectors", spec.node_selector.as_ref());
    tolerations_multiline(
        &mut w,
        "",
        "Tolerations",
        spec.tolerations.as_deref().unwrap_or_default(),
    );
    describe_events(&mut w, events, now);
    w.finish()
}

fn replica_sets_line(rss: &[&ReplicaSet]) -> String {
    let text: Vec<String> = rss
        .iter()
        .map(|rs| {
            format!(
                "{} ({}/{} replicas created)",
                rs.metadata.name.as_deref().unwrap_or(""),
                rs.status.as_ref().map_or(0, |s| s.replicas),
                rs.spec.replicas.unwrap_or(1)
            )
        })
        .collect();
    if text.is_empty() {
        NONE.into()
    } else {
        text.join(", ")
    }
}

pub fn describe_deployment(
    d: &Deployment,
    rss: &[ReplicaSet],
    events: Option<&[Event]>,
    now: Timestamp,
) -> String {
    let mut w = Writer::default();
    let meta = &d.metadata;
    let status = d.status.clone().unwrap_or_default();
    w.line(0, format!("Name:\t{}", meta.name.as_deref().unwrap_or("")));
    w.line(
        0,
        format!("Namespace:\t{}", meta.namespace.as_deref().unwrap_or("")),
    );
    w.line(
        0,
        format!(
            "CreationTimestamp:\t{}",
            time_str(meta.creation_timestamp.as_ref())
        ),
    );
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "", "Annotations", meta.annotations.as_ref());
    w.line(
        0,
        format!("Selector:\t{}", selector_string(&d.spec.selector)),
    );
    w.line(
        0,
        format!(
            "Replicas:\t{} desired | {} updated | {} total | {} available | {} unavailable",
            d.spec.replicas.unwrap_or(1),
            status.updated_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0),
            status.unavailable_replicas.unwrap_or(0)
        ),
    );
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    w.line(
        0,
        format!(
            "StrategyType:\t{}",
            strategy.type_.as_deref().unwrap_or("RollingUpdate")
        ),
    );
    w.line(
        0,
        format!(
            "MinReadySeconds:\t{}",
            d.spec.min_ready_seconds.unwrap_or(0)
        ),
    );
    if let Some(ru) = &strategy.rolling_update {
        let show = |v: &Option<IntOrString>| v.as_ref().map_or_else(|| "0".into(), int_or_string);
        w.line(
            0,
            format!(
                "RollingUpdateStrategy:\t{} max unavailable, {} max surge",
                show(&ru.max_unavailable),
                show(&ru.max_surge)
            ),
        );
    }
    describe_pod_template(&mut w, Some(&d.spec.template));
    if let Some(conditions) = status.conditions.as_ref().filter(|c| !c.is_empty()) {
        w.line(0, "Conditions:");
        w.line(1, "Type\tStatus\tReason");
        w.line(1, "----\t------\t------");
        for c in conditions {
            w.line(
                1,
                format!(
                    "{} \t{}\t{}",
                    c.type_.as_deref().unwrap_or(""),
                    c.status.as_deref().unwrap_or(""),
                    c.reason.as_deref().unwrap_or("")
                ),
            );
        }
    }
    let refs: Vec<&ReplicaSet> = rss.iter().collect();
    let (new, old) = split_new_old(d, &refs);
    if new.is_some() || !old.is_empty() {
        let active_old: Vec<&ReplicaSet> = old
            .into_iter()
            .filter(|rs| rs.spec.replicas.unwrap_or(1) != 0)
            .collect();
        w.line(
            0,
            format!("OldReplicaSets:\t{}", replica_sets_line(&active_old)),
        );
        let new: Vec<&ReplicaSet> = new.into_iter().collect();
        w.line(0, format!("NewReplicaSet:\t{}", replica_sets_line(&new)));
    }
    describe_events(&mut w, events, now);
    w.finish()
}

pub fn describe_replica_set(
    rs: &ReplicaSet,
    pods: &[Pod],
    events: Option<&[Event]>,
    now: Timestamp,
) -> String {
    let mut w = Writer::default();
    let meta = &rs.metadata;
    w.line(0, format!("Name:\t{}", meta.name.as_deref().unwrap_or("")));
    w.line(
        0,
        format!("Namespace:\t{}", meta.namespace.as_deref().unwrap_or("")),
    );
    w.line(
        0,
        format!(
            "Selector:\t{}",
            or_none(&selector_string(&rs.spec.selector))
        ),
    );
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "", "Annotations", meta.annotations.as_ref());
    if let Some(by) = controller_of(meta) {
        w.line(0, format!("Controlled By:\t{by}"));
    }
    w.line(
        0,
        format!(
            "Replicas:\t{} current / {} desired",
            rs.status.as_ref().map_or(0, |s| s.replicas),
            rs.spec.replicas.unwrap_or(1)
        ),
    );
    let phase = |p: &str| {
        pods.iter()
            .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(p))
            .count()
    };
    w.line(
        0,
        format!(
            "Pods Status:\t{} Running / {} Waiting / {} Succeeded / {} Failed",
            phase("Running"),
            phase("Pending"),
            phase("Succeeded"),
            phase("Failed")
        ),
    );
    describe_pod_template(&mut w, rs.spec.template.as_ref());
    if let Some(conditions) = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .filter(|c| !c.is_empty())
    {
        w.line(0, "Conditions:");
        w.line(1, "Type\tStatus\tReason");
        w.line(1, "----\t------\t------");
        for c in conditions {
            w.line(
                1,
                format!(
                    "{} \t{}\t{}",
                    c.type_.as_deref().unwrap_or(""),
                    c.status.as_deref().unwrap_or(""),
                    c.reason.as_deref().unwrap_or("")
                ),
            );
        }
    }
    describe_events(&mut w, events, now);
    w.finish()
}

/// Millicores and bytes of the quantities of `resource` over `pods`' containers.
fn pod_totals(pod: &Pod, resource: &str) -> (i64, i64) {
    let mut requests = 0;
    let mut limits = 0;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.as_ref();
        let amount = |list: Option<
            &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >| {
            list.and_then(|l| l.get(resource))
                .map_or(0, |q| quantity(&q.0, resource))
        };
        requests += amount(r.and_then(|r| r.requests.as_ref()));
        limits += amount(r.and_then(|r| r.limits.as_ref()));
    }
    (requests, limits)
}

/// A quantity in millicores (`cpu`) or bytes (anything else), 0 when unreadable.
fn quantity(q: &str, resource: &str) -> i64 {
    let parsed = if resource == "cpu" {
        wharf_control::api::quantity::milli_value(q)
    } else {
        wharf_control::api::quantity::value(q)
    };
    parsed.unwrap_or(0)
}

/// A total as kubectl prints quantities: `250m`, `2`, `64Mi`, `0`.
fn show_quantity(amount: i64, resource: &str) -> String {
    if resource == "cpu" {
        if amount % 1000 == 0 {
            (amount / 1000).to_string()
        } else {
            format!("{amount}m")
        }
    } else {
        for (suffix, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if amount != 0 && amount % size == 0 {
                return format!("{}{suffix}", amount / size);
            }
        }
        amount.to_string()
    }
}

fn percent(amount: i64, of: i64) -> i64 {
    if of == 0 {
        0
    } else {
        (amount as f64 / of as f64 * 100.0) as i64
    }
}

pub fn describe_node(
    node: &Node,
    lease: Option<&Value>,
    pods: &[Pod],
    events: Option<&[Event]>,
    now: Timestamp,
) -> String {
    let mut w = Writer::default();
    let meta = &node.metadata;
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    w.line(0, format!("Name:\t{}", meta.name.as_deref().unwrap_or("")));
    let mut roles: Vec<String> = meta
        .labels
        .iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
                .or_else(|| (k == "kubernetes.io/role").then(String::new))
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    w.line(
        0,
        format!(
            "Roles:\t{}",
            if roles.is_empty() {
                NONE.to_string()
            } else {
                roles.join(",")
            }
        ),
    );
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "", "Annotations", meta.annotations.as_ref());
    w.line(
        0,
        format!(
            "CreationTimestamp:\t{}",
            time_str(meta.creation_timestamp.as_ref())
        ),
    );
    let taints = spec.taints.clone().unwrap_or_default();
    if taints.is_empty() {
        w.line(0, format!("Taints:\t{NONE}"));
    }
    for (i, t) in taints.iter().enumerate() {
        let value = t
            .value
            .as_deref()
            .map(|v| format!("={v}"))
            .unwrap_or_default();
        let text = format!("{}{value}:{}", t.key, t.effect);
        if i == 0 {
            w.line(0, format!("Taints:\t{text}"));
        } else {
            w.line(0, format!("\t{text}"));
        }
    }
    w.line(
        0,
        format!("Unschedulable:\t{}", spec.unschedulable.unwrap_or(false)),
    );
    if let Some(lease) = lease {
        let field = |f: &str| {
            lease
                .pointer(&format!("/spec/{f}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let time = |f: &str| {
            field(f)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map_or_else(|| "<unset>".to_string(), rfc1123z)
        };
        w.line(0, "Lease:");
        w.line(
            1,
            format!(
                "HolderIdentity:\t{}",
                field("holderIdentity").unwrap_or_else(|| "<unset>".into())
            ),
        );
        w.line(1, format!("AcquireTime:\t{}", time("acquireTime")));
        w.line(1, format!("RenewTime:\t{}", time("renewTime")));
    }
    if let Some(conditions) = status.conditions.as_ref().filter(|c| !c.is_empty()) {
        w.line(0, "Conditions:");
        w.line(
            1,
            "Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage",
        );
        w.line(
            1,
            "----\t------\t-----------------\t------------------\t------\t-------",
        );
        for c in conditions {
            w.line(
                1,
                format!(
                    "{} \t{} \t{} \t{} \t{} \t{}",
                    c.type_,
                    c.status,
                    time_str(c.last_heartbeat_time.as_ref()),
                    time_str(c.last_transition_time.as_ref()),
                    c.reason.as_deref().unwrap_or(""),
                    c.message.as_deref().unwrap_or("")
                ),
            );
        }
    }
    w.line(0, "Addresses:");
    for a in status.addresses.iter().flatten() {
        w.line(1, format!("{}:\t{}", a.type_, a.address));
    }
    for (title, list) in [
        ("Capacity", &status.capacity),
        ("Allocatable", &status.allocatable),
    ] {
        if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
            w.line(0, format!("{title}:"));
            for (name, q) in list {
                w.line(1, format!("{name}:\t{}", q.0));
            }
        }
    }
    let info = status.node_info.clone().unwrap_or_default();
    w.line(0, "System Info:");
    for (title, value) in [
        ("Machine ID", info.machine_id),
        ("System UUID", info.system_uuid),
        ("Boot ID", info.boot_id),
        ("Kernel Version", info.kernel_version),
        ("OS Image", info.os_image),
        ("Operating System", info.operating_system),
        ("Architecture", info.architecture),
        ("Container Runtime Version", info.container_runtime_version),
        ("Kubelet Version", info.kubelet_version),
        ("Kube-Proxy Version", info.kube_proxy_version),
    ] {
        w.line(1, format!("{title}:\t{value}"));
    }
    if let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
        w.line(0, format!("PodCIDR:\t{cidr}"));
    }
    if let Some(cidrs) = spec.pod_cidrs.as_ref().filter(|c| !c.is_empty()) {
        w.line(0, format!("PodCIDRs:\t{}", cidrs.join(",")));
    }
    if let Some(id) = spec.provider_id.as_deref().filter(|c| !c.is_empty()) {
        w.line(0, format!("ProviderID:\t{id}"));
    }
    let allocatable = status
        .allocatable
        .clone()
        .filter(|a| !a.is_empty())
        .or(status.capacity.clone())
        .unwrap_or_default();
    let total = |resource: &str| {
        allocatable
            .get(resource)
            .map_or(0, |q| quantity(&q.0, resource))
    };
    let (cpu_total, mem_total) = (total("cpu"), total("memory"));
    w.line(
        0,
        format!("Non-terminated Pods:\t({} in total)", pods.len()),
    );
    w.line(
        1,
        "Namespace\tName\t\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge",
    );
    w.line(
        1,
        "---------\t----\t\t------------\t----------\t---------------\t-------------\t---",
    );
    let mut sums = [0i64; 4];
    for pod in pods {
        let (cr, cl) = pod_totals(pod, "cpu");
        let (mr, ml) = pod_totals(pod, "memory");
        for (sum, v) in sums.iter_mut().zip([cr, cl, mr, ml]) {
            *sum += v;
        }
        w.line(
            1,
            format!(
                "{}\t{}\t\t{} ({}%)\t{} ({}%)\t{} ({}%)\t{} ({}%)\t{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or(""),
                show_quantity(cr, "cpu"),
                percent(cr, cpu_total),
                show_quantity(cl, "cpu"),
                percent(cl, cpu_total),
                show_quantity(mr, "memory"),
                percent(mr, mem_total),
                show_quantity(ml, "memory"),
                percent(ml, mem_total),
                since(pod.metadata.creation_timestamp.as_ref().map(|t| t.0), now)
            ),
        );
    }
    w.line(0, "Allocated resources:");
    w.line(
        1,
        "(Total limits may be over 100 percent, i.e., overcommitted.)",
    );
    w.line(1, "Resource\tRequests\tLimits");
    w.line(1, "--------\t--------\t------");
    w.line(
        1,
        format!(
            "cpu\t{} ({}%)\t{} ({}%)",
            show_quantity(sums[0], "cpu"),
            percent(sums[0], cpu_total),
            show_quantity(sums[1], "cpu"),
            percent(sums[1], cpu_total)
        ),
    );
    w.line(
        1,
        format!(
            "memory\t{} ({}%)\t{} ({}%)",
            show_quantity(sums[2], "memory"),
            percent(sums[2], mem_total),
            show_quantity(sums[3], "memory"),
            percent(sums[3], mem_total)
        ),
    );
    describe_events(&mut w, events, now);
    w.finish()
}

fn format_endpoints(endpoints: Option<&Endpoints>, port_name: Option<&str>) -> String {
    let Some(endpoints) = endpoints else {
        return NONE.into();
    };
    const MAX: usize = 3;
    let mut list = Vec::new();
    let mut count = 0;
    for subset in endpoints.subsets.iter().flatten() {
        let addresses = subset.addresses.as_deref().unwrap_or_default();
        let ports = subset.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            count += addresses.len();
            list.extend(addresses.iter().map(|a| a.ip.clone()));
            continue;
        }
        for port in ports {
            if port_name.is_none_or(|n| port.name.as_deref().unwrap_or("") == n) {
                count += addresses.len();
                list.extend(addresses.iter().map(|a| format!("{}:{}", a.ip, port.port)));
            }
        }
    }
    let more = list.len() > MAX;
    list.truncate(MAX);
    let text = list.join(",");
    if more {
        format!("{text} + {} more...", count - MAX)
    } else if text.is_empty() {
        NONE.into()
    } else {
        text
    }
}

pub fn describe_service(
    svc: &Service,
    endpoints: Option<&Endpoints>,
    events: Option<&[Event]>,
    now: Timestamp,
) -> String {
    let mut w = Writer::default();
    let meta = &svc.metadata;
    let spec = svc.spec.clone().unwrap_or_default();
    w.line(0, format!("Name:\t{}", meta.name.as_deref().unwrap_or("")));
    w.line(
        0,
        format!("Namespace:\t{}", meta.namespace.as_deref().unwrap_or("")),
    );
    labels_multiline(&mut w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(&mut w, "", "Annotations", meta.annotations.as_ref());
    let selector: Vec<String> = spec
        .selector
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    w.line(0, format!("Selector:\t{}", or_none(&selector.join(","))));
    w.line(
        0,
        format!("Type:\t{}", spec.type_.as_deref().unwrap_or("ClusterIP")),
    );
    if let Some(policy) = &spec.ip_family_policy {
        w.line(0, format!("IP Family Policy:\t{policy}"));
    }
    let families = spec.ip_families.clone().unwrap_or_default();
    w.line(0, format!("IP Families:\t{}", or_none(&families.join(","))));
    w.line(
        0,
        format!("IP:\t{}", spec.cluster_ip.as_deref().unwrap_or("")),
    );
    let ips = spec.cluster_ips.clone().unwrap_or_default();
    w.line(0, format!("IPs:\t{}", or_none(&ips.join(","))));
    if let Some(external) = spec.external_ips.as_ref().filter(|e| !e.is_empty()) {
        w.line(0, format!("External IPs:\t{}", external.join(",")));
    }
    if let Some(name) = spec.external_name.as_deref().filter(|n| !n.is_empty()) {
        w.line(0, format!("External Name:\t{name}"));
    }
    for port in spec.ports.iter().flatten() {
        let name = port
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("<unset>");
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        w.line(0, format!("Port:\t{name}\t{}/{protocol}", port.port));
        let target = port
            .target_port
            .as_ref()
            .map_or_else(|| port.port.to_string(), int_or_string);
        w.line(0, format!("TargetPort:\t{target}/{protocol}"));
        if let Some(node_port) = port.node_port.filter(|p| *p != 0) {
            w.line(0, format!("NodePort:\t{name}\t{node_port}/{protocol}"));
        }
        w.line(
            0,
            format!(
                "Endpoints:\t{}",
                format_endpoints(endpoints, port.name.as_deref())
            ),
        );
    }
    w.line(
        0,
        format!(
            "Session Affinity:\t{}",
            spec.session_affinity.as_deref().unwrap_or("None")
        ),
    );
    describe_events(&mut w, events, now);
    w.finish()
}

fn describe_meta_header(w: &mut Writer, object: &Value) {
    let meta: ObjectMeta = object
        .get("metadata")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    w.line(0, format!("Name:\t{}", meta.name.as_deref().unwrap_or("")));
    w.line(
        0,
        format!("Namespace:\t{}", meta.namespace.as_deref().unwrap_or("")),
    );
    labels_multiline(w, "", "Labels", meta.labels.as_ref());
    annotations_multiline(w, "", "Annotations", meta.annotations.as_ref());
}

/// Secrets show the size of each value, never the value.
pub fn describe_secret(object: &Value) -> String {
    let mut w = Writer::default();
    describe_meta_header(&mut w, object);
    w.raw("\n");
    w.line(
        0,
        format!(
            "Type:\t{}",
            object.get("type").and_then(Value::as_str).unwrap_or("")
        ),
    );
    w.raw("\n");
    w.line(0, "Data");
    w.line(0, "====");
    if let Some(data) = object.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let len = v.as_str().map_or(0, base64_len);
            w.line(0, format!("{k}:\t{len} bytes"));
        }
    }
    w.finish()
}

/// The length of what base64 text decodes to.
fn base64_len(text: &str) -> usize {
    text.trim().trim_end_matches('=').len() * 3 / 4
}

pub fn describe_config_map(object: &Value, events: Option<&[Event]>, now: Timestamp) -> String {
    let mut w = Writer::default();
    describe_meta_header(&mut w, object);
    w.raw("\n");
    w.line(0, "Data");
    w.line(0, "====");
    if let Some(data) = object.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            w.line(0, format!("{k}:"));
            w.line(0, "----");
            w.line(0, v.as_str().unwrap_or_default());
            w.raw("\n");
        }
    }
    w.raw("\n");
    w.line(0, "BinaryData");
    w.line(0, "====");
    if let Some(data) = object.get("binaryData").and_then(Value::as_object) {
        for (k, v) in data {
            let len = v.as_str().map_or(0, base64_len);
            w.line(0, format!("{k}: {len} bytes"));
        }
    }
    w.raw("\n");
    describe_events(&mut w, events, now);
    w.finish()
}

/// `camelCase` to `Camel Case`, as kubectl labels unknown fields (`smartLabelFor`).
pub fn smart_label(field: &str) -> String {
    if field.chars().any(|c| !c.is_alphabetic() && c != '-') {
        return field.to_string();
    }
    let class = |c: char| {
        if c.is_lowercase() {
            1
        } else if c.is_uppercase() {
            2
        } else if c.is_numeric() {
            3
        } else {
            4
        }
    };
    let mut parts: Vec<Vec<char>> = Vec::new();
    let mut last = 0;
    for c in field.chars() {
        let k = class(c);
        match parts.last_mut() {
            Some(part) if k == last => part.push(c),
            _ => parts.push(vec![c]),
        }
        last = k;
    }
    for i in 0..parts.len().saturating_sub(1) {
        if parts[i][0].is_uppercase()
            && parts[i + 1][0].is_lowercase()
            && let Some(moved) = parts[i].pop()
        {
            parts[i + 1].insert(0, moved);
        }
    }
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let word: String = p.into_iter().collect();
            let upper = word.to_uppercase();
            if ["API", "URL", "UID", "OSB", "GUID"].contains(&upper.as_str()) {
                upper
            } else {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|f| f.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        other => other.to_string(),
    }
}

/// Every field of `content`, nested by indentation (`printUnstructuredContent`).
fn unstructured(
    w: &mut Writer,
    level: usize,
    content: &serde_json::Map<String, Value>,
    prefix: &str,
    skip: &[&str],
) {
    let mut fields: Vec<&String> = content.keys().collect();
    fields.sort();
    for field in fields {
        let path = format!("{prefix}.{field}");
        if skip.contains(&path.as_str()) {
            continue;
        }
        match &content[field] {
            Value::Object(map) => {
                w.line(level, format!("{}:", smart_label(field)));
                unstructured(w, level + 1, map, &path, skip);
            }
            Value::Array(items) => {
                w.line(level, format!("{}:", smart_label(field)));
                for item in items {
                    match item {
                        Value::Object(map) => unstructured(w, level + 1, map, &path, skip),
                        other => w.line(level + 1, scalar(other)),
                    }
                }
            }
            other => w.line(level, format!("{}:\t{}", smart_label(field), scalar(other))),
        }
    }
}

/// Any other kind: name, labels, annotations, then its fields.
pub fn describe_generic(object: &Value, events: Option<&[Event]>, now: Timestamp) -> String {
    let mut w = Writer::default();
    describe_meta_header(&mut w, object);
    if let Some(map) = object.as_object() {
        unstructured(
            &mut w,
            0,
            map,
            "",
            &[
                ".metadata.managedFields",
                ".metadata.name",
                ".metadata.namespace",
                ".metadata.labels",
                ".metadata.annotations",
            ],
        );
    }
    describe_events(&mut w, events, now);
    w.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tabwriter_aligns_runs_of_lines_like_go() {
        let text = "Name:\tweb\nNamespace:\tdefault\nLabels:\tapp=web\n\ttier=front\nConditions:\n  Type\tStatus\n  Ready \tTrue \n";
        assert_eq!(
            tabwrite(text),
            "Name:       web\n\
             Namespace:  default\n\
             Labels:     app=web\n\
             \x20           tier=front\n\
             Conditions:\n\
             \x20 Type    Status\n\
             \x20 Ready   True \n"
        );
        // A line without a tab ends a column block; the next block aligns on its own.
        assert_eq!(
            tabwrite("a\tb\nlonger\tc\nx\ny\tz\n"),
            "a       b\nlonger  c\nx\ny  z\n"
        );
        // Nested columns: the second column aligns only where lines have a third cell.
        assert_eq!(
            tabwrite("a\tbb\tc\naa\tb\tc\nq\tr\n"),
            "a   bb  c\naa  b   c\nq   r\n"
        );
    }

    #[test]
    fn labels_follow_kubectl() {
        assert_eq!(smart_label("creationTimestamp"), "Creation Timestamp");
        assert_eq!(smart_label("apiVersion"), "API Version");
        assert_eq!(smart_label("podCIDR"), "Pod CIDR");
        assert_eq!(smart_label("uid"), "UID");
        assert_eq!(smart_label("data"), "Data");
        assert_eq!(
            smart_label("app.kubernetes.io/name"),
            "app.kubernetes.io/name"
        );
    }

    #[test]
    fn events_print_under_their_own_header_or_none() {
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let mut w = Writer::default();
        describe_events(&mut w, Some(&[]), now);
        assert_eq!(w.finish(), "Events:  <none>\n");

        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "e1", "namespace": "default"},
            "involvedObject": {"kind": "Deployment", "name": "web"},
            "type": "Normal",
            "reason": "ScalingReplicaSet",
            "message": "Scaled up replica set web-5d4f8 from 0 to 3",
            "count": 3,
            "firstTimestamp": "2023-11-14T22:13:20Z",
            "lastTimestamp": "2023-11-14T22:14:30Z",
            "source": {"component": "deployment-controller"}
        }))
        .unwrap();
        let mut w = Writer::default();
        w.line(0, "Name:\tweb");
        describe_events(&mut w, Some(&[event]), now);
        let text = w.finish();
        assert_eq!(
            text,
            "Name:  web\n\
             Events:\n\
             \x20 LAST SEEN           TYPE    REASON             FROM                   MESSAGE\n\
             \x20 ---------           ----    ------             ----                   -------\n\
             \x20 30s (x3 over 100s)  Normal  ScalingReplicaSet  deployment-controller  Scaled up replica set web-5d4f8 from 0 to 3\n"
        );
    }

    #[test]
    fn deployments_describe_like_kubectl() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d1",
                         "creationTimestamp": "2023-11-14T22:13:20Z",
                         "annotations": {"deployment.kubernetes.io/revision": "2",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "v2.wasm",
                                           "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}},
            "status": {"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3,
                       "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                      {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
        }))
        .unwrap();
        let rs = |name: &str, image: &str, replicas: i32| -> ReplicaSet {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default",
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                  "name": "web", "uid": "d1", "controller": true}]},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "h"}},
                                      "spec": {"containers": [{"name": "web", "image": image,
                                               "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}},
                "status": {"replicas": replicas}
            }))
            .unwrap()
        };
        let text = describe_deployment(
            &d,
            &[rs("web-old", "v1.wasm", 0), rs("web-new", "v2.wasm", 3)],
            Some(&[]),
            Timestamp::now(),
        );
        for line in [
            "Name:                   web\n",
            "Annotations:            deployment.kubernetes.io/revision: 2\n",
            "Selector:               app=web\n",
            "Replicas:               3 desired | 3 updated | 3 total | 3 available | 0 unavailable\n",
            "StrategyType:           RollingUpdate\n",
            "RollingUpdateStrategy:  25% max unavailable, 25% max surge\n",
            "Pod Template:\n  Labels:  app=web\n  Containers:\n   web:\n",
            "    Image:         v2.wasm\n    Port:          8080/TCP\n    Host Port:     0/TCP\n",
            "    Environment:   <none>\n    Mounts:        <none>\n  Volumes:         <none>\n",
            "  Available      True    MinimumReplicasAvailable\n",
            "OldReplicaSets:  <none>\n",
            "NewReplicaSet:   web-new (3/3 replicas created)\n",
            "Events:          <none>\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("last-applied"), "{text}");
    }

    #[test]
    fn secrets_never_show_values_and_other_kinds_show_fields() {
        let secret = json!({"metadata": {"name": "s", "namespace": "default"},
                            "type": "Opaque", "data": {"password": "c2VjcmV0"}});
        let text = describe_secret(&secret);
        assert!(text.contains("password:  6 bytes"), "{text}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("secret\n"),
            "{text}"
        );

        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "n1", "namespace": "kube-node-lease", "uid": "u"},
                           "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}});
        let text = describe_generic(&lease, None, Timestamp::now());
        assert!(
            text.starts_with("Name:         n1\nNamespace:    kube-node-lease\n"),
            "{text}"
        );
        assert!(
            text.contains("API Version:  coordination.k8s.io/v1\n"),
            "{text}"
        );
        assert!(
            text.contains("Spec:\n  Holder Identity:         n1\n"),
            "{text}"
        );
        assert!(text.contains("  Lease Duration Seconds:  40\n"), "{text}");
        assert!(text.contains("Metadata:\n  UID:  u\n"), "{text}");
    }
}
