//! Evaluation (the server's side): one point, a range of leaves, the whole domain.

use std::ops::Range;

use crate::key::{Key, LevelCorrection};
use crate::prg::{self, Purpose};
use crate::{Error, POINTS_PER_LEAF, leaf_count, mask};

/// Leaves expanded per step of [`Key::expand_full`]: small enough that one
/// step's seeds stay in the L1/L2 cache, large enough that re-walking the top
/// of the tree for each step costs nothing measurable.
const FULL_DOMAIN_STEP: u64 = 1 << 12;

impl Key {
    /// This party's output bit at point `x`: `depth + 1` PRG calls.
    pub fn eval_point(&self, x: u64) -> Result<bool, Error> {
        if x >= self.domain {
            return Err(Error::PointOutOfDomain { domain: self.domain });
        }
        let leaf_index = x / POINTS_PER_LEAF;
        let depth = self.depth();
        let mut seed = self.root;
        let mut bit = self.party.bit();
        for (level, correction) in (0..depth).zip(&self.levels) {
            let side = ((leaf_index >> (depth - 1 - level)) & 1) as usize;
            let children = prg::expand(seed);
            seed = children.seeds[side] ^ (correction.seed & mask(bit));
            bit = children.bits[side] ^ (correction.bits[side] & bit);
        }
        let leaf = prg::leaf(seed) ^ (self.leaf & mask(bit));
        Ok((leaf >> (x % POINTS_PER_LEAF)) & 1 == 1)
    }

    /// This party's bits over the whole domain: `ceil(n / 128)` blocks in the
    /// layout of the crate docs.
    pub fn expand_full(&self) -> Vec<u128> {
        let leaves = leaf_count(self.domain).expect("a key's domain is valid");
        let mut out = vec![0u128; leaves as usize];
        let mut expander = Expander::new();
        for (step, chunk) in out.chunks_mut(FULL_DOMAIN_STEP as usize).enumerate() {
            let start = step as u64 * FULL_DOMAIN_STEP;
            expander
                .expand_leaves(self, start..start + chunk.len() as u64, chunk)
                .expect("chunks lie inside the domain");
        }
        out
    }
}

/// Expands contiguous ranges of leaves, reusing its buffers from call to
/// call: after the first call for a given range size it allocates nothing.
///
/// Expanding `r` leaves costs about `2r + 2·depth` PRG calls: the tree is
/// walked level by level, and each level keeps only the nodes above the range.
#[derive(Default)]
pub struct Expander {
    current: Level,
    next: Level,
}

/// The nodes of one tree level as structure-of-arrays (`seed[j][i]` is word
/// `j` of node `i`), so that a loop over the nodes vectorizes.
#[derive(Default)]
struct Level {
    seed: [Vec<u32>; 4],
    bit: Vec<u32>,
}

impl Level {
    fn len(&self) -> usize {
        self.bit.len()
    }

    fn resize(&mut self, len: usize) {
        self.seed.iter_mut().for_each(|w| w.resize(len, 0));
        self.bit.resize(len, 0);
    }

    /// Keeps only nodes `skip..skip + keep`.
    fn retain(&mut self, skip: usize, keep: usize) {
        for column in self.seed.iter_mut().chain([&mut self.bit]) {
            column.copy_within(skip..skip + keep, 0);
            column.truncate(keep);
        }
    }
}

impl Expander {
    /// An expander with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes this party's blocks for `leaves` into `out` (one block per
    /// leaf). Bits of points `>= n` are cleared.
    pub fn expand_leaves(&mut self, key: &Key, leaves: Range<u64>, out: &mut [u128]) -> Result<(), Error> {
        let total = leaf_count(key.domain)?;
        if leaves.start >= leaves.end || leaves.end > total {
            return Err(Error::LeafRange { start: leaves.start, end: leaves.end, leaves: total });
        }
        let wanted = (leaves.end - leaves.start) as usize;
        if out.len() != wanted {
            return Err(Error::OutputLength { expected: wanted, actual: out.len() });
        }

        let depth = key.depth();
        self.current.resize(1);
        for (column, word) in self.current.seed.iter_mut().zip(prg::words(key.root)) {
            column[0] = word;
        }
        self.current.bit[0] = u32::from(key.party.bit());
        // Index of the first node of the current level that lies above the range.
        let mut first = 0u64;
        for (level, correction) in (1..=depth).zip(&key.levels) {
            expand_level(&self.current, correction, &mut self.next);
            let shift = depth - level;
            let lo = leaves.start >> shift;
            let hi = ((leaves.end - 1) >> shift) + 1;
            // The children span [2·first, 2·first + 2·len); keep [lo, hi).
            self.next.retain((lo - 2 * first) as usize, (hi - lo) as usize);
            std::mem::swap(&mut self.current, &mut self.next);
            first = lo;
        }
        debug_assert_eq!(self.current.len(), wanted);
        leaf_level(&self.current, key.leaf, out);

        if leaves.end == total {
            let tail = key.domain % POINTS_PER_LEAF;
            if tail != 0 {
                out[wanted - 1] &= (1u128 << tail) - 1;
            }
        }
        Ok(())
    }
}

/// Expands every node of `level` into its two children, applying the level's
/// correction where the parent's control bit is 1. The loop body is one
/// branch-free ChaCha block per node; the compiler vectorizes across nodes.
fn expand_level(level: &Level, correction: &LevelCorrection, next: &mut Level) {
    let n = level.len();
    next.resize(2 * n);
    let [s0, s1, s2, s3] = level.seed.each_ref().map(|w| &w[..n]);
    let bit = &level.bit[..n];
    let [n0, n1, n2, n3] = next.seed.each_mut().map(|w| &mut w[..2 * n]);
    let next_bit = &mut next.bit[..2 * n];
    let [c0, c1, c2, c3] = prg::words(correction.seed);
    let [cl, cr] = correction.bits.map(u32::from);
    for i in 0..n {
        let t = bit[i];
        let m = 0u32.wrapping_sub(t);
        let ks = prg::keystream([s0[i], s1[i], s2[i], s3[i]], Purpose::Expand);
        let (l, r) = (2 * i, 2 * i + 1);
        n0[l] = ks[0] ^ (c0 & m);
        n1[l] = ks[1] ^ (c1 & m);
        n2[l] = ks[2] ^ (c2 & m);
        n3[l] = ks[3] ^ (c3 & m);
        n0[r] = ks[4] ^ (c0 & m);
        n1[r] = ks[5] ^ (c1 & m);
        n2[r] = ks[6] ^ (c2 & m);
        n3[r] = ks[7] ^ (c3 & m);
        next_bit[l] = (ks[8] & 1) ^ (cl & t);
        next_bit[r] = ((ks[8] >> 1) & 1) ^ (cr & t);
    }
}

/// Turns leaf seeds into output blocks: `PRG_leaf(seed) ^ (bit ? leaf correction : 0)`.
fn leaf_level(level: &Level, correction: u128, out: &mut [u128]) {
    let n = level.len();
    let [s0, s1, s2, s3] = level.seed.each_ref().map(|w| &w[..n]);
    let bit = &level.bit[..n];
    let out = &mut out[..n];
    let [c0, c1, c2, c3] = prg::words(correction);
    for i in 0..n {
        let m = 0u32.wrapping_sub(bit[i]);
        let ks = prg::keystream([s0[i], s1[i], s2[i], s3[i]], Purpose::Leaf);
        out[i] = prg::join([ks[0] ^ (c0 & m), ks[1] ^ (c1 & m), ks[2] ^ (c2 & m), ks[3] ^ (c3 & m)]);
    }
}
