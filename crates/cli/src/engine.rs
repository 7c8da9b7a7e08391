//! Choosing a scan engine on the command line.

use std::sync::Arc;

use clap::ValueEnum;
use morphogen_scan::{CpuEngine, Engine, ReferenceEngine};
use morphogen_table::Table;

/// Which engine answers queries.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineChoice {
    /// The fastest engine this machine can run.
    Auto,
    /// All CPU cores.
    Cpu,
    /// Point-by-point evaluation on one thread: slow, the test oracle.
    Reference,
}

/// Opens the chosen engine over `table`.
pub fn open(choice: EngineChoice, table: Arc<Table>) -> Box<dyn Engine> {
    match choice {
        // The CUDA engine (issue 5) will be tried first here.
        EngineChoice::Auto | EngineChoice::Cpu => Box::new(CpuEngine::new(table)),
        EngineChoice::Reference => Box::new(ReferenceEngine::new(table)),
    }
}
