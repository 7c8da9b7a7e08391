//! Building a table from records: bucketized cuckoo hashing, deterministic.
//!
//! The builder reads its source twice. Pass 1 checks every record and keeps
//! only its key digest and line (24 bytes a record); the digests are sorted,
//! which finds duplicates and fixes an insertion order that does not depend on
//! the input order, and they seed the table when no seed is given. Placement
//! then runs on digests alone. Pass 2 reads the records again and writes each
//! value into the row whose tag matches, exactly as a client finds it.

use siphasher::sip::SipHasher13;

use crate::{Error, Progress, Table};
use morphogen_layout::{CHOICES, KeyDigest, Layout, MAX_KEY_LEN, MAX_PAGES_PER_TABLE, TAG_LEN, reduce};

/// One input record. `line` says where it came from, for error messages (the
/// 1-based line of a CSV file, the 1-based position of an in-memory record).
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Where the record came from.
    pub line: u64,
    /// The key, 1 to 64 bytes.
    pub key: &'a [u8],
    /// The value, at most the table's value size; stored zero-padded.
    pub value: &'a [u8],
}

/// Records the builder can read more than once, in the same order each time.
pub trait RecordSource {
    /// Feeds every record to `sink`, stopping at the first error.
    fn for_each_record(&self, sink: &mut dyn FnMut(Record<'_>) -> Result<(), Error>) -> Result<(), Error>;
}

/// Records held in memory as (key, value) pairs; record `i` has line `i + 1`.
impl RecordSource for [(Vec<u8>, Vec<u8>)] {
    fn for_each_record(&self, sink: &mut dyn FnMut(Record<'_>) -> Result<(), Error>) -> Result<(), Error> {
        for (i, (key, value)) in self.iter().enumerate() {
            sink(Record { line: i as u64 + 1, key, value })?;
        }
        Ok(())
    }
}

/// One input record whose key is already digested: all a table keeps of
/// a key, so a table can be rebuilt from its own rows and key list.
#[derive(Clone, Copy, Debug)]
pub struct DigestedRecord<'a> {
    /// Where the record came from (its 1-based position), for errors.
    pub line: u64,
    /// The key's digest.
    pub key: KeyDigest,
    /// The value, at most the table's value size; stored zero-padded.
    pub value: &'a [u8],
}

/// Records with digested keys that the builder can read more than once, in
/// the same order each time.
pub trait DigestedSource {
    /// Feeds every record to `sink`, stopping at the first error.
    fn for_each_digested(
        &self,
        sink: &mut dyn FnMut(DigestedRecord<'_>) -> Result<(), Error>,
    ) -> Result<(), Error>;
}

/// Digested records held in memory; record `i` has line `i + 1`.
impl DigestedSource for [(KeyDigest, &[u8])] {
    fn for_each_digested(
        &self,
        sink: &mut dyn FnMut(DigestedRecord<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (i, (key, value)) in self.iter().enumerate() {
            sink(DigestedRecord { line: i as u64 + 1, key: *key, value })?;
        }
        Ok(())
    }
}

/// A [`RecordSource`] read as a [`DigestedSource`]: each key checked and digested.
struct Digesting<'a, S: ?Sized>(&'a S);

impl<S: RecordSource + ?Sized> DigestedSource for Digesting<'_, S> {
    fn for_each_digested(
        &self,
        sink: &mut dyn FnMut(DigestedRecord<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.0.for_each_record(&mut |record| {
            if record.key.is_empty() || record.key.len() > MAX_KEY_LEN {
                return Err(Error::KeyLength { line: record.line, len: record.key.len() });
            }
            sink(DigestedRecord { line: record.line, key: KeyDigest::of(record.key), value: record.value })
        })
    }
}

/// Parameters of a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Bytes per page: a power of two from 512 to 65536.
    pub page_size: u32,
    /// Bytes per value; `None` takes the longest value of the input.
    pub value_size: Option<u32>,
    /// Number of sub-tables, 2 to 4.
    pub choices: u8,
    /// Seed of the hash keys; `None` derives it from the input's keys, so
    /// that separate builds of the same data give the same table.
    pub seed: Option<[u8; 16]>,
    /// Room for records added later, as a percentage of the records given:
    /// the table is sized for that many more (0: as small as placement
    /// allows, a few percent of free rows).
    pub headroom_percent: u32,
    /// The fewest records the table is sized for, whatever the headroom:
    /// room for a table that starts empty or nearly so.
    pub min_capacity: u64,
    /// Pages of each sub-table to start from, instead of the size the
    /// records, headroom and minimum call for (placement may still need
    /// more): how a table is grown to a size two servers agree on.
    pub pages_per_table: Option<u64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            page_size: 4096,
            value_size: None,
            choices: 2,
            seed: None,
            headroom_percent: 0,
            min_capacity: 0,
            pages_per_table: None,
        }
    }
}

/// Share of the rows the builder aims to fill. Bucketized cuckoo hashing with
/// dozens of rows per page places keys far beyond this; the slack keeps
/// random walks short and leaves free rows for live updates.
pub const TARGET_LOAD: f64 = 0.97;

/// Seeds tried at one size before the sub-tables grow by 2%. With few rows
/// per page the achievable load is lower (about 50% with one row per page and
/// two choices), and growing geometrically reaches it in a few dozen attempts.
const ATTEMPTS_PER_SIZE: u32 = 2;

/// Evictions one insertion may cause before the attempt is abandoned.
const MAX_WALK: u32 = 1000;

/// Context string of the BLAKE3 derivation of the default seed from the keys.
const SEED_CONTEXT: &str = "morphogen 2026-11 default table seed v1";
/// Context string of the derivation of the random-walk key from the seed.
const WALK_CONTEXT: &str = "morphogen 2026-11 cuckoo walk v1";

/// Builds a table from `source`.
pub fn build<S: RecordSource + ?Sized>(
    source: &S,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Table, Error> {
    build_digested(&Digesting(source), options, progress)
}

/// Builds a table from records whose keys are digested already. The same
/// records give the same table as [`build`] from their keys.
pub fn build_digested<S: DigestedSource + ?Sized>(
    source: &S,
    options: &BuildOptions,
    progress: &dyn Progress,
) -> Result<Table, Error> {
    // Parameters that do not depend on the input are checked before reading it.
    Layout::new(options.page_size, options.value_size.unwrap_or(1), options.choices, 1, [0; 16])?;

    let (mut keys, longest_value) = first_pass(source, options.value_size, progress)?;
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(Error::DuplicateKey { first_line: pair[0].1, second_line: pair[1].1 });
    }
    let value_size = match options.value_size {
        Some(size) => size,
        None if longest_value > 0 => u32::try_from(longest_value).unwrap_or(u32::MAX),
        None => return Err(Error::UnknownValueSize),
    };
    let digests: Vec<KeyDigest> = keys.into_iter().map(|(digest, _)| digest).collect();
    let seed = options.seed.unwrap_or_else(|| default_seed(&digests));

    let probe = Layout::new(options.page_size, value_size, options.choices, 1, seed)?;
    let rows_per_table = f64::from(probe.rows_per_page()) * f64::from(options.choices) * TARGET_LOAD;
    let with_headroom = digests.len() as f64 * (1.0 + f64::from(options.headroom_percent) / 100.0);
    let sized_for = with_headroom.max(options.min_capacity as f64);
    let mut pages_per_table =
        options.pages_per_table.unwrap_or_else(|| ((sized_for / rows_per_table).ceil() as u64).max(1));
    let mut attempt: u128 = 0;
    let (layout, mut pages) = loop {
        if pages_per_table > MAX_PAGES_PER_TABLE {
            return Err(Error::TooManyRecords(digests.len() as u64));
        }
        // Each attempt starts the phase over.
        progress.start("placing records", digests.len() as u64);
        let attempt_seed = (u128::from_le_bytes(seed).wrapping_add(attempt)).to_le_bytes();
        let layout =
            Layout::new(options.page_size, value_size, options.choices, pages_per_table, attempt_seed)?;
        if let Some(pages) = place(&layout, &digests, progress) {
            break (layout, pages);
        }
        attempt += 1;
        if attempt.is_multiple_of(u128::from(ATTEMPTS_PER_SIZE)) {
            pages_per_table += (pages_per_table / 50).max(1);
        }
    };

    progress.finish();
    second_pass(source, &layout, &mut pages, digests.len() as u64, progress)?;
    Table::new(layout, digests.len() as u64, pages)
}

/// Checks every record; returns (digest, line) per record and the longest value.
fn first_pass<S: DigestedSource + ?Sized>(
    source: &S,
    value_size: Option<u32>,
    progress: &dyn Progress,
) -> Result<(Vec<(KeyDigest, u64)>, usize), Error> {
    progress.start("reading records", 0);
    let mut keys = Vec::new();
    let mut longest_value = 0;
    source.for_each_digested(&mut |record| {
        if let Some(size) = value_size
            && record.value.len() > size as usize
        {
            return Err(Error::ValueTooLong { line: record.line, len: record.value.len(), value_size: size });
        }
        if keys.len() >= u32::MAX as usize - 1 {
            return Err(Error::TooManyRecords(keys.len() as u64 + 1));
        }
        longest_value = longest_value.max(record.value.len());
        keys.push((record.key, record.line));
        tick(progress, keys.len() as u64);
        Ok(())
    })?;
    progress.finish();
    Ok((keys, longest_value))
}

/// The seed derived from the set of keys: BLAKE3 over the sorted digests.
fn default_seed(sorted: &[KeyDigest]) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new_derive_key(SEED_CONTEXT);
    for digest in sorted {
        hasher.update(&digest.0);
    }
    hasher.finalize().as_bytes()[..16].try_into().expect("32-byte hash")
}

/// Places every key (in `digests` order) in a row of one of its candidate
/// pages, evicting along a random walk when all candidates are full, and
/// writes the tags. Returns the pages, or `None` if this seed fails: a walk
/// too long, or two keys with the same tag in one page.
fn place(layout: &Layout, digests: &[KeyDigest], progress: &dyn Progress) -> Option<Vec<u8>> {
    let rows = layout.rows_per_page() as usize;
    let pages_per_table = layout.pages_per_table() as usize;
    let total_pages = layout.total_pages() as usize;
    // Record index + 1 in every row; 0 marks a free row.
    let mut slots = vec![0u32; total_pages * rows];
    let mut fill = vec![0u32; total_pages];
    let mut walk = WalkRng::new(layout.seed());
    let global_candidates = |digest: &KeyDigest| {
        let mut pages = [0usize; *CHOICES.end() as usize];
        for (table, page) in layout.locate(digest).as_slice().iter().enumerate() {
            pages[table] = table * pages_per_table + *page as usize;
        }
        pages
    };
    let k = usize::from(layout.choices());

    for index in 0..digests.len() {
        tick(progress, index as u64 + 1);
        let mut current = index;
        let mut came_from = usize::MAX;
        for step in 0..=MAX_WALK {
            let candidates = global_candidates(&digests[current]);
            let candidates = &candidates[..k];
            // The least-filled candidate with a free row; the first on ties.
            if let Some(&page) =
                candidates.iter().filter(|&&p| (fill[p] as usize) < rows).min_by_key(|&&p| fill[p])
            {
                slots[page * rows + fill[page] as usize] = current as u32 + 1;
                fill[page] += 1;
                break;
            }
            if step == MAX_WALK {
                return None;
            }
            // All candidates full: evict a random row of a random candidate
            // other than the page the current key was just evicted from.
            let eligible = candidates.len() - usize::from(candidates.contains(&came_from));
            let pick = walk.below(eligible as u64) as usize;
            let page = *candidates.iter().filter(|&&p| p != came_from).nth(pick).expect("pick < eligible");
            let row = page * rows + walk.below(rows as u64) as usize;
            let evicted = slots[row] as usize - 1;
            slots[row] = current as u32 + 1;
            current = evicted;
            came_from = page;
        }
    }

    let mut pages = vec![0u8; total_pages * layout.page_size() as usize];
    let row_size = layout.row_size() as usize;
    let mut tags = Vec::with_capacity(rows);
    for (page, (page_slots, bytes)) in
        slots.chunks_exact(rows).zip(pages.chunks_exact_mut(layout.page_size() as usize)).enumerate()
    {
        tags.clear();
        for (row, &slot) in page_slots[..fill[page] as usize].iter().enumerate() {
            let tag = layout.tag(&digests[slot as usize - 1]);
            bytes[row * row_size..row * row_size + TAG_LEN as usize].copy_from_slice(&tag.to_le_bytes());
            tags.push(tag);
        }
        tags.sort_unstable();
        if tags.windows(2).any(|pair| pair[0] == pair[1]) {
            return None;
        }
    }
    Some(pages)
}

/// Writes every record's value into the row that carries its tag.
fn second_pass<S: DigestedSource + ?Sized>(
    source: &S,
    layout: &Layout,
    pages: &mut [u8],
    expected: u64,
    progress: &dyn Progress,
) -> Result<(), Error> {
    progress.start("writing values", expected);
    let row_size = layout.row_size() as usize;
    let mut seen = 0u64;
    source.for_each_digested(&mut |record| {
        let digest = record.key;
        let tag = layout.tag(&digest);
        // The client's search (`Layout::rows`), turned into a byte offset to write at.
        let row = layout.locate(&digest).as_slice().iter().enumerate().find_map(|(sub_table, &page)| {
            let range = layout.page_range(sub_table as u8, page);
            let index = layout.rows(&pages[range.clone()]).ok()?.position(|(row_tag, _)| row_tag == tag)?;
            Some(range.start + index * row_size)
        });
        let (Some(at), true) = (row, record.value.len() <= layout.value_size() as usize) else {
            return Err(Error::SourceChanged);
        };
        let value_at = at + TAG_LEN as usize;
        pages[value_at..value_at + record.value.len()].copy_from_slice(record.value);
        seen += 1;
        tick(progress, seen);
        Ok(())
    })?;
    progress.finish();
    if seen != expected {
        return Err(Error::SourceChanged);
    }
    Ok(())
}

/// Records between two progress reports.
const PROGRESS_STEP: u64 = 1 << 16;

/// Reports progress once every `PROGRESS_STEP` records (`done` counts from 1).
fn tick(progress: &dyn Progress, done: u64) {
    if done.is_multiple_of(PROGRESS_STEP) {
        progress.advance(PROGRESS_STEP);
    }
}

/// The random choices of the cuckoo walk: SipHash of a counter under a key
/// derived from the table seed, so that a build is the same on every machine
/// and in every version that keeps the walk context.
struct WalkRng {
    hasher: SipHasher13,
    counter: u64,
}

impl WalkRng {
    fn new(seed: [u8; 16]) -> WalkRng {
        let key = blake3::derive_key(WALK_CONTEXT, &seed);
        WalkRng { hasher: SipHasher13::new_with_key(key[..16].try_into().expect("32 bytes")), counter: 0 }
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.counter += 1;
        reduce(self.hasher.hash(&self.counter.to_le_bytes()), n)
    }
}
