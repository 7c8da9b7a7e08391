//! `morphogen get`: look keys up privately through two servers.

use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Args;
use morphogen_client::Client;
use serde::Serialize;

use crate::trust::TrustArgs;

#[derive(Args)]
pub struct GetArgs {
    /// Base URL of a server; give exactly two (the two must not collude).
    #[arg(long = "server", value_name = "URL", required = true)]
    servers: Vec<String>,
    /// Keys to look up, in hex (with or without 0x), 1 to 64 bytes each.
    #[arg(value_name = "KEY", required = true, value_parser = parse_hex_key)]
    keys: Vec<Vec<u8>>,
    /// The table to read, on servers of several tables (`serve --tables`);
    /// their only table when not given.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// Print JSON: a list of {"key", "value"} with value null when not found.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each server request.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
    #[command(flatten)]
    trust: TrustArgs,
}

fn parse_hex_key(text: &str) -> Result<Vec<u8>, String> {
    let bytes = crate::parse_hex_arg(text, "a key")?;
    if bytes.is_empty() || bytes.len() > morphogen_table::MAX_KEY_LEN {
        return Err(format!("a key is 1 to {} bytes", morphogen_table::MAX_KEY_LEN));
    }
    Ok(bytes)
}

#[derive(Serialize)]
struct Found {
    key: String,
    value: Option<String>,
}

pub fn run(args: &GetArgs) -> anyhow::Result<()> {
    ensure!(args.servers.len() == 2, "give exactly two --server URLs (got {})", args.servers.len());
    let settings = args.trust.settings(Duration::from_secs(args.timeout))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let values = runtime.block_on(async {
        let [a, b] = [&args.servers[0], &args.servers[1]];
        let client = match &args.table {
            Some(table) => Client::for_table(a, b, table, &settings).await?,
            None => Client::with_settings(a, b, &settings).await?,
        };
        client.get_many(&args.keys).await
    })?;
    let found: Vec<Found> = args
        .keys
        .iter()
        .zip(values)
        .map(|(key, value)| Found { key: hex::encode(key), value: value.map(hex::encode) })
        .collect();
    let text = if args.json {
        serde_json::to_string_pretty(&found)? + "\n"
    } else {
        found.iter().map(|f| format!("{} {}\n", f.key, f.value.as_deref().unwrap_or("not found"))).collect()
    };
    crate::print_stdout(&text)
}
