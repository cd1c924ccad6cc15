//! Repair: rebuild the index from the packs themselves, and rewrite snapshots that refer
//! to lost data so that the damage is marked and everything else stays restorable.

use std::collections::{HashMap, HashSet};

use std::sync::Arc;

use arca_format::{
    BlobId, IndexId, IndexPack, NodeKind, PackId, PackKind, Snapshot, SnapshotId, SnapshotRoot,
    layout, pack,
};
use futures::StreamExt;

use crate::backup::store_tree;
use crate::error::Result;
use crate::indexed::{Indexed, pack_name};
use crate::writer::Writer;

/// What `repair index` did.
#[derive(Clone, Debug, Default)]
pub struct RepairIndexReport {
    /// Packs whose trailer was read.
    pub packs: usize,
    /// Blobs now indexed.
    pub blobs: usize,
    /// Packs whose trailer could not be read: left out of the index.
    pub unreadable: Vec<(PackId, String)>,
    /// Index files written.
    pub index_files: usize,
}

/// One rewritten snapshot.
#[derive(Clone, Debug)]
pub struct RepairedSnapshot {
    /// The damaged original (deleted unless kept).
    pub original: SnapshotId,
    /// The rewrite, or `None` in a dry run.
    pub new: Option<SnapshotId>,
    /// Paths marked damaged in it.
    pub damaged: Vec<String>,
}

/// Bytes read from the end of a pack to find its trailer in one request.
const TAIL: u64 = 64 << 10;

impl Indexed {
    /// Read a pack's trailer with ranged reads of its end.
    pub(crate) async fn read_trailer(
        &self,
        kind: PackKind,
        id: &PackId,
        size: u64,
    ) -> Result<Vec<arca_format::PackEntry>> {
        let name = pack_name(kind, id);
        let start = size.saturating_sub(TAIL);
        let tail = self.repo.store.get_range(&name, start..size).await?;
        let tlen = pack::trailer_len(&tail)? as u64;
        let need = tlen + pack::FOOTER_LEN as u64;
        if need > size {
            return Err(arca_format::Error::Corrupt {
                what: arca_format::What::Pack,
                reason: "trailer longer than the pack".into(),
            }
            .into());
        }
        let trailer_start = size - need;
        let sealed = if trailer_start >= start {
            tail.slice((trailer_start - start) as usize..(size - start) as usize - pack::FOOTER_LEN)
        } else {
            self.repo
                .store
                .get_range(&name, trailer_start..size - pack::FOOTER_LEN as u64)
                .await?
        };
        Ok(pack::decode_trailer(
            &self.repo.keys,
            &sealed,
            trailer_start,
        )?)
    }

    /// Rebuild the index from every pack's trailer; the new index files supersede all
    /// existing ones. Runs under the maintenance lease (no GC beside it) and a session.
    /// Obsolete marks of packs that are still marked are kept (the next GC confirms them
    /// again before it sweeps).
    pub async fn repair_index(&self) -> Result<RepairIndexReport> {
        crate::lease::under_lease(
            &self.repo,
            arca_format::SessionKind::Maintenance,
            &crate::repo::Identity::current(),
            false,
            async |_, lease| self.repair_index_locked(lease).await,
        )
        .await
    }

    async fn repair_index_locked(
        &self,
        lease: &crate::lease::LeaseGuard,
    ) -> Result<RepairIndexReport> {
        let mut report = RepairIndexReport::default();
        // Index files first, then packs: a writer's checkpoint stored in between is not
        // superseded (it was not listed), and every pack it names is read below or after.
        let inputs: Vec<IndexId> = self
            .repo
            .store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .filter_map(|o| layout::parse_id(layout::INDEX, &o.name))
            .collect();
        self.repo.pauses.at("repair:index-listed").await;
        self.resync().await?;
        let marks: HashMap<PackId, i64> = self
            .index
            .packs()?
            .into_iter()
            .filter_map(|p| p.obsolete_since.map(|t| (p.id, t)))
            .collect();
        let packs: Vec<(PackKind, PackId, u64)> = self
            .repo
            .store
            .list(layout::PACKS)
            .await?
            .into_iter()
            .filter_map(|o| layout::parse_pack(&o.name).map(|(k, id)| (k, id, o.size)))
            .collect();
        let results: Vec<_> =
            futures::stream::iter(packs.into_iter().map(|(kind, id, size)| async move {
                (kind, id, size, self.read_trailer(kind, &id, size).await)
            }))
            .buffer_unordered(8)
            .collect()
            .await;
        let mut out = Vec::new();
        for (kind, id, size, r) in results {
            match r {
                Ok(entries) if entries.first().map(|e| e.blob_type.pack_kind()) == Some(kind) => {
                    report.packs += 1;
                    report.blobs += entries.len();
                    out.push(IndexPack {
                        id,
                        size,
                        obsolete_since: marks.get(&id).map(|s| arca_format::Timestamp::new(*s, 0)),
                        obsolete_visible: None,
                        blobs: entries,
                    });
                }
                Ok(_) => report.unreadable.push((
                    id,
                    format!("holds blobs of the wrong kind for packs/{}/", kind.dir()),
                )),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => report.unreadable.push((id, e.to_string())),
            }
        }
        out.sort_by_key(|p| p.id);
        lease.confirm_held().await?;
        report.index_files = self
            .replace_index(&inputs, out, crate::maintenance::INDEX_FILE_ENTRIES, lease)
            .await?;
        self.resync().await?;
        Ok(report)
    }

    /// Rewrite every snapshot that needs a blob that is missing from the index, or in
    /// `bad` (damaged blobs found by `check --read-data`). Files with lost content become
    /// empty and carry a damage note; directories whose listing is lost become empty and
    /// carry one. The originals are deleted unless `keep_original`.
    pub async fn repair_snapshots(
        &self,
        bad: &HashSet<BlobId>,
        dry_run: bool,
        keep_original: bool,
    ) -> Result<Vec<RepairedSnapshot>> {
        // A writer like any backup: under a session, so maintenance keeps what it writes
        // and it stops if it stalls past the session timeout; and under the maintenance
        // lease, so that no GC decides what is unused while snapshots are being replaced.
        crate::lease::under_lease(
            &self.repo,
            arca_format::SessionKind::Backup,
            &crate::repo::Identity::current(),
            false,
            async |session, lease| {
                self.repair_snapshots_locked(bad, dry_run, keep_original, session, lease)
                    .await
            },
        )
        .await
    }

    async fn repair_snapshots_locked(
        &self,
        bad: &HashSet<BlobId>,
        dry_run: bool,
        keep_original: bool,
        session: &crate::session::SessionGuard,
        lease: &crate::lease::LeaseGuard,
    ) -> Result<Vec<RepairedSnapshot>> {
        self.resync().await?;
        // A damaged manifest cannot be rewritten (check names it); the others can.
        let (snapshots, _) = self.repo.readable_snapshots().await?;
        let writer = Arc::new(Writer::new(
            self,
            self.repo.config.compression,
            session.liveness(),
        ));
        let mut memo: HashMap<BlobId, (BlobId, Vec<String>)> = HashMap::new();
        let mut rewrites = Vec::new();
        for (id, snap) in &snapshots {
            let SnapshotRoot::Tree(root) = snap.root else {
                continue; // volume snapshots are repaired by their mover
            };
            let (new_root, damaged) =
                Box::pin(self.repair_tree(root, bad, &writer, &mut memo, dry_run)).await?;
            if !damaged.is_empty() {
                rewrites.push((*id, snap.clone(), new_root, damaged));
            }
        }
        writer.finish().await?;
        let mut out = Vec::new();
        for (old, snap, root, damaged) in rewrites {
            let new = if dry_run {
                None
            } else {
                let mut s: Snapshot = snap;
                s.root = SnapshotRoot::Tree(root);
                if let Some(top) = &mut s.top {
                    top.kind = NodeKind::Dir { subtree: root };
                }
                s.original = Some(old);
                session.check_fresh()?;
                let new = self.repo.write_snapshot(&s).await?;
                session.check_fresh()?;
                if !keep_original {
                    // The original goes only once its replacement is stored, reads back,
                    // and needs nothing the index lacks.
                    let back = self.repo.snapshot(&new).await?;
                    let usage = self.usage(&[(new, back)]).await?;
                    if let Some(m) = usage.missing.first() {
                        return Err(crate::error::Error::Invalid(format!(
                            "the repaired snapshot {} still needs blob {} at {:?} ({}); the \
                             original {} is kept",
                            new.short(),
                            m.blob.short(),
                            m.path,
                            m.reason,
                            old.short()
                        )));
                    }
                    lease.ensure_held()?;
                    self.repo.delete_snapshot(&old).await?;
                }
                Some(new)
            };
            out.push(RepairedSnapshot {
                original: old,
                new,
                damaged,
            });
        }
        Ok(out)
    }

    async fn repair_tree(
        &self,
        id: BlobId,
        bad: &HashSet<BlobId>,
        writer: &Arc<Writer>,
        memo: &mut HashMap<BlobId, (BlobId, Vec<String>)>,
        dry_run: bool,
    ) -> Result<(BlobId, Vec<String>)> {
        if let Some(r) = memo.get(&id) {
            return Ok(r.clone());
        }
        let lost =
            |b: &BlobId| -> Result<bool> { Ok(bad.contains(b) || self.index.lookup(b)?.is_none()) };
        // The whole directory, following its chain; a lost link loses the rest.
        let mut nodes = Vec::new();
        let mut damaged = Vec::new();
        let mut next = Some(id);
        while let Some(t) = next.take() {
            if lost(&t)? {
                damaged.push(String::new());
                break;
            }
            match self.read_tree_blob(&t).await {
                Ok(tree) => {
                    next = tree.next;
                    nodes.extend(tree.nodes);
                }
                // Only damage counts as loss: any other failure (the store, the cache)
                // stops the repair rather than rewrite a snapshot on a passing view.
                Err(e) if !is_loss(&e) => return Err(e),
                Err(_) => {
                    damaged.push(String::new());
                    break;
                }
            }
        }
        let mut changed = !damaged.is_empty();
        for n in nodes.iter_mut() {
            let name = String::from_utf8_lossy(&n.name).into_owned();
            match &mut n.kind {
                NodeKind::Dir { subtree } => {
                    let (new, below) =
                        Box::pin(self.repair_tree(*subtree, bad, writer, memo, dry_run)).await?;
                    if new != *subtree {
                        *subtree = new;
                        changed = true;
                    }
                    if below.iter().any(|p| p.is_empty()) {
                        n.damage = Some("directory listing lost; restored empty".into());
                    }
                    damaged.extend(below.into_iter().map(|p| {
                        if p.is_empty() {
                            name.clone()
                        } else {
                            format!("{name}/{p}")
                        }
                    }));
                }
                NodeKind::File { content, .. } => {
                    let total = content.len();
                    let mut missing = 0;
                    for c in content.iter() {
                        if lost(c)? {
                            missing += 1;
                        }
                    }
                    if missing > 0 {
                        n.damage =
                            Some(format!("{missing} of {total} chunks lost; restored empty"));
                        content.clear();
                        n.size = 0;
                        changed = true;
                        damaged.push(name);
                    }
                }
                _ => {}
            }
        }
        let result = if !changed || dry_run {
            (id, damaged)
        } else {
            let w = writer.clone();
            let new = tokio::task::spawn_blocking(move || store_tree(&w, nodes))
                .await
                .expect("tree task panicked")?;
            (new, damaged)
        };
        memo.insert(id, result.clone());
        Ok(result)
    }
}

/// Whether an error reading a blob means it is lost (damaged or gone), as opposed to a
/// failure that says nothing about the data.
fn is_loss(e: &crate::error::Error) -> bool {
    use crate::error::Error;
    match e {
        Error::Format(f) => f.is_corruption(),
        Error::MissingBlob { .. } => true,
        e => e.is_not_found(),
    }
}
