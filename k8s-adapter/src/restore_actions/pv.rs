//! PersistentVolumes (Velero's restoreItem, pkg/restore/restore.go): a volume the cluster
//! provisions anew is not restored, so that a claim restored elsewhere never binds to the
//! source cluster's disk (and deleting it there never deletes the source's data); any
//! other keeps its disk, with its claim reference's namespace mapped and, under the
//! rename rule, a new name.

use serde_json::{Value, json};

use super::{Context, Verdict, reset_volume_binding, str_at};
use crate::restore::ORIGINAL_PV_ANNOTATION;

pub(super) fn transform(pv: &mut Value, ctx: &Context) -> Verdict {
    let name = str_at(pv, "/metadata/name").unwrap_or_default().to_string();
    if ctx.pvs_to_provision.contains(&name) {
        return Verdict::Skip(format!(
            "persistent volume {name} was provisioned dynamically (reclaim policy Delete) and no volume backup restores it: its claim gets a new volume"
        ));
    }
    if let Some(cns) = str_at(pv, "/spec/claimRef/namespace").map(str::to_string) {
        pv["spec"]["claimRef"]["namespace"] = json!(ctx.target_ns(&cns));
    }
    reset_volume_binding(pv);
    if let Some(new) = ctx.renamed_pvs.get(&name) {
        pv["metadata"]["name"] = json!(new);
        if !pv["metadata"]["annotations"].is_object() {
            pv["metadata"]["annotations"] = json!({});
        }
        pv["metadata"]["annotations"][ORIGINAL_PV_ANNOTATION] = json!(name);
    }
    ctx.map_storage_class(pv.pointer_mut("/spec/storageClassName"));
    Verdict::Restore
}

/// Whether a backed-up volume is one the cluster provisioned (Velero's
/// hasDeleteReclaimPolicy).
pub fn provisioned_dynamically(pv: &Value) -> bool {
    str_at(pv, "/spec/persistentVolumeReclaimPolicy") == Some("Delete")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(policy: &str) -> Value {
        json!({
            "metadata": {"name": "pv-1", "annotations": {"pv.kubernetes.io/bound-by-controller": "yes",
                                                          "pv.kubernetes.io/provisioned-by": "ebs"}},
            "spec": {"persistentVolumeReclaimPolicy": policy, "storageClassName": "old",
                     "claimRef": {"namespace": "app", "name": "data", "uid": "u", "resourceVersion": "9"}}
        })
    }

    #[test]
    fn a_delete_policy_volume_is_provisioned_anew() {
        let mut ctx = Context::default();
        ctx.pvs_to_provision.insert("pv-1".into());
        assert!(provisioned_dynamically(&pv("Delete")) && !provisioned_dynamically(&pv("Retain")));
        assert!(matches!(
            transform(&mut pv("Delete"), &ctx),
            Verdict::Skip(_)
        ));
    }

    #[test]
    fn a_retained_volume_keeps_its_disk_with_its_claim_mapped() {
        let mut ctx = Context::default();
        ctx.mapping.insert("app".into(), "app2".into());
        ctx.storage_classes.insert("old".into(), "new".into());
        ctx.renamed_pvs.insert("pv-1".into(), "arca-clone-x".into());
        let mut v = pv("Retain");
        assert_eq!(transform(&mut v, &ctx), Verdict::Restore);
        assert_eq!(
            v["spec"]["claimRef"],
            json!({"namespace": "app2", "name": "data"})
        );
        assert_eq!(v["metadata"]["name"], "arca-clone-x");
        assert_eq!(v["metadata"]["annotations"][ORIGINAL_PV_ANNOTATION], "pv-1");
        assert!(
            v["metadata"]["annotations"]
                .get("pv.kubernetes.io/bound-by-controller")
                .is_none()
        );
        assert_eq!(v["spec"]["storageClassName"], "new");
    }
}
