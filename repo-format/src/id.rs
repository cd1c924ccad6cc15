//! Identifier newtypes.
//!
//! Two families, deliberately distinct types so they cannot be mixed up:
//! - [`BlobId`]: the content ID of a chunk or tree, a *keyed* BLAKE3 hash of its plaintext
//!   (see [`crate::keys::Keys::blob_id`]); nobody without the master key can compute it.
//! - object IDs ([`PackId`], [`IndexId`], [`SnapshotId`], [`KeyId`]): the plain BLAKE3 hash
//!   of an object's stored bytes, which is also its name in the store. Anybody can verify
//!   an object against its name without a key.
//!
//! Random IDs ([`RepoId`], [`SessionId`]) are 16 bytes from the operating system.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result, What};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parse from exactly `LEN` bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| Error::Invalid {
                    what: What::Id,
                    reason: format!(
                        "{} must be {} bytes, got {}",
                        stringify!($name),
                        $len,
                        bytes.len()
                    ),
                })?;
                Ok(Self(arr))
            }

            /// Lowercase hex, the form used in object names and on the command line.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, the short form shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| Error::Invalid {
                    what: What::Id,
                    reason: format!(
                        "{:?} is not a {}: expected {} hex digits",
                        s,
                        stringify!($name),
                        2 * $len
                    ),
                })?;
                Ok(Self(out))
            }
        }
    };
}

id_type!(
    /// Content ID of a blob: keyed BLAKE3-256 of its plaintext.
    BlobId,
    32
);
id_type!(
    /// Name of a pack file: BLAKE3-256 of its bytes.
    PackId,
    32
);
id_type!(
    /// Name of an index file: BLAKE3-256 of its bytes.
    IndexId,
    32
);
id_type!(
    /// Name of a snapshot manifest: BLAKE3-256 of its bytes.
    SnapshotId,
    32
);
id_type!(
    /// Name of a key file: BLAKE3-256 of its bytes.
    KeyId,
    32
);
id_type!(
    /// Random identity of a repository, fixed at init.
    RepoId,
    16
);
id_type!(
    /// Random identity of one writer session.
    SessionId,
    16
);

/// The object ID (plain BLAKE3-256) of stored bytes.
pub fn object_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

impl RepoId {
    /// A fresh random repository ID.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        crate::error::random_bytes(&mut b)?;
        Ok(Self(b))
    }
}

impl SessionId {
    /// A fresh random session ID.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        crate::error::random_bytes(&mut b)?;
        Ok(Self(b))
    }
}

/// A point in time: seconds since the Unix epoch (may be negative) and nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub seconds: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// Build from seconds and nanoseconds.
    pub const fn new(seconds: i64, nanos: u32) -> Self {
        Self { seconds, nanos }
    }

    /// The current time from the system clock.
    pub fn now() -> Self {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Self::new(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Self::new(-(d.as_secs() as i64), 0)
                } else {
                    Self::new(-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                }
            }
        }
    }

    /// Nanoseconds since the epoch, saturating outside ±292 years.
    pub fn as_nanos(&self) -> i128 {
        self.seconds as i128 * 1_000_000_000 + self.nanos as i128
    }
}
