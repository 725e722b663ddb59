//! Object storage for capsule: one [`Store`] type over S3 (and S3-compatible
//! servers such as MinIO and SeaweedFS), Azure Blob Storage, Google Cloud
//! Storage, a local directory and memory, built on [`object_store`].
//! It knows nothing of backups.
//!
//! - [`StoreBuilder`] makes a store from a URL (`s3://bucket/prefix?endpoint=...`,
//!   `az://container`, `gs://bucket`, `file:///abs/path`, `memory://`) or from
//!   the legacy [`StorageSettings`] (the old CLI's flags and the bucket
//!   secret's `CNVRG_STORAGE_*` keys).
//! - [`Store`] is a bucket plus a prefix (the dst-dir): put, conditional
//!   [`create`](Store::create) and [`update`](Store::update) (compare-and-swap
//!   on the object's [`Version`], also for `file://` across processes), get
//!   (whole, ranged, streamed), head, list, delete, streaming multipart
//!   [`Upload`]s with bounded memory, and [`ping`](Store::ping).
//! - Every failure is an [`Error`] naming the store by its redacted URL and
//!   the key; no message, `Debug` output or log field carries a secret
//!   ([`Secret`] prints `***`).
//!
//! ```
//! use bytes::Bytes;
//! use capsule_store::{Error, Store, UploadOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> capsule_store::Result<()> {
//! let store = Store::from_url("memory://")?.with_prefix("cnvrg-smart-backups")?;
//!
//! // Shared files: create once, then compare-and-swap.
//! let v1 = store.create("b1/statefile.json", Bytes::from_static(b"{}")).await?;
//! let v2 = store.update("b1/statefile.json", Bytes::from_static(b"{\"n\":1}"), &v1).await?;
//! let stale = store.update("b1/statefile.json", Bytes::from_static(b"{}"), &v1).await;
//! assert!(matches!(stale, Err(Error::Conflict { .. })));
//! assert_eq!(store.get("b1/statefile.json").await?.version, v2);
//!
//! // Big files: stream them up in parts.
//! let mut upload = store.upload("b1/dump.bin", UploadOptions::default()).await?;
//! upload.write(Bytes::from(vec![7u8; 1024])).await?;
//! upload.finish().await?;
//!
//! assert_eq!(store.list_dirs("").await?, vec!["b1"]);
//! assert_eq!(store.list("b1").await?.len(), 2);
//! assert_eq!(store.url(), "memory://cnvrg-smart-backups");
//! store.ping().await?;
//! # Ok(())
//! # }
//! ```

mod builder;
mod error;
mod file_read;
mod local_cas;
mod secret;
mod settings;
mod store;
mod upload;
mod url;

pub use builder::StoreBuilder;
pub use error::{Error, Redactor, Result};
pub use secret::Secret;
pub use settings::{BucketType, StorageSettings};
pub use store::{GetObject, ObjectInfo, ObjectStream, Store, Version};
pub use upload::{Upload, UploadOptions};
