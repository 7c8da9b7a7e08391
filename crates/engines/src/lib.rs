//! Opening a scan engine over a table: the GPU when asked for (or, with
//! `auto`, when this build has the CUDA engine and there is a GPU), the CPU
//! cores otherwise, each checked at start-up against its batch limit. The
//! binary and any program that embeds the server open engines here, so
//! both choose alike.

use morphogen_scan::{CpuEngine, Engine, EngineKind, ReferenceEngine};
use morphogen_table::{Layout, Progress, Table, fill_synthetic};
use rayon::prelude::*;

/// Which engine to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The GPU when this build has the CUDA engine and a GPU is present,
    /// otherwise all CPU cores; one log line says which.
    Auto,
    /// This kind, or an error.
    Kind(EngineKind),
}

/// The pages an engine answers from.
pub enum TableSource {
    /// A table in host memory or mapped from a file.
    Host(Table),
    /// The synthetic byte stream for `seed` (`morphogen_table::fill_synthetic`)
    /// in the shape of `layout`, made where the engine keeps its table: on
    /// the GPU for the CUDA engine, in host memory for the others.
    Synthetic {
        /// The table's shape.
        layout: Layout,
        /// The stream's seed.
        seed: u64,
    },
}

impl TableSource {
    /// The shape of the table.
    pub fn layout(&self) -> &Layout {
        match self {
            TableSource::Host(table) => table.layout(),
            TableSource::Synthetic { layout, .. } => layout,
        }
    }

    /// The pages in host memory, generating them if they are synthetic.
    pub fn into_host_table(self) -> Result<Table, Error> {
        match self {
            TableSource::Host(table) => Ok(table),
            TableSource::Synthetic { layout, seed } => {
                const STEP: usize = 1 << 20;
                let table = Table::generate(layout.clone(), 0, |bytes| {
                    bytes.par_chunks_mut(STEP).enumerate().for_each(|(i, chunk)| {
                        fill_synthetic(seed, (i * STEP) as u64, chunk);
                    });
                })?;
                Ok(table)
            }
        }
    }
}

/// Why no engine was opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA engine was asked for and cannot be had (no GPU, no driver,
    /// a build without it, or too little GPU memory).
    #[error("{0}")]
    Cuda(String),
    /// The engine cannot be set up as asked (its batch limit does not fit).
    #[error(transparent)]
    Engine(#[from] morphogen_scan::Error),
    /// The table could not be made in host memory.
    #[error(transparent)]
    Table(#[from] morphogen_table::Error),
}

/// Opens the chosen engine over `source`, which it owns from then on,
/// sized for passes of up to `max_batch` queries (`progress` reports an
/// upload to the GPU), and logs which engine it is in one line.
pub fn open(
    choice: Choice,
    source: TableSource,
    max_batch: usize,
    progress: &dyn Progress,
) -> Result<Box<dyn Engine>, Error> {
    let engine: Box<dyn Engine> = match choice {
        Choice::Kind(EngineKind::Cuda) => {
            open_cuda(source, max_batch, progress).map_err(|refused| refused.0)?
        }
        Choice::Auto => match open_cuda(source, max_batch, progress) {
            Ok(engine) => engine,
            Err(refused) => {
                let (reason, source) = *refused;
                let engine = open_cpu(source, max_batch)?;
                tracing::info!(engine = "cpu", device = %engine.device(), reason = %reason, "scan engine: no GPU engine, using the CPU");
                return Ok(engine);
            }
        },
        Choice::Kind(EngineKind::Cpu) => open_cpu(source, max_batch)?,
        Choice::Kind(EngineKind::Reference) => Box::new(ReferenceEngine::new(source.into_host_table()?)),
    };
    tracing::info!(engine = engine.name(), device = %engine.device(), "scan engine");
    Ok(engine)
}

/// The CPU engine over the source's table, if passes of `max_batch`
/// queries fit in the memory the system has available.
fn open_cpu(source: TableSource, max_batch: usize) -> Result<Box<dyn Engine>, Error> {
    let engine = CpuEngine::new(source.into_host_table()?);
    if let Some(available) = morphogen_scan::available_memory() {
        engine.check_max_batch(max_batch, available)?;
    }
    Ok(Box::new(engine))
}

/// The CUDA engine over `source`, or why not with the source given back.
type CudaOpened = Result<Box<dyn Engine>, Box<(Error, TableSource)>>;

#[cfg(feature = "cuda")]
fn open_cuda(source: TableSource, max_batch: usize, progress: &dyn Progress) -> CudaOpened {
    use morphogen_cuda::{CudaEngine, Options};
    let options = Options { max_batch };
    let cuda = |error: &dyn std::fmt::Display| Error::Cuda(error.to_string());
    match source {
        TableSource::Host(table) => match CudaEngine::new(table, options, progress) {
            Ok(engine) => Ok(Box::new(engine)),
            Err(refused) => Err(Box::new((cuda(&refused.error), TableSource::Host(refused.table)))),
        },
        TableSource::Synthetic { layout, seed } => {
            match CudaEngine::synthetic(layout.clone(), seed, options, progress) {
                Ok(engine) => Ok(Box::new(engine)),
                Err(error) => Err(Box::new((cuda(&error), TableSource::Synthetic { layout, seed }))),
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(source: TableSource, _: usize, _: &dyn Progress) -> CudaOpened {
    let reason = "this build has no CUDA engine (build with `--features cuda`)";
    Err(Box::new((Error::Cuda(reason.to_string()), source)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> TableSource {
        let layout = Layout::new(512, 8, 2, 40, [3; 16]).unwrap();
        TableSource::Synthetic { layout, seed: 5 }
    }

    #[test]
    fn auto_falls_back_to_the_cpu_where_there_is_no_cuda_engine() {
        if cfg!(feature = "cuda") {
            return; // a GPU may be present: what auto opens depends on it.
        }
        let engine = open(Choice::Auto, source(), 8, &morphogen_table::NoProgress).unwrap();
        assert_eq!(engine.kind(), EngineKind::Cpu);
        let refused = open(Choice::Kind(EngineKind::Cuda), source(), 8, &morphogen_table::NoProgress);
        assert!(matches!(refused, Err(Error::Cuda(reason)) if reason.contains("--features cuda")));
    }

    #[test]
    fn opens_each_host_kind_over_the_same_pages() {
        for kind in [EngineKind::Cpu, EngineKind::Reference] {
            let engine = open(Choice::Kind(kind), source(), 8, &morphogen_table::NoProgress).unwrap();
            assert_eq!(engine.kind(), kind);
            let pages = source().into_host_table().unwrap();
            assert_eq!(engine.table().unwrap().pages(), pages.pages(), "{kind:?}");
        }
    }

    #[test]
    fn rejects_a_batch_limit_the_cpu_engine_has_no_memory_for() {
        let Some(available) = morphogen_scan::available_memory() else { return };
        // The engine's buffers for this many queries exceed the memory there is.
        let engine = CpuEngine::new(source().into_host_table().unwrap());
        let too_many = (1..=1 << 22).map(|q| q * 64).find(|&q| engine.pass_bytes(q) > available).unwrap();
        let refused = open(Choice::Kind(EngineKind::Cpu), source(), too_many, &morphogen_table::NoProgress);
        assert!(matches!(refused, Err(Error::Engine(_))));
    }
}
