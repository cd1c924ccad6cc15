//! Block volumes (FORMAT.md 13.2): a block device or an image file into a volume snapshot,
//! and a volume snapshot back onto a device or into an image file.
//!
//! Backup reads the source in aligned chunks of a fixed size (a block device is rewritten
//! in place, never shifted, so content-defined boundaries buy nothing and aligned ones
//! keep an unchanged region's chunks identical), skips holes without reading them
//! (`SEEK_DATA`/`SEEK_HOLE`), leaves all-zero chunks out, and stores the rest through the
//! same writer, session and checks as a tree backup. Restore writes only the stored
//! extents: an image file keeps holes; a device has the ranges between them zeroed unless
//! the caller says it is fresh.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arca_format::{
    BlobId, BlobType, Compression, Extent, ExtentList, SessionKind, Snapshot, SnapshotRoot,
    Timestamp, Volume,
};
use futures::StreamExt;
use rayon::prelude::*;

use crate::backup::{BackupProgress, BackupReport, Parent};
use crate::error::{Error, Result};
use crate::indexed::Indexed;
use crate::repo::Identity;
use crate::restore::RestoreProgress;
use crate::session::SessionGuard;
use crate::writer::Writer;

/// The chunk size of volume backups by default: measured on an ext4 file system with 1 %
/// of its bytes rewritten in place (`benches/scripts/block-chunking.sh`, FORMAT.md 13.2),
/// 64 KiB chunks stored 1.4 times the changed bytes, 256 KiB 2.4, 1 MiB 5.3, FastCDC 9.6.
pub const VOLUME_CHUNK_DEFAULT: u32 = 64 * 1024;
/// Extents per extent-list blob: about 5 MB encoded, well under the 32 MiB blob limit.
const EXTENTS_PER_LIST: usize = 100_000;
/// A restore writes consecutive blobs in runs of at most this many bytes.
const RUN_BYTES: usize = 4 << 20;
/// Chunks read at once (per batch, across the reader threads): 16 MiB.
const BATCH_CHUNKS: usize = 256;

thread_local! {
    /// A reader thread's chunk buffer, reused: a zeroed allocation per chunk cost a page
    /// fault per page under jemalloc (it zeroes a reused large block by purging its pages):
    /// ten times the faults and twice the system time of a backup.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What to back up as a volume, and how.
#[derive(Clone, Debug)]
pub struct VolumeBackupOptions {
    /// A block device or an image file.
    pub source: PathBuf,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Labels of the snapshot.
    pub labels: BTreeMap<String, String>,
    /// The parent recorded in the snapshot (deduplication does not depend on it).
    pub parent: Parent,
    /// Chunk size in bytes (a power of two from 4 KiB to 8 MiB).
    pub chunk_size: u32,
    /// Compression of data (the repository's default when `None`).
    pub compression: Option<Compression>,
    /// Reader threads (0: one per core, at least 2).
    pub threads: usize,
    /// Host and user recorded in the snapshot.
    pub identity: Identity,
    /// Set to stop the backup early (it then fails with `Cancelled`, storing no snapshot).
    pub cancel: Arc<AtomicBool>,
    /// How often uploaded data is made reusable (an index file written).
    pub checkpoint: std::time::Duration,
}

impl VolumeBackupOptions {
    /// Back up `source` with everything else at its default.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            tags: Vec::new(),
            labels: BTreeMap::new(),
            parent: Parent::Auto,
            chunk_size: VOLUME_CHUNK_DEFAULT,
            compression: None,
            threads: 0,
            identity: Identity::current(),
            cancel: Arc::new(AtomicBool::new(false)),
            checkpoint: crate::writer::DEFAULT_CHECKPOINT,
        }
    }
}

/// Where and how to restore a volume snapshot.
#[derive(Clone, Debug)]
pub struct VolumeRestoreOptions {
    /// A block device (at least the volume's size), or an image file to create.
    pub target: PathBuf,
    /// Overwrite an image file that exists (a device is always written over).
    pub overwrite: bool,
    /// The device is known to read as zeros: the ranges no extent covers are not zeroed.
    pub fresh: bool,
    /// Blobs read and written at once.
    pub parallel: usize,
    /// Write past the page cache (`O_DIRECT`) where the target takes it: a device when
    /// the volume is whole 4 KiB blocks, or an image not on tmpfs.
    pub direct_io: bool,
    /// Set to stop early (the restore then fails with `Cancelled`).
    pub cancel: Arc<AtomicBool>,
}

impl VolumeRestoreOptions {
    /// Restore onto `target` with everything else at its default.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            overwrite: false,
            fresh: false,
            parallel: 16,
            direct_io: true,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a volume restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeRestoreReport {
    /// The volume's size.
    pub size: u64,
    /// Bytes written from stored extents.
    pub bytes_written: u64,
    /// Bytes zeroed on a device (ranges no extent covers).
    pub bytes_zeroed: u64,
    /// Written past the page cache (`VolumeRestoreOptions::direct_io`, where it applied
    /// and the target did not refuse it midway).
    pub direct_io: bool,
}

fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// The byte ranges that may hold data: `SEEK_DATA`/`SEEK_HOLE` on files that support
/// them, the whole size otherwise (block devices, file systems without hole reporting).
fn data_ranges(f: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let start = match lseek(f, pos, Whence::SeekData) {
            Ok(s) => s,
            // ENXIO: no data past `pos`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let stop = match lseek(f, start, Whence::SeekHole) {
            Ok(s) => s.min(end),
            Err(_) => return vec![(0, size)],
        };
        if stop > start {
            out.push((start as u64, stop as u64));
        }
        pos = stop;
    }
    out
}

/// Chunk offsets covering `ranges`, aligned to `chunk`, each once, ascending; generated
/// as needed (a 16 TiB device has 256 million of them).
struct ChunkOffsets<'a> {
    ranges: &'a [(u64, u64)],
    chunk: u64,
    size: u64,
    next: Option<u64>,
    last: Option<u64>,
}

impl<'a> ChunkOffsets<'a> {
    fn new(ranges: &'a [(u64, u64)], chunk: u64, size: u64) -> Self {
        Self {
            ranges,
            chunk,
            size,
            next: None,
            last: None,
        }
    }
}

impl Iterator for ChunkOffsets<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let &(s, e) = self.ranges.first()?;
            let end = e.min(self.size);
            let o = self.next.unwrap_or(s / self.chunk * self.chunk);
            if o >= end {
                self.ranges = &self.ranges[1..];
                self.next = None;
                continue;
            }
            self.next = Some(o + self.chunk);
            // Two ranges in one chunk: that chunk once.
            if self.last == Some(o) {
                continue;
            }
            self.last = Some(o);
            return Some(o);
        }
    }
}

fn all_zero(b: &[u8]) -> bool {
    // Word-wise: data fails on its first word, zeros go at memory speed.
    let words = b.chunks_exact(8);
    let rest = words.remainder();
    words
        .into_iter()
        .all(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

impl Indexed {
    /// Back up a block device or an image file as a volume snapshot.
    pub async fn backup_volume(
        &self,
        opts: VolumeBackupOptions,
        progress: Arc<BackupProgress>,
    ) -> Result<BackupReport> {
        let chunk = opts.chunk_size;
        if !chunk.is_power_of_two() || !(4096..=8 << 20).contains(&chunk) {
            return Err(Error::Invalid(format!(
                "chunk size {chunk}: use a power of two from 4096 to 8388608"
            )));
        }
        let source =
            std::path::absolute(&opts.source).map_err(|e| Error::io("resolve", &opts.source, e))?;
        let file = std::fs::File::open(&source).map_err(|e| Error::io("open", &source, e))?;
        let meta = file.metadata().map_err(|e| Error::io("read", &source, e))?;
        if !(meta.is_file() || meta.file_type().is_block_device()) {
            return Err(Error::Invalid(format!(
                "{}: not a block device or a regular file (an image); for a directory, back up a tree",
                source.display()
            )));
        }
        // A device's size is where its end is.
        let size = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0))
                .map_err(|e| Error::io("measure", &source, e))?
        };
        let path_bytes = vec![std::os::unix::ffi::OsStrExt::as_bytes(source.as_os_str()).to_vec()];

        let session = SessionGuard::start(&self.repo, SessionKind::Backup, &opts.identity).await?;
        self.resync().await?;
        let parent = match &opts.parent {
            Parent::None => None,
            Parent::Snapshot(id) => {
                if !matches!(self.repo.snapshot(id).await?.root, SnapshotRoot::Volume(_)) {
                    return Err(Error::Invalid(format!(
                        "snapshot {} holds a directory tree: a volume's parent is a volume snapshot",
                        id.short()
                    )));
                }
                Some(*id)
            }
            Parent::Auto => self
                .previous(&opts.identity.host, &path_bytes, true)
                .await?
                .map(|(id, _)| id),
        };

        let start = Timestamp::now();
        let compression = opts.compression.unwrap_or(self.repo.config.compression);
        let writer = Arc::new(Writer::new(self, compression, session.liveness()));
        writer.set_checkpoint(opts.checkpoint);
        let _ = progress.written.set(writer.stats());
        let ranges = data_ranges(&file, size);
        progress.total_bytes.store(
            ChunkOffsets::new(&ranges, chunk as u64, size)
                .map(|o| (chunk as u64).min(size - o))
                .sum(),
            Ordering::Relaxed,
        );
        progress.total_files.store(1, Ordering::Relaxed);
        progress.scan_done.store(true, Ordering::Relaxed);
        let threads = crate::backup::reader_threads(opts.threads);
        let (w, p, cancel) = (writer.clone(), progress.clone(), opts.cancel.clone());
        let src = source.clone();
        let (pauses, rt) = (self.repo.pauses.clone(), tokio::runtime::Handle::current());
        // On a blocking thread: the writer's stores may wait for upload slots. Extent lists
        // are stored as they fill, so memory stays bounded whatever the volume's size.
        let read = tokio::task::spawn_blocking(move || -> Result<(Vec<BlobId>, u64)> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("arca-volume-{i}"))
                .build()
                .map_err(|e| Error::Invalid(format!("cannot start reader threads: {e}")))?;
            let (mut lists, mut pending, mut data) = (Vec::new(), Vec::new(), 0u64);
            let mut offsets = ChunkOffsets::new(&ranges, chunk as u64, size).peekable();
            let mut batch = Vec::with_capacity(BATCH_CHUNKS);
            while offsets.peek().is_some() {
                batch.clear();
                batch.extend(offsets.by_ref().take(BATCH_CHUNKS));
                let got: Vec<Result<Option<Extent>>> = pool.install(|| {
                    batch
                        .par_iter()
                        .map(|&off| {
                            // Per chunk, so a cancel stops the work within one chunk's read.
                            if cancel.load(Ordering::Relaxed) || w.aborted() {
                                return Err(Error::Cancelled);
                            }
                            let len = (chunk as u64).min(size - off) as usize;
                            READ_BUF.with_borrow_mut(|buf| {
                                buf.resize(len, 0);
                                file.read_exact_at(buf, off)
                                    .map_err(|e| Error::io("read", &src, e))?;
                                p.bytes_done.fetch_add(len as u64, Ordering::Relaxed);
                                p.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                                if all_zero(buf) {
                                    return Ok(None);
                                }
                                let id = w.store(BlobType::Data, buf)?;
                                Ok(Some(Extent {
                                    offset: off,
                                    length: len as u32,
                                    id,
                                }))
                            })
                        })
                        .collect()
                });
                for g in got {
                    if let Some(e) = g? {
                        data += e.length as u64;
                        pending.push(e);
                    }
                }
                // A batch is read, the rest to come: cancel tests hold the backup here.
                rt.block_on(pauses.at("volume:batch-read"));
                if pending.len() >= EXTENTS_PER_LIST {
                    let rest = pending.split_off(EXTENTS_PER_LIST);
                    let list = ExtentList {
                        extents: std::mem::replace(&mut pending, rest),
                    };
                    lists.push(w.store(BlobType::ExtentList, &list.encode()?)?);
                }
            }
            if !pending.is_empty() {
                let list = ExtentList { extents: pending };
                lists.push(w.store(BlobType::ExtentList, &list.encode()?)?);
            }
            Ok((lists, data))
        })
        .await
        .expect("volume reader panicked");
        let (lists, data) = match read {
            Ok(r) => r,
            Err(e) => {
                // Whatever was uploaded is indexed for the next run; no manifest.
                let finished = writer.finish().await;
                return Err(match (e, finished) {
                    (Error::Cancelled, Err(store)) => store,
                    (e, _) => e,
                });
            }
        };
        writer.finish().await?;
        progress.files_done.store(1, Ordering::Relaxed);

        let ws = writer.stats();
        let mut snapshot = Snapshot::new(SnapshotRoot::Volume(Volume {
            size,
            extent_lists: lists,
        }));
        snapshot.time = start;
        snapshot.end_time = Timestamp::now();
        snapshot.host = opts.identity.host.clone();
        snapshot.username = opts.identity.username.clone();
        snapshot.paths = path_bytes;
        snapshot.tags = opts.tags.clone();
        snapshot.labels = opts.labels.clone();
        snapshot.parent = parent;
        snapshot.summary.files_new = 1;
        snapshot.summary.bytes_processed = data;
        snapshot.summary.data_blobs = ws.data_blobs.load(Ordering::Relaxed);
        snapshot.summary.tree_blobs = ws.tree_blobs.load(Ordering::Relaxed);
        snapshot.summary.bytes_added = ws.bytes_added.load(Ordering::Relaxed);
        snapshot.summary.bytes_stored = ws.bytes_stored.load(Ordering::Relaxed);
        snapshot.program = format!("arca {}", env!("CARGO_PKG_VERSION"));
        let id = self
            .commit(session, &snapshot, "volume:before-snapshot")
            .await?;
        Ok(BackupReport {
            id,
            snapshot,
            errors: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Read a volume's extent lists one by one, checking that extents ascend without
    /// overlap across all lists and end within the volume; the bytes of data they hold.
    /// Memory stays one list, whatever the volume's size.
    pub async fn volume_data(&self, v: &Volume) -> Result<u64> {
        let mut end = 0u64;
        let mut data = 0u64;
        for l in &v.extent_lists {
            for e in self.extent_list(v, l, &mut end).await? {
                data += e.length as u64;
            }
        }
        Ok(data)
    }

    /// One extent list, checked against the volume and the end of the lists before it.
    async fn extent_list(&self, v: &Volume, l: &BlobId, end: &mut u64) -> Result<Vec<Extent>> {
        let list = ExtentList::decode(&self.read_blob(l).await?)?;
        for e in &list.extents {
            // Within a list, order is checked by the decoder; across lists and against the
            // size, here (the decoder's checked sums rule out overflow).
            if e.offset < *end || e.offset + e.length as u64 > v.size {
                return Err(Error::Invalid(format!(
                    "extent list {} is damaged: an extent at {} overlaps or lies past the volume's end",
                    l.short(),
                    e.offset
                )));
            }
            *end = e.offset + e.length as u64;
        }
        Ok(list.extents)
    }

    /// Restore a volume snapshot onto a block device or into an image file.
    pub async fn restore_volume(
        &self,
        snapshot: &Snapshot,
        opts: &VolumeRestoreOptions,
        progress: Arc<RestoreProgress>,
    ) -> Result<VolumeRestoreReport> {
        let SnapshotRoot::Volume(v) = &snapshot.root else {
            return Err(Error::Invalid(
                "this snapshot holds a directory tree: restore it with `snapshot restore --target <dir>`".into(),
            ));
        };
        // Every list checked before anything is written.
        let total = self.volume_data(v).await?;
        let (file, device) = open_target(&opts.target, v.size, opts.overwrite)?;
        // Direct I/O (see `direct`): onto a disk the page cache was most of a restore's
        // kernel time, and one writer at a time (tmpfs's inode lock, below) left the
        // device with a single request in flight. A device's node lives on devtmpfs, so
        // only an image's file system is asked; a device whose last block the volume
        // fills only in part stays buffered (padding would write past the volume).
        let direct = opts.direct_io
            && if device {
                v.size % 4096 == 0
            } else {
                crate::direct::worth_it(&file)
            }
            && crate::direct::set(&file, true).map_err(|e| Error::io("open", &opts.target, e))?;
        let dio = direct.then(|| Arc::new(crate::direct::Edges::default()));
        let file = Arc::new(file);
        let target = opts.target.clone();
        progress.total_files.store(1, Ordering::Relaxed);
        progress.total_bytes.store(total, Ordering::Relaxed);
        progress.walk_done.store(true, Ordering::Relaxed);
        let mut report = VolumeRestoreReport {
            size: v.size,
            ..Default::default()
        };
        let zero = device && !opts.fresh;
        let (mut end, mut pos) = (0u64, 0u64);
        for l in &v.extent_lists {
            let extents = self.extent_list(v, l, &mut end).await?;
            // A device's ranges no extent covers are zeroed (cheaply, where it can); the
            // ranges they cover, merged, are what an image allocates.
            let (mut gaps, mut spans) = (Vec::new(), Vec::<(u64, u64)>::new());
            for e in &extents {
                if e.offset > pos {
                    gaps.push((pos, e.offset - pos));
                }
                match spans.last_mut() {
                    Some((at, len)) if *at + *len == e.offset => *len += e.length as u64,
                    _ => spans.push((e.offset, e.length as u64)),
                }
                pos = e.offset + e.length as u64;
            }
            if zero && !gaps.is_empty() {
                report.bytes_zeroed += self
                    .zero(&file, &target, gaps, direct, &opts.cancel)
                    .await?;
            }
            if direct && !device {
                let (f, t, c) = (file.clone(), target.clone(), opts.cancel.clone());
                tokio::task::spawn_blocking(move || allocate_ranges(&f, &t, &spans, &c))
                    .await
                    .expect("allocation panicked")?;
            }
            report.bytes_written += self
                .write_extents(extents, &file, &dio, v.size, &target, opts, &progress)
                .await?;
        }
        if zero && pos < v.size {
            report.bytes_zeroed += self
                .zero(
                    &file,
                    &target,
                    vec![(pos, v.size - pos)],
                    direct,
                    &opts.cancel,
                )
                .await?;
        }
        let (f, size, d) = (file.clone(), v.size, dio.clone());
        tokio::task::spawn_blocking(move || {
            // The last block went out padded: an image is cut back to the volume's size.
            match &d {
                Some(e) if device => e.drain(&f),
                Some(e) => e.finish(&f, size),
                None => Ok(()),
            }
            .map_err(|e| Error::io("write", &target, e))?;
            f.sync_all().map_err(|e| Error::io("sync", &target, e))
        })
        .await
        .expect("sync panicked")?;
        report.direct_io = dio.is_some_and(|e| !e.buffered());
        progress.files_done.store(1, Ordering::Relaxed);
        Ok(report)
    }

    /// Write one list's extents: blobs located, grouped by pack, neighbours fetched in one
    /// range (as a tree restore does), each range fetched once and its blobs decrypted
    /// and written where they go. A blob per request was a third of the speed. `dio`:
    /// the target is open with `O_DIRECT` (of a volume of `size` bytes).
    #[allow(clippy::too_many_arguments)]
    async fn write_extents(
        &self,
        extents: Vec<Extent>,
        file: &Arc<std::fs::File>,
        dio: &Option<Arc<crate::direct::Edges>>,
        size: u64,
        target: &Path,
        opts: &VolumeRestoreOptions,
        progress: &Arc<RestoreProgress>,
    ) -> Result<u64> {
        use crate::restore::FETCH_BUDGET_MIB;
        use std::collections::HashMap;
        // Where each blob goes: (offset, length the extent says).
        type Plan = crate::restore::PackPlan<Vec<(u64, u32)>>;
        let idx = self.clone();
        let plan: Plan = tokio::task::spawn_blocking(move || -> Result<Plan> {
            let mut l = idx.index.session();
            let mut plan: Plan = HashMap::new();
            for e in extents {
                let loc = idx
                    .index
                    .lookup_in(&mut l, &e.id)?
                    .ok_or(Error::MissingBlob { id: e.id })?;
                plan.entry(loc.pack)
                    .or_insert_with(|| (loc.kind, HashMap::new()))
                    .1
                    .entry(e.id)
                    .or_insert_with(|| (loc.entry, Vec::new()))
                    .1
                    .push((e.offset, e.length));
            }
            Ok(plan)
        })
        .await
        .expect("restore planning panicked")?;
        let ranges = crate::restore::pack_ranges(plan);
        let budget = Arc::new(tokio::sync::Semaphore::new(FETCH_BUDGET_MIB as usize));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let write_lock = Arc::new(std::sync::Mutex::new(()));
        // Every range's work runs to its end or to its next check of `stop` before this
        // returns: a failed restore writes nothing after it has said so (a range dropped
        // mid-way would leave its blocking task writing on).
        let stop = Arc::new(AtomicBool::new(false));
        let first_error = std::sync::Mutex::new(None);
        let stopped = |cancel: &AtomicBool, stop: &AtomicBool| {
            cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed)
        };
        futures::stream::iter(ranges)
            .for_each_concurrent(opts.parallel.max(1), |(pack_id, kind, blobs)| {
                let (file, dio, cancel, progress) =
                    (file.clone(), dio.clone(), opts.cancel.clone(), progress.clone());
                let (t, written, budget) = (target.to_path_buf(), written.clone(), budget.clone());
                let (write_lock, first_error) = (write_lock.clone(), &first_error);
                let (stop, stop_all) = (stop.clone(), stop.clone());
                let work = async move {
                    let start = blobs[0].0.offset as u64;
                    let end = blobs.last().expect("non-empty").0.end();
                    let largest = blobs.iter().map(|b| b.0.raw_length).max().unwrap_or(0);
                    // The fetched range, one decrypted blob and the run of plaintext.
                    let mib = ((((end - start) + largest as u64 + RUN_BYTES as u64) >> 20) as u32
                        + 1)
                        .min(FETCH_BUDGET_MIB);
                    let _permit = budget
                        .acquire_many_owned(mib)
                        .await
                        .expect("semaphore never closed");
                    if stopped(&cancel, &stop) {
                        return Err(Error::Cancelled);
                    }
                    let bytes = self
                        .repo
                        .store
                        .get_range(&crate::indexed::pack_name(kind, &pack_id), start..end)
                        .await?;
                    let keys = self.repo.keys.clone();
                    tokio::task::spawn_blocking(move || -> Result<()> {
                        let mut plain = Vec::new();
                        // Blobs that follow each other on the volume go out in one write,
                        // buffered ones one writer at a time: concurrent small writes to
                        // one file spun on its inode lock (a third of the kernel time on
                        // tmpfs). Direct writes go out together, several in flight.
                        let mut run = Vec::with_capacity(RUN_BYTES);
                        let mut run_at = 0u64;
                        let flush = |run: &mut Vec<u8>, at: u64| -> Result<()> {
                            if !run.is_empty() {
                                let _one = dio.is_none().then(|| write_lock.lock().expect("lock"));
                                if stopped(&cancel, &stop) {
                                    return Err(Error::Cancelled);
                                }
                                match &dio {
                                    Some(e) => crate::direct::write(&file, e, run, at, size, false),
                                    None => file.write_all_at(run, at),
                                }
                                .map_err(|err| Error::io("write", &t, err))?;
                                drop(_one);
                                let n = run.len() as u64;
                                progress.bytes_done.fetch_add(n, Ordering::Relaxed);
                                written.fetch_add(n, Ordering::Relaxed);
                                run.clear();
                            }
                            Ok(())
                        };
                        for (entry, targets) in &blobs {
                            if stopped(&cancel, &stop) {
                                return Err(Error::Cancelled);
                            }
                            let from = (entry.offset as u64 - start) as usize;
                            arca_format::pack::open_blob_into(
                                &keys,
                                entry,
                                &bytes[from..from + entry.length as usize],
                                &mut plain,
                            )?;
                            for &(offset, length) in targets {
                                if plain.len() != length as usize {
                                    return Err(Error::Invalid(format!(
                                        "blob {} holds {} bytes; its extent at {offset} says {length}",
                                        entry.id.short(),
                                        plain.len(),
                                    )));
                                }
                                if run.is_empty() || run_at + run.len() as u64 != offset
                                    || run.len() + plain.len() > RUN_BYTES
                                {
                                    flush(&mut run, run_at)?;
                                    run_at = offset;
                                }
                                run.extend_from_slice(&plain);
                            }
                        }
                        flush(&mut run, run_at)?;
                        Ok(())
                    })
                    .await
                    .expect("restore writer panicked")?;
                    // One range is on the target: kill tests hold the restore here.
                    self.repo.pauses.at("volume:range-written").await;
                    Ok(())
                };
                async move {
                    if let Err(e) = work.await {
                        stop_all.store(true, Ordering::Relaxed);
                        // The first real error, not the Cancelled it made the others say.
                        let mut first = first_error.lock().expect("lock");
                        if first.is_none() || matches!(*first, Some(Error::Cancelled)) {
                            *first = Some(e);
                        }
                    }
                }
            })
            .await;
        if let Some(e) = first_error.into_inner().expect("lock") {
            return Err(e);
        }
        Ok(written.load(Ordering::Relaxed))
    }

    async fn zero(
        &self,
        file: &Arc<std::fs::File>,
        target: &Path,
        gaps: Vec<(u64, u64)>,
        direct: bool,
        cancel: &Arc<AtomicBool>,
    ) -> Result<u64> {
        let (f, t, c) = (file.clone(), target.to_path_buf(), cancel.clone());
        tokio::task::spawn_blocking(move || zero_ranges(&f, &t, &gaps, direct, &c))
            .await
            .expect("zeroing panicked")
    }
}

/// Allocate an image's blocks for the spans an extent list is about to write with direct
/// I/O, before any of its writes. ext4 holds the file's lock exclusively through a direct
/// write into a hole, device wait included, but only shared through one into allocated
/// blocks (written or not): without this the writers queued on the lock, one request in
/// flight. All at once, since an allocation waits for every direct write in flight. Only
/// what is written is allocated: the image stays sparse.
fn allocate_ranges(
    f: &std::fs::File,
    target: &Path,
    spans: &[(u64, u64)],
    cancel: &AtomicBool,
) -> Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    for &(at, len) in spans {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        match fallocate(
            f,
            FallocateFlags::FALLOC_FL_KEEP_SIZE,
            at as i64,
            len as i64,
        ) {
            Ok(()) => {}
            // A file system without it: the writes go on, one at a time.
            Err(nix::errno::Errno::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(Error::io("allocate", target, e.into())),
        }
    }
    Ok(())
}

/// Open a restore's target: an existing block device (only with `overwrite`, exclusively:
/// a mounted or otherwise claimed device is refused, and it must hold the volume), or a
/// new image file (an existing one only with `overwrite`), readable by its owner alone.
/// Also says whether it is a device.
fn open_target(target: &Path, size: u64, overwrite: bool) -> Result<(std::fs::File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    if is_block_device(target) {
        if !overwrite {
            return Err(Error::Invalid(format!(
                "{} is a block device: a restore writes over all of it; say so to go ahead (`--existing overwrite`)",
                target.display()
            )));
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            // On a block device, O_EXCL without O_CREAT claims it: EBUSY when mounted.
            .custom_flags(libc::O_EXCL)
            .open(target)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    Error::Invalid(format!(
                        "{} is in use (mounted, or held by another program): unmount it first",
                        target.display()
                    ))
                } else {
                    Error::io("open", target, e)
                }
            })?;
        let have = {
            use std::io::Seek;
            let mut r = &f;
            r.seek(std::io::SeekFrom::End(0))
                .map_err(|e| Error::io("measure", target, e))?
        };
        if have < size {
            return Err(Error::Invalid(format!(
                "{} holds {have} bytes; the volume needs {size}: give a device at least that large",
                target.display()
            )));
        }
        return Ok((f, true));
    }
    // A device path that does not exist (a typo, a disk not attached yet) would become a
    // file in memory under /dev. Files on the file systems mounted below it (/dev/shm) are
    // fine: only the device file system itself is refused.
    if !target.exists() && on_device_fs(target) {
        return Err(Error::Invalid(format!(
            "{}: no such device (is the disk attached?)",
            target.display()
        )));
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if overwrite {
        o.create(true);
    } else {
        o.create_new(true);
    }
    let f = o.open(target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Invalid(format!(
                "{} exists: restore into a new file, or overwrite it (`--existing overwrite`)",
                target.display()
            ))
        } else {
            Error::io("create", target, e)
        }
    })?;
    // All holes, then the extents: the rest of an image stays sparse.
    f.set_len(0).map_err(|e| Error::io("truncate", target, e))?;
    f.set_len(size).map_err(|e| Error::io("size", target, e))?;
    Ok((f, false))
}

/// Whether a new file at `target` would land on the file system of `/dev` (devtmpfs).
fn on_device_fs(target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (std::fs::metadata(parent), std::fs::metadata("/dev")) {
        (Ok(p), Ok(d)) => p.dev() == d.dev(),
        _ => false,
    }
}

/// Zero byte ranges of a device: `fallocate(ZERO_RANGE)` (the kernel turns it into a
/// write-zeroes or discard the device guarantees); written zeros only where the device
/// cannot (EOPNOTSUPP, EINVAL), never over an error such as EBUSY. Checks `cancel` per
/// MiB written. `direct`: the file is open with `O_DIRECT`, off while zeros are written
/// (no other write runs meanwhile: gaps are zeroed between extent lists).
fn zero_ranges(
    f: &std::fs::File,
    target: &Path,
    gaps: &[(u64, u64)],
    direct: bool,
    cancel: &AtomicBool,
) -> Result<u64> {
    use nix::errno::Errno;
    use nix::fcntl::{FallocateFlags, fallocate};
    let mut done = 0;
    let zeros = vec![0u8; 1 << 20];
    for &(off, len) in gaps {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        match fallocate(
            f,
            FallocateFlags::FALLOC_FL_ZERO_RANGE,
            off as i64,
            len as i64,
        ) {
            Ok(()) => {}
            Err(Errno::EOPNOTSUPP | Errno::EINVAL) => {
                let toggle =
                    |on| crate::direct::set(f, on).map_err(|e| Error::io("zero", target, e));
                if direct {
                    toggle(false)?;
                }
                let mut o = off;
                while o < off + len {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    let n = (zeros.len() as u64).min(off + len - o) as usize;
                    f.write_all_at(&zeros[..n], o)
                        .map_err(|e| Error::io("zero", target, e))?;
                    o += n as u64;
                }
                if direct {
                    toggle(true)?;
                }
            }
            Err(e) => return Err(Error::io("zero", target, std::io::Error::from(e))),
        }
        done += len;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_data_ranges_aligned() {
        let offs = |r: &[(u64, u64)], c, s| ChunkOffsets::new(r, c, s).collect::<Vec<u64>>();
        assert_eq!(offs(&[(0, 10)], 4, 10), [0, 4, 8]);
        assert_eq!(offs(&[(5, 6), (7, 13)], 4, 20), [4, 8, 12]);
        assert_eq!(offs(&[(0, 3), (5, 6)], 8, 20), [0]);
        assert_eq!(offs(&[], 4, 20), Vec::<u64>::new());
        assert!(all_zero(&[0u8; 1000]) && !all_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn holes_are_not_data() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"hello", 32 << 20).unwrap();
        f.sync_all().unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let r = data_ranges(&f, 64 << 20);
        let covered: u64 = r.iter().map(|(s, e)| e - s).sum();
        assert!(
            r.iter().any(|&(s, e)| s <= 32 << 20 && e > 32 << 20),
            "{r:?}"
        );
        // File systems without hole reporting give the whole file; tmpfs and ext4 report.
        assert!(covered <= 1 << 20 || covered == 64 << 20, "{r:?}");
    }

    #[test]
    fn only_the_device_file_system_is_refused_for_new_images() {
        assert!(on_device_fs(Path::new("/dev/arca-no-such-disk")));
        let d = tempfile::tempdir().unwrap();
        assert!(!on_device_fs(&d.path().join("x.img")));
        assert!(!on_device_fs(Path::new("relative.img")));
        // tmpfs mounted below /dev is a file system like any other (when it is mounted).
        let shm = Path::new("/dev/shm");
        let dev = |p: &str| {
            std::fs::metadata(p)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
        };
        if shm.is_dir() && dev("/dev/shm") != dev("/dev") {
            assert!(!on_device_fs(&shm.join("x.img")));
        }
    }
}
