//! capsule-store against real backends: memory, a local directory,
//! SeaweedFS (S3) and Azurite (Azure), started by `test-support`; GCS
//! configuration without network (no emulator runs here).

mod backends;
mod concurrency;
mod conformance;
mod errors;
mod gcs;
mod legacy;
mod support;
mod tls;
mod urls;
