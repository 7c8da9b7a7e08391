//! DPF keys packed for the device: fixed-stride arrays of 32-bit words that
//! `dpf_expand` (kernels/dpf.cu) reads.
//!
//! | words                  | field                                                  |
//! |------------------------|--------------------------------------------------------|
//! | 0..4                   | root seed, little-endian words                         |
//! | 4                      | initial control bit (the party)                        |
//! | 5 + 5i .. 5 + 5i + 4   | level `i` seed correction                              |
//! | 5 + 5i + 4             | level `i` control-bit corrections: bit 0 left, bit 1 right |
//! | 5 + 5d .. 5 + 5d + 4   | leaf correction                                        |
//!
//! Key `j` of query `q` is key number `q · choices + j` of a batch.

use morphogen_dpf::Key;
use morphogen_scan::Query;

const HEADER_WORDS: usize = 5;
const LEVEL_WORDS: usize = 5;
const LEAF_WORDS: usize = 4;

/// Words of one packed key for a tree of `depth` levels.
pub(crate) fn key_words(depth: u32) -> usize {
    HEADER_WORDS + LEVEL_WORDS * depth as usize + LEAF_WORDS
}

fn seed_words(value: u128) -> [u32; 4] {
    std::array::from_fn(|j| (value >> (32 * j)) as u32)
}

/// Appends `key` in the device layout.
pub(crate) fn pack_key(key: &Key, out: &mut Vec<u32>) {
    out.extend(seed_words(key.root_seed()));
    out.push(u32::from(key.party().bit()));
    for (seed, [left, right]) in key.level_corrections() {
        out.extend(seed_words(seed));
        out.push(u32::from(left) | (u32::from(right) << 1));
    }
    out.extend(seed_words(key.leaf_correction()));
}

/// Packs every key of `queries` into `out` (cleared first), query after query.
pub(crate) fn pack_queries(queries: &[Query], out: &mut Vec<u32>) {
    out.clear();
    for query in queries {
        query.keys.iter().for_each(|key| pack_key(key, out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use morphogen_dpf::generate;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Rebuilds the key's byte encoding (crates/dpf/src/key.rs) from the
    /// packed words: equal bytes mean every field sits where the kernel reads it.
    fn encoding_from_words(words: &[u32], domain: u64) -> Vec<u8> {
        let depth = (words.len() - HEADER_WORDS - LEAF_WORDS) / LEVEL_WORDS;
        let le = |ws: &[u32]| ws.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        let mut out = vec![1, words[4] as u8, depth as u8];
        out.extend(domain.to_le_bytes());
        out.extend(le(&words[..4]));
        for level in words[HEADER_WORDS..HEADER_WORDS + LEVEL_WORDS * depth].chunks(LEVEL_WORDS) {
            out.extend(le(&level[..4]));
            out.push(level[4] as u8);
        }
        out.extend(le(&words[words.len() - LEAF_WORDS..]));
        out
    }

    #[test]
    fn packed_keys_hold_every_field_of_the_key() {
        let mut rng = StdRng::seed_from_u64(3);
        for domain in [1, 128, 129, 1000, 1 << 24] {
            let (a, b) = generate(domain, domain / 2, &mut rng).unwrap();
            for key in [a, b] {
                let mut words = Vec::new();
                pack_key(&key, &mut words);
                assert_eq!(words.len(), key_words(key.depth()));
                assert_eq!(encoding_from_words(&words, domain), key.to_bytes());
            }
        }
    }

    #[test]
    fn queries_pack_query_after_query() {
        let mut rng = StdRng::seed_from_u64(4);
        let queries: Vec<Query> = (0..3)
            .map(|_| Query { keys: (0..2).map(|_| generate(300, 7, &mut rng).unwrap().1).collect() })
            .collect();
        let mut words = vec![9; 5];
        pack_queries(&queries, &mut words);
        let stride = key_words(queries[0].keys[0].depth());
        assert_eq!(words.len(), 6 * stride);
        let mut third = Vec::new();
        pack_key(&queries[1].keys[0], &mut third);
        assert_eq!(&words[2 * stride..3 * stride], &third[..]);
    }
}
