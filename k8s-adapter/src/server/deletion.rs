//! The deletion controller (Velero's backup_deletion_controller.go): it processes
//! DeleteBackupRequests with [`crate::manage::process_deletion`], and removes processed
//! ones after a day. A request left InProgress by a server that was killed is processed
//! again: deletion looks only for what is still there.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::Ctx;
use crate::crd::{Backup, DeleteBackupRequest};
use crate::{Error, Result};

/// How long a processed request stays for `kubectl get` to show (Velero's 24 h).
pub const PROCESSED_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What the controller does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// New, or InProgress with nobody working on it: process it.
    Process,
    /// Processed a day ago: remove it.
    Expire,
    /// Processed: look again when it expires.
    Keep(Duration),
}

/// The rule, on a fresh read.
pub fn step(r: &DeleteBackupRequest, now: DateTime<Utc>) -> Step {
    let phase = r
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    if phase != "Processed" {
        return Step::Process;
    }
    let created = r
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(crate::crd::utc)
        .unwrap_or(now);
    let age = (now - created).to_std().unwrap_or_default();
    match PROCESSED_MAX_AGE.checked_sub(age) {
        Some(left) if !left.is_zero() => Step::Keep(left),
        _ => Step::Expire,
    }
}

pub(super) async fn run(ctx: Arc<Ctx>) {
    let api: Api<DeleteBackupRequest> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    super::drive(
        Controller::new(api, watcher::Config::default()),
        "deletion",
        reconcile,
        ctx,
    )
    .await;
}

async fn reconcile(cached: Arc<DeleteBackupRequest>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = &ctx.opts.namespace;
    let name = cached.name_any();
    let api: Api<DeleteBackupRequest> = Api::namespaced(ctx.client.clone(), ns);
    let Some(r) = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("read delete request {ns}/{name}"), e))?
    else {
        return Ok(Action::await_change());
    };
    match step(&r, Utc::now()) {
        Step::Keep(d) => return Ok(Action::requeue(d)),
        Step::Expire => {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(Error::kube(format!("remove delete request {ns}/{name}"), e)),
            }
            return Ok(Action::await_change());
        }
        Step::Process => {}
    }
    let backup = r.spec.backup_name.clone();
    tracing::info!("deleting backup {ns}/{backup} (request {name})");
    let bapi: Api<Backup> = Api::namespaced(ctx.client.clone(), ns);
    let schedule = match bapi.get_opt(&backup).await {
        Ok(Some(b)) => super::schedule_of(&b),
        _ => String::new(),
    };
    ctx.metrics.deletion_attempt(&schedule);
    match crate::manage::process_deletion(&ctx.client, ns, &r, ctx.opts.cache_root.as_deref()).await
    {
        Ok(rep) => {
            ctx.metrics.deletion_ended(&schedule, true);
            tracing::info!(
                "backup {ns}/{backup} deleted: {} stored records forgotten, restores deleted: {:?}",
                rep.records_forgotten,
                rep.restores_deleted
            );
            ctx.event(
                &r,
                false,
                "BackupDeleted",
                format!("backup {backup} deleted"),
            )
            .await;
        }
        Err(e) => {
            // Not even recorded as Processed (the API server away): retried soon, not in
            // a day.
            let processed = api
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .is_none_or(|r| r.status.and_then(|s| s.phase).as_deref() == Some("Processed"));
            if !processed {
                return Err(e);
            }
            ctx.metrics.deletion_ended(&schedule, false);
            tracing::warn!("backup {ns}/{backup} not deleted: {e}");
            ctx.event(
                &r,
                true,
                "BackupDeletionFailed",
                format!("backup {backup}: {e}"),
            )
            .await;
        }
    }
    Ok(Action::requeue(PROCESSED_MAX_AGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeleteBackupRequestSpec, DeleteBackupRequestStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn new_and_abandoned_requests_are_processed_processed_ones_expire_after_a_day() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut r = DeleteBackupRequest::new(
            "r",
            DeleteBackupRequestSpec {
                backup_name: "b".into(),
            },
        );
        r.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(now.timestamp() - 3600).unwrap(),
        ));
        assert_eq!(step(&r, now), Step::Process);
        for phase in ["New", "InProgress"] {
            r.status = Some(DeleteBackupRequestStatus {
                phase: Some(phase.into()),
                errors: None,
            });
            assert_eq!(step(&r, now), Step::Process, "{phase}");
        }
        r.status.as_mut().unwrap().phase = Some("Processed".into());
        assert_eq!(step(&r, now), Step::Keep(Duration::from_secs(23 * 3600)));
        assert_eq!(step(&r, now + chrono::Duration::hours(23)), Step::Expire);
    }
}
