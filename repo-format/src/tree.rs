//! Trees: the entries of one directory, stored as a blob of type
//! [`BlobType::Tree`](crate::envelope::BlobType::Tree).
//!
//! A tree is a `Tree` protobuf whose nodes are sorted by name (bytewise) with no
//! duplicates. A directory too large for one blob continues in the tree named by `next`;
//! the concatenation of the chain is the directory, still sorted.
//!
//! Hard links are not a node kind of their own: every path of a hard-linked file is a
//! [`NodeKind::File`] with its full content list, and nodes of one snapshot that share
//! `(device, inode)` with `links > 1` form one hard-link group. This keeps each node
//! restorable alone (a sub-path restore never needs a link target outside it), costs only
//! tree bytes since the content is deduplicated, and lets a restore relink the group.

use crate::codec::{
    decode_proto, encode_proto, fixed, opt_fixed, opt_ts_from_proto, ts_from_proto,
};
use crate::error::{Error, Result, What};
use crate::id::{BlobId, Timestamp};
use crate::proto;

/// What a node is, with the fields that only that kind has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    File {
        /// Its chunks, in order.
        content: Vec<BlobId>,
        /// The file had holes when backed up: restore writes all-zero chunks as holes.
        sparse: bool,
    },
    /// A directory, whose entries are in the tree `subtree`.
    Dir {
        /// The directory's tree blob.
        subtree: BlobId,
    },
    /// A symbolic link.
    Symlink {
        /// The link target, raw bytes.
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A Unix domain socket (restored as nothing, recorded for completeness).
    Socket,
    /// A character device.
    CharDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
}

const KIND_FILE: u32 = 1;
const KIND_DIR: u32 = 2;
const KIND_SYMLINK: u32 = 3;
const KIND_FIFO: u32 = 4;
const KIND_SOCKET: u32 = 5;
const KIND_CHAR: u32 = 6;
const KIND_BLOCK: u32 = 7;

/// An extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    pub name: Vec<u8>,
    /// Raw value.
    pub value: Vec<u8>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// File name: raw bytes, no `/` or NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// Kind and kind-specific fields.
    pub kind: NodeKind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Owner user name, empty when unknown.
    pub user: String,
    /// Owner group name, empty when unknown.
    pub group: String,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status-change time.
    pub ctime: Timestamp,
    /// Access time, when recorded.
    pub atime: Option<Timestamp>,
    /// Size in bytes (files: the content's length).
    pub size: u64,
    /// Inode number (for incremental backup and hard-link groups).
    pub inode: u64,
    /// Device of the file system holding the node (`st_dev`).
    pub device: u64,
    /// Hard-link count.
    pub links: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Set by repair when the node's content was lost: what is missing. Restore reports
    /// such a node rather than writing it silently wrong.
    pub damage: Option<String>,
}

impl Node {
    /// A node with the given name and kind and every other field zero.
    pub fn new(name: impl Into<Vec<u8>>, kind: NodeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            atime: None,
            size: 0,
            inode: 0,
            device: 0,
            links: 0,
            xattrs: Vec::new(),
            damage: None,
        }
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }
}

/// Check a file name as the format requires.
pub fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("name is . or ..")
    } else if name.contains(&b'/') {
        Err("name contains /")
    } else if name.contains(&0) {
        Err("name contains NUL")
    } else {
        Ok(())
    }
}

/// One tree blob: sorted nodes, and where the directory continues.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    /// Entries, sorted by name, unique.
    pub nodes: Vec<Node>,
    /// The next tree blob of this directory, if it did not fit in one.
    pub next: Option<BlobId>,
}

impl Tree {
    fn validate(&self, err: impl Fn(String) -> Error) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            check_name(&n.name)
                .map_err(|r| err(format!("{r}: {:?}", String::from_utf8_lossy(&n.name))))?;
            if i > 0 && self.nodes[i - 1].name >= n.name {
                return Err(err(format!(
                    "names not sorted or repeated at {:?}",
                    String::from_utf8_lossy(&n.name)
                )));
            }
            if n.xattrs.windows(2).any(|w| w[0].name >= w[1].name) {
                return Err(err("extended attributes not sorted or repeated".into()));
            }
        }
        Ok(())
    }

    /// Encode to the plaintext of a tree blob.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate(|r| Error::invalid(What::Tree, r))?;
        let p = proto::Tree {
            nodes: self.nodes.iter().map(node_to_proto).collect(),
            next: self.next.map(|n| n.0.to_vec()).unwrap_or_default(),
        };
        Ok(encode_proto(&p))
    }

    /// Decode the plaintext of a tree blob.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let p: proto::Tree = decode_proto(What::Tree, bytes)?;
        let tree = Tree {
            nodes: p
                .nodes
                .into_iter()
                .map(node_from_proto)
                .collect::<Result<_>>()?,
            next: opt_fixed(What::Tree, "next", &p.next)?.map(BlobId),
        };
        tree.validate(|r| Error::corrupt(What::Tree, r))?;
        Ok(tree)
    }
}

pub(crate) fn node_to_proto(n: &Node) -> proto::Node {
    let mut p = proto::Node {
        name: n.name.clone(),
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        user: n.user.clone(),
        group: n.group.clone(),
        mtime: Some(crate::codec::ts_to_proto(n.mtime)),
        ctime: Some(crate::codec::ts_to_proto(n.ctime)),
        atime: crate::codec::opt_ts_to_proto(n.atime),
        size: n.size,
        inode: n.inode,
        device: n.device,
        links: n.links,
        xattrs: n
            .xattrs
            .iter()
            .map(|x| proto::Xattr {
                name: x.name.clone(),
                value: x.value.clone(),
            })
            .collect(),
        damage: n.damage.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &n.kind {
        NodeKind::File { content, sparse } => {
            p.kind = KIND_FILE;
            p.content = content.iter().map(|c| c.0.to_vec()).collect();
            p.sparse = *sparse;
        }
        NodeKind::Dir { subtree } => {
            p.kind = KIND_DIR;
            p.subtree = subtree.0.to_vec();
        }
        NodeKind::Symlink { target } => {
            p.kind = KIND_SYMLINK;
            p.symlink_target = target.clone();
        }
        NodeKind::Fifo => p.kind = KIND_FIFO,
        NodeKind::Socket => p.kind = KIND_SOCKET,
        NodeKind::CharDevice { rdev } => {
            p.kind = KIND_CHAR;
            p.rdev = *rdev;
        }
        NodeKind::BlockDevice { rdev } => {
            p.kind = KIND_BLOCK;
            p.rdev = *rdev;
        }
    }
    p
}

pub(crate) fn node_from_proto(p: proto::Node) -> Result<Node> {
    let w = What::Tree;
    let name_str = || String::from_utf8_lossy(&p.name).into_owned();
    // Fields of other kinds must be empty: a node is exactly one thing.
    let stray = |present: bool, field: &str| -> Result<()> {
        if present {
            Err(Error::corrupt(
                w,
                format!("node {:?} of kind {} has a {field}", name_str(), p.kind),
            ))
        } else {
            Ok(())
        }
    };
    let is_file = p.kind == KIND_FILE;
    let is_dev = p.kind == KIND_CHAR || p.kind == KIND_BLOCK;
    stray(!is_file && !p.content.is_empty(), "content list")?;
    stray(!is_file && p.sparse, "sparse flag")?;
    stray(p.kind != KIND_DIR && !p.subtree.is_empty(), "subtree")?;
    stray(
        p.kind != KIND_SYMLINK && !p.symlink_target.is_empty(),
        "symlink target",
    )?;
    stray(!is_dev && p.rdev != 0, "device number")?;
    let kind = match p.kind {
        KIND_FILE => NodeKind::File {
            content: p
                .content
                .iter()
                .map(|c| fixed(w, "content id", c).map(BlobId))
                .collect::<Result<_>>()?,
            sparse: p.sparse,
        },
        KIND_DIR => NodeKind::Dir {
            subtree: BlobId(fixed(w, "subtree id", &p.subtree)?),
        },
        KIND_SYMLINK => NodeKind::Symlink {
            target: p.symlink_target,
        },
        KIND_FIFO => NodeKind::Fifo,
        KIND_SOCKET => NodeKind::Socket,
        KIND_CHAR => NodeKind::CharDevice { rdev: p.rdev },
        KIND_BLOCK => NodeKind::BlockDevice { rdev: p.rdev },
        other => {
            return Err(Error::corrupt(
                w,
                format!("node {:?} has unknown kind {other}", name_str()),
            ));
        }
    };
    Ok(Node {
        name: p.name,
        kind,
        mode: p.mode,
        uid: p.uid,
        gid: p.gid,
        user: p.user,
        group: p.group,
        mtime: ts_from_proto(w, p.mtime)?,
        ctime: ts_from_proto(w, p.ctime)?,
        atime: opt_ts_from_proto(w, p.atime)?,
        size: p.size,
        inode: p.inode,
        device: p.device,
        links: p.links,
        xattrs: p
            .xattrs
            .into_iter()
            .map(|x| Xattr {
                name: x.name,
                value: x.value,
            })
            .collect(),
        damage: (!p.damage.is_empty()).then_some(p.damage),
    })
}
