//! Source → compress → encrypt → checksum → multipart upload.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use capsule_store::{Store, UploadOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::channel::ChannelWriter;
use super::compress::AdaptiveZstd;
use crate::encryption::{Recipients, SealedWriter};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::statefile::{Compression, Encryption};

/// Size of the chunks passed between stages.
const CHUNK: usize = 1024 * 1024;
/// Chunks buffered between two stages.
const DEPTH: usize = 2;
/// The zstd level when neither the options nor the engine name one.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// How the upload pipeline compresses, encrypts and uploads.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// Compression of the stored bytes (default zstd).
    pub compression: Compression,
    /// zstd level (1 is fastest, 19 smallest); `None` (default): the
    /// engine's preferred level ([`crate::Engine::zstd_level`]), else
    /// [`DEFAULT_ZSTD_LEVEL`].
    pub zstd_level: Option<i32>,
    /// zstd worker threads (default: the machine's cores, at most 8; 0 = single-threaded).
    pub zstd_workers: u32,
    /// Multipart upload parameters.
    pub upload: UploadOptions,
    /// Encrypt the stored bytes (after compression) to these age
    /// recipients; `None` (default) stores them unencrypted.
    pub encryption: Option<Recipients>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8) as u32;
        PipelineOptions {
            compression: Compression::Zstd,
            zstd_level: None,
            zstd_workers: cores,
            upload: UploadOptions::default(),
            encryption: None,
        }
    }
}

impl PipelineOptions {
    /// Sets the compression.
    pub fn with_compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
    /// Sets the zstd level.
    pub fn with_zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = Some(level);
        self
    }
    /// Sets the zstd worker count.
    pub fn with_zstd_workers(mut self, workers: u32) -> Self {
        self.zstd_workers = workers;
        self
    }
    /// Sets the multipart upload options.
    pub fn with_upload(mut self, upload: UploadOptions) -> Self {
        self.upload = upload;
        self
    }
    /// Encrypts to `recipients` (none: no encryption).
    pub fn with_encryption(mut self, recipients: Recipients) -> Self {
        self.encryption = (!recipients.is_empty()).then_some(recipients);
        self
    }
}

/// What an upload stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadReport {
    /// Bytes stored (after compression and encryption).
    pub size_bytes: u64,
    /// Bytes read from the source.
    pub raw_size_bytes: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Compression applied.
    pub compression: Compression,
    /// Encryption applied (format and recipients), if any.
    pub encryption: Option<Encryption>,
}

/// Streams `source` into the object `key` of `store`, compressed,
/// encrypted when [`PipelineOptions::encryption`] names recipients, and
/// checksummed (the SHA-256 is of the stored bytes). The object becomes
/// visible only when the whole source was read without error and every
/// part was uploaded; on any failure the multipart upload is aborted and
/// nothing is left at `key`.
///
/// # Errors
/// A read error of the source (e.g. the dump tool died), a compression or
/// encryption error, or a storage error; each names `key`.
pub async fn upload<R>(
    store: &Store,
    key: &str,
    mut source: R,
    options: &PipelineOptions,
    progress: &dyn Progress,
) -> Result<UploadReport>
where
    R: AsyncRead + Send + Unpin,
{
    let ctx = || format!("upload of {key}");
    let mut upload = store
        .upload(key, options.upload.clone())
        .await
        .map_err(|e| Error::store(ctx(), e))?;
    progress.start(key, None);

    // Stage 1 (this task): read the source. Stage 2 (blocking thread):
    // compress, encrypt and hash. Stage 3 (this task, interleaved): upload.
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (out_tx, mut out_rx) = mpsc::channel(DEPTH);
    let compression = options.compression;
    let level = options.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
    let workers = options.zstd_workers;
    let recipients = options.encryption.clone().filter(|r| !r.is_empty());
    let encryption = recipients.as_ref().map(Recipients::record);
    let stage = tokio::task::spawn_blocking(move || -> io::Result<(u64, Option<String>)> {
        let mut raw_rx = raw_rx;
        let mut hashed = ChannelWriter::new(out_tx, CHUNK, true);
        // age buffers one 64 KiB chunk: memory stays bounded.
        let mut output = SealedWriter::new(&mut hashed, recipients.as_ref())?;
        match compression {
            Compression::Zstd => {
                // zstd's default job at level 3 is 8 MiB, and it keeps
                // several jobs' input and output buffers per worker: ~95 MiB
                // RSS with 2 workers on incompressible data. 1 MiB jobs cost
                // no measurable speed or ratio (capsule-bench rss,
                // docs/benchmarks.md).
                let mut zstd = AdaptiveZstd::new(&mut output, level, workers, CHUNK as u32)?;
                while let Some(chunk) = raw_rx.blocking_recv() {
                    zstd.write_chunk(&chunk)?;
                }
                let (_, stats) = zstd.finish()?;
                tracing::debug!(
                    compressed = stats.compressed_bytes,
                    stored_raw = stats.raw_bytes,
                    frames = stats.frames,
                    "zstd stage done"
                );
            }
            _ => {
                while let Some(chunk) = raw_rx.blocking_recv() {
                    output.write_all(&chunk)?;
                }
            }
        }
        output.finish()?;
        hashed.finish()
    });

    let mut raw_size = 0u64;
    let mut source_error: Option<io::Error> = None;
    let mut upload_error: Option<capsule_store::Error> = None;
    let mut raw_tx = Some(raw_tx);
    let mut buf = BytesMut::with_capacity(CHUNK);
    // A full chunk waiting for room in the compressor's channel. It is sent
    // through a select branch, never awaited inline, so uploading keeps
    // draining the compressor's output while we wait (no deadlock).
    let mut pending: Option<Bytes> = None;
    let mut eof = false;
    loop {
        let tx = raw_tx.clone();
        tokio::select! {
            biased;
            chunk = out_rx.recv() => match chunk {
                Some(chunk) => {
                    let n = chunk.len() as u64;
                    if let Err(e) = upload.write(chunk).await {
                        upload_error = Some(e);
                        break;
                    }
                    progress.advance(n);
                }
                None => break,
            },
            permit = async move {
                match tx {
                    Some(tx) => tx.reserve_owned().await.ok(),
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                match permit {
                    Some(permit) => {
                        permit.send(pending.take().expect("guarded"));
                        if eof {
                            raw_tx = None; // EOF for the compressor
                        }
                    }
                    // The compressor stopped: its error is reported below.
                    None => {
                        pending = None;
                        eof = true;
                        raw_tx = None;
                    }
                }
            },
            read = source.read_buf(&mut buf), if pending.is_none() && !eof => match read {
                Ok(0) => {
                    eof = true;
                    if buf.is_empty() {
                        raw_tx = None;
                    } else {
                        pending = Some(buf.split().freeze());
                    }
                }
                Ok(n) => {
                    raw_size += n as u64;
                    if buf.len() >= CHUNK {
                        pending = Some(buf.split().freeze());
                        buf.reserve(CHUNK);
                    } else if buf.capacity() - buf.len() < 64 * 1024 {
                        buf.reserve(CHUNK);
                    }
                }
                Err(e) => {
                    source_error = Some(e);
                    break;
                }
            },
        }
    }
    drop(raw_tx);
    drop(out_rx);
    let stage_result = stage
        .await
        .map_err(|e| io::Error::other(format!("compression stage panicked: {e}")));

    let failure = if let Some(e) = source_error {
        Some(Error::io(
            format!("{}: reading the source failed", ctx()),
            e,
        ))
    } else if let Some(e) = upload_error {
        Some(Error::store(ctx(), e))
    } else {
        match &stage_result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) | Err(e) => Some(Error::io(
                format!("{}: compression or encryption failed", ctx()),
                io::Error::new(e.kind(), e.to_string()),
            )),
        }
    };
    if let Some(err) = failure {
        progress.finish();
        let _ = upload.abort().await;
        return Err(err);
    }
    let (size, sha) = stage_result.expect("checked").expect("checked");
    let sha256 = sha.unwrap_or_else(|| hex::encode(Sha256::digest([])));
    let uploaded = upload.bytes_written();
    if uploaded != size {
        let _ = upload.abort().await;
        progress.finish();
        return Err(Error::Corrupt {
            id: key.split('/').next().unwrap_or(key).to_string(),
            object: key.to_string(),
            reason: format!("pipeline produced {size} bytes but {uploaded} were uploaded"),
        });
    }
    upload.finish().await.map_err(|e| Error::store(ctx(), e))?;
    progress.finish();
    tracing::debug!(
        object = key,
        size,
        raw_size,
        encrypted = encryption.is_some(),
        "artifact uploaded"
    );
    Ok(UploadReport {
        size_bytes: size,
        raw_size_bytes: raw_size,
        sha256,
        compression,
        encryption,
    })
}
