//! Durations as people and Consul write them: `250ms`, `10s`, `1m30s`, `2h`.

use std::time::Duration;

/// A duration string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"500ms\", \"10s\", \"1m30s\")")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// The longest duration accepted anywhere in the API: a day. Longer values are almost certainly
/// mistakes (a unit left off), and bounding them keeps timer arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses a sequence of `<number><unit>` pairs, units `ns`, `us`, `ms`, `s`, `m`, `h`.
/// A bare number is taken as seconds, as Consul does for some fields.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.chars().take(64).collect(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.len() > 64 {
        return Err(err("too long"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return check_max(Duration::from_secs(secs)).ok_or_else(|| err("longer than a day"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..digits].parse().map_err(|_| err("bad number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        let part = value * nanos_per_unit;
        if !part.is_finite() || part > MAX_DURATION.as_nanos() as f64 {
            return Err(err("longer than a day"));
        }
        total += Duration::from_nanos(part as u64);
    }
    check_max(total).ok_or_else(|| err("longer than a day"))
}

fn check_max(d: Duration) -> Option<Duration> {
    (d <= MAX_DURATION).then_some(d)
}

/// Formats a duration the way [`parse_duration`] reads it back: `1m30s`, `250ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn rejects_garbage_and_huge_values() {
        for bad in [
            "",
            "s",
            "10x",
            "ms10",
            "1e999s",
            "25h",
            "-1s",
            "1..2s",
            "99999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [0, 250, 1000, 90_000, 3_600_000, 3_661_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
