//! The answer to one completion request: its OpenAI JSON shapes, and the
//! server-sent-events body that streams it one token per event as the
//! engine emits them.

use std::ops::Range;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::proxy::body::{BoxError, ProxyBody, boxed};
use crate::sim::engine::Event;
use crate::sim::template::Api;
use crate::sim::tokenizer::for_each_token_range;

/// Splits `text` into the pieces `tokenizer::tokenize` makes tokens of
/// (same rules: an optional leading space plus up to 4 word bytes, or one
/// other byte), so that a stream can send one token's text per event. A
/// piece boundary that would cut a UTF-8 character is moved past it, so the
/// pieces always concatenate back to `text` (for ASCII text, such as the
/// engine's replies, the pieces are exactly the tokens).
pub fn token_pieces(text: &str) -> Vec<&str> {
    piece_bounds(text)
        .into_iter()
        .filter_map(|r| text.get(r))
        .collect()
}

/// Byte ranges of [`token_pieces`].
fn piece_bounds(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    let mut start = 0;
    for_each_token_range(text.as_bytes(), |r| {
        if text.is_char_boundary(r.end) {
            out.push(start..r.end);
            start = r.end;
        }
    });
    if start < text.len() {
        out.push(start..text.len());
    }
    out
}

/// What every chunk and answer of one request repeats.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub api: Api,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
}

impl Meta {
    /// OpenAI's `usage`, with vLLM's `prompt_tokens_details.cached_tokens`.
    pub(super) fn usage(&self, cached_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.max_tokens,
            "total_tokens": self.prompt_tokens + self.max_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        })
    }

    /// The whole (non-streamed) answer.
    pub(super) fn answer(&self, reply: &str, cached_tokens: usize) -> Value {
        let (object, choice) = match self.api {
            Api::Chat => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "tool_calls": []},
                    "logprobs": null,
                    "finish_reason": "length",
                    "stop_reason": null,
                }),
            ),
            Api::Completions => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": reply,
                    "logprobs": null,
                    "finish_reason": "length",
                    "stop_reason": null,
                }),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(cached_tokens),
        })
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        }
    }

    /// The event carrying token `n` (from 1), whose text is `piece`.
    fn token_chunk(&self, n: usize, piece: &str) -> Value {
        let finish = if n >= self.max_tokens {
            json!("length")
        } else {
            Value::Null
        };
        let choice = match self.api {
            Api::Chat if n == 1 => json!({
                "index": 0,
                "delta": {"role": "assistant", "content": piece},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Api::Chat => json!({
                "index": 0,
                "delta": {"content": piece},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Api::Completions => json!({
                "index": 0,
                "text": piece,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": self.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

/// How a stream ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ending {
    /// Send a last chunk with `usage` and no choices.
    pub include_usage: bool,
    /// Fault injection: fail the body right after the first token.
    pub close_after_first: bool,
}

struct State {
    meta: Meta,
    ending: Ending,
    reply: String,
    /// Byte ranges of the reply's tokens.
    pieces: Vec<Range<usize>>,
    events: mpsc::UnboundedReceiver<Event>,
    cached_tokens: usize,
    abort: bool,
    done: bool,
}

impl State {
    fn token(&self, n: usize) -> Bytes {
        let piece = n
            .checked_sub(1)
            .and_then(|i| self.pieces.get(i))
            .and_then(|r| self.reply.get(r.clone()))
            .unwrap_or("");
        sse(&self.meta.token_chunk(n, piece))
    }

    fn tail(&self) -> Bytes {
        let mut out = Vec::new();
        if self.ending.include_usage {
            let usage = json!({
                "id": self.meta.id,
                "object": self.meta.chunk_object(),
                "created": self.meta.created,
                "model": self.meta.model,
                "choices": [],
                "usage": self.meta.usage(self.cached_tokens),
            });
            out.extend_from_slice(&sse(&usage));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The SSE body of a streamed request whose engine events come on `events`.
/// It fails (hyper then aborts the connection) if the engine stops before
/// the request finishes, or after the first token when told to close.
pub(super) fn body(
    meta: Meta,
    ending: Ending,
    reply: String,
    events: mpsc::UnboundedReceiver<Event>,
) -> ProxyBody {
    let pieces = piece_bounds(&reply);
    let state = State {
        meta,
        ending,
        reply,
        pieces,
        events,
        cached_tokens: 0,
        abort: false,
        done: false,
    };
    let frames = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let event = s.events.recv().await;
        if s.abort {
            // Not at once: returning Pending first lets hyper flush the
            // first token to the client before the connection is cut.
            tokio::task::yield_now().await;
            s.done = true;
            let e: BoxError = "stream closed by fault injection (--close-rate)".into();
            return Some((Err(e), s));
        }
        let frame = match event {
            None => {
                s.done = true;
                return Some((Err(BoxError::from("the engine stopped mid-request")), s));
            }
            Some(Event::FirstToken { cached_tokens, .. }) => {
                s.cached_tokens = cached_tokens;
                s.abort = s.ending.close_after_first;
                s.token(1)
            }
            Some(Event::Token { n, .. }) => s.token(n),
            Some(Event::Finished { .. }) => {
                s.done = true;
                s.tail()
            }
        };
        Some((Ok(Frame::data(frame)), s))
    });
    boxed(StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokenizer::{count_tokens, text_of_tokens, tokenize};

    #[test]
    fn pieces_are_the_tokens_and_join_back_to_the_text() {
        for text in [
            text_of_tokens(5, 200),
            "Hello world, extraordinary!\n".to_string(),
        ] {
            let pieces = token_pieces(&text);
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len(), count_tokens(&text));
            let ids: Vec<u32> = pieces.iter().flat_map(|p| tokenize(p)).collect();
            assert_eq!(ids, tokenize(&text));
        }
        assert_eq!(
            token_pieces(" héllo").concat(),
            " héllo",
            "never cuts a character"
        );
    }
}
