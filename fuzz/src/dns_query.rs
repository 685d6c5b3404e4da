//! Differential: our query parser (`cairn_dns::wire::parse_query`) against hickory-proto.
//!
//! - What we accept, hickory reads to the same header, question and EDNS values. Our parser
//!   skips the records of the answer, authority and additional sections without reading their
//!   RDATA (only the OPT record matters to a server), so hickory may still refuse such a message
//!   for an RDATA it finds malformed; the header and question must then still agree, and the EDNS
//!   comparison waits for a message hickory reads whole.
//! - The reverse, where it makes sense: a query hickory reads whole (one question, not a response,
//!   opcode QUERY, EDNS version 0 or none, no bytes left over), whose question name is not
//!   compressed (legal, but never sent by real clients; we answer FORMERR), we accept too.

use cairn_dns::wire::{self, ParseError};
use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

pub fn check(data: &[u8]) {
    match wire::parse_query(data) {
        Ok(ours) => accepted(data, &ours),
        Err(why) => refused(data, &why),
    }
}

/// hickory's labels of `name`, lower-cased, as our parser keeps them.
fn labels(name: &Name) -> Vec<Vec<u8>> {
    name.iter().map(<[u8]>::to_ascii_lowercase).collect()
}

fn accepted(data: &[u8], ours: &wire::Query<'_>) {
    let mut decoder = BinDecoder::new(data);
    let header = Header::read(&mut decoder).expect("hickory reads the header of a query we accept");
    let question =
        Query::read(&mut decoder).unwrap_or_else(|e| panic!("hickory refuses our question: {e}"));
    let meta = header.metadata;
    assert_eq!(meta.id, ours.id);
    assert_eq!(meta.message_type, MessageType::Query);
    assert_eq!(meta.op_code, OpCode::Query);
    assert_eq!(u8::from(meta.op_code), ours.opcode);
    assert_eq!(meta.recursion_desired, ours.recursion_desired);
    assert_eq!(header.counts.queries, 1);
    let our_labels: Vec<Vec<u8>> = ours.labels.iter().map(<[u8]>::to_vec).collect();
    assert_eq!(labels(question.name()), our_labels, "question name");
    assert_eq!(u16::from(question.query_type()), ours.qtype);
    assert_eq!(u16::from(question.query_class()), ours.qclass);
    assert_eq!(
        decoder.index(),
        wire::HEADER_LEN + ours.question.len(),
        "the question ends at the same byte"
    );
    // Names we build answers from must be names hickory would build too.
    assert!(question.name().len() <= wire::MAX_NAME_LEN);

    let Ok(message) = Message::from_vec(data) else {
        // A record's RDATA hickory reads and we skip; header and question agreed above.
        return;
    };
    match (ours.edns, message.edns.as_ref()) {
        (None, None) => {}
        (Some(e), Some(h)) => {
            assert_eq!(e.payload, h.max_payload(), "EDNS payload");
            assert_eq!(e.version, h.version(), "EDNS version");
            assert_eq!(e.dnssec_ok, h.flags().dnssec_ok, "EDNS DO bit");
        }
        (e, h) => panic!("EDNS differs: ours {e:?}, hickory's {h:?}"),
    }
}

fn refused(data: &[u8], why: &ParseError) {
    let mut decoder = BinDecoder::new(data);
    let Ok(message) = Message::read(&mut decoder) else {
        return;
    };
    let plain = message.metadata.message_type == MessageType::Query
        && message.metadata.op_code == OpCode::Query
        && message.queries.len() == 1
        && message.edns.as_ref().is_none_or(|e| e.version() == 0)
        && decoder.is_empty()
        && !question_compressed(data);
    assert!(
        !plain,
        "we refuse ({why:?}) a query hickory reads: {message:?}"
    );
    // Keep the refusal classes honest too: a query hickory reads is never dropped unanswered
    // unless it is a response.
    if let ParseError::Drop = why {
        assert_eq!(message.metadata.message_type, MessageType::Response);
    }
}

/// Whether the question name (right after the header) holds a compression pointer.
fn question_compressed(data: &[u8]) -> bool {
    let mut pos = wire::HEADER_LEN;
    while let Some(&len) = data.get(pos) {
        match len {
            0 => return false,
            1..=63 => pos += 1 + usize::from(len),
            _ => return true,
        }
    }
    false
}
