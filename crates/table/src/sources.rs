//! Where records come from: a CSV file of hex fields, or a deterministic
//! synthetic generator for tests and benchmarks.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::build::{Record, RecordSource};

/// A CSV file with the header line `key,value` and one record per line, both
/// fields in hex with or without a `0x` prefix. docs/FORMAT.md has the rules.
pub struct CsvFile {
    path: PathBuf,
}

impl CsvFile {
    /// A source reading `path` (opened on each pass).
    pub fn new(path: &Path) -> CsvFile {
        CsvFile { path: path.into() }
    }
}

/// Read buffer of the CSV reader.
const CSV_BUFFER: usize = 1 << 20;

impl RecordSource for CsvFile {
    fn for_each_record(&self, sink: &mut dyn FnMut(Record<'_>) -> Result<(), Error>) -> Result<(), Error> {
        let file = File::open(&self.path).map_err(|e| Error::io("open", &self.path, &e))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(CSV_BUFFER)
            .from_reader(BufReader::with_capacity(CSV_BUFFER, file));
        let mut row = csv::ByteRecord::new();
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut first = true;
        loop {
            let more = reader.read_byte_record(&mut row).map_err(|e| self.csv_error(e))?;
            if !more {
                if first {
                    return Err(input(1, "the file is empty; it must start with the header `key,value`"));
                }
                return Ok(());
            }
            let line = row.position().map_or(0, |p| p.line());
            if first {
                first = false;
                if row.len() != 2 || row[0].trim_ascii() != b"key" || row[1].trim_ascii() != b"value" {
                    return Err(input(line, "the first line must be the header `key,value`"));
                }
                continue;
            }
            if row.len() != 2 {
                return Err(input(line, &format!("expected 2 fields (key,value), found {}", row.len())));
            }
            decode_hex(&row[0], &mut key).map_err(|problem| input(line, &format!("key {problem}")))?;
            decode_hex(&row[1], &mut value).map_err(|problem| input(line, &format!("value {problem}")))?;
            sink(Record { line, key: &key, value: &value })?;
        }
    }
}

impl CsvFile {
    fn csv_error(&self, error: csv::Error) -> Error {
        let line = error.position().map_or(0, |p| p.line());
        match error.into_kind() {
            csv::ErrorKind::Io(e) => Error::io("read", &self.path, &e),
            // Other CSV errors quote no data, only positions and kinds.
            other => input(line, &format!("not valid CSV ({other:?})")),
        }
    }
}

fn input(line: u64, problem: &str) -> Error {
    Error::Input { line, problem: problem.to_string() }
}

/// Decodes hex (optional `0x`, surrounding spaces ignored) into `out`.
/// The error says what is wrong without quoting the field.
fn decode_hex(field: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let field = field.trim_ascii();
    let digits = field.strip_prefix(b"0x").or_else(|| field.strip_prefix(b"0X")).unwrap_or(field);
    if !digits.len().is_multiple_of(2) {
        return Err("has an odd number of hex digits");
    }
    out.resize(digits.len() / 2, 0);
    // The crate's error names the offending character; ours quotes nothing.
    hex::decode_to_slice(digits, out).map_err(|_| "is not hex")
}

/// `count` records with random-looking keys and values of fixed sizes, the
/// same on every run: record `i` is derived from `i` by BLAKE3 in XOF mode.
/// Its line is `i + 1`.
#[derive(Clone, Copy, Debug)]
pub struct Synthetic {
    /// Number of records.
    pub count: u64,
    /// Bytes per key, 1 to 64.
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
}

/// Context string of the synthetic record derivation.
const SYNTHETIC_CONTEXT: &str = "morphogen 2026-11 synthetic records v1";

impl Synthetic {
    /// Key and value of record `i`, written into `buffer`: the key first.
    pub fn record(&self, i: u64, buffer: &mut Vec<u8>) {
        buffer.resize(self.key_size + self.value_size, 0);
        let mut hasher = blake3::Hasher::new_derive_key(SYNTHETIC_CONTEXT);
        hasher.update(&i.to_le_bytes());
        hasher.finalize_xof().fill(buffer);
    }
}

impl RecordSource for Synthetic {
    fn for_each_record(&self, sink: &mut dyn FnMut(Record<'_>) -> Result<(), Error>) -> Result<(), Error> {
        let mut buffer = Vec::new();
        for i in 0..self.count {
            self.record(i, &mut buffer);
            let (key, value) = buffer.split_at(self.key_size);
            sink(Record { line: i + 1, key, value })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_prefixes_case_and_spaces() {
        let mut out = Vec::new();
        for field in [&b"0a0B"[..], b"0x0a0b", b"0X0A0B", b" 0a0b "] {
            decode_hex(field, &mut out).unwrap();
            assert_eq!(out, [10, 11]);
        }
        decode_hex(b"", &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn rejects_hex_with_odd_length_or_bad_digits() {
        let mut out = Vec::new();
        assert_eq!(decode_hex(b"abc", &mut out), Err("has an odd number of hex digits"));
        assert_eq!(decode_hex(b"zz", &mut out), Err("is not hex"));
        assert_eq!(decode_hex(b"0x0g", &mut out), Err("is not hex"));
    }

    #[test]
    fn synthetic_records_are_fixed_and_distinct() {
        let source = Synthetic { count: 3, key_size: 32, value_size: 8 };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        source.record(1, &mut a);
        source.record(1, &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 40);
        source.record(2, &mut b);
        assert_ne!(a, b);
    }
}
