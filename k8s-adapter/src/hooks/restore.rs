//! Restore hooks. Init containers (Velero's InitRestoreHookPodAction) go into a restored
//! pod before it is created, after the restore-wait container; exec hooks (Velero's
//! WaitExecHookHandler) run in the pods this restore created, each container's hooks in
//! order once that container runs (or is ready), while the restore waits for them.
//!
//! Where Velero hangs or surprises, Arca does not: a hook naming a container the pod lacks
//! fails at once (Velero drops it and the restore never leaves Finalizing, issue 9749); a
//! wait with no `waitTimeout` ends at the restore's item-operation timeout (Velero waits
//! forever, issue 9744); a hook whose wait expired is not run afterwards; a failed hook
//! stops only its own pod's later hooks, and only with onError Fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};

use super::{
    AFTER_FAIL, Command, DEFAULT_TIMEOUT, FROM_ANNOTATION, HookRun, OnError, Selection, annotation,
    container_of, labels, parse_command, parse_timeout,
};
use crate::crd::RestoreResourceHookSpec;

/// The phase name of restore exec hook runs.
pub const PHASE: &str = "restore";

/// The name of the init container an annotation adds when it names none.
pub const INIT_NAME: &str = "arca-restore-init";

/// Velero's GetRestoreHooksFromSpec takes pods whatever the entry's resources say.
fn selection(s: &RestoreResourceHookSpec) -> Selection {
    Selection::new(&crate::crd::HookSelector {
        included_resources: None,
        excluded_resources: None,
        ..s.selector.clone()
    })
}

fn meta<'a>(pod: &'a Value, field: &str) -> &'a str {
    pod.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Why the spec's hooks cannot run, for the restore's validation (Velero's: every init
/// container has a name, an image and a command; every exec hook a command).
pub fn validate(specs: &[RestoreResourceHookSpec]) -> Vec<String> {
    let mut errs = Vec::new();
    for s in specs {
        errs.extend(super::validate_selector("restore", &s.name, &s.selector));
        for (i, h) in s.post_hooks.iter().flatten().enumerate() {
            for c in h
                .init
                .iter()
                .flat_map(|i| i.init_containers.iter().flatten())
            {
                let has = |k: &str| match c.get(k) {
                    Some(Value::String(s)) => !s.is_empty(),
                    Some(Value::Array(a)) => !a.is_empty(),
                    _ => false,
                };
                if !(has("name") && has("image") && has("command")) {
                    errs.push(format!(
                        "restore hook {} postHooks[{i}]: an init container needs a name, an image and a command",
                        s.name
                    ));
                }
            }
            if let Some(e) = &h.exec {
                if e.command.is_empty() {
                    errs.push(format!(
                        "restore hook {} postHooks[{i}]: exec has no command",
                        s.name
                    ));
                }
                for (what, v) in [
                    ("execTimeout", &e.exec_timeout),
                    ("waitTimeout", &e.wait_timeout),
                ] {
                    if let Err(err) = parse_timeout(v.as_deref(), DEFAULT_TIMEOUT) {
                        errs.push(format!(
                            "restore hook {} postHooks[{i}]: {what} {err}",
                            s.name
                        ));
                    }
                }
            }
        }
    }
    errs
}

/// Add the init containers of the pod's annotation (which replaces the spec's) or of the
/// spec entries taking it (target namespace, restored labels), after a leading
/// restore-wait container and before the pod's own. The names added, in order.
pub fn add_init_containers(pod: &mut Value, specs: &[RestoreResourceHookSpec]) -> Vec<String> {
    let get = |k: &str| {
        annotation(
            pod,
            &format!("init.hook.restore.arca.dev/{k}"),
            &format!("init.hook.restore.velero.io/{k}"),
        )
        .map(str::to_string)
    };
    let mut add: Vec<Value> = Vec::new();
    if let Some(image) = get("container-image") {
        let mut c = json!({
            "name": get("container-name").unwrap_or_else(|| INIT_NAME.to_string()),
            "image": image,
        });
        // No command: the image's entrypoint (Velero's docs; its code panics).
        if let Some(cmd) = get("command") {
            c["command"] = json!(parse_command(&cmd));
        }
        add.push(c);
    } else {
        let (ns, l) = (meta(pod, "namespace").to_string(), labels(pod));
        for s in specs.iter().filter(|s| selection(s).takes(&ns, &l)) {
            for h in s.post_hooks.iter().flatten() {
                add.extend(
                    h.init
                        .iter()
                        .flat_map(|i| i.init_containers.iter().flatten())
                        .cloned(),
                );
            }
        }
    }
    if add.is_empty() {
        return Vec::new();
    }
    // One container per name (the first entry's): a second is refused with the pod.
    let mut names: Vec<String> = Vec::new();
    add.retain(|c| {
        let n = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let first = !names.contains(&n);
        if first {
            names.push(n);
        }
        first
    });
    let same =
        |a: &Value, b: &Value| a.get("name") == b.get("name") && a.get("image") == b.get("image");
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let inits = spec
        .entry("initContainers")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("initContainers is a list");
    // A pod restored before carries the hook's containers already (same name and image):
    // replaced, not doubled. The pod's own container of a hook's name stays (and the API
    // server refuses the pod, naming the clash).
    inits.retain(|c| !add.iter().any(|a| same(a, c)));
    let at = usize::from(
        inits
            .first()
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            == Some(crate::datamover::podvolume::RESTORE_WAIT),
    );
    inits.splice(at..at, add);
    names
}

/// An exec hook with its wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecHook {
    /// The command.
    pub command: Command,
    /// How long to wait for the container; `None`: the restore's default.
    pub wait_timeout: Option<Duration>,
    /// Wait for ready, not merely running.
    pub wait_for_ready: bool,
}

/// A created pod's exec hooks grouped by container (in the order containers first appear),
/// and the runs of hooks that cannot run (a container the pod lacks).
pub fn exec_hooks(
    pod: &Value,
    specs: &[RestoreResourceHookSpec],
) -> (Vec<(String, Vec<ExecHook>)>, Vec<HookRun>) {
    let (ns, name) = (meta(pod, "namespace"), meta(pod, "name"));
    let get = |k: &str| {
        annotation(
            pod,
            &format!("post.hook.restore.arca.dev/{k}"),
            &format!("post.hook.restore.velero.io/{k}"),
        )
    };
    let mut hooks: Vec<ExecHook> = Vec::new();
    let mut bad = Vec::new();
    if let Some(cmd) = get("command") {
        let mut c = Command {
            hook: FROM_ANNOTATION.into(),
            container: get("container").map(str::to_string),
            command: parse_command(cmd),
            on_error: OnError::parse(get("on-error")),
            timeout: Some(DEFAULT_TIMEOUT),
        };
        let mut problems = Vec::new();
        c.timeout = parse_timeout(get("exec-timeout"), DEFAULT_TIMEOUT).unwrap_or_else(|e| {
            problems.push(format!("exec-timeout {e}"));
            Some(DEFAULT_TIMEOUT)
        });
        let wait_timeout = match get("wait-timeout") {
            None => None,
            Some(w) => parse_timeout(Some(w), Duration::ZERO).unwrap_or_else(|e| {
                problems.push(format!("wait-timeout {e}"));
                None
            }),
        }
        .filter(|d| !d.is_zero());
        let wait_for_ready = matches!(
            get("wait-for-ready"),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        );
        if problems.is_empty() {
            hooks.push(ExecHook {
                command: c,
                wait_timeout,
                wait_for_ready,
            });
        } else {
            bad.push(HookRun::failed_unrun(
                PHASE,
                ns,
                name,
                &c,
                problems.join("; "),
            ));
        }
    } else {
        let l = labels(pod);
        for s in specs.iter().filter(|s| selection(s).takes(ns, &l)) {
            for h in s.post_hooks.iter().flatten() {
                let Some(e) = &h.exec else { continue };
                hooks.push(ExecHook {
                    command: Command {
                        hook: s.name.clone(),
                        container: e.container.clone().filter(|c| !c.is_empty()),
                        command: e.command.clone(),
                        on_error: OnError::parse(e.on_error.as_deref()),
                        // Validated with the restore.
                        timeout: parse_timeout(e.exec_timeout.as_deref(), DEFAULT_TIMEOUT)
                            .unwrap_or(Some(DEFAULT_TIMEOUT)),
                    },
                    wait_timeout: parse_timeout(e.wait_timeout.as_deref(), Duration::ZERO)
                        .ok()
                        .flatten()
                        .filter(|d| !d.is_zero()),
                    wait_for_ready: e.wait_for_ready == Some(true),
                });
            }
        }
    }
    let mut groups: Vec<(String, Vec<ExecHook>)> = Vec::new();
    for h in hooks {
        // Only a regular container: a restored pod's init containers have ended by then.
        let named = h.command.container.as_deref();
        let resolved = container_of(pod, named).and_then(|c| {
            let regular = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x.get("name").and_then(Value::as_str) == Some(&c))
                });
            if regular {
                Ok(c)
            } else {
                Err(format!("the pod has no container {c:?}"))
            }
        });
        match resolved {
            Ok(c) => match groups.iter_mut().find(|(n, _)| *n == c) {
                Some((_, v)) => v.push(h),
                None => groups.push((c, vec![h])),
            },
            Err(e) => bad.push(HookRun::failed_unrun(PHASE, ns, name, &h.command, e)),
        }
    }
    (groups, bad)
}

/// Whether the container is up as the hooks want it: running, or ready.
fn container_up(pod: &Pod, container: &str, ready: bool) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|s| s.name == container)
        .is_some_and(|s| {
            if ready {
                s.ready
            } else {
                s.state
                    .as_ref()
                    .and_then(|st| st.running.as_ref())
                    .is_some()
            }
        })
}

fn pod_ended(pod: &Pod) -> Option<String> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some(p @ ("Succeeded" | "Failed")) => Some(format!("the pod ended (phase {p})")),
        _ => None,
    }
}

/// Run the exec hooks of one created pod: per container, wait (a watch on the pod) until
/// it is up, then its hooks in order; containers side by side. `default_wait` bounds a
/// wait that has no `waitTimeout`.
pub async fn run_pod(
    client: &Client,
    ns: &str,
    pod: &str,
    groups: Vec<(String, Vec<ExecHook>)>,
    default_wait: Duration,
) -> Vec<HookRun> {
    // Set when a Fail hook failed: the pod's other containers stop waiting too.
    let (stop, _) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let per_container = groups.into_iter().map(|(container, hooks)| {
        let (api, stop) = (api.clone(), stop.clone());
        async move {
            let mut runs = Vec::new();
            let ready = hooks.iter().any(|h| h.wait_for_ready);
            let wait = hooks
                .iter()
                .map(|h| h.wait_timeout.unwrap_or(default_wait))
                .max()
                .unwrap_or(default_wait);
            let started = Instant::now();
            let c2 = container.clone();
            let cond = move |p: Option<&Pod>| {
                p.is_none_or(|p| pod_ended(p).is_some() || container_up(p, &c2, ready))
            };
            let mut stopped = stop.subscribe();
            let waited = tokio::select! {
                w = tokio::time::timeout(
                    wait,
                    kube::runtime::wait::await_condition(api.clone(), pod, cond),
                ) => w,
                _ = stopped.wait_for(|s| *s) => Ok(Ok(None)),
            };
            // How long the container took to come up: a hook's waitTimeout bounds that
            // wait, not the time its container's earlier hooks ran.
            let up_after = started.elapsed();
            let not_up: Option<String> = match waited {
                Err(_) => Some(format!(
                    "container {container} was not {} within {}",
                    if ready { "ready" } else { "running" },
                    crate::backup::format_go_duration(wait.as_secs() as i64)
                )),
                Ok(Err(e)) => Some(format!("watch pod {ns}/{pod}: {e}")),
                Ok(Ok(None)) => Some("the pod is gone".into()),
                Ok(Ok(Some(p))) => pod_ended(&p),
            };
            for h in hooks {
                let c = &h.command;
                let skip = |why: String, failed: bool| HookRun {
                    container: container.clone(),
                    ..if failed {
                        HookRun::failed_unrun(PHASE, ns, pod, c, why)
                    } else {
                        HookRun::skipped(PHASE, ns, pod, c, why)
                    }
                };
                let run = if *stop.borrow() {
                    skip(AFTER_FAIL.into(), false)
                } else if let Some(why) = &not_up {
                    skip(why.clone(), true)
                } else if h.wait_timeout.is_some_and(|w| up_after > w) {
                    // Not run late: the hook's author said how long it may wait.
                    skip("its waitTimeout expired before it could run".into(), true)
                } else {
                    super::exec(client, PHASE, ns, pod, &container, c).await
                };
                if run.failed() && c.on_error == OnError::Fail {
                    stop.send_replace(true);
                }
                runs.push(run);
            }
            runs
        }
    });
    futures::future::join_all(per_container)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Run the exec hooks of every pod a restore created (as created: their hooks were
/// decided then), pods side by side. A pod gone meanwhile fails its hooks.
pub async fn run_all(
    client: Client,
    pods: Vec<Value>,
    specs: Vec<RestoreResourceHookSpec>,
    default_wait: Duration,
) -> Vec<HookRun> {
    let (client, specs) = (&client, &specs);
    let work = pods.into_iter().map(|pod| async move {
        let (ns, name) = (meta(&pod, "namespace"), meta(&pod, "name"));
        let (groups, mut runs) = exec_hooks(&pod, specs);
        if let Ok(None) = super::read_pod(client, ns, name).await {
            for (container, hooks) in groups {
                for h in hooks {
                    runs.push(HookRun {
                        container: container.clone(),
                        ..HookRun::failed_unrun(
                            PHASE,
                            ns,
                            name,
                            &h.command,
                            "the pod is gone".into(),
                        )
                    });
                }
            }
            return runs;
        }
        if !groups.is_empty() {
            runs.extend(run_pod(client, ns, name, groups, default_wait).await);
        }
        runs
    });
    let mut all: Vec<HookRun> = futures::future::join_all(work)
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExecRestoreHook, InitRestoreHook, RestoreResourceHook};

    fn pod() -> Value {
        json!({"metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "app"}, {"name": "side"}],
                        "initContainers": [{"name": "restore-wait"}, {"name": "own"}]}})
    }

    fn init_spec(name: &str, ns: &str, containers: Value) -> RestoreResourceHookSpec {
        RestoreResourceHookSpec {
            name: name.into(),
            selector: crate::crd::HookSelector {
                included_namespaces: Some(vec![ns.into()]),
                ..Default::default()
            },
            post_hooks: Some(vec![RestoreResourceHook {
                init: Some(InitRestoreHook {
                    init_containers: serde_json::from_value(containers).ok(),
                    timeout: None,
                }),
                exec: None,
            }]),
        }
    }

    #[test]
    fn init_containers_go_after_restore_wait_and_before_the_pods_own() {
        let mut p = pod();
        let specs = [
            init_spec(
                "seed",
                "prod",
                json!([{"name": "seed", "image": "tools", "command": ["sh"]}]),
            ),
            init_spec(
                "elsewhere",
                "dev",
                json!([{"name": "x", "image": "tools", "command": ["sh"]}]),
            ),
        ];
        assert_eq!(add_init_containers(&mut p, &specs), vec!["seed"]);
        let names: Vec<_> = p["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["restore-wait", "seed", "own"]);
        // Restored again: the hook's container replaced, not doubled.
        let again = add_init_containers(&mut p, &specs);
        assert_eq!(again, vec!["seed"]);
        assert_eq!(p["spec"]["initContainers"].as_array().unwrap().len(), 3);
        // Without restore-wait: first.
        let mut q = json!({"metadata": {"name": "a", "namespace": "prod"}, "spec": {"containers": [{"name": "c"}]}});
        add_init_containers(&mut q, &specs);
        assert_eq!(q["spec"]["initContainers"][0]["name"], "seed");
    }

    #[test]
    fn an_init_annotation_replaces_the_spec_and_may_omit_the_command() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({
            "init.hook.restore.velero.io/container-image": "tools:1",
            "init.hook.restore.arca.dev/command": "[\"sh\",\"-c\",\"echo seeded > /data/f\"]"
        });
        let specs = [init_spec(
            "seed",
            "prod",
            json!([{"name": "seed", "image": "t", "command": ["sh"]}]),
        )];
        assert_eq!(add_init_containers(&mut p, &specs), vec![INIT_NAME]);
        assert_eq!(
            p["spec"]["initContainers"][1],
            json!({"name": INIT_NAME, "image": "tools:1", "command": ["sh", "-c", "echo seeded > /data/f"]})
        );
        let mut q = pod();
        q["metadata"]["annotations"] = json!({"init.hook.restore.arca.dev/container-image": "tools:1",
                                              "init.hook.restore.arca.dev/container-name": "prep"});
        add_init_containers(&mut q, &[]);
        assert_eq!(
            q["spec"]["initContainers"][1],
            json!({"name": "prep", "image": "tools:1"})
        );
    }

    #[test]
    fn validation_names_incomplete_init_containers_and_bad_timeouts() {
        let mut s = init_spec("seed", "prod", json!([{"name": "seed", "image": "t"}]));
        s.post_hooks.as_mut().unwrap().push(RestoreResourceHook {
            exec: Some(ExecRestoreHook {
                command: vec!["true".into()],
                wait_timeout: Some("5".into()),
                ..Default::default()
            }),
            init: None,
        });
        let e = validate(&[s]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("needs a name, an image and a command"));
        assert!(e[1].contains("waitTimeout"));
    }

    #[test]
    fn exec_hooks_group_by_container_and_a_missing_container_fails_at_once() {
        let exec = |container: Option<&str>, cmd: &str, ready: bool| RestoreResourceHook {
            exec: Some(ExecRestoreHook {
                container: container.map(str::to_string),
                command: vec![cmd.into()],
                on_error: Some("Fail".into()),
                exec_timeout: Some("10s".into()),
                wait_timeout: Some("1m".into()),
                wait_for_ready: Some(ready),
            }),
            init: None,
        };
        let specs = [RestoreResourceHookSpec {
            name: "h".into(),
            post_hooks: Some(vec![
                exec(Some("side"), "a", false),
                exec(None, "b", true),
                exec(Some("side"), "c", false),
                exec(Some("nope"), "d", false),
            ]),
            ..Default::default()
        }];
        let (groups, bad) = exec_hooks(&pod(), &specs);
        let shape: Vec<_> = groups
            .iter()
            .map(|(c, hs)| {
                (
                    c.as_str(),
                    hs.iter()
                        .map(|h| h.command.command[0].as_str())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(shape, [("side", vec!["a", "c"]), ("app", vec!["b"])]);
        assert!(groups[1].1[0].wait_for_ready);
        assert_eq!(groups[0].1[0].wait_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            groups[0].1[0].command.timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].failed()
                && bad[0]
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("no container \"nope\"")
        );
    }

    #[test]
    fn an_exec_annotation_replaces_the_spec() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({
            "post.hook.restore.velero.io/command": "[\"cat\",\"/data/f\"]",
            "post.hook.restore.arca.dev/container": "side",
            "post.hook.restore.velero.io/wait-for-ready": "true",
            "post.hook.restore.velero.io/wait-timeout": "2m",
            "post.hook.restore.velero.io/on-error": "Fail"
        });
        let (groups, bad) = exec_hooks(&p, &[]);
        assert!(bad.is_empty());
        assert_eq!(groups.len(), 1);
        let h = &groups[0].1[0];
        assert_eq!(
            (groups[0].0.as_str(), h.command.hook.as_str()),
            ("side", FROM_ANNOTATION)
        );
        assert_eq!(h.command.command, vec!["cat", "/data/f"]);
        assert!(h.wait_for_ready && h.command.on_error == OnError::Fail);
        assert_eq!(h.wait_timeout, Some(Duration::from_secs(120)));
    }
}
