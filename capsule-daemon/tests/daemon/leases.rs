//! Leases on a real S3 server: conditional create and update decide.

use std::time::Duration;

use capsule_core::{Acquisition, LeaseHolder, Leases, Renewal};
use capsule_store::Store;
use chrono::Utc;
use test_support::seaweedfs::SeaweedFs;

fn s3_store() -> Store {
    let s3 = SeaweedFs::shared();
    let bucket = format!("leases{}", std::process::id());
    s3.create_bucket(&bucket);
    Store::from_url(&s3.s3_url_with_credentials(&bucket))
        .unwrap()
        .with_prefix("cnvrg-smart-backups")
        .unwrap()
}

fn leases(store: &Store, who: &str, ttl_ms: u64) -> Leases {
    Leases::new(
        store.clone(),
        LeaseHolder::new(who, "test", Some("east".into())),
        Duration::from_millis(ttl_ms),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_one_contender_wins_and_a_silent_holder_is_taken_over_once() {
    let _serial = crate::support::serial().await;
    let store = s3_store();
    let job = format!("service.east.postgresql.race-{}", rand::random::<u32>());
    // Eight daemons race for a fresh lease: exactly one gets it.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = leases(&store, &format!("d{i}"), 1500);
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            l.acquire(&job, Utc::now()).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(l) = t.await.unwrap().into_lease() {
            won.push(l);
        }
    }
    assert_eq!(won.len(), 1);
    let mut holder = won.pop().unwrap();
    assert_eq!(holder.renew(Utc::now()).await.unwrap(), Renewal::Renewed);

    // It goes silent; after its ttl eight others race again: one takes it over.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = leases(&store, &format!("e{i}"), 1500);
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            l.acquire(&job, Utc::now()).await.unwrap()
        }));
    }
    let mut takeovers = 0;
    for t in tasks {
        match t.await.unwrap() {
            Acquisition::TakenOver { previous, .. } => {
                assert!(previous.holder.id.starts_with('d'));
                takeovers += 1;
            }
            Acquisition::Held(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(takeovers, 1);
    // The silent holder learns it on its next heartbeat and must stop.
    assert!(
        matches!(holder.renew(Utc::now()).await.unwrap(), Renewal::Lost(Some(r)) if r.holder.id.starts_with('e'))
    );
    assert!(!holder.release(Utc::now(), false).await.unwrap());
}
