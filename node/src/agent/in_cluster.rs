//! How a pod reaches the API server, as in Kubernetes: at `https://kubernetes.default.svc`
//! (port 443), with `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` in its
//! environment, verifying the server with the mounted `ca.crt` and authenticating with
//! the mounted ServiceAccount token ([`super::sa_token`]).
//!
//! wharf has no `kubernetes` Service: the API server is not a pod behind the node's proxy,
//! and it may listen on any port of any machine. So the node gives each container the
//! in-cluster names of the API server as host aliases ([`wharf_runtime::HostAlias`]) to
//! the address the node itself talks to, and the runtime's TLS verifies the name as
//! written against the cluster CA (the API server's certificate carries those names).
//! The aliases apply only once the pod's `wharf.dev/allow-hosts` lets the name through,
//! so a guest reaches the API only when its pod says so; what it may do there is then
//! exactly what its ServiceAccount is allowed. `KUBERNETES_SERVICE_HOST` is the name
//! `kubernetes.default.svc` (not a cluster IP), which in-cluster client libraries put in
//! the URL as they would an address.

use wharf_runtime::HostAlias;

/// The port pods use for the API server, as the `kubernetes` Service has it.
pub const API_PORT: u16 = 443;

/// The name `KUBERNETES_SERVICE_HOST` gives.
pub const API_HOST: &str = "kubernetes.default.svc";

/// Splits an authority (`host:port`, `[v6]:port`, `host`) into host and port (443 when
/// absent).
fn split_authority(authority: &str) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => API_PORT,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None if authority.is_empty() => None,
        None => Some((authority.to_owned(), API_PORT)),
    }
}

/// The API server's in-cluster names (`kubernetes`, `kubernetes.default`,
/// `kubernetes.default.svc`, `kubernetes.default.svc.DOMAIN`) at port 443, aliased to
/// `api_server` (the authority the node reaches it at). Empty when that is not an
/// authority.
pub fn aliases(api_server: &str, cluster_domain: &str) -> Vec<HostAlias> {
    let Some((target_host, target_port)) = split_authority(api_server) else {
        return Vec::new();
    };
    let domain = cluster_domain.trim_matches('.');
    [
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        API_HOST.to_owned(),
        format!("{API_HOST}.{domain}"),
    ]
    .into_iter()
    .map(|host| HostAlias {
        host,
        port: API_PORT,
        target_host: target_host.clone(),
        target_port,
    })
    .collect()
}

/// `env` with the API server's variables set first, as the kubelet sets a Service's
/// variables before the container's own (which win over them).
pub fn with_service_env(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let ours = [
        ("KUBERNETES_SERVICE_HOST", API_HOST.to_owned()),
        ("KUBERNETES_SERVICE_PORT", API_PORT.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", API_PORT.to_string()),
    ];
    let mut out: Vec<(String, String)> = ours
        .into_iter()
        .filter(|(k, _)| !env.iter().any(|(name, _)| name == k))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    out.extend(env);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_in_cluster_names_go_to_the_api_server() {
        let a = aliases("127.0.0.1:41234", "cluster.local.");
        let hosts: Vec<&str> = a.iter().map(|a| a.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local"
            ]
        );
        assert!(
            a.iter()
                .all(|a| a.port == 443 && a.target_host == "127.0.0.1" && a.target_port == 41234)
        );
        let v6 = aliases("[::1]:6443", "cluster.local");
        assert_eq!(
            (v6[0].target_host.as_str(), v6[0].target_port),
            ("::1", 6443)
        );
        let named = aliases("control.example", "cluster.local");
        assert_eq!(
            (named[0].target_host.as_str(), named[0].target_port),
            ("control.example", 443)
        );
        assert!(aliases("", "cluster.local").is_empty());
        assert!(aliases("host:notaport", "cluster.local").is_empty());
    }

    #[test]
    fn the_containers_own_variables_win() {
        let env = with_service_env(vec![
            ("A".into(), "1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "8443".into()),
        ]);
        let get = |k: &str| {
            env.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), ["kubernetes.default.svc"]);
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), ["8443"]);
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), ["443"]);
        assert_eq!(get("A"), ["1"]);
    }
}
