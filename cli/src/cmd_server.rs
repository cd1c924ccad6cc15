//! `arca server`: the operator, as a process (the installed Deployment runs it).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use arca_k8s::restore::{Priorities, RestoreSettings};
use arca_k8s::server::{self, leader};
use clap::Args;

use crate::Ctx;
use crate::cmd_k8s::KubeOpts;

/// Log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `arca server`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Log format (logs go to stderr; ARCA_LOG sets the filter, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Backups run at once; more wait in phase New, oldest first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent_backups: u16,

    /// Where /metrics (Prometheus), /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8085")]
    metrics_address: SocketAddr,

    /// Elect a leader among replicas through a Lease named `arca-server` in the
    /// namespace: only the leader works. `--leader-elect=false` for a process alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// How long the Lease lasts unrenewed before another replica takes over
    /// (Go-style duration).
    #[arg(long, default_value = "15s")]
    leader_elect_lease_duration: String,

    /// Order in which resources are restored: comma-separated resources, those after a
    /// `-` go last [default: Velero's list] (Velero's `--restore-resource-priorities`).
    #[arg(long)]
    restore_resource_priorities: Option<String>,

    /// How long a restore waits for a restored CRD to become established (Velero's
    /// `--resource-timeout`).
    #[arg(long, default_value = "10m")]
    resource_timeout: String,

    /// Items a restore creates at once within one priority tier.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    restore_parallel_items: u16,

    /// Schedules skip the run due when they are created or unpaused, unless their
    /// `skipImmediately` says otherwise (Velero's flag; default: they back up at once).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    schedule_skip_immediately: bool,

    /// The location of backups that name none when no location is marked default.
    #[arg(long, default_value = "default")]
    default_backup_storage_location: String,

    /// How often expired backups are looked for and deleted (Go-style duration).
    #[arg(long, default_value = "1h")]
    garbage_collection_frequency: String,

    /// How often backups stored in the locations are synced into the cluster, unless a
    /// location's `backupSyncPeriod` says otherwise ("0" there: never that location; "0"
    /// here: only locations that set their own).
    #[arg(long, default_value = "1m")]
    backup_sync_period: String,

    /// How often a location is validated when its spec does not say ("0": once).
    #[arg(long, default_value = "1m")]
    store_validation_frequency: String,

    /// How often a repository gets quick maintenance when its BackupRepository does not
    /// say.
    #[arg(long, default_value = "1h")]
    default_repo_maintain_frequency: String,

    /// How often a repository gets full maintenance (unreferenced data collected).
    #[arg(long, default_value = "24h")]
    full_repo_maintain_frequency: String,
}

fn duration(s: &str, flag: &str) -> Result<Duration> {
    let secs = arca_k8s::backup::parse_go_duration(s).with_context(|| format!("{flag} {s:?}"))?;
    anyhow::ensure!(secs > 0, "{flag} must be positive, not {s:?}");
    Ok(Duration::from_secs(secs as u64))
}

fn duration_or_zero(s: &str, flag: &str) -> Result<Duration> {
    let secs = arca_k8s::backup::parse_go_duration(s).with_context(|| format!("{flag} {s:?}"))?;
    anyhow::ensure!(secs >= 0, "{flag} must not be negative, not {s:?}");
    Ok(Duration::from_secs(secs as u64))
}

/// This replica's identity: the pod's name where the Deployment gives it, else the host's,
/// with the process ID so that two on one host differ.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "arca".into());
    format!("{host}_{}", std::process::id())
}

pub async fn run(ctx: &Ctx, kube: &KubeOpts, a: ServerArgs) -> Result<u8> {
    let client = kube.client().await?;
    let lease = duration(
        &a.leader_elect_lease_duration,
        "--leader-elect-lease-duration",
    )?;
    // client-go's proportions: renew deadline 2/3 of the lease, retries every 2/15.
    let timings = leader::Timings {
        duration: lease,
        renew_deadline: lease * 2 / 3,
        retry: (lease * 2 / 15).max(Duration::from_millis(200)),
    };
    let mut restore = RestoreSettings::new();
    restore.parallel_items = usize::from(a.restore_parallel_items);
    restore.crd_wait = duration(&a.resource_timeout, "--resource-timeout")?;
    if let Some(p) = &a.restore_resource_priorities {
        restore.priorities = Priorities::parse(p);
    }
    let mut opts = server::Options::new(kube.namespace());
    opts.concurrent_backups = a.concurrent_backups;
    opts.metrics_address = Some(a.metrics_address);
    opts.leader_elect = a.leader_elect;
    opts.identity = identity();
    opts.timings = timings;
    opts.cache_root = ctx.cache_root();
    opts.restore = restore;
    opts.schedule_skip_immediately = a.schedule_skip_immediately;
    opts.default_location = a.default_backup_storage_location.clone();
    opts.gc_frequency = duration(
        &a.garbage_collection_frequency,
        "--garbage-collection-frequency",
    )?;
    let sync = duration_or_zero(&a.backup_sync_period, "--backup-sync-period")?;
    opts.sync_period = (!sync.is_zero()).then_some(sync);
    opts.validation_frequency = duration_or_zero(
        &a.store_validation_frequency,
        "--store-validation-frequency",
    )?;
    opts.repo_maintenance_frequency = duration(
        &a.default_repo_maintain_frequency,
        "--default-repo-maintain-frequency",
    )?;
    opts.repo_full_maintenance_frequency = duration(
        &a.full_repo_maintain_frequency,
        "--full-repo-maintain-frequency",
    )?;
    // SIGTERM (the kubelet stopping the pod) and Ctrl-C end it cleanly: the Lease is
    // released so another replica takes over at once; work in flight is run again there.
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    server::run(client, opts, shutdown).await?;
    Ok(0)
}

/// `arca node-agent`.
#[derive(Args, Debug)]
pub struct NodeAgentArgs {
    #[command(subcommand)]
    hold: Option<NodeAgentCmd>,

    /// Log format (logs go to stderr; ARCA_LOG sets the filter, default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// This node's name (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME", required = false)]
    node_name: Option<String>,

    /// The kubelet's pods directory as this process sees it (the DaemonSet mounts the
    /// host's /var/lib/kubelet/pods here).
    #[arg(long, default_value = "/host_pods")]
    host_pods_dir: std::path::PathBuf,

    /// The image of the pods that hold a volume in place while its data moves [default:
    /// this pod's own image].
    #[arg(long, env = "ARCA_IMAGE")]
    image: Option<String>,

    /// How long exposing a volume (a claim from its snapshot, a pod that mounts it) may
    /// take before the DataUpload or DataDownload fails. Waiting for a slot on the node
    /// does not count.
    #[arg(long, default_value = "30m")]
    data_mover_prepare_timeout: String,

    /// ConfigMap (in the namespace) with the node agent's configuration, Velero's shape:
    /// `{"loadConcurrency": {"globalConfig": N, "perNodeConfig": [{"nodeSelector": …,
    /// "number": M}]}}` [default: one move at a time].
    #[arg(long)]
    node_agent_configmap: Option<String>,

    /// How often an upload makes what it has stored durable (an index checkpoint): a
    /// node agent killed mid-upload and restarted uploads again at most this much work
    /// [default: 1m]. Shorter costs more small index files.
    #[arg(long)]
    checkpoint_interval: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum NodeAgentCmd {
    /// Hold a volume in place until terminated (the command of the exposer pods).
    Hold,
    /// Wait until every volume under /restores holds its done file, then remove them (the
    /// command of a restored pod's restore-wait init container; Velero's restore helper).
    RestoreWait {
        /// The restore's UID.
        restore_uid: String,
        /// Where the volumes are mounted.
        #[arg(long, default_value = arca_k8s::datamover::podvolume::RESTORES_DIR)]
        root: std::path::PathBuf,
    },
}

pub async fn node_agent(ctx: &Ctx, kube: &KubeOpts, a: NodeAgentArgs) -> Result<u8> {
    use arca_k8s::datamover::agent;
    match a.hold {
        Some(NodeAgentCmd::Hold) => {
            agent::hold().await;
            return Ok(0);
        }
        Some(NodeAgentCmd::RestoreWait { restore_uid, root }) => {
            arca_k8s::datamover::podvolume::restore_wait(&root, &restore_uid).await;
            return Ok(0);
        }
        None => {}
    }
    let node = a
        .node_name
        .context("give --node-name (or NODE_NAME): the node this agent serves")?;
    let client = kube.client().await?;
    let ns = kube.namespace();
    let image = match a.image {
        Some(i) => i,
        None => agent::own_image(&client, ns).await.context(
            "cannot tell the image of the exposer pods: run in the DaemonSet, or give --image",
        )?,
    };
    let opts = agent::Options {
        namespace: ns.to_string(),
        node,
        pods_dir: a.host_pods_dir,
        image,
        cache_root: ctx.cache_root(),
        prepare_timeout: duration(
            &a.data_mover_prepare_timeout,
            "--data-mover-prepare-timeout",
        )?,
        config_map: a.node_agent_configmap,
        checkpoint: match a.checkpoint_interval.as_deref() {
            // Sub-second allowed (Go's units: "500ms").
            Some(c) => Some(
                arca_k8s::backup::parse_go_std(c)
                    .filter(|d| !d.is_zero())
                    .with_context(|| {
                        format!("--checkpoint-interval {c:?}: give a positive duration, e.g. 30s")
                    })?,
            ),
            None => None,
        },
    };
    tokio::select! {
        r = agent::run(client, opts) => r?,
        _ = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
            tokio::select! { _ = term.recv() => {} _ = tokio::signal::ctrl_c() => {} }
        } => tracing::info!("shutting down"),
    }
    Ok(0)
}
