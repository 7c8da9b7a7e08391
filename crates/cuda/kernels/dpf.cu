// DPF expansion on the device: the same tree, PRG and bit layout as
// crates/dpf (ChaCha12 keyed by a 128-bit seed, early termination at
// 128-point leaves). Key layout in u32 words (crates/cuda/src/keys.rs):
//   [0..4) root seed, [4] initial control bit,
//   [5 + 5i .. 5 + 5i + 4) level i seed correction, [5 + 5i + 4] its control
//   bit corrections (bit 0 left, bit 1 right),
//   [5 + 5d .. 5 + 5d + 4) leaf correction.

#define KEY_LEVELS 5
#define LEVEL_WORDS 5
// Levels each thread expands depth-first below its subtree root.
#define MAX_SUBTREE_LEVELS 5

__device__ __forceinline__ u32 rotl(u32 x, int n) { return __funnelshift_l(x, x, n); }

#define QUARTER(a, b, c, d)                  \
    a += b; d ^= a; d = rotl(d, 16);         \
    c += d; b ^= c; b = rotl(b, 12);         \
    a += b; d ^= a; d = rotl(d, 8);          \
    c += d; b ^= c; b = rotl(b, 7);

// ChaCha12 with key = seed || seed, counter 0, nonce (purpose, 0, 0); the
// first WORDS output words. purpose 0 expands an inner node, 1 a leaf.
template <int WORDS>
__device__ __forceinline__ void chacha12(const u32 seed[4], u32 purpose, u32 out[WORDS]) {
    u32 in[16] = {0x61707865u, 0x3120646eu, 0x79622d36u, 0x6b206574u,
                  seed[0], seed[1], seed[2], seed[3],
                  seed[0], seed[1], seed[2], seed[3],
                  0u, purpose, 0u, 0u};
    u32 x[16];
#pragma unroll
    for (int i = 0; i < 16; i++) x[i] = in[i];
#pragma unroll
    for (int round = 0; round < 6; round++) {
        QUARTER(x[0], x[4], x[8], x[12]);
        QUARTER(x[1], x[5], x[9], x[13]);
        QUARTER(x[2], x[6], x[10], x[14]);
        QUARTER(x[3], x[7], x[11], x[15]);
        QUARTER(x[0], x[5], x[10], x[15]);
        QUARTER(x[1], x[6], x[11], x[12]);
        QUARTER(x[2], x[7], x[8], x[13]);
        QUARTER(x[3], x[4], x[9], x[14]);
    }
#pragma unroll
    for (int i = 0; i < WORDS; i++) out[i] = x[i] + in[i];
}

// Replaces (seed, bit) by its child on `side` (0 left, 1 right), corrected
// with `level` where the parent's control bit is 1.
__device__ __forceinline__ void descend(u32 seed[4], u32& bit, const u32* level, u32 side) {
    u32 ks[9];
    chacha12<9>(seed, 0u, ks);
    u32 mask = 0u - bit;
#pragma unroll
    for (int w = 0; w < 4; w++) seed[w] = (side ? ks[4 + w] : ks[w]) ^ (level[w] & mask);
    bit = ((ks[8] >> side) & 1u) ^ ((level[4] >> side) & 1u & bit);
}

// One thread per (key, subtree of 2^subtree_levels leaves): walks from the
// root to its subtree, then depth-first over the subtree's leaves, writing
// one 128-bit block per leaf to bits[key * leaves + leaf]. Bits of points
// past the domain (tail_bits of the last leaf onward) are cleared.
extern "C" __global__ void dpf_expand(const u32* __restrict__ keys, u32 key_words, u32 depth,
                                      u32 subtree_levels, u64 leaves, u32 key_count, u32 tail_bits,
                                      uint4* __restrict__ bits) {
    const u64 subtrees = (leaves + (1ull << subtree_levels) - 1) >> subtree_levels;
    const u64 t = global_thread();
    if (t >= subtrees * key_count) return;
    const u32 key_index = (u32)(t / subtrees);
    const u64 subtree = t % subtrees;
    const u32* key = keys + (u64)key_index * key_words;
    const u32 top = depth - subtree_levels;

    u32 stack_seed[MAX_SUBTREE_LEVELS + 1][4];
    u32 stack_bit[MAX_SUBTREE_LEVELS + 1];
    u32 seed[4] = {key[0], key[1], key[2], key[3]};
    u32 bit = key[4];
    for (u32 level = 0; level < top; level++) {
        descend(seed, bit, key + KEY_LEVELS + LEVEL_WORDS * level, (u32)(subtree >> (top - 1 - level)) & 1u);
    }
#pragma unroll
    for (int w = 0; w < 4; w++) stack_seed[0][w] = seed[w];
    stack_bit[0] = bit;

    const u32* leaf_correction = key + KEY_LEVELS + LEVEL_WORDS * depth;
    const u64 first_leaf = subtree << subtree_levels;
    const u64 left = leaves - first_leaf;
    const u32 count = left < (1ull << subtree_levels) ? (u32)left : (1u << subtree_levels);
    for (u32 i = 0; i < count; i++) {
        // Leaf i's path differs from leaf i-1's below the level of i's lowest set bit.
        const u32 from = i == 0 ? 0 : subtree_levels - __ffs(i);
        for (u32 d = from; d < subtree_levels; d++) {
#pragma unroll
            for (int w = 0; w < 4; w++) seed[w] = stack_seed[d][w];
            bit = stack_bit[d];
            descend(seed, bit, key + KEY_LEVELS + LEVEL_WORDS * (top + d), (i >> (subtree_levels - 1 - d)) & 1u);
#pragma unroll
            for (int w = 0; w < 4; w++) stack_seed[d + 1][w] = seed[w];
            stack_bit[d + 1] = bit;
        }
        u32 out[4];
        chacha12<4>(stack_seed[subtree_levels], 1u, out);
        const u32 mask = 0u - stack_bit[subtree_levels];
#pragma unroll
        for (int w = 0; w < 4; w++) out[w] ^= leaf_correction[w] & mask;
        const u64 leaf = first_leaf + i;
        if (leaf == leaves - 1 && tail_bits != 0) {
#pragma unroll
            for (int w = 0; w < 4; w++) {
                const int keep = (int)tail_bits - 32 * w;
                out[w] &= keep >= 32 ? 0xffffffffu : keep <= 0 ? 0u : (1u << keep) - 1u;
            }
        }
        bits[(u64)key_index * leaves + leaf] = make_uint4(out[0], out[1], out[2], out[3]);
    }
}
