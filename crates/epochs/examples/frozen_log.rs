//! Writes the frozen update logs of `tests/frozen.rs`, over the frozen table
//! of `morphogen-table` (`tests/data/two-pages.mgdb` there): three batches
//! as `tests/data/three-batches.log`, one labelled batch as
//! `tests/data/labelled-batch.log`, and each epoch's digest, one a line, as
//! `tests/data/*.digests`.
//!
//! Run only when the log format, placement or the digest chain changes on
//! purpose: `cargo run -p morphogen-epochs --example frozen_log`

use std::path::Path;

use morphogen_epochs::{Batch, Change, Epochs};
use morphogen_table::{NoProgress, Table, Verify};

/// The three batches: a changed value and a new key; a deletion; a changed
/// value and the deletion of a key the table does not hold.
fn batches() -> Vec<Batch> {
    let key = |i: u32| i.to_be_bytes();
    vec![
        Batch {
            sequence: 1,
            changes: vec![Change::set(&key(1), &[0xa1; 8]), Change::set(&key(13), &[0xd1; 5])],
            label: None,
        },
        Batch { sequence: 2, changes: vec![Change::delete(&key(2))], label: None },
        Batch {
            sequence: 3,
            changes: vec![Change::set(&key(3), &[0xc3; 8]), Change::delete(&key(99))],
            label: None,
        },
    ]
}

/// A labelled batch (the format of a record with a label, and the label
/// in the epoch digest), written as a log of its own.
fn labelled() -> Batch {
    let label = br#"{"block":"0x10","hash":"0xab"}"#.to_vec();
    Batch { sequence: 1, changes: vec![Change::set(&5u32.to_be_bytes(), &[0xe5; 8])], label: Some(label) }
}

/// Writes `batches` as the log `name.log` over the frozen table, and each
/// epoch's digest into `name.digests`.
fn write(name: &str, batches: Vec<Batch>) -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut table =
        Table::open(&root.join("../table/tests/data/two-pages.mgdb"), Verify::Digest, &NoProgress)?;
    let data = root.join("tests/data");
    let mut epochs = Epochs::create(&table, &data.join(format!("{name}.log")), 0, 16)?;
    let mut digests = String::new();
    for batch in batches {
        let plan = epochs.plan(&table, batch)?;
        let writes = epochs.commit(plan)?;
        table.apply(&writes)?;
        table.set_records(epochs.records());
        digests += &format!("{} {}\n", epochs.epoch(), hex::encode(epochs.digest()));
    }
    std::fs::write(data.join(format!("{name}.digests")), &digests)?;
    print!("{name}:\n{digests}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    write("three-batches", batches())?;
    write("labelled-batch", vec![labelled()])
}
