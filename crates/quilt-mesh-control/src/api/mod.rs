//! The HTTP API (docs/http-api.md): routes, handlers and the wire types.
//!
//! - [`types`]: request and answer JSON shapes, for clients too.
//! - [`request`]: request bodies to typed values.
//! - [`nodes`]: register, heartbeat, list, get, delete.
//! - [`watch`]: the NDJSON watch stream.
//! - [`system`]: health and metrics.

pub mod nodes;
pub mod request;
pub mod system;
pub mod types;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use ipnet::Ipv4Net;
use tokio::sync::watch as signal;

use crate::auth::Policy;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub policy: Arc<Policy>,
    pub metrics: Arc<Metrics>,
    pub cluster_cidr: Ipv4Net,
    pub heartbeat_timeout: Duration,
    /// Turns true when the server stops; watch streams end then.
    pub stopping: signal::Receiver<bool>,
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/api/nodes/register", post(nodes::register))
        .route("/api/nodes", get(nodes::list))
        .route("/api/nodes/watch", get(watch::watch))
        .route("/api/nodes/{id}", get(nodes::get).delete(nodes::delete))
        .route("/api/nodes/{id}/heartbeat", post(nodes::heartbeat))
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(request::BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no such endpoint: {}",
        quilt_common::cluster::excerpt(uri.path())
    ))
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(types::ErrorBody {
            error: format!(
                "method {method} is not allowed on {}",
                quilt_common::cluster::excerpt(uri.path())
            ),
        }),
    )
        .into_response()
}
