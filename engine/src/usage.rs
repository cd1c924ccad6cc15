//! Which blobs the snapshots use, and which snapshot paths a set of bad blobs affects:
//! the walks that check, GC and repair share.

use std::collections::{HashMap, HashSet};

use arca_format::{
    BlobId, BlobType, ExtentList, NodeKind, Snapshot, SnapshotId, SnapshotRoot, Tree,
};

use crate::error::{Error, Result};
use crate::indexed::Indexed;

/// A blob a snapshot needs that cannot be had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The snapshot that first led to it.
    pub snapshot: SnapshotId,
    /// Path in that snapshot (`/`-separated).
    pub path: String,
    /// The blob.
    pub blob: BlobId,
    /// What is wrong.
    pub reason: String,
}

/// Blobs used by a set of snapshots.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// Data blobs.
    pub(crate) data: HashSet<BlobId>,
    /// Tree and extent-list blobs (chains included).
    pub(crate) meta: HashSet<BlobId>,
    /// Blobs needed but missing from the index or unreadable.
    pub(crate) missing: Vec<Missing>,
}

impl Usage {
    /// Whether a blob is used.
    pub(crate) fn uses(&self, id: &BlobId) -> bool {
        self.data.contains(id) || self.meta.contains(id)
    }
}

fn join(base: &str, name: &[u8]) -> String {
    let n = String::from_utf8_lossy(name);
    if base.is_empty() {
        n.into_owned()
    } else {
        format!("{base}/{n}")
    }
}

impl Indexed {
    /// Read one tree blob (not its chain), checking its type.
    pub(crate) async fn read_tree_blob(&self, id: &BlobId) -> Result<Tree> {
        let loc = self.locate(id)?;
        if loc.entry.blob_type != BlobType::Tree {
            return Err(Error::Invalid(format!("blob {} is not a tree", id.short())));
        }
        let plain = self.read_blob(id).await?;
        Tree::decode(&plain).map_err(|e| crate::indexed::annotate(e, &loc))
    }

    /// Walk every snapshot's trees (each tree once) and collect the blobs they use.
    pub(crate) async fn usage(&self, snapshots: &[(SnapshotId, Snapshot)]) -> Result<Usage> {
        let mut u = Usage::default();
        for (sid, snap) in snapshots {
            let mut stack: Vec<(BlobId, String)> = Vec::new();
            match &snap.root {
                SnapshotRoot::Tree(t) => stack.push((*t, String::new())),
                SnapshotRoot::Volume(v) => {
                    for l in &v.extent_lists {
                        if !u.meta.insert(*l) {
                            continue;
                        }
                        let list = match self
                            .read_blob(l)
                            .await
                            .and_then(|b| Ok(ExtentList::decode(&b)?))
                        {
                            Ok(list) => list,
                            Err(e) => {
                                u.missing.push(Missing {
                                    snapshot: *sid,
                                    path: "<volume>".into(),
                                    blob: *l,
                                    reason: e.to_string(),
                                });
                                continue;
                            }
                        };
                        for e in list.extents {
                            if u.data.insert(e.id) && self.index.lookup(&e.id)?.is_none() {
                                u.missing.push(Missing {
                                    snapshot: *sid,
                                    path: format!("<volume>@{}", e.offset),
                                    blob: e.id,
                                    reason: "not in the index".into(),
                                });
                            }
                        }
                    }
                }
            }
            while let Some((id, path)) = stack.pop() {
                let mut next = Some(id);
                while let Some(tid) = next.take() {
                    if !u.meta.insert(tid) {
                        break; // this tree (and what is below it) was walked already
                    }
                    let tree = match self.read_tree_blob(&tid).await {
                        Ok(t) => t,
                        Err(e) => {
                            let p = if path.is_empty() {
                                "/".to_string()
                            } else {
                                path.clone()
                            };
                            u.missing.push(Missing {
                                snapshot: *sid,
                                path: p,
                                blob: tid,
                                reason: e.to_string(),
                            });
                            break;
                        }
                    };
                    next = tree.next;
                    for n in tree.nodes {
                        match &n.kind {
                            NodeKind::Dir { subtree } => {
                                stack.push((*subtree, join(&path, &n.name)))
                            }
                            NodeKind::File { content, .. } => {
                                for c in content {
                                    if u.data.insert(*c) && self.index.lookup(c)?.is_none() {
                                        u.missing.push(Missing {
                                            snapshot: *sid,
                                            path: join(&path, &n.name),
                                            blob: *c,
                                            reason: "not in the index".into(),
                                        });
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(u)
    }

    /// For each snapshot, the paths whose content or listing needs one of `bad`.
    pub(crate) async fn affected(
        &self,
        snapshots: &[(SnapshotId, Snapshot)],
        bad: &HashSet<BlobId>,
    ) -> Result<Vec<(SnapshotId, Vec<String>)>> {
        // Per tree: the relative paths below it that are damaged (memoised: trees are
        // shared between snapshots).
        let mut memo: HashMap<BlobId, Vec<String>> = HashMap::new();
        let mut out = Vec::new();
        for (sid, snap) in snapshots {
            let paths = match &snap.root {
                SnapshotRoot::Tree(t) => Box::pin(self.bad_below(*t, bad, &mut memo)).await?,
                SnapshotRoot::Volume(v) => {
                    let mut hit = v.extent_lists.iter().any(|l| bad.contains(l));
                    if !hit {
                        for l in &v.extent_lists {
                            if let Ok(list) = self
                                .read_blob(l)
                                .await
                                .and_then(|b| Ok(ExtentList::decode(&b)?))
                            {
                                hit |= list.extents.iter().any(|e| bad.contains(&e.id));
                            }
                        }
                    }
                    if hit {
                        vec!["<volume>".into()]
                    } else {
                        Vec::new()
                    }
                }
            };
            if !paths.is_empty() {
                out.push((*sid, paths));
            }
        }
        Ok(out)
    }

    async fn bad_below(
        &self,
        id: BlobId,
        bad: &HashSet<BlobId>,
        memo: &mut HashMap<BlobId, Vec<String>>,
    ) -> Result<Vec<String>> {
        if let Some(v) = memo.get(&id) {
            return Ok(v.clone());
        }
        let mut out = Vec::new();
        let mut next = Some(id);
        while let Some(tid) = next.take() {
            if bad.contains(&tid) {
                out.push(String::new());
                break;
            }
            let tree = match self.read_tree_blob(&tid).await {
                Ok(t) => t,
                Err(_) => {
                    out.push(String::new());
                    break;
                }
            };
            next = tree.next;
            for n in tree.nodes {
                let name = String::from_utf8_lossy(&n.name).into_owned();
                match &n.kind {
                    NodeKind::Dir { subtree } => {
                        for p in Box::pin(self.bad_below(*subtree, bad, memo)).await? {
                            out.push(if p.is_empty() {
                                name.clone()
                            } else {
                                format!("{name}/{p}")
                            });
                        }
                    }
                    NodeKind::File { content, .. } if content.iter().any(|c| bad.contains(c)) => {
                        out.push(name)
                    }
                    _ => {}
                }
            }
        }
        memo.insert(id, out.clone());
        Ok(out)
    }
}
