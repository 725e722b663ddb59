//! Listing 10,000 backups answers within 100 ms (p99, warm) under a
//! bounded load on loopback, from the in-memory catalog; refreshes re-read
//! only the statefiles that changed.

use std::time::{Duration, Instant};

use capsule_core::{Catalog, Status};
use capsule_daemon::{CatalogCache, Mode};

use crate::support::*;

const BACKUPS: usize = 10_000;

fn p(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_ten_thousand_backups_is_fast_and_refreshes_are_incremental() {
    let _serial = crate::support::serial().await;
    let store = memory_store();
    let catalog = Catalog::new(store.clone());
    let seeded = Instant::now();
    let list: Vec<_> = (0..BACKUPS)
        .map(|i| {
            let cluster = ["east", "west", "north"][i % 3];
            let status = if i % 10 == 0 {
                Status::Failed
            } else {
                Status::Finished
            };
            statefile(cluster, &format!("cnvrg/svc-{}", i % 7), status, i as i64)
        })
        .collect();
    let probe = list[5].backup_id.to_string();
    seed(&catalog, list).await;
    eprintln!("seeded {BACKUPS} statefiles in {:?}", seeded.elapsed());

    // Incremental refresh, measured on the cache itself.
    let cache = CatalogCache::new(catalog.clone());
    let t = Instant::now();
    cache.refresh().await.unwrap();
    eprintln!("cold refresh: {:?}", t.elapsed());
    assert_eq!(cache.stats().statefile_reads, BACKUPS as u64);
    let t = Instant::now();
    cache.refresh().await.unwrap();
    eprintln!("warm refresh, nothing changed: {:?}", t.elapsed());
    assert_eq!(
        cache.stats().statefile_reads,
        BACKUPS as u64,
        "nothing re-read"
    );
    let mut h = catalog.load(&probe).await.unwrap();
    catalog
        .update(&mut h, |sf| {
            sf.description = "changed".into();
            Ok(())
        })
        .await
        .unwrap();
    cache.refresh().await.unwrap();
    assert_eq!(
        cache.stats().statefile_reads,
        BACKUPS as u64 + 1,
        "one re-read"
    );
    assert!(
        cache
            .snapshot()
            .get(&probe)
            .unwrap()
            .summary
            .contains("changed")
    );

    // The API under a bounded load (2 cores here): 2 clients × 80 requests,
    // after warm-up.
    // Scans every 2 s (the default is 10 s): each re-lists the store.
    let mut o = options(Mode::Api);
    o.timings.watch_interval = Duration::from_secs(2);
    let daemon = start(o, store).await;
    let addr = daemon.api_addr().unwrap();
    let latencies = tokio::task::spawn_blocking(move || {
        let all = request(addr, "GET", "/v1/backups", Some(TOKEN), None);
        assert_eq!(all.status, 200);
        assert_eq!(all.json()["backups"].as_array().unwrap().len(), BACKUPS);
        eprintln!("full list: {} bytes", all.body.len());
        for _ in 0..5 {
            request(addr, "GET", "/v1/backups", Some(TOKEN), None);
        }
        let paths = [
            "/v1/backups",
            "/v1/backups?cluster=east",
            "/v1/backups?status=failed&serviceType=postgresql",
            "/v1/backups?service=cnvrg/svc-3&cluster=west",
        ];
        let clients: Vec<_> = (0..2)
            .map(|c| {
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..80 {
                        let path = paths[(c + i) % paths.len()];
                        let t = Instant::now();
                        let r = request(addr, "GET", path, Some(TOKEN), None);
                        out.push((path, t.elapsed()));
                        assert_eq!(r.status, 200);
                        assert!(r.body.len() > 100);
                    }
                    out
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for path in [
        "/v1/backups",
        "/v1/backups?cluster=east",
        "/v1/backups?status=failed&serviceType=postgresql",
        "/v1/backups?service=cnvrg/svc-3&cluster=west",
    ] {
        let mut mine: Vec<Duration> = latencies
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, d)| *d)
            .collect();
        eprintln!(
            "  {path}: p50 {:?}, max {:?}",
            p(&mut mine, 0.5),
            mine.last().unwrap()
        );
    }
    let mut l: Vec<Duration> = latencies.into_iter().map(|(_, d)| d).collect();
    let (p50, p99, max) = (p(&mut l, 0.50), p(&mut l, 0.99), *l.last().unwrap());
    eprintln!(
        "GET /v1/backups over {BACKUPS} backups, {} requests: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        l.len()
    );
    daemon.shutdown();
    daemon.wait().await.unwrap();
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?} > 100 ms");
}
