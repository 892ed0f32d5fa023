//! Every Kubernetes call the operator makes, as (API group, resource,
//! verbs): the chart's operator ClusterRole grants exactly these, and the
//! end-to-end tests check the operator never calls outside them.

use crate::discovery::rbac::Permission;

/// Watch (list + watch) of every kind, server-side apply (patch) of what it
/// owns, reads for status, events, and the leader Lease.
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
    Permission {
        group: "",
        resource: "pods",
        verbs: &["list"],
    },
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create"],
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
    },
];
