//! Planning a restore: which indices, under which names, with which
//! settings; which existing indices are replaced (through which staging
//! index, and how the swap is done); which templates to write; and every
//! conflict with what the target already has. Nothing is changed here.

use std::collections::BTreeSet;

use capsule_core::{Error, Result};
use serde_json::{Map, Value};

use super::EsEngine;
use super::apply::{self, Existing, TEMPLATE_KINDS};
use super::client::EsClient;
use super::inventory;
use super::metadata::{EsMetadata, portable_settings};
use super::restore::Mode;
use super::selection::IndexPatterns;
use super::server::ServerInfo;
use super::swap::{self, SwapMethod};

/// One index to restore.
pub(crate) struct IndexPlan {
    /// The backed-up name.
    pub original: String,
    /// The name restored to.
    pub target: String,
    /// Its settings, made portable to the target.
    pub settings: Map<String, Value>,
    /// The `PUT /<index>` body (load-time settings, mappings).
    pub create: Value,
    /// Aliases to attach after the load (renamed).
    pub aliases: Vec<(String, Value)>,
    /// The mapping type of actions (Elasticsearch 6 targets).
    pub doc_type: Option<String>,
    /// With `--replace`, when `target` exists: the staging index the
    /// documents are loaded into and checked in before they replace it.
    pub staging: Option<String>,
}

impl IndexPlan {
    /// The index the documents are loaded into: the staging index when
    /// the target is replaced, else the target.
    pub fn load_name(&self) -> &str {
        self.staging.as_deref().unwrap_or(&self.target)
    }
}

/// One template to write.
pub(crate) struct TemplatePlan {
    /// `_component_template`, `_index_template` or `_template`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its body.
    pub body: Value,
    /// The body of the one it overwrites (put back if the restore fails).
    pub previous: Option<Value>,
}

/// What a restore will do.
pub(crate) struct Plan {
    /// The indices, in order.
    pub indices: Vec<IndexPlan>,
    /// The templates to write, in order.
    pub templates: Vec<TemplatePlan>,
    /// How staging indices replace existing ones (when any is replaced).
    pub swap: Option<SwapMethod>,
}

impl Plan {
    /// The indices that replace existing ones.
    pub fn replacing(&self) -> impl Iterator<Item = &IndexPlan> {
        self.indices.iter().filter(|p| p.staging.is_some())
    }
}

/// Chooses names and finds conflicts, changing nothing.
pub(crate) async fn plan(
    engine: &EsEngine,
    client: &EsClient,
    server: &ServerInfo,
    metadata: &EsMetadata,
    mode: Mode,
) -> Result<Plan> {
    let options = engine.options();
    let selection = IndexPatterns::new(&options.indices).select_backed_up(metadata.indices.keys());
    if !selection.unmatched.is_empty() {
        return Err(Error::invalid(
            "indices",
            format!(
                "no index of the backup matches {}",
                selection.unmatched.join(", ")
            ),
        ));
    }
    let tag = scratch_tag();
    let rename = |name: &str| match mode {
        Mode::Scratch => name.to_string(),
        Mode::Restore => options.restored_name(name),
    };
    let mut indices = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, original) in selection.names.iter().enumerate() {
        let meta = &metadata.indices[original];
        let target = match mode {
            Mode::Scratch => scratch_name(&tag, original, i),
            Mode::Restore => rename(original),
        };
        if !seen.insert(target.clone()) {
            return Err(Error::invalid(
                "rename",
                format!("two indices would be restored as {target}"),
            ));
        }
        let (settings, dropped) = portable_settings(
            &meta.settings,
            metadata.server.distribution,
            server.distribution,
        );
        for key in dropped {
            tracing::warn!(index = %original, setting = %key, "dropping a setting {server} does not know");
        }
        let doc_type = server
            .typed()
            .then(|| meta.mapping_type.clone().unwrap_or_else(|| "_doc".into()));
        let create = apply::create_body(&settings, meta, doc_type.as_deref());
        let aliases = match mode {
            Mode::Scratch => Vec::new(),
            Mode::Restore => apply::renamed_aliases(meta, rename),
        };
        indices.push(IndexPlan {
            original: original.clone(),
            target,
            settings,
            create,
            aliases,
            doc_type,
            staging: None,
        });
    }

    let mut conflicts = Vec::new();
    let targets: Vec<String> = indices.iter().map(|p| p.target.clone()).collect();
    let existing = apply::existing(client, &targets).await?;
    let replace = options.replace && mode == Mode::Restore;
    for (i, p) in indices.iter_mut().enumerate() {
        match (existing.get(&p.target), replace) {
            (None, _) => {}
            (Some(Existing::Alias), _) => {
                conflicts.push(format!("an alias named {} exists", p.target));
            }
            (Some(Existing::Index), false) => conflicts.push(format!("index {} exists", p.target)),
            (Some(Existing::Index), true) => {
                p.staging = Some(staging_name(&tag, &p.target, i));
            }
        }
    }
    let staging: Vec<String> = indices.iter().filter_map(|p| p.staging.clone()).collect();
    for name in apply::existing(client, &staging).await?.into_keys() {
        conflicts.push(format!("the staging index name {name} is taken"));
    }
    let mut templates = Vec::new();
    if mode == Mode::Restore {
        let alias_names: Vec<String> = indices
            .iter()
            .flat_map(|p| p.aliases.iter().map(|(a, _)| a.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|a| !seen.contains(a))
            .collect();
        for (name, what) in apply::existing(client, &alias_names).await? {
            if what == Existing::Index {
                conflicts.push(format!("alias {name} is the name of an existing index"));
            }
        }
        // Templates are the cluster's, not an index's: a restore of only
        // some of the backup's indices (`--indices`) leaves them as they are.
        if selection.names.len() == metadata.indices.len() {
            templates =
                plan_templates(client, server, metadata, options.replace, &mut conflicts).await?;
        }
    }
    if !conflicts.is_empty() {
        // --replace resolves an existing index or template, never an alias.
        let replaceable = conflicts
            .iter()
            .any(|c| c.starts_with("index ") || c.starts_with("template "));
        let hint = if options.replace || !replaceable {
            ""
        } else {
            " (pass --replace to replace the indices and templates named)"
        };
        return Err(Error::invalid(
            "restore",
            format!(
                "{}: cannot restore: {}{hint}; nothing was changed",
                client.label(),
                conflicts.join(", ")
            ),
        ));
    }
    let swap = match staging.is_empty() {
        true => None,
        false => Some(swap::method(client, server, &tag).await?),
    };
    Ok(Plan {
        indices,
        templates,
        swap,
    })
}

async fn plan_templates(
    client: &EsClient,
    server: &ServerInfo,
    metadata: &EsMetadata,
    replace: bool,
    conflicts: &mut Vec<String>,
) -> Result<Vec<TemplatePlan>> {
    let mut out = Vec::new();
    for kind in TEMPLATE_KINDS {
        let all = match kind {
            "_component_template" => &metadata.component_templates,
            "_index_template" => &metadata.index_templates,
            _ => &metadata.legacy_templates,
        };
        if all.is_empty() {
            continue;
        }
        if kind != "_template" && !server.composable_templates() {
            return Err(Error::Unsupported(format!(
                "{}: {server} has no composable templates; the backup has some",
                client.label()
            )));
        }
        for (name, body) in all {
            let previous = match inventory::template(client, kind, name).await? {
                None => None,
                Some(current) if &current == body => continue,
                Some(current) if replace => Some(current),
                Some(_) => {
                    conflicts.push(format!("template {name} ({kind}) differs"));
                    continue;
                }
            };
            out.push(TemplatePlan {
                kind,
                name: name.clone(),
                body: body.clone(),
                previous,
            });
        }
    }
    Ok(out)
}

/// A random lowercase tag for scratch and staging index names.
pub(crate) fn scratch_tag() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| {
            let n = rng.gen_range(0..36u8);
            if n < 10 {
                (b'0' + n) as char
            } else {
                (b'a' + n - 10) as char
            }
        })
        .collect()
}

/// `capsule-verify-<tag>-<name>`, or `…-<i>` when that would be too long.
pub(crate) fn scratch_name(tag: &str, original: &str, i: usize) -> String {
    tagged_name("capsule-verify", tag, original, i)
}

/// `capsule-restore-<tag>-<name>`, or `…-<i>` when that would be too
/// long: where the documents replacing index `name` are loaded first. A
/// prefix rather than a suffix, so that neither the templates nor the
/// wildcard searches (`logs-*`) meant for `name` reach it.
pub(crate) fn staging_name(tag: &str, target: &str, i: usize) -> String {
    tagged_name("capsule-restore", tag, target, i)
}

fn tagged_name(prefix: &str, tag: &str, name: &str, i: usize) -> String {
    let full = format!("{prefix}-{tag}-{}", name.trim_start_matches('.'));
    // Elasticsearch counts bytes.
    if full.len() <= 255 {
        full
    } else {
        format!("{prefix}-{tag}-{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_valid_index_names() {
        let tag = scratch_tag();
        assert_eq!(tag.len(), 8);
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(scratch_name("t", ".kibana", 0), "capsule-verify-t-kibana");
        assert_eq!(scratch_name("t", &"x".repeat(250), 3), "capsule-verify-t-3");
        assert_eq!(
            staging_name("ab12cd34", "logs-2024", 0),
            "capsule-restore-ab12cd34-logs-2024"
        );
        assert_eq!(staging_name("t", ".kibana", 0), "capsule-restore-t-kibana");
        assert_eq!(
            staging_name("t", &"é".repeat(120), 7),
            "capsule-restore-t-7"
        );
    }
}
