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
//! workers; concurrent requests share passes through one bounded queue
//! (continuous batching, see [`batcher`](crate::batcher)). Keys and answers
//! are never logged.

mod batcher;
mod errors;
mod metrics;
mod routes;

use std::future::Future;
use std::sync::Arc;

use morphogen_dpf::Key;
use morphogen_protocol::{Meta, PROTOCOL_VERSION};
use morphogen_scan::Engine;
use morphogen_table::{Layout, Table};
use tokio::net::TcpListener;

use batcher::Batcher;
pub use errors::ApiError;

/// Limits and settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most queries one pass (and so one request) may hold.
    pub max_batch: usize,
    /// Most queries waiting for a pass; a request that does not fit is
    /// answered 503 with `Retry-After`. At least `max_batch`.
    pub max_queue: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config { max_batch: DEFAULT_MAX_BATCH, max_queue: DEFAULT_MAX_QUEUE }
    }
}

/// Queries per pass unless configured otherwise. Passes of 64 answer each
/// query only 2-3% cheaper than passes of 32 on both engines, but take twice
/// as long; with 32, clients answered by one pass prepare their next
/// requests while the next pass runs (docs/PERFORMANCE.md, issue 7).
pub const DEFAULT_MAX_BATCH: usize = 32;

/// Queries waiting for a pass unless configured otherwise: 32 full passes,
/// about a second on a GPU, a few seconds on CPU cores.
pub const DEFAULT_MAX_QUEUE: usize = 1024;

/// Why a server could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The scan thread could not be started.
    #[error("starting the scan thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What a server publishes about the table it answers from.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// The table's shape and hash seed.
    pub layout: Layout,
    /// Its digest, which clients compare between the two servers.
    pub digest: [u8; 32],
    /// Records it holds.
    pub records: u64,
}

impl TableInfo {
    /// What `table` is.
    pub fn of(table: &Table) -> TableInfo {
        TableInfo { layout: table.layout().clone(), digest: table.digest(), records: table.records() }
    }
}

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
    batcher: Batcher,
    metrics: metrics::Metrics,
}

impl Server {
    /// A server answering with `engine` from the table `table` describes;
    /// the engine must have been made over that table. Starts the scan thread.
    pub fn new(table: TableInfo, engine: Box<dyn Engine>, config: Config) -> Result<Server, Error> {
        if config.max_batch == 0 {
            return Err(Error::Config("the batch limit must be at least 1".to_string()));
        }
        if config.max_queue < config.max_batch {
            return Err(Error::Config(format!(
                "the queue limit ({}) must be at least the batch limit ({})",
                config.max_queue, config.max_batch
            )));
        }
        let layout = &table.layout;
        assert_eq!(layout, engine.layout(), "the engine answers from another table");
        let meta = Meta {
            protocol_version: PROTOCOL_VERSION,
            digest: hex::encode(table.digest),
            epoch: 0,
            page_size: layout.page_size(),
            row_size: layout.row_size(),
            value_size: layout.value_size(),
            sub_tables: vec![layout.pages_per_table(); usize::from(layout.choices())],
            hash_seed: hex::encode(layout.seed()),
            records: table.records,
            engine: engine.name().to_string(),
            max_batch: config.max_batch,
        };
        let key_len =
            Key::encoded_len(layout.pages_per_table()).expect("a layout's page count is a DPF domain");
        let max_body_bytes = 2
            * (morphogen_protocol::HEADER_LEN + config.max_batch * usize::from(layout.choices()) * key_len)
            + (64 << 10);
        let metrics = metrics::Metrics::new();
        let batcher = Batcher::start(engine, config.max_batch, config.max_queue, metrics.clone())?;
        Ok(Server {
            state: Arc::new(State { meta, layout: layout.clone(), max_body_bytes, batcher, metrics }),
        })
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
