//! `arca node-agent`: the DataUpload and DataDownload controllers of one node (Velero's
//! pkg/controller/data_upload_controller.go and data_download_controller.go).
//!
//! Any node agent accepts new work (a conditional status write: one wins) and exposes
//! it; the agent of the node where the exposer pod runs prepares it, waits for one of
//! its node's slots (queued work is Prepared and never times out for the wait), and moves
//! the data with `arca-movers`. Unlike Velero's, an agent restarted mid-move does not
//! cancel: it runs the move again, which finds in the repository what the killed run had
//! stored by its last checkpoint and uploads only the rest.
//!
//! It also runs the PodVolumeBackup and PodVolumeRestore controllers (Velero's
//! pod_volume_backup_controller.go and pod_volume_restore_controller.go): the agent of the
//! pod's node reads or writes the live volume under the host's pods directory, within the
//! same slots.
//!
//! The decisions are [`step`] and [`pod_volume_step`], pure functions of what the agent
//! sees.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_movers::{BackupRequest, Cancel, RestoreRequest, Source, Target};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::expose::{self, Exposure, Owner};
use super::{EXPOSED_FOR, phase};
use crate::crd::{
    DataDownload, DataMoveProgress, DataUpload, PodRef, PodVolumeBackup, PodVolumeRestore,
};
use crate::error::{Error, Result};
use crate::location::Location;

/// Annotation on a finished DataUpload or DataDownload: the exposer's objects are gone.
pub const CLEANED: &str = "arca.dev/cleaned-up";

/// The node agent's settings (its flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// The install namespace (where DataUploads, DataDownloads and exposer objects live).
    pub namespace: String,
    /// This node's name.
    pub node: String,
    /// The host's pods directory as this process sees it.
    pub pods_dir: PathBuf,
    /// The image of the exposer pods.
    pub image: String,
    /// The repository cache directory.
    pub cache_root: Option<PathBuf>,
    /// How long exposing may take (`--data-mover-prepare-timeout`, 30 min).
    pub prepare_timeout: Duration,
    /// The ConfigMap with `loadConcurrency` (Velero's node-agent configuration).
    pub config_map: Option<String>,
    /// How often an upload's progress is made durable (`--checkpoint-interval`).
    pub checkpoint: Option<Duration>,
}

/// What to do with a DataUpload or DataDownload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Take it (New).
    Accept,
    /// Expose its data (this node accepted it).
    Expose,
    /// Its pod runs on this node: mark it Prepared here.
    Prepare,
    /// Move its data here (Prepared here, or InProgress here with no mover running: an
    /// agent restarted mid-move).
    Start,
    /// Stop the mover running here (cancel asked).
    Stop,
    /// End it as Canceled (cancel asked, nothing running).
    Cancel,
    /// End it as Failed.
    Fail(String),
    /// End it as Completed: its work is done (a restored pod's restore-wait container
    /// ended, having found the done files, before the agent wrote Completed).
    Finish,
    /// Remove what exposing made (it ended).
    Clean,
    /// Nothing for this node now.
    Idle,
}

/// What the agent sees of one DataUpload or DataDownload.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Its phase ("" for New).
    pub phase: String,
    /// `spec.cancel`.
    pub cancel: bool,
    /// The node that accepted it.
    pub accepted_by: Option<String>,
    /// The node that moves it.
    pub node: Option<String>,
    /// When it was accepted.
    pub accepted_at: Option<DateTime<Utc>>,
    /// Whether its exposer objects were removed.
    pub cleaned: bool,
    /// The node its exposer pod runs on (running, claim bound).
    pub pod_node: Option<String>,
    /// Whether this agent runs its mover.
    pub running_here: bool,
}

/// The node agent's rule for one DataUpload or DataDownload.
pub fn step(v: &View, me: &str, now: DateTime<Utc>, prepare_timeout: Duration) -> Step {
    let mine = |n: &Option<String>| n.as_deref() == Some(me);
    if phase::terminal(&v.phase) {
        // Ended before anyone accepted it (canceled while New): any agent cleans up.
        let unowned = v.accepted_by.is_none() && v.node.is_none();
        return if !v.cleaned && (mine(&v.accepted_by) || mine(&v.node) || unowned) {
            Step::Clean
        } else {
            Step::Idle
        };
    }
    if v.cancel {
        if v.running_here {
            return Step::Stop;
        }
        return match v.phase.as_str() {
            "" | phase::NEW => Step::Cancel,
            phase::ACCEPTED if mine(&v.accepted_by) => Step::Cancel,
            phase::PREPARED | phase::IN_PROGRESS | phase::CANCELING if mine(&v.node) => {
                Step::Cancel
            }
            _ => Step::Idle,
        };
    }
    match v.phase.as_str() {
        "" | phase::NEW => Step::Accept,
        phase::ACCEPTED => {
            if v.pod_node.as_deref() == Some(me) {
                Step::Prepare
            } else if mine(&v.accepted_by) {
                let waited = v
                    .accepted_at
                    .map(|t| (now - t).to_std().unwrap_or_default())
                    .unwrap_or_default();
                if waited >= prepare_timeout {
                    Step::Fail(format!(
                        "timed out after {}s preparing the data (see the events of its pod and claim in the install namespace)",
                        prepare_timeout.as_secs()
                    ))
                } else {
                    Step::Expose
                }
            } else {
                Step::Idle
            }
        }
        phase::PREPARED | phase::IN_PROGRESS if mine(&v.node) && !v.running_here => Step::Start,
        phase::CANCELING if mine(&v.node) && !v.running_here => Step::Cancel,
        _ => Step::Idle,
    }
}

/// Whether a pod volume's pod is ready for its node agent.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Ready {
    /// Ready: the backed-up pod runs; the restored pod's restore-wait container runs.
    #[default]
    Yes,
    /// Not yet (a restored pod still starting).
    Wait,
    /// Never will be: why.
    Gone(String),
    /// Its work is done (the restored pod's restore-wait container ended successfully).
    Done,
}

/// What the agent sees of a PodVolumeBackup or PodVolumeRestore.
#[derive(Clone, Debug, Default)]
pub struct PodVolumeView {
    /// Its phase ("" for New).
    pub phase: String,
    /// `spec.cancel`.
    pub cancel: bool,
    /// The node of its pod (whose agent does the work), if placed.
    pub node: Option<String>,
    /// Its pod's state.
    pub ready: Ready,
    /// Whether this agent runs its mover.
    pub running_here: bool,
}

/// The node agent's rule for one PodVolumeBackup or PodVolumeRestore: the agent of the
/// pod's node reads or writes the volume in place; there is nothing to expose. Like the
/// data mover's, a restarted agent runs an InProgress one again.
pub fn pod_volume_step(v: &PodVolumeView, me: &str) -> Step {
    if phase::terminal(&v.phase) {
        return Step::Idle;
    }
    let mine = v.node.as_deref() == Some(me);
    if v.cancel {
        if v.running_here {
            return Step::Stop;
        }
        // A pod never placed (a restored pod that was never scheduled): any agent ends it.
        return if mine || v.node.is_none() {
            Step::Cancel
        } else {
            Step::Idle
        };
    }
    if !mine || v.running_here {
        return Step::Idle;
    }
    match v.phase.as_str() {
        "" | phase::NEW | phase::IN_PROGRESS => match &v.ready {
            Ready::Yes => Step::Start,
            Ready::Wait => Step::Idle,
            Ready::Gone(why) => Step::Fail(why.clone()),
            Ready::Done => Step::Finish,
        },
        phase::CANCELING => Step::Cancel,
        _ => Step::Idle,
    }
}

/// The number of moves a node runs at once, from the node agent's configuration
/// (Velero's `loadConcurrency`): the smallest `number` of the per-node rules whose
/// `nodeSelector` matches the node's labels, else `globalConfig`, else 1.
pub fn concurrency(config: &serde_json::Value, node_labels: &BTreeMap<String, String>) -> usize {
    let lc = &config["loadConcurrency"];
    let matches = |sel: &serde_json::Value| {
        let labels_ok = sel["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .all(|(k, v)| node_labels.get(k).map(String::as_str) == v.as_str())
            })
            .unwrap_or(true);
        let exprs_ok = sel["matchExpressions"]
            .as_array()
            .map(|a| {
                a.iter().all(|e| {
                    let key = e["key"].as_str().unwrap_or_default();
                    let values: Vec<&str> = e["values"]
                        .as_array()
                        .map(|v| v.iter().filter_map(|s| s.as_str()).collect())
                        .unwrap_or_default();
                    let have = node_labels.get(key);
                    match e["operator"].as_str().unwrap_or_default() {
                        "In" => have.is_some_and(|h| values.contains(&h.as_str())),
                        "NotIn" => !have.is_some_and(|h| values.contains(&h.as_str())),
                        "Exists" => have.is_some(),
                        "DoesNotExist" => have.is_none(),
                        _ => false,
                    }
                })
            })
            .unwrap_or(true);
        labels_ok && exprs_ok
    };
    let per_node = lc["perNodeConfig"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| matches(&r["nodeSelector"]))
        .filter_map(|r| r["number"].as_u64())
        .filter(|n| *n > 0)
        .min();
    per_node
        .or_else(|| lc["globalConfig"].as_u64().filter(|n| *n > 0))
        .unwrap_or(1) as usize
}

struct Ctx {
    client: Client,
    opts: Options,
    slots: Arc<tokio::sync::Semaphore>,
    running: Mutex<HashMap<String, Cancel>>,
}

impl Ctx {
    fn running(&self, key: &str) -> bool {
        self.running.lock().expect("lock").contains_key(key)
    }
}

/// Run the node agent until the process ends.
pub async fn run(client: Client, opts: Options) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = nodes
        .get_opt(&opts.node)
        .await
        .map_err(|e| Error::kube(format!("read node {}", opts.node), e))?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no node named {:?} in the cluster: set --node-name (NODE_NAME) to this node's name",
                opts.node
            ))
        })?
        .labels()
        .clone();
    let mut slots = 1;
    if let Some(cm) = &opts.config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &opts.namespace);
        if let Some(c) = api
            .get_opt(cm)
            .await
            .map_err(|e| Error::kube(format!("read ConfigMap {}/{cm}", opts.namespace), e))?
        {
            // Velero's node-agent ConfigMap holds one JSON document under any key.
            let doc = c
                .data
                .unwrap_or_default()
                .into_values()
                .next()
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&doc).map_err(|e| Error::Json {
                what: format!("ConfigMap {}/{cm}", opts.namespace),
                source: e,
            })?;
            slots = concurrency(&v, &labels);
        }
    }
    tracing::info!(
        node = %opts.node,
        concurrency = slots,
        pods_dir = %opts.pods_dir.display(),
        "node agent started"
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        running: Mutex::new(HashMap::new()),
        opts,
    });
    let ns = ctx.opts.namespace.clone();
    tokio::spawn(announce(client.clone(), ns.clone(), ctx.opts.node.clone()));
    let pods = || {
        (
            Api::<Pod>::namespaced(client.clone(), &ns),
            watcher::Config::default().labels(EXPOSED_FOR),
        )
    };
    let (pa, pc) = pods();
    let uploads = Controller::new(
        Api::<DataUpload>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .owns(pa, pc)
    .with_config(Config::default().concurrency(4))
    .run(reconcile::<DataUpload>, error_policy, ctx.clone())
    .for_each(|_| async {});
    let (pa, pc) = pods();
    let downloads = Controller::new(
        Api::<DataDownload>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .owns(pa, pc)
    .with_config(Config::default().concurrency(4))
    .run(reconcile::<DataDownload>, error_policy, ctx.clone())
    .for_each(|_| async {});
    let pod_backups = Controller::new(
        Api::<PodVolumeBackup>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .with_config(Config::default().concurrency(4))
    .run(reconcile_pvb, error_policy, ctx.clone())
    .for_each(|_| async {});
    let pod_restores = Controller::new(
        Api::<PodVolumeRestore>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .with_config(Config::default().concurrency(4))
    .run(reconcile_pvr, error_policy, ctx.clone())
    .for_each(|_| async {});
    futures::future::join4(uploads, downloads, pod_backups, pod_restores).await;
    Ok(())
}

fn error_policy<K>(_: Arc<K>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!("{e}; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|e| Error::kube(format!("update the status of {name}"), e))?;
    Ok(())
}

/// A phase change, made only while the phase is not final, by a status replace carrying
/// the resource version: a final phase another agent wrote (a prepare timeout, a failed
/// pod) is never overwritten. False when it was not made.
async fn advance<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<bool>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..5 {
        let Some(cur) = api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube(format!("read {name}"), e))?
        else {
            return Ok(false);
        };
        let mut v = serde_json::to_value(&cur).expect("serializes");
        let p = v
            .pointer("/status/phase")
            .and_then(serde_json::Value::as_str);
        if phase::terminal(p.unwrap_or("")) {
            return Ok(false);
        }
        if !v["status"].is_object() {
            v["status"] = json!({});
        }
        for (k, x) in status.as_object().into_iter().flatten() {
            v["status"][k] = x.clone();
        }
        let obj: K = serde_json::from_value(v).map_err(|e| Error::Json {
            what: format!("status of {name}"),
            source: e,
        })?;
        match api.replace_status(name, &PostParams::default(), &obj).await {
            Ok(_) => return Ok(true),
            // A progress write came in between: read again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(Error::kube(format!("update the status of {name}"), e)),
        }
    }
    Ok(false)
}

/// Accept: a status replace carrying the resource version, so that of several agents
/// exactly one wins; the others see a conflict and leave it.
async fn accept<K>(api: &Api<K>, obj: &K, me: &str) -> Result<bool>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut v = serde_json::to_value(obj).expect("serializes");
    v["status"]["phase"] = json!(phase::ACCEPTED);
    v["status"]["acceptedByNode"] = json!(me);
    v["status"]["acceptedTimestamp"] = json!(now());
    let name = obj.meta().name.clone().unwrap_or_default();
    let obj: K = serde_json::from_value(v).map_err(|e| Error::Json {
        what: format!("status of {name}"),
        source: e,
    })?;
    match api
        .replace_status(&name, &PostParams::default(), &obj)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(Error::kube(format!("accept {name}"), e)),
    }
}

async fn mark_cleaned<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {CLEANED: "true"}}})),
    )
    .await
    .map_err(|e| Error::kube(format!("mark {name} cleaned up"), e))?;
    Ok(())
}

fn utc(t: &Option<Time>) -> Option<DateTime<Utc>> {
    t.as_ref().and_then(crate::crd::utc)
}

/// Progress goes to the status at most once a second. A move run again after its agent
/// was killed starts from the bytes its status already shows (`floor`): what the killed
/// run stored is found in the repository, and progress never goes back.
fn progress_writer<K>(
    api: Api<K>,
    name: String,
    floor: i64,
) -> (
    impl FnMut(arca_movers::Progress) + Send + 'static,
    tokio::task::JoinHandle<()>,
)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (tx, mut rx) = tokio::sync::watch::channel(None::<arca_movers::Progress>);
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(p) = *rx.borrow_and_update() else {
                continue;
            };
            let prog = DataMoveProgress {
                total_bytes: Some(p.bytes_total as i64),
                bytes_done: Some((p.bytes_done as i64).max(floor)),
            };
            // Advisory: a lost write is made good by the next.
            let _ = patch_status(&api, &name, json!({ "progress": prog })).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (
        move |p| {
            let _ = tx.send(Some(p));
        },
        task,
    )
}

/// What differs between a DataUpload and a DataDownload for the node agent.
trait Work:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Prefix of its key among the running moves.
    const KEY: &'static str;
    /// Its kind, for owner references.
    const KIND: &'static str;
    /// Phase, accepting node, moving node, acceptance time.
    fn seen(&self) -> (String, Option<String>, Option<String>, Option<Time>);
    /// `spec.cancel`.
    fn canceled(&self) -> bool;
    /// Whether it may be accepted now.
    fn acceptable(&self, ctx: &Ctx) -> impl std::future::Future<Output = Result<bool>> + Send;
    /// Expose its data.
    fn expose(
        &self,
        ctx: &Ctx,
        owner: &Owner,
    ) -> impl std::future::Future<Output = Result<Exposure>> + Send;
    /// Whether its mover needs the exposer pod (a download whose data is written needs
    /// only the rebinding).
    fn needs_pod(&self) -> bool;
    /// Start its mover (the pod, if it still runs).
    fn start(self, ctx: Arc<Ctx>, exposed: Option<expose::Exposed>, key: String);
    /// Remove what exposing made.
    fn clean(&self, ctx: &Ctx) -> impl std::future::Future<Output = Result<()>> + Send;
}

impl Work for DataUpload {
    const KEY: &'static str = "du";
    const KIND: &'static str = "DataUpload";
    fn seen(&self) -> (String, Option<String>, Option<String>, Option<Time>) {
        let st = self.status.clone().unwrap_or_default();
        let p = st.phase.unwrap_or_default();
        (p, st.accepted_by_node, st.node, st.accepted_timestamp)
    }
    fn canceled(&self) -> bool {
        self.spec.cancel == Some(true)
    }
    async fn acceptable(&self, _: &Ctx) -> Result<bool> {
        Ok(true)
    }
    async fn expose(&self, ctx: &Ctx, owner: &Owner) -> Result<Exposure> {
        let vs = self
            .spec
            .csi_snapshot
            .as_ref()
            .map(|c| c.volume_snapshot.as_str());
        let r = expose::expose_snapshot(
            &ctx.client,
            &ctx.opts.namespace,
            owner,
            &self.spec.source_namespace,
            vs.unwrap_or_default(),
            &self.spec.source_pvc,
            &ctx.opts.image,
        )
        .await?;
        // The snapshot's own deadline (the backup's csiSnapshotTimeout), from the upload's
        // creation, within the prepare timeout.
        let limit = self
            .spec
            .operation_timeout
            .as_deref()
            .and_then(crate::backup::parse_go_std);
        let age = self
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(crate::crd::utc)
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default());
        if let (Exposure::Waiting(why), Some(limit), Some(age)) = (&r, limit, age)
            && age > limit
        {
            return Err(Error::Invalid(format!(
                "{why} after {}s (csiSnapshotTimeout)",
                limit.as_secs()
            )));
        }
        Ok(r)
    }
    fn needs_pod(&self) -> bool {
        true
    }
    fn start(self, ctx: Arc<Ctx>, exposed: Option<expose::Exposed>, key: String) {
        if let Some(e) = exposed {
            start_upload(ctx, self, e, key);
        }
    }
    async fn clean(&self, ctx: &Ctx) -> Result<()> {
        let vs = self
            .spec
            .csi_snapshot
            .as_ref()
            .map(|c| c.volume_snapshot.as_str());
        expose::clean_snapshot(
            &ctx.client,
            &ctx.opts.namespace,
            &self.name_any(),
            &self.spec.source_namespace,
            vs.unwrap_or_default(),
        )
        .await
    }
}

impl Work for DataDownload {
    const KEY: &'static str = "dd";
    const KIND: &'static str = "DataDownload";
    fn seen(&self) -> (String, Option<String>, Option<String>, Option<Time>) {
        let st = self.status.clone().unwrap_or_default();
        let p = st.phase.unwrap_or_default();
        (p, st.accepted_by_node, st.node, st.accepted_timestamp)
    }
    fn canceled(&self) -> bool {
        self.spec.cancel == Some(true)
    }
    /// Velero's rule: not before the target claim exists.
    async fn acceptable(&self, ctx: &Ctx) -> Result<bool> {
        let t = &self.spec.target_volume;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &t.namespace);
        Ok(claims
            .get_opt(&t.pvc)
            .await
            .map_err(|e| Error::kube(format!("read claim {}/{}", t.namespace, t.pvc), e))?
            .is_some())
    }
    async fn expose(&self, ctx: &Ctx, owner: &Owner) -> Result<Exposure> {
        let t = &self.spec.target_volume;
        expose::expose_new_volume(
            &ctx.client,
            &ctx.opts.namespace,
            owner,
            &t.namespace,
            &t.pvc,
            &ctx.opts.image,
        )
        .await
    }
    fn needs_pod(&self) -> bool {
        !self.annotations().contains_key(WRITTEN)
    }
    fn start(self, ctx: Arc<Ctx>, exposed: Option<expose::Exposed>, key: String) {
        // Written, and the pod already gone: only the rebinding is left.
        if exposed.is_some() || self.annotations().contains_key(WRITTEN) {
            start_download(ctx, self, exposed, key);
        }
    }
    async fn clean(&self, ctx: &Ctx) -> Result<()> {
        // A volume written and handed over is the target's now; any other is freed.
        let st = self.status.clone().unwrap_or_default();
        let free = st.phase.as_deref() != Some(phase::COMPLETED);
        if free && let Some(pv) = self.annotations().get(WRITTEN) {
            // Failed during the rebinding: the volume holds the restored data and may be
            // pre-bound to the target; it keeps it, with its own reclaim policy back.
            return expose::reset_reclaim_policy(&ctx.client, pv).await;
        }
        expose::clean_pod_and_claim(&ctx.client, &ctx.opts.namespace, &self.name_any(), free).await
    }
}

/// The node agent's reconciler of either kind: [`step`] on a fresh read, carried out.
async fn reconcile<K: Work>(cached: Arc<K>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = &ctx.opts.namespace;
    let name = cached.name_any();
    let Some((api, w)) = fresh::<K>(&ctx, &name).await? else {
        return Ok(Action::await_change());
    };
    let (phase_now, accepted_by, node, accepted_at) = w.seen();
    let key = format!("{}/{name}", K::KEY);
    let pod = match expose::exposed(&ctx.client, ns, &name).await {
        Ok(p) => p,
        Err(Error::Invalid(why)) if !phase::terminal(&phase_now) => {
            // Failed by the agent concerned: the mover's, or the acceptor's before one.
            let me = Some(ctx.opts.node.as_str());
            let concerned = match node.as_deref() {
                Some(n) => Some(n) == me,
                None => accepted_by.as_deref() == me,
            };
            if concerned && !ctx.running(&key) {
                fail(&api, &name, &why).await?;
            }
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        Err(Error::Invalid(_)) => None,
        Err(e) => return Err(e),
    };
    let view = View {
        phase: phase_now,
        cancel: w.canceled(),
        accepted_by,
        node,
        accepted_at: utc(&accepted_at),
        cleaned: w.annotations().contains_key(CLEANED),
        pod_node: pod.as_ref().map(|p| p.node.clone()),
        running_here: ctx.running(&key),
    };
    let me = ctx.opts.node.clone();
    let s = step(&view, &me, Utc::now(), ctx.opts.prepare_timeout);
    tracing::debug!(kind = K::KIND, %name, ?s, phase = %view.phase, "reconcile");
    match s {
        Step::Idle => {}
        Step::Accept => {
            if !w.acceptable(&ctx).await? {
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            if accept(&api, &w, &me).await? {
                tracing::info!(kind = K::KIND, %name, "accepted");
            }
        }
        Step::Expose => {
            let owner = Owner {
                kind: K::KIND,
                name: name.clone(),
                uid: w.uid().unwrap_or_default(),
            };
            match w.expose(&ctx, &owner).await {
                Ok(Exposure::Exposed) => {}
                Ok(Exposure::Waiting(why)) => {
                    tracing::debug!(kind = K::KIND, %name, "{why}");
                    return Ok(Action::requeue(Duration::from_secs(2)));
                }
                Err(e @ (Error::NotFound(_) | Error::Invalid(_))) => {
                    fail(&api, &name, &e.to_string()).await?;
                }
                Err(e) => return Err(e),
            }
            // The pod's progress wakes this up (it is owned); the timeout needs a clock.
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        Step::Prepare => {
            advance(&api, &name, json!({"phase": phase::PREPARED, "node": me})).await?;
        }
        Step::Start => {
            if pod.is_none() && w.needs_pod() {
                // Prepared means its pod ran here; gone now, the volume is no longer held.
                fail(&api, &name, "its exposer pod is gone (deleted or evicted)").await?;
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            w.start(ctx.clone(), pod, key);
        }
        Step::Stop => {
            if let Some(c) = ctx.running.lock().expect("lock").get(&key) {
                c.cancel();
            }
            advance(&api, &name, json!({"phase": phase::CANCELING})).await?;
        }
        Step::Cancel => {
            advance(
                &api,
                &name,
                json!({"phase": phase::CANCELED, "completionTimestamp": now(), "message": "canceled"}),
            )
            .await?;
        }
        Step::Fail(why) => fail(&api, &name, &why).await?,
        Step::Finish => {}
        Step::Clean => {
            w.clean(&ctx).await?;
            mark_cleaned(&api, &name).await?;
            tracing::info!(kind = K::KIND, %name, "exposer objects removed");
        }
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn fail<K>(api: &Api<K>, name: &str, why: &str) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    tracing::warn!(%name, "failed: {why}");
    advance(
        api,
        name,
        json!({"phase": phase::FAILED, "message": why, "completionTimestamp": now()}),
    )
    .await
    .map(drop)
}

/// Write how a move ended: the final status given, Canceled, or Failed saying why.
async fn end<K>(api: &Api<K>, name: &str, result: Result<serde_json::Value>, doing: &str)
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let written = match result {
        Ok(st) => advance(api, name, st).await.map(drop),
        Err(Error::Engine(arca_engine::Error::Cancelled)) => advance(
            api,
            name,
            json!({"phase": phase::CANCELED, "message": "canceled", "completionTimestamp": now()}),
        )
        .await
        .map(drop),
        Err(e) => fail(api, name, &format!("{doing} failed: {e}")).await,
    };
    if let Err(e) = written {
        tracing::warn!(%name, "{e}");
    }
}

/// InProgress, now that it has a slot; Cancelled if it ended meanwhile (canceled while
/// queued, failed by its acceptor). A rerun keeps the first start time.
async fn begin<K, S>(api: &Api<K>, name: &str, status: Option<&S>) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    let started = status
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.get("startTimestamp").cloned())
        .unwrap_or_else(|| json!(now()));
    let st = json!({"phase": phase::IN_PROGRESS, "startTimestamp": started});
    if advance(api, name, st).await? {
        Ok(())
    } else {
        Err(Error::Engine(arca_engine::Error::Cancelled))
    }
}

/// The namespace's volume repository made known as a BackupRepository (Velero's
/// repository ensurer), so that the server maintains it (its deleted backups' data
/// reclaimed).
async fn ensure_repository(
    client: &Client,
    ns: &str,
    location: &str,
    volume_ns: &str,
) -> Result<()> {
    let name = super::stable_name(
        &format!("{volume_ns}-{location}"),
        &format!("{volume_ns}/{location}"),
    );
    crate::server::repositories::ensure(client, ns, &name, volume_ns, location, super::DATAMOVER)
        .await
}

/// The volume repository of `volume_ns` at location `bsl` (`<root>/volumes/<ns>`),
/// opened for writing; a backup (`ensure`) first makes it known as a BackupRepository.
async fn volume_repo(
    ctx: &Ctx,
    bsl: &str,
    volume_ns: &str,
    ensure: bool,
) -> Result<arca_engine::Indexed> {
    let ns = &ctx.opts.namespace;
    let location = Location::resolve(&ctx.client, ns, Some(bsl), "").await?;
    if ensure && let Err(e) = ensure_repository(&ctx.client, ns, &location.name, volume_ns).await {
        // Only its maintenance waits for it: the move goes on.
        tracing::warn!("{e}");
    }
    let who = crate::location::writer(ns);
    let repo = location
        .open(
            &location.volumes_url(volume_ns),
            ctx.opts.cache_root.as_deref(),
            &who,
        )
        .await?;
    repo.repo().pause_points().arm_from_env();
    Ok(repo)
}

/// Back a volume up with its progress written to `name`'s status, never below the bytes
/// done it already `shown` (a run again after a kill).
async fn upload<K>(
    api: &Api<K>,
    name: &str,
    shown: Option<&DataMoveProgress>,
    repo: &arca_engine::Indexed,
    req: BackupRequest,
    cancel: &Cancel,
) -> Result<arca_movers::BackupResult>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let floor = shown.and_then(|p| p.bytes_done).unwrap_or(0);
    let (report, writer) = progress_writer(api.clone(), name.to_string(), floor);
    let r = arca_movers::backup(repo, req, cancel, Duration::from_secs(1), report).await;
    writer.abort();
    Ok(r?)
}

/// The final status of a finished upload; its snapshot's field named `id_field`.
fn completed(
    name: &str,
    r: &arca_movers::BackupResult,
    path: &std::path::Path,
    id_field: &str,
) -> serde_json::Value {
    tracing::info!(%name, snapshot = %r.snapshot.short(), bytes = r.bytes_total, new = r.bytes_new, "completed");
    let mut st = json!({
        "phase": phase::COMPLETED,
        id_field: r.snapshot.to_hex(),
        "path": path.display().to_string(),
        "progress": {"totalBytes": r.bytes_total, "bytesDone": r.bytes_total},
        "incrementalBytes": r.bytes_new,
        "completionTimestamp": now(),
    });
    if r.bytes_total == 0 {
        st["message"] = json!("volume was empty so no data was uploaded");
    }
    st
}

/// A move's cancellation, registered under `key` among the running ones.
fn register(ctx: &Ctx, key: &str) -> Cancel {
    let cancel = Cancel::new();
    ctx.running
        .lock()
        .expect("lock")
        .insert(key.to_string(), cancel.clone());
    cancel
}

/// A snapshot ID from a resource's spec.
fn snapshot_id(kind: &str, name: &str, id: &str) -> Result<arca_format::SnapshotId> {
    id.parse()
        .map_err(|_| Error::Invalid(format!("{kind} {name}: {id:?} is not a snapshot ID")))
}

/// Run an upload on a task of its own: waits for a slot (the work stays Prepared), then
/// moves the volume's data and writes the outcome.
fn start_upload(ctx: Arc<Ctx>, du: DataUpload, exposed: expose::Exposed, key: String) {
    let cancel = register(&ctx, &key);
    tokio::spawn(async move {
        let ns = ctx.opts.namespace.clone();
        let name = du.name_any();
        let api: Api<DataUpload> = Api::namespaced(ctx.client.clone(), &ns);
        let _slot = ctx.slots.clone().acquire_owned().await;
        let result = async {
            begin(&api, &name, du.status.as_ref()).await?;
            crate::server::pause_point("upload-in-progress").await;
            let path = expose::host_path(&ctx.opts.pods_dir, &exposed)?;
            let src_ns = &du.spec.source_namespace;
            let repo = volume_repo(&ctx, &du.spec.backup_storage_location, src_ns, true).await?;
            let who = crate::location::writer(&ns);
            let mut labels = BTreeMap::from([
                ("arca.dev/data-upload".to_string(), name.clone()),
                ("arca.dev/namespace".to_string(), src_ns.clone()),
                ("arca.dev/pvc".to_string(), du.spec.source_pvc.clone()),
            ]);
            if let Some(b) = du.labels().get(super::BACKUP_NAME) {
                labels.insert(super::BACKUP_NAME.to_string(), b.clone());
            }
            let req = BackupRequest {
                source: if exposed.block {
                    Source::Block(path.clone())
                } else {
                    Source::Tree(path.clone())
                },
                volume: format!("{src_ns}/{}", du.spec.source_pvc),
                identity: who,
                tags: vec!["arca-volume".into()],
                labels,
                checkpoint: ctx.opts.checkpoint,
            };
            let shown = du.status.as_ref().and_then(|s| s.progress.as_ref());
            let r = upload(&api, &name, shown, &repo, req, &cancel).await?;
            Ok::<_, Error>(completed(&name, &r, &path, "snapshotId"))
        }
        .await;
        end(&api, &name, result, "moving the data").await;
        ctx.running.lock().expect("lock").remove(&key);
    });
}

/// Annotation on a DataDownload: its data is written into this volume; only the
/// rebinding is left.
pub const WRITTEN: &str = "arca.dev/written-volume";

fn start_download(ctx: Arc<Ctx>, dd: DataDownload, exposed: Option<expose::Exposed>, key: String) {
    let cancel = register(&ctx, &key);
    // The engine's restore future is Send, but the compiler cannot show it through
    // tokio::spawn's higher-ranked bounds; on a blocking thread of its own it needs not be.
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
        let ns = ctx.opts.namespace.clone();
        let name = dd.name_any();
        let api: Api<DataDownload> = Api::namespaced(ctx.client.clone(), &ns);
        let _slot = ctx.slots.clone().acquire_owned().await;
        let target = dd.spec.target_volume.clone();
        let result = async {
            let written = dd.annotations().get(WRITTEN).cloned();
            let pv = match (written, exposed) {
                (Some(pv), _) => pv,
                (None, None) => {
                    return Err(Error::NotFound("the restore pod is gone".into()));
                }
                (None, Some(exposed)) => {
                    begin(&api, &name, dd.status.as_ref()).await?;
                    let path = expose::host_path(&ctx.opts.pods_dir, &exposed)?;
                    let repo = volume_repo(
                        &ctx,
                        &dd.spec.backup_storage_location,
                        &dd.spec.source_namespace,
                        false,
                    )
                    .await?;
                    let snapshot = snapshot_id("DataDownload", &name, &dd.spec.snapshot_id)?;
                    let req = RestoreRequest {
                        snapshot,
                        target: if exposed.block {
                            Target::Block {
                                path: path.clone(),
                                fresh: false,
                                overwrite: true,
                            }
                        } else {
                            Target::Tree(path.clone())
                        },
                    };
                    let (report, writer) = progress_writer(api.clone(), name.clone(), 0);
                    let r = arca_movers::restore(&repo, req, &cancel, Duration::from_secs(1), report)
                        .await;
                    writer.abort();
                    let r = r?;
                    tracing::info!(download = %name, bytes = r.bytes_written, "written");
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({
                            "metadata": {"annotations": {WRITTEN: exposed.pv}},
                        })),
                    )
                    .await
                    .map_err(|e| Error::kube(format!("record the volume of {name}"), e))?;
                    patch_status(
                        &api,
                        &name,
                        json!({"progress": {"totalBytes": r.bytes_written, "bytesDone": r.bytes_written}}),
                    )
                    .await?;
                    exposed.pv
                }
            };
            // The rebinding: polled, since it waits on the API server's volume binder.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            loop {
                if expose::rebind(&ctx.client, &ns, &name, &target.namespace, &target.pvc, &pv)
                    .await?
                {
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::Invalid(format!(
                        "volume {pv} did not bind to claim {}/{} within 5 minutes",
                        target.namespace, target.pvc
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        .await;
        let outcome = result.map(|()| {
            tracing::info!(download = %name, "completed");
            json!({"phase": phase::COMPLETED, "completionTimestamp": now()})
        });
        end(&api, &name, outcome, "restoring the data").await;
        ctx.running.lock().expect("lock").remove(&key);
    })
    });
}

/// A pod volume's directory under the host's pods directory: a claim's by its volume's
/// name (`<pv>/mount` for CSI volumes), any other by its own name (Velero's
/// GetVolumeDirectory).
async fn pod_volume_path(ctx: &Ctx, pod: &Pod, volume: &str) -> Result<PathBuf> {
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let vol = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == volume)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "pod {ns}/{} has no volume {volume}",
                pod.name_any()
            ))
        })?;
    let (dir, csi) = match &vol.persistent_volume_claim {
        Some(c) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let pv = claims
                .get_opt(&c.claim_name)
                .await
                .map_err(|e| Error::kube(format!("read claim {ns}/{}", c.claim_name), e))?
                .and_then(|c| c.spec?.volume_name)
                .ok_or_else(|| {
                    Error::NotFound(format!("claim {ns}/{} is not bound", c.claim_name))
                })?;
            let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> =
                Api::all(ctx.client.clone());
            let csi = pvs
                .get_opt(&pv)
                .await
                .map_err(|e| Error::kube(format!("read volume {pv}"), e))?
                .and_then(|p| p.spec)
                .is_some_and(|s| s.csi.is_some());
            (pv, csi)
        }
        None => (volume.to_string(), vol.csi.is_some()),
    };
    expose::host_path(
        &ctx.opts.pods_dir,
        &expose::Exposed {
            node: ctx.opts.node.clone(),
            pod_uid: pod.uid().unwrap_or_default(),
            pv: dir,
            block: false,
            csi,
        },
    )
}

/// The pod of a PodVolumeBackup or PodVolumeRestore, if it is still that pod (same UID).
async fn pod_of(client: &Client, r: &PodRef) -> Result<Option<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &r.namespace);
    Ok(api
        .get_opt(&r.name)
        .await
        .map_err(|e| Error::kube(format!("read pod {}/{}", r.namespace, r.name), e))?
        .filter(|p| p.uid().as_deref() == Some(r.uid.as_str())))
}

/// Carry out a [`pod_volume_step`] decision common to both kinds; Start is the caller's.
async fn pod_volume_act<K>(ctx: &Ctx, api: &Api<K>, name: &str, key: &str, s: &Step) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match s {
        Step::Stop => {
            if let Some(c) = ctx.running.lock().expect("lock").get(key) {
                c.cancel();
            }
            advance(api, name, json!({"phase": phase::CANCELING})).await?;
        }
        Step::Cancel => {
            advance(
                api,
                name,
                json!({"phase": phase::CANCELED, "completionTimestamp": now(), "message": "canceled"}),
            )
            .await?;
        }
        Step::Fail(why) => fail(api, name, why).await?,
        Step::Finish => {
            tracing::info!(%name, "its pod found the data written: completed");
            advance(
                api,
                name,
                json!({"phase": phase::COMPLETED, "completionTimestamp": now()}),
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The object a reconcile is about, read afresh (the cache may be behind a phase change
/// this agent just made), with its API; None once it is gone.
async fn fresh<K>(ctx: &Ctx, name: &str) -> Result<Option<(Api<K>, K)>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ns = &ctx.opts.namespace;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let obj = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read {} {ns}/{name}", K::kind(&())), e))?;
    Ok(obj.map(|o| (api, o)))
}

async fn reconcile_pvb(cached: Arc<PodVolumeBackup>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = cached.name_any();
    let Some((api, b)) = fresh::<PodVolumeBackup>(&ctx, &name).await? else {
        return Ok(Action::await_change());
    };
    let st = b.status.clone().unwrap_or_default();
    let key = format!("pvb/{name}");
    let mut view = PodVolumeView {
        phase: st.phase.unwrap_or_default(),
        cancel: b.spec.cancel == Some(true),
        node: Some(b.spec.node.clone()),
        running_here: ctx.running(&key),
        ..Default::default()
    };
    let me = ctx.opts.node.clone();
    let mut pod = None;
    if view.node.as_deref() == Some(me.as_str())
        && !phase::terminal(&view.phase)
        && !view.running_here
    {
        let p = &b.spec.pod;
        pod = pod_of(&ctx.client, p).await?;
        view.ready = match &pod {
            None => Ready::Gone(format!("pod {}/{} is gone", p.namespace, p.name)),
            Some(x) => {
                let v = serde_json::to_value(x).expect("serializes");
                match super::podvolume::not_running(&v) {
                    Some(why) => Ready::Gone(format!("pod {}/{}: {why}", p.namespace, p.name)),
                    None => Ready::Yes,
                }
            }
        };
    }
    let s = pod_volume_step(&view, &me);
    tracing::debug!(kind = "PodVolumeBackup", %name, ?s, phase = %view.phase, "reconcile");
    match (s, pod) {
        (Step::Start, Some(pod)) => start_pod_volume_backup(ctx.clone(), b, pod, key),
        (s, _) => pod_volume_act(&ctx, &api, &name, &key, &s).await?,
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn reconcile_pvr(cached: Arc<PodVolumeRestore>, ctx: Arc<Ctx>) -> Result<Action> {
    let name = cached.name_any();
    let Some((api, r)) = fresh::<PodVolumeRestore>(&ctx, &name).await? else {
        return Ok(Action::await_change());
    };
    let st = r.status.clone().unwrap_or_default();
    let key = format!("pvr/{name}");
    let mut view = PodVolumeView {
        phase: st.phase.unwrap_or_default(),
        cancel: r.spec.cancel == Some(true),
        node: st.node.clone(),
        running_here: ctx.running(&key),
        ..Default::default()
    };
    let me = ctx.opts.node.clone();
    let mut pod = None;
    if !phase::terminal(&view.phase) && !view.running_here {
        let p = &r.spec.pod;
        pod = pod_of(&ctx.client, p).await?;
        if let Some(n) = pod
            .as_ref()
            .and_then(|x| x.spec.as_ref()?.node_name.clone())
        {
            view.node.get_or_insert(n);
        }
        view.ready = match &pod {
            None => Ready::Gone(format!("restored pod {}/{} is gone", p.namespace, p.name)),
            Some(x) => restore_wait_ready(x),
        };
        if view.node.is_none() && matches!(view.ready, Ready::Gone(_)) {
            // Never placed and gone: whoever sees it first fails it.
            view.node = Some(me.clone());
        }
    }
    let s = pod_volume_step(&view, &me);
    tracing::debug!(kind = "PodVolumeRestore", %name, ?s, phase = %view.phase, "reconcile");
    match (s, pod) {
        (Step::Start, Some(pod)) => start_pod_volume_restore(ctx.clone(), r, pod, key),
        (Step::Idle, _)
            if view.ready == Ready::Wait && view.node.as_deref().is_none_or(|n| n == me) =>
        {
            // Its pod's init container starting (or its pod being placed) is what it
            // waits for: polled by the agents concerned, as the pods of every namespace
            // are not watched for it.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        (s, _) => pod_volume_act(&ctx, &api, &name, &key, &s).await?,
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Velero's rule: a restored pod's volumes are written while its restore-wait init
/// container runs (its volumes are mounted, the application not started).
fn restore_wait_ready(pod: &Pod) -> Ready {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        || pod.metadata.deletion_timestamp.is_some()
    {
        return Ready::Gone(format!(
            "restored pod {} ended before its volumes were written",
            pod.name_any()
        ));
    }
    let Some(i) = spec
        .init_containers
        .unwrap_or_default()
        .iter()
        .position(|c| c.name == super::podvolume::RESTORE_WAIT)
    else {
        return Ready::Gone(format!(
            "restored pod {} has no {} init container",
            pod.name_any(),
            super::podvolume::RESTORE_WAIT
        ));
    };
    let state = status
        .init_container_statuses
        .unwrap_or_default()
        .get(i)
        .and_then(|s| s.state.clone())
        .unwrap_or_default();
    if state.running.is_some() {
        Ready::Yes
    } else if state.terminated.is_some_and(|t| t.exit_code == 0) {
        // It found every done file: the volumes were written, by an agent that did not
        // live to say so.
        Ready::Done
    } else {
        Ready::Wait
    }
}

/// Read one volume of a running pod into the repository, on a task of its own.
fn start_pod_volume_backup(ctx: Arc<Ctx>, b: PodVolumeBackup, pod: Pod, key: String) {
    let cancel = register(&ctx, &key);
    tokio::spawn(async move {
        let ns = ctx.opts.namespace.clone();
        let name = b.name_any();
        let api: Api<PodVolumeBackup> = Api::namespaced(ctx.client.clone(), &ns);
        let _slot = ctx.slots.clone().acquire_owned().await;
        let result = async {
            begin(&api, &name, b.status.as_ref()).await?;
            crate::server::pause_point("pod-volume-backup-in-progress").await;
            let path = pod_volume_path(&ctx, &pod, &b.spec.volume).await?;
            let pns = &b.spec.pod.namespace;
            let repo = volume_repo(&ctx, &b.spec.backup_storage_location, pns, true).await?;
            let who = crate::location::writer(&ns);
            let claim = b.annotations().get(super::podvolume::PVC_NAME).cloned();
            let mut labels = BTreeMap::from([
                ("arca.dev/pod-volume-backup".to_string(), name.clone()),
                ("arca.dev/namespace".to_string(), pns.clone()),
                ("arca.dev/pod".to_string(), b.spec.pod.name.clone()),
                ("arca.dev/pod-volume".to_string(), b.spec.volume.clone()),
            ]);
            if let Some(c) = &claim {
                labels.insert("arca.dev/pvc".to_string(), c.clone());
            }
            if let Some(x) = b.labels().get(super::BACKUP_NAME) {
                labels.insert(super::BACKUP_NAME.to_string(), x.clone());
            }
            // The volume's lineage: a claim's whichever pod mounts it; any other volume's,
            // its pod's (Velero's namespace/pod/volume).
            let volume = match &claim {
                Some(c) => format!("{pns}/{c}"),
                None => format!("{pns}/{}/{}", b.spec.pod.name, b.spec.volume),
            };
            let req = BackupRequest {
                source: Source::Tree(path.clone()),
                volume,
                identity: who,
                tags: vec!["arca-volume".into(), "arca-pod-volume".into()],
                labels,
                checkpoint: ctx.opts.checkpoint,
            };
            let shown = b.status.as_ref().and_then(|s| s.progress.as_ref());
            let r = upload(&api, &name, shown, &repo, req, &cancel).await?;
            // Velero's PodVolumeBackup spells it `snapshotID`, its DataUpload `snapshotId`.
            Ok::<_, Error>(completed(&name, &r, &path, "snapshotID"))
        }
        .await;
        end(&api, &name, result, "backing up the volume").await;
        ctx.running.lock().expect("lock").remove(&key);
    });
}

/// Write one volume of a restored pod from the repository, then its done file.
fn start_pod_volume_restore(ctx: Arc<Ctx>, r: PodVolumeRestore, pod: Pod, key: String) {
    let cancel = register(&ctx, &key);
    let handle = tokio::runtime::Handle::current();
    // As for downloads: the engine's restore future on a blocking thread of its own.
    tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let ns = ctx.opts.namespace.clone();
            let name = r.name_any();
            let api: Api<PodVolumeRestore> = Api::namespaced(ctx.client.clone(), &ns);
            let _slot = ctx.slots.clone().acquire_owned().await;
            let result = async {
                begin(&api, &name, r.status.as_ref()).await?;
                patch_status(&api, &name, json!({"node": ctx.opts.node})).await?;
                let path = pod_volume_path(&ctx, &pod, &r.spec.volume).await?;
                let repo = volume_repo(
                    &ctx,
                    &r.spec.backup_storage_location,
                    &r.spec.source_namespace,
                    false,
                )
                .await?;
                let snapshot = snapshot_id("PodVolumeRestore", &name, &r.spec.snapshot_id)?;
                let req = RestoreRequest {
                    snapshot,
                    target: Target::Tree(path.clone()),
                };
                let (report, writer) = progress_writer(api.clone(), name.clone(), 0);
                let res =
                    arca_movers::restore(&repo, req, &cancel, Duration::from_secs(1), report).await;
                writer.abort();
                let res = res?;
                let ruid = r
                    .labels()
                    .get(super::RESTORE_UID)
                    .cloned()
                    .unwrap_or_default();
                super::podvolume::mark_done(&path, &ruid).map_err(|e| Error::Io {
                    what: format!("write the done file in {}", path.display()),
                    source: e,
                })?;
                Ok::<_, Error>(res.bytes_written)
            }
            .await;
            let outcome = result.map(|bytes| {
                tracing::info!(pod_volume_restore = %name, bytes, "completed");
                json!({
                    "phase": phase::COMPLETED,
                    "progress": {"totalBytes": bytes, "bytesDone": bytes},
                    "completionTimestamp": now(),
                })
            });
            end(&api, &name, outcome, "restoring the volume").await;
            ctx.running.lock().expect("lock").remove(&key);
        })
    });
}

/// Label on the Lease by which a node agent says it runs: its node.
pub const PRESENCE: &str = "arca.dev/node-agent";
/// How often a node agent renews its Lease.
const PRESENCE_RENEW: Duration = Duration::from_secs(10);
/// How old a node agent's Lease may be and still count. Generous: the renewal time is the
/// agent's clock, read by the server's; a skew beyond it only makes work fail early.
const PRESENCE_FRESH_SECS: i64 = 300;

/// Say, by renewing a Lease `node-agent-<hash>` in the install namespace every 10 s, that
/// this node's agent runs (Velero looks for a running node-agent pod on the node; a Lease
/// also serves an agent that runs outside a pod).
async fn announce(client: Client, ns: String, node: String) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let api: Api<Lease> = Api::namespaced(client, &ns);
    let name = super::stable_name("node-agent", &node);
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "labels": {PRESENCE: crate::record::label_value(&node)}},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": 60,
                "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
            },
        });
        if let Err(e) = api
            .patch(
                &name,
                &PatchParams::apply("arca-node-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            tracing::warn!("renewing the node agent's Lease {ns}/{name}: {e}");
        }
        tokio::time::sleep(PRESENCE_RENEW).await;
    }
}

/// Whether a node agent runs on `node` (any node: None): its Lease renewed lately.
pub async fn agent_running(client: &Client, ns: &str, node: Option<&str>) -> Result<bool> {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let leases = api
        .list(&ListParams::default().labels(PRESENCE))
        .await
        .map_err(|e| Error::kube(format!("list the node agents' Leases in {ns}"), e))?;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    Ok(leases.items.iter().any(|l| {
        let spec = l.spec.clone().unwrap_or_default();
        let fresh = spec
            .renew_time
            .is_some_and(|t| (now - t.0.as_second()).abs() <= PRESENCE_FRESH_SECS);
        fresh && node.is_none_or(|n| spec.holder_identity.as_deref() == Some(n))
    }))
}

/// The image of this process's own pod (the exposer pods run it too), when it runs in one.
pub async fn own_image(client: &Client, ns: &str) -> Option<String> {
    let pod = std::env::var("POD_NAME").ok()?;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = api.get_opt(&pod).await.ok()??;
    p.spec?.containers.first()?.image.clone()
}

/// Hold a volume in place (the exposer pod's command): sleep until terminated.
pub async fn hold() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Every DataUpload of a backup, or DataDownload of a restore, by label.
pub async fn list<K>(client: &Client, ns: &str, selector: &str) -> Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| Error::kube(format!("list {} in {ns}", K::plural(&())), e))?
        .items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "n1";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn v(phase: &str) -> View {
        View {
            phase: phase.into(),
            ..Default::default()
        }
    }

    const T: Duration = Duration::from_secs(1800);

    #[test]
    fn new_work_is_accepted_by_any_node_and_exposed_by_the_acceptor() {
        assert_eq!(step(&v(""), ME, at(0), T), Step::Accept);
        assert_eq!(step(&v("New"), ME, at(0), T), Step::Accept);
        let mut a = v("Accepted");
        a.accepted_by = Some(ME.into());
        a.accepted_at = Some(at(0));
        assert_eq!(step(&a, ME, at(10), T), Step::Expose);
        assert_eq!(step(&a, "n2", at(10), T), Step::Idle, "not the acceptor");
    }

    #[test]
    fn the_node_of_the_pod_prepares_and_moves() {
        let mut a = v("Accepted");
        a.accepted_by = Some("n2".into());
        a.pod_node = Some(ME.into());
        assert_eq!(step(&a, ME, at(0), T), Step::Prepare);
        // The acceptor keeps watch (exposing again is a no-op) for the timeout.
        assert_eq!(step(&a, "n2", at(0), T), Step::Expose);
        assert_eq!(step(&a, "n3", at(0), T), Step::Idle);
        let mut p = v("Prepared");
        p.node = Some(ME.into());
        assert_eq!(step(&p, ME, at(0), T), Step::Start);
        assert_eq!(step(&p, "n2", at(0), T), Step::Idle);
        p.running_here = true;
        assert_eq!(step(&p, ME, at(0), T), Step::Idle, "queued for a slot");
    }

    #[test]
    fn a_restarted_agent_resumes_rather_than_cancels() {
        let mut i = v("InProgress");
        i.node = Some(ME.into());
        assert_eq!(step(&i, ME, at(0), T), Step::Start);
        i.running_here = true;
        assert_eq!(step(&i, ME, at(0), T), Step::Idle);
    }

    #[test]
    fn preparing_times_out_but_waiting_for_a_slot_does_not() {
        let mut a = v("Accepted");
        a.accepted_by = Some(ME.into());
        a.accepted_at = Some(at(0));
        assert!(matches!(step(&a, ME, at(1800), T), Step::Fail(m) if m.contains("1800s")));
        let mut p = v("Prepared");
        p.node = Some(ME.into());
        p.accepted_at = Some(at(0));
        p.running_here = true;
        assert_eq!(step(&p, ME, at(100_000), T), Step::Idle);
    }

    #[test]
    fn cancel_stops_the_mover_or_ends_the_work() {
        let mut r = v("InProgress");
        r.node = Some(ME.into());
        r.cancel = true;
        r.running_here = true;
        assert_eq!(step(&r, ME, at(0), T), Step::Stop);
        r.running_here = false;
        assert_eq!(step(&r, ME, at(0), T), Step::Cancel);
        assert_eq!(step(&r, "n2", at(0), T), Step::Idle);
        let mut n = v("New");
        n.cancel = true;
        assert_eq!(step(&n, ME, at(0), T), Step::Cancel);
    }

    #[test]
    fn finished_work_is_cleaned_once_by_its_nodes() {
        let mut c = v("Completed");
        c.node = Some(ME.into());
        assert_eq!(step(&c, ME, at(0), T), Step::Clean);
        assert_eq!(step(&c, "n2", at(0), T), Step::Idle);
        c.cleaned = true;
        assert_eq!(step(&c, ME, at(0), T), Step::Idle);
        let mut f = v("Failed");
        f.accepted_by = Some(ME.into());
        assert_eq!(step(&f, ME, at(0), T), Step::Clean);
        assert_eq!(step(&f, "n2", at(0), T), Step::Idle);
        assert_eq!(
            step(&v("Canceled"), "n2", at(0), T),
            Step::Clean,
            "canceled while New: its snapshot is removed by any agent"
        );
    }

    fn pv(phase: &str, node: Option<&str>, ready: Ready) -> PodVolumeView {
        PodVolumeView {
            phase: phase.into(),
            node: node.map(str::to_string),
            ready,
            ..Default::default()
        }
    }

    #[test]
    fn pod_volumes_are_moved_by_the_agent_of_their_pods_node() {
        assert_eq!(
            pod_volume_step(&pv("", Some(ME), Ready::Yes), ME),
            Step::Start
        );
        assert_eq!(
            pod_volume_step(&pv("New", Some("n2"), Ready::Yes), ME),
            Step::Idle
        );
        assert_eq!(
            pod_volume_step(&pv("New", Some(ME), Ready::Wait), ME),
            Step::Idle,
            "restore-wait not running yet"
        );
        assert_eq!(
            pod_volume_step(&pv("New", Some(ME), Ready::Gone("pod gone".into())), ME),
            Step::Fail("pod gone".into())
        );
        let mut queued = pv("New", Some(ME), Ready::Yes);
        queued.running_here = true;
        assert_eq!(
            pod_volume_step(&queued, ME),
            Step::Idle,
            "queued for a slot"
        );
        // Restarted mid-move: run again, unless the pod went meanwhile.
        assert_eq!(
            pod_volume_step(&pv("InProgress", Some(ME), Ready::Yes), ME),
            Step::Start
        );
        assert!(matches!(
            pod_volume_step(&pv("InProgress", Some(ME), Ready::Gone("x".into())), ME),
            Step::Fail(_)
        ));
        for end in ["Completed", "Failed", "Canceled"] {
            assert_eq!(
                pod_volume_step(&pv(end, Some(ME), Ready::Yes), ME),
                Step::Idle
            );
        }
        // Written, then killed before saying so: the pod's restore-wait ended, done.
        assert_eq!(
            pod_volume_step(&pv("InProgress", Some(ME), Ready::Done), ME),
            Step::Finish
        );
    }

    #[test]
    fn canceling_a_pod_volume_stops_its_mover_or_ends_it() {
        let mut c = pv("InProgress", Some(ME), Ready::Yes);
        c.cancel = true;
        c.running_here = true;
        assert_eq!(pod_volume_step(&c, ME), Step::Stop);
        c.running_here = false;
        assert_eq!(pod_volume_step(&c, ME), Step::Cancel);
        assert_eq!(pod_volume_step(&c, "n2"), Step::Idle);
        let mut unplaced = pv("New", None, Ready::Wait);
        unplaced.cancel = true;
        assert_eq!(
            pod_volume_step(&unplaced, "n2"),
            Step::Cancel,
            "never scheduled: anyone"
        );
        assert_eq!(
            pod_volume_step(&pv("Canceling", Some(ME), Ready::Yes), ME),
            Step::Cancel
        );
    }

    #[test]
    fn concurrency_follows_velero_load_concurrency() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        assert_eq!(concurrency(&json!({}), &labels), 1);
        let c = json!({"loadConcurrency": {"globalConfig": 3, "perNodeConfig": [
            {"nodeSelector": {"matchLabels": {"zone": "a"}}, "number": 5},
            {"nodeSelector": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, "number": 2},
            {"nodeSelector": {"matchLabels": {"zone": "b"}}, "number": 1},
        ]}});
        assert_eq!(concurrency(&c, &labels), 2, "the smallest matching rule");
        let other = BTreeMap::from([("zone".to_string(), "c".to_string())]);
        assert_eq!(concurrency(&c, &other), 3, "the global number");
    }
}
