//! DNS over UDP on threads of its own, a batch of datagrams per system call.
//!
//! Each worker is an OS thread that reads up to [`BATCH`] queries with one `recvmmsg(2)`,
//! answers them, and sends the answers with one `sendmmsg(2)`, as Knot DNS does: a loaded server
//! makes two system calls per batch instead of two per query, with no readiness events and no
//! task wake-ups in between. The socket is blocking; `recvmmsg` waits for the first datagram
//! only (`MSG_WAITFORONE`) and takes whatever else has arrived by then.
//!
//! The workers are not on the async runtime, so nothing that runs there (registry writes, Raft,
//! the HTTP API) queues in front of a query: the kernel shares the CPU between the workers and
//! the runtime's threads. Only a query for a name outside the zone goes to the runtime, which
//! relays it upstream and sends the answer itself.
//!
//! Buffers are made once per worker: queries are read into fixed slots and answered into reply
//! buffers that keep their capacity, so the loop allocates nothing per query.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{clamp_relayed, forward, handle, servfail, Action, Shared, UDP_READ_BUFFER};
use crate::wire;

/// Datagrams read, and answers sent, per system call (Knot's default is 64). A batch is
/// answered before the next is read, so a larger one saves little and delays the next batch.
pub(super) const BATCH: usize = 32;
/// How long an idle worker waits for a datagram before it looks whether the server is stopping:
/// what shutdown waits at most for the workers.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Reply buffers start at the largest UDP answer we send, so they never grow on the query path.
const REPLY_CAPACITY: usize = wire::MAX_UDP_PAYLOAD as usize;

/// Starts `workers` threads serving `socket` until `stop`. Each returned receiver completes
/// (its sender dropped) when its thread has returned. Fails when not even one thread starts.
pub(super) fn spawn(
    socket: Arc<UdpSocket>,
    shared: &Arc<Shared>,
    workers: usize,
    stop: &CancellationToken,
) -> std::io::Result<Vec<oneshot::Receiver<()>>> {
    // Blocking: a worker sleeps in recvmmsg. The time-out lets it notice `stop`.
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_CHECK))?;
    let runtime = Handle::current();
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = oneshot::channel::<()>();
        let worker = Worker {
            socket: socket.clone(),
            shared: shared.clone(),
            runtime: runtime.clone(),
        };
        let stop = stop.clone();
        let started = std::thread::Builder::new()
            .name(format!("cairn-dns-udp-{i}"))
            .spawn(move || {
                worker.run(&stop);
                drop(tx);
            });
        match started {
            Ok(_) => done.push(rx),
            Err(e) if done.is_empty() => return Err(e),
            Err(e) => {
                tracing::warn!("DNS over UDP on {i} of {workers} threads: {e}");
                break;
            }
        }
    }
    Ok(done)
}

/// What a worker shares with the rest of the server.
struct Worker {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    runtime: Handle,
}

/// The answers of one batch, in the order they go out.
struct Replies {
    /// Reply buffers; the first `clients.len()` hold this batch's answers.
    bufs: Vec<Vec<u8>>,
    /// The client of each answer.
    clients: Vec<Option<SockaddrStorage>>,
}

impl Worker {
    fn run(self, stop: &CancellationToken) {
        let fd = self.socket.as_raw_fd();
        let mut queries = Box::new([[0u8; UDP_READ_BUFFER]; BATCH]);
        let mut replies = Replies {
            bufs: (0..BATCH)
                .map(|_| Vec::with_capacity(REPLY_CAPACITY))
                .collect(),
            clients: Vec::with_capacity(BATCH),
        };
        // The kernel's message headers, made once and pointed at the buffers on each call.
        let mut received = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut sent = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        while !stop.is_cancelled() {
            let mut iovs = queries.each_mut().map(|q| [IoSliceMut::new(q)]);
            let msgs = match socket::recvmmsg(
                fd,
                &mut received,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => msgs,
                // The read time-out (time to look at `stop`), or a signal.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep serving.
                    tracing::debug!("DNS UDP receive: {e}");
                    continue;
                }
            };
            replies.clients.clear();
            for msg in msgs {
                let Some(peer) = msg.address.as_ref().and_then(socket_addr) else {
                    continue;
                };
                // Empty for an empty datagram, which the answer path drops.
                let request = msg.iovs().next().unwrap_or_default();
                let out = &mut replies.bufs[replies.clients.len()];
                match handle(&self.shared, request, peer.ip(), true, out) {
                    Action::Reply => replies.clients.push(msg.address),
                    Action::Forward { limit } => self.forward(request, peer, limit),
                    Action::Nothing => {}
                }
            }
            send_batch(fd, &mut sent, &replies);
        }
    }

    /// Relays `request` to the upstreams on the runtime, which sends the answer.
    fn forward(&self, request: &[u8], peer: SocketAddr, limit: usize) {
        let query = request.to_vec();
        let Ok(permit) = self.shared.forwards.clone().try_acquire_owned() else {
            send_one(&self.socket, &servfail(&query), peer);
            return;
        };
        let (socket, shared) = (self.socket.clone(), self.shared.clone());
        self.runtime.spawn(async move {
            let _permit = permit;
            let reply = forward(&shared.config, &query, false).await;
            let reply = clamp_relayed(&shared.stats, &query, reply, limit);
            send_one(&socket, &reply, peer);
        });
    }
}

/// Sends a batch's answers with as few `sendmmsg` calls as the kernel allows. An answer the
/// kernel refuses (an unroutable client) is skipped and the rest still go.
fn send_batch(fd: RawFd, headers: &mut MultiHeaders<SockaddrStorage>, replies: &Replies) {
    let total = replies.clients.len();
    let slices: [[IoSlice<'_>; 1]; BATCH] =
        std::array::from_fn(|i| [IoSlice::new(&replies.bufs[i])]);
    let mut next = 0;
    while next < total {
        let none: [socket::ControlMessage<'_>; 0] = [];
        match socket::sendmmsg(
            fd,
            headers,
            &slices[next..total],
            &replies.clients[next..],
            none,
            MsgFlags::empty(),
        ) {
            // At least one went (sendmmsg fails rather than send none).
            Ok(sent) => next += sent.count().max(1),
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(client = ?replies.clients[next], "DNS UDP send: {e}");
                next += 1;
            }
        }
    }
}

/// Sends one datagram without blocking (from the runtime): a client whose answer does not fit in
/// the socket's buffer at once goes without, as with any loss.
fn send_one(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    let to = SockaddrStorage::from(peer);
    if let Err(e) = socket::sendto(socket.as_raw_fd(), reply, &to, MsgFlags::MSG_DONTWAIT) {
        tracing::debug!(%peer, "DNS UDP send: {e}");
    }
}

/// The client's address; `None` for a family UDP over IP cannot have.
fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddr::from(*v4)),
        (_, Some(v6)) => Some(SocketAddr::from(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cairn_registry::command::{Command, Op};
    use cairn_registry::model::validate_registration;
    use cairn_registry::{Dirty, Registry};
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::answer::{Zone, ZoneConfig};
    use crate::server::{Answerer, Listeners, ServerConfig};

    fn registry_with_web(instances: u32) -> Arc<Registry> {
        let registry = Arc::new(Registry::default());
        for n in 1..=instances {
            let body = serde_json::json!({"address": format!("10.0.0.{n}"), "port": 80});
            let spec =
                validate_registration(&format!("i{n}"), &serde_json::from_value(body).unwrap())
                    .unwrap();
            let cmd = Command {
                by: Vec::new(),
                time_ms: 1000,
                ops: vec![Op::Register {
                    service: "web".into(),
                    instance: spec,
                    health: None,
                }],
            };
            registry.apply(u64::from(n), &cmd, &mut Dirty::default());
        }
        registry
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(hickory_proto::op::Query::query(
            std::str::FromStr::from_str(name).unwrap(),
            rtype,
        ));
        m.to_vec().unwrap()
    }

    /// More queries than a batch holds, sent back to back from several sockets with malformed
    /// datagrams among them, in rounds: every query is answered once, to the socket that asked,
    /// read back by hickory-proto; then the server stops within its bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_answered_once_per_query_through_batches_and_garbage() {
        let zone = Zone::new(
            ZoneConfig::default(),
            registry_with_web(3),
            Arc::new(Vec::new),
        )
        .unwrap();
        let config = ServerConfig {
            udp_workers: 2,
            ..ServerConfig::default()
        };
        let answerer = Answerer::new(Arc::new(zone), config);
        let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listeners.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(listeners.serve(
            answerer,
            cairn_tls::ConnStats::new("dns_tcp"),
            stop.clone(),
        ));

        // Rounds of more queries than a batch holds, in flight at once; bounded so that the
        // sockets' default buffers hold a round whatever the scheduler does (UDP drops what
        // does not fit, and a loaded machine may leave the workers waiting a while).
        const CLIENTS: u16 = 4;
        const PER_ROUND: u16 = 12;
        const ROUNDS: u16 = 4;
        // More than a batch in flight in each round.
        const { assert!(PER_ROUND as usize * CLIENTS as usize > BATCH) };
        let clients: Vec<UdpSocket> = (0..CLIENTS)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            })
            .collect();
        let clients = Arc::new(clients);
        let mut seen = BTreeSet::new();
        for round in 0..ROUNDS {
            for n in 0..PER_ROUND {
                for (c, client) in clients.iter().enumerate() {
                    let id = (round * PER_ROUND + n) * CLIENTS + c as u16;
                    let rtype = if id.is_multiple_of(2) {
                        RecordType::A
                    } else {
                        RecordType::SRV
                    };
                    client
                        .send_to(&query(id, "web.service.cairn.", rtype), addr)
                        .unwrap();
                    if id.is_multiple_of(7) {
                        // Too short for a header (dropped), and a response (never answered).
                        client.send_to(&[1, 2, 3], addr).unwrap();
                        let mut response = query(0xffff, "web.service.cairn.", rtype);
                        response[2] |= 0x80;
                        client.send_to(&response, addr).unwrap();
                    }
                }
            }
            let readers = clients.clone();
            let ids = tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 4096];
                let mut ids = Vec::new();
                for (c, client) in readers.iter().enumerate() {
                    for _ in 0..PER_ROUND {
                        let n = client.recv(&mut buf).expect("every query is answered");
                        let m = Message::from_vec(&buf[..n]).unwrap();
                        let id = m.metadata.id;
                        assert_eq!(usize::from(id % CLIENTS), c, "answered to the asker");
                        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                        assert_eq!(m.answers.len(), 3, "query {id}");
                        let srv = !id.is_multiple_of(2);
                        let glue = if srv { 3 } else { 0 };
                        assert_eq!(m.additionals.len(), glue, "query {id}");
                        ids.push(id);
                    }
                }
                ids
            })
            .await
            .unwrap();
            for id in ids {
                assert!(seen.insert(id), "query {id} answered twice");
            }
        }
        assert_eq!(seen.len(), usize::from(ROUNDS * PER_ROUND * CLIENTS));
        stop.cancel();
        tokio::time::timeout(STOP_CHECK * 10, server)
            .await
            .expect("the workers stop within their bound")
            .unwrap();
    }
}
