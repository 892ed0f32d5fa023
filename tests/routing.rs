//! Routing algorithm, through the public API: determinism, load bound,
//! stickiness, hot shared prefixes, ejection.

use std::time::{Duration, Instant};

use kvmesh::routing::picker::{EngineLoad, RouteRequest, load_bound};
use kvmesh::routing::{
    BlockHasher, Decision, Policy, PromptBlocks, Reason, RouteError, Router, RoutingConfig,
};
use proptest::prelude::*;

fn router(n: usize, policy: Policy) -> Router {
    let mut r = Router::new(RoutingConfig {
        policy,
        ..RoutingConfig::default()
    });
    let names: Vec<String> = (0..n).map(|i| format!("engine-{i}")).collect();
    r.set_replicas(&names);
    r
}

fn hashes(text: &str) -> PromptBlocks {
    BlockHasher::default().hash("model", text.as_bytes())
}

/// A conversation's prompt after `turns` turns, under one shared system prompt.
fn conversation(system: &str, session: usize, turns: usize) -> String {
    let mut s = String::from(system);
    for t in 0..turns {
        s.push_str(&format!(
            "<user>session {session} asks question number {t} about topic {}</user>",
            session * 7919 + t
        ));
        s.push_str(&format!("<assistant>a reasonably long answer to question {t} of session {session}, with detail</assistant>"));
    }
    s
}

fn shares(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    let mean = total as f64 / counts.len() as f64;
    *counts.iter().max().unwrap_or(&0) as f64 / mean
}

#[test]
fn follow_up_turns_stick_while_sessions_spread_under_one_system_prompt() {
    let now = Instant::now();
    let system = "You are a helpful assistant. ".repeat(80); // ~2.3 KB shared by all
    let mut r = router(4, Policy::Kvmesh);
    let mut home = vec![None; 200];
    let (mut counts, mut sticky, mut followups) = (vec![0usize; 4], 0, 0);
    for turn in 1..=6 {
        for (session, home) in home.iter_mut().enumerate() {
            let h = hashes(&conversation(&system, session, turn));
            let mut d = r
                .route(
                    &RouteRequest {
                        blocks: &h,
                        session: None,
                    },
                    &[],
                    now,
                )
                .expect("route");
            r.finish(&mut d);
            counts[d.replica as usize] += 1;
            if let Some(prev) = *home {
                followups += 1;
                sticky += usize::from(prev == d.replica);
            }
            *home = Some(d.replica);
        }
    }
    let stick = sticky as f64 / followups as f64;
    assert!(stick >= 0.95, "follow-ups on the previous replica: {stick}");
    assert!(shares(&counts) <= 1.25, "max/mean share {counts:?}");
}

#[test]
fn short_distinct_prompts_spread_evenly_one_at_a_time() {
    let now = Instant::now();
    let mut r = router(4, Policy::Kvmesh);
    let mut counts = [0usize; 4];
    for i in 0..2000 {
        let mut d = r
            .route(
                &RouteRequest {
                    blocks: &hashes(&format!("prompt number {i}.")),
                    session: None,
                },
                &[],
                now,
            )
            .expect("route");
        r.finish(&mut d);
        counts[d.replica as usize] += 1;
    }
    assert!(shares(&counts) <= 1.2, "{counts:?}");
    // "prompt number 1." is no prefix of "prompt number 12."; "prompt number 1"
    // is, and a longer prompt that extends a cached one is sent after it.
    let mut d = r
        .route(
            &RouteRequest {
                blocks: &hashes("prompt number 7"),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    r.finish(&mut d);
    let e = r
        .route(
            &RouteRequest {
                blocks: &hashes("prompt number 7 and a question"),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    assert_eq!(
        (e.replica, e.reason, e.matched_blocks),
        (d.replica, Reason::Warm, 1)
    );
}

#[test]
fn concurrent_requests_for_one_hot_prefix_spill_to_ring_successors() {
    let now = Instant::now();
    let mut r = router(4, Policy::Kvmesh);
    let h = hashes(&"the same long document ".repeat(100));
    let mut used = std::collections::HashSet::new();
    let mut held = Vec::new();
    for _ in 0..40 {
        let d = r
            .route(
                &RouteRequest {
                    blocks: &h,
                    session: None,
                },
                &[],
                now,
            )
            .expect("route");
        used.insert(d.replica);
        held.push(d);
    }
    assert!(
        used.len() > 1,
        "40 concurrent identical prompts all on one replica"
    );
    let loads: Vec<u32> = r.status(now).iter().map(|s| s.in_flight).collect();
    let c = RoutingConfig::default().load_factor;
    assert!(*loads.iter().max().unwrap_or(&0) <= load_bound(c, 39.0, 4));
}

#[test]
fn a_session_header_keys_the_ring() {
    let now = Instant::now();
    let mut r = router(8, Policy::Kvmesh);
    let mut first = r
        .route(
            &RouteRequest {
                blocks: &hashes("a"),
                session: Some("user-1"),
            },
            &[],
            now,
        )
        .expect("route");
    assert_eq!(first.reason, Reason::Session);
    r.finish(&mut first);
    for text in ["b", "something else entirely", ""] {
        let mut d = r
            .route(
                &RouteRequest {
                    blocks: &hashes(text),
                    session: Some("user-1"),
                },
                &[],
                now,
            )
            .expect("route");
        assert_eq!(d.replica, first.replica);
        r.finish(&mut d);
    }
}

#[test]
fn requests_without_a_prompt_go_to_the_least_loaded_replica() {
    let now = Instant::now();
    let mut r = router(3, Policy::Kvmesh);
    let busy = r
        .route(
            &RouteRequest {
                blocks: &PromptBlocks::default(),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    assert_eq!(busy.reason, Reason::Load);
    let next = r
        .route(
            &RouteRequest {
                blocks: &PromptBlocks::default(),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    assert_ne!(next.replica, busy.replica);
}

#[test]
fn round_robin_visits_every_replica_in_turn() {
    let now = Instant::now();
    let mut r = router(3, Policy::RoundRobin);
    let h = hashes("same prompt");
    let picks: Vec<u32> = (0..6)
        .map(|_| {
            let mut d = r
                .route(
                    &RouteRequest {
                        blocks: &h,
                        session: None,
                    },
                    &[],
                    now,
                )
                .expect("route");
            r.finish(&mut d);
            d.replica
        })
        .collect();
    assert_eq!(
        picks[..3]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
    assert_eq!(picks[..3], picks[3..]);
}

#[test]
fn repeated_failures_eject_a_replica_until_its_backoff_ends() {
    let t0 = Instant::now();
    let mut r = router(2, Policy::Kvmesh);
    let bad = r.slot_of("engine-0").expect("slot");
    assert!(!r.report_failure(bad, t0));
    assert!(!r.report_failure(bad, t0));
    assert!(
        r.report_failure(bad, t0),
        "third consecutive failure ejects"
    );
    assert_eq!(r.healthy_count(t0), 1);
    for _ in 0..20 {
        let mut d = r
            .route(
                &RouteRequest {
                    blocks: &hashes("x"),
                    session: None,
                },
                &[],
                t0,
            )
            .expect("route");
        assert_ne!(d.replica, bad);
        r.finish(&mut d);
    }
    // After one second it is tried again; one more failure ejects it for two.
    let t1 = t0 + Duration::from_millis(1001);
    assert_eq!(r.healthy_count(t1), 2);
    assert!(r.report_failure(bad, t1));
    assert_eq!(r.healthy_count(t1 + Duration::from_millis(1999)), 1);
    assert_eq!(r.healthy_count(t1 + Duration::from_millis(2001)), 2);
    // A success clears the streak.
    r.report_success(bad);
    assert!(!r.report_failure(bad, t1 + Duration::from_secs(3)));
}

#[test]
fn no_replica_left_is_an_error_not_a_panic() {
    let now = Instant::now();
    let mut r = router(0, Policy::Kvmesh);
    let blocks = PromptBlocks::from_hashes(vec![1, 2]);
    let req = RouteRequest {
        blocks: &blocks,
        session: None,
    };
    assert_eq!(r.route(&req, &[], now), Err(RouteError::NoReplicas));
    let mut r = router(2, Policy::Kvmesh);
    let all = [0, 1];
    assert_eq!(r.route(&req, &all, now), Err(RouteError::NoHealthyReplica));
}

#[test]
fn a_replica_that_leaves_loses_its_index_entries_and_keys() {
    let now = Instant::now();
    let mut r = router(3, Policy::Kvmesh);
    let h = hashes(&"doc ".repeat(64));
    let mut d = r
        .route(
            &RouteRequest {
                blocks: &h,
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    r.finish(&mut d);
    let gone = r.name_of(d.replica).expect("name").to_string();
    let keep: Vec<String> = (0..3)
        .map(|i| format!("engine-{i}"))
        .filter(|n| *n != gone)
        .collect();
    assert!(r.set_replicas(&keep));
    assert_eq!(r.replica_count(), 2);
    let d2 = r
        .route(
            &RouteRequest {
                blocks: &h,
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    assert_eq!(d2.reason, Reason::Cold);
    assert_ne!(r.name_of(d2.replica), Some(gone.as_str()));
}

#[derive(Debug, Clone)]
enum Op {
    Route { prompt: u8, len: u8, session: bool },
    Finish(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (any::<u8>(), 1u8..40, proptest::bool::weighted(0.1))
                .prop_map(|(prompt, len, session)| Op::Route { prompt: prompt % 16, len, session }),
            2 => any::<usize>().prop_map(Op::Finish),
        ],
        1..300,
    )
}

fn prompt_hashes(prompt: u8, len: u8) -> PromptBlocks {
    let text: String = (0..len)
        .map(|i| format!("[{}:{i}]", prompt % 4))
        .collect::<String>()
        + &format!("tail{prompt}");
    hashes(&text)
}

/// Runs ops; returns the decisions' replicas, asserting the load bound.
fn run(replicas: usize, ops: &[Op]) -> Vec<u32> {
    let now = Instant::now();
    let mut r = router(replicas, Policy::Kvmesh);
    let mut open = Vec::new();
    let mut picks = Vec::new();
    // Time stands still here, so the router's load reference is the peak
    // total in flight so far.
    let mut peak = 0u32;
    for op in ops {
        match op {
            Op::Route {
                prompt,
                len,
                session,
            } => {
                let h = prompt_hashes(*prompt, *len);
                let s = format!("s{prompt}");
                let before: Vec<(u32, u32)> = r
                    .status(now)
                    .iter()
                    .map(|s| (s.slot, s.in_flight))
                    .collect();
                peak = peak.max(before.iter().map(|b| b.1).sum());
                let bound = load_bound(
                    RoutingConfig::default().load_factor,
                    f64::from(peak),
                    before.len(),
                );
                let d = r
                    .route(
                        &RouteRequest {
                            blocks: &h,
                            session: session.then_some(s.as_str()),
                        },
                        &[],
                        now,
                    )
                    .expect("route");
                let load = before
                    .iter()
                    .find(|b| b.0 == d.replica)
                    .map(|b| b.1)
                    .unwrap_or(0);
                assert!(load < bound, "replica had {load} in flight, bound {bound}");
                picks.push(d.replica);
                open.push(d);
            }
            Op::Finish(i) => {
                if !open.is_empty() {
                    let mut d = open.swap_remove(i % open.len());
                    r.finish(&mut d);
                }
            }
        }
    }
    picks
}

proptest! {
    #[test]
    fn no_replica_ever_exceeds_the_load_bound(replicas in 1usize..9, ops in ops()) {
        run(replicas, &ops);
    }

    #[test]
    fn the_same_inputs_give_the_same_decisions(replicas in 1usize..9, ops in ops()) {
        prop_assert_eq!(run(replicas, &ops), run(replicas, &ops));
    }
}

proptest! {
    #[test]
    fn removing_a_replica_moves_only_its_share_of_cold_requests(
        n in 2usize..9,
        gone in 0usize..9,
        seeds in proptest::collection::hash_set(any::<u32>(), 1..120),
    ) {
        let gone = format!("engine-{}", gone % n);
        let now = Instant::now();
        let mut full = router(n, Policy::Kvmesh);
        let mut less = router(n, Policy::Kvmesh);
        let keep: Vec<String> = (0..n).map(|i| format!("engine-{i}")).filter(|x| *x != gone).collect();
        less.set_replicas(&keep);
        for seed in seeds {
            let h = hashes(&format!("request {seed}: summarise the attached report in three bullet points"));
            let req = RouteRequest { blocks: &h, session: None };
            let mut a = full.route(&req, &[], now).expect("route");
            let mut b = less.route(&req, &[], now).expect("route");
            full.finish(&mut a);
            less.finish(&mut b);
            prop_assert_eq!(a.reason, Reason::Cold);
            let (a, b) = (full.name_of(a.replica).expect("name"), less.name_of(b.replica).expect("name"));
            if a != gone {
                prop_assert_eq!(a, b);
            }
        }
    }
}

#[test]
fn an_attempt_that_outlives_its_replica_does_not_touch_the_one_that_took_its_slot() {
    let now = Instant::now();
    let mut r = Router::new(RoutingConfig::default());
    r.set_replicas(&["pod-a"]);
    let mut old = r
        .route(
            &RouteRequest {
                blocks: &hashes("first"),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    // pod-a leaves while its request streams; pod-b joins and reuses the slot.
    r.set_replicas(&["pod-b"]);
    let mut new = r
        .route(
            &RouteRequest {
                blocks: &hashes("second"),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    assert_eq!(new.replica, old.replica, "the slot was reused");
    r.finish(&mut old);
    assert_eq!(
        r.status(now)[0].in_flight,
        1,
        "pod-b's request is still in flight"
    );
    r.finish(&mut new);
    r.finish(&mut new);
    assert_eq!(r.status(now)[0].in_flight, 0, "finishing twice counts once");
    let mut again = r
        .route(
            &RouteRequest {
                blocks: &hashes("third"),
                session: None,
            },
            &[],
            now,
        )
        .expect("route");
    assert_eq!(r.status(now)[0].in_flight, 1);
    r.finish(&mut again);
}

/// Routes `prompt` (finishing at once) and returns the decision.
fn route_once(r: &mut Router, prompt: &PromptBlocks, exclude: &[u32], now: Instant) -> Decision {
    let mut d = r
        .route(
            &RouteRequest {
                blocks: prompt,
                session: None,
            },
            exclude,
            now,
        )
        .expect("route");
    r.finish(&mut d);
    d
}

/// Three replicas, two on node "n1", one on "n2"; each replica's index holds
/// about 40 blocks, each node `node_blocks`.
fn noded_router(node_blocks: usize) -> Router {
    let mut r = Router::new(RoutingConfig {
        index_capacity_blocks: 40,
        node_capacity_blocks: node_blocks,
        ..RoutingConfig::default()
    });
    r.set_members(&[("a", Some("n1")), ("b", Some("n1")), ("c", Some("n2"))]);
    r
}

#[test]
fn after_a_replicas_entries_are_evicted_its_prefix_goes_to_a_sibling_on_its_node() {
    let now = Instant::now();
    for node_tier in [true, false] {
        let mut r = noded_router(if node_tier { 10_000 } else { 0 });
        let doc = hashes(&format!("the document {}", "lorem ipsum ".repeat(120)));
        let first = route_once(&mut r, &doc, &[], now);
        let home = first.replica;
        let name = r.name_of(home).expect("name").to_string();
        // Other traffic on the same replica pushes the document out of its index.
        let others: Vec<u32> = ["a", "b", "c"]
            .iter()
            .filter_map(|n| r.slot_of(n))
            .filter(|s| *s != home)
            .collect();
        for i in 0..20 {
            let other = hashes(&format!("other {i} {}", "dolor sit amet ".repeat(40)));
            assert_eq!(route_once(&mut r, &other, &others, now).replica, home);
        }
        assert_eq!(r.index().lookup(&doc, f64::INFINITY).blocks_for(home), 0);
        // The home replica cannot take it (as on a retry): a sibling on the
        // same node can load it from the node cache.
        let d = route_once(&mut r, &doc, &[home], now);
        let node_of = |n: &str| if n == "c" { "n2" } else { "n1" };
        if node_tier {
            assert_eq!(d.reason, Reason::Node, "home {name}");
            assert_eq!(node_of(r.name_of(d.replica).expect("name")), node_of(&name));
            assert!(d.matched_blocks > 0);
        } else {
            assert_eq!(
                d.reason,
                Reason::Cold,
                "without the node tier it is a cold miss"
            );
        }
    }
}

#[test]
fn a_removed_replicas_blocks_stay_findable_on_its_node() {
    let now = Instant::now();
    let mut r = noded_router(10_000);
    let doc = hashes(&"a long shared document ".repeat(40));
    let home = route_once(&mut r, &doc, &[], now).replica;
    let name = r.name_of(home).expect("name").to_string();
    let node = |n: &str| if n == "c" { Some("n2") } else { Some("n1") };
    let rest: Vec<(&str, Option<&str>)> = ["a", "b", "c"]
        .into_iter()
        .filter(|n| *n != name)
        .map(|n| (n, node(n)))
        .collect();
    assert!(r.set_members(&rest));
    let d = route_once(&mut r, &doc, &[], now);
    assert_eq!(d.reason, Reason::Node);
    assert_eq!(node(r.name_of(d.replica).expect("name")), node(&name));
}

#[test]
fn a_deleted_replicas_cold_keys_move_to_ring_successors_only() {
    let now = Instant::now();
    let names: Vec<String> = (0..5).map(|i| format!("pod-{i}")).collect();
    let mut r = router(0, Policy::Kvmesh);
    r.set_replicas(&names);
    let prompts: Vec<PromptBlocks> = (0..300)
        .map(|i| hashes(&format!("prompt number {i} with its own text")))
        .collect();
    let before: Vec<String> = prompts
        .iter()
        .map(|p| {
            let d = route_once(&mut r, p, &[], now);
            r.name_of(d.replica).expect("name").to_string()
        })
        .collect();
    let gone = "pod-2";
    assert!(
        before.iter().any(|n| n == gone),
        "the deleted pod held keys"
    );
    let rest: Vec<String> = names.iter().filter(|n| *n != gone).cloned().collect();
    r.set_replicas(&rest);
    // Where a router that never knew pod-2 puts each key: its ring successor.
    let mut fresh = router(0, Policy::Kvmesh);
    fresh.set_replicas(&rest);
    let mut moved = 0;
    for (p, was) in prompts.iter().zip(&before) {
        let d = route_once(&mut r, p, &[], now);
        let now_on = r.name_of(d.replica).expect("name").to_string();
        if was == gone {
            let successor = route_once(&mut fresh, p, &[], now).replica;
            assert_eq!(now_on, fresh.name_of(successor).expect("name"));
            moved += 1;
        } else {
            assert_eq!(&now_on, was, "a key on a surviving pod moved");
        }
    }
    assert!(moved > 20, "{moved} keys moved");
}

#[test]
fn a_replica_whose_engine_reports_a_deep_queue_gets_fewer_requests() {
    let start = Instant::now();
    let mut r = router(4, Policy::Kvmesh);
    let deep = r.slot_of("engine-0").expect("slot");
    let load = EngineLoad {
        running: 16,
        waiting: 40,
        kv_usage: Some(0.9),
    };
    r.engine_load(deep, Some(load), start);
    let count = |r: &mut Router, from: usize, now: Instant| {
        (from..from + 200)
            .filter(|i| {
                let p = hashes(&format!(
                    "{i}: a new question {}",
                    "of some length ".repeat(8)
                ));
                route_once(r, &p, &[], now).replica == deep
            })
            .count()
    };
    let busy = count(&mut r, 0, start);
    assert!(busy < 10, "the deep queue took {busy} of 200");
    assert_eq!(
        r.status(start)[deep as usize].engine,
        Some(load),
        "the signal is visible while fresh"
    );
    // Once the report is stale (the scrapes stopped), local counts rule again.
    let later = start + r.config().engine_signal_ttl + Duration::from_secs(1);
    let share = count(&mut r, 1000, later);
    assert!(share > 25, "after the signal expired: {share} of 200");
    // A failed scrape clears it at once.
    r.engine_load(deep, Some(load), later);
    r.engine_load(deep, None, later);
    let share = count(&mut r, 2000, later);
    assert!(share > 25, "after a failed scrape: {share} of 200");
}
