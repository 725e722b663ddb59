//! [`Store`]: a bucket plus a prefix, and the object operations on it.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::builder::StoreBuilder;
use crate::error::{BackendKind, Error, ErrorContext, Redactor, Result};
use crate::local_cas::{LOCK_DIR, LocalLocks, LockGuard};
use crate::upload::{Upload, UploadOptions};
use crate::url::{check_key, join_path, normalize_prefix};

/// The key [`Store::ping`] writes, under the store prefix.
const PING_KEY: &str = "ping";

/// Opaque version of an object, for conditional updates: the ETag and/or
/// the backend's version id, as the backend reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The entity tag, quotes included as the backend sent it.
    pub etag: Option<String>,
    /// The version id or generation, where the backend has one.
    pub version: Option<String>,
}

impl Version {
    /// Whether two reads of an object (a listing and a get, say) saw the
    /// same content: equal entity tags when both have one, else equal
    /// version ids when both have one; `false` when it cannot be told.
    pub fn same_content(&self, other: &Version) -> bool {
        match (&self.etag, &other.etag, &self.version, &other.version) {
            (Some(a), Some(b), _, _) => a == b,
            (_, _, Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// What a listing or [`Store::head`] says about an object.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    /// The key, relative to the store prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written.
    pub last_modified: SystemTime,
    /// The object's current version.
    pub version: Version,
}

/// A whole object read by [`Store::get`].
#[derive(Clone, Debug)]
pub struct GetObject {
    /// The content.
    pub bytes: Bytes,
    /// The version read.
    pub version: Version,
}

/// An object being read as a stream, from [`Store::get_stream`].
pub struct ObjectStream {
    /// The object's size in bytes.
    pub size: u64,
    /// The version being read.
    pub version: Version,
    /// The content, chunk by chunk.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStream")
            .field("size", &self.size)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The backend shared by every [`Store`] built from one [`StoreBuilder`].
/// `Debug` is by hand: object_store's clients print credential fields.
pub(crate) struct Backend {
    /// For object operations, with the configured retries.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// For [`Store::ping`]: few retries, short timeouts.
    pub(crate) probe: Arc<dyn ObjectStore>,
    pub(crate) kind: BackendKind,
    /// Object path of the bucket root (local stores: the root directory).
    pub(crate) root: String,
    /// The prefix from the URL path, in front of every store prefix.
    pub(crate) url_prefix: String,
    /// How the bucket root shows in [`Store::url`]: `s3://bucket`, `file:///dir`.
    pub(crate) display_root: String,
    /// What follows the path in [`Store::url`], e.g. ` (endpoint http://...)`.
    pub(crate) display_suffix: String,
    /// The endpoint configured explicitly (shown in messages).
    pub(crate) endpoint: Option<String>,
    /// The backend's usual endpoint otherwise.
    pub(crate) default_endpoint: Option<String>,
    pub(crate) bucket: Option<String>,
    pub(crate) redactor: Redactor,
    /// Set for `file://` stores: writers serialize through lock files.
    pub(crate) locks: Option<Arc<LocalLocks>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.kind)
            .field("root", &self.display_root)
            .finish_non_exhaustive()
    }
}

/// A bucket plus a prefix: the object operations capsule needs.
///
/// All keys are relative to the prefix and `/`-separated. Clone is cheap
/// (an `Arc` inside); clones and [`Store::with_prefix`] share the backend and
/// its connections. `Debug` prints only the redacted URL.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    view: Arc<View>,
}

#[derive(Debug)]
struct View {
    /// The prefix given with `with_prefix` (the dst-dir).
    prefix: String,
    /// Object path of the prefix: root, URL prefix and prefix joined.
    full: String,
    url: String,
    ctx: ErrorContext,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.view.url)
    }
}

impl Store {
    pub(crate) fn new(backend: Arc<Backend>, prefix: String) -> Store {
        let full = join_path(&[&backend.root, &backend.url_prefix, &prefix]);
        let visible = join_path(&[&backend.url_prefix, &prefix]);
        let separator = match (backend.kind, visible.is_empty()) {
            (_, true) | (BackendKind::Memory, _) => "",
            _ => "/",
        };
        let url = format!(
            "{}{separator}{visible}{}",
            backend.display_root, backend.display_suffix
        );
        let ctx = ErrorContext {
            store: url.clone(),
            kind: backend.kind,
            endpoint: backend.endpoint.clone(),
            default_endpoint: backend.default_endpoint.clone(),
            bucket: backend.bucket.clone(),
            redactor: backend.redactor.clone(),
        };
        Store {
            backend,
            view: Arc::new(View {
                prefix,
                full,
                url,
                ctx,
            }),
        }
    }

    /// Builds a store from a URL: `StoreBuilder::from_url(url)?.build()`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the URL or its options are wrong.
    pub fn from_url(url: &str) -> Result<Store> {
        StoreBuilder::from_url(url)?.build()
    }

    /// A store on the same backend with the prefix (dst-dir) replaced;
    /// the URL's own path stays in front of it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the prefix has `..`, `.` or empty segments.
    pub fn with_prefix(&self, prefix: &str) -> Result<Store> {
        let prefix = normalize_prefix(prefix)
            .map_err(|why| Error::invalid(format!("prefix {prefix:?} {why}")))?;
        Ok(Store::new(Arc::clone(&self.backend), prefix))
    }

    /// The prefix (dst-dir) given to [`StoreBuilder::with_prefix`] or
    /// [`Store::with_prefix`], without the URL's path; `""` for none.
    pub fn prefix(&self) -> &str {
        &self.view.prefix
    }

    /// The store's identity for messages, credentials stripped, e.g.
    /// `s3://cnvrg-storage/cnvrg-smart-backups (endpoint http://127.0.0.1:8333)`,
    /// `file:///tmp/x/cnvrg-smart-backups`,
    /// `az://container/prefix (account devstoreaccount1)`.
    /// Never holds a key, password, SAS token or userinfo.
    pub fn url(&self) -> &str {
        &self.view.url
    }

    /// Writes `bytes` at `key`, replacing any object there.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid key, [`Error::Backend`] when
    /// the write fails.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<Version> {
        self.put_on(&self.backend.store, "put", key, bytes).await
    }

    /// Writes `bytes` at `key` only if no object is there (atomic).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when an object is there; as [`Store::put`]
    /// otherwise.
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<Version> {
        let path = self.path(key)?;
        let result = self
            .backend
            .store
            .put_opts(&path, PutPayload::from(bytes), PutMode::Create.into())
            .await;
        match result {
            Ok(r) => Ok(version(r.e_tag, r.version)),
            Err(object_store::Error::Precondition { .. }) => Err(self.ctx().already_exists(key)),
            Err(e) => Err(self.ctx().translate("create", key, e)),
        }
    }

    /// Replaces the object at `key` only if it is still at version
    /// `expected` (atomic compare-and-swap).
    ///
    /// # Errors
    /// [`Error::Conflict`] when another writer changed it since `expected`,
    /// [`Error::NotFound`] when it is gone; as [`Store::put`] otherwise.
    pub async fn update(&self, key: &str, bytes: Bytes, expected: &Version) -> Result<Version> {
        let path = self.path(key)?;
        if let Some(locks) = &self.backend.locks {
            return self.update_local(locks, &path, key, bytes, expected).await;
        }
        let mode = PutMode::Update(UpdateVersion {
            e_tag: expected.etag.clone(),
            version: expected.version.clone(),
        });
        let result = self
            .backend
            .store
            .put_opts(&path, PutPayload::from(bytes), mode.into())
            .await;
        match result {
            Ok(r) => Ok(version(r.e_tag, r.version)),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => {
                // Changed or gone? Ask, so callers can tell the two apart.
                match self.backend.store.head(&path).await {
                    Ok(_) => Err(self.ctx().conflict(key)),
                    Err(object_store::Error::NotFound { .. }) => Err(self.ctx().not_found(key)),
                    Err(e) => Err(self.ctx().translate("update", key, e)),
                }
            }
            Err(e) => Err(self.ctx().translate("update", key, e)),
        }
    }

    /// Reads the whole object at `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is none; [`Error::Backend`] on failure.
    pub async fn get(&self, key: &str) -> Result<GetObject> {
        self.get_on(&self.backend.store, "get", key).await
    }

    /// Reads the object at `key` as a stream of chunks.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is none; [`Error::Backend`] on failure
    /// (also as stream items, for failures while reading).
    pub async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        let path = self.path(key)?;
        let result = self
            .backend
            .store
            .get(&path)
            .await
            .map_err(|e| self.ctx().translate("get", key, e))?;
        let (size, version) = (result.meta.size, meta_version(&result.meta));
        let ctx = self.ctx().clone();
        let key = key.to_string();
        let stream = match result.payload {
            object_store::GetResultPayload::File(file, path) => {
                crate::file_read::stream(file, path, result.range)
            }
            object_store::GetResultPayload::Stream(s) => s,
        };
        let stream = stream
            .map_err(move |e| ctx.translate("get (stream)", &key, e))
            .boxed();
        Ok(ObjectStream {
            size,
            version,
            stream,
        })
    }

    /// Reads bytes `range` of the object at `key`; an empty range reads
    /// nothing.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a reversed range, [`Error::NotFound`]
    /// when there is no object, [`Error::Backend`] on failure (e.g. a range
    /// past the end).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        if range.start > range.end {
            return Err(Error::invalid(format!(
                "byte range {}..{} of {key} on {} is reversed",
                range.start,
                range.end,
                self.url()
            )));
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.backend
            .store
            .get_range(&path, range)
            .await
            .map_err(|e| self.ctx().translate("get (range)", key, e))
    }

    /// Size, time and version of the object at `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is none; [`Error::Backend`] on failure.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key)?;
        let meta = self
            .backend
            .store
            .head(&path)
            .await
            .map_err(|e| self.ctx().translate("head", key, e))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: meta.size,
            last_modified: SystemTime::from(meta.last_modified),
            version: meta_version(&meta),
        })
    }

    /// Every object under `prefix` (recursively; `""` = everything under the
    /// store prefix), sorted by key.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid prefix; [`Error::Backend`]
    /// on failure.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut all: Vec<ObjectInfo> = self.list_stream(prefix).try_collect().await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all)
    }

    /// As [`Store::list`], as a stream in backend order.
    ///
    /// # Errors
    /// As stream items: [`Error::InvalidConfig`] for an invalid prefix,
    /// [`Error::Backend`] on failure.
    pub fn list_stream(&self, prefix: &str) -> BoxStream<'static, Result<ObjectInfo>> {
        let path = match self.prefix_path(prefix) {
            Ok(path) => path,
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
        };
        let this = self.clone();
        let op_key = prefix.to_string();
        self.backend
            .store
            .list(path.as_ref())
            .filter_map(move |item| {
                let out = match item {
                    Ok(meta) => this.info(meta).map(Ok),
                    Err(e) => Some(Err(this.ctx().translate("list", &op_key, e))),
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    /// The names (no trailing `/`) of the immediate "directories" under
    /// `prefix`, sorted: the first segments of the keys below it.
    ///
    /// Derived from a recursive listing, so a directory holding no object is
    /// never listed, on every backend (local directories and SeaweedFS keep
    /// emptied folders; S3 does not). The cost grows with the number of
    /// objects below `prefix` (one request per 1000 on S3).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid prefix; [`Error::Backend`]
    /// on failure.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let normalized = normalize_prefix(prefix).map_err(|why| {
            Error::invalid(format!("list prefix {prefix:?} for {} {why}", self.url()))
        })?;
        let mut dirs = std::collections::BTreeSet::new();
        let mut objects = self.list_stream(&normalized);
        while let Some(info) = objects.try_next().await? {
            let below = if normalized.is_empty() {
                Some(info.key.as_str())
            } else {
                info.key
                    .strip_prefix(normalized.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
            };
            if let Some((dir, _)) = below.and_then(|rest| rest.split_once('/'))
                && !dirs.contains(dir)
            {
                dirs.insert(dir.to_string());
            }
        }
        Ok(dirs.into_iter().collect())
    }

    /// Deletes the object at `key`; a missing object is fine.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid key, [`Error::Backend`] on
    /// failure.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let _guard = self.lock(&path, "delete", key).await?;
        match self.backend.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.ctx().translate("delete", key, e)),
        }
        self.remove_empty_dirs(&path).await;
        Ok(())
    }

    /// After a delete in a `file://` store: removes the directories above
    /// the deleted object that are now empty, up to (not including) this
    /// store's prefix directory, so a deleted backup leaves no empty folder
    /// behind. Best effort: a directory that is not empty (another writer
    /// got there first) stops it, and a writer whose directory vanished
    /// creates it again.
    async fn remove_empty_dirs(&self, path: &Path) {
        let Some(stop) = self.local_dir() else {
            return;
        };
        let object = std::path::PathBuf::from(format!("/{}", path.as_ref()));
        let removed = tokio::task::spawn_blocking(move || {
            let mut dir = object.parent();
            while let Some(d) = dir {
                if d == stop || !d.starts_with(&stop) || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        })
        .await;
        if let Err(e) = removed {
            tracing::debug!(error = %e, "removing empty directories after a delete");
        }
    }

    /// For a `file://` store, the directory its objects live in (the
    /// root, URL path and prefix joined), which need not exist yet: a
    /// local store is created by its first write. `None` for other stores.
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.backend
            .locks
            .as_ref()
            .map(|_| std::path::PathBuf::from(format!("/{}", self.view.full)))
    }

    /// Removes what uploads under `dir` (a key prefix ending in `/`) left
    /// unfinished, and returns the bytes freed. Only a `file://` store has
    /// any to see: `object_store` writes a multipart upload to `<key>#<n>`
    /// and renames it when complete, never lists such files, and a process
    /// killed mid-upload leaves one behind. Elsewhere a no-op (an S3
    /// bucket needs a lifecycle rule aborting incomplete multipart uploads).
    ///
    /// Only for a folder no live writer uses (a backup being deleted).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid prefix; local I/O errors as
    /// [`Error::Backend`].
    pub async fn remove_partial_uploads(&self, dir: &str) -> Result<u64> {
        let Some(root) = self.local_dir() else {
            return Ok(0);
        };
        let dir_key = dir.trim_end_matches('/');
        self.path(dir_key)?; // checks the key
        let path = root.join(dir_key);
        let removed = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut freed = 0;
            let entries = match std::fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let partial = entry.file_name().to_string_lossy().contains('#');
                let meta = entry.metadata()?;
                if partial && meta.is_file() {
                    std::fs::remove_file(entry.path())?;
                    freed += meta.len();
                }
            }
            Ok(freed)
        })
        .await
        .expect("the removal task does not panic");
        removed.map_err(|e| {
            self.ctx().translate(
                "delete",
                dir,
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            )
        })
    }

    /// Starts a streaming multipart upload to `key`; see [`Upload`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid key or options,
    /// [`Error::Backend`] when the backend refuses to start it.
    pub async fn upload(&self, key: &str, options: UploadOptions) -> Result<Upload> {
        options.validate()?;
        let path = self.path(key)?;
        let inner = self
            .backend
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.ctx().translate("upload (start)", key, e))?;
        Ok(Upload::new(
            inner,
            options,
            key.to_string(),
            path,
            self.ctx().clone(),
            self.backend.locks.clone(),
        ))
    }

    /// Proves the bucket works: writes a random token to `ping` under the
    /// prefix, reads it back and compares; deletes nothing. Uses few retries
    /// and short timeouts, so an unreachable endpoint fails within seconds.
    ///
    /// # Errors
    /// [`Error::Backend`] naming the store URL, the endpoint and the failing
    /// step: `ping (write)`, `ping (read back)` or `ping (compare)`.
    pub async fn ping(&self) -> Result<()> {
        use rand::Rng;
        let token: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let probe = &self.backend.probe;
        self.put_on(probe, "ping (write)", PING_KEY, Bytes::from(token.clone()))
            .await?;
        let read = self.get_on(probe, "ping (read back)", PING_KEY).await?;
        if read.bytes != token.as_bytes() {
            return Err(self.ctx().backend(
                "ping (compare)",
                PING_KEY,
                format!(
                    "read back {} bytes that differ from the {}-byte token just written (another writer at the same time, or a caching proxy?)",
                    read.bytes.len(),
                    token.len()
                ),
            ));
        }
        tracing::debug!(store = %self.url(), "ping ok");
        Ok(())
    }

    fn ctx(&self) -> &ErrorContext {
        &self.view.ctx
    }

    async fn put_on(
        &self,
        store: &Arc<dyn ObjectStore>,
        op: &'static str,
        key: &str,
        bytes: Bytes,
    ) -> Result<Version> {
        let path = self.path(key)?;
        let _guard = self.lock(&path, op, key).await?;
        let r = store
            .put_opts(&path, PutPayload::from(bytes), PutOptions::default())
            .await
            .map_err(|e| self.ctx().translate(op, key, e))?;
        Ok(version(r.e_tag, r.version))
    }

    async fn get_on(
        &self,
        store: &Arc<dyn ObjectStore>,
        op: &'static str,
        key: &str,
    ) -> Result<GetObject> {
        let path = self.path(key)?;
        let result = store
            .get(&path)
            .await
            .map_err(|e| self.ctx().translate(op, key, e))?;
        let version = meta_version(&result.meta);
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.ctx().translate(op, key, e))?;
        Ok(GetObject { bytes, version })
    }

    /// Local stores: compare the current ETag and write, under the key's lock.
    async fn update_local(
        &self,
        locks: &LocalLocks,
        path: &Path,
        key: &str,
        bytes: Bytes,
        expected: &Version,
    ) -> Result<Version> {
        let _guard = locks.lock(path.as_ref()).await.map_err(|e| {
            self.ctx()
                .backend("update", key, format!("cannot lock: {e}"))
        })?;
        let current = match self.backend.store.head(path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Err(self.ctx().not_found(key)),
            Err(e) => return Err(self.ctx().translate("update", key, e)),
        };
        if expected.etag.is_none() || current.e_tag != expected.etag {
            return Err(self.ctx().conflict(key));
        }
        let r = self
            .backend
            .store
            .put_opts(path, PutPayload::from(bytes), PutOptions::default())
            .await
            .map_err(|e| self.ctx().translate("update", key, e))?;
        Ok(version(r.e_tag, r.version))
    }

    /// The key's lock for local stores; nothing elsewhere.
    async fn lock(&self, path: &Path, op: &'static str, key: &str) -> Result<Option<LockGuard>> {
        match &self.backend.locks {
            Some(locks) => locks
                .lock(path.as_ref())
                .await
                .map(Some)
                .map_err(|e| self.ctx().backend(op, key, format!("cannot lock: {e}"))),
            None => Ok(None),
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key).map_err(|why| {
            Error::invalid(format!("object key {key:?} for {} {why}", self.url()))
        })?;
        Path::parse(join_path(&[&self.view.full, key])).map_err(|e| {
            Error::invalid(format!(
                "object key {key:?} for {} is not valid: {e}",
                self.url()
            ))
        })
    }

    fn prefix_path(&self, prefix: &str) -> Result<Option<Path>> {
        let prefix = normalize_prefix(prefix).map_err(|why| {
            Error::invalid(format!("list prefix {prefix:?} for {} {why}", self.url()))
        })?;
        let full = join_path(&[&self.view.full, &prefix]);
        if full.is_empty() {
            return Ok(None);
        }
        Path::parse(&full).map(Some).map_err(|e| {
            Error::invalid(format!(
                "list prefix {prefix:?} for {} is not valid: {e}",
                self.url()
            ))
        })
    }

    /// Whether `location` is in the lock directory at the bucket root.
    fn is_lock_path(&self, location: &str) -> bool {
        let from_root = if self.backend.root.is_empty() {
            Some(location)
        } else {
            location
                .strip_prefix(self.backend.root.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
        };
        from_root.is_some_and(|rest| rest == LOCK_DIR || rest.starts_with(&format!("{LOCK_DIR}/")))
    }

    /// The listing entry for `meta`, or `None` for lock files.
    fn info(&self, meta: ObjectMeta) -> Option<ObjectInfo> {
        let location = meta.location.as_ref();
        if self.backend.locks.is_some() && self.is_lock_path(location) {
            return None;
        }
        let key = if self.view.full.is_empty() {
            location
        } else {
            location
                .strip_prefix(self.view.full.as_str())
                .and_then(|rest| rest.strip_prefix('/'))?
        };
        Some(ObjectInfo {
            key: key.to_string(),
            size: meta.size,
            last_modified: SystemTime::from(meta.last_modified),
            version: meta_version(&meta),
        })
    }
}

fn version(etag: Option<String>, version: Option<String>) -> Version {
    Version { etag, version }
}

fn meta_version(meta: &ObjectMeta) -> Version {
    version(meta.e_tag.clone(), meta.version.clone())
}

#[cfg(test)]
mod tests {
    use super::Version;

    fn v(etag: Option<&str>, version: Option<&str>) -> Version {
        Version {
            etag: etag.map(String::from),
            version: version.map(String::from),
        }
    }

    #[test]
    fn same_content_compares_etags_first_then_version_ids() {
        // A listing has no version id where a get has one (versioned S3).
        assert!(v(Some("\"a\""), None).same_content(&v(Some("\"a\""), Some("7"))));
        assert!(!v(Some("\"a\""), None).same_content(&v(Some("\"b\""), None)));
        assert!(v(None, Some("3")).same_content(&v(None, Some("3"))));
        assert!(!v(None, Some("3")).same_content(&v(None, Some("4"))));
        assert!(
            !v(None, None).same_content(&v(None, None)),
            "unknown is not the same"
        );
    }
}
