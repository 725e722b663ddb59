//! Downloading artifacts to local files, and reading them for restores.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use capsule_store::Store;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

use super::Catalog;
use crate::encryption::{self, AGE_SUFFIX, Identities};
use crate::engine::{ArtifactSource, ByteStream};
use crate::error::{Error, Result};
use crate::pipeline::{self, DownloadReport, Expected};
use crate::progress::Progress;
use crate::statefile::{Artifact, Compression, Statefile};
use crate::status::Status;

/// One artifact written to local disk.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadedArtifact {
    /// The artifact's object name.
    pub name: String,
    /// The local file.
    pub path: PathBuf,
    /// What was read and checked.
    pub report: DownloadReport,
}

/// The local file name of an artifact once decrypted and decompressed
/// (`dump.pgc.zst.age` → `dump.pgc`).
pub(crate) fn local_name(a: &Artifact) -> String {
    let name = match &a.encryption {
        Some(_) => a.name.strip_suffix(AGE_SUFFIX).unwrap_or(&a.name),
        None => &a.name,
    };
    match a.compression {
        Compression::Zstd => name.strip_suffix(".zst").unwrap_or(name).to_string(),
        _ => name.to_string(),
    }
}

/// Checks that `identities` open the age header of every encrypted
/// artifact of `sf` (reading a few bytes of each), so a missing or wrong
/// key is reported before anything is written or restored.
async fn check_keys(store: &Store, sf: &Statefile, identities: &Identities) -> Result<()> {
    let id = sf.backup_id.as_str();
    for a in &sf.artifacts {
        if let Some(enc) = &a.encryption {
            encryption::check_header(
                store,
                id,
                &Catalog::key(id, &a.name),
                &a.name,
                enc,
                a.size_bytes,
                identities,
            )
            .await?;
        }
    }
    Ok(())
}

impl Catalog {
    /// Downloads every artifact of finished backup `id` into
    /// `<dir>/<id>/`, decrypted (with the catalog's identities) and
    /// decompressed, each checked against its recorded length and SHA-256
    /// (legacy artifacts have no checksum: their length is checked against
    /// the store). A file appears under its final name only once it was
    /// fully written and checked; on failure nothing is left but what was
    /// already complete.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the backup is not finished;
    /// [`Error::IdentityRequired`] or [`Error::Decrypt`] for an encrypted
    /// backup without a matching identity (before any file is created);
    /// [`Error::Corrupt`] naming the object on a mismatch; storage and
    /// local I/O errors.
    pub async fn download(
        &self,
        id: &str,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<Vec<DownloadedArtifact>> {
        let sf = self.describe(id).await?;
        if sf.status == Status::Deleting {
            return Err(super::being_deleted(&sf, "downloaded"));
        }
        if sf.status != Status::Finished {
            return Err(Error::invalid(
                "backup",
                format!(
                    "backup {id} is {}: only finished backups can be downloaded",
                    sf.status
                ),
            ));
        }
        if sf.artifacts.is_empty() {
            return Err(Error::invalid(
                "backup",
                format!("backup {id} has no artifacts"),
            ));
        }
        check_keys(&self.store, &sf, &self.identities).await?;
        let folder = dir.join(id);
        tokio::fs::create_dir_all(&folder)
            .await
            .map_err(|e| Error::io(format!("creating {}", folder.display()), e))?;
        let mut out = Vec::new();
        for a in &sf.artifacts {
            let path = folder.join(local_name(a));
            let partial = folder.join(format!(".{}.partial", local_name(a)));
            // Removes the partial file however this ends early: an error,
            // or the future dropped (ctrl-c).
            let mut guard = PartialFile(Some(partial.clone()));
            let report = async {
                // Created here, not on the blocking pool: a create still
                // running there when the future is dropped would leave the
                // file after the guard removed nothing.
                let file = std::fs::File::create(&partial)
                    .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
                let mut file = tokio::fs::File::from_std(file);
                let report = pipeline::download(
                    &self.store,
                    id,
                    &Self::key(id, &a.name),
                    &Expected::from(a),
                    &self.identities,
                    &mut file,
                    progress,
                )
                .await?;
                file.sync_all()
                    .await
                    .map_err(|e| Error::io(format!("writing {}", partial.display()), e))?;
                tokio::fs::rename(&partial, &path)
                    .await
                    .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))?;
                Ok::<_, Error>(report)
            }
            .await;
            let report = report?;
            guard.0 = None;
            out.push(DownloadedArtifact {
                name: a.name.clone(),
                path,
                report,
            });
        }
        Ok(out)
    }

    /// An [`ArtifactSource`] over finished backup `id`, for engines' restores.
    ///
    /// # Errors
    /// As [`Catalog::describe`]; [`Error::Invalid`] when not finished.
    pub async fn artifact_source(&self, id: &str) -> Result<StoreArtifactSource> {
        let sf = self.describe(id).await?;
        super::ensure_restorable(&sf)?;
        Ok(StoreArtifactSource {
            store: self.store.clone(),
            statefile: sf,
            identities: self.identities.clone(),
        })
    }
}

/// A download's partial file, removed when dropped unless disarmed (set to
/// `None` once renamed into place).
struct PartialFile(Option<std::path::PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads a backup's artifacts from the store, verified, decrypted and
/// decompressed.
#[derive(Clone, Debug)]
pub struct StoreArtifactSource {
    store: Store,
    statefile: Statefile,
    identities: Identities,
}

impl StoreArtifactSource {
    /// Checks that the catalog's identities decrypt every encrypted
    /// artifact, reading only their age headers. [`run_restore`](crate::run_restore)
    /// and [`run_verify`](crate::run_verify) call it before the engine
    /// starts, so a missing or wrong key never reaches the target.
    ///
    /// # Errors
    /// [`Error::IdentityRequired`] without identities, [`Error::Decrypt`]
    /// when none is a recipient, naming the backup and the artifact;
    /// [`Error::Corrupt`] for a damaged header; storage errors.
    pub async fn check_keys(&self) -> Result<()> {
        check_keys(&self.store, &self.statefile, &self.identities).await
    }

    fn artifact(&self, name: &str) -> Result<&Artifact> {
        self.statefile.artifact(name).ok_or_else(|| {
            Error::invalid(
                "artifact",
                format!("backup {} has no artifact {name}", self.statefile.backup_id),
            )
        })
    }
}

#[async_trait]
impl ArtifactSource for StoreArtifactSource {
    fn statefile(&self) -> &Statefile {
        &self.statefile
    }

    async fn verify(&self, name: &str) -> Result<()> {
        let a = self.artifact(name)?;
        let id = self.statefile.backup_id.as_str();
        let key = Catalog::key(id, &a.name);
        if let Some(enc) = &a.encryption {
            encryption::check_header(
                &self.store,
                id,
                &key,
                &a.name,
                enc,
                a.size_bytes,
                &self.identities,
            )
            .await?;
        }
        pipeline::verify_object(
            &self.store,
            id,
            &key,
            &Expected::from(a),
            &crate::NoProgress,
        )
        .await
        .map(|_| ())
    }

    async fn open(&self, name: &str) -> Result<ByteStream> {
        let a = self.artifact(name)?.clone();
        let id = self.statefile.backup_id.to_string();
        if let Some(enc) = &a.encryption
            && self.identities.is_empty()
        {
            return Err(encryption::identity_required(&id, &a.name, enc));
        }
        let store = self.store.clone();
        let identities = self.identities.clone();
        let (mut writer, reader) = tokio::io::duplex(1024 * 1024);
        let task = tokio::spawn(async move {
            pipeline::download(
                &store,
                &id,
                &Catalog::key(&id, &a.name),
                &Expected::from(&a),
                &identities,
                &mut writer,
                &crate::NoProgress,
            )
            .await
            .map(|_| ())
        });
        Ok(Box::new(CheckedReader {
            inner: reader,
            task: Some(task),
        }))
    }
}

/// A reader that, at EOF, reports the download task's error instead of a
/// clean end, so a consumer never mistakes a corrupt artifact for a
/// complete one. The typed error travels inside the I/O error
/// ([`Error::from_stream`] takes it out): a corrupt artifact and a broken
/// download stay distinct.
struct CheckedReader {
    inner: tokio::io::DuplexStream,
    task: Option<JoinHandle<Result<()>>>,
}

impl AsyncRead for CheckedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            return Poll::Ready(Ok(()));
        }
        // EOF of the pipe: the download is over; report how it ended.
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(task).poll(cx));
        self.task = None;
        match result {
            Ok(Ok(())) => Poll::Ready(Ok(())),
            Ok(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
            Err(e) => Poll::Ready(Err(std::io::Error::other(format!(
                "download task failed: {e}"
            )))),
        }
    }
}
