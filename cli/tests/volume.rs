//! Volume snapshots through the `arca` binary on real loop devices: an ext4 file system
//! backed up as a block volume, changed in place, backed up again (only the change is
//! stored), restored onto another loop device (fsck clean, same files), and the errors a
//! user meets (a target too small, an image that exists). Needs root and loop devices;
//! skipped otherwise, unless ARCA_REQUIRE_LOOP is set.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const MIB: u64 = 1 << 20;

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loop device over an image file, detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(image: &Path, size: u64) -> Self {
        let f = std::fs::File::create(image).unwrap();
        f.set_len(size).unwrap();
        let dev = sh("losetup", &["--find", "--show", image.to_str().unwrap()])
            .trim()
            .to_string();
        Self { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A mount, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(dev: &str, at: &Path, ro: bool) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mut args = vec![dev, at.to_str().unwrap()];
        if ro {
            args.splice(0..0, ["-o", "ro,noload"]);
        }
        sh("mount", &args);
        Self(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn loops_usable() -> bool {
    let ok = is_root()
        && Path::new("/dev/loop-control").exists()
        && Command::new("losetup").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("ARCA_REQUIRE_LOOP").is_none(),
            "ARCA_REQUIRE_LOOP is set, but loop devices are not usable (root and /dev/loop-control needed)"
        );
        eprintln!("no loop devices (needs root): skipped");
    }
    ok
}

#[test]
fn an_ext4_volume_on_loop_devices_backs_up_incrementally_and_restores() {
    if !loops_usable() {
        return;
    }
    let env = Env::new();
    env.init();
    let src = Loop::new(&env.path("src.img"), 256 * MIB);
    sh("mkfs.ext4", &["-q", "-F", &src.dev]);
    let mnt = env.path("mnt");
    {
        let _m = Mount::new(&src.dev, &mnt, false);
        for i in 0..100u64 {
            std::fs::write(mnt.join(format!("f{i:03}")), noise(i, 200 * 1024)).unwrap();
        }
        std::fs::create_dir(mnt.join("dir")).unwrap();
        std::fs::write(mnt.join("dir/text"), "hello\n".repeat(10_000)).unwrap();
        sh("sync", &[]);
    }
    let first = env.json(&["snapshot", "create", "--block", &src.dev]);
    assert_eq!(first["snapshot"]["volume_size"], 256 * MIB);
    let data = first["snapshot"]["summary"]["bytes_processed"]
        .as_u64()
        .unwrap();
    assert!(
        data < 64 * MIB,
        "zeros of the empty file system are not stored: {data}"
    );

    // About 1 % of the volume rewritten in place: one file's content.
    {
        let _m = Mount::new(&src.dev, &mnt, false);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("f050"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &noise(1000, 200 * 1024), 0).unwrap();
        f.sync_all().unwrap();
        sh("sync", &[]);
    }
    let second = env.json(&["snapshot", "create", "--block", &src.dev]);
    let added = second["snapshot"]["summary"]["bytes_added"]
        .as_u64()
        .unwrap();
    assert_eq!(second["snapshot"]["parent"], first["snapshot"]["id"]);
    eprintln!("first backup: {data} bytes of data; after 200 KiB rewritten: {added} bytes added");
    assert!(
        added < 4 * MIB,
        "the change and the file system's metadata, not the volume: {added} bytes"
    );

    // Onto another loop device: the same file system, checked and compared.
    let dst = Loop::new(&env.path("dst.img"), 300 * MIB);
    let id = second["snapshot"]["id"].as_str().unwrap();
    env.ok(&["snapshot", "restore", id, "--target", &dst.dev]);
    sh("e2fsck", &["-fn", &dst.dev]);
    {
        let a = Mount::new(&src.dev, &env.path("a"), true);
        let b = Mount::new(&dst.dev, &env.path("b"), true);
        for f in walk_files(&a.0) {
            let rel = f.strip_prefix(&a.0).unwrap();
            if rel.starts_with("lost+found") {
                continue;
            }
            assert_eq!(
                std::fs::read(&f).unwrap(),
                std::fs::read(b.0.join(rel)).unwrap(),
                "{}",
                rel.display()
            );
        }
    }

    // A device too small is refused before anything is written.
    let small = Loop::new(&env.path("small.img"), 128 * MIB);
    let out = env.run(&["snapshot", "restore", id, "--target", &small.dev]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least that large"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    // Into an image file: sparse, and not over an existing file unless asked.
    let img = env.path("restored.img");
    env.ok(&["snapshot", "restore", id, "--target", img.to_str().unwrap()]);
    assert!(allocated(&img) < 64 * MIB, "sparse: {}", allocated(&img));
    let out = env.run(&["snapshot", "restore", id, "--target", img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--existing overwrite"));
    env.ok(&[
        "snapshot",
        "restore",
        id,
        "--target",
        img.to_str().unwrap(),
        "--existing",
        "overwrite",
    ]);
    sh("e2fsck", &["-fn", img.to_str().unwrap()]);
    env.ok(&["repo", "check", "--read-data"]);
}
