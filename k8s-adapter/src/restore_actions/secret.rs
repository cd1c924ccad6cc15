//! Secrets (Velero's pkg/restore/actions/secret_action.go): a service account token Secret
//! whose account exists in the target namespace is the token controller's to make, so it
//! is not restored; any other token Secret loses the old account uid and token, which the
//! controller fills in again.

use serde_json::Value;

use super::{Context, Verdict, remove_annotations, str_at};

pub(super) fn transform(secret: &mut Value, ctx: &Context) -> Verdict {
    if str_at(secret, "/type") != Some("kubernetes.io/service-account-token") {
        return Verdict::Restore;
    }
    let name = str_at(secret, "/metadata/name").unwrap_or_default();
    let ns = str_at(secret, "/metadata/namespace").unwrap_or_default();
    if let Some(sa) = ctx
        .service_accounts
        .get(ns)
        .into_iter()
        .flatten()
        .find(|sa| name.starts_with(&format!("{sa}-token-")))
    {
        return Verdict::Skip(format!(
            "a token of service account {sa}, which the cluster issues anew"
        ));
    }
    remove_annotations(secret, &["kubernetes.io/service-account.uid"]);
    if let Some(d) = secret.get_mut("data").and_then(Value::as_object_mut) {
        d.remove("token");
        d.remove("ca.crt");
    }
    Verdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_secrets_follow_velero() {
        let mut ctx = Context::default();
        ctx.service_accounts
            .entry("app".into())
            .or_default()
            .insert("api".into());
        let tok = |name: &str| {
            json!({"type": "kubernetes.io/service-account-token",
                   "metadata": {"name": name, "namespace": "app",
                                "annotations": {"kubernetes.io/service-account.uid": "u",
                                                "kubernetes.io/service-account.name": "gone"}},
                   "data": {"token": "t", "ca.crt": "c", "namespace": "n"}})
        };
        assert!(matches!(
            transform(&mut tok("api-token-abc"), &ctx),
            Verdict::Skip(_)
        ));
        let mut other = tok("gone-token-abc");
        assert_eq!(transform(&mut other, &ctx), Verdict::Restore);
        assert_eq!(other["data"], json!({"namespace": "n"}));
        assert!(
            other["metadata"]["annotations"]
                .get("kubernetes.io/service-account.uid")
                .is_none()
        );
        let mut plain =
            json!({"type": "Opaque", "metadata": {"name": "api-token-x"}, "data": {"token": "t"}});
        assert_eq!(transform(&mut plain, &ctx), Verdict::Restore);
        assert_eq!(plain["data"]["token"], "t");
    }
}
