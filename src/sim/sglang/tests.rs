//! Tests of the SGLang `cache_aware` re-implementation, including the failure mode it is compared for.
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn cfg_no_eviction() -> SglangConfig {
    SglangConfig {
        eviction_interval_secs: 0.0,
        ..SglangConfig::default()
    }
}

/// Recomputes per-tenant characters from the nodes and checks structural invariants.
fn check_invariants(tree: &Tree) -> Result<(), String> {
    let mut counts = vec![0usize; tree.tenant_chars.len()];
    for (id, n) in tree.nodes.iter().enumerate() {
        if !n.alive {
            continue;
        }
        if n.label.chars().count() != n.label_chars {
            return Err(format!("node {id}: label_chars mismatch"));
        }
        if id != ROOT && n.label.is_empty() {
            return Err(format!("node {id}: empty label"));
        }
        for &(t, _) in &n.tenants {
            counts[t] += n.label_chars;
        }
        for w in n.children.windows(2) {
            if w[0].0 >= w[1].0 {
                return Err(format!("node {id}: children not sorted"));
            }
        }
        for &(c, ch) in &n.children {
            let child = &tree.nodes[ch];
            if !child.alive || child.parent != Some(id) || !child.label.starts_with(c) {
                return Err(format!("node {id}: bad child {ch}"));
            }
            for &(t, _) in &child.tenants {
                if !n.has(t) {
                    return Err(format!("tenant {t} on {ch} but not on parent {id}"));
                }
            }
        }
    }
    if counts != tree.tenant_chars {
        return Err(format!(
            "counts {counts:?} != maintained {:?}",
            tree.tenant_chars
        ));
    }
    Ok(())
}

fn lcp_chars(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

#[test]
fn routes_to_the_worker_with_the_longest_prefix_match_when_balanced() {
    let mut p = SglangCacheAware::new(3, cfg_no_eviction());
    let idle = [0, 0, 0];
    let a = format!("{} tail one", "alpha ".repeat(20));
    let b = format!("{} tail one", "bravo ".repeat(20));
    assert_eq!(
        p.pick(&a, &idle, 0.0),
        0,
        "empty trees: smallest, lowest index"
    );
    assert_eq!(
        p.pick(&b, &idle, 1.0),
        1,
        "no match: smallest tree is worker 1"
    );
    let a2 = format!("{} tail two, longer", "alpha ".repeat(20));
    let b2 = format!("{} tail two, longer", "bravo ".repeat(20));
    assert_eq!(p.pick(&b2, &idle, 2.0), 1);
    assert_eq!(p.pick(&a2, &idle, 3.0), 0);
    // Load differences within the thresholds do not matter.
    assert_eq!(p.pick(&a, &[60, 0, 0], 4.0), 0);
}

#[test]
fn falls_back_to_the_smallest_tree_when_the_match_rate_is_at_or_below_the_threshold() {
    let mut p = SglangCacheAware::new(3, cfg_no_eviction());
    let idle = [0, 0, 0];
    assert_eq!(p.pick(&"x".repeat(500), &idle, 0.0), 0);
    assert_eq!(p.pick(&"y".repeat(100), &idle, 1.0), 1);
    // 3 of 10 characters match worker 0's text: rate 0.3 is not > 0.3 -> smallest (2).
    assert_eq!(p.pick("xxxabcdefg", &idle, 2.0), 2);
    // 4 of 10 match: rate 0.4 > 0.3 -> worker 0 despite its big tree.
    assert_eq!(p.pick("xxxxhijklm", &idle, 3.0), 0);
    // An unrelated text goes to the smallest tree (worker 1: 100 < 500, 2 has 10).
    assert_eq!(p.tree.tenant_chars[2], 10);
    assert_eq!(p.pick("zzzzzzzzzzzz", &idle, 4.0), 2);
    assert_eq!(p.pick(&"q".repeat(90), &idle, 5.0), 2);
    // Worker 2 now holds 10 + 12 + 90 = 112 > 100, so worker 1 is the smallest.
    assert_eq!(p.pick("a brand new text", &idle, 6.0), 1);
}

#[test]
fn empty_text_goes_to_the_smallest_tree_and_is_not_counted() {
    let mut p = SglangCacheAware::new(2, cfg_no_eviction());
    assert_eq!(p.pick("hello", &[0, 0], 0.0), 0);
    assert_eq!(p.pick("", &[0, 0], 1.0), 1);
    assert_eq!(p.tree.tenant_chars, vec![5, 0]);
}

#[test]
fn routes_to_the_least_loaded_worker_when_imbalanced_by_both_thresholds() {
    let mut p = SglangCacheAware::new(3, cfg_no_eviction());
    let text = "the shared prefix that worker zero has cached already";
    assert_eq!(p.pick(text, &[0, 0, 0], 0.0), 0);
    // 100 - 10 > 64 and 100 > 10 * 1.5: shortest queue wins over the cache hit.
    assert_eq!(p.pick(text, &[100, 30, 10], 1.0), 2);
    // The text was still recorded under the chosen worker.
    assert_eq!(p.tree.tenant_chars[2], text.chars().count());
    // Ties on the minimum go to the first such worker.
    assert_eq!(p.pick(text, &[100, 0, 0], 2.0), 1);
}

#[test]
fn does_not_balance_when_only_one_threshold_is_exceeded() {
    let mut p = SglangCacheAware::new(2, cfg_no_eviction());
    let text = "a prompt that worker zero has already seen in full";
    assert_eq!(p.pick(text, &[0, 0], 0.0), 0);
    // Relative exceeded (10 > 0 * 1.5) but absolute not (10 <= 64): cache routing.
    assert_eq!(p.pick(text, &[10, 0], 1.0), 0);
    // Absolute exactly at the threshold is not exceeded (64 is not > 64).
    assert_eq!(p.pick(text, &[64, 0], 2.0), 0);
    // Absolute exceeded (300 - 230 = 70 > 64) but relative not (300 <= 345).
    assert_eq!(p.pick(text, &[300, 230], 3.0), 0);
    // Both exceeded: least loaded.
    assert_eq!(p.pick(text, &[65, 0], 4.0), 1);
}

#[test]
fn periodic_eviction_trims_each_tree_to_max_tree_size_by_lru() {
    let cfg = SglangConfig {
        max_tree_size: 100,
        eviction_interval_secs: 10.0,
        ..SglangConfig::default()
    };
    let mut p = SglangCacheAware::new(1, cfg);
    let texts: Vec<String> = (0..5)
        .map(|i| format!("{}{}", char::from(b'a' + i as u8), "-".repeat(39)))
        .collect();
    for (i, t) in texts.iter().enumerate() {
        p.pick(t, &[0], i as f64); // clock starts at t = 0; first eviction due at 10
    }
    assert_eq!(p.tree.tenant_chars[0], 200);
    p.pick("", &[0], 9.9);
    assert_eq!(p.tree.tenant_chars[0], 200, "not due yet");
    p.pick("", &[0], 10.0);
    assert!(p.tree.tenant_chars[0] <= 100);
    assert_eq!(
        p.tree.tenant_chars[0], 80,
        "the three oldest 40-char texts are gone"
    );
    for (i, t) in texts.iter().enumerate() {
        let (m, _) = p.tree.prefix_match(t, 11_000);
        assert_eq!(m, if i < 3 { 0 } else { 40 }, "text {i}");
    }
    assert!(check_invariants(&p.tree).is_ok());
    // Eviction is per tenant and only touches tenants over budget.
    assert_eq!(p.tree.live_nodes(), 3);
}

#[test]
fn eviction_prefers_least_recently_used_leaves_and_keeps_shared_prefixes() {
    let cfg = SglangConfig {
        max_tree_size: 30,
        eviction_interval_secs: 5.0,
        ..SglangConfig::default()
    };
    let mut p = SglangCacheAware::new(1, cfg);
    let shared = "0123456789";
    p.pick(&format!("{shared}aaaaaaaaaa"), &[0], 0.0);
    p.pick(&format!("{shared}bbbbbbbbbb"), &[0], 1.0);
    p.pick(&format!("{shared}cccccccccc"), &[0], 2.0);
    // Touch the "a" branch again so "b" is the least recently used.
    p.pick(&format!("{shared}aaaaaaaaaa"), &[0], 3.0);
    assert_eq!(p.tree.tenant_chars[0], 40);
    p.pick("", &[0], 5.0);
    assert_eq!(p.tree.tenant_chars[0], 30);
    let (m, _) = p.tree.prefix_match(&format!("{shared}bbbbbbbbbb"), 6_000);
    assert_eq!(
        m, 10,
        "only the shared prefix of the evicted branch remains"
    );
    let (m, _) = p.tree.prefix_match(&format!("{shared}aaaaaaaaaa"), 6_000);
    assert_eq!(m, 20);
    assert!(check_invariants(&p.tree).is_ok());
}

#[test]
fn routing_is_deterministic_for_the_same_inputs() {
    let run = || {
        let mut p = SglangCacheAware::new(
            4,
            SglangConfig {
                max_tree_size: 2_000,
                eviction_interval_secs: 3.0,
                ..SglangConfig::default()
            },
        );
        let mut load = [0usize; 4];
        let mut picks = Vec::new();
        for i in 0..400u64 {
            let h = xxh3_64_with_seed(&i.to_le_bytes(), 7);
            let text = format!(
                "{}{}",
                ["sys-A ", "sys-B ", "other "][(h % 3) as usize].repeat(5 + (h % 7) as usize),
                h % 13
            );
            let w = p.pick(&text, &load, i as f64 * 0.25);
            picks.push(w);
            load[w] += 1;
            if h.is_multiple_of(3) {
                let busiest = (0..4).max_by_key(|&j| load[j]).unwrap_or(0);
                load[busiest] = load[busiest].saturating_sub(1);
            }
        }
        picks
    };
    assert_eq!(run(), run());
}

#[test]
fn sessions_sharing_a_long_system_prompt_all_land_on_one_worker_when_idle() {
    // The known failure mode kvmesh is compared against: one shared system prompt makes
    // every new session's match rate > 0.3, so with no load imbalance (requests served
    // one at a time, in-flight all 0) cache_aware never spreads them out.
    let system = "You are a meticulous assistant for ACME Corp. Follow the policy. ".repeat(40);
    let mut p = SglangCacheAware::new(8, SglangConfig::default());
    let mut per_worker = [0usize; 8];
    for s in 0..200 {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("Session {s}: please summarise ticket #{}", s * 7919)},
            ]
        });
        let text = routing_text(&body);
        let w = p.pick(&text, &[0; 8], s as f64);
        per_worker[w] += 1;
    }
    let busiest = per_worker.iter().copied().max().unwrap_or(0);
    assert!(busiest >= 199, "distribution {per_worker:?}");
    assert_eq!(per_worker[0], 200, "distribution {per_worker:?}");
}

#[test]
fn a_hot_worker_runs_more_than_64_requests_ahead_before_anything_spills() {
    let system = "Shared system prompt for every session. ".repeat(50);
    let mut p = SglangCacheAware::new(4, SglangConfig::default());
    let mut load = [0usize; 4];
    let mut picks = Vec::new();
    for s in 0..70 {
        let w = p.pick(&format!("{system} user {s}"), &load, s as f64);
        load[w] += 1; // nothing completes
        picks.push(w);
    }
    assert!(picks[..65].iter().all(|&w| w == 0), "{picks:?}");
    assert_ne!(picks[65], 0);
}

#[test]
fn matches_and_counts_in_characters_not_bytes() {
    let mut tree = Tree::new(2);
    tree.insert("aé-x", 0, 0); // 'é' is 2 bytes
    tree.insert("aè-y", 1, 0); // 'è' shares its first byte with 'é'
    assert_eq!(tree.tenant_chars, vec![4, 4]);
    assert_eq!(tree.prefix_match("aé-z", 1), (3, Some(0)));
    assert_eq!(tree.prefix_match("aè", 1), (2, Some(1)));
    assert_eq!(tree.prefix_match("aê", 1).0, 1);
    assert!(check_invariants(&tree).is_ok());
}

#[test]
fn routing_text_joins_chat_message_contents_like_the_router() {
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "SYS"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "http://x"}},
                {"type": "text", "text": "here"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]},
            {"role": "assistant", "content": " answer ", "reasoning_content": "because"},
            {"role": "assistant", "content": "only"},
            {"role": "tool", "content": "result", "tool_call_id": "1"},
            {"role": "user", "content": ""},
            {"role": "user", "content": "last"}
        ]
    });
    assert_eq!(
        routing_text(&body),
        "SYS look here answer  because only result  last"
    );
}

#[test]
fn routing_text_handles_completions_generate_and_missing_text() {
    assert_eq!(routing_text(&json!({"prompt": "p"})), "p");
    assert_eq!(routing_text(&json!({"prompt": ["a", "b"]})), "a b");
    assert_eq!(routing_text(&json!({"text": "t"})), "t");
    assert_eq!(routing_text(&json!({"input_ids": [1, 2, 3]})), "1 2 3");
    assert_eq!(routing_text(&json!({"input_ids": [[1, 2], [3]]})), "1 2 3");
    assert_eq!(routing_text(&json!({"model": "m"})), "");
    assert_eq!(routing_text(&json!({"messages": []})), "");
    assert_eq!(routing_text(&json!(null)), "");
}

#[test]
fn routes_two_hundred_kilobyte_prompts_quickly() {
    let base: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (xxh3_64_with_seed(&i.to_le_bytes(), 1) % 26) as u8))
        .collect();
    let mut p = SglangCacheAware::new(8, SglangConfig::default());
    let start = std::time::Instant::now();
    for i in 0..200usize {
        let cut = 1_000 + (i * 997) % 199_000;
        let text = format!("{}{}", &base[..cut], i);
        p.pick(&text, &[0; 8], i as f64);
    }
    // Generous bound so debug builds pass; release is far faster.
    assert!(start.elapsed().as_secs() < 20);
    assert!(check_invariants(&p.tree).is_ok());
}

proptest! {
    #[test]
    fn tree_invariants_and_longest_prefix_hold_for_random_operations(
        ops in proptest::collection::vec(
            (0usize..3, "[abé]{0,12}", 0usize..40), 1..60)
    ) {
        let mut tree = Tree::new(3);
        let mut inserted: Vec<String> = Vec::new();
        let mut evicted = false;
        for (i, (tenant, text, budget)) in ops.iter().enumerate() {
            if i % 11 == 10 {
                tree.evict(*budget);
                evicted = true;
                for &c in &tree.tenant_chars {
                    prop_assert!(c <= *budget);
                }
            } else {
                tree.insert(text, *tenant, i as u64);
                inserted.push(text.clone());
            }
            prop_assert_eq!(check_invariants(&tree), Ok(()));
            if !evicted {
                let (m, t) = tree.prefix_match(text, i as u64);
                let best = inserted.iter().map(|s| lcp_chars(s, text)).max().unwrap_or(0);
                prop_assert_eq!(m, best);
                prop_assert!(t.is_some());
            }
        }
    }
}
