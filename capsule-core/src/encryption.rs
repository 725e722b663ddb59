//! Client-side encryption of artifacts in the [age](https://age-encryption.org/v1)
//! format, to X25519 recipients.
//!
//! A backup is encrypted to [`Recipients`] (public keys, `age1…`), so the
//! machine that backs up never holds a key that can read its backups.
//! Restores, restore drills and downloads decrypt with [`Identities`]
//! (secret keys, `AGE-SECRET-KEY-1…`, as `age-keygen` writes them). The
//! statefile records, per artifact, the format and the recipients' public
//! keys ([`Encryption`]), never a secret. The files are plain age files:
//! `age -d -i key.txt dump.pgc.zst.age | zstd -d` reads one without capsule.
//!
//! In the upload pipeline, encryption comes after compression and before
//! the checksum, so the recorded SHA-256 is of the stored (encrypted)
//! bytes. age streams in 64 KiB chunks: memory stays bounded.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;

use age::x25519;
use capsule_store::Store;

use crate::error::{Error, Result};
use crate::statefile::Encryption;

/// The `format` recorded for age-encrypted artifacts.
pub const AGE_FORMAT: &str = "age";

/// The suffix of an encrypted artifact's object name (`dump.pgc.zst.age`).
pub const AGE_SUFFIX: &str = ".age";

/// How many bytes of an object are read to check its age header: enough for
/// hundreds of X25519 recipients.
const HEADER_PROBE: u64 = 64 * 1024;

/// The public keys (`age1…`) backups are encrypted to. Anyone holding the
/// identity of one of them can decrypt; nobody else can.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    keys: Vec<x25519::Recipient>,
}

impl Recipients {
    /// No recipients: nothing is encrypted.
    pub fn new() -> Self {
        Recipients::default()
    }

    /// Recipients from public keys (`age1…`), e.g. repeated `--encrypt-to`
    /// values. Surrounding whitespace is ignored; duplicates are kept once.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first value that is not an age X25519
    /// public key.
    pub fn from_keys<I, S>(keys: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Recipients::new();
        for key in keys {
            out.push(parse_recipient(key.as_ref().trim(), None)?);
        }
        Ok(out)
    }

    /// Parses a recipients file: one public key (`age1…`) a line; blank
    /// lines and `#` comments are skipped. `origin` names the file in
    /// messages.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the file and line at fault (a secret key is
    /// refused without being shown), or when the file holds no recipient.
    pub fn parse_file(text: &str, origin: &str) -> Result<Self> {
        let mut out = Recipients::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(parse_recipient(line, Some((origin, n + 1)))?);
        }
        if out.is_empty() {
            return Err(Error::invalid(
                "recipient",
                format!("recipients file {origin} holds no recipient (age1…)"),
            ));
        }
        Ok(out)
    }

    /// Reads a recipients file (see [`Recipients::parse_file`]).
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; as [`Recipients::parse_file`].
    pub fn read_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading recipients file {}", path.display()), e))?;
        Self::parse_file(&text, &path.display().to_string())
    }

    /// These recipients and `other`'s, each once.
    pub fn merge(mut self, other: Recipients) -> Self {
        for k in other.keys {
            self.push(k);
        }
        self
    }

    fn push(&mut self, key: x25519::Recipient) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Whether there is none (nothing would be encrypted).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The public keys, `age1…`.
    pub fn to_strings(&self) -> Vec<String> {
        self.keys.iter().map(ToString::to_string).collect()
    }

    /// What the statefile records for an artifact encrypted to these.
    pub(crate) fn record(&self) -> Encryption {
        Encryption::age(self.to_strings())
    }

    /// Wraps `output` in an age stream to these recipients.
    pub(crate) fn seal<W: Write>(&self, output: W) -> io::Result<SealedWriter<W>> {
        let encryptor =
            age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("age: {e}")))?;
        Ok(SealedWriter::Age(encryptor.wrap_output(output)?))
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Recipients")
            .field(&self.to_strings())
            .finish()
    }
}

impl fmt::Display for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(", "))
    }
}

impl FromStr for Recipients {
    type Err = Error;
    /// One public key, or several separated by commas.
    fn from_str(s: &str) -> Result<Self> {
        Recipients::from_keys(s.split(',').filter(|k| !k.trim().is_empty()))
    }
}

fn parse_recipient(key: &str, at: Option<(&str, usize)>) -> Result<x25519::Recipient> {
    let place = match at {
        Some((file, line)) => format!("recipients file {file}, line {line}: "),
        None => String::new(),
    };
    if key.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        // Never echo a secret key, even quoted or after other text.
        return Err(Error::invalid(
            "recipient",
            format!(
                "{place}this is a secret key (AGE-SECRET-KEY-…): give its public key (age1…) \
                 instead; `age-keygen -y FILE` prints it"
            ),
        ));
    }
    x25519::Recipient::from_str(key).map_err(|why| {
        let shown: String = key.chars().take(80).collect();
        Error::invalid(
            "recipient",
            format!(
                "{place}{shown:?} is not an age X25519 public key (age1…): {why}{}",
                if key.starts_with("ssh-") {
                    "; SSH keys are not supported"
                } else {
                    ""
                }
            ),
        )
    })
}

/// Secret keys (`AGE-SECRET-KEY-1…`) that decrypt backups. `Debug` shows
/// only their public keys; the secrets are never printed.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<x25519::Identity>,
}

impl Identities {
    /// No identities: only unencrypted backups can be read.
    pub fn new() -> Self {
        Identities::default()
    }

    /// Parses an identity file as `age-keygen` writes it: one
    /// `AGE-SECRET-KEY-1…` a line; blank lines and `#` comments are
    /// skipped. `origin` names the file in messages.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the file and line at fault (never its
    /// content), or when the file holds no identity. Passphrase-protected
    /// identity files are refused: decrypt them first (`age -d`).
    pub fn parse_file(text: &str, origin: &str) -> Result<Self> {
        let bad = |msg: String| Error::invalid("identity", format!("identity file {origin}{msg}"));
        if text.starts_with("age-encryption.org/") || text.contains("-----BEGIN AGE ENCRYPTED FILE")
        {
            return Err(bad(
                " is encrypted with a passphrase, which capsule does not support: \
                 decrypt it first (age -d)"
                    .into(),
            ));
        }
        let mut out = Identities::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match x25519::Identity::from_str(line) {
                Ok(k) => out.keys.push(k),
                Err(_) if line.starts_with("age1") => {
                    return Err(bad(format!(
                        ", line {}: this is a public key (a recipient); an identity file holds \
                         the secret key (AGE-SECRET-KEY-1…)",
                        n + 1
                    )));
                }
                Err(why) => {
                    return Err(bad(format!(
                        ", line {}: not an age X25519 identity (AGE-SECRET-KEY-1…): {why}",
                        n + 1
                    )));
                }
            }
        }
        if out.keys.is_empty() {
            return Err(bad(" holds no identity (AGE-SECRET-KEY-1…)".into()));
        }
        Ok(out)
    }

    /// Reads an identity file (see [`Identities::parse_file`]).
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; as [`Identities::parse_file`].
    pub fn read_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading identity file {}", path.display()), e))?;
        Self::parse_file(&text, &path.display().to_string())
    }

    /// These identities and `other`'s.
    pub fn merge(mut self, other: Identities) -> Self {
        self.keys.extend(other.keys);
        self
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The public keys (`age1…`) of these identities: the recipients they
    /// decrypt.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.to_public().to_string())
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k as &dyn age::Identity)
    }

    /// Opens the age stream `input` (header, then payload) with these
    /// identities.
    pub(crate) fn open<R: io::Read>(
        &self,
        input: R,
    ) -> std::result::Result<age::stream::StreamReader<R>, age::DecryptError> {
        age::Decryptor::new(input)?.decrypt(self.iter())
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identities")
            .field(&self.public_keys())
            .finish()
    }
}

/// The writer compression writes into: the next stage as is, or an age
/// stream over it. [`SealedWriter::finish`] must be called.
pub(crate) enum SealedWriter<W: Write> {
    /// No encryption.
    Plain(W),
    /// age, to the configured recipients.
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> SealedWriter<W> {
    /// Seals `output` for `recipients`, or passes it through.
    pub(crate) fn new(output: W, recipients: Option<&Recipients>) -> io::Result<Self> {
        match recipients {
            Some(r) if !r.is_empty() => r.seal(output),
            _ => Ok(SealedWriter::Plain(output)),
        }
    }

    /// Writes the age stream's last chunk; returns the inner writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            SealedWriter::Plain(w) => Ok(w),
            SealedWriter::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SealedWriter::Plain(w) => w.write(buf),
            SealedWriter::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            SealedWriter::Plain(w) => w.flush(),
            SealedWriter::Age(w) => w.flush(),
        }
    }
}

/// "age, to age1…, age1…" for messages.
fn describe(enc: &Encryption) -> String {
    if enc.recipients.is_empty() {
        enc.format.clone()
    } else {
        format!("{}, to {}", enc.format, enc.recipients.join(", "))
    }
}

/// The error for an artifact encrypted as `enc` that `identities` cannot
/// open (`e`, from the header and key stage).
pub(crate) fn key_error(
    backup: &str,
    object: &str,
    enc: &Encryption,
    identities: &Identities,
    e: &age::DecryptError,
) -> Error {
    let decrypt = |reason: String| Error::Decrypt {
        id: backup.to_string(),
        object: object.to_string(),
        reason,
    };
    let corrupt = |reason: String| Error::Corrupt {
        id: backup.to_string(),
        object: object.to_string(),
        reason,
    };
    match e {
        age::DecryptError::NoMatchingKeys => decrypt(format!(
            "none of the identities given ({}) is one of its recipients ({})",
            identities.public_keys().join(", "),
            describe(enc)
        )),
        age::DecryptError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            corrupt(format!("its age header is incomplete ({io})"))
        }
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => corrupt(format!(
            "not an age file, though the statefile says so: {e}"
        )),
        age::DecryptError::InvalidMac => corrupt(format!("its age header was altered: {e}")),
        other => decrypt(format!("{other} ({})", describe(enc))),
    }
}

/// The error for an encrypted artifact when no identity was given.
pub(crate) fn identity_required(backup: &str, object: &str, enc: &Encryption) -> Error {
    Error::IdentityRequired {
        id: backup.to_string(),
        object: object.to_string(),
        encryption: describe(enc),
    }
}

/// Checks that `identities` open the age header of object `key` (artifact
/// of `backup`, encrypted as `enc`, `size` stored bytes when known) by
/// reading only its first bytes: a missing or wrong key is found before
/// anything is restored.
///
/// # Errors
/// [`Error::IdentityRequired`] without identities, [`Error::Decrypt`] when
/// none of them is a recipient, [`Error::Corrupt`] for a damaged header,
/// storage errors.
pub(crate) async fn check_header(
    store: &Store,
    backup: &str,
    key: &str,
    object: &str,
    enc: &Encryption,
    size: Option<u64>,
    identities: &Identities,
) -> Result<()> {
    if identities.is_empty() {
        return Err(identity_required(backup, object, enc));
    }
    let ctx = || format!("backup {backup}: reading the age header of {object}");
    let size = match size {
        Some(s) => s,
        None => {
            store
                .head(key)
                .await
                .map_err(|e| Error::store(ctx(), e))?
                .size
        }
    };
    let head = store
        .get_range(key, 0..size.min(HEADER_PROBE))
        .await
        .map_err(|e| Error::store(ctx(), e))?;
    match identities.open(&head[..]) {
        Ok(_) => Ok(()),
        Err(e) => Err(key_error(backup, object, enc, identities, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use age::secrecy::ExposeSecret;

    fn keypair() -> (String, String) {
        let k = x25519::Identity::generate();
        (
            k.to_string().expose_secret().to_string(),
            k.to_public().to_string(),
        )
    }

    #[test]
    fn recipients_parse_keys_and_files() {
        let (_, a) = keypair();
        let (_, b) = keypair();
        let r = Recipients::from_keys([&a, &format!(" {b} "), &a]).unwrap();
        assert_eq!(r.to_strings(), vec![a.clone(), b.clone()]);
        let parsed: Recipients = format!("{a},{b}").parse().unwrap();
        assert_eq!(parsed, r);
        let file = format!("# team key\n{a}\n\n  {b}\n");
        assert_eq!(Recipients::parse_file(&file, "r.txt").unwrap(), r);
        assert_eq!(format!("{r:?}"), format!("Recipients([\"{a}\", \"{b}\"])"));
    }

    #[test]
    fn bad_recipients_are_named_and_secrets_never_shown() {
        let (secret, _) = keypair();
        let cases = [
            (format!("{secret}\n"), "line 1: this is a secret key"),
            (format!("\"{secret}\"\n"), "line 1: this is a secret key"),
            (
                format!("key: {}\n", secret.to_lowercase()),
                "line 1: this is a secret key",
            ),
            ("# only a comment\n".to_string(), "holds no recipient"),
            (
                "age1nope\n".to_string(),
                "line 1: \"age1nope\" is not an age",
            ),
            (
                "ssh-ed25519 AAAA x@y\n".to_string(),
                "SSH keys are not supported",
            ),
        ];
        for (text, want) in cases {
            let e = Recipients::parse_file(&text, "r.txt")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.starts_with("recipients file r.txt"), "{e}");
            assert!(!e.to_uppercase().contains(&secret[15..]), "{e}");
        }
        let e = Recipients::from_keys([&secret]).unwrap_err().to_string();
        assert!(!e.contains(&secret) && e.contains("secret key"), "{e}");
    }

    #[test]
    fn identities_parse_files_without_showing_secrets() {
        let (secret, public) = keypair();
        let text = format!("# created: today\n# public key: {public}\n{secret}\n");
        let ids = Identities::parse_file(&text, "key.txt").unwrap();
        assert_eq!(ids.public_keys(), vec![public.clone()]);
        let shown = format!("{ids:?}");
        assert!(
            shown.contains(&public) && !shown.contains(&secret),
            "{shown}"
        );
        let cases = [
            (format!("{public}\n"), "line 1: this is a public key"),
            (
                format!("{}x\n", &secret[..20]),
                "line 1: not an age X25519 identity",
            ),
            ("\n# nothing\n".to_string(), "holds no identity"),
            (
                "age-encryption.org/v1\n-> scrypt x 18\n".to_string(),
                "encrypted with a passphrase",
            ),
        ];
        for (text, want) in cases {
            let e = Identities::parse_file(&text, "key.txt")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.starts_with("identity file key.txt"), "{e}");
            assert!(!e.contains(&secret[15..]), "{e}");
        }
    }

    fn seal(recipients: &Recipients, data: &[u8]) -> Vec<u8> {
        let mut w = SealedWriter::new(Vec::new(), Some(recipients)).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn sealed_streams_open_only_with_a_recipient_identity() {
        let (secret, public) = keypair();
        let (other, _) = keypair();
        let r = Recipients::from_keys([&public]).unwrap();
        let data = b"marker-1234 ".repeat(20_000);
        let sealed = seal(&r, &data);
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        assert!(!sealed.windows(11).any(|w| w == b"marker-1234"));

        let ids = Identities::parse_file(&secret, "k").unwrap();
        let mut out = Vec::new();
        ids.open(&sealed[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);

        let wrong = Identities::parse_file(&other, "k").unwrap();
        let e = wrong.open(&sealed[..]).err().unwrap();
        let enc = r.record();
        let shown = key_error("b", "dump", &enc, &wrong, &e).to_string();
        assert!(
            shown.starts_with("backup b: cannot decrypt dump: none of the identities given"),
            "{shown}"
        );
        assert!(shown.contains(&public), "{shown}");

        // A truncated stream fails rather than ending early.
        let mut out = Vec::new();
        let cut = &sealed[..sealed.len() - 100];
        assert!(ids.open(cut).unwrap().read_to_end(&mut out).is_err());

        // Passing through without recipients.
        let plain = seal(&Recipients::new(), b"abc");
        assert_eq!(plain, b"abc");
    }
}
