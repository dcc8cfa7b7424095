use super::*;
use crate::apiserver::auth::Identity;
use crate::apiserver::rbac::bootstrap;
use crate::apiserver::testing::TestApi;
use http::StatusCode;
use jiff::SignedDuration;

fn t(s: &str) -> Timestamp {
    s.parse().expect("time")
}

fn sa_ref() -> Ref {
    Ref {
        name: "robot".into(),
        uid: "sa-uid".into(),
    }
}

fn token_at(issuer: &TokenIssuer, now: Timestamp, life: Duration) -> String {
    let claims = claims_for(
        issuer,
        "team",
        &sa_ref(),
        issuer.audiences.clone(),
        None,
        now,
        life,
    );
    issuer.sign(&claims).expect("sign")
}

#[test]
fn tokens_verify_until_they_expire_by_the_clock_given() {
    let issuer = TokenIssuer::generate(DEFAULT_ISSUER).expect("key");
    let issued = t("2030-01-01T00:00:00Z");
    let token = token_at(&issuer, issued, Duration::from_secs(600));
    assert!(looks_like_jwt(&token), "{token}");
    let aud = issuer.audiences.clone();
    let claims = issuer.verify(&token, &aud, issued).expect("valid");
    assert_eq!(claims.sub, "system:serviceaccount:team:robot");
    assert_eq!(claims.iss, DEFAULT_ISSUER);
    assert_eq!(claims.aud, [DEFAULT_ISSUER]);
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(claims.kubernetes.namespace, "team");
    assert_eq!(claims.kubernetes.serviceaccount, sa_ref());
    assert_eq!(claims.kubernetes.pod, None);

    let just_before = issued + SignedDuration::from_secs(599);
    assert!(issuer.verify(&token, &aud, just_before).is_ok());
    let at_expiry = issued + SignedDuration::from_secs(600);
    assert!(matches!(
        issuer.verify(&token, &aud, at_expiry),
        Err(TokenError::Expired)
    ));
    // Issued for the future (a clock far behind): not yet valid.
    let early = issued - SignedDuration::from_secs(120);
    assert!(matches!(
        issuer.verify(&token, &aud, early),
        Err(TokenError::NotYetValid)
    ));
}

#[test]
fn tokens_of_another_key_audience_or_shape_are_invalid() {
    let issuer = TokenIssuer::generate(DEFAULT_ISSUER).expect("key");
    let other = TokenIssuer::generate(DEFAULT_ISSUER).expect("key");
    assert_ne!(issuer.key_id(), other.key_id());
    let now = t("2030-01-01T00:00:00Z");
    let aud = issuer.audiences.clone();
    let forged = token_at(&other, now, Duration::from_secs(600));
    assert!(matches!(
        issuer.verify(&forged, &aud, now),
        Err(TokenError::Invalid)
    ));
    let token = token_at(&issuer, now, Duration::from_secs(600));
    assert!(matches!(
        issuer.verify(&token, &["vault".to_string()], now),
        Err(TokenError::Invalid)
    ));
    // A changed payload breaks the signature.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let mut claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&parts[1])
            .expect("b64"),
    )
    .expect("json");
    claims["sub"] = json!("system:serviceaccount:team:admin");
    claims["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
    parts[1] = b64url(claims.to_string().as_bytes());
    assert!(matches!(
        issuer.verify(&parts.join("."), &aud, now),
        Err(TokenError::Invalid)
    ));
    // Another issuer's name: not ours either.
    let mut renamed = TokenIssuer::generate("https://elsewhere").expect("key");
    renamed.audiences = aud.clone();
    let foreign = token_at(&renamed, now, Duration::from_secs(600));
    assert!(issuer.verify(&foreign, &aud, now).is_err());
    assert!(!looks_like_jwt(
        "wharf-node.abc123.0123456789abcdefghijklmnopqrstuv"
    ));
}

#[test]
fn the_maximum_expiration_caps_what_is_asked() {
    let mut issuer = TokenIssuer::generate(DEFAULT_ISSUER).expect("key");
    assert_eq!(
        issuer.expiration(Duration::from_secs(7200)),
        Duration::from_secs(7200)
    );
    issuer.max_expiration = Some(Duration::from_secs(3600));
    assert_eq!(
        issuer.expiration(Duration::from_secs(7200)),
        Duration::from_secs(3600)
    );
    assert_eq!(
        issuer.expiration(Duration::from_secs(600)),
        Duration::from_secs(600)
    );
}

#[test]
fn token_request_specs_are_checked_as_kubernetes_does() {
    let spec = token_spec("robot", &json!({})).expect("empty spec");
    assert_eq!(spec.expiration, DEFAULT_EXPIRATION);
    assert!(spec.audiences.is_empty() && spec.bound.is_none());
    let err = token_spec("robot", &json!({"spec": {"expirationSeconds": 60}})).expect_err("short");
    assert_eq!(
        err.to_string(),
        "TokenRequest.authentication.k8s.io \"robot\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
    );
    let err = token_spec(
        "robot",
        &json!({"spec": {"boundObjectRef": {"kind": "Deployment", "name": "x"}}}),
    )
    .expect_err("kind");
    assert!(
        err.to_string()
            .contains("spec.boundObjectRef.kind: Unsupported value: \"Deployment\""),
        "{err}"
    );
}

async fn create(api: &TestApi, path: &str, body: Value) -> Value {
    let (code, out) = api.send("POST", path, Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{path}: {out}");
    out
}

async fn request_token(api: &TestApi, sa: &str, spec: Value) -> (StatusCode, Value) {
    api.send(
        "POST",
        &format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token"),
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        ),
    )
    .await
}

async fn get_pods_as(api: &TestApi, token: &str) -> (StatusCode, Value) {
    api.send_with(token, "GET", "/api/v1/namespaces/default/pods", "", None)
        .await
}

#[tokio::test]
async fn a_token_acts_as_its_service_account_until_the_account_is_deleted() {
    let api = TestApi::new().await;
    let sa = create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    let (code, out) = request_token(&api, "robot", json!({"expirationSeconds": 600})).await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(out["kind"], "TokenRequest");
    assert_eq!(out["spec"]["audiences"], json!([DEFAULT_ISSUER]));
    assert!(out["status"]["expirationTimestamp"].is_string(), "{out}");
    let token = out["status"]["token"].as_str().expect("token").to_string();

    // Authenticated, but RBAC grants it nothing yet.
    let (code, out) = get_pods_as(&api, &token).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{out}");
    assert_eq!(
        out["message"],
        "pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    create(
        &api,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        json!({"metadata": {"name": "pod-reader"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await;
    create(
        &api,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        json!({"metadata": {"name": "robot-reads"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}]}),
    )
    .await;
    let (code, out) = get_pods_as(&api, &token).await;
    assert_eq!(code, StatusCode::OK, "{out}");

    // TokenReview says who it is.
    let (code, review) = api
        .send(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(json!({"spec": {"token": token}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{review}");
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(review["status"]["user"]["uid"], sa["metadata"]["uid"]);
    assert_eq!(
        review["status"]["user"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );

    // Deleted and recreated under the same name: the old token is refused.
    let (code, out) = api
        .send(
            "DELETE",
            "/api/v1/namespaces/default/serviceaccounts/robot",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{out}");
    let (code, out) = get_pods_as(&api, &token).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{out}");
    assert_eq!(
        out["message"],
        "Unauthorized: service account token has been invalidated"
    );
    create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    let (code, _) = get_pods_as(&api, &token).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, review) = api
        .send(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(json!({"spec": {"token": token}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(review["status"]["authenticated"], false, "{review}");

    // No token for a ServiceAccount that does not exist.
    let (code, out) = request_token(&api, "ghost", json!({})).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{out}");
    assert_eq!(out["message"], "serviceaccounts \"ghost\" not found");
}

#[tokio::test]
async fn a_token_bound_to_a_pod_dies_with_the_pod() {
    let api = TestApi::new().await;
    create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "default"}}),
    )
    .await;
    let pod = create(
        &api,
        "/api/v1/namespaces/default/pods",
        json!({"metadata": {"name": "p"},
               "spec": {"containers": [{"name": "c", "image": "app.wasm"}]}}),
    )
    .await;
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], true);
    let (code, out) = request_token(
        &api,
        "default",
        json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    assert_eq!(out["spec"]["boundObjectRef"]["uid"], pod["metadata"]["uid"]);
    let token = out["status"]["token"].as_str().expect("token").to_string();
    let (code, review) = api
        .send(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(json!({"spec": {"token": token}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"]),
        "{review}"
    );
    // Authenticates (RBAC then says no: 403, not 401).
    let (code, _) = get_pods_as(&api, &token).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // The pod never reached a node, so the delete removes it at once.
    let (code, _) = api
        .send("DELETE", "/api/v1/namespaces/default/pods/p", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, out) = get_pods_as(&api, &token).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{out}");
    // A bound object that does not exist: 404.
    let (code, out) = request_token(
        &api,
        "default",
        json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{out}");
}

#[tokio::test]
async fn pods_need_the_service_account_they_name() {
    let api = TestApi::new().await;
    let (code, out) = api
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "p"},
                "spec": {"serviceAccountName": "robot",
                         "containers": [{"name": "c", "image": "app.wasm"}]}})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{out}");
    assert_eq!(
        out["message"],
        "pods \"p\" is forbidden: error looking up service account default/robot: serviceaccount \"robot\" not found"
    );
    create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "robot"}, "automountServiceAccountToken": false}),
    )
    .await;
    let pod = create(
        &api,
        "/api/v1/namespaces/default/pods",
        json!({"metadata": {"name": "p"},
            "spec": {"serviceAccount": "robot",
                     "containers": [{"name": "c", "image": "app.wasm"}]}}),
    )
    .await;
    assert_eq!(pod["spec"]["serviceAccountName"], "robot");
    // The ServiceAccount's choice, since the pod does not say.
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert!(!automount(&pod));
}

#[tokio::test]
async fn pods_pull_with_their_service_accounts_secrets_unless_they_name_their_own() {
    let api = TestApi::new().await;
    create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "builder"}, "imagePullSecrets": [{"name": "registry-creds"}]}),
    )
    .await;
    let pod = |name: &str, secrets: Value| {
        json!({"metadata": {"name": name},
               "spec": {"serviceAccountName": "builder", "imagePullSecrets": secrets,
                        "containers": [{"name": "c", "image": "registry.example/app:1"}]}})
    };
    let inherited = create(&api, "/api/v1/namespaces/default/pods", pod("a", json!([]))).await;
    assert_eq!(
        inherited["spec"]["imagePullSecrets"],
        json!([{"name": "registry-creds"}])
    );
    let own = create(
        &api,
        "/api/v1/namespaces/default/pods",
        pod("b", json!([{"name": "mine"}])),
    )
    .await;
    assert_eq!(own["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));
}

#[tokio::test]
async fn nodes_get_tokens_only_for_their_own_pods() {
    let api = TestApi::new().await;
    api.add_token("node-1-token", Identity::node("node-1"));
    create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "default"}}),
    )
    .await;
    for (name, node) in [("mine", "node-1"), ("theirs", "node-2")] {
        create(
            &api,
            "/api/v1/namespaces/default/pods",
            json!({"metadata": {"name": name},
                   "spec": {"nodeName": node, "containers": [{"name": "c", "image": "app.wasm"}]}}),
        )
        .await;
    }
    let ask = |pod: &str| json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod}}});
    let path = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let (code, out) = api
        .send_with("node-1-token", "POST", path, "", Some(ask("mine")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{out}");
    let (code, out) = api
        .send_with("node-1-token", "POST", path, "", Some(ask("theirs")))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{out}");
    let (code, out) = api
        .send_with("node-1-token", "POST", path, "", Some(json!({"spec": {}})))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{out}");
}

#[tokio::test]
async fn the_issuer_is_discoverable_by_service_accounts() {
    let api = TestApi::new().await;
    bootstrap::reconcile(api.client()).await.expect("bootstrap");
    create(
        &api,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    let (_, out) = request_token(&api, "robot", json!({})).await;
    let token = out["status"]["token"].as_str().expect("token").to_string();
    let (code, config) = api
        .send_with(&token, "GET", OPENID_CONFIGURATION_PATH, "", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{config}");
    assert_eq!(config["issuer"], DEFAULT_ISSUER);
    assert_eq!(
        config["jwks_uri"],
        format!("{DEFAULT_ISSUER}/openid/v1/jwks")
    );
    let (code, jwks) = api.send_with(&token, "GET", JWKS_PATH, "", None).await;
    assert_eq!(code, StatusCode::OK, "{jwks}");
    // The published key verifies the token.
    let key = &jwks["keys"][0];
    let decoding = DecodingKey::from_ec_components(
        key["x"].as_str().expect("x"),
        key["y"].as_str().expect("y"),
    )
    .expect("jwk");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[DEFAULT_ISSUER]);
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    jsonwebtoken::decode::<Value>(&token, &decoding, &validation).expect("verifies");

    // A user who is not a ServiceAccount is not granted the documents.
    api.add_token(
        "alice-token",
        Identity {
            user: "alice".into(),
            groups: vec!["system:authenticated".into()],
        },
    );
    let (code, out) = api
        .send_with("alice-token", "GET", JWKS_PATH, "", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{out}");
}
