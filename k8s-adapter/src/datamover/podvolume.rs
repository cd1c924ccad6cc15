//! File-system backup of pod volumes (Velero's pkg/podvolume, internal/volumehelper and
//! pkg/restore/actions/pod_volume_restore_action.go).
//!
//! Backup: each running pod taken chooses its volumes ([`volumes_to_back_up`]: opt-in by
//! the `backup-volumes` annotation, or all but the `backup-volumes-excludes` with
//! `defaultVolumesToFsBackup`; never host paths, secrets, config maps, projected or
//! downward-API volumes); a PodVolumeBackup each, which the node agent of the pod's node
//! takes, reading the live volume under the host's pods directory. A claim shared by two
//! pods is read once. Claims read this way take no CSI snapshot.
//!
//! Restore: a restored pod with such volumes gets the `restore-wait` init container first
//! ([`add_restore_wait`]); once the pod exists, a PodVolumeRestore per volume, which the
//! node agent of the pod's node writes while the init container holds the pod, then
//! leaves a done file that lets the init container end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{
    BACKUP_NAME, BACKUP_UID, BY_POD_VOLUME_BACKUP, MovedVolume, PVC_UID, RESTORE_NAME, RESTORE_UID,
    stable_name,
};
use crate::backup::Item;
use crate::crd::{
    Backup, PodRef, PodVolumeBackup, PodVolumeBackupSpec, PodVolumeRestore, PodVolumeRestoreSpec,
    Restore,
};
use crate::error::{Error, Result};
use crate::record::label_value;

/// Pod annotation: the volumes to back up, comma-separated (Velero's, accepted too).
pub const BACKUP_VOLUMES: [&str; 2] = [
    "backup.arca.dev/backup-volumes",
    "backup.velero.io/backup-volumes",
];
/// Pod annotation: the volumes not to back up with `defaultVolumesToFsBackup`.
pub const BACKUP_VOLUMES_EXCLUDES: [&str; 2] = [
    "backup.arca.dev/backup-volumes-excludes",
    "backup.velero.io/backup-volumes-excludes",
];
/// The init container that holds a restored pod until its volumes are written.
pub const RESTORE_WAIT: &str = "restore-wait";
/// Velero's older name for it: removed from restored pods too.
const LEGACY_WAIT: &str = "restic-wait";
/// Where `restore-wait` mounts each volume: `/restores/<volume>`.
pub const RESTORES_DIR: &str = "/restores";
/// The directory in a restored volume holding the done file `<restore UID>`.
pub const DONE_DIR: &str = ".arca";
/// Label on PodVolumeRestores: the restored pod's UID.
pub const POD_UID: &str = "arca.dev/pod-uid";
/// Annotation on PodVolumeBackups of claims: the claim's name (Velero's `velero.io/pvc-name`).
pub const PVC_NAME: &str = "arca.dev/pvc-name";
/// Backup or restore annotation: how long its pod volumes may take (Velero's, accepted too).
const TIMEOUT_ANNOTATIONS: [&str; 2] = [
    "arca.dev/pod-volume-timeout",
    "velero.io/pod-volume-timeout",
];
/// Velero's `--fs-backup-timeout` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// The uploader named in PodVolumeBackups and PodVolumeRestores.
pub const UPLOADER: &str = "arca";

fn csv(s: Option<&str>) -> impl Iterator<Item = &str> {
    s.into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A pod volume chosen for file-system backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The volume's name in the pod.
    pub volume: String,
    /// The claim, when it is one.
    pub pvc: Option<String>,
}

/// The volumes of a pod (its JSON) to back up by file system, and a warning for each one
/// chosen that cannot be (Velero's ShouldPerformFSBackup, then BackupPodVolumes' checks).
/// `pvcs_included`: whether the backup takes claims at all.
pub fn volumes_to_back_up(
    pod: &Value,
    default_fs: bool,
    pvcs_included: bool,
) -> (Vec<Chosen>, Vec<String>) {
    let ann = |keys: &[&str]| -> BTreeSet<String> {
        keys.iter()
            .flat_map(|k| {
                csv(pod
                    .pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1")))
                    .and_then(Value::as_str))
            })
            .map(str::to_string)
            .collect()
    };
    let opted_in = ann(&BACKUP_VOLUMES);
    let excluded = ann(&BACKUP_VOLUMES_EXCLUDES);
    let used = |field: &str| -> BTreeSet<String> {
        pod.pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c.get(field).and_then(Value::as_array).into_iter().flatten())
            .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let mounted = used("volumeMounts");
    let devices = used("volumeDevices");
    let pod_name = format!(
        "{}/{}",
        pod.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        pod.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    let (mut chosen, mut warnings) = (Vec::new(), Vec::new());
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = v.get("name").and_then(Value::as_str) else {
            continue;
        };
        let pvc = v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str);
        // Never: no data of the pod's own, or not the backup's to take.
        let kind_skipped = [
            "hostPath",
            "secret",
            "configMap",
            "projected",
            "downwardAPI",
        ]
        .iter()
        .any(|k| v.get(*k).is_some())
            || (pvc.is_some() && !pvcs_included)
            || name.starts_with("default-token");
        if kind_skipped {
            continue;
        }
        let wanted = if default_fs {
            !excluded.contains(name)
        } else {
            opted_in.contains(name)
        };
        if !wanted {
            continue;
        }
        if devices.contains(name) {
            warnings.push(format!(
                "volume {name} of pod {pod_name}: not backed up: a block volume cannot be backed up by file system (use --snapshot-move-data)"
            ));
            continue;
        }
        if !mounted.contains(name) {
            warnings.push(format!(
                "volume {name} of pod {pod_name}: not backed up: no container mounts it"
            ));
            continue;
        }
        chosen.push(Chosen {
            volume: name.to_string(),
            pvc: pvc.map(str::to_string),
        });
    }
    (chosen, warnings)
}

/// Why a pod's volumes cannot be read now (Velero's IsPodRunning), or None.
pub fn not_running(pod: &Value) -> Option<&'static str> {
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        Some("the pod is not scheduled")
    } else if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        Some("the pod is not running")
    } else if pod.pointer("/metadata/deletionTimestamp").is_some() {
        Some("the pod is being deleted")
    } else {
        None
    }
}

/// How long a backup or restore waits for its pod volumes: its annotation, else its item
/// operation timeout, else 4 hours (Velero's `--fs-backup-timeout`).
pub fn timeout(
    annotations: &BTreeMap<String, String>,
    item_operation_timeout: Option<&str>,
) -> Duration {
    TIMEOUT_ANNOTATIONS
        .iter()
        .find_map(|k| annotations.get(*k))
        .and_then(|t| crate::backup::parse_go_std(t))
        .or_else(|| item_operation_timeout.and_then(crate::backup::parse_go_std))
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// A backup's pod volumes: those started (with their PodVolumeBackup's name), and the
/// claims chosen (which then take no CSI snapshot, started or not).
#[derive(Debug, Default)]
pub struct Started {
    /// (namespace, pod, pod UID, node, chosen volume, claim's volume, PodVolumeBackup).
    pub backups: Vec<(String, String, Chosen, Option<String>, String)>,
    /// Every claim some pod chose, as (namespace, claim).
    pub claims: BTreeSet<(String, String)>,
    /// Warnings, by namespace.
    pub warnings: Vec<(String, String)>,
    /// Errors, by namespace.
    pub errors: Vec<(String, String)>,
    /// Progress notes for the log.
    pub info: Vec<String>,
}

/// Choose each taken pod's volumes and create their PodVolumeBackups (named from the
/// backup's UID, pod's UID and volume: a rerun after a kill finds them).
pub async fn start_backups(
    client: &Client,
    ns: &str,
    backup: &Backup,
    items: &[Item],
    pvcs_included: bool,
) -> Result<Started> {
    let default_fs = backup.spec.default_volumes_to_fs_backup == Some(true);
    let mut out = Started::default();
    let pods: Vec<&Value> = items
        .iter()
        .filter(|i| i.item.group_resource() == "pods")
        .map(|i| &i.object)
        .collect();
    let claim_objects: BTreeMap<(String, String), &Value> = items
        .iter()
        .filter(|i| i.item.group_resource() == "persistentvolumeclaims")
        .map(|i| {
            (
                (
                    i.item.namespace.clone().unwrap_or_default(),
                    i.item.name.clone(),
                ),
                &i.object,
            )
        })
        .collect();
    let api: Api<PodVolumeBackup> = Api::namespaced(client.clone(), ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let bname = backup.name_any();
    let buid = backup.metadata.uid.clone().unwrap_or_default();
    let mut agents: BTreeMap<String, bool> = BTreeMap::new();
    for pod in pods {
        let s = |p: &str| {
            pod.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (pns, pname, puid, node) = (
            s("/metadata/namespace"),
            s("/metadata/name"),
            s("/metadata/uid"),
            s("/spec/nodeName"),
        );
        let (chosen, warnings) = volumes_to_back_up(pod, default_fs, pvcs_included);
        out.warnings
            .extend(warnings.into_iter().map(|w| (pns.clone(), w)));
        for c in &chosen {
            if let Some(claim) = &c.pvc {
                out.claims.insert((pns.clone(), claim.clone()));
            }
        }
        if chosen.is_empty() {
            continue;
        }
        if let Some(why) = not_running(pod) {
            for c in &chosen {
                out.warnings.push((
                    pns.clone(),
                    format!(
                        "volume {} of pod {pns}/{pname}: not backed up: {why}",
                        c.volume
                    ),
                ));
            }
            continue;
        }
        // Velero's IsRunningInNode: nobody would read them, and the backup would wait
        // for its whole timeout.
        let agent = match agents.get(&node) {
            Some(a) => *a,
            None => {
                let a = super::agent::agent_running(client, ns, Some(&node)).await?;
                agents.insert(node.clone(), a);
                a
            }
        };
        if !agent {
            for c in &chosen {
                out.errors.push((
                    pns.clone(),
                    format!(
                        "volume {} of pod {pns}/{pname}: not backed up: no node agent runs on node {node} (arca install --use-node-agent)",
                        c.volume
                    ),
                ));
            }
            continue;
        }
        for c in chosen {
            let mut pv = None;
            let mut pvc_uid = None;
            if let Some(claim) = &c.pvc {
                // One pod reads a shared claim (Velero's tracker).
                if out
                    .backups
                    .iter()
                    .any(|(n, _, b, _, _)| *n == pns && b.pvc.as_ref() == Some(claim))
                {
                    out.info.push(format!(
                        "volume {} of pod {pns}/{pname}: claim {claim} is backed up from another pod",
                        c.volume
                    ));
                    continue;
                }
                let obj = claim_objects.get(&(pns.clone(), claim.clone()));
                pv = obj
                    .and_then(|o| o.pointer("/spec/volumeName"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                pvc_uid = obj
                    .and_then(|o| o.pointer("/metadata/uid"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let Some(pv_name) = &pv
                    && let Some(p) = pvs
                        .get_opt(pv_name)
                        .await
                        .map_err(|e| Error::kube(format!("read volume {pv_name}"), e))?
                    && p.spec.as_ref().is_some_and(|s| s.host_path.is_some())
                {
                    out.warnings.push((
                        pns.clone(),
                        format!(
                            "volume {} of pod {pns}/{pname}: not backed up: claim {claim} is bound to a hostPath volume",
                            c.volume
                        ),
                    ));
                    continue;
                }
            }
            let name = stable_name(
                &format!("{bname}-{pname}-{}", c.volume),
                &format!("{buid}/{puid}/{}", c.volume),
            );
            let mut labels = BTreeMap::from([
                (BACKUP_NAME.to_string(), label_value(&bname)),
                (BACKUP_UID.to_string(), buid.clone()),
            ]);
            let mut annotations = BTreeMap::new();
            let mut tags = BTreeMap::from([
                ("backup".to_string(), bname.clone()),
                ("backup-uid".to_string(), buid.clone()),
                ("pod".to_string(), pname.clone()),
                ("pod-uid".to_string(), puid.clone()),
                ("ns".to_string(), pns.clone()),
                ("volume".to_string(), c.volume.clone()),
            ]);
            if let Some(claim) = &c.pvc {
                annotations.insert(PVC_NAME.to_string(), claim.clone());
                if let Some(u) = &pvc_uid {
                    labels.insert(PVC_UID.to_string(), u.clone());
                    tags.insert("pvc-uid".to_string(), u.clone());
                }
            }
            let mut pvb = PodVolumeBackup::new(
                &name,
                PodVolumeBackupSpec {
                    node: node.clone(),
                    pod: PodRef {
                        kind: Some("Pod".into()),
                        namespace: pns.clone(),
                        name: pname.clone(),
                        uid: puid.clone(),
                    },
                    volume: c.volume.clone(),
                    backup_storage_location: backup
                        .spec
                        .storage_location
                        .clone()
                        .unwrap_or_default(),
                    repo_identifier: None,
                    uploader_type: Some(UPLOADER.into()),
                    tags: Some(tags),
                    uploader_settings: None,
                    cancel: None,
                },
            );
            pvb.metadata.namespace = Some(ns.to_string());
            pvb.metadata.labels = Some(labels);
            pvb.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
            pvb.metadata.owner_references = Some(vec![owner("Backup", &bname, &buid)]);
            match api.create(&PostParams::default(), &pvb).await {
                Ok(_) => out.info.push(format!(
                    "volume {} of pod {pns}/{pname}: PodVolumeBackup {name} on node {node}",
                    c.volume
                )),
                // A rerun of a killed backup: the same one.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    return Err(Error::kube(
                        format!("create PodVolumeBackup {ns}/{name}"),
                        e,
                    ));
                }
            }
            out.backups.push((pns.clone(), pname.clone(), c, pv, name));
        }
    }
    Ok(out)
}

fn owner(
    kind: &str,
    name: &str,
    uid: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "arca.dev/v1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// What the record keeps of each PodVolumeBackup.
pub fn results(started: &Started, done: &[PodVolumeBackup]) -> Vec<MovedVolume> {
    let fmt = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.to_string())
    };
    // Those a killed run of the backup made for pods gone since are kept too: their
    // snapshots are the backup's, forgotten with it.
    let orphans: Vec<_> = done
        .iter()
        .filter(|b| !started.backups.iter().any(|(.., n)| *n == b.name_any()))
        .map(|b| {
            (
                b.spec.pod.namespace.clone(),
                b.spec.pod.name.clone(),
                Chosen {
                    volume: b.spec.volume.clone(),
                    pvc: b.annotations().get(PVC_NAME).cloned(),
                },
                None,
                b.name_any(),
            )
        })
        .collect();
    started
        .backups
        .iter()
        .chain(orphans.iter())
        .map(|(pns, pod, c, pv, name)| {
            let b = done.iter().find(|b| b.name_any() == *name);
            let st = b.and_then(|b| b.status.clone()).unwrap_or_default();
            MovedVolume {
                method: BY_POD_VOLUME_BACKUP.into(),
                namespace: pns.clone(),
                pvc: c.pvc.clone().unwrap_or_default(),
                pod: Some(pod.clone()),
                pod_volume: Some(c.volume.clone()),
                pod_volume_backup: Some(name.clone()),
                pv: pv.clone(),
                volume_mode: "Filesystem".into(),
                phase: st.phase.clone().unwrap_or_else(|| "Missing".into()),
                snapshot_id: st.snapshot_id.clone(),
                bytes: st.progress.as_ref().and_then(|p| p.total_bytes),
                incremental_bytes: st.incremental_bytes,
                node: b.map(|b| b.spec.node.clone()),
                message: st.message.clone(),
                started: fmt(&st.start_timestamp),
                completed: fmt(&st.completion_timestamp),
                ..Default::default()
            }
        })
        .collect()
}

/// The restore-wait init container for `volumes` of a pod restored by `restore_uid`
/// (Velero's restore helper): mounts each at `/restores/<volume>` and waits for the done
/// files; it runs as the pod's first container does.
pub fn restore_wait_container(
    image: &str,
    restore_uid: &str,
    volumes: &[String],
    security: Option<&Value>,
) -> Value {
    let mut c = json!({
        "name": RESTORE_WAIT,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/bin/arca", "node-agent", "restore-wait", restore_uid],
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "100m", "memory": "128Mi"},
        },
        "volumeMounts": volumes.iter().map(|v| json!({"name": v, "mountPath": format!("{RESTORES_DIR}/{v}")})).collect::<Vec<_>>(),
    });
    if let Some(s) = security {
        c["securityContext"] = s.clone();
    }
    c
}

/// Give a restored pod its restore-wait init container, first, for `volumes` (none: the
/// pod only loses a stale one it was backed up with). It runs as the pod's first
/// container; with neither a user of its own nor one from the pod while the pod asks for
/// a non-root user, as user 1000 (Velero's default), since the arca image runs as root.
pub fn add_restore_wait(pod: &mut Value, volumes: &[String], image: &str, restore_uid: &str) {
    let non_root_unset = pod.pointer("/spec/securityContext/runAsNonRoot") == Some(&json!(true))
        && pod.pointer("/spec/securityContext/runAsUser").is_none();
    let security = pod
        .pointer("/spec/containers/0/securityContext")
        .cloned()
        .or_else(|| {
            non_root_unset.then(|| {
                json!({"runAsUser": 1000, "runAsNonRoot": true, "allowPrivilegeEscalation": false,
                       "capabilities": {"drop": ["ALL"]}})
            })
        });
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut inits: Vec<Value> = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    inits.retain(|c| {
        !matches!(
            c.get("name").and_then(Value::as_str),
            Some(RESTORE_WAIT | LEGACY_WAIT)
        )
    });
    if !volumes.is_empty() {
        inits.insert(
            0,
            restore_wait_container(image, restore_uid, volumes, security.as_ref()),
        );
    }
    if inits.is_empty() {
        spec.remove("initContainers");
    } else {
        spec.insert("initContainers".into(), Value::Array(inits));
    }
}

/// The restore-wait image: the plugin ConfigMap's `image` (Velero's: labelled
/// `arca.dev/plugin-config` and `arca.dev/pod-volume-restore: RestoreItemAction`, or the
/// `velero.io/` labels), else the node agent DaemonSet's image, else this process's own.
pub async fn restore_wait_image(client: &Client, ns: &str) -> Result<Option<String>> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for prefix in ["arca.dev", "velero.io"] {
        let sel = format!("{prefix}/plugin-config,{prefix}/pod-volume-restore=RestoreItemAction");
        let list = cms
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(|e| Error::kube(format!("list ConfigMaps {sel} in {ns}"), e))?;
        if let Some(image) = list
            .items
            .iter()
            .find_map(|c| c.data.as_ref()?.get("image").cloned())
        {
            return Ok(Some(image));
        }
    }
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    if let Some(d) = ds
        .get_opt(crate::manage::NODE_AGENT_NAME)
        .await
        .map_err(|e| Error::kube(format!("read DaemonSet {ns}/node-agent"), e))?
        && let Some(i) = d
            .spec
            .template
            .spec
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
    {
        return Ok(Some(i));
    }
    Ok(super::agent::own_image(client, ns).await)
}

/// The restorable pod volumes of a backup record, by (namespace, pod): volume → entry.
pub fn by_pod(
    volumes: &[MovedVolume],
) -> BTreeMap<(String, String), BTreeMap<String, MovedVolume>> {
    let mut out: BTreeMap<(String, String), BTreeMap<String, MovedVolume>> = BTreeMap::new();
    for v in volumes
        .iter()
        .filter(|v| v.by_pod_volume_backup() && v.restorable())
    {
        if let (Some(p), Some(vol)) = (&v.pod, &v.pod_volume) {
            out.entry((v.namespace.clone(), p.clone()))
                .or_default()
                .insert(vol.clone(), v.clone());
        }
    }
    out
}

/// A PodVolumeRestore of one volume of a restored pod (its UID: the pod just created).
pub fn pod_volume_restore(
    ns: &str,
    restore: &Restore,
    location: &str,
    pod: &PodRef,
    v: &MovedVolume,
) -> PodVolumeRestore {
    let rname = restore.name_any();
    let ruid = restore.metadata.uid.clone().unwrap_or_default();
    let volume = v.pod_volume.clone().unwrap_or_default();
    let name = stable_name(
        &format!("{rname}-{}-{volume}", pod.name),
        &format!("{ruid}/{}/{volume}", pod.uid),
    );
    let mut r = PodVolumeRestore::new(
        &name,
        PodVolumeRestoreSpec {
            pod: pod.clone(),
            volume,
            backup_storage_location: location.to_string(),
            repo_identifier: None,
            uploader_type: Some(UPLOADER.into()),
            snapshot_id: v.snapshot_id.clone().unwrap_or_default(),
            source_namespace: v.namespace.clone(),
            uploader_settings: None,
            cancel: None,
        },
    );
    r.metadata.namespace = Some(ns.to_string());
    r.metadata.labels = Some(BTreeMap::from([
        (RESTORE_NAME.to_string(), label_value(&rname)),
        (RESTORE_UID.to_string(), ruid.clone()),
        (POD_UID.to_string(), pod.uid.clone()),
    ]));
    r.metadata.owner_references = Some(vec![owner("Restore", &rname, &ruid)]);
    r
}

/// Whether a pod waits in the restore-wait container of `restore_uid`: a killed run of
/// that restore created it, and its volumes are that restore's to write.
pub fn waits_for(pod: &k8s_openapi::api::core::v1::Pod, restore_uid: &str) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|i| i.first())
        .is_some_and(|c| {
            c.name == RESTORE_WAIT
                && c.command
                    .as_ref()
                    .and_then(|c| c.last())
                    .map(String::as_str)
                    == Some(restore_uid)
        })
}

/// Create a PodVolumeRestore; one made by a killed run of the restore is kept.
pub async fn create_restore(client: &Client, r: &PodVolumeRestore) -> Result<()> {
    let ns = r.metadata.namespace.clone().unwrap_or_default();
    let api: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams::default(), r).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("create PodVolumeRestore {ns}/{}", r.name_any()),
            e,
        )),
    }
}

/// Leave the done file of `restore_uid` in a written volume (Velero's writeCompletionMark),
/// open to every user: a restore-wait container that runs as the application's user
/// removes it.
pub fn mark_done(volume_root: &Path, restore_uid: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = volume_root.join(DONE_DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let f = dir.join(restore_uid);
    std::fs::write(&f, b"")?;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666))
}

/// Whether every volume under `root` holds the done file of `restore_uid`.
pub fn all_done(root: &Path, restore_uid: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(root) else {
        return false;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .all(|e| e.path().join(DONE_DIR).join(restore_uid).exists())
}

/// The restore-wait container's command: wait (checking every second, as Velero's
/// helper) until every volume is written, then remove the done files and return.
pub async fn restore_wait(root: &Path, restore_uid: &str) {
    loop {
        if all_done(root, restore_uid) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if let Err(err) = std::fs::remove_dir_all(e.path().join(DONE_DIR)) {
            eprintln!(
                "could not remove {}: {err}",
                e.path().join(DONE_DIR).display()
            );
        }
    }
    println!("all PodVolumeRestores are done");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"namespace": "app", "name": "web", "annotations": annotations},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "c",
                    "volumeMounts": [{"name": "data"}, {"name": "cache"}, {"name": "conf"},
                                     {"name": "token"}, {"name": "host"}, {"name": "default-token-x"}],
                    "volumeDevices": [{"name": "disk"}]}],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
                    {"name": "cache", "emptyDir": {}},
                    {"name": "unused", "emptyDir": {}},
                    {"name": "disk", "persistentVolumeClaim": {"claimName": "disk-0"}},
                    {"name": "conf", "configMap": {"name": "c"}},
                    {"name": "token", "projected": {"sources": []}},
                    {"name": "host", "hostPath": {"path": "/"}},
                    {"name": "secret", "secret": {"secretName": "s"}},
                    {"name": "api", "downwardAPI": {}},
                    {"name": "default-token-x", "emptyDir": {}}
                ]
            },
            "status": {"phase": "Running"}
        })
    }

    fn names(c: &[Chosen]) -> Vec<&str> {
        c.iter().map(|c| c.volume.as_str()).collect()
    }

    #[test]
    fn by_default_every_volume_with_data_of_its_own_is_taken_but_the_excluded() {
        let (c, w) = volumes_to_back_up(&pod(json!({})), true, true);
        assert_eq!(names(&c), ["data", "cache"]);
        assert_eq!(c[0].pvc.as_deref(), Some("data-0"));
        assert!(
            w.iter()
                .any(|w| w.contains("volume unused") && w.contains("no container mounts it")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("volume disk") && w.contains("block volume")),
            "{w:?}"
        );
        assert_eq!(
            w.len(),
            2,
            "kinds never backed up are not warned about: {w:?}"
        );
        let (c, _) = volumes_to_back_up(
            &pod(json!({"backup.velero.io/backup-volumes-excludes": "cache, unused"})),
            true,
            true,
        );
        assert_eq!(names(&c), ["data"]);
        let (c, _) = volumes_to_back_up(&pod(json!({})), true, false);
        assert_eq!(
            names(&c),
            ["cache"],
            "claims left out of the backup are not read"
        );
    }

    #[test]
    fn without_the_default_only_annotated_volumes_are_taken() {
        let (c, w) = volumes_to_back_up(&pod(json!({})), false, true);
        assert!(c.is_empty() && w.is_empty());
        let (c, _) = volumes_to_back_up(
            &pod(
                json!({"backup.arca.dev/backup-volumes": "cache,conf,host", "backup.velero.io/backup-volumes": "data"}),
            ),
            false,
            true,
        );
        assert_eq!(
            names(&c),
            ["data", "cache"],
            "both annotations; never a config map or host path"
        );
    }

    #[test]
    fn only_running_scheduled_pods_are_read() {
        let mut p = pod(json!({}));
        assert_eq!(not_running(&p), None);
        p["status"]["phase"] = json!("Pending");
        assert_eq!(not_running(&p), Some("the pod is not running"));
        p["spec"]["nodeName"] = json!("");
        assert_eq!(not_running(&p), Some("the pod is not scheduled"));
        let mut d = pod(json!({}));
        d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(not_running(&d), Some("the pod is being deleted"));
    }

    #[test]
    fn timeouts_come_from_the_annotation_then_the_operation_timeout() {
        let a = BTreeMap::from([(
            "velero.io/pod-volume-timeout".to_string(),
            "10m".to_string(),
        )]);
        assert_eq!(timeout(&a, Some("1h")), Duration::from_secs(600));
        assert_eq!(
            timeout(&BTreeMap::new(), Some("1h")),
            Duration::from_secs(3600)
        );
        assert_eq!(timeout(&BTreeMap::new(), None), DEFAULT_TIMEOUT);
    }

    #[test]
    fn restore_wait_goes_first_and_stale_ones_go() {
        let mut p = json!({"spec": {
            "containers": [{"name": "c", "securityContext": {"runAsUser": 1000}}],
            "initContainers": [{"name": "restic-wait"}, {"name": "setup"}, {"name": "restore-wait"}]
        }});
        add_restore_wait(&mut p, &["data".into(), "cache".into()], "arca:1", "uid-1");
        let inits = p["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.len(), 2);
        assert_eq!(inits[0]["name"], RESTORE_WAIT);
        assert_eq!(inits[1]["name"], "setup");
        assert_eq!(inits[0]["image"], "arca:1");
        assert_eq!(inits[0]["command"][3], "uid-1");
        assert_eq!(inits[0]["securityContext"]["runAsUser"], 1000);
        assert_eq!(
            inits[0]["volumeMounts"],
            json!([{"name": "data", "mountPath": "/restores/data"}, {"name": "cache", "mountPath": "/restores/cache"}])
        );
        let mut n = json!({"spec": {"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "c"}]}});
        add_restore_wait(&mut n, &["data".into()], "arca:1", "uid-1");
        assert_eq!(
            n["spec"]["initContainers"][0]["securityContext"]["runAsUser"], 1000,
            "{n}"
        );
        let mut q = json!({"spec": {"containers": [{"name": "c"}], "initContainers": [{"name": "restore-wait"}]}});
        add_restore_wait(&mut q, &[], "arca:1", "uid-1");
        assert!(q["spec"].get("initContainers").is_none(), "{q}");
    }

    #[test]
    fn restore_wait_ends_when_every_volume_is_marked() {
        let root = tempfile::tempdir().unwrap();
        for v in ["a", "b"] {
            std::fs::create_dir(root.path().join(v)).unwrap();
        }
        std::fs::write(root.path().join("not-a-volume"), b"").unwrap();
        assert!(!all_done(root.path(), "u1"));
        mark_done(&root.path().join("a"), "u1").unwrap();
        assert!(!all_done(root.path(), "u1"));
        mark_done(&root.path().join("b"), "u0").unwrap();
        assert!(!all_done(root.path(), "u1"), "another restore's mark");
        mark_done(&root.path().join("b"), "u1").unwrap();
        assert!(all_done(root.path(), "u1"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(restore_wait(root.path(), "u1"));
        assert!(!root.path().join("a").join(DONE_DIR).exists());
        assert!(!root.path().join("b").join(DONE_DIR).exists());
    }

    #[test]
    fn every_pod_volume_backup_of_the_backup_is_recorded() {
        let pvb = |name: &str, pod: &str, vol: &str, phase: &str| {
            let mut b = PodVolumeBackup::new(
                name,
                PodVolumeBackupSpec {
                    node: "n1".into(),
                    pod: PodRef {
                        namespace: "app".into(),
                        name: pod.into(),
                        ..Default::default()
                    },
                    volume: vol.into(),
                    ..Default::default()
                },
            );
            b.status = Some(crate::crd::PodVolumeBackupStatus {
                phase: Some(phase.into()),
                snapshot_id: Some("ab".into()),
                ..Default::default()
            });
            b
        };
        let started = Started {
            backups: vec![(
                "app".into(),
                "web".into(),
                Chosen {
                    volume: "data".into(),
                    pvc: Some("data-0".into()),
                },
                Some("pv-1".into()),
                "b-web-data".into(),
            )],
            ..Default::default()
        };
        // A killed run's, for a pod gone since: its snapshot is the backup's too.
        let done = [
            pvb("b-web-data", "web", "data", "Completed"),
            pvb("b-old-x", "old", "x", "Completed"),
        ];
        let r = results(&started, &done);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].pvc.as_str(), r[0].pv.as_deref(), r[0].phase.as_str()),
            ("data-0", Some("pv-1"), "Completed")
        );
        assert_eq!(
            (r[1].pod.as_deref(), r[1].pod_volume.as_deref()),
            (Some("old"), Some("x"))
        );
        assert!(r.iter().all(|v| v.by_pod_volume_backup() && v.restorable()));
    }

    #[test]
    fn restorable_pod_volumes_are_grouped_by_pod() {
        let v = |pod: &str, vol: &str, phase: &str| MovedVolume {
            method: BY_POD_VOLUME_BACKUP.into(),
            namespace: "app".into(),
            pod: Some(pod.into()),
            pod_volume: Some(vol.into()),
            phase: phase.into(),
            snapshot_id: Some("ab".into()),
            ..Default::default()
        };
        let mut csi = v("web", "x", "Completed");
        csi.method = super::super::BY_DATA_MOVER.into();
        let m = by_pod(&[
            v("web", "data", "Completed"),
            v("web", "cache", "Failed"),
            v("db", "d", "Completed"),
            csi,
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[&("app".to_string(), "web".to_string())]
                .keys()
                .collect::<Vec<_>>(),
            ["data"]
        );
    }
}
