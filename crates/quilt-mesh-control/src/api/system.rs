//! `GET /health` and `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::types::Health;
use crate::error::ApiError;

pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
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
