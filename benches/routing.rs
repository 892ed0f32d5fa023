//! Cost of one routing decision: canonical prompt + block hashes + index
//! lookup + pick + learn, for realistic chat bodies against a warm index.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvmesh::routing::{
    BlockHasher, Endpoint, RouteRequest, Router, RoutingConfig, canonical_prompt,
};

/// A chat body of about `bytes` bytes: a shared system prompt, then a
/// per-user conversation.
fn chat_body(bytes: usize, user: usize) -> Vec<u8> {
    let system = "You are a careful assistant. Follow the policy and cite sources. ".repeat(16);
    let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
    let mut size = system.len();
    let mut turn = 0;
    while size < bytes {
        let text = format!(
            "User {user} turn {turn}: please review the following paragraph and list problems. {}",
            "The quick brown fox jumps over the lazy dog. ".repeat(20)
        );
        size += text.len();
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": text}));
        turn += 1;
    }
    serde_json::to_vec(
        &serde_json::json!({"model": "llama-3.1-8b", "messages": messages, "stream": true}),
    )
    .unwrap_or_default()
}

fn warm_router(replicas: usize, body_bytes: usize) -> Router {
    let mut router = Router::new(RoutingConfig::default());
    let names: Vec<String> = (0..replicas).map(|i| format!("engine-{i}")).collect();
    router.set_replicas(&names);
    let hasher = BlockHasher::default();
    let now = Instant::now();
    // 256 other users' conversations of the same size already routed.
    for user in 0..256 {
        let body = chat_body(body_bytes, 10_000 + user);
        if let Some(p) = canonical_prompt(Endpoint::ChatCompletions, &body, hasher.max_bytes()) {
            let blocks = hasher.hash(&p.model, p.bytes);
            if let Ok(mut d) = router.route(
                &RouteRequest {
                    blocks: &blocks,
                    session: None,
                },
                &[],
                now,
            ) {
                router.finish(&mut d);
            }
        }
    }
    router
}

fn decision(c: &mut Criterion) {
    let hasher = BlockHasher::default();
    let mut group = c.benchmark_group("routing_decision");
    for &size in &[1 << 10, 4 << 10, 16 << 10, 220 << 10] {
        for &replicas in &[8usize, 64] {
            let mut router = warm_router(replicas, size);
            let bodies: Vec<Vec<u8>> = (0..8).map(|u| chat_body(size, u)).collect();
            let now = Instant::now();
            group.throughput(Throughput::Bytes(bodies[0].len() as u64));
            let id = BenchmarkId::new(format!("{}KiB", size >> 10), format!("{replicas}_replicas"));
            let mut i = 0usize;
            group.bench_function(id, |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let body = &bodies[i % bodies.len()];
                    let blocks =
                        canonical_prompt(Endpoint::ChatCompletions, body, hasher.max_bytes())
                            .map(|p| hasher.hash(&p.model, p.bytes))
                            .unwrap_or_default();
                    let mut d = router
                        .route(
                            &RouteRequest {
                                blocks: &blocks,
                                session: None,
                            },
                            &[],
                            now,
                        )
                        .expect("replicas exist");
                    router.finish(&mut d);
                    black_box(d.replica)
                })
            });
        }
    }
    group.finish();
}

fn parts(c: &mut Criterion) {
    let hasher = BlockHasher::default();
    let mut group = c.benchmark_group("routing_parts_220KiB");
    let body = chat_body(220 << 10, 1);
    group.bench_function("canonical_prompt", |b| {
        b.iter(|| {
            black_box(canonical_prompt(
                Endpoint::ChatCompletions,
                &body,
                hasher.max_bytes(),
            ))
        })
    });
    let prompt =
        canonical_prompt(Endpoint::ChatCompletions, &body, hasher.max_bytes()).expect("prompt");
    group.bench_function("block_hashes", |b| {
        b.iter_batched(
            || prompt.bytes.clone(),
            |bytes| black_box(hasher.hash(&prompt.model, bytes)),
            BatchSize::LargeInput,
        )
    });
    let blocks = hasher.hash(&prompt.model, prompt.bytes.as_slice());
    let mut router = warm_router(8, 220 << 10);
    let now = Instant::now();
    group.bench_function("route_and_learn", |b| {
        b.iter(|| {
            let mut d = router
                .route(
                    &RouteRequest {
                        blocks: &blocks,
                        session: None,
                    },
                    &[],
                    now,
                )
                .expect("replicas exist");
            router.finish(&mut d);
            black_box(d.replica)
        })
    });
    group.finish();
}

criterion_group!(benches, decision, parts);
criterion_main!(benches);
