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
    /// existing ones. Obsolete marks are dropped (the next GC sets them again).
    pub async fn repair_index(&self) -> Result<RepairIndexReport> {
        let mut report = RepairIndexReport::default();
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
                        obsolete_since: None,
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
        let inputs: Vec<IndexId> = self
            .repo
            .store
            .list(layout::INDEX)
            .await?
            .into_iter()
            .filter_map(|o| layout::parse_id(layout::INDEX, &o.name))
            .collect();
        report.index_files = self.replace_index(&inputs, out).await?;
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
        self.resync().await?;
        // A damaged manifest cannot be rewritten (check names it); the others can.
        let (snapshots, _) = self.repo.readable_snapshots().await?;
        let writer = Arc::new(Writer::new(self, self.repo.config.compression));
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
                s.original = Some(old);
                let new = self.repo.write_snapshot(&s).await?;
                if !keep_original {
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
                Err(e) if e.is_transient() => return Err(e),
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
                    let missing = content.iter().filter(|c| lost(c).unwrap_or(true)).count();
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
