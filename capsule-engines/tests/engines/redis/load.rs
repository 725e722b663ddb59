//! Restore by replication (`--flush`, drills): the target replicates the
//! RDB from capsule. It must give the source's digest, fall back to
//! `RESTORE` commands where the target cannot replicate, and leave the
//! target as it was, a writable primary with its data, whenever the
//! restore fails or is interrupted before the RDB was complete.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use capsule_core::{ArtifactSource, ByteStream, Error, Statefile};
use capsule_engines::{RedisEngine, RedisLoad, RedisOptions};
use test_support::redis::{Redis, RedisConfig};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::support::*;

fn flush_engine(redis: &Redis, load: RedisLoad) -> RedisEngine {
    RedisEngine::new(
        RedisOptions::from_url(&redis.url())
            .unwrap()
            .with_flush(true)
            .with_load(load),
    )
}

fn role(redis: &Redis) -> String {
    info_field(redis, "role")
}

/// A server replicating `primary`, once its link is up.
fn replica_of(primary: &Redis) -> Redis {
    let port = primary.port.to_string();
    let replica =
        Redis::start_with(RedisConfig::default().with_args(&["--replicaof", "127.0.0.1", &port]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while info_field(&replica, "master_link_status") != "up" {
        assert!(Instant::now() < deadline, "the replica did not sync");
        std::thread::sleep(Duration::from_millis(50));
    }
    replica
}

fn info_field(redis: &Redis, field: &str) -> String {
    redis
        .cmd(&[b"INFO", b"replication"])
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
        .unwrap_or_default()
}

/// A target holding data of its own, which a failed restore must keep.
fn target_with_data(config: RedisConfig) -> Redis {
    let target = Redis::start_with(config);
    target.cmd(&[b"SET", b"sentinel", b"untouched"]);
    target
}

fn assert_untouched(target: &Redis) {
    assert_eq!(role(target), "master", "the target was left a replica");
    assert_eq!(target.cmd(&[b"GET", b"sentinel"]).text(), "untouched");
    assert_eq!(target.keyspace(), vec![(0, 1)]);
    // and it takes writes again
    assert_eq!(target.cmd(&[b"SET", b"w", b"1"]).text(), "OK");
}

#[tokio::test]
async fn a_flush_restore_loads_by_replication_with_a_password_and_matches_the_source() {
    let (source, fc, id) = every_type_backup().await;
    let target = Redis::start_with(RedisConfig::default().with_password("s3cret"));
    target.cmd(&[b"SET", b"stray", b"key"]);
    let engine = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_flush(true),
    );
    let src = fc.catalog.artifact_source(&id).await.unwrap();
    let report = engine.restore_with_report(&src).await.unwrap();
    assert_eq!(report.load, "replication");
    assert_eq!(report.mode, "flush");
    assert_eq!(report.functions, 1);
    assert_eq!(target.digest(), source.digest());
    assert_eq!(target.keyspace(), source.keyspace());
    assert_eq!(role(&target), "master");
    assert_eq!(target.cmd(&[b"SET", b"after", b"1"]).text(), "OK");
    let recorded = src.statefile().engine.clone().unwrap().fingerprint.unwrap();
    assert_eq!(
        recorded.compare(report.fingerprint.as_ref().unwrap()),
        Vec::<String>::new()
    );

    // The same restore with RESTORE commands gives the same server.
    target.cmd(&[b"SET", b"stray", b"key"]);
    restores_with(&target, RedisLoad::Commands, &src, "commands", &source).await;
}

/// Restores `src` into `target` with `load`, which must load it `how` and
/// leave `target` holding `source`'s data.
async fn restores_with(
    target: &Redis,
    load: RedisLoad,
    src: &dyn ArtifactSource,
    how: &str,
    source: &Redis,
) {
    let report = flush_engine(target, load)
        .restore_with_report(src)
        .await
        .unwrap();
    assert_eq!(report.load, how);
    assert_eq!(target.digest(), source.digest());
}

#[tokio::test]
async fn a_target_refusing_replicaof_is_restored_with_commands_or_refused_untouched() {
    let (source, fc, id) = every_type_backup().await;
    let target = target_with_data(RedisConfig::default().with_args(&[
        "--rename-command",
        "REPLICAOF",
        "",
        "--rename-command",
        "SLAVEOF",
        "",
    ]));
    let src = fc.catalog.artifact_source(&id).await.unwrap();

    let e = flush_engine(&target, RedisLoad::Replication)
        .restore_with_report(&src)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("REPLICAOF"), "{msg}");
    assert_untouched(&target);

    restores_with(&target, RedisLoad::Auto, &src, "commands", &source).await;

    // Without --flush, a load by replication is a usage error.
    let e = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_load(RedisLoad::Replication),
    )
    .restore_with_report(&src)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("--flush"), "{e}");
}

#[tokio::test]
async fn a_target_with_replicas_is_restored_with_commands() {
    let (source, fc, id) = every_type_backup().await;
    let target = Redis::start();
    let _replica = replica_of(&target);
    assert_eq!(info_field(&target, "connected_slaves"), "1");
    let src = fc.catalog.artifact_source(&id).await.unwrap();
    restores_with(&target, RedisLoad::Auto, &src, "commands", &source).await;
    assert_eq!(info_field(&target, "connected_slaves"), "1");
}

/// A replica refuses writes (or loses them at its next sync): every
/// restore into one is refused before anything is sent, saying whose
/// replica it is.
#[tokio::test]
async fn a_restore_into_a_replica_is_refused_untouched() {
    let (source, fc, id) = every_type_backup().await;
    let primary = Redis::start();
    primary.cmd(&[b"SET", b"primary-key", b"v"]);
    let port = primary.port;
    let replica = replica_of(&primary);
    let digest = replica.digest();
    let src = fc.catalog.artifact_source(&id).await.unwrap();
    for flush in [false, true] {
        let e = RedisEngine::new(
            RedisOptions::from_url(&replica.url())
                .unwrap()
                .with_flush(flush),
        )
        .restore_with_report(&src)
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("is a replica of 127.0.0.1:{port}"))
                && e.contains("nothing was changed"),
            "{e}"
        );
        assert_eq!(replica.digest(), digest);
        assert_eq!(role(&replica), "slave");
    }
    assert_ne!(digest, source.digest());
}

/// The target receives the whole RDB and fails to load it: here its
/// `dump.rdb` is a directory, so the rename of the received file fails.
/// `auto` empties the target and restores with commands; `replication`
/// fails, saying the target may have been emptied.
#[tokio::test]
async fn a_target_failing_to_load_the_transfer_is_restored_with_commands() {
    let (source, fc, id) = every_type_backup().await;
    let target = Redis::start();
    std::fs::create_dir(target.dir().join("dump.rdb")).unwrap();
    let src = fc.catalog.artifact_source(&id).await.unwrap();

    let e = flush_engine(&target, RedisLoad::Replication)
        .restore_with_report(&src)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may have been emptied"), "{e}");
    assert_eq!(role(&target), "master");

    restores_with(&target, RedisLoad::Auto, &src, "commands", &source).await;
}

/// A replica loads past `maxmemory`; with `noeviction` the target would
/// then refuse every write, so the restore fails saying so.
#[tokio::test]
async fn a_load_over_maxmemory_with_noeviction_fails_saying_so() {
    let (_source, fc, id) = every_type_backup().await;
    let target = Redis::start_with(RedisConfig::default().with_args(&[
        "--maxmemory",
        "2mb",
        "--maxmemory-policy",
        "noeviction",
    ]));
    let e = flush_engine(&target, RedisLoad::Auto)
        .restore_with_report(&fc.catalog.artifact_source(&id).await.unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("over its maxmemory") && msg.contains("noeviction"),
        "{msg}"
    );
    assert_eq!(role(&target), "master");
}

/// Runs `engine`'s restore of `src` in a task and drops it (as Ctrl-C
/// does) once `ready` holds, within 20 s, and before the restore ends.
async fn drop_restore_once(
    engine: RedisEngine,
    src: impl ArtifactSource + 'static,
    what: &str,
    mut ready: impl FnMut() -> bool,
) {
    let mut restore = tokio::spawn(async move { engine.restore_with_report(&src).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        if restore.is_finished() {
            panic!(
                "the restore ended before {what}: {:?}",
                (&mut restore).await
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    restore.abort();
    assert!(restore.await.unwrap_err().is_cancelled());
}

/// What the wrapped source's stream does after its first `after` bytes.
#[derive(Clone, Copy)]
enum Fault {
    /// Fails with an I/O error that carries no typed error (as a decoder
    /// does): the restore calls the artifact corrupt.
    Error,
    /// Fails as a broken download does: the typed error of the store or
    /// the network inside the I/O error (`Error::from_stream`).
    Broken,
    /// Stalls until dropped.
    Stall,
}

/// A catalog's artifact source whose stream fails or stalls part way, or
/// (without a fault) whose statefile was edited.
struct Faulty {
    inner: Box<dyn ArtifactSource>,
    statefile: Statefile,
    after: usize,
    fault: Option<Fault>,
}

#[async_trait]
impl ArtifactSource for Faulty {
    fn statefile(&self) -> &Statefile {
        &self.statefile
    }
    async fn verify(&self, name: &str) -> capsule_core::Result<()> {
        self.inner.verify(name).await
    }
    async fn open(&self, name: &str) -> capsule_core::Result<ByteStream> {
        let Some(fault) = self.fault else {
            return self.inner.open(name).await;
        };
        let mut head = vec![0u8; self.after];
        self.inner
            .open(name)
            .await?
            .read_exact(&mut head)
            .await
            .unwrap();
        Ok(Box::new(FaultyStream {
            head: std::io::Cursor::new(head),
            fault,
        }))
    }
}

struct FaultyStream {
    head: std::io::Cursor<Vec<u8>>,
    fault: Fault,
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if (self.head.position() as usize) < self.head.get_ref().len() {
            return std::pin::Pin::new(&mut self.head).poll_read(cx, buf);
        }
        match self.fault {
            Fault::Error => {
                std::task::Poll::Ready(Err(std::io::Error::other("checksum mismatch (injected)")))
            }
            Fault::Broken => std::task::Poll::Ready(Err(std::io::Error::other(Error::io(
                "download of redis-x/dump.rdb.zst",
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer (injected)",
                ),
            )))),
            Fault::Stall => std::task::Poll::Pending,
        }
    }
}

async fn faulty(fc: &FileCatalog, id: &str, fault: Option<Fault>) -> Faulty {
    let inner = fc.catalog.artifact_source(id).await.unwrap();
    Faulty {
        statefile: inner.statefile().clone(),
        inner: Box::new(inner),
        // Past the chunks capsule has sent to the target, into the one it
        // holds back (256 KiB each).
        after: 768 << 10,
        fault,
    }
}

/// The backup `id` with a fingerprint claiming one key more in db0 than
/// its RDB holds.
async fn with_one_key_too_many(fc: &FileCatalog, id: &str) -> Faulty {
    let mut src = faulty(fc, id, None).await;
    let fp = src
        .statefile
        .engine
        .as_mut()
        .unwrap()
        .fingerprint
        .as_mut()
        .unwrap();
    *fp.counts.get_mut("db0").unwrap() += 1;
    src
}

#[tokio::test]
async fn a_stream_failing_mid_transfer_leaves_the_target_as_it_was() {
    let (_source, fc, id) = every_type_backup().await;
    let target = target_with_data(RedisConfig::default());
    let src = faulty(&fc, &id, Some(Fault::Error)).await;
    let e = flush_engine(&target, RedisLoad::Replication)
        .restore_with_report(&src)
        .await
        .unwrap_err();
    match &e {
        Error::Corrupt { object, reason, .. } => {
            assert_eq!(object, "dump.rdb.zst");
            assert!(reason.contains("injected"), "{reason}");
            assert!(!reason.contains("emptied"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_untouched(&target);
}

/// A download that breaks mid-restore is not a corrupt backup: the error
/// says what broke, whichever way the target loads.
#[tokio::test]
async fn a_broken_download_is_not_called_a_corrupt_backup() {
    let (_source, fc, id) = every_type_backup().await;
    for load in [RedisLoad::Replication, RedisLoad::Commands] {
        let target = target_with_data(RedisConfig::default());
        let src = faulty(&fc, &id, Some(Fault::Broken)).await;
        let e = flush_engine(&target, load)
            .restore_with_report(&src)
            .await
            .unwrap_err();
        assert!(!matches!(e, Error::Corrupt { .. }), "{load:?}: {e:?}");
        assert!(!e.to_string().contains("corrupt"), "{load:?}: {e}");
        assert!(
            e.to_string()
                .contains("connection reset by peer (injected)"),
            "{load:?}: {e}"
        );
        if load == RedisLoad::Replication {
            assert_untouched(&target);
        } else {
            assert!(e.to_string().contains("was emptied (FLUSHALL)"), "{e}");
        }
    }
}

/// A value larger than a command may carry (`max_value_bytes`, 512 MiB by
/// default; 1 KiB here) is not corruption: the error says so and how to
/// restore that backup instead. The backup records its largest value, so
/// the restore refuses before the `FLUSHALL`; a backup made before it did
/// (no `largestValueBytes`) meets the limit as the value streams.
#[tokio::test]
async fn a_value_too_large_for_a_command_is_refused_and_not_called_corrupt() {
    let (_source, fc, id) = every_type_backup().await;
    let recorded = &fc.statefile_json(&id)["engine"]["details"]["largestValueBytes"];
    assert!(recorded.as_u64().unwrap() > 1024, "{recorded}");
    for recorded in [true, false] {
        let target = target_with_data(RedisConfig::default());
        let mut src = faulty(&fc, &id, None).await;
        if !recorded {
            let details = &mut src.statefile.engine.as_mut().unwrap().details;
            assert!(details.remove("largestValueBytes").is_some());
        }
        let engine = RedisEngine::new(
            RedisOptions::from_url(&target.url())
                .unwrap()
                .with_flush(true)
                .with_load(RedisLoad::Commands)
                .with_max_value_bytes(1024),
        );
        let e = engine.restore_with_report(&src).await.unwrap_err();
        let msg = e.to_string();
        assert!(!matches!(e, Error::Corrupt { .. }), "{e:?}");
        assert!(!msg.contains("corrupt"), "{msg}");
        assert!(msg.contains("too large to send as a command"), "{msg}");
        assert!(msg.contains("--redis-load replication"), "{msg}");
        if recorded {
            assert_untouched(&target);
            assert!(!msg.contains("emptied"), "{msg}");
        } else {
            assert!(msg.contains("was emptied (FLUSHALL)"), "{msg}");
        }
    }
}

#[tokio::test]
async fn an_interrupted_restore_detaches_the_target_with_its_data() {
    let (_source, fc, id) = every_type_backup().await;
    let target = target_with_data(RedisConfig::default());
    let src = faulty(&fc, &id, Some(Fault::Stall)).await;
    let engine = flush_engine(&target, RedisLoad::Replication);
    // Ctrl-C drops the restore once the target replicates from capsule
    // and the transfer began.
    drop_restore_once(engine, src, "the target started syncing", || {
        role(&target) == "slave" && info_field(&target, "master_sync_in_progress") == "1"
    })
    .await;
    assert_untouched(&target);
}

/// The RDB's key counts are checked against the recorded fingerprint
/// before the target is committed: a mismatch fails with the target as it
/// was.
#[tokio::test]
async fn counts_differing_from_the_fingerprint_are_refused_before_the_target_changes() {
    let (_source, fc, id) = every_type_backup().await;
    let target = target_with_data(RedisConfig::default());
    let src = with_one_key_too_many(&fc, &id).await;
    let e = flush_engine(&target, RedisLoad::Replication)
        .restore_with_report(&src)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::VerificationFailed { .. }), "{e:?}");
    assert!(e.to_string().contains("db0"), "{e}");
    assert_untouched(&target);
}

/// By commands the keys go out as the RDB streams, so counts that differ
/// from the fingerprint show only at the end: the error says what
/// happened to the target.
#[tokio::test]
async fn counts_differing_after_a_restore_by_commands_say_the_target_was_emptied() {
    let (_source, fc, id) = every_type_backup().await;
    let target = target_with_data(RedisConfig::default());
    let src = with_one_key_too_many(&fc, &id).await;
    let e = flush_engine(&target, RedisLoad::Commands)
        .restore_with_report(&src)
        .await
        .unwrap_err();
    let Error::VerificationFailed { mismatches, .. } = &e else {
        panic!("{e:?}");
    };
    assert!(mismatches.iter().any(|m| m.contains("db0")), "{e}");
    assert!(
        e.to_string()
            .contains("was emptied (FLUSHALL) and may hold part of the backup"),
        "{e}"
    );
    assert_eq!(target.cmd(&[b"EXISTS", b"sentinel"]).text(), "0");
}

/// The targets that load straight from the socket: `swapdb` (aside, then
/// swapped in) and `on-empty-db` (when it holds no keys). Both give the
/// source's digest; a `swapdb` target keeps its data when the stream
/// fails mid-transfer.
#[tokio::test]
async fn diskless_loading_targets_restore_and_keep_their_data_on_a_failure() {
    let (source, fc, id) = every_type_backup().await;
    let src = fc.catalog.artifact_source(&id).await.unwrap();
    for mode in ["swapdb", "on-empty-db"] {
        let target =
            Redis::start_with(RedisConfig::default().with_args(&["--repl-diskless-load", mode]));
        restores_with(
            &target,
            RedisLoad::Replication,
            &src,
            "replication",
            &source,
        )
        .await;
    }
    let target =
        target_with_data(RedisConfig::default().with_args(&["--repl-diskless-load", "swapdb"]));
    let e = flush_engine(&target, RedisLoad::Replication)
        .restore_with_report(&faulty(&fc, &id, Some(Fault::Error)).await)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert_untouched(&target);
}

/// Ctrl-C while the target loads: the target answers `LOADING` until it
/// is done; the dropped restore waits for that and detaches it, holding
/// the backup. (`key-load-delay` slows the load to ~2 s.)
#[tokio::test]
async fn a_restore_dropped_while_the_target_loads_detaches_it_after_the_load() {
    let (source, fc, id) = every_type_backup().await;
    let target = Redis::start_with(RedisConfig::default().with_args(&[
        "--key-load-delay",
        "100",
        // Answer clients while loading every 4 KiB, not every 2 MB.
        "--loading-process-events-interval-bytes",
        "4096",
    ]));
    let engine = flush_engine(&target, RedisLoad::Replication);
    let src = fc.catalog.artifact_source(&id).await.unwrap();
    let loading = || {
        target
            .cmd(&[b"INFO", b"persistence"])
            .text()
            .lines()
            .any(|l| l == "loading:1")
    };
    drop_restore_once(engine, src, "the target is loading", loading).await;
    assert_eq!(role(&target), "master");
    assert_eq!(target.digest(), source.digest());
}
