//! `GET /health` and `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use super::types::Health;
use crate::error::ApiError;

/// `ok`; or `degraded` with the reason while SQLite writes fail (200: reads, heartbeats,
/// liveness and the watch stream go on meanwhile); or `not-ready` with the reason (503)
/// while this replica cannot reach etcd, so a load balancer or an agent goes elsewhere.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let health = state.registry.write_health();
    match health.problem() {
        None => (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
                reason: None,
            }),
        ),
        Some(reason) if health.ready() => (
            StatusCode::OK,
            Json(Health {
                status: "degraded".into(),
                reason: Some(reason),
            }),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not-ready".into(),
                reason: Some(reason),
            }),
        ),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let (up, down) = state.registry.count_by_status().await?;
    state.metrics.set_nodes(up, down);
    state
        .metrics
        .revision
        .set(i64::try_from(state.registry.hub().current()).unwrap_or(i64::MAX));
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    ))
}
