//! Probes of active checks: HTTP/1.1 requests on pooled keep-alive connections, and TCP
//! connects.
//!
//! An HTTP check's request is rendered once, when the check starts ([`HttpProbe::new`]); a
//! probe writes those bytes on an idle connection to the same target when the [`Pool`] has one
//! (or on a new one), reads the status line, the head and at most [`MAX_OUTPUT_LEN`] bytes of
//! the body, and hands the connection back when the response left it reusable. Nothing is
//! allocated per probe beyond the probe's own future; the output text is built only when a
//! status changes ([`Outcome::output`]).
//!
//! Servers close idle connections when they please (Apache after 5 s, nginx after 75 s). A
//! pooled connection is looked at before it is used (a closed one is dropped), and a request on
//! a reused connection that ends before any byte of a response is sent again once on a new
//! connection, as browsers and Go's client do: a server's idle close is never a failed check.
//!
//! Every probe resolves its target and checks every address against [`TargetPolicy`] first, so
//! a name that moved into a denied range is refused even while a connection to its old address
//! sits in the pool; a pooled connection is used only if its peer still passes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use cairn_registry::model::{CHECK_METHODS, MAX_OUTPUT_LEN};
use cairn_registry::HealthStatus;
use cairn_tls::rustls;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::check_targets::{self, TargetError, TargetPolicy};

/// The longest response head read (status line and headers); a longer one is a bad response.
const MAX_HEAD_LEN: usize = 64 * 1024;
/// Headers parsed in a response head; more is a bad response.
const MAX_HEADERS: usize = 100;
/// Idle connections kept per target; more are closed when they come back. Probes of one target
/// rarely overlap, so a few cover even thousands of checks of one server.
const MAX_IDLE_PER_TARGET: usize = 16;
/// An idle connection unused this long is closed (reqwest's and hyper's default).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The read buffer a connection keeps, enough for a response head and a short body.
const READ_CHUNK: usize = 8 * 1024;

const USER_AGENT: &str = concat!("cairn-health-check/", env!("CARGO_PKG_VERSION"));

/// What a probe found: a status, with what its output is made from.
#[derive(Debug)]
pub enum Outcome {
    /// An HTTP response: its status code and, when the check keeps it, the start of the body.
    Http { code: u16, body: Option<Vec<u8>> },
    /// A TCP connection was made.
    Connected,
    /// No answer to judge: why, in a few words (or the policy rule that refused the target).
    Failed(Cow<'static, str>),
}

impl Outcome {
    /// The health this outcome means: 2xx passing, 429 warning, anything else critical.
    pub fn health(&self) -> HealthStatus {
        match self {
            Outcome::Http { code, .. } if (200..300).contains(code) => HealthStatus::Passing,
            Outcome::Http { code: 429, .. } => HealthStatus::Warning,
            Outcome::Connected => HealthStatus::Passing,
            _ => HealthStatus::Critical,
        }
    }

    /// The check's output: `what` (`HTTP GET <url>`, `TCP <target>`), then the status line
    /// (and the body, when kept) or the failure, at most [`MAX_OUTPUT_LEN`] bytes.
    pub fn output(&self, what: &str) -> String {
        let mut out = match self {
            Outcome::Http { code, body } => {
                let status = match reqwest::StatusCode::from_u16(*code) {
                    Ok(s) => s.to_string(),
                    Err(_) => format!("{code} <unknown status code>"),
                };
                let mut out = format!("{what}: {status}");
                if let Some(body) = body {
                    out.push('\n');
                    out.push_str(&String::from_utf8_lossy(body));
                }
                out
            }
            Outcome::Connected => format!("{what}: connected"),
            Outcome::Failed(why) => format!("{what}: {why}"),
        };
        cut(&mut out);
        out
    }
}

/// Output is kept to [`MAX_OUTPUT_LEN`] bytes, cut on a character boundary.
fn cut(s: &mut String) {
    if s.len() > MAX_OUTPUT_LEN {
        let mut end = MAX_OUTPUT_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The class of a failed connection: what a health check needs to show, and no more.
pub fn io_failure(e: &io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused",
        TimedOut => "timed out",
        HostUnreachable | NetworkUnreachable | AddrNotAvailable => "unreachable",
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "connection lost",
        _ => "connection failed",
    }
}

fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Failed(format!("timed out after {timeout:?}").into())
}

fn target_failure(e: TargetError) -> Outcome {
    Outcome::Failed(e.to_string().into())
}

/// Resolves `host` within `deadline` and checks every address against the policy.
async fn resolve(
    policy: &TargetPolicy,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, Outcome> {
    match tokio::time::timeout_at(deadline, policy.resolve(host, port)).await {
        Err(_) => Err(Outcome::Failed(
            format!("timed out resolving {host}").into(),
        )),
        Ok(Err(e)) => Err(target_failure(e)),
        Ok(Ok(addrs)) => Ok(addrs),
    }
}

/// A TCP check's probe: connects to the target's addresses in turn; the first connection made
/// passes. The connection is closed at once.
pub async fn probe_tcp(policy: &TargetPolicy, target: &str, timeout: Duration) -> Outcome {
    let Some((host, port)) = check_targets::tcp_target(target) else {
        return Outcome::Failed("not host:port".into());
    };
    let deadline = Instant::now() + timeout;
    let addrs = match resolve(policy, &host, port, deadline).await {
        Ok(addrs) => addrs,
        Err(failed) => return failed,
    };
    // The addresses just checked, not the name again: nothing can swap them between the check
    // and the connection.
    let mut failure = "unreachable";
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Outcome::Connected,
            Ok(Err(e)) => failure = io_failure(&e),
            Err(_) => return timed_out(timeout),
        }
    }
    Outcome::Failed(failure.into())
}

/// Whether an HTTPS connection verifies the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tls {
    Verify,
    /// `tls_skip_verify`: any certificate is accepted.
    SkipVerify,
}

/// Which connections can serve a request: the same scheme, certificate rule, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    tls: Option<Tls>,
    host: String,
    port: u16,
}

/// An HTTP check, ready to probe: its request rendered once.
#[derive(Debug)]
pub struct HttpProbe {
    /// `HTTP <method> <url>`, the start of every output.
    pub what: String,
    key: PoolKey,
    /// The address, when the URL names one: nothing to resolve.
    literal: Option<SocketAddr>,
    /// The name TLS verifies, for `https`.
    server_name: Option<ServerName<'static>>,
    request: Box<[u8]>,
    /// A HEAD request: the response has no body, whatever its headers say.
    head: bool,
    output_body: bool,
}

impl HttpProbe {
    /// Renders the request; `Err` is a definition no probe can send, and why (the check stays
    /// critical with that output).
    pub fn new(
        url: &str,
        method: &str,
        headers: &std::collections::BTreeMap<String, String>,
        tls_skip_verify: bool,
        output_body: bool,
    ) -> Result<HttpProbe, String> {
        let what = format!("HTTP {method} {url}");
        let failed = |why: String| why;
        // Stored before the method rule existed, or forwarded by an older node.
        if !CHECK_METHODS.contains(&method) {
            return Err(failed(format!(
                "the method is not one of {}",
                CHECK_METHODS.join(", ")
            )));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| failed("not a URL".into()))?;
        let tls = match parsed.scheme() {
            "http" => None,
            "https" => Some(if tls_skip_verify {
                Tls::SkipVerify
            } else {
                Tls::Verify
            }),
            _ => return Err(failed("not a URL".into())),
        };
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return Err(failed("not a URL".into()));
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let literal = bare
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        let server_name = match tls {
            None => None,
            Some(_) => Some(
                ServerName::try_from(bare.to_owned()).map_err(|_| failed("not a URL".into()))?,
            ),
        };
        let target = match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let has = |name: &str| headers.keys().any(|k| k.eq_ignore_ascii_case(name));
        let mut request = format!("{method} {target} HTTP/1.1\r\n");
        let mut line = |name: &str, value: &str| {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        };
        if !has("host") {
            match parsed.port() {
                Some(port) => line("Host", &format!("{host}:{port}")),
                None => line("Host", host),
            }
        }
        if !has("user-agent") {
            line("User-Agent", USER_AGENT);
        }
        if !has("accept") {
            line("Accept", "*/*");
        }
        // User and password in the URL are sent as basic authentication, never on the wire
        // in the request line.
        if (!parsed.username().is_empty() || parsed.password().is_some()) && !has("authorization") {
            let user = percent_decode(parsed.username());
            let password = parsed.password().map(percent_decode).unwrap_or_default();
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            line("Authorization", &format!("Basic {token}"));
        }
        for (name, value) in headers {
            // The request has no body: it says so itself, whatever the check's headers claim.
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            // Registration allows letters, digits and `-` in names, and visible ASCII and tabs
            // in values; a record from elsewhere must not smuggle a line break in.
            let name_ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let value_ok = value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            if !name_ok || !value_ok {
                return Err(failed(format!("header {name:?} is not valid")));
            }
            line(name, value);
        }
        if method == "POST" || method == "PUT" {
            line("Content-Length", "0");
        }
        request.push_str("\r\n");
        Ok(HttpProbe {
            what,
            key: PoolKey {
                tls,
                host: host.to_owned(),
                port,
            },
            literal,
            server_name,
            request: request.into_bytes().into_boxed_slice(),
            head: method == "HEAD",
            output_body,
        })
    }

    /// The pool key of the connections this probe can use.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// One probe within `timeout`, on `idle` (a pooled connection to this target) when given.
    /// Returns the outcome and the connection when it can serve another request.
    pub async fn probe(
        &self,
        connector: &Connector,
        policy: &TargetPolicy,
        idle: Option<Conn>,
        timeout: Duration,
    ) -> (Outcome, Option<Conn>) {
        let deadline = Instant::now() + timeout;
        // Every address is checked by range and port before any connection is used; this also
        // catches a name that moved into a denied range while a pooled connection to its old
        // address is open.
        let resolved;
        let addrs = match &self.literal {
            Some(addr) => match policy.check(*addr) {
                Ok(()) => std::slice::from_ref(addr),
                Err(refused) => return (Outcome::Failed(refused.to_string().into()), None),
            },
            None => match resolve(policy, &self.key.host, self.key.port, deadline).await {
                Ok(addrs) => {
                    resolved = addrs;
                    &resolved[..]
                }
                Err(failed) => return (failed, None),
            },
        };
        let idle = idle.filter(|c| policy.check(c.peer).is_ok());
        match tokio::time::timeout_at(deadline, self.exchange(connector, addrs, idle)).await {
            Ok(Ok((outcome, conn))) => (outcome, conn),
            Ok(Err(failure)) => (Outcome::Failed(failure.into()), None),
            Err(_) => (timed_out(timeout), None),
        }
    }

    async fn exchange(
        &self,
        connector: &Connector,
        addrs: &[SocketAddr],
        idle: Option<Conn>,
    ) -> Result<(Outcome, Option<Conn>), &'static str> {
        if let Some(mut conn) = idle {
            match self.request(&mut conn).await {
                Ok(response) => return Ok(self.finish(response, conn)),
                // The server closed the connection while it sat idle (or just as it was
                // reused): it never saw this request. Once more, on a new connection.
                Err(Failure::Closed) => {}
                Err(Failure::Other(why)) => return Err(why),
            }
        }
        let mut conn = connector.connect(self, addrs).await?;
        match self.request(&mut conn).await {
            Ok(response) => Ok(self.finish(response, conn)),
            Err(Failure::Closed) => Err("connection lost"),
            Err(Failure::Other(why)) => Err(why),
        }
    }

    fn finish(&self, response: Response, conn: Conn) -> (Outcome, Option<Conn>) {
        let outcome = Outcome::Http {
            code: response.code,
            body: self.output_body.then_some(response.body),
        };
        (outcome, response.reusable.then_some(conn))
    }

    /// Writes the request and reads the response on `conn`.
    async fn request(&self, conn: &mut Conn) -> Result<Response, Failure> {
        conn.buf.clear();
        if let Err(e) = conn.io.write_all(&self.request).await {
            return Err(closed_or(&e));
        }
        if let Err(e) = conn.io.flush().await {
            return Err(closed_or(&e));
        }
        read_response(conn, self.head, self.output_body).await
    }
}

/// `%XX` escapes of a URL's user and password, decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request failed: the connection was closed before any byte of a response (a stale
/// pooled connection, worth one more try), or anything else.
enum Failure {
    Closed,
    Other(&'static str),
}

fn closed_or(e: &io::Error) -> Failure {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Failure::Closed,
        _ => Failure::Other(io_failure(e)),
    }
}

struct Response {
    code: u16,
    /// The start of the body, when the check keeps it.
    body: Vec<u8>,
    /// The response was read to its end and the server keeps the connection open.
    reusable: bool,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// Reads one response (skipping interim 1xx ones) and the start of its body: at most
/// [`MAX_OUTPUT_LEN`] bytes, as much as the output can show. The connection is reusable only
/// when the whole body was read.
async fn read_response(
    conn: &mut Conn,
    head_request: bool,
    keep_body: bool,
) -> Result<Response, Failure> {
    let mut got_any = false;
    loop {
        // The head.
        let (code, framing, keep_alive, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&conn.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = res.code.unwrap_or(0);
                    if code < 100 {
                        return Err(Failure::Other("request failed"));
                    }
                    let (framing, keep_alive) =
                        framing(&res, head_request).ok_or(Failure::Other("request failed"))?;
                    break (code, framing, keep_alive, len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(Failure::Other("request failed")),
            }
            if conn.buf.len() >= MAX_HEAD_LEN {
                return Err(Failure::Other("request failed"));
            }
            match conn.fill().await {
                Ok(0) if !got_any => return Err(Failure::Closed),
                Ok(0) => return Err(Failure::Other("connection lost")),
                Ok(_) => got_any = true,
                Err(e) if !got_any => return Err(closed_or(&e)),
                Err(e) => return Err(Failure::Other(io_failure(&e))),
            }
        };
        conn.buf.drain(..head_len);
        if (100..200).contains(&code) && code != 101 {
            // 100 Continue and other interim responses: the final one follows.
            continue;
        }
        let mut body = Vec::new();
        let complete = read_body(conn, framing, &mut body, keep_body)
            .await
            .map_err(Failure::Other)?;
        if !keep_body {
            body = Vec::new();
        }
        return Ok(Response {
            code,
            body,
            reusable: complete && keep_alive && code != 101,
        });
    }
}

/// How the body ends and whether the server keeps the connection; `None` for a response whose
/// framing cannot be trusted (conflicting lengths).
fn framing(res: &httparse::Response<'_, '_>, head_request: bool) -> Option<(Framing, bool)> {
    let code = res.code.unwrap_or(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = res.version != Some(1);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok()?.trim();
            let n: u64 = v.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = std::str::from_utf8(h.value).ok()?;
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                // Another coding last: the body ends with the connection.
                close = true;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).unwrap_or("");
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                close = true;
            } else if res.version == Some(0)
                && v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
            {
                close = false;
            }
        }
    }
    let framing = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::Close
    };
    Some((framing, !close))
}

/// Reads the body, keeping its first [`MAX_OUTPUT_LEN`] bytes in `body` when `keep`, and stops
/// once that much was read (as much as an output shows; a server that hangs after the head
/// still times out). Answers whether the body was read to its end.
async fn read_body(
    conn: &mut Conn,
    framing: Framing,
    body: &mut Vec<u8>,
    keep: bool,
) -> Result<bool, &'static str> {
    // Body bytes read, kept or not.
    let mut read = 0usize;
    let mut chunks = Chunked::default();
    loop {
        let (used, done) = match framing {
            Framing::Empty => return Ok(true),
            Framing::Length(len) => {
                let left = usize::try_from(len).unwrap_or(usize::MAX) - read;
                let n = conn.buf.len().min(left);
                keep_part(body, keep, &conn.buf[..n]);
                read += n;
                (n, read as u64 == len)
            }
            Framing::Close => {
                keep_part(body, keep, &conn.buf);
                read += conn.buf.len();
                (conn.buf.len(), false)
            }
            Framing::Chunked => chunks.feed(&conn.buf, &mut |data: &[u8]| {
                keep_part(body, keep, data);
                read += data.len();
            })?,
        };
        conn.buf.drain(..used);
        if done {
            return Ok(true);
        }
        if read >= MAX_OUTPUT_LEN {
            return Ok(false);
        }
        match conn.fill().await {
            Ok(0) if framing == Framing::Close => return Ok(false),
            Ok(0) => return Err("bad response body"),
            Ok(_) => {}
            Err(e) => return Err(io_failure(&e)),
        }
    }
}

fn keep_part(body: &mut Vec<u8>, keep: bool, data: &[u8]) {
    if keep {
        let room = MAX_OUTPUT_LEN.saturating_sub(body.len());
        body.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A chunked body's decoder, fed what has arrived so far.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk's size line (hex digits, then extensions up to the line's end).
    #[default]
    Size,
    /// `size` bytes of data to come, then CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailer lines up to an empty one.
    Trailer,
}

/// The longest chunk-size line (size, extensions), and the longest trailer line.
const MAX_CHUNK_LINE: usize = 4096;

impl Chunked {
    /// Consumes what it can of `buf`, handing data to `sink`; answers (bytes used, done).
    fn feed(
        &mut self,
        buf: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, bool), &'static str> {
        let bad = "bad response body";
        let mut at = 0;
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = find_crlf(&buf[at..]) else {
                        if buf.len() - at > MAX_CHUNK_LINE {
                            return Err(bad);
                        }
                        return Ok((at, false));
                    };
                    let line = &buf[at..at + end];
                    let hex_len = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    if hex_len == 0 || hex_len > 16 {
                        return Err(bad);
                    }
                    let hex = std::str::from_utf8(&line[..hex_len]).map_err(|_| bad)?;
                    let size = u64::from_str_radix(hex, 16).map_err(|_| bad)?;
                    at += end + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let avail = buf.len() - at;
                    if avail == 0 {
                        return Ok((at, false));
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(avail);
                    sink(&buf[at..at + n]);
                    at += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() - at < 2 {
                        return Ok((at, false));
                    }
                    if &buf[at..at + 2] != b"\r\n" {
                        return Err(bad);
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(end) = find_crlf(&buf[at..]) else {
                        if buf.len() - at > MAX_CHUNK_LINE {
                            return Err(bad);
                        }
                        return Ok((at, false));
                    };
                    at += end + 2;
                    if end == 0 {
                        return Ok((at, true));
                    }
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A connection to a check target, plain or TLS, with its read buffer.
pub struct Conn {
    io: Stream,
    peer: SocketAddr,
    buf: Vec<u8>,
    idle_since: Instant,
}

impl Conn {
    /// Reads more of the response into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Whether the pooled connection can take another request: idle for less than
    /// [`POOL_IDLE_TIMEOUT`] and still open, with nothing unread waiting (a server's close
    /// arrives as the end of the stream, a TLS close as a record).
    fn usable_from_pool(&self) -> bool {
        if self.idle_since.elapsed() >= POOL_IDLE_TIMEOUT {
            return false;
        }
        let tcp = self.io.tcp();
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

/// A probe's connection: plain TCP, or TLS for `https`.
type Stream = cairn_tls::MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens connections: TCP, and TLS for `https` (public roots and `--check-ca-file`, or any
/// certificate for `tls_skip_verify`).
pub struct Connector {
    verify: tokio_rustls::TlsConnector,
    skip_verify: tokio_rustls::TlsConnector,
}

impl Connector {
    /// `extra_roots`: CA certificates trusted besides the public roots (`--check-ca-file`).
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> Result<Connector, rustls::Error> {
        let provider = cairn_tls::config::provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for root in extra_roots {
            roots.add(root.clone())?;
        }
        let mut verify = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        verify.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut skip = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        skip.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector {
            verify: tokio_rustls::TlsConnector::from(Arc::new(verify)),
            skip_verify: tokio_rustls::TlsConnector::from(Arc::new(skip)),
        })
    }

    /// A new connection to the first of `addrs` that accepts one.
    async fn connect(&self, probe: &HttpProbe, addrs: &[SocketAddr]) -> Result<Conn, &'static str> {
        let mut failure = "unreachable";
        for &addr in addrs {
            let tcp = match TcpStream::connect(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    failure = io_failure(&e);
                    continue;
                }
            };
            // The request goes out in one write; do not hold it back.
            let _ = tcp.set_nodelay(true);
            let io = match (probe.key.tls, &probe.server_name) {
                (None, _) => Stream::Plain(tcp),
                (Some(tls), Some(name)) => {
                    let connector = match tls {
                        Tls::Verify => &self.verify,
                        Tls::SkipVerify => &self.skip_verify,
                    };
                    match connector.connect(name.clone(), tcp).await {
                        Ok(s) => Stream::Tls(Box::new(s)),
                        Err(e) => return Err(io_failure(&e)),
                    }
                }
                (Some(_), None) => return Err("connection failed"),
            };
            return Ok(Conn {
                io,
                peer: addr,
                buf: Vec::with_capacity(READ_CHUNK),
                idle_since: Instant::now(),
            });
        }
        Err(failure)
    }
}

/// `tls_skip_verify`: every certificate is accepted, as with reqwest's
/// `danger_accept_invalid_certs`; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Idle keep-alive connections by target. Owned by the one task that runs the probes, so it
/// needs no lock: a probe takes a connection out and gives it back when done.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<PoolKey, Vec<Conn>>,
}

impl Pool {
    /// The most recently used open connection to `key`, if any; closed ones are dropped.
    pub fn take(&mut self, key: &PoolKey) -> Option<Conn> {
        let list = self.idle.get_mut(key)?;
        let mut found = None;
        while let Some(conn) = list.pop() {
            if conn.usable_from_pool() {
                found = Some(conn);
                break;
            }
        }
        if list.is_empty() {
            self.idle.remove(key);
        }
        found
    }

    /// Keeps `conn` for the next probe of `key` (closed when the target has enough idle ones).
    pub fn put(&mut self, key: &PoolKey, mut conn: Conn) {
        conn.idle_since = Instant::now();
        match self.idle.get_mut(key) {
            Some(list) if list.len() >= MAX_IDLE_PER_TARGET => {}
            Some(list) => list.push(conn),
            None => {
                self.idle.insert(key.clone(), vec![conn]);
            }
        }
    }

    /// Closes connections idle for longer than [`POOL_IDLE_TIMEOUT`] or closed by their server.
    pub fn sweep(&mut self) {
        self.idle.retain(|_, list| {
            list.retain(Conn::usable_from_pool);
            !list.is_empty()
        });
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// How the test server treats a connection after answering.
    #[derive(Clone, Copy)]
    enum After {
        /// Keeps it open for more requests.
        KeepAlive,
        /// Closes it.
        Close,
        /// Answers the first request, then closes the connection without a word when the next
        /// one arrives: a server's idle close racing the client's reuse.
        CloseOnSecond,
        /// Answers the first request, then never answers another on that connection.
        HangOnSecond,
    }

    /// A server answering every request with `response`; counts connections and requests.
    struct Server {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        last: Arc<parking_lot::Mutex<String>>,
    }

    impl Server {
        async fn start(response: &'static str, after: After) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let last = Arc::new(parking_lot::Mutex::new(String::new()));
            let (c, r, l) = (connections.clone(), requests.clone(), last.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    c.fetch_add(1, Ordering::SeqCst);
                    let (r, l) = (r.clone(), l.clone());
                    tokio::spawn(async move {
                        let (read, mut write) = stream.into_split();
                        let mut read = tokio::io::BufReader::new(read);
                        let mut answered = 0;
                        loop {
                            let mut head = String::new();
                            loop {
                                let mut line = String::new();
                                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                head.push_str(&line);
                                if line == "\r\n" {
                                    break;
                                }
                            }
                            r.fetch_add(1, Ordering::SeqCst);
                            *l.lock() = head;
                            match after {
                                After::CloseOnSecond if answered > 0 => return,
                                After::HangOnSecond if answered > 0 => {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    return;
                                }
                                _ => {}
                            }
                            if write.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                            if let After::Close = after {
                                return;
                            }
                            answered += 1;
                        }
                    });
                }
            });
            Server {
                addr,
                connections,
                requests,
                last,
            }
        }
    }

    fn loopback() -> TargetPolicy {
        TargetPolicy::new(&[], &[], true)
    }

    fn http(url: &str, method: &str, output_body: bool) -> HttpProbe {
        HttpProbe::new(url, method, &BTreeMap::new(), false, output_body).unwrap()
    }

    /// Probes `n` times as the scheduler does: a connection from the pool, back when reusable.
    async fn probe_n(p: &HttpProbe, pool: &mut Pool, n: usize, timeout: Duration) -> Vec<Outcome> {
        let connector = Connector::new(&[]).unwrap();
        let policy = loopback();
        let mut out = Vec::new();
        for _ in 0..n {
            let idle = pool.take(p.key());
            let (outcome, conn) = p.probe(&connector, &policy, idle, timeout).await;
            if let Some(conn) = conn {
                pool.put(p.key(), conn);
            }
            out.push(outcome);
        }
        out
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[tokio::test]
    async fn probes_reuse_one_keep_alive_connection() {
        let server = Server::start(OK, After::KeepAlive).await;
        let p = http(&format!("http://{}/health", server.addr), "GET", false);
        let mut pool = Pool::default();
        let outcomes = probe_n(&p, &mut pool, 5, Duration::from_secs(2)).await;
        for o in &outcomes {
            assert_eq!(o.health(), HealthStatus::Passing, "{o:?}");
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), 5);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
        assert_eq!(
            outcomes[0].output(&p.what),
            format!("HTTP GET http://{}/health: 200 OK", server.addr)
        );
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_server_just_closed_is_sent_again() {
        // The server closes as the reused connection's request arrives, without an answer:
        // the probe sends it once more on a new connection (a POST too, as Go's client does
        // when not a byte of a response came back).
        let racing = Server::start(OK, After::CloseOnSecond).await;
        let p = http(&format!("http://{}/h", racing.addr), "POST", false);
        let mut pool = Pool::default();
        let outcomes = probe_n(&p, &mut pool, 4, Duration::from_secs(2)).await;
        for o in &outcomes {
            assert_eq!(o.health(), HealthStatus::Passing, "{o:?}");
        }
        // Every reuse met a close and was sent again on a new connection.
        assert_eq!(racing.connections.load(Ordering::SeqCst), 4);
        assert_eq!(racing.requests.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_server_is_dropped_before_use() {
        let closing = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers one request per connection and closes it (without saying so).
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(closing.as_bytes()).await;
            }
        });
        let p = http(&format!("http://{addr}/h"), "GET", false);
        let mut pool = Pool::default();
        let first = probe_n(&p, &mut pool, 1, Duration::from_secs(2)).await;
        assert_eq!(first[0].health(), HealthStatus::Passing);
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            pool.take(p.key()).is_none(),
            "a closed connection was handed out"
        );
        let again = probe_n(&p, &mut pool, 2, Duration::from_secs(2)).await;
        assert!(
            again.iter().all(|o| o.health() == HealthStatus::Passing),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn a_reused_connection_that_hangs_times_out_and_is_not_kept() {
        let server = Server::start(OK, After::HangOnSecond).await;
        let p = http(&format!("http://{}/h", server.addr), "GET", false);
        let mut pool = Pool::default();
        let outcomes = probe_n(&p, &mut pool, 3, Duration::from_millis(300)).await;
        assert_eq!(outcomes[0].health(), HealthStatus::Passing);
        assert_eq!(
            outcomes[1].output("x"),
            "x: timed out after 300ms",
            "{outcomes:?}"
        );
        // The hung connection was dropped; the third probe opened a new one.
        assert_eq!(outcomes[2].health(), HealthStatus::Passing, "{outcomes:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn statuses_map_to_health_and_redirects_are_not_followed() {
        for (response, health, line) in [
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                HealthStatus::Passing,
                "204 No Content",
            ),
            (
                "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
                HealthStatus::Warning,
                "429 Too Many Requests",
            ),
            (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                HealthStatus::Critical,
                "503 Service Unavailable",
            ),
            (
                "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
                HealthStatus::Critical,
                "302 Found",
            ),
            // The canonical reason, whatever the server says.
            (
                "HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n",
                HealthStatus::Passing,
                "200 OK",
            ),
        ] {
            let server = Server::start(response, After::KeepAlive).await;
            let p = http(&format!("http://{}/h", server.addr), "GET", false);
            let o = &probe_n(&p, &mut Pool::default(), 1, Duration::from_secs(2)).await[0];
            assert_eq!(o.health(), health, "{response:?}: {o:?}");
            assert_eq!(o.output("x"), format!("x: {line}"));
            assert_eq!(server.requests.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn bodies_are_read_by_length_chunks_or_close_and_kept_only_when_asked() {
        let long = "a".repeat(MAX_OUTPUT_LEN * 2);
        // (response, server, body shown, connection kept: None when it depends on how much
        // of a long body arrived with the head).
        let cases: Vec<(String, After, &str, Option<bool>)> = vec![
            (OK.into(), After::KeepAlive, "ok", Some(true)),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer: t\r\n\r\n".into(),
                After::KeepAlive,
                "hello",
                Some(true),
            ),
            ("HTTP/1.0 200 OK\r\n\r\nuntil close".into(), After::Close, "until close", Some(false)),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".into(),
                After::Close,
                "ok",
                Some(false),
            ),
            (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{long}", long.len()),
                After::KeepAlive,
                &long[..MAX_OUTPUT_LEN - "x: 200 OK\n".len()],
                None,
            ),
        ];
        for (response, after, body, reusable) in cases {
            let response: &'static str = Box::leak(response.into_boxed_str());
            let server = Server::start(response, after).await;
            let url = format!("http://{}/h", server.addr);
            let mut pool = Pool::default();
            let kept = &probe_n(
                &http(&url, "GET", true),
                &mut pool,
                1,
                Duration::from_secs(2),
            )
            .await[0];
            assert_eq!(
                kept.output("x"),
                format!("x: 200 OK\n{body}"),
                "{response:.80}"
            );
            if let Some(reusable) = reusable {
                assert_eq!(pool.idle(), usize::from(reusable), "{response:.80}");
            }
            let plain = &probe_n(
                &http(&url, "GET", false),
                &mut Pool::default(),
                1,
                Duration::from_secs(2),
            )
            .await[0];
            assert_eq!(plain.output("x"), "x: 200 OK");
        }
        // HEAD: no body, whatever Content-Length says; the connection stays usable.
        let server = Server::start(
            "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
            After::KeepAlive,
        )
        .await;
        let p = http(&format!("http://{}/h", server.addr), "HEAD", true);
        let outcomes = probe_n(&p, &mut Pool::default(), 2, Duration::from_secs(2)).await;
        assert!(outcomes.iter().all(|o| o.health() == HealthStatus::Passing));
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_request_carries_the_checks_headers_and_defaults_it_does_not_override() {
        let server = Server::start(OK, After::KeepAlive).await;
        let url = format!("http://u%40x:p%3Aw@{}/h?x=1#frag", server.addr);
        let headers = BTreeMap::from([
            ("X-Token".to_owned(), "s3cret".to_owned()),
            ("user-agent".to_owned(), "mine".to_owned()),
            ("Content-Length".to_owned(), "5".to_owned()),
        ]);
        let p = HttpProbe::new(&url, "POST", &headers, false, false).unwrap();
        probe_n(&p, &mut Pool::default(), 1, Duration::from_secs(2)).await;
        let head = server.last.lock().clone();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "POST /h?x=1 HTTP/1.1", "{head}");
        for want in [
            format!("Host: {}", server.addr),
            "Accept: */*".into(),
            "X-Token: s3cret".into(),
            "user-agent: mine".into(),
            "Content-Length: 0".into(),
            // base64("u@x:p:w")
            "Authorization: Basic dUB4OnA6dw==".into(),
        ] {
            assert!(lines.contains(&want.as_str()), "{want}: {head}");
        }
        assert!(!head.contains("cairn-health-check"), "{head}");
        assert!(!head.contains("Content-Length: 5"), "{head}");
        // Bad definitions are refused with a reason; line breaks never reach the wire.
        let bad = BTreeMap::from([("X".to_owned(), "a\r\nInjected: 1".to_owned())]);
        assert!(HttpProbe::new(&url, "GET", &bad, false, false).is_err());
        assert_eq!(
            HttpProbe::new(&url, "DELETE", &BTreeMap::new(), false, false).unwrap_err(),
            "the method is not one of GET, HEAD, POST, PUT"
        );
        assert_eq!(
            HttpProbe::new("ftp://x/", "GET", &BTreeMap::new(), false, false).unwrap_err(),
            "not a URL"
        );
    }

    #[tokio::test]
    async fn refused_targets_and_dead_ports_fail_with_their_reason() {
        let connector = Connector::new(&[]).unwrap();
        let strict = TargetPolicy::new(&[], &[], false);
        let p = http("http://127.0.0.1:9/h", "GET", false);
        let (o, conn) = p
            .probe(&connector, &strict, None, Duration::from_secs(1))
            .await;
        assert!(conn.is_none());
        assert!(
            o.output("x")
                .contains("is refused by the default rule denying 127.0.0.0/8"),
            "{o:?}"
        );
        // A port nobody listens on.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let p = http(&format!("http://{addr}/h"), "GET", false);
        let (o, _) = p
            .probe(&connector, &loopback(), None, Duration::from_secs(1))
            .await;
        assert_eq!(o.output("x"), "x: connection refused");
        assert_eq!(
            probe_tcp(&loopback(), &addr.to_string(), Duration::from_secs(1))
                .await
                .output("x"),
            "x: connection refused"
        );
        assert_eq!(
            probe_tcp(&loopback(), "nonsense", Duration::from_secs(1))
                .await
                .output("x"),
            "x: not host:port"
        );
    }

    #[tokio::test]
    async fn https_probes_verify_against_the_extra_roots_unless_told_to_skip() {
        use cairn_tls::rustls::pki_types::pem::PemObject;
        use cairn_tls::rustls::pki_types::PrivateKeyDer;

        let ca = cairn_tls::certs::create_ca("test", 30).unwrap();
        let leaf =
            cairn_tls::certs::create_node_cert(&ca.cert_pem, &ca.key_pem, "test", 1, &[], &[], 30)
                .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(cairn_tls::config::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(OK.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let ca_der: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let url = format!("https://localhost:{}/h", addr.port());
        let none = BTreeMap::new();
        let policy = loopback();
        let timeout = Duration::from_secs(5);
        // Public roots only: the private CA's certificate is refused.
        let public = Connector::new(&[]).unwrap();
        let verify = HttpProbe::new(&url, "GET", &none, false, false).unwrap();
        let (o, _) = verify.probe(&public, &policy, None, timeout).await;
        assert_eq!(o.output("x"), "x: connection failed");
        // Told to skip verification: passes.
        let skip = HttpProbe::new(&url, "GET", &none, true, false).unwrap();
        let (o, _) = skip.probe(&public, &policy, None, timeout).await;
        assert_eq!(o.health(), HealthStatus::Passing, "{o:?}");
        // With the CA as an extra root: passes, and the connection is reused.
        let private = Connector::new(&ca_der).unwrap();
        let before = connections.load(Ordering::SeqCst);
        let (o, conn) = verify.probe(&private, &policy, None, timeout).await;
        assert_eq!(o.health(), HealthStatus::Passing, "{o:?}");
        let (o, conn) = verify.probe(&private, &policy, conn, timeout).await;
        assert_eq!(o.health(), HealthStatus::Passing, "{o:?}");
        assert!(conn.is_some());
        assert_eq!(connections.load(Ordering::SeqCst), before + 1);
        // Pools keep verified and unverified connections apart.
        assert_ne!(verify.key(), skip.key());
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"4\r\nwiki\r\n5;ext\r\npedia\r\n0\r\nX: y\r\n\r\n";
        for split in 0..wire.len() {
            let mut c = Chunked::default();
            let mut data = Vec::new();
            let mut buf = wire[..split].to_vec();
            let (used, done) = c
                .feed(&buf, &mut |d: &[u8]| data.extend_from_slice(d))
                .unwrap();
            assert!(!done || split == wire.len());
            buf.drain(..used);
            buf.extend_from_slice(&wire[split..]);
            let (_, done) = c
                .feed(&buf, &mut |d: &[u8]| data.extend_from_slice(d))
                .unwrap();
            assert!(done, "split {split}");
            assert_eq!(data, b"wikipedia", "split {split}");
        }
        for bad in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", b"11111111111111111\r\n"] {
            assert!(
                Chunked::default().feed(bad, &mut |_: &[u8]| {}).is_err(),
                "{bad:?}"
            );
        }
    }
}
