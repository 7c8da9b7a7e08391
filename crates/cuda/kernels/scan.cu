// The scan: each selected page is read once and XORed into the accumulator
// of every query of the tile that selects it; pages no query selects are
// never read.
//
// A warp owns one 512-byte slice (16 bytes a lane) of every page in a range
// of whole leaves (128 pages) of one sub-table, for one tile of up to 32
// queries. Lane q of the warp holds query q's selection bits of the current
// leaf; a ballot turns them into the page's tile-wide selection mask, which
// is the same in every lane, so skipping a page never diverges. The warp
// issues PAGES_IN_FLIGHT loads before it XORs any of them.
//
// Grid: warp w works on slice w % slices, tile (w / slices) % tiles, range
// w / (slices * tiles); the slices of a page sit in one block and the tiles
// of a range run side by side, so a page is fetched from memory about once.
// Each warp writes its accumulators to partial[range][query][page], which
// reduce_ranges folds into the answers.

#define PAGES_IN_FLIGHT 8
// Combinations of a group's pages a warp of the grouped scan has room for.
#define COMBINATIONS_MAX 16

// What one warp scans: its slice, tile and range of leaves, and where its
// lane's query bits and page column start. Both scans begin with it.
struct WarpWork {
    bool valid;  // false for the warps past the last range
    u32 lane, slice, tile;
    u64 range, leaf_begin, leaf_end;
    bool holds_query;  // lane < TILE names a query of the batch
    const uint4* query_bits;
    const uint4* column;
};

__device__ __forceinline__ WarpWork warp_work(const uint4* __restrict__ bits, const uint4* __restrict__ table,
                                              u32 page_vecs, u64 pages_per_table, u64 leaves, u32 choices,
                                              u32 queries, u32 tiles, u32 ranges_per_table,
                                              u32 leaves_per_range, u32 tile_size) {
    WarpWork work;
    work.lane = threadIdx.x & 31u;
    const u64 warp = global_thread() >> 5;
    const u32 slices = page_vecs >> 5;
    work.slice = (u32)(warp % slices);
    const u64 rest = warp / slices;
    work.tile = (u32)(rest % tiles);
    work.range = rest / tiles;
    work.valid = work.range < (u64)ranges_per_table * choices;
    const u32 sub_table = (u32)(work.range / ranges_per_table);
    work.leaf_begin = (work.range % ranges_per_table) * (u64)leaves_per_range;
    work.leaf_end = min(work.leaf_begin + leaves_per_range, leaves);
    const u32 query = work.tile * tile_size + work.lane;
    work.holds_query = work.lane < tile_size && query < queries;
    work.query_bits = bits + ((u64)(work.holds_query ? query : 0) * choices + sub_table) * leaves;
    work.column = table + (u64)sub_table * pages_per_table * page_vecs + work.slice * 32u + work.lane;
    return work;
}

// Writes a warp's accumulators to partial[range][query][page slice].
template <int TILE>
__device__ __forceinline__ void write_partial(const uint4 (&acc)[TILE], uint4* __restrict__ partial,
                                              const WarpWork& work, u32 queries, u32 page_vecs) {
#pragma unroll
    for (int j = 0; j < TILE; j++) {
        const u32 q = work.tile * TILE + j;
        if (q < queries) partial[(work.range * queries + q) * page_vecs + work.slice * 32u + work.lane] = acc[j];
    }
}

template <int TILE>
__device__ __forceinline__ void scan_tile(const uint4* __restrict__ table, const uint4* __restrict__ bits,
                                          uint4* __restrict__ partial, u32 page_vecs, u64 pages_per_table,
                                          u64 leaves, u32 choices, u32 queries, u32 tiles,
                                          u32 ranges_per_table, u32 leaves_per_range) {
    const WarpWork work = warp_work(bits, table, page_vecs, pages_per_table, leaves, choices, queries, tiles,
                                    ranges_per_table, leaves_per_range, TILE);
    if (!work.valid) return;  // the whole warp leaves

    uint4 acc[TILE];
#pragma unroll
    for (int j = 0; j < TILE; j++) acc[j] = make_uint4(0, 0, 0, 0);

    const uint4* column = work.column;
    for (u64 leaf = work.leaf_begin; leaf < work.leaf_end; leaf++) {
        const uint4 b = work.holds_query ? work.query_bits[leaf] : make_uint4(0, 0, 0, 0);
        const u32 words[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int w = 0; w < 4; w++) {
            const u32 word = words[w];
            u32 pending = __reduce_or_sync(FULL_WARP, word);  // pages any query selects
            const u64 first_page = leaf * 128 + 32 * w;
            while (pending != 0) {
                uint4 v[PAGES_IN_FLIGHT];
                u32 selected_by[PAGES_IN_FLIGHT];
#pragma unroll
                for (int k = 0; k < PAGES_IN_FLIGHT; k++) {
                    if (pending != 0) {
                        const int i = __ffs(pending) - 1;
                        pending &= pending - 1;
                        selected_by[k] = __ballot_sync(FULL_WARP, (word >> i) & 1u);
                        v[k] = __ldg(column + (first_page + i) * page_vecs);
                    } else {
                        selected_by[k] = 0;
                        v[k] = make_uint4(0, 0, 0, 0);
                    }
                }
#pragma unroll
                for (int k = 0; k < PAGES_IN_FLIGHT; k++) {
#pragma unroll
                    for (int j = 0; j < TILE; j++) {
                        if ((selected_by[k] >> j) & 1u) acc[j] = xor4(acc[j], v[k]);
                    }
                }
            }
        }
    }

    write_partial<TILE>(acc, partial, work, queries, page_vecs);
}

// The grouped scan, for tiles of 8 or more queries, where nearly every page
// is selected and XORing each page into each selecting query's accumulator
// (4 ALU instructions per 16 bytes per query) would bound the pass.
//
// Pages go in groups of 4. Each lane writes the XOR combinations of its 16
// bytes of the group's first COMBINED pages to shared memory, and each
// query then XORs in the one combination its selection bits name: one
// shared load per query instead of up to COMBINED XORs (the "four Russians"
// trick for this GF(2) product). A lane reads only its own combinations, so
// no barrier is needed for them. The group's other pages are XORed into
// each query that selects them straight from registers: for 8 or 16
// queries, storing the 8 further combinations of all 4 pages costs more of
// the shared memory's bandwidth (which global loads pass through as well)
// than those XORs cost the otherwise idle ALUs.
//
// Once per 32 pages the warp turns its lanes' selection words (lane j holds
// query j's) into packed 4-bit selections, one word per group and 8
// queries, so a group costs TILE / 8 broadcast reads of them, not one read
// per query.
//
// Memory latency is hidden by loading the next group's pages into registers
// before this group is combined, and by prefetching the group after that
// into L2: a warp of this scan holds too many accumulators for many warps
// to share a multiprocessor. The pipeline runs on from one leaf into the
// next: a leaf's selection bits are loaded a whole leaf ahead and kept in
// shared memory while it is scanned, so no leaf starts with a wait.
#define GROUP_PAGES 4
#define GROUPS_PER_LEAF (128 / GROUP_PAGES)
#define GROUPS_PER_WORD (32 / GROUP_PAGES)
#define QUERIES_PER_NIBBLE_WORD 8
#define NIBBLE_WORDS_PER_GROUP (32 / QUERIES_PER_NIBBLE_WORD)
// How many groups ahead a warp prefetches into L2 (1 and 3 measured no
// better; prefetching into L1 no better either).
#define PREFETCH_GROUPS 2

// Loads the 16 bytes of this lane's column of the 4 pages of a group that
// `wanted` names (bit i: page first + i); a page no query selects counts as
// zero and is not read.
__device__ __forceinline__ void load_group(uint4 (&p)[GROUP_PAGES], const uint4* column, u64 first,
                                           u32 page_vecs, u32 wanted) {
#pragma unroll
    for (int i = 0; i < GROUP_PAGES; i++) {
        p[i] = (wanted >> i) & 1u ? __ldg(column + (first + i) * page_vecs) : make_uint4(0, 0, 0, 0);
    }
}

template <int TILE, int COMBINED>
__device__ __forceinline__ void scan_grouped(const uint4* __restrict__ table, const uint4* __restrict__ bits,
                                             uint4* __restrict__ partial, u32 page_vecs, u64 pages_per_table,
                                             u64 leaves, u32 choices, u32 queries, u32 tiles,
                                             u32 ranges_per_table, u32 leaves_per_range) {
    static_assert(TILE % QUERIES_PER_NIBBLE_WORD == 0 && TILE <= 32, "a tile is 8, 16 or 32 queries");
    static_assert(COMBINED >= 1 && COMBINED <= GROUP_PAGES, "combinations of some of the group's pages");
    constexpr int COMBINATIONS = 1 << COMBINED;
    // Per warp: [combination][lane] of uint4 (COMBINATIONS_MAX of them, so
    // that the layout does not depend on COMBINED); after all warps'
    // combinations, per warp the leaf's selection bits ([query] of uint4)
    // and 32 packed words ([group][queries / 8]): 40 uint4.
    extern __shared__ uint4 shared_of_block[];
    const u32 lane = threadIdx.x & 31u;
    const u32 warp_in_block = threadIdx.x >> 5;
    uint4* combination = shared_of_block + warp_in_block * (COMBINATIONS_MAX * 32) + lane;
    uint4* stash = shared_of_block + (blockDim.x >> 5) * (COMBINATIONS_MAX * 32) + warp_in_block * 40;
    u32* nibbles = (u32*)(stash + 32);
    combination[0] = make_uint4(0, 0, 0, 0);  // no combined page of the group selected

    const WarpWork work = warp_work(bits, table, page_vecs, pages_per_table, leaves, choices, queries, tiles,
                                    ranges_per_table, leaves_per_range, TILE);
    if (!work.valid) return;  // the whole warp leaves

    uint4 acc[TILE];
#pragma unroll
    for (int j = 0; j < TILE; j++) acc[j] = make_uint4(0, 0, 0, 0);

    // The packed word this lane writes: group lane / 4, queries 8 (lane % 4) ..
    const u32 pack_group = lane >> 2;
    const u32 pack_first_query = (lane & 3u) * QUERIES_PER_NIBBLE_WORD;

    const uint4* column = work.column;
    // Selection bits of a leaf (none past the range).
    const auto bits_of = [&](u64 leaf) {
        return work.holds_query && leaf < work.leaf_end ? work.query_bits[leaf] : make_uint4(0, 0, 0, 0);
    };
    uint4 b_next = bits_of(work.leaf_begin);
    u32 any[4] = {__reduce_or_sync(FULL_WARP, b_next.x), __reduce_or_sync(FULL_WARP, b_next.y),
                  __reduce_or_sync(FULL_WARP, b_next.z), __reduce_or_sync(FULL_WARP, b_next.w)};
    uint4 p[GROUP_PAGES];
    load_group(p, column, work.leaf_begin * 128, page_vecs, any[0] & 15u);
    for (u64 leaf = work.leaf_begin; leaf < work.leaf_end; leaf++) {
        __syncwarp();  // every lane is done with the previous leaf's stashed words
        stash[lane] = b_next;  // this leaf's selection bits, lane j: query j's
        b_next = bits_of(leaf + 1);
        u32 next_first_word = 0;  // the next leaf's first 32 pages any query selects
        const u64 first_page = leaf * 128;
#pragma unroll 1
        for (u32 g = 0; g < GROUPS_PER_LEAF; g++) {
            const u32 w = g / GROUPS_PER_WORD;
            const u32 group = g % GROUPS_PER_WORD;
            if (group == 0) {
                __syncwarp();  // the stash is written; every lane is done with the previous packed selections
                u32 packed = 0;
#pragma unroll
                for (int i = 0; i < QUERIES_PER_NIBBLE_WORD; i++) {
                    const u32 word = ((const u32*)&stash[pack_first_query + i])[w];
                    packed |= ((word >> (pack_group * GROUP_PAGES)) & 15u) << (4 * i);
                }
                nibbles[lane] = packed;
                __syncwarp();
            }
            if (g == GROUPS_PER_LEAF - PREFETCH_GROUPS - 1) next_first_word = __reduce_or_sync(FULL_WARP, b_next.x);
            // Bit i set: some query selects page 4 g2 + i of the leaf (g2 past
            // the leaf: of the next leaf).
            const auto wanted_of = [&](u32 g2) {
                const u32 w2 = g2 / GROUPS_PER_WORD;
                const u32 word = w2 == 0 ? any[0] : w2 == 1 ? any[1] : w2 == 2 ? any[2] : w2 == 3 ? any[3] : next_first_word;
                return (word >> ((g2 % GROUPS_PER_WORD) * GROUP_PAGES)) & 15u;
            };
            {
                const u32 soon = wanted_of(g + PREFETCH_GROUPS);
#pragma unroll
                for (int i = 0; i < GROUP_PAGES; i++) {
                    if ((soon >> i) & 1u) {
                        const u64 page = first_page + (g + PREFETCH_GROUPS) * GROUP_PAGES + i;
                        asm volatile("prefetch.global.L2 [%0];" ::"l"(column + page * page_vecs));
                    }
                }
            }
            uint4 next[GROUP_PAGES];
            load_group(next, column, first_page + (g + 1) * GROUP_PAGES, page_vecs, wanted_of(g + 1));
            u32 selections[TILE / QUERIES_PER_NIBBLE_WORD];
#pragma unroll
            for (int k = 0; k < TILE / QUERIES_PER_NIBBLE_WORD; k++) {
                selections[k] = nibbles[group * NIBBLE_WORDS_PER_GROUP + k];
            }
            // combination c = XOR of the pages i < COMBINED with bit i of c set.
            uint4 c[COMBINATIONS];
            c[0] = make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int k = 1; k < COMBINATIONS; k++) {
                const int low = k & -k;  // c[k] = c[k without its lowest page] ^ that page
                c[k] = xor4(c[k ^ low], p[low == 1 ? 0 : low == 2 ? 1 : low == 4 ? 2 : 3]);
                combination[k * 32] = c[k];
            }
#pragma unroll
            for (int j = 0; j < TILE; j++) {
                const u32 nibble =
                    (selections[j / QUERIES_PER_NIBBLE_WORD] >> (4 * (j % QUERIES_PER_NIBBLE_WORD))) & 15u;
                acc[j] = xor4(acc[j], combination[(nibble & (COMBINATIONS - 1)) * 32]);
#pragma unroll
                for (int i = COMBINED; i < GROUP_PAGES; i++) {
                    if ((nibble >> i) & 1u) acc[j] = xor4(acc[j], p[i]);
                }
            }
#pragma unroll
            for (int i = 0; i < GROUP_PAGES; i++) p[i] = next[i];
        }
        any[0] = next_first_word;
        any[1] = __reduce_or_sync(FULL_WARP, b_next.y);
        any[2] = __reduce_or_sync(FULL_WARP, b_next.z);
        any[3] = __reduce_or_sync(FULL_WARP, b_next.w);
    }
    write_partial<TILE>(acc, partial, work, queries, page_vecs);
}

// Every tile's kernel has the same signature; tiles from 8 up use the
// grouped scan and COMBINATIONS_MAX * 32 * 16 + 40 * 16 bytes of shared
// memory per warp: the combinations, then the stash of 32 uint4 of
// selection bits and 32 packed words (scan_shared_bytes in src/geometry.rs).
#define SCAN_KERNEL(TILE, BODY, MIN_BLOCKS)                                                            \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) scan_tile_##TILE(                   \
        const uint4* __restrict__ table, const uint4* __restrict__ bits, uint4* __restrict__ partial, \
        u32 page_vecs, u64 pages_per_table, u64 leaves, u32 choices, u32 queries, u32 tiles,          \
        u32 ranges_per_table, u32 leaves_per_range) {                                                 \
        BODY(table, bits, partial, page_vecs, pages_per_table, leaves, choices, queries, tiles,       \
             ranges_per_table, leaves_per_range);                                                     \
    }

// Two blocks a multiprocessor where the registers allow (at most 128 a
// thread); the 32-query tile needs more. The 8- and 16-query tiles combine
// 3 pages of each group and XOR the 4th directly; the 32-query tile
// combines all 4 (both measured faster than the other choice).
SCAN_KERNEL(1, scan_tile<1>, 1)
SCAN_KERNEL(2, scan_tile<2>, 1)
SCAN_KERNEL(4, scan_tile<4>, 1)
SCAN_KERNEL(8, (scan_grouped<8, 3>), 2)
SCAN_KERNEL(16, (scan_grouped<16, 3>), 2)
SCAN_KERNEL(32, (scan_grouped<32, 4>), 1)

// answers[(q * choices + j) * page_vecs + v] = XOR over the ranges r of
// sub-table j of partial[(j * ranges_per_table + r) * queries + q][v].
extern "C" __global__ void reduce_ranges(const uint4* __restrict__ partial, uint4* __restrict__ answers,
                                         u32 page_vecs, u32 queries, u32 choices, u32 ranges_per_table) {
    const u64 t = global_thread();
    if (t >= (u64)queries * choices * page_vecs) return;
    const u32 vec = (u32)(t % page_vecs);
    const u64 rest = t / page_vecs;
    const u32 sub_table = (u32)(rest % choices);
    const u32 q = (u32)(rest / choices);
    uint4 acc = make_uint4(0, 0, 0, 0);
    for (u32 r = 0; r < ranges_per_table; r++) {
        acc = xor4(acc, partial[(((u64)sub_table * ranges_per_table + r) * queries + q) * page_vecs + vec]);
    }
    answers[t] = acc;
}
