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

use crate::crd::{Backup, Restore, RestoreSpec, RestoreStatus};
use crate::discovery::Discovery;
use crate::error::{Error, Result};
use crate::filter::{IncludesExcludes, LabelFilter, NamespaceFilter};
use crate::location::{Location, writer};
use crate::record::*;

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
clusters.cluster.x-k8s.io,clusterresourcesets.addons.cluster.x-k8s.io";

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

    fn matches(entry: &str, gr: &str) -> bool {
        gr == entry
            || gr
                .split_once('.')
                .is_some_and(|(plural, _)| plural == entry && !entry.contains('.'))
    }

    /// Sort key of a `resource.group`: (tier, position, name).
    pub fn key(&self, gr: &str) -> (u8, usize, String) {
        if let Some(i) = self.high.iter().position(|e| Self::matches(e, gr)) {
            return (0, i, String::new());
        }
        if let Some(i) = self.low.iter().position(|e| Self::matches(e, gr)) {
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
    /// How long to wait for a CRD to become established.
    pub crd_wait: Duration,
    /// How long to wait for a terminating namespace or volume to go.
    pub terminating_wait: Duration,
    /// With a schedule: consider its PartiallyFailed backups too (Velero's
    /// `--allow-partially-failed`); else only Completed ones.
    pub allow_partially_failed: bool,
}

impl RestoreSettings {
    /// The defaults: Velero's priorities, 8 at once, 1 minute, 10 minutes.
    pub fn new() -> Self {
        Self {
            priorities: Priorities::default(),
            parallel_items: 8,
            crd_wait: Duration::from_secs(60),
            terminating_wait: Duration::from_secs(600),
            allow_partially_failed: false,
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn set_status(client: &Client, ns: &str, name: &str, status: &RestoreStatus) -> Result<()> {
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .map_err(|e| Error::kube(format!("update status of restore {ns}/{name}"), e))?;
    Ok(())
}

/// Find a backup's record: through the Backup resource's location if it exists here,
/// else in the default location (a backup made by another cluster).
pub async fn find_backup(
    client: &Client,
    ns: &str,
    backup: &str,
    cache_root: Option<&Path>,
) -> Result<(Indexed, arca_format::SnapshotId, Backup)> {
    let (location, _) = Location::of_backup(client, ns, backup).await?;
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
    mapping: BTreeMap<String, String>,
    status_includes: IncludesExcludes,
    storage_classes: BTreeMap<String, String>,
    renamed_pvs: Mutex<HashMap<String, String>>,
    results: Mutex<Results>,
    log: Mutex<Log>,
    restored: std::sync::atomic::AtomicI64,
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

    fn error(&self, ns: Option<&str>, cluster: bool, msg: String) {
        self.log.lock().expect("lock").line("error", msg.clone());
        self.results
            .lock()
            .expect("lock")
            .errors
            .add(ns, cluster, msg);
    }

    fn target_ns(&self, ns: &str) -> String {
        self.mapping
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_string())
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
async fn failed_validation(
    client: &Client,
    ns: &str,
    name: &str,
    msg: String,
) -> Result<RestoreOutcome> {
    let status = RestoreStatus {
        phase: Some("FailedValidation".into()),
        validation_errors: Some(vec![msg]),
        ..Default::default()
    };
    set_status(client, ns, name, &status).await?;
    Ok(RestoreOutcome {
        status,
        results: Results::default(),
        log: String::new(),
    })
}

/// Run a Restore resource that exists in the cluster (phase New).
pub async fn run_restore(
    client: &Client,
    ns: &str,
    name: &str,
    settings: RestoreSettings,
    cache_root: Option<&Path>,
) -> Result<RestoreOutcome> {
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    let restore = api
        .get(name)
        .await
        .map_err(|e| Error::kube(format!("read restore {ns}/{name}"), e))?;
    let spec = restore.spec.clone();
    let mut status = RestoreStatus::default();

    // Validation.
    let policy = spec.existing_resource_policy.clone().unwrap_or_default();
    let problem = if spec.backup_name.is_some() == spec.schedule_name.is_some() {
        Some("give exactly one of backupName and scheduleName".to_string())
    } else if !["", "none", "update"].contains(&policy.as_str()) {
        Some(format!(
            "existingResourcePolicy {policy:?}: use none or update"
        ))
    } else {
        None
    };
    let filters = NamespaceFilter::new(
        &spec.included_namespaces.clone().unwrap_or_default(),
        &spec.excluded_namespaces.clone().unwrap_or_default(),
    )
    .and_then(|n| {
        LabelFilter::new(
            spec.label_selector.clone(),
            spec.or_label_selectors.clone().unwrap_or_default(),
        )
        .map(|l| (n, l))
    });
    let (ns_filter, label_filter) = match (problem, filters) {
        (Some(p), _) => {
            return failed_validation(client, ns, name, p).await;
        }
        (None, Err(e)) => {
            return failed_validation(client, ns, name, e.to_string()).await;
        }
        (None, Ok(f)) => f,
    };

    // The backup: by name, or the newest successful one of a schedule.
    let backup_name = match (&spec.backup_name, &spec.schedule_name) {
        (Some(b), _) => b.clone(),
        (None, Some(sched)) => {
            let bapi: Api<Backup> = Api::namespaced(client.clone(), ns);
            let lp = ListParams::default().labels(&format!("velero.io/schedule-name={sched}"));
            let mut list = bapi
                .list(&lp)
                .await
                .map_err(|e| Error::kube("list backups", e))?
                .items;
            list.extend(
                bapi.list(&ListParams::default().labels(&format!("{SCHEDULE_NAME_LABEL}={sched}")))
                    .await
                    .map_err(|e| Error::kube("list backups", e))?
                    .items,
            );
            let allow_partial = settings.allow_partially_failed;
            list.retain(
                |b| match b.status.as_ref().and_then(|s| s.phase.as_deref()) {
                    Some("Completed") => true,
                    Some("PartiallyFailed") => allow_partial,
                    _ => false,
                },
            );
            list.sort_by_key(|b| b.metadata.creation_timestamp.clone().map(|t| t.0));
            match list.last() {
                Some(b) => b.name_any(),
                None => {
                    return failed_validation(
                        client,
                        ns,
                        name,
                        format!(
                            "schedule {sched} has no completed backup{}",
                            if allow_partial {
                                " (nor a partially failed one)"
                            } else {
                                " (--allow-partially-failed considers partially failed ones)"
                            }
                        ),
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
            return failed_validation(client, ns, name, e.to_string()).await;
        }
    };
    let phase = stored
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Completed" && phase != "PartiallyFailed" {
        return failed_validation(
            client,
            ns,
            name,
            format!("backup {backup_name} is {phase}, not Completed or PartiallyFailed"),
        )
        .await;
    }

    status.phase = Some("InProgress".into());
    status.start_timestamp = Some(now());
    set_status(client, ns, name, &status).await?;

    // The record's items, read from a local copy of the snapshot.
    let staging = tempfile::Builder::new()
        .prefix("arca-restore-")
        .tempdir()
        .map_err(|e| Error::Io {
            what: "create a staging directory".into(),
            source: e,
        })?;
    let snap = repo.repo().snapshot(&record).await?;
    let mut ro = RestoreOptions::new(staging.path());
    ro.ownership = false;
    let rr = repo
        .restore(&snap.root, &ro, Arc::new(RestoreProgress::default()))
        .await?;
    if !rr.errors.is_empty() {
        return Err(Error::Invalid(format!(
            "the backup record {} is damaged: {:?}",
            record.short(),
            rr.errors
        )));
    }
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

    let storage_classes = storage_class_map(client, ns).await?;
    let run = Arc::new(Run {
        client: client.clone(),
        spec: spec.clone(),
        backup_name: backup_name.clone(),
        restore_name: name.to_string(),
        settings,
        mapping: spec.namespace_mapping.clone().unwrap_or_default(),
        status_includes: IncludesExcludes::new(
            &spec
                .restore_status
                .as_ref()
                .and_then(|r| r.included_resources.clone())
                .unwrap_or_default(),
            &spec
                .restore_status
                .as_ref()
                .and_then(|r| r.excluded_resources.clone())
                .unwrap_or_else(|| vec!["*".into()]),
        ),
        storage_classes,
        renamed_pvs: Mutex::new(HashMap::new()),
        results: Mutex::new(Results::default()),
        log: Mutex::new(Log::default()),
        restored: std::sync::atomic::AtomicI64::new(0),
    });
    run.log.lock().expect("lock").line(
        "info",
        format!("restore {ns}/{name} of backup {backup_name} started"),
    );

    let mut d = Discovery::run(client).await?;
    let (included, _) = d.resolve_all(&spec.included_resources.clone().unwrap_or_default());
    let (excluded, _) = d.resolve_all(&spec.excluded_resources.clone().unwrap_or_default());
    let resources = IncludesExcludes::new(&included, &excluded);
    let all_namespaces = ns_filter.all();

    // Which items, read and filtered.
    let mut items: Vec<(ItemRef, Value)> = Vec::new();
    for r in refs {
        let gr = r.group_resource();
        if NEVER_RESTORED.contains(&gr.as_str()) || !resources.includes(&gr) {
            continue;
        }
        match &r.namespace {
            Some(n) if !ns_filter.includes(n) => continue,
            None if gr != "namespaces" => {
                let take = match spec.include_cluster_resources {
                    Some(b) => b,
                    // Unset: only when all namespaces are restored; a claim's volume
                    // always comes with it.
                    None => all_namespaces || gr == "persistentvolumes",
                };
                if !take || (gr == "persistentvolumes" && spec.restore_p_vs == Some(false)) {
                    continue;
                }
            }
            None if !ns_filter.includes(&r.name) => continue,
            _ => {}
        }
        let path = staging.path().join(r.path());
        let obj: Value = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                run.error(
                    r.namespace.as_deref(),
                    r.namespace.is_none(),
                    format!("{} {}: unreadable in the backup: {e}", gr, r.display()),
                );
                continue;
            }
        };
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        if label_filter.is_set() && gr != "namespaces" && !label_filter.matches(&labels) {
            continue;
        }
        items.push((r, obj));
    }
    // With a label filter, a namespace object comes only with items in it.
    if label_filter.is_set() {
        let used: BTreeSet<String> = items
            .iter()
            .filter_map(|(r, _)| r.namespace.clone())
            .collect();
        items.retain(|(r, obj)| {
            r.group_resource() != "namespaces"
                || used.contains(&r.name)
                || label_filter.matches(
                    &obj.pointer("/metadata/labels")
                        .and_then(|l| serde_json::from_value(l.clone()).ok())
                        .unwrap_or_default(),
                )
        });
    }

    // Tiers by priority.
    let mut tiers: BTreeMap<(u8, usize, String), Vec<(ItemRef, Value)>> = BTreeMap::new();
    for (r, o) in items {
        tiers
            .entry(run.settings.priorities.key(&r.group_resource()))
            .or_default()
            .push((r, o));
    }
    let total: usize = tiers.values().map(Vec::len).sum();
    status.progress = Some(crate::crd::RestoreProgress {
        total_items: Some(total as i64),
        items_restored: Some(0),
    });
    set_status(client, ns, name, &status).await?;

    // Namespaces: every target namespace of a namespaced item, created first.
    let needed: BTreeSet<String> = tiers
        .values()
        .flatten()
        .filter_map(|(r, _)| r.namespace.as_ref().map(|n| run.target_ns(n)))
        .collect();
    let ns_objects: HashMap<String, Value> = tiers
        .values()
        .flatten()
        .filter(|(r, _)| r.group_resource() == "namespaces")
        .map(|(r, o)| (run.target_ns(&r.name), o.clone()))
        .collect();
    ensure_namespaces(&run, &needed, &ns_objects).await;

    for ((_, _, _), tier) in tiers {
        let gr = tier[0].0.group_resource();
        if gr == "namespaces" {
            // Done above; the rest of the backed-up namespaces too.
            let rest: BTreeSet<String> = tier
                .iter()
                .map(|(r, _)| run.target_ns(&r.name))
                .filter(|n| !needed.contains(n))
                .collect();
            ensure_namespaces(&run, &rest, &ns_objects).await;
            run.restored
                .fetch_add(tier.len() as i64, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let is_crd = gr == "customresourcedefinitions.apiextensions.k8s.io";
        let r2 = run.clone();
        let dd = d.clone();
        futures::stream::iter(tier.into_iter().map(|(r, o)| {
            let run = r2.clone();
            let d = dd.clone();
            async move { restore_item(&run, &d, r, o).await }
        }))
        .buffer_unordered(run.settings.parallel_items.max(1))
        .collect::<Vec<()>>()
        .await;
        if is_crd {
            // CRDs are waited on until established; then the cluster serves their types.
            wait_crds_established(&run).await;
            d = Discovery::run(client).await?;
        }
        status.progress = Some(crate::crd::RestoreProgress {
            total_items: Some(total as i64),
            items_restored: Some(run.restored.load(std::sync::atomic::Ordering::Relaxed)),
        });
        set_status(client, ns, name, &status).await?;
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
    run.log.lock().expect("lock").line(
        "info",
        format!(
            "restore finished: {} of {total} items restored, {} warnings, {} errors",
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
    set_status(client, ns, name, &status).await?;
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
                    add_labels(&mut obj, run);
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                        o.remove("spec");
                    }
                    match serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(obj) {
                        Ok(nsobj) => match api.create(&PostParams::default(), &nsobj).await {
                            Ok(_) => {
                                run.log
                                    .lock()
                                    .expect("lock")
                                    .line("info", format!("created namespace {n}"));
                            }
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

/// Clear what the server sets.
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
            "managedFields",
            "selfLink",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(k);
        }
    }
}

fn add_labels(obj: &mut Value, run: &Run) {
    if obj["metadata"]["labels"].is_null() {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"][BACKUP_NAME_LABEL] = json!(run.backup_name);
    obj["metadata"]["labels"][RESTORE_NAME_LABEL] = json!(run.restore_name);
}

fn remove_annotation(obj: &mut Value, keys: &[&str]) {
    if let Some(a) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for k in keys {
            a.remove(*k);
        }
    }
}

fn map_storage_class(v: &mut Value, map: &BTreeMap<String, String>) {
    if let Some(s) = v.as_str().and_then(|s| map.get(s)) {
        *v = json!(s);
    }
}

/// Whether a service port's node port was chosen by the user (kept) rather than
/// assigned by the cluster (dropped): the last-applied configuration names it.
fn explicit_node_ports(obj: &Value) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    if let Some(last) = obj
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
        .and_then(Value::as_str)
        && let Ok(v) = serde_json::from_str::<Value>(last)
    {
        for p in v
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                out.insert(n);
            }
        }
    }
    out
}

/// Adjust one item for the target cluster.
async fn transform(run: &Run, r: &ItemRef, obj: &mut Value) -> Result<()> {
    let gr = r.group_resource();
    reset_metadata(obj);
    if let Some(ns) = &r.namespace {
        obj["metadata"]["namespace"] = json!(run.target_ns(ns));
    }
    // Owners restored get new identities: a reference to the old one would make the
    // garbage collector delete the item.
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("ownerReferences");
    }
    if !run.status_includes.includes(&gr)
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    add_labels(obj, run);
    match gr.as_str() {
        "persistentvolumes" => {
            if let Some(cr) = obj
                .pointer_mut("/spec/claimRef")
                .and_then(Value::as_object_mut)
            {
                for k in ["uid", "resourceVersion"] {
                    cr.remove(k);
                }
            }
            let claim_ns = obj
                .pointer("/spec/claimRef/namespace")
                .and_then(Value::as_str)
                .map(String::from);
            if let Some(cns) = &claim_ns {
                let mapped = run.target_ns(cns);
                obj["spec"]["claimRef"]["namespace"] = json!(mapped);
                // The rename rule: only when the PV exists here and its claim moved.
                if mapped != *cns {
                    let api: Api<k8s_openapi::api::core::v1::PersistentVolume> =
                        Api::all(run.client.clone());
                    if api
                        .get_opt(&r.name)
                        .await
                        .map_err(|e| Error::kube("read persistent volume", e))?
                        .is_some()
                    {
                        let new = format!("arca-clone-{}", uuid_v4());
                        obj["metadata"]["name"] = json!(new);
                        if obj["metadata"]["annotations"].is_null() {
                            obj["metadata"]["annotations"] = json!({});
                        }
                        obj["metadata"]["annotations"][ORIGINAL_PV_ANNOTATION] = json!(r.name);
                        run.renamed_pvs
                            .lock()
                            .expect("lock")
                            .insert(r.name.clone(), new);
                    }
                }
            }
            if let Some(sc) = obj.pointer_mut("/spec/storageClassName") {
                map_storage_class(sc, &run.storage_classes);
            }
        }
        "persistentvolumeclaims" => {
            remove_annotation(
                obj,
                &[
                    "pv.kubernetes.io/bind-completed",
                    "pv.kubernetes.io/bound-by-controller",
                    "volume.beta.kubernetes.io/storage-provisioner",
                    "volume.kubernetes.io/storage-provisioner",
                    "volume.kubernetes.io/selected-node",
                ],
            );
            if let Some(vol) = obj
                .pointer("/spec/volumeName")
                .and_then(Value::as_str)
                .map(String::from)
            {
                let renamed = run.renamed_pvs.lock().expect("lock").get(&vol).cloned();
                if let Some(new) = renamed {
                    obj["spec"]["volumeName"] = json!(new);
                } else if obj
                    .pointer("/metadata/annotations/pv.kubernetes.io~1provisioned-by")
                    .is_some()
                {
                    // Dynamically provisioned: let the provisioner bind a new volume.
                    obj["spec"].as_object_mut().map(|s| s.remove("volumeName"));
                }
            }
            if let Some(sc) = obj.pointer_mut("/spec/storageClassName") {
                map_storage_class(sc, &run.storage_classes);
            }
        }
        "statefulsets.apps" => {
            for t in obj
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(sc) = t.pointer_mut("/spec/storageClassName") {
                    map_storage_class(sc, &run.storage_classes);
                }
            }
        }
        "services" => {
            let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
                && !headless
            {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            let preserve = run.spec.preserve_node_ports == Some(true);
            let explicit = explicit_node_ports(obj);
            if !preserve {
                for p in obj
                    .pointer_mut("/spec/ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let keep = p
                        .get("nodePort")
                        .and_then(Value::as_i64)
                        .is_some_and(|n| explicit.contains(&n));
                    if !keep && let Some(o) = p.as_object_mut() {
                        o.remove("nodePort");
                    }
                }
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("healthCheckNodePort");
                }
            }
        }
        "pods" => {
            // The scheduler places it anew.
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("nodeName");
            }
        }
        _ => {}
    }
    Ok(())
}

/// A random UUID (version 4) in its usual text form.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS supplies random bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Create, retrying what the server calls transient (429, ServerTimeout, 503, 504): a
/// restore of thousands of items meets them, and they say "please try again".
async fn create_with_retry(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
) -> kube::Result<DynamicObject> {
    let mut delay = Duration::from_millis(200);
    for _ in 0..5 {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(s))
                if matches!(s.code, 429 | 503 | 504)
                    || (s.code == 500 && s.reason == "ServerTimeout") =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    api.create(&PostParams::default(), obj).await
}

async fn restore_item(run: &Run, d: &Discovery, r: ItemRef, mut obj: Value) {
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
        return;
    };
    // Read-only kinds (componentstatuses) are listed by a backup of everything, but no
    // server takes them back: not a failure.
    if !target.can("create") {
        run.info(format!(
            "{what}: skipped: the cluster does not allow creating {}",
            r.resource
        ));
        return;
    }
    if let Err(e) = transform(run, &r, &mut obj).await {
        run.error(ns_ref, cluster, format!("{what}: {e}"));
        return;
    }
    let api: Api<DynamicObject> = match &scope_ns {
        Some(ns) if target.namespaced => {
            Api::namespaced_with(run.client.clone(), ns, &target.api_resource())
        }
        _ => Api::all_with(run.client.clone(), &target.api_resource()),
    };
    let desired: DynamicObject = match serde_json::from_value(obj.clone()) {
        Ok(o) => o,
        Err(e) => {
            run.error(ns_ref, cluster, format!("{what}: {e}"));
            return;
        }
    };
    let name = desired.name_any();
    // A create that finds the item, then a read that does not: a controller deleted it in
    // between (the EndpointSlice controller removes slices it does not own). Create again.
    let mut vanished = 0;
    let existing = loop {
        match create_with_retry(&api, &desired).await {
            Ok(_) => {
                run.restored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                run.info(format!("restored {what}"));
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&name).await {
                Ok(e) => break e,
                Err(kube::Error::Api(s)) if s.code == 404 && vanished < 3 => vanished += 1,
                Err(e) => {
                    run.error(
                        ns_ref,
                        cluster,
                        format!("{what}: exists, and cannot be read: {e}"),
                    );
                    return;
                }
            },
            // Validation runs before the existence check (a Service whose node port its
            // existing copy holds gets 422): an item that exists is handled as one.
            Err(e) => match api.get_opt(&name).await {
                Ok(Some(existing)) => break existing,
                _ => {
                    run.error(ns_ref, cluster, format!("{what}: {e}"));
                    return;
                }
            },
        }
    };
    if gr == "serviceaccounts" {
        // Merge: the secrets, pull secrets, labels and annotations the cluster's
        // copy lacks.
        match merge_service_account(&api, &existing, &obj).await {
            Ok(()) => {
                run.info(format!("merged {what} into the existing one"));
                run.restored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
            Err(e) => {
                run.warn(
                    ns_ref,
                    cluster,
                    format!("{what}: exists; merging it failed: {e}"),
                );
                return;
            }
        };
        return;
    }
    if run.spec.existing_resource_policy.as_deref() == Some("update") {
        let mut patch = obj.clone();
        if let Some(o) = patch.as_object_mut() {
            o.remove("status");
            o.remove("apiVersion");
            o.remove("kind");
        }
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                run.restored
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                run.info(format!("updated {what} to the backed-up version"));
            }
            Err(e) => run.warn(
                ns_ref,
                cluster,
                format!("{what}: exists, and updating it failed: {e}"),
            ),
        }
    } else {
        run.warn(ns_ref, cluster, format!("{what}: already exists in the cluster; not restored (existing resource policy none)"));
    }
}

async fn merge_service_account(
    api: &Api<DynamicObject>,
    existing: &DynamicObject,
    backed_up: &Value,
) -> Result<()> {
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
                }
            }
        }
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
    Ok(())
}

/// Wait until every CRD in the cluster reports Established (bounded by the setting).
async fn wait_crds_established(run: &Run) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(run.client.clone());
    let deadline = std::time::Instant::now() + run.settings.crd_wait;
    loop {
        let list = match api
            .list(
                &ListParams::default()
                    .labels(&format!("{RESTORE_NAME_LABEL}={}", run.restore_name)),
            )
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
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
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
        let p = Priorities::default();
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
    fn uuids_look_like_uuids() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
