//! Snapshot manifests and the maps of block-volume snapshots.
//!
//! A snapshot is a `Snapshot` protobuf sealed in an envelope of kind
//! [`Kind::Snapshot`], stored at `snapshots/<id>` (BLAKE3 of the stored bytes). Its root is
//! either a directory tree or a block volume. A volume's map is split over extent-list
//! blobs (type [`BlobType::ExtentList`](crate::envelope::BlobType::ExtentList)) so that a
//! manifest stays small whatever the volume's size; bytes no extent covers are zeros.

use std::collections::BTreeMap;

use crate::codec::{decode_proto, encode_proto, fixed, opt_fixed, ts_from_proto};
use crate::envelope::{self, Compression, Kind};
use crate::error::{Error, Result, What};
use crate::id::{BlobId, SnapshotId, Timestamp, object_hash};
use crate::keys::Keys;
use crate::proto;

/// Counters of the backup that made a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Summary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files in the parent, changed.
    pub files_changed: u64,
    /// Files in the parent, unchanged (not read again).
    pub files_unmodified: u64,
    /// Directories not in the parent.
    pub dirs_new: u64,
    /// Directories in the parent, changed.
    pub dirs_changed: u64,
    /// Directories in the parent, unchanged.
    pub dirs_unmodified: u64,
    /// Data blobs added to the repository.
    pub data_blobs: u64,
    /// Tree blobs added to the repository.
    pub tree_blobs: u64,
    /// Bytes of file content covered by the snapshot.
    pub bytes_processed: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: u64,
    /// Stored bytes of new blobs (after compression and encryption).
    pub bytes_stored: u64,
    /// Items that could not be read and were left out.
    pub errors: u64,
}

/// A block volume: its size and the extent lists that map it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Size of the device or image in bytes.
    pub size: u64,
    /// Extent-list blobs, in order of offset.
    pub extent_lists: Vec<BlobId>,
}

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRoot {
    /// A directory tree: the root tree blob.
    Tree(BlobId),
    /// A block volume.
    Volume(Volume),
}

/// A snapshot manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// When the backup started.
    pub time: Timestamp,
    /// When it finished.
    pub end_time: Timestamp,
    /// Host name of the writer.
    pub host: String,
    /// User name of the writer.
    pub username: String,
    /// The paths backed up, as given (raw bytes).
    pub paths: Vec<Vec<u8>>,
    /// Tags.
    pub tags: Vec<String>,
    /// Key-value labels (the Kubernetes adapter records backup names and such here).
    pub labels: BTreeMap<String, String>,
    /// The snapshot this one was made incrementally against.
    pub parent: Option<SnapshotId>,
    /// The content.
    pub root: SnapshotRoot,
    /// Counters.
    pub summary: Summary,
    /// Program and version that wrote it, e.g. `arca 0.1.0`.
    pub program: String,
    /// When this manifest was rewritten (by repair), the snapshot it replaces.
    pub original: Option<SnapshotId>,
    /// When one directory was backed up, its own metadata (mode, owner, times, extended
    /// attributes): a directory node with an empty name whose subtree is the root tree.
    pub top: Option<crate::Node>,
}

impl Snapshot {
    /// A snapshot of `root` with every other field empty.
    pub fn new(root: SnapshotRoot) -> Self {
        Self {
            time: Timestamp::default(),
            end_time: Timestamp::default(),
            host: String::new(),
            username: String::new(),
            paths: Vec::new(),
            tags: Vec::new(),
            labels: BTreeMap::new(),
            parent: None,
            root,
            summary: Summary::default(),
            program: String::new(),
            original: None,
            top: None,
        }
    }

    /// The unsealed protobuf bytes.
    pub fn encode_plain(&self) -> Vec<u8> {
        let s = &self.summary;
        let (tree, volume) = match &self.root {
            SnapshotRoot::Tree(t) => (t.0.to_vec(), None),
            SnapshotRoot::Volume(v) => (
                Vec::new(),
                Some(proto::Volume {
                    size: v.size,
                    extent_lists: v.extent_lists.iter().map(|e| e.0.to_vec()).collect(),
                }),
            ),
        };
        encode_proto(&proto::Snapshot {
            time: Some(crate::codec::ts_to_proto(self.time)),
            end_time: Some(crate::codec::ts_to_proto(self.end_time)),
            host: self.host.clone(),
            username: self.username.clone(),
            paths: self.paths.clone(),
            tags: self.tags.clone(),
            labels: self.labels.clone(),
            parent: self.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            tree,
            volume,
            summary: Some(proto::Summary {
                files_new: s.files_new,
                files_changed: s.files_changed,
                files_unmodified: s.files_unmodified,
                dirs_new: s.dirs_new,
                dirs_changed: s.dirs_changed,
                dirs_unmodified: s.dirs_unmodified,
                data_blobs: s.data_blobs,
                tree_blobs: s.tree_blobs,
                bytes_processed: s.bytes_processed,
                bytes_added: s.bytes_added,
                bytes_stored: s.bytes_stored,
                errors: s.errors,
            }),
            program: self.program.clone(),
            original: self.original.map(|p| p.0.to_vec()).unwrap_or_default(),
            top: self.top.as_ref().map(crate::tree::node_to_proto),
        })
    }

    /// Decode unsealed protobuf bytes.
    pub fn decode_plain(bytes: &[u8]) -> Result<Self> {
        let w = What::Snapshot;
        let p: proto::Snapshot = decode_proto(w, bytes)?;
        let root = match (opt_fixed(w, "tree", &p.tree)?, p.volume) {
            (Some(t), None) => SnapshotRoot::Tree(BlobId(t)),
            (None, Some(v)) => SnapshotRoot::Volume(Volume {
                size: v.size,
                extent_lists: v
                    .extent_lists
                    .iter()
                    .map(|e| fixed(w, "extent list id", e).map(BlobId))
                    .collect::<Result<_>>()?,
            }),
            (Some(_), Some(_)) => {
                return Err(Error::corrupt(w, "both a tree and a volume as root"));
            }
            (None, None) => return Err(Error::corrupt(w, "no root")),
        };
        let top = match p.top {
            None => None,
            Some(t) => {
                let n = crate::tree::node_from_proto(t)?;
                match (&n.kind, &root) {
                    (crate::NodeKind::Dir { subtree }, SnapshotRoot::Tree(tree))
                        if subtree == tree && n.name.is_empty() => {}
                    _ => {
                        return Err(Error::corrupt(
                            w,
                            "the top directory's node is not the root tree's directory",
                        ));
                    }
                }
                Some(n)
            }
        };
        let s = p.summary.unwrap_or_default();
        Ok(Self {
            time: ts_from_proto(w, p.time)?,
            end_time: ts_from_proto(w, p.end_time)?,
            host: p.host,
            username: p.username,
            paths: p.paths,
            tags: p.tags,
            labels: p.labels,
            parent: opt_fixed(w, "parent", &p.parent)?.map(SnapshotId),
            root,
            summary: Summary {
                files_new: s.files_new,
                files_changed: s.files_changed,
                files_unmodified: s.files_unmodified,
                dirs_new: s.dirs_new,
                dirs_changed: s.dirs_changed,
                dirs_unmodified: s.dirs_unmodified,
                data_blobs: s.data_blobs,
                tree_blobs: s.tree_blobs,
                bytes_processed: s.bytes_processed,
                bytes_added: s.bytes_added,
                bytes_stored: s.bytes_stored,
                errors: s.errors,
            },
            program: p.program,
            original: opt_fixed(w, "original", &p.original)?.map(SnapshotId),
            top,
        })
    }

    /// Seal into the stored bytes; the ID is their BLAKE3 hash.
    pub fn encode(&self, keys: &Keys) -> Result<(SnapshotId, Vec<u8>)> {
        let sealed = envelope::seal(
            keys,
            Kind::Snapshot,
            &[],
            &self.encode_plain(),
            Compression::Zstd(3),
        )?;
        Ok((SnapshotId(object_hash(&sealed)), sealed))
    }

    /// Open stored bytes.
    pub fn decode(keys: &Keys, bytes: &[u8]) -> Result<Self> {
        let plain = envelope::open(keys, Kind::Snapshot, &[], bytes, envelope::MAX_OBJECT_LEN)?;
        Self::decode_plain(&plain)
    }
}

/// A run of a volume's bytes stored as one data blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the volume.
    pub offset: u64,
    /// Length in bytes (the blob's plaintext length).
    pub length: u32,
    /// The data blob.
    pub id: BlobId,
}

/// One extent-list blob: extents in ascending, non-overlapping order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExtentList {
    /// The extents.
    pub extents: Vec<Extent>,
}

impl ExtentList {
    fn validate(&self, err: impl Fn(String) -> Error) -> Result<()> {
        let mut end = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.length == 0 {
                return Err(err(format!("extent {i} is empty")));
            }
            if i > 0 && e.offset < end {
                return Err(err(format!(
                    "extent {i} at {} overlaps or is out of order",
                    e.offset
                )));
            }
            end = e
                .offset
                .checked_add(e.length as u64)
                .ok_or_else(|| err(format!("extent {i} runs past 2^64")))?;
        }
        Ok(())
    }

    /// Encode to the plaintext of an extent-list blob.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate(|r| Error::invalid(What::ExtentList, r))?;
        Ok(encode_proto(&proto::ExtentList {
            extents: self
                .extents
                .iter()
                .map(|e| proto::Extent {
                    offset: e.offset,
                    length: e.length,
                    id: e.id.0.to_vec(),
                })
                .collect(),
        }))
    }

    /// Decode the plaintext of an extent-list blob.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let w = What::ExtentList;
        let p: proto::ExtentList = decode_proto(w, bytes)?;
        let list = ExtentList {
            extents: p
                .extents
                .into_iter()
                .map(|e| {
                    Ok(Extent {
                        offset: e.offset,
                        length: e.length,
                        id: BlobId(fixed(w, "extent id", &e.id)?),
                    })
                })
                .collect::<Result<_>>()?,
        };
        list.validate(|r| Error::corrupt(w, r))?;
        Ok(list)
    }
}
