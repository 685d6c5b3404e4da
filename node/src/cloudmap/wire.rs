//! The two wire protocols of the API, both carrying the same documents: AWS JSON 1.1 and Smithy
//! RPC v2 CBOR. Requests decode to, and responses encode from, a [`serde_json::Value`], so the
//! operations never see the protocol.

use ciborium::value::Value as Cbor;
use serde_json::{Map, Number, Value};

use super::error::CloudMapError;

/// How the request came, and so how the answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /` with `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`.
    Json,
    /// `POST /service/<service>/operation/<Operation>` with `smithy-protocol: rpc-v2-cbor`.
    Cbor,
}

/// The members Cloud Map's model types as timestamps. CBOR carries them as tag 1 (epoch
/// seconds), which the SDKs require; JSON 1.1 as plain epoch seconds.
const TIMESTAMP_MEMBERS: &[&str] = &["CreateDate", "UpdateDate", "CompleteDate"];

impl Protocol {
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Json => "application/x-amz-json-1.1",
            Protocol::Cbor => "application/cbor",
        }
    }

    /// A request body as a document; an empty body is an empty structure.
    pub fn decode(self, body: &[u8]) -> Result<Value, CloudMapError> {
        if body.is_empty() {
            return Ok(Value::Object(Map::new()));
        }
        let value = match self {
            Protocol::Json => serde_json::from_slice(body)
                .map_err(|e| CloudMapError::new("SerializationException", e.to_string()))?,
            Protocol::Cbor => {
                let cbor: Cbor = ciborium::de::from_reader(body)
                    .map_err(|e| CloudMapError::new("SerializationException", e.to_string()))?;
                from_cbor(cbor)?
            }
        };
        if value.is_object() {
            Ok(value)
        } else {
            Err(CloudMapError::new(
                "SerializationException",
                "the request body is not a structure",
            ))
        }
    }

    /// A response document as bytes.
    pub fn encode(self, value: &Value) -> Vec<u8> {
        match self {
            Protocol::Json => serde_json::to_vec(value).unwrap_or_default(),
            Protocol::Cbor => {
                let mut out = Vec::new();
                // Writing to a Vec cannot fail; an empty body is the fallback all the same.
                let _ = ciborium::ser::into_writer(&to_cbor(value, false), &mut out);
                out
            }
        }
    }
}

fn from_cbor(v: Cbor) -> Result<Value, CloudMapError> {
    let bad = |what: &str| CloudMapError::new("SerializationException", what.to_owned());
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let i = i128::from(i);
            if let Ok(n) = i64::try_from(i) {
                Value::from(n)
            } else if let Ok(n) = u64::try_from(i) {
                Value::from(n)
            } else {
                return Err(bad("an integer out of range"));
            }
        }
        Cbor::Float(f) => {
            Value::Number(Number::from_f64(f).ok_or_else(|| bad("a NaN or infinity"))?)
        }
        Cbor::Text(s) => Value::String(s),
        // Timestamps (tag 1) become their epoch seconds; no other tag is in Cloud Map's model.
        Cbor::Tag(1, inner) => from_cbor(*inner)?,
        Cbor::Tag(..) => return Err(bad("a CBOR tag other than 1 (timestamp)")),
        Cbor::Bytes(_) => return Err(bad("a byte string (Cloud Map has no blobs)")),
        Cbor::Array(items) => {
            Value::Array(items.into_iter().map(from_cbor).collect::<Result<_, _>>()?)
        }
        Cbor::Map(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let Cbor::Text(k) = k else {
                    return Err(bad("a map key that is not a text string"));
                };
                // Smithy: a null member is an absent one.
                if !v.is_null() {
                    map.insert(k, from_cbor(v)?);
                }
            }
            Value::Object(map)
        }
        _ => return Err(bad("an unknown CBOR item")),
    })
}

fn to_cbor(v: &Value, timestamp: bool) -> Cbor {
    match v {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::Number(n) if timestamp => {
            Cbor::Tag(1, Box::new(Cbor::Float(n.as_f64().unwrap_or(0.0))))
        }
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cbor::Integer(i.into()),
            (None, Some(u)) => Cbor::Integer(u.into()),
            _ => Cbor::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Cbor::Text(s.clone()),
        Value::Array(items) => Cbor::Array(items.iter().map(|i| to_cbor(i, false)).collect()),
        Value::Object(map) => Cbor::Map(
            map.iter()
                .map(|(k, v)| {
                    (
                        Cbor::Text(k.clone()),
                        to_cbor(v, TIMESTAMP_MEMBERS.contains(&k.as_str())),
                    )
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_round_trips_and_tags_timestamps() {
        let doc = serde_json::json!({"Name": "web", "MaxResults": 3, "CreateDate": 1.5,
            "Attributes": {"k": "v"}, "List": [true, null]});
        let bytes = Protocol::Cbor.encode(&doc);
        let back: Cbor = ciborium::de::from_reader(bytes.as_slice()).expect("decodes");
        let Cbor::Map(pairs) = &back else {
            panic!("{back:?}")
        };
        assert!(pairs
            .iter()
            .any(|(k, v)| k.as_text() == Some("CreateDate") && matches!(v, Cbor::Tag(1, _))));
        assert_eq!(Protocol::Cbor.decode(&bytes).expect("decodes"), doc);
    }

    #[test]
    fn garbage_and_non_structures_are_serialization_errors() {
        for body in [&b"\xff\xff"[..], &[0x01][..], &[0x9f][..]] {
            let e = Protocol::Cbor.decode(body).err();
            assert_eq!(
                e.map(|e| e.kind),
                Some("SerializationException"),
                "{body:?}"
            );
        }
        let e = Protocol::Json.decode(b"[1]").err();
        assert_eq!(e.map(|e| e.kind), Some("SerializationException"));
    }
}
