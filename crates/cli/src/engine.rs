//! Choosing a scan engine on the command line and the table it answers
//! from; the opening itself is `morphogen-engines`'.

use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;
use morphogen_dpf::generate;
use morphogen_engines::Choice;
pub use morphogen_engines::TableSource;
use morphogen_scan::{Engine, EngineKind, Query};
use morphogen_server::TableInfo;
use morphogen_table::{Layout, Table, Verify, synthetic_digest};
use rand::RngExt;
use rand::rngs::StdRng;

use crate::progress::Bar;

/// Which engine answers queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    /// The GPU when this build has the CUDA engine and a GPU is present,
    /// otherwise all CPU cores.
    Auto,
    /// The first NVIDIA GPU (builds with the `cuda` feature).
    Cuda,
    /// All CPU cores.
    Cpu,
    /// Point-by-point evaluation on one thread: slow, the test oracle.
    Reference,
}

impl EngineChoice {
    /// What the engines crate is asked for.
    pub fn choice(self) -> Choice {
        match self {
            EngineChoice::Auto => Choice::Auto,
            EngineChoice::Cuda => Choice::Kind(EngineKind::Cuda),
            EngineChoice::Cpu => Choice::Kind(EngineKind::Cpu),
            EngineChoice::Reference => Choice::Kind(EngineKind::Reference),
        }
    }
}

/// Page size of synthetic tables (`--pages N`).
const SYNTHETIC_PAGE_SIZE: u32 = 4096;

/// Seed of the page stream of synthetic tables.
const SYNTHETIC_SEED: u64 = 1;

/// The table of the `--db FILE` or `--pages N` options of `serve` and
/// `bench`; a file's pages are checked as `verify` says.
pub fn source_from_options(
    db: Option<&Path>,
    pages: Option<u64>,
    verify: Verify,
) -> anyhow::Result<TableSource> {
    match (db, pages) {
        (Some(path), _) => Ok(TableSource::Host(
            Table::open(path, verify, &Bar::new()).with_context(|| format!("opening {}", path.display()))?,
        )),
        (None, Some(pages)) => synthetic_pages(pages),
        (None, None) => anyhow::bail!("give --db or --pages"),
    }
}

/// `--pages N`: N pseudorandom 4-KiB pages in two sub-tables.
pub fn synthetic_pages(pages: u64) -> anyhow::Result<TableSource> {
    let layout = Layout::new(SYNTHETIC_PAGE_SIZE, 32, 2, pages / 2, [0; 16])?;
    Ok(TableSource::Synthetic { layout, seed: SYNTHETIC_SEED })
}

/// What a server publishes about the source's table. A synthetic table
/// holds no records, and its digest names what defines its pages.
pub fn info(source: &TableSource) -> TableInfo {
    match source {
        TableSource::Host(table) => TableInfo::of(table),
        TableSource::Synthetic { layout, seed } => {
            TableInfo { layout: layout.clone(), digest: synthetic_digest(layout, *seed), records: 0 }
        }
    }
}

/// Opens the chosen engine over `source`, sized for passes of up to
/// `max_batch` queries (`morphogen_engines::open`, with a progress bar for
/// an upload to the GPU).
pub fn open(choice: EngineChoice, source: TableSource, max_batch: usize) -> anyhow::Result<Box<dyn Engine>> {
    morphogen_engines::open(choice.choice(), source, max_batch, &Bar::new())
        .context("opening the scan engine")
}

/// `count` queries for random pages, each key one party's at random: what
/// a server sees, for timing and checking engines.
pub fn random_queries(layout: &Layout, count: usize, rng: &mut StdRng) -> anyhow::Result<Vec<Query>> {
    (0..count)
        .map(|_| {
            let keys = (0..layout.choices())
                .map(|_| {
                    let target = rng.random_range(0..layout.pages_per_table());
                    let (a, b) = generate(layout.pages_per_table(), target, rng)?;
                    Ok(if rng.random() { a } else { b })
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(Query { keys })
        })
        .collect()
}
