//! Service names for the pods of this node: the [`wharf_runtime::ServiceResolver`] the
//! agent hands every container, so a guest's `http://backend` reaches the Service through
//! this node's proxy.
//!
//! Names are resolved the way a pod's resolv.conf (`search NS.svc.DOMAIN svc.DOMAIN
//! DOMAIN`, `ndots:5`) makes them resolve in Kubernetes: `svc`, `svc.ns`, `svc.ns.svc` and
//! `svc.ns.svc.DOMAIN`, with the pod's namespace for a bare name; a cluster IP written as
//! such works too. The answer is where this node's proxy actually listens for that
//! Service port (normally `clusterIP:port`; another port when the host forbids binding
//! ports below 1024), or, for a headless Service, a ready pod address. It is read from the
//! table the proxy publishes with every snapshot, the same data the cluster DNS serves, so
//! it needs no DNS round trip and never blocks: the runtime calls it on the request path.
//!
//! Only Services resolve here. Any other host (the API server, another node's agent, the
//! internet) is left to the pod's `wharf.dev/allow-hosts` policy.

use super::model::ServiceKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// What pods can reach, by name and by cluster IP.
#[derive(Debug, Default)]
pub struct ServiceTable {
    /// Service → port → where to connect.
    pub services: HashMap<ServiceKey, Target>,
    /// `clusterIP:port` → where this node's proxy listens for it.
    pub by_cluster_ip: HashMap<SocketAddr, SocketAddr>,
}

/// Where a Service's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Through the proxy: service port → listener address.
    Proxied(HashMap<u16, SocketAddr>),
    /// Headless: straight to a ready pod, on the port the caller named.
    Pods(Vec<IpAddr>),
}

/// Splits a host into (namespace, service) the way the pod's DNS search path would.
pub fn service_key(namespace: &str, host: &str, domain: &str) -> Option<ServiceKey> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    let relative = match host.strip_suffix(&domain) {
        Some(rest) if rest.ends_with('.') => rest.trim_end_matches('.').to_string(),
        _ => host,
    };
    let labels: Vec<&str> = relative.split('.').collect();
    match labels.as_slice() {
        [svc] if !svc.is_empty() => Some(ServiceKey::new(namespace, *svc)),
        [svc, ns] | [svc, ns, "svc"] if !svc.is_empty() && !ns.is_empty() => {
            Some(ServiceKey::new(*ns, *svc))
        }
        _ => None,
    }
}

impl ServiceTable {
    /// Where `host:port` goes for a pod in `namespace`, if it names a Service.
    pub fn lookup(
        &self,
        namespace: &str,
        domain: &str,
        host: &str,
        port: u16,
        spread: &AtomicUsize,
    ) -> Option<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.by_cluster_ip.get(&SocketAddr::new(ip, port)).copied();
        }
        let key = service_key(namespace, host, domain)?;
        match self.services.get(&key)? {
            Target::Proxied(ports) => ports.get(&port).copied(),
            Target::Pods(ips) if ips.is_empty() => None,
            Target::Pods(ips) => {
                let i = spread.fetch_add(1, Ordering::Relaxed) % ips.len();
                Some(SocketAddr::new(ips[i], port))
            }
        }
    }
}

/// The table, replaced whole by the proxy after every snapshot.
#[derive(Debug, Default)]
pub struct SharedTable {
    current: RwLock<Arc<ServiceTable>>,
}

impl SharedTable {
    pub fn get(&self) -> Arc<ServiceTable> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, table: ServiceTable) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }
}

/// One pod's resolver: the shared table, with the pod's namespace as its search path.
#[derive(Debug)]
pub struct PodResolver {
    namespace: String,
    domain: Arc<str>,
    table: Arc<SharedTable>,
    spread: AtomicUsize,
}

impl PodResolver {
    pub fn new(namespace: impl Into<String>, domain: Arc<str>, table: Arc<SharedTable>) -> Self {
        PodResolver {
            namespace: namespace.into(),
            domain,
            table,
            spread: AtomicUsize::new(0),
        }
    }
}

impl wharf_runtime::ServiceResolver for PodResolver {
    fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.table
            .get()
            .lookup(&self.namespace, &self.domain, host, port, &self.spread)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wharf_runtime::ServiceResolver;

    #[test]
    fn names_resolve_like_the_pod_search_path() {
        let d = "cluster.local";
        let k = |ns: &str, n: &str| Some(ServiceKey::new(ns, n));
        assert_eq!(service_key("shop", "backend", d), k("shop", "backend"));
        assert_eq!(
            service_key("shop", "backend.other", d),
            k("other", "backend")
        );
        assert_eq!(
            service_key("shop", "backend.other.svc", d),
            k("other", "backend")
        );
        assert_eq!(
            service_key("shop", "Backend.Other.svc.cluster.local.", d),
            k("other", "backend")
        );
        assert_eq!(service_key("shop", "a.b.c", d), None);
        assert_eq!(
            service_key("shop", "backend.other.svc.example.com", d),
            None
        );
        assert_eq!(service_key("shop", "", d), None);
    }

    #[test]
    fn pods_reach_service_ports_cluster_ips_and_headless_pods() {
        let table = Arc::new(SharedTable::default());
        let listen: SocketAddr = "127.250.0.9:80".parse().unwrap();
        let mut t = ServiceTable::default();
        t.services.insert(
            ServiceKey::new("shop", "backend"),
            Target::Proxied([(80, listen)].into()),
        );
        t.services.insert(
            ServiceKey::new("shop", "db"),
            Target::Pods(vec![
                "127.64.0.5".parse().unwrap(),
                "127.64.0.6".parse().unwrap(),
            ]),
        );
        t.by_cluster_ip.insert(listen, listen);
        table.set(t);
        let r = PodResolver::new("shop", Arc::from("cluster.local"), table.clone());
        assert_eq!(r.resolve("backend", 80), Some(listen));
        assert_eq!(
            r.resolve("backend.shop.svc.cluster.local", 80),
            Some(listen)
        );
        assert_eq!(r.resolve("backend", 8080), None);
        assert_eq!(r.resolve("127.250.0.9", 80), Some(listen));
        assert_eq!(r.resolve("127.0.0.1", 6443), None);
        assert_eq!(r.resolve("example.com", 80), None);
        let a = r.resolve("db", 5432).unwrap();
        let b = r.resolve("db", 5432).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.port(), 5432);
        // Another namespace's pod does not see `backend` as a bare name.
        let other = PodResolver::new("web", Arc::from("cluster.local"), table);
        assert_eq!(other.resolve("backend", 80), None);
        assert_eq!(other.resolve("backend.shop", 80), Some(listen));
    }
}
