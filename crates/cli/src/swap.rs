//! `morphogen snapshot`: swap one or two servers to a new table file of
//! their snapshot directories, as the next sequenced step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use morphogen_client::Admin;
use morphogen_protocol::{AdminStatus, SnapshotRequest, SwapState};
use serde::Serialize;

use crate::trust::TrustArgs;
use crate::update::{connect_admins, next_sequence};

#[derive(Args)]
pub struct SnapshotArgs {
    /// Admin base URL of a server: its --admin-listen address, or its public
    /// address when the admin routes share it. Give each server of a pair,
    /// so that both swap at the same sequence number.
    #[arg(long = "admin", value_name = "URL", required = true)]
    admins: Vec<String>,
    /// The table to swap, on servers of several tables; their only table
    /// when not given.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// File holding the admin token; MORPHOGEN_ADMIN_TOKEN in the
    /// environment otherwise.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The new table file's name in each server's snapshot directory
    /// (`serve --snapshot-dir`), for example `state-2026-11-21.mgdb`.
    #[arg(long, value_name = "NAME")]
    file: String,
    /// Sequence number of the swap: the epoch the new snapshot starts at.
    /// By default one more than the servers' current epoch, which must then
    /// be the same on every server.
    #[arg(long, value_name = "N")]
    sequence: Option<u64>,
    /// The label of the new snapshot's first epoch: any JSON, as an update
    /// batch's (for Ethereum tables, the block the new table holds, as
    /// `eth follow` labels blocks).
    #[arg(long, value_name = "JSON", value_parser = parse_label)]
    label: Option<serde_json::Value>,
    /// Seconds to wait for the servers to load the file and swap.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    timeout: u64,
    #[command(flatten)]
    trust: TrustArgs,
    /// Print JSON: each server's status after the swap.
    #[arg(long)]
    json: bool,
}

fn parse_label(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// How often the servers' status is read while they load.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// One server after the swap.
#[derive(Serialize)]
struct Outcome {
    server: String,
    #[serde(flatten)]
    status: AdminStatus,
    /// Time from asking for the swap to seeing it done.
    swapped_after_s: f64,
}

pub fn run(args: &SnapshotArgs) -> anyhow::Result<()> {
    // Each admin request is short; the wait for the load has its own limit.
    let settings = args.trust.settings(Duration::from_secs(60))?;
    let admins = connect_admins(&args.admins, args.table.as_deref(), args.token_file.as_deref(), &settings)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcomes = runtime.block_on(swap_all(&admins, args))?;
    let digests: Vec<&str> = outcomes.iter().map(|o| o.status.meta.snapshot_digest.as_str()).collect();
    if digests.windows(2).any(|pair| pair[0] != pair[1]) {
        bail!(
            "the servers swapped to files with different digests ({}): their snapshot directories hold \
             different files named {}",
            digests.join(" and "),
            args.file
        );
    }
    let text = if args.json {
        serde_json::to_string_pretty(&outcomes)? + "\n"
    } else {
        outcomes
            .iter()
            .map(|o| {
                let meta = &o.status.meta;
                format!(
                    "{}: swapped to {} at epoch {}, {} records, digest {}, after {:.1} s\n",
                    o.server, args.file, meta.epoch, meta.records, meta.snapshot_digest, o.swapped_after_s
                )
            })
            .collect()
    };
    crate::print_stdout(&text)
}

async fn swap_all(admins: &[Arc<Admin>], args: &SnapshotArgs) -> anyhow::Result<Vec<Outcome>> {
    let sequence = match args.sequence {
        Some(sequence) => sequence,
        None => next_sequence(admins).await?,
    };
    let request = SnapshotRequest { file: args.file.clone(), label: args.label.clone(), sequence };
    let started = Instant::now();
    for admin in admins {
        admin.swap(&request).await.with_context(|| format!("asking {} to swap", admin.url()))?;
    }
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"))
        .with_message(format!("loading {} on {} server(s)", args.file, admins.len()));
    let deadline = started + Duration::from_secs(args.timeout);
    let mut outcomes: Vec<Option<Outcome>> = admins.iter().map(|_| None).collect();
    while outcomes.iter().any(Option::is_none) {
        spinner.tick();
        for (admin, outcome) in admins.iter().zip(outcomes.iter_mut()).filter(|(_, o)| o.is_none()) {
            let status =
                admin.status().await.with_context(|| format!("reading the status of {}", admin.url()))?;
            let swap = status.snapshot_swap.as_ref().filter(|swap| swap.sequence == sequence);
            match swap.map(|swap| swap.state) {
                Some(SwapState::Swapped) => {
                    *outcome = Some(Outcome {
                        server: admin.url().to_string(),
                        status,
                        swapped_after_s: started.elapsed().as_secs_f64(),
                    });
                }
                Some(SwapState::Failed) => {
                    spinner.finish_and_clear();
                    let error = swap.and_then(|swap| swap.error.clone()).unwrap_or_default();
                    bail!("{} did not swap (it keeps serving its old snapshot): {error}", admin.url());
                }
                Some(SwapState::Loading) => {}
                None => bail!("{} no longer reports the swap at sequence {sequence}", admin.url()),
            }
        }
        if Instant::now() >= deadline && outcomes.iter().any(Option::is_none) {
            spinner.finish_and_clear();
            bail!(
                "the swap was not done within {} s; GET /admin/v1/status shows where it stands",
                args.timeout
            );
        }
        if outcomes.iter().any(Option::is_none) {
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    spinner.finish_and_clear();
    Ok(outcomes.into_iter().flatten().collect())
}
