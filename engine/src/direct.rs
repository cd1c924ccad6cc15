//! Restored file content written past the page cache (`O_DIRECT`); the bounce buffer
//! also serves the pack writer's direct writes (`store`).
//!
//! Onto a disk, most of a restore's kernel time was the page cache: a page allocated,
//! zeroed where a write covers part of it, and filled for every byte restored, then
//! written back by the kernel's flusher (ARCHITECTURE.md, "restore", has the profile).
//! Files of [`DIRECT_MIN`] bytes and more are written with direct I/O instead: from a
//! buffer of the worker's, reused, straight to the device. The page cache of the machine
//! (a Kubernetes node's, say) is also left to its other users.
//!
//! Direct I/O wants the memory, the file offset and the length aligned to the device's
//! block, while content-defined chunks end anywhere. The whole blocks inside a chunk are
//! written at once (through an aligned bounce buffer); a block shared by two chunks is
//! assembled from both in the file's [`Edges`] and written when complete. The last block
//! is written whole, padded with zeros, and the file cut to its size at the end, so all
//! of its content is on the device when its modification time says it is complete.
//!
//! A file system that refuses direct I/O (`EINVAL` from `fcntl`) gets ordinary writes;
//! so does a file whose direct write is refused with `EINVAL`, or that has too many
//! blocks waiting ([`EDGES_MAX`]): from then on, all of it.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Files at least this large are written with direct I/O. Below it a file is a few
/// pages, and a direct write's wait for the device costs more than the pages.
pub(crate) const DIRECT_MIN: u64 = 256 << 10;
/// The alignment used for everything: the block of any disk (512 or 4096 bytes).
const BLOCK: u64 = 4096;
/// Bytes per direct write: large enough for any device, small enough that the workers'
/// bounce buffers stay a few MiB in all.
const BOUNCE_SIZE: usize = 1 << 20;

thread_local! {
    /// Each worker's aligned bounce buffer (over-allocated by a block, used from its
    /// first aligned byte): reused, so its pages are never new.
    static BOUNCE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Whether direct I/O is worth trying under `dir`: not on tmpfs or ramfs, whose pages are
/// the storage itself.
pub(crate) fn worth_it(dir: impl std::os::fd::AsFd) -> bool {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, fstatfs};
    // linux/magic.h; nix has no name for it.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    fstatfs(dir).is_ok_and(|s| ![TMPFS_MAGIC, RAMFS_MAGIC].contains(&s.filesystem_type()))
}

/// Turn direct I/O on or off for an open file. `false`: the file system refuses it.
pub(crate) fn set(f: &std::fs::File, on: bool) -> std::io::Result<bool> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    let want = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    match fcntl(f, FcntlArg::F_SETFL(want)) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EINVAL) if on => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Blocks waiting for their other part, per file, before the file goes over to ordinary
/// writes: 16 MiB. Chunks of a file mostly sit in order in one pack, so a block waits
/// only until the next chunk; a file whose chunks are scattered over many packs (an image
/// backed up incrementally) could otherwise hold a block per chunk.
const EDGES_MAX: usize = 4096;

/// A block being assembled: its bytes, how many are in, and which ranges.
struct Partial {
    buf: Box<[u8; BLOCK as usize]>,
    filled: usize,
    ranges: Vec<(usize, usize)>,
}

/// One file written with direct I/O: its partial blocks being assembled, and whether it
/// went over to ordinary writes.
#[derive(Default)]
pub(crate) struct Edges {
    partial: Mutex<HashMap<u64, Partial>>,
    buffered: AtomicBool,
}

/// What became of a piece given to [`Edges::add`].
enum Added {
    /// Waiting for the rest of its block.
    Waiting,
    /// Its block is complete.
    Complete(Box<[u8; BLOCK as usize]>),
    /// The file is written through the page cache now: write the piece as it is.
    Buffered,
}

impl Edges {
    /// Whether this file is written through the page cache after all.
    pub(crate) fn buffered(&self) -> bool {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Add `data` at `offset` within block `block` (`need` bytes of it are inside the
    /// file).
    fn add(
        &self,
        f: &std::fs::File,
        block: u64,
        offset: usize,
        data: &[u8],
        need: usize,
    ) -> std::io::Result<Added> {
        let mut partial = self.partial.lock().expect("lock");
        if self.buffered() {
            return Ok(Added::Buffered);
        }
        if !partial.contains_key(&block) && partial.len() >= EDGES_MAX {
            Self::flush(&self.buffered, &mut partial, f)?;
            return Ok(Added::Buffered);
        }
        let slot = partial.entry(block).or_insert_with(|| Partial {
            buf: Box::new([0; BLOCK as usize]),
            filled: 0,
            ranges: Vec::new(),
        });
        slot.buf[offset..offset + data.len()].copy_from_slice(data);
        slot.filled += data.len();
        slot.ranges.push((offset, offset + data.len()));
        Ok(if slot.filled >= need {
            Added::Complete(partial.remove(&block).expect("present").buf)
        } else {
            Added::Waiting
        })
    }

    /// Go over to ordinary writes: what waits is written as far as it came (only the
    /// ranges that came, so nothing another worker writes is overwritten), and every
    /// later piece is written at once.
    pub(crate) fn to_buffered(&self, f: &std::fs::File) -> std::io::Result<()> {
        let mut partial = self.partial.lock().expect("lock");
        Self::flush(&self.buffered, &mut partial, f)
    }

    fn flush(
        buffered: &AtomicBool,
        partial: &mut HashMap<u64, Partial>,
        f: &std::fs::File,
    ) -> std::io::Result<()> {
        buffered.store(true, Ordering::Relaxed);
        set(f, false)?;
        for (block, p) in partial.drain() {
            for (from, to) in p.ranges {
                f.write_all_at(&p.buf[from..to], block * BLOCK + from as u64)?;
            }
        }
        Ok(())
    }

    /// Finish a file all of whose chunks were written: blocks that still wait (a damaged
    /// file's, next to a chunk that never came) are written as far as they came, and the
    /// padded last block is cut back to `size`.
    pub(crate) fn finish(&self, f: &std::fs::File, size: u64) -> std::io::Result<()> {
        self.drain(f)?;
        f.set_len(size)
    }

    /// [`Edges::finish`] without the cut, for a block device (which cannot be cut: a
    /// volume restored onto one with direct I/O is whole blocks, nothing padded).
    pub(crate) fn drain(&self, f: &std::fs::File) -> std::io::Result<()> {
        if !self.partial.lock().expect("lock").is_empty() {
            self.to_buffered(f)?;
        }
        Ok(())
    }
}

/// Write `data` at `offset` of a file of `size` bytes, open with `O_DIRECT` (its file
/// was sized to `size` first). Nothing two chunks share is written before both are in;
/// the last block goes out padded with zeros, so the file must be cut to `size` when it
/// is complete. `sparse`: all-zero blocks are left as holes.
pub(crate) fn write(
    f: &std::fs::File,
    edges: &Edges,
    data: &[u8],
    offset: u64,
    size: u64,
    sparse: bool,
) -> std::io::Result<()> {
    let end = offset + data.len() as u64;
    // Whole blocks: [inner, outer).
    let inner = offset.next_multiple_of(BLOCK).min(end);
    let outer = (end / BLOCK * BLOCK).max(inner);
    let piece = |from: u64, to: u64| -> std::io::Result<()> {
        let block = from / BLOCK;
        // Saturating: chunks that hold more than the recorded size (a damaged snapshot,
        // reported by the caller) must not panic here.
        let need = size.saturating_sub(block * BLOCK).min(BLOCK) as usize;
        let bytes = &data[(from - offset) as usize..(to - offset) as usize];
        match edges.add(f, block, (from - block * BLOCK) as usize, bytes, need)? {
            Added::Complete(done) => whole(f, edges, &done[..], block * BLOCK, sparse),
            Added::Buffered => {
                set(f, false)?;
                plain(f, bytes, from, sparse)
            }
            Added::Waiting => Ok(()),
        }
    };
    if offset < inner {
        piece(offset, inner)?;
    }
    if inner < outer {
        whole(
            f,
            edges,
            &data[(inner - offset) as usize..(outer - offset) as usize],
            inner,
            sparse,
        )?;
    }
    if outer < end {
        piece(outer, end)?;
    }
    Ok(())
}

/// Whole blocks at an aligned offset, through the bounce buffer; zero blocks skipped
/// when `sparse`. An `EINVAL` (an alignment this device does not take) turns the file to
/// ordinary writes.
fn whole(
    f: &std::fs::File,
    edges: &Edges,
    data: &[u8],
    offset: u64,
    sparse: bool,
) -> std::io::Result<()> {
    let b = BLOCK as usize;
    let mut i = 0;
    while i < data.len() {
        let mut j = data.len();
        if sparse {
            while i < data.len() && data[i..i + b].iter().all(|x| *x == 0) {
                i += b;
            }
            j = i;
            while j < data.len() && data[j..j + b].iter().any(|x| *x != 0) {
                j += b;
            }
        }
        if i < j && edges.buffered() {
            set(f, false)?;
            f.write_all_at(&data[i..j], offset + i as u64)?;
        } else if i < j {
            bounced(f, edges, &data[i..j], offset + i as u64)?;
        }
        i = j;
    }
    Ok(())
}

/// Write whole blocks at an aligned offset of a file open with `O_DIRECT`, through the
/// worker's aligned bounce buffer, a buffer's worth at a time. Returns how far it got
/// with the error, if any.
pub(crate) fn write_aligned(
    f: &std::fs::File,
    data: &[u8],
    at: u64,
) -> (usize, std::io::Result<()>) {
    let b = BLOCK as usize;
    let mut buf = BOUNCE.take();
    if buf.len() < BOUNCE_SIZE + b {
        buf = vec![0; BOUNCE_SIZE + b];
    }
    let start = buf.as_ptr().align_offset(b);
    let mut done = 0;
    let mut r = Ok(());
    while done < data.len() && r.is_ok() {
        let n = (data.len() - done).min(BOUNCE_SIZE);
        buf[start..start + n].copy_from_slice(&data[done..done + n]);
        r = f.write_all_at(&buf[start..start + n], at + done as u64);
        if r.is_ok() {
            done += n;
        }
    }
    BOUNCE.set(buf);
    (done, r)
}

/// [`write_aligned`], turning the file to ordinary writes on `EINVAL`.
fn bounced(f: &std::fs::File, edges: &Edges, run: &[u8], at: u64) -> std::io::Result<()> {
    match write_aligned(f, run, at) {
        (done, Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
            edges.to_buffered(f)?;
            f.write_all_at(&run[done..], at + done as u64)
        }
        (_, r) => r,
    }
}

/// An ordinary write; all-zero blocks (aligned to the file) left out when `sparse`.
fn plain(f: &std::fs::File, data: &[u8], offset: u64, sparse: bool) -> std::io::Result<()> {
    if sparse {
        crate::restore::write_sparse(f, data, offset)
    } else {
        f.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file written chunk by chunk (cut at `cuts`) in the order the keys of `order`
    /// give, through [`write`], then cut to its size as the restore does; returns what
    /// reads back and whether blocks were still waiting.
    fn written(content: &[u8], cuts: &[usize], order: &[usize], sparse: bool) -> (Vec<u8>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(content.len() as u64).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        if worth_it(&d) {
            assert!(set(&f, true).unwrap(), "direct I/O refused on a disk");
        }
        let edges = Edges::default();
        let mut bounds = vec![0];
        bounds.extend(
            cuts.iter()
                .copied()
                .filter(|c| *c > 0 && *c < content.len()),
        );
        bounds.push(content.len());
        bounds.sort();
        bounds.dedup();
        let chunks: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        let mut idx: Vec<usize> = (0..chunks.len()).collect();
        idx.sort_by_key(|i| order.get(*i).copied().unwrap_or(*i));
        for i in idx {
            let (a, b) = chunks[i];
            write(
                &f,
                &edges,
                &content[a..b],
                a as u64,
                content.len() as u64,
                sparse,
            )
            .unwrap();
        }
        let waiting = !edges.partial.lock().unwrap().is_empty();
        f.set_len(content.len() as u64).unwrap();
        drop(f);
        (std::fs::read(&path).unwrap(), waiting)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_in_any_order_make_the_file(
            size in 0usize..40_000,
            cuts in proptest::collection::vec(0usize..40_000, 0..12),
            order in proptest::collection::vec(0usize..100, 0..14),
            zeros in proptest::collection::vec((0usize..40_000, 0usize..9000), 0..4),
            sparse: bool,
        ) {
            let mut content: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8 | 1).collect();
            for (at, n) in zeros {
                let at = at.min(size);
                let end = (at + n).min(size);
                content[at..end].fill(0);
            }
            prop_assert_eq!(written(&content, &cuts, &order, sparse), (content, false));
        }
    }

    #[test]
    fn one_chunk_inside_one_block_and_a_file_ending_mid_block() {
        let content: Vec<u8> = (0..10_000).map(|i| (i % 251) as u8).collect();
        let cuts = [100, 200, 4096, 8191, 8192, 9000];
        assert_eq!(
            written(&content, &cuts, &[5, 4, 3, 2, 1, 0, 6], false),
            (content.clone(), false)
        );
        assert_eq!(written(&content, &[], &[], true), (content, false));
    }

    /// Every other chunk first: each leaves two blocks waiting, more than [`EDGES_MAX`]
    /// in all, so the file goes over to ordinary writes half-way and still comes out whole.
    #[test]
    fn too_many_waiting_blocks_turn_the_file_to_ordinary_writes() {
        let n = EDGES_MAX + 100;
        let content: Vec<u8> = (0..n * 5000).map(|i| (i % 253) as u8 | 1).collect();
        let cuts: Vec<usize> = (1..n).map(|i| i * 5000).collect();
        let order: Vec<usize> = (0..n).map(|i| (i % 2) * n + i).collect();
        assert_eq!(written(&content, &cuts, &order, false), (content, false));
    }
}
