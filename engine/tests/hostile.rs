//! A bucket that someone without the key can write to (FORMAT.md 15 and 14.1): planted
//! huge objects, objects under names that are not their hashes, expensive key files,
//! replayed index files, and a repository rolled back. None may cost memory, time or
//! data, and each is named.

mod support;

use std::path::Path;
use std::time::Duration;

use arca_engine::{MaintenanceOptions, Repository, Store, StoreOptions, open_store};
use arca_format::{KdfParams, KeyFile, KeyMeta, Timestamp, layout};
use bytes::Bytes;
use support::*;

fn local(dir: &Path) -> Store {
    open_store(dir.to_str().unwrap(), &StoreOptions::default()).unwrap()
}

/// A repository opened with a cache root that lasts (so the machine remembers what it
/// saw of the index), and a scratch directory.
async fn with_cache() -> (
    Store,
    Repository,
    arca_engine::Indexed,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let store = memory();
    init(store.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::open(store.clone(), PW).await.unwrap();
    let (idx, _) = repo.indexed(Some(cache.path())).await.unwrap();
    (store, repo, idx, cache, tempfile::tempdir().unwrap())
}

async fn index_names(store: &Store) -> Vec<String> {
    let files = store.list(layout::INDEX).await.unwrap();
    files.into_iter().map(|o| o.name).collect()
}

fn gc() -> MaintenanceOptions {
    MaintenanceOptions {
        full: true,
        safety_margin: Duration::ZERO,
        cleanup_margin: Duration::ZERO,
        clock_skew: Duration::ZERO,
        unsafe_margins: true,
        identity: who(),
        ..Default::default()
    }
}

/// A 40 GB object (sparse: no disk) under `index/` and `snapshots/`: never read, named in
/// the error of a direct read, and no obstacle to backups, listings or GC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_huge_objects_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let store = local(&repo_dir);
    init(store.clone()).await;
    let idx = open(store.clone()).await.unwrap();
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let s1 = backup(&idx, &src, "v1").await.unwrap();

    let fake = "ab".repeat(32);
    for prefix in ["index", "snapshots"] {
        let p = repo_dir.join(prefix).join(&fake);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(40 << 30)
            .unwrap();
    }
    let fresh = open(store.clone()).await.unwrap();
    let snaps = fresh.repo().snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1, "the planted object is not a snapshot");
    let err = fresh
        .repo()
        .snapshot(&fake.parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("snapshots/{fake}")) && err.contains("42949672960 bytes"),
        "{err}"
    );
    write_tree(&src, 2);
    let s2 = backup(&fresh, &src, "v2").await.unwrap();
    fresh.repo().delete_snapshot(&s1).await.unwrap();
    let r = fresh.maintain(&gc()).await.unwrap();
    assert!(r.packs_marked > 0, "{r:?}");
    assert!(r.leftovers_blocked.is_none(), "{r:?}");
    fresh.maintain(&gc()).await.unwrap();
    assert_eq!(restore(&fresh, &s2).await, read_tree(&src));
}

/// An index file's bytes under another name (a replay under a fresh name, or damage) are
/// not trusted: the file is left out, and GC deletes no unindexed pack while it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_does_not_hash_to_its_name_is_not_trusted() {
    let (store, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let s1 = backup(&idx, &src, "v1").await.unwrap();
    let real = store.list(layout::INDEX).await.unwrap()[0].name.clone();
    let bytes = store.get(&real).await.unwrap();
    let renamed = format!("{}{}", layout::INDEX, "cd".repeat(32));
    store
        .put(&renamed, bytes, arca_engine::WriteMode::Overwrite)
        .await
        .unwrap();
    let fresh = open(store.clone()).await.unwrap();
    let stats = fresh.resync().await.unwrap();
    assert_eq!(stats.damaged.len(), 1, "{stats:?}");
    assert!(
        stats.damaged[0].1.contains("does not hash to its name"),
        "{stats:?}"
    );
    let r = fresh.maintain(&gc()).await.unwrap();
    assert!(
        r.leftovers_blocked
            .as_deref()
            .unwrap_or("")
            .contains("repair index"),
        "{r:?}"
    );
    assert_eq!(restore(&fresh, &s1).await, read_tree(&src));
}

/// A planted key file with the largest Argon2 parameters the format allows is never
/// derived (that would take minutes and gigabytes at every open); the real key opens the
/// repository, and a wrong password says which key file was left untried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expensive_planted_key_file_is_not_tried() {
    let store = memory();
    let repo = init(store.clone()).await;
    let planted = KeyFile {
        repo_id: repo.config().repo_id,
        kdf: KdfParams {
            memory_kib: 4 * 1024 * 1024,
            iterations: 1000,
            parallelism: 4,
        },
        salt: [1; 32],
        nonce: [2; 12],
        wrapped_key: [3; 48],
        meta: KeyMeta {
            created: Timestamp::now(),
            host: "attacker".into(),
            username: "mallory".into(),
        },
    };
    let (id, bytes) = planted.encode();
    store
        .put(
            &layout::key(&id),
            Bytes::from(bytes),
            arca_engine::WriteMode::CreateNew,
        )
        .await
        .unwrap();
    let opened = Repository::open(store.clone(), PW).await.unwrap();
    assert_eq!(opened.config().repo_id, repo.config().repo_id);
    let err = Repository::open(store.clone(), b"wrong")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not tried") && err.contains(&id.short()),
        "{err}"
    );
}

/// The key that opened the repository is remembered and tried first next time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_key_is_remembered() {
    let store = memory();
    let repo = init(store.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let r = Repository::open_with(store.clone(), PW, Some(state.path()))
        .await
        .unwrap();
    let hint = state
        .path()
        .join(repo.config().repo_id.to_hex())
        .join("last-key");
    assert_eq!(
        std::fs::read_to_string(hint).unwrap(),
        r.key_id().to_string()
    );
}

/// A superseded index file put back after it was deleted (an attacker replaying an old
/// state of the bucket) is recognised by a machine that saw it superseded, and not used:
/// the packs it names were collected since, and a backup that deduplicated against them
/// would store a snapshot that does not restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_index_file_is_not_trusted() {
    let (store, _repo, idx, _cache, dir) = with_cache().await;
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let s1 = backup(&idx, &src, "v1").await.unwrap();
    let tree1 = read_tree(&src);
    let old: Vec<(String, Bytes)> = {
        let mut v = Vec::new();
        for o in store.list(layout::INDEX).await.unwrap() {
            v.push((o.name.clone(), store.get(&o.name).await.unwrap()));
        }
        v
    };
    write_tree(&src, 2);
    let s2 = backup(&idx, &src, "v2").await.unwrap();
    // v1 is forgotten and collected: its own packs are deleted, its index files
    // superseded and deleted.
    idx.repo().delete_snapshot(&s1).await.unwrap();
    idx.maintain(&gc()).await.unwrap();
    let swept = idx.maintain(&gc()).await.unwrap();
    assert!(swept.packs_deleted > 0, "{swept:?}");
    let now = index_names(&store).await;
    assert!(old.iter().all(|(n, _)| !now.contains(n)));
    for (name, bytes) in &old {
        store
            .put(name, bytes.clone(), arca_engine::WriteMode::Overwrite)
            .await
            .unwrap();
    }
    let stats = idx.resync().await.unwrap();
    assert_eq!(stats.replayed.len(), old.len(), "{stats:?}");
    assert!(stats.went_backwards.is_none(), "{stats:?}");
    // A backup of v1 again stores what was collected, rather than pointing at it.
    write_tree(&src, 1);
    let again = backup(&idx, &src, "v1-again").await.unwrap();
    assert_eq!(restore(&idx, &again).await, tree1);
    write_tree(&src, 2);
    assert_eq!(restore(&idx, &s2).await, read_tree(&src));
    assert_clean(&idx, true).await;
}

/// Index files this machine saw live vanish with nothing superseding them: the repository
/// went backwards, and every sync says so until someone accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_repository_is_reported() {
    let (store, repo, idx, cache, dir) = with_cache().await;
    let src = dir.path().join("src");
    write_tree(&src, 1);
    backup(&idx, &src, "v1").await.unwrap();
    let first = index_names(&store).await;
    write_tree(&src, 2);
    let s2 = backup(&idx, &src, "v2").await.unwrap();
    // The bucket is put back as it was after the first backup.
    for o in store.list(layout::INDEX).await.unwrap() {
        if !first.contains(&o.name) {
            store.delete(&o.name).await.unwrap();
        }
    }
    store.delete(&layout::snapshot(&s2)).await.unwrap();
    for _ in 0..2 {
        let stats = idx.resync().await.unwrap();
        let why = stats.went_backwards.unwrap_or_default();
        assert!(why.contains("went backwards"), "{why}");
    }
    // Accepting it is removing the record, as the message says.
    std::fs::remove_file(
        cache
            .path()
            .join(repo.config().repo_id.to_hex())
            .join("seen-index"),
    )
    .unwrap();
    assert!(idx.resync().await.unwrap().went_backwards.is_none());
}

/// Object names in upper case are not the repository's (the store would be asked for the
/// lower-case name): they are ignored, not half-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upper_case_twins_are_not_objects() {
    let (store, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    write_tree(&src, 1);
    backup(&idx, &src, "v1").await.unwrap();
    let name = store.list(layout::INDEX).await.unwrap()[0].name.clone();
    let upper = format!(
        "{}{}",
        layout::INDEX,
        name[layout::INDEX.len()..].to_uppercase()
    );
    let bytes = store.get(&name).await.unwrap();
    store
        .put(&upper, bytes, arca_engine::WriteMode::Overwrite)
        .await
        .unwrap();
    let fresh = open(store.clone()).await.unwrap();
    let stats = fresh.resync().await.unwrap();
    assert!(stats.damaged.is_empty(), "{stats:?}");
    assert_eq!(stats.live, 1, "{stats:?}");
}
