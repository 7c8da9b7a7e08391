//! The page table of morphogen: the layout both servers serve and the client
//! reads.
//!
//! Records `key -> value` live in fixed-size rows packed into pages, spread
//! over `k` sub-tables by bucketized cuckoo hashing: a key has one candidate
//! page in each sub-table and is stored in one of them. A lookup always asks
//! for all `k` candidates, so every lookup looks the same to the servers.
//! [`Layout`] holds the public parameters and the client-side helpers.

mod build;
mod file;
mod keys;
mod sources;
mod synthetic;
mod table;

use std::path::{Path, PathBuf};

pub use build::{
    BuildOptions, DigestedRecord, DigestedSource, Record, RecordSource, TARGET_LOAD, build, build_digested,
};
pub use file::{FORMAT_VERSION, HEADER_LEN, MAGIC, Verify};
pub use keys::{KEYS_MAGIC, keys_path, read_keys, write_keys};
pub use morphogen_layout::{
    CHOICES, Candidates, KeyDigest, Layout, MAX_KEY_LEN, MAX_PAGES_PER_TABLE, PAGE_SIZES, TAG_LEN,
};
pub use sources::{CsvFile, Synthetic};
pub use synthetic::{SYNTHETIC_GAMMA, fill_synthetic, synthetic_digest, synthetic_word};
pub use table::{PageWrite, Table};

/// Progress of long work (building, verifying), for a progress bar. Calls
/// come from the working thread.
pub trait Progress {
    /// A phase of `total` units (records or bytes) begins; 0 if unknown.
    fn start(&self, phase: &str, total: u64);
    /// `done` more units of the current phase are done.
    fn advance(&self, done: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Errors of the table crate. Messages name parameters, files and line
/// numbers, never keys or values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The parameters make no table, or a page is not one page long.
    #[error(transparent)]
    Layout(#[from] morphogen_layout::Error),
    /// A page write names a page past the table.
    #[error("page {index} is past the table's {pages} pages")]
    PageIndex {
        /// The page named.
        index: u64,
        /// Pages in the table.
        pages: u64,
    },
    /// A line of the input is malformed.
    #[error("line {line}: {problem}")]
    Input {
        /// The 1-based line.
        line: u64,
        /// What is wrong, without quoting the data.
        problem: String,
    },
    /// A record's key is empty or longer than 64 bytes.
    #[error("line {line}: key is {len} bytes, keys must be 1 to 64 bytes")]
    KeyLength {
        /// Where the record came from.
        line: u64,
        /// Length of its key.
        len: usize,
    },
    /// A record's value is longer than the value size.
    #[error("line {line}: value is {len} bytes, longer than the value size {value_size}")]
    ValueTooLong {
        /// Where the record came from.
        line: u64,
        /// Length of its value.
        len: usize,
        /// The table's value size.
        value_size: u32,
    },
    /// Two records have the same key.
    #[error("duplicate key on lines {first_line} and {second_line}")]
    DuplicateKey {
        /// Where the key first appears.
        first_line: u64,
        /// Where it appears again.
        second_line: u64,
    },
    /// No value size was given and every value is empty.
    #[error("cannot infer the value size: the input has no non-empty value; give one explicitly")]
    UnknownValueSize,
    /// More records than a table can hold.
    #[error("{0} records are more than one table can hold")]
    TooManyRecords(u64),
    /// The record source gave different records on its second reading.
    #[error("the input changed while the table was being built")]
    SourceChanged,
    /// A page buffer does not match the layout.
    #[error("pages are {actual} bytes, the layout needs {expected}")]
    PagesLength {
        /// Bytes the layout needs.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// A file operation failed.
    #[error("cannot {action} {}: {message}", path.display())]
    Io {
        /// What was being done: open, read, write, sync, rename, map.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The kind of failure.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// Memory for a table's pages could not be mapped.
    #[error("cannot map {bytes} bytes of memory for the pages: {message}")]
    Memory {
        /// Bytes asked for.
        bytes: u64,
        /// The operating system's message.
        message: String,
    },
    /// A table file is not as long as its header says (truncated or extended).
    #[error("{} is {actual} bytes, but its header describes {expected}: the file is truncated or damaged", path.display())]
    FileLength {
        /// The file.
        path: PathBuf,
        /// Length the header describes.
        expected: u64,
        /// Length on disk.
        actual: u64,
    },
    /// A table file's header is not valid.
    #[error("{} is not a valid table: {problem}", path.display())]
    InvalidHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A table file's pages do not hash to the digest in its header.
    #[error("{}: the pages do not match the digest in the header: the file is corrupt", path.display())]
    DigestMismatch {
        /// The file.
        path: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, error: &std::io::Error) -> Error {
        Error::Io { action, path: path.into(), kind: error.kind(), message: error.to_string() }
    }
}
