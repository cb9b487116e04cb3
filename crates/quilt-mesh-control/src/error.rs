//! Errors as the outside world sees them: [`ApiError`] and the one place
//! ([`ApiError::status`]) that decides each one's HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::types::ErrorBody;
use crate::auth::AuthError;
use crate::model::FieldError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::watch::WatchError;

/// Every way a request can fail, with a message that names what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed json: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    InvalidField(#[from] FieldError),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request head is {size} bytes, more than the limit of {limit}")]
    HeadTooLarge { size: usize, limit: usize },
    #[error("request was not sent and answered within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the control plane is shutting down")]
    ShuttingDown,
    #[error("the control plane holds its limit of {0} watch streams; try again shortly")]
    TooManyWatchers(usize),
    #[error("client {client} holds the limit of {limit} watch streams; close one first")]
    TooManyWatchersFromClient {
        client: std::net::IpAddr,
        limit: usize,
    },
    #[error("{0}")]
    Internal(String),
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(e) => ApiError::Store(e),
            RegistryError::Denied(e) => ApiError::Auth(e),
            RegistryError::Stopped => ApiError::ShuttingDown,
            e @ RegistryError::MacTaken { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

impl ApiError {
    /// The status code of each error: the one mapping from domain errors to HTTP.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Auth(e) if e.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            ApiError::Auth(_) => StatusCode::FORBIDDEN,
            ApiError::Watch(_) => StatusCode::GONE,
            ApiError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Store(StoreError::Exhausted { .. } | StoreError::Unavailable(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ShuttingDown | ApiError::TooManyWatchers(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyWatchersFromClient { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A full watch cap clears by itself: tell the client when to try again.
        let retry_soon = matches!(
            self,
            ApiError::TooManyWatchers(_)
                | ApiError::TooManyWatchersFromClient { .. }
                | ApiError::Store(StoreError::Unavailable(_))
        );
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::info!(error = %self, status = status.as_u16(), "request refused");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if retry_soon {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
