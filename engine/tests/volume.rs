//! Volume snapshots (FORMAT.md 13.2) of image files: sparse images cost their data, zeros
//! are not stored, an in-place change stores only its chunks, restores are identical and
//! sparse, maintenance keeps what volumes use, cancellation stores no snapshot.

mod support;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arca_engine::{
    BackupProgress, MaintenanceOptions, RestoreProgress, VolumeBackupOptions, VolumeRestoreOptions,
};
use arca_format::SnapshotRoot;
use support::*;

const MIB: u64 = 1 << 20;

/// A 64 MiB image: 4 MiB of noise at 8 MiB, 1 MiB of text at 40 MiB, 2 MiB of written
/// zeros at 20 MiB, holes elsewhere.
fn image(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&noise(7, 4 * MIB as usize), 8 * MIB)
        .unwrap();
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
        .iter()
        .cycle()
        .take(MIB as usize)
        .copied()
        .collect();
    f.write_all_at(&text, 40 * MIB).unwrap();
    f.write_all_at(&vec![0u8; 2 * MIB as usize], 20 * MIB)
        .unwrap();
    f.sync_all().unwrap();
    p
}

/// Whether files under `dir` take direct I/O as a restore asks for it: not on tmpfs (the
/// restore does not ask there), and the file system accepts `O_DIRECT`.
fn takes_direct_io(dir: &std::path::Path) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    use std::os::unix::fs::OpenOptionsExt;
    !statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
        && std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("direct-probe"))
            .is_ok()
}

fn opts(src: &std::path::Path) -> VolumeBackupOptions {
    let mut o = VolumeBackupOptions::new(src);
    o.identity = who();
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_image_costs_its_data_and_restores_sparse() {
    let (_store, idx, dir) = memory_repo().await;
    let img = image(dir.path());
    let bp = Arc::new(BackupProgress::default());
    let r = idx.backup_volume(opts(&img), bp.clone()).await.unwrap();
    let read = bp.bytes_read.load(Ordering::Relaxed);
    // The data and the written zeros, rounded to chunks; none of the 57 MiB of holes (on
    // file systems that report holes, as the temporary directory's do here).
    assert!(read <= 8 * MIB, "{read} bytes read");
    let SnapshotRoot::Volume(v) = &r.snapshot.root else {
        panic!("a volume snapshot")
    };
    assert_eq!(v.size, 64 * MIB);
    let s = &r.snapshot.summary;
    assert_eq!(
        s.bytes_processed,
        5 * MIB,
        "the zeros and the holes are not stored"
    );
    // The data and one small extent list.
    assert!(
        s.bytes_added <= 5 * MIB + 4096 && s.bytes_stored < 5 * MIB,
        "{s:?}"
    );

    let out = dir.path().join("restored.img");
    let progress = Arc::new(RestoreProgress::default());
    let rr = idx
        .restore_volume(
            &r.snapshot,
            &VolumeRestoreOptions::new(&out),
            progress.clone(),
        )
        .await
        .unwrap();
    assert_eq!(rr.bytes_written, 5 * MIB);
    assert_eq!(progress.bytes_done.load(Ordering::Relaxed), 5 * MIB);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated <= 6 * MIB,
        "restored sparse: {allocated} bytes allocated"
    );

    // An existing file is not overwritten unless asked.
    let again = idx
        .restore_volume(
            &r.snapshot,
            &VolumeRestoreOptions::new(&out),
            Arc::default(),
        )
        .await
        .unwrap_err();
    assert!(again.to_string().contains("exists"), "{again}");
    let mut o = VolumeRestoreOptions::new(&out);
    o.overwrite = true;
    idx.restore_volume(&r.snapshot, &o, Arc::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    assert_clean(&idx, true).await;
}

/// An image written past the page cache (direct I/O, the default onto a disk) and through
/// it come back the same: a size that ends mid-block (the last block goes out padded and
/// the file is cut back), data ending mid-chunk, and the holes left holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_of_any_size_restores_the_same_with_direct_io_and_without() {
    let (_store, idx, dir) = memory_repo().await;
    let img = dir.path().join("odd.img");
    let size = 24 * MIB + 12_345;
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&noise(3, 3 * MIB as usize + 777), 2 * MIB - 100)
        .unwrap();
    f.write_all_at(&noise(4, 40_000), size - 40_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let r = idx
        .backup_volume(opts(&img), Arc::new(BackupProgress::default()))
        .await
        .unwrap();
    for direct in [true, false] {
        let out = dir.path().join(format!("out-{direct}.img"));
        let mut o = VolumeRestoreOptions::new(&out);
        o.direct_io = direct;
        let rr = idx
            .restore_volume(&r.snapshot, &o, Arc::default())
            .await
            .unwrap();
        // On a disk (the temporary directory here), direct I/O applies.
        assert_eq!(
            rr.direct_io,
            direct && takes_direct_io(dir.path()),
            "{rr:?}"
        );
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap(),
            "direct I/O {direct}: the image differs"
        );
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(
            allocated <= 5 * MIB,
            "direct I/O {direct}: {allocated} bytes allocated for 3.1 MiB of data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_change_stores_only_its_chunks() {
    let (_store, idx, dir) = memory_repo().await;
    let img = image(dir.path());
    let first = idx
        .backup_volume(opts(&img), Arc::new(BackupProgress::default()))
        .await
        .unwrap();
    // Two 4 KiB writes in place, in two chunks of the noise.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&noise(99, 4096), 9 * MIB + 4096).unwrap();
    f.write_all_at(&noise(98, 4096), 11 * MIB).unwrap();
    f.sync_all().unwrap();
    let second = idx
        .backup_volume(opts(&img), Arc::new(BackupProgress::default()))
        .await
        .unwrap();
    assert_eq!(
        second.snapshot.parent,
        Some(first.id),
        "the same source: the parent"
    );
    let added = second.snapshot.summary.bytes_added;
    let chunk = arca_engine::VOLUME_CHUNK_DEFAULT as u64;
    assert!(
        added <= 2 * chunk + 64 * 1024,
        "two chunks (and the extent list), not the volume: {added}"
    );
    let out = dir.path().join("second.img");
    idx.restore_volume(
        &second.snapshot,
        &VolumeRestoreOptions::new(&out),
        Arc::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_keeps_what_volumes_use() {
    let (_store, idx, dir) = memory_repo().await;
    let img = image(dir.path());
    let r = idx
        .backup_volume(opts(&img), Arc::new(BackupProgress::default()))
        .await
        .unwrap();
    // A tree snapshot beside it, forgotten, so that maintenance has something to sweep.
    let src = dir.path().join("tree");
    write_tree(&src, 1);
    let t = backup(&idx, &src, "tree").await.unwrap();
    idx.repo().delete_snapshot(&t).await.unwrap();
    let o = MaintenanceOptions {
        full: true,
        safety_margin: Duration::ZERO,
        cleanup_margin: Duration::ZERO,
        clock_skew: Duration::ZERO,
        unsafe_margins: true,
        repack_below: 0.7,
        identity: who(),
        ..Default::default()
    };
    idx.maintain(&o).await.unwrap();
    idx.maintain(&o).await.unwrap();
    let idx = open(idx.repo().store().clone()).await.unwrap();
    assert_clean(&idx, true).await;
    let out = dir.path().join("after-gc.img");
    idx.restore_volume(
        &r.snapshot,
        &VolumeRestoreOptions::new(&out),
        Arc::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_stores_no_snapshot() {
    let (_store, idx, dir) = memory_repo().await;
    let img = image(dir.path());
    let o = opts(&img);
    o.cancel.store(true, Ordering::SeqCst);
    let e = idx
        .backup_volume(o, Arc::new(BackupProgress::default()))
        .await
        .unwrap_err();
    assert!(matches!(e, arca_engine::Error::Cancelled), "{e}");
    assert!(idx.repo().readable_snapshots().await.unwrap().0.is_empty());
    assert_clean(&idx, false).await;
    // A directory is not a volume.
    let e = idx
        .backup_volume(opts(dir.path()), Arc::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a block device"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cancelled_midway_runs_again_to_the_end() {
    let (_store, idx, dir) = memory_repo().await;
    let img = dir.path().join("busy.img");
    let f = std::fs::File::create(&img).unwrap();
    f.write_all_at(&noise(3, 32 * MIB as usize), 0).unwrap();
    let r = idx
        .backup_volume(opts(&img), Arc::new(BackupProgress::default()))
        .await
        .unwrap();
    let out = dir.path().join("out.img");
    let mut o = VolumeRestoreOptions::new(&out);
    o.parallel = 1;
    let progress = Arc::new(RestoreProgress::default());
    let (p, cancel) = (progress.clone(), o.cancel.clone());
    // Cancel as soon as the first bytes are down.
    let watcher = tokio::spawn(async move {
        while p.bytes_done.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        cancel.store(true, Ordering::SeqCst);
    });
    let e = idx
        .restore_volume(&r.snapshot, &o, progress.clone())
        .await
        .unwrap_err();
    watcher.await.unwrap();
    assert!(matches!(e, arca_engine::Error::Cancelled), "{e}");
    assert!(
        progress.bytes_done.load(Ordering::Relaxed) < 32 * MIB,
        "stopped early"
    );
    let mut again = VolumeRestoreOptions::new(&out);
    again.overwrite = true;
    idx.restore_volume(&r.snapshot, &again, Arc::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}

/// Hostile maps: extents overlapping across lists, running past the volume's end, or whose
/// blob disagrees with its length are refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_extent_lists_are_refused_before_writing() {
    use arca_engine::{SessionGuard, Writer};
    use arca_format::{BlobType, Compression, Extent, ExtentList, SessionKind, Snapshot, Volume};
    let (_store, idx, dir) = memory_repo().await;
    let guard = SessionGuard::start(idx.repo(), SessionKind::Backup, &who())
        .await
        .unwrap();
    let w = Writer::new(&idx, Compression::None, guard.liveness());
    let data = w.store(BlobType::Data, &noise(1, 4096)).unwrap();
    let list = |extents: Vec<(u64, u32)>| {
        let l = ExtentList {
            extents: extents
                .into_iter()
                .map(|(offset, length)| Extent {
                    offset,
                    length,
                    id: data,
                })
                .collect(),
        };
        w.store(BlobType::ExtentList, &l.encode().unwrap()).unwrap()
    };
    let a = list(vec![(0, 4096), (8192, 4096)]);
    let overlapping = list(vec![(4096, 8192)]); // 4096..12288 overlaps 8192 of `a`
    let past_end = list(vec![(1 << 20, 4096)]);
    let wrong_length = list(vec![(16384, 8192)]); // the blob holds 4096
    w.finish().await.unwrap();
    guard.end().await.unwrap();
    let cases = [
        (
            "overlap across lists",
            vec![a, overlapping],
            1 << 20,
            "overlaps",
        ),
        (
            "past the end",
            vec![past_end],
            1 << 20,
            "past the volume's end",
        ),
        ("wrong length", vec![wrong_length], 1 << 20, "says"),
    ];
    for (what, lists, size, needle) in cases {
        let mut s = Snapshot::new(SnapshotRoot::Volume(Volume {
            size,
            extent_lists: lists,
        }));
        s.host = "test-host".into();
        let out = dir.path().join(what.replace(' ', "-"));
        let e = idx
            .restore_volume(&s, &VolumeRestoreOptions::new(&out), Arc::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{what}: {e}");
        if needle != "says" {
            assert!(!out.exists(), "{what}: nothing written before the check");
        }
    }
}
