//! `morphogen eth`: Ethereum state as tables for private reads.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::{Args, Subcommand};
use morphogen_eth::{
    ACCOUNT_VALUE_LEN, CODE_VALUE_LEN, Chain, MANIFEST_FILE, Manifest, STORAGE_VALUE_LEN, TABLE_NAMES,
    TableRecords, read_dump, read_genesis,
};
use morphogen_table::{BuildOptions, build};

use crate::progress::Bar;

#[derive(Args)]
pub struct EthArgs {
    #[command(subcommand)]
    command: EthCommand,
}

#[derive(Subcommand)]
enum EthCommand {
    /// Build the accounts, storage and code tables of a chain's state from
    /// a geth genesis file and, optionally, a state dump.
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// A geth genesis file: its config.chainId, its number, and (without
    /// --state-dump) its alloc accounts.
    #[arg(long, value_name = "FILE")]
    genesis: PathBuf,
    /// A geth state dump (`geth dump --iterative`, one JSON account per
    /// line, with addresses): the state to serve instead of the genesis
    /// alloc. Needs --block-number.
    #[arg(long, value_name = "FILE", requires = "block_number")]
    state_dump: Option<PathBuf>,
    /// The block the state dump was taken at.
    #[arg(long, value_name = "N", requires = "state_dump")]
    block_number: Option<u64>,
    /// The directory to write accounts.mgdb, storage.mgdb, code.mgdb and
    /// eth.json into; created if missing.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
}

/// Page size and value size of each table, in TABLE_NAMES order: rows of
/// 80, 40 and 1,036 bytes, so 51, 102 and 7 to a page.
const TABLE_SHAPES: [(u32, usize); 3] =
    [(4096, ACCOUNT_VALUE_LEN), (4096, STORAGE_VALUE_LEN), (8192, CODE_VALUE_LEN)];

pub fn run(args: &EthArgs) -> anyhow::Result<()> {
    match &args.command {
        EthCommand::Build(build) => build_tables(build),
    }
}

fn build_tables(args: &BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.genesis)
        .with_context(|| format!("reading the genesis file {}", args.genesis.display()))?;
    let (mut chain, genesis_accounts) =
        read_genesis(&text).with_context(|| format!("reading {}", args.genesis.display()))?;
    let accounts = match (&args.state_dump, args.block_number) {
        (Some(path), Some(block_number)) => {
            let file =
                File::open(path).with_context(|| format!("opening the state dump {}", path.display()))?;
            chain = Chain { block_number, ..chain };
            read_dump(BufReader::new(file)).with_context(|| format!("reading {}", path.display()))?
        }
        _ => genesis_accounts,
    };
    let records = TableRecords::of(&accounts)?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let sets = [&records.accounts, &records.storage, &records.code];
    let mut counts = [0u64; 3];
    for (((name, records), (page_size, value_size)), count) in
        TABLE_NAMES.iter().zip(sets).zip(TABLE_SHAPES).zip(&mut counts)
    {
        let options = BuildOptions { page_size, value_size: Some(value_size as u32), choices: 2, seed: None };
        let table = build(&records[..], &options, &Bar::new())
            .with_context(|| format!("building the {name} table"))?;
        let path = args.output.join(format!("{name}.mgdb"));
        table.write(&path).with_context(|| format!("writing {}", path.display()))?;
        *count = table.records();
        ensure!(
            *count == records.len() as u64,
            "the {name} table holds {count} of {} records",
            records.len()
        );
    }
    let manifest = Manifest::new(chain, counts);
    let path = args.output.join(MANIFEST_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "chain {} at block {}: {} accounts, {} storage words, {} code chunks into {} in {:.1?}",
        chain.chain_id,
        chain.block_number,
        counts[0],
        counts[1],
        counts[2],
        args.output.display(),
        started.elapsed()
    );
    Ok(())
}
