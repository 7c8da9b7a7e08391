//! Synthetic page contents for benchmarks: a deterministic byte stream that
//! any device can generate where the table lives (the CUDA engine fills GPU
//! memory with it), so that a 64 GiB benchmark table never exists on disk.
//!
//! Little-endian 64-bit word `w` of the stream for `seed` is output number
//! `w` of SplitMix64 started at `seed`: `mix(seed + (w + 1) · γ)`.

/// SplitMix64's increment, the golden ratio in 64-bit fixed point.
pub const SYNTHETIC_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Word `word` of the synthetic stream for `seed`.
pub fn synthetic_word(seed: u64, word: u64) -> u64 {
    let mut z = seed.wrapping_add(word.wrapping_add(1).wrapping_mul(SYNTHETIC_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` with bytes `offset..offset + out.len()` of the stream for
/// `seed`. `offset` and the length are multiples of 8 (pages always are).
pub fn fill_synthetic(seed: u64, offset: u64, out: &mut [u8]) {
    assert!(offset.is_multiple_of(8) && out.len().is_multiple_of(8), "synthetic bytes come in 8-byte words");
    let first = offset / 8;
    for (i, word) in out.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&synthetic_word(seed, first + i as u64).to_le_bytes());
    }
}

/// The digest a server publishes for the synthetic table of `layout` and
/// `seed`: a hash of what defines its pages, not of the pages themselves
/// (64 GiB would take minutes to hash), equal wherever the same table is made.
pub fn synthetic_digest(layout: &crate::Layout, seed: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("morphogen 2026-11 synthetic page table v1");
    hasher.update(&layout.page_size().to_le_bytes());
    hasher.update(&layout.value_size().to_le_bytes());
    hasher.update(&[layout.choices()]);
    hasher.update(&layout.pages_per_table().to_le_bytes());
    hasher.update(&layout.seed());
    hasher.update(&seed.to_le_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_digests_name_the_layout_and_seed() {
        let layout = |pages| crate::Layout::new(4096, 32, 2, pages, [0; 16]).unwrap();
        assert_eq!(synthetic_digest(&layout(8), 1), synthetic_digest(&layout(8), 1));
        assert_ne!(synthetic_digest(&layout(8), 1), synthetic_digest(&layout(8), 2));
        assert_ne!(synthetic_digest(&layout(8), 1), synthetic_digest(&layout(9), 1));
    }

    #[test]
    fn stream_is_splitmix64() {
        // The first outputs of SplitMix64 seeded with 0, as published with
        // the reference implementation.
        assert_eq!(synthetic_word(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(synthetic_word(0, 1), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(synthetic_word(0, 2), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn fill_at_an_offset_continues_the_stream() {
        let mut whole = vec![0u8; 256];
        fill_synthetic(7, 0, &mut whole);
        let mut tail = vec![0u8; 128];
        fill_synthetic(7, 128, &mut tail);
        assert_eq!(&whole[128..], &tail[..]);
        assert_ne!(&whole[..128], &tail[..]);
    }

    #[test]
    #[should_panic(expected = "8-byte words")]
    fn rejects_unaligned_offsets() {
        fill_synthetic(0, 4, &mut [0u8; 8]);
    }
}
