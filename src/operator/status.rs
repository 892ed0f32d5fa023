//! A pool's status from what the operator observed: pure, `now` passed in.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::builders::{SpecError, connection_name, node_cache_name, router_name};
use crate::crd::{KvCachePool, KvCachePoolStatus, NodeCacheStatus, RouterStatus};

/// What the operator saw of a pool's children and engines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Nodes the node-cache DaemonSet should run on.
    pub node_cache_desired: i32,
    /// Node caches ready.
    pub node_cache_ready: i32,
    /// Router replicas wanted.
    pub router_desired: i32,
    /// Router replicas ready.
    pub router_ready: i32,
    /// Ready inference pods matching the selector.
    pub endpoints: i32,
}

/// The status to write: conditions keep their `lastTransitionTime` while
/// their status does not change.
pub fn compute(
    pool: &KvCachePool,
    observed: &Observed,
    spec_error: Option<&SpecError>,
    cluster_domain: &str,
    now: Time,
) -> KvCachePoolStatus {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let ns = pool.metadata.namespace.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let previous = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let o = observed;
    let mut conditions = Vec::new();
    if let Some(e) = spec_error {
        conditions.push(cond("SpecValid", false, "InvalidSpec", e.to_string()));
        conditions.push(cond(
            "Ready",
            false,
            "InvalidSpec",
            format!("the spec is invalid: {e}; nothing was changed"),
        ));
        return KvCachePoolStatus {
            observed_generation: generation,
            conditions,
            ..pool.status.clone().unwrap_or_default()
        };
    }
    conditions.push(cond("SpecValid", true, "Valid", "the spec is valid".into()));
    let nodes_ok = o.node_cache_desired > 0 && o.node_cache_ready >= o.node_cache_desired;
    let (reason, msg) = if o.node_cache_desired == 0 {
        (
            "NoNodes",
            "no node matches the node cache's node selector and tolerations".to_string(),
        )
    } else if nodes_ok {
        (
            "AllReady",
            format!(
                "{}/{} node caches ready",
                o.node_cache_ready, o.node_cache_desired
            ),
        )
    } else {
        (
            "NotReady",
            format!(
                "{}/{} node caches ready",
                o.node_cache_ready, o.node_cache_desired
            ),
        )
    };
    conditions.push(cond("NodeCacheReady", nodes_ok, reason, msg));
    let router_ok = o.router_desired > 0 && o.router_ready >= o.router_desired;
    let (reason, msg) = if o.router_desired == 0 {
        ("ScaledToZero", "router.replicas is 0".to_string())
    } else if router_ok {
        (
            "Available",
            format!(
                "{}/{} router replicas ready",
                o.router_ready, o.router_desired
            ),
        )
    } else {
        (
            "Unavailable",
            format!(
                "{}/{} router replicas ready",
                o.router_ready, o.router_desired
            ),
        )
    };
    conditions.push(cond("RouterReady", router_ok, reason, msg));
    let ready = if !nodes_ok {
        cond(
            "Ready",
            false,
            "NodeCacheNotReady",
            "node caches are not all ready".into(),
        )
    } else if !router_ok {
        cond(
            "Ready",
            false,
            "RouterNotReady",
            "the router is not ready".into(),
        )
    } else if o.endpoints == 0 {
        cond(
            "Ready",
            false,
            "NoEndpoints",
            "no ready inference pod matches the selector".into(),
        )
    } else {
        cond(
            "Ready",
            true,
            "PoolReady",
            format!("routing to {} inference pods", o.endpoints),
        )
    };
    conditions.push(ready);
    let spec = &pool.spec;
    KvCachePoolStatus {
        observed_generation: generation,
        conditions,
        node_cache: NodeCacheStatus {
            desired: o.node_cache_desired,
            ready: o.node_cache_ready,
            summary: format!("{}/{}", o.node_cache_ready, o.node_cache_desired),
        },
        router: RouterStatus {
            replicas: o.router_desired,
            ready: o.router_ready,
        },
        endpoints: o.endpoints,
        router_url: Some(format!(
            "http://{}.{ns}.svc.{cluster_domain}:{}",
            router_name(&name),
            spec.router.port
        )),
        node_cache_url: Some(format!(
            "lm://{}.{ns}.svc.{cluster_domain}:{}",
            node_cache_name(&name),
            spec.node_cache.lm_port
        )),
        connection_config_map: Some(connection_name(&name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn pool() -> KvCachePool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kvmesh.io/v1alpha1", "kind": "KvCachePool",
            "metadata": {"name": "llama", "namespace": "inference", "generation": 4},
            "spec": {"selector": {"matchLabels": {"app": "v"}}, "nodeCache": {"memory": "8Gi"}}
        }))
        .expect("pool")
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("time"))
    }

    fn get<'a>(s: &'a KvCachePoolStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn a_pool_with_everything_ready_is_ready_and_says_where_to_connect() {
        let o = Observed {
            node_cache_desired: 3,
            node_cache_ready: 3,
            router_desired: 2,
            router_ready: 2,
            endpoints: 5,
        };
        let s = compute(&pool(), &o, None, "cluster.local", at(100));
        for t in ["SpecValid", "NodeCacheReady", "RouterReady", "Ready"] {
            assert_eq!(get(&s, t).status, "True", "{t}");
        }
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.node_cache.summary, "3/3");
        assert_eq!(
            s.router_url.as_deref(),
            Some("http://llama-router.inference.svc.cluster.local:8080")
        );
        assert_eq!(
            s.node_cache_url.as_deref(),
            Some("lm://llama-node-cache.inference.svc.cluster.local:65432")
        );
        assert_eq!(s.connection_config_map.as_deref(), Some("llama-connection"));
    }

    #[test]
    fn not_ready_says_why() {
        let cases = [
            (
                Observed {
                    node_cache_desired: 3,
                    node_cache_ready: 1,
                    router_desired: 2,
                    router_ready: 2,
                    endpoints: 1,
                },
                "NodeCacheNotReady",
            ),
            (
                Observed {
                    node_cache_desired: 3,
                    node_cache_ready: 3,
                    router_desired: 2,
                    router_ready: 0,
                    endpoints: 1,
                },
                "RouterNotReady",
            ),
            (
                Observed {
                    node_cache_desired: 3,
                    node_cache_ready: 3,
                    router_desired: 2,
                    router_ready: 2,
                    endpoints: 0,
                },
                "NoEndpoints",
            ),
        ];
        for (o, reason) in cases {
            let s = compute(&pool(), &o, None, "cluster.local", at(100));
            assert_eq!(
                (
                    get(&s, "Ready").status.as_str(),
                    get(&s, "Ready").reason.as_str()
                ),
                ("False", reason)
            );
        }
        let s = compute(&pool(), &Observed::default(), None, "cluster.local", at(1));
        assert_eq!(get(&s, "NodeCacheReady").reason, "NoNodes");
    }

    #[test]
    fn an_invalid_spec_is_reported_and_the_rest_of_the_status_is_kept() {
        let mut p = pool();
        p.status = Some(KvCachePoolStatus {
            endpoints: 7,
            ..KvCachePoolStatus::default()
        });
        let e = SpecError::MemoryTooSmall(1);
        let s = compute(&p, &Observed::default(), Some(&e), "cluster.local", at(5));
        assert_eq!(get(&s, "SpecValid").status, "False");
        assert!(get(&s, "SpecValid").message.contains("64Mi"));
        assert_eq!(get(&s, "Ready").reason, "InvalidSpec");
        assert_eq!(s.endpoints, 7);
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let ready = Observed {
            node_cache_desired: 1,
            node_cache_ready: 1,
            router_desired: 1,
            router_ready: 1,
            endpoints: 1,
        };
        let mut p = pool();
        p.status = Some(compute(&p, &ready, None, "cluster.local", at(10)));
        let again = compute(&p, &ready, None, "cluster.local", at(20));
        assert_eq!(get(&again, "Ready").last_transition_time, at(10));
        let down = compute(
            &p,
            &Observed {
                endpoints: 0,
                ..ready
            },
            None,
            "cluster.local",
            at(30),
        );
        assert_eq!(get(&down, "Ready").last_transition_time, at(30));
        assert_eq!(get(&down, "SpecValid").last_transition_time, at(10));
    }
}
