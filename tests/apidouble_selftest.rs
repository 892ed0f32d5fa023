//! Self-test of the in-process Kubernetes API double (`tests/apidouble/`):
//! a real `kube::Client` and kube-runtime's watcher and reflector against it.

mod apidouble;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use apidouble::ApiDouble;
use futures_util::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Client, ResourceExt};
use kvmesh::crd::KvCachePool;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

/// Awaits `f` for at most ten seconds.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// The next item of a stream, within ten seconds.
async fn next<S: Stream + Unpin>(s: &mut S) -> S::Item {
    within(s.next()).await.expect("the stream ended")
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), name.to_string())])),
        ..ConfigMap::default()
    }
}

fn api_code<T: Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn names(api: &Api<ConfigMap>, selector: &str) -> Vec<String> {
    let list = within(api.list(&ListParams::default().labels(selector)))
        .await
        .unwrap();
    list.items.iter().map(|c| c.name_any()).collect()
}

fn deployment(replicas: i64, label: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"rev": label}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    })
}

fn pool(port: i64) -> Value {
    json!({
        "apiVersion": "kvmesh.io/v1alpha1", "kind": "KvCachePool",
        "metadata": {"name": "p1"},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "port": port, "nodeCache": {"memory": "1Gi"}}
    })
}

async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Value,
) -> Result<Value, kube::Error> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    within(client.request::<Value>(req)).await
}

#[tokio::test]
async fn config_maps_are_created_fetched_and_listed_by_label_selector() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    for c in [
        cm("a", &[("app", "web"), ("tier", "x")]),
        cm("b", &[("app", "web")]),
        cm("c", &[("app", "db"), ("tier", "y")]),
    ] {
        let created = within(api.create(&PostParams::default(), &c))
            .await
            .unwrap();
        assert_eq!(created.namespace().as_deref(), Some("default"));
        assert!(created.uid().is_some() && created.resource_version().is_some());
        assert!(created.creation_timestamp().is_some());
    }
    let a = within(api.get("a")).await.unwrap();
    assert_eq!(a.data.unwrap()["k"], "a");
    assert_eq!(names(&api, "").await, ["a", "b", "c"]);
    assert_eq!(names(&api, "app=web").await, ["a", "b"]);
    assert_eq!(names(&api, "app!=web").await, ["c"]);
    assert_eq!(names(&api, "tier").await, ["a", "c"]);
    assert_eq!(names(&api, "!tier").await, ["b"]);
    assert_eq!(names(&api, "tier in (x,z)").await, ["a"]);
    assert_eq!(names(&api, "app=web,tier notin (x)").await, ["b"]);
    let bad = within(api.list(&ListParams::default().labels("tier in x"))).await;
    assert_eq!(api_code(bad), (400, "BadRequest".into()));
    let by_name = within(api.list(&ListParams::default().fields("metadata.name=c")))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let everywhere: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(
        within(everywhere.list(&ListParams::default()))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "other");
    assert!(
        within(elsewhere.list(&ListParams::default()))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(server.get("v1", "configmaps", "default", "b").is_some());
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r == "GET /api/v1/namespaces/default/configmaps?labelSelector=app=web")
    );
}

#[tokio::test]
async fn missing_objects_are_404_duplicates_409_and_stale_replaces_409() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    assert_eq!(
        api_code(within(api.get("nope")).await),
        (404, "NotFound".into())
    );
    let first = within(api.create(&PostParams::default(), &cm("x", &[])))
        .await
        .unwrap();
    assert_eq!(
        api_code(within(api.create(&PostParams::default(), &cm("x", &[]))).await),
        (409, "AlreadyExists".into())
    );
    let mut newer = first.clone();
    newer.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    within(api.replace("x", &PostParams::default(), &newer))
        .await
        .unwrap();
    // `newer` still carries the first resourceVersion.
    assert_eq!(
        api_code(within(api.replace("x", &PostParams::default(), &newer)).await),
        (409, "Conflict".into())
    );
    let unknown = raw(
        &server.client(),
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        json!({}),
    )
    .await;
    assert_eq!(api_code(unknown), (404, "NotFound".into()));
    let malformed = http::Request::builder()
        .method("POST")
        .uri("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    assert_eq!(
        api_code(within(server.client().request::<Value>(malformed)).await).0,
        400
    );
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_bumps_generation_on_spec_changes_only() {
    let server = ApiDouble::start().await;
    let api: Api<Deployment> = Api::default_namespaced(server.client());
    let pp = PatchParams::apply("mgr").force();
    let created = within(api.patch("web", &pp, &Patch::Apply(deployment(1, "a"))))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let again = within(api.patch("web", &pp, &Patch::Apply(deployment(1, "a"))))
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        created.resource_version(),
        "a no-op apply changes nothing"
    );
    let relabelled = within(api.patch("web", &pp, &Patch::Apply(deployment(1, "b"))))
        .await
        .unwrap();
    assert_eq!(relabelled.metadata.generation, Some(1));
    assert_eq!(relabelled.labels()["rev"], "b");
    let scaled = within(api.patch("web", &pp, &Patch::Apply(deployment(3, "b"))))
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_eq!(scaled.spec.replicas, Some(3));
    let managers = scaled.metadata.managed_fields.unwrap_or_default();
    assert!(managers.iter().any(|m| m.manager.as_deref() == Some("mgr") && m.operation.as_deref() == Some("Apply")));
    // Status in an apply to the main resource is ignored.
    let mut with_status = deployment(3, "b");
    with_status["status"] = json!({"readyReplicas": 3});
    let ignored = within(api.patch("web", &pp, &Patch::Apply(with_status)))
        .await
        .unwrap();
    assert!(ignored.status.is_none());
    assert!(server.requests().iter().any(|r| {
        r.starts_with("PATCH /apis/apps/v1/namespaces/default/deployments/web?")
            && r.contains("fieldManager=mgr")
            && r.contains("force=true")
    }));
}

#[tokio::test]
async fn a_status_patch_on_a_custom_resource_changes_status_without_bumping_generation() {
    let server = ApiDouble::start().await;
    let api: Api<KvCachePool> = Api::default_namespaced(server.client());
    let created = within(api.patch(
        "p1",
        &PatchParams::apply("op").force(),
        &Patch::Apply(pool(8000)),
    ))
    .await
    .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let patched = within(api.patch_status(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"endpoints": 3}})),
    ))
    .await
    .unwrap();
    assert_eq!(patched.metadata.generation, Some(1));
    assert_eq!(patched.status.as_ref().unwrap().endpoints, 3);
    assert_ne!(patched.resource_version(), created.resource_version());
    let applied_status = json!({"apiVersion": "kvmesh.io/v1alpha1", "kind": "KvCachePool", "status": {"routerUrl": "http://r"}});
    let applied = within(api.patch_status(
        "p1",
        &PatchParams::apply("op").force(),
        &Patch::Apply(applied_status),
    ))
    .await
    .unwrap();
    assert_eq!(
        applied.status.as_ref().unwrap().router_url.as_deref(),
        Some("http://r")
    );
    assert_eq!(applied.status.as_ref().unwrap().endpoints, 3);
    // Through the main resource, status is ignored and a spec change bumps generation.
    let main = within(api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"port": 8001}, "status": {"endpoints": 9}})),
    ))
    .await
    .unwrap();
    assert_eq!(main.metadata.generation, Some(2));
    assert_eq!(main.status.unwrap().endpoints, 3);
    let stored = server
        .get("kvmesh.io/v1alpha1", "kvcachepools", "default", "p1")
        .unwrap();
    assert_eq!(stored["spec"]["port"], 8001);
}

#[tokio::test]
async fn a_watcher_sees_init_done_then_applies_and_deletes() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    within(api.create(&PostParams::default(), &cm("old", &[])))
        .await
        .unwrap();
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut events).await.unwrap(), Event::Init));
    assert!(
        matches!(next(&mut events).await.unwrap(), Event::InitApply(c) if c.name_any() == "old")
    );
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));
    within(api.patch(
        "new",
        &PatchParams::apply("t"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}})),
    ))
    .await
    .unwrap();
    assert!(matches!(next(&mut events).await.unwrap(), Event::Apply(c) if c.name_any() == "new"));
    within(api.delete("old", &DeleteParams::default()))
        .await
        .unwrap();
    assert!(matches!(next(&mut events).await.unwrap(), Event::Delete(c) if c.name_any() == "old"));

    // The same through applied_objects(), with a streaming-list watcher.
    let streaming = watcher::Config::default().streaming_lists();
    let mut applied = watcher::watcher(api.clone(), streaming)
        .applied_objects()
        .boxed();
    assert_eq!(next(&mut applied).await.unwrap().name_any(), "new");
    within(api.create(&PostParams::default(), &cm("third", &[])))
        .await
        .unwrap();
    assert_eq!(next(&mut applied).await.unwrap().name_any(), "third");
}

#[tokio::test]
async fn a_watch_from_a_forgotten_resource_version_gets_410_and_the_watcher_relists() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    within(api.create(&PostParams::default(), &cm("a", &[])))
        .await
        .unwrap();
    within(api.create(&PostParams::default(), &cm("b", &[])))
        .await
        .unwrap();
    server.compact_history();
    let mut stream = within(api.watch(&WatchParams::default(), "1"))
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        within(stream.next()).await.is_none(),
        "the stream ends after the error"
    );
    // From the current version, resuming works.
    let rv = server.resource_version().to_string();
    let mut live = within(api.watch(&WatchParams::default(), &rv))
        .await
        .unwrap()
        .boxed();
    within(api.create(&PostParams::default(), &cm("c", &[])))
        .await
        .unwrap();
    assert!(matches!(next(&mut live).await.unwrap(), WatchEvent::Added(c) if c.name_any() == "c"));

    // kube-runtime's watcher, made to resume from a forgotten version, re-lists.
    let mut events = watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    assert!(matches!(next(&mut events).await.unwrap(), Event::Init));
    for _ in 0..3 {
        assert!(matches!(
            next(&mut events).await.unwrap(),
            Event::InitApply(_)
        ));
    }
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));
    // The watcher's watch request fails; meanwhile a change is made and forgotten.
    server.set_failing(true);
    assert!(next(&mut events).await.is_err());
    server.put("v1", "configmaps", json!({"metadata": {"name": "d"}}));
    server.compact_history();
    server.set_failing(false);
    let mut saw_gone = false;
    let relisted = within(async {
        loop {
            match next(&mut events).await {
                Err(watcher::Error::WatchError(e)) if e.code == 410 => saw_gone = true,
                Ok(Event::Init) => return true,
                Ok(other) => panic!("expected a re-list, got {other:?}"),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(relisted && saw_gone);
    assert!(matches!(
        next(&mut events).await.unwrap(),
        Event::InitApply(_)
    ));
}

#[tokio::test]
async fn a_watch_ends_after_its_timeout_seconds() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut stream = within(api.watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0"))
        .await
        .unwrap()
        .boxed();
    assert!(within(stream.next()).await.is_none());
}

#[tokio::test]
async fn a_label_selected_watch_sees_objects_enter_and_leave_the_selection() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut stream = within(api.watch(&WatchParams::default().labels("app=web"), "0"))
        .await
        .unwrap()
        .boxed();
    within(api.create(&PostParams::default(), &cm("x", &[("app", "db")])))
        .await
        .unwrap();
    let to_web = Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}}));
    within(api.patch("x", &PatchParams::default(), &to_web))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut stream).await.unwrap(), WatchEvent::Added(c) if c.name_any() == "x")
    );
    let away = Patch::Merge(json!({"metadata": {"labels": {"app": null}}}));
    within(api.patch("x", &PatchParams::default(), &away))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut stream).await.unwrap(), WatchEvent::Deleted(c) if c.name_any() == "x")
    );
}

#[tokio::test]
async fn deleting_an_owner_deletes_its_dependents_recursively() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let owned_by = |o: &ConfigMap| OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: o.name_any(),
        uid: o.uid().unwrap(),
        ..OwnerReference::default()
    };
    let create = |mut c: ConfigMap, owners: Vec<OwnerReference>| {
        c.metadata.owner_references = Some(owners);
        let api = api.clone();
        async move {
            within(api.create(&PostParams::default(), &c))
                .await
                .unwrap()
        }
    };
    let owner = create(cm("owner", &[]), vec![]).await;
    let other = create(cm("other-owner", &[]), vec![]).await;
    let child = create(cm("child", &[]), vec![owned_by(&owner)]).await;
    create(cm("grandchild", &[]), vec![owned_by(&child)]).await;
    create(cm("shared", &[]), vec![owned_by(&owner), owned_by(&other)]).await;
    create(cm("bystander", &[]), vec![]).await;
    within(api.delete("owner", &DeleteParams::default()))
        .await
        .unwrap();
    for gone in ["owner", "child", "grandchild"] {
        assert_eq!(api_code(within(api.get(gone)).await).0, 404, "{gone}");
    }
    for kept in ["shared", "other-owner", "bystander"] {
        assert!(
            server.get("v1", "configmaps", "default", kept).is_some(),
            "{kept}"
        );
    }
    // Written with an owner that does not exist: collected at once, as the GC would.
    let ghost = OwnerReference {
        uid: "no-such-uid".into(),
        ..owned_by(&other)
    };
    create(cm("orphan", &[]), vec![ghost]).await;
    assert!(
        server
            .get("v1", "configmaps", "default", "orphan")
            .is_none()
    );
}

#[tokio::test]
async fn finalizers_hold_a_deletion_until_they_are_removed() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut c = cm("f", &[]);
    c.metadata.finalizers = Some(vec!["kvmesh.io/cleanup".into()]);
    within(api.create(&PostParams::default(), &c))
        .await
        .unwrap();
    within(api.delete("f", &DeleteParams::default()))
        .await
        .unwrap();
    let held = within(api.get("f")).await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let clear = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    within(api.patch("f", &PatchParams::default(), &clear))
        .await
        .unwrap();
    assert_eq!(api_code(within(api.get("f")).await).0, 404);
}

#[tokio::test]
async fn set_failing_makes_calls_fail_with_500_and_false_restores_them() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    within(api.create(&PostParams::default(), &cm("a", &[])))
        .await
        .unwrap();
    server.set_failing(true);
    assert_eq!(
        api_code(within(api.get("a")).await),
        (500, "InternalError".into())
    );
    assert_eq!(
        api_code(within(api.list(&ListParams::default())).await).0,
        500
    );
    server.set_failing(false);
    assert_eq!(within(api.get("a")).await.unwrap().name_any(), "a");
}

#[tokio::test]
async fn a_reflector_store_converges_to_the_server_contents() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    for n in ["a", "b"] {
        within(api.create(&PostParams::default(), &cm(n, &[])))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher::watcher(api.clone(), watcher::Config::default()),
    )
    .touched_objects();
    // The reflector only advances while polled: drive it in a task, and hand over what it touched.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(stream.try_for_each(move |c| {
        let _ = tx.send(c);
        async { Ok(()) }
    }));
    let mut touched = futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|c| (Ok::<_, ()>(c), rx))
    })
    .boxed();
    within(reader.wait_until_ready()).await.unwrap();
    assert_eq!(reader.state().len(), 2);
    assert_eq!(next(&mut touched).await.unwrap().name_any(), "a");
    assert_eq!(next(&mut touched).await.unwrap().name_any(), "b");
    within(api.create(&PostParams::default(), &cm("c", &[])))
        .await
        .unwrap();
    assert_eq!(next(&mut touched).await.unwrap().name_any(), "c");
    within(api.delete("a", &DeleteParams::default()))
        .await
        .unwrap();
    assert_eq!(next(&mut touched).await.unwrap().name_any(), "a");
    let mut cached: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
    cached.sort();
    let listed: Vec<String> = within(api.list(&ListParams::default()))
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(cached, listed);
    assert_eq!(listed, ["b", "c"]);
    driver.abort();
}

#[tokio::test]
async fn put_and_set_status_emit_watch_events() {
    let server = ApiDouble::start().await;
    let api: Api<DaemonSet> = Api::default_namespaced(server.client());
    let mut seen = watcher::watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "cache", "namespace": "default"},
                    "spec": {"selector": {"matchLabels": {"app": "c"}},
                             "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": []}}}});
    server.put("apps/v1", "daemonsets", ds);
    let first = next(&mut seen).await.unwrap();
    assert_eq!(first.metadata.generation, Some(1));
    server.set_status(
        "apps/v1",
        "daemonsets",
        "default",
        "cache",
        json!({"numberReady": 2, "desiredNumberScheduled": 3}),
    );
    let ready = next(&mut seen).await.unwrap();
    assert_eq!(ready.status.as_ref().unwrap().number_ready, 2);
    assert_eq!(ready.metadata.generation, Some(1));
    // `kubectl edit` of the spec bumps generation and keeps the uid.
    let mut edited = server
        .get("apps/v1", "daemonsets", "default", "cache")
        .unwrap();
    edited["spec"]["minReadySeconds"] = json!(5);
    server.put("apps/v1", "daemonsets", edited);
    let edited = next(&mut seen).await.unwrap();
    assert_eq!(edited.metadata.generation, Some(2));
    assert_eq!(edited.uid(), first.uid());
    assert!(server.requests().iter().any(|r| {
        r.starts_with("GET /apis/apps/v1/namespaces/default/daemonsets?")
            && r.contains("watch=true")
    }));
}

#[tokio::test]
async fn leases_are_created_and_replaced_with_optimistic_concurrency() {
    let server = ApiDouble::start().await;
    let api: Api<Lease> = Api::namespaced(server.client(), "kvmesh-system");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("leader".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    let created = within(api.create(&PostParams::default(), &lease))
        .await
        .unwrap();
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = within(api.replace("leader", &PostParams::default(), &taken))
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let mut racing = created;
    racing.spec.as_mut().unwrap().holder_identity = Some("c".into());
    assert_eq!(
        api_code(within(api.replace("leader", &PostParams::default(), &racing)).await).0,
        409
    );
    let stored = server
        .get(
            "coordination.k8s.io/v1",
            "leases",
            "kvmesh-system",
            "leader",
        )
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "b");
}

#[tokio::test]
async fn json_patch_strategic_patch_and_delete_collection_work() {
    let server = ApiDouble::start().await;
    let client = server.client();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    within(api.create(&PostParams::default(), &cm("j", &[("app", "x")])))
        .await
        .unwrap();
    let path = "/api/v1/namespaces/default/configmaps/j";
    let ops = json!([{"op": "add", "path": "/data/extra", "value": "1"}, {"op": "remove", "path": "/data/k"}]);
    let patched = raw(&client, "PATCH", path, "application/json-patch+json", ops)
        .await
        .unwrap();
    assert_eq!(patched["data"], json!({"extra": "1"}));
    let failing_test = json!([{"op": "test", "path": "/data/extra", "value": "2"}]);
    assert_eq!(
        api_code(
            raw(
                &client,
                "PATCH",
                path,
                "application/json-patch+json",
                failing_test
            )
            .await
        )
        .0,
        422
    );
    let strategic = Patch::Strategic(json!({"data": {"more": "2"}}));
    let patched = within(api.patch("j", &PatchParams::default(), &strategic))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    within(api.create(&PostParams::default(), &cm("k", &[("app", "y")])))
        .await
        .unwrap();
    within(api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=x"),
    ))
    .await
    .unwrap();
    assert_eq!(names(&api, "").await, ["k"]);
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut stream = within(api.watch(&WatchParams::default(), "0"))
        .await
        .unwrap()
        .boxed();
    within(server.shutdown()).await;
    // The stream ends (or fails once), and then ends.
    let rest: Vec<_> = within(async { stream.by_ref().collect::<Vec<_>>().await }).await;
    assert!(
        rest.iter().all(|r| r.is_err()),
        "no events after shutdown: {rest:?}"
    );
    let _ = stream.try_next().await;
}

#[tokio::test]
async fn a_watcher_errors_while_failing_and_recovers_afterwards() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut events = watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    assert!(matches!(next(&mut events).await.unwrap(), Event::Init));
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));
    server.set_failing(true);
    assert!(
        next(&mut events).await.is_err(),
        "the re-watch fails while the server fails"
    );
    server.set_failing(false);
    server.put("v1", "configmaps", json!({"metadata": {"name": "after"}}));
    let seen = within(async {
        loop {
            if let Ok(Event::Apply(c) | Event::InitApply(c)) = next(&mut events).await
                && c.name_any() == "after"
            {
                return c;
            }
        }
    })
    .await;
    assert_eq!(seen.name_any(), "after");
    assert!(server.requests().len() >= 3);
}

#[tokio::test]
async fn a_metadata_watcher_gets_partial_object_metadata() {
    let server = ApiDouble::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    within(api.create(&PostParams::default(), &cm("m", &[("app", "web")])))
        .await
        .unwrap();
    let metas: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::default_namespaced(server.client());
    let mut seen = watcher::watcher(metas, watcher::Config::default().labels("app=web"))
        .applied_objects()
        .boxed();
    let meta = next(&mut seen).await.unwrap();
    assert_eq!(meta.name_any(), "m");
    assert_eq!(meta.labels()["app"], "web");
}

#[tokio::test]
async fn a_controller_reconciles_creates_owned_objects_and_deletion_collects_them() {
    use kube::Resource;
    use kube::runtime::controller::{Action, Controller};
    use std::sync::Arc;

    async fn reconcile(
        pool: Arc<KvCachePool>,
        api: Arc<Api<ConfigMap>>,
    ) -> Result<Action, kube::Error> {
        let owner = pool.controller_owner_ref(&()).unwrap();
        let desired = json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": format!("{}-conn", pool.name_any()), "ownerReferences": [owner]},
                             "data": {"port": pool.spec.port.to_string()}});
        let name = format!("{}-conn", pool.name_any());
        api.patch(
            &name,
            &PatchParams::apply("kvmesh").force(),
            &Patch::Apply(desired),
        )
        .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<KvCachePool>, _: &kube::Error, _: Arc<Api<ConfigMap>>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }

    let server = ApiDouble::start().await;
    let client = server.client();
    let pools: Api<KvCachePool> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut cm_events = watcher::watcher(cms.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let controller = Controller::new(pools.clone(), watcher::Config::default())
        .owns(cms.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(cms.clone()))
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);
    within(pools.patch("p1", &PatchParams::apply("t"), &Patch::Apply(pool(8000))))
        .await
        .unwrap();
    let made = next(&mut cm_events).await.unwrap();
    assert_eq!(made.name_any(), "p1-conn");
    assert_eq!(made.data.as_ref().unwrap()["port"], "8000");
    within(pools.patch("p1", &PatchParams::apply("t"), &Patch::Apply(pool(8001))))
        .await
        .unwrap();
    let updated = next(&mut cm_events).await.unwrap();
    assert_eq!(updated.data.as_ref().unwrap()["port"], "8001");
    within(pools.delete("p1", &DeleteParams::default()))
        .await
        .unwrap();
    assert!(
        server
            .get("v1", "configmaps", "default", "p1-conn")
            .is_none()
    );
    controller.abort();
}
