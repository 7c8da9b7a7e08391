//! Faults from the outside: damaged table files, a disk that fills up
//! under the update log, and a server killed in the middle of a snapshot
//! swap. Each must leave a server that serves a consistent table, or none.

mod common;

use common::{Serving, build_from_csv, build_named, morphogen, serve_with, serve_with_file_limit, text};

use std::fs;
use std::path::Path;
use std::time::Duration;

use morphogen_client::Admin;
use morphogen_protocol::{ChangeBody, SnapshotRequest, SwapState, UpdateRequest};

const TOKEN: &str = "fault test token";

fn admin(server: &Serving) -> Admin {
    common::admin(&server.url, TOKEN)
}

/// `count` changes that give keys 0, 2, 4, ... (as the tables here store
/// them) the value `value`.
fn changes(count: u32, value: u64) -> Vec<ChangeBody> {
    (0..count)
        .map(|i| ChangeBody { key: format!("{:08x}", i * 2), value: Some(format!("{value:016x}")) })
        .collect()
}

/// `count` records: keys 0, 2, 4, ... with values `i + offset`.
fn rows(count: u32, offset: u64) -> String {
    (0..count).map(|i| format!("{:08x},{:016x}\n", i * 2, u64::from(i) + offset)).collect()
}

/// The digest in a table file's header, as `morphogen inspect` reports it.
fn file_digest(table: &Path) -> String {
    let output = morphogen(&["inspect", "--json", table.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    inspected["digest"].as_str().unwrap().to_string()
}

#[test]
fn serve_refuses_a_missing_truncated_or_corrupt_table() {
    let output = morphogen(&["serve", "--db", "/nonexistent/t.mgdb", "--listen", "127.0.0.1:0"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("t.mgdb"), "{}", text(&output.stderr));

    let dir = tempfile::tempdir().unwrap();
    let table = build_from_csv(dir.path(), &rows(300, 0));
    let bytes = fs::read(&table).unwrap();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    for (damage, file, expected) in [
        ("truncated", &bytes[..bytes.len() - 512], "truncated or damaged"),
        ("one bit flipped in a page", &flipped[..], "digest"),
    ] {
        fs::write(&table, file).unwrap();
        let output = morphogen(&["serve", "--db", table.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{damage}");
        assert!(stderr.contains(expected), "{damage}: {stderr}");
    }
}

#[test]
fn a_full_disk_refuses_the_update_unacknowledged_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let table = build_from_csv(dir.path(), &rows(2_000, 0));
    let token = dir.path().join("token");
    fs::write(&token, TOKEN).unwrap();
    let options =
        ["--db", table.to_str().unwrap(), "--engine", "cpu", "--admin-token-file", token.to_str().unwrap()];
    // The log may grow to 16 KiB: a small batch fits, one of 1,000 changes
    // (about 56 KiB) does not.
    let limited = serve_with_file_limit(&options, 16);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (acknowledged, small) = runtime.block_on(async {
        let admin = admin(&limited);
        let first = admin
            .update(&UpdateRequest { sequence: 1, changes: changes(10, 0xa1), label: None })
            .await
            .unwrap();

        let large = UpdateRequest { sequence: 2, changes: changes(1_000, 0xb2), label: None };
        let error = admin.update(&large).await.unwrap_err();
        assert!(error.to_string().contains("log_write_failed"), "{error}");
        // Nothing changed, and the server still answers.
        let status = admin.status().await.unwrap().meta;
        assert_eq!((status.epoch, &status.digest), (1, &first.digest));
        let meta = reqwest::get(format!("{}/v1/meta", limited.url)).await.unwrap();
        assert_eq!(meta.status().as_u16(), 200);

        // The failed write left no partial record behind: the next batch
        // that fits is appended and acknowledged as epoch 2.
        let small = admin
            .update(&UpdateRequest { sequence: 2, changes: changes(5, 0xc3), label: None })
            .await
            .unwrap();
        assert_eq!(small.epoch, 2);
        (first, small)
    });
    assert!(limited.log.lock().unwrap().contains("could not be written to the update log"));
    assert_ne!(acknowledged.digest, small.digest);
    drop(limited);

    // Restarted without the limit, the server replays both acknowledged
    // batches and nothing of the failed one.
    let restarted = serve_with(&options);
    let status = runtime.block_on(async { admin(&restarted).status().await.unwrap().meta });
    assert_eq!((status.epoch, status.digest), (2, small.digest));
}

#[test]
fn a_server_killed_during_a_snapshot_swap_restarts_on_a_consistent_table() {
    let dir = tempfile::tempdir().unwrap();
    let originals = dir.path().join("originals");
    fs::create_dir(&originals).unwrap();
    build_named(&originals, "old.mgdb", &rows(500, 0));
    // Large enough (107 MB) that loading and verifying it takes 20 to 30 ms
    // on a 2-core machine, so the first rounds' kills land inside the load
    // even on a machine several times faster. (A 20 MB table once loaded
    // on CI before a kill 1 ms after the swap was acknowledged.)
    let new = originals.join("new.mgdb");
    let built = morphogen(&[
        "build",
        "--synthetic",
        "200000",
        "--value-size",
        "512",
        // Big pages leave every page free rows for the updates below.
        "--page-size",
        "65536",
        "--output",
        new.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let new_digest = file_digest(&new);
    let token = dir.path().join("token");
    fs::write(&token, TOKEN).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut seen_old, mut seen_new) = (0, 0);

    // Two rounds whose outcome is known, then kills at times that may land
    // before, during or after the swap: each of those may come back on
    // either snapshot, but never on a mixture.
    let mut kills = vec![Kill::BeforeTheSwap, Kill::OnceSwapped];
    kills.extend([0, 250, 500, 1_000, 2_000, 4_000, 8_000, 32_000, 128_000, 640_000].map(Kill::AfterMicros));
    for (round, kill) in kills.into_iter().enumerate() {
        let snapshots = dir.path().join(format!("round-{round}"));
        fs::create_dir(&snapshots).unwrap();
        // Servers never write table files, only the logs beside them.
        for file in ["old.mgdb", "new.mgdb"] {
            fs::hard_link(originals.join(file), snapshots.join(file)).unwrap();
        }
        let db = snapshots.join("old.mgdb");
        let options = [
            "--db",
            db.to_str().unwrap(),
            "--snapshot-dir",
            snapshots.to_str().unwrap(),
            "--engine",
            "cpu",
            "--admin-token-file",
            token.to_str().unwrap(),
        ];
        let mut server = serve_with(&options);
        let old_digest = runtime.block_on(async {
            let admin = admin(&server);
            let updated = admin
                .update(&UpdateRequest { sequence: 1, changes: changes(3, 0xd4), label: None })
                .await
                .unwrap();
            if kill != Kill::BeforeTheSwap {
                let request = SnapshotRequest { file: "new.mgdb".to_string(), label: None, sequence: 2 };
                admin.swap(&request).await.unwrap();
            }
            if kill == Kill::OnceSwapped {
                wait_until_swapped(&admin, round).await;
            }
            updated.digest
        });
        if let Kill::AfterMicros(micros) = kill {
            // A thread sleep, not the runtime's timer, whose resolution is 1 ms.
            std::thread::sleep(Duration::from_micros(micros));
        }
        server.child.kill().unwrap();
        server.child.wait().unwrap();

        // Restarted with the same command line: the old table at epoch 1,
        // or the new one at epoch 2, never a mixture.
        let restarted = serve_with(&options);
        runtime.block_on(async {
            let admin = admin(&restarted);
            let status = admin.status().await.unwrap().meta;
            let expected = match kill {
                Kill::BeforeTheSwap => Some(1),
                Kill::OnceSwapped => Some(2),
                Kill::AfterMicros(_) => None,
            };
            assert!(
                expected.is_none_or(|epoch| epoch == status.epoch),
                "round {round} ({kill:?}): {status:?}"
            );
            match status.epoch {
                1 => {
                    assert_eq!(status.digest, old_digest, "round {round}");
                    seen_old += 1;
                    // The interrupted swap can simply be asked for again.
                    let request = SnapshotRequest { file: "new.mgdb".to_string(), label: None, sequence: 2 };
                    admin.swap(&request).await.unwrap();
                    wait_until_swapped(&admin, round).await;
                }
                2 => seen_new += 1,
                epoch => panic!("round {round}: restarted at epoch {epoch}"),
            }
            let status = admin.status().await.unwrap().meta;
            assert_eq!((status.epoch, &status.snapshot_digest), (2, &new_digest), "round {round}");
            // And it takes the next batch on the new snapshot.
            let next = admin
                .update(&UpdateRequest { sequence: 3, changes: changes(2, 0xe5), label: None })
                .await
                .unwrap();
            assert_eq!(next.epoch, 3);
        });
    }
    eprintln!("restarted on the old snapshot {seen_old} times, on the new one {seen_new} times");
}

/// When a round of the swap test kills its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// Before the swap is asked for: it restarts on the old snapshot.
    BeforeTheSwap,
    /// Once the swap is done: it restarts on the new one.
    OnceSwapped,
    /// This many microseconds after the swap was asked for: on either.
    AfterMicros(u64),
}

/// Waits until the server's latest swap is done, failing the round if it failed.
async fn wait_until_swapped(admin: &Admin, round: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let swap = admin.status().await.unwrap().snapshot_swap.unwrap();
        match swap.state {
            SwapState::Swapped => return,
            SwapState::Failed => panic!("round {round}: {:?}", swap.error),
            SwapState::Loading => assert!(std::time::Instant::now() < deadline, "round {round}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
