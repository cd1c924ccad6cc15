//! `arca repo check`, `arca repo repair ...`, `arca maintenance run`.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Result, bail};
use arca_engine::{CheckProgress, Indexed, MaintenanceOptions, ReadData, parse_duration};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::{self, print_json};
use crate::{Ctx, progress};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Download and verify every pack (authenticate, decrypt, hash every blob).
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Verify part of the data: "N/M" (part N of M; run 1/M..M/M over M days to cover
    /// everything) or "P%" (a random P percent).
    #[arg(long, value_name = "N/M|P%")]
    read_data_subset: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairCmd {
    /// Rebuild the index from the packs' own trailers.
    Index,
    /// Rewrite snapshots that refer to lost data: damaged files become empty and marked,
    /// lost directories empty and marked; everything else stays restorable.
    Snapshots {
        /// First read every pack, to find damaged (not only missing) blobs.
        #[arg(long)]
        read_data: bool,
        /// Show what would be rewritten.
        #[arg(long)]
        dry_run: bool,
        /// Keep the damaged originals beside the rewrites.
        #[arg(long)]
        keep_original: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Compact the index (quick) or also collect garbage and repack (--full). Safe while
    /// backups run: packs are deleted only after a safety margin and after every backup
    /// that might use them has finished.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Also find unused data, repack little-used packs and delete what is no longer needed.
    #[arg(long)]
    full: bool,
    /// Show what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long an unused pack stays marked, after every reader could see the mark, before
    /// it is deleted; also the least age of an unindexed leftover pack (e.g. 24h, 2d). A
    /// backup that is still running may use a marked pack: below 24h needs
    /// --unsafe-short-margins.
    #[arg(long, default_value = "24h")]
    safety_margin: String,
    /// How long superseded index files stay after the index that replaced them appeared,
    /// so that a reader listing the index meanwhile still finds one of them. Below 4h needs
    /// --unsafe-short-margins.
    #[arg(long, default_value = "4h")]
    cleanup_margin: String,
    /// Allow margins below the safe minimums: only when nothing else can be writing to this
    /// repository (it risks the data of running backups otherwise).
    #[arg(long)]
    unsafe_short_margins: bool,
    /// Repack packs with less than this percentage of their bytes in use.
    #[arg(long, default_value_t = 50.0)]
    repack_below: f64,
    /// Take the maintenance lease from another maintainer that is certainly gone (its
    /// lease otherwise lapses by itself 30 minutes after its last renewal).
    #[arg(long)]
    break_lease: bool,
}

impl RunArgs {
    /// A full run with this margin (what `snapshot forget --prune` runs).
    pub fn full(safety_margin: String, unsafe_short_margins: bool) -> Self {
        Self {
            full: true,
            dry_run: false,
            safety_margin,
            cleanup_margin: "4h".into(),
            unsafe_short_margins,
            repack_below: 50.0,
            break_lease: false,
        }
    }
}

fn parse_subset(s: &str) -> Result<ReadData> {
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.trim().parse()?;
        if !(0.0..=100.0).contains(&p) {
            bail!("--read-data-subset {s}: a percentage from 0 to 100");
        }
        return Ok(ReadData::Percent(p));
    }
    if let Some((n, m)) = s.split_once('/') {
        let (n, m): (u32, u32) = (n.trim().parse()?, m.trim().parse()?);
        if m == 0 || n == 0 || n > m {
            bail!("--read-data-subset {s}: N/M with 1 <= N <= M");
        }
        return Ok(ReadData::Subset { n, m });
    }
    bail!("--read-data-subset {s:?}: use N/M or P%")
}

async fn indexed(ctx: &Ctx) -> Result<Indexed> {
    let repo = ctx.open().await?;
    let root = ctx.cache_root();
    Ok(repo.indexed(root.as_deref()).await?.0)
}

#[derive(Serialize)]
struct Damage {
    pack: String,
    reason: String,
    blobs: Vec<String>,
}

pub async fn check(ctx: &Ctx, a: CheckArgs) -> Result<u8> {
    let read = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => parse_subset(s)?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let idx = indexed(ctx).await?;
    let p = Arc::new(CheckProgress::default());
    let bar = progress::check(ctx.show_progress() && read != ReadData::None, p.clone());
    let r = idx.check(read, p).await;
    drop(bar);
    let r = r?;
    if ctx.json {
        print_json(&serde_json::json!({
            "ok": r.ok(),
            "snapshots": r.snapshots,
            "trees": r.trees,
            "data_blobs": r.data_blobs,
            "packs": r.packs,
            "packs_read": r.packs_read,
            "errors": r.errors,
            "damaged_packs": r.damaged_packs.iter().map(|d| Damage {
                pack: d.pack.to_hex(),
                reason: d.reason.clone(),
                blobs: d.blobs.iter().map(|b| b.to_hex()).collect(),
            }).collect::<Vec<_>>(),
            "missing": r.missing.iter().map(|m| serde_json::json!({
                "snapshot": m.snapshot.to_hex(), "path": m.path, "blob": m.blob.to_hex(), "reason": m.reason,
            })).collect::<Vec<_>>(),
            "affected": r.affected.iter().map(|(s, paths)| serde_json::json!({
                "snapshot": s.to_hex(), "paths": paths,
            })).collect::<Vec<_>>(),
            "unindexed_packs": r.unindexed_packs.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "checked {} snapshots, {} trees, {} data blobs, {} packs ({} read)",
            r.snapshots, r.trees, r.data_blobs, r.packs, r.packs_read
        );
        for e in &r.errors {
            println!("error: {e}");
        }
        for d in &r.damaged_packs {
            println!(
                "error: pack {}: {} ({} blobs lost)",
                d.pack,
                d.reason,
                d.blobs.len()
            );
            for b in d.blobs.iter().take(20) {
                println!("  blob {b}");
            }
            if d.blobs.len() > 20 {
                println!("  ... and {} more", d.blobs.len() - 20);
            }
        }
        for m in &r.missing {
            println!(
                "error: snapshot {} {:?}: blob {} {}",
                m.snapshot.short(),
                m.path,
                m.blob.short(),
                m.reason
            );
        }
        for (s, paths) in &r.affected {
            println!("snapshot {} cannot restore intact:", s.short());
            for p in paths.iter().take(50) {
                println!("  {}", if p.is_empty() { "/" } else { p });
            }
            if paths.len() > 50 {
                println!("  ... and {} more", paths.len() - 50);
            }
        }
        if !r.unindexed_packs.is_empty() {
            println!(
                "{} packs are not indexed (left by interrupted backups; `arca maintenance run --full` reclaims them)",
                r.unindexed_packs.len()
            );
        }
        if r.ok() {
            println!("no errors");
        } else {
            println!(
                "the repository is damaged: see above; `arca repo repair snapshots` keeps the rest restorable"
            );
        }
    }
    Ok(if r.ok() { 0 } else { 1 })
}

pub async fn repair(ctx: &Ctx, cmd: RepairCmd) -> Result<u8> {
    let idx = indexed(ctx).await?;
    match cmd {
        RepairCmd::Index => {
            let r = idx.repair_index().await?;
            if ctx.json {
                print_json(&serde_json::json!({
                    "packs": r.packs, "blobs": r.blobs, "index_files": r.index_files,
                    "unreadable": r.unreadable.iter().map(|(p, e)| serde_json::json!({"pack": p.to_hex(), "reason": e})).collect::<Vec<_>>(),
                }))?;
            } else {
                for (p, e) in &r.unreadable {
                    println!("warning: pack {p} left out: {e}");
                }
                println!(
                    "indexed {} blobs from {} packs into {} index files",
                    r.blobs, r.packs, r.index_files
                );
            }
            Ok(if r.unreadable.is_empty() {
                0
            } else {
                crate::EXIT_PARTIAL
            })
        }
        RepairCmd::Snapshots {
            read_data,
            dry_run,
            keep_original,
        } => {
            let mut bad = HashSet::new();
            if read_data {
                let r = idx
                    .check(ReadData::All, Arc::new(CheckProgress::default()))
                    .await?;
                bad.extend(r.damaged_packs.iter().flat_map(|d| d.blobs.iter().copied()));
            }
            let rs = idx.repair_snapshots(&bad, dry_run, keep_original).await?;
            if ctx.json {
                print_json(
                    &rs.iter()
                        .map(|r| {
                            serde_json::json!({
                                "original": r.original.to_hex(),
                                "new": r.new.map(|n| n.to_hex()),
                                "damaged": r.damaged,
                            })
                        })
                        .collect::<Vec<_>>(),
                )?;
            } else {
                for r in &rs {
                    match r.new {
                        Some(n) => println!(
                            "snapshot {} rewritten as {}:",
                            r.original.short(),
                            n.short()
                        ),
                        None => println!("snapshot {} would be rewritten:", r.original.short()),
                    }
                    for p in &r.damaged {
                        println!("  damaged: {}", if p.is_empty() { "/" } else { p });
                    }
                }
                if rs.is_empty() {
                    println!("no snapshot refers to lost data");
                }
            }
            Ok(0)
        }
    }
}

pub async fn maintenance(ctx: &Ctx, cmd: MaintenanceCmd) -> Result<u8> {
    let MaintenanceCmd::Run(a) = cmd;
    let idx = indexed(ctx).await?;
    let opts = MaintenanceOptions {
        full: a.full,
        dry_run: a.dry_run,
        safety_margin: std::time::Duration::from_secs(parse_duration(&a.safety_margin)? as u64),
        cleanup_margin: std::time::Duration::from_secs(parse_duration(&a.cleanup_margin)? as u64),
        unsafe_margins: a.unsafe_short_margins,
        // Unsafe margins are for a repository nobody else writes to: the clock-skew
        // allowance then shrinks with the margin (so that `--safety-margin 0` acts now).
        clock_skew: if a.unsafe_short_margins {
            arca_engine::CLOCK_SKEW.min(std::time::Duration::from_secs(parse_duration(
                &a.safety_margin,
            )? as u64))
        } else {
            arca_engine::CLOCK_SKEW
        },
        repack_below: (a.repack_below / 100.0).clamp(0.0, 1.0),
        break_lease: a.break_lease,
        ..Default::default()
    };
    let spinner = progress::maintenance(ctx.show_progress(), opts.progress.clone());
    let r = idx.maintain(&opts).await;
    drop(spinner);
    let r = r?;
    if ctx.json {
        print_json(&serde_json::json!({
            "dry_run": a.dry_run,
            "index_files_before": r.index_files.0,
            "index_files_after": r.index_files.1,
            "packs_marked": r.packs_marked,
            "packs_repacked": r.packs_repacked,
            "bytes_repacked": r.bytes_repacked,
            "packs_resurrected": r.packs_resurrected,
            "packs_deleted": r.packs_deleted,
            "leftovers_deleted": r.leftovers_deleted,
            "bytes_reclaimed": r.bytes_reclaimed,
            "packs_pending": r.packs_pending,
            "bytes_pending": r.bytes_pending,
            "index_files_deleted": r.index_files_deleted,
            "sessions_removed": r.sessions_removed,
            "sweep_blocked": r.sweep_blocked,
            "leftovers_blocked": r.leftovers_blocked,
        }))?;
    } else {
        let would = if a.dry_run { "would " } else { "" };
        println!("index files: {} -> {}", r.index_files.0, r.index_files.1);
        if a.full {
            println!(
                "{would}mark {} packs unused, {would}repack {} ({}), {would}delete {} packs and {} leftovers",
                r.packs_marked,
                r.packs_repacked,
                output::bytes(r.bytes_repacked),
                r.packs_deleted,
                r.leftovers_deleted
            );
            if r.packs_resurrected > 0 {
                println!(
                    "{} packs marked earlier are in use again and were kept",
                    r.packs_resurrected
                );
            }
            println!(
                "{}reclaimed {}",
                if a.dry_run { "would have " } else { "" },
                output::bytes(r.bytes_reclaimed)
            );
            if let Some(why) = &r.sweep_blocked {
                println!("nothing was deleted: {why}");
            }
            if let Some(why) = &r.leftovers_blocked {
                println!("no leftover was deleted: {why}");
            }
            if r.packs_pending > 0 {
                println!(
                    "{} packs ({}) wait for the safety margin ({}) before deletion",
                    r.packs_pending,
                    output::bytes(r.bytes_pending),
                    a.safety_margin
                );
            }
        }
    }
    Ok(0)
}
