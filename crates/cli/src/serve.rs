//! `morphogen serve`: answer private lookups over one table, or several
//! named in a manifest, through HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::TypedValueParser;
use morphogen_epochs::{
    Bounds, DEFAULT_BATCH_BYTES, DEFAULT_HISTORY_BYTES, DEFAULT_WINDOW, SnapshotDir, Tail,
};
use morphogen_server::{
    Config, DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_CHANGES, DEFAULT_MAX_QUEUE, DEFAULT_MAX_REWIND_ROWS,
    DEFAULT_TABLE, Limits, Listeners, MetricsAt, OpenOptions, ServedTable, Server,
};
use tokio::net::TcpListener;

use crate::engine::{self, EngineChoice};
use crate::progress::Bar;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("table").required(true).multiple(true).args(["db", "pages", "snapshot_dir", "tables"]))]
pub struct ServeArgs {
    /// The table file (.mgdb) to serve. Its pages are hashed and checked
    /// against the digest in its header before the server starts.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Instead of --db, serve a table of N pseudorandom 4-KiB pages in two
    /// sub-tables and no records, generated where the engine keeps its table
    /// (GPU memory for the CUDA engine): for capacity tests with
    /// `morphogen load --single-server` (N = 16777216 is 64 GiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..),
          conflicts_with_all = ["db", "snapshot_dir"])]
    pages: Option<u64>,
    /// Instead of --db, serve several tables, each at
    /// /v1/tables/{name}/meta and /v1/tables/{name}/query: FILE is a JSON
    /// manifest whose "tables" object maps each name to its table file
    /// (relative to the manifest); its other fields are published as they
    /// are at /v1/tables. `morphogen eth build` writes one (eth.json). Each
    /// table's update log is beside its file (`<file>.log`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["db", "pages", "log"])]
    tables: Option<PathBuf>,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Engine that scans the table.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// Most queries one pass over the table answers, and so one request
    /// may hold. Concurrent requests share passes up to this size.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BATCH,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    max_batch: usize,
    /// Most queries waiting for a pass. A request that does not fit is
    /// answered 503 with Retry-After, so memory stays bounded under any
    /// load. At least --max-batch.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_QUEUE,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_queue: usize,
    /// The update log of the --db table, replayed at start-up; default: the
    /// table's path with `.log` appended. It is created when the admin
    /// routes are enabled; without them an existing log is still replayed.
    #[arg(long, value_name = "FILE", requires = "db")]
    log: Option<PathBuf>,
    /// Drop the last record of the update log if it is whole but fails its
    /// checksum, instead of refusing to start. Such a record may hold a
    /// batch that was acknowledged: send it again after the restart.
    #[arg(long)]
    truncate_damaged_log: bool,
    /// How many epochs back a query may ask to be answered as of.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u64).range(1..))]
    epoch_window: u64,
    /// Most changed rows an answer as of an older epoch may be taken back
    /// through, per query: older epochs are refused (410
    /// epoch_unavailable) and /v1/meta's oldest_epoch says so. Bounds the
    /// work a lookup of an older epoch can cost.
    #[arg(long, value_name = "ROWS", default_value_t = DEFAULT_MAX_REWIND_ROWS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_rewind_rows: usize,
    /// Most MiB the diffs of the epoch window may take; past it the oldest
    /// epochs are forgotten early (the window shrinks, with a warning and
    /// the metric morphogen_history_forgotten_for_bytes_total).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_HISTORY_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_history_mib: u64,
    /// Most MiB of pages one update batch may rewrite (pages touched × page
    /// size); a larger batch is refused (413 batch_too_large).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_BATCH_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_batch_mib: u64,
    /// A file holding the bearer token of the admin routes (updates).
    /// Without it (or MORPHOGEN_ADMIN_TOKEN in the environment) the admin
    /// routes are disabled.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Most changes one update batch may hold (413 too_many_changes beyond);
    /// the update route's body limit follows from it and the value size.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BATCH_CHANGES,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_batch_changes: usize,
    /// A directory of table files the server may be told to swap to
    /// (`morphogen snapshot`, POST /admin/v1/snapshot); needs the admin
    /// routes. The server records the snapshot it serves in
    /// DIR/current.json and, once a swap has happened, serves that one at
    /// start-up instead of --db. Each file's update log is beside it
    /// (`<file>.log`). With --tables, each table has the directory
    /// DIR/{name} (made if missing), swapped table by table
    /// (`morphogen snapshot --table NAME`).
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Serve the admin routes on this address only, instead of beside the
    /// public ones: keep it on a private network.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Serve /metrics (Prometheus) on this address only, or with `admin` on
    /// the --admin-listen address only, instead of beside the public
    /// routes: keep what the server counts off the internet.
    #[arg(long, value_name = "ADDR|admin", value_parser = parse_metrics_listen)]
    metrics_listen: Option<MetricsListen>,
    /// Threads of the CPU engine; all cores when not given. Give each of two
    /// servers sharing one machine half of its cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    cpu_threads: Option<usize>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// TLS on both listeners. Without it the server speaks plain HTTP, which
/// is only safe on loopback or behind a TLS-terminating proxy on the same
/// host: anyone who sees both servers' traffic learns the key looked up.
#[derive(Args)]
struct TlsArgs {
    /// The server's certificate chain (PEM, its own certificate first).
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "TLS")]
    tls_key: Option<PathBuf>,
}

/// What one client may hold of the server (docs/SECURITY.md).
#[derive(Args)]
struct LimitArgs {
    /// Most open connections per listener; further ones wait until one closes.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize), help_heading = "Limits")]
    max_connections: usize,
    /// Most open connections per listener from one client address (IPv4,
    /// or an IPv6 /64); further ones are closed at once. Behind a proxy,
    /// where every client has the proxy's address, set it to --max-connections.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections_per_client,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize), help_heading = "Limits")]
    max_connections_per_client: usize,
    /// Longest stall, in seconds, of a write to a client; a client that does
    /// not read its answers loses its connection after it.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().write_timeout.as_secs_f64(),
          value_parser = crate::positive_seconds, help_heading = "Limits")]
    write_timeout: f64,
    /// Seconds for a TLS handshake and for a request's headers; an idle
    /// keep-alive connection is closed after as long.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().header_timeout.as_secs_f64(),
          value_parser = crate::positive_seconds, help_heading = "Limits")]
    header_timeout: f64,
    /// Longest pause, in seconds, while a request body arrives (408 body_timeout).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().body_timeout.as_secs_f64(),
          value_parser = crate::positive_seconds, help_heading = "Limits")]
    body_timeout: f64,
    /// Seconds from a request's headers to its answer, queue and pass
    /// included (503 deadline_exceeded).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().request_timeout.as_secs_f64(),
          value_parser = crate::positive_seconds, help_heading = "Limits")]
    request_timeout: f64,
    /// Largest request path and headers, in bytes (431 headers_too_large).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_header_bytes,
          value_parser = clap::value_parser!(u32).range(1024..).map(|n| n as usize), help_heading = "Limits")]
    max_header_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            write_timeout: Duration::from_secs_f64(self.write_timeout),
            header_timeout: Duration::from_secs_f64(self.header_timeout),
            body_timeout: Duration::from_secs_f64(self.body_timeout),
            request_timeout: Duration::from_secs_f64(self.request_timeout),
            max_header_bytes: self.max_header_bytes,
        }
    }
}

impl ServeArgs {
    /// What each table's epochs may hold.
    fn bounds(&self) -> Bounds {
        Bounds {
            window: self.epoch_window,
            history_bytes: self.max_history_mib << 20,
            batch_bytes: self.max_batch_mib << 20,
        }
    }
}

/// Where `--metrics-listen` puts `/metrics`.
#[derive(Clone, Copy)]
enum MetricsListen {
    Admin,
    Address(SocketAddr),
}

fn parse_metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if text == "admin" {
        return Ok(MetricsListen::Admin);
    }
    text.parse()
        .map(MetricsListen::Address)
        .map_err(|_| format!("{text:?} is neither an address (IP:PORT) nor `admin`"))
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    // Server::new checks this too; here it fails before a large table is loaded.
    if args.max_queue < args.max_batch {
        anyhow::bail!("--max-queue ({}) must be at least --max-batch ({})", args.max_queue, args.max_batch);
    }
    if let Some(threads) = args.cpu_threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("starting the CPU engine's threads")?;
    }
    let admin_token = admin_token(args.admin_token_file.as_deref())?;
    // Before the table is loaded: a wrong path should not cost minutes.
    let tls = match (&args.tls.tls_cert, &args.tls.tls_key) {
        (Some(certificate), Some(key)) => Some(morphogen_server::tls_config(certificate, key)?),
        _ => None,
    };
    if args.admin_listen.is_some() && admin_token.is_none() {
        anyhow::bail!("--admin-listen needs an admin token (--admin-token-file or {TOKEN_VARIABLE})");
    }
    if matches!(args.metrics_listen, Some(MetricsListen::Admin)) && args.admin_listen.is_none() {
        anyhow::bail!("--metrics-listen admin needs --admin-listen");
    }
    let snapshot_dir = match &args.snapshot_dir {
        Some(dir) => {
            if admin_token.is_none() {
                anyhow::bail!("--snapshot-dir needs an admin token (--admin-token-file or {TOKEN_VARIABLE})");
            }
            Some(SnapshotDir::new(dir).context("--snapshot-dir")?)
        }
        None => None,
    };
    let options = OpenOptions {
        engine: args.engine.choice(),
        max_batch: args.max_batch,
        bounds: args.bounds(),
        tail: if args.truncate_damaged_log { Tail::Truncate } else { Tail::Refuse },
        updates: admin_token.is_some(),
    };
    let bar = Bar::new();
    let (tables, about) = match (&args.tables, args.pages) {
        (Some(manifest), _) => {
            morphogen_server::open_manifest(manifest, args.snapshot_dir.as_deref(), &options, &bar)?
        }
        (None, Some(pages)) => (vec![synthetic_table(pages, args)?], serde_json::Map::new()),
        (None, None) => {
            let (db, log) = (args.db.as_deref(), args.log.as_deref());
            let served = morphogen_server::open_single(snapshot_dir, db, log, &options, &bar)?;
            (vec![served], serde_json::Map::new())
        }
    };
    warn_if_exposed(args, tls.is_some());
    let config = Config {
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        admin_token,
        max_batch_changes: args.max_batch_changes,
        max_rewind_rows: args.max_rewind_rows,
        limits: args.limits.limits(),
        tls,
        about,
    };
    let server = Server::new(tables, config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener =
            TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
        let admin_listener = match args.admin_listen {
            Some(address) => {
                Some(TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))?)
            }
            None => None,
        };
        if let Some(admin) = &admin_listener {
            tracing::info!(address = %admin.local_addr()?, "admin routes");
        }
        let metrics = match args.metrics_listen {
            None => MetricsAt::Public,
            Some(MetricsListen::Admin) => MetricsAt::Admin,
            Some(MetricsListen::Address(address)) => {
                let listener =
                    TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))?;
                tracing::info!(address = %listener.local_addr()?, "metrics");
                MetricsAt::Own(listener)
            }
        };
        for (table, meta) in server.meta() {
            tracing::info!(table, epoch = meta.epoch, "serving from epoch");
        }
        // Scripts and tests read the address from the end of this line.
        tracing::info!(address = %listener.local_addr()?, "serving");
        let listeners = Listeners { public: listener, admin: admin_listener, metrics };
        server.serve_on(listeners, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// `--pages N`: the synthetic table, generated where the engine keeps it.
fn synthetic_table(pages: u64, args: &ServeArgs) -> anyhow::Result<ServedTable> {
    let source = engine::synthetic_pages(pages)?;
    let info = engine::info(&source);
    let engine = engine::open(args.engine, source, args.max_batch)?;
    tracing::info!(pages = info.layout.total_pages(), digest = %hex::encode(info.digest), "synthetic table made");
    Ok(ServedTable::new(DEFAULT_TABLE, info, engine))
}

/// Plain HTTP beyond loopback shows both key shares to anyone on the path
/// (docs/SECURITY.md): acceptable only behind a TLS-terminating proxy.
fn warn_if_exposed(args: &ServeArgs, tls: bool) {
    if tls {
        tracing::info!("TLS on every listener");
        return;
    }
    let exposed = std::iter::once(args.listen).chain(args.admin_listen).filter(|a| !a.ip().is_loopback());
    for address in exposed {
        tracing::warn!(
            %address,
            "plain HTTP on a non-loopback address: only safe behind a TLS-terminating proxy (see --tls-cert)"
        );
    }
}

/// The environment variable that may hold the admin token.
const TOKEN_VARIABLE: &str = "MORPHOGEN_ADMIN_TOKEN";

/// The admin token from a token file (`serve --admin-token-file`, `update
/// --token-file`) or else the environment, if any; an empty one is refused.
pub fn admin_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => {
            if readable_by_others(path) {
                tracing::warn!(
                    file = %path.display(),
                    "the admin token file can be read by other users of this machine; chmod 600 it"
                );
            }
            Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token from {}", path.display()))?,
            )
        }
        None => std::env::var(TOKEN_VARIABLE).ok(),
    };
    match token.map(|t| t.trim().to_string()) {
        Some(token) if token.is_empty() => anyhow::bail!("the admin token is empty"),
        token => Ok(token),
    }
}

/// Whether users other than the file's owner may read it (Unix permissions).
fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "a token of enough length").unwrap();
        for (mode, exposed) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true), (0o604, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(readable_by_others(&path), exposed, "{mode:o}");
        }
    }
}
