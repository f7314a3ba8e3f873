//! The HTTP layer's one error type. Each variant maps to one status; internal errors are logged
//! and answered with a generic message, never with their details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request itself is malformed (missing field, bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 401: a token is configured and the request did not carry it.
    #[error("missing or wrong token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// 404
    #[error("{0} not found")]
    NotFound(String),
    /// 409: the request conflicts with stored state (name taken, job already finished).
    #[error("{0}")]
    Conflict(String),
    /// 408: the request body stalled (nothing arrived for the idle timeout).
    #[error("{0}")]
    RequestTimeout(String),
    /// 429: one client's share of a limit is used up (live streams of one job).
    #[error("{0}")]
    TooManyRequests(String),
    /// 413: an upload over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: well-formed request whose content is unusable (not NIfTI, missing modality, ...).
    #[error("{0}")]
    Unprocessable(String),
    /// 503: a tool the request needs is not installed; the message names the fix.
    #[error("{0}")]
    Unavailable(String),
    /// 502: a server this one relies on (the PACS) answered with an error or nonsense; the
    /// message names it and what to check.
    #[error("{0}")]
    BadGateway(String),
    /// 500: logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Error::NotFound("record".into()),
            other => Error::Internal(other.into()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.into())
    }
}

impl From<axum::extract::multipart::MultipartError> for Error {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        if let Some(idle) = crate::body_stall::stalled_body(&e) {
            Error::RequestTimeout(crate::body_stall::BodyStalled(idle).to_string())
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(
                "upload is larger than the server's limit (CGGM_MAX_UPLOAD_MB); \
                 compress the files (.nii.gz) or raise the limit"
                    .into(),
            )
        } else {
            Error::BadRequest(format!("malformed multipart upload: {}", e.body_text()))
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Error::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal server error (see the server log)".to_string()
            }
            other => other.to_string(),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
