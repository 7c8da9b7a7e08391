//! The key list of a table file: the digests of the keys it holds, so that
//! a server can rebuild the table larger from its own rows (a table keeps
//! only a tag of each key, too little to place it in a table of another
//! size). The list lies beside the table, `X.mgdb` → `X.keys`; a table
//! without one serves as well but cannot grow.
//!
//! Format, integers little-endian (docs/FORMAT.md has the same table):
//!
//! | offset | size   | field                                  |
//! |--------|--------|----------------------------------------|
//! | 0      | 8      | magic `MGKEYS\r\n`                     |
//! | 8      | 8      | count `n`                              |
//! | 16     | 32     | BLAKE3 of the digests                  |
//! | 48     | 16 · n | the key digests, ascending, no repeats |

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use morphogen_layout::KeyDigest;

use crate::Error;
use crate::file::write_atomically;

/// The key list's first 8 bytes.
pub const KEYS_MAGIC: [u8; 8] = *b"MGKEYS\r\n";

/// Bytes before the first digest.
const KEYS_HEADER_LEN: usize = 48;

/// The key list of the table file at `table`: `X.mgdb` → `X.keys`.
pub fn keys_path(table: &Path) -> PathBuf {
    table.with_extension("keys")
}

fn sum(digests: &[KeyDigest]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for digest in digests {
        hasher.update(&digest.0);
    }
    hasher.finalize()
}

/// Writes `digests` (sorted here) as the key list at `path`, atomically.
pub fn write_keys(path: &Path, digests: &mut [KeyDigest]) -> Result<(), Error> {
    digests.sort_unstable();
    if digests.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(Error::InvalidHeader {
            path: path.into(),
            problem: "a key list cannot name a key twice".to_string(),
        });
    }
    let digests = &*digests;
    write_atomically(path, &mut |file, tmp| {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let write = |out: &mut BufWriter<_>, bytes: &[u8]| {
            out.write_all(bytes).map_err(|e| Error::io("write", tmp, &e))
        };
        write(&mut out, &KEYS_MAGIC)?;
        write(&mut out, &(digests.len() as u64).to_le_bytes())?;
        write(&mut out, sum(digests).as_bytes())?;
        for digest in digests {
            write(&mut out, &digest.0)?;
        }
        out.flush().map_err(|e| Error::io("write", tmp, &e))
    })
}

/// Reads the key list at `path`, checking its length, order and checksum.
pub fn read_keys(path: &Path) -> Result<Vec<KeyDigest>, Error> {
    let invalid = |problem: &str| Error::InvalidHeader { path: path.into(), problem: problem.to_string() };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("open", path, &e))?;
    let mut header = [0u8; KEYS_HEADER_LEN];
    file.read_exact(&mut header).map_err(|e| Error::io("read", path, &e))?;
    if header[..8] != KEYS_MAGIC {
        return Err(invalid("not a key list (wrong magic)"));
    }
    let count = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let expected = KEYS_HEADER_LEN as u64 + count.saturating_mul(16);
    let actual = file.metadata().map_err(|e| Error::io("read", path, &e))?.len();
    if actual != expected {
        return Err(Error::FileLength { path: path.into(), expected, actual });
    }
    let mut bytes = vec![0u8; (count * 16) as usize];
    file.read_exact(&mut bytes).map_err(|e| Error::io("read", path, &e))?;
    let digests: Vec<KeyDigest> =
        bytes.chunks_exact(16).map(|chunk| KeyDigest(chunk.try_into().expect("16 bytes"))).collect();
    if sum(&digests).as_bytes()[..] != header[16..48] {
        return Err(invalid("the digests do not match the key list's checksum: the file is corrupt"));
    }
    if digests.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(invalid("the digests are not in ascending order"));
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_list_reads_back_sorted_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = keys_path(&dir.path().join("t.mgdb"));
        assert_eq!(path.file_name().unwrap(), "t.keys");
        let mut digests: Vec<KeyDigest> = (0..1000u32).map(|i| KeyDigest::of(&i.to_le_bytes())).collect();
        write_keys(&path, &mut digests.clone()).unwrap();
        digests.sort_unstable();
        assert_eq!(read_keys(&path).unwrap(), digests);

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[KEYS_HEADER_LEN + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_keys(&path), Err(Error::InvalidHeader { .. })));
        std::fs::write(&path, &bytes[..bytes.len() - 16]).unwrap();
        assert!(matches!(read_keys(&path), Err(Error::FileLength { .. })));
        let twice = [digests[0], digests[0]];
        assert!(write_keys(&path, &mut twice.clone()).is_err());
    }
}
