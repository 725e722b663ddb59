//! capsule-engines integration tests against real servers: a PostgreSQL
//! cluster started by test-support (one per test binary, a database per
//! test), osmem-server (OpenSearch-compatible, one per Elasticsearch
//! test), `file://` stores and SeaweedFS S3.

mod common;
mod elasticsearch;
mod postgresql;
mod redis;
