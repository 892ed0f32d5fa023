//! The operator end to end against the in-process API server double:
//! children appear, status tells the truth, edits are reverted, invalid
//! specs are reported, deletion cascades, failures back off, one leader.

mod apidouble;

use std::time::Duration;

use apidouble::ApiDouble;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use kvmesh::crd::KvCachePool;
use kvmesh::operator::run::{OperatorArgs, operate};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

const NS: &str = "inference";

fn args(identity: &str) -> OperatorArgs {
    OperatorArgs {
        namespace: None,
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        image: "kvmesh:test".into(),
        cluster_domain: "cluster.local".into(),
        router_cluster_role: "kvmesh-router".into(),
        lease_name: "kvmesh-operator".into(),
        lease_namespace: "kvmesh-system".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    admin: std::net::SocketAddr,
}

async fn start_operator(api: &ApiDouble, identity: &str) -> Running {
    let (stop, rx) = watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = listener.local_addr().expect("addr");
    let task = tokio::spawn(operate(api.client(), args(identity), listener, rx));
    Running { stop, task, admin }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

fn pool(memory: &str, replicas: i32) -> KvCachePool {
    serde_json::from_value(json!({
        "apiVersion": "kvmesh.io/v1alpha1",
        "kind": "KvCachePool",
        "metadata": {"name": "llama", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "vllm"}},
            "nodeCache": {"memory": memory},
            "router": {"replicas": replicas},
        }
    }))
    .expect("pool")
}

/// Polls `f` until it returns Some, for at most `secs` seconds.
async fn until<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answer")
        .expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn condition(pool: &Value, type_: &str) -> Option<(String, String)> {
    pool["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

const CHILDREN: [(&str, &str, &str); 7] = [
    ("apps/v1", "daemonsets", "llama-node-cache"),
    ("v1", "services", "llama-node-cache"),
    ("v1", "configmaps", "llama-connection"),
    ("v1", "serviceaccounts", "llama-router"),
    (
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "llama-router",
    ),
    ("apps/v1", "deployments", "llama-router"),
    ("v1", "services", "llama-router"),
];

async fn create_pool(api: &ApiDouble, p: &KvCachePool) {
    // Directly, as kubectl would: the API's request log then holds only the operator's calls.
    api.put(
        "kvmesh.io/v1alpha1",
        "kvcachepools",
        serde_json::to_value(p).expect("json"),
    );
}

fn ready_pod(api: &ApiDouble, name: &str) {
    api.put(
        "v1",
        "pods",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "vllm"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        }),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pool_gets_its_children_and_a_truthful_status() {
    let api = ApiDouble::start().await;
    let op = start_operator(&api, "op-a").await;
    create_pool(&api, &pool("8Gi", 2)).await;
    let uid = until(10, || {
        api.get("kvmesh.io/v1alpha1", "kvcachepools", NS, "llama")?["metadata"]["uid"]
            .as_str()
            .map(String::from)
    })
    .await;
    for (v, plural, name) in CHILDREN {
        let child = until(10, || api.get(v, plural, NS, name)).await;
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], uid.as_str(), "{plural}/{name}");
        assert_eq!(owner["controller"], true);
    }
    // Nothing is ready yet.
    let p = until(10, || {
        let p = api.get("kvmesh.io/v1alpha1", "kvcachepools", NS, "llama")?;
        condition(&p, "Ready").map(|_| p)
    })
    .await;
    assert_eq!(condition(&p, "SpecValid").map(|c| c.0), Some("True".into()));
    assert_eq!(condition(&p, "Ready").map(|c| c.0), Some("False".into()));
    // The DaemonSet and Deployment become ready, two engines come up.
    api.set_status("apps/v1", "daemonsets", NS, "llama-node-cache", json!({"desiredNumberScheduled": 3, "numberReady": 3, "currentNumberScheduled": 3, "numberMisscheduled": 0}));
    api.set_status(
        "apps/v1",
        "deployments",
        NS,
        "llama-router",
        json!({"replicas": 2, "readyReplicas": 2}),
    );
    ready_pod(&api, "vllm-0");
    ready_pod(&api, "vllm-1");
    let p = until(20, || {
        let p = api.get("kvmesh.io/v1alpha1", "kvcachepools", NS, "llama")?;
        (condition(&p, "Ready").map(|c| c.0) == Some("True".into())
            && p["status"]["endpoints"] == 2)
            .then_some(p)
    })
    .await;
    assert_eq!(p["status"]["nodeCache"]["summary"], "3/3");
    assert_eq!(p["status"]["router"]["ready"], 2);
    assert_eq!(
        p["status"]["routerUrl"],
        "http://llama-router.inference.svc.cluster.local:8080"
    );
    // The admin port reports health and the reconcile metrics.
    let metrics = admin_get(op.admin, "/metrics").await;
    for name in [
        "kvmesh_operator_reconciles_total",
        "kvmesh_operator_reconcile_duration_seconds_bucket",
        "kvmesh_operator_leader 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in {metrics}");
    }
    assert!(admin_get(op.admin, "/healthz").await.contains("ok"));
    op.stop().await;
    // Every call it made is one the chart's ClusterRole grants.
    for call in api.requests() {
        let (method, path) = call.split_once(' ').expect("METHOD path");
        if let Some((verb, group, resource)) = kvmesh::discovery::rbac::verb_of(method, path) {
            assert!(
                kvmesh::discovery::rbac::allows(
                    kvmesh::operator::rbac::OPERATOR_RBAC,
                    verb,
                    &group,
                    &resource
                ),
                "{call} needs {verb} on {group}/{resource}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_are_reverted_and_spec_changes_roll_out() {
    let api = ApiDouble::start().await;
    let op = start_operator(&api, "op-a").await;
    create_pool(&api, &pool("8Gi", 2)).await;
    let mut dep = until(10, || api.get("apps/v1", "deployments", NS, "llama-router")).await;
    // Someone scales the router by hand: the operator takes it back.
    dep["spec"]["replicas"] = json!(7);
    api.put("apps/v1", "deployments", dep);
    until(20, || {
        (api.get("apps/v1", "deployments", NS, "llama-router")?["spec"]["replicas"] == 2)
            .then_some(())
    })
    .await;
    // A spec change rolls out and observedGeneration follows.
    let pools = Api::<KvCachePool>::namespaced(api.client(), NS);
    pools
        .patch(
            "llama",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"router": {"replicas": 4}}})),
        )
        .await
        .expect("patch");
    until(20, || {
        (api.get("apps/v1", "deployments", NS, "llama-router")?["spec"]["replicas"] == 4)
            .then_some(())
    })
    .await;
    until(20, || {
        let p = api.get("kvmesh.io/v1alpha1", "kvcachepools", NS, "llama")?;
        (p["status"]["observedGeneration"] == p["metadata"]["generation"]).then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_and_children_are_left_alone() {
    let api = ApiDouble::start().await;
    let op = start_operator(&api, "op-a").await;
    create_pool(&api, &pool("8Gi", 2)).await;
    let before = until(10, || {
        api.get("apps/v1", "daemonsets", NS, "llama-node-cache")
    })
    .await;
    let pools = Api::<KvCachePool>::namespaced(api.client(), NS);
    pools
        .patch(
            "llama",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeCache": {"memory": "1Mi"}}})),
        )
        .await
        .expect("patch");
    let p = until(20, || {
        let p = api.get("kvmesh.io/v1alpha1", "kvcachepools", NS, "llama")?;
        (condition(&p, "SpecValid").map(|c| c.0) == Some("False".into())).then_some(p)
    })
    .await;
    assert_eq!(
        condition(&p, "SpecValid").map(|c| c.1),
        Some("InvalidSpec".into())
    );
    let after = api
        .get("apps/v1", "daemonsets", NS, "llama-node-cache")
        .expect("still there");
    assert_eq!(
        before["spec"], after["spec"],
        "an invalid spec must not touch children"
    );
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_pool_removes_its_children() {
    let api = ApiDouble::start().await;
    let op = start_operator(&api, "op-a").await;
    create_pool(&api, &pool("8Gi", 2)).await;
    until(10, || api.get("apps/v1", "deployments", NS, "llama-router")).await;
    Api::<KvCachePool>::namespaced(api.client(), NS)
        .delete("llama", &DeleteParams::default())
        .await
        .expect("delete");
    for (v, plural, name) in CHILDREN {
        until(10, || api.get(v, plural, NS, name).is_none().then_some(())).await;
    }
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_is_ridden_out_and_reconciling_resumes() {
    let api = ApiDouble::start().await;
    let op = start_operator(&api, "op-a").await;
    create_pool(&api, &pool("8Gi", 2)).await;
    until(10, || api.get("apps/v1", "deployments", NS, "llama-router")).await;
    api.set_failing(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.set_failing(false);
    let mut dep = api
        .get("apps/v1", "deployments", NS, "llama-router")
        .expect("deployment");
    dep["spec"]["replicas"] = json!(9);
    api.put("apps/v1", "deployments", dep);
    until(30, || {
        (api.get("apps/v1", "deployments", NS, "llama-router")?["spec"]["replicas"] == 2)
            .then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_exactly_one_leads_and_the_other_takes_over() {
    let api = ApiDouble::start().await;
    let mut ops = vec![
        ("op-a", start_operator(&api, "op-a").await),
        ("op-b", start_operator(&api, "op-b").await),
    ];
    let lease = || {
        api.get(
            "coordination.k8s.io/v1",
            "leases",
            "kvmesh-system",
            "kvmesh-operator",
        )
    };
    let holder = until(10, || {
        lease()?["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    })
    .await;
    // The follower never takes a held, fresh lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        lease().expect("lease")["spec"]["holderIdentity"],
        holder.as_str()
    );
    // Stopping the leader hands over (it releases the lease).
    let at = ops
        .iter()
        .position(|(id, _)| *id == holder)
        .expect("leader is one of the two");
    let (_, leader) = ops.remove(at);
    leader.stop().await;
    let (survivor_id, survivor) = ops.remove(0);
    until(15, || {
        (lease()?["spec"]["holderIdentity"] == survivor_id).then_some(())
    })
    .await;
    // The survivor reconciles.
    create_pool(&api, &pool("8Gi", 1)).await;
    until(10, || api.get("apps/v1", "deployments", NS, "llama-router")).await;
    survivor.stop().await;
}
