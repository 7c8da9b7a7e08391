//! Snapshots: what answers come from, and swapping to a new one.
//!
//! A swap is a sequenced step like an update batch: the new snapshot
//! starts at the swap's sequence number, so an epoch names one table state
//! on both servers and epoch numbers never repeat. The file is loaded and
//! verified, and an engine readied over it, on a thread of its own while
//! the old snapshot keeps answering (a [`SnapshotLoader`] does this; the
//! server knows nothing of files). The scan thread then swaps between
//! passes: it has the loader record the swap durably, replaces its engine
//! and epochs, and tells every request still queued for the old snapshot
//! to re-read `/v1/meta` (410 `snapshot_changed`). Update batches are
//! refused while a swap is loading: they would take its sequence number.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use morphogen_epochs::{Change, Epochs};
use morphogen_protocol::{SwapState, SwapStatus};
use morphogen_scan::Engine;

use crate::TableInfo;
use crate::metrics::Metrics;

/// Loads the table files a server may be told to swap to
/// (`POST /admin/v1/snapshot`).
pub trait SnapshotLoader: Send + Sync + std::fmt::Debug {
    /// Loads and verifies the snapshot the file `file` names and readies it
    /// to answer from epoch `epoch`: an engine over it (of the kind the
    /// server uses) and its epochs with a fresh update log starting at
    /// `epoch`, whose label is `label` (`Epochs::create_labelled`). Runs on a thread of its own while the old snapshot keeps
    /// answering. The error is for the operator: it is logged and shown in
    /// the admin status.
    fn load(&self, file: &str, epoch: u64, label: Option<Vec<u8>>) -> Result<LoadedSnapshot, String>;

    /// Writes, as the file `file`, a larger table (`pages_per_table` pages a
    /// sub-table) of the records the snapshot served now holds at epoch
    /// `epoch`, with `changes` applied (`morphogen_epochs::grown_table`), to
    /// be loaded next. Runs on a thread of its own while the old snapshot
    /// keeps answering; the error is for the operator. A loader that
    /// cannot grow tables says so.
    fn grow(&self, epoch: u64, changes: &[Change], pages_per_table: u64, file: &str) -> Result<(), String> {
        let _ = (epoch, changes, pages_per_table, file);
        Err("this server's snapshots cannot grow".to_string())
    }

    /// Records durably that `loaded` is the snapshot served from now on, so
    /// that a restart serves it. Called on the scan thread just before the
    /// swap; if it fails, the swap does not happen.
    fn commit(&self, loaded: &LoadedSnapshot) -> Result<(), String>;
}

/// A snapshot loaded and ready to be swapped in.
pub struct LoadedSnapshot {
    /// The file name it was loaded from.
    pub file: String,
    /// What the server will publish about it.
    pub table: TableInfo,
    /// An engine over its table.
    pub engine: Box<dyn Engine>,
    /// Its epochs, starting at the swap's sequence number.
    pub epochs: Epochs,
}

impl std::fmt::Debug for LoadedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSnapshot")
            .field("file", &self.file)
            .field("digest", &hex::encode(self.table.digest))
            .field("epoch", &self.epochs.base())
            .finish_non_exhaustive()
    }
}

/// Snapshot swaps: the loader, and the latest swap asked for.
#[derive(Debug)]
pub(crate) struct Swaps {
    loader: Option<Arc<dyn SnapshotLoader>>,
    latest: Mutex<Option<SwapStatus>>,
}

/// What a swap swaps to.
#[derive(Debug)]
pub(crate) enum SwapTo {
    /// A table file of the snapshot directory.
    File(String),
    /// A larger table of the current records with a batch applied, which
    /// the loader builds first.
    Grown {
        /// Pages of each of its sub-tables.
        pages_per_table: u64,
        /// The batch's changes.
        changes: Vec<Change>,
    },
}

impl SwapTo {
    /// The file swapped to: a grown table's is named by its epoch.
    fn file(&self, sequence: u64) -> String {
        match self {
            SwapTo::File(file) => file.clone(),
            SwapTo::Grown { .. } => format!("grown-{sequence}.mgdb"),
        }
    }
}

/// Why a swap was not started.
#[derive(Debug)]
pub(crate) enum SwapRefused {
    /// The server has no snapshot directory.
    Disabled,
    /// Another swap is loading.
    InProgress,
    /// The sequence number is not the next one.
    Sequence { expected: u64 },
}

impl Swaps {
    pub(crate) fn new(loader: Option<Arc<dyn SnapshotLoader>>) -> Swaps {
        Swaps { loader, latest: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SwapStatus>> {
        self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The latest swap asked for since the server started.
    pub(crate) fn latest(&self) -> Option<SwapStatus> {
        self.lock().clone()
    }

    /// Whether a swap is loading (update batches wait for it).
    pub(crate) fn loading(&self) -> bool {
        self.lock().as_ref().is_some_and(|status| status.state == SwapState::Loading)
    }

    /// Starts a swap to `to` as epoch `sequence`, in the background, if
    /// `sequence` follows the server's current epoch. Returns its status
    /// (loading).
    pub(crate) fn start(
        &self,
        to: SwapTo,
        sequence: u64,
        label: Option<Vec<u8>>,
        state: Arc<crate::State>,
    ) -> Result<SwapStatus, SwapRefused> {
        let loader = self.loader.clone().ok_or(SwapRefused::Disabled)?;
        let mut latest = self.lock();
        if latest.as_ref().is_some_and(|status| status.state == SwapState::Loading) {
            return Err(SwapRefused::InProgress);
        }
        let expected = state.batcher.published().epoch.saturating_add(1);
        if sequence != expected {
            return Err(SwapRefused::Sequence { expected });
        }
        let status = SwapStatus { state: SwapState::Loading, file: to.file(sequence), sequence, error: None };
        *latest = Some(status.clone());
        match &to {
            SwapTo::File(_) => {
                tracing::info!(file = %status.file, sequence, "loading a snapshot to swap to");
            }
            SwapTo::Grown { pages_per_table, changes } => tracing::info!(
                file = %status.file,
                sequence,
                pages_per_table,
                changes = changes.len(),
                "growing the table: building a larger one of its records with the batch applied"
            ),
        }
        tokio::spawn(async move {
            let outcome = load_and_swap(&state, loader, to, sequence, label).await;
            state.swaps.finish(outcome, &state.metrics);
        });
        Ok(status)
    }

    /// Records how the swap that was loading ended.
    fn finish(&self, outcome: Result<(), String>, metrics: &Metrics) {
        let mut latest = self.lock();
        let status = latest.as_mut().expect("a swap was loading");
        match outcome {
            Ok(()) => {
                status.state = SwapState::Swapped;
                metrics.snapshot_swap("swapped");
                tracing::info!(file = %status.file, epoch = status.sequence, "swapped to a new snapshot");
            }
            Err(error) => {
                tracing::error!(file = %status.file, sequence = status.sequence, %error, "snapshot swap failed; the old snapshot keeps answering");
                status.state = SwapState::Failed;
                status.error = Some(error);
                metrics.snapshot_swap("failed");
            }
        }
    }
}

async fn load_and_swap(
    state: &crate::State,
    loader: Arc<dyn SnapshotLoader>,
    to: SwapTo,
    sequence: u64,
    label: Option<Vec<u8>>,
) -> Result<(), String> {
    let started = Instant::now();
    let loading = loader.clone();
    let file = to.file(sequence);
    let loaded = tokio::task::spawn_blocking(move || {
        if let SwapTo::Grown { pages_per_table, changes } = &to {
            loading.grow(sequence - 1, changes, *pages_per_table, &file)?;
        }
        loading.load(&file, sequence, label)
    })
    .await
    .map_err(|e| format!("the loading thread failed: {e}"))??;
    if loaded.epochs.base() != sequence {
        return Err(format!("the loader readied epoch {} instead of {sequence}", loaded.epochs.base()));
    }
    state.metrics.snapshot_loaded(started.elapsed());
    tracing::info!(
        file = %loaded.file,
        digest = %hex::encode(loaded.table.digest),
        seconds = started.elapsed().as_secs_f64(),
        "snapshot loaded; swapping between passes"
    );
    state.batcher.swap(loaded, loader).await.map_err(|_| "the scan thread stopped".to_string())?
}
