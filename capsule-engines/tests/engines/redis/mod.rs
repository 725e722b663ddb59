//! The Redis engine end to end against real `redis-server`s (one per
//! test): every type and encoding through backup, FLUSHALL and restore
//! (compared with `DEBUG DIGEST`), the SCAN + DUMP fallback, credentials
//! and TLS, damaged artifacts and interrupted captures, drills, downloads.

mod capture;
mod failures;
mod load;
mod restore;
mod roundtrip;
mod support;
