//! A restore cannot be turned against the machine: symlinks at the target are replaced,
//! never followed; file capabilities survive ownership; the top directory comes back with
//! its own metadata; `skip` keeps only identical content; a tar stream never loses its
//! framing.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use arca_engine::{Existing, RestoreOptions, RestoreProgress};
use arca_format::{BlobType, NodeKind, SnapshotId, SnapshotRoot, Tree};
use support::*;

async fn restore_into(
    idx: &arca_engine::Indexed,
    id: &SnapshotId,
    target: &Path,
    existing: Existing,
) -> arca_engine::RestoreReport {
    let s = idx.repo().snapshot(id).await.unwrap();
    let mut o = RestoreOptions::new(target);
    o.existing = existing;
    o.top = s.top.clone();
    idx.restore(&s.root, &o, Arc::new(RestoreProgress::default()))
        .await
        .unwrap()
}

/// Symlinks stand where the snapshot has a file and a directory, pointing outside the
/// target: with `overwrite` (and with the default) the links are replaced, and nothing
/// outside is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_at_the_target_are_replaced_not_followed() {
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("a"), b"snapshot's a").unwrap();
    std::fs::write(src.join("d/x"), b"snapshot's x").unwrap();
    let id = backup(&idx, &src, "v1").await.unwrap();

    for existing in [Existing::Overwrite, Existing::Skip, Existing::SkipSameTime] {
        let outside = dir.path().join(format!("outside-{existing:?}"));
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("file"), b"precious").unwrap();
        std::fs::set_permissions(outside.join("file"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let target = dir.path().join(format!("target-{existing:?}"));
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(outside.join("file"), target.join("a")).unwrap();
        std::os::unix::fs::symlink(outside.join("dir"), target.join("d")).unwrap();

        let r = restore_into(&idx, &id, &target, existing).await;
        assert!(r.errors.is_empty(), "{existing:?}: {:?}", r.errors);
        assert_eq!(std::fs::read(outside.join("file")).unwrap(), b"precious");
        assert_eq!(
            std::fs::metadata(outside.join("file")).unwrap().mode() & 0o777,
            0o640
        );
        assert!(
            std::fs::read_dir(outside.join("dir"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(
            std::fs::symlink_metadata(target.join("a"))
                .unwrap()
                .is_file()
        );
        assert!(
            std::fs::symlink_metadata(target.join("d"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(read_tree(&target), read_tree(&src), "{existing:?}");
    }
}

/// A symlink inside the snapshot is restored as a symlink; nothing is written through
/// it, even when a later entry's path would lead there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_symlink_is_never_written_through() {
    let (_, idx, dir) = memory_repo().await;
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
    std::fs::write(src.join("file"), b"content").unwrap();
    let id = backup(&idx, &src, "v1").await.unwrap();
    let target = dir.path().join("target");
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(std::fs::read_link(target.join("link")).unwrap(), outside);
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
}

/// The backed-up directory's own mode, times and extended attributes come back: a 0700
/// home is 0700 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_directory_keeps_its_metadata() {
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("home");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret"), b"s").unwrap();
    xattr::set(&src, "user.arca-test", b"top").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mtime = filetime_of(&src);
    let id = backup(&idx, &src, "v1").await.unwrap();
    let s = idx.repo().snapshot(&id).await.unwrap();
    assert!(s.top.is_some());

    let target = dir.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        xattr::get(&target, "user.arca-test").unwrap().unwrap(),
        b"top"
    );
    assert_eq!(filetime_of(&target), mtime);
}

fn filetime_of(p: &Path) -> (i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// File capabilities are set after the owner: chown would clear them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_capabilities_survive_ownership() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: capabilities cannot be set; skipped");
        return;
    }
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bin = src.join("ping");
    std::fs::write(&bin, b"#!/bin/true\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // VFS_CAP_REVISION_2, effective, permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    if let Err(e) = xattr::set(&bin, "security.capability", &cap) {
        eprintln!("this file system takes no capabilities ({e}); skipped");
        return;
    }
    let id = backup(&idx, &src, "v1").await.unwrap();
    let target = dir.path().join("target");
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{r:?}");
    assert_eq!(
        xattr::get(target.join("ping"), "security.capability")
            .unwrap()
            .as_deref(),
        Some(&cap[..])
    );
}

/// `skip` keeps a file only when its content is the snapshot's; `skip-mtime` trusts size
/// and modification time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_compares_content_and_skip_mtime_does_not() {
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    write_tree(&src, 1);
    let id = backup(&idx, &src, "v1").await.unwrap();
    let target = dir.path().join("target");
    restore_into(&idx, &id, &target, Existing::Skip).await;
    assert_eq!(read_tree(&target), read_tree(&src));

    // Same size, same mtime, other bytes.
    let f = target.join("shared/s1");
    let m = std::fs::metadata(&f).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    let times = [
        nix::sys::time::TimeSpec::new(m.atime(), m.atime_nsec()),
        nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec()),
    ];
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &f,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();

    let r = restore_into(&idx, &id, &target, Existing::SkipSameTime).await;
    assert_eq!(r.files_restored, 0, "{r:?}");
    assert_ne!(read_tree(&target), read_tree(&src));
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert_eq!(r.files_restored, 1, "{r:?}");
    assert!(r.files_skipped > 0);
    assert_eq!(read_tree(&target), read_tree(&src));

    // Same content, other mode and mtime (a restore killed before it finished a file):
    // kept, and its metadata put right.
    let g = target.join("shared/s2");
    std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&g)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert_eq!(r.files_restored, 0, "{r:?}");
    let (a, b) = (
        std::fs::metadata(src.join("shared/s2")).unwrap(),
        std::fs::metadata(&g).unwrap(),
    );
    assert_eq!(
        (a.mode(), a.mtime(), a.mtime_nsec()),
        (b.mode(), b.mtime(), b.mtime_nsec())
    );
}

/// A file whose chunks do not add up to its recorded size is left out of a tar stream
/// with an error naming it; the stream stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_never_loses_its_framing() {
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a-liar"), noise(1, 300_000)).unwrap();
    std::fs::write(src.join("b-honest"), noise(2, 1000)).unwrap();
    let id = backup(&idx, &src, "v1").await.unwrap();
    let mut s = idx.repo().snapshot(&id).await.unwrap();
    let SnapshotRoot::Tree(root) = s.root else {
        unreachable!()
    };
    // A snapshot whose first file claims more than its chunks hold.
    let mut tree: Tree = idx.read_tree(&root).await.unwrap();
    for n in &mut tree.nodes {
        if n.name == b"a-liar" {
            assert!(matches!(n.kind, NodeKind::File { .. }));
            n.size += 4096;
        }
    }
    let session =
        arca_engine::SessionGuard::start(idx.repo(), arca_format::SessionKind::Backup, &who())
            .await
            .unwrap();
    let w = Arc::new(arca_engine::Writer::new(
        &idx,
        arca_format::Compression::None,
        session.liveness(),
    ));
    let bytes = tree.encode().unwrap();
    let w2 = w.clone();
    let new_root = tokio::task::spawn_blocking(move || w2.store(BlobType::Tree, &bytes).unwrap())
        .await
        .unwrap();
    w.finish().await.unwrap();
    s.root = SnapshotRoot::Tree(new_root);
    s.top = None;
    let bad = idx.repo().write_snapshot(&s).await.unwrap();
    session.end().await.unwrap();
    idx.resync().await.unwrap();

    let s = idx.repo().snapshot(&bad).await.unwrap();
    let (out, problems) = idx.restore_tar(&s.root, "", Vec::new()).await.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("a-liar"), "{problems:?}");
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(&out[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut content).unwrap();
        if name == "b-honest" {
            assert_eq!(content, noise(2, 1000));
        }
        names.push(name);
    }
    assert_eq!(names, ["b-honest"]);
}

/// On a case-folding file system, two names of a snapshot that fold onto each other are
/// not both written into one file: the second is refused and reported. Runs where the
/// kernel offers such a file system (ext4 with casefold); skipped elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_fold_together_are_refused() {
    let Some(mount) = casefold_dir() else {
        eprintln!("no case-folding file system on this kernel (ext4 casefold); skipped");
        return;
    };
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Readme"), b"upper").unwrap();
    std::fs::write(src.join("README"), b"all caps").unwrap();
    let id = backup(&idx, &src, "v1").await.unwrap();
    let target = mount.path.join("d");
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].message.contains("folds onto"), "{r:?}");
}

struct CaseFold {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for CaseFold {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

/// An ext4 image with casefold, loop-mounted, with a case-folding directory `d`.
fn casefold_dir() -> Option<CaseFold> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let img = dir.path().join("cf.img");
    std::fs::File::create(&img).ok()?.set_len(32 << 20).ok()?;
    let ok = |c: &mut std::process::Command| c.status().is_ok_and(|s| s.success());
    if !ok(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-O", "casefold"])
        .arg(&img))
    {
        return None;
    }
    let path = dir.path().join("mnt");
    std::fs::create_dir_all(&path).ok()?;
    if !ok(std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&path)
        .stderr(std::process::Stdio::null()))
    {
        return None;
    }
    let cf = CaseFold { path, _dir: dir };
    std::fs::create_dir_all(cf.path.join("d")).ok()?;
    if !ok(std::process::Command::new("chattr")
        .arg("+F")
        .arg(cf.path.join("d"))
        .stderr(std::process::Stdio::null()))
    {
        return None;
    }
    Some(cf)
}

/// Large files are written past the page cache (direct I/O where the file system takes
/// it): files of many chunks, sizes on and off block boundaries, and a sparse one, come
/// back byte for byte and the sparse one with its holes, with direct I/O on and off; a
/// large file left half-written (an interrupted restore) is rewritten by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_come_back_whole_past_the_page_cache() {
    use std::os::unix::fs::FileExt;
    let (_, idx, dir) = memory_repo().await;
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut seed = 7u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (seed >> 33) as u8
            })
            .collect()
    };
    for (name, size) in [
        ("a", 256 << 10),
        ("b", (3 << 20) + 1),
        ("c", (5 << 20) - 4095),
        ("d", 4 << 20),
        ("e", 300_001),
        ("small", 4000),
    ] {
        std::fs::write(src.join(name), bytes(size)).unwrap();
    }
    // Data, a 3 MiB hole, data ending mid-block, and a trailing hole.
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.write_all_at(&bytes(100_000), 0).unwrap();
    f.write_all_at(&bytes(70_001), 3 << 20).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    let id = backup(&idx, &src, "large").await.unwrap();
    let s = idx.repo().snapshot(&id).await.unwrap();
    for direct in [true, false] {
        let target = dir.path().join(format!("target-{direct}"));
        let mut o = RestoreOptions::new(&target);
        o.direct_io = direct;
        let r = idx
            .restore(&s.root, &o, Arc::new(RestoreProgress::default()))
            .await
            .unwrap();
        assert!(r.errors.is_empty() && r.warnings.is_empty(), "{r:?}");
        assert_eq!(r.files_restored, 7, "{r:?}");
        assert_eq!(read_tree(&target), read_tree(&src), "direct I/O {direct}");
        let allocated = std::fs::metadata(target.join("sparse")).unwrap().blocks() * 512;
        assert!(
            allocated <= 512 << 10,
            "{allocated} bytes allocated for 170 KB of data"
        );
    }

    // Half of a file written, the rest zeros, the mtime never set: rewritten.
    let target = dir.path().join("target-true");
    let c = target.join("c");
    let len = std::fs::metadata(&c).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&c)
        .unwrap()
        .write_all_at(&vec![0; (len / 2) as usize], len / 2)
        .unwrap();
    let r = restore_into(&idx, &id, &target, Existing::Skip).await;
    assert_eq!(r.files_restored, 1, "{r:?}");
    assert_eq!(read_tree(&target), read_tree(&src));
}
