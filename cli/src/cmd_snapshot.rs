//! `arca snapshot ...`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arca_engine::{
    BackupOptions, BackupProgress, Change, Existing, Identity, Indexed, Parent, RestoreOptions,
    RestoreProgress, SnapshotFilter,
};
use arca_format::{NodeKind, SnapshotId};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::output::{self, EntryView, SnapshotView, lossy, print_json};
use crate::{Ctx, EXIT_PARTIAL, progress};

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Back up files and directories into a new snapshot.
    ///
    /// Files unchanged since the parent snapshot (same size, mtime, ctime and inode) are not
    /// read again. Files that cannot be read are reported and left out; the exit code is
    /// then 3 (partial).
    Create(CreateArgs),
    /// List snapshots, oldest first.
    List(FilterArgs),
    /// List the entries of a snapshot (under PATH).
    Ls {
        /// Snapshot: ID, unique ID prefix, or "latest".
        snapshot: String,
        /// Path inside the snapshot.
        path: Option<String>,
        /// List every level below.
        #[arg(long, short = 'R')]
        recursive: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show what differs between two snapshots: + added, - removed, M content, U metadata.
    Diff {
        /// First snapshot.
        a: String,
        /// Second snapshot.
        b: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Restore a snapshot (or a path inside it) into a directory, or as tar to stdout.
    Restore(RestoreArgs),
    /// Remove snapshots: the ones named, or those no keep rule keeps. Their data is
    /// reclaimed by `arca maintenance run --full` (or --prune).
    Forget(ForgetArgs),
    /// Logical size, stored size, dedup and compression ratios of snapshots (all when none
    /// is given).
    Stats {
        /// Snapshots.
        snapshots: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Args, Debug, Default, Clone)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Only snapshots that include this path (repeatable).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<SnapshotFilter> {
        use std::os::unix::ffi::OsStrExt;
        let mut paths = Vec::new();
        for p in &self.paths {
            let abs = std::path::absolute(p)?;
            paths.push(abs.as_os_str().as_bytes().to_vec());
        }
        Ok(SnapshotFilter {
            hosts: self.hosts.clone(),
            paths,
            tags: self.tags.clone(),
        })
    }
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove by name (instead of a policy).
    snapshots: Vec<String>,
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot within this duration of the group's newest (e.g. 7d, 2w, 3mo).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    keep_tag: Vec<String>,
    /// Apply the rules per group of: host, paths, tags (comma-separated; "" for one group).
    #[arg(long, default_value = "host,paths")]
    group_by: String,
    /// Show what would be removed and which rule keeps each survivor; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Collect garbage afterwards (`arca maintenance run --full`).
    #[arg(long)]
    prune: bool,
    /// Safety margin of the garbage collection run by --prune (see `maintenance run`).
    #[arg(long, default_value = "24h")]
    safety_margin: String,
    /// Allow a --safety-margin below 24h (only when nothing else writes to the repository).
    #[arg(long)]
    unsafe_short_margins: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Files and directories to back up (with --block: one block device or image file).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Back up a block device or a disk image as a volume: its bytes, in aligned chunks,
    /// holes and zeros left out. Restore it with `snapshot restore SNAP --target DEVICE|FILE`.
    #[arg(long, conflicts_with_all = ["excludes", "exclude_files", "one_file_system"])]
    block: bool,
    /// With --block: the chunk size in bytes, a power of two from 4096 to 8388608 (smaller
    /// finds scattered changes more finely, at the cost of a larger map).
    #[arg(long, requires = "block", default_value_t = arca_engine::VOLUME_CHUNK_DEFAULT)]
    chunk_size: u32,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Label the snapshot, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Leave out what matches this glob (repeatable). With a "/", it matches the whole
    /// path; without, the file name. "**" crosses directories.
    #[arg(long = "exclude", short = 'e', value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line ("#" starts a comment).
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_files: Vec<PathBuf>,
    /// Do not cross into other file systems.
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Parent snapshot to compare with [default: the latest of this host and paths].
    #[arg(long, conflicts_with = "force")]
    parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(long)]
    force: bool,
    /// Host name to record [default: this host].
    #[arg(long)]
    host: Option<String>,
    /// Compression of this backup's data: none, zstd, zstd:N [default: the repository's].
    #[arg(long)]
    compression: Option<String>,
    /// Reader threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Make uploaded data reusable at least this often (e.g. 30s, 5m): a backup that is
    /// killed loses at most this much work.
    #[arg(long, default_value = "1m")]
    checkpoint_interval: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ExistingArg {
    /// Leave files whose content is the snapshot's (read and compared); rewrite the others.
    Skip,
    /// Leave files whose size and modification time match, without reading them (faster;
    /// trusts the mtime); rewrite the others.
    SkipMtime,
    /// Rewrite every file.
    Overwrite,
    /// Stop at the first existing file.
    Fail,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot: ID, unique ID prefix, or "latest"; SNAPSHOT:PATH restores only PATH
    /// inside it.
    snapshot: String,
    /// Target directory, or "-" for a tar stream on stdout.
    #[arg(long, short = 't')]
    target: PathBuf,
    /// Restore only this path inside the snapshot (same as SNAPSHOT:PATH).
    #[arg(long, value_name = "PATH", default_value = "")]
    subpath: String,
    /// What to do with files that exist at the target.
    #[arg(long, value_enum, default_value = "skip")]
    existing: ExistingArg,
    /// Do not restore owners even when running as root.
    #[arg(long)]
    no_owner: bool,
    /// A volume restored onto a device known to read as zeros (new, or discarded): the
    /// ranges the snapshot holds no data for are not zeroed.
    #[arg(long)]
    fresh: bool,
    /// Write every file through the page cache. By default files of 256 KiB and more, and
    /// volumes, are written with direct I/O where the target takes it (not tmpfs): on a disk that
    /// halves a restore's kernel time and leaves the page cache to the machine's other
    /// work, but the restore then waits for the disk rather than ending with its data
    /// still in memory.
    #[arg(long)]
    no_direct_io: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

/// The readable snapshots; each damaged manifest is named on stderr and left alone.
async fn readable(
    repo: &arca_engine::Repository,
) -> Result<Vec<(SnapshotId, arca_format::Snapshot)>> {
    let (ok, damaged) = repo.readable_snapshots().await?;
    for (id, e) in &damaged {
        eprintln!(
            "warning: snapshot {} is unreadable and left out: {e}",
            id.short()
        );
    }
    Ok(ok)
}

async fn indexed(ctx: &Ctx) -> Result<Indexed> {
    let repo = ctx.open().await?;
    let root = ctx.cache_root();
    let (idx, _) = repo.indexed(root.as_deref()).await?;
    Ok(idx)
}

fn read_exclude_file(f: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(f)
        .with_context(|| format!("cannot read exclude file {}", f.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

#[derive(Serialize)]
struct Problem {
    path: String,
    message: String,
}

fn problems(v: &[arca_engine::ItemProblem]) -> Vec<Problem> {
    v.iter()
        .map(|p| Problem {
            path: p.path.display().to_string(),
            message: p.message.clone(),
        })
        .collect()
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> Result<u8> {
    match cmd {
        SnapshotCmd::Create(a) => create(ctx, a).await,
        SnapshotCmd::List(f) => {
            let repo = ctx.open().await?;
            let filter = f.filter()?;
            let snaps: Vec<_> = readable(&repo)
                .await?
                .into_iter()
                .filter(|(_, s)| filter.matches(s))
                .collect();
            if ctx.json {
                let v: Vec<SnapshotView> = snaps
                    .iter()
                    .map(|(id, s)| SnapshotView::new(id, s))
                    .collect();
                print_json(&v)?;
            } else {
                println!(
                    "{:<9} {:<19} {:<14} {:<6} {:>10} {:>10} {:<16} PATHS",
                    "ID", "TIME", "HOST", "KIND", "SIZE", "ADDED", "TAGS"
                );
                for (id, s) in &snaps {
                    // A volume's size is the device's; a tree's, its files' content.
                    let (kind, size) = match &s.root {
                        arca_format::SnapshotRoot::Volume(v) => ("volume", v.size),
                        arca_format::SnapshotRoot::Tree(_) => ("tree", s.summary.bytes_processed),
                    };
                    println!(
                        "{:<9} {:<19} {:<14} {:<6} {:>10} {:>10} {:<16} {}",
                        id.short(),
                        output::time(s.time),
                        s.host,
                        kind,
                        output::bytes(size),
                        output::bytes(s.summary.bytes_stored),
                        s.tags.join(","),
                        s.paths
                            .iter()
                            .map(|p| lossy(p))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
                println!("{} snapshots", snaps.len());
            }
            Ok(0)
        }
        SnapshotCmd::Ls {
            snapshot,
            path,
            recursive,
            filter,
        } => {
            let idx = indexed(ctx).await?;
            let (_, s) = idx
                .repo()
                .find_snapshot(&snapshot, &filter.filter()?)
                .await?;
            if let arca_format::SnapshotRoot::Volume(v) = &s.root {
                // No paths inside: say what it holds.
                let data = idx.volume_data(v).await?;
                if ctx.json {
                    print_json(&serde_json::json!({
                        "volume_size": v.size,
                        "data_bytes": data,
                        "extent_lists": v.extent_lists.len(),
                    }))?;
                } else {
                    println!(
                        "block volume of {}: {} of data, the rest zeros",
                        output::bytes(v.size),
                        output::bytes(data)
                    );
                }
                return Ok(0);
            }
            let entries = idx
                .ls(&s.root, path.as_deref().unwrap_or(""), recursive)
                .await?;
            if ctx.json {
                let v: Vec<EntryView> = entries
                    .iter()
                    .map(|e| EntryView::new(&e.path, &e.node))
                    .collect();
                print_json(&v)?;
            } else {
                for e in entries {
                    let n = &e.node;
                    let user = if n.user.is_empty() {
                        n.uid.to_string()
                    } else {
                        n.user.clone()
                    };
                    let group = if n.group.is_empty() {
                        n.gid.to_string()
                    } else {
                        n.group.clone()
                    };
                    let extra = match &n.kind {
                        NodeKind::Symlink { target } => format!(" -> {}", lossy(target)),
                        _ => String::new(),
                    };
                    println!(
                        "{} {:>8} {:>8} {:>10} {} {}{}",
                        output::mode_string(n),
                        user,
                        group,
                        n.size,
                        output::time(n.mtime),
                        lossy(&e.path),
                        extra
                    );
                }
            }
            Ok(0)
        }
        SnapshotCmd::Diff { a, b, filter } => {
            let idx = indexed(ctx).await?;
            let f = filter.filter()?;
            let (ia, sa) = idx.repo().find_snapshot(&a, &f).await?;
            let (ib, sb) = idx.repo().find_snapshot(&b, &f).await?;
            let diffs = idx.diff(&sa.root, &sb.root).await?;
            let sym = |c: Change| match c {
                Change::Added => "+",
                Change::Removed => "-",
                Change::Modified => "M",
                Change::Metadata => "U",
            };
            if ctx.json {
                #[derive(Serialize)]
                struct D {
                    path: String,
                    change: &'static str,
                }
                let v: Vec<D> = diffs
                    .iter()
                    .map(|d| D {
                        path: lossy(&d.path),
                        change: match d.change {
                            Change::Added => "added",
                            Change::Removed => "removed",
                            Change::Modified => "modified",
                            Change::Metadata => "metadata",
                        },
                    })
                    .collect();
                print_json(
                    &serde_json::json!({ "from": ia.to_hex(), "to": ib.to_hex(), "changes": v }),
                )?;
            } else {
                for d in &diffs {
                    let dir = if d
                        .before
                        .as_ref()
                        .or(d.after.as_ref())
                        .is_some_and(|n| n.is_dir())
                    {
                        "/"
                    } else {
                        ""
                    };
                    println!("{} {}{dir}", sym(d.change), lossy(&d.path));
                }
                let count = |c| diffs.iter().filter(|d| d.change == c).count();
                println!(
                    "{} added, {} removed, {} modified, {} metadata only",
                    count(Change::Added),
                    count(Change::Removed),
                    count(Change::Modified),
                    count(Change::Metadata)
                );
            }
            Ok(0)
        }
        SnapshotCmd::Restore(a) => restore(ctx, a).await,
        SnapshotCmd::Forget(a) => forget(ctx, a).await,
        SnapshotCmd::Stats { snapshots, filter } => {
            let idx = indexed(ctx).await?;
            let f = filter.filter()?;
            let chosen: Vec<(SnapshotId, arca_format::Snapshot)> = if snapshots.is_empty() {
                readable(idx.repo())
                    .await?
                    .into_iter()
                    .filter(|(_, s)| f.matches(s))
                    .collect()
            } else {
                let mut v = Vec::new();
                for s in &snapshots {
                    v.push(idx.repo().find_snapshot(s, &f).await?);
                }
                v
            };
            let roots: Vec<_> = chosen.iter().map(|(_, s)| s.root.clone()).collect();
            let st = idx.stats(&roots).await?;
            let status = idx.repo().status().await?;
            if ctx.json {
                print_json(&serde_json::json!({
                    "snapshots": st.snapshots,
                    "files": st.files,
                    "logical_bytes": st.logical_bytes,
                    "unique_bytes": st.unique_bytes,
                    "stored_bytes": st.stored_bytes,
                    "data_blobs": st.data_blobs,
                    "tree_blobs": st.tree_blobs,
                    "dedup_ratio": st.dedup_ratio(),
                    "compression_ratio": st.compression_ratio(),
                    "repository_bytes": status.total_bytes,
                }))?;
            } else {
                println!("snapshots          {}", st.snapshots);
                println!("files              {}", st.files);
                println!("logical size       {}", output::bytes(st.logical_bytes));
                println!(
                    "unique data        {} in {} chunks",
                    output::bytes(st.unique_bytes),
                    st.data_blobs
                );
                println!("stored             {}", output::bytes(st.stored_bytes));
                println!("dedup ratio        {:.2}x", st.dedup_ratio());
                println!("compression ratio  {:.2}x", st.compression_ratio());
                println!("repository size    {}", output::bytes(status.total_bytes));
            }
            Ok(0)
        }
    }
}

async fn create(ctx: &Ctx, a: CreateArgs) -> Result<u8> {
    if a.block {
        return create_volume(ctx, a).await;
    }
    let idx = indexed(ctx).await?;
    let mut opts = BackupOptions::new(a.paths.clone());
    let c = writer_settings(&idx, &a).await?;
    (
        opts.parent,
        opts.identity,
        opts.compression,
        opts.checkpoint,
    ) = (c.parent, c.identity, c.compression, c.checkpoint);
    opts.tags = a.tags;
    opts.labels = parse_labels(&a.labels)?;
    opts.excludes = a.excludes;
    for f in &a.exclude_files {
        opts.excludes.extend(read_exclude_file(f)?);
    }
    opts.one_file_system = a.one_file_system;
    opts.threads = a.threads;
    opts.cancel = ctx.cancel.clone();
    opts.scan_totals = ctx.show_progress();
    let progress = Arc::new(BackupProgress::default());
    let bar = progress::backup(ctx.show_progress(), progress.clone());
    let report = idx.backup(opts, progress).await;
    drop(bar);
    let report = report?;
    let s = &report.snapshot;
    if ctx.json {
        print_json(&serde_json::json!({
            "snapshot": SnapshotView::new(&report.id, s),
            "errors": problems(&report.errors),
            "warnings": problems(&report.warnings),
        }))?;
    } else {
        for w in &report.warnings {
            eprintln!("{}: {}", w.path.display(), w.message);
        }
        for e in &report.errors {
            eprintln!("error: {}: {}", e.path.display(), e.message);
        }
        if !ctx.quiet {
            let m = &s.summary;
            println!(
                "files: {} new, {} changed, {} unmodified",
                m.files_new, m.files_changed, m.files_unmodified
            );
            println!(
                "dirs:  {} new, {} changed, {} unmodified",
                m.dirs_new, m.dirs_changed, m.dirs_unmodified
            );
            println!(
                "added {} ({} stored) of {} processed",
                output::bytes(m.bytes_added),
                output::bytes(m.bytes_stored),
                output::bytes(m.bytes_processed)
            );
            println!("snapshot {} saved", report.id.short());
        }
    }
    if !report.errors.is_empty() {
        if !ctx.json {
            eprintln!(
                "{} items could not be read: the snapshot is partial",
                report.errors.len()
            );
        }
        return Ok(EXIT_PARTIAL);
    }
    Ok(0)
}

async fn restore(ctx: &Ctx, mut a: RestoreArgs) -> Result<u8> {
    if let Some((snap, sub)) = a.snapshot.split_once(':') {
        if !a.subpath.is_empty() {
            bail!("give the path inside the snapshot once: SNAPSHOT:PATH or --subpath");
        }
        a.subpath = sub.to_string();
        a.snapshot = snap.to_string();
    }
    let idx = indexed(ctx).await?;
    let (id, s) = idx
        .repo()
        .find_snapshot(&a.snapshot, &a.filter.filter()?)
        .await?;
    if a.target.as_os_str() == "-" {
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        let (mut out, problems) = idx.restore_tar(&s.root, &a.subpath, out).await?;
        std::io::Write::flush(&mut out)?;
        for p in &problems {
            eprintln!("error: {}: {}", p.path.display(), p.message);
        }
        if !problems.is_empty() {
            eprintln!(
                "{} items could not be written whole: the tar stream is partial",
                problems.len()
            );
            return Ok(EXIT_PARTIAL);
        }
        return Ok(0);
    }
    if let arca_format::SnapshotRoot::Volume(_) = &s.root {
        return restore_volume(ctx, &idx, &id, &s, &a).await;
    }
    let mut opts = RestoreOptions::new(&a.target);
    opts.top = s.top.clone();
    opts.subpath = a.subpath;
    opts.existing = match a.existing {
        ExistingArg::Skip => Existing::Skip,
        ExistingArg::SkipMtime => Existing::SkipSameTime,
        ExistingArg::Overwrite => Existing::Overwrite,
        ExistingArg::Fail => Existing::Fail,
    };
    if a.no_owner {
        opts.ownership = false;
    }
    opts.direct_io = !a.no_direct_io;
    opts.cancel = ctx.cancel.clone();
    let progress = Arc::new(RestoreProgress::default());
    let bar = progress::restore(ctx.show_progress(), progress.clone());
    let report = idx.restore(&s.root, &opts, progress).await;
    drop(bar);
    let report = report?;
    if ctx.json {
        print_json(&serde_json::json!({
            "snapshot": id.to_hex(),
            "target": a.target.display().to_string(),
            "files_restored": report.files_restored,
            "files_skipped": report.files_skipped,
            "dirs": report.dirs,
            "others": report.others,
            "bytes_written": report.bytes_written,
            "errors": problems(&report.errors),
            "warnings": problems(&report.warnings),
        }))?;
    } else {
        for w in &report.warnings {
            eprintln!("warning: {}: {}", w.path.display(), w.message);
        }
        for e in &report.errors {
            eprintln!("error: {}: {}", e.path.display(), e.message);
        }
        if !ctx.quiet {
            println!(
                "restored {} files ({}), skipped {} unchanged, {} directories, {} other entries into {}",
                report.files_restored,
                output::bytes(report.bytes_written),
                report.files_skipped,
                report.dirs,
                report.others,
                a.target.display()
            );
        }
    }
    if !report.errors.is_empty() {
        if !ctx.json {
            eprintln!(
                "{} items could not be restored: the restore is partial",
                report.errors.len()
            );
        }
        return Ok(EXIT_PARTIAL);
    }
    Ok(0)
}

/// What tree and volume backups take alike from `snapshot create`'s arguments.
struct WriterSettings {
    parent: Parent,
    identity: Identity,
    compression: Option<arca_format::Compression>,
    checkpoint: std::time::Duration,
}

async fn writer_settings(idx: &Indexed, a: &CreateArgs) -> Result<WriterSettings> {
    let parent = if a.force {
        Parent::None
    } else if let Some(p) = &a.parent {
        Parent::Snapshot(
            idx.repo()
                .find_snapshot(p, &SnapshotFilter::default())
                .await?
                .0,
        )
    } else {
        Parent::Auto
    };
    let identity = match &a.host {
        Some(h) => Identity {
            host: h.clone(),
            ..Identity::current()
        },
        None => Identity::current(),
    };
    Ok(WriterSettings {
        parent,
        identity,
        compression: a.compression.as_deref().map(compression).transpose()?,
        checkpoint: std::time::Duration::from_secs(arca_engine::parse_duration(
            &a.checkpoint_interval,
        )? as u64),
    })
}

fn compression(c: &str) -> Result<arca_format::Compression> {
    Ok(match c {
        "none" => arca_format::Compression::None,
        "zstd" => arca_format::Compression::Zstd(3),
        other => match other.strip_prefix("zstd:").and_then(|l| l.parse().ok()) {
            Some(l) if (-7..=22).contains(&l) => arca_format::Compression::Zstd(l),
            _ => bail!("--compression {c:?}: use none, zstd or zstd:N"),
        },
    })
}

fn parse_labels(v: &[String]) -> Result<BTreeMap<String, String>> {
    v.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--label {l:?}: use KEY=VALUE"))
        })
        .collect()
}

/// `snapshot create --block`: one device or image as a volume snapshot.
async fn create_volume(ctx: &Ctx, a: CreateArgs) -> Result<u8> {
    let [source] = a.paths.as_slice() else {
        bail!("--block backs up one device or image file; give one path");
    };
    let idx = indexed(ctx).await?;
    let mut opts = arca_engine::VolumeBackupOptions::new(source);
    opts.chunk_size = a.chunk_size;
    opts.tags = a.tags.clone();
    opts.labels = parse_labels(&a.labels)?;
    let c = writer_settings(&idx, &a).await?;
    (
        opts.parent,
        opts.identity,
        opts.compression,
        opts.checkpoint,
    ) = (c.parent, c.identity, c.compression, c.checkpoint);
    opts.threads = a.threads;
    opts.cancel = ctx.cancel.clone();
    let progress = Arc::new(BackupProgress::default());
    let bar = progress::backup(ctx.show_progress(), progress.clone());
    let report = idx.backup_volume(opts, progress).await;
    drop(bar);
    let report = report?;
    let s = &report.snapshot;
    if ctx.json {
        print_json(&serde_json::json!({ "snapshot": SnapshotView::new(&report.id, s) }))?;
    } else if !ctx.quiet {
        let m = &s.summary;
        let size = match &s.root {
            arca_format::SnapshotRoot::Volume(v) => v.size,
            _ => 0,
        };
        println!(
            "volume {} of {}: {} of data, added {} ({} stored)",
            source.display(),
            output::bytes(size),
            output::bytes(m.bytes_processed),
            output::bytes(m.bytes_added),
            output::bytes(m.bytes_stored)
        );
        println!("snapshot {} saved", report.id.short());
    }
    Ok(0)
}

/// `snapshot restore` of a volume snapshot: onto a device, or into a new image file.
async fn restore_volume(
    ctx: &Ctx,
    idx: &Indexed,
    id: &SnapshotId,
    s: &arca_format::Snapshot,
    a: &RestoreArgs,
) -> Result<u8> {
    if !a.subpath.is_empty() {
        bail!("a volume snapshot has no paths inside: restore it whole");
    }
    let mut opts = arca_engine::VolumeRestoreOptions::new(&a.target);
    // A device or an existing image is written over only when the user says so.
    opts.overwrite = matches!(a.existing, ExistingArg::Overwrite);
    opts.fresh = a.fresh;
    opts.direct_io = !a.no_direct_io;
    opts.cancel = ctx.cancel.clone();
    let progress = Arc::new(RestoreProgress::default());
    let bar = progress::restore(ctx.show_progress(), progress.clone());
    let report = idx.restore_volume(s, &opts, progress).await;
    drop(bar);
    let report = report?;
    if ctx.json {
        print_json(&serde_json::json!({
            "snapshot": id.to_hex(),
            "target": a.target.display().to_string(),
            "size": report.size,
            "bytes_written": report.bytes_written,
            "bytes_zeroed": report.bytes_zeroed,
            "direct_io": report.direct_io,
        }))?;
    } else if !ctx.quiet {
        println!(
            "restored volume {} ({}): {} written, {} zeroed, onto {}",
            id.short(),
            output::bytes(report.size),
            output::bytes(report.bytes_written),
            output::bytes(report.bytes_zeroed),
            a.target.display()
        );
    }
    Ok(0)
}

async fn forget(ctx: &Ctx, a: ForgetArgs) -> Result<u8> {
    use arca_engine::{GroupBy, KeepPolicy, apply_policy, parse_duration};
    let repo = ctx.open().await?;
    let filter = a.filter.filter()?;
    let policy = KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within_secs: a.keep_within.as_deref().map(parse_duration).transpose()?,
        tags: a.keep_tag.clone(),
    };
    // Named snapshots, or a policy over the (filtered) snapshots.
    let remove: Vec<(SnapshotId, String)>;
    if !a.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("name snapshots or give keep rules, not both");
        }
        let mut v = Vec::new();
        for s in &a.snapshots {
            let (id, _) = repo.find_snapshot(s, &filter).await?;
            v.push((id, "named".to_string()));
        }
        remove = v;
        if ctx.json {
            print_json(
                &remove
                    .iter()
                    .map(|(id, _)| serde_json::json!({"id": id.to_hex(), "keep": false}))
                    .collect::<Vec<_>>(),
            )?;
        }
    } else {
        let snaps: Vec<_> = readable(&repo)
            .await?
            .into_iter()
            .filter(|(_, s)| filter.matches(s))
            .collect();
        let decisions = apply_policy(&snaps, &policy, GroupBy::parse(&a.group_by)?)?;
        if ctx.json {
            print_json(
                &decisions
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.id.to_hex(),
                            "time": output::rfc3339(d.time),
                            "group": d.group,
                            "keep": d.keep(),
                            "reasons": d.reasons,
                        })
                    })
                    .collect::<Vec<_>>(),
            )?;
        } else if !ctx.quiet {
            let mut group = None;
            for d in &decisions {
                if group != Some(&d.group) {
                    println!(
                        "{}:",
                        if d.group.is_empty() {
                            "all snapshots"
                        } else {
                            &d.group
                        }
                    );
                    group = Some(&d.group);
                }
                if d.keep() {
                    println!(
                        "  keep   {}  {}  ({})",
                        d.id.short(),
                        output::time(d.time),
                        d.reasons.join(", ")
                    );
                } else {
                    println!(
                        "  {}{}  {}",
                        if a.dry_run {
                            "would remove "
                        } else {
                            "remove "
                        },
                        d.id.short(),
                        output::time(d.time)
                    );
                }
            }
        }
        remove = decisions
            .iter()
            .filter(|d| !d.keep())
            .map(|d| (d.id, String::new()))
            .collect();
    }
    if a.dry_run {
        if !ctx.json && !ctx.quiet {
            println!("dry run: {} snapshots would be removed", remove.len());
        }
        return Ok(0);
    }
    for (id, _) in &remove {
        repo.delete_snapshot(id).await?;
    }
    if !ctx.json && !ctx.quiet {
        println!("removed {} snapshots", remove.len());
    }
    if a.prune {
        let sub = crate::cmd_maint::MaintenanceCmd::Run(crate::cmd_maint::RunArgs::full(
            a.safety_margin.clone(),
            a.unsafe_short_margins,
        ));
        return crate::cmd_maint::maintenance(ctx, sub).await;
    }
    Ok(0)
}
