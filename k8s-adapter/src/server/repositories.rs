//! BackupRepository maintenance (Velero's backup_repository_controller.go): each
//! repository is maintained on its `maintenanceFrequency` (quick, default hourly) and
//! fully once a day, through the engine's maintenance lease, so writers on the nodes are
//! never blocked and two clusters sharing a bucket never maintain at once. The server
//! makes one for each location's backup records (type `resources`): deleted backups'
//! data is reclaimed there. Read-only locations are never maintained.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::Ctx;
use crate::crd::{BackupRepository, BackupRepositorySpec};
use crate::location::Location;
use crate::{Error, Result};

/// The type of a location's records repository.
pub const RESOURCES: &str = "resources";

/// Which maintenance is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Full: unreferenced data collected, packs repacked.
    Full,
    /// Quick: indexes compacted.
    Quick,
    /// None for this long.
    Wait(Duration),
}

/// The rule: full when `full_every` has passed since the last full one (or never ran),
/// else quick when `every` has passed since the last one.
pub fn due(
    every: Duration,
    full_every: Duration,
    last: Option<DateTime<Utc>>,
    last_full: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Due {
    let left = |since: Option<DateTime<Utc>>, d: Duration| match since {
        None => Duration::ZERO,
        Some(t) => {
            let next = t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            (next - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    let full = left(last_full, full_every);
    let quick = left(last, every);
    if full.is_zero() {
        Due::Full
    } else if quick.is_zero() {
        Due::Quick
    } else {
        Due::Wait(full.min(quick))
    }
}

/// The name of a location's records repository.
pub fn resources_repository(location: &str) -> String {
    format!("{location}-resources")
}

/// Make the records repository of a location known (once), for maintenance.
pub(super) async fn ensure_resources(ctx: &Ctx, location: &str) -> Result<()> {
    let ns = &ctx.opts.namespace;
    // Its "volume namespace" is the namespace of the Backups whose records it holds.
    ensure(
        &ctx.client,
        ns,
        &resources_repository(location),
        ns,
        location,
        RESOURCES,
    )
    .await
}

/// Make a repository known as a BackupRepository `name` in namespace `ns` (once; one
/// that exists is left as it is).
pub(crate) async fn ensure(
    client: &kube::Client,
    ns: &str,
    name: &str,
    volume_namespace: &str,
    location: &str,
    kind: &str,
) -> Result<()> {
    let api: Api<BackupRepository> = Api::namespaced(client.clone(), ns);
    let mut r = BackupRepository::new(
        name,
        BackupRepositorySpec {
            volume_namespace: volume_namespace.to_string(),
            backup_storage_location: location.to_string(),
            repository_type: Some(kind.into()),
            maintenance_frequency: None,
        },
    );
    r.metadata.namespace = Some(ns.to_string());
    match api.create(&PostParams::default(), &r).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("create BackupRepository {ns}/{name}"),
            e,
        )),
    }
}

pub(super) async fn run(ctx: Arc<Ctx>) {
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ctx.opts.namespace);
    super::drive(
        Controller::new(api, watcher::Config::default()),
        "repository",
        reconcile,
        ctx,
    )
    .await;
}

async fn reconcile(cached: Arc<BackupRepository>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = ctx.opts.namespace.clone();
    let name = cached.name_any();
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(r) = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("read BackupRepository {ns}/{name}"), e))?
    else {
        return Ok(Action::await_change());
    };
    let st = r.status.clone().unwrap_or_default();
    let every = r
        .spec
        .maintenance_frequency
        .as_deref()
        .and_then(crate::backup::parse_go_std)
        .filter(|d| !d.is_zero())
        .unwrap_or(ctx.opts.repo_maintenance_frequency);
    let full_every = ctx.opts.repo_full_maintenance_frequency.max(every);
    let now = Utc::now();
    let kind = match due(
        every,
        full_every,
        st.last_maintenance_time.as_ref().and_then(crate::crd::utc),
        st.last_full_maintenance_time
            .as_ref()
            .and_then(crate::crd::utc),
        now,
    ) {
        Due::Wait(d) if st.phase.as_deref() == Some("Ready") => return Ok(Action::requeue(d)),
        // Never looked at yet: made ready (the repository opened or created) by a quick one.
        Due::Wait(_) => Due::Quick,
        k => k,
    };
    let work = {
        let (client, ns, spec) = (ctx.client.clone(), ns.clone(), r.spec.clone());
        let cache = ctx.opts.cache_root.clone();
        let handle = tokio::runtime::Handle::current();
        // On a blocking thread, as the restore: the engine's maintenance future is not
        // provably Send through kube-runtime's bounds.
        tokio::task::spawn_blocking(move || {
            handle.block_on(maintain(
                &client,
                &ns,
                &spec,
                cache.as_deref(),
                kind == Due::Full,
            ))
        })
        .await
        .map_err(|e| Error::Invalid(format!("maintenance of {name} panicked: {e}")))?
    };
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = match &work {
        Ok(Some(report)) => {
            tracing::info!(
                "repository {ns}/{name}: {} maintenance done ({report})",
                if kind == Due::Full { "full" } else { "quick" }
            );
            let mut s = serde_json::json!({ "phase": "Ready", "message": null, "lastMaintenanceTime": stamp });
            if kind == Due::Full {
                s["lastFullMaintenanceTime"] = stamp.clone().into();
            }
            s
        }
        Ok(None) => serde_json::json!({
            "phase": "Ready",
            "message": "its location is read-only: not maintained",
        }),
        Err(e) => {
            tracing::warn!("repository {ns}/{name}: maintenance failed: {e}");
            serde_json::json!({ "phase": "NotReady", "message": e.to_string() })
        }
    };
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": status })),
    )
    .await
    .map_err(|e| Error::kube(format!("update BackupRepository {ns}/{name}"), e))?;
    Ok(match work {
        Ok(Some(_)) => Action::requeue(every.min(full_every)),
        Ok(None) => Action::requeue(Duration::from_secs(300)),
        Err(_) => Action::requeue(Duration::from_secs(60)),
    })
}

/// Open (or create) the repository and maintain it; None for a read-only location.
async fn maintain(
    client: &kube::Client,
    ns: &str,
    spec: &BackupRepositorySpec,
    cache: Option<&std::path::Path>,
    full: bool,
) -> Result<Option<String>> {
    let loc = Location::resolve(client, ns, Some(&spec.backup_storage_location), "").await?;
    if loc.read_only {
        return Ok(None);
    }
    let url = if spec.repository_type.as_deref() == Some(RESOURCES) {
        loc.resources_url()
    } else {
        loc.volumes_url(&spec.volume_namespace)
    };
    let who = crate::location::writer(ns);
    let idx = loc.open(&url, cache, &who).await?;
    let opts = arca_engine::MaintenanceOptions {
        full,
        identity: who,
        ..Default::default()
    };
    let r = idx.maintain(&opts).await?;
    Ok(Some(format!(
        "{} packs deleted, {} bytes reclaimed, {} pending",
        r.packs_deleted, r.bytes_reclaimed, r.packs_pending
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_daily_quick_on_the_frequency() {
        let now = Utc::now();
        let (h, d) = (Duration::from_secs(3600), Duration::from_secs(86400));
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(due(h, d, None, None, now), Due::Full, "never maintained");
        assert_eq!(
            due(h, d, ago(10), ago(10), now),
            Due::Wait(Duration::from_secs(3590))
        );
        assert_eq!(due(h, d, ago(3600), ago(7200), now), Due::Quick);
        assert_eq!(due(h, d, ago(60), ago(86400), now), Due::Full);
        assert_eq!(
            due(h, d, ago(60), ago(86000), now),
            Due::Wait(Duration::from_secs(400))
        );
    }
}
