//! The Ingress route table: a pure function of (Ingresses, Services with their
//! endpoints, TLS Secrets), rebuilt whole on every change and swapped in.
//!
//! Matching is Kubernetes': a request's host picks the rules of that exact host if there
//! are any, else those of a wildcard host (`*.example.com` matches exactly one more
//! label), else the rules without a host (a host is served by one set of rules, as a
//! virtual server is); within them the longest matching path wins, `Exact` before
//! `Prefix` at equal length. `Prefix` matches element-wise (`/foo` matches `/foo`,
//! `/foo/` and `/foo/bar`, not `/foobar`; a trailing slash in the rule is ignored), and
//! `ImplementationSpecific` is treated as `Prefix`. Nothing matching falls to the first
//! `defaultBackend` (Ingresses in name order), then to 404. Rules of several Ingresses
//! for one host merge, as every controller merges them.

use crate::proxy::model::{self, ServiceKey, Snapshot};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A Service port, with the endpoints new requests may go to (possibly none).
    Service {
        key: ServiceKey,
        port: u16,
        endpoints: Vec<SocketAddr>,
        /// The Deployment to wake while the Service has no endpoint (a Service asleep at
        /// zero, [`super::super::wake`]): its requests are held, not refused.
        wake: Option<String>,
    },
    /// The backend cannot be served: why, for the 503's body.
    Unavailable(String),
}

/// How a rule's path matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    /// The path's elements (`/a/b/` is `["a", "b"]`).
    Prefix(Vec<String>),
}

impl PathMatch {
    /// How specific the match is (longer first; Exact wins a tie), if it matches.
    fn rank(&self, path: &str, elements: &[&str]) -> Option<(usize, bool)> {
        match self {
            PathMatch::Exact(p) => (p == path).then_some((p.len(), true)),
            PathMatch::Prefix(prefix) => {
                let matches = prefix.len() <= elements.len()
                    && prefix.iter().zip(elements).all(|(a, b)| a == b);
                let len: usize = prefix.iter().map(|e| e.len() + 1).sum();
                matches.then_some((len.max(1), false))
            }
        }
    }
}

fn elements(path: &str) -> Vec<&str> {
    path.split('/').filter(|e| !e.is_empty()).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    path: PathMatch,
    backend: Backend,
}

/// A certificate and key, PEM, for the hosts of a TLS entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// `namespace/name` of the Secret, for logs.
    pub secret: String,
}

/// The routes of every served Ingress, and the certificates by host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    exact: BTreeMap<String, Vec<Route>>,
    /// By the suffix after `*.` (`example.com` for `*.example.com`).
    wildcard: BTreeMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    default_backend: Option<Backend>,
    /// Certificates by host pattern (exact, or `*.suffix`).
    pub certificates: BTreeMap<String, Certificate>,
}

/// What the table decides for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Route(&'a Backend),
    NoRule,
}

/// The host of a request without its port, lowercased.
pub fn host_only(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

impl RouteTable {
    /// The table for `ingresses` (already filtered to the served class), the Services and
    /// endpoints of `snapshot`, and the `kubernetes.io/tls` Secrets by `namespace/name`.
    pub fn build(
        ingresses: &[Ingress],
        snapshot: &Snapshot,
        secrets: &BTreeMap<String, Secret>,
    ) -> RouteTable {
        let mut sorted: Vec<&Ingress> = ingresses.iter().collect();
        sorted.sort_by_key(|i| (i.metadata.namespace.clone(), i.metadata.name.clone()));
        let mut table = RouteTable::default();
        for ing in sorted {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ing.spec else { continue };
            if table.default_backend.is_none()
                && let Some(b) = &spec.default_backend
            {
                table.default_backend = Some(resolve(ns, b, snapshot));
            }
            for rule in spec.rules.iter().flatten() {
                let routes: Vec<Route> = rule
                    .http
                    .iter()
                    .flat_map(|h| &h.paths)
                    .map(|p| {
                        let path = p.path.clone().unwrap_or_else(|| "/".into());
                        Route {
                            path: match p.path_type.as_str() {
                                "Exact" => PathMatch::Exact(path),
                                _ => PathMatch::Prefix(
                                    elements(&path).into_iter().map(str::to_owned).collect(),
                                ),
                            },
                            backend: resolve(ns, &p.backend, snapshot),
                        }
                    })
                    .collect();
                let host = rule.host.as_deref().map(host_only).unwrap_or_default();
                let slot = if host.is_empty() {
                    &mut table.any_host
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    table.wildcard.entry(suffix.to_owned()).or_default()
                } else {
                    table.exact.entry(host).or_default()
                };
                slot.extend(routes);
            }
            for tls in spec.tls.iter().flatten() {
                let Some(name) = &tls.secret_name else {
                    continue;
                };
                let secret_key = format!("{ns}/{name}");
                let Some(cert) = secrets
                    .get(&secret_key)
                    .and_then(|s| certificate(s, &secret_key))
                else {
                    continue;
                };
                for host in tls.hosts.iter().flatten() {
                    table
                        .certificates
                        .entry(host_only(host))
                        .or_insert_with(|| cert.clone());
                }
            }
        }
        table
    }

    /// Where a request for `host` and `path` goes.
    pub fn route(&self, host: &str, path: &str) -> Decision<'_> {
        let host = host_only(host);
        let elements = elements(path);
        let wildcard = host
            .split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix));
        let routes = self.exact.get(&host).or(wildcard).unwrap_or(&self.any_host);
        {
            let best = routes
                .iter()
                .filter_map(|r| r.path.rank(path, &elements).map(|rank| (rank, r)))
                // Longest first; at equal length Exact first; the first rule of a tie.
                .fold(
                    None::<((usize, bool), &Route)>,
                    |best, (rank, r)| match best {
                        Some((b, _)) if b >= rank => best,
                        _ => Some((rank, r)),
                    },
                );
            if let Some((_, route)) = best {
                return Decision::Route(&route.backend);
            }
        }
        match &self.default_backend {
            Some(b) => Decision::Route(b),
            None => Decision::NoRule,
        }
    }

    /// The certificate for a TLS server name: the exact host's, else its wildcard's.
    pub fn certificate(&self, server_name: &str) -> Option<&Certificate> {
        let host = host_only(server_name);
        self.certificates.get(&host).or_else(|| {
            let (_, suffix) = host.split_once('.')?;
            self.certificates.get(&format!("*.{suffix}"))
        })
    }

    /// Every Service port some route sends to, for the executor's per-backend stacks.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .flatten()
            .chain(&self.any_host)
            .map(|r| &r.backend)
            .chain(&self.default_backend)
    }
}

/// A Secret's certificate, if it is a complete `kubernetes.io/tls` one.
fn certificate(secret: &Secret, key: &str) -> Option<Certificate> {
    let data = secret.data.as_ref()?;
    Some(Certificate {
        cert_pem: data.get("tls.crt")?.0.clone(),
        key_pem: data.get("tls.key")?.0.clone(),
        secret: key.to_owned(),
    })
}

/// The backend an Ingress in `ns` names, resolved against the snapshot.
fn resolve(ns: &str, backend: &IngressBackend, snapshot: &Snapshot) -> Backend {
    let Some(svc_ref) = &backend.service else {
        return Backend::Unavailable("resource backends are not supported by wharf".into());
    };
    let key = ServiceKey::new(ns, svc_ref.name.clone());
    let Some(svc) = snapshot.services.get(&key) else {
        return Backend::Unavailable(format!("service {key} does not exist"));
    };
    let wanted = svc_ref.port.as_ref();
    let port = svc.ports.iter().find(|p| match wanted {
        Some(w) => match (&w.number, &w.name) {
            (Some(n), _) => i32::from(p.port) == *n,
            (None, Some(name)) => &p.name == name,
            (None, None) => false,
        },
        None => false,
    });
    let Some(port) = port else {
        let what = wanted
            .and_then(|w| w.number.map(|n| n.to_string()).or(w.name.clone()))
            .unwrap_or_default();
        return Backend::Unavailable(format!("service {key} has no port {what}"));
    };
    Backend::Service {
        key,
        port: port.port,
        endpoints: model::routable(svc.backends_of(&port.name)),
        wake: svc.wake.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::model::{Backend as Endpoint, ClusterIp, Conditions, PortInfo, ServiceInfo};
    use serde_json::json;

    fn service(name: &str, port: u16, endpoints: &[&str]) -> ServiceInfo {
        ServiceInfo {
            key: ServiceKey::new("default", name),
            cluster_ip: ClusterIp::Unset,
            service_type: "ClusterIP".into(),
            external_name: None,
            ports: vec![PortInfo {
                name: "http".into(),
                port,
                protocol: "TCP".into(),
                node_port: None,
                http: true,
            }],
            policy: Default::default(),
            publish_not_ready: false,
            lb_ingress: Vec::new(),
            wake: None,
            backends: BTreeMap::from([(
                "http".to_string(),
                endpoints
                    .iter()
                    .map(|a| Endpoint {
                        addr: a.parse().unwrap(),
                        conditions: Conditions {
                            ready: true,
                            serving: true,
                            terminating: false,
                        },
                        hostname: None,
                        node_name: None,
                        node_address: None,
                        pod: None,
                    })
                    .collect(),
            )]),
            pods: Vec::new(),
        }
    }

    fn snapshot(services: Vec<ServiceInfo>) -> Snapshot {
        Snapshot {
            synced: true,
            services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
            ..Default::default()
        }
    }

    fn ingress(name: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}))
        .unwrap()
    }

    fn path(p: &str, ty: &str, svc: &str, port: u16) -> serde_json::Value {
        json!({"path": p, "pathType": ty,
               "backend": {"service": {"name": svc, "port": {"number": port}}}})
    }

    fn to(table: &RouteTable, host: &str, p: &str) -> String {
        match table.route(host, p) {
            Decision::Route(Backend::Service { key, .. }) => key.name.clone(),
            Decision::Route(Backend::Unavailable(why)) => format!("503 {why}"),
            Decision::NoRule => "404".into(),
        }
    }

    #[test]
    fn hosts_and_paths_route_as_kubernetes_matches_them() {
        let snap = snapshot(vec![
            service("app", 80, &["127.0.1.1:8080"]),
            service("api", 80, &["127.0.1.2:8080"]),
            service("exact", 80, &["127.0.1.3:8080"]),
            service("wild", 80, &["127.0.1.4:8080"]),
        ]);
        let table = RouteTable::build(
            &[
                ingress(
                    "a",
                    json!({"rules": [{"host": "hello.local", "http": {"paths": [
                        path("/", "Prefix", "app", 80),
                        path("/api/", "Prefix", "api", 80),
                        path("/api/v1", "Exact", "exact", 80),
                        path("/docs", "ImplementationSpecific", "api", 80),
                    ]}}]}),
                ),
                ingress(
                    "b",
                    json!({"rules": [{"host": "*.example.com", "http": {"paths": [
                        path("/", "Prefix", "wild", 80)]}}]}),
                ),
            ],
            &snap,
            &BTreeMap::new(),
        );
        assert_eq!(to(&table, "hello.local", "/"), "app");
        assert_eq!(to(&table, "Hello.Local:8080", "/index.html"), "app");
        // Element-wise prefixes: /api matches /api and /api/x, not /apix.
        assert_eq!(to(&table, "hello.local", "/api"), "api");
        assert_eq!(to(&table, "hello.local", "/api/x"), "api");
        assert_eq!(to(&table, "hello.local", "/apix"), "app");
        // Exact wins over a prefix, only for the exact path.
        assert_eq!(to(&table, "hello.local", "/api/v1"), "exact");
        assert_eq!(to(&table, "hello.local", "/api/v1/"), "api");
        assert_eq!(to(&table, "hello.local", "/docs/x"), "api");
        // One label for a wildcard, not zero, not two.
        assert_eq!(to(&table, "a.example.com", "/"), "wild");
        assert_eq!(to(&table, "example.com", "/"), "404");
        assert_eq!(to(&table, "b.a.example.com", "/"), "404");
        assert_eq!(to(&table, "other.local", "/"), "404");
    }

    #[test]
    fn exact_hosts_beat_wildcards_and_hostless_rules_and_the_default_backend_is_last() {
        let snap = snapshot(vec![
            service("one", 80, &["127.0.1.1:8080"]),
            service("two", 80, &["127.0.1.2:8080"]),
            service("three", 80, &["127.0.1.3:8080"]),
            service("fallback", 80, &["127.0.1.4:8080"]),
        ]);
        let table = RouteTable::build(
            &[ingress(
                "a",
                json!({
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                "rules": [
                    {"host": "*.x.test", "http": {"paths": [path("/", "Prefix", "two", 80)]}},
                    {"host": "a.x.test", "http": {"paths": [path("/a", "Prefix", "one", 80)]}},
                    {"http": {"paths": [path("/any", "Prefix", "three", 80)]}},
                ]}),
            )],
            &snap,
            &BTreeMap::new(),
        );
        assert_eq!(to(&table, "a.x.test", "/a"), "one");
        // The exact host's rules alone serve it: /b falls to the default backend, not to
        // the wildcard's rules.
        assert_eq!(to(&table, "a.x.test", "/b"), "fallback");
        assert_eq!(to(&table, "b.x.test", "/b"), "two");
        assert_eq!(to(&table, "b.x.test", "/any"), "two");
        assert_eq!(to(&table, "z.test", "/any/thing"), "three");
        assert_eq!(to(&table, "z.test", "/"), "fallback");
    }

    #[test]
    fn missing_services_and_ports_are_unavailable_and_endpoints_come_from_the_snapshot() {
        let snap = snapshot(vec![
            service("app", 80, &[]),
            service("up", 80, &["127.0.1.9:80"]),
        ]);
        let table = RouteTable::build(
            &[ingress(
                "a",
                json!({"rules": [{"host": "h", "http": {"paths": [
                    path("/gone", "Prefix", "nothing", 80),
                    path("/port", "Prefix", "app", 81),
                    path("/empty", "Prefix", "app", 80),
                    path("/up", "Prefix", "up", 80),
                ]}}]}),
            )],
            &snap,
            &BTreeMap::new(),
        );
        assert_eq!(
            to(&table, "h", "/gone"),
            "503 service default/nothing does not exist"
        );
        assert_eq!(
            to(&table, "h", "/port"),
            "503 service default/app has no port 81"
        );
        assert_eq!(
            table.route("h", "/empty"),
            Decision::Route(&Backend::Service {
                key: ServiceKey::new("default", "app"),
                port: 80,
                endpoints: vec![],
                wake: None,
            })
        );
        assert_eq!(
            table.route("h", "/up"),
            Decision::Route(&Backend::Service {
                key: ServiceKey::new("default", "up"),
                port: 80,
                endpoints: vec!["127.0.1.9:80".parse().unwrap()],
                wake: None
            })
        );
    }

    #[test]
    fn certificates_are_found_by_server_name_exact_then_wildcard() {
        let secret = |name: &str| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}))
            .unwrap()
        };
        let secrets = BTreeMap::from([
            ("default/exact".to_string(), secret("exact")),
            ("default/wild".to_string(), secret("wild")),
        ]);
        let table = RouteTable::build(
            &[ingress(
                "a",
                json!({"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}},
                       "tls": [{"hosts": ["a.test"], "secretName": "exact"},
                               {"hosts": ["*.test"], "secretName": "wild"},
                               {"hosts": ["m.test"], "secretName": "missing"}]}),
            )],
            &snapshot(vec![]),
            &secrets,
        );
        let by = |name: &str| table.certificate(name).map(|c| c.secret.clone());
        assert_eq!(by("a.test").as_deref(), Some("default/exact"));
        assert_eq!(by("b.test").as_deref(), Some("default/wild"));
        assert_eq!(by("m.test").as_deref(), Some("default/wild"));
        assert_eq!(by("a.b.test"), None);
        assert_eq!(table.certificate("a.test").unwrap().cert_pem, b"cert");
    }
}
