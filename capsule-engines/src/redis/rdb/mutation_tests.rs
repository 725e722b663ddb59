//! The parser fed damaged RDBs: a corpus that holds every opcode and every
//! value type the parser walks (aux fields, database switches and size
//! hints, expiries, LRU/LFU, functions, module aux data, slot info, plain,
//! integer and LZF strings, every list/set/zset/hash encoding, streams of
//! the three versions, module values), each file flipped, cut, spliced and
//! padded with huge lengths, read in odd-sized chunks. Every input must
//! give items or an error: never a panic, never an allocation a header
//! alone asked for.

use std::io::Read;

use proptest::prelude::*;
use test_support::mutation::mutate;

use super::writer::{put_len, put_string};
use super::*;

/// Reads at most `chunk` bytes per call, so the parser's buffer refills
/// land in the middle of every field.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Every item until the end or the first error; the parser must stop
/// within a bounded number of items (each consumes at least one byte).
fn parse(input: &[u8], chunk: usize, options: ParseOptions) -> Result<Vec<RdbItem>, RdbError> {
    let reader = Trickle { data: input, chunk };
    let mut p = RdbParser::new(reader, options)?;
    let mut items = Vec::new();
    while let Some(item) = p.next_item()? {
        items.push(item);
        assert!(items.len() <= input.len(), "more items than bytes");
    }
    Ok(items)
}

fn stream_id(ms: u64, seq: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&ms.to_be_bytes());
    id[8..].copy_from_slice(&seq.to_be_bytes());
    id
}

/// A stream value of `value_type` (15, 19 or 21): one node, one group
/// with one pending entry and one consumer.
fn stream(value_type: u8) -> Vec<u8> {
    let mut o = vec![value_type];
    put_len(&mut o, 1); // nodes
    put_string(&mut o, &stream_id(1_700_000_000_000, 0));
    put_string(&mut o, b"\x1b\0\0\0\x02\0\x81a\x02\x81b\x02\xff"); // a listpack
    for n in [1, 1_700_000_000_000, 0] {
        put_len(&mut o, n); // length, last id
    }
    if value_type >= vtype::STREAM_LISTPACKS_2 {
        for n in [1_700_000_000_000, 0, 0, 0, 1] {
            put_len(&mut o, n); // first id, max deleted id, entries added
        }
    }
    put_len(&mut o, 1); // groups
    put_string(&mut o, b"workers");
    put_len(&mut o, 1_700_000_000_000);
    put_len(&mut o, 0);
    if value_type >= vtype::STREAM_LISTPACKS_2 {
        put_len(&mut o, 1); // entries read
    }
    put_len(&mut o, 1); // pending
    o.extend_from_slice(&stream_id(1_700_000_000_000, 0));
    o.extend_from_slice(&1_700_000_000_500u64.to_le_bytes());
    put_len(&mut o, 1); // delivery count
    put_len(&mut o, 1); // consumers
    put_string(&mut o, b"alice");
    o.extend_from_slice(&1_700_000_000_600u64.to_le_bytes());
    if value_type >= vtype::STREAM_LISTPACKS_3 {
        o.extend_from_slice(&1_700_000_000_700u64.to_le_bytes());
    }
    put_len(&mut o, 1); // pending of the consumer
    o.extend_from_slice(&stream_id(1_700_000_000_000, 0));
    o
}

/// A module value body (after the module id): every field opcode, then EOF.
fn module_fields(o: &mut Vec<u8>) {
    put_len(o, 1); // signed int
    put_len(o, 42);
    put_len(o, 2); // unsigned int
    put_len(o, 1 << 40);
    put_len(o, 3); // float
    o.extend_from_slice(&1.5f32.to_le_bytes());
    put_len(o, 4); // double
    o.extend_from_slice(&2.5f64.to_le_bytes());
    put_len(o, 5); // string
    put_string(o, b"module payload");
    put_len(o, 0); // EOF
}

/// Values of every type the parser walks (type byte first).
fn values() -> Vec<Vec<u8>> {
    use vtype::*;
    let blob = |t: u8, bytes: &[u8]| {
        let mut o = vec![t];
        put_string(&mut o, bytes);
        o
    };
    let ziplist = b"\x19\0\0\0\x16\0\0\0\x02\0\0\x01a\x03\x01b\xff";
    let listpack = b"\x0f\0\0\0\x02\0\x81a\x02\x81b\x02\xff";
    let mut v = vec![
        blob(STRING, b"plain"),
        // int8, int16, int32 and LZF ("aaaaaaaaaa") strings.
        vec![STRING, 0xc0, 0xfb],
        vec![STRING, 0xc1, 0x2c, 0x01],
        vec![STRING, 0xc2, 0x70, 0x11, 0x01, 0x00],
        vec![STRING, 0xc3, 0x05, 0x0a, 0x00, 0x61, 0xe0, 0x00, 0x00],
        Value::List(vec![b"a".to_vec(), b"".to_vec()]).encode(),
        Value::Set(vec![b"m".to_vec()]).encode(),
        Value::SortedSet(vec![(b"m".to_vec(), 1.5)]).encode(),
        Value::Hash(vec![(b"f".to_vec(), b"v".to_vec())]).encode(),
        // The old zset: text scores, and nan/+inf/-inf markers.
        [&[ZSET, 3][..], b"\x01a\x031.5", b"\x01b\xfd", b"\x01c\xfe"].concat(),
        blob(HASH_ZIPMAP, b"\x02\x01f\x01\x00v\xff"),
        blob(LIST_ZIPLIST, ziplist),
        blob(SET_INTSET, b"\x02\0\0\0\x02\0\0\0\x01\0\x02\0"),
        blob(ZSET_ZIPLIST, ziplist),
        blob(HASH_ZIPLIST, ziplist),
        blob(HASH_LISTPACK, listpack),
        blob(ZSET_LISTPACK, listpack),
        blob(SET_LISTPACK, listpack),
        blob(HASH_LISTPACK_EX_PRE_GA, listpack),
        [&[LIST_QUICKLIST, 1][..], &blob(0, ziplist)[1..]].concat(),
        [
            &[LIST_QUICKLIST_2, 2, 2][..],
            &blob(0, listpack)[1..],
            b"\x01\x01x",
        ]
        .concat(),
        [&[HASH_METADATA_PRE_GA, 1, 0][..], b"\x01f\x01v"].concat(),
        [&[HASH_METADATA][..], &[0; 8], b"\x01\x00\x01f\x01v"].concat(),
        [&[HASH_LISTPACK_EX][..], &[0; 8], &blob(0, listpack)[1..]].concat(),
        stream(STREAM_LISTPACKS),
        stream(STREAM_LISTPACKS_2),
        stream(STREAM_LISTPACKS_3),
    ];
    let mut module = vec![MODULE_2];
    put_len(&mut module, 0x1234_5678_9abc); // module id
    module_fields(&mut module);
    v.push(module);
    v
}

/// Everything between entries: aux, database switches, size hints, slot
/// info, a function library, module aux data.
fn preamble() -> Vec<u8> {
    let mut o = Vec::new();
    o.push(opcode::AUX);
    put_string(&mut o, b"redis-ver");
    put_string(&mut o, b"7.4.1");
    o.extend_from_slice(&[opcode::AUX, 0xc0, 0x05, 0xc2, 0x70, 0x11, 0x01, 0x00]);
    o.extend_from_slice(&[opcode::SELECTDB, 3, opcode::RESIZEDB, 40, 2]);
    o.extend_from_slice(&[opcode::SLOT_INFO, 7, 2, 1]);
    o.push(opcode::FUNCTION2);
    put_string(
        &mut o,
        b"#!lua name=lib\nredis.register_function('f', function() return 1 end)",
    );
    o.push(opcode::MODULE_AUX);
    put_len(&mut o, 0x1234_5678_9abc);
    put_len(&mut o, 2); // the 'when' opcode
    put_len(&mut o, 1); // when
    module_fields(&mut o);
    o
}

/// A valid RDB (version 12, checksummed) holding `values` under keys of
/// every string encoding, with every per-key opcode somewhere.
fn rdb_of(values: &[Vec<u8>]) -> Vec<u8> {
    let mut o = b"REDIS0012".to_vec();
    o.extend_from_slice(&preamble());
    for (i, v) in values.iter().enumerate() {
        match i % 4 {
            0 => {
                o.push(opcode::EXPIRETIME_MS);
                o.extend_from_slice(&1_900_000_000_000i64.to_le_bytes());
            }
            1 => {
                o.push(opcode::EXPIRETIME);
                o.extend_from_slice(&1_900_000_000u32.to_le_bytes());
            }
            2 => o.extend_from_slice(&[opcode::IDLE, 0x40, 0x80]),
            _ => o.extend_from_slice(&[opcode::FREQ, 9]),
        }
        o.push(v[0]);
        match i % 3 {
            0 => put_string(&mut o, format!("key:{i}").as_bytes()),
            1 => o.extend_from_slice(&[0xc0, i as u8]),
            _ => o.extend_from_slice(&[0xc3, 0x04, 0x09, 0x00, b'k', 0xc0, 0x00]), // "kkkkkkkkk"
        }
        o.extend_from_slice(&v[1..]);
    }
    o.push(opcode::EOF);
    let crc = crc64(&o);
    o.extend_from_slice(&crc.to_le_bytes());
    o
}

/// The seeds: one file with everything, and one file per value.
fn corpus() -> Vec<Vec<u8>> {
    let values = values();
    let mut seeds = vec![rdb_of(&values)];
    seeds.extend(values.iter().map(|v| rdb_of(std::slice::from_ref(v))));
    seeds
}

fn small() -> ParseOptions {
    let mut o = ParseOptions::default()
        .with_capture_values(true)
        .with_max_value_bytes(4096);
    o.max_key_bytes = 4096;
    o.max_aux_bytes = 4096;
    o
}

#[test]
fn the_corpus_parses_whole_in_any_chunking() {
    let seeds = corpus();
    let all = &seeds[0];
    for chunk in [1, 3, 7, 64, 1 << 20] {
        let items = parse(
            all,
            chunk,
            ParseOptions::default().with_capture_values(true),
        )
        .unwrap();
        let entries: Vec<&RdbEntry> = items
            .iter()
            .filter_map(|i| match i {
                RdbItem::Entry(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), values().len(), "chunk {chunk}");
        for (e, v) in entries.iter().zip(values()) {
            assert_eq!(e.value.as_deref(), Some(&v[..]), "{}", type_name(v[0]));
            assert_eq!(e.db, 3);
        }
        assert_eq!(entries[2].key, b"kkkkkkkkk");
        assert_eq!(entries[1].expire_ms, Some(1_900_000_000_000));
        assert_eq!(
            (entries[2].lru_idle, entries[3].lfu_freq),
            (Some(128), Some(9))
        );
        assert!(items.contains(&RdbItem::Aux {
            key: b"5".to_vec(),
            value: b"70000".to_vec()
        }));
        assert!(items.contains(&RdbItem::ModuleAux {
            module_id: 0x1234_5678_9abc
        }));
        assert!(items.contains(&RdbItem::SlotInfo));
        assert!(matches!(
            items.last(),
            Some(RdbItem::End { verified: true, .. })
        ));
    }
    for seed in &seeds {
        parse(seed, 5, ParseOptions::default()).unwrap();
    }
}

#[test]
fn absurd_lengths_are_errors_naming_the_field() {
    // Every length a header declares past its limit is an error naming
    // the field, before anything is allocated for it.
    let huge = [0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        ([&b"REDIS0012\xfa"[..], &huge].concat(), "aux field"),
        ([&b"REDIS0012\xfa\x01a"[..], &huge].concat(), "aux value"),
        ([&b"REDIS0012\x00"[..], &huge].concat(), "key"),
        ([&b"REDIS0012\x00\xc3\x01"[..], &huge].concat(), "key"),
        (
            b"REDIS0012\x0f\x01k\x01\x80\xff\xff\xff\xff".to_vec(),
            "stream node id",
        ),
    ];
    for (input, what) in cases {
        let e = parse(&input, 64, small()).unwrap_err();
        assert!(
            matches!(&e, RdbError::TooLarge { what: w, .. } if *w == what),
            "{what}: {e}"
        );
    }
    // Counts are not limited but cost a byte each: they end in truncation.
    for t in [
        vtype::LIST,
        vtype::ZSET,
        vtype::HASH,
        vtype::STREAM_LISTPACKS_3,
    ] {
        let input = [&b"REDIS0012"[..], &[t, 1, b'k'], &huge].concat();
        let e = parse(&input, 64, small()).unwrap_err();
        assert!(matches!(e, RdbError::Truncated { .. }), "type {t}: {e}");
    }
    // A consumer claiming 2^64-1 pending entries of 16 bytes each.
    let mut s = stream(vtype::STREAM_LISTPACKS);
    let at = s.len() - 17;
    s.truncate(at);
    s.extend_from_slice(&huge);
    let input = [&b"REDIS0012"[..], &[s[0], 1, b'k'], &s[1..]].concat();
    assert!(matches!(
        parse(&input, 64, small()),
        Err(RdbError::Truncated { .. })
    ));
}

/// `PROPTEST_CASES=N` for a longer hunt.
fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig::with_cases(n.unwrap_or(default))
}

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn mutated_rdbs_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..6),
        chunk in prop_oneof![Just(1 << 20), 1usize..40],
    ) {
        let seeds = corpus();
        let input = mutate(seed.get::<Vec<u8>>(&seeds), &edits);
        let _ = parse(&input, chunk, small());
        let _ = parse(&input, chunk, ParseOptions::default());
    }

    #[test]
    fn mutated_values_never_panic(
        value in any::<prop::sample::Index>(),
        edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..4),
    ) {
        let values = values();
        let v = mutate(value.get::<Vec<u8>>(&values), &edits);
        let _ = Value::decode(&v);
        let _ = split_dump_payload(&dump_payload(v, 12));
    }
}
