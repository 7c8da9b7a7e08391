//! The `morphogen` command line: a thin layer over the library crates.

mod bench;
mod demo;
mod engine;
mod progress;
mod table_cmds;

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
    /// Run the core step of a private lookup on a built-in example and check it.
    Demo(demo::DemoArgs),
    /// Build a table file (.mgdb) from a CSV of hex key,value records.
    Build(table_cmds::BuildArgs),
    /// Describe a table file: parameters, records, load factor, digest.
    Inspect(table_cmds::InspectArgs),
    /// Time an engine's passes over a table (no HTTP), next to a plain read of every page.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
        Command::Build(args) => table_cmds::build_command(&args),
        Command::Inspect(args) => table_cmds::inspect_command(&args),
        Command::Bench(args) => bench::run(&args),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
