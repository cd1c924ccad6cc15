//! `arca backup-location ...`: Velero's verbs for BackupStorageLocations. The server
//! validates them (phase Available/Unavailable) and syncs their backups.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use arca_k8s::crd::{
    BackupStorageLocation, BackupStorageLocationSpec, ObjectStorageLocation, SecretKeySelector,
};
use arca_k8s::kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use arca_k8s::kube::{Client, ResourceExt};
use arca_k8s::record::{STORAGE_LOCATION_LABEL, label_value};
use clap::{Args, Subcommand};

use crate::Ctx;
use crate::cmd_k8s::{DeleteArgs, Format, GetArgs, KubeOpts, listed, opt_time, to_delete};
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum LocationCmd {
    /// Create a backup storage location: a bucket (and prefix) backups are stored in.
    Create(Box<LocationCreate>),
    /// List locations: provider, bucket, phase, last validation, access mode, default.
    Get(LocationGet),
    /// Change a location: make it the default, its credential, its access mode.
    Set(LocationSet),
    /// Delete locations, and the Backup resources stored in them (never the data in the
    /// bucket: a location created again brings them back).
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct LocationCreate {
    /// Name of the location.
    name: String,

    /// aws (S3 and S3-compatible), gcp, azure, or local (a directory the server reaches).
    #[arg(long)]
    provider: String,

    /// Bucket (for local: the directory).
    #[arg(long)]
    bucket: String,

    /// Prefix within the bucket.
    #[arg(long)]
    prefix: Option<String>,

    /// Provider settings, key=value pairs: region, s3Url, s3ForcePathStyle.
    #[arg(long, value_delimiter = ',')]
    config: Vec<String>,

    /// The credential: a key of a secret in the namespace, `SECRET=KEY`.
    #[arg(long)]
    credential: Option<String>,

    /// Make it the default location (the one before stops being it).
    #[arg(long)]
    default: bool,

    /// ReadWrite, or ReadOnly (restores only: no backup goes in, none is deleted).
    #[arg(long, default_value = "ReadWrite", value_parser = ["ReadWrite", "ReadOnly"])]
    access_mode: String,

    /// How often the server validates it [default: the server's, 1m]; 0: once.
    #[arg(long)]
    validation_frequency: Option<String>,

    /// Labels, key=value pairs.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LocationGet {
    #[command(flatten)]
    get: GetArgs,

    /// Only the default location.
    #[arg(long)]
    default: bool,
}

#[derive(Args, Debug)]
pub struct LocationSet {
    /// Name of the location.
    name: String,

    /// Make it the default (true) or not (false).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    default: Option<bool>,

    /// The credential: `SECRET=KEY`.
    #[arg(long)]
    credential: Option<String>,

    /// ReadWrite or ReadOnly.
    #[arg(long, value_parser = ["ReadWrite", "ReadOnly"])]
    access_mode: Option<String>,
}

fn credential(s: &str) -> Result<SecretKeySelector> {
    match s.split_once('=') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(SecretKeySelector {
            name: name.into(),
            key: key.into(),
        }),
        _ => bail!("--credential {s:?}: give the secret and its key as SECRET=KEY"),
    }
}

fn pairs(v: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    v.iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => bail!("{flag}: {s:?} is not of the form key=value"),
        })
        .collect()
}

/// Unset `default` on every location but `keep` (Velero's `--default` moves the mark).
async fn only_default(api: &Api<BackupStorageLocation>, keep: &str) -> Result<()> {
    for b in api.list(&ListParams::default()).await?.items {
        if b.spec.default == Some(true) && b.name_any() != keep {
            api.patch(
                &b.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": { "default": false } })),
            )
            .await
            .with_context(|| format!("unset the default of location {}", b.name_any()))?;
        }
    }
    Ok(())
}

pub async fn location(ctx: &Ctx, kube: &KubeOpts, cmd: LocationCmd) -> Result<u8> {
    let client = kube.installed().await?;
    let ns = kube.namespace();
    let api: Api<BackupStorageLocation> = Api::namespaced(client.clone(), ns);
    match cmd {
        LocationCmd::Create(c) => {
            if let Some(f) = &c.validation_frequency {
                arca_k8s::backup::parse_go_duration(f)
                    .with_context(|| format!("--validation-frequency {f:?}"))?;
            }
            let config = pairs(&c.config, "--config")?;
            let labels = pairs(&c.labels, "--labels")?;
            let mut b = BackupStorageLocation::new(
                &c.name,
                BackupStorageLocationSpec {
                    provider: c.provider.clone(),
                    object_storage: ObjectStorageLocation {
                        bucket: c.bucket.clone(),
                        prefix: c.prefix.clone(),
                        ca_cert: None,
                    },
                    config: (!config.is_empty()).then_some(config),
                    credential: c.credential.as_deref().map(credential).transpose()?,
                    default: c.default.then_some(true),
                    access_mode: Some(c.access_mode.clone()),
                    validation_frequency: c.validation_frequency.clone(),
                    ..Default::default()
                },
            );
            b.metadata.namespace = Some(ns.to_string());
            b.metadata.labels = (!labels.is_empty()).then_some(labels);
            // Said now rather than as Unavailable later.
            arca_k8s::location::Location::from_bsl(&client, ns, &b)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let made = match api.create(&PostParams::default(), &b).await {
                Ok(b) => b,
                Err(arca_k8s::kube::Error::Api(e)) if e.code == 409 => {
                    bail!(
                        "a backup storage location named {} exists in namespace {ns}",
                        c.name
                    )
                }
                Err(e) => return Err(e).context(format!("create location {ns}/{}", c.name)),
            };
            if c.default {
                only_default(&api, &c.name).await?;
            }
            if ctx.json {
                print_json(&made)?;
            } else if !ctx.quiet {
                println!(
                    "Backup storage location \"{}\" configured successfully.",
                    c.name
                );
            }
            Ok(0)
        }
        LocationCmd::Get(g) => {
            let mut list = listed(&api, &g.get, "backup storage location").await?;
            if g.default {
                list.retain(|b| b.spec.default == Some(true));
            }
            if Format::of(ctx, g.get.output).print(&list)? {
                return Ok(0);
            }
            println!(
                "{:<20} {:<10} {:<40} {:<12} {:<20} {:<11} DEFAULT",
                "NAME", "PROVIDER", "BUCKET/PREFIX", "PHASE", "LAST VALIDATED", "ACCESS MODE"
            );
            for b in &list {
                let st = b.status.clone().unwrap_or_default();
                let os = &b.spec.object_storage;
                let where_ = match os.prefix.as_deref() {
                    Some(p) if !p.is_empty() => format!("{}/{p}", os.bucket),
                    _ => os.bucket.clone(),
                };
                println!(
                    "{:<20} {:<10} {:<40} {:<12} {:<20} {:<11} {}",
                    b.name_any(),
                    b.spec.provider,
                    where_,
                    st.phase.as_deref().unwrap_or("Unknown"),
                    opt_time(st.last_validation_time.as_ref()),
                    b.spec.access_mode.as_deref().unwrap_or("ReadWrite"),
                    b.spec.default == Some(true),
                );
            }
            Ok(0)
        }
        LocationCmd::Set(s) => {
            api.get_opt(&s.name).await?.with_context(|| {
                format!("no backup storage location {:?} in namespace {ns}", s.name)
            })?;
            let mut spec = serde_json::Map::new();
            if let Some(d) = s.default {
                spec.insert("default".into(), d.into());
            }
            if let Some(c) = &s.credential {
                spec.insert("credential".into(), serde_json::to_value(credential(c)?)?);
            }
            if let Some(m) = &s.access_mode {
                spec.insert("accessMode".into(), m.clone().into());
            }
            if spec.is_empty() {
                bail!("nothing to set: give --default, --credential or --access-mode");
            }
            // The old default loses the mark first: with two at once, the server keeps
            // the newer (as Velero's set does, in this order).
            if s.default == Some(true) {
                only_default(&api, &s.name).await?;
            }
            api.patch(
                &s.name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await
            .with_context(|| format!("update location {ns}/{}", s.name))?;
            if !ctx.quiet && !ctx.json {
                println!(
                    "Backup storage location \"{}\" configured successfully.",
                    s.name
                );
            }
            Ok(0)
        }
        LocationCmd::Delete(d) => {
            let Some(names) = to_delete(&api, &d, "backup storage location").await? else {
                return Ok(0);
            };
            let mut failed = 0;
            for n in &names {
                match delete(&client, &api, ns, n).await {
                    Ok(backups) => {
                        if !ctx.quiet && !ctx.json {
                            println!(
                                "Backup storage location \"{n}\" deleted, with {backups} Backup resource(s) stored in it (the data in the bucket stays)."
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("error: backup storage location {n}: {e:#}");
                        failed += 1;
                    }
                }
            }
            Ok(u8::from(failed > 0))
        }
    }
}

/// Velero's `backup-location delete`: the location, then the Backup resources labelled
/// with it (a sync of that location would otherwise find none of them stored anywhere
/// it reads and leave them dangling).
async fn delete(
    client: &Client,
    api: &Api<BackupStorageLocation>,
    ns: &str,
    name: &str,
) -> Result<usize> {
    api.delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("delete location {ns}/{name}"))?;
    // Its repositories' resources go too (as Velero's); their data stays.
    let repos: Api<arca_k8s::crd::BackupRepository> = Api::namespaced(client.clone(), ns);
    for r in repos.list(&ListParams::default()).await?.items {
        if r.spec.backup_storage_location == name {
            match repos.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(arca_k8s::kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(e).context(format!("delete repository {ns}/{}", r.name_any()));
                }
            }
        }
    }
    let backups: Api<arca_k8s::crd::Backup> = Api::namespaced(client.clone(), ns);
    let sel = format!("{STORAGE_LOCATION_LABEL}={}", label_value(name));
    let list = backups.list(&ListParams::default().labels(&sel)).await?;
    for b in &list.items {
        match backups
            .delete(&b.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(arca_k8s::kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).context(format!("delete backup {ns}/{}", b.name_any())),
        }
    }
    Ok(list.items.len())
}

/// `arca repo get`: the BackupRepository resources.
pub async fn repositories(ctx: &Ctx, kube: &KubeOpts, g: GetArgs) -> Result<u8> {
    let client = kube.installed().await?;
    let api: Api<arca_k8s::crd::BackupRepository> = Api::namespaced(client, kube.namespace());
    let list = listed(&api, &g, "backup repository").await?;
    if Format::of(ctx, g.output).print(&list)? {
        return Ok(0);
    }
    println!(
        "{:<32} {:<10} {:<20} {:<16} {:<10} {:<20} MESSAGE",
        "NAME", "TYPE", "NAMESPACE", "LOCATION", "PHASE", "LAST MAINTENANCE"
    );
    for r in &list {
        let st = r.status.clone().unwrap_or_default();
        println!(
            "{:<32} {:<10} {:<20} {:<16} {:<10} {:<20} {}",
            r.name_any(),
            r.spec.repository_type.as_deref().unwrap_or("arca"),
            r.spec.volume_namespace,
            r.spec.backup_storage_location,
            st.phase.as_deref().unwrap_or("New"),
            opt_time(st.last_maintenance_time.as_ref()),
            st.message.as_deref().unwrap_or(""),
        );
    }
    Ok(0)
}
