//! The test clusters' **storage stand-in**: test support, not part of Arca.
//!
//! No CSI driver can be installed here, so this plays one: what a real driver with
//! snapshot support (its external-provisioner and csi-snapshotter sidecars, and the
//! common snapshot-controller) does to the API objects, done by a small level-triggered
//! controller on a thread of the test process. It serves one StorageClass and one
//! VolumeSnapshotClass, both [`CLASS`], for the driver [`DRIVER`]:
//!
//! - a claim of the class, once the scheduler has picked the node (WaitForFirstConsumer,
//!   as local storage works), gets a `local` volume with node affinity: a btrfs subvolume
//!   for Filesystem mode, a loop device over a file for Block mode, on the btrfs image that
//!   `scripts/test-node` mounts at `<cluster>/node/storage/mnt`;
//! - a VolumeSnapshot of such a claim is a copy of the volume at that instant (a read-only
//!   btrfs snapshot, or a reflink copy of the block file after its loop device's buffers
//!   are flushed), with a VolumeSnapshotContent bound to it and both set ready, carrying
//!   the finalizers the real controllers put on them;
//! - a claim whose `dataSource` is a ready VolumeSnapshot is provisioned from that copy;
//! - a released volume (reclaim policy Delete) and a deleted snapshot (deletion policy
//!   Delete) free their storage.
//!
//! Arca's code never sees this module: it meets the same objects as with a real driver.
//! - a pre-provisioned content (`source.snapshotHandle`) naming a snapshot the storage
//!   holds is set ready, and a VolumeSnapshot bound to it statically
//!   (`source.volumeSnapshotContentName`) is bound and ready with it;
//! - a claim with a selector is not provisioned (it waits for a matching volume).
//!
//! Not played: claim clones, volume expansion.

#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arca_k8s::kube::Client;
use arca_k8s::kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

/// The driver's name: the StorageClass's provisioner and the VolumeSnapshotClass's driver.
pub const DRIVER: &str = "standin.storage.arca.test";
/// The StorageClass and the VolumeSnapshotClass.
pub const CLASS: &str = "arca-standin";

const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Where a volume's storage is, on the volume (for freeing it).
const BACKING: &str = "standin.storage.arca.test/backing";
const VS_FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
const VSC_FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Serve the stand-in on the cluster of `kubeconfig` (once per test process and cluster)
/// and return its backing directory; None where the cluster has no backing file system
/// (not root, or a node started without it), which fails under ARCA_REQUIRE_K8S.
pub fn serve(kubeconfig: &Path) -> Option<PathBuf> {
    static SERVED: OnceLock<Mutex<BTreeMap<PathBuf, PathBuf>>> = OnceLock::new();
    let mut served = SERVED.get_or_init(Default::default).lock().unwrap();
    if let Some(root) = served.get(kubeconfig) {
        return Some(root.clone());
    }
    let root = kubeconfig.parent().unwrap().join("node/storage/mnt");
    let mounted = Command::new("mountpoint")
        .arg("-q")
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("ARCA_REQUIRE_K8S").is_none(),
            "no stand-in storage at {} (scripts/test-node mounts it; as root)",
            root.display()
        );
        eprintln!("no stand-in storage at {}: skipped", root.display());
        return None;
    }
    for d in ["volumes", "snapshots"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (kc, r) = (kubeconfig.to_path_buf(), root.clone());
    // Its own runtime and client: each test's runtime ends with the test.
    std::thread::Builder::new()
        .name("storage-standin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let s = match Standin::new(&kc, r).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    if let Err(e) = s.pass().await {
                        eprintln!("storage stand-in: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        })
        .unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("storage stand-in: {e}"));
    served.insert(kubeconfig.to_path_buf(), root.clone());
    Some(root)
}

fn ar(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

struct Standin {
    client: Client,
    root: PathBuf,
    pvc: ApiResource,
    pv: ApiResource,
    vs: ApiResource,
    vsc: ApiResource,
}

/// A string field, "" when absent.
fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Bytes of a Kubernetes quantity ("8Mi", "1G", "1073741824").
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * mult).ceil() as u64)
}

impl Standin {
    async fn new(kubeconfig: &Path, root: PathBuf) -> Result<Self> {
        let (client, _) = arca_k8s::manage::connect(Some(kubeconfig), None).await?;
        let s = Self {
            client,
            root,
            pvc: ar("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            pv: ar("v1", "PersistentVolume", "persistentvolumes"),
            vs: ar(
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshot",
                "volumesnapshots",
            ),
            vsc: ar(
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshotContent",
                "volumesnapshotcontents",
            ),
        };
        s.classes().await?;
        Ok(s)
    }

    fn all(&self, r: &ApiResource) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), r)
    }

    fn namespaced(&self, r: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, r)
    }

    /// The classes, as a driver's installation creates them (the snapshot CRDs come with
    /// the cluster: scripts/test-cluster installs them).
    async fn classes(&self) -> Result<()> {
        let sc = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        });
        let vsclass = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": CLASS},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        });
        let pp = PatchParams::apply("arca-storage-standin").force();
        let api = self.all(&ar("storage.k8s.io/v1", "StorageClass", "storageclasses"));
        api.patch(CLASS, &pp, &Patch::Apply(&sc)).await?;
        let api = self.all(&ar(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
        ));
        // The CRD may still be getting established on a fresh cluster.
        let mut tries = 0;
        loop {
            match api.patch(CLASS, &pp, &Patch::Apply(&vsclass)).await {
                Ok(_) => return Ok(()),
                Err(_) if tries < 300 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "VolumeSnapshotClass {CLASS} (are the snapshot CRDs installed?): {e}"
                    )
                    .into());
                }
            }
        }
    }

    async fn list(&self, r: &ApiResource) -> Result<Vec<Value>> {
        Ok(self
            .all(r)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect())
    }

    /// One level-triggered pass over every object the driver serves.
    async fn pass(&self) -> Result<()> {
        let pvs = self.list(&self.pv).await?;
        let pvcs = self.list(&self.pvc).await?;
        let vss = self.list(&self.vs).await?;
        let vscs = self.list(&self.vsc).await?;
        let pv_by_name: BTreeMap<&str, &Value> = pvs
            .iter()
            .map(|p| (s(p, &["metadata", "name"]), p))
            .collect();
        let vsc_by_name: BTreeMap<&str, &Value> = vscs
            .iter()
            .map(|c| (s(c, &["metadata", "name"]), c))
            .collect();
        for c in &vscs {
            if let Err(e) = self.content(c).await {
                eprintln!(
                    "storage stand-in: content {}: {e}",
                    s(c, &["metadata", "name"])
                );
            }
        }
        for v in &vss {
            if let Err(e) = self.snapshot(v, &pvcs, &pv_by_name, &vsc_by_name).await {
                eprintln!(
                    "storage stand-in: snapshot {}/{}: {e}",
                    s(v, &["metadata", "namespace"]),
                    s(v, &["metadata", "name"])
                );
            }
        }
        for c in &pvcs {
            if let Err(e) = self.provision(c, &pv_by_name, &vss, &vsc_by_name).await {
                eprintln!(
                    "storage stand-in: claim {}/{}: {e}",
                    s(c, &["metadata", "namespace"]),
                    s(c, &["metadata", "name"])
                );
            }
        }
        for p in &pvs {
            if let Err(e) = self.release(p).await {
                eprintln!(
                    "storage stand-in: volume {}: {e}",
                    s(p, &["metadata", "name"])
                );
            }
        }
        Ok(())
    }

    /// A claim of the class, on its chosen node, gets a volume (from a snapshot when its
    /// data source names one, once that snapshot is ready).
    async fn provision(
        &self,
        claim: &Value,
        pvs: &BTreeMap<&str, &Value>,
        vss: &[Value],
        vscs: &BTreeMap<&str, &Value>,
    ) -> Result<()> {
        let meta = &claim["metadata"];
        if s(claim, &["spec", "storageClassName"]) != CLASS
            || !s(claim, &["spec", "volumeName"]).is_empty()
            || !meta["deletionTimestamp"].is_null()
        {
            return Ok(());
        }
        // As the external-provisioner: a claim with a selector is not provisioned (it
        // waits for a volume that matches it).
        if !claim["spec"]["selector"].is_null() {
            return Ok(());
        }
        let node = s(meta, &["annotations", SELECTED_NODE]);
        if node.is_empty() {
            return Ok(()); // WaitForFirstConsumer: no pod scheduled yet
        }
        let name = format!("pvc-{}", s(meta, &["uid"]));
        if pvs.contains_key(name.as_str()) {
            return Ok(());
        }
        let ns = s(meta, &["namespace"]);
        let block = s(claim, &["spec", "volumeMode"]) == "Block";
        let mut size = quantity_bytes(s(claim, &["spec", "resources", "requests", "storage"]))
            .ok_or("no storage request")?;
        // From a snapshot: its copy, once it is ready.
        let ds = &claim["spec"]["dataSource"];
        let source = if ds.is_null() {
            None
        } else if s(ds, &["kind"]) == "VolumeSnapshot"
            && s(ds, &["apiGroup"]) == "snapshot.storage.k8s.io"
        {
            let Some(v) = vss.iter().find(|v| {
                s(v, &["metadata", "namespace"]) == ns
                    && s(v, &["metadata", "name"]) == s(ds, &["name"])
            }) else {
                return Ok(()); // not created yet
            };
            let Some(c) = vscs.get(s(v, &["status", "boundVolumeSnapshotContentName"])) else {
                return Ok(());
            };
            if c["status"]["readyToUse"] != true || s(c, &["spec", "driver"]) != DRIVER {
                return Ok(());
            }
            size = size.max(c["status"]["restoreSize"].as_u64().unwrap_or(0));
            Some(self.snapshot_path(s(c, &["status", "snapshotHandle"]), block))
        } else {
            return Err(format!("data source {ds} is not played by the stand-in").into());
        };
        let (path, backing) = if block {
            let file = self.root.join("volumes").join(format!("{name}.img"));
            let f = file.to_str().unwrap();
            match &source {
                Some(src) => {
                    run("cp", &["--reflink=always", src.to_str().unwrap(), f])?;
                }
                None => {
                    std::fs::File::create(&file)?;
                }
            }
            let f_len = std::fs::metadata(&file)?.len();
            if f_len < size {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)?
                    .set_len(size)?;
            }
            let dev = run("losetup", &["--find", "--show", f])?;
            (dev, f.to_string())
        } else {
            let dir = self.root.join("volumes").join(&name);
            let d = dir.to_str().unwrap();
            match &source {
                Some(src) => run(
                    "btrfs",
                    &["subvolume", "snapshot", src.to_str().unwrap(), d],
                )?,
                None => run("btrfs", &["subvolume", "create", d])?,
            };
            (d.to_string(), d.to_string())
        };
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {PROVISIONED_BY: DRIVER, BACKING: backing},
            },
            "spec": {
                "capacity": {"storage": size.to_string()},
                "accessModes": claim["spec"]["accessModes"],
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "storageClassName": CLASS,
                "persistentVolumeReclaimPolicy": "Delete",
                "local": {"path": path},
                "claimRef": {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": ns, "name": s(meta, &["name"]), "uid": s(meta, &["uid"]),
                },
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                ]}]}},
            },
        });
        let obj: DynamicObject = serde_json::from_value(pv)?;
        if let Err(e) = self
            .all(&self.pv)
            .create(&PostParams::default(), &obj)
            .await
        {
            free(Path::new(&backing), block.then_some(path.as_str()));
            return Err(e.into());
        }
        Ok(())
    }

    fn size_path(&self, handle: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{handle}.size"))
    }

    fn snapshot_path(&self, handle: &str, block: bool) -> PathBuf {
        let dir = self.root.join("snapshots");
        if block {
            dir.join(format!("{handle}.img"))
        } else {
            dir.join(handle)
        }
    }

    /// A released volume of reclaim policy Delete: its storage freed, then the object.
    async fn release(&self, pv: &Value) -> Result<()> {
        if s(pv, &["metadata", "annotations", PROVISIONED_BY]) != DRIVER
            || !pv["metadata"]["deletionTimestamp"].is_null()
            || s(pv, &["status", "phase"]) != "Released"
            || s(pv, &["spec", "persistentVolumeReclaimPolicy"]) != "Delete"
        {
            return Ok(());
        }
        let block = s(pv, &["spec", "volumeMode"]) == "Block";
        let backing = s(pv, &["metadata", "annotations", BACKING]);
        if !backing.is_empty() {
            free(
                Path::new(backing),
                block.then(|| s(pv, &["spec", "local", "path"])),
            );
        }
        let name = s(pv, &["metadata", "name"]);
        match self
            .all(&self.pv)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(arca_k8s::kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A VolumeSnapshot of the class: a copy of its claim's volume, a content bound to it,
    /// both ready. A deleted one takes its content along when the policy says Delete.
    async fn snapshot(
        &self,
        v: &Value,
        pvcs: &[Value],
        pvs: &BTreeMap<&str, &Value>,
        vscs: &BTreeMap<&str, &Value>,
    ) -> Result<()> {
        let meta = &v["metadata"];
        let (ns, name, uid) = (
            s(meta, &["namespace"]),
            s(meta, &["name"]),
            s(meta, &["uid"]),
        );
        let class = s(v, &["spec", "volumeSnapshotClassName"]);
        if class != CLASS {
            return Ok(());
        }
        let vs_api = self.namespaced(&self.vs, ns);
        let content_name = format!("snapcontent-{uid}");
        let finalizers: Vec<&str> = meta["finalizers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !meta["deletionTimestamp"].is_null() {
            let bound = s(v, &["status", "boundVolumeSnapshotContentName"]);
            if let Some(c) = vscs.get(bound)
                && s(c, &["spec", "deletionPolicy"]) == "Delete"
                && c["metadata"]["deletionTimestamp"].is_null()
            {
                self.all(&self.vsc)
                    .delete(bound, &DeleteParams::default())
                    .await?;
            }
            if finalizers.contains(&VS_FINALIZER) {
                let rest: Vec<&str> = finalizers
                    .into_iter()
                    .filter(|f| *f != VS_FINALIZER)
                    .collect();
                vs_api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
                    )
                    .await?;
            }
            return Ok(());
        }
        if v["status"]["readyToUse"] == true {
            return Ok(());
        }
        let claim_name = s(v, &["spec", "source", "persistentVolumeClaimName"]);
        let static_content = s(v, &["spec", "source", "volumeSnapshotContentName"]);
        if claim_name.is_empty() && static_content.is_empty() {
            return Ok(());
        }
        if !finalizers.contains(&VS_FINALIZER) {
            let mut all = finalizers.clone();
            all.push(VS_FINALIZER);
            vs_api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": all}})),
                )
                .await?;
        }
        if !static_content.is_empty() {
            // Statically bound (the snapshot-controller's rule): to a content whose
            // volumeSnapshotRef names this snapshot, once that content is ready.
            let Some(c) = vscs.get(static_content) else {
                return Ok(());
            };
            let r = &c["spec"]["volumeSnapshotRef"];
            if s(r, &["namespace"]) != ns || s(r, &["name"]) != name {
                return Err(
                    format!("content {static_content} is bound to another snapshot").into(),
                );
            }
            if s(r, &["uid"]).is_empty() {
                self.all(&self.vsc)
                    .patch(
                        static_content,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"volumeSnapshotRef": {"uid": uid}}})),
                    )
                    .await?;
            }
            if c["status"]["readyToUse"] != true {
                return Ok(());
            }
            let size = c["status"]["restoreSize"].as_u64().unwrap_or(0);
            let created = arca_k8s::k8s_openapi::jiff::Timestamp::now().to_string();
            vs_api
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "boundVolumeSnapshotContentName": static_content,
                        "creationTime": created,
                        "readyToUse": true,
                        "restoreSize": size.to_string(),
                    }})),
                )
                .await?;
            return Ok(());
        }
        let (size, handle) = if let Some(c) = vscs.get(content_name.as_str()) {
            // Taken by an earlier pass that stopped before the snapshot's status.
            (
                c["status"]["restoreSize"].as_u64().unwrap_or(0),
                content_name.clone(),
            )
        } else {
            let Some(claim) = pvcs.iter().find(|c| {
                s(c, &["metadata", "namespace"]) == ns && s(c, &["metadata", "name"]) == claim_name
            }) else {
                return Ok(()); // the claim may come later
            };
            let Some(pv) = pvs.get(s(claim, &["spec", "volumeName"])) else {
                return Ok(()); // not bound yet
            };
            if s(pv, &["metadata", "annotations", PROVISIONED_BY]) != DRIVER {
                return Err(format!("claim {claim_name}'s volume is not the stand-in's").into());
            }
            let block = s(pv, &["spec", "volumeMode"]) == "Block";
            let backing = s(pv, &["metadata", "annotations", BACKING]);
            let copy = self.snapshot_path(&content_name, block);
            let c = copy.to_str().unwrap();
            let size = if block {
                // What the pod wrote through the device, in the file before the copy.
                run(
                    "blockdev",
                    &["--flushbufs", s(pv, &["spec", "local", "path"])],
                )?;
                run("cp", &["--reflink=always", backing, c])?;
                std::fs::metadata(&copy)?.len()
            } else {
                run("btrfs", &["subvolume", "snapshot", "-r", backing, c])?;
                quantity_bytes(s(pv, &["spec", "capacity", "storage"])).unwrap_or(0)
            };
            // What the storage knows of its snapshot, for contents made for it later.
            std::fs::write(self.size_path(&content_name), size.to_string())?;
            let content = json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": content_name, "finalizers": [VSC_FINALIZER]},
                "spec": {
                    "driver": DRIVER,
                    "deletionPolicy": "Delete",
                    "source": {"volumeHandle": s(pv, &["metadata", "name"])},
                    "volumeSnapshotClassName": CLASS,
                    "volumeSnapshotRef": {
                        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                        "namespace": ns, "name": name, "uid": uid,
                    },
                },
            });
            let obj: DynamicObject = serde_json::from_value(content)?;
            if let Err(e) = self
                .all(&self.vsc)
                .create(&PostParams::default(), &obj)
                .await
            {
                free(&copy, None);
                return Err(e.into());
            }
            (size, content_name.clone())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        self.all(&self.vsc)
            .patch_status(
                &content_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "snapshotHandle": handle,
                    "readyToUse": true,
                    "creationTime": now.as_nanos() as i64,
                    "restoreSize": size,
                }})),
            )
            .await?;
        let created = arca_k8s::k8s_openapi::jiff::Timestamp::now().to_string();
        vs_api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "boundVolumeSnapshotContentName": content_name,
                    "creationTime": created,
                    "readyToUse": true,
                    "restoreSize": size.to_string(),
                }})),
            )
            .await?;
        Ok(())
    }

    /// A content being deleted: its copy freed when the policy says Delete (as the
    /// csi-snapshotter does), then its finalizer removed.
    async fn content(&self, c: &Value) -> Result<()> {
        let meta = &c["metadata"];
        if s(c, &["spec", "driver"]) != DRIVER {
            return Ok(());
        }
        let pre = s(c, &["spec", "source", "snapshotHandle"]);
        if meta["deletionTimestamp"].is_null() {
            // A pre-provisioned content (made for a snapshot the storage has): ready
            // once that snapshot is found, as the csi-snapshotter checks it.
            if !pre.is_empty() && c["status"]["readyToUse"] != true {
                let Ok(size) = std::fs::read_to_string(self.size_path(pre)) else {
                    return Err(format!("no snapshot {pre} in the storage").into());
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let name = s(meta, &["name"]);
                if !meta["finalizers"].is_array() {
                    self.all(&self.vsc)
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": [VSC_FINALIZER]}})),
                        )
                        .await?;
                }
                self.all(&self.vsc)
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {
                            "snapshotHandle": pre,
                            "readyToUse": true,
                            "creationTime": now.as_nanos() as i64,
                            "restoreSize": size.trim().parse::<u64>().unwrap_or(0),
                        }})),
                    )
                    .await?;
            }
            return Ok(());
        }
        let name = s(meta, &["name"]);
        let handle = s(c, &["status", "snapshotHandle"]);
        if s(c, &["spec", "deletionPolicy"]) == "Delete" && !handle.is_empty() {
            let _ = std::fs::remove_file(self.size_path(handle));
            for block in [true, false] {
                let p = self.snapshot_path(handle, block);
                if p.exists() {
                    free(&p, None);
                }
            }
        }
        let rest: Vec<&str> = meta["finalizers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| *f != VSC_FINALIZER)
            .collect();
        self.all(&self.vsc)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
            )
            .await?;
        Ok(())
    }
}

/// Free a volume's or a snapshot's storage: its loop devices detached (the kernel lets go
/// once nothing holds them), a file removed, a subvolume deleted. Loop devices are found
/// by their file, never by a number that may since belong to another volume.
fn free(backing: &Path, loop_dev: Option<&str>) {
    if loop_dev.is_some()
        && let Ok(list) = run("losetup", &["-j", backing.to_str().unwrap()])
    {
        for dev in list.lines().filter_map(|l| l.split(':').next()) {
            let _ = run("losetup", &["-d", dev]);
        }
    }
    let b = backing.to_str().unwrap();
    let result = if backing.is_dir() {
        run("btrfs", &["subvolume", "delete", b]).map(drop)
    } else {
        std::fs::remove_file(backing).map_err(Into::into)
    };
    if let Err(e) = result {
        eprintln!("storage stand-in: free {b}: {e}");
    }
}
