//! Backup and restore of generated trees through the engine, into a local repository:
//! large files, many small files, and a mix; first run, unchanged re-run, re-run after a
//! small change; restore. Sizes are small enough for criterion's repetitions; the
//! side-by-side comparison on real data at scale is `scripts/compare.sh`.
//!
//!   cargo bench -p arca-benches --bench end_to_end

// criterion's macros generate undocumented public items.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arca_benches::{Shape, disk_image, generate, mutate, scribble};
use arca_engine::{
    BackupOptions, Identity, Indexed, InitOptions, Parent, Repository, RestoreOptions,
    StoreOptions, VolumeBackupOptions, VolumeRestoreOptions, open_store,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MIB: u64 = 1 << 20;

async fn fresh_repo(dir: &Path) -> Indexed {
    let store = open_store(dir.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let who = Identity {
        host: "bench".into(),
        username: "bench".into(),
    };
    let repo = Repository::init(store, b"bench", InitOptions::default(), &who)
        .await
        .unwrap();
    repo.indexed(Some(&dir.join("cache"))).await.unwrap().0
}

async fn backup(repo: &Indexed, src: &Path, parent: Parent) -> arca_format::SnapshotId {
    let mut o = BackupOptions::new(vec![src.to_path_buf()]);
    o.parent = parent;
    o.identity = Identity {
        host: "bench".into(),
        username: "bench".into(),
    };
    repo.backup(o, Default::default()).await.unwrap().id
}

fn trees() -> Vec<(&'static str, Shape, u64, u64)> {
    vec![
        ("large", Shape::Large, 256 * MIB, 0),
        ("small", Shape::Small, 0, 20_000),
        ("mixed", Shape::Mixed, 128 * MIB, 0),
    ]
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("end_to_end");
    g.sample_size(10);
    for (name, shape, bytes, files) in trees() {
        let src = work.path().join(format!("src-{name}"));
        let (n_files, n_bytes) = generate(&src, shape, bytes, files, 1).unwrap();
        g.throughput(Throughput::Bytes(n_bytes));

        // First backup: a new repository each time.
        g.bench_function(format!("{name}: first backup ({n_files} files)"), |b| {
            b.iter_batched(
                || tempfile::tempdir_in(work.path()).unwrap(),
                |d| {
                    rt.block_on(async {
                        backup(&fresh_repo(d.path()).await, &src, Parent::None).await
                    })
                },
                BatchSize::PerIteration,
            )
        });

        // Unchanged re-run and restore, against one repository.
        let repo_dir = work.path().join(format!("repo-{name}"));
        let repo = rt.block_on(fresh_repo(&repo_dir));
        let first = rt.block_on(backup(&repo, &src, Parent::None));
        g.bench_function(format!("{name}: unchanged re-backup"), |b| {
            b.iter(|| rt.block_on(backup(&repo, &src, Parent::Snapshot(first))))
        });
        g.bench_function(format!("{name}: restore"), |b| {
            b.iter_batched(
                || tempfile::tempdir_in(work.path()).unwrap(),
                |t| {
                    rt.block_on(async {
                        let snap = repo.repo().snapshot(&first).await.unwrap();
                        repo.restore(
                            &snap.root,
                            &RestoreOptions::new(t.path()),
                            Arc::new(Default::default()),
                        )
                        .await
                        .unwrap()
                    })
                },
                BatchSize::PerIteration,
            )
        });

        // After a small change: a copy of the tree with 1% of the files edited.
        let changed: PathBuf = work.path().join(format!("changed-{name}"));
        copy_tree(&src, &changed);
        mutate(&changed, 100, 200, 9).unwrap();
        let base = rt.block_on(backup(&repo, &changed, Parent::None));
        mutate(&changed, 100, 200, 10).unwrap();
        g.bench_function(format!("{name}: re-backup after a small change"), |b| {
            b.iter(|| rt.block_on(backup(&repo, &changed, Parent::Snapshot(base))))
        });
    }
    g.finish();
}

/// A disk image as a block volume: first backup, backup after 1 % written in place (most
/// chunks dedupe), restore into an image file.
fn block_volume(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("block_volume");
    g.sample_size(10);
    let size = 256 * MIB;
    let img = work.path().join("disk.img");
    disk_image(&img, size, 1).unwrap();
    let changed = work.path().join("changed.img");
    std::fs::copy(&img, &changed).unwrap();
    scribble(&changed, 1, 2).unwrap();
    g.throughput(Throughput::Bytes(size));
    let backup_volume = |repo: &Indexed, src: &Path| {
        let mut o = VolumeBackupOptions::new(src);
        o.parent = Parent::None;
        rt.block_on(repo.backup_volume(o, Default::default()))
            .unwrap()
    };
    g.bench_function("256 MiB image: first backup", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(work.path()).unwrap(),
            |d| backup_volume(&rt.block_on(fresh_repo(d.path())), &img),
            BatchSize::PerIteration,
        )
    });
    let repo = rt.block_on(fresh_repo(&work.path().join("repo")));
    let first = backup_volume(&repo, &img);
    // A fresh repository holding the first backup each time (set-up, not timed): on one
    // repository, every run after the first would find the change already stored.
    g.bench_function("256 MiB image: after 1 % written in place", |b| {
        b.iter_batched(
            || {
                let d = tempfile::tempdir_in(work.path()).unwrap();
                let r = rt.block_on(fresh_repo(d.path()));
                backup_volume(&r, &img);
                (d, r)
            },
            |(_d, r)| backup_volume(&r, &changed),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("256 MiB image: restore", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(work.path()).unwrap(),
            |t| {
                let o = VolumeRestoreOptions::new(t.path().join("out.img"));
                rt.block_on(repo.restore_volume(&first.snapshot, &o, Default::default()))
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

criterion_group!(benches, end_to_end, block_volume);
criterion_main!(benches);
