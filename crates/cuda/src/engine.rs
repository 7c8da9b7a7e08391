//! The engine: device buffers allocated once, kernels compiled once, and a
//! pass as five steps on one stream, timed with CUDA events.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use cudarc::nvrtc::{CompileError, CompileOptions, compile_ptx_with_opts};
use morphogen_dpf::{POINTS_PER_LEAF, depth_for, leaf_count};
use morphogen_scan::{Answers, EngineKind, Phase, Profile, Query, Scan, WritePages, validate, write_table};
use morphogen_table::{Layout, PageWrite, Progress, Table};

use crate::geometry::{
    BLOCK_THREADS, ScanGeometry, TILES, blocks_for, expand_threads, scan_shared_bytes, subtree_levels,
    tile_index,
};
use crate::keys::{key_words, pack_queries};
use crate::{Error, NotOpened, probe};

/// The kernels, as one source: the common prelude first.
const KERNEL_SOURCE: &str = concat!(
    include_str!("../kernels/common.cuh"),
    include_str!("../kernels/dpf.cu"),
    include_str!("../kernels/scan.cu"),
    include_str!("../kernels/table.cu"),
);

/// Bytes moved to the device (or generated there) between progress reports.
const FILL_STEP: usize = 1 << 30;

/// Settings of a [`CudaEngine`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Most queries one device pass answers; the buffers are sized for it
    /// once. Larger batches are answered in several device passes.
    pub max_batch: usize,
}

/// Names of the pass phases, in order; each ends at one event.
const PHASES: [&str; 4] = ["expand", "scan", "reduce", "copy"];

/// Answers queries on the first GPU, from a copy of the table in its memory.
pub struct CudaEngine {
    layout: Layout,
    device: String,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Warps of each scan kernel (indexed like [`TILES`]) the GPU holds at once.
    resident_warps: [u64; TILES.len()],
    sm_count: u32,
    max_batch: usize,
    /// The table in host memory, which updates are placed against; `None`
    /// for a table generated on the device.
    host: Option<Table>,
    table: CudaSlice<u8>,
    /// Packed keys of one device pass, on the host (pinned) and on the device.
    host_keys: PinnedHostSlice<u32>,
    keys: CudaSlice<u32>,
    /// Selection bits: one 16-byte block per key and leaf.
    bits: CudaSlice<u8>,
    /// One page per scan range and query.
    partial: CudaSlice<u8>,
    /// Answers of one device pass, on the device and on the host (pinned).
    answers: CudaSlice<u8>,
    host_answers: PinnedHostSlice<u8>,
    /// Where the plain read leaves its XORs.
    sink: CudaSlice<u8>,
    /// Start of a device pass, then the end of each phase.
    events: [CudaEvent; PHASES.len() + 1],
    packed: Vec<u32>,
    phases: Vec<Phase>,
}

struct Kernels {
    _module: Arc<CudaModule>,
    expand: CudaFunction,
    scan: [CudaFunction; TILES.len()],
    reduce: CudaFunction,
    fill_synthetic: CudaFunction,
    read_all: CudaFunction,
}

impl CudaEngine {
    /// An engine over a copy of `table` in GPU memory, uploaded in large
    /// chunks with `progress` reporting the bytes. The engine owns `table`
    /// (normally memory-mapped) from now on, to place updates; if it cannot
    /// be opened, the table comes back with the reason.
    pub fn new(
        table: Table,
        options: Options,
        progress: &dyn Progress,
    ) -> Result<CudaEngine, Box<NotOpened>> {
        match CudaEngine::upload(&table, options, progress) {
            Ok(mut engine) => {
                engine.host = Some(table);
                Ok(engine)
            }
            Err(error) => Err(Box::new(NotOpened { error, table })),
        }
    }

    fn upload(table: &Table, options: Options, progress: &dyn Progress) -> Result<CudaEngine, Error> {
        let mut engine = CudaEngine::allocate(table.layout().clone(), options)?;
        let pages = table.pages();
        progress.start("uploading the table to the GPU", pages.len() as u64);
        for (i, chunk) in pages.chunks(FILL_STEP).enumerate() {
            let start = i * FILL_STEP;
            let mut target = engine.table.slice_mut(start..start + chunk.len());
            engine.stream.memcpy_htod(chunk, &mut target)?;
            progress.advance(chunk.len() as u64);
        }
        engine.stream.synchronize()?;
        progress.finish();
        Ok(engine)
    }

    /// An engine over a table of `layout` whose pages are the synthetic byte
    /// stream for `seed` (`morphogen_table::fill_synthetic`), generated in
    /// GPU memory: benchmark tables larger than the host's disk or memory.
    pub fn synthetic(
        layout: Layout,
        seed: u64,
        options: Options,
        progress: &dyn Progress,
    ) -> Result<CudaEngine, Error> {
        let mut engine = CudaEngine::allocate(layout, options)?;
        let total = engine.table.len();
        progress.start("generating the table on the GPU", total as u64);
        let mut start = 0;
        while start < total {
            let len = FILL_STEP.min(total - start);
            let words = (len / 8) as u64;
            let first_word = (start / 8) as u64;
            let mut target = engine.table.slice_mut(start..start + len);
            let config = launch_config(u64::from(engine.sm_count) * 2048);
            let mut launch = engine.stream.launch_builder(&engine.kernels.fill_synthetic);
            launch.arg(&mut target).arg(&words).arg(&first_word).arg(&seed);
            // SAFETY: fill_synthetic(u64* out, u64 words, u64 first_word,
            // u64 seed) writes out[0..words) with a grid-stride loop, and
            // `target` holds len = 8 · words bytes (page sizes are
            // multiples of 8); the argument types match the signature.
            unsafe { launch.launch(config) }?;
            engine.stream.synchronize()?;
            progress.advance(len as u64);
            start += len;
        }
        progress.finish();
        Ok(engine)
    }

    /// Opens the GPU, compiles the kernels and allocates every buffer,
    /// the table's included (zeroed).
    fn allocate(layout: Layout, options: Options) -> Result<CudaEngine, Error> {
        if options.max_batch == 0 {
            return Err(Error::MaxBatch);
        }
        let context = probe()?;
        let stream = context.default_stream();
        let kernels = Kernels::compile(&context)?;
        let sm_count =
            context.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let mut resident_warps = [0u64; TILES.len()];
        for ((warps, kernel), tile) in resident_warps.iter_mut().zip(&kernels.scan).zip(TILES) {
            let shared = scan_shared_bytes(tile) as usize;
            let blocks =
                kernel.occupancy_max_active_blocks_per_multiprocessor(BLOCK_THREADS, shared, None)?;
            *warps = u64::from(blocks.max(1)) * u64::from(BLOCK_THREADS / 32) * u64::from(sm_count);
        }

        let sizes = BufferSizes::new(&layout, options.max_batch, &resident_warps, sm_count);
        let (free, _) = context.mem_get_info()?;
        if sizes.total() > free as u64 {
            return Err(Error::OutOfMemory { needed: sizes.total(), free: free as u64 });
        }
        let (major, minor) = context.compute_capability()?;
        let device = format!(
            "{} (compute capability {major}.{minor}, {sm_count} multiprocessors, {:.0} GiB)",
            context.name()?,
            context.total_mem()? as f64 / f64::from(1u32 << 30)
        );
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let events = [(); PHASES.len() + 1].map(|_| context.new_event(timing));
        let [e0, e1, e2, e3, e4] = events;
        Ok(CudaEngine {
            device,
            kernels,
            resident_warps,
            sm_count,
            max_batch: options.max_batch,
            host: None,
            table: stream.alloc_zeros(sizes.table)?,
            // SAFETY: pinned host memory comes back uninitialized; both
            // buffers are only ever written before they are read (keys by
            // the packing, answers by the device copy), and u32/u8 have no
            // invalid bit patterns. Write-combined memory is fast to write
            // and to send, slow to read: right for the keys only.
            host_keys: unsafe { context.alloc_pinned(sizes.keys) }?,
            keys: stream.alloc_zeros(sizes.keys)?,
            bits: stream.alloc_zeros(sizes.bits)?,
            partial: stream.alloc_zeros(sizes.partial)?,
            answers: stream.alloc_zeros(sizes.answers)?,
            // SAFETY: as for host_keys; plain (not write-combined) pinned
            // memory because the host reads the answers.
            host_answers: unsafe { context.alloc_pinned_with_flags(sizes.answers, 0) }?,
            sink: stream.alloc_zeros(sizes.sink)?,
            events: [e0?, e1?, e2?, e3?, e4?],
            packed: Vec::with_capacity(sizes.keys),
            phases: Vec::new(),
            layout,
            stream,
        })
    }

    /// Answers at most `max_batch` queries into `out` (their answer bytes).
    fn device_pass(&mut self, queries: &[Query], out: &mut [u8]) -> Result<(), Error> {
        let layout = &self.layout;
        let choices = u32::from(layout.choices());
        let page_size = layout.page_size();
        let page_vecs = page_size / 16;
        let domain = layout.pages_per_table();
        let leaves = leaf_count(domain).expect("a layout's sub-tables are valid DPF domains");
        let depth = depth_for(domain).expect("a layout's sub-tables are valid DPF domains");
        let query_count = u32::try_from(queries.len()).expect("at most max_batch queries");
        let key_count = query_count * choices;

        pack_queries(queries, &mut self.packed);
        let packed_len = self.packed.len();
        self.host_keys.as_mut_slice()?[..packed_len].copy_from_slice(&self.packed);
        self.events[0].record(&self.stream)?;
        self.stream
            .memcpy_htod(&self.host_keys.as_slice()?[..packed_len], &mut self.keys.slice_mut(..packed_len))?;

        let stride = key_words(depth) as u32;
        let subtree = subtree_levels(depth);
        let tail_bits = (domain % POINTS_PER_LEAF) as u32;
        let config = launch_config(expand_threads(leaves, depth, u64::from(key_count)));
        let mut launch = self.stream.launch_builder(&self.kernels.expand);
        launch
            .arg(&self.keys)
            .arg(&stride)
            .arg(&depth)
            .arg(&subtree)
            .arg(&leaves)
            .arg(&key_count)
            .arg(&tail_bits)
            .arg(&mut self.bits);
        // SAFETY: dpf_expand(const u32* keys, u32 key_words, u32 depth,
        // u32 subtree_levels, u64 leaves, u32 key_count, u32 tail_bits,
        // uint4* bits). `keys` holds key_count packed keys of `stride`
        // words (written just above); threads past key_count · subtrees
        // return at once; each writes only bits[key · leaves + leaf] with
        // key < key_count and leaf < leaves, inside the buffer sized for
        // max_batch queries, which this pass does not exceed.
        unsafe { launch.launch(config) }?;
        self.events[1].record(&self.stream)?;

        let tile = tile_index(query_count);
        let geometry = ScanGeometry::new(leaves, choices, page_size, query_count, self.resident_warps[tile]);
        let config = LaunchConfig {
            grid_dim: (geometry.blocks, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: scan_shared_bytes(geometry.tile),
        };
        let mut launch = self.stream.launch_builder(&self.kernels.scan[tile]);
        launch
            .arg(&self.table)
            .arg(&self.bits)
            .arg(&mut self.partial)
            .arg(&page_vecs)
            .arg(&domain)
            .arg(&leaves)
            .arg(&choices)
            .arg(&query_count)
            .arg(&geometry.tiles)
            .arg(&geometry.ranges_per_table)
            .arg(&geometry.leaves_per_range);
        // SAFETY: scan_tile_N(const uint4* table, const uint4* bits,
        // uint4* partial, u32 page_vecs, u64 pages_per_table, u64 leaves,
        // u32 choices, u32 queries, u32 tiles, u32 ranges_per_table,
        // u32 leaves_per_range). Warps past ranges_per_table · choices
        // ranges return at once; the others read pages of their own
        // sub-table whose selection bit is set, and the expansion clears
        // every bit past the domain, so no read leaves the table; bits are
        // read for keys < queries · choices and leaves < leaves; partial is
        // written at (range · queries + q) · page_vecs + column, below
        // geometry.partial_bytes, which BufferSizes reserved for every
        // batch up to max_batch. The grouped kernels (tiles of 8 and more)
        // get scan_shared_bytes(tile) of dynamic shared memory, the size
        // the kernel indexes (combinations and words of 8 warps) and the
        // limit Kernels::compile raised for them.
        unsafe { launch.launch(config) }?;
        self.events[2].record(&self.stream)?;

        let answer_len = queries.len() * usize::from(layout.choices()) * page_size as usize;
        let config = launch_config(u64::from(key_count) * u64::from(page_vecs));
        let mut launch = self.stream.launch_builder(&self.kernels.reduce);
        launch
            .arg(&self.partial)
            .arg(&mut self.answers)
            .arg(&page_vecs)
            .arg(&query_count)
            .arg(&choices)
            .arg(&geometry.ranges_per_table);
        // SAFETY: reduce_ranges(const uint4* partial, uint4* answers,
        // u32 page_vecs, u32 queries, u32 choices, u32 ranges_per_table):
        // threads past queries · choices · page_vecs return; the others
        // read the partial pages the scan wrote and write answers[t] with
        // t below answer_len / 16, inside the buffer sized for max_batch.
        unsafe { launch.launch(config) }?;
        self.events[3].record(&self.stream)?;

        self.stream.memcpy_dtoh(&self.answers.slice(..answer_len), &mut self.host_answers)?;
        self.events[4].record(&self.stream)?;
        self.events[4].synchronize()?;
        out.copy_from_slice(&self.host_answers.as_slice()?[..answer_len]);

        for (i, name) in PHASES.iter().enumerate() {
            let seconds = f64::from(self.events[i].elapsed_ms(&self.events[i + 1])?) / 1000.0;
            match self.phases.iter_mut().find(|p| p.name == *name) {
                Some(phase) => phase.seconds += seconds,
                None => self.phases.push(Phase { name, seconds }),
            }
        }
        Ok(())
    }
}

impl Kernels {
    fn compile(context: &Arc<CudaContext>) -> Result<Kernels, Error> {
        let (major, minor) = context.compute_capability()?;
        let options = CompileOptions {
            options: vec![format!("--gpu-architecture=sm_{major}{minor}")],
            name: Some("morphogen.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(KERNEL_SOURCE, options).map_err(|e| match e {
            CompileError::CompileError { log, .. } => Error::Compile(log.to_string_lossy().into_owned()),
            other => Error::Compile(other.to_string()),
        })?;
        let module = context.load_module(ptx)?;
        let scan = TILES.map(|tile| module.load_function(&format!("scan_tile_{tile}")));
        let [s1, s2, s4, s8, s16, s32] = scan;
        let scan = [s1?, s2?, s4?, s8?, s16?, s32?];
        for (kernel, tile) in scan.iter().zip(TILES) {
            let shared = scan_shared_bytes(tile);
            if shared > 0 {
                // Above 48 KiB a kernel must ask for its dynamic shared memory.
                kernel.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared as i32,
                )?;
            }
        }
        Ok(Kernels {
            expand: module.load_function("dpf_expand")?,
            scan,
            reduce: module.load_function("reduce_ranges")?,
            fill_synthetic: module.load_function("fill_synthetic")?,
            read_all: module.load_function("read_all")?,
            _module: module,
        })
    }
}

/// Bytes of every device buffer, sized once for the largest batch.
struct BufferSizes {
    table: usize,
    keys: usize,
    bits: usize,
    partial: usize,
    answers: usize,
    sink: usize,
}

impl BufferSizes {
    fn new(
        layout: &Layout,
        max_batch: usize,
        resident_warps: &[u64; TILES.len()],
        sm_count: u32,
    ) -> BufferSizes {
        let choices = u32::from(layout.choices());
        let page_size = layout.page_size();
        let domain = layout.pages_per_table();
        let leaves = leaf_count(domain).expect("a layout's sub-tables are valid DPF domains");
        let depth = depth_for(domain).expect("a layout's sub-tables are valid DPF domains");
        let keys_per_pass = max_batch * usize::from(layout.choices());
        let partial = (1..=max_batch as u32)
            .map(|queries| {
                let warps = resident_warps[tile_index(queries)];
                ScanGeometry::new(leaves, choices, page_size, queries, warps)
                    .partial_bytes(choices, page_size, queries)
            })
            .max()
            .unwrap_or(0);
        BufferSizes {
            table: (layout.total_pages() * u64::from(page_size)) as usize,
            keys: keys_per_pass * key_words(depth),
            bits: keys_per_pass * leaves as usize * 16,
            partial: partial as usize,
            answers: keys_per_pass * page_size as usize,
            sink: read_all_threads(sm_count) as usize * 16,
        }
    }

    fn total(&self) -> u64 {
        (self.table + 4 * self.keys + self.bits + self.partial + self.answers + self.sink) as u64
    }
}

/// Threads of the plain read: enough to keep every multiprocessor's memory
/// pipeline full.
fn read_all_threads(sm_count: u32) -> u64 {
    u64::from(sm_count) * 2048
}

fn launch_config(threads: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_for(threads), 1, 1),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Scan for CudaEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Cuda
    }

    fn device(&self) -> String {
        self.device.clone()
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn pass(&mut self, queries: &[Query]) -> Result<Answers, morphogen_scan::Error> {
        validate(&self.layout, queries)?;
        let mut answers = Answers::zeroed(&self.layout, queries.len());
        let per_query = usize::from(self.layout.choices()) * self.layout.page_size() as usize;
        self.phases.clear();
        let max_batch = self.max_batch;
        for (chunk, out) in
            queries.chunks(max_batch).zip(answers.as_bytes_mut().chunks_mut(max_batch * per_query))
        {
            self.device_pass(chunk, out).map_err(|e| morphogen_scan::Error::Fault(e.to_string()))?;
        }
        Ok(answers)
    }
}

impl WritePages for CudaEngine {
    fn table(&self) -> Option<&Table> {
        self.host.as_ref()
    }

    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), morphogen_scan::Error> {
        let fault = |e: Error| morphogen_scan::Error::Fault(e.to_string());
        let host = self.host.as_mut().ok_or_else(|| {
            morphogen_scan::Error::Fault("a table generated on the GPU takes no updates".to_string())
        })?;
        write_table(host, writes)?;
        let page_size = self.layout.page_size() as usize;
        for write in writes {
            let start = write.index as usize * page_size;
            let mut target = self.table.slice_mut(start..start + page_size);
            self.stream.memcpy_htod(&write.bytes, &mut target).map_err(|e| fault(e.into()))?;
        }
        self.stream.synchronize().map_err(|e| fault(e.into()))
    }
}

impl Profile for CudaEngine {
    fn last_pass_phases(&self) -> Vec<Phase> {
        self.phases.clone()
    }

    fn plain_read_seconds(&mut self) -> Result<f64, morphogen_scan::Error> {
        let fault = |e: Error| morphogen_scan::Error::Fault(e.to_string());
        let vecs = (self.table.len() / 16) as u64;
        let threads = read_all_threads(self.sm_count);
        let mut launch = self.stream.launch_builder(&self.kernels.read_all);
        launch.arg(&self.table).arg(&vecs).arg(&mut self.sink);
        self.events[0].record(&self.stream).map_err(|e| fault(e.into()))?;
        // SAFETY: read_all(const uint4* table, u64 vecs, uint4* sink):
        // thread t reads table vectors t, t + stride, … below vecs, the
        // table's length in 16-byte vectors (pages are multiples of 512
        // bytes), and writes sink[t] for t < threads, the sink's length.
        unsafe { launch.launch(launch_config(threads)) }.map_err(|e| fault(e.into()))?;
        self.events[1].record(&self.stream).map_err(|e| fault(e.into()))?;
        let ms = self.events[0].elapsed_ms(&self.events[1]).map_err(|e| fault(e.into()))?;
        Ok(f64::from(ms) / 1000.0)
    }
}
