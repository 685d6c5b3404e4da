//! Leaf: the web UI at `/ui/`: a page of plain HTML, CSS and JavaScript modules, built into the
//! binary (no CDN, nothing fetched at run time), that reads and writes through the native API
//! with the token the user gives it.
//!
//! The assets hold no data, so they need no token (as `/v1/openapi.json`); every piece of data
//! the page shows comes from an API call that carries the token and is filtered or refused as
//! any other client's would be. Every answer here carries a Content-Security-Policy that allows
//! only this origin's scripts, styles and API (no inline script, no `eval`, no frame), so that
//! data shown by the page (instance meta and check output are written by whoever registers)
//! cannot run as code even if a view slipped; the views only ever set it as text.
//!
//! Caching: `Cache-Control: no-cache` with a strong `ETag` (a hash of the asset), so a browser
//! revalidates each asset and gets a 304 until the binary serving it changes.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::error::Failure;
use super::path::Path;
use super::state::AppState;

/// What the UI's pages may load and reach: this origin only, and nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// An [`Asset`] of `node/ui/`, embedded under its own name.
macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("../../ui/", $name)),
        }
    };
}

/// Every file of the UI. `index.html` is served for `/ui/` itself; the views are chosen by the
/// URL's fragment (`#/services/web`), so no other path needs it.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("services.js", "text/javascript; charset=utf-8"),
    asset!("service.js", "text/javascript; charset=utf-8"),
    asset!("cluster.js", "text/javascript; charset=utf-8"),
];

/// Each asset's `ETag`, in [`ASSETS`]' order: a quoted hash of its bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = ring::digest::digest(&ring::digest::SHA256, a.body.as_bytes());
            let hex: String = digest.as_ref()[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
        })
        .collect()
});

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(to_ui))
        .route("/ui", get(to_ui))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
}

/// `/` and `/ui` lead to the UI: nothing else is served there.
async fn to_ui() -> Redirect {
    Redirect::to("/ui/")
}

async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    ASSETS
        .iter()
        .position(|a| a.name == file)
        .map(|i| serve(i, &headers))
        .ok_or_else(Failure::no_such_endpoint)
}

/// Asset `i`, or 304 when the browser's copy is current.
fn serve(i: usize, request: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag.to_str().unwrap_or_default() || t.trim() == "*")
        });
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = res.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for line in a.body.lines().filter(|l| l.starts_with("import ")) {
                let from = line
                    .rsplit_once("from ")
                    .map(|(_, f)| f)
                    .unwrap_or(line.trim_start_matches("import "));
                let file = from
                    .trim()
                    .trim_end_matches(';')
                    .trim_matches(|c| c == '"' || c == '\'')
                    .trim_start_matches("./");
                assert!(served.contains(&file), "{} imports {file}", a.name);
            }
        }
    }

    #[test]
    fn no_view_sets_html_from_a_string() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for bad in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!a.body.contains(bad), "{} uses {bad}", a.name);
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = ASSETS[0].body;
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("style="), "inline style");
        assert!(!html.contains("<style"), "inline style");
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
