//! The response body relayed to the client: streams the backend's frames
//! untouched and owns the attempt's accounting (first byte, in flight).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use super::feedback::CachedTokens;
use super::metrics::Metrics;
use super::state::Shared;
use crate::routing::{Decision, PromptBlocks};

/// The body type the proxy answers with: relayed streams and its own errors.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Errors inside the body stack are boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Boxes any body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// One attempt on one replica. Dropping it ends the attempt: in-flight and
/// queued-prefill counts return, whether the stream ended, failed or the
/// client went away.
#[derive(Debug)]
pub struct InFlight {
    shared: Arc<Shared>,
    decision: Decision,
    replica: String,
    sent_at: tokio::time::Instant,
    first_byte: bool,
}

impl InFlight {
    /// Starts tracking a decision that `route` already counted.
    pub fn new(shared: Arc<Shared>, decision: Decision, replica: String) -> Self {
        Self {
            shared,
            decision,
            replica,
            sent_at: tokio::time::Instant::now(),
            first_byte: false,
        }
    }

    /// The decision being tracked.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The engine reported how much of the prompt it had cached: correct the
    /// index if it predicted far more, and count the misprediction.
    fn feedback(&self, prompt: &PromptBlocks, cached_tokens: u64) {
        let wrong =
            self.shared
                .core()
                .router
                .engine_feedback(&self.decision, prompt, cached_tokens);
        if wrong {
            self.shared
                .metrics
                .mispredictions
                .get_or_create(&Metrics::replica(&self.replica))
                .inc();
            tracing::debug!(replica = %self.replica, predicted_blocks = self.decision.matched_blocks, cached_tokens, "prefix misprediction corrected");
        }
    }

    /// Marks the first response body byte: the prefill is done.
    fn on_first_byte(&mut self) {
        if std::mem::replace(&mut self.first_byte, true) {
            return;
        }
        self.shared
            .metrics
            .upstream_ttfb
            .get_or_create(&Metrics::replica(&self.replica))
            .observe(self.sent_at.elapsed().as_secs_f64());
        self.shared.core().router.first_byte(&mut self.decision);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.core().router.finish(&mut self.decision);
    }
}

/// The backend's response body plus its attempt guard.
#[derive(Debug)]
pub struct Relay {
    inner: Incoming,
    guard: Option<InFlight>,
    /// Watches for the engine's `cached_tokens` when the router predicted a hit.
    feedback: Option<(CachedTokens, Arc<PromptBlocks>)>,
}

impl Relay {
    /// Relays `inner`; the attempt ends when it ends or is dropped. With
    /// `prompt`, the engine's reported `cached_tokens` corrects the index.
    pub fn new(inner: Incoming, guard: InFlight, prompt: Option<Arc<PromptBlocks>>) -> Self {
        let feedback = prompt
            .filter(|_| guard.decision().matched_blocks >= 4)
            .map(|p| (CachedTokens::default(), p));
        Self {
            inner,
            guard: Some(guard),
            feedback,
        }
    }

    /// The stream is over: report feedback, then end the attempt.
    fn end(&mut self) {
        if let (Some(g), Some((scan, prompt))) = (self.guard.as_ref(), self.feedback.take())
            && let Some(cached) = scan.found()
        {
            g.feedback(&prompt, cached);
        }
        self.guard = None;
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(g) = this.guard.as_mut() {
                        g.on_first_byte();
                    }
                    if let Some((scan, _)) = this.feedback.as_mut() {
                        scan.feed(data);
                    }
                }
                // The last frame ends the attempt now, not when the server
                // gets round to dropping the body: the client may already be
                // sending its next turn.
                if this.inner.is_end_stream() {
                    this.end();
                }
            }
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Err(_))) => {
                this.feedback = None;
                this.guard = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
