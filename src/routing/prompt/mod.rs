//! Canonical prompt: owns request path → [`Endpoint`] and request body → [`Prompt`], the stable, prefix-preserving bytes an engine will prefill.
//!
//! Format: a 4-byte kind tag `00 'k' 'v' K` (`K`: `C` chat, `R` responses, `A` Anthropic
//! messages, `T` completions text, `K` completions token ids), then records
//! `RS header {US attr} GS body FS` (RS=1E, US=1F, GS=1D, FS=1C). Text is unescaped UTF-8,
//! copied as is; the model is never in the bytes.
//! * message record: header = role; attrs when present, in order: `name=`text,
//!   `tool_call_id=`text, `tool_calls=`json, `function_call=`json; body = content: a string as
//!   is, null/absent as nothing, or parts joined by US. A `text`/`input_text`/`output_text` part
//!   is its text (so `"x"` ≡ `[{"type":"text","text":"x"}]`); any other part is SUB (1A) + 16
//!   lowercase hex digits of xxh3_64 of its canonical JSON.
//! * canonical JSON: compact, keys sorted bytewise, scalars re-serialised by serde_json; a
//!   top-level `cache_control` key is dropped from each tool and each hashed part.
//! * chat: `#tools` then `#functions` records (body json; absent, null or `[]` emit nothing),
//!   then a message record per message. Anthropic: `#tools`, `system` as a message record with
//!   role `system`, then messages. Responses: `#tools`, `instructions` as a message record with
//!   role `#instructions`, then `input`: a string is a `user` message record; an array item
//!   with no `type` or `type:"message"` is a message record, any other is `RS #item GS json FS`.
//! * completions: `T` + batch strings joined by RS, or `K` + u32 LE token ids, batch arrays
//!   joined by `FF FF FF FF`; no terminator, so a longer prompt extends a shorter one.
//!
//! Bytes stop at `max_bytes`. Nothing depends on the message count, so an earlier chat turn's
//! bytes are a prefix of a later turn's. None when nothing but tags and separators would be
//! emitted (e.g. no messages, `""`, `[]`). A `null` model is the empty model.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3Default;

/// Which OpenAI-/Anthropic-style endpoint a request path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
    Responses,
    Messages,
    Other,
}

impl Endpoint {
    /// `/v1/completions`, `/v1/chat/completions`, `/v1/responses`, `/v1/messages` (exact path, query string already stripped; tolerate one trailing slash) → variant; anything else → Other.
    pub fn from_path(path: &str) -> Endpoint {
        match path.strip_suffix('/').unwrap_or(path) {
            "/v1/completions" => Endpoint::Completions,
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            "/v1/responses" => Endpoint::Responses,
            "/v1/messages" => Endpoint::Messages,
            _ => Endpoint::Other,
        }
    }

    /// Stable lowercase label for metrics: "completions", "chat_completions", "responses", "messages", "other".
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::Other => "other",
        }
    }
}

/// What the engine will prefill, as bytes, plus the model name that seeds the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub model: String,
    pub bytes: Vec<u8>,
}

/// Canonical prompt of a request body, or None when the endpoint is Other, the body is not JSON, or the JSON has unexpected types/shapes (then the router routes by load alone). `max_bytes` caps `bytes` (stop building once reached; truncate to exactly max_bytes).
pub fn canonical_prompt(endpoint: Endpoint, body: &[u8], max_bytes: usize) -> Option<Prompt> {
    let tag = match endpoint {
        Endpoint::ChatCompletions => b"\0kvC",
        Endpoint::Responses => b"\0kvR",
        Endpoint::Messages => b"\0kvA",
        Endpoint::Completions => b"\0kvT",
        Endpoint::Other => return None,
    };
    // One UTF-8 check of the whole body is cheaper than serde_json's per-string checks.
    let text = std::str::from_utf8(body).ok()?;
    let Obj(mut b) = serde_json::from_str::<Obj<Body<'_>>>(text).ok()?;
    let mut out = Out::new(tag, max_bytes, body.len());
    match endpoint {
        Endpoint::Completions => completions(&mut out, b.prompt?)?,
        Endpoint::ChatCompletions => {
            json_record(&mut out, b"#tools", b.tools)?;
            json_record(&mut out, b"#functions", b.functions)?;
            b.messages?
                .iter()
                .try_for_each(|Obj(m)| message_record(&mut out, m))?;
        }
        Endpoint::Messages => {
            json_record(&mut out, b"#tools", b.tools)?;
            if let Some(system) = b.system.take() {
                message_record(&mut out, &Message::synthetic("system", system))?;
            }
            b.messages?
                .iter()
                .try_for_each(|Obj(m)| message_record(&mut out, m))?;
        }
        _ => responses(&mut out, &mut b)?,
    }
    (out.any && !out.buf.is_empty()).then(|| Prompt {
        model: b.model.map(|m| m.0.into_owned()).unwrap_or_default(),
        bytes: out.buf,
    })
}

const RS: u8 = 0x1E;
const GS: u8 = 0x1D;
const FS: u8 = 0x1C;
const US: u8 = 0x1F;
const SUB: u8 = 0x1A;
const TOKEN_SEP: [u8; 4] = [0xFF; 4];

/// A JSON string, borrowed from the body unless it had escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Deserialises `T` from a JSON object only (derived structs would also accept arrays).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjVisitor(PhantomData)).map(Obj)
    }
}

/// The fields any endpoint reads, in one struct for all four (so a field only another endpoint
/// reads is still type-checked); unknown fields are skipped.
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Body<'a> {
    model: Option<Text<'a>>,
    messages: Option<Vec<Obj<Message<'a>>>>,
    tools: Option<&'a RawValue>,
    functions: Option<&'a RawValue>,
    system: Option<Content<'a>>,
    instructions: Option<Content<'a>>,
    input: Option<Content<'a>>,
    prompt: Option<&'a RawValue>,
}

/// A chat/Anthropic message or a Responses input item.
#[derive(Deserialize, Default)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: Option<Text<'a>>,
    role: Option<Text<'a>>,
    name: Option<Text<'a>>,
    tool_call_id: Option<Text<'a>>,
    content: Option<Content<'a>>,
    tool_calls: Option<&'a RawValue>,
    function_call: Option<&'a RawValue>,
}

impl<'a> Message<'a> {
    fn synthetic(role: &'static str, content: Content<'a>) -> Message<'a> {
        let role = Some(Text(Cow::Borrowed(role)));
        Message {
            role,
            content: Some(content),
            ..Message::default()
        }
    }
}

/// A string, or an array kept as raw elements (content parts, Responses input items); parsed
/// in the body's single pass. `null` is the enclosing `Option`'s `None`.
enum Content<'a> {
    Text(Cow<'a, str>),
    Array(Vec<&'a RawValue>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContentVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Content<'a>, E> {
                Ok(Content::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'a>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Content::Array(items))
            }
        }
        d.deserialize_any(ContentVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Part<'a> {
    #[serde(rename = "type")]
    kind: Text<'a>,
    text: Option<Text<'a>>,
}

/// Output that never grows past `cap`; `any` = some text, token, JSON or hash was produced
/// (even if cut off), as opposed to only tags and separators.
struct Out {
    buf: Vec<u8>,
    cap: usize,
    any: bool,
}

impl Out {
    fn new(tag: &[u8], cap: usize, body_len: usize) -> Out {
        let buf = Vec::with_capacity(cap.min(body_len.saturating_add(64)));
        let mut out = Out {
            buf,
            cap,
            any: false,
        };
        out.sep(tag);
        out
    }

    fn full(&self) -> bool {
        self.buf.len() >= self.cap
    }

    fn sep(&mut self, bytes: &[u8]) {
        let n = self.cap.saturating_sub(self.buf.len()).min(bytes.len());
        self.buf.extend_from_slice(&bytes[..n]);
    }

    fn text(&mut self, s: &str) {
        self.any |= !s.is_empty();
        self.sep(s.as_bytes());
    }

    /// Canonical JSON of `raw`; the JSON work is skipped once full.
    fn json(&mut self, raw: &RawValue, strip: Option<u32>) -> Option<()> {
        self.any = true;
        if self.full() {
            return Some(());
        }
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        match write_json(self, &value, strip) {
            Err(_) if !self.full() => None,
            _ => Some(()),
        }
    }

    /// SUB + 16 hex digits of xxh3_64 of the canonical JSON of `raw`.
    fn hashed(&mut self, raw: &RawValue) -> Option<()> {
        self.any = true;
        if self.full() {
            return Some(());
        }
        let value: Value = serde_json::from_str(raw.get()).ok()?;
        let mut hasher = HashWriter(Xxh3Default::new());
        write_json(&mut hasher, &value, Some(0)).ok()?;
        let digest = hasher.0.digest();
        let mut marker = [SUB; 17];
        for (i, slot) in marker[1..].iter_mut().enumerate() {
            *slot = b"0123456789abcdef"[((digest >> (60 - 4 * i)) & 0xF) as usize];
        }
        self.sep(&marker);
        Some(())
    }
}

impl Write for Out {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.cap.saturating_sub(self.buf.len()).min(bytes.len());
        if n == 0 && !bytes.is_empty() {
            return Err(io::Error::other("max_bytes reached"));
        }
        self.buf.extend_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct HashWriter(Xxh3Default);

impl Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compact JSON with sorted keys (whether or not serde_json's `preserve_order` is on).
/// `strip` = depth at which objects lose their `cache_control` key (0 = this value).
fn write_json<W: Write>(w: &mut W, value: &Value, strip: Option<u32>) -> io::Result<()> {
    let inner = strip.and_then(|d| d.checked_sub(1));
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map
                .iter()
                .filter(|(k, _)| strip != Some(0) || k.as_str() != "cache_control")
                .collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            w.write_all(b"{")?;
            for (i, (key, item)) in entries.into_iter().enumerate() {
                w.write_all(if i > 0 { b"," } else { b"" })?;
                serde_json::to_writer(&mut *w, key)?;
                w.write_all(b":")?;
                write_json(w, item, inner)?;
            }
            w.write_all(b"}")
        }
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                w.write_all(if i > 0 { b"," } else { b"" })?;
                write_json(w, item, inner)?;
            }
            w.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(&mut *w, scalar)?),
    }
}

fn first_byte(raw: &RawValue) -> Option<u8> {
    raw.get().trim_start().bytes().next()
}

/// First byte of the first element of a JSON array (`]` if empty); None if not an array.
fn first_in_array(raw: &RawValue) -> Option<u8> {
    let rest = raw.get().trim_start().strip_prefix('[')?;
    rest.trim_start().bytes().next()
}

/// `RS label GS json FS` for a `tools`-like array; absent, null and `[]` emit nothing.
fn json_record(out: &mut Out, label: &[u8], raw: Option<&RawValue>) -> Option<()> {
    if let Some(raw) = raw.filter(|r| first_in_array(r) != Some(b']')) {
        first_in_array(raw)?;
        out.sep(&[RS]);
        out.sep(label);
        out.sep(&[GS]);
        out.json(raw, Some(1))?;
        out.sep(&[FS]);
    }
    Some(())
}

fn message_record(out: &mut Out, m: &Message<'_>) -> Option<()> {
    out.sep(&[RS]);
    out.text(&m.role.as_ref()?.0);
    for (label, value) in [
        (&b"name="[..], &m.name),
        (b"tool_call_id=", &m.tool_call_id),
    ] {
        if let Some(value) = value {
            out.sep(&[US]);
            out.sep(label);
            out.text(&value.0);
        }
    }
    if let Some(calls) = m.tool_calls.filter(|r| first_in_array(r) != Some(b']')) {
        first_in_array(calls)?;
        out.sep(&[US]);
        out.sep(b"tool_calls=");
        out.json(calls, None)?;
    }
    if let Some(call) = m.function_call {
        (first_byte(call) == Some(b'{')).then_some(())?;
        out.sep(&[US]);
        out.sep(b"function_call=");
        out.json(call, None)?;
    }
    out.sep(&[GS]);
    match &m.content {
        None => {}
        Some(Content::Text(text)) => out.text(text),
        Some(Content::Array(parts)) => {
            for (i, raw) in parts.iter().enumerate() {
                out.sep(if i > 0 { &[US] } else { &[] });
                let Obj(part) = serde_json::from_str::<Obj<Part<'_>>>(raw.get()).ok()?;
                if matches!(&*part.kind.0, "text" | "input_text" | "output_text") {
                    out.text(&part.text?.0);
                } else {
                    out.hashed(raw)?;
                }
            }
        }
    }
    out.sep(&[FS]);
    Some(())
}

fn responses(out: &mut Out, b: &mut Body<'_>) -> Option<()> {
    json_record(out, b"#tools", b.tools)?;
    if let Some(instructions) = b.instructions.take() {
        message_record(out, &Message::synthetic("#instructions", instructions))?;
    }
    let items = match b.input.take() {
        None => return Some(()),
        Some(Content::Array(items)) => items,
        Some(text) => return message_record(out, &Message::synthetic("user", text)),
    };
    for raw in items {
        let Obj(item) = serde_json::from_str::<Obj<Message<'_>>>(raw.get()).ok()?;
        if item.kind.as_ref().is_none_or(|k| k.0 == "message") {
            message_record(out, &item)?;
        } else {
            out.sep(&[RS]);
            out.sep(b"#item");
            out.sep(&[GS]);
            out.json(raw, None)?;
            out.sep(&[FS]);
        }
    }
    Some(())
}

fn completions(out: &mut Out, prompt: &RawValue) -> Option<()> {
    let (raw, first, inner) = (prompt.get(), first_byte(prompt)?, first_in_array(prompt));
    if first == b'"' || inner == Some(b'"') {
        let texts: Vec<Text<'_>> = match first {
            b'"' => vec![serde_json::from_str(raw).ok()?],
            _ => serde_json::from_str(raw).ok()?,
        };
        for (i, text) in texts.iter().enumerate() {
            out.sep(if i > 0 { &[RS] } else { &[] });
            out.text(&text.0);
        }
        return Some(());
    }
    let batch: Vec<Vec<u32>> = match inner? {
        b']' => return None,
        b'[' => serde_json::from_str(raw).ok()?,
        _ => vec![serde_json::from_str(raw).ok()?],
    };
    out.buf.clear(); // only the tag was written: retag as token ids
    out.sep(b"\0kvK");
    for (i, ids) in batch.iter().enumerate() {
        out.sep(if i > 0 { &TOKEN_SEP } else { &[] });
        out.any |= !ids.is_empty();
        for id in ids {
            if out.full() {
                break;
            }
            out.sep(&id.to_le_bytes());
        }
    }
    Some(())
}

#[cfg(test)]
mod tests;
