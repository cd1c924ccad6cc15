//! The custom resources, group `arca.dev`, version `v1`, with Velero's field names: a
//! Velero manifest converts by changing its `apiVersion` (`velero.io/v1` and
//! `velero.io/v2alpha1` become `arca.dev/v1`).
//!
//! Every spec and status field is optional on the wire, as in Velero, so that partial
//! manifests parse; defaults are applied where they are used.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "arca.dev";
/// The API version.
pub const VERSION: &str = "v1";

/// Labels and annotations to put on created objects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectMetaTemplate {
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A Backup: what to back up and where.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    shortname = "bk"
)]
#[kube(printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#)]
#[kube(printcolumn = r#"{"name":"Errors","type":"integer","jsonPath":".status.errors"}"#)]
#[kube(printcolumn = r#"{"name":"Warnings","type":"integer","jsonPath":".status.warnings"}"#)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Labels for the backup's objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetaTemplate>,
    /// Namespaces to include (globs; empty or `*`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_namespaces: Option<Vec<String>>,
    /// Namespaces to exclude (globs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_namespaces: Option<Vec<String>>,
    /// Resources to include (`resource.group`, short names, `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_resources: Option<Vec<String>>,
    /// Resources to exclude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_resources: Option<Vec<String>>,
    /// New-style filter: cluster-scoped resources to include.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_cluster_scoped_resources: Option<Vec<String>>,
    /// New-style filter: cluster-scoped resources to exclude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_cluster_scoped_resources: Option<Vec<String>>,
    /// New-style filter: namespaced resources to include.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_namespace_scoped_resources: Option<Vec<String>>,
    /// New-style filter: namespaced resources to exclude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_namespace_scoped_resources: Option<Vec<String>>,
    /// Only items matching this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Items matching any of these selectors (not together with `labelSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_label_selectors: Option<Vec<LabelSelector>>,
    /// Take volume snapshots (unset: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_volumes: Option<bool>,
    /// How long the backup is kept, e.g. `720h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Cluster-scoped resources: true, false, or unset (only when all namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_cluster_resources: Option<bool>,
    /// The BackupStorageLocation to use (default: the default location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_location: Option<String>,
    /// Volume snapshot locations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_locations: Option<Vec<String>>,
    /// Back up pod volumes with the file-system mover by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_volumes_to_fs_backup: Option<bool>,
    /// Items to back up first, per resource: `ns1/pod1,ns1/pod2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_resources: Option<BTreeMap<String, String>>,
    /// Stop it (`arca backup cancel`): the server ends it in phase Canceled, storing
    /// nothing (Arca's; Velero has no such field, issue 2098).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Timeout of CSI snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi_snapshot_timeout: Option<String>,
    /// Timeout of asynchronous item operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_operation_timeout: Option<String>,
    /// Move snapshot data into the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_move_data: Option<bool>,
    /// The data mover (empty or `velero`/`arca`: built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datamover: Option<String>,
    /// Uploader settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_config: Option<UploaderConfig>,
    /// Commands run in the pods' containers before and after their volumes are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<BackupHooks>,
}

impl BackupSpec {
    /// Its hook entries (none when unset).
    pub fn hook_specs(&self) -> Vec<BackupResourceHookSpec> {
        self.hooks
            .as_ref()
            .and_then(|h| h.resources.clone())
            .unwrap_or_default()
    }
}

impl RestoreSpec {
    /// Its hook entries (none when unset).
    pub fn hook_specs(&self) -> Vec<RestoreResourceHookSpec> {
        self.hooks
            .as_ref()
            .and_then(|h| h.resources.clone())
            .unwrap_or_default()
    }
}

/// A backup's hooks (Velero's `spec.hooks`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupHooks {
    /// Hooks and the pods they apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<BackupResourceHookSpec>>,
}

/// Hooks for the pods a selection matches (only pods run hooks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupResourceHookSpec {
    /// Its name, shown in results and logs.
    pub name: String,
    /// The pods they apply to.
    #[serde(flatten)]
    pub selector: HookSelector,
    /// Before the pod's volumes are snapshotted or backed up, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<Vec<BackupResourceHook>>,
    /// After its volumes are snapshotted and backed up, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<Vec<BackupResourceHook>>,
}

/// Which pods a hook entry applies to (Velero's ResourceHookSelector fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookSelector {
    /// Namespaces (globs; empty or `*`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_namespaces: Option<Vec<String>>,
    /// Namespaces left out (globs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_namespaces: Option<Vec<String>>,
    /// Resources (empty, `*` or `pods`: pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_resources: Option<Vec<String>>,
    /// Resources left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_resources: Option<Vec<String>>,
    /// Only pods with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// One backup hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupResourceHook {
    /// A command run in a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHook>,
}

/// A command run in a pod's container through `pods/exec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecHook {
    /// The container (default: the pod's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command and its arguments (no shell unless it names one).
    pub command: Vec<String>,
    /// `Fail` (the backup is PartiallyFailed; a pre hook's pod is not backed up) or
    /// `Continue` (a warning; the default, as Velero's code behaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// How long the command may run (Go duration; default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Hooks run and failed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// Hooks attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_attempted: Option<i64>,
    /// Hooks that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_failed: Option<i64>,
}

/// A restore's hooks (Velero's `spec.hooks`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreHooks {
    /// Hooks and the pods they apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<RestoreResourceHookSpec>>,
}

/// Hooks for the restored pods a selection matches (namespaces after mapping).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreResourceHookSpec {
    /// Its name, shown in results and logs.
    pub name: String,
    /// The pods they apply to.
    #[serde(flatten)]
    pub selector: HookSelector,
    /// Init containers added to the pod, and commands run once it runs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hooks: Option<Vec<RestoreResourceHook>>,
}

/// One restore hook: init containers or a command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreResourceHook {
    /// A command run in a container of the restored pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecRestoreHook>,
    /// Init containers added to the restored pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitRestoreHook>,
}

/// A command run in a restored pod's container once it is running (or ready).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecRestoreHook {
    /// The container (default: the pod's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// `Fail` (an error; the pod's later hooks are not run) or `Continue` (a warning;
    /// the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    /// How long the command may run (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_timeout: Option<String>,
    /// How long to wait for the container (default: the restore's itemOperationTimeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<String>,
    /// Wait for the container to be ready, not merely running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_ready: Option<bool>,
}

/// Init containers added to a restored pod, after the restore-wait container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitRestoreHook {
    /// Containers (as in a pod spec; each needs a name, an image and a command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "containers_schema")]
    pub init_containers: Option<Vec<serde_json::Value>>,
    /// Accepted for Velero's manifests; not used (as in Velero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

fn containers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// Uploader and downloader settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploaderConfig {
    /// Files uploaded at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_files_upload: Option<i64>,
    /// Write sparse files on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_sparse_files: Option<bool>,
    /// Files downloaded at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_files_download: Option<i64>,
}

/// Items done of items in all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupProgress {
    /// Items to back up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_items: Option<i64>,
    /// Items backed up so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_backed_up: Option<i64>,
}

/// Status of a Backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Format version of the stored backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_version: Option<String>,
    /// When the backup expires (start + ttl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// New, Queued, FailedValidation, InProgress, Finalizing, Completed, PartiallyFailed,
    /// Failed, Canceled, Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Queued: its place among the backups waiting for a slot (1: next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i64>,
    /// Why validation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_errors: Option<Vec<String>>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Volume snapshots attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshots_attempted: Option<i64>,
    /// Volume snapshots completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshots_completed: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<i64>,
    /// Errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<i64>,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackupProgress>,
    /// The repository snapshot holding the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Data movements attempted / completed / failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_item_operations_attempted: Option<i64>,
    /// Completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_item_operations_completed: Option<i64>,
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_item_operations_failed: Option<i64>,
    /// Hooks run and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_status: Option<HookStatus>,
}

/// Which resources' status to restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatusSpec {
    /// Resources whose status is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_resources: Option<Vec<String>>,
    /// Resources whose status is not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_resources: Option<Vec<String>>,
}

/// A Restore: which backup, what, and how.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    shortname = "rs"
)]
#[kube(printcolumn = r#"{"name":"Backup","type":"string","jsonPath":".spec.backupName"}"#)]
#[kube(printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The backup to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// Or the latest successful backup of this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_name: Option<String>,
    /// Namespaces to include (globs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_namespaces: Option<Vec<String>>,
    /// Namespaces to exclude (globs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_namespaces: Option<Vec<String>>,
    /// Resources to include.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_resources: Option<Vec<String>>,
    /// Resources to exclude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_resources: Option<Vec<String>>,
    /// Source namespace → target namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_mapping: Option<BTreeMap<String, String>>,
    /// Only items matching this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Items matching any of these selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_label_selectors: Option<Vec<LabelSelector>>,
    /// Restore persistent volumes (unset: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_p_vs: Option<bool>,
    /// Status restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_status: Option<RestoreStatusSpec>,
    /// Keep the backup's node ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_node_ports: Option<bool>,
    /// Cluster-scoped resources: true, false, or unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_cluster_resources: Option<bool>,
    /// `none` (default) or `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_resource_policy: Option<String>,
    /// Timeout of asynchronous item operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_operation_timeout: Option<String>,
    /// Stop it (`arca restore cancel`): no further item is restored, phase Canceled;
    /// items restored already stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Downloader settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_config: Option<UploaderConfig>,
    /// Init containers and commands for the restored pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<RestoreHooks>,
}

/// Items done of items in all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    /// Items to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_items: Option<i64>,
    /// Items processed so far, whatever became of each (created, updated, existing,
    /// skipped, failed), as Velero's (`len(restoredItems)`): equal to `totalItems` once
    /// it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_restored: Option<i64>,
}

/// Status of a Restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// New, FailedValidation, InProgress, Finalizing, Completed, PartiallyFailed, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why validation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_errors: Option<Vec<String>>,
    /// Warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<i64>,
    /// Errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RestoreProgress>,
    /// Data movements (DataDownloads) attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_item_operations_attempted: Option<i64>,
    /// Completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_item_operations_completed: Option<i64>,
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_item_operations_failed: Option<i64>,
    /// Exec hooks run and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_status: Option<HookStatus>,
}

/// A Schedule: a backup template and a cron expression.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "Schedule",
    namespaced,
    status = "ScheduleStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// The backups it creates.
    pub template: BackupSpec,
    /// Five-field cron expression, optionally with a `CRON_TZ=` prefix.
    pub schedule: String,
    /// Make the schedule the owner of its backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_owner_references_in_backup: Option<bool>,
    /// Create no backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Skip the first due run after creation or unpausing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_immediately: Option<bool>,
}

/// Status of a Schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// New, Enabled, FailedValidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When it last created a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Time>,
    /// When it last skipped a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<Time>,
    /// Why validation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_errors: Option<Vec<String>>,
}

/// Where in object storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStorageLocation {
    /// Bucket (or, for the `local` provider, a directory).
    pub bucket: String,
    /// Prefix within the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// CA certificate of the store (PEM, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// A key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Secret name.
    pub name: String,
    /// Key in it.
    pub key: String,
}

/// A BackupStorageLocation: an object store that holds backups.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "BackupStorageLocation",
    namespaced,
    status = "BackupStorageLocationStatus",
    shortname = "bsl"
)]
#[kube(printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageLocationSpec {
    /// `aws` (S3 and S3-compatible), `gcp`, `azure`, or `local` (a directory).
    pub provider: String,
    /// Bucket and prefix.
    pub object_storage: ObjectStorageLocation,
    /// Provider settings: `region`, `s3Url`, `s3ForcePathStyle`, `path` (local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
    /// Cloud credentials: a Secret key holding an AWS-style credentials file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<SecretKeySelector>,
    /// The location used when a backup names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// ReadWrite or ReadOnly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    /// How often backups are synced from storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_sync_period: Option<String>,
    /// How often the location is validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_frequency: Option<String>,
}

/// Status of a BackupStorageLocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageLocationStatus {
    /// Available or Unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced_time: Option<Time>,
    /// Last validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validation_time: Option<Time>,
    /// Why unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A BackupRepository: the repository of one namespace's volume data at one location.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "BackupRepository",
    namespaced,
    status = "BackupRepositoryStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// The namespace whose volumes it holds.
    pub volume_namespace: String,
    /// The storage location.
    pub backup_storage_location: String,
    /// Repository type: `arca` (a namespace's volume data; `kopia` is accepted from
    /// Velero manifests), or `resources` (the location's backup records, made by the
    /// server for each location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_type: Option<String>,
    /// How often maintenance runs, e.g. `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_frequency: Option<String>,
}

/// Status of a BackupRepository.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// New, Ready, NotReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Last maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_maintenance_time: Option<Time>,
    /// Last full maintenance (garbage collected and repacked; Arca's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_maintenance_time: Option<Time>,
}

/// A CSI snapshot to move.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsiSnapshotSpec {
    /// The VolumeSnapshot.
    pub volume_snapshot: String,
    /// Storage class of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// VolumeSnapshotClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
    /// CSI driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// Bytes done of bytes in all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataMoveProgress {
    /// Total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
}

/// A DataUpload: move a volume's data into the repository.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "DataUpload",
    namespaced,
    status = "DataUploadStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startTimestamp"}"#,
    printcolumn = r#"{"name":"Bytes Done","type":"integer","jsonPath":".status.progress.bytesDone"}"#,
    printcolumn = r#"{"name":"Total Bytes","type":"integer","jsonPath":".status.progress.totalBytes"}"#,
    printcolumn = r#"{"name":"Storage Location","type":"string","jsonPath":".spec.backupStorageLocation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadSpec {
    /// `CSI`.
    pub snapshot_type: String,
    /// The snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi_snapshot: Option<CsiSnapshotSpec>,
    /// The PVC it was taken of.
    pub source_pvc: String,
    /// The mover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datamover: Option<String>,
    /// Mover settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_mover_config: Option<BTreeMap<String, String>>,
    /// Storage location.
    pub backup_storage_location: String,
    /// The PVC's namespace.
    pub source_namespace: String,
    /// Cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_timeout: Option<String>,
}

/// Status of a DataUpload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadStatus {
    /// New, Accepted, Prepared, InProgress, Canceling, Canceled, Completed, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Path of the data in the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The repository snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DataMoveProgress>,
    /// The node that moves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node that accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by_node: Option<String>,
    /// When it was accepted (the prepare timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_timestamp: Option<Time>,
    /// Bytes new since the parent snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_bytes: Option<i64>,
}

/// Where a download goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetVolumeSpec {
    /// Target PVC.
    pub pvc: String,
    /// Target PV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// Target namespace.
    pub namespace: String,
}

/// A DataDownload: move a volume's data out of the repository.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "DataDownload",
    namespaced,
    status = "DataDownloadStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startTimestamp"}"#,
    printcolumn = r#"{"name":"Bytes Done","type":"integer","jsonPath":".status.progress.bytesDone"}"#,
    printcolumn = r#"{"name":"Total Bytes","type":"integer","jsonPath":".status.progress.totalBytes"}"#,
    printcolumn = r#"{"name":"Storage Location","type":"string","jsonPath":".spec.backupStorageLocation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadSpec {
    /// Where to.
    pub target_volume: TargetVolumeSpec,
    /// Storage location.
    pub backup_storage_location: String,
    /// The mover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datamover: Option<String>,
    /// The repository snapshot.
    pub snapshot_id: String,
    /// The namespace it was backed up from.
    pub source_namespace: String,
    /// Mover settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_mover_config: Option<BTreeMap<String, String>>,
    /// Cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_timeout: Option<String>,
    /// Size of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_size: Option<i64>,
}

/// Status of a DataDownload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadStatus {
    /// New, Accepted, Prepared, InProgress, Canceling, Canceled, Completed, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DataMoveProgress>,
    /// The node that moves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node that accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by_node: Option<String>,
    /// When it was accepted (the prepare timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_timestamp: Option<Time>,
}

/// The pod a PodVolumeBackup or PodVolumeRestore reads or writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    /// `Pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (the pod's directory under the kubelet's pods directory).
    pub uid: String,
}

/// A PodVolumeBackup: one volume of a running pod, read live from its node by the node
/// agent there (Velero's file-system backup).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "PodVolumeBackup",
    namespaced,
    status = "PodVolumeBackupStatus",
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startTimestamp"}"#,
    printcolumn = r#"{"name":"Bytes Done","type":"integer","jsonPath":".status.progress.bytesDone"}"#,
    printcolumn = r#"{"name":"Total Bytes","type":"integer","jsonPath":".status.progress.totalBytes"}"#,
    printcolumn = r#"{"name":"Storage Location","type":"string","jsonPath":".spec.backupStorageLocation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupSpec {
    /// The node the pod runs on: its node agent does the work.
    pub node: String,
    /// The pod.
    pub pod: PodRef,
    /// The volume's name in the pod.
    pub volume: String,
    /// Storage location.
    pub backup_storage_location: String,
    /// Velero's (always empty, so left out); Arca's repository is
    /// `<location>/volumes/<pod namespace>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_identifier: Option<String>,
    /// `arca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_type: Option<String>,
    /// Backup, pod, volume and claim, as Velero tags them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Uploader settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_settings: Option<BTreeMap<String, String>>,
    /// Cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
}

/// Status of a PodVolumeBackup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupStatus {
    /// New, InProgress, Canceling, Canceled, Completed, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The volume's directory on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The repository snapshot.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "snapshotID"
    )]
    pub snapshot_id: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DataMoveProgress>,
    /// Bytes new since the parent snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_bytes: Option<i64>,
}

/// A PodVolumeRestore: one volume of a restored pod, written by the node agent of the
/// pod's node while the pod's `restore-wait` init container holds it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "PodVolumeRestore",
    namespaced,
    status = "PodVolumeRestoreStatus",
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.pod.namespace"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod.name"}"#,
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Total Bytes","type":"integer","jsonPath":".status.progress.totalBytes"}"#,
    printcolumn = r#"{"name":"Bytes Done","type":"integer","jsonPath":".status.progress.bytesDone"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreSpec {
    /// The restored pod.
    pub pod: PodRef,
    /// The volume's name in the pod.
    pub volume: String,
    /// Storage location.
    pub backup_storage_location: String,
    /// Velero's (always empty, so left out); Arca's repository is
    /// `<location>/volumes/<source namespace>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_identifier: Option<String>,
    /// `arca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_type: Option<String>,
    /// The snapshot to restore.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// The namespace the volume was backed up in (its repository).
    pub source_namespace: String,
    /// Uploader settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_settings: Option<BTreeMap<String, String>>,
    /// Cancel it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
}

/// Status of a PodVolumeRestore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreStatus {
    /// New, InProgress, Canceling, Canceled, Completed, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DataMoveProgress>,
    /// The node that writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A DeleteBackupRequest: delete a backup and what it stored.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "arca.dev",
    version = "v1",
    kind = "DeleteBackupRequest",
    namespaced,
    status = "DeleteBackupRequestStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct DeleteBackupRequestSpec {
    /// The backup.
    pub backup_name: String,
}

/// Status of a DeleteBackupRequest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteBackupRequestStatus {
    /// New, InProgress, Processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
}

/// Every CRD, in install order.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        BackupStorageLocation::crd(),
        BackupRepository::crd(),
        Backup::crd(),
        Restore::crd(),
        Schedule::crd(),
        DataUpload::crd(),
        DataDownload::crd(),
        PodVolumeBackup::crd(),
        PodVolumeRestore::crd(),
        DeleteBackupRequest::crd(),
    ]
}

/// A Kubernetes time as chrono's, to the second (what the API server keeps).
pub fn utc(t: &Time) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.0.as_second(), 0)
}
