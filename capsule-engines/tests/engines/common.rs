//! What every engine's tests share: a `file://` catalog in a temp dir and
//! a plain backup run.

use std::path::PathBuf;

use capsule_core::{
    BackupOptions, BackupReport, Catalog, Engine, JobContext, NoProgress, Result, run_backup,
};
use capsule_store::Store;
use serde_json::Value;
use tempfile::TempDir;

/// The dst-dir every test store uses.
pub const PREFIX: &str = "cnvrg-smart-backups";

/// A `file://` catalog in a fresh temp dir.
pub struct FileCatalog {
    pub catalog: Catalog,
    pub dir: TempDir,
}

impl FileCatalog {
    pub fn new() -> FileCatalog {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from_url(&format!("file://{}", dir.path().display()))
            .unwrap()
            .with_prefix(PREFIX)
            .unwrap();
        FileCatalog {
            catalog: Catalog::new(store),
            dir,
        }
    }

    /// The local file of object `name` of backup `id`.
    pub fn object_path(&self, id: &str, name: &str) -> PathBuf {
        self.dir.path().join(PREFIX).join(id).join(name)
    }

    /// The statefile as raw JSON.
    pub fn statefile_json(&self, id: &str) -> Value {
        let bytes = std::fs::read(self.object_path(id, "statefile.json")).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Overwrites the statefile with `json`.
    #[allow(dead_code)] // not every engine's tests edit statefiles
    pub fn write_statefile_json(&self, id: &str, json: &Value) {
        std::fs::write(
            self.object_path(id, "statefile.json"),
            serde_json::to_vec_pretty(json).unwrap(),
        )
        .unwrap();
    }
}

/// Backs `engine` up into `catalog` with description `test`.
pub async fn backup(catalog: &Catalog, engine: &impl Engine) -> Result<BackupReport> {
    let ctx = JobContext::new(&NoProgress);
    run_backup(
        catalog,
        engine,
        BackupOptions::default().with_description("test"),
        &ctx,
    )
    .await
}
