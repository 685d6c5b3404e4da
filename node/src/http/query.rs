//! The one query-string parser, in two dialects.
//!
//! [`Dialect::Native`] is strict: an unknown parameter, a flag with a value that is not one, a
//! bad percent-escape or bytes that are not UTF-8 are 400s, so a typo (`?consistant`) is never
//! served silently as a stale read. [`Dialect::Consul`] keeps the leniencies Consul's clients
//! rely on: `consistent` counts whatever its value (`consistent`, `consistent=`,
//! `consistent=1`), `passing` unless it is `0` or `false`, `tag` repeats (all must match),
//! `stale`, `dc`, `token` and whatever else an endpoint does not use is ignored as Consul ignores
//! it, a stray `%` stays as it is and bytes that are not UTF-8 become U+FFFD. Both share the
//! length bound, `index` and `wait` (capped at [`MAX_WAIT`]).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_api::parse_duration;

use super::blocking::{DEFAULT_WAIT, MAX_WAIT};
use super::error::Failure;

/// The longest query string read: far more than any read needs, and a bound on the work a
/// request can ask of the parser.
const MAX_QUERY_LEN: usize = 4096;

/// Which API a request speaks. The two share the parser, the read path and the headers, and
/// differ where Consul's clients expect Consul's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Native,
    Consul,
}

/// A read's query parameters: those every read understands, and the endpoint's own.
#[derive(Debug)]
pub struct ReadQuery {
    /// Block until the resource's index differs from this one.
    pub index: Option<u64>,
    /// How long to block: [`DEFAULT_WAIT`] unless `wait` says otherwise, at most [`MAX_WAIT`].
    pub wait: Duration,
    /// Linearizable read.
    pub consistent: bool,
    /// Native: refuse when this node last heard from the leader longer ago than this.
    pub max_stale: Option<Duration>,
    /// Consul: only instances whose health is passing (health endpoints).
    pub passing: bool,
    /// Consul: instances must carry every one of these tags (lower-cased).
    pub tags: Vec<String>,
    /// Consul: `node-meta` filters as `key:value`. Cairn's nodes have no meta, so any filter
    /// matches nothing.
    pub node_meta: Vec<(String, String)>,
    /// The other parameters: for the native dialect, the endpoint's own (named when parsing);
    /// for Consul's, everything else. A repeated one keeps its last value.
    pub params: BTreeMap<String, String>,
}

impl ReadQuery {
    /// Parses a native read's query string; `allowed` names the endpoint's own parameters, any
    /// other one is refused.
    pub fn native(raw: Option<&str>, allowed: &[&str]) -> Result<ReadQuery, Failure> {
        ReadQuery::parse(raw, Dialect::Native, allowed)
    }

    /// Parses a Consul request's query string.
    pub fn consul(raw: Option<&str>) -> Result<ReadQuery, Failure> {
        ReadQuery::parse(raw, Dialect::Consul, &[])
    }

    /// A parameter of the endpoint's own (see [`ReadQuery::params`]).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    fn parse(raw: Option<&str>, dialect: Dialect, allowed: &[&str]) -> Result<ReadQuery, Failure> {
        let mut q = ReadQuery {
            index: None,
            wait: DEFAULT_WAIT,
            consistent: false,
            max_stale: None,
            passing: false,
            tags: Vec::new(),
            node_meta: Vec::new(),
            params: BTreeMap::new(),
        };
        let Some(raw) = raw else {
            return Ok(q);
        };
        if raw.len() > MAX_QUERY_LEN {
            return Err(Failure::invalid(format!(
                "query string longer than {MAX_QUERY_LEN} bytes"
            )));
        }
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (decode(k, dialect)?, decode(v, dialect)?);
            match (dialect, k.as_str()) {
                (_, "index") => {
                    q.index = Some(v.parse().map_err(|_| {
                        Failure::invalid(match dialect {
                            Dialect::Native => {
                                format!("index: {v:?} is not a non-negative integer")
                            }
                            Dialect::Consul => format!("index: {v:?} is not a number"),
                        })
                    })?)
                }
                (_, "wait") => {
                    let d =
                        parse_duration(&v).map_err(|e| Failure::invalid(format!("wait: {e}")))?;
                    q.wait = d.min(MAX_WAIT);
                }
                (Dialect::Native, "consistent") => q.consistent = strict_flag("consistent", &v)?,
                // Reads are served from the local replica anyway; the flag is checked, not used.
                (Dialect::Native, "stale") => {
                    strict_flag("stale", &v)?;
                }
                (Dialect::Native, "max_stale") => {
                    q.max_stale = Some(
                        parse_duration(&v)
                            .map_err(|e| Failure::invalid(format!("max_stale: {e}")))?,
                    )
                }
                // The token is read by the ACL layer (`acl::secret_of`).
                (Dialect::Native, "token") => {}
                (Dialect::Native, name) if allowed.contains(&name) => {
                    q.params.insert(k, v);
                }
                (Dialect::Native, name) => {
                    return Err(Failure::invalid(format!(
                        "unknown query parameter {name:?}"
                    )))
                }
                (Dialect::Consul, "consistent") => q.consistent = true,
                (Dialect::Consul, "passing") => q.passing = !matches!(v.as_str(), "0" | "false"),
                (Dialect::Consul, "tag") => q.tags.push(v.to_ascii_lowercase()),
                (Dialect::Consul, "node-meta") => {
                    let (mk, mv) = v.split_once(':').unwrap_or((v.as_str(), ""));
                    q.node_meta.push((mk.to_owned(), mv.to_owned()));
                }
                // `stale` is the default; tokens are accepted until ACLs exist; the rest is kept
                // for the endpoint (`note`, `enable`, `reason`) or ignored, as Consul ignores
                // what an endpoint does not use.
                (Dialect::Consul, _) => {
                    q.params.insert(k, v);
                }
            }
        }
        Ok(q)
    }
}

/// A native flag: present with no value, empty, or a true-ish value.
fn strict_flag(name: &str, value: &str) -> Result<bool, Failure> {
    match value {
        "" | "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(Failure::invalid(format!(
            "{name}: {other:?} is not a flag value"
        ))),
    }
}

/// Percent-decodes a key or a value (`+` is a space). A `%` not followed by two hex digits and
/// bytes that are not UTF-8 are errors in the native dialect; in Consul's, such a `%` stays as it
/// is and bad bytes become U+FFFD.
pub(super) fn decode(s: &str, dialect: Dialect) -> Result<String, Failure> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None if dialect == Dialect::Consul => out.push(b'%'),
                None => return Err(Failure::invalid("bad percent-encoding in the query string")),
            },
            b => out.push(b),
        }
        i += 1;
    }
    match dialect {
        Dialect::Native => {
            String::from_utf8(out).map_err(|_| Failure::invalid("the query string is not UTF-8"))
        }
        Dialect::Consul => Ok(String::from_utf8_lossy(&out).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(raw: &str) -> Result<ReadQuery, String> {
        ReadQuery::native(Some(raw), &["health", "tag"]).map_err(|f| f.0.message)
    }

    fn consul(raw: &str) -> ReadQuery {
        ReadQuery::consul(Some(raw)).unwrap()
    }

    #[test]
    fn both_dialects_read_index_and_wait_capped_at_max_wait() {
        for q in [
            native("index=7&wait=90s").unwrap(),
            consul("index=7&wait=90s"),
        ] {
            assert_eq!((q.index, q.wait), (Some(7), Duration::from_secs(90)));
        }
        assert_eq!(consul("wait=500ms").wait, Duration::from_millis(500));
        assert_eq!(consul("wait=11m").wait, MAX_WAIT);
        assert_eq!(native("wait=1h").unwrap().wait, MAX_WAIT);
        assert_eq!(ReadQuery::consul(None).unwrap().wait, DEFAULT_WAIT);
        assert_eq!(native("").unwrap().wait, DEFAULT_WAIT);
    }

    #[test]
    fn the_native_dialect_refuses_what_it_does_not_know() {
        assert_eq!(
            native("bogus=1").err().as_deref(),
            Some("unknown query parameter \"bogus\"")
        );
        assert_eq!(
            native("index=x").err().as_deref(),
            Some("index: \"x\" is not a non-negative integer")
        );
        assert_eq!(
            native("consistent=yes").err().as_deref(),
            Some("consistent: \"yes\" is not a flag value")
        );
        assert!(native("stale=2").is_err());
        assert!(native("wait=forever").is_err());
        assert_eq!(
            native("tag=%zz").err().as_deref(),
            Some("bad percent-encoding in the query string")
        );
        assert_eq!(
            native("tag=%ff").err().as_deref(),
            Some("the query string is not UTF-8")
        );
        assert!(native(&"a".repeat(MAX_QUERY_LEN + 1)).is_err());
        let q = native("consistent&stale=&health=passing&tag=a%2Bb+c&max_stale=2s").unwrap();
        assert!(q.consistent);
        assert_eq!(q.max_stale, Some(Duration::from_secs(2)));
        assert_eq!(
            (q.param("health"), q.param("tag")),
            (Some("passing"), Some("a+b c"))
        );
        assert!(!native("consistent=false").unwrap().consistent);
    }

    #[test]
    fn the_consul_dialect_keeps_consuls_leniencies() {
        for raw in ["consistent", "consistent=", "consistent=1", "consistent=0"] {
            assert!(consul(raw).consistent, "{raw}");
        }
        for raw in [
            "passing",
            "passing=",
            "passing=1",
            "passing=true",
            "passing=x",
        ] {
            assert!(consul(raw).passing, "{raw}");
        }
        for raw in ["passing=0", "passing=false"] {
            assert!(!consul(raw).passing, "{raw}");
        }
        let q = consul("stale&dc=dc1&token=t&tag=V1&tag=eu&node-meta=rack:r1&note=a%zz%4");
        assert_eq!(q.tags, ["v1", "eu"]);
        assert_eq!(q.node_meta, [("rack".to_owned(), "r1".to_owned())]);
        assert_eq!(q.param("note"), Some("a%zz%4"));
        assert_eq!(q.param("stale"), Some(""));
        assert_eq!(consul("note=%ff").param("note"), Some("\u{fffd}"));
        assert_eq!(
            ReadQuery::consul(Some("index=x"))
                .err()
                .map(|f| f.0.message),
            Some("index: \"x\" is not a number".to_owned())
        );
        assert!(ReadQuery::consul(Some("wait=soon")).is_err());
    }
}
