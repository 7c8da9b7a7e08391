//! What an attacker without the admin token can make a server hold: the
//! server's memory, measured as the process's resident memory, so this
//! test has a binary of its own (no other test allocates beside it).

mod common;

use common::{post_huge, spawn};

use morphogen_epochs::Epochs;
use morphogen_scan::CpuEngine;
use morphogen_server::{Config, DEFAULT_TABLE, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, build};

/// This process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_admin_body_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..500).map(|i| (format!("key-{i}").into_bytes(), vec![7; 8])).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(16), choices: 2, ..Default::default() };
    let mut table = build(&records[..], &options, &NoProgress).unwrap();
    let (epochs, _) = Epochs::open(&mut table, &dir.path().join("table.log"), 16).unwrap();
    let info = TableInfo::of(&table);
    let served = ServedTable {
        epochs: Some(epochs),
        ..ServedTable::new(DEFAULT_TABLE, info, Box::new(CpuEngine::new(table)))
    };
    let config =
        Config { admin_token: Some("a test admin token of some length".to_string()), ..Config::default() };
    let (url, _stop) = spawn(Server::new(vec![served], config).unwrap()).await;
    let address = url.trim_start_matches("http://");
    // Warm up the allocator and the connection path first.
    assert!(post_huge(address, "/admin/v1/updates", "", 1 << 20).await.starts_with("HTTP/1.1 401"));
    let before = resident_bytes();
    let statuses = three_unauthenticated_bodies(address, 200 << 20).await;
    let grown = resident_bytes().saturating_sub(before);
    for status in statuses {
        assert!(status.starts_with("HTTP/1.1 401"), "{status:?}");
    }
    assert!(grown < 16 << 20, "resident memory grew by {} MiB", grown >> 20);
}

/// Three bodies of `length` bytes at once: without a token to the update
/// route, and with a wrong one to the snapshot and update routes; their
/// status lines.
async fn three_unauthenticated_bodies(address: &str, length: usize) -> Vec<String> {
    let wrong = "authorization: Bearer not-the-token-at-all\r\n";
    let (a, b, c) = tokio::join!(
        post_huge(address, "/admin/v1/updates", "", length),
        post_huge(address, "/admin/v1/snapshot", wrong, length),
        post_huge(address, "/admin/v1/updates", wrong, length),
    );
    vec![a, b, c]
}
