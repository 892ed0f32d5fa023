//! The router discovering its replicas from Kubernetes pods (`--selector`),
//! against the in-process API server double.

mod apidouble;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use apidouble::ApiDouble;
use clap::Parser;
use http::StatusCode;
use kvmesh::proxy::{ProxyHandle, REPLICA_HEADER, RouterArgs};
use serde_json::json;
use support::*;
use tokio::net::TcpListener;

const NS: &str = "inference";

fn pod(name: &str, ip: &str, app: &str, ready: bool) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "engine", "image": "vllm"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// The router's flags, as parsed from a command line.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: RouterArgs,
}

/// A router started with `flags` (a source flag), discovering through `api`.
async fn router_with(api: &ApiDouble, flags: &[&str]) -> ProxyHandle {
    let mut argv = vec!["kvmesh"];
    argv.extend_from_slice(flags);
    let cfg = Flags::parse_from(argv).args.validate().expect("valid");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    kvmesh::proxy::spawn_with_client(cfg, l, a, Some(api.client())).expect("router")
}

async fn router(api: &ApiDouble, port: u16) -> ProxyHandle {
    let port = port.to_string();
    router_with(
        api,
        &["--selector", "app=vllm", "--namespace", NS, "--port", &port],
    )
    .await
}

/// Every call the router made is in its RBAC table (what the chart grants).
fn every_call_is_granted(api: &ApiDouble) {
    use kvmesh::discovery::rbac::{ROUTER_RBAC, allows, verb_of};
    let calls = api.requests();
    assert!(!calls.is_empty());
    for call in calls {
        let (method, path) = call.split_once(' ').expect("METHOD path");
        if let Some((verb, group, resource)) = verb_of(method, path) {
            assert!(
                allows(ROUTER_RBAC, verb, &group, &resource),
                "{call} needs {verb} on {group}/{resource}"
            );
        }
    }
}

/// Which replicas answer `n` distinct prompts.
async fn served_by(addr: std::net::SocketAddr, n: usize) -> HashSet<String> {
    let c = client();
    let mut seen = HashSet::new();
    for i in 0..n {
        let body = json!({"model": "m", "prompt": format!("request {i}: a question")}).to_string();
        let (status, headers, _) = post(&c, addr, "/v1/completions", body, &[]).await;
        assert_eq!(status, StatusCode::OK);
        seen.insert(headers[REPLICA_HEADER].to_str().expect("ascii").to_string());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_selected_pods_are_the_replicas_and_changes_apply_within_a_watch_event() {
    let api = ApiDouble::start().await;
    let b0 = TestBackend::start(Mode::Json).await;
    let port = b0.addr.port();
    let b1 = TestBackend::start_on(
        format!("127.0.0.2:{port}").parse().expect("addr"),
        Mode::Json,
    )
    .await;
    api.put("v1", "pods", pod("vllm-0", "127.0.0.1", "vllm", true));
    api.put("v1", "pods", pod("vllm-1", "127.0.0.2", "vllm", true));
    api.put("v1", "pods", pod("other", "127.0.0.3", "other", true));
    let r = router(&api, port).await;
    assert!(
        eventually(Duration::from_secs(10), || r.replicas()
            == ["vllm-0", "vllm-1"])
        .await,
        "{:?}",
        r.replicas()
    );
    assert_eq!(
        served_by(r.addr, 40).await,
        HashSet::from(["vllm-0".to_string(), "vllm-1".to_string()])
    );
    assert!(b0.count() > 0 && b1.count() > 0);

    // A pod that turns unready gets no new requests.
    api.set_status(
        "v1",
        "pods",
        NS,
        "vllm-1",
        json!({"conditions": [{"type": "Ready", "status": "False"}]}),
    );
    assert!(eventually(Duration::from_secs(10), || r.replicas() == ["vllm-0"]).await);
    let before = b1.count();
    assert_eq!(
        served_by(r.addr, 20).await,
        HashSet::from(["vllm-0".to_string()])
    );
    assert_eq!(b1.count(), before);

    // No ready pod: not ready, and requests get 503.
    assert!(api.delete("v1", "pods", NS, "vllm-0"));
    assert!(eventually(Duration::from_secs(10), || r.replicas().is_empty()).await);
    let c = client();
    let (status, _, _) = post(
        &c,
        r.addr,
        "/v1/completions",
        r#"{"model":"m","prompt":"x"}"#,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (ready, _) = get(&c, &format!("http://{}/readyz", r.admin_addr)).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);

    // It comes back.
    api.put("v1", "pods", pod("vllm-1", "127.0.0.2", "vllm", true));
    assert!(eventually(Duration::from_secs(10), || r.replicas() == ["vllm-1"]).await);
    assert_eq!(
        served_by(r.addr, 5).await,
        HashSet::from(["vllm-1".to_string()])
    );
    r.shutdown().await;
}

#[test]
fn selector_and_backends_do_not_mix_and_the_selector_must_select_something() {
    assert!(
        Flags::try_parse_from(["kvmesh", "--selector", "app=a", "--backend", "http://a:1"])
            .is_err()
    );
    let flags = Flags::try_parse_from(["kvmesh", "--selector", " "]).expect("parses");
    assert!(
        flags
            .args
            .validate()
            .expect_err("empty")
            .to_string()
            .contains("--selector")
    );
    assert!(
        Flags::try_parse_from(["kvmesh"]).is_err(),
        "one source is required"
    );
}

fn kvp(selector_app: &str, port: u16, load_factor: f64) -> serde_json::Value {
    json!({
        "apiVersion": "kvmesh.io/v1alpha1", "kind": "KvCachePool",
        "metadata": {"name": "llama", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": selector_app}},
            "port": port,
            "nodeCache": {"memory": "8Gi"},
            "router": {"loadFactor": load_factor, "sessionHeader": "x-user"},
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_chooses_the_pods_and_its_settings_apply_live() {
    let api = ApiDouble::start().await;
    let b0 = TestBackend::start(Mode::Json).await;
    let port = b0.addr.port();
    let _b1 = TestBackend::start_on(
        format!("127.0.0.2:{port}").parse().expect("addr"),
        Mode::Json,
    )
    .await;
    api.put("v1", "pods", pod("vllm-0", "127.0.0.1", "vllm", true));
    api.put("v1", "pods", pod("canary-0", "127.0.0.2", "canary", true));
    api.put("kvmesh.io/v1alpha1", "kvcachepools", kvp("vllm", port, 3.0));
    let r = router_with(&api, &["--pool", "inference/llama"]).await;
    assert!(
        eventually(Duration::from_secs(10), || r.replicas() == ["vllm-0"]).await,
        "{:?}",
        r.replicas()
    );
    assert_eq!(r.routing().load_factor, 3.0);
    // 8Gi of node cache ÷ (16 tokens × 128 KiB per token) = 4096 blocks.
    assert_eq!(r.routing().node_capacity_blocks, 4096);
    assert_eq!(
        served_by(r.addr, 5).await,
        HashSet::from(["vllm-0".to_string()])
    );

    // Settings change live, with requests flowing.
    api.put("kvmesh.io/v1alpha1", "kvcachepools", kvp("vllm", port, 7.0));
    assert!(eventually(Duration::from_secs(10), || r.routing().load_factor == 7.0).await);
    assert_eq!(
        served_by(r.addr, 5).await,
        HashSet::from(["vllm-0".to_string()])
    );
    // The pool's session header pins sessions.
    let c = client();
    let mut seen = HashSet::new();
    for i in 0..5 {
        let body = json!({"model": "m", "prompt": format!("q {i}")}).to_string();
        let (_, h, _) = post(&c, r.addr, "/v1/completions", body, &[("x-user", "alice")]).await;
        assert_eq!(h[kvmesh::proxy::REASON_HEADER], "session");
        seen.insert(h[REPLICA_HEADER].to_str().expect("ascii").to_string());
    }
    assert_eq!(seen.len(), 1);

    // A new selector moves the replica set.
    api.put(
        "kvmesh.io/v1alpha1",
        "kvcachepools",
        kvp("canary", port, 7.0),
    );
    assert!(
        eventually(Duration::from_secs(10), || r.replicas() == ["canary-0"]).await,
        "{:?}",
        r.replicas()
    );
    assert_eq!(
        served_by(r.addr, 5).await,
        HashSet::from(["canary-0".to_string()])
    );

    // The pool goes away: no replicas, not ready.
    assert!(api.delete("kvmesh.io/v1alpha1", "kvcachepools", NS, "llama"));
    assert!(eventually(Duration::from_secs(10), || r.replicas().is_empty()).await);
    r.shutdown().await;
    every_call_is_granted(&api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inference_pool_chooses_the_pods() {
    let api = ApiDouble::start().await;
    let b0 = TestBackend::start(Mode::Json).await;
    let port = b0.addr.port();
    api.put("v1", "pods", pod("vllm-0", "127.0.0.1", "vllm", true));
    api.put("v1", "pods", pod("canary-0", "127.0.0.2", "canary", true));
    api.put(
        "inference.networking.k8s.io/v1",
        "inferencepools",
        json!({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "llama", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": port}],
                     "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}
        }),
    );
    let r = router_with(&api, &["--inference-pool", "inference/llama"]).await;
    assert!(
        eventually(Duration::from_secs(10), || r.replicas() == ["vllm-0"]).await,
        "{:?}",
        r.replicas()
    );
    assert_eq!(
        served_by(r.addr, 5).await,
        HashSet::from(["vllm-0".to_string()])
    );
    r.shutdown().await;
    every_call_is_granted(&api);
}

/// A ready router pod of pool `llama` whose admin port is `admin`.
fn router_pod(name: &str, admin: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/name": "kvmesh",
            "app.kubernetes.io/instance": "llama",
            "app.kubernetes.io/component": "router",
        }},
        "spec": {"containers": [{"name": "router", "image": "kvmesh",
            "ports": [{"name": "admin", "containerPort": admin}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_router_replicas_find_each_other_and_share_placements() {
    let api = ApiDouble::start().await;
    let mut engines = Vec::new();
    let first = TestBackend::start(Mode::Json).await;
    let port = first.addr.port();
    engines.push(first);
    for i in 2..=4 {
        let addr = format!("127.0.0.{i}:{port}").parse().expect("addr");
        engines.push(TestBackend::start_on(addr, Mode::Json).await);
    }
    for i in 0..4 {
        api.put(
            "v1",
            "pods",
            pod(
                &format!("vllm-{i}"),
                &format!("127.0.0.{}", i + 1),
                "vllm",
                true,
            ),
        );
    }
    api.put("kvmesh.io/v1alpha1", "kvcachepools", kvp("vllm", port, 5.0));
    let a = router_with(
        &api,
        &["--pool", "inference/llama", "--pod-name", "router-a"],
    )
    .await;
    let b = router_with(
        &api,
        &["--pool", "inference/llama", "--pod-name", "router-b"],
    )
    .await;
    api.put("v1", "pods", router_pod("router-a", a.admin_addr.port()));
    api.put("v1", "pods", router_pod("router-b", b.admin_addr.port()));
    for r in [&a, &b] {
        assert!(eventually(Duration::from_secs(10), || r.replicas().len() == 4).await);
    }
    let c = client();
    let doc = |i: usize| {
        json!({"model": "m", "prompt": format!("doc {i}: {}", "lorem ipsum dolor ".repeat(30))})
            .to_string()
    };
    let mut placed = Vec::new();
    for i in 0..8 {
        let (status, h, _) = post(&c, a.addr, "/v1/completions", doc(i), &[]).await;
        assert_eq!(status, StatusCode::OK);
        placed.push(h[REPLICA_HEADER].to_str().expect("ascii").to_string());
    }
    let admin_b = b.admin_addr;
    let mut learned = false;
    for _ in 0..200 {
        let page = get(&c, &format!("http://{admin_b}/metrics")).await.1;
        if page.contains("kvmesh_router_peer_records_received_total 8") {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(learned, "router-b never learned router-a's placements");
    // router-a is not its own peer: it received nothing back.
    let page_a = get(&c, &format!("http://{}/metrics", a.admin_addr)).await.1;
    assert!(
        page_a.contains("kvmesh_router_peer_records_received_total 0"),
        "{page_a}"
    );
    for (i, where_a) in placed.iter().enumerate() {
        let (_, h, _) = post(&c, b.addr, "/v1/completions", doc(i), &[]).await;
        assert_eq!(h[REPLICA_HEADER].to_str().expect("ascii"), where_a);
        assert_eq!(h[kvmesh::proxy::REASON_HEADER], "warm");
    }
    a.shutdown().await;
    b.shutdown().await;
    every_call_is_granted(&api);
}
