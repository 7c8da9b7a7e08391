//! Every error answer has one shape, `{"error": "...", "code": "..."}`:
//! client mistakes get a 4xx that says what was wrong; internal faults get a
//! 500 whose details go to the log only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use morphogen_protocol::ErrorBody;

/// An error answer: status, a stable code for programs, a message for people.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// What was wrong; never quotes key material.
    pub message: String,
    /// Seconds to wait before trying again, sent as `Retry-After`.
    pub retry_after_secs: Option<u64>,
    /// The oldest epoch available, sent with `epoch_unavailable`.
    pub oldest_epoch: Option<u64>,
    /// The next sequence number, sent with `sequence`.
    pub expected_sequence: Option<u64>,
}

impl ApiError {
    /// A client error.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            oldest_epoch: None,
            expected_sequence: None,
        }
    }

    /// 503 `overloaded`: the request was refused unread because the server
    /// is at capacity; it may be sent again after `retry_after_secs`.
    pub fn overloaded(retry_after_secs: u64, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::client(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    /// A body that could not be read: too large (413 `body_too_large`),
    /// too slow (408 `body_timeout`), or broken off (`bad_body`). `status`
    /// and `text` are the extractor's rejection, `error` the rejection
    /// itself, whose causes tell a timeout.
    pub(crate) fn unreadable_body(
        status: StatusCode,
        text: String,
        error: &(dyn std::error::Error + 'static),
    ) -> ApiError {
        if caused_by::<tower_http::timeout::TimeoutError>(error) {
            return ApiError::client(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stopped arriving; send it without pauses",
            );
        }
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_body" };
        ApiError::client(status, code, text)
    }

    /// A JSON body that does not parse as the route's request (400) or not
    /// into its shape (422). The parser's own message may quote what was
    /// sent (a key, a value): only the place and, for a missing field, the
    /// field's name are passed on.
    pub(crate) fn bad_json(error: &serde_json::Error) -> ApiError {
        use serde_json::error::Category;
        let (status, problem) = match error.classify() {
            Category::Syntax => (StatusCode::BAD_REQUEST, "the body is not JSON".to_string()),
            Category::Eof => (StatusCode::BAD_REQUEST, "the body's JSON ends early".to_string()),
            Category::Io => (StatusCode::BAD_REQUEST, "the body could not be read".to_string()),
            Category::Data => {
                let message = error.to_string();
                // Field names are the request type's own, never the client's data.
                let problem = match message.split_once(" at line ") {
                    Some((missing, _)) if missing.starts_with("missing field `") => missing.to_string(),
                    _ => "a field has the wrong type or form".to_string(),
                };
                (StatusCode::UNPROCESSABLE_ENTITY, problem)
            }
        };
        let place = format!("line {}, column {}", error.line(), error.column());
        ApiError::client(
            status,
            "bad_body",
            format!("{problem} ({place}); see docs/PROTOCOL.md for the shape"),
        )
    }

    /// 415 `unsupported_media_type` unless `headers` say the body is JSON.
    pub(crate) fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let essence = content_type.and_then(|v| v.split(';').next()).map(str::trim);
        if essence.is_some_and(|essence| essence.eq_ignore_ascii_case("application/json")) {
            Ok(())
        } else {
            Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_body",
                "the body is JSON, sent with the header Content-Type: application/json",
            ))
        }
    }

    /// An internal fault: logged in full here, reported to the client only as such.
    pub fn internal(details: impl std::fmt::Display) -> ApiError {
        tracing::error!(%details, "internal error while answering a request");
        ApiError::client(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server's log",
        )
    }
}

/// Whether `error` or one of its causes is an `E`.
pub(crate) fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<E>() {
            return true;
        }
        cause = error.source();
    }
    false
}

impl From<morphogen_protocol::Error> for ApiError {
    fn from(error: morphogen_protocol::Error) -> ApiError {
        use morphogen_protocol::Error as E;
        let code = match &error {
            E::Version(_) => "bad_version",
            E::TooManyQueries { count: 0, .. } => "empty_batch",
            E::TooManyQueries { .. } => "batch_too_large",
            E::Choices(_) | E::MixedChoices { .. } => "wrong_key_count",
            E::MixedDomains { .. } => "wrong_domain",
            E::Key { .. } => "bad_key",
            E::BodyLength { .. } | E::QueryCount(_) | E::PageSize(_) => "bad_body",
        };
        ApiError::client(StatusCode::BAD_REQUEST, code, error.to_string())
    }
}

impl From<morphogen_scan::Error> for ApiError {
    fn from(error: morphogen_scan::Error) -> ApiError {
        use morphogen_scan::Error as E;
        let code = match &error {
            E::EmptyBatch => "empty_batch",
            E::KeyCount { .. } => "wrong_key_count",
            E::Domain { .. } => "wrong_domain",
            E::Fault(_) | E::Config(_) => return ApiError::internal(error),
        };
        ApiError::client(StatusCode::BAD_REQUEST, code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
            oldest_epoch: self.oldest_epoch,
            expected_sequence: self.expected_sequence,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
