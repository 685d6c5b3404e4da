//! The one layer in front of every route that sees each request whole: its id and its latency by route, method and status class.
//!
//! Written as a plain tower [`Layer`]/[`Service`] with a named future rather than an axum
//! `from_fn` middleware: `from_fn` boxes a future and clones the inner service for every request
//! (callgrind put that at ~10,000 instructions a request, 12% of a read). Here a request costs
//! two clock reads, a route lookup (the matched path interned once as a `&'static str`, so no
//! label is allocated per request), one histogram observation, and its id (no span: see
//! `crate::logs`).
//!
//! The request id is the client's `X-Request-Id` when that is sane (see
//! [`cairn_raft::stats::valid_request_id`]), else one made here: a random per-process prefix and
//! a counter. It is answered in `X-Request-Id`, set task-local while the request runs (so the
//! log format adds it to every line the request writes: see `crate::logs`), and travels with a
//! forwarded write to the leader, whose log line of the write shows it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Timeout;
use tower::{Layer, Service};

/// The request id's header, both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of a request no route matched (a 404).
const UNMATCHED: &str = "unmatched";

/// The most distinct routes the route table interns; each is a route pattern of the router
/// (`/v1/services/{service}`), never a raw path, so the real number is the router's routes (~80).
const MAX_ROUTES: usize = 512;

/// A request's labels: the route pattern, the method and the status class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: &'static str,
}

/// The HTTP API's request metrics, and what request ids are made from.
#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Histogram>,
    /// Route patterns seen so far, interned (see [`MAX_ROUTES`]).
    routes: RwLock<HashMap<&'static str, ()>>,
    id_prefix: u32,
    next_id: AtomicU64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            // 50 µs to ~3.3 s: a read from the replica takes tens of microseconds, a write a
            // commit (milliseconds), a blocking read up to its wait (those land in +Inf).
            requests: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 4.0, 9))
            }),
            routes: RwLock::new(HashMap::new()),
            id_prefix: rand::random(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cairn_http_request_duration_seconds",
            "HTTP API requests by route pattern, method and status class, and the time to each response's head",
            self.requests.clone(),
        );
    }

    /// `path` as a `&'static str`, interned on first sight; [`UNMATCHED`] past [`MAX_ROUTES`].
    fn route(&self, path: &str) -> &'static str {
        if let Some((&route, _)) = self.routes.read().get_key_value(path) {
            return route;
        }
        let mut routes = self.routes.write();
        if let Some((&route, _)) = routes.get_key_value(path) {
            return route;
        }
        if routes.len() >= MAX_ROUTES {
            return UNMATCHED;
        }
        let route: &'static str = Box::leak(path.to_owned().into_boxed_str());
        routes.insert(route, ());
        route
    }

    /// The id of a request that brought none (or none usable): 24 hex digits, a random
    /// per-process prefix and a counter, so unique per process and, by the prefix, across
    /// processes in practice. Written by hand: `format!` cost more than the rest of the id.
    fn new_id(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 24];
        let (prefix, counter) = buf.split_at_mut(8);
        for (i, b) in prefix.iter_mut().enumerate() {
            *b = HEX[((self.id_prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, b) in counter.iter_mut().enumerate() {
            *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// The layer: wraps every route of the router (see `super::router`). It also enforces the
/// request time-out (see `super::deadline`): one layer per route rather than two, since axum
/// boxes and clones each route layer's service for every request.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<HttpMetrics>,
    /// `--http-request-timeout`.
    pub request_timeout: Duration,
}

impl<S> Layer<S> for Telemetry {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

#[derive(Clone)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
    request_timeout: Duration,
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The request's id: the client's when sane, else a new one.
fn request_id(req: &Request, metrics: &HttpMetrics) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(v) if v.to_str().is_ok_and(cairn_raft::stats::valid_request_id) => v.clone(),
        _ => metrics.new_id(),
    }
}

impl<S> Service<Request> for TelemetryService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let metrics = &self.metrics;
        let route = match req.extensions().get::<MatchedPath>() {
            Some(p) => metrics.route(p.as_str()),
            None => UNMATCHED,
        };
        let method = method_label(req.method());
        let id = request_id(&req, metrics);
        let budget = self.request_timeout + super::deadline::blocking_wait(req.uri().query());
        let inner = self.inner.call(req);
        TelemetryFuture {
            inner: tokio::time::timeout(
                budget,
                cairn_raft::stats::with_request_id(id.clone(), inner),
            ),
            request_timeout: self.request_timeout,
            started,
            route,
            method,
            header: Some(id),
            metrics: metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`TelemetryService`]: the route's future, run as the request (its
    /// id task-local, for the log lines and a forwarded write), then counted and given its
    /// `X-Request-Id`.
    pub struct TelemetryFuture<F> {
        #[pin]
        inner: Timeout<TaskLocalFuture<HeaderValue, F>>,
        request_timeout: Duration,
        started: Instant,
        route: &'static str,
        method: &'static str,
        header: Option<HeaderValue>,
        metrics: Arc<HttpMetrics>,
    }
}

impl<F, E> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(Ok(r))) => r,
            Poll::Ready(Err(_elapsed)) => super::deadline::timed_out(*this.request_timeout),
        };
        let elapsed = this.started.elapsed();
        let status = response.status().as_u16();
        this.metrics
            .requests
            .get_or_create(&RequestLabels {
                route: this.route,
                method: this.method,
                status: status_label(status),
            })
            .observe(elapsed.as_secs_f64());
        tracing::debug!(
            method = *this.method,
            route = *this.route,
            status,
            micros = elapsed.as_micros() as u64,
            "request"
        );
        if let Some(header) = this.header.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), header);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_interned_once_and_bounded() {
        let m = HttpMetrics::default();
        let a = m.route("/v1/services/{service}");
        let b = m.route(&String::from("/v1/services/{service}"));
        assert!(
            std::ptr::eq(a, b),
            "the same pattern is one interned string"
        );
        for i in 0..MAX_ROUTES + 10 {
            m.route(&format!("/r{i}"));
        }
        assert_eq!(m.route("/one/too/many"), UNMATCHED);
        assert!(m.routes.read().len() <= MAX_ROUTES);
    }

    #[test]
    fn made_ids_are_distinct_and_valid() {
        let m = HttpMetrics::default();
        let (a, b) = (m.new_id(), m.new_id());
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 24);
        assert!(cairn_raft::stats::valid_request_id(a), "{a}");
    }
}
