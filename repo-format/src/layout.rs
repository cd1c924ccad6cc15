//! Names of objects in the store, relative to the repository's prefix.
//!
//! ```text
//! config                          the repository config
//! keys/<key id>                   key files
//! packs/d/<xx>/<pack id>          data packs   (xx = first two hex digits of the id)
//! packs/m/<xx>/<pack id>          metadata packs
//! index/<index id>                index files
//! snapshots/<snapshot id>         snapshot manifests
//! sessions/<session id>           live writer sessions
//! maintenance/lease               the maintenance lease
//! ```
//!
//! Every immutable object is named by the BLAKE3 hash of its bytes, so two writers can
//! never write different bytes under one name, and no object is ever renamed.

use crate::envelope::PackKind;
use crate::id::{IndexId, KeyId, PackId, SessionId, SnapshotId};

/// The config object.
pub const CONFIG: &str = "config";
/// Prefix of key files.
pub const KEYS: &str = "keys/";
/// Prefix of all packs.
pub const PACKS: &str = "packs/";
/// Prefix of index files.
pub const INDEX: &str = "index/";
/// Prefix of snapshots.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefix of writer sessions.
pub const SESSIONS: &str = "sessions/";
/// The maintenance lease.
pub const LEASE: &str = "maintenance/lease";

/// Name of a key file.
pub fn key(id: &KeyId) -> String {
    format!("{KEYS}{id}")
}

/// Prefix of packs of one kind.
pub fn pack_dir(kind: PackKind) -> String {
    format!("{PACKS}{}/", kind.dir())
}

/// Name of a pack.
pub fn pack(kind: PackKind, id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{PACKS}{}/{}/{hex}", kind.dir(), &hex[..2])
}

/// Name of an index file.
pub fn index(id: &IndexId) -> String {
    format!("{INDEX}{id}")
}

/// Name of a snapshot.
pub fn snapshot(id: &SnapshotId) -> String {
    format!("{SNAPSHOTS}{id}")
}

/// Name of a session object.
pub fn session(id: &SessionId) -> String {
    format!("{SESSIONS}{id}")
}

/// Parse a pack's name back into its kind and ID; `None` for anything else (a temporary
/// file left by a crashed local writer, say).
pub fn parse_pack(name: &str) -> Option<(PackKind, PackId)> {
    let rest = name.strip_prefix(PACKS)?;
    let (kind, rest) = match rest.split_at_checked(2)? {
        ("d/", r) => (PackKind::Data, r),
        ("m/", r) => (PackKind::Meta, r),
        _ => return None,
    };
    let (shard, hex) = rest.split_once('/')?;
    let id: PackId = hex.parse().ok()?;
    (shard.len() == 2 && hex.starts_with(shard)).then_some((kind, id))
}

/// Parse the ID at the end of `<prefix><hex>`.
pub fn parse_id<T: std::str::FromStr>(prefix: &str, name: &str) -> Option<T> {
    name.strip_prefix(prefix)?.parse().ok()
}
