//! Hooks: commands run in the application's own containers around a backup (pre and post
//! exec hooks) and while its pods come back (init containers and exec hooks of a restore).
//! As Velero's internal/hook (item_hook_handler.go, wait_exec_hook_handler.go) and
//! pkg/podexec; where Velero's code departs from its documentation or hangs, Arca follows
//! the documented intent and says so next to the rule.
//!
//! What a hook is and which pods it applies to is decided here by pure functions of the
//! pod and the spec ([`backup::planned`], [`restore::exec_hooks`], [`restore::add_init_containers`]);
//! [`exec`] runs one command through the API server's `pods/exec`.

pub mod backup;
pub mod restore;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::filter::{IncludesExcludes, NamespaceFilter, selector_matches};

/// The hook name of a hook read from a pod's annotations (Velero's `<from-annotation>`).
pub const FROM_ANNOTATION: &str = "<from-annotation>";

/// The record file listing a backup's or restore's hook runs.
pub const HOOKS_FILE: &str = "hooks.json";

/// A command's run time when none is given (Velero's podexec `defaultTimeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of each output stream a hook run keeps (the rest is dropped, and said so).
const OUTPUT_LIMIT: usize = 64 * 1024;

/// What a failed hook does to the operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnError {
    /// An error: the backup or restore ends PartiallyFailed, and what the hook guarded
    /// does not go on (a pre hook's pod is not backed up; a restored pod's later hooks
    /// are not run).
    Fail,
    /// A warning; the rest goes on. The default: Velero's code treats an unset or unknown
    /// value so (its docs say Fail), and a backup that still takes the data is the safer
    /// of the two.
    #[default]
    Continue,
}

impl OnError {
    /// From a spec or annotation value: exactly `Fail` or `Continue`, as Velero's enum;
    /// anything else is the default.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Fail") => Self::Fail,
            _ => Self::Continue,
        }
    }
}

/// A command to run in a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The hook's name (`<from-annotation>` or the spec entry's name).
    pub hook: String,
    /// The container; `None`: the pod's first.
    pub container: Option<String>,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// What a failure does.
    pub on_error: OnError,
    /// How long it may run; `None`: no limit (a negative duration, as Velero's).
    pub timeout: Option<Duration>,
}

/// How a hook run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Exit code 0.
    Succeeded,
    /// It ran and failed, timed out, or could not be started.
    Failed,
    /// Not run: its pod was not running, was gone, or an earlier hook failed with Fail.
    Skipped,
}

/// One hook run, as stored in the record (`hooks.json`) and listed by `describe --details`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRun {
    /// `pre`, `post` (backup) or `restore` (a restored pod's exec hook).
    pub phase: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The container it ran in (resolved).
    pub container: String,
    /// The hook's name.
    pub hook: String,
    /// The command.
    pub command: Vec<String>,
    /// Its onError.
    pub on_error: OnError,
    /// How it ended.
    pub outcome: Outcome,
    /// The command's exit code, when it ran to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds from start to end (of the command; waiting for a container excluded).
    pub duration_ms: u64,
    /// Its standard output (the first 64 KiB).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// Its standard error (the first 64 KiB).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

impl HookRun {
    /// A run that did not happen.
    pub fn skipped(phase: &str, ns: &str, pod: &str, c: &Command, why: String) -> Self {
        Self {
            phase: phase.into(),
            namespace: ns.into(),
            pod: pod.into(),
            container: c.container.clone().unwrap_or_default(),
            hook: c.hook.clone(),
            command: c.command.clone(),
            on_error: c.on_error,
            outcome: Outcome::Skipped,
            exit_code: None,
            error: Some(why),
            duration_ms: 0,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// A run that failed before its command could start (no such container, a bad
    /// setting, its pod gone or never up).
    pub fn failed_unrun(phase: &str, ns: &str, pod: &str, c: &Command, why: String) -> Self {
        Self {
            outcome: Outcome::Failed,
            ..Self::skipped(phase, ns, pod, c, why)
        }
    }

    /// How the operation counts it: `error` (a failure with onError Fail), `warning` (one
    /// with Continue, or a skip), `info` (a success, or a skip after a Fail, which that
    /// Fail's error covers).
    pub fn level(&self) -> &'static str {
        match (self.outcome, self.on_error) {
            (Outcome::Succeeded, _) => "info",
            (Outcome::Skipped, _) if self.error.as_deref() == Some(AFTER_FAIL) => "info",
            (Outcome::Failed, OnError::Fail) => "error",
            _ => "warning",
        }
    }

    /// Whether it ran and failed (or could not be started).
    pub fn failed(&self) -> bool {
        self.outcome == Outcome::Failed
    }

    /// The log's lines: the summary, then the output whatever the outcome.
    pub fn log_text(&self) -> String {
        let mut s = self.summary();
        if self.outcome == Outcome::Succeeded {
            for (name, out) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
                let t = out.trim_end();
                if !t.is_empty() {
                    s.push_str(&format!("; {name}: {t}"));
                }
            }
        }
        s
    }

    /// One line for results and logs: where, what, how it ended, and a failure's output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} hook {} in container {} of pod {}/{} ({})",
            self.phase,
            self.hook,
            self.container,
            self.namespace,
            self.pod,
            self.command.join(" ")
        );
        match (self.outcome, self.exit_code, &self.error) {
            (Outcome::Succeeded, _, _) => s.push_str(" succeeded"),
            (_, Some(code), _) => s.push_str(&format!(" failed with exit code {code}")),
            (Outcome::Skipped, _, Some(e)) => s.push_str(&format!(" skipped: {e}")),
            (_, None, Some(e)) => s.push_str(&format!(" failed: {e}")),
            (_, None, None) => s.push_str(" failed"),
        }
        for (name, out) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let t = out.trim_end();
            if !t.is_empty() && self.outcome != Outcome::Succeeded {
                s.push_str(&format!("; {name}: {t}"));
            }
        }
        s
    }
}

/// Totals for a status's `hookStatus`, as Velero's trackers count: attempted (run, or
/// skipped after a Fail), failed (a restore hook skipped after a Fail counts as failed, a
/// backup hook does not).
pub fn status(runs: &[HookRun]) -> crate::crd::HookStatus {
    let attempted = runs
        .iter()
        .filter(|r| r.outcome != Outcome::Skipped || r.failed_by_fail())
        .count();
    let failed = runs
        .iter()
        .filter(|r| r.failed() || (r.failed_by_fail() && r.phase == restore::PHASE))
        .count();
    crate::crd::HookStatus {
        hooks_attempted: Some(attempted as i64),
        hooks_failed: Some(failed as i64),
    }
}

/// The reason given to hooks not run because an earlier one failed with onError Fail.
pub const AFTER_FAIL: &str = "an earlier hook failed with onError Fail";

impl HookRun {
    fn failed_by_fail(&self) -> bool {
        self.outcome == Outcome::Skipped && self.error.as_deref() == Some(AFTER_FAIL)
    }
}

/// A command from an annotation: a JSON array of strings when it starts with `[`, else
/// one argument (no shell splitting), as Velero's parseStringToCommand.
pub fn parse_command(s: &str) -> Vec<String> {
    if s.starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(s)
    {
        return v;
    }
    vec![s.to_string()]
}

/// A Go duration (`30s`, `1m30s`); `None` when it is not one. Zero is the default; a
/// negative duration means no limit (Velero's podexec).
pub fn parse_timeout(s: Option<&str>, default: Duration) -> Result<Option<Duration>, String> {
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        return Ok(Some(default));
    };
    let nanos = crate::backup::parse_go_duration_nanos(s)
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m)"))?;
    Ok(match nanos {
        0 => Some(default),
        n if n < 0 => None,
        n => Some(Duration::from_nanos(n as u64)),
    })
}

/// Which pods a spec entry's selection takes (Velero's ResourceHookSelector): namespace
/// globs, resources (only pods run hooks: empty, `*` or `pods` takes them) and labels.
pub struct Selection {
    namespaces: Option<NamespaceFilter>,
    pods: bool,
    labels: Option<LabelSelector>,
}

impl Selection {
    /// From a spec entry's selector.
    pub fn new(s: &crate::crd::HookSelector) -> Self {
        let pods = |v: Option<&Vec<String>>| -> Vec<String> {
            v.into_iter()
                .flatten()
                .map(|r| match r.as_str() {
                    "pod" | "po" | "pods" | "pods." => "pods".to_string(),
                    other => other.to_string(),
                })
                .collect()
        };
        Self {
            // A pattern that does not compile matches nothing (Velero's glob does the same).
            namespaces: NamespaceFilter::new(
                s.included_namespaces.as_deref().unwrap_or_default(),
                s.excluded_namespaces.as_deref().unwrap_or_default(),
            )
            .ok(),
            pods: IncludesExcludes::new(
                &pods(s.included_resources.as_ref()),
                &pods(s.excluded_resources.as_ref()),
            )
            .includes("pods"),
            labels: s.label_selector.clone(),
        }
    }

    /// Whether it takes a pod in `ns` with `labels`.
    pub fn takes(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        self.pods
            && self.namespaces.as_ref().is_some_and(|n| n.includes(ns))
            && self
                .labels
                .as_ref()
                .is_none_or(|s| selector_matches(s, labels))
    }
}

/// Why a spec entry's selection is unusable, for validation: a namespace pattern that
/// does not compile, a label requirement Kubernetes would refuse, an empty name.
pub fn validate_selector(kind: &str, name: &str, s: &crate::crd::HookSelector) -> Vec<String> {
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push(format!("{kind} hook: every entry needs a name"));
    }
    if let Err(e) = NamespaceFilter::new(
        s.included_namespaces.as_deref().unwrap_or_default(),
        s.excluded_namespaces.as_deref().unwrap_or_default(),
    ) {
        errs.push(format!("{kind} hook {name}: {e}"));
    }
    for r in s
        .label_selector
        .iter()
        .flat_map(|l| l.match_expressions.iter().flatten())
    {
        let values = r.values.as_ref().is_some_and(|v| !v.is_empty());
        let ok = match r.operator.as_str() {
            "In" | "NotIn" => values,
            "Exists" | "DoesNotExist" => !values,
            _ => false,
        };
        if !ok {
            errs.push(format!(
                "{kind} hook {name}: label selector requirement on {:?}: operator {:?} with {} values is not valid",
                r.key,
                r.operator,
                r.values.as_ref().map_or(0, Vec::len)
            ));
        }
    }
    errs
}

/// A pod's annotation, under Arca's prefix or Velero's (Arca's wins).
pub(crate) fn annotation<'a>(pod: &'a Value, arca: &str, velero: &str) -> Option<&'a str> {
    let a = pod.pointer("/metadata/annotations")?;
    [arca, velero]
        .iter()
        .find_map(|k| a.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// The container a command runs in: the one named, if the pod has it (a native sidecar,
/// an init container that keeps running, counts, as in Velero), else the first.
pub fn container_of(pod: &Value, named: Option<&str>) -> Result<String, String> {
    let names = |kind: &str, sidecars: bool| -> Vec<String> {
        pod.pointer(&format!("/spec/{kind}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| {
                !sidecars || c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
            })
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let containers = names("containers", false);
    match named.filter(|n| !n.is_empty()) {
        None => containers
            .first()
            .cloned()
            .ok_or_else(|| "the pod has no container".to_string()),
        Some(n)
            if containers.iter().any(|c| c == n)
                || names("initContainers", true).iter().any(|c| c == n) =>
        {
            Ok(n.to_string())
        }
        Some(n) => Err(format!("the pod has no container {n:?}")),
    }
}

/// Run `c` in pod `ns/pod` (its container resolved already) through `pods/exec`, with
/// its timeout; the run's outcome, exit code and output. On a timeout the connection is
/// closed; the process in the container is not killed (no API does that), as Velero's.
pub async fn exec(
    client: &Client,
    phase: &str,
    ns: &str,
    pod: &str,
    container: &str,
    c: &Command,
) -> HookRun {
    let mut run = HookRun {
        phase: phase.into(),
        namespace: ns.into(),
        pod: pod.into(),
        container: container.into(),
        hook: c.hook.clone(),
        command: c.command.clone(),
        on_error: c.on_error,
        outcome: Outcome::Failed,
        exit_code: None,
        error: None,
        duration_ms: 0,
        stdout: String::new(),
        stderr: String::new(),
    };
    if c.command.is_empty() {
        run.error = Some("the hook has no command".into());
        return run;
    }
    let started = Instant::now();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let attach = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let work = async {
        let mut p = api
            .exec(pod, c.command.clone(), &attach)
            .await
            .map_err(|e| format!("exec: {e}"))?;
        let status = p.take_status();
        let (out, err) = tokio::join!(read_capped(p.stdout()), read_capped(p.stderr()));
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = p.join().await;
        Ok::<_, String>((out, err, status))
    };
    let done = match c.timeout {
        Some(t) => tokio::time::timeout(t, work).await.unwrap_or_else(|_| {
            Err(format!(
                "timed out after {}",
                crate::backup::format_go_duration(t.as_secs() as i64)
            ))
        }),
        None => work.await,
    };
    run.duration_ms = started.elapsed().as_millis() as u64;
    match done {
        Err(e) => run.error = Some(e),
        Ok((out, err, status)) => {
            run.stdout = out;
            run.stderr = err;
            match status {
                Some(s) if s.status.as_deref() == Some("Success") => {
                    run.outcome = Outcome::Succeeded;
                    run.exit_code = Some(0);
                }
                Some(s) => {
                    // A non-zero exit: reason NonZeroExitCode, the code in the causes.
                    run.exit_code = s
                        .details
                        .as_ref()
                        .and_then(|d| d.causes.as_ref())
                        .into_iter()
                        .flatten()
                        .find(|c| c.reason.as_deref() == Some("ExitCode"))
                        .and_then(|c| c.message.as_deref()?.parse().ok());
                    if run.exit_code.is_none() {
                        run.error = Some(s.message.unwrap_or_else(|| "the command failed".into()));
                    }
                }
                None => run.error = Some("the API server sent no exit status".into()),
            }
        }
    }
    run
}

async fn read_capped(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut dropped = 0usize;
    // Read to the end whatever the size (the stream must drain for the status to come).
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_LIMIT.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
        dropped += n - room;
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        s.push_str(&format!("\n[{dropped} more bytes not kept]"));
    }
    s
}

/// The pod's phase and whether it is gone, read now.
pub(crate) async fn read_pod(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Value>, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(p) => Ok(p.map(|p| serde_json::to_value(p).expect("serializes"))),
        Err(e) => Err(format!("read pod {ns}/{name}: {e}")),
    }
}

/// The pod's labels.
pub(crate) fn labels(pod: &Value) -> BTreeMap<String, String> {
    pod.pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_are_json_arrays_or_one_argument() {
        assert_eq!(
            parse_command(r#"["/bin/sh","-c","echo hi"]"#),
            vec!["/bin/sh", "-c", "echo hi"]
        );
        // No shell splitting, as Velero's.
        assert_eq!(parse_command("/bin/ls -la"), vec!["/bin/ls -la"]);
        // A malformed array is one argument.
        assert_eq!(parse_command("[foo"), vec!["[foo"]);
        assert_eq!(parse_command("[1,2]"), vec!["[1,2]"]);
        assert_eq!(parse_command(r#" ["a"]"#), vec![r#" ["a"]"#]);
    }

    #[test]
    fn timeouts_default_and_negative_means_none() {
        let d = DEFAULT_TIMEOUT;
        assert_eq!(parse_timeout(None, d), Ok(Some(d)));
        assert_eq!(parse_timeout(Some(""), d), Ok(Some(d)));
        assert_eq!(parse_timeout(Some("0s"), d), Ok(Some(d)));
        assert_eq!(
            parse_timeout(Some("1m30s"), d),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(parse_timeout(Some("-1s"), d), Ok(None));
        assert!(
            parse_timeout(Some("30"), d)
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn on_error_is_exactly_fail_or_continue() {
        assert_eq!(OnError::parse(Some("Fail")), OnError::Fail);
        assert_eq!(OnError::parse(Some("fail")), OnError::Continue);
        assert_eq!(OnError::parse(None), OnError::Continue);
    }

    #[test]
    fn selection_takes_pods_by_namespace_resource_and_label() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let l = BTreeMap::from([("app".to_string(), "db".to_string())]);
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
            ..Default::default()
        };
        let new = |inc_ns: &[&str],
                   exc_ns: &[&str],
                   inc: &[&str],
                   exc: &[&str],
                   labels: Option<&LabelSelector>| {
            let o = |s: &[&str]| (!s.is_empty()).then(|| v(s));
            Selection::new(&crate::crd::HookSelector {
                included_namespaces: o(inc_ns),
                excluded_namespaces: o(exc_ns),
                included_resources: o(inc),
                excluded_resources: o(exc),
                label_selector: labels.cloned(),
            })
        };
        assert!(new(&[], &[], &[], &[], None).takes("x", &l));
        let by_ns = new(&["prod-*"], &["prod-b"], &[], &[], None);
        assert!(by_ns.takes("prod-a", &l) && !by_ns.takes("prod-b", &l) && !by_ns.takes("dev", &l));
        // Only pods run hooks: a selection of deployments takes none.
        assert!(!new(&[], &[], &["deployments"], &[], None).takes("x", &l));
        assert!(new(&[], &[], &["pod"], &[], None).takes("x", &l));
        assert!(!new(&[], &[], &["*"], &["pods"], None).takes("x", &l));
        let by_label = new(&[], &[], &[], &[], Some(&sel));
        assert!(by_label.takes("x", &l) && !by_label.takes("x", &BTreeMap::new()));
    }

    #[test]
    fn the_container_is_the_named_one_or_the_first() {
        let pod = json!({"spec": {
            "containers": [{"name": "app"}, {"name": "side"}],
            "initContainers": [{"name": "init"}, {"name": "proxy", "restartPolicy": "Always"}]
        }});
        assert_eq!(container_of(&pod, None).unwrap(), "app");
        assert_eq!(container_of(&pod, Some("")).unwrap(), "app");
        assert_eq!(container_of(&pod, Some("side")).unwrap(), "side");
        assert_eq!(container_of(&pod, Some("proxy")).unwrap(), "proxy");
        assert!(
            container_of(&pod, Some("init"))
                .unwrap_err()
                .contains("no container \"init\"")
        );
        assert!(container_of(&json!({"spec": {}}), None).is_err());
    }

    #[test]
    fn totals_count_runs_and_skips_after_a_fail() {
        let c = Command {
            hook: "h".into(),
            container: Some("app".into()),
            command: vec!["true".into()],
            on_error: OnError::Fail,
            timeout: None,
        };
        let mut ok = HookRun::skipped("pre", "ns", "p", &c, String::new());
        ok.outcome = Outcome::Succeeded;
        ok.error = None;
        let mut bad = ok.clone();
        bad.outcome = Outcome::Failed;
        bad.exit_code = Some(3);
        let after = HookRun::skipped("pre", "ns", "p", &c, AFTER_FAIL.into());
        let not_running = HookRun::skipped("pre", "ns", "q", &c, "the pod is not running".into());
        let s = status(&[ok.clone(), bad.clone(), after.clone(), not_running]);
        // Velero's backup tracker: 3 attempted, 1 failed.
        assert_eq!((s.hooks_attempted, s.hooks_failed), (Some(3), Some(1)));
        let in_restore = |r: &HookRun| HookRun {
            phase: restore::PHASE.into(),
            ..r.clone()
        };
        let s = status(&[in_restore(&ok), in_restore(&bad), in_restore(&after)]);
        // Velero's restore tracker records the hooks not run as failed.
        assert_eq!((s.hooks_attempted, s.hooks_failed), (Some(3), Some(2)));
        assert!(
            bad.summary().contains("failed with exit code 3"),
            "{}",
            bad.summary()
        );
    }
}
