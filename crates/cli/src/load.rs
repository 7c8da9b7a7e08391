//! `morphogen load`: many concurrent clients performing real private lookups
//! against two servers for a fixed time, every answer checked; or, with
//! `--single-server`, one server's share of the work alone, to measure one
//! server's capacity.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use morphogen_client::{Client, Connection, Settings, encode_request, key_shares};
use morphogen_protocol::Epoch;
use morphogen_table::{KeyDigest, Synthetic};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::percentile;
use crate::table_cmds::SYNTHETIC_KEY_SIZE;
use crate::trust::TrustArgs;

#[derive(Args)]
pub struct LoadArgs {
    /// Base URL of a server (e.g. http://127.0.0.1:8080): give both servers,
    /// or one with --single-server.
    #[arg(long = "server", value_name = "URL", required = true)]
    servers: Vec<String>,
    /// Clients looking keys up at once, each one lookup at a time.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// How long to keep looking keys up.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = crate::positive_seconds)]
    duration: f64,
    /// The servers' table holds the records of `morphogen build --synthetic
    /// N`: lookups draw keys from them and check every value. Required
    /// unless --single-server.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    synthetic: Option<u64>,
    /// Percentage of lookups for keys that are not in the table (checked to
    /// be not found).
    #[arg(long, value_name = "PERCENT", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    absent_percent: u8,
    /// Send one server the first party's keys only, without checking
    /// answers: measures one server's capacity, not lookups end to end.
    #[arg(long)]
    single_server: bool,
    /// Deadline of one lookup, retries of refused requests included.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = crate::positive_seconds)]
    timeout: f64,
    #[command(flatten)]
    trust: TrustArgs,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// What the run measured.
#[derive(Serialize)]
struct Report {
    mode: &'static str,
    servers: Vec<String>,
    concurrency: u32,
    duration_s: f64,
    deadline_ms: f64,
    /// Lookups answered (right or wrong).
    lookups: u64,
    /// Answers checked against the records, and how many were wrong.
    checked: bool,
    wrong: u64,
    /// Lookups that got no answer, by reason.
    errors: BTreeMap<&'static str, u64>,
    lookups_per_s: f64,
    latency_ms: Latency,
    /// Each server's resident memory (from its /metrics) after a fifth of
    /// the run and at its end, in MiB; absent where a server does not report it.
    server_memory_mib: Vec<Option<MemoryGrowth>>,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct MemoryGrowth {
    after_warmup: f64,
    end: f64,
}

/// What one lookup came to.
enum Outcome {
    Right,
    Wrong,
    Failed(&'static str),
}

/// Whom the lookups go to and how answers are checked.
enum Target {
    /// Both servers through the client; values checked against the records.
    Pair { client: Box<Client>, records: Synthetic },
    /// One server, party-0 keys only; the answer's shape is checked.
    Single(Box<Connection>),
}

impl Target {
    async fn lookup(&self, rng: &mut StdRng, absent_percent: u8) -> Outcome {
        let result = match self {
            Target::Pair { client, records } => {
                let absent = rng.random_range(0..100) < absent_percent;
                let (key, expected) = draw(records, rng, absent);
                client.get(&key).await.map(|value| value == expected)
            }
            Target::Single(server) => {
                let key: [u8; 32] = rng.random();
                let request = key_shares(server.layout(), &KeyDigest::of(&key))
                    .and_then(|(party_0, _)| encode_request(Epoch::Latest, vec![party_0]));
                match request {
                    Ok(body) => server
                        .query(&body, 1, server.layout(), Instant::now() + server.timeout())
                        .await
                        .map(|_| true),
                    Err(error) => Err(error),
                }
            }
        };
        match result {
            Ok(true) => Outcome::Right,
            Ok(false) => Outcome::Wrong,
            Err(error) => Outcome::Failed(error_kind(&error)),
        }
    }
}

/// A short name for why a lookup failed, for the report.
fn error_kind(error: &morphogen_client::Error) -> &'static str {
    use morphogen_client::Error as E;
    match error {
        E::Server { status: 503, .. } => "overloaded",
        E::Server { .. } => "server_error",
        E::Unreachable { message, .. } if message == "timed out" => "timeout",
        E::Unreachable { .. } => "unreachable",
        _ => "other",
    }
}

/// A key to look up among `records` and the value it must have: a random
/// record's own, or if `absent`, a key beyond the records and none.
pub(crate) fn draw(
    records: &Synthetic,
    rng: &mut impl rand::Rng,
    absent: bool,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let index = if absent {
        records.count + rng.random_range(0..u64::from(u32::MAX))
    } else {
        rng.random_range(0..records.count)
    };
    let mut record = Vec::new();
    records.record(index, &mut record);
    let value = record.split_off(records.key_size);
    (record, (!absent).then_some(value))
}

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(load(args))?;
    print_report(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    ensure!(report.wrong == 0, "{} lookups got a wrong answer", report.wrong);
    Ok(())
}

async fn load(args: &LoadArgs) -> anyhow::Result<Report> {
    let settings = args.trust.settings(Duration::from_secs_f64(args.timeout))?;
    let target = match (args.single_server, args.servers.as_slice()) {
        (true, [url]) => Target::Single(Box::new(Connection::connect(url, &settings).await?)),
        (true, _) => bail!("--single-server takes exactly one --server"),
        (false, [a, b]) => {
            let client = Client::with_settings(a, b, &settings).await?;
            let Some(count) = args.synthetic else {
                bail!(
                    "give --synthetic N, the record count the table was built with, so that answers can be checked"
                );
            };
            let meta = client.meta();
            ensure!(
                meta.records == count,
                "the servers' table holds {} records, --synthetic says {count}",
                meta.records
            );
            let records =
                Synthetic { count, key_size: SYNTHETIC_KEY_SIZE, value_size: meta.value_size as usize };
            Target::Pair { client: Box::new(client), records }
        }
        (false, _) => bail!("give two --server URLs (or one with --single-server)"),
    };
    let target = Arc::new(target);
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let stop_at = started + duration;
    let answered = Arc::new(AtomicU64::new(0));

    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (target, answered) = (target.clone(), answered.clone());
            let absent_percent = args.absent_percent;
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(rand::rng().random());
                let mut tally = Tally::default();
                while Instant::now() < stop_at {
                    let begun = Instant::now();
                    match target.lookup(&mut rng, absent_percent).await {
                        Outcome::Right => tally.latencies.push(begun.elapsed()),
                        Outcome::Wrong => {
                            tally.latencies.push(begun.elapsed());
                            tally.wrong += 1;
                        }
                        Outcome::Failed(kind) => *tally.errors.entry(kind).or_default() += 1,
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();

    let watch =
        tokio::spawn(watch_progress(duration, answered.clone(), args.servers.clone(), settings.clone()));
    let mut total = Tally::default();
    for client in clients {
        total.merge(client.await.context("a load client panicked")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let warm_memory = watch.await.context("the progress task panicked")?;
    let end_memory = server_memory(&args.servers, &settings).await;

    let lookups = total.latencies.len() as u64;
    let ms = |p: f64| {
        if total.latencies.is_empty() { 0.0 } else { percentile(&total.latencies, p).as_secs_f64() * 1e3 }
    };
    Ok(Report {
        mode: if args.single_server { "single-server" } else { "two-server" },
        servers: args.servers.clone(),
        concurrency: args.concurrency,
        duration_s: elapsed,
        deadline_ms: args.timeout * 1e3,
        lookups,
        checked: !args.single_server,
        wrong: total.wrong,
        errors: total.errors,
        lookups_per_s: lookups as f64 / elapsed,
        latency_ms: Latency { p50: ms(50.0), p95: ms(95.0), p99: ms(99.0), max: ms(100.0) },
        server_memory_mib: warm_memory
            .into_iter()
            .zip(end_memory)
            .map(|(warm, end)| Some(MemoryGrowth { after_warmup: warm?, end: end? }))
            .collect(),
    })
}

/// One client's (or all clients') results.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    wrong: u64,
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.wrong += other.wrong;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }
}

/// Shows progress until the run ends; returns each server's memory after
/// the first fifth of the run (the warm-up).
async fn watch_progress(
    duration: Duration,
    answered: Arc<AtomicU64>,
    servers: Vec<String>,
    settings: Settings,
) -> Vec<Option<f64>> {
    let bar = ProgressBar::new(duration.as_secs().max(1)).with_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} s")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut warm = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while started.elapsed() < duration {
        tick.tick().await;
        if warm.is_none() && started.elapsed() >= duration / 5 {
            warm = Some(server_memory(&servers, &settings).await);
        }
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!("{} lookups", answered.load(Ordering::Relaxed)));
    }
    bar.finish_and_clear();
    match warm {
        Some(memory) => memory,
        None => server_memory(&servers, &settings).await,
    }
}

/// Each server's resident memory in MiB, as its /metrics reports it (read
/// with the lookups' certificate settings, within 5 s), or `None`.
async fn server_memory(servers: &[String], settings: &Settings) -> Vec<Option<f64>> {
    let settings = Settings { timeout: Duration::from_secs(5), ..settings.clone() };
    let mut memory = Vec::with_capacity(servers.len());
    for server in servers {
        memory.push(resident_memory_mib(server, &settings).await);
    }
    memory
}

async fn resident_memory_mib(server: &str, settings: &Settings) -> Option<f64> {
    let text = morphogen_client::fetch_metrics(server, settings).await.ok()?;
    let bytes: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("morphogen_resident_memory_bytes ")?.trim().parse().ok())?;
    Some(bytes / (1 << 20) as f64)
}

fn print_report(report: &Report) -> anyhow::Result<()> {
    let mut text = format!(
        "{} load, {} clients, {:.1} s: {} lookups, {:.1} lookups/s\n\
         latency ms: p50 {:.2}, p95 {:.2}, p99 {:.2}, max {:.2} (deadline {:.0})\n",
        report.mode,
        report.concurrency,
        report.duration_s,
        report.lookups,
        report.lookups_per_s,
        report.latency_ms.p50,
        report.latency_ms.p95,
        report.latency_ms.p99,
        report.latency_ms.max,
        report.deadline_ms,
    );
    if report.checked {
        text += &format!("wrong answers: {}\n", report.wrong);
    } else {
        text += "answers not checked (one server's answers alone are not the values)\n";
    }
    let errors: Vec<String> = report.errors.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    text += &format!(
        "failed lookups: {}\n",
        if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
    );
    for (server, memory) in report.servers.iter().zip(&report.server_memory_mib) {
        if let Some(m) = memory {
            text += &format!(
                "server {server}: resident memory {:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1}%)\n",
                m.after_warmup,
                m.end,
                100.0 * (m.end / m.after_warmup - 1.0)
            );
        }
    }
    crate::print_stdout(&text)
}
