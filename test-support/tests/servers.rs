//! Starts each server for real and checks setup calls and teardown.

use std::path::Path;
use std::time::Duration;

use test_support::azurite::Azurite;
use test_support::process::wait_for_tcp;
use test_support::seaweedfs::SeaweedFs;

fn gone(pid: u32) -> bool {
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn seaweedfs_starts_creates_buckets_and_stops() {
    let s3 = SeaweedFs::start();
    assert!(wait_for_tcp(s3.port, Duration::from_secs(1)));
    s3.create_bucket("first");
    s3.create_bucket("first");
    assert!(
        s3.s3_url("first")
            .starts_with("s3://first?endpoint=http://127.0.0.1:")
    );
    assert!(!s3.s3_url("first").contains(&s3.secret_key));
    assert!(s3.s3_url_with_credentials("first").contains(&s3.secret_key));
    let (pid, dir) = (s3.process().pid(), s3.process().work_dir().to_path_buf());
    drop(s3);
    assert!(gone(pid), "weed {pid} still running");
    assert!(!dir.exists());
}

/// Each bucket is a SeaweedFS collection with volumes of its own; the test
/// binaries create dozens. With the volume count left to SeaweedFS (free disk
/// / volume size) a small CI disk ran out after a few buckets and every later
/// PUT failed with `500 InternalError`.
#[test]
fn seaweedfs_accepts_writes_into_many_buckets() {
    let s3 = SeaweedFs::start();
    for i in 0..60 {
        let bucket = format!("many-{i:02}");
        s3.create_bucket(&bucket);
        s3.put_object(&bucket, "object", format!("payload {i}").as_bytes())
            .unwrap_or_else(|e| panic!("bucket {i} of 60: {e}"));
    }
}

#[test]
fn azurite_starts_creates_containers_and_stops() {
    let az = Azurite::start();
    az.create_container("first");
    az.create_container("first");
    assert_eq!(
        az.endpoint,
        format!("http://127.0.0.1:{}/devstoreaccount1", az.port)
    );
    let pid = az.process().pid();
    drop(az);
    assert!(gone(pid), "azurite {pid} still running");
}
