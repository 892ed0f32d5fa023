//! Desired-state builders: a pool in, the objects the operator applies out.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kvmesh::crd::KvCachePool;
use kvmesh::operator::builders::{BuildSettings, SpecError, build};

fn settings() -> BuildSettings {
    BuildSettings {
        default_image: "ghcr.io/kvmesh/kvmesh:0.1.0".into(),
        cluster_domain: "cluster.local".into(),
        router_cluster_role: "kvmesh-router".into(),
    }
}

fn pool(extra_node_cache: serde_json::Value) -> KvCachePool {
    let mut node_cache = serde_json::json!({"memory": "64Gi"});
    if let (Some(a), Some(b)) = (node_cache.as_object_mut(), extra_node_cache.as_object()) {
        a.extend(b.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kvmesh.io/v1alpha1",
        "kind": "KvCachePool",
        "metadata": {"name": "llama", "namespace": "inference", "uid": "1234-5678", "generation": 3},
        "spec": {
            "selector": {"matchLabels": {"app": "vllm-llama"}},
            "nodeCache": node_cache,
            "router": {"replicas": 3},
        }
    }))
    .expect("valid pool")
}

fn args_of(c: &k8s_openapi::api::core::v1::Container) -> Vec<&str> {
    c.args.iter().flatten().map(String::as_str).collect()
}

#[test]
fn every_child_is_owned_by_the_pool_and_labelled_by_component() {
    let d = build(&pool(serde_json::json!({})), &settings()).expect("builds");
    let metas = [
        (&d.node_cache.metadata, "llama-node-cache", "node-cache"),
        (
            &d.node_cache_service.metadata,
            "llama-node-cache",
            "node-cache",
        ),
        (&d.connection.metadata, "llama-connection", "connection"),
        (&d.router_account.metadata, "llama-router", "router"),
        (&d.router_binding.metadata, "llama-router", "router"),
        (&d.router.metadata, "llama-router", "router"),
        (&d.router_service.metadata, "llama-router", "router"),
    ];
    for (m, name, component) in metas {
        assert_eq!(m.name.as_deref(), Some(name));
        assert_eq!(m.namespace.as_deref(), Some("inference"));
        let owners = m.owner_references.as_ref().expect("owner refs");
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                owners[0].uid.as_str()
            ),
            ("KvCachePool", "llama", "1234-5678")
        );
        assert_eq!(owners[0].controller, Some(true));
        let labels = m.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/component"], component);
        assert_eq!(labels["app.kubernetes.io/instance"], "llama");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "kvmesh-operator");
    }
}

#[test]
fn the_node_cache_runs_hardened_with_its_tiers_on_a_host_path() {
    let d = build(
        &pool(serde_json::json!({"disk": {"size": "500Gi", "hostPath": "/mnt/nvme/kvmesh"}})),
        &settings(),
    )
    .expect("builds");
    let pod = d.node_cache.spec.template.spec.as_ref().expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/kvmesh/kvmesh:0.1.0"));
    let args = args_of(c);
    assert_eq!(args[0], "node-cache");
    for pair in [
        ["--memory-bytes", "68719476736"],
        ["--disk-path", "/var/lib/kvmesh/cache"],
        ["--disk-bytes", "536870912000"],
        ["--lm-listen", "0.0.0.0:65432"],
        ["--redis-listen", "0.0.0.0:6379"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    let cache = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cache")
        .expect("cache volume");
    let hp = cache.host_path.as_ref().expect("hostPath");
    assert_eq!(
        (hp.path.as_str(), hp.type_.as_deref()),
        ("/mnt/nvme/kvmesh", Some("DirectoryOrCreate"))
    );
    let res = c.resources.as_ref().expect("resources");
    let mem = (64u64 << 30) + (256 << 20);
    assert_eq!(
        res.requests.as_ref().expect("requests")["memory"],
        Quantity(mem.to_string())
    );
    assert_eq!(
        res.limits.as_ref().expect("limits")["memory"],
        Quantity(mem.to_string())
    );
    assert!(
        !res.requests
            .as_ref()
            .expect("requests")
            .contains_key("ephemeral-storage")
    );
    let sc = c.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    assert_eq!(
        d.node_cache
            .spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref()),
        Some("RollingUpdate")
    );
}

#[test]
fn an_empty_dir_disk_tier_requests_ephemeral_storage() {
    let d = build(
        &pool(serde_json::json!({"disk": {"size": "100Gi"}})),
        &settings(),
    )
    .expect("builds");
    let pod = d.node_cache.spec.template.spec.as_ref().expect("pod spec");
    let cache = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cache")
        .expect("cache volume");
    let size = Quantity((100u64 << 30).to_string());
    assert_eq!(
        cache.empty_dir.as_ref().and_then(|e| e.size_limit.clone()),
        Some(size.clone())
    );
    let req = pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(req["ephemeral-storage"], size);
}

#[test]
fn a_ram_only_cache_has_no_disk_flags_and_user_resources_win() {
    let custom = serde_json::json!({"resources": {"requests": {"cpu": "2", "memory": "80Gi"}}});
    let d = build(&pool(custom), &settings()).expect("builds");
    let c = &d
        .node_cache
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    assert!(!args_of(c).contains(&"--disk-path"));
    let want = ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), Quantity("2".into())),
                ("memory".to_string(), Quantity("80Gi".into())),
            ]
            .into(),
        ),
        ..ResourceRequirements::default()
    };
    assert_eq!(c.resources.as_ref(), Some(&want));
}

#[test]
fn engines_reach_their_own_nodes_cache_through_a_local_service_and_one_config_map() {
    let d = build(&pool(serde_json::json!({})), &settings()).expect("builds");
    let svc = d.node_cache_service.spec.as_ref().expect("spec");
    assert_eq!(svc.internal_traffic_policy.as_deref(), Some("Local"));
    let ports: Vec<(Option<&str>, i32)> = svc
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.port))
        .collect();
    assert_eq!(ports, [(Some("lm"), 65432), (Some("redis"), 6379)]);
    let data = d.connection.data.as_ref().expect("data");
    assert_eq!(
        data["LMCACHE_REMOTE_URL"],
        "lm://llama-node-cache.inference.svc.cluster.local:65432"
    );
    assert_eq!(
        data["KVMESH_REDIS_URL"],
        "redis://llama-node-cache.inference.svc.cluster.local:6379"
    );
    let kv: serde_json::Value =
        serde_json::from_str(&data["VLLM_KV_TRANSFER_CONFIG"]).expect("json");
    assert_eq!(kv["kv_connector"], "LMCacheConnectorV1");
}

#[test]
fn the_router_watches_its_pool_with_a_bound_service_account() {
    let d = build(&pool(serde_json::json!({})), &settings()).expect("builds");
    assert_eq!(d.router.spec.replicas, Some(3));
    let pod = d.router.spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("llama-router"));
    let args = args_of(&pod.containers[0]);
    assert_eq!(&args[..3], ["router", "--pool", "inference/llama"]);
    assert!(args.windows(2).any(|w| w == ["--listen", "0.0.0.0:8080"]));
    assert_eq!(d.router_binding.role_ref.kind, "ClusterRole");
    assert_eq!(d.router_binding.role_ref.name, "kvmesh-router");
    let subject = &d.router_binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "llama-router", Some("inference"))
    );
    let svc_ports: Vec<i32> = d
        .router_service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .into_iter()
        .flatten()
        .map(|p| p.port)
        .collect();
    assert_eq!(svc_ports, [8080]);
}

#[test]
fn specs_the_schema_cannot_check_are_refused_with_the_field() {
    let e = build(&pool(serde_json::json!({"memory": "lots"})), &settings()).expect_err("bad");
    assert!(
        matches!(e, SpecError::Memory(_)) && e.to_string().contains("nodeCache.memory"),
        "{e}"
    );
    let e = build(&pool(serde_json::json!({"memory": "1Mi"})), &settings()).expect_err("tiny");
    assert!(matches!(e, SpecError::MemoryTooSmall(_)), "{e}");
    let e = build(
        &pool(serde_json::json!({"disk": {"size": "big"}})),
        &settings(),
    )
    .expect_err("bad disk");
    assert!(e.to_string().contains("nodeCache.disk.size"), "{e}");
    let mut p = pool(serde_json::json!({}));
    p.metadata.namespace = None;
    assert_eq!(build(&p, &settings()), Err(SpecError::NoNamespace));
    let mut p = pool(serde_json::json!({}));
    p.metadata.name = Some("x".repeat(60));
    assert!(matches!(
        build(&p, &settings()),
        Err(SpecError::NameTooLong(_))
    ));
}

#[test]
fn the_router_binding_names_the_cluster_role_the_operator_was_given() {
    let s = BuildSettings {
        router_cluster_role: "team-a-kvmesh-router".into(),
        ..settings()
    };
    let d = build(&pool(serde_json::json!({})), &s).expect("builds");
    assert_eq!(d.router_binding.role_ref.name, "team-a-kvmesh-router");
}

#[test]
fn the_children_run_with_flags_the_binary_accepts() {
    use clap::Parser;
    use kvmesh::cli::{Cli, Command};
    let p = pool(serde_json::json!({"disk": {"size": "500Gi", "hostPath": "/mnt/kv"}}));
    let d = build(&p, &settings()).expect("builds");
    let parse = |c: &k8s_openapi::api::core::v1::Container| {
        let args = c.args.clone().unwrap_or_default();
        Cli::try_parse_from(std::iter::once("kvmesh".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("{args:?} do not parse: {e}"))
            .command
    };
    let pod = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| t.spec.clone().expect("pod spec");

    let router = pod(&d.router.spec.template);
    let Command::Router(args) = parse(&router.containers[0]) else {
        panic!("the router Deployment does not run `kvmesh router`")
    };
    let cfg = args.validate().expect("router flags are valid together");
    assert!(cfg.discovers(), "the router follows its pool");
    // Its own pod name comes from the downward API (it is not its own peer).
    let env = router.containers[0].env.clone().unwrap_or_default();
    assert!(
        env.iter().any(|e| e.name == "POD_NAME"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
                == Some("metadata.name")),
        "{env:?}"
    );

    let cache = pod(&d.node_cache.spec.template);
    let Command::NodeCache(args) = parse(&cache.containers[0]) else {
        panic!("the node-cache DaemonSet does not run `kvmesh node-cache`")
    };
    let s = args
        .settings()
        .expect("node-cache flags are valid together");
    assert!(s.store.disk.is_some(), "the disk tier is on");
}
