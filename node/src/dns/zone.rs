//! The cluster zone, as a pure function of a snapshot: the records Kubernetes' DNS
//! specification asks for (github.com/kubernetes/dns, `docs/specification.md`).
//!
//! - `SVC.NS.svc.DOMAIN` `A`/`AAAA` → the cluster IP;
//! - headless Services: `SVC.NS.svc.DOMAIN` → every ready pod address, and
//!   `HOST.SVC.NS.svc.DOMAIN` for each of them (`HOST` is the endpoint's `hostname`, or its
//!   IP with dashes);
//! - `_PORT._PROTO.SVC.NS.svc.DOMAIN` `SRV` for every named port: the service port and the
//!   Service's name, or for headless Services the endpoint port and each pod's name;
//! - ExternalName Services: a `CNAME` to the external name;
//! - the zone's `SOA`, whose serial is the snapshot's generation.
//!
//! Everything else in the domain does not exist (NXDOMAIN, answered by the zone). The
//! zone is built whole from each snapshot and replaces the previous one (see `dns`).

use crate::proxy::model::{Backend, ClusterIp, ServiceInfo, Snapshot};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record};
use std::net::IpAddr;

/// TTL of every answer: short, because endpoints move (CoreDNS uses 5 s too). It is also
/// the SOA minimum, so an NXDOMAIN is cached for at most as long.
pub const TTL: u32 = 5;

/// The zone's serial for a generation (serials are 32 bits and may wrap, RFC 1982).
pub fn serial(generation: u64) -> u32 {
    (generation & u64::from(u32::MAX)) as u32
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

fn address(owner: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, data)
}

/// The name of a headless Service's pod: its `hostname`, or its IP with dashes.
fn pod_label(b: &Backend) -> String {
    b.hostname.clone().unwrap_or_else(|| {
        b.addr
            .ip()
            .to_string()
            .replace(['.', ':'], "-")
            .trim_matches('-')
            .to_string()
    })
}

fn service_records(svc: &ServiceInfo, domain: &str, out: &mut Vec<Record>) {
    let Some(owner) = name(&format!(
        "{}.{}.svc.{domain}.",
        svc.key.name, svc.key.namespace
    )) else {
        return;
    };
    let srv_owner = |port_name: &str, protocol: &str| {
        name(&format!(
            "_{port_name}._{}.{}.{}.svc.{domain}.",
            protocol.to_ascii_lowercase(),
            svc.key.name,
            svc.key.namespace
        ))
    };
    match svc.cluster_ip {
        ClusterIp::Ip(ip) => {
            out.push(address(&owner, ip));
            for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                if let Some(srv) = srv_owner(&p.name, &p.protocol) {
                    out.push(Record::from_rdata(
                        srv,
                        TTL,
                        RData::SRV(SRV::new(0, 100, p.port, owner.clone())),
                    ));
                }
            }
        }
        ClusterIp::Headless => {
            for b in svc.published_pods() {
                out.push(address(&owner, b.addr.ip()));
                if let Ok(host) = owner.prepend_label(pod_label(b).as_str()) {
                    out.push(address(&host, b.addr.ip()));
                }
            }
            for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                let Some(srv) = srv_owner(&p.name, &p.protocol) else {
                    continue;
                };
                let published = svc.backends_of(&p.name).iter().filter(|b| {
                    svc.publish_not_ready || (b.conditions.ready && !b.conditions.terminating)
                });
                for b in published {
                    if let Ok(target) = owner.prepend_label(pod_label(b).as_str()) {
                        out.push(Record::from_rdata(
                            srv.clone(),
                            TTL,
                            RData::SRV(SRV::new(0, 100, b.addr.port(), target)),
                        ));
                    }
                }
            }
        }
        ClusterIp::Unset => {
            if let Some(target) = svc
                .external_name
                .as_deref()
                .and_then(|n| name(&format!("{}.", n.trim_end_matches('.'))))
            {
                out.push(Record::from_rdata(owner, TTL, RData::CNAME(CNAME(target))));
            }
        }
    }
}

/// Every record of the zone for `domain` (without dots at the ends, e.g.
/// `cluster.local`), SOA first.
pub fn records(snapshot: &Snapshot, domain: &str) -> Vec<Record> {
    let domain = domain.trim_matches('.');
    let mut out = Vec::new();
    if let (Some(origin), Some(mname), Some(rname)) = (
        name(&format!("{domain}.")),
        name(&format!("ns.dns.{domain}.")),
        name(&format!("hostmaster.{domain}.")),
    ) {
        let soa = SOA::new(
            mname,
            rname,
            serial(snapshot.generation),
            7200,
            1800,
            86400,
            TTL,
        );
        out.push(Record::from_rdata(origin, TTL, RData::SOA(soa)));
    }
    for svc in snapshot.services.values() {
        service_records(svc, domain, &mut out);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::proxy::model;
    use hickory_proto::rr::RecordType;

    pub(crate) fn snapshot(generation: u64) -> Snapshot {
        let svc = |name: &str, spec: serde_json::Value| -> k8s_openapi::api::core::v1::Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "shop", "name": name}, "spec": spec,
            }))
            .unwrap()
        };
        let services = [
            svc(
                "web",
                serde_json::json!({"clusterIP": "127.250.0.10", "ports": [
                    {"name": "http", "port": 80}, {"port": 81, "name": ""},
                ]}),
            ),
            svc(
                "db",
                serde_json::json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
            ),
            svc(
                "ext",
                serde_json::json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
        ];
        let slices = [
            serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(
                serde_json::json!({
                    "metadata": {"namespace": "shop", "name": "db-1",
                                 "labels": {model::SERVICE_NAME_LABEL: "db"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "pg", "port": 15432}],
                    "endpoints": [
                        {"addresses": ["127.64.0.7"], "hostname": "db-0"},
                        {"addresses": ["127.64.0.8"]},
                        {"addresses": ["127.64.0.9"], "conditions": {"ready": false}},
                    ],
                }),
            )
            .unwrap(),
        ];
        model::build(generation, &services, &slices)
    }

    fn find<'a>(records: &'a [Record], owner: &str, ty: RecordType) -> Vec<&'a RData> {
        let owner = Name::from_ascii(owner).unwrap();
        records
            .iter()
            .filter(|r| r.name == owner && r.record_type() == ty)
            .map(|r| &r.data)
            .collect()
    }

    #[test]
    fn cluster_ip_services_get_a_and_srv() {
        let records = records(&snapshot(42), "cluster.local");
        let RData::SOA(soa) = &records[0].data else {
            panic!("SOA first");
        };
        assert_eq!(soa.serial, 42);
        assert_eq!(
            find(&records, "web.shop.svc.cluster.local.", RecordType::A),
            vec![&RData::A(A("127.250.0.10".parse().unwrap()))]
        );
        let srv = find(
            &records,
            "_http._tcp.web.shop.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(srv.len(), 1);
        let RData::SRV(srv) = srv[0] else { panic!() };
        assert_eq!(srv.port, 80);
        assert_eq!(
            srv.target,
            Name::from_ascii("web.shop.svc.cluster.local.").unwrap()
        );
        // Unnamed ports have no SRV record.
        assert_eq!(
            records
                .iter()
                .filter(|r| r.record_type() == RecordType::SRV)
                .count(),
            3
        );
    }

    #[test]
    fn headless_services_resolve_to_ready_pods() {
        let records = records(&snapshot(1), "cluster.local");
        let mut ips: Vec<_> = find(&records, "db.shop.svc.cluster.local.", RecordType::A)
            .into_iter()
            .map(|d| d.to_string())
            .collect();
        ips.sort();
        assert_eq!(ips, ["127.64.0.7", "127.64.0.8"]);
        assert_eq!(
            find(&records, "db-0.db.shop.svc.cluster.local.", RecordType::A).len(),
            1
        );
        assert_eq!(
            find(
                &records,
                "127-64-0-8.db.shop.svc.cluster.local.",
                RecordType::A
            )
            .len(),
            1
        );
        let mut srv: Vec<_> = find(
            &records,
            "_pg._tcp.db.shop.svc.cluster.local.",
            RecordType::SRV,
        )
        .into_iter()
        .map(|d| match d {
            RData::SRV(s) => (s.target.to_string(), s.port),
            _ => panic!(),
        })
        .collect();
        srv.sort();
        assert_eq!(
            srv,
            [
                ("127-64-0-8.db.shop.svc.cluster.local.".to_string(), 15432),
                ("db-0.db.shop.svc.cluster.local.".to_string(), 15432)
            ]
        );
        // The unready pod is not published.
        assert!(
            find(
                &records,
                "127-64-0-9.db.shop.svc.cluster.local.",
                RecordType::A
            )
            .is_empty()
        );
    }

    #[test]
    fn external_names_are_cnames_and_unknown_names_have_nothing() {
        let records = records(&snapshot(1), "cluster.local");
        assert_eq!(
            find(&records, "ext.shop.svc.cluster.local.", RecordType::CNAME),
            vec![&RData::CNAME(CNAME(
                Name::from_ascii("example.com.").unwrap()
            ))]
        );
        assert!(
            records
                .iter()
                .all(|r| !r.name.to_string().starts_with("missing."))
        );
        // Another domain.
        let other = super::records(&snapshot(1), "k8s.internal.");
        assert!(!find(&other, "web.shop.svc.k8s.internal.", RecordType::A).is_empty());
    }
}
