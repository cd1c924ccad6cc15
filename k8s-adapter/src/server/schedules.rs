//! The Schedule controller: the rule is [`crate::schedule::plan`]; this reads what it
//! needs and does what it says. Backups are created before `lastBackup` is written, so a
//! kill in between makes no gap; the plan counts the backup already made.

use std::sync::Arc;

use chrono::Utc;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::Ctx;
use crate::crd::{Backup, Schedule};
use crate::record::{SCHEDULE_NAME_LABEL, SYNCED_ANNOTATION, label_value};
use crate::schedule::{Backups, plan};
use crate::{Error, Result};

pub(super) async fn run(ctx: Arc<Ctx>) {
    let ns = &ctx.opts.namespace;
    let api: Api<Schedule> = Api::namespaced(ctx.client.clone(), ns);
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), ns);
    // A schedule's backup that ends may free a run that was held back. Only a change of
    // phase wakes the schedule, not each progress write of a running backup (a read and a
    // list each): the phases of the backups still running are remembered, and a backup
    // not among them (new, or ended) wakes it. A running backup deleted outright (the
    // deletion refuses those; its watch event carries the phase it had) is seen by the
    // plan's short requeue while a run is held back (`schedule::HELD_WAIT`), whose
    // reconcile also forgets it here.
    let seen = ctx.clone();
    let c = Controller::new(api, watcher::Config::default()).watches(
        backups,
        watcher::Config::default(),
        move |b: Backup| {
            let schedule = b.labels().get(SCHEDULE_NAME_LABEL)?.clone();
            let phase = b.status.as_ref().and_then(|s| s.phase.clone());
            let phase = phase.unwrap_or_default();
            let mut m = seen.schedule_backups.lock().expect("lock");
            let key = b.name_any();
            if m.get(&key).is_some_and(|(_, p)| *p == phase) {
                return None;
            }
            if matches!(phase.as_str(), "" | "New" | "Queued" | "InProgress") {
                m.insert(key, (schedule.clone(), phase));
            } else {
                m.remove(&key);
            }
            Some(ObjectRef::new(&schedule).within(&b.namespace()?))
        },
    );
    super::drive(c, "schedule", reconcile, ctx).await;
}

/// What the schedule's backups say: one still to end, and the newest made by a run
/// (synced copies of another cluster's backups are not runs of this schedule).
pub(crate) fn backups_of(list: &[Backup]) -> Backups {
    let mut out = Backups::default();
    for b in list
        .iter()
        .filter(|b| !b.annotations().contains_key(SYNCED_ANNOTATION))
    {
        let phase = b
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        out.running |= matches!(phase, "" | "New" | "Queued" | "InProgress");
        let created = b
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(crate::crd::utc);
        out.newest = out.newest.max(created);
    }
    out
}

async fn reconcile(cached: Arc<Schedule>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = &ctx.opts.namespace;
    let name = cached.name_any();
    // A replica that stalled past its Lease makes no backup: the leader does.
    if !ctx.leads() {
        return Ok(Action::await_change());
    }
    let api: Api<Schedule> = Api::namespaced(ctx.client.clone(), ns);
    // A fresh read: the cache may not have our last lastBackup yet.
    let Some(s) = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("read schedule {ns}/{name}"), e))?
    else {
        return Ok(Action::await_change());
    };
    let bapi: Api<Backup> = Api::namespaced(ctx.client.clone(), ns);
    let list = bapi
        .list(
            &ListParams::default().labels(&format!("{SCHEDULE_NAME_LABEL}={}", label_value(&name))),
        )
        .await
        .map_err(|e| Error::kube(format!("list backups of schedule {ns}/{name}"), e))?;
    // Backups of this schedule remembered as running but gone (deleted while running,
    // their deletion event carrying that phase) are forgotten.
    {
        let exists: std::collections::HashSet<String> =
            list.items.iter().map(|b| b.name_any()).collect();
        let mine = label_value(&name);
        let mut m = ctx.schedule_backups.lock().expect("lock");
        m.retain(|k, (s, _)| *s != mine || exists.contains(k));
    }
    let now = Utc::now();
    let p = plan(
        &s,
        now,
        &backups_of(&list.items),
        ctx.opts.schedule_skip_immediately,
    );
    let ts = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let st = s.status.clone().unwrap_or_default();
    let mut status = serde_json::Map::new();
    if let Some(phase) = p.phase {
        let errs = (!p.validation_errors.is_empty()).then(|| p.validation_errors.clone());
        if st.phase.as_deref() != Some(phase) || st.validation_errors != errs {
            status.insert("phase".into(), phase.into());
            status.insert("validationErrors".into(), serde_json::json!(errs));
            if phase == "FailedValidation" {
                tracing::warn!("schedule {ns}/{name}: {}", p.validation_errors.join("; "));
                ctx.event(&s, true, "FailedValidation", p.validation_errors.join("; "))
                    .await;
            }
        }
    }
    if let Some(t) = p.skipped {
        status.insert("lastSkipped".into(), ts(t).into());
        tracing::info!("schedule {ns}/{name}: the run due now is skipped (skipImmediately)");
    }
    if let Some(backup) = &p.backup {
        let b = crate::manage::backup_from_schedule(&s, backup);
        match crate::manage::create_backup_object(&ctx.client, ns, b).await {
            Ok(_) => {}
            // Made already (a retry within the same second).
            Err(Error::Kube { error, .. }) if matches!(error.as_ref(), kube::Error::Api(e) if e.code == 409) =>
                {}
            Err(e) => return Err(e),
        }
        tracing::info!("schedule {ns}/{name}: created backup {backup}");
        ctx.event(
            &s,
            false,
            "BackupCreated",
            format!("created backup {backup}"),
        )
        .await;
        status.insert("lastBackup".into(), ts(now).into());
    }
    if !status.is_empty() {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": status })),
        )
        .await
        .map_err(|e| Error::kube(format!("update the status of schedule {ns}/{name}"), e))?;
    }
    // The skip is recorded before the flag is cleared: a kill in between skips again
    // (harmless), never backs up at once against the flag.
    if p.skipped.is_some() && s.spec.skip_immediately != Some(false) {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": { "skipImmediately": false } })),
        )
        .await
        .map_err(|e| Error::kube(format!("clear skipImmediately of schedule {ns}/{name}"), e))?;
    }
    Ok(match p.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}
