//! The one error type of `arca-k8s`.
//!
//! Policy: an error that stops an operation names the object (backup, restore, storage
//! location) and what to do. Per-item problems during a backup or restore are not errors
//! of this type: they go into the operation's results, and the operation goes on.

/// Errors of the Kubernetes adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused or could not be reached. Shown as the server's message (or
    /// the client's chain of causes), not the client's debug dump of the status.
    #[error("{what}: {}", kube_detail(error))]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        error: Box<kube::Error>,
    },

    /// The repository failed.
    #[error(transparent)]
    Engine(#[from] arca_engine::Error),

    /// A spec that cannot be carried out as written (Velero's FailedValidation).
    #[error("{0}")]
    Invalid(String),

    /// Another run took over the Backup or Restore this run worked on (a new leader, or
    /// the object made again): this run stops without writing.
    #[error("{0}")]
    Superseded(String),

    /// A named object does not exist.
    #[error("{0}")]
    NotFound(String),

    /// Stored JSON did not parse.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The API server's own message, or the client error and its causes on one line.
fn kube_detail(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return s.message.clone();
    }
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.contains(&m) {
            out = format!("{out}: {m}");
        }
        cur = c.source();
    }
    out
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn kube(what: impl Into<String>, e: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            error: Box::new(e),
        }
    }

    /// True when the API server said the object exists already.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { error, .. } if matches!(**error, kube::Error::Api(ref s) if s.code == 409))
    }

    /// True when the API server said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube { error, .. } if matches!(**error, kube::Error::Api(ref s) if s.code == 404))
    }
}
