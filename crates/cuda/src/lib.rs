//! The CUDA scan engine: the table lives in GPU memory and every pass runs
//! there — the batch's DPF keys are expanded into selection bits on the
//! device, one scan reads each page at least one query selects once and
//! XORs it into every selecting query's accumulator, a reduction folds the
//! per-range accumulators, and one small copy brings the answers back.
//!
//! The CUDA driver and NVRTC are loaded at run time (cudarc's dynamic
//! loading), so this crate builds without a CUDA toolkit and a binary that
//! contains it runs on machines without a GPU: [`probe`] says why no GPU can
//! be used, and callers fall back to the CPU engine. The kernels are the
//! `.cu` files under `kernels/`, compiled once per engine for the device's
//! own architecture.

// Kernel launches and pinned host memory: every block says why it is sound
// (clippy's undocumented_unsafe_blocks is on for this crate).
#[allow(unsafe_code)]
mod engine;
mod geometry;
mod keys;

use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError};

pub use engine::{CudaEngine, Options};

/// Errors of the CUDA engine. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU can be used here: no driver library, no NVRTC, no device.
    #[error("no usable GPU: {0}")]
    Unavailable(String),
    /// A call into the CUDA driver failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// NVRTC rejected the kernels; the compiler's log follows.
    #[error("compiling the CUDA kernels failed:\n{0}")]
    Compile(String),
    /// The table and the engine's buffers do not fit in the GPU's free memory.
    #[error("the table and the engine's buffers need {needed} bytes of GPU memory; {free} are free")]
    OutOfMemory {
        /// Bytes the engine would allocate.
        needed: u64,
        /// Bytes free on the device.
        free: u64,
    },
    /// The engine must answer at least one query per pass.
    #[error("max batch must be at least 1")]
    MaxBatch,
}

/// A table the CUDA engine could not be opened over, given back with the
/// reason, so that another engine can answer from it.
pub struct NotOpened {
    /// Why the engine could not be opened.
    pub error: Error,
    /// The table it was to own.
    pub table: morphogen_table::Table,
}

impl std::fmt::Debug for NotOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotOpened").field("error", &self.error).finish_non_exhaustive()
    }
}

impl std::fmt::Display for NotOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for NotOpened {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Opens the first GPU, or says why none can be used.
#[allow(unsafe_code)]
pub fn probe() -> Result<Arc<CudaContext>, Error> {
    // SAFETY: `is_culib_present` only tries to load the library files by
    // name and drops them again; it calls no CUDA function and touches no
    // CUDA state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Unavailable("the CUDA driver library (libcuda) is not installed".into()));
    }
    // SAFETY: as above, for the NVRTC library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Unavailable(
            "the CUDA runtime compiler library (libnvrtc) is not installed".into(),
        ));
    }
    match CudaContext::device_count() {
        Ok(0) => Err(Error::Unavailable("the CUDA driver reports no device".into())),
        Ok(_) => Ok(CudaContext::new(0)?),
        Err(e) => Err(Error::Unavailable(format!("the CUDA driver did not start: {e}"))),
    }
}
