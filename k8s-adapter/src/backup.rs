//! Backup of cluster resources: discovery at preferred versions, Velero's filters, ordered
//! resources, related items, and the record stored as one repository snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arca_engine::{BackupOptions, BackupProgress, Parent};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::claim::RunClaim;
use crate::crd::{Backup, BackupSpec, BackupStatus};
use crate::discovery::{ApiRes, Discovery};
use crate::error::{Error, Result};
use crate::filter::{
    LabelFilter, NamespaceFilter, ResourceFilter, excluded_by_label, validate_includes_excludes,
    validate_namespaces, validate_scoped,
};
use crate::location::Location;
use crate::record::*;

/// Resources never backed up: they describe the cluster's machinery, not its workloads,
/// or are Arca's own records of the backup in progress.
const NEVER_BACKED_UP: [&str; 3] = ["events", "events.events.k8s.io", "backups.arca.dev"];

/// The TTL of a backup whose spec gives none (or `0`): Velero's `--default-backup-ttl`.
pub const DEFAULT_TTL: &str = "720h0m0s";

/// Go's largest duration (int64 nanoseconds), in nanoseconds.
const MAX_GO_DURATION_NANOS: f64 = i64::MAX as f64;

/// Parse a Go duration (`time.ParseDuration`: `720h0m0s`, `1h30m`, `1.5h`, `90s`, `250ms`,
/// `10us`, `-1h`, `0`) into nanoseconds; over Go's limit (about 2562047h) is an error, as
/// in Go.
pub fn parse_go_duration_nanos(s: &str) -> Result<i64> {
    let bad = || {
        Error::Invalid(format!(
            "duration {s:?}: use a Go duration such as 720h0m0s, 24h, 30m or 90s (units h, m, s, ms, us, ns; at most 2562047h)"
        ))
    };
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "h" => 3600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        rest = &rest[u_end..];
        total += n * unit;
    }
    if !total.is_finite() || total > MAX_GO_DURATION_NANOS {
        return Err(bad());
    }
    let nanos = total.trunc() as i64;
    Ok(if neg { -nanos } else { nanos })
}

/// A Go duration in whole seconds, truncated toward zero.
pub fn parse_go_duration(s: &str) -> Result<i64> {
    parse_go_duration_nanos(s).map(|n| n / 1_000_000_000)
}

/// A Go duration as a std one, to the nanosecond; None when invalid or negative.
pub fn parse_go_std(s: &str) -> Option<std::time::Duration> {
    let nanos = parse_go_duration_nanos(s).ok()?;
    u64::try_from(nanos)
        .ok()
        .map(std::time::Duration::from_nanos)
}

/// A duration of whole seconds as Go prints it (`720h0m0s`), as Velero writes TTLs.
pub fn format_go_duration(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sign}{sec}s"),
        (0, m, sec) => format!("{sign}{m}m{sec}s"),
        (h, m, sec) => format!("{sign}{h}h{m}m{sec}s"),
    }
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
    /// Validate and resolve, as Velero's `prepareBackupRequest`
    /// (pkg/controller/backup_controller.go); the errors are the backup's
    /// `validationErrors` (phase FailedValidation).
    pub fn new(spec: &BackupSpec, d: &Discovery) -> std::result::Result<Self, Vec<String>> {
        let v = |o: &Option<Vec<String>>| o.clone().unwrap_or_default();
        let mut errs = Vec::new();
        let old = spec.include_cluster_resources.is_some()
            || !v(&spec.included_resources).is_empty()
            || !v(&spec.excluded_resources).is_empty();
        if old {
            errs.extend(validate_includes_excludes(
                "resource",
                &v(&spec.included_resources),
                &v(&spec.excluded_resources),
            ));
        }
        errs.extend(validate_scoped(
            "cluster-scoped",
            &v(&spec.included_cluster_scoped_resources),
            &v(&spec.excluded_cluster_scoped_resources),
        ));
        errs.extend(validate_scoped(
            "namespace-scoped",
            &v(&spec.included_namespace_scoped_resources),
            &v(&spec.excluded_namespace_scoped_resources),
        ));
        errs.extend(validate_namespaces(
            &v(&spec.included_namespaces),
            &v(&spec.excluded_namespaces),
        ));
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
        );
        let labels = LabelFilter::new(
            spec.label_selector.clone(),
            spec.or_label_selectors.clone().unwrap_or_default(),
        );
        if let Some(ttl) = &spec.ttl
            && let Err(e) = parse_go_duration(ttl)
        {
            errs.push(e.to_string());
        }
        let namespaces =
            NamespaceFilter::new(&v(&spec.included_namespaces), &v(&spec.excluded_namespaces));
        let mut take = |r: Result<()>| {
            if let Err(e) = r {
                errs.push(e.to_string());
            }
        };
        take(resources.as_ref().map(|_| ()).map_err(clone_err));
        take(labels.as_ref().map(|_| ()).map_err(clone_err));
        take(namespaces.as_ref().map(|_| ()).map_err(clone_err));
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Self {
            namespaces: namespaces.expect("checked"),
            resources: resources.expect("checked"),
            labels: labels.expect("checked"),
            unknown,
        })
    }
}

fn clone_err(e: &Error) -> Error {
    Error::Invalid(e.to_string())
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
    /// The claims whose data moved (or failed to), with `snapshotMoveData`.
    pub volumes: Vec<crate::datamover::MovedVolume>,
    /// The exec hooks run (or skipped), pre and post.
    pub hooks: Vec<crate::hooks::HookRun>,
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

fn being_deleted(o: &DynamicObject) -> bool {
    o.metadata.deletion_timestamp.is_some()
}

/// Progress reported while collecting: called with the number of items so far.
pub type OnProgress<'a> = &'a mut (dyn FnMut(usize) + Send);

/// Collect the items a backup spec selects (Velero's pkg/backup/item_collector.go and
/// item_backupper.go): the types the filters take, in the namespaces they take, minus
/// items with the exclude label and items being deleted; then the items those need
/// (`backup_actions`), which bypass the label selector; then the CRDs of custom resources
/// and the Namespace objects.
pub async fn collect(
    client: &Client,
    d: &Discovery,
    spec: &BackupSpec,
    f: &BackupFilters,
    log: &mut Log,
    progress: OnProgress<'_>,
) -> Result<Collected> {
    let mut c = Collected::default();
    for u in &f.unknown {
        c.results.warnings.add(
            None,
            false,
            format!("resource {u:?} is not served by this cluster"),
        );
    }
    // Namespaces in scope: active ones the filter takes (Velero's nsTracker skips those
    // not Active).
    let ns_res = d
        .by_group_resource("namespaces")
        .ok_or_else(|| Error::Invalid("the cluster serves no namespaces".into()))?;
    let all_ns = list_all(client, ns_res, None).await?;
    let mut namespaces = BTreeSet::new();
    for n in &all_ns {
        let name = n.name_any();
        if !f.namespaces.includes(&name) {
            continue;
        }
        let phase = n.data.pointer("/status/phase").and_then(Value::as_str);
        if being_deleted(n) || phase.is_some_and(|p| p != "Active") {
            log.line("info", format!("namespace {name} is terminating: skipped"));
            continue;
        }
        namespaces.insert(name);
    }
    // An included namespace that does not exist is an error (Velero's collectNamespaces).
    let existing: BTreeSet<String> = all_ns.iter().map(|n| n.name_any()).collect();
    for inc in spec.included_namespaces.iter().flatten() {
        if inc != "*" && !crate::filter::is_glob(inc) && !existing.contains(inc) {
            let msg = format!("namespace {inc} in includedNamespaces does not exist");
            log.line("error", msg.clone());
            c.results.errors.add(None, false, msg);
        }
    }
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
    let mut namespaces_with_items: BTreeSet<String> = BTreeSet::new();
    let mut count = 0usize;
    for r in &d.preferred {
        let gr = r.group_resource();
        if NEVER_BACKED_UP.contains(&gr.as_str())
            || !r.can("list")
            || !r.can("get")
            || gr == "namespaces"
        {
            continue;
        }
        if !f.resources.takes(&gr, r.namespaced, &f.namespaces) {
            continue;
        }
        let objects = if !r.namespaced || f.namespaces.everything() {
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
            if excluded_by_label(&labels) || !f.labels.matches(&labels) || being_deleted(&o) {
                continue;
            }
            if let Some(ns) = o.namespace() {
                namespaces_with_items.insert(ns);
            }
            items.push(to_item(r, &o)?);
            // Per item; the reporter writes at most once a second.
            progress(count + items.len());
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
        count += items.len();
        progress(count);
        by_type.push((r.clone(), items));
    }

    // Related items, and theirs in turn.
    let related = collect_related(client, d, f, &namespaces, &by_type, &mut c, log).await?;
    for (_, items) in &related {
        for i in items {
            if let Some(ns) = &i.item.namespace {
                namespaces_with_items.insert(ns.clone());
            }
        }
        count += items.len();
    }
    progress(count);
    by_type.extend(related);

    // The CRDs of backed-up custom resources (Velero's backupCRD), so that a
    // namespace-filtered backup restores into a cluster that has never seen the type.
    const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";
    if let Some(crd) = d.by_group_resource(CRDS).cloned()
        && !f.resources.takes(CRDS, false, &f.namespaces)
        && f.resources.takes_related(CRDS, false)
    {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &crd.api_resource());
        let mut items = Vec::new();
        let mut done = BTreeSet::new();
        for (r, found) in &by_type {
            if found.is_empty() || !r.group.contains('.') || !done.insert(r.group_resource()) {
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
    if f.resources.takes_namespaces() {
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
    progress(c.items.len());
    Ok(c)
}

/// The items the collected ones need (`backup_actions`), fetched one by one and checked
/// as Velero's itemInclusionChecks does: namespace in scope, type not excluded, no
/// exclude label, not being deleted. Grouped by type, in the order first met.
async fn collect_related(
    client: &Client,
    d: &Discovery,
    f: &BackupFilters,
    namespaces: &BTreeSet<String>,
    by_type: &[(ApiRes, Vec<Item>)],
    c: &mut Collected,
    log: &mut Log,
) -> Result<Vec<(ApiRes, Vec<Item>)>> {
    use crate::backup_actions::{self as actions, Related};
    let key = |i: &ItemRef| Related {
        group_resource: i.group_resource(),
        namespace: i.namespace.clone(),
        name: i.name.clone(),
    };
    let mut seen: BTreeSet<Related> = by_type
        .iter()
        .flat_map(|(_, v)| v.iter().map(|i| key(&i.item)))
        .collect();
    let mut ctx = actions::Context::default();
    let wants_crbs = by_type
        .iter()
        .any(|(r, v)| !v.is_empty() && actions::needs_cluster_role_bindings(&r.group_resource()));
    if wants_crbs
        && let Some(crb) = d.by_group_resource("clusterrolebindings.rbac.authorization.k8s.io")
    {
        match list_all(client, crb, None).await {
            Ok(list) => {
                ctx.cluster_role_bindings = list
                    .iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .collect()
            }
            Err(e) => {
                c.results
                    .warnings
                    .add(None, true, format!("listing cluster role bindings: {e}"))
            }
        }
    }
    let mut queue: std::collections::VecDeque<Related> = by_type
        .iter()
        .flat_map(|(r, v)| {
            let gr = r.group_resource();
            let ctx = &ctx;
            v.iter()
                .flat_map(move |i| actions::related(&gr, &i.object, ctx))
        })
        .collect();
    let mut out: Vec<(ApiRes, Vec<Item>)> = Vec::new();
    while let Some(rel) = queue.pop_front() {
        if !seen.insert(rel.clone()) {
            continue;
        }
        let Some(r) = d.by_group_resource(&rel.group_resource).cloned() else {
            continue;
        };
        if let Some(ns) = &rel.namespace
            && !namespaces.contains(ns)
        {
            continue;
        }
        if !f.resources.takes_related(&rel.group_resource, r.namespaced) {
            continue;
        }
        let ar = r.api_resource();
        let api: Api<DynamicObject> = match &rel.namespace {
            Some(ns) if r.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let what = match &rel.namespace {
            Some(ns) => format!("{} {ns}/{}", rel.group_resource, rel.name),
            None => format!("{} {}", rel.group_resource, rel.name),
        };
        let o = match api.get_opt(&rel.name).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                let msg = format!("{what}: needed by a backed-up item, but not found");
                log.line("warning", msg.clone());
                c.results
                    .warnings
                    .add(rel.namespace.as_deref(), rel.namespace.is_none(), msg);
                continue;
            }
            Err(e) => {
                c.results.errors.add(
                    rel.namespace.as_deref(),
                    rel.namespace.is_none(),
                    format!("{what}: {e}"),
                );
                continue;
            }
        };
        if excluded_by_label(&labels_of(&o)) || being_deleted(&o) {
            continue;
        }
        let item = to_item(&r, &o)?;
        queue.extend(actions::related(&rel.group_resource, &item.object, &ctx));
        log.line(
            "info",
            format!("{what}: backed up as needed by another item"),
        );
        match out
            .iter_mut()
            .find(|(t, _)| t.group_resource() == rel.group_resource)
        {
            Some((_, v)) => v.push(item),
            None => out.push((r, vec![item])),
        }
    }
    Ok(out)
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
    if !c.volumes.is_empty() {
        std::fs::write(
            dir.join(crate::datamover::VOLUMES_FILE),
            serde_json::to_vec_pretty(&c.volumes).expect("serializes"),
        )
        .map_err(io(format!("write {}", crate::datamover::VOLUMES_FILE)))?;
    }
    if !c.hooks.is_empty() {
        std::fs::write(
            dir.join(crate::hooks::HOOKS_FILE),
            serde_json::to_vec_pretty(&c.hooks).expect("serializes"),
        )
        .map_err(io(format!("write {}", crate::hooks::HOOKS_FILE)))?;
    }
    Ok(())
}

/// Patch a Backup's status, if this run still holds it ([`RunClaim`]).
pub async fn set_status(claim: &RunClaim<Backup>, status: &BackupStatus) -> Result<()> {
    claim.status(status).await.map(drop)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// End a backup in FailedValidation, saying why.
async fn failed_validation(
    claim: &RunClaim<Backup>,
    mut status: BackupStatus,
    msgs: Vec<String>,
) -> Result<BackupOutcome> {
    status.phase = Some("FailedValidation".into());
    status.validation_errors = Some(msgs);
    set_status(claim, &status).await?;
    Ok(BackupOutcome {
        status,
        results: Results::default(),
        log: String::new(),
    })
}

/// A task aborted when dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A run that ends before it started: phase Failed with the reason, nothing stored.
async fn failed(
    claim: &RunClaim<Backup>,
    mut status: BackupStatus,
    reason: String,
) -> Result<BackupOutcome> {
    status.phase = Some("Failed".into());
    status.completion_timestamp = Some(now());
    status.failure_reason = Some(reason.clone());
    set_status(claim, &status).await?;
    let mut log = Log::default();
    log.line("error", reason);
    Ok(BackupOutcome {
        status,
        results: Results::default(),
        log: log.text(),
    })
}

/// Whether a location already holds a backup of this name, and whose.
enum Stored {
    No,
    /// This Backup's own record (same UID), and its stored status.
    This(arca_format::SnapshotId, Box<BackupStatus>),
    /// Another backup's.
    Other,
}

async fn stored_as(repo: &arca_engine::Indexed, name: &str, backup: &Backup) -> Result<Stored> {
    let Some((id, _)) = crate::manage::stored_backups(repo).await?.remove(name) else {
        return Ok(Stored::No);
    };
    let stored: Backup = crate::restore::read_json(repo, &id, "backup.json").await?;
    Ok(match (&stored.metadata.uid, &backup.metadata.uid) {
        (Some(a), Some(b)) if a == b => {
            Stored::This(id, Box::new(stored.status.unwrap_or_default()))
        }
        _ => Stored::Other,
    })
}

/// This Backup's record was stored by a server that stopped before writing the status:
/// the stored status is the truth.
async fn adopt(
    claim: &RunClaim<Backup>,
    ns: &str,
    name: &str,
    id: arca_format::SnapshotId,
    mut status: BackupStatus,
    log: &mut Log,
) -> Result<BackupOutcome> {
    status.snapshot_id = Some(id.to_hex());
    set_status(claim, &status).await?;
    log.line(
        "info",
        format!(
            "backup {ns}/{name} had been stored (record {}) by a server that stopped: its status is taken from the record",
            id.short()
        ),
    );
    Ok(BackupOutcome {
        status,
        results: Results::default(),
        log: log.text(),
    })
}

/// After a run was dropped for a cancel: whether its record had been stored already (the
/// cancel came after the commit); if so the record's status is written (adopted) and
/// the backup stands as it ended.
pub async fn adopt_if_stored(
    client: &Client,
    claim: &RunClaim<Backup>,
    ns: &str,
    name: &str,
    cache_root: Option<&Path>,
) -> Result<bool> {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    let Some(b) = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("read backup {ns}/{name}"), e))?
    else {
        return Ok(false);
    };
    // The location is written into the spec before anything is collected.
    let Some(loc) = b.spec.storage_location.clone() else {
        return Ok(false);
    };
    let location = Location::resolve(client, ns, Some(&loc), "").await?;
    let repo = location
        .open(
            &location.resources_url(),
            cache_root,
            &crate::location::writer(ns),
        )
        .await?;
    match stored_as(&repo, name, &b).await? {
        Stored::This(id, st) => {
            adopt(claim, ns, name, id, *st, &mut Log::default()).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
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

/// Log how each volume's data movement ended; one that did not complete is an error of
/// the backup (PartiallyFailed).
fn record_volumes(volumes: &[crate::datamover::MovedVolume], c: &mut Collected, log: &mut Log) {
    for v in volumes {
        let (what, verb, kind) = if v.by_pod_volume_backup() {
            (
                format!(
                    "{} (PodVolumeBackup {})",
                    v.what(),
                    v.pod_volume_backup.as_deref().unwrap_or_default()
                ),
                "backed up",
                "file-system backup",
            )
        } else {
            (
                format!("{} (DataUpload {})", v.what(), v.data_upload),
                "moved",
                "data movement",
            )
        };
        if v.restorable() {
            log.line(
                "info",
                format!(
                    "{what}: {} bytes {verb} to snapshot {}",
                    v.bytes.unwrap_or(0),
                    v.snapshot_id.as_deref().unwrap_or_default()
                ),
            );
        } else {
            let e = format!(
                "{what}: {kind} {}: {}",
                v.phase,
                v.message.as_deref().unwrap_or("no reason given")
            );
            log.line("error", e.clone());
            c.results.errors.add(Some(&v.namespace), false, e);
        }
    }
}

/// File-system backup of the pod volumes taken (Velero's BackupPodVolumes, then
/// WaitAllPodVolumesProcessed): a PodVolumeBackup per chosen volume of each running pod,
/// waited on while the backup is InProgress; the outcome kept in `c` (a failed one is an
/// error of the backup). Returns the claims chosen, which take no CSI snapshot.
async fn back_up_pod_volumes(
    client: &Client,
    ns: &str,
    backup: &Backup,
    c: &mut Collected,
    log: &mut Log,
    pvcs_included: bool,
) -> Result<BTreeSet<(String, String)>> {
    use crate::datamover::{BACKUP_UID, csi, podvolume};
    let started = podvolume::start_backups(client, ns, backup, &c.items, pvcs_included).await?;
    for line in &started.info {
        log.line("info", line.clone());
    }
    for (wns, w) in &started.warnings {
        log.line("warning", w.clone());
        c.results.warnings.add(Some(wns), false, w.clone());
    }
    for (ens, e) in &started.errors {
        log.line("error", e.clone());
        c.results.errors.add(Some(ens), false, e.clone());
    }
    if started.backups.is_empty() {
        return Ok(started.claims);
    }
    let timeout = podvolume::timeout(
        backup.annotations(),
        backup.spec.item_operation_timeout.as_deref(),
    );
    let selector = format!("{BACKUP_UID}={}", backup.uid().unwrap_or_default());
    let done: Vec<crate::crd::PodVolumeBackup> = csi::wait_all(
        client,
        ns,
        &selector,
        started.backups.len(),
        timeout,
        |_, _| async {},
    )
    .await?;
    let results = podvolume::results(&started, &done);
    record_volumes(&results, c, log);
    c.volumes.extend(results);
    Ok(started.claims)
}

/// Take a snapshot of each bound claim and start its DataUpload (the uploads are waited
/// on by [`wait_volume_data`]). With `for_post_hooks`, also wait until the snapshots are
/// taken, which post hooks wait for (Velero's WaitUntilVSCHandleIsReady).
async fn start_volume_data(
    client: &Client,
    ns: &str,
    backup: &Backup,
    c: &mut Collected,
    log: &mut Log,
    by_fs: &BTreeSet<(String, String)>,
    for_post_hooks: bool,
) -> Result<Vec<(crate::datamover::csi::Claim, String)>> {
    use crate::datamover::csi;
    // A claim a pod's volumes take by file system takes no snapshot (Velero's
    // ShouldPerformSnapshot).
    let claims: Vec<_> = csi::claims(&c.items)
        .into_iter()
        .filter(|cl| !by_fs.contains(&(cl.namespace.clone(), cl.name.clone())))
        .collect();
    let mut moved = csi::Moved::default();
    let started = csi::start_uploads(client, ns, backup, &claims, &mut moved).await?;
    for line in moved.info.drain(..) {
        log.line("info", line);
    }
    for (cns, e) in moved.errors.drain(..) {
        log.line("error", e.clone());
        c.results.errors.add(Some(&cns), false, e);
    }
    if for_post_hooks && !started.is_empty() {
        let namespaces = started.iter().map(|(cl, _)| cl.namespace.clone()).collect();
        let timeout = backup
            .spec
            .csi_snapshot_timeout
            .as_deref()
            .and_then(parse_go_std)
            .unwrap_or(std::time::Duration::from_secs(600));
        let uid = backup.uid().unwrap_or_default();
        for w in csi::wait_snapshots_taken(client, &uid, &namespaces, timeout).await {
            let w = format!("{w}: post hooks run without waiting for it");
            log.line("warning", w.clone());
            c.results.warnings.add(None, false, w);
        }
    }
    Ok(started)
}

/// Wait for the DataUploads started (phase WaitingForPluginOperations) and keep their
/// outcome in `c` (a failed upload is an error of the backup: PartiallyFailed).
#[allow(clippy::too_many_arguments)]
async fn wait_volume_data(
    client: &Client,
    claim: &RunClaim<Backup>,
    ns: &str,
    backup: &Backup,
    c: &mut Collected,
    status: &mut BackupStatus,
    log: &mut Log,
    started: Vec<(crate::datamover::csi::Claim, String)>,
    on_waiting: impl FnOnce(),
) -> Result<()> {
    use crate::datamover::{BACKUP_UID, csi};
    if started.is_empty() {
        return Ok(());
    }
    status.phase = Some("WaitingForPluginOperations".into());
    status.backup_item_operations_attempted = Some(started.len() as i64);
    set_status(claim, status).await?;
    on_waiting();
    let timeout = backup
        .spec
        .item_operation_timeout
        .as_deref()
        .and_then(parse_go_std)
        .unwrap_or(std::time::Duration::from_secs(4 * 3600));
    let selector = format!("{BACKUP_UID}={}", backup.uid().unwrap_or_default());
    let st = std::sync::Mutex::new(status.clone());
    let uploads: Vec<crate::crd::DataUpload> = csi::wait_all(
        client,
        ns,
        &selector,
        started.len(),
        timeout,
        |done, failed| {
            let s = {
                let mut s = st.lock().expect("lock");
                s.backup_item_operations_completed = Some(done);
                s.backup_item_operations_failed = Some(failed);
                s.clone()
            };
            async move {
                // Advisory: the next change writes again.
                let _ = set_status(claim, &s).await;
            }
        },
    )
    .await?;
    *status = st.into_inner().expect("lock");
    let moved = csi::results(&started, &uploads);
    record_volumes(&moved, c, log);
    let (done, failed, _) = csi::tally(moved.iter().map(|v| v.phase.as_str()));
    status.backup_item_operations_completed = Some(done);
    status.backup_item_operations_failed = Some(failed + (moved.len() as i64 - done - failed));
    c.volumes.extend(moved);
    status.phase = Some("Finalizing".into());
    set_status(claim, status).await?;
    Ok(())
}

/// The Backup annotation naming the pods whose pre hooks may have run and whose post hooks
/// have not (`namespace/name`, JSON): what a run stopped halfway (canceled, failed, its
/// server killed) owes a thaw, read by the next run and by the cancel.
pub const FROZEN_ANNOTATION: &str = "arca.dev/hooks-frozen";

/// Set ("true") beside [`FROZEN_ANNOTATION`] once the run that wrote it has run its pre
/// hooks: the list then names only the pods they left frozen, not every pod they might
/// freeze. A run taken over trusts only such a list to say which pods are not its own to
/// thaw.
pub const FROZEN_SETTLED_ANNOTATION: &str = "arca.dev/hooks-frozen-settled";

/// How long a run taken over waits for the newer run's list to settle before it thaws
/// all it froze. A server that lost its Lease waits this much longer for its thaws; one
/// told to stop cuts the wait short ([`cut_settle_waits`]).
pub const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

/// Set as the server is told to stop: thaws waiting for a newer run's list thaw all at
/// once rather than die with the process, leaving pods frozen that no list names.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Thaws running on tasks of their own (a dropped run's), by backup: the next run of the
/// same backup, and a server stopping, wait for them.
static THAWS: std::sync::Mutex<Vec<(String, tokio::task::JoinHandle<()>)>> =
    std::sync::Mutex::new(Vec::new());

/// Wait for the thaws still running: of one backup (`ns/name`), or all (at most
/// `limit`, for a server stopping).
pub async fn wait_thaws(of: Option<&str>, limit: std::time::Duration) {
    let handles: Vec<_> = {
        let mut t = THAWS.lock().expect("lock");
        let (mine, rest): (Vec<_>, Vec<_>) =
            t.drain(..).partition(|(k, _)| of.is_none_or(|o| o == k));
        *t = rest;
        mine.into_iter().map(|(_, h)| h).collect()
    };
    let _ = tokio::time::timeout(limit, futures::future::join_all(handles)).await;
}

/// Thaws waiting for a newer run's list thaw all they froze now (a server told to stop).
pub fn cut_settle_waits() {
    STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Record the pods this run may freeze, or (`settled`, after its pre hooks) those it
/// froze (none: forget them), through the run's claim: a run another has taken over
/// never rewrites the newer run's list.
async fn set_frozen(
    claim: &RunClaim<Backup>,
    ns: &str,
    name: &str,
    pods: &[Value],
    settled: bool,
) -> Result<()> {
    let v = (!pods.is_empty()).then(|| {
        let keys: Vec<String> = pods
            .iter()
            .map(|p| {
                let (pns, pod) = crate::hooks::backup::key(p);
                format!("{pns}/{pod}")
            })
            .collect();
        serde_json::to_string(&keys).expect("serializes")
    });
    let settled = (settled && v.is_some()).then_some("true");
    let patch = serde_json::json!({"metadata": {"annotations": {
        FROZEN_ANNOTATION: v,
        FROZEN_SETTLED_ANNOTATION: settled,
    }}});
    claim.patch(&patch).await.map(drop).inspect_err(|e| {
        tracing::warn!("backup {ns}/{name}: recording the pods its hooks freeze: {e}");
    })
}

/// Run the post hooks of the pods a stopped run of this backup recorded as frozen (read
/// live), then forget them; logged, not counted (a thaw of what was not frozen may fail).
/// Called as a run begins, and when a backup is canceled.
pub async fn thaw_recorded(
    client: &Client,
    claim: &RunClaim<Backup>,
    ns: &str,
    name: &str,
) -> Vec<String> {
    wait_thaws(
        Some(&format!("{ns}/{name}")),
        std::time::Duration::from_secs(600),
    )
    .await;
    // Read through the claim: taken over (a canceled run's cancel arriving late), the
    // list is the newer run's.
    let Ok(b) = claim.read().await else {
        return Vec::new();
    };
    let Some(Recorded { keys, .. }) = recorded(&b) else {
        return Vec::new();
    };
    let specs = b.spec.hook_specs();
    let mut pods = Vec::new();
    for k in keys {
        if let Some((pns, pod)) = k.split_once('/')
            && let Ok(Some(p)) = crate::hooks::read_pod(client, pns, pod).await
        {
            pods.push(p);
        }
    }
    let refs: Vec<&Value> = pods.iter().collect();
    let done = crate::hooks::backup::run(
        client,
        crate::hooks::backup::Phase::Post,
        &refs,
        &specs,
        &Default::default(),
    )
    .await;
    let _ = set_frozen(claim, ns, name, &[], false).await;
    done.runs
        .iter()
        .map(|r| format!("post hooks of a stopped run, run now: {}", r.log_text()))
        .collect()
}

/// The pods a Backup's annotations record as frozen (`ns/name`).
#[derive(Debug, Default)]
struct Recorded {
    keys: Vec<String>,
    /// Written after the pre hooks: `keys` are frozen, not only planned.
    settled: bool,
}

/// The pods a Backup's annotations record as frozen, if any.
fn recorded(b: &Backup) -> Option<Recorded> {
    let a = b.annotations();
    let keys = a
        .get(FROZEN_ANNOTATION)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())?;
    let settled = a.get(FROZEN_SETTLED_ANNOTATION).map(String::as_str) == Some("true");
    Some(Recorded { keys, settled })
}

/// The pods a dropped run froze that it still thaws itself, or None while it cannot
/// tell yet. Its own run still (canceled, failed, or its claim unreadable: a pod left
/// frozen stops its application, an early thaw only weakens a newer run's copy): all.
/// Taken over (or deleted and made again), a settled list names pods that are the
/// claim holder's to thaw: frozen by that run (its thaw of this run's list undid this
/// run's freeze first), or this run's own list, which that run thaws as it begins; so
/// they are left alone, since a thaw here could undo the newer run's freeze in the
/// middle of its backup. A list not settled names pods the newer run may yet fail to
/// freeze (this run holding them frozen): wait. No list: nobody else thaws them. Pure.
fn still_mine_to_thaw(
    mine: Vec<Value>,
    superseded: bool,
    recorded: Option<&Recorded>,
) -> Option<Vec<Value>> {
    let Some(r) = recorded.filter(|_| superseded) else {
        return Some(mine);
    };
    if !r.settled {
        return None;
    }
    Some(
        mine.into_iter()
            .filter(|p| {
                let (pns, pod) = crate::hooks::backup::key(p);
                !r.keys.contains(&format!("{pns}/{pod}"))
            })
            .collect(),
    )
}

/// Post hooks still owed when dropped (a canceled run): run on a task of their own for the
/// pods still frozen, registered so that the next run and a stopping server wait for it.
struct Thaw(
    Client,
    Arc<RunClaim<Backup>>,
    crate::hooks::backup::Frozen,
    String,
    String,
    Vec<crate::crd::BackupResourceHookSpec>,
);

impl Drop for Thaw {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.2.lock().expect("lock"));
        if pods.is_empty() {
            return;
        }
        let (client, claim) = (self.0.clone(), self.1.clone());
        let (ns, name) = (self.3.clone(), self.4.clone());
        let specs = std::mem::take(&mut self.5);
        let task = tokio::spawn(async move {
            let superseded = matches!(claim.read().await, Err(Error::Superseded(_)));
            let waited = tokio::time::Instant::now();
            let (froze, mut said) = (pods.len(), false);
            let pods = loop {
                // The Backup as it is now (or made again), not through the claim.
                let list = match superseded {
                    true => Api::<Backup>::namespaced(client.clone(), &ns)
                        .get_opt(&name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|b| recorded(&b)),
                    false => None,
                };
                match still_mine_to_thaw(pods.clone(), superseded, list.as_ref()) {
                    Some(p) => break p,
                    None if waited.elapsed() >= SETTLE_WAIT
                        || STOPPING.load(std::sync::atomic::Ordering::Relaxed) =>
                    {
                        tracing::warn!(
                            "backup {ns}/{name}: the run that took it over has not settled its frozen pods (waited {:?}, at most {SETTLE_WAIT:?}, less when stopping): thawing all this run froze",
                            waited.elapsed()
                        );
                        break pods;
                    }
                    None => {
                        if !said {
                            said = true;
                            tracing::info!(
                                "backup {ns}/{name}: taken over with pods frozen; waiting for the run that took it over to settle which it froze"
                            );
                        }
                        tokio::time::sleep(SETTLE_POLL).await
                    }
                }
            };
            if superseded {
                tracing::info!(
                    "backup {ns}/{name}: taken over: {} frozen pod(s) left to the run that took it over, {} thawed here",
                    froze - pods.len(),
                    pods.len()
                );
            }
            let refs: Vec<&Value> = pods.iter().collect();
            let done = crate::hooks::backup::run(
                &client,
                crate::hooks::backup::Phase::Post,
                &refs,
                &specs,
                &Default::default(),
            )
            .await;
            for r in done.runs {
                tracing::warn!(
                    "backup {ns}/{name} stopped before its post hooks; run now: {}",
                    r.log_text()
                );
            }
            let _ = set_frozen(&claim, &ns, &name, &[], false).await;
        });
        THAWS
            .lock()
            .expect("lock")
            .push((format!("{}/{}", self.3, self.4), task));
    }
}

/// Run one phase of exec hooks for the pods backed up, keeping every run (stored as
/// `hooks.json`), logging each with its output, and counting failures: with onError Fail
/// an error of the backup (PartiallyFailed), with Continue a warning; a pod not running
/// is a warning. The pods a Fail hook failed in.
#[allow(clippy::too_many_arguments)]
async fn run_hooks(
    client: &Client,
    phase: crate::hooks::backup::Phase,
    specs: &[crate::crd::BackupResourceHookSpec],
    pods: &[Value],
    frozen: &crate::hooks::backup::Frozen,
    c: &mut Collected,
    log: &mut Log,
    runs: &mut Vec<crate::hooks::HookRun>,
) -> BTreeSet<(String, String)> {
    let pods: Vec<&Value> = pods.iter().collect();
    let done = crate::hooks::backup::run(client, phase, &pods, specs, frozen).await;
    for (wns, w) in done.warnings {
        log.line("warning", w.clone());
        c.results.warnings.add(Some(&wns), false, w);
    }
    for r in &done.runs {
        let level = r.level();
        log.line(level, r.log_text());
        match level {
            "error" => c.results.errors.add(Some(&r.namespace), false, r.summary()),
            "warning" => c
                .results
                .warnings
                .add(Some(&r.namespace), false, r.summary()),
            _ => {}
        }
    }
    runs.extend(done.runs);
    done.failed_pods
}

/// Run a Backup resource that exists in the cluster (phase New): validate, collect, store
/// the record in its location's resource repository, and keep its status current.
pub async fn run_backup(
    client: &Client,
    claim: Arc<RunClaim<Backup>>,
    ns: &str,
    name: &str,
    cache_root: Option<&Path>,
    default_location: &str,
    on_waiting: impl FnOnce() + Send,
) -> Result<BackupOutcome> {
    let shared = claim;
    let claim = &*shared;
    // As the claim left it (read fresh before, then written by the claim).
    let mut backup = claim.claimed().clone();
    let mut log = Log::default();
    // A run of this backup stopped halfway (canceled, failed, its server killed) may have
    // frozen pods it never thawed: their post hooks first, so that the pre hooks find
    // them as they expect (Velero fails such a backup and thaws nothing).
    for line in thaw_recorded(client, claim, ns, name).await {
        log.line("info", line);
    }
    let mut status = BackupStatus {
        format_version: Some("1.1.0".into()),
        ..Default::default()
    };
    let d = Discovery::run(client).await?;

    // Velero's prepareBackupRequest (pkg/controller/backup_controller.go): namespaces
    // labelled exclude-from-backup join the excludes; the location and the TTL are
    // resolved; all of it is written into the Backup, so that what it says is what ran.
    let mut errs = Vec::new();
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut label_excluded = BTreeSet::new();
    for l in crate::filter::EXCLUDE_LABELS {
        match ns_api
            .list(&ListParams::default().labels(&format!("{l}=true")))
            .await
        {
            Ok(list) => label_excluded.extend(list.items.iter().map(|n| n.name_any())),
            Err(e) => errs.push(format!("error getting namespace list: {e}")),
        }
    }
    if !label_excluded.is_empty() {
        let ex = backup.spec.excluded_namespaces.get_or_insert_with(Vec::new);
        for n in &label_excluded {
            if !ex.contains(n) {
                ex.push(n.clone());
            }
        }
    }
    if backup
        .spec
        .ttl
        .as_deref()
        .is_none_or(|t| parse_go_duration(t).is_ok_and(|s| s == 0))
    {
        backup.spec.ttl = Some(DEFAULT_TTL.to_string());
    }
    // Velero sets the expiration before validating: a backup that fails validation (or
    // before it starts) expires too, and the GC takes it.
    if let Ok(ttl) = parse_go_duration(backup.spec.ttl.as_deref().unwrap_or(DEFAULT_TTL)) {
        status.expiration = now()
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(ttl))
            .ok()
            .map(Time);
    }
    let location = match Location::resolve(
        client,
        ns,
        backup.spec.storage_location.as_deref(),
        default_location,
    )
    .await
    {
        Ok(l) => {
            // Velero's prepareBackupRequest: not to a location its validation found
            // unusable (a location not yet validated is tried).
            if l.phase.as_deref() == Some("Unavailable") {
                errs.push(format!(
                        "backup can't be created because BackupStorageLocation {} is in Unavailable status",
                        l.name
                    ));
            }
            if l.read_only {
                errs.push(format!(
                    "backup storage location {} is in read-only mode: it takes no new backups",
                    l.name
                ));
            }
            backup.spec.storage_location = Some(l.name.clone());
            Some(l)
        }
        Err(e) => {
            errs.push(e.to_string());
            None
        }
    };
    let mut labels = backup.labels().clone();
    if let Some(l) = &location {
        labels.insert(STORAGE_LOCATION_LABEL.to_string(), label_value(&l.name));
    }
    backup.metadata.labels = Some(labels.clone());
    claim
        .patch(&serde_json::json!({
            "metadata": { "labels": labels },
            "spec": backup.spec,
        }))
        .await?;
    let filters = match BackupFilters::new(&backup.spec, &d) {
        Ok(f) => Some(f),
        Err(e) => {
            errs.extend(e);
            None
        }
    };
    errs.extend(crate::hooks::backup::validate(&backup.spec.hook_specs()));
    let (Some(filters), Some(location), true) = (filters, location, errs.is_empty()) else {
        return failed_validation(claim, status, errs).await;
    };
    // Velero's runBackup refuses a name its location already holds ("backup already exists
    // in object storage"): another cluster's backup of that name, or one synced into this
    // cluster, must never be shadowed by a new record. The one exception is this very
    // Backup (same UID), stored by a server that stopped before it wrote the status: its
    // record is adopted, not written twice.
    let who = crate::location::writer(ns);
    let repo = match location
        .open(&location.resources_url(), cache_root, &who)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("error checking if backup already exists in object storage: {e}");
            return failed(claim, status, reason).await;
        }
    };
    match stored_as(&repo, name, &backup).await {
        Ok(Stored::No) => {}
        Ok(Stored::This(id, st)) => return adopt(claim, ns, name, id, *st, &mut log).await,
        Ok(Stored::Other) => {
            let reason = "backup already exists in object storage".to_string();
            return failed(claim, status, reason).await;
        }
        Err(e) => {
            let reason = format!("error checking if backup already exists in object storage: {e}");
            return failed(claim, status, reason).await;
        }
    }
    for n in &label_excluded {
        log.line(
            "info",
            format!(
                "namespace {n} is labelled exclude-from-backup: left out with everything in it"
            ),
        );
    }
    let start = now();
    let ttl = parse_go_duration(backup.spec.ttl.as_deref().unwrap_or(DEFAULT_TTL))?;
    status.phase = Some("InProgress".into());
    status.start_timestamp = Some(start.clone());
    // Within Go's range, yet past what a timestamp holds (year 9999): no expiration.
    status.expiration = start
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(ttl))
        .ok()
        .map(Time);
    set_status(claim, &status).await?;
    log.line(
        "info",
        format!("backup {ns}/{name} started, to location {}", location.name),
    );

    // Progress while collecting, written at most once a second (as Velero's ticker).
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    // Aborted if this run is dropped (a cancelled backup): no progress write may land
    // after the Canceled status.
    let mut reporter = AbortOnDrop({
        let (claim, mut st) = (shared.clone(), status.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            // After a slow list, one write, not a burst of the ticks missed.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while rx.changed().await.is_ok() {
                tick.tick().await;
                let n = *rx.borrow_and_update() as i64;
                st.progress = Some(crate::crd::BackupProgress {
                    total_items: Some(n),
                    items_backed_up: Some(n),
                });
                // Progress is advisory: a failed write is made good by the next one.
                let _ = set_status(&claim, &st).await;
            }
        })
    });
    let mut on_progress = move |n: usize| {
        let _ = tx.send(n);
    };
    let collected = collect(
        client,
        &d,
        &backup.spec,
        &filters,
        &mut log,
        &mut on_progress,
    )
    .await;
    drop(on_progress);
    // Let the last progress write land before the statuses that follow it.
    let _ = (&mut reporter.0).await;
    let mut c = match collected {
        Ok(c) => c,
        Err(e) => {
            status.phase = Some("Failed".into());
            status.failure_reason = Some(e.to_string());
            status.completion_timestamp = Some(now());
            set_status(claim, &status).await?;
            return Err(e);
        }
    };
    crate::server::pause_point("backup-collected").await;
    let total = c.items.len() as i64;
    status.progress = Some(crate::crd::BackupProgress {
        total_items: Some(total),
        items_backed_up: Some(0),
    });
    set_status(claim, &status).await?;

    // Pre hooks, before any volume is read or snapshotted (Velero's
    // handleItemBlockPreHooks). Pods run them one after another; every pod's pre hooks run
    // before the first volume is taken, and post hooks after the last is taken. A pod
    // whose Fail hook failed is left out, with the volumes it would have had read by file
    // system (Velero's backupItemBlock).
    let hook_specs = backup.spec.hook_specs();
    let pods_of = |c: &Collected| -> Vec<Value> {
        c.items
            .iter()
            .filter(|i| i.item.group_resource() == "pods")
            .map(|i| i.object.clone())
            .collect()
    };
    let mut hook_runs = Vec::new();
    let frozen = crate::hooks::backup::Frozen::default();
    // Every pod with pre hooks is recorded on the Backup before they run, and forgotten
    // after the post hooks; a run dropped in between thaws on a task of its own.
    let may_freeze: Vec<Value> = pods_of(&c)
        .into_iter()
        .filter(|p| {
            !crate::hooks::backup::planned(p, &hook_specs, crate::hooks::backup::Phase::Pre)
                .0
                .is_empty()
        })
        .collect();
    // Not recorded, nothing is frozen: a run taken over meanwhile (Superseded) stops
    // here, and a pod frozen with no record could stay frozen after a kill -9.
    if !may_freeze.is_empty() {
        set_frozen(claim, ns, name, &may_freeze, false).await?;
    }
    let _thaw = Thaw(
        client.clone(),
        shared.clone(),
        frozen.clone(),
        ns.to_string(),
        name.to_string(),
        hook_specs.clone(),
    );
    let failed_pods = run_hooks(
        client,
        crate::hooks::backup::Phase::Pre,
        &hook_specs,
        &pods_of(&c),
        &frozen,
        &mut c,
        &mut log,
        &mut hook_runs,
    )
    .await;
    let pvcs_included =
        filters
            .resources
            .takes("persistentvolumeclaims", true, &filters.namespaces);
    let mut left_out_claims = BTreeSet::new();
    if !failed_pods.is_empty() {
        let default_fs = backup.spec.default_volumes_to_fs_backup == Some(true);
        c.items.retain(|i| {
            let failed = i.item.group_resource() == "pods"
                && failed_pods.contains(&(
                    i.item.namespace.clone().unwrap_or_default(),
                    i.item.name.clone(),
                ));
            if failed {
                let (chosen, _) = crate::datamover::podvolume::volumes_to_back_up(
                    &i.object,
                    default_fs,
                    pvcs_included,
                );
                for v in chosen {
                    if let Some(pvc) = v.pvc {
                        left_out_claims.insert((i.item.namespace.clone().unwrap_or_default(), pvc));
                    }
                }
            }
            !failed
        });
        for (pns, pod) in &failed_pods {
            let e = format!(
                "pod {pns}/{pod}: a pre hook with onError Fail failed: the pod is not backed up, nor the volumes it has read by file system"
            );
            log.line("error", e.clone());
            c.results.errors.add(Some(pns), false, e);
        }
    }
    // Settled: the pods the pre hooks left frozen. Not written (logged), the list stays
    // the larger one, which a run taken over waits on, then thaws all it froze.
    if !may_freeze.is_empty() {
        let now_frozen = frozen.lock().expect("lock").clone();
        let _ = set_frozen(claim, ns, name, &now_frozen, true).await;
    }
    // Post hooks of the pods backed up, and of left-out pods an earlier pre hook froze.
    let mut post_pods = pods_of(&c);
    for p in frozen.lock().expect("lock").iter() {
        if !post_pods.iter().any(|q| q["metadata"] == p["metadata"]) {
            post_pods.push(p.clone());
        }
    }
    let post_planned = post_pods.iter().any(|p| {
        !crate::hooks::backup::planned(p, &hook_specs, crate::hooks::backup::Phase::Post)
            .0
            .is_empty()
    });
    crate::server::pause_point("backup-pre-hooks-run").await;

    // Pod volumes by file system, read live while the backup is InProgress; then the
    // snapshots of the claims whose data moves (Velero's CSI snapshot data movement).
    let backup_now = claim.read().await?;
    let volumes =
        match back_up_pod_volumes(client, ns, &backup_now, &mut c, &mut log, pvcs_included).await {
            Err(e) => Err(format!("backing up pod volumes failed: {e}")),
            Ok(mut by_fs) if backup.spec.snapshot_move_data == Some(true) => {
                // A left-out pod's file-system claims take no snapshot either (Velero's
                // PVC action checks the pods' opt-in): it was not quiesced.
                by_fs.extend(left_out_claims);
                start_volume_data(
                    client,
                    ns,
                    &backup_now,
                    &mut c,
                    &mut log,
                    &by_fs,
                    post_planned,
                )
                .await
                .map_err(|e| format!("moving volume data failed: {e}"))
            }
            Ok(_) => Ok(Vec::new()),
        };
    // Taken over meanwhile (stalled past its Lease), the newer run may have frozen these
    // pods again: dropped here, the run thaws only what is still its own (`Thaw`).
    if let Err(e @ Error::Superseded(_)) = claim.read().await {
        return Err(e);
    }
    // Post hooks, whatever became of the volumes: an application frozen by its pre hook
    // is thawed even when the backup fails (Velero skips them then); also a left-out pod
    // whose earlier pre hooks succeeded.
    run_hooks(
        client,
        crate::hooks::backup::Phase::Post,
        &hook_specs,
        &post_pods,
        &frozen,
        &mut c,
        &mut log,
        &mut hook_runs,
    )
    .await;
    if !may_freeze.is_empty() {
        // Not forgotten (logged): the next run thaws them again, which a thaw tolerates.
        let _ = set_frozen(claim, ns, name, &[], false).await;
    }
    if !hook_runs.is_empty() {
        status.hook_status = Some(crate::hooks::status(&hook_runs));
    }
    c.hooks = hook_runs;
    let started = match volumes {
        Ok(s) => s,
        Err(reason) => {
            status.phase = Some("Failed".into());
            status.failure_reason = Some(reason.clone());
            status.completion_timestamp = Some(now());
            set_status(claim, &status).await?;
            return Err(Error::Invalid(reason));
        }
    };
    if let Err(e) = wait_volume_data(
        client,
        claim,
        ns,
        &backup_now,
        &mut c,
        &mut status,
        &mut log,
        started,
        on_waiting,
    )
    .await
    {
        status.phase = Some("Failed".into());
        status.failure_reason = Some(format!("moving volume data failed: {e}"));
        status.completion_timestamp = Some(now());
        set_status(claim, &status).await?;
        return Err(e);
    }

    // Store: the record as one snapshot of the location's resource repository.
    let store = async {
        // Checked again: collecting can take minutes, and another cluster sharing the
        // bucket may have stored this name meanwhile.
        if !matches!(stored_as(&repo, name, &backup).await?, Stored::No) {
            return Err(Error::Invalid(
                "backup already exists in object storage (stored by someone else while this one ran)".into(),
            ));
        }
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
            set_status(claim, &status).await?;
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
            set_status(claim, &status).await?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_taken_over_leaves_the_newer_runs_frozen_pods_alone() {
        let pod =
            |ns: &str, name: &str| serde_json::json!({"metadata": {"namespace": ns, "name": name}});
        let mine = vec![pod("db", "db-0"), pod("db", "db-1")];
        let names = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|p| {
                    let (ns, n) = crate::hooks::backup::key(p);
                    format!("{ns}/{n}")
                })
                .collect()
        };
        let recorded = |settled| Recorded {
            keys: vec!["db/db-0".to_string()],
            settled,
        };
        // Still its own run (canceled, failed, its claim unreadable): every pod it froze.
        assert_eq!(
            still_mine_to_thaw(mine.clone(), false, Some(&recorded(true))).map(names),
            Some(vec!["db/db-0".to_string(), "db/db-1".to_string()])
        );
        // Taken over, the list settled: db-0 is recorded (by this run, for the newer one
        // to thaw as it begins, or by the newer run, frozen by it): left to it. db-1 is
        // no one else's.
        assert_eq!(
            still_mine_to_thaw(mine.clone(), true, Some(&recorded(true))).map(names),
            Some(vec!["db/db-1".to_string()])
        );
        // Taken over, the newer run still in its pre hooks: db-0 may be one its pre hook
        // fails on, this run holding it frozen; nobody would thaw it: not decided yet.
        assert_eq!(
            still_mine_to_thaw(mine.clone(), true, Some(&recorded(false))),
            None
        );
        // Taken over and nothing recorded (the newer run thawed and froze nothing yet,
        // froze nothing, or the Backup is gone): all of them.
        assert_eq!(
            still_mine_to_thaw(mine, true, None).map(names),
            Some(vec!["db/db-0".to_string(), "db/db-1".to_string()])
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("720h0m0s").unwrap(), 720 * 3600);
        assert_eq!(parse_go_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_go_duration("90s").unwrap(), 90);
        assert_eq!(parse_go_duration("1.5h").unwrap(), 5400);
        assert_eq!(parse_go_duration("0").unwrap(), 0);
        assert_eq!(parse_go_duration("-1h").unwrap(), -3600);
        assert_eq!(parse_go_duration("1500ms").unwrap(), 1);
        assert_eq!(parse_go_duration("2000000us").unwrap(), 2);
        assert_eq!(parse_go_duration("3000000000ns").unwrap(), 3);
        assert_eq!(parse_go_duration("1h0m30s").unwrap(), 3630);
        assert!(parse_go_duration("1x").is_err() && parse_go_duration("h").is_err());
        assert!(parse_go_duration("2562047h").is_ok());
        assert!(parse_go_duration("2562048h").is_err() && parse_go_duration("100000000h").is_err());
        assert_eq!(parse_go_duration_nanos("500ms").unwrap(), 500_000_000);
        assert_eq!(format_go_duration(720 * 3600), "720h0m0s");
        assert_eq!(format_go_duration(90), "1m30s");
        assert_eq!(format_go_duration(5), "5s");
        assert!(
            parse_go_duration("").is_err()
                && parse_go_duration("3d").is_err()
                && parse_go_duration("10").is_err()
        );
    }
}
