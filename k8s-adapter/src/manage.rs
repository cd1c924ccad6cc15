//! What the CLI (and later the operator) does around backups and restores: connect,
//! install, create, sync from object storage, delete, and read the stored records.

use std::collections::BTreeMap;
use std::path::Path;

use arca_engine::{Indexed, SnapshotFilter};
use arca_format::{Snapshot, SnapshotId};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

use crate::crd::{
    Backup, BackupSpec, BackupStorageLocation, DeleteBackupRequest, DeleteBackupRequestSpec,
    DeleteBackupRequestStatus, Restore, RestoreSpec,
};
use crate::error::{Error, Result};
use crate::location::{CREDENTIALS_SECRET, Location, PASSWORD_KEY, writer};
use crate::record::*;
use crate::restore::{latest_record, read_file, read_json};

/// Field manager of everything Arca applies.
pub const FIELD_MANAGER: &str = "arca";

/// A client for the cluster of `kubeconfig` (else `$KUBECONFIG`, `~/.kube/config`, or the
/// pod's service account) and `context` (else the current one), and the server's URL.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<(Client, String)> {
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| Error::Invalid(format!("kubeconfig {}: {e}", p.display())))?;
            Config::from_custom_kubeconfig(kc, &opts).await
        }
        None if context.is_some() => Config::from_kubeconfig(&opts).await,
        None => Config::infer()
            .await
            .map_err(|e| kube::config::KubeconfigError::LoadContext(e.to_string())),
    }
    .map_err(|e| {
        Error::Invalid(format!(
            "no usable cluster configuration: {e} (use --kubeconfig, --context or KUBECONFIG)"
        ))
    })?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| Error::kube(format!("connect to the API server at {url}"), e))?;
    Ok((client, url))
}

/// Check that the API server at `url` answers and serves Arca's resources.
pub async fn check_installed(client: &Client, url: &str) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt("backups.arca.dev").await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::NotFound(format!(
            "Arca's resources are not installed in the cluster at {url}: run `arca install` first"
        ))),
        Err(e) => Err(Error::kube(
            format!("cannot reach the API server at {url} (check --kubeconfig and --context)"),
            e,
        )),
    }
}

/// What `arca install` creates besides the CRDs.
#[derive(Clone, Debug, Default)]
pub struct InstallPlan {
    /// The namespace Arca's resources live in.
    pub namespace: String,
    /// The default backup storage location, if one is to be created.
    pub location: Option<BackupStorageLocation>,
    /// The cloud credentials file for the location (stored as secret `cloud-credentials`,
    /// key `cloud`).
    pub cloud_credentials: Option<Vec<u8>>,
    /// The repository password (secret `arca-repo-credentials`).
    pub repository_password: Option<Vec<u8>>,
    /// The operator's Deployment; None: no Deployment (`arca server` runs elsewhere).
    pub server: Option<ServerDeployment>,
    /// The node agent's DaemonSet (`--use-node-agent`).
    pub node_agent: Option<NodeAgentDaemonSet>,
}

/// The node agent's DaemonSet: `arca node-agent` on every node, with the kubelet's pods
/// directory of the host mounted at `/host_pods` (Velero's node-agent).
#[derive(Clone, Debug)]
pub struct NodeAgentDaemonSet {
    /// The image holding `/usr/bin/arca` (the exposer pods run it too).
    pub image: String,
    /// Pull policy.
    pub pull_policy: String,
    /// The kubelet's pods directory on the hosts (`/var/lib/kubelet/pods`; elsewhere on
    /// RancherOS, Nutanix, TKGI...).
    pub host_pods_dir: String,
    /// Run privileged: needed to read block volumes (their device nodes).
    pub privileged: bool,
    /// The ConfigMap with `loadConcurrency`, if any.
    pub config_map: Option<String>,
}

/// Name of the node agent's DaemonSet.
pub const NODE_AGENT_NAME: &str = "node-agent";

impl NodeAgentDaemonSet {
    /// The DaemonSet, for namespace `ns` (it runs as the server's service account).
    pub fn object(&self, ns: &str) -> serde_json::Value {
        let field = |path: &str| serde_json::json!({ "fieldRef": { "fieldPath": path } });
        let mut args = vec!["node-agent".to_string()];
        if let Some(c) = &self.config_map {
            args.extend(["--node-agent-configmap".into(), c.clone()]);
        }
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": { "name": NODE_AGENT_NAME, "namespace": ns, "labels": { "component": "arca" } },
            "spec": {
                "selector": { "matchLabels": { "name": NODE_AGENT_NAME } },
                "template": {
                    "metadata": { "labels": { "component": "arca", "name": NODE_AGENT_NAME, "role": "node-agent" } },
                    "spec": {
                        "serviceAccountName": SERVER_NAME,
                        "securityContext": { "runAsUser": 0 },
                        "containers": [{
                            "name": NODE_AGENT_NAME,
                            "image": self.image,
                            "imagePullPolicy": self.pull_policy,
                            "command": ["/usr/bin/arca"],
                            "args": args,
                            "env": [
                                { "name": "NODE_NAME", "valueFrom": field("spec.nodeName") },
                                { "name": "POD_NAME", "valueFrom": field("metadata.name") },
                                { "name": "ARCA_NAMESPACE", "valueFrom": field("metadata.namespace") },
                                { "name": "ARCA_CACHE_DIR", "value": "/scratch/cache" },
                            ],
                            "securityContext": { "privileged": self.privileged },
                            "volumeMounts": [
                                { "name": "host-pods", "mountPath": "/host_pods", "mountPropagation": "HostToContainer" },
                                { "name": "scratch", "mountPath": "/scratch" },
                            ],
                        }],
                        "volumes": [
                            { "name": "host-pods", "hostPath": { "path": self.host_pods_dir } },
                            { "name": "scratch", "emptyDir": {} },
                        ],
                    },
                },
            },
        })
    }
}

/// The operator's Deployment (`arca server` in the install namespace), with its service
/// account bound to cluster-admin, as Velero's install does: a backup reads everything
/// and a restore creates anything.
#[derive(Clone, Debug)]
pub struct ServerDeployment {
    /// The image holding `/usr/bin/arca`.
    pub image: String,
    /// Pull policy: IfNotPresent, Always or Never.
    pub pull_policy: String,
    /// CPU and memory requests and limits (Kubernetes quantities; "0": none).
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// CPU limit.
    pub cpu_limit: String,
    /// Memory limit.
    pub memory_limit: String,
}

/// Name of the Deployment and the ServiceAccount of the operator.
pub const SERVER_NAME: &str = "arca";
/// The port of the server's /metrics, /healthz and /readyz in its pod.
pub const SERVER_PORT: u16 = 8085;

impl ServerDeployment {
    fn resources(&self) -> serde_json::Value {
        let pick = |cpu: &str, mem: &str| {
            let mut m = serde_json::Map::new();
            if cpu != "0" {
                m.insert("cpu".into(), cpu.into());
            }
            if mem != "0" {
                m.insert("memory".into(), mem.into());
            }
            serde_json::Value::Object(m)
        };
        serde_json::json!({
            "requests": pick(&self.cpu_request, &self.memory_request),
            "limits": pick(&self.cpu_limit, &self.memory_limit),
        })
    }

    /// The ServiceAccount, its ClusterRoleBinding and the Deployment, for namespace `ns`.
    pub fn objects(&self, ns: &str) -> Vec<serde_json::Value> {
        let field = |path: &str| serde_json::json!({ "fieldRef": { "fieldPath": path } });
        vec![
            serde_json::json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": SERVER_NAME, "namespace": ns, "labels": { "component": "arca" } },
            }),
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": format!("arca-{ns}"), "labels": { "component": "arca" } },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
                "subjects": [{ "kind": "ServiceAccount", "name": SERVER_NAME, "namespace": ns }],
            }),
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": SERVER_NAME, "namespace": ns, "labels": { "component": "arca" } },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": { "deploy": SERVER_NAME } },
                    "template": {
                        "metadata": {
                            "labels": { "component": "arca", "deploy": SERVER_NAME },
                            "annotations": {
                                "prometheus.io/scrape": "true",
                                "prometheus.io/port": SERVER_PORT.to_string(),
                                "prometheus.io/path": "/metrics",
                            },
                        },
                        "spec": {
                            "serviceAccountName": SERVER_NAME,
                            "containers": [{
                                "name": "arca",
                                "image": self.image,
                                "imagePullPolicy": self.pull_policy,
                                "command": ["/usr/bin/arca"],
                                "args": ["server", "--metrics-address", format!("0.0.0.0:{SERVER_PORT}")],
                                "env": [
                                    { "name": "POD_NAME", "valueFrom": field("metadata.name") },
                                    { "name": "ARCA_NAMESPACE", "valueFrom": field("metadata.namespace") },
                                    { "name": "ARCA_CACHE_DIR", "value": "/scratch/cache" },
                                ],
                                "ports": [{ "name": "metrics", "containerPort": SERVER_PORT }],
                                "readinessProbe": {
                                    "httpGet": { "path": "/readyz", "port": SERVER_PORT },
                                    "periodSeconds": 5,
                                },
                                "livenessProbe": {
                                    "httpGet": { "path": "/healthz", "port": SERVER_PORT },
                                    "periodSeconds": 10,
                                    "failureThreshold": 6,
                                },
                                "resources": self.resources(),
                                "volumeMounts": [{ "name": "scratch", "mountPath": "/scratch" }],
                            }],
                            "volumes": [{ "name": "scratch", "emptyDir": {} }],
                        },
                    },
                },
            }),
        ]
    }
}

/// Name of the secret holding the location's cloud credentials.
pub const CLOUD_CREDENTIALS_SECRET: &str = "cloud-credentials";

impl InstallPlan {
    /// Every object, in apply order, as JSON (for `--dry-run` and for applying).
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = crate::crd::all()
            .into_iter()
            .map(|c| serde_json::to_value(c).expect("serializes"))
            .collect();
        out.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": self.namespace }
        }));
        let secret = |name: &str, key: &str, v: &[u8]| {
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    key.to_string(),
                    k8s_openapi::ByteString(v.to_vec()),
                )])),
                ..Default::default()
            };
            let mut v = serde_json::to_value(s).expect("serializes");
            v["apiVersion"] = "v1".into();
            v["kind"] = "Secret".into();
            v
        };
        if let Some(p) = &self.repository_password {
            out.push(secret(CREDENTIALS_SECRET, PASSWORD_KEY, p));
        }
        if let Some(c) = &self.cloud_credentials {
            out.push(secret(CLOUD_CREDENTIALS_SECRET, "cloud", c));
        }
        if let Some(l) = &self.location {
            let mut l = l.clone();
            l.metadata.namespace = Some(self.namespace.clone());
            if self.cloud_credentials.is_some() && l.spec.credential.is_none() {
                l.spec.credential = Some(crate::crd::SecretKeySelector {
                    name: CLOUD_CREDENTIALS_SECRET.into(),
                    key: "cloud".into(),
                });
            }
            out.push(serde_json::to_value(l).expect("serializes"));
        }
        if let Some(s) = &self.server {
            out.extend(s.objects(&self.namespace));
        }
        if let Some(n) = &self.node_agent {
            out.push(n.object(&self.namespace));
        }
        out
    }
}

/// Apply an install plan: CRDs (waited on until established), the namespace, secrets and
/// the location. Applying again updates them in place.
pub async fn install(client: &Client, plan: &InstallPlan) -> Result<Vec<String>> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut done = Vec::new();
    for crd in crate::crd::all() {
        let name = crd.name_any();
        crds.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .map_err(|e| Error::kube(format!("apply CustomResourceDefinition {name}"), e))?;
        done.push(format!("CustomResourceDefinition/{name}"));
    }
    for crd in crate::crd::all() {
        wait_established(&crds, &crd.name_any(), std::time::Duration::from_secs(60)).await?;
    }
    let ns = &plan.namespace;
    let nss: Api<Namespace> = Api::all(client.clone());
    let nso = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut v = serde_json::to_value(&nso).expect("serializes");
    v["apiVersion"] = "v1".into();
    v["kind"] = "Namespace".into();
    nss.patch(ns, &pp, &Patch::Apply(&v))
        .await
        .map_err(|e| Error::kube(format!("apply namespace {ns}"), e))?;
    done.push(format!("Namespace/{ns}"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let bsls: Api<BackupStorageLocation> = Api::namespaced(client.clone(), ns);
    // The repositories' password is never replaced: what was stored with it opens only
    // with it. None given and none stored: a random one (as Velero's install makes one).
    let stored = crate::location::secret_key(client, ns, CREDENTIALS_SECRET, PASSWORD_KEY).await?;
    let mut plan = plan.clone();
    match (&plan.repository_password, &stored) {
        (Some(given), Some(s)) if given != s => {
            return Err(Error::Invalid(format!(
                "namespace {ns} already holds the repositories' password (secret {CREDENTIALS_SECRET}), and another was given: \
                 the repositories made with it open only with it. Give that one, or none to keep it"
            )));
        }
        (None, None) => {
            let mut raw = [0u8; 24];
            getrandom::fill(&mut raw)
                .map_err(|e| Error::Invalid(format!("no randomness for a password: {e}")))?;
            let pw = hex::encode(raw);
            // A bucket that already holds Arca's repositories (another cluster's, a
            // reinstall's) opens only with their password: a new one would hide them.
            if let Some(l) = &plan.location {
                let loc =
                    Location::from_bsl_with(client, ns, l, Some(pw.clone().into_bytes())).await?;
                if let Err(Error::Engine(arca_engine::Error::Format(
                    arca_format::Error::WrongPassword,
                ))) = loc.check().await
                {
                    return Err(Error::Invalid(format!(
                        "location {} already holds Arca repositories: give their password (ARCA_PASSWORD or --password-file), a new one would not open them",
                        loc.name
                    )));
                }
            }
            done.push(format!(
                "Secret/{CREDENTIALS_SECRET}: a random repository password was generated: {pw}\n  keep it: a reinstall or another cluster reading these backups needs it (ARCA_PASSWORD)"
            ));
            plan.repository_password = Some(pw.into_bytes());
        }
        _ => {}
    }
    for o in plan.objects() {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let r = match kind.as_str() {
            "Secret" => secrets
                .patch(&name, &pp, &Patch::Apply(&o))
                .await
                .map(|_| ()),
            "BackupStorageLocation" => bsls.patch(&name, &pp, &Patch::Apply(&o)).await.map(|_| ()),
            "ServiceAccount" => {
                let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    Api::namespaced(client.clone(), ns);
                api.patch(&name, &pp, &Patch::Apply(&o)).await.map(|_| ())
            }
            "ClusterRoleBinding" => {
                let api: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> =
                    Api::all(client.clone());
                api.patch(&name, &pp, &Patch::Apply(&o)).await.map(|_| ())
            }
            "Deployment" => {
                let api: Api<k8s_openapi::api::apps::v1::Deployment> =
                    Api::namespaced(client.clone(), ns);
                api.patch(&name, &pp, &Patch::Apply(&o)).await.map(|_| ())
            }
            "DaemonSet" => {
                let api: Api<k8s_openapi::api::apps::v1::DaemonSet> =
                    Api::namespaced(client.clone(), ns);
                api.patch(&name, &pp, &Patch::Apply(&o)).await.map(|_| ())
            }
            _ => continue,
        };
        r.map_err(|e| Error::kube(format!("apply {kind} {ns}/{name}"), e))?;
        done.push(format!("{kind}/{name}"));
    }
    Ok(done)
}

/// Remove what `arca install` made (Velero's `uninstall`): the ClusterRoleBinding, the
/// namespace (the server, its secrets, locations and every Arca resource in it) and, when
/// `crds`, Arca's CustomResourceDefinitions (every Arca resource in every namespace). Data
/// in object storage is never touched: installing again with the same bucket syncs the
/// backups back. With `wait`, returns once the namespace is gone (up to `limit`).
pub async fn uninstall(
    client: &Client,
    ns: &str,
    crds: bool,
    wait: Option<std::time::Duration>,
    save_to: Option<&Path>,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let gone = |r: std::result::Result<(), kube::Error>, what: String| match r {
        Ok(()) => Ok(Some(what)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube(format!("delete {what}"), e)),
    };
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client.clone());
    let name = format!("arca-{ns}");
    let r = crbs
        .delete(&name, &DeleteParams::default())
        .await
        .map(|_| ());
    done.extend(gone(r, format!("ClusterRoleBinding/{name}"))?);
    // The repositories' password lives only in the namespace: kept in a file first
    // (0600, never overwriting one), or the backups could not be read after.
    if let Some(pw) =
        crate::location::secret_key(client, ns, CREDENTIALS_SECRET, PASSWORD_KEY).await?
    {
        let dir = save_to.unwrap_or_else(|| Path::new("."));
        let mut path = dir.join(format!("arca-repository-password-{ns}"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = dir.join(format!("arca-repository-password-{ns}.{n}"));
        }
        let io = |e: std::io::Error| Error::Io {
            what: format!(
                "save the repositories' password to {} (nothing was deleted)",
                path.display()
            ),
            source: e,
        };
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(&pw).and_then(|()| f.sync_all()).map_err(io)?;
        }
        done.push(format!(
            "(kept) the repositories' password, in {}: a reinstall reading these backups needs it (ARCA_PASSWORD_FILE)",
            path.display()
        ));
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    let r = nss
        .delete(ns, &DeleteParams::foreground())
        .await
        .map(|_| ());
    done.extend(gone(r, format!("Namespace/{ns}"))?);
    if crds {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crate::crd::all() {
            let n = crd.name_any();
            let r = api.delete(&n, &DeleteParams::default()).await.map(|_| ());
            done.extend(gone(r, format!("CustomResourceDefinition/{n}"))?);
        }
    }
    if let Some(limit) = wait {
        let until = std::time::Instant::now() + limit;
        while nss
            .get_opt(ns)
            .await
            .map_err(|e| Error::kube(format!("read namespace {ns}"), e))?
            .is_some()
        {
            if std::time::Instant::now() > until {
                return Err(Error::Invalid(format!(
                    "namespace {ns} is still terminating after {}s: `kubectl get namespace {ns} -o yaml` says what holds it",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    Ok(done)
}

/// Wait until the operator's Deployment has an available replica (its readiness probe
/// passed), up to `limit`; the error says where to look.
pub async fn wait_server_available(
    client: &Client,
    ns: &str,
    limit: std::time::Duration,
) -> Result<()> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), ns);
    // Of the current template: after an upgrade, the old ReplicaSet's pod does not count.
    let available = |d: Option<&k8s_openapi::api::apps::v1::Deployment>| {
        let Some(d) = d else { return false };
        let Some(s) = d.status.as_ref() else {
            return false;
        };
        let want = d.spec.replicas.unwrap_or(1);
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas.unwrap_or(0) >= want
            && s.replicas.unwrap_or(0) == s.updated_replicas.unwrap_or(0)
            && s.available_replicas.unwrap_or(0) >= want
    };
    match tokio::time::timeout(
        limit,
        kube::runtime::wait::await_condition(api, SERVER_NAME, available),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::Invalid(format!(
            "waiting for deployment {ns}/{SERVER_NAME}: {e}"
        ))),
        Err(_) => Err(Error::Invalid(format!(
            "deployment {ns}/{SERVER_NAME} has no available replica after {}s: see `kubectl -n {ns} describe pods -l deploy={SERVER_NAME}` and its logs",
            limit.as_secs()
        ))),
    }
}

async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    limit: std::time::Duration,
) -> Result<()> {
    let until = std::time::Instant::now() + limit;
    loop {
        let crd = api
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("read CustomResourceDefinition {name}"), e))?;
        let ok = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if ok {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            return Err(Error::Invalid(format!(
                "CustomResourceDefinition {name} is not established after {}s: check the API server's log",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Create a new resource; an existing name is the user's to change.
async fn create_new<K>(
    client: &Client,
    ns: &str,
    what: &str,
    mut obj: K,
    labels: BTreeMap<String, String>,
) -> Result<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    obj.meta_mut().namespace = Some(ns.to_string());
    obj.meta_mut().labels = (!labels.is_empty()).then_some(labels);
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.create(&PostParams::default(), &obj).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Invalid(format!(
            "{what} {name:?} already exists in namespace {ns}: choose another name"
        ))),
        Err(e) => Err(Error::kube(format!("create {what} {ns}/{name}"), e)),
    }
}

/// Create a Backup resource in phase New.
pub async fn create_backup(
    client: &Client,
    ns: &str,
    name: &str,
    spec: BackupSpec,
    labels: BTreeMap<String, String>,
) -> Result<Backup> {
    let mut b = Backup::new(name, spec);
    b.status = Some(crate::crd::BackupStatus {
        phase: Some("New".into()),
        ..Default::default()
    });
    create_new(client, ns, "backup", b, labels).await
}

/// A Backup made from a schedule, as Velero's builder makes it (`FromSchedule`,
/// pkg/builder/backup_builder.go): the template as the spec; the template's metadata
/// labels if it has any, else the schedule's labels; the schedule-name label (Arca's and
/// Velero's); the schedule's annotations. Nothing else is added.
pub fn backup_from_schedule(schedule: &crate::crd::Schedule, name: &str) -> Backup {
    let sched_name = schedule.name_any();
    let mut labels = match schedule
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
    {
        Some(l) => l,
        None => schedule.metadata.labels.clone().unwrap_or_default(),
    };
    labels.insert(SCHEDULE_NAME_LABEL.to_string(), label_value(&sched_name));
    labels.insert(
        "velero.io/schedule-name".to_string(),
        label_value(&sched_name),
    );
    let mut b = Backup::new(name, schedule.spec.template.clone());
    b.metadata.labels = Some(labels);
    b.metadata.annotations = schedule.metadata.annotations.clone();
    if schedule.spec.use_owner_references_in_backup == Some(true) {
        b.metadata.owner_references =
            kube::Resource::controller_owner_ref(schedule, &()).map(|r| vec![r]);
    }
    b
}

/// The name of a backup made from a schedule now: `<schedule>-<UTC yyyyMMddHHmmss>`.
pub fn scheduled_backup_name(schedule: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("{schedule}-{}", now.format("%Y%m%d%H%M%S"))
}

/// Create a Backup resource, as built, in phase New.
pub async fn create_backup_object(client: &Client, ns: &str, b: Backup) -> Result<Backup> {
    let name = b.name_any();
    let labels = b.metadata.labels.clone().unwrap_or_default();
    let spec = b.spec.clone();
    let mut nb = Backup::new(&name, spec);
    nb.metadata.annotations = b.metadata.annotations.clone();
    nb.metadata.owner_references = b.metadata.owner_references.clone();
    nb.status = Some(crate::crd::BackupStatus {
        phase: Some("New".into()),
        ..Default::default()
    });
    create_new(client, ns, "backup", nb, labels).await
}

/// Whether an `arca server` leads in namespace `ns`: its Lease has a holder renewed within
/// a minute or twice its duration. Clocks are compared, so this only decides a warning.
pub async fn server_running(client: &Client, ns: &str) -> bool {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), ns);
    let Ok(Some(lease)) = api.get_opt(crate::server::LEASE).await else {
        return false;
    };
    let spec = lease.spec.unwrap_or_default();
    let live = (spec.lease_duration_seconds.unwrap_or(15).max(30) * 2) as i64;
    spec.holder_identity.is_some_and(|h| !h.is_empty())
        && spec.renew_time.is_some_and(|t| {
            (k8s_openapi::jiff::Timestamp::now() - t.0)
                .get_seconds()
                .abs()
                <= live
        })
}

/// Create a Restore resource in phase New.
pub async fn create_restore(
    client: &Client,
    ns: &str,
    name: &str,
    spec: RestoreSpec,
    labels: BTreeMap<String, String>,
) -> Result<Restore> {
    create_new(client, ns, "restore", Restore::new(name, spec), labels).await
}

/// The backups stored in a location: the newest record of each name.
pub async fn stored_backups(repo: &Indexed) -> Result<BTreeMap<String, (SnapshotId, Snapshot)>> {
    let filter = SnapshotFilter {
        tags: vec![BACKUP_TAG.to_string()],
        ..Default::default()
    };
    let (snaps, _) = repo.repo().readable_snapshots().await?;
    let mut out = BTreeMap::new();
    // Oldest first, so the newest of a name wins.
    for (id, s) in snaps {
        if !filter.matches(&s) {
            continue;
        }
        if let Some(n) = s.labels.get(BACKUP_NAME_LABEL) {
            out.insert(n.clone(), (id, s));
        }
    }
    Ok(out)
}

/// What a sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// Backups found in storage and created in the cluster.
    pub created: Vec<String>,
    /// Completed backups gone from storage, removed from the cluster.
    pub removed: Vec<String>,
    /// Locations that could not be read, and why.
    pub unreachable: Vec<(String, String)>,
}

/// Velero's backup sync: every backup stored in a location of namespace `ns` exists as a
/// Backup resource (so a new cluster sees the old one's backups), and a finished backup
/// whose record is gone from its location is removed. `only`: these locations, in this
/// order (the server's due ones); None: all but those whose `backupSyncPeriod` is "0".
pub async fn sync_backups(
    client: &Client,
    ns: &str,
    cache_root: Option<&Path>,
    only: Option<&[String]>,
) -> Result<SyncReport> {
    let bsls: Api<BackupStorageLocation> = Api::namespaced(client.clone(), ns);
    let backups: Api<Backup> = Api::namespaced(client.clone(), ns);
    let locations = bsls
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("list BackupStorageLocations in {ns}"), e))?;
    let existing = backups
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("list backups in {ns}"), e))?;
    let mut report = SyncReport::default();
    let chosen: Vec<&BackupStorageLocation> = match only {
        None => locations
            .items
            .iter()
            .filter(|b| !crate::server::locations::sync_off(b.spec.backup_sync_period.as_deref()))
            .collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| locations.items.iter().find(|b| b.name_any() == *n))
            .collect(),
    };
    for bsl in chosen {
        let bsl_name = bsl.name_any();
        let stored = async {
            let loc = Location::from_bsl(client, ns, bsl).await?;
            let repo = loc
                .open(&loc.resources_url(), cache_root, &writer(ns))
                .await?;
            let list = stored_backups(&repo).await?;
            Ok::<_, Error>((repo, list))
        };
        let (repo, list) = match stored.await {
            Ok(x) => x,
            Err(e) => {
                report.unreachable.push((bsl_name.clone(), e.to_string()));
                continue;
            }
        };
        let here: BTreeMap<String, &Backup> =
            existing.items.iter().map(|b| (b.name_any(), b)).collect();
        for (name, (id, _)) in &list {
            // A Backup this sync (or one that was killed) created, its status not yet
            // written: written now. Any other Backup of the name is left alone.
            let unfinished = here.get(name).map(|b| {
                b.annotations().contains_key(SYNCED_ANNOTATION)
                    && b.status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_none_or(str::is_empty)
            });
            if unfinished == Some(false) {
                continue;
            }
            let stored: Backup = match read_json(&repo, id, "backup.json").await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("backup {name} in location {bsl_name} is unreadable: {e}");
                    continue;
                }
            };
            let mut b = Backup::new(name, stored.spec.clone());
            b.spec.storage_location = Some(bsl_name.clone());
            let mut labels = stored.metadata.labels.clone().unwrap_or_default();
            labels.insert(STORAGE_LOCATION_LABEL.into(), label_value(&bsl_name));
            b.metadata.labels = Some(labels);
            b.metadata.annotations = Some(BTreeMap::from([(
                SYNCED_ANNOTATION.to_string(),
                bsl_name.clone(),
            )]));
            b.metadata.namespace = Some(ns.to_string());
            let mut rv = here
                .get(name)
                .and_then(|b| b.metadata.resource_version.clone());
            if unfinished.is_none() {
                match backups.create(&PostParams::default(), &b).await {
                    Ok(made) => rv = made.metadata.resource_version,
                    // Another sync (or a create) got there first.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => {
                        return Err(Error::kube(format!("create synced backup {ns}/{name}"), e));
                    }
                }
                crate::server::pause_point("sync-created").await;
            }
            let mut status = stored.status.clone().unwrap_or_default();
            status.snapshot_id = Some(id.to_hex());
            // Conditional on the Backup as made or read: changed since (another sync,
            // a user), the next sync looks again.
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": rv },
                "status": status,
            });
            match backups
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => report.created.push(name.clone()),
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                Err(e) => {
                    return Err(Error::kube(
                        format!("write the status of synced backup {ns}/{name}"),
                        e,
                    ));
                }
            }
        }
        // A finished backup of this location whose record is gone was deleted elsewhere
        // (Velero's deleteOrphanedBackups: by the storage-location label, never by a
        // guess; a Backup that names no location is never removed here).
        let mine = label_value(&bsl_name);
        for (name, b) in &here {
            let of_this = match b.labels().get(STORAGE_LOCATION_LABEL) {
                Some(l) => *l == mine,
                None => b.spec.storage_location.as_deref() == Some(bsl_name.as_str()),
            };
            let phase = b
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            if of_this
                && matches!(phase, "Completed" | "PartiallyFailed")
                && !list.contains_key(name)
            {
                match backups.delete(name, &DeleteParams::default()).await {
                    Ok(_) => report.removed.push(name.clone()),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(Error::kube(format!("remove backup {ns}/{name}"), e)),
                }
            }
        }
    }
    Ok(report)
}

/// A backup's stored record: repository, snapshot, and the Backup as stored.
pub async fn backup_record(
    client: &Client,
    ns: &str,
    backup: &str,
    cache_root: Option<&Path>,
) -> Result<(Indexed, SnapshotId, Backup)> {
    crate::restore::find_backup(client, ns, backup, cache_root).await
}

/// A backup's warnings and errors.
pub async fn backup_results(repo: &Indexed, id: &SnapshotId) -> Result<Results> {
    read_json(repo, id, "results.json").await
}

/// A backup's (or restore's) log.
pub async fn record_log(repo: &Indexed, id: &SnapshotId) -> Result<String> {
    Ok(String::from_utf8_lossy(&read_file(repo, id, "log.txt").await?).into_owned())
}

/// Write a backup's items as Velero's backup tarball (`velero backup download`): gzip'd
/// tar with `metadata/version` and, per item, `resources/<resource.group>/namespaces/<ns>/
/// <name>.json` (or `cluster/<name>.json`) and the same under `<version>-preferredversion/`
/// (every item is stored at the server's preferred version). Returns the item count.
pub async fn download_backup(
    repo: &Indexed,
    id: &SnapshotId,
    out: impl std::io::Write,
) -> Result<usize> {
    let staging = crate::restore::stage_record(repo, id).await?;
    let snap = repo.repo().snapshot(id).await?;
    let io = |what: String| move |e: std::io::Error| Error::Io { what, source: e };
    let items: Vec<ItemRef> = serde_json::from_slice(
        &std::fs::read(staging.path().join("items.json")).map_err(io("read items.json".into()))?,
    )
    .map_err(|e| Error::Json {
        what: "items.json".into(),
        source: e,
    })?;
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(snap.time.seconds.max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data)
            .map_err(io(format!("write {path} to the tarball")))
    };
    add("metadata/version", b"1.1.0\n")?;
    for i in &items {
        let data = std::fs::read(staging.path().join(i.path()))
            .map_err(io(format!("read {}", i.path())))?;
        let place = match &i.namespace {
            Some(ns) => format!("namespaces/{ns}/{}.json", i.name),
            None => format!("cluster/{}.json", i.name),
        };
        let gr = i.group_resource();
        add(&format!("resources/{gr}/{place}"), &data)?;
        add(
            &format!("resources/{gr}/{}-preferredversion/{place}", i.version),
            &data,
        )?;
    }
    // Every byte down, or an error: a dropped writer would swallow a full disk.
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|mut out| out.flush())
        .map_err(io("finish the tarball".into()))?;
    Ok(items.len())
}

/// The claims whose data a backup moved (empty for a backup that moved none).
pub async fn backup_volumes(
    repo: &Indexed,
    id: &SnapshotId,
) -> Result<Vec<crate::datamover::MovedVolume>> {
    match read_json(repo, id, crate::datamover::VOLUMES_FILE).await {
        Ok(v) => Ok(v),
        Err(crate::Error::NotFound(_) | crate::Error::Engine(arca_engine::Error::NotFound(_))) => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// A backup's or restore's hook runs (none when it ran none).
pub async fn record_hooks(repo: &Indexed, id: &SnapshotId) -> Result<Vec<crate::hooks::HookRun>> {
    match read_json(repo, id, crate::hooks::HOOKS_FILE).await {
        Ok(v) => Ok(v),
        Err(crate::Error::NotFound(_) | crate::Error::Engine(arca_engine::Error::NotFound(_))) => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// A backup's item list.
pub async fn backup_items(repo: &Indexed, id: &SnapshotId) -> Result<Vec<ItemRef>> {
    read_json(repo, id, "items.json").await
}

/// A restore's stored record: found through its backup's location.
pub async fn restore_record(
    client: &Client,
    ns: &str,
    restore: &str,
    cache_root: Option<&Path>,
) -> Result<(Indexed, SnapshotId)> {
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    let r = api
        .get_opt(restore)
        .await
        .map_err(|e| Error::kube(format!("read restore {ns}/{restore}"), e))?
        .ok_or_else(|| Error::NotFound(format!("no restore {restore:?} in namespace {ns}")))?;
    let backup = r.spec.backup_name.clone().unwrap_or_default();
    let (loc, _) = Location::of_backup(client, ns, &backup, cache_root).await?;
    let repo = loc
        .open(&loc.resources_url(), cache_root, &writer(ns))
        .await?;
    let (id, _) = latest_record(&repo, RESTORE_TAG, RESTORE_NAME_LABEL, restore)
        .await?
        .ok_or_else(|| Error::NotFound(format!("restore {restore:?} has no stored record (it has not finished, or storing it failed)")))?;
    Ok((repo, id))
}

/// What deleting a backup removed.
#[derive(Clone, Debug, Default)]
pub struct DeleteReport {
    /// Repository snapshots forgotten (backup and restore records).
    pub records_forgotten: usize,
    /// Restores of the backup removed from the cluster.
    pub restores_deleted: Vec<String>,
    /// Volume snapshots forgotten (the data its DataUploads moved).
    pub volume_snapshots_forgotten: usize,
}

/// Forget the volume snapshots a backup's DataUploads made, in each namespace's
/// repository (their data is reclaimed by that repository's maintenance). Snapshots
/// already gone (a deletion run again) are skipped.
async fn forget_volumes(
    loc: &Location,
    volumes: &[crate::datamover::MovedVolume],
    cache_root: Option<&Path>,
    ns: &str,
) -> Result<usize> {
    let mut by_ns: BTreeMap<&str, Vec<SnapshotId>> = BTreeMap::new();
    for v in volumes {
        if let Some(id) = v.snapshot_id.as_deref().and_then(|s| s.parse().ok()) {
            by_ns.entry(v.namespace.as_str()).or_default().push(id);
        }
    }
    let mut n = 0;
    for (vns, ids) in by_ns {
        let repo = loc
            .open(&loc.volumes_url(vns), cache_root, &writer(ns))
            .await?;
        let (snaps, _) = repo.repo().readable_snapshots().await?;
        for id in ids {
            if snaps.iter().any(|(s, _)| *s == id) {
                repo.repo().delete_snapshot(&id).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Ask for a backup's deletion, the way Velero does: a DeleteBackupRequest, which the
/// server's deletion controller processes ([`process_deletion`]).
pub async fn request_deletion(
    client: &Client,
    ns: &str,
    backup: &str,
) -> Result<DeleteBackupRequest> {
    let dbrs: Api<DeleteBackupRequest> = Api::namespaced(client.clone(), ns);
    let mut req = DeleteBackupRequest::new(
        "",
        DeleteBackupRequestSpec {
            backup_name: backup.to_string(),
        },
    );
    req.metadata.name = None;
    req.metadata.generate_name = Some(format!("{backup}-"));
    let mut labels = BTreeMap::from([(BACKUP_NAME_LABEL.to_string(), label_value(backup))]);
    let bapi: Api<Backup> = Api::namespaced(client.clone(), ns);
    if let Ok(Some(b)) = bapi.get_opt(backup).await
        && let Some(uid) = b.metadata.uid
    {
        labels.insert(BACKUP_UID_LABEL.to_string(), uid);
    }
    req.metadata.labels = Some(labels);
    dbrs.create(&PostParams::default(), &req)
        .await
        .map_err(|e| {
            Error::kube(
                format!("create a delete request for backup {ns}/{backup}"),
                e,
            )
        })
}

/// Process a DeleteBackupRequest (Velero's backup deletion controller): refused while the
/// backup runs or when its location is read-only; the Backup goes to phase Deleting; its
/// stored records (when it stands for them), its restores and the Backup are removed.
/// The request ends Processed, with the errors if any; on success every request of the
/// backup is removed (nothing is left to say). Running it again after a kill is safe:
/// what is gone is not looked for.
pub async fn process_deletion(
    client: &Client,
    ns: &str,
    req: &DeleteBackupRequest,
    cache_root: Option<&Path>,
) -> Result<DeleteReport> {
    let dbrs: Api<DeleteBackupRequest> = Api::namespaced(client.clone(), ns);
    let req_name = req.name_any();
    let backup = req.spec.backup_name.as_str();
    let set = |phase: &str, errors: Vec<String>| {
        let st = DeleteBackupRequestStatus {
            phase: Some(phase.into()),
            errors: (!errors.is_empty()).then_some(errors),
        };
        let dbrs = dbrs.clone();
        let req_name = req_name.clone();
        async move {
            dbrs.patch_status(
                &req_name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "status": st })),
            )
            .await
            .map_err(|e| Error::kube(format!("update delete request {ns}/{req_name}"), e))
        }
    };
    if backup.is_empty() {
        let e = Error::Invalid("spec.backupName is required".into());
        set("Processed", vec![e.to_string()]).await?;
        return Err(e);
    }
    set("InProgress", vec![]).await?;
    let work = || async move {
        // Velero's deletion controller refuses a backup still running: the run would
        // store its record after the deletion, and the next sync would bring it back.
        let bapi: Api<Backup> = Api::namespaced(client.clone(), ns);
        let resource = bapi
            .get_opt(backup)
            .await
            .map_err(|e| Error::kube(format!("read backup {ns}/{backup}"), e))?;
        // Velero's rule: a request is for one Backup (its UID, when it existed). Gone: a
        // request made for it was processed already (a replay after a kill) or it never
        // was; nothing is deleted by name alone, so a namesake stored since (another
        // cluster's) is never touched.
        let for_uid = req.labels().get(BACKUP_UID_LABEL).cloned();
        let Some(b) = &resource else {
            return match for_uid {
                Some(_) => Ok(DeleteReport::default()),
                None => Err(Error::NotFound(format!(
                    "backup not found: no Backup {backup:?} in namespace {ns} (`arca backup get` syncs those stored in the locations)"
                ))),
            };
        };
        if for_uid.is_some() && for_uid != b.metadata.uid {
            return Err(Error::Invalid(format!(
                "backup {backup} was made again since this request: ask again to delete the new one"
            )));
        }
        {
            let phase = b
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            // Waiting for its data movements or finalizing, it is still running.
            if matches!(
                phase.as_str(),
                "" | "New" | "Queued" | "InProgress" | "WaitingForPluginOperations" | "Finalizing"
            ) {
                return Err(Error::Invalid(format!(
                    "backup {backup} is still {}: it can be deleted once it has ended",
                    if phase.is_empty() { "New" } else { &phase }
                )));
            }
        }
        let (loc, _) = Location::of_backup(client, ns, backup, cache_root).await?;
        if loc.read_only {
            return Err(Error::Invalid(format!(
                "backup {backup} is in storage location {}, which is read-only: nothing was deleted",
                loc.name
            )));
        }
        if loc.phase.as_deref() == Some("Unavailable") {
            return Err(Error::Invalid(format!(
                "cannot delete backup {backup}: its storage location {} is Unavailable (see `arca backup-location get`)",
                loc.name
            )));
        }
        crate::server::pause_point("deletion-judged").await;
        // Conditional on the Backup as read (its phase judged above): a namesake made
        // since, or a run begun since, is never marked Deleting.
        let deleting = serde_json::json!({
            "metadata": { "resourceVersion": b.metadata.resource_version },
            "status": { "phase": "Deleting" },
        });
        match bapi
            .patch_status(backup, &PatchParams::default(), &Patch::Merge(&deleting))
            .await
        {
            Ok(_) => {}
            // 409 (changed since it was read) or 404 (gone meanwhile): judged again below.
            Err(e) => {
                return Err(Error::kube(
                    format!("mark backup {ns}/{backup} Deleting"),
                    e,
                ));
            }
        }
        let repo = loc
            .open(&loc.resources_url(), cache_root, &writer(ns))
            .await?;
        let (snaps, _) = repo.repo().readable_snapshots().await?;
        // Its records, each with whether it is the backup's own (else a restore's); the
        // backup's own last: it is what proves the Backup stands for these records (its
        // UID), so a deletion killed halfway finds it again and forgets the restore
        // records it left.
        let mut mine: Vec<(SnapshotId, bool)> = snaps
            .iter()
            .filter(|(_, s)| s.labels.get(BACKUP_NAME_LABEL).map(String::as_str) == Some(backup))
            .filter_map(|(id, s)| {
                let own = s.tags.iter().any(|t| t == BACKUP_TAG);
                (own || s.tags.iter().any(|t| t == RESTORE_TAG)).then_some((*id, own))
            })
            .collect();
        mine.sort_by_key(|&(_, own)| own);
        // A Backup that stored nothing (refused because its location already held that
        // name: another cluster's backup) must not take that backup's record with it. The
        // records go when the Backup stands for them: synced from them, or the one that
        // stored them (same UID).
        let owns = b.annotations().contains_key(SYNCED_ANNOTATION) || {
            let mut owns = false;
            for (id, _) in mine.iter().filter(|(_, own)| *own) {
                let stored: Backup = read_json(&repo, id, "backup.json").await?;
                owns |= stored.metadata.uid.is_some() && stored.metadata.uid == b.metadata.uid;
            }
            owns
        };
        let mine = if owns { mine } else { Vec::new() };
        let mut report = DeleteReport::default();
        // Its volume data first: a deletion killed after the records went would leave
        // the volume snapshots with nothing naming them.
        for (id, _) in mine.iter().filter(|(_, own)| *own) {
            let volumes = backup_volumes(&repo, id).await?;
            report.volume_snapshots_forgotten +=
                forget_volumes(&loc, &volumes, cache_root, ns).await?;
        }
        // Killed here, the records still name volume snapshots that are gone: the
        // request, run again, forgets what is left (forget_volumes skips what is gone).
        crate::server::pause_point("deletion-volumes-forgotten").await;
        for (id, _) in &mine {
            repo.repo().delete_snapshot(id).await?;
            report.records_forgotten += 1;
        }
        let restores: Api<Restore> = Api::namespaced(client.clone(), ns);
        let list = restores
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::kube(format!("list restores in {ns}"), e))?;
        for r in list
            .items
            .iter()
            .filter(|r| r.spec.backup_name.as_deref() == Some(backup))
        {
            let n = r.name_any();
            match restores.delete(&n, &DeleteParams::default()).await {
                Ok(_) => report.restores_deleted.push(n),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("delete restore {ns}/{n}"), e)),
            }
        }
        // Only the Backup judged above (its UID): never a namesake made meanwhile.
        let this_one = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: b.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match bapi.delete(backup, &this_one).await {
            Ok(_) => {}
            // 409: the UID differs, the one judged is gone and a namesake stays.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("delete backup {ns}/{backup}"), e)),
        }
        Ok(report)
    };
    // The Backup changed between the judgement and its Deleting mark (a label written
    // meanwhile, a namesake, gone): judged again from a fresh read, a few times.
    let mut outcome = work().await;
    for _ in 0..3 {
        match &outcome {
            Err(Error::Kube { error, .. }) if matches!(error.as_ref(), kube::Error::Api(s) if s.code == 409 || s.code == 404) =>
            {
                outcome = work().await;
            }
            _ => break,
        }
    }
    match outcome {
        Ok(report) => {
            set("Processed", vec![]).await?;
            // Done: the requests of this backup (this one: its name and UID) have nothing
            // more to say.
            let mut sel = format!("{BACKUP_NAME_LABEL}={}", label_value(backup));
            if let Some(uid) = req.labels().get(BACKUP_UID_LABEL) {
                sel.push_str(&format!(",{BACKUP_UID_LABEL}={uid}"));
            }
            let _ = dbrs
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(&sel),
                )
                .await;
            Ok(report)
        }
        Err(e) => {
            set("Processed", vec![e.to_string()]).await?;
            Err(e)
        }
    }
}

/// Delete a restore: its resource and its stored record (the restored objects stay).
pub async fn delete_restore(
    client: &Client,
    ns: &str,
    restore: &str,
    cache_root: Option<&Path>,
) -> Result<bool> {
    let forgotten = match restore_record(client, ns, restore, cache_root).await {
        Ok((repo, id)) => {
            repo.repo().delete_snapshot(&id).await?;
            true
        }
        Err(Error::NotFound(_)) => false,
        Err(e) => return Err(e),
    };
    let api: Api<Restore> = Api::namespaced(client.clone(), ns);
    match api.delete(restore, &DeleteParams::default()).await {
        Ok(_) => Ok(forgotten),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::NotFound(format!(
            "no restore {restore:?} in namespace {ns}"
        ))),
        Err(e) => Err(Error::kube(format!("delete restore {ns}/{restore}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ObjectMetaTemplate, Schedule, ScheduleSpec};

    #[test]
    fn a_backup_from_a_schedule_is_velero_builders() {
        let mut spec = ScheduleSpec {
            schedule: "0 1 * * *".into(),
            ..Default::default()
        };
        spec.template.included_namespaces = Some(vec!["app".into()]);
        let mut s = Schedule::new("nightly", spec);
        s.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        s.metadata.annotations = Some(BTreeMap::from([("note".into(), "n".into())]));
        let b = backup_from_schedule(&s, "nightly-20261201010000");
        assert_eq!(b.spec, s.spec.template, "the template, nothing added");
        let l = b.metadata.labels.clone().unwrap();
        assert_eq!(l["team"], "a", "no template labels: the schedule's");
        assert_eq!(l[SCHEDULE_NAME_LABEL], "nightly");
        assert_eq!(l["velero.io/schedule-name"], "nightly");
        assert_eq!(b.metadata.annotations, s.metadata.annotations);
        s.spec.template.metadata = Some(ObjectMetaTemplate {
            labels: Some(BTreeMap::from([("tier".into(), "db".into())])),
        });
        let l = backup_from_schedule(&s, "x").metadata.labels.unwrap();
        assert!(
            l.contains_key("tier") && !l.contains_key("team"),
            "the template's win: {l:?}"
        );
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-01T23:30:00-05:00")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            scheduled_backup_name("nightly", t),
            "nightly-20261202043000"
        );
    }
}
