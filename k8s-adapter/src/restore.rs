//! Restore of cluster resources with Velero's semantics: validation, discovery on the
//! target, filters, priorities (CRDs first, waited on until established), namespaces
//! created and mapped, the PV rename rule and claim clean-up, metadata and status reset,
//! existing-resource policy (with the ServiceAccount merge), node ports, storage-class
//! mapping; every per-item failure recorded, and independent items of one priority tier
//! restored in parallel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_engine::{
    BackupOptions, BackupProgress, Indexed, Parent, RestoreOptions, RestoreProgress, SnapshotFilter,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::claim::RunClaim;
use crate::crd::{Backup, Restore, RestoreSpec, RestoreStatus};
use crate::discovery::Discovery;
use crate::error::{Error, Result};
use crate::filter::{IncludesExcludes, LabelFilter, NamespaceFilter};
use crate::location::{Location, writer};
use crate::record::*;
use crate::restore_actions::{self as actions, Related, Verdict};

/// Resources never restored.
pub const NEVER_RESTORED: [&str; 9] = [
    "nodes",
    "events",
    "events.events.k8s.io",
    "backups.arca.dev",
    "restores.arca.dev",
    "backuprepositories.arca.dev",
    "deletebackuprequests.arca.dev",
    "csinodes.storage.k8s.io",
    "volumeattachments.storage.k8s.io",
];

/// Velero's default restore priorities: these first, in this order; then everything else
/// alphabetically; then the entries after `-`.
pub const DEFAULT_PRIORITIES: &str = "customresourcedefinitions,namespaces,storageclasses,volumesnapshotclass.snapshot.storage.k8s.io,\
volumesnapshotcontents.snapshot.storage.k8s.io,volumesnapshots.snapshot.storage.k8s.io,datauploads.arca.dev,persistentvolumes,\
persistentvolumeclaims,clusterroles,roles,serviceaccounts,clusterrolebindings,rolebindings,secrets,configmaps,limitranges,\
priorityclasses,pods,replicasets.apps,clusterclasses.cluster.x-k8s.io,endpoints,services,-,clusterbootstraps.run.tanzu.vmware.com,\
clusters.cluster.x-k8s.io,clusterresourcesets.addons.cluster.x-k8s.io,apps.kappctrl.k14s.io,packageinstalls.packaging.carvel.dev";

/// Labels selecting the storage-class mapping ConfigMap (value `RestoreItemAction`).
pub const STORAGE_CLASS_MAP_LABELS: [&str; 2] = [
    "arca.dev/change-storage-class",
    "velero.io/change-storage-class",
];
/// Annotation of a renamed PV.
pub const ORIGINAL_PV_ANNOTATION: &str = "arca.dev/original-pv-name";

/// Restore priorities: a parsed list.
#[derive(Clone, Debug)]
pub struct Priorities {
    high: Vec<String>,
    low: Vec<String>,
}

impl Priorities {
    /// Parse `a,b,c,-,x,y` (entries after `-` go last).
    pub fn parse(s: &str) -> Self {
        let (mut high, mut low, mut in_low) = (Vec::new(), Vec::new(), false);
        for e in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if e == "-" {
                in_low = true;
            } else if in_low {
                low.push(e.to_string());
            } else {
                high.push(e.to_string());
            }
        }
        Self { high, low }
    }

    /// Resolve each entry through discovery (Velero's getOrderedResourceCollection resolves
    /// them with the discovery helper): `persistentvolumes` is the core type, not the same
    /// plural in any group; `volumesnapshotclass.snapshot.storage.k8s.io` is the plural of
    /// that group. Entries the cluster does not serve (yet) stay as written.
    pub fn resolved(&self, resolve: impl Fn(&str) -> Option<String>) -> Self {
        let r = |v: &Vec<String>| {
            v.iter()
                .map(|e| resolve(e).unwrap_or_else(|| e.clone()))
                .collect()
        };
        Self {
            high: r(&self.high),
            low: r(&self.low),
        }
    }

    /// Sort key of a `resource.group`: (tier, position, name).
    pub fn key(&self, gr: &str) -> (u8, usize, String) {
        if let Some(i) = self.high.iter().position(|e| e == gr) {
            return (0, i, String::new());
        }
        if let Some(i) = self.low.iter().position(|e| e == gr) {
            return (2, i, String::new());
        }
        (1, 0, gr.to_string())
    }
}

impl Default for Priorities {
    fn default() -> Self {
        Self::parse(DEFAULT_PRIORITIES)
    }
}

/// Options beyond the Restore resource.
#[derive(Clone, Debug, Default)]
pub struct RestoreSettings {
    /// Restore priorities (default: Velero's).
    pub priorities: Priorities,
    /// Items restored at once within one priority tier.
    pub parallel_items: usize,
    /// How long to wait for a restored CRD to become established (Velero's
    /// `--resource-timeout`).
    pub crd_wait: Duration,
    /// How long to wait for a terminating namespace or volume to go.
    pub terminating_wait: Duration,
    /// With a schedule: consider its PartiallyFailed backups too (Velero's
    /// `--allow-partially-failed`); else only Completed ones.
    pub allow_partially_failed: bool,
}

impl RestoreSettings {
    /// The defaults: Velero's priorities, 8 at once, 10 minutes, 10 minutes.
    pub fn new() -> Self {
        Self {
            priorities: Priorities::default(),
            parallel_items: 8,
            crd_wait: Duration::from_secs(600),
            terminating_wait: Duration::from_secs(600),
            allow_partially_failed: false,
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Patch a Restore's status, if this run still holds it ([`RunClaim`]).
async fn set_status(claim: &RunClaim<Restore>, status: &RestoreStatus) -> Result<()> {
    claim.status(status).await.map(drop)
}

/// Find a backup's record: through the Backup resource's location if it exists here,
/// else in the default location (a backup made by another cluster).
pub async fn find_backup(
    client: &Client,
    ns: &str,
    backup: &str,
    cache_root: Option<&Path>,
) -> Result<(Indexed, arca_format::SnapshotId, Backup)> {
    let (location, _) = Location::of_backup(client, ns, backup, cache_root).await?;
    let repo = location
        .open(&location.resources_url(), cache_root, &writer(ns))
        .await?;
    let (id, _) = latest_record(&repo, BACKUP_TAG, BACKUP_NAME_LABEL, backup)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no backup {backup:?} in storage location {}",
                location.name
            ))
        })?;
    let stored: Backup = read_json(&repo, &id, "backup.json").await?;
    Ok((repo, id, stored))
}

/// The newest snapshot with a tag and a label value.
pub async fn latest_record(
    repo: &Indexed,
    tag: &str,
    label: &str,
    value: &str,
) -> Result<Option<(arca_format::SnapshotId, arca_format::Snapshot)>> {
    let filter = SnapshotFilter {
        tags: vec![tag.to_string()],
        ..Default::default()
    };
    let (snaps, _) = repo.repo().readable_snapshots().await?;
    Ok(snaps
        .into_iter()
        .rev()
        .find(|(_, s)| filter.matches(s) && s.labels.get(label).map(String::as_str) == Some(value)))
}

/// A local copy of a record snapshot's tree, in a temporary directory.
pub async fn stage_record(
    repo: &Indexed,
    id: &arca_format::SnapshotId,
) -> Result<tempfile::TempDir> {
    let staging = tempfile::Builder::new()
        .prefix("arca-record-")
        .tempdir()
        .map_err(|e| Error::Io {
            what: "create a staging directory".into(),
            source: e,
        })?;
    let snap = repo.repo().snapshot(id).await?;
    let mut ro = RestoreOptions::new(staging.path());
    ro.ownership = false;
    let rr = repo
        .restore(&snap.root, &ro, Arc::new(RestoreProgress::default()))
        .await?;
    if !rr.errors.is_empty() {
        return Err(Error::Invalid(format!(
            "the backup record {} is damaged: {:?}",
            id.short(),
            rr.errors
        )));
    }
    Ok(staging)
}

/// Read one JSON document from a record snapshot.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    repo: &Indexed,
    id: &arca_format::SnapshotId,
    path: &str,
) -> Result<T> {
    let bytes = read_file(repo, id, path).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        what: format!("{path} of record {}", id.short()),
        source: e,
    })
}

/// Read one file from a record snapshot.
pub async fn read_file(
    repo: &Indexed,
    id: &arca_format::SnapshotId,
    path: &str,
) -> Result<Vec<u8>> {
    let snap = repo.repo().snapshot(id).await?;
    let entries = repo.ls(&snap.root, path, false).await?;
    let node = entries
        .into_iter()
        .find(|e| e.path == path.as_bytes())
        .ok_or_else(|| Error::NotFound(format!("{path} is missing from record {}", id.short())))?
        .node;
    let arca_format::NodeKind::File { content, .. } = node.kind else {
        return Err(Error::NotFound(format!(
            "{path} in record {} is not a file",
            id.short()
        )));
    };
    let mut out = Vec::with_capacity(node.size as usize);
    for c in content {
        out.extend(repo.read_blob(&c).await?);
    }
    Ok(out)
}

/// A restore's working state.
struct Run {
    client: Client,
    spec: RestoreSpec,
    backup_name: String,
    restore_name: String,
    settings: RestoreSettings,
    /// What the per-kind actions consult.
    ctx: actions::Context,
    /// Which types get their status back (`restoreStatus`: includes, excludes as typed,
    /// resolved when used, since restored CRDs add types), if any.
    status_includes: Option<(Vec<String>, Vec<String>)>,
    results: Mutex<Results>,
    log: Mutex<Log>,
    /// Items processed so far (`status.progress.itemsRestored`).
    restored: std::sync::atomic::AtomicI64,
    /// What became of each item.
    items: Mutex<Vec<RestoredItem>>,
    /// Pods created, with their UIDs (their PodVolumeRestores name them).
    created_pods: Mutex<Vec<crate::crd::PodRef>>,
    /// Pods created that have exec hooks to run, as created.
    hook_pods: Mutex<Vec<Value>>,
    /// Run again after its server died (phase InProgress when read): when the Restore was
    /// created, so that the pods its killed run made are known.
    rerun_since: Option<Time>,
}

impl Run {
    fn warn(&self, ns: Option<&str>, cluster: bool, msg: String) {
        self.log.lock().expect("lock").line("warning", msg.clone());
        self.results
            .lock()
            .expect("lock")
            .warnings
            .add(ns, cluster, msg);
    }

    fn info(&self, msg: String) {
        self.log.lock().expect("lock").line("info", msg);
    }

    /// An error when fewer of the restore's `what` were seen at the end of the wait than
    /// it started, saying what that leaves (`lost`).
    fn gone(&self, seen: usize, started: usize, what: &str, lost: &str) {
        if seen < started {
            self.error(
                None,
                false,
                format!(
                    "{} of the {started} {what} of this restore are gone: {lost}",
                    started - seen
                ),
            );
        }
    }

    fn error(&self, ns: Option<&str>, cluster: bool, msg: String) {
        self.log.lock().expect("lock").line("error", msg.clone());
        self.results
            .lock()
            .expect("lock")
            .errors
            .add(ns, cluster, msg);
    }

    fn target_ns(&self, ns: &str) -> String {
        self.ctx.target_ns(ns)
    }
}

/// The outcome of a restore.
#[derive(Debug)]
pub struct RestoreOutcome {
    /// The final status.
    pub status: RestoreStatus,
    /// Warnings and errors.
    pub results: Results,
    /// The log.
    pub log: String,
}

/// End a restore in FailedValidation, saying why.
async fn failed_validation(claim: &RunClaim<Restore>, msgs: Vec<String>) -> Result<RestoreOutcome> {
    let status = RestoreStatus {
        phase: Some("FailedValidation".into()),
        validation_errors: Some(msgs),
        ..Default::default()
    };
    set_status(claim, &status).await?;
    Ok(RestoreOutcome {
        status,
        results: Results::default(),
        log: String::new(),
    })
}

/// The newest backup of a schedule a restore may use: Completed ones, and PartiallyFailed
/// ones too when `allow_partial` (Velero's `--allow-partially-failed`); newest by start
/// time, as Velero's mostRecentCompletedBackup (pkg/controller/restore_controller.go).
pub async fn newest_backup_of_schedule(
    client: &Client,
    ns: &str,
    sched: &str,
    allow_partial: bool,
) -> Result<Option<String>> {
    let bapi: Api<Backup> = Api::namespaced(client.clone(), ns);
    let sched_label = label_value(sched);
    let mut list = Vec::new();
    for key in ["velero.io/schedule-name", SCHEDULE_NAME_LABEL] {
        list.extend(
            bapi.list(&ListParams::default().labels(&format!("{key}={sched_label}")))
                .await
                .map_err(|e| Error::kube("list backups", e))?
                .items,
        );
    }
    list.retain(
        |b| match b.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Completed") => true,
            Some("PartiallyFailed") => allow_partial,
            _ => false,
        },
    );
    list.sort_by_key(|b| {
        b.status
            .as_ref()
            .and_then(|s| s.start_timestamp.clone())
            .map(|t| t.0)
    });
    Ok(list.last().map(|b| b.name_any()))
}

/// Run a Restore resource that exists in the cluster (phase New).
pub async fn run_restore(
    client: &Client,
    claim: &RunClaim<Restore>,
    ns: &str,
    name: &str,
    settings: RestoreSettings,
    cache_root: Option<&Path>,
) -> Result<RestoreOutcome> {
    // As the claim left it (read fresh before, then written by the claim).
    let restore = claim.claimed().clone();
    let spec = restore.spec.clone();
    let mut status = RestoreStatus::default();

    // Validation.
    let policy = spec.existing_resource_policy.clone().unwrap_or_default();
    let ns_problems = crate::filter::validate_namespaces(
        &spec.included_namespaces.clone().unwrap_or_default(),
        &spec.excluded_namespaces.clone().unwrap_or_default(),
    );
    let res_problems = crate::filter::validate_includes_excludes(
        "resource",
        &spec.included_resources.clone().unwrap_or_default(),
        &spec.excluded_resources.clone().unwrap_or_default(),
    );
    // Every problem at once, as Velero's validateAndComplete.
    let mut problems: Vec<String> = Vec::new();
    if spec.backup_name.is_none() && spec.schedule_name.is_none() {
        problems.push("give one of backupName and scheduleName".to_string());
    }
    problems.extend(ns_problems);
    problems.extend(res_problems);
    if !["", "none", "update"].contains(&policy.as_str()) {
        problems.push(format!(
            "existingResourcePolicy {policy:?}: use none or update"
        ));
    }
    let hook_specs = spec.hook_specs();
    problems.extend(crate::hooks::restore::validate(&hook_specs));
    let ns_filter = NamespaceFilter::new(
        &spec.included_namespaces.clone().unwrap_or_default(),
        &spec.excluded_namespaces.clone().unwrap_or_default(),
    );
    let label_filter = LabelFilter::new(
        spec.label_selector.clone(),
        spec.or_label_selectors.clone().unwrap_or_default(),
    );
    for e in [ns_filter.as_ref().err(), label_filter.as_ref().err()]
        .into_iter()
        .flatten()
    {
        problems.push(e.to_string());
    }
    let (Ok(ns_filter), Ok(label_filter), true) = (ns_filter, label_filter, problems.is_empty())
    else {
        return failed_validation(claim, problems).await;
    };

    // The backup: by name, or the newest successful one of a schedule.
    let backup_name = match (&spec.backup_name, &spec.schedule_name) {
        (Some(b), None) => b.clone(),
        // Both: valid when the backup is the schedule's, as when this restore chose it and
        // was interrupted before it started (Velero fills backupName the same way).
        (Some(b), Some(sched)) => {
            let bapi: Api<Backup> = Api::namespaced(client.clone(), ns);
            let from_schedule = bapi
                .get_opt(b)
                .await
                .map_err(|e| Error::kube(format!("read backup {ns}/{b}"), e))?
                .is_some_and(|bk| {
                    let l = bk.labels();
                    let want = label_value(sched);
                    l.get(SCHEDULE_NAME_LABEL) == Some(&want)
                        || l.get("velero.io/schedule-name") == Some(&want)
                });
            if !from_schedule {
                return failed_validation(claim, vec![format!(
                        "backupName {b} is not a backup of schedule {sched}: give one of backupName and scheduleName"
                    )],
                )
                .await;
            }
            b.clone()
        }
        (None, Some(sched)) => {
            let allow_partial = settings.allow_partially_failed;
            match newest_backup_of_schedule(client, ns, sched, allow_partial).await? {
                Some(b) => {
                    // Recorded in the Restore, so that describe, logs and delete find it.
                    let chosen = b;
                    claim
                        .patch(&json!({ "spec": { "backupName": chosen } }))
                        .await?;
                    chosen
                }
                None => {
                    return failed_validation(
                        claim,
                        vec![format!(
                            "schedule {sched} has no completed backup{}",
                            if allow_partial {
                                " (nor a partially failed one)"
                            } else {
                                " (--allow-partially-failed considers partially failed ones)"
                            }
                        )],
                    )
                    .await;
                }
            }
        }
        (None, None) => unreachable!("validated above"),
    };
    let (repo, record, stored) = match find_backup(client, ns, &backup_name, cache_root).await {
        Ok(x) => x,
        Err(e) => {
            return failed_validation(claim, vec![e.to_string()]).await;
        }
    };
    // The Backup of this cluster, if it has one, must be the one stored under that name
    // (synced from it, or the same UID: a Backup refused because another cluster had
    // stored its name stands for nothing), and ended well (Velero checks the Backup's own
    // phase: not Deleting, not Failed).
    let bapi: Api<crate::crd::Backup> = Api::namespaced(client.clone(), ns);
    if let Some(b) = bapi
        .get_opt(&backup_name)
        .await
        .map_err(|e| Error::kube(format!("read backup {ns}/{backup_name}"), e))?
    {
        let mine = b
            .annotations()
            .contains_key(crate::record::SYNCED_ANNOTATION)
            || (b.metadata.uid.is_some() && b.metadata.uid == stored.metadata.uid)
            || b.status.as_ref().and_then(|s| s.snapshot_id.as_deref())
                == Some(record.to_hex().as_str());
        let bphase = b.status.and_then(|s| s.phase).unwrap_or_default();
        let why = if !mine {
            Some(format!(
                "backup {backup_name} of this cluster stored nothing; the record of that name in its location is another backup's"
            ))
        } else if bphase != "Completed" && bphase != "PartiallyFailed" {
            Some(format!(
                "backup {backup_name} is {}, not Completed or PartiallyFailed",
                if bphase.is_empty() { "New" } else { &bphase }
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return failed_validation(claim, vec![why]).await;
        }
    }
    let phase = stored
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Completed" && phase != "PartiallyFailed" {
        return failed_validation(
            claim,
            vec![format!(
                "backup {backup_name} is {phase}, not Completed or PartiallyFailed"
            )],
        )
        .await;
    }

    status.phase = Some("InProgress".into());
    status.start_timestamp = Some(now());
    set_status(claim, &status).await?;
    crate::server::pause_point("restore-started").await;

    // The record's items, read from a local copy of the snapshot.
    let staging = stage_record(&repo, &record).await?;
    let refs: Vec<ItemRef> = serde_json::from_slice(
        &std::fs::read(staging.path().join("items.json")).map_err(|e| Error::Io {
            what: "read items.json".into(),
            source: e,
        })?,
    )
    .map_err(|e| Error::Json {
        what: "items.json".into(),
        source: e,
    })?;

    let mut d = Discovery::run(client).await?;
    let (included, _) = d.resolve_all(&spec.included_resources.clone().unwrap_or_default());
    let (excluded, _) = d.resolve_all(&spec.excluded_resources.clone().unwrap_or_default());
    let resources = IncludesExcludes::new(&included, &excluded);
    let status_includes = spec.restore_status.as_ref().map(|rs| {
        (
            rs.included_resources.clone().unwrap_or_default(),
            rs.excluded_resources.clone().unwrap_or_default(),
        )
    });
    let read_item = |r: &ItemRef| -> std::result::Result<Value, String> {
        let v: Value = std::fs::read(staging.path().join(r.path()))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
        // Everything below writes into the object and its metadata.
        if v.get("metadata").is_some_and(Value::is_object) {
            Ok(v)
        } else {
            Err("not an object with metadata".into())
        }
    };
    let mut log = Log::default();
    let mut results = Results::default();
    let unreadable = |r: &ItemRef, e: String, log: &mut Log, results: &mut Results| {
        let msg = format!(
            "{} {}: unreadable in the backup: {e}",
            r.group_resource(),
            r.display()
        );
        log.line("error", msg.clone());
        results
            .errors
            .add(r.namespace.as_deref(), r.namespace.is_none(), msg);
    };

    // Velero's getOrderedResourceCollection (pkg/restore/restore.go): the items the filters
    // select. With includeClusterResources unset, cluster-scoped items come only when
    // every namespace is restored (no includes other than `*`, no excludes); Namespace
    // objects are not restored as items (below).
    let include_cluster = spec.include_cluster_resources;
    let mut items: Vec<(ItemRef, Value)> = Vec::new();
    let mut ns_objects: HashMap<String, Value> = HashMap::new();
    let mut selected_namespaces: BTreeSet<String> = BTreeSet::new();
    for r in &refs {
        let gr = r.group_resource();
        if gr == "namespaces" {
            let Ok(obj) = read_item(r) else { continue };
            // Namespace items are cluster-scoped here too (Velero creates an empty one
            // only when cluster resources are restored); a namespace holding a restored
            // item is created either way, below.
            let cluster_ok = include_cluster == Some(true)
                || (include_cluster.is_none() && ns_filter.everything());
            if cluster_ok
                && resources.includes(&gr)
                && ns_filter.includes(&r.name)
                && (!label_filter.is_set() || label_filter.matches(&labels_in(&obj)))
            {
                selected_namespaces.insert(r.name.clone());
            }
            ns_objects.insert(r.name.clone(), obj);
            continue;
        }
        if NEVER_RESTORED.contains(&gr.as_str()) || !resources.includes(&gr) {
            continue;
        }
        match &r.namespace {
            Some(n) if !ns_filter.includes(n) => continue,
            None if include_cluster == Some(false) => continue,
            None if include_cluster != Some(true) && !ns_filter.everything() => continue,
            _ => {}
        }
        let obj = match read_item(r) {
            Ok(v) => v,
            Err(e) => {
                unreadable(r, e, &mut log, &mut results);
                continue;
            }
        };
        if label_filter.is_set() && !label_filter.matches(&labels_in(&obj)) {
            continue;
        }
        items.push((r.clone(), obj));
    }

    // The items those bring along (a claim its volume, a pod its priority class): taken
    // from the backup whatever the label selector says, as Velero's additional items, if
    // their type and namespace pass and cluster resources are not refused outright.
    let by_key: HashMap<Related, &ItemRef> = refs
        .iter()
        .map(|r| {
            (
                Related {
                    group_resource: r.group_resource(),
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                },
                r,
            )
        })
        .collect();
    let mut taken: BTreeSet<Related> = items
        .iter()
        .map(|(r, _)| Related {
            group_resource: r.group_resource(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        })
        .collect();
    let mut queue: std::collections::VecDeque<Related> = items
        .iter()
        .flat_map(|(r, o)| actions::additional(&r.group_resource(), o))
        .collect();
    while let Some(rel) = queue.pop_front() {
        if !taken.insert(rel.clone()) {
            continue;
        }
        let gr = &rel.group_resource;
        let pass = !NEVER_RESTORED.contains(&gr.as_str())
            && resources.includes(gr)
            && match &rel.namespace {
                Some(n) => ns_filter.includes(n),
                None => include_cluster != Some(false),
            };
        if !pass {
            continue;
        }
        let Some(r) = by_key.get(&rel) else {
            let msg = format!(
                "{gr} {}: needed by a restored item, but not in the backup",
                rel.name
            );
            log.line("warning", msg.clone());
            results
                .warnings
                .add(rel.namespace.as_deref(), rel.namespace.is_none(), msg);
            continue;
        };
        match read_item(r) {
            Ok(obj) => {
                queue.extend(actions::additional(gr, &obj));
                items.push(((*r).clone(), obj));
            }
            Err(e) => unreadable(r, e, &mut log, &mut results),
        }
    }

    // Volume data of the backup (`volumes.json`): each restorable claim restored whose
    // data moved gets a DataDownload, unless the restore says no volumes (restorePVs:
    // false); each restored pod whose volumes were backed up by file system gets a
    // PodVolumeRestore per volume, when claims and volumes are restored (Velero's rule:
    // the restore-wait container is added only then, so that it never waits forever).
    let recorded: Vec<crate::datamover::MovedVolume> =
        match std::fs::read(staging.path().join(crate::datamover::VOLUMES_FILE)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Json {
                what: crate::datamover::VOLUMES_FILE.into(),
                source: e,
            })?,
            Err(_) => Vec::new(),
        };
    let (pod_volumes, moved): (Vec<_>, Vec<_>) = recorded
        .into_iter()
        .filter(|v| v.restorable())
        .partition(|v| v.by_pod_volume_backup());
    let moved: Vec<_> = if spec.restore_p_vs == Some(false) {
        Vec::new()
    } else {
        moved
    };
    let pod_volumes = if resources.includes("persistentvolumeclaims")
        && resources.includes("persistentvolumes")
    {
        crate::datamover::podvolume::by_pod(&pod_volumes)
    } else {
        BTreeMap::new()
    };
    let mut ctx = action_context(client, ns, &spec, &refs, &read_item, &items).await?;
    ctx.restore_hooks = hook_specs.clone();
    let ruid = restore.metadata.uid.clone().unwrap_or_default();
    // Only a node agent writes volume data back: asked once, when first needed.
    let mut agents = crate::datamover::csi::AgentPresence::default();
    if !pod_volumes.is_empty() {
        let image = if agents.runs(client, ns).await? {
            crate::datamover::podvolume::restore_wait_image(client, ns).await?
        } else {
            None
        };
        match image {
            Some(image) => {
                ctx.restore_wait_image = image;
                ctx.restore_uid = ruid.clone();
                for ((pns, pod), vols) in &pod_volumes {
                    ctx.pod_volumes.insert(
                        (ctx.target_ns(pns), pod.clone()),
                        vols.keys().cloned().collect(),
                    );
                    // A claim's volume read by file system is provisioned anew and
                    // written (Velero's hasPodVolumeBackup).
                    for v in vols.values() {
                        if let Some(pv) = &v.pv {
                            ctx.pvs_to_provision.insert(pv.clone());
                        }
                    }
                }
            }
            None => {
                let msg = "pod volumes backed up by file system are not restored: no node agent runs, or no image for the restore-wait init container is known (install the node agent: arca install --use-node-agent)".to_string();
                log.line("error", msg.clone());
                results.errors.add(None, true, msg);
            }
        }
    }
    for v in &moved {
        let target = ctx.target_ns(&v.namespace);
        ctx.moved_claims.insert(
            (target.clone(), v.pvc.clone()),
            crate::datamover::csi::restore_selector(&ruid, &target, &v.pvc),
        );
        // Its volume is made anew and written by the data mover, never restored as an
        // object (Velero's hasSnapshotDataUpload).
        if let Some(pv) = &v.pv {
            ctx.pvs_to_provision.insert(pv.clone());
        }
    }
    let run = Arc::new(Run {
        client: client.clone(),
        spec: spec.clone(),
        backup_name: backup_name.clone(),
        restore_name: name.to_string(),
        settings,
        ctx,
        status_includes,
        results: Mutex::new(results),
        log: Mutex::new(log),
        restored: std::sync::atomic::AtomicI64::new(0),
        items: Mutex::new(Vec::new()),
        created_pods: Mutex::new(Vec::new()),
        hook_pods: Mutex::new(Vec::new()),
        rerun_since: (restore.status.as_ref().and_then(|s| s.phase.as_deref())
            == Some("InProgress"))
        .then(|| restore.metadata.creation_timestamp.clone())
        .flatten(),
    });
    run.info(format!(
        "restore {ns}/{name} of backup {backup_name} started"
    ));

    // Tiers by priority, resolved against this cluster.
    let priorities = run
        .settings
        .priorities
        .resolved(|e| d.resolve(e).map(|r| r.group_resource()));
    let mut tiers: BTreeMap<(u8, usize, String), Vec<(ItemRef, Value)>> = BTreeMap::new();
    for (r, o) in items {
        tiers
            .entry(priorities.key(&r.group_resource()))
            .or_default()
            .push((r, o));
    }
    let total: usize = tiers.values().map(Vec::len).sum::<usize>() + selected_namespaces.len();
    status.progress = Some(crate::crd::RestoreProgress {
        total_items: Some(total as i64),
        items_restored: Some(0),
    });
    set_status(claim, &status).await?;

    // Namespaces (Velero's EnsureNamespaceExistsAndIsReady): the selected ones and those of
    // every item restored, created first from their backed-up objects (labels and
    // annotations kept, whatever filtered the Namespace item out), with no restore labels.
    let mut needed: BTreeSet<String> = selected_namespaces
        .iter()
        .map(|n| run.target_ns(n))
        .collect();
    let mut sources: HashMap<String, Value> = HashMap::new();
    for (src, obj) in &ns_objects {
        sources.insert(run.target_ns(src), obj.clone());
    }
    for (r, _) in tiers.values().flatten() {
        if let Some(n) = &r.namespace {
            needed.insert(run.target_ns(n));
        }
    }
    ensure_namespaces(&run, &needed, &sources).await;
    run.restored.fetch_add(
        selected_namespaces.len() as i64,
        std::sync::atomic::Ordering::Relaxed,
    );

    for ((_, _, _), tier) in tiers {
        let gr = tier[0].0.group_resource();
        let is_crd = gr == "customresourcedefinitions.apiextensions.k8s.io";
        let r2 = run.clone();
        let dd = d.clone();
        let items = futures::stream::iter(tier.into_iter().map(|(r, o)| {
            let run = r2.clone();
            let d = dd.clone();
            async move { restore_item(&run, &d, r, o).await }
        }))
        .buffer_unordered(run.settings.parallel_items.max(1))
        .collect::<Vec<()>>();
        // Progress per item while a tier runs (a tier may hold thousands), written at
        // most once a second, as the backup's.
        let mut items = std::pin::pin!(items);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut items => break,
                _ = tick.tick() => {
                    let n = run.restored.load(std::sync::atomic::Ordering::Relaxed);
                    let shown = status.progress.as_ref().and_then(|p| p.items_restored);
                    if shown != Some(n) {
                        status.progress = Some(crate::crd::RestoreProgress {
                            total_items: Some(total as i64),
                            items_restored: Some(n),
                        });
                        // Advisory: a failed write is made good by the next one. A run
                        // taken over stops here, its tier's other items not created.
                        if let Err(e @ Error::Superseded(_)) = set_status(claim, &status).await {
                            return Err(e);
                        }
                    }
                }
            }
        }
        if is_crd {
            // CRDs are waited on until established; then the cluster serves their types.
            wait_crds_established(&run).await;
            d = Discovery::run(client).await?;
        }
        status.progress = Some(crate::crd::RestoreProgress {
            total_items: Some(total as i64),
            items_restored: Some(run.restored.load(std::sync::atomic::Ordering::Relaxed)),
        });
        set_status(claim, &status).await?;
    }

    // PodVolumeRestores first, waited on after the downloads: a pod may mount both a
    // moved claim (bound only once its download ends) and a volume written under its
    // restore-wait container (which runs only once the pod is placed).
    crate::server::pause_point("restore-pods-created").await;
    let exec_hooks = {
        let pods = run.hook_pods.lock().expect("lock").clone();
        (!pods.is_empty()).then(|| {
            let wait = spec
                .item_operation_timeout
                .as_deref()
                .and_then(crate::backup::parse_go_std)
                .unwrap_or(std::time::Duration::from_secs(4 * 3600));
            crate::backup::AbortOnDrop(tokio::spawn(crate::hooks::restore::run_all(
                client.clone(),
                pods,
                hook_specs.clone(),
                wait,
            )))
        })
    };
    let pod_volume_restores = if run.ctx.pod_volumes.is_empty() {
        0
    } else {
        start_pod_volume_restores(
            client,
            ns,
            &restore,
            &backup_name,
            &stored,
            &run,
            &pod_volumes,
            cache_root,
        )
        .await?
    };
    if !moved.is_empty() {
        restore_volume_data(
            client,
            claim,
            ns,
            &restore,
            &backup_name,
            &stored,
            &run,
            &moved,
            &mut status,
            cache_root,
            &mut agents,
        )
        .await?;
    }
    if pod_volume_restores > 0 {
        wait_pod_volume_restores(client, ns, &restore, &run, pod_volume_restores).await?;
    }
    // Exec hooks of the pods this restore created, run while the volumes above were
    // written (a pod under restore-wait runs its containers only after); waited on here.
    let hook_runs = match exec_hooks {
        Some(mut h) => match (&mut h.0).await {
            Ok(runs) => runs,
            Err(e) => {
                run.error(None, false, format!("running the exec hooks failed: {e}"));
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    record_hook_runs(&run, &hook_runs);
    if !hook_runs.is_empty() {
        status.hook_status = Some(crate::hooks::status(&hook_runs));
    }

    let results = run.results.lock().expect("lock").clone();
    status.warnings = Some(results.warnings.count() as i64);
    status.errors = Some(results.errors.count() as i64);
    status.phase = Some(
        if results.errors.count() > 0 {
            "PartiallyFailed"
        } else {
            "Completed"
        }
        .into(),
    );
    status.completion_timestamp = Some(now());
    let (created, updated) = {
        let items = run.items.lock().expect("lock");
        let of = |o: Outcome| items.iter().filter(|i| i.outcome == o).count();
        (of(Outcome::Created), of(Outcome::Updated))
    };
    run.log.lock().expect("lock").line(
        "info",
        format!(
            "restore finished: {} of {total} items processed ({created} created, {updated} updated), {} warnings, {} errors",
            run.restored.load(std::sync::atomic::Ordering::Relaxed),
            results.warnings.count(),
            results.errors.count()
        ),
    );
    let log = run.log.lock().expect("lock").text();

    // The record of the restore, beside the backup's.
    let record_tmp = tempfile::Builder::new()
        .prefix("arca-restore-record-")
        .tempdir()
        .map_err(|e| Error::Io {
            what: "create the restore record".into(),
            source: e,
        })?;
    let record_dir = record_tmp.path().to_path_buf();
    let mut stored_restore = restore.clone();
    stored_restore.status = Some(status.clone());
    let write = |f: &str, b: Vec<u8>| {
        std::fs::write(record_dir.join(f), b).map_err(|e| Error::Io {
            what: format!("write {f}"),
            source: e,
        })
    };
    write(
        "restore.json",
        serde_json::to_vec_pretty(&stored_restore).expect("serializes"),
    )?;
    write(
        "results.json",
        serde_json::to_vec_pretty(&results).expect("serializes"),
    )?;
    if !hook_runs.is_empty() {
        write(
            crate::hooks::HOOKS_FILE,
            serde_json::to_vec_pretty(&hook_runs).expect("serializes"),
        )?;
    }
    let mut restored_items = std::mem::take(&mut *run.items.lock().expect("lock"));
    restored_items.sort_by(|a, b| {
        (a.item.group_resource(), &a.item.namespace, &a.item.name).cmp(&(
            b.item.group_resource(),
            &b.item.namespace,
            &b.item.name,
        ))
    });
    write(
        "items.json",
        serde_json::to_vec_pretty(&restored_items).expect("serializes"),
    )?;
    write("log.txt", log.clone().into_bytes())?;
    let mut o = BackupOptions::new(vec![record_dir.clone()]);
    o.identity = writer(ns);
    o.parent = Parent::None;
    o.tags = vec![RESTORE_TAG.to_string()];
    o.labels = BTreeMap::from([
        (RESTORE_NAME_LABEL.to_string(), name.to_string()),
        (BACKUP_NAME_LABEL.to_string(), backup_name.clone()),
        (NAMESPACE_LABEL.to_string(), ns.to_string()),
    ]);
    let stored = repo.backup(o, Arc::new(BackupProgress::default())).await;
    drop(record_tmp);
    if let Err(e) = stored {
        status.warnings = Some(status.warnings.unwrap_or(0) + 1);
        tracing::warn!("the restore's record could not be stored: {e}");
    }
    set_status(claim, &status).await?;
    Ok(RestoreOutcome {
        status,
        results,
        log,
    })
}

/// The storage-class mapping: ConfigMaps in the install namespace labelled
/// `arca.dev/change-storage-class: RestoreItemAction` (or Velero's label).
async fn storage_class_map(client: &Client, ns: &str) -> Result<BTreeMap<String, String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut out = BTreeMap::new();
    for label in STORAGE_CLASS_MAP_LABELS {
        let lp = ListParams::default().labels(&format!("{label}=RestoreItemAction"));
        for cm in api
            .list(&lp)
            .await
            .map_err(|e| Error::kube(format!("list config maps in {ns}"), e))?
            .items
        {
            out.extend(cm.data.unwrap_or_default());
        }
    }
    Ok(out)
}

/// The labels of a stored object.
fn labels_in(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

/// What the per-kind actions consult, read before the first item is restored: the
/// storage-class mapping, the volumes the cluster provisions anew, the volumes renamed,
/// and the service accounts each target namespace will have.
/// Keep a restored pod for its exec hooks, if it has any.
fn note_hook_pod(run: &Run, pod: Value) {
    let (groups, bad) = crate::hooks::restore::exec_hooks(&pod, &run.ctx.restore_hooks);
    if !groups.is_empty() || !bad.is_empty() {
        run.hook_pods.lock().expect("lock").push(pod);
    }
}

/// Log each restore exec hook run with its output and count its failure: with onError
/// Fail an error of the restore (PartiallyFailed), with Continue a warning.
fn record_hook_runs(run: &Run, runs: &[crate::hooks::HookRun]) {
    for r in runs {
        let level = r.level();
        run.log.lock().expect("lock").line(level, r.log_text());
        let mut results = run.results.lock().expect("lock");
        match level {
            "error" => results.errors.add(Some(&r.namespace), false, r.summary()),
            "warning" => results.warnings.add(Some(&r.namespace), false, r.summary()),
            _ => {}
        }
    }
}

async fn action_context(
    client: &Client,
    ns: &str,
    spec: &RestoreSpec,
    refs: &[ItemRef],
    read_item: &impl Fn(&ItemRef) -> std::result::Result<Value, String>,
    items: &[(ItemRef, Value)],
) -> Result<actions::Context> {
    let mut ctx = actions::Context {
        mapping: spec.namespace_mapping.clone().unwrap_or_default(),
        storage_classes: storage_class_map(client, ns).await?,
        preserve_node_ports: spec.preserve_node_ports == Some(true),
        ..Default::default()
    };
    // Every backed-up volume with reclaim policy Delete, restored or not: no volume
    // backup restores volume data yet, so the cluster provisions each anew, and a claim
    // bound to one never keeps its name (Velero's pvsToProvision).
    for r in refs
        .iter()
        .filter(|r| r.group_resource() == "persistentvolumes")
    {
        if let Ok(pv) = read_item(r)
            && actions::provisioned_dynamically(&pv)
        {
            ctx.pvs_to_provision.insert(r.name.clone());
        }
    }
    // No rename: Velero renames a volume (shouldRenamePV) only when it restores its data
    // from a snapshot into a new disk; a volume restored as an object keeps its name, and
    // a second object on the same disk would give it two writers. `renamed_pvs` stays
    // empty until volume data is restored.
    // Service accounts: those restored, and those already in each target namespace.
    let mut targets = BTreeSet::new();
    for (r, _) in items {
        if let Some(n) = &r.namespace {
            targets.insert(ctx.target_ns(n));
            if r.group_resource() == "serviceaccounts" {
                ctx.service_accounts
                    .entry(ctx.target_ns(n))
                    .or_default()
                    .insert(r.name.clone());
            }
        }
    }
    let has_token_secrets = items.iter().any(|(r, o)| {
        r.group_resource() == "secrets"
            && o.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
    });
    if has_token_secrets {
        for t in targets {
            let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(client.clone(), &t);
            if let Ok(list) = sas.list(&ListParams::default()).await {
                ctx.service_accounts
                    .entry(t)
                    .or_default()
                    .extend(list.items.iter().map(|s| s.name_any()));
            }
        }
    }
    Ok(ctx)
}

async fn ensure_namespaces(
    run: &Run,
    names: &BTreeSet<String>,
    backed_up: &HashMap<String, Value>,
) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(run.client.clone());
    for n in names {
        // A namespace being deleted is waited for, then created anew.
        let deadline = std::time::Instant::now() + run.settings.terminating_wait;
        loop {
            match api.get_opt(n).await {
                Ok(Some(existing))
                    if existing.status.as_ref().and_then(|s| s.phase.as_deref())
                        == Some("Terminating") =>
                {
                    if std::time::Instant::now() > deadline {
                        run.error(
                            None,
                            true,
                            format!(
                                "namespace {n} is still terminating; its items are not restored"
                            ),
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(Some(_)) => break,
                Ok(None) => {
                    let mut obj = backed_up.get(n).cloned().unwrap_or_else(
                        || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}}),
                    );
                    reset_metadata(&mut obj);
                    obj["metadata"]["name"] = json!(n);
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                    match serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(obj) {
                        Ok(nsobj) => match api.create(&PostParams::default(), &nsobj).await {
                            Ok(_) => run.info(format!("created namespace {n}")),
                            Err(kube::Error::Api(s)) if s.code == 409 => {}
                            Err(e) => run.error(None, true, format!("namespaces/{n}: {e}")),
                        },
                        Err(e) => run.error(None, true, format!("namespaces/{n}: {e}")),
                    }
                    break;
                }
                Err(e) => {
                    run.error(None, true, format!("namespaces/{n}: {e}"));
                    break;
                }
            }
        }
    }
}

/// Clear what the server sets (Velero's resetMetadata), and the owners, which get new
/// identities here: a reference to the old one would make the garbage collector delete
/// the item. `managedFields` stays for the actions (the Service rule reads it).
fn reset_metadata(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        // The item keeps its name; with generateName also set, the server answers a name
        // that exists with a retryable timeout instead of 409, which would never end.
        if m.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            m.remove("generateName");
        }
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "selfLink",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
        ] {
            m.remove(k);
        }
    }
}

fn remove_managed_fields(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
}

fn set_restore_labels(obj: &mut Value, run: &Run) {
    if !obj["metadata"]["labels"].is_object() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"][BACKUP_NAME_LABEL] = json!(label_value(&run.backup_name));
    obj["metadata"]["labels"][RESTORE_NAME_LABEL] = json!(label_value(&run.restore_name));
}

/// Annotation overriding `restoreStatus` for one object (`true` or `false`).
pub const RESTORE_STATUS_ANNOTATIONS: [&str; 2] =
    ["arca.dev/restore-status", "velero.io/restore-status"];

/// Whether an item gets its status back (Velero's determineRestoreStatus).
fn restores_status(run: &Run, d: &Discovery, gr: &str, obj: &Value) -> bool {
    for a in RESTORE_STATUS_ANNOTATIONS {
        let key = format!("/metadata/annotations/{}", a.replace('/', "~1"));
        match obj
            .pointer(&key)
            .and_then(Value::as_str)
            .map(|v| v.trim().to_lowercase())
            .as_deref()
        {
            Some("true") => return true,
            Some("false") => return false,
            _ => {}
        }
    }
    run.status_includes.as_ref().is_some_and(|(i, e)| {
        let (i, e) = (d.resolve_all(i).0, d.resolve_all(e).0);
        IncludesExcludes::new(&i, &e).includes(gr)
    })
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`; None when they are equal.
/// Fields `from` has and `to` lacks are removed (set to null).
pub fn merge_patch(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut p = serde_json::Map::new();
            for (k, tv) in t {
                match f.get(k) {
                    Some(fv) => {
                        if let Some(d) = merge_patch(fv, tv) {
                            p.insert(k.clone(), d);
                        }
                    }
                    None => {
                        p.insert(k.clone(), tv.clone());
                    }
                }
            }
            for k in f.keys().filter(|k| !t.contains_key(*k)) {
                p.insert(k.clone(), Value::Null);
            }
            (!p.is_empty()).then_some(Value::Object(p))
        }
        _ if from == to => None,
        _ => Some(to.clone()),
    }
}

/// Create, retrying what the server calls transient (429, ServerTimeout, 503, 504): a
/// restore of thousands of items meets them, and they say "please try again". Also a pod
/// refused because its service account is not there yet: in a namespace the restore has
/// just created, the controller manager makes `default` moments later, and the
/// ServiceAccount admission plugin refuses pods until it exists (about 6 s in all, then
/// the refusal stands: an account that never comes is the restore's error to report).
async fn create_with_retry(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
) -> kube::Result<DynamicObject> {
    let mut delay = Duration::from_millis(200);
    for _ in 0..5 {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(s))
                if matches!(s.code, 429 | 503 | 504)
                    || (s.code == 500 && s.reason == "ServerTimeout")
                    || (s.code == 403
                        && s.message.contains("error looking up service account")
                        && s.message.contains("not found")) =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    api.create(&PostParams::default(), obj).await
}

/// An item as the restore would write it, from its backed-up copy or from the cluster's
/// (for comparing the two): server-set metadata, owners, status and `managedFields` gone,
/// the kind's action applied, the restore labels set.
fn desired(run: &Run, gr: &str, ctx: &actions::Context, obj: &mut Value) -> Verdict {
    reset_metadata(obj);
    // The action first: whether a pod or Job has completed is in its status.
    let v = actions::transform(gr, obj, ctx);
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    remove_managed_fields(obj);
    set_restore_labels(obj, run);
    v
}

async fn restore_one(run: &Run, d: &Discovery, r: &ItemRef, mut obj: Value) -> Outcome {
    let gr = r.group_resource();
    let scope_ns = r.namespace.as_deref().map(|n| run.target_ns(n));
    let (ns_ref, cluster) = (scope_ns.as_deref(), r.namespace.is_none());
    let what = format!("{gr} {}", r.display());
    // The cluster must serve the version the item was backed up at.
    let Some(target) = d.served(&r.group, &r.version, &r.resource).cloned() else {
        run.warn(
            ns_ref,
            cluster,
            format!(
                "{what}: skipped: the cluster does not serve {}/{} {}",
                r.group, r.version, r.resource
            ),
        );
        return Outcome::Skipped;
    };
    // Read-only kinds (componentstatuses) are listed by a backup of everything, but no
    // server takes them back: not a failure.
    if !target.can("create") {
        run.info(format!(
            "{what}: skipped: the cluster does not allow creating {}",
            r.resource
        ));
        return Outcome::Skipped;
    }
    if let Some(ns) = &scope_ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let status = restores_status(run, d, &gr, &obj)
        .then(|| obj.get("status").cloned())
        .flatten();
    if let Verdict::Skip(why) = desired(run, &gr, &run.ctx, &mut obj) {
        run.info(format!("{what}: skipped: {why}"));
        return Outcome::Skipped;
    }
    let api: Api<DynamicObject> = match &scope_ns {
        Some(ns) if target.namespaced => {
            Api::namespaced_with(run.client.clone(), ns, &target.api_resource())
        }
        _ => Api::all_with(run.client.clone(), &target.api_resource()),
    };
    let want: DynamicObject = match serde_json::from_value(obj.clone()) {
        Ok(o) => o,
        Err(e) => {
            run.error(ns_ref, cluster, format!("{what}: {e}"));
            return Outcome::Failed;
        }
    };
    let name = want.name_any();
    // A create that finds the item, then a read that does not: a controller deleted it in
    // between (the EndpointSlice controller removes slices it does not own). Create again.
    let mut vanished = 0;
    let existing = loop {
        match create_with_retry(&api, &want).await {
            Ok(created) => {
                if gr == "pods" {
                    let pod = crate::crd::PodRef {
                        kind: Some("Pod".into()),
                        namespace: created.namespace().unwrap_or_default(),
                        name: created.name_any(),
                        uid: created.uid().unwrap_or_default(),
                    };
                    note_hook_pod(run, serde_json::to_value(&created).unwrap_or_default());
                    run.created_pods.lock().expect("lock").push(pod);
                }
                run.info(format!("restored {what}"));
                if let Some(st) = status {
                    write_status(run, &api, &created, st, &what, ns_ref, cluster).await;
                }
                return Outcome::Created;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&name).await {
                Ok(e) => break e,
                Err(kube::Error::Api(s)) if s.code == 404 && vanished < 3 => vanished += 1,
                Err(e) => {
                    run.warn(
                        ns_ref,
                        cluster,
                        format!("{what}: exists, and cannot be read: {e}"),
                    );
                    return Outcome::Failed;
                }
            },
            // Validation runs before the existence check (a Service whose node port its
            // existing copy holds gets 422): an item that exists is handled as one.
            Err(e) => match api.get_opt(&name).await {
                Ok(Some(existing)) => break existing,
                _ => {
                    run.error(ns_ref, cluster, format!("{what}: {e}"));
                    return Outcome::Failed;
                }
            },
        }
    };
    if gr == "pods"
        && existing
            .labels()
            .get(RESTORE_NAME_LABEL)
            .is_some_and(|l| *l == label_value(&run.restore_name))
        && run.rerun_since.as_ref().is_some_and(|since| {
            existing
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| t.0 >= since.0)
        })
    {
        // A pod of this restore, created by a run of it that a killed server left (a
        // rerun, and the pod younger than the Restore: not one of an earlier Restore of
        // that name): its exec hooks run now (perhaps a second time), not never.
        note_hook_pod(run, serde_json::to_value(&existing).unwrap_or_default());
    }
    if gr == "serviceaccounts" {
        // Merge: the secrets, pull secrets, labels and annotations the cluster's
        // copy lacks (Velero's mergeServiceAccounts).
        return match merge_service_account(&api, &existing, &obj).await {
            Ok(false) => {
                run.info(format!("{what}: exists, and lacks nothing of the backup"));
                Outcome::Unchanged
            }
            Ok(true) => {
                run.info(format!("merged {what} into the existing one"));
                Outcome::Updated
            }
            Err(e) => {
                run.warn(
                    ns_ref,
                    cluster,
                    format!("{what}: exists; merging it failed: {e}"),
                );
                Outcome::Failed
            }
        };
    }
    // Compare as Velero does, after the same clean-up on both sides; the action runs on
    // the cluster's copy without mappings, so that what the cluster assigned (a cluster
    // IP, a node name) is not a difference.
    let mut cur = match serde_json::to_value(&existing) {
        Ok(v) => v,
        Err(e) => {
            run.error(ns_ref, cluster, format!("{what}: {e}"));
            return Outcome::Failed;
        }
    };
    let plain = actions::Context {
        preserve_node_ports: run.ctx.preserve_node_ports,
        ..Default::default()
    };
    desired(run, &gr, &plain, &mut cur);
    // Equal but for what the restore labels say is equal (Velero labels the cluster's copy
    // before comparing); the update patch is made from the copy without them, so that it
    // sets them (Velero's removeRestoreLabels).
    let identical = merge_patch(&cur, &obj).is_none();
    if let Some(l) = cur
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(BACKUP_NAME_LABEL);
        l.remove(RESTORE_NAME_LABEL);
    }
    let patch = if identical {
        None
    } else {
        merge_patch(&cur, &obj)
    };
    let update = run.spec.existing_resource_policy.as_deref() == Some("update");
    let labels_only = json!({ "metadata": { "labels": {
        BACKUP_NAME_LABEL: label_value(&run.backup_name),
        RESTORE_NAME_LABEL: label_value(&run.restore_name),
    }}});
    match (patch, update) {
        (None, false) => {
            run.info(format!("{what}: exists, identical to the backup"));
            Outcome::Unchanged
        }
        (None, true) => {
            if let Err(e) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&labels_only))
                .await
            {
                run.warn(
                    ns_ref,
                    cluster,
                    format!("{what}: exists; labelling it failed: {e}"),
                );
            } else {
                run.info(format!("{what}: exists, identical to the backup; labelled"));
            }
            Outcome::Unchanged
        }
        (Some(_), false) => {
            run.warn(
                ns_ref,
                cluster,
                format!("{what}: already exists, and differs from the backed-up version; not restored (existing resource policy none)"),
            );
            Outcome::Differs
        }
        (Some(p), true) => match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&p))
            .await
        {
            Ok(_) => {
                run.info(format!("updated {what} to the backed-up version"));
                Outcome::Updated
            }
            Err(e) => {
                // Velero's fallback: the restore labels alone, so the item is found.
                run.warn(
                    ns_ref,
                    cluster,
                    format!("{what}: exists, and updating it to the backed-up version failed: {e}"),
                );
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&labels_only))
                    .await
                {
                    run.error(
                        ns_ref,
                        cluster,
                        format!("{what}: labelling it failed too: {e}"),
                    );
                }
                Outcome::Differs
            }
        },
    }
}

/// A PodVolumeRestore for each backed-up volume of each pod this restore created
/// (Velero's restorePodVolumeBackups, once the pod exists: the restore-wait container
/// holds it meanwhile); a pod that a killed run of this restore created counts (it waits
/// for this restore's UID). Returns how many there are.
#[allow(clippy::too_many_arguments)]
async fn start_pod_volume_restores(
    client: &Client,
    ns: &str,
    restore: &Restore,
    backup_name: &str,
    stored: &crate::crd::Backup,
    run: &Run,
    pod_volumes: &BTreeMap<(String, String), BTreeMap<String, crate::datamover::MovedVolume>>,
    cache_root: Option<&Path>,
) -> Result<usize> {
    use crate::datamover::podvolume;
    let location = match Location::of_backup(client, ns, backup_name, cache_root).await {
        Ok((l, _)) => l.name,
        Err(_) => stored.spec.storage_location.clone().unwrap_or_default(),
    };
    let created = run.created_pods.lock().expect("lock").clone();
    let ruid = restore.uid().unwrap_or_default();
    let mut started = 0;
    for ((pns, pod), vols) in pod_volumes {
        let target = run.target_ns(pns);
        let p = match created
            .iter()
            .find(|p| p.namespace == target && p.name == *pod)
        {
            Some(p) => p.clone(),
            None => {
                let pods: Api<k8s_openapi::api::core::v1::Pod> =
                    Api::namespaced(client.clone(), &target);
                match pods.get_opt(pod).await {
                    Ok(Some(live)) if podvolume::waits_for(&live, &ruid) => crate::crd::PodRef {
                        kind: Some("Pod".into()),
                        namespace: target.clone(),
                        name: pod.clone(),
                        uid: live.uid().unwrap_or_default(),
                    },
                    _ => {
                        run.info(format!(
                            "pod {target}/{pod}: not created by this restore, its volumes are not restored"
                        ));
                        continue;
                    }
                }
            }
        };
        for v in vols.values() {
            let r = podvolume::pod_volume_restore(ns, restore, &location, &p, v);
            podvolume::create_restore(client, &r).await?;
            run.info(format!(
                "{} into pod {target}/{pod}: PodVolumeRestore {} of snapshot {}",
                v.what(),
                r.name_any(),
                v.snapshot_id.as_deref().unwrap_or_default()
            ));
            started += 1;
        }
    }
    Ok(started)
}

/// Wait for the restore's `expected` PodVolumeRestores while it is InProgress; a failed
/// one is an error of the restore.
async fn wait_pod_volume_restores(
    client: &Client,
    ns: &str,
    restore: &Restore,
    run: &Run,
    expected: usize,
) -> Result<()> {
    use crate::datamover::{RESTORE_UID, csi, podvolume};
    let timeout = podvolume::timeout(
        restore.annotations(),
        restore.spec.item_operation_timeout.as_deref(),
    );
    let selector = format!("{RESTORE_UID}={}", restore.uid().unwrap_or_default());
    let done: Vec<crate::crd::PodVolumeRestore> =
        csi::wait_all(client, ns, &selector, expected, timeout, |_, _| async {}).await?;
    run.gone(
        done.len(),
        expected,
        "PodVolumeRestores",
        "their volumes are not restored",
    );
    for r in &done {
        let st = r.status.clone().unwrap_or_default();
        let phase = st.phase.unwrap_or_default();
        let what = format!(
            "volume {} of pod {}/{} (PodVolumeRestore {})",
            r.spec.volume,
            r.spec.pod.namespace,
            r.spec.pod.name,
            r.name_any()
        );
        if phase == crate::datamover::phase::COMPLETED {
            run.info(format!("{what}: data restored"));
        } else {
            run.error(
                Some(&r.spec.pod.namespace),
                false,
                format!(
                    "{what}: pod volume restore {phase}: {}",
                    st.message.unwrap_or_else(|| "no reason given".into())
                ),
            );
        }
    }
    Ok(())
}

/// A DataDownload for each moved claim the restore created, waited on in phase
/// WaitingForPluginOperations; a failed one is an error of the restore.
#[allow(clippy::too_many_arguments)]
async fn restore_volume_data(
    client: &Client,
    claim: &RunClaim<Restore>,
    ns: &str,
    restore: &Restore,
    backup_name: &str,
    stored: &crate::crd::Backup,
    run: &Run,
    moved: &[crate::datamover::MovedVolume],
    status: &mut RestoreStatus,
    cache_root: Option<&Path>,
    agents: &mut crate::datamover::csi::AgentPresence,
) -> Result<()> {
    use crate::datamover::{RESTORE_UID, csi};
    let created: BTreeSet<(String, String)> = run
        .items
        .lock()
        .expect("lock")
        .iter()
        .filter(|i| {
            i.item.group_resource() == "persistentvolumeclaims" && i.outcome == Outcome::Created
        })
        .map(|i| {
            (
                i.item.namespace.clone().unwrap_or_default(),
                i.item.name.clone(),
            )
        })
        .collect();
    // A claim this restore made is its too when a killed run of it made it (the rerun
    // finds it existing): its selector carries this restore's value.
    let mut created = created;
    let ruid = restore.metadata.uid.clone().unwrap_or_default();
    for v in moved {
        let target = run.target_ns(&v.namespace);
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(client.clone(), &target);
        if let Ok(Some(c)) = claims.get_opt(&v.pvc).await {
            let ours = c
                .spec
                .and_then(|s| s.selector)
                .and_then(|s| s.match_labels)
                .and_then(|l| l.get(crate::datamover::DYNAMIC_PV_RESTORE).cloned())
                == Some(csi::restore_selector(&ruid, &target, &v.pvc));
            if ours {
                created.insert((target, v.pvc.clone()));
            }
        }
    }
    let location = match Location::of_backup(client, ns, backup_name, cache_root).await {
        Ok((l, _)) => l.name,
        Err(_) => stored.spec.storage_location.clone().unwrap_or_default(),
    };
    let mut started = 0;
    for v in moved {
        let target = run.target_ns(&v.namespace);
        if !created.contains(&(target.clone(), v.pvc.clone())) {
            run.info(format!(
                "claim {target}/{}: not created by this restore, its data is not restored",
                v.pvc
            ));
            continue;
        }
        // No node agent: no DataDownload nobody would take (Velero's waits its item
        // operation timeout, 4 h, nothing having accepted it). The claim stays as made,
        // Pending with its selector, so that nothing provisions an empty volume for it
        // (a StatefulSet would, for a claim left out).
        if !agents.runs(client, ns).await? {
            run.error(
                Some(&target),
                false,
                format!(
                    "claim {target}/{}: its data is not restored: no node agent runs in the cluster to write it (arca install --use-node-agent); the claim is left Pending: restore again into another namespace, or delete it and the pods that use it and restore again",
                    v.pvc
                ),
            );
            continue;
        }
        let dd = csi::download(ns, restore, &location, v, &target);
        csi::create_download(client, &dd).await?;
        run.info(format!(
            "claim {target}/{}: DataDownload {} of snapshot {}",
            v.pvc,
            dd.name_any(),
            v.snapshot_id.as_deref().unwrap_or_default()
        ));
        started += 1;
    }
    if started == 0 {
        return Ok(());
    }
    status.phase = Some("WaitingForPluginOperations".into());
    status.restore_item_operations_attempted = Some(started);
    set_status(claim, status).await?;
    let timeout = restore
        .spec
        .item_operation_timeout
        .as_deref()
        .and_then(crate::backup::parse_go_std)
        .unwrap_or(std::time::Duration::from_secs(4 * 3600));
    let selector = format!(
        "{RESTORE_UID}={}",
        restore.metadata.uid.clone().unwrap_or_default()
    );
    let st = Mutex::new(status.clone());
    let downloads: Vec<crate::crd::DataDownload> = csi::wait_all(
        client,
        ns,
        &selector,
        started as usize,
        timeout,
        |done, failed| {
            let s = {
                let mut s = st.lock().expect("lock");
                s.restore_item_operations_completed = Some(done);
                s.restore_item_operations_failed = Some(failed);
                s.clone()
            };
            async move {
                let _ = set_status(claim, &s).await;
            }
        },
    )
    .await?;
    *status = st.into_inner().expect("lock");
    run.gone(
        downloads.len(),
        started as usize,
        "DataDownloads",
        "their claims' data is not restored",
    );
    for d in &downloads {
        let st = d.status.clone().unwrap_or_default();
        let t = &d.spec.target_volume;
        let phase = st.phase.unwrap_or_default();
        if phase == crate::datamover::phase::COMPLETED {
            run.info(format!(
                "claim {}/{}: data restored (DataDownload {})",
                t.namespace,
                t.pvc,
                d.name_any()
            ));
        } else {
            run.error(
                Some(&t.namespace),
                false,
                format!(
                    "claim {}/{}: data restore {phase} (DataDownload {}): {}",
                    t.namespace,
                    t.pvc,
                    d.name_any(),
                    st.message.unwrap_or_else(|| "no reason given".into())
                ),
            );
        }
    }
    status.phase = Some("Finalizing".into());
    set_status(claim, status).await?;
    Ok(())
}

/// Restore one item and note what became of it, for `restore describe --details`.
async fn restore_item(run: &Run, d: &Discovery, r: ItemRef, obj: Value) {
    let outcome = restore_one(run, d, &r, obj).await;
    // Every item processed counts, whatever became of it (created, updated, existing,
    // skipped, failed), as in Velero's itemsRestored = len(restoredItems) (restore.go,
    // restoreItem), so that a restore that ended shows all of its items. Velero makes
    // them equal by setting totalItems to that count at the end; here the items a
    // restore leaves out never enter totalItems.
    run.restored
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let namespace = r.namespace.as_deref().map(|n| run.target_ns(n));
    run.items.lock().expect("lock").push(RestoredItem {
        item: ItemRef { namespace, ..r },
        outcome,
    });
}

/// Write a created item's status through its `/status` subresource (Velero's
/// UpdateStatus after create); a failure is a warning.
async fn write_status(
    run: &Run,
    api: &Api<DynamicObject>,
    created: &DynamicObject,
    status: Value,
    what: &str,
    ns: Option<&str>,
    cluster: bool,
) {
    let name = created.name_any();
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
    {
        Ok(_) => run.info(format!("{what}: status restored")),
        Err(e) => run.warn(
            ns,
            cluster,
            format!("{what}: restoring its status failed: {e}"),
        ),
    }
}

/// Velero's mergeServiceAccounts: add what the cluster's copy lacks; false (and no write)
/// when it lacks nothing but the restore labels.
async fn merge_service_account(
    api: &Api<DynamicObject>,
    existing: &DynamicObject,
    backed_up: &Value,
) -> Result<bool> {
    let mut changed = false;
    let mut cur = serde_json::to_value(existing).map_err(|e| Error::Json {
        what: "service account".into(),
        source: e,
    })?;
    for field in ["secrets", "imagePullSecrets"] {
        let have: Vec<Value> = cur
            .get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut merged = have.clone();
        for s in backed_up
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !have.iter().any(|h| h.get("name") == s.get("name")) {
                merged.push(s.clone());
                changed = true;
            }
        }
        cur[field] = Value::Array(merged);
    }
    for meta in ["labels", "annotations"] {
        if cur["metadata"][meta].is_null() {
            cur["metadata"][meta] = json!({});
        }
        if let Some(m) = backed_up
            .pointer(&format!("/metadata/{meta}"))
            .and_then(Value::as_object)
        {
            for (k, v) in m {
                if cur["metadata"][meta].get(k).is_none() {
                    cur["metadata"][meta][k] = v.clone();
                    changed |= k != BACKUP_NAME_LABEL && k != RESTORE_NAME_LABEL;
                }
            }
        }
    }
    if !changed {
        return Ok(false);
    }
    let patch = json!({
        "metadata": { "labels": cur["metadata"]["labels"], "annotations": cur["metadata"]["annotations"] },
        "secrets": cur["secrets"],
        "imagePullSecrets": cur["imagePullSecrets"],
    });
    api.patch(
        &existing.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::kube("merge service account", e))?;
    Ok(true)
}

/// Wait until every CRD in the cluster reports Established (bounded by the setting).
async fn wait_crds_established(run: &Run) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(run.client.clone());
    let deadline = std::time::Instant::now()
        .checked_add(run.settings.crd_wait)
        .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86400 * 365));
    loop {
        let list = match api
            .list(&ListParams::default().labels(&format!(
                "{RESTORE_NAME_LABEL}={}",
                label_value(&run.restore_name)
            )))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                run.warn(None, true, format!("cannot list restored CRDs: {e}"));
                return;
            }
        };
        let pending: Vec<String> = list
            .iter()
            .filter(|c| {
                !c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        // Velero's IsCRDReady: established and its names accepted.
                        ["Established", "NamesAccepted"]
                            .iter()
                            .all(|t| cs.iter().any(|c| c.type_ == *t && c.status == "True"))
                    })
            })
            .map(|c| c.name_any())
            .collect();
        if pending.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            for p in pending {
                run.error(None, true, format!("customresourcedefinition {p} did not become established; its resources may fail"));
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_velero() {
        // Resolved as discovery would: bare core names stay, others get their group.
        let p = Priorities::default().resolved(|e| match e {
            "customresourcedefinitions" => {
                Some("customresourcedefinitions.apiextensions.k8s.io".into())
            }
            "storageclasses" => Some("storageclasses.storage.k8s.io".into()),
            "replicasets.apps" | "persistentvolumes" | "pods" => Some(e.into()),
            _ => None,
        });
        let mut grs = vec![
            "services",
            "pods",
            "widgets.example.com",
            "customresourcedefinitions.apiextensions.k8s.io",
            "namespaces",
            "clusters.cluster.x-k8s.io",
            "configmaps",
            "apples.example.com",
            "persistentvolumes",
            "persistentvolumeclaims",
            "deployments.apps",
        ];
        grs.sort_by_key(|g| p.key(g));
        assert_eq!(
            grs,
            [
                "customresourcedefinitions.apiextensions.k8s.io",
                "namespaces",
                "persistentvolumes",
                "persistentvolumeclaims",
                "configmaps",
                "pods",
                "services",
                "apples.example.com",
                "deployments.apps",
                "widgets.example.com",
                "clusters.cluster.x-k8s.io",
            ]
        );
        let custom = Priorities::parse("services,-,pods");
        let mut g = vec!["pods", "configmaps", "services"];
        g.sort_by_key(|x| custom.key(x));
        assert_eq!(g, ["services", "configmaps", "pods"]);
    }

    #[test]
    fn a_bare_priority_is_not_any_groups_plural() {
        let p =
            Priorities::parse("pods,volumesnapshotclass.snapshot.storage.k8s.io").resolved(|e| {
                match e {
                    "pods" => Some("pods".into()),
                    "volumesnapshotclass.snapshot.storage.k8s.io" => {
                        Some("volumesnapshotclasses.snapshot.storage.k8s.io".into())
                    }
                    _ => None,
                }
            });
        assert_eq!(p.key("pods").0, 0);
        assert_eq!(
            p.key("pods.metrics.k8s.io").0,
            1,
            "same plural, other group"
        );
        assert_eq!(
            p.key("volumesnapshotclasses.snapshot.storage.k8s.io"),
            (0, 1, String::new())
        );
    }

    #[test]
    fn merge_patches_remove_what_was_added() {
        let cur = json!({"metadata": {"labels": {"a": "1", "new": "x"}}, "data": {"k": "v", "extra": "e"}});
        let want = json!({"metadata": {"labels": {"a": "1"}}, "data": {"k": "v2"}});
        assert_eq!(
            merge_patch(&cur, &want),
            Some(
                json!({"metadata": {"labels": {"new": null}}, "data": {"k": "v2", "extra": null}})
            )
        );
        assert_eq!(merge_patch(&want, &want), None);
        assert_eq!(
            merge_patch(&json!({"l": [1, 2]}), &json!({"l": [1]})),
            Some(json!({"l": [1]})),
            "lists are replaced whole"
        );
    }
}
