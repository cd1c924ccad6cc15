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
/// The maintenance lease of format 1.0, before leases had terms: still honoured (a
/// maintainer refuses to run while an older Arca holds it), never written.
pub const LEASE: &str = "maintenance/lease";
/// Prefix of the maintenance leases, one object per term.
pub const LEASES: &str = "maintenance/lease-";

/// Name of the maintenance lease of a term: 20 digits, so that names sort as numbers.
pub fn lease(term: u64) -> String {
    format!("{LEASES}{term:020}")
}

/// The term of a lease's name.
pub fn parse_lease(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(LEASES)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// What kind of object a name is, and the largest stored size one may have: a fetch of
/// anything larger is refused before it starts, so a planted 40 GB object cannot exhaust a
/// machine's memory (FORMAT.md section 15).
pub fn kind_and_max_len(name: &str) -> (crate::What, u64) {
    use crate::What;
    use crate::envelope::{MAX_OBJECT_LEN, OVERHEAD};
    let small = (64 << 10) + OVERHEAD as u64;
    if name == CONFIG {
        (What::Config, 1 << 20)
    } else if name.starts_with(KEYS) {
        (What::KeyFile, 64 << 10)
    } else if name.starts_with(INDEX) {
        (What::Index, (MAX_OBJECT_LEN + OVERHEAD) as u64)
    } else if name.starts_with(SNAPSHOTS) {
        (What::Snapshot, (MAX_OBJECT_LEN + OVERHEAD) as u64)
    } else if name.starts_with(SESSIONS) {
        (What::Session, small)
    } else if name.starts_with("maintenance/") {
        (What::Lease, small)
    } else if name.starts_with(PACKS) {
        (What::Pack, u32::MAX as u64)
    } else {
        (What::Id, 0)
    }
}

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
    if !lower_hex(hex) {
        return None;
    }
    let id: PackId = hex.parse().ok()?;
    (shard.len() == 2 && hex.starts_with(shard)).then_some((kind, id))
}

/// Parse the ID at the end of `<prefix><hex>`. Names are written in lower case only: an
/// upper-case twin is not the same object (the store would be asked for the lower-case
/// name) and is not one of the repository's.
pub fn parse_id<T: std::str::FromStr>(prefix: &str, name: &str) -> Option<T> {
    let hex = name.strip_prefix(prefix)?;
    if !lower_hex(hex) {
        return None;
    }
    hex.parse().ok()
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
