//! Correctness of the DPF: the two expansions XOR to the unit vector at the
//! target, and every way of evaluating a key agrees with every other.

use morphogen_dpf::{Error, Expander, Key, POINTS_PER_LEAF, Party, generate, leaf_count};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn bit(blocks: &[u128], x: u64) -> bool {
    (blocks[(x / POINTS_PER_LEAF) as usize] >> (x % POINTS_PER_LEAF)) & 1 == 1
}

/// Checks that the XOR of the two full expansions is exactly the unit vector at `alpha`.
fn assert_unit_vector(a: &Key, b: &Key, n: u64, alpha: u64) {
    let (ea, eb) = (a.expand_full(), b.expand_full());
    assert_eq!(ea.len() as u64, leaf_count(n).unwrap());
    for (i, (x, y)) in ea.iter().zip(&eb).enumerate() {
        let expected =
            if i as u64 == alpha / POINTS_PER_LEAF { 1u128 << (alpha % POINTS_PER_LEAF) } else { 0 };
        assert_eq!(x ^ y, expected, "block {i} of n = {n}, alpha = {alpha}");
    }
}

/// Domain sizes around every boundary the tree has: 1, one leaf, powers of two ± 1.
fn domain_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        Just(127),
        Just(128),
        Just(129),
        (1u32..=20).prop_flat_map(|k| prop_oneof![
            Just((1u64 << k) - 1),
            Just(1u64 << k),
            Just((1u64 << k) + 1)
        ]),
        1u64..=(1 << 20),
    ]
}

fn domain_and_point() -> impl Strategy<Value = (u64, u64)> {
    domain_size().prop_flat_map(|n| (Just(n), 0..n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn expansions_xor_to_the_unit_vector((n, alpha) in domain_and_point(), seed: u64) {
        let (a, b) = generate(n, alpha, &mut StdRng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(a.party(), Party::A);
        prop_assert_eq!(b.party(), Party::B);
        assert_unit_vector(&a, &b, n, alpha);
    }

    #[test]
    fn point_evaluation_agrees_with_full_expansion(
        (n, alpha) in domain_and_point(),
        seed: u64,
        probes in prop::collection::vec(any::<u64>(), 16),
    ) {
        let (a, b) = generate(n, alpha, &mut StdRng::seed_from_u64(seed)).unwrap();
        let (ea, eb) = (a.expand_full(), b.expand_full());
        // The target, its neighbours, the ends of the domain, and random points.
        let fixed = [alpha, alpha.saturating_sub(1), (alpha + 1).min(n - 1), 0, n - 1];
        for x in fixed.into_iter().chain(probes.iter().map(|p| p % n)) {
            prop_assert_eq!(a.eval_point(x).unwrap(), bit(&ea, x));
            prop_assert_eq!(b.eval_point(x).unwrap(), bit(&eb, x));
            prop_assert_eq!(bit(&ea, x) ^ bit(&eb, x), x == alpha);
        }
    }

    #[test]
    fn range_expansion_agrees_with_full_expansion(
        (n, alpha) in domain_and_point(),
        seed: u64,
        ends in (any::<u64>(), any::<u64>()),
    ) {
        let (a, _) = generate(n, alpha, &mut StdRng::seed_from_u64(seed)).unwrap();
        let full = a.expand_full();
        let leaves = full.len() as u64;
        let (x, y) = (ends.0 % leaves, ends.1 % leaves);
        let range = x.min(y)..x.max(y) + 1;
        let mut out = vec![0u128; (range.end - range.start) as usize];
        // One expander for two different ranges: reused buffers must not leak state.
        let mut expander = Expander::new();
        expander.expand_leaves(&a, 0..leaves, &mut vec![0u128; leaves as usize]).unwrap();
        expander.expand_leaves(&a, range.clone(), &mut out).unwrap();
        prop_assert_eq!(&out[..], &full[range.start as usize..range.end as usize]);
    }

    #[test]
    fn keys_round_trip_through_bytes((n, alpha) in domain_and_point(), seed: u64) {
        let (a, b) = generate(n, alpha, &mut StdRng::seed_from_u64(seed)).unwrap();
        for key in [a, b] {
            let bytes = key.to_bytes();
            prop_assert_eq!(bytes.len(), Key::encoded_len(n).unwrap());
            prop_assert_eq!(Key::from_bytes(&bytes).unwrap(), key);
        }
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Key::from_bytes(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_mutated_keys(
        (n, alpha) in domain_and_point(),
        seed: u64,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (a, _) = generate(n, alpha, &mut StdRng::seed_from_u64(seed)).unwrap();
        let mut bytes = a.to_bytes();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        if let Ok(key) = Key::from_bytes(&bytes) {
            // Whatever decodes is a well-formed key that evaluates without panicking.
            prop_assert_eq!(key.to_bytes(), bytes.clone());
            let _ = key.eval_point(key.domain() - 1);
        }
        let _ = Key::from_bytes(&bytes[..cut.index(bytes.len())]);
    }
}

#[test]
fn every_point_of_small_domains_is_right() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in [1u64, 2, 3, 127, 128, 129, 255, 256, 257, 300] {
        for alpha in 0..n {
            let (a, b) = generate(n, alpha, &mut rng).unwrap();
            assert_unit_vector(&a, &b, n, alpha);
            for x in 0..n {
                assert_eq!(a.eval_point(x).unwrap() ^ b.eval_point(x).unwrap(), x == alpha);
            }
        }
    }
}

#[test]
fn works_at_the_largest_domain() {
    let n = morphogen_dpf::MAX_DOMAIN;
    let alpha = n - 1;
    let (a, b) = generate(n, alpha, &mut StdRng::seed_from_u64(2)).unwrap();
    assert_eq!(a.depth(), 25);
    let last = leaf_count(n).unwrap();
    let mut expander = Expander::new();
    let (mut ea, mut eb) = ([0u128; 64], [0u128; 64]);
    expander.expand_leaves(&a, last - 64..last, &mut ea).unwrap();
    expander.expand_leaves(&b, last - 64..last, &mut eb).unwrap();
    for (i, (x, y)) in ea.iter().zip(&eb).enumerate() {
        assert_eq!(x ^ y, if i == 63 { 1 << 127 } else { 0 });
    }
    assert!(a.eval_point(alpha).unwrap() ^ b.eval_point(alpha).unwrap());
    assert!(!(a.eval_point(0).unwrap() ^ b.eval_point(0).unwrap()));
}

#[test]
fn a_single_key_selects_about_half_the_points() {
    // Each party's bits are pseudorandom: the pages a server reads are not biased.
    let n = 1u64 << 20;
    let (a, b) = generate(n, 777, &mut StdRng::seed_from_u64(3)).unwrap();
    for key in [a, b] {
        let ones: u64 = key.expand_full().iter().map(|blk| u64::from(blk.count_ones())).sum();
        let deviation = (ones as f64 - n as f64 / 2.0).abs();
        // 6 standard deviations of a fair coin (sqrt(n)/2 = 512).
        assert!(deviation < 6.0 * 512.0, "{ones} of {n} bits set");
    }
}

#[test]
fn key_for_2_pow_24_points_fits_in_400_bytes() {
    let (a, _) = generate(1 << 24, 5, &mut StdRng::seed_from_u64(4)).unwrap();
    assert_eq!(a.depth(), 17);
    assert!(a.to_bytes().len() <= 400, "{} bytes", a.to_bytes().len());
    assert_eq!(a.to_bytes().len(), 332);
}

#[test]
fn debug_output_hides_key_material() {
    let (a, _) = generate(1000, 5, &mut StdRng::seed_from_u64(5)).unwrap();
    let shown = format!("{a:?}");
    assert_eq!(shown, "Key { party: A, domain: 1000, depth: 3, .. }");
}

#[test]
fn rejects_domain_of_zero_points() {
    assert_eq!(generate(0, 0, &mut rand::rng()).unwrap_err(), Error::DomainSize(0));
}

#[test]
fn rejects_domain_above_2_pow_32() {
    let n = (1u64 << 32) + 1;
    assert_eq!(generate(n, 0, &mut rand::rng()).unwrap_err(), Error::DomainSize(n));
}

#[test]
fn rejects_target_outside_the_domain() {
    let err = generate(100, 987_654, &mut rand::rng()).unwrap_err();
    assert_eq!(err, Error::PointOutOfDomain { domain: 100 });
    // The message must not reveal the target.
    assert!(!err.to_string().contains("987654"));
    assert_eq!(err.to_string(), "point is outside the domain of 100 points");
}

#[test]
fn rejects_point_evaluation_outside_the_domain() {
    let (a, _) = generate(100, 1, &mut rand::rng()).unwrap();
    assert_eq!(a.eval_point(100), Err(Error::PointOutOfDomain { domain: 100 }));
}

#[test]
fn rejects_leaf_ranges_outside_the_domain() {
    let (a, _) = generate(1000, 1, &mut rand::rng()).unwrap(); // 8 leaves
    let mut expander = Expander::new();
    let mut out = vec![0u128; 8];
    let err = |start, end| Error::LeafRange { start, end, leaves: 8 };
    assert_eq!(expander.expand_leaves(&a, 0..9, &mut [0; 9]), Err(err(0, 9)));
    assert_eq!(expander.expand_leaves(&a, 3..3, &mut out[..0]), Err(err(3, 3)));
    assert_eq!(expander.expand_leaves(&a, 8..9, &mut out[..1]), Err(err(8, 9)));
    assert_eq!(expander.expand_leaves(&a, 0..8, &mut out), Ok(()));
}

#[test]
fn rejects_output_buffer_of_the_wrong_length() {
    let (a, _) = generate(1000, 1, &mut rand::rng()).unwrap();
    let mut out = vec![0u128; 3];
    assert_eq!(
        Expander::new().expand_leaves(&a, 0..4, &mut out),
        Err(Error::OutputLength { expected: 4, actual: 3 })
    );
}

mod decoding {
    use super::*;

    fn valid_key() -> Vec<u8> {
        generate(1 << 24, 9, &mut StdRng::seed_from_u64(6)).unwrap().0.to_bytes()
    }

    #[test]
    fn rejects_empty_input() {
        assert_eq!(Key::from_bytes(&[]), Err(Error::Truncated));
    }

    #[test]
    fn rejects_truncated_header() {
        assert_eq!(Key::from_bytes(&valid_key()[..10]), Err(Error::Truncated));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut bytes = valid_key();
        bytes[0] = 2;
        assert_eq!(Key::from_bytes(&bytes), Err(Error::UnsupportedKeyVersion(2)));
    }

    #[test]
    fn rejects_invalid_party() {
        let mut bytes = valid_key();
        bytes[1] = 2;
        assert_eq!(Key::from_bytes(&bytes), Err(Error::InvalidParty(2)));
    }

    #[test]
    fn rejects_depth_that_does_not_match_the_domain() {
        let mut bytes = valid_key();
        bytes[2] = 16;
        assert_eq!(
            Key::from_bytes(&bytes),
            Err(Error::DepthMismatch { depth: 16, domain: 1 << 24, expected: 17 })
        );
    }

    #[test]
    fn rejects_domain_of_zero() {
        let mut bytes = valid_key();
        bytes[3..11].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(Key::from_bytes(&bytes), Err(Error::DomainSize(0)));
    }

    #[test]
    fn rejects_domain_above_the_maximum() {
        let mut bytes = valid_key();
        bytes[3..11].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Key::from_bytes(&bytes), Err(Error::DomainSize(u64::MAX)));
    }

    #[test]
    fn rejects_truncated_body() {
        let bytes = valid_key();
        assert_eq!(
            Key::from_bytes(&bytes[..bytes.len() - 1]),
            Err(Error::KeyLength { expected: 332, actual: 331 })
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = valid_key();
        bytes.push(0);
        assert_eq!(Key::from_bytes(&bytes), Err(Error::KeyLength { expected: 332, actual: 333 }));
    }

    #[test]
    fn rejects_reserved_control_bits() {
        let mut bytes = valid_key();
        bytes[27 + 16 + 17 * 4] |= 0b100; // control-bit byte of level 4
        assert_eq!(Key::from_bytes(&bytes), Err(Error::InvalidControlBits { level: 4 }));
    }
}
