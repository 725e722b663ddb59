//! [`StandInEngine`]: an engine that describes a service but runs no job.
//! Kubernetes discovery plans a target with one (its credentials are read
//! only when a job starts), and a job whose credentials cannot be read runs
//! with one, so `run_backup` / `run_restore` record the failure in the
//! statefile like any other.

use std::fmt;

use async_trait::async_trait;
use capsule_core::{
    ArtifactSink, ArtifactSource, Capabilities, Engine, EngineInfo, Fingerprint, JobContext,
    RestoreOutcome, RestorePlan, ServiceIdentity, ServiceType,
};

/// Answers what a service is (type, identity, capabilities, restore plan,
/// label) as the engine it was taken from did, holds none of its
/// credentials, and fails every job with `reason`.
#[derive(Clone, Debug)]
pub(crate) struct StandInEngine {
    service_type: ServiceType,
    capabilities: Capabilities,
    identity: ServiceIdentity,
    restore_plan: RestorePlan,
    label: String,
    reason: String,
}

impl StandInEngine {
    /// The description of `engine`, failing jobs with `reason`.
    pub(crate) fn of(engine: &dyn Engine, reason: impl Into<String>) -> Self {
        StandInEngine {
            service_type: engine.service_type(),
            capabilities: engine.capabilities(),
            identity: engine.identity(),
            restore_plan: engine.restore_plan(),
            label: engine.to_string(),
            reason: reason.into(),
        }
    }

    fn refuse(&self) -> capsule_core::Error {
        capsule_core::Error::invalid("credentials", self.reason.clone())
    }
}

impl fmt::Display for StandInEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[async_trait]
impl Engine for StandInEngine {
    fn service_type(&self) -> ServiceType {
        self.service_type
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn identity(&self) -> ServiceIdentity {
        self.identity.clone()
    }

    fn restore_plan(&self) -> RestorePlan {
        self.restore_plan.clone()
    }

    async fn backup(
        &self,
        _sink: &mut dyn ArtifactSink,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<EngineInfo> {
        Err(self.refuse())
    }

    async fn restore(
        &self,
        _source: &dyn ArtifactSource,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<RestoreOutcome> {
        Err(self.refuse())
    }

    async fn fingerprint(&self, _ctx: &JobContext<'_>) -> capsule_core::Result<Fingerprint> {
        Err(self.refuse())
    }

    async fn restore_scratch(
        &self,
        _source: &dyn ArtifactSource,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<RestoreOutcome> {
        Err(self.refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_engines::{PgEngine, PgOptions};

    #[test]
    fn describes_the_engine_without_its_password() {
        let pg = PgEngine::new(PgOptions::from_url("postgres://u:pw-Zq9@db:5433/app").unwrap());
        let s = StandInEngine::of(&pg, "credentials are read when a job starts");
        assert_eq!(s.to_string(), pg.to_string());
        assert_eq!(s.identity().endpoint, pg.identity().endpoint);
        assert_eq!(s.restore_plan(), pg.restore_plan());
        assert_eq!(s.service_type(), ServiceType::Postgresql);
        assert!(!format!("{s:?} {s}").contains("pw-Zq9"));
        assert_eq!(
            s.refuse().to_string(),
            "credentials are read when a job starts"
        );
    }
}
