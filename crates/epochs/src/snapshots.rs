//! The snapshot directory: where a server finds the table files it may be
//! told to swap to, and where it records durably which one it serves.
//!
//! A swap is decided by replacing `current.json` in the directory
//! atomically (written beside it, synced, renamed over it, the directory
//! synced): a server killed at any moment restarts on either the old
//! snapshot with its log or the new one with its own, never a mixture. The
//! pointer names the file, its digest and the epoch it was swapped in at;
//! each snapshot's update log is the file's path with `.log` appended.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Name of the pointer file in a snapshot directory.
pub const POINTER_FILE: &str = "current.json";

/// A directory of table files that a server may swap to.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

/// Which snapshot a server serves, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The table file's name inside the directory.
    pub file: String,
    /// Its digest (BLAKE3 of its pages), hex.
    pub digest: String,
    /// The epoch it was swapped in at: the sequence number of the swap.
    pub epoch: u64,
}

impl SnapshotDir {
    /// The snapshot directory `dir`, which must exist.
    pub fn new(dir: &Path) -> Result<SnapshotDir, Error> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io("read", dir, &e))?;
        if !meta.is_dir() {
            return Err(Error::Snapshot(format!("{} is not a directory", dir.display())));
        }
        Ok(SnapshotDir { dir: dir.into() })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path of the file `name` names: a plain file name (no directory
    /// part, not hidden) of a file that is in the directory.
    pub fn file(&self, name: &str) -> Result<PathBuf, Error> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && Path::new(name).file_name().is_some_and(|file| file == name)
            && !name.contains(['/', '\\']);
        if !plain || name == POINTER_FILE {
            return Err(Error::Snapshot(format!(
                "{name:?} is not a table file name: give the name of a file in the snapshot directory, \
                 without a directory part"
            )));
        }
        let path = self.dir.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(Error::Snapshot(format!("{} is not a file", path.display()))),
            Err(e) => Err(Error::io("read", &path, &e)),
        }
    }

    /// The pointer to the snapshot served now, if a swap ever happened.
    pub fn current(&self) -> Result<Option<Pointer>, Error> {
        let path = self.dir.join(POINTER_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, &e)),
        };
        let pointer: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Snapshot(format!("{} is not a snapshot pointer: {e}", path.display())))?;
        Ok(Some(pointer))
    }

    /// Makes `pointer` the snapshot served, durably: once this returns,
    /// a restart serves it; if it fails, the old pointer stands.
    pub fn set_current(&self, pointer: &Pointer) -> Result<(), Error> {
        let path = self.dir.join(POINTER_FILE);
        let staged = self.dir.join(format!(".{POINTER_FILE}.new"));
        let json = serde_json::to_vec_pretty(pointer).expect("a pointer serializes");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&staged)?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&staged);
            return Err(Error::io("write", &staged, &e));
        }
        std::fs::rename(&staged, &path).map_err(|e| Error::io("replace", &path, &e))?;
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|e| Error::io("sync", &self.dir, &e))
    }
}

/// The update log of the table file at `table`: its path with `.log` appended.
pub fn log_path(table: &Path) -> PathBuf {
    let mut name = table.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}
