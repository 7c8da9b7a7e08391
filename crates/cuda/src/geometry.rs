//! Launch geometry: how a pass's work is cut into warps and blocks. Pure
//! arithmetic, unit-tested without a GPU; the kernels' comments describe the
//! same decomposition from their side.

/// Threads per block of every kernel.
pub(crate) const BLOCK_THREADS: u32 = 256;

/// Warps per block of the scan kernels.
const WARPS_PER_BLOCK: u64 = BLOCK_THREADS as u64 / 32;

/// Bytes of a page one warp owns: 32 lanes × 16 bytes.
pub(crate) const SLICE_BYTES: u32 = 512;

/// Query tiles the scan kernels are compiled for (`scan_tile_N`): a lane
/// holds one query's bits, so a tile has at most 32 queries.
pub(crate) const TILES: [u32; 6] = [1, 2, 4, 8, 16, 32];

/// Smallest tile served by the grouped scan (`scan_grouped` in scan.cu).
const GROUPED_FROM: u32 = 8;

/// Combinations of a group of 4 pages the grouped scan has room for per
/// warp (`COMBINATIONS_MAX` in scan.cu).
const COMBINATIONS_MAX: u32 = 16;

/// Bytes of a grouped-scan warp's stash (`STASH_VECS` in scan.cu): the
/// leaf's 16 bytes of selection bits per lane, a combination byte per
/// query (up to 32) and group of a 32-page word, and a word of flags per
/// group.
const STASH_BYTES: u32 = 32 * 16 + 8 * 32 + 8 * 4;

/// Dynamic shared memory of one block of the scan kernel for `tile`: the
/// grouped scan keeps, per warp, room for 16 combinations of a 512-byte
/// slice and its stash.
pub(crate) fn scan_shared_bytes(tile: u32) -> u32 {
    if tile >= GROUPED_FROM {
        WARPS_PER_BLOCK as u32 * (COMBINATIONS_MAX * SLICE_BYTES + STASH_BYTES)
    } else {
        0
    }
}

/// Levels of the DPF tree each expansion thread walks depth-first
/// (`MAX_SUBTREE_LEVELS` in dpf.cu): 32 leaves a thread.
pub(crate) const SUBTREE_LEVELS: u32 = 5;

/// Scan warps per warp the GPU holds at once: several waves let the block
/// scheduler even out ranges that select more pages than others; more
/// waves make more ranges, each one more page for the reduction to fold
/// (docs/performance-log.md weighs the two).
const WAVES: u64 = 4;

/// How one scan launch covers `queries` queries over a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScanGeometry {
    /// Queries per tile: the kernel `scan_tile_{tile}` runs.
    pub tile: u32,
    /// Tiles in the batch.
    pub tiles: u32,
    /// 512-byte slices per page.
    pub slices: u32,
    /// Leaf ranges per sub-table.
    pub ranges_per_table: u32,
    /// Leaves per range (the last range of a sub-table may have fewer).
    pub leaves_per_range: u32,
    /// Blocks of [`BLOCK_THREADS`] threads to launch.
    pub blocks: u32,
}

impl ScanGeometry {
    /// The geometry for `queries` queries over sub-tables of `leaves` leaves
    /// (`choices` of them, pages of `page_size` bytes), on a GPU that holds
    /// `resident_warps` warps of the tile's kernel at once.
    pub(crate) fn new(
        leaves: u64,
        choices: u32,
        page_size: u32,
        queries: u32,
        resident_warps: u64,
    ) -> ScanGeometry {
        assert!(leaves >= 1 && choices >= 1 && queries >= 1 && page_size >= SLICE_BYTES);
        let tile = TILES[tile_index(queries)];
        let tiles = queries.div_ceil(tile);
        let slices = page_size / SLICE_BYTES;
        let warps_per_range = u64::from(slices) * u64::from(tiles);
        let wanted_ranges = (resident_warps * WAVES).div_ceil(warps_per_range);
        let ranges_per_table = wanted_ranges.div_ceil(u64::from(choices)).clamp(1, leaves);
        let leaves_per_range = leaves.div_ceil(ranges_per_table);
        // No empty range: recount with the rounded-up range length.
        let ranges_per_table = leaves.div_ceil(leaves_per_range);
        let warps = ranges_per_table * u64::from(choices) * warps_per_range;
        ScanGeometry {
            tile,
            tiles,
            slices,
            ranges_per_table: u32::try_from(ranges_per_table)
                .expect("ranges are bounded by the warps wanted"),
            leaves_per_range: u32::try_from(leaves_per_range).expect("a sub-table has at most 2^25 leaves"),
            blocks: u32::try_from(warps.div_ceil(WARPS_PER_BLOCK)).expect("a grid of at most 2^32 blocks"),
        }
    }

    /// Bytes of the partial answers: one page per range and query.
    pub(crate) fn partial_bytes(&self, choices: u32, page_size: u32, queries: u32) -> u64 {
        u64::from(self.ranges_per_table) * u64::from(choices) * u64::from(queries) * u64::from(page_size)
    }
}

/// Index in [`TILES`] of the kernel for a batch of `queries`: the smallest
/// tile that holds the batch, or the largest.
pub(crate) fn tile_index(queries: u32) -> usize {
    let tile = queries.next_power_of_two().min(TILES[TILES.len() - 1]);
    tile.trailing_zeros() as usize
}

/// Levels each expansion thread walks depth-first for a tree of `depth` levels.
pub(crate) fn subtree_levels(depth: u32) -> u32 {
    depth.min(SUBTREE_LEVELS)
}

/// Threads of the expansion: one per key and subtree.
pub(crate) fn expand_threads(leaves: u64, depth: u32, keys: u64) -> u64 {
    leaves.div_ceil(1 << subtree_levels(depth)) * keys
}

/// Blocks of [`BLOCK_THREADS`] for `threads` threads.
pub(crate) fn blocks_for(threads: u64) -> u32 {
    u32::try_from(threads.div_ceil(u64::from(BLOCK_THREADS))).expect("a grid of at most 2^32 blocks")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H200 with the 32-query kernel at 10 warps per multiprocessor.
    const H200_WARPS: u64 = 132 * 10;

    fn check_cover(leaves: u64, choices: u32, page_size: u32, queries: u32, resident: u64) {
        let g = ScanGeometry::new(leaves, choices, page_size, queries, resident);
        // Tiles cover every query and no tile is wholly past the batch.
        assert!(u64::from(g.tile) * u64::from(g.tiles) >= u64::from(queries));
        assert!((g.tiles - 1) * g.tile < queries);
        assert!(TILES.contains(&g.tile));
        // Ranges cover every leaf, and none is empty.
        let per = u64::from(g.leaves_per_range);
        assert!(per * u64::from(g.ranges_per_table) >= leaves, "{g:?}");
        assert!(per * u64::from(g.ranges_per_table - 1) < leaves, "{g:?}");
        // Enough threads for every (range, tile, slice) warp.
        let warps =
            u64::from(g.ranges_per_table) * u64::from(choices) * u64::from(g.tiles) * u64::from(g.slices);
        assert!(u64::from(g.blocks) * WARPS_PER_BLOCK >= warps);
        assert!(u64::from(g.blocks - 1) * WARPS_PER_BLOCK < warps);
        assert_eq!(g.slices * SLICE_BYTES, page_size);
    }

    #[test]
    fn covers_every_leaf_query_and_slice() {
        for leaves in [1, 2, 3, 127, 128, 129, 1000, 65536] {
            for choices in 2..=4 {
                for page_size in [512, 4096, 65536] {
                    for queries in [1, 2, 3, 31, 32, 33, 64, 100] {
                        for resident in [1, 64, H200_WARPS] {
                            check_cover(leaves, choices, page_size, queries, resident);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_64_gib_table_fills_the_gpu_several_times() {
        // 2^24 pages of 4 KiB in two sub-tables: 65,536 leaves each.
        let g = ScanGeometry::new(65536, 2, 4096, 1, H200_WARPS);
        assert_eq!((g.tile, g.tiles, g.slices), (1, 1, 8));
        assert_eq!(g.ranges_per_table, 330);
        assert_eq!(g.leaves_per_range, 199);
        assert!(u64::from(g.blocks) * WARPS_PER_BLOCK >= WAVES * H200_WARPS);
        let g = ScanGeometry::new(65536, 2, 4096, 64, H200_WARPS);
        assert_eq!((g.tile, g.tiles), (32, 2));
        // 64 queries' partial pages stay far below the table.
        assert!(g.partial_bytes(2, 4096, 64) < 1 << 30);
    }

    #[test]
    fn small_batches_use_small_tiles() {
        let tiles: Vec<_> =
            [1, 2, 3, 5, 9, 17, 33].iter().map(|&q| ScanGeometry::new(100, 2, 4096, q, 64).tile).collect();
        assert_eq!(tiles, [1, 2, 4, 8, 16, 32, 32]);
    }

    #[test]
    fn grouped_tiles_fit_in_shared_memory() {
        assert_eq!(TILES.map(scan_shared_bytes), [0, 0, 0, 71936, 71936, 71936]);
        // Two blocks still fit in the 227 KiB a Hopper multiprocessor offers.
        assert!(2 * scan_shared_bytes(32) < 227 << 10);
    }

    #[test]
    fn expansion_threads_cover_every_leaf() {
        assert_eq!(subtree_levels(0), 0);
        assert_eq!(subtree_levels(16), SUBTREE_LEVELS);
        assert_eq!(expand_threads(1, 0, 3), 3);
        assert_eq!(expand_threads(65536, 16, 2), 4096);
        assert_eq!(expand_threads(33, 6, 1), 2);
        assert_eq!(blocks_for(257), 2);
    }
}
