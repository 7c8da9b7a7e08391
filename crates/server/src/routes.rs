//! The HTTP routes and the query handler.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use morphogen_protocol::{CONTENT_TYPE, Epoch, Request, Response};
use morphogen_scan::{Query, validate};

use crate::{ApiError, State};

/// Content types a query body may be sent with.
const ACCEPTED_TYPES: [&str; 2] = [CONTENT_TYPE, "application/octet-stream"];

pub(crate) fn router(state: Arc<State>) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/meta", get(meta))
        .route("/v1/query", post(query).layer(DefaultBodyLimit::max(body_limit)))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn meta(Shared(state): Shared<Arc<State>>) -> Json<morphogen_protocol::Meta> {
    Json(state.meta.clone())
}

async fn metrics(Shared(state): Shared<Arc<State>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn not_found() -> ApiError {
    ApiError::client(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /v1/meta, /v1/query, /v1/health, /metrics",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// `POST /v1/query`: decode, check, scan, encode. Counts every outcome.
async fn query(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let started = Instant::now();
    let (outcome, response) = match answer(&state, &headers, body).await {
        Ok(body) => ("ok", ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()),
        Err(error) => (error.code, error.into_response()),
    };
    let elapsed = started.elapsed();
    state.metrics.request(outcome, elapsed);
    tracing::debug!(outcome, status = response.status().as_u16(), ?elapsed, "query request");
    response
}

async fn answer(
    state: &State,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<u8>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ACCEPTED_TYPES.contains(&content_type) {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a query body is sent as {CONTENT_TYPE}"),
        ));
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is larger than the {} bytes a batch of {} queries needs",
                state.max_body_bytes, state.meta.max_batch
            ),
        ),
        status => ApiError::client(status, "bad_body", rejection.body_text()),
    })?;
    let request = Request::decode(&body, state.meta.max_batch)?;
    let epoch = state.meta.epoch;
    if let Epoch::Exact(wanted) = request.epoch
        && wanted != epoch
    {
        return Err(ApiError::client(
            StatusCode::GONE,
            "epoch_unavailable",
            format!("epoch {wanted} is not available; this server answers from epoch {epoch}"),
        ));
    }
    let queries: Vec<Query> = request.queries.into_iter().map(|keys| Query { keys }).collect();
    validate(&state.layout, &queries)?;

    let answer = state.batcher.submit(queries).map_err(|overloaded| {
        ApiError::overloaded(
            overloaded.retry_after_secs,
            "the server's queue is full; try again after the time in Retry-After",
        )
    })?;
    let answers = answer.await.map_err(|_| ApiError::internal("the scan thread dropped a request"))??;
    let layout = &state.layout;
    Response::encode(epoch, usize::from(layout.choices()), layout.page_size() as usize, &answers)
        .map_err(ApiError::internal)
}
