//! From a BackupStorageLocation to repositories: the location's root, the resource
//! repository under it (`<root>/resources`, one per location, holding every backup's and
//! restore's records) and, for volume data, one repository per namespace
//! (`<root>/volumes/<namespace>`). See `spec/KUBERNETES.md`.

use std::collections::BTreeMap;
use std::path::Path;

use arca_engine::{Identity, Indexed, InitOptions, Repository, StoreOptions, open_store};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::crd::BackupStorageLocation;
use crate::error::{Error, Result};

/// The Secret holding the repositories' password, in the install namespace.
pub const CREDENTIALS_SECRET: &str = "arca-repo-credentials";
/// Its key.
pub const PASSWORD_KEY: &str = "repository-password";

/// A resolved storage location.
#[derive(Clone, Debug)]
pub struct Location {
    /// The BackupStorageLocation's name.
    pub name: String,
    /// The root: a directory or `s3://bucket/prefix`, `gs://...`, `az://...`.
    pub root: String,
    /// How to reach the store.
    pub store: StoreOptions,
    /// The repositories' password.
    pub password: Vec<u8>,
    /// ReadOnly locations take no new backups and lose none.
    pub read_only: bool,
    /// The server's last validation: Available, Unavailable, or None (not yet).
    pub phase: Option<String>,
}

/// Who writes the records of install namespace `ns` (snapshot host and user).
pub fn writer(ns: &str) -> Identity {
    Identity {
        host: format!("cluster/{ns}"),
        username: "arca".into(),
    }
}

fn join(root: &str, part: &str) -> String {
    format!("{}/{part}", root.trim_end_matches('/'))
}

/// Parse an AWS-style credentials file: the `[default]` (or only) profile's keys.
fn aws_credentials(text: &str) -> Option<(String, String)> {
    let mut section = String::new();
    let mut found: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            found
                .entry(section.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    let p = found.get("default").or_else(|| found.values().next())?;
    Some((
        p.get("aws_access_key_id")?.clone(),
        p.get("aws_secret_access_key")?.clone(),
    ))
}

pub(crate) async fn secret_key(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read secret {ns}/{name}"), e))?
    {
        None => Ok(None),
        Some(s) => Ok(s.data.and_then(|d| d.get(key).map(|v| v.0.clone()))),
    }
}

impl Location {
    /// The BackupStorageLocation named `name`, or the default one, in namespace `ns`: the
    /// one marked `default: true`, else the one named `fallback` (the server's
    /// `--default-backup-storage-location`), else the only one.
    pub async fn resolve(
        client: &Client,
        ns: &str,
        name: Option<&str>,
        fallback: &str,
    ) -> Result<Self> {
        let api: Api<BackupStorageLocation> = Api::namespaced(client.clone(), ns);
        let bsl = match name {
            Some(n) => api
                .get_opt(n)
                .await
                .map_err(|e| Error::kube(format!("read BackupStorageLocation {ns}/{n}"), e))?
                .ok_or_else(|| {
                    Error::NotFound(format!("no BackupStorageLocation {n:?} in namespace {ns}"))
                })?,
            None => {
                let all = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| Error::kube(format!("list BackupStorageLocations in {ns}"), e))?;
                let mut items = all.items;
                let default = items
                    .iter()
                    .position(|b| b.spec.default == Some(true))
                    .or_else(|| {
                        items
                            .iter()
                            .position(|b| b.metadata.name.as_deref() == Some(fallback))
                    });
                match (default, items.len()) {
                    (Some(i), _) => items.swap_remove(i),
                    (None, 1) => items.remove(0),
                    (None, 0) => {
                        return Err(Error::NotFound(format!(
                            "no BackupStorageLocation in namespace {ns}: create one (see `arca install --help`)"
                        )));
                    }
                    (None, _) => {
                        return Err(Error::Invalid(format!(
                            "several BackupStorageLocations in {ns} and none is the default: name one with --storage-location"
                        )));
                    }
                }
            }
        };
        Self::from_bsl(client, ns, &bsl).await
    }

    /// The location of a backup, and the Backup resource if this cluster has it. The
    /// location is the one the Backup records (`spec.storageLocation`, else its
    /// storage-location label); a backup with no resource here (made by another cluster,
    /// or recorded before locations were) is looked for in the default location first,
    /// then in every other, so that moving the default never hides a backup.
    pub async fn of_backup(
        client: &Client,
        ns: &str,
        backup: &str,
        cache_root: Option<&Path>,
    ) -> Result<(Self, Option<crate::crd::Backup>)> {
        let api: Api<crate::crd::Backup> = Api::namespaced(client.clone(), ns);
        let b = api
            .get_opt(backup)
            .await
            .map_err(|e| Error::kube(format!("read backup {ns}/{backup}"), e))?;
        if let Some(n) = b.as_ref().and_then(|b| b.spec.storage_location.clone()) {
            return Ok((Self::resolve(client, ns, Some(&n), "").await?, b));
        }
        let bsls: Api<BackupStorageLocation> = Api::namespaced(client.clone(), ns);
        let mut all = bsls
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::kube(format!("list BackupStorageLocations in {ns}"), e))?
            .items;
        let label = b
            .as_ref()
            .and_then(|b| b.metadata.labels.as_ref())
            .and_then(|l| l.get(crate::record::STORAGE_LOCATION_LABEL).cloned());
        if let Some(l) = label
            && let Some(bsl) = all.iter().find(|x| {
                crate::record::label_value(&x.metadata.name.clone().unwrap_or_default()) == l
            })
        {
            return Ok((Self::from_bsl(client, ns, bsl).await?, b));
        }
        // Default first, then by name.
        all.sort_by_key(|x| (x.spec.default != Some(true), x.metadata.name.clone()));
        let mut first = None;
        for bsl in &all {
            let Ok(loc) = Self::from_bsl(client, ns, bsl).await else {
                continue;
            };
            let found = async {
                let repo = loc
                    .open(&loc.resources_url(), cache_root, &writer(ns))
                    .await?;
                crate::restore::latest_record(
                    &repo,
                    crate::record::BACKUP_TAG,
                    crate::record::BACKUP_NAME_LABEL,
                    backup,
                )
                .await
            };
            if let Ok(Some(_)) = found.await {
                return Ok((loc, b));
            }
            first.get_or_insert(loc);
        }
        match first {
            Some(l) => Ok((l, b)),
            None => Ok((Self::resolve(client, ns, None, "default").await?, b)),
        }
    }

    /// Resolve a BackupStorageLocation object.
    pub async fn from_bsl(client: &Client, ns: &str, bsl: &BackupStorageLocation) -> Result<Self> {
        Self::from_bsl_with(client, ns, bsl, None).await
    }

    /// The same, with the repositories' password given (else the namespace's secret,
    /// else ARCA_PASSWORD).
    pub async fn from_bsl_with(
        client: &Client,
        ns: &str,
        bsl: &BackupStorageLocation,
        password: Option<Vec<u8>>,
    ) -> Result<Self> {
        let name = bsl.metadata.name.clone().unwrap_or_default();
        let spec = &bsl.spec;
        let cfg = spec.config.clone().unwrap_or_default();
        let bucket = spec.object_storage.bucket.trim_end_matches('/');
        let prefix = spec
            .object_storage
            .prefix
            .as_deref()
            .unwrap_or("")
            .trim_matches('/');
        let with_prefix = |base: String| {
            if prefix.is_empty() {
                base
            } else {
                join(&base, prefix)
            }
        };
        let mut store = StoreOptions::default();
        let root = match spec.provider.as_str() {
            "local" | "filesystem" => with_prefix(
                cfg.get("path")
                    .cloned()
                    .unwrap_or_else(|| bucket.to_string()),
            ),
            "aws" | "velero.io/aws" | "s3" => {
                store.s3_endpoint = cfg.get("s3Url").cloned();
                store.s3_region = cfg.get("region").cloned();
                with_prefix(format!("s3://{bucket}"))
            }
            "gcp" | "velero.io/gcp" => with_prefix(format!("gs://{bucket}")),
            "azure" | "velero.io/azure" => with_prefix(format!("az://{bucket}")),
            other => {
                return Err(Error::Invalid(format!(
                    "BackupStorageLocation {name}: provider {other:?} is not supported; use aws, gcp, azure or local"
                )));
            }
        };
        if let Some(c) = &spec.credential {
            let text = secret_key(client, ns, &c.name, &c.key)
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "BackupStorageLocation {name}: secret {}/{} has no key {}",
                        ns, c.name, c.key
                    ))
                })?;
            store.s3_credentials = aws_credentials(&String::from_utf8_lossy(&text));
        }
        let stored = match password {
            Some(p) => Some(p),
            None => secret_key(client, ns, CREDENTIALS_SECRET, PASSWORD_KEY).await?,
        };
        let password = match stored {
            Some(p) => p,
            None => std::env::var("ARCA_PASSWORD").map(String::into_bytes).map_err(|_| {
                Error::NotFound(format!(
                    "no repository password: create secret {ns}/{CREDENTIALS_SECRET} with key {PASSWORD_KEY}, or set ARCA_PASSWORD"
                ))
            })?,
        };
        Ok(Self {
            name,
            root,
            store,
            password,
            read_only: spec.access_mode.as_deref() == Some("ReadOnly"),
            phase: bsl.status.as_ref().and_then(|s| s.phase.clone()),
        })
    }

    /// Where the backup and restore records live.
    pub fn resources_url(&self) -> String {
        join(&self.root, "resources")
    }

    /// Where one namespace's volume data lives.
    pub fn volumes_url(&self, namespace: &str) -> String {
        join(&join(&self.root, "volumes"), namespace)
    }

    /// Whether the location can be used, read-only (the server's validation): its store
    /// answers, and the resource repository there (if any) opens with the password.
    pub async fn check(&self) -> Result<()> {
        let store = open_store(&self.resources_url(), &self.store)?;
        match Repository::open_with(store, &self.password, None).await {
            Ok(_) | Err(arca_engine::Error::NoRepository { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Open a repository under this location, creating it on first use.
    pub async fn open(
        &self,
        url: &str,
        cache_root: Option<&Path>,
        who: &Identity,
    ) -> Result<Indexed> {
        let store = open_store(url, &self.store)?;
        // Several writers may find a new location empty at once (a backup, the sync, the
        // repository maintenance; another cluster's server): one init wins, the others
        // see it not empty, and open it once its config is written (the key file comes
        // first, so "not empty" can precede "a repository" by a moment).
        let mut tries = 0;
        let repo = loop {
            match Repository::open_with(store.clone(), &self.password, cache_root).await {
                Ok(r) => break r,
                Err(arca_engine::Error::NoRepository { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            match Repository::init(store.clone(), &self.password, InitOptions::default(), who).await
            {
                Ok(r) => break r,
                Err(arca_engine::Error::NotEmpty { .. }) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(repo.indexed(cache_root).await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_aws_credentials_files() {
        let t = "[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n\n[other]\naws_access_key_id=x\n";
        assert_eq!(aws_credentials(t), Some(("AK".into(), "SK".into())));
        assert_eq!(
            aws_credentials("[p]\naws_access_key_id=a\naws_secret_access_key=b"),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(aws_credentials("nothing"), None);
    }
}
