//! `morphogen eth`: Ethereum state as tables for private reads, and a
//! JSON-RPC endpoint that reads them.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Args, Subcommand};
use morphogen_eth::{Chain, TABLE_NAMES, read_dump, read_genesis};
use morphogen_eth_follow::{Follower, Node, Settings as FollowSettings, serve_metrics};
use morphogen_eth_rpc::{Endpoint, StateReader, Upstream};
use morphogen_eth_tables::write_tables;
use tokio::net::TcpListener;

use crate::progress::Bar;
use crate::trust::TrustArgs;

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
    /// Serve a JSON-RPC endpoint for wallets: eth_getBalance,
    /// eth_getTransactionCount, eth_getCode and eth_getStorageAt answered
    /// by private lookups in the tables of two servers (`serve --tables
    /// DIR/eth.json`), eth_chainId, net_version and eth_blockNumber from
    /// their manifest; other methods forwarded to --upstream, if given.
    Rpc(RpcArgs),
    /// Follow a node block by block: send each block's state changes to
    /// every table of every server (their admin routes) as one batch per
    /// table, labelled with the block, so that each epoch is one block.
    /// Keeps no state of its own: restarted, it goes on from the servers'
    /// labels. The node must answer debug_traceBlockByHash with the
    /// prestateTracer (geth: --http.api eth,debug; reth: --http.api
    /// eth,debug; anvil does).
    Follow(FollowArgs),
}

#[derive(Args)]
struct FollowArgs {
    /// The node's JSON-RPC URL.
    #[arg(long, value_name = "URL")]
    node: String,
    /// Admin base URL of a server of the tables (`serve --tables` with an
    /// admin token): its --admin-listen address, or its public one. Give
    /// each server; all get the same batches with the same sequence numbers.
    #[arg(long = "admin", value_name = "URL", required = true)]
    admins: Vec<String>,
    /// File holding the admin token; MORPHOGEN_ADMIN_TOKEN in the
    /// environment otherwise.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Blocks to stay behind the node's newest: a block is applied once
    /// this many more are built on it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    confirmations: u64,
    /// Seconds between asking the node for a new block while it has none.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = crate::positive_seconds)]
    poll_interval: f64,
    /// Seconds to wait for each node and server request.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
    /// Serve Prometheus metrics at GET /metrics on this address: the block
    /// held, the node's head, blocks behind, seconds since the last block,
    /// blocks applied, reorganisations and retries.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args)]
struct RpcArgs {
    /// Base URL of a server of the tables; give exactly two (the two must
    /// not collude).
    #[arg(long = "server", value_name = "URL", required = true)]
    servers: Vec<String>,
    /// Address and port to answer JSON-RPC on. Keep it on loopback or a
    /// private network: the calls it receives name the accounts read.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8545")]
    listen: SocketAddr,
    /// A node to forward every other method to (eth_call,
    /// eth_sendRawTransaction, …). What it is sent is not private. Without
    /// it, other methods are answered -32601 (method not found).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Seconds to wait for each server request, and for the upstream node.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
    #[command(flatten)]
    trust: TrustArgs,
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
    /// Room for the chain to grow, as a percentage of the records of each
    /// table (and at least 16,384 accounts, 65,536 storage words and 1,024
    /// code chunks): a followed chain adds accounts, slots and code, and a
    /// table without a free row for a new key refuses the block (409
    /// table_full).
    /// Each table's free rows are published (/v1/meta free_rows) and
    /// exported (morphogen_free_rows).
    #[arg(long, value_name = "PERCENT", default_value_t = 25)]
    headroom: u32,
}

impl EthArgs {
    /// Whether the command serves until stopped (and so logs what it does).
    pub fn serves(&self) -> bool {
        matches!(self.command, EthCommand::Rpc(_) | EthCommand::Follow(_))
    }
}

pub fn run(args: &EthArgs) -> anyhow::Result<()> {
    match &args.command {
        EthCommand::Build(build) => build_tables(build),
        EthCommand::Rpc(rpc) => serve_rpc(rpc),
        EthCommand::Follow(follow) => follow_node(follow),
    }
}

fn follow_node(args: &FollowArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let client = args.trust.settings(timeout)?;
    let token = crate::serve::admin_token(args.token_file.as_deref())?.context(
        "give --token-file or MORPHOGEN_ADMIN_TOKEN: the follower sends batches to the admin routes",
    )?;
    let node = Node::new(&args.node, timeout)?;
    let settings = FollowSettings {
        confirmations: args.confirmations,
        poll_interval: Duration::from_secs_f64(args.poll_interval),
    };
    let follower = Follower::new(node, &args.admins, &token, &client, settings)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        if let Some(address) = args.metrics_listen {
            let listener =
                TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))?;
            tracing::info!(address = %listener.local_addr()?, "metrics");
            tokio::spawn(serve_metrics(listener, follower.metrics().clone(), std::future::pending()));
        }
        tracing::info!(node = %args.node, servers = args.admins.len(), "following");
        follower.run(crate::serve::shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn serve_rpc(args: &RpcArgs) -> anyhow::Result<()> {
    ensure!(args.servers.len() == 2, "give exactly two --server URLs (got {})", args.servers.len());
    let timeout = Duration::from_secs(args.timeout);
    let settings = args.trust.settings(timeout)?;
    let upstream = match &args.upstream {
        Some(url) => Some(Upstream::new(url, timeout).map_err(|e| anyhow::anyhow!("--upstream {e}"))?),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let reader = StateReader::connect(&args.servers[0], &args.servers[1], &settings).await?;
        let chain = reader.chain();
        let listener =
            TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(
            chain_id = chain.chain_id,
            block = chain.block_number,
            upstream = args.upstream.is_some(),
            "state tables found on both servers"
        );
        // Scripts and tests read the address from the end of this line.
        tracing::info!(address = %listener.local_addr()?, "answering JSON-RPC");
        Endpoint::new(reader, upstream).serve(listener, crate::serve::shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
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
    let manifest = write_tables(&accounts, chain, args.headroom, &args.output, &Bar::new())?;
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
