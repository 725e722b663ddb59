//! The backup plan: what discovery (and the configuration file) found,
//! with the problems that kept a service out. `capsule plan` prints it;
//! the daemon runs its targets.

use std::fmt;

use capsule_core::{Due, ServiceType, periodic_due};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::targets::Target;

/// Where a target was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum TargetOrigin {
    /// A `CnvrgApp` resource (`spec.dbs`).
    CnvrgApp,
    /// An annotated PersistentVolumeClaim.
    #[serde(rename = "PVC")]
    Pvc,
    /// The static configuration file.
    #[serde(rename = "config")]
    Config,
}

impl fmt::Display for TargetOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetOrigin::CnvrgApp => "CnvrgApp",
            TargetOrigin::Pvc => "PVC",
            TargetOrigin::Config => "config",
        })
    }
}

/// Why a service (or a whole namespace) is not planned: the Kubernetes
/// resource and the field at fault. Never holds a secret value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DiscoveryProblem {
    /// The namespace.
    pub namespace: String,
    /// `Kind namespace/name` (`CnvrgApp cnvrg/cnvrgapp`, `Secret cnvrg/pg-creds`).
    pub resource: String,
    /// The field (`spec.dbs.pg.backup.period`, `data.POSTGRES_PASSWORD`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl DiscoveryProblem {
    /// A problem.
    pub fn new(
        namespace: impl Into<String>,
        resource: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DiscoveryProblem {
            namespace: namespace.into(),
            resource: resource.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DiscoveryProblem {
    /// `Secret cnvrg/pg-creds, field data.POSTGRES_PASSWORD: missing`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, field {}: {}",
            self.resource, self.field, self.message
        )
    }
}

/// One service of the plan. `target` is `None` when a problem keeps it out.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PlannedTarget {
    /// `namespace/name`.
    pub name: String,
    /// The service type.
    pub service_type: ServiceType,
    /// Where it was found (the winner, when both sources name it).
    pub origin: TargetOrigin,
    /// The other source that also names it (the loser of a conflict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also_in: Option<TargetOrigin>,
    /// `host:port`, when the credentials could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The store URL, credentials stripped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The prefix inside the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_dir: Option<String>,
    /// The period (`24h`).
    pub period: String,
    /// Finished periodic backups kept.
    pub rotation: u32,
    /// When the next periodic backup is due (`now`, a time, or `running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<String>,
    /// Where the target's own age recipients come from, and how many
    /// (`Secret cnvrg/backup-keys: 1 recipient, and an identity`); `None`:
    /// the daemon's setting applies. Never a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// What keeps it out of the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<DiscoveryProblem>,
    /// The target the daemon runs.
    #[serde(skip)]
    pub target: Option<Target>,
}

impl PlannedTarget {
    /// A planned target from a built [`Target`].
    pub fn from_target(target: Target, origin: TargetOrigin) -> Self {
        let schedule = target.schedule.clone();
        PlannedTarget {
            name: target.name.clone(),
            service_type: target.service_type,
            origin,
            also_in: None,
            endpoint: target.engine.identity().endpoint,
            store: Some(target.store.url().to_string()),
            dst_dir: Some(target.store.prefix().to_string()),
            period: schedule
                .as_ref()
                .map(|s| s.period.to_string())
                .unwrap_or_else(|| "-".into()),
            rotation: schedule.map(|s| s.rotation).unwrap_or(0),
            next_due: None,
            encryption: target.encryption.as_ref().map(|r| recipients_text(r.len())),
            problem: None,
            target: Some(target),
        }
    }

    /// Fills [`PlannedTarget::next_due`] from the target's backups in its
    /// store (a store that cannot be listed sets it to `unknown (…)`).
    pub async fn compute_next_due(
        &mut self,
        cluster: &str,
        retry_after: std::time::Duration,
        owner_timeout: std::time::Duration,
        now: DateTime<Utc>,
    ) {
        let Some(target) = &self.target else { return };
        let Some(schedule) = &target.schedule else {
            self.next_due = Some("never (requests only)".into());
            return;
        };
        let catalog = capsule_core::Catalog::new(target.store.clone());
        let entries = match catalog.list(&capsule_core::ListFilter::default()).await {
            Ok(e) => e,
            Err(e) => {
                self.next_due = Some(format!("unknown (the store does not answer: {e})"));
                return;
            }
        };
        let mine: Vec<_> = entries
            .into_iter()
            .filter_map(|e| e.statefile)
            .filter(|sf| target.owns(sf, cluster))
            .collect();
        let due = periodic_due(&mine, &schedule.due_policy(retry_after, owner_timeout), now);
        self.next_due = Some(match due {
            Due::Now(_) => "now".into(),
            Due::At(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            Due::InProgress(id) => format!("running ({id})"),
            _ => "unknown".into(),
        });
    }
}

/// What a discovery pass found.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct DiscoveryPlan {
    /// Every service named by a source, planned or not.
    pub targets: Vec<PlannedTarget>,
    /// Problems not tied to one service (a namespace that cannot be listed,
    /// a resource that cannot be read).
    pub problems: Vec<DiscoveryProblem>,
}

impl DiscoveryPlan {
    /// The targets the daemon runs.
    pub fn runnable(&self) -> Vec<Target> {
        self.targets
            .iter()
            .filter_map(|t| t.target.clone())
            .collect()
    }

    /// Every problem: the plan's and the targets'.
    pub fn all_problems(&self) -> impl Iterator<Item = &DiscoveryProblem> {
        self.problems
            .iter()
            .chain(self.targets.iter().filter_map(|t| t.problem.as_ref()))
    }

    /// Adds `other`'s targets (static configuration) that discovery does
    /// not name; a name in both keeps the configuration file's target (an
    /// explicit setting wins) and logs the conflict.
    pub fn merge_config(&mut self, config: Vec<Target>) {
        for t in config {
            let planned = PlannedTarget::from_target(t, TargetOrigin::Config);
            match self
                .targets
                .iter_mut()
                .find(|p| p.name == planned.name && p.service_type == planned.service_type)
            {
                Some(found) => {
                    tracing::warn!(service = %planned.name, r#type = %planned.service_type, discovered = %found.origin,
                        "the configuration file and Kubernetes both name this service: the configuration file wins");
                    let loser = found.origin;
                    *found = planned;
                    found.also_in = Some(loser);
                }
                None => self.targets.push(planned),
            }
        }
    }
}

/// `1 recipient`, `2 recipients`: what `capsule plan` says of a target's
/// own age recipients (a count, never a key).
pub(crate) fn recipients_text(n: usize) -> String {
    format!("{n} recipient{}", if n == 1 { "" } else { "s" })
}
