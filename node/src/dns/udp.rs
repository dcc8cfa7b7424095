//! The cluster DNS over UDP: a receive loop, on a thread of its own, that answers a
//! question it has answered before from the bytes of that answer, and hands every other
//! datagram to the zone's catalog on the async runtime.
//!
//! Why a loop of our own rather than hickory's UDP server: that server spawns a task per
//! datagram, decodes the whole message, walks the catalog, encodes the answer and passes it
//! through a channel to the socket; on a 2-core node that was most of a query's cost. Yet
//! the common question is one asked before (every pod's resolver asks for the same few
//! Service names), and its answer can only change when the zone does.
//!
//! So each zone keeps the answers it gave, keyed by the question's bytes after the 2-byte
//! ID ([`Answers`]). The same bytes asked of the same zone get the same answer (the zone is
//! immutable, and nothing in an answer depends on who asks), except for the ID, which is
//! copied from the question. A new zone starts with no answers, so an answer is never older
//! than the zone that serves it: the pointer swap of `dns` still decides what every query
//! sees. Only answers from the cluster zone are kept (forwarded ones have their own TTLs),
//! and the table is bounded: when full it is emptied and refilled by the questions asked
//! next.

use super::ZoneSwitch;
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{LowerName, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::SockRef;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many answers a zone keeps at most; a cluster has far fewer distinct questions.
pub const MAX_ANSWERS: usize = 8192;

/// The largest datagram read: a question is a few dozen bytes, and EDNS payloads larger
/// than this are not sent by resolvers in practice (4096 is the usual advertised size).
const MAX_DATAGRAM: usize = 4096;

/// Header length: a shorter datagram is not DNS and gets no answer.
const HEADER_LEN: usize = 12;

/// One kept answer: its wire bytes (with the ID of the question that first asked it) and
/// its response code, for the query counter.
struct Answer {
    wire: Box<[u8]>,
    rcode: ResponseCode,
}

/// The answers one zone gave over UDP, by question bytes after the ID.
#[derive(Default)]
pub struct Answers {
    map: Mutex<HashMap<Box<[u8]>, Answer>>,
}

impl Answers {
    /// Writes the kept answer to `question` into `out`, with the question's ID, and returns
    /// its response code; `None` if this question was not answered before.
    pub fn answer(&self, question: &[u8], out: &mut Vec<u8>) -> Option<ResponseCode> {
        let key = question.get(2..)?;
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = map.get(key)?;
        out.clear();
        out.extend_from_slice(&kept.wire);
        out[..2].copy_from_slice(&question[..2]);
        Some(kept.rcode)
    }

    /// Keeps `wire` as the answer to `question`.
    pub fn keep(&self, question: &[u8], wire: &[u8], rcode: ResponseCode) {
        let (Some(key), true) = (question.get(2..), wire.len() >= 2) else {
            return;
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_ANSWERS {
            map.clear();
        }
        map.insert(
            key.into(),
            Answer {
                wire: wire.into(),
                rcode,
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Whether an answer to this request may be kept: one question, asked as a standard query,
/// for a name in the cluster zone.
fn keepable(request: &Request, origin: &LowerName) -> bool {
    request.metadata.message_type == MessageType::Query
        && request.metadata.op_code == OpCode::Query
        && request.signature.is_none()
        && matches!(request.queries.queries(), [q] if origin.zone_of(q.name()))
}

/// A response handler that encodes the answer into bytes instead of sending it, as
/// hickory's UDP server would: at most the requester's EDNS payload size, else 512 bytes
/// (RFC 1035 4.2.1), truncated with TC set beyond that.
#[derive(Clone)]
struct Encode {
    max_size: u16,
    out: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Encode {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.max_size);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                // As hickory does: a bare SERVFAIL rather than no answer at all.
                tracing::debug!(%error, "a DNS answer could not be encoded");
                bytes.clear();
                let mut encoder = BinEncoder::new(&mut bytes);
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        *self.out.lock().unwrap_or_else(PoisonError::into_inner) = Some(bytes);
        Ok(info)
    }
}

/// Answers one datagram through the catalog (the path of every first question), keeping
/// the answer when the zone may. `None` when there is nothing to send back.
pub async fn answer_fresh(
    switch: &ZoneSwitch,
    question: Vec<u8>,
    src: SocketAddr,
) -> Option<Vec<u8>> {
    let request = match Request::from_bytes(question, src, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            // hickory answers FORMERR where it can read the header; a datagram this broken
            // is dropped, as hickory drops one without a header.
            tracing::debug!(%error, %src, "undecodable DNS question");
            return None;
        }
    };
    let max_size = match &request.edns {
        Some(edns) => edns.max_payload().max(512),
        None => 512,
    };
    let out = Arc::new(Mutex::new(None));
    let handle = Encode {
        max_size,
        out: out.clone(),
    };
    let zone = switch.get();
    let info = switch
        .answer_in::<_, TokioTime>(zone.as_deref(), &request, handle)
        .await;
    let wire = out.lock().unwrap_or_else(PoisonError::into_inner).take()?;
    if let Some(zone) = zone
        && keepable(&request, &zone.origin)
    {
        zone.answers
            .keep(request.as_slice(), &wire, info.response_code);
    }
    Some(wire)
}

/// Whether a datagram's source can be answered (hickory's rule: not port 0, not an
/// unspecified or broadcast address).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && !src.ip().is_unspecified()
        && !matches!(src.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast())
}

/// Whether a receive error leaves the socket usable.
fn recoverable(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused
            | ConnectionReset
            | Interrupted
            | WouldBlock
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
    )
}

/// How often the receive thread looks at the shutdown token while no query comes.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(200);

/// Sends one answer without ever blocking: a full send buffer drops it, as the network
/// may, and the asker retries.
fn send(socket: &StdUdpSocket, wire: &[u8], to: SocketAddr) {
    let sent = SockRef::from(socket).send_to_with_flags(wire, &to.into(), libc::MSG_DONTWAIT);
    if let Err(error) = sent {
        tracing::debug!(%error, %to, "sending a DNS answer failed");
    }
}

/// Receives and answers datagrams on a thread of its own until shutdown; returns when
/// the thread has ended.
///
/// Why a thread: a kept answer is a table lookup and two system calls, and on the shared
/// async workers its latency was that of whatever task ran before it (a status write, a
/// request's instance). A thread blocked in `recvfrom` is woken by the kernel for the
/// datagram itself. First questions still run on the async runtime, as a forwarded one
/// waits on the upstream resolvers.
pub async fn serve(
    socket: StdUdpSocket,
    switch: ZoneSwitch,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(SHUTDOWN_CHECK))?;
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("wharf-dns-udp".into())
        .spawn(move || {
            receive(Arc::new(socket), &switch, &runtime, &shutdown);
            drop(done_tx);
        })?;
    let _ = done_rx.await;
    Ok(())
}

fn receive(
    socket: Arc<StdUdpSocket>,
    switch: &ZoneSwitch,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(512);
    while !shutdown.is_cancelled() {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            // The read timeout, or an ICMP error for an earlier answer (the asker's port
            // was closed): the socket itself is still good.
            Err(error) if recoverable(&error) => continue,
            Err(error) => {
                tracing::error!(%error, "cluster DNS stops answering over UDP");
                return;
            }
        };
        let question = &buf[..n];
        if n < HEADER_LEN || !answerable(src) {
            continue;
        }
        if let Some(rcode) = switch.answer_kept(question, &mut out) {
            // Counted before it is sent, as a first answer is: whoever got it sees it counted.
            switch.count(rcode);
            send(&socket, &out, src);
            continue;
        }
        let (switch, socket, question) = (switch.clone(), socket.clone(), question.to_vec());
        runtime.spawn(async move {
            if let Some(wire) = answer_fresh(&switch, question, src).await {
                send(&socket, &wire, src);
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kept_answers_carry_the_id_of_the_question() {
        let answers = Answers::default();
        let q1 = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0,
        ];
        let mut wire = q1.to_vec();
        wire[2] |= 0x80;
        let mut out = Vec::new();
        assert!(answers.answer(&q1, &mut out).is_none());
        answers.keep(&q1, &wire, ResponseCode::NoError);

        let mut q2 = q1;
        q2[..2].copy_from_slice(&[0xab, 0xcd]);
        assert_eq!(answers.answer(&q2, &mut out), Some(ResponseCode::NoError));
        assert_eq!(&out[..2], &[0xab, 0xcd]);
        assert_eq!(&out[2..], &wire[2..]);

        // Any other byte (here the case of a letter, as with 0x20 randomisation) is
        // another question.
        let mut q3 = q1;
        q3[13] = b'W';
        assert!(answers.answer(&q3, &mut out).is_none());
    }

    fn question(id: u16, name: &str) -> Vec<u8> {
        use hickory_proto::op::{Message, Query};
        use hickory_proto::rr::{Name, RecordType};
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        msg.to_vec().unwrap()
    }

    /// A kept answer is byte for byte what the catalog answers the same question, only
    /// names of the cluster zone are kept, and a new zone starts with none.
    #[tokio::test]
    async fn kept_answers_are_the_catalogs_answers_for_one_zone() {
        let switch = ZoneSwitch::default();
        let zone = || {
            super::super::catalog(
                &super::super::zone::tests::snapshot(1),
                "cluster.local",
                None,
            )
            .unwrap()
        };
        let (catalog, origin) = zone();
        switch.install(catalog, origin);
        let src: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let web = "web.shop.svc.cluster.local.";
        let mut out = Vec::new();
        assert!(switch.answer_kept(&question(1, web), &mut out).is_none());
        let first = answer_fresh(&switch, question(1, web), src).await.unwrap();
        assert_eq!(first[..2], [0, 1]);

        assert_eq!(
            switch.answer_kept(&question(2, web), &mut out),
            Some(ResponseCode::NoError)
        );
        let again = answer_fresh(&switch, question(2, web), src).await.unwrap();
        assert_eq!(out, again);

        // Outside the cluster zone (REFUSED here: no forwarder): answered, never kept.
        let other = answer_fresh(&switch, question(3, "example.com."), src)
            .await
            .unwrap();
        assert_eq!(other[3] & 0x0f, ResponseCode::Refused.low());
        assert!(
            switch
                .answer_kept(&question(4, "example.com."), &mut out)
                .is_none()
        );

        let (catalog, origin) = zone();
        switch.install(catalog, origin);
        assert!(switch.answer_kept(&question(5, web), &mut out).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let answers = Answers::default();
        for i in 0..=MAX_ANSWERS as u32 {
            let mut q = vec![0, 0];
            q.extend_from_slice(&i.to_be_bytes());
            answers.keep(&q, &[0, 0, 0x80], ResponseCode::NXDomain);
        }
        assert!(answers.len() <= MAX_ANSWERS);
        assert!(answers.len() >= 1);
    }
}
