//! Watches on the two sources (kube-runtime watchers, with its default
//! backoff on errors): a relevant change marks the plan stale, so the
//! daemon plans again within seconds instead of at the next full resync.
//!
//! "Relevant" is what planning reads: a PVC annotated
//! `capsule.mlops.cnvrg.io/backup: "true"` (its `capsule.mlops.cnvrg.io/*`
//! annotations), a `CnvrgApp`'s `spec.dbs`. Each plan records what it was
//! built from ([`Watched::record_plan`]); an event that differs from it (a
//! new, changed or deleted object, or a relist that no longer matches)
//! marks the plan stale. A PVC whose status changes, or that is not
//! annotated, does not.
//!
//! With concrete namespaces in the whitelist each namespace is watched on
//! its own (no cluster-wide read); with a glob the watch is cluster-wide
//! and filtered. A lost watch is resumed from its last resourceVersion (or
//! relisted when that is too old) by the watcher, after its backoff.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::cnvrgapp_resource;
use super::sources::ANNOTATION_PREFIX;
use super::whitelist::NsWhitelist;

/// The watched kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Pvc,
    CnvrgApp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pvc => "PersistentVolumeClaims",
            Kind::CnvrgApp => "CnvrgApps",
        }
    }
}

/// An object: kind, namespace, name.
pub(crate) type Key = (Kind, String, String);

/// What planning reads of a PVC: its capsule annotations, when it is
/// annotated `backup: "true"`; `None` when planning ignores it.
pub(crate) fn pvc_fingerprint(annotations: &BTreeMap<String, String>) -> Option<String> {
    let backup = annotations.get(&format!("{ANNOTATION_PREFIX}backup"))?;
    if !backup.trim().eq_ignore_ascii_case("true") {
        return None;
    }
    Some(
        annotations
            .iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect(),
    )
}

/// What planning reads of a `CnvrgApp`: `spec.dbs`.
pub(crate) fn cnvrgapp_fingerprint(spec: &serde_json::Value) -> String {
    spec.get("dbs").map(|d| d.to_string()).unwrap_or_default()
}

/// What the last plan was built from, and whether a watch saw it change
/// since. Shared by the discovery, its watch tasks and its jobs.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    /// The relevant objects of the last plan, with their fingerprints.
    seen: Mutex<HashMap<Key, String>>,
    stale: AtomicBool,
    notify: Notify,
    /// Relevant changes seen by the watches.
    pub(crate) events: AtomicU64,
    /// Errors of the watches (each followed by a backoff and a retry).
    pub(crate) errors: AtomicU64,
}

impl Watched {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<Key, String>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what a plan was built from.
    pub(crate) fn record_plan(&self, seen: HashMap<Key, String>) {
        *self.seen() = seen;
    }

    /// Whether the last plan is stale.
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// Clears the stale mark (a plan starts); returns whether it was set.
    pub(crate) fn take_stale(&self) -> bool {
        self.stale.swap(false, Ordering::SeqCst)
    }

    /// Marks the plan stale and wakes [`Watched::changed`].
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Marks the plan stale without waking [`Watched::changed`].
    pub(crate) fn keep_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// Completes after the next [`Watched::mark_stale`] (or at once when
    /// one happened since the last wait). Cancel-safe.
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    fn changed_object(&self, key: &Key, what: &str) {
        self.events.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(kind = key.0.name(), namespace = %key.1, name = %key.2, "watch: {what}: planning again");
        self.mark_stale();
    }

    /// An object was added or modified; `fingerprint` is `None` when
    /// planning ignores it.
    fn applied(&self, key: Key, fingerprint: Option<String>) {
        let differs = self.seen().get(&key) != fingerprint.as_ref();
        if differs {
            self.changed_object(&key, "changed");
        }
    }

    fn deleted(&self, key: Key) {
        let known = self.seen().contains_key(&key);
        if known {
            self.changed_object(&key, "deleted");
        }
    }

    /// A (re)list of `kind` in `scope` found `found`.
    fn relisted(&self, kind: Kind, scope: Option<&str>, found: HashMap<Key, String>) {
        let differs = {
            let seen = self.seen();
            let mine: HashMap<&Key, &String> = seen
                .iter()
                .filter(|(k, _)| k.0 == kind && scope.is_none_or(|ns| k.1 == ns))
                .collect();
            mine.len() != found.len() || found.iter().any(|(k, v)| mine.get(k) != Some(&v))
        };
        if differs {
            self.events.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                kind = kind.name(),
                scope = scope.unwrap_or("*"),
                "watch: the list differs from the plan: planning again"
            );
            self.mark_stale();
        }
    }
}

/// Starts the watches of `whitelist`: per namespace when it names only
/// concrete namespaces, else cluster-wide (filtered). They run until
/// aborted.
pub(crate) fn spawn(
    client: &Client,
    whitelist: &NsWhitelist,
    watched: &std::sync::Arc<Watched>,
) -> Vec<JoinHandle<()>> {
    let scopes: Vec<Option<String>> = match whitelist.concrete() {
        Some(list) => list.into_iter().map(Some).collect(),
        None => vec![None],
    };
    let ar = cnvrgapp_resource();
    let mut tasks = Vec::new();
    for scope in scopes {
        let pvcs: Api<PersistentVolumeClaim> = match &scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let apps: Api<DynamicObject> = match &scope {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let config = watcher::Config::default();
        tasks.push(tokio::spawn(run(
            watch_stream(pvcs, config.clone()).default_backoff(),
            Kind::Pvc,
            scope.clone(),
            whitelist.clone(),
            watched.clone(),
            |pvc: &PersistentVolumeClaim| pvc_fingerprint(pvc.annotations()),
        )));
        tasks.push(tokio::spawn(run(
            watch_stream(apps, config).default_backoff(),
            Kind::CnvrgApp,
            scope,
            whitelist.clone(),
            watched.clone(),
            |app: &DynamicObject| {
                Some(cnvrgapp_fingerprint(
                    app.data.get("spec").unwrap_or(&serde_json::Value::Null),
                ))
            },
        )));
    }
    tasks
}

/// Feeds one watcher's events into `watched`.
async fn run<K, S>(
    stream: S,
    kind: Kind,
    scope: Option<String>,
    whitelist: NsWhitelist,
    watched: std::sync::Arc<Watched>,
    fingerprint: fn(&K) -> Option<String>,
) where
    K: ResourceExt + Debug,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let where_ = scope.as_deref().map_or("cluster-wide".to_string(), |ns| {
        format!("in namespace {ns}")
    });
    let key_of = |o: &K| (kind, o.namespace().unwrap_or_default(), o.name_any());
    let mut stream = std::pin::pin!(stream);
    let mut listing: Option<HashMap<Key, String>> = None;
    let mut failing: Option<String> = None;
    tracing::debug!(kind = kind.name(), scope = %where_, "watch started");
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                watched.errors.fetch_add(1, Ordering::Relaxed);
                let message = e.to_string();
                let not_installed = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
                if failing.as_deref() == Some(message.as_str()) || not_installed {
                    tracing::debug!(kind = kind.name(), scope = %where_, error = %message, "watch failed again; retrying after a backoff");
                } else {
                    tracing::warn!(kind = kind.name(), scope = %where_, error = %message, "watch failed; retrying after a backoff (the periodic resync still runs)");
                }
                failing = Some(message);
                continue;
            }
        };
        if failing.take().is_some() {
            tracing::info!(kind = kind.name(), scope = %where_, "watch resumed");
        }
        match event {
            Event::Init => listing = Some(HashMap::new()),
            Event::InitApply(o) => {
                let key = key_of(&o);
                if whitelist.matches(&key.1)
                    && let Some(fp) = fingerprint(&o)
                {
                    listing.get_or_insert_default().insert(key, fp);
                }
            }
            Event::InitDone => {
                watched.relisted(kind, scope.as_deref(), listing.take().unwrap_or_default());
            }
            Event::Apply(o) => {
                let key = key_of(&o);
                if whitelist.matches(&key.1) {
                    watched.applied(key, fingerprint(&o));
                }
            }
            Event::Delete(o) => {
                let key = key_of(&o);
                if whitelist.matches(&key.1) {
                    watched.deleted(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_what_planning_reads_counts() {
        assert_eq!(pvc_fingerprint(&a(&[])), None);
        assert_eq!(
            pvc_fingerprint(&a(&[("capsule.mlops.cnvrg.io/backup", "false")])),
            None
        );
        let on = pvc_fingerprint(&a(&[
            ("capsule.mlops.cnvrg.io/backup", "True"),
            ("capsule.mlops.cnvrg.io/period", "1h"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ]))
        .unwrap();
        let same = pvc_fingerprint(&a(&[
            ("capsule.mlops.cnvrg.io/backup", "True"),
            ("capsule.mlops.cnvrg.io/period", "1h"),
        ]))
        .unwrap();
        assert_eq!(on, same);
        let other = pvc_fingerprint(&a(&[
            ("capsule.mlops.cnvrg.io/backup", "True"),
            ("capsule.mlops.cnvrg.io/period", "2h"),
        ]));
        assert_ne!(Some(on), other);
        let spec = serde_json::json!({"dbs": {"pg": {"enabled": true}}, "other": 1});
        assert_eq!(cnvrgapp_fingerprint(&spec), r#"{"pg":{"enabled":true}}"#);
    }

    fn pvc(name: &str) -> Key {
        (Kind::Pvc, "ns".to_string(), name.to_string())
    }

    #[test]
    fn events_that_differ_from_the_plan_mark_it_stale() {
        let w = Watched::default();
        let key = pvc;
        w.record_plan(HashMap::from([(key("a"), "fp".to_string())]));
        w.applied(key("a"), Some("fp".into()));
        w.applied(key("b"), None);
        w.deleted(key("b"));
        w.relisted(
            Kind::Pvc,
            Some("ns"),
            HashMap::from([(key("a"), "fp".to_string())]),
        );
        w.relisted(Kind::CnvrgApp, None, HashMap::new());
        assert!(!w.is_stale(), "nothing planning reads changed");
        let changes: [fn(&Watched); 5] = [
            |w| w.applied(pvc("a"), Some("fp2".into())),
            |w| w.applied(pvc("a"), None),
            |w| w.applied(pvc("c"), Some("x".into())),
            |w| w.deleted(pvc("a")),
            |w| w.relisted(Kind::Pvc, None, HashMap::new()),
        ];
        for change in changes {
            change(&w);
            assert!(w.take_stale());
            assert!(!w.is_stale());
        }
        assert_eq!(w.events.load(Ordering::Relaxed), 5);
    }
}
