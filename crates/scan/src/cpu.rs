//! The CPU engine: all cores over chunks of pages. For each chunk it expands
//! every query's key for just those pages, then reads each page that at
//! least one query selects once; pages no query selects are never touched.
//!
//! Two things keep the work per page small on a machine whose cores, not
//! its memory, are the limit:
//! * Queries go in groups of g (8 for 4-KiB pages; see [`group_size`]). A
//!   selected page is XORed into one of 2^g buckets per group, chosen by
//!   which of the group's queries select it, instead of into every
//!   selecting query's accumulator. At the end of a chunk each query's
//!   accumulator takes the XOR of the buckets whose index has its bit (the
//!   "four Russians" trick for this GF(2) matrix product): a batch of 8
//!   costs one page XOR per page, not about 4.
//! * Selected pages are XORed [`PAGES_AT_ONCE`] at a time, stripe by stripe,
//!   so that several pages stream from memory together.

use std::ops::Range;
use std::sync::Arc;

use morphogen_dpf::{Expander, POINTS_PER_LEAF, leaf_count};
use morphogen_table::{Layout, PageWrite, Table};
use rayon::prelude::*;

use crate::{Answers, Engine, Error, Query, time_host_read, validate, write_shared, xor_into};

/// DPF leaves (of 128 pages each) per unit of work: 8,192 pages, 32 MiB of
/// 4-KiB pages. Large enough that folding the buckets (g·2^(g-1) page XORs
/// per group, 1,024 for g = 8) costs little next to the scan, small enough
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

/// Selected pages XORed together in one sweep.
const PAGES_AT_ONCE: usize = 8;

/// Bytes XORed per step: one cache line.
const STRIPE: usize = 64;

/// Answers queries on every core of the machine (rayon's global pool).
pub struct CpuEngine {
    table: Arc<Table>,
}

impl CpuEngine {
    /// An engine over `table`.
    pub fn new(table: Arc<Table>) -> CpuEngine {
        CpuEngine { table }
    }
}

/// Per-task buffers, made once per rayon task and reused for its chunks.
struct Scratch {
    expander: Expander,
    /// `bits[q * CHUNK_LEAVES + i]`: query q's selection bits for leaf i of the chunk.
    bits: Vec<u128>,
    /// Queries per bucket group, g.
    group: usize,
    /// 2^g pages per query group, all zero between chunks. Bucket 0 (pages
    /// selected by none of the group) is never written.
    buckets: Vec<u8>,
    answers: Answers,
}

impl Engine for CpuEngine {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device(&self) -> String {
        format!("{} CPU threads", rayon::current_num_threads())
    }

    fn layout(&self) -> &Layout {
        self.table.layout()
    }

    fn table(&self) -> Option<&Table> {
        Some(&self.table)
    }

    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), Error> {
        write_shared(&mut self.table, writes)
    }

    fn plain_read_seconds(&mut self) -> Result<f64, Error> {
        Ok(time_host_read(self.table.pages(), self.table.layout().page_size() as usize))
    }

    fn pass(&mut self, queries: &[Query]) -> Result<Answers, Error> {
        let layout = self.table.layout();
        validate(layout, queries)?;
        let leaves = leaf_count(layout.pages_per_table()).map_err(|e| Error::Fault(e.to_string()))?;
        let chunks_per_table = leaves.div_ceil(CHUNK_LEAVES);
        let chunks = u64::from(layout.choices()) * chunks_per_table;
        let page_size = layout.page_size() as usize;
        // No more queries per group than the batch has: a batch of one needs two buckets.
        let group = group_size(page_size).min(queries.len());
        let groups = queries.len().div_ceil(group);
        let new_scratch = || Scratch {
            expander: Expander::new(),
            bits: vec![0; queries.len() * CHUNK_LEAVES as usize],
            group,
            buckets: vec![0; groups * (page_size << group)],
            answers: Answers::zeroed(layout, queries.len()),
        };
        (0..chunks)
            .into_par_iter()
            .try_fold(new_scratch, |mut scratch, chunk| {
                let sub_table = (chunk / chunks_per_table) as u8;
                let first = (chunk % chunks_per_table) * CHUNK_LEAVES;
                let chunk_leaves = first..(first + CHUNK_LEAVES).min(leaves);
                scan_chunk(&self.table, queries, sub_table, chunk_leaves, &mut scratch)?;
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
    let group = scratch.group;
    let group_buckets = page_size << group;
    for leaf in 0..count {
        let bits_of = |q: usize| scratch.bits[q * stride + leaf];
        // Pages selected by at least one query; bits past the table's end are clear.
        let mut any = (0..queries.len()).fold(0u128, |any, q| any | bits_of(q));
        let first_page = (leaves.start + leaf as u64) * POINTS_PER_LEAF;
        while any != 0 {
            // The next (up to) PAGES_AT_ONCE selected pages of this leaf.
            let mut offsets = [0u32; PAGES_AT_ONCE];
            let mut taken = 0;
            while any != 0 && taken < PAGES_AT_ONCE {
                offsets[taken] = any.trailing_zeros();
                any &= any - 1;
                taken += 1;
            }
            let offsets = &offsets[..taken];
            let pages: [&[u8]; PAGES_AT_ONCE] = std::array::from_fn(|i| {
                offsets.get(i).map_or(&[][..], |&o| table.page(sub_table, first_page + u64::from(o)))
            });
            for (index, buckets) in scratch.buckets.chunks_exact_mut(group_buckets).enumerate() {
                let members = index * group..((index + 1) * group).min(queries.len());
                let mut patterns = [0u8; PAGES_AT_ONCE];
                for (pattern, &offset) in patterns.iter_mut().zip(offsets) {
                    for (slot, q) in members.clone().enumerate() {
                        *pattern |= ((bits_of(q) >> offset & 1) as u8) << slot;
                    }
                }
                xor_pages_into_buckets(buckets, page_size, &pages[..taken], &patterns[..taken]);
            }
        }
    }
    // Fold each group's buckets into its queries' accumulators and clear them.
    // A last group with fewer members only ever wrote the buckets its members name.
    for (index, buckets) in scratch.buckets.chunks_exact_mut(group_buckets).enumerate() {
        let members = group.min(queries.len() - index * group);
        for (pattern, bucket) in buckets.chunks_exact_mut(page_size).enumerate().take(1 << members).skip(1) {
            for slot in (0..members).filter(|slot| pattern >> slot & 1 == 1) {
                xor_into(scratch.answers.page_mut(index * group + slot, usize::from(sub_table)), bucket);
            }
            bucket.fill(0);
        }
    }
    Ok(())
}

/// XORs page `i` into bucket `patterns[i]` (0: into none), one stripe of
/// all pages at a time. When every page goes to the same bucket (always so
/// for a batch of one) the stripes are summed in registers first.
fn xor_pages_into_buckets(buckets: &mut [u8], page_size: usize, pages: &[&[u8]], patterns: &[u8]) {
    let same_bucket = patterns.iter().all(|&p| p == patterns[0]);
    for start in (0..page_size).step_by(STRIPE) {
        let stripe = start..start + STRIPE;
        if same_bucket {
            if patterns[0] == 0 {
                return;
            }
            let mut sum = [0u8; STRIPE];
            for page in pages {
                xor_into(&mut sum, &page[stripe.clone()]);
            }
            let bucket = usize::from(patterns[0]) * page_size;
            xor_into(&mut buckets[bucket + start..bucket + start + STRIPE], &sum);
        } else {
            for (page, &pattern) in pages.iter().zip(patterns) {
                if pattern != 0 {
                    let bucket = usize::from(pattern) * page_size;
                    xor_into(&mut buckets[bucket + start..bucket + start + STRIPE], &page[stripe.clone()]);
                }
            }
        }
    }
}

/// The baseline every pass is measured against: reads every page once, on
/// every core, XORing it into one accumulator, and returns the XOR of all
/// pages so that the reads cannot be optimized away. Pages are read in
/// order, one after the other: the fastest plain read measured on our machines.
pub fn read_every_page(pages: &[u8], page_size: usize) -> Vec<u8> {
    pages
        .par_chunks(page_size * POINTS_PER_LEAF as usize * CHUNK_LEAVES as usize)
        .fold(
            || vec![0u8; page_size],
            |mut acc, chunk| {
                chunk.chunks_exact(page_size).for_each(|page| xor_into(&mut acc, page));
                acc
            },
        )
        .reduce(
            || vec![0u8; page_size],
            |mut a, b| {
                xor_into(&mut a, &b);
                a
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
