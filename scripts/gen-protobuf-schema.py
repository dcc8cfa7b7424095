#!/usr/bin/env python3
"""Generates control/src/api/protobuf/schema.rs: the wire layout of every Kubernetes
protobuf message wharf may meet (field number, JSON name, type), read from the sources of
two crates already in cargo's registry:

- k8s-pb (prost code generated from Kubernetes' .proto files): field numbers and types;
- k8s-openapi (serde code generated from Kubernetes' OpenAPI): the JSON name of each field,
  because prost renames fields to snake_case (`podIP` -> `pod_ip`) and the JSON name is
  lost there. A field is matched by its name with case and underscores ignored.

Usage: scripts/gen-protobuf-schema.py > control/src/api/protobuf/schema.rs
(run from the workspace root; versions come from Cargo.lock).
"""
import glob, os, re, sys

def crate_dir(name):
    lock = open("Cargo.lock").read()
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(name), lock)
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    dirs = glob.glob(f"{home}/registry/src/*/{name}-{m.group(1)}")
    return dirs[0]

PB = crate_dir("k8s-pb") + "/src"
OA = crate_dir("k8s-openapi") + "/src"
latest = sorted(d for d in os.listdir(OA) if d.startswith("v1_"))[-1]

def norm(s):
    return re.sub(r"[_$-]", "", s).lower()

# JSON names k8s-openapi knows, by normalized name.
json_names = {}
for path in glob.glob(f"{OA}/{latest}/**/*.rs", recursive=True):
    for n in re.findall(r'"([A-Za-z0-9$-]+)" => Field::Key_', open(path).read()):
        json_names.setdefault(norm(n), set()).add(n)

def camel(snake):
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])

# Names the normalized match cannot tell apart (`$ref` and `$schema` of JSONSchemaProps
# against the `schema` of a CRD version).
OVERRIDES = {("JsonSchemaProps", "ref"): "$ref", ("JsonSchemaProps", "schema"): "$schema"}

def json_name(message, field):
    field = field.removeprefix("r#")
    if (message, field) in OVERRIDES:
        return OVERRIDES[(message, field)]
    if field.startswith("x_kubernetes_"):
        return field.replace("_", "-")
    cands = json_names.get(norm(field), set())
    if len(cands) == 1:
        return next(iter(cands))
    c = camel(field)
    if c in cands or not cands:
        return c
    sys.exit(f"ambiguous JSON name for {field}: {cands}")

SCALARS = {"bool", "int32", "int64", "double", "string", "bytes"}
messages = {}   # full name -> list of (tag, json, kind, repeated, target)
resources = []  # (apiVersion, kind, full name)

ATTR = re.compile(r'#\[prost\(([^\]]*)\)\]\s*pub ([A-Za-z0-9_#]+):\s*([^;]*?),\s*(?=(?:///[^\n]*\s*)*(?:#\[prost|\}))', re.S)

def resolve(module, ty):
    ty = re.sub(r"\s+", "", ty).replace(",>", ">")
    inner = ty
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while inner.startswith(wrapper):
            inner = inner[len(wrapper):-1]
    m = re.match(r"::prost::alloc::collections::BTreeMap<[^,]+,(.*)>$", inner)
    if m:
        inner = m.group(1)
    parts = inner.split("::")
    mod = module.split(".")
    while parts and parts[0] == "super":
        mod.pop(); parts.pop(0)
    if parts[0] == "crate":
        mod = []; parts.pop(0)
    return ".".join(mod + parts)

for path in sorted(glob.glob(f"{PB}/**/mod.rs", recursive=True)):
    module = os.path.relpath(os.path.dirname(path), PB).replace("/", ".")
    src = open(path).read()
    for m in re.finditer(r"pub struct (\w+) \{(\}|.*?\n\})", src, re.S):
        name, body = m.group(1), m.group(2).removesuffix("}")
        fields = []
        for a in ATTR.finditer(body + "\n}"):
            attr, fname, ty = a.groups()
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            repeated = "repeated" in attr
            mm = re.match(r'btree_map = "string, (\w+)"', attr)
            if mm:
                kind = "map_" + mm.group(1)
            else:
                kind = attr.split(",")[0].split(" ")[0]
            target = resolve(module, ty) if kind in ("message", "map_message") else None
            if kind not in SCALARS | {"message", "map_string", "map_bytes", "map_message"}:
                sys.exit(f"unknown prost type {attr} in {module}.{name}")
            fields.append((tag, json_name(name, fname), kind, repeated, target))
        messages[f"{module}.{name}"] = fields
    for r in re.finditer(r'impl crate::Resource for (\w+) \{\s*const API_VERSION: &\'static str = "([^"]+)";\s*const GROUP: &\'static str = "[^"]*";\s*const VERSION: &\'static str = "[^"]*";\s*const KIND: &\'static str = "([^"]+)";', src):
        resources.append((r.group(2), r.group(3), f"{module}.{r.group(1)}"))

def snake(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()

def openapi_fields(module, name):
    """The JSON names k8s-openapi's type of the same message has, or None."""
    path = f"{OA}/{latest}/{module.replace('.', '/')}/{snake(name)}.rs"
    if not os.path.exists(path):
        return None
    return set(re.findall(r'"([A-Za-z0-9$-]+)" => Field::Key_', open(path).read()))

# A message field whose name the JSON type does not have is a Go struct embedded inline
# (`Probe.handler`, `Volume.volumeSource`), as opposed to a field newer than k8s-openapi's
# types: its fields are the parent's in JSON. Marked
# with the JSON name "".
for full, fields in messages.items():
    module, name = full.rsplit(".", 1)
    known = openapi_fields(module, name)
    if not known:
        continue
    for i, (tag, js, kind, rep, target) in enumerate(fields):
        # Go names an embedded field after its type; the .proto names Probe's `handler`.
        embedded = norm(js) == norm(target.rsplit(".", 1)[1]) if target else False
        if kind == "message" and not rep and js not in known and (embedded or (name, js) == ("Probe", "handler")):
            fields[i] = (tag, "", kind, rep, target)

# Keep what is reachable from the resources of the stable API groups and meta/v1 (the kinds
# clients send: objects, DeleteOptions, Eviction, Scale, ...).
resource_modules = {n.rsplit(".", 1)[0] for (_, _, n) in resources}
roots = [n for n in messages if n.rsplit(".", 1)[0] in resource_modules]
roots += [n for n in messages if n.startswith("apimachinery.pkg.apis.meta.v1.")]
roots += ["apimachinery.pkg.runtime.Unknown"]
keep, todo = set(), list(roots)
while todo:
    n = todo.pop()
    if n in keep:
        continue
    if n not in messages:
        sys.exit(f"unresolved message {n}")
    keep.add(n)
    todo += [f[4] for f in messages[n] if f[4]]

names = sorted(keep)
index = {n: i for i, n in enumerate(names)}
KIND = {"bool": "Bool", "int32": "Int32", "int64": "Int64", "double": "Double", "string": "String",
        "bytes": "Bytes", "map_string": "MapString", "map_bytes": "MapBytes"}
out = []
out.append("// @generated by scripts/gen-protobuf-schema.py from the k8s-pb and k8s-openapi sources; do not edit.\n")
out.append("//! The wire layout of the Kubernetes protobuf messages: see [`super`].\n")
out.append("use super::{Field, Message, Ty};\n")
out.append("/// Every message, sorted by name; [`Ty::Message`] and [`Ty::MapMessage`] index this table.")
out.append("pub static MESSAGES: &[Message] = &[")
for n in names:
    out.append(f'    Message {{ name: "{n}", fields: &[')
    for (tag, js, kind, rep, target) in sorted(messages[n]):
        if kind == "message":
            ty = f"Ty::Message({index[target]})"
        elif kind == "map_message":
            ty = f"Ty::MapMessage({index[target]})"
        else:
            ty = f"Ty::{KIND[kind]}"
        out.append(f'        Field {{ tag: {tag}, json: "{js}", ty: {ty}, repeated: {str(rep).lower()} }},')
    out.append("    ] },")
out.append("];\n")
out.append("/// The top-level kinds: (apiVersion, kind, index in [`MESSAGES`]), sorted.")
out.append("pub static RESOURCES: &[(&str, &str, usize)] = &[")
for (av, k, n) in sorted(set(resources)):
    if n in index:
        out.append(f'    ("{av}", "{k}", {index[n]}),')
out.append("];")
print("\n".join(out))
