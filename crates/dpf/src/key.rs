//! DPF keys and their byte format.
//!
//! Format version 1, all integers little-endian:
//!
//! | offset      | size | field                                                   |
//! |-------------|------|---------------------------------------------------------|
//! | 0           | 1    | format version, 1                                       |
//! | 1           | 1    | party: 0 (server A) or 1 (server B)                     |
//! | 2           | 1    | depth `d` of the tree, must equal `depth_for(n)`        |
//! | 3           | 8    | domain size `n`, `1 <= n <= 2^32`                       |
//! | 11          | 16   | root seed                                               |
//! | 27 + 17·i   | 16   | level `i` seed correction                               |
//! | 43 + 17·i   | 1    | level `i` control-bit corrections: bit 0 left, bit 1 right, others 0 |
//! | 27 + 17·d   | 16   | leaf correction                                         |
//!
//! A key for `n = 2^24` (`d = 17`) is 332 bytes.

use std::fmt;

use crate::{Error, MAX_DOMAIN, depth_for};

/// Which of the two servers a key is for. Party A starts with control bit 0,
/// party B with control bit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    /// The first server; encoded as 0.
    A,
    /// The second server; encoded as 1.
    B,
}

impl Party {
    /// The party's initial control bit, which is also its encoding.
    pub fn bit(self) -> u8 {
        match self {
            Party::A => 0,
            Party::B => 1,
        }
    }
}

/// The correction applied at one tree level wherever the control bit is 1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct LevelCorrection {
    pub seed: u128,
    /// Control-bit corrections for the left and right child.
    pub bits: [u8; 2],
}

/// One party's share of a point function over `n` points.
///
/// Its `Debug` output shows only public parameters: seeds and corrections
/// stay out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub(crate) party: Party,
    pub(crate) domain: u64,
    pub(crate) root: u128,
    pub(crate) levels: Vec<LevelCorrection>,
    pub(crate) leaf: u128,
}

/// Current version of the key byte format.
pub const KEY_FORMAT_VERSION: u8 = 1;

const HEADER_LEN: usize = 1 + 1 + 1 + 8 + 16;
const LEVEL_LEN: usize = 16 + 1;

impl Key {
    /// The party this key is for.
    pub fn party(&self) -> Party {
        self.party
    }

    /// Number of points `n` in the key's domain.
    pub fn domain(&self) -> u64 {
        self.domain
    }

    /// Depth of the tree: `ceil(log2(ceil(n / 128)))`.
    pub fn depth(&self) -> u32 {
        self.levels.len() as u32
    }

    /// The root seed. With [`Key::level_corrections`] and
    /// [`Key::leaf_correction`] it lets another implementation of the
    /// expansion (a GPU kernel) walk the same tree. Key material: never log it.
    pub fn root_seed(&self) -> u128 {
        self.root
    }

    /// Each level's correction, top down: the seed correction and the
    /// control-bit corrections for the left and right child (0 or 1).
    pub fn level_corrections(&self) -> impl ExactSizeIterator<Item = (u128, [u8; 2])> + '_ {
        self.levels.iter().map(|level| (level.seed, level.bits))
    }

    /// The correction of the leaves' output blocks.
    pub fn leaf_correction(&self) -> u128 {
        self.leaf
    }

    /// Length in bytes of the encoding of a key over `n` points.
    pub fn encoded_len(n: u64) -> Result<usize, Error> {
        Ok(HEADER_LEN + LEVEL_LEN * depth_for(n)? as usize + 16)
    }

    /// Encodes the key (format version 1).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + LEVEL_LEN * self.levels.len() + 16);
        self.write_to(&mut out);
        out
    }

    /// Appends the key's encoding to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(KEY_FORMAT_VERSION);
        out.push(self.party.bit());
        out.push(self.levels.len() as u8);
        out.extend_from_slice(&self.domain.to_le_bytes());
        out.extend_from_slice(&self.root.to_le_bytes());
        for level in &self.levels {
            out.extend_from_slice(&level.seed.to_le_bytes());
            out.push(level.bits[0] | (level.bits[1] << 1));
        }
        out.extend_from_slice(&self.leaf.to_le_bytes());
    }

    /// Decodes a key, checking every field; never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, Error> {
        let mut reader = Reader(bytes);
        let version = reader.u8()?;
        if version != KEY_FORMAT_VERSION {
            return Err(Error::UnsupportedKeyVersion(version));
        }
        let party = match reader.u8()? {
            0 => Party::A,
            1 => Party::B,
            other => return Err(Error::InvalidParty(other)),
        };
        let depth = reader.u8()?;
        let domain = u64::from_le_bytes(reader.array()?);
        if !(1..=MAX_DOMAIN).contains(&domain) {
            return Err(Error::DomainSize(domain));
        }
        let expected_depth = depth_for(domain)?;
        if u32::from(depth) != expected_depth {
            return Err(Error::DepthMismatch { depth, domain, expected: expected_depth });
        }
        let expected_len = Key::encoded_len(domain)?;
        if bytes.len() != expected_len {
            return Err(Error::KeyLength { expected: expected_len, actual: bytes.len() });
        }
        let root = u128::from_le_bytes(reader.array()?);
        let mut levels = Vec::with_capacity(depth as usize);
        for level in 0..depth {
            let seed = u128::from_le_bytes(reader.array()?);
            let bits = reader.u8()?;
            if bits & !0b11 != 0 {
                return Err(Error::InvalidControlBits { level });
            }
            levels.push(LevelCorrection { seed, bits: [bits & 1, bits >> 1] });
        }
        let leaf = u128::from_le_bytes(reader.array()?);
        Ok(Key { party, domain, root, levels, leaf })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("party", &self.party)
            .field("domain", &self.domain)
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

/// A cursor over the input that fails with `KeyLength` instead of panicking.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let Some((head, rest)) = self.0.split_first_chunk::<N>() else {
            return Err(Error::Truncated);
        };
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }
}
