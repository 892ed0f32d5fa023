//! Seeded, reproducible workloads: chat sessions under one system prompt,
//! SGLang's generated shared prefix, RAG over a Zipf-popular document pool,
//! and replayed Mooncake traces. Each request is built once, with the body a
//! client sends and the block keys a simulated engine will see.

use std::path::PathBuf;

use bytes::Bytes;

use super::engine::{SeqRequest, prepare};
use super::template::{Api, parse};
use super::tokenizer::{splitmix, text_of_tokens};

/// The model name every workload request carries.
pub const MODEL: &str = "sim-llama-3.1-8b";

/// Engine block size the keys are computed for (vLLM's 16).
pub const ENGINE_BLOCK_TOKENS: usize = 16;

/// When a request is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// At this many seconds from the start.
    At(f64),
    /// This many seconds after the previous turn of its session finished.
    AfterPrevious(f64),
}

/// One request of a workload.
#[derive(Debug, Clone)]
pub struct Request {
    /// Position in the workload.
    pub id: usize,
    /// Session (conversation) it belongs to, and its turn in it.
    pub session: usize,
    pub turn: usize,
    pub arrival: Arrival,
    /// The `/v1/chat/completions` JSON body.
    pub body: Bytes,
    /// Prompt tokens after the chat template.
    pub prompt_tokens: usize,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// What a simulated engine schedules (block keys of prompt + reply).
    pub seq: SeqRequest,
}

/// A built workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name for tables.
    pub name: String,
    /// In session order, turns in order; first turns carry `Arrival::At`.
    pub requests: Vec<Request>,
}

/// What to build.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// `users` sessions × `turns` turns; each turn resends the history plus a
    /// new question; every session starts with the same system prompt.
    Chat {
        users: usize,
        turns: usize,
        system_tokens: usize,
        question_tokens: usize,
        answer_tokens: usize,
        /// New sessions per second (Poisson).
        rate: f64,
        /// Seconds between a reply and the next question.
        think_s: f64,
    },
    /// SGLang's generated-shared-prefix benchmark: `groups` system prompts,
    /// each shared by `prompts` questions; requests in random order.
    SharedPrefix {
        groups: usize,
        prompts: usize,
        system_tokens: usize,
        question_tokens: usize,
        output_tokens: usize,
        rate: f64,
    },
    /// Questions over a pool of documents picked with Zipf popularity.
    Rag {
        docs: usize,
        doc_tokens: usize,
        requests: usize,
        question_tokens: usize,
        output_tokens: usize,
        zipf_s: f64,
        rate: f64,
    },
    /// A Mooncake JSONL trace (see shared/data/README.md).
    Trace {
        path: PathBuf,
        /// Tokens of stand-in text per hash id (the trace's blocks are 512).
        tokens_per_block: usize,
        /// Multiplies the trace's timestamps.
        time_scale: f64,
        /// Use at most this many requests (0: all).
        limit: usize,
    },
}

impl Spec {
    /// The `chat` defaults.
    pub fn chat() -> Self {
        Spec::Chat {
            users: 48,
            turns: 6,
            system_tokens: 1024,
            question_tokens: 64,
            answer_tokens: 128,
            rate: 4.0,
            think_s: 0.5,
        }
    }

    /// SGLang's generated-shared-prefix defaults.
    pub fn shared_prefix() -> Self {
        Spec::SharedPrefix {
            groups: 64,
            prompts: 16,
            system_tokens: 2048,
            question_tokens: 128,
            output_tokens: 256,
            rate: 16.0,
        }
    }

    /// The `rag` defaults.
    pub fn rag() -> Self {
        Spec::Rag {
            docs: 200,
            doc_tokens: 3000,
            requests: 1000,
            question_tokens: 64,
            output_tokens: 64,
            zipf_s: 1.1,
            rate: 8.0,
        }
    }
}

/// Why a workload could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot read trace {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trace {path} line {line}: {why}")]
    BadLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("trace {0} has no requests")]
    Empty(PathBuf),
    #[error("invalid workload setting: {0}")]
    Setting(String),
}

/// Seeded uniform numbers in [0, 1).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next number in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = splitmix(self.0);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with the given rate (Poisson inter-arrival time).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.uniform()).ln() / rate
    }

    /// Uniform integer below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// A seed mixed from `parts`.
pub(super) fn seed_of(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x6b76_6d65_7368u64, |acc, p| splitmix(acc ^ p))
}

fn body(messages: &[(&str, &str)], max_tokens: usize) -> Bytes {
    let msgs: Vec<serde_json::Value> = messages
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    Bytes::from(
        serde_json::json!({
            "model": MODEL,
            "messages": msgs,
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
        .to_string(),
    )
}

/// Builds one request; returns it and the reply the simulated engine gives.
pub(super) fn request(
    id: usize,
    session: usize,
    turn: usize,
    arrival: Arrival,
    messages: &[(&str, &str)],
    max_tokens: usize,
) -> (Request, String) {
    let body = body(messages, max_tokens);
    // The same parsing and template the engine server applies.
    let input = match parse(Api::Chat, &body, MODEL) {
        Ok(i) => i,
        Err(e) => unreachable!("workload bodies are valid: {e}"),
    };
    let (seq, reply) = prepare(
        id as u64,
        MODEL,
        &input.tokens,
        max_tokens,
        ENGINE_BLOCK_TOKENS,
    );
    (
        Request {
            id,
            session,
            turn,
            arrival,
            body,
            prompt_tokens: input.tokens.len(),
            max_tokens,
            seq,
        },
        reply,
    )
}

/// Builds the workload `spec` from `seed`.
pub fn build(spec: &Spec, seed: u64) -> Result<Workload, WorkloadError> {
    match spec {
        Spec::Chat {
            users,
            turns,
            system_tokens,
            question_tokens,
            answer_tokens,
            rate,
            think_s,
        } => {
            check_rate(*rate)?;
            let mut rng = Rng::new(seed_of(&[seed, 1]));
            let system = text_of_tokens(seed_of(&[seed, 2]), *system_tokens);
            let mut requests = Vec::new();
            let mut t = 0.0;
            for user in 0..*users {
                t += rng.exponential(*rate);
                let mut history: Vec<(String, String)> = vec![("system".into(), system.clone())];
                for turn in 0..*turns {
                    let q = format!(
                        "Question {turn}:{}",
                        text_of_tokens(
                            seed_of(&[seed, 3, user as u64, turn as u64]),
                            *question_tokens
                        )
                    );
                    history.push(("user".into(), q));
                    let arrival = if turn == 0 {
                        Arrival::At(t)
                    } else {
                        Arrival::AfterPrevious(*think_s)
                    };
                    let msgs: Vec<(&str, &str)> = history
                        .iter()
                        .map(|(r, c)| (r.as_str(), c.as_str()))
                        .collect();
                    let (r, reply) =
                        request(requests.len(), user, turn, arrival, &msgs, *answer_tokens);
                    requests.push(r);
                    history.push(("assistant".into(), reply));
                }
            }
            Ok(Workload {
                name: "chat".into(),
                requests,
            })
        }
        Spec::SharedPrefix {
            groups,
            prompts,
            system_tokens,
            question_tokens,
            output_tokens,
            rate,
        } => {
            check_rate(*rate)?;
            let mut rng = Rng::new(seed_of(&[seed, 11]));
            let mut order: Vec<(usize, usize)> = (0..*groups)
                .flat_map(|g| (0..*prompts).map(move |p| (g, p)))
                .collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let systems: Vec<String> = (0..*groups)
                .map(|g| text_of_tokens(seed_of(&[seed, 12, g as u64]), *system_tokens))
                .collect();
            let mut t = 0.0;
            let mut requests = Vec::new();
            for (g, p) in order {
                t += rng.exponential(*rate);
                let q = text_of_tokens(seed_of(&[seed, 13, g as u64, p as u64]), *question_tokens);
                let id = requests.len();
                let (r, _) = request(
                    id,
                    id,
                    0,
                    Arrival::At(t),
                    &[("system", &systems[g]), ("user", &q)],
                    *output_tokens,
                );
                requests.push(r);
            }
            Ok(Workload {
                name: "shared-prefix".into(),
                requests,
            })
        }
        Spec::Rag {
            docs,
            doc_tokens,
            requests: n,
            question_tokens,
            output_tokens,
            zipf_s,
            rate,
        } => {
            check_rate(*rate)?;
            if *docs == 0 {
                return Err(WorkloadError::Setting(
                    "rag needs at least one document".into(),
                ));
            }
            let mut rng = Rng::new(seed_of(&[seed, 21]));
            let weights: Vec<f64> = (1..=*docs)
                .map(|k| 1.0 / (k as f64).powf(*zipf_s))
                .collect();
            let total: f64 = weights.iter().sum();
            let cdf: Vec<f64> = weights
                .iter()
                .scan(0.0, |acc, w| {
                    *acc += w / total;
                    Some(*acc)
                })
                .collect();
            let mut doc_text: Vec<Option<String>> = vec![None; *docs];
            let mut t = 0.0;
            let mut requests = Vec::new();
            for i in 0..*n {
                t += rng.exponential(*rate);
                let u = rng.uniform();
                let d = cdf.partition_point(|c| *c < u).min(docs - 1);
                let doc = doc_text[d]
                    .get_or_insert_with(|| {
                        format!(
                            "Document {d}:{}",
                            text_of_tokens(seed_of(&[seed, 22, d as u64]), *doc_tokens)
                        )
                    })
                    .clone();
                let q = text_of_tokens(seed_of(&[seed, 23, i as u64]), *question_tokens);
                let (r, _) = request(
                    i,
                    i,
                    0,
                    Arrival::At(t),
                    &[
                        ("system", "Answer from the document."),
                        ("user", &format!("{doc}\nQuestion:{q}")),
                    ],
                    *output_tokens,
                );
                requests.push(r);
            }
            Ok(Workload {
                name: "rag".into(),
                requests,
            })
        }
        Spec::Trace {
            path,
            tokens_per_block,
            time_scale,
            limit,
        } => super::trace::read(path, *tokens_per_block, *time_scale, *limit),
    }
}

fn check_rate(rate: f64) -> Result<(), WorkloadError> {
    if rate > 0.0 && rate.is_finite() {
        Ok(())
    } else {
        Err(WorkloadError::Setting(format!(
            "rate must be a positive number, got {rate}"
        )))
    }
}

/// Share of prompt tokens that one infinite cache shared by all engines
/// could serve (at engine block granularity): no router can do better.
pub fn infinite_cache_bound(w: &Workload) -> f64 {
    let mut seen = std::collections::HashSet::new();
    let (mut hit, mut total) = (0u64, 0u64);
    let mut order: Vec<&Request> = w.requests.iter().collect();
    order.sort_by(|a, b| {
        first_time(w, a)
            .total_cmp(&first_time(w, b))
            .then(a.id.cmp(&b.id))
    });
    for r in order {
        let prompt_blocks = r.prompt_tokens / ENGINE_BLOCK_TOKENS;
        let reusable = ((r.prompt_tokens - 1) / ENGINE_BLOCK_TOKENS).min(prompt_blocks);
        let cached = r.seq.keys[..reusable]
            .iter()
            .take_while(|k| seen.contains(*k))
            .count();
        hit += (cached * ENGINE_BLOCK_TOKENS) as u64;
        total += r.prompt_tokens as u64;
        seen.extend(r.seq.keys.iter().copied());
    }
    if total == 0 {
        0.0
    } else {
        hit as f64 / total as f64
    }
}

/// Ordering time for the bound: a session's turns follow its start.
fn first_time(w: &Workload, r: &Request) -> f64 {
    match r.arrival {
        Arrival::At(t) => t,
        Arrival::AfterPrevious(_) => {
            w.requests
                .iter()
                .find(|x| x.session == r.session && x.turn == 0)
                .map_or(0.0, |x| match x.arrival {
                    Arrival::At(t) => t,
                    Arrival::AfterPrevious(_) => 0.0,
                })
                + r.turn as f64 * 1e-9
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_chat() -> Spec {
        Spec::Chat {
            users: 3,
            turns: 3,
            system_tokens: 100,
            question_tokens: 10,
            answer_tokens: 20,
            rate: 1.0,
            think_s: 0.0,
        }
    }

    #[test]
    fn the_same_seed_builds_the_same_workload() {
        let (a, b) = (
            build(&small_chat(), 7).expect("ok"),
            build(&small_chat(), 7).expect("ok"),
        );
        let bodies = |w: &Workload| {
            w.requests
                .iter()
                .map(|r| r.body.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(&a), bodies(&b));
        assert_ne!(bodies(&a), bodies(&build(&small_chat(), 8).expect("ok")));
    }

    #[test]
    fn chat_turns_resend_the_history_with_the_engines_replies() {
        let w = build(&small_chat(), 1).expect("ok");
        let s0: Vec<&Request> = w.requests.iter().filter(|r| r.session == 0).collect();
        assert_eq!(s0.len(), 3);
        assert!(matches!(s0[0].arrival, Arrival::At(_)));
        assert!(matches!(s0[1].arrival, Arrival::AfterPrevious(_)));
        // Turn 2's engine keys start with all of turn 1's prompt + reply blocks.
        let k1 = &s0[0].seq.keys;
        assert_eq!(&s0[1].seq.keys[..k1.len()], &k1[..]);
        // Every session shares the system prompt's blocks.
        let other = w
            .requests
            .iter()
            .find(|r| r.session == 1)
            .expect("session 1");
        assert_eq!(other.seq.keys[..5], k1[..5]);
    }

    #[test]
    fn shared_prefix_groups_share_their_system_prompt_only() {
        let spec = Spec::SharedPrefix {
            groups: 2,
            prompts: 3,
            system_tokens: 64,
            question_tokens: 8,
            output_tokens: 4,
            rate: 10.0,
        };
        let w = build(&spec, 3).expect("ok");
        assert_eq!(w.requests.len(), 6);
        let firsts: std::collections::HashSet<u64> =
            w.requests.iter().map(|r| r.seq.keys[0]).collect();
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn the_bound_counts_what_an_infinite_shared_cache_would_reuse() {
        let spec = Spec::SharedPrefix {
            groups: 1,
            prompts: 4,
            system_tokens: 160,
            question_tokens: 16,
            output_tokens: 1,
            rate: 10.0,
        };
        let w = build(&spec, 3).expect("ok");
        let b = infinite_cache_bound(&w);
        // 3 of 4 requests reuse ~160 of ~190 prompt tokens.
        assert!((0.5..0.75).contains(&b), "{b}");
    }
}
