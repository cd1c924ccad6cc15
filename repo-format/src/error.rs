//! The one error type of `arca-format`.
//!
//! Policy: every decoder takes untrusted bytes and answers with one of these variants,
//! never a panic. The variants are chosen so that a caller can tell the three things an
//! operator must tell apart at 3 a.m.: the password is wrong ([`Error::WrongPassword`]),
//! stored bytes are damaged ([`Error::Corrupt`]), or the repository was written by a newer
//! Arca ([`Error::UnsupportedVersion`], [`Error::Unsupported`]). Nothing here is retryable:
//! the crate does no I/O, so the same input always gives the same answer.

use std::fmt;

/// What kind of stored object an error is about; used in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum What {
    /// The repository config object.
    Config,
    /// A key file under `keys/`.
    KeyFile,
    /// A sealed blob envelope.
    Envelope,
    /// A pack file (its footer).
    Pack,
    /// The trailer of a pack file.
    PackTrailer,
    /// An index file under `index/`.
    Index,
    /// A tree blob.
    Tree,
    /// An extent-list blob of a volume snapshot.
    ExtentList,
    /// A snapshot manifest under `snapshots/`.
    Snapshot,
    /// A writer-session object under `sessions/`.
    Session,
    /// The maintenance lease.
    Lease,
    /// An identifier written as text.
    Id,
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            What::Config => "repository config",
            What::KeyFile => "key file",
            What::Envelope => "blob envelope",
            What::Pack => "pack file",
            What::PackTrailer => "pack trailer",
            What::Index => "index file",
            What::Tree => "tree blob",
            What::ExtentList => "extent list",
            What::Snapshot => "snapshot",
            What::Session => "writer session",
            What::Lease => "maintenance lease",
            What::Id => "identifier",
        })
    }
}

/// Errors of encoding and decoding the repository format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The password does not unlock this key file. Nothing is damaged.
    #[error("wrong password: it does not open this repository's key")]
    WrongPassword,

    /// Stored bytes fail their checksum or authentication, or do not parse.
    #[error("{what} is corrupt: {reason}")]
    Corrupt {
        /// Which kind of object.
        what: What,
        /// What exactly is wrong, for the operator.
        reason: String,
    },

    /// The object was written by a newer (or unknown) format version.
    #[error(
        "{what} has format version {found}, this Arca reads up to version {supported}; upgrade Arca"
    )]
    UnsupportedVersion {
        /// Which kind of object.
        what: What,
        /// Version found in the object.
        found: u32,
        /// Highest version this build understands.
        supported: u32,
    },

    /// A well-formed object asks for an algorithm or feature this build does not have.
    #[error("{what} requires {feature}, which this Arca does not support; upgrade Arca")]
    Unsupported {
        /// Which kind of object.
        what: What,
        /// The algorithm or feature named by the object.
        feature: String,
    },

    /// A value is too large for the format (on encode) or for a safe decode.
    #[error("{what} is too large: {len} bytes, at most {max} allowed")]
    TooLarge {
        /// Which kind of object.
        what: What,
        /// The size found.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The caller passed something the format cannot represent.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which kind of object.
        what: What,
        /// Why it cannot be encoded.
        reason: String,
    },

    /// The operating system could not supply random bytes for a nonce, salt or key.
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Corrupt`].
    pub(crate) fn corrupt(what: What, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub(crate) fn invalid(what: What, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// True when the stored bytes are damaged (as opposed to a wrong password or a newer
    /// format): the caller should report the object and go on with the others.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// Fill `buf` with random bytes from the operating system.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}
