//! The S3 server the benchmarks talk to: a throwaway SeaweedFS on loopback,
//! started by test-support and stopped when dropped.

use std::sync::Arc;

use anyhow::{Context, Result};
use capsule_store::Store;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use test_support::seaweedfs::SeaweedFs;

/// A running SeaweedFS.
#[derive(Debug)]
pub struct S3Server {
    server: SeaweedFs,
}

impl S3Server {
    /// Starts SeaweedFS (blocking work, off the async workers) and creates
    /// `buckets`.
    ///
    /// # Errors
    /// When the server does not start (test-support panics with its log).
    pub async fn start(buckets: &[&str]) -> Result<Self> {
        let buckets: Vec<String> = buckets.iter().map(|b| b.to_string()).collect();
        let server = tokio::task::spawn_blocking(move || {
            let server = SeaweedFs::start();
            for b in &buckets {
                server.create_bucket(b);
            }
            server
        })
        .await
        .context("starting SeaweedFS (run scripts/setup-test-deps.sh if weed is missing)")?;
        Ok(S3Server { server })
    }

    /// The server's process group, for CPU accounting.
    pub fn pgid(&self) -> u32 {
        self.server.process().pid()
    }

    /// Makes SeaweedFS give back the space of deleted objects now (its
    /// master compacts volumes with garbage only every 15 minutes): without
    /// it, a benchmark that writes and deletes tens of GiB fills the disk.
    /// Best effort: a failure is printed, not returned.
    pub fn vacuum(&self) {
        let pid = self.server.process().pid();
        let master = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|cmdline| {
                cmdline.split(|b| *b == 0).find_map(|arg| {
                    std::str::from_utf8(arg)
                        .ok()?
                        .strip_prefix("-master.port=")?
                        .parse::<u16>()
                        .ok()
                })
            });
        let Some(port) = master else {
            eprintln!("  (vacuum skipped: SeaweedFS master port not found)");
            return;
        };
        match test_support::process::http_request(
            port,
            "GET",
            "/vol/vacuum?garbageThreshold=0.0001",
            &[],
            b"",
        ) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => eprintln!("  (vacuum: HTTP {}: {})", r.status, r.body),
            Err(e) => eprintln!("  (vacuum: {e})"),
        }
    }

    /// The capsule-store URL of `bucket`, credentials included.
    pub fn url(&self, bucket: &str) -> String {
        self.server.s3_url_with_credentials(bucket)
    }

    /// A fresh capsule [`Store`] (own connection pool) on `bucket`.
    ///
    /// # Errors
    /// When the URL is refused.
    pub fn store(&self, bucket: &str) -> Result<Store> {
        Store::from_url(&self.url(bucket)).context("building the SeaweedFS store")
    }

    /// A plain `object_store` S3 client on `bucket`, configured like
    /// capsule-store's (path style, plain http, same region and keys), for
    /// the reference measurements.
    ///
    /// # Errors
    /// When object_store refuses the configuration.
    pub fn raw(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let s = &self.server;
        let store = AmazonS3Builder::new()
            .with_endpoint(&s.endpoint)
            .with_region(&s.region)
            .with_bucket_name(bucket)
            .with_access_key_id(&s.access_key)
            .with_secret_access_key(&s.secret_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .context("building the object_store S3 client")?;
        Ok(Arc::new(store))
    }
}
