//! Engine load signals: every few seconds, each replica's own `/metrics`
//! (vLLM or SGLang names) says how many requests it runs and queues. What it
//! holds beyond this router's in-flight count is other routers' traffic, and
//! counts toward its load in the bound. A scrape that fails or makes no sense
//! is ignored: the replica is judged by local counts, never penalised.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::Request;
use http_body_util::Full;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::state::{Shared, now};
use crate::routing::index::Slot;
use crate::routing::picker::EngineLoad;

/// Largest `/metrics` page read (vLLM's is ~100 KiB with histograms).
const MAX_METRICS_BYTES: usize = 4 << 20;

/// More requests than any engine holds: a page saying so is garbage.
const MAX_REQUESTS: f64 = 1e6;

/// Metric names for requests queued in the engine.
const WAITING: &[&str] = &["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
/// Metric names for requests the engine is running.
const RUNNING: &[&str] = &["vllm:num_requests_running", "sglang:num_running_reqs"];
/// Metric names for the share of the KV cache in use (0..1).
const KV_USAGE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

/// Reads an engine's load from its Prometheus text page. Series of one name
/// with different labels (several models) add up; the KV usage is the
/// largest. An error when neither a queue nor a running count is there, or
/// any value of those names is not a finite number in range.
pub fn parse_engine_metrics(text: &str) -> Result<EngineLoad, String> {
    let (mut waiting, mut running, mut kv) = (None::<f64>, None::<f64>, None::<f64>);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        let slot = if WAITING.contains(&name) {
            &mut waiting
        } else if RUNNING.contains(&name) {
            &mut running
        } else if KV_USAGE.contains(&name) {
            &mut kv
        } else {
            continue;
        };
        let v: f64 = value
            .parse()
            .map_err(|_| format!("{name}: {value:?} is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{name}: {value} is out of range"));
        }
        if v > MAX_REQUESTS {
            return Err(format!("{name}: {value} is implausible"));
        }
        if KV_USAGE.contains(&name) {
            if v > 1.0 {
                return Err(format!("{name}: {value} is above 1"));
            }
            *slot = Some(slot.map_or(v, |k: f64| k.max(v)));
        } else {
            *slot = Some(slot.unwrap_or(0.0) + v);
        }
    }
    if waiting.is_none() && running.is_none() {
        return Err("no engine queue or running-request metric on the page".into());
    }
    let count = |v: Option<f64>| v.unwrap_or(0.0).round().min(f64::from(u32::MAX)) as u32;
    Ok(EngineLoad {
        running: count(running),
        waiting: count(waiting),
        kv_usage: kv,
    })
}

/// `name{labels} value [timestamp]` → (name, value).
fn sample(line: &str) -> Option<(&str, &str)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        // Skip the label set; quoted values may hold braces and escapes.
        let (mut quoted, mut escaped, mut end) = (false, false, None);
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end? + 1..];
    }
    rest.split_whitespace().next().map(|v| (name, v))
}

/// Scrapes every replica each `interval` until `stop`, feeding the router.
pub async fn run(
    shared: Arc<Shared>,
    interval: Duration,
    path: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.min(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let targets: Vec<(Slot, String, http::uri::Authority)> = {
            let core = shared.core();
            core.backends
                .iter()
                .map(|(s, b)| (*s, b.name.clone(), b.authority.clone()))
                .collect()
        };
        let scrapes = targets.into_iter().map(|(slot, name, authority)| {
            let shared = shared.clone();
            let path = path.clone();
            async move {
                let result = tokio::time::timeout(timeout, scrape(&shared, &authority, &path))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                (slot, name, result)
            }
        });
        for (slot, name, result) in join_all(scrapes).await {
            let load = match result {
                Ok(load) => Some(load),
                Err(why) => {
                    shared
                        .metrics
                        .engine_scrape_errors
                        .get_or_create(&Metrics::replica(&name))
                        .inc();
                    tracing::debug!(replica = %name, error = %why, "engine metrics ignored");
                    None
                }
            };
            let mut core = shared.core();
            // The slot may have changed hands during the scrape.
            if core.router.name_of(slot) == Some(name.as_str()) {
                core.router.engine_load(slot, load, now());
            }
        }
    }
}

async fn scrape(
    shared: &Shared,
    authority: &http::uri::Authority,
    path: &str,
) -> Result<EngineLoad, String> {
    let get = Request::get(path)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let body =
        super::forward::side_request(&shared.client, authority, get, MAX_METRICS_BYTES).await?;
    let text = std::str::from_utf8(&body).map_err(|_| "not UTF-8 text".to_string())?;
    parse_engine_metrics(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_and_sglang_pages_give_queue_running_and_kv_usage() {
        let vllm = "# HELP vllm:num_requests_waiting Waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m {x}\"} 7.0\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 2\n\
            vllm:num_requests_running{model_name=\"m\"} 3 1712345678\n\
            vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n\
            vllm:prompt_tokens_total 12345\n";
        assert_eq!(
            parse_engine_metrics(vllm),
            Ok(EngineLoad {
                running: 3,
                waiting: 9,
                kv_usage: Some(0.25)
            })
        );
        let sglang = "sglang:num_queue_reqs{model_name=\"m\"} 4\nsglang:num_running_reqs 1\n";
        let l = parse_engine_metrics(sglang).expect("sglang");
        assert_eq!((l.waiting, l.running, l.kv_usage), (4, 1, None));
    }

    #[test]
    fn garbage_pages_are_errors_not_loads() {
        for page in [
            "",
            "<html><body>nginx</body></html>",
            "vllm:num_requests_waiting NaN\n",
            "vllm:num_requests_waiting -3\n",
            "vllm:num_requests_waiting lots\n",
            "vllm:num_requests_waiting{model=\"m\"} +Inf\n",
            "vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 7\n",
            "vllm:num_requests_waiting 1e30\n",
            "vllm:num_requests_waiting{unterminated=\"}\n",
        ] {
            assert!(parse_engine_metrics(page).is_err(), "{page:?} accepted");
        }
    }
}
