//! Writes the frozen test vectors of `tests/frozen.rs` to standard output.
//!
//! Run only when the key format or the PRG changes on purpose:
//! `cargo run -p morphogen-dpf --example frozen_vectors > crates/dpf/tests/data/vectors.txt`

use chacha20::ChaCha20Rng;
use chacha20::rand_core::SeedableRng;
use morphogen_dpf::generate;

/// (n, alpha): every boundary of the tree, and the 2^24-page domain of a 64 GiB table.
const CASES: [(u64, u64); 12] = [
    (1, 0),
    (2, 1),
    (127, 126),
    (128, 0),
    (129, 128),
    (1000, 517),
    (4096, 4095),
    (65537, 65536),
    (100_003, 12_345),
    (1 << 20, 1 << 19),
    ((1 << 20) + 1, 3),
    (1 << 24, 11_184_810),
];

fn main() {
    println!("# Frozen DPF test vectors, written by examples/frozen_vectors.rs. Do not edit by hand.");
    println!("# The keys come from ChaCha20Rng::from_seed([case index; 32]).");
    println!("# n alpha key_a key_b blake3(expansion_a) blake3(expansion_b)");
    for (case, (n, alpha)) in CASES.into_iter().enumerate() {
        let mut rng = ChaCha20Rng::from_seed([case as u8; 32]);
        let (a, b) = generate(n, alpha, &mut rng).expect("valid case");
        println!(
            "{n} {alpha} {} {} {} {}",
            hex::encode(a.to_bytes()),
            hex::encode(b.to_bytes()),
            digest(&a.expand_full()),
            digest(&b.expand_full()),
        );
    }
}

/// BLAKE3 of the blocks, each as 16 little-endian bytes.
fn digest(blocks: &[u128]) -> String {
    let mut hasher = blake3::Hasher::new();
    for block in blocks {
        hasher.update(&block.to_le_bytes());
    }
    hasher.finalize().to_hex().to_string()
}
