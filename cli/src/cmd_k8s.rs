//! `arca install`, `arca backup ...`, `arca restore ...`: Velero's verbs and flags. Creating
//! a backup or restore makes the resource, which `arca server` runs; `--wait` follows it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arca_k8s::crd::{
    Backup, BackupSpec, BackupStorageLocation, BackupStorageLocationSpec, ObjectStorageLocation,
    Restore, RestoreSpec, RestoreStatusSpec, Schedule,
};
use arca_k8s::filter::parse_selector;
use arca_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use arca_k8s::kube::api::{Api, ListParams};
use arca_k8s::kube::{Client, ResourceExt};
use arca_k8s::manage;
use arca_k8s::record::{Messages, Results};
use clap::{Args, Subcommand};

use crate::output::print_json;
use crate::{Ctx, EXIT_PARTIAL};

/// How to reach the cluster, and where Arca's resources live in it (global flags, as in
/// Velero: before or after the command).
#[derive(Args, Debug, Clone)]
pub struct KubeOpts {
    /// Kubeconfig file [default: $KUBECONFIG, then ~/.kube/config, then the pod's
    /// service account].
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,

    /// Kubeconfig context [default: the current context].
    #[arg(long, global = true)]
    context: Option<String>,

    /// Namespace of Arca's resources (backups, restores, storage locations).
    #[arg(
        long,
        short = 'n',
        env = "ARCA_NAMESPACE",
        default_value = "arca",
        global = true
    )]
    namespace: String,
}

impl KubeOpts {
    /// The namespace of Arca's resources.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn client(&self) -> Result<Client> {
        let (client, _) =
            manage::connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        Ok(client)
    }

    /// A client of a cluster where Arca is installed.
    pub(crate) async fn installed(&self) -> Result<Client> {
        let (client, url) =
            manage::connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        manage::check_installed(&client, &url).await?;
        Ok(client)
    }
}

/// `arca install`.
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Print what would be applied, as YAML (or JSON with -o json), and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// With --dry-run: yaml (the default) or json.
    #[arg(long, short = 'o', value_enum, requires = "dry_run")]
    output: Option<Format>,

    /// Create a default backup storage location with this provider: aws (S3 and
    /// S3-compatible), gcp, azure, or local (a directory the client can reach).
    #[arg(long)]
    provider: Option<String>,

    /// Bucket of the default location (for `local`: the directory).
    #[arg(long, requires = "provider")]
    bucket: Option<String>,

    /// Prefix within the bucket.
    #[arg(long, requires = "provider")]
    prefix: Option<String>,

    /// Location settings, key=value pairs: region, s3Url, s3ForcePathStyle.
    #[arg(long, value_delimiter = ',', requires = "provider")]
    backup_location_config: Vec<String>,

    /// Cloud credentials file (AWS style) for the location, stored as a secret.
    #[arg(long, requires = "provider")]
    secret_file: Option<PathBuf>,

    /// The image of the operator's Deployment (`arca server`).
    #[arg(long, default_value = concat!("arca/arca:v", env!("CARGO_PKG_VERSION")))]
    image: String,

    /// Its pull policy: IfNotPresent, Always or Never.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["IfNotPresent", "Always", "Never"])]
    image_pull_policy: String,

    /// Create no Deployment: `arca server` runs elsewhere.
    #[arg(long)]
    no_deployment: bool,

    /// CPU request of the server's pod ("0": none).
    #[arg(long, default_value = "500m")]
    server_pod_cpu_request: String,

    /// Memory request of the server's pod ("0": none).
    #[arg(long, default_value = "128Mi")]
    server_pod_mem_request: String,

    /// CPU limit of the server's pod ("0": none).
    #[arg(long, default_value = "1000m")]
    server_pod_cpu_limit: String,

    /// Memory limit of the server's pod ("0": none).
    #[arg(long, default_value = "512Mi")]
    server_pod_mem_limit: String,

    /// Deploy the node agent (a DaemonSet running `arca node-agent` on every node): it
    /// moves volume data for `backup create --snapshot-move-data` and its restores.
    #[arg(long, conflicts_with = "no_deployment")]
    use_node_agent: bool,

    /// The kubelet's pods directory on the nodes, which the node agent mounts (another
    /// path on RancherOS, Nutanix, TKGI and some others).
    #[arg(
        long,
        default_value = "/var/lib/kubelet/pods",
        requires = "use_node_agent"
    )]
    host_pods_dir: String,

    /// Run the node agent privileged: needed to read and write block-mode volumes.
    #[arg(long, requires = "use_node_agent")]
    privileged_node_agent: bool,

    /// ConfigMap (in the namespace) the node agent reads its `loadConcurrency` from.
    #[arg(long, requires = "use_node_agent")]
    node_agent_configmap: Option<String>,

    /// Wait until the server's Deployment is available (at most 5 minutes).
    #[arg(long, conflicts_with = "no_deployment")]
    wait: bool,
}

/// Filters shared by backups and restores.
#[derive(Args, Debug, Default)]
struct CommonFilters {
    /// Namespaces to include, comma-separated globs [default: all].
    #[arg(long, value_delimiter = ',')]
    include_namespaces: Vec<String>,

    /// Namespaces to exclude, comma-separated globs.
    #[arg(long, value_delimiter = ',')]
    exclude_namespaces: Vec<String>,

    /// Resources to include (resource, resource.group or short name) [default: all].
    #[arg(long, value_delimiter = ',')]
    include_resources: Vec<String>,

    /// Resources to exclude.
    #[arg(long, value_delimiter = ',')]
    exclude_resources: Vec<String>,

    /// Include cluster-scoped resources: true or false [default: only when all
    /// namespaces are included].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    include_cluster_resources: Option<bool>,

    /// Only items matching this label selector, e.g. `app=web,tier!=db`.
    #[arg(long, short = 'l')]
    selector: Option<String>,

    /// Items matching any of these selectors: `app=web or app=db`. Not with --selector.
    #[arg(long, conflicts_with = "selector")]
    or_selector: Option<String>,

    /// Labels of the new resource, key=value pairs.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
}

impl CommonFilters {
    fn selectors(&self) -> Result<(Option<LabelSelector>, Option<Vec<LabelSelector>>)> {
        let sel = self.selector.as_deref().map(parse_selector).transpose()?;
        let or = match &self.or_selector {
            None => None,
            Some(s) => Some(
                s.split(" or ")
                    .map(|p| parse_selector(p.trim()))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok((sel, or))
    }

    fn labels(&self) -> Result<BTreeMap<String, String>> {
        pairs(&self.labels, '=', "--labels")
    }
}

/// `key=value` (or `a:b`) pairs.
fn pairs(list: &[String], sep: char, flag: &str) -> Result<BTreeMap<String, String>> {
    list.iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once(sep) {
            Some((k, v)) if !k.is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => bail!("{flag}: {s:?} is not of the form key{sep}value"),
        })
        .collect()
}

fn opt_list(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Back up cluster resources now, into a backup storage location.
    ///
    /// The CLI reads the cluster and stores the backup itself: discovery at the server's
    /// preferred versions, Velero's filters, and the items, resource list, results and
    /// log stored as one snapshot of the location's resource repository.
    Create(Box<BackupCreate>),
    /// List backups (and first sync those stored in the locations into the cluster).
    Get(GetArgs),
    /// Show a backup: spec, status, per-item warnings and errors.
    Describe(DescribeArgs),
    /// Delete backups: their stored records, their restores, and the resources.
    Delete(DeleteArgs),
    /// Print a backup's log.
    Logs(LogsArgs),
    /// Cancel backups: the server stops them and they end Canceled, storing nothing.
    Cancel(CancelArgs),
    /// Download a backup's items as Velero's tarball (`<name>-data.tar.gz`): the objects
    /// as stored, for reading or for tools that take Velero's layout.
    Download(DownloadArgs),
}

/// `arca backup ...`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: BackupCmd,
}

#[derive(Args, Debug)]
pub struct BackupCreate {
    /// Name of the backup [default with --from-schedule: <schedule>-<YYYYMMDDhhmmss>].
    name: Option<String>,

    #[command(flatten)]
    template: BackupTemplate,

    /// Take the spec from this schedule's template.
    #[arg(long)]
    from_schedule: Option<String>,

    /// Wait for the backup to end, showing its progress; exit 0 when it completed, 3
    /// when it partially failed, 1 otherwise. Without it the command returns once the
    /// Backup is created, and the arca server runs it.
    #[arg(long, short = 'w')]
    wait: bool,
}

/// What a backup takes: `backup create`'s and `schedule create`'s flags.
#[derive(Args, Debug)]
pub(crate) struct BackupTemplate {
    #[command(flatten)]
    filters: CommonFilters,

    /// Cluster-scoped resources to include (new-style filter; not with the old ones).
    #[arg(long, value_delimiter = ',')]
    include_cluster_scoped_resources: Vec<String>,

    /// Cluster-scoped resources to exclude.
    #[arg(long, value_delimiter = ',')]
    exclude_cluster_scoped_resources: Vec<String>,

    /// Namespaced resources to include.
    #[arg(long, value_delimiter = ',')]
    include_namespace_scoped_resources: Vec<String>,

    /// Namespaced resources to exclude.
    #[arg(long, value_delimiter = ',')]
    exclude_namespace_scoped_resources: Vec<String>,

    /// Items backed up first: `pods=ns1/pod1,ns1/pod2;persistentvolumeclaims=ns1/pvc4`.
    #[arg(long)]
    ordered_resources: Option<String>,

    /// How long the backup is kept, e.g. 720h0m0s.
    #[arg(long)]
    ttl: Option<String>,

    /// Backup storage location [default: the default location].
    #[arg(long)]
    storage_location: Option<String>,

    /// Snapshot volumes (recorded in the spec; volume data moves with a later release).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    snapshot_volumes: Option<bool>,

    /// Back up every pod volume by file system (read live by the node agent of the pod's
    /// node; needs `install --use-node-agent`), but those a pod's
    /// `backup.arca.dev/backup-volumes-excludes` annotation names; without it, only the
    /// volumes named by `backup.arca.dev/backup-volumes` (Velero's annotations work too).
    /// Host paths, secrets, config maps, projected and downward-API volumes never are.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    default_volumes_to_fs_backup: Option<bool>,

    /// Move each bound claim's data into its namespace's repository: a CSI snapshot of
    /// the claim, read by the node agent (needs `install --use-node-agent`), then
    /// removed. A restore of the backup writes the data into new volumes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    snapshot_move_data: Option<bool>,

    /// How long a claim's snapshot may take to become ready (Go-style duration)
    /// [default: 10m].
    #[arg(long)]
    csi_snapshot_timeout: Option<String>,

    /// How long the backup waits for its data movements before canceling the rest
    /// [default: 4h].
    #[arg(long)]
    item_operation_timeout: Option<String>,
}

impl BackupTemplate {
    /// The spec the flags say, and the labels of the new resource.
    pub(crate) fn spec(&self) -> Result<(BackupSpec, BTreeMap<String, String>)> {
        let mut spec = BackupSpec::default();
        let f = &self.filters;
        let set = |slot: &mut Option<Vec<String>>, v: &[String]| {
            if !v.is_empty() {
                *slot = Some(v.to_vec());
            }
        };
        set(&mut spec.included_namespaces, &f.include_namespaces);
        set(&mut spec.excluded_namespaces, &f.exclude_namespaces);
        set(&mut spec.included_resources, &f.include_resources);
        set(&mut spec.excluded_resources, &f.exclude_resources);
        set(
            &mut spec.included_cluster_scoped_resources,
            &self.include_cluster_scoped_resources,
        );
        set(
            &mut spec.excluded_cluster_scoped_resources,
            &self.exclude_cluster_scoped_resources,
        );
        set(
            &mut spec.included_namespace_scoped_resources,
            &self.include_namespace_scoped_resources,
        );
        set(
            &mut spec.excluded_namespace_scoped_resources,
            &self.exclude_namespace_scoped_resources,
        );
        spec.include_cluster_resources = f.include_cluster_resources;
        let (sel, or) = f.selectors()?;
        spec.label_selector = sel;
        spec.or_label_selectors = or;
        if let Some(o) = &self.ordered_resources {
            let map = pairs(
                &o.split(';').map(str::to_string).collect::<Vec<_>>(),
                '=',
                "--ordered-resources",
            )?;
            spec.ordered_resources = Some(map);
        }
        if let Some(t) = &self.ttl {
            arca_k8s::backup::parse_go_duration(t)?;
            spec.ttl = Some(t.clone());
        }
        spec.storage_location = self.storage_location.clone();
        spec.snapshot_volumes = self.snapshot_volumes;
        spec.default_volumes_to_fs_backup = self.default_volumes_to_fs_backup;
        spec.snapshot_move_data = self.snapshot_move_data;
        for (flag, v, slot) in [
            (
                "--csi-snapshot-timeout",
                &self.csi_snapshot_timeout,
                &mut spec.csi_snapshot_timeout,
            ),
            (
                "--item-operation-timeout",
                &self.item_operation_timeout,
                &mut spec.item_operation_timeout,
            ),
        ] {
            if let Some(t) = v {
                arca_k8s::backup::parse_go_duration(t)
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
                *slot = Some(t.clone());
            }
        }
        Ok((spec, f.labels()?))
    }
}

/// How `get` and `describe` print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    #[value(alias = "text")]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    pub(crate) fn of(ctx: &Ctx, o: Option<Format>) -> Self {
        match o {
            Some(f) => f,
            None if ctx.json => Format::Json,
            None => Format::Table,
        }
    }

    /// Print structured output; false for the table (the caller prints it).
    pub(crate) fn print<T: serde::Serialize>(self, v: &T) -> Result<bool> {
        match self {
            Format::Table => Ok(false),
            Format::Json => print_json(v).map(|_| true),
            Format::Yaml => {
                print!("{}", serde_yaml_ng::to_string(v)?);
                Ok(true)
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Names to show [default: all].
    pub(crate) names: Vec<String>,

    /// Output format: table, json or yaml [default: table, or json with --json].
    #[arg(long, short = 'o', value_enum)]
    pub(crate) output: Option<Format>,

    /// Only those whose labels match this selector.
    #[arg(long, short = 'l')]
    pub(crate) selector: Option<String>,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Names to describe [default: all].
    pub(crate) names: Vec<String>,

    /// Output format: text, json or yaml [default: text, or json with --json].
    #[arg(long, short = 'o', value_enum)]
    pub(crate) output: Option<Format>,

    /// Also list every item.
    #[arg(long)]
    pub(crate) details: bool,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Names to delete.
    pub(crate) names: Vec<String>,

    /// Delete all of them.
    #[arg(long, conflicts_with = "names")]
    pub(crate) all: bool,

    /// Do not ask.
    #[arg(long)]
    pub(crate) confirm: bool,

    /// Wait until the server has deleted it (or says why it could not): exit 0 when
    /// everything was deleted, 1 otherwise.
    #[arg(long, short = 'w')]
    pub(crate) wait: bool,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The backup.
    name: String,

    /// Where to write it [default: <name>-data.tar.gz]; `-` for standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,

    /// Overwrite the file if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The name.
    name: String,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// Names to cancel.
    #[arg(required = true)]
    names: Vec<String>,

    /// Wait until each has stopped.
    #[arg(long, short = 'w')]
    wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum RestoreCmd {
    /// Restore cluster resources from a backup, now.
    ///
    /// Velero's semantics: CRDs first and waited on, namespaces created, priorities,
    /// namespace mappings, the PV rename rule, existing-resource policy, node ports,
    /// storage-class mapping; every per-item failure recorded and the restore goes on.
    Create(Box<RestoreCreate>),
    /// List restores.
    Get(GetArgs),
    /// Show a restore: spec, status, per-item warnings and errors.
    Describe(DescribeArgs),
    /// Delete restores (their resources and records; restored objects stay).
    Delete(DeleteArgs),
    /// Print a restore's log.
    Logs(LogsArgs),
    /// Cancel restores: no further item is restored (those restored stay); they end
    /// Canceled.
    Cancel(CancelArgs),
}

/// `arca restore ...`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(subcommand)]
    cmd: RestoreCmd,
}

#[derive(Args, Debug)]
pub struct RestoreCreate {
    /// Name of the restore [default: <backup>-<YYYYMMDDhhmmss>].
    name: Option<String>,

    /// The backup to restore.
    #[arg(
        long,
        required_unless_present = "from_schedule",
        conflicts_with = "from_schedule"
    )]
    from_backup: Option<String>,

    /// Restore the newest completed backup of this schedule.
    #[arg(long)]
    from_schedule: Option<String>,

    /// With --from-schedule: consider its partially failed backups too.
    #[arg(long, requires = "from_schedule")]
    allow_partially_failed: bool,

    #[command(flatten)]
    filters: CommonFilters,

    /// Wait for the restore to end, showing its progress; exit 0 when it completed, 3
    /// when it partially failed, 1 otherwise. Without it the command returns once the
    /// Restore is created, and the arca server runs it.
    #[arg(long, short = 'w')]
    wait: bool,

    /// Restore into other namespaces: `src1:dst1,src2:dst2`.
    #[arg(long, value_delimiter = ',')]
    namespace_mappings: Vec<String>,

    /// Restore volume data: true or false [default: true]. The PersistentVolume objects
    /// follow the filters either way; a volume the cluster provisioned (reclaim policy
    /// Delete) is provisioned anew for its claim.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    restore_volumes: Option<bool>,

    /// Keep the node ports of services: true or false [default: only those set explicitly].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    preserve_nodeports: Option<bool>,

    /// What to do with an item that exists: none (keep it, warn if it differs) or
    /// update (patch it to the backed-up version).
    #[arg(long, value_parser = ["none", "update"])]
    existing_resource_policy: Option<String>,

    /// Resources whose status is restored too.
    #[arg(long, value_delimiter = ',')]
    status_include_resources: Vec<String>,

    /// Resources whose status is not restored.
    #[arg(long, value_delimiter = ',')]
    status_exclude_resources: Vec<String>,
}

pub(crate) fn k8s_time(t: &Time) -> String {
    crate::output::time(arca_format::Timestamp {
        seconds: t.0.as_second(),
        nanos: 0,
    })
}

pub(crate) fn opt_time(t: Option<&Time>) -> String {
    t.map(k8s_time).unwrap_or_else(|| "<none>".into())
}

/// `29d`, `5h`, `expired`.
fn expires_in(t: Option<&Time>) -> String {
    let Some(t) = t else { return String::new() };
    let secs = t.0.as_second() - chrono::Utc::now().timestamp();
    match secs {
        s if s <= 0 => "expired".into(),
        s if s >= 86400 => format!("{}d", s / 86400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s => format!("{}m", (s / 60).max(1)),
    }
}

fn list_or_none(v: Option<&Vec<String>>) -> String {
    match v {
        Some(v) if !v.is_empty() => v.join(", "),
        _ => "<none>".into(),
    }
}

fn list_or_all(v: Option<&Vec<String>>) -> String {
    match v {
        Some(v) if !v.is_empty() => v.join(", "),
        _ => "*".into(),
    }
}

pub(crate) fn selector_text(s: Option<&LabelSelector>) -> String {
    let Some(s) = s else { return "<none>".into() };
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in s.match_expressions.iter().flatten() {
        let vals = r.values.clone().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            op => format!("{} {} ({vals})", r.key, op.to_lowercase()),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// Run a closure's future with a spinner on the terminal.
fn exit_for(phase: &str) -> u8 {
    match phase {
        "Completed" => 0,
        "PartiallyFailed" => EXIT_PARTIAL,
        _ => 1,
    }
}

/// `arca install`.
pub async fn install(ctx: &Ctx, kube: &KubeOpts, a: InstallArgs) -> Result<u8> {
    let mut plan = manage::InstallPlan {
        namespace: kube.namespace.clone(),
        server: (!a.no_deployment).then(|| manage::ServerDeployment {
            image: a.image.clone(),
            pull_policy: a.image_pull_policy.clone(),
            cpu_request: a.server_pod_cpu_request.clone(),
            memory_request: a.server_pod_mem_request.clone(),
            cpu_limit: a.server_pod_cpu_limit.clone(),
            memory_limit: a.server_pod_mem_limit.clone(),
        }),
        node_agent: a.use_node_agent.then(|| manage::NodeAgentDaemonSet {
            image: a.image.clone(),
            pull_policy: a.image_pull_policy.clone(),
            host_pods_dir: a.host_pods_dir.clone(),
            privileged: a.privileged_node_agent,
            config_map: a.node_agent_configmap.clone(),
        }),
        ..Default::default()
    };
    if let Some(provider) = &a.provider {
        let config = pairs(&a.backup_location_config, '=', "--backup-location-config")?;
        let bucket = a
            .bucket
            .clone()
            .with_context(|| format!("--provider {provider} needs --bucket"))?;
        let mut bsl = BackupStorageLocation::new(
            "default",
            BackupStorageLocationSpec {
                provider: provider.clone(),
                object_storage: ObjectStorageLocation {
                    bucket,
                    prefix: a.prefix.clone(),
                    ca_cert: None,
                },
                config: (!config.is_empty()).then_some(config),
                default: Some(true),
                access_mode: Some("ReadWrite".into()),
                ..Default::default()
            },
        );
        bsl.metadata.namespace = Some(plan.namespace.clone());
        plan.location = Some(bsl);
        if let Some(f) = &a.secret_file {
            plan.cloud_credentials = Some(
                std::fs::read(f)
                    .with_context(|| format!("cannot read the secret file {}", f.display()))?,
            );
        }
    }
    // The repositories' password goes into the cluster, where the server finds it: the
    // one given (ARCA_PASSWORD, --password-file), else the one stored there, else a
    // random one made at install.
    plan.repository_password = ctx.password_given()?;
    if a.dry_run {
        let objects = plan.objects();
        if a.output == Some(Format::Json) || (a.output.is_none() && ctx.json) {
            return print_json(&objects).map(|_| 0);
        }
        for o in objects {
            println!("---\n{}", serde_yaml_ng::to_string(&o)?.trim_end());
        }
        return Ok(0);
    }
    let client = kube.client().await?;
    let done = manage::install(&client, &plan).await?;
    if a.wait {
        if !ctx.json && !ctx.quiet {
            println!("Waiting for the server's Deployment to be available...");
        }
        manage::wait_server_available(&client, &plan.namespace, Duration::from_secs(300)).await?;
    }
    if ctx.json {
        print_json(&done)?;
    } else if !ctx.quiet {
        for d in &done {
            println!("applied {d}");
        }
        println!("Arca is installed in namespace {}.", plan.namespace);
        if plan.server.is_some() && !a.wait {
            println!(
                "Run `kubectl -n {} get deployment/{}` to see the server's state (or install with --wait).",
                plan.namespace,
                manage::SERVER_NAME
            );
        }
        if plan.location.is_none() {
            println!(
                "No backup storage location was created: run `arca install --provider ... --bucket ...`, \
                 or apply a BackupStorageLocation."
            );
        }
    }
    Ok(0)
}

/// `arca uninstall`.
#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Do not ask.
    #[arg(long, alias = "confirm")]
    force: bool,

    /// Wait until the namespace is gone.
    #[arg(long)]
    wait: bool,

    /// Keep Arca's CustomResourceDefinitions (other namespaces use them).
    #[arg(long)]
    keep_crds: bool,

    /// Where the repositories' password is saved before its namespace goes (a file
    /// `arca-repository-password-<namespace>`, mode 0600) [default: here].
    #[arg(long)]
    password_dir: Option<PathBuf>,
}

/// `arca uninstall`.
pub async fn uninstall(ctx: &Ctx, kube: &KubeOpts, a: UninstallArgs) -> Result<u8> {
    let ns = kube.namespace();
    confirm(
        a.force,
        &format!(
            "Remove Arca from namespace {ns}{}? Backups in object storage stay.",
            if a.keep_crds {
                ""
            } else {
                ", and its CRDs with every Arca resource in every namespace"
            }
        ),
    )?;
    let client = kube.client().await?;
    let wait = a.wait.then_some(Duration::from_secs(600));
    let done =
        manage::uninstall(&client, ns, !a.keep_crds, wait, a.password_dir.as_deref()).await?;
    if ctx.json {
        print_json(&done)?;
    } else if !ctx.quiet {
        for d in &done {
            match d.strip_prefix("(kept) ") {
                Some(k) => println!("kept {k}"),
                None => println!("deleted {d}"),
            }
        }
        println!(
            "Arca is uninstalled from namespace {ns}. The backups in object storage are kept: `arca install` with the same bucket lists them again."
        );
    }
    Ok(0)
}

/// `arca backup ...`.
pub async fn backup(ctx: &Ctx, kube: &KubeOpts, a: BackupArgs) -> Result<u8> {
    let client = kube.installed().await?;
    let ns = kube.namespace.as_str();
    let cache = ctx.cache_root();
    match a.cmd {
        BackupCmd::Create(c) => backup_create(ctx, &client, ns, *c).await,
        BackupCmd::Get(g) => {
            sync(ctx, &client, ns).await?;
            let api: Api<Backup> = Api::namespaced(client.clone(), ns);
            let list = listed(&api, &g, "backup").await?;
            if Format::of(ctx, g.output).print(&list)? {
                return Ok(0);
            }
            println!(
                "{:<32} {:<16} {:>6} {:>8} {:<20} {:<8} {:<16} SELECTOR",
                "NAME", "STATUS", "ERRORS", "WARNINGS", "CREATED", "EXPIRES", "STORAGE LOCATION"
            );
            for b in &list {
                let st = b.status.clone().unwrap_or_default();
                println!(
                    "{:<32} {:<16} {:>6} {:>8} {:<20} {:<8} {:<16} {}",
                    b.name_any(),
                    st.phase.as_deref().unwrap_or("New"),
                    st.errors.unwrap_or(0),
                    st.warnings.unwrap_or(0),
                    opt_time(b.metadata.creation_timestamp.as_ref()),
                    expires_in(st.expiration.as_ref()),
                    b.spec.storage_location.as_deref().unwrap_or("default"),
                    selector_text(b.spec.label_selector.as_ref()),
                );
            }
            Ok(0)
        }
        BackupCmd::Describe(d) => {
            let api: Api<Backup> = Api::namespaced(client.clone(), ns);
            let names = names_or_all(&api, &d.names).await?;
            let mut views = Vec::new();
            for name in names {
                let b = api.get_opt(&name).await?;
                let record = manage::backup_record(&client, ns, &name, cache.as_deref()).await;
                let (b, results, items, volumes, hooks) = match (b, record) {
                    (b, Ok((repo, id, stored))) => {
                        let results = manage::backup_results(&repo, &id).await.ok();
                        let (items, volumes, hooks) = if d.details {
                            (
                                manage::backup_items(&repo, &id).await.ok(),
                                manage::backup_volumes(&repo, &id).await.ok(),
                                manage::record_hooks(&repo, &id).await.ok(),
                            )
                        } else {
                            (None, None, None)
                        };
                        (b.unwrap_or(stored), results, items, volumes, hooks)
                    }
                    (Some(b), Err(e)) => {
                        tracing::info!("backup {name}: no stored record: {e}");
                        (b, None, None, None, None)
                    }
                    (None, Err(e)) => return Err(e.into()),
                };
                if Format::of(ctx, d.output) == Format::Table {
                    describe_backup(&b, results.as_ref(), items.as_deref());
                    if let Some(v) = &volumes {
                        describe_volumes(v);
                    }
                    if let Some(h) = &hooks {
                        describe_hook_runs(h);
                    }
                } else {
                    views.push(serde_json::json!({
                        "backup": b, "results": results, "items": items, "volumes": volumes,
                        "hooks": hooks,
                    }));
                }
            }
            Format::of(ctx, d.output).print(&views)?;
            Ok(0)
        }
        BackupCmd::Delete(d) => {
            let api: Api<Backup> = Api::namespaced(client.clone(), ns);
            let Some(names) = to_delete(&api, &d, "backup").await? else {
                return Ok(0);
            };
            if d.wait && !manage::server_running(&client, ns).await {
                eprintln!(
                    "warning: no arca server is running in namespace {ns} (its Lease arca-server is missing or not renewed): deletions wait until one runs. `arca install` deploys it; `arca server -n {ns}` runs one here."
                );
            }
            let mut failed = 0;
            let mut out = Vec::new();
            for name in &names {
                // As Velero's: a backup this cluster does not have is not found (`backup
                // get` syncs those stored in the locations first).
                if api.get_opt(name).await?.is_none() {
                    eprintln!("error: backup {name} not found in namespace {ns}");
                    out.push(serde_json::json!({ "backup": name, "deleted": false, "error": "not found" }));
                    failed += 1;
                    continue;
                }
                let req = manage::request_deletion(&client, ns, name).await?;
                if !ctx.json && !ctx.quiet {
                    println!(
                        "Request to delete backup \"{name}\" submitted successfully.\nThe backup will be fully deleted after all associated data (stored records, restores) are removed."
                    );
                }
                if !d.wait {
                    out.push(serde_json::json!({ "backup": name, "request": req.name_any() }));
                    continue;
                }
                match deletion_result(ctx, &client, ns, &req.name_any()).await? {
                    None => {
                        if !ctx.json && !ctx.quiet {
                            println!("Backup {name} deleted.");
                        }
                        out.push(serde_json::json!({ "backup": name, "deleted": true }));
                    }
                    Some(errors) => {
                        for e in &errors {
                            eprintln!("error: backup {name}: {e}");
                        }
                        out.push(serde_json::json!({ "backup": name, "deleted": false, "errors": errors }));
                        failed += 1;
                    }
                }
            }
            if !d.wait && !manage::server_running(&client, ns).await {
                eprintln!(
                    "warning: no arca server is running in namespace {ns} (its Lease arca-server is missing or not renewed): deletions wait until one runs. `arca install` deploys it; `arca server -n {ns}` runs one here."
                );
            }
            if ctx.json {
                print_json(&out)?;
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        BackupCmd::Download(dl) => {
            let (repo, id, _) =
                manage::backup_record(&client, ns, &dl.name, cache.as_deref()).await?;
            let path = dl
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}-data.tar.gz", dl.name)));
            if path.as_os_str() == "-" {
                manage::download_backup(&repo, &id, std::io::stdout().lock()).await?;
                return Ok(0);
            }
            let mut o = std::fs::OpenOptions::new();
            o.write(true);
            if dl.force {
                o.create(true).truncate(true);
            } else {
                o.create_new(true);
            }
            let file = o
                .open(&path)
                .with_context(|| format!("cannot write {} (--force overwrites)", path.display()))?;
            let n = match manage::download_backup(&repo, &id, std::io::BufWriter::new(file)).await {
                Ok(n) => n,
                Err(e) => {
                    // A partial tarball is no tarball.
                    let _ = std::fs::remove_file(&path);
                    return Err(e.into());
                }
            };
            if !ctx.quiet {
                println!(
                    "Backup {} ({n} items) downloaded to {}",
                    dl.name,
                    path.display()
                );
            }
            Ok(0)
        }
        BackupCmd::Logs(l) => {
            let (repo, id, _) =
                manage::backup_record(&client, ns, &l.name, cache.as_deref()).await?;
            print!("{}", manage::record_log(&repo, &id).await?);
            Ok(0)
        }
        BackupCmd::Cancel(c) => {
            let api: Api<Backup> = Api::namespaced(client.clone(), ns);
            cancel(ctx, &api, "backup", &c, |b: &Backup| {
                b.status.as_ref().and_then(|s| s.phase.clone())
            })
            .await
        }
    }
}

/// What `follow` and `cancel` watch: Arca's resources.
trait Watched:
    arca_k8s::kube::Resource
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: arca_k8s::kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Ask the server to cancel backups or restores (`spec.cancel`); with --wait, follow each
/// until it stopped. Ended ones are named and left alone.
async fn cancel<K>(
    ctx: &Ctx,
    api: &Api<K>,
    what: &str,
    c: &CancelArgs,
    phase: fn(&K) -> Option<String>,
) -> Result<u8>
where
    K: Watched,
{
    let mut failed = 0;
    for name in &c.names {
        let Some(o) = api.get_opt(name).await? else {
            eprintln!("error: no {what} named {name}");
            failed += 1;
            continue;
        };
        let p = phase(&o).unwrap_or_else(|| "New".into());
        if !matches!(
            p.as_str(),
            "New" | "Queued" | "InProgress" | "WaitingForPluginOperations" | "Finalizing" | ""
        ) {
            eprintln!("error: {what} {name} has ended ({p}): nothing to cancel");
            failed += 1;
            continue;
        }
        api.patch(
            name,
            &arca_k8s::kube::api::PatchParams::default(),
            &arca_k8s::kube::api::Patch::Merge(&serde_json::json!({ "spec": { "cancel": true } })),
        )
        .await
        .with_context(|| format!("cancel {what} {name}"))?;
        if !ctx.quiet && !ctx.json {
            println!("Request to cancel {what} {name:?} submitted successfully.");
        }
        if c.wait
            && let Some(o) =
                follow(ctx, api, what, name, move |o: &K| (phase(o), None, None)).await?
        {
            let p = phase(&o).unwrap_or_default();
            if !ctx.quiet && !ctx.json {
                println!(
                    "{} {name}: {p}",
                    if what == "backup" {
                        "Backup"
                    } else {
                        "Restore"
                    }
                );
            }
        }
    }
    Ok(u8::from(failed > 0))
}

/// Sync stored backups into the cluster; unreadable locations are named on stderr.
async fn sync(ctx: &Ctx, client: &Client, ns: &str) -> Result<()> {
    let report = manage::sync_backups(client, ns, ctx.cache_root().as_deref(), None).await?;
    for (loc, why) in &report.unreachable {
        eprintln!("warning: backup storage location {loc} could not be read: {why}");
    }
    if !ctx.quiet && !ctx.json {
        for n in &report.created {
            eprintln!("synced backup {n} from object storage");
        }
        for n in &report.removed {
            eprintln!("removed backup {n}: it is gone from object storage");
        }
    }
    Ok(())
}

/// The resources `get` shows: named ones (all named must exist) or all, matching the
/// selector, newest first.
pub(crate) async fn listed<K>(api: &Api<K>, g: &GetArgs, what: &str) -> Result<Vec<K>>
where
    K: arca_k8s::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut lp = ListParams::default();
    if let Some(s) = &g.selector {
        lp = lp.labels(s);
    }
    let mut list = api
        .list(&lp)
        .await
        .with_context(|| format!("cannot list {what}s"))?
        .items;
    list.retain(|o| g.names.is_empty() || g.names.contains(&o.name_any()));
    let have: Vec<String> = list.iter().map(|o| o.name_any()).collect();
    let gone: Vec<&str> = g
        .names
        .iter()
        .filter(|w| !have.contains(w))
        .map(String::as_str)
        .collect();
    if !gone.is_empty() {
        bail!("no {what} named {}", gone.join(", "));
    }
    list.sort_by_key(|o| std::cmp::Reverse(o.meta().creation_timestamp.clone().map(|t| t.0)));
    Ok(list)
}

pub(crate) async fn names_or_all<K>(api: &Api<K>, names: &[String]) -> Result<Vec<String>>
where
    K: arca_k8s::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !names.is_empty() {
        return Ok(names.to_vec());
    }
    let mut all: Vec<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    all.sort();
    Ok(all)
}

/// The names a delete acts on, confirmed; `None` when there is nothing to do.
pub(crate) async fn to_delete<K>(
    api: &Api<K>,
    d: &DeleteArgs,
    what: &str,
) -> Result<Option<Vec<String>>>
where
    K: arca_k8s::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let names = if d.all {
        names_or_all(api, &[]).await?
    } else if d.names.is_empty() {
        bail!("name the {what}s to delete, or use --all");
    } else {
        d.names.clone()
    };
    if names.is_empty() {
        println!("No {what}s to delete.");
        return Ok(None);
    }
    confirm(
        d.confirm,
        &format!("Delete {what}(s) {}?", names.join(", ")),
    )?;
    Ok(Some(names))
}

fn confirm(given: bool, question: &str) -> Result<()> {
    if given {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Add --confirm to do it without asking.");
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("cancelled: nothing was deleted");
    }
    Ok(())
}

async fn backup_create(ctx: &Ctx, client: &Client, ns: &str, c: BackupCreate) -> Result<u8> {
    let name = match (&c.name, &c.from_schedule) {
        (Some(n), _) => n.clone(),
        (None, Some(s)) => manage::scheduled_backup_name(s, chrono::Utc::now()),
        (None, None) => bail!("name the backup: arca backup create NAME"),
    };
    let (spec, labels) = c.template.spec()?;
    match &c.from_schedule {
        // Velero's rule: the schedule's template exactly, whatever else was given.
        Some(s) => {
            if spec != BackupSpec::default() || !labels.is_empty() {
                eprintln!("Creating backup from schedule, all other filters are ignored.");
            }
            let api: Api<Schedule> = Api::namespaced(client.clone(), ns);
            let sched = api
                .get_opt(s)
                .await?
                .with_context(|| format!("no schedule {s:?} in namespace {ns}"))?;
            manage::create_backup_object(client, ns, manage::backup_from_schedule(&sched, &name))
                .await?;
        }
        None => {
            manage::create_backup(client, ns, &name, spec, labels).await?;
        }
    }
    submitted(ctx, client, ns, "backup", &name, c.wait).await?;
    if !c.wait {
        return Ok(0);
    }
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    let Some(b) = follow(ctx, &api, "backup", &name, |b: &Backup| {
        let s = b.status.clone().unwrap_or_default();
        let p = s.progress.unwrap_or_default();
        (s.phase, p.items_backed_up, p.total_items)
    })
    .await?
    else {
        return Ok(0);
    };
    let status = b.status.unwrap_or_default();
    // Warnings and errors are in the stored record.
    let cache = ctx.cache_root();
    let results = match status.snapshot_id {
        Some(_) => match manage::backup_record(client, ns, &name, cache.as_deref()).await {
            Ok((repo, id, _)) => manage::backup_results(&repo, &id).await.unwrap_or_default(),
            Err(_) => Results::default(),
        },
        None => Results::default(),
    };
    let progress = status
        .progress
        .as_ref()
        .map(|p| (p.items_backed_up, p.total_items));
    finish(
        ctx,
        "backup",
        &name,
        serde_json::to_value(&status)?,
        status.validation_errors.as_ref(),
        status.failure_reason.as_deref(),
        &results,
        progress,
    )
}

/// Say that a backup or restore was created, and warn when no server would run it (no
/// live Lease of `arca server` in the namespace).
async fn submitted(
    ctx: &Ctx,
    client: &Client,
    ns: &str,
    what: &str,
    name: &str,
    wait: bool,
) -> Result<()> {
    let title = if what == "backup" {
        "Backup"
    } else {
        "Restore"
    };
    if !ctx.json && !ctx.quiet {
        println!("{title} request {name:?} submitted successfully.");
        if wait {
            println!(
                "Waiting for {what} to complete. You may safely press ctrl-c to stop waiting - your {what} will continue in the background."
            );
        } else {
            println!(
                "Run `arca {what} describe {name}` or `arca {what} logs {name}` for more details."
            );
        }
    } else if ctx.json && !wait {
        print_json(&serde_json::json!({ "name": name, "status": { "phase": "New" } }))?;
    }
    if !manage::server_running(client, ns).await {
        eprintln!(
            "warning: no arca server is running in namespace {ns} (its Lease arca-server is missing or not renewed): the {what} waits in phase New until one runs. `arca install` deploys it; `arca server -n {ns}` runs one here."
        );
    }
    Ok(())
}

/// Follow a backup or restore until its phase ends, by watching it; a bar of items done
/// on a terminal. None when the user stopped waiting (Ctrl-C): the work goes on.
async fn follow<K>(
    ctx: &Ctx,
    api: &Api<K>,
    what: &str,
    name: &str,
    state: impl Fn(&K) -> (Option<String>, Option<i64>, Option<i64>) + Send + Sync + 'static,
) -> Result<Option<K>>
where
    K: Watched,
{
    use arca_k8s::kube::runtime::{WatchStreamExt, watcher};
    use futures::StreamExt;
    const ENDED: [&str; 5] = [
        "Completed",
        "PartiallyFailed",
        "Failed",
        "FailedValidation",
        "Canceled",
    ];
    let pb = ctx.show_progress().then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} items")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        pb.set_message(format!("{what} {name}: New"));
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api.clone(), cfg).applied_objects());
    let result = loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = stopped(ctx) => {
                if let Some(pb) = &pb {
                    pb.finish_and_clear();
                }
                eprintln!("stopped waiting: {what} {name} goes on in the cluster (`arca {what} describe {name}`)");
                return Ok(None);
            }
        };
        let Some(obj) = next else {
            break Err(anyhow::anyhow!("the watch of {what} {name} ended"));
        };
        let obj = obj.with_context(|| format!("watch {what} {name}"))?;
        let (phase, done, total) = state(&obj);
        let phase = phase.unwrap_or_else(|| "New".into());
        if let Some(pb) = &pb {
            pb.set_message(format!("{what} {name}: {phase}"));
            pb.set_length(total.unwrap_or(0).max(0) as u64);
            pb.set_position(done.unwrap_or(0).max(0) as u64);
        }
        if ENDED.contains(&phase.as_str()) {
            break Ok(Some(obj));
        }
    };
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    result
}

/// Follow a DeleteBackupRequest: None when it went (the server removes the requests of a
/// backup it deleted), or the errors it was processed with.
async fn deletion_result(
    ctx: &Ctx,
    client: &Client,
    ns: &str,
    req: &str,
) -> Result<Option<Vec<String>>> {
    use arca_k8s::kube::runtime::watcher::{self, Event};
    use futures::StreamExt;
    let api: Api<arca_k8s::crd::DeleteBackupRequest> = Api::namespaced(client.clone(), ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={req}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg));
    let mut seen = false;
    loop {
        let ev = tokio::select! {
            e = stream.next() => e,
            _ = stopped(ctx) => {
                eprintln!("stopped waiting: the deletion goes on in the cluster (request {req})");
                return Ok(Some(vec!["not waited for".into()]));
            }
        };
        let Some(ev) = ev else {
            bail!("the watch of delete request {req} ended");
        };
        match ev.with_context(|| format!("watch delete request {req}"))? {
            Event::Delete(_) => return Ok(None),
            Event::Apply(r) | Event::InitApply(r) => {
                seen = true;
                let st = r.status.unwrap_or_default();
                if st.phase.as_deref() == Some("Processed") {
                    // Without errors the server removes it next; with, it stays.
                    return Ok(st.errors.filter(|e| !e.is_empty()));
                }
            }
            Event::Init => seen = false,
            // Gone before the watch began: deleted.
            Event::InitDone if !seen => return Ok(None),
            Event::InitDone => {}
        }
    }
}

/// Resolves when the user pressed Ctrl-C.
async fn stopped(ctx: &Ctx) {
    while !ctx.cancel.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Report how a backup or restore ended; its exit code.
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &Ctx,
    what: &str,
    name: &str,
    status: serde_json::Value,
    validation: Option<&Vec<String>>,
    failure: Option<&str>,
    r: &Results,
    progress: Option<(Option<i64>, Option<i64>)>,
) -> Result<u8> {
    let phase = status["phase"].as_str().unwrap_or_default().to_string();
    if ctx.json {
        print_json(&serde_json::json!({ "name": name, "status": status, "results": r }))?;
        return Ok(exit_for(&phase));
    }
    let title = if what == "backup" {
        "Backup"
    } else {
        "Restore"
    };
    match phase.as_str() {
        "Completed" => println!("{title} {name} completed."),
        "PartiallyFailed" => println!(
            "{title} {name} partially failed: {} errors, {} warnings.",
            r.errors.count(),
            r.warnings.count()
        ),
        "FailedValidation" => eprintln!(
            "error: {title} {name} failed validation: {}",
            validation.map(|v| v.join("; ")).unwrap_or_default()
        ),
        other => eprintln!(
            "error: {title} {name} ended {other}: {}",
            failure.unwrap_or("no reason given")
        ),
    }
    if !ctx.quiet {
        if let Some((done, total)) = progress {
            let verb = if what == "backup" {
                "backed up"
            } else {
                "restored"
            };
            println!(
                "Items {verb}: {} of {}.",
                done.unwrap_or(0),
                total.unwrap_or(0)
            );
        }
        println!("Run `arca {what} describe {name}` or `arca {what} logs {name}` for more.");
    }
    Ok(exit_for(&phase))
}

fn print_messages(title: &str, m: Option<&Messages>) {
    let Some(m) = m.filter(|m| m.count() > 0) else {
        println!("{title}:  <none>");
        return;
    };
    println!("{title}:");
    let block = |label: &str, v: &[String]| {
        if v.is_empty() {
            println!("  {label}:  <none>");
        } else {
            println!("  {label}:");
            for s in v {
                println!("    {s}");
            }
        }
    };
    block("Arca", &m.arca);
    block("Cluster", &m.cluster);
    if m.namespaces.is_empty() {
        println!("  Namespaces: <none>");
    } else {
        println!("  Namespaces:");
        for (ns, v) in &m.namespaces {
            println!("    {ns}:");
            for s in v {
                println!("      {s}");
            }
        }
    }
}

/// The first lines of every `describe`: name, namespace, labels, phase and why it failed.
pub(crate) fn describe_header<K: ResourceExt>(
    o: &K,
    phase: Option<&str>,
    validation_errors: Option<&Vec<String>>,
    failure_reason: Option<&str>,
) {
    println!("Name:         {}", o.name_any());
    println!("Namespace:    {}", o.namespace().unwrap_or_default());
    let labels: Vec<String> = o.labels().iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "Labels:       {}",
        if labels.is_empty() {
            "<none>".into()
        } else {
            labels.join(",")
        }
    );
    println!();
    println!("Phase:  {}", phase.unwrap_or("New"));
    if let Some(v) = validation_errors {
        println!("Validation errors:  {}", v.join("; "));
    }
    if let Some(f) = failure_reason {
        println!("Failure reason:  {f}");
    }
}

/// A backup spec, as `backup describe` and `schedule describe` print it.
pub(crate) fn describe_backup_spec(s: &BackupSpec) {
    println!();
    println!("Namespaces:");
    println!(
        "  Included:  {}",
        list_or_all(s.included_namespaces.as_ref())
    );
    println!(
        "  Excluded:  {}",
        list_or_none(s.excluded_namespaces.as_ref())
    );
    println!();
    println!("Resources:");
    let new_style = s.included_cluster_scoped_resources.is_some()
        || s.excluded_cluster_scoped_resources.is_some()
        || s.included_namespace_scoped_resources.is_some()
        || s.excluded_namespace_scoped_resources.is_some();
    if new_style {
        println!(
            "  Included cluster-scoped:    {}",
            list_or_none(s.included_cluster_scoped_resources.as_ref())
        );
        println!(
            "  Excluded cluster-scoped:    {}",
            list_or_none(s.excluded_cluster_scoped_resources.as_ref())
        );
        println!(
            "  Included namespace-scoped:  {}",
            list_or_all(s.included_namespace_scoped_resources.as_ref())
        );
        println!(
            "  Excluded namespace-scoped:  {}",
            list_or_none(s.excluded_namespace_scoped_resources.as_ref())
        );
    } else {
        println!(
            "  Included:        {}",
            list_or_all(s.included_resources.as_ref())
        );
        println!(
            "  Excluded:        {}",
            list_or_none(s.excluded_resources.as_ref())
        );
        println!(
            "  Cluster-scoped:  {}",
            match s.include_cluster_resources {
                Some(true) => "included",
                Some(false) => "excluded",
                None => "auto",
            }
        );
    }
    println!();
    println!(
        "Label selector:  {}",
        selector_text(s.label_selector.as_ref())
    );
    if let Some(or) = &s.or_label_selectors {
        println!(
            "Or label selector:  {}",
            or.iter()
                .map(|l| selector_text(Some(l)))
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    println!();
    println!(
        "Storage Location:  {}",
        s.storage_location.as_deref().unwrap_or("default")
    );
    println!("TTL:  {}", s.ttl.as_deref().unwrap_or("720h0m0s"));
    if let Some(o) = &s.ordered_resources {
        println!("Ordered resources:");
        for (k, v) in o {
            println!("  {k}: {v}");
        }
    }
    println!();
    describe_backup_hooks(s.hooks.as_ref());
}

/// A backup spec's hooks, as Velero's describer prints them.
fn describe_backup_hooks(h: Option<&arca_k8s::crd::BackupHooks>) {
    let Some(specs) = h
        .and_then(|h| h.resources.as_ref())
        .filter(|r| !r.is_empty())
    else {
        println!("Hooks:  <none>");
        return;
    };
    println!("Hooks:");
    for s in specs {
        println!("  {}:", s.name);
        let sel = &s.selector;
        println!(
            "    Namespaces:  included {}; excluded {}",
            list_or_all(sel.included_namespaces.as_ref()),
            list_or_none(sel.excluded_namespaces.as_ref())
        );
        println!(
            "    Resources:   included {}; excluded {}",
            list_or_all(sel.included_resources.as_ref()),
            list_or_none(sel.excluded_resources.as_ref())
        );
        println!(
            "    Label selector:  {}",
            selector_text(sel.label_selector.as_ref())
        );
        for (what, hooks) in [("Pre", &s.pre), ("Post", &s.post)] {
            for e in hooks.iter().flatten().filter_map(|h| h.exec.as_ref()) {
                println!(
                    "    {what} exec hook:  container {}, command {}, on error {}, timeout {}",
                    e.container.as_deref().unwrap_or("<first>"),
                    e.command.join(" "),
                    e.on_error.as_deref().unwrap_or("Continue"),
                    e.timeout.as_deref().unwrap_or("30s")
                );
            }
        }
    }
}

/// Hook runs: pod, container, command, how it ended, exit code, duration.
fn describe_hook_runs(runs: &[arca_k8s::hooks::HookRun]) {
    if runs.is_empty() {
        return;
    }
    println!("Hooks run:");
    for r in runs {
        let how = match (r.outcome, r.exit_code) {
            (arca_k8s::hooks::Outcome::Succeeded, _) => "succeeded".to_string(),
            (arca_k8s::hooks::Outcome::Skipped, _) => {
                format!("skipped: {}", r.error.as_deref().unwrap_or_default())
            }
            (_, Some(c)) => format!("failed: exit code {c}"),
            (_, None) => format!("failed: {}", r.error.as_deref().unwrap_or_default()),
        };
        println!(
            "  {} {}/{} container {} [{}] hook {} (onError {:?}): {how}, {:.1}s",
            r.phase,
            r.namespace,
            r.pod,
            r.container,
            r.command.join(" "),
            r.hook,
            r.on_error,
            r.duration_ms as f64 / 1000.0
        );
    }
    println!("(their output: arca backup logs / arca restore logs)");
    println!();
}

/// How long from `start` to `end`, or "-".
fn took(
    start: &Option<arca_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    end: &Option<arca_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> String {
    match (start, end) {
        (Some(a), Some(b)) => format!("{}s", b.0.as_second() - a.0.as_second()),
        _ => "-".into(),
    }
}

/// A restore's DataDownloads: phase, node, bytes, duration, snapshot.
fn describe_downloads(v: &[arca_k8s::crd::DataDownload]) {
    if v.is_empty() {
        return;
    }
    println!("Volume data (DataDownloads):");
    for d in v {
        let st = d.status.clone().unwrap_or_default();
        let t = &d.spec.target_volume;
        let took = took(&st.start_timestamp, &st.completion_timestamp);
        println!(
            "  {}/{}: {} on {}, {} bytes in {took}, DataDownload {}, snapshot {}{}",
            t.namespace,
            t.pvc,
            st.phase.as_deref().unwrap_or("New"),
            st.node.as_deref().unwrap_or("-"),
            st.progress.and_then(|p| p.bytes_done).unwrap_or(0),
            d.metadata.name.as_deref().unwrap_or_default(),
            &d.spec.snapshot_id[..d.spec.snapshot_id.len().min(16)],
            st.message.map(|x| format!(" ({x})")).unwrap_or_default(),
        );
    }
    println!();
}

/// A restore's PodVolumeRestores: pod, volume, phase, node, bytes, duration.
fn describe_pod_volume_restores(v: &[arca_k8s::crd::PodVolumeRestore]) {
    if v.is_empty() {
        return;
    }
    println!("Pod volumes (PodVolumeRestores):");
    for r in v {
        let st = r.status.clone().unwrap_or_default();
        let took = took(&st.start_timestamp, &st.completion_timestamp);
        println!(
            "  volume {} of pod {}/{}: {} on {}, {} bytes in {took}, PodVolumeRestore {}, snapshot {}{}",
            r.spec.volume,
            r.spec.pod.namespace,
            r.spec.pod.name,
            st.phase.as_deref().unwrap_or("New"),
            st.node.as_deref().unwrap_or("-"),
            st.progress.and_then(|p| p.bytes_done).unwrap_or(0),
            r.metadata.name.as_deref().unwrap_or_default(),
            &r.spec.snapshot_id[..r.spec.snapshot_id.len().min(16)],
            st.message.map(|x| format!(" ({x})")).unwrap_or_default(),
        );
    }
    println!();
}

/// The volumes whose data the backup moved (CSI snapshot data movement, then file-system
/// backup): phase, node, bytes, duration, snapshot.
fn describe_volumes(all: &[arca_k8s::datamover::MovedVolume]) {
    let (fs, moved): (Vec<_>, Vec<_>) = all.iter().partition(|m| m.by_pod_volume_backup());
    describe_volume_list("Volume data (CSI snapshot data movement):", &moved);
    describe_volume_list("Pod volumes (file-system backup):", &fs);
}

fn describe_volume_list(title: &str, v: &[&arca_k8s::datamover::MovedVolume]) {
    if v.is_empty() {
        return;
    }
    println!("{title}");
    for m in v {
        let took = match (&m.started, &m.completed) {
            (Some(a), Some(b)) => match (
                a.parse::<chrono::DateTime<chrono::Utc>>(),
                b.parse::<chrono::DateTime<chrono::Utc>>(),
            ) {
                (Ok(a), Ok(b)) => format!("{}s", (b - a).num_seconds()),
                _ => "-".into(),
            },
            _ => "-".into(),
        };
        let (what, by) = if m.by_pod_volume_backup() {
            (
                m.what(),
                format!(
                    "PodVolumeBackup {}",
                    m.pod_volume_backup.as_deref().unwrap_or_default()
                ),
            )
        } else {
            (
                format!("{}/{}", m.namespace, m.pvc),
                format!("DataUpload {}", m.data_upload),
            )
        };
        println!(
            "  {what}: {} on {}, {} bytes ({} new) in {took}, {by}, snapshot {}{}",
            m.phase,
            m.node.as_deref().unwrap_or("-"),
            m.bytes.unwrap_or(0),
            m.incremental_bytes.unwrap_or(0),
            m.snapshot_id
                .as_deref()
                .map_or("-", |s| &s[..s.len().min(16)]),
            m.message
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
        );
    }
    println!();
}

fn describe_backup(
    b: &Backup,
    results: Option<&Results>,
    items: Option<&[arca_k8s::record::ItemRef]>,
) {
    let st = b.status.clone().unwrap_or_default();
    describe_header(
        b,
        st.phase.as_deref(),
        st.validation_errors.as_ref(),
        st.failure_reason.as_deref(),
    );
    describe_backup_spec(&b.spec);
    println!();
    println!("Started:    {}", opt_time(st.start_timestamp.as_ref()));
    println!("Completed:  {}", opt_time(st.completion_timestamp.as_ref()));
    println!();
    println!("Expiration:  {}", opt_time(st.expiration.as_ref()));
    println!();
    if let Some(p) = &st.progress {
        println!(
            "Total items to be backed up:  {}",
            p.total_items.unwrap_or(0)
        );
        println!(
            "Items backed up:              {}",
            p.items_backed_up.unwrap_or(0)
        );
        println!();
    }
    if let Some(id) = &st.snapshot_id {
        println!("Repository snapshot:  {}", &id[..id.len().min(16)]);
        println!();
    }
    if let Some(h) = &st.hook_status {
        println!("HooksAttempted:  {}", h.hooks_attempted.unwrap_or(0));
        println!("HooksFailed:     {}", h.hooks_failed.unwrap_or(0));
        println!();
    }
    match results {
        Some(r) => {
            print_messages("Warnings", Some(&r.warnings));
            println!();
            print_messages("Errors", Some(&r.errors));
        }
        None => println!("Warnings and errors:  <not stored yet>"),
    }
    if let Some(items) = items {
        println!();
        println!("Resource List:");
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in items {
            let gv = if i.group.is_empty() {
                i.version.clone()
            } else {
                format!("{}/{}", i.group, i.version)
            };
            by.entry(format!("{gv}/{}", i.kind))
                .or_default()
                .push(i.display());
        }
        for (k, v) in by {
            println!("  {k}:");
            for n in v {
                println!("    - {n}");
            }
        }
    }
    println!();
}

/// `arca restore ...`.
pub async fn restore(ctx: &Ctx, kube: &KubeOpts, a: RestoreArgs) -> Result<u8> {
    let client = kube.installed().await?;
    let ns = kube.namespace.as_str();
    let cache = ctx.cache_root();
    match a.cmd {
        RestoreCmd::Create(c) => restore_create(ctx, &client, ns, *c).await,
        RestoreCmd::Get(g) => {
            let api: Api<Restore> = Api::namespaced(client.clone(), ns);
            let list = listed(&api, &g, "restore").await?;
            if Format::of(ctx, g.output).print(&list)? {
                return Ok(0);
            }
            println!(
                "{:<40} {:<32} {:<16} {:<20} {:<20} {:>6} {:>8} SELECTOR",
                "NAME", "BACKUP", "STATUS", "STARTED", "COMPLETED", "ERRORS", "WARNINGS"
            );
            for r in &list {
                let st = r.status.clone().unwrap_or_default();
                println!(
                    "{:<40} {:<32} {:<16} {:<20} {:<20} {:>6} {:>8} {}",
                    r.name_any(),
                    r.spec.backup_name.as_deref().unwrap_or(""),
                    st.phase.as_deref().unwrap_or("New"),
                    opt_time(st.start_timestamp.as_ref()),
                    opt_time(st.completion_timestamp.as_ref()),
                    st.errors.unwrap_or(0),
                    st.warnings.unwrap_or(0),
                    selector_text(r.spec.label_selector.as_ref()),
                );
            }
            Ok(0)
        }
        RestoreCmd::Describe(d) => {
            let api: Api<Restore> = Api::namespaced(client.clone(), ns);
            let names = names_or_all(&api, &d.names).await?;
            let mut views = Vec::new();
            for name in names {
                let r = api
                    .get_opt(&name)
                    .await?
                    .with_context(|| format!("no restore {name:?} in namespace {ns}"))?;
                let (results, items, hooks): (
                    Option<Results>,
                    Option<Vec<arca_k8s::record::RestoredItem>>,
                    Option<Vec<arca_k8s::hooks::HookRun>>,
                ) = match manage::restore_record(&client, ns, &name, cache.as_deref()).await {
                    Ok((repo, id)) => (
                        arca_k8s::restore::read_json(&repo, &id, "results.json")
                            .await
                            .ok(),
                        if d.details {
                            arca_k8s::restore::read_json(&repo, &id, "items.json")
                                .await
                                .ok()
                        } else {
                            None
                        },
                        if d.details {
                            manage::record_hooks(&repo, &id).await.ok()
                        } else {
                            None
                        },
                    ),
                    Err(e) => {
                        tracing::info!("restore {name}: no stored record: {e}");
                        (None, None, None)
                    }
                };
                // Its DataDownloads, as the cluster has them.
                let downloads: Vec<arca_k8s::crd::DataDownload> = if d.details {
                    let uid = r.metadata.uid.clone().unwrap_or_default();
                    arca_k8s::datamover::agent::list(
                        &client,
                        ns,
                        &format!("{}={uid}", arca_k8s::datamover::RESTORE_UID),
                    )
                    .await?
                } else {
                    Vec::new()
                };
                // Its PodVolumeRestores.
                let pod_volumes: Vec<arca_k8s::crd::PodVolumeRestore> = if d.details {
                    let uid = r.metadata.uid.clone().unwrap_or_default();
                    arca_k8s::datamover::agent::list(
                        &client,
                        ns,
                        &format!("{}={uid}", arca_k8s::datamover::RESTORE_UID),
                    )
                    .await?
                } else {
                    Vec::new()
                };
                if Format::of(ctx, d.output) == Format::Table {
                    describe_restore(&r, results.as_ref(), items.as_deref());
                    describe_downloads(&downloads);
                    describe_pod_volume_restores(&pod_volumes);
                    if let Some(h) = &hooks {
                        describe_hook_runs(h);
                    }
                } else {
                    views.push(serde_json::json!({
                        "restore": r, "results": results, "items": items, "downloads": downloads,
                        "podVolumeRestores": pod_volumes, "hooks": hooks,
                    }));
                }
            }
            Format::of(ctx, d.output).print(&views)?;
            Ok(0)
        }
        RestoreCmd::Delete(d) => {
            let api: Api<Restore> = Api::namespaced(client.clone(), ns);
            let Some(names) = to_delete(&api, &d, "restore").await? else {
                return Ok(0);
            };
            let mut failed = 0;
            for name in &names {
                match manage::delete_restore(&client, ns, name, cache.as_deref()).await {
                    Ok(_) => {
                        if !ctx.quiet {
                            println!("Restore {name} deleted.");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: restore {name}: {e}");
                        failed += 1;
                    }
                }
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        RestoreCmd::Logs(l) => {
            let (repo, id) = manage::restore_record(&client, ns, &l.name, cache.as_deref()).await?;
            print!("{}", manage::record_log(&repo, &id).await?);
            Ok(0)
        }
        RestoreCmd::Cancel(c) => {
            let api: Api<Restore> = Api::namespaced(client.clone(), ns);
            cancel(ctx, &api, "restore", &c, |r: &Restore| {
                r.status.as_ref().and_then(|s| s.phase.clone())
            })
            .await
        }
    }
}

async fn restore_create(ctx: &Ctx, client: &Client, ns: &str, c: RestoreCreate) -> Result<u8> {
    let f = &c.filters;
    let mapping = pairs(&c.namespace_mappings, ':', "--namespace-mappings")?;
    let (sel, or) = f.selectors()?;
    let status = (!c.status_include_resources.is_empty() || !c.status_exclude_resources.is_empty())
        .then(|| RestoreStatusSpec {
            included_resources: opt_list(&c.status_include_resources),
            excluded_resources: opt_list(&c.status_exclude_resources),
        });
    // Velero's CLI picks the schedule's newest Completed or PartiallyFailed backup itself
    // (pkg/cmd/cli/restore/create.go); the server considers Completed ones only.
    let mut backup_name = c.from_backup.clone();
    if let (true, Some(s)) = (c.allow_partially_failed, &c.from_schedule) {
        backup_name = Some(
            arca_k8s::restore::newest_backup_of_schedule(client, ns, s, true)
                .await?
                .with_context(|| {
                    format!("schedule {s} has no completed or partially failed backup")
                })?,
        );
    }
    let spec = RestoreSpec {
        backup_name,
        schedule_name: c.from_schedule.clone(),
        included_namespaces: opt_list(&f.include_namespaces),
        excluded_namespaces: opt_list(&f.exclude_namespaces),
        included_resources: opt_list(&f.include_resources),
        excluded_resources: opt_list(&f.exclude_resources),
        namespace_mapping: (!mapping.is_empty()).then_some(mapping),
        label_selector: sel,
        or_label_selectors: or,
        restore_p_vs: c.restore_volumes,
        restore_status: status,
        preserve_node_ports: c.preserve_nodeports,
        include_cluster_resources: f.include_cluster_resources,
        existing_resource_policy: c.existing_resource_policy.clone(),
        ..Default::default()
    };
    let stamp = chrono::Local::now().format("%Y%m%d%H%M%S").to_string();
    let base = c
        .from_backup
        .clone()
        .or(c.from_schedule.clone())
        .unwrap_or_default();
    let name = c.name.clone().unwrap_or_else(|| format!("{base}-{stamp}"));
    // A backup known only to object storage is fine: the restore finds it there.
    manage::create_restore(client, ns, &name, spec, f.labels()?).await?;
    submitted(ctx, client, ns, "restore", &name, c.wait).await?;
    if !c.wait {
        return Ok(0);
    }
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    let Some(r) = follow(ctx, &api, "restore", &name, |r: &Restore| {
        let s = r.status.clone().unwrap_or_default();
        let p = s.progress.unwrap_or_default();
        (s.phase, p.items_restored, p.total_items)
    })
    .await?
    else {
        return Ok(0);
    };
    let status = r.status.unwrap_or_default();
    let cache = ctx.cache_root();
    let results: Results = match manage::restore_record(client, ns, &name, cache.as_deref()).await {
        Ok((repo, id)) => arca_k8s::restore::read_json(&repo, &id, "results.json")
            .await
            .unwrap_or_default(),
        Err(_) => Results::default(),
    };
    let progress = status
        .progress
        .as_ref()
        .map(|p| (p.items_restored, p.total_items));
    finish(
        ctx,
        "restore",
        &name,
        serde_json::to_value(&status)?,
        status.validation_errors.as_ref(),
        status.failure_reason.as_deref(),
        &results,
        progress,
    )
}

fn describe_restore(
    r: &Restore,
    results: Option<&Results>,
    items: Option<&[arca_k8s::record::RestoredItem]>,
) {
    let st = r.status.clone().unwrap_or_default();
    let s = &r.spec;
    describe_header(
        r,
        st.phase.as_deref(),
        st.validation_errors.as_ref(),
        st.failure_reason.as_deref(),
    );
    if let Some(p) = &st.progress {
        println!(
            "Total items to be restored:  {}",
            p.total_items.unwrap_or(0)
        );
        println!(
            "Items restored:              {}",
            p.items_restored.unwrap_or(0)
        );
    }
    println!();
    println!("Started:    {}", opt_time(st.start_timestamp.as_ref()));
    println!("Completed:  {}", opt_time(st.completion_timestamp.as_ref()));
    println!();
    if let Some(h) = &st.hook_status {
        println!("HooksAttempted:  {}", h.hooks_attempted.unwrap_or(0));
        println!("HooksFailed:     {}", h.hooks_failed.unwrap_or(0));
        println!();
    }
    match results {
        Some(res) => {
            print_messages("Warnings", Some(&res.warnings));
            println!();
            print_messages("Errors", Some(&res.errors));
        }
        None => println!("Warnings and errors:  <not stored>"),
    }
    println!();
    match (&s.backup_name, &s.schedule_name) {
        (Some(b), _) => println!("Backup:  {b}"),
        (None, Some(sc)) => println!("Schedule:  {sc}"),
        _ => {}
    }
    println!();
    println!("Namespaces:");
    println!(
        "  Included:  {}",
        list_or_all(s.included_namespaces.as_ref())
    );
    println!(
        "  Excluded:  {}",
        list_or_none(s.excluded_namespaces.as_ref())
    );
    println!();
    println!("Resources:");
    println!(
        "  Included:        {}",
        list_or_all(s.included_resources.as_ref())
    );
    println!(
        "  Excluded:        {}",
        list_or_none(s.excluded_resources.as_ref())
    );
    println!(
        "  Cluster-scoped:  {}",
        match s.include_cluster_resources {
            Some(true) => "included",
            Some(false) => "excluded",
            None => "auto",
        }
    );
    println!();
    let mapping: Vec<String> = s
        .namespace_mapping
        .iter()
        .flatten()
        .map(|(a, b)| format!("{a}:{b}"))
        .collect();
    println!(
        "Namespace mappings:  {}",
        if mapping.is_empty() {
            "<none>".into()
        } else {
            mapping.join(", ")
        }
    );
    println!();
    println!(
        "Label selector:  {}",
        selector_text(s.label_selector.as_ref())
    );
    println!();
    println!(
        "Restore PVs:  {}",
        match s.restore_p_vs {
            Some(false) => "false",
            _ => "auto",
        }
    );
    println!(
        "Existing resource policy:  {}",
        s.existing_resource_policy.as_deref().unwrap_or("none")
    );
    println!(
        "Preserve service node ports:  {}",
        match s.preserve_node_ports {
            Some(true) => "true",
            Some(false) => "false",
            None => "auto",
        }
    );
    println!();
    if let Some(items) = items {
        println!();
        println!("Resource List:");
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in items {
            let gv = if i.item.group.is_empty() {
                i.item.version.clone()
            } else {
                format!("{}/{}", i.item.group, i.item.version)
            };
            let outcome = serde_json::to_value(i.outcome).expect("serializes");
            by.entry(format!("{gv}/{}", i.item.kind))
                .or_default()
                .push(format!(
                    "{} ({})",
                    i.item.display(),
                    outcome.as_str().unwrap_or("?")
                ));
        }
        for (k, v) in by {
            println!("  {k}:");
            for n in v {
                println!("    - {n}");
            }
        }
    }
}
