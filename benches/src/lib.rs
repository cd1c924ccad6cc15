//! `arca-benches`: data for the benchmarks. The criterion benchmarks are under `benches/`
//! (one per pipeline stage, and end to end); the side-by-side comparison with restic and
//! rustic is `scripts/compare.sh`, which generates its data with the `arca-bench-data`
//! binary built from this library. Nothing here is part of the product.
//!
//! Generated data is deterministic (a seed), and mixes what real trees hold: text-like
//! runs that compress about 3:1, and random runs that do not compress at all.

use std::io::Write;
use std::path::Path;

/// A small, fast, deterministic generator (SplitMix64): benchmark data needs speed and
/// repeatability, not statistical quality.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const WORDS: [&str; 24] = [
    "backup",
    "restore",
    "chunk",
    "pack",
    "index",
    "snapshot",
    "tree",
    "volume",
    "cluster",
    "namespace",
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "for",
    "kubernetes",
    "repository",
    "deduplicate",
    "compress",
    "encrypt",
    "object",
];

/// `len` bytes: half text-like (compressible), half random (not), in runs of 4-64 KiB.
pub fn mixed(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = (4096 + rng.below(60 * 1024) as usize).min(len - out.len());
        if rng.below(2) == 0 {
            let start = out.len();
            while out.len() - start < run {
                out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
            }
            out.truncate(start + run);
        } else {
            let start = out.len();
            out.resize(start + run, 0);
            for c in out[start..].chunks_mut(8) {
                let v = rng.next_u64().to_le_bytes();
                c.copy_from_slice(&v[..c.len()]);
            }
        }
    }
    out
}

/// Shapes of generated trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A few large files (`total / 64 MiB` of them).
    Large,
    /// Many small files of at most 4 KiB, 1000 per directory.
    Small,
    /// A mix: a few large files, many small ones, medium ones between.
    Mixed,
}

impl Shape {
    /// Parse `large`, `small` or `mixed`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "large" => Some(Shape::Large),
            "small" => Some(Shape::Small),
            "mixed" => Some(Shape::Mixed),
            _ => None,
        }
    }
}

fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::File::create(path)?.write_all(data)
}

/// Generate a tree under `dir`: for `Small`, `count` files; else about `bytes` bytes.
/// Returns (files, bytes) written.
pub fn generate(
    dir: &Path,
    shape: Shape,
    bytes: u64,
    count: u64,
    seed: u64,
) -> std::io::Result<(u64, u64)> {
    let mut rng = Rng::new(seed);
    let (mut files, mut total) = (0u64, 0u64);
    let mut put = |p: &Path, d: &[u8]| -> std::io::Result<()> {
        write(p, d)?;
        files += 1;
        total += d.len() as u64;
        Ok(())
    };
    match shape {
        Shape::Large => {
            let n = (bytes / (64 << 20)).max(1);
            for i in 0..n {
                let d = mixed(&mut rng, (bytes / n) as usize);
                put(&dir.join(format!("large-{i:03}.bin")), &d)?;
            }
        }
        Shape::Small => {
            for i in 0..count {
                let len = 1 + rng.below(4096) as usize;
                let d = mixed(&mut rng, len);
                put(&dir.join(format!("d{:04}/f{i:07}.txt", i / 1000)), &d)?;
            }
        }
        Shape::Mixed => {
            let large = bytes / 2;
            let d = mixed(&mut rng, large as usize);
            put(&dir.join("big/archive.bin"), &d)?;
            let mut medium = 0;
            let mut i = 0;
            while medium < bytes / 2 - bytes / 8 {
                let len = 64 * 1024 + rng.below(4 << 20) as usize;
                let d = mixed(&mut rng, len);
                put(&dir.join(format!("medium/m{:03}/f{i:05}.dat", i / 100)), &d)?;
                medium += len as u64;
                i += 1;
            }
            let small = (bytes / 8 / 2048).max(1);
            for j in 0..small {
                let len = 1 + rng.below(4096) as usize;
                let d = mixed(&mut rng, len);
                put(&dir.join(format!("small/s{:03}/f{j:06}.txt", j / 1000)), &d)?;
            }
        }
    }
    Ok((files, total))
}

/// A small change: every `1/every`-th file (by sorted path) gets `insert` bytes inserted in
/// its middle, and one new file appears. Returns the files changed.
pub fn mutate(dir: &Path, every: usize, insert: usize, seed: u64) -> std::io::Result<usize> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                paths.push(e.path());
            }
        }
    }
    paths.sort();
    let mut rng = Rng::new(seed);
    let mut changed = 0;
    for p in paths.iter().step_by(every.max(1)) {
        let mut data = std::fs::read(p)?;
        let at = data.len() / 2;
        let add = mixed(&mut rng, insert);
        data.splice(at..at, add);
        std::fs::write(p, data)?;
        changed += 1;
    }
    write(
        &dir.join("new-file-after-change.txt"),
        &mixed(&mut rng, 10_000),
    )?;
    Ok(changed)
}

/// A disk image of `bytes` bytes as block volumes hold them: regions of 256 KiB to 8 MiB
/// that are zeros (about 30 %, written out, not holes: a device has no holes), text-like or
/// random, in a deterministic order. Returns the bytes that are not zeros.
pub fn disk_image(path: &Path, bytes: u64, seed: u64) -> std::io::Result<u64> {
    let mut rng = Rng::new(seed);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut done, mut data) = (0u64, 0u64);
    let zeros = vec![0u8; 1 << 20];
    while done < bytes {
        let run = ((256 << 10) + rng.below(8 << 20)).min(bytes - done);
        if rng.below(10) < 3 {
            let mut left = run;
            while left > 0 {
                let n = left.min(zeros.len() as u64);
                f.write_all(&zeros[..n as usize])?;
                left -= n;
            }
        } else {
            let mut left = run;
            while left > 0 {
                let n = left.min(1 << 20);
                f.write_all(&mixed(&mut rng, n as usize))?;
                left -= n;
            }
            data += run;
        }
        done += run;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(data)
}

/// In-place writes as a file system makes them: runs of 4 KiB to 64 KiB at 4 KiB-aligned
/// random offsets (not aligned to any chunk size), until `percent` % of the file's bytes
/// were written. The file keeps its size. Returns the bytes written.
pub fn scribble(path: &Path, percent: u64, seed: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = f.metadata()?.len();
    let budget = size * percent / 100;
    let mut rng = Rng::new(seed);
    let mut written = 0;
    while written < budget && size >= 64 << 10 {
        let len = 4096 * (1 + rng.below(16));
        let at = 4096 * rng.below((size - len) / 4096 + 1);
        f.write_all_at(&mixed(&mut rng, len as usize), at)?;
        written += len;
    }
    f.sync_all()?;
    Ok(written)
}

/// The disk's own limit for a restore: `src` copied to `dst` (new) by a plain parallel
/// copy, each file as a restore makes it (create, write, owner, mode, times; the
/// directories' metadata at the end). The tree is listed first, then `threads` threads
/// take files in turn. Returns the files and bytes copied.
pub fn copy_tree(src: &Path, dst: &Path, threads: usize) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut dirs = vec![(src.to_path_buf(), dst.to_path_buf())];
    let mut files = Vec::new();
    let mut i = 0;
    std::fs::create_dir(dst)?;
    while i < dirs.len() {
        let (s, d) = dirs[i].clone();
        i += 1;
        for e in std::fs::read_dir(&s)? {
            let e = e?;
            let (sp, dp) = (e.path(), d.join(e.file_name()));
            let t = e.file_type()?;
            if t.is_dir() {
                std::fs::create_dir(&dp)?;
                dirs.push((sp, dp));
            } else if t.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&sp)?, &dp)?;
            } else if t.is_file() {
                files.push((sp, dp));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let meta = |f: &std::fs::File, m: &std::fs::Metadata| -> std::io::Result<()> {
        std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid()))?;
        f.set_permissions(m.permissions())?;
        f.set_times(std::fs::FileTimes::new().set_modified(m.modified()?))
    };
    std::thread::scope(|s| -> std::io::Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some((sp, dp)) = files.get(n) else {
                            return Ok(());
                        };
                        let data = std::fs::read(sp)?;
                        let m = std::fs::symlink_metadata(sp)?;
                        let mut f = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(dp)?;
                        f.write_all(&data)?;
                        meta(&f, &m)?;
                        bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("copy worker panicked")?;
        }
        Ok(())
    })?;
    for (s, d) in dirs.iter().rev() {
        let m = std::fs::symlink_metadata(s)?;
        meta(&std::fs::File::open(d)?, &m)?;
    }
    Ok((files.len() as u64, bytes.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (f1, n1) = generate(a.path(), Shape::Small, 0, 50, 7).unwrap();
        let (f2, n2) = generate(b.path(), Shape::Small, 0, 50, 7).unwrap();
        assert_eq!((f1, n1), (f2, n2));
        assert_eq!(f1, 50);
        assert!(n1 <= 50 * 4096);
        let (_, n) = generate(a.path(), Shape::Mixed, 8 << 20, 0, 1).unwrap();
        assert!((7 << 20..=13 << 20).contains(&n), "{n}");
        assert!(mutate(a.path(), 10, 100, 3).unwrap() > 0);
    }

    #[test]
    fn a_disk_image_mixes_zeros_and_data_and_scribbling_keeps_its_size() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        let data = disk_image(&img, 64 << 20, 1).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len(), 64 << 20);
        let zero_mib = bytes
            .chunks(1 << 20)
            .filter(|c| c.iter().all(|&b| b == 0))
            .count();
        assert!((5..=40).contains(&zero_mib), "{zero_mib} MiB of zeros");
        assert!(data < 64 << 20 && data > 24 << 20, "{data}");
        let w = scribble(&img, 1, 5).unwrap();
        assert!(
            ((64 << 20) / 100..(64 << 20) / 100 + (64 << 10)).contains(&w),
            "{w}"
        );
        let after = std::fs::read(&img).unwrap();
        assert_eq!(after.len(), bytes.len());
        let changed = after
            .chunks(4096)
            .zip(bytes.chunks(4096))
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            changed > 0 && changed * 4096 <= w as usize,
            "{changed} pages changed"
        );
    }

    #[test]
    fn mixed_data_is_half_compressible() {
        let mut r = Rng::new(1);
        let d = mixed(&mut r, 4 << 20);
        assert_eq!(d.len(), 4 << 20);
        let text = d.iter().filter(|b| b.is_ascii_lowercase()).count();
        assert!(text > d.len() / 4 && text < d.len() * 3 / 4, "{text}");
    }

    #[test]
    fn copy_tree_makes_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let (files, bytes) = generate(&src, Shape::parse("small").unwrap(), 0, 300, 3).unwrap();
        std::os::unix::fs::symlink("f", src.join("link")).unwrap();
        assert_eq!(copy_tree(&src, &dst, 3).unwrap(), (files, bytes));
        let out = std::process::Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&src)
            .arg(&dst)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("f")
        );
    }
}
