//! The morphogen server: answers private lookups over one or more tables
//! through HTTP.
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
//! Routes: `GET /v1/health`, `GET /v1/tables` (JSON: the tables' names and
//! what the operator says about them), per table `GET
//! /v1/tables/{name}/meta` (JSON) and `POST /v1/tables/{name}/query`
//! (binary, see `docs/PROTOCOL.md`), `GET /metrics` (Prometheus), and, with
//! an admin token, per table `GET …/status`, `POST …/updates` and `POST
//! …/snapshot` under `/admin/v1/tables/{name}` (see [`SnapshotLoader`]). A
//! server of one table also answers for it at `/v1/meta`, `/v1/query` and
//! `/admin/v1/…`. Each table's scans run on a thread of their own that owns
//! its engine, never on the async runtime's workers; concurrent requests
//! share passes through one bounded queue per table (continuous batching,
//! see [`batcher`](crate::batcher)), and update batches and snapshot swaps
//! are applied on that thread when no query is being scanned. Keys, values and answers are
//! never logged.

mod admin;
mod batcher;
mod errors;
mod files;
mod limits;
mod listen;
mod metrics;
mod published;
mod routes;
mod snapshot;
mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use morphogen_dpf::Key;
use morphogen_epochs::Epochs;
use morphogen_protocol::{Catalog, Meta, is_table_name};
use morphogen_scan::Engine;
use morphogen_table::{CHOICES, Layout, MAX_PAGES_PER_TABLE, Table};
use tokio::net::TcpListener;

use batcher::Batcher;
pub use errors::ApiError;
pub use files::{
    FileSnapshots, OpenEngine, OpenOptions, Start, check_pointer, open_manifest, open_single, open_table,
    start,
};
pub use limits::Limits;
use published::Published;
use snapshot::Swaps;
pub use snapshot::{LoadedSnapshot, SnapshotLoader};
pub use tls::{TlsError, server_config as tls_config};

/// Limits and settings of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most queries one pass (and so one request) may hold.
    pub max_batch: usize,
    /// Most queries waiting for a pass of one table; a request that does
    /// not fit is answered 503 with `Retry-After`. At least `max_batch`.
    pub max_queue: usize,
    /// The bearer token of the admin routes, at least
    /// [`MIN_ADMIN_TOKEN_LEN`] bytes; `None` disables them.
    pub admin_token: Option<String>,
    /// Most changes one update batch may hold; the update route's body
    /// limit follows from it and the table's value size.
    pub max_batch_changes: usize,
    /// Most changed rows an answer as of an older epoch may take back, per
    /// query: the epochs a server answers as of are those within it (and
    /// within the epoch window); older ones are refused 410
    /// `epoch_unavailable`.
    pub max_rewind_rows: usize,
    /// What one client may hold of the server.
    pub limits: Limits,
    /// TLS for both listeners (see [`tls_config`]); `None` serves plain
    /// HTTP, for loopback or behind a TLS-terminating proxy.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What the operator says about the tables as a whole (for example the
    /// chain and block of Ethereum tables), published as is at `/v1/tables`.
    pub about: serde_json::Map<String, serde_json::Value>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_batch: DEFAULT_MAX_BATCH,
            max_queue: DEFAULT_MAX_QUEUE,
            admin_token: None,
            max_batch_changes: DEFAULT_MAX_BATCH_CHANGES,
            max_rewind_rows: DEFAULT_MAX_REWIND_ROWS,
            limits: Limits::default(),
            tls: None,
            about: serde_json::Map::new(),
        }
    }
}

/// Queries per pass unless configured otherwise. Larger passes answer each
/// query hardly cheaper but take longer; with 32, clients answered by one
/// pass prepare their next requests while the next pass runs
/// (docs/performance-log.md has the figures).
pub const DEFAULT_MAX_BATCH: usize = 32;

/// Queries waiting for a pass unless configured otherwise: 32 full passes,
/// about a second on a GPU, a few seconds on CPU cores.
pub const DEFAULT_MAX_QUEUE: usize = 1024;

/// Changes an update batch may hold unless configured otherwise: a block
/// of a busy chain changes a few thousand slots; the body of this many
/// changes of 32-byte values may be 24 MiB.
pub const DEFAULT_MAX_BATCH_CHANGES: usize = 100_000;

/// Changed rows an answer may be taken back through unless configured
/// otherwise: a few blocks of a busy chain, a few thousand epochs of
/// small batches. Each costs a DPF point evaluation at most.
pub const DEFAULT_MAX_REWIND_ROWS: usize = 16_384;

/// The shortest admin token accepted, in bytes (leading and trailing
/// whitespace aside): short enough to type, long enough not to be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Why a server could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The scan thread could not be started.
    #[error("starting the scan thread: {0}")]
    Thread(#[from] std::io::Error),
    /// A table file, its update log or a manifest could not be opened.
    #[error("{what}")]
    Open {
        /// What was being opened.
        what: String,
        /// Why it could not be.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No engine could be opened over a table.
    #[error("opening the scan engine")]
    Engine(#[from] morphogen_engines::Error),
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

/// One table a server serves.
pub struct ServedTable {
    /// Its name: its routes are `/v1/tables/{name}/…` and its metrics carry
    /// the label `table="{name}"` (see [`morphogen_protocol::is_table_name`]).
    pub name: String,
    /// What it is.
    pub table: TableInfo,
    /// The engine answering from it, made over that table.
    pub engine: Box<dyn Engine>,
    /// Its update log, already replayed into the engine's table: with it the
    /// table takes update batches; without, it answers from epoch 0 only.
    pub epochs: Option<Epochs>,
    /// Loads the snapshots it may be swapped to; `None` disables swaps.
    pub snapshots: Option<Arc<dyn SnapshotLoader>>,
}

impl ServedTable {
    /// The table `name`, answered by `engine`, taking no updates or swaps.
    pub fn new(name: &str, table: TableInfo, engine: Box<dyn Engine>) -> ServedTable {
        ServedTable { name: name.to_string(), table, engine, epochs: None, snapshots: None }
    }
}

/// The name of the table of a server started on one table file.
pub const DEFAULT_TABLE: &str = "default";

/// A server over one or more tables, ready to be bound to a listener.
pub struct Server {
    /// By name.
    tables: BTreeMap<String, Arc<State>>,
    catalog: Arc<Catalog>,
    metrics: metrics::Metrics,
    admin: bool,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// What every request handler of one table shares.
pub(crate) struct State {
    name: String,
    /// The server's random instance id, hex, published in the metadata.
    instance: Arc<str>,
    /// BLAKE3 of the admin token: compared in constant time.
    admin_token: Option<blake3::Hash>,
    /// The largest body a request of `max_batch` queries can need for any
    /// table, with room to spare so that an oversized batch is reported as
    /// such.
    max_body_bytes: usize,
    /// Most queries one request may hold.
    max_batch: usize,
    /// Most changes one update batch may hold.
    max_batch_changes: usize,
    /// Most changed rows one query's answer may be taken back through.
    max_rewind_rows: usize,
    /// The request deadline, which the update route keeps itself.
    request_timeout: std::time::Duration,
    batcher: Batcher,
    swaps: Swaps,
    /// Labelled with the table's name.
    metrics: metrics::Metrics,
}

impl Server {
    /// A server answering from `tables`, each with its own engine, queue and
    /// scan thread: one pass serves one table. Starts the scan threads.
    pub fn new(tables: Vec<ServedTable>, config: Config) -> Result<Server, Error> {
        if tables.is_empty() {
            return Err(Error::Config("a server needs at least one table".to_string()));
        }
        if config.max_batch == 0 {
            return Err(Error::Config("the batch limit must be at least 1".to_string()));
        }
        if config.max_queue < config.max_batch {
            return Err(Error::Config(format!(
                "the queue limit ({}) must be at least the batch limit ({})",
                config.max_queue, config.max_batch
            )));
        }
        if let Some(token) = &config.admin_token
            && token.trim().len() < MIN_ADMIN_TOKEN_LEN
        {
            return Err(Error::Config(format!(
                "the admin token is {} bytes; use at least {MIN_ADMIN_TOKEN_LEN} random ones \
                 (for example: openssl rand -hex 32 > admin.token)",
                token.trim().len()
            )));
        }
        if config.max_rewind_rows == 0 {
            return Err(Error::Config("the rewind budget must be at least 1 row".to_string()));
        }
        if config.max_batch_changes == 0 {
            return Err(Error::Config(
                "the limit of changes per update batch must be at least 1".to_string(),
            ));
        }
        config.limits.check().map_err(Error::Config)?;
        let admin_token = config.admin_token.as_deref().map(|token| blake3::hash(token.trim().as_bytes()));
        let metrics = metrics::Metrics::new();
        let instance: Arc<str> = Arc::from(hex::encode(rand::random::<[u8; 16]>()));
        // Every table checked before any scan thread starts.
        let mut names = std::collections::BTreeSet::new();
        for served in &tables {
            let name = &served.name;
            if !is_table_name(name) {
                return Err(Error::Config(format!(
                    "{name:?} cannot name a table: use 1 to 64 of a-z, 0-9, - and _"
                )));
            }
            if !names.insert(name) {
                return Err(Error::Config(format!("two tables are named {name:?}")));
            }
            if served.snapshots.is_some() && admin_token.is_none() {
                return Err(Error::Config(
                    "snapshot swaps need the admin routes (an admin token)".to_string(),
                ));
            }
        }
        let mut states = BTreeMap::new();
        for served in tables {
            let name = served.name.clone();
            let state =
                State::start(served, &config, admin_token, instance.clone(), metrics.for_table(&name))?;
            states.insert(name, Arc::new(state));
        }
        let catalog = Catalog { tables: states.keys().cloned().collect(), about: config.about };
        Ok(Server {
            tables: states,
            catalog: Arc::new(catalog),
            metrics,
            admin: admin_token.is_some(),
            limits: config.limits,
            tls: config.tls,
        })
    }

    /// The metadata each table publishes at `/v1/tables/{name}/meta` now.
    pub fn meta(&self) -> BTreeMap<String, Meta> {
        self.tables.iter().map(|(name, state)| (name.clone(), state.meta())).collect()
    }

    /// Serves requests from `listener` until `shutdown` completes, then
    /// finishes the requests in flight. The admin routes (if an admin token
    /// is configured) are served from `admin_listener` when one is given,
    /// and otherwise from `listener` too; `/metrics` from `listener`. All
    /// speak TLS if configured.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listeners = Listeners { public: listener, admin: admin_listener, metrics: MetricsAt::Public };
        self.serve_on(listeners, shutdown).await
    }

    /// [`Server::serve`] with `/metrics` where `listeners` say.
    pub async fn serve_on(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Listeners { public: public_listener, admin: admin_listener, metrics: metrics_at } = listeners;
        if matches!(metrics_at, MetricsAt::Admin) && admin_listener.is_none() {
            return Err(std::io::Error::other("metrics on the admin listener need an admin listener"));
        }
        let upkeep = tokio::spawn(self.metrics.clone().upkeep());
        let with_limits = |router| limits::apply(router, &self.limits);
        let deadline = limits::Deadline::new(self.limits.request_timeout, self.metrics.clone());
        let only = (self.tables.len() == 1).then(|| self.tables.values().next().cloned()).flatten();
        let tables: Vec<Arc<State>> = self.tables.values().cloned().collect();
        let metrics_routes = routes::metrics_router(self.metrics.clone());
        let mut public = routes::router(&tables, only.clone(), self.catalog.clone());
        let mut admin = self.admin.then(|| admin::router(&tables, only, self.catalog.clone(), &deadline));
        let mut own_metrics = None;
        match metrics_at {
            MetricsAt::Public => public = public.merge(metrics_routes),
            MetricsAt::Admin => admin = Some(admin.unwrap_or_default().merge(metrics_routes)),
            MetricsAt::Own(listener) => own_metrics = Some((listener, with_limits(metrics_routes))),
        }
        let public = with_limits(limits::with_deadline(public, &deadline));
        let admin = admin.map(with_limits);
        let (stop, stopped) = tokio::sync::watch::channel(());
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(());
        });
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let serve = |listener, router, stopped| {
            listen::serve(listener, router, tls.clone(), &self.limits, self.metrics.clone(), stopped)
        };
        let metrics_serving = async {
            match own_metrics {
                Some((listener, router)) => serve(listener, router, stopped.clone()).await,
                None => Ok(()),
            }
        };
        let main_serving = async {
            match (admin, admin_listener) {
                (Some(admin), Some(admin_listener)) => {
                    let public = serve(public_listener, public, stopped.clone());
                    let admin = serve(admin_listener, admin, stopped.clone());
                    tokio::try_join!(public, admin).map(|_| ())
                }
                (Some(admin), None) => serve(public_listener, public.merge(admin), stopped.clone()).await,
                (None, _) => serve(public_listener, public, stopped.clone()).await,
            }
        };
        let result = tokio::try_join!(main_serving, metrics_serving).map(|_| ());
        upkeep.abort();
        result
    }
}

/// The listeners of a server.
pub struct Listeners {
    /// Lookups, metadata and health.
    pub public: TcpListener,
    /// The admin routes, if an admin token is configured; beside the
    /// public routes when `None`.
    pub admin: Option<TcpListener>,
    /// Where `/metrics` is served.
    pub metrics: MetricsAt,
}

/// Where a server serves its Prometheus metrics (`GET /metrics`).
pub enum MetricsAt {
    /// Beside the public routes.
    Public,
    /// On the admin listener only (it needs one), without the token:
    /// reachable where the admin routes are.
    Admin,
    /// On a listener of its own only.
    Own(TcpListener),
}

impl State {
    /// Readies `served` to answer: its snapshot, queue and scan thread.
    fn start(
        served: ServedTable,
        config: &Config,
        admin_token: Option<blake3::Hash>,
        instance: Arc<str>,
        metrics: metrics::Metrics,
    ) -> Result<State, Error> {
        let ServedTable { name, table, engine, epochs, snapshots } = served;
        if &table.layout != engine.layout() {
            return Err(Error::Config(format!("the engine of table {name} answers from another table")));
        }
        let published = Published::new(&table, engine.name(), epochs.as_ref(), config.max_batch);
        // Any table the server may swap to: the longest keys, the most sub-tables.
        let key_len = Key::encoded_len(MAX_PAGES_PER_TABLE).expect("the largest page count is a DPF domain");
        let max_keys = config.max_batch * usize::from(*CHOICES.end());
        let max_body_bytes = 2 * (morphogen_protocol::HEADER_LEN + max_keys * key_len) + (64 << 10);
        let limits = (config.max_batch, config.max_queue);
        let batcher = Batcher::start(engine, epochs, published, limits, metrics.clone())?;
        let swaps = Swaps::new(snapshots);
        Ok(State {
            name,
            instance,
            admin_token,
            max_body_bytes,
            max_batch: config.max_batch,
            max_batch_changes: config.max_batch_changes,
            max_rewind_rows: config.max_rewind_rows,
            request_timeout: config.limits.request_timeout,
            batcher,
            swaps,
            metrics,
        })
    }

    /// The metadata as of the current epoch.
    fn meta(&self) -> Meta {
        self.batcher.published().meta(self.max_rewind_rows, &self.instance)
    }
}
