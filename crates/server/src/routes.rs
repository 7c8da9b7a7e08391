//! The HTTP routes and the query handler.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query as UrlQuery, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use morphogen_dpf::Key;
use morphogen_epochs::{Unavailable, rewind};
use morphogen_protocol::{CONTENT_TYPE, Catalog, Epoch, EpochList, MAX_EPOCHS_LISTED, Request, Response};
use morphogen_scan::{Query, validate};

use crate::batcher::{Answered, PassError, Refused};
use crate::metrics::Metrics;
use crate::published::Published;
use crate::{ApiError, State};

/// Content types a query body may be sent with.
const ACCEPTED_TYPES: [&str; 2] = [CONTENT_TYPE, "application/octet-stream"];

/// The public routes: health, the catalog and metrics of the server, and
/// each table's meta and query routes; `only`, the table of a server of
/// one, also at `/v1/meta` and `/v1/query`.
pub(crate) fn router(tables: &[Arc<State>], only: Option<Arc<State>>, catalog: Arc<Catalog>) -> Router {
    let watched: Vec<Arc<State>> = tables.to_vec();
    let mut router = Router::new()
        .route("/v1/health", get(move || async move { health(&watched) }))
        .route("/v1/tables", get(move || async move { Json(catalog.as_ref().clone()) }));
    for table in tables {
        router = router.merge(table_routes(&format!("/v1/tables/{}", table.name), table.clone()));
    }
    router = match only {
        Some(table) => router.merge(table_routes("/v1", table)),
        None => router.route("/v1/meta", get(several_tables)).route("/v1/query", post(several_tables)),
    };
    router.fallback(not_found).method_not_allowed_fallback(method_not_allowed)
}

/// `{prefix}/meta` and `{prefix}/query` of one table.
fn table_routes(prefix: &str, state: Arc<State>) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .route(&format!("{prefix}/meta"), get(meta))
        .route(&format!("{prefix}/epochs"), get(epochs))
        .route(&format!("{prefix}/query"), post(query).layer(DefaultBodyLimit::max(body_limit)))
        .with_state(state)
}

/// 200 `{"status": "ok"}` while every table can answer; otherwise 503
/// with each table's problem, so that a load balancer sends no more lookups.
fn health(tables: &[Arc<State>]) -> HttpResponse {
    let problems: Vec<serde_json::Value> = tables
        .iter()
        .filter_map(|table| {
            let (code, error) = table.batcher.faults().problem()?;
            Some(serde_json::json!({ "table": table.name, "code": code, "error": error }))
        })
        .collect();
    if problems.is_empty() {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        let body = serde_json::json!({ "status": "unavailable", "problems": problems });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn meta(Shared(state): Shared<Arc<State>>) -> Json<morphogen_protocol::Meta> {
    Json(state.meta())
}

/// Where `GET …/epochs` starts.
#[derive(serde::Deserialize)]
pub(crate) struct EpochsFrom {
    #[serde(default)]
    from: u64,
}

/// `GET …/epochs?from=E`: the epochs the server can answer as of, from `E`
/// (or the oldest) on, with their digests and labels, at most
/// [`MAX_EPOCHS_LISTED`].
pub(crate) async fn epochs(
    Shared(state): Shared<Arc<State>>,
    from: Result<UrlQuery<EpochsFrom>, QueryRejection>,
) -> Result<Json<EpochList>, ApiError> {
    let UrlQuery(EpochsFrom { from }) = from.map_err(|rejection| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("{}: give ?from= and an epoch number", rejection.body_text()),
        )
    })?;
    Ok(Json(state.batcher.published().epochs(from, state.max_rewind_rows, MAX_EPOCHS_LISTED)))
}

/// `GET /metrics`, on whichever listener the server puts it.
pub(crate) fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(move || async move { render_metrics(&metrics) }))
}

fn render_metrics(metrics: &Metrics) -> impl IntoResponse + use<> {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}

/// The unnamed table routes (public and admin) of a server of several tables.
pub(crate) async fn several_tables() -> ApiError {
    ApiError::client(
        StatusCode::NOT_FOUND,
        "table_not_named",
        "this server serves several tables: name one, as in /v1/tables/{name}/meta (GET /v1/tables lists them)",
    )
}

async fn not_found() -> ApiError {
    ApiError::client(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /v1/tables, /v1/tables/{name}/meta, /v1/tables/{name}/query, /v1/health, /metrics",
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
                state.max_body_bytes, state.max_batch
            ),
        ),
        status => ApiError::unreadable_body(status, rejection.body_text(), &rejection),
    })?;
    let request = Request::decode(&body, state.max_batch)?;
    // The snapshot the keys are checked against and queued for; a swap
    // after this point fails the request with `snapshot_changed`.
    let published = state.batcher.published();
    let wanted = match request.epoch {
        Epoch::Latest => None,
        Epoch::Exact(epoch) => Some(epoch),
    };
    if let Some(wanted) = wanted {
        check_epoch(&published, wanted, state.max_rewind_rows)?;
    }
    let queries: Vec<Query> = request.queries.into_iter().map(|keys| Query { keys }).collect();
    validate(&published.table.layout, &queries)?;
    // Keys to take the answers back to an older epoch with, should the
    // pass answer from a newer one.
    let keys: Option<Vec<Vec<Key>>> = wanted.map(|_| queries.iter().map(|q| q.keys.clone()).collect());

    let answer = state.batcher.submit(queries, published.base).map_err(refused)?;
    let reply = answer.await.map_err(|_| ApiError::internal("the scan thread dropped a request"))?;
    let Answered { epoch, mut answers } = reply.map_err(|error| match error {
        PassError::Engine(error) => ApiError::from(error),
        PassError::SnapshotChanged => snapshot_changed(),
    })?;
    let epoch = match (wanted, keys) {
        (Some(wanted), Some(keys)) if wanted < epoch => {
            rewind_answers(state, &published, wanted, epoch, keys, &mut answers).await?;
            wanted
        }
        _ => epoch,
    };
    let layout = &published.table.layout;
    Response::encode(epoch, usize::from(layout.choices()), layout.page_size() as usize, &answers)
        .map_err(ApiError::internal)
}

/// The answer to a request the queue refused.
fn refused(refused: Refused) -> ApiError {
    match refused {
        Refused::Overloaded { retry_after_secs } => ApiError::overloaded(
            retry_after_secs,
            "the server's queue is full; try again after the time in Retry-After",
        ),
        Refused::SnapshotChanged => snapshot_changed(),
        Refused::EngineDown => engine_down(),
    }
}

/// Refuses an epoch the server cannot answer as of: one of an earlier
/// snapshot, newer than its current one, or older than its window or its
/// rewind budget of `rewind_rows` changed rows.
fn check_epoch(published: &Published, wanted: u64, rewind_rows: usize) -> Result<(), ApiError> {
    if wanted < published.base {
        return Err(snapshot_changed());
    }
    let current = published.epoch;
    // The common case, and the one that needs no walk of the history.
    if wanted == current {
        return Ok(());
    }
    let oldest = published.oldest_epoch(rewind_rows);
    let problem = if wanted > current {
        format!("epoch {wanted} is newer than this server's current epoch {current}")
    } else if wanted < oldest {
        format!("epoch {wanted} is older than the oldest epoch this server keeps, {oldest}")
    } else {
        return Ok(());
    };
    Err(epoch_unavailable(problem, oldest))
}

fn epoch_unavailable(problem: String, oldest: u64) -> ApiError {
    ApiError {
        oldest_epoch: Some(oldest),
        ..ApiError::client(StatusCode::GONE, "epoch_unavailable", format!("{problem}; read /v1/meta"))
    }
}

/// 503 `engine_down`: the table answers nothing until its server restarts.
pub(crate) fn engine_down() -> ApiError {
    ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        "engine_down",
        "this server's scan engine is down and answers nothing until its operator restarts it",
    )
}

/// 410 `snapshot_changed`: the request was made for a snapshot this server
/// no longer serves; its parameters (page count, hash seed) may differ now.
fn snapshot_changed() -> ApiError {
    ApiError::client(
        StatusCode::GONE,
        "snapshot_changed",
        "the server swapped to another snapshot since this request's epoch; read /v1/meta and ask again",
    )
}

/// Takes the answers of a pass at epoch `from` back to epoch `wanted`,
/// evaluating each query's own keys at the pages changed in between only.
/// The work is bounded: at most the rewind budget of rows a query (more is
/// refused 410, as an epoch out of reach), counted against the queue while
/// it runs, and stopped when the client has gone.
async fn rewind_answers(
    state: &State,
    published: &Published,
    wanted: u64,
    from: u64,
    keys: Vec<Vec<Key>>,
    answers: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let history = published
        .history
        .as_ref()
        .ok_or_else(|| ApiError::internal("a table without updates changed epoch"))?;
    let diffs = history.between(wanted, from).map_err(|unavailable| match unavailable {
        Unavailable::TooOld { oldest, .. } => epoch_unavailable(unavailable.to_string(), oldest),
        Unavailable::Ahead { .. } => ApiError::internal(unavailable),
    })?;
    let rows: usize = diffs.iter().map(|diff| diff.rows.len()).sum();
    if rows > state.max_rewind_rows {
        // Updates applied while the request waited took it out of reach.
        let oldest = state.batcher.published().oldest_epoch(state.max_rewind_rows);
        let problem = format!(
            "epoch {wanted} is {rows} changed rows behind this server's epoch {from}, more than the {} it takes back",
            state.max_rewind_rows
        );
        return Err(epoch_unavailable(problem, oldest));
    }
    let _room = state.batcher.reserve(keys.len()).map_err(refused)?;
    state.metrics.asof_answers(keys.len());
    let layout = published.table.layout.clone();
    let mut taken = std::mem::take(answers);
    let gone = StopWhenDropped::default();
    let stop = gone.0.clone();
    // Many point evaluations for a deep rewind: off the async workers.
    let rewound = tokio::task::spawn_blocking(move || {
        let per_query = usize::from(layout.choices()) * layout.page_size() as usize;
        for (answer, keys) in taken.chunks_exact_mut(per_query).zip(&keys) {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(None);
            }
            rewind(&layout, keys, answer, &diffs)?;
        }
        Ok::<_, morphogen_dpf::Error>(Some(taken))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    *answers = rewound.ok_or_else(|| ApiError::internal("a rewind stopped while its request waited"))?;
    Ok(())
}

/// Set when dropped: the request whose future held it is gone (its client
/// left, or its deadline passed), so its work outside the future can stop.
#[derive(Default)]
struct StopWhenDropped(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
