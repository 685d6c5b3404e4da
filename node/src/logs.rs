//! The agent's log lines: text or JSON (`--log-format`), and the id of the HTTP request a line
//! was written for.
//!
//! The request id is not a span: a span per request formats its fields and is entered and left
//! on every poll, whether or not the request ever logs (the first version of the HTTP layer,
//! with one, cost a read 8.7% in callgrind; see BENCHMARKS.md). Instead the formatter asks, only when a line
//! is written, for the task-local id the HTTP layer sets ([`cairn_raft::stats::request_id`]) and
//! adds it to the line: a `request_id` key in JSON, ` request_id=<id>` at the end of a text line.
//! The id is 1-64 of `A-Za-z0-9-_.:`, so it needs no escaping in either.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the global subscriber: `filter` (already validated), lines in `format` on stderr.
pub fn init(filter: tracing_subscriber::EnvFilter, format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let inner = tracing_subscriber::fmt::format()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            logs.event_format(WithRequestId { inner, json: false })
                .init()
        }
        // One object a line: the line's fields flattened beside `message`.
        LogFormat::Json => {
            let inner = tracing_subscriber::fmt::format().json().flatten_event(true);
            logs.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(WithRequestId { inner, json: true })
                .init()
        }
    }
}

/// A line format that adds the current request's id to `inner`'s lines.
pub struct WithRequestId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(id) = cairn_raft::stats::request_id() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_id(&line, &id, self.json))
    }
}

/// `line` (one formatted line, newline included) with `id` added.
fn with_id(line: &str, id: &str, json: bool) -> String {
    if json {
        if let Some(rest) = line.strip_prefix('{') {
            let sep = if rest.starts_with('}') { "" } else { "," };
            return format!("{{\"request_id\":\"{id}\"{sep}{rest}");
        }
    }
    let body = line.strip_suffix('\n').unwrap_or(line);
    format!("{body} request_id={id}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_goes_first_in_json_and_last_in_text() {
        let json = with_id("{\"level\":\"INFO\",\"message\":\"m\"}\n", "r-1", true);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["message"], "m");
        assert_eq!(with_id("{}\n", "r-1", true), "{\"request_id\":\"r-1\"}\n");
        assert_eq!(
            with_id("2026 INFO x: m\n", "r-1", false),
            "2026 INFO x: m request_id=r-1\n"
        );
    }
}
