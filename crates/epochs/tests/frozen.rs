//! The frozen update log (`tests/data`, written by `examples/frozen_log.rs`
//! over the table crate's frozen table): a change to the log format, to
//! placement or to the epoch digest chain breaks this test instead of
//! silently making servers disagree with the ones already running.

use std::path::{Path, PathBuf};

use morphogen_epochs::{DEFAULT_WINDOW, Epochs};
use morphogen_table::{NoProgress, Table, Verify};

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn frozen_table() -> Table {
    Table::open(&path("../table/tests/data/two-pages.mgdb"), Verify::Digest, &NoProgress).unwrap()
}

#[test]
fn the_frozen_log_replays_to_the_frozen_digests() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("three-batches.log");
    std::fs::copy(path("tests/data/three-batches.log"), &log).unwrap();
    let mut table = frozen_table();
    let (epochs, replayed) = Epochs::open(&mut table, &log, DEFAULT_WINDOW).unwrap();
    assert_eq!((replayed.batches, replayed.torn, epochs.epoch()), (3, None, 3));
    let frozen = std::fs::read_to_string(path("tests/data/three-batches.digests")).unwrap();
    let digests: Vec<(u64, String)> = frozen
        .lines()
        .map(|line| {
            let (epoch, digest) = line.split_once(' ').unwrap();
            (epoch.parse().unwrap(), digest.to_string())
        })
        .collect();
    assert_eq!(digests.len(), 3);
    assert_eq!(digests[2], (3, hex::encode(epochs.digest())), "the last epoch's digest");
    for (epoch, digest) in &digests {
        let diff = epochs.history().epoch(*epoch).unwrap();
        assert_eq!(&hex::encode(diff.digest), digest, "epoch {epoch}");
    }
    // What the batches did: key 1 changed, key 13 added, key 2 deleted, key 3 changed.
    let value = |i: u32| table.get(&i.to_be_bytes()).map(<[u8]>::to_vec);
    assert_eq!(value(1), Some(vec![0xa1; 8]));
    assert_eq!(value(13), Some([vec![0xd1; 5], vec![0; 3]].concat()));
    assert_eq!(value(2), None);
    assert_eq!(value(3), Some(vec![0xc3; 8]));
    assert_eq!(epochs.records(), 12);
}

#[test]
fn the_frozen_labelled_batch_replays_to_its_digest_and_label() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("labelled-batch.log");
    std::fs::copy(path("tests/data/labelled-batch.log"), &log).unwrap();
    let mut table = frozen_table();
    let (epochs, replayed) = Epochs::open(&mut table, &log, DEFAULT_WINDOW).unwrap();
    assert_eq!((replayed.batches, epochs.epoch()), (1, 1));
    let frozen = std::fs::read_to_string(path("tests/data/labelled-batch.digests")).unwrap();
    assert_eq!(frozen.trim(), format!("1 {}", hex::encode(epochs.digest())));
    let diff = epochs.history().epoch(1).unwrap();
    assert_eq!(diff.label.as_deref(), Some(&br#"{"block":"0x10","hash":"0xab"}"#[..]));
    assert_eq!(table.get(&5u32.to_be_bytes()), Some(&[0xe5; 8][..]));
}
