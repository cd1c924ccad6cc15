//! The blob envelope: compress (or not), then encrypt and authenticate.
//!
//! ```text
//! +--------+-----------+------------------------------------------------+--------+
//! | kind 1 | nonce 24  | AES-256-GCM( payload | raw_len u32 | comp u8 )  | tag 16 |
//! +--------+-----------+------------------------------------------------+--------+
//! ```
//!
//! Each envelope gets a fresh random 192-bit nonce; the AES key of that one envelope is
//! `BLAKE3-keyed(envelope_key, nonce)` and the GCM IV is the nonce's first 12 bytes. A key
//! is therefore used for exactly one message, so GCM's 96-bit nonce never repeats under
//! one key, however many blobs a repository holds (random 96-bit IVs under one key would
//! reach NIST's 2^32-message bound at about four billion blobs). The kind byte and any
//! caller-supplied context are authenticated as associated data. The compression byte and
//! length sit at the *end* of the plaintext so that opening an uncompressed blob is a
//! decrypt and a truncate, with no copy.

use std::cell::RefCell;

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use crate::codec::read_u32;
use crate::error::{Error, Result, What, random_bytes};
use crate::keys::Keys;

/// Bytes before the ciphertext: kind and nonce.
pub const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Bytes of the random nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of the inner trailer (raw length and compression) inside the ciphertext.
pub const INNER_TRAILER_LEN: usize = 5;
/// Bytes of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Total bytes an envelope adds to an uncompressed payload.
pub const OVERHEAD: usize = HEADER_LEN + INNER_TRAILER_LEN + TAG_LEN;

/// Largest plaintext of a blob stored in a pack (data chunk, tree, extent list).
pub const MAX_BLOB_LEN: usize = 32 << 20;
/// Largest plaintext of a stand-alone object (index file, snapshot, config, session).
pub const MAX_OBJECT_LEN: usize = 512 << 20;

/// Types of blobs that live in packs and have content IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobType {
    /// A chunk of file or volume content.
    Data = 1,
    /// A directory listing.
    Tree = 2,
    /// A part of a block volume's map.
    ExtentList = 3,
}

impl BlobType {
    /// The byte used on disk.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Parse the on-disk byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(BlobType::Data),
            2 => Some(BlobType::Tree),
            3 => Some(BlobType::ExtentList),
            _ => None,
        }
    }

    /// Which kind of pack holds blobs of this type.
    pub fn pack_kind(self) -> PackKind {
        match self {
            BlobType::Data => PackKind::Data,
            BlobType::Tree | BlobType::ExtentList => PackKind::Meta,
        }
    }

    /// The envelope kind of a blob of this type.
    pub fn kind(self) -> Kind {
        match self {
            BlobType::Data => Kind::Data,
            BlobType::Tree => Kind::Tree,
            BlobType::ExtentList => Kind::ExtentList,
        }
    }
}

/// Data blobs and metadata blobs go to separate packs, so that metadata can be listed,
/// cached and checked without touching the bulk of the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackKind {
    /// Packs of [`BlobType::Data`] blobs, under `packs/d/`.
    Data,
    /// Packs of tree and extent-list blobs, under `packs/m/`.
    Meta,
}

impl PackKind {
    /// The one-letter directory of this kind under `packs/`.
    pub fn dir(self) -> &'static str {
        match self {
            PackKind::Data => "d",
            PackKind::Meta => "m",
        }
    }
}

/// What an envelope holds: the first byte of every envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// A data chunk.
    Data = 1,
    /// A tree blob.
    Tree = 2,
    /// An extent-list blob.
    ExtentList = 3,
    /// The trailer of a pack.
    PackTrailer = 16,
    /// An index file.
    Index = 17,
    /// A snapshot manifest.
    Snapshot = 18,
    /// The body of the repository config.
    Config = 19,
    /// A writer session.
    Session = 20,
    /// The maintenance lease.
    Lease = 21,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Tree,
            3 => Kind::ExtentList,
            16 => Kind::PackTrailer,
            17 => Kind::Index,
            18 => Kind::Snapshot,
            19 => Kind::Config,
            20 => Kind::Session,
            21 => Kind::Lease,
            _ => return None,
        })
    }

    fn what(self) -> What {
        match self {
            Kind::Data | Kind::Tree | Kind::ExtentList => What::Envelope,
            Kind::PackTrailer => What::PackTrailer,
            Kind::Index => What::Index,
            Kind::Snapshot => What::Snapshot,
            Kind::Config => What::Config,
            Kind::Session => What::Session,
            Kind::Lease => What::Lease,
        }
    }
}

/// Compression of an envelope's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// Zstandard at the given level (-7..=22); the payload is stored uncompressed instead
    /// when compression does not make it smaller.
    Zstd(i32),
}

const COMP_NONE: u8 = 0;
const COMP_ZSTD: u8 = 1;

/// What [`seal_into`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Bytes appended to the output.
    pub len: usize,
    /// Whether the payload ended up compressed.
    pub compressed: bool,
}

thread_local! {
    // zstd contexts are costly to create (hundreds of KiB of tables); keep one per thread.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn blob_cipher(keys: &Keys, nonce: &[u8; NONCE_LEN]) -> Aes256Gcm {
    let k = blake3::keyed_hash(&keys.envelope, nonce);
    Aes256Gcm::new(&(*k.as_bytes()).into())
}

fn gcm_iv(nonce: &[u8; NONCE_LEN]) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&nonce[..12]);
    Nonce::from(iv)
}

fn aad(kind: u8, extra: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(1 + extra.len());
    a.push(kind);
    a.extend_from_slice(extra);
    a
}

/// Seal `plaintext` with a fresh random nonce; see [`seal_into`].
pub fn seal(
    keys: &Keys,
    kind: Kind,
    context: &[u8],
    plaintext: &[u8],
    compression: Compression,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    seal_into(keys, kind, context, plaintext, compression, &mut out)?;
    Ok(out)
}

/// Seal `plaintext` and append the envelope to `out`, with a fresh random nonce.
/// `context` is extra associated data that [`open`] must be given again.
pub fn seal_into(
    keys: &Keys,
    kind: Kind,
    context: &[u8],
    plaintext: &[u8],
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<Sealed> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    seal_with_nonce(keys, kind, context, plaintext, compression, nonce, out)
}

/// Seal with a given nonce. Only for golden vectors: reusing a nonce with different
/// plaintext under one master key breaks confidentiality. Everything else calls
/// [`seal_into`].
pub fn seal_with_nonce(
    keys: &Keys,
    kind: Kind,
    context: &[u8],
    plaintext: &[u8],
    compression: Compression,
    nonce: [u8; NONCE_LEN],
    out: &mut Vec<u8>,
) -> Result<Sealed> {
    let what = kind.what();
    if plaintext.len() > MAX_OBJECT_LEN {
        return Err(Error::TooLarge {
            what,
            len: plaintext.len() as u64,
            max: MAX_OBJECT_LEN as u64,
        });
    }
    let start = out.len();
    out.push(kind as u8);
    out.extend_from_slice(&nonce);
    let body = out.len();

    let mut compressed = false;
    if let Compression::Zstd(level) = compression {
        out.reserve(zstd::zstd_safe::compress_bound(plaintext.len()) + INNER_TRAILER_LEN + TAG_LEN);
        let n = COMPRESSOR.with(|c| -> Result<usize> {
            let mut slot = c.borrow_mut();
            if slot.as_ref().map(|(l, _)| *l) != Some(level) {
                let comp = zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::invalid(what, format!("zstd level {level}: {e}")))?;
                *slot = Some((level, comp));
            }
            let (_, comp) = slot.as_mut().expect("set just above");
            let mut cur = std::io::Cursor::new(&mut *out);
            cur.set_position(body as u64);
            comp.compress_to_buffer(plaintext, &mut cur)
                .map_err(|e| Error::invalid(what, format!("zstd: {e}")))
        })?;
        if n < plaintext.len() {
            compressed = true;
        } else {
            out.truncate(body);
        }
    }
    if !compressed {
        out.extend_from_slice(plaintext);
    }
    out.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
    out.push(if compressed { COMP_ZSTD } else { COMP_NONE });

    let cipher = blob_cipher(keys, &nonce);
    let tag = cipher
        .encrypt_inout_detached(
            &gcm_iv(&nonce),
            &aad(kind as u8, context),
            (&mut out[body..]).into(),
        )
        .map_err(|_| Error::invalid(what, "AES-GCM refused to encrypt"))?;
    out.extend_from_slice(&tag);
    Ok(Sealed {
        len: out.len() - start,
        compressed,
    })
}

/// The kind byte of an envelope, without opening it.
pub fn peek_kind(sealed: &[u8]) -> Result<Kind> {
    let b = *sealed
        .first()
        .ok_or_else(|| Error::corrupt(What::Envelope, "empty"))?;
    Kind::from_u8(b).ok_or_else(|| Error::corrupt(What::Envelope, format!("unknown kind {b}")))
}

/// Open an envelope of the expected `kind`: authenticate, decrypt, decompress.
/// Any damage is [`Error::Corrupt`]; a plaintext longer than `max_len` is refused before
/// any memory is allocated for it.
pub fn open(
    keys: &Keys,
    kind: Kind,
    context: &[u8],
    sealed: &[u8],
    max_len: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_into(keys, kind, context, sealed, max_len, &mut out)?;
    Ok(out)
}

thread_local! {
    /// Decrypted (still compressed) payloads: reused, so that opening a blob allocates
    /// and faults in no fresh pages for it.
    static OPEN_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// [`open`] into `out` (cleared first), whose allocation a caller may reuse.
pub fn open_into(
    keys: &Keys,
    kind: Kind,
    context: &[u8],
    sealed: &[u8],
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    let what = kind.what();
    if sealed.len() < OVERHEAD {
        return Err(Error::corrupt(
            what,
            format!("truncated envelope: {} bytes", sealed.len()),
        ));
    }
    let found = sealed[0];
    if found != kind as u8 {
        return Err(Error::corrupt(
            what,
            format!("envelope kind {found}, expected {}", kind as u8),
        ));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[1..HEADER_LEN]);
    let (ct, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - HEADER_LEN - TAG_LEN);
    // A compressed payload is never larger than its plaintext (else it is stored raw).
    if ct.len() - INNER_TRAILER_LEN > max_len {
        return Err(Error::TooLarge {
            what,
            len: (ct.len() - INNER_TRAILER_LEN) as u64,
            max: max_len as u64,
        });
    }
    let tag = Tag::try_from(tag).map_err(|_| Error::corrupt(what, "bad tag length"))?;
    OPEN_BUF.with(|b| {
        let mut buf = b.borrow_mut();
        buf.clear();
        buf.resize(ct.len(), 0);
        let inout = InOutBuf::new(ct, &mut buf)
            .map_err(|_| Error::corrupt(what, "buffer length mismatch"))?;
        blob_cipher(keys, &nonce)
            .decrypt_inout_detached(&gcm_iv(&nonce), &aad(kind as u8, context), inout, &tag)
            .map_err(|_| Error::corrupt(what, "authentication failed (damaged or tampered)"))?;
        let r = decode_payload(what, &buf, max_len, out);
        // Keep a typical chunk's worth, not the largest ever seen, per thread.
        if buf.capacity() > OPEN_BUF_KEEP {
            *buf = Vec::new();
        }
        r
    })
}

const OPEN_BUF_KEEP: usize = 4 << 20;

/// The payload decoder on bytes that were never authenticated: for fuzzing only. In real
/// use the payload sits behind the GCM tag, so only the key's holder can make
/// [`decode_payload`] see chosen bytes; the fuzz target checks it anyway (a lying raw
/// length, an unknown compression, a bad zstd frame).
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn decode_payload_unauthenticated(buf: &[u8], max_len: usize) -> Result<Vec<u8>> {
    if buf.len() < INNER_TRAILER_LEN {
        return Err(Error::corrupt(
            What::Envelope,
            "payload shorter than its trailer",
        ));
    }
    let mut out = Vec::new();
    decode_payload(What::Envelope, buf, max_len, &mut out)?;
    Ok(out)
}

/// The decrypted payload (data, raw length, compression) into `out`.
fn decode_payload(what: What, buf: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<()> {
    let payload_len = buf.len() - INNER_TRAILER_LEN;
    let raw_len = read_u32(&buf[payload_len..payload_len + 4]) as usize;
    let comp = buf[payload_len + 4];
    match comp {
        COMP_NONE => {
            if raw_len != payload_len {
                return Err(Error::corrupt(
                    what,
                    format!("length {raw_len} recorded, {payload_len} stored"),
                ));
            }
            out.extend_from_slice(&buf[..payload_len]);
            Ok(())
        }
        COMP_ZSTD => {
            if raw_len > max_len {
                return Err(Error::TooLarge {
                    what,
                    len: raw_len as u64,
                    max: max_len as u64,
                });
            }
            out.reserve(raw_len);
            let n = DECOMPRESSOR.with(|d| -> Result<usize> {
                let mut slot = d.borrow_mut();
                if slot.is_none() {
                    *slot = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))?,
                    );
                }
                let dec = slot.as_mut().expect("set just above");
                dec.decompress_to_buffer(&buf[..payload_len], out)
                    .map_err(|e| Error::corrupt(what, format!("zstd: {e}")))
            })?;
            if n != raw_len {
                return Err(Error::corrupt(
                    what,
                    format!("decompressed to {n} bytes, {raw_len} recorded"),
                ));
            }
            Ok(())
        }
        other => Err(Error::Unsupported {
            what,
            feature: format!("compression #{other}"),
        }),
    }
}
