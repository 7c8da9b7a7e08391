//! Key generation (the client's side).

use rand_core::CryptoRng;

use crate::key::{Key, LevelCorrection, Party};
use crate::{Error, POINTS_PER_LEAF, depth_for, mask, prg};

/// Generates the two keys of the point function over `0..n` that is 1 at
/// `alpha`: the XOR of their expansions is the unit vector at `alpha`.
///
/// Each call draws two fresh 128-bit root seeds from `rng`; everything else
/// follows from them.
pub fn generate<R: CryptoRng + ?Sized>(n: u64, alpha: u64, rng: &mut R) -> Result<(Key, Key), Error> {
    let depth = depth_for(n)?;
    if alpha >= n {
        return Err(Error::PointOutOfDomain { domain: n });
    }
    let mut roots = [0u8; 32];
    rng.fill_bytes(&mut roots);
    let root_a = u128::from_le_bytes(roots[..16].try_into().expect("16 bytes"));
    let root_b = u128::from_le_bytes(roots[16..].try_into().expect("16 bytes"));

    let leaf_index = alpha / POINTS_PER_LEAF;
    // Both parties walk the path to alpha's leaf; off the path their seeds
    // and control bits become equal, on it they stay apart with t_a ^ t_b = 1.
    let mut seeds = [root_a, root_b];
    let mut bits = [Party::A.bit(), Party::B.bit()];
    let mut levels = Vec::with_capacity(depth as usize);
    for level in 0..depth {
        let keep = ((leaf_index >> (depth - 1 - level)) & 1) as usize;
        let lose = 1 - keep;
        let children = seeds.map(prg::expand);
        let correction = LevelCorrection {
            seed: children[0].seeds[lose] ^ children[1].seeds[lose],
            bits: [
                children[0].bits[0] ^ children[1].bits[0] ^ (keep as u8) ^ 1,
                children[0].bits[1] ^ children[1].bits[1] ^ (keep as u8),
            ],
        };
        for p in 0..2 {
            seeds[p] = children[p].seeds[keep] ^ (correction.seed & mask(bits[p]));
            bits[p] = children[p].bits[keep] ^ (correction.bits[keep] & bits[p]);
        }
        levels.push(correction);
    }
    let [leaf_a, leaf_b] = seeds.map(prg::leaf);
    let leaf = leaf_a ^ leaf_b ^ (1u128 << (alpha % POINTS_PER_LEAF));

    let key = |party, root| Key { party, domain: n, root, levels: levels.clone(), leaf };
    Ok((key(Party::A, root_a), key(Party::B, root_b)))
}
