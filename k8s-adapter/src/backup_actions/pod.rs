//! A pod needs its claims and its PriorityClass (Velero's `RelatedItemsForPod`,
//! pkg/util/actionhelpers/pod_helper.go).

use serde_json::Value;

use super::{Context, Related, str_at};

pub(super) fn related(pod: &Value, _: &Context) -> Vec<Related> {
    let ns = str_at(pod, "/metadata/namespace");
    let mut out = Vec::new();
    if let Some(pc) = str_at(pod, "/spec/priorityClassName") {
        out.push(Related::new("priorityclasses.scheduling.k8s.io", None, pc));
    }
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(claim) = str_at(v, "/persistentVolumeClaim/claimName") {
            out.push(Related::new("persistentvolumeclaims", ns, claim));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_and_priority_class() {
        let pod = json!({
            "metadata": {"namespace": "app", "name": "db-0"},
            "spec": {
                "priorityClassName": "high",
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}},
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "empty", "persistentVolumeClaim": {"claimName": ""}}
                ]
            }
        });
        assert_eq!(
            related(&pod, &Context::default()),
            [
                Related::new("priorityclasses.scheduling.k8s.io", None, "high"),
                Related::new("persistentvolumeclaims", Some("app"), "data-db-0"),
            ]
        );
        assert!(related(&json!({"metadata": {"name": "x"}}), &Context::default()).is_empty());
    }
}
