//! Reconcile against a mocked API (tower-test): the exact calls, in order,
//! with a timeout so a missing call fails. Where call order matters.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kvmesh::crd::KvCachePool;
use kvmesh::operator::builders::BuildSettings;
use kvmesh::operator::controller::{Context, reconcile};
use kvmesh::operator::metrics::OperatorMetrics;
use serde_json::{Value, json};
use tower_test::mock::{Handle, pair};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn pool(memory: &str) -> KvCachePool {
    serde_json::from_value(json!({
        "apiVersion": "kvmesh.io/v1alpha1", "kind": "KvCachePool",
        "metadata": {"name": "llama", "namespace": "inference", "uid": "u-1", "generation": 2},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "nodeCache": {"memory": memory}}
    }))
    .expect("pool")
}

/// What the API answers a status patch with: the pool.
fn pool_json() -> Value {
    serde_json::to_value(pool("8Gi")).expect("json")
}

fn context() -> (Arc<Context>, ApiHandle) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = BuildSettings {
        default_image: "kvmesh:test".into(),
        cluster_domain: "cluster.local".into(),
        router_cluster_role: "kvmesh-router".into(),
    };
    (
        Arc::new(Context::new(client, settings, OperatorMetrics::default())),
        handle,
    )
}

/// Expects the next call to be `method` on `path`; answers with `answer`
/// (or, for `None`, echoes the request body). Returns the request body.
async fn expect(handle: &mut ApiHandle, method: &str, path: &str, answer: Option<Value>) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no call arrived; expected {method} {path}"))
        .expect("client alive");
    assert_eq!(req.method().as_str(), method, "for {path}");
    assert_eq!(req.uri().path(), path);
    if method == "PATCH" {
        let q = req.uri().query().unwrap_or("");
        assert!(
            q.contains("fieldManager=kvmesh-operator") && q.contains("force=true"),
            "{path}?{q}"
        );
    }
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    let answer = answer.unwrap_or_else(|| body.clone());
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&answer).expect("json")))
            .expect("response"),
    );
    body
}

#[tokio::test]
async fn reconcile_applies_children_in_dependency_order_then_observes_then_writes_status() {
    let (ctx, mut h) = context();
    let task = tokio::spawn(reconcile(Arc::new(pool("8Gi")), ctx));
    let ns = "/api/v1/namespaces/inference";
    let apps = "/apis/apps/v1/namespaces/inference";
    let cm = expect(
        &mut h,
        "PATCH",
        &format!("{ns}/configmaps/llama-connection"),
        None,
    )
    .await;
    assert_eq!(
        cm["data"]["LMCACHE_REMOTE_URL"],
        "lm://llama-node-cache.inference.svc.cluster.local:65432"
    );
    expect(
        &mut h,
        "PATCH",
        &format!("{ns}/services/llama-node-cache"),
        None,
    )
    .await;
    let ds = expect(
        &mut h,
        "PATCH",
        &format!("{apps}/daemonsets/llama-node-cache"),
        None,
    )
    .await;
    assert_eq!(ds["metadata"]["ownerReferences"][0]["uid"], "u-1");
    expect(
        &mut h,
        "PATCH",
        &format!("{ns}/serviceaccounts/llama-router"),
        None,
    )
    .await;
    expect(
        &mut h,
        "PATCH",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/inference/rolebindings/llama-router",
        None,
    )
    .await;
    expect(
        &mut h,
        "PATCH",
        &format!("{ns}/services/llama-router"),
        None,
    )
    .await;
    expect(
        &mut h,
        "PATCH",
        &format!("{apps}/deployments/llama-router"),
        None,
    )
    .await;
    let ds_obj = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "llama-node-cache"},
        "spec": {"selector": {}, "template": {}},
        "status": {"desiredNumberScheduled": 2, "numberReady": 1, "currentNumberScheduled": 2, "numberMisscheduled": 0}});
    expect(
        &mut h,
        "GET",
        &format!("{apps}/daemonsets/llama-node-cache"),
        Some(ds_obj),
    )
    .await;
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama-router"},
        "spec": {"selector": {}, "template": {}}, "status": {"readyReplicas": 2}});
    expect(
        &mut h,
        "GET",
        &format!("{apps}/deployments/llama-router"),
        Some(dep),
    )
    .await;
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        {"metadata": {"name": "a"}, "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "b"}, "status": {"podIP": "10.0.0.2", "conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"name": "c", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"podIP": "10.0.0.3", "conditions": [{"type": "Ready", "status": "True"}]}}
    ]});
    expect(&mut h, "GET", &format!("{ns}/pods"), Some(pods)).await;
    let status = expect(
        &mut h,
        "PATCH",
        "/apis/kvmesh.io/v1alpha1/namespaces/inference/kvcachepools/llama/status",
        Some(pool_json()),
    )
    .await;
    let s = &status["status"];
    assert_eq!(
        s["endpoints"], 1,
        "only a ready, non-terminating pod with an IP counts"
    );
    assert_eq!(s["nodeCache"]["summary"], "1/2");
    assert_eq!(s["observedGeneration"], 2);
    let ready = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("NodeCacheNotReady"))
    );
    let action = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("done")
        .expect("task")
        .expect("ok");
    assert_eq!(
        format!("{action:?}"),
        format!(
            "{:?}",
            kube::runtime::controller::Action::requeue(Duration::from_secs(30))
        )
    );
}

#[tokio::test]
async fn an_invalid_spec_emits_an_event_and_a_status_and_touches_no_child() {
    let (ctx, mut h) = context();
    let task = tokio::spawn(reconcile(Arc::new(pool("1Mi")), ctx));
    let event = expect(
        &mut h,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/inference/events",
        None,
    )
    .await;
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["type"], "Warning");
    assert!(event["note"].as_str().unwrap_or("").contains("64Mi"));
    let status = expect(
        &mut h,
        "PATCH",
        "/apis/kvmesh.io/v1alpha1/namespaces/inference/kvcachepools/llama/status",
        Some(pool_json()),
    )
    .await;
    let valid = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "SpecValid")
        .expect("SpecValid");
    assert_eq!(valid["status"], "False");
    let action = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("done")
        .expect("task")
        .expect("ok");
    assert_eq!(
        format!("{action:?}"),
        format!("{:?}", kube::runtime::controller::Action::await_change())
    );
    // No further call: nothing else was touched (the client is gone or silent).
    let more = tokio::time::timeout(Duration::from_millis(200), h.next_request()).await;
    assert!(
        !matches!(more, Ok(Some(_))),
        "an unexpected call after the status write"
    );
}
