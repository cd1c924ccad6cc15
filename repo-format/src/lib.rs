//! # arca-format: Arca's repository format, version 1
//!
//! Sans-IO encodings of everything a repository stores: key files, the config, blob
//! envelopes, packs, index files, trees, extent lists, snapshots and writer sessions.
//! Every function here maps bytes to values or values to bytes; nothing touches files,
//! sockets, threads or clocks (except [`Timestamp::now`] and the operating system's random
//! numbers for fresh nonces, salts and keys).
//!
//! `spec/FORMAT.md` specifies every byte; `spec/vectors/` pins the encodings.
//!
//! ```
//! use arca_format::{BlobType, Compression, MasterKey, PackKind, PackWriter, pack};
//!
//! let keys = MasterKey::generate()?.derive();
//! let chunk = b"hello, repository";
//! let id = keys.blob_id(BlobType::Data, chunk);
//! let mut w = PackWriter::new(PackKind::Data, 1 << 20);
//! w.add_blob(&keys, BlobType::Data, id, chunk, Compression::Zstd(3))?;
//! let packed = w.finish(&keys)?;
//! let entries = pack::read_pack(&keys, &packed.bytes, Some(packed.id))?;
//! let e = &entries[0];
//! let sealed = &packed.bytes[e.offset as usize..e.end() as usize];
//! assert_eq!(pack::open_blob(&keys, e, sealed)?, chunk);
//! # Ok::<(), arca_format::Error>(())
//! ```

mod codec;
mod config;
pub mod envelope;
mod error;
mod id;
mod index;
mod keys;
pub mod layout;
pub mod pack;
mod proto;
mod session;
mod snapshot;
mod tree;

pub use config::{CONFIG_MAGIC, ChunkerParams, FORMAT_VERSION, RepoConfig};
pub use envelope::{BlobType, Compression, Kind, PackKind};
pub use error::{Error, Result, What};
pub use id::{
    BlobId, IndexId, KeyId, PackId, RepoId, SessionId, SnapshotId, Timestamp, object_hash,
};
pub use index::{IndexFile, IndexPack};
pub use keys::{KEY_FILE_MAGIC, KEY_FILE_VERSION, KdfParams, KeyFile, KeyMeta, Keys, MasterKey};
pub use pack::{FinishedPack, PackEntry, PackWriter};
pub use session::{Lease, Session, SessionKind};
pub use snapshot::{Extent, ExtentList, Snapshot, SnapshotRoot, Summary, Volume};
pub use tree::{Node, NodeKind, Tree, Xattr, check_name};
