//! Online replay: sends a workload's requests to a URL over HTTP (open loop
//! for new sessions, each next turn after the previous answer), streams the
//! answers and measures time to first token; engines' `/metrics` give the
//! prefix-cache hit rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::BenchError;
use crate::sim::offline::{max_over_mean, mean, quantile};
use crate::sim::workload::{Arrival, Workload};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How to replay.
#[derive(Debug, Clone)]
pub struct OnlineConfig {
    /// Base URL requests go to (`/v1/chat/completions` is appended).
    pub target: String,
    /// Engines' Prometheus endpoints, read before and after.
    pub engine_metrics: Vec<String>,
    /// Workload seconds per wall second (match `kvmesh sim --speed`).
    pub speed: f64,
    /// A request that takes longer fails.
    pub timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What one replay measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OnlineResult {
    pub name: String,
    pub requests: usize,
    pub errors: usize,
    /// Prompt tokens the engines found cached / prompt tokens they were asked (from /metrics).
    pub hit_rate: Option<f64>,
    /// Prompt tokens the engines computed (from /metrics).
    pub prefill_tokens: Option<u64>,
    /// In workload seconds (wall time × speed).
    pub ttft_mean_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    pub e2e_mean_s: f64,
    /// Busiest engine's finished requests / mean, from the engines' metrics;
    /// without them, from the `x-kvmesh-replica` / `x-kvmesh-sim-engine`
    /// response headers (which only count replicas that served something).
    pub max_mean_requests: Option<f64>,
    pub wall_s: f64,
    /// Every successful request's TTFT (workload seconds), sorted.
    #[serde(skip)]
    pub ttfts: Vec<f64>,
}

/// One request's outcome.
struct Outcome {
    id: usize,
    ttft: Option<f64>,
    e2e: f64,
    replica: Option<String>,
}

/// Replays `w` against `cfg.target`; `name` labels the result.
pub async fn replay(
    name: &str,
    w: &Workload,
    cfg: &OnlineConfig,
) -> Result<OnlineResult, BenchError> {
    if !(cfg.speed > 0.0 && cfg.speed.is_finite()) {
        return Err(BenchError::Usage("--speed must be positive".into()));
    }
    let base = cfg.target.trim_end_matches('/');
    let url: Uri = format!("{base}/v1/chat/completions")
        .parse()
        .map_err(|_| BenchError::Usage(format!("--target {:?} is not a base URL", cfg.target)))?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    let before = scrape_all(&client, &cfg.engine_metrics).await;

    let next_turn: HashMap<(usize, usize), usize> = w
        .requests
        .iter()
        .map(|r| ((r.session, r.turn), r.id))
        .collect();
    let bar = cfg.progress.then(|| {
        let b = indicatif::ProgressBar::new(w.requests.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "  {prefix} {bar:30} {pos}/{len} requests {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(name.to_string());
        b
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let send = {
        let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
        let timeout = cfg.timeout;
        let speed = cfg.speed;
        Arc::new(move |id: usize, body: Bytes, at: Instant| {
            let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let outcome = one(&client, &url, body, timeout, speed).await;
                let _ = tx.send(Outcome { id, ..outcome });
            });
        })
    };
    for r in &w.requests {
        if let Arrival::At(t) = r.arrival {
            send(
                r.id,
                r.body.clone(),
                start + Duration::from_secs_f64(t / cfg.speed),
            );
        }
    }
    drop(tx);
    let mut outcomes = Vec::with_capacity(w.requests.len());
    let mut pending = w.requests.len();
    while pending > 0 {
        let Some(o) = rx.recv().await else { break };
        pending -= 1;
        if let Some(b) = &bar {
            b.inc(1);
        }
        let r = &w.requests[o.id];
        if let Some(&next) = next_turn.get(&(r.session, r.turn + 1))
            && let Arrival::AfterPrevious(think) = w.requests[next].arrival
        {
            // A failed turn still moves the session on, as a user would retry.
            send(
                next,
                w.requests[next].body.clone(),
                Instant::now() + Duration::from_secs_f64(think / cfg.speed),
            );
        }
        outcomes.push(o);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let wall_s = start.elapsed().as_secs_f64();
    let after = scrape_all(&client, &cfg.engine_metrics).await;

    let mut ttfts: Vec<f64> = outcomes.iter().filter_map(|o| o.ttft).collect();
    ttfts.sort_by(f64::total_cmp);
    let e2e: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.ttft.is_some())
        .map(|o| o.e2e)
        .collect();
    let mut per_replica: HashMap<&str, usize> = HashMap::new();
    for o in &outcomes {
        if let Some(r) = &o.replica {
            *per_replica.entry(r.as_str()).or_default() += 1;
        }
    }
    let (hit_rate, prefill_tokens, engine_share) = match (before, after) {
        (Some(b), Some(a)) if a.queries > b.queries => {
            let q = a.queries - b.queries;
            let h = a.hits - b.hits;
            // Requests each engine finished during the run: the share every
            // router is judged by, whatever headers it passes on.
            let done: Vec<f64> = a
                .finished
                .iter()
                .zip(&b.finished)
                .map(|(x, y)| x - y)
                .collect();
            let share = (done.iter().sum::<f64>() > 0.0).then(|| max_over_mean(done.into_iter()));
            (Some(h / q), Some((q - h).max(0.0) as u64), share)
        }
        _ => (None, None, None),
    };
    Ok(OnlineResult {
        name: name.to_string(),
        requests: w.requests.len(),
        errors: outcomes.iter().filter(|o| o.ttft.is_none()).count() + pending,
        hit_rate,
        prefill_tokens,
        ttft_mean_s: mean(&ttfts),
        ttft_p50_s: quantile(&ttfts, 0.5),
        ttft_p99_s: quantile(&ttfts, 0.99),
        e2e_mean_s: mean(&e2e),
        max_mean_requests: engine_share.or_else(|| {
            (!per_replica.is_empty())
                .then(|| max_over_mean(per_replica.values().map(|&v| v as f64)))
        }),
        wall_s,
        ttfts,
    })
}

/// Sends one streamed request; TTFT is the first chunk carrying content.
async fn one(
    client: &HttpClient,
    url: &Uri,
    body: Bytes,
    timeout: Duration,
    speed: f64,
) -> Outcome {
    let sent = Instant::now();
    let failed = |sent: Instant| Outcome {
        id: 0,
        ttft: None,
        e2e: sent.elapsed().as_secs_f64() * speed,
        replica: None,
    };
    let req = match Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(_) => return failed(sent),
    };
    let work = async {
        let resp = client.request(req).await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let replica = ["x-kvmesh-replica", "x-kvmesh-sim-engine"]
            .iter()
            .find_map(|h| resp.headers().get(*h))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let mut first = None;
        let mut pending = Vec::new();
        let mut done = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if first.is_none() {
                pending.extend_from_slice(&data);
                if has_content(&pending) {
                    first = Some(sent.elapsed().as_secs_f64() * speed);
                    pending.clear();
                }
            }
            if data.windows(6).any(|w| w == b"[DONE]") {
                done = true;
            }
        }
        done.then_some(())?;
        Some((first?, replica))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Some((ttft, replica))) => Outcome {
            id: 0,
            ttft: Some(ttft),
            e2e: sent.elapsed().as_secs_f64() * speed,
            replica,
        },
        _ => failed(sent),
    }
}

/// True once an SSE buffer holds an event whose first choice has text.
fn has_content(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    text.split("\n\n")
        .filter_map(|ev| ev.trim().strip_prefix("data:"))
        .any(|data| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                return false;
            };
            let c = &v["choices"][0];
            [&c["delta"]["content"], &c["text"]]
                .iter()
                .any(|t| t.as_str().is_some_and(|s| !s.is_empty()))
        })
}

/// Sums of the prefix-cache counters over all engines, and each engine's
/// finished requests.
#[derive(Debug, Clone)]
struct CacheCounters {
    queries: f64,
    hits: f64,
    finished: Vec<f64>,
}

async fn scrape_all(client: &HttpClient, urls: &[String]) -> Option<CacheCounters> {
    if urls.is_empty() {
        return None;
    }
    let mut total = CacheCounters {
        queries: 0.0,
        hits: 0.0,
        finished: Vec::new(),
    };
    for u in urls {
        let uri: Uri = u.parse().ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
            .await
            .ok()?
            .ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        total.queries += metric_sum(&text, "vllm:prefix_cache_queries");
        total.hits += metric_sum(&text, "vllm:prefix_cache_hits");
        total
            .finished
            .push(metric_sum(&text, "vllm:request_success"));
    }
    Some(total)
}

/// Sum of a counter's samples in Prometheus text (with or without `_total`).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name || metric.strip_suffix("_total") == Some(name))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Asks each engine to drop its prefix cache (`POST …/reset_prefix_cache`,
/// derived from its metrics URL), so runs start cold. Engines that do not
/// support it are left as they are.
pub async fn reset_caches(metrics_urls: &[String]) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for u in metrics_urls {
        let Some(base) = u.strip_suffix("/metrics") else {
            continue;
        };
        let Ok(req) =
            Request::post(format!("{base}/reset_prefix_cache")).body(Full::new(Bytes::new()))
        else {
            continue;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_label_sets_with_or_without_total() {
        let text = "# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{model_name=\"a\"} 10\nvllm:prefix_cache_hits_total{model_name=\"b\"} 5.5\nvllm:prefix_cache_queries_total 30\n";
        assert_eq!(metric_sum(text, "vllm:prefix_cache_hits"), 15.5);
        assert_eq!(metric_sum(text, "vllm:prefix_cache_queries"), 30.0);
        assert_eq!(metric_sum(text, "vllm:other"), 0.0);
    }

    #[test]
    fn the_first_content_chunk_is_found_and_role_only_chunks_are_not_content() {
        assert!(!has_content(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
        ));
        assert!(has_content(
            b"data: {\"choices\":[{\"delta\":{\"content\":\" hi\"}}]}\n\n"
        ));
        assert!(has_content(b"data: {\"choices\":[{\"text\":\"x\"}]}\n\n"));
        assert!(!has_content(b"data: [DONE]\n\n"));
    }
}
