//! A bound claim needs its volume (Velero's `PVCAction`, pkg/backup/actions/backup_pv_action.go:
//! only when `status.phase` is Bound and `spec.volumeName` is set).

use serde_json::Value;

use super::{Context, Related, str_at};

pub(super) fn related(pvc: &Value, _: &Context) -> Vec<Related> {
    match (
        str_at(pvc, "/status/phase"),
        str_at(pvc, "/spec/volumeName"),
    ) {
        (Some("Bound"), Some(pv)) => vec![Related::new("persistentvolumes", None, pv)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_bound_claim_names_its_volume() {
        let c = Context::default();
        let bound = json!({"spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}});
        assert_eq!(
            related(&bound, &c),
            [Related::new("persistentvolumes", None, "pv-1")]
        );
        let pending = json!({"spec": {"volumeName": "pv-1"}, "status": {"phase": "Pending"}});
        assert!(related(&pending, &c).is_empty());
        assert!(related(&json!({"status": {"phase": "Bound"}}), &c).is_empty());
    }
}
