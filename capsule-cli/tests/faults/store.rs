//! The object store of the suite: one SeaweedFS the suite may crash and
//! start again, a bucket per engine, and the checks a user can make on
//! what is in it (every `finished` backup's artifacts downloaded and
//! hashed).

use std::collections::BTreeSet;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use capsule_core::{Catalog, ListFilter, RestoreStatus, Statefile, Status};
use capsule_store::{Secret, StoreBuilder};
use sha2::{Digest, Sha256};
use test_support::seaweedfs::SeaweedFs;
use test_support::tcp_proxy::TcpProxy;

use crate::support::block_on;

/// Backups live under this folder of each engine's bucket.
pub const DST_DIR: &str = "faults";

/// The suite's SeaweedFS, and what does not change when it restarts.
pub struct S3 {
    server: RwLock<SeaweedFs>,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

/// The suite's object store, started on first use.
pub fn s3() -> &'static S3 {
    static S3: OnceLock<S3> = OnceLock::new();
    S3.get_or_init(|| {
        let server = SeaweedFs::start();
        S3 {
            port: server.port,
            access_key: server.access_key.clone(),
            secret_key: server.secret_key.clone(),
            server: RwLock::new(server),
        }
    })
}

impl S3 {
    /// Held by every run that needs the store up.
    pub fn shared(&self) -> RwLockReadGuard<'_, SeaweedFs> {
        self.server.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held by a run that crashes the store (no other run meanwhile).
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, SeaweedFs> {
        self.server.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// One engine's bucket, reached directly (checks, daemon) or through a
/// proxy (the runs under fault).
pub struct Bucket {
    pub name: String,
    /// In front of the S3 port: the runs' network to the store.
    pub proxy: TcpProxy,
    pub catalog: Catalog,
}

impl Bucket {
    pub fn new(engine: &str) -> Bucket {
        let s3 = s3();
        let name = format!("faults-{engine}-{}", std::process::id());
        s3.shared().create_bucket(&name);
        let store = StoreBuilder::from_url(&direct_url(&name))
            .expect("store url")
            .with_access_key(
                Secret::new(s3.access_key.clone()),
                Secret::new(s3.secret_key.clone()),
            )
            .with_prefix(DST_DIR)
            .build()
            .expect("store");
        Bucket {
            name,
            proxy: TcpProxy::start(s3.port),
            catalog: Catalog::new(store),
        }
    }

    /// The store flags of a `capsule` run, through the proxy.
    pub fn flags(&self) -> Vec<String> {
        let s3 = s3();
        vec![
            "--store".into(),
            format!(
                "s3://{}?endpoint=http://127.0.0.1:{}&region=us-east-1&allow_http=true",
                self.name, self.proxy.port
            ),
            "--access-key".into(),
            s3.access_key.clone(),
            "--secret-key".into(),
            s3.secret_key.clone(),
            "--dst-dir".into(),
            DST_DIR.into(),
        ]
    }

    /// The store URL with its keys, straight to SeaweedFS (the daemon's).
    pub fn direct_url_with_keys(&self) -> String {
        let s3 = s3();
        format!(
            "{}&access_key_id={}&secret_access_key={}",
            direct_url(&self.name),
            s3.access_key,
            s3.secret_key
        )
    }

    /// The backup folders (and `.leases`), retried while the store settles
    /// after a restart.
    pub fn ids(&self) -> BTreeSet<String> {
        let mut last = None;
        for _ in 0..50 {
            match block_on(self.catalog.store().list_dirs("")) {
                Ok(dirs) => return dirs.into_iter().collect(),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cannot list {}: {:?}", self.name, last)
    }

    /// The statefile of backup `id`; `None` when there is none.
    pub fn load(&self, id: &str) -> Option<Statefile> {
        let mut last = None;
        for _ in 0..50 {
            match block_on(self.catalog.describe(id)) {
                Ok(sf) => return Some(sf),
                Err(capsule_core::Error::BackupNotFound { .. }) => return None,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "cannot read the statefile of {id} in {}: {:?}",
            self.name, last
        )
    }

    /// Every readable statefile, retried while the store settles after a
    /// restart.
    pub fn statefiles(&self) -> Vec<Statefile> {
        let mut last = None;
        for _ in 0..50 {
            match block_on(self.catalog.list(&ListFilter::default())) {
                Ok(entries) => return entries.into_iter().filter_map(|e| e.statefile).collect(),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cannot list {}: {:?}", self.name, last)
    }

    /// Invariant 1: every artifact of `finished` backup `sf` is present,
    /// with the recorded size and SHA-256 (downloaded and hashed here).
    /// Returns what is wrong, empty when all is well.
    pub fn check_artifacts(&self, sf: &Statefile) -> Vec<String> {
        let id = sf.backup_id.as_str();
        let mut wrong = Vec::new();
        if sf.artifacts.is_empty() {
            wrong.push(format!("backup {id} is finished without artifacts"));
        }
        for a in &sf.artifacts {
            let key = Catalog::key(id, &a.name);
            let got = (0..20).find_map(|_| match block_on(self.catalog.store().get(&key)) {
                Ok(o) => Some(Ok(o.bytes)),
                Err(capsule_store::Error::NotFound { .. }) => Some(Err("missing".to_string())),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    None
                }
            });
            let bytes = match got {
                Some(Ok(b)) => b,
                Some(Err(why)) => {
                    wrong.push(format!("backup {id} is finished but {} is {why}", a.name));
                    continue;
                }
                None => panic!("cannot read {key} from {}", self.name),
            };
            if a.size_bytes != Some(bytes.len() as u64) {
                wrong.push(format!(
                    "backup {id}: {} is {} bytes, the statefile says {:?}",
                    a.name,
                    bytes.len(),
                    a.size_bytes
                ));
            }
            let sha: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if a.sha256.as_deref() != Some(sha.as_str()) {
                wrong.push(format!(
                    "backup {id}: {} has SHA-256 {sha}, the statefile says {:?}",
                    a.name, a.sha256
                ));
            }
        }
        wrong
    }
}

fn direct_url(bucket: &str) -> String {
    format!(
        "s3://{bucket}?endpoint=http://127.0.0.1:{}&region=us-east-1&allow_http=true",
        s3().port
    )
}

/// Backups still `running`, and backups with a restore entry still
/// `running`: what a crashed run leaves for the daemon to mark failed.
pub fn unfinished(list: &[Statefile]) -> (Vec<String>, Vec<String>) {
    let backups = list
        .iter()
        .filter(|s| s.status == Status::Running)
        .map(|s| s.backup_id.to_string())
        .collect();
    let restores = list
        .iter()
        .filter(|s| {
            s.restores
                .iter()
                .any(|r| r.status == RestoreStatus::Running)
        })
        .map(|s| s.backup_id.to_string())
        .collect();
    (backups, restores)
}
