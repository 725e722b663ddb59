//! A throwaway Azurite blob server (Azure Storage emulator) on a free
//! loopback port, with the well-known development account.
//!
//! object_store does not create containers: create them with
//! [`Azurite::create_container`] (a Shared Key signed `PUT ?restype=container`).
//! A capsule-store URL for a container is [`Azurite::az_url`] (account key
//! to add with `StoreBuilder::with_access_key(account, key)`) or
//! [`Azurite::az_url_with_credentials`] (key as a URL option).

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{HttpResponse, ServerProcess, find_binary, free_port, http_request};
use crate::seaweedfs::hmac_sha256;

/// Azurite's development account name.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";

/// Azurite's development account key (public, documented by Microsoft).
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const API_VERSION: &str = "2021-08-06";

/// A running Azurite blob service on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct Azurite {
    /// The account endpoint, path style:
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
    /// The blob service port.
    pub port: u16,
    /// The account name ([`DEV_ACCOUNT`]).
    pub account: String,
    /// The account key ([`DEV_ACCOUNT_KEY`]).
    pub key: String,
    process: ServerProcess,
}

impl Azurite {
    /// Starts `azurite-blob` in memory (`--inMemoryPersistence`, so no
    /// `--location`) with `--loose --skipApiVersionCheck --disableTelemetry`
    /// and waits until it accepts connections.
    ///
    /// The binary is `$CAPSULE_AZURITE_BLOB`, else `azurite-blob` on `PATH`.
    ///
    /// # Panics
    /// If the binary is missing (naming `scripts/setup-test-deps.sh`) or the
    /// server does not start within 60 s (with the tail of its log).
    pub fn start() -> Azurite {
        let binary = find_binary("azurite-blob", "CAPSULE_AZURITE_BLOB", &[]);
        let work = ServerProcess::work_dir_for("azurite");
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.current_dir(work.path()).args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--inMemoryPersistence",
        ]);
        let mut process = ServerProcess::spawn("azurite", cmd, work);
        process.wait_ready(
            "blob service answering HTTP",
            Duration::from_secs(60),
            || http_request(port, "GET", "/", &[], b"").is_ok(),
        );
        Azurite {
            endpoint: format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}"),
            port,
            account: DEV_ACCOUNT.into(),
            key: DEV_ACCOUNT_KEY.into(),
            process,
        }
    }

    /// One server shared by every test of the calling test binary, started
    /// on first use and stopped when the test process exits.
    pub fn shared() -> &'static Azurite {
        static SHARED: OnceLock<Azurite> = OnceLock::new();
        SHARED.get_or_init(Azurite::start)
    }

    /// Creates container `name` (an existing container is fine).
    ///
    /// # Panics
    /// If Azurite refuses, with its answer and log tail.
    pub fn create_container(&self, name: &str) {
        match self.signed_request("PUT", &format!("/{name}"), &[("restype", "container")]) {
            Ok(r) if r.status == 201 => {}
            Ok(r) if r.status == 409 && r.body.contains("ContainerAlreadyExists") => {}
            Ok(r) => self.process.fail(&format!(
                "cannot create container {name}: HTTP {}: {}",
                r.status, r.body
            )),
            Err(e) => self
                .process
                .fail(&format!("cannot create container {name}: {e}")),
        }
    }

    /// A capsule-store URL for `container` without the account key:
    /// `az://<container>?endpoint=http://127.0.0.1:<port>/devstoreaccount1&account_name=devstoreaccount1&allow_http=true`.
    /// Pass the key with `StoreBuilder::with_access_key(account, key)`.
    pub fn az_url(&self, container: &str) -> String {
        format!(
            "az://{container}?endpoint={}&account_name={}&allow_http=true",
            self.endpoint, self.account
        )
    }

    /// [`Self::az_url`] with the key as a URL option (`account_key=...`,
    /// percent-encoded): one string that builds a working store.
    pub fn az_url_with_credentials(&self, container: &str) -> String {
        let key = self
            .key
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        format!("{}&account_key={key}", self.az_url(container))
    }

    /// The server process (log, work directory).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Sends an empty-bodied request to `/<account><path>` signed with the
    /// account's Shared Key; `query` pairs must be sorted by name.
    fn signed_request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> std::io::Result<HttpResponse> {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let mut resource = format!("/{0}/{0}{path}", self.account);
        for (name, value) in query {
            resource.push_str(&format!("\n{name}:{value}"));
        }
        // VERB, then 11 standard headers (all empty here, Content-Length
        // included as it is zero), then canonical x-ms-* headers and resource.
        let string_to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n{resource}"
        );
        let key = base64_decode(&self.key).expect("account key is base64");
        let signature = base64_encode(&hmac_sha256(&key, string_to_sign.as_bytes()));
        let authorization = format!("SharedKey {}:{signature}", self.account);
        let query_string: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let target = format!("/{}{path}?{}", self.account, query_string.join("&"));
        http_request(
            self.port,
            method,
            &target,
            &[
                ("x-ms-date", &date),
                ("x-ms-version", API_VERSION),
                ("Authorization", &authorization),
            ],
            b"",
        )
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = BASE64.iter().position(|&b| b == c)? as u32;
        acc = acc << 6 | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(base64_decode(&encoded).unwrap(), text.as_bytes());
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64_decode(DEV_ACCOUNT_KEY).unwrap().len(), 64);
    }
}
