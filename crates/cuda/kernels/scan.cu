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
// Pages go in groups of 4. Each lane writes the 16 XOR combinations of its
// 16 bytes of the group's pages to shared memory (11 XORs), and each query
// then XORs in the one combination its 4 selection bits name: one shared
// load and 4 XORs per query per 4 pages instead of up to 16 XORs (the "four
// Russians" trick for this GF(2) product). A lane reads only its own
// combinations, so no barrier is needed for them. Lane j publishes query
// j's selection bits of 32 pages in the warp's word slots once, and every
// lane reads them from there (a broadcast) rather than holding 32 in
// registers. GROUPS_IN_FLIGHT groups are loaded before any is combined.
#define GROUP_PAGES 4
#define COMBINATIONS 16

template <int TILE, int GROUPS_IN_FLIGHT>
__device__ __forceinline__ void scan_grouped(const uint4* __restrict__ table, const uint4* __restrict__ bits,
                                             uint4* __restrict__ partial, u32 page_vecs, u64 pages_per_table,
                                             u64 leaves, u32 choices, u32 queries, u32 tiles,
                                             u32 ranges_per_table, u32 leaves_per_range) {
    // [warp][combination][lane] of uint4, then [warp][lane] words.
    extern __shared__ uint4 combinations_of_block[];
    const u32 lane = threadIdx.x & 31u;
    const u32 warp_in_block = threadIdx.x >> 5;
    uint4* combination = combinations_of_block + warp_in_block * (COMBINATIONS * 32) + lane;
    u32* query_word = (u32*)(combinations_of_block + (blockDim.x >> 5) * (COMBINATIONS * 32)) + warp_in_block * 32;
    combination[0] = make_uint4(0, 0, 0, 0);  // no page of the group selected

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
            const u32 any = __reduce_or_sync(FULL_WARP, word);
            if (any == 0) continue;
            __syncwarp();  // every lane is done with the previous words
            query_word[lane] = word;
            __syncwarp();
            const u64 first_page = leaf * 128 + 32 * w;
#pragma unroll 1
            for (u32 at = 0; at < 32; at += GROUP_PAGES * GROUPS_IN_FLIGHT) {
                const u32 wanted = (any >> at) & ((1u << (GROUP_PAGES * GROUPS_IN_FLIGHT)) - 1);
                if (wanted == 0) continue;
                uint4 v[GROUP_PAGES * GROUPS_IN_FLIGHT];
#pragma unroll
                for (int i = 0; i < GROUP_PAGES * GROUPS_IN_FLIGHT; i++) {
                    // A page no query selects counts as zero and is not read.
                    v[i] = (wanted >> i) & 1u ? __ldg(column + (first_page + at + i) * page_vecs)
                                              : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int g = 0; g < GROUPS_IN_FLIGHT; g++) {
                    const uint4* p = v + GROUP_PAGES * g;
                    // combination c = XOR of the pages i with bit i of c set.
                    const uint4 c3 = xor4(p[0], p[1]);
                    const uint4 c5 = xor4(p[2], p[0]);
                    const uint4 c6 = xor4(p[2], p[1]);
                    const uint4 c7 = xor4(p[2], c3);
                    combination[1 * 32] = p[0];
                    combination[2 * 32] = p[1];
                    combination[3 * 32] = c3;
                    combination[4 * 32] = p[2];
                    combination[5 * 32] = c5;
                    combination[6 * 32] = c6;
                    combination[7 * 32] = c7;
                    combination[8 * 32] = p[3];
                    combination[9 * 32] = xor4(p[3], p[0]);
                    combination[10 * 32] = xor4(p[3], p[1]);
                    combination[11 * 32] = xor4(p[3], c3);
                    combination[12 * 32] = xor4(p[3], p[2]);
                    combination[13 * 32] = xor4(p[3], c5);
                    combination[14 * 32] = xor4(p[3], c6);
                    combination[15 * 32] = xor4(p[3], c7);
                    const u32 shift = at + GROUP_PAGES * g;
#pragma unroll
                    for (int j = 0; j < TILE; j++) {
                        acc[j] = xor4(acc[j], combination[((query_word[j] >> shift) & 15u) * 32]);
                    }
                }
            }
        }
    }

    write_partial<TILE>(acc, partial, work, queries, page_vecs);
}

// Every tile's kernel has the same signature; tiles from 8 up use the
// grouped scan and COMBINATIONS * 32 * 16 + 32 * 4 bytes of shared memory
// per warp (scan_shared_bytes in src/geometry.rs).
#define SCAN_KERNEL(TILE, BODY, MIN_BLOCKS)                                                            \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS) scan_tile_##TILE(                   \
        const uint4* __restrict__ table, const uint4* __restrict__ bits, uint4* __restrict__ partial, \
        u32 page_vecs, u64 pages_per_table, u64 leaves, u32 choices, u32 queries, u32 tiles,          \
        u32 ranges_per_table, u32 leaves_per_range) {                                                 \
        BODY(table, bits, partial, page_vecs, pages_per_table, leaves, choices, queries, tiles,       \
             ranges_per_table, leaves_per_range);                                                     \
    }

// Two blocks a multiprocessor where the registers allow (at most 128 a
// thread); the 32-query tile needs more. One group in flight: two spilled
// the 32-query tile's registers and slowed it.
SCAN_KERNEL(1, scan_tile<1>, 1)
SCAN_KERNEL(2, scan_tile<2>, 1)
SCAN_KERNEL(4, scan_tile<4>, 1)
SCAN_KERNEL(8, (scan_grouped<8, 1>), 2)
SCAN_KERNEL(16, (scan_grouped<16, 1>), 2)
SCAN_KERNEL(32, (scan_grouped<32, 1>), 1)

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
