//! Changes of the table that the scan thread applies between passes:
//! update batches and snapshot swaps, and what each gets back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use morphogen_epochs::Batch;
use tokio::sync::oneshot;

use crate::published::Published;
use crate::snapshot::{LoadedSnapshot, SnapshotLoader};

/// A sequenced change of the table's records.
pub(crate) enum Update {
    /// A batch of changes.
    Batch(Batch),
    /// Back to the records of epoch `to`, as epoch `sequence`: the batch
    /// [`morphogen_epochs::Epochs::revert_batch`] makes, with `label`.
    Revert { to: u64, sequence: u64, label: Option<Vec<u8>> },
}

/// An update batch applied.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    /// What the server publishes from this batch's epoch on.
    pub(crate) published: Arc<Published>,
    pub(crate) changed_rows: usize,
}

/// Why an update batch was not applied.
#[derive(Debug)]
pub(crate) enum UpdateError {
    /// The batch itself is at fault (sequence, a full table, a long
    /// value); nothing changed.
    Refused(morphogen_epochs::Error),
    /// The server serves a table that takes no updates.
    ReadOnly,
    /// The update log could not be written (a full disk, an I/O error);
    /// nothing changed. The message is for the server's log.
    NotLogged(String),
    /// The update log takes no more batches until a restart; nothing changed.
    LogBroken,
    /// The engine is down; nothing changed.
    EngineDown,
    /// The server failed; the message is for its log.
    Failed(String),
}

/// What an update batch gets back.
pub(crate) type UpdateOutcome = Result<Applied, UpdateError>;

/// What a swap gets back: the server as it stands after it, or why it
/// did not happen (for the operator).
pub(crate) type SwapOutcome = Result<(), String>;

/// A change of the table waiting for the scan thread, applied in arrival order.
pub(super) enum Job {
    Update { update: Update, ticket: UpdateTicket, reply: oneshot::Sender<UpdateOutcome> },
    Swap { loaded: Box<LoadedSnapshot>, loader: Arc<dyn SnapshotLoader>, reply: oneshot::Sender<SwapOutcome> },
}

/// Decides, once, between the scan thread applying a queued update batch
/// and its request giving up on it: a batch is either applied and its
/// outcome waited for, or never applied.
#[derive(Clone)]
pub(crate) struct UpdateTicket(Arc<std::sync::atomic::AtomicU8>);

const TICKET_QUEUED: u8 = 0;
const TICKET_TAKEN: u8 = 1;
const TICKET_CANCELLED: u8 = 2;

impl UpdateTicket {
    pub(super) fn new() -> UpdateTicket {
        UpdateTicket(Arc::new(std::sync::atomic::AtomicU8::new(TICKET_QUEUED)))
    }

    fn settle(&self, to: u8) -> bool {
        self.0.compare_exchange(TICKET_QUEUED, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Withdraws the batch; false if the scan thread has taken it already
    /// (its outcome is then on its way).
    pub(crate) fn cancel(&self) -> bool {
        self.settle(TICKET_CANCELLED)
    }

    /// Takes the batch to apply it; false if it was withdrawn.
    pub(super) fn take(&self) -> bool {
        self.settle(TICKET_TAKEN)
    }
}
