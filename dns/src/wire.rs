//! The slice of RFC 1035 (and RFC 6891's OPT record) that an authoritative server needs: read a
//! query's header, single question and EDNS0 options; write a response with pre-encoded records.
//!
//! Reading is strict and allocation-light: a query that is not exactly one question in a
//! well-formed message is refused with FORMERR (when an ID can be read) or dropped.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
/// Largest message over UDP without EDNS0 (RFC 1035).
pub const CLASSIC_UDP_LIMIT: usize = 512;
/// Largest UDP payload we announce and honour: the DNS flag day 2020 value, which avoids IP
/// fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Longest name in wire form, length bytes and the root's zero included (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// EDNS0 as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The client's UDP payload size, at least 512.
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query. Borrowed slices point into the request buffer.
#[derive(Debug)]
pub struct Query<'a> {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    /// The question section as sent (name, type, class), echoed back unchanged so that the
    /// client's 0x20 case randomisation survives.
    pub question: &'a [u8],
    /// The question name's labels, lower-cased.
    pub labels: Labels,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The largest response this client takes over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.payload.clamp(512, MAX_UDP_PAYLOAD)),
            None => CLASSIC_UDP_LIMIT,
        }
    }

    /// The question name in presentation form, lower-cased (for logs and forwarding decisions).
    pub fn name(&self) -> String {
        let mut s = String::new();
        for l in self.labels.iter() {
            s.push_str(&String::from_utf8_lossy(l));
            s.push('.');
        }
        if s.is_empty() {
            s.push('.');
        }
        s
    }
}

/// Most labels a name of [`MAX_NAME_LEN`] bytes can have: one byte each and a length byte.
const MAX_LABELS: usize = MAX_NAME_LEN / 2;

/// A question name's labels, lower-cased, kept in place (no allocation per query): the name in
/// wire form and where each label starts.
#[derive(Clone)]
pub struct Labels {
    /// The name in wire form, lower-cased, up to and including the root's zero byte.
    wire: [u8; MAX_NAME_LEN],
    /// Where each label's length byte is in `wire`.
    starts: [u8; MAX_LABELS],
    count: u8,
}

impl Labels {
    fn new() -> Labels {
        Labels {
            wire: [0; MAX_NAME_LEN],
            starts: [0; MAX_LABELS],
            count: 0,
        }
    }

    /// Appends `label` (1-63 bytes; the caller checked that the name stays within
    /// [`MAX_NAME_LEN`]), lower-cased.
    fn push(&mut self, label: &[u8]) {
        let start = self.wire_len();
        self.starts[usize::from(self.count)] = start as u8;
        self.wire[start] = label.len() as u8;
        let to = &mut self.wire[start + 1..start + 1 + label.len()];
        to.copy_from_slice(label);
        to.make_ascii_lowercase();
        self.count += 1;
        // The root's zero byte after the last label.
        self.wire[start + 1 + label.len()] = 0;
    }

    /// Length of the name in wire form without the root's zero byte.
    fn wire_len(&self) -> usize {
        match self.count {
            0 => 0,
            n => {
                let last = usize::from(self.starts[usize::from(n) - 1]);
                last + 1 + usize::from(self.wire[last])
            }
        }
    }

    /// How many labels (the root's empty one not counted).
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Label `i`, counted from the left; empty past the last.
    pub fn get(&self, i: usize) -> &[u8] {
        if i >= self.len() {
            return &[];
        }
        let start = usize::from(self.starts[i]);
        &self.wire[start + 1..start + 1 + usize::from(self.wire[start])]
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The name from label `i` on, in lower-cased wire form with the root's zero byte: the
    /// whole name for 0, the root (`[0]`) for [`Labels::len`].
    pub fn wire_from(&self, i: usize) -> &[u8] {
        let start = if i < self.len() {
            usize::from(self.starts[i])
        } else {
            self.wire_len()
        };
        &self.wire[start..=self.wire_len()]
    }
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Why a message could not be read as a query.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not even a header, or a response: nothing to answer.
    Drop,
    /// Answer with this RCODE, echoing the ID (and the question when it could be read).
    Reply { id: u16, rcode: u8, opcode: u8 },
    /// An EDNS version we do not speak (RFC 6891: BADVERS).
    BadVersion { id: u16 },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.buf.get(self.pos..self.pos + 2)?;
        self.pos += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        if self.pos + n > self.buf.len() {
            return None;
        }
        self.pos += n;
        Some(())
    }
    /// Skips a name in a resource record, which may end in a compression pointer.
    fn skip_name(&mut self) -> Option<()> {
        // The root's zero byte counts towards the limit too.
        let mut len = 1usize;
        loop {
            let l = self.u8()?;
            match l {
                0 => return Some(()),
                1..=63 => {
                    len += usize::from(l) + 1;
                    if len > MAX_NAME_LEN {
                        return None;
                    }
                    self.skip(usize::from(l))?;
                }
                0xC0..=0xFF => {
                    self.u8()?;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Reads a query. See [`ParseError`] for what to do with a bad one.
pub fn parse_query(buf: &[u8]) -> Result<Query<'_>, ParseError> {
    if buf.len() < HEADER_LEN {
        return Err(ParseError::Drop);
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    if flags & 0x8000 != 0 {
        // A response: answering it could loop two servers into each other.
        return Err(ParseError::Drop);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    let formerr = ParseError::Reply {
        id,
        rcode: RCODE_FORMERR,
        opcode,
    };
    if opcode != 0 {
        return Err(ParseError::Reply {
            id,
            rcode: RCODE_NOTIMP,
            opcode,
        });
    }
    let count = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 {
        return Err(formerr);
    }
    let mut r = Reader {
        buf,
        pos: HEADER_LEN,
    };
    let mut labels = Labels::new();
    // The name's length in wire form, the root's zero byte included (a name of 256 bytes made
    // answers that echo it unreadable to resolvers).
    let mut name_len = 1usize;
    loop {
        let l = r.u8().ok_or(ParseError::Reply {
            id,
            rcode: RCODE_FORMERR,
            opcode,
        })?;
        if l == 0 {
            break;
        }
        // Compression in the question is legal but never seen from real clients; a pointer or a
        // reserved label type here is treated as malformed.
        if l > 63 {
            return Err(formerr);
        }
        name_len += usize::from(l) + 1;
        if name_len > MAX_NAME_LEN {
            return Err(formerr);
        }
        let start = r.pos;
        r.skip(usize::from(l)).ok_or(ParseError::Reply {
            id,
            rcode: RCODE_FORMERR,
            opcode,
        })?;
        labels.push(&buf[start..r.pos]);
    }
    let qtype = r.u16().ok_or(ParseError::Reply {
        id,
        rcode: RCODE_FORMERR,
        opcode,
    })?;
    let qclass = r.u16().ok_or(ParseError::Reply {
        id,
        rcode: RCODE_FORMERR,
        opcode,
    })?;
    let question = &buf[HEADER_LEN..r.pos];

    let bad = || ParseError::Reply {
        id,
        rcode: RCODE_FORMERR,
        opcode,
    };
    let mut edns = None;
    for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let is_additional = i >= u32::from(an) + u32::from(ns);
        let name_start = r.pos;
        r.skip_name().ok_or_else(bad)?;
        let rtype = r.u16().ok_or_else(bad)?;
        let class = r.u16().ok_or_else(bad)?;
        let ttl = r.u32().ok_or_else(bad)?;
        let rdlen = r.u16().ok_or_else(bad)?;
        r.skip(usize::from(rdlen)).ok_or_else(bad)?;
        if is_additional && rtype == TYPE_OPT {
            // RFC 6891: one OPT, owned by the root.
            if edns.is_some() || buf[name_start] != 0 {
                return Err(bad());
            }
            let version = ((ttl >> 16) & 0xFF) as u8;
            if version != 0 {
                return Err(ParseError::BadVersion { id });
            }
            edns = Some(Edns {
                payload: class.max(512),
                version,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
    }
    if r.pos != buf.len() {
        // Trailing bytes after the last record.
        return Err(bad());
    }
    Ok(Query {
        id,
        opcode,
        recursion_desired: flags & 0x0100 != 0,
        question,
        labels,
        qtype,
        qclass,
        edns,
    })
}

/// Longest label (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// A domain name in wire form, checked when it is made: labels of 1-63 bytes, at most 255 bytes
/// in all. Encoding one can therefore never cut a label short or overrun a message's limits; a
/// name that does not fit is refused at [`DomainName::new`], where the caller can say so.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainName(Vec<u8>);

/// Why a dotted name is not a domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// A label of more than 63 bytes.
    LabelTooLong(String),
    /// Two dots in a row (or a leading dot).
    EmptyLabel,
    /// More than 255 bytes in wire form.
    TooLong(usize),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::LabelTooLong(l) => write!(
                f,
                "label {:?}... is longer than {MAX_LABEL_LEN} bytes",
                l.chars().take(16).collect::<String>()
            ),
            NameError::EmptyLabel => f.write_str("empty label (two dots in a row)"),
            NameError::TooLong(n) => {
                write!(
                    f,
                    "name is {n} bytes in wire form, more than {MAX_NAME_LEN}"
                )
            }
        }
    }
}

impl std::error::Error for NameError {}

impl DomainName {
    /// `name` dotted, the trailing dot optional; `"."` or `""` is the root.
    pub fn new(name: &str) -> Result<DomainName, NameError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut wire = Vec::with_capacity(name.len() + 2);
        if !name.is_empty() {
            for label in name.split('.') {
                if label.is_empty() {
                    return Err(NameError::EmptyLabel);
                }
                if label.len() > MAX_LABEL_LEN {
                    return Err(NameError::LabelTooLong(label.to_owned()));
                }
                wire.push(label.len() as u8);
                wire.extend_from_slice(label.as_bytes());
            }
        }
        wire.push(0);
        if wire.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(wire.len()));
        }
        Ok(DomainName(wire))
    }

    /// `labels` prepended to this name: `web.service.` under `cairn.` is `web.service.cairn.`.
    pub fn child(&self, labels: &str) -> Result<DomainName, NameError> {
        let prefix = DomainName::new(labels)?;
        let mut wire = prefix.0;
        wire.pop();
        wire.extend_from_slice(&self.0);
        if wire.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(wire.len()));
        }
        Ok(DomainName(wire))
    }

    /// The name in wire form, ending with the root's zero byte.
    pub fn wire(&self) -> &[u8] {
        &self.0
    }
}

/// Appends `name` in wire form.
pub fn push_name(out: &mut Vec<u8>, name: &DomainName) {
    out.extend_from_slice(name.wire());
}

/// A compression pointer to the question name, which always sits right after the header.
pub const QNAME_POINTER: [u8; 2] = [0xC0, HEADER_LEN as u8];

/// One resource record, fully encoded. `owner` is either [`QNAME_POINTER`] or a wire name.
pub fn encode_rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(owner.len() + 10 + rdata.len());
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

pub fn a_rdata(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

pub fn aaaa_rdata(ip: Ipv6Addr) -> [u8; 16] {
    ip.octets()
}

pub fn srv_rdata(priority: u16, weight: u16, port: u16, target: &DomainName) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + target.wire().len());
    out.extend_from_slice(&priority.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    // RFC 2782: the target is not compressed.
    push_name(&mut out, target);
    out
}

pub fn name_rdata(name: &DomainName) -> Vec<u8> {
    name.wire().to_vec()
}

/// The SOA's fields after the two names.
pub struct SoaTimers {
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
}

pub fn soa_rdata(mname: &DomainName, rname: &DomainName, t: &SoaTimers) -> Vec<u8> {
    let mut out = Vec::with_capacity(mname.wire().len() + rname.wire().len() + 20);
    push_name(&mut out, mname);
    push_name(&mut out, rname);
    for v in [t.serial, t.refresh, t.retry, t.expire, t.minimum] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// The OPT record we answer with: our payload size, version 0, the client's DO bit, and the
/// upper bits of an extended RCODE.
pub fn opt_rr(dnssec_ok: bool, extended_rcode: u8) -> [u8; 11] {
    let payload = MAX_UDP_PAYLOAD.to_be_bytes();
    let flags: u16 = if dnssec_ok { 0x8000 } else { 0 };
    let f = flags.to_be_bytes();
    [
        0, // root owner
        0,
        TYPE_OPT as u8,
        payload[0],
        payload[1],
        extended_rcode,
        0, // version
        f[0],
        f[1],
        0,
        0, // no options
    ]
}

/// Builds a response in place: header, echoed question, then sections in order.
pub struct Response {
    pub buf: Vec<u8>,
    answers: u16,
    authority: u16,
    additional: u16,
}

/// Header flags of a response.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    pub recursion_desired: bool,
    pub recursion_available: bool,
    pub rcode: u8,
}

impl Response {
    /// A response to `id` echoing `question` (which may be empty).
    pub fn new(id: u16, question: &[u8], capacity: usize) -> Self {
        Response::in_buffer(Vec::new(), id, question, capacity)
    }

    /// [`Response::new`] written into `buf` (cleared first), whose allocation it reuses.
    pub fn in_buffer(mut buf: Vec<u8>, id: u16, question: &[u8], capacity: usize) -> Self {
        buf.clear();
        buf.reserve(capacity.max(HEADER_LEN + question.len()));
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&[0; 10]);
        if !question.is_empty() {
            buf[5] = 1;
            buf.extend_from_slice(question);
        }
        Response {
            buf,
            answers: 0,
            authority: 0,
            additional: 0,
        }
    }

    /// Appends an answer record if it fits in `limit` bytes (reserving `reserve` for later
    /// records that must fit); answers whether it did.
    pub fn answer(&mut self, rr: &[u8], limit: usize, reserve: usize) -> bool {
        if self.buf.len() + rr.len() + reserve > limit {
            return false;
        }
        self.buf.extend_from_slice(rr);
        self.answers += 1;
        true
    }

    pub fn authority(&mut self, rr: &[u8], limit: usize, reserve: usize) -> bool {
        if self.buf.len() + rr.len() + reserve > limit {
            return false;
        }
        self.buf.extend_from_slice(rr);
        self.authority += 1;
        true
    }

    pub fn additional(&mut self, rr: &[u8], limit: usize, reserve: usize) -> bool {
        if self.buf.len() + rr.len() + reserve > limit {
            return false;
        }
        self.buf.extend_from_slice(rr);
        self.additional += 1;
        true
    }

    /// Writes the flags and section counts; returns the finished message.
    pub fn finish(mut self, f: Flags) -> Vec<u8> {
        let mut b2 = 0x80 | (f.opcode << 3);
        if f.authoritative {
            b2 |= 0x04;
        }
        if f.truncated {
            b2 |= 0x02;
        }
        if f.recursion_desired {
            b2 |= 0x01;
        }
        let mut b3 = f.rcode & 0x0F;
        if f.recursion_available {
            b3 |= 0x80;
        }
        self.buf[2] = b2;
        self.buf[3] = b3;
        self.buf[6..8].copy_from_slice(&self.answers.to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.authority.to_be_bytes());
        self.buf[10..12].copy_from_slice(&self.additional.to_be_bytes());
        self.buf
    }
}

/// A header-only error response (used when the question could not be read).
pub fn error_response(id: u16, opcode: u8, rcode: u8) -> Vec<u8> {
    Response::new(id, &[], HEADER_LEN).finish(Flags {
        opcode,
        authoritative: false,
        truncated: false,
        recursion_desired: false,
        recursion_available: false,
        rcode,
    })
}

/// A record of a response, in presentation form (for `cairn lookup` and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    /// `10.0.0.1`, `db.example.com.`, `1 5 8080 0a000001.addr.cairn.`, ...
    pub data: String,
}

/// Reads a possibly compressed name at `pos`; returns it and the position after it.
fn read_name(buf: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *buf.get(pos).ok_or("name runs past the message")?;
        match len {
            0 => {
                if name.is_empty() {
                    name.push('.');
                }
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            1..=63 => {
                let label = buf
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or("label runs past the message")?;
                name.push_str(&String::from_utf8_lossy(label));
                name.push('.');
                pos += 1 + usize::from(len);
            }
            0xC0..=0xFF => {
                let lo = *buf.get(pos + 1).ok_or("pointer runs past the message")?;
                end.get_or_insert(pos + 2);
                pos = (usize::from(len & 0x3F) << 8) | usize::from(lo);
            }
            _ => return Err("bad label type".into()),
        }
    }
    Err("name has too many labels or a pointer loop".into())
}

/// Reads a response: its RCODE, TC flag and the records of all sections (OPT left out).
pub fn read_response(buf: &[u8]) -> Result<(u8, bool, Vec<Answer>), String> {
    if buf.len() < HEADER_LEN {
        return Err("shorter than a header".into());
    }
    let rcode = buf[3] & 0x0F;
    let truncated = buf[2] & 0x02 != 0;
    let count = |i: usize| usize::from(u16::from_be_bytes([buf[i], buf[i + 1]]));
    let (qd, records) = (count(4), count(6) + count(8) + count(10));
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = read_name(buf, pos)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..records {
        let (name, p) = read_name(buf, pos)?;
        let fixed = buf.get(p..p + 10).ok_or("record runs past the message")?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let start = p + 10;
        let rdata = buf
            .get(start..start + len)
            .ok_or("rdata runs past the message")?;
        pos = start + len;
        let data = match rtype {
            TYPE_A if len == 4 => Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string(),
            TYPE_AAAA if len == 16 => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| "bad AAAA")?;
                Ipv6Addr::from(octets).to_string()
            }
            TYPE_CNAME | TYPE_NS => read_name(buf, start)?.0,
            TYPE_SRV if len > 6 => {
                let f = |i: usize| u16::from_be_bytes([rdata[i], rdata[i + 1]]);
                format!(
                    "{} {} {} {}",
                    f(0),
                    f(2),
                    f(4),
                    read_name(buf, start + 6)?.0
                )
            }
            TYPE_SOA => read_name(buf, start)?.0,
            TYPE_OPT => continue,
            _ => format!("({len} bytes)"),
        };
        out.push(Answer {
            name,
            rtype,
            ttl,
            data,
        });
    }
    Ok((rcode, truncated, out))
}

/// The smallest TTL of the records in a response's answer and authority sections (the SOA of a
/// negative answer), for an HTTP cache's freshness (RFC 8484 5.1); `None` when they hold no
/// record or the message cannot be read.
pub fn min_ttl(buf: &[u8]) -> Option<u32> {
    let header = buf.get(..HEADER_LEN)?;
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let mut pos = HEADER_LEN;
    for _ in 0..count(4) {
        pos = skip_name(buf, pos)? + 4;
    }
    let mut min: Option<u32> = None;
    for _ in 0..count(6) + count(8) {
        let p = skip_name(buf, pos)?;
        let fixed = buf.get(p..p + 10)?;
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        pos = p + 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        buf.get(p + 10..pos)?;
        min = Some(min.map_or(ttl, |m| m.min(ttl)));
    }
    min
}

/// The position after the (possibly compressed) name at `pos`.
fn skip_name(buf: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *buf.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + usize::from(len),
            0xC0..=0xFF => return buf.get(pos + 1).map(|_| pos + 2),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut b = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        push_name(&mut b, &DomainName::new(name).unwrap());
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(p) = edns {
            b.extend_from_slice(&[0, 0, 41]);
            b.extend_from_slice(&p.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn reads_a_query_with_edns() {
        let q = query("Web.Service.Cairn.", TYPE_SRV, Some(4096));
        let p = parse_query(&q).unwrap();
        assert_eq!(p.id, 0x1234);
        assert!(p.recursion_desired);
        assert_eq!(p.name(), "web.service.cairn.");
        assert_eq!(p.qtype, TYPE_SRV);
        assert_eq!(
            p.edns,
            Some(Edns {
                payload: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(p.udp_limit(), usize::from(MAX_UDP_PAYLOAD));
        // The question is echoed with the client's case.
        assert_eq!(&p.question[1..4], b"Web");
    }

    #[test]
    fn question_labels_are_kept_lower_cased_in_wire_form() {
        let q = query("Web.SERVICE.Cairn.", TYPE_A, None);
        let p = parse_query(&q).unwrap();
        let labels: Vec<&[u8]> = p.labels.iter().collect();
        assert_eq!(labels, [&b"web"[..], b"service", b"cairn"]);
        assert_eq!(p.labels.get(3), b"", "past the last label");
        assert_eq!(p.labels.wire_from(0), b"\x03web\x07service\x05cairn\x00");
        assert_eq!(p.labels.wire_from(2), b"\x05cairn\x00");
        assert_eq!(p.labels.wire_from(3), b"\x00", "the root");
        assert_eq!(
            p.labels.wire_from(1),
            DomainName::new("service.cairn.").unwrap().wire()
        );
        // The most labels a name can have: 127 of one byte (255 bytes with the root's).
        let most = vec!["x"; MAX_LABELS].join(".");
        let most = query(&most, TYPE_A, None);
        let p = parse_query(&most).unwrap();
        assert_eq!(p.labels.len(), MAX_LABELS);
        assert_eq!(p.labels.wire_from(0).len(), MAX_NAME_LEN);
        let root = query(".", TYPE_SOA, None);
        let root = parse_query(&root).unwrap();
        assert!(root.labels.is_empty());
        assert_eq!(root.labels.wire_from(0), b"\x00");
        assert_eq!(root.name(), ".");
    }

    #[test]
    fn malformed_messages_are_dropped_or_formerr() {
        assert_eq!(parse_query(&[1, 2, 3]).unwrap_err(), ParseError::Drop);
        let mut response = query("a.", TYPE_A, None);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response).unwrap_err(), ParseError::Drop);
        let truncated = &query("web.service.cairn.", TYPE_A, None)[..20];
        assert!(matches!(
            parse_query(truncated),
            Err(ParseError::Reply {
                rcode: RCODE_FORMERR,
                id: 0x1234,
                ..
            })
        ));
        let mut two = query("a.", TYPE_A, None);
        two[5] = 2;
        assert!(matches!(
            parse_query(&two),
            Err(ParseError::Reply {
                rcode: RCODE_FORMERR,
                ..
            })
        ));
        let mut trailing = query("a.", TYPE_A, None);
        trailing.push(0);
        assert!(matches!(
            parse_query(&trailing),
            Err(ParseError::Reply {
                rcode: RCODE_FORMERR,
                ..
            })
        ));
        let mut update = query("a.", TYPE_A, None);
        update[2] = 5 << 3;
        assert!(matches!(
            parse_query(&update),
            Err(ParseError::Reply {
                rcode: RCODE_NOTIMP,
                ..
            })
        ));
        let mut v1 = query("a.", TYPE_A, Some(1232));
        let n = v1.len();
        v1[n - 5] = 1; // EDNS version 1
        assert_eq!(
            parse_query(&v1).unwrap_err(),
            ParseError::BadVersion { id: 0x1234 }
        );
    }

    /// Confirmed by the `dns_query` fuzz target (hickory-proto refuses the name): labels whose
    /// length bytes and data add up to 255 make a 256-byte name once the root's zero byte is
    /// counted, which we accepted and echoed.
    #[test]
    fn regression_a_question_name_of_256_bytes_is_formerr() {
        let label = |n: usize| "a".repeat(n);
        let longest = [label(63), label(63), label(63), label(61)].join(".");
        let q = query(&longest, TYPE_A, None);
        assert_eq!(parse_query(&q).unwrap().labels.len(), 4);
        assert_eq!(
            parse_query(&q).unwrap().labels.wire_from(0),
            DomainName::new(&longest).unwrap().wire()
        );
        // One byte longer: the name no longer fits in 255 bytes.
        let mut over = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for n in [63u8, 63, 63, 62] {
            over.push(n);
            over.extend(std::iter::repeat_n(b'a', usize::from(n)));
        }
        over.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(over.len(), HEADER_LEN + 256 + 4);
        assert!(matches!(
            parse_query(&over),
            Err(ParseError::Reply {
                rcode: RCODE_FORMERR,
                ..
            })
        ));
    }

    #[test]
    fn every_prefix_of_a_query_is_handled_without_panic() {
        let q = query("x.web.service.cairn.", TYPE_SRV, Some(1232));
        for i in 0..q.len() {
            let _ = parse_query(&q[..i]);
        }
        let mut garbage = q.clone();
        for i in HEADER_LEN..garbage.len() {
            garbage[i] = 0xFF;
            let _ = parse_query(&garbage);
        }
    }

    #[test]
    fn responses_read_back_with_compressed_names() {
        let q = query("web.service.cairn.", TYPE_SRV, None);
        let p = parse_query(&q).unwrap();
        let mut r = Response::new(p.id, p.question, 512);
        let srv = encode_rr(
            &QNAME_POINTER,
            TYPE_SRV,
            5,
            &srv_rdata(
                1,
                3,
                8080,
                &DomainName::new("0a000001.addr.cairn.").unwrap(),
            ),
        );
        r.answer(&srv, 512, 0);
        let mut owner = Vec::new();
        push_name(
            &mut owner,
            &DomainName::new("0a000001.addr.cairn.").unwrap(),
        );
        r.additional(
            &encode_rr(&owner, TYPE_A, 5, &a_rdata(Ipv4Addr::new(10, 0, 0, 1))),
            512,
            0,
        );
        let bytes = r.finish(Flags {
            opcode: 0,
            authoritative: true,
            truncated: false,
            recursion_desired: false,
            recursion_available: false,
            rcode: RCODE_NOERROR,
        });
        let (rcode, tc, answers) = read_response(&bytes).unwrap();
        assert_eq!((rcode, tc), (RCODE_NOERROR, false));
        assert_eq!(answers[0].name, "web.service.cairn.");
        assert_eq!(answers[0].data, "1 3 8080 0a000001.addr.cairn.");
        assert_eq!(answers[1].data, "10.0.0.1");
        assert!(read_response(&bytes[..bytes.len() - 2]).is_err());
    }

    #[test]
    fn min_ttl_reads_answers_and_authority_not_additional() {
        let q = query("web.service.cairn.", TYPE_A, None);
        let p = parse_query(&q).unwrap();
        let mut r = Response::new(p.id, p.question, 512);
        let a = |ttl, last| {
            encode_rr(
                &QNAME_POINTER,
                TYPE_A,
                ttl,
                &a_rdata(Ipv4Addr::new(10, 0, 0, last)),
            )
        };
        r.answer(&a(30, 1), 512, 0);
        r.answer(&a(7, 2), 512, 0);
        r.additional(&a(1, 3), 512, 0);
        let flags = Flags {
            opcode: 0,
            authoritative: true,
            truncated: false,
            recursion_desired: false,
            recursion_available: false,
            rcode: RCODE_NOERROR,
        };
        let bytes = r.finish(flags);
        assert_eq!(min_ttl(&bytes), Some(7));
        assert_eq!(min_ttl(&error_response(1, 0, RCODE_REFUSED)), None);
        assert_eq!(
            min_ttl(&bytes[..bytes.len() - 20]),
            None,
            "cut in the answers"
        );
    }

    #[test]
    fn names_encode_in_wire_form() {
        let mut b = Vec::new();
        push_name(&mut b, &DomainName::new("ab.c.").unwrap());
        assert_eq!(b, [2, b'a', b'b', 1, b'c', 0]);
        assert_eq!(DomainName::new("ab.c").unwrap().wire(), b.as_slice());
        assert_eq!(DomainName::new(".").unwrap().wire(), [0]);
        assert_eq!(DomainName::new("").unwrap().wire(), [0]);
        let zone = DomainName::new("cairn.").unwrap();
        assert_eq!(
            zone.child("web.service").unwrap(),
            DomainName::new("web.service.cairn").unwrap()
        );
    }

    #[test]
    fn names_that_do_not_fit_are_refused_not_cut() {
        // Formerly a 64-byte label was silently cut to 63 bytes.
        let long = "a".repeat(64);
        assert_eq!(
            DomainName::new(&format!("{long}.cairn.")),
            Err(NameError::LabelTooLong(long.clone()))
        );
        assert!(DomainName::new(&"a".repeat(63)).is_ok());
        assert_eq!(DomainName::new("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(DomainName::new(".a"), Err(NameError::EmptyLabel));
        // 4 labels of 63 bytes: 4 * 64 + 1 = 257 bytes in wire form.
        let label = "b".repeat(63);
        let four = [label.as_str(); 4].join(".");
        assert_eq!(DomainName::new(&four), Err(NameError::TooLong(257)));
        let three = DomainName::new(&[label.as_str(); 3].join(".")).unwrap();
        assert_eq!(three.wire().len(), 193);
        assert!(matches!(three.child(&label), Err(NameError::TooLong(257))));
    }
}
