//! The behaviour every backend must share. [`run`] takes a store whose
//! prefix has several segments and checks each operation under its own
//! sub-prefix.

use std::time::Duration;

use bytes::Bytes;
use capsule_store::{Error, Store, UploadOptions};
use futures::TryStreamExt;

use crate::support::pattern;

const MIB: usize = 1024 * 1024;

/// Runs every check on `store`.
pub async fn run(store: Store) {
    assert!(
        store.prefix().contains('/'),
        "conformance wants a multi-segment prefix, got {:?}",
        store.prefix()
    );
    put_get_head(&sub(&store, "basic")).await;
    list_and_list_dirs(&sub(&store, "listing")).await;
    prefixes_isolate(&store).await;
    delete(&sub(&store, "delete")).await;
    create_if_absent(&sub(&store, "create")).await;
    conditional_update(&sub(&store, "update")).await;
    ranged_get(&sub(&store, "range")).await;
    streaming_get(&sub(&store, "stream")).await;
    multipart_upload(&sub(&store, "upload")).await;
    aborted_upload_leaves_nothing(&sub(&store, "abort")).await;
    ping(&sub(&store, "ping")).await;
}

fn sub(store: &Store, name: &str) -> Store {
    store
        .with_prefix(&format!("{}/{name}", store.prefix()))
        .expect("sub-prefix")
}

async fn put_get_head(store: &Store) {
    let v1 = store
        .put("a/one.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let got = store.get("a/one.txt").await.unwrap();
    assert_eq!(got.bytes, Bytes::from_static(b"hello"));
    assert_eq!(got.version.etag, v1.etag, "get reports the put's version");
    let info = store.head("a/one.txt").await.unwrap();
    assert_eq!(info.key, "a/one.txt");
    assert_eq!(info.size, 5);
    assert_eq!(info.version.etag, v1.etag);
    let age = std::time::SystemTime::now()
        .duration_since(info.last_modified)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(600),
        "last_modified is recent: {age:?}"
    );

    // Overwrite changes content and version.
    let v2 = store
        .put("a/one.txt", Bytes::from_static(b"hello again"))
        .await
        .unwrap();
    assert_ne!(v2, v1);
    assert_eq!(
        store.get("a/one.txt").await.unwrap().bytes,
        Bytes::from_static(b"hello again")
    );

    // Empty objects are objects too.
    store.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(store.head("empty").await.unwrap().size, 0);
    assert!(store.get("empty").await.unwrap().bytes.is_empty());

    let err = store.get("a/missing.txt").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("object a/missing.txt not found in {}", store.url())
    );
    assert!(matches!(
        store.head("a/missing.txt").await,
        Err(Error::NotFound { .. })
    ));
    for bad in ["", "/a", "a/", "a//b", "a/../b", "./a"] {
        let err = store.put(bad, Bytes::new()).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { .. }),
            "{bad:?}: {err:?}"
        );
    }
}

async fn list_and_list_dirs(store: &Store) {
    for key in [
        "a/one.txt",
        "a/two.txt",
        "a/deeper/x.bin",
        "b/three.txt",
        "top.txt",
    ] {
        store.put(key, Bytes::from(key.to_string())).await.unwrap();
    }
    let keys = |infos: Vec<capsule_store::ObjectInfo>| {
        infos.into_iter().map(|i| i.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.list("").await.unwrap()),
        vec![
            "a/deeper/x.bin",
            "a/one.txt",
            "a/two.txt",
            "b/three.txt",
            "top.txt"
        ]
    );
    assert_eq!(
        keys(store.list("a").await.unwrap()),
        vec!["a/deeper/x.bin", "a/one.txt", "a/two.txt"]
    );
    assert_eq!(keys(store.list("/a/").await.unwrap()).len(), 3);
    assert!(store.list("nothing-here").await.unwrap().is_empty());
    let sizes: Vec<u64> = store
        .list("b")
        .await
        .unwrap()
        .iter()
        .map(|i| i.size)
        .collect();
    assert_eq!(sizes, vec!["b/three.txt".len() as u64]);

    let mut streamed: Vec<String> = store
        .list_stream("a")
        .map_ok(|i| i.key)
        .try_collect()
        .await
        .unwrap();
    streamed.sort();
    assert_eq!(streamed, vec!["a/deeper/x.bin", "a/one.txt", "a/two.txt"]);

    assert_eq!(store.list_dirs("").await.unwrap(), vec!["a", "b"]);
    assert_eq!(store.list_dirs("a").await.unwrap(), vec!["deeper"]);
    assert!(store.list_dirs("b").await.unwrap().is_empty());
    assert!(store.list_dirs("nothing-here").await.unwrap().is_empty());

    // A directory whose objects are all deleted disappears.
    store.delete("b/three.txt").await.unwrap();
    assert_eq!(store.list_dirs("").await.unwrap(), vec!["a"]);

    assert!(matches!(
        store.list("a/../b").await,
        Err(Error::InvalidConfig { .. })
    ));
}

async fn prefixes_isolate(store: &Store) {
    let parent = store.prefix().to_string();
    let left = sub(store, "iso-left");
    let right = sub(store, "iso-right");
    left.put("k", Bytes::from_static(b"left")).await.unwrap();
    right.put("k", Bytes::from_static(b"right")).await.unwrap();
    assert_eq!(
        left.get("k").await.unwrap().bytes,
        Bytes::from_static(b"left")
    );
    assert_eq!(
        right.get("k").await.unwrap().bytes,
        Bytes::from_static(b"right")
    );
    assert_eq!(left.list("").await.unwrap().len(), 1);
    assert!(
        left.url().contains(&format!("{parent}/iso-left")),
        "{}",
        left.url()
    );
    assert_eq!(left.prefix(), format!("{parent}/iso-left"));

    // The parent sees both under longer keys; a trimmed prefix is the same.
    let same = store.with_prefix(&format!("/{parent}/")).unwrap();
    assert_eq!(same.prefix(), parent);
    assert_eq!(
        same.get("iso-left/k").await.unwrap().bytes,
        Bytes::from_static(b"left")
    );
    assert!(matches!(
        store.with_prefix("a/../b"),
        Err(Error::InvalidConfig { .. })
    ));
}

async fn delete(store: &Store) {
    store.put("gone", Bytes::from_static(b"x")).await.unwrap();
    store.delete("gone").await.unwrap();
    assert!(matches!(
        store.head("gone").await,
        Err(Error::NotFound { .. })
    ));
    store
        .delete("gone")
        .await
        .expect("deleting a missing object is fine");
    store.delete("never/was").await.unwrap();
}

async fn create_if_absent(store: &Store) {
    let v = store
        .create("state.json", Bytes::from_static(b"first"))
        .await
        .unwrap();
    let err = store
        .create("state.json", Bytes::from_static(b"second"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("object state.json already exists in {}", store.url())
    );
    let got = store.get("state.json").await.unwrap();
    assert_eq!(got.bytes, Bytes::from_static(b"first"));
    assert_eq!(got.version.etag, v.etag);
}

async fn conditional_update(store: &Store) {
    let v1 = store
        .create("state.json", Bytes::from_static(b"v1"))
        .await
        .unwrap();
    let v2 = store
        .update("state.json", Bytes::from_static(b"v2"), &v1)
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let err = store
        .update("state.json", Bytes::from_static(b"stale"), &v1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(
        err.to_string().contains("changed by another writer"),
        "{err}"
    );
    assert_eq!(
        store.get("state.json").await.unwrap().bytes,
        Bytes::from_static(b"v2")
    );
    // The version from head works as well as the one from the write.
    let current = store.head("state.json").await.unwrap().version;
    let v3 = store
        .update("state.json", Bytes::from_static(b"v3"), &current)
        .await
        .unwrap();
    assert_eq!(store.get("state.json").await.unwrap().version.etag, v3.etag);

    store.delete("state.json").await.unwrap();
    let err = store
        .update("state.json", Bytes::from_static(b"v4"), &v3)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

async fn ranged_get(store: &Store) {
    let data = pattern(100_000, 7);
    store.put("blob", Bytes::from(data.clone())).await.unwrap();
    let got = store.get_range("blob", 10..20).await.unwrap();
    assert_eq!(&got[..], &data[10..20]);
    let got = store.get_range("blob", 99_000..100_000).await.unwrap();
    assert_eq!(&got[..], &data[99_000..]);
    assert!(store.get_range("blob", 5..5).await.unwrap().is_empty());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = store.get_range("blob", 9..3).await;
    assert!(matches!(reversed, Err(Error::InvalidConfig { .. })));
    assert!(matches!(
        store.get_range("no-blob", 0..3).await,
        Err(Error::NotFound { .. })
    ));
}

async fn streaming_get(store: &Store) {
    let data = pattern(3 * MIB + 17, 11);
    let v = store.put("big", Bytes::from(data.clone())).await.unwrap();
    let object = store.get_stream("big").await.unwrap();
    assert_eq!(object.size, data.len() as u64);
    assert_eq!(object.version.etag, v.etag);
    let chunks: Vec<Bytes> = object.stream.try_collect().await.unwrap();
    let joined: Vec<u8> = chunks.concat();
    assert!(joined == data, "streamed content differs");
    assert!(matches!(
        store.get_stream("no-big").await,
        Err(Error::NotFound { .. })
    ));
}

async fn multipart_upload(store: &Store) {
    let total = 40 * MIB + 12_345;
    let data = Bytes::from(pattern(total, 42));
    let options = UploadOptions::default()
        .with_part_size(5 * MIB)
        .with_max_concurrency(4);
    let mut upload = store.upload("dump/big.bin", options).await.unwrap();
    // Odd-sized writes: parts must still come out at exactly 5 MiB.
    for chunk in data.chunks(MIB + 4_321) {
        upload.write(data.slice_ref(chunk)).await.unwrap();
    }
    assert_eq!(upload.bytes_written(), total as u64);
    assert!(
        matches!(
            store.head("dump/big.bin").await,
            Err(Error::NotFound { .. })
        ),
        "nothing visible before finish"
    );
    let version = upload.finish().await.unwrap();
    let got = store.get("dump/big.bin").await.unwrap();
    assert_eq!(got.bytes.len(), total);
    assert!(got.bytes == data, "uploaded content differs");
    assert_eq!(got.version.etag, version.etag);

    // A small upload (one short part) and an empty one work too.
    let mut small = store
        .upload("dump/small.bin", UploadOptions::default())
        .await
        .unwrap();
    small.write(Bytes::from_static(b"tiny")).await.unwrap();
    small.finish().await.unwrap();
    assert_eq!(
        store.get("dump/small.bin").await.unwrap().bytes,
        Bytes::from_static(b"tiny")
    );
    let empty = store
        .upload("dump/empty.bin", UploadOptions::default())
        .await
        .unwrap();
    empty.finish().await.unwrap();
    assert_eq!(store.head("dump/empty.bin").await.unwrap().size, 0);

    let err = store
        .upload("x", UploadOptions::default().with_part_size(MIB))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("5 MiB"), "{err}");
    let err = store
        .upload("x", UploadOptions::default().with_max_concurrency(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
}

async fn aborted_upload_leaves_nothing(store: &Store) {
    let options = UploadOptions::default().with_part_size(5 * MIB);
    let mut upload = store
        .upload("dir/aborted.bin", options.clone())
        .await
        .unwrap();
    upload
        .write(Bytes::from(pattern(6 * MIB, 3)))
        .await
        .unwrap();
    upload.abort().await.unwrap();

    let mut dropped = store.upload("dir/dropped.bin", options).await.unwrap();
    dropped
        .write(Bytes::from(pattern(6 * MIB, 4)))
        .await
        .unwrap();
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(300)).await;

    for key in ["dir/aborted.bin", "dir/dropped.bin"] {
        assert!(
            matches!(store.head(key).await, Err(Error::NotFound { .. })),
            "{key} visible after abort"
        );
    }
    assert!(store.list("").await.unwrap().is_empty(), "nothing listed");
    assert!(
        store.list_dirs("").await.unwrap().is_empty(),
        "no dirs listed"
    );
}

async fn ping(store: &Store) {
    store.ping().await.unwrap();
    store.ping().await.unwrap();
    let token = store.get("ping").await.unwrap().bytes;
    assert_eq!(token.len(), 32);
    assert_eq!(
        store.list("").await.unwrap().len(),
        1,
        "only the ping object"
    );
}
