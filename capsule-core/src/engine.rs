//! The `Engine` trait: what every database engine implements.

use std::fmt;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::error::Result;
use crate::id::ServiceType;
use crate::progress::Progress;
use crate::statefile::{
    Artifact, ArtifactRole, EngineInfo, Fingerprint, ServiceIdentity, Statefile,
};

/// A byte stream an engine hands to the pipeline, or receives from it.
pub type ByteStream = Box<dyn AsyncRead + Send + Unpin>;

/// What an engine can do, as data the orchestration branches on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Can restore into a scratch target and compare fingerprints.
    pub verify: bool,
    /// Can restore over the live target (legacy behaviour).
    pub in_place_restore: bool,
    /// Can restore beside the live target and swap.
    pub safe_restore: bool,
}

/// How an engine wants one artifact stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArtifactSpec {
    /// Object name inside the backup folder (e.g. `dump.pgc.zst`).
    pub name: String,
    /// What it holds.
    pub role: ArtifactRole,
    /// Engine format (e.g. `pg_dump-custom`).
    pub format: String,
    /// The producing tool and version.
    pub tool_version: Option<String>,
}

impl ArtifactSpec {
    /// A data artifact named `name` in `format`.
    pub fn new(name: impl Into<String>, format: impl Into<String>) -> Self {
        ArtifactSpec {
            name: name.into(),
            role: ArtifactRole::Data,
            format: format.into(),
            tool_version: None,
        }
    }
    /// Sets the role.
    pub fn with_role(mut self, role: ArtifactRole) -> Self {
        self.role = role;
        self
    }
    /// Sets the tool version.
    pub fn with_tool_version(mut self, v: impl Into<String>) -> Self {
        self.tool_version = Some(v.into());
        self
    }
}

/// Where an engine writes its artifacts during a backup. The core's
/// implementation streams each one through compress → encrypt (when
/// configured) → checksum → upload.
#[async_trait]
pub trait ArtifactSink: Send {
    /// Stores everything `data` yields as one artifact and returns its record
    /// (size, checksum). Fails if `data` fails: an engine turns a tool's
    /// non-zero exit into a read error so a broken dump is never stored.
    async fn put(&mut self, spec: ArtifactSpec, data: ByteStream) -> Result<Artifact>;
}

/// Where an engine reads a backup's artifacts during a restore.
#[async_trait]
pub trait ArtifactSource: Send + Sync {
    /// The backup being restored.
    fn statefile(&self) -> &Statefile;
    /// Checks the artifact's stored length and checksum without keeping
    /// it, and, when it is encrypted, that it can be decrypted (a missing
    /// or wrong identity fails here, before anything is restored).
    async fn verify(&self, name: &str) -> Result<()>;
    /// Streams the artifact, decrypted and decompressed. The stream fails
    /// (an I/O error before EOF) on a length or checksum mismatch.
    async fn open(&self, name: &str) -> Result<ByteStream>;
}

/// Per-job context handed to engines: progress and cancellation.
#[non_exhaustive]
pub struct JobContext<'a> {
    /// Progress receiver.
    pub progress: &'a dyn Progress,
    /// Cancelled on shutdown or ctrl-c; engines stop their tools promptly.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl<'a> JobContext<'a> {
    /// A context with the given progress and a fresh cancellation token.
    pub fn new(progress: &'a dyn Progress) -> Self {
        JobContext {
            progress,
            cancel: tokio_util::sync::CancellationToken::new(),
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// The target, without credentials.
    pub target: String,
    /// How it restored (`safe-swap`, `in-place`, …).
    pub mode: String,
    /// Fingerprint of the restored data, when the engine took one.
    pub fingerprint: Option<Fingerprint>,
    /// What the engine has to add, for reports (`camelCase` keys: Redis
    /// gives `restored` and `skippedExpired` per database, `functions`,
    /// `load`); empty when it has nothing.
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Where and how [`Engine::restore`] will write, recorded in the restore
/// history before it starts (so a failed restore still says what it was
/// about to change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestorePlan {
    /// The target, without credentials (`127.0.0.1:5432/app`).
    pub target: String,
    /// How it will restore (`safe-swap`, `in-place`, `target-db`, …).
    pub mode: String,
}

impl RestorePlan {
    /// A plan writing to `target` in `mode`.
    pub fn new(target: impl Into<String>, mode: impl Into<String>) -> Self {
        RestorePlan {
            target: target.into(),
            mode: mode.into(),
        }
    }
}

/// A database engine: backs a service up into artifacts and restores it.
///
/// Implementors are configured with their connection settings when built
/// (`PgEngine::new(options)`); `Display` gives a human label without
/// credentials, e.g. `postgresql(app@db:5432)`.
#[async_trait]
pub trait Engine: fmt::Display + Send + Sync {
    /// The service type this engine backs up.
    fn service_type(&self) -> ServiceType;

    /// What this engine can do.
    fn capabilities(&self) -> Capabilities;

    /// The service's identity (names and address, never credentials).
    fn identity(&self) -> ServiceIdentity;

    /// Backs the service up: writes every artifact through `sink` and
    /// returns what it learnt (server version, fingerprint taken in the same
    /// snapshot as the data).
    async fn backup(&self, sink: &mut dyn ArtifactSink, ctx: &JobContext<'_>)
    -> Result<EngineInfo>;

    /// Restores the backup from `source` into the engine's target.
    /// Must verify artifacts before changing the target where the format
    /// allows it, and leave the live data untouched when it fails.
    async fn restore(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome>;

    /// How long a restore or drill whose `ctx.cancel` fired may take to
    /// stop on its own. An engine that watches the token and undoes its
    /// work (or, past its point of no return, finishes it) returns the
    /// time that can take; the default, zero, drops the job at once (its
    /// `Drop` guards clean up).
    fn cancel_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// The zstd level that suits this engine's artifacts, used when the
    /// backup's [`PipelineOptions::zstd_level`](crate::pipeline::PipelineOptions::zstd_level)
    /// names none; `None` (default): the pipeline's
    /// [`DEFAULT_ZSTD_LEVEL`](crate::pipeline::DEFAULT_ZSTD_LEVEL).
    fn zstd_level(&self) -> Option<i32> {
        None
    }

    /// Fingerprints the engine's live target, comparable with the one
    /// recorded at backup.
    async fn fingerprint(&self, ctx: &JobContext<'_>) -> Result<Fingerprint>;

    /// Where and how [`Engine::restore`] will write. The default names the
    /// identity's endpoint and database, mode `restore`.
    fn restore_plan(&self) -> RestorePlan {
        let id = self.identity();
        let target = match (id.endpoint, id.database) {
            (Some(e), Some(d)) => format!("{e}/{d}"),
            (Some(e), None) => e,
            (None, Some(d)) => d,
            (None, None) => self.to_string(),
        };
        RestorePlan::new(target, "restore")
    }

    /// The restore drill: restores the backup from `source` into a
    /// throwaway target (never the live data), fingerprints what was
    /// restored, removes the throwaway target and returns the fingerprint
    /// in [`RestoreOutcome::fingerprint`]. Called by
    /// [`run_verify`](crate::run_verify) only when
    /// [`Capabilities::verify`] is true; like `restore`, it must verify
    /// artifacts before it restores anything.
    ///
    /// The default refuses with [`Error::Unsupported`](crate::Error::Unsupported).
    async fn restore_scratch(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        let _ = (source, ctx);
        Err(crate::Error::Unsupported(format!(
            "{self}: restore drills are not supported"
        )))
    }
}
