//! The row diffs of recent epochs, and how an answer is taken back to an
//! older epoch with them.
//!
//! A server's answer for sub-table `j` is the XOR of the pages its key
//! selects. Between epochs `e` and `now` a page changes by the XOR of its
//! row diffs (old ⊕ new), so
//! `answer(e) = answer(now) ⊕ (diffs of epochs e+1..=now on selected pages)`.
//! The server evaluates its own key only at the pages that changed: this
//! needs nothing the pass did not already have, and reveals nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};

use morphogen_dpf::Key;
use morphogen_table::Layout;

/// One row that an epoch changed.
#[derive(Clone, PartialEq, Eq)]
pub struct RowDiff {
    /// The page's index in the whole table (sub-table after sub-table).
    pub page: u64,
    /// The row within the page.
    pub row: u32,
    /// Old row ⊕ new row, one row long.
    pub xor: Vec<u8>,
}

impl std::fmt::Debug for RowDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowDiff").field("page", &self.page).field("row", &self.row).finish_non_exhaustive()
    }
}

/// The rows one epoch changed, in page and row order, and what the epoch
/// was made of.
#[derive(Debug)]
pub struct EpochDiff {
    /// The epoch these changes made.
    pub epoch: u64,
    /// Its changed rows.
    pub rows: Vec<RowDiff>,
    /// BLAKE3 of the batch as logged: a batch sent again is known by it.
    pub batch: [u8; 32],
    /// The epoch's digest.
    pub digest: [u8; 32],
    /// Records in the table as of the epoch.
    pub records: u64,
    /// The batch's label ([`crate::Batch::label`]).
    pub label: Option<Vec<u8>>,
    /// What undoes the epoch: each key it changed set back to its value
    /// before (or deleted), in the order of the keys' first changes.
    pub undo: Vec<crate::Change>,
}

/// The diffs of the last `window` epochs, shared between the thread that
/// applies updates and the ones that answer as of older epochs.
#[derive(Clone, Debug)]
pub struct History {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug)]
struct Inner {
    window: u64,
    /// Most bytes the kept diffs may take.
    max_bytes: u64,
    /// Bytes the kept diffs take ([`EpochDiff::bytes`]).
    bytes: u64,
    current: u64,
    /// Diffs of epochs `current - diffs.len() + 1 ..= current`.
    diffs: VecDeque<Arc<EpochDiff>>,
}

impl EpochDiff {
    /// The memory it takes, about.
    pub fn bytes(&self) -> u64 {
        let row = std::mem::size_of::<RowDiff>() as u64;
        let change = std::mem::size_of::<crate::Change>() as u64;
        std::mem::size_of::<EpochDiff>() as u64
            + self.rows.iter().map(|r| row + r.xor.len() as u64).sum::<u64>()
            + self.undo.iter().map(|c| change + c.value.as_ref().map_or(0, |v| v.len() as u64)).sum::<u64>()
            + self.label.as_ref().map_or(0, |label| label.len() as u64)
    }
}

/// An epoch this history cannot answer as of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Older than the window (or than the snapshot).
    #[error("epoch {wanted} is older than the oldest epoch available, {oldest}")]
    TooOld {
        /// Epoch asked for.
        wanted: u64,
        /// The oldest epoch still available.
        oldest: u64,
    },
    /// Newer than the epoch answered from.
    #[error("epoch {wanted} is newer than epoch {current}")]
    Ahead {
        /// Epoch asked for.
        wanted: u64,
        /// The epoch answered from.
        current: u64,
    },
}

impl History {
    /// An empty history at epoch `base` (a snapshot's first epoch), keeping
    /// the diffs of up to `window` epochs.
    pub fn new(base: u64, window: u64) -> History {
        History::bounded(base, window, u64::MAX)
    }

    /// Like [`History::new`], keeping diffs of at most `max_bytes` bytes
    /// together: past it the oldest are forgotten, and the window is shorter.
    pub fn bounded(base: u64, window: u64, max_bytes: u64) -> History {
        let inner = Inner { window, max_bytes, bytes: 0, current: base, diffs: VecDeque::new() };
        History { inner: Arc::new(RwLock::new(inner)) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Writers only push and pop whole entries: a poisoned lock holds a
        // consistent history.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest epoch.
    pub fn current(&self) -> u64 {
        self.read().current
    }

    /// Epochs of diffs kept.
    pub fn window(&self) -> u64 {
        self.read().window
    }

    /// Bytes the kept diffs take, about.
    pub fn bytes(&self) -> u64 {
        self.read().bytes
    }

    /// Epochs of diffs kept now: the window, or fewer at the start of a
    /// snapshot or where the byte bound forgot some.
    pub fn kept(&self) -> u64 {
        self.read().diffs.len() as u64
    }

    /// The oldest epoch an answer can be taken back to now.
    pub fn oldest(&self) -> u64 {
        let inner = self.read();
        inner.current - inner.diffs.len() as u64
    }

    /// The diff of `epoch`, if it is within the window.
    pub fn epoch(&self, epoch: u64) -> Option<Arc<EpochDiff>> {
        let inner = self.read();
        let oldest = inner.current - inner.diffs.len() as u64;
        if epoch <= oldest || epoch > inner.current {
            return None;
        }
        inner.diffs.get((epoch - oldest - 1) as usize).cloned()
    }

    /// The oldest epoch an answer can be taken back to by rewinding at
    /// most `rows` changed rows: the window, shortened where recent epochs
    /// changed many rows.
    pub fn oldest_within(&self, rows: usize) -> u64 {
        let inner = self.read();
        let mut oldest = inner.current;
        let mut total = 0usize;
        for diff in inner.diffs.iter().rev() {
            total = total.saturating_add(diff.rows.len());
            if total > rows {
                break;
            }
            oldest = diff.epoch - 1;
        }
        oldest
    }

    /// Adds the newest epoch's diff, which must be `current + 1`, and
    /// forgets those past the window or past the byte bound (the newest is
    /// always kept). Returns how many the byte bound forgot.
    pub(crate) fn push(&self, diff: EpochDiff) -> u64 {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        debug_assert_eq!(diff.epoch, inner.current + 1, "epochs are pushed in order");
        inner.current = diff.epoch;
        inner.bytes += diff.bytes();
        inner.diffs.push_back(Arc::new(diff));
        let mut forgotten_for_bytes = 0;
        loop {
            let over_window = inner.diffs.len() as u64 > inner.window;
            let over_bytes = inner.bytes > inner.max_bytes && inner.diffs.len() > 1;
            if !(over_window || over_bytes) {
                break;
            }
            forgotten_for_bytes += u64::from(!over_window);
            let oldest = inner.diffs.pop_front().expect("more than one diff");
            inner.bytes -= oldest.bytes();
        }
        forgotten_for_bytes
    }

    /// The diffs that take an answer from epoch `to` back to epoch `wanted`:
    /// those of epochs `wanted + 1 ..= to`.
    pub fn between(&self, wanted: u64, to: u64) -> Result<Vec<Arc<EpochDiff>>, Unavailable> {
        let inner = self.read();
        if wanted > to || to > inner.current {
            return Err(Unavailable::Ahead { wanted, current: to.min(inner.current) });
        }
        let oldest = inner.current - inner.diffs.len() as u64;
        if wanted < oldest {
            return Err(Unavailable::TooOld { wanted, oldest });
        }
        // diffs[i] is epoch oldest + 1 + i.
        let first = (wanted - oldest) as usize;
        let last = (to - oldest) as usize;
        Ok(inner.diffs.range(first..last).cloned().collect())
    }
}

/// Takes one query's answer (`choices` pages, sub-table after sub-table)
/// back through `diffs`: XORs in every changed row of a page that the
/// query's own key for that page's sub-table selects.
pub fn rewind(
    layout: &Layout,
    keys: &[Key],
    answer: &mut [u8],
    diffs: &[Arc<EpochDiff>],
) -> Result<(), morphogen_dpf::Error> {
    let page_size = layout.page_size() as usize;
    let pages_per_table = layout.pages_per_table();
    debug_assert_eq!(answer.len(), keys.len() * page_size);
    // A page often changes in several epochs: evaluate each point once.
    let mut selected: HashMap<u64, bool> = HashMap::new();
    for diff in diffs {
        for row in &diff.rows {
            let sub_table = (row.page / pages_per_table) as usize;
            let chosen = match selected.get(&row.page) {
                Some(&chosen) => chosen,
                None => {
                    let chosen = keys[sub_table].eval_point(row.page % pages_per_table)?;
                    selected.insert(row.page, chosen);
                    chosen
                }
            };
            if chosen {
                let start = sub_table * page_size + layout.row_range(row.row).start;
                for (byte, change) in answer[start..start + row.xor.len()].iter_mut().zip(&row.xor) {
                    *byte ^= change;
                }
            }
        }
    }
    Ok(())
}
