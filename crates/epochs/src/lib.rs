//! Live updates of a morphogen table: epochs.
//!
//! A table file is a *snapshot*; each update batch applied to it makes the
//! next *epoch*. A batch carries a sequence number, which must be one more
//! than the last applied, so the epoch after batch `n` is `n`. Its changes
//! (set a key to a value, delete a key) are placed into rows of the key's
//! candidate pages ([`Epochs::plan`]); the batch is then appended to the
//! update log and synced, and only then applied ([`Epochs::commit`]). At
//! start-up the log is replayed ([`Epochs::open`]), so nothing acknowledged
//! is lost.
//!
//! Each epoch has a digest: BLAKE3 (key derivation context
//! [`EPOCH_DIGEST_CONTEXT`]) of the previous epoch's digest, the epoch
//! number and every row it changed (page, row, new bytes); epoch `base`'s
//! digest is the snapshot's. Two servers that apply the same batches to the
//! same snapshot have the same digest at every epoch, without hashing the
//! whole table again.
//!
//! The row diffs of the last `window` epochs are kept in a [`History`], so
//! that a server can answer as of an older epoch ([`rewind`]).
//!
//! A server may swap to a new snapshot as one more sequenced step: the new
//! file starts at the swap's sequence number with a fresh log
//! ([`Epochs::create`]), so epoch numbers never repeat across snapshots, and
//! a [`SnapshotDir`] records durably which snapshot is served.

mod grow;
mod history;
mod log;
mod plan;
mod snapshots;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use morphogen_table::{KeyDigest, Layout, PageWrite, Table};

pub use grow::{Grown, grown_table};
pub use history::{EpochDiff, History, RowDiff, Unavailable, rewind};
pub use log::{LOG_HEADER_LEN, Tail, TornTail};
pub use plan::Change;
pub use snapshots::{POINTER_FILE, Pointer, SnapshotDir, log_path};

use crate::log::{UpdateLog, decode_base_label, decode_batch, encode_base_label, encode_batch};
use crate::plan::{Placement, place};

/// Epochs of diffs kept unless configured otherwise.
pub const DEFAULT_WINDOW: u64 = 1024;

/// Bytes of diffs kept unless configured otherwise.
pub const DEFAULT_HISTORY_BYTES: u64 = 1 << 30;

/// Bytes of page images one batch may rewrite unless configured otherwise:
/// 131,072 pages of 4 KiB, more than the server's default change limit
/// can touch.
pub const DEFAULT_BATCH_BYTES: u64 = 512 << 20;

/// What the epochs of a table may hold in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Epochs of diffs kept (at least one): how far back answers reach.
    pub window: u64,
    /// Most bytes the kept diffs may take; past it the oldest epochs are
    /// forgotten before the window says (the window shrinks).
    pub history_bytes: u64,
    /// Most bytes of page images one batch may rewrite (pages it touches ×
    /// page size); a larger batch is refused with [`Error::BatchPages`].
    pub batch_bytes: u64,
}

impl Bounds {
    /// A window of `window` epochs and the default byte bounds.
    pub fn window(window: u64) -> Bounds {
        Bounds { window, history_bytes: DEFAULT_HISTORY_BYTES, batch_bytes: DEFAULT_BATCH_BYTES }
    }
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds::window(DEFAULT_WINDOW)
    }
}

/// Key derivation context of the epoch digest chain; changing it changes
/// every digest after epoch 0.
pub const EPOCH_DIGEST_CONTEXT: &str = "morphogen 2026-11 epoch digest v1";

/// An update batch: the changes of one epoch, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Must be one more than the sequence number of the last batch applied.
    pub sequence: u64,
    /// Applied in order; a later change of the same key wins.
    pub changes: Vec<Change>,
    /// What the epoch is to whoever feeds the table (a block's number and
    /// hash, say), at most [`MAX_LABEL_LEN`] bytes: logged with the batch,
    /// part of the epoch's digest, and published with the epoch. Opaque
    /// here.
    pub label: Option<Vec<u8>>,
}

/// The longest label a batch may carry, in bytes.
pub const MAX_LABEL_LEN: usize = 4096;

/// A batch placed into the table, checked, not yet logged or applied.
pub struct Plan {
    batch: Batch,
    /// The batch as the log holds it.
    encoded: Vec<u8>,
    placement: Placement,
    digest: [u8; 32],
}

impl Plan {
    /// The epoch the batch makes.
    pub fn epoch(&self) -> u64 {
        self.batch.sequence
    }

    /// The pages it rewrites, whole.
    pub fn writes(&self) -> &[PageWrite] {
        &self.placement.writes
    }

    /// Rows it changes.
    pub fn changed_rows(&self) -> usize {
        self.placement.rows.len()
    }
}

/// The epoch state of one table: its current epoch and digest, its record
/// count, its update log and the history of recent diffs.
pub struct Epochs {
    chain: Chain,
    log: UpdateLog,
    base: u64,
}

/// What opening a table's epochs found in its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Batches replayed.
    pub batches: u64,
    /// The unfinished last record a crash left, dropped.
    pub torn: Option<TornTail>,
}

/// The state that every batch advances, whether replayed or new.
struct Chain {
    layout: Layout,
    epoch: u64,
    digest: [u8; 32],
    records: u64,
    history: History,
    /// Most pages one new batch may rewrite.
    batch_pages: usize,
    /// Epochs the history's byte bound forgot before the window did.
    forgotten_for_bytes: u64,
    /// The label of the snapshot's first epoch, if it was swapped in with one.
    base_label: Option<Vec<u8>>,
}

impl Chain {
    /// Plans `batch`, whose log record is `encoded`; `bounded` applies the
    /// page bound (a batch replayed from the log was acknowledged under
    /// whatever bound there was then).
    fn plan(&self, table: &Table, batch: Batch, encoded: Vec<u8>, bounded: bool) -> Result<Plan, Error> {
        if batch.sequence <= self.epoch
            && let Some(applied) = self.history.epoch(batch.sequence)
        {
            // Sent again (a retry after a lost answer): say so, change nothing.
            return Err(if applied.batch == *blake3::hash(&encoded).as_bytes() {
                Error::AlreadyApplied {
                    epoch: applied.epoch,
                    digest: applied.digest,
                    records: applied.records,
                    changed_rows: applied.rows.len(),
                }
            } else {
                Error::OtherBatchApplied { epoch: applied.epoch }
            });
        }
        // A log may name any first epoch, even the last one there is.
        let expected = self.epoch.checked_add(1).ok_or(Error::EpochsExhausted)?;
        if batch.sequence != expected {
            return Err(Error::Sequence { expected, actual: batch.sequence });
        }
        if let Some(label) = &batch.label
            && label.len() > MAX_LABEL_LEN
        {
            return Err(Error::LabelTooLong { len: label.len() });
        }
        let max_pages = if bounded { self.batch_pages } else { usize::MAX };
        let placement = place(table, self.records, &batch.changes, max_pages)?;
        let digest = self.next_digest(batch.sequence, batch.label.as_deref(), &placement);
        Ok(Plan { batch, encoded, placement, digest })
    }

    fn next_digest(&self, epoch: u64, label: Option<&[u8]>, placement: &Placement) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(EPOCH_DIGEST_CONTEXT);
        hasher.update(&self.digest);
        hasher.update(&epoch.to_le_bytes());
        // A label's length first: no label and its bytes read as a row.
        // Unlabelled epochs hash as they did before labels existed.
        if let Some(label) = label {
            hasher.update(b"label");
            hasher.update(&(label.len() as u64).to_le_bytes());
            hasher.update(label);
        }
        // Rows and writes are both in page order.
        let mut writes = placement.writes.iter().peekable();
        for row in &placement.rows {
            while writes.peek().is_some_and(|w| w.index < row.page) {
                writes.next();
            }
            let page = writes.peek().expect("every changed row's page is written");
            hasher.update(&row.page.to_le_bytes());
            hasher.update(&row.row.to_le_bytes());
            hasher.update(&page.bytes[self.layout.row_range(row.row)]);
        }
        *hasher.finalize().as_bytes()
    }

    /// Moves to the plan's epoch; returns the page writes to apply.
    fn advance(&mut self, plan: Plan) -> Vec<PageWrite> {
        let Plan { batch, encoded, placement, digest } = plan;
        self.epoch = batch.sequence;
        self.digest = digest;
        self.records = placement.records;
        self.forgotten_for_bytes += self.history.push(EpochDiff {
            epoch: batch.sequence,
            rows: placement.rows,
            batch: *blake3::hash(&encoded).as_bytes(),
            digest,
            records: placement.records,
            label: batch.label,
            undo: placement.undo,
        });
        placement.writes
    }
}

impl Epochs {
    /// Opens the update log of `table` at `log_path` (creating it if there
    /// is none) and replays it into `table`, keeping the diffs of the last
    /// `window` epochs.
    pub fn open(table: &mut Table, log_path: &Path, window: u64) -> Result<(Epochs, Replayed), Error> {
        Epochs::open_with(table, log_path, Bounds::window(window), Tail::Refuse)
    }

    /// Like [`Epochs::open`], within `bounds`, doing with a damaged last
    /// record what `tail` says.
    pub fn open_with(
        table: &mut Table,
        log_path: &Path,
        bounds: Bounds,
        tail: Tail,
    ) -> Result<(Epochs, Replayed), Error> {
        check(&bounds)?;
        let snapshot = table.digest();
        let mut chain: Option<Chain> = None;
        let mut batches = 0;
        let mut replay = |base: u64, offset: u64, payload: &[u8]| -> Result<(), Error> {
            let record = Record { log_path, base, offset, payload };
            if replay_record(&mut chain, table, &bounds, record)?.is_some() {
                batches += 1;
            }
            Ok(())
        };
        let (log, base, torn) = UpdateLog::open(log_path, &snapshot, 0, tail, &mut replay)?;
        let chain = chain.unwrap_or_else(|| Chain::at_snapshot(table, base, &bounds));
        Ok((Epochs { chain, log, base }, Replayed { batches, torn }))
    }

    /// Replays the update log at `log_path` into `table` (a copy of the
    /// snapshot it belongs to) without changing the log, while a server may
    /// be serving from it: what a larger table of the snapshot's newest
    /// epoch is built from. Returns that epoch and the key of every change
    /// the log holds, in log order, repeats included.
    pub fn replay_read_only(table: &mut Table, log_path: &Path) -> Result<(u64, Vec<KeyDigest>), Error> {
        let snapshot = table.digest();
        let bounds = Bounds::window(1);
        let mut chain: Option<Chain> = None;
        let mut keys = Vec::new();
        let base = UpdateLog::read(log_path, &snapshot, &mut |base, offset, payload| {
            let record = Record { log_path, base, offset, payload };
            if let Some(changed) = replay_record(&mut chain, table, &bounds, record)? {
                keys.extend(changed);
            }
            Ok(())
        })?;
        Ok((chain.map_or(base, |chain| chain.epoch), keys))
    }

    /// Starts the epochs of `table` at epoch `base` with a new, empty update
    /// log at `log_path` (replacing any log there): a snapshot swapped in
    /// at sequence number `base`, whose digest is that epoch's.
    pub fn create(table: &Table, log_path: &Path, base: u64, window: u64) -> Result<Epochs, Error> {
        Epochs::create_with(table, log_path, base, Bounds::window(window))
    }

    /// Like [`Epochs::create`], within `bounds`.
    pub fn create_with(table: &Table, log_path: &Path, base: u64, bounds: Bounds) -> Result<Epochs, Error> {
        Epochs::create_labelled(table, log_path, base, bounds, None)
    }

    /// Like [`Epochs::create_with`], the first epoch labelled `label` (at
    /// most [`MAX_LABEL_LEN`] bytes): logged first, and published as the
    /// epoch's label ([`Epochs::label`]).
    pub fn create_labelled(
        table: &Table,
        log_path: &Path,
        base: u64,
        bounds: Bounds,
        label: Option<Vec<u8>>,
    ) -> Result<Epochs, Error> {
        check(&bounds)?;
        if let Some(label) = &label
            && label.len() > MAX_LABEL_LEN
        {
            return Err(Error::LabelTooLong { len: label.len() });
        }
        let mut log = UpdateLog::create(log_path, &table.digest(), base)?;
        if let Some(label) = &label {
            log.append(&encode_base_label(label))?;
        }
        let chain = Chain { base_label: label, ..Chain::at_snapshot(table, base, &bounds) };
        Ok(Epochs { chain, log, base })
    }

    /// The label of epoch `epoch`, if it is the snapshot's first or in the
    /// history, and has one.
    pub fn label(&self, epoch: u64) -> Option<Vec<u8>> {
        if epoch == self.base {
            return self.chain.base_label.clone();
        }
        self.history().epoch(epoch).and_then(|diff| diff.label.clone())
    }

    /// Places `batch` into `table`, which must be the table as of the
    /// current epoch, and checks it: its sequence number follows the last
    /// one, every value fits, and every new key has a free row. Changes
    /// nothing.
    pub fn plan(&self, table: &Table, batch: Batch) -> Result<Plan, Error> {
        let encoded = encode_batch(&batch);
        self.chain.plan(table, batch, encoded, true)
    }

    /// The batch that, as epoch `sequence`, takes the table's records back
    /// to what they were at epoch `to`: every key the epochs `to + 1 ..
    /// sequence` changed, set back to its value at `to` or deleted, in key
    /// order. It is an ordinary batch (logged, replayed and resent like
    /// any), made from the epochs before `sequence` only, so that the same
    /// request makes the same batch again after it was applied. The rows a
    /// key comes back to may differ from those it had at `to`; its value
    /// does not. Every epoch after `to` must still be in the history.
    pub fn revert_batch(&self, to: u64, sequence: u64, label: Option<Vec<u8>>) -> Result<Batch, Error> {
        let last = sequence.checked_sub(1).filter(|&last| last >= to && last <= self.epoch());
        let Some(last) = last else {
            return Err(Error::RevertRange { to, sequence, current: self.epoch() });
        };
        let mut values: BTreeMap<[u8; 16], Option<Vec<u8>>> = BTreeMap::new();
        for epoch in to + 1..=last {
            let diff = self
                .history()
                .epoch(epoch)
                .ok_or(Error::RevertTooOld { to, oldest: self.history().oldest() })?;
            for change in &diff.undo {
                // The earliest epoch's undo holds the value at `to`.
                values.entry(change.key.0).or_insert_with(|| change.value.clone());
            }
        }
        let changes = values
            .into_iter()
            .map(|(key, value)| Change { key: morphogen_table::KeyDigest(key), value })
            .collect();
        Ok(Batch { sequence, changes, label })
    }

    /// Appends the plan's batch to the log and syncs it, then moves to its
    /// epoch. Returns the pages that the table (and every engine answering
    /// from it) must be given before the next pass. If the log cannot be
    /// written, nothing changes.
    pub fn commit(&mut self, plan: Plan) -> Result<Vec<PageWrite>, Error> {
        self.log.append(&plan.encoded)?;
        Ok(self.chain.advance(plan))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.chain.epoch
    }

    /// The snapshot's first epoch: 0, or the sequence number it was
    /// swapped in at.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The current epoch's digest.
    pub fn digest(&self) -> [u8; 32] {
        self.chain.digest
    }

    /// Records in the table as of the current epoch.
    pub fn records(&self) -> u64 {
        self.chain.records
    }

    /// The diffs of recent epochs; a handle that follows later epochs.
    pub fn history(&self) -> &History {
        &self.chain.history
    }

    /// Bytes in the update log.
    pub fn log_len(&self) -> u64 {
        self.log.len()
    }

    /// Epochs of diffs the history's byte bound has forgotten, since the
    /// epochs were opened, before the window would have: each one makes
    /// the reach of answers as of older epochs shorter than the window.
    pub fn forgotten_for_bytes(&self) -> u64 {
        self.chain.forgotten_for_bytes
    }

    /// Whether the update log takes no more batches: an append failed and
    /// could not be undone, so the file's end is unknown until a restart.
    pub fn log_broken(&self) -> bool {
        self.log.is_broken()
    }
}

/// A record of an update log, where it was read.
struct Record<'a> {
    log_path: &'a Path,
    base: u64,
    offset: u64,
    payload: &'a [u8],
}

/// Applies one record of a log to `table` and `chain` (made at the first
/// record): the first epoch's label, or a batch. Returns the keys a batch
/// changed, `None` for a label.
fn replay_record(
    chain: &mut Option<Chain>,
    table: &mut Table,
    bounds: &Bounds,
    record: Record<'_>,
) -> Result<Option<Vec<KeyDigest>>, Error> {
    let first = chain.is_none();
    let chain = chain.get_or_insert_with(|| Chain::at_snapshot(table, record.base, bounds));
    let corrupt =
        |problem: String| Error::LogCorrupt { path: record.log_path.into(), offset: record.offset, problem };
    // Only the first record may be the first epoch's label.
    if let Some(label) = decode_base_label(record.payload).map_err(|problem| corrupt(problem.to_string()))? {
        if !first {
            return Err(corrupt("a first epoch's label after the first record".to_string()));
        }
        chain.base_label = Some(label);
        return Ok(None);
    }
    let batch = decode_batch(record.payload).map_err(|problem| corrupt(problem.to_string()))?;
    let keys = batch.changes.iter().map(|change| change.key).collect();
    let plan = chain
        .plan(table, batch, record.payload.to_vec(), false)
        .map_err(|error| corrupt(format!("its batch cannot be applied to the table: {error}")))?;
    let writes = chain.advance(plan);
    table.apply(&writes)?;
    table.set_records(chain.records);
    Ok(Some(keys))
}

impl Chain {
    fn at_snapshot(table: &Table, base: u64, bounds: &Bounds) -> Chain {
        let page_size = u64::from(table.layout().page_size());
        Chain {
            layout: table.layout().clone(),
            epoch: base,
            digest: table.digest(),
            records: table.records(),
            history: History::bounded(base, bounds.window, bounds.history_bytes),
            batch_pages: usize::try_from(bounds.batch_bytes / page_size).unwrap_or(usize::MAX),
            forgotten_for_bytes: 0,
            base_label: None,
        }
    }
}

/// Refuses bounds that would keep no epoch or take no batch.
fn check(bounds: &Bounds) -> Result<(), Error> {
    if bounds.window == 0 {
        return Err(Error::Window);
    }
    if bounds.batch_bytes == 0 {
        return Err(Error::BatchBound);
    }
    Ok(())
}

/// Errors of live updates. Messages name sequence numbers, positions in a
/// batch, files and offsets, never keys or values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The batch's sequence number is not the next one.
    #[error("sequence number {actual} is not the next one: expected {expected}")]
    Sequence {
        /// One more than the last applied.
        expected: u64,
        /// The batch's.
        actual: u64,
    },
    /// A new key has no free row in any of its candidate pages.
    #[error("table full: change {change} (0-based) has no free row in its candidate pages; rebuild needed")]
    TableFull {
        /// Position of the change in its batch.
        change: usize,
    },
    /// A value is longer than the table's value size.
    #[error("change {change} (0-based): value is {len} bytes, longer than the value size {value_size}")]
    ValueTooLong {
        /// Position of the change in its batch.
        change: usize,
        /// Its length.
        len: usize,
        /// The table's value size.
        value_size: u32,
    },
    /// The batch was applied already, as epoch `epoch` (within the window):
    /// a batch sent again, nothing changed.
    #[error("batch {epoch} was applied already")]
    AlreadyApplied {
        /// Its epoch.
        epoch: u64,
        /// That epoch's digest.
        digest: [u8; 32],
        /// Records as of that epoch.
        records: u64,
        /// Rows the batch changed.
        changed_rows: usize,
    },
    /// Another batch of the same sequence number was applied.
    #[error("sequence number {epoch} was applied already, with other changes")]
    OtherBatchApplied {
        /// Its epoch.
        epoch: u64,
    },
    /// A revert names an epoch outside the history, or a sequence number
    /// that is not after it.
    #[error("a revert to epoch {to} as epoch {sequence} is not possible at epoch {current}")]
    RevertRange {
        /// The epoch to go back to.
        to: u64,
        /// The revert's sequence number.
        sequence: u64,
        /// The current epoch.
        current: u64,
    },
    /// A revert to an epoch older than the history keeps.
    #[error("epoch {to} is older than the oldest epoch kept ({oldest}): it cannot be reverted to")]
    RevertTooOld {
        /// The epoch to go back to.
        to: u64,
        /// The oldest epoch kept.
        oldest: u64,
    },
    /// The batch's label is longer than [`MAX_LABEL_LEN`].
    #[error("the batch's label is {len} bytes, more than the {MAX_LABEL_LEN} a label may be")]
    LabelTooLong {
        /// Bytes of the label.
        len: usize,
    },
    /// The epoch is the largest number there is: no batch can follow.
    #[error("the epoch is at its largest possible value; no batch can follow (build a new snapshot)")]
    EpochsExhausted,
    /// A batch too large for one log record (1 GiB).
    #[error("the batch is larger than one log record may be (1 GiB)")]
    BatchTooLarge,
    /// A file operation failed.
    #[error("cannot {action} {}: {message}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The kind of failure.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// The log's header is not valid or names another table.
    #[error("{} is not an update log of this table: {problem}", path.display())]
    LogHeader {
        /// The log.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The log is damaged somewhere other than its last record.
    #[error("{} is corrupt at byte {offset}: {problem}", path.display())]
    LogCorrupt {
        /// The log.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// An append failed and could not be undone.
    #[error("{}: an earlier append failed and could not be undone; restart the server to recover", path.display())]
    LogBroken {
        /// The log.
        path: PathBuf,
    },
    /// A batch rewrites more pages than the bound allows; nothing changed.
    #[error(
        "the batch rewrites more than {max_pages} pages ({max_bytes} bytes of page images, this server's limit); \
         send its changes in smaller batches"
    )]
    BatchPages {
        /// The most pages a batch may rewrite.
        max_pages: usize,
        /// The bound in bytes.
        max_bytes: u64,
    },
    /// A page bound of zero bytes.
    #[error("the bound on the bytes a batch rewrites must be more than zero")]
    BatchBound,
    /// An epoch window of zero epochs: every update would strand the
    /// queries in flight.
    #[error("the epoch window must be at least one epoch")]
    Window,
    /// A snapshot file or pointer is unusable.
    #[error("{0}")]
    Snapshot(String),
    /// The table refused a write.
    #[error(transparent)]
    Table(#[from] morphogen_table::Error),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, error: &std::io::Error) -> Error {
        Error::Io { action, path: path.into(), kind: error.kind(), message: error.to_string() }
    }
}
