//! The wire format: round trips, a frozen encoding, and decoders that turn
//! any bytes into either a value or an error, never a panic.

use morphogen_dpf::{Key, generate};
use morphogen_protocol::{Epoch, Error, HEADER_LEN, PROTOCOL_VERSION, Request, Response};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A valid key over 128 pages (depth 0: 43 bytes), from fixed bytes.
fn fixed_key(party: u8, fill: u8) -> Key {
    let mut bytes = vec![1, party, 0];
    bytes.extend_from_slice(&128u64.to_le_bytes());
    bytes.extend_from_slice(&[fill; 32]);
    Key::from_bytes(&bytes).unwrap()
}

fn batch(queries: usize, choices: usize, domain: u64, seed: u64) -> Vec<Vec<Key>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..queries)
        .map(|q| (0..choices).map(|_| generate(domain, q as u64 % domain, &mut rng).unwrap().0).collect())
        .collect()
}

#[test]
fn request_encoding_is_frozen() {
    let request =
        Request { epoch: Epoch::Exact(0x0102), queries: vec![vec![fixed_key(0, 0xaa), fixed_key(0, 0xbb)]] };
    let key = |fill: &str| format!("010000{}{}", "8000000000000000", fill.repeat(32));
    let expected = format!("01020100{}{}{}{}", "0201000000000000", "2b000000", key("aa"), key("bb"));
    assert_eq!(hex::encode(request.encode().unwrap()), expected);
    let latest = Request { epoch: Epoch::Latest, ..request }.encode().unwrap();
    assert_eq!(&latest[4..12], &[0xff; 8]);
}

#[test]
fn response_encoding_is_frozen() {
    let pages: Vec<u8> = (0..2 * 512).map(|i| i as u8).collect();
    let encoded = Response::encode(7, 2, 512, &pages).unwrap();
    assert_eq!(hex::encode(&encoded[..HEADER_LEN]), "010201000700000000000000".to_string() + "00020000");
    assert_eq!(&encoded[HEADER_LEN..], &pages[..]);
}

#[test]
fn rejects_a_wrong_version() {
    let mut body = Request { epoch: Epoch::Latest, queries: batch(1, 2, 100, 1) }.encode().unwrap();
    body[0] = PROTOCOL_VERSION + 1;
    assert_eq!(Request::decode(&body, 64).unwrap_err(), Error::Version(PROTOCOL_VERSION + 1));
    assert_eq!(Response::decode(&body).unwrap_err(), Error::Version(PROTOCOL_VERSION + 1));
}

#[test]
fn rejects_more_queries_than_the_limit_before_reading_keys() {
    let body = Request { epoch: Epoch::Latest, queries: batch(5, 2, 100, 2) }.encode().unwrap();
    assert_eq!(Request::decode(&body, 4).unwrap_err(), Error::TooManyQueries { count: 5, max: 4 });
    // A header claiming 65535 queries of huge keys, with no keys behind it.
    let mut huge = body[..HEADER_LEN].to_vec();
    huge[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Request::decode(&huge, usize::MAX).unwrap_err(), Error::BodyLength { .. }));
}

#[test]
fn rejects_an_empty_batch() {
    let mut body = Request { epoch: Epoch::Latest, queries: batch(1, 2, 100, 3) }.encode().unwrap();
    body[2..4].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(Request::decode(&body, 64).unwrap_err(), Error::TooManyQueries { count: 0, max: 64 });
    assert_eq!(Request { epoch: Epoch::Latest, queries: vec![] }.encode().unwrap_err(), Error::QueryCount(0));
}

#[test]
fn rejects_queries_without_keys() {
    let mut body = Request { epoch: Epoch::Latest, queries: batch(1, 2, 100, 3) }.encode().unwrap();
    body[1] = 0;
    assert_eq!(Request::decode(&body, 64).unwrap_err(), Error::Choices(0));
}

/// Found by the wire fuzz target (fuzz/): an answer of zero pages per
/// answer or empty pages decoded, though no encoder could write it.
#[test]
fn rejects_answers_without_pages_or_with_empty_pages() {
    let header = |choices: u8, page_size: u32| {
        let mut body = vec![PROTOCOL_VERSION, choices, 0, 0];
        body.extend_from_slice(&0x0f00_0000_0000_0000u64.to_le_bytes());
        body.extend_from_slice(&page_size.to_le_bytes());
        body
    };
    assert_eq!(Response::decode(&header(0, 0)).unwrap_err(), Error::Choices(0));
    assert_eq!(Response::decode(&header(0, 512)).unwrap_err(), Error::Choices(0));
    assert_eq!(Response::decode(&header(2, 0)).unwrap_err(), Error::PageSize(0));
    assert_eq!(Response::encode(1, 0, 512, &[]).unwrap_err(), Error::Choices(0));
    assert_eq!(Response::encode(1, 2, 0, &[]).unwrap_err(), Error::PageSize(0));
    // No queries answered is a valid (empty) answer both ways.
    let empty = Response::decode(&header(2, 512)).unwrap();
    assert_eq!(Response::encode(empty.epoch, 2, 512, &[]).unwrap(), header(2, 512));
}

#[test]
fn rejects_truncated_and_padded_bodies() {
    let body = Request { epoch: Epoch::Latest, queries: batch(3, 2, 1000, 4) }.encode().unwrap();
    for len in [0, 1, HEADER_LEN - 1, HEADER_LEN, body.len() - 1] {
        assert!(matches!(Request::decode(&body[..len], 64).unwrap_err(), Error::BodyLength { .. }), "{len}");
    }
    let mut padded = body.clone();
    padded.push(0);
    assert!(matches!(Request::decode(&padded, 64).unwrap_err(), Error::BodyLength { .. }));
    let response = Response::encode(1, 2, 512, &[0; 2048]).unwrap();
    assert!(matches!(Response::decode(&response[..2000]).unwrap_err(), Error::BodyLength { .. }));
}

#[test]
fn rejects_keys_of_different_domains_in_one_request() {
    let mut queries = batch(2, 2, 1000, 5);
    queries[1][1] = batch(1, 1, 999, 6).remove(0).remove(0);
    assert_eq!(
        Request { epoch: Epoch::Latest, queries }.encode().unwrap_err(),
        Error::MixedDomains { query: 1, sub_table: 1 }
    );
}

#[test]
fn rejects_a_corrupt_key() {
    let mut body = Request { epoch: Epoch::Latest, queries: batch(2, 2, 1000, 7) }.encode().unwrap();
    let key_len = (body.len() - HEADER_LEN) / 4;
    body[HEADER_LEN + 3 * key_len + 1] = 9; // party byte of query 1, key 1
    assert!(matches!(
        Request::decode(&body, 64).unwrap_err(),
        Error::Key { query: 1, sub_table: 1, source: morphogen_dpf::Error::InvalidParty(9) }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(queries in 1usize..=20, choices in 1usize..=4, domain in 1u64..=1 << 20, epoch in any::<u64>(), seed in any::<u64>()) {
        let queries_in = batch(queries, choices, domain, seed);
        let body = Request { epoch: Epoch::Exact(epoch), queries: queries_in.clone() }.encode().unwrap();
        let decoded = Request::decode(&body, queries).unwrap();
        let expected_epoch = if epoch == u64::MAX { Epoch::Latest } else { Epoch::Exact(epoch) };
        prop_assert_eq!(decoded.epoch, expected_epoch);
        let bytes = |qs: &[Vec<Key>]| qs.iter().flatten().map(Key::to_bytes).collect::<Vec<_>>();
        prop_assert_eq!(bytes(&decoded.queries), bytes(&queries_in));
    }

    #[test]
    fn responses_round_trip(queries in 1usize..=8, choices in 1usize..=4, page_shift in 9u32..=12, epoch in any::<u64>(), fill in any::<u8>()) {
        let page_size = 1usize << page_shift;
        let pages: Vec<u8> = (0..queries * choices * page_size).map(|i| (i as u8) ^ fill).collect();
        let decoded = Response::decode(&Response::encode(epoch, choices, page_size, &pages).unwrap()).unwrap();
        prop_assert_eq!((decoded.epoch, decoded.queries, decoded.choices, decoded.page_size), (epoch, queries, choices, page_size));
        for q in 0..queries {
            prop_assert_eq!(decoded.answer(q), &pages[q * choices * page_size..(q + 1) * choices * page_size]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Request::decode(&body, 64);
        let _ = Response::decode(&body);
    }

    #[test]
    fn mutated_requests_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut body = Request { epoch: Epoch::Latest, queries: batch(2, 2, 5000, seed) }.encode().unwrap();
        for (index, value) in flips {
            let i = index.index(body.len());
            body[i] = value;
        }
        let _ = Request::decode(&body, 64);
        let _ = Request::decode(&body[..cut.index(body.len())], 64);
    }
}
