//! `arca server`: the operator. It reconciles the resources of one namespace with
//! kube-runtime's controllers, run only by the replica that holds the server's Lease.
//!
//! Each controller keeps its rules in a pure function of the state it is shown (`*_step`),
//! unit-tested without a cluster; the reconcilers call the same functions as the CLI
//! ([`crate::backup::run_backup`], [`crate::restore::run_restore`]): one code path for a
//! backup, whoever starts it.
//!
//! Restarts (Velero issue 4503): a Backup or Restore left InProgress by a server that was
//! killed is run again by the next leader, never failed for the restart. Running again is
//! safe: a backup's record is written once, at its end, as a new repository snapshot;
//! a restore's items are created or left as the existing-resource policy says.

pub mod deletion;
pub mod gc;
pub mod http;
pub mod leader;
pub mod locations;
pub mod metrics;
pub mod repositories;
mod schedules;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::claim::RunClaim;
use crate::crd::{Backup, Restore};
use crate::record::{SCHEDULE_NAME_LABEL, SYNCED_ANNOTATION};
use crate::restore::RestoreSettings;
use crate::{Error, Result};
use metrics::{End, Metrics};

/// The name of the server's Lease, in the namespace it serves.
pub const LEASE: &str = "arca-server";

/// The server's settings (its command-line flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// The namespace of Arca's resources.
    pub namespace: String,
    /// Backups run at once (Velero's `--concurrent-backups`, default 1).
    pub concurrent_backups: u16,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; None: not served.
    pub metrics_address: Option<SocketAddr>,
    /// Lead through a Lease (false: this process works alone, for tests and single
    /// replicas that want no Lease).
    pub leader_elect: bool,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Leader election timings.
    pub timings: leader::Timings,
    /// The repository cache directory.
    pub cache_root: Option<PathBuf>,
    /// Restore settings (priorities, parallelism, waits).
    pub restore: RestoreSettings,
    /// Schedules skip the run due at their creation or unpausing unless their spec says
    /// otherwise (Velero's `--schedule-skip-immediately`).
    pub schedule_skip_immediately: bool,
    /// The location of backups that name none when no location is marked default
    /// (Velero's `--default-backup-storage-location`).
    pub default_location: String,
    /// How often expired backups are looked for (Velero's
    /// `--garbage-collection-frequency`, 1 h).
    pub gc_frequency: Duration,
    /// How often stored backups are synced into the cluster (`--backup-sync-period`,
    /// 1 min); None: only locations whose `backupSyncPeriod` says.
    pub sync_period: Option<Duration>,
    /// How often a location is validated when its spec does not say
    /// (`--store-validation-frequency`, 1 min; zero: once).
    pub validation_frequency: Duration,
    /// How often a repository gets quick maintenance when its spec does not say
    /// (`--default-repo-maintain-frequency`, 1 h).
    pub repo_maintenance_frequency: Duration,
    /// How often it gets full maintenance (`--full-repo-maintain-frequency`, 24 h).
    pub repo_full_maintenance_frequency: Duration,
}

impl Options {
    /// Velero's defaults, for namespace `ns`, working alone (no Lease).
    pub fn new(ns: &str) -> Self {
        Self {
            namespace: ns.to_string(),
            concurrent_backups: 1,
            metrics_address: None,
            leader_elect: false,
            lease_name: LEASE.into(),
            identity: "arca".into(),
            timings: leader::Timings::default(),
            cache_root: None,
            restore: RestoreSettings::new(),
            schedule_skip_immediately: false,
            default_location: "default".into(),
            gc_frequency: Duration::from_secs(3600),
            sync_period: Some(Duration::from_secs(60)),
            validation_frequency: Duration::from_secs(60),
            repo_maintenance_frequency: Duration::from_secs(3600),
            repo_full_maintenance_frequency: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a controller does with a Backup or Restore in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// New: run it.
    Run,
    /// InProgress but run by nobody (the previous leader stopped): run it again.
    RunAgain,
    /// Ended, or in a phase another part owns: nothing.
    Nothing,
}

/// The Backup and Restore controllers' rule: New (or no phase yet) runs; InProgress, seen
/// (or waiting for its volume data, or finalizing), seen by a leader that is not running
/// it, runs again; every other phase is left alone.
pub fn step(phase: Option<&str>) -> Step {
    match phase.unwrap_or("") {
        "" | "New" | "Queued" => Step::Run,
        // Waiting for its data movements, or finalizing: the run that waited is gone; a
        // new one finds the movements it started (stable names) and waits on.
        "InProgress" | "WaitingForPluginOperations" | "Finalizing" => Step::RunAgain,
        _ => Step::Nothing,
    }
}

fn backup_step(b: &Backup) -> Step {
    let phase = b.status.as_ref().and_then(|s| s.phase.as_deref());
    // A Backup the sync created from a stored record, its status not written yet: the
    // sync's, never to be run (running it would store a second record of that name).
    if phase.is_none_or(str::is_empty) && b.annotations().contains_key(SYNCED_ANNOTATION) {
        return Step::Nothing;
    }
    step(phase)
}

fn restore_step(r: &Restore) -> Step {
    step(r.status.as_ref().and_then(|s| s.phase.as_deref()))
}

/// A fresh read of a Backup or Restore, when it is to run (None: gone, or nothing to do).
/// Decided on a fresh read, never on the watch cache: our own last status write may not
/// have reached the cache, and a stale InProgress would run the work twice.
async fn to_run<K>(
    api: &Api<K>,
    what: &str,
    ns: &str,
    name: &str,
    step_of: fn(&K) -> Step,
) -> Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(obj) = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read {what} {ns}/{name}"), e))?
    else {
        return Ok(None);
    };
    match step_of(&obj) {
        Step::Nothing => return Ok(None),
        Step::RunAgain => tracing::info!(
            "{what} {ns}/{name} was InProgress when its server stopped: running it again"
        ),
        Step::Run => tracing::info!("{what} {ns}/{name}: starting"),
    }
    Ok(Some(obj))
}

/// After a run ended in an error: whether the item is still to run. The run marks it
/// Failed where it can; an error before it could (the API server unreachable) leaves the
/// phase, and the error goes back for a retry.
async fn still_to_run<K>(api: &Api<K>, name: &str, step_of: fn(&K) -> Step) -> bool
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let now = api.get_opt(name).await.ok().flatten();
    now.as_ref().is_none_or(|o| step_of(o) != Step::Nothing)
}

/// Claim a Backup or Restore (as just read, `kind` naming it in messages) for a run that
/// starts now ([`RunClaim`]), if it is still to run and this replica still leads.
async fn claim_run<K>(
    ctx: &Ctx,
    api: &Api<K>,
    o: &K,
    kind: &str,
    step_of: fn(&K) -> Step,
) -> Result<RunClaim<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{kind} {}/{}", ctx.opts.namespace, o.name_any());
    not_leading(ctx, &what)?;
    RunClaim::take(api.clone(), o.clone(), &what, |o| {
        step_of(o) != Step::Nothing
    })
    .await
}

/// Refuse to start `what` when the Lease was not renewed lately: this process stalled
/// (its renewal will find the lease taken and end it), and the leader runs it.
fn not_leading(ctx: &Ctx, what: &str) -> Result<()> {
    if ctx.leads() {
        return Ok(());
    }
    Err(Error::Superseded(format!(
        "{what}: not started, this replica's Lease was not renewed lately (it stalled); the leader runs it"
    )))
}

/// Where a waiting backup stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// It may start: a slot is free for it and no backup before it shares a namespace.
    Start,
    /// Its place in the queue (1: next).
    Wait(i64),
}

/// The namespaces a backup takes, of those in the cluster (Velero's namespacesForBackup:
/// its includes and excludes resolved against the cluster's; none when they are invalid,
/// validation fails it then).
fn namespaces_of<'a>(b: &Backup, cluster: &'a [String]) -> BTreeSet<&'a str> {
    let spec = &b.spec;
    let inc = spec.included_namespaces.clone().unwrap_or_default();
    let exc = spec.excluded_namespaces.clone().unwrap_or_default();
    match crate::filter::NamespaceFilter::new(&inc, &exc) {
        Ok(f) => cluster
            .iter()
            .filter(|n| f.includes(n))
            .map(String::as_str)
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// A backup running (its namespaces taken), for the queue rule.
fn running(b: &Backup) -> bool {
    backup_phase(b).as_deref() == Some("InProgress")
}

/// A backup waiting to start, for the queue rule.
fn waiting(b: &Backup) -> bool {
    backup_step(b) == Step::Run && b.spec.cancel != Some(true)
}

/// Whether the queue rule needs the cluster's namespaces for `name`: only when another
/// backup runs or waits could it conflict.
pub fn queue_contended<'a>(list: impl IntoIterator<Item = &'a Backup>, name: &str) -> bool {
    list.into_iter()
        .any(|b| b.name_any() != name && (running(b) || waiting(b)))
}

/// The queue rule (Velero's backup queue controller): the backups waiting to start (New,
/// Queued, no phase yet; not one the sync is creating, not one asked to cancel) in
/// creation order (then name). One may start when a slot is free for it among the
/// runnable ones before it, and no backup running (InProgress) or waiting before it
/// takes one of its namespaces (Velero's detectNamespaceConflict: two backups of one
/// namespace never run at once, and the earlier goes first). Pure, unit-tested.
pub fn queue_place<'a>(
    list: impl IntoIterator<Item = &'a Backup>,
    name: &str,
    free: usize,
    cluster_namespaces: &[String],
) -> Place {
    let list: Vec<&Backup> = list.into_iter().collect();
    let mut taken: BTreeSet<&str> = list
        .iter()
        .filter(|b| running(b))
        .flat_map(|b| namespaces_of(b, cluster_namespaces))
        .collect();
    let mut waiting: Vec<&Backup> = list.into_iter().filter(|b| waiting(b)).collect();
    waiting.sort_by_key(|b| {
        (
            b.metadata.creation_timestamp.clone().map(|t| t.0),
            b.name_any(),
        )
    });
    let mut runnable = 0;
    for (i, b) in waiting.iter().enumerate() {
        let mine = namespaces_of(b, cluster_namespaces);
        let free_of_conflict = mine.is_disjoint(&taken);
        if b.name_any() == name {
            return if free_of_conflict && runnable < free {
                Place::Start
            } else {
                Place::Wait((i + 1 - runnable.min(free)).max(1) as i64)
            };
        }
        runnable += usize::from(free_of_conflict);
        taken.extend(mine);
    }
    Place::Wait((waiting.len() + 1 - runnable.min(free)).max(1) as i64)
}

/// Mark a backup Queued at `n` (if that changed) and look again soon: a slot frees when
/// a backup ends. Conditional on the backup as read: a run that started meanwhile (here
/// or on a replica that took over) is never set back to Queued.
async fn queued(api: &Api<Backup>, b: &Backup, n: i64) -> Result<Action> {
    let st = b.status.clone().unwrap_or_default();
    if st.phase.as_deref() != Some("Queued") || st.queue_position != Some(n) {
        let name = b.name_any();
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": b.metadata.resource_version },
            "status": { "phase": "Queued", "queuePosition": n },
        });
        match api
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            // Changed since it was read: the next look decides again.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("queue backup {name}"), e)),
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Resolves once the object's spec asks for it to be cancelled (`flag`), or at once if
/// it does already. Watched, not polled; a watch that ends (the API server away) never
/// resolves, and the work goes on.
pub(crate) async fn cancel_requested<K>(api: Api<K>, name: &str, flag: fn(&K) -> bool)
where
    K: Clone + Resource + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut s = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
    while let Some(o) = s.next().await {
        if o.as_ref().is_ok_and(flag) {
            return;
        }
    }
    std::future::pending::<()>().await
}

fn backup_phase(b: &Backup) -> Option<String> {
    b.status.as_ref().and_then(|s| s.phase.clone())
}

fn restore_phase(r: &Restore) -> Option<String> {
    r.status.as_ref().and_then(|s| s.phase.clone())
}

/// A cancelled Backup or Restore ended ([`canceled`]), logged and told in an Event.
async fn end_canceled<K>(
    ctx: &Ctx,
    claim: &RunClaim<K>,
    obj: &K,
    what: &str,
    phase: fn(&K) -> Option<String>,
) -> Result<Action>
where
    K: Clone + Resource<DynamicType = ()> + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.name_any();
    let was = canceled(claim, phase).await?;
    // Its volume data stops moving too (Velero cancels the backup's DataUploads).
    let ns = &ctx.opts.namespace;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    use crate::datamover::csi::cancel_all;
    let stopped = if what == "backup" {
        let sel = format!("{}={uid}", crate::datamover::BACKUP_UID);
        let a = cancel_all::<crate::crd::DataUpload>(&ctx.client, ns, &sel).await;
        let b = cancel_all::<crate::crd::PodVolumeBackup>(&ctx.client, ns, &sel).await;
        a.and(b)
    } else {
        let sel = format!("{}={uid}", crate::datamover::RESTORE_UID);
        let a = cancel_all::<crate::crd::DataDownload>(&ctx.client, ns, &sel).await;
        let b = cancel_all::<crate::crd::PodVolumeRestore>(&ctx.client, ns, &sel).await;
        a.and(b)
    };
    if let Err(e) = stopped {
        tracing::warn!("{what} {ns}/{name}: canceling its data movements: {e}");
    }
    tracing::info!("{what} {}/{name}: Canceled", ctx.opts.namespace);
    let reason = if what == "backup" {
        "BackupCanceled"
    } else {
        "RestoreCanceled"
    };
    ctx.event(obj, true, reason, format!("{what} {name} canceled ({was})"))
        .await;
    Ok(Action::await_change())
}

/// End a cancelled Backup or Restore: phase Canceled, completion time, and why. The run
/// was dropped before this, with every write of its own (the backup's progress writer
/// aborts with it). Returns the phase it had.
async fn canceled<K>(claim: &RunClaim<K>, phase: fn(&K) -> Option<String>) -> Result<String>
where
    K: Clone + Resource + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let before = phase(&claim.read().await?).unwrap_or_else(|| "New".into());
    let status = serde_json::json!({
        "phase": "Canceled",
        "failureReason": "canceled by request (spec.cancel)",
        "completionTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    claim.status(&status).await?;
    Ok(format!("was {before}"))
}

/// A pause point for kill -9 and stall tests across processes: a process started with
/// `ARCA_TEST_PAUSE_AT=<point>` stops there, after saying so on stderr, for good (until
/// it is killed), or, with `ARCA_TEST_RESUME_WHEN=<file>`, until that file exists (a
/// stalled process that wakes up). Unset, it costs an environment lookup.
pub(crate) async fn pause_point(point: &str) {
    if std::env::var("ARCA_TEST_PAUSE_AT").is_ok_and(|p| p == point) {
        eprintln!("paused at {point}");
        match std::env::var_os("ARCA_TEST_RESUME_WHEN") {
            Some(f) => {
                while !std::path::Path::new(&f).exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                eprintln!("resumed at {point}");
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// The schedule a backup came from ("" for none), by Arca's label or Velero's.
pub fn schedule_of(b: &Backup) -> String {
    let l = b.labels();
    l.get(SCHEDULE_NAME_LABEL)
        .or_else(|| l.get("velero.io/schedule-name"))
        .cloned()
        .unwrap_or_default()
}

struct Ctx {
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Backups running at once (`--concurrent-backups`).
    slots: Arc<tokio::sync::Semaphore>,
    /// The Backup controller's cache (its watch): the queue is ordered from it, so that
    /// a waiting backup's look every second costs no request.
    backups: std::sync::OnceLock<kube::runtime::reflector::Store<Backup>>,
    /// When this replica last held the Lease (None: no leader election).
    held: Option<Arc<leader::Held>>,
    /// The Schedule controller's view of its backups still running, by name: their
    /// schedule's label value and phase (see `schedules::run`); pruned by each
    /// schedule's reconcile.
    schedule_backups: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

impl Ctx {
    /// Whether this replica may start a run now: it holds the Lease, as renewed lately.
    fn leads(&self) -> bool {
        self.held.as_ref().is_none_or(|h| h.fresh())
    }
}

impl Ctx {
    async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        // Events are advisory: a failed one is logged, never fails the work.
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!("event {reason}: {e}");
        }
    }
}

/// Run the server until `shutdown` completes (then the Lease is released) or leadership
/// is lost (an error: the process must exit so that only the new leader works).
pub async fn run(
    client: Client,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(http::Health::default());
    if let Some(addr) = opts.metrics_address {
        let bound = http::serve(addr, metrics.clone(), health.clone()).await?;
        tracing::info!("serving /metrics, /healthz and /readyz on {bound}");
    }
    // Reach the API server before saying ready.
    client
        .apiserver_version()
        .await
        .map_err(|e| Error::kube("reach the API server", e))?;
    health.ready.store(true, Ordering::Relaxed);
    let mut shutdown = Box::pin(shutdown);
    let mut elector = opts.leader_elect.then(|| {
        leader::Elector::new(
            client.clone(),
            &opts.namespace,
            &opts.lease_name,
            &opts.identity,
            opts.timings.clone(),
        )
    });
    if let Some(e) = elector.as_mut() {
        tracing::info!(
            "waiting to lead: lease {}/{} as {}",
            opts.namespace,
            opts.lease_name,
            e.identity()
        );
        tokio::select! {
            _ = e.acquire() => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
    health.leading.store(true, Ordering::Relaxed);
    tracing::info!(
        "leading: reconciling backups, restores, schedules, deletions, locations and repositories in namespace {}",
        opts.namespace
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "arca-server".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        opts: opts.clone(),
        metrics,
        recorder,
        slots: Arc::new(tokio::sync::Semaphore::new(usize::from(
            opts.concurrent_backups.max(1),
        ))),
        backups: std::sync::OnceLock::new(),
        held: elector.as_ref().map(|e| e.held()),
        schedule_backups: Default::default(),
    });
    let sync = {
        let ctx = ctx.clone();
        async move { locations::sync(ctx.clone()).await }
    };
    let controllers = futures::future::join3(
        futures::future::join3(
            backups(ctx.clone()),
            restores(ctx.clone()),
            schedules::run(ctx.clone()),
        ),
        futures::future::join3(
            deletion::run(ctx.clone()),
            locations::validation(ctx.clone()),
            repositories::run(ctx.clone()),
        ),
        futures::future::join(gc::run(ctx.clone(), ctx.opts.gc_frequency), sync),
    );
    let lost = async {
        match elector.as_mut() {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = controllers => Ok(()),
        why = lost => Err(Error::Invalid(format!(
            "leadership lost ({why}): stopping, so that only the new leader works"
        ))),
        _ = &mut shutdown => Ok(()),
    };
    // Post hooks of canceled backups still running end before another leader may start
    // (bounded: a hook hanging with no timeout must not hold the Lease forever). With
    // the Lease lost there is none to hold: a run taken over may wait for the newer
    // run's list first. Told to stop, the thaws wait for no list.
    let limit = match &result {
        Err(_) => crate::backup::SETTLE_WAIT + Duration::from_secs(60),
        Ok(()) => {
            crate::backup::cut_settle_waits();
            Duration::from_secs(60)
        }
    };
    crate::backup::wait_thaws(None, limit).await;
    if result.is_ok()
        && let Some(e) = elector.as_mut()
    {
        e.release().await;
    }
    result
}

/// Run a controller until it ends; failed reconciles are retried (`error_policy`).
async fn drive<K, R, F>(c: Controller<K>, what: &'static str, reconcile: R, ctx: Arc<Ctx>)
where
    K: Clone + Resource<DynamicType = ()> + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
    R: FnMut(Arc<K>, Arc<Ctx>) -> F,
    F: Future<Output = Result<Action>> + Send + 'static,
{
    c.run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("{what} controller: {e}");
            }
        })
        .await;
}

fn error_policy<K>(_: Arc<K>, e: &Error, _: Arc<Ctx>) -> Action {
    // A run another took over ends quietly: its successor writes the outcome.
    if let Error::Superseded(why) = e {
        tracing::info!("{why}");
        return Action::await_change();
    }
    tracing::warn!("{e}; retrying in 10 s");
    Action::requeue(Duration::from_secs(10))
}

async fn backups(ctx: Arc<Ctx>) {
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    let c = Controller::new(api, watcher::Config::default())
        // Waiting backups return at once (Queued): the slots bound the work, not this.
        .with_config(Config::default().concurrency(ctx.opts.concurrent_backups.max(1) + 16));
    let _ = ctx.backups.set(c.store());
    drive(c, "backup", reconcile_backup, ctx).await;
}

async fn restores(ctx: Arc<Ctx>) {
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    let c = Controller::new(api, watcher::Config::default())
        .with_config(Config::default().concurrency(1));
    drive(c, "restore", reconcile_restore, ctx).await;
}

async fn reconcile_backup(cached: Arc<Backup>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = &ctx.opts.namespace;
    let name = cached.name_any();
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), ns);
    let Some(b) = to_run(&api, "backup", ns, &name, backup_step).await? else {
        return Ok(Action::await_change());
    };
    let run_again = backup_step(&b) == Step::RunAgain;
    // Cancelled before it started: it never takes a slot.
    if !run_again && b.spec.cancel == Some(true) {
        let claim = claim_run(&ctx, &api, &b, "backup", backup_step).await?;
        return end_canceled(&ctx, &claim, &b, "backup", backup_phase).await;
    }

    // A slot, in creation order (Velero's backup queue): the oldest waiting backups take
    // the free slots; the others say where they stand.
    let permit = ctx.slots.clone().try_acquire_owned().ok();
    let permit = match permit {
        // Started before (by a server that stopped): it keeps its phase, and the next slot.
        Some(p) if run_again => p,
        None if run_again => return Ok(Action::requeue(Duration::from_secs(1))),
        permit => {
            // From the watch's cache: the order of waiting backups, never the decision
            // to run (a fresh read and the run's claim), so a moment's lag is harmless.
            let (cached, listed) = match ctx.backups.get() {
                Some(store) => (store.state(), Vec::new()),
                None => {
                    let l = api
                        .list(&kube::api::ListParams::default())
                        .await
                        .map_err(|e| Error::kube(format!("list backups in {ns}"), e))?;
                    (Vec::new(), l.items)
                }
            };
            let list = || cached.iter().map(|b| &**b).chain(&listed);
            // This one's own slot, if it got one, counts as free.
            let free = permit
                .as_ref()
                .map_or(0, |_| ctx.slots.available_permits() + 1);
            // The cluster's namespaces, for the namespace-conflict rule, read only when
            // it could start and another backup runs or waits (Velero lists them at
            // every look); without a free slot it waits whatever they are.
            let namespaces = if free > 0 && queue_contended(list(), &name) {
                Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.client.clone())
                    .list_metadata(&kube::api::ListParams::default())
                    .await
                    .map_err(|e| Error::kube("list namespaces", e))?
                    .items
                    .into_iter()
                    .filter_map(|n| n.metadata.name)
                    .collect()
            } else {
                Vec::new()
            };
            match (queue_place(list(), &name, free, &namespaces), permit) {
                (Place::Start, Some(p)) => p,
                (Place::Wait(n), _) => return queued(&api, &b, n).await,
                (Place::Start, None) => return queued(&api, &b, 1).await,
            }
        }
    };
    // From here every write of this run is conditional on its claim: a replica that
    // takes over (this one stalled past its Lease) or a Backup made again under this
    // name ends this run's writes.
    let claim = Arc::new(claim_run(&ctx, &api, &b, "backup", backup_step).await?);
    if b.status
        .as_ref()
        .is_some_and(|s| s.queue_position.is_some())
    {
        claim
            .status(&serde_json::json!({ "queuePosition": null }))
            .await?;
    }
    let schedule = schedule_of(&b);
    ctx.event(&b, false, "BackupStarted", format!("backup {name} started"))
        .await;
    let t0 = Instant::now();
    let run = crate::backup::run_backup(
        &ctx.client,
        claim.clone(),
        ns,
        &name,
        ctx.opts.cache_root.as_deref(),
        &ctx.opts.default_location,
        // Its slot is freed once it only waits for its data movements (as Velero's
        // worker is); dropped with the run otherwise.
        move || drop(permit),
    );
    // Cancelled: the run is dropped where it is. Its record is written in one step at
    // its end, so nothing half-made is stored; data uploaded by then is unreferenced,
    // and the repository's GC takes it.
    let out = tokio::select! {
        o = run => o,
        _ = cancel_requested(api.clone(), &name, |b: &Backup| b.spec.cancel == Some(true)) => {
            // Dropped after its record was committed: it ended, whatever the cancel says.
            let cache = ctx.opts.cache_root.as_deref();
            if crate::backup::adopt_if_stored(&ctx.client, &claim, ns, &name, cache).await? {
                tracing::info!("backup {ns}/{name}: stored before the cancel took effect");
                return Ok(Action::await_change());
            }
            // The dropped run's post hooks (on a task) end before it is called Canceled.
            for line in crate::backup::thaw_recorded(&ctx.client, &claim, ns, &name).await {
                tracing::info!("backup {ns}/{name}: {line}");
            }
            return end_canceled(&ctx, &claim, &b, "backup", backup_phase).await;
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    match out {
        Ok(o) => {
            let phase = o.status.phase.clone().unwrap_or_default();
            let end = End::of_phase(&phase);
            ctx.metrics.backup_ended(
                &schedule,
                end,
                secs,
                o.status
                    .progress
                    .as_ref()
                    .and_then(|p| p.items_backed_up)
                    .unwrap_or(0),
                o.status.errors.unwrap_or(0),
                o.status.warnings.unwrap_or(0),
            );
            tracing::info!("backup {ns}/{name}: {phase}");
            ctx.event(
                &b,
                end != End::Success,
                &format!("Backup{phase}"),
                format!("backup {name} ended {phase}"),
            )
            .await;
        }
        // Another run took it over: that run ends it and counts it.
        Err(Error::Superseded(why)) => tracing::info!("{why}"),
        Err(e) => {
            if still_to_run(&api, &name, backup_step).await {
                return Err(e);
            }
            ctx.metrics
                .backup_ended(&schedule, End::Failure, secs, 0, 0, 0);
            tracing::warn!("backup {ns}/{name}: Failed: {e}");
            ctx.event(
                &b,
                true,
                "BackupFailed",
                format!("backup {name} failed: {e}"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

async fn restore_schedule(ctx: &Ctx, r: &Restore) -> String {
    if let Some(b) = r.spec.backup_name.as_deref() {
        let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
        if let Ok(Some(b)) = api.get_opt(b).await {
            return schedule_of(&b);
        }
    }
    r.spec.schedule_name.clone().unwrap_or_default()
}

async fn reconcile_restore(cached: Arc<Restore>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = &ctx.opts.namespace;
    let name = cached.name_any();
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), ns);
    let Some(r) = to_run(&api, "restore", ns, &name, restore_step).await? else {
        return Ok(Action::await_change());
    };
    let claim = Arc::new(claim_run(&ctx, &api, &r, "restore", restore_step).await?);
    let schedule = restore_schedule(&ctx, &r).await;
    ctx.metrics.restore_started(&schedule);
    ctx.event(
        &r,
        false,
        "RestoreStarted",
        format!("restore {name} started"),
    )
    .await;
    // On a blocking thread of its own: rustc cannot prove the engine's restore future
    // Send through kube-runtime's higher-ranked bounds (a known compiler limitation), and
    // `block_on` there needs no Send. The runtime's context is kept.
    let out = {
        let (client, ns, rname) = (ctx.client.clone(), ns.clone(), name.clone());
        let (settings, cache) = (ctx.opts.restore.clone(), ctx.opts.cache_root.clone());
        let handle = tokio::runtime::Handle::current();
        let rapi = api.clone();
        let run_claim = claim.clone();
        tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                // Cancelled: no further item; those restored already stay.
                tokio::select! {
                    o = crate::restore::run_restore(&client, &run_claim, &ns, &rname, settings, cache.as_deref()) => Some(o),
                    _ = cancel_requested(rapi, &rname, |r: &Restore| r.spec.cancel == Some(true)) => None,
                }
            })
        })
        .await
        .map_err(|e| Error::Invalid(format!("restore {name} panicked: {e}")))?
    };
    let Some(out) = out else {
        return end_canceled(&ctx, &claim, &r, "restore", restore_phase).await;
    };
    match out {
        Ok(o) => {
            let phase = o.status.phase.clone().unwrap_or_default();
            let end = End::of_phase(&phase);
            ctx.metrics.restore_ended(&schedule, end);
            tracing::info!("restore {ns}/{name}: {phase}");
            ctx.event(
                &r,
                end != End::Success,
                &format!("Restore{phase}"),
                format!("restore {name} ended {phase}"),
            )
            .await;
        }
        Err(Error::Superseded(why)) => tracing::info!("{why}"),
        Err(e) => {
            if still_to_run(&api, &name, restore_step).await {
                return Err(e);
            }
            ctx.metrics.restore_ended(&schedule, End::Failure);
            tracing::warn!("restore {ns}/{name}: Failed: {e}");
            ctx.event(
                &r,
                true,
                "RestoreFailed",
                format!("restore {name} failed: {e}"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_runs_inprogress_runs_again_the_rest_is_left() {
        {
            assert_eq!(step(None), Step::Run);
            assert_eq!(step(Some("")), Step::Run);
            assert_eq!(step(Some("New")), Step::Run);
            assert_eq!(step(Some("InProgress")), Step::RunAgain);
            assert_eq!(step(Some("WaitingForPluginOperations")), Step::RunAgain);
            assert_eq!(step(Some("Finalizing")), Step::RunAgain);
            for ended in [
                "Completed",
                "PartiallyFailed",
                "Failed",
                "FailedValidation",
                "Deleting",
            ] {
                assert_eq!(step(Some(ended)), Step::Nothing, "{ended}");
            }
        }
    }

    /// A Backup made at `secs`, in `phase`.
    fn backup_at(name: &str, secs: i64, phase: Option<&str>) -> Backup {
        let mut b = Backup::new(name, Default::default());
        b.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
        ));
        b.status = phase.map(|p| crate::crd::BackupStatus {
            phase: Some(p.into()),
            ..Default::default()
        });
        b
    }

    #[test]
    fn waiting_backups_start_oldest_first_and_the_rest_know_their_place() {
        let at = backup_at;
        let mut cancelled = at("cancelled", 0, None);
        cancelled.spec.cancel = Some(true);
        let list = vec![
            at("running", 1, Some("InProgress")),
            at("c", 30, Some("New")),
            at("a", 10, Some("Queued")),
            at("b", 20, None),
            at("done", 5, Some("Completed")),
            cancelled,
        ];
        // Each of its own namespace (the running one too): no conflicts.
        let list: Vec<Backup> = list
            .into_iter()
            .map(|mut b| {
                b.spec.included_namespaces = Some(vec![format!("ns-{}", b.name_any())]);
                b
            })
            .collect();
        let nss: Vec<String> = ["running", "a", "b", "c", "done", "cancelled"]
            .map(|n| format!("ns-{n}"))
            .to_vec();
        assert_eq!(queue_place(&list, "a", 1, &nss), Place::Start);
        assert_eq!(queue_place(&list, "b", 1, &nss), Place::Wait(1));
        assert_eq!(queue_place(&list, "c", 1, &nss), Place::Wait(2));
        assert_eq!(queue_place(&list, "a", 0, &nss), Place::Wait(1));
        assert_eq!(queue_place(&list, "c", 3, &nss), Place::Start);
        assert_eq!(step(Some("Queued")), Step::Run);
    }

    #[test]
    fn backups_of_one_namespace_never_run_at_once_and_the_earlier_goes_first() {
        let at = |name: &str, secs: i64, phase: Option<&str>, nss: &[&str]| {
            let mut b = backup_at(name, secs, phase);
            b.spec.included_namespaces = Some(nss.iter().map(|s| s.to_string()).collect());
            b
        };
        let cluster: Vec<String> = ["app", "db", "web", "kube-system"]
            .map(String::from)
            .to_vec();
        let list = vec![
            at("running", 1, Some("InProgress"), &["app"]),
            at("again", 10, Some("Queued"), &["app"]),
            at("db", 20, None, &["db"]),
            at("glob", 30, None, &["w*", "d*"]),
            at("gone", 40, None, &["not-in-the-cluster"]),
        ];
        // Slots enough for all: the running backup's namespace holds "again" back; "db"
        // starts; "glob" (db and web) waits behind "db"; a namespace the cluster does
        // not have conflicts with nothing.
        assert_eq!(queue_place(&list, "again", 4, &cluster), Place::Wait(1));
        assert_eq!(queue_place(&list, "db", 4, &cluster), Place::Start);
        assert_eq!(queue_place(&list, "glob", 4, &cluster), Place::Wait(2));
        assert_eq!(queue_place(&list, "gone", 4, &cluster), Place::Start);
        // One slot: the first runnable takes it, in order.
        assert_eq!(queue_place(&list, "gone", 1, &cluster), Place::Wait(3));
        // Every namespace (no includes, or "*") conflicts with any backup before it.
        let all = vec![
            at("running", 1, Some("InProgress"), &["db"]),
            at("full", 10, None, &[]),
            at("star", 20, None, &["*"]),
        ];
        assert_eq!(queue_place(&all, "full", 4, &cluster), Place::Wait(1));
        assert_eq!(queue_place(&all, "star", 4, &cluster), Place::Wait(2));
        assert!(queue_contended(&all, "full"));
        assert!(!queue_contended(&all[1..2], "full"));
    }

    #[test]
    fn a_backup_the_sync_is_creating_is_not_run() {
        let mut b = Backup::new("b", Default::default());
        assert_eq!(backup_step(&b), Step::Run);
        b.metadata.annotations =
            Some([(SYNCED_ANNOTATION.to_string(), "default".to_string())].into());
        assert_eq!(
            backup_step(&b),
            Step::Nothing,
            "created by the sync, status not yet written"
        );
        b.status = Some(crate::crd::BackupStatus {
            phase: Some("Completed".into()),
            ..Default::default()
        });
        assert_eq!(backup_step(&b), Step::Nothing);
        // Whoever wrote the phase owns it: an InProgress synced backup is a run to resume.
        b.status.as_mut().unwrap().phase = Some("InProgress".into());
        assert_eq!(backup_step(&b), Step::RunAgain);
    }

    #[test]
    fn the_schedule_comes_from_either_label() {
        let mut b = Backup::new("b", Default::default());
        assert_eq!(schedule_of(&b), "");
        b.metadata.labels = Some([("velero.io/schedule-name".to_string(), "v".to_string())].into());
        assert_eq!(schedule_of(&b), "v");
        b.metadata.labels = Some([(SCHEDULE_NAME_LABEL.to_string(), "a".to_string())].into());
        assert_eq!(schedule_of(&b), "a");
    }
}
