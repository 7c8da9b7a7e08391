//! A larger table of a snapshot's newest epoch, with one more batch in it:
//! how a table that a batch does not fit grows. Two servers that hold the
//! same epoch and are given the same batch and size build byte-identical
//! tables, so the grown table is a snapshot both can swap to at the batch's
//! sequence number.

use std::collections::BTreeMap;

use morphogen_table::{BuildOptions, KeyDigest, Progress, Table, build_digested};

use crate::{Change, Error};

/// A grown table and the key list that lets it grow again.
pub struct Grown {
    /// The new table.
    pub table: Table,
    /// The digests of the keys it holds, ascending.
    pub keys: Vec<KeyDigest>,
}

/// Builds a table of `pages_per_table` pages a sub-table (more if placement
/// needs them), with the page size, value size and choices of `table`, of
/// the records `table` holds and then `changes` applied in order (a later
/// change of a key wins; a deletion drops it). `keys` must name every key
/// `table` may hold (its snapshot's key list and the keys of every batch
/// since, in any order, repeats allowed); a key named but absent is left
/// out. The seed follows from the keys, as for any build.
pub fn grown_table(
    table: &Table,
    mut keys: Vec<KeyDigest>,
    changes: &[Change],
    pages_per_table: u64,
    progress: &dyn Progress,
) -> Result<Grown, Error> {
    let layout = table.layout();
    let value_size = layout.value_size();
    let mut latest: BTreeMap<KeyDigest, Option<&[u8]>> = BTreeMap::new();
    for (position, change) in changes.iter().enumerate() {
        if let Some(value) = &change.value
            && value.len() > value_size as usize
        {
            return Err(Error::ValueTooLong { change: position, len: value.len(), value_size });
        }
        latest.insert(change.key, change.value.as_deref());
    }
    keys.sort_unstable();
    keys.dedup();
    let mut records: Vec<(KeyDigest, &[u8])> = Vec::with_capacity(keys.len() + latest.len());
    let mut held =
        keys.iter().filter(|key| !latest.contains_key(key)).filter_map(|key| Some((*key, table.find(key)?)));
    let mut changed = latest.iter().filter_map(|(key, value)| Some((*key, (*value)?)));
    // Both ascending and disjoint: merge them into one ascending list.
    let (mut a, mut b) = (held.next(), changed.next());
    loop {
        match (a, b) {
            (Some(x), Some(y)) if x.0 < y.0 => {
                records.push(x);
                a = held.next();
            }
            (_, Some(y)) => {
                records.push(y);
                b = changed.next();
            }
            (Some(x), None) => {
                records.push(x);
                a = held.next();
            }
            (None, None) => break,
        }
    }
    let options = BuildOptions {
        page_size: layout.page_size(),
        value_size: Some(value_size),
        choices: layout.choices(),
        seed: None,
        headroom_percent: 0,
        min_capacity: 0,
        pages_per_table: Some(pages_per_table),
    };
    let table = build_digested(&records[..], &options, progress)?;
    Ok(Grown { table, keys: records.into_iter().map(|(key, _)| key).collect() })
}
