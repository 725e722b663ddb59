//! Backs up a PostgreSQL database into a local directory and restores it
//! (safe mode: into a new database, then swapped in), from Rust.
//!
//! ```text
//! CAPSULE_PG_URL=postgres://app@127.0.0.1:5432/app \
//! CAPSULE_STORE_URL=file:///tmp/capsule-backups \
//!   cargo run -p capsule-engines --example pg_backup_restore
//! ```

use capsule_core::{
    BackupOptions, Catalog, JobContext, NoProgress, RestoreOptions, run_backup, run_restore,
};
use capsule_engines::{PgEngine, PgOptions};
use capsule_store::Store;

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("CAPSULE_PG_URL") else {
        eprintln!(
            "set CAPSULE_PG_URL to the database to back up, e.g. postgres://app@127.0.0.1:5432/app"
        );
        std::process::exit(2);
    };
    if let Err(e) = run(&url).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store_url =
        std::env::var("CAPSULE_STORE_URL").unwrap_or_else(|_| "file:///tmp/capsule-backups".into());
    if let Some(dir) = store_url.strip_prefix("file://") {
        std::fs::create_dir_all(dir)?;
    }

    let catalog = Catalog::new(Store::from_url(&store_url)?.with_prefix("cnvrg-smart-backups")?);
    let engine = PgEngine::new(PgOptions::from_url(url)?);
    let ctx = JobContext::new(&NoProgress);

    let backup = run_backup(
        &catalog,
        &engine,
        BackupOptions::default().with_description("example"),
        &ctx,
    )
    .await?;
    let id = backup.statefile.backup_id.to_string();
    println!("backed up {engine} as {id}");

    let restored = run_restore(&catalog, &engine, &id, RestoreOptions::default(), &ctx).await?;
    println!(
        "restored {id} into {} ({})",
        restored.outcome.target, restored.outcome.mode
    );
    Ok(())
}
