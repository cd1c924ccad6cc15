//! Backup exec hooks (Velero's ItemHookHandler.HandleHooks): a pod's annotation hook for
//! a phase, or else every spec hook whose selection takes the pod, run in order in the
//! pod's containers; pre hooks before the pod's volumes are taken, post hooks after.

use std::collections::BTreeSet;

use kube::Client;
use serde_json::Value;

use super::{
    AFTER_FAIL, Command, DEFAULT_TIMEOUT, FROM_ANNOTATION, HookRun, OnError, Outcome, Selection,
    annotation, container_of, labels, parse_command, parse_timeout,
};
use crate::crd::BackupResourceHookSpec;

/// Before or after the pod's volumes are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before.
    Pre,
    /// After.
    Post,
}

impl Phase {
    /// `pre` or `post`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

/// The hooks a pod runs in `phase`, and warnings about its annotations. An annotation hook
/// replaces the spec's hooks of that phase (only that phase, as Velero's); for pre, the
/// unprefixed `hook.backup.velero.io/*` annotations count when no `pre.` command is set.
pub fn planned(
    pod: &Value,
    specs: &[BackupResourceHookSpec],
    phase: Phase,
) -> (Vec<Command>, Vec<String>) {
    let mut warnings = Vec::new();
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let p = phase.as_str();
    let mut prefixes = vec![(
        format!("{p}.hook.backup.arca.dev/"),
        format!("{p}.hook.backup.velero.io/"),
    )];
    if phase == Phase::Pre {
        prefixes.push((
            "hook.backup.arca.dev/".into(),
            "hook.backup.velero.io/".into(),
        ));
    }
    for (arca, velero) in prefixes {
        let get = |k: &str| annotation(pod, &format!("{arca}{k}"), &format!("{velero}{k}"));
        let Some(command) = get("command") else {
            continue;
        };
        let timeout = match parse_timeout(get("timeout"), DEFAULT_TIMEOUT) {
            Ok(t) => t,
            Err(e) => {
                warnings.push(format!(
                    "{p} hook annotation of pod {ns}/{}: timeout {e}; the default 30s applies",
                    pod.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ));
                Some(DEFAULT_TIMEOUT)
            }
        };
        let c = Command {
            hook: FROM_ANNOTATION.into(),
            container: get("container").map(str::to_string),
            command: parse_command(command),
            on_error: OnError::parse(get("on-error")),
            timeout,
        };
        return (vec![c], warnings);
    }
    let mut out = Vec::new();
    let pod_labels = labels(pod);
    for spec in specs {
        let sel = Selection::new(&spec.selector);
        if !sel.takes(ns, &pod_labels) {
            continue;
        }
        let hooks = match phase {
            Phase::Pre => &spec.pre,
            Phase::Post => &spec.post,
        };
        for h in hooks.iter().flatten() {
            let Some(e) = &h.exec else { continue };
            let timeout =
                parse_timeout(e.timeout.as_deref(), DEFAULT_TIMEOUT).unwrap_or_else(|err| {
                    warnings.push(format!(
                        "{p} hook {}: timeout {err}; the default 30s applies",
                        spec.name
                    ));
                    Some(DEFAULT_TIMEOUT)
                });
            out.push(Command {
                hook: spec.name.clone(),
                container: e.container.clone().filter(|c| !c.is_empty()),
                command: e.command.clone(),
                on_error: OnError::parse(e.on_error.as_deref()),
                timeout,
            });
        }
    }
    (out, warnings)
}

/// What a phase's hooks did.
#[derive(Debug, Default)]
pub struct PhaseRun {
    /// Every hook planned, run or not.
    pub runs: Vec<HookRun>,
    /// Pods a Fail hook failed in, by (namespace, name): after a pre hook, their manifest
    /// and volumes are not backed up and they run no post hooks (Velero's backupItemBlock).
    pub failed_pods: BTreeSet<(String, String)>,
    /// Warnings about annotations.
    pub warnings: Vec<(String, String)>,
}

/// The pods whose pre hooks ran (or began) and whose post hooks have not: what a backup
/// stopped halfway owes a thaw.
pub type Frozen = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// A pod's (namespace, name).
pub(crate) fn key(pod: &Value) -> (String, String) {
    let m = |f: &str| {
        pod.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (m("namespace"), m("name"))
}

/// Why the spec's hooks cannot run, for the backup's validation.
pub fn validate(specs: &[BackupResourceHookSpec]) -> Vec<String> {
    let mut errs = Vec::new();
    for s in specs {
        errs.extend(super::validate_selector("backup", &s.name, &s.selector));
        for (what, hooks) in [("pre", &s.pre), ("post", &s.post)] {
            for (i, h) in hooks.iter().flatten().enumerate() {
                let Some(e) = &h.exec else { continue };
                if e.command.is_empty() {
                    errs.push(format!(
                        "backup hook {} {what}[{i}]: exec has no command",
                        s.name
                    ));
                }
                if let Err(err) = parse_timeout(e.timeout.as_deref(), DEFAULT_TIMEOUT) {
                    errs.push(format!("backup hook {} {what}[{i}]: timeout {err}", s.name));
                }
            }
        }
    }
    errs
}

/// Run `phase`'s hooks of `pods` (their backed-up objects), one pod after another, each
/// pod's hooks in order, as Velero's. A pod not running (read now) skips its hooks with a
/// warning; after a failed Fail hook, the pod's later hooks are not run. A pod enters
/// `frozen` as its first pre hook starts (and leaves it if its pre hooks failed with
/// none succeeding), and leaves it once its post hooks ran.
pub async fn run(
    client: &Client,
    phase: Phase,
    pods: &[&Value],
    specs: &[BackupResourceHookSpec],
    frozen: &Frozen,
) -> PhaseRun {
    let mut out = PhaseRun::default();
    let p = phase.as_str();
    for pod in pods {
        let (commands, warnings) = planned(pod, specs, phase);
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        out.warnings
            .extend(warnings.into_iter().map(|w| (ns.clone(), w)));
        if commands.is_empty() {
            frozen.lock().expect("lock").retain(|p| key(p) != key(pod));
            continue;
        }
        let live = match super::read_pod(client, &ns, &name).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err("the pod is gone".to_string()),
            Err(e) => Err(e),
        };
        let live = live.and_then(
            |l| match l.pointer("/status/phase").and_then(Value::as_str) {
                Some("Running") => Ok(l),
                other => Err(format!(
                    "the pod is not running (phase {})",
                    other.unwrap_or("unknown")
                )),
            },
        );
        if phase == Phase::Pre && live.is_ok() {
            frozen.lock().expect("lock").push((*pod).clone());
        }
        let mut failed = false;
        let mut succeeded = false;
        for c in &commands {
            let run = match (&live, failed) {
                (Err(why), _) => HookRun::skipped(p, &ns, &name, c, why.clone()),
                (Ok(_), true) => HookRun::skipped(p, &ns, &name, c, AFTER_FAIL.into()),
                (Ok(l), false) => match container_of(l, c.container.as_deref()) {
                    Ok(container) => super::exec(client, p, &ns, &name, &container, c).await,
                    Err(e) => HookRun::failed_unrun(p, &ns, &name, c, e),
                },
            };
            let mut run = run;
            if run.container.is_empty() {
                // Not run: named as the backed-up pod names it.
                run.container = container_of(pod, c.container.as_deref())
                    .unwrap_or_else(|_| c.container.clone().unwrap_or_default());
            }
            if run.failed() && c.on_error == OnError::Fail {
                failed = true;
                out.failed_pods.insert((ns.clone(), name.clone()));
            }
            succeeded |= run.outcome == Outcome::Succeeded;
            out.runs.push(run);
        }
        // Thawed now, or nothing was frozen: a pod whose only pre hooks failed.
        if phase == Phase::Post || (failed && !succeeded) {
            frozen.lock().expect("lock").retain(|p| key(p) != key(pod));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackupResourceHook, ExecHook};
    use serde_json::json;

    fn spec(name: &str, ns: &[&str], pre: &[&str], post: &[&str]) -> BackupResourceHookSpec {
        let hook = |c: &&str| BackupResourceHook {
            exec: Some(ExecHook {
                container: None,
                command: vec![c.to_string()],
                on_error: Some("Fail".into()),
                timeout: Some("5s".into()),
            }),
        };
        BackupResourceHookSpec {
            name: name.into(),
            selector: crate::crd::HookSelector {
                included_namespaces: Some(ns.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            pre: Some(pre.iter().map(hook).collect()),
            post: Some(post.iter().map(hook).collect()),
        }
    }

    #[test]
    fn spec_hooks_in_order_for_the_pods_they_select() {
        let pod =
            json!({"metadata": {"name": "db-0", "namespace": "prod", "labels": {"app": "db"}}});
        let specs = [
            spec("freeze", &["prod"], &["fsfreeze", "sync"], &["unfreeze"]),
            spec("other", &["dev"], &["x"], &[]),
            spec("all", &[], &["y"], &[]),
        ];
        let (pre, w) = planned(&pod, &specs, Phase::Pre);
        assert!(w.is_empty());
        let names: Vec<_> = pre
            .iter()
            .map(|c| (c.hook.as_str(), c.command[0].as_str()))
            .collect();
        assert_eq!(
            names,
            [("freeze", "fsfreeze"), ("freeze", "sync"), ("all", "y")]
        );
        assert_eq!(pre[0].on_error, OnError::Fail);
        assert_eq!(pre[0].timeout, Some(std::time::Duration::from_secs(5)));
        let (post, _) = planned(&pod, &specs, Phase::Post);
        assert_eq!(post.len(), 1);
    }

    #[test]
    fn an_annotation_hook_replaces_the_spec_hooks_of_its_phase_only() {
        let pod = json!({"metadata": {"name": "db-0", "namespace": "prod", "annotations": {
            "pre.hook.backup.velero.io/command": "[\"/bin/sh\",\"-c\",\"echo hi\"]",
            "pre.hook.backup.velero.io/container": "db",
            "pre.hook.backup.arca.dev/on-error": "Fail",
            "pre.hook.backup.velero.io/timeout": "2m"
        }}});
        let specs = [spec("freeze", &["prod"], &["fsfreeze"], &["unfreeze"])];
        let (pre, _) = planned(&pod, &specs, Phase::Pre);
        assert_eq!(
            pre,
            vec![Command {
                hook: FROM_ANNOTATION.into(),
                container: Some("db".into()),
                command: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                on_error: OnError::Fail,
                timeout: Some(std::time::Duration::from_secs(120)),
            }]
        );
        // The spec's post hook still runs.
        assert_eq!(planned(&pod, &specs, Phase::Post).0[0].hook, "freeze");
    }

    #[test]
    fn validation_names_bad_entries() {
        let mut bad = spec("", &["["], &["x"], &[]);
        bad.pre.as_mut().unwrap()[0].exec.as_mut().unwrap().timeout = Some("5".into());
        bad.post = Some(vec![BackupResourceHook {
            exec: Some(ExecHook::default()),
        }]);
        bad.selector.label_selector = Some(
            serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "In"}]}))
                .unwrap(),
        );
        let e = validate(&[bad, spec("ok", &["prod"], &["x"], &["y"])]);
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e[0].contains("needs a name"));
        assert!(e[1].contains("\"[\""), "{e:#?}");
        assert!(e[2].contains("operator \"In\" with 0 values"));
        assert!(e[3].contains("pre[0]: timeout"));
        assert!(e[4].contains("post[0]: exec has no command"));
    }

    #[test]
    fn unprefixed_annotations_are_pre_hooks_and_bad_timeouts_warn() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "annotations": {
            "hook.backup.velero.io/command": "sync",
            "hook.backup.velero.io/timeout": "30"
        }}});
        let (pre, w) = planned(&pod, &[], Phase::Pre);
        assert_eq!(pre[0].command, vec!["sync"]);
        assert_eq!(pre[0].on_error, OnError::Continue);
        assert_eq!(pre[0].timeout, Some(DEFAULT_TIMEOUT));
        assert!(w[0].contains("not a duration"), "{w:?}");
        assert!(planned(&pod, &[], Phase::Post).0.is_empty());
        // A `pre.` command wins over the unprefixed one.
        let mut both = pod.clone();
        both["metadata"]["annotations"]["pre.hook.backup.arca.dev/command"] = json!("fsfreeze");
        assert_eq!(
            planned(&both, &[], Phase::Pre).0[0].command,
            vec!["fsfreeze"]
        );
    }
}
