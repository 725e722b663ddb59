//! Paths to the test fixtures kept in the repository's `fixtures/` folder.

use std::path::PathBuf;

/// The bucket tree written by the legacy (v1alpha1) capsule:
/// `fixtures/legacy-v1alpha1`, holding `cnvrg-smart-backups/...`.
///
/// Use it as the root of a `file://` store to read legacy backups.
pub fn legacy_bucket_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/legacy-v1alpha1"
    ));
    dir.canonicalize().unwrap_or(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_bucket_dir_holds_the_default_prefix() {
        assert!(legacy_bucket_dir().join("cnvrg-smart-backups").is_dir());
    }
}
