//! The builder: every record findable where a client looks, nothing else
//! found, the same bytes whatever the input order, and clear errors.

use morphogen_layout::Error as LayoutError;
use morphogen_table::{BuildOptions, Error, KeyDigest, NoProgress, Table, build, build_digested};
use proptest::prelude::*;

type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// `n` records with distinct keys of 1..=64 bytes and values of 0..=max_value bytes.
fn records(n: u32, max_value: usize) -> Records {
    (0..n)
        .map(|i| {
            let h = blake3::hash(&i.to_le_bytes());
            let bytes = h.as_bytes();
            let key_len = 1 + (bytes[0] as usize % 64);
            let mut key = i.to_le_bytes().to_vec();
            key.resize(key_len.max(4), bytes[1]);
            let value = bytes.repeat(1 + max_value / 32)[..(bytes[2] as usize % (max_value + 1))].to_vec();
            (key, value)
        })
        .collect()
}

fn options(page_size: u32, choices: u8) -> BuildOptions {
    BuildOptions { page_size, choices, ..BuildOptions::default() }
}

/// Every record is in exactly one of its candidate pages with its value
/// zero-padded, and keys that were never inserted are found nowhere.
fn assert_lookups_right(table: &Table, records: &Records) {
    let layout = table.layout();
    let padded = |value: &[u8]| {
        let mut v = value.to_vec();
        v.resize(layout.value_size() as usize, 0);
        v
    };
    for (key, value) in records {
        let digest = KeyDigest::of(key);
        let found: Vec<&[u8]> = layout
            .locate(&digest)
            .as_slice()
            .iter()
            .enumerate()
            .filter_map(|(sub_table, &page)| layout.find(table.page(sub_table as u8, page), &digest).unwrap())
            .collect();
        assert_eq!(found, [padded(value).as_slice()]);
    }
    for absent in 0u32..200 {
        assert_eq!(table.get(format!("absent-{absent}").as_bytes()), None);
    }
}

#[test]
fn every_record_is_found_in_exactly_one_candidate_page() {
    for (n, page_size, choices, max_value) in
        [(1, 4096, 2, 32), (5000, 4096, 2, 32), (3000, 512, 3, 100), (2000, 1024, 4, 7), (400, 512, 2, 250)]
    {
        let records = records(n, max_value);
        let table = build(records.as_slice(), &options(page_size, choices), &NoProgress).unwrap();
        assert_eq!(table.records(), u64::from(n));
        assert_lookups_right(&table, &records);
    }
}

#[test]
fn one_row_per_page_still_builds() {
    // 256-byte values in 512-byte pages: one row a page, where two-choice
    // cuckoo hashing tops out near 50% load.
    let records: Records = (0u32..300).map(|i| (i.to_le_bytes().to_vec(), vec![i as u8; 256])).collect();
    let table = build(records.as_slice(), &options(512, 2), &NoProgress).unwrap();
    assert_eq!(table.layout().rows_per_page(), 1);
    assert_lookups_right(&table, &records);
}

#[test]
fn large_tables_reach_95_percent_load() {
    let records: Records = (0u32..200_000).map(|i| (i.to_le_bytes().to_vec(), vec![7; 32])).collect();
    let table = build(records.as_slice(), &options(4096, 2), &NoProgress).unwrap();
    assert!(table.load_factor() >= 0.95, "load factor {}", table.load_factor());
}

#[test]
fn the_value_size_defaults_to_the_longest_value() {
    let records: Records = vec![(b"a".to_vec(), vec![1; 3]), (b"b".to_vec(), vec![2; 17])];
    let table = build(records.as_slice(), &BuildOptions::default(), &NoProgress).unwrap();
    assert_eq!(table.layout().value_size(), 17);
    assert_eq!(table.get(b"a").unwrap(), [&[1u8; 3][..], &[0; 14]].concat());
}

#[test]
fn an_empty_input_with_a_value_size_gives_an_empty_table() {
    let table = build(
        Records::new().as_slice(),
        &BuildOptions { value_size: Some(32), ..BuildOptions::default() },
        &NoProgress,
    )
    .unwrap();
    assert_eq!((table.records(), table.layout().pages_per_table()), (0, 1));
    assert!(table.pages().iter().all(|&b| b == 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn build_is_independent_of_input_order(n in 1u32..3000, seed: u64) {
        let records = records(n, 40);
        let mut shuffled = records.clone();
        // A deterministic shuffle driven by the case's seed.
        shuffled.sort_by_key(|(key, _)| blake3::hash(&[key.as_slice(), &seed.to_le_bytes()].concat()).as_bytes()[..8].to_vec());
        let (a, b) = (build(records.as_slice(), &options(1024, 2), &NoProgress).unwrap(), build(shuffled.as_slice(), &options(1024, 2), &NoProgress).unwrap());
        prop_assert_eq!(a.layout().seed(), b.layout().seed());
        prop_assert!(a.pages() == b.pages(), "pages differ");
    }
}

#[test]
fn an_explicit_seed_is_used_and_changes_the_table() {
    let records = records(1000, 32);
    let with = |seed| {
        build(records.as_slice(), &BuildOptions { seed: Some(seed), ..BuildOptions::default() }, &NoProgress)
    };
    let (a, b) = (with([1; 16]).unwrap(), with([2; 16]).unwrap());
    assert_eq!(a.layout().seed(), [1; 16]);
    assert!(a.pages() != b.pages());
    assert_lookups_right(&b, &records);
}

#[test]
fn rejects_an_empty_key() {
    let records: Records = vec![(b"a".to_vec(), vec![1]), (vec![], vec![1])];
    assert_eq!(
        build(records.as_slice(), &BuildOptions::default(), &NoProgress).unwrap_err(),
        Error::KeyLength { line: 2, len: 0 }
    );
}

#[test]
fn rejects_a_key_longer_than_64_bytes() {
    let records: Records = vec![(vec![1; 65], vec![1])];
    let err = build(records.as_slice(), &BuildOptions::default(), &NoProgress).unwrap_err();
    assert_eq!(err, Error::KeyLength { line: 1, len: 65 });
    assert_eq!(err.to_string(), "line 1: key is 65 bytes, keys must be 1 to 64 bytes");
}

#[test]
fn rejects_a_value_longer_than_the_value_size() {
    let records: Records = vec![(b"a".to_vec(), vec![1; 4]), (b"b".to_vec(), vec![1; 9])];
    let options = BuildOptions { value_size: Some(8), ..BuildOptions::default() };
    assert_eq!(
        build(records.as_slice(), &options, &NoProgress).unwrap_err(),
        Error::ValueTooLong { line: 2, len: 9, value_size: 8 }
    );
}

#[test]
fn rejects_duplicate_keys_naming_both_lines() {
    let records: Records = vec![
        (b"a".to_vec(), vec![1]),
        (b"b".to_vec(), vec![2]),
        (b"c".to_vec(), vec![3]),
        (b"b".to_vec(), vec![4]),
    ];
    let err = build(records.as_slice(), &BuildOptions::default(), &NoProgress).unwrap_err();
    assert_eq!(err, Error::DuplicateKey { first_line: 2, second_line: 4 });
}

#[test]
fn rejects_inferring_the_value_size_from_empty_values() {
    let records: Records = vec![(b"a".to_vec(), vec![])];
    assert_eq!(
        build(records.as_slice(), &BuildOptions::default(), &NoProgress).unwrap_err(),
        Error::UnknownValueSize
    );
}

#[test]
fn rejects_bad_parameters_before_reading_the_input() {
    let records = records(10, 8);
    let bad = |o: BuildOptions| build(records.as_slice(), &o, &NoProgress).unwrap_err();
    assert_eq!(bad(options(1000, 2)), Error::Layout(LayoutError::PageSize(1000)));
    assert_eq!(bad(options(4096, 5)), Error::Layout(LayoutError::Choices(5)));
    assert_eq!(
        bad(BuildOptions { value_size: Some(0), ..BuildOptions::default() }),
        Error::Layout(LayoutError::ValueSize { value_size: 0, page_size: 4096 })
    );
}

#[test]
fn rejects_page_writes_past_the_table_or_of_the_wrong_length_before_writing_any() {
    let mut table = build(&records(50, 8)[..], &options(512, 2), &NoProgress).unwrap();
    let before = table.pages().to_vec();
    let pages = table.layout().total_pages();
    let good = morphogen_table::PageWrite { index: 0, bytes: vec![0xaa; 512] };
    let past = morphogen_table::PageWrite { index: pages, bytes: vec![0xbb; 512] };
    let short = morphogen_table::PageWrite { index: 1, bytes: vec![0xcc; 100] };
    let error = table.apply(&[good.clone(), past]).unwrap_err();
    assert!(matches!(error, Error::PageIndex { index, .. } if index == pages), "{error}");
    assert!(matches!(
        table.apply(&[good, short]).unwrap_err(),
        Error::Layout(LayoutError::PageLength { actual: 100, .. })
    ));
    assert_eq!(table.pages(), &before[..], "nothing was written");
}

#[test]
fn headroom_leaves_room_for_that_many_more_records() {
    let input = records(3_000, 24);
    let rows = |table: &Table| table.layout().total_pages() * u64::from(table.layout().rows_per_page());
    let tight = build(&input[..], &options(512, 2), &NoProgress).unwrap();
    let roomy = BuildOptions { headroom_percent: 100, ..options(512, 2) };
    let roomy = build(&input[..], &roomy, &NoProgress).unwrap();
    assert!(rows(&tight) < 3_000 * 11 / 10, "without headroom the table is tight: {} rows", rows(&tight));
    assert!(rows(&roomy) >= 2 * 3_000, "100% headroom: room for as many again: {} rows", rows(&roomy));
    // The records are all there either way.
    for (key, _) in &input {
        assert!(roomy.get(key).is_some());
    }
}

#[test]
fn a_table_rebuilt_from_its_digests_is_the_table_built_from_its_keys() {
    let input = records(2_000, 24);
    let from_keys = build(&input[..], &options(512, 2), &NoProgress).unwrap();
    // In another order: the builder sorts by digest.
    let digested: Vec<(KeyDigest, &[u8])> =
        input.iter().rev().map(|(key, value)| (KeyDigest::of(key), value.as_slice())).collect();
    let from_digests = build_digested(&digested[..], &options(512, 2), &NoProgress).unwrap();
    assert_eq!(from_digests.pages(), from_keys.pages());
    assert_eq!(from_digests.layout(), from_keys.layout());

    // Given a size to start from, it takes that size (there is room) and
    // every record is where a client looks.
    let pages = from_keys.layout().pages_per_table() * 2;
    let larger = BuildOptions { pages_per_table: Some(pages), ..options(512, 2) };
    let grown = build_digested(&digested[..], &larger, &NoProgress).unwrap();
    assert_eq!(grown.layout().pages_per_table(), pages);
    assert_lookups_right(&grown, &input);
}
