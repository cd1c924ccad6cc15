//! `arca-k8s` maps Velero's model (Backup, Restore, Schedule, BackupStorageLocation,
//! BackupRepository, DataUpload, DataDownload, DeleteBackupRequest) onto repository
//! snapshots. It is the only crate that imports `kube` and `k8s-openapi`.
//!
//! A backup is one snapshot in the storage location's resource repository; its layout is
//! `spec/KUBERNETES.md`. Everything here runs from a client against the API server: the
//! CLI and the operator ([`server`]) call the same [`backup::run_backup`] and
//! [`restore::run_restore`].

pub mod backup;
pub mod backup_actions;
pub mod claim;
pub mod crd;
pub mod datamover;
pub mod discovery;
mod error;
pub mod filter;
pub mod hooks;
pub mod location;
pub mod manage;
pub mod record;
pub mod restore;
pub mod restore_actions;
pub mod schedule;
pub mod server;

pub use error::{Error, Result};

// Re-exported so that the frontends name the same versions without depending on them.
pub use {k8s_openapi, kube};
