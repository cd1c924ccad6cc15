//! Volume snapshots through the `arca` binary on real loop devices: an ext4 file system
//! backed up as a block volume, changed in place, backed up again (only the change is
//! stored), restored onto another loop device (fsck clean, same files), and the errors a
//! user meets (a target too small, an image that exists). Needs root and loop devices;
//! skipped otherwise, unless ARCA_REQUIRE_LOOP is set.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The proof on real loop devices: ext4 on 1 GiB with 300 MiB of files; 1 % of it
/// rewritten in place stores about 1 %; restored over old data on another device, the file
/// system checks clean and holds the same files; wrong targets are refused untouched.
#[test]
fn an_ext4_volume_on_loop_devices_backs_up_incrementally_and_restores() {
    if !loops_usable() {
        return;
    }
    let env = Env::new();
    env.init();
    let src = Loop::new(&env.path("src.img"), 1024 * MIB);
    sh("mkfs.ext4", &["-q", "-F", &src.dev]);
    let mnt = env.path("mnt");
    {
        let _m = Mount::new(&src.dev, &mnt, false);
        for i in 0..300u64 {
            std::fs::write(mnt.join(format!("f{i:03}")), noise(i, 1 << 20)).unwrap();
        }
        std::fs::create_dir(mnt.join("dir")).unwrap();
        std::fs::write(mnt.join("dir/text"), "hello\n".repeat(100_000)).unwrap();
        sh("sync", &[]);
    }
    let first = env.json(&["snapshot", "create", "--block", &src.dev]);
    assert_eq!(first["snapshot"]["volume_size"], 1024 * MIB);
    let data = first["snapshot"]["summary"]["bytes_processed"]
        .as_u64()
        .unwrap();
    assert!(
        (300 * MIB..400 * MIB).contains(&data),
        "the files and the file system's metadata; its zeros are not stored: {data}"
    );

    // 1 % of the volume rewritten in place: ten of the 1 MiB files and a few bytes of text,
    // through the file system.
    {
        let _m = Mount::new(&src.dev, &mnt, false);
        for i in (0..300u64).step_by(30).take(10) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(mnt.join(format!("f{i:03}")))
                .unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &noise(1000 + i, 1 << 20), 0).unwrap();
            f.sync_all().unwrap();
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("dir/text"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"HELLO", 300_000).unwrap();
        sh("sync", &[]);
    }
    let second = env.json(&["snapshot", "create", "--block", &src.dev]);
    let added = second["snapshot"]["summary"]["bytes_added"]
        .as_u64()
        .unwrap();
    assert_eq!(second["snapshot"]["parent"], first["snapshot"]["id"]);
    eprintln!("first backup: {data} bytes of data; after 10 MiB rewritten: {added} bytes added");
    assert!(
        (10 * MIB..(1024 * MIB) * 3 / 200).contains(&added),
        "about 1 % of the volume: the change and the file system's metadata: {added} bytes"
    );

    // Onto another loop device, full of old data (the gaps must be zeroed): the same file
    // system, checked and compared. Writing over a device needs saying so.
    let dst_img = env.path("dst.img");
    let dst = Loop::new(&dst_img, 1100 * MIB);
    // Old data (not zeros), quickly: a pattern, not noise.
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dst_img)
            .unwrap();
        let pattern = vec![0xa5u8; 100 * MIB as usize];
        for i in 0..11 {
            std::os::unix::fs::FileExt::write_all_at(&f, &pattern, i * 100 * MIB).unwrap();
        }
        f.sync_all().unwrap();
    }
    let id = second["snapshot"]["id"].as_str().unwrap();
    let out = env.run(&["snapshot", "restore", id, "--target", &dst.dev]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--existing overwrite"));
    let r = env.json(&[
        "snapshot",
        "restore",
        id,
        "--target",
        &dst.dev,
        "--existing",
        "overwrite",
    ]);
    // A loop device takes direct I/O: written past the page cache, several at once.
    assert_eq!(r["direct_io"], true, "{r}");
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

    // A device too small is refused before anything is written; a mounted one is refused.
    let small_img = env.path("small.img");
    let small = Loop::new(&small_img, 128 * MIB);
    std::fs::write(&small_img, vec![0x5au8; 128 * MIB as usize]).unwrap();
    let out = env.run(&[
        "snapshot",
        "restore",
        id,
        "--target",
        &small.dev,
        "--existing",
        "overwrite",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least that large"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(
        std::fs::read(&small_img)
            .unwrap()
            .iter()
            .all(|&b| b == 0x5a),
        "untouched"
    );
    {
        let _m = Mount::new(&src.dev, &mnt, true);
        let out = env.run(&[
            "snapshot",
            "restore",
            id,
            "--target",
            &src.dev,
            "--existing",
            "overwrite",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("in use"),
            "a mounted device is never written: {err}"
        );
    }
    // A device path that does not exist does not become a file under /dev.
    let out = env.run(&[
        "snapshot",
        "restore",
        id,
        "--target",
        "/dev/arca-no-such-disk",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such device"));
    assert!(!Path::new("/dev/arca-no-such-disk").exists());

    // Into an image file: sparse, and not over an existing file unless asked.
    let img = env.path("restored.img");
    env.ok(&["snapshot", "restore", id, "--target", img.to_str().unwrap()]);
    assert!(
        allocated(&img) < data + 8 * MIB,
        "sparse: {} allocated for {data} bytes of data",
        allocated(&img)
    );
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

/// A 10 GiB sparse image holding 100 MiB costs about 100 MiB and restores sparse; nothing
/// of its holes is read.
#[test]
fn a_sparse_ten_gib_image_costs_its_data() {
    let env = Env::new();
    env.init();
    let img = env.path("big.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(10 << 30).unwrap();
    for i in 0..10u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &noise(i, 10 << 20), i * (1 << 30)).unwrap();
    }
    f.sync_all().unwrap();
    let s = env.json(&["snapshot", "create", "--block", img.to_str().unwrap()]);
    let m = &s["snapshot"]["summary"];
    assert_eq!(s["snapshot"]["volume_size"], 10u64 << 30);
    assert_eq!(m["bytes_processed"], 100u64 << 20);
    assert!(m["bytes_stored"].as_u64().unwrap() < 102 << 20, "{m}");
    let ls = env.ok(&["snapshot", "ls", s["snapshot"]["id"].as_str().unwrap()]);
    assert!(ls.contains("block volume of 10.0 GiB"), "{ls}");
    let list = env.ok(&["snapshot", "list"]);
    assert!(list.contains("volume"), "{list}");
    let stats = env.json(&["snapshot", "stats"]);
    assert_eq!(stats["logical_bytes"], 100u64 << 20, "{stats}");
    assert_eq!(stats["files"], 1);
    let out = env.path("big-restored.img");
    env.ok(&[
        "snapshot",
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 10 << 30);
    assert!(allocated(&out) < 110 << 20, "sparse: {}", allocated(&out));
    for i in 0..10u64 {
        let mut buf = vec![0u8; 10 << 20];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&out).unwrap(),
            &mut buf,
            i * (1 << 30),
        )
        .unwrap();
        assert!(buf == noise(i, 10 << 20), "region {i}");
    }
}

/// `snapshot create --block` of an image, uncompressed (random data would not shrink),
/// as `--json` reports it.
fn block_snapshot(env: &Env, img: &Path) -> serde_json::Value {
    env.json(&[
        "snapshot",
        "create",
        "--block",
        img.to_str().unwrap(),
        "--compression",
        "none",
    ])
}

/// kill -9 in the middle of a volume backup: the repository checks clean, and the next
/// run reuses what the first one had indexed.
#[test]
fn kill_9_during_a_volume_backup_then_a_new_run() {
    let env = Env::new();
    env.init();
    let img = env.path("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    for i in 0..48u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, &noise(500 + i, 8 << 20), i * (8 << 20))
            .unwrap();
    }
    f.sync_all().unwrap();
    let total = 48u64 * (8 << 20);
    let index_dir = Path::new(&env.repo).join("index");
    let mut child = env
        .cmd()
        .args([
            "snapshot",
            "create",
            "--block",
            img.to_str().unwrap(),
            "--checkpoint-interval",
            "1s",
            "--compression",
            "none",
        ])
        // Held at its first stored checkpoint: a fast machine cannot finish first.
        .env("ARCA_TEST_ENGINE_PAUSE", "writer:index-written")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let indexed = || {
        std::fs::read_dir(&index_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()).any(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                })
            })
            .unwrap_or(false)
    };
    while !indexed() && start.elapsed() < Duration::from_secs(120) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed; make the image larger"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    let check = env.json(&["repo", "check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["snapshots"], 0, "no manifest from a killed backup");
    let s = block_snapshot(&env, &img);
    let added = s["snapshot"]["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added < total,
        "what the killed run indexed is reused: {added} of {total}"
    );
    let out = env.path("out.img");
    env.ok(&[
        "snapshot",
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&img).unwrap());
}

/// kill -9 in the middle of a volume restore into an image on a disk (direct I/O where
/// the file system takes it): what the killed run left, restored over again (`--existing
/// overwrite`), comes back identical to the source, holes included.
#[test]
fn kill_9_during_a_volume_restore_then_again() {
    let env = Env::new();
    env.init();
    const REGION: u64 = 8 << 20;
    let regions = 64u64;
    // Three regions of data, then a hole, over and over.
    let has_data = |i: u64| i % 4 != 3;
    let img = env.path("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(regions * REGION).unwrap();
    for i in (0..regions).filter(|&i| has_data(i)) {
        std::os::unix::fs::FileExt::write_all_at(&f, &noise(900 + i, REGION as usize), i * REGION)
            .unwrap();
    }
    f.sync_all().unwrap();
    block_snapshot(&env, &img);
    let out = env.path("restored.img");
    let restore = |existing: bool| {
        let mut c = env.cmd();
        c.args([
            "snapshot",
            "restore",
            "latest",
            "--target",
            out.to_str().unwrap(),
        ]);
        if existing {
            c.args(["--existing", "overwrite"]);
        }
        c
    };
    // Held for good once one range is written (the engine's pause point): a fast machine
    // cannot finish before the kill.
    let mut child = restore(false)
        .env("ARCA_TEST_ENGINE_PAUSE", "volume:range-written")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once some region is written whole and others are not yet: looked for one
    // region a poll, in turn.
    let region_of = |file: &Path, i: u64| -> Option<Vec<u8>> {
        let f = std::fs::File::open(file).ok()?;
        let mut buf = vec![0u8; REGION as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, i * REGION).ok()?;
        Some(buf)
    };
    let start = Instant::now();
    let mut i = 0;
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore finished before it could be killed; make the image larger"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no region written"
        );
        if has_data(i) && region_of(&out, i).is_some_and(|r| r == noise(900 + i, REGION as usize)) {
            break;
        }
        i = (i + 1) % regions;
    }
    let _ = child.kill(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    let same = |i: u64| {
        let want = if has_data(i) {
            noise(900 + i, REGION as usize)
        } else {
            vec![0u8; REGION as usize]
        };
        region_of(&out, i).is_some_and(|r| r == want)
    };
    let whole = (0..regions).filter(|&i| same(i)).count();
    assert!(
        (whole as u64) < regions,
        "the killed restore had written everything already"
    );

    // Again, over what it left: a new file is refused, so the user says overwrite.
    let out1 = restore(false).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out1.stderr).contains("--existing overwrite"),
        "{}",
        String::from_utf8_lossy(&out1.stderr)
    );
    let again = restore(true).arg("--json").output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    for i in 0..regions {
        assert!(same(i), "region {i} differs after the second restore");
    }
    assert_eq!(std::fs::metadata(&out).unwrap().len(), regions * REGION);
    // The holes stay holes: three regions in four hold data.
    let data = regions * 3 / 4 * REGION;
    assert!(
        allocated(&out) < data + (8 << 20),
        "sparse: {} allocated for {data} of data",
        allocated(&out)
    );
}
