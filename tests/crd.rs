//! End-to-end: CustomResourceDefinitions against a real `wharf control`.
//!
//! - the real `kubectl` applies a definition with a nested schema and uses its kind as a
//!   user would: objects stored with defaults, invalid ones refused with the path of
//!   every violation, printer columns, short names and categories, `kubectl scale`,
//!   `kubectl explain`, and deleting the definition deletes its objects;
//! - a small operator written with kube-rs (`#[derive(CustomResource)]` and
//!   kube-runtime's `Controller`, as operator authors write them) reconciles its
//!   objects: each `Greeting` gets a ConfigMap it owns and a status saying so, and the
//!   garbage collector deletes the ConfigMap with its Greeting.
#![allow(clippy::unwrap_used)]

mod common;

use common::kubectl::Kubectl;
use common::{ControlProcess, wharf, within};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{CustomResource, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WIDGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [gadgets]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Size
      type: string
      jsonPath: .spec.size
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    schema:
      openAPIV3Schema:
        type: object
        description: A widget of some size.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            properties:
              size:
                type: string
                description: How big the widget is.
                enum: [small, large]
              replicas:
                type: integer
                description: How many widgets.
                minimum: 0
                default: 1
              network:
                type: object
                default: {}
                properties:
                  port:
                    x-kubernetes-int-or-string: true
                    default: 80
                  host:
                    type: string
                    pattern: '^[a-z.]+$'
          status:
            type: object
            properties:
              replicas:
                type: integer
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_uses_a_custom_resource_definition() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };
    let file = |name: &str, yaml: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_string()
    };

    let crd = file("crd.yaml", WIDGET_CRD);
    let out = k.ok(&["apply", "-f", &crd]).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{out}"
    );
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ])
    .await;

    let crds = k.ok(&["get", "crd"]).await;
    let header: Vec<&str> = crds
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CREATED", "AT"], "{crds}");
    assert!(crds.contains("widgets.example.com"), "{crds}");

    // Valid objects are stored with the schema's defaults.
    let small = file(
        "small.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: small\nspec:\n  size: small\n",
    );
    let out = k.ok(&["apply", "-f", &small]).await;
    assert!(out.contains("widget.example.com/small created"), "{out}");
    let stored: Value =
        serde_json::from_str(&k.ok(&["get", "widget", "small", "-o", "json"]).await).unwrap();
    assert_eq!(
        stored["spec"],
        json!({"size": "small", "replicas": 1, "network": {"port": 80}})
    );

    // wharf's own CLI applies custom resources too.
    let other = file(
        "other.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: other\nspec:\n  size: large\n",
    );
    let out = wharf(&kubeconfig, &["apply", "-f", &other]).await;
    assert!(
        out.stdout_text()
            .contains("widget.example.com/other created"),
        "{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    k.ok(&["delete", "widget", "other"]).await;

    // Invalid ones are refused with the path of every violation.
    let bad = file(
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  size: medium\n  replicas: -2\n  network:\n    host: Not_A_Host\n",
    );
    let refused = k.run(&["apply", "-f", &bad]).await;
    assert!(!refused.ok, "{}", refused.stdout);
    for violation in [
        "spec.size: Unsupported value: \"medium\": supported values: \"small\", \"large\"",
        "spec.replicas: Invalid value: -2: spec.replicas in body should be greater than or equal to 0",
        "spec.network.host: Invalid value: \"Not_A_Host\": spec.network.host in body should match '^[a-z.]+$'",
    ] {
        assert!(
            refused.stderr.contains(violation),
            "{violation:?} missing from:\n{}",
            refused.stderr
        );
    }
    // kubectl's field validation (strict by default) refuses an undeclared field.
    let unknown = file(
        "unknown.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  size: small\n  colour: red\n",
    );
    let refused = k.run(&["apply", "-f", &unknown]).await;
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("spec.colour: Invalid value: unknown field"),
        "{}",
        refused.stderr
    );
    let missing = file(
        "missing.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  replicas: 2\n",
    );
    let refused = k.run(&["apply", "-f", &missing]).await;
    assert!(
        refused.stderr.contains("spec.size: Required value"),
        "{}",
        refused.stderr
    );

    // The printer columns, by plural, short name and category.
    for what in ["widgets", "wd", "gadgets"] {
        let table = k.ok(&["get", what]).await;
        let header = table.lines().next().unwrap_or_default();
        let words: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(words, ["NAME", "SIZE", "REPLICAS", "AGE"], "{table}");
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[..3], ["small", "small", "1"], "{table}");
    }

    // kubectl scale, through the scale subresource.
    let out = k.ok(&["scale", "widget/small", "--replicas=4"]).await;
    assert!(out.contains("widget.example.com/small scaled"), "{out}");
    let replicas = k
        .ok(&["get", "widget", "small", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(replicas, "4");
    // The write is recorded as kubectl's, through the scale subresource.
    let scaled: Value = serde_json::from_str(
        &k.ok(&[
            "get",
            "widget",
            "small",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .await,
    )
    .unwrap();
    let entry = scaled["metadata"]["managedFields"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["subresource"] == "scale"))
        .unwrap_or_else(|| panic!("no scale entry in {scaled}"));
    assert_eq!(entry["operation"], "Update", "{entry}");
    assert!(
        entry["manager"].as_str().unwrap().starts_with("kubectl"),
        "{entry}"
    );
    assert_eq!(
        entry["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}}),
        "{entry}"
    );

    // kubectl explain, from the published OpenAPI.
    let explained = k.ok(&["explain", "widgets.spec"]).await;
    for needle in [
        "What the widget should be.",
        "size",
        "How big the widget is.",
        "replicas",
    ] {
        assert!(
            explained.contains(needle),
            "{needle:?} missing:\n{explained}"
        );
    }

    // Deleting the definition deletes its objects: defined again, the kind is empty.
    k.ok(&["delete", "crd", "widgets.example.com", "--timeout=60s"])
        .await;
    let gone = k.run(&["get", "widgets.example.com"]).await;
    assert!(!gone.ok, "{}", gone.stdout);
    k.ok(&["apply", "-f", &crd]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ])
    .await;
    let left = k
        .until(&["get", "widgets", "-A", "-o", "name"], |_| true)
        .await;
    assert_eq!(left.trim(), "", "objects outlived their definition");
}

// ---- The operator ---------------------------------------------------------------------

/// What a Greeting asks for: a ConfigMap greeting `name`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Greeting",
    namespaced,
    status = "GreetingStatus",
    schema = "disabled"
)]
pub struct GreetingSpec {
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GreetingStatus {
    pub config_map: String,
    pub message: String,
}

const GREETING_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1",
  "kind": "CustomResourceDefinition",
  "metadata": {"name": "greetings.example.com"},
  "spec": {
    "group": "example.com",
    "scope": "Namespaced",
    "names": {"plural": "greetings", "kind": "Greeting"},
    "versions": [{
      "name": "v1", "served": true, "storage": true,
      "subresources": {"status": {}},
      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "required": ["name"],
                 "properties": {"name": {"type": "string", "minLength": 1}}},
        "status": {"type": "object", "properties": {
          "configMap": {"type": "string"}, "message": {"type": "string"}}}}}}
    }]
  }
}"#;

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// The operator's reconcile: the Greeting's ConfigMap (server-side applied, owned by the
/// Greeting), then its status.
async fn reconcile(g: Arc<Greeting>, client: Arc<kube::Client>) -> Result<Action, ReconcileError> {
    let ns = g.namespace().unwrap_or_default();
    let name = format!("greeting-{}", g.name_any());
    let message = format!("Hello, {}!", g.spec.name);
    let owner = g.controller_owner_ref(&()).into_iter().collect();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            owner_references: Some(owner),
            ..Default::default()
        },
        data: Some([("message".to_string(), message.clone())].into()),
        ..Default::default()
    };
    let maps: Api<ConfigMap> = Api::namespaced((*client).clone(), &ns);
    let apply = PatchParams::apply("greeting-operator").force();
    maps.patch(&name, &apply, &Patch::Apply(&cm)).await?;
    let status = GreetingStatus {
        config_map: name,
        message,
    };
    if g.status.as_ref() != Some(&status) {
        let greetings: Api<Greeting> = Api::namespaced((*client).clone(), &ns);
        greetings
            .patch_status(
                &g.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Greeting>, _: &ReconcileError, _: Arc<kube::Client>) -> Action {
    Action::requeue(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_operator_reconciles_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let client = control.client().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_str(GREETING_CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    within("the Greeting definition to be established", async {
        loop {
            let c = crds.get("greetings.example.com").await.unwrap();
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    let greetings: Api<Greeting> = Api::namespaced(client.clone(), "default");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let operator = tokio::spawn(
        Controller::new(
            Api::<Greeting>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
        )
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| futures::future::ready(())),
    );

    greetings
        .create(
            &PostParams::default(),
            &Greeting::new(
                "world",
                GreetingSpec {
                    name: "World".into(),
                },
            ),
        )
        .await
        .unwrap();
    let reconciled = |want: &'static str| {
        let (greetings, maps) = (greetings.clone(), maps.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let g = greetings.get("world").await.unwrap();
                let cm = maps.get_opt("greeting-world").await.unwrap();
                let cm_message = cm
                    .as_ref()
                    .and_then(|c| c.data.as_ref())
                    .and_then(|d| d.get("message").cloned());
                let status = g.status.clone().unwrap_or_default();
                if cm_message.as_deref() == Some(want) && status.message == want {
                    let cm = cm.unwrap();
                    assert_eq!(status.config_map, "greeting-world");
                    let owner = &cm.metadata.owner_references.unwrap()[0];
                    assert_eq!(
                        (owner.kind.as_str(), owner.name.as_str()),
                        ("Greeting", "world")
                    );
                    assert_eq!(owner.uid, g.metadata.uid.unwrap());
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "never reconciled to {want:?}: {:?} {:?}",
                    g.status,
                    cm_message
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    reconciled("Hello, World!").await;

    // A change to the spec is reconciled too.
    greetings
        .patch(
            "world",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"name": "Wharf"}})),
        )
        .await
        .unwrap();
    reconciled("Hello, Wharf!").await;

    // The schema holds for the operator's objects as for kubectl's.
    let err = greetings
        .create(
            &PostParams::default(),
            &Greeting::new(
                "empty",
                GreetingSpec {
                    name: String::new(),
                },
            ),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.name in body should be at least 1 chars long"),
        "{err}"
    );

    // What the operator created is owned: deleting the Greeting deletes its ConfigMap
    // (the garbage collector follows custom owners as built-in ones).
    greetings
        .delete("world", &Default::default())
        .await
        .unwrap();
    within("the garbage collector to delete the ConfigMap", async {
        while maps.get_opt("greeting-world").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    operator.abort();
}
