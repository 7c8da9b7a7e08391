//! `morphogen selftest`: compares an engine with the reference engine on
//! random tables of awkward shapes, before and after pages are rewritten
//! as updates rewrite them, so that a GPU engine can be checked on the
//! machine that runs it.

use anyhow::{bail, ensure};
use clap::Args;
use morphogen_scan::{Engine, Query, ReferenceEngine, Scan, WritePages};
use morphogen_table::{Layout, PageWrite, Table, fill_synthetic};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::engine::{self, EngineChoice, TableSource};

#[derive(Args)]
pub struct SelftestArgs {
    /// Engine to check against the reference engine.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// Seed of the random tables and queries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Pages per sub-table: one page, around one DPF leaf (128 pages), and
/// sizes that are no power of two.
const PAGES: [u64; 7] = [1, 2, 127, 128, 129, 255, 1000];
const PAGE_SIZES: [u32; 4] = [512, 1024, 4096, 16384];
const BATCHES: [usize; 8] = [1, 2, 3, 8, 17, 32, 33, 64];

/// Larger cases, with many leaves per sub-table, kept to a few queries so
/// that the reference engine stays quick: (pages per sub-table, sub-tables,
/// page size, batch).
const LARGE: [(u64, u8, u32, usize); 2] = [(20_000, 2, 4096, 3), (4097, 3, 512, 40)];

/// Engines compared need passes of up to this many queries.
const MAX_BATCH: usize = 64;

struct Case {
    pages: u64,
    choices: u8,
    page_size: u32,
    batch: usize,
}

/// Every (pages, sub-tables) pair once, page sizes and batch sizes in
/// turn, then the large cases.
fn cases() -> Vec<Case> {
    let small = PAGES.iter().flat_map(|&pages| (2..=4).map(move |choices| (pages, choices)));
    let small = small.enumerate().map(|(i, (pages, choices))| Case {
        pages,
        choices,
        page_size: PAGE_SIZES[i % PAGE_SIZES.len()],
        batch: BATCHES[i % BATCHES.len()],
    });
    let large =
        LARGE.iter().map(|&(pages, choices, page_size, batch)| Case { pages, choices, page_size, batch });
    small.chain(large).collect()
}

pub fn run(args: &SelftestArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let cases = cases();
    let mut queries_checked = 0;
    let mut engine_name = String::new();
    for (i, case) in cases.iter().enumerate() {
        let layout = Layout::new(case.page_size, 32, case.choices, case.pages, rng.random())?;
        let mut pages = vec![0u8; (layout.total_pages() * u64::from(case.page_size)) as usize];
        fill_synthetic(rng.random(), 0, &mut pages);
        let table = Table::new(layout.clone(), 0, pages)?;
        // Each engine a table of its own: both take the page writes below.
        let mut reference = ReferenceEngine::new(table.clone());
        let mut engine = engine::open(args.engine, TableSource::Host(table), MAX_BATCH)?;
        if engine_name.is_empty() {
            engine_name = format!("{} on {}", engine.name(), engine.device());
            println!("checking engine {engine_name} against the reference engine");
        }
        let queries = engine::random_queries(&layout, case.batch, &mut rng)?;
        let describe = format!(
            "{} pages × {} sub-tables, {}-byte pages, batch {}",
            case.pages, case.choices, case.page_size, case.batch
        );
        compare(engine.as_mut(), &mut reference, &queries)
            .map_err(|problem| anyhow::anyhow!("case {} ({describe}): {problem}", i + 1))?;
        // Updates rewrite whole pages between passes: the engine must answer
        // from the new pages (a GPU engine copies them to the device).
        let writes: Vec<PageWrite> = (0..3)
            .map(|_| {
                let mut bytes = vec![0u8; case.page_size as usize];
                fill_synthetic(rng.random(), 0, &mut bytes);
                PageWrite { index: rng.random_range(0..layout.total_pages()), bytes }
            })
            .collect();
        engine.write_pages(&writes)?;
        reference.write_pages(&writes)?;
        compare(engine.as_mut(), &mut reference, &queries).map_err(|problem| {
            anyhow::anyhow!("case {} ({describe}), after page writes: {problem}", i + 1)
        })?;
        queries_checked += 2 * queries.len();
        println!("  ok  {describe}");
    }
    println!(
        "selftest passed: {} cases, {queries_checked} queries, engine {engine_name} equals the reference engine",
        cases.len()
    );
    Ok(())
}

/// Runs `queries` on both engines; says how the answers differ, if they do.
fn compare(
    engine: &mut dyn Engine,
    reference: &mut ReferenceEngine,
    queries: &[Query],
) -> anyhow::Result<()> {
    let answers = engine.pass(queries)?;
    let expected = reference.pass(queries)?;
    ensure!(answers.len() == queries.len(), "{} answers for {} queries", answers.len(), queries.len());
    if let Some(q) = (0..queries.len()).find(|&q| answers.query(q) != expected.query(q)) {
        bail!("query {q}'s answer differs from the reference engine's");
    }
    Ok(())
}
