//! The Elasticsearch/OpenSearch engine end to end against osmem-server (a
//! server per test): round trips byte for byte, large indices, renames,
//! downloads loadable with plain `_bulk`, 429s, failures, replacing
//! existing indices safely, drills.

mod failures;
mod replace;
mod roundtrip;
mod support;
mod tls;
mod verify;
