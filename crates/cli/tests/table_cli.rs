//! `morphogen build` and `inspect` from the outside: real files, real
//! processes, exit codes and messages.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use morphogen_table::{NoProgress, Table, Verify};

fn morphogen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_morphogen")).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Builds `csv` into `dir/t.mgdb`; returns the process output.
fn build_csv(dir: &Path, csv: &str, extra: &[&str]) -> Output {
    let input = dir.join("in.csv");
    fs::write(&input, csv).unwrap();
    let output = dir.join("t.mgdb");
    let mut args = vec!["build", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()];
    args.extend_from_slice(extra);
    morphogen(&args)
}

/// Asserts the build failed with `message` and left no table or temporary file.
fn assert_refused(dir: &Path, csv: &str, extra: &[&str], message: &str) {
    let output = build_csv(dir, csv, extra);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(message), "expected {message:?} in: {}", stderr(&output));
    let names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["in.csv"], "nothing but the input may remain");
}

#[test]
fn builds_a_csv_and_every_record_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "key,value\n0x01,0xaabb\n02,cc\n  0X0304 , 0xDDEEFF \n05,\n";
    let output = build_csv(dir.path(), csv, &["--page-size", "512"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = Table::open(&dir.path().join("t.mgdb"), Verify::Digest, &NoProgress).unwrap();
    assert_eq!(table.layout().value_size(), 3);
    assert_eq!(table.get(&[1]).unwrap(), [0xaa, 0xbb, 0]);
    assert_eq!(table.get(&[2]).unwrap(), [0xcc, 0, 0]);
    assert_eq!(table.get(&[3, 4]).unwrap(), [0xdd, 0xee, 0xff]);
    assert_eq!(table.get(&[5]).unwrap(), [0, 0, 0]);
    assert_eq!(table.get(&[6]), None);
}

#[test]
fn accepts_crlf_line_ends_and_spaced_header_names() {
    let dir = tempfile::tempdir().unwrap();
    let output = build_csv(dir.path(), " key , value \r\n0a,0b\r\n0c,0d\r\n", &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = Table::open(&dir.path().join("t.mgdb"), Verify::Digest, &NoProgress).unwrap();
    assert_eq!((table.get(&[0x0a]).unwrap(), table.get(&[0x0c]).unwrap()), (&[0x0b][..], &[0x0d][..]));
}

#[test]
fn shuffled_inputs_build_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0u32..2000).map(|i| format!("{:08x},{:04x}\n", i * 7919, i)).collect();
    let forward = format!("key,value\n{}", lines.concat());
    let backward = format!("key,value\n{}", lines.iter().rev().cloned().collect::<String>());
    assert!(build_csv(dir.path(), &forward, &[]).status.success());
    let first = fs::read(dir.path().join("t.mgdb")).unwrap();
    assert!(build_csv(dir.path(), &backward, &[]).status.success());
    assert!(first == fs::read(dir.path().join("t.mgdb")).unwrap(), "files differ");
}

#[test]
fn inspect_reports_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mgdb");
    let built = morphogen(&["build", "--synthetic", "5000", "--output", path.to_str().unwrap()]);
    assert!(built.status.success(), "{}", stderr(&built));
    let output = morphogen(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["records"], 5000);
    assert_eq!(json["value_size"], 32);
    assert_eq!(json["choices"], 2);
    assert_eq!(json["digest_verified"], true);
    let load = json["load_factor"].as_f64().unwrap();
    assert!(load > 0.5 && load <= 1.0, "{load}");
    let text = morphogen(&["inspect", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("records       5000"));
}

#[test]
fn inspect_refuses_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mgdb");
    assert!(morphogen(&["build", "--synthetic", "100", "--output", path.to_str().unwrap()]).status.success());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let output = morphogen(&["inspect", path.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("do not match the digest"), "{}", stderr(&output));
}

#[test]
fn rejects_a_missing_header() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), "01,02\n", &[], "line 1: the first line must be the header `key,value`");
}

#[test]
fn rejects_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), "", &[], "the file is empty");
}

#[test]
fn rejects_fields_that_are_not_hex_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), "key,value\n01,02\n0xzz,03\n", &[], "line 3: key is not hex");
    assert_refused(dir.path(), "key,value\n01,0x123\n", &[], "line 2: value has an odd number of hex digits");
}

#[test]
fn rejects_a_wrong_number_of_fields() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        "key,value\n01,02,03\n",
        &[],
        "line 2: expected 2 fields (key,value), found 3",
    );
}

#[test]
fn rejects_a_key_longer_than_64_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = format!("key,value\n01,02\n{},02\n", "ab".repeat(65));
    assert_refused(dir.path(), &csv, &[], "line 3: key is 65 bytes, keys must be 1 to 64 bytes");
}

#[test]
fn rejects_a_value_longer_than_the_value_size() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        "key,value\n01,0102\n02,010203\n",
        &["--value-size", "2"],
        "line 3: value is 3 bytes, longer than the value size 2",
    );
}

#[test]
fn rejects_a_duplicate_key_naming_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), "key,value\n01,aa\n02,bb\n0x01,cc\n", &[], "duplicate key on lines 2 and 4");
}

#[test]
fn rejects_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "key,value\n01,02\n";
    assert_refused(dir.path(), csv, &["--page-size", "1000"], "page size 1000 must be a power of two");
    assert_refused(dir.path(), csv, &["--choices", "5"], "number of choices 5 must be from 2 to 4");
    assert_refused(dir.path(), csv, &["--seed", "0x1234"], "the seed must be 16 bytes");
}

#[test]
fn errors_never_quote_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "5ec12e75ec12e7";
    for csv in
        [format!("{secret},00\n"), format!("key,value\n{secret}zz,00\n"), format!("key,value\n{secret},0\n")]
    {
        let output = build_csv(dir.path(), &csv, &[]);
        assert!(!output.status.success());
        assert!(!stderr(&output).contains(secret), "{}", stderr(&output));
    }
}

#[test]
fn build_requires_exactly_one_source() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.mgdb");
    let neither = morphogen(&["build", "--output", out.to_str().unwrap()]);
    assert!(!neither.status.success());
    let both =
        morphogen(&["build", "--input", "x.csv", "--synthetic", "5", "--output", out.to_str().unwrap()]);
    assert!(!both.status.success());
    assert!(!out.exists());
}
