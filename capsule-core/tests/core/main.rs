//! capsule-core integration tests against real stores (file://, memory://,
//! SeaweedFS S3 started by test-support).

mod backup;
mod catalog;
mod encryption;
mod pipeline;
mod stores;
