//! The public parameters of a morphogen table and what a client does with
//! them: find a key's candidate pages, and find the key's row in a page.
//! This is all of the table a client needs; building tables and their files
//! is `morphogen-table`'s.
//!
//! A table is `k` sub-tables of `pages_per_table` pages each. A page holds
//! `rows_per_page` rows `[tag: 8 bytes, little-endian | value: value_size bytes]`
//! from its start; the bytes after the last row are zero. A row whose tag is 0
//! is empty.

use siphasher::sip::SipHasher13;

/// Parameters that make no table, or a page that is not one. Messages name
/// parameters and sizes only.
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

/// Smallest and largest page sizes; a page size must be a power of two.
pub const PAGE_SIZES: std::ops::RangeInclusive<u32> = 512..=65536;
/// Allowed numbers of sub-tables (candidate pages per key).
pub const CHOICES: std::ops::RangeInclusive<u8> = 2..=4;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Bytes of the tag at the start of every row.
pub const TAG_LEN: u32 = 8;
/// Most pages a sub-table may have: the largest domain a DPF key covers.
pub const MAX_PAGES_PER_TABLE: u64 = 1 << 32;

/// A key's identity inside morphogen: the first 128 bits of BLAKE3(key).
///
/// It is independent of any table seed, so a builder can sort and
/// deduplicate records by digest before it knows the seed, and keep 16 bytes
/// per record instead of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyDigest(pub [u8; 16]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &[u8]) -> KeyDigest {
        let hash = blake3::hash(key);
        KeyDigest(hash.as_bytes()[..16].try_into().expect("BLAKE3 gives 32 bytes"))
    }
}

/// The candidate page of a key in each sub-table (page indices within the sub-table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidates {
    pages: [u64; *CHOICES.end() as usize],
    len: u8,
}

impl Candidates {
    /// One page index per sub-table, in sub-table order.
    pub fn as_slice(&self) -> &[u64] {
        &self.pages[..self.len as usize]
    }
}

/// Everything a client needs to locate and read a key: sizes, shape and seed.
#[derive(Clone, Debug)]
pub struct Layout {
    page_size: u32,
    value_size: u32,
    choices: u8,
    pages_per_table: u64,
    seed: [u8; 16],
    /// One hasher per sub-table for the candidate page, then one for the tag.
    hashers: Vec<SipHasher13>,
}

/// Two layouts are equal when their parameters are: the hashers follow from the seed.
impl PartialEq for Layout {
    fn eq(&self, other: &Layout) -> bool {
        (self.page_size, self.value_size, self.choices, self.pages_per_table, self.seed)
            == (other.page_size, other.value_size, other.choices, other.pages_per_table, other.seed)
    }
}

impl Eq for Layout {}

/// Context string of the BLAKE3 key derivation from the table seed to the
/// SipHash keys; changing it changes every table.
const HASH_KEY_CONTEXT: &str = "morphogen 2026-11 table hash keys v1";

impl Layout {
    /// Checks the parameters and derives the hash keys from `seed`.
    pub fn new(
        page_size: u32,
        value_size: u32,
        choices: u8,
        pages_per_table: u64,
        seed: [u8; 16],
    ) -> Result<Layout, Error> {
        if !PAGE_SIZES.contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::PageSize(page_size));
        }
        if value_size == 0 || value_size > page_size - TAG_LEN {
            return Err(Error::ValueSize { value_size, page_size });
        }
        if !CHOICES.contains(&choices) {
            return Err(Error::Choices(choices));
        }
        if !(1..=MAX_PAGES_PER_TABLE).contains(&pages_per_table) {
            return Err(Error::PagesPerTable(pages_per_table));
        }
        let hashers = (0..=choices)
            .map(|index| {
                let mut input = seed.to_vec();
                input.push(index);
                let key = blake3::derive_key(HASH_KEY_CONTEXT, &input);
                SipHasher13::new_with_key(key[..16].try_into().expect("32-byte derived key"))
            })
            .collect();
        Ok(Layout { page_size, value_size, choices, pages_per_table, seed, hashers })
    }

    /// Bytes per page.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Bytes per value (shorter values are stored zero-padded to this size).
    pub fn value_size(&self) -> u32 {
        self.value_size
    }

    /// Number of sub-tables `k`: every key has one candidate page in each.
    pub fn choices(&self) -> u8 {
        self.choices
    }

    /// Pages in each sub-table: the domain size of each DPF key.
    pub fn pages_per_table(&self) -> u64 {
        self.pages_per_table
    }

    /// The seed every hash key derives from.
    pub fn seed(&self) -> [u8; 16] {
        self.seed
    }

    /// Bytes per row: the tag and the value.
    pub fn row_size(&self) -> u32 {
        TAG_LEN + self.value_size
    }

    /// Rows in one page; rows never straddle pages.
    pub fn rows_per_page(&self) -> u32 {
        self.page_size / self.row_size()
    }

    /// Pages in the whole table.
    pub fn total_pages(&self) -> u64 {
        self.pages_per_table * u64::from(self.choices)
    }

    /// Rows in the whole table.
    pub fn capacity(&self) -> u64 {
        self.total_pages() * u64::from(self.rows_per_page())
    }

    /// Byte range of page `page` of sub-table `sub_table` within the pages
    /// (which run sub-table after sub-table).
    pub fn page_range(&self, sub_table: u8, page: u64) -> std::ops::Range<usize> {
        let index = u64::from(sub_table) * self.pages_per_table + page;
        let start = index as usize * self.page_size as usize;
        start..start + self.page_size as usize
    }

    /// Byte range of row `row` within a page.
    pub fn row_range(&self, row: u32) -> std::ops::Range<usize> {
        let start = (row * self.row_size()) as usize;
        start..start + self.row_size() as usize
    }

    /// The candidate page of a key in each sub-table.
    pub fn locate(&self, key: &KeyDigest) -> Candidates {
        let mut candidates = Candidates { pages: [0; *CHOICES.end() as usize], len: self.choices };
        for (page, hasher) in candidates.pages.iter_mut().zip(&self.hashers) {
            *page = reduce(hasher.hash(&key.0), self.pages_per_table);
        }
        candidates
    }

    /// The key's tag: a keyed 64-bit hash, never 0 (0 marks an empty row).
    pub fn tag(&self, key: &KeyDigest) -> u64 {
        let tag = self.hashers[usize::from(self.choices)].hash(&key.0);
        if tag == 0 { 1 } else { tag }
    }

    /// The value of the row in `page` whose tag is `key`'s, if there is one.
    /// `page` is the whole page, `page_size` bytes.
    pub fn find<'p>(&self, page: &'p [u8], key: &KeyDigest) -> Result<Option<&'p [u8]>, Error> {
        let tag = self.tag(key);
        Ok(self.rows(page)?.find(|(row_tag, _)| *row_tag == tag).map(|(_, value)| value))
    }

    /// The rows of a page as (tag, value), empty rows included.
    pub fn rows<'p>(&self, page: &'p [u8]) -> Result<impl Iterator<Item = (u64, &'p [u8])> + 'p, Error> {
        if page.len() != self.page_size as usize {
            return Err(Error::PageLength { expected: self.page_size, actual: page.len() });
        }
        let rows = &page[..(self.rows_per_page() * self.row_size()) as usize];
        Ok(rows.chunks_exact(self.row_size() as usize).map(|row| {
            let (tag, value) = row.split_at(TAG_LEN as usize);
            (u64::from_le_bytes(tag.try_into().expect("8-byte tag")), value)
        }))
    }
}

/// Maps a uniform 64-bit hash to `0..n` without modulo bias worth measuring:
/// the high half of the 128-bit product (Lemire's reduction). The builder's
/// random walk draws with it too.
pub fn reduce(hash: u64, n: u64) -> u64 {
    ((u128::from(hash) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(4096, 32, 2, 1000, [7; 16]).unwrap()
    }

    #[test]
    fn shape_follows_the_parameters() {
        let l = layout();
        assert_eq!(l.row_size(), 40);
        assert_eq!(l.rows_per_page(), 102);
        assert_eq!(l.total_pages(), 2000);
        assert_eq!(l.capacity(), 204_000);
        let big = Layout::new(512, 504, 4, 1, [0; 16]).unwrap();
        assert_eq!((big.rows_per_page(), big.total_pages()), (1, 4));
    }

    #[test]
    fn candidates_lie_in_their_sub_tables_and_depend_on_the_seed() {
        let (a, b) = (layout(), Layout::new(4096, 32, 2, 1000, [8; 16]).unwrap());
        let mut moved = 0;
        for i in 0u32..1000 {
            let key = KeyDigest::of(&i.to_le_bytes());
            let pages = a.locate(&key);
            assert_eq!(pages.as_slice().len(), 2);
            assert!(pages.as_slice().iter().all(|p| *p < 1000));
            moved += usize::from(pages != b.locate(&key));
        }
        assert!(moved > 990, "a new seed must move almost every key ({moved} moved)");
    }

    #[test]
    fn candidates_spread_evenly() {
        let l = Layout::new(4096, 32, 3, 16, [1; 16]).unwrap();
        let mut counts = [[0u32; 16]; 3];
        for i in 0u32..16_000 {
            for (table, page) in l.locate(&KeyDigest::of(&i.to_le_bytes())).as_slice().iter().enumerate() {
                counts[table][*page as usize] += 1;
            }
        }
        // 1000 expected per page; 6 standard deviations is about 190.
        assert!(counts.iter().flatten().all(|c| c.abs_diff(1000) < 190), "{counts:?}");
    }

    #[test]
    fn find_returns_the_value_of_the_matching_row_only() {
        let l = Layout::new(512, 16, 2, 1, [3; 16]).unwrap(); // 21 rows of 24 bytes
        let (present, absent) = (KeyDigest::of(b"present"), KeyDigest::of(b"absent"));
        let mut page = vec![0u8; 512];
        let row = 5 * 24;
        page[row..row + 8].copy_from_slice(&l.tag(&present).to_le_bytes());
        page[row + 8..row + 24].copy_from_slice(&[9; 16]);
        assert_eq!(l.find(&page, &present).unwrap(), Some(&[9u8; 16][..]));
        assert_eq!(l.find(&page, &absent).unwrap(), None);
        assert_eq!(l.find(&page[..511], &present), Err(Error::PageLength { expected: 512, actual: 511 }));
    }

    #[test]
    fn tags_are_never_zero() {
        let l = layout();
        assert!((0u32..10_000).all(|i| l.tag(&KeyDigest::of(&i.to_le_bytes())) != 0));
    }

    #[test]
    fn rejects_page_sizes_that_are_not_powers_of_two_in_range() {
        for size in [0, 256, 1000, 4095, 131_072] {
            assert_eq!(Layout::new(size, 8, 2, 1, [0; 16]).unwrap_err(), Error::PageSize(size));
        }
    }

    #[test]
    fn rejects_value_sizes_of_zero_or_beyond_a_page() {
        for value_size in [0, 4089] {
            assert_eq!(
                Layout::new(4096, value_size, 2, 1, [0; 16]).unwrap_err(),
                Error::ValueSize { value_size, page_size: 4096 }
            );
        }
        assert!(Layout::new(4096, 4088, 2, 1, [0; 16]).is_ok());
    }

    #[test]
    fn rejects_choices_outside_two_to_four() {
        for k in [0, 1, 5] {
            assert_eq!(Layout::new(4096, 8, k, 1, [0; 16]).unwrap_err(), Error::Choices(k));
        }
    }

    #[test]
    fn rejects_sub_tables_of_zero_or_more_than_2_pow_32_pages() {
        for pages in [0, MAX_PAGES_PER_TABLE + 1] {
            assert_eq!(Layout::new(4096, 8, 2, pages, [0; 16]).unwrap_err(), Error::PagesPerTable(pages));
        }
    }
}
