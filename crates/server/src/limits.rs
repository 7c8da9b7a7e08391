//! What one client may cost the server: connections, time, header bytes.
//!
//! The connection limit and the header timeout act where connections are
//! accepted ([`crate::listen`]); the body timeout, the request deadline and
//! the header size limit are layers around the routes, here, so that their
//! refusals are the same JSON errors as every other.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::ApiError;
use crate::metrics::Metrics;

/// Limits on what one client may hold of the server. The defaults suit a
/// server on the internet; see `docs/SECURITY.md`.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most open connections per listener; further ones wait in the
    /// kernel's backlog until one closes.
    pub max_connections: usize,
    /// Most open connections per listener from one client address (an
    /// IPv4 address, or an IPv6 /64); further ones are closed at once.
    /// Behind a proxy every client has the proxy's address: set it to
    /// `max_connections` there.
    pub max_connections_per_client: usize,
    /// Longest time a write to a client may stall; a client that does not
    /// read its answers loses its connection after it.
    pub write_timeout: Duration,
    /// Time for a TLS handshake, and for a request's head (request line and
    /// headers) once its first byte is awaited; an idle keep-alive
    /// connection is closed after it too.
    pub header_timeout: Duration,
    /// Longest pause while a request body arrives; a slower body is
    /// answered 408 `body_timeout`.
    pub body_timeout: Duration,
    /// Longest time from a request's head to its answer, body, queue and
    /// pass included; a later one is answered 503 `deadline_exceeded`.
    pub request_timeout: Duration,
    /// Largest request head (path and headers); a larger one is answered 431
    /// `headers_too_large`.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_connections_per_client: 64,
            write_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_header_bytes: 16 << 10,
        }
    }
}

impl Limits {
    /// Refuses limits that would stop the server from answering anything.
    pub(crate) fn check(&self) -> Result<(), String> {
        let durations = [
            ("header timeout", self.header_timeout),
            ("body timeout", self.body_timeout),
            ("request timeout", self.request_timeout),
            ("write timeout", self.write_timeout),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, duration)| duration.is_zero()) {
            return Err(format!("the {name} must be more than zero"));
        }
        if self.max_connections == 0 {
            return Err("the connection limit must be at least 1".to_string());
        }
        if self.max_connections_per_client == 0 {
            return Err("the connection limit per client must be at least 1".to_string());
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!("the header size limit must be at least {MIN_HEADER_BYTES} bytes"));
        }
        Ok(())
    }
}

/// Room for the headers a normal client sends (host, content type and
/// length, authorization, user agent).
const MIN_HEADER_BYTES: usize = 1024;

/// `router` with the body timeout and the header size limit around every
/// route.
pub(crate) fn apply(router: Router, limits: &Limits) -> Router {
    router
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(middleware::from_fn_with_state(limits.max_header_bytes, limit_headers))
}

/// `router` with the request deadline around every route: a route that has
/// not answered in time is dropped and answered 503 `deadline_exceeded`.
/// (The update route keeps its own deadline: a batch the scan thread has
/// begun to apply is waited for, so that its client learns the outcome.)
pub(crate) fn with_deadline<S>(router: Router<S>, deadline: &Arc<Deadline>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(middleware::from_fn_with_state(deadline.clone(), enforce_deadline))
}

/// The request deadline.
pub(crate) struct Deadline {
    pub(crate) timeout: Duration,
    metrics: Metrics,
}

impl Deadline {
    pub(crate) fn new(timeout: Duration, metrics: Metrics) -> Arc<Deadline> {
        Arc::new(Deadline { timeout, metrics })
    }
}

/// Answers 503 `deadline_exceeded` when the route has not answered in time;
/// dropping the route's future abandons its place in the queue.
async fn enforce_deadline(State(deadline): State<Arc<Deadline>>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            deadline.metrics.deadline_exceeded();
            ApiError::client(
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline_exceeded",
                format!("the request was not answered within {:?}; try again", deadline.timeout),
            )
            .into_response()
        }
    }
}

/// Answers 431 `headers_too_large` to a request whose head is larger than
/// `max_bytes` (counted as sent: path, names, values, separators).
async fn limit_headers(State(max_bytes): State<usize>, request: Request, next: Next) -> Response {
    let uri = request.uri().to_string().len();
    let headers: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if uri + headers > max_bytes {
        return ApiError::client(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's path and headers are larger than {max_bytes} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}
