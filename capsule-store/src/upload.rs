//! Streaming multipart uploads with bounded memory and parallel parts.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, PutPayload};
use tokio::task::JoinSet;

use crate::error::{Error, ErrorContext, Result};
use crate::local_cas::LocalLocks;
use crate::store::Version;

const MIB: usize = 1024 * 1024;

/// Options of [`Store::upload`](crate::Store::upload).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Size of the first parts, in bytes: default 5 MiB, at least
    /// [`UploadOptions::MIN_PART_SIZE`] (S3's minimum). It doubles every
    /// [`parts_per_size`](UploadOptions::parts_per_size) parts, so the
    /// 10,000 parts S3 and GCS allow hold any dump (see [`Upload`]).
    pub part_size: usize,
    /// Parts uploading at once: default 4, at least 1.
    pub max_concurrency: usize,
    /// How many parts of one size before the size doubles: default 1,000.
    pub parts_per_size: usize,
}

impl UploadOptions {
    /// The smallest part size accepted: 5 MiB.
    pub const MIN_PART_SIZE: usize = 5 * MIB;
    /// The largest part size used: 5 GiB (S3's maximum).
    pub const MAX_PART_SIZE: usize = 5 * 1024 * MIB;

    /// The defaults: 5 MiB parts (doubling every 1,000 parts), 4 in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the size of the first parts, in bytes.
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size;
        self
    }

    /// Sets how many parts of one size are sent before the size doubles.
    pub fn with_parts_per_size(mut self, parts: usize) -> Self {
        self.parts_per_size = parts;
        self
    }

    /// The size of part `index` (0-based): `part_size` doubled once per
    /// `parts_per_size` parts before it, at most [`Self::MAX_PART_SIZE`].
    pub fn part_size_of(&self, index: usize) -> usize {
        let doublings = (index / self.parts_per_size.max(1)).min(20) as u32;
        self.part_size
            .saturating_mul(1 << doublings)
            .min(Self::MAX_PART_SIZE.max(self.part_size))
    }

    /// Sets how many parts upload at once.
    pub fn with_max_concurrency(mut self, max_concurrency: usize) -> Self {
        self.max_concurrency = max_concurrency;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.part_size < Self::MIN_PART_SIZE {
            return Err(Error::invalid(format!(
                "upload part_size {} is below the minimum of 5 MiB ({} bytes)",
                self.part_size,
                Self::MIN_PART_SIZE
            )));
        }
        if self.max_concurrency == 0 {
            return Err(Error::invalid("upload max_concurrency must be at least 1"));
        }
        if self.parts_per_size == 0 {
            return Err(Error::invalid("upload parts_per_size must be at least 1"));
        }
        Ok(())
    }
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 5 * MIB,
            max_concurrency: 4,
            parts_per_size: 1000,
        }
    }
}

/// A streaming multipart upload, from [`Store::upload`](crate::Store::upload).
///
/// Data is cut into parts that upload in parallel, and [`Upload::write`]
/// waits while `max_concurrency` parts are in flight (back-pressure), so
/// memory is bounded by the current part size times `max_concurrency + 1`.
/// Parts start at `part_size` (5 MiB: 25 MiB buffered with 4 in flight)
/// and double every `parts_per_size` (1,000) parts: with the defaults the
/// first 4.9 GiB go in 5 MiB parts, the next 9.8 GiB in 10 MiB parts, and
/// so on, so an object of 4.8 TiB (S3's limit is 5 TiB) still fits in 10,000 parts, while
/// memory only grows for objects that large (40 MiB parts past 34 GiB). Nothing is visible
/// at the key until [`Upload::finish`] succeeds. Dropping an unfinished
/// upload aborts it (best effort, in the background); call
/// [`Upload::abort`] to wait for the clean-up.
pub struct Upload {
    inner: Option<Box<dyn MultipartUpload>>,
    buffer: Vec<Bytes>,
    buffered: usize,
    tasks: JoinSet<object_store::Result<()>>,
    options: UploadOptions,
    /// Parts submitted so far.
    parts: usize,
    bytes_written: u64,
    key: String,
    path: Path,
    ctx: ErrorContext,
    locks: Option<Arc<LocalLocks>>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("store", &self.ctx.store)
            .field("key", &self.key)
            .field("bytes_written", &self.bytes_written)
            .field("parts_in_flight", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Upload {
    pub(crate) fn new(
        inner: Box<dyn MultipartUpload>,
        options: UploadOptions,
        key: String,
        path: Path,
        ctx: ErrorContext,
        locks: Option<Arc<LocalLocks>>,
    ) -> Self {
        Upload {
            inner: Some(inner),
            buffer: Vec::new(),
            buffered: 0,
            tasks: JoinSet::new(),
            options,
            parts: 0,
            bytes_written: 0,
            key,
            path,
            ctx,
            locks,
        }
    }

    /// Appends `data`; starts uploading each part as soon as it is full.
    ///
    /// # Errors
    /// When a part upload that finished meanwhile failed; the upload is then
    /// unusable: drop or [`abort`](Upload::abort) it.
    pub async fn write(&mut self, mut data: Bytes) -> Result<()> {
        self.bytes_written += data.len() as u64;
        while !data.is_empty() {
            let part_size = self.options.part_size_of(self.parts);
            let take = (part_size - self.buffered).min(data.len());
            self.buffer.push(data.split_to(take));
            self.buffered += take;
            if self.buffered == part_size {
                self.submit_part().await?;
            }
        }
        Ok(())
    }

    /// Uploads the last part, waits for all parts and completes the upload:
    /// the object then appears at the key, whole.
    ///
    /// # Errors
    /// When a part or the completion fails (the upload is then aborted in
    /// the background).
    pub async fn finish(mut self) -> Result<Version> {
        if self.buffered > 0 {
            self.submit_part().await?;
        }
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        let _guard = match &self.locks {
            Some(locks) => Some(locks.lock(self.path.as_ref()).await.map_err(|e| {
                self.ctx
                    .backend("upload (complete)", &self.key, format!("cannot lock: {e}"))
            })?),
            None => None,
        };
        let inner = self
            .inner
            .as_mut()
            .expect("upload not finished or aborted yet");
        let result = inner
            .complete()
            .await
            .map_err(|e| self.ctx.translate("upload (complete)", &self.key, e))?;
        self.inner = None;
        tracing::debug!(store = %self.ctx.store, object = %self.key, bytes = self.bytes_written, "upload complete");
        Ok(Version {
            etag: result.e_tag,
            version: result.version,
        })
    }

    /// Stops the part uploads and discards the upload.
    ///
    /// # Errors
    /// When the backend fails to discard the uploaded parts.
    pub async fn abort(mut self) -> Result<()> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        match self.inner.take() {
            Some(mut inner) => inner
                .abort()
                .await
                .map_err(|e| self.ctx.translate("upload (abort)", &self.key, e)),
            None => Ok(()),
        }
    }

    /// Bytes passed to [`Upload::write`] so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Starts uploading the buffered data as one part, first waiting for a
    /// free slot.
    async fn submit_part(&mut self) -> Result<()> {
        while self.tasks.len() >= self.options.max_concurrency {
            self.join_one().await?;
        }
        let payload: PutPayload = std::mem::take(&mut self.buffer).into_iter().collect();
        self.buffered = 0;
        self.parts += 1;
        let inner = self
            .inner
            .as_mut()
            .expect("upload not finished or aborted yet");
        self.tasks.spawn(inner.put_part(payload));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.tasks.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(self.ctx.translate("upload (part)", &self.key, e)),
            Some(Err(e)) => {
                Err(self
                    .ctx
                    .backend("upload (part)", &self.key, format!("part task failed: {e}")))
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            self.tasks.abort_all();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (store, key) = (self.ctx.store.clone(), self.key.clone());
                let redactor = self.ctx.redactor.clone();
                handle.spawn(async move {
                    if let Err(e) = inner.abort().await {
                        let error = redactor.redact(&crate::error::chain_text(&e));
                        tracing::warn!(%store, object = %key, %error, "aborting a dropped upload failed");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn futures_and_types_are_send() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Store>();
        send::<Upload>();
        let store = Store::from_url("memory://").unwrap();
        let start = store.upload("k", UploadOptions::default());
        assert_send(&start);
        let mut upload = start.await.unwrap();
        let write = upload.write(Bytes::from_static(b"abc"));
        assert_send(&write);
        write.await.unwrap();
        let finish = upload.finish();
        assert_send(&finish);
        finish.await.unwrap();
        let ping = store.ping();
        assert_send(&ping);
        ping.await.unwrap();
        assert_eq!(
            store.get("k").await.unwrap().bytes,
            Bytes::from_static(b"abc")
        );
    }

    #[test]
    fn options_validate() {
        assert!(UploadOptions::new().validate().is_ok());
        assert_eq!(UploadOptions::default().part_size, 5 * MIB);
        assert_eq!(UploadOptions::default().max_concurrency, 4);
        assert!(UploadOptions::new().with_part_size(MIB).validate().is_err());
        assert!(
            UploadOptions::new()
                .with_max_concurrency(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn parts_double_every_parts_per_size_so_10000_parts_hold_terabytes() {
        let o = UploadOptions::default();
        assert_eq!(o.part_size_of(0), 5 * MIB);
        assert_eq!(o.part_size_of(999), 5 * MIB);
        assert_eq!(o.part_size_of(1000), 10 * MIB);
        assert_eq!(o.part_size_of(2500), 20 * MIB);
        assert_eq!(o.part_size_of(usize::MAX), UploadOptions::MAX_PART_SIZE);
        let capacity: u128 = (0..10_000).map(|i| o.part_size_of(i) as u128).sum();
        assert!(capacity > 4 * (1u128 << 40), "{capacity} bytes");
        // The memory bound of the defaults for objects up to 4.9 GiB.
        assert_eq!(o.part_size_of(0) * (o.max_concurrency + 1), 25 * MIB);
        assert!(
            UploadOptions::new()
                .with_parts_per_size(0)
                .validate()
                .is_err()
        );
    }

    #[tokio::test]
    async fn growing_parts_keep_every_byte_in_order() {
        let store = Store::from_url("memory://").unwrap();
        let options = UploadOptions::default().with_parts_per_size(2);
        // Parts of 5, 5, 10, 10, 20 MiB, then the rest: written in odd
        // pieces that straddle every boundary.
        let data: Vec<u8> = (0..(53 * MIB + 12_345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut upload = store.upload("grow", options).await.unwrap();
        for piece in data.chunks(777_777) {
            upload.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        assert_eq!(upload.parts, 5);
        upload.finish().await.unwrap();
        assert!(store.get("grow").await.unwrap().bytes == data);
    }
}
