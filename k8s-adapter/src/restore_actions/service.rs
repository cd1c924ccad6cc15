//! Services (Velero's pkg/restore/actions/service_action.go): the cluster IP is assigned
//! anew unless headless; node ports are kept with `preserveNodePorts`, or when the user
//! chose them: named in the last-applied configuration (matched by port name, or by number
//! for unnamed ports), else owned in `managedFields` (matched by port and protocol). A
//! health-check node port the cluster assigned goes.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Context, Verdict, str_at};

const LAST_APPLIED: &str =
    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration";

pub(super) fn transform(svc: &mut Value, ctx: &Context) -> Verdict {
    if str_at(svc, "/spec/clusterIP") != Some("None")
        && let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    if ctx.preserve_node_ports || str_at(svc, "/spec/type") == Some("ExternalName") {
        return Verdict::Restore;
    }
    let last: Option<Value> = str_at(svc, LAST_APPLIED).and_then(|s| serde_json::from_str(s).ok());
    let keep = explicit_node_ports(svc, last.as_ref());
    for p in svc
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if !keep(p)
            && let Some(o) = p.as_object_mut()
        {
            o.remove("nodePort");
        }
    }
    remove_assigned_health_check_port(svc, last.as_ref());
    Verdict::Restore
}

fn port_key(p: &Value) -> String {
    format!(
        r#"k:{{"port":{},"protocol":"{}"}}"#,
        p.get("port").and_then(Value::as_i64).unwrap_or(0),
        p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
    )
}

/// Which ports keep their node port.
fn explicit_node_ports(svc: &Value, last: Option<&Value>) -> impl Fn(&Value) -> bool + use<> {
    let (mut names, mut numbers, mut keys) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let from_last = last.is_some();
    if let Some(last) = last {
        for p in last
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) <= 0 {
                continue;
            }
            match p
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(n) => drop(names.insert(n.to_string())),
                None => drop(numbers.insert(p["nodePort"].as_i64().unwrap_or(0))),
            }
        }
    } else {
        for m in svc
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for (k, v) in m
                .pointer("/fieldsV1/f:spec/f:ports")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if v.get("f:nodePort").is_some() {
                    keys.insert(k.clone());
                }
            }
        }
    }
    move |p: &Value| {
        if from_last {
            match p
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(n) => names.contains(n),
                None => p
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .is_some_and(|n| numbers.contains(&n)),
            }
        } else {
            keys.contains(&port_key(p))
        }
    }
}

fn remove_assigned_health_check_port(svc: &mut Value, last: Option<&Value>) {
    let applies = str_at(svc, "/spec/externalTrafficPolicy") == Some("Local")
        && str_at(svc, "/spec/type") == Some("LoadBalancer")
        && svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            != 0;
    if !applies {
        return;
    }
    let in_last = last
        .and_then(|l| l.pointer("/spec/healthCheckNodePort"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
        != 0;
    let in_managed = svc
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|m| {
            m.pointer("/fieldsV1/f:spec/f:healthCheckNodePort")
                .is_some()
        });
    if !in_last
        && !in_managed
        && let Some(s) = svc.get_mut("spec").and_then(Value::as_object_mut)
    {
        s.remove("healthCheckNodePort");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(last: Option<Value>, managed: Option<Value>) -> Value {
        let mut v = json!({
            "metadata": {"name": "web", "annotations": {}},
            "spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                               {"name": "metrics", "port": 9090, "protocol": "TCP", "nodePort": 31090},
                               {"port": 53, "protocol": "UDP", "nodePort": 30053}]}
        });
        if let Some(l) = last {
            v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
                json!(l.to_string());
        }
        if let Some(m) = managed {
            v["metadata"]["managedFields"] = m;
        }
        v
    }

    fn node_ports(v: &Value) -> Vec<Option<i64>> {
        v["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect()
    }

    #[test]
    fn last_applied_matches_by_name_then_number() {
        // The user set http's node port (the cluster renumbered nothing) and the UDP one.
        let last = json!({"spec": {"ports": [{"name": "http", "port": 80, "nodePort": 30080},
                                             {"port": 53, "protocol": "UDP", "nodePort": 30053}]}});
        let mut v = svc(Some(last), None);
        transform(&mut v, &Context::default());
        assert_eq!(node_ports(&v), [Some(30080), None, Some(30053)]);
        assert!(v["spec"].get("clusterIP").is_none() && v["spec"].get("clusterIPs").is_none());
    }

    #[test]
    fn managed_fields_match_by_port_and_protocol() {
        let managed = json!([{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:ports": {
            r#"k:{"port":9090,"protocol":"TCP"}"#: {"f:nodePort": {}, "f:port": {}},
            r#"k:{"port":80,"protocol":"TCP"}"#: {"f:port": {}}}}}}]);
        let mut v = svc(None, Some(managed));
        transform(&mut v, &Context::default());
        assert_eq!(node_ports(&v), [None, Some(31090), None]);
    }

    #[test]
    fn preserve_keeps_all_and_headless_keeps_none() {
        let ctx = Context {
            preserve_node_ports: true,
            ..Default::default()
        };
        let mut v = svc(None, None);
        transform(&mut v, &ctx);
        assert_eq!(node_ports(&v), [Some(30080), Some(31090), Some(30053)]);
        let mut h = json!({"spec": {"clusterIP": "None", "ports": []}});
        transform(&mut h, &Context::default());
        assert_eq!(h["spec"]["clusterIP"], "None");
    }

    #[test]
    fn the_health_check_port_goes_only_when_assigned() {
        let lb = |managed: bool| {
            let mut v = json!({"metadata": {}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                                                  "healthCheckNodePort": 32000, "ports": []}});
            if managed {
                v["metadata"]["managedFields"] =
                    json!([{"fieldsV1": {"f:spec": {"f:healthCheckNodePort": {}}}}]);
            }
            v
        };
        let mut assigned = lb(false);
        transform(&mut assigned, &Context::default());
        assert!(assigned["spec"].get("healthCheckNodePort").is_none());
        let mut chosen = lb(true);
        transform(&mut chosen, &Context::default());
        assert_eq!(chosen["spec"]["healthCheckNodePort"], 32000);
        let mut cluster_policy = lb(false);
        cluster_policy["spec"]["externalTrafficPolicy"] = json!("Cluster");
        transform(&mut cluster_policy, &Context::default());
        assert_eq!(cluster_policy["spec"]["healthCheckNodePort"], 32000);
    }
}
