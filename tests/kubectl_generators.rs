//! End-to-end: kubectl's generator commands (`create namespace|configmap|secret|
//! deployment|service|job|role|rolebinding`, `run`, `expose`, `set image`), each with and without
//! `--dry-run=server`, against `wharf control`. kubectl 1.32 sends these objects as
//! protobuf (`application/vnd.kubernetes.protobuf`), so this is the protobuf path as a
//! user meets it: before it, every command here failed with 415.
#![allow(clippy::unwrap_used)]

mod common;

use common::ControlProcess;
use common::kubectl::Kubectl;

/// One generator command: its arguments (without `-n` and `--dry-run`), the object it
/// makes, and a JSONPath of that object with the value the command asked for.
struct Generator {
    args: &'static [&'static str],
    object: &'static str,
    path: &'static str,
    want: &'static str,
}

const NS: &str = "gen";

const GENERATORS: &[Generator] = &[
    Generator {
        args: &[
            "create",
            "configmap",
            "cm",
            "--from-literal=a=1",
            "--from-literal=b=",
        ],
        object: "configmap/cm",
        path: "{.data}",
        want: r#"{"a":"1","b":""}"#,
    },
    Generator {
        args: &[
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=p=secret",
        ],
        object: "secret/s",
        path: "{.data.p}",
        // base64 of "secret": bytes fields travel as bytes in protobuf.
        want: "c2VjcmV0",
    },
    Generator {
        args: &[
            "create",
            "secret",
            "docker-registry",
            "reg",
            "--docker-server=registry.example",
            "--docker-username=u",
            "--docker-password=p",
        ],
        object: "secret/reg",
        path: "{.type}",
        want: "kubernetes.io/dockerconfigjson",
    },
    Generator {
        args: &[
            "create",
            "deployment",
            "web",
            "--image=hello.wasm",
            "--port=8080",
            "--replicas=0",
        ],
        object: "deployment/web",
        // A pointer set to 0 stays 0 (not defaulted to 1).
        path: "{.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}",
        want: "0 8080",
    },
    Generator {
        args: &["create", "service", "clusterip", "c1", "--tcp=80:8080"],
        object: "service/c1",
        path: "{.spec.type} {.spec.ports[0].port} {.spec.ports[0].targetPort}",
        want: "ClusterIP 80 8080",
    },
    Generator {
        args: &["create", "service", "nodeport", "n1", "--tcp=81:8081"],
        object: "service/n1",
        path: "{.spec.type} {.spec.ports[0].targetPort}",
        want: "NodePort 8081",
    },
    Generator {
        args: &["create", "job", "j", "--image=hello.wasm"],
        object: "job/j",
        path: "{.spec.template.spec.containers[0].image}",
        want: "hello.wasm",
    },
    Generator {
        args: &[
            "run",
            "p",
            "--image=hello.wasm",
            "--port=9090",
            "--labels=run=p",
        ],
        object: "pod/p",
        path: "{.spec.containers[0].ports[0].containerPort} {.metadata.labels.run}",
        want: "9090 p",
    },
    Generator {
        args: &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=http",
        ],
        object: "service/web",
        // A named target port: an IntOrString holding a string.
        path: "{.spec.ports[0].targetPort} {.spec.selector.app}",
        want: "http web",
    },
    Generator {
        args: &["create", "role", "r", "--verb=get,list", "--resource=pods"],
        object: "role.rbac.authorization.k8s.io/r",
        path: "{.rules[0].verbs} {.rules[0].resources}",
        want: r#"["get","list"] ["pods"]"#,
    },
    Generator {
        args: &["create", "rolebinding", "rb", "--role=r", "--user=u"],
        object: "rolebinding.rbac.authorization.k8s.io/rb",
        path: "{.roleRef.kind}/{.roleRef.name} {.subjects[0].name}",
        want: "Role/r u",
    },
    Generator {
        args: &["expose", "pod", "p", "--port=82", "--name=pexp"],
        object: "service/pexp",
        path: "{.spec.ports[0].port} {.spec.selector.run}",
        want: "82 p",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_generator_commands_work_with_and_without_server_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::start(dir.path()).await;
    let kubeconfig = control.kubeconfig();
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };

    let out = k
        .ok(&["create", "namespace", NS, "--dry-run=server", "-o", "name"])
        .await;
    assert_eq!(out.trim(), format!("namespace/{NS}"));
    assert!(
        !k.run(&["get", "namespace", NS]).await.ok,
        "a dry run stores nothing"
    );
    let out = k.ok(&["create", "namespace", NS]).await;
    assert!(out.contains("created"), "{out}");

    for g in GENERATORS {
        let jsonpath = format!("jsonpath={}", g.path);
        let with = |extra: &[&'static str]| {
            let mut args = vec!["-n", NS];
            args.extend_from_slice(g.args);
            args.extend_from_slice(extra);
            args
        };
        let dry = k
            .ok(&[with(&["--dry-run=server", "-o"]), vec![jsonpath.as_str()]].concat())
            .await;
        assert_eq!(dry, g.want, "kubectl {:?} --dry-run=server", g.args);
        let got = k.run(&["-n", NS, "get", g.object]).await;
        assert!(
            !got.ok && got.stderr.contains("NotFound"),
            "{}: a dry run stores nothing: {}{}",
            g.object,
            got.stdout,
            got.stderr
        );
        let out = k.ok(&with(&[])).await;
        assert!(
            out.contains("created") || out.contains("exposed"),
            "kubectl {:?}: {out}",
            g.args
        );
        let stored = k
            .ok(&["-n", NS, "get", g.object, "-o", jsonpath.as_str()])
            .await;
        assert_eq!(stored, g.want, "{} as stored", g.object);
    }

    // `set image` (a strategic merge patch), dry run first.
    let image = "{.spec.template.spec.containers[0].image}";
    let jsonpath = format!("jsonpath={image}");
    let out = k
        .ok(&[
            "-n",
            NS,
            "set",
            "image",
            "deployment/web",
            "*=other.wasm",
            "--dry-run=server",
            "-o",
            jsonpath.as_str(),
        ])
        .await;
    assert_eq!(out, "other.wasm");
    let get = ["-n", NS, "get", "deployment/web", "-o", jsonpath.as_str()];
    assert_eq!(k.ok(&get).await, "hello.wasm", "a dry run changes nothing");
    k.ok(&["-n", NS, "set", "image", "deployment/web", "*=other.wasm"])
        .await;
    assert_eq!(k.ok(&get).await, "other.wasm");

    // `kubectl exec` (WebSocket first, then SPDY) prints why a wasm pod has no shell and
    // what to use instead.
    let r = k
        .run(&["-n", NS, "exec", "p", "--", "sh", "-c", "echo hi"])
        .await;
    assert!(!r.ok, "{}", r.stdout);
    for needle in [
        "no shell",
        "kubectl logs p",
        "kubectl attach",
        "kubectl port-forward",
    ] {
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
    }

    // Generators for CronJobs and HorizontalPodAutoscalers (kinds served since issues 16
    // and 15) create their objects.
    for (args, object) in [
        (
            &[
                "create",
                "cronjob",
                "cj",
                "--image=x",
                "--schedule=* * * * *",
            ][..],
            "cronjob.batch/cj",
        ),
        (
            &["autoscale", "deployment", "web", "--max=3"][..],
            "horizontalpodautoscaler.autoscaling/web",
        ),
    ] {
        let mut full = vec!["-n", NS];
        full.extend_from_slice(args);
        let r = k.run(&full).await;
        assert!(r.ok, "kubectl {args:?}: {}{}", r.stdout, r.stderr);
        let got = k.ok(&["-n", NS, "get", object, "-o", "name"]).await;
        assert_eq!(got.trim(), object, "kubectl {args:?} stored its object");
    }
}
