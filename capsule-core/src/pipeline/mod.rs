//! Streaming pipelines between engines and the store.
//!
//! Upload: an `AsyncRead` source → zstd (multi-threaded; incompressible
//! stretches stored as raw zstd frames, see `compress`) → age encryption
//! (when [`PipelineOptions::encryption`] names recipients) → SHA-256 and
//! byte count → multipart upload. Download: object stream → SHA-256 and
//! byte count → age decryption (with the [`crate::Identities`] given) →
//! zstd decode → `AsyncWrite`. Memory is bounded by a few chunks plus the
//! upload's parts in flight, whatever the size of the data; each stage waits
//! for the next (back-pressure through bounded channels).
//!
//! Compression runs on a blocking thread (zstd's own workers do the heavy
//! lifting), so the async runtime keeps serving the network.

mod channel;
mod compress;
mod download;
mod upload;

pub use download::{DownloadReport, Expected, download, verify_object};
pub use upload::{DEFAULT_ZSTD_LEVEL, PipelineOptions, UploadReport, upload};
