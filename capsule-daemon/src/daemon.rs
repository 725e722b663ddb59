//! The daemon's life: start (bind the API, load the targets), the scan
//! loop, and a graceful shutdown that lets running jobs finish.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use capsule_core::{Catalog, LeaseHolder, Leases, Owner};
use capsule_store::Store;
use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache::CatalogCache;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::options::{DaemonOptions, parse_bind_addr};
use crate::targets::{Target, TargetSource};

/// After the target source reports a change, how long the daemon waits for
/// more before it scans.
const CHANGE_SETTLE: Duration = Duration::from_millis(250);

/// One store (bucket and prefix) the daemon reads: its cached catalog and
/// its leases.
#[derive(Debug)]
pub(crate) struct StoreView {
    pub(crate) cache: CatalogCache,
    pub(crate) leases: Leases,
}

impl StoreView {
    pub(crate) fn catalog(&self) -> &Catalog {
        self.cache.catalog()
    }
    pub(crate) fn url(&self) -> &str {
        self.catalog().store().url()
    }
}

/// A target with the view of its store.
pub(crate) struct TargetRt {
    pub(crate) target: Target,
    pub(crate) view: Arc<StoreView>,
}

/// Jobs in flight in this process.
#[derive(Debug)]
pub(crate) struct Jobs {
    keys: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Everything the scan loop, the jobs and the API share.
pub(crate) struct Shared {
    pub(crate) options: DaemonOptions,
    pub(crate) holder: LeaseHolder,
    pub(crate) source: Arc<dyn TargetSource>,
    pub(crate) views: RwLock<Vec<Arc<StoreView>>>,
    pub(crate) targets: RwLock<Arc<Vec<Arc<TargetRt>>>>,
    pub(crate) metrics: Metrics,
    pub(crate) jobs: Jobs,
    /// Cancelled on shutdown: take no new work.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the grace period ends: cancel running jobs.
    pub(crate) abort: CancellationToken,
    pub(crate) ready: Mutex<Option<(Instant, bool)>>,
}

impl Shared {
    /// The global store's view (always the first).
    pub(crate) fn global(&self) -> Arc<StoreView> {
        self.views.read().expect("views lock")[0].clone()
    }

    pub(crate) fn views(&self) -> Vec<Arc<StoreView>> {
        self.views.read().expect("views lock").clone()
    }

    pub(crate) fn targets(&self) -> Arc<Vec<Arc<TargetRt>>> {
        self.targets.read().expect("targets lock").clone()
    }

    /// The view of `store`, created on first use.
    fn view_for(&self, store: &Store) -> Arc<StoreView> {
        let mut views = self.views.write().expect("views lock");
        if let Some(v) = views.iter().find(|v| v.url() == store.url()) {
            return v.clone();
        }
        let v = Arc::new(new_view(store.clone(), &self.holder, &self.options));
        views.push(v.clone());
        v
    }

    /// Asks the target source again; keeps the previous targets on error.
    pub(crate) async fn reload_targets(&self) -> Result<()> {
        let fresh = self.source.targets().await?;
        let previous = self.targets();
        let mut next = Vec::with_capacity(fresh.len());
        for t in fresh {
            let view = self.view_for(&t.store);
            // Keep the target seen before (jobs may hold it).
            let same = previous.iter().find(|p| {
                p.target.name == t.name
                    && p.target.service_type == t.service_type
                    && p.view.url() == view.url()
            });
            // A source that rebuilt the engine (discovery plans again after
            // a resync or a watch event) replaces the target; jobs already
            // running keep the one they started with.
            match same {
                Some(p)
                    if p.target.schedule == t.schedule
                        && Arc::ptr_eq(&p.target.engine, &t.engine) =>
                {
                    next.push(p.clone())
                }
                _ => next.push(Arc::new(TargetRt { target: t, view })),
            }
        }
        *self.targets.write().expect("targets lock") = Arc::new(next);
        Ok(())
    }

    /// Starts `work` as job `key` unless it already runs here or every
    /// slot is taken (it is then tried again on the next scan).
    pub(crate) fn spawn_job<F>(self: &Arc<Self>, key: String, work: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.stop.is_cancelled() {
            return false;
        }
        let Ok(permit) = self.jobs.slots.clone().try_acquire_owned() else {
            tracing::debug!(job = %key, "every job slot is busy; next scan");
            return false;
        };
        if !self
            .jobs
            .keys
            .lock()
            .expect("jobs lock")
            .insert(key.clone())
        {
            return false;
        }
        let shared = self.clone();
        let handle = tokio::spawn(async move {
            shared.metrics.job_running(1);
            work.await;
            shared.metrics.job_running(-1);
            shared.jobs.keys.lock().expect("jobs lock").remove(&key);
            drop(permit);
        });
        let mut tasks = self.jobs.tasks.lock().expect("jobs lock");
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
        true
    }

    /// Whether job `key` runs in this process.
    pub(crate) fn job_running(&self, key: &str) -> bool {
        self.jobs.keys.lock().expect("jobs lock").contains(key)
    }

    fn job_count(&self) -> usize {
        self.jobs.keys.lock().expect("jobs lock").len()
    }

    /// Pings the global store, at most every 2 seconds.
    pub(crate) async fn ready(&self) -> bool {
        if let Some((at, ok)) = *self.ready.lock().expect("ready lock")
            && at.elapsed() < Duration::from_secs(2)
        {
            return ok;
        }
        let ok = match self.global().catalog().store().ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: the store does not answer");
                false
            }
        };
        *self.ready.lock().expect("ready lock") = Some((Instant::now(), ok));
        ok
    }
}

fn new_view(store: Store, holder: &LeaseHolder, options: &DaemonOptions) -> StoreView {
    StoreView {
        leases: Leases::new(store.clone(), holder.clone(), options.timings.lease_ttl),
        cache: CatalogCache::new(Catalog::new(store).with_identities(options.identities.clone())),
    }
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    api_addr: Option<SocketAddr>,
    main: JoinHandle<Result<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("mode", &self.shared.options.mode)
            .field("cluster", &self.shared.options.cluster)
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Starts a daemon: loads the targets, binds the API (API modes), then
    /// scans the bucket every watch interval (marking abandoned backups
    /// failed, running due backups, rotations and requests in job modes).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for bad options, [`Error::Bind`] when the
    /// API address is taken, the target source's error.
    pub async fn start(
        options: DaemonOptions,
        store: Store,
        source: Arc<dyn TargetSource>,
    ) -> Result<Daemon> {
        options.timings.validate()?;
        if options.cluster.trim().is_empty() {
            return Err(Error::InvalidOption("the cluster name is empty".into()));
        }
        let me = Owner::this_process(Some(options.cluster.clone()), Utc::now());
        let holder = LeaseHolder::new(me.id, me.host, me.cluster);
        let shared = Arc::new(Shared {
            views: RwLock::new(vec![Arc::new(new_view(store, &holder, &options))]),
            holder,
            source,
            targets: RwLock::new(Arc::new(Vec::new())),
            metrics: Metrics::default(),
            jobs: Jobs {
                keys: Mutex::new(HashSet::new()),
                slots: Arc::new(Semaphore::new(options.max_jobs.max(1))),
                tasks: Mutex::new(Vec::new()),
            },
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            ready: Mutex::new(None),
            options,
        });
        shared.reload_targets().await?;
        // Fill the catalog before the API answers (a store that does not
        // answer yet is retried by every scan; /readyz tells).
        for view in shared.views() {
            if let Err(e) = view.cache.refresh().await {
                tracing::warn!(store = %view.url(), error = %e, "cannot list the store yet");
            }
        }
        let api = if shared.options.mode.serves_api() {
            let addr = parse_bind_addr(&shared.options.api_bind_addr)?;
            let listener =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| Error::Bind {
                        addr: shared.options.api_bind_addr.clone(),
                        error,
                    })?;
            let local = listener.local_addr().map_err(|error| Error::Bind {
                addr: shared.options.api_bind_addr.clone(),
                error,
            })?;
            Some((listener, local))
        } else {
            None
        };
        let api_addr = api.as_ref().map(|(_, a)| *a);
        let o = &shared.options;
        tracing::info!(
            mode = %o.mode,
            cluster = %o.cluster,
            store = %shared.global().url(),
            targets = shared.targets().len(),
            source = %shared.source.name(),
            api = %api_addr.map_or("off".to_string(), |a| a.to_string()),
            holder = %shared.holder.id,
            "capsule daemon started"
        );
        for t in shared.targets().iter() {
            tracing::info!(service = %t.target.name, r#type = %t.target.service_type, engine = %t.target.engine, store = %t.view.url(), schedule = %t.target.schedule.as_ref().map_or("none (requests only)".to_string(), ToString::to_string), "serving");
        }
        if o.mode.serves_api() && o.api_token.is_none() {
            tracing::warn!(
                "no API token configured (--api-token-file or CNVRG_CAPSULE_API_TOKEN): API writes are refused, and reads too unless --api-anonymous-read is set"
            );
        }
        let main = tokio::spawn(main_loop(shared.clone(), api.map(|(l, _)| l)));
        Ok(Daemon {
            shared,
            api_addr,
            main,
        })
    }

    /// Where the API listens (API modes).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Begins a graceful shutdown: no new work; running jobs get the grace
    /// period, then are cancelled (and marked failed); leases are released.
    pub fn shutdown(&self) {
        self.shared.stop.cancel();
    }

    /// Waits until the daemon stopped.
    ///
    /// # Errors
    /// The API server's failure.
    pub async fn wait(self) -> Result<()> {
        match self.main.await {
            Ok(r) => r,
            Err(e) => Err(Error::InvalidOption(format!("the daemon task failed: {e}"))),
        }
    }
}

/// Runs a daemon until `shutdown` completes, then stops it gracefully.
///
/// # Errors
/// As [`Daemon::start`] and [`Daemon::wait`].
pub async fn run(
    options: DaemonOptions,
    store: Store,
    source: Arc<dyn TargetSource>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let daemon = Daemon::start(options, store, source).await?;
    tokio::select! {
        () = shutdown => {}
        () = daemon.shared.stop.cancelled() => {}
    }
    daemon.shutdown();
    daemon.wait().await
}

async fn main_loop(shared: Arc<Shared>, listener: Option<tokio::net::TcpListener>) -> Result<()> {
    let api_stop = CancellationToken::new();
    let server = listener.map(|l| {
        let router = crate::api::router(shared.clone());
        let stop = api_stop.clone();
        tokio::spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    });

    let interval = shared.options.timings.watch_interval;
    loop {
        let ok = crate::scan::scan(&shared).await;
        shared.metrics.scan(ok);
        tokio::select! {
            () = shared.stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
            () = shared.source.changed() => {
                // The targets changed (a watch event): scan now, after a
                // moment for the rest of a burst of changes to arrive.
                tracing::debug!(source = %shared.source.name(), "targets changed: scanning now");
                tokio::select! {
                    () = shared.stop.cancelled() => break,
                    () = tokio::time::sleep(CHANGE_SETTLE.min(interval)) => {}
                }
            }
        }
    }

    // Shutdown: no new work; running jobs get the grace period.
    let grace = shared.options.timings.shutdown_grace;
    let running = shared.job_count();
    tracing::info!(running, grace = ?grace, "shutting down: waiting for running jobs");
    let deadline = Instant::now() + grace;
    while shared.job_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if shared.job_count() > 0 {
        tracing::warn!(
            running = shared.job_count(),
            "grace period over: cancelling running jobs (they are marked failed)"
        );
        shared.abort.cancel();
    }
    let tasks: Vec<JoinHandle<()>> =
        std::mem::take(&mut *shared.jobs.tasks.lock().expect("jobs lock"));
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    api_stop.cancel();
    if let Some(server) = server {
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(Err(e))) => {
                return Err(Error::Bind {
                    addr: shared.options.api_bind_addr.clone(),
                    error: e,
                });
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("the API did not stop within 10s"),
        }
    }
    tracing::info!("capsule daemon stopped");
    Ok(())
}
