//! The `.mgdb` file: a 4096-byte header, then the pages.
//!
//! Header, all integers little-endian (docs/FORMAT.md has the same table):
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 8    | magic `MGDB\r\n\x1a\n`                           |
//! | 8      | 4    | format version, 1                                |
//! | 12     | 4    | offset of the first page, 4096                   |
//! | 16     | 4    | page size                                        |
//! | 20     | 4    | value size                                       |
//! | 24     | 1    | choices `k`                                      |
//! | 25     | 7    | zero                                             |
//! | 32     | 8    | pages per sub-table                              |
//! | 40     | 8    | records                                          |
//! | 48     | 16   | seed                                             |
//! | 64     | 32   | BLAKE3 of the pages                              |
//! | 96     | 32   | BLAKE3 of header bytes 0..96                     |
//! | 128    | 3968 | zero                                             |
//!
//! The file is exactly `4096 + k · pages_per_table · page_size` bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::table::{Pages, Table, digest_pages};
use crate::{Error, Progress};
use morphogen_layout::Layout;

/// The file's first 8 bytes. The `\r\n` and `\x1a` catch text-mode transfers.
pub const MAGIC: [u8; 8] = *b"MGDB\r\n\x1a\n";
/// Current version of the file format.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the first page; pages start 4096-aligned.
pub const HEADER_LEN: usize = 4096;

/// Bytes covered by the header checksum.
const CHECKED_LEN: usize = 96;

/// Whether opening a file re-hashes its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Hash every page and compare with the header's digest.
    Digest,
    /// Trust the header's digest (for a file already verified).
    Trust,
}

impl Table {
    /// Writes the table to `path` atomically: to a temporary file beside it,
    /// synced, then renamed over `path`. On error nothing is left behind.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        write_atomically(path, &mut |file, tmp| {
            file.write_all(&self.header()).map_err(|e| Error::io("write", tmp, &e))?;
            file.write_all(self.pages()).map_err(|e| Error::io("write", tmp, &e))
        })
    }

    /// Opens a `.mgdb` file by memory map, checking the header and the file
    /// length, and the pages' digest unless `verify` is [`Verify::Trust`].
    pub fn open(path: &Path, verify: Verify, progress: &dyn Progress) -> Result<Table, Error> {
        let mut file = File::open(path).map_err(|e| Error::io("open", path, &e))?;
        let len = file.metadata().map_err(|e| Error::io("read", path, &e))?.len();
        if len < HEADER_LEN as u64 {
            return Err(Error::FileLength { path: path.into(), expected: HEADER_LEN as u64, actual: len });
        }
        let mut header = vec![0u8; HEADER_LEN];
        file.read_exact(&mut header).map_err(|e| Error::io("read", path, &e))?;
        let header = Header::parse(&header).map_err(|e| e.in_file(path))?;
        let expected = HEADER_LEN as u64 + header.layout.total_pages() * u64::from(header.layout.page_size());
        if len != expected {
            return Err(Error::FileLength { path: path.into(), expected, actual: len });
        }

        // SAFETY: the map is private (copy-on-write: writes to it never reach
        // the file) and lives as long as the table. Its contents are only
        // sound to read while no other process changes the file: morphogen
        // replaces tables by writing a new file and renaming it (see
        // `write`), never by writing into one that may be open, and
        // operators must do the same (docs/FORMAT.md).
        #[allow(unsafe_code)]
        let map =
            unsafe { memmap2::MmapOptions::new().map_copy(&file) }.map_err(|e| Error::io("map", path, &e))?;
        // The file length check above makes these exactly the layout's pages.
        let pages = Pages::Mapped { map, offset: HEADER_LEN };

        if verify == Verify::Digest && digest_pages(&pages, progress) != header.digest {
            return Err(Error::DigestMismatch { path: path.into() });
        }
        Ok(Table::from_checked_parts(header.layout, header.records, pages, header.digest))
    }

    /// The 4096-byte header of this table.
    fn header(&self) -> Vec<u8> {
        let layout = self.layout();
        let mut header = vec![0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        header[16..20].copy_from_slice(&layout.page_size().to_le_bytes());
        header[20..24].copy_from_slice(&layout.value_size().to_le_bytes());
        header[24] = layout.choices();
        header[32..40].copy_from_slice(&layout.pages_per_table().to_le_bytes());
        header[40..48].copy_from_slice(&self.records().to_le_bytes());
        header[48..64].copy_from_slice(&layout.seed());
        header[64..96].copy_from_slice(&self.digest());
        let checksum = blake3::hash(&header[..CHECKED_LEN]);
        header[96..128].copy_from_slice(checksum.as_bytes());
        header
    }
}

/// A parsed and checked header.
struct Header {
    layout: Layout,
    records: u64,
    digest: [u8; 32],
}

impl Header {
    /// Checks magic, version, checksum, reserved bytes and parameters.
    fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if blake3::hash(&bytes[..CHECKED_LEN]).as_bytes() != &bytes[96..128] {
            return Err(HeaderError::Checksum);
        }
        if u32_at(12) as usize != HEADER_LEN || bytes[25..32].iter().chain(&bytes[128..]).any(|&b| b != 0) {
            return Err(HeaderError::Reserved);
        }
        let seed = bytes[48..64].try_into().expect("16 bytes");
        let layout = Layout::new(u32_at(16), u32_at(20), bytes[24], u64_at(32), seed)
            .map_err(|e| HeaderError::Parameters(Box::new(e.into())))?;
        let records = u64_at(40);
        if records > layout.capacity() {
            return Err(HeaderError::Records(records));
        }
        Ok(Header { layout, records, digest: bytes[64..96].try_into().expect("32 bytes") })
    }
}

/// What is wrong with a header, before the file's path is attached.
enum HeaderError {
    Magic,
    Version(u32),
    Checksum,
    Reserved,
    Parameters(Box<Error>),
    Records(u64),
}

impl HeaderError {
    fn in_file(self, path: &Path) -> Error {
        let problem = match self {
            HeaderError::Magic => "it does not start with the .mgdb magic: not a morphogen table".to_string(),
            HeaderError::Version(v) => {
                format!("format version {v} is not supported (this build reads version {FORMAT_VERSION})")
            }
            HeaderError::Checksum => "the header checksum does not match: the header is corrupt".to_string(),
            HeaderError::Reserved => "reserved header fields are not zero: the header is corrupt".to_string(),
            HeaderError::Parameters(e) => format!("invalid parameters in the header: {e}"),
            HeaderError::Records(n) => format!("the header claims {n} records, more than the table holds"),
        };
        Error::InvalidHeader { path: path.into(), problem }
    }
}

/// Writes a file at `path` atomically: `fill` writes it as a temporary
/// file beside `path` (named second), which is synced, then renamed over
/// `path`, the directory synced too. On error nothing is left behind.
pub(crate) fn write_atomically(
    path: &Path,
    fill: &mut dyn FnMut(&mut File, &Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let name = path.file_name().ok_or_else(|| io_error("write", path, "not a file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, &e))?;
        fill(&mut file, &tmp)?;
        file.sync_all().map_err(|e| Error::io("sync", &tmp, &e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, &e))?;
        // Make the rename itself durable.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("sync", &dir, &e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn io_error(action: &'static str, path: &Path, message: &str) -> Error {
    Error::Io {
        action,
        path: path.into(),
        kind: std::io::ErrorKind::InvalidInput,
        message: message.to_string(),
    }
}
