//! Table files on disk: opening a table and its update log to serve
//! ([`open_single`], [`open_manifest`]), which file of a snapshot directory
//! to start on, and loading the files a server is told to swap to. The
//! binary opens its tables here, so a program that embeds the server
//! opens them alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use morphogen_engines::{Choice, TableSource};
use morphogen_epochs::{
    Bounds, Change, Epochs, POINTER_FILE, Pointer, SnapshotDir, Tail, grown_table, log_path,
};
use morphogen_scan::Engine;
use morphogen_table::{NoProgress, Progress, Table, Verify, keys_path, read_keys, write_keys};

use crate::{Error, LoadedSnapshot, ServedTable, SnapshotLoader, TableInfo};

/// How a server's table files are opened.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// The engine that answers from each table. A swap opens one of the
    /// kind serving then, never `auto`: it must not move a server from its
    /// GPU to its CPU.
    pub engine: Choice,
    /// Most queries one pass holds: the engine is sized for it.
    pub max_batch: usize,
    /// What each table's epochs may hold.
    pub bounds: Bounds,
    /// What replaying a log does with a damaged last record.
    pub tail: Tail,
    /// Whether the tables take updates: a table without a log gets a new
    /// one. Without, a table is served from its log if it has one, and
    /// from epoch 0 otherwise.
    pub updates: bool,
}

/// The table file `start` names, its log replayed, with an engine over it:
/// the table `name` of a server. A pointer `start` came from is checked
/// against the file and the log.
pub fn open_table(
    name: &str,
    start: &Start,
    options: &OpenOptions,
    progress: &dyn Progress,
) -> Result<ServedTable, Error> {
    let opened = |source| Error::Open { what: format!("opening {}", start.table.display()), source };
    let mut table = Table::open(&start.table, Verify::Digest, progress).map_err(|e| opened(e.into()))?;
    let epochs = open_epochs(&mut table, &start.log, options)?;
    if let (Some(pointer), Some(epochs)) = (&start.pointer, &epochs) {
        check_pointer(pointer, &table, epochs)?;
    }
    let info = TableInfo::of(&table);
    let engine =
        morphogen_engines::open(options.engine, TableSource::Host(table), options.max_batch, progress)?;
    tracing::info!(
        table = name,
        records = info.records,
        pages = info.layout.total_pages(),
        digest = %hex::encode(info.digest),
        "table loaded"
    );
    Ok(ServedTable { epochs, ..ServedTable::new(name, info, engine) })
}

/// Replays the table's update log into it, if there is a log or the table
/// takes updates.
fn open_epochs(table: &mut Table, log: &Path, options: &OpenOptions) -> Result<Option<Epochs>, Error> {
    if !options.updates && !log.exists() {
        return Ok(None);
    }
    let (epochs, replayed) =
        Epochs::open_with(table, log, options.bounds, options.tail).map_err(|error| Error::Open {
            what: format!("opening the update log {}", log.display()),
            source: error.into(),
        })?;
    tracing::info!(
        log = %log.display(),
        batches = replayed.batches,
        epoch = epochs.epoch(),
        torn_tail_dropped = replayed.torn.is_some(),
        "update log replayed"
    );
    Ok(Some(epochs))
}

/// The table of a server of one file, [`DEFAULT_TABLE`](crate::DEFAULT_TABLE):
/// the snapshot last swapped into `dir` if there is one, and otherwise
/// `db` (with its update log `log`, by default beside it). With `dir`, the
/// table takes swaps to the other files there.
pub fn open_single(
    dir: Option<SnapshotDir>,
    db: Option<&Path>,
    log: Option<&Path>,
    options: &OpenOptions,
    progress: &dyn Progress,
) -> Result<ServedTable, Error> {
    open_named(crate::DEFAULT_TABLE, dir, db, log, options, progress)
}

/// The table `name`: the snapshot last swapped into `dir` if there is one,
/// and otherwise `db`; with `dir`, it takes swaps to the other files there.
fn open_named(
    name: &str,
    dir: Option<SnapshotDir>,
    db: Option<&Path>,
    log: Option<&Path>,
    options: &OpenOptions,
    progress: &dyn Progress,
) -> Result<ServedTable, Error> {
    let start = start(dir.as_ref(), db, log)?.ok_or_else(|| {
        Error::Config(
            "no snapshot has been swapped in yet: give the table file to start on (--db)".to_string(),
        )
    })?;
    let served = open_table(name, &start, options, progress)?;
    let snapshots = dir.map(|dir| {
        // Of the kind serving now: a swap must not move a server from its GPU to its CPU.
        let (engine, max_batch) = (Choice::Kind(served.engine.kind()), options.max_batch);
        let open_engine = Box::new(move |table| {
            morphogen_engines::open(engine, TableSource::Host(table), max_batch, &NoProgress)
                .map_err(|error| format!("opening the scan engine: {error}"))
        });
        Arc::new(FileSnapshots::new(dir, open_engine, options.bounds, Some((&start.table, &start.log))))
            as Arc<dyn SnapshotLoader>
    });
    Ok(ServedTable { snapshots, ..served })
}

/// A manifest of the tables of a server: which table files to serve, by
/// name, and what the server publishes about them as a whole.
#[derive(Debug, serde::Deserialize)]
struct Manifest {
    /// Each table's file, relative to the manifest.
    tables: BTreeMap<String, PathBuf>,
    /// The rest, published at `/v1/tables`.
    #[serde(flatten)]
    about: serde_json::Map<String, serde_json::Value>,
}

/// The tables the JSON manifest at `path` names (its `"tables"` object maps
/// each name to its table file, relative to the manifest), each with the
/// update log beside its file, and the manifest's other fields. With
/// `snapshots`, table `name` has the snapshot directory `snapshots/name`
/// (made if missing): it starts on the snapshot last swapped in there, if
/// any, and takes swaps to the files there.
pub fn open_manifest(
    path: &Path,
    snapshots: Option<&Path>,
    options: &OpenOptions,
    progress: &dyn Progress,
) -> Result<(Vec<ServedTable>, serde_json::Map<String, serde_json::Value>), Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Open {
        what: format!("reading the manifest {}", path.display()),
        source: error.into(),
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|error| Error::Open {
        what: format!(
            "{}: not a manifest (a JSON object with a \"tables\" object of names and files)",
            path.display()
        ),
        source: error.into(),
    })?;
    if manifest.tables.is_empty() {
        return Err(Error::Config(format!("{}: the manifest names no tables", path.display())));
    }
    // Names first: a wrong one should not cost a table load.
    if let Some(name) = manifest.tables.keys().find(|name| !morphogen_protocol::is_table_name(name)) {
        return Err(Error::Config(format!(
            "{}: {name:?} cannot name a table: use 1 to 64 of a-z, 0-9, - and _",
            path.display()
        )));
    }
    let beside = path.parent().unwrap_or(Path::new("."));
    let mut served = Vec::with_capacity(manifest.tables.len());
    for (name, file) in &manifest.tables {
        let table = beside.join(file);
        let in_table = |error: Error| Error::Open {
            what: format!("table {name} of {}", path.display()),
            source: error.into(),
        };
        let dir = match snapshots {
            Some(root) => {
                let dir = root.join(name);
                std::fs::create_dir_all(&dir).map_err(|error| {
                    in_table(Error::Open { what: format!("making {}", dir.display()), source: error.into() })
                })?;
                Some(SnapshotDir::new(&dir).map_err(|error| in_table(Error::Config(error.to_string())))?)
            }
            None => None,
        };
        served.push(open_named(name, dir, Some(&table), None, options, progress).map_err(in_table)?);
    }
    Ok((served, manifest.about))
}

/// Opens an engine over a table loaded for a swap, which the engine owns
/// from then on; the error is for the operator. It must be of the kind the
/// server runs (a swap must not move a server from its GPU to its CPU).
pub type OpenEngine = dyn Fn(Table) -> Result<Box<dyn Engine>, String> + Send + Sync;

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
    served: Mutex<Option<Served>>,
}

/// The table file served now and its update log.
#[derive(Clone, Debug)]
struct Served {
    /// The file, canonical.
    table: PathBuf,
    log: PathBuf,
}

impl std::fmt::Debug for FileSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSnapshots").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl FileSnapshots {
    /// Swaps to files of `dir`, each with epochs within `bounds` and an
    /// engine from `open_engine`; `served` is the file served now and its
    /// update log, if any.
    pub fn new(
        dir: SnapshotDir,
        open_engine: Box<OpenEngine>,
        bounds: Bounds,
        served: Option<(&Path, &Path)>,
    ) -> FileSnapshots {
        let served = served
            .and_then(|(table, log)| Some(Served { table: table.canonicalize().ok()?, log: log.into() }));
        FileSnapshots { dir, open_engine, bounds, served: Mutex::new(served) }
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Option<Served>> {
        self.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SnapshotLoader for FileSnapshots {
    fn load(&self, file: &str, epoch: u64, label: Option<Vec<u8>>) -> Result<LoadedSnapshot, String> {
        let path = self.dir.file(file).map_err(|error| error.to_string())?;
        let canonical =
            path.canonicalize().map_err(|error| format!("resolving {}: {error}", path.display()))?;
        if self.served().as_ref().is_some_and(|served| served.table == canonical) {
            return Err(format!("{file} is the snapshot served now"));
        }
        let table = Table::open(&path, Verify::Digest, &NoProgress)
            .map_err(|error| format!("opening {}: {error}", path.display()))?;
        let log = log_path(&path);
        let epochs = Epochs::create_labelled(&table, &log, epoch, self.bounds, label)
            .map_err(|error| format!("creating the update log {}: {error}", log.display()))?;
        let info = TableInfo::of(&table);
        let engine = (self.open_engine)(table)?;
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
        *self.served() = path.canonicalize().ok().map(|table| Served { log: log_path(&table), table });
        Ok(())
    }

    fn grow(&self, epoch: u64, changes: &[Change], pages_per_table: u64, file: &str) -> Result<(), String> {
        let started = std::time::Instant::now();
        let served = self.served().clone().ok_or("the table file served now is not known")?;
        let keys_file = keys_path(&served.table);
        let mut keys = read_keys(&keys_file).map_err(|error| {
            format!(
                "{error}: a table grows from the key list beside its file, which `morphogen eth build` \
                 writes and a grown table has"
            )
        })?;
        // A copy of the snapshot served, brought to its newest epoch.
        let opened = |error: &dyn std::fmt::Display| format!("opening {}: {error}", served.table.display());
        let mut table = Table::open(&served.table, Verify::Digest, &NoProgress).map_err(|e| opened(&e))?;
        let (at, changed) = Epochs::replay_read_only(&mut table, &served.log)
            .map_err(|error| format!("replaying {}: {error}", served.log.display()))?;
        if at != epoch {
            return Err(format!("the update log {} is at epoch {at}, not {epoch}", served.log.display()));
        }
        keys.extend(changed);
        let mut grown = grown_table(&table, keys, changes, pages_per_table, &NoProgress)
            .map_err(|error| format!("building the larger table: {error}"))?;
        drop(table);
        let path = self.dir.path().join(file);
        let written = |error: &dyn std::fmt::Display| format!("writing {}: {error}", path.display());
        grown.table.write(&path).map_err(|e| written(&e))?;
        write_keys(&keys_path(&path), &mut grown.keys).map_err(|e| written(&e))?;
        tracing::info!(
            file,
            records = grown.table.records(),
            pages_per_table = grown.table.layout().pages_per_table(),
            seconds = started.elapsed().as_secs_f64(),
            "built a larger table"
        );
        Ok(())
    }
}
