//! Tests of the canonical prompt: shapes, stability, the prefix property.
use super::*;
use proptest::prelude::*;
use std::fmt::Write as _;

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::Completions,
    Endpoint::ChatCompletions,
    Endpoint::Responses,
    Endpoint::Messages,
];

fn prompt(endpoint: Endpoint, body: &str) -> Option<Prompt> {
    canonical_prompt(endpoint, body.as_bytes(), 1 << 24)
}

fn bytes(endpoint: Endpoint, body: &str) -> Vec<u8> {
    prompt(endpoint, body).map(|p| p.bytes).unwrap_or_default()
}

fn chat(body: &str) -> Vec<u8> {
    bytes(Endpoint::ChatCompletions, body)
}

fn completions(body: &str) -> Vec<u8> {
    bytes(Endpoint::Completions, body)
}

fn image_message(url: &str) -> String {
    let image = format!(r#"{{"type":"image_url","image_url":{{"url":"{url}"}}}}"#);
    format!(
        r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"hi"}},{image}]}}]}}"#
    )
}

#[test]
fn endpoint_paths_map_to_variants_with_stable_labels() {
    let cases = [
        ("/v1/completions", "completions"),
        ("/v1/chat/completions/", "chat_completions"),
        ("/v1/responses", "responses"),
        ("/v1/messages/", "messages"),
        ("/v1/messages//", "other"),
        ("/v1/chat/completions?x=1", "other"),
        ("/v1/models", "other"),
    ];
    for (path, label) in cases {
        assert_eq!(Endpoint::from_path(path).label(), label, "{path}");
    }
    assert_eq!(Endpoint::from_path("/v1/messages"), Endpoint::Messages);
    assert_eq!(prompt(Endpoint::Other, r#"{"prompt":"x"}"#), None);
}

#[test]
fn chat_messages_become_delimited_records_after_tools() {
    let body = r#"{"model":"m","functions":[{"name":"f"}],"tools":[{"type":"function","b":1,"a":2}],
        "messages":[{"role":"system","content":"S"},
        {"role":"user","name":"bob","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function"}]},
        {"role":"tool","tool_call_id":"c1","content":"42"}]}"#;
    let expected: &[u8] = b"\0kvC\x1e#tools\x1d[{\"a\":2,\"b\":1,\"type\":\"function\"}]\x1c\
        \x1e#functions\x1d[{\"name\":\"f\"}]\x1c\x1esystem\x1dS\x1c\x1euser\x1fname=bob\x1da\x1fb\x1c\
        \x1eassistant\x1ftool_calls=[{\"id\":\"c1\",\"type\":\"function\"}]\x1d\x1c\
        \x1etool\x1ftool_call_id=c1\x1d42\x1c";
    assert_eq!(chat(body), expected);
}

#[test]
fn later_chat_turn_extends_earlier_turn_bytes() {
    let turn1 =
        r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
    let turn2 = turn1.replace(
        "]}",
        r#",{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}"#,
    );
    let (b1, b2) = (chat(turn1), chat(&turn2));
    assert!(!b1.is_empty() && b2.starts_with(&b1) && b2.len() > b1.len());
}

#[test]
fn irrelevant_fields_key_order_whitespace_and_escapes_do_not_change_bytes() {
    let a = chat(r#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}]}"#);
    let b = chat(
        r#"{ "temperature": 0.7, "stream": true, "max_tokens": 9, "user": "u", "tools": [],
             "messages": [ { "content": [{"text": "hé", "type": "text"}], "role": "user" } ],
             "model": "other" }"#,
    );
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn model_is_carried_in_prompt_not_in_bytes() {
    let p = prompt(
        Endpoint::ChatCompletions,
        r#"{"model":"llama","messages":[{"role":"user","content":"x"}]}"#,
    );
    let p = p.expect("prompt");
    assert_eq!(p.model, "llama");
    assert!(!p.bytes.windows(5).any(|w| w == b"llama"));
    let missing = prompt(Endpoint::Completions, r#"{"prompt":"x"}"#).expect("prompt");
    assert_eq!(missing.model, "");
    assert_eq!(
        prompt(Endpoint::Completions, r#"{"model":5,"prompt":"x"}"#),
        None
    );
}

#[test]
fn images_are_hashed_so_same_image_matches_and_costs_seventeen_bytes() {
    let big = "A".repeat(5_000_000);
    let one = chat(&image_message(&big));
    assert_eq!(one, chat(&image_message(&big)));
    assert_ne!(one, chat(&image_message(&"B".repeat(5_000_000))));
    let text_only = chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(one.len(), text_only.len() + 1 + 17);
    let canonical = format!(r#"{{"image_url":{{"url":"{big}"}},"type":"image_url"}}"#);
    let hex = format!(
        "\x1a{:016x}",
        xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())
    );
    assert!(one.windows(17).any(|w| w == hex.as_bytes()));
}

#[test]
fn hashed_parts_ignore_key_order_and_cache_control() {
    let moved = r#"{"messages":[{"role":"user","content":[{"text":"hi","type":"text"},
        {"image_url":{"url":"u"},"cache_control":{"type":"ephemeral"},"type":"image_url"}]}]}"#;
    assert_eq!(chat(&image_message("u")), chat(moved));
}

#[test]
fn completions_prompt_shapes_give_tagged_bytes() {
    let cases: [(&str, &[u8]); 6] = [
        (r#"{"prompt":"abc","temperature":1}"#, b"\0kvTabc"),
        (r#"{"prompt":["abc"]}"#, b"\0kvTabc"),
        (r#"{"prompt":["a","b"]}"#, b"\0kvTa\x1eb"),
        (r#"{"prompt":[1,258]}"#, b"\0kvK\x01\0\0\0\x02\x01\0\0"),
        (r#"{"prompt":[[1,258]]}"#, b"\0kvK\x01\0\0\0\x02\x01\0\0"),
        (
            r#"{"prompt":[[1],[2]]}"#,
            b"\0kvK\x01\0\0\0\xff\xff\xff\xff\x02\0\0\0",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(completions(body), expected, "{body}");
    }
    let short = completions(r#"{"prompt":"abc"}"#);
    assert!(completions(r#"{"prompt":"abcdef"}"#).starts_with(&short));
    let tokens = completions(r#"{"prompt":[1,2]}"#);
    assert!(completions(r#"{"prompt":[1,2,3]}"#).starts_with(&tokens));
}

#[test]
fn text_token_and_chat_prompts_never_collide() {
    let tags = [
        completions(r#"{"prompt":"\u0001\u0000\u0000\u0000"}"#),
        completions(r#"{"prompt":[1]}"#),
        chat(r#"{"messages":[{"role":"user","content":"x"}]}"#),
        bytes(Endpoint::Responses, r#"{"input":"x"}"#),
        bytes(
            Endpoint::Messages,
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
        ),
    ]
    .map(|b| b[..4].to_vec());
    for (i, tag) in tags.iter().enumerate() {
        assert!(tags[i + 1..].iter().all(|other| other != tag), "{i}");
    }
}

#[test]
fn responses_input_string_instructions_items_and_tools() {
    let body = r#"{"model":"g","instructions":"I","tools":[{"type":"function","name":"f"}],"input":[
        {"role":"user","content":"u"},
        {"type":"message","role":"assistant","id":"msg_1","status":"completed",
         "content":[{"type":"output_text","text":"o","annotations":[]}]},
        {"type":"function_call","call_id":"c","name":"f","arguments":"{}"}]}"#;
    let expected: &[u8] = b"\0kvR\x1e#tools\x1d[{\"name\":\"f\",\"type\":\"function\"}]\x1c\
        \x1e#instructions\x1dI\x1c\x1euser\x1du\x1c\x1eassistant\x1do\x1c\
        \x1e#item\x1d{\"arguments\":\"{}\",\"call_id\":\"c\",\"name\":\"f\",\"type\":\"function_call\"}\x1c";
    assert_eq!(bytes(Endpoint::Responses, body), expected);
    let parts = r#"{"input":[{"role":"user","content":[{"type":"input_text","text":"u"}]}]}"#;
    assert_eq!(
        bytes(Endpoint::Responses, r#"{"input":"u"}"#),
        bytes(Endpoint::Responses, parts)
    );
    let image = r#"{"input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}"#;
    assert_eq!(
        bytes(Endpoint::Responses, image).len(),
        4 + 1 + 4 + 1 + 17 + 1
    );
}

#[test]
fn anthropic_messages_emit_tools_system_and_blocks() {
    let body = r#"{"model":"claude","max_tokens":10,"tools":[{"name":"t","cache_control":{"type":"ephemeral"}}],
        "system":[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}],
        "messages":[{"role":"user","content":"q"},{"role":"assistant","content":[{"type":"text","text":"a"},
        {"type":"tool_use","id":"t1","name":"t","input":{},"cache_control":{"type":"ephemeral"}}]}]}"#;
    let got = bytes(Endpoint::Messages, body);
    let head = b"\0kvA\x1e#tools\x1d[{\"name\":\"t\"}]\x1c\x1esystem\x1dS\x1c\x1euser\x1dq\x1c\x1eassistant\x1da\x1f\x1a";
    assert!(got.starts_with(head) && got.len() == head.len() + 16 + 1);
    let without_cache_control = body.replace(r#","cache_control":{"type":"ephemeral"}"#, "");
    assert_eq!(bytes(Endpoint::Messages, &without_cache_control), got);
    let system = r#"[{"type":"text","text":"S","cache_control":{"type":"ephemeral"}}]"#;
    assert_eq!(
        bytes(Endpoint::Messages, &body.replace(system, r#""S""#)),
        got
    );
}

#[test]
fn max_bytes_truncates_exactly_and_cheaply() {
    let cut = |endpoint, body: &str, cap| canonical_prompt(endpoint, body.as_bytes(), cap);
    let text = cut(Endpoint::Completions, r#"{"prompt":"abcdefghij"}"#, 7);
    assert_eq!(text.expect("prompt").bytes, b"\0kvTabc");
    let tokens = cut(Endpoint::Completions, r#"{"prompt":[1,2,3]}"#, 6);
    assert_eq!(tokens.expect("prompt").bytes, b"\0kvK\x01\0");
    let img = image_message(&"A".repeat(100_000));
    let capped = cut(Endpoint::ChatCompletions, &img, 12).expect("prompt");
    assert_eq!(capped.bytes.len(), 12);
    assert!(chat(&img).starts_with(&capped.bytes));
    assert_eq!(cut(Endpoint::Completions, r#"{"prompt":"abc"}"#, 0), None);
}

#[test]
fn bad_shapes_non_json_and_empty_prompts_are_none() {
    let chat_cases = [
        r#"{"messages":"x"}"#,
        r#"{"messages":["x"]}"#,
        r#"{"messages":[["user","x"]]}"#,
        r#"{"messages":[{"role":1,"content":"x"}]}"#,
        r#"{"messages":[{"content":"x"}]}"#,
        r#"{"messages":[{"role":"user","content":5}]}"#,
        r#"{"messages":[{"role":"user","content":{"text":"x"}}]}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#,
        r#"{"messages":[{"role":"user","content":"x","tool_calls":{}}]}"#,
        r#"{"messages":[{"role":"user","content":"x","name":3}]}"#,
        r#"{"messages":[{"role":"user","role":"user","content":"x"}]}"#,
        r#"{"tools":{},"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"messages":[{"role":"user","content":"x"}]} trailing"#,
        r#"{"messages":[]}"#,
        "[]",
        "not json",
    ];
    let completions_cases = [
        r#"{"prompt":5}"#,
        r#"{"prompt":{}}"#,
        r#"{"prompt":null}"#,
        r#"{"prompt":["a",1]}"#,
        r#"{"prompt":[1,"a"]}"#,
        r#"{"prompt":[[1],2]}"#,
        r#"{"prompt":[-1]}"#,
        r#"{"prompt":[1.5]}"#,
        r#"{"prompt":[4294967296]}"#,
        r#"{"prompt":""}"#,
        r#"{"prompt":[]}"#,
        r#"{"prompt":[[]]}"#,
        r#"{"prompt":["",""]}"#,
        r#"{"prompt":"a","prompt":"a"}"#,
    ];
    let responses_cases = [
        r#"{"input":5}"#,
        r#"{"input":[5]}"#,
        r#"{"input":[{"content":"x"}]}"#,
        r#"{"instructions":1}"#,
    ];
    let anthropic_cases = [
        r#"{"system":5,"messages":[]}"#,
        r#"{"messages":{}}"#,
        r#"{"system":"s"}"#,
    ];
    let all = [
        (Endpoint::ChatCompletions, &chat_cases[..]),
        (Endpoint::Completions, &completions_cases),
        (Endpoint::Responses, &responses_cases),
        (Endpoint::Messages, &anthropic_cases),
    ];
    for (endpoint, bodies) in all {
        for body in bodies
            .iter()
            .chain(&["{}", "null", "{\"prompt\":\"\u{fffd}\"\u{7f}"])
        {
            assert_eq!(prompt(endpoint, body), None, "{body}");
        }
        assert_eq!(
            canonical_prompt(endpoint, b"{\"prompt\":\"\xff\"}", 99),
            None
        );
    }
}

#[test]
fn strings_without_escapes_are_borrowed_from_the_body() {
    let Obj(m) = serde_json::from_str::<Obj<Message<'_>>>(r#"{"role":"user"}"#).expect("msg");
    assert!(matches!(m.role.map(|r| r.0), Some(Cow::Borrowed("user"))));
}

/// (role, text, name, image id) of a chat message.
type Msg = (&'static str, String, Option<String>, Option<u8>);

fn msg() -> impl Strategy<Value = Msg> {
    let role = prop::sample::select(vec!["system", "user", "assistant", "tool"]);
    let text = prop_oneof![any::<String>(), "[a-z \"\\\\\n\u{e9}\u{1F600}]{0,12}"];
    let name = prop::option::of("[a-z]{1,4}");
    (role, text, name, prop::option::of(any::<u8>()))
}

/// A JSON string literal: serde_json's, or (`alt`) every UTF-16 unit as `\uXXXX`.
fn lit(s: &str, alt: bool) -> String {
    if !alt {
        return serde_json::to_string(s).expect("string");
    }
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        let _ = write!(out, "\\u{unit:04x}");
    }
    out + "\""
}

/// A JSON object: compact in the given key order, or (`alt`) spaced out in reverse order.
fn obj(pairs: Vec<(&str, String)>, alt: bool) -> String {
    let mut fields: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| {
            if alt {
                format!("\n  \"{k}\" :\t{v}")
            } else {
                format!("\"{k}\":{v}")
            }
        })
        .collect();
    if alt {
        fields.reverse();
    }
    format!("{{{}}}", fields.join(if alt { " ,\r\n" } else { "," }))
}

/// The same conversation as two different JSON texts (alt adds irrelevant fields too).
fn chat_body(msgs: &[Msg], alt: bool) -> String {
    let messages: Vec<String> = msgs
        .iter()
        .map(|(role, text, name, img)| {
            let text = lit(text, alt);
            let part = obj(
                vec![("type", lit("text", alt)), ("text", text.clone())],
                alt,
            );
            let url = |n: u8| obj(vec![("url", lit(&n.to_string(), alt))], alt);
            let image = |n| {
                obj(
                    vec![("type", lit("image_url", alt)), ("image_url", url(n))],
                    alt,
                )
            };
            let content = match *img {
                Some(n) => format!("[{part} , {}]", image(n)),
                None if alt => format!("[ {part} ]"),
                None => text,
            };
            let mut pairs = vec![("role", lit(role, alt)), ("content", content)];
            pairs.extend(name.as_ref().map(|n| ("name", lit(n, alt))));
            obj(pairs, alt)
        })
        .collect();
    let tools = match alt {
        false => r#"[{"type":"function","function":{"name":"f","strict":true}}]"#,
        true => {
            "[ {\"function\" : { \"strict\":true , \"name\": \"\\u0066\"}, \"type\":\"function\"}\n]"
        }
    };
    let mut pairs = vec![
        ("model", lit("m", alt)),
        ("tools", tools.to_string()),
        ("messages", format!("[{}]", messages.join(",\n"))),
    ];
    if alt {
        pairs.extend([("stream", "true".into()), ("temperature", "0.5".into())]);
    }
    obj(pairs, alt)
}

fn chat_of(msgs: &[Msg], alt: bool) -> Vec<u8> {
    chat(&chat_body(msgs, alt))
}

proptest! {
    #[test]
    fn key_order_whitespace_and_escaping_never_change_chat_bytes(
        msgs in prop::collection::vec(msg(), 0..6),
    ) {
        let compact = chat_of(&msgs, false);
        prop_assert!(!compact.is_empty());
        prop_assert_eq!(compact, chat_of(&msgs, true));
    }

    #[test]
    fn earlier_chat_turns_are_prefixes_of_later_turns(
        msgs in prop::collection::vec(msg(), 0..8), k in 0usize..8, alt: bool,
    ) {
        let earlier = chat_of(&msgs[..k.min(msgs.len())], alt);
        prop_assert!(chat_of(&msgs, !alt).starts_with(&earlier));
    }

    #[test]
    fn longer_completions_prompt_extends_shorter_one(a in ".{1,20}", b in ".{0,20}", cap in 0usize..64) {
        let run = |s: &str| {
            let body = serde_json::json!({"max_tokens": 3, "prompt": s}).to_string();
            canonical_prompt(Endpoint::Completions, body.as_bytes(), cap)
        };
        match (run(&a), run(&(a.clone() + &b))) {
            (Some(s), Some(l)) => prop_assert!(l.bytes.starts_with(&s.bytes) && l.bytes.len() <= cap),
            (s, l) => prop_assert!(cap == 0 && s.is_none() && l.is_none()),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300), cap in 0usize..64) {
        for endpoint in ENDPOINTS {
            let got = canonical_prompt(endpoint, &body, cap);
            prop_assert!(got.is_none_or(|p| p.bytes.len() <= cap));
        }
    }

    #[test]
    fn json_like_garbage_and_cut_bodies_never_panic(s in r#"[\[\]{}",:0-9a-z \\]{0,80}"#, cut: usize) {
        let valid = chat_body(&[("user", s.clone(), None, Some(1))], true);
        let cut_body = valid.as_bytes()[..cut % valid.len()].to_vec();
        let wrapped = ["messages", "prompt", "input", "system"].map(|k| format!(r#"{{"{k}":{s}}}"#));
        for body in wrapped.iter().map(|w| w.as_bytes().to_vec()).chain([cut_body]) {
            for endpoint in ENDPOINTS {
                let _ = canonical_prompt(endpoint, &body, 64);
            }
        }
    }
}
