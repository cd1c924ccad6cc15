//! The server's half of CSI snapshot data movement (Velero's
//! pkg/backup/actions/csi/pvc_action.go, pkg/restore/actions/csi/pvc_action.go and the
//! operations controllers): per claim, a VolumeSnapshot and a DataUpload; per restored
//! claim, a DataDownload; both waited on while the Backup or Restore says
//! `WaitingForPluginOperations`.
//!
//! Names are stable (a hash of the backup's or restore's UID and the claim's), so a run
//! taken over after a server's kill -9 finds what the killed one made, and never takes a
//! second snapshot of a claim whose DataUpload exists.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::{
    BACKUP_NAME, BACKUP_UID, DATAMOVER, MovedVolume, PVC_UID, RESTORE_NAME, RESTORE_UID, phase,
    stable_name, volume_snapshot, volume_snapshot_class, volume_snapshot_content,
};
use crate::backup::Item;
use crate::crd::{
    Backup, CsiSnapshotSpec, DataDownload, DataDownloadSpec, DataUpload, DataUploadSpec, Restore,
    TargetVolumeSpec,
};
use crate::error::{Error, Result};
use crate::record::label_value;

/// A claim the backup took, bound to a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Its volume.
    pub pv: String,
    /// Its class.
    pub storage_class: Option<String>,
    /// `Filesystem` or `Block`.
    pub volume_mode: String,
    /// Its annotations (the snapshot class may be named there).
    pub annotations: BTreeMap<String, String>,
}

/// The bound claims among a backup's items.
pub fn claims(items: &[Item]) -> Vec<Claim> {
    items
        .iter()
        .filter(|i| i.item.group_resource() == "persistentvolumeclaims")
        .filter_map(|i| {
            let o = &i.object;
            let s = |p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
            if s("/status/phase").as_deref() != Some("Bound") {
                return None;
            }
            Some(Claim {
                namespace: s("/metadata/namespace")?,
                name: s("/metadata/name")?,
                uid: s("/metadata/uid").unwrap_or_default(),
                pv: s("/spec/volumeName")?,
                storage_class: s("/spec/storageClassName"),
                volume_mode: s("/spec/volumeMode").unwrap_or_else(|| "Filesystem".into()),
                annotations: serde_json::from_value(
                    o.pointer("/metadata/annotations")
                        .cloned()
                        .unwrap_or(json!({})),
                )
                .unwrap_or_default(),
            })
        })
        .collect()
}

/// Annotation on a claim or a backup naming the snapshot class (Velero's, accepted too).
const CLASS_ANNOTATIONS: [&str; 2] = [
    "arca.dev/csi-volumesnapshot-class",
    "velero.io/csi-volumesnapshot-class",
];

/// The VolumeSnapshotClass for a claim of `driver`, by Velero's order
/// (pkg/util/csi/volume_snapshot.go GetVolumeSnapshotClass): the claim's annotation (its
/// class must be the driver's), the backup's `…-class_<driver>` annotation, the driver's
/// class labelled `…/csi-volumesnapshot-class`, its default class, its only class.
pub fn pick_class(
    driver: &str,
    claim_annotations: &BTreeMap<String, String>,
    backup_annotations: &BTreeMap<String, String>,
    classes: &[Value],
) -> std::result::Result<String, String> {
    let name = |c: &Value| {
        c.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let of_driver: Vec<&Value> = classes
        .iter()
        .filter(|c| c.get("driver").and_then(Value::as_str) == Some(driver))
        .collect();
    for a in CLASS_ANNOTATIONS {
        if let Some(want) = claim_annotations.get(a) {
            return match classes.iter().find(|c| name(c) == *want) {
                Some(c) if c.get("driver").and_then(Value::as_str) == Some(driver) => {
                    Ok(want.clone())
                }
                Some(_) => Err(format!(
                    "volume snapshot class {want} (annotation {a}) is not of driver {driver}"
                )),
                None => Err(format!(
                    "volume snapshot class {want} (annotation {a}) does not exist"
                )),
            };
        }
    }
    for a in CLASS_ANNOTATIONS {
        if let Some(want) = backup_annotations.get(&format!("{a}_{}", driver.to_lowercase())) {
            return Ok(want.clone());
        }
    }
    let has = |c: &Value, at: &str, key: &str| {
        c.pointer(at)
            .and_then(Value::as_object)
            .is_some_and(|m| m.contains_key(key))
    };
    for a in CLASS_ANNOTATIONS {
        if let Some(c) = of_driver.iter().find(|c| has(c, "/metadata/labels", a)) {
            return Ok(name(c));
        }
    }
    if let Some(c) = of_driver.iter().find(|c| {
        has(
            c,
            "/metadata/annotations",
            "snapshot.storage.kubernetes.io/is-default-class",
        )
    }) {
        return Ok(name(c));
    }
    match of_driver.as_slice() {
        [one] => Ok(name(one)),
        [] => Err(format!("no volume snapshot class for driver {driver}")),
        _ => Err(format!(
            "several volume snapshot classes for driver {driver} and none labelled arca.dev/csi-volumesnapshot-class"
        )),
    }
}

/// The driver of a volume: its CSI driver, else the provisioner that made it, else its
/// class's provisioner.
fn driver_of(pv: &PersistentVolume, class: Option<&StorageClass>) -> Option<String> {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.driver.clone())
        .or_else(|| {
            pv.annotations()
                .get("pv.kubernetes.io/provisioned-by")
                .cloned()
        })
        .or_else(|| class.map(|c| c.provisioner.clone()))
}

/// The DataUpload name of a claim in a backup.
pub fn upload_name(backup: &Backup, claim: &Claim) -> String {
    stable_name(
        &backup.name_any(),
        &format!("du/{}/{}", backup.uid().unwrap_or_default(), claim.uid),
    )
}

/// What a backup's data movement did, and what to say about it.
#[derive(Debug, Default)]
pub struct Moved {
    /// Every claim's result.
    pub volumes: Vec<MovedVolume>,
    /// Errors (the backup ends PartiallyFailed).
    pub errors: Vec<(String, String)>,
    /// Log lines.
    pub info: Vec<String>,
}

/// How long a backup or restore waits for a node agent to show itself (one just
/// installed, its pod starting) before it gives up moving volume data.
const AGENT_GRACE: Duration = Duration::from_secs(30);

/// Whether a node agent runs, asked once per backup or restore, when first needed.
#[derive(Debug, Default)]
pub struct AgentPresence(Option<bool>);

impl AgentPresence {
    /// Whether a node agent runs, or shows itself within `AGENT_GRACE` (its Lease, renewed
    /// from its start); the first answer is kept.
    pub async fn runs(&mut self, client: &Client, ns: &str) -> Result<bool> {
        if let Some(r) = self.0 {
            return Ok(r);
        }
        let until = tokio::time::Instant::now() + AGENT_GRACE;
        let r = loop {
            if super::agent::agent_running(client, ns, None).await? {
                break true;
            }
            if tokio::time::Instant::now() >= until {
                break false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        Ok(*self.0.insert(r))
    }
}

/// Take a snapshot of each claim and start its DataUpload (Velero's PVC backup item
/// action): returns the uploads started and the claims that could not be.
pub async fn start_uploads(
    client: &Client,
    ns: &str,
    backup: &Backup,
    claims: &[Claim],
    moved: &mut Moved,
) -> Result<Vec<(Claim, String)>> {
    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_class());
    let classes: Vec<Value> = match classes.list(&ListParams::default()).await {
        Ok(l) => l
            .items
            .into_iter()
            .map(|c| serde_json::to_value(c).expect("serializes"))
            .collect(),
        // No snapshot API in the cluster: no claim can move.
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(Error::kube("list volume snapshot classes", e)),
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let scs: Api<StorageClass> = Api::all(client.clone());
    let uploads: Api<DataUpload> = Api::namespaced(client.clone(), ns);
    let buid = backup.uid().unwrap_or_default();
    let bname = backup.name_any();
    let mut started = Vec::new();
    let mut agents = AgentPresence::default();
    for c in claims {
        let who = format!("claim {}/{}", c.namespace, c.name);
        let du_name = upload_name(backup, c);
        if uploads
            .get_opt(&du_name)
            .await
            .map_err(|e| Error::kube(format!("read DataUpload {ns}/{du_name}"), e))?
            .is_some()
        {
            // Started by a run that was stopped: its snapshot has moved on already.
            started.push((c.clone(), du_name));
            continue;
        }
        let Some(pv) = pvs
            .get_opt(&c.pv)
            .await
            .map_err(|e| Error::kube(format!("read volume {}", c.pv), e))?
        else {
            moved.errors.push((
                c.namespace.clone(),
                format!("{who}: its volume {} is gone", c.pv),
            ));
            continue;
        };
        let class = match &c.storage_class {
            Some(sc) => scs
                .get_opt(sc)
                .await
                .map_err(|e| Error::kube(format!("read storage class {sc}"), e))?,
            None => None,
        };
        let Some(driver) = driver_of(&pv, class.as_ref()) else {
            moved.info.push(format!(
                "{who}: volume {} has no CSI driver: its data is not moved",
                c.pv
            ));
            continue;
        };
        let snap_class = match pick_class(&driver, &c.annotations, backup.annotations(), &classes) {
            Ok(s) => s,
            Err(e)
                if classes
                    .iter()
                    .all(|k| k.get("driver").and_then(Value::as_str) != Some(&driver)) =>
            {
                moved
                    .info
                    .push(format!("{who}: {e}: its data is not moved"));
                continue;
            }
            Err(e) => {
                moved
                    .errors
                    .push((c.namespace.clone(), format!("{who}: {e}")));
                continue;
            }
        };
        // Nobody would take the upload: Velero's waits its whole prepare timeout (30 min)
        // and leaves the snapshot to clean. Refused before any snapshot is taken.
        if !agents.runs(client, ns).await? {
            moved.errors.push((
                c.namespace.clone(),
                format!(
                    "{who}: its data is not moved: no node agent runs in the cluster to move it (arca install --use-node-agent)"
                ),
            ));
            continue;
        }
        let vs_name = stable_name(&format!("arca-{}", c.name), &format!("vs/{buid}/{}", c.uid));
        let vs_api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &c.namespace, &volume_snapshot());
        let vs: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {
                "name": vs_name, "namespace": c.namespace,
                "labels": {BACKUP_NAME: label_value(&bname), BACKUP_UID: buid},
            },
            "spec": {
                "source": {"persistentVolumeClaimName": c.name},
                "volumeSnapshotClassName": snap_class,
            },
        }))
        .expect("a snapshot");
        match vs_api.create(&PostParams::default(), &vs).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                moved.errors.push((
                    c.namespace.clone(),
                    format!(
                        "{who}: creating its volume snapshot failed: {}",
                        crate::error::Error::kube("", e)
                    ),
                ));
                continue;
            }
        }
        let mut du = DataUpload::new(
            &du_name,
            DataUploadSpec {
                snapshot_type: "CSI".into(),
                csi_snapshot: Some(CsiSnapshotSpec {
                    volume_snapshot: vs_name.clone(),
                    storage_class: c.storage_class.clone(),
                    snapshot_class: Some(snap_class),
                    driver: Some(driver),
                }),
                source_pvc: c.name.clone(),
                datamover: Some(DATAMOVER.into()),
                data_mover_config: None,
                backup_storage_location: backup.spec.storage_location.clone().unwrap_or_default(),
                source_namespace: c.namespace.clone(),
                cancel: None,
                operation_timeout: Some(
                    backup
                        .spec
                        .csi_snapshot_timeout
                        .clone()
                        .unwrap_or_else(|| "10m0s".into()),
                ),
            },
        );
        du.metadata.namespace = Some(ns.to_string());
        du.metadata.labels = Some(BTreeMap::from([
            (BACKUP_NAME.to_string(), label_value(&bname)),
            (BACKUP_UID.to_string(), buid.clone()),
            (PVC_UID.to_string(), c.uid.clone()),
        ]));
        du.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "arca.dev/v1".into(),
                kind: "Backup".into(),
                name: bname.clone(),
                uid: buid.clone(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        match uploads.create(&PostParams::default(), &du).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                // Velero deletes the snapshot when its upload cannot be made.
                let _ = vs_api.delete(&vs_name, &Default::default()).await;
                moved.errors.push((
                    c.namespace.clone(),
                    format!(
                        "{who}: creating its DataUpload failed: {}",
                        Error::kube("", e)
                    ),
                ));
                continue;
            }
        }
        moved
            .info
            .push(format!("{who}: snapshot {vs_name}, DataUpload {du_name}"));
        started.push((c.clone(), du_name));
    }
    Ok(started)
}

/// Wait until every volume snapshot this backup made in `namespaces` is taken: its
/// content has a handle (Velero's WaitUntilVSCHandleIsReady, which post hooks wait for),
/// or it is ready, or the exposer has taken it over already. What was not taken at
/// `timeout`, as warnings. Errors of the API server are retried until then.
pub async fn wait_snapshots_taken(
    client: &Client,
    backup_uid: &str,
    namespaces: &BTreeSet<String>,
    timeout: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let waiting = match snapshots_not_taken(client, backup_uid, namespaces).await {
            Ok(w) => w,
            Err(e) => vec![format!("volume snapshots could not be read: {e}")],
        };
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            return waiting
                .into_iter()
                .map(|w| format!("{w}: not taken within the CSI snapshot timeout"))
                .collect();
        }
        // No watch spans several namespaces' snapshots and their contents; a snapshot is
        // taken in well under a second by most drivers.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The snapshots not yet taken.
async fn snapshots_not_taken(
    client: &Client,
    backup_uid: &str,
    namespaces: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_content());
    let mut waiting = Vec::new();
    for n in namespaces {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), n, &volume_snapshot());
        let list = api
            .list(&ListParams::default().labels(&format!("{BACKUP_UID}={backup_uid}")))
            .await
            .map_err(|e| Error::kube(format!("list volume snapshots in {n}"), e))?;
        for vs in list.items {
            let who = format!("volume snapshot {n}/{}", vs.name_any());
            if vs.data.pointer("/status/readyToUse") == Some(&json!(true)) {
                continue;
            }
            // An error the snapshotter may yet retry past: waited on, as Velero's
            // WaitUntilVSCHandleIsReady does, and named if the wait ends.
            let who = match vs
                .data
                .pointer("/status/error/message")
                .and_then(Value::as_str)
            {
                Some(m) => format!("{who} (its error: {m})"),
                None => who,
            };
            let content = vs
                .data
                .pointer("/status/boundVolumeSnapshotContentName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            let handle = match content {
                Some(c) => contents
                    .get_opt(c)
                    .await
                    .map_err(|e| Error::kube(format!("read snapshot content {c}"), e))?
                    .and_then(|c| c.data.pointer("/status/snapshotHandle").cloned()),
                None => None,
            };
            if handle.is_none() {
                waiting.push(who);
            }
        }
    }
    Ok(waiting)
}

/// Counts of finished operations: (completed, failed).
pub fn tally<'a>(phases: impl IntoIterator<Item = &'a str>) -> (i64, i64, bool) {
    let (mut done, mut failed, mut all) = (0, 0, true);
    for p in phases {
        match p {
            phase::COMPLETED => done += 1,
            phase::FAILED | phase::CANCELED => failed += 1,
            _ => all = false,
        }
    }
    (done, failed, all)
}

/// How long work canceled at the item operation timeout is given to say it ended.
const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// Wait until every DataUpload (or DataDownload) of `selector` has ended, calling
/// `on_tally` when the counts change; past `timeout`, the rest are canceled (Velero's
/// itemOperationTimeout) and waited on a little longer. Followed by a watch of the label
/// (one connection; a look per change, not a list a second).
pub async fn wait_all<K, F>(
    client: &Client,
    ns: &str,
    selector: &str,
    expected: usize,
    timeout: Duration,
    mut on_tally: impl FnMut(i64, i64) -> F,
) -> Result<Vec<K>>
where
    F: std::future::Future<Output = ()>,
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + serde::de::DeserializeOwned + serde::Serialize,
    K: std::fmt::Debug + Send + Sync + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let phase_of = |k: &K| {
        serde_json::to_value(k)
            .ok()
            .and_then(|v| {
                v.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let (store, writer) = reflector::store::<K>();
    let seen = || -> Vec<K> { store.state().iter().map(|k| (**k).clone()).collect() };
    let events = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().labels(selector)),
    )
    .default_backoff();
    let mut events = std::pin::pin!(events);
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut canceled = false;
    let mut last = (-1, -1);
    let mut ready = false;
    let mut failing = None;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => ready = true,
                Some(Ok(_)) => {}
                // Retried with backoff; the store keeps what it had meanwhile.
                Some(Err(e)) => {
                    tracing::warn!("watch {} of {selector}: {e}", K::plural(&()));
                    failing = Some(e.to_string());
                    continue;
                }
                None => return Err(Error::Invalid(format!("the watch of {} of {selector} ended", K::plural(&())))),
            },
            _ = tokio::time::sleep_until(deadline) => {
                // Never seen at all: an error, not an empty (and so "all ended") list.
                if !ready {
                    return Err(Error::Invalid(format!(
                        "could not follow the {} of {selector}: {}",
                        K::plural(&()),
                        failing.unwrap_or_else(|| "no answer".into())
                    )));
                }
                let items = seen();
                if canceled {
                    return Ok(items);
                }
                canceled = true;
                for k in &items {
                    if !phase::terminal(&phase_of(k)) {
                        let _ = api
                            .patch(
                                &k.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(json!({"spec": {"cancel": true}})),
                            )
                            .await;
                    }
                }
                deadline = tokio::time::Instant::now() + CANCEL_GRACE;
                continue;
            }
        }
        if !ready {
            continue;
        }
        let items = seen();
        let phases: Vec<String> = items.iter().map(phase_of).collect();
        let (done, failed, all) = tally(phases.iter().map(String::as_str));
        if (done, failed) != last {
            last = (done, failed);
            on_tally(done, failed).await;
        }
        if all && items.len() >= expected {
            return Ok(items);
        }
    }
}

/// Cancel every DataUpload or DataDownload of `selector` that has not ended (a canceled
/// or deleted backup or restore).
pub async fn cancel_all<K>(client: &Client, ns: &str, selector: &str) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + serde::de::DeserializeOwned + serde::Serialize,
    K: std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut failed = None;
    for k in api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| Error::kube(format!("list {} of {selector}", K::plural(&())), e))?
        .items
    {
        let v = serde_json::to_value(&k).expect("serializes");
        let p = v
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !phase::terminal(p)
            && let Err(e) = api
                .patch(
                    &k.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"cancel": true}})),
                )
                .await
        {
            // The others are canceled all the same; the first failure is reported.
            failed.get_or_insert(Error::kube(format!("cancel {}", k.name_any()), e));
        }
    }
    failed.map_or(Ok(()), Err)
}

/// What the record keeps of each upload.
pub fn results(started: &[(Claim, String)], uploads: &[DataUpload]) -> Vec<MovedVolume> {
    let fmt = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.to_string())
    };
    started
        .iter()
        .map(|(c, du_name)| {
            let du = uploads.iter().find(|u| u.name_any() == *du_name);
            let st = du.and_then(|u| u.status.clone()).unwrap_or_default();
            MovedVolume {
                method: super::BY_DATA_MOVER.into(),
                namespace: c.namespace.clone(),
                pvc: c.name.clone(),
                pv: Some(c.pv.clone()),
                storage_class: c.storage_class.clone(),
                volume_mode: c.volume_mode.clone(),
                data_upload: du_name.clone(),
                phase: st.phase.clone().unwrap_or_else(|| "Missing".into()),
                snapshot_id: st.snapshot_id.clone(),
                bytes: st.progress.as_ref().and_then(|p| p.total_bytes),
                incremental_bytes: st.incremental_bytes,
                node: st.node.clone(),
                message: st.message.clone(),
                started: fmt(&st.start_timestamp),
                completed: fmt(&st.completion_timestamp),
                ..Default::default()
            }
        })
        .collect()
}

/// The selector label a restored claim gets, and its volume with it.
pub fn restore_selector(restore_uid: &str, target_ns: &str, pvc: &str) -> String {
    label_value(&stable_name(
        &format!("{target_ns}.{pvc}"),
        &format!("{restore_uid}/{target_ns}/{pvc}"),
    ))
}

/// The DataDownload of one restored claim (Velero's restoreFromDataUploadResult).
pub fn download(
    ns: &str,
    restore: &Restore,
    backup_location: &str,
    v: &MovedVolume,
    target_ns: &str,
) -> DataDownload {
    let ruid = restore.uid().unwrap_or_default();
    let rname = restore.name_any();
    let name = stable_name(&rname, &format!("dd/{ruid}/{}/{}", v.namespace, v.pvc));
    let mut dd = DataDownload::new(
        &name,
        DataDownloadSpec {
            target_volume: TargetVolumeSpec {
                pvc: v.pvc.clone(),
                pv: None,
                namespace: target_ns.to_string(),
            },
            backup_storage_location: backup_location.to_string(),
            datamover: Some(DATAMOVER.into()),
            snapshot_id: v.snapshot_id.clone().unwrap_or_default(),
            source_namespace: v.namespace.clone(),
            data_mover_config: None,
            cancel: None,
            operation_timeout: None,
            snapshot_size: v.bytes,
        },
    );
    dd.metadata.namespace = Some(ns.to_string());
    dd.metadata.labels = Some(BTreeMap::from([
        (RESTORE_NAME.to_string(), label_value(&rname)),
        (RESTORE_UID.to_string(), ruid.clone()),
    ]));
    dd.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "arca.dev/v1".into(),
            kind: "Restore".into(),
            name: rname,
            uid: ruid,
            controller: Some(true),
            ..Default::default()
        },
    ]);
    dd
}

/// Create a DataDownload, or leave the one a stopped run made.
pub async fn create_download(client: &Client, dd: &DataDownload) -> Result<()> {
    let ns = dd.metadata.namespace.clone().unwrap_or_default();
    let api: Api<DataDownload> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), dd).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("create DataDownload {ns}/{}", dd.name_any()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels, "annotations": annotations}, "driver": driver})
    }

    #[test]
    fn the_snapshot_class_is_picked_as_velero_picks_it() {
        let none = BTreeMap::new();
        let classes = vec![
            class("a", "d1", json!({}), json!({})),
            class(
                "b",
                "d1",
                json!({"velero.io/csi-volumesnapshot-class": "true"}),
                json!({}),
            ),
            class("c", "d2", json!({}), json!({})),
            class(
                "d",
                "d3",
                json!({}),
                json!({"snapshot.storage.kubernetes.io/is-default-class": "true"}),
            ),
            class("e", "d3", json!({}), json!({})),
            class("f", "d4", json!({}), json!({})),
            class("g", "d4", json!({}), json!({})),
        ];
        assert_eq!(
            pick_class("d1", &none, &none, &classes).unwrap(),
            "b",
            "labelled"
        );
        assert_eq!(
            pick_class("d2", &none, &none, &classes).unwrap(),
            "c",
            "the only one"
        );
        assert_eq!(
            pick_class("d3", &none, &none, &classes).unwrap(),
            "d",
            "the default"
        );
        assert!(
            pick_class("d4", &none, &none, &classes).is_err(),
            "two, none chosen"
        );
        assert!(pick_class("d5", &none, &none, &classes).is_err(), "none");
        let on_claim = BTreeMap::from([(
            "arca.dev/csi-volumesnapshot-class".to_string(),
            "a".to_string(),
        )]);
        assert_eq!(pick_class("d1", &on_claim, &none, &classes).unwrap(), "a");
        assert!(
            pick_class("d2", &on_claim, &none, &classes).is_err(),
            "another driver's class"
        );
        let on_backup = BTreeMap::from([(
            "velero.io/csi-volumesnapshot-class_d4".to_string(),
            "g".to_string(),
        )]);
        assert_eq!(pick_class("d4", &none, &on_backup, &classes).unwrap(), "g");
    }

    #[test]
    fn only_bound_claims_move() {
        let item = |phase: &str| Item {
            item: crate::record::ItemRef {
                group: String::new(),
                version: "v1".into(),
                resource: "persistentvolumeclaims".into(),
                kind: "PersistentVolumeClaim".into(),
                namespace: Some("app".into()),
                name: "data".into(),
            },
            object: json!({
                "metadata": {"name": "data", "namespace": "app", "uid": "u1"},
                "spec": {"volumeName": "pv-1", "storageClassName": "fast", "volumeMode": "Block"},
                "status": {"phase": phase},
            }),
        };
        let got = claims(&[item("Bound"), item("Pending")]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pv, "pv-1");
        assert_eq!(got[0].volume_mode, "Block");
    }

    #[test]
    fn operations_are_tallied_until_all_end() {
        assert_eq!(tally(["Completed", "Failed", "Canceled"]), (1, 2, true));
        assert_eq!(tally(["Completed", "InProgress"]), (1, 0, false));
        assert_eq!(tally(["", "New"]), (0, 0, false));
    }

    #[test]
    fn restore_selectors_are_valid_label_values_and_stable() {
        let a = restore_selector("uid", &"n".repeat(60), &"p".repeat(60));
        assert!(a.len() <= 63);
        assert_eq!(a, restore_selector("uid", &"n".repeat(60), &"p".repeat(60)));
        assert_ne!(
            a,
            restore_selector("uid2", &"n".repeat(60), &"p".repeat(60))
        );
    }
}
