//! Choosing a scan engine on the command line, and opening it over a table.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::ValueEnum;
use morphogen_dpf::generate;
use morphogen_scan::{CpuEngine, Engine, EngineKind, Query, ReferenceEngine};
use morphogen_server::TableInfo;
use morphogen_table::{Layout, Table, Verify, fill_synthetic, synthetic_digest};
use rand::RngExt;
use rand::rngs::StdRng;
use rayon::prelude::*;

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
    /// The kind of `engine`, as opening it again would need.
    pub fn of(engine: &dyn Engine) -> EngineChoice {
        match engine.kind() {
            EngineKind::Cuda => EngineChoice::Cuda,
            EngineKind::Reference => EngineChoice::Reference,
            EngineKind::Cpu => EngineChoice::Cpu,
        }
    }
}

/// The pages an engine answers from.
pub enum TableSource {
    /// A table in host memory or mapped from a file.
    Host(Arc<Table>),
    /// The synthetic byte stream for `seed` (`morphogen_table::fill_synthetic`)
    /// in the shape of `layout`, made where the engine keeps its table: on
    /// the GPU for the CUDA engine, in host memory for the others.
    Synthetic { layout: Layout, seed: u64 },
}

/// Page size of synthetic tables (`--pages N`).
const SYNTHETIC_PAGE_SIZE: u32 = 4096;

/// Seed of the page stream of synthetic tables.
const SYNTHETIC_SEED: u64 = 1;

impl TableSource {
    /// The table of the `--db FILE` or `--pages N` options of `serve` and
    /// `bench`; a file's pages are checked as `verify` says.
    pub fn from_options(
        db: Option<&Path>,
        pages: Option<u64>,
        verify: Verify,
    ) -> anyhow::Result<TableSource> {
        match (db, pages) {
            (Some(path), _) => Ok(TableSource::Host(Arc::new(
                Table::open(path, verify, &Bar::new())
                    .with_context(|| format!("opening {}", path.display()))?,
            ))),
            (None, Some(pages)) => TableSource::synthetic_pages(pages),
            (None, None) => anyhow::bail!("give --db or --pages"),
        }
    }

    /// `--pages N`: N pseudorandom 4-KiB pages in two sub-tables.
    pub fn synthetic_pages(pages: u64) -> anyhow::Result<TableSource> {
        let layout = Layout::new(SYNTHETIC_PAGE_SIZE, 32, 2, pages / 2, [0; 16])?;
        Ok(TableSource::Synthetic { layout, seed: SYNTHETIC_SEED })
    }

    /// What a server publishes about this table. A synthetic table holds no
    /// records, and its digest names what defines its pages.
    pub fn info(&self) -> TableInfo {
        match self {
            TableSource::Host(table) => TableInfo::of(table),
            TableSource::Synthetic { layout, seed } => {
                TableInfo { layout: layout.clone(), digest: synthetic_digest(layout, *seed), records: 0 }
            }
        }
    }

    pub fn layout(&self) -> &Layout {
        match self {
            TableSource::Host(table) => table.layout(),
            TableSource::Synthetic { layout, .. } => layout,
        }
    }

    /// The pages in host memory, generating them if they are synthetic.
    pub fn host_table(&self) -> anyhow::Result<Arc<Table>> {
        match self {
            TableSource::Host(table) => Ok(table.clone()),
            TableSource::Synthetic { layout, seed } => {
                const STEP: usize = 1 << 20;
                let table = Table::generate(layout.clone(), 0, |bytes| {
                    bytes.par_chunks_mut(STEP).enumerate().for_each(|(i, chunk)| {
                        fill_synthetic(*seed, (i * STEP) as u64, chunk);
                    });
                })?;
                Ok(Arc::new(table))
            }
        }
    }
}

/// Opens the chosen engine over `source`, sized for passes of up to
/// `max_batch` queries, and logs which engine it is in one line.
pub fn open(choice: EngineChoice, source: &TableSource, max_batch: usize) -> anyhow::Result<Box<dyn Engine>> {
    let engine: Box<dyn Engine> = match choice {
        EngineChoice::Cuda => open_cuda(source, max_batch)?,
        EngineChoice::Auto => match open_cuda(source, max_batch) {
            Ok(engine) => engine,
            Err(reason) => {
                let engine = open_cpu(source, max_batch)?;
                tracing::info!(engine = "cpu", device = %engine.device(), reason = %reason, "scan engine: no GPU engine, using the CPU");
                return Ok(engine);
            }
        },
        EngineChoice::Cpu => open_cpu(source, max_batch)?,
        EngineChoice::Reference => Box::new(ReferenceEngine::new(source.host_table()?)),
    };
    tracing::info!(engine = engine.name(), device = %engine.device(), "scan engine");
    Ok(engine)
}

/// The CPU engine over the source's table, if passes of `max_batch`
/// queries fit in the memory the system has available.
fn open_cpu(source: &TableSource, max_batch: usize) -> anyhow::Result<Box<dyn Engine>> {
    let engine = CpuEngine::new(source.host_table()?);
    if let Some(available) = morphogen_scan::available_memory() {
        engine.check_max_batch(max_batch, available).context("--max-batch")?;
    }
    Ok(Box::new(engine))
}

#[cfg(feature = "cuda")]
fn open_cuda(source: &TableSource, max_batch: usize) -> anyhow::Result<Box<dyn Engine>> {
    use crate::progress::Bar;
    use morphogen_cuda::{CudaEngine, Options};
    let options = Options { max_batch };
    let engine = match source {
        TableSource::Host(table) => CudaEngine::new(table.clone(), options, &Bar::new())?,
        TableSource::Synthetic { layout, seed } => {
            CudaEngine::synthetic(layout.clone(), *seed, options, &Bar::new())?
        }
    };
    Ok(Box::new(engine))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_: &TableSource, _: usize) -> anyhow::Result<Box<dyn Engine>> {
    anyhow::bail!("this build has no CUDA engine (build with `--features cuda`)")
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
