//! The frozen table (`tests/data`, written by `examples/frozen_table.rs`):
//! a change to the file format or the builder breaks this test instead of
//! silently changing the bytes that servers serve.

use std::path::{Path, PathBuf};

use morphogen_table::{BuildOptions, CsvFile, NoProgress, RecordSource, Table, Verify, build};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[test]
fn the_frozen_csv_builds_into_the_frozen_file_byte_for_byte() {
    let options = BuildOptions {
        page_size: 512,
        value_size: Some(8),
        choices: 2,
        seed: Some([7; 16]),
        headroom_percent: 0,
        min_capacity: 0,
        pages_per_table: None,
    };
    let table = build(&CsvFile::new(&data("two-pages.csv")), &options, &NoProgress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("two-pages.mgdb");
    table.write(&written).unwrap();
    assert_eq!(std::fs::read(&written).unwrap(), std::fs::read(data("two-pages.mgdb")).unwrap());
}

#[test]
fn the_frozen_file_opens_and_holds_every_record_of_its_csv() {
    let table = Table::open(&data("two-pages.mgdb"), Verify::Digest, &NoProgress).unwrap();
    assert_eq!((table.layout().total_pages(), table.layout().page_size(), table.records()), (2, 512, 12));
    let mut records = 0;
    CsvFile::new(&data("two-pages.csv"))
        .for_each_record(&mut |record| {
            assert_eq!(table.get(record.key), Some(record.value), "line {}", record.line);
            records += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(records, 12);
}
