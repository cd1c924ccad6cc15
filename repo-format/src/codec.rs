//! Small helpers shared by the decoders.

use crate::error::{Error, Result, What};
use crate::id::{Timestamp, object_hash};
use crate::proto;

/// Bytes of the plain header (`magic` + `version`) of key files and the config.
pub(crate) const PLAIN_HEADER_LEN: usize = 12;
/// Bytes of the BLAKE3 checksum that closes key files and the config.
pub(crate) const CHECKSUM_LEN: usize = 32;

/// Validate `magic | version u32 | body | BLAKE3(magic..body)` and return the body.
///
/// The checksum is checked first, so that a flipped bit anywhere (in the version too) is
/// reported as corruption rather than as a version this build does not know.
pub(crate) fn checked_header<'a>(
    bytes: &'a [u8],
    what: What,
    magic: &[u8; 8],
    version: u32,
    max_len: usize,
) -> Result<&'a [u8]> {
    if bytes.len() > max_len {
        return Err(Error::TooLarge {
            what,
            len: bytes.len() as u64,
            max: max_len as u64,
        });
    }
    if bytes.len() < PLAIN_HEADER_LEN + CHECKSUM_LEN {
        return Err(Error::corrupt(
            what,
            format!("truncated: only {} bytes", bytes.len()),
        ));
    }
    let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if object_hash(content) != sum {
        return Err(Error::corrupt(what, "checksum mismatch"));
    }
    if &content[..8] != magic {
        return Err(Error::corrupt(
            what,
            "wrong magic bytes: not this kind of object",
        ));
    }
    let found = read_u32(&content[8..12]);
    if found != version {
        return Err(if found > version {
            Error::UnsupportedVersion {
                what,
                found,
                supported: version,
            }
        } else {
            Error::corrupt(what, format!("invalid version {found}"))
        });
    }
    Ok(&content[PLAIN_HEADER_LEN..])
}

/// Little-endian u32 from exactly 4 bytes (callers slice first).
pub(crate) fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn ts_to_proto(t: Timestamp) -> proto::Timestamp {
    proto::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

pub(crate) fn opt_ts_to_proto(t: Option<Timestamp>) -> Option<proto::Timestamp> {
    t.map(ts_to_proto)
}

/// An absent timestamp decodes as the epoch (protobuf's default).
pub(crate) fn ts_from_proto(what: What, t: Option<proto::Timestamp>) -> Result<Timestamp> {
    Ok(opt_ts_from_proto(what, t)?.unwrap_or_default())
}

pub(crate) fn opt_ts_from_proto(
    what: What,
    t: Option<proto::Timestamp>,
) -> Result<Option<Timestamp>> {
    match t {
        None => Ok(None),
        Some(p) if p.nanos < 1_000_000_000 => Ok(Some(Timestamp::new(p.seconds, p.nanos))),
        Some(p) => Err(Error::corrupt(
            what,
            format!("timestamp nanoseconds out of range: {}", p.nanos),
        )),
    }
}

/// A fixed-size ID field: exactly `N` bytes.
pub(crate) fn fixed<const N: usize>(what: What, field: &str, v: &[u8]) -> Result<[u8; N]> {
    v.try_into()
        .map_err(|_| Error::corrupt(what, format!("{field} is {} bytes, expected {N}", v.len())))
}

/// An optional fixed-size ID field: empty means absent.
pub(crate) fn opt_fixed<const N: usize>(
    what: What,
    field: &str,
    v: &[u8],
) -> Result<Option<[u8; N]>> {
    if v.is_empty() {
        Ok(None)
    } else {
        fixed(what, field, v).map(Some)
    }
}

/// Decode a protobuf message, mapping failures to corruption of `what`.
pub(crate) fn decode_proto<M: prost::Message + Default>(what: What, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::corrupt(what, format!("protobuf: {e}")))
}

/// Encode a protobuf message into a fresh vector.
pub(crate) fn encode_proto<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}
