//! Crash safety: a store that dies at the Nth write, for every N, through every write
//! path (backup, incremental backup, garbage collection with marking and sweeping,
//! repacking, index compaction, index repair, password change). After each simulated
//! crash the repository must open, check clean (with every blob read), restore every
//! snapshot exactly, and let the interrupted operation run again to completion.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arca_engine::store::faulty::{FaultMode, FaultyBackend};
use arca_engine::{Indexed, MaintenanceOptions, Store};
use arca_format::KdfParams;
use support::*;

type Tree = BTreeMap<PathBuf, Option<Vec<u8>>>;

#[derive(Clone, Copy, Debug)]
enum Op {
    Backup(u64),
    Forget(u64),
    Gc,
    Quick,
    RepairIndex,
    Passwd,
}

async fn run(idx: &Indexed, src: &Path, op: Op) -> arca_engine::Result<()> {
    match op {
        Op::Backup(v) => {
            write_tree(src, v);
            backup(idx, src, &format!("v{v}")).await.map(|_| ())
        }
        Op::Forget(v) => {
            for (id, s) in idx.repo().snapshots().await? {
                if s.tags == [format!("v{v}")] {
                    idx.repo().delete_snapshot(&id).await?;
                }
            }
            Ok(())
        }
        Op::Gc => {
            let o = MaintenanceOptions {
                full: true,
                safety_margin: Duration::ZERO,
                clock_skew: Duration::ZERO,
                repack_below: 0.7,
                // Small index files: a replacement spans several, so crashes land between.
                index_file_entries: 40,
                identity: who(),
                unsafe_margins: true,
                cleanup_margin: Duration::ZERO,
                ..Default::default()
            };
            idx.maintain(&o).await.map(|_| ())
        }
        Op::Quick => idx
            .maintain(&MaintenanceOptions {
                identity: who(),
                unsafe_margins: true,
                cleanup_margin: Duration::ZERO,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Op::RepairIndex => idx.repair_index().await.map(|_| ()),
        Op::Passwd => {
            let mut repo = idx.repo().clone();
            repo.change_password(
                PW,
                KdfParams {
                    memory_kib: 64,
                    iterations: 1,
                    parallelism: 1,
                },
                &who(),
            )
            .await
            .map(|_| ())
        }
    }
}

/// Every snapshot restores exactly the tree of the version its tag names.
async fn verify(idx: &Indexed, versions: &BTreeMap<u64, Tree>) {
    assert_clean(idx, true).await;
    for (id, s) in idx.repo().snapshots().await.unwrap() {
        let v: u64 = s.tags[0][1..].parse().unwrap();
        assert_eq!(
            &restore(idx, &id).await,
            &versions[&v],
            "snapshot {} of v{v}",
            id.short()
        );
    }
}

/// Run `prefix` cleanly, then `op` with the store dying at its Nth write, for every N and
/// both fault modes.
async fn crash_every_write(name: &str, prefix: &[Op], op: Op) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut versions: BTreeMap<u64, Tree> = BTreeMap::new();
    for v in 1..=4 {
        write_tree(&src, v);
        versions.insert(v, read_tree(&src));
    }
    // Count the op's writes on a clean run.
    let setup = |faulty: Arc<FaultyBackend>| {
        let (prefix, src) = (prefix.to_vec(), src.clone());
        async move {
            let store: Store = faulty.clone();
            init(store.clone()).await;
            let idx = open(store).await.unwrap();
            for p in prefix {
                run(&idx, &src, p).await.unwrap();
            }
            idx
        }
    };
    let clean = Arc::new(FaultyBackend::new(memory()));
    let idx = setup(clean.clone()).await;
    let before = clean.writes();
    run(&idx, &src, op).await.unwrap();
    let writes = clean.writes() - before;
    assert!(writes > 0, "{name}: the operation wrote nothing");
    for n in 1..=writes {
        for mode in [FaultMode::Before, FaultMode::After] {
            let inner = memory();
            let faulty = Arc::new(FaultyBackend::new(inner.clone()));
            let idx = setup(faulty.clone()).await;
            faulty.arm(n, mode);
            let r = run(&idx, &src, op).await;
            if !faulty.dead() {
                // Concurrent readers pack blobs in a varying order, so the number of
                // writes varies a little from run to run: this run needed fewer.
                assert!(r.is_ok(), "{name}: failed without the fault: {r:?}");
                continue;
            }
            assert!(
                r.is_err(),
                "{name}: write {n} ({mode:?}) failed but the operation reported success"
            );
            drop(idx);
            // A new process on the same store.
            let idx = open(inner.clone())
                .await
                .unwrap_or_else(|e| panic!("{name}: after a crash at write {n} ({mode:?}) the repository does not open: {e}"));
            verify(&idx, &versions).await;
            run(&idx, &src, op).await.unwrap_or_else(|e| {
                panic!("{name}: rerun after crash at write {n} ({mode:?}): {e}")
            });
            verify(&idx, &versions).await;
        }
    }
    eprintln!("{name}: {writes} writes, each crashed both ways");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_first_backup() {
    crash_every_write("first backup", &[], Op::Backup(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_incremental_backup() {
    crash_every_write("incremental backup", &[Op::Backup(1)], Op::Backup(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_gc_mark_and_repack() {
    crash_every_write(
        "gc mark",
        &[
            Op::Backup(1),
            Op::Backup(2),
            Op::Backup(3),
            Op::Forget(1),
            Op::Forget(2),
        ],
        Op::Gc,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_gc_sweep() {
    crash_every_write(
        "gc sweep",
        &[Op::Backup(1), Op::Backup(2), Op::Forget(1), Op::Gc],
        Op::Gc,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_quick_maintenance() {
    crash_every_write(
        "index compaction",
        &[Op::Backup(1), Op::Backup(2), Op::Backup(3)],
        Op::Quick,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_index_repair() {
    crash_every_write(
        "index repair",
        &[Op::Backup(1), Op::Backup(2)],
        Op::RepairIndex,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_password_change() {
    crash_every_write("password change", &[Op::Backup(1)], Op::Passwd).await;
}
