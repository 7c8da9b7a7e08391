//! `morphogen bench`: times an engine's passes over a table, without HTTP,
//! next to a plain read of every page measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Args;
use morphogen_dpf::generate;
use morphogen_scan::{Engine, Query, ReferenceEngine, read_every_page};
use morphogen_table::{Layout, Table, Verify};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{self, EngineChoice};
use crate::progress::Bar;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("table").required(true).args(["db", "pages"]))]
pub struct BenchArgs {
    /// A table file to scan.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Instead of --db, a table of N random 4-KiB pages in two sub-tables,
    /// generated in memory (N = 262144 is 1 GiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pages: Option<u64>,
    /// Engine to time.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// Batch sizes (queries per pass) to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: Vec<u32>,
    /// Timed passes per batch size.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Untimed passes before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Also write the results as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Page size of tables made with --pages.
const SYNTHETIC_PAGE_SIZE: u32 = 4096;

#[derive(Serialize)]
struct Report {
    engine: &'static str,
    device: String,
    pages: u64,
    page_size: u32,
    table_bytes: u64,
    read_pass_ms: f64,
    verified: bool,
    results: Vec<BatchResult>,
}

#[derive(Serialize)]
struct BatchResult {
    batch: u32,
    pass_ms: f64,
    pass_ms_min: f64,
    per_query_ms: f64,
    qps: f64,
    effective_gbps: f64,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let table = Arc::new(match (&args.db, args.pages) {
        (Some(path), _) => Table::open(path, Verify::Trust, &Bar::new())
            .with_context(|| format!("opening {}", path.display()))?,
        (None, Some(pages)) => synthetic_table(pages)?,
        (None, None) => bail!("give --db or --pages"),
    });
    let layout = table.layout().clone();
    let page_size = layout.page_size();
    let table_bytes = table.pages().len() as u64;
    let mut engine = engine::open(args.engine, table.clone());
    let mut reference = ReferenceEngine::new(table.clone());
    // Human-readable lines go to stderr when the JSON goes to stdout.
    let to_stdout = args.json.as_deref() != Some(std::path::Path::new("-"));
    let say = |line: String| if to_stdout { println!("{line}") } else { eprintln!("{line}") };
    say(format!(
        "engine {} on {}; table: {} pages of {} bytes ({:.2} GiB)",
        engine.name(),
        engine.device(),
        layout.total_pages(),
        page_size,
        table_bytes as f64 / (1u64 << 30) as f64
    ));

    let read_pass_ms = time_passes(args.warmup, args.iterations, || {
        std::hint::black_box(read_every_page(table.pages(), page_size as usize));
        Ok(())
    })?
    .0;
    say(format!("plain read of every page: {read_pass_ms:.2} ms"));
    say(format!(
        "{:>6} {:>10} {:>10} {:>13} {:>10} {:>8} {:>9}",
        "batch", "pass ms", "min ms", "per query ms", "queries/s", "GB/s", "× read"
    ));

    let mut rng = StdRng::seed_from_u64(1);
    let mut verified = true;
    let mut results = Vec::new();
    for &batch in &args.batch {
        let queries = random_queries(&layout, batch as usize, &mut rng)?;
        let mut last = None;
        let (pass_ms, pass_ms_min) = time_passes(args.warmup, args.iterations, || {
            last = Some(engine.pass(&queries)?);
            Ok(())
        })?;
        // One sampled query per batch size, checked against the oracle.
        let sample = rng.random_range(0..queries.len());
        let expected = reference.pass(std::slice::from_ref(&queries[sample]))?;
        let answers = last.expect("at least one timed pass");
        verified &= answers.query(sample) == expected.query(0);
        let result = BatchResult {
            batch,
            pass_ms,
            pass_ms_min,
            per_query_ms: pass_ms / f64::from(batch),
            qps: f64::from(batch) * 1000.0 / pass_ms,
            effective_gbps: table_bytes as f64 / (pass_ms / 1000.0) / 1e9,
        };
        say(format!(
            "{:>6} {:>10.2} {:>10.2} {:>13.3} {:>10.1} {:>8.2} {:>9.2}",
            batch,
            result.pass_ms,
            result.pass_ms_min,
            result.per_query_ms,
            result.qps,
            result.effective_gbps,
            result.pass_ms / read_pass_ms
        ));
        results.push(result);
    }
    say(format!("verified against the reference engine: {verified}"));

    let report = Report {
        engine: engine.name(),
        device: engine.device(),
        pages: layout.total_pages(),
        page_size,
        table_bytes,
        read_pass_ms,
        verified,
        results,
    };
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)? + "\n";
        if path.as_os_str() == "-" {
            crate::print_stdout(&json)?;
        } else {
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    ensure!(verified, "the engine's answers differ from the reference engine's");
    Ok(())
}

/// Runs `pass` `warmup` times untimed, then `iterations` times timed; returns
/// the mean and the minimum in milliseconds.
fn time_passes(
    warmup: u32,
    iterations: u32,
    mut pass: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    for _ in 0..warmup {
        pass()?;
    }
    let mut times = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let started = Instant::now();
        pass()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((mean, times.iter().copied().fold(f64::INFINITY, f64::min)))
}

/// Lookups of random pages, as one party's queries.
fn random_queries(layout: &Layout, count: usize, rng: &mut StdRng) -> anyhow::Result<Vec<Query>> {
    (0..count)
        .map(|_| {
            let keys = (0..layout.choices())
                .map(|_| {
                    let target = rng.random_range(0..layout.pages_per_table());
                    Ok(generate(layout.pages_per_table(), target, rng)?.0)
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(Query { keys })
        })
        .collect()
}

/// A table of `pages` deterministic random pages in two sub-tables.
fn synthetic_table(pages: u64) -> anyhow::Result<Table> {
    let layout = Layout::new(SYNTHETIC_PAGE_SIZE, 32, 2, pages / 2, [0; 16])?;
    let mut bytes = vec![0u8; (layout.total_pages() * u64::from(SYNTHETIC_PAGE_SIZE)) as usize];
    bytes.par_chunks_mut(1 << 20).enumerate().for_each(|(i, chunk)| {
        StdRng::seed_from_u64(i as u64).fill_bytes(chunk);
    });
    Ok(Table::new(layout, 0, bytes)?)
}
