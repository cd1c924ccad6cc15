//! Soak test, bounded in time (ARCA_SOAK_SECS, default 30): rounds of concurrent backups
//! by several writers (each with its own cache, as separate hosts) while full maintenance
//! runs in a loop beside them with no safety margin; after each round the repository is
//! checked (every blob read) and every snapshot restored exactly; old snapshots are
//! forgotten as the rounds go on.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arca_engine::{MaintenanceOptions, Store, StoreOptions, open_store};
use arca_format::SnapshotId;
use support::*;

type Tree = BTreeMap<PathBuf, Option<Vec<u8>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backups_and_maintenance_in_a_loop() {
    let secs: u64 = std::env::var("ARCA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let dir = tempfile::tempdir().unwrap();
    let store: Store = open_store(
        dir.path().join("repo").to_str().unwrap(),
        &StoreOptions::default(),
    )
    .unwrap();
    init(store.clone()).await;
    let mut expected: BTreeMap<SnapshotId, Tree> = BTreeMap::new();
    let (mut rounds, mut gcs) = (0u64, 0u64);
    let mut reclaimed = 0u64;
    while Instant::now() < deadline || rounds < 2 {
        rounds += 1;
        // Maintenance loops until the writers are done.
        let writers_done = Arc::new(AtomicBool::new(false));
        let gc = {
            let (store, done) = (store.clone(), writers_done.clone());
            tokio::spawn(async move {
                let idx = open(store).await.unwrap();
                let opts = MaintenanceOptions {
                    full: true,
                    safety_margin: Duration::ZERO,
                    cleanup_margin: Duration::ZERO,
                    unsafe_margins: true,
                    clock_skew: Duration::ZERO,
                    repack_below: 0.8,
                    identity: who(),
                    ..Default::default()
                };
                let (mut n, mut bytes) = (0u64, 0u64);
                loop {
                    let r = idx
                        .maintain(&opts)
                        .await
                        .expect("maintenance beside backups");
                    n += 1;
                    bytes += r.bytes_reclaimed;
                    if done.load(Ordering::SeqCst) {
                        return (n, bytes);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        // Three writers, each with its own process-like view.
        let mut tasks = Vec::new();
        for w in 0..3u64 {
            let (store, base) = (store.clone(), dir.path().join(format!("w{w}")));
            tasks.push(tokio::spawn(async move {
                let idx = open(store).await.unwrap();
                let mut out = Vec::new();
                for k in 0..2u64 {
                    let v = rounds * 10 + w * 3 + k;
                    let src = base.join("src");
                    write_tree(&src, v % 7 + 1);
                    // Something new every time, besides the shared parts.
                    std::fs::write(
                        src.join("fresh"),
                        noise(v * 977 + w, 50_000 + (v as usize % 5) * 20_000),
                    )
                    .unwrap();
                    let id = backup(&idx, &src, &format!("w{w}"))
                        .await
                        .expect("backup beside maintenance");
                    out.push((id, read_tree(&src)));
                }
                out
            }));
        }
        for t in tasks {
            expected.extend(t.await.unwrap());
        }
        writers_done.store(true, Ordering::SeqCst);
        let (n, bytes) = gc.await.unwrap();
        gcs += n;
        reclaimed += bytes;

        // Verify with a fresh view: clean, and every snapshot exact.
        let idx = open(store.clone()).await.unwrap();
        assert_clean(&idx, true).await;
        for (id, tree) in &expected {
            assert_eq!(
                &restore(&idx, id).await,
                tree,
                "round {rounds}: snapshot {}",
                id.short()
            );
        }
        // Forget the oldest half, so GC has garbage to collect next round.
        let ids: Vec<SnapshotId> = expected.keys().copied().collect();
        let snaps = idx.repo().snapshots().await.unwrap();
        let mut by_time: Vec<_> = snaps.iter().filter(|(id, _)| ids.contains(id)).collect();
        by_time.sort_by_key(|(_, s)| s.time);
        for (id, _) in by_time.iter().take(by_time.len() / 2) {
            idx.repo().delete_snapshot(id).await.unwrap();
            expected.remove(id);
        }
    }
    eprintln!(
        "soak: {rounds} rounds, {gcs} maintenance runs, {reclaimed} bytes reclaimed, {} snapshots live",
        expected.len()
    );
    assert!(gcs >= rounds);
}
