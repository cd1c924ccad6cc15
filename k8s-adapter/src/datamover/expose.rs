//! The exposer (Velero's pkg/exposer/csi_snapshot.go and generic_restore.go): what makes a
//! snapshot readable on a node, and a new volume writable, by objects in the install
//! namespace named after their DataUpload or DataDownload, so that a node agent killed
//! half-way finds them again (every step is idempotent).
//!
//! Backup: the snapshot moves into the install namespace (a new content for the same
//! storage snapshot, statically bound to a new VolumeSnapshot; the original retained and
//! deleted, so the user's namespace keeps nothing), a claim is provisioned from it, and a
//! pod that mounts it is placed by the scheduler; the node agent of that node reads the
//! volume through the host's pods directory (Velero before 1.15; Arca's agent needs no
//! per-upload pod of its own). Restore: a claim like the target one, and a pod; once
//! written, its volume is handed to the target claim ([`rebind`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::{EXPOSED_FOR, volume_snapshot, volume_snapshot_content};
use crate::error::{Error, Result};

/// Annotation on an exposed snapshot content: the original content it was made from (a
/// rerun after a kill finds it there, to retain and delete it).
pub const ORIGINAL_CONTENT: &str = "arca.dev/original-snapshot-content";
/// Annotation on a volume being rebound: its reclaim policy before the rebinding.
pub const RECLAIM_POLICY: &str = "arca.dev/original-reclaim-policy";
/// Where the exposer pod mounts the volume (Filesystem) or finds it (Block).
pub const MOUNT_PATH: &str = "/arca-volume";

/// What a DataUpload or DataDownload works on, besides its own name.
#[derive(Clone, Debug)]
pub struct Owner {
    /// `DataUpload` or `DataDownload`.
    pub kind: &'static str,
    /// Its name (and the name of every exposer object).
    pub name: String,
    /// Its UID.
    pub uid: String,
}

impl Owner {
    fn reference(&self) -> Value {
        json!([{
            "apiVersion": "arca.dev/v1", "kind": self.kind, "name": self.name,
            "uid": self.uid, "controller": true,
        }])
    }
}

fn kerr(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::kube(what, e)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Create, or leave what is there (a rerun after a kill).
async fn create<K>(api: &Api<K>, obj: &K, what: &str) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(Error::kube(format!("create {what}"), e)),
    }
}

/// A merge patch; gone already is fine.
async fn patch_if_there<K>(api: &Api<K>, name: &str, patch: Value, what: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(Error::kube(what.to_string(), e)),
    }
}

/// Delete; gone already is fine.
async fn delete<K>(api: &Api<K>, name: &str, what: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(Error::kube(format!("delete {what}"), e)),
    }
}

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("a well-formed object")
}

/// Whether the exposer pod is there (exposing is done once it is).
async fn exists(pods: &Api<Pod>, ns: &str, name: &str) -> Result<bool> {
    Ok(pods
        .get_opt(name)
        .await
        .map_err(kerr(format!("read pod {ns}/{name}")))?
        .is_some())
}

/// Where exposing stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Not yet: why (a snapshot not ready, a claim not yet there).
    Waiting(String),
    /// The pod exists.
    Exposed,
}

/// The size a claim asks for.
fn request(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

fn volume_mode(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_mode.clone())
        .unwrap_or_else(|| "Filesystem".into())
}

/// The pod that mounts the exposed claim: it only holds the volume in place on its node
/// (the node agent reads or writes it through the host's pods directory).
pub fn pod_spec(
    ns: &str,
    owner: &Owner,
    image: &str,
    block: bool,
    node: Option<&str>,
) -> serde_json::Value {
    let (mounts, devices) = if block {
        (
            json!([]),
            json!([{"name": "volume", "devicePath": MOUNT_PATH}]),
        )
    } else {
        (
            json!([{"name": "volume", "mountPath": MOUNT_PATH}]),
            json!([]),
        )
    };
    let mut spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": false,
        "containers": [{
            "name": "hold",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/usr/bin/arca", "node-agent", "hold"],
            "volumeMounts": mounts,
            "volumeDevices": devices,
        }],
        "volumes": [{"name": "volume", "persistentVolumeClaim": {"claimName": owner.name}}],
    });
    if let Some(n) = node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": n});
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": owner.name, "namespace": ns,
            "labels": {EXPOSED_FOR: owner.name},
            "ownerReferences": owner.reference(),
        },
        "spec": spec,
    })
}

/// Expose a DataUpload's snapshot (`vs_ns`/`vs_name`) in namespace `ns`: the steps of
/// Velero's CSISnapshotExposer.Expose, each one skipped when already done.
pub async fn expose_snapshot(
    client: &Client,
    ns: &str,
    owner: &Owner,
    vs_ns: &str,
    vs_name: &str,
    source_pvc: &str,
    image: &str,
) -> Result<Exposure> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if exists(&pods, ns, &owner.name).await? {
        return Ok(Exposure::Exposed);
    }
    let vs_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), vs_ns, &volume_snapshot());
    let vsc_api: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_content());
    let ours_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &volume_snapshot());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), vs_ns);
    let source = claims
        .get_opt(source_pvc)
        .await
        .map_err(kerr(format!("read claim {vs_ns}/{source_pvc}")))?;
    let ours = ours_api
        .get_opt(&owner.name)
        .await
        .map_err(kerr(format!("read snapshot {ns}/{}", owner.name)))?;
    if ours.is_none() {
        let Some(orig) = vs_api
            .get_opt(vs_name)
            .await
            .map_err(kerr(format!("read snapshot {vs_ns}/{vs_name}")))?
        else {
            return Err(Error::NotFound(format!(
                "volume snapshot {vs_ns}/{vs_name} is gone before its data was moved"
            )));
        };
        if orig.data.pointer("/status/readyToUse") != Some(&json!(true)) {
            let why = orig
                .data
                .pointer("/status/error/message")
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Ok(Exposure::Waiting(format!(
                "volume snapshot {vs_ns}/{vs_name} not ready{why}"
            )));
        }
        let content_name = orig
            .data
            .pointer("/status/boundVolumeSnapshotContentName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let content = vsc_api
            .get(&content_name)
            .await
            .map_err(kerr(format!("read snapshot content {content_name}")))?;
        let handle = content
            .data
            .pointer("/status/snapshotHandle")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Invalid(format!("snapshot content {content_name} has no handle"))
            })?
            .to_string();
        let class = orig
            .data
            .pointer("/spec/volumeSnapshotClassName")
            .cloned()
            .unwrap_or(Value::Null);
        let size = orig
            .data
            .pointer("/status/restoreSize")
            .cloned()
            .unwrap_or(Value::Null);
        // The new content first (same storage snapshot), then the snapshot bound to it;
        // only then is the original let go, its content retained so that the storage
        // snapshot outlives it.
        let new_content = dynamic(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {
                "name": owner.name, "labels": {EXPOSED_FOR: owner.name},
                "annotations": {ORIGINAL_CONTENT: content_name},
            },
            "spec": {
                "driver": content.data.pointer("/spec/driver"),
                "deletionPolicy": "Delete",
                "source": {"snapshotHandle": handle},
                "volumeSnapshotClassName": class,
                "volumeSnapshotRef": {
                    "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                    "namespace": ns, "name": owner.name,
                },
            },
        }));
        create(&vsc_api, &new_content, "the exposed snapshot content").await?;
        let mut annotations = orig.annotations().clone();
        annotations.insert("arca.dev/restore-size".into(), size.to_string());
        let new_vs = dynamic(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {
                "name": owner.name, "namespace": ns,
                "labels": {EXPOSED_FOR: owner.name}, "annotations": annotations,
            },
            "spec": {
                "source": {"volumeSnapshotContentName": owner.name},
                "volumeSnapshotClassName": class,
            },
        }));
        create(&ours_api, &new_vs, "the exposed volume snapshot").await?;
    }
    // The original goes, its content retained first so that the storage snapshot stays:
    // run again on every pass while the original is there (a kill between the steps
    // leaves nothing behind), its content named by ours.
    if let Some(ours_content) = vsc_api
        .get_opt(&owner.name)
        .await
        .map_err(kerr(format!("read snapshot content {}", owner.name)))?
        && let Some(orig_content) = ours_content.annotations().get(ORIGINAL_CONTENT)
    {
        patch_if_there(
            &vsc_api,
            orig_content,
            json!({"spec": {"deletionPolicy": "Retain"}}),
            &format!("retain snapshot content {orig_content}"),
        )
        .await?;
        delete(
            &vs_api,
            vs_name,
            &format!("volume snapshot {vs_ns}/{vs_name}"),
        )
        .await?;
        delete(
            &vsc_api,
            orig_content,
            &format!("snapshot content {orig_content}"),
        )
        .await?;
    }
    let Some(ours) = ours_api
        .get_opt(&owner.name)
        .await
        .map_err(kerr(format!("read snapshot {ns}/{}", owner.name)))?
    else {
        return Ok(Exposure::Waiting("exposed snapshot not yet there".into()));
    };
    if ours.data.pointer("/status/readyToUse") != Some(&json!(true)) {
        return Ok(Exposure::Waiting(format!(
            "exposed volume snapshot {ns}/{} not ready",
            owner.name
        )));
    }
    let source = source.ok_or_else(|| {
        Error::NotFound(format!(
            "claim {vs_ns}/{source_pvc} is gone before its data was moved"
        ))
    })?;
    let size = ours
        .data
        .pointer("/status/restoreSize")
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or(v.as_u64().map(|n| n.to_string()))
        })
        .filter(|s| s != "0")
        .or_else(|| request(&source))
        .ok_or_else(|| Error::Invalid(format!("claim {vs_ns}/{source_pvc} asks for no size")))?;
    let mode = volume_mode(&source);
    let class = source
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone());
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": owner.name, "namespace": ns,
            "labels": {EXPOSED_FOR: owner.name},
            "ownerReferences": owner.reference(),
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "volumeMode": mode,
            "resources": {"requests": {"storage": size}},
            "dataSource": {
                "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": owner.name,
            },
        },
    }))
    .expect("a claim");
    let backup_claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    create(&backup_claims, &claim, "the exposed claim").await?;
    let pod: Pod =
        serde_json::from_value(pod_spec(ns, owner, image, mode == "Block", None)).expect("a pod");
    create(&pods, &pod, "the exposer pod").await?;
    Ok(Exposure::Exposed)
}

/// Expose a new volume for a DataDownload: a claim like the target one (class, size, mode;
/// no selector, no data source) and a pod on the node the target claim was meant for, if
/// the scheduler chose one (Velero's GenericRestoreExposer.Expose).
pub async fn expose_new_volume(
    client: &Client,
    ns: &str,
    owner: &Owner,
    target_ns: &str,
    target_pvc: &str,
    image: &str,
) -> Result<Exposure> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if exists(&pods, ns, &owner.name).await? {
        return Ok(Exposure::Exposed);
    }
    let targets: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), target_ns);
    let Some(target) = targets
        .get_opt(target_pvc)
        .await
        .map_err(kerr(format!("read claim {target_ns}/{target_pvc}")))?
    else {
        return Ok(Exposure::Waiting(format!(
            "claim {target_ns}/{target_pvc} not yet restored"
        )));
    };
    if target
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
    {
        return Err(Error::Invalid(format!(
            "claim {target_ns}/{target_pvc} is already bound to a volume: its data is not overwritten"
        )));
    }
    let spec = target.spec.clone().unwrap_or_default();
    let node = target
        .annotations()
        .get("volume.kubernetes.io/selected-node")
        .cloned();
    let mode = spec
        .volume_mode
        .clone()
        .unwrap_or_else(|| "Filesystem".into());
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": owner.name, "namespace": ns,
            "labels": {EXPOSED_FOR: owner.name},
            "ownerReferences": owner.reference(),
        },
        "spec": {
            "accessModes": spec.access_modes,
            "storageClassName": spec.storage_class_name,
            "volumeMode": mode,
            "resources": spec.resources,
        },
    }))
    .expect("a claim");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    create(&claims, &claim, "the restore claim").await?;
    let pod: Pod =
        serde_json::from_value(pod_spec(ns, owner, image, mode == "Block", node.as_deref()))
            .expect("a pod");
    create(&pods, &pod, "the restore pod").await?;
    Ok(Exposure::Exposed)
}

/// The exposer pod as its node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposed {
    /// The node it runs on.
    pub node: String,
    /// Its UID (its directory under the host's pods directory).
    pub pod_uid: String,
    /// The volume bound to the exposed claim.
    pub pv: String,
    /// Block mode.
    pub block: bool,
    /// Whether the volume is a CSI volume (its files are under `<pv>/mount`).
    pub csi: bool,
}

/// The exposer pod of `owner`, once it runs and its claim is bound; None before.
pub async fn exposed(client: &Client, ns: &str, name: &str) -> Result<Option<Exposed>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Some(pod) = pods
        .get_opt(name)
        .await
        .map_err(kerr(format!("read pod {ns}/{name}")))?
    else {
        return Ok(None);
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        // It holds the volume only while it runs: an ended one cannot be recovered.
        let why = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                format!(
                    "{} (exit {})",
                    t.reason.clone().unwrap_or_default(),
                    t.exit_code
                )
            })
            .unwrap_or_default();
        return Err(Error::Invalid(format!(
            "exposer pod {ns}/{name} ended ({}) {why}: see `kubectl -n {ns} logs {name}`",
            phase.unwrap_or_default()
        )));
    }
    let running = phase == Some("Running");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let (true, Some(node)) = (running, node) else {
        return Ok(None);
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let Some(claim) = claims
        .get_opt(name)
        .await
        .map_err(kerr(format!("read claim {ns}/{name}")))?
    else {
        return Ok(None);
    };
    let Some(pv) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
        return Ok(None);
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let vol = pvs
        .get(&pv)
        .await
        .map_err(kerr(format!("read volume {pv}")))?;
    Ok(Some(Exposed {
        node,
        pod_uid: pod.uid().unwrap_or_default(),
        pv,
        block: volume_mode(&claim) == "Block",
        csi: vol.spec.as_ref().and_then(|s| s.csi.as_ref()).is_some(),
    }))
}

/// Where the exposed volume is on the node, under the host's pods directory: the glob
/// `<pods>/<pod uid>/volumes/*/<pv>` (`volumeDevices` for a block volume; `<pv>/mount` for
/// a CSI file system), which must match exactly once (Velero's GetPodVolumeHostPath).
pub fn host_path(pods_dir: &Path, e: &Exposed) -> Result<PathBuf> {
    let base = pods_dir
        .join(&e.pod_uid)
        .join(if e.block { "volumeDevices" } else { "volumes" });
    let entries = std::fs::read_dir(&base).map_err(|err| Error::Io {
        what: format!(
            "read {} (is the host's pods directory mounted at {}?)",
            base.display(),
            pods_dir.display()
        ),
        source: err,
    })?;
    let mut found = Vec::new();
    for plugin in entries.flatten() {
        let mut p = plugin.path().join(&e.pv);
        if e.csi && !e.block {
            p = p.join("mount");
        }
        if std::fs::symlink_metadata(&p).is_ok() {
            found.push(p);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::NotFound(format!(
            "volume {} of pod {} not found under {}",
            e.pv,
            e.pod_uid,
            base.display()
        ))),
        _ => Err(Error::Invalid(format!(
            "volume {} found more than once under {}: {found:?}",
            e.pv,
            base.display()
        ))),
    }
}

/// Remove what exposing a snapshot made (pod, claim and volume, snapshot and content,
/// the storage snapshot with them), and the original snapshot if it is still there
/// (Velero's CSISnapshotExposer.CleanUp).
pub async fn clean_snapshot(
    client: &Client,
    ns: &str,
    name: &str,
    vs_ns: &str,
    vs_name: &str,
) -> Result<()> {
    clean_pod_and_claim(client, ns, name, true).await?;
    let ours: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &volume_snapshot());
    delete(&ours, name, &format!("volume snapshot {ns}/{name}")).await?;
    let vsc: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_content());
    // A content made by a rerun whose snapshot went first (policy Delete frees it).
    delete(&vsc, name, &format!("snapshot content {name}")).await?;
    let orig: Api<DynamicObject> = Api::namespaced_with(client.clone(), vs_ns, &volume_snapshot());
    delete(
        &orig,
        vs_name,
        &format!("volume snapshot {vs_ns}/{vs_name}"),
    )
    .await?;
    Ok(())
}

/// Remove the exposer's pod and claim; `free_volume`: its volume too (the policy set to
/// Delete first), as after a backup or a failed restore.
pub async fn clean_pod_and_claim(
    client: &Client,
    ns: &str,
    name: &str,
    free_volume: bool,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    delete(&pods, name, &format!("pod {ns}/{name}")).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    if let Some(c) = claims
        .get_opt(name)
        .await
        .map_err(kerr(format!("read claim {ns}/{name}")))?
    {
        if free_volume && let Some(pv) = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) {
            let pvs: Api<PersistentVolume> = Api::all(client.clone());
            patch_if_there(
                &pvs,
                pv,
                json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
                &format!("free volume {pv}"),
            )
            .await?;
        }
        delete(&claims, name, &format!("claim {ns}/{name}")).await?;
    }
    Ok(())
}

/// Put back the reclaim policy a rebinding saved on a volume (a rebinding that failed).
pub async fn reset_reclaim_policy(client: &Client, pv_name: &str) -> Result<()> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let Some(pv) = pvs
        .get_opt(pv_name)
        .await
        .map_err(kerr(format!("read volume {pv_name}")))?
    else {
        return Ok(());
    };
    if let Some(p) = pv.annotations().get(RECLAIM_POLICY) {
        pvs.patch(
            pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {RECLAIM_POLICY: null}},
                "spec": {"persistentVolumeReclaimPolicy": p},
            })),
        )
        .await
        .map_err(kerr(format!(
            "reset the reclaim policy of volume {pv_name}"
        )))?;
    }
    Ok(())
}

/// Hand the written volume of the restore claim `ns`/`name` to the target claim (Velero's
/// GenericRestoreExposer.RebindVolume): the volume retained, the pod and the restore claim
/// deleted, the volume pre-bound to the target (its claimRef without UID) and labelled with
/// the target's selector, bound, and its reclaim policy put back. Rerun after a kill, it
/// picks up where it stopped. Returns Ok(false) while the volume is not yet bound.
pub async fn rebind(
    client: &Client,
    ns: &str,
    name: &str,
    target_ns: &str,
    target_pvc: &str,
    pv_name: &str,
) -> Result<bool> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get(pv_name)
        .await
        .map_err(kerr(format!("read volume {pv_name}")))?;
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        .unwrap_or_else(|| "Delete".into());
    if !pv.annotations().contains_key(RECLAIM_POLICY) {
        pvs.patch(
            pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {RECLAIM_POLICY: policy}},
                "spec": {"persistentVolumeReclaimPolicy": "Retain"},
            })),
        )
        .await
        .map_err(kerr(format!("retain volume {pv_name}")))?;
    }
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let to_target = claim_ref.is_some_and(|r| {
        r.namespace.as_deref() == Some(target_ns) && r.name.as_deref() == Some(target_pvc)
    });
    if !to_target {
        clean_pod_and_claim(client, ns, name, false).await?;
        // Killed here, the volume is Released and retained, bound to no claim: the next
        // run finds it by the download's record and points it at the target.
        crate::server::pause_point("rebind-claim-deleted").await;
        let targets: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), target_ns);
        let target = targets
            .get(target_pvc)
            .await
            .map_err(kerr(format!("read claim {target_ns}/{target_pvc}")))?;
        let labels: BTreeMap<String, String> = target
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        pvs.patch(
            pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {
                    "labels": labels,
                    "annotations": {"pv.kubernetes.io/bound-by-controller": null},
                },
                "spec": {"claimRef": {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": target_ns, "name": target_pvc,
                    "uid": null, "resourceVersion": null,
                }},
            })),
        )
        .await
        .map_err(kerr(format!(
            "bind volume {pv_name} to {target_ns}/{target_pvc}"
        )))?;
        return Ok(false);
    }
    let bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if !bound {
        return Ok(false);
    }
    reset_reclaim_policy(client, pv_name).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            kind: "DataUpload",
            name: "b1-data-0a1b2c3d".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn the_exposer_pod_mounts_or_maps_the_claim_and_is_owned() {
        let p = pod_spec("arca", &owner(), "localhost/arca:1", false, None);
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "DataUpload");
        assert_eq!(p["metadata"]["labels"][EXPOSED_FOR], "b1-data-0a1b2c3d");
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["volumeMounts"][0]["mountPath"], MOUNT_PATH);
        assert_eq!(c["volumeDevices"], json!([]));
        assert!(p["spec"].get("nodeSelector").is_none());
        let b = pod_spec("arca", &owner(), "i", true, Some("n1"));
        assert_eq!(
            b["spec"]["containers"][0]["volumeDevices"][0]["devicePath"],
            MOUNT_PATH
        );
        assert_eq!(b["spec"]["nodeSelector"]["kubernetes.io/hostname"], "n1");
        let _: Pod = serde_json::from_value(b).expect("a valid pod");
    }

    #[test]
    fn the_volume_is_found_once_under_the_pods_directory() {
        let d = tempfile::tempdir().unwrap();
        let e = Exposed {
            node: "n".into(),
            pod_uid: "uid-1".into(),
            pv: "pvc-9".into(),
            block: false,
            csi: false,
        };
        assert!(host_path(d.path(), &e).is_err(), "nothing there");
        let local = d
            .path()
            .join("uid-1/volumes/kubernetes.io~local-volume/pvc-9");
        std::fs::create_dir_all(&local).unwrap();
        assert_eq!(host_path(d.path(), &e).unwrap(), local);
        let csi = Exposed {
            csi: true,
            ..e.clone()
        };
        std::fs::create_dir_all(d.path().join("uid-1/volumes/kubernetes.io~csi/pvc-9/mount"))
            .unwrap();
        assert!(
            host_path(d.path(), &csi)
                .unwrap()
                .ends_with("kubernetes.io~csi/pvc-9/mount")
        );
        std::fs::create_dir_all(d.path().join("uid-1/volumes/other~plugin/pvc-9")).unwrap();
        assert!(host_path(d.path(), &e).is_err(), "two matches are refused");
        let block = Exposed { block: true, ..e };
        std::fs::create_dir_all(
            d.path()
                .join("uid-1/volumeDevices/kubernetes.io~local-volume"),
        )
        .unwrap();
        std::fs::write(
            d.path()
                .join("uid-1/volumeDevices/kubernetes.io~local-volume/pvc-9"),
            b"",
        )
        .unwrap();
        assert!(
            host_path(d.path(), &block)
                .unwrap()
                .ends_with("volumeDevices/kubernetes.io~local-volume/pvc-9")
        );
    }
}
