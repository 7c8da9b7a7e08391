//! A built table in memory: its layout, its record count and its pages.

use crate::Error;
use crate::layout::Layout;

/// A table: the layout and `total_pages` pages of `page_size` bytes, sub-table
/// after sub-table.
pub struct Table {
    layout: Layout,
    records: u64,
    pages: Vec<u8>,
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
    /// A table over `pages`, which must hold exactly the layout's pages.
    pub fn new(layout: Layout, records: u64, pages: Vec<u8>) -> Result<Table, Error> {
        let expected = layout.total_pages() * u64::from(layout.page_size());
        if pages.len() as u64 != expected {
            return Err(Error::PagesLength { expected, actual: pages.len() as u64 });
        }
        Ok(Table { layout, records, pages })
    }

    /// The public parameters.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of records stored.
    pub fn records(&self) -> u64 {
        self.records
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
        let size = self.layout.page_size() as usize;
        let index = u64::from(sub_table) * self.layout.pages_per_table() + page;
        &self.pages[index as usize * size..][..size]
    }

    /// Looks `key` up directly, as a client would after retrieving its pages
    /// privately: the value of the candidate row whose tag matches.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let digest = crate::KeyDigest::of(key);
        let candidates = self.layout.locate(&digest);
        candidates.as_slice().iter().enumerate().find_map(|(sub_table, &page)| {
            self.layout.find(self.page(sub_table as u8, page), &digest).expect("pages have the page size")
        })
    }
}
