//! Prometheus metrics, served as text at `GET /metrics`.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub code: String,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Mutex<Registry>,
    pub nodes: Family<StatusLabel, Gauge>,
    pub registrations: Family<ResultLabel, Counter>,
    pub heartbeats: Counter,
    pub nodes_marked_down: Counter,
    pub watchers: Gauge,
    pub revision: Gauge,
    pub requests: LatencyFamily,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("quilt_control");
        let nodes = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "nodes",
            "Registered nodes by status (up, down)",
            nodes.clone(),
        );
        let registrations = Family::<ResultLabel, Counter>::default();
        registry.register(
            "registrations",
            "Registrations answered, by result (created, renewed, refused)",
            registrations.clone(),
        );
        let heartbeats = Counter::default();
        registry.register("heartbeats", "Heartbeats accepted", heartbeats.clone());
        let nodes_marked_down = Counter::default();
        registry.register(
            "nodes_marked_down",
            "Nodes the heartbeat monitor marked down",
            nodes_marked_down.clone(),
        );
        let watchers = Gauge::default();
        registry.register("watchers", "Open watch streams", watchers.clone());
        let revision = Gauge::default();
        registry.register("revision", "Revision of the last change", revision.clone());
        let requests: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests (to the headers, for the watch stream)",
            requests.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            nodes,
            registrations,
            heartbeats,
            nodes_marked_down,
            watchers,
            revision,
            requests,
        }
    }

    pub fn registered(&self, result: &str) {
        self.registrations
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn set_nodes(&self, up: u64, down: u64) {
        for (status, n) in [("up", up), ("down", down)] {
            self.nodes
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The methods the API answers, as label values; any other method counts as `other`, so
/// no client can add label values (and memory) with made-up methods.
const METHODS: [&str; 7] = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"];

/// The `method` label of `method`: one of [`METHODS`] or `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    METHODS
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// Middleware: records each request's latency by method, route and status code. Every
/// label comes from a closed set: the route is the router's pattern (or `unmatched`).
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            code: response.status().as_str().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Counts a watcher while it lives.
pub struct WatcherGuard(Gauge);

impl WatcherGuard {
    pub fn new(metrics: &Metrics) -> Self {
        metrics.watchers.inc();
        Self(metrics.watchers.clone())
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        let made_up = axum::http::Method::from_bytes(b"XYZZY").unwrap();
        assert_eq!(method_label(&made_up), "other");
        assert_eq!(method_label(&axum::http::Method::DELETE), "DELETE");
    }
}
