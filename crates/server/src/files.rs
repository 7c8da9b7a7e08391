//! Table files on disk for a server that takes snapshot swaps: which file
//! to start on, and loading the files it is told to swap to. The server
//! knows nothing of engines: whoever makes the loader says how an engine is
//! opened over a table.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use morphogen_epochs::{Bounds, Epochs, POINTER_FILE, Pointer, SnapshotDir, log_path};
use morphogen_scan::Engine;
use morphogen_table::{NoProgress, Table, Verify};

use crate::{Error, LoadedSnapshot, SnapshotLoader, TableInfo};

/// Opens an engine over a table loaded for a swap; the error is for the
/// operator. It must be of the kind the server runs (a swap must not move a
/// server from its GPU to its CPU), and hold the table alone.
pub type OpenEngine = dyn Fn(Arc<Table>) -> Result<Box<dyn Engine>, String> + Send + Sync;

/// The snapshot a server starts on: the file named by the directory's
/// pointer once a swap has happened, otherwise the file it was given.
#[derive(Debug)]
pub struct Start {
    /// The table file.
    pub table: PathBuf,
    /// Its update log.
    pub log: PathBuf,
    /// The pointer that named it, to be checked against the file and log
    /// once they are open ([`check_pointer`]).
    pub pointer: Option<Pointer>,
}

/// Which table file to serve: the one the snapshot directory `dir` names,
/// once a swap has happened, and otherwise `db` (with its update log `log`,
/// by default beside it).
pub fn start(
    dir: Option<&SnapshotDir>,
    db: Option<&Path>,
    log: Option<&Path>,
) -> Result<Option<Start>, Error> {
    let pointer = match dir {
        Some(dir) => dir.current().map_err(|error| Error::Config(error.to_string()))?,
        None => None,
    };
    match (pointer, dir) {
        (Some(pointer), Some(dir)) => {
            let table = dir.file(&pointer.file).map_err(|error| {
                Error::Config(format!(
                    "{} names {:?} as the snapshot served (swapped in at epoch {}): {error}",
                    dir.path().join(POINTER_FILE).display(),
                    pointer.file,
                    pointer.epoch
                ))
            })?;
            if db.is_some() {
                tracing::info!(
                    file = %pointer.file,
                    epoch = pointer.epoch,
                    "serving the snapshot last swapped in (the snapshot directory's current.json), not --db"
                );
            }
            Ok(Some(Start { log: log_path(&table), table, pointer: Some(pointer) }))
        }
        _ => Ok(db.map(|db| Start {
            table: db.into(),
            log: log.map_or_else(|| log_path(db), Path::to_path_buf),
            pointer: None,
        })),
    }
}

/// Checks that the table and log opened are what the pointer names.
pub fn check_pointer(pointer: &Pointer, table: &Table, epochs: &Epochs) -> Result<(), Error> {
    let digest = hex::encode(table.digest());
    if digest != pointer.digest {
        return Err(Error::Config(format!(
            "the snapshot directory names {} with digest {}, but the file's digest is {digest}: \
             was it replaced after the swap?",
            pointer.file, pointer.digest
        )));
    }
    if epochs.base() != pointer.epoch {
        return Err(Error::Config(format!(
            "{} was swapped in at epoch {}, but its update log starts at epoch {}: was the log removed?",
            pointer.file,
            pointer.epoch,
            epochs.base()
        )));
    }
    Ok(())
}

/// Loads the table files of a snapshot directory for swaps. It refuses the
/// file served now: its log would be replaced while it answers.
pub struct FileSnapshots {
    dir: SnapshotDir,
    open_engine: Box<OpenEngine>,
    /// What each new snapshot's epochs may hold.
    bounds: Bounds,
    /// The file served now.
    served: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for FileSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSnapshots").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl FileSnapshots {
    /// Swaps to files of `dir`, each with epochs within `bounds` and an
    /// engine from `open_engine`; `served` is the file served now, if any.
    pub fn new(
        dir: SnapshotDir,
        open_engine: Box<OpenEngine>,
        bounds: Bounds,
        served: Option<&Path>,
    ) -> FileSnapshots {
        let served = served.and_then(|path| path.canonicalize().ok());
        FileSnapshots { dir, open_engine, bounds, served: Mutex::new(served) }
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
        self.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SnapshotLoader for FileSnapshots {
    fn load(&self, file: &str, epoch: u64) -> Result<LoadedSnapshot, String> {
        let path = self.dir.file(file).map_err(|error| error.to_string())?;
        let canonical =
            path.canonicalize().map_err(|error| format!("resolving {}: {error}", path.display()))?;
        if self.served().as_ref() == Some(&canonical) {
            return Err(format!("{file} is the snapshot served now"));
        }
        let table = Table::open(&path, Verify::Digest, &NoProgress)
            .map_err(|error| format!("opening {}: {error}", path.display()))?;
        let log = log_path(&path);
        let epochs = Epochs::create_with(&table, &log, epoch, self.bounds)
            .map_err(|error| format!("creating the update log {}: {error}", log.display()))?;
        let info = TableInfo::of(&table);
        // The engine holds the only reference to the table: updates write
        // its pages in place (it refuses them on a shared table).
        let engine = (self.open_engine)(Arc::new(table))?;
        Ok(LoadedSnapshot { file: file.to_string(), table: info, engine, epochs })
    }

    fn commit(&self, loaded: &LoadedSnapshot) -> Result<(), String> {
        let pointer = Pointer {
            file: loaded.file.clone(),
            digest: hex::encode(loaded.table.digest),
            epoch: loaded.epochs.base(),
        };
        self.dir.set_current(&pointer).map_err(|error| error.to_string())?;
        let path = self.dir.path().join(&loaded.file);
        *self.served() = path.canonicalize().ok();
        Ok(())
    }
}
