//! `capsule start` as real processes: the deployment shapes, failover,
//! rotation, restores, the API from outside, fuzzing and the dashboard,
//! `capsule plan` and Kubernetes discovery (against a fake API server),
//! and the secret sweep over every command, endpoint, log and object.
//! Needs SeaweedFS, PostgreSQL, Redis, osmem-server, schemathesis and
//! chromium (scripts/setup-test-deps.sh).

mod api;
mod encryption;
mod failover;
mod plan;
mod restore;
mod rotation;
mod secrets;
mod shapes;
mod support;
