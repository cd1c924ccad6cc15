//! The repository config, stored at `config`.
//!
//! ```text
//! +-------------+-----------+-------------+-----------------------+-------------+
//! | "ARCACONF" 8 | version 4 | repo_id 16  | envelope (RepoConfig) | BLAKE3 32   |
//! +-------------+-----------+-------------+-----------------------+-------------+
//! ```
//!
//! The version and repository ID are readable without a key, so that an old Arca refuses a
//! newer repository before asking for a password, and so that key files can be matched to
//! their repository. The body is sealed with the master key (with the repository ID as
//! associated data), so nobody without a key learns the chunker parameters. The trailing
//! checksum makes every damaged byte read as corruption.

use crate::codec::{
    PLAIN_HEADER_LEN, checked_header, decode_proto, encode_proto, fixed, ts_from_proto, ts_to_proto,
};
use crate::envelope::{self, Compression, Kind};
use crate::error::{Error, Result, What};
use crate::id::{RepoId, Timestamp, object_hash};
use crate::keys::Keys;
use crate::proto;

/// Magic bytes that open the config object.
pub const CONFIG_MAGIC: [u8; 8] = *b"ARCACONF";
/// The repository format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const MAX_CONFIG_LEN: usize = 1 << 20;

/// Chunker identifier: FastCDC 2020 with a keyed gear table.
pub(crate) const CHUNKER_FASTCDC_2020: u32 = 1;
/// Content-ID identifier: keyed BLAKE3-256 with per-type keys.
pub(crate) const CONTENT_ID_BLAKE3_KEYED: u32 = 1;
/// Encryption identifier: AES-256-GCM under per-envelope keys derived by keyed BLAKE3.
pub(crate) const ENCRYPTION_AES256GCM_DERIVED: u32 = 1;
const COMPRESSION_NONE: u32 = 0;
const COMPRESSION_ZSTD: u32 = 1;

/// Content-defined chunking parameters (FastCDC 2020; sizes in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Smallest chunk (except a file's last).
    pub min_size: u32,
    /// Target average chunk.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
    /// FastCDC normalization level, 0..=3.
    pub normalization: u32,
}

impl Default for ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB, normalization 1: see `spec/FORMAT.md`, "Chunking".
    fn default() -> Self {
        Self {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
            normalization: 1,
        }
    }
}

impl ChunkerParams {
    /// Check the bounds FastCDC 2020 accepts.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let even = |v: u32| v.is_multiple_of(2);
        if !(64..=1 << 20).contains(&self.min_size)
            || !(256..=4 << 20).contains(&self.avg_size)
            || !(1024..=16 << 20).contains(&self.max_size)
        {
            return Err(format!(
                "chunk sizes {}/{}/{} outside FastCDC's bounds (min 64..1 MiB, avg 256..4 MiB, max 1 KiB..16 MiB)",
                self.min_size, self.avg_size, self.max_size
            ));
        }
        if !(self.min_size <= self.avg_size && self.avg_size <= self.max_size) {
            return Err("chunk sizes must satisfy min <= avg <= max".into());
        }
        if !(even(self.min_size) && even(self.avg_size) && even(self.max_size)) {
            return Err("chunk sizes must be even".into());
        }
        if self.normalization > 3 {
            return Err(format!("normalization level {} > 3", self.normalization));
        }
        Ok(())
    }
}

/// The decoded repository config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    /// Repository identity.
    pub repo_id: RepoId,
    /// When the repository was created.
    pub created: Timestamp,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Compression of data blobs (writers may override per run).
    pub compression: Compression,
    /// Target size of data packs in bytes.
    pub data_pack_size: u32,
    /// Target size of metadata packs in bytes.
    pub tree_pack_size: u32,
}

impl RepoConfig {
    /// A config with the default parameters.
    pub fn new(repo_id: RepoId, created: Timestamp) -> Self {
        Self {
            repo_id,
            created,
            chunker: ChunkerParams::default(),
            compression: Compression::Zstd(3),
            data_pack_size: 16 << 20,
            tree_pack_size: 4 << 20,
        }
    }

    fn validate(&self, err: impl Fn(String) -> Error) -> Result<()> {
        self.chunker.validate().map_err(&err)?;
        if let Compression::Zstd(l) = self.compression
            && !(-7..=22).contains(&l)
        {
            return Err(err(format!("zstd level {l} outside -7..=22")));
        }
        for (name, v) in [("data", self.data_pack_size), ("tree", self.tree_pack_size)] {
            if !(1 << 20..=1 << 30).contains(&v) {
                return Err(err(format!("{name} pack size {v} outside 1 MiB..1 GiB")));
            }
        }
        Ok(())
    }

    /// Encode to the stored bytes, sealing the body with a fresh nonce.
    pub fn encode(&self, keys: &Keys) -> Result<Vec<u8>> {
        let mut n = [0u8; envelope::NONCE_LEN];
        crate::error::random_bytes(&mut n)?;
        self.encode_with_nonce(keys, n)
    }

    /// [`RepoConfig::encode`] with a given nonce. Only for golden vectors.
    pub fn encode_with_nonce(
        &self,
        keys: &Keys,
        nonce: [u8; envelope::NONCE_LEN],
    ) -> Result<Vec<u8>> {
        self.validate(|r| Error::invalid(What::Config, r))?;
        let (compression, compression_level) = match self.compression {
            Compression::None => (COMPRESSION_NONE, 0),
            Compression::Zstd(l) => (COMPRESSION_ZSTD, l),
        };
        let body = encode_proto(&proto::RepoConfig {
            repo_id: self.repo_id.0.to_vec(),
            created: Some(ts_to_proto(self.created)),
            chunker: Some(proto::Chunker {
                algorithm: CHUNKER_FASTCDC_2020,
                min_size: self.chunker.min_size,
                avg_size: self.chunker.avg_size,
                max_size: self.chunker.max_size,
                normalization: self.chunker.normalization,
            }),
            content_id: CONTENT_ID_BLAKE3_KEYED,
            compression,
            compression_level,
            encryption: ENCRYPTION_AES256GCM_DERIVED,
            data_pack_size: self.data_pack_size,
            tree_pack_size: self.tree_pack_size,
            required_features: Vec::new(),
        });
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&CONFIG_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(self.repo_id.as_bytes());
        envelope::seal_with_nonce(
            keys,
            Kind::Config,
            self.repo_id.as_bytes(),
            &body,
            Compression::None,
            nonce,
            &mut out,
        )?;
        let sum = object_hash(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Read the format version and repository ID without a key. A newer format is
    /// [`Error::UnsupportedVersion`]; damage is [`Error::Corrupt`].
    pub fn peek(bytes: &[u8]) -> Result<RepoId> {
        let body = checked_header(
            bytes,
            What::Config,
            &CONFIG_MAGIC,
            FORMAT_VERSION,
            MAX_CONFIG_LEN,
        )?;
        if body.len() < RepoId::LEN {
            return Err(Error::corrupt(What::Config, "no repository id"));
        }
        Ok(RepoId(fixed(
            What::Config,
            "repository id",
            &body[..RepoId::LEN],
        )?))
    }

    /// Decode the stored bytes with the repository's keys.
    pub fn decode(keys: &Keys, bytes: &[u8]) -> Result<Self> {
        let w = What::Config;
        let repo_id = Self::peek(bytes)?;
        let sealed =
            &bytes[PLAIN_HEADER_LEN + RepoId::LEN..bytes.len() - crate::codec::CHECKSUM_LEN];
        let plain = envelope::open(
            keys,
            Kind::Config,
            repo_id.as_bytes(),
            sealed,
            MAX_CONFIG_LEN,
        )?;
        let p: proto::RepoConfig = decode_proto(w, &plain)?;
        if p.repo_id != repo_id.0 {
            return Err(Error::corrupt(
                w,
                "repository id in the body differs from the header",
            ));
        }
        if let Some(f) = p.required_features.first() {
            return Err(Error::Unsupported {
                what: w,
                feature: format!("feature {f:?}"),
            });
        }
        let unsupported = |name: &str, v: u32| Error::Unsupported {
            what: w,
            feature: format!("{name} #{v}"),
        };
        if p.content_id != CONTENT_ID_BLAKE3_KEYED {
            return Err(unsupported("content-ID algorithm", p.content_id));
        }
        if p.encryption != ENCRYPTION_AES256GCM_DERIVED {
            return Err(unsupported("encryption", p.encryption));
        }
        let c = p
            .chunker
            .ok_or_else(|| Error::corrupt(w, "no chunker parameters"))?;
        if c.algorithm != CHUNKER_FASTCDC_2020 {
            return Err(unsupported("chunker", c.algorithm));
        }
        let compression = match p.compression {
            COMPRESSION_NONE => Compression::None,
            COMPRESSION_ZSTD => Compression::Zstd(p.compression_level),
            other => return Err(unsupported("compression", other)),
        };
        let cfg = RepoConfig {
            repo_id,
            created: ts_from_proto(w, p.created)?,
            chunker: ChunkerParams {
                min_size: c.min_size,
                avg_size: c.avg_size,
                max_size: c.max_size,
                normalization: c.normalization,
            },
            compression,
            data_pack_size: p.data_pack_size,
            tree_pack_size: p.tree_pack_size,
        };
        cfg.validate(|r| Error::corrupt(w, r))?;
        Ok(cfg)
    }
}
