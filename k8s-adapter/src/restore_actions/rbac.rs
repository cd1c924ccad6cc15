//! RoleBindings and ClusterRoleBindings (Velero's rolebinding_action.go and
//! clusterrolebinding_action.go): each subject's namespace follows `namespaceMapping`.

use serde_json::{Value, json};

use super::{Context, Verdict};

pub(super) fn transform(binding: &mut Value, ctx: &Context) -> Verdict {
    for s in binding
        .get_mut("subjects")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let ns = s.get("namespace").and_then(Value::as_str).unwrap_or("");
        if let Some(to) = ctx.mapping.get(ns) {
            s["namespace"] = json!(to);
        }
    }
    Verdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_mapping() {
        let mut ctx = Context::default();
        ctx.mapping.insert("app".into(), "app2".into());
        let mut b = json!({"subjects": [
            {"kind": "ServiceAccount", "namespace": "app", "name": "api"},
            {"kind": "ServiceAccount", "namespace": "other", "name": "x"},
            {"kind": "User", "name": "alice"}]});
        transform(&mut b, &ctx);
        assert_eq!(b["subjects"][0]["namespace"], "app2");
        assert_eq!(b["subjects"][1]["namespace"], "other");
        assert!(b["subjects"][2].get("namespace").is_none());
    }
}
