//! The fuzz target: property tests over what an attacker or a careless user can send.
//!
//! Manifest decoding (`wharf apply -f`: YAML streams, JSON, `List`s), the API's body
//! decoding (JSON with duplicate keys, apply bodies in YAML), defaulting and validation of
//! every kind, and every patch type (merge, JSON patch, strategic merge, server-side apply)
//! must never panic and must answer with output bounded by their input.
//!
//! Inputs are the seed manifests of `samples/` and `tests/fuzz-corpus/`, mutated token by
//! token, and generated patches over fields those objects have. The run is bounded and
//! reproducible: a fixed number of cases from a fixed seed, so that it is a normal
//! `cargo test` in CI. A failure is shrunk and its seed written to
//! `tests/fuzz.proptest-regressions`, which is kept in the repository and replayed first.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::LazyLock;
use wharf::cli::manifest;
use wharf_control::api::kinds::{ResourceKind, find_kind};
use wharf_control::api::{apply, fields, validation};
use wharf_control::apiserver::registry::store::apply_patch;

/// Every seed manifest: the samples' and the corpus's, as text.
static SEEDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["samples", "tests/fuzz-corpus"] {
        collect(&root.join(dir), &mut files);
    }
    files.sort();
    let seeds: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect();
    assert!(seeds.len() >= 5, "the fuzz corpus is missing: {files:?}");
    seeds
});

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() && name != "target" && name != "src" {
            collect(&p, out);
        } else if name.ends_with(".yaml") || name.ends_with(".json") {
            out.push(p);
        }
    }
}

/// The seed objects that decode to a served kind: what patches are applied to.
static OBJECTS: LazyLock<Vec<(&'static ResourceKind, Value)>> = LazyLock::new(|| {
    let objects: Vec<_> = SEEDS
        .iter()
        .flat_map(|text| manifest::parse("seed", text, false))
        .filter_map(Result::ok)
        .filter_map(|d| Some((kind_of(&d.object)?, d.object)))
        .collect();
    assert!(objects.len() >= 5, "too few seed objects");
    objects
});

fn kind_of(obj: &Value) -> Option<&'static ResourceKind> {
    find_kind(obj.get("apiVersion")?.as_str()?, obj.get("kind")?.as_str()?)
}

/// Pieces a mutation inserts: YAML structure, anchors and aliases, the values issue 18
/// found, and bytes parsers trip on.
const TOKENS: &[&str] = &[
    "-",
    "--- \n",
    "...\n",
    ":",
    ": ",
    " ",
    "\n",
    "  ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a\n",
    "'",
    "\"",
    "#",
    "? ",
    "|\n",
    ">\n",
    "!!binary ",
    "!!str ",
    "~",
    "null",
    "..",
    "/",
    "../",
    "1e1000",
    "-1",
    "1Zi",
    "0x10",
    "9223372036854775808",
    "subPath: /\n",
    "kind: List\nitems:\n",
    "$patch: delete\n",
    "é",
    "\u{0}",
    "\u{feff}",
    "\\u0000",
    "{}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(prop::sample::Index, &'static str),
    Delete(prop::sample::Index, usize),
    Duplicate(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), prop::sample::select(TOKENS))
            .prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<prop::sample::Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn boundary(text: &str, i: &prop::sample::Index) -> usize {
    let mut at = i.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(seed: &str, mutations: &[Mutation]) -> String {
    let mut text = seed.to_string();
    for m in mutations {
        match m {
            Mutation::Insert(i, t) => {
                let at = boundary(&text, i);
                text.insert_str(at, t);
            }
            Mutation::Delete(i, n) => {
                let at = boundary(&text, i);
                let mut end = (at + n).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(at..end, "");
            }
            Mutation::Duplicate(i, n) => {
                let at = boundary(&text, i);
                let mut end = (at + n).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                let piece = text[at..end].to_string();
                text.insert_str(end, &piece);
            }
        }
    }
    text
}

fn manifest_input() -> impl Strategy<Value = String> {
    (
        any::<prop::sample::Index>(),
        prop::collection::vec(mutation(), 0..12),
    )
        .prop_map(|(seed, ms)| mutate(&SEEDS[seed.index(SEEDS.len())], &ms))
}

/// Keys objects and patches are made of: fields the kinds have, patch directives, and a
/// few that no kind has.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "template",
    "containers",
    "initContainers",
    "image",
    "args",
    "env",
    "value",
    "ports",
    "containerPort",
    "volumes",
    "volumeMounts",
    "subPath",
    "resources",
    "limits",
    "requests",
    "memory",
    "cpu",
    "replicas",
    "selector",
    "matchLabels",
    "data",
    "items",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/args",
    "unknownField",
    "",
    "~1",
    "0",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(TOKENS).prop_map(Value::from),
        prop::sample::select(KEYS).prop_map(Value::from),
        Just(json!("delete")),
        Just(json!("replace")),
        Just(json!("merge")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )
            }),
        ]
    })
}

/// A JSON pointer over the keys above, with array indices and `-`.
fn pointer() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(KEYS).prop_map(str::to_string),
            (0usize..3).prop_map(|i| i.to_string()),
            Just("-".to_string()),
        ],
        0..5,
    )
    .prop_map(|parts| parts.iter().map(|p| format!("/{p}")).collect())
}

fn json_patch_op() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["add", "remove", "replace", "move", "copy", "test", "bogus"][..]),
        pointer(),
        pointer(),
        json_value(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        )
}

/// The size of a value as JSON.
fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

fn config() -> Config {
    Config {
        cases: 1024,
        rng_seed: RngSeed::Fixed(0x18_f022),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// Defaults, validation and the unknown-field check of one decoded object: no panic, and
/// as many causes as the object has room for.
fn admit(obj: &Value) {
    let Some(kind) = kind_of(obj) else {
        return;
    };
    let mut obj = obj.clone();
    validation::apply_defaults(kind, &mut obj);
    let bytes = serde_json::to_vec(&obj).unwrap();
    let dups = fields::duplicate_fields(&bytes);
    let _ = fields::check(kind, &mut obj.clone(), &dups, fields::Directive::Warn);
    let errs = validation::validate(kind, &obj);
    assert!(errs.len() <= 64 + bytes.len() / 4, "{} causes", errs.len());
    for e in &errs {
        assert!(e.to_string().len() <= 4096 + 2 * bytes.len(), "{e}");
    }
}

proptest! {
    #![proptest_config(config())]

    /// `wharf apply -f` of a mutated manifest, as YAML and as JSON, then the API's
    /// admission of every object it yields.
    #[test]
    fn manifests_decode_and_validate_without_panicking(text in manifest_input()) {
        for json in [false, true] {
            let docs = manifest::parse("fuzz.yaml", &text, json);
            let mut total = 0;
            for doc in docs.iter().flatten() {
                total += size(&doc.object);
                admit(&doc.object);
            }
            // Aliases may repeat what they name, but not without bound.
            prop_assert!(total <= 64 * text.len() + 4096, "{total} bytes from {}", text.len());
        }
        // The API's own body decoding: an apply body and duplicate-key detection.
        let _ = apply::parse_body(text.as_bytes());
        let dups = fields::duplicate_fields(text.as_bytes());
        prop_assert!(dups.len() <= text.len());
    }

    /// Merge, strategic merge and server-side apply of a generated patch to a seed object.
    #[test]
    fn object_patches_never_panic_and_stay_bounded(
        which in any::<prop::sample::Index>(),
        patch in json_value(),
        force in any::<bool>(),
    ) {
        let (kind, current) = &OBJECTS[which.index(OBJECTS.len())];
        let bound = 2 * (size(current) + size(&patch)) + 1024;
        for ct in ["application/merge-patch+json", "application/strategic-merge-patch+json"] {
            if let Ok(out) = apply_patch(kind, ct, current, &patch) {
                prop_assert!(size(&out) <= bound, "{ct}: {} > {bound}", size(&out));
                admit(&out);
            }
        }
        let applier = apply::Applier {
            manager: "fuzz",
            force,
            subresource: None,
            now: "2026-12-06T00:00:00Z",
        };
        if let Ok(out) = apply::apply(kind, current, &patch, &applier) {
            // managedFields grow with what the configuration names.
            prop_assert!(size(&out) <= 4 * bound, "apply: {} > {}", size(&out), 4 * bound);
            admit(&out);
        }
    }

    /// JSON patches of up to 64 operations: what they add comes from the patch itself, and
    /// what their `copy` operations duplicate is bounded in total, however they chain.
    #[test]
    fn json_patches_never_panic_and_stay_bounded(
        which in any::<prop::sample::Index>(),
        ops in prop::collection::vec(json_patch_op(), 0..64),
    ) {
        let (kind, current) = &OBJECTS[which.index(OBJECTS.len())];
        let patch = Value::from(ops.clone());
        let bound = size(current)
            + size(&patch)
            + wharf_control::api::jsonpatch::MAX_COPIED_BYTES
            + 64 * ops.len();
        if let Ok(out) = apply_patch(kind, "application/json-patch+json", current, &patch) {
            prop_assert!(size(&out) <= bound, "{} > {bound}", size(&out));
            admit(&out);
        }
    }
}

/// The corpus's hand-written JSON patch applies to every seed object without panicking.
#[test]
fn the_corpus_patch_applies_to_every_seed() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/patches.json"),
    )
    .unwrap();
    let patch: Value = serde_json::from_str(&text).unwrap();
    for (kind, current) in OBJECTS.iter() {
        for op in patch.as_array().unwrap() {
            let _ = apply_patch(kind, "application/json-patch+json", current, &json!([op]));
        }
    }
}
