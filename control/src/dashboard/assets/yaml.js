// A small YAML reader for what the dashboard needs to read itself: a kubeconfig's users
// and contexts, and the apiVersion/kind/metadata of manifests before they are applied.
// (The manifests themselves are sent to the server as they are, for server-side apply;
// the server's parser is the one that matters.) It reads the common block subset: maps,
// sequences (also "- key: v" items), plain and quoted scalars, single-line flow maps and
// sequences, literal/folded block scalars, comments and "---" documents. JSON is YAML and
// reads too. Anything else is an error with the line number.

export class YamlError extends Error {}

// The documents of a multi-document stream, as text; empty documents are dropped.
export function splitDocuments(text) {
  return text
    .split(/^---[ \t]*(?:#.*)?$/m)
    .map((d) => d.replace(/^\.\.\.[ \t]*$/m, ""))
    .filter((d) => d.split("\n").some((l) => l.trim() && !l.trim().startsWith("#")));
}

export function parse(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try { return JSON.parse(trimmed); } catch (_) { /* flow YAML: read below */ }
  }
  const lines = [];
  text.split(/\r?\n/).forEach((raw, n) => {
    const indent = raw.length - raw.trimStart().length;
    if (raw.slice(0, indent).includes("\t")) throw new YamlError(`line ${n + 1}: tabs cannot indent YAML`);
    lines.push({ n: n + 1, indent, raw, text: stripComment(raw.trim()) });
  });
  const r = new Reader(lines);
  r.skipBlank();
  if (r.done()) return null;
  const value = r.node(-1);
  r.skipBlank();
  if (!r.done()) throw new YamlError(`line ${r.line().n}: unexpected indentation`);
  return value;
}

function stripComment(s) {
  let quote = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"') i++;
    } else if (c === '"' || c === "'") {
      if (i === 0 || /[\s:[{,-]/.test(s[i - 1])) quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(s[i - 1]))) {
      return s.slice(0, i).trimEnd();
    }
  }
  return s;
}

// Where `key: value` splits: the first ": " (or a final ":") outside quotes and flows.
function keySplit(s) {
  let quote = null;
  let depth = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"') i++;
      continue;
    }
    if ((c === '"' || c === "'") && i === 0) quote = c;
    else if (c === "[" || c === "{") depth++;
    else if (c === "]" || c === "}") depth--;
    else if (c === ":" && depth === 0 && (i + 1 === s.length || s[i + 1] === " ")) return i;
  }
  return -1;
}

const isSeqItem = (t) => t === "-" || t.startsWith("- ");

class Reader {
  constructor(lines) { this.lines = lines; this.i = 0; }
  done() { return this.i >= this.lines.length; }
  line() { return this.lines[this.i]; }
  skipBlank() { while (!this.done() && this.line().text === "") this.i++; }

  // The node whose lines are indented more than `parent`.
  node(parent) {
    this.skipBlank();
    if (this.done()) return null;
    const l = this.line();
    if (l.indent <= parent) return null;
    if (isSeqItem(l.text)) return this.seq(l.indent);
    if (keySplit(l.text) >= 0) return this.map(l.indent);
    this.i++;
    return scalar(l.text, l.n);
  }

  map(indent) {
    const out = {};
    for (;;) {
      this.skipBlank();
      if (this.done()) break;
      const l = this.line();
      if (l.indent < indent) break;
      if (l.indent > indent || isSeqItem(l.text)) throw new YamlError(`line ${l.n}: bad indentation`);
      const at = keySplit(l.text);
      if (at < 0) throw new YamlError(`line ${l.n}: expected "key: value"`);
      const key = String(scalar(l.text.slice(0, at).trim(), l.n));
      const rest = l.text.slice(at + 1).trim();
      this.i++;
      if (rest === "") {
        this.skipBlank();
        // A sequence may sit at its key's own indentation.
        if (!this.done() && this.line().indent === indent && isSeqItem(this.line().text)) out[key] = this.seq(indent);
        else out[key] = this.node(indent);
      } else if (/^[|>][-+0-9]*$/.test(rest)) {
        out[key] = this.block(indent, rest);
      } else {
        out[key] = scalar(rest, l.n);
      }
    }
    return out;
  }

  seq(indent) {
    const out = [];
    for (;;) {
      this.skipBlank();
      if (this.done()) break;
      const l = this.line();
      if (l.indent !== indent || !isSeqItem(l.text)) {
        if (l.indent > indent) throw new YamlError(`line ${l.n}: bad indentation`);
        break;
      }
      const rest = l.text.slice(1).trimStart();
      if (rest === "") {
        this.i++;
        out.push(this.node(indent));
      } else {
        // "- key: v" (or "- - x"): read the rest as a node indented where it starts.
        const offset = l.text.length - rest.length;
        this.lines[this.i] = { n: l.n, indent: indent + offset, raw: l.raw, text: rest };
        out.push(this.node(indent));
      }
    }
    return out;
  }

  // A literal (|) or folded (>) block scalar under a key at `indent`.
  block(indent, header) {
    const parts = [];
    let blockIndent = -1;
    while (!this.done()) {
      const l = this.line();
      const blank = l.raw.trim() === "";
      if (!blank && l.indent <= indent) break;
      if (!blank && blockIndent < 0) blockIndent = l.indent;
      parts.push(blank ? "" : l.raw.slice(blockIndent));
      this.i++;
    }
    while (parts.length && parts[parts.length - 1] === "") parts.pop();
    let s = header[0] === ">" ? parts.join("\n").replace(/([^\n])\n(?=[^\n])/g, "$1 ") : parts.join("\n");
    if (!header.includes("-")) s += "\n";
    return s;
  }
}

function scalar(s, n) {
  const f = new Flow(s, n);
  const v = f.value();
  f.ws();
  if (f.i < s.length) throw new YamlError(`line ${n}: unexpected "${s.slice(f.i)}"`);
  return v;
}

function plain(s) {
  if (s === "" || s === "~" || s === "null" || s === "Null" || s === "NULL") return null;
  if (/^(true|True|TRUE)$/.test(s)) return true;
  if (/^(false|False|FALSE)$/.test(s)) return false;
  if (/^[-+]?(0|[1-9][0-9]*)$/.test(s)) return parseInt(s, 10);
  if (/^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/.test(s)) return parseFloat(s);
  return s;
}

// Scalars and single-line flow collections.
class Flow {
  constructor(s, n) { this.s = s; this.i = 0; this.n = n; }
  ws() { while (this.i < this.s.length && this.s[this.i] === " ") this.i++; }
  fail(what) { throw new YamlError(`line ${this.n}: ${what}`); }
  value(inFlow = false) {
    this.ws();
    const c = this.s[this.i];
    if (c === '"') return this.double();
    if (c === "'") return this.single();
    if (c === "[") return this.seq();
    if (c === "{") return this.map();
    const s = this.s;
    const stops = (j) => ",]}".includes(s[j]) || (s[j] === ":" && (j + 1 === s.length || " ,]}".includes(s[j + 1])));
    let j = this.i;
    while (j < s.length && !(inFlow && stops(j))) j++;
    const text = this.s.slice(this.i, j).trim();
    this.i = j;
    return plain(text);
  }
  double() {
    let j = this.i + 1;
    while (j < this.s.length && this.s[j] !== '"') j += this.s[j] === "\\" ? 2 : 1;
    if (j >= this.s.length) this.fail("unterminated string");
    const body = this.s.slice(this.i, j + 1);
    this.i = j + 1;
    try { return JSON.parse(body); } catch (_) { return body.slice(1, -1); }
  }
  single() {
    let j = this.i + 1;
    let out = "";
    for (;;) {
      if (j >= this.s.length) this.fail("unterminated string");
      if (this.s[j] === "'") {
        if (this.s[j + 1] === "'") { out += "'"; j += 2; continue; }
        break;
      }
      out += this.s[j++];
    }
    this.i = j + 1;
    return out;
  }
  seq() {
    this.i++;
    const out = [];
    for (;;) {
      this.ws();
      if (this.s[this.i] === "]") { this.i++; return out; }
      out.push(this.value(true));
      this.ws();
      if (this.s[this.i] === ",") this.i++;
      else if (this.s[this.i] !== "]") this.fail("expected , or ]");
    }
  }
  map() {
    this.i++;
    const out = {};
    for (;;) {
      this.ws();
      if (this.s[this.i] === "}") { this.i++; return out; }
      const key = this.value(true);
      this.ws();
      if (this.s[this.i] !== ":") this.fail("expected : in a flow map");
      this.i++;
      out[String(key)] = this.value(true);
      this.ws();
      if (this.s[this.i] === ",") this.i++;
      else if (this.s[this.i] !== "}") this.fail("expected , or }");
    }
  }
}

// The bearer token of a kubeconfig's current context (or its only user), or an Error
// saying why there is none.
export function kubeconfigToken(text) {
  const kc = parse(text);
  if (!kc || typeof kc !== "object" || !Array.isArray(kc.users)) throw new Error("this file is not a kubeconfig (no users)");
  const context = (kc.contexts || []).find((c) => c && c.name === kc["current-context"]);
  const userName = context?.context?.user ?? (kc.users.length === 1 ? kc.users[0].name : null);
  const user = kc.users.find((u) => u && u.name === userName);
  if (!user) throw new Error("the kubeconfig's current context names no user");
  const u = user.user || {};
  if (u.token) return String(u.token);
  if (u["client-certificate-data"] || u["client-certificate"]) {
    throw new Error(`user "${userName}" logs in with a client certificate, which a web page cannot use: paste a token instead`);
  }
  throw new Error(`user "${userName}" has no token (only token credentials work in the browser)`);
}
