//! `eth_getBalance` end to end against the private lookup under it, in the
//! same run: two servers of the three tables (CPU engine) and the endpoint,
//! all in this process on loopback; alternately, one `Client::get` of an
//! address in the accounts table, and one `eth_getBalance` of another
//! address POSTed to the endpoint over HTTP.
//!
//!   cargo bench -p morphogen-eth-rpc --bench get_balance -- [--accounts N] [--lookups K]
//!
//! Prints p50/p90/p99 of both and the bound the endpoint is held to (2 × the lookup's
//! median + 5 ms). docs/PERFORMANCE.md has the figures.

use std::time::{Duration, Instant};

use morphogen_client::{Client, Settings};
use morphogen_eth::{Account, Chain, TABLE_NAMES};
use morphogen_eth_rpc::{Endpoint, StateReader};
use morphogen_eth_tables::write_tables;
use morphogen_scan::CpuEngine;
use morphogen_server::{Config, ServedTable, Server, TableInfo};
use morphogen_table::{NoProgress, Table, Verify};
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn address(i: u64) -> [u8; 20] {
    let mut address = [0x5a; 20];
    address[12..].copy_from_slice(&i.to_be_bytes());
    address
}

fn argument(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|i| args.get(i + 1))
        .map(|value| value.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

/// Serves the tables in `dir` on a loopback port until the process ends.
async fn serve(dir: &std::path::Path, chain: Chain) -> String {
    let tables = TABLE_NAMES
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.mgdb"));
            let table = Table::open(&path, Verify::Digest, &NoProgress).unwrap();
            ServedTable::new(name, TableInfo::of(&table), Box::new(CpuEngine::new(table)))
        })
        .collect();
    let about = json!({"chain_id": chain.chain_id, "block_number": chain.block_number});
    let config = Config { about: about.as_object().unwrap().clone(), ..Config::default() };
    let server = Server::new(tables, config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server.serve(listener, None, std::future::pending()));
    url
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let accounts = argument("--accounts", 1_000_000);
    let lookups = argument("--lookups", 300) as usize;
    let chain = Chain { chain_id: 1, block_number: 1 };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let state: Vec<Account> = (0..accounts)
        .map(|i| {
            let mut balance = [0u8; 32];
            balance[24..].copy_from_slice(&(i * 1_000_003).to_be_bytes());
            Account { address: address(i), balance, nonce: i % 100, ..Account::default() }
        })
        .collect();
    write_tables(&state, chain, 0, dir.path(), &NoProgress).unwrap();
    let accounts_bytes = std::fs::metadata(dir.path().join("accounts.mgdb")).unwrap().len();
    eprintln!("{accounts} accounts ({} MiB table) built in {:.1?}", accounts_bytes >> 20, started.elapsed());

    let (a, b) = (serve(dir.path(), chain).await, serve(dir.path(), chain).await);
    let settings = Settings::default();
    let lookup = Client::for_table(&a, &b, "accounts", &settings).await.unwrap();
    let endpoint = Endpoint::new(StateReader::connect(&a, &b, &settings).await.unwrap(), None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rpc = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(endpoint.serve(listener, std::future::pending()));
    let http = reqwest::Client::new();

    let (mut direct, mut through_rpc) = (Vec::new(), Vec::new());
    for round in 0..lookups + 20 {
        let i = (round as u64 * 7919) % accounts;
        let started = Instant::now();
        let value = lookup.get(&address(i)).await.unwrap().expect("present");
        let lookup_time = started.elapsed();
        assert_eq!(value[24..32], (i * 1_000_003).to_be_bytes());

        let j = (i + 1) % accounts;
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
                          "params": [format!("0x{}", hex::encode(address(j))), "latest"]});
        let started = Instant::now();
        let answer: Value = http.post(&rpc).json(&call).send().await.unwrap().json().await.unwrap();
        let rpc_time = started.elapsed();
        assert_eq!(answer["result"], format!("{:#x}", j * 1_000_003), "{answer}");
        // The first rounds warm connections and caches.
        if round >= 20 {
            direct.push(lookup_time);
            through_rpc.push(rpc_time);
        }
    }
    direct.sort();
    through_rpc.sort();
    println!("{lookups} rounds, {accounts} accounts, {} MiB accounts table", accounts_bytes >> 20);
    for (name, times) in
        [("private lookup (Client::get)", &direct), ("eth_getBalance over HTTP", &through_rpc)]
    {
        let [p50, p90, p99] = [0.5, 0.9, 0.99].map(|p| percentile(times, p));
        println!("{name:<30} p50 {p50:7.2} ms  p90 {p90:7.2} ms  p99 {p99:7.2} ms");
    }
    let bound = 2.0 * percentile(&direct, 0.5) + 5.0;
    let median = percentile(&through_rpc, 0.5);
    println!(
        "bound 2 x lookup p50 + 5 ms = {bound:.2} ms: eth_getBalance p50 {median:.2} ms is {}",
        if median <= bound { "within it" } else { "OVER IT" }
    );
}
