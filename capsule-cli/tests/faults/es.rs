//! Elasticsearch (osmem-server) under fault: two indices backed up
//! through a proxy and restored beside them under new names (`--rename`),
//! the default mode, which never touches an existing index. The live
//! indices must keep every document whatever happens to the restore.
//!
//! The destructive mode (`--replace`, with the same renaming) restores
//! over live indices `rst-a` and `rst-b` holding other documents: each is
//! loaded into a staging index (`capsule-restore-<tag>-rst-a`), checked,
//! then the live index is deleted and the staging one moved in. An index
//! a failed restore changed must be named in its error, and one it
//! deleted must have its documents in the staging index the error names;
//! an error saying nothing was replaced must leave every one intact.
//! Staging indices a killed or failed restore left are notes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use test_support::opensearch::OpenSearch;
use test_support::tcp_proxy::TcpProxy;

use crate::process::Running;
use crate::subject::{Live, Mode, Phase, Subject};

/// Documents per backed-up index (about 1 KiB each; osmem-server indexes
/// about 4,000 a second).
const DOCS: usize = 1_500;
/// The backed-up indices; restored as `rst-<suffix>`.
const SOURCES: [&str; 2] = ["src-a", "src-b"];
const RESTORED: [&str; 2] = ["rst-a", "rst-b"];
/// The prefix of `--replace`'s staging indices.
const STAGING: &str = "capsule-restore-";
/// Documents of each live index `--replace` replaces.
const LIVE_DOCS: usize = 40;
const MAPPINGS: &str = r#"{"mappings":{"properties":{"n":{"type":"long"},"tag":{"type":"keyword"},"text":{"type":"text"}}}}"#;
/// An index the backup does not hold.
const KEEP: &str = "keep";

pub struct Es {
    server: OpenSearch,
    proxy: TcpProxy,
    /// The hash of the backed-up documents (by suffix, id and source).
    backup: String,
    /// The hash of each backed-up index's documents, by restored name.
    backup_parts: BTreeMap<String, String>,
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
        os.ok("PUT", &format!("/{index}"), MAPPINGS);
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

/// The indices named `prefix…`.
fn indices_like(os: &OpenSearch, prefix: &str) -> Vec<String> {
    let body = os.ok("GET", "/_cat/indices?format=json&h=index", "");
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).expect("_cat/indices answer");
    all.iter()
        .filter_map(|i| i["index"].as_str())
        .filter(|i| i.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// Whether `text` names `index` as a word of its own (not as the end of
/// a staging index's name).
fn names(text: &str, index: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|w| w == index)
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
        let backup_parts = SOURCES
            .iter()
            .zip(RESTORED)
            .map(|(src, rst)| (rst.to_string(), hash(&server, &[src])))
            .collect();
        Es {
            proxy: TcpProxy::start(server.port),
            server,
            backup,
            backup_parts,
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

    /// The hash of `index`'s documents; `None` when it does not exist.
    fn part(&self, index: &str) -> Option<String> {
        exists(&self.server, index).then(|| hash(&self.server, &[index]))
    }

    /// Deletes `indices`.
    fn delete(&self, indices: &[String]) {
        for index in indices {
            if exists(&self.server, index) {
                self.server.ok("DELETE", &format!("/{index}"), "");
            }
        }
    }

    /// Invariant 3 for `--replace`: see the module doc.
    fn replace_after(
        &self,
        before: &Live,
        restored: bool,
        error: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        let mut wrong = Vec::new();
        let mut notes = Vec::new();
        if self.live_hash() != before.checksum {
            wrong.push("a restore changed indices it was not to replace".into());
        }
        // Each replaced index: untouched, restored, or what else.
        let mut changed = Vec::new();
        for index in RESTORED {
            let now = self.part(index);
            if now.as_ref() == before.parts.get(index) {
                continue;
            }
            let state = match now {
                None => "gone",
                Some(h) if Some(&h) == self.backup_parts.get(index) => "replaced",
                Some(_) => "holding neither its documents nor the backup's",
            };
            changed.push((index, state));
        }
        let staging = indices_like(&self.server, STAGING);
        let whole = changed.len() == RESTORED.len() && changed.iter().all(|c| c.1 == "replaced");
        if restored {
            if !whole {
                wrong.push(format!(
                    "the restore says finished but the replaced indices are {changed:?}"
                ));
            }
        } else if whole {
            notes.push(
                "the replaced indices hold the whole backup, but the run is not recorded as \
                 finished (killed at the end, or the store was down when it was to be recorded)"
                    .into(),
            );
        } else if changed.is_empty() {
            // Failed or killed before the swap: every live index intact.
        } else if let Some(e) = error {
            if e.contains("nothing was replaced") {
                wrong.push(format!(
                    "the error says nothing was replaced, but the indices are {changed:?}: {e}"
                ));
            }
            for (index, state) in &changed {
                if !names(e, index) {
                    wrong.push(format!(
                        "a failed restore left index {index} {state} and its error does not \
                         name it: {e}"
                    ));
                } else if *state != "replaced" {
                    wrong.extend(self.kept_in_staging(index, e));
                }
            }
            notes.push(
                "a failed restore replaced or deleted an index, and its error named it (and the \
                 staging index holding its documents)"
                    .into(),
            );
        } else {
            for (index, state) in &changed {
                let held = staging
                    .iter()
                    .any(|s| s.ends_with(&format!("-{index}")) && self.holds_backup(s, index));
                notes.push(format!(
                    "killed during the swap: an index was left {state}{}",
                    match (*state, held) {
                        ("replaced", _) => "",
                        (_, true) => " (its staging index holds its documents)",
                        (_, false) => " (no staging index holds its documents)",
                    }
                ));
            }
        }
        if !staging.is_empty() {
            notes.push(format!(
                "staging indices {STAGING}… left behind (removed by the suite){}",
                match (restored, changed.is_empty()) {
                    (true, _) => " after a finished restore",
                    (false, true) => "; the live indices untouched",
                    (false, false) => "",
                }
            ));
        }
        (wrong, notes)
    }

    /// Whether `staging` holds the backup's documents of `index`.
    fn holds_backup(&self, staging: &str, index: &str) -> bool {
        self.part(staging).as_ref() == self.backup_parts.get(index)
    }

    /// An index a failed restore deleted: error `e` must name the staging
    /// index holding its documents, and that index must hold them.
    fn kept_in_staging(&self, index: &str, e: &str) -> Option<String> {
        let named = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .find(|w| w.starts_with(STAGING) && w.ends_with(&format!("-{index}")));
        match named {
            None => Some(format!(
                "a failed restore deleted index {index} and its error names no index holding \
                 its documents: {e}"
            )),
            Some(s) if !self.holds_backup(s, index) => Some(format!(
                "the error says the documents of {index} are kept in {s}, which does not hold \
                 them ({}): {e}",
                if exists(&self.server, s) {
                    "other documents"
                } else {
                    "no such index"
                }
            )),
            Some(_) => None,
        }
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

    fn restore_args(&self, id: &str, mode: Mode) -> Vec<String> {
        let flags: &[&str] = match mode {
            Mode::Default => &[],
            Mode::Destructive => &["--replace"],
        };
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
        .chain(flags.iter().copied())
        .chain(["--rename", "src-(.+):rst-$1", "--cluster", "faults"])
        .map(String::from)
        .collect()
    }

    fn destructive_flag(&self) -> &'static str {
        "--replace"
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

    fn live_before(&mut self, mode: Mode) -> Live {
        self.delete(&indices_like(&self.server, STAGING));
        self.delete(&RESTORED.map(String::from));
        let mut live = Live::whole(self.live_hash());
        if mode == Mode::Destructive {
            // Live indices of the restored names, with other documents.
            for index in RESTORED {
                self.server.ok("PUT", &format!("/{index}"), MAPPINGS);
                let bulk: String = (0..LIVE_DOCS)
                    .map(|i| {
                        format!(
                            "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"live{i}\"}}}}\n\
                             {{\"n\":{i},\"tag\":\"live\",\"text\":\"live document {i}\"}}\n"
                        )
                    })
                    .collect();
                self.server.bulk(&bulk);
                let part = hash(&self.server, &[index]);
                live.parts.insert(index.to_string(), part);
            }
        }
        live
    }

    fn live_after(
        &mut self,
        mode: Mode,
        before: &Live,
        restored: bool,
        error: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        if mode == Mode::Destructive {
            return self.replace_after(before, restored, error);
        }
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
