//! Conditional updates racing: from the same starting version exactly one
//! writer wins, and read-modify-write loops lose no update, on SeaweedFS
//! and on a local directory (two independent stores, and two processes).

use std::process::Command;

use bytes::Bytes;
use capsule_store::{Error, Store};

use crate::support::{file_store, s3_builder, unique_name};

const KEY: &str = "race/statefile.json";

/// `rounds` times: two tasks update from the same version at once.
async fn race_same_version(a: Store, b: Store, rounds: usize) {
    let mut version = a.put(KEY, Bytes::from_static(b"start")).await.unwrap();
    for round in 0..rounds {
        let (ta, tb) = (a.clone(), b.clone());
        let (va, vb) = (version.clone(), version.clone());
        let ha =
            tokio::spawn(
                async move { ta.update(KEY, Bytes::from(format!("a{round}")), &va).await },
            );
        let hb =
            tokio::spawn(
                async move { tb.update(KEY, Bytes::from(format!("b{round}")), &vb).await },
            );
        let (ra, rb) = (ha.await.unwrap(), hb.await.unwrap());
        let (winner, new_version) = match (ra, rb) {
            (Ok(v), Err(Error::Conflict { .. })) => ("a", v),
            (Err(Error::Conflict { .. }), Ok(v)) => ("b", v),
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        };
        let got = a.get(KEY).await.unwrap();
        assert_eq!(
            got.bytes,
            Bytes::from(format!("{winner}{round}")),
            "round {round}"
        );
        assert_eq!(got.version.etag, new_version.etag, "round {round}");
        version = new_version;
    }
}

/// Increments the counter at `key` `times` times, retrying on conflict.
async fn increment(store: &Store, key: &str, times: usize) -> usize {
    let mut conflicts = 0;
    for _ in 0..times {
        loop {
            let current = store.get(key).await.unwrap();
            let n: u64 = std::str::from_utf8(&current.bytes)
                .unwrap()
                .parse()
                .unwrap();
            match store
                .update(key, Bytes::from((n + 1).to_string()), &current.version)
                .await
            {
                Ok(_) => break,
                Err(Error::Conflict { .. }) => conflicts += 1,
                Err(e) => panic!("increment: {e}"),
            }
        }
    }
    conflicts
}

async fn counter(store: &Store, key: &str) -> u64 {
    let bytes = store.get(key).await.unwrap().bytes;
    std::str::from_utf8(&bytes).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seaweedfs_one_winner_per_round() {
    let bucket = unique_name("t");
    test_support::seaweedfs::SeaweedFs::shared().create_bucket(&bucket);
    // Two stores with their own connection pools, as two daemons would be.
    let a = s3_builder(&bucket).with_prefix("p").build().unwrap();
    let b = s3_builder(&bucket).with_prefix("p").build().unwrap();
    race_same_version(a, b, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seaweedfs_loses_no_increment() {
    let bucket = unique_name("t");
    test_support::seaweedfs::SeaweedFs::shared().create_bucket(&bucket);
    let a = s3_builder(&bucket).build().unwrap();
    let b = s3_builder(&bucket).build().unwrap();
    a.put("counter", Bytes::from_static(b"0")).await.unwrap();
    let (ta, tb) = (a.clone(), b.clone());
    let ha = tokio::spawn(async move { increment(&ta, "counter", 25).await });
    let hb = tokio::spawn(async move { increment(&tb, "counter", 25).await });
    ha.await.unwrap();
    hb.await.unwrap();
    assert_eq!(counter(&a, "counter").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_one_winner_per_round_across_store_instances() {
    let dir = tempfile::tempdir().unwrap();
    let a = file_store(dir.path(), "p");
    let b = file_store(dir.path(), "p");
    race_same_version(a, b, 50).await;
}

const CHILD_ROOT: &str = "CAPSULE_STORE_TEST_CAS_ROOT";
const INCREMENTS: usize = 50;

/// Two processes increment one counter in a local directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_loses_no_increment_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path(), "p");
    store
        .put("counter", Bytes::from_static(b"0"))
        .await
        .unwrap();
    let child = tokio::process::Command::from(child_command(dir.path()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the test binary again as the second writer");
    let conflicts = increment(&store, "counter", INCREMENTS).await;
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "second writer process failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the second writer ran"
    );
    assert_eq!(counter(&store, "counter").await, 2 * INCREMENTS as u64);
    eprintln!("cross-process increments: {conflicts} conflicts retried in this process");
}

fn child_command(root: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "concurrency::local_second_writer_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ROOT, root);
    cmd
}

/// The second writer of [`local_loses_no_increment_across_processes`]; run
/// only by it (does nothing without its environment variable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by local_loses_no_increment_across_processes"]
async fn local_second_writer_process() {
    let Some(root) = std::env::var_os(CHILD_ROOT) else {
        return;
    };
    let store = file_store(std::path::Path::new(&root), "p");
    increment(&store, "counter", INCREMENTS).await;
}
