//! A fault-injecting TCP proxy in front of a node's port: its cluster RPC port in the fault
//! tests, its HTTP port for a client in the client tests.
//!
//! In the fault tests every node advertises its proxy's address, so all Raft traffic to node `to`
//! passes through `Proxy(to)`. The proxy sees bytes only (the cluster RPC is mutual TLS: headers
//! and certificates are encrypted), so it tells senders apart by a connection's source address:
//! node `id` makes its RPC connections from [`source_addr`]`(id)`, `127.0.0.<id+1>` (the agent's
//! hidden `--test-rpc-source-addr`; all of 127/8 is loopback on Linux), and a connection from
//! anywhere else is a client's, [`CLIENT`]. Faults apply per directed link `from -> to`:
//!
//! - `Cut`: bytes are swallowed in both directions, as on a link that drops every packet: the
//!   sender's RPCs time out. Connections that lost bytes are closed once the link heals.
//! - `Delay(d)`: every chunk waits `d` before it is passed on.
//! - `Lossy(p)`: each chunk resets the connection with probability `p`.
//! - `DropReplies`: requests get through; the first byte of an answer closes the connection, so
//!   the sender cannot tell whether its request was executed. Over TLS the answer is what the
//!   node sends once the sender has sent its first encrypted record (its last handshake flight,
//!   which the request follows): the handshake before it passes, and the RPC listener sends
//!   nothing between the handshake and its answer (no session tickets).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The sender of a connection from no node's source address: a client of the HTTP API.
pub const CLIENT: u64 = 0;

/// The loopback address node `id`'s RPC connections leave from: `127.0.0.<id+1>`, so that
/// `127.0.0.1`, where everything else comes from, is no node's.
pub fn source_addr(id: u64) -> IpAddr {
    let last = u8::try_from(id + 1)
        .ok()
        .filter(|&b| b < u8::MAX)
        .unwrap_or_else(|| panic!("node id {id} has no source address: ids go up to 253"));
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The node whose [`source_addr`] `ip` is, or [`CLIENT`].
fn sender(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => match v4.octets() {
            [127, 0, 0, last] if last > 1 => u64::from(last) - 1,
            _ => CLIENT,
        },
        IpAddr::V6(_) => CLIENT,
    }
}

/// What happens to traffic on one directed link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    Up,
    Cut,
    Delay(Duration),
    Lossy(f64),
    DropReplies,
}

/// The link rules shared by every proxy.
#[derive(Default)]
pub struct Net {
    rules: Mutex<HashMap<(u64, u64), Link>>,
}

impl Net {
    pub fn link(&self, from: u64, to: u64) -> Link {
        let rules = self.rules.lock().unwrap();
        rules.get(&(from, to)).copied().unwrap_or(Link::Up)
    }

    pub fn set(&self, from: u64, to: u64, link: Link) {
        self.rules.lock().unwrap().insert((from, to), link);
    }

    /// The same rule on every link between `nodes`.
    pub fn set_all(&self, nodes: &[u64], link: Link) {
        for &a in nodes {
            for &b in nodes.iter().filter(|&&b| b != a) {
                self.set(a, b, link);
            }
        }
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Cuts `node` off from `others` in both directions.
    pub fn isolate(&self, node: u64, others: &[u64]) {
        for &o in others.iter().filter(|&&o| o != node) {
            self.set(node, o, Link::Cut);
            self.set(o, node, Link::Cut);
        }
    }
}

/// One proxy: listens on `addr` and forwards to the node's current RPC port.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(to: u64, net: Arc<Net>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (up, count) = (upstream.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                let target = *up.lock().unwrap();
                if let Some(target) = target {
                    let from = sender(peer.ip());
                    tokio::spawn(relay(conn, target, (from, to), net.clone(), count.clone()));
                }
            }
        });
        Proxy {
            addr,
            upstream,
            connections,
            task,
        }
    }

    /// Connections passed on to the node: counted once the sender's first bytes have arrived
    /// and the node accepted the connection. Under `Link::DropReplies` a connection carries one
    /// request (it closes at the first byte of the answer), so this counts requests.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Where the node behind this proxy listens now (it changes only if the node is replaced).
    pub fn set_upstream(&self, target: SocketAddr) {
        *self.upstream.lock().unwrap() = Some(target);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first byte of a TLS connection: a handshake record (the ClientHello).
const TLS_HANDSHAKE: u8 = 22;
/// The content type of an encrypted TLS record (TLS 1.3 encrypts every record after the
/// ClientHello, ServerHello and ChangeCipherSpec as application data).
const TLS_APPLICATION_DATA: u8 = 23;
/// A TLS record header: content type, version, length.
const TLS_HEADER_LEN: usize = 5;

/// Watches the bytes a sender sends for the point after which the node's next bytes are its
/// answer: at once in plain HTTP; over TLS, from the sender's first encrypted record on.
#[derive(Default)]
struct Asked {
    tls: Option<bool>,
    /// The header of the TLS record being read, and how much of its body is still to come.
    header: Vec<u8>,
    body_left: usize,
}

impl Asked {
    /// Whether `chunk`, the sender's next bytes, starts its request (or its last handshake
    /// flight, which the request follows).
    fn starts_in(&mut self, chunk: &[u8]) -> bool {
        let tls = *self
            .tls
            .get_or_insert_with(|| chunk.first() == Some(&TLS_HANDSHAKE));
        if !tls {
            return !chunk.is_empty();
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(rest.len());
                self.body_left -= n;
                rest = &rest[n..];
                continue;
            }
            let n = (TLS_HEADER_LEN - self.header.len()).min(rest.len());
            self.header.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.header.len() == TLS_HEADER_LEN {
                if self.header[0] == TLS_APPLICATION_DATA {
                    return true;
                }
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
            }
        }
        false
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    (from, to): (u64, u64),
    net: Arc<Net>,
    connections: Arc<AtomicUsize>,
) {
    let _ = client.set_nodelay(true);
    // The node sees a connection only once it carries bytes: a count of connections is then one
    // of requests under `DropReplies`.
    let mut first = vec![0u8; 64 * 1024];
    match client.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => first.truncate(n),
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    connections.fetch_add(1, Ordering::SeqCst);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let state = Arc::new(State::default());
    let up = tokio::spawn(pump(
        cr,
        sw,
        first,
        (from, to, false),
        net.clone(),
        state.clone(),
    ));
    let down = tokio::spawn(pump(sr, cw, Vec::new(), (from, to, true), net, state));
    // When either direction ends, end both: the peer sees the connection close.
    let (up_abort, down_abort) = (up.abort_handle(), down.abort_handle());
    tokio::select! {
        _ = up => down_abort.abort(),
        _ = down => up_abort.abort(),
    }
}

/// What both directions of one connection share.
#[derive(Default)]
struct State {
    /// Bytes were lost on it: it is garbage once the link heals.
    poisoned: AtomicBool,
    /// The sender has asked (see [`Asked`]): the node's next bytes are its answer.
    asked: AtomicBool,
}

/// Copies `r` to `w` (after `first`) under the rule for `from -> to`; `reply` is the
/// direction from the node behind the proxy back to the sender.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    first: Vec<u8>,
    (from, to, reply): (u64, u64, bool),
    net: Arc<Net>,
    state: Arc<State>,
) {
    let mut pending = first;
    let mut buf = vec![0u8; 64 * 1024];
    let mut asked = Asked::default();
    loop {
        if !pending.is_empty() {
            match net.link(from, to) {
                Link::Up => {}
                Link::Cut => {
                    state.poisoned.store(true, Ordering::Release);
                    pending.clear();
                }
                Link::Delay(d) => tokio::time::sleep(d).await,
                Link::Lossy(p) => {
                    if rand::thread_rng().gen_bool(p) {
                        return;
                    }
                }
                Link::DropReplies if reply && state.asked.load(Ordering::Acquire) => return,
                Link::DropReplies => {}
            }
            if state.poisoned.load(Ordering::Acquire) {
                pending.clear();
            } else {
                // Marked before the bytes go: the node cannot answer what it has not received.
                if !reply && !state.asked.load(Ordering::Acquire) && asked.starts_in(&pending) {
                    state.asked.store(true, Ordering::Release);
                }
                if w.write_all(&pending).await.is_err() {
                    return;
                }
            }
            pending.clear();
        }
        // A connection that lost bytes is garbage once the link heals: close it then.
        let read = tokio::time::timeout(Duration::from_millis(200), r.read(&mut buf)).await;
        if state.poisoned.load(Ordering::Acquire) && net.link(from, to) != Link::Cut {
            return;
        }
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
        }
    }
}
