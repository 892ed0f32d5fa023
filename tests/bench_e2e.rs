//! End to end on loopback: simulated engines, a kvmesh router and a
//! round-robin router, the same workload replayed through each.

use kvmesh::bench::demo::start_router;
use kvmesh::bench::online::{OnlineConfig, replay, reset_caches};
use kvmesh::sim::server::SimArgs;
use kvmesh::sim::workload::{Spec, build};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvmesh_reuses_more_prefill_than_round_robin_on_shared_prefixes() {
    let mut listeners = Vec::new();
    for _ in 0..4 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let sim = kvmesh::sim::server::spawn(&SimArgs::loopback(4, 50.0), listeners).expect("engines");
    let backends: Vec<String> = sim.addrs.iter().map(|a| format!("http://{a}")).collect();
    let metrics: Vec<String> = sim
        .addrs
        .iter()
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    let w = build(
        &Spec::SharedPrefix {
            groups: 24,
            prompts: 4,
            system_tokens: 512,
            question_tokens: 32,
            output_tokens: 8,
            rate: 10.0,
        },
        3,
    )
    .expect("workload");
    let mut hit = Vec::new();
    for policy in ["kvmesh", "round-robin"] {
        let r = start_router(&backends, policy).await.expect("router");
        reset_caches(&metrics).await;
        let cfg = OnlineConfig {
            target: format!("http://{}", r.addr),
            engine_metrics: metrics.clone(),
            speed: 50.0,
            timeout: std::time::Duration::from_secs(60),
            progress: false,
        };
        let res = replay(policy, &w, &cfg).await.expect("replay");
        assert_eq!(res.errors, 0, "{policy}");
        assert_eq!(res.requests, 96);
        assert!(res.ttft_mean_s > 0.0);
        hit.push(res.hit_rate.expect("engine metrics read"));
        r.shutdown().await;
    }
    eprintln!("hit rates: kvmesh {:.3}, round-robin {:.3}", hit[0], hit[1]);
    assert!(
        hit[0] > hit[1] + 0.25,
        "kvmesh {:.3} vs round-robin {:.3}",
        hit[0],
        hit[1]
    );
    sim.shutdown().await;
}
