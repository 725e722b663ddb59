//! Compare-and-swap for `file://` stores.
//!
//! object_store's `LocalFileSystem` has no `PutMode::Update`. Writers of a
//! local store take an exclusive `flock` on a lock file, so "read the
//! current version, compare, write (atomic rename)" is one step for every
//! process and every `Store` sharing the directory.
//!
//! Lock files live in `<root>/.capsule-locks/`, striped by a hash of the
//! object path into at most 256 files (a key's lock is always the same file;
//! unrelated keys rarely share one, and then only wait a little). Listings
//! hide that directory.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The hidden directory holding the lock files, at the bucket root.
pub(crate) const LOCK_DIR: &str = ".capsule-locks";

/// Lock files of one local bucket root.
#[derive(Debug)]
pub(crate) struct LocalLocks {
    dir: PathBuf,
}

/// Holds an exclusive lock until dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

impl LocalLocks {
    pub(crate) fn new(root: &Path) -> Self {
        LocalLocks {
            dir: root.join(LOCK_DIR),
        }
    }

    /// Waits for the exclusive lock covering object `path` (the full path
    /// from the bucket root).
    pub(crate) async fn lock(&self, path: &str) -> std::io::Result<LockGuard> {
        let file = self.dir.join(format!("{:02x}.lock", stripe(path)));
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&file)?;
            file.lock()?;
            Ok(LockGuard { _file: file })
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// FNV-1a of `path`, folded to a byte: stable across processes and builds.
fn stripe(path: &str) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash ^ (hash >> 8) ^ (hash >> 16) ^ (hash >> 24)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn stripes_are_stable_and_spread() {
        assert_eq!(stripe("a/statefile.json"), stripe("a/statefile.json"));
        let distinct: std::collections::BTreeSet<u8> = (0..1000)
            .map(|i| stripe(&format!("p/{i}/statefile.json")))
            .collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lock_excludes_other_holders() {
        let dir = tempfile::tempdir().unwrap();
        let in_section = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            // independent LocalLocks instances: separate open file descriptions
            let locks = LocalLocks::new(dir.path());
            let in_section = Arc::clone(&in_section);
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let _guard = locks.lock("k").await.unwrap();
                    assert_eq!(in_section.fetch_add(1, Ordering::SeqCst), 0);
                    tokio::task::yield_now().await;
                    in_section.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(dir.path().join(LOCK_DIR).is_dir());
    }
}
