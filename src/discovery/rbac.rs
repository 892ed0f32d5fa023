//! Every Kubernetes call the router makes, as (API group, resource, verbs):
//! the chart's `kvmesh-router` ClusterRole must grant exactly these, and the
//! discovery tests check the router never calls outside them.

/// One permission: verbs on a resource of an API group ("" = core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// What `kvmesh router --selector/--pool` calls. Watches list first, then
/// watch; nothing is read one object at a time or written.
pub const ROUTER_RBAC: &[Permission] = &[
    Permission {
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
    },
    Permission {
        group: "kvmesh.io",
        resource: "kvcachepools",
        verbs: &["list", "watch"],
    },
    Permission {
        group: "inference.networking.k8s.io",
        resource: "inferencepools",
        verbs: &["list", "watch"],
    },
];

/// The RBAC verb of an API request (`GET` of one object is `get`, of a
/// collection `list`, with `watch=true` `watch`), and its group and resource;
/// None for paths that are not resources.
pub fn verb_of(method: &str, path_and_query: &str) -> Option<(&'static str, String, String)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => ("".to_string(), rest.to_vec()),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest.to_vec()),
        _ => return None,
    };
    let rest: Vec<&str> = match rest.as_slice() {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail.to_vec(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub] => (format!("{r}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named, watch) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", true, _) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => return None,
    };
    Some((verb, group, resource))
}

/// True when `table` grants `verb` on `group`/`resource`.
pub fn allows(table: &[Permission], verb: &str, group: &str, resource: &str) -> bool {
    table
        .iter()
        .any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_rbac_verbs() {
        let cases = [
            (
                "GET",
                "/api/v1/namespaces/a/pods?labelSelector=app%3Dv",
                ("list", "", "pods"),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods?watch=true&resourceVersion=5",
                ("watch", "", "pods"),
            ),
            (
                "GET",
                "/apis/kvmesh.io/v1alpha1/namespaces/a/kvcachepools/x",
                ("get", "kvmesh.io", "kvcachepools"),
            ),
            (
                "PATCH",
                "/apis/kvmesh.io/v1alpha1/namespaces/a/kvcachepools/x/status",
                ("patch", "kvmesh.io", "kvcachepools/status"),
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/a/events",
                ("create", "events.k8s.io", "events"),
            ),
            (
                "GET",
                "/apis/apps/v1/daemonsets?watch=1",
                ("watch", "apps", "daemonsets"),
            ),
        ];
        for (m, p, (v, g, r)) in cases {
            assert_eq!(
                verb_of(m, p),
                Some((v, g.to_string(), r.to_string())),
                "{m} {p}"
            );
        }
        assert_eq!(verb_of("GET", "/version"), None);
        assert!(allows(ROUTER_RBAC, "watch", "", "pods"));
        assert!(!allows(ROUTER_RBAC, "get", "", "pods"));
    }
}
