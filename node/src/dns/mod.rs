//! The cluster DNS: every node answers for the cluster domain (`cluster.local` by default)
//! from the same snapshots of Services and EndpointSlices the proxy serves, as CoreDNS
//! does for Kubernetes, on an unprivileged address (`127.0.0.1:5353` by default), over UDP
//! and TCP.
//!
//! How it follows the cluster, as omicron's `dns-server` does: the zone is never edited in
//! place. Each new snapshot is turned into a whole new zone ([`zone::records`], a pure
//! function) whose SOA serial is the snapshot's generation, and the handler switches to it
//! in one pointer swap; a query sees the old zone or the new one, never half of each. The
//! snapshot arrives as soon as the watch event does (there is no batching delay), and a
//! rebuild takes microseconds for hundreds of Services, so answers change within
//! milliseconds of an endpoint change. Until the first full list of Services and
//! EndpointSlices arrived, queries get SERVFAIL rather than a false NXDOMAIN.
//!
//! Names outside the cluster domain are forwarded to the host's resolvers (from
//! /etc/resolv.conf, through hickory-resolver) or refused, by configuration.
//!
//! Several nodes on one machine bind the same address with `SO_REUSEPORT` (see
//! `proxy::listener`): every node's server answers from the same API state, so whichever
//! gets a query answers it the same. With port 0, each node binds its own free port (the
//! same for UDP and TCP) and reports it.

mod udp;
pub mod zone;

use crate::proxy::listener;
use crate::proxy::metrics::Metrics;
use crate::proxy::model::Snapshot;
use crate::proxy::watch::SnapshotRx;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name};
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::ForwardZoneHandler;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How the node's DNS serves.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Forward names outside the cluster domain to the host's resolvers (else REFUSED).
    pub forward: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster DNS cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("invalid cluster domain {0:?}")]
    Domain(String),
}

/// The bound sockets, before serving.
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
    pub addr: SocketAddr,
}

/// Binds UDP and TCP on `listen` (shared with other nodes through `SO_REUSEPORT`). Port 0
/// picks one free for both.
pub fn bind(listen: SocketAddr) -> Result<DnsSockets, DnsError> {
    let err = |addr, error| DnsError::Bind { addr, error };
    if listen.port() != 0 {
        let udp = listener::bind_udp(listen).map_err(|e| err(listen, e))?;
        let tcp = listener::bind_tcp(listen).map_err(|e| err(listen, e))?;
        return Ok(DnsSockets {
            udp,
            tcp,
            addr: listen,
        });
    }
    let mut last = None;
    for _ in 0..20 {
        let udp = listener::bind_udp(listen).map_err(|e| err(listen, e))?;
        let addr = udp.local_addr().map_err(|e| err(listen, e))?;
        match listener::bind_tcp(addr) {
            Ok(tcp) => return Ok(DnsSockets { udp, tcp, addr }),
            // The TCP side of that port is taken: try another port.
            Err(e) => last = Some(e),
        }
    }
    Err(err(
        listen,
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

/// One zone as served: its catalog, the zone's origin, and the UDP answers it gave.
struct Zone {
    catalog: Catalog,
    origin: LowerName,
    answers: udp::Answers,
}

/// The request handler: the current zone, replaced whole per snapshot.
#[derive(Clone, Default)]
pub struct ZoneSwitch {
    current: Arc<RwLock<Option<Arc<Zone>>>>,
    /// Where answered queries are counted (`wharf_dns_queries_total`).
    counts: Option<Arc<crate::proxy::Shared>>,
}

impl ZoneSwitch {
    fn get(&self) -> Option<Arc<Zone>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, catalog: Catalog, origin: LowerName) {
        let zone = Zone {
            catalog,
            origin,
            answers: udp::Answers::default(),
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(zone));
    }

    /// The current zone's kept answer to a UDP question, written to `out`.
    fn answer_kept(&self, question: &[u8], out: &mut Vec<u8>) -> Option<ResponseCode> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref()?.answers.answer(question, out)
    }

    /// Counts one answered query by its response code.
    fn count(&self, rcode: ResponseCode) {
        if let Some(counts) = &self.counts {
            let rcode = match rcode {
                ResponseCode::NoError => "NOERROR",
                ResponseCode::NXDomain => "NXDOMAIN",
                ResponseCode::ServFail => "SERVFAIL",
                ResponseCode::Refused => "REFUSED",
                _ => "other",
            };
            counts.metrics.dns_answered(rcode);
        }
    }

    /// Answers from `zone` (SERVFAIL without one) and counts the answer.
    async fn answer_in<R: ResponseHandler, T: Time>(
        &self,
        zone: Option<&Zone>,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let info = match zone {
            Some(zone) => {
                zone.catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
            None => {
                // Not synced with the API yet: "try again", not "does not exist".
                let response = MessageResponseBuilder::new(&request.queries, None)
                    .error_msg(&request.metadata, ResponseCode::ServFail);
                match response_handle.send_response(response).await {
                    Ok(info) => info,
                    Err(error) => {
                        tracing::debug!(%error, "sending a DNS response failed");
                        let mut metadata = request.metadata;
                        metadata.response_code = ResponseCode::ServFail;
                        ResponseInfo::from(hickory_proto::op::Header {
                            metadata,
                            counts: Default::default(),
                        })
                    }
                }
            }
        };
        self.count(info.response_code);
        info
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneSwitch {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let zone = self.get();
        self.answer_in::<R, T>(zone.as_deref(), request, response_handle)
            .await
    }
}

/// A catalog serving the snapshot's zone, and forwarding the rest if a forwarder is given;
/// with the zone's origin.
pub fn catalog(
    snapshot: &Snapshot,
    domain: &str,
    forwarder: Option<Arc<dyn ZoneHandler>>,
) -> Result<(Catalog, LowerName), DnsError> {
    let origin = Name::from_ascii(format!("{}.", domain.trim_matches('.')))
        .map_err(|_| DnsError::Domain(domain.to_string()))?;
    let mut zone: InMemoryZoneHandler =
        InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let serial = zone::serial(snapshot.generation);
    for record in zone::records(snapshot, domain) {
        let owner = record.name.clone();
        if !zone.upsert_mut(record, serial) {
            tracing::debug!(%owner, "record not added to the cluster zone");
        }
    }
    let origin = LowerName::new(&origin);
    let mut catalog = Catalog::new();
    catalog.upsert(origin.clone(), vec![Arc::new(zone)]);
    if let Some(forwarder) = forwarder {
        catalog.upsert(LowerName::new(&Name::root()), vec![forwarder]);
    }
    Ok((catalog, origin))
}

/// The forwarder to the host's resolvers, or why there is none.
fn forwarder() -> Result<Arc<dyn ZoneHandler>, String> {
    let handler = ForwardZoneHandler::builder(TokioRuntimeProvider::default())?.build()?;
    Ok(Arc::new(handler))
}

/// Serves until shutdown, switching to a new zone for every snapshot.
pub async fn run(
    sockets: DnsSockets,
    config: DnsConfig,
    metrics: Arc<crate::proxy::Shared>,
    mut snapshots: SnapshotRx,
    shutdown: CancellationToken,
) {
    let forwarder = if config.forward {
        // Reading /etc/resolv.conf is file I/O: off the async workers.
        let built = tokio::task::spawn_blocking(forwarder)
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match built {
            Ok(f) => Some(f),
            Err(error) => {
                tracing::warn!(%error, "cannot read the host's resolver configuration; names outside the cluster domain will be refused");
                None
            }
        }
    } else {
        None
    };
    let switch = ZoneSwitch {
        counts: Some(metrics.clone()),
        ..ZoneSwitch::default()
    };
    let mut server = Server::new(switch.clone());
    let udp = match sockets.udp.into_std() {
        Ok(socket) => tokio::spawn(udp::serve(socket, switch.clone(), shutdown.clone())),
        Err(error) => tokio::spawn(async move { Err(error) }),
    };
    server.register_listener(sockets.tcp, Duration::from_secs(10), 64);
    tracing::info!(addr = %sockets.addr, domain = %config.cluster_domain, forward = forwarder.is_some(), "cluster DNS serving");
    let metrics: &Metrics = &metrics.metrics;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.synced {
            match catalog(&snapshot, &config.cluster_domain, forwarder.clone()) {
                Ok((c, origin)) => {
                    switch.install(c, origin);
                    metrics.set_dns_generation(snapshot.generation);
                }
                Err(e) => tracing::error!(error = %e, "cluster DNS zone not built"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
    }
    let stopped = tokio::time::timeout(Duration::from_secs(5), server.shutdown_gracefully()).await;
    match tokio::time::timeout(Duration::from_secs(5), udp).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "cluster DNS could not serve over UDP"),
        Ok(Err(error)) => tracing::error!(%error, "cluster DNS over UDP failed"),
        Err(_) => tracing::debug!("cluster DNS over UDP did not stop in time"),
    }
    if !matches!(stopped, Ok(Ok(()))) {
        tracing::debug!("cluster DNS did not stop cleanly");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{RData, RecordType};
    use std::time::Instant;

    async fn query(server: SocketAddr, name: &str, ty: RecordType) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        socket
            .send_to(&msg.to_vec().unwrap(), server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    async fn tcp_query(server: SocketAddr, name: &str, ty: RecordType) -> Message {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
        let mut msg = Message::new(8, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        let bytes = msg.to_vec().unwrap();
        s.write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len))
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    }

    fn a_answers(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .map(|r| r.data.to_string())
            .collect();
        v.sort();
        v
    }

    /// The server end to end: SERVFAIL before sync, A/SRV/NXDOMAIN after, REFUSED outside
    /// the domain without a forwarder, and a new snapshot visible within 100 ms.
    #[tokio::test]
    async fn serves_the_zone_of_the_newest_snapshot() {
        let sockets = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sockets.addr;
        let (tx, rx) = crate::proxy::watch::channel();
        let shutdown = CancellationToken::new();
        let config = DnsConfig {
            listen: addr,
            cluster_domain: "cluster.local".into(),
            forward: false,
        };
        let shared = Arc::new(crate::proxy::Shared::new("cluster.local"));
        let server = tokio::spawn(run(sockets, config, shared.clone(), rx, shutdown.clone()));

        let m = query(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

        tx.send_replace(Arc::new(zone::tests::snapshot(1)));
        let deadline = Instant::now() + Duration::from_secs(5);
        let m = loop {
            let m = query(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
            if m.metadata.response_code != ResponseCode::ServFail || Instant::now() > deadline {
                break m;
            }
        };
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(a_answers(&m), ["127.250.0.10"]);

        let m = tcp_query(
            addr,
            "_http._tcp.web.shop.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        let RData::SRV(srv) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(srv.port, 80);

        let m = query(addr, "db.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(a_answers(&m), ["127.64.0.7", "127.64.0.8"]);
        // Asked again: the kept answer, the same records, and counted like the first.
        let noerror = || {
            let rendered = shared.metrics.render();
            let line = rendered
                .lines()
                .find(|l| l.starts_with("wharf_dns_queries_total{rcode=\"NOERROR\"}"))
                .map(str::to_owned);
            line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap()
        };
        let before = noerror();
        for _ in 0..2 {
            let again = query(addr, "db.shop.svc.cluster.local.", RecordType::A).await;
            assert_eq!(again.answers, m.answers);
        }
        assert_eq!(noerror(), before + 2);

        let m = query(addr, "missing.shop.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = query(addr, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);

        // A change is served within 100 ms of being published.
        let mut next = zone::tests::snapshot(2);
        next.services.retain(|k, _| k.name != "web");
        let published = Instant::now();
        tx.send_replace(Arc::new(next));
        loop {
            let m = query(addr, "web.shop.svc.cluster.local.", RecordType::A).await;
            if m.metadata.response_code == ResponseCode::NXDomain {
                break;
            }
            assert!(published.elapsed() < Duration::from_millis(100), "{m:?}");
        }
        let soa = query(addr, "cluster.local.", RecordType::SOA).await;
        let RData::SOA(soa) = &soa.answers[0].data else {
            panic!()
        };
        assert_eq!(soa.serial, 2);
        assert!(
            shared
                .metrics
                .render()
                .contains("wharf_dns_zone_generation 2")
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }
}
