//! A deterministic sample of each index's documents, for byte-for-byte
//! comparison after a restore.
//!
//! The sample is the `k` documents whose `(id, routing)` hash lowest
//! (FNV-1a): it does not depend on the order documents are read in, so
//! the backup (while exporting), a restore (while loading the artifact)
//! and a live fingerprint (while scanning) all pick the same documents.
//! Its summary (`64 docs sha256:…`) goes into the fingerprint's values;
//! the digest covers each sampled document's id, routing and `_source`
//! bytes.

use std::collections::BinaryHeap;

use sha2::{Digest, Sha256};

/// One sampled document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SampleEntry {
    /// The selection key (lowest first).
    pub key: u64,
    /// The document id.
    pub id: String,
    /// Its routing.
    pub routing: Option<String>,
    /// SHA-256 of its `_source` bytes.
    pub digest: [u8; 32],
}

/// The `k` lowest-keyed documents seen so far.
#[derive(Clone, Debug)]
pub(crate) struct Sampler {
    k: usize,
    heap: BinaryHeap<SampleEntry>,
}

/// The selection key of a document: 64-bit FNV-1a of the id, a zero
/// byte and the routing. Fixed by definition (unlike std's hasher), so
/// every capsule version picks the same documents; cheap, since every
/// document is keyed.
pub(crate) fn key(id: &str, routing: Option<&str>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(id.as_bytes());
    if let Some(r) = routing {
        eat(&[0]);
        eat(r.as_bytes());
    }
    h
}

/// SHA-256 of `source`.
pub(crate) fn digest(source: &[u8]) -> [u8; 32] {
    Sha256::digest(source).into()
}

impl Sampler {
    /// A sampler keeping `k` documents (0: none).
    pub fn new(k: usize) -> Self {
        Sampler {
            k,
            heap: BinaryHeap::with_capacity(k),
        }
    }

    /// Whether it keeps anything.
    pub fn is_enabled(&self) -> bool {
        self.k > 0
    }

    /// Offers a document; its digest is computed only when it is kept.
    pub fn offer(&mut self, id: &str, routing: Option<&str>, source: &[u8]) {
        if self.k == 0 {
            return;
        }
        let key = key(id, routing);
        if self.heap.len() >= self.k && self.heap.peek().is_some_and(|top| top.key <= key) {
            return;
        }
        self.push(SampleEntry {
            key,
            id: id.to_string(),
            routing: routing.map(str::to_string),
            digest: digest(source),
        });
    }

    fn push(&mut self, e: SampleEntry) {
        self.heap.push(e);
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Adds what `other` kept.
    pub fn merge(&mut self, other: Sampler) {
        for e in other.heap {
            self.push(e);
        }
    }

    /// The kept documents, lowest key first.
    pub fn into_entries(self) -> Vec<SampleEntry> {
        self.heap.into_sorted_vec()
    }
}

/// The summary recorded in the fingerprint: `<n> docs sha256:<16 hex>`.
pub(crate) fn summary(entries: &[SampleEntry]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        h.update(e.id.as_bytes());
        h.update([0u8]);
        h.update(e.routing.as_deref().unwrap_or("").as_bytes());
        h.update([0u8]);
        h.update(e.digest);
    }
    let d = h.finalize();
    format!("{} docs sha256:{}", entries.len(), &hex::encode(d)[..16])
}

/// The fingerprint value name of index `name`'s sample.
pub(crate) fn value_name(index: &str) -> String {
    format!("{index}/sample")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_does_not_depend_on_order_or_partitioning() {
        let docs: Vec<(String, Vec<u8>)> = (0..500)
            .map(|i| (format!("id-{i}"), format!("{{\"n\":{i}}}").into_bytes()))
            .collect();
        let mut one = Sampler::new(16);
        for (id, src) in &docs {
            one.offer(id, None, src);
        }
        let mut a = Sampler::new(16);
        let mut b = Sampler::new(16);
        for (i, (id, src)) in docs.iter().rev().enumerate() {
            if i % 3 == 0 { &mut a } else { &mut b }.offer(id, None, src);
        }
        a.merge(b);
        let (x, y) = (one.into_entries(), a.into_entries());
        assert_eq!(x.len(), 16);
        assert_eq!(x, y);
        assert_eq!(summary(&x), summary(&y));
        assert!(x.windows(2).all(|w| w[0].key <= w[1].key));
    }

    #[test]
    fn keys_are_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(key("", None), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key("a", None), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(key("a", Some("r")), key("a", None));
    }

    #[test]
    fn a_changed_byte_changes_the_summary() {
        let mut a = Sampler::new(4);
        let mut b = Sampler::new(4);
        a.offer("1", Some("r"), b"{\"f\":1.10}");
        b.offer("1", Some("r"), b"{\"f\":1.1}");
        assert_ne!(summary(&a.into_entries()), summary(&b.into_entries()));
        let mut none = Sampler::new(0);
        none.offer("1", None, b"{}");
        assert_eq!(summary(&none.into_entries()).split(' ').next(), Some("0"));
    }
}
