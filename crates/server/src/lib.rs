//! The morphogen server: answers private lookups over one table through HTTP.
//!
//! ```text
//! client                                   server A            server B
//!   --- POST /v1/query {epoch, [kA_1..kA_k]} -->  scan
//!   --- POST /v1/query {epoch, [kB_1..kB_k]} ------------------>  scan
//!   <-- [pages A_1..A_k] ------------------------
//!   <-- [pages B_1..B_k] ---------------------------------------
//!   page_j = A_j xor B_j
//! ```
//!
//! Routes: `GET /v1/health`, `GET /v1/meta` (JSON), `POST /v1/query` (binary,
//! see `docs/PROTOCOL.md`), `GET /metrics` (Prometheus). Scans run on a
//! thread of their own that owns the engine, never on the async runtime's
//! workers. Keys and answers are never logged.

mod errors;
mod metrics;
mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use morphogen_dpf::Key;
use morphogen_protocol::{Meta, PROTOCOL_VERSION};
use morphogen_scan::{Answers, Engine, Query};
use morphogen_table::{Layout, Table};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use errors::ApiError;

/// Limits and settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most queries one request may hold.
    pub max_batch: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config { max_batch: DEFAULT_MAX_BATCH }
    }
}

/// Queries per request unless configured otherwise.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Requests waiting for the scan thread; beyond this, senders wait.
const SCAN_QUEUE: usize = 1024;

/// A server over one table, ready to be bound to a listener.
pub struct Server {
    state: Arc<State>,
}

/// What every request handler shares.
pub(crate) struct State {
    meta: Meta,
    layout: Layout,
    /// The largest body a request of `max_batch` queries can need, with room
    /// to spare so that an oversized batch is reported as such.
    max_body_bytes: usize,
    scans: mpsc::Sender<ScanJob>,
    metrics: metrics::Metrics,
}

/// One request's queries on their way to the scan thread.
struct ScanJob {
    queries: Vec<Query>,
    reply: oneshot::Sender<Result<Answers, morphogen_scan::Error>>,
}

impl Server {
    /// A server answering from `table` with `engine`, which must have been
    /// made over the same table. Starts the scan thread.
    pub fn new(table: &Table, engine: Box<dyn Engine>, config: Config) -> Result<Server, std::io::Error> {
        let layout = table.layout();
        assert_eq!(layout, engine.layout(), "the engine answers from another table");
        let meta = Meta {
            protocol_version: PROTOCOL_VERSION,
            digest: hex::encode(table.digest()),
            epoch: 0,
            page_size: layout.page_size(),
            row_size: layout.row_size(),
            value_size: layout.value_size(),
            sub_tables: vec![layout.pages_per_table(); usize::from(layout.choices())],
            hash_seed: hex::encode(layout.seed()),
            records: table.records(),
            engine: engine.name().to_string(),
            max_batch: config.max_batch,
        };
        let key_len =
            Key::encoded_len(layout.pages_per_table()).expect("a layout's page count is a DPF domain");
        let max_body_bytes = 2
            * (morphogen_protocol::HEADER_LEN + config.max_batch * usize::from(layout.choices()) * key_len)
            + (64 << 10);
        let metrics = metrics::Metrics::new();
        let (scans, jobs) = mpsc::channel(SCAN_QUEUE);
        let pass_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("morphogen-scan".to_string())
            .spawn(move || scan_loop(engine, jobs, pass_metrics))?;
        Ok(Server { state: Arc::new(State { meta, layout: layout.clone(), max_body_bytes, scans, metrics }) })
    }

    /// The metadata this server publishes at `/v1/meta`.
    pub fn meta(&self) -> &Meta {
        &self.state.meta
    }

    /// Serves requests from `listener` until `shutdown` completes, then
    /// finishes the requests in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let upkeep = tokio::spawn(self.state.metrics.clone().upkeep());
        let result = axum::serve(listener, routes::router(self.state)).with_graceful_shutdown(shutdown).await;
        upkeep.abort();
        result
    }
}

/// The scan thread: one pass per request, in arrival order, until every
/// sender is gone.
fn scan_loop(mut engine: Box<dyn Engine>, mut jobs: mpsc::Receiver<ScanJob>, metrics: metrics::Metrics) {
    while let Some(job) = jobs.blocking_recv() {
        let started = Instant::now();
        let result = engine.pass(&job.queries);
        metrics.pass(job.queries.len(), started.elapsed(), &engine.last_pass_phases());
        // The requester may have gone away; its answer is then not needed.
        let _ = job.reply.send(result);
    }
}
