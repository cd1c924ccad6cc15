//! Restore of a snapshot (or a sub-path of it) into a directory, or as a tar stream.
//!
//! Directory restore runs in three phases, the first two at once:
//! 1. walk the snapshot's trees (on a thread of its own): create directories, symlinks,
//!    fifos and devices, decide per file whether to write it (existing-file policy), note
//!    hard links, and hand the files on in batches;
//! 2. write file contents batch by batch, each planned **in pack order**: every pack range
//!    is fetched once, blobs are authenticated and written at their offsets by several
//!    workers at once, and all-zero chunks of sparse files are left as holes;
//! 3. create the extra names of hard-linked files, then apply directory metadata,
//!    deepest first.
//!
//! A file's modification time is set only after its content is complete, so a rerun after
//! an interruption recognises finished files (same size and mtime) and skips them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arca_format::{
    BlobId, Node, NodeKind, PackEntry, PackId, PackKind, SnapshotRoot, Timestamp, Tree, pack,
};
use futures::StreamExt;

use crate::backup::ItemProblem;
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::indexed::{Indexed, pack_name};

/// What to do with a file that already exists at the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Existing {
    /// Leave it when its size and modification time match the snapshot's; else rewrite.
    #[default]
    SkipIdentical,
    /// Always rewrite it.
    Overwrite,
    /// Stop the restore with an error.
    Fail,
}

/// Where and how to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Target directory (created if missing).
    pub target: PathBuf,
    /// Path inside the snapshot to restore (`/`-separated; empty: everything).
    pub subpath: String,
    /// Policy for existing files.
    pub existing: Existing,
    /// Restore owners (needs root; default: when running as root).
    pub ownership: bool,
    /// Pack ranges fetched at once.
    pub concurrency: usize,
    /// Set to stop early.
    pub cancel: Arc<AtomicBool>,
}

impl RestoreOptions {
    /// Restore everything into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            subpath: String::new(),
            existing: Existing::SkipIdentical,
            ownership: nix::unistd::geteuid().is_root(),
            concurrency: 8,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Live counters.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Files to write: grows while the walk runs, final once it ends.
    pub total_files: AtomicU64,
    /// Bytes to write (grows like `total_files`).
    pub total_bytes: AtomicU64,
    /// Files finished or skipped.
    pub files_done: AtomicU64,
    /// Bytes finished.
    pub bytes_done: AtomicU64,
    /// Problems so far.
    pub errors: AtomicU64,
    /// The walk has ended: `total_files` and `total_bytes` are final.
    pub walk_done: AtomicBool,
}

/// What a restore did.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    /// Files written.
    pub files_restored: u64,
    /// Existing files left as they were.
    pub files_skipped: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries (symlinks, fifos, devices, hard links).
    pub others: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
    /// Items not restored, or restored damaged: the restore is partial.
    pub errors: Vec<ItemProblem>,
    /// Metadata that could not be applied.
    pub warnings: Vec<ItemProblem>,
}

/// What the walk of phase 1 collects.
#[derive(Default)]
struct Plan {
    /// Files not yet handed on in a batch.
    jobs: std::collections::VecDeque<FileJob>,
    dirs: Vec<(PathBuf, Node)>,
    /// Hard-link groups: (device, inode) → the name that gets the content.
    groups: HashMap<(u64, u64), PathBuf>,
    /// The other names of hard-linked files: group, the name with the content, the link.
    links: Vec<((u64, u64), PathBuf, PathBuf)>,
    /// Directories still to walk: tree, target path, and whether the directory is new
    /// (then nothing in it exists and nothing is looked up).
    stack: Vec<(BlobId, PathBuf, bool)>,
}

impl Plan {
    /// The next batch of files: a full one, or (at the end of the walk) what is left.
    fn take_batch(&mut self, all: bool) -> Option<Vec<FileJob>> {
        let (mut n, mut bytes) = (0, 0);
        while n < self.jobs.len() && n < BATCH_FILES && (bytes < BATCH_BYTES || n == 0) {
            bytes += self.jobs[n].node.size;
            n += 1;
        }
        let full = n == BATCH_FILES || bytes >= BATCH_BYTES;
        (n > 0 && (full || all)).then(|| self.jobs.drain(..n).collect())
    }
}

/// What the walk leaves for phase 3.
struct Walked {
    dirs: Vec<(PathBuf, Node)>,
    links: Vec<((u64, u64), PathBuf, PathBuf)>,
    report: RestoreReport,
}

struct FileJob {
    path: PathBuf,
    node: Node,
}

/// A job's chunks and where they are, or why its file could not be created.
type JobChunks = std::result::Result<Vec<(BlobId, Option<crate::cache::BlobLocation>)>, String>;
/// A batch with its files created and chunks looked up.
type Prepared = (Vec<FileJob>, Vec<Result<JobChunks>>);

/// Files per batch, and content bytes per batch: bounds the plan's memory.
const BATCH_FILES: usize = 8192;

thread_local! {
    /// Each worker's buffer for decrypted blobs: no fresh pages per blob.
    static PLAIN_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}
/// Workers keep a buffer up to this size between ranges (the average chunk is 1 MiB).
const PLAIN_BUF_KEEP: usize = 4 << 20;
const BATCH_BYTES: u64 = 1 << 30;
/// Blobs closer than this in a pack are fetched in one range.
const COALESCE_GAP: u64 = 256 << 10;
/// At most this much per range: still large enough for object stores.
const MAX_RANGE: u64 = 8 << 20;
/// MiB of fetched ranges (and of the blobs decrypted from them) in flight at once: many
/// small ranges may run together, few large ones. This is what bounds a restore's memory.
const FETCH_BUDGET_MIB: u32 = 48;

fn node_path(base: &Path, name: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(name))
}

struct Collector {
    errors: Mutex<Vec<ItemProblem>>,
    warnings: Mutex<Vec<ItemProblem>>,
    progress: Arc<RestoreProgress>,
    /// Hard-link groups (device, inode) whose first file was restored whole: their other
    /// names are linked to it at the end.
    linked: Mutex<std::collections::HashSet<(u64, u64)>>,
}

impl Collector {
    fn error(&self, path: &Path, msg: impl Into<String>) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().expect("lock").push(ItemProblem {
            path: path.to_path_buf(),
            message: msg.into(),
        });
    }

    fn warn(&self, path: &Path, msg: impl Into<String>) {
        self.warnings.lock().expect("lock").push(ItemProblem {
            path: path.to_path_buf(),
            message: msg.into(),
        });
    }
}

impl Indexed {
    /// Find the node at `subpath` of a snapshot's tree (`None` for the root).
    pub async fn resolve(&self, root: &BlobId, subpath: &str) -> Result<Option<Node>> {
        let mut tree_id = *root;
        let parts: Vec<&str> = subpath
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let mut found = None;
        for (i, part) in parts.iter().enumerate() {
            let tree = self.read_tree(&tree_id).await?;
            let node = tree
                .nodes
                .into_iter()
                .find(|n| n.name == part.as_bytes())
                .ok_or_else(|| {
                    Error::NotFound(format!("no {:?} in the snapshot", parts[..=i].join("/")))
                })?;
            if let NodeKind::Dir { subtree } = node.kind {
                tree_id = subtree;
            } else if i + 1 < parts.len() {
                return Err(Error::NotFound(format!(
                    "{:?} is not a directory",
                    parts[..=i].join("/")
                )));
            }
            found = Some(node);
        }
        Ok(found)
    }

    /// Restore a snapshot's tree (or a sub-path) into a directory.
    pub async fn restore(
        &self,
        root: &SnapshotRoot,
        opts: &RestoreOptions,
        progress: Arc<RestoreProgress>,
    ) -> Result<RestoreReport> {
        let SnapshotRoot::Tree(root) = root else {
            return Err(Error::Invalid(
                "this snapshot is a block volume; restore it with the volume mover".into(),
            ));
        };
        let col = Arc::new(Collector {
            errors: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            progress: progress.clone(),
            linked: Mutex::new(Default::default()),
        });
        let mut report = RestoreReport::default();
        std::fs::create_dir_all(&opts.target).map_err(|e| Error::io("create", &opts.target, e))?;
        // Restoring into an empty directory (the usual case) needs no look at what exists:
        // a stat per entry was a fifth of a large restore's walk.
        let fresh = std::fs::read_dir(&opts.target)
            .map_err(|e| Error::io("read", &opts.target, e))?
            .next()
            .is_none();

        // Phase 1: the walk.
        let mut plan = Plan::default();
        match self.resolve(root, &opts.subpath).await? {
            None => plan.stack.push((*root, opts.target.clone(), fresh)),
            Some(node) => match &node.kind {
                NodeKind::Dir { subtree } => {
                    plan.stack.push((*subtree, opts.target.clone(), fresh))
                }
                _ => {
                    let tree = Tree {
                        nodes: vec![node],
                        next: None,
                    };
                    self.place(
                        &tree,
                        &opts.target,
                        fresh,
                        opts,
                        &col,
                        &mut report,
                        &mut plan,
                    )?;
                }
            },
        }
        // Phases 1 and 2 at once: the walk hands batches over a short queue, so the plan
        // in memory stays a few batches however large the snapshot. With `--existing fail`
        // into a directory that has content, the whole walk comes first: nothing is
        // written unless every path is free.
        let hold = opts.existing == Existing::Fail && !fresh;
        let (btx, mut brx) = tokio::sync::mpsc::channel::<Vec<FileJob>>(1);
        let walker = {
            let (idx, opts, col) = (self.clone(), opts.clone(), col.clone());
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || idx.walk(plan, &opts, &col, &handle, &btx, hold))
        };
        // Two batches are written at once, and the next is prepared as soon as one of
        // them ends, so no core idles at a batch's tail. They share one fetch budget.
        let budget = Arc::new(tokio::sync::Semaphore::new(FETCH_BUDGET_MIB as usize));
        let writes = futures::stream::poll_fn(|cx| brx.poll_recv(cx))
            .then(|b| self.prepare_batch(b))
            .map(|prepared| self.write_batch(prepared, opts, &col, &budget))
            .buffer_unordered(2);
        let mut writes = std::pin::pin!(writes);
        while let Some(done) = writes.next().await {
            let (written, restored) = done?;
            report.bytes_written += written;
            report.files_restored += restored;
        }
        let walked = walker.await.expect("restore walk panicked")?;
        report.dirs += walked.report.dirs;
        report.others += walked.report.others;
        report.files_skipped += walked.report.files_skipped;

        // Phase 3: hard links to files restored whole, then directory metadata, deepest
        // first.
        let linked = std::mem::take(&mut *col.linked.lock().expect("lock"));
        for (group, first, link) in &walked.links {
            if !linked.contains(group) {
                continue;
            }
            let _ = std::fs::remove_file(link);
            match std::fs::hard_link(first, link) {
                Ok(()) => report.others += 1,
                Err(e) => col.error(link, format!("cannot create hard link: {e}")),
            }
        }
        for (path, node) in walked.dirs.iter().rev() {
            for p in fsmeta::apply(path, node, opts.ownership) {
                col.warn(path, p);
            }
        }
        report.errors = std::mem::take(&mut *col.errors.lock().expect("lock"));
        report.warnings = std::mem::take(&mut *col.warnings.lock().expect("lock"));
        Ok(report)
    }

    /// Phase 1, on a blocking thread: walk the trees left in `plan`, sending batches of
    /// files to `out` (or keeping them all until the end when `hold`).
    fn walk(
        &self,
        mut plan: Plan,
        opts: &RestoreOptions,
        col: &Collector,
        handle: &tokio::runtime::Handle,
        out: &tokio::sync::mpsc::Sender<Vec<FileJob>>,
        hold: bool,
    ) -> Result<Walked> {
        let mut report = RestoreReport::default();
        let mut held = Vec::new();
        let hand_on = |batch: Vec<FileJob>, held: &mut Vec<Vec<FileJob>>| {
            let p = &col.progress;
            p.total_files
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            p.total_bytes
                .fetch_add(batch.iter().map(|j| j.node.size).sum(), Ordering::Relaxed);
            if hold {
                held.push(batch);
                Ok(())
            } else {
                // The receiver is gone only when the restore already failed.
                out.blocking_send(batch).map_err(|_| Error::Cancelled)
            }
        };
        loop {
            while let Some(batch) = plan.take_batch(false) {
                hand_on(batch, &mut held)?;
            }
            let Some((id, dir, fresh)) = plan.stack.pop() else {
                break;
            };
            if opts.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let tree = match handle.block_on(self.read_tree(&id)) {
                Ok(t) => t,
                Err(e) => {
                    col.error(&dir, format!("directory content lost: {e}"));
                    continue;
                }
            };
            self.place(&tree, &dir, fresh, opts, col, &mut report, &mut plan)?;
        }
        while let Some(batch) = plan.take_batch(true) {
            hand_on(batch, &mut held)?;
        }
        col.progress.walk_done.store(true, Ordering::Relaxed);
        for batch in held {
            out.blocking_send(batch).map_err(|_| Error::Cancelled)?;
        }
        Ok(Walked {
            dirs: plan.dirs,
            links: plan.links,
            report,
        })
    }

    /// Create the entries of one tree under `dir`; queue files and subdirectories.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        tree: &Tree,
        dir: &Path,
        fresh: bool,
        opts: &RestoreOptions,
        col: &Collector,
        report: &mut RestoreReport,
        plan: &mut Plan,
    ) -> Result<()> {
        let Plan {
            jobs,
            dirs,
            groups,
            links,
            stack,
        } = plan;
        for node in &tree.nodes {
            if arca_format::check_name(&node.name).is_err() {
                col.error(
                    dir,
                    format!(
                        "skipped an entry with an unsafe name {:?}",
                        String::from_utf8_lossy(&node.name)
                    ),
                );
                continue;
            }
            let path = node_path(dir, &node.name);
            if let Some(d) = &node.damage {
                col.error(&path, format!("damaged in the repository: {d}"));
            }
            let existing = if fresh {
                None
            } else {
                std::fs::symlink_metadata(&path).ok()
            };
            match &node.kind {
                NodeKind::Dir { subtree } => {
                    match &existing {
                        Some(m) if m.is_dir() => {}
                        Some(_) => {
                            if opts.existing == Existing::Fail {
                                return Err(Error::Invalid(format!(
                                    "{} exists (--existing fail)",
                                    path.display()
                                )));
                            }
                            if let Err(e) = std::fs::remove_file(&path) {
                                col.error(&path, format!("cannot replace with a directory: {e}"));
                                continue;
                            }
                            std::fs::create_dir(&path)
                                .map_err(|e| Error::io("create directory", &path, e))?;
                        }
                        None => std::fs::create_dir(&path)
                            .map_err(|e| Error::io("create directory", &path, e))?,
                    }
                    report.dirs += 1;
                    dirs.push((path.clone(), node.clone()));
                    stack.push((*subtree, path, !existing.is_some_and(|m| m.is_dir())));
                }
                NodeKind::File { .. } => {
                    let group = (node.device, node.inode);
                    if node.links > 1
                        && let Some(first) = groups.get(&group)
                    {
                        links.push((group, first.clone(), path));
                        continue;
                    }
                    if let Some(m) = &existing {
                        match opts.existing {
                            Existing::Fail => {
                                return Err(Error::Invalid(format!(
                                    "{} exists (--existing fail)",
                                    path.display()
                                )));
                            }
                            Existing::SkipIdentical
                                if m.is_file()
                                    && m.len() == node.size
                                    && Timestamp::new(m.mtime(), m.mtime_nsec() as u32)
                                        == node.mtime =>
                            {
                                report.files_skipped += 1;
                                col.progress.files_done.fetch_add(1, Ordering::Relaxed);
                                col.progress.total_files.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            _ => {
                                if m.is_dir() {
                                    col.error(&path, "a directory is in the way");
                                    continue;
                                }
                                // Replace rather than write into it: it may be read-only,
                                // or a hard link whose other names must not change.
                                if let Err(e) = std::fs::remove_file(&path) {
                                    col.error(&path, format!("cannot replace: {e}"));
                                    continue;
                                }
                            }
                        }
                    }
                    if node.links > 1 {
                        groups.insert(group, path.clone());
                    }
                    jobs.push_back(FileJob {
                        path,
                        node: node.clone(),
                    });
                }
                other => {
                    if existing.is_some() {
                        if opts.existing == Existing::Fail {
                            return Err(Error::Invalid(format!(
                                "{} exists (--existing fail)",
                                path.display()
                            )));
                        }
                        if let NodeKind::Symlink { target } = other
                            && std::fs::read_link(&path)
                                .is_ok_and(|t| t.as_os_str().as_bytes() == target.as_slice())
                        {
                            report.others += 1;
                            continue;
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                    let made = match other {
                        NodeKind::Symlink { target } => {
                            std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
                        }
                        NodeKind::Fifo => nix::unistd::mkfifo(
                            &path,
                            nix::sys::stat::Mode::from_bits_truncate(0o600),
                        )
                        .map_err(std::io::Error::from),
                        NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => {
                            let kind = if matches!(other, NodeKind::CharDevice { .. }) {
                                nix::sys::stat::SFlag::S_IFCHR
                            } else {
                                nix::sys::stat::SFlag::S_IFBLK
                            };
                            nix::sys::stat::mknod(
                                &path,
                                kind,
                                nix::sys::stat::Mode::from_bits_truncate(0o600),
                                *rdev as _,
                            )
                            .map_err(std::io::Error::from)
                        }
                        // A socket is recreated by the program that listens on it.
                        NodeKind::Socket => continue,
                        NodeKind::Dir { .. } | NodeKind::File { .. } => {
                            unreachable!("handled above")
                        }
                    };
                    match made {
                        Ok(()) => {
                            report.others += 1;
                            for p in fsmeta::apply(&path, node, opts.ownership) {
                                col.warn(&path, p);
                            }
                        }
                        Err(e) => col.error(&path, format!("cannot create: {e}")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Look up a batch's chunks, on every core.
    async fn prepare_batch(&self, batch: Vec<FileJob>) -> Prepared {
        let idx = self.clone();
        tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            let prepared: Vec<Result<JobChunks>> = batch
                .par_iter()
                .map_init(
                    || idx.index.session(),
                    |l, job| {
                        let NodeKind::File { content, .. } = &job.node.kind else {
                            return Ok(Ok(Vec::new()));
                        };
                        let mut locs = Vec::with_capacity(content.len());
                        for id in content {
                            let loc = idx.index.lookup_in(l, id)?;
                            let missing = loc.is_none();
                            locs.push((*id, loc));
                            if missing {
                                break;
                            }
                        }
                        Ok(Ok(locs))
                    },
                )
                .collect();
            (batch, prepared)
        })
        .await
        .expect("restore planning panicked")
    }

    /// Write one prepared batch of files, fetching each pack range once.
    async fn write_batch(
        &self,
        (batch, prepared): Prepared,
        opts: &RestoreOptions,
        col: &Arc<Collector>,
        budget: &Arc<tokio::sync::Semaphore>,
    ) -> Result<(u64, u64)> {
        // Where every blob goes: (job, offset in file).
        type Targets = Vec<(usize, u64)>;
        type PackPlan = (PackKind, HashMap<BlobId, (PackEntry, Targets)>);
        let mut plan: HashMap<PackId, PackPlan> = HashMap::new();
        let remaining: Arc<Vec<AtomicUsize>> =
            Arc::new(batch.iter().map(|_| AtomicUsize::new(0)).collect());
        let damaged: Arc<Vec<AtomicBool>> =
            Arc::new(batch.iter().map(|_| AtomicBool::new(false)).collect());
        for (j, (job, prep)) in batch.iter().zip(prepared).enumerate() {
            let locs = match prep? {
                Ok(l) => l,
                Err(msg) => {
                    col.error(&job.path, msg);
                    damaged[j].store(true, Ordering::Relaxed);
                    continue;
                }
            };
            let mut offset = 0u64;
            for (id, loc) in locs {
                match loc {
                    Some(loc) => {
                        let slot = plan
                            .entry(loc.pack)
                            .or_insert_with(|| (loc.kind, HashMap::new()));
                        slot.1
                            .entry(id)
                            .or_insert_with(|| (loc.entry, Vec::new()))
                            .1
                            .push((j, offset));
                        remaining[j].fetch_add(1, Ordering::Relaxed);
                        offset += loc.entry.raw_length as u64;
                    }
                    None => {
                        col.error(
                            &job.path,
                            format!("chunk {} is missing from the repository", id.short()),
                        );
                        damaged[j].store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        let batch = Arc::new(batch);
        let written = Arc::new(AtomicU64::new(0));
        let restored = Arc::new(AtomicU64::new(0));
        // Files with nothing to fetch (empty, or broken above) are created at their
        // size and finished now.
        for j in 0..batch.len() {
            if remaining[j].load(Ordering::Relaxed) == 0 {
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&batch[j].path)
                    .and_then(|f| f.set_len(batch[j].node.size));
                if let Err(e) = created {
                    col.error(&batch[j].path, format!("cannot create: {e}"));
                    damaged[j].store(true, Ordering::Relaxed);
                }
                finish_file(
                    &batch[j],
                    None,
                    damaged[j].load(Ordering::Relaxed),
                    opts.ownership,
                    col,
                    &restored,
                );
            }
        }

        // Ranges: blobs of a pack sorted by offset, neighbours merged.
        let mut ranges = Vec::new();
        for (pack_id, (kind, blobs)) in plan {
            let mut blobs: Vec<(PackEntry, Targets)> = blobs.into_values().collect();
            blobs.sort_by_key(|b| b.0.offset);
            let mut cur: Vec<(PackEntry, Targets)> = Vec::new();
            for b in blobs {
                if let (Some(first), Some(last)) = (cur.first(), cur.last())
                    && (b.0.offset as u64 > last.0.end() + COALESCE_GAP
                        || b.0.end() - first.0.offset as u64 > MAX_RANGE)
                {
                    ranges.push((pack_id, kind, std::mem::take(&mut cur)));
                }
                cur.push(b);
            }
            if !cur.is_empty() {
                ranges.push((pack_id, kind, cur));
            }
        }
        // Pack order: by pack, then offset.
        ranges.sort_by(|a, b| (a.0, a.2[0].0.offset).cmp(&(b.0, b.2[0].0.offset)));

        let results = futures::stream::iter(ranges.into_iter().map(|(pack_id, kind, blobs)| {
            let budget = budget.clone();
            let (idx, batch, remaining, damaged, col, written, restored) = (
                self.clone(),
                batch.clone(),
                remaining.clone(),
                damaged.clone(),
                col.clone(),
                written.clone(),
                restored.clone(),
            );
            let (ownership, cancel) = (opts.ownership, opts.cancel.clone());
            async move {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                let start = blobs[0].0.offset as u64;
                let end = blobs.last().expect("non-empty").0.end();
                // The range's bytes, and the largest blob decrypted from it (one at a
                // time, into the worker's buffer).
                let largest = blobs.iter().map(|b| b.0.raw_length).max().unwrap_or(0);
                let mib =
                    ((((end - start) + largest as u64) >> 20) as u32 + 1).min(FETCH_BUDGET_MIB);
                let _permit = budget
                    .acquire_many_owned(mib)
                    .await
                    .expect("semaphore never closed");
                let fetched = idx
                    .repo
                    .store
                    .get_range(&pack_name(kind, &pack_id), start..end)
                    .await;
                tokio::task::spawn_blocking(move || {
                    let bytes = match fetched {
                        Ok(b) => Some(b),
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => {
                            for (entry, targets) in &blobs {
                                for (j, _) in targets {
                                    col.error(
                                        &batch[*j].path,
                                        format!("chunk {} unreadable: {e}", entry.id.short()),
                                    );
                                    damaged[*j].store(true, Ordering::Relaxed);
                                }
                            }
                            None
                        }
                    };
                    // Consecutive blobs mostly go to one file: keep it open between them.
                    let mut open: Option<(usize, std::fs::File)> = None;
                    let mut scratch = PLAIN_BUF.take();
                    for (entry, targets) in &blobs {
                        let plain = bytes.as_ref().map(|b| {
                            let from = (entry.offset as u64 - start) as usize;
                            pack::open_blob_into(
                                &idx.repo.keys,
                                entry,
                                &b[from..from + entry.length as usize],
                                &mut scratch,
                            )
                            .map(|()| scratch.as_slice())
                        });
                        for (j, off) in targets {
                            let job = &batch[*j];
                            match &plain {
                                Some(Ok(data)) if !damaged[*j].load(Ordering::Relaxed) => {
                                    let sparse = matches!(
                                        job.node.kind,
                                        NodeKind::File { sparse: true, .. }
                                    );
                                    let mut write = || -> std::io::Result<()> {
                                        if open.as_ref().is_none_or(|(o, _)| o != j) {
                                            open = None;
                                            // Created by whichever worker comes first; no
                                            // truncation: the walk removed any file that
                                            // was in the way, and others may be writing.
                                            let f = std::fs::OpenOptions::new()
                                                .write(true)
                                                .create(true)
                                                .truncate(false)
                                                .open(&job.path)?;
                                            open = Some((*j, f));
                                        }
                                        let f = &open.as_ref().expect("opened above").1;
                                        if sparse {
                                            write_sparse(f, data, *off)
                                        } else {
                                            f.write_all_at(data, *off)
                                        }
                                    };
                                    let w = write();
                                    if let Err(e) = w {
                                        col.error(&job.path, format!("write failed: {e}"));
                                        damaged[*j].store(true, Ordering::Relaxed);
                                    }
                                    written.fetch_add(data.len() as u64, Ordering::Relaxed);
                                    col.progress
                                        .bytes_done
                                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                                }
                                Some(Err(e)) => {
                                    col.error(
                                        &job.path,
                                        format!(
                                            "damaged: blob {} in pack {}: {e}",
                                            entry.id.short(),
                                            pack_id.short()
                                        ),
                                    );
                                    damaged[*j].store(true, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                            if remaining[*j].fetch_sub(1, Ordering::AcqRel) == 1 {
                                // Its last blob: finished through the open file, then
                                // closed.
                                let file = open.take_if(|(o, _)| o == j).map(|(_, f)| f);
                                finish_file(
                                    job,
                                    file.as_ref(),
                                    damaged[*j].load(Ordering::Relaxed),
                                    ownership,
                                    &col,
                                    &restored,
                                );
                            }
                        }
                    }
                    if scratch.capacity() <= PLAIN_BUF_KEEP {
                        PLAIN_BUF.set(scratch);
                    }
                    Ok(())
                })
                .await
                .expect("restore worker panicked")
            }
        }))
        .buffer_unordered(2 * opts.concurrency.max(1))
        .collect::<Vec<Result<()>>>()
        .await;
        for r in results {
            r?;
        }
        Ok((
            written.load(Ordering::Relaxed),
            restored.load(Ordering::Relaxed),
        ))
    }

    /// Write a snapshot's tree (or a sub-path) as a tar stream.
    pub async fn restore_tar<W: Write + Send + 'static>(
        &self,
        root: &SnapshotRoot,
        subpath: &str,
        out: W,
    ) -> Result<W> {
        let SnapshotRoot::Tree(root) = root else {
            return Err(Error::Invalid(
                "this snapshot is a block volume, not a directory tree".into(),
            ));
        };
        let top = self.resolve(root, subpath).await?;
        let (idx, root) = (self.clone(), *root);
        tokio::task::spawn_blocking(move || {
            let handle = tokio::runtime::Handle::current();
            let mut b = tar::Builder::new(out);
            match top {
                None => tar_tree(&idx, &handle, &mut b, Path::new(""), &root)?,
                Some(node) => {
                    tar_node(&idx, &mut b, Path::new(""), &node)?;
                    if let NodeKind::Dir { subtree } = node.kind {
                        tar_tree(
                            &idx,
                            &handle,
                            &mut b,
                            Path::new(OsStr::from_bytes(&node.name)),
                            &subtree,
                        )?;
                    }
                }
            }
            b.into_inner()
                .map_err(|e| Error::io("write", "tar stream", e))
        })
        .await
        .expect("tar task panicked")
    }
}

/// Entries of one directory, depth first, in name order.
fn tar_tree<W: Write>(
    idx: &Indexed,
    handle: &tokio::runtime::Handle,
    b: &mut tar::Builder<W>,
    dir: &Path,
    id: &BlobId,
) -> Result<()> {
    let tree = handle.block_on(idx.read_tree(id))?;
    for n in &tree.nodes {
        tar_node(idx, b, dir, n)?;
        if let NodeKind::Dir { subtree } = n.kind {
            tar_tree(
                idx,
                handle,
                b,
                &dir.join(OsStr::from_bytes(&n.name)),
                &subtree,
            )?;
        }
    }
    Ok(())
}

/// Write `data` at `offset`, leaving all-zero 4 KiB blocks as holes (the file was created
/// at its full length, so holes read as zeros).
fn write_sparse(f: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        // Blocks are aligned to the file, not to the chunk.
        let end = ((((offset as usize + i) / BLOCK) + 1) * BLOCK - offset as usize).min(data.len());
        if data[i..end].iter().all(|b| *b == 0) {
            i = end;
            continue;
        }
        // Extend over following non-zero blocks, then write the run at once.
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + BLOCK).min(data.len());
            if data[run_end..next].iter().all(|b| *b == 0) {
                break;
            }
            run_end = next;
        }
        f.write_all_at(&data[i..run_end], offset + i as u64)?;
        i = run_end;
    }
    Ok(())
}

/// Finish a file: its metadata, through `open` when the caller holds it open.
fn finish_file(
    job: &FileJob,
    open: Option<&std::fs::File>,
    damaged: bool,
    ownership: bool,
    col: &Collector,
    restored: &AtomicU64,
) {
    col.progress.files_done.fetch_add(1, Ordering::Relaxed);
    if damaged {
        // Leave the mtime unset: a rerun will rewrite this file.
        return;
    }
    if let (Some(f), NodeKind::File { sparse: true, .. }) = (open, &job.node.kind)
        && let Err(e) = f.set_len(job.node.size)
    {
        // A sparse file's trailing hole is nothing written: only its length makes it.
        col.error(&job.path, format!("cannot set the length: {e}"));
        return;
    }
    let problems = match open {
        Some(f) => fsmeta::apply_file(f, &job.node, ownership),
        None => fsmeta::apply(&job.path, &job.node, ownership),
    };
    for p in problems {
        col.warn(&job.path, p);
    }
    restored.fetch_add(1, Ordering::Relaxed);
    if job.node.links > 1 {
        col.linked
            .lock()
            .expect("lock")
            .insert((job.node.device, job.node.inode));
    }
}

fn tar_header(node: &Node) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(node.mode & 0o7777);
    h.set_uid(node.uid as u64);
    h.set_gid(node.gid as u64);
    let _ = h.set_username(&node.user);
    let _ = h.set_groupname(&node.group);
    h.set_mtime(node.mtime.seconds.max(0) as u64);
    h.set_size(0);
    h
}

/// One tar entry for a node; file content is fetched blob by blob as it is written.
fn tar_node<W: Write>(
    idx: &Indexed,
    b: &mut tar::Builder<W>,
    dir: &Path,
    node: &Node,
) -> Result<()> {
    let path = dir.join(OsStr::from_bytes(&node.name));
    let mut h = tar_header(node);
    let err = |e: std::io::Error| Error::io("write tar entry", &path, e);
    match &node.kind {
        NodeKind::Dir { .. } => {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &path, std::io::empty()).map_err(err)
        }
        NodeKind::File { content, .. } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(node.size);
            let reader = BlobReader::new(idx.clone(), content.clone());
            b.append_data(&mut h, &path, reader).map_err(err)
        }
        NodeKind::Symlink { target } => {
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, &path, OsStr::from_bytes(target))
                .map_err(err)
        }
        NodeKind::Fifo => {
            h.set_entry_type(tar::EntryType::Fifo);
            b.append_data(&mut h, &path, std::io::empty()).map_err(err)
        }
        NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => {
            h.set_entry_type(if matches!(node.kind, NodeKind::CharDevice { .. }) {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let _ = h.set_device_major(nix::sys::stat::major(*rdev as _) as u32);
            let _ = h.set_device_minor(nix::sys::stat::minor(*rdev as _) as u32);
            b.append_data(&mut h, &path, std::io::empty()).map_err(err)
        }
        NodeKind::Socket => Ok(()),
    }
}

/// Reads a file's content blob by blob, a few blobs ahead.
struct BlobReader {
    idx: Indexed,
    ids: std::collections::VecDeque<BlobId>,
    ahead: std::collections::VecDeque<tokio::task::JoinHandle<Result<Vec<u8>>>>,
    cur: Vec<u8>,
    pos: usize,
    handle: tokio::runtime::Handle,
}

impl BlobReader {
    fn new(idx: Indexed, ids: Vec<BlobId>) -> Self {
        Self {
            idx,
            ids: ids.into(),
            ahead: Default::default(),
            cur: Vec::new(),
            pos: 0,
            handle: tokio::runtime::Handle::current(),
        }
    }
}

impl std::io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            while self.ahead.len() < 4 {
                let Some(id) = self.ids.pop_front() else {
                    break;
                };
                let idx = self.idx.clone();
                self.ahead
                    .push_back(self.handle.spawn(async move { idx.read_blob(&id).await }));
            }
            let Some(next) = self.ahead.pop_front() else {
                return Ok(0);
            };
            self.cur = self
                .handle
                .block_on(next)
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            self.pos = 0;
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
