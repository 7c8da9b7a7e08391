// Table-wide kernels: the synthetic benchmark pages and the plain read that
// benchmarks compare a pass with.

#define SYNTHETIC_GAMMA 0x9e3779b97f4a7c15ull

// out[i] = word first_word + i of the synthetic stream for seed (SplitMix64;
// crates/table/src/synthetic.rs is the host twin).
extern "C" __global__ void fill_synthetic(u64* __restrict__ out, u64 words, u64 first_word, u64 seed) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = global_thread(); i < words; i += stride) {
        u64 z = seed + (first_word + i + 1) * SYNTHETIC_GAMMA;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        out[i] = z ^ (z >> 31);
    }
}

// Reads every 16-byte vector of the table once, four loads in flight per
// thread, and leaves one XOR per thread in sink so that nothing is skipped.
extern "C" __global__ void read_all(const uint4* __restrict__ table, u64 vecs, uint4* __restrict__ sink) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    uint4 acc = make_uint4(0, 0, 0, 0);
    u64 i = global_thread();
    for (; i + 3 * stride < vecs; i += 4 * stride) {
        const uint4 a = __ldg(table + i);
        const uint4 b = __ldg(table + i + stride);
        const uint4 c = __ldg(table + i + 2 * stride);
        const uint4 d = __ldg(table + i + 3 * stride);
        acc = xor4(acc, xor4(xor4(a, b), xor4(c, d)));
    }
    for (; i < vecs; i += stride) acc = xor4(acc, __ldg(table + i));
    sink[global_thread()] = acc;
}
