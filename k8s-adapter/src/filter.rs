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

/// Includes and excludes of plain names (resources): exclude wins; no includes or `*`
/// include everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncludesExcludes {
    includes: Vec<String>,
    excludes: Vec<String>,
}

impl IncludesExcludes {
    /// Build from lists.
    pub fn new(includes: &[String], excludes: &[String]) -> Self {
        Self {
            includes: includes.to_vec(),
            excludes: excludes.to_vec(),
        }
    }

    /// Whether `s` passes.
    pub fn includes(&self, s: &str) -> bool {
        if self.excludes.iter().any(|e| e == s || e == "*") {
            return false;
        }
        self.includes.is_empty() || self.includes.iter().any(|i| i == s || i == "*")
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

    /// Whether all items of a resource type are taken. `all_namespaces` says whether the
    /// namespace filter takes every namespace (the unset `includeClusterResources` case).
    pub fn takes(&self, group_resource: &str, namespaced: bool, all_namespaces: bool) -> bool {
        match self {
            ResourceFilter::Old {
                resources,
                include_cluster,
            } => {
                if !resources.includes(group_resource) {
                    return false;
                }
                if namespaced {
                    return true;
                }
                match include_cluster {
                    Some(b) => *b,
                    None => all_namespaces,
                }
            }
            ResourceFilter::Scoped {
                cluster,
                namespaced: ns,
            } => {
                if namespaced {
                    ns.includes(group_resource)
                } else if cluster.include_list().is_empty() && cluster.exclude_list().is_empty() {
                    false
                } else if cluster.include_list().is_empty() {
                    // Only excludes: every other cluster-scoped resource.
                    !cluster
                        .exclude_list()
                        .iter()
                        .any(|e| e == group_resource || e == "*")
                } else {
                    cluster.includes(group_resource)
                }
            }
        }
    }

    /// Whether cluster-scoped items related to backed-up items (a claim's volume) are
    /// pulled in even when their type is not taken as a whole.
    pub fn takes_related(&self, group_resource: &str) -> bool {
        match self {
            ResourceFilter::Old {
                resources,
                include_cluster,
            } => {
                *include_cluster != Some(false)
                    && !resources
                        .exclude_list()
                        .iter()
                        .any(|e| e == group_resource || e == "*")
            }
            ResourceFilter::Scoped { cluster, .. } => !cluster
                .exclude_list()
                .iter()
                .any(|e| e == group_resource || e == "*"),
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

    #[test]
    fn old_style_cluster_resources() {
        let unset = ResourceFilter::new(&[], &[], None, &[], &[], &[], &[]).unwrap();
        assert!(
            unset.takes("persistentvolumes", false, true),
            "all namespaces: cluster resources in"
        );
        assert!(
            !unset.takes("persistentvolumes", false, false),
            "namespace filter: out"
        );
        assert!(
            unset.takes_related("persistentvolumes"),
            "but a claim's volume is pulled in"
        );
        let no = ResourceFilter::new(&[], &[], Some(false), &[], &[], &[], &[]).unwrap();
        assert!(
            !no.takes("persistentvolumes", false, true) && !no.takes_related("persistentvolumes")
        );
        assert!(no.takes("pods", true, true));
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
        assert!(yes.takes("storageclasses.storage.k8s.io", false, false));
        assert!(
            !yes.takes("persistentvolumes", false, false) && !yes.takes("configmaps", true, false)
        );
    }

    #[test]
    fn scoped_style() {
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
        assert!(f.takes("storageclasses.storage.k8s.io", false, false));
        assert!(!f.takes("persistentvolumes", false, false));
        assert!(f.takes("pods", true, false) && !f.takes("secrets", true, false));
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
            f.takes("persistentvolumes", false, false),
            "only excludes: every other cluster resource"
        );
        assert!(!f.takes("storageclasses.storage.k8s.io", false, false));
        let f = ResourceFilter::new(&[], &[], None, &[], &s(&["*"]), &s(&["pods"]), &[]).unwrap();
        assert!(!f.takes_related("persistentvolumes") && !f.takes("configmaps", true, true));
        let none = ResourceFilter::new(&[], &[], None, &[], &[], &s(&["*"]), &[]).unwrap();
        assert!(
            !none.takes("persistentvolumes", false, true),
            "no cluster-scoped list: none but related"
        );
        assert!(none.takes_related("persistentvolumes"));
        assert!(ResourceFilter::new(&s(&["pods"]), &[], None, &s(&["x"]), &[], &[], &[]).is_err());
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
