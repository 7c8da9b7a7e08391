//! `serve --snapshot-dir`: which table file a server serves, and loading
//! the files it is told to swap to.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use morphogen_epochs::{Bounds, Epochs, Pointer, SnapshotDir, log_path};
use morphogen_server::{LoadedSnapshot, SnapshotLoader, TableInfo};
use morphogen_table::{NoProgress, Table, Verify};

use crate::engine::{self, EngineChoice, TableSource};

/// The snapshot a server starts on: the file named by the directory's
/// pointer once a swap has happened, otherwise `--db`.
pub struct Start {
    /// The table file.
    pub table: PathBuf,
    /// Its update log.
    pub log: PathBuf,
    /// The pointer that named it, to be checked against the file and log.
    pub pointer: Option<Pointer>,
}

/// Which table file to serve from `db` (with its log `log`, if given) and
/// the snapshot directory `dir`.
pub fn start(
    dir: Option<&SnapshotDir>,
    db: Option<&Path>,
    log: Option<&Path>,
) -> anyhow::Result<Option<Start>> {
    let pointer = match dir {
        Some(dir) => dir.current()?,
        None => None,
    };
    match (pointer, dir) {
        (Some(pointer), Some(dir)) => {
            let table = dir.file(&pointer.file).with_context(|| {
                format!(
                    "{} names {:?} as the snapshot served (swapped in at epoch {})",
                    dir.path().join(morphogen_epochs::POINTER_FILE).display(),
                    pointer.file,
                    pointer.epoch
                )
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
pub fn check_pointer(pointer: &Pointer, table: &Table, epochs: &Epochs) -> anyhow::Result<()> {
    let digest = hex::encode(table.digest());
    if digest != pointer.digest {
        bail!(
            "the snapshot directory names {} with digest {}, but the file's digest is {digest}: \
             was it replaced after the swap?",
            pointer.file,
            pointer.digest
        );
    }
    if epochs.base() != pointer.epoch {
        bail!(
            "{} was swapped in at epoch {}, but its update log starts at epoch {}: was the log removed?",
            pointer.file,
            pointer.epoch,
            epochs.base()
        );
    }
    Ok(())
}

/// Loads the table files of a snapshot directory for swaps, with an engine
/// of the kind the server runs.
#[derive(Debug)]
pub struct FileSnapshots {
    dir: SnapshotDir,
    engine: EngineChoice,
    max_batch: usize,
    /// What each new snapshot's epochs may hold.
    bounds: Bounds,
    /// The file served now, which a swap may not name: its log would be
    /// replaced while it answers.
    served: Mutex<Option<PathBuf>>,
}

impl FileSnapshots {
    /// Swaps to files of `dir`, serving them with `engine` (a kind, not
    /// `auto`: a swap must not move a server from its GPU to its CPU).
    pub fn new(
        dir: SnapshotDir,
        engine: EngineChoice,
        max_batch: usize,
        bounds: Bounds,
        served: Option<&Path>,
    ) -> FileSnapshots {
        debug_assert!(engine != EngineChoice::Auto);
        let served = served.and_then(|path| path.canonicalize().ok());
        FileSnapshots { dir, engine, max_batch, bounds, served: Mutex::new(served) }
    }

    fn load_file(&self, file: &str, epoch: u64) -> anyhow::Result<LoadedSnapshot> {
        let path = self.dir.file(file)?;
        let canonical = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
        if self.served.lock().expect("served lock").as_ref() == Some(&canonical) {
            bail!("{file} is the snapshot served now");
        }
        let table = Table::open(&path, Verify::Digest, &NoProgress)
            .with_context(|| format!("opening {}", path.display()))?;
        let log = log_path(&path);
        let epochs = Epochs::create_with(&table, &log, epoch, self.bounds)
            .with_context(|| format!("creating the update log {}", log.display()))?;
        let info = TableInfo::of(&table);
        let source = TableSource::Host(Arc::new(table));
        let engine = engine::open(self.engine, &source, self.max_batch)?;
        // The engine must hold the only reference to the table, so that
        // updates write its pages in place.
        drop(source);
        Ok(LoadedSnapshot { file: file.to_string(), table: info, engine, epochs })
    }
}

impl SnapshotLoader for FileSnapshots {
    fn load(&self, file: &str, epoch: u64) -> Result<LoadedSnapshot, String> {
        self.load_file(file, epoch).map_err(|error| format!("{error:#}"))
    }

    fn commit(&self, loaded: &LoadedSnapshot) -> Result<(), String> {
        let pointer = Pointer {
            file: loaded.file.clone(),
            digest: hex::encode(loaded.table.digest),
            epoch: loaded.epochs.base(),
        };
        self.dir.set_current(&pointer).map_err(|error| error.to_string())?;
        let path = self.dir.path().join(&loaded.file);
        *self.served.lock().expect("served lock") = path.canonicalize().ok();
        Ok(())
    }
}
