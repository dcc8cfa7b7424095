// The dashboard's pages. Each page renders into a container and returns a function that
// stops its watches and streams; the decisions (allocation, rollout state, which
// revision to undo to) are plain functions of API objects, apart from the DOM.
//
// Everything from the API is set as text (textContent), never as markup: with the
// Content-Security-Policy this keeps a hostile object name from becoming code.

import * as api from "./api.js";
import { parse, splitDocuments } from "./yaml.js";

const { enc } = api;

// ---- DOM helpers --------------------------------------------------------------------

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(columns, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows));
}

// A panel that shows a watched list, a "not allowed" note on 403, or an error.
function panel(title, id) {
  const body = h("div", { class: "panel-body" }, h("p", { class: "loading" }, "Loading…"));
  const section = h("section", { class: "panel", id }, h("h2", {}, title), body);
  return {
    section,
    show(content) {
      const old = body.firstElementChild;
      if (old?.tagName === "TABLE" && content.tagName === "TABLE" && old.tHead.outerHTML === content.tHead.outerHTML) {
        patchRows(old.tBodies[0], content.tBodies[0]);
      } else {
        body.replaceChildren(content);
      }
    },
    fail(err) { body.replaceChildren(failure(err)); },
  };
}

const rowKey = (r) => (r.dataset.name ? `${r.dataset.kind}/${r.dataset.namespace || ""}/${r.dataset.name}` : r.outerHTML);

// Redraws only the rows that changed: a row whose markup is the same stays the same
// element, so a watch event elsewhere in the table does not pull a button away from
// under the pointer (rows whose handlers depend on the object carry its
// resourceVersion, so they are redrawn when it changes).
function patchRows(oldBody, newBody) {
  const kept = new Map([...oldBody.rows].map((r) => [rowKey(r), r]));
  const rows = [...newBody.rows].map((r) => {
    const old = kept.get(rowKey(r));
    return old && old.outerHTML === r.outerHTML ? old : r;
  });
  if (rows.length === oldBody.rows.length && rows.every((r, i) => r === oldBody.rows[i])) return;
  oldBody.replaceChildren(...rows);
}

export function failure(err) {
  if (err && err.forbidden) {
    return h("p", { class: "forbidden", role: "note" }, "Not allowed: ", err.message);
  }
  return h("p", { class: "error", role: "alert" }, String(err && err.message ? err.message : err));
}

const link = (href, text) => h("a", { href }, text);
export const podHref = (ns, name) => `#/pod/${enc(ns)}/${enc(name)}`;

function age(ts) {
  if (!ts) return "";
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 120) return Math.floor(s) + "s";
  if (s < 7200) return Math.floor(s / 60) + "m";
  if (s < 172800) return Math.floor(s / 3600) + "h";
  return Math.floor(s / 86400) + "d";
}

// The notice line under the header: results of actions.
export function notify(message, kind = "info") {
  const el = document.getElementById("notice");
  el.className = "notice " + kind;
  el.textContent = message;
}

// Asks before doing anything that changes the cluster: resolves true or false; with
// `number` given, the dialog also asks for a number (starting at it) and resolves with
// what was entered, or null when cancelled.
export function confirmAction(text, detail = "", number = undefined) {
  const dialog = document.getElementById("confirm");
  const input = document.getElementById("confirm-number");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-detail").textContent = detail;
  input.hidden = number === undefined;
  if (number !== undefined) input.value = String(number);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const ok = dialog.returnValue === "ok";
      resolve(number === undefined ? ok : ok ? input.value : null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function act(question, detail, work, done) {
  if (await confirmAction(question, detail)) await perform(work, done);
}

async function perform(work, done) {
  try {
    await work();
    notify(done, "ok");
  } catch (err) {
    notify((err.forbidden ? "Not allowed: " : "Failed: ") + err.message, "error");
  }
}

// ---- pure decisions -------------------------------------------------------------------

const TERMINATED = new Set(["Succeeded", "Failed"]);

// A container's request for `resource`: its requests, else its limits (the API
// defaults requests to limits).
const containerRequest = (c, resource) => api.quantity(c.resources?.requests?.[resource] ?? c.resources?.limits?.[resource]);

// What a pod requests, as the scheduler counts it: containers summed, or the largest
// init container if that is more, plus the pod's overhead.
export function podRequest(p, resource) {
  const sum = (p.spec?.containers || []).reduce((n, c) => n + containerRequest(c, resource), 0);
  const init = Math.max(0, ...(p.spec?.initContainers || []).map((c) => containerRequest(c, resource)));
  return Math.max(sum, init) + api.quantity(p.spec?.overhead?.[resource]);
}

// What the pods on each node request (terminated pods hold nothing), and how many
// pods each node has.
export function allocation(pods) {
  const byNode = new Map();
  for (const p of pods) {
    const node = p.spec?.nodeName;
    if (!node) continue;
    const a = byNode.get(node) || { cpu: 0, memory: 0, pods: 0, running: 0 };
    a.pods++;
    if (!TERMINATED.has(p.status?.phase)) {
      a.running++;
      a.cpu += podRequest(p, "cpu");
      a.memory += podRequest(p, "memory");
    }
    byNode.set(node, a);
  }
  return byNode;
}

// A Deployment's rollout state as `rollout status` reports it: [state, words].
export function rolloutState(d) {
  const s = d.status || {};
  const want = d.spec?.replicas ?? 1;
  if ((s.observedGeneration || 0) < (d.metadata.generation || 0)) return ["progressing", "waiting for the controller to see the new spec"];
  const progressing = (s.conditions || []).find((c) => c.type === "Progressing");
  if (progressing && progressing.reason === "ProgressDeadlineExceeded") return ["failed", progressing.message || "progress deadline exceeded"];
  if (d.spec?.paused) return ["paused", "rollout paused"];
  const updated = s.updatedReplicas || 0;
  if (updated < want) return ["progressing", `${updated} of ${want} updated replicas`];
  if ((s.replicas || 0) > updated) return ["progressing", `${s.replicas - updated} old replicas pending termination`];
  if ((s.availableReplicas || 0) < updated) return ["progressing", `${s.availableReplicas || 0} of ${updated} updated replicas available`];
  return ["complete", "rolled out"];
}

const revisionOf = (o) => parseInt(o.metadata.annotations?.["deployment.kubernetes.io/revision"] ?? "0", 10);

// The ReplicaSet of the revision before the Deployment's current one, or null.
export function previousRevision(d, replicaSets) {
  const owned = replicaSets.filter((rs) => (rs.metadata.ownerReferences || []).some((o) => o.uid === d.metadata.uid));
  const current = revisionOf(d);
  return owned.filter((rs) => revisionOf(rs) < current).sort((a, b) => revisionOf(b) - revisionOf(a))[0] || null;
}

function podReady(p) {
  const cs = p.status?.containerStatuses || [];
  return `${cs.filter((c) => c.ready).length}/${(p.spec?.containers || []).length}`;
}
const restarts = (p) => (p.status?.containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0);

function podStatus(p) {
  if (p.metadata.deletionTimestamp) return "Terminating";
  for (const c of p.status?.containerStatuses || []) {
    if (c.state?.waiting?.reason) return c.state.waiting.reason;
    if (c.state?.terminated?.reason && p.status.phase !== "Succeeded") return c.state.terminated.reason;
  }
  return p.status?.phase || "Pending";
}

const rate = (n) => (n >= 10 ? n.toFixed(0) : n.toFixed(2).replace(/\.?0+$/, "") || "0");
const cores = (n) => (n >= 1 ? n.toFixed(2).replace(/\.?0+$/, "") : Math.round(n * 1000) + "m");
function bytes(n) {
  const units = ["B", "Ki", "Mi", "Gi", "Ti"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + units[i];
}

function usage(used, total, fmt) {
  return h("span", { class: "usage" },
    h("meter", { min: 0, max: total || 1, value: used, high: (total || 1) * 0.9 }),
    ` ${fmt(used)} / ${fmt(total)}`);
}

const byName = (a, b) => ((a.metadata.namespace || "") + a.metadata.name).localeCompare((b.metadata.namespace || "") + b.metadata.name);
const eventTime = (e) => e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp || "";

function podRows(pods, withNamespace) {
  return pods.sort(byName).map((p) => h("tr", { "data-kind": "Pod", "data-name": p.metadata.name, "data-namespace": p.metadata.namespace },
    withNamespace ? h("td", {}, p.metadata.namespace) : null,
    h("td", {}, link(podHref(p.metadata.namespace, p.metadata.name), p.metadata.name)),
    h("td", { class: "ready" }, podReady(p)),
    h("td", { class: "status" }, podStatus(p)),
    h("td", {}, restarts(p)),
    h("td", {}, p.spec?.nodeName || "—"),
    h("td", {}, age(p.metadata.creationTimestamp))));
}

function eventRows(events) {
  return events.map((e) => h("tr", { class: e.type === "Warning" ? "warning" : "" },
    h("td", {}, age(eventTime(e))),
    h("td", {}, e.type),
    h("td", {}, e.reason),
    h("td", {}, `${e.involvedObject?.kind || ""}/${e.involvedObject?.name || ""}`),
    h("td", {}, e.message),
    h("td", {}, e.count || 1)));
}

// ---- pages ----------------------------------------------------------------------------

export function overview(view) {
  const nodesPanel = panel("Nodes", "nodes");
  const podsPanel = panel("Pods", "pods");
  const eventsPanel = panel("Recent warnings", "warnings");
  view.replaceChildren(h("h1", {}, "Cluster overview"), nodesPanel.section, podsPanel.section, eventsPanel.section);
  let nodes = null;
  let pods = [];
  const drawNodes = () => {
    if (!nodes) return;
    const alloc = allocation(pods);
    nodesPanel.show(table(["Node", "Ready", "CPU requested", "Memory requested", "Pods"],
      nodes.sort(byName).map((n) => {
        const a = alloc.get(n.metadata.name) || { cpu: 0, memory: 0, pods: 0, running: 0 };
        const cap = n.status?.allocatable || n.status?.capacity || {};
        const ready = (n.status?.conditions || []).find((c) => c.type === "Ready");
        return h("tr", { "data-kind": "Node", "data-name": n.metadata.name },
          h("td", {}, n.metadata.name),
          h("td", { class: ready?.status === "True" ? "ok" : "bad" }, ready?.status === "True" ? "Ready" : "NotReady"),
          h("td", {}, usage(a.cpu, api.quantity(cap.cpu), cores)),
          h("td", {}, usage(a.memory, api.quantity(cap.memory), bytes)),
          h("td", {}, `${a.running} / ${cap.pods ?? "?"}`));
      }), "No nodes."));
  };
  const stops = [
    api.watchList("/api/v1/nodes", (items) => { nodes = items; drawNodes(); }, (e) => nodesPanel.fail(e)),
    api.watchList("/api/v1/pods", (items) => {
      pods = items;
      drawNodes();
      podsPanel.show(table(["Namespace", "Pod", "Ready", "Status", "Restarts", "Node", "Age"], podRows(items, true), "No pods."));
    }, (e) => { podsPanel.fail(e); if (!nodes) return; drawNodes(); }),
    api.watchList("/api/v1/events", (items) => {
      const warnings = items.filter((e) => e.type === "Warning").sort((a, b) => eventTime(b).localeCompare(eventTime(a))).slice(0, 20);
      eventsPanel.show(table(["Age", "Type", "Reason", "Object", "Message", "Count"], eventRows(warnings), "No warnings."));
    }, (e) => eventsPanel.fail(e)),
  ];
  return () => stops.forEach((s) => s());
}

export function workloads(view, ns) {
  ns = ns || "default";
  const select = h("select", { id: "namespace", onchange: () => { location.hash = "#/workloads/" + enc(select.value); } }, h("option", { value: ns }, ns));
  const panels = {
    Deployment: panel("Deployments", "deployments"),
    DaemonSet: panel("DaemonSets", "daemonsets"),
    Job: panel("Jobs", "jobs"),
    ReplicaSet: panel("ReplicaSets", "replicasets"),
    Pod: panel("Pods", "ns-pods"),
  };
  view.replaceChildren(h("h1", {}, "Workloads in ", select), ...Object.values(panels).map((p) => p.section));
  api.get("/api/v1/namespaces").then((l) => {
    select.replaceChildren(...l.items.map((n) => n.metadata.name).sort().map((name) => h("option", { value: name, selected: name === ns }, name)));
  }).catch(() => { /* listing namespaces may be forbidden: the current one stays */ });

  let replicaSets = [];
  const base = (kind, name) => `${api.collection(kind, ns)}/${enc(name)}`;
  const deleteButton = (kind, o) => h("button", { class: "danger", "data-action": "delete", onclick: () => act(
    `Delete ${kind} ${ns}/${o.metadata.name}?`, "Its pods are deleted with it (background propagation).",
    () => api.request("DELETE", base(kind, o.metadata.name) + "?propagationPolicy=Background"),
    `${kind} ${o.metadata.name} deleted`) }, "Delete");

  const deploymentRow = (d) => {
    const [state, words] = rolloutState(d);
    const s = d.status || {};
    const name = d.metadata.name;
    const current = d.spec?.replicas ?? 1;
    return h("tr", { "data-kind": "Deployment", "data-name": name, "data-rv": d.metadata.resourceVersion },
      h("td", {}, name),
      h("td", { class: "ready" }, `${s.readyReplicas || 0}/${current}`),
      h("td", {}, s.updatedReplicas || 0),
      h("td", {}, s.availableReplicas || 0),
      h("td", { class: "rollout state-" + state, title: words }, `${state}: ${words}`),
      h("td", { class: "actions" },
        h("button", { "data-action": "scale", onclick: async () => {
          const answer = await confirmAction(`Scale deployment ${ns}/${name} to how many replicas?`, `It has ${current} now.`, current);
          if (answer === null) return;
          const to = answer.trim() === "" ? NaN : Number(answer);
          if (!Number.isInteger(to) || to < 0) { notify("replicas must be a whole number of at least 0", "error"); return; }
          await perform(() => api.request("PATCH", base("Deployment", name) + "/scale", { contentType: "application/merge-patch+json", body: { spec: { replicas: to } } }),
            `deployment ${name} scaled to ${to}`);
        } }, "Scale"),
        h("button", { "data-action": "restart", onclick: () => act(`Restart deployment ${ns}/${name}?`,
          "Every pod is replaced, as the rollout strategy allows.",
          () => api.request("PATCH", base("Deployment", name), { contentType: "application/strategic-merge-patch+json",
            body: { spec: { template: { metadata: { annotations: { "kubectl.kubernetes.io/restartedAt": new Date().toISOString() } } } } } }),
          `deployment ${name} restarted`) }, "Restart"),
        h("button", { "data-action": "undo", onclick: () => {
          const prev = previousRevision(d, replicaSets);
          if (!prev) { notify(`deployment ${name} has no previous revision to go back to`, "error"); return; }
          const template = structuredClone(prev.spec.template);
          if (template.metadata?.labels) delete template.metadata.labels["pod-template-hash"];
          act(`Roll deployment ${ns}/${name} back to revision ${revisionOf(prev)}?`, JSON.stringify(template.spec?.containers?.map((c) => ({ name: c.name, image: c.image })), null, 1),
            () => api.request("PATCH", base("Deployment", name), { contentType: "application/json-patch+json", body: [{ op: "replace", path: "/spec/template", value: template }] }),
            `deployment ${name} rolled back to revision ${revisionOf(prev)}`);
        } }, "Undo"),
        deleteButton("Deployment", d)));
  };

  const rows = {
    Deployment: [["Name", "Ready", "Up-to-date", "Available", "Rollout", "Actions"], deploymentRow],
    DaemonSet: [["Name", "Desired", "Ready", "Up-to-date", "Actions"], (o) => h("tr", { "data-kind": "DaemonSet", "data-name": o.metadata.name },
      h("td", {}, o.metadata.name), h("td", {}, o.status?.desiredNumberScheduled || 0), h("td", { class: "ready" }, o.status?.numberReady || 0),
      h("td", {}, o.status?.updatedNumberScheduled || 0), h("td", {}, deleteButton("DaemonSet", o)))],
    Job: [["Name", "Completions", "Active", "Failed", "State", "Actions"], (o) => {
      const done = (o.status?.conditions || []).find((c) => (c.type === "Complete" || c.type === "Failed") && c.status === "True");
      return h("tr", { "data-kind": "Job", "data-name": o.metadata.name },
        h("td", {}, o.metadata.name), h("td", {}, `${o.status?.succeeded || 0}/${o.spec?.completions ?? 1}`),
        h("td", {}, o.status?.active || 0), h("td", {}, o.status?.failed || 0), h("td", {}, done ? done.type : "Running"), h("td", {}, deleteButton("Job", o)));
    }],
    ReplicaSet: [["Name", "Revision", "Desired", "Ready", "Owner"], (o) => h("tr", { "data-kind": "ReplicaSet", "data-name": o.metadata.name },
      h("td", {}, o.metadata.name), h("td", {}, revisionOf(o) || ""), h("td", {}, o.spec?.replicas ?? 1), h("td", { class: "ready" }, o.status?.readyReplicas || 0),
      h("td", {}, (o.metadata.ownerReferences || []).map((r) => `${r.kind}/${r.name}`).join(", ")))],
  };
  const stops = Object.entries(rows).map(([kind, [columns, row]]) => api.watchList(api.collection(kind, ns), (items) => {
    if (kind === "ReplicaSet") replicaSets = items;
    panels[kind].show(table(columns, items.sort(byName).map(row), `No ${kind}s in ${ns}.`));
  }, (e) => panels[kind].fail(e)));
  stops.push(api.watchList(api.collection("Pod", ns), (items) => panels.Pod.show(
    table(["Pod", "Ready", "Status", "Restarts", "Node", "Age"], podRows(items, false), `No pods in ${ns}.`)), (e) => panels.Pod.fail(e)));
  return () => stops.forEach((s) => s());
}

function probeText(p) {
  if (!p) return "—";
  const how = p.httpGet ? `http GET :${p.httpGet.port}${p.httpGet.path || "/"}`
    : p.tcpSocket ? `tcp :${p.tcpSocket.port}`
      : p.exec ? `exec ${(p.exec.command || []).join(" ")}`
        : p.grpc ? `grpc :${p.grpc.port}` : "?";
  return `${how} every ${p.periodSeconds ?? 10}s (delay ${p.initialDelaySeconds ?? 0}s, timeout ${p.timeoutSeconds ?? 1}s, fail after ${p.failureThreshold ?? 3})`;
}

function stateText(s) {
  if (!s) return "—";
  if (s.running) return `Running since ${s.running.startedAt || "?"}`;
  if (s.waiting) return `Waiting: ${s.waiting.reason || ""}${s.waiting.message ? " (" + s.waiting.message + ")" : ""}`;
  if (s.terminated) return `Terminated: ${s.terminated.reason || ""}, exit code ${s.terminated.exitCode}${s.terminated.message ? " (" + s.terminated.message + ")" : ""}`;
  return "—";
}

// ---- usage graphs ----------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const METRICS_PERIOD_MS = 15000;
const METRICS_KEEP = 240; // an hour of samples at the period above

// The polyline points of `values` scaled into a width x height box (0 at the bottom).
export function sparkline(values, width, height) {
  const max = Math.max(...values, 0) || 1;
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / max) * height).toFixed(1)}`).join(" ");
}

function graph(values, fmt) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 240 40");
  svg.setAttribute("class", "spark");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", sparkline(values, 240, 40));
  svg.append(line);
  const last = values[values.length - 1];
  return h("span", { class: "graph" }, svg, ` ${fmt(last)} (max ${fmt(Math.max(...values))})`);
}

// CPU, memory and (for HTTP handlers) requests per second per container: the last hour
// the API server keeps (/wharf/v1/.../usage), read again every period. Without that
// history (an older control plane, or not allowed) metrics.k8s.io is sampled while the
// page is open instead (CPU and memory, kept for an hour). Polls only when the cluster
// serves metrics.k8s.io, so a cluster without it shows a note instead of failing requests.
function usagePanel(ns, name) {
  const p = panel("Usage", "usage");
  let samples = new Map(); // container -> {cpu: [], memory: [], requests: []}
  let timer = null;
  let stopped = false;
  let kept = true; // the history answers; false once it did not
  const requestsCell = (s) => s.requests.some((v) => v !== null)
    ? graph(s.requests.map((v) => v ?? 0), rate)
    : "—";
  const draw = () => p.show(table(["Container", "CPU (cores)", "Memory", "Requests/s"], [...samples].map(([c, s]) =>
    h("tr", { "data-kind": "Container", "data-name": c }, h("td", {}, c), h("td", { class: "cpu" }, graph(s.cpu, cores)),
      h("td", { class: "memory" }, graph(s.memory, bytes)), h("td", { class: "requests" }, requestsCell(s)))),
  "No samples yet."));
  function add(into, container, cpu, memory, requests) {
    const s = into.get(container) || { cpu: [], memory: [], requests: [] };
    s.cpu.push(cpu);
    s.memory.push(memory);
    s.requests.push(requests);
    if (s.cpu.length > METRICS_KEEP) { s.cpu.shift(); s.memory.shift(); s.requests.shift(); }
    into.set(container, s);
  }
  // The kept history, drawn; false when there is none to draw.
  async function history() {
    let points;
    try {
      points = (await api.get(`/wharf/v1/namespaces/${enc(ns)}/pods/${enc(name)}/usage`)).points || [];
    } catch (err) {
      kept = false;
      return false;
    }
    if (!points.length) return false;
    const fresh = new Map();
    for (const point of points) {
      for (const c of point.containers || []) add(fresh, c.name, c.cpuNanocores / 1e9, c.memoryBytes, c.requestsPerSecond ?? null);
    }
    samples = fresh;
    draw();
    return true;
  }
  async function sample() {
    try {
      const m = await api.get(`/apis/metrics.k8s.io/v1beta1/namespaces/${enc(ns)}/pods/${enc(name)}`);
      for (const c of m.containers || []) add(samples, c.name, api.quantity(c.usage?.cpu), api.quantity(c.usage?.memory), null);
      draw();
    } catch (err) {
      p.fail(err);
    }
  }
  async function tick() {
    if (!(kept && await history()) && !stopped) await sample();
    if (!stopped) timer = setTimeout(tick, METRICS_PERIOD_MS);
  }
  api.get("/apis").then((groups) => {
    if (stopped) return;
    if ((groups.groups || []).some((g) => g.name === "metrics.k8s.io")) tick();
    else p.show(h("p", { class: "empty" }, "No usage graphs: this cluster does not serve metrics.k8s.io."));
  }).catch((err) => p.fail(err));
  return { section: p.section, stop: () => { stopped = true; clearTimeout(timer); } };
}

export function pod(view, ns, name) {
  const summary = panel("Pod", "pod-summary");
  const containers = panel("Containers", "containers");
  const events = panel("Events", "pod-events");
  const logPre = h("pre", { id: "log", class: "log", "aria-live": "off" });
  const logState = h("span", { id: "log-state", class: "hint" });
  const containerSelect = h("select", { id: "log-container", onchange: () => startLog() });
  const logs = h("section", { class: "panel", id: "logs" }, h("h2", {}, "Log ", containerSelect, " ", logState), logPre);
  const del = h("button", { class: "danger", "data-action": "delete", onclick: () => act(`Delete pod ${ns}/${name}?`, "",
    () => api.request("DELETE", `/api/v1/namespaces/${enc(ns)}/pods/${enc(name)}`), `pod ${name} deleted`) }, "Delete pod");
  const usage = usagePanel(ns, name);
  view.replaceChildren(h("h1", {}, "Pod ", h("span", { id: "pod-name" }, `${ns}/${name}`), " ", del), summary.section, containers.section, usage.section, logs, events.section);

  let stopLog = () => {};
  let logContainer = null;
  function startLog() {
    stopLog();
    logContainer = containerSelect.value;
    logPre.textContent = "";
    logState.textContent = "following…";
    const MAX = 200000;
    stopLog = api.followLog(ns, name, logContainer, (text) => {
      const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
      logPre.append(text);
      if (logPre.textContent.length > MAX) logPre.textContent = logPre.textContent.slice(-MAX / 2);
      if (atBottom) logPre.scrollTop = logPre.scrollHeight;
    }, (err) => {
      if (!err) logState.textContent = "the log stream ended";
      else logState.replaceChildren(failure(err));
    });
  }

  const stops = [
    api.watchList(`/api/v1/namespaces/${enc(ns)}/pods?fieldSelector=${enc("metadata.name=" + name)}`, (items) => {
      const p = items[0];
      if (!p) { summary.show(h("p", { class: "error" }, "This pod does not exist (any more).")); return; }
      const s = p.status || {};
      summary.show(h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", { class: "status" }, podStatus(p)),
        h("dt", {}, "Node"), h("dd", {}, p.spec?.nodeName || "not scheduled"),
        h("dt", {}, "Pod IP"), h("dd", {}, s.podIP || "—"),
        h("dt", {}, "Conditions"), h("dd", {}, (s.conditions || []).map((c) => `${c.type}=${c.status}`).join(", ") || "—"),
        h("dt", {}, "Owner"), h("dd", {}, (p.metadata.ownerReferences || []).map((r) => `${r.kind}/${r.name}`).join(", ") || "—"),
        h("dt", {}, "Age"), h("dd", {}, age(p.metadata.creationTimestamp))));
      const statuses = new Map((s.containerStatuses || []).map((c) => [c.name, c]));
      containers.show(table(["Container", "Image", "State", "Ready", "Restarts", "Last state", "Probes"],
        (p.spec?.containers || []).map((c) => {
          const cs = statuses.get(c.name) || {};
          return h("tr", { "data-kind": "Container", "data-name": c.name },
            h("td", {}, c.name), h("td", { class: "image" }, c.image), h("td", { class: "state" }, stateText(cs.state)),
            h("td", {}, cs.ready ? "yes" : "no"), h("td", { class: "restarts" }, cs.restartCount || 0),
            h("td", {}, stateText(cs.lastState)),
            h("td", { class: "probes" },
              h("div", {}, "readiness: ", probeText(c.readinessProbe)),
              h("div", {}, "liveness: ", probeText(c.livenessProbe)),
              c.startupProbe ? h("div", {}, "startup: ", probeText(c.startupProbe)) : null));
        }), "No containers."));
      const names = (p.spec?.containers || []).map((c) => c.name);
      if (containerSelect.options.length !== names.length) {
        containerSelect.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
      }
      // Start following once the container has started (before that there is no log).
      if (logContainer === null && (s.containerStatuses || []).some((c) => c.state?.running || c.state?.terminated)) startLog();
    }, (e) => summary.fail(e)),
    api.watchList(`/api/v1/namespaces/${enc(ns)}/events`, (items) => {
      const mine = items.filter((e) => e.involvedObject?.name === name && e.involvedObject?.kind === "Pod")
        .sort((a, b) => eventTime(b).localeCompare(eventTime(a)));
      events.show(table(["Age", "Type", "Reason", "Object", "Message", "Count"], eventRows(mine), "No events."));
    }, (e) => events.fail(e)),
  ];
  return () => { stopLog(); usage.stop(); stops.forEach((s) => s()); };
}

// What a manifest names, read with the small YAML reader: the server parses it for real.
export function identify(doc) {
  const o = parse(doc);
  if (!o || typeof o !== "object") throw new Error("a document is not an object");
  if (!o.apiVersion || !o.kind) throw new Error("a document has no apiVersion or kind");
  if (!o.metadata?.name) throw new Error(`a ${o.kind} has no metadata.name (server-side apply needs a name)`);
  return { apiVersion: String(o.apiVersion), kind: String(o.kind), name: String(o.metadata.name), namespace: o.metadata.namespace };
}

export function apply(view) {
  const text = h("textarea", { id: "apply-yaml", rows: 22, spellcheck: "false", placeholder: "apiVersion: apps/v1\nkind: Deployment\n..." });
  const nsInput = h("input", { id: "apply-namespace", value: "default", "aria-label": "namespace" });
  const results = h("ul", { id: "apply-results" });
  const button = h("button", { id: "apply-button", type: "button", onclick: run }, "Apply…");
  view.replaceChildren(h("h1", {}, "Apply YAML"),
    h("p", { class: "hint" }, "Server-side apply (field manager wharf-ui) of one or more documents separated by ---; YAML or JSON."),
    text, h("p", {}, h("label", {}, "Namespace for objects that name none: ", nsInput), " ", button), results);

  async function run() {
    results.replaceChildren();
    let docs;
    try {
      docs = splitDocuments(text.value).map((d) => ({ text: d, ...identify(d) }));
    } catch (err) {
      results.append(h("li", { class: "error" }, "Cannot read the YAML: ", err.message));
      return;
    }
    if (!docs.length) { results.append(h("li", { class: "error" }, "Nothing to apply.")); return; }
    const ns = nsInput.value.trim() || "default";
    const detail = docs.map((d) => `${d.kind} ${d.namespace || ns}/${d.name} (${d.apiVersion})`).join("\n");
    if (!(await confirmAction(`Apply ${docs.length} object${docs.length > 1 ? "s" : ""}?`, detail))) return;
    for (const d of docs) {
      const what = `${d.kind} ${d.name}`;
      try {
        const url = await api.objectUrl(d.apiVersion, d.kind, d.name, d.namespace || ns);
        await api.request("PATCH", url + "?fieldManager=wharf-ui", { contentType: "application/apply-patch+yaml", body: d.text });
        results.append(h("li", { class: "ok" }, `${what} applied`));
      } catch (err) {
        results.append(h("li", { class: err.forbidden ? "forbidden" : "error" }, `${what}: `, err.forbidden ? "Not allowed: " : "", err.message));
      }
    }
  }
  return () => {};
}
