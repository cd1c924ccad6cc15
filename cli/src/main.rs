//! The `arca` binary: the CLI (and, later, the operator). It is the only place that builds
//! the tokio runtime, installs logging and uses `anyhow`.

// A binary: nothing is reachable from outside, so `pub` only marks what modules share.
#![allow(unreachable_pub)]

mod cmd_k8s;
mod cmd_location;
mod cmd_maint;
mod cmd_repo;
mod cmd_schedule;
mod cmd_server;
mod cmd_snapshot;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use arca_engine::{Repository, Store, StoreOptions, open_store};
use clap::{Parser, Subcommand};

/// Exit code of a run that finished but left items out (unreadable, damaged).
pub const EXIT_PARTIAL: u8 = 3;

/// Arca: deduplicated, compressed, encrypted backups of directory trees and Kubernetes
/// clusters.
///
/// A repository lives at a location: a directory (the default), or s3://bucket/prefix,
/// gs://bucket/prefix, az://container/prefix. Its password comes from ARCA_PASSWORD,
/// ARCA_PASSWORD_FILE, --password-file, or a prompt.
///
/// Exit codes: 0 success, 1 error, 3 partial (some items could not be read or restored;
/// they are listed).
#[derive(Parser, Debug)]
#[command(name = "arca", version, max_term_width = 100)]
struct Cli {
    /// Repository location: a path, file://, s3://, gs://, az:// or memory://.
    #[arg(long, short = 'r', env = "ARCA_REPOSITORY", global = true)]
    repo: Option<String>,

    /// Read the repository password from this file (first line).
    #[arg(long, env = "ARCA_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,

    /// Directory of the local index cache [default: $XDG_CACHE_HOME/arca or ~/.cache/arca].
    #[arg(long, env = "ARCA_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,

    /// Use a throw-away index cache (rebuilt from the repository, removed afterwards).
    #[arg(long, global = true)]
    no_cache: bool,

    /// S3 endpoint for S3-compatible servers (else AWS_ENDPOINT_URL, else AWS).
    #[arg(long, env = "ARCA_S3_ENDPOINT", global = true)]
    s3_endpoint: Option<String>,

    /// S3 region (else AWS_REGION, else us-east-1).
    #[arg(long, env = "ARCA_S3_REGION", global = true)]
    s3_region: Option<String>,

    /// Seconds to keep retrying an unreachable store before giving up.
    #[arg(long, env = "ARCA_RETRY_TIMEOUT", default_value_t = 60, global = true)]
    retry_timeout: u64,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Print nothing but errors (no progress bars).
    #[arg(long, short = 'q', global = true)]
    quiet: bool,

    /// More log output on stderr (-v info, -vv debug). ARCA_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(flatten)]
    kube: cmd_k8s::KubeOpts,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, inspect and manage repositories and their keys.
    #[command(subcommand)]
    Repo(cmd_repo::RepoCmd),
    /// Create, list, inspect, compare, restore and forget snapshots.
    #[command(subcommand)]
    Snapshot(cmd_snapshot::SnapshotCmd),
    /// Compact the index, collect garbage, repack.
    #[command(subcommand)]
    Maintenance(cmd_maint::MaintenanceCmd),
    /// Install Arca's resources (CRDs, namespace, default storage location) in a cluster.
    Install(cmd_k8s::InstallArgs),
    /// Back up Kubernetes resources (Velero's `backup` verbs and flags).
    Backup(cmd_k8s::BackupArgs),
    /// Restore Kubernetes resources from a backup (Velero's `restore` verbs and flags).
    Restore(cmd_k8s::RestoreArgs),
    /// Back up on a schedule: cron expressions the server runs (Velero's `schedule`).
    #[command(subcommand)]
    Schedule(cmd_schedule::ScheduleCmd),
    /// Manage backup storage locations (Velero's `backup-location`).
    #[command(subcommand)]
    BackupLocation(cmd_location::LocationCmd),
    /// Remove Arca from a cluster: its namespace, binding and CRDs (never the data in
    /// object storage).
    Uninstall(cmd_k8s::UninstallArgs),
    /// Run the operator: reconcile backups, restores, schedules, deletions and locations
    /// in the namespace (-n), leading
    /// through a Lease so that of several replicas only one works. What the installed
    /// Deployment runs.
    Server(cmd_server::ServerArgs),
    /// Run the node agent of one node (what the installed DaemonSet runs): it moves the
    /// data of DataUploads and DataDownloads whose volumes are exposed on this node, and
    /// of PodVolumeBackups and PodVolumeRestores of the pods on it.
    NodeAgent(cmd_server::NodeAgentArgs),
}

/// Everything a command needs from the global options.
pub struct Ctx {
    repo_location: Option<String>,
    password_file: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    store_opts: StoreOptions,
    /// JSON output.
    pub json: bool,
    /// No progress or chatter.
    pub quiet: bool,
    /// Set on Ctrl-C.
    pub cancel: Arc<AtomicBool>,
}

impl Ctx {
    /// The repository's store.
    pub fn store(&self) -> Result<Store> {
        let loc = self
            .repo_location
            .as_deref()
            .context("no repository given: use --repo or set ARCA_REPOSITORY")?;
        Ok(open_store(loc, &self.store_opts)?)
    }

    /// The password: ARCA_PASSWORD, the password file, or a prompt.
    pub fn password(&self, prompt: &str) -> Result<Vec<u8>> {
        if let Ok(p) = std::env::var("ARCA_PASSWORD") {
            return Ok(p.into_bytes());
        }
        if let Some(f) = &self.password_file {
            return read_password_file(f);
        }
        let p = rpassword::prompt_password(prompt)
            .context("no password: set ARCA_PASSWORD or ARCA_PASSWORD_FILE, use --password-file, or run on a terminal")?;
        Ok(p.into_bytes())
    }

    /// The password if one was given (ARCA_PASSWORD, a password file), without asking.
    pub fn password_given(&self) -> Result<Option<Vec<u8>>> {
        if let Ok(p) = std::env::var("ARCA_PASSWORD") {
            return Ok(Some(p.into_bytes()));
        }
        self.password_file
            .as_ref()
            .map(read_password_file)
            .transpose()
    }

    /// Open the repository.
    pub async fn open(&self) -> Result<Repository> {
        let store = self.store()?;
        let pw = self.password("repository password: ")?;
        let repo = Repository::open_with(store, &pw, self.cache_root().as_deref()).await?;
        repo.pause_points().arm_from_env();
        Ok(repo)
    }

    /// The index cache directory, or `None` for a temporary one.
    pub fn cache_root(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("arca"))
        })
    }

    /// Whether to draw progress bars: on a terminal, not quiet, not JSON.
    pub fn show_progress(&self) -> bool {
        use std::io::IsTerminal;
        !self.quiet && !self.json && std::io::stderr().is_terminal()
    }
}

/// A password file's first line.
pub fn read_password_file(f: &PathBuf) -> Result<Vec<u8>> {
    let s = std::fs::read_to_string(f)
        .with_context(|| format!("cannot read password file {}", f.display()))?;
    let line = s.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("password file {} is empty", f.display());
    }
    Ok(line.as_bytes().to_vec())
}

fn init_logging(verbose: u8, server: Option<cmd_server::LogFormat>) {
    let default = match verbose {
        // The operator says what it does; commands speak only when asked.
        0 if server.is_some() => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // The kube client logs each error it returns (and an insecure test cluster's
    // certificate bypass); ours say the same with context, so its own lines wait for -v.
    let kube = match verbose {
        0 => "off",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARCA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},kube_client={kube}"))
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if server == Some(cmd_server::LogFormat::Json) {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// jemalloc, for the long-running server and node agent: memory a move freed goes back to
/// the system within seconds (its background threads purge), where glibc's arenas kept it.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server_log = match &cli.command {
        Command::Server(a) => Some(a.log_format),
        Command::NodeAgent(a) => Some(a.log_format),
        _ => None,
    };
    init_logging(cli.verbose, server_log);
    let cancel = Arc::new(AtomicBool::new(false));
    let ctx = Ctx {
        repo_location: cli.repo,
        password_file: cli.password_file,
        cache_dir: cli.cache_dir,
        no_cache: cli.no_cache,
        store_opts: StoreOptions {
            s3_endpoint: cli.s3_endpoint,
            s3_region: cli.s3_region,
            retry_timeout: Some(std::time::Duration::from_secs(cli.retry_timeout)),
            s3_credentials: None,
        },
        json: cli.json,
        quiet: cli.quiet,
        cancel: cancel.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work here is file I/O and decrypting fetched ranges, bounded by the
        // engine's own limits; a few threads per core do it. Tokio's default (512) let
        // glibc give each of dozens of threads an arena of its own: a third more peak RSS.
        .max_blocking_threads(8)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // First Ctrl-C: stop cleanly (no snapshot is written, uploads so far are kept for
        // the next run). Second: exit at once.
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping (press Ctrl-C again to exit at once)");
                c.store(true, Ordering::SeqCst);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        match cli.command {
            Command::Repo(cmd_repo::RepoCmd::Get(g)) => {
                cmd_location::repositories(&ctx, &cli.kube, g).await
            }
            Command::Repo(c) => cmd_repo::run(&ctx, c).await,
            Command::Snapshot(c) => cmd_snapshot::run(&ctx, c).await,
            Command::Maintenance(c) => cmd_maint::maintenance(&ctx, c).await,
            Command::Install(a) => cmd_k8s::install(&ctx, &cli.kube, a).await,
            Command::Backup(a) => cmd_k8s::backup(&ctx, &cli.kube, a).await,
            Command::Restore(a) => cmd_k8s::restore(&ctx, &cli.kube, a).await,
            Command::Schedule(c) => cmd_schedule::schedule(&ctx, &cli.kube, c).await,
            Command::BackupLocation(c) => cmd_location::location(&ctx, &cli.kube, c).await,
            Command::Uninstall(a) => cmd_k8s::uninstall(&ctx, &cli.kube, a).await,
            Command::Server(a) => cmd_server::run(&ctx, &cli.kube, a).await,
            Command::NodeAgent(a) => cmd_server::node_agent(&ctx, &cli.kube, a).await,
        }
    });
    // Do not wait for background tasks (heartbeats) at exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
