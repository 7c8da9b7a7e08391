//! Full-domain and range expansion of one DPF key, on one core, next to a
//! baseline: RustCrypto's ChaCha12 (SIMD, runtime-detected) producing as many
//! keystream blocks as the expansion computes.

use chacha20::ChaCha12;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use morphogen_dpf::{Expander, depth_for, generate, leaf_count};

fn full_domain(c: &mut Criterion) {
    let mut group = c.benchmark_group("expand_full");
    group.sample_size(20);
    for log_n in [20u32, 24] {
        let n = 1u64 << log_n;
        let (key, _) = generate(n, n / 3, &mut rand::rng()).unwrap();
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(format!("2^{log_n}")), &key, |b, key| {
            b.iter(|| key.expand_full())
        });
    }
    group.finish();
}

fn leaf_range(c: &mut Criterion) {
    // An engine's chunk: 4096 leaves (half a million pages) out of 2^24 points.
    let n = 1u64 << 24;
    let (key, _) = generate(n, 12345, &mut rand::rng()).unwrap();
    let start = leaf_count(n).unwrap() / 2;
    let mut out = vec![0u128; 4096];
    let mut expander = Expander::new();
    let mut group = c.benchmark_group("expand_leaves");
    group.throughput(Throughput::Elements(4096 * 128));
    group.bench_function("4096_of_2^24", |b| {
        b.iter(|| expander.expand_leaves(&key, start..start + 4096, &mut out).unwrap())
    });
    group.finish();
}

fn baseline(c: &mut Criterion) {
    // A full expansion over 2^24 points computes 2^17 - 1 inner nodes and 2^17
    // leaves: one ChaCha12 block each.
    let depth = depth_for(1 << 24).unwrap();
    let blocks = (1usize << (depth + 1)) - 1;
    let mut buffer = vec![0u8; 64 * blocks];
    let mut group = c.benchmark_group("baseline");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1 << 24));
    group.bench_function("chacha12_keystream_as_many_blocks_as_2^24", |b| {
        b.iter(|| ChaCha12::new(&[7u8; 32].into(), &[0u8; 12].into()).apply_keystream(&mut buffer))
    });
    group.finish();
}

criterion_group!(benches, full_domain, leaf_range, baseline);
criterion_main!(benches);
