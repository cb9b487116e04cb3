//! The HTTP API (docs/http-api.md): routes, handlers and the wire types.
//!
//! - [`types`]: request and answer JSON shapes, for clients too.
//! - [`request`]: request bodies to typed values.
//! - [`nodes`]: register, heartbeat, deregister, list, get, delete.
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
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quilt_common::ClusterNetwork;
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
    /// The cluster CIDR and node prefix length leases are made from.
    pub plan: ClusterNetwork,
    pub heartbeat_timeout: Duration,
    /// A watch stream silent for this long sends a keepalive line.
    pub watch_keepalive: Duration,
    /// The caps on open watch streams.
    pub watch_slots: Arc<watch::WatchSlots>,
    /// Turns true when the server stops; watch streams end then.
    pub stopping: signal::Receiver<bool>,
}

/// Largest request head (request line and headers) answered; past it, 431.
pub const HEAD_LIMIT: usize = 16 * 1024;

/// Every route of the API. A request (other than a watch) has `request_timeout` to send
/// its body and be answered.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/api/nodes/register", post(nodes::register))
        .route("/api/nodes", get(nodes::list))
        .route("/api/nodes/watch", get(watch::watch))
        .route("/api/nodes/{id}", get(nodes::get).delete(nodes::delete))
        .route("/api/nodes/{id}/heartbeat", post(nodes::heartbeat))
        .route("/api/nodes/{id}/deregister", post(nodes::deregister))
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(request::BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            request_timeout,
            limit_time,
        ))
        .layer(axum::middleware::from_fn(limit_head))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Refuses a request whose head is larger than [`HEAD_LIMIT`] with 431 and a JSON error.
async fn limit_head(request: Request, next: Next) -> Response {
    let head = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > HEAD_LIMIT {
        return ApiError::HeadTooLarge {
            size: head,
            limit: HEAD_LIMIT,
        }
        .into_response();
    }
    next.run(request).await
}

/// Answers 408 when a request (other than the watch stream, which lasts) is not read and
/// answered within the request timeout: a client sending its body slowly holds nothing.
async fn limit_time(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/api/nodes/watch" {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
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
                "method {} is not allowed on {}",
                quilt_common::cluster::excerpt(method.as_str()),
                quilt_common::cluster::excerpt(uri.path())
            ),
        }),
    )
        .into_response()
}
