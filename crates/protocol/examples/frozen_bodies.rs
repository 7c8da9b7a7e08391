//! Writes the frozen bodies of `tests/frozen.rs`, in hex: a query batch of
//! two queries (two DPF keys each, over 1,000 pages, from a fixed seed) as
//! of epoch 3, in `tests/data/query.hex`, and an answer to it (two pages of
//! 512 bytes a query) in `tests/data/answer.hex`.
//!
//! Run only when the wire format or the DPF key format changes on purpose:
//! `cargo run -p morphogen-protocol --example frozen_bodies`

use std::path::Path;

use morphogen_dpf::generate;
use morphogen_protocol::{Epoch, Request, Response};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut rng = StdRng::seed_from_u64(2026);
    let mut query = |alpha: u64| -> Result<_, morphogen_dpf::Error> {
        Ok(vec![generate(1000, alpha, &mut rng)?.0, generate(1000, 999 - alpha, &mut rng)?.1])
    };
    let request = Request { epoch: Epoch::Exact(3), queries: vec![query(17)?, query(600)?] };
    std::fs::write(data.join("query.hex"), hex::encode(request.encode()?) + "\n")?;
    let pages: Vec<u8> = (0..2 * 2 * 512u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(data.join("answer.hex"), hex::encode(Response::encode(3, 2, 512, &pages)?) + "\n")?;
    Ok(())
}
