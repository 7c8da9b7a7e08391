//! Frozen test vectors: keys generated from fixed RNG seeds, with digests of
//! their expansions. A change to the PRG, to key generation, to evaluation or
//! to the key format breaks this test instead of silently changing what a
//! client sends and a server computes.

use chacha20::ChaCha20Rng;
use chacha20::rand_core::SeedableRng;
use morphogen_dpf::{Key, POINTS_PER_LEAF, generate};

const VECTORS: &str = include_str!("data/vectors.txt");

struct Case {
    n: u64,
    alpha: u64,
    keys: [Vec<u8>; 2],
    digests: [String; 2],
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = VECTORS
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 6, "malformed vector line: {line}");
            Case {
                n: f[0].parse().unwrap(),
                alpha: f[1].parse().unwrap(),
                keys: [hex::decode(f[2]).unwrap(), hex::decode(f[3]).unwrap()],
                digests: [f[4].to_string(), f[5].to_string()],
            }
        })
        .collect();
    assert_eq!(cases.len(), 12, "the vector file lost cases");
    cases
}

fn digest(blocks: &[u128]) -> String {
    let mut hasher = blake3::Hasher::new();
    for block in blocks {
        hasher.update(&block.to_le_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

#[test]
fn key_generation_is_unchanged() {
    for (index, case) in cases().iter().enumerate() {
        let mut rng = ChaCha20Rng::from_seed([index as u8; 32]);
        let (a, b) = generate(case.n, case.alpha, &mut rng).unwrap();
        assert_eq!(a.to_bytes(), case.keys[0], "key A of case {index} (n = {})", case.n);
        assert_eq!(b.to_bytes(), case.keys[1], "key B of case {index} (n = {})", case.n);
    }
}

#[test]
fn expansion_of_frozen_keys_is_unchanged() {
    for (index, case) in cases().iter().enumerate() {
        let keys = case.keys.each_ref().map(|bytes| Key::from_bytes(bytes).unwrap());
        let expansions = keys.each_ref().map(Key::expand_full);
        for (party, (expansion, expected)) in expansions.iter().zip(&case.digests).enumerate() {
            assert_eq!(&digest(expansion), expected, "party {party} of case {index}");
        }
        // The frozen keys are still a correct point function.
        for (i, (x, y)) in expansions[0].iter().zip(&expansions[1]).enumerate() {
            let at = case.alpha / POINTS_PER_LEAF;
            let expected = if i as u64 == at { 1u128 << (case.alpha % POINTS_PER_LEAF) } else { 0 };
            assert_eq!(x ^ y, expected, "block {i} of case {index}");
        }
    }
}
