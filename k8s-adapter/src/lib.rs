//! `arca-k8s` will map Velero's model (Backup, Restore, Schedule, BackupStorageLocation,
//! BackupRepository, DataUpload, DataDownload, DeleteBackupRequest) onto repository
//! snapshots. It is the only crate that imports `kube` and `k8s-openapi`.
