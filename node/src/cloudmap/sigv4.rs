//! AWS Signature Version 4: the access keys the API accepts ([`Credentials`]) and the check of a
//! request's signature against them ([`verify`]).
//!
//! The server recomputes the signature from the request as received (method, path, query, the
//! headers the client says it signed, the body's SHA-256) with the key's secret and compares it
//! in constant time. The region and service in the credential scope are taken as the client
//! gives them: Cairn has no regions, and any name a client was configured with is accepted.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, Method, Uri};
use ring::{digest, hmac};
use serde::Deserialize;

use super::error::CloudMapError;
use cairn_registry::acl::Secret;

/// How far a request's `X-Amz-Date` may be from this node's clock, as AWS allows.
pub const MAX_CLOCK_SKEW_S: i64 = 15 * 60;
/// Most access keys a credentials file may hold.
const MAX_KEYS: usize = 10_000;
/// Longest access key id and secret read (AWS's ids are 16-128 characters).
const MAX_KEY_LEN: usize = 128;
/// Longest `Authorization` header looked at; a real one is a few hundred bytes.
const MAX_AUTHORIZATION_LEN: usize = 4096;

/// The access keys the API accepts, each with the Cairn token (if any) whose rights it has.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(Arc<BTreeMap<String, AccessKey>>);

/// One access key's secret and the Cairn token requests signed with it act as.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    secret: Secret,
    /// With --acl: the token whose rights the key has; without one, the anonymous token's.
    pub token: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The credentials file: `[[key]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
}

impl Credentials {
    /// Reads a credentials file's text; `acl` says whether tokens may be named (they mean
    /// nothing with ACLs off, and naming one there is a mistake worth telling).
    pub fn parse(text: &str, acl: bool) -> Result<Credentials, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.key.is_empty() {
            return Err("no [[key]] table: requests could never be signed".into());
        }
        if file.key.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        let mut keys = BTreeMap::new();
        for (i, k) in file.key.into_iter().enumerate() {
            let ok = |s: &str| {
                !s.is_empty() && s.len() <= MAX_KEY_LEN && s.bytes().all(|b| b.is_ascii_graphic())
            };
            if !ok(&k.access_key_id) {
                return Err(format!(
                    "key[{i}].access_key_id: must be 1-{MAX_KEY_LEN} printable characters without spaces"
                ));
            }
            if !ok(&k.secret_access_key) {
                return Err(format!(
                    "key[{i}].secret_access_key: must be 1-{MAX_KEY_LEN} printable characters without spaces"
                ));
            }
            if k.token.is_some() && !acl {
                return Err(format!(
                    "key[{i}].token: names a token but ACLs are off (--acl)"
                ));
            }
            let entry = AccessKey {
                secret: Secret::new(k.secret_access_key),
                token: k.token.map(Secret::new),
            };
            if keys.insert(k.access_key_id.clone(), entry).is_some() {
                return Err(format!(
                    "key[{i}].access_key_id: {:?} is given twice",
                    k.access_key_id
                ));
            }
        }
        Ok(Credentials(Arc::new(keys)))
    }
}

/// The parts of the `Authorization` header.
struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let access_key = scope.next()?;
    let date = scope.next()?;
    let region = scope.next()?;
    let service = scope.next()?;
    if scope.next()? != "aws4_request" || scope.next().is_some() {
        return None;
    }
    Some(Authorization {
        access_key,
        date,
        region,
        service,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The query string in SigV4's canonical form: pairs sorted by name, then value.
fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Parses `YYYYMMDDTHHMMSSZ` to seconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Checks the request's SigV4 signature; answers the key it was signed with.
pub fn verify<'c>(
    credentials: &'c Credentials,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now_s: i64,
) -> Result<&'c AccessKey, CloudMapError> {
    let unrecognized = || {
        CloudMapError::new(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    let invalid = |m: &str| CloudMapError::new("InvalidSignatureException", m);
    let Some(value) = headers.get("authorization") else {
        return Err(CloudMapError::new(
            "UnrecognizedClientException",
            "The request is not signed: an AWS Signature Version 4 Authorization header is required.",
        ));
    };
    let value = value
        .to_str()
        .ok()
        .filter(|v| v.len() <= MAX_AUTHORIZATION_LEN)
        .ok_or_else(|| invalid("The Authorization header is malformed."))?;
    let auth = parse_authorization(value)
        .ok_or_else(|| invalid("The Authorization header is not an AWS4-HMAC-SHA256 signature."))?;
    let key = credentials
        .0
        .get(auth.access_key)
        .ok_or_else(unrecognized)?;
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("The request has no X-Amz-Date header."))?;
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| invalid("X-Amz-Date is not of the form YYYYMMDDTHHMMSSZ."))?;
    if (when - now_s).abs() > MAX_CLOCK_SKEW_S {
        return Err(invalid(&format!(
            "Signature expired: {amz_date} is more than 15 minutes from the server's time."
        )));
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(invalid(
            "The credential scope's date is not the date of X-Amz-Date.",
        ));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(invalid("The Host header must be signed."));
    }
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v.as_bytes());
                v.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(invalid(&format!("The signed header {name} is missing.")));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        uri.path(),
        canonical_query(uri.query()),
        auth.signed_headers.join(";"),
        sha256_hex(body),
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac(
        format!("AWS4{}", key.secret.expose()).as_bytes(),
        auth.date.as_bytes(),
    );
    let k_region = hmac(k_date.as_ref(), auth.region.as_bytes());
    let k_service = hmac(k_region.as_ref(), auth.service.as_bytes());
    let k_signing = hmac(k_service.as_ref(), b"aws4_request");
    // hmac::verify compares in constant time.
    let given = unhex(auth.signature).unwrap_or_default();
    let signing = hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref());
    if hmac::verify(&signing, string_to_sign.as_bytes(), &given).is_err() {
        return Err(invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example (the `get-vanilla` case of the SigV4 test suite): the same key,
    /// date and request must give the same signature.
    #[test]
    fn the_aws_test_suite_vanilla_request_verifies() {
        let creds = Credentials::parse(
            "[[key]]\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\"\n",
            false,
        )
        .expect("parses");
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().expect("header"));
        headers.insert("x-amz-date", "20150830T123600Z".parse().expect("header"));
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .parse()
                .expect("header"),
        );
        let uri: Uri = "/".parse().expect("uri");
        let now = parse_amz_date("20150830T123600Z").expect("date");
        assert!(verify(&creds, &Method::GET, &uri, &headers, b"", now).is_ok());
        // One byte of body more, a wrong time, an unknown key: refused.
        let e = verify(&creds, &Method::GET, &uri, &headers, b"x", now).err();
        assert_eq!(e.map(|e| e.kind), Some("InvalidSignatureException"));
        let e = verify(&creds, &Method::GET, &uri, &headers, b"", now + 901).err();
        assert_eq!(e.map(|e| e.kind), Some("InvalidSignatureException"));
        let other = Credentials::parse(
            "[[key]]\naccess_key_id = \"AKIDOTHER\"\nsecret_access_key = \"s\"\n",
            false,
        )
        .expect("parses");
        let e = verify(&other, &Method::GET, &uri, &headers, b"", now).err();
        assert_eq!(e.map(|e| e.kind), Some("UnrecognizedClientException"));
    }

    #[test]
    fn amz_dates_are_read_as_utc() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
    }

    #[test]
    fn bad_credentials_files_are_refused_with_the_reason() {
        let e = |t: &str| Credentials::parse(t, false).err().unwrap_or_default();
        assert!(e("").contains("no [[key]]"));
        assert!(e("[[key]]\naccess_key_id = \"a\"\n").contains("secret_access_key"));
        assert!(
            e("[[key]]\naccess_key_id = \"a b\"\nsecret_access_key = \"s\"\n")
                .contains("access_key_id")
        );
        assert!(
            e("[[key]]\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\ntoken = \"t\"\n")
                .contains("ACLs are off")
        );
        let twice = "[[key]]\naccess_key_id = \"a\"\nsecret_access_key = \"s\"\n";
        assert!(e(&format!("{twice}{twice}")).contains("twice"));
    }
}
