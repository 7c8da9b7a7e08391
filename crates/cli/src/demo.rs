//! `morphogen demo`: the DPF step of a private lookup, run and checked on a
//! built-in example. Tables, servers and the client join it as they land.

use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use morphogen_dpf::{Key, MAX_DOMAIN, generate};

/// 2^24 pages: a 64 GiB table of 4 KiB pages.
const DEFAULT_PAGES: u64 = 1 << 24;

#[derive(Args)]
pub struct DemoArgs {
    /// Number of pages in the (imaginary) table, 1 to 2^32.
    #[arg(long, default_value_t = DEFAULT_PAGES, value_parser = clap::value_parser!(u64).range(1..=MAX_DOMAIN))]
    pages: u64,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let n = args.pages;
    println!("morphogen demo: the distributed point function behind a private lookup");
    println!("table: {n} pages (server-side tables, servers and the client are not built yet)\n");

    // The client: a secret page, two keys. The page is never printed.
    let secret = rand::random_range(0..n);
    let started = Instant::now();
    let (key_a, key_b) = generate(n, secret, &mut rand::rng()).context("generating keys")?;
    let gen_time = started.elapsed();
    println!(
        "client: picked a secret page and made two keys of {} bytes each in {gen_time:.1?}",
        key_a.to_bytes().len()
    );

    // Each server, on its own: expand its key to one bit per page.
    let selections = [("A", &key_a), ("B", &key_b)].map(|(name, key)| expand(name, key));
    let (a, b) = (&selections[0], &selections[1]);

    // What the two servers never compute alone: where their selections differ.
    let differing: Vec<u64> = differences(a, b).collect();
    ensure!(differing == [secret], "the two selections do not differ in exactly the secret page");
    println!("\nthe selections differ in exactly one page, the client's secret page: checked");
    println!("each server reads only the pages it selected; XORing both answers leaves that page alone.");
    Ok(())
}

fn expand(name: &str, key: &Key) -> Vec<u128> {
    let started = Instant::now();
    let bits = key.expand_full();
    let selected: u64 = bits.iter().map(|block| u64::from(block.count_ones())).sum();
    println!(
        "server {name}: expanded its key over all {} pages in {:.1?}; it selects {selected} ({:.2}%)",
        key.domain(),
        started.elapsed(),
        100.0 * selected as f64 / key.domain() as f64,
    );
    bits
}

/// Indices of the points where two expansions differ.
fn differences<'a>(a: &'a [u128], b: &'a [u128]) -> impl Iterator<Item = u64> + 'a {
    a.iter().zip(b).enumerate().flat_map(|(block, (x, y))| {
        let mut diff = x ^ y;
        std::iter::from_fn(move || {
            (diff != 0).then(|| {
                let bit = diff.trailing_zeros();
                diff &= diff - 1;
                block as u64 * 128 + u64::from(bit)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_lists_every_differing_point() {
        let a = [0b1011u128, 0, 1 << 127];
        let b = [0b0001u128, 0, 0];
        assert_eq!(differences(&a, &b).collect::<Vec<_>>(), [1, 3, 2 * 128 + 127]);
    }

    #[test]
    fn demo_runs_on_small_and_odd_tables() {
        for pages in [1, 129, 100_003] {
            run(&DemoArgs { pages }).unwrap();
        }
    }
}
