//! Velero's resource scenarios through the `arca` binary, against real kube-apiservers on
//! 127.0.0.1 (two of them, for migrations), started by `scripts/test` through
//! `scripts/test-cluster`. Fixtures are applied and checked with the kube client.
//!
//! Every test works in namespaces and under names of its own, with its own install
//! namespace and storage location, so that tests run in parallel on the same clusters.

#[path = "support/storage.rs"]
mod storage;
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use arca_k8s::kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use arca_k8s::kube::discovery::{Discovery, Scope};
use arca_k8s::kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::PASSWORD;

/// A test cluster: its kubeconfig and a client.
struct Cluster {
    kubeconfig: PathBuf,
    client: Client,
}

fn kubeconfig(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("ARCA_REQUIRE_K8S").is_some() => {
            panic!(
                "ARCA_REQUIRE_K8S is set but {var} is not: start the clusters with scripts/test-cluster"
            )
        }
        None => {
            eprintln!("no test cluster ({var} unset): skipped");
            None
        }
    }
}

async fn cluster(var: &str) -> Option<Cluster> {
    let kc = kubeconfig(var)?;
    let (client, _) = arca_k8s::manage::connect(Some(&kc), None)
        .await
        .expect("connect to the test cluster");
    Some(Cluster {
        kubeconfig: kc,
        client,
    })
}

/// Cluster A (every test) and B (migrations, restores into an empty cluster).
async fn clusters() -> Option<(Cluster, Cluster)> {
    Some((
        cluster("ARCA_TEST_KUBECONFIG").await?,
        cluster("ARCA_TEST_KUBECONFIG_B").await?,
    ))
}

/// One test's Arca: an install namespace and a storage location directory, and the
/// `arca server` started for it in each cluster it was installed into (as `arca install`
/// with its Deployment would give; unless `auto_server` is off).
struct Arca {
    ns: String,
    dir: tempfile::TempDir,
    auto_server: bool,
    /// More flags for the automatic servers.
    server_flags: Vec<&'static str>,
    servers: std::sync::Mutex<Vec<(PathBuf, Server)>>,
}

impl Arca {
    fn new(name: &str) -> Self {
        // Unique per run, so that a rerun on the same clusters starts clean.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self {
            ns: format!("arca-{name}-{:x}", t & 0xfffff),
            dir: tempfile::tempdir().unwrap(),
            auto_server: true,
            server_flags: Vec::new(),
            servers: Default::default(),
        }
    }

    /// This run's tag, for names outside the install namespace (cluster-scoped items and
    /// namespaces restored into cluster B survive a run).
    fn suffix(&self) -> &str {
        self.ns.rsplit('-').next().unwrap()
    }

    fn cmd(&self, c: &Cluster) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arca"));
        cmd.env("ARCA_PASSWORD", PASSWORD)
            .env("ARCA_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("ARCA_PASSWORD_FILE")
            .env_remove("ARCA_LOG")
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["-n", &self.ns])
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, c: &Cluster, args: &[&str]) -> Output {
        let out = self.command(c, args).output().unwrap();
        if self.auto_server
            && out.status.success()
            && args.contains(&"install")
            && !args.contains(&"--dry-run")
        {
            self.ensure_server(c);
        }
        out
    }

    /// The command [`Arca::run`] runs, for a test that goes on while it runs.
    fn command(&self, c: &Cluster, args: &[&str]) -> Command {
        let mut args = args.to_vec();
        // The CLI creates a backup or restore (or asks for a backup's deletion) and
        // returns; the tests follow each to its end, as `--wait` does.
        let create = args
            .windows(2)
            .any(|w| matches!(w, ["backup" | "restore", "create"] | ["backup", "delete"]));
        if create && !args.contains(&"--wait") {
            args.push("--wait");
        }
        // The test's own server processes stand in for the Deployment (with or without
        // `auto_server`), unless the test names the image it deploys: a Deployment of an
        // image that is not there would hold a pending pod's CPU request on the node.
        if args.contains(&"install") && !args.contains(&"--dry-run") && !args.contains(&"--image") {
            args.push("--no-deployment");
        }
        // Bounded: a run that waits for a server that has gone fails the test (exit 124)
        // instead of hanging the suite.
        let base = self.cmd(c);
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=10", "600"])
            .arg(base.get_program())
            .args(base.get_args())
            .args(&args)
            .stdin(Stdio::null());
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// An `arca server` for this test's namespace in cluster `c`, leading.
    fn ensure_server(&self, c: &Cluster) {
        let mut servers = self.servers.lock().unwrap();
        if servers.iter().any(|(k, _)| *k == c.kubeconfig) {
            return;
        }
        let s = self.server_args(c, "15s", &[], &self.server_flags);
        for _ in 0..600 {
            if s.log().contains("leading") {
                servers.push((c.kubeconfig.clone(), s));
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the server of {} did not lead:\n{}", self.ns, s.log());
    }

    fn expect(&self, c: &Cluster, code: i32, args: &[&str]) -> String {
        let out = self.run(c, args);
        // A create that ended otherwise than expected: its log says why.
        let log = match args {
            [kind @ ("backup" | "restore"), "create", name, ..]
                if out.status.code() != Some(code) && !name.starts_with('-') =>
            {
                let l = self.run(c, &[kind, "logs", name]);
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&l.stdout),
                    String::from_utf8_lossy(&l.stderr)
                )
            }
            _ => String::new(),
        };
        assert_eq!(
            out.status.code(),
            Some(code),
            "arca {args:?} exited {:?}\nstdout: {}\nstderr: {}\nlog: {log}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ok(&self, c: &Cluster, args: &[&str]) -> String {
        self.expect(c, 0, args)
    }

    fn json(&self, c: &Cluster, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(c, &a)).unwrap()
    }

    /// Install with a local storage location in this test's directory.
    fn install(&self, c: &Cluster) {
        let bucket = self.dir.path().join("bsl");
        self.ok(
            c,
            &[
                "install",
                "--provider",
                "local",
                "--bucket",
                bucket.to_str().unwrap(),
            ],
        );
    }

    /// Items of a backup, as `namespace/name` of `resource`.
    fn items(&self, c: &Cluster, backup: &str) -> BTreeSet<String> {
        let v = self.json(c, &["backup", "describe", backup, "--details"]);
        v[0]["items"]
            .as_array()
            .expect("items listed")
            .iter()
            .map(|i| {
                format!(
                    "{}:{}/{}",
                    i["resource"].as_str().unwrap(),
                    i["namespace"].as_str().unwrap_or(""),
                    i["name"].as_str().unwrap()
                )
            })
            .collect()
    }
}

/// Apply YAML documents (server-side apply), resolving kinds through discovery.
async fn apply(c: &Cluster, yaml: &str) {
    let disc = Discovery::new(c.client.clone()).run().await.unwrap();
    for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let obj: DynamicObject =
            serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("bad fixture {doc}: {e}"));
        let tm = obj.types.clone().expect("apiVersion and kind");
        let (group, version) = tm
            .api_version
            .split_once('/')
            .unwrap_or(("", &tm.api_version));
        let gvk = arca_k8s::kube::api::GroupVersionKind::gvk(group, version, &tm.kind);
        let (ar, caps) = disc
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{gvk:?} is not served"));
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            Api::namespaced_with(
                c.client.clone(),
                obj.metadata.namespace.as_deref().unwrap(),
                &ar,
            )
        } else {
            Api::all_with(c.client.clone(), &ar)
        };
        // A fresh cluster answers a pod "retry after the token is created" (ServerTimeout)
        // until the token controller has made the service account's token: retry that.
        let mut tries = 0;
        loop {
            match api
                .patch(
                    &obj.name_any(),
                    &PatchParams::apply("arca-test").force(),
                    &Patch::Apply(&obj),
                )
                .await
            {
                Ok(_) => break,
                Err(arca_k8s::kube::Error::Api(s))
                    if s.reason == "ServerTimeout" && tries < 100 =>
                {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("apply {} {}: {e}", tm.kind, obj.name_any()),
            }
        }
    }
}

/// Wait until a CRD is established (fixtures that create custom resources right after).
async fn wait_crd(c: &Cluster, name: &str) {
    use arca_k8s::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    for _ in 0..300 {
        if let Some(crd) = api.get_opt(name).await.unwrap()
            && crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|x| x.type_ == "Established" && x.status == "True")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("CRD {name} not established");
}

/// The API resource of `apiVersion`, kind and plural.
fn resource(api_version: &str, kind: &str, plural: &str) -> arca_k8s::kube::api::ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    arca_k8s::kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// An object as JSON, or None.
async fn get(
    c: &Cluster,
    (api_version, kind, plural): (&str, &str, &str),
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let ar = resource(api_version, kind, plural);
    let api: Api<DynamicObject> = match ns {
        Some(n) => Api::namespaced_with(c.client.clone(), n, &ar),
        None => Api::all_with(c.client.clone(), &ar),
    };
    api.get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

async fn configmap(c: &Cluster, ns: &str, name: &str) -> Option<Value> {
    get(c, ("v1", "ConfigMap", "configmaps"), Some(ns), name).await
}

async fn delete_namespaced(
    c: &Cluster,
    (api_version, kind, plural): (&str, &str, &str),
    ns: &str,
    name: &str,
) {
    let ar = resource(api_version, kind, plural);
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), ns, &ar);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    for _ in 0..100 {
        if api.get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Wait until the volume controller has bound a claim (Velero takes a claim's volume
/// only from a Bound claim).
async fn wait_bound(c: &Cluster, ns: &str, name: &str) {
    for _ in 0..300 {
        if let Some(pvc) = get(
            c,
            ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            Some(ns),
            name,
        )
        .await
            && pvc["status"]["phase"] == "Bound"
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("claim {ns}/{name} not bound");
}

/// The test S3 server's endpoint; None (skip) when there is none and none is required.
fn s3_endpoint() -> Option<String> {
    std::env::var("ARCA_TEST_S3_ENDPOINT").ok().or_else(|| {
        assert!(
            std::env::var_os("ARCA_REQUIRE_S3").is_none(),
            "ARCA_REQUIRE_S3 set without ARCA_TEST_S3_ENDPOINT"
        );
        None
    })
}

fn cm(ns: &str, name: &str, labels: &[(&str, &str)], data: &str) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\""))
        .collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("  labels:\n{}\n", labels.join("\n"))
    };
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n{labels}data:\n  v: \"{data}\"\n---\n"
    )
}

fn ns(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n---\n")
}

#[test]
fn install_dry_run_prints_every_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_arca"))
        .args([
            "install",
            "--dry-run",
            "--provider",
            "aws",
            "--bucket",
            "backups",
            "--server-pod-cpu-request",
            "250m",
            "--server-pod-mem-limit",
            "1Gi",
            "--server-pod-cpu-limit",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut kinds = BTreeSet::new();
    let mut objects = BTreeSet::new();
    for doc in text.split("---\n").filter(|d| !d.trim().is_empty()) {
        let v: Value = serde_yaml_ng::from_str(doc).unwrap();
        objects.insert(v["kind"].as_str().unwrap().to_string());
        if v["kind"] == "Deployment" {
            let c = &v["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(
                c["resources"],
                json!({"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}),
                "{v:#}"
            );
            assert_eq!(c["args"][0], "server", "{v:#}");
        }
        if v["kind"] == "BackupStorageLocation" {
            assert_eq!(v["spec"]["objectStorage"]["bucket"], "backups", "{v:#}");
            assert_eq!(v["spec"]["default"], true, "{v:#}");
        }
        if v["kind"] == "CustomResourceDefinition" {
            assert_eq!(v["spec"]["group"], "arca.dev");
            let kind = v["spec"]["names"]["kind"].as_str().unwrap().to_string();
            if kind == "DataUpload" || kind == "DataDownload" {
                // `kubectl get datauploads -w` shows phase and progress, as Velero's.
                let cols: Vec<&str> = v["spec"]["versions"][0]["additionalPrinterColumns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["name"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    cols,
                    [
                        "Status",
                        "Started",
                        "Bytes Done",
                        "Total Bytes",
                        "Storage Location",
                        "Age",
                        "Node"
                    ]
                );
            }
            kinds.insert(kind);
        }
    }
    let want: BTreeSet<String> = [
        "Backup",
        "Restore",
        "Schedule",
        "BackupStorageLocation",
        "BackupRepository",
        "DataUpload",
        "DataDownload",
        "PodVolumeBackup",
        "PodVolumeRestore",
        "DeleteBackupRequest",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(kinds, want);
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRoleBinding",
        "Deployment",
        "BackupStorageLocation",
    ] {
        assert!(objects.contains(k), "no {k} in the dry run: {objects:?}");
    }
    assert!(
        !text.contains("kind: DaemonSet"),
        "no node agent unless asked"
    );

    // --use-node-agent: the DaemonSet, with the host's pods directory and privileges asked.
    let out = Command::new(env!("CARGO_BIN_EXE_arca"))
        .args([
            "install",
            "--dry-run",
            "--use-node-agent",
            "--host-pods-dir",
            "/opt/rke/var/lib/kubelet/pods",
            "--privileged-node-agent",
            "--node-agent-configmap",
            "agent-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let ds: Value = text
        .split("---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .find(|v| v["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["hostPath"]["path"],
        "/opt/rke/var/lib/kubelet/pods"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/host_pods");
    assert_eq!(c["volumeMounts"][0]["mountPropagation"], "HostToContainer");
    assert_eq!(
        c["args"],
        json!(["node-agent", "--node-agent-configmap", "agent-config"])
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_namespace_glob_resource_label_and_exclude_label() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("filters");
    arca.install(&a);
    let mut y = String::new();
    for n in ["flt-app1", "flt-app2", "flt-other"] {
        y += &ns(n);
        y += &cm(n, "plain", &[], "x");
        y += &cm(n, "web", &[("tier", "web")], "x");
        y += &cm(n, "db", &[("tier", "db")], "x");
        y += &cm(
            n,
            "hidden",
            &[("arca.dev/exclude-from-backup", "true")],
            "x",
        );
        y += &cm(
            n,
            "hidden-velero",
            &[("velero.io/exclude-from-backup", "true")],
            "x",
        );
        y += &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: {n}\nstringData:\n  k: v\n---\n"
        );
    }
    apply(&a, &y).await;

    // Namespaces by glob, one excluded.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "glob",
            "--include-namespaces",
            "flt-*",
            "--exclude-namespaces",
            "flt-other",
        ],
    );
    let items = arca.items(&a, "glob");
    assert!(
        items.contains("configmaps:flt-app1/plain") && items.contains("secrets:flt-app2/s"),
        "{items:?}"
    );
    assert!(
        items.contains("namespaces:/flt-app1") && items.contains("namespaces:/flt-app2"),
        "{items:?}"
    );
    assert!(!items.iter().any(|i| i.contains("flt-other")), "{items:?}");
    assert!(
        !items.iter().any(|i| i.contains("hidden")),
        "exclude labels are honoured: {items:?}"
    );
    // Not all namespaces: no cluster-scoped resources unless asked.
    assert!(
        !items.iter().any(|i| i.starts_with("clusterroles")),
        "{items:?}"
    );

    // Resources.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "res",
            "--include-namespaces",
            "flt-app1",
            "--include-resources",
            "configmaps",
        ],
    );
    let items = arca.items(&a, "res");
    assert!(
        items.iter().all(|i| i.starts_with("configmaps:flt-app1/")),
        "{items:?}"
    );
    assert!(items.contains("configmaps:flt-app1/web"));
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "res-ex",
            "--include-namespaces",
            "flt-app1",
            "--exclude-resources",
            "secrets,cm",
        ],
    );
    let items = arca.items(&a, "res-ex");
    assert!(
        !items
            .iter()
            .any(|i| i.starts_with("secrets") || i.starts_with("configmaps")),
        "{items:?}"
    );
    assert!(items.contains("namespaces:/flt-app1"), "{items:?}");

    // Ordered resources: the named items first, in the order given.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "ordered",
            "--include-namespaces",
            "flt-app1",
            "--ordered-resources",
            "configmaps=flt-app1/web,flt-app1/db;secrets=flt-app1/s",
        ],
    );
    let v = arca.json(&a, &["backup", "describe", "ordered", "--details"]);
    let cms: Vec<&str> = v[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["resource"] == "configmaps")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(&cms[..2], &["web", "db"], "{cms:?}");

    // Label selector, and or-selectors.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "lab",
            "--include-namespaces",
            "flt-*",
            "-l",
            "tier=web",
        ],
    );
    let items = arca.items(&a, "lab");
    let cms: BTreeSet<&String> = items
        .iter()
        .filter(|i| i.starts_with("configmaps"))
        .collect();
    assert_eq!(cms.len(), 3, "{items:?}");
    assert!(cms.iter().all(|i| i.ends_with("/web")));
    assert!(!items.iter().any(|i| i.starts_with("secrets")));
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "orsel",
            "--include-namespaces",
            "flt-app1",
            "--or-selector",
            "tier=web or tier=db",
        ],
    );
    let items = arca.items(&a, "orsel");
    let cms: BTreeSet<&String> = items
        .iter()
        .filter(|i| i.starts_with("configmaps"))
        .collect();
    assert_eq!(cms.len(), 2, "{items:?}");

    // New-style scoped filters: namespaced configmaps only, cluster-scoped clusterroles.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "scoped",
            "--include-namespaces",
            "flt-app2",
            "--include-namespace-scoped-resources",
            "configmaps",
            "--include-cluster-scoped-resources",
            "clusterroles",
        ],
    );
    let items = arca.items(&a, "scoped");
    assert!(
        items.iter().any(|i| i.starts_with("clusterroles:/")),
        "{items:?}"
    );
    assert!(
        items.iter().all(|i| i.starts_with("clusterroles")
            || i.starts_with("configmaps:flt-app2/")
            || i.starts_with("namespaces")),
        "{items:?}"
    );

    // Old and new styles together fail validation, and say so.
    let out = arca.run(
        &a,
        &[
            "backup",
            "create",
            "mixed",
            "--include-resources",
            "configmaps",
            "--include-cluster-scoped-resources",
            "clusterroles",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed validation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Listing, in text and JSON.
    let text = arca.ok(&a, &["backup", "get"]);
    assert!(
        text.contains("glob") && text.contains("Completed") && text.contains("FailedValidation"),
        "{text}"
    );
    let list = arca.json(&a, &["backup", "get", "glob"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"]["phase"], "Completed");
    assert!(
        list[0]["status"]["progress"]["totalItems"]
            .as_i64()
            .unwrap()
            >= 8
    );
    let log = arca.ok(&a, &["backup", "logs", "glob"]);
    assert!(
        log.contains(&format!("backup {}/glob started", arca.ns)),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_mappings_single_and_multiple_with_restore_labels() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("mapping");
    arca.install(&a);
    let mut y = ns("map-a") + &ns("map-b");
    y += &cm("map-a", "one", &[], "a1");
    y += &cm("map-b", "two", &[], "b2");
    apply(&a, &y).await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "maps",
            "--include-namespaces",
            "map-a,map-b",
        ],
    );

    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "single",
            "--from-backup",
            "maps",
            "--include-namespaces",
            "map-a",
            "--namespace-mappings",
            "map-a:map-a2",
        ],
    );
    let one = configmap(&a, "map-a2", "one")
        .await
        .expect("restored into the mapped namespace");
    assert_eq!(one["data"]["v"], "a1");
    assert_eq!(one["metadata"]["labels"]["arca.dev/backup-name"], "maps");
    assert_eq!(one["metadata"]["labels"]["arca.dev/restore-name"], "single");
    assert!(configmap(&a, "map-a2", "two").await.is_none());

    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "--from-backup",
            "maps",
            "--namespace-mappings",
            "map-a:map-x,map-b:map-y",
        ],
    );
    assert_eq!(
        configmap(&a, "map-x", "one").await.unwrap()["data"]["v"],
        "a1"
    );
    assert_eq!(
        configmap(&a, "map-y", "two").await.unwrap()["data"]["v"],
        "b2"
    );
    // The default name is <backup>-<timestamp>.
    let restores = arca.json(&a, &["restore", "get"]);
    let names: Vec<&str> = restores
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("maps-") && n.len() == "maps-".len() + 14),
        "{names:?}"
    );
    let text = arca.ok(&a, &["restore", "describe", "single"]);
    assert!(
        text.contains("Phase:  Completed") && text.contains("map-a:map-a2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_with_several_versions_and_its_resources_into_an_empty_cluster() {
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("crd");
    // A group of this run's own, so that cluster B has never seen it.
    let group = format!("{}.arca.dev", arca.ns.replace("arca-", "g-"));
    let crd_name = format!("widgets.{group}");
    arca.install(&a);
    arca.install(&b);
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.crd-test.arca.dev
spec:
  group: crd-test.arca.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, x-kubernetes-preserve-unknown-fields: true}}}}
  - name: v2
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, x-kubernetes-preserve-unknown-fields: true}}}}
---
"#;
    apply(&a, &crd.replace("crd-test.arca.dev", &group)).await;
    wait_crd(&a, &crd_name).await;
    let mut y = ns("crd-ns");
    for i in 0..3 {
        y += &format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w{i}\n  namespace: crd-ns\nspec:\n  size: {i}\n---\n"
        );
    }
    apply(&a, &y).await;
    // Only the namespace: the CRD comes along with its resources.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "widgets",
            "--include-namespaces",
            "crd-ns",
        ],
    );
    let v = arca.json(&a, &["backup", "describe", "widgets", "--details"]);
    let items = v[0]["items"].as_array().unwrap();
    let widgets: Vec<&Value> = items
        .iter()
        .filter(|i| i["resource"] == "widgets" && i["group"] == group.as_str())
        .collect();
    assert_eq!(widgets.len(), 3);
    // Read at the server's preferred version: v2 sorts above v1.
    assert!(widgets.iter().all(|w| w["version"] == "v2"), "{widgets:?}");
    assert!(
        items
            .iter()
            .any(|i| i["resource"] == "customresourcedefinitions"
                && i["name"] == crd_name.as_str())
    );

    // Cluster B has never seen the type: the CRD is restored first, waited on, and the
    // widgets follow.
    assert!(
        get(
            &b,
            (
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "customresourcedefinitions"
            ),
            None,
            &crd_name
        )
        .await
        .is_none()
    );
    // Without their CRD, B cannot serve the widgets: each is skipped with a warning, and
    // the rest is restored.
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "no-crd",
            "--from-backup",
            "widgets",
            "--exclude-resources",
            "customresourcedefinitions.apiextensions.k8s.io",
        ],
    );
    let d = arca.json(&b, &["restore", "describe", "no-crd"]);
    let warned = d[0]["results"]["warnings"]["namespaces"]["crd-ns"].to_string();
    assert!(
        warned.contains("does not serve") && warned.contains(&format!("{group}/v2 widgets")),
        "{d}"
    );
    assert_eq!(d[0]["restore"]["status"]["phase"], "Completed");
    let out = arca.ok(
        &b,
        &["restore", "create", "widgets-b", "--from-backup", "widgets"],
    );
    assert!(out.contains("completed"), "{out}");
    for i in 0..3 {
        let w = get(
            &b,
            (&format!("{group}/v1"), "Widget", "widgets"),
            Some("crd-ns"),
            &format!("w{i}"),
        )
        .await
        .expect("widget restored");
        assert_eq!(w["spec"]["size"], i);
    }
    let crd_b = get(
        &b,
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
        None,
        &crd_name,
    )
    .await
    .unwrap();
    assert_eq!(
        crd_b["spec"]["versions"].as_array().unwrap().len(),
        2,
        "both versions restored"
    );
    let log = arca.ok(&b, &["restore", "logs", "widgets-b"]);
    let crd_at = log
        .find("restored customresourcedefinitions")
        .expect("CRD in the log");
    let widget_at = log
        .find(&format!("restored {crd_name} crd-ns/"))
        .expect("widget in the log");
    assert!(
        crd_at < widget_at,
        "CRDs are restored before their resources:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resources_and_rbac() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("rbac");
    arca.install(&a);
    let y = ns("rbac-ns")
        + r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: robot, namespace: rbac-ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: rbac-ns}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: rbac-ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: robot, namespace: rbac-ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: rbac-test-viewer, labels: {app: rbac-test}}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rbac-test-viewer, labels: {app: rbac-test}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rbac-test-viewer}
subjects: [{kind: ServiceAccount, name: robot, namespace: rbac-ns}]
---
"#;
    apply(&a, &y).await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "rbac",
            "--include-namespaces",
            "rbac-ns",
            "--include-cluster-resources",
        ],
    );
    let items = arca.items(&a, "rbac");
    for want in [
        "serviceaccounts:rbac-ns/robot",
        "roles:rbac-ns/reader",
        "rolebindings:rbac-ns/reader",
        "clusterroles:/rbac-test-viewer",
        "clusterrolebindings:/rbac-test-viewer",
    ] {
        assert!(items.contains(want), "{want} missing from {items:?}");
    }
    // Gone, then back.
    for (kind, plural) in [
        ("ClusterRoleBinding", "clusterrolebindings"),
        ("ClusterRole", "clusterroles"),
    ] {
        let ar = resource("rbac.authorization.k8s.io/v1", kind, plural);
        let api: Api<DynamicObject> = Api::all_with(a.client.clone(), &ar);
        api.delete("rbac-test-viewer", &DeleteParams::default())
            .await
            .unwrap();
    }
    delete_namespaced(
        &a,
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
        ),
        "rbac-ns",
        "reader",
    )
    .await;
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "rbac-r",
            "--from-backup",
            "rbac",
            "-l",
            "app=rbac-test",
            "--include-cluster-resources",
        ],
    );
    let crb = get(
        &a,
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
        ),
        None,
        "rbac-test-viewer",
    )
    .await
    .expect("restored");
    assert_eq!(crb["subjects"][0]["name"], "robot");
    assert!(
        get(
            &a,
            (
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "clusterroles"
            ),
            None,
            "rbac-test-viewer"
        )
        .await
        .is_some()
    );
    // The label filter left the role binding out.
    assert!(
        get(
            &a,
            (
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
                "rolebindings"
            ),
            Some("rbac-ns"),
            "reader"
        )
        .await
        .is_none()
    );
    arca.ok(
        &a,
        &["restore", "create", "rbac-all", "--from-backup", "rbac"],
    );
    let rb = get(
        &a,
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
        ),
        Some("rbac-ns"),
        "reader",
    )
    .await
    .expect("restored");
    assert_eq!(rb["roleRef"]["name"], "reader");
}

fn frozen(v: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: frozen, namespace: pol-ns}}\nimmutable: true\ndata: {{v: \"{v}\"}}\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_resource_policy_none_and_update() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("policy");
    arca.install(&a);
    let y = ns("pol-ns")
        + &cm("pol-ns", "conf", &[("v", "1")], "backed-up")
        + "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: pol-ns}\nimagePullSecrets: [{name: from-backup}]\n---\n";
    apply(&a, &y).await;
    // An immutable config map, replaced after the backup (see below). A rerun on the same
    // cluster finds the replaced one: start from the backed-up version.
    let cms = Api::<arca_k8s::k8s_openapi::api::core::v1::ConfigMap>::namespaced(
        a.client.clone(),
        "pol-ns",
    );
    if cms.get_opt("frozen").await.unwrap().is_some() {
        delete_namespaced(&a, ("v1", "ConfigMap", "configmaps"), "pol-ns", "frozen").await;
    }
    apply(&a, &frozen("backed-up")).await;
    arca.ok(
        &a,
        &["backup", "create", "pol", "--include-namespaces", "pol-ns"],
    );
    // The cluster moves on.
    delete_namespaced(&a, ("v1", "ConfigMap", "configmaps"), "pol-ns", "frozen").await;
    apply(&a, &frozen("replaced")).await;
    apply(&a, &(cm("pol-ns", "conf", &[("v", "2")], "changed") + "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: pol-ns}\nimagePullSecrets: [{name: in-cluster}]\n---\n")).await;

    // none: existing items are left alone, with a warning naming them.
    let out = arca.ok(
        &a,
        &["restore", "create", "pol-none", "--from-backup", "pol"],
    );
    assert!(out.contains("completed"), "{out}");
    assert_eq!(
        configmap(&a, "pol-ns", "conf").await.unwrap()["data"]["v"],
        "changed"
    );
    let d = arca.ok(&a, &["restore", "describe", "pol-none"]);
    assert!(
        d.contains("pol-ns:") && d.contains("conf"),
        "the warning names the item:\n{d}"
    );
    let j = arca.json(&a, &["restore", "describe", "pol-none"]);
    assert!(
        j[0]["results"]["warnings"]["namespaces"]["pol-ns"]
            .as_array()
            .is_some_and(|w| !w.is_empty()),
        "{j}"
    );
    // The service account is merged all the same (Velero's rule).
    let sa = get(
        &a,
        ("v1", "ServiceAccount", "serviceaccounts"),
        Some("pol-ns"),
        "sa",
    )
    .await
    .unwrap();
    let pulls: BTreeSet<&str> = sa["imagePullSecrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(pulls, BTreeSet::from(["in-cluster", "from-backup"]));

    // update: existing items become the backed-up version.
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "pol-update",
            "--from-backup",
            "pol",
            "--existing-resource-policy",
            "update",
        ],
    );
    let conf = configmap(&a, "pol-ns", "conf").await.unwrap();
    assert_eq!(conf["data"]["v"], "backed-up");
    // Velero's fallback: the immutable one cannot be patched; it gets the restore labels
    // alone, and a warning says so.
    let f = configmap(&a, "pol-ns", "frozen").await.unwrap();
    assert_eq!(f["data"]["v"], "replaced");
    assert_eq!(
        f["metadata"]["labels"]["arca.dev/restore-name"], "pol-update",
        "{f}"
    );
    let d = arca.ok(&a, &["restore", "describe", "pol-update"]);
    assert!(
        d.contains("frozen") && d.contains("updating it to the backed-up version failed"),
        "{d}"
    );
    assert_eq!(conf["metadata"]["labels"]["v"], "1");
    assert_eq!(
        conf["metadata"]["labels"]["arca.dev/restore-name"],
        "pol-update"
    );
    // Every item counts once processed, whether created, updated, found as it was or not
    // updatable (Velero: itemsRestored = totalItems at the end).
    let r = get(&a, RESTORE, Some(&arca.ns), "pol-update")
        .await
        .unwrap();
    let p = &r["status"]["progress"];
    assert!(
        p["totalItems"].as_i64().unwrap() > 3 && p["itemsRestored"] == p["totalItems"],
        "{r:#}"
    );

    // A bad policy is refused before anything happens.
    let out = arca.run(
        &a,
        &[
            "restore",
            "create",
            "pol-bad",
            "--from-backup",
            "pol",
            "--existing-resource-policy",
            "replace",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "clap rejects it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_kept_when_explicit_or_asked_for() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("nodeport");
    arca.install(&a);
    let explicit = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"explicit","namespace":"np-ns"},"spec":{"type":"NodePort","ports":[{"port":80,"protocol":"TCP","nodePort":31081}]}}"#;
    let y = ns("np-ns")
        + &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: explicit\n  namespace: np-ns\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{explicit}'\nspec:\n  type: NodePort\n  ports: [{{port: 80, protocol: TCP, nodePort: 31081}}]\n  selector: {{app: x}}\n---\n"
        )
        + "apiVersion: v1\nkind: Service\nmetadata: {name: auto, namespace: np-ns}\nspec:\n  type: NodePort\n  ports: [{port: 80, protocol: TCP}]\n  selector: {app: x}\n---\n";
    apply(&a, &y).await;
    let auto_port = get(&a, ("v1", "Service", "services"), Some("np-ns"), "auto")
        .await
        .unwrap()["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap();
    arca.ok(
        &a,
        &["backup", "create", "np", "--include-namespaces", "np-ns"],
    );

    let del = || async {
        delete_namespaced(&a, ("v1", "Service", "services"), "np-ns", "explicit").await;
        delete_namespaced(&a, ("v1", "Service", "services"), "np-ns", "auto").await;
    };
    del().await;
    arca.ok(
        &a,
        &["restore", "create", "np-default", "--from-backup", "np"],
    );
    let e = get(&a, ("v1", "Service", "services"), Some("np-ns"), "explicit")
        .await
        .unwrap();
    assert_eq!(
        e["spec"]["ports"][0]["nodePort"], 31081,
        "an explicit node port is kept"
    );
    let auto = get(&a, ("v1", "Service", "services"), Some("np-ns"), "auto")
        .await
        .unwrap();
    assert!(auto["spec"]["clusterIP"].as_str().is_some());
    // An assigned port is dropped, so the cluster picks one (it may pick the same).
    let _ = auto["spec"]["ports"][0]["nodePort"].as_i64().unwrap();

    del().await;
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "np-keep",
            "--from-backup",
            "np",
            "--preserve-nodeports",
        ],
    );
    let auto = get(&a, ("v1", "Service", "services"), Some("np-ns"), "auto")
        .await
        .unwrap();
    assert_eq!(
        auto["spec"]["ports"][0]["nodePort"].as_i64().unwrap(),
        auto_port,
        "--preserve-nodeports keeps every port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_class_mapping_and_no_second_object_on_a_disk() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("storage");
    arca.install(&a);
    let y = ns("sc-ns")
        + r#"apiVersion: v1
kind: PersistentVolume
metadata: {name: sc-test-pv}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: old-class
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /tmp/arca-sc-test}
  claimRef: {namespace: sc-ns, name: data}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: sc-ns}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: old-class
  volumeName: sc-test-pv
  resources: {requests: {storage: 1Gi}}
---
"#;
    apply(&a, &y).await;
    let mapping = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: change-storage-class\n  namespace: {}\n  labels:\n    arca.dev/change-storage-class: RestoreItemAction\ndata:\n  old-class: new-class\n---\n",
        arca.ns
    );
    apply(&a, &mapping).await;
    wait_bound(&a, "sc-ns", "data").await;
    arca.ok(
        &a,
        &["backup", "create", "sc", "--include-namespaces", "sc-ns"],
    );
    let items = arca.items(&a, "sc");
    assert!(
        items.contains("persistentvolumes:/sc-test-pv"),
        "a claim pulls in its volume: {items:?}"
    );

    // Into another namespace while the volume still exists: the volume is not restored a
    // second time under another name (Velero renames only volumes it restores from a
    // snapshot onto a new disk; two objects on one disk would be two writers). The claim
    // keeps its volume's name and its class is mapped.
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "sc-r",
            "--from-backup",
            "sc",
            "--namespace-mappings",
            "sc-ns:sc-ns2",
        ],
    );
    let pvc = get(
        &a,
        ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Some("sc-ns2"),
        "data",
    )
    .await
    .expect("claim restored");
    assert_eq!(pvc["spec"]["storageClassName"], "new-class");
    assert_eq!(pvc["spec"]["volumeName"], "sc-test-pv");
    let pvs = Api::<arca_k8s::k8s_openapi::api::core::v1::PersistentVolume>::all(a.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        !pvs.items.iter().any(|p| p
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .is_some_and(|h| h.path == "/tmp/arca-sc-test")
            && p.name_any() != "sc-test-pv"),
        "no second object on the same disk"
    );
    // The original is untouched, and the restore says why it did not restore it.
    let old = get(
        &a,
        ("v1", "PersistentVolume", "persistentvolumes"),
        None,
        "sc-test-pv",
    )
    .await
    .unwrap();
    assert_eq!(old["spec"]["storageClassName"], "old-class");
    assert_eq!(old["spec"]["claimRef"]["namespace"], "sc-ns");
    let d = arca.ok(&a, &["restore", "describe", "sc-r"]);
    assert!(d.contains("sc-test-pv"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_to_a_second_cluster_through_s3_alone() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some((a, b)) = clusters().await else {
        return;
    };
    // Cluster B's server syncs every second: the backup shows up there by itself.
    let arca = Arca {
        server_flags: vec!["--backup-sync-period", "1s"],
        ..Arca::new("migrate")
    };
    let creds = arca.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("migrate-{t:x}");
    let install = |c: &Cluster| {
        arca.ok(
            c,
            &[
                "install",
                "--provider",
                "aws",
                "--bucket",
                "arca-test",
                "--prefix",
                &prefix,
                "--backup-location-config",
                &format!("region=us-east-1,s3Url={endpoint}"),
                "--secret-file",
                creds.to_str().unwrap(),
            ],
        );
    };
    install(&a);
    let y = ns("mig-app")
        + &cm("mig-app", "settings", &[("app", "shop")], "from-a")
        + "apiVersion: v1\nkind: Secret\nmetadata: {name: token, namespace: mig-app}\nstringData: {t: s3cr3t}\n---\n"
        + "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop, namespace: mig-app}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: shop}}\n  template:\n    metadata: {labels: {app: shop}}\n    spec: {containers: [{name: c, image: example.invalid/shop:1}]}\n---\n";
    apply(&a, &y).await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "move",
            "--include-namespaces",
            "mig-app",
        ],
    );

    // Cluster B knows nothing but the bucket: the backup shows up, and restores.
    install(&b);
    let synced = until(&b, BACKUP, &arca.ns, "move", "synced", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Completed")
    })
    .await
    .unwrap();
    assert_eq!(
        synced["metadata"]["annotations"]["arca.dev/synced-from-location"],
        "default"
    );
    let list = arca.json(&b, &["backup", "get"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["move"], "synced from object storage");
    assert_eq!(list[0]["status"]["phase"], "Completed");
    let d = arca.ok(&b, &["backup", "describe", "move", "--details"]);
    assert!(d.contains("mig-app/settings"), "{d}");
    arca.ok(
        &b,
        &["restore", "create", "move-r", "--from-backup", "move"],
    );
    // Seen once under the full suite's load: the restore Completed, the item missing. What
    // the restore and the server said, if it happens again.
    let Some(settings) = configmap(&b, "mig-app", "settings").await else {
        let d = arca.run(&b, &["restore", "describe", "move-r", "--details"]);
        let log = arca
            .servers
            .lock()
            .unwrap()
            .iter()
            .map(|(k, s)| format!("{}:\n{}", k.display(), s.log()))
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "configmap mig-app/settings not restored into B\nrestore: {}{}\nservers: {log}",
            String::from_utf8_lossy(&d.stdout),
            String::from_utf8_lossy(&d.stderr)
        );
    };
    assert_eq!(settings["data"]["v"], "from-a");
    let s = get(&b, ("v1", "Secret", "secrets"), Some("mig-app"), "token")
        .await
        .unwrap();
    assert_eq!(s["data"]["t"], "czNjcjN0");
    let dep = get(
        &b,
        ("apps/v1", "Deployment", "deployments"),
        Some("mig-app"),
        "shop",
    )
    .await
    .unwrap();
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.invalid/shop:1"
    );

    // Deleting the backup from B removes it from storage; A's sync then drops it.
    arca.ok(&b, &["backup", "delete", "move", "--confirm"]);
    assert!(
        arca.json(&b, &["backup", "get"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        arca.json(&a, &["backup", "get"])
            .as_array()
            .unwrap()
            .is_empty(),
        "gone from storage, gone from A"
    );
    let out = arca.run(&a, &["backup", "logs", "move"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backup \"move\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_namespaces_backed_up_and_restored() {
    use futures::StreamExt;
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("big");
    arca.install(&a);
    arca.install(&b);
    let nsapi: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    let cmapi = |n: &str| {
        Api::<arca_k8s::k8s_openapi::api::core::v1::ConfigMap>::namespaced(a.client.clone(), n)
    };
    futures::stream::iter(0..500)
        .map(|i| {
            let n = format!("big-{i:03}");
            let nsapi = nsapi.clone();
            let cms = cmapi(&n);
            async move {
                let pp = PatchParams::apply("arca-test").force();
                nsapi.patch(&n, &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))).await.unwrap();
                cms.patch("c", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": n}, "data": {"i": i.to_string()}}))).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "big",
            "--include-namespaces",
            "big-*",
            "--include-resources",
            "namespaces,configmaps",
        ],
    );
    let list = arca.json(&a, &["backup", "get", "big"]);
    // 500 namespaces, their configmaps, and each namespace's root CA configmap.
    assert!(
        list[0]["status"]["progress"]["totalItems"]
            .as_i64()
            .unwrap()
            >= 1000,
        "{list}"
    );
    // Progress as the restore writes it, every write seen (a watch).
    let seen = tokio::spawn({
        use arca_k8s::kube::runtime::{WatchStreamExt, watcher};
        let r = resource(RESTORE.0, RESTORE.1, RESTORE.2);
        let api: Api<DynamicObject> = Api::namespaced_with(b.client.clone(), &arca.ns, &r);
        async move {
            let mut seen: Vec<i64> = Vec::new();
            let events = watcher(
                api,
                watcher::Config::default().fields("metadata.name=big-b"),
            )
            .default_backoff()
            .applied_objects();
            let mut events = std::pin::pin!(events);
            while let Some(o) = events.next().await {
                let Ok(o) = o else { continue };
                let v = serde_json::to_value(&o).unwrap();
                if let Some(n) = v
                    .pointer("/status/progress/itemsRestored")
                    .and_then(Value::as_i64)
                    && seen.last() != Some(&n)
                {
                    seen.push(n);
                }
                if matches!(
                    v.pointer("/status/phase").and_then(Value::as_str),
                    Some("Completed" | "PartiallyFailed" | "Failed")
                ) {
                    break;
                }
            }
            seen
        }
    });
    arca.ok(&b, &["restore", "create", "big-b", "--from-backup", "big"]);
    let seen = seen.await.unwrap();
    // Written per item at most once a second, so a value inside the config maps' tier
    // shows only when that tier takes over a second (it did here: [0, 661, 1000]); what
    // is asserted is only that every value written rises (a tier's end writes one too).
    eprintln!("restore progress written: {seen:?}");
    assert!(
        seen.len() >= 2 && seen.windows(2).all(|w| w[0] < w[1]),
        "{seen:?}"
    );
    let on_b = Api::<arca_k8s::k8s_openapi::api::core::v1::Namespace>::all(b.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let big: Vec<String> = on_b
        .items
        .iter()
        .map(|n| n.name_any())
        .filter(|n| n.starts_with("big-"))
        .collect();
    assert_eq!(big.len(), 500);
    for i in [0, 250, 499] {
        let n = format!("big-{i:03}");
        let c = Api::<arca_k8s::k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            b.client.clone(),
            &n,
        )
        .get("c")
        .await
        .unwrap();
        assert_eq!(c.data.unwrap()["i"], i.to_string());
    }
    let r = arca.json(&b, &["restore", "get", "big-b"]);
    assert_eq!(r[0]["status"]["phase"], "Completed", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_or_a_missing_location_is_named() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("errors");
    let text = std::fs::read_to_string(&a.kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    let bad = arca.dir.path().join("kubeconfig");
    std::fs::write(&bad, text.replace(&server, "https://127.0.0.1:1")).unwrap();
    let down = Cluster {
        kubeconfig: bad,
        client: a.client.clone(),
    };
    let out = arca.run(&down, &["backup", "get"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot reach the API server at https://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("Status {"), "no debug dumps: {err}");

    // --context: a context the kubeconfig lacks is named; its own context works.
    let out = arca.run(&a, &["--context", "no-such-context", "backup", "get"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-context") && err.contains("--context"),
        "{err}"
    );
    let current = text
        .lines()
        .find_map(|l| l.strip_prefix("current-context: "))
        .unwrap()
        .trim()
        .to_string();

    // Installed, but no storage location: the backup says what to do.
    arca.ok(&a, &["install"]);
    arca.ok(&a, &["--context", &current, "backup", "get"]);
    let out = arca.run(&a, &["backup", "create", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("no BackupStorageLocation") && err.contains("arca install"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_from_a_schedule_and_a_restore_of_its_newest() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("sched");
    arca.install(&a);
    apply(&a, &(ns("sch-ns") + &cm("sch-ns", "c", &[], "first"))).await;
    let schedule = format!(
        "apiVersion: arca.dev/v1\nkind: Schedule\nmetadata: {{name: nightly, namespace: {}}}\nspec:\n  schedule: \"0 1 * * *\"\n  paused: true\n  template:\n    includedNamespaces: [sch-ns]\n    ttl: 24h0m0s\n---\n",
        arca.ns
    );
    // Paused: the server makes no backups of it; these tests make them by hand.
    apply(&a, &schedule).await;
    // No backup yet: the restore fails validation and says why.
    let out = arca.run(
        &a,
        &["restore", "create", "early", "--from-schedule", "nightly"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("schedule nightly has no completed backup")
    );

    let first = arca.ok(&a, &["backup", "create", "--from-schedule", "nightly"]);
    assert!(first.contains("Backup request \"nightly-"), "{first}");
    let b = arca.json(
        &a,
        &["backup", "get", "-l", "arca.dev/schedule-name=nightly"],
    );
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b[0]["spec"]["ttl"], "24h0m0s", "the template's spec");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    apply(&a, &cm("sch-ns", "c", &[], "second")).await;
    arca.ok(&a, &["backup", "create", "--from-schedule", "nightly"]);

    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "latest",
            "--from-schedule",
            "nightly",
            "--allow-partially-failed",
            "--namespace-mappings",
            "sch-ns:sch-copy",
        ],
    );
    assert_eq!(
        configmap(&a, "sch-copy", "c").await.unwrap()["data"]["v"],
        "second",
        "the newest backup"
    );
    // The restore names the backup it chose, so describe and logs find its record.
    let r = arca.json(&a, &["restore", "describe", "latest"]);
    let chosen = r[0]["restore"]["spec"]["backupName"]
        .as_str()
        .expect("backupName recorded");
    assert!(chosen.starts_with("nightly-"), "{r}");
    arca.ok(&a, &["restore", "logs", "latest"]);
}

/// A Schedule once `done` holds of it (the server writes its status), or as it is after
/// ten seconds.
async fn schedule_when(c: &Cluster, ns: &str, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut s = Value::Null;
    for _ in 0..300 {
        s = get(c, ("arca.dev/v1", "Schedule", "schedules"), Some(ns), name)
            .await
            .unwrap();
        if done(&s) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s
}

/// The Schedule controller: a new schedule backs up at once, then on its expression
/// (`@every`), with names `<schedule>-<UTC timestamp>` and the template's spec; paused, it
/// makes none; unpaused with --skip-immediately it records the skip; an invalid
/// expression is FailedValidation (by the API) or refused (by the CLI); runs missed
/// while the server was away make one backup; a schedule whose backup is still running
/// makes no second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_back_up_at_once_then_on_time_and_never_overlap() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("cron");
    arca.install(&a);
    let app = format!("cron-app-{}", arca.suffix());
    apply(&a, &(ns(&app) + &cm(&app, "c", &[], "1"))).await;
    let out = arca.ok(
        &a,
        &[
            "schedule",
            "create",
            "often",
            "--schedule",
            "@every 3s",
            "--include-namespaces",
            &app,
            "--ttl",
            "2h0m0s",
            "--use-owner-references-in-backup",
        ],
    );
    assert!(out.contains("Schedule \"often\" created"), "{out}");
    let backups = |min: usize| {
        let arca = &arca;
        let a = &a;
        async move {
            for _ in 0..600 {
                let l = arca.json(a, &["backup", "get", "-l", "arca.dev/schedule-name=often"]);
                let done: Vec<Value> = l
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|b| b["status"]["phase"] == "Completed")
                    .cloned()
                    .collect();
                if done.len() >= min {
                    return done;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            panic!("the schedule never made {min} backups")
        }
    };
    let two = backups(2).await;
    let names: Vec<&str> = two
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap())
        .collect();
    for (b, n) in two.iter().zip(&names) {
        assert!(
            n.starts_with("often-") && n.len() == "often-".len() + 14,
            "{n}"
        );
        assert_eq!(b["spec"]["ttl"], "2h0m0s", "the template's spec");
        assert_eq!(b["spec"]["includedNamespaces"][0], app.as_str());
        // useOwnerReferencesInBackup: owned by the schedule (deleted with it).
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["controller"]),
            (&json!("Schedule"), &json!("often"), &json!(true)),
            "{b:#}"
        );
    }
    // Newest first; three seconds apart at least (names are UTC seconds).
    let secs = |n: &str| n["often-".len()..].parse::<u64>().unwrap();
    assert!(secs(names[0]) - secs(names[1]) >= 3, "{names:?}");
    assert!(
        arca.items(&a, names[0])
            .contains(&format!("configmaps:{app}/c"))
    );
    let s = arca.json(&a, &["schedule", "get", "often"]);
    assert_eq!(s[0]["status"]["phase"], "Enabled", "{s:#}");
    assert!(s[0]["status"]["lastBackup"].is_string(), "{s:#}");
    let d = arca.ok(&a, &["schedule", "describe", "often"]);
    assert!(
        d.contains("Schedule:  @every 3s") && d.contains("Next run:"),
        "{d}"
    );
    let d: Value =
        serde_json::from_str(&arca.ok(&a, &["schedule", "describe", "often", "-o", "json"]))
            .unwrap();
    assert_eq!(d[0]["spec"]["schedule"], "@every 3s", "{d:#}");

    // Paused: no backup in a window longer than the interval.
    arca.ok(&a, &["schedule", "pause", "often"]);
    let before = get(
        &a,
        ("arca.dev/v1", "Schedule", "schedules"),
        Some(&arca.ns),
        "often",
    )
    .await
    .unwrap()["status"]["lastBackup"]
        .clone();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let s = get(
        &a,
        ("arca.dev/v1", "Schedule", "schedules"),
        Some(&arca.ns),
        "often",
    )
    .await
    .unwrap();
    assert_eq!(s["status"]["lastBackup"], before, "paused");
    assert_eq!(s["spec"]["paused"], true);
    // Unpaused skipping the due run: the skip is recorded, the flag consumed.
    arca.ok(&a, &["schedule", "unpause", "often", "--skip-immediately"]);
    // The skip is recorded first, then the flag cleared (two writes: see schedules.rs).
    let s = schedule_when(&a, &arca.ns, "often", |s| {
        s["status"]["lastSkipped"].is_string() && s["spec"]["skipImmediately"] == false
    })
    .await;
    assert!(s["status"]["lastSkipped"].is_string(), "{s:#}");
    assert_eq!(s["spec"]["skipImmediately"], false, "{s:#}");
    arca.ok(&a, &["schedule", "delete", "often", "--confirm"]);

    // A schedule created to skip its first run makes none now.
    arca.ok(
        &a,
        &[
            "schedule",
            "create",
            "yearly",
            "--schedule",
            "CRON_TZ=Europe/Paris @yearly",
            "--skip-immediately",
        ],
    );
    // Invalid: refused by the CLI, FailedValidation through the API.
    let out = arca.run(
        &a,
        &["schedule", "create", "bad", "--schedule", "61 * * * *"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--schedule: invalid schedule"));
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Schedule\nmetadata: {{name: bad, namespace: {}}}\nspec:\n  schedule: every day\n  template: {{}}\n",
            arca.ns
        ),
    )
    .await;
    let bad = schedule_when(&a, &arca.ns, "bad", |bad| {
        bad["status"]["phase"].is_string()
    })
    .await;
    assert_eq!(bad["status"]["phase"], "FailedValidation", "{bad:#}");
    assert!(
        bad["status"]["validationErrors"][0]
            .as_str()
            .unwrap()
            .contains("expected exactly 5 fields, found 2"),
        "{bad:#}"
    );
    let y = get(
        &a,
        ("arca.dev/v1", "Schedule", "schedules"),
        Some(&arca.ns),
        "yearly",
    )
    .await
    .unwrap();
    assert_eq!(y["status"]["phase"], "Enabled", "{y:#}");
    assert!(
        y["status"]["lastSkipped"].is_string() && y["status"]["lastBackup"].is_null(),
        "{y:#}"
    );
    let yaml = arca.ok(&a, &["schedule", "get", "-o", "yaml"]);
    assert!(
        yaml.contains("name: yearly") && yaml.contains("name: bad"),
        "{yaml}"
    );

    // Runs missed while the server was down make one backup, not one each: an hourly
    // schedule (`TZ=`, a zone half an hour off UTC) whose last backup was five hours ago,
    // as the server finds it after that long away. It backs up once at once, and its
    // next run is the zone's next full hour (half past, in UTC), not another catch-up.
    arca.ok(
        &a,
        &[
            "schedule",
            "create",
            "missed",
            "--schedule",
            "TZ=Asia/Kolkata 0 * * * *",
            "--include-namespaces",
            &app,
            "--paused",
        ],
    );
    let schedules: Api<DynamicObject> = Api::namespaced_with(
        a.client.clone(),
        &arca.ns,
        &resource("arca.dev/v1", "Schedule", "schedules"),
    );
    let long_ago = (chrono::Utc::now() - chrono::Duration::hours(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    schedules
        .patch_status(
            "missed",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "lastBackup": long_ago } })),
        )
        .await
        .unwrap();
    arca.ok(&a, &["schedule", "unpause", "missed"]);
    let s = schedule_when(&a, &arca.ns, "missed", |s| {
        s["status"]["lastBackup"].is_string() && s["status"]["lastBackup"] != json!(long_ago)
    })
    .await;
    let made = || {
        arca.json(
            &a,
            &["backup", "get", "-l", "arca.dev/schedule-name=missed"],
        )
    };
    let one = made();
    assert_eq!(
        one.as_array().unwrap().len(),
        1,
        "one catch-up: {one:#}\n{s:#}"
    );
    // Still one after it ended (the schedule wakes when one of its backups ends, and a
    // second catch-up would be made then).
    let first = one[0]["metadata"]["name"].as_str().unwrap();
    let ends = ["Completed", "Failed", "PartiallyFailed"];
    assert_eq!(
        wait_backup_phase(&a, &arca.ns, first, &ends).await,
        "Completed"
    );
    let again = made();
    assert_eq!(
        again.as_array().unwrap().len(),
        1,
        "one catch-up, also after it ended: {again:#}"
    );
    let d = arca.ok(&a, &["schedule", "describe", "missed"]);
    let next = d
        .lines()
        .find_map(|l| l.strip_prefix("Next run:"))
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%d %H:%M:%S UTC").ok())
        .map(|t| t.and_utc())
        .unwrap_or_else(|| panic!("{d}"));
    let now = chrono::Utc::now();
    assert!(
        next > now
            && next <= now + chrono::Duration::hours(1)
            && chrono::Timelike::minute(&next) == 30
            && chrono::Timelike::second(&next) == 0,
        "next run {next} (now {now}):\n{d}"
    );
    arca.ok(&a, &["schedule", "delete", "missed", "--confirm"]);

    // No overlap: the server hangs in the first backup (a pause point); the schedule,
    // due every second, makes no second one meanwhile.
    let solo = Arca {
        auto_server: false,
        ..Arca::new("cron-solo")
    };
    solo.install(&a);
    let server = solo.server_with(&a, "15s", &[("ARCA_TEST_PAUSE_AT", "backup-collected")]);
    server.wait_log("leading").await;
    solo.ok(
        &a,
        &[
            "schedule",
            "create",
            "hung",
            "--schedule",
            "@every 1s",
            "--include-namespaces",
            &app,
        ],
    );
    server.wait_log("paused at backup-collected").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let l = solo.json(&a, &["backup", "get", "-l", "arca.dev/schedule-name=hung"]);
    assert_eq!(l.as_array().unwrap().len(), 1, "{l:#}");
    assert_eq!(l[0]["status"]["phase"], "InProgress");
}

/// A volume the cluster provisioned (reclaim policy Delete) is not restored elsewhere: its
/// claim loses `volumeName`, so the target cluster provisions a new volume, and deleting the
/// claim there can never delete the source's disk. A static volume (Retain) comes back with
/// its claim bound to it; `--restore-volumes=false` leaves the objects to the filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamically_provisioned_volumes_are_provisioned_anew_in_the_target() {
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("dynpv");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("dyn-{sfx}");
    let y = ns(&nsn)
        + &format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: pvc-dyn-{sfx}
  annotations: {{pv.kubernetes.io/provisioned-by: fake.csi.arca.dev}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: fast
  csi: {{driver: fake.csi.arca.dev, volumeHandle: disk-{sfx}}}
  claimRef: {{namespace: {nsn}, name: dyn}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: dyn
  namespace: {nsn}
  annotations:
    volume.kubernetes.io/storage-provisioner: fake.csi.arca.dev
    volume.beta.kubernetes.io/storage-provisioner: fake.csi.arca.dev
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: fast
  volumeName: pvc-dyn-{sfx}
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: static-{sfx}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  hostPath: {{path: /tmp/arca-static-{sfx}}}
  claimRef: {{namespace: {nsn}, name: static}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: static, namespace: {nsn}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: static-{sfx}
  resources: {{requests: {{storage: 1Gi}}}}
---
"#
        );
    apply(&a, &y).await;
    wait_bound(&a, &nsn, "dyn").await;
    wait_bound(&a, &nsn, "static").await;
    arca.ok(
        &a,
        &["backup", "create", "dyn", "--include-namespaces", &nsn],
    );
    let items = arca.items(&a, "dyn");
    for want in [
        format!("persistentvolumes:/pvc-dyn-{sfx}"),
        format!("persistentvolumes:/static-{sfx}"),
    ] {
        assert!(
            items.contains(&want),
            "bound claims bring their volumes: {items:?}"
        );
    }

    // Cluster B reads the same location.
    arca.install(&b);
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "dyn-b",
            "--from-backup",
            "dyn",
            "--restore-volumes=false",
        ],
    );
    let (dyn_pv, static_pv) = (format!("pvc-dyn-{sfx}"), format!("static-{sfx}"));
    assert!(
        get(
            &b,
            ("v1", "PersistentVolume", "persistentvolumes"),
            None,
            &dyn_pv
        )
        .await
        .is_none(),
        "the source's disk is never restored into the target"
    );
    let claim = |name: &'static str| {
        get(
            &b,
            ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            Some(&nsn),
            name,
        )
    };
    let dyn_claim = claim("dyn").await.expect("claim restored");
    assert!(
        dyn_claim["spec"].get("volumeName").is_none(),
        "the target provisions a new volume: {dyn_claim}"
    );
    assert!(
        dyn_claim["metadata"]["annotations"]
            .get("volume.kubernetes.io/storage-provisioner")
            .is_none()
    );
    let st = get(
        &b,
        ("v1", "PersistentVolume", "persistentvolumes"),
        None,
        &static_pv,
    )
    .await
    .expect("static volume restored");
    assert_eq!(st["spec"]["claimRef"]["namespace"], nsn.as_str());
    assert_eq!(
        claim("static").await.unwrap()["spec"]["volumeName"],
        format!("static-{sfx}")
    );
    let log = arca.ok(&b, &["restore", "logs", "dyn-b"]);
    assert!(log.contains("provisioned dynamically"), "{log}");
}

/// A namespace labelled exclude-from-backup (Arca's or Velero's label) stays out with
/// everything in it; naming it in the includes as well is a validation error, as Velero's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_labelled_exclude_from_backup_stay_out_whole() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("exns");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let (exa, exb, exk) = (
        format!("exa-{sfx}"),
        format!("exb-{sfx}"),
        format!("exk-{sfx}"),
    );
    let y = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {exa}\n  labels: {{arca.dev/exclude-from-backup: \"true\"}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {exb}\n  labels: {{velero.io/exclude-from-backup: \"true\"}}\n---\n"
    ) + &ns(&exk)
        + &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: db-password, namespace: {exa}}}\nstringData: {{p: hunter2}}\n---\n"
        )
        + &cm(&exb, "c", &[], "b")
        + &cm(&exk, "c", &[], "k");
    apply(&a, &y).await;
    let pattern = format!("ex?-{sfx}");
    arca.ok(
        &a,
        &["backup", "create", "ex", "--include-namespaces", &pattern],
    );
    let items = arca.items(&a, "ex");
    assert!(items.contains(&format!("configmaps:{exk}/c")), "{items:?}");
    assert!(
        !items.iter().any(|i| i.contains(&exa) || i.contains(&exb)),
        "nothing of a labelled namespace, not even its Secrets: {items:?}"
    );
    let b = arca.json(&a, &["backup", "describe", "ex"]);
    let excluded: Vec<&str> = b[0]["backup"]["spec"]["excludedNamespaces"]
        .as_array()
        .expect("recorded in the spec")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        excluded.contains(&exa.as_str()) && excluded.contains(&exb.as_str()),
        "{b}"
    );

    let out = arca.run(
        &a,
        &["backup", "create", "ex-named", "--include-namespaces", &exa],
    );
    assert_eq!(out.status.code(), Some(1));
    let d = arca.json(&a, &["backup", "describe", "ex-named"]);
    assert_eq!(d[0]["backup"]["status"]["phase"], "FailedValidation", "{d}");
    assert!(
        d[0]["backup"]["status"]["validationErrors"][0]
            .as_str()
            .unwrap()
            .contains("excludes list cannot contain an item in the includes list"),
        "{d}"
    );
}

/// With `includeClusterResources` unset, cluster-scoped resources come only when every
/// namespace does: an exclude is a namespace filter too, in backup and in restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_resources_only_with_every_namespace() {
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("scope");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("scope-{sfx}");
    let y = ns(&nsn)
        + &cm(&nsn, "c", &[], "v")
        + &format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: scope-{sfx}}}\nprovisioner: fake.csi.arca.dev\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: scope-{sfx}}}\nrules: []\n---\n"
        );
    apply(&a, &y).await;
    let kinds = "configmaps,storageclasses,clusterroles";
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "excl",
            "--exclude-namespaces",
            "kube-system",
            "--include-resources",
            kinds,
        ],
    );
    let items = arca.items(&a, "excl");
    assert!(items.contains(&format!("configmaps:{nsn}/c")));
    assert!(
        !items
            .iter()
            .any(|i| i.starts_with("storageclasses") || i.starts_with("clusterroles")),
        "an exclude keeps cluster resources out: {:?}",
        items
            .iter()
            .filter(|i| !i.starts_with("configmaps"))
            .collect::<Vec<_>>()
    );
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "incl",
            "--exclude-namespaces",
            "kube-system",
            "--include-resources",
            kinds,
            "--include-cluster-resources",
        ],
    );
    let items = arca.items(&a, "incl");
    assert!(items.contains(&format!("storageclasses:/scope-{sfx}")));

    // Restore: the same rule, on a backup of one namespace and the storage classes. Into
    // B, excluding a namespace (not this one): no cluster resources.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "small",
            "--include-namespaces",
            &nsn,
            "--include-resources",
            "configmaps,storageclasses",
            "--include-cluster-resources",
        ],
    );
    arca.install(&b);
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "r-excl",
            "--from-backup",
            "small",
            "--exclude-namespaces",
            "kube-system",
        ],
    );
    let sc_name = format!("scope-{sfx}");
    assert!(configmap(&b, &nsn, "c").await.is_some());
    assert!(
        get(
            &b,
            ("storage.k8s.io/v1", "StorageClass", "storageclasses"),
            None,
            &sc_name
        )
        .await
        .is_none(),
        "a namespace filter keeps cluster resources out"
    );
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "r-all",
            "--from-backup",
            "small",
            "--include-resources",
            "storageclasses",
        ],
    );
    assert!(
        get(
            &b,
            ("storage.k8s.io/v1", "StorageClass", "storageclasses"),
            None,
            &sc_name
        )
        .await
        .is_some(),
        "every namespace: cluster resources come"
    );
}

/// Two locations, and the default moved from the first to the second: every backup keeps
/// the location it was made in (spec and label), sync removes nothing, restores and
/// deletes find each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_locations_with_the_default_moved() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("locs");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("locs-{sfx}");
    apply(&a, &(ns(&nsn) + &cm(&nsn, "c", &[], "v"))).await;
    arca.ok(
        &a,
        &["backup", "create", "first", "--include-namespaces", &nsn],
    );
    let bsl = |name: &str, default: bool, dir: &std::path::Path| {
        format!(
            "apiVersion: arca.dev/v1\nkind: BackupStorageLocation\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  provider: local\n  default: {default}\n  objectStorage: {{bucket: {}}}\n---\n",
            arca.ns,
            dir.display()
        )
    };
    let second_dir = arca.dir.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let first_dir = arca.dir.path().join("bsl");
    apply(
        &a,
        &(bsl("second", true, &second_dir) + &bsl("default", false, &first_dir)),
    )
    .await;
    arca.ok(
        &a,
        &["backup", "create", "second", "--include-namespaces", &nsn],
    );

    let list = arca.json(&a, &["backup", "get"]);
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("backup {n} gone after the default moved: {list}"))
            .clone()
    };
    let first = by_name("first");
    assert_eq!(first["spec"]["storageLocation"], "default");
    assert_eq!(
        first["metadata"]["labels"]["arca.dev/storage-location"],
        "default"
    );
    let second = by_name("second");
    assert_eq!(second["spec"]["storageLocation"], "second");
    assert_eq!(
        second["metadata"]["labels"]["arca.dev/storage-location"],
        "second"
    );

    for b in ["first", "second"] {
        let target = format!("{nsn}-{b}");
        arca.ok(
            &a,
            &[
                "restore",
                "create",
                &format!("r-{b}"),
                "--from-backup",
                b,
                "--namespace-mappings",
                &format!("{nsn}:{target}"),
            ],
        );
        assert!(configmap(&a, &target, "c").await.is_some(), "{b} restores");
    }
    arca.ok(&a, &["backup", "delete", "first", "--confirm"]);
    let names: Vec<String> = arca
        .json(&a, &["backup", "get"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["second"],
        "deleted from its own location, and only it"
    );
}

/// Velero's related items: a pod brings its claim (and the claim its volume) and its
/// PriorityClass; a service account the cluster role bindings naming it and their roles.
/// They bypass the label selector, in backup and in restore; the restored pod has no node,
/// no priority value and no old token volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn related_items_come_along_whatever_the_label_selector() {
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("related");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("rel-{sfx}");
    let y = ns(&nsn)
        + &format!(
            r#"apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {{name: rel-{sfx}}}
value: 1000
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: rel-pv-{sfx}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  hostPath: {{path: /tmp/arca-rel-{sfx}}}
  claimRef: {{namespace: {nsn}, name: data}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {nsn}, labels: {{app: db}}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  volumeName: rel-pv-{sfx}
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: robot, namespace: {nsn}, labels: {{app: db}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: rel-{sfx}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: rel-{sfx}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rel-{sfx}}}
subjects: [{{kind: ServiceAccount, name: robot, namespace: {nsn}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: default, namespace: {nsn}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: {nsn}, labels: {{app: db}}}}
spec:
  priorityClassName: rel-{sfx}
  automountServiceAccountToken: false
  # The clusters have a real node: resource-only fixtures name no real scheduler, so they
  # stay as written (unscheduled, not run) and the restore's rules are what is checked.
  schedulerName: arca-test-unscheduled

  containers:
  - name: c
    image: example.invalid/db:1
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}
  - {{name: cache, persistentVolumeClaim: {{claimName: cache}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: cache, namespace: {nsn}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  resources: {{requests: {{storage: 1Gi}}}}
---
"#
        )
        + &cm(&nsn, "unrelated", &[], "x");
    apply(&a, &y).await;
    wait_bound(&a, &nsn, "data").await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "rel",
            "--include-namespaces",
            &nsn,
            "-l",
            "app=db",
        ],
    );
    let items = arca.items(&a, "rel");
    for want in [
        format!("pods:{nsn}/db"),
        format!("serviceaccounts:{nsn}/robot"),
        format!("persistentvolumeclaims:{nsn}/data"),
        format!("persistentvolumeclaims:{nsn}/cache"),
        format!("persistentvolumes:/rel-pv-{sfx}"),
        format!("priorityclasses:/rel-{sfx}"),
        format!("clusterrolebindings:/rel-{sfx}"),
        format!("clusterroles:/rel-{sfx}"),
    ] {
        assert!(items.contains(&want), "{want} missing from {items:?}");
    }
    assert!(!items.contains(&format!("configmaps:{nsn}/unrelated")));

    arca.install(&b);
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "rel-b",
            "--from-backup",
            "rel",
            "-l",
            "app=db",
        ],
    );
    // In restore, as in Velero: a pod brings its claims, labelled or not, and its priority
    // class; a claim its unlabelled volume; the bindings are not selected.
    let log = arca.ok(&b, &["restore", "logs", "rel-b"]);
    let claim = get(
        &b,
        ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Some(&nsn),
        "data",
    )
    .await
    .unwrap_or_else(|| panic!("the labelled claim: {log}"));
    assert_eq!(claim["spec"]["volumeName"], format!("rel-pv-{sfx}"));
    let pv_name = format!("rel-pv-{sfx}");
    assert!(
        get(
            &b,
            ("v1", "PersistentVolume", "persistentvolumes"),
            None,
            &pv_name
        )
        .await
        .is_some(),
        "its unlabelled volume: {log}"
    );
    let pc = format!("rel-{sfx}");
    assert!(
        get(
            &b,
            ("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses"),
            None,
            &pc
        )
        .await
        .is_some()
    );
    assert!(
        get(
            &b,
            ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            Some(&nsn),
            "cache"
        )
        .await
        .is_some(),
        "the pod's unlabelled claim (Velero's add-pvc-from-pod): {log}"
    );
    let pod = get(&b, ("v1", "Pod", "pods"), Some(&nsn), "db")
        .await
        .expect("pod restored");
    assert!(pod["spec"].get("nodeName").is_none(), "{pod}");
    let vols: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vols.contains(&"data"), "{vols:?}");
    assert!(configmap(&b, &nsn, "unrelated").await.is_none());
}

/// Jobs restore without their old controller-uid; completed pods and Jobs and mirror pods
/// stay behind; role binding subjects follow the namespace mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_pods_and_bindings_restore_as_velero_restores_them() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("jobs");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let (src, dst) = (format!("job-{sfx}"), format!("jobm-{sfx}"));
    let job = |name: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}, namespace: {src}}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      schedulerName: arca-test-unscheduled\n      containers: [{{name: c, image: example.invalid/job:1}}]\n---\n"
        )
    };
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {src}{extra}}}\nspec:\n  restartPolicy: Never\n  automountServiceAccountToken: false\n  schedulerName: arca-test-unscheduled\n  containers: [{{name: c, image: example.invalid/p:1}}]\n---\n"
        )
    };
    let y = ns(&src)
        + &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {src}}}\n---\n")
        + &job("running")
        + &job("done")
        + &pod("web", "")
        + &pod("finished", "")
        // A mirror pod names its node, which must exist (the pod garbage collector).
        + "apiVersion: v1\nkind: Node\nmetadata: {name: arca-test-node}\n---\n"
        + &pod("static-web", ", annotations: {kubernetes.io/config.mirror: mirror-1}")
            .replace("spec:\n", "spec:\n  nodeName: arca-test-node\n")
        + &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: rb, namespace: {src}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}\nsubjects: [{{kind: ServiceAccount, name: default, namespace: {src}}}]\n---\n"
        );
    apply(&a, &y).await;
    // What the controllers and the kubelet would have written.
    let set_status = |api_version: &str, kind: &str, plural: &str, name: &str, status: Value| {
        let ar = resource(api_version, kind, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(a.client.clone(), &src, &ar);
        let name = name.to_string();
        async move {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .unwrap();
        }
    };
    set_status("batch/v1", "Job", "jobs", "done", json!({
        "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z", "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}]})).await;
    set_status(
        "v1",
        "Pod",
        "pods",
        "finished",
        json!({"phase": "Succeeded"}),
    )
    .await;
    let running = get(&a, ("batch/v1", "Job", "jobs"), Some(&src), "running")
        .await
        .unwrap();
    assert!(
        running["spec"]["selector"]["matchLabels"]["controller-uid"].is_string(),
        "the fixture has the label the restore must drop: {running}"
    );
    arca.ok(
        &a,
        &["backup", "create", "jobs", "--include-namespaces", &src],
    );
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "jobs-r",
            "--from-backup",
            "jobs",
            "--namespace-mappings",
            &format!("{src}:{dst}"),
        ],
    );
    let job_r = get(&a, ("batch/v1", "Job", "jobs"), Some(&dst), "running")
        .await
        .expect("job restored");
    assert_ne!(
        job_r["spec"]["selector"]["matchLabels"]["controller-uid"],
        running["spec"]["selector"]["matchLabels"]["controller-uid"],
        "a new controller-uid"
    );
    let log = arca.ok(&a, &["restore", "logs", "jobs-r"]);
    assert!(
        get(&a, ("batch/v1", "Job", "jobs"), Some(&dst), "done")
            .await
            .is_none(),
        "completed job: {log}"
    );
    assert!(
        get(&a, ("v1", "Pod", "pods"), Some(&dst), "web")
            .await
            .is_some()
    );
    assert!(
        get(&a, ("v1", "Pod", "pods"), Some(&dst), "finished")
            .await
            .is_none(),
        "completed pod"
    );
    assert!(
        get(&a, ("v1", "Pod", "pods"), Some(&dst), "static-web")
            .await
            .is_none(),
        "mirror pod"
    );
    let rb = get(
        &a,
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
        ),
        Some(&dst),
        "rb",
    )
    .await
    .unwrap();
    assert_eq!(rb["subjects"][0]["namespace"], dst.as_str());
    let d = arca.json(&a, &["restore", "describe", "jobs-r"]);
    assert_eq!(d[0]["restore"]["status"]["errors"], 0, "{d}");
}

/// Namespaces come back from their backed-up objects (labels and annotations) even when a
/// filter left the Namespace item out, and carry no restore labels. An in-place restore
/// of an unchanged namespace warns about nothing; `update` removes what was added since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_from_their_objects_and_in_place_restores() {
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("nsobj");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("nsobj-{sfx}");
    let y = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {nsn}\n  labels: {{team: payments}}\n  annotations: {{owner: alice}}\n---\n"
    ) + &cm(&nsn, "conf", &[], "v1");
    apply(&a, &y).await;
    arca.ok(
        &a,
        &["backup", "create", "nsobj", "--include-namespaces", &nsn],
    );

    // In place, nothing changed: no warnings.
    arca.ok(&a, &["restore", "create", "same", "--from-backup", "nsobj"]);
    let d = arca.json(&a, &["restore", "describe", "same", "--details"]);
    assert_eq!(d[0]["restore"]["status"]["warnings"], 0, "{d}");
    let conf = d[0]["items"]
        .as_array()
        .expect("--details lists the items")
        .iter()
        .find(|i| i["resource"] == "configmaps" && i["name"] == "conf")
        .unwrap_or_else(|| panic!("{d}"))
        .clone();
    assert_eq!(conf["outcome"], "unchanged", "{conf}");
    let text = arca.ok(&a, &["restore", "describe", "same", "--details"]);
    assert!(
        text.contains("Resource List:") && text.contains("(unchanged)"),
        "{text}"
    );

    // Output formats, and the backup as Velero's tarball.
    let yaml = arca.ok(&a, &["backup", "get", "nsobj", "-o", "yaml"]);
    let v: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(v[0]["metadata"]["name"], "nsobj", "{yaml}");
    let desc: Value =
        serde_yaml_ng::from_str(&arca.ok(&a, &["restore", "describe", "same", "-o", "yaml"]))
            .unwrap();
    assert_eq!(desc[0]["restore"]["metadata"]["name"], "same");
    let tarball = arca.dir.path().join("nsobj.tar.gz");
    let download = [
        "backup",
        "download",
        "nsobj",
        "-o",
        tarball.to_str().unwrap(),
    ];
    arca.ok(&a, &download);
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&tarball)
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    for want in [
        "metadata/version".to_string(),
        format!("resources/configmaps/namespaces/{nsn}/conf.json"),
        format!("resources/configmaps/v1-preferredversion/namespaces/{nsn}/conf.json"),
        format!("resources/namespaces/cluster/{nsn}.json"),
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} missing from\n{list}"
        );
    }
    let again = arca.run(&a, &download);
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing file needs --force"
    );

    // Drift: a key added since the backup goes with update.
    let cm_api =
        Api::<arca_k8s::k8s_openapi::api::core::v1::ConfigMap>::namespaced(a.client.clone(), &nsn);
    cm_api
        .patch(
            "conf",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"v": "v2", "added": "later"}})),
        )
        .await
        .unwrap();
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "upd",
            "--from-backup",
            "nsobj",
            "--existing-resource-policy",
            "update",
        ],
    );
    let conf = configmap(&a, &nsn, "conf").await.unwrap();
    assert_eq!(conf["data"], json!({"v": "v1"}), "{conf}");
    assert_eq!(conf["metadata"]["labels"]["arca.dev/restore-name"], "upd");

    // Into B with only config maps selected: the namespace comes from its object.
    arca.install(&b);
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "cms",
            "--from-backup",
            "nsobj",
            "--include-resources",
            "configmaps",
        ],
    );
    let n = get(&b, ("v1", "Namespace", "namespaces"), None, &nsn)
        .await
        .expect("namespace created");
    assert_eq!(n["metadata"]["labels"]["team"], "payments");
    assert_eq!(n["metadata"]["annotations"]["owner"], "alice");
    assert!(
        n["metadata"]["labels"]
            .get("arca.dev/restore-name")
            .is_none(),
        "{n}"
    );
    assert!(configmap(&b, &nsn, "conf").await.is_some());
}

/// Validation and results as Velero's: the same resource in both lists fails validation
/// with the reason; an included namespace that does not exist makes the backup partially
/// failed (exit 3); a TTL of 0 is the default TTL, written into the spec; a 50-character
/// backup name restores (label values over 63 characters are hashed, Velero's rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_results_ttl_and_long_names() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("valid");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("valid-{sfx}");
    apply(&a, &(ns(&nsn) + &cm(&nsn, "c", &[], "v"))).await;

    let out = arca.run(
        &a,
        &[
            "backup",
            "create",
            "both",
            "--include-resources",
            "configmaps",
            "--exclude-resources",
            "configmaps",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let d = arca.json(&a, &["backup", "describe", "both"]);
    assert!(
        d[0]["backup"]["status"]["validationErrors"][0]
            .as_str()
            .unwrap()
            .contains("excludes list cannot contain an item in the includes list: configmaps"),
        "{d}"
    );

    let missing = format!("missing-{sfx}");
    arca.expect(
        &a,
        3,
        &[
            "backup",
            "create",
            "partial",
            "--include-namespaces",
            &format!("{nsn},{missing}"),
        ],
    );
    let d = arca.json(&a, &["backup", "describe", "partial", "--details"]);
    assert_eq!(d[0]["backup"]["status"]["phase"], "PartiallyFailed");
    assert!(d[0]["results"].to_string().contains(&missing), "{d}");

    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "ttl0",
            "--include-namespaces",
            &nsn,
            "--ttl",
            "0",
        ],
    );
    let d = arca.json(&a, &["backup", "describe", "ttl0"]);
    assert_eq!(d[0]["backup"]["spec"]["ttl"], "720h0m0s");
    let items = arca.items(&a, "ttl0");
    assert!(items.contains(&format!("configmaps:{nsn}/c")), "{items:?}");

    // An item being deleted (held by a finalizer) is not backed up.
    let held = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: {nsn}\n  finalizers: [arca.dev/test-hold]\ndata: {{v: x}}\n---\n"
    );
    apply(&a, &held).await;
    let cms =
        Api::<arca_k8s::k8s_openapi::api::core::v1::ConfigMap>::namespaced(a.client.clone(), &nsn);
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    arca.ok(
        &a,
        &["backup", "create", "deleting", "--include-namespaces", &nsn],
    );
    let items = arca.items(&a, "deleting");
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(items.contains(&format!("configmaps:{nsn}/c")), "{items:?}");
    assert!(
        !items.contains(&format!("configmaps:{nsn}/held")),
        "being deleted: {items:?}"
    );

    let long = format!("long-{sfx}-")
        .chars()
        .chain(std::iter::repeat('x'))
        .take(50)
        .collect::<String>();
    arca.ok(
        &a,
        &["backup", "create", &long, "--include-namespaces", &nsn],
    );
    let target = format!("{nsn}-long");
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "--from-backup",
            &long,
            "--namespace-mappings",
            &format!("{nsn}:{target}"),
        ],
    );
    let c = configmap(&a, &target, "c").await.expect("restored");
    let restore_label = c["metadata"]["labels"]["arca.dev/restore-name"]
        .as_str()
        .unwrap();
    assert_eq!(restore_label.len(), 63, "{restore_label}");
    assert_eq!(
        c["metadata"]["labels"]["arca.dev/backup-name"],
        long.as_str()
    );
}

/// `--status-include-resources` (resolved through discovery) writes the backed-up status
/// through the `/status` subresource after create; the per-object annotation overrides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_restored_through_the_subresource() {
    let Some((a, b)) = clusters().await else {
        return;
    };
    let arca = Arca::new("status");
    let sfx = arca.suffix().to_string();
    arca.install(&a);
    let nsn = format!("st-{sfx}");
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.statustest.arca.dev}
spec:
  group: statustest.arca.dev
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
"#;
    apply(&a, crd).await;
    wait_crd(&a, "gadgets.statustest.arca.dev").await;
    let gadget = |name: &str, annotation: &str| {
        format!(
            "apiVersion: statustest.arca.dev/v1\nkind: Gadget\nmetadata:\n  name: {name}\n  namespace: {nsn}\n{annotation}spec: {{size: 1}}\n---\n"
        )
    };
    let y = ns(&nsn)
        + &gadget("plain", "")
        + &gadget(
            "always",
            "  annotations: {arca.dev/restore-status: \"true\"}\n",
        )
        + &gadget(
            "never",
            "  annotations: {velero.io/restore-status: \"false\"}\n",
        );
    apply(&a, &y).await;
    let ar = resource("statustest.arca.dev/v1", "Gadget", "gadgets");
    let api: Api<DynamicObject> = Api::namespaced_with(a.client.clone(), &nsn, &ar);
    for n in ["plain", "always", "never"] {
        api.patch_status(
            n,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"state": "ready"}})),
        )
        .await
        .unwrap();
    }
    arca.ok(
        &a,
        &["backup", "create", "st", "--include-namespaces", &nsn],
    );

    arca.install(&b);
    let state = |ns: String, name: &'static str| {
        let c = &b;
        async move {
            get(
                c,
                ("statustest.arca.dev/v1", "Gadget", "gadgets"),
                Some(&ns),
                name,
            )
            .await
            .unwrap_or_else(|| panic!("gadget {ns}/{name} restored"))["status"]["state"]
                .clone()
        }
    };
    let with = format!("{nsn}-with");
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "st-with",
            "--from-backup",
            "st",
            "--status-include-resources",
            "gadget",
            "--namespace-mappings",
            &format!("{nsn}:{with}"),
        ],
    );
    assert_eq!(
        state(with.clone(), "plain").await,
        "ready",
        "the singular name resolves"
    );
    assert_eq!(state(with.clone(), "always").await, "ready");
    assert_eq!(
        state(with.clone(), "never").await,
        Value::Null,
        "the annotation says no"
    );
    let without = format!("{nsn}-without");
    arca.ok(
        &b,
        &[
            "restore",
            "create",
            "st-without",
            "--from-backup",
            "st",
            "--namespace-mappings",
            &format!("{nsn}:{without}"),
        ],
    );
    assert_eq!(state(without.clone(), "plain").await, Value::Null);
    assert_eq!(
        state(without.clone(), "always").await,
        "ready",
        "the annotation says yes"
    );
}

/// The test clusters' real node: a pod from the locally built tools image runs on it,
/// writes into a local volume that the host sees, its log comes back through the API
/// server and the kubelet, and the CA and token its service account receives verify and
/// authenticate against the API server at 127.0.0.1 (checked from the host, as a
/// host-network pod told KUBERNETES_SERVICE_HOST=127.0.0.1 would connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runs_pods_with_volumes_logs_and_in_cluster_credentials() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("node");
    let sfx = arca.suffix().to_string();
    let nsn = format!("node-{sfx}");
    let host = tempfile::tempdir().unwrap();
    let y = ns(&nsn)
        + &format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: default, namespace: {nsn}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: node-{sfx}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: node-local
  local: {{path: {path}}}
  claimRef: {{namespace: {nsn}, name: data}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [localhost]}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {nsn}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: node-local
  volumeName: node-{sfx}
  resources: {{requests: {{storage: 1Gi}}}}
"#,
            path = host.path().display()
        );
    apply(&a, &y).await;
    wait_bound(&a, &nsn, "data").await;
    // This pod mounts its service account's token: wait for the token controller (slow on
    // a fresh cluster under the parallel tests) rather than retrying the create.
    let sa: Api<arca_k8s::k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(a.client.clone(), &nsn);
    let mut token_secret = None;
    for _ in 0..1200 {
        token_secret = sa
            .get("default")
            .await
            .unwrap()
            .secrets
            .and_then(|s| s.first().and_then(|r| r.name.clone()));
        if token_secret.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let token_secret = token_secret.expect("the service account's token within 120 s");
    apply(
        &a,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: writer, namespace: {nsn}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/tools:1
    imagePullPolicy: Never
    command: [sh, -c, 'echo written-by-pod > /data/out && head -1 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo done']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}
"#
        ),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &nsn);
    let mut phase = String::new();
    for _ in 0..1200 {
        let p = pods.get("writer").await.unwrap();
        phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(phase, "Succeeded", "the pod ran to its end");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "written-by-pod\n",
        "the pod's write reached the volume on the host"
    );
    let log = pods.logs("writer", &Default::default()).await.unwrap();
    assert!(
        log.contains("BEGIN CERTIFICATE") && log.contains("done"),
        "logs through the kubelet: {log}"
    );

    // The service account's credentials, as a pod receives them, verify the API server.
    let secrets: Api<arca_k8s::k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(a.client.clone(), &nsn);
    let data = secrets.get(&token_secret).await.unwrap().data.unwrap();
    let (ca, token) = (&data["ca.crt"].0, &data["token"].0);
    let mut cfg = arca_k8s::kube::Config::new(a.client.default_namespace().parse().unwrap());
    cfg.cluster_url = arca_k8s::kube::config::Kubeconfig::read_from(&a.kubeconfig)
        .unwrap()
        .clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    cfg.root_cert = Some(vec![
        pem_der(ca).expect("the service account's ca.crt is a PEM certificate"),
    ]);
    cfg.auth_info.token = Some(String::from_utf8(token.clone()).unwrap().into());
    let in_cluster = Client::try_from(cfg).unwrap();
    let v = in_cluster.apiserver_version().await.unwrap();
    assert_eq!(v.git_version, "v1.20.2");
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
}

/// The DER bytes of the first certificate in a PEM text (openssl, as the scripts use it).
fn pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut c = Command::new("openssl")
        .args(["x509", "-outform", "DER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    c.stdin.take()?.write_all(pem).ok()?;
    let out = c.wait_with_output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// The node agent's pattern on the real node: a DaemonSet pod with the kubelet's pods
/// directory from the host (HostToContainer propagation) reads another pod's volume there;
/// a Block-mode claim reaches its pod as a device whose writes land on the loop device;
/// `pods/exec` runs a command in the app's container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_sees_pod_volumes_and_a_block_claim_is_a_device() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    if !support::is_root() {
        eprintln!("loop devices need root: skipped");
        return;
    }
    let arca = Arca::new("agent");
    let sfx = arca.suffix().to_string();
    let nsn = format!("agent-{sfx}");
    let host = tempfile::tempdir().unwrap();
    let pods_dir = a.kubeconfig.parent().unwrap().join("node/kubelet/pods");
    assert!(pods_dir.is_dir(), "the node's pods directory");
    // A loop device over a file: the block volume.
    let img = host.path().join("block.img");
    std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Detached however the test ends (lazily, if the kubelet still holds it).
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let fs_dir = host.path().join("fs");
    std::fs::create_dir(&fs_dir).unwrap();
    let pv = |name: &str, mode: &str, path: &str| {
        format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}-{sfx}}}
spec:
  capacity: {{storage: 8Mi}}
  accessModes: [ReadWriteOnce]
  volumeMode: {mode}
  storageClassName: node-local
  local: {{path: {path}}}
  claimRef: {{namespace: {nsn}, name: {name}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [localhost]}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: {nsn}}}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: {mode}
  storageClassName: node-local
  volumeName: {name}-{sfx}
  resources: {{requests: {{storage: 8Mi}}}}
---
"#
        )
    };
    let y = ns(&nsn)
        + &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {nsn}}}\n---\n"
        )
        + &pv("files", "Filesystem", &fs_dir.display().to_string())
        + &pv("disk", "Block", &dev);
    apply(&a, &y).await;
    wait_bound(&a, &nsn, "files").await;
    wait_bound(&a, &nsn, "disk").await;
    apply(
        &a,
        &format!(
            r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {nsn}}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      automountServiceAccountToken: false
      containers:
      - name: c
        image: localhost/tools:1
        imagePullPolicy: Never
        command: [sh, -c, 'until cat /host_pods/*/volumes/kubernetes.io~local-volume/files-{sfx}/out 2>/dev/null; do sleep 0.2; done; exec sleep 3600']
        volumeMounts: [{{name: pods, mountPath: /host_pods, mountPropagation: HostToContainer}}]
      volumes:
      - {{name: pods, hostPath: {{path: {pods}}}}}
"#,
            pods = pods_dir.display()
        ),
    )
    .await;
    // The agent runs first: the app's volume is mounted after it started, which is what
    // HostToContainer propagation is for.
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &nsn);
    let mut running = false;
    for _ in 0..600 {
        let agent = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .unwrap();
        running = agent
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(running, "the DaemonSet's pod runs on the node");
    apply(
        &a,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: app, namespace: {nsn}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: c
    image: localhost/tools:1
    imagePullPolicy: Never
    command: [sh, -c, 'echo app-data-{sfx} > /data/out && echo block-payload-{sfx} | dd of=/dev/xvda conv=fsync 2>/dev/null && echo written && exec sleep 3600']
    volumeMounts: [{{name: files, mountPath: /data}}]
    volumeDevices: [{{name: disk, devicePath: /dev/xvda}}]
  volumes:
  - {{name: files, persistentVolumeClaim: {{claimName: files}}}}
  - {{name: disk, persistentVolumeClaim: {{claimName: disk}}}}"#
        ),
    )
    .await;
    let logs_of = |name: String| {
        let pods = pods.clone();
        async move {
            pods.logs(&name, &Default::default())
                .await
                .unwrap_or_default()
        }
    };
    let mut agent_log = String::new();
    let mut app_log = String::new();
    for _ in 0..600 {
        let agent = pods
            .list(&ListParams::default().labels("app=agent"))
            .await
            .unwrap();
        if let Some(p) = agent.items.first() {
            agent_log = logs_of(p.name_any()).await;
        }
        app_log = logs_of("app".into()).await;
        if agent_log.contains("app-data") && app_log.contains("written") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app_log.trim(), "written", "the app wrote both volumes");
    assert_eq!(
        agent_log.trim(),
        format!("app-data-{sfx}"),
        "the DaemonSet pod read the app's volume through the host's pods directory"
    );
    let head = {
        let mut f = std::fs::File::open(&img).unwrap();
        let mut b = vec![0u8; 64];
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        b
    };
    let want = format!("block-payload-{sfx}\n");
    assert_eq!(
        &head[..want.len()],
        want.as_bytes(),
        "the pod's device writes reached the loop device"
    );
    // pods/exec through the API server, the kubelet and containerd's stream server (what
    // hooks will use): the app's file and its device, read inside its container.
    let ap = arca_k8s::kube::api::AttachParams::default()
        .stdout(true)
        .stderr(false);
    let mut ex = pods
        .exec(
            "app",
            ["sh", "-c", "cat /data/out; head -c 22 /dev/xvda"],
            &ap,
        )
        .await
        .expect("exec in the app's container");
    let mut got = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut ex.stdout().unwrap(), &mut got)
        .await
        .unwrap();
    ex.join().await.unwrap();
    assert!(
        got.starts_with(&format!("app-data-{sfx}\nblock-payload-")),
        "exec output: {got:?}"
    );
    // Gone before the device is detached: the kubelet holds it while the pod runs.
    let dp = DeleteParams::default();
    pods.delete("app", &dp).await.unwrap();
    let ds: Api<arca_k8s::k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(a.client.clone(), &nsn);
    ds.delete("agent", &dp).await.unwrap();
    for _ in 0..300 {
        if pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Wait for a pod's log to contain `want`; the log.
async fn pod_log_with(
    pods: &Api<arca_k8s::k8s_openapi::api::core::v1::Pod>,
    pod: &str,
    want: &str,
) -> String {
    let mut log = String::new();
    for _ in 0..1200 {
        log = pods
            .logs(pod, &Default::default())
            .await
            .unwrap_or_default();
        if log.contains(want) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("pod {pod} never logged {want:?}: {log:?}")
}

/// The storage stand-in (test support, cli/tests/support/storage.rs), through the real
/// `snapshot.storage.k8s.io/v1` API: claims of both modes provisioned on the node's
/// btrfs, written by a pod; VolumeSnapshots of them ready with bound contents; claims
/// restored from the snapshots hold the data as it was at the snapshot, not as it was
/// changed after; deleting the claims and snapshots frees their storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_storage_snapshots_and_restores_claims_of_both_modes() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some((a, root)) = storage_cluster().await else {
        return;
    };
    let arca = Arca::new("standin");
    let sfx = arca.suffix().to_string();
    let nsn = format!("standin-{sfx}");
    let class = storage::CLASS;
    let claim = |name: &str, mode: &str, size: &str, from: Option<&str>| {
        let from = from
            .map(|s| format!("  dataSource: {{apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: {s}}}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {nsn}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: {mode}\n  storageClassName: {class}\n  resources: {{requests: {{storage: {size}}}}}\n{from}---\n"
        )
    };
    let pod = |name: &str, files: &str, disk: &str, script: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {nsn}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: c
    image: localhost/tools:1
    imagePullPolicy: Never
    command: [sh, -c, '{script}']
    volumeMounts: [{{name: files, mountPath: /data}}]
    volumeDevices: [{{name: disk, devicePath: /dev/xvda}}]
  volumes:
  - {{name: files, persistentVolumeClaim: {{claimName: {files}}}}}
  - {{name: disk, persistentVolumeClaim: {{claimName: {disk}}}}}
"#
        )
    };
    let y = ns(&nsn)
        + &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {nsn}}}\n---\n"
        )
        + &claim("files", "Filesystem", "64Mi", None)
        + &claim("disk", "Block", "16Mi", None)
        + &pod(
            "writer",
            "files",
            "disk",
            &format!(
                "echo before-{sfx} > /data/out && echo block-before-{sfx} | dd of=/dev/xvda conv=fsync 2>/dev/null && echo written && exec sleep 3600"
            ),
        );
    apply(&a, &y).await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &nsn);
    pod_log_with(&pods, "writer", "written").await;
    let pvc = |name: &'static str| {
        get(
            &a,
            ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            Some(&nsn),
            name,
        )
    };
    let files_pv = pvc("files").await.unwrap()["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_string();
    let disk_pv = pvc("disk").await.unwrap()["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_string();
    let pv = get(
        &a,
        ("v1", "PersistentVolume", "persistentvolumes"),
        None,
        &disk_pv,
    )
    .await
    .unwrap();
    assert_eq!(pv["spec"]["volumeMode"], "Block");
    let dev = pv["spec"]["local"]["path"].as_str().unwrap().to_string();
    assert!(
        dev.starts_with("/dev/loop"),
        "a Block claim is a loop device: {dev}"
    );
    assert!(
        root.join("volumes").join(&files_pv).is_dir(),
        "a Filesystem claim is a subvolume"
    );

    // Snapshots through the real API, as Arca will take them.
    let snap = |name: &str, claim: &str| {
        format!(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {{name: {name}, namespace: {nsn}}}\nspec:\n  volumeSnapshotClassName: {class}\n  source: {{persistentVolumeClaimName: {claim}}}\n---\n"
        )
    };
    apply(
        &a,
        &(snap("files-snap", "files") + &snap("disk-snap", "disk")),
    )
    .await;
    let vs = |name: &'static str| {
        get(
            &a,
            (
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshot",
                "volumesnapshots",
            ),
            Some(&nsn),
            name,
        )
    };
    let mut contents = Vec::new();
    for name in ["files-snap", "disk-snap"] {
        let mut v = Value::Null;
        for _ in 0..300 {
            v = vs(name).await.unwrap();
            if v["status"]["readyToUse"] == true {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(v["status"]["readyToUse"], true, "{name} ready: {v}");
        let content_name = v["status"]["boundVolumeSnapshotContentName"]
            .as_str()
            .unwrap()
            .to_string();
        let c = get(
            &a,
            (
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshotContent",
                "volumesnapshotcontents",
            ),
            None,
            &content_name,
        )
        .await
        .unwrap();
        assert_eq!(c["spec"]["driver"], storage::DRIVER);
        assert_eq!(c["spec"]["volumeSnapshotRef"]["name"], name);
        assert_eq!(c["spec"]["volumeSnapshotRef"]["uid"], v["metadata"]["uid"]);
        assert_eq!(c["status"]["readyToUse"], true);
        assert!(
            c["status"]["snapshotHandle"].is_string()
                && c["status"]["restoreSize"].as_u64() > Some(0)
        );
        contents.push(content_name);
    }

    // Changed after the snapshot: the restored claims must not see it.
    let ap = arca_k8s::kube::api::AttachParams::default()
        .stdout(true)
        .stderr(false);
    let mut ex = pods
        .exec(
            "writer",
            ["sh", "-c", "echo after > /data/out && echo block-after | dd of=/dev/xvda conv=fsync 2>/dev/null && echo changed"],
            &ap,
        )
        .await
        .unwrap();
    let mut got = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut ex.stdout().unwrap(), &mut got)
        .await
        .unwrap();
    ex.join().await.unwrap();
    assert_eq!(got.trim(), "changed");

    let y = claim("files-restored", "Filesystem", "64Mi", Some("files-snap"))
        + &claim("disk-restored", "Block", "16Mi", Some("disk-snap"))
        + &pod(
            "reader",
            "files-restored",
            "disk-restored",
            "cat /data/out && head -c 30 /dev/xvda | head -1 && echo read && exec sleep 3600",
        );
    apply(&a, &y).await;
    let log = pod_log_with(&pods, "reader", "read").await;
    assert_eq!(
        log,
        format!("before-{sfx}\nblock-before-{sfx}\nread\n"),
        "the restored claims hold the data as it was at the snapshot"
    );
    let mut volumes = vec![files_pv.clone(), disk_pv.clone()];
    for c in ["files-restored", "disk-restored"] {
        volumes.push(
            pvc(c).await.unwrap()["spec"]["volumeName"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // Everything deleted: the stand-in frees the volumes and the snapshots' copies.
    let dp = DeleteParams::default();
    for p in ["writer", "reader"] {
        pods.delete(p, &dp).await.unwrap();
    }
    for name in ["files-snap", "disk-snap"] {
        delete_namespaced(
            &a,
            (
                "snapshot.storage.k8s.io/v1",
                "VolumeSnapshot",
                "volumesnapshots",
            ),
            &nsn,
            name,
        )
        .await;
    }
    let claims: Api<arca_k8s::k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(a.client.clone(), &nsn);
    for c in ["files", "disk", "files-restored", "disk-restored"] {
        claims.delete(c, &dp).await.unwrap();
    }
    let mut left = Vec::new();
    for _ in 0..600 {
        left.clear();
        for c in &contents {
            if get(
                &a,
                (
                    "snapshot.storage.k8s.io/v1",
                    "VolumeSnapshotContent",
                    "volumesnapshotcontents",
                ),
                None,
                c,
            )
            .await
            .is_some()
            {
                left.push(c.clone());
            }
        }
        for p in &volumes {
            if get(&a, ("v1", "PersistentVolume", "persistentvolumes"), None, p)
                .await
                .is_some()
            {
                left.push(p.to_string());
            }
        }
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "objects not removed: {left:?}");
    for v in &volumes {
        assert!(
            !root.join("volumes").join(v).exists()
                && !root.join("volumes").join(format!("{v}.img")).exists(),
            "the volume {v} freed"
        );
    }
    for c in &contents {
        assert!(
            !root.join("snapshots").join(c).exists()
                && !root.join("snapshots").join(format!("{c}.img")).exists(),
            "the snapshot {c} freed"
        );
    }
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    for v in &volumes {
        assert!(
            !loops.contains(&format!("{v}.img")),
            "the loop device of {v} detached: {loops}"
        );
    }
}

/// An `arca server` process for one test's namespace, its stderr collected; killed with
/// SIGKILL when dropped.
struct Server {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Arca {
    /// Start `arca server` for this test's namespace with leases of `lease` (short ones
    /// make takeovers quick; a loaded machine may miss their renewals), with extra
    /// environment.
    fn server_with(&self, c: &Cluster, lease: &str, env: &[(&str, &str)]) -> Server {
        self.server_args(c, lease, env, &[])
    }

    /// The same with more flags.
    fn server_args(&self, c: &Cluster, lease: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut cmd = self.cmd(c);
        cmd.args([
            "server",
            "--metrics-address",
            "127.0.0.1:0",
            "--leader-elect-lease-duration",
            lease,
        ])
        .args(args)
        .env("ARCA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd)
    }
}

impl Server {
    /// Start a process with its stderr gathered as its log.
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, l) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Server { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process's peak resident memory so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> u64 {
        self.status_mib("VmHWM:")
    }

    /// The process's resident memory now (VmRSS), in MiB.
    fn rss_mib(&self) -> u64 {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024
    }

    /// Wait until the log contains `want` (the server says what it does); the log.
    async fn wait_log(&self, want: &str) -> String {
        for _ in 0..600 {
            let l = self.log();
            if l.contains(want) {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the server never logged {want:?}:\n{}", self.log())
    }

    /// Where it serves /metrics.
    async fn metrics_url(&self) -> String {
        let l = self.wait_log("serving /metrics").await;
        let addr = l
            .lines()
            .find_map(|x| x.split("/readyz on ").nth(1))
            .unwrap()
            // The address alone, whatever follows it (a JSON log line goes on).
            .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
            .next()
            .unwrap()
            .to_string();
        format!("http://{addr}")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP GET (the server's probes and metrics), through curl.
fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn backup_phase(c: &Cluster, ns: &str, name: &str) -> String {
    get(c, ("arca.dev/v1", "Backup", "backups"), Some(ns), name)
        .await
        .and_then(|b| b["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn wait_backup_phase(c: &Cluster, ns: &str, name: &str, want: &[&str]) -> String {
    let mut phase = String::new();
    for _ in 0..1200 {
        phase = backup_phase(c, ns, name).await;
        if want.contains(&phase.as_str()) {
            return phase;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("backup {ns}/{name} stayed {phase:?}, not {want:?}")
}

/// The operator: a Backup created with the API (as `kubectl apply` would) is run by
/// `arca server`; of two replicas only the Lease's holder works; the leader killed with
/// SIGKILL in the middle of a backup, the other takes over and runs it to completion (not
/// Failed, unlike Velero, issue 4503); /metrics counts a success, a validation failure
/// and a failure (a location broken since it was validated); /healthz and /readyz answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_backups_and_its_standby_takes_over_after_kill_9() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca {
        auto_server: false,
        ..Arca::new("server")
    };
    arca.install(&a);
    let sfx = arca.suffix().to_string();
    let app = format!("srv-app-{sfx}");
    apply(
        &a,
        &(ns(&app) + &cm(&app, "one", &[], "1") + &cm(&app, "two", &[], "2")),
    )
    .await;
    let backup = |name: &str, location: Option<&str>| {
        let loc = location
            .map(|l| format!("  storageLocation: {l}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  includedNamespaces: [{app}]\n{loc}",
            ns = arca.ns
        )
    };

    // The first replica is paused for good right after its backup's resources are
    // collected (a test pause point), as if it hung there; the second stands by.
    let mut first = arca.server_with(&a, "3s", &[("ARCA_TEST_PAUSE_AT", "backup-collected")]);
    first.wait_log("leading").await;
    let second = arca.server_with(&a, "3s", &[]);
    second.wait_log("waiting to lead").await;
    let url = second.metrics_url().await;
    assert_eq!(http_get(&format!("{url}/healthz")).0, 200);
    let (code, body) = http_get(&format!("{url}/readyz"));
    assert_eq!((code, body.trim()), (200, "ok (standing by)"));

    apply(&a, &backup("by-api", None)).await;
    first.wait_log("paused at backup-collected").await;
    assert_eq!(backup_phase(&a, &arca.ns, "by-api").await, "InProgress");
    // A backup still running is not deleted (its record would come back after).
    let out = arca.run(&a, &["backup", "delete", "by-api", "--confirm"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("still InProgress"),
        "delete of a running backup: {:?} {err}",
        out.status.code()
    );
    assert!(
        !second.log().contains("by-api"),
        "the standby did nothing while the leader held the lease:\n{}",
        second.log()
    );
    first.kill();
    second.wait_log("leading").await;
    second
        .wait_log(&format!(
            "backup {}/by-api was InProgress when its server stopped",
            arca.ns
        ))
        .await;
    assert_eq!(
        wait_backup_phase(
            &a,
            &arca.ns,
            "by-api",
            &["Completed", "Failed", "PartiallyFailed"]
        )
        .await,
        "Completed"
    );
    let items = arca.items(&a, "by-api");
    for want in [
        format!("configmaps:{app}/one"),
        format!("configmaps:{app}/two"),
        format!("namespaces:/{app}"),
    ] {
        assert!(items.contains(&want), "{want} in {items:?}");
    }
    let (code, body) = http_get(&format!("{url}/readyz"));
    assert_eq!((code, body.trim()), (200, "ok (leading)"));

    // A backup to a location that does not exist fails validation; both are counted.
    apply(&a, &backup("nowhere", Some("no-such-location"))).await;
    assert_eq!(
        wait_backup_phase(&a, &arca.ns, "nowhere", &["FailedValidation", "Completed"]).await,
        "FailedValidation"
    );
    // A backup whose location broke after its last validation (hourly here) runs and
    // fails: Failed, counted as a failure, an event saying so.
    let brittle = arca.dir.path().join("brittle");
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: BackupStorageLocation\nmetadata: {{name: brittle, namespace: {}}}\nspec:\n  provider: local\n  objectStorage: {{bucket: \"{}\"}}\n  validationFrequency: 1h\n",
            arca.ns,
            brittle.display()
        ),
    )
    .await;
    until(&a, BSL, &arca.ns, "brittle", "Available", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Available")
    })
    .await;
    std::fs::remove_dir_all(&brittle).unwrap();
    std::fs::write(&brittle, b"not a bucket").unwrap();
    apply(&a, &backup("broken", Some("brittle"))).await;
    assert_eq!(
        wait_backup_phase(
            &a,
            &arca.ns,
            "broken",
            &["Failed", "FailedValidation", "Completed", "PartiallyFailed"]
        )
        .await,
        "Failed"
    );
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(&format!("{url}/metrics")).1;
        if metrics.contains("arca_backup_validation_failure_total{schedule=\"\"} 1")
            && metrics.contains("arca_backup_failure_total{schedule=\"\"} 1")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for line in [
        "arca_backup_attempt_total{schedule=\"\"} 2",
        "arca_backup_success_total{schedule=\"\"} 1",
        "arca_backup_failure_total{schedule=\"\"} 1",
        "arca_backup_validation_failure_total{schedule=\"\"} 1",
        "arca_backup_last_status{schedule=\"\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    // Events on the Backup say what happened.
    let reasons = event_reasons(&a, &arca.ns, "by-api").await;
    assert!(
        reasons.contains("BackupStarted") && reasons.contains("BackupCompleted"),
        "events of by-api: {reasons:?}"
    );
    let reasons = event_reasons(&a, &arca.ns, "broken").await;
    assert!(
        reasons.contains("BackupFailed"),
        "events of broken: {reasons:?}"
    );
}

/// The reasons of the Events in `ns` about the object named `name`.
async fn event_reasons(c: &Cluster, ns: &str, name: &str) -> BTreeSet<String> {
    let events: Api<arca_k8s::k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Two runs of one Backup (a leader that stalled past its Lease and the replica that took
/// over, or a Backup made again under the same name while a run went on): only the
/// newest claim writes; the other's writes fail and change nothing, while a user's change
/// between two writes (a label) does not end a run's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_was_taken_over_writes_nothing() {
    use arca_k8s::claim::RunClaim;
    use arca_k8s::crd::Backup;
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca {
        auto_server: false,
        ..Arca::new("claim")
    };
    arca.install(&a);
    let api: Api<Backup> = Api::namespaced(a.client.clone(), &arca.ns);
    let yaml = format!(
        "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: twice, namespace: {}}}\nspec: {{}}\n",
        arca.ns
    );
    apply(&a, &yaml).await;
    let phase = |b: &Backup| b.status.as_ref().and_then(|s| s.phase.clone());
    let take = || async {
        let read = api.get("twice").await.unwrap();
        RunClaim::take(api.clone(), read, "backup twice", |_: &Backup| true).await
    };

    let old = take().await.unwrap();
    old.status(&json!({ "phase": "InProgress" })).await.unwrap();
    let label = json!({ "metadata": { "labels": { "team": "a" } } });
    api.patch("twice", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    old.status(&json!({ "progress": { "itemsBackedUp": 1 } }))
        .await
        .unwrap();

    // The replica that took over claims it and ends it.
    let new = take().await.unwrap();
    assert_ne!(new.token(), old.token());
    new.status(&json!({ "phase": "Completed" })).await.unwrap();
    let ended = api.get("twice").await.unwrap();
    let err = old
        .status(&json!({ "phase": "Failed", "failureReason": "stale" }))
        .await
        .unwrap_err();
    assert!(
        matches!(err, arca_k8s::Error::Superseded(_)) && err.to_string().contains("took it over"),
        "{err}"
    );
    let err = old
        .patch(&json!({ "spec": { "ttl": "1h0m0s" } }))
        .await
        .unwrap_err();
    assert!(matches!(err, arca_k8s::Error::Superseded(_)), "{err}");
    let now = api.get("twice").await.unwrap();
    assert_eq!(
        now.metadata.resource_version, ended.metadata.resource_version,
        "the superseded run changed nothing"
    );
    assert_eq!(phase(&now).as_deref(), Some("Completed"));

    // Deleted and made again under the same name: the new one is no run's.
    api.delete("twice", &DeleteParams::default()).await.unwrap();
    for _ in 0..100 {
        if api.get_opt("twice").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    apply(&a, &yaml).await;
    let err = new.status(&json!({ "phase": "Failed" })).await.unwrap_err();
    assert!(err.to_string().contains("made again"), "{err}");
    assert_eq!(phase(&api.get("twice").await.unwrap()), None);
}

/// A test of the server: its own install (no server started for it) and a namespace
/// `<what>-app-<suffix>` holding one ConfigMap; None without a cluster.
async fn server_test(what: &str) -> Option<(Cluster, Arca, String)> {
    let a = cluster("ARCA_TEST_KUBECONFIG").await?;
    let arca = Arca {
        auto_server: false,
        ..Arca::new(what)
    };
    arca.install(&a);
    let app = format!("{what}-app-{}", arca.suffix());
    apply(&a, &(ns(&app) + &cm(&app, "one", &[], "1"))).await;
    Some((a, arca, app))
}

/// A Backup of namespace `app`, as `kubectl apply` would create it.
fn backup_yaml(ns: &str, name: &str, app: &str) -> String {
    format!(
        "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  includedNamespaces: [{app}]\n"
    )
}

impl Arca {
    /// A file whose creation lets go a process held at pause point `point` (not there
    /// yet); `point` only names it. In this test's own directory, removed with it.
    fn go_on(&self, point: &str) -> PathBuf {
        let go_on = self.dir.path().join(format!("go-on-{point}"));
        let _ = std::fs::remove_file(&go_on);
        go_on
    }

    /// `arca server` (with `args`) held at the pause point `point` until the returned file
    /// exists (a stalled process that wakes up).
    fn server_held(
        &self,
        c: &Cluster,
        lease: &str,
        point: &str,
        args: &[&str],
    ) -> (Server, PathBuf) {
        let go_on = self.go_on(point);
        let s = self.server_args(
            c,
            lease,
            &[
                ("ARCA_TEST_PAUSE_AT", point),
                ("ARCA_TEST_RESUME_WHEN", go_on.to_str().unwrap()),
            ],
            args,
        );
        (s, go_on)
    }
}

/// A leader that stalls past its Lease in the middle of a backup (SIGSTOP: a paused VM, a
/// long pause of the process) while its standby takes over and completes the backup:
/// woken up, it finds the Lease taken and exits, and nothing it would still have written
/// lands (Velero's replicas write status unconditionally: the later writer wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stalls_past_its_lease_stops_and_writes_nothing() {
    let Some((a, arca, app)) = server_test("stall").await else {
        return;
    };
    let backup = |name: &str| backup_yaml(&arca.ns, name, &app);
    let (mut first, go_on) = arca.server_held(&a, "3s", "backup-collected", &[]);
    first.wait_log("leading").await;
    let second = arca.server_with(&a, "3s", &[]);
    second.wait_log("waiting to lead").await;
    apply(&a, &backup("stalled")).await;
    first.wait_log("paused at backup-collected").await;

    let pid = first.child.id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    second.wait_log("leading").await;
    assert_eq!(
        wait_backup_phase(
            &a,
            &arca.ns,
            "stalled",
            &["Completed", "Failed", "PartiallyFailed"]
        )
        .await,
        "Completed"
    );
    let ended = get(
        &a,
        ("arca.dev/v1", "Backup", "backups"),
        Some(&arca.ns),
        "stalled",
    )
    .await
    .unwrap();

    // It wakes up where it stopped, its run about to write the backup's progress.
    std::fs::write(&go_on, b"").unwrap();
    signal("-CONT");
    let mut exit = None;
    for _ in 0..300 {
        exit = first.child.try_wait().unwrap();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&go_on);
    let exit = exit.unwrap_or_else(|| panic!("the stalled leader went on:\n{}", first.log()));
    assert!(!exit.success(), "{exit:?}");
    assert!(first.log().contains("leadership lost"), "{}", first.log());
    let now = get(
        &a,
        ("arca.dev/v1", "Backup", "backups"),
        Some(&arca.ns),
        "stalled",
    )
    .await
    .unwrap();
    assert_eq!(
        (&now["metadata"]["resourceVersion"], &now["status"]),
        (&ended["metadata"]["resourceVersion"], &ended["status"]),
        "the stalled leader wrote after it lost the lease:\n{}",
        first.log()
    );
    // The new leader goes on working.
    apply(&a, &backup("after")).await;
    assert_eq!(
        wait_backup_phase(
            &a,
            &arca.ns,
            "after",
            &["Completed", "Failed", "PartiallyFailed"]
        )
        .await,
        "Completed"
    );
}

/// `--concurrent-backups 2` and Velero's namespace rule: of three Backups created at
/// once, the first (namespace A) and the third (namespace B) run at once, both held in
/// their runs; the second, of A again, waits Queued with a slot free (two backups of one
/// namespace never run at once); all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backups_run_at_once_but_never_two_of_one_namespace() {
    let Some((a, arca, app)) = server_test("conc2").await else {
        return;
    };
    let other = format!("{app}-b");
    apply(&a, &(ns(&other) + &cm(&other, "one", &[], "1"))).await;
    let (server, go_on) = arca.server_held(
        &a,
        "15s",
        "backup-collected",
        &["--concurrent-backups", "2"],
    );
    server.wait_log("leading").await;
    for (n, ns) in [("c1", &app), ("c2", &app), ("c3", &other)] {
        apply(&a, &backup_yaml(&arca.ns, n, ns)).await;
    }
    let want = ["InProgress", "Queued", "InProgress"].map(String::from);
    let mut phases = Vec::new();
    for _ in 0..600 {
        phases =
            futures::future::join_all(["c1", "c2", "c3"].map(|n| backup_phase(&a, &arca.ns, n)))
                .await;
        if phases == want && server.log().matches("paused at backup-collected").count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        (
            phases.as_slice(),
            server.log().matches("paused at backup-collected").count()
        ),
        (&want[..], 2),
        "{}",
        server.log()
    );
    std::fs::write(&go_on, b"").unwrap();
    for n in ["c1", "c2", "c3"] {
        assert_eq!(
            wait_backup_phase(&a, &arca.ns, n, &["Completed", "Failed", "PartiallyFailed"]).await,
            "Completed"
        );
    }
    let _ = std::fs::remove_file(&go_on);
}

/// A Backup changed between the deletion's judgement and its Deleting mark (a label
/// written meanwhile) is judged again from a fresh read, not refused: the deletion ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_changed_while_its_deletion_begins_is_judged_again() {
    let Some((a, arca, app)) = server_test("deljudge").await else {
        return;
    };
    let (server, go_on) = arca.server_held(&a, "15s", "deletion-judged", &[]);
    server.wait_log("leading").await;
    apply(&a, &backup_yaml(&arca.ns, "judged", &app)).await;
    assert_eq!(
        wait_backup_phase(
            &a,
            &arca.ns,
            "judged",
            &["Completed", "Failed", "PartiallyFailed"]
        )
        .await,
        "Completed"
    );
    arca_k8s::manage::request_deletion(&a.client, &arca.ns, "judged")
        .await
        .unwrap();
    server.wait_log("paused at deletion-judged").await;
    let backups: Api<arca_k8s::crd::Backup> = Api::namespaced(a.client.clone(), &arca.ns);
    let label = json!({ "metadata": { "labels": { "team": "b" } } });
    backups
        .patch("judged", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    std::fs::write(&go_on, b"").unwrap();
    let mut gone = false;
    for _ in 0..600 {
        if backups.get_opt("judged").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&go_on);
    assert!(gone, "the backup was not deleted:\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains("backup") && log.contains("deleted") && !log.contains("not deleted"),
        "{log}"
    );
}

/// A location's record of a backup is never shadowed, overwritten or deleted by a Backup
/// of the same name that did not store it (Velero: "backup already exists in object
/// storage"; its deletion would take the other's data too). And a Backup the sync is
/// creating from a record is never run as a new one, even when the sync is killed between
/// its create and its status write (the status subresource drops a create's status): seen
/// in CI as a second cluster's server overwriting a migrated backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_backup_is_never_shadowed_or_deleted_by_a_namesake() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("namesake");
    arca.install(&a);
    let app = format!("namesake-app-{}", arca.suffix());
    apply(&a, &(ns(&app) + &cm(&app, "kept", &[], "1"))).await;
    arca.ok(
        &a,
        &["backup", "create", "orig", "--include-namespaces", &app],
    );
    let want = format!("configmaps:{app}/kept");
    assert!(arca.items(&a, "orig").contains(&want));

    // The resource goes (as if deleted with kubectl); a new Backup of that name, of
    // another namespace, is refused and stores nothing.
    delete_namespaced(&a, ("arca.dev/v1", "Backup", "backups"), &arca.ns, "orig").await;
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: orig, namespace: {}}}\nspec:\n  includedNamespaces: [kube-system]\n",
            arca.ns
        ),
    )
    .await;
    assert_eq!(
        wait_backup_phase(
            &a,
            &arca.ns,
            "orig",
            &["Failed", "Completed", "PartiallyFailed"]
        )
        .await,
        "Failed"
    );
    let b = get(
        &a,
        ("arca.dev/v1", "Backup", "backups"),
        Some(&arca.ns),
        "orig",
    )
    .await
    .unwrap();
    assert_eq!(
        b["status"]["failureReason"], "backup already exists in object storage",
        "{b:#}"
    );
    assert!(
        arca.items(&a, "orig").contains(&want),
        "the record is the original's"
    );
    // Nor is the original restored through it.
    let out = arca.run(
        &a,
        &[
            "restore",
            "create",
            "through-namesake",
            "--from-backup",
            "orig",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let r = arca.json(&a, &["restore", "describe", "through-namesake"]);
    assert!(
        r[0]["restore"]["status"]["validationErrors"][0]
            .as_str()
            .unwrap()
            .contains("stored nothing"),
        "{r:#}"
    );
    let b = get(
        &a,
        ("arca.dev/v1", "Backup", "backups"),
        Some(&arca.ns),
        "orig",
    )
    .await
    .unwrap();
    assert!(
        b["status"]["expiration"].is_string(),
        "a failed backup expires too: {b:#}"
    );

    // Deleting the refused Backup removes it, not the record: the sync brings the
    // original back.
    arca.ok(&a, &["backup", "delete", "orig", "--confirm"]);
    let list = arca.json(&a, &["backup", "get"]);
    assert_eq!(list[0]["metadata"]["name"], "orig", "{list:#}");
    assert_eq!(list[0]["status"]["phase"], "Completed", "{list:#}");
    assert!(arca.items(&a, "orig").contains(&want));

    // A sync killed right after its create: the Backup stands with no status; the
    // server leaves it; the next sync writes its status.
    delete_namespaced(&a, ("arca.dev/v1", "Backup", "backups"), &arca.ns, "orig").await;
    let mut sync = arca.cmd(&a);
    sync.args(["backup", "get"])
        .env("ARCA_TEST_PAUSE_AT", "sync-created")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = sync.spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused at sync-created") {
        line.clear();
        use std::io::BufRead;
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the sync ended unpaused"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let b = get(
        &a,
        ("arca.dev/v1", "Backup", "backups"),
        Some(&arca.ns),
        "orig",
    )
    .await
    .unwrap();
    assert!(b["status"]["phase"].is_null(), "{b:#}");
    let list = arca.json(&a, &["backup", "get"]);
    assert_eq!(list[0]["status"]["phase"], "Completed", "{list:#}");
    assert!(arca.items(&a, "orig").contains(&want));
    let servers = arca.servers.lock().unwrap();
    let log = servers[0].1.log();
    assert_eq!(
        log.matches(&format!("backup {}/orig: starting", arca.ns))
            .count(),
        2,
        "the server ran the original and the refused one, never a synced one:\n{log}"
    );
}

/// A resource as JSON once `done` holds of it (the server writes it), else a failure
/// that shows it as it is.
async fn until(
    c: &Cluster,
    (api_version, kind, plural): (&str, &str, &str),
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Option<Value>) -> bool,
) -> Option<Value> {
    let mut o = None;
    for _ in 0..300 {
        o = get(c, (api_version, kind, plural), Some(ns), name).await;
        if done(&o) {
            return o;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{kind} {ns}/{name}: never {what}: {o:#?}")
}

const BACKUP: (&str, &str, &str) = ("arca.dev/v1", "Backup", "backups");
const RESTORE: (&str, &str, &str) = ("arca.dev/v1", "Restore", "restores");
const BSL: (&str, &str, &str) = (
    "arca.dev/v1",
    "BackupStorageLocation",
    "backupstoragelocations",
);

/// The server's housekeeping: locations validated (Available, or Unavailable with the
/// reason, and no backup goes to one); an expired backup deleted through a
/// DeleteBackupRequest, its record with it; an expired backup in a read-only location
/// kept and labelled; a backup removed from the cluster alone brought back by the
/// periodic sync, except from a location whose own backupSyncPeriod is "0"; of two default locations the newer stays; a request for a backup that
/// does not exist says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletion_location_checks_and_sync_run_in_the_server() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca {
        auto_server: false,
        ..Arca::new("keeper")
    };
    arca.install(&a);
    let server = arca.server_args(
        &a,
        "15s",
        &[],
        &[
            "--garbage-collection-frequency",
            "1s",
            "--backup-sync-period",
            "1s",
            "--store-validation-frequency",
            "1s",
            "--default-repo-maintain-frequency",
            "1s",
            "--log-format",
            "json",
        ],
    );
    server.wait_log("leading").await;
    let ins = arca.ns.clone();
    let app = format!("keeper-app-{}", arca.suffix());
    apply(&a, &(ns(&app) + &cm(&app, "c", &[], "1"))).await;
    let phase_is = |p: &'static str| {
        move |o: &Option<Value>| o.as_ref().is_some_and(|o| o["status"]["phase"] == p)
    };
    let v = until(&a, BSL, &ins, "default", "Available", phase_is("Available"))
        .await
        .unwrap();
    assert!(v["status"]["lastValidationTime"].is_string(), "{v:#}");
    let bsl = |name: &str, bucket: &str, extra: &str| {
        format!(
            "apiVersion: arca.dev/v1\nkind: BackupStorageLocation\nmetadata: {{name: {name}, namespace: {ins}}}\nspec:\n  provider: local\n  objectStorage: {{bucket: \"{bucket}\"}}\n{extra}"
        )
    };
    // A location's own validationFrequency wins over the server's (1 s here): one
    // checked hourly is validated once while the default one is validated again.
    let hourly_dir = arca.dir.path().join("hourly");
    apply(
        &a,
        &bsl(
            "hourly",
            hourly_dir.to_str().unwrap(),
            "  validationFrequency: 1h\n",
        ),
    )
    .await;
    let hourly = until(&a, BSL, &ins, "hourly", "Available", phase_is("Available"))
        .await
        .unwrap();
    let seen = until(&a, BSL, &ins, "default", "validated again", |o| {
        o.as_ref().is_some_and(|o| {
            o["status"]["lastValidationTime"].as_str()
                > hourly["status"]["lastValidationTime"].as_str()
        })
    })
    .await
    .unwrap();
    let now = get(&a, BSL, Some(&ins), "hourly").await.unwrap();
    assert_eq!(
        now["status"]["lastValidationTime"], hourly["status"]["lastValidationTime"],
        "validated once in the hour\n{now:#}\n{seen:#}"
    );
    delete_namespaced(&a, BSL, &ins, "hourly").await;

    // A location whose store cannot be reached: Unavailable, and no backup goes there.
    // Unavailable, its status saying why.
    let unavailable = |name: &'static str| {
        let (a, ins) = (&a, &ins);
        async move {
            let v = until(a, BSL, ins, name, "Unavailable", phase_is("Unavailable"))
                .await
                .unwrap();
            let why = v["status"]["message"].as_str().unwrap_or_default();
            assert!(why.contains(&format!("\"{name}\" is unavailable")), "{v:#}");
        }
    };
    apply(&a, &bsl("broken", "/proc/arca-cannot-be-here", "")).await;
    unavailable("broken").await;
    let out = arca.run(
        &a,
        &[
            "backup",
            "create",
            "nowhere",
            "--storage-location",
            "broken",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let b = get(&a, BACKUP, Some(&ins), "nowhere").await.unwrap();
    assert_eq!(b["status"]["phase"], "FailedValidation");
    assert!(
        b["status"]["validationErrors"][0]
            .as_str()
            .unwrap()
            .contains("Unavailable status"),
        "{b:#}"
    );

    // Expired: --ttl sets the expiration (start + TTL); once it has passed (moved into
    // the past here, rather than racing a short TTL against the restore below), the
    // backup is deleted through a DeleteBackupRequest, record, its restores and the
    // request with it.
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "old",
            "--include-namespaces",
            &app,
            "--ttl",
            "1h0m0s",
        ],
    );
    let old = get(&a, BACKUP, Some(&ins), "old").await.unwrap();
    let t = |k: &str| {
        old["status"][k]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .unwrap_or_else(|| panic!("{k}: {old:#}"))
    };
    assert_eq!(
        t("expiration") - t("startTimestamp"),
        chrono::Duration::hours(1),
        "{old:#}"
    );
    let mapping = format!("{app}:{app}-r");
    arca.ok(
        &a,
        &[
            "restore",
            "create",
            "old-r",
            "--from-backup",
            "old",
            "--namespace-mappings",
            &mapping,
        ],
    );
    let past = json!({ "status": { "expiration": "2020-01-01T00:00:00Z" } });
    let backups: Api<DynamicObject> = Api::namespaced_with(
        a.client.clone(),
        &ins,
        &resource(BACKUP.0, BACKUP.1, BACKUP.2),
    );
    backups
        .patch_status("old", &PatchParams::default(), &Patch::Merge(&past))
        .await
        .unwrap();
    until(&a, BACKUP, &ins, "old", "deleted", |o| o.is_none()).await;
    let out = arca.run(&a, &["backup", "logs", "old"]);
    assert_eq!(out.status.code(), Some(1), "the record went too");
    until(&a, RESTORE, &ins, "old-r", "deleted with its backup", |o| {
        o.is_none()
    })
    .await;
    let requests = list_json(
        &a,
        ("arca.dev/v1", "DeleteBackupRequest", "deletebackuprequests"),
        Some(&ins),
        "arca.dev/backup-name=old",
    )
    .await;
    assert!(
        requests.is_empty(),
        "the request is removed once done: {requests:#?}"
    );
    server
        .wait_log(&format!(
            "backup {ins}/old has expired: asking for its deletion"
        ))
        .await;

    // A location whose bucket is removed after it was Available goes Unavailable.
    let doomed = arca.dir.path().join("doomed");
    apply(&a, &bsl("doomed", doomed.to_str().unwrap(), "")).await;
    until(&a, BSL, &ins, "doomed", "Available", phase_is("Available")).await;
    std::fs::remove_dir_all(&doomed).unwrap();
    std::fs::write(&doomed, b"not a bucket").unwrap();
    unavailable("doomed").await;
    delete_namespaced(&a, BSL, &ins, "doomed").await;

    // Expired in a read-only location: kept, labelled BSLReadOnly.
    let ro_dir = arca.dir.path().join("ro");
    apply(&a, &bsl("ro", ro_dir.to_str().unwrap(), "")).await;
    until(&a, BSL, &ins, "ro", "Available", phase_is("Available")).await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "kept",
            "--include-namespaces",
            &app,
            "--storage-location",
            "ro",
        ],
    );
    apply(
        &a,
        &bsl("ro", ro_dir.to_str().unwrap(), "  accessMode: ReadOnly\n"),
    )
    .await;
    backups
        .patch_status("kept", &PatchParams::default(), &Patch::Merge(&past))
        .await
        .unwrap();
    let k = until(&a, BACKUP, &ins, "kept", "labelled", |o| {
        o.as_ref()
            .is_some_and(|o| o["metadata"]["labels"]["arca.dev/gc-failure"] == "BSLReadOnly")
    })
    .await
    .unwrap();
    assert_eq!(k["status"]["phase"], "Completed");

    // Removed from the cluster alone: the sync brings it back, no CLI involved.
    arca.ok(
        &a,
        &["backup", "create", "synced", "--include-namespaces", &app],
    );
    delete_namespaced(&a, BACKUP, &ins, "synced").await;
    let s = until(
        &a,
        BACKUP,
        &ins,
        "synced",
        "synced back",
        phase_is("Completed"),
    )
    .await
    .unwrap();
    assert_eq!(
        s["metadata"]["annotations"]["arca.dev/synced-from-location"], "default",
        "{s:#}"
    );
    let l = until(&a, BSL, &ins, "default", "synced", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["lastSyncedTime"].is_string())
    })
    .await;
    assert!(l.is_some());

    // A location's own backupSyncPeriod: "0" keeps its backups out of the cluster while
    // the others sync every second; "1s" brings them in.
    let never_dir = arca.dir.path().join("never");
    apply(
        &a,
        &bsl(
            "never",
            never_dir.to_str().unwrap(),
            "  backupSyncPeriod: 0s\n",
        ),
    )
    .await;
    until(&a, BSL, &ins, "never", "Available", phase_is("Available")).await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "far",
            "--include-namespaces",
            &app,
            "--storage-location",
            "never",
        ],
    );
    delete_namespaced(&a, BACKUP, &ins, "far").await;
    let gone = chrono::Utc::now();
    // Two syncs of the default location after it was removed: "never" was looked at too.
    until(&a, BSL, &ins, "default", "synced twice since", |o| {
        o.as_ref().is_some_and(|o| {
            o["status"]["lastSyncedTime"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= gone + chrono::Duration::seconds(2))
        })
    })
    .await;
    assert!(
        get(&a, BACKUP, Some(&ins), "far").await.is_none(),
        "synced from a location whose backupSyncPeriod is 0"
    );
    let never = get(&a, BSL, Some(&ins), "never").await.unwrap();
    assert!(never["status"]["lastSyncedTime"].is_null(), "{never:#}");
    // Nor does `backup get`, which syncs the other locations itself.
    arca.ok(&a, &["backup", "get"]);
    assert!(
        get(&a, BACKUP, Some(&ins), "far").await.is_none(),
        "synced by backup get from a location whose backupSyncPeriod is 0"
    );
    apply(
        &a,
        &bsl(
            "never",
            never_dir.to_str().unwrap(),
            "  backupSyncPeriod: 1s\n",
        ),
    )
    .await;
    let f = until(
        &a,
        BACKUP,
        &ins,
        "far",
        "synced back",
        phase_is("Completed"),
    )
    .await
    .unwrap();
    assert_eq!(
        f["metadata"]["annotations"]["arca.dev/synced-from-location"], "never",
        "{f:#}"
    );

    // Deleting a backup that does not exist: the CLI says so; a request made with the
    // API is Processed with Velero's error, deleting nothing.
    let out = arca.run(&a, &["backup", "delete", "never-was", "--confirm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backup never-was not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: DeleteBackupRequest\nmetadata: {{name: never-was-1, namespace: {ins}}}\nspec:\n  backupName: never-was\n"
        ),
    )
    .await;
    let r = until(
        &a,
        ("arca.dev/v1", "DeleteBackupRequest", "deletebackuprequests"),
        &ins,
        "never-was-1",
        "Processed",
        |o| {
            o.as_ref()
                .is_some_and(|o| o["status"]["phase"] == "Processed")
        },
    )
    .await
    .unwrap();
    assert!(
        r["status"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("backup not found"),
        "{r:#}"
    );

    // Two defaults: the newer stays.
    apply(
        &a,
        &bsl(
            "newer",
            arca.dir.path().join("newer").to_str().unwrap(),
            "  default: true\n",
        ),
    )
    .await;
    until(&a, BSL, &ins, "default", "no longer the default", |o| {
        o.as_ref().is_some_and(|o| o["spec"]["default"] == false)
    })
    .await;
    let n = get(&a, BSL, Some(&ins), "newer").await.unwrap();
    assert_eq!(n["spec"]["default"], true);

    // Each location's records are maintained, and a namespace's volume repository on its
    // own frequency: its last maintenance moves on.
    const REPO: (&str, &str, &str) = ("arca.dev/v1", "BackupRepository", "backuprepositories");
    let ready = |o: &Option<Value>| {
        o.as_ref().is_some_and(|o| {
            o["status"]["phase"] == "Ready" && o["status"]["lastFullMaintenanceTime"].is_string()
        })
    };
    until(&a, REPO, &ins, "default-resources", "maintained", ready).await;
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: BackupRepository\nmetadata: {{name: vol-app, namespace: {ins}}}\nspec:\n  volumeNamespace: {app}\n  backupStorageLocation: default\n  maintenanceFrequency: 1s\n"
        ),
    )
    .await;
    let first = until(&a, REPO, &ins, "vol-app", "maintained", ready)
        .await
        .unwrap();
    let t0 = first["status"]["lastMaintenanceTime"].clone();
    let again = until(&a, REPO, &ins, "vol-app", "maintained again", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["lastMaintenanceTime"] != t0)
    })
    .await
    .unwrap();
    // The first was full (never run), the next quick: full ones stay daily
    // (`--full-repo-maintain-frequency`'s default) whatever the quick frequency.
    assert_eq!(
        again["status"]["lastFullMaintenanceTime"], first["status"]["lastFullMaintenanceTime"],
        "{again:#}"
    );
    assert!(
        server
            .log()
            .contains(&format!("repository {ins}/vol-app: quick maintenance done")),
        "{}",
        server.log()
    );
    assert!(
        arca.dir
            .path()
            .join("bsl")
            .join("volumes")
            .join(&app)
            .join("config")
            .exists()
    );
    let table = arca.ok(&a, &["repo", "get"]);
    assert!(
        table.contains("default-resources") && table.contains("vol-app"),
        "{table}"
    );
    // One whose maintenance cannot run (its location does not exist): NotReady, saying why.
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: BackupRepository\nmetadata: {{name: vol-nowhere, namespace: {ins}}}\nspec:\n  volumeNamespace: {app}\n  backupStorageLocation: nowhere\n  maintenanceFrequency: 1s\n"
        ),
    )
    .await;
    let r = until(
        &a,
        REPO,
        &ins,
        "vol-nowhere",
        "NotReady",
        phase_is("NotReady"),
    )
    .await
    .unwrap();
    assert!(
        r["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nowhere")),
        "{r:#}"
    );
    let yaml = arca.ok(&a, &["repo", "get", "vol-app", "-o", "yaml"]);
    let r: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(r[0]["spec"]["volumeNamespace"], app.as_str(), "{yaml}");

    // Events say what the controllers did: a restore's run, a location's state, a deletion.
    let restored = event_reasons(&a, &ins, "old-r").await;
    assert!(
        restored.contains("RestoreStarted") && restored.contains("RestoreCompleted"),
        "{restored:?}"
    );
    assert!(
        event_reasons(&a, &ins, "broken")
            .await
            .contains("Unavailable"),
        "no Unavailable event for the broken location"
    );
    let deleted = arca_k8s::kube::Api::<arca_k8s::k8s_openapi::api::events::v1::Event>::namespaced(
        a.client.clone(),
        &ins,
    )
    .list(&ListParams::default())
    .await
    .unwrap()
    .items
    .into_iter()
    .any(|e| {
        e.reason.as_deref() == Some("BackupDeleted")
            && e.note.as_deref() == Some("backup old deleted")
    });
    assert!(deleted, "no BackupDeleted event for old");

    let url = server.metrics_url().await;
    let m = http_get(&format!("{url}/metrics")).1;
    for line in [
        "arca_backup_deletion_success_total{schedule=\"\"} 1",
        "arca_backup_location_status_gauge{backup_location_name=\"broken\"} 0",
        "arca_backup_location_status_gauge{backup_location_name=\"default\"} 1",
    ] {
        assert!(m.contains(line), "{line} in:\n{m}");
    }
    // --log-format json: every line one object, with its time, level and message.
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 10, "{log}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["timestamp"].is_string()
                && v["level"].is_string()
                && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}

/// Velero's `backup-location` verbs and `uninstall`: a second location made the default
/// takes the next backup; `set` moves the default back and makes a location read-only
/// (no backup goes in); deleting a location removes its Backup resources, not its data,
/// which come back when it is created again; `uninstall` removes the namespace and keeps
/// the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_locations_and_uninstall_from_the_cli() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca {
        server_flags: vec!["--default-backup-storage-location", "second"],
        ..Arca::new("bsl")
    };
    arca.install(&a);
    let app = format!("bsl-app-{}", arca.suffix());
    apply(&a, &(ns(&app) + &cm(&app, "c", &[], "1"))).await;
    let dir2 = arca.dir.path().join("second");
    let out = arca.ok(
        &a,
        &[
            "backup-location",
            "create",
            "second",
            "--provider",
            "local",
            "--bucket",
            dir2.to_str().unwrap(),
            "--default",
        ],
    );
    assert!(out.contains("\"second\" configured successfully"), "{out}");
    let l = arca.json(&a, &["backup-location", "get"]);
    let default_of = |l: &Value, n: &str| {
        l.as_array()
            .unwrap()
            .iter()
            .find(|b| b["metadata"]["name"] == n)
            .unwrap()["spec"]["default"]
            .clone()
    };
    assert_eq!(default_of(&l, "second"), true);
    assert_eq!(default_of(&l, "default"), false, "the mark moved");
    until(&a, BSL, &arca.ns, "second", "Available", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Available")
    })
    .await;
    arca.ok(&a, &["backup", "create", "x", "--include-namespaces", &app]);
    let b = arca.json(&a, &["backup", "get", "x"]);
    assert_eq!(b[0]["spec"]["storageLocation"], "second");
    // None marked default: the server's --default-backup-storage-location (else it would
    // be "default", by name).
    let bsls: Api<DynamicObject> =
        Api::namespaced_with(a.client.clone(), &arca.ns, &resource(BSL.0, BSL.1, BSL.2));
    bsls.patch(
        "second",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"default": false}})),
    )
    .await
    .unwrap();
    // Without --wait, `backup create` returns once the Backup exists (Velero's): the
    // server runs it.
    let out = arca
        .cmd(&a)
        .args(["backup", "create", "x2", "--include-namespaces", &app])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("x2"), "{said}");
    let b = until(&a, BACKUP, &arca.ns, "x2", "Completed", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Completed")
    })
    .await
    .unwrap();
    assert_eq!(b["spec"]["storageLocation"], "second", "{b:#}");
    let yaml = arca.ok(&a, &["backup-location", "get", "second", "-o", "yaml"]);
    let l: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(l[0]["spec"]["default"], false, "{yaml}");

    arca.ok(&a, &["backup-location", "set", "default", "--default"]);
    let d = arca.json(&a, &["backup-location", "get", "--default"]);
    assert_eq!(d.as_array().unwrap().len(), 1, "{d:#}");
    assert_eq!(d[0]["metadata"]["name"], "default");
    let table = arca.ok(&a, &["backup-location", "get"]);
    assert!(
        table.contains("ACCESS MODE") && table.contains("second"),
        "{table}"
    );

    arca.ok(
        &a,
        &[
            "backup-location",
            "set",
            "second",
            "--access-mode",
            "ReadOnly",
        ],
    );
    let out = arca.run(
        &a,
        &["backup", "create", "y", "--storage-location", "second"],
    );
    assert_eq!(out.status.code(), Some(1));
    let y = arca.json(&a, &["backup", "describe", "y"]);
    assert!(
        y[0]["backup"]["status"]["validationErrors"][0]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{y:#}"
    );
    arca.ok(
        &a,
        &[
            "backup-location",
            "set",
            "second",
            "--access-mode",
            "ReadWrite",
        ],
    );

    // Deleted with its Backup resources; the data stays and comes back.
    let out = arca.ok(&a, &["backup-location", "delete", "second", "--confirm"]);
    assert!(out.contains("with 3 Backup resource(s)"), "{out}");
    assert!(get(&a, BACKUP, Some(&arca.ns), "x").await.is_none());
    arca.ok(
        &a,
        &[
            "backup-location",
            "create",
            "second",
            "--provider",
            "local",
            "--bucket",
            dir2.to_str().unwrap(),
        ],
    );
    let l = arca.json(&a, &["backup", "get", "x"]);
    assert_eq!(l[0]["status"]["phase"], "Completed", "synced back: {l:#}");
    assert!(arca.items(&a, "x").contains(&format!("configmaps:{app}/c")));

    // Uninstall: asks first; then the namespace goes, the data stays.
    let out = arca.run(&a, &["uninstall", "--keep-crds"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--confirm"));
    let pwdir = arca.dir.path().join("pw");
    std::fs::create_dir_all(&pwdir).unwrap();
    let out = arca.ok(
        &a,
        &[
            "uninstall",
            "--force",
            "--keep-crds",
            "--wait",
            "--password-dir",
            pwdir.to_str().unwrap(),
        ],
    );
    let saved = pwdir.join(format!("arca-repository-password-{}", arca.ns));
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        PASSWORD,
        "the password is kept"
    );
    assert!(
        out.contains(&format!("deleted Namespace/{}", arca.ns)),
        "{out}"
    );
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    assert!(nss.get_opt(&arca.ns).await.unwrap().is_none());
    assert!(
        dir2.join("resources").join("config").exists(),
        "the data stays"
    );
}

/// Cancel: a backup held InProgress (a pause point stands for a long one) is stopped by
/// `backup cancel` and ends Canceled with no record stored; a restore held InProgress
/// likewise; an ended one is not cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_backup_and_restore() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca {
        auto_server: false,
        ..Arca::new("cancel")
    };
    arca.install(&a);
    let app = format!("cancel-app-{}", arca.suffix());
    apply(&a, &(ns(&app) + &cm(&app, "c", &[], "1"))).await;
    let kind = |k: &str, name: &str, spec: &str| {
        format!(
            "apiVersion: arca.dev/v1\nkind: {k}\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n{spec}",
            arca.ns
        )
    };
    let mut first = arca.server_with(&a, "3s", &[("ARCA_TEST_PAUSE_AT", "backup-collected")]);
    first.wait_log("leading").await;
    apply(
        &a,
        &kind(
            "Backup",
            "long",
            &format!("  includedNamespaces: [{app}]\n"),
        ),
    )
    .await;
    first.wait_log("paused at backup-collected").await;
    // Two more wait for the one slot (--concurrent-backups 1), in order.
    apply(
        &a,
        &kind("Backup", "q1", &format!("  includedNamespaces: [{app}]\n")),
    )
    .await;
    apply(
        &a,
        &kind("Backup", "q2", &format!("  includedNamespaces: [{app}]\n")),
    )
    .await;
    let queued_at = |n: i64| {
        move |o: &Option<Value>| {
            o.as_ref().is_some_and(|o| {
                o["status"]["phase"] == "Queued" && o["status"]["queuePosition"] == n
            })
        }
    };
    until(&a, BACKUP, &arca.ns, "q1", "Queued first", queued_at(1)).await;
    until(&a, BACKUP, &arca.ns, "q2", "Queued second", queued_at(2)).await;
    let out = arca.ok(&a, &["backup", "cancel", "long", "--wait"]);
    assert!(out.contains("Backup long: Canceled"), "{out}");
    let b = get(&a, BACKUP, Some(&arca.ns), "long").await.unwrap();
    assert_eq!(b["status"]["phase"], "Canceled", "{b:#}");
    assert!(
        b["status"]["failureReason"]
            .as_str()
            .unwrap()
            .contains("canceled"),
        "{b:#}"
    );
    assert!(b["status"]["snapshotId"].is_null(), "nothing stored: {b:#}");
    assert_eq!(
        arca.run(&a, &["backup", "logs", "long"]).status.code(),
        Some(1)
    );
    first
        .wait_log(&format!("backup {}/long: Canceled", arca.ns))
        .await;
    let out = arca.run(&a, &["backup", "cancel", "long"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has ended (Canceled)"));
    // The slot freed: the next in the queue starts, the other moves up; cancelled while
    // queued, a backup never starts.
    until(&a, BACKUP, &arca.ns, "q1", "started", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "InProgress")
    })
    .await;
    until(&a, BACKUP, &arca.ns, "q2", "next", queued_at(1)).await;
    let out = arca.ok(&a, &["backup", "cancel", "q2", "--wait"]);
    assert!(out.contains("Backup q2: Canceled"), "{out}");
    arca.ok(&a, &["backup", "cancel", "q1", "--wait"]);

    // The restore: a server that holds restores once they started.
    first.kill();
    let second = arca.server_with(&a, "3s", &[("ARCA_TEST_PAUSE_AT", "restore-started")]);
    second.wait_log("leading").await;
    arca.ok(
        &a,
        &["backup", "create", "done", "--include-namespaces", &app],
    );
    apply(
        &a,
        &kind(
            "Restore",
            "r",
            &format!("  backupName: done\n  namespaceMapping: {{{app}: {app}-copy}}\n"),
        ),
    )
    .await;
    second.wait_log("paused at restore-started").await;
    let out = arca.ok(&a, &["restore", "cancel", "r", "--wait"]);
    assert!(out.contains("Restore r: Canceled"), "{out}");
    let r = get(&a, RESTORE, Some(&arca.ns), "r").await.unwrap();
    assert_eq!(r["status"]["phase"], "Canceled", "{r:#}");
    assert!(
        configmap(&a, &format!("{app}-copy"), "c").await.is_none(),
        "stopped before any item"
    );

    // A restore whose server is killed (-9) in the middle is run again by the next
    // leader, to the end (Velero issue 4503: not Failed for the restart).
    apply(
        &a,
        &kind(
            "Restore",
            "r2",
            &format!("  backupName: done\n  namespaceMapping: {{{app}: {app}-again}}\n"),
        ),
    )
    .await;
    let mut second = second;
    until(&a, RESTORE, &arca.ns, "r2", "InProgress", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "InProgress")
    })
    .await;
    second.kill();
    let third = arca.server_with(&a, "3s", &[]);
    third
        .wait_log(&format!(
            "restore {}/r2 was InProgress when its server stopped",
            arca.ns
        ))
        .await;
    until(&a, RESTORE, &arca.ns, "r2", "Completed", |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Completed")
    })
    .await;
    assert_eq!(
        configmap(&a, &format!("{app}-again"), "c").await.unwrap()["data"]["v"],
        "1"
    );
}

/// `arca install` with no password given makes a random one, stored in the namespace's
/// secret; it is never replaced: another password is refused (the repositories made
/// with the first open only with it), none keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_makes_a_random_password_and_never_replaces_it() {
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca::new("pw");
    let bucket = arca.dir.path().join("bsl");
    let install = |password: Option<&str>| {
        let mut c = arca.cmd(&a);
        c.env_remove("ARCA_PASSWORD");
        if let Some(p) = password {
            c.env("ARCA_PASSWORD", p);
        }
        c.args([
            "install",
            "--provider",
            "local",
            "--bucket",
            bucket.to_str().unwrap(),
            "--no-deployment",
        ])
        .output()
        .unwrap()
    };
    let out = install(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("a random repository password"));
    let secrets: Api<arca_k8s::k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(a.client.clone(), &arca.ns);
    let stored = || async {
        secrets
            .get("arca-repo-credentials")
            .await
            .unwrap()
            .data
            .unwrap()["repository-password"]
            .0
            .clone()
    };
    let first = stored().await;
    assert_eq!(first.len(), 48, "24 random bytes, hex");
    let out = install(Some("something else"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another was given"));
    let out = install(None);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("random"),
        "kept, not made again"
    );
    assert_eq!(stored().await, first);
    let pw = String::from_utf8(first).unwrap();
    assert!(install(Some(&pw)).status.success(), "the same one is fine");
    // A bucket already holding Arca's repositories: a new random password would not
    // open them, so an install there without the password is refused.
    let init = Command::new(env!("CARGO_BIN_EXE_arca"))
        .env("ARCA_PASSWORD", "the first cluster's")
        .env("ARCA_CACHE_DIR", arca.dir.path().join("cache"))
        .args([
            "--repo",
            bucket.join("resources").to_str().unwrap(),
            "repo",
            "init",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let other = Arca::new("pw-b");
    let mut c = other.cmd(&a);
    c.env_remove("ARCA_PASSWORD");
    let out = c
        .args([
            "install",
            "--provider",
            "local",
            "--bucket",
            bucket.to_str().unwrap(),
            "--no-deployment",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds Arca repositories"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry = arca.ok(&a, &["install", "--dry-run", "-o", "json"]);
    let objects: Value = serde_json::from_str(&dry).unwrap();
    assert!(
        objects
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "CustomResourceDefinition")
    );
}

/// The arca image of this build, `localhost/arca:<hash of the binary and recipe>`, made
/// by scripts/make-image (the binary, the libraries it links, the CA roots) once per
/// binary, and imported into cluster `c`'s node.
fn arca_image(c: &Cluster) -> String {
    // The binary is built in this test's profile: debug assertions on means not release.
    if std::env::var_os("ARCA_REQUIRE_RELEASE_IMAGE").is_some() && cfg!(debug_assertions) {
        panic!(
            "ARCA_REQUIRE_RELEASE_IMAGE is set but this is not a release build: run `cargo test --release`"
        );
    }
    let bin = env!("CARGO_BIN_EXE_arca");
    // The recipe is part of the key: a new recipe makes a new image.
    const CA: &str = "/etc/ssl/certs/ca-certificates.crt";
    let mut h = blake3::Hasher::new();
    h.update(&std::fs::read(bin).unwrap());
    h.update(format!("--binary /usr/bin/arca --file {CA}").as_bytes());
    let hash = h.finalize().to_hex()[..12].to_string();
    let name = format!("localhost/arca:{hash}");
    let images = std::env::var_os("ARCA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/arca"))
        .join("images");
    std::fs::create_dir_all(&images).unwrap();
    let tar = images.join(format!("arca-{hash}.tar"));
    // Tests of one process build it once: their temporary names would collide.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    if !tar.exists() {
        // Images of earlier binaries go: one is kept.
        for e in std::fs::read_dir(&images).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("arca-") && n.ends_with(".tar") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let tmp = images.join(format!(".arca-{hash}.tar.{}", std::process::id()));
        let out = Command::new(scripts.join("make-image"))
            .args(["--name", &name, "--out"])
            .arg(&tmp)
            .arg("--binary")
            .arg(format!("{bin}:/usr/bin/arca"))
            // Object storage over TLS trusts the system's roots.
            .arg("--file")
            .arg(format!("{CA}:{CA}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &tar).unwrap();
    }
    let cluster_name = c.kubeconfig.parent().unwrap().file_name().unwrap();
    let out = Command::new(scripts.join("test-cluster"))
        .arg("image")
        .arg(cluster_name)
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    name
}

/// `arca install --image` with the image of this build: the operator runs in the cluster
/// as a Deployment on the real node, a real in-cluster client (its service account's
/// token and CA), and runs a backup created from the CLI to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_runs_the_server_in_the_cluster_from_the_arca_image() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(a) = cluster("ARCA_TEST_KUBECONFIG").await else {
        return;
    };
    let arca = Arca {
        auto_server: false,
        ..Arca::new("incluster")
    };
    // The server's pod listens on the host's port 8085: an earlier run's on the same
    // clusters goes first.
    let all: Api<arca_k8s::k8s_openapi::api::apps::v1::Deployment> = Api::all(a.client.clone());
    for d in all
        .list(&ListParams::default().labels("component=arca"))
        .await
        .unwrap()
        .items
    {
        let dns = d.namespace().unwrap_or_default();
        if dns.starts_with("arca-incluster-") {
            let api: Api<arca_k8s::k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(a.client.clone(), &dns);
            let _ = api.delete("arca", &DeleteParams::default()).await;
        }
    }
    let Some(_storage) = storage::serve(&a.kubeconfig) else {
        return;
    };
    let image = arca_image(&a);
    let pods_dir = a.kubeconfig.parent().unwrap().join("node/kubelet/pods");
    let creds = arca.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    let prefix = format!("incluster-{}", arca.suffix());
    let config = format!("region=us-east-1,s3Url={endpoint}");
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            "--provider",
            "aws",
            "--bucket",
            "arca-test",
            "--prefix",
            &prefix,
            "--backup-location-config",
            &config,
            "--secret-file",
            creds.to_str().unwrap(),
            "--image",
            &image,
            "--use-node-agent",
            "--privileged-node-agent",
            "--host-pods-dir",
            pods_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        arca.ok(&a, &args)
    };
    install(&[]);
    // No kube-proxy runs here: the pod reaches the API server on the host's network at
    // 127.0.0.1 (its certificate names it), as the test clusters' pods do.
    let text = std::fs::read_to_string(&a.kubeconfig).unwrap();
    let port = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .and_then(|u| u.rsplit(':').next())
        .unwrap()
        .to_string();
    let on_host_network = |container: &str| {
        Patch::Strategic(json!({"spec": {"template": {"spec": {
            "hostNetwork": true,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "containers": [{"name": container, "env": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": port},
            ]}],
        }}}}))
    };
    let deployments: Api<arca_k8s::k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(a.client.clone(), &arca.ns);
    deployments
        .patch("arca", &PatchParams::default(), &on_host_network("arca"))
        .await
        .unwrap();
    let daemonsets: Api<arca_k8s::k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(a.client.clone(), &arca.ns);
    daemonsets
        .patch(
            "node-agent",
            &PatchParams::default(),
            &on_host_network("node-agent"),
        )
        .await
        .unwrap();
    // Applied again, as a user reruns install: the additions stay; --wait returns once
    // the server is available (its readiness probe passed).
    install(&["--wait"]);
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &arca.ns);
    // The pod of the patched template (the first one's rollout may still be ending).
    let running = pods
        .list(&ListParams::default().labels("deploy=arca"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| {
            p.spec.as_ref().and_then(|s| s.host_network) == Some(true)
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .expect("a ready server pod on the host's network");
    let pod = running.name_any();
    pod_log_with(&pods, &pod, "leading").await;

    // The node agent's pod (of the patched template) runs on the node.
    let agent_pod = {
        let mut found = None;
        for _ in 0..600 {
            found = pods
                .list(&ListParams::default().labels("name=node-agent"))
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|p| {
                    p.spec.as_ref().and_then(|s| s.host_network) == Some(true)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
            if found.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        found.expect("a running node-agent pod").name_any()
    };
    pod_log_with(&pods, &agent_pod, "node agent started").await;

    let app = format!("incl-app-{}", arca.suffix());
    let class = storage::CLASS;
    apply(
        &a,
        &(ns(&app)
            + &cm(&app, "cfg", &[], "v")
            + &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {app}}}\n---\n\
                 apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {app}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  resources: {{requests: {{storage: 16Mi}}}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {{name: app, namespace: {app}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, 'echo in-cluster-data > /data/f && echo written && exec sleep 3600']\n    volumeMounts: [{{name: data, mountPath: /data}}]\n  volumes:\n  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}\n"
            )),
    )
    .await;
    let app_pods: Api<Pod> = Api::namespaced(a.client.clone(), &app);
    pod_log_with(&app_pods, "app", "written").await;
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "in-cluster",
            "--include-namespaces",
            &app,
            "--snapshot-move-data",
        ],
    );
    // The DaemonSet's pod moved the claim's data, reading it through the host's pods
    // directory it mounts, with the exposer pod of its own image.
    let dus = uploads_of(&a, &arca.ns, "in-cluster").await;
    assert_eq!(dus.len(), 1, "{dus:#?}");
    assert_eq!(dus[0]["status"]["phase"], "Completed", "{:#}", dus[0]);
    assert!(
        dus[0]["status"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/host_pods/")),
        "{:#}",
        dus[0]
    );
    let agent_log = pods.logs(&agent_pod, &Default::default()).await.unwrap();
    assert!(agent_log.contains("completed"), "{agent_log}");
    let items = arca.items(&a, "in-cluster");
    assert!(
        items.contains(&format!("configmaps:{app}/cfg")),
        "{items:?}"
    );
    let leases: Api<arca_k8s::k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(a.client.clone(), &arca.ns);
    let holder = leases
        .get("arca-server")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with(&format!("{pod}_")),
        "the pod leads: {holder}"
    );
    let log = pods.logs(&pod, &Default::default()).await.unwrap();
    assert!(
        log.contains("in-cluster: Completed"),
        "the pod ran the backup:\n{log}"
    );
    deployments
        .delete("arca", &DeleteParams::default())
        .await
        .unwrap();
    daemonsets
        .delete("node-agent", &DeleteParams::default())
        .await
        .unwrap();
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    let _ = nss.delete(&app, &DeleteParams::default()).await;
}

impl Arca {
    /// `arca node-agent` for this test's namespace, as the DaemonSet's pod on the node
    /// `localhost` would run it, reading pod volumes from the node's pods directory.
    fn node_agent(&self, c: &Cluster, image: &str, env: &[(&str, &str)]) -> Server {
        self.node_agent_with(c, image, env, &[])
    }

    /// A node agent (with `args`) whose mover is held at the engine pause point `point`
    /// until the returned file exists.
    fn node_agent_held(
        &self,
        c: &Cluster,
        image: &str,
        point: &str,
        args: &[&str],
    ) -> (Server, PathBuf) {
        let go_on = self.go_on(point);
        let agent = self.node_agent_with(
            c,
            image,
            &[
                ("ARCA_TEST_ENGINE_PAUSE", point),
                ("ARCA_TEST_RESUME_WHEN", go_on.to_str().unwrap()),
            ],
            args,
        );
        (agent, go_on)
    }

    /// The snapshots of `ns`'s volume repository in the test's local bucket, as
    /// `snapshot list --json` prints them.
    fn volume_snapshots(&self, c: &Cluster, ns: &str) -> Value {
        let repo = self.dir.path().join("bsl/volumes").join(ns);
        let out = self.ok(
            c,
            &[
                "--repo",
                repo.to_str().unwrap(),
                "snapshot",
                "list",
                "--json",
            ],
        );
        serde_json::from_str(&out).unwrap()
    }

    /// [`Arca::node_agent`] with more flags.
    fn node_agent_with(
        &self,
        c: &Cluster,
        image: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let node = c.kubeconfig.parent().unwrap().join("node");
        let pods = node.join("kubelet/pods");
        // The node's kubelet mounts pod volumes in the node's own mount namespace
        // (scripts/test-node): the agent runs there, as the DaemonSet's pod would.
        let pid = std::fs::read_to_string(node.join("namespace.pid")).unwrap();
        let base = self.cmd(c);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", pid.trim()))
            .arg(base.get_program())
            .args(base.get_args());
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.args(["node-agent", "--node-name", "localhost", "--image", image])
            .arg("--host-pods-dir")
            .arg(&pods)
            .env(
                "ARCA_CACHE_DIR",
                self.dir
                    .path()
                    .join("agent-cache")
                    .join(node.parent().unwrap().file_name().unwrap()),
            )
            .env("ARCA_LOG", "info,arca_k8s::datamover=debug")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd)
    }
}

/// Poll `get` until `done`, for up to `secs` seconds (data moves take longer than the
/// API's own changes that `until` waits for).
async fn until_long(
    c: &Cluster,
    (api_version, kind, plural): (&str, &str, &str),
    ns: Option<&str>,
    name: &str,
    secs: u64,
    done: impl Fn(&Option<Value>) -> bool,
) -> Option<Value> {
    let mut o = None;
    for _ in 0..secs * 4 {
        o = get(c, (api_version, kind, plural), ns, name).await;
        if done(&o) {
            return o;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!(
        "{kind} {}/{name}: not as waited for: {o:#?}",
        ns.unwrap_or("")
    )
}

async fn list_json(
    c: &Cluster,
    ar: (&str, &str, &str),
    ns: Option<&str>,
    labels: &str,
) -> Vec<Value> {
    let r = resource(ar.0, ar.1, ar.2);
    let api: Api<DynamicObject> = match ns {
        Some(n) => Api::namespaced_with(c.client.clone(), n, &r),
        None => Api::all_with(c.client.clone(), &r),
    };
    api.list(&ListParams::default().labels(labels))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

const DATA_UPLOAD: (&str, &str, &str) = ("arca.dev/v1", "DataUpload", "datauploads");
const DATA_DOWNLOAD: (&str, &str, &str) = ("arca.dev/v1", "DataDownload", "datadownloads");
const VOLUME_SNAPSHOT: (&str, &str, &str) = (
    "snapshot.storage.k8s.io/v1",
    "VolumeSnapshot",
    "volumesnapshots",
);
const VOLUME_SNAPSHOT_CONTENT: (&str, &str, &str) = (
    "snapshot.storage.k8s.io/v1",
    "VolumeSnapshotContent",
    "volumesnapshotcontents",
);

/// CSI snapshot data movement on the real node, through the storage stand-in: a pod
/// writes files into a claim; `backup create --snapshot-move-data` takes a snapshot, the
/// node agent reads it through the pods directory of the exposer pod into the namespace's
/// repository, and every snapshot and intermediate object goes; the namespace deleted, a
/// restore writes the data into a new volume, hands it to the restored claim, and the
/// restored pod reads the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_data_moves_through_the_node_agent_and_back() {
    use arca_k8s::k8s_openapi::api::core::v1::{Namespace, Pod};
    let Some((a, image, arca)) = volume_setting("move", true).await else {
        return;
    };
    let agent = arca.node_agent(&a, &image, &[]);
    let sfx = arca.suffix().to_string();
    let app = format!("move-{sfx}");
    let class = storage::CLASS;
    // The script writes once (a restored pod finds the data there: the marker is on the
    // file system) and prints the checksums of what both volumes hold.
    let script = "[ -f /data/done ] || { mkdir -p /data/d && dd if=/dev/urandom of=/data/d/big bs=1M count=48 2>/dev/null && for i in 1 2 3 4 5; do echo file-$i > /data/d/f$i; done && ln -s d/f1 /data/link && dd if=/dev/urandom of=/dev/xvda bs=1M count=8 conv=fsync 2>/dev/null && touch /data/done; }; echo sum:$(cat /data/d/* | md5sum | cut -c1-32):$(readlink /data/link):$(head -c 8388608 /dev/xvda | md5sum | cut -c1-32); exec sleep 3600";
    let claim = |name: &str, mode: &str, size: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {app}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: {mode}\n  storageClassName: {class}\n  resources: {{requests: {{storage: {size}}}}}\n---\n"
        )
    };
    apply(
        &a,
        &(ns(&app)
            + &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {app}}}\n---\n"
            )
            + &claim("data", "Filesystem", "128Mi")
            + &claim("disk", "Block", "16Mi")
            + &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: writer, namespace: {app}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, '{script}']\n    volumeMounts: [{{name: data, mountPath: /data}}]\n    volumeDevices: [{{name: disk, devicePath: /dev/xvda}}]\n  volumes:\n  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}\n  - {{name: disk, persistentVolumeClaim: {{claimName: disk}}}}\n"
            )),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &app);
    let log = pod_log_with(&pods, "writer", "sum:").await;
    let sum = log
        .lines()
        .find(|l| l.starts_with("sum:"))
        .unwrap()
        .to_string();

    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "moved",
            "--include-namespaces",
            &app,
            "--snapshot-move-data",
        ],
    );
    let b = get(&a, BACKUP, Some(&arca.ns), "moved").await.unwrap();
    assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", agent.log());
    assert_eq!(b["status"]["backupItemOperationsAttempted"], 2);
    assert_eq!(b["status"]["backupItemOperationsCompleted"], 2);
    let uploads = |backup: &'static str| {
        let (a, ns) = (&a, arca.ns.clone());
        async move {
            let dus = list_json(
                a,
                DATA_UPLOAD,
                Some(&ns),
                &format!("arca.dev/backup-name={backup}"),
            )
            .await;
            assert_eq!(dus.len(), 2, "{dus:#?}");
            for du in &dus {
                assert_eq!(du["status"]["phase"], "Completed", "{du:#}");
                assert_eq!(du["status"]["node"], "localhost");
                assert!(
                    du["status"]["snapshotId"]
                        .as_str()
                        .is_some_and(|s| s.len() == 64),
                    "{du:#}"
                );
            }
            let of = |pvc: &str| {
                dus.iter()
                    .find(|d| d["spec"]["sourcePvc"] == pvc)
                    .unwrap()
                    .clone()
            };
            (of("data"), of("disk"))
        }
    };
    let (data_du, disk_du) = uploads("moved").await;
    // One move at a time on the node (loadConcurrency's default): the two did not overlap.
    let span = |du: &Value| {
        let t = |k: &str| {
            du["status"][k]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        };
        (t("startTimestamp"), t("completionTimestamp"))
    };
    let ((s1, e1), (s2, e2)) = (span(&data_du), span(&disk_du));
    assert!(
        s2 >= e1 || s1 >= e2,
        "concurrency 1: {s1}..{e1} and {s2}..{e2} overlap"
    );
    let total = data_du["status"]["progress"]["totalBytes"]
        .as_i64()
        .unwrap();
    assert!(total >= 48 << 20, "the file system's bytes: {total}");
    assert_eq!(
        disk_du["status"]["progress"]["totalBytes"].as_i64(),
        Some(16 << 20),
        "the block volume's size"
    );
    // Everything the move made goes: the snapshots (in the app's namespace and the
    // install namespace), their contents, the exposer's pods and claims.
    for du in [&data_du, &disk_du] {
        let du_name = du["metadata"]["name"].as_str().unwrap();
        cleaned_up(&a, &arca.ns, &app, du_name).await;
    }
    let contents = list_json(&a, VOLUME_SNAPSHOT_CONTENT, None, "").await;
    assert!(
        !contents.iter().any(
            |c| c["spec"]["volumeSnapshotRef"]["namespace"] == json!(app)
                || c["spec"]["volumeSnapshotRef"]["namespace"] == json!(arca.ns)
        ),
        "contents left: {contents:#?}"
    );
    let exposer_pods: Api<Pod> = Api::namespaced(a.client.clone(), &arca.ns);
    for _ in 0..120 {
        if exposer_pods
            .list(&ListParams::default().labels("arca.dev/exposed-for"))
            .await
            .unwrap()
            .items
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let claims = list_json(
        &a,
        ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Some(&arca.ns),
        "arca.dev/exposed-for",
    )
    .await;
    assert!(claims.is_empty(), "exposer claims left: {claims:#?}");
    let du = &data_du;
    // The record keeps the upload's result.
    let text = arca.ok(&a, &["backup", "describe", "moved", "--details"]);
    assert!(
        text.contains(&format!("{app}/data: Completed on localhost")),
        "{text}"
    );
    let d = arca.json(&a, &["backup", "describe", "moved", "--details"]);
    let text = d.to_string();
    assert!(
        text.contains(du["status"]["snapshotId"].as_str().unwrap()),
        "{d:#}"
    );

    // Incremental: 1 % of the file system and of the device changed, the next backup's
    // uploads store little (FastCDC's 1 MiB chunks around each change, not the volume).
    let ap = arca_k8s::kube::api::AttachParams::default()
        .stdout(true)
        .stderr(false);
    let mut ex = pods
        .exec(
            "writer",
            [
                "sh",
                "-c",
                "dd if=/dev/urandom of=/data/d/big bs=4k count=128 seek=4000 conv=notrunc 2>/dev/null && dd if=/dev/urandom of=/dev/xvda bs=4k count=40 seek=100 conv=notrunc,fsync 2>/dev/null && sync && echo changed",
            ],
            &ap,
        )
        .await
        .unwrap();
    let mut got = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut ex.stdout().unwrap(), &mut got)
        .await
        .unwrap();
    ex.join().await.unwrap();
    assert_eq!(got.trim(), "changed");
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "moved2",
            "--include-namespaces",
            &app,
            "--snapshot-move-data",
        ],
    );
    let (data2, disk2) = uploads("moved2").await;
    for (du, size) in [(&data2, 48i64 << 20), (&disk2, 16 << 20)] {
        let new = du["status"]["incrementalBytes"].as_i64().unwrap();
        assert!(
            new > 0 && new <= size / 8,
            "a 1 % change stores {new} of {size} bytes: {du:#}"
        );
    }

    // The namespace goes; the restore (of the first backup) brings claims, data and pod
    // back as they were then.
    let nss: Api<Namespace> = Api::all(a.client.clone());
    nss.delete(&app, &DeleteParams::default()).await.unwrap();
    for _ in 0..600 {
        if nss.get_opt(&app).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    arca.ok(&a, &["restore", "create", "back", "--from-backup", "moved"]);
    let r = get(&a, RESTORE, Some(&arca.ns), "back").await.unwrap();
    assert_eq!(r["status"]["phase"], "Completed", "{r:#}\n{}", agent.log());
    assert_eq!(r["status"]["restoreItemOperationsCompleted"], 2);
    let dds = list_json(
        &a,
        DATA_DOWNLOAD,
        Some(&arca.ns),
        "arca.dev/restore-name=back",
    )
    .await;
    assert_eq!(dds.len(), 2);
    for dd in &dds {
        assert_eq!(dd["status"]["phase"], "Completed", "{dd:#}");
    }
    let d = arca.json(&a, &["restore", "describe", "back", "--details"]);
    assert_eq!(d[0]["downloads"].as_array().map(Vec::len), Some(2), "{d:#}");
    let text = arca.ok(&a, &["restore", "describe", "back", "--details"]);
    assert!(
        text.contains(&format!("{app}/disk: Completed on localhost")),
        "{text}"
    );
    let claim = until_long(
        &a,
        ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Some(&app),
        "data",
        60,
        |o| o.as_ref().is_some_and(|o| o["status"]["phase"] == "Bound"),
    )
    .await
    .unwrap();
    let pv = get(
        &a,
        ("v1", "PersistentVolume", "persistentvolumes"),
        None,
        claim["spec"]["volumeName"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        pv["spec"]["persistentVolumeReclaimPolicy"], "Delete",
        "the reclaim policy is put back: {pv:#}"
    );
    let log = pod_log_with(&pods, "writer", "sum:").await;
    assert!(
        log.lines().any(|l| l == sum),
        "the restored pod reads the backed-up data: {log} (want {sum})"
    );

    // The namespace's volume repository is known (the server maintains it), and deleting
    // a backup forgets the volume snapshots it made, not the other backup's.
    let repos = list_json(
        &a,
        ("arca.dev/v1", "BackupRepository", "backuprepositories"),
        Some(&arca.ns),
        "",
    )
    .await;
    assert!(
        repos
            .iter()
            .any(|r| r["spec"]["volumeNamespace"] == json!(app)
                && r["spec"]["repositoryType"] == "arca"),
        "{repos:#?}"
    );
    let volume_snapshots = || {
        let v = arca.volume_snapshots(&a, &app);
        let mut by_backup = BTreeSet::new();
        for s in v.as_array().unwrap() {
            by_backup.insert(format!(
                "{}/{}",
                s["labels"]["arca.dev/backup-name"].as_str().unwrap(),
                s["labels"]["arca.dev/pvc"].as_str().unwrap()
            ));
        }
        by_backup
    };
    assert_eq!(volume_snapshots().len(), 4, "two backups of two claims");
    // Four moves (48 MiB of files, a 16 MiB device): the agent stays far within the
    // 512 MiB a running move may use.
    let peak = agent.peak_rss_mib();
    eprintln!("node agent peak RSS: {peak} MiB");
    assert!(peak <= 512, "node agent peak RSS {peak} MiB");
    arca.ok(&a, &["backup", "delete", "moved2", "--confirm"]);
    let left = volume_snapshots();
    assert_eq!(
        left,
        BTreeSet::from(["moved/data".to_string(), "moved/disk".to_string()]),
        "the deleted backup's volume snapshots are forgotten"
    );
    drop(agent);
    nss.delete(&app, &DeleteParams::default()).await.unwrap();
}

/// A node agent killed (kill -9) in the middle of an upload's data, right after a
/// checkpoint was stored: Velero cancels such an upload (issue 7919); the restarted agent
/// of the node runs it again, uploads only what the checkpoint does not hold, its progress
/// never going back below what the status showed, and the backup completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_agent_killed_mid_upload_finishes_it_after_restarting() {
    let Some((a, image, arca)) = volume_setting("resume", true).await else {
        return;
    };
    // Held for good at the upload's first checkpoint (its index stored), the data after
    // it still to come: the volume takes several checkpoint intervals to read.
    let mut first = arca.node_agent_with(
        &a,
        &image,
        &[("ARCA_TEST_ENGINE_PAUSE", "writer:index-written")],
        &["--checkpoint-interval", "200ms"],
    );
    first.wait_log("node agent started").await;
    let idle = first.rss_mib();
    let app = format!("resume-{}", arca.suffix());
    const MIB: i64 = 384;
    app_writing_a_claim(
        &a,
        &app,
        "data",
        "Filesystem",
        "420Mi",
        &format!("dd if=/dev/urandom of=/data/f bs=1M count={MIB} 2>/dev/null && echo written && exec sleep 3600"),
    )
    .await;
    // Its volume repository is made by this first upload, and the server's first, full
    // maintenance of it runs at once, maybe between the kill and the run again: the
    // killed run's packs (no snapshot names them yet) stay usable while its session may
    // live (engine: maintenance keeps unused packs indexed after the oldest live backup
    // began).
    // Created through the API (the CLI would wait for it).
    let yaml = backup_yaml(&arca.ns, "resumed", &app) + "  snapshotMoveData: true\n";
    apply(&a, &yaml).await;
    first.wait_log("paused at writer:index-written").await;
    let upload = || async {
        let dus = uploads_of(&a, &arca.ns, "resumed").await;
        assert_eq!(dus.len(), 1);
        dus.into_iter().next().unwrap()
    };
    let du = upload().await;
    assert_eq!(du["status"]["phase"], "InProgress", "{du:#}");
    first.kill();
    let shown = du["status"]["progress"]["bytesDone"].as_i64().unwrap_or(0);

    let second = arca.node_agent(&a, &image, &[]);
    // Progress of the run again, as often as it can be read: never below what was shown,
    // never going back.
    let mut seen = vec![shown];
    let du = loop {
        let du = upload().await;
        if let Some(n) = du["status"]["progress"]["bytesDone"].as_i64() {
            seen.push(n);
        }
        if ["Completed", "Failed", "Canceled"]
            .contains(&du["status"]["phase"].as_str().unwrap_or(""))
        {
            break du;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        du["status"]["phase"],
        "Completed",
        "{du:#}\n{}",
        second.log()
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {seen:?}"
    );
    let total = du["status"]["progress"]["totalBytes"].as_i64().unwrap();
    assert!(total >= MIB << 20, "{du:#}");
    // What the killed run had checkpointed is not uploaded again; the rest is.
    let again = du["status"]["incrementalBytes"].as_i64().unwrap();
    assert!(
        0 < again && again < total,
        "uploaded again {again} of {total}: the kill fell mid-data and the checkpoint was reused\n{du:#}"
    );
    let b = until_long(&a, BACKUP, Some(&arca.ns), "resumed", 120, ended)
        .await
        .unwrap();
    assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", second.log());
    assert!(second.log().contains("completed"), "{}", second.log());
    // Memory: bounded while it moves, and given back once the move has ended: at least
    // half of what it took above idle (jemalloc purges freed pages within its decay time,
    // ~10 s; glibc kept 60 of 97 MiB).
    let peak = second.peak_rss_mib();
    let moved = second.rss_mib();
    let returned = |rss: u64| rss.saturating_sub(idle) <= peak.saturating_sub(idle) / 2;
    let mut after = moved;
    for _ in 0..300 {
        after = second.rss_mib();
        if returned(after) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!(
        "node agent RSS: idle {idle} MiB, peak {peak} MiB, at the end of the move {moved} MiB, then {after} MiB"
    );
    assert!(
        peak <= 512 && returned(after),
        "idle {idle}, peak {peak}, after {after} MiB"
    );

    // Restored while no node agent runs: the cause named at once, no DataDownload made,
    // the claim left Pending with its selector (nothing provisions an empty volume for
    // it); once an agent runs, a restore again (into another namespace) brings the data.
    drop(second);
    let leases: Api<arca_k8s::k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(a.client.clone(), &arca.ns);
    leases
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(arca_k8s::datamover::agent::PRESENCE),
        )
        .await
        .unwrap();
    let (bare, filled) = (format!("{app}-r"), format!("{app}-r2"));
    let restore = |name: &str, target: &str, code: i32| {
        let mapping = format!("{app}:{target}");
        let from = ["--from-backup", "resumed", "--namespace-mappings", &mapping];
        arca.expect(
            &a,
            code,
            &[&["restore", "create", name][..], &from].concat(),
        )
    };
    restore("without-agent", &bare, 3);
    let log = arca.ok(&a, &["restore", "logs", "without-agent"]);
    assert!(
        log.contains(&format!(
            "claim {bare}/data: its data is not restored: no node agent runs"
        )) && log.contains("--use-node-agent"),
        "{log}"
    );
    let claims: Api<arca_k8s::k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(a.client.clone(), &bare);
    let pending = claims.get("data").await.unwrap();
    assert!(
        pending
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some()
            && pending.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"),
        "{pending:?}"
    );
    let downloads = |name: &'static str| {
        let (a, ns) = (&a, arca.ns.clone());
        async move {
            list_json(
                a,
                DATA_DOWNLOAD,
                Some(&ns),
                &format!("{}={name}", arca_k8s::datamover::RESTORE_NAME),
            )
            .await
        }
    };
    assert!(downloads("without-agent").await.is_empty());
    // The agent writing it is killed (-9) halfway through handing the written volume to
    // the restored claim (Velero's RebindVolume): the restore claim deleted, the volume
    // not yet pointed at the target. Its class deletes released volumes: it is retained
    // there, and the next agent finishes the hand-over.
    let mut third = arca.node_agent(
        &a,
        &image,
        &[("ARCA_TEST_PAUSE_AT", "rebind-claim-deleted")],
    );
    let mapping = format!("{app}:{filled}");
    let restoring = arca
        .command(
            &a,
            &[
                "restore",
                "create",
                "with-agent",
                "--from-backup",
                "resumed",
                "--namespace-mappings",
                &mapping,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    third.wait_log("paused at rebind-claim-deleted").await;
    let dds = downloads("with-agent").await;
    let pv_name = dds[0]["metadata"]["annotations"][arca_k8s::datamover::agent::WRITTEN]
        .as_str()
        .expect("the written volume recorded")
        .to_string();
    let pv_of = || {
        get(
            &a,
            ("v1", "PersistentVolume", "persistentvolumes"),
            None,
            &pv_name,
        )
    };
    let pv = pv_of().await.expect("the written volume is there");
    assert_eq!(
        pv["spec"]["persistentVolumeReclaimPolicy"], "Retain",
        "{pv:#}"
    );
    third.kill();
    let released = until_long(
        &a,
        ("v1", "PersistentVolume", "persistentvolumes"),
        None,
        &pv_name,
        60,
        |o| {
            o.as_ref()
                .is_some_and(|o| o["status"]["phase"] == "Released")
        },
    )
    .await
    .expect("released, not deleted");
    assert_eq!(
        released["spec"]["persistentVolumeReclaimPolicy"], "Retain",
        "{released:#}"
    );
    let _fourth = arca.node_agent(&a, &image, &[]);
    let out = tokio::task::spawn_blocking(move || restoring.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_bound(&a, &filled, "data").await;
    let pv = pv_of().await.unwrap();
    assert_eq!(pv["spec"]["claimRef"]["namespace"], json!(filled), "{pv:#}");
    assert_eq!(
        pv["spec"]["persistentVolumeReclaimPolicy"], "Delete",
        "the class's policy is put back: {pv:#}"
    );
    let dds = downloads("with-agent").await;
    assert!(
        dds.len() == 1 && dds[0]["status"]["phase"] == "Completed",
        "{dds:#?}"
    );
    let pods: Api<arca_k8s::k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(a.client.clone(), &filled);
    pod_running(&pods, "app").await;
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    for n in [&app, &bare, &filled] {
        let _ = nss.delete(n, &DeleteParams::default()).await;
    }
}

/// An upload waiting for the node's one slot waits in Prepared, and that wait does not
/// count against the prepare timeout (Velero's users see queued uploads time out): with a
/// 30 s timeout (exposing takes 5-10 s here) and the first upload held longer, the second
/// stays Prepared past its acceptance plus the timeout, then both complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_queued_behind_another_does_not_time_out() {
    let Some((a, image, arca)) = volume_setting("queue", true).await else {
        return;
    };
    const TIMEOUT: i64 = 30;
    let (agent, go_on) = arca.node_agent_held(
        &a,
        &image,
        "writer:index-written",
        &["--data-mover-prepare-timeout", &format!("{TIMEOUT}s")],
    );
    agent.wait_log("node agent started").await;
    let apps = [1, 2].map(|i| format!("queue-{i}-{}", arca.suffix()));
    for app in &apps {
        app_writing_a_claim(
            &a,
            app,
            "data",
            "Filesystem",
            "16Mi",
            "echo x > /data/f && echo written && exec sleep 3600",
        )
        .await;
    }
    let yaml = backup_yaml(&arca.ns, "queued", &apps.join(", ")) + "  snapshotMoveData: true\n";
    apply(&a, &yaml).await;
    // The first upload held in its mover (its index being stored), the second exposed
    // and waiting for the slot.
    agent.wait_log("paused at writer:index-written").await;
    let phase = |du: &Value| du["status"]["phase"].as_str().unwrap_or("").to_string();
    let mut queued = None;
    for _ in 0..600 {
        let dus = uploads_of(&a, &arca.ns, "queued").await;
        let phases: Vec<String> = dus.iter().map(phase).collect();
        if let [p, q] = &phases[..]
            && [p.as_str(), q.as_str()].contains(&"InProgress")
            && [p.as_str(), q.as_str()].contains(&"Prepared")
        {
            let i = phases.iter().position(|p| p == "Prepared").unwrap();
            queued = dus[i]["metadata"]["name"].as_str().map(str::to_string);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let queued = queued.expect("one upload moving, the other Prepared");
    // Prepared past the timeout, and still not failed.
    let du = loop {
        let du = get(&a, DATA_UPLOAD, Some(&arca.ns), &queued).await.unwrap();
        assert_eq!(phase(&du), "Prepared", "{du:#}\n{}", agent.log());
        let accepted = du["status"]["acceptedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .expect("acceptedTimestamp");
        if chrono::Utc::now() > accepted + chrono::Duration::seconds(TIMEOUT + 2) {
            break du;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(du["status"]["message"].is_null(), "{du:#}");
    std::fs::write(&go_on, b"").unwrap();
    let b = until_long(&a, BACKUP, Some(&arca.ns), "queued", 120, ended)
        .await
        .unwrap();
    let _ = std::fs::remove_file(&go_on);
    assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", agent.log());
    let dus = uploads_of(&a, &arca.ns, "queued").await;
    assert!(
        dus.len() == 2 && dus.iter().all(|d| phase(d) == "Completed"),
        "{dus:#?}"
    );
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    for app in &apps {
        let _ = nss.delete(app, &DeleteParams::default()).await;
    }
}

/// `--snapshot-move-data` with no node agent in the cluster: the claim's data is not
/// moved and the backup says why within a minute (Velero waits its 30-minute prepare
/// timeout), with no snapshot or DataUpload left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_node_agent_volume_data_is_refused_and_named() {
    let Some((a, _)) = storage_cluster().await else {
        return;
    };
    let arca = Arca::new("noagent");
    arca.install(&a);
    let app = format!("noagent-{}", arca.suffix());
    app_writing_a_claim(
        &a,
        &app,
        "data",
        "Filesystem",
        "16Mi",
        "echo x > /data/f && echo written && exec sleep 3600",
    )
    .await;
    let started = std::time::Instant::now();
    let yaml = backup_yaml(&arca.ns, "unmoved", &app) + "  snapshotMoveData: true\n";
    apply(&a, &yaml).await;
    let b = until_long(&a, BACKUP, Some(&arca.ns), "unmoved", 120, ended)
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(90));
    assert_eq!(b["status"]["phase"], "PartiallyFailed", "{b:#}");
    let log = arca.ok(&a, &["backup", "logs", "unmoved"]);
    assert!(
        log.contains(&format!(
            "claim {app}/data: its data is not moved: no node agent runs"
        )) && log.contains("--use-node-agent"),
        "{log}"
    );
    let dus = uploads_of(&a, &arca.ns, "unmoved").await;
    assert!(dus.is_empty(), "{dus:#?}");
    let snaps = list_json(&a, VOLUME_SNAPSHOT, Some(&app), "").await;
    assert!(snaps.is_empty(), "{snaps:#?}");
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    let _ = nss.delete(&app, &DeleteParams::default()).await;
}

/// A namespace with its volume data moves to cluster B through the bucket alone: backed
/// up with `--snapshot-move-data` in A, synced into B, restored there by B's node agent
/// into a volume of B's storage; B's pod reads the bytes A's pod wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_data_migrates_to_a_second_cluster_through_the_bucket() {
    use arca_k8s::k8s_openapi::api::core::v1::{Namespace, Pod};
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some((a, b)) = clusters().await else {
        return;
    };
    let (Some(_), Some(_)) = (storage::serve(&a.kubeconfig), storage::serve(&b.kubeconfig)) else {
        return;
    };
    let (image_a, image_b) = (arca_image(&a), arca_image(&b));
    let arca = Arca {
        server_flags: vec!["--backup-sync-period", "1s"],
        ..Arca::new("volmig")
    };
    let creds = arca.dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();
    let prefix = format!("volmig-{}", arca.suffix());
    let config = format!("region=us-east-1,s3Url={endpoint}");
    let install = |c: &Cluster| {
        arca.ok(
            c,
            &[
                "install",
                "--provider",
                "aws",
                "--bucket",
                "arca-test",
                "--prefix",
                &prefix,
                "--backup-location-config",
                &config,
                "--secret-file",
                creds.to_str().unwrap(),
            ],
        );
    };
    install(&a);
    let _agent_a = arca.node_agent(&a, &image_a, &[]);
    let app = format!("volmig-{}", arca.suffix());
    let script = "[ -f /data/done ] || { dd if=/dev/urandom of=/data/f bs=1M count=8 2>/dev/null && touch /data/done; }; echo sum:$(md5sum /data/f | cut -c1-32); exec sleep 3600";
    let y = app_with_claim(&app, "data", "Filesystem", "32Mi", script);
    apply(&a, &y).await;
    let pods_a: Api<Pod> = Api::namespaced(a.client.clone(), &app);
    let log = pod_log_with(&pods_a, "app", "sum:").await;
    let sum = log
        .lines()
        .find(|l| l.starts_with("sum:"))
        .unwrap()
        .to_string();
    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "vol",
            "--include-namespaces",
            &app,
            "--snapshot-move-data",
        ],
    );

    // Cluster B: the bucket, its own node agent and storage.
    install(&b);
    let _agent_b = arca.node_agent(&b, &image_b, &[]);
    until_long(&b, BACKUP, Some(&arca.ns), "vol", 60, |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Completed")
    })
    .await;
    arca.ok(&b, &["restore", "create", "vol-r", "--from-backup", "vol"]);
    let r = get(&b, RESTORE, Some(&arca.ns), "vol-r").await.unwrap();
    assert_eq!(r["status"]["phase"], "Completed", "{r:#}");
    assert_eq!(r["status"]["restoreItemOperationsCompleted"], 1);
    let pods_b: Api<Pod> = Api::namespaced(b.client.clone(), &app);
    let log = pod_log_with(&pods_b, "app", "sum:").await;
    assert!(
        log.lines().any(|l| l == sum),
        "cluster B's pod reads cluster A's data: {log} (want {sum})"
    );
    for c in [&a, &b] {
        let nss: Api<Namespace> = Api::all(c.client.clone());
        let _ = nss.delete(&app, &DeleteParams::default()).await;
    }
}

/// A backup canceled while its upload moves data: the node agent stops the mover
/// (Canceling, then Canceled), the backup ends Canceled with nothing stored, and every
/// snapshot and exposer object goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_canceled_mid_upload_stops_its_mover_and_cleans_up() {
    let Some((a, image, arca)) = volume_setting("cancelmove", true).await else {
        return;
    };
    // The mover is held after its first batch (16 MiB read and stored, the rest to come)
    // until the cancel has been asked for: a release build moves the whole volume in
    // about a second, before a cancel could reach it.
    let (agent, go_on) = arca.node_agent_held(&a, &image, "volume:batch-read", &[]);
    let app = format!("cancelmove-{}", arca.suffix());
    app_writing_a_claim(
        &a,
        &app,
        "disk",
        "Block",
        "1Gi",
        "dd if=/dev/urandom of=/dev/xvda bs=1M count=768 conv=fsync 2>/dev/null && echo written && exec sleep 3600",
    )
    .await;
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: stopped, namespace: {}}}\nspec:\n  includedNamespaces: [{app}]\n  snapshotMoveData: true\n",
            arca.ns
        ),
    )
    .await;
    // Canceled once data is moving.
    let mut du_name = String::new();
    for _ in 0..1200 {
        let dus = uploads_of(&a, &arca.ns, "stopped").await;
        if let Some(du) = dus.first()
            && du["status"]["phase"] == "InProgress"
            && du["status"]["progress"]["bytesDone"].as_i64().unwrap_or(0) > 0
        {
            du_name = du["metadata"]["name"].as_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !du_name.is_empty(),
        "the upload never moved data:\n{}",
        agent.log()
    );
    agent.wait_log("paused at volume:batch-read").await;
    arca.ok(&a, &["backup", "cancel", "stopped"]);
    until_long(&a, DATA_UPLOAD, Some(&arca.ns), &du_name, 60, |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Canceling")
    })
    .await
    .unwrap();
    std::fs::write(&go_on, b"").unwrap();
    let du = until_long(&a, DATA_UPLOAD, Some(&arca.ns), &du_name, 60, |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Canceled")
    })
    .await
    .unwrap();
    let done = du["status"]["progress"]["bytesDone"].as_i64().unwrap_or(0);
    assert!(done < 768 << 20, "stopped before the end: {done}");
    let b = until_long(&a, BACKUP, Some(&arca.ns), "stopped", 30, |o| {
        o.as_ref()
            .is_some_and(|o| o["status"]["phase"] == "Canceled")
    })
    .await
    .unwrap();
    assert!(b["status"]["snapshotId"].is_null(), "nothing stored: {b:#}");
    // The namespace's volume repository, read as stored (no cache), checks clean down to
    // the data the canceled move had uploaded: indexed as it stopped (for a run again to
    // reuse), every pack read back.
    let repo = arca.dir.path().join("bsl/volumes").join(&app);
    let check = arca.json(
        &a,
        &[
            "--repo",
            repo.to_str().unwrap(),
            "repo",
            "check",
            "--read-data",
            "--no-cache",
        ],
    );
    assert_eq!(check["ok"], true, "{check:#}");
    assert_eq!(check["snapshots"], 0, "{check:#}");
    let packs = check["packs"].as_u64().unwrap();
    assert!(packs > 0 && check["packs_read"] == packs, "{check:#}");
    assert_eq!(check["unindexed_packs"], json!([]), "{check:#}");
    cleaned_up(&a, &arca.ns, &app, &du_name).await;
    assert!(
        agent.log().contains("Canceled") || agent.log().contains("canceled"),
        "{}",
        agent.log()
    );
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    let _ = nss.delete(&app, &DeleteParams::default()).await;
}

/// A namespace with one claim of the stand-in's class and a pod `app` running `script`
/// with it at /data (Filesystem) or /dev/xvda (Block).
/// A volume test's setting: cluster A with its storage stand-in served, the arca image,
/// and Arca installed in a namespace of the test's own; None without a cluster.
/// Cluster A with the storage stand-in serving it (its root directory).
async fn storage_cluster() -> Option<(Cluster, PathBuf)> {
    let a = cluster("ARCA_TEST_KUBECONFIG").await?;
    let root = storage::serve(&a.kubeconfig)?;
    Some((a, root))
}

async fn volume_setting(name: &str, auto_server: bool) -> Option<(Cluster, String, Arca)> {
    let (a, _) = storage_cluster().await?;
    let image = arca_image(&a);
    let arca = Arca {
        auto_server,
        ..Arca::new(name)
    };
    arca.install(&a);
    Some((a, image, arca))
}

/// Wait until a pod's status says Running: its log can show before the kubelet's status
/// write lands, and a backup reads only running pods' volumes.
async fn pod_running(pods: &Api<arca_k8s::k8s_openapi::api::core::v1::Pod>, name: &str) {
    for _ in 0..600 {
        let p = pods.get(name).await.unwrap();
        if p.status.and_then(|s| s.phase).as_deref() == Some("Running") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("pod {name} not Running after a minute");
}

/// Name the restore-wait image as Velero's users do: the plugin ConfigMap.
async fn restore_wait_image(c: &Cluster, arca: &Arca, image: &str) {
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fs-restore-config\n  namespace: {}\n  labels: {{arca.dev/plugin-config: \"\", arca.dev/pod-volume-restore: RestoreItemAction}}\ndata: {{image: \"{image}\"}}\n",
            arca.ns
        ),
    )
    .await;
}

/// Delete a namespace and wait until it is gone.
async fn delete_namespace(c: &Cluster, name: &str) {
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
    nss.delete(name, &DeleteParams::default()).await.unwrap();
    // The namespace controller takes 15-20 s per running pod's round on a quiet node, and
    // several pods on a busy one can take over a minute.
    for _ in 0..1800 {
        if nss.get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("namespace {name} still there after three minutes");
}

const POD_VOLUME_BACKUP: (&str, &str, &str) =
    ("arca.dev/v1", "PodVolumeBackup", "podvolumebackups");
const POD_VOLUME_RESTORE: (&str, &str, &str) =
    ("arca.dev/v1", "PodVolumeRestore", "podvolumerestores");

/// File-system backup: a running pod's claim and emptyDir read live by the node agent
/// (`--default-volumes-to-fs-backup`, one volume excluded by annotation, a config map
/// never), the namespace deleted, and the restore: the pod waits in its restore-wait init
/// container until the node agent has written both volumes, then reads the same data.
#[tokio::test(flavor = "multi_thread")]
async fn pod_volumes_are_backed_up_by_file_system_and_restored_under_the_init_container() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some((a, image, arca)) = volume_setting("fsb", true).await else {
        return;
    };
    let agent = arca.node_agent(&a, &image, &[]);
    let app = format!("fsb-{}", arca.suffix());
    let class = storage::CLASS;
    // Writes once (a restored pod finds its data and does not write again), prints what
    // the two backed-up volumes hold and whether the excluded one is empty.
    let script = "[ -f /data/done ] || { mkdir -p /data/d /cache/c && dd if=/dev/urandom of=/data/d/big bs=1M count=6 2>/dev/null && echo hello > /cache/c/note && ln -s c/note /cache/link && echo tmp > /scratch/tmp && touch /data/done; }; echo sum:$(cat /data/d/big /cache/c/note | md5sum | cut -c1-32):$(readlink /cache/link):$(ls /scratch | wc -l):$(ls -a /data /cache | grep -c .arca); exec sleep 3600";
    apply(
        &a,
        &(ns(&app)
            + &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {app}}}\n---\n\
                 apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: conf, namespace: {app}}}\ndata: {{a: b}}\n---\n\
                 apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {app}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  resources: {{requests: {{storage: 64Mi}}}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: {app}\n  annotations: {{backup.velero.io/backup-volumes-excludes: scratch}}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, '{script}']\n    volumeMounts: [{{name: data, mountPath: /data}}, {{name: cache, mountPath: /cache}}, {{name: scratch, mountPath: /scratch}}, {{name: conf, mountPath: /conf}}]\n  volumes:\n  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}\n  - {{name: cache, emptyDir: {{}}}}\n  - {{name: scratch, emptyDir: {{}}}}\n  - {{name: conf, configMap: {{name: conf}}}}\n"
            )),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &app);
    let log = pod_log_with(&pods, "app", "sum:").await;
    let sum = log
        .lines()
        .find(|l| l.starts_with("sum:"))
        .unwrap()
        .to_string();
    assert!(sum.ends_with(":c/note:1:0"), "{sum}");
    pod_running(&pods, "app").await;

    arca.ok(
        &a,
        &[
            "backup",
            "create",
            "fsb",
            "--include-namespaces",
            &app,
            "--default-volumes-to-fs-backup",
        ],
    );
    let b = get(&a, BACKUP, Some(&arca.ns), "fsb").await.unwrap();
    assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", agent.log());
    let pvbs = list_json(
        &a,
        POD_VOLUME_BACKUP,
        Some(&arca.ns),
        "arca.dev/backup-name=fsb",
    )
    .await;
    let mut vols: Vec<&str> = pvbs
        .iter()
        .map(|p| p["spec"]["volume"].as_str().unwrap())
        .collect();
    vols.sort();
    assert_eq!(
        vols,
        ["cache", "data"],
        "neither the excluded nor the config map: {pvbs:#?}"
    );
    for p in &pvbs {
        assert_eq!(p["status"]["phase"], "Completed", "{p:#}");
        assert_eq!(p["spec"]["node"], "localhost");
        assert!(
            p["status"]["snapshotID"]
                .as_str()
                .is_some_and(|s| s.len() == 64),
            "{p:#}"
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Backup");
    }
    let data = pvbs.iter().find(|p| p["spec"]["volume"] == "data").unwrap();
    assert!(
        data["status"]["progress"]["totalBytes"].as_i64().unwrap() >= 6 << 20,
        "{data:#}"
    );
    assert_eq!(data["metadata"]["annotations"]["arca.dev/pvc-name"], "data");
    let text = arca.ok(&a, &["backup", "describe", "fsb", "--details"]);
    assert!(text.contains("Pod volumes (file-system backup):"), "{text}");
    assert!(
        text.contains(&format!(
            "volume cache of pod {app}/app: Completed on localhost"
        )),
        "{text}"
    );
    // The claim was read by file system: no CSI snapshot of it.
    assert!(uploads_of(&a, &arca.ns, "fsb").await.is_empty());

    // The namespace goes; the restore brings the pod back with its volumes' data.
    delete_namespace(&a, &app).await;
    // The restore-wait image as Velero configures it: the plugin ConfigMap.
    restore_wait_image(&a, &arca, &image).await;
    arca.ok(
        &a,
        &["restore", "create", "fsb-back", "--from-backup", "fsb"],
    );
    let r = get(&a, RESTORE, Some(&arca.ns), "fsb-back").await.unwrap();
    assert_eq!(r["status"]["phase"], "Completed", "{r:#}\n{}", agent.log());
    let pvrs = list_json(
        &a,
        POD_VOLUME_RESTORE,
        Some(&arca.ns),
        "arca.dev/restore-name=fsb-back",
    )
    .await;
    assert_eq!(pvrs.len(), 2, "{pvrs:#?}");
    let pod = pods.get("app").await.unwrap();
    let inits = pod.spec.clone().unwrap().init_containers.unwrap();
    assert_eq!(inits[0].name, "restore-wait");
    for p in &pvrs {
        assert_eq!(p["status"]["phase"], "Completed", "{p:#}");
        assert_eq!(p["status"]["node"], "localhost");
        assert_eq!(
            p["spec"]["pod"]["uid"].as_str(),
            pod.metadata.uid.as_deref()
        );
    }
    let text = arca.ok(&a, &["restore", "describe", "fsb-back", "--details"]);
    assert!(
        text.contains(&format!(
            "volume data of pod {app}/app: Completed on localhost"
        )),
        "{text}"
    );
    // The same data, the excluded volume empty, the done files gone.
    let log = pod_log_with(&pods, "app", "sum:").await;
    let want = sum.replace(":c/note:1:0", ":c/note:0:0");
    assert!(
        log.lines().any(|l| l == want),
        "the restored pod reads the backed-up data: {log} (want {want})\n{}",
        agent.log()
    );

    // Deleting the backup forgets its pod volume snapshots.
    let snapshots = || arca.volume_snapshots(&a, &app).as_array().unwrap().len();
    assert_eq!(snapshots(), 2);
    arca.ok(&a, &["backup", "delete", "fsb", "--confirm"]);
    assert_eq!(
        snapshots(),
        0,
        "the deleted backup's pod volume snapshots are forgotten"
    );
    drop(agent);
    delete_namespace(&a, &app).await;
}

/// Pod volumes two at a time (loadConcurrency 2 from the node agent's ConfigMap): both
/// of a pod's PodVolumeBackups are InProgress at once on the node (the agent paused right
/// after starting each, so neither can finish and free its slot); the agent killed there
/// and a new one (one at a time) started: both are read again to completion (Velero
/// cancels them), and the backup completes. Then a restore of it into a copy of the
/// namespace whose server is killed (-9) once the pod exists, before its
/// PodVolumeRestores: the next leader finds the pod waiting for this restore and writes
/// its volumes (else it would wait in its init container forever); the node agent
/// writing them is killed once the first volume's files are written, and the next one
/// writes them again: the pod reads the backed-up data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_volume_backups_run_two_at_a_time_and_survive_a_killed_agent() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some((a, image, arca)) = volume_setting("fsconc", false).await else {
        return;
    };
    apply(
        &a,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: agent-config, namespace: {}}}\ndata:\n  node-agent-config.json: '{{\"loadConcurrency\": {{\"globalConfig\": 2}}}}'\n",
            arca.ns
        ),
    )
    .await;
    let mut first = arca.node_agent_with(
        &a,
        &image,
        &[("ARCA_TEST_PAUSE_AT", "pod-volume-backup-in-progress")],
        &["--node-agent-configmap", "agent-config"],
    );
    let mut server = arca.server_with(&a, "3s", &[]);
    server.wait_log("leading").await;
    let app = format!("fsconc-{}", arca.suffix());
    apply(
        &a,
        &(ns(&app)
            + &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {app}}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: {app}\n  annotations: {{backup.arca.dev/backup-volumes: \"a,b\"}}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, '[ -f /a/f ] || {{ cat /proc/sys/kernel/random/uuid > /a/f && cp /a/f /b/f; }}; echo got:$(cat /a/f):$(cat /b/f); exec sleep 3600']\n    volumeMounts: [{{name: a, mountPath: /a}}, {{name: b, mountPath: /b}}]\n  volumes:\n  - {{name: a, emptyDir: {{}}}}\n  - {{name: b, emptyDir: {{}}}}\n"
            )),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &app);
    let log = pod_log_with(&pods, "app", "got:").await;
    let got = log
        .lines()
        .find(|l| l.starts_with("got:"))
        .unwrap()
        .to_string();
    pod_running(&pods, "app").await;
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: conc, namespace: {}}}\nspec:\n  includedNamespaces: [{app}]\n",
            arca.ns
        ),
    )
    .await;
    let mut both = Vec::new();
    for _ in 0..600 {
        both = list_json(
            &a,
            POD_VOLUME_BACKUP,
            Some(&arca.ns),
            "arca.dev/backup-name=conc",
        )
        .await;
        if both.len() == 2 && both.iter().all(|p| p["status"]["phase"] == "InProgress") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        both.len() == 2 && both.iter().all(|p| p["status"]["phase"] == "InProgress"),
        "two at once: {both:#?}\n{}",
        first.log()
    );
    first.kill();
    let second = arca.node_agent(&a, &image, &[]);
    let b = until_long(&a, BACKUP, Some(&arca.ns), "conc", 120, ended)
        .await
        .unwrap();
    assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", second.log());
    for p in list_json(
        &a,
        POD_VOLUME_BACKUP,
        Some(&arca.ns),
        "arca.dev/backup-name=conc",
    )
    .await
    {
        assert_eq!(p["status"]["phase"], "Completed", "{p:#}");
        assert_eq!(
            p["status"]["progress"]["totalBytes"], 37,
            "a UUID and its newline: {p:#}"
        );
    }

    server.kill();
    restore_wait_image(&a, &arca, &image).await;
    // The agent that writes the restore's volumes is held once the first volume's files
    // are on the pod's volume (the restore not done), and killed there.
    drop(second);
    let mut writer = arca.node_agent_with(
        &a,
        &image,
        &[("ARCA_TEST_ENGINE_PAUSE", "restore:batch-written")],
        &[],
    );
    let mut paused = arca.server_with(&a, "3s", &[("ARCA_TEST_PAUSE_AT", "restore-pods-created")]);
    paused.wait_log("leading").await;
    let copy = format!("{app}-copy");
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Restore\nmetadata: {{name: conc-back, namespace: {}}}\nspec:\n  backupName: conc\n  namespaceMapping: {{{app}: {copy}}}\n",
            arca.ns
        ),
    )
    .await;
    paused.wait_log("paused at restore-pods-created").await;
    let copies: Api<Pod> = Api::namespaced(a.client.clone(), &copy);
    let held = copies.get("app").await.unwrap();
    assert_eq!(
        held.spec.unwrap().init_containers.unwrap()[0].name,
        "restore-wait"
    );
    assert!(
        list_json(
            &a,
            POD_VOLUME_RESTORE,
            Some(&arca.ns),
            "arca.dev/restore-name=conc-back"
        )
        .await
        .is_empty()
    );
    paused.kill();
    let third = arca.server_with(&a, "3s", &[]);
    writer.wait_log("paused at restore:batch-written").await;
    let writing = list_json(
        &a,
        POD_VOLUME_RESTORE,
        Some(&arca.ns),
        "arca.dev/restore-name=conc-back",
    )
    .await;
    assert!(
        writing.iter().any(|p| p["status"]["phase"] == "InProgress"),
        "{writing:#?}"
    );
    writer.kill();
    let fourth = arca.node_agent(&a, &image, &[]);
    let r = until_long(&a, RESTORE, Some(&arca.ns), "conc-back", 120, ended)
        .await
        .unwrap();
    assert_eq!(
        r["status"]["phase"],
        "Completed",
        "{r:#}\n{}\n{}",
        third.log(),
        fourth.log()
    );
    let log = pod_log_with(&copies, "app", "got:").await;
    assert!(
        log.lines().any(|l| l == got),
        "the copy reads the backed-up data: {log} (want {got})"
    );

    // Its deletion killed (-9) once the pod volume snapshots are forgotten, before the
    // record: the Backup stays (Deleting) and the next leader ends the request, the record
    // gone too (left, a sync would bring the backup back, naming data that is gone).
    drop(third);
    let volume_snapshots = || arca.volume_snapshots(&a, &app).as_array().unwrap().len();
    assert_eq!(volume_snapshots(), 2);
    let mut deleting = arca.server_with(
        &a,
        "3s",
        &[("ARCA_TEST_PAUSE_AT", "deletion-volumes-forgotten")],
    );
    deleting.wait_log("leading").await;
    arca_k8s::manage::request_deletion(&a.client, &arca.ns, "conc")
        .await
        .unwrap();
    deleting
        .wait_log("paused at deletion-volumes-forgotten")
        .await;
    assert_eq!(volume_snapshots(), 0);
    let b = get(&a, BACKUP, Some(&arca.ns), "conc").await.unwrap();
    assert_eq!(b["status"]["phase"], "Deleting", "{b:#}");
    deleting.kill();
    let fifth = arca.server_with(&a, "3s", &[]);
    until_long(&a, BACKUP, Some(&arca.ns), "conc", 120, Option::is_none).await;
    let records = arca.dir.path().join("bsl/resources");
    let left = arca.ok(
        &a,
        &[
            "--repo",
            records.to_str().unwrap(),
            "snapshot",
            "list",
            "--json",
        ],
    );
    let left: Value = serde_json::from_str(&left).unwrap();
    assert!(
        !left
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["labels"]["arca.dev/backup-name"] == "conc"),
        "the record is gone: {left:#}\n{}",
        fifth.log()
    );
    drop(fifth);
    for n in [&app, &copy] {
        delete_namespace(&a, n).await;
    }
}

/// Benchmark, not run by the test command (`cargo test --release --test k8s -- --ignored
/// bench_volume_data`): volume data moved through the whole Kubernetes path (a backup with
/// `--snapshot-move-data`: snapshot, exposer, node agent) versus the mover alone
/// (`arca snapshot create`) on the same volume, for 200,000 small files and for a 4 GiB
/// block volume, with the node agent's peak memory (a fresh agent for each). Prints
/// BENCHMARKS.md's table rows.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_volume_data() {
    let Some((a, image, arca)) = volume_setting("bench", true).await else {
        return;
    };
    let secs = |du: &Value, a: &str, b: &str| {
        let t = |k: &str| {
            du["status"][k]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        };
        (t(b) - t(a)).num_seconds().max(1) as f64
    };
    let mut rows = Vec::new();
    for (what, mode, size, script) in [
        (
            "200,000 files of 1-20 bytes in 200 directories",
            "Filesystem",
            "4Gi",
            "for d in $(seq 200); do mkdir -p /data/$d; cd /data/$d; i=0; while [ $i -lt 1000 ]; do echo $d-$i > $i; i=$((i+1)); done; done; sync; echo written; exec sleep 3600",
        ),
        (
            "4 GiB block volume, random bytes",
            "Block",
            "4Gi",
            "dd if=/dev/urandom of=/dev/xvda bs=4M count=1024 conv=fsync 2>/dev/null; echo written; exec sleep 3600",
        ),
    ] {
        let app = format!("bench-{}-{}", mode.to_lowercase(), arca.suffix());
        app_writing_a_claim(&a, &app, "v", mode, size, script).await;
        let agent = arca.node_agent(&a, &image, &[]);
        let backup = format!("b-{}", mode.to_lowercase());
        let t0 = std::time::Instant::now();
        arca.ok(
            &a,
            &[
                "backup",
                "create",
                &backup,
                "--include-namespaces",
                &app,
                "--snapshot-move-data",
            ],
        );
        let whole = t0.elapsed().as_secs_f64();
        let dus = uploads_of(&a, &arca.ns, &backup).await;
        let du = &dus[0];
        assert_eq!(du["status"]["phase"], "Completed", "{du:#}");
        let bytes = du["status"]["progress"]["totalBytes"].as_f64().unwrap();
        let moving = secs(du, "startTimestamp", "completionTimestamp");
        let peak = agent.peak_rss_mib();
        drop(agent);
        // The mover alone, on the same volume (its backing file system or file).
        let claim = get(
            &a,
            ("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
            Some(&app),
            "v",
        )
        .await
        .unwrap();
        let pv = get(
            &a,
            ("v1", "PersistentVolume", "persistentvolumes"),
            None,
            claim["spec"]["volumeName"].as_str().unwrap(),
        )
        .await
        .unwrap();
        let backing = pv["metadata"]["annotations"]["standin.storage.arca.test/backing"]
            .as_str()
            .unwrap()
            .to_string();
        let repo = arca
            .dir
            .path()
            .join(format!("alone-{}", mode.to_lowercase()));
        let repo_s = repo.to_str().unwrap().to_string();
        arca.ok(&a, &["--repo", &repo_s, "repo", "init"]);
        let mut args = vec!["--repo", &repo_s, "snapshot", "create"];
        if mode == "Block" {
            args.push("--block");
        }
        args.push(&backing);
        let t0 = std::time::Instant::now();
        let out = Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg(env!("CARGO_BIN_EXE_arca"))
            .args(&args)
            .env("ARCA_PASSWORD", PASSWORD)
            .env("ARCA_CACHE_DIR", arca.dir.path().join("alone-cache"))
            .output()
            .unwrap();
        let alone = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let alone_rss: f64 = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse::<f64>()
            .unwrap()
            / 1024.0;
        let mib = bytes / (1 << 20) as f64;
        // Small files: files a second; a device: MiB a second.
        let rate = |secs: f64| {
            if mode == "Block" {
                format!("{:.0} MiB/s", mib / secs)
            } else {
                format!("{:.0} files/s", 200_000.0 / secs)
            }
        };
        rows.push(format!(
            "| {what} | {mib:.0} | {whole:.1} s | {moving:.0} s, {} | {peak} MiB | {alone:.1} s, {} | {alone_rss:.0} MiB | {:.2}x |",
            rate(moving),
            rate(alone),
            whole / alone
        ));
        let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
        let _ = nss.delete(&app, &DeleteParams::default()).await;
    }
    // BENCHMARKS.md's Kubernetes section, from its mark to the end (compare.py keeps it).
    let mark = "<!-- kubernetes: cargo test -p arca --test k8s -- --ignored bench_volume_data -->";
    let (command, build) = if cfg!(debug_assertions) {
        (
            "cargo test -p arca --test k8s -- --ignored bench_volume_data",
            "test build (its own code at opt-level 1, dependencies at 2: read the ratios)",
        )
    } else {
        (
            "cargo test --release -p arca --test k8s -- --ignored bench_volume_data",
            "release build",
        )
    };
    let section = format!(
        "{mark}\n\n## Volume data through Kubernetes\n\n\
         Generated by `{}` on the test \
         cluster's real node ({}, one run). A pod writes the volume (a Filesystem claim: 200 \
         directories of 1,000 files of a few bytes; a Block claim: 4 GiB from /dev/urandom); \
         `arca backup create --snapshot-move-data` takes it through the whole path (CSI snapshot \
         of the stand-in storage, exposer claim and pod, the node agent's upload into \
         `<bucket>/volumes/<namespace>`, clean-up), timed by the CLI that waits for it and by \
         the DataUpload's start and completion (to the second); a fresh node agent for each \
         volume, its peak RSS (VmHWM) after the backup. The mover alone: `arca snapshot \
         create` (`--block`) of the same volume's backing directory or file into a new local \
         repository, under `/usr/bin/time`. Both run the {} of `arca` (the image's binary).\n\n\
         | volume | MiB | backup, whole (CLI) | DataUpload InProgress | node agent peak RSS | mover alone | its peak RSS | whole / alone |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{}\n",
        command,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        build,
        rows.join("\n")
    );
    eprintln!("{section}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap();
    let kept = old.split(mark).next().unwrap().trim_end();
    std::fs::write(&path, format!("{kept}\n\n{section}")).unwrap();
}

/// Namespace `app` with its pod writing its claim (`script` says `written` when done),
/// waited on until it has.
async fn app_writing_a_claim(
    a: &Cluster,
    app: &str,
    claim: &str,
    mode: &str,
    size: &str,
    script: &str,
) {
    apply(a, &app_with_claim(app, claim, mode, size, script)).await;
    let pods: Api<arca_k8s::k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(a.client.clone(), app);
    pod_log_with(&pods, "app", "written").await;
}

/// The DataUploads of backup `backup`.
async fn uploads_of(a: &Cluster, ns: &str, backup: &str) -> Vec<Value> {
    let labels = format!("arca.dev/backup-name={backup}");
    list_json(a, DATA_UPLOAD, Some(ns), &labels).await
}

fn app_with_claim(app: &str, claim: &str, mode: &str, size: &str, script: &str) -> String {
    let class = storage::CLASS;
    let attach = if mode == "Block" {
        "volumeDevices: [{name: v, devicePath: /dev/xvda}]"
    } else {
        "volumeMounts: [{name: v, mountPath: /data}]"
    };
    ns(app)
        + &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {app}}}\n---\n\
             apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {claim}, namespace: {app}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: {mode}\n  storageClassName: {class}\n  resources: {{requests: {{storage: {size}}}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: app, namespace: {app}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, '{script}']\n    {attach}\n  volumes:\n  - {{name: v, persistentVolumeClaim: {{claimName: {claim}}}}}\n"
        )
}

/// A DataUpload's exposer objects are gone: marked cleaned up, its snapshot content
/// deleted, no VolumeSnapshot left in the app's or the install namespace.
async fn cleaned_up(c: &Cluster, install_ns: &str, app: &str, du_name: &str) {
    until_long(c, DATA_UPLOAD, Some(install_ns), du_name, 60, |o| {
        o.as_ref()
            .is_some_and(|o| o["metadata"]["annotations"]["arca.dev/cleaned-up"] == "true")
    })
    .await;
    until_long(
        c,
        VOLUME_SNAPSHOT_CONTENT,
        None,
        du_name,
        30,
        Option::is_none,
    )
    .await;
    // Deleted by then; the snapshot controller's finalizer may hold one a moment longer.
    for n in [app, install_ns] {
        let mut left = Vec::new();
        for _ in 0..300 {
            left = list_json(c, VOLUME_SNAPSHOT, Some(n), "").await;
            if left.is_empty() {
                break;
            }
            assert!(
                left.iter()
                    .all(|s| s["metadata"]["deletionTimestamp"].is_string()),
                "snapshots left in {n}, not deleted: {left:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(left.is_empty(), "snapshots left in {n}: {left:#?}");
    }
}

/// Whether a backup or restore read by `until_long` has ended.
fn ended(o: &Option<Value>) -> bool {
    o.as_ref().is_some_and(|o| {
        ["Completed", "PartiallyFailed", "Failed"]
            .contains(&o["status"]["phase"].as_str().unwrap_or(""))
    })
}

/// Run a command in a pod's first container; its standard output.
async fn exec_out(
    pods: &Api<arca_k8s::k8s_openapi::api::core::v1::Pod>,
    pod: &str,
    cmd: &[&str],
) -> String {
    let ap = arca_k8s::kube::api::AttachParams::default()
        .stdout(true)
        .stderr(false);
    let mut ex = pods.exec(pod, cmd.to_vec(), &ap).await.expect("exec");
    let mut got = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut ex.stdout().unwrap(), &mut got)
        .await
        .unwrap();
    ex.join().await.unwrap();
    got
}

/// Hooks on the real node. Backup: a pod whose pre hook (Arca's annotations) writes a
/// marker that must be in its file-system backup and whose post hook (Velero's) removes it
/// from the live pod; a pre hook failing with Fail (that pod, its volume and its post hook
/// left out, the backup PartiallyFailed with the hook's output); one failing with Continue
/// (a warning), one hanging past its timeout, one on a pod that is not running (skipped);
/// spec hooks chosen by label. Restore: an init container seeding a file after
/// restore-wait, which the application then reads; an exec hook that waits for its
/// container to be ready (it fails if run before).
#[tokio::test(flavor = "multi_thread")]
async fn hooks_run_around_the_backup_and_while_pods_come_back() {
    use arca_k8s::k8s_openapi::api::core::v1::Pod;
    let Some((a, image, arca)) = volume_setting("hooks", true).await else {
        return;
    };
    let agent = arca.node_agent(&a, &image, &[]);
    let app = format!("hooks-{}", arca.suffix());
    let pod = |name: &str, annotations: &str, extra: &str, script: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {app}\n  annotations:\n{annotations}\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n{extra}  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, '{script}']\n    volumeMounts: [{{name: data, mountPath: /data}}]\n  volumes:\n  - {{name: data, emptyDir: {{}}}}\n"
        )
    };
    let sleep = "exec sleep 3600";
    let yaml = ns(&app)
        + &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {app}}}\n")
        + &pod(
            "db",
            "    backup.arca.dev/backup-volumes: data\n    pre.hook.backup.arca.dev/container: c\n    pre.hook.backup.arca.dev/command: '[\"sh\",\"-c\",\"echo frozen > /data/marker && echo froze-it\"]'\n    pre.hook.backup.arca.dev/on-error: Fail\n    post.hook.backup.velero.io/command: '[\"rm\",\"/data/marker\"]'",
            "",
            "echo start:$(cat /data/marker 2>/dev/null):$(cat /data/seed 2>/dev/null); exec sleep 3600",
        )
        + &pod(
            "fail",
            "    backup.arca.dev/backup-volumes: data\n    pre.hook.backup.velero.io/command: '[\"sh\",\"-c\",\"echo boom >&2; exit 3\"]'\n    pre.hook.backup.velero.io/on-error: Fail\n    post.hook.backup.velero.io/command: '[\"touch\",\"/data/post-ran\"]'",
            "",
            sleep,
        )
        + &pod(
            "cont",
            "    pre.hook.backup.arca.dev/command: '[\"false\"]'\n    init.hook.restore.arca.dev/container-image: localhost/tools:1\n    init.hook.restore.arca.dev/command: '[\"sh\",\"-c\",\"echo from-annotation\"]'",
            "",
            sleep,
        )
        + &pod(
            "hang",
            "    pre.hook.backup.arca.dev/command: '[\"sleep\",\"600\"]'\n    pre.hook.backup.arca.dev/timeout: 2s",
            "",
            sleep,
        )
        + &pod(
            "pending",
            "    pre.hook.backup.arca.dev/command: '[\"true\"]'",
            "  nodeSelector: {nowhere: \"true\"}\n",
            sleep,
        )
        + &pod(
            "web",
            "    arca.dev/test: web",
            "",
            "sleep 3; touch /tmp/ready; exec sleep 3600",
        )
        .replace("  name: web\n", "  name: web\n  labels: {app: web}\n")
        .replace(
            "    imagePullPolicy: Never\n",
            "    imagePullPolicy: Never\n    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}\n",
        );
    // A claim whose data moves through a CSI snapshot: its post hook waits for the
    // snapshot to be taken (else the marker would not be in it).
    let class = storage::CLASS;
    let yaml = yaml
        + &format!(
            "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: claim, namespace: {app}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  resources: {{requests: {{storage: 64Mi}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: vol\n  namespace: {app}\n  annotations:\n    pre.hook.backup.arca.dev/command: '[\"sh\",\"-c\",\"echo frozen > /claim/marker\"]'\n    post.hook.backup.arca.dev/command: '[\"rm\",\"/claim/marker\"]'\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, 'echo start:$(cat /claim/marker 2>/dev/null); exec sleep 3600']\n    volumeMounts: [{{name: claim, mountPath: /claim}}]\n  volumes:\n  - {{name: claim, persistentVolumeClaim: {{claimName: claim}}}}\n"
        );
    // Frozen by a first pre hook, a second one failing with Fail: left out, yet thawed.
    let yaml = yaml
        + &pod("two", "    arca.dev/test: two", "", sleep)
            .replace("  name: two\n", "  name: two\n  labels: {app: two}\n");
    let yaml = yaml.replace("  name: db\n", "  name: db\n  labels: {app: db}\n");
    apply(&a, &yaml).await;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &app);
    for p in ["db", "fail", "cont", "hang", "web", "vol", "two"] {
        pod_running(&pods, p).await;
    }
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: hk, namespace: {}}}\nspec:\n  includedNamespaces: [{app}]\n  snapshotMoveData: true\n  hooks:\n    resources:\n    - name: by-label\n      labelSelector: {{matchLabels: {{app: web}}}}\n      pre:\n      - exec: {{container: c, command: [sh, -c, \"echo spec-pre\"]}}\n    - name: freeze-verify\n      labelSelector: {{matchLabels: {{app: two}}}}\n      pre:\n      - exec: {{command: [touch, /tmp/frozen]}}\n      - exec: {{command: [sh, -c, \"exit 1\"], onError: Fail}}\n      post:\n      - exec: {{command: [rm, /tmp/frozen]}}\n    - name: not-matching\n      labelSelector: {{matchLabels: {{app: other}}}}\n      pre:\n      - exec: {{command: [\"false\"], onError: Fail}}\n",
            arca.ns
        ),
    )
    .await;
    let b = until_long(&a, BACKUP, Some(&arca.ns), "hk", 300, ended)
        .await
        .unwrap();
    let logs = arca.ok(&a, &["backup", "logs", "hk"]);
    assert_eq!(b["status"]["phase"], "PartiallyFailed", "{b:#}\n{logs}");
    // db, vol and two pre + post, two's second pre, fail pre, cont pre, hang pre, web's
    // spec hook; the pending pod's skip is no attempt; fail, cont, hang and two's second
    // failed.
    assert_eq!(
        b["status"]["hookStatus"],
        json!({"hooksAttempted": 11, "hooksFailed": 4}),
        "{b:#}\n{logs}"
    );
    assert!(
        logs.contains("froze-it") && logs.contains("boom"),
        "hook output in the log: {logs}"
    );
    // The post hook thawed the live pod: no marker there now.
    assert_eq!(exec_out(&pods, "db", &["ls", "/data"]).await, "");
    let v = arca.json(&a, &["backup", "describe", "hk", "--details"]);
    let runs = v[0]["hooks"].as_array().expect("hook runs listed").clone();
    let of =
        |pod: &str| -> Vec<Value> { runs.iter().filter(|r| r["pod"] == pod).cloned().collect() };
    let db = of("db");
    assert_eq!(db.len(), 2, "{runs:#?}");
    assert_eq!(
        (db[0]["phase"].as_str(), db[0]["outcome"].as_str()),
        (Some("pre"), Some("Succeeded"))
    );
    assert_eq!(
        (db[1]["phase"].as_str(), db[1]["outcome"].as_str()),
        (Some("post"), Some("Succeeded"))
    );
    let fail = of("fail");
    assert_eq!(
        fail.len(),
        1,
        "no post hook for a pod whose Fail pre hook failed: {runs:#?}"
    );
    assert_eq!(fail[0]["exitCode"], 3);
    assert!(fail[0]["stderr"].as_str().unwrap().contains("boom"));
    assert_eq!(of("cont")[0]["exitCode"], 1);
    let two: Vec<_> = of("two")
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["phase"].as_str().unwrap(),
                r["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        two,
        ["pre:Succeeded", "pre:Failed", "post:Succeeded"],
        "{runs:#?}"
    );
    assert_eq!(
        exec_out(&pods, "two", &["ls", "/tmp"]).await.trim(),
        "",
        "two thawed"
    );
    assert!(
        of("hang")[0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s"),
        "{runs:#?}"
    );
    assert_eq!(of("pending")[0]["outcome"], "Skipped");
    let web = of("web");
    assert_eq!(
        (web.len(), web[0]["hook"].as_str()),
        (1, Some("by-label")),
        "{runs:#?}"
    );
    assert_eq!(web[0]["stdout"].as_str().map(str::trim), Some("spec-pre"));
    let results = &v[0]["results"];
    let errors = results["errors"]["namespaces"][&app].to_string();
    let warnings = results["warnings"]["namespaces"][&app].to_string();
    assert!(
        errors.contains("exit code 3") && errors.contains("boom"),
        "{results:#}"
    );
    assert!(errors.contains("the pod is not backed up"), "{results:#}");
    assert!(
        warnings.contains("cont")
            && warnings.contains("timed out")
            && warnings.contains("not running"),
        "{results:#}"
    );
    let items = arca.items(&a, "hk");
    assert!(
        items.contains(&format!("pods:{app}/db"))
            && !items.contains(&format!("pods:{app}/fail"))
            && !items.contains(&format!("pods:{app}/two")),
        "{items:?}"
    );
    let pvbs = list_json(
        &a,
        POD_VOLUME_BACKUP,
        Some(&arca.ns),
        "arca.dev/backup-name=hk",
    )
    .await;
    assert_eq!(pvbs.len(), 1, "only db's volume: {pvbs:#?}");
    assert_eq!(pvbs[0]["spec"]["pod"]["name"], "db");
    let text = arca.ok(&a, &["backup", "describe", "hk", "--details"]);
    assert!(
        text.contains("HooksAttempted:  11") && text.contains("by-label:"),
        "{text}"
    );
    assert_eq!(
        exec_out(&pods, "vol", &["ls", "/claim"]).await.trim(),
        "",
        "thawed"
    );
    assert_eq!(
        uploads_of(&a, &arca.ns, "hk").await.len(),
        1,
        "the claim moved by its snapshot"
    );
    assert!(
        text.contains(&format!("pre {app}/fail container c")),
        "{text}"
    );

    // The restore, into a copy of the namespace (no wait for the original to go): db's
    // volume back under restore-wait, then the init hook's seed; web's exec hook once it
    // is ready.
    restore_wait_image(&a, &arca, &image).await;
    let copy = format!("{app}-copy");
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &copy);
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Restore\nmetadata: {{name: hk-back, namespace: {}}}\nspec:\n  backupName: hk\n  namespaceMapping: {{{app}: {copy}}}\n  hooks:\n    resources:\n    - name: seed\n      labelSelector: {{matchLabels: {{app: db}}}}\n      postHooks:\n      - init:\n          initContainers:\n          - {{name: seed, image: localhost/tools:1, imagePullPolicy: Never, command: [sh, -c, \"echo seeded > /data/seed\"], volumeMounts: [{{name: data, mountPath: /data}}]}}\n    - name: when-ready\n      labelSelector: {{matchLabels: {{app: web}}}}\n      postHooks:\n      - exec:\n          container: c\n          command: [sh, -c, \"cat /tmp/ready && echo hooked > /tmp/hooked\"]\n          waitForReady: true\n          onError: Fail\n          waitTimeout: 2m\n",
            arca.ns
        ),
    )
    .await;
    let r = until_long(&a, RESTORE, Some(&arca.ns), "hk-back", 300, ended)
        .await
        .unwrap();
    let rlogs = arca.ok(&a, &["restore", "logs", "hk-back"]);
    assert_eq!(
        r["status"]["phase"],
        "Completed",
        "{r:#}\n{rlogs}\n{}",
        agent.log()
    );
    assert_eq!(
        r["status"]["hookStatus"],
        json!({"hooksAttempted": 1, "hooksFailed": 0}),
        "{r:#}\n{rlogs}"
    );
    let db = pods.get("db").await.unwrap();
    let inits: Vec<String> = db
        .spec
        .unwrap()
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(inits, ["restore-wait", "seed"]);
    // An annotation's init container (no volumes, as Velero's) ran in its pod.
    pod_running(&pods, "cont").await;
    let cont = pods.get("cont").await.unwrap();
    assert_eq!(
        cont.spec.unwrap().init_containers.unwrap()[0].name,
        "arca-restore-init"
    );
    let init_state = cont.status.unwrap().init_container_statuses.unwrap()[0].clone();
    assert_eq!(
        init_state
            .state
            .and_then(|s| s.terminated)
            .map(|t| t.exit_code),
        Some(0)
    );
    // The marker the pre hook wrote is in the backed-up data; the seed the init hook
    // wrote is there too, written after the volume (restore-wait ran first).
    let log = pod_log_with(&pods, "db", "start:").await;
    assert!(log.contains("start:frozen:seeded"), "{log}");
    let log = pod_log_with(&pods, "vol", "start:").await;
    assert!(
        log.contains("start:frozen"),
        "the snapshot holds what the pre hook wrote: {log}"
    );
    assert_eq!(
        exec_out(&pods, "web", &["cat", "/tmp/hooked"]).await.trim(),
        "hooked"
    );
    let rv = arca.json(&a, &["restore", "describe", "hk-back", "--details"]);
    let rruns = rv[0]["hooks"]
        .as_array()
        .expect("restore hook runs")
        .clone();
    assert_eq!(rruns.len(), 1, "{rruns:#?}");
    assert_eq!(
        (rruns[0]["pod"].as_str(), rruns[0]["outcome"].as_str()),
        (Some("web"), Some("Succeeded"))
    );
    let text = arca.ok(&a, &["restore", "describe", "hk-back", "--details"]);
    assert!(
        text.contains("HooksAttempted:  1")
            && text.contains(&format!("restore {copy}/web container c")),
        "{text}"
    );
    drop(agent);
    // Not waited on: nothing after it needs the namespace gone.
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    for n in [&app, &copy] {
        nss.delete(n, &DeleteParams::default()).await.unwrap();
    }
}

/// Namespace `app` with a running pod `app` whose backup hooks (Arca's annotations) are
/// `pre` and `post`.
async fn hooked_pod(
    c: &Cluster,
    app: &str,
    pre: [&str; 2],
    post: [&str; 2],
) -> Api<arca_k8s::k8s_openapi::api::core::v1::Pod> {
    let cmd = |c: [&str; 2]| serde_json::to_string(&c).unwrap();
    apply(
        c,
        &(ns(app)
            + &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: {app}\n  annotations:\n    pre.hook.backup.arca.dev/command: '{}'\n    post.hook.backup.arca.dev/command: '{}'\nspec:\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  - name: c\n    image: localhost/tools:1\n    imagePullPolicy: Never\n    command: [sh, -c, 'exec sleep 3600']\n",
                cmd(pre),
                cmd(post)
            )),
    )
    .await;
    let pods = Api::namespaced(c.client.clone(), app);
    pod_running(&pods, "app").await;
    pods
}

/// A backup canceled between its pre and post hooks (its server paused there) still runs
/// the post hook before it is Canceled; one whose server is killed (-9) there is thawed by
/// the next server's run of it before its pre hooks run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_stopped_between_its_hooks_still_thaws_the_pod() {
    let Some((a, _image, arca)) = volume_setting("thaw", false).await else {
        return;
    };
    let mut server = arca.server_with(&a, "3s", &[("ARCA_TEST_PAUSE_AT", "backup-pre-hooks-run")]);
    server.wait_log("leading").await;
    let app = format!("thaw-{}", arca.suffix());
    let pods = hooked_pod(&a, &app, ["touch", "/tmp/frozen"], ["rm", "/tmp/frozen"]).await;
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: thaw, namespace: {}}}\nspec:\n  includedNamespaces: [{app}]\n",
            arca.ns
        ),
    )
    .await;
    server.wait_log("paused at backup-pre-hooks-run").await;
    assert_eq!(
        exec_out(&pods, "app", &["ls", "/tmp"]).await.trim(),
        "frozen"
    );
    arca.ok(&a, &["backup", "cancel", "thaw", "--wait"]);
    // Canceled once the post hook has run, not before.
    assert_eq!(
        exec_out(&pods, "app", &["ls", "/tmp"]).await.trim(),
        "",
        "the post hook ran with the cancel\n{}",
        server.log()
    );
    let b = get(&a, BACKUP, Some(&arca.ns), "thaw").await.unwrap();
    assert_eq!(b["status"]["phase"], "Canceled", "{b:#}");
    assert!(
        b["metadata"]["annotations"]["arca.dev/hooks-frozen"].is_null(),
        "{b:#}"
    );

    // Killed (-9) between the pre and post hooks of a second backup: the pod stays frozen
    // and the Backup names it; the next server's run thaws it first, then backs up.
    apply(
        &a,
        &format!(
            "apiVersion: arca.dev/v1\nkind: Backup\nmetadata: {{name: thaw2, namespace: {}}}\nspec:\n  includedNamespaces: [{app}]\n",
            arca.ns
        ),
    )
    .await;
    for _ in 0..600 {
        if server
            .log()
            .matches("paused at backup-pre-hooks-run")
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        exec_out(&pods, "app", &["ls", "/tmp"]).await.trim(),
        "frozen"
    );
    let b = get(&a, BACKUP, Some(&arca.ns), "thaw2").await.unwrap();
    assert_eq!(
        b["metadata"]["annotations"]["arca.dev/hooks-frozen"],
        format!("[\"{app}/app\"]"),
        "{b:#}"
    );
    server.kill();
    let next = arca.server_with(&a, "3s", &[]);
    let b = until_long(&a, BACKUP, Some(&arca.ns), "thaw2", 120, ended)
        .await
        .unwrap();
    assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", next.log());
    assert!(
        b["metadata"]["annotations"]["arca.dev/hooks-frozen"].is_null(),
        "{b:#}"
    );
    assert_eq!(exec_out(&pods, "app", &["ls", "/tmp"]).await.trim(), "");
    let logs = arca.ok(&a, &["backup", "logs", "thaw2"]);
    assert!(
        logs.contains("post hooks of a stopped run, run now"),
        "{logs}"
    );
    drop(next);
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    nss.delete(&app, &DeleteParams::default()).await.unwrap();
}

/// A run taken over between its hooks (the test plays the run that took it over, by its
/// claim and annotations): the pods the newer run's settled list names are left frozen
/// (a thaw would undo the newer freeze mid-backup), and a pod the newer run failed to
/// freeze because this run still held it (its pre hook `mkdir`, which fails on a frozen
/// pod as `fsfreeze` does) is thawed once that list settles, not left frozen for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_taken_over_between_its_hooks_thaws_only_what_is_its_own() {
    use arca_k8s::claim::RunClaim;
    use arca_k8s::crd::Backup;
    let Some((a, _image, arca)) = volume_setting("takeover", false).await else {
        return;
    };
    let app = format!("takeover-{}", arca.suffix());
    let pods = hooked_pod(&a, &app, ["mkdir", "/tmp/frozen"], ["rmdir", "/tmp/frozen"]).await;
    let backups: Api<Backup> = Api::namespaced(a.client.clone(), &arca.ns);
    let key = format!("[\"{app}/app\"]");
    let frozen = || async { exec_out(&pods, "app", &["ls", "/tmp"]).await.trim() == "frozen" };
    let annotate = |name: String, list: Option<String>, settled: Option<&'static str>| {
        let backups = backups.clone();
        async move {
            let p = json!({ "metadata": { "annotations": {
                "arca.dev/hooks-frozen": list,
                "arca.dev/hooks-frozen-settled": settled,
            }}});
            backups
                .patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .unwrap();
        }
    };
    // A server of its own per backup, held after the pre hooks (the pod frozen, the list
    // settled) until its resume file exists; the test then takes the backup over.
    let taken_over = async |name: &str| {
        // Keyed by the backup: two such servers wait at the same point.
        let go_on = arca.go_on(name);
        let server = arca.server_args(
            &a,
            "5s",
            &[
                ("ARCA_TEST_PAUSE_AT", "backup-pre-hooks-run"),
                ("ARCA_TEST_RESUME_WHEN", go_on.to_str().unwrap()),
            ],
            &[],
        );
        server.wait_log("leading").await;
        apply(&a, &backup_yaml(&arca.ns, name, &app)).await;
        server.wait_log("paused at backup-pre-hooks-run").await;
        assert!(frozen().await);
        let b = backups.get(name).await.unwrap();
        let recorded = |k: &str| b.annotations().get(k).cloned();
        assert_eq!(
            (
                recorded("arca.dev/hooks-frozen"),
                recorded("arca.dev/hooks-frozen-settled")
            ),
            (Some(key.clone()), Some("true".to_string())),
            "settled after the pre hooks: {b:?}"
        );
        let newer = RunClaim::take(backups.clone(), b, "backup", |_: &Backup| true)
            .await
            .unwrap();
        (server, go_on, newer)
    };
    // The server, leading, runs it again to its end, the pod thawed.
    let ends_thawed = async |name: &str, mut server: Server, go_on: PathBuf| {
        let b = until_long(&a, BACKUP, Some(&arca.ns), name, 120, ended)
            .await
            .unwrap();
        assert_eq!(b["status"]["phase"], "Completed", "{b:#}\n{}", server.log());
        assert!(!frozen().await, "{}", server.log());
        server.kill();
        let _ = std::fs::remove_file(&go_on);
    };

    // 1. The newer run began while this one still held the pod (its thaw of this run's
    // list came before this run's freeze): its plan recorded, not settled.
    let (server, go_on, newer) = taken_over("late").await;
    annotate("late".into(), Some(key.clone()), None).await;
    std::fs::write(&go_on, b"").unwrap();
    server
        .wait_log("waiting for the run that took it over to settle which it froze")
        .await;
    assert!(frozen().await, "nothing thawed before the list settles");
    // Its pre hook fails on the pod this run holds frozen; it settles with nothing.
    let mkdir = "mkdir /tmp/frozen 2>/dev/null && echo made || echo held";
    assert_eq!(
        exec_out(&pods, "app", &["sh", "-c", mkdir]).await.trim(),
        "held"
    );
    annotate("late".into(), None, None).await;
    let log = server
        .wait_log(&format!(
            "backup {}/late stopped before its post hooks; run now: post hook",
            arca.ns
        ))
        .await;
    assert!(
        log.contains(&format!("backup {}/late: taken over: 0 frozen pod(s) left to the run that took it over, 1 thawed here", arca.ns))
            && log.contains(&format!("of pod {app}/app (rmdir /tmp/frozen) succeeded")),
        "{log}"
    );
    drop(newer);
    ends_thawed("late", server, go_on).await;

    // 2. The newer run thawed this run's list, froze the pod itself and settled: this
    // run, woken, leaves it frozen.
    let (server, go_on, newer) = taken_over("kept").await;
    exec_out(&pods, "app", &["rmdir", "/tmp/frozen"]).await;
    annotate("kept".into(), Some(key.clone()), None).await;
    exec_out(&pods, "app", &["mkdir", "/tmp/frozen"]).await;
    annotate("kept".into(), Some(key.clone()), Some("true")).await;
    std::fs::write(&go_on, b"").unwrap();
    server
        .wait_log(&format!("backup {}/kept: taken over: 1 frozen pod(s) left to the run that took it over, 0 thawed here", arca.ns))
        .await;
    drop(newer);
    ends_thawed("kept", server, go_on).await;
    // The server's run again inherited the list and found the pod still frozen: its
    // `rmdir` succeeded (it fails on a pod the old run had thawed).
    let logs = arca.ok(&a, &["backup", "logs", "kept"]);
    let inherited = format!("of pod {app}/app (rmdir /tmp/frozen) succeeded");
    assert!(
        logs.lines()
            .any(|l| l.contains("post hooks of a stopped run, run now") && l.contains(&inherited)),
        "{logs}"
    );
    let nss: Api<arca_k8s::k8s_openapi::api::core::v1::Namespace> = Api::all(a.client.clone());
    nss.delete(&app, &DeleteParams::default()).await.unwrap();
}
