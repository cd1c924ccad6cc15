//! Trees that break backup tools, and comparing trees byte for byte and metadata for
//! metadata. Shared by the CLI's end-to-end tests and the movers' tests (which include this
//! file by path): it needs nothing but the standard library, `hex` and `blake3`.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Deterministic pseudo-random bytes.
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

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// A tree with the cases that break backup tools: odd names, deep paths, a large sparse
/// file, hard links, symlinks, empty files and directories, a fifo, extended attributes,
/// odd permissions and times.
pub fn tricky_tree(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    write(&root.join("plain.txt"), b"hello\n");
    write(&root.join("empty"), b"");
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    write(&root.join("random.bin"), &noise(1, 3 << 20));
    write(&root.join("zeros.bin"), &vec![0u8; 2 << 20]);
    // Names: invalid UTF-8, a newline, spaces, a leading dash, unicode.
    write(
        &root.join(OsStr::from_bytes(b"bad-\xff\xfe-utf8")),
        b"not utf-8 name",
    );
    write(&root.join("new\nline"), b"newline in name");
    write(&root.join(" spaced name "), b"spaces");
    write(&root.join("-dash"), b"dash");
    write(&root.join("ünïcødé-名前"), b"unicode");
    // Deep path.
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep = deep.join(format!("level-{i:02}"));
    }
    write(&deep.join("bottom.txt"), b"deep down");
    // Large sparse file: 256 MiB with three data islands.
    let sparse = root.join("sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(256 << 20).unwrap();
        f.write_all_at(&noise(2, 100_000), 0).unwrap();
        f.write_all_at(&noise(3, 50_000), 100 << 20).unwrap();
        f.write_all_at(b"tail", (256 << 20) - 4).unwrap();
    }
    // Hard links (three names, one inode), symlinks (relative, absolute, dangling).
    write(&root.join("links/original"), &noise(4, 70_000));
    std::fs::hard_link(root.join("links/original"), root.join("links/second")).unwrap();
    std::fs::hard_link(root.join("links/original"), root.join("third-link")).unwrap();
    std::os::unix::fs::symlink("original", root.join("links/rel-symlink")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("links/abs-symlink")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("links/dangling")).unwrap();
    // A fifo.
    nix_mkfifo(&root.join("pipe"));
    // Extended attributes.
    let x = root.join("xattrs.txt");
    write(&x, b"with attributes");
    let _ = set_xattr(&x, "user.comment", b"a comment");
    let _ = set_xattr(&x, "user.binary", &[0, 1, 2, 255]);
    // Odd permissions (setuid, sticky, no-write) and an old mtime.
    let p = root.join("perms");
    write(&p.join("setuid"), b"#!/bin/sh\n");
    std::fs::set_permissions(p.join("setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
    write(&root.join("readonly"), b"ro");
    std::fs::set_permissions(
        root.join("readonly"),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    set_mtime(&root.join("plain.txt"), 1_000_000_000, 123_456_789);
    // A character device (like /dev/null), where we may create one.
    if is_root() {
        let status = Command::new("mknod")
            .arg(root.join("null-device"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn nix_mkfifo(p: &Path) {
    let status = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(status.success());
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let status = Command::new("python3")
        .args([
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))",
        ])
        .arg(p)
        .arg(name)
        .arg(hex::encode(value))
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("setxattr failed"))
    }
}

pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let status = Command::new("python3")
        .args(["-c", "import os,sys; os.utime(sys.argv[1], ns=(int(sys.argv[2]), int(sys.argv[2])), follow_symlinks=False)"])
        .arg(p)
        .arg((secs as i128 * 1_000_000_000 + nanos as i128).to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Extended attributes of every entry under `root` (one Python run for the whole tree),
/// keyed by path relative to `root`.
fn all_xattrs(root: &Path) -> HashMap<Vec<u8>, BTreeMap<String, String>> {
    let script = r#"
import os, sys
root = os.fsencode(sys.argv[1])
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(d, n)
        if os.path.islink(p):
            continue
        try:
            names = os.listxattr(p)
        except OSError:
            continue
        for k in sorted(names):
            print(os.path.relpath(p, root).hex(), k, os.getxattr(p, k).hex())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m: HashMap<Vec<u8>, BTreeMap<String, String>> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut it = line.splitn(3, ' ');
        let (Some(p), Some(k), Some(v)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        m.entry(hex::decode(p).unwrap())
            .or_default()
            .insert(k.to_string(), v.to_string());
    }
    m
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Facts {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Option<[u8; 32]>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<String, String>,
    pub rdev: u64,
}

/// Relative path → facts, and the hard-link groups (each a sorted list of paths).
pub type TreeFacts = (BTreeMap<Vec<u8>, Facts>, Vec<Vec<Vec<u8>>>);

/// Walk a tree: relative path → facts, plus the hard-link groups (by path sets).
pub fn snapshot_of(root: &Path) -> TreeFacts {
    let mut out = BTreeMap::new();
    let mut xattrs = all_xattrs(root);
    let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_file() {
                "file"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "other"
            };
            if ft.is_file() && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let xa = xattrs.remove(&rel).unwrap_or_default();
            let content = ft
                .is_file()
                .then(|| *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes());
            out.insert(
                rel,
                Facts {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: m.uid(),
                    gid: m.gid(),
                    // Directory mtimes of the source change as the test writes into them;
                    // symlink times are compared too.
                    mtime: (m.mtime(), m.mtime_nsec()),
                    size: if ft.is_file() { m.len() } else { 0 },
                    content,
                    target: ft.is_symlink().then(|| {
                        std::fs::read_link(&p)
                            .unwrap()
                            .as_os_str()
                            .as_bytes()
                            .to_vec()
                    }),
                    xattrs: xa,
                    rdev: m.rdev(),
                },
            );
        }
    }
    let mut groups: Vec<Vec<Vec<u8>>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// Assert two trees are the same byte for byte and metadata for metadata.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (fa, ga) = snapshot_of(a);
    let (fb, gb) = snapshot_of(b);
    let ka: Vec<_> = fa
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let kb: Vec<_> = fb
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(ka, kb, "different entries");
    for (k, x) in &fa {
        assert_eq!(
            Some(x),
            fb.get(k),
            "entry {:?} differs",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(ga, gb, "hard-link groups differ");
}

/// Blocks allocated to a file, in bytes.
pub fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Every file under `dir`, sorted.
pub fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
