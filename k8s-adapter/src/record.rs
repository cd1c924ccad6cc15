//! The stored form of a backup (and of a restore's record) inside the location's resource
//! repository: one repository snapshot per backup, whose tree is
//!
//! ```text
//! backup.json                      the Backup resource, with its final status
//! items.json                       every item in backup order (group, version, resource,
//!                                  kind, namespace, name, path)
//! results.json                     warnings and errors, Velero's shape
//! log.txt                          the backup's log
//! resources/<resource.group>/<version>/cluster/<name>.json
//! resources/<resource.group>/<version>/namespaces/<namespace>/<name>.json
//! ```
//!
//! and whose labels name it (`arca.dev/backup-name`, ...). See `spec/KUBERNETES.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Snapshot tag of backups.
pub const BACKUP_TAG: &str = "arca-backup";
/// Snapshot tag of restore records.
pub const RESTORE_TAG: &str = "arca-restore";
/// Label: the backup's name.
pub const BACKUP_NAME_LABEL: &str = "arca.dev/backup-name";
/// Label: the UID of the backup a DeleteBackupRequest is for.
pub const BACKUP_UID_LABEL: &str = "arca.dev/backup-uid";
/// Label: the restore's name.
pub const RESTORE_NAME_LABEL: &str = "arca.dev/restore-name";
/// Label: the schedule that made the backup.
pub const SCHEDULE_NAME_LABEL: &str = "arca.dev/schedule-name";
/// Label: the backup's phase when stored.
pub const PHASE_LABEL: &str = "arca.dev/phase";
/// Label: the storage location a backup is in (its value through [`label_value`]).
pub const STORAGE_LOCATION_LABEL: &str = "arca.dev/storage-location";
/// Label: the namespace of the Backup resource.
pub const NAMESPACE_LABEL: &str = "arca.dev/namespace";
/// Annotation on a Backup that the sync created from a stored record (value: the
/// location). Its status is written just after the create (the status subresource drops
/// it from a create), and no controller may take it for a New backup in between.
pub const SYNCED_ANNOTATION: &str = "arca.dev/synced-from-location";

/// What a restore did with one item (`items.json` of a restore record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Created.
    Created,
    /// Existed, and was updated (or merged, for service accounts).
    Updated,
    /// Existed, identical to the backed-up version.
    Unchanged,
    /// Existed, differs, and was left as it is.
    Differs,
    /// Left out by a rule (a completed pod, a volume provisioned anew, ...).
    Skipped,
    /// Failed (see the errors).
    Failed,
}

/// One item of a restore, in its target namespace, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredItem {
    /// The item.
    #[serde(flatten)]
    pub item: ItemRef,
    /// What became of it.
    pub outcome: Outcome,
}

/// A name made fit for a label value, by Velero's rule (`label.GetValidName`,
/// pkg/label/label.go): up to 63 bytes it is kept; longer, its first 57 bytes and the
/// first 6 hex digits of the SHA-256 of the whole name. Kubernetes names are ASCII, so
/// the cut falls on a character boundary.
pub fn label_value(name: &str) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    let mut cut = 57;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &name[..cut], &hash[..6])
}

/// One backed-up item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRef {
    /// API group ("" for core).
    pub group: String,
    /// Version it was read at (the server's preferred).
    pub version: String,
    /// Plural resource name.
    pub resource: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ItemRef {
    /// `resource.group`.
    pub fn group_resource(&self) -> String {
        crate::discovery::group_resource(&self.group, &self.resource)
    }

    /// Where the item's JSON lives in the backup's tree.
    pub fn path(&self) -> String {
        let scope = match &self.namespace {
            Some(ns) => format!("namespaces/{ns}"),
            None => "cluster".into(),
        };
        format!(
            "resources/{}/{}/{scope}/{}.json",
            self.group_resource(),
            self.version,
            self.name
        )
    }

    /// `namespace/name` or `name`.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Messages by scope, Velero's shape: general, cluster-scoped items, and per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    /// About the operation itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arca: Vec<String>,
    /// About cluster-scoped items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// About namespaced items.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, Vec<String>>,
}

impl Messages {
    /// Add a message about an item (or the operation, when `namespace` is `None` and
    /// `cluster` is false).
    pub fn add(&mut self, namespace: Option<&str>, cluster: bool, msg: String) {
        match namespace {
            Some(ns) => self.namespaces.entry(ns.to_string()).or_default().push(msg),
            None if cluster => self.cluster.push(msg),
            None => self.arca.push(msg),
        }
    }

    /// How many.
    pub fn count(&self) -> usize {
        self.arca.len() + self.cluster.len() + self.namespaces.values().map(Vec::len).sum::<usize>()
    }
}

/// Warnings and errors of a backup or restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// Warnings.
    #[serde(default)]
    pub warnings: Messages,
    /// Errors.
    #[serde(default)]
    pub errors: Messages,
}

/// A log being written: timestamped lines, kept in memory and stored with the record.
#[derive(Clone, Debug, Default)]
pub struct Log {
    lines: Vec<String>,
}

impl Log {
    /// Add a line (also sent to tracing).
    pub fn line(&mut self, level: &str, msg: impl Into<String>) {
        let msg = msg.into();
        // Per-item problems are results, counted in the summary and listed by `describe`:
        // on stderr they would flood the terminal of a large restore (`-v` shows them).
        tracing::info!("{level}: {msg}");
        self.lines.push(format!(
            "{} {level:<7} {msg}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ));
    }

    /// The whole log.
    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_follow_velero() {
        // Velero's own vector (pkg/label/label_test.go).
        assert_eq!(
            label_value("this_is_a_very_long_label_value_that_will_be_rejected_by_Kubernetes"),
            "this_is_a_very_long_label_value_that_will_be_rejected_by_8d0722"
        );
        assert_eq!(label_value("short label value"), "short label value");
        let n = "x".repeat(63);
        assert_eq!(label_value(&n), n);
    }
}
