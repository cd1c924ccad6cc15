//! Randomized model test: random sequences of backup, forget, quick and full maintenance,
//! and crashes at random writes of any of them, against a reference model (snapshot →
//! the tree it must restore). After every step a fresh process checks the repository
//! (reading every blob) and restores every live snapshot exactly.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arca_engine::store::faulty::{FaultMode, FaultyBackend};
use arca_engine::{Indexed, MaintenanceOptions, Store};
use arca_format::SnapshotId;
use proptest::prelude::*;
use support::*;

type Tree = BTreeMap<PathBuf, Option<Vec<u8>>>;

#[derive(Clone, Debug)]
enum Op {
    /// Back up a tree made from this seed.
    Backup(u8),
    /// Forget the k-th live snapshot.
    Forget(usize),
    /// Full maintenance (margin 0).
    Gc,
    /// Index compaction.
    Quick,
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    /// Die at this write of the step, if any.
    crash: Option<(usize, bool)>,
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        4 => any::<u8>().prop_map(Op::Backup),
        2 => any::<usize>().prop_map(Op::Forget),
        2 => Just(Op::Gc),
        1 => Just(Op::Quick),
    ];
    (
        op,
        proptest::option::weighted(0.35, (1usize..12, any::<bool>())),
    )
        .prop_map(|(op, crash)| Step { op, crash })
}

/// A small tree from a seed: some files shared between seeds (dedup, repacking), some
/// of its own, and an occasional empty directory.
fn write_seed_tree(dir: &Path, seed: u8) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..(seed % 3 + 1) as u64 {
        std::fs::write(dir.join(format!("shared{i}")), noise(500 + i, 120_000)).unwrap();
    }
    for i in 0..(seed % 4 + 1) as u64 {
        std::fs::write(
            dir.join(format!("own{i}")),
            noise(seed as u64 * 31 + i, 40_000 + 30_000 * i as usize),
        )
        .unwrap();
    }
    if seed.is_multiple_of(5) {
        std::fs::create_dir_all(dir.join("empty")).unwrap();
    }
}

fn gc() -> MaintenanceOptions {
    MaintenanceOptions {
        full: true,
        safety_margin: Duration::ZERO,
        clock_skew: Duration::ZERO,
        repack_below: 0.8,
        identity: who(),
        unsafe_margins: true,
        cleanup_margin: Duration::ZERO,
        ..Default::default()
    }
}

async fn apply(
    idx: &Indexed,
    op: &Op,
    src: &Path,
    live: &[SnapshotId],
) -> arca_engine::Result<Option<SnapshotId>> {
    match op {
        Op::Backup(seed) => {
            write_seed_tree(src, *seed);
            backup(idx, src, &format!("seed{seed}")).await.map(Some)
        }
        Op::Forget(k) => {
            if !live.is_empty() {
                idx.repo().delete_snapshot(&live[k % live.len()]).await?;
            }
            Ok(None)
        }
        Op::Gc => idx.maintain(&gc()).await.map(|_| None),
        Op::Quick => idx
            .maintain(&MaintenanceOptions {
                identity: who(),
                unsafe_margins: true,
                cleanup_margin: Duration::ZERO,
                ..Default::default()
            })
            .await
            .map(|_| None),
    }
}

async fn run_steps(steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let inner: Store = memory();
    init(inner.clone()).await;
    let mut model: BTreeMap<SnapshotId, Tree> = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        let faulty = Arc::new(FaultyBackend::new(inner.clone()));
        let idx = open(faulty.clone()).await.unwrap();
        if let Some((n, after)) = s.crash {
            faulty.arm(
                n,
                if after {
                    FaultMode::After
                } else {
                    FaultMode::Before
                },
            );
        }
        let live: Vec<SnapshotId> = model.keys().copied().collect();
        let result = apply(&idx, &s.op, &src, &live).await;
        let expected_tree = matches!(s.op, Op::Backup(_)).then(|| read_tree(&src));
        match (&result, faulty.dead()) {
            (Ok(Some(id)), _) => {
                model.insert(*id, expected_tree.clone().unwrap());
            }
            (Ok(None), _) => {}
            (Err(e), false) => panic!("step {i} {:?} failed without a fault: {e}", s.op),
            (Err(_), true) => {}
        }
        drop(idx);

        // A fresh process: reconcile what a crash may have done halfway, then verify.
        let idx = open(inner.clone()).await.unwrap();
        let present: Vec<SnapshotId> = idx
            .repo()
            .snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for id in &present {
            if !model.contains_key(id) {
                // Only a crashed backup can add a snapshot we did not hear about.
                let tree = expected_tree
                    .clone()
                    .unwrap_or_else(|| panic!("step {i}: unknown snapshot {}", id.short()));
                model.insert(*id, tree);
            }
        }
        model.retain(|id, _| {
            present.contains(id) || {
                // Only a forget can remove one.
                assert!(
                    matches!(s.op, Op::Forget(_)),
                    "step {i} {:?}: snapshot {} vanished",
                    s.op,
                    id.short()
                );
                false
            }
        });
        // Forget of a specific snapshot: the model follows the repository.
        if let (Op::Forget(k), false) = (&s.op, live.is_empty()) {
            let gone = live[k % live.len()];
            if !faulty.dead() {
                assert!(!present.contains(&gone));
            }
        }
        assert_clean(&idx, true).await;
        for (id, tree) in &model {
            assert_eq!(
                &restore(&idx, id).await,
                tree,
                "step {i} {:?}: snapshot {} restores wrong",
                s.op,
                id.short()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 20, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_and_crashes_keep_every_snapshot_restorable(steps in proptest::collection::vec(step(), 1..9)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_steps(steps));
    }
}
