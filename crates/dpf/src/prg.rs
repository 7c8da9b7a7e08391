//! The PRG of the DPF tree: ChaCha with 12 rounds keyed by a 128-bit node seed.
//!
//! One ChaCha block per tree node gives both child seeds and both control
//! bits; one more block (another nonce) turns a leaf seed into its 128 output
//! bits. The functions here work on one node and are always inlined: the
//! callers in `eval` put them in loops over a whole tree level, stored as
//! structure-of-arrays, which the compiler's loop vectorizer turns into SIMD
//! code over as many nodes as the target's registers hold.

/// "expand 16-byte k": the constants of ChaCha with a 128-bit key, which fills
/// the eight key words with the key twice.
const SIGMA_16: [u32; 4] = [0x6170_7865, 0x3120_646e, 0x7962_2d36, 0x6b20_6574];

/// A node seed as four little-endian 32-bit words.
pub(crate) type SeedWords = [u32; 4];

/// Nonce word that separates the two uses of a seed.
#[derive(Clone, Copy)]
#[repr(u32)]
pub(crate) enum Purpose {
    /// An inner node: words 0..4 are the left child seed, 4..8 the right one,
    /// bits 0 and 1 of word 8 the left and right control bits.
    Expand = 0,
    /// A leaf: words 0..4 are its 128 output bits.
    Leaf = 1,
}

/// The ChaCha12 block function: six double rounds applied to `input`, then
/// `input` added back.
#[inline(always)]
pub(crate) fn chacha12_block(input: [u32; 16]) -> [u32; 16] {
    let mut x = input;
    // Unrolled by hand rather than looped: a loop here would be the innermost
    // loop inside the callers' loops over nodes, and the compiler vectorizes
    // only innermost loops, so the node loops would stay scalar.
    double_round(&mut x);
    double_round(&mut x);
    double_round(&mut x);
    double_round(&mut x);
    double_round(&mut x);
    double_round(&mut x);
    std::array::from_fn(|i| x[i].wrapping_add(input[i]))
}

#[inline(always)]
fn double_round(x: &mut [u32; 16]) {
    quarter_round(x, 0, 4, 8, 12);
    quarter_round(x, 1, 5, 9, 13);
    quarter_round(x, 2, 6, 10, 14);
    quarter_round(x, 3, 7, 11, 15);
    quarter_round(x, 0, 5, 10, 15);
    quarter_round(x, 1, 6, 11, 12);
    quarter_round(x, 2, 7, 8, 13);
    quarter_round(x, 3, 4, 9, 14);
}

#[inline(always)]
fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

/// ChaCha12 of one seed for one purpose: key = seed ‖ seed, counter 0,
/// nonce (purpose, 0, 0).
#[inline(always)]
pub(crate) fn keystream(seed: SeedWords, purpose: Purpose) -> [u32; 16] {
    let [s0, s1, s2, s3] = seed;
    let [c0, c1, c2, c3] = SIGMA_16;
    chacha12_block([c0, c1, c2, c3, s0, s1, s2, s3, s0, s1, s2, s3, 0, purpose as u32, 0, 0])
}

/// Splits a 128-bit value into little-endian 32-bit words.
#[inline(always)]
pub(crate) fn words(value: u128) -> SeedWords {
    std::array::from_fn(|j| (value >> (32 * j)) as u32)
}

/// Joins little-endian 32-bit words into a 128-bit value.
#[inline(always)]
pub(crate) fn join(words: SeedWords) -> u128 {
    words.iter().rev().fold(0u128, |acc, w| (acc << 32) | u128::from(*w))
}

/// Both children of one inner node before correction: seeds and control bits (0 or 1).
pub(crate) struct Children {
    pub seeds: [u128; 2],
    pub bits: [u8; 2],
}

/// Expands one inner node (the scalar path of key generation and point evaluation).
pub(crate) fn expand(seed: u128) -> Children {
    let out = keystream(words(seed), Purpose::Expand);
    Children {
        seeds: [join([out[0], out[1], out[2], out[3]]), join([out[4], out[5], out[6], out[7]])],
        bits: [(out[8] & 1) as u8, ((out[8] >> 1) & 1) as u8],
    }
}

/// The 128 output bits of one leaf seed, before correction.
pub(crate) fn leaf(seed: u128) -> u128 {
    let out = keystream(words(seed), Purpose::Leaf);
    join([out[0], out[1], out[2], out[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

    /// "expand 32-byte k": the constants of ChaCha with a 256-bit key.
    const SIGMA_32: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

    fn le_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()))
    }

    /// The RFC 8439 state layout (IETF variant: 32-bit counter, 96-bit nonce).
    fn rfc_state(key: &[u8; 32], counter: u32, nonce: &[u8; 12]) -> [u32; 16] {
        let mut state = [0u32; 16];
        for (i, w) in SIGMA_32.into_iter().chain(le_words(key)).enumerate() {
            state[i] = w;
        }
        state[12] = counter;
        for (i, w) in le_words(nonce).enumerate() {
            state[13 + i] = w;
        }
        state
    }

    fn serialize(out: &[u32; 16]) -> Vec<u8> {
        out.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn chacha12_block_matches_rustcrypto_on_random_inputs() {
        use chacha20::rand_core::{Rng, SeedableRng};
        let mut rng = chacha20::ChaCha20Rng::seed_from_u64(7);
        for _ in 0..64 {
            let mut key = [0u8; 32];
            let mut nonce = [0u8; 12];
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut nonce);
            let counter = rng.next_u32() % 1024;
            // RustCrypto's keystream from block `counter` on.
            let mut cipher = chacha20::ChaCha12::new(&key.into(), &nonce.into());
            cipher.seek(u64::from(counter) * 64);
            let mut expected = [0u8; 64];
            cipher.apply_keystream(&mut expected);
            let ours = chacha12_block(rfc_state(&key, counter, &nonce));
            assert_eq!(serialize(&ours), expected);
        }
    }

    #[test]
    fn node_prg_is_chacha12_with_the_seed_as_a_128_bit_key() {
        // Independent restatement of `keystream` through the RFC layout.
        let seed: u128 = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100;
        let mut state = rfc_state(&[0; 32], 0, &[0; 12]);
        state[..4].copy_from_slice(&SIGMA_16);
        for (i, w) in le_words(&seed.to_le_bytes()).chain(le_words(&seed.to_le_bytes())).enumerate() {
            state[4 + i] = w;
        }
        state[13] = Purpose::Leaf as u32;
        let expected = chacha12_block(state);
        assert_eq!(leaf(seed).to_le_bytes().as_slice(), &serialize(&expected)[..16]);
    }

    #[test]
    fn words_and_join_are_inverse() {
        let value: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        assert_eq!(words(value), [0x7654_3210, 0xfedc_ba98, 0x89ab_cdef, 0x0123_4567]);
        assert_eq!(join(words(value)), value);
    }
}
