//! One simulated engine's Prometheus metrics, under vLLM's names (`vllm:…`,
//! labelled `model_name`) so dashboards and scrapers built for vLLM read them.
//! prometheus-client writes metric names verbatim, so the `:` is kept.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sim::engine::EngineStats;

/// vLLM's `time_to_first_token_seconds` buckets (vllm/v1/metrics/loggers.py).
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// The metrics of one engine and the registry that exposes them.
#[derive(Debug, Clone)]
pub(super) struct EngineMetrics {
    registry: Arc<Registry>,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    queries: Counter,
    hits: Counter,
    prompt: Counter,
    generation: Counter,
    success: Counter,
    ttft: Histogram,
    stalled: Gauge,
}

/// Counts one stalled request while it lives.
#[derive(Debug)]
pub(super) struct Stalled(Gauge);

impl Drop for Stalled {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl EngineMetrics {
    /// Metrics of an engine serving `model`.
    pub(super) fn new(model: &str) -> Self {
        let mut registry = Registry::with_labels(std::iter::once((
            "model_name".into(),
            model.to_string().into(),
        )));
        let m = Self {
            registry: Arc::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            queries: Counter::default(),
            hits: Counter::default(),
            prompt: Counter::default(),
            generation: Counter::default(),
            success: Counter::default(),
            ttft: Histogram::new(TTFT_BUCKETS),
            stalled: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "vllm:num_requests_running",
            "Number of requests in model execution batches",
            m.running.clone(),
        );
        r.register(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed",
            m.waiting.clone(),
        );
        r.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage",
            m.kv_usage.clone(),
        );
        r.register(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens",
            m.queries.clone(),
        );
        r.register(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens",
            m.hits.clone(),
        );
        r.register(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed",
            m.prompt.clone(),
        );
        r.register(
            "vllm:generation_tokens",
            "Number of generation tokens processed",
            m.generation.clone(),
        );
        r.register(
            "vllm:request_success",
            "Count of successfully processed requests",
            m.success.clone(),
        );
        r.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            m.ttft.clone(),
        );
        // Not vLLM's: requests held by fault injection (--stall-rate), so
        // reliability tests can see them and see them go when clients leave.
        r.register(
            "kvmesh_sim_stalled_requests",
            "Requests held unanswered by fault injection",
            m.stalled.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Moves the gauges to `now` and the counters by `now - before`.
    pub(super) fn update(&self, before: &EngineStats, now: &EngineStats) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.running.set(gauge(now.running));
        self.waiting.set(gauge(now.waiting));
        self.kv_usage.set(now.kv_cache_usage);
        let delta = |c: &Counter, b: u64, n: u64| {
            c.inc_by(n.saturating_sub(b));
        };
        delta(
            &self.queries,
            before.prefix_cache_queries,
            now.prefix_cache_queries,
        );
        delta(&self.hits, before.prefix_cache_hits, now.prefix_cache_hits);
        delta(&self.prompt, before.prompt_tokens, now.prompt_tokens);
        delta(
            &self.generation,
            before.generation_tokens,
            now.generation_tokens,
        );
        delta(&self.success, before.finished, now.finished);
    }

    /// Records one request's time to first token (wall-clock seconds from
    /// submission, as vLLM measures it; compressed by `--speed`).
    pub(super) fn observe_ttft(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    /// Counts a stalled request until the returned guard is dropped.
    pub(super) fn stalled(&self) -> Stalled {
        self.stalled.inc();
        Stalled(self.stalled.clone())
    }

    /// The OpenMetrics text exposition.
    pub(super) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_vllm_names_and_the_model_label() {
        let m = EngineMetrics::new("sim-model");
        let s = EngineStats {
            prefix_cache_queries: 100,
            prefix_cache_hits: 48,
            finished: 2,
            ..EngineStats::default()
        };
        m.update(&EngineStats::default(), &s);
        m.update(&s, &s);
        m.observe_ttft(0.03);
        let text = m.encode().expect("encodes");
        for line in [
            r#"vllm:prefix_cache_queries_total{model_name="sim-model"} 100"#,
            r#"vllm:prefix_cache_hits_total{model_name="sim-model"} 48"#,
            r#"vllm:request_success_total{model_name="sim-model"} 2"#,
            r#"vllm:num_requests_running{model_name="sim-model"} 0"#,
            r#"vllm:time_to_first_token_seconds_bucket{model_name="sim-model",le="0.04"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
