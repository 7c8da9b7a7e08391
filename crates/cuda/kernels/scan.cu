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
// no barrier is needed for them. With COMBINED = 3 the group's 4th page is
// XORed into each query that selects it straight from registers: for 8 or
// 16 queries, storing the 8 further combinations costs more of the shared
// memory's bandwidth (which global loads pass through as well) than those
// XORs cost.
//
// Shared memory's bandwidth and the integer ALU pipe bound this loop, so
// little but the XORs and the combinations' loads and stores is left in
// it. Once per 32 pages the warp turns its lanes' selection words (lane j
// holds query j's) into a byte per query and group that names its
// combination, already shifted so that one byte permute makes it the
// combination's offset, and a word per group of the queries that select
// the 4th page. A group then reads one broadcast word per 4 queries, and a
// query costs a permute, an add, its shared load, its XORs and a bit test.
// Page addresses are multiply-adds from a pointer that moves by a group
// (the FMA pipe), and the pages any query selects are tested in a window of
// wanted bits that shifts by a group.
//
// Memory latency is hidden by loading the next group's pages into registers
// before this group is combined, and by prefetching the group after that
// into L2: a warp of this scan holds too many accumulators for many warps
// to share a multiprocessor. The pipeline runs on from one leaf into the next: a
// leaf's selection bits are loaded a whole leaf ahead and kept in shared
// memory while it is scanned, so no leaf starts with a wait.
#define GROUP_PAGES 4
#define GROUPS_PER_WORD (32 / GROUP_PAGES)
// How many groups ahead a warp prefetches into L2 (1 and 3 measured no
// better; prefetching into L1 no better either).
#define PREFETCH_GROUPS 2
// Shared memory of a warp of the grouped scan, in uint4: its combinations
// ([combination][lane], 512 bytes apart), then its stash: the leaf's
// selection bits ([query]), the combination bytes of a word's groups
// ([group][query] u8, room for 32 queries) and their 4th-page flags
// ([group] u32). A combination byte is its index times 2: in the second
// byte of a word it is the index times 512.
#define COMBINATION_VECS (COMBINATIONS_MAX * 32)
#define STASH_BITS_VECS 32
#define STASH_OFFSET_VECS (GROUPS_PER_WORD * 32 / 16)
#define STASH_FLAG_VECS (GROUPS_PER_WORD / 4)
#define STASH_VECS (STASH_BITS_VECS + STASH_OFFSET_VECS + STASH_FLAG_VECS)

// base + index * stride bytes, as one multiply-add: on the FMA pipe, which
// the grouped scan leaves idle, not on the integer pipe that bounds it.
__device__ __forceinline__ const uint4* advance(const uint4* base, u32 index, u32 stride) {
    u64 address;
    asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(address) : "r"(index), "r"(stride), "l"((u64)base));
    return (const uint4*)address;
}

// Loads this lane's 16 bytes of the pages `first` + i * page_bytes whose
// bit i of `wanted` is set; a page no query selects counts as zero and is
// not read.
__device__ __forceinline__ void load_group(uint4 (&p)[GROUP_PAGES], const uint4* first, u32 page_bytes,
                                           u32 wanted) {
#pragma unroll
    for (int i = 0; i < GROUP_PAGES; i++) {
        p[i] = (wanted >> i) & 1u ? __ldg(advance(first, i, page_bytes)) : make_uint4(0, 0, 0, 0);
    }
}

template <int TILE, int COMBINED>
__device__ __forceinline__ void scan_grouped(const uint4* __restrict__ table, const uint4* __restrict__ bits,
                                             uint4* __restrict__ partial, u32 page_vecs, u64 pages_per_table,
                                             u64 leaves, u32 choices, u32 queries, u32 tiles,
                                             u32 ranges_per_table, u32 leaves_per_range) {
    static_assert(TILE == 8 || TILE == 16 || TILE == 32, "a tile is 8, 16 or 32 queries");
    static_assert(COMBINED == 3 || COMBINED == 4, "combinations of 3 or all 4 of a group's pages");
    constexpr int COMBINATIONS = 1 << COMBINED;
    extern __shared__ uint4 shared_of_block[];
    const u32 lane = threadIdx.x & 31u;
    const u32 warp_in_block = threadIdx.x >> 5;
    uint4* combination = shared_of_block + warp_in_block * COMBINATION_VECS + lane;
    uint4* stash = shared_of_block + (blockDim.x >> 5) * COMBINATION_VECS + warp_in_block * STASH_VECS;
    unsigned char* offsets = (unsigned char*)(stash + STASH_BITS_VECS);
    u32* flags = (u32*)(stash + STASH_BITS_VECS + STASH_OFFSET_VECS);
    combination[0] = make_uint4(0, 0, 0, 0);  // no combined page of the group selected

    const WarpWork work = warp_work(bits, table, page_vecs, pages_per_table, leaves, choices, queries, tiles,
                                    ranges_per_table, leaves_per_range, TILE);
    if (!work.valid) return;  // the whole warp leaves

    uint4 acc[TILE];
#pragma unroll
    for (int j = 0; j < TILE; j++) acc[j] = make_uint4(0, 0, 0, 0);

    const u32 page_bytes = page_vecs * 16u;
    // Selection bits of a leaf (none past the range).
    const auto bits_of = [&](u64 leaf) {
        return work.holds_query && leaf < work.leaf_end ? work.query_bits[leaf] : make_uint4(0, 0, 0, 0);
    };
    // Combination bytes and flags of the 8 groups of word w of the stashed
    // leaf. The lane packs for query lane % TILE the groups lane / TILE +
    // r * 32 / TILE.
    const auto pack_word = [&](u32 w) {
        __syncwarp();  // the stash is written; every lane is done with the previous word's bytes
        const u32 word = ((const u32*)&stash[lane % TILE])[w];
#pragma unroll
        for (int r = 0; r < TILE / 4; r++) {
            const u32 group = lane / TILE + r * (32 / TILE);
            const u32 nibble = (word >> (GROUP_PAGES * group)) & 15u;
            offsets[group * TILE + lane % TILE] = (unsigned char)((nibble & (COMBINATIONS - 1)) << 1);
            if (COMBINED < GROUP_PAGES) {
                const u32 selecting_4th = __ballot_sync(FULL_WARP, nibble >> 3);
                if (lane % TILE == 0) flags[group] = (selecting_4th >> lane) & (u32)((1ull << TILE) - 1);
            }
        }
        __syncwarp();
    };

    uint4 b_next = bits_of(work.leaf_begin);
    // anyN: the pages of word N of the leaf that some query selects.
    u32 any0 = __reduce_or_sync(FULL_WARP, b_next.x), any1 = __reduce_or_sync(FULL_WARP, b_next.y),
        any2 = __reduce_or_sync(FULL_WARP, b_next.z), any3 = __reduce_or_sync(FULL_WARP, b_next.w);
    // This lane's 16 bytes of the group's pages, and where they start.
    uint4 p[GROUP_PAGES];
    const uint4* group_pages = work.column + work.leaf_begin * 128 * page_vecs;
    load_group(p, group_pages, page_bytes, any0 & 15u);
    for (u64 leaf = work.leaf_begin; leaf < work.leaf_end; leaf++) {
        // Every lane is done with the previous leaf's stash: pack_word ends
        // with a barrier.
        stash[lane] = b_next;  // this leaf's selection bits, lane j: query j's
        b_next = bits_of(leaf + 1);
#pragma unroll 1
        for (u32 w = 0; w < 4; w++) {
            // The word after this one: the next leaf's first at the last.
            const u32 after = w < 3 ? any1 : __reduce_or_sync(FULL_WARP, b_next.x);
            pack_word(w);
            // Bit 4 k + i: some query selects page i of the k-th group from
            // this one; shifted by a group each group.
            u32 wanted = any0, wanted_after = after;
            // One group a turn: unrolling two turns to swap the roles of p
            // and next instead of copying was slower (docs/performance-log.md).
#pragma unroll 1
            for (u32 group = 0; group < GROUPS_PER_WORD; group++) {
                // The group's combination bytes (4 queries a word) and flags,
                // read first: the compiler may not move them above the
                // stores of the combinations.
                u32 four[TILE / 4];
                const u32* group_offsets = (const u32*)(offsets + group * TILE);
#pragma unroll
                for (int k = 0; k < TILE / 4; k++) four[k] = group_offsets[k];
                const u32 fourth = COMBINED < GROUP_PAGES ? flags[group] : 0u;
#pragma unroll
                for (int i = 0; i < GROUP_PAGES; i++) {
                    if ((wanted >> (PREFETCH_GROUPS * GROUP_PAGES + i)) & 1u) {
                        const uint4* page = advance(group_pages, PREFETCH_GROUPS * GROUP_PAGES + i, page_bytes);
                        asm volatile("prefetch.global.L2 [%0];" ::"l"(page));
                    }
                }
                uint4 next[GROUP_PAGES];
                load_group(next, advance(group_pages, GROUP_PAGES, page_bytes), page_bytes,
                           (wanted >> GROUP_PAGES) & 15u);
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
                for (int k = 0; k < TILE / 4; k++) {
#pragma unroll
                    for (int m = 0; m < 4; m++) {
                        const int j = 4 * k + m;
                        // Byte m of four[k] as the second byte of a word, zeros around it.
                        const u32 offset = __byte_perm(four[k], 0u, 0x4404u | (m << 4));
                        acc[j] = xor4(acc[j], *(const uint4*)((const char*)combination + offset));
                        if (COMBINED < GROUP_PAGES && ((fourth >> j) & 1u)) acc[j] = xor4(acc[j], p[3]);
                    }
                }
#pragma unroll
                for (int i = 0; i < GROUP_PAGES; i++) p[i] = next[i];
                group_pages = advance(group_pages, GROUP_PAGES, page_bytes);
                wanted = __funnelshift_r(wanted, wanted_after, GROUP_PAGES);
                wanted_after >>= GROUP_PAGES;
            }
            any0 = after;
            any1 = any2;
            any2 = any3;
        }
        any1 = __reduce_or_sync(FULL_WARP, b_next.y);
        any2 = __reduce_or_sync(FULL_WARP, b_next.z);
        any3 = __reduce_or_sync(FULL_WARP, b_next.w);
    }
    write_partial<TILE>(acc, partial, work, queries, page_vecs);
}

// Every tile's kernel has the same signature; tiles from 8 up use the
// grouped scan and (COMBINATION_VECS + STASH_VECS) * 16 bytes of shared
// memory per warp (scan_shared_bytes in src/geometry.rs).
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
