//! Volume data in Kubernetes: CSI snapshot data movement, as Velero's (seed 003, and
//! Velero's pkg/backup/actions/csi, pkg/exposer, pkg/controller/data_upload_controller.go
//! and data_download_controller.go).
//!
//! - [`csi`]: the server's half of a backup with `snapshotMoveData`: a VolumeSnapshot and a
//!   DataUpload per claim, waited on, results kept in the backup's record; and of a
//!   restore: a DataDownload per moved claim, waited on.
//! - [`expose`]: what makes a snapshot readable on a node (a claim from it and a pod that
//!   mounts it, in the install namespace) and a new volume writable, and the rebinding of
//!   a written volume to the restored claim.
//! - [`podvolume`]: file-system backup of pod volumes (Velero's pkg/podvolume): which
//!   volumes of a pod, a PodVolumeBackup each, read live by the node agent of the pod's
//!   node; on restore a `restore-wait` init container and a PodVolumeRestore each.
//! - [`agent`]: the node agent's controllers: the decisions are pure functions
//!   ([`agent::step`], [`agent::pod_volume_step`]); the reconcilers carry them out with
//!   `arca-movers`.

pub mod agent;
pub mod csi;
pub mod expose;
pub mod podvolume;

use std::collections::BTreeMap;

use kube::api::ApiResource;
use serde::{Deserialize, Serialize};

/// The record file listing the backup's moved volumes (`volumes.json`).
pub const VOLUMES_FILE: &str = "volumes.json";
/// Label on DataUploads, VolumeSnapshots and exposer objects: the backup's UID.
pub const BACKUP_UID: &str = crate::record::BACKUP_UID_LABEL;
/// Label: the backup's name.
pub const BACKUP_NAME: &str = crate::record::BACKUP_NAME_LABEL;
/// Label: the restore's UID.
pub const RESTORE_UID: &str = "arca.dev/restore-uid";
/// Label: the restore's name.
pub const RESTORE_NAME: &str = crate::record::RESTORE_NAME_LABEL;
/// Label: the UID of the claim whose data moves.
pub const PVC_UID: &str = "arca.dev/pvc-uid";
/// Label on the exposer's objects: the DataUpload or DataDownload they serve.
pub const EXPOSED_FOR: &str = "arca.dev/exposed-for";
/// Label on a restored claim's selector and on the volume written for it (Velero's
/// `velero.io/dynamic-pv-restore`): the volume binds to that claim and no other.
pub const DYNAMIC_PV_RESTORE: &str = "arca.dev/dynamic-pv-restore";
/// The data mover's name in DataUploads and DataDownloads.
pub const DATAMOVER: &str = "arca";

/// Phases of a DataUpload or DataDownload (Velero's, v2alpha1).
pub mod phase {
    /// Created, not yet taken.
    pub const NEW: &str = "New";
    /// A node agent took it and exposes the data.
    pub const ACCEPTED: &str = "Accepted";
    /// Exposed on a node, waiting for that node's agent.
    pub const PREPARED: &str = "Prepared";
    /// Data moving.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Cancel asked, the mover stopping.
    pub const CANCELING: &str = "Canceling";
    /// Canceled.
    pub const CANCELED: &str = "Canceled";
    /// Done.
    pub const COMPLETED: &str = "Completed";
    /// Failed.
    pub const FAILED: &str = "Failed";

    /// Whether a phase is final.
    pub fn terminal(p: &str) -> bool {
        matches!(p, CANCELED | COMPLETED | FAILED)
    }
}

/// VolumeSnapshot (`snapshot.storage.k8s.io/v1`).
pub fn volume_snapshot() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "VolumeSnapshot",
        "volumesnapshots",
    )
}

/// VolumeSnapshotContent.
pub fn volume_snapshot_content() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    )
}

/// VolumeSnapshotClass.
pub fn volume_snapshot_class() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
    )
}

fn ar(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// How a volume's data was backed up (Velero's volume info `backupMethod`).
pub const BY_DATA_MOVER: &str = "CSISnapshotDataMovement";
/// File-system backup of a pod volume.
pub const BY_POD_VOLUME_BACKUP: &str = "PodVolumeBackup";

/// One volume whose data a backup moved (or tried to), as kept in the backup's record:
/// a claim through a CSI snapshot and a DataUpload, or a pod's volume through a
/// PodVolumeBackup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MovedVolume {
    /// [`BY_DATA_MOVER`] (also when absent: records made before file-system backup) or
    /// [`BY_POD_VOLUME_BACKUP`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// The namespace in the backed-up cluster.
    pub namespace: String,
    /// The claim ("" for a pod volume that is not a claim, an emptyDir).
    #[serde(default)]
    pub pvc: String,
    /// The pod (file-system backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The volume's name in the pod (file-system backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_volume: Option<String>,
    /// The PodVolumeBackup (file-system backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_volume_backup: Option<String>,
    /// Its volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// Its storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// `Filesystem` or `Block`.
    pub volume_mode: String,
    /// The DataUpload ("" for file-system backup).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_upload: String,
    /// Its final phase.
    pub phase: String,
    /// The snapshot in the namespace's repository (Completed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes the volume held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Bytes new since the volume's previous snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_bytes: Option<i64>,
    /// The node that moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Started and finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
}

impl MovedVolume {
    /// Whether its data can be restored.
    pub fn restorable(&self) -> bool {
        self.phase == phase::COMPLETED && self.snapshot_id.is_some()
    }

    /// Whether a PodVolumeBackup took it (else a DataUpload).
    pub fn by_pod_volume_backup(&self) -> bool {
        self.method == BY_POD_VOLUME_BACKUP
    }

    /// What it is, for logs and descriptions: `claim ns/pvc` or `volume v of pod ns/p`.
    pub fn what(&self) -> String {
        match (&self.pod, &self.pod_volume) {
            (Some(p), Some(v)) if self.by_pod_volume_backup() => {
                format!("volume {v} of pod {}/{p}", self.namespace)
            }
            _ => format!("claim {}/{}", self.namespace, self.pvc),
        }
    }
}

/// A name of at most 63 characters made of `prefix` and a hash of `key`: the same key
/// always names the same object, so a server or node agent killed after creating it
/// finds it again instead of making a second one.
pub fn stable_name(prefix: &str, key: &str) -> String {
    let hash = sha_hex(key);
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(63 - 9);
    let p = p.trim_end_matches('-');
    format!("{p}-{}", &hash[..8])
}

fn sha_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Labels as a selector string (`k=v,k2=v2`).
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_names_fit_and_repeat() {
        let a = stable_name("backup-1-Data_Claim", "uid-1");
        assert_eq!(a, stable_name("backup-1-Data_Claim", "uid-1"));
        assert_ne!(a, stable_name("backup-1-Data_Claim", "uid-2"));
        assert!(a.starts_with("backup-1-data-claim-"), "{a}");
        let long = stable_name(&"x".repeat(100), "k");
        assert!(long.len() <= 63, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
