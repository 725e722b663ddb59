//! Shared helpers: servers, catalogs, engines, a dataset of every type.

use capsule_engines::{RedisEngine, RedisOptions};
use test_support::redis::{Redis, RedisClient, Reply};

pub use crate::common::{FileCatalog, PREFIX, backup};

/// An engine for `url` with default options.
pub fn engine(url: &str) -> RedisEngine {
    RedisEngine::new(RedisOptions::from_url(url).unwrap())
}

/// Runs `cmds` pipelined on `c`, asserting no error reply.
pub fn pipeline(c: &mut RedisClient, cmds: &[Vec<Vec<u8>>]) {
    for cmd in cmds {
        let args: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
        c.send(&args);
    }
    c.flush();
    for cmd in cmds {
        if let Reply::Error(e) = c.read() {
            panic!("{}: {e}", String::from_utf8_lossy(&cmd[0]));
        }
    }
}

/// Sets `n` string keys `k0`, `k1`… to `value` on `redis`, pipelined.
pub fn set_keys(redis: &Redis, n: usize, value: &[u8]) {
    let cmds: Vec<_> = (0..n)
        .map(|i| cmd(&[b"SET", format!("k{i}").as_bytes(), value]))
        .collect();
    pipeline(&mut redis.client(), &cmds);
}

/// Backs `redis` up into `fc` with default options; the backup's id.
pub async fn backup_id(fc: &FileCatalog, redis: &Redis) -> String {
    backup(&fc.catalog, &engine(&redis.url()))
        .await
        .unwrap()
        .statefile
        .backup_id
        .to_string()
}

/// `args` as owned byte vectors.
pub fn cmd(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

fn s(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Fills databases 0, 1, 5 and 15 with every data type in both its
/// compact and its full encoding, expiries, binary keys and values, a
/// stream with consumer groups, and a function library.
pub fn fill_every_type(redis: &Redis) {
    let mut c = redis.client();
    // Strings: int, embstr, raw, compressible, binary, empty.
    let mut cmds: Vec<Vec<Vec<u8>>> = vec![
        cmd(&[b"SET", b"str:int", b"12345"]),
        cmd(&[b"SET", b"str:neg", b"-70000"]),
        cmd(&[b"SET", b"str:short", b"hello"]),
        cmd(&[b"SET", b"str:raw", &[b'x'; 3000]]),
    ];
    cmds.push(cmd(&[b"SET", b"str:lzf", &b"abcd".repeat(500)]));
    cmds.push(cmd(&[
        b"SET",
        b"bin:\x00\r\n\xff key",
        b"\x00\x01\xfe\xff\r\n value",
    ]));
    cmds.push(cmd(&[b"SET", b"str:empty", b""]));
    cmds.push(cmd(&[b"SET", &b"long-compressible-key-".repeat(10), b"v"]));
    // Lists: listpack, quicklist of many nodes, a plain node (big element).
    cmds.push(cmd(&[b"RPUSH", b"list:small", b"a", b"1", b"", b"\xff"]));
    let mut big = cmd(&[b"RPUSH", b"list:big"]);
    big.extend((0..3000).map(|i| s(format!("element-{i}"))));
    cmds.push(big);
    cmds.push(cmd(&[
        b"RPUSH",
        b"list:plain",
        &vec![b'p'; 20_000],
        b"tail",
    ]));
    // Sets: intset, hashtable.
    cmds.push(cmd(&[
        b"SADD", b"set:int", b"1", b"2", b"3", b"-40", b"100000",
    ]));
    let mut big = cmd(&[b"SADD", b"set:big"]);
    big.extend((0..1000).map(|i| s(format!("member-{i}"))));
    cmds.push(big);
    cmds.push(cmd(&[b"SADD", b"set:small", b"a", b"b", b"c"]));
    // Sorted sets: listpack, skiplist, special scores.
    cmds.push(cmd(&[
        b"ZADD",
        b"zset:small",
        b"1",
        b"a",
        b"-2.5",
        b"b",
        b"inf",
        b"c",
        b"-inf",
        b"d",
    ]));
    let mut big = cmd(&[b"ZADD", b"zset:big"]);
    for i in 0..500 {
        big.push(s(format!("{}", i as f64 * 1.25 - 100.0)));
        big.push(s(format!("m{i}")));
    }
    cmds.push(big);
    // Hashes: listpack, hashtable (many fields), hashtable (a long value).
    cmds.push(cmd(&[b"HSET", b"hash:small", b"f1", b"v1", b"f2", b"2"]));
    let mut big = cmd(&[b"HSET", b"hash:big"]);
    for i in 0..1000 {
        big.push(s(format!("field-{i}")));
        big.push(s(format!("value-{i}")));
    }
    cmds.push(big);
    cmds.push(cmd(&[b"HSET", b"hash:longvalue", b"f", &vec![b'h'; 500]]));
    // Expiries: far in the future, so they survive the test.
    for key in [
        &b"str:short"[..],
        b"list:small",
        b"set:int",
        b"zset:small",
        b"hash:small",
    ] {
        cmds.push(cmd(&[b"EXPIRE", key, b"86400"]));
    }
    cmds.push(cmd(&[b"PEXPIREAT", b"str:raw", b"4102444800000"]));
    pipeline(&mut c, &cmds);

    // A stream with consumer groups, pending entries, acks and deletions.
    let mut cmds: Vec<Vec<Vec<u8>>> = (0..300)
        .map(|i| {
            cmd(&[
                b"XADD",
                b"stream",
                b"*",
                b"n",
                &s(i),
                b"payload",
                &s(format!("p{i}")),
            ])
        })
        .collect();
    cmds.push(cmd(&[b"XGROUP", b"CREATE", b"stream", b"g1", b"0"]));
    cmds.push(cmd(&[b"XGROUP", b"CREATE", b"stream", b"g2", b"$"]));
    cmds.push(cmd(&[
        b"XREADGROUP",
        b"GROUP",
        b"g1",
        b"alice",
        b"COUNT",
        b"20",
        b"STREAMS",
        b"stream",
        b">",
    ]));
    cmds.push(cmd(&[
        b"XREADGROUP",
        b"GROUP",
        b"g1",
        b"bob",
        b"COUNT",
        b"5",
        b"STREAMS",
        b"stream",
        b">",
    ]));
    cmds.push(cmd(&[
        b"XGROUP",
        b"CREATECONSUMER",
        b"stream",
        b"g2",
        b"carol",
    ]));
    cmds.push(cmd(&[b"XADD", b"stream:empty", b"*", b"x", b"1"]));
    pipeline(&mut c, &cmds);
    let Reply::Array(Some(first)) = c.cmd(&[b"XRANGE", b"stream", b"-", b"+", b"COUNT", b"3"])
    else {
        panic!("XRANGE");
    };
    let ids: Vec<Vec<u8>> = first
        .into_iter()
        .map(|e| match e {
            Reply::Array(Some(mut parts)) => parts.remove(0).bytes().unwrap().to_vec(),
            _ => panic!("entry"),
        })
        .collect();
    pipeline(
        &mut c,
        &[
            cmd(&[b"XACK", b"stream", b"g1", &ids[0]]),
            cmd(&[b"XDEL", b"stream", &ids[1]]),
            cmd(&[b"XTRIM", b"stream:empty", b"MAXLEN", b"0"]),
        ],
    );

    // Other databases.
    pipeline(
        &mut c,
        &[
            cmd(&[b"SELECT", b"1"]),
            cmd(&[b"SET", b"db1:key", b"one"]),
            cmd(&[b"HSET", b"db1:hash", b"a", b"b"]),
            cmd(&[b"SELECT", b"5"]),
            cmd(&[b"RPUSH", b"db5:list", b"x", b"y"]),
            cmd(&[b"SET", b"db5:ttl", b"v", b"EX", b"90000"]),
            cmd(&[b"SELECT", b"15"]),
            cmd(&[b"SET", b"\x00", b"\x00"]),
            cmd(&[b"SELECT", b"0"]),
        ],
    );
    let lib = b"#!lua name=capsulelib\nredis.register_function('capsule_answer', function(keys, args) return 42 end)";
    assert_eq!(c.cmd(&[b"FUNCTION", b"LOAD", lib]).text(), "capsulelib");
}

/// `DEBUG DIGEST-VALUE` of `keys` in db 0.
pub fn digest_values(redis: &Redis, keys: &[&[u8]]) -> Vec<String> {
    let mut args: Vec<&[u8]> = vec![b"DEBUG", b"DIGEST-VALUE"];
    args.extend_from_slice(keys);
    match redis.cmd(&args) {
        Reply::Array(Some(v)) => v.iter().map(Reply::text).collect(),
        other => panic!("DIGEST-VALUE: {other:?}"),
    }
}

/// Empties `redis`: every key and function; resets its command counts.
pub fn wipe(redis: &Redis) {
    redis.cmd(&[b"FLUSHALL"]);
    redis.cmd(&[b"FUNCTION", b"FLUSH"]);
    redis.cmd(&[b"CONFIG", b"RESETSTAT"]);
    assert_eq!(redis.keyspace(), vec![]);
}

/// A backup of every type (plus 20k small keys, so the RDB spans many
/// reads) in a file catalog.
pub async fn every_type_backup() -> (Redis, FileCatalog, String) {
    let source = Redis::start();
    fill_every_type(&source);
    let mut c = source.client();
    // Incompressible values: an RDB of about 2 MB.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..20_000u32 {
        let value: Vec<u8> = (0..8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        c.send(&[b"SET", format!("bulk:{i}").as_bytes(), &value]);
    }
    c.flush();
    for _ in 0..20_000 {
        c.read();
    }
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &source).await;
    (source, fc, id)
}
