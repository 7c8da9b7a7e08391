//! The admin routes, behind a bearer token: the server's state, update
//! batches and snapshot swaps.
//!
//! `GET /admin/v1/status` answers the metadata of `/v1/meta` and the latest
//! snapshot swap, so that a feeder reaching only the admin address learns
//! the current epoch (the next sequence number is one more).
//! `POST /admin/v1/updates` takes a batch of changes (JSON, keys and values
//! in hex) with its sequence number and answers once the batch is in the
//! update log, synced, and in the engine's pages: the new epoch, its digest
//! and the record count. Keys and values are never logged.
//! `POST /admin/v1/snapshot` names a table file of the snapshot directory
//! and the next sequence number; it answers 202 at once, loads the file in
//! the background and swaps between passes (see [`crate::snapshot`]).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Request, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use morphogen_epochs::{Batch, Change, MAX_LABEL_LEN};
use morphogen_protocol::{
    AdminStatus, Catalog, ChangeBody, ChangeError, GrowRequest, RevertRequest, SnapshotRequest, SwapStatus,
    UpdateReply, UpdateRequest,
};
use morphogen_table::{KeyDigest, MAX_KEY_LEN, MAX_PAGES_PER_TABLE};

use crate::batcher::{Update, UpdateError};
use crate::limits::Deadline;
use crate::snapshot::{SwapRefused, SwapTo};
use crate::{ApiError, State};

/// Largest body of a snapshot request: a file name and a number.
const MAX_SNAPSHOT_BODY: usize = 4 << 10;

/// The most bytes one change of an update batch can take as JSON, beyond
/// its key and value in hex: the field names, quotes, a separator and
/// some whitespace.
const CHANGE_OVERHEAD: usize = 64;

/// The largest update body a batch of `max_changes` changes of values of
/// `value_size` bytes can need: every key of the longest kind, every value
/// whole.
pub(crate) fn max_update_body(max_changes: usize, value_size: u32) -> usize {
    let change = 2 * MAX_KEY_LEN + 2 * value_size as usize + CHANGE_OVERHEAD;
    // And a label: its JSON may be written with room to spare.
    max_changes.saturating_mul(change).saturating_add((1 << 10) + 4 * MAX_LABEL_LEN)
}

/// Each table's admin routes under `/admin/v1/tables/{name}`; `only`, the
/// table of a server of one, also under `/admin/v1`. `GET /admin/v1/tables`
/// answers what `GET /v1/tables` does, for a feeder that reaches the admin
/// listener only.
pub(crate) fn router(
    tables: &[Arc<State>],
    only: Option<Arc<State>>,
    catalog: Arc<Catalog>,
    deadline: &Arc<Deadline>,
) -> Router {
    let mut router =
        Router::new().route("/admin/v1/tables", get(move || async move { Json(catalog.as_ref().clone()) }));
    for table in tables {
        let prefix = format!("/admin/v1/tables/{}", table.name);
        router = router.merge(table_routes(&prefix, table.clone(), deadline));
    }
    match only {
        Some(table) => router.merge(table_routes("/admin/v1", table, deadline)),
        None => ["status", "updates", "snapshot", "grow", "epochs", "revert"]
            .into_iter()
            .fold(router, |router, route| {
                router.route(&format!("/admin/v1/{route}"), any(crate::routes::several_tables))
            }),
    }
}

/// The routes of one table. The token is checked before anything of a
/// request's body is read: a client without it costs the server a head.
fn table_routes(prefix: &str, state: Arc<State>, deadline: &Arc<Deadline>) -> Router {
    let quick = Router::new()
        .route(&format!("{prefix}/status"), get(status))
        .route(&format!("{prefix}/revert"), post(revert).layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BODY)))
        .route(&format!("{prefix}/epochs"), get(crate::routes::epochs))
        .route(&format!("{prefix}/snapshot"), post(snapshot).layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BODY)));
    // The update route reads its body itself, with a limit sized by the
    // table, and keeps its own deadline (see `apply_updates`).
    let updates = Router::new()
        .route(&format!("{prefix}/updates"), post(updates).layer(DefaultBodyLimit::disable()))
        .route(&format!("{prefix}/grow"), post(grow).layer(DefaultBodyLimit::disable()));
    crate::limits::with_deadline(quick, deadline)
        .merge(updates)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Answers 401 to a request without the admin token, before its body is read.
async fn require_token(Shared(state): Shared<Arc<State>>, request: Request, next: Next) -> Response {
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Checks the `Authorization: Bearer …` header (the scheme in any case)
/// against the admin token.
fn authorize(state: &State, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = state.admin_token.as_ref().expect("admin routes exist only with a token");
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    // blake3::Hash compares in constant time, so the comparison says
    // nothing about how much of a guess was right.
    match given {
        Some(token) if blake3::hash(token.trim().as_bytes()) == *expected => Ok(()),
        _ => Err(ApiError::client(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin routes need the header Authorization: Bearer <admin token>",
        )),
    }
}

async fn status(Shared(state): Shared<Arc<State>>) -> Response {
    Json(AdminStatus { meta: state.meta(), snapshot_swap: state.swaps.latest() }).into_response()
}

async fn snapshot(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body.map_err(|rejection| {
        ApiError::unreadable_body(rejection.status(), rejection.body_text(), &rejection)
    });
    swap_started(&state, body.and_then(|body| start_swap(&state, &headers, &body)), "snapshot swap refused")
}

/// 202 and the status of a swap started, or the refusal, counted and logged as `refused`.
fn swap_started(state: &State, started: Result<SwapStatus, ApiError>, refused: &'static str) -> Response {
    match started {
        Ok(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Err(error) => {
            if error.status != StatusCode::UNAUTHORIZED {
                state.metrics.snapshot_swap(error.code);
            }
            tracing::warn!(code = error.code, message = %error.message, "{refused}");
            error.into_response()
        }
    }
}

fn start_swap(state: &Arc<State>, headers: &HeaderMap, body: &[u8]) -> Result<SwapStatus, ApiError> {
    ApiError::require_json(headers)?;
    let request: SnapshotRequest = serde_json::from_slice(body).map_err(|e| ApiError::bad_json(&e))?;
    let label = label_bytes(request.label.as_ref())?;
    state
        .swaps
        .start(SwapTo::File(request.file), request.sequence, label, state.clone())
        .map_err(swap_refused)
}

fn swap_refused(refused: SwapRefused) -> ApiError {
    match refused {
        SwapRefused::Disabled => ApiError::client(
            StatusCode::CONFLICT,
            "snapshots_disabled",
            "this server takes no snapshot swaps: start it with a snapshot directory (--snapshot-dir)",
        ),
        SwapRefused::InProgress => swap_in_progress(),
        SwapRefused::Sequence { expected } => ApiError {
            expected_sequence: Some(expected),
            ..ApiError::client(
                StatusCode::CONFLICT,
                "sequence",
                format!("a swap takes the next sequence number: this server expects {expected}"),
            )
        },
    }
}

async fn grow(Shared(state): Shared<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    swap_started(&state, start_growing(&state, &headers, body).await, "growing refused")
}

/// Reads and checks a grow request (a batch, as the update route takes
/// it, and a size) and starts the swap to the grown table.
async fn start_growing(state: &Arc<State>, headers: &HeaderMap, body: Body) -> Result<SwapStatus, ApiError> {
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    ApiError::require_json(headers)?;
    let body = read_batch_body(state, headers, body, deadline).await?;
    let max_changes = state.max_batch_changes;
    let decode = tokio::task::spawn_blocking(move || {
        let request: GrowRequest = serde_json::from_slice(&body).map_err(|e| ApiError::bad_json(&e))?;
        Ok::<_, ApiError>((request.pages_per_table, batch_of(request.batch, max_changes)?))
    });
    let (pages_per_table, batch) = tokio::time::timeout_at(deadline, decode)
        .await
        .map_err(|_| deadline_passed(state))?
        .map_err(ApiError::internal)??;
    if pages_per_table == 0 || pages_per_table > MAX_PAGES_PER_TABLE {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "bad_size",
            format!("pages_per_table must be 1 to {MAX_PAGES_PER_TABLE}"),
        ));
    }
    let to = SwapTo::Grown { pages_per_table, changes: batch.changes };
    state.swaps.start(to, batch.sequence, batch.label, state.clone()).map_err(swap_refused)
}

/// 409 `swap_in_progress`: a snapshot is loading; update batches and other
/// swaps wait for it (the admin status says when it is done).
fn swap_in_progress() -> ApiError {
    ApiError::client(
        StatusCode::CONFLICT,
        "swap_in_progress",
        "a snapshot swap is loading; try again when GET /admin/v1/status shows it swapped or failed",
    )
}

async fn updates(Shared(state): Shared<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    match apply_updates(&state, &headers, body).await {
        Ok(reply) => Json(reply).into_response(),
        Err(error) => {
            if error.status != StatusCode::UNAUTHORIZED {
                state.metrics.update_refused(error.code);
            }
            tracing::warn!(code = error.code, message = %error.message, "update batch refused");
            error.into_response()
        }
    }
}

/// Reads, checks and applies an update batch. Its deadline is the request
/// deadline, kept here rather than by the router's layer: at the deadline
/// a batch still queued is withdrawn (503 `deadline_exceeded`, not
/// applied), and one the scan thread has begun to apply is waited for, so
/// that the answer always says whether the batch was applied.
async fn apply_updates(state: &State, headers: &HeaderMap, body: Body) -> Result<UpdateReply, ApiError> {
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    let not_applied = || deadline_passed(state);
    ApiError::require_json(headers)?;
    if state.swaps.loading() {
        return Err(swap_in_progress());
    }
    let body = read_batch_body(state, headers, body, deadline).await?;
    let max_changes = state.max_batch_changes;
    // Parsing and hashing up to a batch's worth of keys: off the async workers.
    let decode = tokio::task::spawn_blocking(move || decode_batch(&body, max_changes));
    let batch = tokio::time::timeout_at(deadline, decode)
        .await
        .map_err(|_| not_applied())?
        .map_err(ApiError::internal)??;
    let count = batch.changes.len();
    let applied = submit(state, Update::Batch(batch), deadline).await?;
    tracing::info!(
        epoch = applied.epoch,
        changes = count,
        rows = applied.changed_rows,
        records = applied.records,
        already_applied = applied.already_applied,
        "applied an update batch"
    );
    Ok(applied)
}

/// Reads the body of a batch, refused (413 `body_too_large`) past what a
/// batch of this server's most changes of this table's values can need:
/// at its Content-Length, or as soon as it passes the limit.
async fn read_batch_body(
    state: &State,
    headers: &HeaderMap,
    body: Body,
    deadline: tokio::time::Instant,
) -> Result<Bytes, ApiError> {
    let max_changes = state.max_batch_changes;
    let value_size = state.batcher.published().table.layout.value_size();
    let limit = max_update_body(max_changes, value_size);
    let too_large = || {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is larger than the {limit} bytes that a batch of {max_changes} changes \
                 (this server's limit) of {value_size}-byte values can need; send smaller batches"
            ),
        )
    };
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout_at(deadline, axum::body::to_bytes(body, limit));
    read.await.map_err(|_| deadline_passed(state))?.map_err(|error| {
        if crate::errors::caused_by::<http_body_util::LengthLimitError>(&error) {
            too_large()
        } else {
            ApiError::unreadable_body(
                StatusCode::BAD_REQUEST,
                "the body could not be read".to_string(),
                &error,
            )
        }
    })
}

async fn revert(
    Shared(state): Shared<Arc<State>>,
    request: Result<Json<RevertRequest>, JsonRejection>,
) -> Response {
    let reverted = async {
        let Json(request) = request.map_err(|rejection| {
            ApiError::unreadable_body(rejection.status(), rejection.body_text(), &rejection)
        })?;
        if state.swaps.loading() {
            return Err(swap_in_progress());
        }
        let label = label_bytes(request.label.as_ref())?;
        let update = Update::Revert { to: request.to, sequence: request.sequence, label };
        let deadline = tokio::time::Instant::now() + state.request_timeout;
        let applied = submit(&state, update, deadline).await?;
        tracing::info!(
            epoch = applied.epoch,
            to = request.to,
            rows = applied.changed_rows,
            "reverted to an earlier epoch"
        );
        Ok::<_, ApiError>(applied)
    };
    match reverted.await {
        Ok(reply) => Json(reply).into_response(),
        Err(error) => {
            state.metrics.update_refused(error.code);
            tracing::warn!(code = error.code, message = %error.message, "revert refused");
            error.into_response()
        }
    }
}

/// 503 `deadline_exceeded`: the change was not applied, and will not be.
fn deadline_passed(state: &State) -> ApiError {
    state.metrics.deadline_exceeded();
    ApiError::client(
        StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded",
        "the batch was not applied within the request timeout, and it will not be: send it again",
    )
}

/// Queues `update` for the scan thread and waits for its outcome until
/// `deadline`: a change still queued then is withdrawn (503
/// `deadline_exceeded`, not applied), one the scan thread has begun is
/// waited for.
async fn submit(
    state: &State,
    update: Update,
    deadline: tokio::time::Instant,
) -> Result<UpdateReply, ApiError> {
    let not_applied = || deadline_passed(state);
    let (mut outcome, ticket) = state.batcher.update(update);
    let outcome = match tokio::time::timeout_at(deadline, &mut outcome).await {
        Ok(outcome) => outcome,
        Err(_) if ticket.cancel() => return Err(not_applied()),
        // Taken by the scan thread: its outcome comes soon.
        Err(_) => outcome.await,
    };
    let outcome = outcome.map_err(|_| ApiError::internal("the scan thread dropped an update batch"))?;
    let applied = match outcome {
        Err(UpdateError::Refused(morphogen_epochs::Error::AlreadyApplied {
            epoch,
            digest,
            records,
            changed_rows,
        })) => {
            tracing::info!(epoch, "an update batch sent again was applied already");
            return Ok(UpdateReply {
                epoch,
                digest: hex::encode(digest),
                records,
                changed_rows,
                already_applied: true,
            });
        }
        outcome => outcome.map_err(update_error)?,
    };
    Ok(UpdateReply {
        epoch: applied.published.epoch,
        digest: hex::encode(applied.published.table.digest),
        records: applied.published.table.records,
        changed_rows: applied.changed_rows,
        already_applied: false,
    })
}

/// The batch of an update body, of at most `max_changes` changes.
fn decode_batch(body: &[u8], max_changes: usize) -> Result<Batch, ApiError> {
    let request: UpdateRequest = serde_json::from_slice(body).map_err(|e| ApiError::bad_json(&e))?;
    batch_of(request, max_changes)
}

/// The batch `request` sends, of at most `max_changes` changes.
fn batch_of(request: UpdateRequest, max_changes: usize) -> Result<Batch, ApiError> {
    if request.changes.len() > max_changes {
        return Err(ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_changes",
            format!(
                "the batch has {} changes; this server takes at most {max_changes} a batch",
                request.changes.len()
            ),
        ));
    }
    let changes = request
        .changes
        .iter()
        .enumerate()
        .map(|(i, change)| decode_change(i, change))
        .collect::<Result<_, _>>()?;
    let label = label_bytes(request.label.as_ref())?;
    Ok(Batch { sequence: request.sequence, changes, label })
}

/// A label as the log holds it: its compact JSON, at most [`MAX_LABEL_LEN`] bytes.
fn label_bytes(label: Option<&serde_json::Value>) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(label) = label else { return Ok(None) };
    let bytes = serde_json::to_vec(label).map_err(ApiError::internal)?;
    if bytes.len() > MAX_LABEL_LEN {
        return Err(ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "label_too_long",
            format!("the label is {} bytes as JSON; a label may be {MAX_LABEL_LEN}", bytes.len()),
        ));
    }
    Ok(Some(bytes))
}

/// A change of the request as the table takes it; the error names the
/// change's position, never its bytes.
fn decode_change(index: usize, change: &ChangeBody) -> Result<Change, ApiError> {
    let (key, value) = change.decode(MAX_KEY_LEN).map_err(|error| {
        let code = if error == ChangeError::ValueNotHex { "bad_value" } else { "bad_key" };
        ApiError::client(StatusCode::BAD_REQUEST, code, format!("change {index}: {error}"))
    })?;
    Ok(Change { key: KeyDigest::of(&key), value })
}

fn update_error(error: UpdateError) -> ApiError {
    use morphogen_epochs::Error as E;
    match error {
        UpdateError::Refused(E::Sequence { expected, actual }) => ApiError {
            expected_sequence: Some(expected),
            ..ApiError::client(
                StatusCode::CONFLICT,
                "sequence",
                format!("sequence number {actual} is not the next one: this server expects {expected}"),
            )
        },
        UpdateError::Refused(E::OtherBatchApplied { epoch }) => ApiError::client(
            StatusCode::CONFLICT,
            "sequence",
            format!(
                "batch {epoch} was applied already, with other changes: this batch is not the one applied"
            ),
        ),
        UpdateError::Refused(error @ E::EpochsExhausted) => ApiError::client(
            StatusCode::CONFLICT,
            "epochs_exhausted",
            format!("{error}: build a new snapshot and swap to it (morphogen snapshot)"),
        ),
        UpdateError::Refused(error @ E::TableFull { .. }) => {
            ApiError::client(StatusCode::CONFLICT, "table_full", error.to_string())
        }
        UpdateError::Refused(error @ E::ValueTooLong { .. }) => {
            ApiError::client(StatusCode::BAD_REQUEST, "value_too_long", error.to_string())
        }
        UpdateError::Refused(error @ E::BatchPages { .. }) => {
            ApiError::client(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", error.to_string())
        }
        UpdateError::Refused(error @ (E::RevertRange { .. } | E::RevertTooOld { .. })) => {
            ApiError::client(StatusCode::CONFLICT, "revert_unavailable", error.to_string())
        }
        UpdateError::Refused(error @ E::LabelTooLong { .. }) => {
            ApiError::client(StatusCode::PAYLOAD_TOO_LARGE, "label_too_long", error.to_string())
        }
        UpdateError::Refused(error @ E::BatchTooLarge) => {
            ApiError::client(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", error.to_string())
        }
        UpdateError::Refused(error) => ApiError::internal(error),
        UpdateError::NotLogged(details) => {
            tracing::error!(%details, "an update batch could not be written to the update log");
            ApiError::client(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_write_failed",
                "the update log could not be written (is the disk full?), so the batch was not applied; \
                 see the server's log, then send it again",
            )
        }
        UpdateError::LogBroken => ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_broken",
            "the update log takes no more batches after a write that could not be undone: restart needed \
             (the log is replayed up to its last whole batch); nothing was applied",
        ),
        UpdateError::EngineDown => crate::routes::engine_down(),
        UpdateError::ReadOnly => ApiError::client(
            StatusCode::CONFLICT,
            "read_only",
            "this server's table takes no updates (a synthetic table, or one served without an update log)",
        ),
        UpdateError::Failed(details) => ApiError::internal(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_faults_map_to_what_the_feeder_should_do() {
        let cases = [
            (UpdateError::LogBroken, StatusCode::SERVICE_UNAVAILABLE, "log_broken", "restart needed"),
            (UpdateError::EngineDown, StatusCode::SERVICE_UNAVAILABLE, "engine_down", "restarts"),
            (
                UpdateError::Refused(morphogen_epochs::Error::EpochsExhausted),
                StatusCode::CONFLICT,
                "epochs_exhausted",
                "new snapshot",
            ),
            (
                UpdateError::Refused(morphogen_epochs::Error::BatchPages { max_pages: 4, max_bytes: 16384 }),
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                "more than 4 pages",
            ),
            (
                UpdateError::Refused(morphogen_epochs::Error::OtherBatchApplied { epoch: 7 }),
                StatusCode::CONFLICT,
                "sequence",
                "batch 7 was applied already",
            ),
        ];
        for (error, status, code, words) in cases {
            let answer = update_error(error);
            assert_eq!((answer.status, answer.code), (status, code));
            assert!(answer.message.contains(words), "{}", answer.message);
        }
    }

    #[test]
    fn the_update_body_limit_covers_the_longest_changes() {
        let change = serde_json::json!({"key": "ab".repeat(64), "value": "cd".repeat(32)}).to_string();
        // And the longest label: a string of 4,094 characters is 4,096 bytes of JSON.
        let label = serde_json::json!("x".repeat(MAX_LABEL_LEN - 2)).to_string();
        let body = format!(
            "{{\"sequence\": 1, \"changes\": [{}], \"label\": {label}}}",
            vec![change; 10].join(", ")
        );
        assert!(body.len() <= max_update_body(10, 32), "{} > {}", body.len(), max_update_body(10, 32));
        assert!(max_update_body(10, 32) < 4 * body.len(), "the limit is not far beyond what is needed");
    }
}
