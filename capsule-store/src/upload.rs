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
    /// Size of each part but the last, in bytes: default 8 MiB, at least
    /// [`UploadOptions::MIN_PART_SIZE`] (S3's minimum).
    pub part_size: usize,
    /// Parts uploading at once: default 4, at least 1.
    pub max_concurrency: usize,
}

impl UploadOptions {
    /// The smallest part size accepted: 5 MiB.
    pub const MIN_PART_SIZE: usize = 5 * MIB;

    /// The defaults: 8 MiB parts, 4 in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the part size in bytes.
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size;
        self
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
        Ok(())
    }
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 8 * MIB,
            max_concurrency: 4,
        }
    }
}

/// A streaming multipart upload, from [`Store::upload`](crate::Store::upload).
///
/// Memory is bounded by `part_size * (max_concurrency + 1)` whatever the
/// total size: data is cut into parts of exactly `part_size` bytes (the last
/// may be shorter) that upload in parallel, and [`Upload::write`] waits while
/// `max_concurrency` parts are in flight (back-pressure). Nothing is visible
/// at the key until [`Upload::finish`] succeeds. Dropping an unfinished
/// upload aborts it (best effort, in the background); call
/// [`Upload::abort`] to wait for the clean-up.
pub struct Upload {
    inner: Option<Box<dyn MultipartUpload>>,
    buffer: Vec<Bytes>,
    buffered: usize,
    tasks: JoinSet<object_store::Result<()>>,
    options: UploadOptions,
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
            let take = (self.options.part_size - self.buffered).min(data.len());
            self.buffer.push(data.split_to(take));
            self.buffered += take;
            if self.buffered == self.options.part_size {
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
        tracing::debug!(store = %self.ctx.store, key = %self.key, bytes = self.bytes_written, "upload complete");
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
                        tracing::warn!(%store, %key, %error, "aborting a dropped upload failed");
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
        assert_eq!(UploadOptions::default().part_size, 8 * MIB);
        assert_eq!(UploadOptions::default().max_concurrency, 4);
        assert!(UploadOptions::new().with_part_size(MIB).validate().is_err());
        assert!(
            UploadOptions::new()
                .with_max_concurrency(0)
                .validate()
                .is_err()
        );
    }
}
