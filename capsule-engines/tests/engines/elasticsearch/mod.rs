//! The Elasticsearch/OpenSearch engine end to end against osmem-server (a
//! server per test): round trips byte for byte, large indices, renames,
//! downloads loadable with plain `_bulk`, 429s, failures, drills.

mod failures;
mod roundtrip;
mod support;
mod verify;
