//! Two-party distributed point function (DPF) for morphogen.
//!
//! [`generate`]`(n, alpha, rng)` gives two [`Key`]s. Each one, expanded on its
//! own, is a pseudorandom bit per point of `0..n`; the XOR of the two
//! expansions is 1 at `alpha` and 0 everywhere else. A server holding one key
//! learns nothing about `alpha`.
//!
//! The construction is the tree of Boyle, Gilboa and Ishai (CCS 2016) with
//! early termination: a leaf is a 128-bit block holding the bits of 128
//! consecutive points, so the tree has `ceil(log2(ceil(n / 128)))` levels.
//! The PRG is ChaCha12 keyed by the 128-bit node seed. `docs/CRYPTO.md` of the
//! project explains the construction and why it is safe for a server to skip
//! the points its own key does not select.
//!
//! Bit layout of every expansion: point `x` is bit `x % 128` (least
//! significant first) of block `x / 128`. Bits of points `>= n` in the last
//! block are always 0.
//!
//! No I/O, no async, no dependency on the rest of morphogen.

mod eval;
mod generate;
mod key;
mod prg;

pub use eval::Expander;
pub use generate::generate;
pub use key::{KEY_FORMAT_VERSION, Key, Party};

/// Points per leaf block.
pub const POINTS_PER_LEAF: u64 = 128;

/// The largest domain a key can cover: 2^32 points.
pub const MAX_DOMAIN: u64 = 1 << 32;

/// Errors of the DPF crate. Messages name public parameters only, never a
/// target point or key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The domain size is outside `1..=2^32`.
    #[error("domain size {0} is outside 1..=2^32")]
    DomainSize(u64),
    /// A point lies outside `0..n`. The point itself is not reported: it may be a secret index.
    #[error("point is outside the domain of {domain} points")]
    PointOutOfDomain {
        /// The domain size `n`.
        domain: u64,
    },
    /// A range of leaves reaches past the last leaf.
    #[error("leaf range {start}..{end} is outside the {leaves} leaves of the domain")]
    LeafRange {
        /// First leaf asked for.
        start: u64,
        /// One past the last leaf asked for.
        end: u64,
        /// Number of leaves in the domain.
        leaves: u64,
    },
    /// An output buffer does not have one block per leaf asked for.
    #[error("output holds {actual} blocks, {expected} needed")]
    OutputLength {
        /// Blocks needed.
        expected: usize,
        /// Blocks given.
        actual: usize,
    },
    /// The encoded key ends before its header does.
    #[error("key is truncated")]
    Truncated,
    /// The encoded key has a format version this build does not read.
    #[error("unsupported key format version {0} (this build reads version {KEY_FORMAT_VERSION})")]
    UnsupportedKeyVersion(u8),
    /// The party byte is neither 0 nor 1.
    #[error("invalid party {0}: must be 0 or 1")]
    InvalidParty(u8),
    /// The encoded depth does not match the encoded domain size.
    #[error("key depth {depth} does not match domain size {domain} (expected depth {expected})")]
    DepthMismatch {
        /// Depth in the key.
        depth: u8,
        /// Domain size in the key.
        domain: u64,
        /// Depth that domain size requires.
        expected: u32,
    },
    /// The encoded key is longer or shorter than its domain size requires.
    #[error("key is {actual} bytes, its domain size requires {expected}")]
    KeyLength {
        /// Length the domain size requires.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// A control-bit byte has bits other than the lowest two set.
    #[error("control bits of level {level} have reserved bits set")]
    InvalidControlBits {
        /// Tree level of the bad byte.
        level: u8,
    },
}

/// Number of 128-point leaf blocks covering `n` points.
pub fn leaf_count(n: u64) -> Result<u64, Error> {
    check_domain(n)?;
    Ok(n.div_ceil(POINTS_PER_LEAF))
}

/// Depth of the tree for `n` points: `ceil(log2(ceil(n / 128)))`.
pub fn depth_for(n: u64) -> Result<u32, Error> {
    Ok(leaf_count(n)?.next_power_of_two().trailing_zeros())
}

fn check_domain(n: u64) -> Result<(), Error> {
    if (1..=MAX_DOMAIN).contains(&n) { Ok(()) } else { Err(Error::DomainSize(n)) }
}

/// A mask of all ones when `bit` is 1, all zeros when it is 0: applies a
/// correction without a data-dependent branch.
#[inline(always)]
pub(crate) fn mask(bit: u8) -> u128 {
    0u128.wrapping_sub(u128::from(bit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_follows_the_leaf_count() {
        assert_eq!(depth_for(1), Ok(0));
        assert_eq!(depth_for(128), Ok(0));
        assert_eq!(depth_for(129), Ok(1));
        assert_eq!(depth_for(256), Ok(1));
        assert_eq!(depth_for(257), Ok(2));
        assert_eq!(depth_for(1 << 24), Ok(17));
        assert_eq!(depth_for((1 << 24) + 1), Ok(18));
        assert_eq!(depth_for(MAX_DOMAIN), Ok(25));
    }

    #[test]
    fn rejects_domain_sizes_outside_the_supported_range() {
        assert_eq!(depth_for(0), Err(Error::DomainSize(0)));
        assert_eq!(depth_for(MAX_DOMAIN + 1), Err(Error::DomainSize(MAX_DOMAIN + 1)));
        assert_eq!(leaf_count(u64::MAX), Err(Error::DomainSize(u64::MAX)));
    }
}
