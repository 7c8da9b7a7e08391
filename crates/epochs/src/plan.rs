//! Placing a batch of changes into a table: which rows they rewrite, the
//! new page images, the row diffs an as-of answer needs, and the epoch's
//! digest. Placement is deterministic, so two servers given the same table
//! and the same batches write the same bytes.

use std::collections::BTreeMap;

use morphogen_table::{KeyDigest, Layout, PageWrite, TAG_LEN, Table};

use crate::Error;
use crate::history::RowDiff;

/// One change of an update batch: set `key` to `value`, or delete it.
///
/// A key is held as its [`KeyDigest`], which is all a table stores of it
/// (as a tag), so neither the log nor the history ever holds a raw key.
#[derive(Clone, PartialEq, Eq)]
pub struct Change {
    /// The key's digest.
    pub key: KeyDigest,
    /// The new value (zero-padded to the value size when stored), or `None`
    /// to delete the key.
    pub value: Option<Vec<u8>>,
}

impl Change {
    /// Sets `key` to `value`.
    pub fn set(key: &[u8], value: &[u8]) -> Change {
        Change { key: KeyDigest::of(key), value: Some(value.to_vec()) }
    }

    /// Deletes `key` (nothing happens if it is absent).
    pub fn delete(key: &[u8]) -> Change {
        Change { key: KeyDigest::of(key), value: None }
    }
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and values are not for logs.
        f.debug_struct("Change").field("delete", &self.value.is_none()).finish_non_exhaustive()
    }
}

/// What a batch does to a table, computed before anything is written.
pub(crate) struct Placement {
    /// The new image of every page whose bytes change, by index.
    pub(crate) writes: Vec<PageWrite>,
    /// Every row whose bytes change, in page and row order.
    pub(crate) rows: Vec<RowDiff>,
    /// Records in the table afterwards.
    pub(crate) records: u64,
    /// What undoes the batch: each key it changes, once, set back to its
    /// value before the batch (zero-padded, as stored) or deleted if it
    /// was absent, in the order of the keys' first changes.
    pub(crate) undo: Vec<Change>,
}

/// Places `changes` into `table` (which holds `records` records), in order.
///
/// An existing key's row is rewritten in place (a deletion zeroes it); a new
/// key goes into the first free row of its candidate pages, in sub-table
/// order; a deleted key that is absent changes nothing. If any new key finds
/// no free row, the whole batch is refused with [`Error::TableFull`]; if it
/// would rewrite more than `max_pages` pages, with [`Error::BatchPages`].
pub(crate) fn place(
    table: &Table,
    records: u64,
    changes: &[Change],
    max_pages: usize,
) -> Result<Placement, Error> {
    let layout = table.layout();
    let value_size = layout.value_size() as usize;
    // Pages touched so far, as they will be after the batch.
    let mut images: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut records = records;
    let mut undo = Vec::new();
    let mut undone = std::collections::BTreeSet::new();
    for (position, change) in changes.iter().enumerate() {
        if let Some(value) = &change.value
            && value.len() > value_size
        {
            return Err(Error::ValueTooLong {
                change: position,
                len: value.len(),
                value_size: layout.value_size(),
            });
        }
        let tag = layout.tag(&change.key);
        let candidates = candidate_pages(layout, &change.key);
        // The first candidate row holding `wanted` as its tag, in the
        // pages as this batch has left them so far.
        let first_row = |wanted: u64| {
            candidates.iter().find_map(|&index| {
                let page = images.get(&index).map_or_else(|| table.page_at(index), Vec::as_slice);
                row_where(layout, page, wanted).map(|row| (index, row))
            })
        };
        let existing = first_row(tag);
        if undone.insert(change.key.0) {
            let before = existing.map(|(index, row)| {
                let page = images.get(&index).map_or_else(|| table.page_at(index), Vec::as_slice);
                page[layout.row_range(row)][TAG_LEN as usize..].to_vec()
            });
            undo.push(Change { key: change.key, value: before });
        }
        let (index, row) = match (existing, &change.value) {
            (Some(found), _) => found,
            (None, None) => continue,
            // Tag 0 marks a free row.
            (None, Some(_)) => first_row(0).ok_or(Error::TableFull { change: position })?,
        };
        if images.len() >= max_pages && !images.contains_key(&index) {
            let page_size = u64::from(layout.page_size());
            return Err(Error::BatchPages { max_pages, max_bytes: max_pages as u64 * page_size });
        }
        let page = images.entry(index).or_insert_with(|| table.page_at(index).to_vec());
        let bytes = &mut page[layout.row_range(row)];
        match &change.value {
            Some(value) => {
                records += u64::from(existing.is_none());
                bytes[..TAG_LEN as usize].copy_from_slice(&tag.to_le_bytes());
                let stored = &mut bytes[TAG_LEN as usize..];
                stored[..value.len()].copy_from_slice(value);
                stored[value.len()..].fill(0);
            }
            None => {
                records -= 1;
                bytes.fill(0);
            }
        }
    }
    Ok(Placement { undo, ..diff(table, images, records) })
}

/// The key's candidate pages as indices into the whole table.
fn candidate_pages(layout: &Layout, key: &KeyDigest) -> Vec<u64> {
    let pages_per_table = layout.pages_per_table();
    let candidates = layout.locate(key);
    (0u64..).zip(candidates.as_slice()).map(|(sub_table, &page)| sub_table * pages_per_table + page).collect()
}

/// The first row of `page` whose tag is `tag`.
fn row_where(layout: &Layout, page: &[u8], tag: u64) -> Option<u32> {
    let rows = layout.rows(page).expect("table pages have the page size");
    (0u32..).zip(rows).find_map(|(row, (row_tag, _))| (row_tag == tag).then_some(row))
}

/// Compares each touched page with the table's and keeps the rows and pages
/// that really change (a value set to what it was changes nothing).
fn diff(table: &Table, images: BTreeMap<u64, Vec<u8>>, records: u64) -> Placement {
    let layout = table.layout();
    let mut writes = Vec::with_capacity(images.len());
    let mut rows = Vec::new();
    for (index, image) in images {
        let old = table.page_at(index);
        let before = rows.len();
        for row in 0..layout.rows_per_page() {
            let range = layout.row_range(row);
            if old[range.clone()] != image[range.clone()] {
                let xor = old[range.clone()].iter().zip(&image[range]).map(|(a, b)| a ^ b).collect();
                rows.push(RowDiff { page: index, row, xor });
            }
        }
        if rows.len() > before {
            writes.push(PageWrite { index, bytes: image });
        }
    }
    Placement { writes, rows, records, undo: Vec::new() }
}
