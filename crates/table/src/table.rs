//! A table: its layout, its record count, its pages and their digest, held in
//! memory after a build or memory-mapped from a `.mgdb` file.

use std::ops::Deref;

use crate::layout::{KeyDigest, Layout};
use crate::{Error, NoProgress, Progress};

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
    /// Mapped from a file; the pages start `offset` bytes into it.
    Mapped { map: memmap2::Mmap, offset: usize },
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

impl Table {
    /// A table over `pages`, which must hold exactly the layout's pages; computes their digest.
    pub fn new(layout: Layout, records: u64, pages: Vec<u8>) -> Result<Table, Error> {
        check_length(&layout, pages.len() as u64)?;
        let digest = digest_pages(&pages, &NoProgress);
        Ok(Table { layout, records, pages: Pages::Owned(pages), digest })
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

    /// BLAKE3 digest of the pages.
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

    /// Looks `key` up directly, as a client would after retrieving its pages
    /// privately: the value of the candidate row whose tag matches.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let digest = KeyDigest::of(key);
        let candidates = self.layout.locate(&digest);
        candidates.as_slice().iter().enumerate().find_map(|(sub_table, &page)| {
            self.layout.find(self.page(sub_table as u8, page), &digest).expect("pages have the page size")
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
