//! Writes the frozen table of `tests/frozen.rs`: `tests/data/two-pages.csv`
//! built into `tests/data/two-pages.mgdb`, a table of two 512-byte pages.
//!
//! Run only when the file format or the builder changes on purpose:
//! `cargo run -p morphogen-table --example frozen_table`

use std::path::Path;

use morphogen_table::{BuildOptions, CsvFile, NoProgress, build};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let options = BuildOptions {
        page_size: 512,
        value_size: Some(8),
        choices: 2,
        seed: Some([7; 16]),
        headroom_percent: 0,
        min_capacity: 0,
        pages_per_table: None,
    };
    let table = build(&CsvFile::new(&data.join("two-pages.csv")), &options, &NoProgress)?;
    table.write(&data.join("two-pages.mgdb"))?;
    println!("wrote {} pages, digest {}", table.layout().total_pages(), hex::encode(table.digest()));
    Ok(())
}
