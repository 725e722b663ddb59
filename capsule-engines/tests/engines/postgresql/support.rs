//! Shared helpers: the cluster, stores, engines, checksums of contents.

use std::collections::BTreeMap;
use std::path::Path;

use capsule_engines::{PgEngine, PgOptions, PgRestoreMode};
use capsule_store::Store;
use test_support::postgres::Postgres;

pub use crate::common::{FileCatalog, PREFIX, backup};

pub fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// An engine for `database` on the shared cluster, as the superuser.
pub fn engine(database: &str) -> PgEngine {
    PgEngine::new(PgOptions::from_url(&pg().url(database)).unwrap())
}

/// An engine for `database` with restore `mode`.
pub fn engine_with(database: &str, mode: PgRestoreMode, drop_previous: bool) -> PgEngine {
    PgEngine::new(
        PgOptions::from_url(&pg().url(database))
            .unwrap()
            .with_restore_mode(mode)
            .with_drop_previous(drop_previous),
    )
}

/// Backs `db` up into `fc` as the superuser; returns the backup's id.
pub async fn backed_up(fc: &FileCatalog, db: &str) -> String {
    backup(&fc.catalog, &engine(db))
        .await
        .unwrap()
        .statefile
        .backup_id
        .to_string()
}

/// The error of a restore of `id` by `engine` that must fail.
pub async fn restore_error(fc: &FileCatalog, engine: &PgEngine, id: &str) -> String {
    let ctx = capsule_core::JobContext::new(&capsule_core::NoProgress);
    capsule_core::run_restore(
        &fc.catalog,
        engine,
        id,
        capsule_core::RestoreOptions::default(),
        &ctx,
    )
    .await
    .unwrap_err()
    .to_string()
}

/// A fresh database with `rows` rows in `public.items` and a sequence.
pub fn small_database(prefix: &str, rows: u32) -> String {
    let db = Postgres::unique_name(prefix);
    pg().create_database(&db, None);
    pg().psql(
        &db,
        &format!(
            "CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL, data bytea); \
             INSERT INTO public.items (name, data) \
               SELECT 'item ' || g || ' ✓', decode(md5(g::text), 'hex') FROM generate_series(1, {rows}) g; \
             CREATE TABLE public.notes (id int PRIMARY KEY, body text); \
             INSERT INTO public.notes SELECT g, repeat('n', g) FROM generate_series(1, 25) g;"
        ),
    );
    db
}

/// Checksums of every table's and materialized view's contents (outside
/// the system schemas), plus the large objects.
pub fn content_checksums(db: &str) -> BTreeMap<String, String> {
    let rels = pg().psql(
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
    );
    let mut out = BTreeMap::new();
    for rel in rels.lines().filter(|l| !l.is_empty()) {
        let sum = pg().psql(
            db,
            &format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM {rel} t"
            ),
        );
        out.insert(rel.to_string(), sum);
    }
    out.insert(
        "<large objects>".into(),
        pg().psql(
            db,
            "SELECT count(*) || ':' || coalesce(md5(string_agg(m.oid::text || '=' || encode(lo_get(m.oid), 'hex'), ',' ORDER BY m.oid)), '-') \
             FROM pg_largeobject_metadata m",
        ),
    );
    out
}

pub fn count(db: &str, rel: &str) -> i64 {
    pg().psql(db, &format!("SELECT count(*) FROM {rel}"))
        .parse()
        .unwrap()
}

/// Copies the tree at `from` into `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Uploads the tree at `root` into `store` (keys relative to `root`).
pub async fn load_tree(store: &Store, root: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            Box::pin(load_tree(store, root, &path)).await;
        } else {
            let key = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            store
                .put(&key, std::fs::read(&path).unwrap().into())
                .await
                .unwrap();
        }
    }
}
