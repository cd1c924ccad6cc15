//! # arca-engine: Arca's repository engine
//!
//! A library that other tools link: it owns a repository in an object store (local disk,
//! S3, GCS, Azure, memory), and backs up and restores directory trees into and out of it
//! with content-defined chunking, keyed dedup, zstd and AES-256-GCM, as `arca-format`
//! encodes them. Many processes on many hosts may write into one repository at once.
//!
//! ```no_run
//! # async fn demo() -> arca_engine::Result<()> {
//! use arca_engine::*;
//! let store = open_store("/srv/backups/repo", &StoreOptions::default())?;
//! let repo = Repository::open(store, b"password").await?;
//! let (idx, _) = repo.indexed(Some(std::path::Path::new("/var/cache/arca"))).await?;
//! let report = idx
//!     .backup(BackupOptions::new(vec!["/home".into()]), Default::default())
//!     .await?;
//! println!("snapshot {}", report.id);
//! # Ok(()) }
//! ```

mod backup;
mod beneath;
mod cache;
mod cache_records;
mod check;
mod chunker;
mod clock;
mod direct;
mod error;
mod forget;
mod fsmeta;
mod indexed;
mod inspect;
mod lease;
mod maintenance;
mod pause;
mod repair;
mod repo;
mod restore;
mod session;
mod snapshots;
pub mod store;
mod usage;
mod volume;
mod writer;

pub use backup::{BackupOptions, BackupProgress, BackupReport, ItemProblem, Parent};
pub use cache::{BlobLocation, SyncStats};
pub use check::{CheckProgress, CheckReport, Missing, PackDamage, ReadData};
pub use chunker::Chunker;
pub use clock::{CLOCK_SKEW, Clock, ManualClock, SystemClock};
pub use error::{Error, Result, StoreErrorKind};
pub use forget::{Decision, GroupBy, KeepPolicy, apply_policy, parse_duration};
pub use indexed::Indexed;
pub use inspect::{Change, Difference, Entry, Stats};
pub use maintenance::{
    INDEX_FILE_ENTRIES, MaintenanceOptions, MaintenanceProgress, MaintenanceReport,
    SAFE_CLEANUP_MARGIN, SAFE_SAFETY_MARGIN,
};
pub use pause::{Pause, PausePoints};
pub use repair::{RepairIndexReport, RepairedSnapshot};
pub use repo::{Identity, InitOptions, KDF_BUDGET_DEFAULT, KeyInfo, RepoStatus, Repository};
pub use restore::{Existing, RestoreOptions, RestoreProgress, RestoreReport};
pub use session::{
    HEARTBEAT_INTERVAL, SESSION_LAPSE, SESSION_TIMEOUT, SessionGuard, SessionLiveness,
};
pub use snapshots::{SnapshotFilter, SnapshotList};
pub use store::{
    Backend, Condition, ObjectInfo, Store, StoreOptions, Version, WriteMode, open_store,
};
pub use volume::{
    VOLUME_CHUNK_DEFAULT, VolumeBackupOptions, VolumeRestoreOptions, VolumeRestoreReport,
};
pub use writer::{WriteStats, Writer};

/// Internals opened for the benchmarks (`arca-benches`); not a stable API.
#[doc(hidden)]
pub mod bench {
    use arca_format::{BlobId, IndexFile, IndexId, RepoId};

    use crate::{BlobLocation, Result};

    /// The local index cache (rocksdb), as backups use it for dedup lookups.
    #[derive(Debug)]
    pub struct Index(crate::cache::IndexCache);

    impl Index {
        /// A throw-away cache, removed when dropped.
        pub fn temporary(repo: RepoId) -> Result<Self> {
            crate::cache::IndexCache::open(None, repo).map(Index)
        }

        /// Add an index file's entries.
        pub fn ingest(&self, id: IndexId, file: &IndexFile) -> Result<()> {
            self.0.ingest(id, file)
        }

        /// Where a blob is, if known (one lookup on its own).
        pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
            self.0.lookup(id)
        }

        /// Where each blob is, looked up in one session as a backup's reader or a
        /// restore's planner does for a batch.
        pub fn lookup_batch(&self, ids: &[BlobId]) -> Result<Vec<Option<BlobLocation>>> {
            let mut l = self.0.session();
            ids.iter().map(|id| self.0.lookup_in(&mut l, id)).collect()
        }
    }
}
