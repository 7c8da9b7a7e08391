//! `morphogen bench`: times an engine's passes over a table, without HTTP,
//! next to a plain read of every page measured in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use morphogen_scan::{Answers, Engine, Query, reference_pass};
use morphogen_table::{Layout, Progress, Verify, fill_synthetic};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{self, EngineChoice, TableSource};
use crate::progress::Bar;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("table").required(true).args(["db", "pages"]))]
pub struct BenchArgs {
    /// A table file to scan.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Instead of --db, a table of N pseudorandom 4-KiB pages in two
    /// sub-tables, generated where the engine keeps its table: in host
    /// memory, or in GPU memory for the CUDA engine (N = 262144 is 1 GiB,
    /// N = 16777216 is 64 GiB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pages: Option<u64>,
    /// Engine to time.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// Batch sizes (queries per pass) to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: Vec<u32>,
    /// Timed rounds. Each round reads every page once, then runs one pass
    /// of each batch size, so that the read and the passes are timed over
    /// the same stretch of the run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Untimed rounds before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Also write the results as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

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
    /// Mean time of each pass phase, for engines that time them on their device.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    phases_ms: BTreeMap<&'static str, f64>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let source = engine::source_from_options(args.db.as_deref(), args.pages, Verify::Trust)?;
    let layout = source.layout().clone();
    let page_size = layout.page_size();
    let table_bytes = layout.total_pages() * u64::from(page_size);
    let max_batch = args.batch.iter().copied().max().unwrap_or(1) as usize;
    let oracle = Oracle::new(&source);
    let mut engine = engine::open(args.engine, source, max_batch)?;
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

    let mut rng = StdRng::seed_from_u64(1);
    let batches = args
        .batch
        .iter()
        .map(|&batch| Ok((batch, engine::random_queries(&layout, batch as usize, &mut rng)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rounds = time_rounds(engine.as_mut(), &batches, args.warmup, args.iterations)?;
    let read_pass_ms = rounds.read.mean_ms;
    say(format!("plain read of every page: {read_pass_ms:.2} ms (min {:.2})", rounds.read.min_ms));
    say(format!(
        "{:>6} {:>10} {:>10} {:>13} {:>10} {:>8} {:>9}  {}",
        "batch", "pass ms", "min ms", "per query ms", "queries/s", "GB/s", "× read", "phases ms"
    ));

    let mut verified = true;
    let mut results = Vec::new();
    for ((batch, queries), timed) in batches.iter().zip(rounds.batches) {
        // One sampled query per batch size, checked against the oracle.
        let sample = rng.random_range(0..queries.len());
        verified &= timed.answers.query(sample) == oracle.answer(engine.as_ref(), &queries[sample])?;
        let pass_ms = timed.timing.mean_ms;
        let result = BatchResult {
            batch: *batch,
            pass_ms,
            pass_ms_min: timed.timing.min_ms,
            per_query_ms: pass_ms / f64::from(*batch),
            qps: f64::from(*batch) * 1000.0 / pass_ms,
            effective_gbps: table_bytes as f64 / (pass_ms / 1000.0) / 1e9,
            phases_ms: timed.phases_ms,
        };
        let phases: Vec<String> =
            result.phases_ms.iter().map(|(name, ms)| format!("{name} {ms:.2}")).collect();
        say(format!(
            "{:>6} {:>10.2} {:>10.2} {:>13.3} {:>10.1} {:>8.2} {:>9.2}  {}",
            batch,
            result.pass_ms,
            result.pass_ms_min,
            result.per_query_ms,
            result.qps,
            result.effective_gbps,
            result.pass_ms / read_pass_ms,
            phases.join(", ")
        ));
        results.push(result);
    }
    say(format!("verified against {}: {verified}", oracle.name()));

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
    ensure!(verified, "the engine's answers differ from the oracle's");
    Ok(())
}

/// Where the expected answers come from.
enum Oracle {
    /// The reference engine's pass over the engine's own table in host memory.
    Host,
    /// The synthetic page stream, recomputed on the host for the pages the
    /// query's keys select (`expand_full`, then the plainest XOR): a
    /// reference for tables that exist only on the GPU. Too big a table for
    /// the reference engine's page-by-page evaluation.
    Synthetic { layout: Layout, seed: u64 },
}

impl Oracle {
    fn new(source: &TableSource) -> Oracle {
        match source {
            TableSource::Host(_) => Oracle::Host,
            TableSource::Synthetic { layout, seed } => {
                Oracle::Synthetic { layout: layout.clone(), seed: *seed }
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Oracle::Host => "the reference engine",
            Oracle::Synthetic { .. } => "the synthetic pages recomputed on the host",
        }
    }

    /// The expected answer bytes of one query to `engine`: one page per
    /// sub-table.
    fn answer(&self, engine: &dyn Engine, query: &Query) -> anyhow::Result<Vec<u8>> {
        match self {
            Oracle::Host => {
                let table = engine.table().context("the engine keeps no table in host memory")?;
                Ok(reference_pass(table, std::slice::from_ref(query))?.query(0).to_vec())
            }
            Oracle::Synthetic { layout, seed } => {
                let page_size = layout.page_size() as usize;
                let mut out = Vec::with_capacity(query.keys.len() * page_size);
                for (sub_table, key) in query.keys.iter().enumerate() {
                    let bits = key.expand_full();
                    let first_page = sub_table as u64 * layout.pages_per_table();
                    let selected = |page: &u64| (bits[(page / 128) as usize] >> (page % 128)) & 1 == 1;
                    let zero = || (vec![0u8; page_size], vec![0u8; page_size]);
                    let (answer, _) = (0..layout.pages_per_table())
                        .into_par_iter()
                        .filter(selected)
                        .fold(zero, |(mut answer, mut page), p| {
                            fill_synthetic(*seed, (first_page + p) * page_size as u64, &mut page);
                            answer.iter_mut().zip(&page).for_each(|(a, b)| *a ^= b);
                            (answer, page)
                        })
                        .reduce(zero, |(mut a, page), (b, _)| {
                            a.iter_mut().zip(&b).for_each(|(a, b)| *a ^= b);
                            (a, page)
                        });
                    out.extend_from_slice(&answer);
                }
                Ok(out)
            }
        }
    }
}

/// Mean and minimum of timed runs, in milliseconds.
struct Timing {
    mean_ms: f64,
    min_ms: f64,
}

impl Timing {
    fn of(times_ms: &[f64]) -> Timing {
        Timing {
            mean_ms: times_ms.iter().sum::<f64>() / times_ms.len() as f64,
            min_ms: times_ms.iter().copied().fold(f64::INFINITY, f64::min),
        }
    }
}

/// What [`time_rounds`] measured.
struct Rounds {
    read: Timing,
    batches: Vec<TimedBatch>,
}

/// One batch size's timed passes.
struct TimedBatch {
    timing: Timing,
    /// Mean time of each pass phase, over warm-up and timed passes alike.
    phases_ms: BTreeMap<&'static str, f64>,
    /// The answers of the last pass.
    answers: Answers,
}

/// Times the plain read and a pass of each batch in rounds: every round
/// reads the table once, then passes each batch once. `warmup` rounds go
/// untimed, then `iterations` are timed. Interleaved so that the read and
/// the passes see the same machine: the memory of the VM we develop on
/// switches between a fast and a slow state within seconds, and a read
/// timed before all the passes could see one state and the passes the
/// other, which moved every ratio to the read by up to half.
fn time_rounds(
    engine: &mut dyn Engine,
    batches: &[(u32, Vec<Query>)],
    warmup: u32,
    iterations: u32,
) -> anyhow::Result<Rounds> {
    let bar = Bar::new();
    bar.start("timing", u64::from(warmup + iterations));
    let mut read_ms = Vec::new();
    let mut pass_ms = vec![Vec::new(); batches.len()];
    let mut phases_ms = vec![BTreeMap::<&'static str, f64>::new(); batches.len()];
    let mut answers = Vec::with_capacity(batches.len());
    for round in 0..warmup + iterations {
        let timed = round >= warmup;
        let read = engine.plain_read_seconds()? * 1000.0;
        if timed {
            read_ms.push(read);
        }
        answers.clear();
        for (index, (_, queries)) in batches.iter().enumerate() {
            let started = Instant::now();
            let pass = engine.pass(queries)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if timed {
                pass_ms[index].push(ms);
            }
            for phase in engine.last_pass_phases() {
                *phases_ms[index].entry(phase.name).or_default() += phase.seconds * 1000.0;
            }
            answers.push(pass);
        }
        bar.advance(1);
    }
    bar.finish();
    let passes = f64::from(warmup + iterations);
    let batches = pass_ms
        .iter()
        .zip(phases_ms)
        .zip(answers)
        .map(|((times, mut phases_ms), answers)| {
            phases_ms.values_mut().for_each(|ms| *ms /= passes);
            TimedBatch { timing: Timing::of(times), phases_ms, answers }
        })
        .collect();
    Ok(Rounds { read: Timing::of(&read_ms), batches })
}
