//! Restore: verify the artifact, check the target can read the RDB, then
//! stream it: parse → `RESTORE … ABSTTL REPLACE`, pipelined with bounded
//! bytes in flight. Afterwards the key counts are compared with the
//! fingerprint recorded at backup.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_core::{ArtifactSource, Error, Fingerprint, RestoreOutcome, Result};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::backup::FORMAT_RDB;
use super::client::{Client, ServerInfo, engine_error};
use super::connection::RedisConnection;
use super::feed::{self, FeedConfig, FeedStats, Op};
use super::primary::{self, Attempt};
use super::rdb::RdbError;
use super::resp::Reply;
use super::sender;
use super::stream::CHANNEL_DEPTH;
use super::{RedisEngine, RedisLoad};

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisRestoreReport {
    /// The target, without credentials (`host:port`).
    pub target: String,
    /// `flush` (the target was emptied first), `replace` (keys in the
    /// backup replaced theirs) or `scratch` (a restore drill).
    pub mode: String,
    /// Keys restored per database (`db0`…).
    pub restored: BTreeMap<String, u64>,
    /// Keys skipped because they had expired by the time of the restore.
    pub skipped_expired: BTreeMap<String, u64>,
    /// Function libraries restored.
    pub functions: u64,
    /// How the target was loaded: `replication` (it replicated the RDB
    /// from capsule) or `commands` (pipelined `RESTORE`s).
    pub load: String,
    /// The fingerprint of the target after the restore, comparable with
    /// the one recorded at backup (only when the target was emptied first:
    /// keys per database, counting the skipped and since-expired keys).
    pub fingerprint: Option<Fingerprint>,
    /// Bytes of RDB streamed.
    pub rdb_bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

impl RedisRestoreReport {
    /// The engine-neutral outcome, with the key counts, skipped keys,
    /// functions and load path as its `details`.
    pub fn into_outcome(self) -> RestoreOutcome {
        let mut details = serde_json::Map::new();
        details.insert("restored".into(), json!(self.restored));
        details.insert("skippedExpired".into(), json!(self.skipped_expired));
        details.insert("functions".into(), json!(self.functions));
        details.insert("load".into(), json!(self.load));
        RestoreOutcome {
            target: self.target,
            mode: self.mode,
            fingerprint: self.fingerprint,
            details,
        }
    }
}

/// How the target is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Keep other keys; replace those in the backup.
    Replace,
    /// `FLUSHALL` first.
    Flush,
    /// A scratch server: `FLUSHALL` first, fingerprint after.
    Scratch,
}

impl Target {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Target::Replace => "replace",
            Target::Flush => "flush",
            Target::Scratch => "scratch",
        }
    }
}

fn db_name(db: u64) -> String {
    format!("db{db}")
}

/// Restores `source`'s RDB into the server at `conn`.
pub(crate) async fn restore(
    engine: &RedisEngine,
    conn: &RedisConnection,
    source: &dyn ArtifactSource,
    target: Target,
) -> Result<RedisRestoreReport> {
    let started = Instant::now();
    let sf = source.statefile();
    let id = sf.backup_id.to_string();
    let artifact = sf
        .data_artifact()
        .ok_or_else(|| Error::invalid("backup", format!("backup {id} has no artifacts")))?;
    if artifact.format != FORMAT_RDB {
        return Err(Error::Unsupported(format!(
            "backup {id}: artifact {} is {}, not an RDB",
            artifact.name, artifact.format
        )));
    }
    let name = artifact.name.clone();
    let load = engine.options.load;
    if target == Target::Replace && load == RedisLoad::Replication {
        return Err(Error::invalid(
            "redis load",
            "a load by replication replaces the whole target: it needs --flush",
        ));
    }
    let recorded = sf.engine.as_ref().and_then(|e| e.fingerprint.clone());
    let detail = |k: &str| {
        sf.engine
            .as_ref()
            .and_then(|e| e.details.get(k))
            .and_then(|v| v.as_u64())
    };
    let recorded_version = detail("rdbVersion").map(|v| v as u32);
    // Backups before capsule recorded it say nothing: the limit is then
    // met while the value streams.
    let largest_value = detail(super::summary::LARGEST_VALUE);
    let too_large = |len: u64| {
        Error::Unsupported(format!(
            "backup {id}: {name}: a value of {len} bytes is too large to send as a command (the \
             limit is {} bytes); restore with --flush into a target reached without TLS, which \
             loads the RDB by replication (--redis-load replication)",
            engine.options.max_value_bytes
        ))
    };

    // Nothing on the target changes before the artifact is known intact
    // and the server known able to read it.
    source.verify(&name).await?;
    tracing::debug!(
        artifact = %name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "artifact checksum verified"
    );
    let mut client = Client::connect(conn).await?;
    let endpoint = client.endpoint.clone();
    let server = ServerInfo::read(&mut client).await?;
    let check_version = |v: u32| -> Result<()> {
        match server.rdb_version {
            Some(max) if v > max => Err(Error::Unsupported(format!(
                "backup {id}: {name} is RDB version {v}; the target {endpoint} runs Redis {}, \
                 which reads RDB versions up to {max}: restore into a newer Redis",
                server.version
            ))),
            _ => Ok(()),
        }
    };
    if let Some(v) = recorded_version {
        check_version(v)?;
    }
    if let Some(max_db) = recorded.as_ref().and_then(|f| {
        f.counts
            .keys()
            .filter_map(|k| k.strip_prefix("db")?.parse::<u64>().ok())
            .max()
    }) {
        client
            .call(&[b"SELECT", max_db.to_string().as_bytes()])
            .await
            .map_err(|e| {
                Error::Unsupported(format!(
                    "backup {id} has keys in db {max_db}, which the target cannot select ({e})"
                ))
            })?;
        client.call(&[b"SELECT", b"0"]).await?;
    }

    // A replica refuses writes (READONLY), or a writable one loses them
    // at its next sync: say so before anything is sent.
    let replication = client.info("replication").await?;
    if replication.get("role").map(String::as_str) == Some("slave") {
        let field = |k: &str| replication.get(k).map_or("?", String::as_str);
        return Err(Error::Unsupported(format!(
            "backup {id}: the target {endpoint} is a replica of {}:{} (link {}), which refuses \
             writes or loses them at its next sync: nothing was changed; restore into its \
             primary, or, if it should not be a replica (a capsule killed while the target \
             loaded by replication leaves one), run REPLICAOF NO ONE on it first",
            field("master_host"),
            field("master_port"),
            field("master_link_status"),
        )));
    }

    if target == Target::Replace && load == RedisLoad::Auto && client.keyspace().await?.is_empty() {
        tracing::info!(
            target = %endpoint,
            "the target holds no keys: with --flush it would load the RDB by replication, \
             about twice as fast"
        );
    }
    // Set once the target may have changed: every error after says so.
    let mut touched = false;
    let mut failed_load = false;
    let replicable = target != Target::Replace && load != RedisLoad::Commands;
    if replicable {
        match primary::load(conn, source, &name, &check_version, recorded.as_ref()).await? {
            Attempt::Loaded(stats) => {
                let report = finish(conn, target, &stats, None, recorded.as_ref(), &id, started)
                    .await
                    .map_err(|e| touched_error(e, &endpoint, target))?;
                log_report(&id, &report);
                return Ok(report);
            }
            Attempt::Declined(reason) if load == RedisLoad::Auto => {
                tracing::info!(target = %endpoint, %reason, "not loading by replication; restoring with commands");
            }
            Attempt::Failed(reason) if load == RedisLoad::Auto => {
                (touched, failed_load) = (true, true);
                tracing::warn!(target = %endpoint, %reason, "the load by replication failed; emptying the target and restoring with commands");
            }
            Attempt::Declined(reason) => {
                return Err(engine_error(&endpoint, "restore by replication", reason));
            }
            Attempt::Failed(reason) => {
                return Err(engine_error(
                    &endpoint,
                    "restore by replication",
                    format!("{reason}; the target may have been emptied"),
                ));
            }
        }
    }
    // After a failed load the target may be empty already: say so.
    let noted = |e: Error| match failed_load {
        true => touched_error(e, &endpoint, target),
        false => e,
    };
    // By commands from here: a value no command can carry is refused
    // before anything (a FLUSHALL) is written.
    if let Some(len) = largest_value.filter(|&n| n > engine.options.max_value_bytes) {
        return Err(noted(too_large(len)));
    }
    if replicable {
        // The target replicated for a while; start afresh.
        client = Client::connect(conn).await.map_err(noted)?;
    }
    let stream = source.open(&name).await.map_err(noted)?;
    let (chunks, pump) = feed::pump(stream);
    let (ops_tx, mut ops) = mpsc::channel::<Op>(CHANNEL_DEPTH);
    let strings = probe_strings(&mut client, conn).await.map_err(noted)?;
    let config = FeedConfig {
        max_inflight: engine.options.max_inflight_bytes.max(1),
        max_value_bytes: engine.options.max_value_bytes,
        set_strings: strings.set,
        set_pxat: strings.pxat,
        mset: strings.mset,
    };
    let semaphore = Arc::new(Semaphore::new(config.max_inflight));
    let runtime = tokio::runtime::Handle::current();
    let producer = tokio::task::spawn_blocking(move || {
        feed::produce(chunks, ops_tx, semaphore, config, runtime)
    });
    let corrupt = |reason: String| Error::Corrupt {
        id: id.clone(),
        object: name.clone(),
        reason,
    };

    let sent = async {
        match ops.recv().await {
            Some(Op::Header(v)) => check_version(v)?,
            _ => return Ok(None), // the producer failed; its error follows
        }
        // A FLUSHALL cut off may have run; one the server refused did not.
        touched = true;
        if target != Target::Replace {
            // No idle limit on this one: on a large keyspace a synchronous
            // FLUSHALL may take long before its reply.
            client.set_idle_limit(None);
            let flushed = client.raw_call(&[b"FLUSHALL"]).await?;
            client.set_idle_limit(Some(conn.idle_timeout));
            if let Reply::Error(e) = flushed {
                touched = failed_load;
                let hint = if e.starts_with("READONLY") {
                    ": the target is a read-only replica; restore into its primary, or, if \
                     capsule was killed while the target loaded by replication, run REPLICAOF \
                     NO ONE on it first"
                } else {
                    ""
                };
                return Err(engine_error(&endpoint, "FLUSHALL", format!("{e}{hint}")));
            }
            tracing::info!(target = %endpoint, "target flushed");
        }
        sender::send(client, ops).await.map(Some)
    }
    .await;
    let finished = async {
        let produced = producer.await.map_err(|e| Error::Engine {
            context: format!("{engine}: restore"),
            message: format!("the RDB parser failed: {e}"),
        })?;
        // A failed download names the object; prefer it. A corrupt artifact
        // (checksum, length) and a broken download (the store, the
        // network) keep their own errors: only the first condemns the
        // backup.
        if let Ok(Err(e)) = pump.await {
            return Err(Error::from_stream(e).unwrap_or_else(|e| corrupt(e.to_string())));
        }
        let produced = produced.map_err(|e| {
            if let RdbError::TooLarge {
                what: "value", len, ..
            } = e
            {
                // The artifact's checksum held: a value this large is real,
                // and more than one RESTORE may carry.
                too_large(len)
            } else if e.is_corrupt() {
                corrupt(e.to_string())
            } else {
                Error::Unsupported(format!("backup {id}: {name}: {e}"))
            }
        })?;
        let stats = sent?.ok_or_else(|| corrupt("the RDB ended before its header".into()))?;
        if !produced.complete {
            return Err(engine_error(
                &endpoint,
                "restore",
                "stopped before the end of the RDB",
            ));
        }

        finish(
            conn,
            target,
            &produced,
            Some(&stats),
            recorded.as_ref(),
            &id,
            started,
        )
        .await
    }
    .await;
    let report = finished.map_err(|e| match touched {
        true => touched_error(e, &endpoint, target),
        false => e,
    })?;
    log_report(&id, &report);
    Ok(report)
}

/// Which commands the target takes for strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StringCommands {
    /// `SET key value`: the user may run it.
    set: bool,
    /// `SET … PXAT ms` (Redis 6.2 and later).
    pxat: bool,
    /// `MSET` of many keys: the user may run it and the target is no
    /// cluster (where one `MSET`'s keys must share a slot).
    mset: bool,
}

/// Which commands the target takes for strings, asked with `SET <probe>
/// "" XX [PXAT ms]`, which meets the same ACL and syntax checks as the
/// real commands and writes nothing (`XX`: only a key that exists, and
/// the probe's name is new), then [`probe_mset`]. Any refusal leaves
/// strings to `RESTORE`.
async fn probe_strings(client: &mut Client, conn: &RedisConnection) -> Result<StringCommands> {
    let now = chrono::Utc::now();
    let key = format!(
        "capsule:set-probe:{}:{}",
        std::process::id(),
        now.timestamp_nanos_opt().unwrap_or_default()
    );
    let at = (now.timestamp_millis() + 3_600_000).to_string();
    let probe = |pxat: bool| -> Vec<&[u8]> {
        let mut args: Vec<&[u8]> = vec![b"SET", key.as_bytes(), b"", b"XX"];
        if pxat {
            args.extend([b"PXAT".as_slice(), at.as_bytes()]);
        }
        args
    };
    let refused = |reply: &Reply| matches!(reply, Reply::Error(_));
    let with_pxat = client.raw_call(&probe(true)).await?;
    let (set, pxat) = if !refused(&with_pxat) {
        (true, true)
    } else {
        let plain = client.raw_call(&probe(false)).await?;
        if refused(&plain) {
            tracing::info!(
                target = %client.endpoint,
                reply = ?plain,
                "the target refuses SET: every key goes as RESTORE"
            );
        }
        (!refused(&plain), false)
    };
    let mset = set && probe_mset(client, conn, key.as_bytes()).await?;
    Ok(StringCommands { set, pxat, mset })
}

/// Whether the target takes `MSET`: not in cluster mode, and the command
/// queued in a transaction that is then discarded (`MULTI`, `MSET <probe>
/// ""`, `DISCARD`): the server checks a command's ACL and name when it
/// queues it, and runs nothing. Should the user not be allowed `DISCARD`, the
/// connection is replaced by a new one (the transaction dies with it).
///
/// # Errors
/// A connection failure.
async fn probe_mset(client: &mut Client, conn: &RedisConnection, key: &[u8]) -> Result<bool> {
    let cluster = client.info("cluster").await?;
    if cluster.get("cluster_enabled").map(String::as_str) == Some("1") {
        return Ok(false);
    }
    if let Reply::Error(e) = client.raw_call(&[b"MULTI"]).await? {
        tracing::debug!(target = %client.endpoint, reply = %e, "MULTI refused: strings go as SET");
        return Ok(false);
    }
    let queued = client.raw_call(&[b"MSET", key, b""]).await?;
    if let Reply::Error(e) = client.raw_call(&[b"DISCARD"]).await? {
        tracing::debug!(target = %client.endpoint, reply = %e, "DISCARD refused: reconnecting");
        *client = Client::connect(conn).await?;
    }
    match queued {
        Reply::Error(e) => {
            tracing::info!(target = %client.endpoint, reply = %e, "the target refuses MSET: strings go as SET");
            Ok(false)
        }
        _ => Ok(true),
    }
}

fn log_report(id: &str, report: &RedisRestoreReport) {
    tracing::info!(
        backup = %id, target = %report.target, load = %report.load,
        restored = report.restored.values().sum::<u64>(),
        skipped_expired = report.skipped_expired.values().sum::<u64>(),
        functions = report.functions, "restore complete"
    );
}

/// `e`, saying what a restore that failed after it began to write left on
/// the target: keys of the backup may have replaced theirs (other keys
/// untouched), or the target was emptied first.
/// What a restore cancelled at an unknown point may have left.
pub(crate) fn cancelled_note(target: Target) -> &'static str {
    match target {
        Target::Replace => {
            "the target may hold part of the backup: keys it holds may have been replaced, no \
             other key was touched; run the restore again to finish it"
        }
        Target::Flush | Target::Scratch => {
            "the target may have been emptied and hold part of the backup; run the restore again \
             to finish it"
        }
    }
}

fn touched_error(e: Error, endpoint: &str, target: Target) -> Error {
    let note = match target {
        Target::Replace => format!(
            "the target {endpoint} may hold part of the backup: keys it holds may have been \
             replaced, no other key was touched"
        ),
        Target::Flush | Target::Scratch => {
            format!("the target {endpoint} was emptied (FLUSHALL) and may hold part of the backup")
        }
    };
    match e {
        Error::Engine { context, message } => Error::Engine {
            context,
            message: format!("{message}; {note}"),
        },
        Error::Corrupt { id, object, reason } => Error::Corrupt {
            id,
            object,
            reason: format!("{reason}; {note}"),
        },
        // The keys were sent (or loaded) before the counts could differ.
        Error::VerificationFailed { id, mut mismatches } => {
            mismatches.push(note);
            Error::VerificationFailed { id, mismatches }
        }
        e => Error::Engine {
            context: e.to_string(),
            message: note,
        },
    }
}

/// The RDB's own counts (live plus expired keys per database) must be the
/// fingerprint recorded at backup.
pub(crate) fn check_streamed(
    produced: &FeedStats,
    recorded: Option<&Fingerprint>,
    id: &str,
) -> Result<()> {
    let Some(want) = recorded else {
        return Ok(());
    };
    let mismatches = want.compare(&Fingerprint {
        counts: produced.streamed(),
        values: Default::default(),
    });
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(Error::VerificationFailed {
            id: id.to_string(),
            mismatches,
        })
    }
}

/// Checks the counts and builds the report. `sent` holds the replies to
/// the `RESTORE` commands; `None` when the target loaded the RDB by
/// replication (and holds the expired keys until it expires them).
async fn finish(
    conn: &RedisConnection,
    target: Target,
    produced: &FeedStats,
    sent: Option<&sender::SendStats>,
    recorded: Option<&Fingerprint>,
    id: &str,
    started: Instant,
) -> Result<RedisRestoreReport> {
    if let Some(stats) = sent {
        for (db, n) in &produced.sent {
            let acked = stats.restored.get(db).copied().unwrap_or(0);
            if acked != *n {
                return Err(engine_error(
                    &conn.endpoint(),
                    "restore",
                    format!("db {db}: {n} keys sent, {acked} acknowledged"),
                ));
            }
        }
    }
    check_streamed(produced, recorded, id)?;
    let fingerprint = if target == Target::Replace {
        None
    } else {
        let mut client = Client::connect(conn).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let live = client.keyspace().await?;
        let mut counts = BTreeMap::new();
        let dbs: std::collections::BTreeSet<u64> = live
            .keys()
            .chain(produced.sent.keys())
            .chain(produced.expired.keys())
            .copied()
            .collect();
        for db in dbs {
            let present = live.get(&db).copied().unwrap_or(0);
            let live_keys = produced.sent.get(&db).copied().unwrap_or(0);
            let expired = produced.expired.get(&db).copied().unwrap_or(0);
            // Keys that expired since the restore began are not missing;
            // a target that loaded the RDB itself may still hold the keys
            // that had expired before (until it gets to expire them).
            let low = live_keys.saturating_sub(produced.expiring_by(db, now));
            let high = if sent.is_some() {
                live_keys
            } else {
                live_keys + expired
            };
            let count = if (low..=high).contains(&present) {
                live_keys + expired
            } else {
                present + if sent.is_some() { expired } else { 0 }
            };
            counts.insert(db_name(db), count);
        }
        Some(Fingerprint {
            counts,
            values: Default::default(),
        })
    };
    let (restored, functions, load) = match sent {
        Some(stats) => (&stats.restored, stats.functions, "commands"),
        None => (&produced.sent, produced.functions, "replication"),
    };
    Ok(RedisRestoreReport {
        target: conn.endpoint(),
        mode: target.as_str().to_string(),
        restored: restored.iter().map(|(db, n)| (db_name(*db), *n)).collect(),
        skipped_expired: produced
            .expired
            .iter()
            .map(|(db, n)| (db_name(*db), *n))
            .collect(),
        functions,
        load: load.to_string(),
        fingerprint,
        rdb_bytes: produced.bytes,
        duration: started.elapsed(),
    })
}
