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
//! an interruption recognises finished files and skips them (by content, or with
//! `SkipSameTime` by size and mtime alone).
//!
//! Nothing is ever written, created, chmodded or chowned through a symbolic link: every
//! entry is made relative to an open directory that was itself opened without following
//! one (see `beneath`), files are created with `O_EXCL`, and a symlink found where the
//! snapshot has a file or a directory is replaced, not followed. An entry whose name folds
//! onto another's (a case-insensitive file system) is refused and reported.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arca_format::{
    BlobId, Node, NodeKind, PackEntry, PackId, PackKind, SnapshotRoot, Timestamp, Tree, pack,
};
use futures::StreamExt;

use crate::backup::ItemProblem;
use crate::beneath::{Root, unlink_in};
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::indexed::{Indexed, pack_name};

/// What to do with a file that already exists at the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Existing {
    /// Leave it when its content is the snapshot's (read and hashed chunk by chunk);
    /// else rewrite it.
    #[default]
    Skip,
    /// Leave it when its size and modification time match the snapshot's, without reading
    /// it (faster; trusts the mtime).
    SkipSameTime,
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
    /// The metadata of the snapshot's top directory (`Snapshot::top`), applied to the
    /// target itself when the whole snapshot is restored.
    pub top: Option<Node>,
    /// Write large files with direct I/O, past the page cache, where the file system
    /// takes it (see `direct`). Off: every byte through the page cache.
    pub direct_io: bool,
}

impl RestoreOptions {
    /// Restore everything into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            subpath: String::new(),
            existing: Existing::Skip,
            ownership: nix::unistd::geteuid().is_root(),
            concurrency: 8,
            cancel: Arc::new(AtomicBool::new(false)),
            top: None,
            direct_io: true,
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
    links: Vec<((u64, u64), PathBuf, PathBuf, bool)>,
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
    links: Vec<((u64, u64), PathBuf, PathBuf, bool)>,
    report: RestoreReport,
}

struct FileJob {
    path: PathBuf,
    node: Node,
    /// A file of the same size is at the path: keep it if its content is the snapshot's.
    verify: bool,
}

/// A job's chunks and where they are (and whether an existing file must be replaced, or
/// can stay), or why its file could not be created.
type JobChunks =
    std::result::Result<(Vec<(BlobId, Option<crate::cache::BlobLocation>)>, Verdict), String>;

/// What to do with a job's path.
#[derive(Debug)]
enum Verdict {
    /// Nothing is there: create the file.
    Create,
    /// A file with other content is there: replace it.
    Replace,
    /// The file there (opened to read it) holds exactly the snapshot's content: leave it.
    Keep(std::fs::File),
    /// The snapshot's content cannot be had (a chunk is missing): leave what is there.
    Unverifiable,
}
/// A batch with its files created and chunks looked up.
type Prepared = (Vec<FileJob>, Vec<Result<JobChunks>>);

/// Files per batch, and content bytes per batch: bounds the plan's memory.
const BATCH_FILES: usize = 8192;
const BATCH_BYTES: u64 = 1 << 30;

thread_local! {
    /// Each worker's buffer for decrypted blobs: no fresh pages per blob.
    static PLAIN_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}
/// Workers keep a buffer up to this size between ranges (the average chunk is 1 MiB).
const PLAIN_BUF_KEEP: usize = 4 << 20;
/// Blobs closer than this in a pack are fetched in one range.
const COALESCE_GAP: u64 = 256 << 10;
/// At most this much per range: still large enough for object stores.
const MAX_RANGE: u64 = 8 << 20;
/// MiB of fetched ranges (and of the blobs decrypted from them) in flight at once: many
/// small ranges may run together, few large ones. This is what bounds a restore's memory.
pub(crate) const FETCH_BUDGET_MIB: u32 = 48;

/// Per pack: its kind, and each blob with where it goes.
pub(crate) type PackPlan<T> = HashMap<PackId, (PackKind, HashMap<BlobId, (PackEntry, T)>)>;
/// One range of a pack to fetch, and its blobs with where each goes.
pub(crate) type PackRange<T> = (PackId, PackKind, Vec<(PackEntry, T)>);

/// The ranges to fetch for a plan: blobs of a pack sorted by offset, neighbours merged, in
/// pack order (by pack, then offset).
pub(crate) fn pack_ranges<T>(plan: PackPlan<T>) -> Vec<PackRange<T>> {
    let mut ranges = Vec::new();
    for (pack_id, (kind, blobs)) in plan {
        let mut blobs: Vec<(PackEntry, T)> = blobs.into_values().collect();
        blobs.sort_by_key(|b| b.0.offset);
        let mut cur: Vec<(PackEntry, T)> = Vec::new();
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
    ranges.sort_by(|a, b| (a.0, a.2[0].0.offset).cmp(&(b.0, b.2[0].0.offset)));
    ranges
}

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
        let root_fd =
            Arc::new(Root::open(&opts.target).map_err(|e| Error::io("open", &opts.target, e))?);
        // Restoring into an empty directory (the usual case) needs no look at what exists:
        // a stat per entry was a fifth of a large restore's walk.
        let fresh = std::fs::read_dir(&opts.target)
            .map_err(|e| Error::io("read", &opts.target, e))?
            .next()
            .is_none();
        let direct = opts.direct_io
            && root_fd
                .open_dir(Path::new("."))
                .is_ok_and(|d| crate::direct::worth_it(&d));

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
                        &root_fd,
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
            let (idx, opts, col, root) = (self.clone(), opts.clone(), col.clone(), root_fd.clone());
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                idx.walk(plan, &opts, &root, &col, &handle, &btx, hold)
            })
        };
        // Two batches are written at once, and the next is prepared as soon as one of
        // them ends, so no core idles at a batch's tail. They share one fetch budget.
        let budget = Arc::new(tokio::sync::Semaphore::new(FETCH_BUDGET_MIB as usize));
        let writes = futures::stream::poll_fn(|cx| brx.poll_recv(cx))
            .then(|b| self.prepare_batch(b, root_fd.clone()))
            .map(|prepared| self.write_batch(prepared, opts, direct, &root_fd, &col, &budget))
            .buffer_unordered(2);
        let mut writes = std::pin::pin!(writes);
        while let Some(done) = writes.next().await {
            let (written, restored, kept) = done?;
            report.bytes_written += written;
            report.files_restored += restored;
            report.files_skipped += kept;
            // Files are on the target, the restore not done: kill tests hold it here.
            self.repo.pauses.at("restore:batch-written").await;
        }
        let walked = walker.await.expect("restore walk panicked")?;
        report.dirs += walked.report.dirs;
        report.others += walked.report.others;
        report.files_skipped += walked.report.files_skipped;

        // Phase 3: hard links to files restored whole, then directory metadata, deepest
        // first.
        let linked = std::mem::take(&mut *col.linked.lock().expect("lock"));
        for (group, first, link, existed) in &walked.links {
            if !linked.contains(group) {
                continue;
            }
            match hard_link_beneath(&root_fd, first, link, *existed) {
                Ok(()) => report.others += 1,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => col.error(
                    link,
                    "not restored: an entry whose name folds onto this one exists (a \
                     case-insensitive file system?)",
                ),
                Err(e) => col.error(link, format!("cannot create hard link: {e}")),
            }
        }
        for (path, node) in walked.dirs.iter().rev() {
            // Through the directory opened without following a symlink: one open
            // instead of several path lookups, and nothing swapped in is changed.
            match root_fd.open_dir(root_fd.rel(path)) {
                Ok(fd) => {
                    for p in fsmeta::apply_file(&std::fs::File::from(fd), node, opts.ownership) {
                        col.warn(path, p);
                    }
                }
                Err(e) => col.warn(path, format!("metadata not applied: {e}")),
            }
        }
        // The snapshot's top directory is the target itself: a 0700 home comes back 0700.
        // Only a target the restore found empty: a directory that held other things keeps
        // its own mode and owner.
        let whole = matches!(opts.subpath.trim_matches('/'), "" | ".");
        if let Some(top) = opts.top.as_ref().filter(|_| whole && fresh) {
            match root_fd.open_dir(Path::new(".")) {
                Ok(fd) => {
                    for p in fsmeta::apply_file(&std::fs::File::from(fd), top, opts.ownership) {
                        col.warn(&opts.target, p);
                    }
                }
                Err(e) => col.warn(&opts.target, format!("metadata not applied: {e}")),
            }
        }
        report.errors = std::mem::take(&mut *col.errors.lock().expect("lock"));
        report.warnings = std::mem::take(&mut *col.warnings.lock().expect("lock"));
        Ok(report)
    }

    /// Phase 1, on a blocking thread: walk the trees left in `plan`, sending batches of
    /// files to `out` (or keeping them all until the end when `hold`).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        mut plan: Plan,
        opts: &RestoreOptions,
        root: &Root,
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
            self.place(&tree, &dir, fresh, opts, root, col, &mut report, &mut plan)?;
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

    /// Create the entries of one tree under `dir`; queue files and subdirectories. Every
    /// entry is made relative to `dir` opened without following a symlink.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        tree: &Tree,
        dir: &Path,
        fresh: bool,
        opts: &RestoreOptions,
        root: &Root,
        col: &Collector,
        report: &mut RestoreReport,
        plan: &mut Plan,
    ) -> Result<()> {
        use nix::sys::stat::{Mode, SFlag};
        let Plan {
            jobs,
            dirs,
            groups,
            links,
            stack,
        } = plan;
        let dfd = match root.open_dir(root.rel(dir)) {
            Ok(fd) => fd,
            Err(e) => {
                col.error(dir, format!("not restored: {e}"));
                return Ok(());
            }
        };
        // Names really in the directory, read once when first needed: on a case-folding
        // file system a lookup of "foo" also finds "FOO".
        let mut listing: Option<Option<std::collections::HashSet<Vec<u8>>>> = None;
        let fail_on = |path: &Path| -> Result<()> {
            if opts.existing == Existing::Fail {
                return Err(Error::Invalid(format!(
                    "{} exists (--existing fail)",
                    path.display()
                )));
            }
            Ok(())
        };
        let folds = |path: &Path| {
            format!(
                "not restored: another entry of this directory has a name that folds onto \
                 {:?} (a case-insensitive file system?)",
                path.file_name().unwrap_or_default()
            )
        };
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
            let name = OsStr::from_bytes(&node.name);
            let path = node_path(dir, &node.name);
            if let Some(d) = &node.damage {
                col.error(&path, format!("damaged in the repository: {d}"));
            }
            let existing = if fresh {
                None
            } else {
                match nix::sys::stat::fstatat(&dfd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                {
                    Ok(st) => Some(st),
                    Err(nix::errno::Errno::ENOENT) => None,
                    Err(e) => {
                        col.error(&path, format!("cannot look at what is there: {e}"));
                        continue;
                    }
                }
            };
            if existing.is_some() {
                // A directory that cannot be listed gets no fold check.
                let names = listing.get_or_insert_with(|| {
                    std::fs::read_dir(dir).ok().map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| e.file_name().as_bytes().to_vec())
                            .collect()
                    })
                });
                if names.as_ref().is_some_and(|n| !n.contains(&node.name)) {
                    col.error(&path, folds(&path));
                    continue;
                }
            }
            let kind_of = |st: &nix::sys::stat::FileStat| {
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
            };
            let is_dir = existing
                .as_ref()
                .is_some_and(|st| kind_of(st) == SFlag::S_IFDIR);
            let unlink = || unlink_in(&dfd, name);
            // What stands where a file, link or device goes is removed (never followed);
            // a directory in the way is reported and left.
            let clear = || {
                if is_dir {
                    col.error(&path, "a directory is in the way");
                    return false;
                }
                unlink()
                    .map_err(|e| col.error(&path, format!("cannot replace: {e}")))
                    .is_ok()
            };
            match &node.kind {
                NodeKind::Dir { subtree } => {
                    if existing.is_some() && !is_dir {
                        fail_on(&path)?;
                        // A file or a symlink where the snapshot has a directory: replaced,
                        // never followed.
                        if let Err(e) = unlink() {
                            col.error(&path, format!("cannot replace with a directory: {e}"));
                            continue;
                        }
                    }
                    if !is_dir {
                        // Closed to others until its own metadata is applied at the end.
                        match nix::sys::stat::mkdirat(&dfd, name, Mode::from_bits_truncate(0o700)) {
                            Ok(()) => {}
                            Err(nix::errno::Errno::EEXIST) => {
                                col.error(&path, folds(&path));
                                continue;
                            }
                            Err(e) => {
                                return Err(Error::io("create directory", &path, e.into()));
                            }
                        }
                    }
                    report.dirs += 1;
                    dirs.push((path.clone(), node.clone()));
                    stack.push((*subtree, path, !is_dir));
                }
                NodeKind::File { .. } => {
                    let group = (node.device, node.inode);
                    if node.links > 1
                        && let Some(first) = groups.get(&group)
                    {
                        if existing.is_some() {
                            fail_on(&path)?;
                        }
                        links.push((group, first.clone(), path, existing.is_some()));
                        continue;
                    }
                    let mut verify = false;
                    if let Some(st) = &existing {
                        fail_on(&path)?;
                        let is_file = kind_of(st) == SFlag::S_IFREG;
                        let same_size = is_file && st.st_size as u64 == node.size;
                        match opts.existing {
                            Existing::SkipSameTime
                                if same_size
                                    && Timestamp::new(st.st_mtime, st.st_mtime_nsec as u32)
                                        == node.mtime =>
                            {
                                report.files_skipped += 1;
                                col.progress.files_done.fetch_add(1, Ordering::Relaxed);
                                col.progress.total_files.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            // Kept if its content is the snapshot's: read when the batch
                            // is prepared.
                            Existing::Skip if same_size => verify = true,
                            // Replace rather than write into it: it may be read-only, a
                            // symlink, or a hard link whose other names must not change.
                            _ if !clear() => continue,
                            _ => {}
                        }
                    }
                    if node.links > 1 {
                        groups.insert(group, path.clone());
                    }
                    jobs.push_back(FileJob {
                        path,
                        node: node.clone(),
                        verify,
                    });
                }
                other => {
                    if existing.is_some() {
                        fail_on(&path)?;
                        if let NodeKind::Symlink { target } = other
                            && nix::fcntl::readlinkat(&dfd, name)
                                .is_ok_and(|t| t.as_bytes() == target.as_slice())
                        {
                            report.others += 1;
                            continue;
                        }
                        if !clear() {
                            continue;
                        }
                    }
                    let perm = Mode::from_bits_truncate(0o600);
                    let made = match other {
                        NodeKind::Symlink { target } => {
                            nix::unistd::symlinkat(OsStr::from_bytes(target), &dfd, name)
                        }
                        NodeKind::Fifo => nix::unistd::mkfifoat(&dfd, name, perm),
                        NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => {
                            let kind = if matches!(other, NodeKind::CharDevice { .. }) {
                                SFlag::S_IFCHR
                            } else {
                                SFlag::S_IFBLK
                            };
                            nix::sys::stat::mknodat(&dfd, name, kind, perm, *rdev as _)
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
                            for p in fsmeta::apply_at(&dfd, name, &path, node, opts.ownership) {
                                col.warn(&path, p);
                            }
                        }
                        Err(nix::errno::Errno::EEXIST) => col.error(&path, folds(&path)),
                        Err(e) => col.error(&path, format!("cannot create: {e}")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Look up a batch's chunks, on every core.
    async fn prepare_batch(&self, batch: Vec<FileJob>, root: Arc<Root>) -> Prepared {
        let idx = self.clone();
        tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            let prepared: Vec<Result<JobChunks>> = batch
                .par_iter()
                .map_init(
                    || idx.index.session(),
                    |l, job| {
                        let NodeKind::File { content, .. } = &job.node.kind else {
                            return Ok(Ok((Vec::new(), Verdict::Create)));
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
                        let verdict = if job.verify {
                            same_content(&idx, &root, job, &locs)
                        } else {
                            Verdict::Create
                        };
                        Ok(Ok((locs, verdict)))
                    },
                )
                .collect();
            (batch, prepared)
        })
        .await
        .expect("restore planning panicked")
    }

    /// Write one prepared batch of files, fetching each pack range once; large files with
    /// direct I/O when `direct`.
    async fn write_batch(
        &self,
        (batch, prepared): Prepared,
        opts: &RestoreOptions,
        direct: bool,
        root: &Arc<Root>,
        col: &Arc<Collector>,
        budget: &Arc<tokio::sync::Semaphore>,
    ) -> Result<(u64, u64, u64)> {
        // Where every blob goes: (job, offset in file).
        type Targets = Vec<(usize, u64)>;
        let mut plan: PackPlan<Targets> = HashMap::new();
        let remaining: Arc<Vec<AtomicUsize>> =
            Arc::new(batch.iter().map(|_| AtomicUsize::new(0)).collect());
        let damaged: Arc<Vec<AtomicBool>> =
            Arc::new(batch.iter().map(|_| AtomicBool::new(false)).collect());
        // Who creates each file: the first worker with a blob for it (or the loop below);
        // and whether it is written directly.
        let created: Arc<Vec<Created>> =
            Arc::new(batch.iter().map(|_| std::sync::OnceLock::new()).collect());
        let edges: Arc<Vec<crate::direct::Edges>> =
            Arc::new(batch.iter().map(|_| Default::default()).collect());
        let kept = Arc::new(AtomicU64::new(0));
        let mut skip = vec![false; batch.len()];
        for (j, (job, prep)) in batch.iter().zip(prepared).enumerate() {
            let locs = match prep? {
                Ok((_, Verdict::Unverifiable)) => {
                    skip[j] = true;
                    col.progress.files_done.fetch_add(1, Ordering::Relaxed);
                    col.error(
                        &job.path,
                        "a chunk of it is missing from the repository: the existing file \
                         was left as it is",
                    );
                    continue;
                }
                Ok((_, Verdict::Keep(file))) => {
                    skip[j] = true;
                    kept.fetch_add(1, Ordering::Relaxed);
                    col.progress.files_done.fetch_add(1, Ordering::Relaxed);
                    // Same content, maybe other metadata (an interrupted restore sets the
                    // mtime last): applied, unless the file has other names outside.
                    keep_metadata(&file, job, opts.ownership, col);
                    if job.node.links > 1 {
                        // Whole as it is: its other names are linked to it at the end.
                        col.linked
                            .lock()
                            .expect("lock")
                            .insert((job.node.device, job.node.inode));
                    }
                    continue;
                }
                Ok((l, Verdict::Replace)) => {
                    if let Err(e) = unlink_beneath(root, &job.path) {
                        col.error(&job.path, format!("cannot replace: {e}"));
                        skip[j] = true;
                        col.progress.files_done.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    l
                }
                Ok((l, Verdict::Create)) => l,
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
            if offset != job.node.size && !damaged[j].load(Ordering::Relaxed) {
                col.error(
                    &job.path,
                    format!(
                        "damaged in the repository: its chunks hold {offset} bytes, not the \
                         {} recorded; restored as the chunks have it",
                        job.node.size
                    ),
                );
                damaged[j].store(true, Ordering::Relaxed);
            }
        }
        let batch = Arc::new(batch);
        let written = Arc::new(AtomicU64::new(0));
        let restored = Arc::new(AtomicU64::new(0));
        // Files with nothing to fetch (empty, or broken above) are created at their
        // size and finished now.
        for j in 0..batch.len() {
            if skip[j] || remaining[j].load(Ordering::Relaxed) != 0 {
                continue;
            }
            let file = match open_job(root, &batch[j], &created[j], direct) {
                Ok((f, _)) => f
                    .set_len(batch[j].node.size)
                    .map(|()| f)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let file = match file {
                Ok(f) => Some(f),
                Err(e) => {
                    col.error(&batch[j].path, e);
                    damaged[j].store(true, Ordering::Relaxed);
                    None
                }
            };
            finish_file(
                root,
                &batch[j],
                file.as_ref(),
                damaged[j].load(Ordering::Relaxed),
                opts.ownership,
                col,
                &restored,
            );
        }

        let ranges = pack_ranges(plan);

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
            let (root, created, edges) = (root.clone(), created.clone(), edges.clone());
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
                    // Consecutive blobs mostly go to one file: keep it open between them
                    // (and whether it is written directly).
                    let mut open: Option<(usize, std::fs::File, bool)> = None;
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
                                    let mut write = || -> std::result::Result<(), String> {
                                        if open.as_ref().is_none_or(|(o, _, _)| o != j) {
                                            open = None;
                                            // Created (O_EXCL) by whichever worker comes
                                            // first; the others open what it made.
                                            let (f, d) =
                                                open_job(&root, job, &created[*j], direct)?;
                                            open = Some((*j, f, d));
                                        }
                                        let (_, f, d) = open.as_ref().expect("opened above");
                                        if *d {
                                            crate::direct::write(
                                                f,
                                                &edges[*j],
                                                data,
                                                *off,
                                                job.node.size,
                                                sparse,
                                            )
                                        } else if sparse {
                                            write_sparse(f, data, *off)
                                        } else {
                                            f.write_all_at(data, *off)
                                        }
                                        .map_err(|e| format!("write failed: {e}"))
                                    };
                                    let w = write();
                                    if let Err(e) = w {
                                        col.error(&job.path, e);
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
                                let (file, d) = match open.take_if(|(o, _, _)| o == j) {
                                    Some((_, f, d)) => (Some(f), d),
                                    None => (None, false),
                                };
                                if let (true, Some(f)) = (d, &file)
                                    && let Err(e) = edges[*j].finish(f, job.node.size)
                                {
                                    col.error(&job.path, format!("cannot finish: {e}"));
                                    damaged[*j].store(true, Ordering::Relaxed);
                                }
                                finish_file(
                                    &root,
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
            kept.load(Ordering::Relaxed),
        ))
    }

    /// Write a snapshot's tree (or a sub-path) as a tar stream. Returns the writer and
    /// the files that could not be written whole (left out, or padded with zeros to their
    /// recorded size): the stream itself always stays well-formed.
    pub async fn restore_tar<W: Write + Send + 'static>(
        &self,
        root: &SnapshotRoot,
        subpath: &str,
        out: W,
    ) -> Result<(W, Vec<ItemProblem>)> {
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
            let mut problems = Vec::new();
            match top {
                None => tar_tree(&idx, &handle, &mut b, Path::new(""), &root, &mut problems)?,
                Some(node) => {
                    tar_node(&idx, &mut b, Path::new(""), &node, &mut problems)?;
                    if let NodeKind::Dir { subtree } = node.kind {
                        tar_tree(
                            &idx,
                            &handle,
                            &mut b,
                            Path::new(OsStr::from_bytes(&node.name)),
                            &subtree,
                            &mut problems,
                        )?;
                    }
                }
            }
            let w = b
                .into_inner()
                .map_err(|e| Error::io("write", "tar stream", e))?;
            Ok((w, problems))
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
    problems: &mut Vec<ItemProblem>,
) -> Result<()> {
    let tree = handle.block_on(idx.read_tree(id))?;
    for n in &tree.nodes {
        if arca_format::check_name(&n.name).is_err() {
            problems.push(ItemProblem {
                path: dir.to_path_buf(),
                message: format!(
                    "skipped an entry with an unsafe name {:?}",
                    String::from_utf8_lossy(&n.name)
                ),
            });
            continue;
        }
        tar_node(idx, b, dir, n, problems)?;
        if let NodeKind::Dir { subtree } = n.kind {
            tar_tree(
                idx,
                handle,
                b,
                &dir.join(OsStr::from_bytes(&n.name)),
                &subtree,
                problems,
            )?;
        }
    }
    Ok(())
}

/// Whether a job's file was made (by whichever worker came first), and if so whether it
/// is written with direct I/O; or why it could not be.
type Created = std::sync::OnceLock<std::result::Result<bool, String>>;

/// Open a job's file for writing, never through a symlink: the first caller creates it
/// with `O_EXCL` (so nothing that appeared at the path since the walk is written into),
/// the others open what it created. A file of
/// `direct::DIRECT_MIN` bytes or more is made at its full size and opened with `O_DIRECT`
/// when `direct` (and the file system takes it); the second value says which.
fn open_job(
    root: &Root,
    job: &FileJob,
    created: &Created,
    direct: bool,
) -> std::result::Result<(std::fs::File, bool), String> {
    use nix::fcntl::OFlag;
    let rel = root.rel(&job.path);
    let mut mine = None;
    let r = created.get_or_init(|| {
        match root.open_at(
            rel,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => {
                let f = std::fs::File::from(fd);
                let d = if direct && job.node.size >= crate::direct::DIRECT_MIN {
                    // At its size first: the direct writes land inside the file (only
                    // the padded last block reaches past it, cut back at the end).
                    f.set_len(job.node.size)
                        .and_then(|()| crate::direct::set(&f, true))
                        .map_err(|e| format!("cannot create: {e}"))?
                } else {
                    false
                };
                mine = Some(f);
                Ok(d)
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(
                "not restored: an entry whose name folds onto this one exists (a \
                 case-insensitive file system?), or one appeared during the restore"
                    .to_string(),
            ),
            Err(e) => Err(format!("cannot create: {e}")),
        }
    });
    let d = r.clone()?;
    if let Some(f) = mine {
        return Ok((f, d));
    }
    let f = root
        .open_at(rel, OFlag::O_WRONLY, nix::sys::stat::Mode::empty())
        .map(std::fs::File::from)
        .map_err(|e| format!("cannot open: {e}"))?;
    if d {
        crate::direct::set(&f, true).map_err(|e| format!("cannot open: {e}"))?;
    }
    Ok((f, d))
}

/// Apply a kept file's metadata through the file, when it has a single name (another name
/// may be outside the target, whose metadata is not the restore's to change).
fn keep_metadata(f: &std::fs::File, job: &FileJob, ownership: bool, col: &Collector) {
    if f.metadata()
        .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) == 1)
    {
        for p in fsmeta::apply_file(f, &job.node, ownership) {
            col.warn(&job.path, p);
        }
    }
}

/// Remove the file at `path` (under the root), never through a symlink.
fn unlink_beneath(root: &Root, path: &Path) -> std::io::Result<()> {
    let (dir, name) = root.parent_of(path)?;
    unlink_in(&dir, &name)
}

/// Link `link` to `first` (both under the root), never through a symlink. What stood at
/// `link` when the walk looked (`replace`) is removed first; nothing else is, so a name
/// that folds onto another entry fails with EEXIST instead of removing that entry.
fn hard_link_beneath(root: &Root, first: &Path, link: &Path, replace: bool) -> std::io::Result<()> {
    let (fd, fname) = root.parent_of(first)?;
    let (ld, lname) = root.parent_of(link)?;
    if replace {
        unlink_in(&ld, &lname)?;
    }
    nix::unistd::linkat(
        &fd,
        fname.as_os_str(),
        &ld,
        lname.as_os_str(),
        nix::fcntl::AtFlags::empty(),
    )
    .map_err(std::io::Error::from)
}

/// Whether the file at a job's path holds exactly the snapshot's content: its chunks read
/// in turn and hashed as the backup hashed them. Any doubt (a chunk not in the index, a
/// read error) means it is replaced.
fn same_content(
    idx: &Indexed,
    root: &Root,
    job: &FileJob,
    locs: &[(BlobId, Option<crate::cache::BlobLocation>)],
) -> Verdict {
    use nix::fcntl::OFlag;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(fd) = root.open_at(
        root.rel(&job.path),
        OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Verdict::Replace;
    };
    let f = std::fs::File::from(fd);
    let mut off = 0u64;
    let same = BUF.with(|b| {
        let mut buf = b.borrow_mut();
        for (id, loc) in locs {
            let Some(loc) = loc else { return None };
            let n = loc.entry.raw_length as usize;
            buf.resize(n, 0);
            if f.read_exact_at(&mut buf, off).is_err()
                || idx.repo.keys.blob_id(arca_format::BlobType::Data, &buf) != *id
            {
                return Some(false);
            }
            off += n as u64;
        }
        if buf.capacity() > PLAIN_BUF_KEEP {
            *buf = Vec::new();
        }
        Some(off == job.node.size)
    });
    match same {
        Some(true) => Verdict::Keep(f),
        Some(false) => Verdict::Replace,
        None => Verdict::Unverifiable,
    }
}

/// Write `data` at `offset`, leaving all-zero 4 KiB blocks as holes (the file was created
/// at its full length, so holes read as zeros).
pub(crate) fn write_sparse(f: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
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
    root: &Root,
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
    let reopened;
    let f = match open {
        Some(f) => f,
        None => match root.open_at(
            root.rel(&job.path),
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => {
                reopened = std::fs::File::from(fd);
                &reopened
            }
            Err(e) => {
                col.error(&job.path, format!("cannot open to finish: {e}"));
                return;
            }
        },
    };
    let problems = fsmeta::apply_file(f, &job.node, ownership);
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
    problems: &mut Vec<ItemProblem>,
) -> Result<()> {
    let path = dir.join(OsStr::from_bytes(&node.name));
    let mut h = tar_header(node);
    let err = |e: std::io::Error| Error::io("write tar entry", &path, e);
    if let Some(d) = &node.damage {
        problems.push(ItemProblem {
            path: path.clone(),
            message: format!("damaged in the repository: {d}"),
        });
    }
    match &node.kind {
        NodeKind::Dir { .. } => {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &path, std::io::empty()).map_err(err)
        }
        NodeKind::File { content, .. } => {
            // The header promises a size: the chunks must add up to it before it is
            // written, or the stream would lose its framing.
            let mut total = 0u64;
            for id in content {
                match idx.locate(id) {
                    Ok(loc) => total += loc.entry.raw_length as u64,
                    Err(e) => {
                        problems.push(ItemProblem {
                            path,
                            message: format!("left out: {e}"),
                        });
                        return Ok(());
                    }
                }
            }
            if total != node.size {
                problems.push(ItemProblem {
                    path,
                    message: format!(
                        "left out: its chunks hold {total} bytes, its recorded size is {}",
                        node.size
                    ),
                });
                return Ok(());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(node.size);
            let failed = Arc::new(Mutex::new(None));
            let reader = ExactReader {
                inner: BlobReader::new(idx.clone(), content.clone()),
                left: node.size,
                failed: failed.clone(),
            };
            b.append_data(&mut h, &path, reader).map_err(err)?;
            if let Some(why) = failed.lock().expect("lock").take() {
                problems.push(ItemProblem {
                    path,
                    message: format!("padded with zeros to its size: {why}"),
                });
            }
            Ok(())
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

/// Gives exactly `left` bytes whatever the inner reader does: if it fails or ends early,
/// the rest is zeros and the failure is recorded, so that a tar entry never disagrees with
/// its header.
struct ExactReader<R> {
    inner: R,
    left: u64,
    failed: Arc<Mutex<Option<String>>>,
}

impl<R: std::io::Read> std::io::Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // More than recorded is as wrong as less: cut, and said.
            let mut failed = self.failed.lock().expect("lock");
            if failed.is_none() && self.inner.read(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
                *failed = Some("longer than its recorded size; cut".into());
            }
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let mut failed = self.failed.lock().expect("lock");
        let n = if failed.is_some() {
            0
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    *failed = Some(format!("{} bytes short", self.left));
                    0
                }
                Ok(n) => n,
                Err(e) => {
                    *failed = Some(e.to_string());
                    0
                }
            }
        };
        let n = if n == 0 {
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
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
