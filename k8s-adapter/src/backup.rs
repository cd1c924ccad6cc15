//! Backup of cluster resources: discovery at preferred versions, Velero's filters, ordered
//! resources, related items, and the record stored as one repository snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arca_engine::{BackupOptions, BackupProgress, Parent};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::crd::{Backup, BackupSpec, BackupStatus};
use crate::discovery::{ApiRes, Discovery};
use crate::error::{Error, Result};
use crate::filter::{LabelFilter, NamespaceFilter, ResourceFilter, excluded_by_label};
use crate::location::Location;
use crate::record::*;

/// Resources never backed up: they describe the cluster's machinery, not its workloads,
/// or are Arca's own records of the backup in progress.
const NEVER_BACKED_UP: [&str; 3] = ["events", "events.events.k8s.io", "backups.arca.dev"];

/// Parse a Go-style duration (`720h0m0s`, `1h30m`, `90s`) into seconds.
pub fn parse_go_duration(s: &str) -> Result<i64> {
    let bad = || Error::Invalid(format!("duration {s:?}: use e.g. 720h0m0s, 24h, 30m"));
    let (mut total, mut num) = (0f64, String::new());
    let mut chars = s.trim().chars().peekable();
    if s.trim().is_empty() {
        return Err(bad());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(bad()),
        };
        total += n * unit;
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total as i64)
}

/// Validated filters of a backup spec, with names resolved against discovery.
pub struct BackupFilters {
    /// Namespaces.
    pub namespaces: NamespaceFilter,
    /// Resource types.
    pub resources: ResourceFilter,
    /// Labels.
    pub labels: LabelFilter,
    /// Names that did not resolve (reported as warnings).
    pub unknown: Vec<String>,
}

impl BackupFilters {
    /// Validate and resolve; the error is Velero's FailedValidation.
    pub fn new(spec: &BackupSpec, d: &Discovery) -> Result<Self> {
        let v = |o: &Option<Vec<String>>| o.clone().unwrap_or_default();
        let mut unknown = Vec::new();
        let mut res = |o: &Option<Vec<String>>| {
            let (names, u) = d.resolve_all(&v(o));
            unknown.extend(u);
            names
        };
        let resources = ResourceFilter::new(
            &res(&spec.included_resources),
            &res(&spec.excluded_resources),
            spec.include_cluster_resources,
            &res(&spec.included_cluster_scoped_resources),
            &res(&spec.excluded_cluster_scoped_resources),
            &res(&spec.included_namespace_scoped_resources),
            &res(&spec.excluded_namespace_scoped_resources),
        )?;
        let labels = LabelFilter::new(
            spec.label_selector.clone(),
            spec.or_label_selectors.clone().unwrap_or_default(),
        )?;
        if let Some(ttl) = &spec.ttl {
            parse_go_duration(ttl)?;
        }
        Ok(Self {
            namespaces: NamespaceFilter::new(
                &v(&spec.included_namespaces),
                &v(&spec.excluded_namespaces),
            )?,
            resources,
            labels,
            unknown,
        })
    }
}

/// An item read from the cluster.
#[derive(Clone, Debug)]
pub struct Item {
    /// Where it belongs.
    pub item: ItemRef,
    /// The object as the API server returned it.
    pub object: Value,
}

fn labels_of(o: &DynamicObject) -> BTreeMap<String, String> {
    o.metadata.labels.clone().unwrap_or_default()
}

/// List every object of a type (in a namespace, or everywhere), page by page.
async fn list_all(
    client: &Client,
    r: &ApiRes,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let ar = r.api_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await.map_err(|e| {
            Error::kube(
                format!(
                    "list {}{}",
                    r.group_resource(),
                    namespace.map(|n| format!(" in {n}")).unwrap_or_default()
                ),
                e,
            )
        })?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(out),
        }
    }
}

/// What a backup collected and how it went.
#[derive(Debug, Default)]
pub struct Collected {
    /// Items in backup order.
    pub items: Vec<Item>,
    /// Warnings and errors.
    pub results: Results,
}

fn to_item(r: &ApiRes, o: &DynamicObject) -> Result<Item> {
    let mut object = serde_json::to_value(o).map_err(|e| Error::Json {
        what: format!("{} {}", r.kind, o.name_any()),
        source: e,
    })?;
    // The dynamic API leaves these to the caller; the stored item must be complete.
    object["apiVersion"] = Value::String(r.api_version());
    object["kind"] = Value::String(r.kind.clone());
    Ok(Item {
        item: ItemRef {
            group: r.group.clone(),
            version: r.version.clone(),
            resource: r.plural.clone(),
            kind: r.kind.clone(),
            namespace: o.namespace(),
            name: o.name_any(),
        },
        object,
    })
}

/// Collect the items a backup spec selects.
pub async fn collect(
    client: &Client,
    d: &Discovery,
    spec: &BackupSpec,
    f: &BackupFilters,
    log: &mut Log,
) -> Result<Collected> {
    let mut c = Collected::default();
    for u in &f.unknown {
        c.results.warnings.add(
            None,
            false,
            format!("resource {u:?} is not served by this cluster"),
        );
    }
    // Namespaces in scope.
    let ns_res = d
        .by_group_resource("namespaces")
        .ok_or_else(|| Error::Invalid("the cluster serves no namespaces".into()))?;
    let all_ns = list_all(client, ns_res, None).await?;
    let namespaces: BTreeSet<String> = all_ns
        .iter()
        .map(|n| n.name_any())
        .filter(|n| f.namespaces.includes(n))
        .collect();
    let all_namespaces = f.namespaces.all();
    log.line("info", format!("{} namespaces in scope", namespaces.len()));

    let ordered: BTreeMap<String, Vec<String>> = spec
        .ordered_resources
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let gr = d.resolve(&k).map(|r| r.group_resource()).unwrap_or(k);
            (
                gr,
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )
        })
        .collect();

    let mut by_type: Vec<(ApiRes, Vec<Item>)> = Vec::new();
    let mut pvcs_volumes: BTreeSet<String> = BTreeSet::new();
    let mut namespaces_with_items: BTreeSet<String> = BTreeSet::new();
    for r in &d.preferred {
        let gr = r.group_resource();
        if NEVER_BACKED_UP.contains(&gr.as_str())
            || !r.can("list")
            || !r.can("get")
            || gr == "namespaces"
        {
            continue;
        }
        if !f.resources.takes(&gr, r.namespaced, all_namespaces) {
            continue;
        }
        let objects = if !r.namespaced || (all_namespaces && f.namespaces.everything()) {
            list_all(client, r, None).await
        } else {
            let mut v = Vec::new();
            let mut err = None;
            for ns in &namespaces {
                match list_all(client, r, Some(ns)).await {
                    Ok(mut o) => v.append(&mut o),
                    Err(e) => err = Some(e),
                }
            }
            match err {
                Some(e) if v.is_empty() => Err(e),
                _ => Ok(v),
            }
        };
        let objects = match objects {
            Ok(o) => o,
            Err(e) => {
                c.results
                    .errors
                    .add(None, !r.namespaced, format!("listing {gr}: {e}"));
                log.line("error", format!("listing {gr}: {e}"));
                continue;
            }
        };
        let mut items = Vec::new();
        for o in objects {
            if let Some(ns) = o.namespace()
                && !namespaces.contains(&ns)
            {
                continue;
            }
            let labels = labels_of(&o);
            if excluded_by_label(&labels) || !f.labels.matches(&labels) {
                continue;
            }
            if gr == "persistentvolumeclaims"
                && let Some(v) = o.data.pointer("/spec/volumeName").and_then(Value::as_str)
            {
                pvcs_volumes.insert(v.to_string());
            }
            if let Some(ns) = o.namespace() {
                namespaces_with_items.insert(ns);
            }
            items.push(to_item(r, &o)?);
        }
        // Named items first, in the order given; then the rest by namespace and name.
        let first = ordered.get(&gr).cloned().unwrap_or_default();
        items.sort_by_key(|i: &Item| {
            let pos = first
                .iter()
                .position(|n| *n == i.item.display())
                .unwrap_or(usize::MAX);
            (pos, i.item.namespace.clone(), i.item.name.clone())
        });
        log.line("info", format!("{gr}: {} items", items.len()));
        by_type.push((r.clone(), items));
    }

    // Related items: the volumes of backed-up claims, when their type was not taken whole.
    if let Some(pv) = d.by_group_resource("persistentvolumes").cloned()
        && !f
            .resources
            .takes("persistentvolumes", false, all_namespaces)
        && f.resources.takes_related("persistentvolumes")
        && !pvcs_volumes.is_empty()
    {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &pv.api_resource());
        let mut items = Vec::new();
        for name in &pvcs_volumes {
            match api.get_opt(name).await {
                Ok(Some(o)) if !excluded_by_label(&labels_of(&o)) => items.push(to_item(&pv, &o)?),
                Ok(_) => {}
                Err(e) => {
                    c.results
                        .errors
                        .add(None, true, format!("persistentvolumes/{name}: {e}"))
                }
            }
        }
        log.line(
            "info",
            format!(
                "persistentvolumes: {} items, related to claims",
                items.len()
            ),
        );
        by_type.push((pv, items));
    }

    // Related items: the CRDs of backed-up custom resources (Velero's rule), so that a
    // namespace-filtered backup restores into a cluster that has never seen the type.
    const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";
    if let Some(crd) = d.by_group_resource(CRDS).cloned()
        && !f.resources.takes(CRDS, false, all_namespaces)
        && f.resources.takes_related(CRDS)
    {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &crd.api_resource());
        let mut items = Vec::new();
        for (r, found) in &by_type {
            if found.is_empty() || r.group.is_empty() || !r.group.contains('.') {
                continue;
            }
            match api.get_opt(&r.group_resource()).await {
                Ok(Some(o)) if !excluded_by_label(&labels_of(&o)) => items.push(to_item(&crd, &o)?),
                Ok(_) => {}
                Err(e) => {
                    c.results
                        .errors
                        .add(None, true, format!("{CRDS}/{}: {e}", r.group_resource()))
                }
            }
        }
        if !items.is_empty() {
            log.line(
                "info",
                format!("{CRDS}: {} items, related to custom resources", items.len()),
            );
            by_type.push((crd, items));
        }
    }

    // The Namespace objects: every namespace in scope, or (with a label filter) those
    // with items or matching it themselves.
    if !matches!(&f.resources, ResourceFilter::Old { resources, .. } if !resources.includes("namespaces"))
        && !matches!(&f.resources, ResourceFilter::Scoped { cluster, .. } if cluster.exclude_list().iter().any(|e| e == "namespaces" || e == "*"))
    {
        let mut items = Vec::new();
        for n in &all_ns {
            let name = n.name_any();
            if !namespaces.contains(&name) || excluded_by_label(&labels_of(n)) {
                continue;
            }
            if f.labels.is_set()
                && !namespaces_with_items.contains(&name)
                && !f.labels.matches(&labels_of(n))
            {
                continue;
            }
            items.push(to_item(ns_res, n)?);
        }
        by_type.insert(0, (ns_res.clone(), items));
    }
    c.items = by_type.into_iter().flat_map(|(_, v)| v).collect();
    Ok(c)
}

/// Write the record's tree under `dir`.
pub fn write_record(dir: &Path, backup: &Backup, c: &Collected, log: &Log) -> Result<()> {
    let io = |what: String| move |e: std::io::Error| Error::Io { what, source: e };
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let mut refs = Vec::with_capacity(c.items.len());
    for it in &c.items {
        let p = dir.join(it.item.path());
        std::fs::create_dir_all(p.parent().expect("item paths have a parent"))
            .map_err(io(format!("create {}", p.display())))?;
        std::fs::write(
            &p,
            serde_json::to_vec_pretty(&it.object).expect("a JSON value serializes"),
        )
        .map_err(io(format!("write {}", p.display())))?;
        refs.push(it.item.clone());
    }
    std::fs::write(
        dir.join("items.json"),
        serde_json::to_vec_pretty(&refs).expect("serializes"),
    )
    .map_err(io("write items.json".into()))?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&c.results).expect("serializes"),
    )
    .map_err(io("write results.json".into()))?;
    std::fs::write(
        dir.join("backup.json"),
        serde_json::to_vec_pretty(backup).expect("serializes"),
    )
    .map_err(io("write backup.json".into()))?;
    std::fs::write(dir.join("log.txt"), log.text()).map_err(io("write log.txt".into()))?;
    Ok(())
}

/// Patch a Backup's status.
pub async fn set_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &BackupStatus,
) -> Result<()> {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("update status of backup {ns}/{name}"), e))?;
    Ok(())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// End a backup in FailedValidation, saying why.
async fn failed_validation(
    client: &Client,
    ns: &str,
    name: &str,
    mut status: BackupStatus,
    msg: String,
) -> Result<BackupOutcome> {
    status.phase = Some("FailedValidation".into());
    status.validation_errors = Some(vec![msg]);
    set_status(client, ns, name, &status).await?;
    Ok(BackupOutcome {
        status,
        results: Results::default(),
        log: String::new(),
    })
}

/// The outcome of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The final status.
    pub status: BackupStatus,
    /// Warnings and errors.
    pub results: Results,
    /// The log.
    pub log: String,
}

/// Run a Backup resource that exists in the cluster (phase New): validate, collect, store
/// the record in its location's resource repository, and keep its status current.
pub async fn run_backup(
    client: &Client,
    ns: &str,
    name: &str,
    cache_root: Option<&Path>,
) -> Result<BackupOutcome> {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    let mut backup = api
        .get(name)
        .await
        .map_err(|e| Error::kube(format!("read backup {ns}/{name}"), e))?;
    let mut log = Log::default();
    let mut status = BackupStatus {
        format_version: Some("1.1.0".into()),
        ..Default::default()
    };
    let d = Discovery::run(client).await?;
    let filters = match BackupFilters::new(&backup.spec, &d) {
        Ok(f) => f,
        Err(e) => {
            return failed_validation(client, ns, name, status, e.to_string()).await;
        }
    };
    let location =
        match Location::resolve(client, ns, backup.spec.storage_location.as_deref()).await {
            Ok(l) if l.read_only => {
                return failed_validation(
                    client,
                    ns,
                    name,
                    status,
                    format!("backup storage location {} is read-only", l.name),
                )
                .await;
            }
            Ok(l) => l,
            Err(e) => {
                return failed_validation(client, ns, name, status, e.to_string()).await;
            }
        };
    let start = now();
    let ttl = parse_go_duration(backup.spec.ttl.as_deref().unwrap_or("720h0m0s"))?;
    status.phase = Some("InProgress".into());
    status.start_timestamp = Some(start.clone());
    status.expiration = Some(Time(
        start.0 + k8s_openapi::jiff::SignedDuration::from_secs(ttl),
    ));
    set_status(client, ns, name, &status).await?;
    log.line(
        "info",
        format!("backup {ns}/{name} started, to location {}", location.name),
    );

    let collected = collect(client, &d, &backup.spec, &filters, &mut log).await;
    let mut c = match collected {
        Ok(c) => c,
        Err(e) => {
            status.phase = Some("Failed".into());
            status.failure_reason = Some(e.to_string());
            status.completion_timestamp = Some(now());
            set_status(client, ns, name, &status).await?;
            return Err(e);
        }
    };
    let total = c.items.len() as i64;
    status.progress = Some(crate::crd::BackupProgress {
        total_items: Some(total),
        items_backed_up: Some(0),
    });
    set_status(client, ns, name, &status).await?;

    // Store: the record as one snapshot of the location's resource repository.
    let who = crate::location::writer(ns);
    let store = async {
        let repo = location
            .open(&location.resources_url(), cache_root, &who)
            .await?;
        let staging = tempfile::Builder::new()
            .prefix("arca-backup-")
            .tempdir()
            .map_err(|e| Error::Io {
                what: "create a staging directory".into(),
                source: e,
            })?;
        let dir = staging.path().join(name);
        status.progress = Some(crate::crd::BackupProgress {
            total_items: Some(total),
            items_backed_up: Some(total),
        });
        status.warnings = Some(c.results.warnings.count() as i64);
        status.errors = Some(c.results.errors.count() as i64);
        status.phase = Some(
            if c.results.errors.count() > 0 {
                "PartiallyFailed"
            } else {
                "Completed"
            }
            .into(),
        );
        status.completion_timestamp = Some(now());
        backup.status = Some(status.clone());
        log.line(
            "info",
            format!(
                "backed up {total} items; stored in {}",
                location.resources_url()
            ),
        );
        write_record(&dir, &backup, &c, &log)?;
        let mut o = BackupOptions::new(vec![dir.clone()]);
        o.identity = who.clone();
        o.parent = Parent::None;
        o.tags = vec![BACKUP_TAG.to_string()];
        o.labels = BTreeMap::from([
            (BACKUP_NAME_LABEL.to_string(), name.to_string()),
            (NAMESPACE_LABEL.to_string(), ns.to_string()),
            (
                PHASE_LABEL.to_string(),
                status.phase.clone().unwrap_or_default(),
            ),
        ]);
        if let Some(s) = backup
            .labels()
            .get("velero.io/schedule-name")
            .or(backup.labels().get(SCHEDULE_NAME_LABEL))
        {
            o.labels.insert(SCHEDULE_NAME_LABEL.to_string(), s.clone());
        }
        let report = repo.backup(o, Arc::new(BackupProgress::default())).await?;
        Ok::<_, Error>(report.id)
    };
    match store.await {
        Ok(id) => {
            status.snapshot_id = Some(id.to_hex());
            set_status(client, ns, name, &status).await?;
            Ok(BackupOutcome {
                status,
                results: std::mem::take(&mut c.results),
                log: log.text(),
            })
        }
        Err(e) => {
            status.phase = Some("Failed".into());
            status.failure_reason = Some(format!("storing the backup failed: {e}"));
            status.completion_timestamp = Some(now());
            set_status(client, ns, name, &status).await?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("720h0m0s").unwrap(), 720 * 3600);
        assert_eq!(parse_go_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_go_duration("90s").unwrap(), 90);
        assert_eq!(parse_go_duration("1.5h").unwrap(), 5400);
        assert!(
            parse_go_duration("").is_err()
                && parse_go_duration("3d").is_err()
                && parse_go_duration("10").is_err()
        );
    }
}
