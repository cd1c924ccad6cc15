//! `arca repo ...`

use anyhow::{Result, bail};
use arca_engine::{Identity, InitOptions, Repository};
use arca_format::{ChunkerParams, Compression, KdfParams};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::{self, print_json};
use crate::{Ctx, read_password_file};

#[derive(Subcommand, Debug)]
pub enum RepoCmd {
    /// Create a repository at an empty location.
    Init(InitArgs),
    /// List the BackupRepository resources of the cluster's namespace (-n): each
    /// location's records and each namespace's volume data, with their maintenance.
    Get(crate::cmd_k8s::GetArgs),
    /// Show the format version, sizes and counts.
    Status,
    /// Manage the passwords (key files) that open the repository.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Verify the repository: structure, and with --read-data the data itself. Names what
    /// is damaged (pack, blobs, snapshots and paths); exits 1 when anything is.
    Check(crate::cmd_maint::CheckArgs),
    /// Repair the index or snapshots.
    #[command(subcommand)]
    Repair(crate::cmd_maint::RepairCmd),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Compression of file data: "zstd" (level 3), "zstd:N" (N from -7 to 22), or "none".
    #[arg(long, default_value = "zstd:3")]
    compression: String,
    /// Chunk sizes in bytes as MIN,AVG,MAX [default: 524288,1048576,8388608].
    #[arg(long, value_name = "MIN,AVG,MAX")]
    chunk_sizes: Option<String>,
    /// Target size of data packs in MiB.
    #[arg(long, default_value_t = 16)]
    pack_size_mib: u32,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// List the key files.
    List,
    /// Add a password: the new one comes from ARCA_NEW_PASSWORD, --new-password-file or a
    /// prompt.
    Add(NewPassword),
    /// Remove a key file (not the last one, nor the one in use).
    Remove {
        /// Key ID or unique prefix.
        id: String,
    },
    /// Change the password in use (writes a new key file, removes the old one).
    Passwd(NewPassword),
}

#[derive(Args, Debug)]
pub struct NewPassword {
    /// Read the new password from this file.
    #[arg(long)]
    new_password_file: Option<std::path::PathBuf>,
}

fn new_password(ctx: &Ctx, a: &NewPassword) -> Result<Vec<u8>> {
    if let Ok(p) = std::env::var("ARCA_NEW_PASSWORD") {
        return Ok(p.into_bytes());
    }
    if let Some(f) = &a.new_password_file {
        return read_password_file(f);
    }
    let _ = ctx;
    let a = rpassword::prompt_password("new password: ")?;
    let b = rpassword::prompt_password("new password again: ")?;
    if a != b {
        bail!("the passwords differ");
    }
    if a.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(a.into_bytes())
}

fn parse_compression(s: &str) -> Result<Compression> {
    Ok(match s {
        "none" => Compression::None,
        "zstd" => Compression::Zstd(3),
        _ => match s.strip_prefix("zstd:").and_then(|l| l.parse::<i32>().ok()) {
            Some(l) if (-7..=22).contains(&l) => Compression::Zstd(l),
            _ => bail!("--compression {s:?}: use none, zstd or zstd:N with N from -7 to 22"),
        },
    })
}

#[derive(Serialize)]
struct StatusView {
    location: String,
    repository_id: String,
    format_version: u32,
    created: String,
    keys: usize,
    snapshots: usize,
    index_files: usize,
    data_packs: usize,
    data_bytes: u64,
    metadata_packs: usize,
    metadata_bytes: u64,
    total_bytes: u64,
    live_sessions: usize,
    chunker: [u32; 3],
    compression: String,
}

#[derive(Serialize)]
struct KeyView {
    id: String,
    current: bool,
    created: String,
    host: String,
    username: String,
}

pub async fn run(ctx: &Ctx, cmd: RepoCmd) -> Result<u8> {
    let who = Identity::current();
    match cmd {
        RepoCmd::Init(a) => {
            let store = ctx.store()?;
            let pw = if std::env::var_os("ARCA_PASSWORD").is_some() || ctx.password_file.is_some() {
                ctx.password("")?
            } else {
                let p = ctx.password("new repository password: ")?;
                if rpassword::prompt_password("again: ")?.into_bytes() != p {
                    bail!("the passwords differ");
                }
                p
            };
            if pw.is_empty() {
                bail!("an empty password is not allowed");
            }
            let chunker = match &a.chunk_sizes {
                None => None,
                Some(s) => {
                    let v: Vec<u32> = s
                        .split(',')
                        .map(|x| x.trim().parse())
                        .collect::<Result<_, _>>()?;
                    let [min_size, avg_size, max_size] = v[..] else {
                        bail!("--chunk-sizes wants MIN,AVG,MAX");
                    };
                    let p = ChunkerParams {
                        min_size,
                        avg_size,
                        max_size,
                        normalization: 1,
                    };
                    if let Err(e) = p.validate() {
                        bail!("--chunk-sizes: {e}");
                    }
                    Some(p)
                }
            };
            let opts = InitOptions {
                kdf: KdfParams::default(),
                chunker,
                compression: Some(parse_compression(&a.compression)?),
                data_pack_size: Some(a.pack_size_mib.clamp(1, 1024) << 20),
            };
            let repo = Repository::init(store, &pw, opts, &who).await?;
            if ctx.json {
                print_json(&serde_json::json!({
                    "location": repo.store().location(),
                    "repository_id": repo.config().repo_id.to_hex(),
                    "key_id": repo.key_id().to_hex(),
                }))?;
            } else if !ctx.quiet {
                println!(
                    "created repository {} at {}",
                    repo.config().repo_id.short(),
                    repo.store().location()
                );
                println!("keep the password safe: without it the data cannot be read");
            }
            Ok(0)
        }
        // Dispatched with the cluster's options in main.
        RepoCmd::Get(_) => anyhow::bail!("arca repo get lists the cluster's BackupRepositories"),
        RepoCmd::Status => {
            let repo = ctx.open().await?;
            let s = repo.status().await?;
            let c = repo.config();
            let v = StatusView {
                location: s.location,
                repository_id: s.repo_id,
                format_version: s.format_version,
                created: output::rfc3339(s.created),
                keys: s.keys,
                snapshots: s.snapshots,
                index_files: s.index_files,
                data_packs: s.data_packs.0,
                data_bytes: s.data_packs.1,
                metadata_packs: s.meta_packs.0,
                metadata_bytes: s.meta_packs.1,
                total_bytes: s.total_bytes,
                live_sessions: s.sessions,
                chunker: [c.chunker.min_size, c.chunker.avg_size, c.chunker.max_size],
                compression: match c.compression {
                    Compression::None => "none".into(),
                    Compression::Zstd(l) => format!("zstd:{l}"),
                },
            };
            if ctx.json {
                print_json(&v)?;
            } else {
                println!("location        {}", v.location);
                println!("repository      {}", v.repository_id);
                println!("format version  {}", v.format_version);
                println!("created         {}", output::time(s.created));
                println!("snapshots       {}", v.snapshots);
                println!("keys            {}", v.keys);
                println!("index files     {}", v.index_files);
                println!(
                    "data packs      {} ({})",
                    v.data_packs,
                    output::bytes(v.data_bytes)
                );
                println!(
                    "metadata packs  {} ({})",
                    v.metadata_packs,
                    output::bytes(v.metadata_bytes)
                );
                println!("total size      {}", output::bytes(v.total_bytes));
                println!("live writers    {}", v.live_sessions);
                println!(
                    "chunker         {}/{}/{} (min/avg/max)",
                    output::bytes(v.chunker[0] as u64),
                    output::bytes(v.chunker[1] as u64),
                    output::bytes(v.chunker[2] as u64)
                );
                println!("compression     {}", v.compression);
            }
            Ok(0)
        }
        RepoCmd::Check(a) => crate::cmd_maint::check(ctx, a).await,
        RepoCmd::Repair(r) => crate::cmd_maint::repair(ctx, r).await,
        RepoCmd::Key(k) => {
            let mut repo = ctx.open().await?;
            match k {
                KeyCmd::List => {
                    let keys = repo.list_keys().await?;
                    if ctx.json {
                        let v: Vec<KeyView> = keys
                            .iter()
                            .map(|k| KeyView {
                                id: k.id.to_hex(),
                                current: k.current,
                                created: output::rfc3339(k.meta.created),
                                host: k.meta.host.clone(),
                                username: k.meta.username.clone(),
                            })
                            .collect();
                        print_json(&v)?;
                    } else {
                        println!("  {:<10} {:<20} {:<16} USER", "ID", "CREATED", "HOST");
                        for k in keys {
                            println!(
                                "{} {:<10} {:<20} {:<16} {}",
                                if k.current { "*" } else { " " },
                                k.id.short(),
                                output::time(k.meta.created),
                                k.meta.host,
                                k.meta.username
                            );
                        }
                    }
                }
                KeyCmd::Add(a) => {
                    let pw = new_password(ctx, &a)?;
                    let id = repo.add_key(&pw, KdfParams::default(), &who).await?;
                    report(ctx, "added key", &id.to_hex())?;
                }
                KeyCmd::Remove { id } => {
                    let k = repo.find_key(&id).await?;
                    repo.remove_key(k.id).await?;
                    report(ctx, "removed key", &k.id.to_hex())?;
                }
                KeyCmd::Passwd(a) => {
                    let pw = new_password(ctx, &a)?;
                    let id = repo
                        .change_password(&pw, KdfParams::default(), &who)
                        .await?;
                    report(ctx, "password changed; new key", &id.to_hex())?;
                }
            }
            Ok(0)
        }
    }
}

fn report(ctx: &Ctx, what: &str, id: &str) -> Result<()> {
    if ctx.json {
        print_json(&serde_json::json!({ "key_id": id }))
    } else {
        if !ctx.quiet {
            println!("{what} {}", &id[..8]);
        }
        Ok(())
    }
}
