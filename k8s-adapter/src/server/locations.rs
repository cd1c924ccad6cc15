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

/// Whether a location's backups are synced now, as Velero's locationFilterFunc
/// (backup_sync_controller.go) decides: its `backupSyncPeriod` over the server's
/// (`--backup-sync-period`; None: off); "0" never; negative or unreadable, the server's;
/// due when the last sync is at least that long ago, or never was.
pub fn sync_due(
    spec_period: Option<&str>,
    last: Option<DateTime<Utc>>,
    server_period: Option<Duration>,
    now: DateTime<Utc>,
) -> bool {
    if sync_off(spec_period) {
        return false;
    }
    let period = match spec_period.map(crate::backup::parse_go_duration_nanos) {
        Some(Ok(n)) if n > 0 => Some(Duration::from_nanos(n as u64)),
        _ => server_period,
    };
    match (period, last) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(p), Some(last)) => chrono::Duration::from_std(p).is_ok_and(|p| now >= last + p),
    }
}

/// Whether a location's `backupSyncPeriod` turns its sync off ("0"): then neither the
/// server nor `arca backup get` syncs it.
pub fn sync_off(spec_period: Option<&str>) -> bool {
    spec_period.is_some_and(|p| matches!(crate::backup::parse_go_duration_nanos(p), Ok(0)))
}

/// The locations to sync now: Available ones (Velero's Reconcile skips the others) that
/// are due, the default one first (Velero's backupSyncSourceOrderFunc: its backups are
/// the ones a user looks for first).
pub fn to_sync(
    list: &[BackupStorageLocation],
    server_period: Option<Duration>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut due: Vec<&BackupStorageLocation> = list
        .iter()
        .filter(|b| {
            let st = b.status.as_ref();
            let last = st
                .and_then(|s| s.last_synced_time.as_ref())
                .and_then(crate::crd::utc);
            st.and_then(|s| s.phase.as_deref()) == Some("Available")
                && sync_due(
                    b.spec.backup_sync_period.as_deref(),
                    last,
                    server_period,
                    now,
                )
        })
        .collect();
    // Stable: the rest keep the API server's order.
    due.sort_by_key(|b| b.spec.default != Some(true));
    due.iter().map(|b| b.name_any()).collect()
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

/// How often the sync looks for due locations at the least (Velero's
/// backupSyncReconcilePeriod).
const SYNC_LOOK: Duration = Duration::from_secs(60);

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

/// Sync stored backups into the cluster: each location when it is due ([`to_sync`]),
/// looked at every `--backup-sync-period` and at least every minute (as Velero's
/// periodical source), and record when on each location synced that could be read.
pub(super) async fn sync(ctx: Arc<Ctx>) {
    let ns = ctx.opts.namespace.clone();
    let server = ctx.opts.sync_period;
    let every = server.map_or(SYNC_LOOK, |p| p.min(SYNC_LOOK));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let api: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), &ns);
    loop {
        tick.tick().await;
        // The time the sync starts is what is recorded: recorded at its end, the next
        // look (one period after this one) would find it not yet due and skip a period.
        let now = Utc::now();
        let due = match api.list(&ListParams::default()).await {
            Ok(list) => to_sync(&list.items, server, now),
            Err(e) => {
                tracing::warn!("backup sync: cannot list locations: {e}");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        let report = match crate::manage::sync_backups(
            &ctx.client,
            &ns,
            ctx.opts.cache_root.as_deref(),
            Some(&due),
        )
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
        let now = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for n in due {
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

    #[test]
    fn a_location_syncs_on_its_own_period_or_the_servers() {
        let now = Utc::now();
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        let min = Some(Duration::from_secs(60));
        // Never synced: now, unless off.
        assert!(sync_due(None, None, min, now));
        assert!(sync_due(Some("1h"), None, None, now));
        assert!(
            !sync_due(None, None, None, now),
            "server off, location silent"
        );
        // The server's period.
        assert!(!sync_due(None, ago(59), min, now));
        assert!(sync_due(None, ago(60), min, now));
        // The location's own, longer or shorter.
        assert!(!sync_due(Some("1h"), ago(600), min, now));
        assert!(sync_due(Some("1h"), ago(3600), min, now));
        assert!(sync_due(Some("10s"), ago(10), min, now));
        assert!(
            sync_due(Some("500ms"), ago(1), None, now),
            "under a second is a period"
        );
        // "0": never, whatever the server says or however long ago.
        assert!(!sync_due(Some("0s"), None, min, now));
        assert!(!sync_due(Some("0"), ago(86_400), min, now));
        // Negative or unreadable: the server's.
        assert!(!sync_due(Some("-5m"), ago(30), min, now));
        assert!(sync_due(Some("-5m"), ago(60), min, now));
        assert!(sync_due(Some("soon"), ago(60), min, now));
        assert!(!sync_due(Some("soon"), ago(60), None, now));
        assert!(sync_off(Some("0s")) && sync_off(Some("0")) && sync_off(Some("0h0m0s")));
        assert!(!sync_off(None) && !sync_off(Some("1s")) && !sync_off(Some("-1m")));
    }

    #[test]
    fn due_locations_sync_default_first() {
        let now = Utc::now();
        let bsl = |name: &str, default: bool, period: Option<&str>, synced: Option<i64>| {
            let mut b = BackupStorageLocation::new(
                name,
                BackupStorageLocationSpec {
                    default: Some(default),
                    backup_sync_period: period.map(str::to_string),
                    ..Default::default()
                },
            );
            b.status = Some(crate::crd::BackupStorageLocationStatus {
                phase: Some(
                    if name == "down" {
                        "Unavailable"
                    } else {
                        "Available"
                    }
                    .into(),
                ),
                last_synced_time: synced.map(|s| {
                    Time(k8s_openapi::jiff::Timestamp::from_second(now.timestamp() - s).unwrap())
                }),
                ..Default::default()
            });
            b
        };
        let list = vec![
            bsl("a", false, None, Some(120)),
            bsl("off", false, Some("0s"), None),
            bsl("slow", false, Some("1h"), Some(120)),
            bsl("b", false, None, None),
            bsl("main", true, None, Some(61)),
            bsl("fresh", false, None, Some(5)),
            bsl("down", false, None, None),
        ];
        let min = Some(Duration::from_secs(60));
        assert_eq!(to_sync(&list, min, now), ["main", "a", "b"]);
        assert!(to_sync(&list, None, now).is_empty());
    }
}
