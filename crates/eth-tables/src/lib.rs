//! Writing an Ethereum state's three tables (`morphogen-eth`'s records, in
//! its [`TABLE_SHAPES`]) and their manifest into a directory.

use std::path::Path;

use morphogen_eth::{
    Account, Chain, Error, MANIFEST_FILE, Manifest, TABLE_NAMES, TABLE_SHAPES, TableRecords,
};
use morphogen_table::{BuildOptions, KeyDigest, Progress, build, keys_path, write_keys};

/// Builds the tables of `accounts` at `chain` into `dir` (created if
/// missing): `accounts.mgdb`, `storage.mgdb`, `code.mgdb` (each with its key list,
/// `accounts.keys` and so on) and the manifest
/// `eth.json`, which `morphogen serve --tables` reads. Each table has room
/// for `headroom_percent` percent more records than it holds, and for its
/// shape's `min_records` at least (the chain grows as it is followed). Deterministic: the same state gives
/// byte-identical files.
pub fn write_tables(
    accounts: &[Account],
    chain: Chain,
    headroom_percent: u32,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, Error> {
    let records = TableRecords::of(accounts)?;
    let written = |what: &str, error: &dyn std::fmt::Display| Error::Write(format!("{what}: {error}"));
    std::fs::create_dir_all(dir).map_err(|e| written(&dir.display().to_string(), &e))?;
    let sets = [&records.accounts, &records.storage, &records.code];
    let mut counts = [0u64; 3];
    for (((name, records), shape), count) in TABLE_NAMES.iter().zip(sets).zip(TABLE_SHAPES).zip(&mut counts) {
        let value_size = Some(shape.value_size as u32);
        let options = BuildOptions {
            page_size: shape.page_size,
            value_size,
            choices: 2,
            seed: None,
            headroom_percent,
            min_capacity: shape.min_records,
            pages_per_table: None,
        };
        let table = build(&records[..], &options, progress)
            .map_err(|e| written(&format!("building the {name} table"), &e))?;
        let path = dir.join(format!("{name}.mgdb"));
        table.write(&path).map_err(|e| written(&path.display().to_string(), &e))?;
        // The key list, so that a server can grow the table when the chain fills it.
        let keys = keys_path(&path);
        let mut digests: Vec<KeyDigest> = records.iter().map(|(key, _)| KeyDigest::of(key)).collect();
        write_keys(&keys, &mut digests).map_err(|e| written(&keys.display().to_string(), &e))?;
        *count = table.records();
        if *count != records.len() as u64 {
            return Err(Error::Write(format!("the {name} table holds {count} of {} records", records.len())));
        }
    }
    let manifest = Manifest::new(chain, counts);
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest is JSON") + "\n";
    std::fs::write(&path, text).map_err(|e| written(&path.display().to_string(), &e))?;
    Ok(manifest)
}
