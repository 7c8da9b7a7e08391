//! The wire decoders against arbitrary bytes: a query batch and an answer
//! either fail to decode or decode to a value that encodes back to the same
//! bytes. A panic, an overflow (checks are on) or a timeout is a finding.
//!
//! Random bytes rarely hold a valid DPF key, so each input is also used a
//! second way: its first bytes shape a valid request (queries, keys per
//! query, domain, epoch, key randomness) and the rest damage it, which
//! reaches the key decoder's deeper checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use morphogen_dpf::generate;
use morphogen_protocol::{Epoch, Request, Response};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The largest batch a server accepts by default, and then some.
const MAX_QUERIES: usize = 64;

fuzz_target!(|input: &[u8]| {
    check_decoders(input);
    if let Some((shape, damage)) = input.split_first_chunk::<8>() {
        let mut body = valid_request(shape);
        // Each (position, xor) pair of the rest flips bits of the body.
        for pair in damage.chunks_exact(3) {
            let position = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % body.len();
            body[position] ^= pair[2];
        }
        if damage.len() % 3 == 1 {
            body.truncate(body.len() - usize::from(damage[damage.len() - 1]).min(body.len()));
        }
        check_decoders(&body);
    }
});

fn check_decoders(body: &[u8]) {
    if let Ok(request) = Request::decode(body, MAX_QUERIES) {
        let encoded = request.encode().expect("a decoded request encodes");
        assert_eq!(encoded, body, "a decoded request encodes to other bytes");
    }
    if let Ok(response) = Response::decode(body) {
        let encoded = Response::encode(response.epoch, response.choices, response.page_size, &response.pages)
            .expect("a decoded answer encodes");
        assert_eq!(encoded, body, "a decoded answer encodes to other bytes");
    }
}

/// A valid request of 1-4 queries of 1-4 keys over a domain of 1 to 2^20 pages.
fn valid_request(shape: &[u8; 8]) -> Vec<u8> {
    let queries = 1 + usize::from(shape[0] % 4);
    let choices = 1 + usize::from(shape[1] % 4);
    let domain = 1 + u64::from(u32::from_le_bytes([shape[2], shape[3], shape[4], 0]) % (1 << 20));
    let epoch = if shape[5] % 2 == 0 { Epoch::Latest } else { Epoch::Exact(u64::from(shape[6])) };
    let mut rng = StdRng::seed_from_u64(u64::from_le_bytes(*shape));
    let queries = (0..queries)
        .map(|_| {
            (0..choices).map(|_| generate(domain, domain - 1, &mut rng).expect("a valid domain").0).collect()
        })
        .collect();
    Request { epoch, queries }.encode().expect("a valid request encodes")
}
