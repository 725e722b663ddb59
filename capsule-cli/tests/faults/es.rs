//! Elasticsearch (osmem-server) under fault: two indices backed up
//! through a proxy and restored beside them under new names (`--rename`),
//! the default mode, which never touches an existing index. The live
//! indices must keep every document whatever happens to the restore.

use sha2::{Digest, Sha256};
use test_support::opensearch::OpenSearch;
use test_support::tcp_proxy::TcpProxy;

use crate::process::Running;
use crate::subject::{Live, Phase, Subject};

/// Documents per backed-up index (about 1 KiB each; osmem-server indexes
/// about 4,000 a second).
const DOCS: usize = 1_500;
/// The backed-up indices; restored as `rst-<suffix>`.
const SOURCES: [&str; 2] = ["src-a", "src-b"];
const RESTORED: [&str; 2] = ["rst-a", "rst-b"];
/// An index the backup does not hold.
const KEEP: &str = "keep";

pub struct Es {
    server: OpenSearch,
    proxy: TcpProxy,
    /// The hash of the backed-up documents (by suffix, id and source).
    backup: String,
    /// Started ahead, to replace a killed server at once.
    spare: Option<OpenSearch>,
}

fn load(os: &OpenSearch) {
    let words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
    ];
    for index in SOURCES.iter().chain([&KEEP]) {
        os.ok(
            "PUT",
            &format!("/{index}"),
            r#"{"mappings":{"properties":{"n":{"type":"long"},"tag":{"type":"keyword"},"text":{"type":"text"}}}}"#,
        );
        let n = if *index == KEEP { 50 } else { DOCS };
        let mut bulk = String::new();
        for i in 0..n {
            // Words picked by a hash of the position: text that does not
            // compress to nothing.
            let text: Vec<&str> = (0..150)
                .map(|j| words[((i * 131 + j * 7919) ^ (j * j)) % words.len()])
                .collect();
            bulk.push_str(&format!(
                "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"d{i}\"}}}}\n\
                 {{\"n\":{i},\"tag\":\"t{}\",\"text\":\"{i} {}\"}}\n",
                i % 7,
                text.join(" ")
            ));
            if bulk.len() > 2 << 20 {
                os.bulk(&bulk);
                bulk.clear();
            }
        }
        if !bulk.is_empty() {
            os.bulk(&bulk);
        }
    }
}

fn exists(os: &OpenSearch, index: &str) -> bool {
    os.request("HEAD", &format!("/{index}"), "").status == 200
}

/// Every document of `index` as (id, canonical source), sorted.
fn documents(os: &OpenSearch, index: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut body = os.ok(
        "POST",
        &format!("/{index}/_search?scroll=1m"),
        r#"{"size":1000,"sort":["_doc"]}"#,
    );
    loop {
        let page: serde_json::Value = serde_json::from_str(&body).expect("search answer");
        let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            break;
        }
        for h in hits {
            out.push((
                h["_id"].as_str().unwrap_or_default().to_string(),
                canonical(&h["_source"]),
            ));
        }
        let scroll = page["_scroll_id"].as_str().unwrap_or_default().to_string();
        body = os.ok(
            "POST",
            "/_search/scroll",
            &serde_json::json!({"scroll": "1m", "scroll_id": scroll}).to_string(),
        );
    }
    out.sort();
    out
}

/// JSON with object keys sorted.
fn canonical(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(k.as_str()),
                        canonical(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// The documents of `indices`, hashed by index suffix (`a`), id and source.
fn hash(os: &OpenSearch, indices: &[&str]) -> String {
    let mut h = Sha256::new();
    for index in indices {
        let suffix = index.rsplit('-').next().unwrap_or(index);
        for (id, source) in documents(os, index) {
            h.update(format!("{suffix}\t{id}\t{source}\n"));
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Es {
    pub fn new() -> Es {
        let server = OpenSearch::start();
        load(&server);
        let backup = hash(&server, &SOURCES);
        Es {
            proxy: TcpProxy::start(server.port),
            server,
            backup,
            spare: Some(OpenSearch::start()),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port)
    }

    /// The live indices: the backed-up ones and one the backup lacks.
    fn live_hash(&self) -> String {
        hash(&self.server, &[SOURCES[0], SOURCES[1], KEEP])
    }
}

impl Subject for Es {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    fn backup_args(&self) -> Vec<String> {
        [
            "es",
            "--create",
            "--es-url",
            &self.url(),
            "--indices",
            "src-*",
        ]
        .into_iter()
        .chain(["--cluster", "faults", "--service", "faults/es"])
        .map(String::from)
        .collect()
    }

    fn restore_args(&self, id: &str) -> Vec<String> {
        [
            "es",
            "--restore",
            "--yes",
            "--id",
            id,
            "--es-url",
            &self.url(),
        ]
        .into_iter()
        .chain(["--rename", "src-(.+):rst-$1", "--cluster", "faults"])
        .map(String::from)
        .collect()
    }

    fn verify_args(&self, id: &str) -> Vec<String> {
        ["es", "--verify", "--id", id, "--es-url", &self.server.url]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn db_proxy(&self, _phase: Phase) -> &TcpProxy {
        &self.proxy
    }

    fn tool(&self, _phase: Phase) -> &'static str {
        "osmem-server"
    }

    fn tool_is_server(&self) -> bool {
        true
    }

    fn kill_tool(&mut self, _run: &Running, _phase: Phase) -> bool {
        // In memory: the data dies with it. Dropping the guard SIGKILLs it.
        let fresh = self.spare.take().unwrap_or_else(OpenSearch::start);
        drop(std::mem::replace(&mut self.server, fresh));
        true
    }

    fn recover(&mut self, _phase: Phase) {
        self.spare = Some(OpenSearch::start());
        load(&self.server);
        self.proxy = TcpProxy::start(self.server.port);
    }

    fn live_before(&mut self) -> Live {
        for index in RESTORED {
            if exists(&self.server, index) {
                self.server.ok("DELETE", &format!("/{index}"), "");
            }
        }
        Live {
            checksum: self.live_hash(),
        }
    }

    fn live_after(
        &mut self,
        before: &Live,
        restored: bool,
        _error: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        let mut wrong = Vec::new();
        let mut notes = Vec::new();
        if self.live_hash() != before.checksum {
            wrong.push("a restore changed the live indices".into());
        }
        let made: Vec<&str> = RESTORED
            .into_iter()
            .filter(|i| exists(&self.server, i))
            .collect();
        let whole = made.len() == RESTORED.len() && hash(&self.server, &RESTORED) == self.backup;
        match (restored, whole) {
            (true, true) => {}
            (true, false) => wrong.push(format!(
                "the restore says finished but the restored indices ({made:?}) do not hold the backup"
            )),
            (false, true) => notes.push(
                "the restored indices hold the whole backup, but the run is not recorded as \
                 finished (killed at the end, or the store was down when it was to be recorded)"
                    .into(),
            ),
            (false, false) if !made.is_empty() => notes.push(
                "a restore that did not finish left new indices rst-* behind \
                 (the live ones untouched; removed by the suite)"
                    .into(),
            ),
            (false, false) => {}
        }
        (wrong, notes)
    }
}
