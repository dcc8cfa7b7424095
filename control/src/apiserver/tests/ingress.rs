//! Ingresses through the router: Kubernetes' field paths in 422s, and the default
//! IngressClass given to an Ingress that names none.

use super::super::registry::strategies::ingressclass;
use super::super::testing::TestApi;
use http::StatusCode;
use serde_json::json;

const ING: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";

#[tokio::test]
async fn an_ingress_without_a_class_gets_the_default_one_and_bad_ones_are_422() {
    let api = TestApi::new().await;
    let (code, out) = api
        .send(
            "POST",
            "/apis/networking.k8s.io/v1/ingressclasses",
            Some(ingressclass::builtin()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
    let (code, out) = api
        .send(
            "POST",
            ING,
            Some(
                json!({"metadata": {"name": "a"}, "spec": {"rules": [{"host": "hello.local",
                "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(out["spec"]["ingressClassName"], "wharf");
    // A class named is kept.
    let (code, out) = api
        .send(
            "POST",
            ING,
            Some(json!({"metadata": {"name": "b"},
                "spec": {"ingressClassName": "other", "defaultBackend": backend}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(out["spec"]["ingressClassName"], "other");
    let (code, out) = api
        .send(
            "POST",
            ING,
            Some(
                json!({"metadata": {"name": "c"}, "spec": {"rules": [{"host": "hello.local",
                "http": {"paths": [{"path": "api", "pathType": "Prefix", "backend": backend}]}}]}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
    assert_eq!(
        out["message"],
        "Ingress \"c\" is invalid: spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path"
    );
    assert_eq!(
        out["details"]["causes"][0]["field"],
        "spec.rules[0].http.paths[0].path"
    );
}
