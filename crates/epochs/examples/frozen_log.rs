//! Writes the frozen update log of `tests/frozen.rs`: three batches applied
//! to the frozen table of `morphogen-table` (`tests/data/two-pages.mgdb`
//! there), as `tests/data/three-batches.log`, and each epoch's digest, one
//! a line, as `tests/data/three-batches.digests`.
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
        },
        Batch { sequence: 2, changes: vec![Change::delete(&key(2))] },
        Batch { sequence: 3, changes: vec![Change::set(&key(3), &[0xc3; 8]), Change::delete(&key(99))] },
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut table =
        Table::open(&root.join("../table/tests/data/two-pages.mgdb"), Verify::Digest, &NoProgress)?;
    let data = root.join("tests/data");
    let mut epochs = Epochs::create(&table, &data.join("three-batches.log"), 0, 16)?;
    let mut digests = String::new();
    for batch in batches() {
        let plan = epochs.plan(&table, batch)?;
        let writes = epochs.commit(plan)?;
        table.apply(&writes)?;
        table.set_records(epochs.records());
        digests += &format!("{} {}\n", epochs.epoch(), hex::encode(epochs.digest()));
    }
    std::fs::write(data.join("three-batches.digests"), &digests)?;
    print!("{digests}");
    Ok(())
}
