//! `arca schedule ...`: Velero's schedule verbs. The server's Schedule controller makes
//! the backups; these create, show, pause and delete the resources.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use arca_k8s::crd::{Schedule, ScheduleSpec};
use arca_k8s::kube::ResourceExt;
use arca_k8s::kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use clap::{Args, Subcommand};

use crate::Ctx;
use crate::cmd_k8s::{
    BackupTemplate, DeleteArgs, DescribeArgs, Format, GetArgs, KubeOpts, describe_backup_spec,
    describe_header, listed, names_or_all, opt_time, selector_text, to_delete,
};
use crate::output::print_json;

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Create a schedule: backups made by the server on a cron expression.
    ///
    /// The expression is cron's five fields (minute hour day-of-month month day-of-week;
    /// names, ranges, steps and lists), a descriptor (@hourly, @daily, @weekly, @monthly,
    /// @yearly) or `@every <duration>` (e.g. `@every 6h`), optionally after
    /// `CRON_TZ=<zone> ` (UTC otherwise). The first backup is made at once unless
    /// --skip-immediately; backups are named `<schedule>-<YYYYMMDDhhmmss>` (UTC).
    Create(Box<ScheduleCreate>),
    /// List schedules.
    Get(GetArgs),
    /// Show schedules: expression, template, last backup, next run.
    Describe(DescribeArgs),
    /// Delete schedules (their backups stay).
    Delete(DeleteArgs),
    /// Pause schedules: no backups until unpaused.
    Pause(PauseArgs),
    /// Unpause schedules; a run missed while paused is made at once, unless
    /// --skip-immediately.
    Unpause(PauseArgs),
}

#[derive(Args, Debug)]
pub struct ScheduleCreate {
    /// Name of the schedule.
    name: String,

    /// When to back up: a cron expression (see above).
    #[arg(long)]
    schedule: String,

    #[command(flatten)]
    template: BackupTemplate,

    /// Make the schedule the owner of its backups (deleting it deletes them).
    #[arg(long)]
    use_owner_references_in_backup: bool,

    /// Create it paused.
    #[arg(long)]
    paused: bool,

    /// Skip the run due at creation (and at unpausing): the first backup waits for the
    /// expression's first time.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    skip_immediately: Option<bool>,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// Names of the schedules.
    names: Vec<String>,

    /// All schedules in the namespace.
    #[arg(long, conflicts_with = "names")]
    all: bool,

    /// Schedules whose labels match this selector.
    #[arg(long, short = 'l', conflicts_with_all = ["names", "all"])]
    selector: Option<String>,

    /// With unpause: skip the run due at unpausing.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    skip_immediately: Option<bool>,
}

pub async fn schedule(ctx: &Ctx, kube: &KubeOpts, cmd: ScheduleCmd) -> Result<u8> {
    let client = kube.installed().await?;
    let ns = kube.namespace();
    let api: Api<Schedule> = Api::namespaced(client.clone(), ns);
    match cmd {
        ScheduleCmd::Create(c) => create(ctx, &api, ns, *c).await,
        ScheduleCmd::Get(g) => {
            let list = listed(&api, &g, "schedule").await?;
            if Format::of(ctx, g.output).print(&list)? {
                return Ok(0);
            }
            println!(
                "{:<24} {:<18} {:<20} {:<24} {:<10} {:<20} {:<10} PAUSED",
                "NAME", "STATUS", "CREATED", "SCHEDULE", "BACKUP TTL", "LAST BACKUP", "SELECTOR"
            );
            for s in &list {
                let st = s.status.clone().unwrap_or_default();
                println!(
                    "{:<24} {:<18} {:<20} {:<24} {:<10} {:<20} {:<10} {}",
                    s.name_any(),
                    st.phase.as_deref().unwrap_or("New"),
                    opt_time(s.metadata.creation_timestamp.as_ref()),
                    s.spec.schedule,
                    s.spec.template.ttl.as_deref().unwrap_or("720h0m0s"),
                    opt_time(st.last_backup.as_ref()),
                    selector_text(s.spec.template.label_selector.as_ref()),
                    s.spec.paused == Some(true),
                );
            }
            Ok(0)
        }
        ScheduleCmd::Describe(d) => {
            let names = names_or_all(&api, &d.names).await?;
            let mut list = Vec::new();
            for n in &names {
                list.push(
                    api.get_opt(n)
                        .await?
                        .with_context(|| format!("no schedule {n:?} in namespace {ns}"))?,
                );
            }
            if Format::of(ctx, d.output).print(&list)? {
                return Ok(0);
            }
            for (i, s) in list.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                describe(s);
            }
            Ok(0)
        }
        ScheduleCmd::Delete(d) => {
            let Some(names) = to_delete(&api, &d, "schedule").await? else {
                return Ok(0);
            };
            let mut failed = 0;
            for n in &names {
                match api.delete(n, &Default::default()).await {
                    Ok(_) => {
                        if !ctx.quiet && !ctx.json {
                            println!("Schedule {n} deleted (its backups stay).");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: schedule {n}: {e}");
                        failed += 1;
                    }
                }
            }
            Ok(u8::from(failed > 0))
        }
        ScheduleCmd::Pause(p) => pause(ctx, &api, ns, p, true).await,
        ScheduleCmd::Unpause(p) => pause(ctx, &api, ns, p, false).await,
    }
}

async fn create(ctx: &Ctx, api: &Api<Schedule>, ns: &str, c: ScheduleCreate) -> Result<u8> {
    // Said here rather than as FailedValidation later.
    arca_k8s::schedule::parse(&c.schedule).map_err(|e| anyhow::anyhow!("--schedule: {e}"))?;
    let (template, labels) = c.template.spec()?;
    let mut s = Schedule::new(
        &c.name,
        ScheduleSpec {
            template,
            schedule: c.schedule.clone(),
            use_owner_references_in_backup: c.use_owner_references_in_backup.then_some(true),
            paused: c.paused.then_some(true),
            skip_immediately: c.skip_immediately,
        },
    );
    s.metadata.namespace = Some(ns.to_string());
    if !labels.is_empty() {
        s.metadata.labels = Some(labels);
    }
    let made = match api.create(&PostParams::default(), &s).await {
        Ok(s) => s,
        Err(arca_k8s::kube::Error::Api(e)) if e.code == 409 => {
            bail!("a schedule named {} exists in namespace {ns}", c.name)
        }
        Err(e) => return Err(e).context(format!("create schedule {ns}/{}", c.name)),
    };
    if ctx.json {
        print_json(&made)?;
    } else if !ctx.quiet {
        println!(
            "Schedule \"{}\" created successfully.{}",
            c.name,
            if c.paused { " It is paused." } else { "" }
        );
    }
    Ok(0)
}

async fn pause(ctx: &Ctx, api: &Api<Schedule>, ns: &str, p: PauseArgs, paused: bool) -> Result<u8> {
    let names: Vec<String> = if let Some(sel) = &p.selector {
        api.list(&ListParams::default().labels(sel))
            .await?
            .items
            .iter()
            .map(|s| s.name_any())
            .collect()
    } else if p.all {
        names_or_all(api, &[]).await?
    } else if p.names.is_empty() {
        bail!("name the schedules, or use --all or --selector");
    } else {
        p.names.clone()
    };
    let mut spec = BTreeMap::from([("paused", serde_json::Value::Bool(paused))]);
    // Velero's unpause sets skipImmediately to the flag, or clears it (the server's
    // default then applies).
    if !paused {
        spec.insert(
            "skipImmediately",
            p.skip_immediately
                .map_or(serde_json::Value::Null, Into::into),
        );
    }
    let mut failed = 0;
    for n in &names {
        let r = api
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": spec })),
            )
            .await;
        match r {
            Ok(_) if !ctx.quiet => println!(
                "Schedule {n} {}.",
                if paused { "paused" } else { "unpaused" }
            ),
            Ok(_) => {}
            Err(arca_k8s::kube::Error::Api(e)) if e.code == 404 => {
                eprintln!("error: no schedule {n:?} in namespace {ns}");
                failed += 1;
            }
            Err(e) => {
                eprintln!("error: schedule {n}: {e}");
                failed += 1;
            }
        }
    }
    Ok(u8::from(failed > 0))
}

fn describe(s: &Schedule) {
    let st = s.status.clone().unwrap_or_default();
    describe_header(s, st.phase.as_deref(), st.validation_errors.as_ref(), None);
    println!();
    println!("Paused:  {}", s.spec.paused == Some(true));
    println!();
    println!("Schedule:  {}", s.spec.schedule);
    if let Ok(cron) = arca_k8s::schedule::parse(&s.spec.schedule) {
        let from = [st.last_backup.as_ref(), st.last_skipped.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(arca_k8s::crd::utc)
            .max();
        let next = match from {
            Some(f) => cron.next(f),
            None if s.spec.paused != Some(true) => Some(chrono::Utc::now()),
            None => None,
        };
        if let (Some(n), false) = (next, s.spec.paused == Some(true)) {
            println!("Next run:  {}", n.format("%Y-%m-%d %H:%M:%S UTC"));
        }
    }
    println!();
    println!(
        "Use owner references in backups:  {}",
        s.spec.use_owner_references_in_backup == Some(true)
    );
    println!();
    println!("Backup Template:");
    describe_backup_spec(&s.spec.template);
    println!();
    println!("Last Backup:   {}", opt_time(st.last_backup.as_ref()));
    println!("Last Skipped:  {}", opt_time(st.last_skipped.as_ref()));
}
