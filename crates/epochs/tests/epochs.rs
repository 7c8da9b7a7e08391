//! Update batches against a table: placement, refusals, the log across
//! restarts and crashes, digests, and answers taken back to older epochs.

use std::io::Write;
use std::path::Path;

use morphogen_dpf::{Key, generate};
use morphogen_epochs::{Batch, Change, DEFAULT_WINDOW, Epochs, Error, Unavailable, grown_table, rewind};
use morphogen_scan::{Query, reference_pass};
use morphogen_table::{BuildOptions, KeyDigest, NoProgress, Table, build};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A table of `n` records `key{i} -> value{i}` in 512-byte pages of 15 rows.
fn table(n: usize) -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..n).map(|i| (format!("key{i}").into_bytes(), format!("value{i}").into_bytes())).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(24), ..BuildOptions::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

/// Opens epochs for `table` with a log in `dir`.
fn open(table: &mut Table, dir: &Path) -> Epochs {
    Epochs::open(table, &dir.join("table.log"), DEFAULT_WINDOW).unwrap().0
}

/// Plans, commits and applies `changes` as the next batch.
fn update(epochs: &mut Epochs, table: &mut Table, changes: Vec<Change>) -> Result<(), Error> {
    let plan = epochs.plan(table, Batch { sequence: epochs.epoch() + 1, changes, label: None })?;
    let writes = epochs.commit(plan)?;
    table.apply(&writes)?;
    table.set_records(epochs.records());
    Ok(())
}

#[test]
fn sets_rewrite_insert_and_delete_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table(200);
    let mut epochs = open(&mut table, dir.path());
    update(
        &mut epochs,
        &mut table,
        vec![
            Change::set(b"key1", b"new one"),
            Change::set(b"fresh", b"brand new"),
            Change::delete(b"key2"),
            Change::delete(b"never there"),
        ],
    )
    .unwrap();
    assert_eq!(epochs.epoch(), 1);
    assert_eq!(table.get(b"key1"), Some(&b"new one\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..]));
    assert_eq!(&table.get(b"fresh").unwrap()[..9], b"brand new");
    assert_eq!(table.get(b"key2"), None);
    assert_eq!(&table.get(b"key3").unwrap()[..6], b"value3");
    assert_eq!(epochs.records(), 200);

    // A later change of the same key in one batch wins.
    update(&mut epochs, &mut table, vec![Change::set(b"twice", b"first"), Change::set(b"twice", b"second")])
        .unwrap();
    assert_eq!(&table.get(b"twice").unwrap()[..6], b"second");
    assert_eq!(epochs.records(), 201);
}

#[test]
fn a_full_table_refuses_the_whole_batch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table(200);
    let mut epochs = open(&mut table, dir.path());
    let before = table.pages().to_vec();
    // Far more new keys than the table has free rows.
    let mut changes = vec![Change::set(b"key1", b"changed")];
    changes.extend((0..table.layout().capacity()).map(|i| Change::set(format!("new{i}").as_bytes(), b"v")));
    let error = update(&mut epochs, &mut table, changes).unwrap_err();
    assert!(matches!(error, Error::TableFull { change } if change > 1), "{error}");
    assert!(error.to_string().contains("rebuild needed"));
    assert_eq!(table.pages(), &before[..]);
    assert_eq!((epochs.epoch(), epochs.records(), epochs.log_len()), (0, 200, 64));
}

#[test]
fn sequence_numbers_must_follow_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table(10);
    let epochs = open(&mut table, dir.path());
    for sequence in [0, 2] {
        let error = epochs.plan(&table, Batch { sequence, changes: vec![], label: None }).err().unwrap();
        assert!(matches!(error, Error::Sequence { expected: 1, actual } if actual == sequence));
    }
}

#[test]
fn values_longer_than_the_value_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table(10);
    let epochs = open(&mut table, dir.path());
    let batch = Batch {
        sequence: 1,
        changes: vec![Change::set(b"k", b"ok"), Change::set(b"k", &[1; 25])],
        label: None,
    };
    let error = epochs.plan(&table, batch).err().unwrap();
    assert!(matches!(error, Error::ValueTooLong { change: 1, len: 25, value_size: 24 }));
}

/// Random batches of sets and deletes, mostly of the 200 keys the test
/// tables hold, sometimes of a few new ones (the tables have few free rows).
fn random_batches(count: usize, seed: u64) -> Vec<Vec<Change>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            (0..rng.random_range(0..20))
                .map(|_| {
                    let key = match rng.random_bool(0.9) {
                        true => format!("key{}", rng.random_range(0..200)),
                        false => format!("new{}", rng.random_range(0..6)),
                    };
                    if rng.random_bool(0.2) {
                        Change::delete(key.as_bytes())
                    } else {
                        Change::set(key.as_bytes(), format!("v{}", rng.random::<u32>()).as_bytes())
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_restart_replays_the_log_into_the_same_pages_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = table(200);
    let mut epochs = open(&mut live, dir.path());
    for changes in random_batches(30, 1) {
        update(&mut epochs, &mut live, changes).unwrap();
    }
    let mut restarted = table(200);
    let (reopened, replayed) =
        Epochs::open(&mut restarted, &dir.path().join("table.log"), DEFAULT_WINDOW).unwrap();
    assert_eq!((replayed.batches, replayed.torn), (30, None));
    assert_eq!(
        (reopened.epoch(), reopened.digest(), reopened.records()),
        (30, epochs.digest(), epochs.records())
    );
    assert_eq!(restarted.pages(), live.pages());
    assert_eq!(restarted.records(), live.records());
    assert_eq!(reopened.history().oldest(), 0, "the history is rebuilt from the log");
}

#[test]
fn two_servers_fed_the_same_batches_agree_on_every_digest() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (table(200), table(200));
    let (mut epochs_a, mut epochs_b) = (open(&mut a, dir_a.path()), open(&mut b, dir_b.path()));
    let mut seen = std::collections::HashSet::new();
    for changes in random_batches(20, 2) {
        update(&mut epochs_a, &mut a, changes.clone()).unwrap();
        update(&mut epochs_b, &mut b, changes).unwrap();
        assert_eq!(epochs_a.digest(), epochs_b.digest());
        assert!(seen.insert(epochs_a.digest()), "every epoch has a digest of its own");
    }
    assert_eq!(a.pages(), b.pages());
    // A different last batch gives a different digest.
    update(&mut epochs_a, &mut a, vec![Change::set(b"key1", b"a")]).unwrap();
    update(&mut epochs_b, &mut b, vec![Change::set(b"key1", b"b")]).unwrap();
    assert_ne!(epochs_a.digest(), epochs_b.digest());
}

/// Applies 5 batches, then appends `garbage` to the log as a crash would.
fn log_with_tail(dir: &Path, garbage: &[u8]) -> (Table, Epochs) {
    let mut live = table(200);
    let mut epochs = open(&mut live, dir);
    for changes in random_batches(5, 3) {
        update(&mut epochs, &mut live, changes).unwrap();
    }
    std::fs::OpenOptions::new().append(true).open(dir.join("table.log")).unwrap().write_all(garbage).unwrap();
    (live, epochs)
}

#[test]
fn a_torn_last_record_is_dropped_and_the_log_goes_on() {
    // Shapes a crash can leave: a partial record header; a zero-filled
    // tail (the length grew, the data never landed); the first part of a
    // record.
    let record = whole_record();
    for garbage in [vec![7u8; 10], vec![0u8; 300], record[..40].to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        let (live, epochs) = log_with_tail(dir.path(), &garbage);
        let mut restarted = table(200);
        let path = dir.path().join("table.log");
        let (mut reopened, replayed) = Epochs::open(&mut restarted, &path, DEFAULT_WINDOW).unwrap();
        let torn = replayed.torn.expect("the tail is reported");
        assert_eq!((torn.offset, torn.bytes), (epochs.log_len(), garbage.len() as u64));
        assert_eq!((reopened.epoch(), reopened.digest()), (5, epochs.digest()));
        assert_eq!(restarted.pages(), live.pages());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), epochs.log_len(), "the tail is cut off");
        update(&mut reopened, &mut restarted, vec![Change::set(b"after", b"crash")]).unwrap();
        let mut again = table(200);
        let (_, replayed) = Epochs::open(&mut again, &path, DEFAULT_WINDOW).unwrap();
        assert_eq!((replayed.batches, replayed.torn), (6, None));
        assert_eq!(&again.get(b"after").unwrap()[..5], b"crash");
    }
}

/// A record of a 50-byte payload, whole and checksummed.
fn whole_record() -> Vec<u8> {
    let payload = [9u8; 50];
    let mut record =
        [&50u32.to_le_bytes()[..], &(!50u32).to_le_bytes(), &blake3::hash(&payload).as_bytes()[..16]]
            .concat();
    record.extend_from_slice(&payload);
    record
}

#[test]
fn a_whole_last_record_that_fails_its_checksum_is_corruption_unless_told_to_truncate() {
    let mut damaged = whole_record();
    damaged[60] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let (live, epochs) = log_with_tail(dir.path(), &damaged);
    let path = dir.path().join("table.log");
    let error = Epochs::open(&mut table(200), &path, DEFAULT_WINDOW).err().unwrap();
    assert!(matches!(error, Error::LogCorrupt { offset, .. } if offset == epochs.log_len()), "{error}");
    assert!(error.to_string().contains("--truncate-damaged-log"), "{error}");
    let length = epochs.log_len() + damaged.len() as u64;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), length, "the refused log is left as it was");

    let mut restarted = table(200);
    let (reopened, replayed) =
        Epochs::open_with(&mut restarted, &path, Default::default(), morphogen_epochs::Tail::Truncate)
            .unwrap();
    let dropped = replayed.torn.expect("the dropped record is reported");
    assert_eq!((dropped.offset, dropped.bytes), (epochs.log_len(), damaged.len() as u64));
    assert_eq!((reopened.epoch(), restarted.pages()), (5, live.pages()));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), epochs.log_len());
}

#[test]
fn rejects_an_epoch_window_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.log");
    assert!(matches!(Epochs::open(&mut table(200), &path, 0).err().unwrap(), Error::Window));
    assert!(matches!(Epochs::create(&table(200), &path, 0, 0).err().unwrap(), Error::Window));
}

#[test]
fn corruption_before_the_last_record_refuses_to_open_and_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (_, epochs) = log_with_tail(dir.path(), &[]);
    let path = dir.path().join("table.log");
    let mut bytes = std::fs::read(&path).unwrap();
    // The first record starts after the 64-byte header; flip a payload byte.
    bytes[64 + 24 + 3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let error = Epochs::open(&mut table(200), &path, DEFAULT_WINDOW).err().unwrap();
    assert!(matches!(error, Error::LogCorrupt { offset: 64, .. }), "{error}");
    assert!(error.to_string().contains("at byte 64"), "{error}");
    assert!(epochs.log_len() > 200);
}

#[test]
fn a_log_of_another_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = log_with_tail(dir.path(), &[]);
    let error = Epochs::open(&mut table(201), &dir.path().join("table.log"), DEFAULT_WINDOW).err().unwrap();
    assert!(matches!(error, Error::LogHeader { .. }), "{error}");
    assert!(error.to_string().contains("belongs to the table with digest"), "{error}");
}

/// A random query of party 0 for the table's layout.
fn query(table: &Table, rng: &mut StdRng) -> Query {
    let layout = table.layout();
    let keys: Vec<Key> = (0..layout.choices())
        .map(|_| {
            generate(layout.pages_per_table(), rng.random_range(0..layout.pages_per_table()), rng).unwrap().0
        })
        .collect();
    Query { keys }
}

#[test]
fn answers_taken_back_to_an_older_epoch_equal_that_epochs_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = table(300);
    let mut epochs = Epochs::open(&mut live, &dir.path().join("table.log"), 8).unwrap().0;
    let mut rng = StdRng::seed_from_u64(4);
    let queries: Vec<Query> = (0..6).map(|_| query(&live, &mut rng)).collect();
    let answer = |table: &Table| reference_pass(table, &queries).unwrap();
    let mut past = vec![answer(&live)];
    for changes in random_batches(12, 5) {
        update(&mut epochs, &mut live, changes).unwrap();
        past.push(answer(&live));
    }
    let now = answer(&live);
    let history = epochs.history();
    assert_eq!((history.current(), history.oldest()), (12, 4));
    for epoch in 4..=12 {
        let diffs = history.between(epoch, 12).unwrap();
        for (q, query) in queries.iter().enumerate() {
            let mut rewound = now.query(q).to_vec();
            rewind(live.layout(), &query.keys, &mut rewound, &diffs).unwrap();
            assert!(rewound == past[epoch as usize].query(q), "epoch {epoch}, query {q}");
        }
    }
    assert_eq!(history.between(3, 12).unwrap_err(), Unavailable::TooOld { wanted: 3, oldest: 4 });
    assert_eq!(history.between(13, 13).unwrap_err(), Unavailable::Ahead { wanted: 13, current: 12 });
}

#[test]
fn a_swapped_in_snapshot_starts_at_its_sequence_number_with_a_fresh_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.log");
    let mut old = table(200);
    let mut epochs = open(&mut old, dir.path());
    update(&mut epochs, &mut old, vec![Change::set(b"key1", b"old")]).unwrap();
    assert!(epochs.log_len() > morphogen_epochs::LOG_HEADER_LEN as u64);

    // The same log path reused for a new snapshot swapped in at 42: its
    // earlier records are gone, and epochs go on from the swap.
    let mut new = table(150);
    let mut swapped = Epochs::create(&new, &path, 42, DEFAULT_WINDOW).unwrap();
    assert_eq!((swapped.base(), swapped.epoch()), (42, 42));
    assert_eq!(swapped.digest(), new.digest(), "the swap's epoch has the snapshot's digest");
    assert_eq!(swapped.history().oldest(), 42);
    // Batch 43 follows the swap at 42.
    update(&mut swapped, &mut new, vec![Change::set(b"key1", b"new")]).unwrap();
    // Another batch 43 is not the one applied; batch 42 is the swap itself.
    assert!(matches!(
        swapped.plan(&new, Batch { sequence: 43, changes: vec![], label: None }),
        Err(Error::OtherBatchApplied { epoch: 43 })
    ));
    assert!(matches!(
        swapped.plan(&new, Batch { sequence: 42, changes: vec![], label: None }),
        Err(Error::Sequence { expected: 44, actual: 42 })
    ));
    // The same batch 43 again is known as applied.
    let again = Batch { sequence: 43, changes: vec![Change::set(b"key1", b"new")], label: None };
    assert!(matches!(swapped.plan(&new, again), Err(Error::AlreadyApplied { epoch: 43, .. })));
    let digest = swapped.digest();
    drop(swapped);

    let mut restarted = table(150);
    let (reopened, replayed) = Epochs::open(&mut restarted, &path, DEFAULT_WINDOW).unwrap();
    assert_eq!((reopened.base(), reopened.epoch(), replayed.batches), (42, 43, 1));
    assert_eq!(reopened.digest(), digest);
}

#[test]
fn the_snapshot_pointer_names_plain_files_and_is_replaced_whole() {
    use morphogen_epochs::{POINTER_FILE, Pointer, SnapshotDir, log_path};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.mgdb"), b"x").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let snapshots = SnapshotDir::new(dir.path()).unwrap();
    assert_eq!(snapshots.file("b.mgdb").unwrap(), dir.path().join("b.mgdb"));
    for bad in
        ["", "../b.mgdb", "sub/b.mgdb", "/etc/passwd", ".hidden", "..", "sub", POINTER_FILE, "none.mgdb"]
    {
        assert!(snapshots.file(bad).is_err(), "{bad:?} is refused");
    }
    assert!(SnapshotDir::new(&dir.path().join("b.mgdb")).is_err(), "a file is not a directory");
    assert_eq!(log_path(Path::new("x/b.mgdb")), Path::new("x/b.mgdb.log"));

    assert_eq!(snapshots.current().unwrap(), None);
    let first = Pointer { file: "b.mgdb".to_string(), digest: "ab".repeat(32), epoch: 7 };
    snapshots.set_current(&first).unwrap();
    assert_eq!(snapshots.current().unwrap(), Some(first));
    let second = Pointer { file: "c.mgdb".to_string(), digest: "cd".repeat(32), epoch: 9 };
    snapshots.set_current(&second).unwrap();
    assert_eq!(snapshots.current().unwrap(), Some(second));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "no staging file is left behind: {names:?}");

    std::fs::write(dir.path().join(POINTER_FILE), b"{\"file\": 3").unwrap();
    let error = snapshots.current().unwrap_err().to_string();
    assert!(error.contains("not a snapshot pointer"), "{error}");
}

#[test]
fn a_snapshot_at_the_last_epoch_there_is_takes_no_batch() {
    // Found by the decoder suite: a log naming this first epoch made the
    // next sequence number overflow.
    let dir = tempfile::tempdir().unwrap();
    let table = table(50);
    let epochs = Epochs::create(&table, &dir.path().join("table.log"), u64::MAX, DEFAULT_WINDOW).unwrap();
    let batch = Batch { sequence: 0, changes: vec![Change::set(b"key1", b"x")], label: None };
    assert!(matches!(epochs.plan(&table, batch), Err(Error::EpochsExhausted)));
}

#[test]
fn a_batch_rewriting_more_pages_than_the_bound_is_refused_but_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.log");
    let mut live = table(200);
    let mut epochs = open(&mut live, dir.path());
    let many: Vec<Change> = (0..40).map(|i| Change::set(format!("key{i}").as_bytes(), b"new")).collect();
    update(&mut epochs, &mut live, many.clone()).unwrap();
    let pages = epochs
        .history()
        .epoch(1)
        .unwrap()
        .rows
        .iter()
        .map(|r| r.page)
        .collect::<std::collections::BTreeSet<_>>();
    assert!(pages.len() > 4, "the batch touches {} pages", pages.len());
    drop(epochs);

    // Reopened with room for 4 pages a batch: the logged batch replays...
    let bounds = morphogen_epochs::Bounds { batch_bytes: 4 * 512, ..morphogen_epochs::Bounds::default() };
    let mut restarted = table(200);
    let (mut reopened, replayed) =
        Epochs::open_with(&mut restarted, &path, bounds, morphogen_epochs::Tail::Refuse).unwrap();
    assert_eq!((replayed.batches, restarted.pages()), (1, live.pages()));
    // ...but a new batch as large is refused, and changes nothing.
    let error = update(&mut reopened, &mut restarted, many).unwrap_err();
    assert!(matches!(error, Error::BatchPages { max_pages: 4, max_bytes: 2048 }), "{error}");
    assert_eq!((reopened.epoch(), restarted.pages()), (1, live.pages()));
    update(&mut reopened, &mut restarted, vec![Change::set(b"key1", b"small")]).unwrap();
}

#[test]
fn the_history_forgets_its_oldest_epochs_at_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = table(200);
    let one_batch = {
        let mut probe = table(200);
        let probe_dir = tempfile::tempdir().unwrap();
        let mut epochs = open(&mut probe, probe_dir.path());
        update(
            &mut epochs,
            &mut probe,
            (0..10).map(|i| Change::set(format!("key{i}").as_bytes(), b"x")).collect(),
        )
        .unwrap();
        epochs.history().bytes()
    };
    // Room for about three such epochs in a window of 100.
    let bounds = morphogen_epochs::Bounds {
        window: 100,
        history_bytes: 3 * one_batch + one_batch / 2,
        ..Default::default()
    };
    let (mut epochs, _) =
        Epochs::open_with(&mut live, &dir.path().join("table.log"), bounds, morphogen_epochs::Tail::Refuse)
            .unwrap();
    for round in 0..8u8 {
        let changes = (0..10).map(|i| Change::set(format!("key{i}").as_bytes(), &[round; 3])).collect();
        update(&mut epochs, &mut live, changes).unwrap();
        assert!(epochs.history().bytes() <= bounds.history_bytes, "round {round}");
    }
    assert_eq!(epochs.history().kept(), 3);
    assert_eq!(epochs.history().oldest(), 5);
    assert_eq!(epochs.forgotten_for_bytes(), 5);
    assert!(matches!(epochs.history().between(4, 8), Err(Unavailable::TooOld { oldest: 5, .. })));
}

#[test]
fn a_label_is_part_of_the_epoch_digest_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let digest = |label: Option<&[u8]>| {
        let mut table = table(10);
        let mut epochs = Epochs::create(&table, &dir.path().join("digest.log"), 0, DEFAULT_WINDOW).unwrap();
        let batch = Batch {
            sequence: 1,
            changes: vec![Change::set(b"key1", b"x")],
            label: label.map(<[u8]>::to_vec),
        };
        let writes = epochs.commit(epochs.plan(&table, batch).unwrap()).unwrap();
        table.apply(&writes).unwrap();
        epochs.digest()
    };
    let (none, empty, one) = (digest(None), digest(Some(b"")), digest(Some(b"block 1")));
    assert!(none != empty && empty != one && none != one, "each label makes another epoch");
    assert_eq!(one, digest(Some(b"block 1")));

    let mut table = table(10);
    let epochs = open(&mut table, dir.path());
    let long = vec![b'x'; morphogen_epochs::MAX_LABEL_LEN + 1];
    let batch = Batch { sequence: 1, changes: vec![], label: Some(long) };
    assert!(matches!(epochs.plan(&table, batch), Err(Error::LabelTooLong { len: 4097 })));
}

#[test]
fn a_revert_takes_every_record_back_to_its_epoch_and_is_the_same_batch_when_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table(200);
    let mut epochs = open(&mut table, dir.path());
    let keys: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("key{i}").into_bytes())
        .chain((0..6).map(|i| format!("new{i}").into_bytes()))
        .collect();
    let values = |table: &Table| -> Vec<Option<Vec<u8>>> {
        keys.iter().map(|key| table.get(key).map(<[u8]>::to_vec)).collect()
    };
    let mut at = vec![values(&table)];
    for changes in random_batches(12, 9) {
        update(&mut epochs, &mut table, changes).unwrap();
        at.push(values(&table));
    }
    // Back to epoch 4, as epoch 13.
    let revert = epochs.revert_batch(4, 13, Some(b"back".to_vec())).unwrap();
    let plan = epochs.plan(&table, revert.clone()).unwrap();
    let writes = epochs.commit(plan).unwrap();
    table.apply(&writes).unwrap();
    table.set_records(epochs.records());
    assert_eq!(values(&table), at[4]);
    assert_eq!(epochs.records(), at[4].iter().filter(|value| value.is_some()).count() as u64);
    // The same revert asked for again is the batch applied.
    let again = epochs.revert_batch(4, 13, Some(b"back".to_vec())).unwrap();
    assert_eq!(again, revert);
    assert!(matches!(epochs.plan(&table, again), Err(Error::AlreadyApplied { epoch: 13, .. })));
    // And a revert of a revert goes forward again.
    update(&mut epochs, &mut table, Vec::new()).unwrap();
    let forward = epochs.revert_batch(12, 15, None).unwrap();
    let plan = epochs.plan(&table, forward).unwrap();
    table.apply(&epochs.commit(plan).unwrap()).unwrap();
    assert_eq!(values(&table), at[12]);

    assert!(matches!(epochs.revert_batch(4, 17, None), Err(Error::RevertRange { .. })));
    assert!(matches!(epochs.revert_batch(16, 16, None), Err(Error::RevertRange { .. })));
    let mut short = table.clone();
    let dir = tempfile::tempdir().unwrap();
    let (mut windowed, _) = Epochs::open(&mut short, &dir.path().join("short.log"), 2).unwrap();
    for changes in random_batches(4, 3) {
        update(&mut windowed, &mut short, changes).unwrap();
    }
    assert!(matches!(windowed.revert_batch(1, 5, None), Err(Error::RevertTooOld { to: 1, oldest: 2 })));
}

#[test]
fn a_full_table_grows_into_a_larger_one_with_the_batch_that_did_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..200).map(|i| (format!("key{i}").into_bytes(), format!("value{i}").into_bytes())).collect();
    let base_keys: Vec<KeyDigest> = records.iter().map(|(key, _)| KeyDigest::of(key)).collect();
    let mut table = table(200);
    let original = table.clone();
    let log = dir.path().join("table.log");
    let mut epochs = open(&mut table, dir.path());
    update(&mut epochs, &mut table, vec![Change::set(b"key1", b"changed"), Change::delete(b"key2")]).unwrap();
    update(&mut epochs, &mut table, vec![Change::set(b"added", b"later"), Change::delete(b"key3")]).unwrap();

    // What a server replays from a copy of its snapshot while it serves.
    let mut copy = original.clone();
    let (epoch, changed) = Epochs::replay_read_only(&mut copy, &log).unwrap();
    assert_eq!(epoch, 2);
    assert_eq!(copy.pages(), table.pages());
    assert_eq!(changed.len(), 4);
    assert_eq!(epochs.log_len(), std::fs::metadata(&log).unwrap().len(), "the log is unchanged");

    // A batch that does not fit.
    let full: Vec<Change> = (0..table.layout().capacity())
        .map(|i| Change::set(format!("new{i}").as_bytes(), b"v"))
        .chain([Change::delete(b"key4"), Change::set(b"key5", b"set in the batch")])
        .collect();
    assert!(matches!(
        epochs.plan(&table, Batch { sequence: 3, changes: full.clone(), label: None }),
        Err(Error::TableFull { .. })
    ));
    let keys: Vec<KeyDigest> = base_keys.iter().copied().chain(changed.iter().copied()).collect();
    let pages = table.layout().pages_per_table() * 4;
    let grown = grown_table(&copy, keys.clone(), &full, pages, &NoProgress).unwrap();
    assert!(grown.table.layout().pages_per_table() >= pages);
    let value =
        |table: &Table, key: &[u8]| table.get(key).map(|v| v.iter().rev().skip_while(|&&b| b == 0).count());
    assert_eq!(&grown.table.get(b"key1").unwrap()[..7], b"changed");
    assert_eq!(&grown.table.get(b"key5").unwrap()[..16], b"set in the batch");
    assert_eq!(&grown.table.get(b"added").unwrap()[..5], b"later");
    assert_eq!(&grown.table.get(b"key6").unwrap()[..6], b"value6");
    for gone in [&b"key2"[..], b"key3", b"key4", b"never"] {
        assert_eq!(value(&grown.table, gone), None);
    }
    for i in 0..table.layout().capacity() {
        assert_eq!(&grown.table.get(format!("new{i}").as_bytes()).unwrap()[..1], b"v");
    }
    let expected_records = 200 - 3 + 1 + table.layout().capacity();
    assert_eq!(grown.table.records(), expected_records);
    assert_eq!(grown.keys.len() as u64, expected_records);
    assert!(grown.keys.windows(2).all(|pair| pair[0] < pair[1]));
    // Another server, the same inputs in another order: the same bytes.
    let mut shuffled = keys;
    shuffled.reverse();
    let again = grown_table(&copy, shuffled, &full, pages, &NoProgress).unwrap();
    assert_eq!(again.table.pages(), grown.table.pages());
    assert_eq!(again.table.digest(), grown.table.digest());
}
