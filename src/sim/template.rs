//! What a simulated engine reads from a request: the OpenAI request body,
//! validated like vLLM does, rendered through a chat template to the token
//! ids it will prefill.

use serde::Deserialize;
use serde_json::Value;

use super::tokenizer::tokenize;

/// A request the engine accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInput {
    /// Model name (seeds the cache's block keys, like a LoRA/model id).
    pub model: String,
    /// Prompt token ids after the chat template.
    pub tokens: Vec<u32>,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// Stream the answer as SSE.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
}

/// Which API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
}

/// A request the engine refuses with 400, with vLLM's wording where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Default `max_tokens` when a request gives none.
pub const DEFAULT_MAX_TOKENS: usize = 64;

#[derive(Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Renders one message the way the template does.
pub fn render_message(out: &mut String, role: &str, content: &str) {
    out.push_str("<|");
    out.push_str(role);
    out.push_str("|>\n");
    out.push_str(content);
    out.push_str("<|end|>\n");
}

/// What the template appends to ask the model for the next assistant turn.
pub const GENERATION_PROMPT: &str = "<|assistant|>\n";

/// Parses and renders a request body for `api`.
pub fn parse(api: Api, body: &[u8], default_model: &str) -> Result<EngineInput, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("Invalid JSON in request body: {e}")))?;
    if !v.is_object() {
        return Err(BadRequest("The request body must be a JSON object".into()));
    }
    let common: Common = serde_json::from_value(v.clone())
        .map_err(|e| BadRequest(format!("Invalid request: {e}")))?;
    let model = common.model.unwrap_or_else(|| default_model.to_string());
    let max_tokens = match common.max_completion_tokens.or(common.max_tokens) {
        None => DEFAULT_MAX_TOKENS,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(BadRequest(format!(
                "max_tokens must be at least 1, got {n}."
            )));
        }
    };
    let tokens = match api {
        Api::Chat => tokenize(&render_chat(&v)?),
        Api::Completions => completion_tokens(&v)?,
    };
    if tokens.is_empty() {
        return Err(BadRequest("The prompt is empty.".into()));
    }
    Ok(EngineInput {
        model,
        tokens,
        max_tokens,
        stream: common.stream,
        include_usage: common.stream_options.is_some_and(|o| o.include_usage),
    })
}

fn render_chat(v: &Value) -> Result<String, BadRequest> {
    let Some(messages) = v.get("messages").and_then(Value::as_array) else {
        return Err(BadRequest("'messages' is a required array".into()));
    };
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| BadRequest(format!("messages[{i}].role must be a string")))?;
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(BadRequest(format!(
                                "messages[{i}]: only text content parts are supported"
                            )));
                        }
                    }
                }
                text
            }
            Some(_) => {
                return Err(BadRequest(format!(
                    "messages[{i}].content must be a string or an array of parts"
                )));
            }
        };
        render_message(&mut out, role, &content);
    }
    if messages.is_empty() {
        return Err(BadRequest("'messages' must not be empty".into()));
    }
    out.push_str(GENERATION_PROMPT);
    Ok(out)
}

fn completion_tokens(v: &Value) -> Result<Vec<u32>, BadRequest> {
    let bad = || {
        BadRequest(
            "'prompt' must be a string, an array of strings, or an array of token ids".into(),
        )
    };
    match v.get("prompt") {
        Some(Value::String(s)) => Ok(tokenize(s)),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            // A batch: this engine serves its first prompt (one choice).
            items
                .first()
                .and_then(Value::as_str)
                .map(tokenize)
                .ok_or_else(bad)
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(bad)
            })
            .collect(),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_chat_turn_with_the_reply_extends_the_earlier_prompt_tokens() {
        let t1 = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}]}"#;
        let t2 = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"},{"role":"assistant","content":" hello friend"},{"role":"user","content":"More?"}]}"#;
        let (a, b) = (
            parse(Api::Chat, t1, "x").expect("ok"),
            parse(Api::Chat, t2, "x").expect("ok"),
        );
        let reply = tokenize(" hello friend");
        assert_eq!(&b.tokens[..a.tokens.len()], &a.tokens[..]);
        assert_eq!(
            &b.tokens[a.tokens.len()..a.tokens.len() + reply.len()],
            &reply[..]
        );
    }

    #[test]
    fn settings_are_read_with_vllm_defaults() {
        let r = parse(
            Api::Completions,
            br#"{"prompt":"abc","stream":true,"stream_options":{"include_usage":true}}"#,
            "default",
        )
        .expect("ok");
        assert_eq!(
            (r.model.as_str(), r.max_tokens, r.stream, r.include_usage),
            ("default", DEFAULT_MAX_TOKENS, true, true)
        );
        let r = parse(
            Api::Completions,
            br#"{"prompt":[1,2,3],"max_tokens":5}"#,
            "d",
        )
        .expect("ok");
        assert_eq!((r.tokens, r.max_tokens), (vec![1, 2, 3], 5));
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for (api, body, want) in [
            (Api::Chat, &b"{oops"[..], "Invalid JSON"),
            (Api::Chat, b"[]", "JSON object"),
            (Api::Chat, br#"{"messages":"x"}"#, "messages"),
            (Api::Chat, br#"{"messages":[]}"#, "must not be empty"),
            (Api::Chat, br#"{"messages":[{"content":"x"}]}"#, "role"),
            (
                Api::Chat,
                br#"{"messages":[{"role":"user","content":5}]}"#,
                "content",
            ),
            (Api::Completions, br#"{"prompt":5}"#, "'prompt'"),
            (Api::Completions, br#"{"prompt":""}"#, "empty"),
            (
                Api::Completions,
                br#"{"prompt":"x","max_tokens":0}"#,
                "at least 1",
            ),
            (
                Api::Completions,
                br#"{"prompt":"x","stream":"yes"}"#,
                "Invalid request",
            ),
        ] {
            let err = parse(api, body, "m").expect_err("refused");
            assert!(
                err.0.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
