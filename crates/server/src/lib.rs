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
//! see `docs/PROTOCOL.md`), `GET /metrics` (Prometheus), and, with an admin
//! token, `POST /admin/v1/updates`. Scans run on a thread of their own that
//! owns the engine, never on the async runtime's workers; concurrent
//! requests share passes through one bounded queue (continuous batching,
//! see [`batcher`](crate::batcher)), and update batches are applied on that
//! thread between passes. Keys, values and answers are never logged.

mod admin;
mod batcher;
mod errors;
mod metrics;
mod routes;

use std::future::Future;
use std::sync::Arc;

use morphogen_dpf::Key;
use morphogen_epochs::{Epochs, History};
use morphogen_protocol::{Meta, PROTOCOL_VERSION};
use morphogen_scan::Engine;
use morphogen_table::{Layout, Table};
use tokio::net::TcpListener;

use batcher::{Batcher, Current};
pub use errors::ApiError;

/// Limits and settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most queries one pass (and so one request) may hold.
    pub max_batch: usize,
    /// Most queries waiting for a pass; a request that does not fit is
    /// answered 503 with `Retry-After`. At least `max_batch`.
    pub max_queue: usize,
    /// The bearer token of the admin routes; `None` disables them.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config { max_batch: DEFAULT_MAX_BATCH, max_queue: DEFAULT_MAX_QUEUE, admin_token: None }
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

/// What a server publishes about the snapshot it answers from.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// The table's shape and hash seed.
    pub layout: Layout,
    /// The snapshot's digest, which clients compare between the two servers.
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
    /// The metadata that does not change between epochs.
    meta: Meta,
    layout: Layout,
    /// Diffs of recent epochs; `None` for a table that takes no updates.
    history: Option<History>,
    /// BLAKE3 of the admin token: compared in constant time.
    admin_token: Option<blake3::Hash>,
    /// The largest body a request of `max_batch` queries can need, with room
    /// to spare so that an oversized batch is reported as such.
    max_body_bytes: usize,
    batcher: Batcher,
    metrics: metrics::Metrics,
}

impl Server {
    /// A server answering with `engine` from the table `table` describes;
    /// the engine must have been made over that table. With `epochs` (the
    /// table's update log, already replayed into the engine's table) the
    /// server takes update batches; without, it answers from epoch 0 only.
    /// Starts the scan thread.
    pub fn new(
        table: TableInfo,
        engine: Box<dyn Engine>,
        epochs: Option<Epochs>,
        config: Config,
    ) -> Result<Server, Error> {
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
        if config.admin_token.as_ref().is_some_and(|token| token.trim().is_empty()) {
            return Err(Error::Config("the admin token is empty".to_string()));
        }
        let current = match &epochs {
            Some(epochs) => Current::of(epochs),
            None => Current { epoch: 0, digest: table.digest, records: table.records },
        };
        let history = epochs.as_ref().map(|epochs| epochs.history().clone());
        let meta = Meta {
            protocol_version: PROTOCOL_VERSION,
            digest: hex::encode(table.digest),
            epoch: 0,
            snapshot_digest: hex::encode(table.digest),
            oldest_epoch: 0,
            epoch_window: history.as_ref().map_or(0, History::window),
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
        let limits = (config.max_batch, config.max_queue);
        let batcher = Batcher::start(engine, epochs, current, limits, metrics.clone())?;
        let admin_token = config.admin_token.as_deref().map(|token| blake3::hash(token.trim().as_bytes()));
        let state =
            State { meta, layout: layout.clone(), history, admin_token, max_body_bytes, batcher, metrics };
        Ok(Server { state: Arc::new(state) })
    }

    /// The metadata this server publishes at `/v1/meta` now.
    pub fn meta(&self) -> Meta {
        self.state.meta()
    }

    /// Serves requests from `listener` until `shutdown` completes, then
    /// finishes the requests in flight. The admin routes (if an admin token
    /// is configured) are served from `admin_listener` when one is given,
    /// and otherwise from `listener` too.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let upkeep = tokio::spawn(self.state.metrics.clone().upkeep());
        let admin = self.state.admin_token.is_some().then(|| admin::router(self.state.clone()));
        let public = routes::router(self.state);
        let (stop, stopped) = tokio::sync::watch::channel(());
        let signal = |mut stopped: tokio::sync::watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(());
        });
        let result = match (admin, admin_listener) {
            (Some(admin), Some(admin_listener)) => {
                let public = axum::serve(listener, public).with_graceful_shutdown(signal(stopped.clone()));
                let admin = axum::serve(admin_listener, admin).with_graceful_shutdown(signal(stopped));
                tokio::try_join!(public.into_future(), admin.into_future()).map(|_| ())
            }
            (Some(admin), None) => {
                axum::serve(listener, public.merge(admin)).with_graceful_shutdown(signal(stopped)).await
            }
            (None, _) => axum::serve(listener, public).with_graceful_shutdown(signal(stopped)).await,
        };
        upkeep.abort();
        result
    }
}

impl State {
    /// The metadata as of the current epoch.
    fn meta(&self) -> Meta {
        let current = self.batcher.current();
        Meta {
            digest: hex::encode(current.digest),
            epoch: current.epoch,
            records: current.records,
            oldest_epoch: self.oldest_epoch(current.epoch),
            ..self.meta.clone()
        }
    }

    /// The oldest epoch a query may name when `current` is the newest.
    fn oldest_epoch(&self, current: u64) -> u64 {
        self.history.as_ref().map_or(current, |history| history.oldest().min(current))
    }
}
