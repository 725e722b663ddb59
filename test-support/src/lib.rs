//! Test support for capsule's crates: real throwaway servers on free
//! loopback ports, torn down when dropped (or when the test process exits),
//! and paths to the shared fixtures.
//!
//! Server binaries are installed by `scripts/setup-test-deps.sh`; when one is
//! missing the starting function panics with a message naming that script.

pub mod azurite;
pub mod fixtures;
pub mod kube_api;
pub mod opensearch;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod seaweedfs;
