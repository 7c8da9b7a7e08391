//! What the client knows of its two servers: their common metadata, and
//! the checks that two servers may be used together.

use std::time::Instant;

use morphogen_layout::Layout;
use morphogen_protocol::Meta;

use crate::Error;

/// What the client knows of the two servers now.
#[derive(Clone)]
pub(crate) struct View {
    /// Their common metadata: `max_batch` the smaller, `epoch` the older.
    pub(crate) meta: Meta,
    pub(crate) layout: Layout,
    pub(crate) read_at: Instant,
    /// Known to be out of date (a server said its snapshot or epoch moved):
    /// read again before the next lookup, however recent.
    pub(crate) stale: bool,
}

impl View {
    /// The common view of two servers' metadata; refuses two servers that
    /// do not serve the same table.
    pub(crate) fn of(a: &Meta, b: &Meta, layout: Layout) -> Result<View, Error> {
        check_same_table(a, b)?;
        let older = if a.epoch <= b.epoch { a } else { b };
        let meta = Meta { max_batch: a.max_batch.min(b.max_batch), ..older.clone() };
        Ok(View { meta, layout, read_at: Instant::now(), stale: false })
    }
}

/// Refuses two servers that do not serve the same snapshot, or whose
/// tables differ at the same epoch.
fn check_same_table(a: &Meta, b: &Meta) -> Result<(), Error> {
    let checks = [
        (a.snapshot_digest == b.snapshot_digest, "snapshot digest"),
        (a.epoch != b.epoch || a.digest == b.digest, "digest of their common epoch"),
        (a.page_size == b.page_size, "page size"),
        (a.row_size == b.row_size, "row size"),
        (a.value_size == b.value_size, "value size"),
        (a.sub_tables == b.sub_tables, "sub-table sizes"),
        (a.hash_seed == b.hash_seed, "hash seed"),
    ];
    match checks.iter().find(|(same, _)| !same) {
        Some(&(_, what)) => Err(Error::Mismatch(what)),
        None => Ok(()),
    }
}

/// Refuses two URLs that reach the same server (the instance ids of their
/// metadata): it would receive both shares of every key.
pub(crate) fn check_two_servers(a: &Meta, b: &Meta) -> Result<(), Error> {
    if !a.instance.is_empty() && a.instance == b.instance {
        return Err(Error::SameServer { instance: b.instance.clone() });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The metadata of a small table of two sub-tables of 8 pages, at epoch 5.
    pub(crate) fn meta() -> Meta {
        Meta {
            protocol_version: morphogen_protocol::PROTOCOL_VERSION,
            digest: "11".repeat(32),
            epoch: 5,
            snapshot_digest: "22".repeat(32),
            oldest_epoch: 0,
            epoch_window: 16,
            page_size: 512,
            row_size: 24,
            value_size: 16,
            sub_tables: vec![8, 8],
            hash_seed: "33".repeat(16),
            records: 10,
            free_rows: 6,
            engine: "cpu".to_string(),
            max_batch: 32,
            instance: "aa".to_string(),
            label: None,
        }
    }

    fn layout() -> Layout {
        Layout::new(512, 16, 2, 8, [0x33; 16]).unwrap()
    }

    #[test]
    fn the_view_of_two_servers_is_the_older_epoch_and_the_smaller_batch() {
        let a = meta();
        let b = Meta { epoch: 7, digest: "44".repeat(32), max_batch: 8, instance: "bb".into(), ..meta() };
        let view = View::of(&a, &b, layout()).unwrap();
        assert_eq!(
            (view.meta.epoch, view.meta.digest.as_str(), view.meta.max_batch),
            (5, &*"11".repeat(32), 8)
        );
        let view = View::of(&b, &a, layout()).unwrap();
        assert_eq!((view.meta.epoch, view.meta.max_batch), (5, 8), "whichever is given first");
    }

    #[test]
    fn rejects_two_servers_of_different_tables() {
        let cases = [
            (Meta { snapshot_digest: "55".repeat(32), ..meta() }, "snapshot digest"),
            (Meta { digest: "66".repeat(32), ..meta() }, "digest of their common epoch"),
            (Meta { page_size: 1024, ..meta() }, "page size"),
            (Meta { row_size: 32, ..meta() }, "row size"),
            (Meta { value_size: 24, ..meta() }, "value size"),
            (Meta { sub_tables: vec![8, 8, 8], ..meta() }, "sub-table sizes"),
            (Meta { hash_seed: "77".repeat(16), ..meta() }, "hash seed"),
        ];
        for (other, what) in cases {
            let error = View::of(&meta(), &other, layout()).err().expect(what);
            assert!(matches!(error, Error::Mismatch(found) if found == what), "{what}: {error}");
        }
        // A later epoch may have another digest: that is not a mismatch.
        View::of(&meta(), &Meta { epoch: 6, digest: "66".repeat(32), ..meta() }, layout()).unwrap();
    }

    #[test]
    fn rejects_one_server_given_twice() {
        let error = check_two_servers(&meta(), &meta()).unwrap_err();
        assert!(matches!(error, Error::SameServer { ref instance } if instance == "aa"), "{error}");
        check_two_servers(&meta(), &Meta { instance: "bb".into(), ..meta() }).unwrap();
        // Servers older than the instance id publish none: nothing to compare.
        let unnamed = Meta { instance: String::new(), ..meta() };
        check_two_servers(&unnamed, &unnamed).unwrap();
    }
}
