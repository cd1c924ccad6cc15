//! ServiceAccounts (Velero's pkg/restore/actions/service_account_action.go): the reference
//! to the account's old token Secret goes (the last `<name>-token-*` entry, as Velero).
//! An account that exists already is merged, not replaced: `restore.rs` does that.

use serde_json::Value;

use super::{Context, Verdict, str_at};

pub(super) fn transform(sa: &mut Value, _: &Context) -> Verdict {
    let prefix = format!(
        "{}-token-",
        str_at(sa, "/metadata/name").unwrap_or_default()
    );
    if let Some(secrets) = sa.get_mut("secrets").and_then(Value::as_array_mut)
        && let Some(i) = secrets.iter().rposition(|s| {
            s.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with(&prefix))
        })
    {
        secrets.remove(i);
    }
    Verdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_old_token_reference_goes() {
        let mut sa = json!({"metadata": {"name": "api"},
            "secrets": [{"name": "api-token-a"}, {"name": "extra"}, {"name": "api-token-b"}]});
        transform(&mut sa, &Context::default());
        assert_eq!(
            sa["secrets"],
            json!([{"name": "api-token-a"}, {"name": "extra"}])
        );
    }
}
