//! Jobs (Velero's pkg/restore/actions/job_action.go and restoreItem): a completed Job is
//! not restored; the controller-uid selector and template labels go, since the API server
//! sets them from the new Job's uid and refuses the old ones.

use serde_json::Value;

use super::{Context, Verdict, str_at};

const UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];

pub(super) fn transform(job: &mut Value, _: &Context) -> Verdict {
    if str_at(job, "/status/completionTime").is_some() {
        return Verdict::Skip("the job has completed".into());
    }
    for p in [
        "/spec/selector/matchLabels",
        "/spec/template/metadata/labels",
    ] {
        if let Some(m) = job.pointer_mut(p).and_then(Value::as_object_mut) {
            for l in UID_LABELS {
                m.remove(l);
            }
        }
    }
    Verdict::Restore
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn controller_uid_goes_and_completed_jobs_stay_behind() {
        let mut j = json!({"spec": {
            "selector": {"matchLabels": {"controller-uid": "u", "batch.kubernetes.io/controller-uid": "u", "app": "x"}},
            "template": {"metadata": {"labels": {"controller-uid": "u", "job-name": "j"}}}}});
        assert_eq!(transform(&mut j, &Context::default()), Verdict::Restore);
        assert_eq!(j["spec"]["selector"]["matchLabels"], json!({"app": "x"}));
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"],
            json!({"job-name": "j"})
        );
        let mut done = json!({"spec": {}, "status": {"completionTime": "2026-01-01T00:00:00Z"}});
        assert!(matches!(
            transform(&mut done, &Context::default()),
            Verdict::Skip(_)
        ));
    }
}
