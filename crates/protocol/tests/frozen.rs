//! The frozen query and answer bodies (`tests/data`, written by
//! `examples/frozen_bodies.rs`): a change to the wire format or to the DPF
//! key format breaks this test instead of silently changing what clients
//! and servers send each other.

use std::path::Path;

use morphogen_protocol::{Epoch, Request, Response};

fn frozen(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap()
}

#[test]
fn the_frozen_query_decodes_and_encodes_to_the_same_bytes() {
    let body = frozen("query.hex");
    let request = Request::decode(&body, 64).unwrap();
    assert_eq!((request.epoch, request.queries.len()), (Epoch::Exact(3), 2));
    for keys in &request.queries {
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|key| key.domain() == 1000), "every key covers 1,000 pages");
    }
    assert_eq!(request.encode().unwrap(), body);
}

#[test]
fn the_frozen_answer_decodes_and_encodes_to_the_same_bytes() {
    let body = frozen("answer.hex");
    let answer = Response::decode(&body).unwrap();
    assert_eq!((answer.epoch, answer.queries, answer.choices, answer.page_size), (3, 2, 2, 512));
    let pages: Vec<u8> = (0..2 * 2 * 512u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(answer.pages, pages);
    assert_eq!(Response::encode(3, 2, 512, &answer.pages).unwrap(), body);
}
