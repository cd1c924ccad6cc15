//! `arca-movers` moves a volume's data (a mounted directory tree, a block device or an
//! image file) into and out of a repository, in the shape a controller drives: one request
//! type, one result type, progress delivered at a rate the caller chooses, and a
//! cancellation token. It knows nothing of Kubernetes.
//!
//! A volume is known by an identity the caller chooses (the node agent uses a claim's
//! namespace and name), recorded as the snapshot label [`VOLUME_LABEL`]: the parent of a
//! backup is the newest snapshot of the same identity and kind, whatever path the volume
//! was mounted at, so the second backup of a volume reads only what changed (a tree: its
//! changed files) and stores only what is new (both kinds).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arca_engine::{
    BackupOptions, BackupProgress, Parent, RestoreOptions, RestoreProgress, VolumeBackupOptions,
    VolumeRestoreOptions,
};
pub use arca_engine::{Error, Identity, Indexed, Result};
use arca_format::{SnapshotId, SnapshotRoot};

/// Snapshot label holding the volume's identity.
pub const VOLUME_LABEL: &str = "arca.dev/volume";

/// What a volume's data is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory tree (a mounted file system).
    Tree(PathBuf),
    /// A block device or an image file.
    Block(PathBuf),
}

/// Where a snapshot's data is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Into a directory (files that exist and match are left as they are).
    Tree(PathBuf),
    /// Onto a block device, or into an image file.
    Block {
        /// The device or image file.
        path: PathBuf,
        /// Whether the device is known to read as zeros (the ranges without data are then
        /// not zeroed).
        fresh: bool,
        /// Write over what is there: required for a device, and for an image that exists
        /// (a rerun after an interruption).
        overwrite: bool,
    },
}

/// A backup of one volume.
#[derive(Clone, Debug)]
pub struct BackupRequest {
    /// What to read.
    pub source: Source,
    /// The volume's identity (the parent is the newest snapshot with the same one).
    pub volume: String,
    /// Host and user recorded in the snapshot.
    pub identity: Identity,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Labels of the snapshot (the volume label is added).
    pub labels: BTreeMap<String, String>,
    /// How often what was uploaded is made durable (an index checkpoint): a run again
    /// after a kill uploads again at most this much work [default: the engine's, 60 s].
    pub checkpoint: Option<Duration>,
}

/// A restore of one snapshot.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Where to.
    pub target: Target,
}

/// What a backup did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupResult {
    /// The new snapshot.
    pub snapshot: SnapshotId,
    /// Its parent (the volume's previous snapshot), if any.
    pub parent: Option<SnapshotId>,
    /// Bytes the volume holds (a tree's file content; a block volume's size).
    pub bytes_total: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes of new data (not in the repository before).
    pub bytes_new: u64,
    /// Bytes stored for it (compressed, encrypted).
    pub bytes_stored: u64,
    /// Files (a block volume counts as one).
    pub files: u64,
    /// How long it took.
    pub duration: Duration,
    /// Items that could not be read, or changed while read.
    pub warnings: Vec<String>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreResult {
    /// Bytes written.
    pub bytes_written: u64,
    /// Files written (a block volume counts as one).
    pub files: u64,
    /// How long it took.
    pub duration: Duration,
    /// Items not restored or restored with a caveat.
    pub warnings: Vec<String>,
}

/// A progress update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes to do (0 while unknown).
    pub bytes_total: u64,
    /// Bytes per second since the start.
    pub rate: f64,
}

/// Stops a backup or restore: the engine checks it per chunk, per file and per extent
/// (and per MiB of zeroing), so the work ends within one such step with
/// [`Error::Cancelled`]; a backup stores no snapshot.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where progress goes.
type Report = std::sync::Mutex<Box<dyn FnMut(Progress) + Send>>;

/// Calls `report` every `every` with the counters `read` gives, and once more at the end.
struct Reporter {
    task: tokio::task::JoinHandle<()>,
    last: Box<dyn FnMut() + Send>,
}

impl Reporter {
    fn start<T: Send + Sync + 'static>(
        every: Duration,
        counters: Arc<T>,
        read: fn(&T) -> (u64, u64),
        report: impl FnMut(Progress) + Send + 'static,
    ) -> Self {
        let started = Instant::now();
        let report: Arc<Report> = Arc::new(std::sync::Mutex::new(Box::new(report)));
        let send = move |report: &Report, counters: &T| {
            let (done, total) = read(counters);
            let secs = started.elapsed().as_secs_f64();
            let mut r = report.lock().expect("lock");
            (*r)(Progress {
                bytes_done: done,
                bytes_total: total,
                rate: if secs > 0.0 { done as f64 / secs } else { 0.0 },
            });
        };
        let (r, c) = (report.clone(), counters.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                send(&r, &c);
            }
        });
        Self {
            task,
            last: Box::new(move || send(&report, &counters)),
        }
    }

    /// The final update, with the counters as they ended.
    fn finish(mut self) {
        self.task.abort();
        (self.last)();
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The newest snapshot of a volume identity holding the same kind of data.
pub async fn latest_of(repo: &Indexed, volume: &str, block: bool) -> Result<Option<SnapshotId>> {
    let (snaps, _) = repo.repo().readable_snapshots().await?;
    Ok(snaps
        .into_iter()
        .rev()
        .find(|(_, s)| {
            s.labels.get(VOLUME_LABEL).map(String::as_str) == Some(volume)
                && matches!(s.root, SnapshotRoot::Volume(_)) == block
        })
        .map(|(id, _)| id))
}

/// Back up a volume, reporting progress every `every`.
pub async fn backup(
    repo: &Indexed,
    req: BackupRequest,
    cancel: &Cancel,
    every: Duration,
    report: impl FnMut(Progress) + Send + 'static,
) -> Result<BackupResult> {
    let started = Instant::now();
    let block = matches!(req.source, Source::Block(_));
    let parent = latest_of(repo, &req.volume, block).await?;
    let mut labels = req.labels.clone();
    labels.insert(VOLUME_LABEL.to_string(), req.volume.clone());
    let progress = Arc::new(BackupProgress::default());
    let reporter = Reporter::start(
        every,
        progress.clone(),
        |p| {
            (
                p.bytes_done.load(Ordering::Relaxed),
                p.total_bytes.load(Ordering::Relaxed),
            )
        },
        report,
    );
    let parent_opt = parent.map_or(Parent::None, Parent::Snapshot);
    let r = match &req.source {
        Source::Tree(dir) => {
            let mut o = BackupOptions::new(vec![dir.clone()]);
            o.parent = parent_opt;
            o.identity = req.identity.clone();
            o.tags = req.tags.clone();
            o.labels = labels;
            o.cancel = cancel.0.clone();
            o.scan_totals = true;
            if let Some(c) = req.checkpoint {
                o.checkpoint = c;
            }
            repo.backup(o, progress.clone()).await?
        }
        Source::Block(dev) => {
            let mut o = VolumeBackupOptions::new(dev);
            o.parent = parent_opt;
            o.identity = req.identity.clone();
            o.tags = req.tags.clone();
            o.labels = labels;
            o.cancel = cancel.0.clone();
            if let Some(c) = req.checkpoint {
                o.checkpoint = c;
            }
            repo.backup_volume(o, progress.clone()).await?
        }
    };
    reporter.finish();
    let m = &r.snapshot.summary;
    let bytes_total = match &r.snapshot.root {
        SnapshotRoot::Volume(v) => v.size,
        SnapshotRoot::Tree(_) => m.bytes_processed,
    };
    Ok(BackupResult {
        snapshot: r.id,
        parent: r.snapshot.parent,
        bytes_total,
        bytes_read: progress.bytes_read.load(Ordering::Relaxed),
        bytes_new: m.bytes_added,
        bytes_stored: m.bytes_stored,
        files: m.files_new + m.files_changed + m.files_unmodified,
        duration: started.elapsed(),
        warnings: problems(&r.errors, &r.warnings),
    })
}

fn problems(a: &[arca_engine::ItemProblem], b: &[arca_engine::ItemProblem]) -> Vec<String> {
    a.iter()
        .chain(b)
        .map(|p| format!("{}: {}", p.path.display(), p.message))
        .collect()
}

/// Restore a snapshot, reporting progress every `every`. Run again after an interruption,
/// it completes: a tree restore leaves what it already wrote (and verified) in place; a
/// block restore writes every extent again.
pub async fn restore(
    repo: &Indexed,
    req: RestoreRequest,
    cancel: &Cancel,
    every: Duration,
    report: impl FnMut(Progress) + Send + 'static,
) -> Result<RestoreResult> {
    let started = Instant::now();
    let snap = repo.repo().snapshot(&req.snapshot).await?;
    let progress = Arc::new(RestoreProgress::default());
    let reporter = Reporter::start(
        every,
        progress.clone(),
        |p| {
            (
                p.bytes_done.load(Ordering::Relaxed),
                p.total_bytes.load(Ordering::Relaxed),
            )
        },
        report,
    );
    let result = match (&req.target, &snap.root) {
        (Target::Tree(dir), SnapshotRoot::Tree(_)) => {
            let mut o = RestoreOptions::new(dir);
            o.top = snap.top.clone();
            o.cancel = cancel.0.clone();
            let r = repo.restore(&snap.root, &o, progress.clone()).await?;
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            Ok(RestoreResult {
                bytes_written: r.bytes_written,
                files: r.files_restored + r.files_skipped,
                duration: started.elapsed(),
                warnings: problems(&r.errors, &r.warnings),
            })
        }
        (
            Target::Block {
                path,
                fresh,
                overwrite,
            },
            SnapshotRoot::Volume(_),
        ) => {
            let mut o = VolumeRestoreOptions::new(path);
            o.fresh = *fresh;
            o.overwrite = *overwrite;
            o.cancel = cancel.0.clone();
            let r = repo.restore_volume(&snap, &o, progress.clone()).await?;
            Ok(RestoreResult {
                bytes_written: r.bytes_written,
                files: 1,
                duration: started.elapsed(),
                warnings: Vec::new(),
            })
        }
        (Target::Tree(_), SnapshotRoot::Volume(_)) => Err(Error::Invalid(format!(
            "snapshot {} holds a block volume: restore it onto a device or an image file",
            req.snapshot.short()
        ))),
        (Target::Block { .. }, SnapshotRoot::Tree(_)) => Err(Error::Invalid(format!(
            "snapshot {} holds a directory tree: restore it into a directory",
            req.snapshot.short()
        ))),
    };
    if result.is_ok() {
        reporter.finish();
    }
    result
}
