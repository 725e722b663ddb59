//! Encryption at rest on the command line: who backups are encrypted to
//! (`--encrypt-to`, `--encryption-key-file`) and which keys decrypt them
//! (`--identity-file`), turned into the core's [`Recipients`] and
//! [`Identities`].
//!
//! | flag | environment | used by |
//! |---|---|---|
//! | `--encrypt-to RECIPIENT` (repeatable; `age1…`) | `CNVRG_CAPSULE_ENCRYPT_TO` (comma-separated) | `--create`, `capsule start` |
//! | `--encryption-key-file FILE` (one `age1…` a line) | `CNVRG_CAPSULE_ENCRYPTION_KEY_FILE` | `--create`, `capsule start` |
//! | `--identity-file FILE` (`AGE-SECRET-KEY-1…`, as `age-keygen` writes) | `CNVRG_CAPSULE_IDENTITY_FILE` | `--restore`, `--verify`, `--download`, `capsule start` |

use std::path::PathBuf;

use anyhow::Result;
use capsule_core::{Error, Identities, Recipients};
use clap::Args;

use crate::exit::UsageError;

/// The encryption flags shared by the service subcommands and `capsule start`.
#[derive(Clone, Debug, Default, Args)]
pub struct EncryptionArgs {
    /// Encrypt new backups (age) to this public key (age1…); repeat for
    /// several. Only the holders of a matching identity can read them.
    #[arg(
        long,
        value_name = "RECIPIENT",
        env = "CNVRG_CAPSULE_ENCRYPT_TO",
        value_delimiter = ','
    )]
    pub encrypt_to: Vec<String>,
    /// Encrypt new backups to every public key in this file (one age1… a line).
    #[arg(long, value_name = "FILE", env = "CNVRG_CAPSULE_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Decrypt encrypted backups (--restore, --verify, --download) with the
    /// age identities (secret keys) in this file.
    #[arg(long, value_name = "FILE", env = "CNVRG_CAPSULE_IDENTITY_FILE")]
    pub identity_file: Option<PathBuf>,
}

impl EncryptionArgs {
    /// Whether new backups are to be encrypted.
    pub fn encrypts(&self) -> bool {
        !self.encrypt_to.is_empty() || self.encryption_key_file.is_some()
    }

    /// The recipients given, `None` when encryption was not asked for.
    ///
    /// # Errors
    /// [`UsageError`] naming the flag whose value is not a public key, or
    /// whose file cannot be read.
    pub fn recipients(&self) -> Result<Option<Recipients>> {
        if !self.encrypts() {
            return Ok(None);
        }
        let mut all =
            Recipients::from_keys(&self.encrypt_to).map_err(|e| usage("--encrypt-to", e))?;
        if let Some(file) = &self.encryption_key_file {
            let more =
                Recipients::read_file(file).map_err(|e| usage("--encryption-key-file", e))?;
            all = all.merge(more);
        }
        Ok(Some(all))
    }

    /// The identities of `--identity-file`; none without it.
    ///
    /// # Errors
    /// [`UsageError`] when the file cannot be read or holds no identity
    /// (its content is never shown).
    pub fn identities(&self) -> Result<Identities> {
        match &self.identity_file {
            Some(file) => Identities::read_file(file).map_err(|e| usage("--identity-file", e)),
            None => Ok(Identities::new()),
        }
    }
}

fn usage(flag: &str, e: Error) -> anyhow::Error {
    UsageError::new(format!("invalid {flag}: {e}")).into()
}

/// Turns "no identity was given" into a usage error (exit 2) that says
/// which flag gives one; other errors pass unchanged.
pub fn hint(err: anyhow::Error) -> anyhow::Error {
    let missing = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<Error>(),
            Some(Error::IdentityRequired { .. })
        )
    });
    if missing {
        UsageError::new(format!(
            "{err}: give the age identity file with --identity-file FILE \
             (or CNVRG_CAPSULE_IDENTITY_FILE)"
        ))
        .into()
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_flag() {
        let a = EncryptionArgs {
            encrypt_to: vec!["nope".into()],
            ..Default::default()
        };
        let e = a.recipients().unwrap_err();
        assert!(e.is::<UsageError>());
        assert!(e.to_string().starts_with("invalid --encrypt-to: "), "{e}");
        let a = EncryptionArgs {
            identity_file: Some("/nonexistent/key.txt".into()),
            ..Default::default()
        };
        let e = a.identities().unwrap_err();
        assert!(
            e.to_string().starts_with("invalid --identity-file: "),
            "{e}"
        );
        assert!(EncryptionArgs::default().recipients().unwrap().is_none());
        assert!(EncryptionArgs::default().identities().unwrap().is_empty());
    }
}
