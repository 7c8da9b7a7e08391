//! `morphogen build` and `morphogen inspect`: make a table file from records,
//! and describe one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use morphogen_table::{BuildOptions, CsvFile, Synthetic, Table, Verify, build};
use serde::Serialize;

use crate::progress::Bar;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["input", "synthetic"]))]
pub struct BuildArgs {
    /// CSV input: a header line `key,value`, then one record per line, both
    /// fields hex (with or without 0x). Keys are 1 to 64 bytes.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Instead of --input, generate N deterministic random records (32-byte
    /// keys, values of --value-size bytes, default 32), for tests and benchmarks.
    #[arg(long, value_name = "N")]
    synthetic: Option<u64>,
    /// Where to write the table. Written atomically: an existing file is
    /// replaced only once the new one is complete.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Bytes per value; shorter values are stored zero-padded. Defaults to
    /// the longest value in the input.
    #[arg(long, value_name = "N")]
    value_size: Option<u32>,
    /// Bytes per page: a power of two from 512 to 65536.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    page_size: u32,
    /// Number of sub-tables (candidate pages per key), 2 to 4.
    #[arg(long, value_name = "K", default_value_t = 2)]
    choices: u8,
    /// Seed of the table's hash keys, 32 hex digits. Defaults to one derived
    /// from the keys, so separate builds of the same data are identical.
    #[arg(long, value_name = "HEX", value_parser = parse_seed)]
    seed: Option<[u8; 16]>,
}

/// Value size of synthetic records when --value-size is not given.
const SYNTHETIC_VALUE_SIZE: u32 = 32;
/// Key size of synthetic records.
pub(crate) const SYNTHETIC_KEY_SIZE: usize = 32;

fn parse_seed(text: &str) -> Result<[u8; 16], String> {
    let bytes = crate::parse_hex_arg(text, "the seed")?;
    bytes.try_into().map_err(|_| "the seed must be 16 bytes (32 hex digits)".to_string())
}

pub fn build_command(args: &BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut options = BuildOptions {
        page_size: args.page_size,
        value_size: args.value_size,
        choices: args.choices,
        seed: args.seed,
        headroom_percent: 0,
        min_capacity: 0,
        pages_per_table: None,
    };
    let bar = Bar::new();
    let table = match (&args.input, args.synthetic) {
        (Some(path), None) => build(&CsvFile::new(path), &options, &bar)
            .with_context(|| format!("building from {}", path.display()))?,
        (None, Some(count)) => {
            let value_size = *options.value_size.get_or_insert(SYNTHETIC_VALUE_SIZE);
            let source = Synthetic { count, key_size: SYNTHETIC_KEY_SIZE, value_size: value_size as usize };
            build(&source, &options, &bar).context("building synthetic records")?
        }
        _ => bail!("give exactly one of --input and --synthetic"),
    };
    table.write(&args.output).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "built {} records into {} ({} pages, load {:.1}%) in {:.1?}",
        table.records(),
        args.output.display(),
        table.layout().total_pages(),
        100.0 * table.load_factor(),
        started.elapsed()
    );
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    /// The table file.
    table: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Skip re-hashing the pages (for a file already verified).
    #[arg(long)]
    no_verify: bool,
}

/// What `inspect` reports.
#[derive(Serialize)]
struct Description {
    records: u64,
    page_size: u32,
    value_size: u32,
    row_size: u32,
    rows_per_page: u32,
    choices: u8,
    pages_per_table: u64,
    total_pages: u64,
    load_factor: f64,
    seed: String,
    digest: String,
    digest_verified: bool,
}

pub fn inspect_command(args: &InspectArgs) -> anyhow::Result<()> {
    let verify = if args.no_verify { Verify::Trust } else { Verify::Digest };
    let table = Table::open(&args.table, verify, &Bar::new())?;
    let layout = table.layout();
    let description = Description {
        records: table.records(),
        page_size: layout.page_size(),
        value_size: layout.value_size(),
        row_size: layout.row_size(),
        rows_per_page: layout.rows_per_page(),
        choices: layout.choices(),
        pages_per_table: layout.pages_per_table(),
        total_pages: layout.total_pages(),
        load_factor: table.load_factor(),
        seed: hex::encode(layout.seed()),
        digest: hex::encode(table.digest()),
        digest_verified: !args.no_verify,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&description)? + "\n"
    } else {
        let d = &description;
        let verified = if d.digest_verified { "verified" } else { "not verified" };
        format!(
            "table         {}\n\
             records       {}\n\
             pages         {} sub-tables x {} pages of {} bytes = {}\n\
             rows          {} per page, {} bytes each (8-byte tag + {}-byte value)\n\
             load factor   {:.2}%\n\
             seed          {}\n\
             digest        {} ({verified})\n",
            args.table.display(),
            d.records,
            d.choices,
            d.pages_per_table,
            d.page_size,
            d.total_pages,
            d.rows_per_page,
            d.row_size,
            d.value_size,
            100.0 * d.load_factor,
            d.seed,
            d.digest,
        )
    };
    crate::print_stdout(&text)?;
    Ok(())
}
