//! Scan engines: answer a batch of private queries with one pass over a table.
//!
//! A query holds one DPF key per sub-table. A server's answer to it is, for
//! each sub-table, the XOR of the pages its key selects; the XOR of the two
//! servers' answers is the page the client wanted. Every engine computes the
//! same bytes: [`ReferenceEngine`] plainly, [`CpuEngine`] fast, and tests
//! compare the two.

mod aligned;
mod cpu;
mod parity;
mod reference;
pub mod schedule;

use morphogen_dpf::Key;
use morphogen_table::{Layout, PageWrite, Table};

pub use cpu::{CpuEngine, available_memory, read_every_page};
pub use reference::{ReferenceEngine, reference_pass};

/// One private lookup as a server sees it: one DPF key per sub-table, in
/// sub-table order.
#[derive(Clone, Debug)]
pub struct Query {
    /// Key `j` selects pages of sub-table `j`.
    pub keys: Vec<Key>,
}

/// The answers to a batch: for each query, one page per sub-table.
#[derive(Clone, PartialEq, Eq)]
pub struct Answers {
    page_size: usize,
    choices: usize,
    bytes: Vec<u8>,
}

impl Answers {
    /// All-zero answers for `queries` queries.
    pub fn zeroed(layout: &Layout, queries: usize) -> Answers {
        let page_size = layout.page_size() as usize;
        let choices = usize::from(layout.choices());
        Answers { page_size, choices, bytes: vec![0; queries * choices * page_size] }
    }

    /// Number of queries answered.
    pub fn len(&self) -> usize {
        self.bytes.len() / (self.page_size * self.choices)
    }

    /// Whether no query was answered.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The answer to query `query`: its pages for sub-tables 0, 1, … in a row.
    pub fn query(&self, query: usize) -> &[u8] {
        let len = self.page_size * self.choices;
        &self.bytes[query * len..(query + 1) * len]
    }

    /// The answer page of query `query` for sub-table `sub_table`.
    pub fn page_mut(&mut self, query: usize, sub_table: usize) -> &mut [u8] {
        let start = (query * self.choices + sub_table) * self.page_size;
        &mut self.bytes[start..start + self.page_size]
    }

    /// All answers, query after query, each `choices` pages long.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All answers, writable: for engines that compute them elsewhere (on a
    /// GPU) and copy them in whole.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes are a server's share of a private answer: not for logs.
        f.debug_struct("Answers").field("queries", &self.len()).finish_non_exhaustive()
    }
}

/// The kinds of engine morphogen has: what another engine over another
/// table must be to answer as this one does (a snapshot swap opens one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Point by point on one thread: the test oracle.
    Reference,
    /// All CPU cores.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

impl EngineKind {
    /// Its short name: `reference`, `cpu`, `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Reference => "reference",
            EngineKind::Cpu => "cpu",
            EngineKind::Cuda => "cuda",
        }
    }
}

/// Answering: what a server needs of an engine to answer batches of
/// queries against one table.
pub trait Scan: Send {
    /// Which kind of engine it is (an engine wrapping another, in tests,
    /// is of the kind it wraps).
    fn kind(&self) -> EngineKind;

    /// Short name, for metadata, logs and reports: its kind's unless it
    /// says otherwise.
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// What it runs on, for logs and benchmark reports.
    fn device(&self) -> String;

    /// The layout of the table it answers from.
    fn layout(&self) -> &Layout;

    /// Answers `queries` in one pass over the table, in request order.
    fn pass(&mut self, queries: &[Query]) -> Result<Answers, Error>;

    /// Into how many parts a pass can be cut (at least 1). A server runs
    /// part after part, round and round, and a query that arrives meanwhile
    /// joins at the next part instead of waiting for a whole pass to end.
    fn parts(&self) -> usize {
        1
    }

    /// Answers `queries` from part `part` of the table only (`part <
    /// parts()`): a query's answers from all the parts XOR to its answer
    /// from [`Scan::pass`]. Each query's keys must be checked as for a pass.
    fn pass_part(&mut self, queries: &[Query], part: usize) -> Result<Answers, Error> {
        debug_assert_eq!(part, 0, "an engine of one part");
        self.pass(queries)
    }
}

/// Page writes: the table an engine owns in host memory, and rewriting its
/// pages between passes.
pub trait WritePages {
    /// The table in host memory as the next pass answers from it, or
    /// `None` for an engine that keeps no host copy (a table generated on a
    /// GPU). Updates are placed by reading it.
    fn table(&self) -> Option<&Table>;

    /// Rewrites whole pages before the next pass, between passes: the host
    /// copy and, for a device engine, the device copy. Bad writes are
    /// refused before anything is written; an engine without a host table
    /// refuses all.
    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), Error>;
}

/// Profiling hooks, for metrics and benchmarks.
pub trait Profile {
    /// How long the phases of the last pass took, for engines that time
    /// them on their device (the CUDA engine: expand, scan, reduce, copy).
    fn last_pass_phases(&self) -> Vec<Phase> {
        Vec::new()
    }

    /// Reads every byte of the table once, the plainest way this engine's
    /// device can, and returns how many seconds it took: the baseline that
    /// benchmarks put next to a pass.
    fn plain_read_seconds(&mut self) -> Result<f64, Error>;
}

/// An engine: it answers ([`Scan`]), takes page writes ([`WritePages`]) and
/// can be profiled ([`Profile`]). Every type with the three is one.
pub trait Engine: Scan + WritePages + Profile {}

impl<T: Scan + WritePages + Profile> Engine for T {}

/// One timed phase of a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// `expand`, `scan`, `reduce` or `copy`.
    pub name: &'static str,
    /// Its duration.
    pub seconds: f64,
}

/// Times [`read_every_page`] over `pages`: the plain read of engines that
/// scan host memory.
pub fn time_host_read(pages: &[u8], page_size: usize) -> f64 {
    let started = std::time::Instant::now();
    std::hint::black_box(read_every_page(pages, page_size));
    started.elapsed().as_secs_f64()
}

/// Checks that every query has one key per sub-table and that each key's
/// domain is the sub-table's page count.
pub fn validate(layout: &Layout, queries: &[Query]) -> Result<(), Error> {
    if queries.is_empty() {
        return Err(Error::EmptyBatch);
    }
    let choices = usize::from(layout.choices());
    for (query, q) in queries.iter().enumerate() {
        if q.keys.len() != choices {
            return Err(Error::KeyCount { query, expected: choices, actual: q.keys.len() });
        }
        for (sub_table, key) in q.keys.iter().enumerate() {
            if key.domain() != layout.pages_per_table() {
                return Err(Error::Domain {
                    query,
                    sub_table,
                    expected: layout.pages_per_table(),
                    actual: key.domain(),
                });
            }
        }
    }
    Ok(())
}

/// XORs `src` into `dst`; they have the same length. Written over 64-bit
/// words in fixed blocks so that the compiler emits wide SIMD loads.
pub(crate) fn xor_into(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut dst_blocks = dst.chunks_exact_mut(64);
    let mut src_blocks = src.chunks_exact(64);
    for (d, s) in (&mut dst_blocks).zip(&mut src_blocks) {
        for (d, s) in d.iter_mut().zip(s) {
            *d ^= s;
        }
    }
    for (d, s) in dst_blocks.into_remainder().iter_mut().zip(src_blocks.remainder()) {
        *d ^= s;
    }
}

/// Errors of the scan engines. They describe the batch, never key material.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The engine cannot be set up as asked (too little memory, say).
    #[error("{0}")]
    Config(String),
    /// A batch must hold at least one query.
    #[error("the batch holds no queries")]
    EmptyBatch,
    /// A query does not have one key per sub-table.
    #[error("query {query} has {actual} keys, the table has {expected} sub-tables")]
    KeyCount {
        /// Index of the query in the batch.
        query: usize,
        /// Number of sub-tables.
        expected: usize,
        /// Keys given.
        actual: usize,
    },
    /// A key's domain is not its sub-table's page count.
    #[error("query {query}, sub-table {sub_table}: key is for {actual} pages, the sub-table has {expected}")]
    Domain {
        /// Index of the query in the batch.
        query: usize,
        /// Sub-table of the key.
        sub_table: usize,
        /// Pages in each sub-table.
        expected: u64,
        /// The key's domain.
        actual: u64,
    },
    /// The engine failed for a reason of its own (for example a device error).
    #[error("engine fault: {0}")]
    Fault(String),
}

/// Applies `writes` in place to an engine's own table, mapping a refused
/// write to an engine error; nothing is written then.
pub fn write_table(table: &mut Table, writes: &[PageWrite]) -> Result<(), Error> {
    table.apply(writes).map_err(|e| Error::Fault(e.to_string()))
}
