//! What a table's server publishes: the snapshot it answers from and the
//! epoch it stands at. One value, replaced whole by an update batch or a
//! swap on the scan thread; each request reads the one in place when it
//! arrives, so its checks and its metadata agree.

use morphogen_epochs::{Epochs, History};
use morphogen_protocol::{EpochEntry, EpochList, Meta, PROTOCOL_VERSION};

use crate::TableInfo;

/// The snapshot served and its current epoch.
#[derive(Clone, Debug)]
pub(crate) struct Published {
    /// The table as of [`Published::epoch`]: its shape, digest and records.
    pub(crate) table: TableInfo,
    /// The epoch passes answer from now.
    pub(crate) epoch: u64,
    /// The snapshot's first epoch; no two snapshots a server serves share one.
    pub(crate) base: u64,
    /// The snapshot's digest at its first epoch.
    pub(crate) snapshot_digest: [u8; 32],
    /// Diffs of its recent epochs; `None` for a table that takes no updates.
    pub(crate) history: Option<History>,
    /// The name of the engine answering.
    pub(crate) engine: &'static str,
    /// Most queries one request may hold.
    pub(crate) max_batch: usize,
    /// The label of the batch that made the current epoch.
    pub(crate) label: Option<serde_json::Value>,
    /// The label of the snapshot's first epoch, if it was swapped in with one.
    pub(crate) base_label: Option<serde_json::Value>,
}

impl Published {
    /// The snapshot `table`, answered by the engine `engine`, standing where
    /// `epochs` stands (at epoch 0 for a table without updates).
    pub(crate) fn new(
        table: &TableInfo,
        engine: &'static str,
        epochs: Option<&Epochs>,
        max_batch: usize,
    ) -> Published {
        let snapshot = Published {
            table: table.clone(),
            epoch: 0,
            base: 0,
            snapshot_digest: table.digest,
            history: epochs.map(|epochs| epochs.history().clone()),
            engine,
            max_batch,
            label: None,
            base_label: epochs.and_then(|epochs| label_json(epochs.label(epochs.base()).as_deref())),
        };
        match epochs {
            Some(epochs) => Published { base: epochs.base(), ..snapshot.at(epochs) },
            None => snapshot,
        }
    }

    /// The same snapshot at the epoch `epochs` (its own) stands at now.
    pub(crate) fn at(&self, epochs: &Epochs) -> Published {
        let table = TableInfo { digest: epochs.digest(), records: epochs.records(), ..self.table.clone() };
        let epoch = epochs.epoch();
        let label = label_json(epochs.label(epoch).as_deref());
        Published { table, epoch, label, ..self.clone() }
    }

    /// Rows no record holds, as of the current epoch.
    pub(crate) fn free_rows(&self) -> u64 {
        let layout = &self.table.layout;
        (layout.total_pages() * u64::from(layout.rows_per_page())).saturating_sub(self.table.records)
    }

    /// `/v1/meta` for the server `instance`, answering as of epochs within
    /// `rewind_rows` changed rows.
    pub(crate) fn meta(&self, rewind_rows: usize, instance: &str) -> Meta {
        let layout = &self.table.layout;
        Meta {
            protocol_version: PROTOCOL_VERSION,
            digest: hex::encode(self.table.digest),
            epoch: self.epoch,
            snapshot_digest: hex::encode(self.snapshot_digest),
            oldest_epoch: self.oldest_epoch(rewind_rows),
            epoch_window: self.history.as_ref().map_or(0, History::window),
            page_size: layout.page_size(),
            row_size: layout.row_size(),
            value_size: layout.value_size(),
            sub_tables: vec![layout.pages_per_table(); usize::from(layout.choices())],
            hash_seed: hex::encode(layout.seed()),
            records: self.table.records,
            free_rows: self.free_rows(),
            engine: self.engine.to_string(),
            max_batch: self.max_batch,
            instance: instance.to_string(),
            label: self.label.clone(),
        }
    }

    /// The epochs a query may name, from `from` (or the oldest) on, at most
    /// `most` of them, for a server answering within `rewind_rows`.
    pub(crate) fn epochs(&self, from: u64, rewind_rows: usize, most: usize) -> EpochList {
        let first = from.max(self.oldest_epoch(rewind_rows));
        let entries = (first..=self.epoch).take(most).filter_map(|epoch| {
            if epoch == self.base {
                let digest = hex::encode(self.snapshot_digest);
                return Some(EpochEntry { epoch, digest, label: self.base_label.clone() });
            }
            let diff = self.history.as_ref()?.epoch(epoch)?;
            Some(EpochEntry {
                epoch,
                digest: hex::encode(diff.digest),
                label: label_json(diff.label.as_deref()),
            })
        });
        EpochList { epochs: entries.collect(), current: self.epoch }
    }

    /// The oldest epoch a query may name: within the window, and no more
    /// than `rewind_rows` changed rows back.
    pub(crate) fn oldest_epoch(&self, rewind_rows: usize) -> u64 {
        let current = self.epoch;
        self.history
            .as_ref()
            .map_or(current, |history| history.oldest_within(rewind_rows).max(history.oldest()).min(current))
    }
}

/// A label as the server publishes it: the JSON it was sent as (the update
/// route takes JSON labels only).
fn label_json(label: Option<&[u8]>) -> Option<serde_json::Value> {
    label.and_then(|bytes| serde_json::from_slice(bytes).ok())
}
