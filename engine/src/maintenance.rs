//! Maintenance: index compaction (quick) and garbage collection with repacking (full),
//! safe beside running backups (FORMAT.md section 14.3).
//!
//! A full run, under the maintenance lease:
//! 1. computes the blobs every snapshot uses;
//! 2. streams the live index files and decides per pack: keep; **mark** obsolete (unused);
//!    **repack** (little used: its used blobs are copied into new packs, then it is marked);
//!    **resurrect** (marked earlier, but a snapshot written since uses it); or **sweep**
//!    (marked at least the safety margin ago, still unused, and no backup session that
//!    started before the mark is still alive);
//! 3. uploads the repacked packs, writes the new index files (the last one superseding all
//!    the inputs), deletes the inputs, then deletes the swept packs;
//! 4. deletes packs no index lists that are older than the margin and than every live
//!    backup session (leftovers of crashed writers), and sessions whose heartbeat stopped.
//!
//! Every step leaves a valid repository if the process dies after it: nothing is deleted
//! before the index that no longer needs it is stored.

use std::collections::HashSet;
use std::time::Duration;

use arca_format::{
    IndexFile, IndexId, IndexPack, Lease, PackEntry, PackId, PackKind, PackWriter, Session,
    SessionKind, Timestamp, layout, pack,
};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::indexed::{Indexed, pack_name};
use crate::repo::Identity;
use crate::session::{SESSION_TIMEOUT, SessionGuard};
use crate::store::WriteMode;

/// Entries per index file written by maintenance (bounded decode memory, FORMAT.md 11).
const INDEX_FILE_ENTRIES: usize = 500_000;
/// How far writers' clocks may disagree with the store's (FORMAT.md section 2).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// How long a lease lasts unless renewed.
const LEASE_LENGTH: Duration = Duration::from_secs(30 * 60);

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
    /// How long a pack stays marked obsolete before it may be deleted, and how old an
    /// unindexed pack must be before it is taken for a leftover.
    pub safety_margin: Duration,
    /// Packs whose used bytes are below this fraction are repacked.
    pub repack_below: f64,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Who runs it.
    pub identity: Identity,
    /// Take the maintenance lease even if another maintainer holds it (only when that one
    /// is known to be gone).
    pub break_lease: bool,
    /// How far writers' clocks may disagree with the store's.
    pub clock_skew: Duration,
    /// Where the run reports its progress.
    pub progress: std::sync::Arc<MaintenanceProgress>,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        Self {
            full: false,
            safety_margin: Duration::from_secs(3600),
            repack_below: 0.5,
            dry_run: false,
            identity: Identity::current(),
            break_lease: false,
            clock_skew: CLOCK_SKEW,
            progress: Default::default(),
        }
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
    /// Dead writer sessions removed.
    pub sessions_removed: usize,
}

/// The lease, held for the run and renewed in the background.
struct LeaseGuard {
    idx: Indexed,
    renew: tokio::task::JoinHandle<()>,
}

impl LeaseGuard {
    async fn take(
        idx: &Indexed,
        session: &SessionGuard,
        who: &Identity,
        force: bool,
    ) -> Result<Self> {
        let store = &idx.repo.store;
        let keys = idx.repo.keys.clone();
        let make = |now: Timestamp| Lease {
            session: session.id(),
            host: who.host.clone(),
            pid: std::process::id(),
            acquired: now,
            expires: Timestamp::new(now.seconds + LEASE_LENGTH.as_secs() as i64, 0),
        };
        let lease = make(Timestamp::now());
        let bytes = Bytes::from(lease.encode(&keys)?);
        match store
            .put(layout::LEASE, bytes.clone(), WriteMode::CreateNew)
            .await
        {
            Ok(()) => {}
            Err(Error::Store {
                kind: crate::StoreErrorKind::AlreadyExists,
                ..
            }) => {
                let held = Lease::decode(&keys, &store.get(layout::LEASE).await?);
                match held {
                    Ok(h)
                        if h.expires.seconds > Timestamp::now().seconds
                            && !force
                            && !holder_is_gone(&h, who) =>
                    {
                        return Err(Error::Invalid(format!(
                            "maintenance is already running on {} (pid {}, since {}s ago); its lease lapses in {} s \
                             (if that process is gone, --break-lease takes it now)",
                            h.host,
                            h.pid,
                            Timestamp::now().seconds - h.acquired.seconds,
                            h.expires.seconds - Timestamp::now().seconds
                        )));
                    }
                    // Lapsed (or unreadable): break it, then take it like anyone else.
                    _ => {
                        tracing::warn!("breaking a lapsed maintenance lease");
                        store.delete(layout::LEASE).await?;
                        store
                            .put(layout::LEASE, bytes, WriteMode::CreateNew)
                            .await?;
                    }
                }
            }
            Err(e) => return Err(e),
        }
        let (i, l) = (idx.clone(), lease.clone());
        let renew = tokio::spawn(async move {
            let mut l = l;
            loop {
                tokio::time::sleep(LEASE_LENGTH / 3).await;
                let now = Timestamp::now();
                l.expires = Timestamp::new(now.seconds + LEASE_LENGTH.as_secs() as i64, 0);
                if let Ok(b) = l.encode(&i.repo.keys) {
                    let _ = i
                        .repo
                        .store
                        .put(layout::LEASE, Bytes::from(b), WriteMode::Overwrite)
                        .await;
                }
            }
        });
        Ok(Self {
            idx: idx.clone(),
            renew,
        })
    }

    async fn release(self) -> Result<()> {
        self.renew.abort();
        self.idx.repo.store.delete(layout::LEASE).await
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Whether the lease's holder certainly no longer runs: it was this host, and its process
/// is gone (or is this very process, which is not running maintenance: a crashed run).
fn holder_is_gone(h: &Lease, who: &Identity) -> bool {
    if h.host != who.host {
        return false;
    }
    if h.pid == std::process::id() {
        return true;
    }
    let pid = nix::unistd::Pid::from_raw(h.pid as i32);
    matches!(
        nix::sys::signal::kill(pid, None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// What happens to one pack.
enum Fate {
    Keep(IndexPack),
    Mark(IndexPack),
    Repack(IndexPack),
    Resurrect(IndexPack),
    Sweep(IndexPack),
}

/// Packs grouped into index files of at most [`INDEX_FILE_ENTRIES`] blobs (at least one
/// file, so that an emptied repository still supersedes its old index).
fn split_index(packs: Vec<IndexPack>) -> Vec<Vec<IndexPack>> {
    let mut files: Vec<Vec<IndexPack>> = vec![Vec::new()];
    let mut n = 0;
    for p in packs {
        if n + p.blobs.len() > INDEX_FILE_ENTRIES && !files.last().expect("one").is_empty() {
            files.push(Vec::new());
            n = 0;
        }
        n += p.blobs.len();
        files.last_mut().expect("one").push(p);
    }
    files
}

fn index_file_count(packs: &[IndexPack]) -> usize {
    split_index(packs.to_vec()).len()
}

impl Indexed {
    /// Run maintenance.
    pub async fn maintain(&self, opts: &MaintenanceOptions) -> Result<MaintenanceReport> {
        let session =
            SessionGuard::start(&self.repo, SessionKind::Maintenance, &opts.identity).await?;
        let lease = LeaseGuard::take(self, &session, &opts.identity, opts.break_lease).await?;
        let result = self.maintain_locked(opts).await;
        let released = lease.release().await;
        let ended = session.end().await;
        let report = result?;
        released?;
        ended?;
        Ok(report)
    }

    async fn maintain_locked(&self, opts: &MaintenanceOptions) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let progress = &opts.progress;
        progress.enter("reading the index", 0);
        self.resync().await?;
        let inputs = self.index.live_files()?;
        report.index_files.0 = inputs.len();
        let now = Timestamp::now();
        let margin = opts.safety_margin.as_secs() as i64;

        if !opts.full {
            if inputs.len() < 2 {
                report.index_files.1 = inputs.len();
                return Ok(report);
            }
            let mut out = Vec::new();
            let mut seen = HashSet::new();
            for id in &inputs {
                for p in self.read_index_file(id).await?.packs {
                    if seen.insert(p.id) {
                        out.push(p);
                    }
                }
            }
            report.index_files.1 = if opts.dry_run {
                index_file_count(&out)
            } else {
                self.replace_index(&self.index.present_files()?, out)
                    .await?
            };
            return Ok(report);
        }

        // Live backup sessions, listed *before* the snapshots are read: a backup that ends
        // after this listing was seen alive; one that ended before it has its snapshot
        // read below. Either way nothing it uses is swept.
        let sessions_listed = (Timestamp::now().as_nanos() / 1_000_000) as i64;
        let mut oldest_live_backup: Option<i64> = None;
        let mut dead_sessions = Vec::new();
        for o in self.repo.store.list(layout::SESSIONS).await? {
            let Ok(bytes) = self.repo.store.get(&o.name).await else {
                continue;
            };
            match Session::decode(&self.repo.keys, &bytes) {
                Ok(s) if now.seconds - s.heartbeat.seconds > SESSION_TIMEOUT.as_secs() as i64 => {
                    dead_sessions.push(o.name)
                }
                Ok(s) if s.kind == SessionKind::Backup => {
                    let started = (s.started.as_nanos() / 1_000_000) as i64;
                    oldest_live_backup =
                        Some(oldest_live_backup.map_or(started, |t: i64| t.min(started)));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("session {}: {e}", o.name),
            }
        }
        // A writer whose session started before `visible + skew` may have read an index
        // older than `visible`: what became unused then may still be used by it.
        // Milliseconds from here on: visibility, writes and session starts.
        let skew = opts.clock_skew.as_millis() as i64;
        let no_writer_before =
            |visible: i64| oldest_live_backup.is_none_or(|start| start > visible + skew);

        // What the snapshots use. GC must know all of it, or it would delete live data.
        progress.enter("reading snapshots and their trees", 0);
        let snapshots = self.repo.snapshots().await.map_err(|e| {
            Error::Invalid(format!(
                "cannot read every snapshot, so no garbage can be collected safely: {e}"
            ))
        })?;
        // Every snapshot's index files were stored before it: reading the index *after*
        // listing the snapshots guarantees it covers every blob they use.
        if let Some((id, e)) = self.resync().await?.damaged.into_iter().next() {
            // The packs it lists would look unindexed, and be taken for leftovers.
            return Err(Error::Invalid(format!(
                "index file {} is damaged ({e}); run `arca repo repair index` before collecting garbage",
                id.short()
            )));
        }
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

        // When each index file became visible (the store's clock).
        let visible: std::collections::HashMap<IndexId, i64> = self
            .repo
            .store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .filter_map(|o| {
                layout::parse_id(layout::INDEX, &o.name)
                    .map(|id| (id, o.last_modified.timestamp_millis()))
            })
            .collect();

        // Decide per pack, streaming the index files.
        let mut seen = HashSet::new();
        let mut fates = Vec::new();
        progress.enter("deciding per pack", inputs.len() as u64);
        for id in &inputs {
            progress.tick();
            let file_visible = visible
                .get(id)
                .copied()
                .unwrap_or((now.as_nanos() / 1_000_000) as i64);
            for p in self.read_index_file(id).await?.packs {
                if !seen.insert(p.id) {
                    continue;
                }
                let used: u64 = p
                    .blobs
                    .iter()
                    .filter(|b| usage.uses(&b.id))
                    .map(|b| b.length as u64)
                    .sum();
                // A marked pack is needed again only for a used blob with no other live
                // copy (a repacked pack's blobs all have one).
                let needed = p.obsolete_since.is_some()
                    && p.blobs
                        .iter()
                        .filter(|b| usage.uses(&b.id))
                        .try_fold(false, |acc, b| {
                            Ok::<_, Error>(acc || !self.index.has(&b.id)?)
                        })?;
                let fate = match p.obsolete_since {
                    Some(_) if needed => Fate::Resurrect(p),
                    Some(t)
                        if now.seconds - t.seconds >= margin && no_writer_before(file_visible) =>
                    {
                        Fate::Sweep(p)
                    }
                    Some(_) => Fate::Keep(p),
                    None if used == 0 => Fate::Mark(p),
                    None if (used as f64) < opts.repack_below * p.size as f64 => Fate::Repack(p),
                    None => Fate::Keep(p),
                };
                fates.push(fate);
            }
        }

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
                    out.push(p);
                }
                Fate::Resurrect(mut p) => {
                    report.packs_resurrected += 1;
                    p.obsolete_since = None;
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
        let judge_leftovers = usage.missing.is_empty();
        for o in self
            .repo
            .store
            .list(layout::PACKS)
            .await?
            .into_iter()
            .filter(|_| judge_leftovers)
        {
            let Some((kind, id)) = layout::parse_pack(&o.name) else {
                continue;
            };
            let written = o.last_modified.timestamp_millis();
            // Only a pack written well before the sessions were listed can be judged: a
            // younger one may belong to a backup that started after the listing.
            if !indexed.contains(&id)
                && now.seconds - written / 1000 >= margin
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
            report.sessions_removed = dead_sessions.len();
            report.index_files.1 = index_file_count(&out);
            return Ok(report);
        }

        // Commit: the new index, then deletions that it no longer needs.
        progress.enter("writing the index", 0);
        report.index_files.1 = self
            .replace_index(&self.index.present_files()?, out)
            .await?;
        progress.enter(
            "deleting unused packs",
            (sweep.len() + leftovers.len()) as u64,
        );
        for (kind, id, size) in sweep {
            progress.tick();
            self.repo.store.delete(&pack_name(kind, &id)).await?;
            report.packs_deleted += 1;
            report.bytes_reclaimed += size;
        }
        for (kind, id, size) in leftovers {
            progress.tick();
            self.repo.store.delete(&pack_name(kind, &id)).await?;
            report.leftovers_deleted += 1;
            report.bytes_reclaimed += size;
        }
        for name in dead_sessions {
            self.repo.store.delete(&name).await?;
            report.sessions_removed += 1;
        }
        self.resync().await?;
        Ok(report)
    }

    async fn read_index_file(&self, id: &IndexId) -> Result<IndexFile> {
        let bytes = self.repo.store.get(&layout::index(id)).await?;
        let keys = self.repo.keys.clone();
        tokio::task::spawn_blocking(move || IndexFile::decode(&keys, &bytes))
            .await
            .expect("decode task panicked")
            .map_err(Into::into)
    }

    /// Write `packs` as new index files, the last superseding `inputs`; then delete the
    /// inputs. Returns the number of files written.
    ///
    /// `inputs` must be every index file present, superseded ones included: deleting a
    /// file that supersedes another would otherwise bring the older one back to life.
    pub(crate) async fn replace_index(
        &self,
        inputs: &[IndexId],
        packs: Vec<IndexPack>,
    ) -> Result<usize> {
        let files = split_index(packs);
        let count = files.len();
        for (i, packs) in files.into_iter().enumerate() {
            // Only the last file supersedes: until it is stored, the inputs stay live and
            // the union is still the whole index.
            let supersedes = if i + 1 == count {
                inputs.to_vec()
            } else {
                Vec::new()
            };
            self.write_index_file(IndexFile { supersedes, packs })
                .await?;
        }
        for id in inputs {
            self.repo.store.delete(&layout::index(id)).await?;
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
        let bytes = self
            .repo
            .store
            .get(&pack_name(from.kind(), &from.id))
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
            blobs: p.entries,
        })
    }
}
