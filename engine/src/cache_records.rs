//! The local index cache's record encodings (rocksdb values, and the file of what this
//! machine last saw of a repository's index): plain byte codecs with no I/O, kept apart so
//! that a fuzz target can include this file on its own (`fuzz/fuzz_targets/cache_records.rs`)
//! without building rocksdb.

use std::collections::BTreeSet;

use arca_format::{BlobId, BlobType, IndexId, PackEntry, PackId, PackKind};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackRecord {
    pub(crate) size: u64,
    pub(crate) kind_meta: bool,
    pub(crate) refs: Vec<(IndexId, Option<i64>)>,
}

impl PackRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + 41 * self.refs.len());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.push(self.kind_meta as u8);
        for (id, obs) in &self.refs {
            v.extend_from_slice(id.as_bytes());
            v.push(obs.is_some() as u8);
            v.extend_from_slice(&obs.unwrap_or(0).to_le_bytes());
        }
        v
    }

    /// The record, or `None` when it is damaged (only the encodings `encode` writes are
    /// accepted: flags 0 or 1, and no time on an unmarked reference).
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 9 || !(b.len() - 9).is_multiple_of(41) || b[8] > 1 {
            return None;
        }
        let size = u64::from_le_bytes(b[..8].try_into().ok()?);
        let refs = b[9..]
            .chunks_exact(41)
            .map(|r| {
                let id = IndexId(r[..32].try_into().expect("32"));
                let secs = i64::from_le_bytes(r[33..41].try_into().expect("8"));
                match r[32] {
                    1 => Some((id, Some(secs))),
                    0 if secs == 0 => Some((id, None)),
                    _ => None,
                }
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            size,
            kind_meta: b[8] == 1,
            refs,
        })
    }

    pub(crate) fn live(&self) -> bool {
        !self.refs.is_empty()
    }

    pub(crate) fn obsolete(&self) -> bool {
        self.live() && self.refs.iter().all(|(_, o)| o.is_some())
    }

    pub(crate) fn kind(&self) -> PackKind {
        if self.kind_meta {
            PackKind::Meta
        } else {
            PackKind::Data
        }
    }
}

pub(crate) fn encode_blob_value(e: &PackEntry) -> [u8; 13] {
    let mut v = [0u8; 13];
    v[0] = e.blob_type.as_u8();
    v[1..5].copy_from_slice(&e.offset.to_le_bytes());
    v[5..9].copy_from_slice(&e.length.to_le_bytes());
    v[9..13].copy_from_slice(&e.raw_length.to_le_bytes());
    v
}

pub(crate) fn decode_blob_value(id: BlobId, v: &[u8]) -> Option<PackEntry> {
    if v.len() != 13 {
        return None;
    }
    Some(PackEntry {
        blob_type: BlobType::from_u8(v[0])?,
        id,
        offset: u32::from_le_bytes(v[1..5].try_into().ok()?),
        length: u32::from_le_bytes(v[5..9].try_into().ok()?),
        raw_length: u32::from_le_bytes(v[9..13].try_into().ok()?),
    })
}

pub(crate) fn blob_key(blob: &BlobId, pack: &PackId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(blob.as_bytes());
    k[32..].copy_from_slice(pack.as_bytes());
    k
}

/// What the cache remembers of one index file.
pub(crate) struct FileRecord {
    pub(crate) supersedes: Vec<IndexId>,
    pub(crate) packs: Vec<PackId>,
}

impl FileRecord {
    /// `state u8 | n u32 | n superseded ids | pack ids`.
    pub(crate) fn encode(state: u8, supersedes: &[IndexId], packs: &[PackId]) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + 32 * (supersedes.len() + packs.len()));
        v.push(state);
        v.extend_from_slice(&(supersedes.len() as u32).to_le_bytes());
        for s in supersedes {
            v.extend_from_slice(s.as_bytes());
        }
        for p in packs {
            v.extend_from_slice(p.as_bytes());
        }
        v
    }

    /// The record, or `None` when it is damaged.
    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        if v.len() < 5 {
            return None;
        }
        let n = u32::from_le_bytes(v[1..5].try_into().ok()?) as usize;
        let rest = &v[5..];
        let sup_len = n.checked_mul(32)?;
        if rest.len() < sup_len || !(rest.len() - sup_len).is_multiple_of(32) {
            return None;
        }
        let supersedes = rest[..sup_len]
            .chunks_exact(32)
            .map(|c| IndexId(c.try_into().expect("32")))
            .collect();
        let packs = rest[sup_len..]
            .chunks_exact(32)
            .map(|c| PackId(c.try_into().expect("32")))
            .collect();
        Some(FileRecord { supersedes, packs })
    }
}

/// What a machine last saw of a repository's index, kept beside its cache as Borg keeps
/// its security directory: the live index files, and every file it saw superseded. Index
/// files are only ever deleted after something supersedes them, so a live file that
/// vanished with no new superseding file means the repository went backwards; and a file
/// seen superseded that comes back unsuperseded was replayed, and must not be trusted
/// (it may list packs that were collected since).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) live: BTreeSet<IndexId>,
    pub(crate) superseded: BTreeSet<IndexId>,
}

const SEEN_MAGIC: &str = "arca-seen-index-1";

impl Seen {
    /// Parse the file's text; anything unrecognised reads as nothing seen.
    pub(crate) fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        if lines.next() != Some(SEEN_MAGIC) {
            return Self::default();
        }
        let mut out = Self::default();
        for l in lines {
            let (set, hex) = match l.split_once(' ') {
                Some(("L", h)) => (&mut out.live, h),
                Some(("S", h)) => (&mut out.superseded, h),
                _ => continue,
            };
            if let Some(id) =
                arca_format::layout::parse_id(arca_format::layout::INDEX, &format!("index/{hex}"))
            {
                set.insert(id);
            }
        }
        out
    }

    /// The file's text.
    pub(crate) fn render(&self) -> String {
        let mut text = String::with_capacity(24 + 67 * (self.live.len() + self.superseded.len()));
        text.push_str(SEEN_MAGIC);
        text.push('\n');
        for id in &self.live {
            text.push_str(&format!("L {id}\n"));
        }
        for id in &self.superseded {
            text.push_str(&format!("S {id}\n"));
        }
        text
    }
}
