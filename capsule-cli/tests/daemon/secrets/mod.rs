//! The secret sweep: one test runs every `capsule` command (each action of
//! each engine, human and `--json`, working and failing), `capsule start`
//! with trace logging (Kubernetes discovery through the fake API server, a
//! `--config` file, periodic and requested backups, restores) and every
//! operation of its API, against servers and fixtures holding known fake
//! secrets. Then it searches every stdout and stderr, both daemons' logs,
//! every API response, every object in the bucket (statefiles, artifacts,
//! leases) and every file the downloads wrote (the artifacts decrypted and
//! decompressed) for each secret, and fails naming where each one showed.
//!
//! The command surface is read from the binary's help and the API from
//! the OpenAPI document the daemon serves: a subcommand, an action, a flag
//! that can carry a secret or an endpoint added later without a run here
//! fails the test.

mod commands;
mod endpoints;
mod fixture;
mod surface;
mod sweep;

use std::path::Path;
use std::time::{Duration, Instant};

use capsule_core::{RequestType, RestoreStatus, ServiceType, Statefile, Status};
use capsule_store::Store;
use serde_json::json;

use self::commands::Runner;
use self::endpoints::{Api, Inputs};
use self::fixture::{CLUSTER, DST_DIR, Fixture};
use self::surface::Cli;
use self::sweep::Sweep;
use crate::support::{Daemon, Spec, TOKEN, block_on, serial, statefiles, wait_until};

/// Words in a flag's name that say it can carry a secret.
const SECRET_WORDS: [&str; 9] = [
    "url", "key", "password", "token", "secret", "identity", "store", "endpoint", "config",
];

#[test]
fn no_secret_reaches_any_output_log_statefile_or_api_response() {
    let _serial = serial();
    let started = Instant::now();
    let mut sweep = Sweep::default();
    let fx = Fixture::start(&mut sweep);
    let sweep = sweep;
    let scratch = tempfile::tempdir().unwrap();
    let cli = Cli::new(&sweep, scratch.path(), &fx.help_env());
    let runner = Runner::new(&cli, fx.store_forms());

    // Every command, the three engines side by side.
    std::thread::scope(|s| {
        for case in fx.engines() {
            let (runner, keys) = (&runner, &fx.keys);
            s.spawn(move || commands::engine(runner, &case, keys));
        }
        commands::global(&runner, &fx.globals());
    });
    let servers_and_cli = started.elapsed();

    daemon(&fx, &sweep, &cli);
    failing_daemon(&fx, &sweep, &cli);
    download_everything(&fx, &runner);
    record_files(&sweep, cli.dir(), cli.dir());
    record_bucket(&fx, &sweep);

    cli.assert_complete(&SECRET_WORDS, &[]);
    let (captures, bytes) = sweep.size();
    eprintln!(
        "secret sweep: {captures} captures ({bytes} bytes) searched for {} secrets; \
         servers and CLI {servers_and_cli:.1?}, total {:.1?}",
        sweep.count(),
        started.elapsed()
    );
    sweep.assert_clean();
}

/// The statefiles of the bucket.
fn bucket_statefiles(fx: &Fixture) -> Vec<Statefile> {
    statefiles(&fx.bucket.catalog(DST_DIR))
}

fn is(sf: &Statefile, service: &str, status: Status) -> bool {
    sf.service.qualified_name().as_deref() == Some(service)
        && sf.service.cluster.as_deref() == Some(CLUSTER)
        && sf.status == status
}

/// Waits (90 s at most) until the bucket's statefiles pass `check`.
fn wait_for(fx: &Fixture, d: &Daemon, what: &str, check: impl Fn(&[Statefile]) -> bool) {
    wait_until(
        Duration::from_secs(90),
        what,
        || check(&bucket_statefiles(fx)),
        || d.log_tail(30),
    );
}

/// The status of backup `id`'s last restore.
fn last_restore(sfs: &[Statefile], id: &str) -> Option<RestoreStatus> {
    sfs.iter()
        .find(|s| s.backup_id.as_str() == id)
        .and_then(|s| s.restores.last())
        .map(|r| r.status)
}

fn ids(sfs: &[Statefile]) -> Vec<String> {
    sfs.iter().map(|s| s.backup_id.to_string()).collect()
}

/// `capsule start` with trace logs, discovery and a config file: its
/// first backups (three fail: wrong passwords), then every API operation,
/// a requested backup and restores, every read again, and a delete.
fn daemon(fx: &Fixture, sweep: &Sweep, cli: &Cli) {
    let args = fx.daemon_args();
    let flags: Vec<&str> = args.iter().map(String::as_str).collect();
    cli.note(&[&["start", "--store", &fx.bucket.url][..], &flags].concat());
    let mut spec = Spec::new("sweep", &fx.bucket.url, CLUSTER).env("RUST_LOG", "trace");
    for (k, v) in &fx.config_env {
        spec = spec.env(k, v);
    }
    for a in &args {
        spec = spec.arg(a);
    }
    let mut d = spec.start();
    let (good, bad) = (fx.daemon_services(), fx.failing_services());
    wait_for(fx, &d, "the first backups (sweep-bad's failed)", |sfs| {
        good.iter()
            .all(|n| sfs.iter().any(|s| is(s, n, Status::Finished)))
            && bad
                .iter()
                .all(|n| sfs.iter().any(|s| is(s, n, Status::Failed)))
    });
    let sfs = bucket_statefiles(fx);
    let finished: Vec<&Statefile> = good[..3]
        .iter()
        .map(|n| sfs.iter().find(|s| is(s, n, Status::Finished)).unwrap())
        .collect();
    for sf in &finished {
        let to_the_secret = |a: &capsule_core::Artifact| {
            a.encryption
                .as_ref()
                .is_some_and(|e| e.recipients == [fx.k8s_public()])
        };
        assert!(
            sf.artifacts.iter().all(to_the_secret),
            "{} is not encrypted to its encryptionRef Secret's key",
            sf.backup_id
        );
    }

    let api = Api::new(sweep, d.port, TOKEN, &fx.s.wrong_token);
    let doc = api.document();
    let restore: Vec<String> = finished.iter().map(|s| s.backup_id.to_string()).collect();
    let mut inputs = Inputs {
        all: ids(&sfs),
        restore: restore.clone(),
        delete: sfs
            .iter()
            .find(|s| is(s, bad[0], Status::Failed))
            .map(|s| s.backup_id.to_string())
            .unwrap(),
        create_backup: json!({
            "serviceType": "redis",
            "cluster": CLUSTER,
            "service": good[4],
            "description": "requested by the secret sweep",
        }),
        cluster: CLUSTER.into(),
    };
    api.call_undocumented();
    api.call_all(&doc, &["GET"], &inputs);
    api.call_all(&doc, &["POST"], &inputs);
    // The restores run by the daemon decrypt with the Secret's identity;
    // Elasticsearch's is refused (its indices exist).
    wait_for(
        fx,
        &d,
        "the requested backup and the three restores",
        |sfs| {
            let requested = |s: &Statefile| s.request_type == RequestType::Manual;
            sfs.iter()
                .any(|s| requested(s) && is(s, good[4], Status::Finished))
                && restore.iter().all(|id| {
                    matches!(
                        last_restore(sfs, id),
                        Some(RestoreStatus::Finished | RestoreStatus::Failed)
                    )
                })
        },
    );
    let sfs = bucket_statefiles(fx);
    for id in &restore[..2] {
        let status = last_restore(&sfs, id);
        assert_eq!(
            status,
            Some(RestoreStatus::Finished),
            "restore of {id}\n{}",
            d.log_tail(30)
        );
    }
    inputs.all = ids(&sfs);
    api.call_all(&doc, &["GET"], &inputs);
    api.call_all(&doc, &["DELETE"], &inputs);
    api.assert_every_operation_answered(&doc);

    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "the daemon exited with {status}");
    record_log(sweep, &d, "\"level\":\"TRACE\"");
}

/// A daemon whose store has a wrong secret key: its text logs while the
/// store refuses it, and its answers to every read.
fn failing_daemon(fx: &Fixture, sweep: &Sweep, cli: &Cli) {
    let store = fx.wrong_key_url();
    let args = ["--log-format", "text"];
    cli.note(&[&["start", "--store", &store][..], &args].concat());
    let mut d = Spec::new("sweep-wrong-key", &store, CLUSTER)
        .env("RUST_LOG", "trace")
        .arg(args[0])
        .arg(args[1])
        .start();
    wait_until(
        Duration::from_secs(20),
        "the wrong key to be refused",
        || d.get("/readyz").status == 503,
        || d.log_tail(30),
    );
    let api = Api::new(sweep, d.port, TOKEN, &fx.s.wrong_token);
    let doc = api.document();
    let inputs = Inputs {
        all: fx.legacy_ids.clone(),
        restore: Vec::new(),
        delete: String::new(),
        create_backup: json!({}),
        cluster: CLUSTER.into(),
    };
    api.call_undocumented();
    api.call_all(&doc, &["GET"], &inputs);
    d.terminate(Duration::from_secs(30));
    record_log(sweep, &d, " TRACE ");
}

/// Records `d`'s log, which must hold trace lines (`trace_mark`).
fn record_log(sweep: &Sweep, d: &Daemon, trace_mark: &str) {
    let log = d.log();
    assert!(
        log.contains(trace_mark),
        "no trace lines in the log of {}:\n{}",
        d.name,
        d.log_tail(20)
    );
    sweep.record(format!("log of daemon {}", d.name), &log);
}

/// Downloads (decrypted, decompressed) every finished backup not
/// downloaded yet, so the artifacts' contents are searched too.
fn download_everything(fx: &Fixture, r: &Runner) {
    for sf in bucket_statefiles(fx) {
        let id = sf.backup_id.to_string();
        if sf.status != Status::Finished || r.cli.dumpdir().join(&id).exists() {
            continue;
        }
        let command = match sf.service_type {
            ServiceType::Postgresql => "pg",
            ServiceType::Redis => "redis",
            _ => "es",
        };
        r.ok(&[
            command,
            "--download",
            "--id",
            &id,
            "--identity-file",
            &fx.keys.identity,
        ]);
    }
}

/// Records every file under `dir`.
fn record_files(sweep: &Sweep, root: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            record_files(sweep, root, &path);
        } else {
            let name = path.strip_prefix(root).unwrap().display().to_string();
            sweep.record(format!("file {name}"), std::fs::read(&path).unwrap());
        }
    }
}

/// Records every object of the bucket.
fn record_bucket(fx: &Fixture, sweep: &Sweep) {
    let root = Store::from_url(&fx.bucket.url).unwrap();
    let objects = block_on(root.list("")).unwrap();
    assert!(objects.len() > 40, "{} objects", objects.len());
    for o in objects {
        let bytes = block_on(root.get(&o.key)).unwrap().bytes;
        sweep.record(format!("bucket object {}", o.key), &bytes);
    }
}
