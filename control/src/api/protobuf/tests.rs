//! The transcoder against the prost types of `k8s-pb` (what Kubernetes' .proto files
//! say) and the serde types of `k8s-openapi` (what Kubernetes' JSON says).

use super::*;
use k8s_pb::api::apps::v1 as pb_apps;
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message as _;
use serde_json::json;

/// What kubectl sends: the magic and an Unknown wrapping the message.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
}

fn meta(name: &str) -> Option<pb_meta::ObjectMeta> {
    Some(pb_meta::ObjectMeta {
        name: Some(name.into()),
        // Go writes unset non-pointer strings as empty ones.
        namespace: Some(String::new()),
        generate_name: Some(String::new()),
        labels: [("app".to_string(), "web".to_string())].into(),
        creation_timestamp: Some(pb_meta::Time {
            seconds: Some(0),
            nanos: Some(0),
        }),
        ..Default::default()
    })
}

fn deployment() -> pb_apps::Deployment {
    let container = pb::Container {
        name: Some("web".into()),
        image: Some("hello.wasm".into()),
        args: vec!["--port".into(), "8080".into()],
        ports: vec![pb::ContainerPort {
            container_port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
        resources: Some(pb::ResourceRequirements {
            limits: [(
                "cpu".to_string(),
                Quantity {
                    string: Some("500m".into()),
                },
            )]
            .into(),
            ..Default::default()
        }),
        readiness_probe: Some(pb::Probe {
            handler: Some(pb::ProbeHandler {
                http_get: Some(pb::HttpGetAction {
                    path: Some("/".into()),
                    port: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("http".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            period_seconds: Some(-1),
            ..Default::default()
        }),
        ..Default::default()
    };
    pb_apps::Deployment {
        metadata: meta("web"),
        spec: Some(pb_apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(pb_meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            template: Some(pb::PodTemplateSpec {
                metadata: meta(""),
                spec: Some(pb::PodSpec {
                    containers: vec![container],
                    host_ipc: Some(true),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: Some(Default::default()),
    }
}

#[test]
fn decodes_what_kubectl_sends_into_kubernetes_json() {
    let body = envelope("apps/v1", "Deployment", deployment().encode_to_vec());
    let value = decode(&body).expect("decodes");
    assert_eq!(value["apiVersion"], "apps/v1");
    assert_eq!(value["kind"], "Deployment");
    // Empty strings and zero times are left out, as Go's JSON of the object would.
    assert_eq!(
        value["metadata"],
        json!({"name": "web", "labels": {"app": "web"}})
    );
    assert_eq!(value["spec"]["replicas"], 0, "a pointer set to 0 stays");
    let pod = &value["spec"]["template"]["spec"];
    assert_eq!(pod["hostIPC"], true, "the JSON name, not prost's");
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["cpu"], "500m");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["periodSeconds"], -1);
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    // The whole thing reads as Kubernetes' JSON.
    let typed: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(value).expect("k8s-openapi reads it");
    let pod = typed.spec.template.spec.expect("pod spec");
    assert_eq!(pod.containers[0].args.as_ref().map(Vec::len), Some(2));
}

#[test]
fn secrets_times_and_int_ports() {
    let secret = pb::Secret {
        metadata: Some(pb_meta::ObjectMeta {
            name: Some("s".into()),
            creation_timestamp: Some(pb_meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        data: [("k".to_string(), b"\x00\xffsecret".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let v = decode(&envelope("v1", "Secret", secret.encode_to_vec())).expect("secret");
    assert_eq!(v["data"]["k"], "AP9zZWNyZXQ=");
    assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");

    let svc = pb::Service {
        metadata: meta("svc"),
        spec: Some(pb::ServiceSpec {
            ports: vec![pb::ServicePort {
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: Some(String::new()),
                }),
                ..Default::default()
            }],
            r#type: Some("NodePort".into()),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode(&envelope("v1", "Service", svc.encode_to_vec())).expect("service");
    assert_eq!(
        v["spec"]["ports"][0],
        json!({"port": 80, "targetPort": 8080})
    );
    assert_eq!(v["spec"]["type"], "NodePort");
}

#[test]
fn encodes_what_prost_reads_back() {
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "default",
                     "creationTimestamp": "2023-11-14T22:13:20Z",
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": {}}}]},
        "data": {"a": "1", "b": ""},
        "binaryData": {"bin": "AP8="},
        "unknownField": true
    });
    let body = encode(&object).expect("encodes");
    let unknown = Unknown::decode(&body[4..]).expect("an Unknown");
    assert_eq!(&body[..4], MAGIC);
    let tm = unknown.type_meta.expect("typeMeta");
    assert_eq!(
        (tm.api_version.as_deref(), tm.kind.as_deref()),
        (Some("v1"), Some("ConfigMap"))
    );
    let cm = pb::ConfigMap::decode(unknown.raw.unwrap_or_default().as_slice()).expect("cm");
    let m = cm.metadata.expect("metadata");
    assert_eq!(m.name.as_deref(), Some("cm"));
    assert_eq!(
        m.creation_timestamp.and_then(|t| t.seconds),
        Some(1_700_000_000)
    );
    assert_eq!(
        m.managed_fields[0]
            .fields_v1
            .as_ref()
            .and_then(|f| f.raw.clone()),
        Some(br#"{"f:data":{}}"#.to_vec())
    );
    assert_eq!(cm.data.get("b").map(String::as_str), Some(""));
    assert_eq!(cm.binary_data.get("bin"), Some(&vec![0u8, 255]));
    // And back to the same JSON (but what no message holds).
    let again = decode(&body).expect("decodes");
    let mut expected = object.clone();
    expected.as_object_mut().map(|o| o.remove("unknownField"));
    assert_eq!(again, expected);
}

#[test]
fn lists_and_status_have_messages() {
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
                      "items": [{"metadata": {"name": "p"}, "spec": {"containers": []}}]});
    let body = encode(&list).expect("list");
    assert_eq!(
        decode(&body).expect("decodes")["items"][0]["metadata"]["name"],
        "p"
    );
    let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                        "code": 404, "reason": "NotFound", "message": "nope"});
    assert_eq!(
        decode(&encode(&status).expect("status")).expect("decodes"),
        status
    );
    assert!(matches!(
        encode(&json!({"apiVersion": "x/v1", "kind": "Widget"})),
        Err(Error::UnknownKind(_))
    ));
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    assert_eq!(decode(b"{}"), Err(Error::NoMagic));
    let body = envelope("apps/v1", "Deployment", deployment().encode_to_vec());
    for cut in [5, 9, body.len() / 2, body.len() - 1] {
        assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        decode(&envelope("widgets.example.com/v1", "Widget", vec![])),
        Err(Error::UnknownKind(_))
    ));
}

#[test]
fn durations_as_go_prints_them() {
    for (ns, s) in [
        (0, "0s"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (150_000_000, "150ms"),
    ] {
        assert_eq!(format_duration(ns), s);
        assert_eq!(parse_duration(s), Some(ns));
    }
}

#[test]
fn every_served_kind_has_a_message() {
    // Computed kinds (resource metrics) are served as JSON only.
    for k in crate::api::kinds::KINDS
        .iter()
        .filter(|k| k.strategy.computed().is_none())
    {
        let i = message_for(&k.api_version(), k.kind).unwrap_or_else(|| panic!("{k:?}"));
        assert!(message(i).name.ends_with(&format!(".{}", k.kind)), "{k:?}");
        assert!(
            message_for(&k.api_version(), &format!("{}List", k.kind)).is_some(),
            "{k:?}List"
        );
    }
}

#[test]
fn subresource_bodies_have_their_groups_message() {
    let name = |av: &str, k: &str| message_for(av, k).map(|i| message(i).name);
    assert_eq!(
        name("authentication.k8s.io/v1", "TokenRequest"),
        Some("api.authentication.v1.TokenRequest")
    );
    assert_eq!(name("v1", "Binding"), Some("api.core.v1.Binding"));
    assert_eq!(name("authentication.k8s.io/v1", "Widget"), None);
}
