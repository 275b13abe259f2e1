//! The one error type of the HTTP API and its JSON rendering.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::chat::hub::GenerationRefused;
use crate::service::ServiceError;

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error answered to a client. Client errors carry a safe message; internal errors
/// answer a generic body and are logged once with their detail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a request that cannot be understood.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing, invalid or expired credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid credentials without the right.
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown, malformed or someone else's resource.
    #[error("{0}")]
    NotFound(String),
    /// 408: the request's body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: a duplicate or a state conflict.
    #[error("{0}")]
    Conflict(String),
    /// 413: a body over the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: a body that is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a body or parameter that fails validation.
    #[error("{0}")]
    Validation(String),
    /// 429: too many concurrent operations.
    #[error("{0}")]
    TooManyRequests(String),
    /// 429: a usage limit (message rate, token budget), with the time to wait.
    #[error(transparent)]
    Limited(crate::service::usage::Refusal),
    /// 502: the LLM provider failed; the message is safe to show.
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else; the detail is logged, never answered.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The body of a turn refused by a usage limit.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct LimitRefusal {
    /// A human message.
    pub detail: String,
    /// The limit reached: `messages_per_minute`, `tokens_per_day` or `tokens_per_month`.
    pub limit: String,
    /// Seconds until the turn would be admitted, as in `Retry-After`.
    pub retry_after: u64,
}

/// The JSON error body, compatible with FastAPI's.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A human message.
    pub detail: String,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) | Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 404 naming the kind of resource.
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// A 403 for a missing role or ownership.
    pub fn forbidden() -> Self {
        Self::Forbidden("Not enough permissions".to_owned())
    }

    /// A 422 naming the field.
    pub fn invalid(field: &str, reason: &str) -> Self {
        Self::Validation(format!("{field}: {reason}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::Internal(err.into())
    }
}

impl From<crate::db::StoreError> for ApiError {
    fn from(err: crate::db::StoreError) -> Self {
        match err {
            crate::db::StoreError::Conflict(field) => {
                Self::Conflict(format!("{field} already exists"))
            }
            crate::db::StoreError::Database(err) => err.into(),
        }
    }
}

impl From<crate::jwt::TokenError> for ApiError {
    fn from(err: crate::jwt::TokenError) -> Self {
        Self::Unauthorized(err.to_string())
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::NotFound(what) => Self::not_found(what),
            ServiceError::Ended => Self::Conflict(err.to_string()),
            ServiceError::Invalid(message) => Self::Validation(message),
            ServiceError::Busy(GenerationRefused::ConversationBusy) => {
                Self::Conflict(err.to_string())
            }
            ServiceError::Busy(GenerationRefused::TooManyForOwner) => {
                Self::TooManyRequests(err.to_string())
            }
            ServiceError::Limited(refusal) => Self::Limited(refusal),
            ServiceError::Llm(llm) => Self::BadGateway(llm.to_string()),
            ServiceError::Interrupted => Self::Unavailable(err.to_string()),
            ServiceError::Store(store) => store.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Limited(refusal) = &self {
            let body = LimitRefusal {
                detail: refusal.detail(),
                limit: refusal.limit.as_str().to_owned(),
                retry_after: refusal.retry_after_secs(),
            };
            let mut response = (status, Json(body)).into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(refusal.retry_after_secs()),
            );
            return response;
        }
        let detail = match &self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                "Internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { detail })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
