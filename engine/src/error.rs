//! The one error type of `arca-engine`.
//!
//! Policy: an error names the thing it is about (a store location and object, a local path,
//! a snapshot) and says what to do when there is something to do. Store errors carry a kind
//! that tells a transient failure (already retried with backoff by the time it reaches a
//! caller) from a permanent one. Per-item problems during a backup or restore (an unreadable
//! file, a damaged blob) are not errors of this type: they are collected in the operation's
//! report, and the operation goes on.

use std::path::PathBuf;

/// What went wrong talking to the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The object does not exist.
    NotFound,
    /// A create-only put found the object already there.
    AlreadyExists,
    /// A conditional write or delete found the object changed or gone since it was read.
    Conflict,
    /// Credentials are missing or rejected.
    Unauthenticated,
    /// The credentials do not allow this operation.
    PermissionDenied,
    /// The store could not be reached or kept failing after retries.
    Unreachable,
    /// Anything else.
    Other,
}

/// Errors of the repository engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A format error: wrong password, corruption, unsupported version.
    #[error(transparent)]
    Format(#[from] arca_format::Error),

    /// An object-store operation failed.
    #[error("{op} {location}/{name} failed: {reason}")]
    Store {
        /// The operation ("read", "write", "list", "delete").
        op: &'static str,
        /// The repository location (URL or path).
        location: String,
        /// The object name or prefix.
        name: String,
        /// What kind of failure.
        kind: StoreErrorKind,
        /// The store's message.
        reason: String,
    },

    /// No repository at the location.
    #[error("no Arca repository at {location}: run `arca repo init` first, or check --repo")]
    NoRepository {
        /// The location.
        location: String,
    },

    /// `init` on a location that already holds objects.
    #[error("{location} already holds data ({found}); refusing to initialise a repository over it")]
    NotEmpty {
        /// The location.
        location: String,
        /// An object found there.
        found: String,
    },

    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The local index cache could not be used.
    #[error("local cache {path}: {reason}")]
    Cache {
        /// The cache directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A snapshot, path or key named by the user does not exist or is ambiguous.
    #[error("{0}")]
    NotFound(String),

    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),

    /// A blob the repository needs is missing from the index or the store.
    #[error("blob {id} is missing from the repository; run `arca repo check`")]
    MissingBlob {
        /// The blob.
        id: arca_format::BlobId,
    },

    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,

    /// A writer's session lapsed (it stalled past the session timeout, or its session
    /// object was removed): maintenance may have deleted data it relied on, so it stores
    /// nothing more.
    #[error(
        "this writer's session lapsed: {reason}. Maintenance may have presumed it dead and \
         removed data it relied on, so nothing more was stored (no snapshot, no index); \
         what it uploaded is reclaimed by maintenance. Run it again."
    )]
    SessionLapsed {
        /// Why.
        reason: String,
    },

    /// A maintainer lost its lease (it stalled past it, or another maintainer took it):
    /// it stops before it deletes anything more.
    #[error(
        "maintenance stopped: {reason}. Nothing more was deleted; what it did so far is \
         consistent. Run it again."
    )]
    LeaseLost {
        /// Why.
        reason: String,
    },

    /// This machine's clock disagrees with the store's by more than the skew allowance.
    #[error(
        "this machine's clock is {offset} the clock of the store at {location}; writers and \
         maintainers must agree with it within {allowed_secs} s, or maintenance could delete \
         data in use. Fix the clock (NTP) and run again."
    )]
    ClockSkew {
        /// The store.
        location: String,
        /// How far off, in words ("400 s ahead of").
        offset: String,
        /// The allowance.
        allowed_secs: i64,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for errors worth retrying later (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Store {
                kind: StoreErrorKind::Unreachable,
                ..
            }
        )
    }

    /// True when a conditional write or delete lost: the object changed or went away.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Store {
                kind: StoreErrorKind::Conflict,
                ..
            }
        )
    }

    /// True when a store object was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Store {
                kind: StoreErrorKind::NotFound,
                ..
            }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
