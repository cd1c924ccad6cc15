//! Backup of directory trees.
//!
//! Three parties run at once, joined by bounded channels:
//! - the **walker** (one thread) lists directories in name order, `lstat`s each entry,
//!   decides from the parent snapshot which files need reading, and emits events;
//! - the **readers** (a rayon pool) read, chunk, hash, compress and encrypt files through
//!   the [`Writer`];
//! - the **assembler** (the calling blocking thread) consumes the events in walk order,
//!   waits for each file's chunk list, and builds and stores the tree blobs bottom-up.
//!
//! The walker may run ahead of the assembler only as far as the event channel and the
//! in-flight-files gate allow, so memory stays bounded for any tree.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

use arca_format::{
    BlobId, BlobType, Compression, Node, NodeKind, SessionKind, Snapshot, SnapshotId, SnapshotRoot,
    Summary, Timestamp, Tree,
};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tokio::runtime::Handle;

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::fsmeta::{self, Names};
use crate::indexed::Indexed;
use crate::repo::Identity;
use crate::session::SessionGuard;
use crate::snapshots::SnapshotFilter;
use crate::writer::Writer;

/// Tree blobs are split before their plaintext passes this (FORMAT.md section 12).
const MAX_TREE_BLOB: usize = 16 << 20;
/// Events travel from the walker to the assembler in batches: one wake-up per batch, not
/// per file (per-event hand-offs cost more than the walk itself on an unchanged tree).
const EVENT_BATCH: usize = 256;
const EVENT_QUEUE: usize = 16;
/// Most chunks one file may have in format v1: its list must fit in one tree blob
/// (34 bytes per entry; about 780 GB at the default 1 MiB average chunk).
const MAX_CONTENT_IDS: usize = 750_000;

/// Which snapshot a backup is incremental against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Parent {
    /// The newest snapshot of the same host and paths.
    #[default]
    Auto,
    /// None: read every file.
    None,
    /// This one.
    Snapshot(SnapshotId),
}

/// What to back up and how.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Labels of the snapshot.
    pub labels: BTreeMap<String, String>,
    /// Incremental against which snapshot.
    pub parent: Parent,
    /// Glob patterns to leave out: with a `/`, matched against the whole path; without,
    /// against the file name. `**` crosses directories.
    pub excludes: Vec<String>,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    /// Compression of data (the repository's default when `None`).
    pub compression: Option<Compression>,
    /// Reader threads (0: one per core, at least 2).
    pub threads: usize,
    /// Host and user recorded in the snapshot.
    pub identity: Identity,
    /// Set to stop the backup early (it then fails with `Cancelled`).
    pub cancel: Arc<AtomicBool>,
    /// Count the files and bytes to do first, for progress with an ETA.
    pub scan_totals: bool,
    /// How often uploaded data is made reusable (an index file written), so that an
    /// interrupted backup loses at most this much work.
    pub checkpoint: std::time::Duration,
}

impl BackupOptions {
    /// Back up `paths` with everything else at its default.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            tags: Vec::new(),
            labels: BTreeMap::new(),
            parent: Parent::Auto,
            excludes: Vec::new(),
            one_file_system: false,
            compression: None,
            threads: 0,
            identity: Identity::current(),
            cancel: Arc::new(AtomicBool::new(false)),
            scan_totals: false,
            checkpoint: crate::writer::DEFAULT_CHECKPOINT,
        }
    }
}

/// Live counters for progress displays.
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Files finished (read or found unchanged).
    pub files_done: AtomicU64,
    /// Bytes of file content finished (read, or found unchanged).
    pub bytes_done: AtomicU64,
    /// Bytes of content actually read from the source.
    pub bytes_read: AtomicU64,
    /// Files to do, once the scan finished.
    pub total_files: AtomicU64,
    /// Bytes to do, once the scan finished.
    pub total_bytes: AtomicU64,
    /// Whether the totals are final.
    pub scan_done: AtomicBool,
    /// Items that could not be read.
    pub errors: AtomicU64,
    /// The writer's counters (bytes stored so far), once the backup started writing.
    pub written: std::sync::OnceLock<Arc<crate::writer::WriteStats>>,
}

/// A file or directory the backup had trouble with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemProblem {
    /// Its path.
    pub path: PathBuf,
    /// What happened.
    pub message: String,
}

/// The result of a backup.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The new snapshot.
    pub id: SnapshotId,
    /// Its manifest.
    pub snapshot: Snapshot,
    /// Items left out because they could not be read: the backup is partial.
    pub errors: Vec<ItemProblem>,
    /// Items backed up with a caveat (changed while being read).
    pub warnings: Vec<ItemProblem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    New,
    Changed,
    Unmodified,
}

enum FileOutcome {
    Done {
        content: Vec<BlobId>,
        size: u64,
        changed: bool,
    },
    Unreadable(String),
    Fatal(Error),
}

enum Pending {
    Ready(Node, Status),
    File {
        node: Node,
        status: Status,
        path: PathBuf,
        /// With the first file of a read batch: the outcomes of the whole batch.
        batch: Option<Receiver<Vec<FileOutcome>>>,
    },
}

enum Event {
    Enter {
        node: Option<Node>,
        status: Status,
        parent_subtree: Option<BlobId>,
    },
    Item(Pending),
    Leave,
    Problem(ItemProblem),
}

/// The walker's side of the event channel: buffers events and sends them in batches, and
/// gathers files to read into [`ReadBatch`]es.
struct Events {
    tx: SyncSender<Vec<Event>>,
    buf: std::cell::RefCell<Vec<Event>>,
    ctx: Arc<Ctx>,
    open: std::cell::RefCell<Option<ReadBatch>>,
}

/// Files read as one reader task, in walk order. One hand-off per batch rather than per
/// file: with a wake-up per file, scheduling was a quarter of a small-file backup's CPU.
struct ReadBatch {
    files: Vec<(PathBuf, Metadata)>,
    bytes: u64,
    tx: SyncSender<Vec<FileOutcome>>,
}

/// A batch is handed to the readers at this many files or bytes, whichever comes first.
const READ_BATCH_FILES: usize = 64;
const READ_BATCH_BYTES: u64 = 4 << 20;

impl Events {
    fn send(&self, e: Event) -> Result<()> {
        let mut buf = self.buf.borrow_mut();
        buf.push(e);
        if buf.len() < EVENT_BATCH {
            return Ok(());
        }
        let full = std::mem::replace(&mut *buf, Vec::with_capacity(EVENT_BATCH));
        drop(buf);
        self.submit();
        self.tx.send(full).map_err(|_| Error::Cancelled)
    }

    fn flush(&self) -> Result<()> {
        self.submit();
        let rest = std::mem::take(&mut *self.buf.borrow_mut());
        if rest.is_empty() {
            return Ok(());
        }
        self.tx.send(rest).map_err(|_| Error::Cancelled)
    }

    /// Queue `path` for reading. The receiver comes with the first file of a batch: the
    /// assembler takes the batch's outcomes from it, one per file, in this order.
    fn read(&self, path: &Path, meta: Metadata) -> Option<Receiver<Vec<FileOutcome>>> {
        let mut open = self.open.borrow_mut();
        let mut first = None;
        let batch = open.get_or_insert_with(|| {
            let (tx, rx) = sync_channel(1);
            first = Some(rx);
            ReadBatch {
                files: Vec::new(),
                bytes: 0,
                tx,
            }
        });
        batch.bytes += meta.len();
        batch.files.push((path.to_path_buf(), meta));
        let full = batch.files.len() >= READ_BATCH_FILES || batch.bytes >= READ_BATCH_BYTES;
        drop(open);
        if full {
            self.submit();
        }
        first
    }

    /// Hand the open batch to the readers. Runs before every send on the event channel,
    /// so the assembler never waits for a batch that no reader has.
    fn submit(&self) {
        let Some(batch) = self.open.borrow_mut().take() else {
            return;
        };
        self.ctx.gate.enter();
        let c = self.ctx.clone();
        self.ctx.pool.spawn(move || {
            let out = batch
                .files
                .iter()
                .map(|(path, meta)| read_file(&c, path, meta))
                .collect();
            c.gate.leave();
            let _ = batch.tx.send(out);
        });
    }
}

/// Counting gate: at most `limit` read batches in flight.
struct Gate {
    /// Batches in flight, and whether the walker waits.
    n: Mutex<(usize, bool)>,
    cv: Condvar,
    limit: usize,
}

impl Gate {
    fn enter(&self) {
        let mut n = self.n.lock().expect("lock");
        while n.0 >= self.limit {
            n.1 = true;
            n = self.cv.wait(n).expect("lock");
        }
        n.0 += 1;
    }

    fn leave(&self) {
        let mut n = self.n.lock().expect("lock");
        n.0 -= 1;
        // Wake a waiting walker once half the slots are free, not at every batch: each
        // wake-up is a context switch, and the walker then fills several slots at once.
        if n.1 && n.0 <= self.limit / 2 {
            n.1 = false;
            drop(n);
            self.cv.notify_one();
        }
    }
}

fn excludes(patterns: &[String]) -> Result<(GlobSet, GlobSet)> {
    let (mut by_path, mut by_name) = (GlobSetBuilder::new(), GlobSetBuilder::new());
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Invalid(format!("exclude pattern {p:?}: {e}")))?;
        if p.contains('/') {
            by_path.add(glob);
        } else {
            by_name.add(glob);
        }
    }
    let build = |b: GlobSetBuilder| {
        b.build()
            .map_err(|e| Error::Invalid(format!("exclude patterns: {e}")))
    };
    Ok((build(by_path)?, build(by_name)?))
}

/// Everything the walker and readers share.
struct Ctx {
    idx: Indexed,
    handle: Handle,
    writer: Arc<Writer>,
    chunker: Arc<Chunker>,
    progress: Arc<BackupProgress>,
    cancel: Arc<AtomicBool>,
    exclude_path: GlobSet,
    exclude_name: GlobSet,
    one_file_system: bool,
    pool: rayon::ThreadPool,
    gate: Arc<Gate>,
}

impl Ctx {
    fn excluded(&self, path: &Path, name: &OsStr) -> bool {
        self.exclude_name.is_match(Path::new(name)) || self.exclude_path.is_match(path)
    }

    fn parent_tree(&self, subtree: Option<BlobId>, path: &Path, tx: &Events) -> Option<Tree> {
        let id = subtree?;
        match self.handle.block_on(self.idx.read_tree(&id)) {
            Ok(t) => Some(t),
            Err(e) => {
                // Not fatal: the directory is read in full instead.
                let _ = tx.send(Event::Problem(ItemProblem {
                    path: path.to_path_buf(),
                    message: format!(
                        "warning: parent snapshot's tree unreadable, reading all: {e}"
                    ),
                }));
                None
            }
        }
    }
}

impl Indexed {
    /// Back up directory trees into a new snapshot.
    pub async fn backup(
        &self,
        opts: BackupOptions,
        progress: Arc<BackupProgress>,
    ) -> Result<BackupReport> {
        if opts.paths.is_empty() {
            return Err(Error::Invalid(
                "nothing to back up: give at least one path".into(),
            ));
        }
        let mut paths = Vec::with_capacity(opts.paths.len());
        for p in &opts.paths {
            let abs = std::path::absolute(p).map_err(|e| Error::io("resolve", p, e))?;
            std::fs::symlink_metadata(&abs).map_err(|e| Error::io("read", &abs, e))?;
            paths.push(abs);
        }
        paths.sort();
        paths.dedup();
        let path_bytes: Vec<Vec<u8>> = paths
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();

        // One directory backed up: its own metadata goes into the manifest (the root tree
        // holds only its content), so that a 0700 home comes back 0700.
        let top = match paths.as_slice() {
            [only] => match std::fs::symlink_metadata(only) {
                Ok(m) if m.is_dir() => Some(crate::fsmeta::node_from(
                    std::ffi::OsStr::new(""),
                    &m,
                    NodeKind::Dir {
                        subtree: BlobId([0; 32]),
                    },
                    &mut Names::default(),
                    crate::fsmeta::read_xattrs(only).unwrap_or_default(),
                )),
                _ => None,
            },
            _ => None,
        };

        // The session first, then a fresh look at the index: maintenance relies on every
        // writer's view of the index being newer than its session's start.
        let session = SessionGuard::start(&self.repo, SessionKind::Backup, &opts.identity).await?;
        self.resync().await?;
        self.repo.pauses.at("backup:index-read").await;

        let parent = match &opts.parent {
            Parent::None => None,
            Parent::Snapshot(id) => Some((*id, self.repo.snapshot(id).await?)),
            Parent::Auto => {
                self.previous(&opts.identity.host, &path_bytes, false)
                    .await?
            }
        };
        let parent_root = match parent.as_ref().map(|p| &p.1.root) {
            Some(SnapshotRoot::Tree(t)) => Some(*t),
            _ => None,
        };

        let start = Timestamp::now();
        let compression = opts.compression.unwrap_or(self.repo.config.compression);
        let writer = Arc::new(Writer::new(self, compression, session.liveness()));
        writer.set_checkpoint(opts.checkpoint);
        let _ = progress.written.set(writer.stats());
        let threads = reader_threads(opts.threads);
        let (exclude_path, exclude_name) = excludes(&opts.excludes)?;
        let ctx = Arc::new(Ctx {
            idx: self.clone(),
            handle: Handle::current(),
            writer: writer.clone(),
            chunker: Arc::new(Chunker::new(
                &self.repo.config.chunker,
                self.repo.keys.chunker_seed(),
            )),
            progress: progress.clone(),
            cancel: opts.cancel.clone(),
            exclude_path,
            exclude_name,
            one_file_system: opts.one_file_system,
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("arca-read-{i}"))
                .build()
                .map_err(|e| Error::Invalid(format!("cannot start reader threads: {e}")))?,
            gate: Arc::new(Gate {
                n: Mutex::new((0, false)),
                cv: Condvar::new(),
                limit: 4 * threads,
            }),
        });

        if opts.scan_totals {
            let (p, pr, c) = (paths.clone(), progress.clone(), ctx.clone());
            std::thread::spawn(move || scan(&c, &p, &pr));
        }

        let c = ctx.clone();
        let run = tokio::task::spawn_blocking(move || run(&c, &paths, parent_root))
            .await
            .expect("backup thread panicked");
        let finished = writer.finish().await;
        let (root, mut summary, errors, warnings) = match (run, finished) {
            (Ok(r), Ok(_)) => r,
            // A store failure surfaces in the walk as `Cancelled`: report the real cause.
            (Err(Error::Cancelled), Err(e)) => return Err(e),
            (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        };
        let ws = writer.stats();
        summary.data_blobs = ws.data_blobs.load(Ordering::Relaxed);
        summary.tree_blobs = ws.tree_blobs.load(Ordering::Relaxed);
        summary.bytes_added = ws.bytes_added.load(Ordering::Relaxed);
        summary.bytes_stored = ws.bytes_stored.load(Ordering::Relaxed);
        summary.errors = errors.len() as u64;

        let mut snapshot = Snapshot::new(SnapshotRoot::Tree(root));
        snapshot.time = start;
        snapshot.end_time = Timestamp::now();
        snapshot.host = opts.identity.host.clone();
        snapshot.username = opts.identity.username.clone();
        snapshot.paths = path_bytes;
        snapshot.tags = opts.tags.clone();
        snapshot.labels = opts.labels.clone();
        snapshot.parent = parent.map(|p| p.0);
        snapshot.summary = summary;
        snapshot.program = format!("arca {}", env!("CARGO_PKG_VERSION"));
        snapshot.top = top.map(|mut n| {
            n.kind = NodeKind::Dir { subtree: root };
            n
        });
        let id = self
            .commit(session, &snapshot, "backup:before-snapshot")
            .await?;
        Ok(BackupReport {
            id,
            snapshot,
            errors,
            warnings,
        })
    }

    /// The newest readable snapshot this host made of exactly these paths, of a volume or
    /// of a tree: the parent a backup takes by default.
    pub(crate) async fn previous(
        &self,
        host: &str,
        paths: &[Vec<u8>],
        volume: bool,
    ) -> Result<Option<(SnapshotId, Snapshot)>> {
        let filter = SnapshotFilter {
            hosts: vec![host.to_string()],
            ..Default::default()
        };
        Ok(self
            .repo
            .readable_snapshots()
            .await?
            .0
            .into_iter()
            .rev()
            .find(|(_, s)| {
                filter.matches(s)
                    && s.paths == paths
                    && matches!(s.root, SnapshotRoot::Volume(_)) == volume
            }))
    }

    /// Store a backup's manifest under its session's checks, and end the session: fresh
    /// before, and fresh after (a writer that stalled while storing it takes it back, since
    /// what it points at may have been swept). `pause` names the test pause point.
    pub(crate) async fn commit(
        &self,
        session: SessionGuard,
        snapshot: &Snapshot,
        pause: &'static str,
    ) -> Result<SnapshotId> {
        self.repo.pauses.at(pause).await;
        session.check_fresh()?;
        let id = self.repo.write_snapshot(snapshot).await?;
        if let Err(e) = session.check_fresh() {
            let _ = self.repo.delete_snapshot(&id).await;
            return Err(e);
        }
        session.end().await?;
        Ok(id)
    }
}

/// Reader threads: as asked, or one per core and at least two.
pub(crate) fn reader_threads(asked: usize) -> usize {
    if asked == 0 {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2)
    } else {
        asked
    }
}

type RunResult = (BlobId, Summary, Vec<ItemProblem>, Vec<ItemProblem>);

/// Walker on its own thread; assembler on this one.
fn run(ctx: &Arc<Ctx>, paths: &[PathBuf], parent_root: Option<BlobId>) -> Result<RunResult> {
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    std::thread::scope(|s| {
        let walker = std::thread::Builder::new()
            .name("arca-walk".into())
            .spawn_scoped(s, || {
                let events = Events {
                    tx,
                    buf: std::cell::RefCell::new(Vec::with_capacity(EVENT_BATCH)),
                    ctx: ctx.clone(),
                    open: std::cell::RefCell::new(None),
                };
                walk_roots(ctx, paths, parent_root, &events)?;
                events.flush()
            })
            .expect("spawn walker");
        let assembled = assemble(ctx, rx);
        if assembled.is_err() {
            ctx.cancel.store(true, Ordering::SeqCst);
        }
        let walked = walker.join().expect("walker panicked");
        let out = assembled?;
        walked?;
        Ok(out)
    })
}

fn walk_roots(
    ctx: &Arc<Ctx>,
    paths: &[PathBuf],
    parent_root: Option<BlobId>,
    tx: &Events,
) -> Result<()> {
    let send = |e: Event| tx.send(e);
    let mut names = Names::default();
    // One directory: the snapshot's root is that directory's content.
    if let [only] = paths
        && std::fs::symlink_metadata(only).is_ok_and(|m| m.is_dir())
    {
        let meta = std::fs::symlink_metadata(only).map_err(|e| Error::io("read", only, e))?;
        send(Event::Enter {
            node: None,
            status: Status::New,
            parent_subtree: parent_root,
        })?;
        let parent = ctx.parent_tree(parent_root, only, tx);
        walk_entries(ctx, only, meta.dev(), parent.as_ref(), tx, &mut names)?;
        return send(Event::Leave);
    }
    // Several paths, or a file: the root holds each by its base name.
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        let name = p.file_name().unwrap_or(p.as_os_str());
        if !seen.insert(name.to_os_string()) {
            return Err(Error::Invalid(format!(
                "two paths have the base name {:?}; back them up separately",
                name
            )));
        }
    }
    send(Event::Enter {
        node: None,
        status: Status::New,
        parent_subtree: parent_root,
    })?;
    let parent = ctx.parent_tree(parent_root, Path::new("/"), tx);
    let mut sorted: Vec<&PathBuf> = paths.iter().collect();
    sorted.sort_by(|a, b| {
        let n = |p: &PathBuf| p.file_name().unwrap_or(p.as_os_str()).as_bytes().to_vec();
        n(a).cmp(&n(b))
    });
    for p in sorted {
        let name = p.file_name().unwrap_or(p.as_os_str()).to_os_string();
        match std::fs::symlink_metadata(p) {
            Ok(meta) => {
                let dev = meta.dev();
                let mut l = ctx.idx.index.session();
                let pr = probe(ctx, p, &name, Ok(meta), parent.as_ref(), &mut l);
                walk_entry(ctx, p, &name, pr, dev, parent.as_ref(), tx, &mut names)?
            }
            Err(e) => send(Event::Problem(problem(p, "cannot read", e)))?,
        }
    }
    send(Event::Leave)
}

fn problem(path: &Path, what: &str, e: impl std::fmt::Display) -> ItemProblem {
    ItemProblem {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    }
}

/// Where `name` is in a (sorted) tree.
fn find(tree: Option<&Tree>, name: &[u8]) -> Option<usize> {
    tree?
        .nodes
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
}

/// Entries probed (stat, xattrs, unchanged check) at once, in parallel when there are
/// enough: on an unchanged tree the walk is the whole backup, and one thread of
/// syscalls and index lookups would leave the other cores idle.
const PROBE_CHUNK: usize = 512;
const PROBE_PARALLEL_MIN: usize = 8;

/// What the walker learns of one directory entry before emitting it.
struct Probe {
    meta: std::io::Result<Metadata>,
    xattrs: std::io::Result<Vec<arca_format::Xattr>>,
    link: Option<std::io::Result<PathBuf>>,
    /// A regular file unchanged since the parent snapshot, whose chunks are all still
    /// stored: it is not read again.
    unchanged: bool,
    /// The entry's node in the parent snapshot's tree (an index into it).
    prev: Option<usize>,
}

fn probe(
    ctx: &Ctx,
    path: &Path,
    name: &OsStr,
    meta: std::io::Result<Metadata>,
    parent: Option<&Tree>,
    lookup: &mut crate::cache::Lookup<'_>,
) -> Probe {
    let prev = find(parent, name.as_bytes());
    let Ok(m) = &meta else {
        return Probe {
            meta,
            xattrs: Ok(Vec::new()),
            link: None,
            unchanged: false,
            prev,
        };
    };
    let prev_node = prev.and_then(|i| Some(&parent?.nodes[i]));
    // Setting or removing an extended attribute changes the inode's ctime: the same
    // inode with the same ctime has the attributes the parent snapshot recorded, and
    // listing them again (a path lookup and a syscall or more per entry) is skipped.
    let same_inode = prev_node.filter(|p| {
        p.ctime == Timestamp::new(m.ctime(), m.ctime_nsec() as u32) && p.inode == m.ino()
    });
    let xattrs = match same_inode {
        Some(p) => Ok(p.xattrs.clone()),
        None => fsmeta::read_xattrs(path),
    };
    let link = m.file_type().is_symlink().then(|| std::fs::read_link(path));
    let unchanged = m.is_file()
        && same_inode.is_some_and(|p| {
            matches!(&p.kind, NodeKind::File { content, .. }
                if p.size == m.len()
                    && p.mtime == Timestamp::new(m.mtime(), m.mtime_nsec() as u32)
                    && content.iter().all(|c| ctx.writer.has_in(lookup, c).unwrap_or(false)))
        });
    Probe {
        meta,
        xattrs,
        link,
        unchanged,
        prev,
    }
}

fn walk_entries(
    ctx: &Arc<Ctx>,
    dir: &Path,
    root_dev: u64,
    parent: Option<&Tree>,
    tx: &Events,
    names: &mut Names,
) -> Result<()> {
    let mut entries: Vec<(OsString, std::fs::DirEntry)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| match e {
                Ok(e) => Some((e.file_name(), e)),
                Err(err) => {
                    let _ = tx.send(Event::Problem(problem(dir, "cannot list directory", err)));
                    None
                }
            })
            .collect(),
        Err(e) => {
            // The directory is recorded, empty; the problem is reported.
            tx.send(Event::Problem(problem(dir, "cannot list directory", e)))?;
            return Ok(());
        }
    };
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let chunk: Vec<(OsString, PathBuf, std::fs::DirEntry)> = entries
            .by_ref()
            .map(|(name, e)| (name, e.path(), e))
            .filter(|(name, path, _)| !ctx.excluded(path, name))
            .take(PROBE_CHUNK)
            .collect();
        // The entry's metadata is read relative to the open directory (no path walk).
        let index = &ctx.idx.index;
        let one = |l: &mut crate::cache::Lookup<'_>,
                   (name, path, e): (OsString, PathBuf, std::fs::DirEntry)| {
            let p = probe(ctx, &path, &name, e.metadata(), parent, l);
            (name, path, p)
        };
        let probed: Vec<(OsString, PathBuf, Probe)> = if chunk.len() >= PROBE_PARALLEL_MIN {
            use rayon::prelude::*;
            ctx.pool.install(|| {
                chunk
                    .into_par_iter()
                    .map_init(|| index.session(), one)
                    .collect()
            })
        } else {
            let mut l = index.session();
            chunk.into_iter().map(|x| one(&mut l, x)).collect()
        };
        for (name, path, p) in probed {
            match p.meta {
                Ok(_) => walk_entry(ctx, &path, &name, p, root_dev, parent, tx, names)?,
                // Vanished since the listing: nothing to back up.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tx.send(Event::Problem(problem(&path, "cannot read", e)))?,
            }
        }
    }
    Ok(())
}

fn status_of(prev: Option<&Node>, same: bool) -> Status {
    match prev {
        None => Status::New,
        Some(_) if same => Status::Unmodified,
        Some(_) => Status::Changed,
    }
}

/// Emit one probed entry (`probe.meta` is `Ok`): a directory is descended into, a file
/// to read goes to the readers.
#[allow(clippy::too_many_arguments)]
fn walk_entry(
    ctx: &Arc<Ctx>,
    path: &Path,
    name: &OsStr,
    probe: Probe,
    root_dev: u64,
    parent: Option<&Tree>,
    tx: &Events,
    names: &mut Names,
) -> Result<()> {
    let send = |e: Event| tx.send(e);
    let meta = probe.meta.map_err(|e| Error::io("read", path, e))?;
    let prev = probe.prev.and_then(|i| Some(&parent?.nodes[i]));
    let xattrs = match probe.xattrs {
        Ok(x) => x,
        Err(e) => {
            send(Event::Problem(problem(
                path,
                "warning: cannot read extended attributes",
                e,
            )))?;
            Vec::new()
        }
    };
    let ft = meta.file_type();
    // The kind is settled below, once the type is known.
    let mut node = fsmeta::node_from(name, &meta, NodeKind::Fifo, names, xattrs);
    if ft.is_dir() {
        let prev_subtree = match prev.map(|p| &p.kind) {
            Some(NodeKind::Dir { subtree }) => Some(*subtree),
            _ => None,
        };
        node.kind = NodeKind::Dir {
            subtree: BlobId::default(),
        };
        let status = if prev_subtree.is_some() {
            Status::Changed
        } else {
            Status::New
        };
        send(Event::Enter {
            node: Some(node),
            status,
            parent_subtree: prev_subtree,
        })?;
        if !(ctx.one_file_system && meta.dev() != root_dev) {
            let ptree = ctx.parent_tree(prev_subtree, path, tx);
            walk_entries(ctx, path, root_dev, ptree.as_ref(), tx, names)?;
        }
        return send(Event::Leave);
    }
    if ft.is_file() {
        let sparse = fsmeta::looks_sparse(&meta);
        if probe.unchanged
            && let Some(NodeKind::File { content, .. }) = prev.map(|p| &p.kind)
        {
            node.kind = NodeKind::File {
                content: content.clone(),
                sparse,
            };
            ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
            ctx.progress
                .bytes_done
                .fetch_add(node.size, Ordering::Relaxed);
            return send(Event::Item(Pending::Ready(node, Status::Unmodified)));
        }
        node.kind = NodeKind::File {
            content: Vec::new(),
            sparse,
        };
        let status = status_of(prev, false);
        let batch = tx.read(path, meta);
        return send(Event::Item(Pending::File {
            node,
            status,
            path: path.to_path_buf(),
            batch,
        }));
    }
    node.kind = if ft.is_symlink() {
        match probe.link {
            Some(Ok(t)) => NodeKind::Symlink {
                target: t.as_os_str().as_bytes().to_vec(),
            },
            Some(Err(e)) => return send(Event::Problem(problem(path, "cannot read link", e))),
            None => {
                return send(Event::Problem(problem(
                    path,
                    "cannot read link",
                    "not read",
                )));
            }
        }
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else if ft.is_char_device() {
        NodeKind::CharDevice { rdev: meta.rdev() }
    } else if ft.is_block_device() {
        NodeKind::BlockDevice { rdev: meta.rdev() }
    } else {
        return send(Event::Problem(problem(
            path,
            "skipped",
            "unknown file type",
        )));
    };
    let same =
        prev.is_some_and(|p| p.kind == node.kind && p.mtime == node.mtime && p.ctime == node.ctime);
    ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
    send(Event::Item(Pending::Ready(node, status_of(prev, same))))
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    // Apart from READ_BUF, whose length the chunker keeps at its window.
    static SMALL_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn open_noatime(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    // O_NOATIME keeps backups from touching access times; it needs ownership (or
    // CAP_FOWNER), so fall back without it.
    match nix::fcntl::open(path, flags | OFlag::O_NOATIME, Mode::empty()) {
        Ok(fd) => Ok(fd.into()),
        Err(nix::errno::Errno::EPERM) => Ok(nix::fcntl::open(path, flags, Mode::empty())?.into()),
        Err(e) => Err(e.into()),
    }
}

/// Read one file into the repository. Runs on a reader thread.
fn read_file(ctx: &Ctx, path: &Path, expect: &Metadata) -> FileOutcome {
    if ctx.cancel.load(Ordering::Relaxed) || ctx.writer.aborted() {
        return FileOutcome::Fatal(Error::Cancelled);
    }
    let mut file = match open_noatime(path) {
        Ok(f) => f,
        Err(e) => return FileOutcome::Unreadable(format!("cannot open: {e}")),
    };
    let mut content = Vec::new();
    let mut fatal = None;
    let read = if expect.len() <= ctx.chunker.min_size() as u64 {
        // Small file: one read, one chunk, in the thread's reused buffer.
        SMALL_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            buf.clear();
            buf.reserve(expect.len() as usize + 1);
            match file.read_to_end(&mut buf) {
                Ok(n) => {
                    if n > 0 {
                        match ctx.writer.store(BlobType::Data, &buf) {
                            Ok(id) => content.push(id),
                            Err(e) => fatal = Some(e),
                        }
                    }
                    Ok(n as u64)
                }
                Err(e) => Err(e),
            }
        })
    } else {
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            ctx.chunker.stream(&mut file, &mut buf, |chunk| {
                if ctx.cancel.load(Ordering::Relaxed) {
                    fatal = Some(Error::Cancelled);
                    return Err(std::io::Error::other("cancelled"));
                }
                match ctx.writer.store(BlobType::Data, chunk) {
                    Ok(id) => {
                        content.push(id);
                        let n = chunk.len() as u64;
                        ctx.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
                        ctx.progress.bytes_read.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        fatal = Some(e);
                        Err(std::io::Error::other("store failed"))
                    }
                }
            })
        })
    };
    if let Some(e) = fatal {
        return FileOutcome::Fatal(e);
    }
    let size = match read {
        Ok(n) => n,
        Err(e) => return FileOutcome::Unreadable(format!("read failed: {e}")),
    };
    if expect.len() <= ctx.chunker.min_size() as u64 {
        ctx.progress.bytes_done.fetch_add(size, Ordering::Relaxed);
        ctx.progress.bytes_read.fetch_add(size, Ordering::Relaxed);
    }
    let changed = match file.metadata() {
        Ok(after) => {
            after.len() != size
                || after.mtime() != expect.mtime()
                || after.mtime_nsec() != expect.mtime_nsec()
                || after.ctime() != expect.ctime()
                || after.ctime_nsec() != expect.ctime_nsec()
        }
        Err(_) => true,
    };
    FileOutcome::Done {
        content,
        size,
        changed,
    }
}

struct Frame {
    node: Option<Node>,
    status: Status,
    parent_subtree: Option<BlobId>,
    nodes: Vec<Node>,
}

fn assemble(ctx: &Ctx, rx: Receiver<Vec<Event>>) -> Result<RunResult> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut summary = Summary::default();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let mut root = None;
    // Outcomes of the read batch being consumed, in walk order.
    let mut outcomes = Vec::new().into_iter();
    for ev in rx.iter().flatten() {
        match ev {
            Event::Enter {
                node,
                status,
                parent_subtree,
            } => stack.push(Frame {
                node,
                status,
                parent_subtree,
                nodes: Vec::new(),
            }),
            Event::Problem(p) => {
                if p.message.starts_with("warning:") {
                    warnings.push(p);
                } else {
                    ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                    errors.push(p);
                }
            }
            Event::Item(pending) => {
                let (node, status) = match pending {
                    Pending::Ready(node, status) => (node, status),
                    Pending::File {
                        mut node,
                        status,
                        path,
                        batch,
                    } => {
                        if let Some(rx) = batch {
                            outcomes = rx.recv().unwrap_or_default().into_iter();
                        }
                        match outcomes
                            .next()
                            .unwrap_or(FileOutcome::Fatal(Error::Cancelled))
                        {
                            FileOutcome::Done {
                                content,
                                size,
                                changed,
                            } => {
                                if content.len() > MAX_CONTENT_IDS {
                                    // Format v1 keeps a file's chunk list inside its tree
                                    // blob; a longer list would make the tree unreadable.
                                    ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                                    errors.push(ItemProblem {
                                    path,
                                    message: format!(
                                        "left out: {} chunks is more than one tree can list ({MAX_CONTENT_IDS})",
                                        content.len()
                                    ),
                                });
                                    continue;
                                }
                                if changed {
                                    warnings.push(ItemProblem {
                                        path,
                                        message: "warning: file changed while it was read; the snapshot holds what was read".into(),
                                    });
                                }
                                let sparse =
                                    matches!(node.kind, NodeKind::File { sparse: true, .. });
                                node.kind = NodeKind::File { content, sparse };
                                node.size = size;
                                ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
                                (node, status)
                            }
                            FileOutcome::Unreadable(msg) => {
                                ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                                errors.push(ItemProblem { path, message: msg });
                                continue;
                            }
                            FileOutcome::Fatal(e) => return Err(e),
                        }
                    }
                };
                if let NodeKind::File { .. } = node.kind {
                    summary.bytes_processed += node.size;
                    match status {
                        Status::New => summary.files_new += 1,
                        Status::Changed => summary.files_changed += 1,
                        Status::Unmodified => summary.files_unmodified += 1,
                    }
                }
                stack
                    .last_mut()
                    .ok_or_else(|| {
                        Error::Invalid("walk produced an item outside a directory".into())
                    })?
                    .nodes
                    .push(node);
            }
            Event::Leave => {
                let frame = stack.pop().ok_or_else(|| {
                    Error::Invalid("walk left more directories than it entered".into())
                })?;
                let id = store_tree(&ctx.writer, frame.nodes)?;
                let status = match frame.parent_subtree {
                    Some(p) if p == id => Status::Unmodified,
                    Some(_) => Status::Changed,
                    None => frame.status,
                };
                match status {
                    Status::New => summary.dirs_new += 1,
                    Status::Changed => summary.dirs_changed += 1,
                    Status::Unmodified => summary.dirs_unmodified += 1,
                }
                match (frame.node, stack.last_mut()) {
                    (Some(mut node), Some(parent)) => {
                        node.kind = NodeKind::Dir { subtree: id };
                        parent.nodes.push(node);
                    }
                    (None, None) => root = Some(id),
                    _ => return Err(Error::Invalid("walk nested its root".into())),
                }
            }
        }
    }
    let root = root.ok_or(Error::Cancelled)?;
    Ok((root, summary, errors, warnings))
}

/// Store a directory's nodes as one tree blob, or a chain when it is too large for one.
pub(crate) fn store_tree(writer: &Writer, nodes: Vec<Node>) -> Result<BlobId> {
    let whole = Tree { nodes, next: None };
    let bytes = whole.encode()?;
    if bytes.len() <= MAX_TREE_BLOB {
        return writer.store(BlobType::Tree, &bytes);
    }
    // Split greedily by each node's encoded size; store the chain from its end.
    let mut groups: Vec<Vec<Node>> = vec![Vec::new()];
    let mut size = 0usize;
    for n in whole.nodes {
        let len = Tree {
            nodes: vec![n.clone()],
            next: None,
        }
        .encode()?
        .len()
            + 8;
        if size + len > MAX_TREE_BLOB - 64 && !groups.last().expect("non-empty").is_empty() {
            groups.push(Vec::new());
            size = 0;
        }
        size += len;
        groups.last_mut().expect("non-empty").push(n);
    }
    let mut next = None;
    for nodes in groups.into_iter().rev() {
        let t = Tree { nodes, next };
        next = Some(writer.store(BlobType::Tree, &t.encode()?)?);
    }
    Ok(next.expect("at least one group"))
}

/// Count files and bytes ahead of the backup, for progress with an ETA.
fn scan(ctx: &Ctx, paths: &[PathBuf], progress: &BackupProgress) {
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if ctx.cancel.load(Ordering::Relaxed) {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if !ctx.excluded(&e.path(), &e.file_name()) {
                        stack.push(e.path());
                    }
                }
            }
        } else {
            progress.total_files.fetch_add(1, Ordering::Relaxed);
            if meta.is_file() {
                progress
                    .total_bytes
                    .fetch_add(meta.len(), Ordering::Relaxed);
            }
        }
    }
    progress.scan_done.store(true, Ordering::SeqCst);
}
