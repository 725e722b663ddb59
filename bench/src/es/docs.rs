//! The benchmark's documents: about 1 KiB each, generated from a fixed
//! seed, pre-built into `_bulk` bodies.

use bytes::Bytes;

use super::BULK_DOCS;
use crate::data::WyRand;

/// A pseudo-word from syllables.
fn word(rng: &mut WyRand, out: &mut String) {
    const SYL: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "qu", "ex", "on", "ar", "el", "ti", "po",
        "um",
    ];
    for _ in 0..(2 + rng.below(3)) {
        out.push_str(SYL[rng.below(16) as usize]);
    }
}

/// One ~1 KiB document, shaped like an application event: ids,
/// keywords, a long beyond 2^53, a date, a title and a message (analysed
/// text), and an opaque payload (floats, nested objects) stored but not
/// indexed: osmem indexes floating-point fields slowly (~3k docs/s for a
/// single double), which would only stretch the import runs.
fn document(rng: &mut WyRand, i: u64) -> String {
    let mut title = String::new();
    for w in 0..6 {
        if w > 0 {
            title.push(' ');
        }
        word(rng, &mut title);
    }
    let mut message = String::new();
    while message.len() < 180 {
        if !message.is_empty() {
            message.push(' ');
        }
        word(rng, &mut message);
    }
    let mut items = String::new();
    for k in 0..4 {
        if k > 0 {
            items.push(',');
        }
        let mut sku = String::new();
        word(rng, &mut sku);
        items.push_str(&format!(
            r#"{{"sku":"{sku}-{}","qty":{},"price":{}.{:02},"note":"{}"}}"#,
            rng.below(100_000),
            1 + rng.below(9),
            rng.below(500),
            rng.below(100),
            "x".repeat(20 + rng.below(20) as usize)
        ));
    }
    format!(
        r#"{{"id":{i},"user":"user-{}","tags":["t{}","t{}"],"big":{},"ts":"2024-{:02}-{:02}T{:02}:{:02}:00Z","active":{},"title":"{title}","message":"{message}","payload":{{"agent":"capsule-bench/1.0 (linux; x86_64)","session":"{:016x}","score":{}.{:06},"geo":{{"lat":{}.{:04},"lon":{}.{:04}}},"items":[{items}]}}}}"#,
        rng.below(50_000),
        rng.below(40),
        rng.below(40),
        9_007_199_254_740_993u64 + rng.below(1 << 40),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(2) == 1,
        rng.next_u64(),
        rng.below(1000),
        rng.below(1_000_000),
        rng.below(90),
        rng.below(10_000),
        rng.below(180),
        rng.below(10_000),
    )
}

/// The index mappings.
pub(super) const MAPPINGS: &str = r#"{"properties":{"id":{"type":"long"},"user":{"type":"keyword"},"tags":{"type":"keyword"},"big":{"type":"long"},"ts":{"type":"date"},"active":{"type":"boolean"},"title":{"type":"text"},"message":{"type":"text"},"payload":{"type":"object","enabled":false}}}"#;

/// `_bulk` bodies of [`BULK_DOCS`] documents each, for `POST /<index>/_bulk`.
pub(super) fn bodies(docs: usize) -> (Vec<Bytes>, u64) {
    let mut rng = WyRand::new(42);
    let mut out = Vec::new();
    let mut source_bytes = 0u64;
    let mut body = String::new();
    for i in 0..docs as u64 {
        let doc = document(&mut rng, i);
        source_bytes += doc.len() as u64;
        body.push_str(&format!("{{\"index\":{{\"_id\":\"{i}\"}}}}\n"));
        body.push_str(&doc);
        body.push('\n');
        if (i as usize + 1).is_multiple_of(BULK_DOCS) {
            out.push(Bytes::from(std::mem::take(&mut body)));
        }
    }
    if !body.is_empty() {
        out.push(Bytes::from(body));
    }
    (out, source_bytes)
}
