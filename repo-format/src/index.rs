//! Index files: which blob is where.
//!
//! An index file is an `IndexFile` protobuf sealed in an envelope of kind
//! [`Kind::Index`](crate::envelope::Kind::Index), stored at `index/<id>` where the ID is
//! BLAKE3 of the stored bytes. Index files are immutable and never edited: writers only add
//! new ones, and maintenance replaces a set of them by a new file that names the files it
//! `supersedes`. The repository's index is the union of all index files that no other
//! present index file supersedes (see `spec/FORMAT.md`, "Index").

use crate::codec::{decode_proto, encode_proto, fixed, opt_ts_from_proto, opt_ts_to_proto};
use crate::envelope::{self, BlobType, Compression, Kind, PackKind};
use crate::error::{Error, Result, What};
use crate::id::{BlobId, IndexId, PackId, Timestamp, object_hash};
use crate::keys::Keys;
use crate::pack::PackEntry;
use crate::proto;

/// One pack as an index file lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack's name.
    pub id: PackId,
    /// The pack file's total size in bytes.
    pub size: u64,
    /// Set by maintenance when the pack was found unused and is due for deletion (the
    /// first phase of GC). Writers must not deduplicate against blobs of such a pack;
    /// readers may still read them.
    pub obsolete_since: Option<Timestamp>,
    /// Set by a later maintenance run, by the store's clock: a time by which every
    /// reader's view of the index carried the mark. Sweeping waits from here
    /// (FORMAT.md 14.3); absent on a mark that no run has confirmed yet.
    pub obsolete_visible: Option<Timestamp>,
    /// Its blobs, in pack order.
    pub blobs: Vec<PackEntry>,
}

impl IndexPack {
    /// Data or metadata pack, from its blobs (an empty list counts as data).
    pub fn kind(&self) -> PackKind {
        self.blobs
            .first()
            .map_or(PackKind::Data, |b| b.blob_type.pack_kind())
    }
}

/// A decoded index file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IndexFile {
    /// Index files whose entries this one replaces.
    pub supersedes: Vec<IndexId>,
    /// The packs and their blobs.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Number of blob entries.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    fn to_proto(&self) -> Result<proto::IndexFile> {
        let mut packs = Vec::with_capacity(self.packs.len());
        for p in &self.packs {
            let kind = p.kind();
            let mut blobs = Vec::with_capacity(p.blobs.len());
            for b in &p.blobs {
                if b.blob_type.pack_kind() != kind {
                    return Err(Error::invalid(
                        What::Index,
                        format!("pack {} mixes data and metadata blobs", p.id.short()),
                    ));
                }
                blobs.push(proto::IndexBlob {
                    blob_type: b.blob_type.as_u8() as u32,
                    id: b.id.0.to_vec(),
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                });
            }
            packs.push(proto::IndexPack {
                id: p.id.0.to_vec(),
                size: p.size,
                obsolete_since: opt_ts_to_proto(p.obsolete_since),
                blobs,
                obsolete_visible: opt_ts_to_proto(p.obsolete_visible),
            });
        }
        Ok(proto::IndexFile {
            supersedes: self.supersedes.iter().map(|i| i.0.to_vec()).collect(),
            packs,
        })
    }

    fn from_proto(p: proto::IndexFile) -> Result<Self> {
        let w = What::Index;
        let supersedes = p
            .supersedes
            .iter()
            .map(|s| fixed(w, "superseded index id", s).map(IndexId))
            .collect::<Result<Vec<_>>>()?;
        let mut packs = Vec::with_capacity(p.packs.len());
        for pp in p.packs {
            let id = PackId(fixed(w, "pack id", &pp.id)?);
            let mut blobs = Vec::with_capacity(pp.blobs.len());
            let mut seen = std::collections::HashSet::with_capacity(pp.blobs.len());
            let mut kind = None;
            for b in pp.blobs {
                let blob_type = u8::try_from(b.blob_type)
                    .ok()
                    .and_then(BlobType::from_u8)
                    .ok_or_else(|| {
                        Error::corrupt(w, format!("unknown blob type {}", b.blob_type))
                    })?;
                if *kind.get_or_insert(blob_type.pack_kind()) != blob_type.pack_kind() {
                    return Err(Error::corrupt(
                        w,
                        format!("pack {} mixes data and metadata blobs", id.short()),
                    ));
                }
                let entry = PackEntry {
                    blob_type,
                    id: BlobId(fixed(w, "blob id", &b.id)?),
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                };
                if !seen.insert(entry.id) {
                    return Err(Error::corrupt(
                        w,
                        format!("pack {} lists blob {} twice", id.short(), entry.id.short()),
                    ));
                }
                if entry.end() > pp.size || (entry.length as usize) < envelope::OVERHEAD {
                    return Err(Error::corrupt(
                        w,
                        format!(
                            "blob {} at {}+{} does not fit pack {} of {} bytes",
                            entry.id.short(),
                            entry.offset,
                            entry.length,
                            id.short(),
                            pp.size
                        ),
                    ));
                }
                blobs.push(entry);
            }
            packs.push(IndexPack {
                id,
                size: pp.size,
                obsolete_since: opt_ts_from_proto(w, pp.obsolete_since)?,
                obsolete_visible: opt_ts_from_proto(w, pp.obsolete_visible)?,
                blobs,
            });
        }
        Ok(Self { supersedes, packs })
    }

    /// The unsealed protobuf bytes (what the envelope carries).
    pub fn encode_plain(&self) -> Result<Vec<u8>> {
        Ok(encode_proto(&self.to_proto()?))
    }

    /// Decode unsealed protobuf bytes.
    pub fn decode_plain(bytes: &[u8]) -> Result<Self> {
        Self::from_proto(decode_proto(What::Index, bytes)?)
    }

    /// Seal into the stored bytes; the ID is their BLAKE3 hash.
    pub fn encode(&self, keys: &Keys, compression: Compression) -> Result<(IndexId, Vec<u8>)> {
        let sealed = envelope::seal(keys, Kind::Index, &[], &self.encode_plain()?, compression)?;
        Ok((IndexId(object_hash(&sealed)), sealed))
    }

    /// Open stored bytes.
    pub fn decode(keys: &Keys, bytes: &[u8]) -> Result<Self> {
        let plain = envelope::open(keys, Kind::Index, &[], bytes, envelope::MAX_OBJECT_LEN)?;
        Self::decode_plain(&plain)
    }
}
