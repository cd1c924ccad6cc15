//! The movers' API as a controller drives it: requests, results, throttled progress,
//! cancellation, and incremental backups by the volume's identity.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_engine::{Identity, InitOptions, Repository, StoreOptions, open_store};
use arca_format::KdfParams;
use arca_movers::*;
use tree::noise;

// The CLI's end-to-end tests' tricky tree and tree comparison, shared by path.
#[path = "../../cli/tests/support/tree.rs"]
mod tree;

async fn repo() -> Indexed {
    let store = open_store("memory://", &StoreOptions::default()).unwrap();
    let opts = InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..Default::default()
    };
    let r = Repository::init(store, b"pw", opts, &who()).await.unwrap();
    r.indexed(None).await.unwrap().0
}

fn who() -> Identity {
    Identity {
        host: "node-1".into(),
        username: "arca".into(),
    }
}

fn request(source: Source) -> BackupRequest {
    BackupRequest {
        source,
        volume: "shop/data-db-0".into(),
        identity: who(),
        tags: vec!["volume".into()],
        labels: BTreeMap::new(),
        checkpoint: None,
    }
}

async fn restore_to(
    idx: &Indexed,
    snapshot: arca_format::SnapshotId,
    target: Target,
) -> Result<RestoreResult> {
    restore(
        idx,
        RestoreRequest { snapshot, target },
        &Cancel::new(),
        Duration::from_secs(1),
        |_| {},
    )
    .await
}

async fn backup_of(idx: &Indexed, source: Source) -> Result<BackupResult> {
    backup(
        idx,
        request(source),
        &Cancel::new(),
        Duration::from_secs(1),
        |_| {},
    )
    .await
}

type Seen = Arc<Mutex<Vec<Progress>>>;

fn recorder() -> (Seen, impl FnMut(Progress) + Send + 'static) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    (seen, move |p| s.lock().unwrap().push(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_volume_backs_up_incrementally_wherever_it_is_mounted() {
    let idx = repo().await;
    let dir = tempfile::tempdir().unwrap();
    let first_mount = dir.path().join("pods/uid-1/volumes/data");
    std::fs::create_dir_all(&first_mount).unwrap();
    for i in 0..20u64 {
        std::fs::write(first_mount.join(format!("f{i}")), noise(i, 256 * 1024)).unwrap();
    }
    let (seen, report) = recorder();
    let first = backup(
        &idx,
        request(Source::Tree(first_mount.clone())),
        &Cancel::new(),
        Duration::from_millis(10),
        report,
    )
    .await
    .unwrap();
    assert_eq!(first.parent, None);
    assert_eq!(first.files, 20);
    assert_eq!(first.bytes_total, 20 * 256 * 1024);
    assert_eq!(first.bytes_read, first.bytes_total);
    assert!(first.bytes_new >= first.bytes_total && first.bytes_stored > 0);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "progress was reported");
    assert!(
        seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done),
        "progress only grows"
    );
    let last = seen.last().unwrap();
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (first.bytes_total, first.bytes_total),
        "the last update is the end"
    );

    // The pod moved: the same volume at another path, one file changed.
    let second_mount = dir.path().join("pods/uid-2/volumes/data");
    std::fs::create_dir_all(second_mount.parent().unwrap()).unwrap();
    std::fs::rename(&first_mount, &second_mount).unwrap();
    std::fs::write(second_mount.join("f3"), noise(1000, 256 * 1024)).unwrap();
    let second = backup_of(&idx, Source::Tree(second_mount.clone()))
        .await
        .unwrap();
    assert_eq!(
        second.parent,
        Some(first.snapshot),
        "found by the volume's identity"
    );
    assert_eq!(
        second.bytes_read,
        256 * 1024,
        "only the changed file is read"
    );
    assert!(second.bytes_new <= 256 * 1024 + 64 * 1024, "{second:?}");

    let out = dir.path().join("restored");
    let r = restore_to(&idx, second.snapshot, Target::Tree(out.clone()))
        .await
        .unwrap();
    assert_eq!(r.files, 20);
    for i in 0..20 {
        assert_eq!(
            std::fs::read(out.join(format!("f{i}"))).unwrap(),
            std::fs::read(second_mount.join(format!("f{i}"))).unwrap()
        );
    }
    // Run again (as after an interruption): it completes, writing nothing new.
    let again = restore_to(&idx, second.snapshot, Target::Tree(out.clone()))
        .await
        .unwrap();
    assert_eq!(again.bytes_written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_volume_through_the_api_and_the_wrong_kinds_of_target() {
    let idx = repo().await;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(32 << 20).unwrap();
    f.write_all_at(&noise(5, 3 << 20), 4 << 20).unwrap();
    let first = backup_of(&idx, Source::Block(img.clone())).await.unwrap();
    assert_eq!(first.bytes_total, 32 << 20);
    assert_eq!(first.files, 1);
    // A tree snapshot of the same identity is not a block volume's parent.
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("x"), b"x").unwrap();
    backup_of(&idx, Source::Tree(tree)).await.unwrap();
    f.write_all_at(b"changed", 5 << 20).unwrap();
    let second = backup_of(&idx, Source::Block(img.clone())).await.unwrap();
    assert_eq!(second.parent, Some(first.snapshot));
    assert!(second.bytes_new < 1 << 20, "{second:?}");

    let out = dir.path().join("out.img");
    let target = Target::Block {
        path: out.clone(),
        fresh: false,
        overwrite: false,
    };
    let r = restore_to(&idx, second.snapshot, target.clone())
        .await
        .unwrap();
    assert_eq!(r.bytes_written, 3 << 20);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    let wrong = restore_to(&idx, second.snapshot, Target::Tree(dir.path().join("t")))
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("block volume"), "{wrong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_stores_nothing_and_the_next_one_runs() {
    let idx = repo().await;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10u64 {
        std::fs::write(dir.path().join(format!("f{i}")), noise(i, 64 * 1024)).unwrap();
    }
    let cancel = Cancel::new();
    cancel.cancel();
    let e = backup(
        &idx,
        request(Source::Tree(dir.path().to_path_buf())),
        &cancel,
        Duration::from_secs(1),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(idx.repo().readable_snapshots().await.unwrap().0.is_empty());
    let ok = backup_of(&idx, Source::Tree(dir.path().to_path_buf()))
        .await
        .unwrap();
    assert_eq!(
        ok.parent, None,
        "a cancelled backup leaves no parent behind"
    );
    assert_eq!(
        latest_of(&idx, "shop/data-db-0", false).await.unwrap(),
        Some(ok.snapshot)
    );
}

/// The engine's hard cases through the movers' API: a tricky tree (odd names, a sparse file,
/// hard links, a fifo, xattrs, odd modes and times) beside bulk data; a backup cancelled
/// mid-way from the progress callback, as a controller would, stores nothing and checks
/// clean; the next run completes; a restore cancelled mid-way runs again to an identical tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tricky_tree_through_the_api_with_cancels_midway() {
    let idx = repo().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("volume");
    tree::tricky_tree(&src);
    std::fs::create_dir_all(src.join("bulk")).unwrap();
    for i in 0..1000u64 {
        std::fs::write(
            src.join(format!("bulk/{i:03}.bin")),
            noise(100 + i, 128 * 1024),
        )
        .unwrap();
    }

    // Cancel from the progress callback once some bytes are done and some are not.
    let cancel = Cancel::new();
    let (c, seen) = (cancel.clone(), Arc::new(Mutex::new(None)));
    let s = seen.clone();
    let e = backup(
        &idx,
        request(Source::Tree(src.clone())),
        &cancel,
        Duration::from_millis(1),
        move |p| {
            if p.bytes_done > 0 && p.bytes_done < p.bytes_total && !c.is_cancelled() {
                *s.lock().unwrap() = Some(p.bytes_done);
                c.cancel();
            }
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(seen.lock().unwrap().is_some(), "cancelled mid-way");
    assert!(idx.repo().readable_snapshots().await.unwrap().0.is_empty());
    let check = idx
        .check(arca_engine::ReadData::All, Arc::default())
        .await
        .unwrap();
    assert!(check.ok(), "{check:?}");

    let (progress, report) = recorder();
    let done = backup(
        &idx,
        request(Source::Tree(src.clone())),
        &Cancel::new(),
        Duration::from_millis(5),
        report,
    )
    .await
    .unwrap();
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    assert!(done.files > 1000);
    let p = progress.lock().unwrap().clone();
    assert!(p.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));

    // Restore, cancelled once mid-way, then again to the end.
    let out = dir.path().join("restored");
    let cancel = Cancel::new();
    let c = cancel.clone();
    let stopped = restore(
        &idx,
        RestoreRequest {
            snapshot: done.snapshot,
            target: Target::Tree(out.clone()),
        },
        &cancel,
        Duration::from_millis(1),
        move |p| {
            if p.bytes_done > 0 && p.bytes_done < p.bytes_total {
                c.cancel();
            }
        },
    )
    .await;
    assert!(
        matches!(stopped, Err(Error::Cancelled)),
        "the restore was cancelled mid-way: {stopped:?}"
    );
    // It stopped: not every bulk file is there whole (the engine did not run to the end).
    let whole = (0..1000u64)
        .filter(|i| {
            std::fs::read(out.join(format!("bulk/{i:03}.bin")))
                .is_ok_and(|d| d == noise(100 + i, 128 * 1024))
        })
        .count();
    assert!(whole < 1000, "a cancelled restore wrote everything");
    let r = restore_to(&idx, done.snapshot, Target::Tree(out.clone()))
        .await
        .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    tree::assert_same_tree(&src, &out);
}
