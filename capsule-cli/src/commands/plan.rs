//! `capsule plan`: prints the backup plan the daemon would run (what
//! Kubernetes discovery and `--config` find, with every problem) and exits.
//! The daemon builds its target source with [`target_source`], the same
//! code path.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use capsule_daemon::{
    DaemonConfig, DefaultEngines, DiscoveryOptions, DiscoveryPlan, KubeDiscovery, NsWhitelist,
    StaticTargets, TargetSource,
};
use capsule_store::Store;
use chrono::Utc;
use clap::Args;

use crate::args::GlobalArgs;
use crate::commands::start::CliStores;
use crate::exit::UsageError;
use crate::output;
use crate::table::{Cell, Table};

/// How long `capsule plan` waits for a store to say when a target is next due.
const DUE_TIMEOUT: Duration = Duration::from_secs(10);

/// `capsule plan`: the plan the daemon would run.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The static services (TOML; see docs/daemon.md), merged with the
    /// discovered ones (the file wins on a conflict).
    #[arg(long, value_name = "FILE", env = "CNVRG_CAPSULE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The cluster recorded in statefiles (else the config file's, else `default`).
    #[arg(long, value_name = "NAME", env = "CNVRG_CAPSULE_CLUSTER")]
    pub cluster: Option<String>,
}

/// Whether Kubernetes discovery runs: `--auto-discovery` (default true)
/// and a cluster to ask (`--kubeconfig`, or running in a pod).
pub fn discovery_enabled(g: &GlobalArgs) -> bool {
    g.auto_discovery
        && (g.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())
}

/// The daemon's target source: Kubernetes discovery (a full resync every
/// `resync`, watches in between) plus the config file's services when
/// discovery is enabled, else the config file alone.
///
/// # Errors
/// [`UsageError`] for a bad `--ns-whitelist` or config file; the
/// kubeconfig's error.
pub async fn target_source(
    g: &GlobalArgs,
    config: Option<&DaemonConfig>,
    cluster: &str,
    store: &Store,
    resync: Duration,
) -> Result<Arc<dyn TargetSource>> {
    let stores = CliStores {
        global: store.clone(),
        access: g.access_key.clone().zip(g.secret_key.clone()),
        ca_file: g.ca_file.clone(),
    };
    let static_targets = match config {
        Some(c) => StaticTargets::from_config(c, cluster, &DefaultEngines, &stores)
            .map_err(|e| UsageError::new(e.to_string()))?,
        None => StaticTargets::new("no --config file", Vec::new()),
    };
    if !discovery_enabled(g) {
        return Ok(Arc::new(static_targets));
    }
    let discovery = discovery(g, cluster, store, Some(resync)).await?;
    let config_targets = static_targets.targets().await?;
    Ok(Arc::new(discovery.with_config_targets(config_targets)))
}

async fn discovery(
    g: &GlobalArgs,
    cluster: &str,
    store: &Store,
    resync: Option<Duration>,
) -> Result<KubeDiscovery> {
    let whitelist: NsWhitelist = g.ns_whitelist.parse().map_err(UsageError::new)?;
    let mut options = DiscoveryOptions::new(cluster)
        .with_whitelist(whitelist)
        .with_dst_dir(store.prefix())
        .with_ca_file(g.ca_file.clone());
    if let Some(resync) = resync {
        options = options.with_resync(resync);
    }
    Ok(KubeDiscovery::from_kubeconfig(g.kubeconfig.as_deref(), options).await?)
}

/// Runs `capsule plan`.
///
/// # Errors
/// [`UsageError`] for bad flags or config; the API server unreachable.
pub async fn run(g: &GlobalArgs, args: &PlanArgs) -> Result<()> {
    let store = crate::store_args::build(g)?;
    let config = match &args.config {
        Some(path) => Some(DaemonConfig::load(path).map_err(|e| UsageError::new(e.to_string()))?),
        None => None,
    };
    let cluster = args
        .cluster
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.cluster.clone()))
        .unwrap_or_else(|| "default".to_string());
    let stores = CliStores {
        global: store.clone(),
        access: g.access_key.clone().zip(g.secret_key.clone()),
        ca_file: g.ca_file.clone(),
    };
    let config_targets = match &config {
        Some(c) => {
            StaticTargets::from_config(c, &cluster, &DefaultEngines, &stores)
                .map_err(|e| UsageError::new(e.to_string()))?
                .targets()
                .await?
        }
        None => Vec::new(),
    };
    let mut plan = if discovery_enabled(g) {
        discovery(g, &cluster, &store, None)
            .await?
            .with_config_targets(config_targets)
            .plan()
            .await?
    } else {
        let mut p = DiscoveryPlan::default();
        p.merge_config(config_targets);
        p
    };
    let now = Utc::now();
    let timings = capsule_daemon::Timings::default();
    let due = plan.targets.iter_mut().map(|t| {
        let cluster = cluster.clone();
        async move {
            let name = t.name.clone();
            if tokio::time::timeout(
                DUE_TIMEOUT,
                t.compute_next_due(&cluster, timings.retry_after, timings.lease_ttl, now),
            )
            .await
            .is_err()
            {
                tracing::debug!(service = %name, "the store did not answer in time");
                t.next_due = Some(format!(
                    "unknown (the store did not answer in {}s)",
                    DUE_TIMEOUT.as_secs()
                ));
            }
        }
    });
    futures::future::join_all(due).await;
    render(g.json, &plan)
}

fn render(json: bool, plan: &DiscoveryPlan) -> Result<()> {
    if json {
        output::json(&serde_json::to_value(plan)?)?;
        return Ok(());
    }
    if plan.targets.is_empty() {
        output::out("no services to back up")?;
    } else {
        let mut table = Table::new(&[
            "SERVICE", "TYPE", "SOURCE", "ENDPOINT", "STORE", "DST-DIR", "PERIOD", "ROTATION",
            "NEXT DUE",
        ]);
        for t in &plan.targets {
            let source = match t.also_in {
                Some(other) => format!("{} (also {other})", t.origin),
                None => t.origin.to_string(),
            };
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            table.row(vec![
                Cell::plain(&t.name),
                Cell::plain(t.service_type.to_string()),
                Cell::plain(source),
                Cell::plain(dash(&t.endpoint)),
                Cell::plain(dash(&t.store)),
                Cell::plain(dash(&t.dst_dir)),
                Cell::plain(&t.period),
                Cell::plain(t.rotation.to_string()),
                if t.problem.is_some() {
                    Cell::styled("not planned", output::status_style("failed", false))
                } else {
                    Cell::plain(dash(&t.next_due))
                },
            ]);
        }
        for line in table.render() {
            output::out(&line)?;
        }
    }
    let problems: Vec<_> = plan.all_problems().collect();
    if !problems.is_empty() {
        output::out("")?;
        output::out(&format!("problems ({}):", problems.len()))?;
        for p in problems {
            output::out(&format!("  {p}"))?;
        }
    }
    Ok(())
}
