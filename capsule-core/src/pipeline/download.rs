//! Object → checksum → decrypt → decompress → sink, and checksum-only
//! verification.

use std::io;

use bytes::Bytes;
use capsule_store::Store;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel::{ChannelReader, ChannelWriter};
use crate::encryption::{self, Identities};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::statefile::{Artifact, Compression, Encryption};

const CHUNK: usize = 1024 * 1024;
const DEPTH: usize = 2;

/// What the stored bytes must be, from the statefile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Stored size, when recorded.
    pub size_bytes: Option<u64>,
    /// Hex SHA-256 of the stored bytes, when recorded (legacy backups have none).
    pub sha256: Option<String>,
    /// How the stored bytes are compressed.
    pub compression: Compression,
    /// How the stored bytes are encrypted (after compression), if they are.
    pub encryption: Option<Encryption>,
}

impl From<&Artifact> for Expected {
    fn from(a: &Artifact) -> Self {
        Expected {
            size_bytes: a.size_bytes,
            sha256: a.sha256.clone(),
            compression: a.compression,
            encryption: a.encryption.clone(),
        }
    }
}

/// What a download read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadReport {
    /// Stored bytes read.
    pub size_bytes: u64,
    /// Bytes written to the sink (after decryption and decompression).
    pub raw_size_bytes: u64,
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Whether a recorded checksum was compared (false for legacy artifacts).
    pub checksum_verified: bool,
    /// Whether the stored bytes were decrypted.
    pub decrypted: bool,
}

fn check(backup: &str, key: &str, expected: &Expected, size: u64, sha256: &str) -> Result<bool> {
    let corrupt = |reason: String| Error::Corrupt {
        id: backup.to_string(),
        object: key.to_string(),
        reason,
    };
    if let Some(want) = expected.size_bytes
        && want != size
    {
        return Err(corrupt(format!(
            "length mismatch: statefile records {want} bytes, store holds {size}"
        )));
    }
    match &expected.sha256 {
        Some(want) if !want.eq_ignore_ascii_case(sha256) => Err(corrupt(format!(
            "checksum mismatch: statefile records sha256 {want}, stored bytes hash to {sha256}"
        ))),
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

/// Reads the object `key` and checks its length and SHA-256 against
/// `expected`, without decompressing or writing anything.
///
/// # Errors
/// [`Error::Corrupt`] naming the object on a mismatch; storage errors.
pub async fn verify_object(
    store: &Store,
    backup: &str,
    key: &str,
    expected: &Expected,
    progress: &dyn Progress,
) -> Result<DownloadReport> {
    let ctx = || format!("backup {backup}: verify of {key}");
    let obj = store
        .get_stream(key)
        .await
        .map_err(|e| Error::store(ctx(), e))?;
    progress.start(key, Some(obj.size));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = obj.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::store(ctx(), e))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    let sha256 = hex::encode(hasher.finalize());
    let verified = check(backup, key, expected, size, &sha256)?;
    Ok(DownloadReport {
        size_bytes: size,
        raw_size_bytes: size,
        sha256,
        checksum_verified: verified,
        decrypted: false,
    })
}

/// Why the decrypt-and-decompress stage stopped.
enum StageError {
    /// The age header could not be opened with the identities given.
    Key(age::DecryptError),
    /// The data could not be decrypted or decompressed.
    Data(io::Error),
}

impl From<io::Error> for StageError {
    fn from(e: io::Error) -> Self {
        StageError::Data(e)
    }
}

/// Streams the object `key` into `sink`, hashing the stored bytes,
/// decrypting them with `identities` when `expected` says they are
/// encrypted, and decompressing them. The sink receives data as it
/// arrives; success is reported only after the whole object was read and
/// its length and checksum matched, so a caller writing to a file must keep
/// it under a temporary name until this returns `Ok` (as the catalog's
/// download does).
///
/// # Errors
/// [`Error::IdentityRequired`] for an encrypted object without identities
/// (before anything is read), [`Error::Decrypt`] when none of them is a
/// recipient; [`Error::Corrupt`] naming the object on a length, checksum,
/// age or zstd frame error; storage and sink I/O errors.
pub async fn download<W>(
    store: &Store,
    backup: &str,
    key: &str,
    expected: &Expected,
    identities: &Identities,
    sink: &mut W,
    progress: &dyn Progress,
) -> Result<DownloadReport>
where
    W: AsyncWrite + Unpin + Send,
{
    let ctx = || format!("backup {backup}: download of {key}");
    let object = key.rsplit('/').next().unwrap_or(key);
    if let Some(enc) = &expected.encryption
        && identities.is_empty()
    {
        return Err(encryption::identity_required(backup, object, enc));
    }
    let obj = store
        .get_stream(key)
        .await
        .map_err(|e| Error::store(ctx(), e))?;
    progress.start(key, Some(obj.size));
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(DEPTH);
    let compression = expected.compression;
    let keys = expected.encryption.as_ref().map(|_| identities.clone());
    let stage = tokio::task::spawn_blocking(move || -> Result<u64, StageError> {
        let mut input = ChannelReader::new(in_rx);
        let mut output = ChannelWriter::new(out_tx, CHUNK, false);
        {
            // age reads one 64 KiB chunk at a time: memory stays bounded.
            let mut plain: Box<dyn io::Read + '_> = match &keys {
                Some(ids) => Box::new(ids.open(&mut input).map_err(StageError::Key)?),
                None => Box::new(&mut input),
            };
            match compression {
                Compression::Zstd => zstd::stream::copy_decode(&mut plain, &mut output)?,
                _ => {
                    io::copy(&mut plain, &mut output)?;
                }
            }
        }
        // Drain what is left so a truncated frame is not mistaken for a
        // reader that stopped early.
        io::copy(&mut input, &mut io::sink())?;
        Ok(output.finish()?.0)
    });

    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = obj.stream;
    let mut in_tx = Some(in_tx);
    let mut pending: Option<Bytes> = None;
    let mut stream_done = false;
    let mut decoder_gone = false;
    let mut failure: Option<Error> = None;
    let mut output_done = false;
    loop {
        if output_done && stream_done {
            break;
        }
        let tx = in_tx.clone();
        tokio::select! {
            biased;
            out = out_rx.recv(), if !output_done => match out {
                Some(chunk) => {
                    if let Err(e) = sink.write_all(&chunk).await {
                        failure = Some(Error::io(format!("{}: writing the output failed", ctx()), e));
                        break;
                    }
                }
                // The decoder ended. Before the object did (a corrupt frame,
                // a wrong key): keep hashing the rest so the report says
                // what is wrong with the object.
                None => {
                    output_done = true;
                    if !stream_done {
                        pending = None;
                        decoder_gone = true;
                        in_tx = None;
                    }
                }
            },
            permit = async move {
                match tx {
                    Some(tx) => tx.reserve_owned().await.ok(),
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => match permit {
                Some(p) => {
                    p.send(pending.take().expect("guarded"));
                    if stream_done { in_tx = None; }
                }
                // The decoder stopped (corrupt frame): keep hashing the
                // rest so the report says what is wrong with the object.
                None => { pending = None; decoder_gone = true; in_tx = None; }
            },
            next = stream.next(), if pending.is_none() && !stream_done => match next {
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    hasher.update(&chunk);
                    progress.advance(chunk.len() as u64);
                    if !decoder_gone {
                        pending = Some(chunk);
                    }
                }
                Some(Err(e)) => {
                    failure = Some(Error::store(ctx(), e));
                    break;
                }
                None => {
                    stream_done = true;
                    in_tx = None;
                }
            },
        }
    }
    drop(in_tx);
    drop(out_rx);
    let stage_result = stage.await;
    progress.finish();
    if let Some(e) = failure {
        return Err(e);
    }
    let sha256 = hex::encode(hasher.finalize());
    // Checksum first: a corrupt object explains a broken zstd frame.
    let verified = check(backup, key, expected, size, &sha256)?;
    let raw = match stage_result {
        Ok(Ok(n)) => n,
        Ok(Err(StageError::Key(e))) => {
            let enc = expected
                .encryption
                .as_ref()
                .expect("keys only when encrypted");
            return Err(encryption::key_error(backup, object, enc, identities, &e));
        }
        Ok(Err(StageError::Data(e))) => {
            let what = if expected.encryption.is_some() {
                "cannot decrypt or decompress"
            } else {
                "cannot decompress"
            };
            return Err(Error::Corrupt {
                id: backup.to_string(),
                object: key.to_string(),
                reason: format!("{what}: {e}"),
            });
        }
        Err(e) => {
            return Err(Error::io(
                ctx(),
                io::Error::other(format!("decoder panicked: {e}")),
            ));
        }
    };
    sink.flush()
        .await
        .map_err(|e| Error::io(format!("{}: writing the output failed", ctx()), e))?;
    Ok(DownloadReport {
        size_bytes: size,
        raw_size_bytes: raw,
        sha256,
        checksum_verified: verified,
        decrypted: expected.encryption.is_some(),
    })
}
