//! A service account needs the ClusterRoleBindings naming it and their ClusterRoles
//! (Velero's `RelatedItemsForServiceAccount`, pkg/util/actionhelpers/service_account_helper.go).

use serde_json::Value;

use super::{Context, Related, str_at};

pub(super) fn related(sa: &Value, ctx: &Context) -> Vec<Related> {
    let (Some(ns), Some(name)) = (
        str_at(sa, "/metadata/namespace"),
        str_at(sa, "/metadata/name"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for crb in &ctx.cluster_role_bindings {
        let names_it = crb
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| {
                str_at(s, "/kind") == Some("ServiceAccount")
                    && str_at(s, "/namespace") == Some(ns)
                    && str_at(s, "/name") == Some(name)
            });
        let Some(crb_name) = str_at(crb, "/metadata/name").filter(|_| names_it) else {
            continue;
        };
        out.push(Related::new(
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
            crb_name,
        ));
        if let Some(role) = str_at(crb, "/roleRef/name") {
            out.push(Related::new(
                "clusterroles.rbac.authorization.k8s.io",
                None,
                role,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bindings_naming_the_account_and_their_roles() {
        let ctx = Context {
            cluster_role_bindings: vec![
                json!({"metadata": {"name": "mine"}, "roleRef": {"name": "reader"},
                       "subjects": [{"kind": "ServiceAccount", "namespace": "app", "name": "api"}]}),
                json!({"metadata": {"name": "other-ns"}, "roleRef": {"name": "admin"},
                       "subjects": [{"kind": "ServiceAccount", "namespace": "web", "name": "api"}]}),
                json!({"metadata": {"name": "a-user"}, "roleRef": {"name": "admin"},
                       "subjects": [{"kind": "User", "name": "api"}]}),
            ],
        };
        let sa = json!({"metadata": {"namespace": "app", "name": "api"}});
        assert_eq!(
            related(&sa, &ctx),
            [
                Related::new(
                    "clusterrolebindings.rbac.authorization.k8s.io",
                    None,
                    "mine"
                ),
                Related::new("clusterroles.rbac.authorization.k8s.io", None, "reader"),
            ]
        );
    }
}
