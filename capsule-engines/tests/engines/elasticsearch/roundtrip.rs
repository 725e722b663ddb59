//! Backup, delete, restore: documents byte for byte, definitions and
//! templates equal; large indices, renames, S3, downloads.

use capsule_core::{Catalog, NoProgress, Status};
use capsule_engines::EsRename;
use capsule_store::Store;
use serde_json::{Value, json};
use test_support::opensearch::OpenSearch;
use test_support::seaweedfs::SeaweedFs;

use super::support::*;

const PRODUCTS_SOURCES: &[(&str, Option<&str>, &str)] = &[
    (
        "p1",
        None,
        r#"{"big":9007199254740993,"price":1.10,"name":"Caf\u00e9 ☕","tags":["a","b"],"variants":[{"sku":"x-1","qty":1}],"meta":{"ratio":2.50e3}}"#,
    ),
    (
        "p2",
        Some("tenant-7"),
        r#"{"big":9223372036854775807,"price":0.1,"name":"日本語 テキスト 😀","tags":[],"variants":[],"meta":{"ratio":-0.0}}"#,
    ),
    (
        "p3",
        None,
        r#"{"big":-9223372036854775808,"price":1e-7,"name":"quote \" backslash \\ tab \t escaped newline \n end","meta":{"ratio":1.7976931348623157e308}}"#,
    ),
    (
        "p4",
        Some("tenant-7"),
        r#"{ "big" : 18014398509481985 , "price" : 3.000 , "name" : "spaced   out" }"#,
    ),
    (
        "id with spaces/and:colons é",
        Some("r é"),
        r#"{"big":1,"price":12345678.123456789,"name":"odd id","variants":[{"sku":"y","qty":2},{"sku":"z","qty":3}]}"#,
    ),
];

fn bulk_of(index: &str, docs: &[(&str, Option<&str>, &str)]) -> String {
    let mut out = String::new();
    for (id, routing, source) in docs {
        let mut meta = json!({"_index": index, "_id": id});
        if let Some(r) = routing {
            meta["routing"] = json!(r);
        }
        out.push_str(&json!({ "index": meta }).to_string());
        out.push('\n');
        out.push_str(source);
        out.push('\n');
    }
    out
}

/// Three indices with explicit mappings, aliases (filter, routing, write
/// index), custom settings, and the three kinds of templates.
fn load_shop(os: &OpenSearch) {
    os.ok(
        "PUT",
        "/shop-products",
        &json!({
            "settings": {
                "index.number_of_shards": 2,
                "index.number_of_replicas": 1,
                "index.refresh_interval": "5s",
                "index.analysis.analyzer.folded.type": "custom",
                "index.analysis.analyzer.folded.tokenizer": "standard",
                "index.analysis.analyzer.folded.filter": ["lowercase", "asciifolding"],
            },
            "mappings": {
                "properties": {
                    "big": {"type": "long"},
                    "price": {"type": "double"},
                    "name": {"type": "text", "analyzer": "folded", "fields": {"raw": {"type": "keyword"}}},
                    "tags": {"type": "keyword"},
                    "variants": {"type": "nested", "properties": {"sku": {"type": "keyword"}, "qty": {"type": "integer"}}},
                    "meta": {"properties": {"ratio": {"type": "double"}}},
                }
            }
        })
        .to_string(),
    );
    os.ok(
        "PUT",
        "/shop-orders",
        &json!({
            "mappings": {"properties": {"region": {"type": "keyword"}, "total": {"type": "scaled_float", "scaling_factor": 100}}},
            "aliases": {
                "orders-eu": {"filter": {"term": {"region": "eu"}}, "routing": "eu"},
                "orders-all": {},
                "orders-write": {"is_write_index": true},
            }
        })
        .to_string(),
    );
    os.ok("PUT", "/shop-users", "");
    os.bulk(&bulk_of("shop-products", PRODUCTS_SOURCES));
    let orders: Vec<(String, Option<&str>, String)> = (0..40)
        .map(|i| {
            let region = if i % 3 == 0 { "eu" } else { "us" };
            (
                format!("o{i}"),
                (region == "eu").then_some("eu"),
                format!(r#"{{"region":"{region}","total":{i}.99,"lines":[{{"n":{i}}}]}}"#),
            )
        })
        .collect();
    let orders: Vec<(&str, Option<&str>, &str)> = orders
        .iter()
        .map(|(id, r, s)| (id.as_str(), *r, s.as_str()))
        .collect();
    os.bulk(&bulk_of("shop-orders", &orders));
    os.bulk(&bulk_of(
        "shop-users",
        &[(
            "u1",
            None,
            r#"{"login":"ann","age":41,"score":0.30000000000000004}"#,
        )],
    ));
    os.ok(
        "PUT",
        "/_component_template/shop-base",
        &json!({"template": {"settings": {"index.number_of_shards": 1}, "mappings": {"properties": {"ts": {"type": "date"}}}}, "version": 3, "_meta": {"owner": "shop"}}).to_string(),
    );
    os.ok(
        "PUT",
        "/_index_template/shop-logs",
        &json!({"index_patterns": ["shop-logs-*"], "composed_of": ["shop-base"], "priority": 50, "template": {"aliases": {"shop-logs": {}}}}).to_string(),
    );
    os.ok(
        "PUT",
        "/_template/shop-legacy",
        &json!({"index_patterns": ["shop-old-*"], "order": 3, "settings": {"number_of_shards": 1}, "mappings": {"properties": {"x": {"type": "keyword"}}}}).to_string(),
    );
}

const SHOP: [&str; 3] = ["shop-orders", "shop-products", "shop-users"];
const TEMPLATES: [&str; 3] = [
    "/_component_template/shop-base",
    "/_index_template/shop-logs",
    "/_template/shop-legacy",
];

#[tokio::test]
async fn a_round_trip_keeps_every_byte_mapping_alias_and_template() {
    let os = OpenSearch::start();
    load_shop(&os);
    let before_docs: Vec<_> = SHOP.iter().map(|i| documents(&os, i)).collect();
    let before_defs: Vec<_> = SHOP.iter().map(|i| definition(&os, i)).collect();
    let before_templates: Vec<_> = TEMPLATES.iter().map(|t| get(&os, t)).collect();
    assert_eq!(before_docs[1].len(), PRODUCTS_SOURCES.len());
    assert_eq!(before_docs[1]["p2"].0.as_deref(), Some("tenant-7"));

    let fc = FileCatalog::new();
    let engine = engine(&os.url, "shop-*");
    let started = std::time::Instant::now();
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let sf = &report.statefile;
    assert_eq!(sf.status, Status::Finished);
    let names: Vec<&str> = sf.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["metadata.json.zst", "documents.ndjson.zst"]);
    let info = sf.engine.as_ref().unwrap();
    assert_eq!(info.server_version.as_deref(), Some("OpenSearch 3.8.0"));
    assert_eq!(info.details["distribution"], "opensearch");
    let fp = info.fingerprint.as_ref().unwrap();
    assert_eq!(fp.counts["shop-orders"], 40);
    assert_eq!(fp.counts["shop-products"], 5);
    assert_eq!(fp.counts["shop-users"], 1);
    assert_eq!(
        fp.values["shop-products/sample"].split(' ').next(),
        Some("5")
    );
    eprintln!("backup of 3 indices took {:?}", started.elapsed());

    for i in SHOP {
        os.ok("DELETE", &format!("/{i}"), "");
    }
    for t in TEMPLATES.iter().rev() {
        os.ok("DELETE", t, "");
    }
    let id = sf.backup_id.to_string();
    let restored = restore(&fc.catalog, &engine, &id).await.unwrap();
    assert_eq!(restored.outcome.mode, "create");
    for (i, index) in SHOP.iter().enumerate() {
        assert_eq!(
            documents(&os, index),
            before_docs[i],
            "documents of {index}"
        );
        assert_eq!(
            definition(&os, index),
            before_defs[i],
            "definition of {index}"
        );
    }
    for (t, before) in TEMPLATES.iter().zip(&before_templates) {
        assert_eq!(&get(&os, t), before, "{t}");
    }
    // The alias filter and routing work as before.
    assert_eq!(count(&os, "orders-eu"), 14);
    let entry = &fc.statefile_json(&id)["restores"][0];
    assert_eq!(entry["status"], "finished");
    assert_eq!(entry["mode"], "create");
}

#[tokio::test]
async fn more_documents_than_the_result_window_in_parallel_slices() {
    let os = OpenSearch::start();
    os.ok(
        "PUT",
        "/big",
        r#"{"settings":{"index.number_of_shards":2},"mappings":{"properties":{"n":{"type":"long"},"f":{"type":"double"},"text":{"type":"text"}}}}"#,
    );
    for chunk in 0..4 {
        let docs = generated_docs("big", 3_000, 150)
            .replace("\"_id\":\"d", &format!("\"_id\":\"c{chunk}-d"));
        os.bulk(&docs);
    }
    assert_eq!(count(&os, "big"), 12_000);
    let fc = FileCatalog::new();
    let auto = backup(&fc.catalog, &engine(&os.url, "big")).await.unwrap();
    let three = backup(
        &fc.catalog,
        &EsEngineExt::with(options(&os.url, "big").with_slices(3)),
    )
    .await
    .unwrap();
    let fp =
        |r: &capsule_core::BackupReport| r.statefile.engine.clone().unwrap().fingerprint.unwrap();
    assert_eq!(fp(&auto).counts["big"], 12_000);
    assert_eq!(
        fp(&auto),
        fp(&three),
        "slicing does not change what is exported"
    );

    let renamed = EsEngineExt::with(
        options(&os.url, "")
            .with_rename("^big$:big-copy".parse::<EsRename>().unwrap())
            .with_bulk_docs(700),
    );
    let id = three.statefile.backup_id.to_string();
    let report = restore(&fc.catalog, &renamed, &id).await.unwrap();
    assert_eq!(count(&os, "big-copy"), 12_000);
    assert_eq!(documents(&os, "big-copy"), documents(&os, "big"));
    assert_eq!(report.outcome.fingerprint.unwrap(), fp(&three));
}

#[tokio::test]
async fn a_backup_in_s3_restores_under_a_new_name() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("s3-source", 1_200, 300));
    let s3 = SeaweedFs::shared();
    let bucket = format!("es-{}", std::process::id());
    s3.create_bucket(&bucket);
    let store = Store::from_url(&s3.s3_url_with_credentials(&bucket))
        .unwrap()
        .with_prefix(PREFIX)
        .unwrap();
    let catalog = Catalog::new(store);
    let report = backup(&catalog, &engine(&os.url, "s3-source"))
        .await
        .unwrap();
    let id = report.statefile.backup_id.to_string();
    let renamed =
        EsEngineExt::with(options(&os.url, "").with_rename("s3-(.+):restored-$1".parse().unwrap()));
    restore(&catalog, &renamed, &id).await.unwrap();
    assert_eq!(
        documents(&os, "restored-source"),
        documents(&os, "s3-source")
    );
}

#[tokio::test]
async fn a_download_loads_with_plain_http_calls() {
    let os = OpenSearch::start();
    load_shop(&os);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "shop-products,shop-orders"))
        .await
        .unwrap();
    let id = report.statefile.backup_id.to_string();
    let dir = tempfile::tempdir().unwrap();
    let files = fc
        .catalog
        .download(&id, dir.path(), &NoProgress)
        .await
        .unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["metadata.json", "documents.ndjson"]);

    // What docs/elasticsearch.md tells people to do, with curl, on a new server.
    let other = OpenSearch::start();
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(&id).join("metadata.json")).unwrap())
            .unwrap();
    for (name, index) in metadata["indices"].as_object().unwrap() {
        let body = json!({"settings": index["settings"], "mappings": index["mappings"], "aliases": index["aliases"]});
        other.ok("PUT", &format!("/{name}"), &body.to_string());
    }
    let ndjson = std::fs::read_to_string(dir.path().join(&id).join("documents.ndjson")).unwrap();
    other.bulk(&ndjson);
    for index in ["shop-products", "shop-orders"] {
        assert_eq!(documents(&other, index), documents(&os, index), "{index}");
        assert_eq!(definition(&other, index), definition(&os, index), "{index}");
    }
}

#[tokio::test]
async fn by_default_system_hidden_and_closed_indices_are_left_out() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("app", 3, 20));
    os.bulk(&generated_docs(".internal", 2, 20));
    os.ok("PUT", "/secret", r#"{"settings":{"index.hidden":true}}"#);
    os.bulk(&generated_docs("secret", 2, 20));
    os.bulk(&generated_docs("shut", 2, 20));
    os.ok("POST", "/shut/_close", "");
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "")).await.unwrap();
    let info = report.statefile.engine.unwrap();
    assert_eq!(info.details["indices"], json!(["app"]));
    assert_eq!(info.database.as_deref(), Some("*"));
    // Named explicitly, hidden and system indices are backed up.
    let report = backup(&fc.catalog, &engine(&os.url, ".internal,secret"))
        .await
        .unwrap();
    let counts = report.statefile.engine.unwrap().fingerprint.unwrap().counts;
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [(".internal".to_string(), 2), ("secret".to_string(), 2)]
    );
    // A closed index named explicitly is an error.
    let e = backup(&fc.catalog, &engine(&os.url, "shut"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("index shut is closed"), "{e}");
}

/// Builds an engine from options (keeps the tests short).
struct EsEngineExt;

impl EsEngineExt {
    fn with(options: capsule_engines::EsOptions) -> capsule_engines::EsEngine {
        capsule_engines::EsEngine::new(options)
    }
}
