//! PersistentVolumeClaims (Velero's pkg/restore/actions/pvc_action.go and the claim part of
//! restoreItem): binding and provisioning annotations go; a claim whose volume the cluster
//! provisions anew loses `volumeName`; one whose volume was renamed follows it; a claim
//! bound in the backup brings its volume along. `dataSource`, `dataSourceRef` and (unless
//! the class is explicitly "") `selector` go, as Velero's backup PVCAction removes them
//! (pkg/backup/actions/backup_pv_action.go): the snapshot or claim they name is not in the
//! target, and provisioners refuse a claim with a selector.

use serde_json::{Value, json};

use super::{Context, Verdict, remove_annotations, reset_volume_binding, str_at};

pub(super) fn transform(pvc: &mut Value, ctx: &Context) -> Verdict {
    remove_annotations(
        pvc,
        &[
            "volume.kubernetes.io/storage-provisioner",
            "volume.beta.kubernetes.io/storage-provisioner",
            "volume.kubernetes.io/selected-node",
            "velero.io/volume-snapshot-name",
            "velero.io/data-upload-name",
        ],
    );
    super::remove_at(pvc, "/spec", "dataSource");
    super::remove_at(pvc, "/spec", "dataSourceRef");
    if pvc
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        != Some("")
    {
        super::remove_at(pvc, "/spec", "selector");
    }
    if let Some(vol) = str_at(pvc, "/spec/volumeName").map(str::to_string) {
        reset_volume_binding(pvc);
        if ctx.pvs_to_provision.contains(&vol) {
            super::remove_at(pvc, "/spec", "volumeName");
        } else if let Some(new) = ctx.renamed_pvs.get(&vol) {
            pvc["spec"]["volumeName"] = json!(new);
        }
    }
    // Its data comes from a DataDownload (Velero's restoreFromDataUploadResult): no
    // volume name, and a selector that only the volume written for it will match, so
    // that no provisioner makes it an empty one meanwhile.
    let key = (
        str_at(pvc, "/metadata/namespace")
            .unwrap_or_default()
            .to_string(),
        str_at(pvc, "/metadata/name")
            .unwrap_or_default()
            .to_string(),
    );
    if let Some(value) = ctx.moved_claims.get(&key) {
        super::remove_at(pvc, "/spec", "volumeName");
        pvc["spec"]["selector"] =
            json!({"matchLabels": {crate::datamover::DYNAMIC_PV_RESTORE: value}});
    }
    ctx.map_storage_class(pvc.pointer_mut("/spec/storageClassName"));
    Verdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;

    const GR: &str = "persistentvolumeclaims";

    fn claim(vol: &str) -> Value {
        json!({
            "metadata": {"name": "data", "namespace": "app", "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "volume.kubernetes.io/storage-provisioner": "ebs",
                "volume.kubernetes.io/selected-node": "n1",
                "keep": "me"}},
            "spec": {"volumeName": vol, "storageClassName": "gp2"},
            "status": {"phase": "Bound"}
        })
    }

    #[test]
    fn a_dynamically_provisioned_claim_loses_its_volume_name() {
        let mut ctx = Context::default();
        ctx.pvs_to_provision.insert("pvc-123".into());
        let mut c = claim("pvc-123");
        assert_eq!(transform(&mut c, &ctx), Verdict::Restore);
        assert!(c["spec"].get("volumeName").is_none());
        assert_eq!(c["metadata"]["annotations"], json!({"keep": "me"}));
    }

    #[test]
    fn data_sources_and_selectors_go() {
        let mut c = claim("v");
        c["spec"]["dataSource"] = json!({"kind": "VolumeSnapshot", "name": "s"});
        c["spec"]["dataSourceRef"] = json!({"kind": "VolumeSnapshot", "name": "s"});
        c["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        transform(&mut c, &Context::default());
        for k in ["dataSource", "dataSourceRef", "selector"] {
            assert!(c["spec"].get(k).is_none(), "{k}");
        }
        let mut no_class = claim("v");
        no_class["spec"]["storageClassName"] = json!("");
        no_class["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        transform(&mut no_class, &Context::default());
        assert!(
            no_class["spec"].get("selector").is_some(),
            "class \"\" keeps its selector"
        );
    }

    #[test]
    fn a_static_claim_keeps_or_follows_its_volume() {
        let mut ctx = Context::default();
        let mut c = claim("static-1");
        transform(&mut c, &ctx);
        assert_eq!(c["spec"]["volumeName"], "static-1");
        ctx.renamed_pvs
            .insert("static-1".into(), "arca-clone-1".into());
        let mut c = claim("static-1");
        transform(&mut c, &ctx);
        assert_eq!(c["spec"]["volumeName"], "arca-clone-1");
    }

    #[test]
    fn a_claim_whose_data_moves_waits_for_its_written_volume() {
        let mut ctx = Context::default();
        ctx.moved_claims
            .insert(("app".into(), "data".into()), "sel-1".into());
        let mut c = claim("pvc-123");
        c["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        transform(&mut c, &ctx);
        assert!(c["spec"].get("volumeName").is_none());
        assert_eq!(
            c["spec"]["selector"],
            json!({"matchLabels": {"arca.dev/dynamic-pv-restore": "sel-1"}})
        );
    }

    #[test]
    fn only_a_bound_claim_brings_its_volume() {
        assert_eq!(super::super::additional(GR, &claim("v"))[0].name, "v");
        let mut pending = claim("v");
        pending["status"]["phase"] = json!("Pending");
        assert!(super::super::additional(GR, &pending).is_empty());
    }
}
