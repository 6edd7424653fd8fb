//! The console's own errors as HTTP responses: a status and
//! `{"error": {"kind", "message"}}`, the shape of the daemon's errors, so
//! that the page shows both the same way. A refusal of the daemon is not
//! one of these: it is the daemon's reply, passed on with status 200.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::daemon_link::LinkError;

/// A request the console answers itself, without the daemon's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable kind for programs (`bad_json`, `csrf`, ...).
    pub kind: &'static str,
    /// What was wrong, for the operator.
    pub message: String,
}

impl ApiFailure {
    /// A failure of `status` and `kind`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad(kind: &'static str, message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// 403: refused whoever asks (cross-site, wrong Host).
    pub fn forbidden(kind: &'static str, message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::FORBIDDEN, kind, message)
    }

    /// 401: no session.
    pub fn unauthorized() -> ApiFailure {
        ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "not logged in: log in with the console's token at /login",
        )
    }
}

impl From<LinkError> for ApiFailure {
    fn from(e: LinkError) -> ApiFailure {
        match e {
            LinkError::Unreachable { .. } => {
                ApiFailure::new(StatusCode::BAD_GATEWAY, "daemon_unreachable", e.to_string())
            }
            LinkError::Timeout => {
                ApiFailure::new(StatusCode::GATEWAY_TIMEOUT, "daemon_timeout", e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"kind": self.kind, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
