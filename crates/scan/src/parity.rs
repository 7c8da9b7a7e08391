//! Block parities: the XOR of every block of [`BLOCK_PAGES`] pages, kept
//! beside the table by the CPU engine.
//!
//! A DPF key selects a pseudorandom half of the pages. Where a query
//! selects most of a block, its answer can come from the block's other
//! pages and the block's parity instead, since the XOR of the pages it
//! selects is the parity XOR the others. Reading whichever is fewer, a
//! query alone reads min(s, 9 - s) pages of a block of 8 of which it
//! selects s: 3.27 pages on average instead of 4, about a fifth less, for an
//! eighth more memory. For a batch, a block's queries switch only when the
//! pages the whole batch reads get fewer, so a pass never reads more.

use morphogen_table::Table;
use rayon::prelude::*;

use crate::aligned::AlignedBytes;
use crate::xor_into;

/// Pages per block: a byte of a query's selection bits.
pub(crate) const BLOCK_PAGES: u64 = 8;

/// Blocks per DPF leaf of 128 pages.
pub(crate) const BLOCKS_PER_LEAF: usize = 128 / BLOCK_PAGES as usize;

/// The parity page of every block of every sub-table: the XOR of its pages
/// (those of a sub-table's last block that lie past its end count as zero).
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct BlockParities {
    page_size: usize,
    blocks_per_table: u64,
    /// Sub-table after sub-table, block after block, from a page boundary
    /// as the pages of a table file.
    bytes: AlignedBytes,
}

impl BlockParities {
    /// The parities of `table`'s blocks, computed on every core.
    pub(crate) fn of(table: &Table) -> BlockParities {
        let layout = table.layout();
        let page_size = layout.page_size() as usize;
        let blocks_per_table = layout.pages_per_table().div_ceil(BLOCK_PAGES);
        let blocks = u64::from(layout.choices()) * blocks_per_table;
        let mut bytes = AlignedBytes::zeroed(blocks as usize * page_size, page_size);
        bytes.par_chunks_exact_mut(page_size).enumerate().for_each(|(block, parity)| {
            compute(table, blocks_per_table, block as u64, parity);
        });
        BlockParities { page_size, blocks_per_table, bytes }
    }

    /// The parity page of block `block` of sub-table `sub_table`.
    pub(crate) fn page(&self, sub_table: u8, block: u64) -> &[u8] {
        let index = (u64::from(sub_table) * self.blocks_per_table + block) as usize;
        &self.bytes[index * self.page_size..(index + 1) * self.page_size]
    }

    /// XORs page `index` of `table` (counted over all sub-tables) into its
    /// block's parity: done before a page is written, it takes the old
    /// bytes out; done after, it puts the new ones in. Two page XORs a
    /// written page, where recomputing its block would take eight.
    pub(crate) fn toggle(&mut self, table: &Table, index: u64) {
        let pages_per_table = table.layout().pages_per_table();
        let block = index / pages_per_table * self.blocks_per_table + index % pages_per_table / BLOCK_PAGES;
        let start = block as usize * self.page_size;
        xor_into(&mut self.bytes[start..start + self.page_size], table.page_at(index));
    }
}

/// Writes the XOR of the pages of block `block` (counted over all
/// sub-tables) into `parity`.
fn compute(table: &Table, blocks_per_table: u64, block: u64, parity: &mut [u8]) {
    let pages_per_table = table.layout().pages_per_table();
    let sub_table = (block / blocks_per_table) as u8;
    let first = block % blocks_per_table * BLOCK_PAGES;
    parity.fill(0);
    for page in first..(first + BLOCK_PAGES).min(pages_per_table) {
        xor_into(parity, table.page(sub_table, page));
    }
}

/// Plans the reads of one leaf: `selections[q]` holds the pages of the leaf
/// query q selects (bit p: page p), all within `valid`, the pages the leaf
/// has. For each block where it makes the leaf's reads fewer, the queries
/// that select more than half of the block's pages are switched to its
/// other pages: their selection of the block is complemented within
/// `valid` and bit `block` of their `parities` word is set.
///
/// All 16 blocks of the leaf are planned at once, a byte each, since the
/// scan thread plans every leaf of every query of a pass.
pub(crate) fn plan_leaf(selections: &mut [u128], parities: &mut [u16], valid: u128) {
    debug_assert_eq!(selections.len(), parities.len());
    // A selection's other pages, and 0xff in the blocks where they and the
    // parity are fewer pages than it.
    let switch_of = |selection: u128| {
        let others = valid & !selection;
        (others, bytes_greater(byte_counts(selection), byte_counts(others) + LOW_BITS))
    };
    // Pages the batch reads as it is, and once switched; blocks some query switches in.
    let (mut plain, mut switched, mut switching) = (0u128, 0u128, 0u128);
    for &selection in selections.iter() {
        let (others, switch) = switch_of(selection);
        plain |= selection;
        switched |= (others & switch) | (selection & !switch);
        switching |= switch;
    }
    // The blocks where switching reads fewer pages, its parity included.
    let fewer = bytes_greater(byte_counts(plain), byte_counts(switched) + (switching & LOW_BITS));
    let planned = switching & fewer;
    if planned == 0 {
        return;
    }
    for (selection, parity) in selections.iter_mut().zip(parities.iter_mut()) {
        let (others, switch) = switch_of(*selection);
        let switch = switch & planned;
        *selection = (others & switch) | (*selection & !switch);
        *parity |= byte_flags(switch);
    }
}

/// The lowest bit of every byte.
const LOW_BITS: u128 = u128::MAX / 0xff;

/// The highest bit of every byte.
const HIGH_BITS: u128 = LOW_BITS << 7;

/// The number of set bits of each byte of `x`, in that byte.
fn byte_counts(x: u128) -> u128 {
    let (m1, m2, m4) = (LOW_BITS * 0x55, LOW_BITS * 0x33, LOW_BITS * 0x0f);
    let x = x - ((x >> 1) & m1);
    let x = (x & m2) + ((x >> 2) & m2);
    (x + (x >> 4)) & m4
}

/// 0xff in each byte where `a`'s byte is greater than `b`'s, 0 elsewhere.
/// Every byte of both must be below 0x80, so no byte borrows from the next.
fn bytes_greater(a: u128, b: u128) -> u128 {
    let greater = ((a | HIGH_BITS) - b - LOW_BITS) & HIGH_BITS;
    (greater >> 7) * 0xff
}

/// Bit b set where byte b of `mask` (every byte 0 or 0xff) is set.
fn byte_flags(mask: u128) -> u16 {
    // The multiply moves bit 0 of byte i to bit 56 + i, without carries.
    let gather =
        |half: u64| ((half & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u16;
    gather(mask as u64) | gather((mask >> 64) as u64) << 8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pseudorandom word from `state` (SplitMix64).
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 128 pseudorandom bits.
    fn next_word(state: &mut u64) -> u128 {
        u128::from(next(state)) << 64 | u128::from(next(state))
    }

    /// The pages a leaf has: all of them, or with `short`, as many as a
    /// sub-table's last leaf may have.
    fn leaf_pages(state: &mut u64, short: bool) -> u128 {
        if short { u128::MAX >> (next(state) % 128) } else { u128::MAX }
    }

    /// Stand-in page contents: page p of the leaf is `values[p]`, block
    /// b's parity the XOR of the valid ones.
    fn answer(selection: u128, parities: u16, values: &[u64; 128], valid: u128) -> u64 {
        let pages = (0..128).filter(|p| selection >> p & 1 == 1).fold(0, |a, p| a ^ values[p]);
        (0..BLOCKS_PER_LEAF).filter(|b| parities >> b & 1 == 1).fold(pages, |a, b| {
            (8 * b..8 * b + 8).filter(|&p| valid >> p & 1 == 1).fold(a, |a, p| a ^ values[p])
        })
    }

    #[test]
    fn planned_reads_give_the_same_answers_and_never_more_pages() {
        let mut state = 7;
        for round in 0..500 {
            let queries = 1 + round % 9;
            let valid = leaf_pages(&mut state, round % 5 == 0);
            let selections: Vec<u128> = (0..queries).map(|_| next_word(&mut state) & valid).collect();
            let values: [u64; 128] = std::array::from_fn(|_| next(&mut state));
            let mut planned = selections.clone();
            let mut parities = vec![0u16; queries];
            plan_leaf(&mut planned, &mut parities, valid);
            for q in 0..queries {
                assert_eq!(
                    answer(planned[q], parities[q], &values, valid),
                    answer(selections[q], 0, &values, valid),
                    "round {round}, query {q}"
                );
                assert_eq!(planned[q] & !valid, 0, "round {round}: a page past the leaf's end");
            }
            let union = |words: &[u128]| words.iter().fold(0, |a, w| a | w).count_ones();
            let parity_reads = parities.iter().fold(0, |a, p| a | p).count_ones();
            assert!(union(&planned) + parity_reads <= union(&selections), "round {round}");
        }
    }

    /// The plan, block after block and query after query: the plain twin
    /// of `plan_leaf`.
    fn plan_block_by_block(selections: &mut [u128], parities: &mut [u16], valid: u128) {
        for block in 0..BLOCKS_PER_LEAF {
            let shift = 8 * block;
            let valid = (valid >> shift) as u8;
            let of = |word: u128| (word >> shift) as u8;
            let fewer = |selection: u8| (valid & !selection).count_ones() + 1 < selection.count_ones();
            let (mut plain, mut switched, mut switching) = (0u8, 0u8, false);
            for &word in selections.iter() {
                let selection = of(word);
                plain |= selection;
                switched |= if fewer(selection) { valid & !selection } else { selection };
                switching |= fewer(selection);
            }
            if !switching || switched.count_ones() + 1 >= plain.count_ones() {
                continue;
            }
            for (word, parity) in selections.iter_mut().zip(parities.iter_mut()) {
                let selection = of(*word);
                if fewer(selection) {
                    *word = *word & !(0xffu128 << shift) | u128::from(valid & !selection) << shift;
                    *parity |= 1 << block;
                }
            }
        }
    }

    #[test]
    fn the_plan_equals_its_block_by_block_twin() {
        let mut state = 11;
        for round in 0..2000 {
            let queries = 1 + round % 12;
            let valid = leaf_pages(&mut state, round % 3 == 0);
            // Denser and sparser selections than a DPF's half, so that every count occurs.
            let density = round % 4;
            let word = |state: &mut u64| {
                let (w, v) = (next_word(state), next_word(state));
                match density {
                    0 => w & v,
                    1 => w | v,
                    _ => w,
                }
            };
            let selections: Vec<u128> = (0..queries).map(|_| word(&mut state) & valid).collect();
            let (mut fast, mut plain) = (selections.clone(), selections);
            let (mut fast_parities, mut plain_parities) = (vec![0u16; queries], vec![0u16; queries]);
            plan_leaf(&mut fast, &mut fast_parities, valid);
            plan_block_by_block(&mut plain, &mut plain_parities, valid);
            assert_eq!((fast, fast_parities), (plain, plain_parities), "round {round}");
        }
    }

    #[test]
    fn byte_helpers_work_byte_by_byte() {
        let x: u128 = 0x00ff_0f01_8000_7e3c_1234_5678_9abc_def0;
        let counts = byte_counts(x).to_le_bytes();
        for (count, byte) in counts.iter().zip(x.to_le_bytes()) {
            assert_eq!(u32::from(*count), byte.count_ones());
        }
        let a = u128::from_le_bytes([0, 1, 2, 9, 9, 0x7f, 3, 3, 0, 0, 8, 1, 5, 5, 6, 0x7f]);
        let b = u128::from_le_bytes([0, 0, 3, 8, 9, 0x7e, 4, 2, 1, 0, 0, 1, 6, 4, 6, 0]);
        let greater = bytes_greater(a, b).to_le_bytes();
        for (i, (x, y)) in a.to_le_bytes().into_iter().zip(b.to_le_bytes()).enumerate() {
            assert_eq!(greater[i], if x > y { 0xff } else { 0 }, "byte {i}");
        }
        assert_eq!(byte_flags(bytes_greater(a, b)), 0b1010_0100_1010_1010);
    }

    #[test]
    fn one_query_reads_the_smaller_side_of_each_block() {
        // Block 0: 6 of 8 selected, read the 2 others and the parity.
        // Block 1: 4 of 8, as it is (4 others and the parity are more).
        // Block 2: 8 of 8, the parity alone. Block 3: 1 of 8, as it is.
        let selection = 0b0011_1111 | 0b1111_0000 << 8 | 0xff << 16 | 0b0100_0000 << 24;
        let mut planned = [selection];
        let mut parities = [0u16];
        plan_leaf(&mut planned, &mut parities, u128::MAX);
        assert_eq!(planned[0], 0b1100_0000 | 0b1111_0000 << 8 | 0b0100_0000 << 24);
        assert_eq!(parities[0], 0b101);
    }

    #[test]
    fn a_batch_switches_a_block_only_when_it_reads_fewer_pages() {
        // The first selects 6 of block 0 and the second 4 of those: the
        // batch reads 6 pages. Switching the first would read its 2 others
        // and the parity besides the second's 4, 7 in all, so it stays.
        let mut planned = [0b0011_1111u128, 0b0000_1111];
        let mut parities = [0u16; 2];
        plan_leaf(&mut planned, &mut parities, u128::MAX);
        assert_eq!((planned, parities), ([0b0011_1111, 0b0000_1111], [0, 0]));
        // Both select the same 7: both read the 8th and the parity.
        let mut planned = [0b0111_1111u128, 0b0111_1111];
        plan_leaf(&mut planned, &mut parities, u128::MAX);
        assert_eq!((planned, parities), ([0b1000_0000, 0b1000_0000], [1, 1]));
    }
}
