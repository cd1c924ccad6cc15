//! Pods (Velero's pkg/restore/actions/pod_action.go, add_pvc_from_pod_action.go and
//! restoreItem): a pod brings its claims and its PriorityClass; completed pods and
//! mirror pods are not restored; the scheduler places a pod anew (`nodeName` goes), the
//! admission plugin sets its priority again (`priority` goes), and volumes holding the
//! service account's old token Secret (`<account>-token-*`) go with their mounts. A pod
//! whose volumes were backed up by file system waits in its `restore-wait` init container
//! until they are written; init-container restore hooks follow it.

use serde_json::Value;

use super::{Context, Verdict, str_at};

pub(super) fn transform(pod: &mut Value, ctx: &Context) -> Verdict {
    if str_at(pod, "/metadata/annotations/kubernetes.io~1config.mirror").is_some() {
        return Verdict::Skip("a mirror pod: the kubelet creates it from its manifest".into());
    }
    if let Some(p @ ("Succeeded" | "Failed")) = str_at(pod, "/status/phase") {
        return Verdict::Skip(format!("the pod has completed ({p})"));
    }
    // File-system restore (Velero's pod_volume_restore_action.go): the restore-wait init
    // container first, holding the pod until its volumes are written; a stale one the pod
    // was backed up with goes either way.
    let key = (
        str_at(pod, "/metadata/namespace")
            .unwrap_or_default()
            .to_string(),
        str_at(pod, "/metadata/name")
            .unwrap_or_default()
            .to_string(),
    );
    let volumes = ctx.pod_volumes.get(&key).cloned().unwrap_or_default();
    crate::datamover::podvolume::add_restore_wait(
        pod,
        &volumes,
        &ctx.restore_wait_image,
        &ctx.restore_uid,
    );
    // Init-container hooks (Velero's init_restorehook_pod_action.go): after restore-wait.
    crate::hooks::restore::add_init_containers(pod, &ctx.restore_hooks);
    let prefix = format!(
        "{}-token-",
        str_at(pod, "/spec/serviceAccountName").unwrap_or_default()
    );
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Verdict::Restore;
    };
    spec.remove("nodeName");
    spec.remove("priority");
    let is_token = |v: &Value| {
        v.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(&prefix))
    };
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vols.retain(|v| !is_token(v));
    }
    for kind in ["containers", "initContainers"] {
        for c in spec
            .get_mut(kind)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(m) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                m.retain(|v| !is_token(v));
            }
        }
    }
    Verdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;

    const GR: &str = "pods";
    use serde_json::json;

    #[test]
    fn a_pod_is_cleaned_of_node_priority_and_token_volumes() {
        let mut p = json!({
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {
                "nodeName": "n1", "priority": 1000, "priorityClassName": "high",
                "serviceAccountName": "api",
                "volumes": [{"name": "api-token-x1"}, {"name": "kube-api-access-1"},
                            {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}}],
                "containers": [{"name": "c", "volumeMounts": [{"name": "api-token-x1"}, {"name": "data"}]}],
                "initContainers": [{"name": "i", "volumeMounts": [{"name": "api-token-x1"}]}]
            },
            "status": {"phase": "Running"}
        });
        assert_eq!(transform(&mut p, &Context::default()), Verdict::Restore);
        assert!(p["spec"].get("nodeName").is_none() && p["spec"].get("priority").is_none());
        assert_eq!(
            p["spec"]["volumes"],
            json!([{"name": "kube-api-access-1"},
                   {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}}])
        );
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": "data"}])
        );
        assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"], json!([]));
        let add = super::super::additional(GR, &p);
        assert_eq!(add[0].name, "high");
        assert_eq!(
            (
                add[1].group_resource.as_str(),
                add[1].namespace.as_deref(),
                add[1].name.as_str()
            ),
            ("persistentvolumeclaims", Some("app"), "data-0")
        );
    }

    #[test]
    fn a_pod_with_backed_up_volumes_waits_for_them() {
        let mut ctx = Context::default();
        ctx.pod_volumes
            .insert(("app".into(), "web".into()), vec!["data".into()]);
        ctx.restore_uid = "r-1".into();
        ctx.restore_wait_image = "arca:1".into();
        let mut p = json!({
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {"containers": [{"name": "c"}], "initContainers": [{"name": "restore-wait"}, {"name": "i"}]}
        });
        assert_eq!(transform(&mut p, &ctx), Verdict::Restore);
        let inits = p["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.len(), 2);
        assert_eq!(inits[0]["volumeMounts"][0]["mountPath"], "/restores/data");
        assert_eq!(inits[1]["name"], "i");
        let mut other = json!({
            "metadata": {"name": "db", "namespace": "app"},
            "spec": {"containers": [{"name": "c"}], "initContainers": [{"name": "restore-wait"}]}
        });
        transform(&mut other, &ctx);
        assert!(
            other["spec"].get("initContainers").is_none(),
            "a stale one goes"
        );
    }

    #[test]
    fn completed_and_mirror_pods_are_skipped() {
        for phase in ["Succeeded", "Failed"] {
            let mut p = json!({"spec": {}, "status": {"phase": phase}});
            assert!(matches!(
                transform(&mut p, &Context::default()),
                Verdict::Skip(_)
            ));
        }
        let mut m = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}, "spec": {}});
        assert!(matches!(
            transform(&mut m, &Context::default()),
            Verdict::Skip(_)
        ));
    }
}
