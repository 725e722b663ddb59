//! `capsule start` as real processes: the deployment shapes, failover,
//! rotation, restores, the API from outside, fuzzing and the dashboard,
//! `capsule plan` and Kubernetes discovery (against a fake API server).
//! Needs SeaweedFS, PostgreSQL, schemathesis and chromium
//! (scripts/setup-test-deps.sh).

mod api;
mod encryption;
mod failover;
mod plan;
mod restore;
mod rotation;
mod shapes;
mod support;
