//! Every Kubernetes call the operator makes, as (API group, resource,
//! verbs): the chart's operator ClusterRole (and, for the Lease, its
//! leader-election Role) grants exactly these (tests/chart.rs), and the
//! end-to-end tests check the operator never calls outside them.

use crate::discovery::rbac::Permission;

/// Watch (list + watch) of every kind, server-side apply (patch) of what it
/// owns, reads for status, events, binding routers to their ClusterRole, and
/// the leader Lease.
pub const OPERATOR_RBAC: &[Permission] = &[
    Permission {
        group: "kvmesh.io",
        resource: "kvcachepools",
        verbs: &["list", "watch"],
    },
    Permission {
        group: "kvmesh.io",
        resource: "kvcachepools/status",
        verbs: &["patch"],
    },
    Permission {
        group: "apps",
        resource: "daemonsets",
        verbs: &["get", "list", "watch", "patch"],
    },
    Permission {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "watch", "patch"],
    },
    Permission {
        group: "",
        resource: "services",
        verbs: &["list", "watch", "patch"],
    },
    Permission {
        group: "",
        resource: "configmaps",
        verbs: &["list", "watch", "patch"],
    },
    Permission {
        group: "",
        resource: "serviceaccounts",
        verbs: &["list", "watch", "patch"],
    },
    Permission {
        group: "rbac.authorization.k8s.io",
        resource: "rolebindings",
        verbs: &["list", "watch", "patch"],
    },
    // A RoleBinding may only refer to a role whose permissions its writer
    // holds, or may `bind`: the operator does not hold the router's (it never
    // watches pods or inferencepools), so it may bind that one ClusterRole
    // (the chart restricts this rule by resourceNames to it).
    Permission {
        group: "rbac.authorization.k8s.io",
        resource: "clusterroles",
        verbs: &["bind"],
    },
    Permission {
        group: "",
        resource: "pods",
        verbs: &["list"],
    },
    // kube's event Recorder creates an event once, then patches its series
    // count when the same event recurs within its cache lifetime.
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
    },
];

/// The verbs the operator's leader election needs, granted by a Role in the
/// operator's own namespace rather than cluster-wide.
pub fn is_leader_election(p: &Permission) -> bool {
    p.group == "coordination.k8s.io" && p.resource == "leases"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::rbac::{ROUTER_RBAC, allows};

    #[test]
    fn the_operator_may_bind_the_router_role_without_holding_its_permissions() {
        assert!(allows(
            OPERATOR_RBAC,
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles"
        ));
        // Were it to hold them all, `bind` would be needless privilege.
        let holds_all = ROUTER_RBAC.iter().all(|p| {
            p.verbs
                .iter()
                .all(|v| allows(OPERATOR_RBAC, v, p.group, p.resource))
        });
        assert!(!holds_all);
    }

    #[test]
    fn a_recurring_event_can_be_patched() {
        assert!(allows(OPERATOR_RBAC, "create", "events.k8s.io", "events"));
        assert!(allows(OPERATOR_RBAC, "patch", "events.k8s.io", "events"));
    }

    #[test]
    fn only_the_lease_belongs_to_the_leader_election_role() {
        let leases: Vec<_> = OPERATOR_RBAC
            .iter()
            .filter(|p| is_leader_election(p))
            .collect();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].verbs, ["get", "create", "update"]);
    }
}
