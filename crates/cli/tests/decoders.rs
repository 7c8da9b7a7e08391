//! Every decoder of untrusted bytes, fed arbitrary and mutated input: the
//! wire protocol (requests and answers), DPF keys, `.mgdb` files, update
//! logs, CSV record files and admin request bodies. Each must return (an
//! error or a value) without panicking, and allocate no more than its input
//! justifies.
//!
//! The allocation check counts every byte the process allocates while one
//! input is decoded, so this binary holds a single test: nothing else may
//! allocate meanwhile.

use std::path::Path;

use morphogen_dpf::{Key, generate};
use morphogen_epochs::{Batch, Change, Epochs};
use morphogen_protocol::{Epoch, Request, Response, SnapshotRequest, UpdateRequest};
use morphogen_table::{BuildOptions, CsvFile, MAX_KEY_LEN, NoProgress, RecordSource, Table, Verify, build};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::SeedableRng;
use rand::rngs::StdRng;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Inputs per decoder.
const CASES: u32 = 100_000;

/// Bytes a decoder may allocate beyond 64 per input byte: fixed buffers
/// (the CSV and log readers' 1 MiB each) and small bookkeeping.
const FIXED_ALLOWANCE: usize = 4 << 20;

/// Runs `decode` on `CASES` inputs from `inputs`, failing on a panic or on
/// an allocation beyond the bound.
fn check(name: &str, inputs: impl Strategy<Value = Vec<u8>>, decode: impl Fn(&[u8])) {
    let config = Config { cases: CASES, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&inputs, |input| {
        let region = Region::new(ALLOCATOR);
        decode(&input);
        let change = region.change();
        let allocated = change.bytes_allocated + change.bytes_reallocated.max(0) as usize;
        let bound = 64 * input.len() + FIXED_ALLOWANCE;
        if allocated > bound {
            return Err(TestCaseError::fail(format!(
                "allocated {allocated} bytes for {} input bytes (bound {bound})",
                input.len()
            )));
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{name}: {error}");
    }
    eprintln!("{name}: {CASES} inputs in {:.1} s", started.elapsed().as_secs_f64());
}

/// Arbitrary bytes, or `valid` with a few bytes overwritten, a run of
/// bytes set to 0xff (huge lengths and counts), and a cut at a random point.
fn around(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    let mutated = (
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        proptest::option::of((any::<prop::sample::Index>(), 1usize..9)),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(move |(flips, saturate, cut)| {
            let mut bytes = valid.clone();
            for (index, value) in flips {
                let i = index.index(bytes.len());
                bytes[i] = value;
            }
            if let Some((index, run)) = saturate {
                let start = index.index(bytes.len());
                let end = (start + run).min(bytes.len());
                bytes[start..end].fill(0xff);
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        });
    // Arbitrary bytes test the first checks of a decoder: short inputs do.
    prop_oneof![1 => proptest::collection::vec(any::<u8>(), 0..len.clamp(64, 512)), 3 => mutated]
}

/// A batch of `queries` queries of `choices` keys over `domain` points.
fn queries(queries: usize, choices: usize, domain: u64) -> Vec<Vec<Key>> {
    let mut rng = StdRng::seed_from_u64(1);
    (0..queries)
        .map(|q| {
            (0..choices).map(|c| generate(domain, (q * 7 + c) as u64 % domain, &mut rng).unwrap().0).collect()
        })
        .collect()
}

/// A small table: 300 records in 512-byte pages.
fn table() -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..300u32).map(|i| (i.to_le_bytes().to_vec(), (i * 3).to_le_bytes().to_vec())).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(8), choices: 2, ..Default::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

/// The bytes of an update log of `table` holding three batches.
fn update_log(table: &Table, dir: &Path) -> Vec<u8> {
    let path = dir.join("valid.log");
    let mut table = table.clone();
    let (mut epochs, _) = Epochs::open(&mut table, &path, 16).unwrap();
    for sequence in 1..=3u64 {
        let changes = vec![
            Change::set(&(sequence as u32).to_le_bytes(), b"changed"),
            Change::delete(&(sequence as u32 + 100).to_le_bytes()),
            Change::set(b"new key", &sequence.to_le_bytes()),
        ];
        let plan = epochs.plan(&table, Batch { sequence, changes, label: None }).unwrap();
        table.apply(&epochs.commit(plan).unwrap()).unwrap();
    }
    std::fs::read(&path).unwrap()
}

/// A table file with its header checksum (bytes 96..128: BLAKE3 of bytes
/// 0..96, docs/FORMAT.md) recomputed.
fn resealed_table(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    if bytes.len() >= 128 {
        let checksum = blake3::hash(&bytes[..96]);
        bytes[96..128].copy_from_slice(checksum.as_bytes());
    }
    bytes
}

/// An update log with its header checksum and the checksum of every
/// record whose length fields still hold recomputed (docs/OPERATIONS.md).
fn resealed_log(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    if bytes.len() < 64 {
        return bytes;
    }
    let checksum = blake3::hash(&bytes[..56]);
    bytes[56..64].copy_from_slice(&checksum.as_bytes()[..8]);
    let mut offset = 64;
    while offset + 24 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
        let check = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
        let end = offset + 24 + len as usize;
        if check != !len || end > bytes.len() {
            break;
        }
        let checksum = blake3::hash(&bytes[offset + 24..end]);
        bytes[offset + 8..offset + 24].copy_from_slice(&checksum.as_bytes()[..16]);
        offset = end;
    }
    bytes
}

#[test]
fn decoders_return_errors_for_bad_input_without_panics_or_unbounded_allocation() {
    let request = Request { epoch: Epoch::Exact(5), queries: queries(3, 2, 5000) }.encode().unwrap();
    check("query request", around(request), |bytes| {
        let _ = Request::decode(bytes, 64);
    });

    let pages: Vec<u8> = (0..2 * 2 * 512).map(|i| i as u8).collect();
    let response = Response::encode(9, 2, 512, &pages).unwrap();
    check("query answer", around(response), |bytes| {
        let _ = Response::decode(bytes);
    });

    let key = queries(1, 1, 1 << 20).remove(0).remove(0).to_bytes();
    check("DPF key", around(key), |bytes| {
        let _ = Key::from_bytes(bytes);
    });

    // Files in memory where the system has such a place: 400,000 of them
    // are written and read back.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let table = table();
    let path = dir.path().join("t.mgdb");
    table.write(&path).unwrap();
    let file = std::fs::read(&path).unwrap();
    check("table file", around(file), |bytes| {
        // As mutated, and with the header checksum made to match again, so
        // that the parameters behind it are read too.
        for bytes in [bytes.to_vec(), resealed_table(bytes)] {
            std::fs::write(&path, bytes).unwrap();
            let _ = Table::open(&path, Verify::Digest, &NoProgress);
        }
    });

    let log = update_log(&table, dir.path());
    let log_path = dir.path().join("fuzzed.log");
    check("update log", around(log), |bytes| {
        // As mutated, and with its checksums made to match again, so that
        // the records' contents are decoded too.
        for bytes in [bytes.to_vec(), resealed_log(bytes)] {
            std::fs::write(&log_path, bytes).unwrap();
            let mut copy = table.clone();
            let _ = Epochs::open(&mut copy, &log_path, 16);
        }
    });

    let csv = b"key,value\n0x00ab,1234\n  cdef , \n0001,ffffffffffffffff\n".to_vec();
    let csv_path = dir.path().join("in.csv");
    check("CSV records", around(csv), |bytes| {
        std::fs::write(&csv_path, bytes).unwrap();
        let _ = CsvFile::new(&csv_path).for_each_record(&mut |_| Ok(()));
    });

    let update =
        br#"{"sequence": 7, "changes": [{"key": "00ab", "value": "1f2e"}, {"key": "cd", "value": null}]}"#;
    check("admin update batch", around(update.to_vec()), |bytes| {
        if let Ok(request) = serde_json::from_slice::<UpdateRequest>(bytes) {
            for change in &request.changes {
                let _ = change.decode(MAX_KEY_LEN);
            }
        }
        let _ = serde_json::from_slice::<SnapshotRequest>(bytes);
    });
}
