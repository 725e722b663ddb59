//! Round trips through the writer and the parser, and the parser fed
//! arbitrary or damaged bytes (it must fail cleanly, never panic or
//! allocate what a header claims).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

type Db = BTreeMap<Vec<u8>, (Option<i64>, Value)>;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        // Text and numbers, which Redis would int-encode or compress.
        "[0-9a-z]{0,40}".prop_map(String::into_bytes),
        (0i64..100_000).prop_map(|n| n.to_string().into_bytes()),
    ]
}

fn unique(max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::btree_set(bytes(24), 0..max).prop_map(|s| s.into_iter().collect())
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        bytes(300).prop_map(Value::String),
        prop::collection::vec(bytes(30), 0..20).prop_map(Value::List),
        unique(20).prop_map(Value::Set),
        (unique(20), prop::collection::vec(-1e12f64..1e12, 20))
            .prop_map(|(m, s)| { Value::SortedSet(m.into_iter().zip(s).collect()) }),
        (unique(20), prop::collection::vec(bytes(30), 20))
            .prop_map(|(f, v)| Value::Hash(f.into_iter().zip(v).collect())),
    ]
}

fn dataset() -> impl Strategy<Value = BTreeMap<u64, Db>> {
    let entry = (
        bytes(40),
        prop::option::of(0i64..4_000_000_000_000),
        value(),
    );
    let db = prop::collection::vec(entry, 0..12)
        .prop_map(|v| v.into_iter().map(|(k, e, v)| (k, (e, v))).collect::<Db>());
    prop::collection::btree_map(0u64..20, db, 0..4)
}

fn write(data: &BTreeMap<u64, Db>, version: u32) -> Vec<u8> {
    let mut w = RdbWriter::new(version);
    w.aux(b"redis-ver", b"7.0.15");
    let mut out = w.take();
    for (db, keys) in data {
        w.select_db(*db);
        for (k, (expire, v)) in keys {
            w.entry(k, *expire, &v.encode());
        }
        out.extend(w.take());
    }
    w.finish();
    out.extend(w.take());
    out
}

fn parse_all(rdb: &[u8], options: ParseOptions) -> Result<Vec<RdbItem>, RdbError> {
    let mut p = RdbParser::new(rdb, options)?;
    let mut items = Vec::new();
    while let Some(item) = p.next_item()? {
        items.push(item);
    }
    Ok(items)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn values_round_trip_through_rdb_and_dump_payloads(data in dataset()) {
        let rdb = write(&data, 10);
        let items = parse_all(&rdb, ParseOptions::default().with_capture_values(true)).unwrap();
        let mut got: BTreeMap<u64, Db> = BTreeMap::new();
        let mut ended = false;
        for item in items {
            match item {
                RdbItem::Entry(e) => {
                    let raw = e.value.clone().unwrap();
                    prop_assert_eq!(raw.len() as u64, e.value_len);
                    let payload = dump_payload(raw.clone(), 10);
                    let (back, version) = split_dump_payload(&payload).unwrap();
                    prop_assert_eq!(back, &raw[..]);
                    prop_assert_eq!(version, 10);
                    let v = Value::decode(back).unwrap();
                    got.entry(e.db).or_default().insert(e.key, (e.expire_ms, v));
                }
                RdbItem::End { verified, .. } => { prop_assert!(verified); ended = true; }
                _ => {}
            }
        }
        prop_assert!(ended);
        let want: BTreeMap<u64, Db> = data.into_iter().filter(|(_, d)| !d.is_empty()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn skipping_finds_the_same_entries_as_capturing(data in dataset()) {
        let rdb = write(&data, 10);
        let keys = |items: Vec<RdbItem>| -> Vec<(u64, Vec<u8>, u64)> {
            items.into_iter().filter_map(|i| match i {
                RdbItem::Entry(e) => Some((e.db, e.key, e.value_len)),
                _ => None,
            }).collect()
        };
        let skipped = parse_all(&rdb, ParseOptions::default()).unwrap();
        let captured = parse_all(&rdb, ParseOptions::default().with_capture_values(true)).unwrap();
        prop_assert_eq!(keys(skipped), keys(captured));
    }

    #[test]
    fn arbitrary_bytes_never_panic(tail in prop::collection::vec(any::<u8>(), 0..2048)) {
        let small = ParseOptions::default().with_capture_values(true).with_max_value_bytes(4096);
        for prefix in [&b""[..], b"REDIS0010", b"REDIS0010\xfa"] {
            let mut input = prefix.to_vec();
            input.extend_from_slice(&tail);
            let _ = parse_all(&input, small);
            let _ = parse_all(&input, ParseOptions::default());
        }
        let _ = Value::decode(&tail);
        let _ = split_dump_payload(&tail);
        let mut string = vec![vtype::STRING];
        string.extend_from_slice(&tail);
        let _ = string_bytes(&string, 4096);
    }

    /// `string_bytes` (borrowing plain strings, decoding the rest) reads
    /// every string as the generic decoder does, at every length form.
    #[test]
    fn string_bytes_agrees_with_the_decoder(
        s in prop_oneof![bytes(300), prop::collection::vec(any::<u8>(), 16_000..17_000)],
    ) {
        let encoded = Value::String(s.clone()).encode();
        let got = string_bytes(&encoded, 1 << 20).unwrap();
        prop_assert_eq!(got.as_deref(), Some(&s[..]));
        prop_assert_eq!(Value::decode(&encoded).unwrap(), Value::String(s));
    }

    #[test]
    fn damage_is_always_detected(data in dataset(), at in any::<prop::sample::Index>(),
                                 flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
        let rdb = write(&data, 10);
        let i = at.index(rdb.len());
        let mut bad = rdb.clone();
        bad[i] ^= flip;
        prop_assert!(parse_all(&bad, ParseOptions::default()).is_err(), "flip at {}", i);
        let n = cut.index(rdb.len());
        prop_assert!(parse_all(&rdb[..n], ParseOptions::default()).is_err(), "cut at {}", n);
    }
}

#[test]
fn huge_lengths_in_headers_allocate_nothing() {
    // A key claiming 2^60 bytes, a list claiming 2^60 elements, an LZF key
    // claiming 2^40 bytes: each fails on its limit or on truncation.
    let cases: Vec<Vec<u8>> = vec![
        [&b"REDIS0010\x00\x81"[..], &(1u64 << 60).to_be_bytes()].concat(),
        [&b"REDIS0010\x01\x01k\x81"[..], &(1u64 << 60).to_be_bytes()].concat(),
        [
            &b"REDIS0010\x00\xc3\x05\x81"[..],
            &(1u64 << 40).to_be_bytes(),
        ]
        .concat(),
    ];
    for c in cases {
        let e = parse_all(&c, ParseOptions::default().with_capture_values(true)).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
    }
}

#[test]
fn special_string_encodings_decode() {
    let mut rdb = b"REDIS0010".to_vec();
    // int8 key -5, int16 key 300, int32 key 70000, LZF key "aaaaaaaaaa"
    let keys: [&[u8]; 4] = [
        b"\xc0\xfb",
        b"\xc1\x2c\x01",
        b"\xc2\x70\x11\x01\x00",
        b"\xc3\x05\x0a\x00\x61\xe0\x00\x00",
    ];
    for k in keys {
        rdb.push(0); // string
        rdb.extend_from_slice(k);
        rdb.extend_from_slice(b"\x01v");
    }
    rdb.push(0xff);
    let crc = crc64(&rdb);
    rdb.extend_from_slice(&crc.to_le_bytes());
    let got: Vec<Vec<u8>> = parse_all(&rdb, ParseOptions::default())
        .unwrap()
        .into_iter()
        .filter_map(|i| match i {
            RdbItem::Entry(e) => Some(e.key),
            _ => None,
        })
        .collect();
    let want: Vec<&[u8]> = vec![b"-5", b"300", b"70000", b"aaaaaaaaaa"];
    assert_eq!(got, want);
}

#[test]
fn lzf_strings_decode_beyond_their_encoded_size() {
    // Regression: `Value::decode` limited strings to the size of the
    // encoding, so an LZF string (10 bytes from 5) was refused as too large.
    let value = [0, 0xc3, 0x05, 0x0a, 0x00, 0x61, 0xe0, 0x00, 0x00];
    assert_eq!(
        Value::decode(&value).unwrap(),
        Value::String(b"aaaaaaaaaa".to_vec())
    );
}

#[test]
fn versions_and_checksums() {
    let e = parse_all(b"REDIS0013\xff", ParseOptions::default()).unwrap_err();
    assert!(matches!(e, RdbError::Unsupported { .. }), "{e}");
    assert!(parse_all(b"RODIS0010\xff", ParseOptions::default()).is_err());
    // Checksums disabled: a zero trailer is accepted, not verified.
    let items = parse_all(b"REDIS0010\xff\0\0\0\0\0\0\0\0", ParseOptions::default()).unwrap();
    assert_eq!(
        items,
        vec![RdbItem::End {
            checksum: 0,
            verified: false
        }]
    );
    // Before version 5 there is no trailer.
    assert!(parse_all(b"REDIS0004\xff", ParseOptions::default()).is_ok());
    assert!(parse_all(b"REDIS0010\xff\0\0\0\0\0\0\0\0x", ParseOptions::default()).is_err());
}

#[test]
fn server_versions_map_to_rdb_versions() {
    for (v, rdb) in [
        ("7.0.15", 10),
        ("7.2.4", 11),
        ("7.4.1", 12),
        ("8.0.2", 12),
        ("6.2.14", 9),
        ("5.0.7", 9),
        ("4.0.14", 8),
        ("3.2.12", 7),
        ("2.8.24", 6),
    ] {
        assert_eq!(rdb_version_for_server(v), Some(rdb), "{v}");
    }
    assert_eq!(rdb_version_for_server("banana"), None);
}

#[test]
fn a_footer_only_payload_is_an_empty_value() {
    // `FUNCTION DUMP` of a Redis 7.0 without libraries (from redis-cli).
    let empty = b"\n\0]\x9b\\@\x0f\x7f\xa2\xda";
    assert_eq!(split_dump_payload(empty).unwrap(), (&b""[..], 10));
    assert_eq!(dump_payload(Vec::new(), 10), empty);
    assert!(split_dump_payload(&empty[1..]).is_err());
    let mut flipped = empty.to_vec();
    flipped[0] ^= 1;
    assert!(split_dump_payload(&flipped).is_err());
}
