//! Test support for capsule's crates: real throwaway servers on free
//! loopback ports, torn down when dropped (or when the test process exits),
//! paths to the shared fixtures, byte-level mutation of valid encodings for
//! the parsers' property tests ([`mutation`]), and a private certificate
//! authority with a TLS proxy for the TLS tests ([`tls`]).
//!
//! Server binaries are installed by `scripts/setup-test-deps.sh`; when one is
//! missing the starting function panics with a message naming that script.

pub mod azurite;
pub mod fixtures;
pub mod kube_api;
pub mod mutation;
pub mod opensearch;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod seaweedfs;
pub mod tcp_proxy;
pub mod tls;
