//! Helpers for the engine's integration tests: repositories with fast keys, generated
//! trees, and restore-and-compare.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arca_engine::{
    BackupOptions, BackupProgress, Identity, Indexed, InitOptions, Parent, Repository,
    RestoreOptions, RestoreProgress, Store, StoreOptions, open_store,
};
use arca_format::{KdfParams, SnapshotId};

pub const PW: &[u8] = b"test password";

pub fn who() -> Identity {
    Identity {
        host: "test-host".into(),
        username: "tester".into(),
    }
}

/// A fresh in-memory store.
pub fn memory() -> Store {
    open_store("memory://", &StoreOptions::default()).unwrap()
}

/// Initialise a repository with cheap keys and small packs (so that a few files make
/// several packs).
pub async fn init(store: Store) -> Repository {
    let opts = InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        chunker: Some(arca_format::ChunkerParams {
            min_size: 16 << 10,
            avg_size: 64 << 10,
            max_size: 256 << 10,
            normalization: 1,
        }),
        compression: None,
        data_pack_size: Some(1 << 20),
    };
    Repository::init(store, PW, opts, &who()).await.unwrap()
}

/// A fresh in-memory repository, opened, and a scratch directory for source trees.
pub async fn memory_repo() -> (Store, Indexed, tempfile::TempDir) {
    let store = memory();
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    (store, idx, tempfile::tempdir().unwrap())
}

/// Open with a fresh, throw-away index cache (as a new process would).
pub async fn open(store: Store) -> arca_engine::Result<Indexed> {
    let repo = Repository::open(store, PW).await?;
    Ok(repo.indexed(None).await?.0)
}

/// Deterministic bytes.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    // xorshift64, eight bytes a step: fast even in unoptimised test builds.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Write version `v` of a small tree under `dir`: files shared by all versions, files of
/// this version only, and a file that grows by version.
pub fn write_tree(dir: &Path, v: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    std::fs::create_dir_all(dir.join(format!("v{v}"))).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("shared/s{i}")), noise(1000 + i, 200_000)).unwrap();
    }
    for i in 0..3 {
        std::fs::write(
            dir.join(format!("v{v}/own{i}")),
            noise(v * 100 + i, 150_000),
        )
        .unwrap();
    }
    let mut grow = noise(7, 300_000);
    grow.extend(noise(v, 20_000 * (v as usize + 1)));
    std::fs::write(dir.join("growing"), grow).unwrap();
}

/// Everything under a directory: relative path → content (None for directories).
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if p.is_dir() {
                stack.push(p);
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Back up `dir` with a tag; return the snapshot.
pub async fn backup(idx: &Indexed, dir: &Path, tag: &str) -> arca_engine::Result<SnapshotId> {
    let mut o = BackupOptions::new(vec![dir.to_path_buf()]);
    o.identity = who();
    o.tags = vec![tag.to_string()];
    o.parent = Parent::Auto;
    Ok(idx.backup(o, Arc::new(BackupProgress::default())).await?.id)
}

/// Restore a snapshot into a fresh directory and return what it holds.
pub async fn restore(idx: &Indexed, id: &SnapshotId) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let s = idx.repo().snapshot(id).await.unwrap();
    let t = tempfile::tempdir().unwrap();
    let mut opts = RestoreOptions::new(t.path());
    opts.top = s.top.clone();
    let progress = Arc::new(RestoreProgress::default());
    let r = idx.restore(&s.root, &opts, progress.clone()).await.unwrap();
    assert!(
        r.errors.is_empty(),
        "restore of {} had errors: {:?}",
        id.short(),
        r.errors
    );
    // The live counters end where the report does: totals final, everything done.
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert!(progress.walk_done.load(Ordering::Relaxed));
    assert_eq!(load(&progress.total_files), r.files_restored);
    assert_eq!(load(&progress.files_done), r.files_restored);
    assert_eq!(load(&progress.total_bytes), r.bytes_written);
    assert_eq!(load(&progress.bytes_done), r.bytes_written);
    read_tree(t.path())
}

/// Check the repository and require it clean (unindexed leftovers allowed).
pub async fn assert_clean(idx: &Indexed, read_data: bool) {
    let r = idx
        .check(
            if read_data {
                arca_engine::ReadData::All
            } else {
                arca_engine::ReadData::None
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        r.ok(),
        "check failed: errors {:?} damaged {:?} missing {:?}",
        r.errors,
        r.damaged_packs,
        r.missing
    );
}
