//! Backup item actions: for an item being backed up, the items that must come with it
//! although the filters may not list their types (Velero's pkg/backup/actions and
//! pkg/util/actionhelpers). One small module per kind, registered in [`ACTIONS`]; each is a
//! pure function of the item (and of what the backup read once, [`Context`]).
//!
//! What is done with the answer is `backup::collect`'s: a related item is taken unless its
//! namespace is filtered out, its type is excluded (Velero's `ShouldExclude`), it carries
//! the exclude label or it is being deleted. The label selector does not apply to it.

mod pod;
mod pvc;
mod service_account;

use serde_json::Value;

/// An item another one needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Related {
    /// `resource.group`.
    pub group_resource: String,
    /// Its namespace, for namespaced items.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl Related {
    fn new(group_resource: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group_resource: group_resource.into(),
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }
}

/// What the actions may consult besides the item, read once per backup.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Every ClusterRoleBinding in the cluster (for the service account action).
    pub cluster_role_bindings: Vec<Value>,
}

/// An action: the items an item of this type needs.
pub type RelatedFn = fn(&Value, &Context) -> Vec<Related>;

/// The registered actions, by `resource.group` of the item they apply to.
pub const ACTIONS: &[(&str, RelatedFn)] = &[
    ("pods", pod::related),
    ("persistentvolumeclaims", pvc::related),
    ("serviceaccounts", service_account::related),
];

/// The items `obj` (of type `group_resource`) needs.
pub fn related(group_resource: &str, obj: &Value, ctx: &Context) -> Vec<Related> {
    ACTIONS
        .iter()
        .filter(|(gr, _)| *gr == group_resource)
        .flat_map(|(_, f)| f(obj, ctx))
        .collect()
}

/// Whether any registered action needs the ClusterRoleBindings.
pub fn needs_cluster_role_bindings(group_resource: &str) -> bool {
    group_resource == "serviceaccounts"
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}
