//! StatefulSets: the claim templates' storage classes follow the storage-class mapping
//! (Velero's change_storageclass_action.go).

use serde_json::Value;

use super::{Context, Verdict};

pub(super) fn transform(sts: &mut Value, ctx: &Context) -> Verdict {
    for t in sts
        .pointer_mut("/spec/volumeClaimTemplates")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        ctx.map_storage_class(t.pointer_mut("/spec/storageClassName"));
    }
    Verdict::Restore
}
