//! Writer sessions and the maintenance lease: the objects that let many writers and one
//! maintainer share a repository without locks that block backups or go stale.
//!
//! A writer announces itself at `sessions/<session id>` and rewrites that object as a
//! heartbeat; GC's second phase waits for every session that was alive when packs were
//! marked obsolete (see `spec/FORMAT.md`, "Many writers and GC"). The maintenance lease at
//! `maintenance/lease` keeps two maintainers from running at once; it expires on its own.

use crate::codec::{decode_proto, encode_proto, fixed, ts_from_proto, ts_to_proto};
use crate::envelope::{self, Compression, Kind};
use crate::error::{Error, Result, What};
use crate::id::{SessionId, Timestamp};
use crate::keys::Keys;
use crate::proto;

const MAX_LEN: usize = 64 * 1024;

/// What a session does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// A backup (or anything else that writes packs and snapshots).
    Backup,
    /// Maintenance.
    Maintenance,
}

/// A writer session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Random identity; also the object's name.
    pub id: SessionId,
    /// What it does.
    pub kind: SessionKind,
    /// Host.
    pub host: String,
    /// Process ID on that host.
    pub pid: u32,
    /// When it started.
    pub started: Timestamp,
    /// When it last proved to be alive.
    pub heartbeat: Timestamp,
}

impl Session {
    /// Seal into stored bytes.
    pub fn encode(&self, keys: &Keys) -> Result<Vec<u8>> {
        envelope::seal(
            keys,
            Kind::Session,
            &[],
            &self.encode_plain(),
            Compression::None,
        )
    }

    /// The unsealed protobuf bytes.
    pub fn encode_plain(&self) -> Vec<u8> {
        encode_proto(&proto::Session {
            id: self.id.0.to_vec(),
            kind: match self.kind {
                SessionKind::Backup => 1,
                SessionKind::Maintenance => 2,
            },
            host: self.host.clone(),
            pid: self.pid,
            started: Some(ts_to_proto(self.started)),
            heartbeat: Some(ts_to_proto(self.heartbeat)),
        })
    }

    /// Open stored bytes.
    pub fn decode(keys: &Keys, bytes: &[u8]) -> Result<Self> {
        Self::decode_plain(&envelope::open(keys, Kind::Session, &[], bytes, MAX_LEN)?)
    }

    /// Decode unsealed protobuf bytes.
    pub fn decode_plain(plain: &[u8]) -> Result<Self> {
        let w = What::Session;
        let p: proto::Session = decode_proto(w, plain)?;
        Ok(Self {
            id: SessionId(fixed(w, "session id", &p.id)?),
            kind: match p.kind {
                1 => SessionKind::Backup,
                2 => SessionKind::Maintenance,
                k => return Err(Error::corrupt(w, format!("unknown session kind {k}"))),
            },
            host: p.host,
            pid: p.pid,
            started: ts_from_proto(w, p.started)?,
            heartbeat: ts_from_proto(w, p.heartbeat)?,
        })
    }
}

/// The maintenance lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The maintenance session holding it.
    pub session: SessionId,
    /// Host.
    pub host: String,
    /// Process ID on that host.
    pub pid: u32,
    /// When it was taken or last renewed.
    pub acquired: Timestamp,
    /// When it lapses unless renewed.
    pub expires: Timestamp,
    /// The holding process exactly (boot ID, PID namespace, PID and start time), so that a
    /// maintainer on the same machine can tell that the holder is gone; empty if unknown.
    pub process: String,
}

impl Lease {
    /// Seal into stored bytes.
    pub fn encode(&self, keys: &Keys) -> Result<Vec<u8>> {
        envelope::seal(
            keys,
            Kind::Lease,
            &[],
            &self.encode_plain(),
            Compression::None,
        )
    }

    /// The unsealed protobuf bytes.
    pub fn encode_plain(&self) -> Vec<u8> {
        encode_proto(&proto::Lease {
            session: self.session.0.to_vec(),
            host: self.host.clone(),
            pid: self.pid,
            acquired: Some(ts_to_proto(self.acquired)),
            expires: Some(ts_to_proto(self.expires)),
            process: self.process.clone(),
        })
    }

    /// Open stored bytes.
    pub fn decode(keys: &Keys, bytes: &[u8]) -> Result<Self> {
        Self::decode_plain(&envelope::open(keys, Kind::Lease, &[], bytes, MAX_LEN)?)
    }

    /// Decode unsealed protobuf bytes.
    pub fn decode_plain(plain: &[u8]) -> Result<Self> {
        let w = What::Lease;
        let p: proto::Lease = decode_proto(w, plain)?;
        Ok(Self {
            session: SessionId(fixed(w, "session id", &p.session)?),
            host: p.host,
            pid: p.pid,
            acquired: ts_from_proto(w, p.acquired)?,
            expires: ts_from_proto(w, p.expires)?,
            process: p.process,
        })
    }
}
