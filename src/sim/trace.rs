//! Mooncake JSONL traces as workloads: each hash id becomes a deterministic
//! stand-in text, so prompts share exactly the prefixes the trace says.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::tokenizer::text_of_tokens;
use super::workload::{Arrival, Workload, WorkloadError, request, seed_of};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceLine {
    timestamp: f64,
    #[allow(dead_code)]
    input_length: u64,
    output_length: u64,
    hash_ids: Vec<u64>,
}

/// Reads a Mooncake trace: each hash id becomes a deterministic stand-in
/// text of `tokens_per_block` tokens (same id, same text), so prompts share
/// exactly the prefixes the trace says they share.
pub fn read(
    path: &Path,
    tokens_per_block: usize,
    time_scale: f64,
    limit: usize,
) -> Result<Workload, WorkloadError> {
    if tokens_per_block == 0 || !(time_scale > 0.0 && time_scale.is_finite()) {
        return Err(WorkloadError::Setting(
            "tokens per block must be ≥ 1 and the time scale positive".into(),
        ));
    }
    let io = |source| WorkloadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut texts: std::collections::HashMap<u64, Arc<str>> = std::collections::HashMap::new();
    let mut requests = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| WorkloadError::BadLine {
            path: path.to_path_buf(),
            line: n + 1,
            why,
        };
        let t: TraceLine = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if t.hash_ids.is_empty() {
            return Err(bad("hash_ids is empty".into()));
        }
        if !(t.timestamp >= 0.0 && t.timestamp.is_finite()) {
            return Err(bad(format!(
                "timestamp {} is not a non-negative number",
                t.timestamp
            )));
        }
        let mut prompt = String::new();
        for id in &t.hash_ids {
            let text = texts
                .entry(*id)
                .or_insert_with(|| text_of_tokens(seed_of(&[31, *id]), tokens_per_block).into());
            prompt.push_str(text);
        }
        let id = requests.len();
        let max_tokens = t.output_length.clamp(1, 4096) as usize;
        let (r, _) = request(
            id,
            id,
            0,
            Arrival::At(t.timestamp / 1000.0 * time_scale),
            &[("user", &prompt)],
            max_tokens,
        );
        requests.push(r);
        if limit > 0 && requests.len() >= limit {
            break;
        }
    }
    if requests.is_empty() {
        return Err(WorkloadError::Empty(path.to_path_buf()));
    }
    Ok(Workload {
        name: "trace".into(),
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_become_prompts_that_share_the_traced_prefixes() {
        let dir = std::env::temp_dir().join(format!("kvmesh-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("t.jsonl");
        std::fs::write(&p, "{\"timestamp\": 0, \"input_length\": 64, \"output_length\": 2, \"hash_ids\": [1, 2]}\n\n{\"timestamp\": 500, \"input_length\": 64, \"output_length\": 2, \"hash_ids\": [1, 3]}\n").expect("write");
        let w = read(&p, 32, 1.0, 0).expect("ok");
        assert_eq!(w.requests.len(), 2);
        assert!(matches!(w.requests[1].arrival, Arrival::At(t) if (t - 0.5).abs() < 1e-9));
        let (a, b) = (&w.requests[0].seq.keys, &w.requests[1].seq.keys);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[3], b[3]);
        std::fs::write(&p, "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n{\"timestamp\": 1, \"hash_ids\": [2]}\n").expect("write");
        let err = read(&p, 32, 1.0, 0).expect_err("bad line");
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::write(&p, "not json\n").expect("write");
        assert!(
            read(&p, 32, 1.0, 0)
                .expect_err("bad")
                .to_string()
                .contains("line 1")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
