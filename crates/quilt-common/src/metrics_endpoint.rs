//! Serving a Prometheus registry at `GET /metrics`, and the daemon's [`Health`] at
//! `GET /health`, the same way for every daemon.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Binds `addr` for metrics, naming the address when that fails.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on metrics address {addr}: {e}"),
        )
    })
}

/// Whether a daemon does its work, as `GET /health` tells: healthy, or degraded for a
/// reason an operator can act on. Cheap to clone; every clone is the same state.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Marks the daemon degraded for `reason`.
    pub fn degraded(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    /// Marks the daemon healthy.
    pub fn healthy(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the daemon is degraded, if it is.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
struct Served {
    registry: Arc<Registry>,
    health: Health,
}

/// Serves `registry` as Prometheus text at `/metrics` and `health` at `/health` on
/// `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(report_health))
        .with_state(Served { registry, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A daemon's metrics endpoint, serving until the daemon stops; see [`spawn`].
pub struct MetricsEndpoint {
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Serves `registry` at `addr` (nothing when `None`) on a task of its own until `stop`
/// turns true, with `/health` always healthy. Binding fails here, naming the address.
pub async fn spawn(
    addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<MetricsEndpoint> {
    spawn_with_health(addr, registry, Health::default(), stop).await
}

/// [`spawn`], with `/health` answering what `health` says.
pub async fn spawn_with_health(
    addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<MetricsEndpoint> {
    let Some(addr) = addr else {
        return Ok(MetricsEndpoint { task: None });
    };
    let listener = bind(addr).await?;
    tracing::info!(metrics_addr = %addr, "serving metrics at /metrics");
    let task = tokio::spawn(serve(listener, registry, health, async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }));
    Ok(MetricsEndpoint { task: Some(task) })
}

impl MetricsEndpoint {
    /// Waits for the endpoint to stop (after `stop`), logging a failure or a panic.
    pub async fn finish(self) {
        let Some(task) = self.task else { return };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the metrics endpoint failed"),
            Err(e) => tracing::error!(error = %e, "the metrics endpoint panicked"),
        }
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    text
}

async fn render(State(served): State<Served>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        encode(&served.registry),
    )
}

/// `GET /health`'s answer, in the words the control plane's `/health` uses.
#[derive(serde::Serialize)]
struct HealthBody {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// 200 `{"status":"ok"}`, or 503 `{"status":"degraded","reason":...}`.
async fn report_health(State(served): State<Served>) -> impl IntoResponse {
    match served.health.reason() {
        None => (
            StatusCode::OK,
            axum::Json(HealthBody {
                status: "ok",
                reason: None,
            }),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(HealthBody {
                status: "degraded",
                reason: Some(reason),
            }),
        ),
    }
}
