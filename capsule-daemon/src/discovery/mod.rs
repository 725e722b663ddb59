//! Kubernetes discovery: the services to back up, found in the cluster.
//!
//! Two sources name a service (its identity is `namespace/pvc`):
//! - `CnvrgApp` resources (`mlops.cnvrg.io/v1`): each enabled
//!   `spec.dbs.pg|redis|es`, with the operator's defaults;
//! - PersistentVolumeClaims annotated `capsule.mlops.cnvrg.io/backup: "true"`
//!   (`serviceType`, `bucketRef`, `credsRef`, `rotation`, `period`,
//!   `encryptionRef`).
//!
//! A service named by both is one target, and **the `CnvrgApp` wins**: the
//! annotations are the operator's mirror of its `backup` block and may lag
//! behind it; a difference is logged as a warning. Targets of the static
//! configuration file win over both (an explicit setting).
//!
//! **When the plan is made.** As the daemon's [`TargetSource`], discovery
//! lists both sources (per whitelisted namespace, or cluster-wide and
//! filtered when the whitelist has a glob) at start, then again at every
//! full resync (default every 60 s) and within seconds of a relevant
//! change: after the first plan it watches both sources (kube-runtime
//! watchers, the same scopes as the lists; a lost watch is resumed after
//! kube-runtime's backoff) and a new, changed or deleted annotated PVC or
//! `CnvrgApp` marks the plan stale and wakes the daemon
//! ([`TargetSource::changed`]).
//!
//! **Secrets.** Planning reads each target's credentials Secret (`credsRef`)
//! and bucket Secret (`bucketRef`, and the GCP key Secret it names) only to
//! check that they exist and hold every key; the database credentials are
//! dropped at once. A job reads them again when it starts
//! ([`crate::JobCredentials`]) and holds them only while it runs, so a rotated
//! password or bucket key is used by the next job without a restart. The
//! bucket credentials read at planning also open the store the daemon lists
//! between jobs (the daemon keeps the first store it opened for a bucket,
//! so that listing does not follow a rotated key until a restart). No value
//! is logged or written.
//!
//! **Encryption.** A target may name a Secret of its namespace holding the
//! age keys of its backups (`encryptionRef`: the `backup` block's field, or
//! the annotation): `recipients`, the public keys (`age1…`) one a line with
//! `#` comments (parsed as a recipients file,
//! [`capsule_core::Recipients::parse_file`]), and optionally `identity`, the
//! secret keys (`AGE-SECRET-KEY-1…`) its restores decrypt with besides the
//! daemon's own. Its recipients replace the daemon-wide ones for that
//! target. Planning checks that the Secret exists and parses (the planned
//! [`Target::encryption`] holds the recipients; the identity is dropped);
//! each job reads it again ([`crate::JobTarget::encryption`],
//! [`crate::JobTarget::identities`]), so rotated recipients apply to the
//! next backup, and a Secret gone or broken fails the job rather than
//! letting it write plaintext.
//!
//! A target whose Secret, key, encryption key, period or service type is
//! wrong is reported ([`DiscoveryProblem`]: logs,
//! `capsule_discovery_problems` in `/metrics`, `capsule plan`) and the
//! others are still planned. A job whose Secret is gone (or a key missing,
//! or the read forbidden) when it starts fails with that problem in its
//! statefile, and the plan is made again at once.

mod credentials;
mod plan;
mod secrets;
mod sources;
mod watch;
mod whitelist;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use capsule_core::ServiceIdentity;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::standin::StandInEngine;
use crate::targets::{Target, TargetSchedule, TargetSource};

pub use plan::{DiscoveryPlan, DiscoveryProblem, PlannedTarget, TargetOrigin};
pub use sources::{ANNOTATION_PREFIX, DEFAULT_BUCKET_REF};
pub use whitelist::NsWhitelist;

use secrets::{SecretCredentials, SecretReader};
use sources::Candidate;
use watch::Watched;

/// How discovery runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DiscoveryOptions {
    /// The cluster recorded in statefiles.
    pub cluster: String,
    /// The namespaces scanned.
    pub whitelist: NsWhitelist,
    /// The prefix (dst-dir) inside each bucket.
    pub dst_dir: String,
    /// How often the whole cluster is read again (a full resync); the
    /// daemon asks more often and gets the last answer in between, unless
    /// a watch saw a change.
    pub resync: Duration,
    /// Whether the daemon watches the sources after its first plan, to
    /// plan again within seconds of a change (default true).
    pub watch: bool,
    /// A PEM file of CA certificates trusted for the https endpoints of the
    /// bucket Secrets (a MinIO with a private CA), besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl DiscoveryOptions {
    /// Options for `cluster`: every namespace, dst-dir
    /// `cnvrg-smart-backups`, resync every 60 s, watches on.
    pub fn new(cluster: impl Into<String>) -> Self {
        DiscoveryOptions {
            cluster: cluster.into(),
            whitelist: NsWhitelist::default(),
            dst_dir: "cnvrg-smart-backups".into(),
            resync: Duration::from_secs(60),
            watch: true,
            ca_file: None,
        }
    }

    /// Sets the namespaces scanned.
    pub fn with_whitelist(mut self, whitelist: NsWhitelist) -> Self {
        self.whitelist = whitelist;
        self
    }

    /// Sets the prefix inside each bucket.
    pub fn with_dst_dir(mut self, dst_dir: impl Into<String>) -> Self {
        self.dst_dir = dst_dir.into();
        self
    }

    /// Sets the full resync interval.
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Turns the watches on or off (off: only the full resync).
    pub fn with_watch(mut self, watch: bool) -> Self {
        self.watch = watch;
        self
    }

    /// Trusts the CA certificates of `ca_file` (PEM) for the bucket
    /// Secrets' https endpoints.
    pub fn with_ca_file(mut self, ca_file: Option<PathBuf>) -> Self {
        self.ca_file = ca_file;
        self
    }
}

#[derive(Default)]
struct State {
    last: Option<(Instant, Vec<Target>)>,
    problems: Vec<DiscoveryProblem>,
    targets: usize,
    resyncs: u64,
    errors: u64,
}

/// The Kubernetes [`TargetSource`] (plus the configuration file's targets,
/// which win on a conflict). Its watches stop when it is dropped.
pub struct KubeDiscovery {
    client: Client,
    options: DiscoveryOptions,
    config_targets: Vec<Target>,
    state: Mutex<State>,
    watched: Arc<Watched>,
    watches: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for KubeDiscovery {
    fn drop(&mut self) {
        for task in self.watches.get_mut().unwrap_or_else(|e| e.into_inner()) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for KubeDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDiscovery")
            .field("options", &self.options)
            .field("config_targets", &self.config_targets.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn cnvrgapp_resource() -> ApiResource {
    ApiResource {
        group: "mlops.cnvrg.io".into(),
        version: "v1".into(),
        api_version: "mlops.cnvrg.io/v1".into(),
        kind: "CnvrgApp".into(),
        plural: "cnvrgapps".into(),
    }
}

fn kube_error(message: impl Into<String>) -> Error {
    Error::Targets {
        source_name: "kubernetes".into(),
        message: message.into(),
    }
}

/// What a failed API call means for discovery.
pub(crate) enum Failure {
    /// The API answered with an error status (403, 404…).
    Api(u16, String),
    /// The API cannot be reached.
    Transport(String),
}

pub(crate) fn failure(e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => Failure::Api(s.code, s.message),
        other => Failure::Transport(other.to_string()),
    }
}

impl KubeDiscovery {
    /// Discovery through `client`.
    pub fn new(client: Client, options: DiscoveryOptions) -> Self {
        KubeDiscovery {
            client,
            options,
            config_targets: Vec::new(),
            state: Mutex::new(State::default()),
            watched: Arc::new(Watched::default()),
            watches: Mutex::new(Vec::new()),
        }
    }

    /// Discovery with the cluster of `kubeconfig`, else the in-cluster
    /// service account, else `$KUBECONFIG` / `~/.kube/config`.
    ///
    /// # Errors
    /// [`Error::Targets`] when no configuration is found or it is invalid.
    pub async fn from_kubeconfig(
        kubeconfig: Option<&Path>,
        options: DiscoveryOptions,
    ) -> Result<Self> {
        // Several rustls providers are linked in (kube's ring, object
        // store's): choose one for the process, or rustls panics.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| kube_error(format!("kubeconfig {}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| kube_error(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => Config::infer()
                .await
                .map_err(|e| kube_error(format!("no Kubernetes configuration: {e}")))?,
        };
        let client = Client::try_from(config).map_err(|e| kube_error(e.to_string()))?;
        Ok(KubeDiscovery::new(client, options))
    }

    /// Adds the configuration file's targets (they win over discovered ones).
    pub fn with_config_targets(mut self, targets: Vec<Target>) -> Self {
        self.config_targets = targets;
        self
    }

    /// The options.
    pub fn options(&self) -> &DiscoveryOptions {
        &self.options
    }

    /// Reads the cluster once and builds the plan: every service named by
    /// a `CnvrgApp` or an annotated PVC in the whitelisted namespaces (and
    /// the configuration file's), with its Secrets read, or the problem
    /// that keeps it out.
    ///
    /// # Errors
    /// [`Error::Targets`] when the API server cannot be reached. An API
    /// error (403 on a namespace, a missing Secret) is a problem in the
    /// plan instead.
    pub async fn plan(&self) -> Result<DiscoveryPlan> {
        let mut plan = DiscoveryPlan::default();
        let scopes: Vec<Option<String>> = match self.options.whitelist.concrete() {
            Some(list) => list.into_iter().map(Some).collect(),
            None => vec![None],
        };
        let mut candidates: Vec<(Candidate, Option<TargetOrigin>)> = Vec::new();
        // What the plan is built from, for the watches to compare with.
        let mut seen: HashMap<watch::Key, String> = HashMap::new();
        let ar = cnvrgapp_resource();
        for scope in &scopes {
            let where_ = scope
                .as_deref()
                .map_or("cluster-wide".to_string(), |n| format!("in namespace {n}"));
            let ns_of = |s: &Option<String>| s.clone().unwrap_or_else(|| "*".into());
            // CnvrgApps first: they win a conflict.
            let apps: Api<DynamicObject> = match scope {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                None => Api::all_with(self.client.clone(), &ar),
            };
            match apps.list(&ListParams::default()).await {
                Ok(list) => {
                    for app in list.items {
                        let ns = app.metadata.namespace.clone().unwrap_or_default();
                        if !self.options.whitelist.matches(&ns) {
                            continue;
                        }
                        let name = app.metadata.name.clone().unwrap_or_default();
                        let spec = app.data.get("spec").cloned().unwrap_or_default();
                        seen.insert(
                            (watch::Kind::CnvrgApp, ns.clone(), name.clone()),
                            watch::cnvrgapp_fingerprint(&spec),
                        );
                        let (found, problems) = sources::from_cnvrgapp(&ns, &name, &spec);
                        plan.problems.extend(problems);
                        candidates.extend(found.into_iter().map(|c| (c, None)));
                    }
                }
                Err(e) => match failure(e) {
                    Failure::Api(404, _) => {
                        tracing::debug!(scope = %where_, "no CnvrgApp resource type (CRD not installed)");
                    }
                    Failure::Api(code, m) => plan.problems.push(DiscoveryProblem::new(
                        ns_of(scope),
                        format!("CnvrgApp list {where_}"),
                        "-",
                        format!("the API answered {code}: {m}"),
                    )),
                    Failure::Transport(m) => {
                        return Err(kube_error(format!("listing CnvrgApps {where_}: {m}")));
                    }
                },
            }
            let pvcs: Api<PersistentVolumeClaim> = match scope {
                Some(ns) => Api::namespaced(self.client.clone(), ns),
                None => Api::all(self.client.clone()),
            };
            match pvcs.list(&ListParams::default()).await {
                Ok(list) => {
                    for pvc in list.items {
                        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
                        if !self.options.whitelist.matches(&ns) {
                            continue;
                        }
                        let name = pvc.metadata.name.clone().unwrap_or_default();
                        let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
                        if let Some(fp) = watch::pvc_fingerprint(&annotations) {
                            seen.insert((watch::Kind::Pvc, ns.clone(), name.clone()), fp);
                        }
                        match sources::from_pvc(&ns, &name, &annotations) {
                            None => {}
                            Some(Err(p)) => plan.problems.push(p),
                            Some(Ok(c)) => merge(&mut candidates, c),
                        }
                    }
                }
                Err(e) => match failure(e) {
                    Failure::Api(code, m) => plan.problems.push(DiscoveryProblem::new(
                        ns_of(scope),
                        format!("PersistentVolumeClaim list {where_}"),
                        "-",
                        format!("the API answered {code}: {m}"),
                    )),
                    Failure::Transport(m) => {
                        return Err(kube_error(format!(
                            "listing PersistentVolumeClaims {where_}: {m}"
                        )));
                    }
                },
            }
        }

        // Each Secret read once per plan; the values are dropped with the
        // reader at the end of the plan.
        let mut reader = SecretReader::new(self.client.clone());
        for c in candidates {
            let planned = self.build(&c.0, c.1, &mut reader).await;
            plan.targets.push(planned);
        }
        drop(reader);
        self.watched.record_plan(seen);
        plan.merge_config(self.config_targets.clone());
        plan.targets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(plan)
    }

    /// Plans candidate `c`: checks its Secrets by opening its engine and
    /// store, keeps the store (the daemon lists it between jobs) and a
    /// description of the engine without its credentials; each job reads
    /// them again ([`SecretCredentials`]).
    async fn build(
        &self,
        c: &Candidate,
        also_in: Option<TargetOrigin>,
        reader: &mut SecretReader,
    ) -> PlannedTarget {
        let name = format!("{}/{}", c.namespace, c.name);
        let mut planned = PlannedTarget {
            name: name.clone(),
            service_type: c.service_type,
            origin: c.origin,
            also_in,
            endpoint: None,
            store: None,
            dst_dir: Some(self.options.dst_dir.clone()),
            period: c.period.to_string(),
            rotation: c.rotation,
            next_due: None,
            encryption: None,
            problem: None,
            target: None,
        };
        let identity = ServiceIdentity {
            cluster: Some(self.options.cluster.clone()),
            namespace: Some(c.namespace.clone()),
            name: Some(c.name.clone()),
            ..Default::default()
        };
        let engine = match secrets::open_engine(c, reader, identity.clone()).await {
            Ok(e) => e,
            Err(p) => {
                planned.problem = Some(p);
                return planned;
            }
        };
        planned.endpoint = engine.identity().endpoint;
        // The credentials go with the engine, here.
        let described = StandInEngine::of(
            engine.as_ref(),
            format!("{name}: the credentials are read when a job starts"),
        );
        drop(engine);
        let store = match secrets::open_store(
            c,
            reader,
            &self.options.dst_dir,
            self.options.ca_file.as_deref(),
        )
        .await
        {
            Ok(s) => s,
            Err(p) => {
                planned.problem = Some(p);
                return planned;
            }
        };
        planned.store = Some(store.url().to_string());
        planned.dst_dir = Some(store.prefix().to_string());
        // The recipients are public; the identity is dropped at once (each
        // restore reads it again).
        let recipients = match secrets::open_encryption(c, reader).await {
            Ok(None) => None,
            Ok(Some(keys)) => {
                let secret = format!(
                    "Secret {}/{}",
                    c.namespace,
                    c.encryption_ref.as_deref().unwrap_or_default()
                );
                planned.encryption = Some(keys.describe(&secret));
                Some(keys.recipients)
            }
            Err(p) => {
                planned.problem = Some(p);
                return planned;
            }
        };
        let credentials = SecretCredentials {
            client: self.client.clone(),
            candidate: c.clone(),
            identity,
            dst_dir: self.options.dst_dir.clone(),
            ca_file: self.options.ca_file.clone(),
            store_url: store.url().to_string(),
            watched: self.watched.clone(),
        };
        let schedule = TargetSchedule::new(c.period, c.rotation);
        let mut target = Target::new(
            name,
            c.service_type,
            Some(schedule),
            store,
            Arc::new(described),
        )
        .with_credentials(Arc::new(credentials));
        if let Some(recipients) = recipients {
            target = target.with_encryption(recipients);
        }
        planned.target = Some(target);
        planned
    }

    /// Starts the watches once (after the first plan), when enabled.
    fn start_watches(&self) {
        if !self.options.watch {
            return;
        }
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if watches.is_empty() {
            *watches = watch::spawn(&self.client, &self.options.whitelist, &self.watched);
            tracing::info!(
                namespaces = %self.options.whitelist,
                resync = ?self.options.resync,
                "discovery: watching PersistentVolumeClaims and CnvrgApps"
            );
        }
    }
}

/// Adds PVC candidate `c` unless a CnvrgApp already names the service (the
/// CnvrgApp wins; a difference is logged).
fn merge(candidates: &mut Vec<(Candidate, Option<TargetOrigin>)>, c: Candidate) {
    match candidates
        .iter_mut()
        .find(|(k, _)| k.namespace == c.namespace && k.name == c.name)
    {
        Some((winner, also)) => {
            *also = Some(TargetOrigin::Pvc);
            let same = winner.service_type == c.service_type
                && winner.creds_ref == c.creds_ref
                && winner.bucket_ref == c.bucket_ref
                && winner.rotation == c.rotation
                && winner.period == c.period
                && winner.encryption_ref == c.encryption_ref;
            if !same {
                let settings = |c: &Candidate| {
                    format!(
                        "{} creds={} bucket={} rotation={} period={} encryption={}",
                        c.service_type,
                        c.creds_ref,
                        c.bucket_ref,
                        c.rotation,
                        c.period,
                        c.encryption_ref.as_deref().unwrap_or("-")
                    )
                };
                tracing::warn!(
                    service = %format!("{}/{}", c.namespace, c.name),
                    cnvrgapp = %winner.resource,
                    pvc = %c.resource,
                    cnvrgapp_settings = %settings(winner),
                    pvc_settings = %settings(&c),
                    "the CnvrgApp and the PVC annotations disagree: the CnvrgApp wins"
                );
            }
        }
        None => candidates.push((c, None)),
    }
}

#[async_trait]
impl TargetSource for KubeDiscovery {
    fn name(&self) -> String {
        format!(
            "kubernetes (namespaces {}{})",
            self.options.whitelist,
            if self.config_targets.is_empty() {
                ""
            } else {
                ", plus the config file"
            }
        )
    }

    async fn targets(&self) -> Result<Vec<Target>> {
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, targets)) = &state.last
                && at.elapsed() < self.options.resync
                && !self.watched.is_stale()
            {
                return Ok(targets.clone());
            }
        }
        // A change seen from here on makes this plan stale in turn.
        let was_stale = self.watched.take_stale();
        let result = self.plan().await;
        if result.is_ok() {
            self.start_watches();
        } else if was_stale {
            // Not planned: try again at the next scan (no wake-up, or an
            // unreachable API would be asked in a tight loop).
            self.watched.keep_stale();
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.resyncs += 1;
        match result {
            Ok(plan) => {
                let problems: Vec<DiscoveryProblem> = plan.all_problems().cloned().collect();
                for p in &problems {
                    if state.problems.contains(p) {
                        tracing::debug!(problem = %p, "discovery: still a problem");
                    } else {
                        tracing::warn!(namespace = %p.namespace, resource = %p.resource, field = %p.field, "discovery: {}", p.message);
                    }
                }
                let targets = plan.runnable();
                tracing::debug!(
                    targets = targets.len(),
                    problems = problems.len(),
                    "discovery resync"
                );
                state.problems = problems;
                state.targets = targets.len();
                state.last = Some((Instant::now(), targets.clone()));
                Ok(targets)
            }
            Err(e) => {
                state.errors += 1;
                // Try again on the next scan, keeping the previous targets.
                Err(e)
            }
        }
    }

    fn metrics(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str("# HELP capsule_discovery_targets Targets discovery plans now.\n# TYPE capsule_discovery_targets gauge\n");
        out.push_str(&format!("capsule_discovery_targets {}\n", state.targets));
        out.push_str("# HELP capsule_discovery_problems Services or resources discovery could not plan, by resource and field.\n# TYPE capsule_discovery_problems gauge\n");
        let mut counts: BTreeMap<(String, String, String), u32> = BTreeMap::new();
        for p in &state.problems {
            *counts
                .entry((p.namespace.clone(), p.resource.clone(), p.field.clone()))
                .or_default() += 1;
        }
        for ((ns, resource, field), n) in counts {
            out.push_str(&format!(
                "capsule_discovery_problems{{namespace=\"{}\",resource=\"{}\",field=\"{}\"}} {n}\n",
                escape(&ns),
                escape(&resource),
                escape(&field)
            ));
        }
        out.push_str("# HELP capsule_discovery_resyncs_total Reads of the cluster.\n# TYPE capsule_discovery_resyncs_total counter\n");
        out.push_str(&format!(
            "capsule_discovery_resyncs_total {}\n",
            state.resyncs
        ));
        out.push_str("# HELP capsule_discovery_errors_total Reads of the cluster that failed (API unreachable).\n# TYPE capsule_discovery_errors_total counter\n");
        out.push_str(&format!(
            "capsule_discovery_errors_total {}\n",
            state.errors
        ));
        out.push_str("# HELP capsule_discovery_watch_events_total Changes the watches saw that made the plan stale.\n# TYPE capsule_discovery_watch_events_total counter\n");
        out.push_str(&format!(
            "capsule_discovery_watch_events_total {}\n",
            self.watched.events.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP capsule_discovery_watch_errors_total Watch failures (each retried after a backoff).\n# TYPE capsule_discovery_watch_errors_total counter\n");
        out.push_str(&format!(
            "capsule_discovery_watch_errors_total {}\n",
            self.watched.errors.load(Ordering::Relaxed)
        ));
        out
    }

    async fn changed(&self) {
        self.watched.changed().await;
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
