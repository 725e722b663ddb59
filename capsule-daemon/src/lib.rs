//! # capsule-daemon
//!
//! What `capsule start` runs: the scheduler (period and rotation), the
//! bucket watcher that executes backup and restore requests written into the
//! bucket, the HTTP API and Kubernetes discovery. It is a library so tests
//! and embedders can run it in-process; its modules land with the daemon
//! issue. Everything it knows it reads from the bucket
//! ([`capsule_core::Catalog`]) and from its targets.
//!
//! ```
//! // The daemon works on the same catalog the CLI uses.
//! fn catalog(store: capsule_store::Store) -> capsule_core::Catalog {
//!     capsule_core::Catalog::new(store)
//! }
//! # let _ = catalog;
//! ```
