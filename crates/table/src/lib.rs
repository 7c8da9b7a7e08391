//! The page table of morphogen: the layout both servers serve and the client
//! reads.
//!
//! Records `key -> value` live in fixed-size rows packed into pages, spread
//! over `k` sub-tables by bucketized cuckoo hashing: a key has one candidate
//! page in each sub-table and is stored in one of them. A lookup always asks
//! for all `k` candidates, so every lookup looks the same to the servers.
//! [`Layout`] holds the public parameters and the client-side helpers.

mod layout;

pub use layout::{
    CHOICES, Candidates, KeyDigest, Layout, MAX_KEY_LEN, MAX_PAGES_PER_TABLE, PAGE_SIZES, TAG_LEN,
};

/// Errors of the table crate. Messages name parameters, files and line
/// numbers, never keys or values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The page size is not a power of two between 512 and 65536.
    #[error("page size {0} must be a power of two from 512 to 65536")]
    PageSize(u32),
    /// The value size is 0 or leaves no room for the tag in a page.
    #[error("value size {value_size} must be from 1 to {} for {page_size}-byte pages", page_size - TAG_LEN)]
    ValueSize {
        /// Value size asked for.
        value_size: u32,
        /// Page size of the table.
        page_size: u32,
    },
    /// The number of sub-tables is outside 2..=4.
    #[error("number of choices {0} must be from 2 to 4")]
    Choices(u8),
    /// A sub-table would have no pages or more than a DPF key can address.
    #[error("pages per sub-table {0} must be from 1 to 2^32")]
    PagesPerTable(u64),
    /// A page given to the row reader is not exactly one page long.
    #[error("page is {actual} bytes, the table's pages are {expected}")]
    PageLength {
        /// The table's page size.
        expected: u32,
        /// Length given.
        actual: usize,
    },
}
