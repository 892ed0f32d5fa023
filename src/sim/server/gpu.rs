//! The "GPU" of one simulated engine: a task that owns the [`Engine`], runs
//! its steps in (compressed) real time and hands each request its events.
//! The engine's state lives in this task only; requests reach it through a
//! channel, and its stats leave through a `watch`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::metrics::EngineMetrics;
use crate::sim::engine::{Engine, EngineConfig, EngineStats, Event, SeqRequest};

/// Requests queued for the engine task at most; past it, submitting waits.
const QUEUE: usize = 1024;

/// Longest wall-clock time of one step.
const MAX_STEP: Duration = Duration::from_secs(3600);

/// How far behind its schedule the engine may run and still catch up.
const MAX_LAG: Duration = Duration::from_millis(20);

/// What a request handler asks of the engine task.
enum Command {
    /// Queue a request; its events go to `events` until it finishes or the
    /// receiver is dropped.
    Submit {
        req: SeqRequest,
        events: mpsc::UnboundedSender<Event>,
    },
    /// Drop every unused cached block.
    ResetCache(oneshot::Sender<()>),
}

/// The engine task is gone (shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the engine has stopped")]
pub(super) struct Stopped;

/// A handle on one engine task.
#[derive(Debug, Clone)]
pub(super) struct Gpu {
    tx: mpsc::Sender<Command>,
    stats: watch::Receiver<EngineStats>,
    next_id: Arc<AtomicU64>,
    cfg: Arc<EngineConfig>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Submit { req, .. } => f.debug_struct("Submit").field("id", &req.id).finish(),
            Command::ResetCache(_) => f.write_str("ResetCache"),
        }
    }
}

impl Gpu {
    /// Starts the engine task; it runs until `stop` turns true (or its
    /// sender is dropped).
    pub(super) fn start(
        cfg: EngineConfig,
        speed: f64,
        metrics: EngineMetrics,
        stop: watch::Receiver<bool>,
    ) -> (Gpu, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stats_tx, stats) = watch::channel(EngineStats::default());
        let engine = Engine::new(cfg.clone());
        let task = tokio::spawn(run(engine, speed, rx, stats_tx, metrics, stop));
        let gpu = Gpu {
            tx,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
            cfg: Arc::new(cfg),
        };
        (gpu, task)
    }

    /// A fresh request id.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The engine's settings.
    pub(super) fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Stats after the latest step.
    pub(super) fn stats(&self) -> EngineStats {
        self.stats.borrow().clone()
    }

    /// A receiver of the stats after each step.
    pub(super) fn watch_stats(&self) -> watch::Receiver<EngineStats> {
        self.stats.clone()
    }

    /// Queues `req`. Its events arrive on `events`; the sender is dropped
    /// without a `Finished` event if the engine refuses the request or stops.
    pub(super) async fn submit(
        &self,
        req: SeqRequest,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<(), Stopped> {
        self.tx
            .send(Command::Submit { req, events })
            .await
            .map_err(|_| Stopped)
    }

    /// Drops every unused cached block; returns once done.
    pub(super) async fn reset_cache(&self) -> Result<(), Stopped> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::ResetCache(done))
            .await
            .map_err(|_| Stopped)?;
        wait.await.map_err(|_| Stopped)
    }
}

/// A request in the engine whose events someone still waits for.
struct Live {
    events: mpsc::UnboundedSender<Event>,
    submitted: Instant,
}

/// The engine loop: plan a step, sleep its duration (compressed by
/// `speed`), complete it and deliver its events; take requests meanwhile
/// (they join the next step, as in vLLM).
async fn run(
    mut engine: Engine,
    speed: f64,
    mut rx: mpsc::Receiver<Command>,
    stats: watch::Sender<EngineStats>,
    metrics: EngineMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut step: Option<Pin<Box<Sleep>>> = None;
    // When the last step ended, on the schedule. Steps are timed from it
    // rather than from "now" because tokio's timer ticks in milliseconds:
    // at high speeds, steps shorter than a tick then catch up in bursts and
    // the engine keeps its rate instead of running a step per tick.
    let mut clock = start;
    let mut shown = EngineStats::default();
    loop {
        if step.is_none()
            && let Some(d) = engine.plan()
        {
            let now = Instant::now();
            let begin = clock.max(now.checked_sub(MAX_LAG).unwrap_or(now));
            // Absurdly slow speeds are capped at an hour a step, which keeps
            // `begin + wall` representable.
            let wall = Duration::try_from_secs_f64(d / speed).map_or(MAX_STEP, |w| w.min(MAX_STEP));
            let end = begin.checked_add(wall).unwrap_or(begin);
            clock = end;
            step = Some(Box::pin(tokio::time::sleep_until(end)));
            publish(&engine, &stats, &metrics, &mut shown);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Submit { req, events }) => {
                    let id = req.id;
                    if engine.submit(req, start.elapsed().as_secs_f64()) {
                        live.insert(id, Live { events, submitted: Instant::now() });
                    }
                    // Refused: `events` is dropped here, which the handler sees.
                    publish(&engine, &stats, &metrics, &mut shown);
                }
                Some(Command::ResetCache(done)) => {
                    engine.reset_cache();
                    publish(&engine, &stats, &metrics, &mut shown);
                    let _ = done.send(());
                }
            },
            () = step_done(&mut step) => {
                step = None;
                for ev in engine.complete() {
                    deliver(&mut live, &metrics, ev);
                }
                publish(&engine, &stats, &metrics, &mut shown);
            }
        }
    }
    tracing::debug!(abandoned = live.len(), "engine task stopped");
}

/// Resolves when the planned step's time is up; never without a step.
async fn step_done(step: &mut Option<Pin<Box<Sleep>>>) {
    match step {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Hands one event to its request; forgets requests that finished or whose
/// client left (the engine still completes them: there is no abort).
fn deliver(live: &mut HashMap<u64, Live>, metrics: &EngineMetrics, ev: Event) {
    let (id, last) = match ev {
        Event::FirstToken { id, .. } | Event::Token { id, .. } => (id, false),
        Event::Finished { id } => (id, true),
    };
    let Some(l) = live.get(&id) else {
        return;
    };
    if matches!(ev, Event::FirstToken { .. }) {
        metrics.observe_ttft(l.submitted.elapsed().as_secs_f64());
    }
    let gone = l.events.send(ev).is_err();
    if last || gone {
        live.remove(&id);
    }
}

/// Shares the engine's stats with the handle and the metrics.
fn publish(
    engine: &Engine,
    stats: &watch::Sender<EngineStats>,
    metrics: &EngineMetrics,
    shown: &mut EngineStats,
) {
    let now = engine.stats();
    metrics.update(shown, &now);
    *shown = now.clone();
    stats.send_replace(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::engine::prepare;

    #[tokio::test(start_paused = true)]
    async fn a_request_runs_to_completion_in_compressed_time() {
        let (stop_tx, stop) = watch::channel(false);
        let (gpu, task) = Gpu::start(EngineConfig::default(), 10.0, EngineMetrics::new("m"), stop);
        let prompt: Vec<u32> = (0..100).collect();
        let (req, _) = prepare(gpu.next_id(), "m", &prompt, 3, 16);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        gpu.submit(req, tx).await.expect("running");
        let mut events = Vec::new();
        while let Some(ev) = rx.recv().await {
            events.push(ev);
        }
        assert!(matches!(
            events[0],
            Event::FirstToken {
                prompt_tokens: 100,
                ..
            }
        ));
        assert!(matches!(events.last(), Some(Event::Finished { .. })));
        assert_eq!(events.len(), 4, "{events:?}");
        // Three steps of >= 8 ms of model time each, at 10x.
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_micros(2400) && took < Duration::from_millis(10),
            "{took:?}"
        );
        assert_eq!(gpu.stats().finished, 1);
        let _ = stop_tx.send(true);
        task.await.expect("task ends");
        assert!(
            gpu.submit(
                prepare(9, "m", &prompt, 1, 16).0,
                mpsc::unbounded_channel().0
            )
            .await
            .is_err()
        );
    }
}
