// The dashboard's only way to the cluster: the ordinary Kubernetes API, called with the
// user's bearer token. Nothing here has authority of its own; a 403 is the user's RBAC
// speaking and is shown as "not allowed", a 401 means the token no longer works.

const TOKEN_KEY = "wharf.token";

export class ApiError extends Error {
  constructor(status, message, reason) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
  get forbidden() { return this.status === 403; }
}

export function token() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(t) { sessionStorage.setItem(TOKEN_KEY, t); }
export function clearToken() { sessionStorage.removeItem(TOKEN_KEY); }

// Called when the API says the token is not (or no longer) valid.
let onUnauthorized = () => {};
export function whenUnauthorized(f) { onUnauthorized = f; }

function headers(extra, bearer) {
  const h = new Headers(extra || {});
  h.set("Authorization", "Bearer " + (bearer ?? token() ?? ""));
  if (!h.has("Accept")) h.set("Accept", "application/json");
  return h;
}

// The Status message of a failed response, as Kubernetes words it.
async function failure(res) {
  let message = res.status + " " + res.statusText;
  let reason = "";
  try {
    const status = await res.json();
    if (status && status.message) message = status.message;
    if (status && status.reason) reason = status.reason;
  } catch (_) { /* not a Status */ }
  return new ApiError(res.status, message, reason);
}

// One request; the parsed JSON answer, or an ApiError.
export async function request(method, path, { body, contentType, bearer, signal } = {}) {
  const init = { method, headers: headers(contentType ? { "Content-Type": contentType } : {}, bearer), signal };
  if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
  const res = await fetch(path, init);
  if (!res.ok) {
    const err = await failure(res);
    if (res.status === 401 && bearer === undefined) onUnauthorized(err);
    throw err;
  }
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => request("GET", path, opts);

// Who the token is: a SelfSubjectReview, which every authenticated identity may create.
export async function whoAmI(bearer) {
  const review = await request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
    bearer,
    contentType: "application/json",
    body: { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" },
  });
  return review?.status?.userInfo ?? {};
}

// Reads a streamed response body line by line, calling `line` for each complete line.
async function readLines(res, line) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      line(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
  }
  if (buffer) line(buffer);
}

const pause = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

// Keeps a live list of the objects at `path` (a collection URL, optionally with a
// query): lists, then watches from the list's resourceVersion. The watch is a fetch
// whose body is newline-delimited JSON events. When the stream ends it resumes from the
// last resourceVersion seen (bookmarks included); on 410 Expired it lists again.
// `changed(items)` is called with the current objects after every change; `failed(err)`
// when the list itself fails (a 403 ends the watch: retrying will not help).
// Returns a function that stops it.
export function watchList(path, changed, failed) {
  const abort = new AbortController();
  const signal = abort.signal;
  const objects = new Map();
  const key = (o) => (o.metadata.namespace || "") + "/" + o.metadata.name;
  const sep = path.includes("?") ? "&" : "?";
  const emit = () => changed([...objects.values()]);

  async function list() {
    const l = await get(path, { signal });
    objects.clear();
    for (const o of l.items || []) objects.set(key(o), o);
    emit();
    return l.metadata.resourceVersion;
  }

  async function run() {
    let rv = null;
    let delay = 250;
    while (!signal.aborted) {
      try {
        if (rv === null) rv = await list();
        const url = path + sep + "watch=1&allowWatchBookmarks=true&resourceVersion=" + encodeURIComponent(rv);
        const res = await fetch(url, { headers: headers(), signal });
        if (res.status === 410) { rv = null; continue; }
        if (!res.ok) throw await failure(res);
        delay = 250;
        await readLines(res, (line) => {
          if (!line.trim()) return;
          const ev = JSON.parse(line);
          if (ev.type === "ERROR") {
            // 410 Expired: our resourceVersion is older than the server's history.
            if (ev.object && ev.object.code === 410) rv = null;
            return;
          }
          const o = ev.object;
          if (o && o.metadata && o.metadata.resourceVersion) rv = o.metadata.resourceVersion;
          if (ev.type === "BOOKMARK") return;
          if (ev.type === "DELETED") objects.delete(key(o));
          else objects.set(key(o), o);
          emit();
        });
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiError) {
          if (err.status === 410) { rv = null; continue; }
          if (err.status === 401 || err.status === 403 || err.status === 404) {
            if (err.status === 401) onUnauthorized(err);
            failed(err);
            return;
          }
        }
        // A dropped connection or a server restart: back off, then resume.
        await pause(delay, signal);
        delay = Math.min(delay * 2, 5000);
      }
    }
  }
  run();
  return () => abort.abort();
}

// Follows a pod's log: `chunk(text)` for every piece that arrives. Returns a stop function.
export function followLog(ns, pod, container, chunk, failed) {
  const abort = new AbortController();
  const url = `/api/v1/namespaces/${enc(ns)}/pods/${enc(pod)}/log?follow=true&tailLines=500&container=${enc(container)}`;
  (async () => {
    try {
      const res = await fetch(url, { headers: headers({ Accept: "text/plain" }), signal: abort.signal });
      if (!res.ok) throw await failure(res);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        chunk(value);
      }
      failed(null);
    } catch (err) {
      if (!abort.signal.aborted) failed(err);
    }
  })();
  return () => abort.abort();
}

export const enc = encodeURIComponent;

// Resource quantities ("250m", "64Mi", "1.5G") as numbers: cores or bytes.
const SUFFIXES = {
  n: 1e-9, u: 1e-6, m: 1e-3, "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
};
export function quantity(q) {
  if (q === undefined || q === null) return 0;
  const m = /^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$/.exec(String(q).trim());
  if (!m || !(m[2] in SUFFIXES)) return 0;
  return parseFloat(m[1]) * SUFFIXES[m[2]];
}

// API paths of the kinds the dashboard knows, by kind, and discovery for the others.
export const KINDS = {
  Pod: ["/api/v1", "pods", true],
  Node: ["/api/v1", "nodes", false],
  Event: ["/api/v1", "events", true],
  Namespace: ["/api/v1", "namespaces", false],
  Deployment: ["/apis/apps/v1", "deployments", true],
  ReplicaSet: ["/apis/apps/v1", "replicasets", true],
  DaemonSet: ["/apis/apps/v1", "daemonsets", true],
  Job: ["/apis/batch/v1", "jobs", true],
};

// The collection URL of `kind` (in `ns` when namespaced and given).
export function collection(kind, ns) {
  const [base, plural, namespaced] = KINDS[kind];
  return namespaced && ns ? `${base}/namespaces/${enc(ns)}/${plural}` : `${base}/${plural}`;
}

// Finds the URL of object (apiVersion, kind, name, namespace) through discovery.
export async function objectUrl(apiVersion, kind, name, ns) {
  const base = apiVersion.includes("/") ? "/apis/" + apiVersion : "/api/" + apiVersion;
  const list = await get(base);
  const r = (list.resources || []).find((r) => r.kind === kind && !r.name.includes("/"));
  if (!r) throw new Error(`the server does not serve ${kind} in ${apiVersion}`);
  const where = r.namespaced ? `/namespaces/${enc(ns || "default")}` : "";
  return `${base}${where}/${r.name}/${enc(name)}`;
}
