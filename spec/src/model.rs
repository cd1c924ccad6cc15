//! JSON forms of the format's values, as the vectors write them: every byte string in hex,
//! every ID in hex, timestamps as `{seconds, nanos}`, enumerations by their numbers in
//! `arca.proto`. An independent implementation reads these without knowing Rust.

use std::collections::BTreeMap;

use arca_format as f;
use serde::{Deserialize, Serialize};

/// Byte strings as lowercase hex.
pub mod hexs {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as hex.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Deserialize from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Optional byte strings as hex or null.
pub mod opt_hexs {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as hex or null.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize from hex or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Lists of byte strings as lists of hex.
pub mod vec_hexs {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    /// Serialize as a list of hex strings.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(&hex::encode(b))?;
        }
        seq.end()
    }

    /// Deserialize from a list of hex strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// A 32-byte ID from hex bytes; the vectors are trusted input of the test, so a wrong
/// length is a broken vector file.
pub fn id32(v: &[u8]) -> [u8; 32] {
    v.try_into().expect("vector holds a 32-byte id")
}

/// A 16-byte ID from hex bytes.
pub fn id16(v: &[u8]) -> [u8; 16] {
    v.try_into().expect("vector holds a 16-byte id")
}

/// Timestamp.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ts {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

impl From<f::Timestamp> for Ts {
    fn from(t: f::Timestamp) -> Self {
        Ts {
            seconds: t.seconds,
            nanos: t.nanos,
        }
    }
}

impl From<Ts> for f::Timestamp {
    fn from(t: Ts) -> Self {
        f::Timestamp::new(t.seconds, t.nanos)
    }
}

/// Compression as the vectors name it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Comp {
    /// Stored as is.
    None,
    /// zstd at a level.
    Zstd(i32),
}

impl From<Comp> for f::Compression {
    fn from(c: Comp) -> Self {
        match c {
            Comp::None => f::Compression::None,
            Comp::Zstd(l) => f::Compression::Zstd(l),
        }
    }
}

impl From<f::Compression> for Comp {
    fn from(c: f::Compression) -> Self {
        match c {
            f::Compression::None => Comp::None,
            f::Compression::Zstd(l) => Comp::Zstd(l),
        }
    }
}

/// Blob type by number.
pub fn blob_type(n: u8) -> f::BlobType {
    f::BlobType::from_u8(n).expect("vector holds a known blob type")
}

/// A pack or index entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 1 data, 2 tree, 3 extent list.
    pub blob_type: u8,
    /// Blob ID.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
    /// Offset of the sealed blob.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

impl From<&f::PackEntry> for Entry {
    fn from(e: &f::PackEntry) -> Self {
        Entry {
            blob_type: e.blob_type.as_u8(),
            id: e.id.0.to_vec(),
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }
}

impl From<&Entry> for f::PackEntry {
    fn from(e: &Entry) -> Self {
        f::PackEntry {
            blob_type: blob_type(e.blob_type),
            id: f::BlobId(id32(&e.id)),
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }
}

/// An index file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// Superseded index IDs.
    #[serde(with = "vec_hexs")]
    pub supersedes: Vec<Vec<u8>>,
    /// Packs.
    pub packs: Vec<IndexPack>,
}

/// A pack in an index file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    /// Pack ID.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
    /// Pack size.
    pub size: u64,
    /// Obsolete mark.
    pub obsolete_since: Option<Ts>,
    /// When every reader saw the mark (store time); absent in most vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obsolete_visible: Option<Ts>,
    /// Blobs.
    pub blobs: Vec<Entry>,
}

impl From<&f::IndexFile> for Index {
    fn from(i: &f::IndexFile) -> Self {
        Index {
            supersedes: i.supersedes.iter().map(|s| s.0.to_vec()).collect(),
            packs: i
                .packs
                .iter()
                .map(|p| IndexPack {
                    id: p.id.0.to_vec(),
                    size: p.size,
                    obsolete_since: p.obsolete_since.map(Into::into),
                    obsolete_visible: p.obsolete_visible.map(Into::into),
                    blobs: p.blobs.iter().map(Into::into).collect(),
                })
                .collect(),
        }
    }
}

impl From<&Index> for f::IndexFile {
    fn from(i: &Index) -> Self {
        f::IndexFile {
            supersedes: i.supersedes.iter().map(|s| f::IndexId(id32(s))).collect(),
            packs: i
                .packs
                .iter()
                .map(|p| f::IndexPack {
                    id: f::PackId(id32(&p.id)),
                    size: p.size,
                    obsolete_since: p.obsolete_since.map(Into::into),
                    obsolete_visible: p.obsolete_visible.map(Into::into),
                    blobs: p.blobs.iter().map(Into::into).collect(),
                })
                .collect(),
        }
    }
}

/// An extended attribute.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    /// Name.
    #[serde(with = "hexs")]
    pub name: Vec<u8>,
    /// Value.
    #[serde(with = "hexs")]
    pub value: Vec<u8>,
}

/// A tree node. `kind` is the number of `arca.proto`; the kind-specific fields are set
/// for their kind only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Name.
    #[serde(with = "hexs")]
    pub name: Vec<u8>,
    /// 1 file .. 7 block device.
    pub kind: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Owner name.
    pub user: String,
    /// Group name.
    pub group: String,
    /// Times.
    pub mtime: Ts,
    /// Times.
    pub ctime: Ts,
    /// Times.
    pub atime: Option<Ts>,
    /// Size.
    pub size: u64,
    /// Inode.
    pub inode: u64,
    /// Device.
    pub device: u64,
    /// Link count.
    pub links: u64,
    /// Extended attributes.
    pub xattrs: Vec<Xattr>,
    /// Symlink target.
    #[serde(with = "opt_hexs")]
    pub symlink_target: Option<Vec<u8>>,
    /// Device number.
    pub rdev: Option<u64>,
    /// Sparse flag.
    pub sparse: Option<bool>,
    /// Content blob IDs.
    #[serde(with = "vec_hexs")]
    pub content: Vec<Vec<u8>>,
    /// Subtree ID.
    #[serde(with = "opt_hexs")]
    pub subtree: Option<Vec<u8>>,
    /// Damage note.
    pub damage: Option<String>,
}

impl From<&f::Node> for Node {
    fn from(n: &f::Node) -> Self {
        let mut out = Node {
            name: n.name.clone(),
            kind: 0,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            user: n.user.clone(),
            group: n.group.clone(),
            mtime: n.mtime.into(),
            ctime: n.ctime.into(),
            atime: n.atime.map(Into::into),
            size: n.size,
            inode: n.inode,
            device: n.device,
            links: n.links,
            xattrs: n
                .xattrs
                .iter()
                .map(|x| Xattr {
                    name: x.name.clone(),
                    value: x.value.clone(),
                })
                .collect(),
            symlink_target: None,
            rdev: None,
            sparse: None,
            content: Vec::new(),
            subtree: None,
            damage: n.damage.clone(),
        };
        match &n.kind {
            f::NodeKind::File { content, sparse } => {
                out.kind = 1;
                out.content = content.iter().map(|c| c.0.to_vec()).collect();
                out.sparse = Some(*sparse);
            }
            f::NodeKind::Dir { subtree } => {
                out.kind = 2;
                out.subtree = Some(subtree.0.to_vec());
            }
            f::NodeKind::Symlink { target } => {
                out.kind = 3;
                out.symlink_target = Some(target.clone());
            }
            f::NodeKind::Fifo => out.kind = 4,
            f::NodeKind::Socket => out.kind = 5,
            f::NodeKind::CharDevice { rdev } => {
                out.kind = 6;
                out.rdev = Some(*rdev);
            }
            f::NodeKind::BlockDevice { rdev } => {
                out.kind = 7;
                out.rdev = Some(*rdev);
            }
        }
        out
    }
}

impl From<&Node> for f::Node {
    fn from(n: &Node) -> Self {
        let kind = match n.kind {
            1 => f::NodeKind::File {
                content: n.content.iter().map(|c| f::BlobId(id32(c))).collect(),
                sparse: n.sparse.unwrap_or(false),
            },
            2 => f::NodeKind::Dir {
                subtree: f::BlobId(id32(n.subtree.as_deref().expect("dir has a subtree"))),
            },
            3 => f::NodeKind::Symlink {
                target: n.symlink_target.clone().unwrap_or_default(),
            },
            4 => f::NodeKind::Fifo,
            5 => f::NodeKind::Socket,
            6 => f::NodeKind::CharDevice {
                rdev: n.rdev.unwrap_or(0),
            },
            7 => f::NodeKind::BlockDevice {
                rdev: n.rdev.unwrap_or(0),
            },
            k => panic!("vector holds unknown node kind {k}"),
        };
        f::Node {
            name: n.name.clone(),
            kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            user: n.user.clone(),
            group: n.group.clone(),
            mtime: n.mtime.into(),
            ctime: n.ctime.into(),
            atime: n.atime.map(Into::into),
            size: n.size,
            inode: n.inode,
            device: n.device,
            links: n.links,
            xattrs: n
                .xattrs
                .iter()
                .map(|x| f::Xattr {
                    name: x.name.clone(),
                    value: x.value.clone(),
                })
                .collect(),
            damage: n.damage.clone(),
        }
    }
}

/// A tree blob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Continuation.
    #[serde(with = "opt_hexs")]
    pub next: Option<Vec<u8>>,
}

impl From<&f::Tree> for Tree {
    fn from(t: &f::Tree) -> Self {
        Tree {
            nodes: t.nodes.iter().map(Into::into).collect(),
            next: t.next.map(|n| n.0.to_vec()),
        }
    }
}

impl From<&Tree> for f::Tree {
    fn from(t: &Tree) -> Self {
        f::Tree {
            nodes: t.nodes.iter().map(Into::into).collect(),
            next: t.next.as_deref().map(|n| f::BlobId(id32(n))),
        }
    }
}

/// An extent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset.
    pub offset: u64,
    /// Length.
    pub length: u32,
    /// Data blob.
    #[serde(with = "hexs")]
    pub id: Vec<u8>,
}

/// An extent list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExtentList {
    /// Extents.
    pub extents: Vec<Extent>,
}

impl From<&f::ExtentList> for ExtentList {
    fn from(l: &f::ExtentList) -> Self {
        ExtentList {
            extents: l
                .extents
                .iter()
                .map(|e| Extent {
                    offset: e.offset,
                    length: e.length,
                    id: e.id.0.to_vec(),
                })
                .collect(),
        }
    }
}

impl From<&ExtentList> for f::ExtentList {
    fn from(l: &ExtentList) -> Self {
        f::ExtentList {
            extents: l
                .extents
                .iter()
                .map(|e| f::Extent {
                    offset: e.offset,
                    length: e.length,
                    id: f::BlobId(id32(&e.id)),
                })
                .collect(),
        }
    }
}

/// Snapshot counters, in the order of `arca.proto`.
pub type Summary = [u64; 12];

fn summary_to(s: &f::Summary) -> Summary {
    [
        s.files_new,
        s.files_changed,
        s.files_unmodified,
        s.dirs_new,
        s.dirs_changed,
        s.dirs_unmodified,
        s.data_blobs,
        s.tree_blobs,
        s.bytes_processed,
        s.bytes_added,
        s.bytes_stored,
        s.errors,
    ]
}

fn summary_from(s: &Summary) -> f::Summary {
    f::Summary {
        files_new: s[0],
        files_changed: s[1],
        files_unmodified: s[2],
        dirs_new: s[3],
        dirs_changed: s[4],
        dirs_unmodified: s[5],
        data_blobs: s[6],
        tree_blobs: s[7],
        bytes_processed: s[8],
        bytes_added: s[9],
        bytes_stored: s[10],
        errors: s[11],
    }
}

/// A volume root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Size.
    pub size: u64,
    /// Extent lists.
    #[serde(with = "vec_hexs")]
    pub extent_lists: Vec<Vec<u8>>,
}

/// A snapshot manifest; exactly one of `tree` and `volume`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Start.
    pub time: Ts,
    /// End.
    pub end_time: Ts,
    /// Host.
    pub host: String,
    /// User.
    pub username: String,
    /// Paths.
    #[serde(with = "vec_hexs")]
    pub paths: Vec<Vec<u8>>,
    /// Tags.
    pub tags: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Parent.
    #[serde(with = "opt_hexs")]
    pub parent: Option<Vec<u8>>,
    /// Root tree.
    #[serde(with = "opt_hexs")]
    pub tree: Option<Vec<u8>>,
    /// Root volume.
    pub volume: Option<Volume>,
    /// Counters.
    pub summary: Summary,
    /// Writer.
    pub program: String,
    /// Rewritten from.
    #[serde(with = "opt_hexs")]
    pub original: Option<Vec<u8>>,
    /// The top directory's own metadata; absent in most vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Node>,
}

impl From<&f::Snapshot> for Snapshot {
    fn from(s: &f::Snapshot) -> Self {
        let (tree, volume) = match &s.root {
            f::SnapshotRoot::Tree(t) => (Some(t.0.to_vec()), None),
            f::SnapshotRoot::Volume(v) => (
                None,
                Some(Volume {
                    size: v.size,
                    extent_lists: v.extent_lists.iter().map(|e| e.0.to_vec()).collect(),
                }),
            ),
        };
        Snapshot {
            time: s.time.into(),
            end_time: s.end_time.into(),
            host: s.host.clone(),
            username: s.username.clone(),
            paths: s.paths.clone(),
            tags: s.tags.clone(),
            labels: s.labels.clone(),
            parent: s.parent.map(|p| p.0.to_vec()),
            tree,
            volume,
            summary: summary_to(&s.summary),
            program: s.program.clone(),
            original: s.original.map(|p| p.0.to_vec()),
            top: s.top.as_ref().map(Into::into),
        }
    }
}

impl From<&Snapshot> for f::Snapshot {
    fn from(s: &Snapshot) -> Self {
        let root = match (&s.tree, &s.volume) {
            (Some(t), None) => f::SnapshotRoot::Tree(f::BlobId(id32(t))),
            (None, Some(v)) => f::SnapshotRoot::Volume(f::Volume {
                size: v.size,
                extent_lists: v.extent_lists.iter().map(|e| f::BlobId(id32(e))).collect(),
            }),
            _ => panic!("vector snapshot needs exactly one of tree and volume"),
        };
        f::Snapshot {
            time: s.time.into(),
            end_time: s.end_time.into(),
            host: s.host.clone(),
            username: s.username.clone(),
            paths: s.paths.clone(),
            tags: s.tags.clone(),
            labels: s.labels.clone(),
            parent: s.parent.as_deref().map(|p| f::SnapshotId(id32(p))),
            root,
            summary: summary_from(&s.summary),
            program: s.program.clone(),
            original: s.original.as_deref().map(|p| f::SnapshotId(id32(p))),
            top: s.top.as_ref().map(Into::into),
        }
    }
}

/// Repository config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Repository ID.
    #[serde(with = "hexs")]
    pub repo_id: Vec<u8>,
    /// Created.
    pub created: Ts,
    /// Chunker min/avg/max/normalization.
    pub chunker: [u32; 4],
    /// Default compression.
    pub compression: Comp,
    /// Data pack size.
    pub data_pack_size: u32,
    /// Tree pack size.
    pub tree_pack_size: u32,
}

impl From<&f::RepoConfig> for Config {
    fn from(c: &f::RepoConfig) -> Self {
        Config {
            repo_id: c.repo_id.0.to_vec(),
            created: c.created.into(),
            chunker: [
                c.chunker.min_size,
                c.chunker.avg_size,
                c.chunker.max_size,
                c.chunker.normalization,
            ],
            compression: c.compression.into(),
            data_pack_size: c.data_pack_size,
            tree_pack_size: c.tree_pack_size,
        }
    }
}

impl From<&Config> for f::RepoConfig {
    fn from(c: &Config) -> Self {
        f::RepoConfig {
            repo_id: f::RepoId(id16(&c.repo_id)),
            created: c.created.into(),
            chunker: f::ChunkerParams {
                min_size: c.chunker[0],
                avg_size: c.chunker[1],
                max_size: c.chunker[2],
                normalization: c.chunker[3],
            },
            compression: c.compression.into(),
            data_pack_size: c.data_pack_size,
            tree_pack_size: c.tree_pack_size,
        }
    }
}
