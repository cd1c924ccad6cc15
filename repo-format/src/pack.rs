//! Pack files: many sealed blobs, then a sealed trailer that lists them.
//!
//! ```text
//! +--------+--------+-----+--------+------------------+----------------+-----------+
//! | blob 0 | blob 1 | ... | blob n | trailer envelope | trailer_len u32 | "ARCApack" |
//! +--------+--------+-----+--------+------------------+----------------+-----------+
//! ```
//!
//! The trailer's plaintext is `count u32` then `count` entries of 41 bytes:
//! `type u8 | length u32 | raw_length u32 | id [32]`. Offsets are implicit (blob i starts
//! where blob i-1 ended), which keeps the trailer small and leaves no way to describe
//! overlapping blobs. A reader fetches the last few KiB of a pack, reads the footer, then
//! the trailer, and can rebuild the index from packs alone.

use crate::codec::read_u32;
use crate::envelope::{self, BlobType, Compression, Kind, PackKind, Sealed};
use crate::error::{Error, Result, What};
use crate::id::{BlobId, PackId};
use crate::keys::Keys;

/// The last 8 bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"ARCApack";
/// Bytes of the fixed footer: `trailer_len u32` and the magic.
pub const FOOTER_LEN: usize = 12;
/// Bytes of one trailer entry.
pub const ENTRY_LEN: usize = 41;
/// Largest pack this format describes: offsets and lengths are u32.
pub const MAX_PACK_LEN: u64 = u32::MAX as u64;
/// Most entries one trailer may list: bounds the memory of decoding one.
pub const MAX_ENTRIES: usize = 1 << 20;

/// One blob in a pack, as listed by its trailer and by the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackEntry {
    /// Blob type.
    pub blob_type: BlobType,
    /// Content ID.
    pub id: BlobId,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub length: u32,
    /// Length of the plaintext.
    pub raw_length: u32,
}

impl PackEntry {
    /// One past the last byte of the sealed blob.
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.length as u64
    }
}

/// Builds one pack in memory. A pack holds blobs of one [`PackKind`] only.
#[derive(Debug)]
pub struct PackWriter {
    kind: PackKind,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    ids: std::collections::HashSet<BlobId>,
}

/// A finished pack.
#[derive(Debug)]
pub struct FinishedPack {
    /// Its name: BLAKE3 of `bytes`.
    pub id: PackId,
    /// Data or metadata.
    pub kind: PackKind,
    /// The complete pack file.
    pub bytes: Vec<u8>,
    /// The blobs in it, in order.
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// An empty pack of the given kind, with room for about `capacity` bytes.
    pub fn new(kind: PackKind, capacity: usize) -> Self {
        Self {
            kind,
            buf: Vec::with_capacity(capacity),
            entries: Vec::new(),
            ids: std::collections::HashSet::new(),
        }
    }

    /// The kind of pack.
    pub fn kind(&self) -> PackKind {
        self.kind
    }

    /// Bytes of blobs so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Blobs so far.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Whether the pack already holds this blob.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.ids.contains(id)
    }

    fn check(&self, blob_type: BlobType, id: &BlobId, extra: usize) -> Result<()> {
        if self.ids.contains(id) {
            return Err(Error::invalid(
                What::Pack,
                format!("blob {} is already in this pack", id.short()),
            ));
        }
        if blob_type.pack_kind() != self.kind {
            return Err(Error::invalid(
                What::Pack,
                format!("{blob_type:?} blob in a {:?} pack", self.kind),
            ));
        }
        if self.entries.len() >= MAX_ENTRIES
            || (self.buf.len() + extra) as u64
                + (FOOTER_LEN + 64 + ENTRY_LEN * (self.entries.len() + 1)) as u64
                > MAX_PACK_LEN
        {
            return Err(Error::invalid(What::Pack, "pack is full"));
        }
        Ok(())
    }

    /// Append an already sealed blob (sealed by a worker thread, say).
    pub fn add_sealed(
        &mut self,
        blob_type: BlobType,
        id: BlobId,
        raw_length: u32,
        sealed: &[u8],
    ) -> Result<PackEntry> {
        self.check(blob_type, &id, sealed.len())?;
        let entry = PackEntry {
            blob_type,
            id,
            offset: self.buf.len() as u32,
            length: sealed.len() as u32,
            raw_length,
        };
        self.buf.extend_from_slice(sealed);
        self.entries.push(entry);
        self.ids.insert(id);
        Ok(entry)
    }

    /// Seal a plaintext blob directly into the pack (no intermediate copy).
    pub fn add_blob(
        &mut self,
        keys: &Keys,
        blob_type: BlobType,
        id: BlobId,
        plaintext: &[u8],
        compression: Compression,
    ) -> Result<PackEntry> {
        self.check(blob_type, &id, plaintext.len() + envelope::OVERHEAD)?;
        let offset = self.buf.len() as u32;
        let Sealed { len, .. } = envelope::seal_into(
            keys,
            blob_type.kind(),
            &[],
            plaintext,
            compression,
            &mut self.buf,
        )?;
        let entry = PackEntry {
            blob_type,
            id,
            offset,
            length: len as u32,
            raw_length: plaintext.len() as u32,
        };
        self.entries.push(entry);
        self.ids.insert(id);
        Ok(entry)
    }

    /// Append the sealed trailer and footer; name the pack.
    pub fn finish(self, keys: &Keys) -> Result<FinishedPack> {
        let nonce = random_nonce()?;
        self.finish_with_nonce(keys, nonce)
    }

    /// [`PackWriter::finish`] with a given trailer nonce. Only for golden vectors.
    pub fn finish_with_nonce(mut self, keys: &Keys, nonce: [u8; 24]) -> Result<FinishedPack> {
        if self.entries.is_empty() {
            return Err(Error::invalid(What::Pack, "a pack needs at least one blob"));
        }
        let plain = encode_trailer(&self.entries);
        let before = self.buf.len();
        envelope::seal_with_nonce(
            keys,
            Kind::PackTrailer,
            &[],
            &plain,
            Compression::None,
            nonce,
            &mut self.buf,
        )?;
        let trailer_len = (self.buf.len() - before) as u32;
        self.buf.extend_from_slice(&trailer_len.to_le_bytes());
        self.buf.extend_from_slice(&PACK_MAGIC);
        Ok(FinishedPack {
            id: PackId(crate::id::object_hash(&self.buf)),
            kind: self.kind,
            bytes: self.buf,
            entries: self.entries,
        })
    }
}

fn random_nonce() -> Result<[u8; 24]> {
    let mut n = [0u8; 24];
    crate::error::random_bytes(&mut n)?;
    Ok(n)
}

fn encode_trailer(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(e.blob_type.as_u8());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.raw_length.to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
    }
    out
}

/// Read the footer from the last bytes of a pack (at least [`FOOTER_LEN`] of them):
/// the length of the trailer envelope that precedes it.
pub fn trailer_len(tail: &[u8]) -> Result<usize> {
    if tail.len() < FOOTER_LEN {
        return Err(Error::corrupt(What::Pack, "shorter than its footer"));
    }
    let footer = &tail[tail.len() - FOOTER_LEN..];
    if footer[4..] != PACK_MAGIC {
        return Err(Error::corrupt(
            What::Pack,
            "no pack magic at the end (truncated?)",
        ));
    }
    let len = read_u32(&footer[..4]) as usize;
    if !(envelope::OVERHEAD + 4 + ENTRY_LEN..=envelope::OVERHEAD + 4 + MAX_ENTRIES * ENTRY_LEN)
        .contains(&len)
    {
        return Err(Error::corrupt(
            What::Pack,
            format!("implausible trailer length {len}"),
        ));
    }
    Ok(len)
}

/// Decode a trailer envelope (exactly the bytes that precede the footer) given the
/// offset at which it starts in its pack (the total length of the blobs).
pub fn decode_trailer(keys: &Keys, sealed: &[u8], trailer_offset: u64) -> Result<Vec<PackEntry>> {
    let plain = envelope::open(
        keys,
        Kind::PackTrailer,
        &[],
        sealed,
        4 + MAX_ENTRIES * ENTRY_LEN,
    )?;
    let corrupt = |r: String| Error::corrupt(What::PackTrailer, r);
    if plain.len() < 4 {
        return Err(corrupt("no entry count".into()));
    }
    let count = read_u32(&plain[..4]) as usize;
    if count == 0 || count > MAX_ENTRIES || plain.len() != 4 + count * ENTRY_LEN {
        return Err(corrupt(format!(
            "{count} entries do not fit {} bytes",
            plain.len()
        )));
    }
    let mut entries = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut offset: u64 = 0;
    for rec in plain[4..].chunks_exact(ENTRY_LEN) {
        let blob_type = BlobType::from_u8(rec[0])
            .ok_or_else(|| corrupt(format!("unknown blob type {}", rec[0])))?;
        let length = read_u32(&rec[1..5]);
        let raw_length = read_u32(&rec[5..9]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&rec[9..41]);
        if (length as usize) < envelope::OVERHEAD {
            return Err(corrupt(format!(
                "blob of {length} bytes is shorter than an envelope"
            )));
        }
        if let Some(first) = entries.first().map(|e: &PackEntry| e.blob_type.pack_kind())
            && first != blob_type.pack_kind()
        {
            return Err(corrupt("data and metadata blobs mixed in one pack".into()));
        }
        if !seen.insert(id) {
            return Err(corrupt(format!("blob {} listed twice", BlobId(id).short())));
        }
        entries.push(PackEntry {
            blob_type,
            id: BlobId(id),
            offset: offset as u32,
            length,
            raw_length,
        });
        offset += length as u64;
        if offset > trailer_offset {
            return Err(corrupt(format!(
                "blobs run to byte {offset}, past the trailer at {trailer_offset}"
            )));
        }
    }
    if offset != trailer_offset {
        return Err(corrupt(format!(
            "blobs end at byte {offset} but the trailer starts at {trailer_offset}"
        )));
    }
    Ok(entries)
}

/// Read the list of blobs of a complete pack file held in memory, and check that the
/// bytes are the pack the name says (`expected`, when given).
pub fn read_pack(keys: &Keys, bytes: &[u8], expected: Option<PackId>) -> Result<Vec<PackEntry>> {
    if let Some(id) = expected
        && crate::id::object_hash(bytes) != id.0
    {
        return Err(Error::corrupt(
            What::Pack,
            format!("contents do not hash to the pack's name {}", id.short()),
        ));
    }
    let tlen = trailer_len(bytes)?;
    if tlen + FOOTER_LEN > bytes.len() {
        return Err(Error::corrupt(What::Pack, "trailer longer than the pack"));
    }
    let start = bytes.len() - FOOTER_LEN - tlen;
    decode_trailer(keys, &bytes[start..bytes.len() - FOOTER_LEN], start as u64)
}

/// Open one blob cut from a pack and check it against its ID.
pub fn open_blob(keys: &Keys, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    open_blob_into(keys, entry, sealed, &mut plain)?;
    Ok(plain)
}

/// [`open_blob`] into `plain` (cleared first), whose allocation a caller may reuse.
pub fn open_blob_into(
    keys: &Keys,
    entry: &PackEntry,
    sealed: &[u8],
    plain: &mut Vec<u8>,
) -> Result<()> {
    if sealed.len() != entry.length as usize {
        return Err(Error::corrupt(
            What::Envelope,
            format!(
                "blob {} is {} bytes, the index says {}",
                entry.id.short(),
                sealed.len(),
                entry.length
            ),
        ));
    }
    envelope::open_into(
        keys,
        entry.blob_type.kind(),
        &[],
        sealed,
        envelope::MAX_BLOB_LEN,
        plain,
    )?;
    if plain.len() != entry.raw_length as usize {
        return Err(Error::corrupt(
            What::Envelope,
            format!(
                "blob {} holds {} bytes, the index says {}",
                entry.id.short(),
                plain.len(),
                entry.raw_length
            ),
        ));
    }
    if keys.blob_id(entry.blob_type, plain) != entry.id {
        return Err(Error::corrupt(
            What::Envelope,
            format!("blob {} does not hash to its ID", entry.id.short()),
        ));
    }
    Ok(())
}
