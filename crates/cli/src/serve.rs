//! `morphogen serve`: answer private lookups over one table through HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap::builder::TypedValueParser;
use morphogen_server::{Config, DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, Server};
use morphogen_table::Verify;
use tokio::net::TcpListener;

use crate::engine::{self, EngineChoice, TableSource};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("table").required(true).args(["db", "pages"]))]
pub struct ServeArgs {
    /// The table file (.mgdb) to serve. Its pages are hashed and checked
    /// against the digest in its header before the server starts.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Instead of --db, serve a table of N pseudorandom 4-KiB pages in two
    /// sub-tables and no records, generated where the engine keeps its table
    /// (GPU memory for the CUDA engine): for capacity tests with
    /// `morphogen load --single-server` (N = 16777216 is 64 GiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pages: Option<u64>,
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
    /// Threads of the CPU engine; all cores when not given. Give each of two
    /// servers sharing one machine half of its cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    cpu_threads: Option<usize>,
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
    let source = TableSource::from_options(args.db.as_deref(), args.pages, Verify::Digest)?;
    let engine = engine::open(args.engine, &source, args.max_batch)?;
    let info = source.info();
    tracing::info!(
        records = info.records,
        pages = info.layout.total_pages(),
        digest = %hex::encode(info.digest),
        "table loaded"
    );
    let server = Server::new(info, engine, Config { max_batch: args.max_batch, max_queue: args.max_queue })?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener =
            TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(address = %listener.local_addr()?, "serving");
        server.serve(listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
