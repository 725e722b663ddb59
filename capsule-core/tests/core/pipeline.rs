//! Upload and download pipelines: round trips, checksums, failures.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use capsule_core::pipeline::{self, Expected, PipelineOptions};
use capsule_core::store::UploadOptions;
use capsule_core::{Compression, Error, Identities, NoProgress};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::stores;

/// Deterministic, partly compressible bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                b'a' + (i % 7) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn opts() -> PipelineOptions {
    PipelineOptions::default().with_upload(
        UploadOptions::default()
            .with_part_size(5 * 1024 * 1024)
            .with_max_concurrency(3),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_every_store() {
    let input = data(13 * 1024 * 1024 + 17, 7);
    for (name, ts) in stores::all() {
        for compression in [Compression::Zstd, Compression::None] {
            let key = format!("b/{name}-{}", compression.as_str());
            let o = opts().with_compression(compression);
            let report = pipeline::upload(&ts.store, &key, &input[..], &o, &NoProgress)
                .await
                .unwrap();
            assert_eq!(report.raw_size_bytes, input.len() as u64, "{name}");
            let stored = ts.store.get(&key).await.unwrap().bytes;
            assert_eq!(stored.len() as u64, report.size_bytes, "{name}");
            assert_eq!(
                hex::encode(Sha256::digest(&stored)),
                report.sha256,
                "{name}"
            );
            if compression == Compression::Zstd {
                assert!(
                    report.size_bytes < report.raw_size_bytes,
                    "{name}: compressed"
                );
            }
            let expected = Expected {
                size_bytes: Some(report.size_bytes),
                sha256: Some(report.sha256.clone()),
                compression,
                encryption: None,
            };
            let mut out = Vec::new();
            let d = pipeline::download(
                &ts.store,
                "b",
                &key,
                &expected,
                &Identities::new(),
                &mut out,
                &NoProgress,
            )
            .await
            .unwrap();
            assert!(d.checksum_verified);
            assert_eq!(d.raw_size_bytes, input.len() as u64);
            assert!(out == input, "{name}: bytes differ after round trip");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_source_round_trips() {
    let ts = stores::memory();
    let r = pipeline::upload(&ts.store, "e", &b""[..], &opts(), &NoProgress)
        .await
        .unwrap();
    let mut out = Vec::new();
    let expected = Expected {
        size_bytes: Some(r.size_bytes),
        sha256: Some(r.sha256),
        compression: Compression::Zstd,
        encryption: None,
    };
    pipeline::download(
        &ts.store,
        "b",
        "e",
        &expected,
        &Identities::new(),
        &mut out,
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(out.is_empty());
}

/// A source that yields `ok` bytes, then fails like a dying dump tool.
struct FailingSource {
    left: usize,
}

impl AsyncRead for FailingSource {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::other("pg_dump exited with status 1")));
        }
        let n = self.left.min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![b'x'; n]);
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_source_leaves_nothing() {
    for (name, ts) in stores::all() {
        let err = pipeline::upload(
            &ts.store,
            "x/dump.zst",
            FailingSource {
                left: 12 * 1024 * 1024,
            },
            &opts(),
            &NoProgress,
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("x/dump.zst") && msg.contains("pg_dump exited"),
            "{name}: {msg}"
        );
        let left = ts.store.list("x/").await.unwrap();
        assert!(left.is_empty(), "{name}: a failed upload left {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_and_truncation_are_caught() {
    for (name, ts) in stores::all() {
        let input = data(3 * 1024 * 1024, 3);
        let r = pipeline::upload(&ts.store, "c/obj.zst", &input[..], &opts(), &NoProgress)
            .await
            .unwrap();
        let expected = Expected {
            size_bytes: Some(r.size_bytes),
            sha256: Some(r.sha256.clone()),
            compression: Compression::Zstd,
            encryption: None,
        };
        let good = ts.store.get("c/obj.zst").await.unwrap().bytes.to_vec();

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x01;
        ts.store.put("c/obj.zst", flipped.into()).await.unwrap();
        for verify_only in [true, false] {
            let err = if verify_only {
                pipeline::verify_object(&ts.store, "b", "c/obj.zst", &expected, &NoProgress)
                    .await
                    .unwrap_err()
            } else {
                let mut out = Vec::new();
                pipeline::download(
                    &ts.store,
                    "b",
                    "c/obj.zst",
                    &expected,
                    &Identities::new(),
                    &mut out,
                    &NoProgress,
                )
                .await
                .unwrap_err()
            };
            assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains("c/obj.zst") && msg.contains("checksum mismatch"),
                "{name}: {msg}"
            );
        }

        ts.store
            .put("c/obj.zst", good[..good.len() - 100].to_vec().into())
            .await
            .unwrap();
        let mut out = Vec::new();
        let err = pipeline::download(
            &ts.store,
            "b",
            "c/obj.zst",
            &expected,
            &Identities::new(),
            &mut out,
            &NoProgress,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("length mismatch"), "{name}: {err}");

        // Without a recorded checksum (legacy), a truncated zstd frame still fails.
        let no_sum = Expected {
            size_bytes: None,
            sha256: None,
            compression: Compression::Zstd,
            encryption: None,
        };
        let err = pipeline::download(
            &ts.store,
            "b",
            "c/obj.zst",
            &no_sum,
            &Identities::new(),
            &mut Vec::new(),
            &NoProgress,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot decompress"),
            "{name}: {err}"
        );
    }
}
