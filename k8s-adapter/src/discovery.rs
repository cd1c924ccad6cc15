//! What a cluster serves: every group and resource, at the server's preferred version and
//! at every served version, with short names, for resolving the names users type
//! (`deploy`, `deployments`, `deployments.apps`, `Deployment`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use kube::Client;
use kube::discovery::ApiResource;

use crate::error::{Error, Result};

/// One resource type at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRes {
    /// API group ("" for the core group).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name (`deployments`).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`deploy`).
    pub short_names: Vec<String>,
    /// Verbs.
    pub verbs: Vec<String>,
}

impl ApiRes {
    /// `resource.group`, Velero's name for the type (`deployments.apps`, `pods`).
    pub fn group_resource(&self) -> String {
        group_resource(&self.group, &self.plural)
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// For kube's dynamic API.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// Whether the server allows a verb.
    pub fn can(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

/// `resource.group`, or `resource` in the core group.
pub fn group_resource(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// The result of discovery.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Every resource at its group's preferred version.
    pub preferred: Vec<ApiRes>,
    /// Every served (group, version, plural).
    served: BTreeMap<(String, String, String), ApiRes>,
}

fn from_api(group: &str, version: &str, r: &APIResource) -> ApiRes {
    ApiRes {
        group: group.to_string(),
        version: version.to_string(),
        plural: r.name.clone(),
        singular: r.singular_name.clone(),
        kind: r.kind.clone(),
        namespaced: r.namespaced,
        short_names: r.short_names.clone().unwrap_or_default(),
        verbs: r.verbs.clone(),
    }
}

impl Discovery {
    /// Ask the API server.
    pub async fn run(client: &Client) -> Result<Self> {
        let mut d = Discovery::default();
        let kube = |e: kube::Error| Error::Kube {
            what: "discovery".into(),
            error: Box::new(e),
        };
        let core = client.list_core_api_versions().await.map_err(kube)?;
        let mut lists: Vec<(String, String, bool)> = Vec::new();
        for (i, v) in core.versions.iter().enumerate() {
            lists.push((String::new(), v.clone(), i == 0));
        }
        for g in client.list_api_groups().await.map_err(kube)?.groups {
            let preferred = g.preferred_version.as_ref().map(|p| p.version.clone());
            for v in &g.versions {
                let is_pref = preferred.as_deref() == Some(v.version.as_str())
                    || (preferred.is_none() && v == &g.versions[0]);
                lists.push((g.name.clone(), v.version.clone(), is_pref));
            }
        }
        for (group, version, preferred) in lists {
            let list = if group.is_empty() {
                client.list_core_api_resources(&version).await
            } else {
                client
                    .list_api_group_resources(&format!("{group}/{version}"))
                    .await
            };
            let list = match list {
                Ok(l) => l,
                // An aggregated API that is down: what it serves is skipped, as kubectl does.
                Err(e) => {
                    tracing::warn!("discovery of {group}/{version} failed: {e}");
                    continue;
                }
            };
            for r in &list.resources {
                if r.name.contains('/') {
                    continue; // subresources
                }
                let res = from_api(&group, &version, r);
                if preferred {
                    d.preferred.push(res.clone());
                }
                d.served
                    .insert((group.clone(), version.clone(), r.name.clone()), res);
            }
        }
        d.preferred.sort_by_key(ApiRes::group_resource);
        Ok(d)
    }

    /// A discovery from a fixed list (tests).
    pub fn from_list(preferred: Vec<ApiRes>, others: Vec<ApiRes>) -> Self {
        let mut served = BTreeMap::new();
        for r in preferred.iter().chain(others.iter()) {
            served.insert(
                (r.group.clone(), r.version.clone(), r.plural.clone()),
                r.clone(),
            );
        }
        Self { preferred, served }
    }

    /// Resolve what a user typed to a type at its preferred version: plural, singular,
    /// short name or kind, optionally followed by `.group`.
    pub fn resolve(&self, name: &str) -> Option<&ApiRes> {
        let name = name.trim();
        let lower = name.to_lowercase();
        let matches = |r: &ApiRes, n: &str| {
            r.plural == n
                || r.singular == n
                || r.short_names.iter().any(|s| s == n)
                || r.kind.to_lowercase() == n
        };
        // Exact `resource.group` first, then bare names (core group preferred, as kubectl).
        if let Some(r) = self.preferred.iter().find(|r| r.group_resource() == lower) {
            return Some(r);
        }
        let mut candidates: Vec<&ApiRes> = self
            .preferred
            .iter()
            .filter(|r| matches(r, &lower))
            .collect();
        if candidates.is_empty() {
            candidates = self
                .preferred
                .iter()
                .filter(|r| !r.group.is_empty() && lower.ends_with(&format!(".{}", r.group)))
                .filter(|r| matches(r, &lower[..lower.len() - r.group.len() - 1]))
                .collect();
        }
        candidates.sort_by_key(|r| (!r.group.is_empty(), r.group.clone()));
        candidates.first().copied()
    }

    /// Resolve a list of names to `resource.group` (`*` kept; unknown names kept as typed
    /// and reported).
    pub fn resolve_all(&self, names: &[String]) -> (Vec<String>, Vec<String>) {
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for n in names
            .iter()
            .flat_map(|n| n.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if n == "*" || crate::filter::is_glob(n) {
                // Patterns match `resource.group` names as they are.
                out.push(n.to_lowercase());
            } else if let Some(r) = self.resolve(n) {
                out.push(r.group_resource());
            } else {
                unknown.push(n.to_string());
                out.push(n.to_lowercase());
            }
        }
        (out, unknown)
    }

    /// The type served at exactly this group and version.
    pub fn served(&self, group: &str, version: &str, plural: &str) -> Option<&ApiRes> {
        self.served
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    /// Versions at which a group serves a resource.
    pub fn versions(&self, group: &str, plural: &str) -> BTreeSet<String> {
        self.served
            .keys()
            .filter(|(g, _, p)| g == group && p == plural)
            .map(|(_, v, _)| v.clone())
            .collect()
    }

    /// The preferred-version type of a `resource.group`.
    pub fn by_group_resource(&self, gr: &str) -> Option<&ApiRes> {
        self.preferred.iter().find(|r| r.group_resource() == gr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn res(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
    ) -> ApiRes {
        ApiRes {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            verbs: vec!["list".into(), "create".into(), "get".into()],
        }
    }

    #[test]
    fn resolves_what_users_type() {
        let d = Discovery::from_list(
            vec![
                res("", "v1", "pods", "Pod", true, &["po"]),
                res("apps", "v1", "deployments", "Deployment", true, &["deploy"]),
                res(
                    "extensions",
                    "v1beta1",
                    "deployments",
                    "Deployment",
                    true,
                    &[],
                ),
                res(
                    "storage.k8s.io",
                    "v1",
                    "storageclasses",
                    "StorageClass",
                    false,
                    &["sc"],
                ),
            ],
            vec![res(
                "apps",
                "v1beta1",
                "deployments",
                "Deployment",
                true,
                &[],
            )],
        );
        for n in [
            "deployments",
            "deploy",
            "Deployment",
            "deployment",
            "deployments.apps",
        ] {
            assert_eq!(
                d.resolve(n).unwrap().group_resource(),
                "deployments.apps",
                "{n}"
            );
        }
        assert_eq!(
            d.resolve("deployments.extensions").unwrap().group,
            "extensions"
        );
        assert_eq!(d.resolve("po").unwrap().group_resource(), "pods");
        assert_eq!(
            d.resolve("sc").unwrap().group_resource(),
            "storageclasses.storage.k8s.io"
        );
        assert!(d.resolve("nothing").is_none());
        let (names, unknown) = d.resolve_all(&["po,deploy".into(), "*".into(), "widgets".into()]);
        assert_eq!(names, ["pods", "deployments.apps", "*", "widgets"]);
        assert_eq!(unknown, ["widgets"]);
        assert!(d.served("apps", "v1beta1", "deployments").is_some());
        assert_eq!(d.versions("apps", "deployments").len(), 2);
    }
}
