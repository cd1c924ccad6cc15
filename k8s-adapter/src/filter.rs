//! Velero's filters, as pure logic: namespaces (with globs), resources (old style, and the
//! new cluster-/namespace-scoped style), whether cluster-scoped items are included, label
//! selectors and or-selectors, and the exclude label.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::error::{Error, Result};

/// Labels that keep an item out of every backup.
pub const EXCLUDE_LABELS: [&str; 2] = [
    "arca.dev/exclude-from-backup",
    "velero.io/exclude-from-backup",
];

/// Includes and excludes of resource names (`resource.group`), each a name or a glob
/// (`*.apps`): exclude wins; no includes or `*` include everything. As Velero's
/// `IncludesExcludes` (pkg/util/collections/includes_excludes.go).
#[derive(Clone, Debug, Default)]
pub struct IncludesExcludes {
    includes: Vec<String>,
    excludes: Vec<String>,
    include_globs: Vec<GlobMatcher>,
    exclude_globs: Vec<GlobMatcher>,
}

impl PartialEq for IncludesExcludes {
    fn eq(&self, o: &Self) -> bool {
        self.includes == o.includes && self.excludes == o.excludes
    }
}

impl Eq for IncludesExcludes {}

/// Whether a name is a pattern rather than a plain name.
pub fn is_glob(s: &str) -> bool {
    s != "*" && s.contains(['*', '?', '['])
}

fn compile(list: &[String]) -> Vec<GlobMatcher> {
    list.iter()
        .filter(|p| is_glob(p))
        // A pattern that does not compile was rejected by validation; here it matches nothing.
        .filter_map(|p| Glob::new(p).ok().map(|g| g.compile_matcher()))
        .collect()
}

impl IncludesExcludes {
    /// Build from lists.
    pub fn new(includes: &[String], excludes: &[String]) -> Self {
        Self {
            includes: includes.to_vec(),
            excludes: excludes.to_vec(),
            include_globs: compile(includes),
            exclude_globs: compile(excludes),
        }
    }

    /// Whether `s` is excluded by name, pattern or `*`.
    pub fn excludes(&self, s: &str) -> bool {
        self.excludes.iter().any(|e| e == s || e == "*")
            || self.exclude_globs.iter().any(|g| g.is_match(s))
    }

    /// Whether `s` passes.
    pub fn includes(&self, s: &str) -> bool {
        if self.excludes(s) {
            return false;
        }
        self.includes.is_empty()
            || self.includes.iter().any(|i| i == s || i == "*")
            || self.include_globs.iter().any(|g| g.is_match(s))
    }

    /// Velero's `IncludeEverything`: no excludes, and no includes or only `*`.
    pub fn include_everything(&self) -> bool {
        self.excludes.is_empty()
            && (self.includes.is_empty() || (self.includes.len() == 1 && self.includes[0] == "*"))
    }

    /// Whether anything was listed as included (other than `*`).
    pub fn has_includes(&self) -> bool {
        self.includes.iter().any(|i| i != "*")
    }

    /// The include list.
    pub fn include_list(&self) -> &[String] {
        &self.includes
    }

    /// The exclude list.
    pub fn exclude_list(&self) -> &[String] {
        &self.excludes
    }
}

/// The checks Velero's two list validations share (pkg/util/collections): `*` alone in
/// includes, and nothing in both lists; then the scoped or old rule for `*` in excludes.
fn list_problems(includes: &[String], excludes: &[String], scoped: bool) -> Vec<String> {
    let star = |l: &[String]| l.iter().any(|i| i == "*");
    let mut errs = Vec::new();
    if includes.len() > 1 && star(includes) {
        errs.push(
            "includes list must either contain '*' only, or a non-empty list of items".to_string(),
        );
    }
    if !scoped && star(excludes) {
        errs.push("excludes list cannot contain '*'".into());
    }
    if scoped && excludes.len() > 1 && star(excludes) {
        errs.push(
            "excludes list must either contain '*' only, or a non-empty list of items".into(),
        );
    }
    if scoped && !includes.is_empty() && star(excludes) {
        errs.push("when exclude is '*', include cannot have value".into());
    }
    for e in excludes.iter().filter(|e| includes.contains(e)) {
        errs.push(format!(
            "excludes list cannot contain an item in the includes list: {e}"
        ));
    }
    errs
}

/// Velero's `ValidateIncludesExcludes` (old-style resource lists and namespace lists).
pub fn validate_includes_excludes(
    what: &str,
    includes: &[String],
    excludes: &[String],
) -> Vec<String> {
    list_problems(includes, excludes, false)
        .into_iter()
        .map(|e| format!("Invalid included/excluded {what} lists: {e}"))
        .collect()
}

/// Velero's `ValidateScopedIncludesExcludes` (the cluster- and namespace-scoped lists).
pub fn validate_scoped(what: &str, includes: &[String], excludes: &[String]) -> Vec<String> {
    list_problems(includes, excludes, true)
        .into_iter()
        .map(|e| format!("Invalid {what} included/excluded resource lists: {e}"))
        .collect()
}

/// Velero's namespace-list validation (pkg/util/wildcard and the Kubernetes name rule,
/// with the glob characters standing in for letters): the generic list checks, then
/// each name.
pub fn validate_namespaces(includes: &[String], excludes: &[String]) -> Vec<String> {
    let mut errs = validate_includes_excludes("namespace", includes, excludes);
    for n in includes.iter().chain(excludes).filter(|n| !n.is_empty()) {
        if n == "*" {
            continue;
        }
        if let Some(e) = glob_name_problem(n) {
            errs.push(format!("invalid namespace {n:?}: {e}"));
            continue;
        }
        let plain: String = n
            .chars()
            .map(|c| if "*?[]".contains(c) { 'x' } else { c })
            .collect();
        if let Some(e) = dns1123_label_problem(&plain) {
            errs.push(format!("invalid namespace {n:?}: {e}"));
        }
    }
    errs
}

fn glob_name_problem(n: &str) -> Option<&'static str> {
    if n.contains(['|', '(', ')', '!', '{', '}', ',']) {
        return Some("wildcard characters |()!{}, are not supported");
    }
    if n.contains("**") {
        return Some("consecutive asterisks (**) are not allowed");
    }
    if n.contains("[]") {
        return Some("empty character class [] is not allowed");
    }
    let mut open = false;
    for c in n.chars() {
        match c {
            '[' if open => return Some("nested [ is not allowed"),
            '[' => open = true,
            ']' if !open => return Some("unmatched ]"),
            ']' => open = false,
            _ => {}
        }
    }
    open.then_some("unclosed [")
}

/// The Kubernetes rule for a namespace name (an RFC 1123 label).
pub fn dns1123_label_problem(n: &str) -> Option<&'static str> {
    if n.is_empty() || n.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    let ok = n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric();
    (!ok).then_some(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
    )
}

/// Namespace includes and excludes, with globs (`*`, `?`, `[abc]`). A lone `*` (or no
/// includes) means all namespaces.
#[derive(Clone, Debug)]
pub struct NamespaceFilter {
    includes: Vec<(String, GlobMatcher)>,
    excludes: Vec<(String, GlobMatcher)>,
}

fn globs(list: &[String]) -> Result<Vec<(String, GlobMatcher)>> {
    list.iter()
        .map(|p| {
            Glob::new(p)
                .map(|g| (p.clone(), g.compile_matcher()))
                .map_err(|e| Error::Invalid(format!("namespace pattern {p:?}: {e}")))
        })
        .collect()
}

impl NamespaceFilter {
    /// Build from the spec's lists.
    pub fn new(includes: &[String], excludes: &[String]) -> Result<Self> {
        Ok(Self {
            includes: globs(includes)?,
            excludes: globs(excludes)?,
        })
    }

    /// Whether every namespace is included (no includes, or `*`), regardless of excludes.
    pub fn all(&self) -> bool {
        self.includes.is_empty() || self.includes.iter().any(|(p, _)| p == "*")
    }

    /// Whether the namespace filter is the default (all namespaces, nothing excluded).
    pub fn everything(&self) -> bool {
        self.all() && self.excludes.is_empty()
    }

    /// Whether a namespace passes.
    pub fn includes(&self, ns: &str) -> bool {
        if self.excludes.iter().any(|(_, g)| g.is_match(ns)) {
            return false;
        }
        self.all() || self.includes.iter().any(|(_, g)| g.is_match(ns))
    }
}

/// Which resource types are taken, by scope.
#[derive(Clone, Debug)]
pub enum ResourceFilter {
    /// `includedResources` / `excludedResources` and `includeClusterResources`.
    Old {
        /// Resources.
        resources: IncludesExcludes,
        /// true, false, or unset.
        include_cluster: Option<bool>,
    },
    /// The scoped lists.
    Scoped {
        /// Cluster-scoped resources.
        cluster: IncludesExcludes,
        /// Namespaced resources.
        namespaced: IncludesExcludes,
    },
}

impl ResourceFilter {
    /// Build from a spec's fields (resource names already resolved to `resource.group`);
    /// mixing the two styles is a validation error, as in Velero.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        included: &[String],
        excluded: &[String],
        include_cluster: Option<bool>,
        cluster_in: &[String],
        cluster_ex: &[String],
        ns_in: &[String],
        ns_ex: &[String],
    ) -> Result<Self> {
        let scoped = !(cluster_in.is_empty()
            && cluster_ex.is_empty()
            && ns_in.is_empty()
            && ns_ex.is_empty());
        let old = !(included.is_empty() && excluded.is_empty() && include_cluster.is_none());
        match (old, scoped) {
            (true, true) => Err(Error::Invalid(
                "includedResources/excludedResources/includeClusterResources cannot be used with the \
                 cluster-scoped and namespace-scoped resource filters"
                    .into(),
            )),
            (_, true) => Ok(ResourceFilter::Scoped {
                cluster: IncludesExcludes::new(cluster_in, cluster_ex),
                namespaced: IncludesExcludes::new(ns_in, ns_ex),
            }),
            _ => Ok(ResourceFilter::Old { resources: IncludesExcludes::new(included, excluded), include_cluster }),
        }
    }

    /// Whether the items of a resource type are listed (Velero's
    /// `GlobalIncludesExcludes.ShouldInclude` and `ScopeIncludesExcludes.ShouldInclude`,
    /// pkg/util/collections/includes_excludes.go). With `includeClusterResources` unset,
    /// cluster-scoped types are taken only when the namespace filter includes everything:
    /// no includes other than `*` and no excludes.
    pub fn takes(&self, group_resource: &str, namespaced: bool, ns: &NamespaceFilter) -> bool {
        match self {
            ResourceFilter::Old {
                resources,
                include_cluster,
            } => {
                if !namespaced {
                    if *include_cluster == Some(false) {
                        return false;
                    }
                    if group_resource != "namespaces"
                        && include_cluster.is_none()
                        && !ns.everything()
                    {
                        return false;
                    }
                }
                resources.includes(group_resource)
            }
            ResourceFilter::Scoped {
                cluster,
                namespaced: nsr,
            } => {
                if namespaced {
                    nsr.includes(group_resource)
                } else if cluster.excludes(group_resource) {
                    false
                } else if cluster.include_list().is_empty() && cluster.exclude_list().is_empty() {
                    ns.everything() && nsr.include_everything()
                } else {
                    cluster.include_list().iter().any(|i| i == "*")
                        || cluster.includes(group_resource) && cluster.has_includes()
                        || group_resource == "namespaces"
                }
            }
        }
    }

    /// Whether an item related to a backed-up one (a claim's volume, a service account's
    /// role bindings) is taken although its type may not be listed: Velero's
    /// `ShouldExclude` for cluster-scoped items, `ShouldInclude` for namespaced ones
    /// (pkg/backup/item_backupper.go, itemInclusionChecks).
    pub fn takes_related(&self, group_resource: &str, namespaced: bool) -> bool {
        match self {
            ResourceFilter::Old {
                resources,
                include_cluster,
            } => {
                if namespaced {
                    return resources.includes(group_resource);
                }
                match include_cluster {
                    Some(false) => false,
                    Some(true) => !resources.excludes(group_resource),
                    None => resources.includes(group_resource),
                }
            }
            ResourceFilter::Scoped {
                cluster,
                namespaced: nsr,
            } => {
                if namespaced {
                    nsr.includes(group_resource)
                } else {
                    !cluster.excludes(group_resource)
                }
            }
        }
    }

    /// Whether Namespace objects are taken at all.
    pub fn takes_namespaces(&self) -> bool {
        match self {
            // Velero's GlobalIncludesExcludes: false leaves out every cluster-scoped
            // type, Namespace objects included.
            ResourceFilter::Old {
                resources,
                include_cluster,
            } => *include_cluster != Some(false) && resources.includes("namespaces"),
            ResourceFilter::Scoped { cluster, .. } => !cluster.excludes("namespaces"),
        }
    }
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        _ => false,
    }
}

/// Whether labels match a selector (all its terms).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        && sel
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.iter().all(|r| requirement_matches(r, labels)))
}

/// Parse `-l`: `a=b,c!=d,e,!f,g in (x,y),h notin (z)`.
pub fn parse_selector(s: &str) -> Result<LabelSelector> {
    let bad = || {
        Error::Invalid(format!(
            "label selector {s:?}: use key=value, key!=value, key, !key, key in (a,b), key notin (a,b)"
        ))
    };
    let mut match_labels = BTreeMap::new();
    let mut exprs = Vec::new();
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let req = |key: &str, op: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
            key: key.trim().to_string(),
            operator: op.to_string(),
            values,
        };
        let set = |rest: &str| -> Result<Vec<String>> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect())
        };
        if let Some((k, v)) = p.split_once("!=") {
            exprs.push(req(k, "NotIn", Some(vec![v.trim().to_string()])));
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            match_labels.insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some(i) = p.find(" notin ") {
            exprs.push(req(&p[..i], "NotIn", Some(set(&p[i + 7..])?)));
        } else if let Some(i) = p.find(" in ") {
            exprs.push(req(&p[..i], "In", Some(set(&p[i + 4..])?)));
        } else if let Some(k) = p.strip_prefix('!') {
            exprs.push(req(k, "DoesNotExist", None));
        } else if p.chars().all(|c| c.is_alphanumeric() || "-._/".contains(c)) {
            exprs.push(req(p, "Exists", None));
        } else {
            return Err(bad());
        }
    }
    Ok(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

/// The label part of a backup's or restore's filter.
#[derive(Clone, Debug, Default)]
pub struct LabelFilter {
    /// All of these.
    pub selector: Option<LabelSelector>,
    /// Or any of these.
    pub or_selectors: Vec<LabelSelector>,
}

impl LabelFilter {
    /// Build; both at once is a validation error, as in Velero.
    pub fn new(selector: Option<LabelSelector>, or_selectors: Vec<LabelSelector>) -> Result<Self> {
        if selector.is_some() && !or_selectors.is_empty() {
            return Err(Error::Invalid(
                "labelSelector and orLabelSelectors cannot be used together".into(),
            ));
        }
        Ok(Self {
            selector,
            or_selectors,
        })
    }

    /// Whether any selector is set.
    pub fn is_set(&self) -> bool {
        self.selector.is_some() || !self.or_selectors.is_empty()
    }

    /// Whether an item's labels pass.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if let Some(s) = &self.selector {
            return selector_matches(s, labels);
        }
        self.or_selectors.is_empty()
            || self
                .or_selectors
                .iter()
                .any(|s| selector_matches(s, labels))
    }
}

/// Whether an item carries an exclude-from-backup label set to true.
pub fn excluded_by_label(labels: &BTreeMap<String, String>) -> bool {
    EXCLUDE_LABELS
        .iter()
        .any(|l| labels.get(*l).is_some_and(|v| v == "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn labels(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn includes_excludes_follow_velero() {
        let ie = IncludesExcludes::new(&s(&[]), &s(&["secrets"]));
        assert!(ie.includes("pods") && !ie.includes("secrets"));
        let ie = IncludesExcludes::new(&s(&["pods", "*"]), &s(&[]));
        assert!(ie.includes("anything"));
        let ie = IncludesExcludes::new(&s(&["pods"]), &s(&["pods"]));
        assert!(!ie.includes("pods"), "exclude wins");
        let ie = IncludesExcludes::new(&s(&["*"]), &s(&["*"]));
        assert!(!ie.includes("pods"));
    }

    #[test]
    fn namespace_globs() {
        let f = NamespaceFilter::new(&s(&["app-*", "ns?"]), &s(&["app-secret"])).unwrap();
        assert!(f.includes("app-prod") && f.includes("ns1"));
        assert!(!f.includes("ns10") && !f.includes("app-secret") && !f.includes("other"));
        assert!(!f.all());
        let f = NamespaceFilter::new(&s(&["*"]), &s(&["kube-*"])).unwrap();
        assert!(f.all() && !f.everything());
        assert!(f.includes("default") && !f.includes("kube-system"));
        let f = NamespaceFilter::new(&s(&["[ab]x"]), &s(&[])).unwrap();
        assert!(f.includes("ax") && f.includes("bx") && !f.includes("cx"));
    }

    fn nsf(inc: &[&str], exc: &[&str]) -> NamespaceFilter {
        NamespaceFilter::new(&s(inc), &s(exc)).unwrap()
    }

    #[test]
    fn old_style_cluster_resources() {
        let everything = nsf(&[], &[]);
        let star = nsf(&["*"], &[]);
        let some = nsf(&["app"], &[]);
        let excluding = nsf(&["*"], &["kube-system"]);
        let unset = ResourceFilter::new(&[], &[], None, &[], &[], &[], &[]).unwrap();
        assert!(unset.takes("persistentvolumes", false, &everything));
        assert!(unset.takes("persistentvolumes", false, &star));
        assert!(
            !unset.takes("persistentvolumes", false, &some),
            "namespace filter: out"
        );
        assert!(
            !unset.takes(
                "customresourcedefinitions.apiextensions.k8s.io",
                false,
                &excluding
            ),
            "an exclude is a namespace filter too (Velero's IncludeEverything)"
        );
        assert!(
            unset.takes("namespaces", false, &some),
            "namespaces are not cluster resources here"
        );
        assert!(
            unset.takes_related("persistentvolumes", false),
            "but a claim's volume is pulled in"
        );
        let no = ResourceFilter::new(&[], &[], Some(false), &[], &[], &[], &[]).unwrap();
        assert!(!no.takes("persistentvolumes", false, &everything));
        assert!(!no.takes_related("persistentvolumes", false));
        assert!(no.takes("pods", true, &everything) && no.takes_related("pods", true));
        let yes = ResourceFilter::new(
            &s(&["pods", "storageclasses.storage.k8s.io"]),
            &[],
            Some(true),
            &[],
            &[],
            &[],
            &[],
        )
        .unwrap();
        assert!(yes.takes("storageclasses.storage.k8s.io", false, &some));
        assert!(
            !yes.takes("persistentvolumes", false, &some) && !yes.takes("configmaps", true, &some)
        );
        assert!(
            yes.takes_related("persistentvolumes", false),
            "true: related unless excluded"
        );
        let listed = ResourceFilter::new(
            &s(&["pods", "persistentvolumeclaims"]),
            &[],
            None,
            &[],
            &[],
            &[],
            &[],
        )
        .unwrap();
        assert!(
            !listed.takes_related("persistentvolumes", false),
            "unset with an include list that leaves volumes out: Velero's ShouldExclude"
        );
        let globbed = ResourceFilter::new(
            &s(&["*.apps"]),
            &s(&["daemonsets.*"]),
            None,
            &[],
            &[],
            &[],
            &[],
        )
        .unwrap();
        assert!(globbed.takes("deployments.apps", true, &everything));
        assert!(!globbed.takes("daemonsets.apps", true, &everything));
        assert!(!globbed.takes("configmaps", true, &everything));
    }

    #[test]
    fn scoped_style() {
        let everything = nsf(&[], &[]);
        let some = nsf(&["app"], &[]);
        let f = ResourceFilter::new(
            &[],
            &[],
            None,
            &s(&["storageclasses.storage.k8s.io"]),
            &[],
            &[],
            &s(&["secrets"]),
        )
        .unwrap();
        assert!(f.takes("storageclasses.storage.k8s.io", false, &some));
        assert!(!f.takes("persistentvolumes", false, &everything));
        assert!(f.takes("pods", true, &some) && !f.takes("secrets", true, &some));
        let f = ResourceFilter::new(
            &[],
            &[],
            None,
            &[],
            &s(&["storageclasses.storage.k8s.io"]),
            &[],
            &[],
        )
        .unwrap();
        assert!(
            !f.takes("persistentvolumes", false, &everything),
            "only excludes: Velero takes no other cluster resource but namespaces"
        );
        assert!(f.takes("namespaces", false, &everything));
        assert!(!f.takes("storageclasses.storage.k8s.io", false, &everything));
        assert!(f.takes_related("persistentvolumes", false));
        let f = ResourceFilter::new(&[], &[], None, &[], &s(&["*"]), &s(&["pods"]), &[]).unwrap();
        assert!(
            !f.takes_related("persistentvolumes", false)
                && !f.takes("configmaps", true, &everything)
        );
        let none = ResourceFilter::new(&[], &[], None, &[], &[], &s(&["*"]), &[]).unwrap();
        assert!(
            none.takes("persistentvolumes", false, &everything),
            "no cluster-scoped list, everything namespaced: all"
        );
        assert!(
            !none.takes("persistentvolumes", false, &some),
            "with a namespace filter: none"
        );
        let pods = ResourceFilter::new(&[], &[], None, &[], &[], &s(&["pods"]), &[]).unwrap();
        assert!(
            !pods.takes("persistentvolumes", false, &everything),
            "a namespaced list: none"
        );
        assert!(pods.takes_related("persistentvolumes", false));
        assert!(ResourceFilter::new(&s(&["pods"]), &[], None, &s(&["x"]), &[], &[], &[]).is_err());
    }

    #[test]
    fn validation_follows_velero() {
        assert!(validate_includes_excludes("resource", &s(&["*"]), &s(&["secrets"])).is_empty());
        // As Velero: '*' among others, '*' excluded, and '*' in both lists.
        let e = validate_includes_excludes("resource", &s(&["pods", "*"]), &s(&["*"]));
        assert_eq!(e.len(), 3, "{e:?}");
        let e = validate_includes_excludes("namespace", &s(&["a"]), &s(&["a"]));
        assert!(
            e[0].contains("cannot contain an item in the includes list: a"),
            "{e:?}"
        );
        assert!(
            validate_scoped("cluster-scoped", &s(&["x"]), &s(&["*"]))[0]
                .contains("when exclude is '*'")
        );
        assert!(validate_namespaces(&s(&["app-*", "ns?", "[ab]x"]), &s(&["kube-*"])).is_empty());
        for bad in [
            "a{b}",
            "a**",
            "x[]",
            "x[",
            "x]",
            "Upper",
            "-lead",
            "has_underscore",
        ] {
            assert_eq!(validate_namespaces(&s(&[bad]), &[]).len(), 1, "{bad}");
        }
    }

    #[test]
    fn selectors() {
        let sel =
            parse_selector("app=web, tier!=cache,env in (prod, staging),!legacy,team").unwrap();
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("env", "prod"), ("team", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[
                ("app", "web"),
                ("env", "prod"),
                ("team", "a"),
                ("legacy", "1")
            ])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("env", "dev"), ("team", "a")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[
                ("app", "web"),
                ("env", "prod"),
                ("team", "a"),
                ("tier", "cache")
            ])
        ));
        assert!(parse_selector("a in b").is_err());
        let or = LabelFilter::new(
            None,
            vec![
                parse_selector("a=1").unwrap(),
                parse_selector("b=2").unwrap(),
            ],
        )
        .unwrap();
        assert!(or.matches(&labels(&[("b", "2")])) && !or.matches(&labels(&[("c", "3")])));
        assert!(
            LabelFilter::new(
                Some(parse_selector("a=1").unwrap()),
                vec![parse_selector("b=2").unwrap()]
            )
            .is_err()
        );
        assert!(excluded_by_label(&labels(&[(
            "velero.io/exclude-from-backup",
            "true"
        )])));
        assert!(excluded_by_label(&labels(&[(
            "arca.dev/exclude-from-backup",
            "true"
        )])));
        assert!(!excluded_by_label(&labels(&[(
            "arca.dev/exclude-from-backup",
            "false"
        )])));
    }
}
