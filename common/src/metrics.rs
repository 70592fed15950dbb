//! The HTTP port every Cairn process can serve (`--metrics-listen`): Prometheus text at
//! `/metrics`, liveness at `/healthz`, readiness at `/readyz`.
//!
//! Figures are recorded through the `metrics` facade into one process-wide Prometheus recorder
//! ([`handle`]); counters and histograms are updated where things happen, and gauges of state
//! (Raft indexes, scrub figures, capacity) are set by the process's [`Probe`] just before each
//! render, so a scrape always sees the present. Every gRPC server records its calls with
//! [`RpcMetricsLayer`]: `cairn_rpc_requests_total{service,method,outcome}` and the histogram
//! `cairn_rpc_duration_seconds{service,method}`. Label values a request can choose (the
//! method) are bounded: at most [`MAX_METHOD_LABELS`] distinct ones, the rest count as
//! `other`.
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

/// Histogram buckets in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Distinct `method` label values recorded before the rest count as `other`.
pub const MAX_METHOD_LABELS: usize = 256;

/// The process-wide recorder's handle, installing the recorder on first use. (Several nodes in
/// one test process share it.)
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(BUCKETS) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metrics buckets refused; histograms become summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "a metrics recorder was already installed");
        }
        handle
    })
}

/// Seconds from the Unix-ms time `unix_ms` to now, as a gauge shows an age (0 for 0: never).
pub fn age_secs(unix_ms: u64) -> f64 {
    if unix_ms == 0 {
        return 0.0;
    }
    crate::time::unix_ms().saturating_sub(unix_ms) as f64 / 1000.0
}

/// What a process adds to its HTTP port: fresh gauges before a render, and its readiness.
pub trait Probe: Send + Sync + 'static {
    /// Describes the process's own metrics (their `# HELP` lines); called once, at start.
    fn describe(&self);
    /// Sets the gauges of present state (called before every `/metrics` render).
    fn refresh(&self) -> impl Future<Output = ()> + Send;
    /// `Ok` when the process can do its job; else why not (the `/readyz` body).
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
}

async fn metrics_page<P: Probe>(State(probe): State<Arc<P>>) -> (StatusCode, String) {
    let h = handle();
    probe.refresh().await;
    h.run_upkeep();
    (StatusCode::OK, h.render())
}

async fn readyz<P: Probe>(State(probe): State<Arc<P>>) -> (StatusCode, String) {
    match probe.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The router of the HTTP port: `/metrics`, `/healthz`, `/readyz`, merged with `extra`.
/// Installs the recorder first: figures recorded before that are lost, so a process builds its
/// router before it serves anything.
pub fn router<P: Probe>(probe: Arc<P>, extra: Router) -> Router {
    handle();
    metrics::describe_counter!(
        "cairn_rpc_requests_total",
        "gRPC calls served, by service, method and outcome"
    );
    metrics::describe_histogram!(
        "cairn_rpc_duration_seconds",
        metrics::Unit::Seconds,
        "Time to serve a gRPC call, by service and method"
    );
    probe.describe();
    Router::new()
        .route("/metrics", get(metrics_page::<P>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<P>))
        .with_state(probe)
        .merge(extra)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "metrics HTTP port listening");
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics HTTP port failed");
    }
}

/// Records every gRPC call of a server: count by outcome and latency by method.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    service: &'static str,
}

impl RpcMetricsLayer {
    /// `service`: the label of this server's calls (`meta`, `chunk`).
    pub fn new(service: &'static str) -> RpcMetricsLayer {
        RpcMetricsLayer { service }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    service: &'static str,
}

/// The method label of a request path (`/cairn.MetaService/Lookup` → `Lookup`), bounded. On
/// the path of every call: a known method is a read-locked lookup and no allocation; each of the
/// at most [`MAX_METHOD_LABELS`] methods is interned once (leaked: a bounded, process-long set).
fn method_label(path: &str) -> &'static str {
    static SEEN: RwLock<Option<HashSet<&'static str>>> = RwLock::new(None);
    let method = path.rsplit('/').next().unwrap_or("");
    let valid = !method.is_empty()
        && method.len() <= 64
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return "other";
    }
    let known = SEEN.read().unwrap_or_else(|e| e.into_inner());
    if let Some(&m) = known.as_ref().and_then(|s| s.get(method)) {
        return m;
    }
    drop(known);
    let mut seen = SEEN.write().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if let Some(&m) = seen.get(method) {
        return m;
    }
    if seen.len() >= MAX_METHOD_LABELS {
        return "other";
    }
    let m: &'static str = Box::leak(method.to_owned().into_boxed_str());
    seen.insert(m);
    m
}

/// `ok`, or the gRPC status name of a failed call (as far as the response head tells: a
/// trailers-only error carries `grpc-status` in its headers).
fn outcome(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => "ok",
        Some(code) => match code.parse::<i32>().map(tonic::Code::from) {
            Ok(tonic::Code::Cancelled) => "cancelled",
            Ok(tonic::Code::InvalidArgument) => "invalid_argument",
            Ok(tonic::Code::DeadlineExceeded) => "deadline_exceeded",
            Ok(tonic::Code::NotFound) => "not_found",
            Ok(tonic::Code::AlreadyExists) => "already_exists",
            Ok(tonic::Code::PermissionDenied) => "permission_denied",
            Ok(tonic::Code::ResourceExhausted) => "resource_exhausted",
            Ok(tonic::Code::FailedPrecondition) => "failed_precondition",
            Ok(tonic::Code::Aborted) => "aborted",
            Ok(tonic::Code::Unavailable) => "unavailable",
            Ok(tonic::Code::Unimplemented) => "unimplemented",
            _ => "error",
        },
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let service = self.service;
        // The clone is ready only if polled; the polled one serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(async move {
            let res = inner.call(req).await;
            let outcome = match &res {
                Ok(r) => outcome(r.headers()),
                Err(_) => "error",
            };
            metrics::counter!("cairn_rpc_requests_total",
                "service" => service, "method" => method, "outcome" => outcome)
            .increment(1);
            metrics::histogram!("cairn_rpc_duration_seconds",
                "service" => service, "method" => method)
            .record(started.elapsed().as_secs_f64());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(method_label("/cairn.MetaService/Lookup"), "Lookup");
        assert_eq!(method_label("/x/../a.b"), "other");
        assert_eq!(method_label(&format!("/s/{}", "a".repeat(65))), "other");
        for i in 0..MAX_METHOD_LABELS + 10 {
            method_label(&format!("/s/M{i}"));
        }
        assert_eq!(method_label("/s/NeverSeenBefore"), "other");
        assert_eq!(
            method_label("/cairn.MetaService/Lookup"),
            "Lookup",
            "known ones stay"
        );
    }

    #[test]
    fn outcomes_from_the_response_head() {
        let mut h = http::HeaderMap::new();
        assert_eq!(outcome(&h), "ok");
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(outcome(&h), "not_found");
        h.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(outcome(&h), "error");
    }

    #[test]
    fn the_recorder_renders_what_was_recorded() {
        let h = handle();
        metrics::counter!("cairn_test_things_total", "kind" => "a").increment(3);
        metrics::histogram!("cairn_test_seconds").record(0.002);
        let text = h.render();
        assert!(
            text.contains("cairn_test_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cairn_test_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
    }
}
