//! A table: its layout, its record count, its pages and their digest, held in
//! memory after a build or memory-mapped from a `.mgdb` file.

use std::ops::{Deref, DerefMut};

use crate::{Error, NoProgress, Progress};
use morphogen_layout::{KeyDigest, Layout};

/// A table: the layout and `total_pages` pages of `page_size` bytes,
/// sub-table after sub-table.
pub struct Table {
    layout: Layout,
    records: u64,
    pages: Pages,
    digest: [u8; 32],
}

/// Where the pages live.
pub(crate) enum Pages {
    /// Built in memory.
    Owned(Vec<u8>),
    /// Mapped from a file, privately: a page written after an update is
    /// copied into memory and the file never changes. Or mapped anonymous
    /// memory ([`Table::generate`]). The pages start `offset` bytes into
    /// the map.
    Mapped { map: memmap2::MmapMut, offset: usize },
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Pages::Owned(bytes) => bytes,
            Pages::Mapped { map, offset } => &map[*offset..],
        }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Pages::Owned(bytes) => bytes,
            Pages::Mapped { map, offset } => &mut map[*offset..],
        }
    }
}

/// A whole page of new bytes for page `index` of the table (sub-table after
/// sub-table): how an update reaches the pages an engine reads.
#[derive(Clone, PartialEq, Eq)]
pub struct PageWrite {
    /// The page's index in the whole table.
    pub index: u64,
    /// Its new contents, one page long.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for PageWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes are table data: not for logs.
        f.debug_struct("PageWrite").field("index", &self.index).finish_non_exhaustive()
    }
}

/// Pages hashed between two progress reports.
const DIGEST_STEP: usize = 64 << 20;

/// BLAKE3 of the pages: the digest both servers must agree on.
pub(crate) fn digest_pages(pages: &[u8], progress: &dyn Progress) -> [u8; 32] {
    progress.start("hashing pages", pages.len() as u64);
    let mut hasher = blake3::Hasher::new();
    for chunk in pages.chunks(DIGEST_STEP) {
        hasher.update(chunk);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    *hasher.finalize().as_bytes()
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("layout", &self.layout)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

/// A copy holds its pages in memory, whether the original was built or mapped.
impl Clone for Table {
    fn clone(&self) -> Table {
        Table {
            layout: self.layout.clone(),
            records: self.records,
            pages: Pages::Owned(self.pages.to_vec()),
            digest: self.digest,
        }
    }
}

impl Table {
    /// A table over `pages`, which must hold exactly the layout's pages; computes their digest.
    pub fn new(layout: Layout, records: u64, pages: Vec<u8>) -> Result<Table, Error> {
        check_length(&layout, pages.len() as u64)?;
        let digest = digest_pages(&pages, &NoProgress);
        Ok(Table { layout, records, pages: Pages::Owned(pages), digest })
    }

    /// A table whose pages `fill` writes, given the layout's pages zeroed;
    /// computes their digest. The pages start on a boundary of the
    /// operating system's pages, as a mapped table file's do: a table in a
    /// `Vec` starts wherever the allocator puts it, often 16 bytes past
    /// one, and then every cache line of a page straddles two.
    pub fn generate(layout: Layout, records: u64, fill: impl FnOnce(&mut [u8])) -> Result<Table, Error> {
        let bytes = layout.total_pages() * u64::from(layout.page_size());
        let memory_error = |message: String| Error::Memory { bytes, message };
        let len = usize::try_from(bytes).map_err(|_| memory_error("more than the address space".into()))?;
        let mut map = memmap2::MmapMut::map_anon(len).map_err(|e| memory_error(e.to_string()))?;
        fill(&mut map);
        let digest = digest_pages(&map, &NoProgress);
        Ok(Table { layout, records, pages: Pages::Mapped { map, offset: 0 }, digest })
    }

    /// A table over pages whose length and digest the caller has checked.
    pub(crate) fn from_checked_parts(layout: Layout, records: u64, pages: Pages, digest: [u8; 32]) -> Table {
        Table { layout, records, pages, digest }
    }

    /// The public parameters.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of records stored.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// BLAKE3 digest of the pages as built or opened: the snapshot's
    /// digest. [`Table::apply`] leaves it as it is; the digest of a
    /// table with updates applied is the epoch chain of `morphogen-epochs`.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Share of the rows in use.
    pub fn load_factor(&self) -> f64 {
        self.records as f64 / self.layout.capacity() as f64
    }

    /// All pages, sub-table after sub-table.
    pub fn pages(&self) -> &[u8] {
        &self.pages
    }

    /// Page `page` (0-based) of sub-table `sub_table`.
    pub fn page(&self, sub_table: u8, page: u64) -> &[u8] {
        assert!(sub_table < self.layout.choices() && page < self.layout.pages_per_table());
        &self.pages[self.layout.page_range(sub_table, page)]
    }

    /// Page `index` of the whole table (sub-table after sub-table).
    pub fn page_at(&self, index: u64) -> &[u8] {
        &self.pages[self.page_span(index)]
    }

    /// Replaces whole pages, in order; every write is checked to be one page
    /// long and within the table before any is applied. A mapped table
    /// copies the pages it writes into memory; its file is not changed.
    pub fn apply(&mut self, writes: &[PageWrite]) -> Result<(), Error> {
        self.check_writes(writes)?;
        for write in writes {
            let span = self.page_span(write.index);
            self.pages[span].copy_from_slice(&write.bytes);
        }
        Ok(())
    }

    /// Whether [`Table::apply`] would take `writes`: each one page long
    /// and within the table.
    pub fn check_writes(&self, writes: &[PageWrite]) -> Result<(), Error> {
        let size = self.layout.page_size() as usize;
        if let Some(bad) = writes.iter().find(|w| w.bytes.len() != size) {
            let (expected, actual) = (self.layout.page_size(), bad.bytes.len());
            return Err(morphogen_layout::Error::PageLength { expected, actual }.into());
        }
        let pages = self.layout.total_pages();
        if let Some(bad) = writes.iter().find(|w| w.index >= pages) {
            return Err(Error::PageIndex { index: bad.index, pages });
        }
        Ok(())
    }

    /// Byte range of page `index` of the whole table within the pages.
    fn page_span(&self, index: u64) -> std::ops::Range<usize> {
        assert!(index < self.layout.total_pages(), "page {index} is past the table");
        let size = self.layout.page_size() as usize;
        let start = index as usize * size;
        start..start + size
    }

    /// Sets the number of records stored, after updates added or removed some.
    pub fn set_records(&mut self, records: u64) {
        self.records = records;
    }

    /// Looks `key` up directly, as a client would after retrieving its pages
    /// privately: the value of the candidate row whose tag matches.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.find(&KeyDigest::of(key))
    }

    /// The value of the key whose digest is `digest`, found as [`Table::get`] finds it.
    pub fn find(&self, digest: &KeyDigest) -> Option<&[u8]> {
        let candidates = self.layout.locate(digest);
        candidates.as_slice().iter().enumerate().find_map(|(sub_table, &page)| {
            self.layout.find(self.page(sub_table as u8, page), digest).expect("pages have the page size")
        })
    }
}

/// Checks that `len` bytes are exactly the layout's pages.
fn check_length(layout: &Layout, len: u64) -> Result<(), Error> {
    let expected = layout.total_pages() * u64::from(layout.page_size());
    if len != expected {
        return Err(Error::PagesLength { expected, actual: len });
    }
    Ok(())
}
