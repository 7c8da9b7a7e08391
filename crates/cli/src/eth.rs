//! `morphogen eth`: Ethereum state as tables for private reads.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use morphogen_eth::{Chain, TABLE_NAMES, read_dump, read_genesis, write_tables};

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
    let manifest = write_tables(&accounts, chain, &args.output, &Bar::new())?;
    let counts: Vec<u64> = TABLE_NAMES.iter().map(|name| manifest.counts[*name]).collect();
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
