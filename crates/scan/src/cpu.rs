//! The CPU engine: all cores over chunks of pages. For each chunk it expands
//! every query's key for just those pages, then reads each page that at
//! least one query selects once; pages no query selects are never touched.
//!
//! Three things keep the work per page small on a machine whose cores and
//! caches, not its memory, are the limit:
//! * Queries go in groups of g (8 for 4-KiB pages; see [`group_size`]). A
//!   selected page is XORed into one of 2^g buckets per group, chosen by
//!   which of the group's queries select it, instead of into every
//!   selecting query's accumulator. At the end of a chunk each query's
//!   accumulator takes the XOR of the buckets whose index has its bit (the
//!   "four Russians" trick for this GF(2) matrix product): a batch of 8
//!   costs one page XOR per page, not about 4.
//! * The chunk's selected pages are visited ordered by which queries of the
//!   first group select them. Runs of pages bound for the same bucket are
//!   summed in registers and their bucket stays in the L1 cache, so the
//!   first group costs little more than reading the pages. Within a run, a
//!   visit's pages are taken far apart from each other, which streams them
//!   from memory faster than taking neighbours.
//! * Selected pages are visited [`PAGES_AT_ONCE`] at a time. The first group
//!   XORs them stripe by stripe, so that they stream from memory together;
//!   the later groups find them in the cache and XOR them page by page.
//!   Buckets start on a cache line and lie a page and a line apart
//!   ([`bucket_stride`]), so that a visit's pages and buckets do not crowd
//!   into one L1 cache set.
//!
//! And one thing keeps the pages read few: the engine keeps the parity of
//! every block of 8 pages (an eighth more memory), and a query that
//! selects most of a block reads the block's other pages and its parity
//! instead (see `parity.rs`). A query alone reads a fifth fewer pages.
//!
//! The XOR loops are compiled twice, portable and for AVX2, and the two
//! bucket loops a third time for AVX-512; the build the CPU can run is
//! picked at run time (the `multiversion` crate). With 32-byte registers a
//! core XORs a page into a bucket in half the instructions, and with
//! 64-byte registers in a quarter (docs/performance-log.md has what each build
//! gains).

use std::ops::Range;

use morphogen_dpf::{Expander, POINTS_PER_LEAF, leaf_count};
use morphogen_table::{Layout, PageWrite, Table};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::aligned::{AlignedBytes, CACHE_LINE};
use crate::parity::{BLOCKS_PER_LEAF, BlockParities, plan_leaf};
use crate::{
    Answers, EngineKind, Error, Profile, Query, Scan, WritePages, time_host_read, validate, write_table,
    xor_into,
};

/// DPF leaves (of 128 pages each) per unit of work: 8,192 pages, 32 MiB of
/// 4-KiB pages. Large enough that folding the buckets (about 2^(g+1) page
/// XORs per group, 510 for g = 8) costs little next to the scan, small enough
/// to share a table of a gigabyte evenly between cores.
const CHUNK_LEAVES: u64 = 64;

/// Most queries per bucket group: a bucket index is a byte.
const MAX_GROUP: u32 = 8;

/// Bytes of buckets per group: about what a core's L2 cache holds.
const GROUP_BUCKET_BYTES: usize = 1 << 20;

/// Queries per bucket group for pages of `page_size` bytes: as many as let
/// the group's 2^g buckets fit in [`GROUP_BUCKET_BYTES`], from 1 to 8.
pub(crate) fn group_size(page_size: usize) -> usize {
    let fitting = (GROUP_BUCKET_BYTES / page_size).max(2).ilog2();
    fitting.min(MAX_GROUP) as usize
}

/// Queries per bucket group for a batch of `queries`, and the groups: no
/// more queries per group than the batch has (a batch of one needs two
/// buckets).
fn grouping(page_size: usize, queries: usize) -> (usize, usize) {
    let group = group_size(page_size).min(queries.max(1));
    (group, queries.div_ceil(group))
}

/// Bytes of the buckets of `groups` groups of `group` queries each.
fn bucket_bytes(page_size: usize, group: usize, groups: usize) -> usize {
    groups * (bucket_stride(page_size) << group)
}

/// Selected pages XORed together in one sweep.
const PAGES_AT_ONCE: usize = 8;

/// Bytes of each page XORed per step of a sweep: four cache lines. Four
/// lines of each of a visit's pages, one after the other, stream from
/// memory better than one line of each, and the loop runs a quarter as many
/// steps (docs/performance-log.md has the figures).
const STRIPE: usize = 4 * CACHE_LINE;

/// Bytes from one bucket to the next: the page and one cache line more.
/// Pages start on a page boundary in a table file, so the same line of
/// every page falls in one set of the L1 cache; without the extra line the
/// same line of every bucket would too, and the eight pages and eight
/// buckets of a sweep would evict one another from that set, which holds
/// fewer lines than that on common cores. With it, bucket b's line lies b
/// sets further on.
fn bucket_stride(page_size: usize) -> usize {
    page_size.next_multiple_of(CACHE_LINE) + CACHE_LINE
}

/// Marks an entry of [`Scratch::selected`] as the parity of a block (its
/// number within the chunk) instead of a page.
const PARITY_ENTRY: u32 = 1 << 31;

/// Answers queries on every core of the machine (rayon's global pool).
pub struct CpuEngine {
    table: Table,
    parities: BlockParities,
}

impl CpuEngine {
    /// An engine over `table`, which it owns from now on; computes its
    /// block parities on every core.
    pub fn new(table: Table) -> CpuEngine {
        let parities = BlockParities::of(&table);
        CpuEngine { table, parities }
    }

    /// Bytes a pass of `queries` queries holds at most: each thread's
    /// buffers and answers, and the answers they are summed into.
    pub fn pass_bytes(&self, queries: usize) -> u64 {
        pass_bytes(self.table.layout(), rayon::current_num_threads(), queries)
    }

    /// Refuses a batch limit whose passes would need more memory than
    /// `available` bytes (see [`available_memory`]), with a message that
    /// says how much and which batch limit fits.
    pub fn check_max_batch(&self, max_batch: usize, available: u64) -> Result<(), Error> {
        let needed = self.pass_bytes(max_batch);
        if needed <= available {
            return Ok(());
        }
        let fitting = (1..max_batch).rev().find(|&q| self.pass_bytes(q) <= available).unwrap_or(0);
        Err(Error::Config(format!(
            "a pass of {max_batch} queries needs {} MiB on {} threads, more than the {} MiB available; \
             the most queries a pass can hold here is {fitting}",
            needed >> 20,
            rayon::current_num_threads(),
            available >> 20
        )))
    }
}

/// [`CpuEngine::pass_bytes`] for a table of `layout` on `threads` threads.
fn pass_bytes(layout: &Layout, threads: usize, queries: usize) -> u64 {
    let page_size = layout.page_size() as usize;
    let (group, groups) = grouping(page_size, queries);
    let answers = queries * usize::from(layout.choices()) * page_size;
    let per_task = bucket_bytes(page_size, group, groups)
        + queries * (CHUNK_LEAVES as usize * 16 + 16 + 2)
        + groups * POINTS_PER_LEAF as usize
        + answers;
    // Each thread's task, and the running totals of the reduction.
    (threads as u64 + 1).saturating_mul(per_task as u64).saturating_add(answers as u64)
}

/// Memory the operating system says it can give without swapping
/// (`MemAvailable` of `/proc/meminfo`), where it says.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Per-task buffers, made once per rayon task and reused for its chunks.
struct Scratch {
    expander: Expander,
    /// `bits[q * CHUNK_LEAVES + i]`: query q's selection bits for leaf i of the chunk.
    bits: Vec<u128>,
    /// Queries per bucket group, g.
    group: usize,
    /// Number of groups.
    groups: usize,
    /// The chunk's pages that some query reads, as page numbers within the
    /// chunk, and the block parities read ([`PARITY_ENTRY`] | block).
    selected: Vec<u32>,
    /// `patterns[i * groups + j]`: which queries of group j read
    /// `selected[i]` (bit s: the group's query s).
    patterns: Vec<u8>,
    /// `selected` sorted by the first group's pattern.
    sorted: Vec<u32>,
    /// The order to visit `selected` in ([`order_by_first_group`]).
    order: Vec<u32>,
    /// `leaf_patterns[j][p]`: which queries of group j read entry p of
    /// the leaf being listed (a page, or a block's parity).
    leaf_patterns: Vec<[u8; POINTS_PER_LEAF as usize]>,
    /// Per query, the pages of the leaf being listed it reads, and the
    /// blocks whose parity it reads (bit b: block b).
    leaf_reads: Vec<u128>,
    leaf_parities: Vec<u16>,
    /// 2^g buckets of a page per query group, [`bucket_stride`] bytes
    /// apart, all zero between chunks. The scan never writes bucket 0
    /// (pages selected by none of the group).
    buckets: AlignedBytes,
    answers: Answers,
}

impl WritePages for CpuEngine {
    fn table(&self) -> Option<&Table> {
        Some(&self.table)
    }

    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), Error> {
        self.table.check_writes(writes).map_err(|e| Error::Fault(e.to_string()))?;
        // The old pages leave their blocks' parities and the new ones join
        // them; a page written twice counts once, as its last write.
        let mut pages: Vec<u64> = writes.iter().map(|write| write.index).collect();
        pages.sort_unstable();
        pages.dedup();
        for &page in &pages {
            self.parities.toggle(&self.table, page);
        }
        let written = write_table(&mut self.table, writes);
        for &page in &pages {
            self.parities.toggle(&self.table, page);
        }
        written
    }
}

impl Profile for CpuEngine {
    fn plain_read_seconds(&mut self) -> Result<f64, Error> {
        Ok(time_host_read(self.table.pages(), self.table.layout().page_size() as usize))
    }
}

impl Scan for CpuEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Cpu
    }

    fn device(&self) -> String {
        format!("{} CPU threads", rayon::current_num_threads())
    }

    fn layout(&self) -> &Layout {
        self.table.layout()
    }

    fn pass(&mut self, queries: &[Query]) -> Result<Answers, Error> {
        validate(self.table.layout(), queries)?;
        self.scan(queries, 0..self.chunks())
    }

    /// As many parts as keep every core on a chunk of its own: the chunks
    /// of a part are scanned side by side.
    fn parts(&self) -> usize {
        self.chunks().div_ceil(self.chunks_per_part()) as usize
    }

    fn pass_part(&mut self, queries: &[Query], part: usize) -> Result<Answers, Error> {
        validate(self.table.layout(), queries)?;
        let per_part = self.chunks_per_part();
        let first = part as u64 * per_part;
        if first >= self.chunks() {
            return Err(Error::Fault(format!("part {part} of a table of {} parts", self.parts())));
        }
        self.scan(queries, first..(first + per_part).min(self.chunks()))
    }
}

impl CpuEngine {
    /// Chunks of `CHUNK_LEAVES` DPF leaves of one sub-table (the last one
    /// maybe shorter): the units of work of a pass.
    fn chunks_per_table(&self) -> u64 {
        self.table.layout().pages_per_table().div_ceil(POINTS_PER_LEAF).div_ceil(CHUNK_LEAVES)
    }

    /// The chunks of every sub-table, sub-table after sub-table.
    fn chunks(&self) -> u64 {
        u64::from(self.table.layout().choices()) * self.chunks_per_table()
    }

    fn chunks_per_part(&self) -> u64 {
        rayon::current_num_threads() as u64
    }

    /// Answers `queries`, already validated, from the pages of `chunks`.
    fn scan(&self, queries: &[Query], chunks: Range<u64>) -> Result<Answers, Error> {
        let layout = self.table.layout();
        let leaves = leaf_count(layout.pages_per_table()).map_err(|e| Error::Fault(e.to_string()))?;
        let chunks_per_table = self.chunks_per_table();
        let page_size = layout.page_size() as usize;
        let (group, groups) = grouping(page_size, queries.len());
        let new_scratch = || Scratch {
            expander: Expander::new(),
            bits: vec![0; queries.len() * CHUNK_LEAVES as usize],
            group,
            groups,
            selected: Vec::new(),
            patterns: Vec::new(),
            sorted: Vec::new(),
            order: Vec::new(),
            leaf_patterns: vec![[0; POINTS_PER_LEAF as usize]; groups],
            leaf_reads: vec![0; queries.len()],
            leaf_parities: vec![0; queries.len()],
            buckets: AlignedBytes::zeroed(bucket_bytes(page_size, group, groups), CACHE_LINE),
            answers: Answers::zeroed(layout, queries.len()),
        };
        chunks
            .into_par_iter()
            .try_fold(new_scratch, |mut scratch, chunk| {
                let sub_table = (chunk / chunks_per_table) as u8;
                let first = (chunk % chunks_per_table) * CHUNK_LEAVES;
                let chunk_leaves = first..(first + CHUNK_LEAVES).min(leaves);
                scan_chunk(&self.table, &self.parities, queries, sub_table, chunk_leaves, &mut scratch)?;
                Ok(scratch)
            })
            .map(|scratch| scratch.map(|s| s.answers))
            .try_reduce(
                || Answers::zeroed(layout, queries.len()),
                |mut total, part| {
                    xor_into(&mut total.bytes, &part.bytes);
                    Ok(total)
                },
            )
    }
}

/// Scans the pages of `leaves` in sub-table `sub_table` for every query.
fn scan_chunk(
    table: &Table,
    parities: &BlockParities,
    queries: &[Query],
    sub_table: u8,
    leaves: Range<u64>,
    scratch: &mut Scratch,
) -> Result<(), Error> {
    let page_size = table.layout().page_size() as usize;
    let count = (leaves.end - leaves.start) as usize;
    let stride = CHUNK_LEAVES as usize;
    for (q, query) in queries.iter().enumerate() {
        let bits = &mut scratch.bits[q * stride..q * stride + count];
        scratch
            .expander
            .expand_leaves(&query.keys[usize::from(sub_table)], leaves.clone(), bits)
            .map_err(|e| Error::Fault(e.to_string()))?;
    }
    let pages_per_table = table.layout().pages_per_table();
    // The pages of the chunk's leaf `leaf` that the sub-table has.
    let valid = |leaf: usize| {
        let past = pages_per_table.saturating_sub((leaves.start + leaf as u64) * POINTS_PER_LEAF);
        if past >= POINTS_PER_LEAF { u128::MAX } else { (1u128 << past) - 1 }
    };
    select_pages(scratch, queries.len(), count, valid);
    order_by_first_group(scratch);

    let group = scratch.group;
    let groups = scratch.groups;
    let stride = bucket_stride(page_size);
    let group_buckets = stride << group;
    let first_page = leaves.start * POINTS_PER_LEAF;
    let first_block = leaves.start * BLOCKS_PER_LEAF as u64;
    let page = |i: u32| match scratch.selected[i as usize] {
        entry if entry & PARITY_ENTRY == 0 => table.page(sub_table, first_page + u64::from(entry)),
        entry => parities.page(sub_table, first_block + u64::from(entry & !PARITY_ENTRY)),
    };
    // The first group reads the pages from memory; the later ones find them
    // in the cache.
    let mut visits = scratch.order.chunks_exact(PAGES_AT_ONCE);
    for visit in &mut visits {
        let visit: &[u32; PAGES_AT_ONCE] = visit.try_into().expect("chunks of PAGES_AT_ONCE");
        let pages = visit.map(page);
        for (index, buckets) in scratch.buckets.chunks_exact_mut(group_buckets).enumerate() {
            let patterns = visit.map(|i| scratch.patterns[i as usize * groups + index]);
            match index {
                0 => sweep_pages_into_buckets(buckets, stride, pages, patterns),
                _ => xor_cached_pages_into_buckets(buckets, stride, pages, patterns),
            }
        }
    }
    // The chunk's last few pages, one at a time.
    for &i in visits.remainder() {
        for (index, buckets) in scratch.buckets.chunks_exact_mut(group_buckets).enumerate() {
            let pattern = scratch.patterns[i as usize * groups + index];
            xor_cached_pages_into_buckets(buckets, stride, [page(i)], [pattern]);
        }
    }
    // Fold each group's buckets into its queries' accumulators, clearing them.
    // A last group with fewer members only ever wrote the buckets its members name.
    for (index, buckets) in scratch.buckets.chunks_exact_mut(group_buckets).enumerate() {
        let members = group.min(queries.len() - index * group);
        let answers = &mut scratch.answers;
        fold_buckets(buckets, page_size, stride, members, |slot, bucket| {
            xor_into(answers.page_mut(index * group + slot, usize::from(sub_table)), bucket);
        });
    }
    Ok(())
}

/// Lists the pages of the chunk's first `leaves` leaves that some query
/// reads, and for each of them which queries of each group read it: the
/// pages a query selects, or for some blocks the block's other pages and
/// its parity (`plan_leaf`). `valid(leaf)` names the pages the leaf has.
fn select_pages(scratch: &mut Scratch, queries: usize, leaves: usize, valid: impl Fn(usize) -> u128) {
    let Scratch { bits, group, selected, patterns, leaf_patterns, leaf_reads, leaf_parities, .. } = scratch;
    let stride = CHUNK_LEAVES as usize;
    selected.clear();
    patterns.clear();
    let mut listing = Listing { group: *group, queries, selected, patterns, leaf_patterns };
    for leaf in 0..leaves {
        for (q, reads) in leaf_reads.iter_mut().enumerate() {
            *reads = bits[q * stride + leaf];
        }
        leaf_parities.fill(0);
        plan_leaf(leaf_reads, leaf_parities, valid(leaf));
        let first = (leaf * POINTS_PER_LEAF as usize) as u32;
        listing.add(first, |q| leaf_reads[q]);
        let first_block = (leaf * BLOCKS_PER_LEAF) as u32;
        listing.add(PARITY_ENTRY | first_block, |q| u128::from(leaf_parities[q]));
    }
}

/// Where [`select_pages`] lists the entries read.
struct Listing<'a> {
    group: usize,
    queries: usize,
    selected: &'a mut Vec<u32>,
    patterns: &'a mut Vec<u8>,
    leaf_patterns: &'a mut [[u8; POINTS_PER_LEAF as usize]],
}

impl Listing<'_> {
    /// Lists entry `first + p` for every bit p that some query's
    /// `reads(q)` has, with which queries of each group read it.
    fn add(&mut self, first: u32, reads: impl Fn(usize) -> u128) {
        let mut any = (0..self.queries).fold(0u128, |any, q| any | reads(q));
        if any == 0 {
            return;
        }
        let mut members = [0u128; MAX_GROUP as usize];
        for (index, out) in self.leaf_patterns.iter_mut().enumerate() {
            let first_query = index * self.group;
            let count = self.group.min(self.queries - first_query);
            for (slot, word) in members.iter_mut().enumerate() {
                *word = if slot < count { reads(first_query + slot) } else { 0 };
            }
            patterns_of_leaf(&members, out);
        }
        while any != 0 {
            let offset = any.trailing_zeros() as usize;
            any &= any - 1;
            self.selected.push(first + offset as u32);
            self.patterns.extend(self.leaf_patterns.iter().map(|leaf_pattern| leaf_pattern[offset]));
        }
    }
}

/// The pattern of each of a leaf's 128 pages in one group: bit s of
/// `out[p]` is bit p of `members[s]` (query s of the group selects page p).
/// Eight pages at a time, as an 8 × 8 bit matrix transpose.
fn patterns_of_leaf(members: &[u128; MAX_GROUP as usize], out: &mut [u8; POINTS_PER_LEAF as usize]) {
    for (byte, pages) in out.chunks_exact_mut(8).enumerate() {
        // Row s (byte s) holds query s's bits for these eight pages.
        let rows = members
            .iter()
            .enumerate()
            .fold(0u64, |rows, (s, word)| rows | u64::from((word >> (8 * byte)) as u8) << (8 * s));
        pages.copy_from_slice(&transpose_bits(rows).to_le_bytes());
    }
}

/// Transposes the 8 × 8 bit matrix whose row r is byte r and column c is
/// bit c: bit c of byte r goes to bit r of byte c.
fn transpose_bits(mut x: u64) -> u64 {
    // Swap ever larger blocks across the diagonal: 1 × 1, 2 × 2, then 4 × 4.
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// Orders the selected pages for visiting, [`PAGES_AT_ONCE`] at a time.
/// Pages the first group sends to one bucket are visited together, so that
/// the sweep sums them in registers: a counting sort by the first group's
/// pattern, which keeps each pattern's pages in address order. Each
/// pattern's pages then fill whole visits, whose pages are spread out: the
/// pattern's pages are dealt round the visits like cards, so that a
/// visit's pages lie far apart and not within a few pages of each other
/// (one eighth of the pattern's pages apart, for a batch of one an eighth
/// of the chunk). Far apart, the pages stream from memory faster
/// (docs/performance-log.md). The fewer than [`PAGES_AT_ONCE`] pages of each
/// pattern left over come last, still ordered by pattern.
fn order_by_first_group(scratch: &mut Scratch) {
    let Scratch { groups, selected, patterns, sorted, order, .. } = scratch;
    let first_group = |i: usize| usize::from(patterns[i * *groups]);
    let mut starts = [0u32; 257];
    for i in 0..selected.len() {
        starts[first_group(i) + 1] += 1;
    }
    for pattern in 0..256 {
        starts[pattern + 1] += starts[pattern];
    }
    // Where each pattern's pages begin and end in `sorted`.
    let bounds = starts;
    sorted.clear();
    sorted.resize(selected.len(), 0);
    for i in 0..selected.len() {
        let start = &mut starts[first_group(i)];
        sorted[*start as usize] = i as u32;
        *start += 1;
    }
    let runs = || bounds.windows(2).map(|run| &sorted[run[0] as usize..run[1] as usize]);
    order.clear();
    for run in runs() {
        let visits = run.len() / PAGES_AT_ONCE;
        let dealt =
            (0..visits * PAGES_AT_ONCE).map(|at| run[at % PAGES_AT_ONCE * visits + at / PAGES_AT_ONCE]);
        order.extend(dealt);
    }
    for run in runs() {
        order.extend_from_slice(&run[run.len() / PAGES_AT_ONCE * PAGES_AT_ONCE..]);
    }
}

/// Gives each of a group's `members` queries the XOR of the buckets whose
/// index has the query's bit (`add(slot, bucket)` XORs one bucket into the
/// accumulator of the group's query `slot`), and clears the buckets. A
/// bucket is `width` bytes, and bucket b starts at `b * stride`.
///
/// The top query takes the upper half of the buckets; folding that half
/// onto the lower one (bucket b ^= bucket b + half) then leaves the same
/// question for the other queries over half as many buckets. That costs
/// 2^(g+1) bucket XORs in all, where XORing each bucket into every query of
/// its index costs g·2^(g-1) (1,024 against 510 for g = 8).
#[multiversion(targets("x86_64+avx2+avx"))]
fn fold_buckets(
    buckets: &mut [u8],
    width: usize,
    stride: usize,
    members: usize,
    mut add: impl FnMut(usize, &[u8]),
) {
    for slot in (0..members).rev() {
        let half = stride << slot;
        let (lower, upper) = buckets[..2 * half].split_at_mut(half);
        for (low, high) in lower.chunks_exact_mut(stride).zip(upper.chunks_exact_mut(stride)) {
            let (low, high) = (&mut low[..width], &mut high[..width]);
            add(slot, high);
            xor_into(low, high);
            high.fill(0);
        }
    }
    // Bucket 0 now holds the XOR of all the others: not an answer of anyone's.
    buckets[..width].fill(0);
}

/// XORs page `i` into bucket `patterns[i]` (0: into none), one stripe of
/// all pages at a time, so that the pages stream from memory together;
/// bucket b starts at `b * stride`. The pages come ordered by pattern, so
/// pages bound for the same bucket are neighbours: each run of them is
/// summed in registers and XORed into its bucket once (a batch of one has
/// a single run).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+avx", "x86_64+avx2+avx"))]
fn sweep_pages_into_buckets<const N: usize>(
    buckets: &mut [u8],
    stride: usize,
    pages: [&[u8]; N],
    patterns: [u8; N],
) {
    let page_size = pages[0].len();
    // A visit of one pattern (every visit of a batch of one) gets a loop of
    // its own, which the compiler unrolls over the pages: the general loop
    // below alone made a batch of one slower (docs/performance-log.md).
    if patterns.iter().all(|&p| p == patterns[0]) {
        if patterns[0] == 0 {
            return;
        }
        let bucket = usize::from(patterns[0]) * stride;
        for start in (0..page_size).step_by(STRIPE) {
            let mut sum = [0u8; STRIPE];
            for page in pages {
                xor_into(&mut sum, &page[start..start + STRIPE]);
            }
            xor_into(&mut buckets[bucket + start..bucket + start + STRIPE], &sum);
        }
        return;
    }
    for start in (0..page_size).step_by(STRIPE) {
        let stripe = start..start + STRIPE;
        let mut sum = [0u8; STRIPE];
        for (i, page) in pages.iter().enumerate() {
            xor_into(&mut sum, &page[stripe.clone()]);
            let pattern = patterns[i];
            if i + 1 < N && patterns[i + 1] == pattern {
                continue;
            }
            if pattern != 0 {
                let bucket = usize::from(pattern) * stride;
                xor_into(&mut buckets[bucket + start..bucket + start + STRIPE], &sum);
            }
            sum = [0; STRIPE];
        }
    }
}

/// XORs page `i` into bucket `patterns[i]` (0: into none) page by page:
/// for pages already in the cache, a tight loop over each page beats
/// [`sweep_pages_into_buckets`]'s stripes of all pages, which must keep
/// eight page and bucket addresses live and check each stripe's bounds.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+avx", "x86_64+avx2+avx"))]
fn xor_cached_pages_into_buckets<const N: usize>(
    buckets: &mut [u8],
    stride: usize,
    pages: [&[u8]; N],
    patterns: [u8; N],
) {
    for (page, pattern) in pages.iter().zip(patterns) {
        if pattern != 0 {
            let bucket = usize::from(pattern) * stride;
            xor_into(&mut buckets[bucket..bucket + page.len()], page);
        }
    }
}

/// The baseline every pass is measured against: reads every page once, on
/// every core, XORing it into one accumulator, and returns the XOR of all
/// pages so that the reads cannot be optimized away. Pages are read in
/// order, one after the other: the fastest plain read measured on our machines.
pub fn read_every_page(pages: &[u8], page_size: usize) -> Vec<u8> {
    // Accumulators on a cache line, as the engine's buckets are.
    let zeroed = || AlignedBytes::zeroed(page_size, CACHE_LINE);
    pages
        .par_chunks(page_size * POINTS_PER_LEAF as usize * CHUNK_LEAVES as usize)
        .fold(zeroed, |mut acc, chunk| {
            xor_each_page_into(&mut acc, chunk);
            acc
        })
        .reduce(zeroed, |mut a, b| {
            xor_into(&mut a, &b);
            a
        })
        .to_vec()
}

/// XORs each page of `pages` into `acc`, whose length is the page size.
/// Compiled like the engine's own loops, so that the baseline and the
/// passes use the same instructions.
#[multiversion(targets("x86_64+avx2+avx"))]
fn xor_each_page_into(acc: &mut [u8], pages: &[u8]) {
    pages.chunks_exact(acc.len()).for_each(|page| xor_into(acc, page));
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejects_a_batch_limit_whose_passes_do_not_fit_in_memory() {
        let records: Vec<(Vec<u8>, Vec<u8>)> =
            (0..100u32).map(|i| (i.to_le_bytes().to_vec(), vec![1; 8])).collect();
        let options = morphogen_table::BuildOptions {
            page_size: 4096,
            value_size: Some(8),
            choices: 2,
            ..Default::default()
        };
        let table = morphogen_table::build(&records[..], &options, &morphogen_table::NoProgress).unwrap();
        let engine = CpuEngine::new(table);
        // A 4-KiB page's group of 8 queries has 256 buckets of a page each.
        let one = engine.pass_bytes(1);
        let big = engine.pass_bytes(65_535);
        assert!(big > 65_535 / 8 * 256 * 4096, "{big}");
        assert!(engine.pass_bytes(64) > engine.pass_bytes(32), "more queries need more memory");
        engine.check_max_batch(1, one).unwrap();
        let error = engine.check_max_batch(65_535, 1 << 30).unwrap_err().to_string();
        assert!(error.contains("65535 queries") && error.contains("can hold here is"), "{error}");
        let fitting: usize = error.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            fitting >= 1 && engine.pass_bytes(fitting) <= 1 << 30 && engine.pass_bytes(fitting + 1) > 1 << 30
        );
    }

    use super::*;

    #[test]
    fn page_writes_keep_every_block_parity_exact() {
        // 300 pages a sub-table: the last block of each is short.
        let layout = Layout::new(512, 8, 2, 300, [0; 16]).unwrap();
        let page =
            |seed: u64| -> Vec<u8> { (0..512u64).map(|i| (i * 131 + seed * 7919 % 251) as u8).collect() };
        let pages = (0..600).flat_map(page).collect();
        let mut engine = CpuEngine::new(Table::new(layout, 0, pages).unwrap());
        let exact = |engine: &CpuEngine| engine.parities == BlockParities::of(&engine.table);
        // Page 9 twice, with other bytes: its last write counts.
        let writes: Vec<PageWrite> = [0, 9, 297, 9, 299, 300, 599]
            .iter()
            .enumerate()
            .map(|(at, &index)| PageWrite { index, bytes: page(1000 + at as u64) })
            .collect();
        for bad in [PageWrite { index: 1, bytes: vec![0; 511] }, PageWrite { index: 600, bytes: page(1) }] {
            let refused = [writes[0].clone(), bad];
            assert!(engine.write_pages(&refused).is_err());
            assert!(exact(&engine), "refused writes leave the parities as they were");
        }
        engine.write_pages(&writes).unwrap();
        assert!(exact(&engine), "written pages are in their blocks' parities");
    }

    #[test]
    fn group_buckets_fit_the_budget() {
        assert_eq!(group_size(512), 8);
        assert_eq!(group_size(4096), 8);
        assert_eq!(group_size(16384), 6);
        assert_eq!(group_size(65536), 4);
        for shift in 9..=16 {
            assert!((1usize << shift) << group_size(1 << shift) <= GROUP_BUCKET_BYTES);
        }
    }

    #[test]
    fn folding_gives_each_query_the_buckets_its_bit_names() {
        // Buckets of 2 bytes, 3 apart: the byte between them is not a bucket's.
        let (width, stride, gap) = (2, 3, 0xEE);
        for members in 1..=MAX_GROUP as usize {
            let mut buckets: Vec<u8> = (0..stride << members)
                .map(|i| if i % stride < width { (i * 37 % 251) as u8 } else { gap })
                .collect();
            let bucket =
                |buckets: &[u8], index: usize| buckets[index * stride..index * stride + width].to_vec();
            // The plain definition: query s takes every bucket whose index has bit s.
            let expected: Vec<Vec<u8>> = (0..members)
                .map(|slot| {
                    let mut answer = vec![0u8; width];
                    for index in (0..1 << members).filter(|index| index >> slot & 1 == 1) {
                        xor_into(&mut answer, &bucket(&buckets, index));
                    }
                    answer
                })
                .collect();
            let mut answers = vec![vec![0u8; width]; members];
            fold_buckets(&mut buckets, width, stride, members, |slot, bucket| {
                xor_into(&mut answers[slot], bucket)
            });
            assert_eq!(answers, expected, "{members} members");
            for (i, &byte) in buckets.iter().enumerate() {
                let wanted = if i % stride < width { 0 } else { gap };
                assert_eq!(byte, wanted, "byte {i} after folding for {members} members");
            }
        }
    }

    #[test]
    fn transposing_bits_moves_bit_c_of_byte_r_to_bit_r_of_byte_c() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100 {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let x = rng;
            let t = transpose_bits(x);
            for r in 0..8 {
                for c in 0..8 {
                    assert_eq!(t >> (8 * c + r) & 1, x >> (8 * r + c) & 1, "{x:#x}: row {r}, column {c}");
                }
            }
        }
    }

    #[test]
    fn leaf_patterns_name_the_queries_that_select_each_page() {
        let members: [u128; 8] = std::array::from_fn(|s| {
            (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128 * (s as u128 + 3)).rotate_left(s as u32 * 11)
        });
        let mut out = [0u8; 128];
        patterns_of_leaf(&members, &mut out);
        for (page, &pattern) in out.iter().enumerate() {
            let expected = (0..8).fold(0u8, |p, s| p | ((members[s] >> page & 1) as u8) << s);
            assert_eq!(pattern, expected, "page {page}");
        }
    }

    #[test]
    fn each_pattern_fills_whole_visits_of_pages_far_apart_then_the_rest_follow_by_pattern() {
        // The first group's pattern of each selected page (a group of one):
        // twenty pages of pattern 5, seven of pattern 2, three of pattern 7.
        let first_group =
            [5, 2, 5, 7, 5, 2, 5, 5, 2, 5, 7, 5, 2, 5, 5, 2, 5, 5, 2, 5, 5, 7, 2, 5, 5, 5, 5, 5, 5, 5];
        let mut scratch = Scratch {
            expander: Expander::new(),
            bits: Vec::new(),
            group: 8,
            groups: 1,
            selected: (100..130).collect(),
            patterns: first_group.to_vec(),
            sorted: Vec::new(),
            order: Vec::new(),
            leaf_patterns: Vec::new(),
            leaf_reads: Vec::new(),
            leaf_parities: Vec::new(),
            buckets: AlignedBytes::zeroed(0, CACHE_LINE),
            answers: Answers::zeroed(&Layout::new(512, 8, 2, 128, [0; 16]).unwrap(), 1),
        };
        order_by_first_group(&mut scratch);
        // Pattern 5's pages, in address order, are the entries
        // [0, 2, 4, 6, 7, 9, 11, 13, 14, 16, 17, 19, 20, 23, 24, 25, 26, 27, 28, 29].
        // Its first sixteen fill two visits, dealt alternately: 1st, 3rd,
        // 5th, ... and 2nd, 4th, .... Pattern 2 fills no visit.
        let visits = [[0, 4, 7, 11, 14, 17, 20, 24], [2, 6, 9, 13, 16, 19, 23, 25]];
        // Then what is left, by pattern: all of 2, the last four of 5, all of 7.
        let rest = [1, 5, 8, 12, 15, 18, 22, 26, 27, 28, 29, 3, 10, 21];
        assert_eq!(scratch.order, [visits.concat(), rest.to_vec()].concat());
    }
}
