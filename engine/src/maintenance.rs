//! Maintenance: index compaction (quick) and garbage collection with repacking (full),
//! safe beside running backups (FORMAT.md section 14.3).
//!
//! A full run, under the maintenance lease:
//! 1. lists the writer sessions, then computes the blobs every snapshot uses, then reads
//!    the index;
//! 2. decides per pack, from the merged view of every live index file (a pack is marked
//!    only when every live file listing it marks it): keep; **mark** obsolete (unused);
//!    **repack** (little used: its used blobs are copied into new packs, then it is marked);
//!    **resurrect** (marked, but a used blob has no copy in any other unmarked pack); or
//!    **sweep** (marked, the mark visible to every reader at least the safety margin ago,
//!    and no backup session that started before then is still alive);
//! 3. uploads the repacked packs, writes the new index files (the last one superseding all
//!    the present ones), then deletes the swept packs;
//! 4. deletes packs no index lists that are older than the margin and than every live
//!    backup session (leftovers of crashed writers), index files superseded longer than the
//!    cleanup margin ago, and sessions whose heartbeat stopped.
//!
//! Every step leaves a valid repository if the process dies after it: nothing is deleted
//! before the index that no longer needs it is stored, and every deletion is preceded by a
//! check that this maintainer still holds the lease.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arca_format::{
    IndexFile, IndexId, IndexPack, PackEntry, PackId, PackKind, PackWriter, Session, SessionKind,
    Timestamp, layout, pack,
};
use bytes::Bytes;

use crate::clock::CLOCK_SKEW;
use crate::error::{Error, Result};
use crate::indexed::{Indexed, pack_name};
use crate::lease::LeaseGuard;
use crate::repo::Identity;
use crate::session::{SESSION_TIMEOUT, human};
use crate::store::WriteMode;

/// Entries per index file written by maintenance (bounded decode memory, FORMAT.md 11).
pub const INDEX_FILE_ENTRIES: usize = 500_000;
/// The least time between a mark becoming visible to every reader and the sweep of its
/// pack (and the least age of a leftover pack), as Kopia's full maintenance waits: no
/// writer stays alive that long without a heartbeat, and a writer's view of the index is
/// never older than its session.
pub const SAFE_SAFETY_MARGIN: Duration = Duration::from_secs(24 * 3600);
/// The least time a superseded index file stays after the file that supersedes it
/// appeared, so that a reader whose listing predates the new file still finds the old one.
pub const SAFE_CLEANUP_MARGIN: Duration = Duration::from_secs(4 * 3600);
/// Deletions between two checks with the store that the lease is still ours.
const DELETES_PER_LEASE_CHECK: usize = 256;

/// Live progress of a maintenance run: the phase, and items done of a total.
#[derive(Debug, Default)]
pub struct MaintenanceProgress {
    phase: std::sync::Mutex<&'static str>,
    /// Items of the phase done.
    pub done: std::sync::atomic::AtomicU64,
    /// Items of the phase in all (0 when unknown).
    pub total: std::sync::atomic::AtomicU64,
}

impl MaintenanceProgress {
    /// The current phase.
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().expect("lock")
    }

    fn enter(&self, phase: &'static str, total: u64) {
        *self.phase.lock().expect("lock") = phase;
        self.done.store(0, std::sync::atomic::Ordering::Relaxed);
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }

    fn tick(&self) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What to do.
#[derive(Clone, Debug)]
pub struct MaintenanceOptions {
    /// Garbage collection and repacking, not only index compaction.
    pub full: bool,
    /// How long a mark must have been visible to every reader before its pack may be
    /// deleted, and how old an unindexed pack must be before it is taken for a leftover.
    /// At least [`SAFE_SAFETY_MARGIN`] unless `unsafe_margins`.
    pub safety_margin: Duration,
    /// How long superseded index files stay after the file that supersedes them appeared.
    /// At least [`SAFE_CLEANUP_MARGIN`] unless `unsafe_margins`.
    pub cleanup_margin: Duration,
    /// Accept margins below the safe minimums: only when no writer can be running (tests,
    /// a repository nobody else uses).
    pub unsafe_margins: bool,
    /// Packs whose used bytes are below this fraction are repacked.
    pub repack_below: f64,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Who runs it.
    pub identity: Identity,
    /// Take the maintenance lease even while another maintainer holds it (only when that
    /// one is certainly gone).
    pub break_lease: bool,
    /// How far writers' clocks may disagree with the store's.
    pub clock_skew: Duration,
    /// Entries per index file written ([`INDEX_FILE_ENTRIES`]; smaller in tests, so that
    /// a replacement spans several files).
    #[doc(hidden)]
    pub index_file_entries: usize,
    /// Where the run reports its progress.
    pub progress: std::sync::Arc<MaintenanceProgress>,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        Self {
            full: false,
            safety_margin: SAFE_SAFETY_MARGIN,
            cleanup_margin: SAFE_CLEANUP_MARGIN,
            unsafe_margins: false,
            repack_below: 0.5,
            dry_run: false,
            identity: Identity::current(),
            break_lease: false,
            clock_skew: CLOCK_SKEW,
            index_file_entries: INDEX_FILE_ENTRIES,
            progress: Default::default(),
        }
    }
}

impl MaintenanceOptions {
    /// Refuse margins below the safe minimums unless asked for explicitly.
    pub fn validate(&self) -> Result<()> {
        if self.unsafe_margins {
            return Ok(());
        }
        for (what, got, min, flag) in [
            (
                "safety margin",
                self.safety_margin,
                SAFE_SAFETY_MARGIN,
                "--safety-margin",
            ),
            (
                "cleanup margin",
                self.cleanup_margin,
                SAFE_CLEANUP_MARGIN,
                "--cleanup-margin",
            ),
        ] {
            if got < min {
                return Err(Error::Invalid(format!(
                    "a {what} of {} is below the safe minimum of {}: a backup that is still \
                     running could lose data. Use {flag} {} or more, or add \
                     --unsafe-short-margins if no other writer can be using this repository",
                    human(got),
                    human(min),
                    human(min)
                )));
            }
        }
        if self.clock_skew < CLOCK_SKEW {
            return Err(Error::Invalid(format!(
                "a clock-skew allowance below {} needs --unsafe-short-margins",
                human(CLOCK_SKEW)
            )));
        }
        Ok(())
    }
}

/// What a run did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Live index files before and after.
    pub index_files: (usize, usize),
    /// Packs newly marked obsolete (unused or repacked).
    pub packs_marked: usize,
    /// Packs whose used blobs were copied to new packs.
    pub packs_repacked: usize,
    /// Bytes copied by repacking.
    pub bytes_repacked: u64,
    /// Marked packs found in use again and unmarked.
    pub packs_resurrected: usize,
    /// Marked packs deleted.
    pub packs_deleted: usize,
    /// Unindexed leftover packs deleted.
    pub leftovers_deleted: usize,
    /// Bytes freed by deleting packs.
    pub bytes_reclaimed: u64,
    /// Marked packs waiting for the safety margin or for old sessions to end.
    pub packs_pending: usize,
    /// Bytes of those.
    pub bytes_pending: u64,
    /// Superseded index files deleted after the cleanup margin.
    pub index_files_deleted: usize,
    /// Dead writer sessions removed.
    pub sessions_removed: usize,
    /// Why nothing was swept this time although packs were due (a session object that
    /// could not be decoded, and so might be a live writer's).
    pub sweep_blocked: Option<String>,
    /// Why no leftover pack was deleted (an index file that cannot be read).
    pub leftovers_blocked: Option<String>,
}

/// What happens to one pack.
enum Fate {
    Keep(IndexPack),
    Mark(IndexPack),
    Repack(IndexPack),
    Resurrect(IndexPack),
    Sweep(IndexPack),
}

/// A pack as every live index file lists it, merged.
struct Merged {
    /// Entries from the first file that lists it (identical in every file).
    pack: IndexPack,
    /// Every live listing marks it.
    marked: bool,
    /// Every marking listing carries a visibility stamp.
    all_visible: bool,
    /// Newest store time (ms) of a live file that lists it marked.
    marked_in_ms: i64,
}

impl Merged {
    fn new(p: IndexPack, file_ms: i64) -> Self {
        let marked = p.obsolete_since.is_some();
        Self {
            marked,
            all_visible: p.obsolete_visible.is_some(),
            marked_in_ms: if marked { file_ms } else { i64::MIN },
            pack: p,
        }
    }

    fn add(&mut self, p: &IndexPack, file_ms: i64) {
        let marked = p.obsolete_since.is_some();
        self.marked &= marked;
        self.all_visible &= p.obsolete_visible.is_some();
        if marked {
            self.marked_in_ms = self.marked_in_ms.max(file_ms);
        }
        self.pack.obsolete_since = self.pack.obsolete_since.max(p.obsolete_since);
        self.pack.obsolete_visible = self.pack.obsolete_visible.max(p.obsolete_visible);
    }

    /// The pack as the merged view has it: unmarked unless every live file marks it.
    fn finish(mut self) -> (IndexPack, i64) {
        if !self.marked {
            self.pack.obsolete_since = None;
            self.pack.obsolete_visible = None;
        } else if !self.all_visible {
            self.pack.obsolete_visible = None;
        }
        (self.pack, self.marked_in_ms)
    }
}

/// Packs grouped into index files of at most `per_file` blobs (at least one file, so that
/// an emptied repository still supersedes its old index).
fn split_index(packs: Vec<IndexPack>, per_file: usize) -> Vec<Vec<IndexPack>> {
    let mut files: Vec<Vec<IndexPack>> = vec![Vec::new()];
    let mut n = 0;
    for p in packs {
        if n + p.blobs.len() > per_file && !files.last().expect("one").is_empty() {
            files.push(Vec::new());
            n = 0;
        }
        n += p.blobs.len();
        files.last_mut().expect("one").push(p);
    }
    files
}

fn index_file_count(packs: &[IndexPack], per_file: usize) -> usize {
    split_index(packs.to_vec(), per_file).len()
}

fn ms(t: Timestamp) -> i64 {
    (t.as_nanos() / 1_000_000) as i64
}

fn from_ms(ms: i64) -> Timestamp {
    Timestamp::new(
        ms.div_euclid(1000),
        (ms.rem_euclid(1000) * 1_000_000) as u32,
    )
}

/// The live backup sessions, as a full run sees them.
#[derive(Default)]
struct Sessions {
    /// Start (ms, the writer's clock, checked against the store's when it began) of the
    /// oldest live backup session.
    oldest_live_backup: Option<i64>,
    /// Sessions whose heartbeat stopped, with the version read (deleted only if unchanged).
    dead: Vec<(String, crate::store::Version)>,
    /// A reason not to sweep: a session that cannot be read might be a live writer's.
    blocked: Option<String>,
}

impl Indexed {
    /// Run maintenance.
    pub async fn maintain(&self, opts: &MaintenanceOptions) -> Result<MaintenanceReport> {
        opts.validate()?;
        crate::lease::under_lease(
            &self.repo,
            SessionKind::Maintenance,
            &opts.identity,
            opts.break_lease,
            async |_, lease| self.maintain_locked(opts, lease).await,
        )
        .await
    }

    /// Read every live index file and merge what they say of each pack. Also returns, per
    /// pack, the newest store time of a live file listing it marked, and the newest store
    /// time of a live file that supersedes others (the end of the last replacement).
    async fn merged_index(
        &self,
        inputs: &[IndexId],
        visible: &HashMap<IndexId, i64>,
        progress: &MaintenanceProgress,
    ) -> Result<(Vec<(IndexPack, i64)>, i64)> {
        let now_ms = ms(self.repo.clock.now());
        let mut order: Vec<PackId> = Vec::new();
        let mut merged: HashMap<PackId, Merged> = HashMap::new();
        let mut last_replacement = i64::MIN;
        for id in inputs {
            progress.tick();
            let file_ms = visible.get(id).copied().unwrap_or(now_ms);
            let file = self.read_index_file(id).await?;
            if !file.supersedes.is_empty() {
                last_replacement = last_replacement.max(file_ms);
            }
            for p in file.packs {
                match merged.get_mut(&p.id) {
                    Some(m) => m.add(&p, file_ms),
                    None => {
                        order.push(p.id);
                        merged.insert(p.id, Merged::new(p, file_ms));
                    }
                }
            }
        }
        let packs = order
            .into_iter()
            .map(|id| merged.remove(&id).expect("merged").finish())
            .collect();
        Ok((packs, last_replacement))
    }

    /// When each index file in the store appeared, by the store's clock (ms).
    async fn index_visibility(&self) -> Result<HashMap<IndexId, i64>> {
        Ok(self
            .repo
            .store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .filter_map(|o| {
                layout::parse_id(layout::INDEX, &o.name)
                    .map(|id| (id, o.last_modified.timestamp_millis()))
            })
            .collect())
    }

    /// The writer sessions: which backups are alive, which sessions are dead.
    async fn read_sessions(&self, now_ms: i64) -> Result<Sessions> {
        let timeout = SESSION_TIMEOUT.as_millis() as i64;
        let mut out = Sessions::default();
        for o in self.repo.store.list(layout::SESSIONS).await? {
            if crate::store::foreign_by_size(&o) {
                continue;
            }
            let (bytes, version) = match self.repo.store.get_versioned(&o.name).await {
                Ok(x) => x,
                // Ended between the listing and the read.
                Err(e) if e.is_not_found() => continue,
                // Unknown sessions make every liveness judgement unsafe: stop.
                Err(e) => return Err(e),
            };
            // The store's time of the last write, beside the writer's own: a session is
            // alive while either says so.
            let written = o.last_modified.timestamp_millis();
            match Session::decode(&self.repo.keys, &bytes) {
                Ok(s) => {
                    let beat = ms(s.heartbeat).max(written);
                    if now_ms - beat > timeout {
                        out.dead.push((o.name, version));
                    } else if s.kind == SessionKind::Backup {
                        let started = ms(s.started);
                        out.oldest_live_backup =
                            Some(out.oldest_live_backup.map_or(started, |t| t.min(started)));
                    }
                }
                Err(e) if now_ms - written > timeout => {
                    tracing::warn!(
                        "session {} cannot be read ({e}) and is old: removed",
                        o.name
                    );
                    out.dead.push((o.name, version));
                }
                Err(e) => {
                    tracing::warn!("session {} cannot be read: {e}", o.name);
                    out.blocked = Some(format!(
                        "session object {} cannot be read ({e}); it may be a running backup's, \
                         so nothing is swept until it is {} old",
                        o.name,
                        human(SESSION_TIMEOUT)
                    ));
                }
            }
        }
        Ok(out)
    }

    async fn maintain_locked(
        &self,
        opts: &MaintenanceOptions,
        lease: &LeaseGuard,
    ) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let progress = &opts.progress;
        let per_file = opts.index_file_entries.max(1);
        progress.enter("reading the index", 0);
        self.resync().await?;
        let inputs = self.index.live_files()?;
        report.index_files.0 = inputs.len();
        let now = self.repo.clock.now();
        let now_ms = ms(now);

        if !opts.full {
            if inputs.len() >= 2 {
                let visible = self.index_visibility().await?;
                let (merged, _) = self.merged_index(&inputs, &visible, progress).await?;
                let out: Vec<IndexPack> = merged.into_iter().map(|m| m.0).collect();
                report.index_files.1 = if opts.dry_run {
                    index_file_count(&out, per_file)
                } else {
                    lease.confirm_held().await?;
                    self.replace_index(&self.index.present_files()?, out, per_file, lease)
                        .await?
                };
            } else {
                report.index_files.1 = inputs.len();
            }
            if !opts.dry_run {
                report.index_files_deleted = self.clean_superseded(opts, lease).await?;
            }
            return Ok(report);
        }

        // Live backup sessions, listed *before* the snapshots are read: a backup that ends
        // after this listing was seen alive; one that ended before it has its snapshot
        // read below. Either way nothing it uses is swept.
        let sessions_listed = ms(self.repo.clock.now());
        let sessions = self.read_sessions(now_ms).await?;
        let skew = opts.clock_skew.as_millis() as i64;
        let margin = opts.safety_margin.as_millis() as i64;

        // What the snapshots use. GC must know all of it, or it would delete live data.
        progress.enter("reading snapshots and their trees", 0);
        let snapshots = self.repo.snapshots().await.map_err(|e| {
            Error::Invalid(format!(
                "cannot read every snapshot, so no garbage can be collected safely: {e}"
            ))
        })?;
        // Every snapshot's index files were stored before it: reading the index *after*
        // listing the snapshots guarantees it covers every blob they use.
        let synced = self.resync().await?;
        // A damaged index file: the packs it lists look unindexed, so none is taken for a
        // leftover; everything else goes on (marked packs are judged from readable files,
        // and a pack whose used blobs have no other known copy is never swept).
        if let Some((id, e)) = synced.damaged.first() {
            report.leftovers_blocked = Some(format!(
                "index file {} cannot be read ({e}); unindexed packs are kept until `arca repo \
                 repair index` has run",
                id.short()
            ));
        }
        // A repository that went backwards may miss what newer snapshots use: delete
        // nothing until someone has looked.
        report.sweep_blocked = sessions.blocked.clone().or_else(|| {
            synced
                .went_backwards
                .as_ref()
                .map(|why| format!("nothing is deleted while {why}"))
        });
        if let Some(why) = &report.sweep_blocked
            && synced.went_backwards.is_some()
        {
            report.leftovers_blocked.get_or_insert_with(|| why.clone());
        }
        // A writer whose session started before `visible + skew` may have read an index
        // older than `visible`: what became unused then may still be used by it.
        // Milliseconds from here on: visibility, writes and session starts.
        let sweep_ok = report.sweep_blocked.is_none();
        let no_writer_before = |visible: i64| {
            sweep_ok
                && sessions
                    .oldest_live_backup
                    .is_none_or(|start| start > visible + skew)
        };
        let inputs = self.index.live_files()?;
        report.index_files.0 = inputs.len();
        let usage = self.usage(&snapshots).await?;
        if let Some(m) = usage.missing.iter().find(|m| !usage.data.contains(&m.blob)) {
            return Err(Error::Invalid(format!(
                "snapshot {} has an unreadable tree at {:?} ({}); run `arca repo check` and repair before collecting garbage",
                m.snapshot.short(),
                m.path,
                m.reason
            )));
        }

        // Decide per pack, from the merged view of every live index file.
        let visible = self.index_visibility().await?;
        progress.enter("deciding per pack", inputs.len() as u64);
        let (merged, last_replacement) = self.merged_index(&inputs, &visible, progress).await?;
        // Every pack in the store with its upload time (the store's clock), listed after
        // the index was read: for the young unused packs below and the leftovers after.
        let stored_packs = self.repo.store.list(layout::PACKS).await?;
        let written_at: HashMap<PackId, i64> = stored_packs
            .iter()
            .filter_map(|o| {
                layout::parse_pack(&o.name).map(|(_, id)| (id, o.last_modified.timestamp_millis()))
            })
            .collect();
        let mut fates = Vec::with_capacity(merged.len());
        for (mut p, marked_in) in merged {
            let used: u64 = p
                .blobs
                .iter()
                .filter(|b| usage.uses(&b.id))
                .map(|b| b.length as u64)
                .sum();
            if p.obsolete_since.is_none() {
                let little = used > 0 && (used as f64) < opts.repack_below * p.size as f64;
                // Unused, but uploaded after the oldest live backup began: that writer (or
                // a killed one whose session has not timed out) may still name it in its
                // snapshot, and a run again after a kill reuses it rather than upload it
                // anew. Kept unmarked until no such session lives. The pack's own upload
                // time, never its index files' (rewritten by every compaction). Not a
                // safety rule (a marked pack is never reused, only stored again), so no
                // skew allowance: a clock that disagrees only marks sooner or later.
                let young = sessions.oldest_live_backup.is_some_and(|start| {
                    written_at
                        .get(&p.id)
                        .is_some_and(|&written| written > start)
                });
                fates.push(if used == 0 && young {
                    Fate::Keep(p)
                } else if used == 0 {
                    Fate::Mark(p)
                } else if little {
                    Fate::Repack(p)
                } else {
                    Fate::Keep(p)
                });
                continue;
            }
            // A marked pack is needed again for a used blob with no copy in another live,
            // unmarked pack (a repacked pack's blobs all have one). A pack is never its
            // own surviving copy.
            let mut needed = false;
            for b in p.blobs.iter().filter(|b| usage.uses(&b.id)) {
                if !self.index.has_copy_outside(&b.id, &p.id)? {
                    needed = true;
                    break;
                }
            }
            if needed {
                fates.push(Fate::Resurrect(p));
                continue;
            }
            // When did every reader see the mark? The replacement that wrote it ended
            // with a file superseding the older ones; until then older files listed the
            // pack unmarked. The first run to see the mark stamps that time (the store's
            // clock) and later runs keep it, so rewriting the index never postpones a
            // sweep, and marking and sweeping are always two runs apart.
            let seen = match p.obsolete_visible {
                Some(t) => ms(t),
                None => {
                    let t = marked_in.max(last_replacement);
                    if t > now_ms - skew {
                        // Too recent to tell against this clock: the next run stamps it.
                        fates.push(Fate::Keep(p));
                        continue;
                    }
                    p.obsolete_visible = Some(from_ms(t));
                    t
                }
            };
            if now_ms - seen >= margin + skew && no_writer_before(seen) {
                fates.push(Fate::Sweep(p));
            } else {
                fates.push(Fate::Keep(p));
            }
        }

        // A little-used pack whose used blobs all have copies in packs that stay (two
        // writers stored the same chunks) is only marked, not copied again. Copies in
        // packs this run marks or repacks do not count.
        let leaving: HashSet<PackId> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Mark(p) | Fate::Repack(p) => Some(p.id),
                _ => None,
            })
            .collect();
        let mut decided = Vec::with_capacity(fates.len());
        for f in fates {
            let Fate::Repack(p) = f else {
                decided.push(f);
                continue;
            };
            let mut elsewhere = true;
            for b in p.blobs.iter().filter(|b| usage.uses(&b.id)) {
                if !self
                    .index
                    .has_copy_where(&b.id, |q| q != &p.id && !leaving.contains(q))?
                {
                    elsewhere = false;
                    break;
                }
            }
            decided.push(if elsewhere {
                Fate::Mark(p)
            } else {
                Fate::Repack(p)
            });
        }
        let fates = decided;

        // Repack: copy the used blobs of little-used packs into new packs.
        let mut out: Vec<IndexPack> = Vec::new();
        let mut sweep: Vec<(PackKind, PackId, u64)> = Vec::new();
        let mut writers: [Option<PackWriter>; 2] = [None, None];
        let mut new_packs: Vec<IndexPack> = Vec::new();
        let mut copied: HashSet<arca_format::BlobId> = HashSet::new();
        let repacks = fates
            .iter()
            .filter(|f| matches!(f, Fate::Repack(_)))
            .count();
        progress.enter("repacking", repacks as u64);
        for fate in fates {
            match fate {
                Fate::Keep(p) => {
                    if p.obsolete_since.is_some() {
                        report.packs_pending += 1;
                        report.bytes_pending += p.size;
                    }
                    out.push(p);
                }
                Fate::Mark(mut p) => {
                    report.packs_marked += 1;
                    report.packs_pending += 1;
                    report.bytes_pending += p.size;
                    p.obsolete_since = Some(now);
                    p.obsolete_visible = None;
                    out.push(p);
                }
                Fate::Resurrect(mut p) => {
                    report.packs_resurrected += 1;
                    p.obsolete_since = None;
                    p.obsolete_visible = None;
                    out.push(p);
                }
                Fate::Sweep(p) => {
                    sweep.push((p.kind(), p.id, p.size));
                }
                Fate::Repack(mut p) => {
                    progress.tick();
                    let used: Vec<PackEntry> = p
                        .blobs
                        .iter()
                        .filter(|b| usage.uses(&b.id))
                        .copied()
                        .collect();
                    if opts.dry_run {
                        report.packs_repacked += 1;
                        report.bytes_repacked += used.iter().map(|b| b.length as u64).sum::<u64>();
                        report.packs_marked += 1;
                        out.push(p);
                        continue;
                    }
                    match self
                        .copy_blobs(&p, &used, &mut writers, &mut new_packs, &mut copied)
                        .await
                    {
                        Ok(bytes) => {
                            report.packs_repacked += 1;
                            report.bytes_repacked += bytes;
                            report.packs_marked += 1;
                            report.packs_pending += 1;
                            report.bytes_pending += p.size;
                            p.obsolete_since = Some(now);
                            p.obsolete_visible = None;
                        }
                        // A damaged pack is kept as it is, for check and repair to see.
                        Err(e) => tracing::warn!("not repacking pack {}: {e}", p.id.short()),
                    }
                    out.push(p);
                }
            }
        }
        if !opts.dry_run {
            for w in writers.iter_mut() {
                if let Some(w) = w.take().filter(|w| !w.is_empty()) {
                    new_packs.push(self.upload_pack(w).await?);
                }
            }
        }
        out.extend(new_packs);

        // Leftovers: packs no index lists, older than the margin and than every live
        // backup session (a young one may belong to a writer that has not indexed it yet).
        let indexed: HashSet<PackId> = out
            .iter()
            .map(|p| p.id)
            .chain(sweep.iter().map(|s| s.1))
            .collect();
        let mut leftovers = Vec::new();
        // Blobs the snapshots need are missing from the index: an unindexed pack might
        // hold them, so none is taken for a leftover until check and repair had a look.
        let judge_leftovers = usage.missing.is_empty() && report.leftovers_blocked.is_none();
        for o in stored_packs.into_iter().filter(|_| judge_leftovers) {
            let Some((kind, id)) = layout::parse_pack(&o.name) else {
                continue;
            };
            let written = o.last_modified.timestamp_millis();
            // Only a pack written well before the sessions were listed can be judged: a
            // younger one may belong to a backup that started after the listing.
            if !indexed.contains(&id)
                && now_ms - written >= margin + skew
                && written + skew < sessions_listed
                && no_writer_before(written)
            {
                leftovers.push((kind, id, o.size));
            }
        }

        if opts.dry_run {
            report.packs_deleted = sweep.len();
            report.leftovers_deleted = leftovers.len();
            report.bytes_reclaimed = sweep.iter().chain(&leftovers).map(|s| s.2).sum();
            report.sessions_removed = sessions.dead.len();
            report.index_files.1 = index_file_count(&out, per_file);
            return Ok(report);
        }

        // Commit: the new index, then deletions that it no longer needs.
        progress.enter("writing the index", 0);
        self.repo.pauses.at("maintenance:before-index").await;
        lease.confirm_held().await?;
        report.index_files.1 = self
            .replace_index(&self.index.present_files()?, out, per_file, lease)
            .await?;
        self.repo.pauses.at("maintenance:before-delete").await;
        progress.enter(
            "deleting unused packs",
            (sweep.len() + leftovers.len()) as u64,
        );
        lease.confirm_held().await?;
        let mut deleted = 0;
        for (is_sweep, (kind, id, size)) in sweep
            .into_iter()
            .map(|s| (true, s))
            .chain(leftovers.into_iter().map(|l| (false, l)))
        {
            progress.tick();
            deleted += 1;
            if deleted % DELETES_PER_LEASE_CHECK == 0 {
                lease.confirm_held().await?;
            } else {
                lease.ensure_held()?;
            }
            self.repo.store.delete(&pack_name(kind, &id)).await?;
            if is_sweep {
                report.packs_deleted += 1;
            } else {
                report.leftovers_deleted += 1;
            }
            report.bytes_reclaimed += size;
        }
        report.index_files_deleted = self.clean_superseded(opts, lease).await?;
        for (name, version) in sessions.dead {
            lease.ensure_held()?;
            // A session that came back to life since it was read is left alone.
            match self.repo.store.delete_versioned(&name, &version).await {
                Ok(()) => report.sessions_removed += 1,
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        self.resync().await?;
        Ok(report)
    }

    /// Delete index files superseded by a present file that appeared at least the cleanup
    /// margin ago (by the store's clock). Any order is safe: a file that supersedes names
    /// every file present when it was written, so whatever is left is still superseded by
    /// the newest replacement, which is never deleted here.
    async fn clean_superseded(
        &self,
        opts: &MaintenanceOptions,
        lease: &LeaseGuard,
    ) -> Result<usize> {
        self.resync().await?;
        let visible = self.index_visibility().await?;
        let now_ms = ms(self.repo.clock.now());
        let margin = opts.cleanup_margin.as_millis() as i64;
        let mut doomed: Vec<IndexId> = Vec::new();
        for (by, superseded) in self.index.superseders()? {
            let Some(at) = visible.get(&by) else { continue };
            if now_ms - at >= margin {
                doomed.extend(
                    superseded
                        .into_iter()
                        .filter(|s| *s != by && visible.contains_key(s)),
                );
            }
        }
        doomed.sort();
        doomed.dedup();
        if doomed.is_empty() {
            return Ok(0);
        }
        lease.confirm_held().await?;
        for id in &doomed {
            lease.ensure_held()?;
            self.repo.store.delete(&layout::index(id)).await?;
        }
        self.resync().await?;
        Ok(doomed.len())
    }

    async fn read_index_file(&self, id: &IndexId) -> Result<IndexFile> {
        crate::cache::fetch_index_file(&self.repo.store, &self.repo.keys, id, None).await
    }

    /// Write `packs` as new index files of at most `per_file` entries, the last
    /// superseding `inputs`. Returns the number of files written. The inputs are left in
    /// place: [`Indexed::clean_superseded`] deletes them after the cleanup margin, so that
    /// a reader whose listing predates the new files never misses both.
    ///
    /// `inputs` must be every index file present, superseded ones included: deleting a
    /// file that supersedes another would otherwise bring the older one back to life.
    pub(crate) async fn replace_index(
        &self,
        inputs: &[IndexId],
        packs: Vec<IndexPack>,
        per_file: usize,
        lease: &LeaseGuard,
    ) -> Result<usize> {
        let files = split_index(packs, per_file);
        let count = files.len();
        for (i, packs) in files.into_iter().enumerate() {
            // Only the last file supersedes: until it is stored, the inputs stay live and
            // the merged view is still the old index (a pack is marked only once every
            // live file marks it).
            let supersedes = if i + 1 == count {
                inputs.to_vec()
            } else {
                Vec::new()
            };
            if i > 0 {
                self.repo.pauses.at("maintenance:between-index-files").await;
            }
            lease.ensure_held()?;
            self.write_index_file(IndexFile { supersedes, packs })
                .await?;
        }
        Ok(count)
    }

    /// Copy blobs of a pack (verified on the way) into the repack writers.
    async fn copy_blobs(
        &self,
        from: &IndexPack,
        blobs: &[PackEntry],
        writers: &mut [Option<PackWriter>; 2],
        done: &mut Vec<IndexPack>,
        copied_ids: &mut HashSet<arca_format::BlobId>,
    ) -> Result<u64> {
        // Exactly the size the index records: an object planted under the pack's name
        // cannot make this read more.
        let bytes = self
            .repo
            .store
            .get_range(&pack_name(from.kind(), &from.id), 0..from.size)
            .await?;
        let mut copied = 0;
        // Verify every blob first: a damaged one must not be carried over silently.
        for b in blobs {
            let sealed = bytes
                .get(b.offset as usize..b.end() as usize)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "pack {} is shorter than its index says",
                        from.id.short()
                    ))
                })?;
            pack::open_blob(&self.repo.keys, b, sealed)?;
        }
        let cfg = &self.repo.config;
        for b in blobs {
            if copied_ids.contains(&b.id) {
                continue; // the same blob from another repacked pack (two writers stored it)
            }
            copied_ids.insert(b.id);
            let kind = b.blob_type.pack_kind();
            let (slot, target) = match kind {
                PackKind::Data => (0, cfg.data_pack_size as usize),
                PackKind::Meta => (1, cfg.tree_pack_size as usize),
            };
            let w = writers[slot].get_or_insert_with(|| PackWriter::new(kind, target + (1 << 20)));
            w.add_sealed(
                b.blob_type,
                b.id,
                b.raw_length,
                &bytes[b.offset as usize..b.end() as usize],
            )?;
            copied += b.length as u64;
            if w.len() >= target {
                let full = writers[slot].take().expect("present");
                done.push(self.upload_pack(full).await?);
            }
        }
        Ok(copied)
    }

    async fn upload_pack(&self, w: PackWriter) -> Result<IndexPack> {
        let keys = self.repo.keys.clone();
        let p = tokio::task::spawn_blocking(move || w.finish(&keys))
            .await
            .expect("finish task panicked")?;
        let size = p.bytes.len() as u64;
        self.repo
            .store
            .put(
                &pack_name(p.kind, &p.id),
                Bytes::from(p.bytes),
                WriteMode::Overwrite,
            )
            .await?;
        Ok(IndexPack {
            id: p.id,
            size,
            obsolete_since: None,
            obsolete_visible: None,
            blobs: p.entries,
        })
    }
}
