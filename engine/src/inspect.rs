//! Inspection: list a snapshot's entries, compare two snapshots, and count what a set of
//! snapshots holds and costs.

use std::collections::{HashMap, HashSet};

use arca_format::{BlobId, Node, NodeKind, SnapshotRoot};

use crate::error::{Error, Result};
use crate::indexed::Indexed;

/// An entry of a listing: its path in the snapshot (`/`-separated, raw bytes) and node.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path from the snapshot's root.
    pub path: Vec<u8>,
    /// The node.
    pub node: Node,
}

/// How an entry differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only in the second.
    Added,
    /// Only in the first.
    Removed,
    /// Content (or kind) differs.
    Modified,
    /// Same content, other metadata (mode, owner, times, xattrs).
    Metadata,
}

/// One difference.
#[derive(Clone, Debug)]
pub struct Difference {
    /// Path from the root.
    pub path: Vec<u8>,
    /// What changed.
    pub change: Change,
    /// The entry in the first snapshot, if any.
    pub before: Option<Node>,
    /// The entry in the second snapshot, if any.
    pub after: Option<Node>,
}

/// What a set of snapshots holds and what it costs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Snapshots counted.
    pub snapshots: u64,
    /// Files, summed over snapshots.
    pub files: u64,
    /// Bytes of file content, summed over snapshots (what restoring them all writes).
    pub logical_bytes: u64,
    /// Distinct data blobs referenced.
    pub data_blobs: u64,
    /// Distinct tree blobs referenced.
    pub tree_blobs: u64,
    /// Plaintext bytes of the distinct blobs.
    pub unique_bytes: u64,
    /// Stored (compressed, encrypted) bytes of the distinct blobs.
    pub stored_bytes: u64,
}

impl Stats {
    /// Logical bytes per distinct plaintext byte.
    pub fn dedup_ratio(&self) -> f64 {
        if self.unique_bytes == 0 {
            1.0
        } else {
            self.logical_bytes as f64 / self.unique_bytes as f64
        }
    }

    /// Distinct plaintext bytes per stored byte.
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            1.0
        } else {
            self.unique_bytes as f64 / self.stored_bytes as f64
        }
    }
}

fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = base.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn tree_root(root: &SnapshotRoot) -> Result<BlobId> {
    match root {
        SnapshotRoot::Tree(t) => Ok(*t),
        SnapshotRoot::Volume(_) => Err(Error::Invalid(
            "this snapshot is a block volume, not a directory tree: it has no paths to list or compare (`snapshot ls` shows its size and data)".into(),
        )),
    }
}

impl Indexed {
    /// Entries under `subpath` (the root when empty): one level, or all levels.
    pub async fn ls(
        &self,
        root: &SnapshotRoot,
        subpath: &str,
        recursive: bool,
    ) -> Result<Vec<Entry>> {
        let root = tree_root(root)?;
        let base: Vec<u8> = subpath.trim_matches('/').as_bytes().to_vec();
        let start = match self.resolve(&root, subpath).await? {
            None => root,
            Some(node) => match node.kind {
                NodeKind::Dir { subtree } => subtree,
                _ => return Ok(vec![Entry { path: base, node }]),
            },
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, base)];
        while let Some((id, dir)) = stack.pop() {
            let tree = self.read_tree(&id).await?;
            let mut subdirs = Vec::new();
            for node in tree.nodes {
                let path = join(&dir, &node.name);
                if recursive && let NodeKind::Dir { subtree } = node.kind {
                    subdirs.push((subtree, path.clone()));
                }
                out.push(Entry { path, node });
            }
            stack.extend(subdirs.into_iter().rev());
        }
        if recursive {
            out.sort_by(|a, b| a.path.cmp(&b.path));
        }
        Ok(out)
    }

    /// Differences between two snapshots' trees, in path order.
    pub async fn diff(&self, a: &SnapshotRoot, b: &SnapshotRoot) -> Result<Vec<Difference>> {
        let (a, b) = (tree_root(a)?, tree_root(b)?);
        let mut out = Vec::new();
        let mut stack = vec![(Some(a), Some(b), Vec::new())];
        while let Some((ta, tb, dir)) = stack.pop() {
            if ta == tb {
                continue; // identical subtrees: nothing below differs
            }
            let na = match ta {
                Some(t) => self.read_tree(&t).await?.nodes,
                None => Vec::new(),
            };
            let nb = match tb {
                Some(t) => self.read_tree(&t).await?.nodes,
                None => Vec::new(),
            };
            let (mut i, mut j) = (0, 0);
            let mut sub = Vec::new();
            while i < na.len() || j < nb.len() {
                let ord = match (na.get(i), nb.get(j)) {
                    (Some(x), Some(y)) => x.name.cmp(&y.name),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                let (before, after) = match ord {
                    std::cmp::Ordering::Less => {
                        i += 1;
                        (Some(na[i - 1].clone()), None)
                    }
                    std::cmp::Ordering::Greater => {
                        j += 1;
                        (None, Some(nb[j - 1].clone()))
                    }
                    std::cmp::Ordering::Equal => {
                        i += 1;
                        j += 1;
                        (Some(na[i - 1].clone()), Some(nb[j - 1].clone()))
                    }
                };
                let name = before
                    .as_ref()
                    .or(after.as_ref())
                    .expect("one side")
                    .name
                    .clone();
                let path = join(&dir, &name);
                let sub_of = |n: &Option<Node>| match n.as_ref().map(|n| &n.kind) {
                    Some(NodeKind::Dir { subtree }) => Some(*subtree),
                    _ => None,
                };
                let change = match (&before, &after) {
                    (None, Some(_)) => Some(Change::Added),
                    (Some(_), None) => Some(Change::Removed),
                    (Some(x), Some(y)) => {
                        let same_kind =
                            std::mem::discriminant(&x.kind) == std::mem::discriminant(&y.kind);
                        let meta_same = x.mode == y.mode
                            && x.uid == y.uid
                            && x.gid == y.gid
                            && x.mtime == y.mtime
                            && x.xattrs == y.xattrs;
                        match (&x.kind, &y.kind) {
                            (NodeKind::Dir { .. }, NodeKind::Dir { .. }) => {
                                (!meta_same).then_some(Change::Metadata)
                            }
                            _ if !same_kind => Some(Change::Modified),
                            _ if x.kind != y.kind || x.size != y.size => Some(Change::Modified),
                            _ => (!meta_same).then_some(Change::Metadata),
                        }
                    }
                    (None, None) => None,
                };
                let (sa, sb) = (sub_of(&before), sub_of(&after));
                if sa.is_some() || sb.is_some() {
                    sub.push((sa, sb, path.clone()));
                }
                if let Some(change) = change {
                    out.push(Difference {
                        path,
                        change,
                        before,
                        after,
                    });
                }
            }
            stack.extend(sub.into_iter().rev());
        }
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok(out)
    }

    /// Count what these snapshot roots hold and what their distinct blobs cost.
    pub async fn stats(&self, roots: &[SnapshotRoot]) -> Result<Stats> {
        let mut s = Stats::default();
        let mut blobs: HashSet<BlobId> = HashSet::new();
        // Per tree: (files, bytes) below it, so shared subtrees are read once.
        let mut memo: HashMap<BlobId, (u64, u64)> = HashMap::new();
        for root in roots {
            s.snapshots += 1;
            let root = match root {
                SnapshotRoot::Tree(t) => *t,
                SnapshotRoot::Volume(v) => {
                    // A volume counts as one file of the bytes its extents hold; its extent
                    // lists count with the trees (metadata).
                    s.files += 1;
                    for l in &v.extent_lists {
                        if blobs.insert(*l) {
                            let loc = self.locate(l)?;
                            s.tree_blobs += 1;
                            s.unique_bytes += loc.entry.raw_length as u64;
                            s.stored_bytes += loc.entry.length as u64;
                        }
                        let list = arca_format::ExtentList::decode(&self.read_blob(l).await?)?;
                        for e in list.extents {
                            s.logical_bytes += e.length as u64;
                            if blobs.insert(e.id) {
                                let loc = self.locate(&e.id)?;
                                s.data_blobs += 1;
                                s.unique_bytes += loc.entry.raw_length as u64;
                                s.stored_bytes += loc.entry.length as u64;
                            }
                        }
                    }
                    continue;
                }
            };
            let (f, b) = self.count_tree(root, &mut memo, &mut blobs, &mut s).await?;
            s.files += f;
            s.logical_bytes += b;
        }
        Ok(s)
    }

    async fn count_tree(
        &self,
        root: BlobId,
        memo: &mut HashMap<BlobId, (u64, u64)>,
        blobs: &mut HashSet<BlobId>,
        s: &mut Stats,
    ) -> Result<(u64, u64)> {
        // Iterative post-order: children first, then the tree's own totals.
        enum Step {
            Visit(BlobId),
            Total(BlobId, Vec<BlobId>, u64, u64),
        }
        let mut stack = vec![Step::Visit(root)];
        while let Some(step) = stack.pop() {
            match step {
                Step::Visit(id) => {
                    if memo.contains_key(&id) {
                        continue;
                    }
                    if blobs.insert(id) {
                        let loc = self.locate(&id)?;
                        s.tree_blobs += 1;
                        s.unique_bytes += loc.entry.raw_length as u64;
                        s.stored_bytes += loc.entry.length as u64;
                    }
                    let tree = self.read_tree(&id).await?;
                    let (mut files, mut bytes, mut dirs) = (0, 0, Vec::new());
                    for n in &tree.nodes {
                        match &n.kind {
                            NodeKind::File { content, .. } => {
                                files += 1;
                                bytes += n.size;
                                for c in content {
                                    if blobs.insert(*c) {
                                        let loc = self.locate(c)?;
                                        s.data_blobs += 1;
                                        s.unique_bytes += loc.entry.raw_length as u64;
                                        s.stored_bytes += loc.entry.length as u64;
                                    }
                                }
                            }
                            NodeKind::Dir { subtree } => dirs.push(*subtree),
                            _ => {}
                        }
                    }
                    stack.push(Step::Total(id, dirs.clone(), files, bytes));
                    stack.extend(dirs.into_iter().map(Step::Visit));
                }
                Step::Total(id, dirs, mut files, mut bytes) => {
                    for d in dirs {
                        let (f, b) = memo.get(&d).copied().unwrap_or_default();
                        files += f;
                        bytes += b;
                    }
                    memo.insert(id, (files, bytes));
                }
            }
        }
        Ok(memo.get(&root).copied().unwrap_or_default())
    }
}
