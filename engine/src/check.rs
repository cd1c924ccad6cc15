//! Integrity check: the structure (every snapshot's trees and blobs reachable, the index
//! consistent with the packs in the store) and, on request, the data itself (every blob
//! of every pack, or a subset, downloaded, authenticated and decrypted). A problem is
//! named precisely: which pack, which blobs, which snapshots and paths are affected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arca_format::{BlobId, PackId, PackKind, Snapshot, SnapshotId, layout, pack};
use futures::StreamExt;

use crate::error::Result;
use crate::indexed::{Indexed, pack_name};
pub use crate::usage::Missing;

/// How much data to read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReadData {
    /// Structure only.
    #[default]
    None,
    /// Every pack.
    All,
    /// Part `n` of `m` (1-based): run n = 1..m on successive days to read everything.
    Subset {
        /// Which part.
        n: u32,
        /// Of how many.
        m: u32,
    },
    /// About this percentage of the packs, chosen at random.
    Percent(f64),
}

/// A pack with damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackDamage {
    /// The pack.
    pub pack: PackId,
    /// What is wrong with it.
    pub reason: String,
    /// The blobs lost with it.
    pub blobs: Vec<BlobId>,
}

/// What a check found.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Distinct tree blobs walked.
    pub trees: usize,
    /// Distinct data blobs referenced.
    pub data_blobs: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs downloaded and verified.
    pub packs_read: usize,
    /// Structural errors (index vs store, unreadable snapshots), one line each.
    pub errors: Vec<String>,
    /// Damaged or missing packs.
    pub damaged_packs: Vec<PackDamage>,
    /// Blobs snapshots need that are missing or unreadable.
    pub missing: Vec<Missing>,
    /// Per snapshot, the paths that cannot be restored intact.
    pub affected: Vec<(SnapshotId, Vec<String>)>,
    /// Packs in the store that no index lists: leftovers of interrupted writers, which
    /// maintenance reclaims. Not an error.
    pub unindexed_packs: Vec<PackId>,
}

impl CheckReport {
    /// No damage of any kind.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.damaged_packs.is_empty() && self.missing.is_empty()
    }
}

/// Live counters for a progress bar.
#[derive(Debug, Default)]
pub struct CheckProgress {
    /// Packs to read.
    pub packs_total: AtomicU64,
    /// Packs read.
    pub packs_done: AtomicU64,
    /// Bytes read.
    pub bytes_done: AtomicU64,
}

fn chosen(index: usize, how: ReadData) -> bool {
    match how {
        ReadData::None => false,
        ReadData::All => true,
        ReadData::Subset { n, m } => m > 0 && (index as u32 % m) + 1 == n,
        // A fresh random sample each run, so repeated runs cover everything.
        ReadData::Percent(p) => {
            (getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64) * 100.0 < p
        }
    }
}

impl Indexed {
    /// Check the repository.
    pub async fn check(&self, read: ReadData, progress: Arc<CheckProgress>) -> Result<CheckReport> {
        let mut r = CheckReport::default();
        for (id, e) in self.resync().await?.damaged {
            r.errors.push(format!(
                "index file {}: {e} (run `arca repo repair index`)",
                id.to_hex()
            ));
        }

        // Snapshots, one by one, so a damaged manifest is reported, not fatal.
        let mut snapshots: Vec<(SnapshotId, Snapshot)> = Vec::new();
        for o in self.repo.store.list(layout::SNAPSHOTS).await? {
            let Some(id) = layout::parse_id::<SnapshotId>(layout::SNAPSHOTS, &o.name) else {
                continue;
            };
            match self.repo.snapshot(&id).await {
                Ok(s) => snapshots.push((id, s)),
                Err(e) => r.errors.push(format!("snapshot {}: {e}", id.short())),
            }
        }
        r.snapshots = snapshots.len();

        // Index against store.
        let mut in_store: HashMap<PackId, (PackKind, u64)> = HashMap::new();
        for o in self.repo.store.list(layout::PACKS).await? {
            if let Some((kind, id)) = layout::parse_pack(&o.name) {
                in_store.insert(id, (kind, o.size));
            }
        }
        let indexed = self.index.packs()?;
        r.packs = indexed.len();
        let mut lost: HashMap<PackId, String> = HashMap::new();
        for p in &indexed {
            match in_store.get(&p.id) {
                None => {
                    lost.insert(
                        p.id,
                        "listed in the index but missing from the store".into(),
                    );
                }
                Some((kind, size)) if *kind != p.kind || *size != p.size => {
                    lost.insert(
                        p.id,
                        format!(
                            "the store holds {size} bytes under packs/{}/, the index says {} bytes of {:?} blobs",
                            kind.dir(),
                            p.size,
                            p.kind
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        let indexed_ids: HashSet<PackId> = indexed.iter().map(|p| p.id).collect();
        r.unindexed_packs = in_store
            .keys()
            .filter(|id| !indexed_ids.contains(id))
            .copied()
            .collect();
        r.unindexed_packs.sort();

        // Blob counts per pack (to compare with trailers) and the blobs of lost packs.
        let mut counts: HashMap<PackId, u32> = HashMap::new();
        let mut lost_blobs: BTreeMap<PackId, Vec<BlobId>> = BTreeMap::new();
        self.index.for_each_blob(|pack, e| {
            *counts.entry(pack).or_default() += 1;
            if lost.contains_key(&pack) {
                lost_blobs.entry(pack).or_default().push(e.id);
            }
        })?;

        // Structure: every tree readable, every blob in the index.
        let usage = self.usage(&snapshots).await?;
        r.trees = usage.meta.len();
        r.data_blobs = usage.data.len();
        r.missing = usage.missing;

        // Data.
        let mut to_read: Vec<(PackId, PackKind)> = indexed
            .iter()
            .filter(|p| !lost.contains_key(&p.id))
            .map(|p| (p.id, p.kind))
            .collect();
        to_read.sort();
        let to_read: Vec<_> = to_read
            .into_iter()
            .enumerate()
            .filter(|(i, _)| chosen(*i, read))
            .map(|(_, p)| p)
            .collect();
        progress
            .packs_total
            .store(to_read.len() as u64, Ordering::Relaxed);
        let results: Vec<Result<Option<PackDamage>>> =
            futures::stream::iter(to_read.into_iter().map(|(id, kind)| {
                let (idx, counts, progress) = (self.clone(), &counts, progress.clone());
                async move {
                    let d = idx
                        .verify_pack(id, kind, counts.get(&id).copied().unwrap_or(0), &progress)
                        .await;
                    progress.packs_done.fetch_add(1, Ordering::Relaxed);
                    d
                }
            }))
            .buffer_unordered(4)
            .collect()
            .await;
        for d in results {
            match d {
                Ok(None) => r.packs_read += 1,
                Ok(Some(d)) => {
                    r.packs_read += 1;
                    r.damaged_packs.push(d);
                }
                Err(e) => return Err(e),
            }
        }
        for (pack, reason) in lost {
            r.damaged_packs.push(PackDamage {
                blobs: lost_blobs.remove(&pack).unwrap_or_default(),
                pack,
                reason,
            });
        }
        r.damaged_packs.sort_by_key(|d| d.pack);

        // Which snapshots and paths the damage reaches.
        let bad: HashSet<BlobId> = r
            .damaged_packs
            .iter()
            .flat_map(|d| d.blobs.iter().copied())
            .chain(r.missing.iter().map(|m| m.blob))
            // A blob with an intact copy elsewhere is not lost.
            .filter(|b| !matches!(self.index.lookup(b), Ok(Some(l)) if r.damaged_packs.iter().all(|d| d.pack != l.pack)))
            .collect();
        if !bad.is_empty() {
            r.affected = self.affected(&snapshots, &bad).await?;
        }
        Ok(r)
    }

    /// Download one pack and verify it whole: name, trailer, agreement with the index,
    /// and every blob. `None` when intact.
    async fn verify_pack(
        &self,
        id: PackId,
        kind: PackKind,
        indexed_blobs: u32,
        progress: &CheckProgress,
    ) -> Result<Option<PackDamage>> {
        let bytes =
            match crate::store::get_bounded(&self.repo.store, &pack_name(kind, &id), None).await {
                Ok(b) => b,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    return Ok(Some(PackDamage {
                        pack: id,
                        reason: format!("unreadable: {e}"),
                        blobs: self.blobs_of(&id)?,
                    }));
                }
            };
        progress
            .bytes_done
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let idx = self.clone();
        tokio::task::spawn_blocking(move || {
            let keys = &idx.repo.keys;
            let mut reasons = Vec::new();
            if arca_format::object_hash(&bytes) != id.0 {
                reasons.push("contents do not hash to the pack's name".to_string());
            }
            let entries = match pack::read_pack(keys, &bytes, None) {
                Ok(e) => e,
                Err(e) => {
                    reasons.push(format!("trailer: {e}"));
                    return Ok(Some(PackDamage {
                        pack: id,
                        reason: reasons.join("; "),
                        blobs: idx.blobs_of(&id)?,
                    }));
                }
            };
            if entries.len() as u32 != indexed_blobs {
                reasons.push(format!(
                    "trailer lists {} blobs, the index {indexed_blobs}",
                    entries.len()
                ));
            }
            let mut bad = Vec::new();
            for e in &entries {
                match idx.index.entry(&e.id, &id)? {
                    Some(ie) if ie == *e => {}
                    _ => reasons.push(format!(
                        "index disagrees with the trailer about blob {}",
                        e.id.short()
                    )),
                }
                if let Err(err) =
                    pack::open_blob(keys, e, &bytes[e.offset as usize..e.end() as usize])
                {
                    tracing::debug!("pack {} blob {}: {err}", id.short(), e.id.short());
                    bad.push(e.id);
                }
            }
            if !bad.is_empty() {
                reasons.push(format!("{} damaged blobs", bad.len()));
            }
            Ok(if reasons.is_empty() {
                None
            } else {
                Some(PackDamage {
                    pack: id,
                    reason: reasons.join("; "),
                    blobs: bad,
                })
            })
        })
        .await
        .expect("verify task panicked")
    }

    fn blobs_of(&self, pack: &PackId) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        self.index.for_each_blob(|p, e| {
            if p == *pack {
                out.push(e.id);
            }
        })?;
        Ok(out)
    }
}
