//! Wire structs of the protobuf messages, written with `prost`'s derive so that no code
//! generator (and no `protoc`) is needed to build. `spec/arca.proto` is the same schema in
//! protobuf's own language; the two are kept in step by hand and pinned by the golden
//! vectors. These structs are private: the public, validated types live in the modules
//! that decode them.

#![allow(missing_docs, unreachable_pub)]

use std::collections::BTreeMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(sint64, tag = "1")]
    pub seconds: i64,
    #[prost(uint32, tag = "2")]
    pub nanos: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunker {
    #[prost(uint32, tag = "1")]
    pub algorithm: u32,
    #[prost(uint32, tag = "2")]
    pub min_size: u32,
    #[prost(uint32, tag = "3")]
    pub avg_size: u32,
    #[prost(uint32, tag = "4")]
    pub max_size: u32,
    #[prost(uint32, tag = "5")]
    pub normalization: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RepoConfig {
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub created: Option<Timestamp>,
    #[prost(message, optional, tag = "3")]
    pub chunker: Option<Chunker>,
    #[prost(uint32, tag = "4")]
    pub content_id: u32,
    #[prost(uint32, tag = "5")]
    pub compression: u32,
    #[prost(sint32, tag = "6")]
    pub compression_level: i32,
    #[prost(uint32, tag = "7")]
    pub encryption: u32,
    #[prost(uint32, tag = "8")]
    pub data_pack_size: u32,
    #[prost(uint32, tag = "9")]
    pub tree_pack_size: u32,
    #[prost(string, repeated, tag = "10")]
    pub required_features: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyFile {
    #[prost(bytes = "vec", tag = "1")]
    pub repo_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub kdf: u32,
    #[prost(uint32, tag = "3")]
    pub memory_kib: u32,
    #[prost(uint32, tag = "4")]
    pub iterations: u32,
    #[prost(uint32, tag = "5")]
    pub parallelism: u32,
    #[prost(bytes = "vec", tag = "6")]
    pub salt: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    pub nonce: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    pub wrapped_key: Vec<u8>,
    #[prost(message, optional, tag = "9")]
    pub created: Option<Timestamp>,
    #[prost(string, tag = "10")]
    pub host: String,
    #[prost(string, tag = "11")]
    pub username: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IndexFile {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub supersedes: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "2")]
    pub packs: Vec<IndexPack>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IndexPack {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    #[prost(message, optional, tag = "3")]
    pub obsolete_since: Option<Timestamp>,
    #[prost(message, repeated, tag = "4")]
    pub blobs: Vec<IndexBlob>,
    #[prost(message, optional, tag = "5")]
    pub obsolete_visible: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IndexBlob {
    #[prost(uint32, tag = "1")]
    pub blob_type: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub offset: u32,
    #[prost(uint32, tag = "4")]
    pub length: u32,
    #[prost(uint32, tag = "5")]
    pub raw_length: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tree {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<Node>,
    #[prost(bytes = "vec", tag = "2")]
    pub next: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Xattr {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Node {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    #[prost(string, tag = "6")]
    pub user: String,
    #[prost(string, tag = "7")]
    pub group: String,
    #[prost(message, optional, tag = "8")]
    pub mtime: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    pub ctime: Option<Timestamp>,
    #[prost(message, optional, tag = "10")]
    pub atime: Option<Timestamp>,
    #[prost(uint64, tag = "11")]
    pub size: u64,
    #[prost(uint64, tag = "12")]
    pub inode: u64,
    #[prost(uint64, tag = "13")]
    pub device: u64,
    #[prost(uint64, tag = "14")]
    pub links: u64,
    #[prost(message, repeated, tag = "15")]
    pub xattrs: Vec<Xattr>,
    #[prost(bytes = "vec", tag = "16")]
    pub symlink_target: Vec<u8>,
    #[prost(uint64, tag = "17")]
    pub rdev: u64,
    #[prost(bool, tag = "18")]
    pub sparse: bool,
    #[prost(bytes = "vec", repeated, tag = "19")]
    pub content: Vec<Vec<u8>>,
    #[prost(bytes = "vec", tag = "20")]
    pub subtree: Vec<u8>,
    #[prost(string, tag = "21")]
    pub damage: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Extent {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(uint32, tag = "2")]
    pub length: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtentList {
    #[prost(message, repeated, tag = "1")]
    pub extents: Vec<Extent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Volume {
    #[prost(uint64, tag = "1")]
    pub size: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub extent_lists: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(uint64, tag = "1")]
    pub files_new: u64,
    #[prost(uint64, tag = "2")]
    pub files_changed: u64,
    #[prost(uint64, tag = "3")]
    pub files_unmodified: u64,
    #[prost(uint64, tag = "4")]
    pub dirs_new: u64,
    #[prost(uint64, tag = "5")]
    pub dirs_changed: u64,
    #[prost(uint64, tag = "6")]
    pub dirs_unmodified: u64,
    #[prost(uint64, tag = "7")]
    pub data_blobs: u64,
    #[prost(uint64, tag = "8")]
    pub tree_blobs: u64,
    #[prost(uint64, tag = "9")]
    pub bytes_processed: u64,
    #[prost(uint64, tag = "10")]
    pub bytes_added: u64,
    #[prost(uint64, tag = "11")]
    pub bytes_stored: u64,
    #[prost(uint64, tag = "12")]
    pub errors: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    #[prost(message, optional, tag = "2")]
    pub end_time: Option<Timestamp>,
    #[prost(string, tag = "3")]
    pub host: String,
    #[prost(string, tag = "4")]
    pub username: String,
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub paths: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "6")]
    pub tags: Vec<String>,
    #[prost(btree_map = "string, string", tag = "7")]
    pub labels: BTreeMap<String, String>,
    #[prost(bytes = "vec", tag = "8")]
    pub parent: Vec<u8>,
    #[prost(bytes = "vec", tag = "9")]
    pub tree: Vec<u8>,
    #[prost(message, optional, tag = "10")]
    pub volume: Option<Volume>,
    #[prost(message, optional, tag = "11")]
    pub summary: Option<Summary>,
    #[prost(string, tag = "12")]
    pub program: String,
    #[prost(bytes = "vec", tag = "13")]
    pub original: Vec<u8>,
    #[prost(message, optional, tag = "14")]
    pub top: Option<Node>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Session {
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(string, tag = "3")]
    pub host: String,
    #[prost(uint32, tag = "4")]
    pub pid: u32,
    #[prost(message, optional, tag = "5")]
    pub started: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    pub heartbeat: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(bytes = "vec", tag = "1")]
    pub session: Vec<u8>,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(message, optional, tag = "4")]
    pub acquired: Option<Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub expires: Option<Timestamp>,
    #[prost(string, tag = "6")]
    pub process: String,
}
