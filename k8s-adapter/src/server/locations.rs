//! Backup storage locations: validation (Velero's backup_storage_location_controller.go:
//! phase Available or Unavailable with the reason, `lastValidationTime`, every
//! `validationFrequency`, one default) and the periodic sync of stored backups into the
//! cluster (Velero's backup_sync_controller.go, through [`crate::manage::sync_backups`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::Ctx;
use crate::crd::BackupStorageLocation;
use crate::location::Location;
use crate::{Error, Result};

/// When a location is next validated: now (`Some(ZERO)`), after a while, or never again
/// (validation off: frequency 0, and validated once). As Velero's IsReadyToValidate: the
/// location's `validationFrequency` over the server's; every location at least once.
pub fn validation_due(
    spec_frequency: Option<Duration>,
    last: Option<DateTime<Utc>>,
    server_frequency: Duration,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let Some(last) = last else {
        return Some(Duration::ZERO);
    };
    let every = spec_frequency.unwrap_or(server_frequency);
    if every.is_zero() {
        return None;
    }
    let next = last + chrono::Duration::from_std(every).ok()?;
    Some((next - now).to_std().unwrap_or(Duration::ZERO))
}

/// Of several locations marked default, the newest stays default; these lose the mark
/// (Velero's ensureSingleDefaultBSL).
pub fn extra_defaults(list: &[BackupStorageLocation]) -> Vec<String> {
    let mut defaults: Vec<&BackupStorageLocation> = list
        .iter()
        .filter(|b| b.spec.default == Some(true))
        .collect();
    defaults.sort_by_key(|b| {
        (
            b.metadata.creation_timestamp.clone().map(|t| t.0),
            b.name_any(),
        )
    });
    defaults.pop();
    defaults.iter().map(|b| b.name_any()).collect()
}

pub(super) async fn validation(ctx: Arc<Ctx>) {
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    super::drive(
        Controller::new(api, watcher::Config::default()),
        "location",
        reconcile,
        ctx,
    )
    .await;
}

async fn reconcile(cached: Arc<BackupStorageLocation>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = &ctx.opts.namespace;
    let name = cached.name_any();
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), ns);
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("list BackupStorageLocations in {ns}"), e))?;
    for other in extra_defaults(&all.items) {
        tracing::info!(
            "backup storage location {ns}/{other} is no longer the default: a newer one is"
        );
        api.patch(
            &other,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": { "default": false } })),
        )
        .await
        .map_err(|e| Error::kube(format!("unset the default of location {ns}/{other}"), e))?;
    }
    let Some(bsl) = all.items.into_iter().find(|b| b.name_any() == name) else {
        return Ok(Action::await_change());
    };
    let st = bsl.status.clone().unwrap_or_default();
    let last = st.last_validation_time.as_ref().and_then(crate::crd::utc);
    let now = Utc::now();
    match validation_due(
        bsl.spec
            .validation_frequency
            .as_deref()
            .and_then(crate::backup::parse_go_std),
        last,
        ctx.opts.validation_frequency,
        now,
    ) {
        None => return Ok(Action::await_change()),
        Some(d) if !d.is_zero() => return Ok(Action::requeue(d)),
        Some(_) => {}
    }
    let checked = async {
        let loc = Location::from_bsl(&ctx.client, ns, &bsl).await?;
        loc.check().await
    }
    .await;
    let (phase, message) = match &checked {
        Ok(()) => ("Available", None),
        Err(e) => (
            "Unavailable",
            Some(format!(
                "BackupStorageLocation {name:?} is unavailable: {e}"
            )),
        ),
    };
    ctx.metrics.location_available(&name, checked.is_ok());
    if st.phase.as_deref() != Some(phase) {
        match &message {
            None => tracing::info!("backup storage location {ns}/{name} is available"),
            Some(m) => tracing::warn!("{m}"),
        }
        ctx.event(
            &bsl,
            message.is_some(),
            phase,
            message
                .clone()
                .unwrap_or_else(|| format!("location {name} is available")),
        )
        .await;
    }
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": {
            "phase": phase,
            "message": message,
            "lastValidationTime": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }})),
    )
    .await
    .map_err(|e| Error::kube(format!("update the status of location {ns}/{name}"), e))?;
    // Its records repository is maintained (not when read-only: the controller checks).
    if checked.is_ok()
        && let Err(e) = super::repositories::ensure_resources(&ctx, &name).await
    {
        tracing::warn!("location {ns}/{name}: {e}");
    }
    Ok(
        match validation_due(
            bsl.spec
                .validation_frequency
                .as_deref()
                .and_then(crate::backup::parse_go_std),
            Some(now),
            ctx.opts.validation_frequency,
            now,
        ) {
            Some(d) => Action::requeue(d.max(Duration::from_secs(1))),
            None => Action::await_change(),
        },
    )
}

/// Sync stored backups into the cluster every `every`, and record when on each location
/// that could be read.
pub(super) async fn sync(ctx: Arc<Ctx>, every: Duration) {
    let ns = ctx.opts.namespace.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let report =
            match crate::manage::sync_backups(&ctx.client, &ns, ctx.opts.cache_root.as_deref())
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("backup sync: {e}");
                    continue;
                }
            };
        for n in &report.created {
            tracing::info!("backup {ns}/{n} synced from object storage");
        }
        for n in &report.removed {
            tracing::info!("backup {ns}/{n} removed: it is gone from object storage");
        }
        for (loc, why) in &report.unreachable {
            tracing::warn!("backup sync: location {loc} could not be read: {why}");
        }
        let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ns);
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for b in list.items {
            let n = b.name_any();
            if report.unreachable.iter().any(|(l, _)| *l == n) {
                continue;
            }
            // Advisory: the next sync writes it again.
            let _ = api
                .patch_status(
                    &n,
                    &PatchParams::default(),
                    &Patch::Merge(&serde_json::json!({ "status": { "lastSyncedTime": now } })),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BackupStorageLocationSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn validated_once_then_on_the_locations_frequency_or_the_servers() {
        let now = Utc::now();
        let min = Duration::from_secs(60);
        assert_eq!(validation_due(None, None, min, now), Some(Duration::ZERO));
        assert_eq!(
            validation_due(Some(Duration::ZERO), None, min, now),
            Some(Duration::ZERO)
        );
        let ago = now - chrono::Duration::seconds(20);
        assert_eq!(
            validation_due(None, Some(ago), min, now),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            validation_due(Some(Duration::from_secs(10)), Some(ago), min, now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            validation_due(Some(Duration::ZERO), Some(ago), min, now),
            None,
            "off"
        );
    }

    #[test]
    fn the_newest_default_stays_default() {
        let bsl = |name: &str, default: bool, created: i64| {
            let mut b = BackupStorageLocation::new(
                name,
                BackupStorageLocationSpec {
                    default: Some(default),
                    ..Default::default()
                },
            );
            b.metadata.creation_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
            ));
            b
        };
        let list = vec![
            bsl("a", true, 100),
            bsl("b", true, 300),
            bsl("c", false, 400),
            bsl("d", true, 200),
        ];
        assert_eq!(
            extra_defaults(&list),
            vec!["a".to_string(), "d".to_string()]
        );
        assert!(extra_defaults(&list[..1]).is_empty());
        assert!(extra_defaults(&[]).is_empty());
    }
}
