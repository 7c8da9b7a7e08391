//! The `.mgdb` file: round trip, atomic writes, and refusal of every kind of
//! damaged file with an error that says what is wrong.

use std::fs;
use std::path::{Path, PathBuf};

use morphogen_table::{BuildOptions, Error, HEADER_LEN, NoProgress, Table, Verify, build};

fn table() -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0u32..3000).map(|i| (i.to_le_bytes().to_vec(), (i * 7).to_le_bytes().to_vec())).collect();
    build(records.as_slice(), &BuildOptions { page_size: 1024, ..BuildOptions::default() }, &NoProgress)
        .unwrap()
}

/// A written table file in a fresh directory.
fn written() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.mgdb");
    table().write(&path).unwrap();
    (dir, path)
}

fn open(path: &Path) -> Result<Table, Error> {
    Table::open(path, Verify::Digest, &NoProgress)
}

/// Changes header bytes and recomputes the header checksum, so that the
/// check under test is the one that fires.
fn patch_header(path: &Path, at: usize, bytes: &[u8]) {
    let mut file = fs::read(path).unwrap();
    file[at..at + bytes.len()].copy_from_slice(bytes);
    let checksum = *blake3::hash(&file[..96]).as_bytes();
    file[96..128].copy_from_slice(&checksum);
    fs::write(path, file).unwrap();
}

fn problem(err: Error) -> String {
    match err {
        Error::InvalidHeader { problem, .. } => problem,
        other => panic!("expected an invalid header, got {other:?}"),
    }
}

#[test]
fn a_written_table_opens_identical() {
    let original = table();
    let (_dir, path) = written();
    let opened = open(&path).unwrap();
    assert_eq!(opened.pages(), original.pages());
    assert_eq!(opened.digest(), original.digest());
    assert_eq!(opened.records(), 3000);
    assert_eq!(opened.layout().seed(), original.layout().seed());
    assert_eq!(opened.get(&5u32.to_le_bytes()).unwrap(), 35u32.to_le_bytes());
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, HEADER_LEN + original.pages().len());
}

#[test]
fn a_generated_table_starts_on_a_page_boundary_and_equals_one_built_in_a_vec() {
    let original = table();
    let mut generated = Table::generate(original.layout().clone(), original.records(), |pages| {
        assert!(pages.iter().all(|&b| b == 0), "generate hands out zeroed pages");
        pages.copy_from_slice(original.pages());
    })
    .unwrap();
    assert_eq!(generated.pages().as_ptr() as usize % 4096, 0);
    assert_eq!(generated.pages(), original.pages());
    assert_eq!(generated.digest(), original.digest());
    // Its pages take updates like any table's.
    let page_size = original.layout().page_size() as usize;
    let write = morphogen_table::PageWrite { index: 1, bytes: vec![0xA5; page_size] };
    generated.apply(&[write]).unwrap();
    assert_eq!(generated.page_at(1), vec![0xA5; page_size]);
    assert_eq!(generated.page_at(0), original.page_at(0));
}

#[test]
fn writing_leaves_no_temporary_file_and_replaces_an_old_table() {
    let (dir, path) = written();
    table().write(&path).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["t.mgdb"]);
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let err = table().write(&dir.path().join("missing").join("t.mgdb")).unwrap_err();
    assert!(matches!(err, Error::Io { action: "create", .. }), "{err:?}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn rejects_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(&dir.path().join("none.mgdb")).unwrap_err();
    assert!(matches!(err, Error::Io { action: "open", kind: std::io::ErrorKind::NotFound, .. }), "{err:?}");
}

#[test]
fn rejects_a_truncated_file() {
    let (_dir, path) = written();
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 1).unwrap();
    let err = open(&path).unwrap_err();
    assert!(
        matches!(err, Error::FileLength { expected, actual, .. } if expected == len && actual == len - 1)
    );
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn rejects_a_file_shorter_than_a_header() {
    let (_dir, path) = written();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
    assert!(matches!(open(&path).unwrap_err(), Error::FileLength { actual: 100, .. }));
}

#[test]
fn rejects_a_file_with_extra_bytes() {
    let (_dir, path) = written();
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len + 4096).unwrap();
    assert!(matches!(open(&path).unwrap_err(), Error::FileLength { .. }));
}

#[test]
fn rejects_a_corrupt_page_unless_trusted() {
    let (_dir, path) = written();
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER_LEN + 777] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(matches!(open(&path).unwrap_err(), Error::DigestMismatch { .. }));
    // Trusting skips the hash: the caller vouches for the file.
    assert!(Table::open(&path, Verify::Trust, &NoProgress).is_ok());
}

#[test]
fn rejects_a_corrupt_header() {
    let (_dir, path) = written();
    let mut bytes = fs::read(&path).unwrap();
    bytes[50] ^= 1; // a bit of the seed
    fs::write(&path, bytes).unwrap();
    assert!(problem(open(&path).unwrap_err()).contains("header checksum"));
}

#[test]
fn rejects_a_file_that_is_not_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    fs::write(&path, vec![b'x'; 10_000]).unwrap();
    assert!(problem(open(&path).unwrap_err()).contains("not a morphogen table"));
}

#[test]
fn rejects_an_unknown_format_version() {
    let (_dir, path) = written();
    patch_header(&path, 8, &2u32.to_le_bytes());
    assert!(problem(open(&path).unwrap_err()).contains("format version 2 is not supported"));
}

#[test]
fn rejects_nonzero_reserved_bytes() {
    let (_dir, path) = written();
    patch_header(&path, 26, &[1]);
    assert!(problem(open(&path).unwrap_err()).contains("reserved"));
}

#[test]
fn rejects_invalid_parameters_in_the_header() {
    let (_dir, path) = written();
    patch_header(&path, 16, &1000u32.to_le_bytes());
    assert!(problem(open(&path).unwrap_err()).contains("page size 1000"));
}

#[test]
fn rejects_more_records_than_rows() {
    let (_dir, path) = written();
    patch_header(&path, 40, &u64::MAX.to_le_bytes());
    assert!(problem(open(&path).unwrap_err()).contains("claims"));
}
