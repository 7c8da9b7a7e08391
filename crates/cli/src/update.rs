//! `morphogen update`: send a change file to one or two servers as the
//! next update batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use morphogen_client::{Admin, Settings};
use morphogen_protocol::{ChangeBody, UpdateReply, UpdateRequest};
use morphogen_table::{CsvFile, MAX_KEY_LEN, RecordSource};
use serde::Serialize;

use crate::serve::admin_token;
use crate::trust::TrustArgs;

#[derive(Args)]
pub struct UpdateArgs {
    /// Admin base URL of a server: its --admin-listen address, or its public
    /// address when the admin routes share it. Give each server of a pair,
    /// so that both apply the same batch with the same sequence number.
    #[arg(long = "admin", value_name = "URL", required = true)]
    admins: Vec<String>,
    /// The table to change, on servers of several tables (`serve --tables`);
    /// their only table when not given.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// File holding the admin token; MORPHOGEN_ADMIN_TOKEN in the
    /// environment otherwise.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The changes: a CSV with the header `key,value`, both in hex; an empty
    /// value deletes the key. Applied in order, as one batch (one epoch).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Sequence number of the batch. By default one more than the servers'
    /// current epoch, which must then be the same on every server.
    #[arg(long, value_name = "N")]
    sequence: Option<u64>,
    /// Seconds to wait for each server.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    #[command(flatten)]
    trust: TrustArgs,
    /// Print JSON: one object per server.
    #[arg(long)]
    json: bool,
}

/// What one server answered.
#[derive(Serialize)]
struct Outcome {
    server: String,
    #[serde(flatten)]
    reply: UpdateReply,
    /// Time from sending the batch to its acknowledgement.
    acknowledged_ms: f64,
}

pub fn run(args: &UpdateArgs) -> anyhow::Result<()> {
    let settings = args.trust.settings(Duration::from_secs(args.timeout))?;
    let admins = connect_admins(&args.admins, args.table.as_deref(), args.token_file.as_deref(), &settings)?;
    let changes = read_changes(&args.input)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcomes = runtime.block_on(async {
        let sequence = match args.sequence {
            Some(sequence) => sequence,
            None => next_sequence(&admins).await?,
        };
        let request = Arc::new(UpdateRequest { sequence, changes, label: None });
        // Both servers at once: each acknowledges after its own log sync.
        let mut sends = tokio::task::JoinSet::new();
        for (index, admin) in admins.iter().cloned().enumerate() {
            let request = request.clone();
            sends.spawn(async move {
                let started = Instant::now();
                let reply = admin.update(&request).await.with_context(|| format!("updating {}", admin.url()));
                let acknowledged_ms = started.elapsed().as_secs_f64() * 1e3;
                (
                    index,
                    reply.map(|reply| Outcome { server: admin.url().to_string(), reply, acknowledged_ms }),
                )
            });
        }
        let mut outcomes: Vec<Option<Outcome>> = admins.iter().map(|_| None).collect();
        while let Some(joined) = sends.join_next().await {
            let (index, outcome) = joined.context("an update task failed")?;
            outcomes[index] = Some(outcome?);
        }
        anyhow::Ok(outcomes.into_iter().flatten().collect::<Vec<_>>())
    })?;
    if let [a, b] = &outcomes[..]
        && a.reply.digest != b.reply.digest
    {
        bail!(
            "the two servers applied batch {} but now differ (digests {} and {}): they were fed different batches",
            a.reply.epoch,
            a.reply.digest,
            b.reply.digest
        );
    }
    let text = if args.json {
        serde_json::to_string_pretty(&outcomes)? + "\n"
    } else {
        outcomes
            .iter()
            .map(|o| {
                let again =
                    if o.reply.already_applied { " (applied before: this batch was sent again)" } else { "" };
                format!(
                    "{}: epoch {}{again}, {} rows changed, {} records, digest {}, acknowledged in {:.1} ms\n",
                    o.server,
                    o.reply.epoch,
                    o.reply.changed_rows,
                    o.reply.records,
                    o.reply.digest,
                    o.acknowledged_ms
                )
            })
            .collect()
    };
    crate::print_stdout(&text)
}

/// The admin routes of one or two servers (`--admin URL`), for their table
/// `table` or their only one, with the token of `token_file` or the
/// environment, reached with `settings`.
pub fn connect_admins(
    urls: &[String],
    table: Option<&str>,
    token_file: Option<&Path>,
    settings: &Settings,
) -> anyhow::Result<Vec<Arc<Admin>>> {
    ensure!(urls.len() <= 2, "give one or two --admin URLs (got {})", urls.len());
    let token = admin_token(token_file)?
        .context("give --token-file or set MORPHOGEN_ADMIN_TOKEN in the environment")?;
    let connect = |url: &String| match table {
        Some(table) => Admin::for_table(url, table, &token, settings),
        None => Admin::new(url, &token, settings),
    };
    let admins = urls.iter().map(|url| connect(url).map(Arc::new)).collect::<Result<_, _>>()?;
    Ok(admins)
}

/// Both servers' next sequence number, which must agree.
pub async fn next_sequence(admins: &[Arc<Admin>]) -> anyhow::Result<u64> {
    let mut epochs = Vec::with_capacity(admins.len());
    for admin in admins {
        let status =
            admin.status().await.with_context(|| format!("reading the status of {}", admin.url()))?;
        epochs.push(status.meta.epoch);
    }
    if epochs.windows(2).any(|pair| pair[0] != pair[1]) {
        bail!(
            "the servers are at different epochs ({}); feed the one behind its missing batches \
             (see docs/OPERATIONS.md), or give --sequence",
            epochs.iter().map(u64::to_string).collect::<Vec<_>>().join(" and ")
        );
    }
    Ok(epochs[0] + 1)
}

/// The change file as a batch: keys and values in hex, an empty value a deletion.
fn read_changes(path: &Path) -> anyhow::Result<Vec<ChangeBody>> {
    let mut changes = Vec::new();
    CsvFile::new(path)
        .for_each_record(&mut |record| {
            if record.key.is_empty() || record.key.len() > MAX_KEY_LEN {
                return Err(morphogen_table::Error::KeyLength { line: record.line, len: record.key.len() });
            }
            let value = (!record.value.is_empty()).then(|| hex::encode(record.value));
            changes.push(ChangeBody { key: hex::encode(record.key), value });
            Ok(())
        })
        .with_context(|| format!("reading the changes in {}", path.display()))?;
    Ok(changes)
}
