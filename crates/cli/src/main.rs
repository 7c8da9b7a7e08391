//! The `morphogen` command line: a thin layer over the library crates.

mod demo;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(&args),
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
