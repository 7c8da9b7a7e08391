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

template <int TILE>
__device__ __forceinline__ void scan_tile(const uint4* __restrict__ table, const uint4* __restrict__ bits,
                                          uint4* __restrict__ partial, u32 page_vecs, u64 pages_per_table,
                                          u64 leaves, u32 choices, u32 queries, u32 tiles,
                                          u32 ranges_per_table, u32 leaves_per_range) {
    const u32 lane = threadIdx.x & 31u;
    const u64 warp = global_thread() >> 5;
    const u32 slices = page_vecs >> 5;
    const u32 slice = (u32)(warp % slices);
    const u64 rest = warp / slices;
    const u32 tile = (u32)(rest % tiles);
    const u64 range = rest / tiles;
    if (range >= (u64)ranges_per_table * choices) return;  // the whole warp leaves
    const u32 sub_table = (u32)(range / ranges_per_table);
    const u64 leaf_begin = (range % ranges_per_table) * (u64)leaves_per_range;
    const u64 leaf_end = min(leaf_begin + leaves_per_range, leaves);

    const u32 query = tile * TILE + lane;
    const bool holds_query = lane < TILE && query < queries;
    const uint4* query_bits = bits + ((u64)(holds_query ? query : 0) * choices + sub_table) * leaves;
    const uint4* column = table + (u64)sub_table * pages_per_table * page_vecs + slice * 32u + lane;

    uint4 acc[TILE];
#pragma unroll
    for (int j = 0; j < TILE; j++) acc[j] = make_uint4(0, 0, 0, 0);

    for (u64 leaf = leaf_begin; leaf < leaf_end; leaf++) {
        const uint4 b = holds_query ? query_bits[leaf] : make_uint4(0, 0, 0, 0);
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

#pragma unroll
    for (int j = 0; j < TILE; j++) {
        const u32 q = tile * TILE + j;
        if (q < queries) partial[(range * queries + q) * page_vecs + slice * 32u + lane] = acc[j];
    }
}

#define SCAN_KERNEL(TILE)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) scan_tile_##TILE(                               \
        const uint4* __restrict__ table, const uint4* __restrict__ bits, uint4* __restrict__ partial, \
        u32 page_vecs, u64 pages_per_table, u64 leaves, u32 choices, u32 queries, u32 tiles,          \
        u32 ranges_per_table, u32 leaves_per_range) {                                                 \
        scan_tile<TILE>(table, bits, partial, page_vecs, pages_per_table, leaves, choices, queries,    \
                        tiles, ranges_per_table, leaves_per_range);                                   \
    }

SCAN_KERNEL(1)
SCAN_KERNEL(2)
SCAN_KERNEL(4)
SCAN_KERNEL(8)
SCAN_KERNEL(16)
SCAN_KERNEL(32)

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
