//! Garbage collection (Velero's gc_controller.go): every `--garbage-collection-frequency`
//! each expired backup gets a DeleteBackupRequest, which the deletion controller
//! processes. Not when its location is missing, unreadable, read-only or unavailable: the
//! backup is labelled with why (`arca.dev/gc-failure`, Velero's values) and kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::Ctx;
use crate::crd::{Backup, BackupStorageLocation, DeleteBackupRequest};
use crate::record::{BACKUP_NAME_LABEL, label_value};
use crate::{Error, Result};

/// Label on an expired backup the GC could not delete, and why.
pub const GC_FAILURE_LABEL: &str = "arca.dev/gc-failure";

/// What the GC knows of a backup's location.
#[derive(Clone, Debug)]
pub enum Loc {
    /// The BackupStorageLocation.
    Found {
        /// Its access mode is ReadOnly.
        read_only: bool,
        /// Its validation's phase.
        phase: Option<String>,
    },
    /// No such location.
    NotFound,
    /// Reading it failed.
    CannotGet,
}

/// What the GC does with a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gc {
    /// Not expired (or no expiration): nothing.
    Keep,
    /// Expired, but its location stops the deletion: label it so (None: unavailable,
    /// tried again next time without a label, as Velero does).
    Blocked(Option<&'static str>),
    /// A deletion of it is already asked for and not processed: wait.
    Pending,
    /// Ask for its deletion.
    Delete,
}

/// The rule. `requests` are the phases of the backup's DeleteBackupRequests.
pub fn gc(b: &Backup, now: DateTime<Utc>, loc: &Loc, requests: &[&str]) -> Gc {
    let Some(exp) = b.status.as_ref().and_then(|s| s.expiration.as_ref()) else {
        return Gc::Keep;
    };
    let Some(exp) = crate::crd::utc(exp) else {
        return Gc::Keep;
    };
    if exp > now {
        return Gc::Keep;
    }
    match loc {
        Loc::NotFound => return Gc::Blocked(Some("BSLNotFound")),
        Loc::CannotGet => return Gc::Blocked(Some("BSLCannotGet")),
        Loc::Found { phase, .. } if phase.as_deref() == Some("Unavailable") => {
            return Gc::Blocked(None);
        }
        Loc::Found {
            read_only: true, ..
        } => return Gc::Blocked(Some("BSLReadOnly")),
        Loc::Found { .. } => {}
    }
    if requests
        .iter()
        .any(|p| matches!(*p, "" | "New" | "InProgress"))
    {
        return Gc::Pending;
    }
    Gc::Delete
}

/// Run the GC every `every` until dropped.
pub(super) async fn run(ctx: Arc<Ctx>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = once(&ctx).await {
            tracing::warn!("garbage collection: {e}");
        }
    }
}

async fn once(ctx: &Ctx) -> Result<()> {
    let ns = &ctx.opts.namespace;
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), ns);
    let bsls: Api<BackupStorageLocation> = Api::namespaced(ctx.client.clone(), ns);
    let dbrs: Api<DeleteBackupRequest> = Api::namespaced(ctx.client.clone(), ns);
    let list = backups
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("list backups in {ns}"), e))?;
    let now = Utc::now();
    for b in &list.items {
        let name = b.name_any();
        // Cheap first: most backups are not expired.
        if gc(
            b,
            now,
            &Loc::Found {
                read_only: false,
                phase: None,
            },
            &[],
        ) == Gc::Keep
        {
            continue;
        }
        let loc_name = b
            .spec
            .storage_location
            .clone()
            .unwrap_or_else(|| ctx.opts.default_location.clone());
        let loc = match bsls.get_opt(&loc_name).await {
            Ok(Some(l)) => Loc::Found {
                read_only: l.spec.access_mode.as_deref() == Some("ReadOnly"),
                phase: l.status.and_then(|s| s.phase),
            },
            Ok(None) => Loc::NotFound,
            Err(_) => Loc::CannotGet,
        };
        let reqs = dbrs
            .list(
                &ListParams::default()
                    .labels(&format!("{BACKUP_NAME_LABEL}={}", label_value(&name))),
            )
            .await
            .map_err(|e| Error::kube(format!("list delete requests of backup {ns}/{name}"), e))?;
        let phases: Vec<&str> = reqs
            .items
            .iter()
            .map(|r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("")
            })
            .collect();
        let step = gc(b, now, &loc, &phases);
        let label = match &step {
            Gc::Blocked(Some(why)) => Some(*why),
            _ => None,
        };
        if b.labels().get(GC_FAILURE_LABEL).map(String::as_str) != label {
            let mut l = BTreeMap::new();
            l.insert(GC_FAILURE_LABEL, label);
            backups
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&serde_json::json!({ "metadata": { "labels": l } })),
                )
                .await
                .map_err(|e| Error::kube(format!("label backup {ns}/{name}"), e))?;
        }
        match step {
            Gc::Delete => {
                tracing::info!("backup {ns}/{name} has expired: asking for its deletion");
                crate::manage::request_deletion(&ctx.client, ns, &name).await?;
            }
            Gc::Blocked(why) => tracing::info!(
                "backup {ns}/{name} has expired but is kept: its location {loc_name} is {}",
                match why {
                    Some("BSLNotFound") => "missing",
                    Some("BSLCannotGet") => "unreadable",
                    Some(_) => "read-only",
                    None => "unavailable",
                }
            ),
            Gc::Keep | Gc::Pending => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BackupStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn expired_backups_go_unless_their_location_stops_it() {
        let now = Utc::now();
        let mut b = Backup::new("b", Default::default());
        let ok = Loc::Found {
            read_only: false,
            phase: Some("Available".into()),
        };
        assert_eq!(gc(&b, now, &ok, &[]), Gc::Keep, "no expiration");
        let at = |secs: i64| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(now.timestamp() + secs).unwrap(),
            ))
        };
        b.status = Some(BackupStatus {
            expiration: at(60),
            ..Default::default()
        });
        assert_eq!(gc(&b, now, &ok, &[]), Gc::Keep, "not yet");
        b.status.as_mut().unwrap().expiration = at(-1);
        assert_eq!(gc(&b, now, &ok, &[]), Gc::Delete);
        assert_eq!(
            gc(&b, now, &ok, &["Processed"]),
            Gc::Delete,
            "a failed try is retried"
        );
        assert_eq!(gc(&b, now, &ok, &["Processed", "InProgress"]), Gc::Pending);
        assert_eq!(
            gc(&b, now, &Loc::NotFound, &[]),
            Gc::Blocked(Some("BSLNotFound"))
        );
        assert_eq!(
            gc(&b, now, &Loc::CannotGet, &[]),
            Gc::Blocked(Some("BSLCannotGet"))
        );
        let ro = Loc::Found {
            read_only: true,
            phase: None,
        };
        assert_eq!(gc(&b, now, &ro, &[]), Gc::Blocked(Some("BSLReadOnly")));
        let down = Loc::Found {
            read_only: false,
            phase: Some("Unavailable".into()),
        };
        assert_eq!(gc(&b, now, &down, &[]), Gc::Blocked(None));
    }
}
