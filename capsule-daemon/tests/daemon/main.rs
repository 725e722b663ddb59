//! capsule-daemon in-process: the API on a real router bound to
//! 127.0.0.1:0, the listing latency with 10,000 backups, leases on a real
//! S3 server (SeaweedFS), Kubernetes discovery against a fake API server
//! (plans, watches, Secrets read at job start, encryption Secrets).

mod api;
mod deploy;
mod discovery;
mod discovery_encryption;
mod discovery_watch;
mod latency;
mod leases;
mod support;
