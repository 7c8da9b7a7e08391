//! The `morphogen` command line: a thin layer over the library crates.

mod bench;
mod cert;
mod demo;
mod engine;
mod eth;
mod get;
mod load;
mod progress;
mod selftest;
mod serve;
mod swap;
mod table_cmds;
mod trust;
mod update;

use clap::{Parser, Subcommand};

/// Two-server private information retrieval: look a record up in a table held
/// by two servers without either server learning which record it was.
#[derive(Parser)]
#[command(name = "morphogen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// See it work: build a sample table, start two servers on this machine,
    /// look keys up privately through them and check every answer.
    Demo(demo::DemoArgs),
    /// Build a table file (.mgdb) from a CSV of hex key,value records.
    Build(table_cmds::BuildArgs),
    /// Describe a table file: parameters, records, load factor, digest.
    Inspect(table_cmds::InspectArgs),
    /// Serve a table: answer private lookups over HTTP.
    Serve(Box<serve::ServeArgs>),
    /// Look keys up privately through two servers.
    Get(get::GetArgs),
    /// Send a CSV of changes to the servers as the next update batch (epoch).
    Update(update::UpdateArgs),
    /// Swap the servers to a new table file of their snapshot directories,
    /// as the next epoch, while they keep answering.
    Snapshot(swap::SnapshotArgs),
    /// Time an engine's passes over a table (no HTTP), next to a plain read
    /// of every page timed in the same rounds.
    Bench(bench::BenchArgs),
    /// Load-test two servers (or one) with many concurrent private lookups,
    /// checking every answer; reports throughput and latency percentiles.
    Load(load::LoadArgs),
    /// Check an engine against the reference engine on random tables of
    /// awkward shapes; exits non-zero on any difference.
    Selftest(selftest::SelftestArgs),
    /// Make a private certificate authority and TLS certificates for the
    /// servers it signs (for servers without a public authority's).
    Cert(cert::CertArgs),
    /// Ethereum: build account, storage and code tables from a chain's
    /// state, and answer wallets' JSON-RPC reads of them privately.
    Eth(eth::EthArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Servers (of tables, of JSON-RPC) report what they do; other commands
    // only warnings.
    let serves = match &cli.command {
        Command::Serve(_) => true,
        Command::Eth(args) => args.serves(),
        _ => false,
    };
    init_logging(if serves { "info" } else { "warn" });
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Build(args) => table_cmds::build_command(&args),
        Command::Inspect(args) => table_cmds::inspect_command(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Get(args) => get::run(&args),
        Command::Update(args) => update::run(&args),
        Command::Snapshot(args) => swap::run(&args),
        Command::Selftest(args) => selftest::run(&args),
        Command::Cert(args) => cert::run(&args),
        Command::Eth(args) => eth::run(&args),
        Command::Load(args) => load::run(&args),
    }
}

/// Decodes a hex command-line argument, with or without `0x`; `what` names
/// it in the error ("the seed", "a key").
fn parse_hex_arg(text: &str, what: &str) -> Result<Vec<u8>, String> {
    hex::decode(text.strip_prefix("0x").unwrap_or(text)).map_err(|_| format!("{what} must be hex digits"))
}

/// A time in seconds for clap: more than zero and small enough to be a
/// `Duration`.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && std::time::Duration::try_from_secs_f64(seconds).is_ok() => {
            Ok(seconds)
        }
        _ => Err("must be a positive number of seconds".to_string()),
    }
}

/// Logs to standard error at `default_level`, or as `RUST_LOG` says.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Writes `text` to standard output. A reader that went away (`| head`) is
/// not an error: the output was simply not wanted any more.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The `p`-th percentile (nearest rank) of `samples`, which are not empty.
fn percentile(samples: &[std::time::Duration], p: f64) -> std::time::Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
