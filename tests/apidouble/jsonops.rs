//! JSON helpers of the API double: RFC 7386 merge patch, RFC 6902 JSON
//! patch, label and field selectors, query-string decoding, timestamps.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// RFC 7386 merge patch: maps merge recursively, `null` deletes, anything
/// else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {p:?}"));
    };
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(tok: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && tok == "-" {
        return Ok(len);
    }
    let i: usize = tok
        .parse()
        .map_err(|_| format!("invalid array index {tok:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} out of bounds"));
    }
    Ok(i)
}

fn parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for tok in path {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(tok)
                .ok_or_else(|| format!("path /{tok} not found"))?,
            Value::Array(a) => {
                let i = index(tok, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(format!("cannot descend into a scalar at {tok:?}")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], v: Value) -> Result<(), String> {
    let Some((last, init)) = path.split_last() else {
        *doc = v;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true)?;
            a.insert(i, v);
        }
        _ => return Err("cannot add to a scalar".into()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, init)) = path.split_last() else {
        return Ok(std::mem::take(doc));
    };
    match parent(doc, init)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {last:?} not found")),
        Value::Array(a) => {
            let i = index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err("cannot remove from a scalar".into()),
    }
}

/// RFC 6902 JSON patch (add, remove, replace, move, copy, test) applied in
/// order; on error `doc` may be half-patched, so callers patch a copy.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let field = |k: &str| {
            op.get(k)
                .and_then(Value::as_str)
                .ok_or(format!("operation lacks {k:?}"))
        };
        let path = pointer(field("path")?)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or("operation lacks \"value\"".to_string())
        };
        match field("op")? {
            "add" => add(doc, &path, value()?)?,
            "remove" => {
                remove(doc, &path)?;
            }
            "replace" => {
                remove(doc, &path)?;
                add(doc, &path, value()?)?;
            }
            "move" => {
                let v = remove(doc, &pointer(field("from")?)?)?;
                add(doc, &path, v)?;
            }
            "copy" => {
                let from = pointer(field("from")?)?;
                let v = parent(doc, &from)?.clone();
                add(doc, &path, v)?;
            }
            "test" => {
                if *parent(doc, &path)? != value()? {
                    return Err(format!("test failed at {}", op["path"]));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

/// One requirement of a label selector.
#[derive(Debug, Clone)]
pub enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(format!("invalid label key {k:?}"));
    }
    Ok(k.to_string())
}

/// Parses `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`,
/// `k>1`, `k<1`, comma-separated (AND).
pub fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for term in split_top_level(s)
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let req = if let Some(open) = term.find('(') {
            let close = term
                .rfind(')')
                .filter(|c| *c > open && term[c + 1..].trim().is_empty());
            let close = close.ok_or_else(|| format!("unbalanced parentheses in {term:?}"))?;
            let head = term[..open].trim();
            let values: Vec<String> = term[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [k, "notin"] => LabelReq::NotIn(key(k)?, values),
                [k, "in"] => LabelReq::In(key(k)?, values),
                _ => {
                    return Err(format!(
                        "expected `key in (…)` or `key notin (…)` in {term:?}"
                    ));
                }
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::Ne(key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelReq::Eq(key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = term.split_once('>') {
            LabelReq::Gt(
                key(k)?,
                v.trim()
                    .parse()
                    .map_err(|_| format!("not an integer in {term:?}"))?,
            )
        } else if let Some((k, v)) = term.split_once('<') {
            LabelReq::Lt(
                key(k)?,
                v.trim()
                    .parse()
                    .map_err(|_| format!("not an integer in {term:?}"))?,
            )
        } else if let Some(k) = term.strip_prefix('!') {
            LabelReq::NotExists(key(k)?)
        } else {
            LabelReq::Exists(key(term)?)
        };
        out.push(req);
    }
    Ok(out)
}

/// Whether an object's `metadata.labels` satisfy every requirement.
pub fn labels_match(reqs: &[LabelReq], obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let int = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
        LabelReq::Gt(k, n) => int(k).is_some_and(|x| x > *n),
        LabelReq::Lt(k, n) => int(k).is_some_and(|x| x < *n),
    })
}

/// One requirement of a field selector: dotted path, value, equal?
pub type FieldReq = (String, String, bool);

/// Parses `path=v`, `path==v`, `path!=v`, comma-separated.
pub fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, eq) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("invalid field selector term {term:?}"));
        };
        out.push((path.trim().to_string(), value.trim().to_string(), eq));
    }
    Ok(out)
}

/// Whether an object satisfies every field requirement (a missing field reads as "").
pub fn fields_match(reqs: &[FieldReq], obj: &Value) -> bool {
    reqs.iter().all(|(path, want, eq)| {
        let found = path.split('.').try_fold(obj, |v, k| v.get(k));
        let got = match found {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        (got == *want) == *eq
    })
}

fn unhex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes one `application/x-www-form-urlencoded` component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (unhex(b[i + 1]), unhex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded query pairs, in order.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The decoded query as a map (last value wins).
pub fn query_map(q: Option<&str>) -> HashMap<String, String> {
    query_pairs(q).into_iter().collect()
}

/// Now, RFC 3339 in whole seconds (as the apiserver writes timestamps).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
