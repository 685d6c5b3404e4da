//! A fault-injecting TCP proxy in front of a node's port: its cluster RPC port in the fault
//! tests, its HTTP port for a client in the client tests.
//!
//! In the fault tests every node advertises its proxy's address, so all Raft traffic to node `to`
//! passes through `Proxy(to)`. The sender of a connection is read from the `x-cairn-from` header
//! of its first HTTP request (every cluster RPC carries it, and a connection only ever carries one
//! sender's requests; a client sends none, and is [`CLIENT`]), so faults apply per directed link
//! `from -> to`:
//!
//! - `Cut`: bytes are swallowed in both directions, as on a link that drops every packet: the
//!   sender's RPCs time out. Connections that lost bytes are closed once the link heals.
//! - `Delay(d)`: every chunk waits `d` before it is passed on.
//! - `Lossy(p)`: each chunk resets the connection with probability `p`.
//! - `DropReplies`: requests get through; the first byte of an answer closes the connection, so
//!   the sender cannot tell whether its request was executed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The sender of a connection whose first request has no `x-cairn-from` header: a client of the
/// HTTP API, not a node.
pub const CLIENT: u64 = 0;

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
            while let Ok((conn, _)) = listener.accept().await {
                let target = *up.lock().unwrap();
                if let Some(target) = target {
                    tokio::spawn(relay(conn, target, to, net.clone(), count.clone()));
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

    /// Connections passed on to the node: counted once the first request's head has arrived
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

/// The sender named by the first request's `x-cairn-from` header, once the head is complete.
fn sender(head: &[u8]) -> Option<Option<u64>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&head[..end]);
    Some(text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-cairn-from")
            .then(|| value.trim().parse().ok())
            .flatten()
    }))
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    to: u64,
    net: Arc<Net>,
    connections: Arc<AtomicUsize>,
) {
    let _ = client.set_nodelay(true);
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let from = loop {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(from) = sender(&head) {
            break from.unwrap_or(0);
        }
        if head.len() > 64 * 1024 {
            return;
        }
    };
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    connections.fetch_add(1, Ordering::SeqCst);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let poisoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up = tokio::spawn(pump(
        cr,
        sw,
        head,
        (from, to, false),
        net.clone(),
        poisoned.clone(),
    ));
    let down = tokio::spawn(pump(sr, cw, Vec::new(), (from, to, true), net, poisoned));
    // When either direction ends, end both: the peer sees the connection close.
    let (up_abort, down_abort) = (up.abort_handle(), down.abort_handle());
    tokio::select! {
        _ = up => down_abort.abort(),
        _ = down => up_abort.abort(),
    }
}

/// Copies `r` to `w` (after `first`) under the rule for `from -> to`; `reply` is the
/// direction from the node behind the proxy back to the sender.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    first: Vec<u8>,
    (from, to, reply): (u64, u64, bool),
    net: Arc<Net>,
    poisoned: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut pending = first;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !pending.is_empty() {
            match net.link(from, to) {
                Link::Up => {}
                Link::Cut => {
                    poisoned.store(true, Ordering::Release);
                    pending.clear();
                }
                Link::Delay(d) => tokio::time::sleep(d).await,
                Link::Lossy(p) => {
                    if rand::thread_rng().gen_bool(p) {
                        return;
                    }
                }
                Link::DropReplies if reply => return,
                Link::DropReplies => {}
            }
            if poisoned.load(Ordering::Acquire) {
                pending.clear();
            } else if w.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
        }
        // A connection that lost bytes is garbage once the link heals: close it then.
        let read = tokio::time::timeout(Duration::from_millis(200), r.read(&mut buf)).await;
        if poisoned.load(Ordering::Acquire) && net.link(from, to) != Link::Cut {
            return;
        }
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
        }
    }
}
