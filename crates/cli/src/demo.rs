//! `morphogen demo`: the whole system on one machine. Builds a sample table,
//! starts two servers on loopback, looks keys up privately through the
//! client and checks every answer against the source records.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use morphogen_client::Client;
use morphogen_scan::Engine;
use morphogen_server::{Config, DEFAULT_MAX_BATCH, DEFAULT_TABLE, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, Synthetic, Table, Verify, build};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::engine::{self, EngineChoice, TableSource};
use crate::load::draw;
use crate::percentile;
use crate::table_cmds::SYNTHETIC_KEY_SIZE;

#[derive(Args)]
pub struct DemoArgs {
    /// Records in the sample table.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    records: u64,
    /// Private lookups to perform; one in ten is of a key that is not in the table.
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    lookups: u64,
    /// Engine of both servers; with the GPU engine the two share one GPU.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
}

/// Value size of the sample records (their keys are synthetic ones, 32 bytes).
const VALUE_SIZE: usize = 32;

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    println!("morphogen demo: private lookups through two servers on this machine\n");
    let dir = tempfile::tempdir().context("making a temporary directory")?;
    let path = dir.path().join("demo.mgdb");
    let source = Synthetic { count: args.records, key_size: SYNTHETIC_KEY_SIZE, value_size: VALUE_SIZE };
    let started = Instant::now();
    let options = BuildOptions { value_size: Some(VALUE_SIZE as u32), ..BuildOptions::default() };
    build(&source, &options, &NoProgress)?.write(&path)?;
    // Each server opens the file itself, as two separate machines would.
    let open = || Table::open(&path, Verify::Digest, &NoProgress);
    let (table_a, table_b) = (open()?, open()?);
    println!(
        "table: {} records of {SYNTHETIC_KEY_SIZE}-byte keys and {VALUE_SIZE}-byte values, {} pages of {} bytes, built in {:.1?}",
        table_a.records(),
        table_a.layout().total_pages(),
        table_a.layout().page_size(),
        started.elapsed()
    );

    let (info_a, info_b) = (TableInfo::of(&table_a), TableInfo::of(&table_b));
    let engine_a = engine::open(args.engine, TableSource::Host(table_a), DEFAULT_MAX_BATCH)?;
    let engine_b = engine::open(args.engine, TableSource::Host(table_b), DEFAULT_MAX_BATCH)?;
    let engine_name = format!("{} on {}", engine_a.name(), engine_a.device());

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let (url_a, stop_a, server_a) = start(info_a, engine_a).await?;
        let (url_b, stop_b, server_b) = start(info_b, engine_b).await?;
        println!("servers: A at {url_a}, B at {url_b} (engine {engine_name})");
        let report = lookups(&url_a, &url_b, &source, args.lookups).await;
        // Stop both servers and wait until they have.
        let _ = (stop_a.send(()), stop_b.send(()));
        server_a.await??;
        server_b.await??;
        report
    })?;

    let (p50, p99) = (percentile(&report.latencies, 50.0), percentile(&report.latencies, 99.0));
    println!(
        "lookups: {} ({} present, {} absent), mismatches: {}, latency p50 {p50:.2?}, p99 {p99:.2?}",
        report.latencies.len(),
        report.present,
        report.latencies.len() as u64 - report.present,
        report.mismatches
    );
    ensure!(report.mismatches == 0, "{} lookups gave a wrong answer", report.mismatches);
    println!("every answer matched the source records; neither server saw which keys were read.");
    Ok(())
}

type Stop = oneshot::Sender<()>;
type Serving = tokio::task::JoinHandle<std::io::Result<()>>;

/// Starts a server of the table `table` answered by `engine` on a loopback
/// port chosen by the system.
async fn start(table: TableInfo, engine: Box<dyn Engine>) -> anyhow::Result<(String, Stop, Serving)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
    let url = format!("http://{}", listener.local_addr()?);
    let served = ServedTable::new(DEFAULT_TABLE, table, engine);
    let server = Server::new(vec![served], Config::default())?;
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, None, async move {
        let _ = stopped.await;
    }));
    Ok((url, stop, serving))
}

struct Report {
    latencies: Vec<Duration>,
    present: u64,
    mismatches: u64,
}

/// Looks `count` keys up one at a time: nine in ten drawn from the table,
/// one in ten from beyond it (absent).
async fn lookups(url_a: &str, url_b: &str, source: &Synthetic, count: u64) -> anyhow::Result<Report> {
    let client = Client::new(url_a, url_b).await?;
    let mut report = Report { latencies: Vec::new(), present: 0, mismatches: 0 };
    for lookup in 0..count {
        let (key, expected) = draw(source, &mut rand::rng(), lookup % 10 == 9);
        let started = Instant::now();
        let answer = client.get(&key).await?;
        report.latencies.push(started.elapsed());
        if answer != expected {
            report.mismatches += 1;
        }
        report.present += u64::from(expected.is_some());
    }
    Ok(report)
}
