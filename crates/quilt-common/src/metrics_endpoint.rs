//! Serving a Prometheus registry at `GET /metrics`, the same way for every daemon.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
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

/// Serves `registry` as Prometheus text at `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A daemon's metrics endpoint, serving until the daemon stops; see [`spawn`].
pub struct MetricsEndpoint {
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Serves `registry` at `addr` (nothing when `None`) on a task of its own until `stop`
/// turns true. Binding fails here, naming the address.
pub async fn spawn(
    addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<MetricsEndpoint> {
    let Some(addr) = addr else {
        return Ok(MetricsEndpoint { task: None });
    };
    let listener = bind(addr).await?;
    tracing::info!(metrics_addr = %addr, "serving metrics at /metrics");
    let task = tokio::spawn(serve(listener, registry, async move {
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

async fn render(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        encode(&registry),
    )
}
