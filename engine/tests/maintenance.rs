//! Garbage collection, repacking, resurrection, the safety rules beside live writers,
//! index compaction, the lease, leftovers, and repair.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arca_engine::store::faulty::{FaultMode, FaultyBackend};
use arca_engine::{Indexed, MaintenanceOptions, MaintenanceReport, SessionGuard, Store};
use arca_format::{SessionKind, layout};
use support::*;

fn gc() -> MaintenanceOptions {
    MaintenanceOptions {
        full: true,
        safety_margin: Duration::ZERO,
        // One machine, one clock: no allowance needed, so that this test's GC acts at once.
        clock_skew: Duration::ZERO,
        repack_below: 0.7,
        identity: who(),
        unsafe_margins: true,
        cleanup_margin: Duration::ZERO,
        ..Default::default()
    }
}

async fn pack_bytes(store: &Store) -> u64 {
    store
        .list(layout::PACKS)
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum()
}

async fn maintain(idx: &Indexed, o: &MaintenanceOptions) -> MaintenanceReport {
    idx.maintain(o).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_marks_repacks_then_sweeps_and_reclaims_space() {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut ids = Vec::new();
    for v in 1..=3 {
        write_tree(&src, v);
        ids.push(backup(&idx, &src, &format!("v{v}")).await.unwrap());
    }
    let v3 = read_tree(&src);
    idx.repo().delete_snapshot(&ids[0]).await.unwrap();
    idx.repo().delete_snapshot(&ids[1]).await.unwrap();
    let before = pack_bytes(&store).await;

    // A dry run changes nothing.
    let dry = maintain(
        &idx,
        &MaintenanceOptions {
            dry_run: true,
            ..gc()
        },
    )
    .await;
    assert!(dry.packs_marked > 0, "{dry:?}");
    assert_eq!(pack_bytes(&store).await, before);

    // Repack anything not fully used, so that this small tree exercises it.
    let gc = || MaintenanceOptions {
        repack_below: 0.99,
        ..gc()
    };
    let first = maintain(&idx, &gc()).await;
    assert!(
        first.packs_marked > 0 && first.packs_repacked > 0,
        "{first:?}"
    );
    assert_eq!(
        first.packs_deleted, 0,
        "nothing is deleted in the run that marks it"
    );
    assert_eq!(restore(&idx, &ids[2]).await, v3);
    assert_clean(&idx, true).await;

    let second = maintain(&idx, &gc()).await;
    eprintln!("first {first:?}\nsecond {second:?}");
    assert!(
        second.packs_deleted > 0 && second.bytes_reclaimed > 0,
        "{second:?}"
    );
    let after = pack_bytes(&store).await;
    assert!(
        after < before,
        "{after} bytes of packs after GC, {before} before"
    );
    assert_eq!(restore(&idx, &ids[2]).await, v3);
    assert_clean(&idx, true).await;
    // A fresh process sees the same.
    let fresh = open(store.clone()).await.unwrap();
    assert_eq!(restore(&fresh, &ids[2]).await, v3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_appears_after_marking_resurrects_its_packs() {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let v1 = read_tree(&src);
    let s1 = backup(&idx, &src, "v1").await.unwrap();
    write_tree(&src, 2);
    backup(&idx, &src, "v2").await.unwrap();
    // v1 is forgotten and its own data marked...
    let manifest = idx.repo().snapshot(&s1).await.unwrap();
    idx.repo().delete_snapshot(&s1).await.unwrap();
    assert!(maintain(&idx, &gc()).await.packs_marked > 0);
    // ...then a writer that read the index before the mark commits a snapshot using it.
    let back = idx.repo().write_snapshot(&manifest).await.unwrap();
    let r = maintain(&idx, &gc()).await;
    assert!(r.packs_resurrected > 0, "{r:?}");
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert_eq!(restore(&idx, &back).await, v1);
    assert_clean(&idx, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_backup_that_started_before_the_mark_blocks_the_sweep() {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let s1 = backup(&idx, &src, "v1").await.unwrap();
    write_tree(&src, 2);
    backup(&idx, &src, "v2").await.unwrap();
    idx.repo().delete_snapshot(&s1).await.unwrap();
    // A backup is running (its session started before the mark).
    let session = SessionGuard::start(idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let marked = maintain(&idx, &gc()).await;
    assert!(marked.packs_marked > 0);
    let blocked = maintain(&idx, &gc()).await;
    assert_eq!(blocked.packs_deleted, 0, "{blocked:?}");
    assert!(blocked.packs_pending > 0, "{blocked:?}");
    // It ends; now the sweep may happen.
    session.end().await.unwrap();
    let swept = maintain(&idx, &gc()).await;
    assert!(swept.packs_deleted > 0, "{swept:?}");
    assert_clean(&idx, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_maintenance_compacts_the_index() {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut snaps = Vec::new();
    for v in 1..=4 {
        write_tree(&src, v);
        snaps.push((
            backup(&idx, &src, &format!("v{v}")).await.unwrap(),
            read_tree(&src),
        ));
    }
    let files = store.list(layout::INDEX).await.unwrap().len();
    assert!(files >= 4);
    let r = maintain(
        &idx,
        &MaintenanceOptions {
            identity: who(),
            unsafe_margins: true,
            cleanup_margin: Duration::ZERO,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.index_files, (files, 1));
    assert_eq!(store.list(layout::INDEX).await.unwrap().len(), 1);
    let fresh = open(store.clone()).await.unwrap();
    for (id, tree) in &snaps {
        assert_eq!(&restore(&fresh, id).await, tree);
    }
    assert_clean(&fresh, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_keeps_a_second_maintainer_out() {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    // Another host's maintenance holds the lease.
    let lease = arca_format::Lease {
        session: arca_format::SessionId([1; 16]),
        host: "other-host".into(),
        pid: 1,
        acquired: arca_format::Timestamp::now(),
        expires: arca_format::Timestamp::new(arca_format::Timestamp::now().seconds + 600, 0),
        process: String::new(),
    };
    store
        .put(
            layout::LEASE,
            lease.encode(idx.repo().keys()).unwrap().into(),
            arca_engine::WriteMode::CreateNew,
        )
        .await
        .unwrap();
    let err = idx.maintain(&gc()).await.unwrap_err().to_string();
    assert!(
        err.contains("already running on other-host") && err.contains("--break-lease"),
        "{err}"
    );
    // Breaking it works, and the lease is released afterwards.
    idx.maintain(&MaintenanceOptions {
        break_lease: true,
        ..gc()
    })
    .await
    .unwrap();
    assert!(store.head(layout::LEASE).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crashed_backup_are_reclaimed_and_the_next_backup_works() {
    // The store's clock and the repository's are one test clock: an hour passes when told.
    let clock = Arc::new(arca_engine::ManualClock::new());
    let inner: Store = Arc::new(arca_engine::store::clocked::ClockedBackend::new(
        memory(),
        clock.clone(),
    ));
    init(inner.clone()).await;
    let faulty = Arc::new(FaultyBackend::new(inner.clone()));
    let open_clocked = |store: Store| {
        let clock = clock.clone();
        async move {
            let repo = arca_engine::Repository::open(store, PW)
                .await
                .unwrap()
                .with_clock(clock);
            repo.indexed(None).await.unwrap().0
        }
    };
    let idx = open_clocked(faulty.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, 1);
    // Die just before the index is written: packs are stored, unindexed.
    faulty.arm(4, FaultMode::Before);
    assert!(backup(&idx, &src, "v1").await.is_err());
    let idx = open_clocked(inner.clone()).await;
    let r = idx
        .check(arca_engine::ReadData::None, Default::default())
        .await
        .unwrap();
    assert!(r.ok() && !r.unindexed_packs.is_empty(), "{r:?}");
    // The dead writer's session still looks alive: its leftovers are kept for now.
    let g = maintain(&idx, &gc()).await;
    assert_eq!(g.leftovers_deleted, 0, "{g:?}");
    // Two hours later its heartbeat is stale: the session and its leftovers go.
    clock.advance(Duration::from_secs(2 * 3600));
    let g = maintain(&idx, &gc()).await;
    assert!(g.leftovers_deleted > 0 && g.sessions_removed == 1, "{g:?}");
    let s = backup(&idx, &src, "v1").await.unwrap();
    assert_eq!(restore(&idx, &s).await, read_tree(&src));
    let r = idx
        .check(arca_engine::ReadData::All, Default::default())
        .await
        .unwrap();
    assert!(r.ok() && r.unindexed_packs.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_damage_and_repair_keeps_the_rest_restorable() {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let s1 = backup(&idx, &src, "v1").await.unwrap();
    // Lose the data pack holding v1/own0's chunks.
    let tree = idx.repo().snapshot(&s1).await.unwrap();
    let entries = idx.ls(&tree.root, "v1", false).await.unwrap();
    let own0 = entries.iter().find(|e| e.path == b"v1/own0").unwrap();
    let arca_format::NodeKind::File { content, .. } = &own0.node.kind else {
        panic!()
    };
    let loc = idx.locate(&content[0]).unwrap();
    store
        .delete(&layout::pack(loc.kind, &loc.pack))
        .await
        .unwrap();

    let r = idx
        .check(arca_engine::ReadData::None, Default::default())
        .await
        .unwrap();
    assert!(!r.ok());
    assert!(
        r.damaged_packs
            .iter()
            .any(|d| d.pack == loc.pack && d.blobs.contains(&content[0])),
        "{r:?}"
    );
    let (snap, paths) = &r.affected[0];
    assert_eq!(*snap, s1);
    assert!(paths.contains(&"v1/own0".to_string()), "{paths:?}");

    // Rebuild the index from what is there, then rewrite the snapshot.
    idx.repair_index().await.unwrap();
    let fixed = idx
        .repair_snapshots(&HashSet::new(), false, false)
        .await
        .unwrap();
    assert_eq!(fixed.len(), 1);
    assert!(fixed[0].damaged.contains(&"v1/own0".to_string()));
    assert_clean(&idx, true).await;
    // The rewrite restores everything else; the damaged file is reported.
    let new = fixed[0].new.unwrap();
    let s = idx.repo().snapshot(&new).await.unwrap();
    assert_eq!(s.original, Some(s1));
    let t = tempfile::tempdir().unwrap();
    let rep = idx
        .restore(
            &s.root,
            &arca_engine::RestoreOptions::new(t.path()),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        rep.errors.iter().any(|e| e.path.ends_with("v1/own0")),
        "{:?}",
        rep.errors
    );
    let got = read_tree(t.path());
    let damaged: HashSet<String> = fixed[0].damaged.iter().cloned().collect();
    for (p, c) in read_tree(&src) {
        let name = p.to_string_lossy().into_owned();
        if damaged.contains(&name) {
            assert!(
                rep.errors.iter().any(|e| e.path.ends_with(&p)),
                "{name} damaged but not reported"
            );
            assert_eq!(
                got.get(&p),
                Some(&Some(Vec::new())),
                "{name} is restored empty"
            );
        } else {
            assert_eq!(got.get(&p), Some(&c), "{name} differs");
        }
    }
}
