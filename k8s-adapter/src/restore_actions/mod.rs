//! Restore item actions: the per-kind rules applied to an item before it is created in the
//! target cluster, and the items it brings along (Velero's pkg/restore/actions). One small
//! module per kind, registered in [`ACTIONS`]; each is a pure function of the item and of
//! what the restore read before it began ([`Context`]), so it is tested without a cluster.
//!
//! `restore.rs` runs them after the common clean-up (server-set metadata, owner references,
//! status, namespace mapping) and before `managedFields` goes, which the Service rule reads.

mod job;
mod pod;
mod pv;
mod pvc;
mod rbac;
mod secret;
mod service;
mod service_account;
mod statefulset;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

pub use crate::backup_actions::Related;
pub use pv::provisioned_dynamically;

/// What the actions may consult besides the item.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// `namespaceMapping`: source namespace to target namespace.
    pub mapping: BTreeMap<String, String>,
    /// The storage-class mapping (old name to new).
    pub storage_classes: BTreeMap<String, String>,
    /// `preserveNodePorts`.
    pub preserve_node_ports: bool,
    /// Volumes the target cluster provisions anew: backed-up volumes whose reclaim policy
    /// is Delete and whose data no volume backup restores. They are not restored; their
    /// claims lose `volumeName`.
    pub pvs_to_provision: BTreeSet<String>,
    /// Claims whose data a DataDownload restores, by (target namespace, name): the label
    /// value of their selector (their new volume binds to them alone).
    pub moved_claims: BTreeMap<(String, String), String>,
    /// Volumes restored under a new name (the rename rule), old name to new.
    pub renamed_pvs: BTreeMap<String, String>,
    /// Pods whose volumes a PodVolumeRestore writes, by (target namespace, pod): the
    /// volumes (they get the restore-wait init container).
    pub pod_volumes: BTreeMap<(String, String), Vec<String>>,
    /// The restore's UID (the restore-wait container waits for its done files).
    pub restore_uid: String,
    /// The restore-wait container's image.
    pub restore_wait_image: String,
    /// The restore's hooks (their init containers go into the pods they select).
    pub restore_hooks: Vec<crate::crd::RestoreResourceHookSpec>,
    /// Service accounts in each target namespace once the restore is done: those already
    /// in the cluster and those being restored (for the token-Secret rule).
    pub service_accounts: BTreeMap<String, BTreeSet<String>>,
}

impl Context {
    /// The target namespace of a source namespace.
    pub fn target_ns(&self, ns: &str) -> String {
        self.mapping
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_string())
    }

    fn map_storage_class(&self, v: Option<&mut Value>) {
        if let Some(v) = v
            && let Some(s) = v.as_str().and_then(|s| self.storage_classes.get(s))
        {
            *v = json!(s);
        }
    }
}

/// What to do with an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Create it (as changed).
    Restore,
    /// Leave it out, saying why (logged, not a warning).
    Skip(String),
}

/// A rule: change the item, or skip it.
pub type Transform = fn(&mut Value, &Context) -> Verdict;

/// One registered action.
pub struct Action {
    /// `resource.group` of the items it applies to.
    pub resource: &'static str,
    /// Its change.
    pub transform: Transform,
}

/// The registered actions.
pub const ACTIONS: &[Action] = &[
    Action {
        resource: "persistentvolumes",
        transform: pv::transform,
    },
    Action {
        resource: "persistentvolumeclaims",
        transform: pvc::transform,
    },
    Action {
        resource: "pods",
        transform: pod::transform,
    },
    Action {
        resource: "jobs.batch",
        transform: job::transform,
    },
    Action {
        resource: "services",
        transform: service::transform,
    },
    Action {
        resource: "serviceaccounts",
        transform: service_account::transform,
    },
    Action {
        resource: "secrets",
        transform: secret::transform,
    },
    Action {
        resource: "rolebindings.rbac.authorization.k8s.io",
        transform: rbac::transform,
    },
    Action {
        resource: "clusterrolebindings.rbac.authorization.k8s.io",
        transform: rbac::transform,
    },
    Action {
        resource: "statefulsets.apps",
        transform: statefulset::transform,
    },
];

/// Apply the action of `group_resource`, if any.
pub fn transform(group_resource: &str, obj: &mut Value, ctx: &Context) -> Verdict {
    ACTIONS
        .iter()
        .find(|a| a.resource == group_resource)
        .map_or(Verdict::Restore, |a| (a.transform)(obj, ctx))
}

/// The items an item of `group_resource` brings along, read from its backed-up copy: a
/// pod its claims and PriorityClass (Velero's add-pvc-from-pod and pod actions), a claim
/// bound in the backup its volume. These are the backup's related items (`backup_actions`)
/// without what needs the cluster (a service account's bindings are not restore's).
pub fn additional(group_resource: &str, obj: &Value) -> Vec<Related> {
    crate::backup_actions::related(
        group_resource,
        obj,
        &crate::backup_actions::Context::default(),
    )
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn remove_annotations(obj: &mut Value, keys: &[&str]) {
    if let Some(a) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for k in keys {
            a.remove(*k);
        }
    }
}

fn remove_at(obj: &mut Value, parent: &str, key: &str) {
    if let Some(o) = obj.pointer_mut(parent).and_then(Value::as_object_mut) {
        o.remove(key);
    }
}

/// Velero's resetVolumeBindingInfo (pkg/restore/restore.go), for volumes and claims alike.
fn reset_volume_binding(obj: &mut Value) {
    remove_at(obj, "/spec/claimRef", "uid");
    remove_at(obj, "/spec/claimRef", "resourceVersion");
    remove_annotations(
        obj,
        &[
            "pv.kubernetes.io/bind-completed",
            "pv.kubernetes.io/bound-by-controller",
        ],
    );
}
