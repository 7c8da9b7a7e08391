//! The update log: every acknowledged batch, appended and synced to disk
//! before it is acknowledged, and replayed at start-up.
//!
//! File layout, integers little-endian (docs/OPERATIONS.md has the same):
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 8    | magic `MGLG\r\n\x1a\n`                             |
//! | 8      | 4    | format version, 1                                  |
//! | 12     | 4    | zero                                               |
//! | 16     | 32   | digest of the snapshot (`.mgdb`) the log belongs to |
//! | 48     | 8    | the snapshot's first epoch                         |
//! | 56     | 8    | first 8 bytes of BLAKE3 of bytes 0..56             |
//!
//! then records, each `len: u32 | !len: u32 | BLAKE3(payload)[..16] | payload`.
//! A batch's payload is `1u8 | sequence: u64 | changes: u32`, then per
//! change `key digest: 16 | 1u8 and value_len: u32 and the value, or 0u8`.
//! A labelled batch's is `2u8 | sequence: u64 | label_len: u32 | label`,
//! then the same `changes: u32` and changes. A log of a snapshot swapped in
//! with a label starts with the record `3u8 | label_len: u32 | label`: the
//! label of its first epoch.
//!
//! A crash while appending leaves at most one unfinished record at the end:
//! fewer bytes than a record header, a record running past the end of the
//! file, or a zero-filled tail. That record was never acknowledged; it is
//! dropped with a warning and the file cut back. A defect anywhere else is
//! corruption, and opening fails with its offset: a record damaged in the
//! middle of the log, and also a last record that is whole but whose
//! checksum fails (it may have been acknowledged). The operator may then
//! have the damaged last record dropped ([`Tail::Truncate`]).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use morphogen_table::KeyDigest;

use crate::plan::Change;
use crate::{Batch, Error};

const MAGIC: [u8; 8] = *b"MGLG\r\n\x1a\n";
const VERSION: u32 = 1;
/// Bytes of the log's header.
pub const LOG_HEADER_LEN: usize = 64;
/// Bytes before each record's payload.
const RECORD_HEADER_LEN: usize = 24;
/// Longest payload accepted: a longer length field is damage, not data.
const MAX_PAYLOAD: u32 = 1 << 30;
/// First byte of a batch's payload.
const KIND_BATCH: u8 = 1;
/// First byte of a labelled batch's payload.
const KIND_LABELLED_BATCH: u8 = 2;
/// First byte of the record of the first epoch's label.
const KIND_BASE_LABEL: u8 = 3;

/// The payload of the record of the first epoch's label.
pub(crate) fn encode_base_label(label: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + label.len());
    out.push(KIND_BASE_LABEL);
    out.extend_from_slice(&(label.len() as u32).to_le_bytes());
    out.extend_from_slice(label);
    out
}

/// The first epoch's label, if `payload` is its record.
pub(crate) fn decode_base_label(payload: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut rest = payload;
    if take(&mut rest, 1)? != [KIND_BASE_LABEL] {
        return Ok(None);
    }
    let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes"));
    let label = take(&mut rest, len as usize)?.to_vec();
    if !rest.is_empty() {
        return Err("a label record has bytes after its label");
    }
    Ok(Some(label))
}

/// What opening a log does with each record: `(base epoch, offset, payload)`.
pub(crate) type Replay<'a> = dyn FnMut(u64, u64, &[u8]) -> Result<(), Error> + 'a;

/// An open log, positioned at its end.
pub(crate) struct UpdateLog {
    file: File,
    path: PathBuf,
    /// Bytes of whole records and header: where the next record goes.
    len: u64,
    /// Set when a failed append could not be undone: the file's end is
    /// unknown, so nothing more may be appended.
    broken: bool,
}

/// The end of a log that a crash left unfinished, dropped on opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Where the unfinished record started.
    pub offset: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

impl UpdateLog {
    /// Opens the log at `path`, creating it for `snapshot` at `base_epoch`
    /// if there is none, and hands each record's payload and offset to
    /// `replay` with the log's base epoch, in order. Returns the log ready for appends, the base
    /// epoch its header names, and the torn tail it dropped, if any.
    pub(crate) fn open(
        path: &Path,
        snapshot: &[u8; 32],
        base_epoch: u64,
        tail: Tail,
        replay: &mut Replay<'_>,
    ) -> Result<(UpdateLog, u64, Option<TornTail>), Error> {
        let io = |action, e: &std::io::Error| Error::io(action, path, e);
        let existing = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io("read", &e)),
        };
        if existing < LOG_HEADER_LEN as u64 {
            // No log, or one whose creation a crash interrupted: it holds no
            // record, so nothing acknowledged is in it.
            if existing > 0 {
                tracing::warn!(path = %path.display(), bytes = existing, "replacing an unfinished update log");
            }
            return Ok((UpdateLog::create(path, snapshot, base_epoch)?, base_epoch, None));
        }
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| io("open", &e))?;
        let (base, offset, torn) = read_records(&mut file, path, snapshot, existing, tail, replay)?;
        if let Some(tail) = torn {
            tracing::warn!(
                path = %path.display(),
                offset = tail.offset,
                bytes = tail.bytes,
                "dropping an unfinished last record of the update log (a crash while it was written)"
            );
            file.set_len(offset).map_err(|e| io("truncate", &e))?;
            file.sync_all().map_err(|e| io("sync", &e))?;
        }
        // Appends go after the last whole record, wherever reading stopped.
        file.seek(SeekFrom::Start(offset)).map_err(|e| io("seek in", &e))?;
        let log = UpdateLog { file, path: path.into(), len: offset, broken: false };
        Ok((log, base, torn))
    }

    /// Reads the log at `path` of the table `snapshot` without changing
    /// it, handing each record to `replay` as [`UpdateLog::open`] does; an
    /// unfinished last record (an append under way) is left out. Returns
    /// the log's base epoch.
    pub(crate) fn read(path: &Path, snapshot: &[u8; 32], replay: &mut Replay<'_>) -> Result<u64, Error> {
        let mut file = File::open(path).map_err(|e| Error::io("open", path, &e))?;
        let existing = file.metadata().map_err(|e| Error::io("read", path, &e))?.len();
        if existing < LOG_HEADER_LEN as u64 {
            return Err(Error::LogHeader { path: path.into(), problem: "the log has no header".to_string() });
        }
        let (base, _, _) = read_records(&mut file, path, snapshot, existing, Tail::Refuse, replay)?;
        Ok(base)
    }

    /// A new log with only its header, synced, its directory entry too.
    pub(crate) fn create(path: &Path, snapshot: &[u8; 32], base_epoch: u64) -> Result<UpdateLog, Error> {
        let io = |action, e: &std::io::Error| Error::io(action, path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io("create", &e))?;
        file.write_all(&header(snapshot, base_epoch)).map_err(|e| io("write", &e))?;
        file.sync_all().map_err(|e| io("sync", &e))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("sync", dir, &e))?;
        Ok(UpdateLog { file, path: path.into(), len: LOG_HEADER_LEN as u64, broken: false })
    }

    /// Appends one record and syncs it to disk. On failure the file is cut
    /// back to where it was, so that a later append cannot follow a
    /// partial record; if even that fails, the log takes no more appends.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<(), Error> {
        if self.broken {
            return Err(Error::LogBroken { path: self.path.clone() });
        }
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len <= MAX_PAYLOAD)
            .ok_or(Error::BatchTooLarge)?;
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&(!len).to_le_bytes());
        record.extend_from_slice(&blake3::hash(payload).as_bytes()[..16]);
        record.extend_from_slice(payload);
        let written = self.file.write_all(&record).and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            let len = self.len;
            let undone = self.file.set_len(len).and_then(|()| self.file.sync_all());
            if undone.and_then(|()| self.file.seek(SeekFrom::Start(len))).is_err() {
                self.broken = true;
            }
            return Err(Error::io("append to", &self.path, &error));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Bytes in the log.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether a failed append left the file's end unknown.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }
}

fn header(snapshot: &[u8; 32], base_epoch: u64) -> [u8; LOG_HEADER_LEN] {
    let mut header = [0u8; LOG_HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[16..48].copy_from_slice(snapshot);
    header[48..56].copy_from_slice(&base_epoch.to_le_bytes());
    let checksum = blake3::hash(&header[..56]);
    header[56..64].copy_from_slice(&checksum.as_bytes()[..8]);
    header
}

/// Checks a header and returns its base epoch.
fn check_header(header: &[u8; LOG_HEADER_LEN], snapshot: &[u8; 32]) -> Result<u64, String> {
    if header[0..8] != MAGIC {
        return Err("it does not start with the update log magic".to_string());
    }
    if blake3::hash(&header[..56]).as_bytes()[..8] != header[56..64] {
        return Err("the header checksum does not match: the header is corrupt".to_string());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("log format version {version} is not supported (this build reads {VERSION})"));
    }
    if header[16..48] != snapshot[..] {
        return Err(format!(
            "it belongs to the table with digest {}, not to this one ({})",
            hex::encode(&header[16..48]),
            hex::encode(snapshot)
        ));
    }
    Ok(u64::from_le_bytes(header[48..56].try_into().expect("8 bytes")))
}

enum Record {
    Whole(Vec<u8>),
    /// The unfinished last record of a crashed append.
    Torn,
    /// A whole last record whose checksum fails.
    DamagedLast,
    Corrupt(&'static str),
}

/// What opening a log does with a whole last record whose checksum fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tail {
    /// Refuse to open the log, naming the record's offset.
    #[default]
    Refuse,
    /// Drop the record and cut the file back, as for a torn write.
    Truncate,
}

/// Reads the header and the records of the log `file` (at `path`,
/// `existing` bytes long, at least a header) and hands each whole record to
/// `replay`. Returns the base epoch, the offset after the last whole
/// record, and the unfinished tail found there, if any.
fn read_records(
    file: &mut File,
    path: &Path,
    snapshot: &[u8; 32],
    existing: u64,
    tail: Tail,
    replay: &mut Replay<'_>,
) -> Result<(u64, u64, Option<TornTail>), Error> {
    let io = |action, e: &std::io::Error| Error::io(action, path, e);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; LOG_HEADER_LEN];
    reader.read_exact(&mut header).map_err(|e| io("read", &e))?;
    let base =
        check_header(&header, snapshot).map_err(|problem| Error::LogHeader { path: path.into(), problem })?;
    let mut offset = LOG_HEADER_LEN as u64;
    let mut torn = None;
    while offset < existing {
        match next_record(&mut reader, offset, existing).map_err(|e| io("read", &e))? {
            Record::Whole(payload) => {
                replay(base, offset, &payload)?;
                offset += (RECORD_HEADER_LEN + payload.len()) as u64;
            }
            Record::Torn => {
                torn = Some(TornTail { offset, bytes: existing - offset });
                break;
            }
            Record::DamagedLast if tail == Tail::Truncate => {
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    "dropping the damaged last record of the update log, as told; if it was acknowledged, \
                     its batch is lost here and must be sent again"
                );
                torn = Some(TornTail { offset, bytes: existing - offset });
                break;
            }
            Record::DamagedLast => {
                return Err(Error::LogCorrupt {
                    path: path.into(),
                    offset,
                    problem: "the last record is whole but its checksum does not match; start with the \
                              damaged last record dropped (serve --truncate-damaged-log) to go on without it"
                        .to_string(),
                });
            }
            Record::Corrupt(problem) => {
                return Err(Error::LogCorrupt { path: path.into(), offset, problem: problem.to_string() });
            }
        }
    }
    Ok((base, offset, torn))
}

/// Reads the record at `offset` of a log `end` bytes long.
fn next_record(reader: &mut impl Read, offset: u64, end: u64) -> std::io::Result<Record> {
    let remaining = end - offset;
    if remaining < RECORD_HEADER_LEN as u64 {
        return Ok(Record::Torn);
    }
    let mut head = [0u8; RECORD_HEADER_LEN];
    reader.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let check = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if check != !len || len > MAX_PAYLOAD {
        // A zero-filled tail is an append whose data never reached the disk.
        let zero_tail = head.iter().all(|&b| b == 0) && rest_is_zero(reader)?;
        return Ok(if zero_tail { Record::Torn } else { Record::Corrupt("a record header is damaged") });
    }
    let record_end = offset + (RECORD_HEADER_LEN as u64) + u64::from(len);
    if record_end > end {
        return Ok(Record::Torn);
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload)?;
    if blake3::hash(&payload).as_bytes()[..16] != head[8..24] {
        return Ok(if record_end == end {
            Record::DamagedLast
        } else {
            Record::Corrupt("a record's checksum does not match")
        });
    }
    Ok(Record::Whole(payload))
}

fn rest_is_zero(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buffer = [0u8; 1 << 16];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            return Ok(true);
        }
        if buffer[..read].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// The payload of a batch record.
pub(crate) fn encode_batch(batch: &Batch) -> Vec<u8> {
    let values: usize = batch.changes.iter().map(|c| c.value.as_ref().map_or(0, Vec::len)).sum();
    let label = batch.label.as_deref();
    let mut out = Vec::with_capacity(17 + label.map_or(0, <[u8]>::len) + batch.changes.len() * 21 + values);
    out.push(if label.is_some() { KIND_LABELLED_BATCH } else { KIND_BATCH });
    out.extend_from_slice(&batch.sequence.to_le_bytes());
    if let Some(label) = label {
        out.extend_from_slice(&(label.len() as u32).to_le_bytes());
        out.extend_from_slice(label);
    }
    out.extend_from_slice(&(batch.changes.len() as u32).to_le_bytes());
    for change in &batch.changes {
        out.extend_from_slice(&change.key.0);
        match &change.value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
    out
}

/// Decodes a batch record's payload; the error says what is malformed.
pub(crate) fn decode_batch(payload: &[u8]) -> Result<Batch, &'static str> {
    let mut rest = payload;
    let mut take = |n: usize| take(&mut rest, n);
    let labelled = match take(1)? {
        [KIND_BATCH] => false,
        [KIND_LABELLED_BATCH] => true,
        _ => return Err("a record is of an unknown kind"),
    };
    let sequence = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
    let label = if labelled {
        let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        Some(take(len as usize)?.to_vec())
    } else {
        None
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    // Each change takes at least 17 bytes: bound the allocation by the payload.
    let mut changes = Vec::with_capacity((count as usize).min(payload.len() / 17));
    for _ in 0..count {
        let key = KeyDigest(take(16)?.try_into().expect("16 bytes"));
        let value = match take(1)? {
            [0] => None,
            [1] => {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
                Some(take(len as usize)?.to_vec())
            }
            _ => return Err("a change is neither a set nor a delete"),
        };
        changes.push(Change { key, value });
    }
    if !rest.is_empty() {
        return Err("a record has bytes after its last change");
    }
    Ok(Batch { sequence, changes, label })
}

/// The next `n` bytes of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    let (head, tail) = rest.split_at_checked(n).ok_or("a record ends early")?;
    *rest = tail;
    Ok(head)
}
