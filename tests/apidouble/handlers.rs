//! HTTP side of the API double: path routing, the REST verbs, watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::Shared;
use super::jsonops::{
    json_patch, merge_patch, parse_field_selector, parse_label_selector, query_map, query_pairs,
};
use super::store::{Filter, Res, Store};

pub type Body = BoxBody<Bytes, Infallible>;

/// A failed request, answered as a `Status`.
pub struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

fn err(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        code,
        reason,
        message: message.into(),
    }
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    err(400, "BadRequest", message)
}

fn no_such_resource() -> ApiError {
    err(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

pub fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("static response parts are valid")
}

impl ApiError {
    pub fn into_response(self) -> Response<Body> {
        respond(
            self.code,
            &status_json(self.code, self.reason, &self.message),
        )
    }
}

/// `configmaps` for the core group, `deployments.apps` otherwise (as in
/// the real server's messages).
fn qualified(res: &Res) -> String {
    match res.api_version.split_once('/') {
        Some((group, _)) => format!("{}.{group}", res.plural),
        None => res.plural.clone(),
    }
}

fn not_found(res: &Res, name: &str) -> ApiError {
    err(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", qualified(res)),
    )
}

fn conflict(res: &Res, name: &str) -> ApiError {
    err(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(res)
        ),
    )
}

/// Entry point for every HTTP request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let pairs: Vec<String> = query_pairs(parts.uri.query())
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let logged = match pairs.is_empty() {
        true => format!("{} {}", parts.method, parts.uri.path()),
        false => format!("{} {}?{}", parts.method, parts.uri.path(), pairs.join("&")),
    };
    {
        let mut st = shared.lock();
        st.requests.push(logged);
        if st.failing {
            return Ok(err(
                500,
                "InternalError",
                "apidouble: failing on purpose (set_failing)",
            )
            .into_response());
        }
    }
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(bad_request(format!("reading the body: {e}")).into_response()),
    };
    Ok(route(&shared, &parts, &body).unwrap_or_else(ApiError::into_response))
}

/// What a path addresses.
struct Target {
    res: Res,
    /// None: all namespaces (or a cluster-scoped resource).
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

fn parse_target(st: &Store, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return Err(no_such_resource()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return Err(no_such_resource()),
    };
    let res = st
        .resource(&api_version, plural)
        .ok_or_else(no_such_resource)?;
    let scoped_right = if res.namespaced {
        namespace.is_some() || name.is_none()
    } else {
        namespace.is_none()
    };
    if !scoped_right {
        return Err(no_such_resource());
    }
    let status = match sub {
        None => false,
        Some("status") if res.status => true,
        Some(_) => return Err(no_such_resource()),
    };
    Ok(Target {
        res,
        namespace,
        name,
        status,
    })
}

fn filter(t: &Target, q: &HashMap<String, String>, parts: &Parts) -> Result<Filter, ApiError> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let accept = parts
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(Filter {
        api_version: t.res.api_version.clone(),
        plural: t.res.plural.clone(),
        namespace: t.namespace.clone(),
        labels: parse_label_selector(get("labelSelector")).map_err(bad_request)?,
        fields: parse_field_selector(get("fieldSelector")).map_err(bad_request)?,
        meta_only: accept.contains("as=PartialObjectMetadata"),
    })
}

fn json_object(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(bad_request("the body must be a JSON object")),
        Err(e) => Err(bad_request(format!("malformed JSON body: {e}"))),
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn set_or_remove(obj: &mut Value, key: &str, v: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match v {
            Some(v) => o.insert(key.into(), v),
            None => o.remove(key),
        };
    }
}

/// Keeps a write to its part: only `.status` through `/status`; anything
/// but `.status` through the main resource when there is a status subresource.
fn confine(t: &Target, old: &Value, mut new: Value) -> Value {
    if t.status {
        let mut n = old.clone();
        set_or_remove(&mut n, "status", new.get("status").cloned());
        n
    } else {
        if t.res.status {
            set_or_remove(&mut new, "status", old.get("status").cloned());
        }
        new
    }
}

fn check_identity(t: &Target, obj: &Value, name: Option<&str>) -> Result<(), ApiError> {
    if let (Some(want), Some(got)) = (name, meta_str(obj, "name"))
        && want != got
    {
        return Err(bad_request(format!(
            "the name of the object ({got}) does not match the name on the URL ({want})"
        )));
    }
    if let (true, Some(got)) = (t.res.namespaced, meta_str(obj, "namespace"))
        && got != t.ns()
    {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

fn route(shared: &Arc<Shared>, parts: &Parts, body: &Bytes) -> Result<Response<Body>, ApiError> {
    if parts.uri.path() == "/version" {
        return Ok(respond(
            200,
            &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-apidouble", "platform": "linux/amd64"}),
        ));
    }
    let q = query_map(parts.uri.query());
    let mut st = shared.lock();
    let t = parse_target(&st, parts.uri.path())?;
    let dry = q.get("dryRun").is_some_and(|v| v == "All");
    let user_agent = parts
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next());
    let manager = q
        .get("fieldManager")
        .map(String::as_str)
        .or(user_agent)
        .unwrap_or("unknown")
        .to_string();
    let sub = if t.status { "status" } else { "" };
    let name = t.name.clone();
    match (&parts.method, name.as_deref()) {
        (&Method::GET, None) => {
            let f = filter(&t, &q, parts)?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return super::watches::watch(shared, st, f, &q);
            }
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|(k, o)| f.selects_type(&k.0, &k.1, &k.2) && f.matches(o))
                .map(|(_, o)| f.render(o))
                .collect();
            let (api_version, kind) = match f.meta_only {
                true => (
                    "meta.k8s.io/v1".to_string(),
                    "PartialObjectMetadataList".to_string(),
                ),
                false => (t.res.api_version.clone(), format!("{}List", t.res.kind)),
            };
            let list = json!({"apiVersion": api_version, "kind": kind,
                              "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
            Ok(respond(200, &list))
        }
        (&Method::GET, Some(name)) => {
            let obj = st
                .objects
                .get(&Store::key(&t.res, t.ns(), name))
                .ok_or_else(|| not_found(&t.res, name))?;
            Ok(respond(200, &filter(&t, &q, parts)?.render(obj)))
        }
        (&Method::POST, None) if t.namespace.is_some() || !t.res.namespaced => {
            let mut obj = json_object(body)?;
            check_identity(&t, &obj, None)?;
            let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
                (Some(n), _) => n.to_string(),
                (None, Some(g)) => format!("{g}{}", st.name_suffix()),
                (None, None) => {
                    return Err(bad_request(
                        "metadata.name or metadata.generateName is required",
                    ));
                }
            };
            if meta_str(&obj, "resourceVersion").is_some() {
                return Err(bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            if st.objects.contains_key(&Store::key(&t.res, t.ns(), &name)) {
                let msg = format!("{} \"{name}\" already exists", qualified(&t.res));
                return Err(err(409, "AlreadyExists", msg));
            }
            if t.res.status {
                set_or_remove(&mut obj, "status", None);
            }
            let obj = st.write(
                &t.res,
                t.ns(),
                &name,
                obj,
                Some((&manager, "Update", "")),
                dry,
            );
            Ok(respond(201, &obj))
        }
        (&Method::PUT, Some(name)) => {
            let obj = json_object(body)?;
            check_identity(&t, &obj, Some(name))?;
            let old = st
                .objects
                .get(&Store::key(&t.res, t.ns(), name))
                .cloned()
                .ok_or_else(|| not_found(&t.res, name))?;
            if meta_str(&obj, "resourceVersion")
                .is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion"))
            {
                return Err(conflict(&t.res, name));
            }
            let new = confine(&t, &old, obj);
            Ok(respond(
                200,
                &st.write(
                    &t.res,
                    t.ns(),
                    name,
                    new,
                    Some((&manager, "Update", sub)),
                    dry,
                ),
            ))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let content_type = content_type.split(';').next().unwrap_or("").trim();
            let old = st.objects.get(&Store::key(&t.res, t.ns(), name)).cloned();
            let (old, candidate, mgr, operation) = match content_type {
                "application/apply-patch+yaml" => {
                    let Some(mgr) = q.get("fieldManager") else {
                        return Err(bad_request("fieldManager is required for apply patch"));
                    };
                    let applied = match serde_json::from_slice::<Value>(body) {
                        Ok(v) => v,
                        Err(_) => serde_norway::from_slice::<Value>(body)
                            .map_err(|e| bad_request(format!("malformed apply body: {e}")))?,
                    };
                    if !applied.is_object() {
                        return Err(bad_request("the applied configuration must be an object"));
                    }
                    check_identity(&t, &applied, Some(name))?;
                    let Some(old) = old else {
                        if t.status {
                            return Err(not_found(&t.res, name));
                        }
                        let mut obj = applied;
                        if t.res.status {
                            set_or_remove(&mut obj, "status", None);
                        }
                        let obj =
                            st.write(&t.res, t.ns(), name, obj, Some((mgr, "Apply", "")), dry);
                        return Ok(respond(201, &obj));
                    };
                    let mut merged = old.clone();
                    merge_patch(&mut merged, &applied);
                    (old, merged, mgr.clone(), "Apply")
                }
                "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/json-patch+json" => {
                    let patch = serde_json::from_slice::<Value>(body)
                        .map_err(|e| bad_request(format!("malformed patch: {e}")))?;
                    let old = old.ok_or_else(|| not_found(&t.res, name))?;
                    let mut patched = old.clone();
                    if content_type == "application/json-patch+json" {
                        json_patch(&mut patched, &patch).map_err(|e| {
                            err(422, "Invalid", format!("the JSON patch failed: {e}"))
                        })?;
                    } else {
                        if !patch.is_object() {
                            return Err(bad_request("a merge patch must be a JSON object"));
                        }
                        merge_patch(&mut patched, &patch);
                    }
                    (old, patched, manager, "Update")
                }
                other => {
                    return Err(err(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other}"),
                    ));
                }
            };
            if !candidate.is_object() {
                return Err(err(
                    422,
                    "Invalid",
                    "the patched object is not a JSON object",
                ));
            }
            // A resourceVersion in the patch is a precondition, as with PUT.
            let wanted = meta_str(&candidate, "resourceVersion");
            if wanted.is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion")) {
                return Err(conflict(&t.res, name));
            }
            let new = confine(&t, &old, candidate);
            Ok(respond(
                200,
                &st.write(&t.res, t.ns(), name, new, Some((&mgr, operation, sub)), dry),
            ))
        }
        (&Method::DELETE, Some(name)) if !t.status => {
            let key = Store::key(&t.res, t.ns(), name);
            let current = st
                .objects
                .get(&key)
                .cloned()
                .ok_or_else(|| not_found(&t.res, name))?;
            if !body.is_empty() {
                let opts = json_object(body)?;
                for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
                    let want = opts
                        .pointer(&format!("/preconditions/{field}"))
                        .and_then(Value::as_str);
                    let have = meta_str(&current, field);
                    if want.is_some_and(|w| Some(w) != have) {
                        let msg = format!(
                            "Precondition failed: {label} in precondition: {}, {label} in object meta: {}",
                            want.unwrap_or(""),
                            have.unwrap_or("")
                        );
                        return Err(err(409, "Conflict", msg));
                    }
                }
            }
            let (obj, gone) = st
                .delete(&key, dry)
                .ok_or_else(|| not_found(&t.res, name))?;
            if !gone {
                return Ok(respond(202, &obj));
            }
            let group = t
                .res
                .api_version
                .split_once('/')
                .map(|(g, _)| g)
                .unwrap_or("");
            let details = json!({"name": name, "group": group, "kind": t.res.plural, "uid": obj["metadata"]["uid"]});
            Ok(respond(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
            ))
        }
        (&Method::DELETE, None) if t.namespace.is_some() || !t.res.namespaced => {
            let f = filter(&t, &q, parts)?;
            let keys: Vec<_> = st
                .objects
                .iter()
                .filter(|(k, o)| f.selects_type(&k.0, &k.1, &k.2) && f.matches(o))
                .map(|(k, _)| k.clone())
                .collect();
            let items: Vec<Value> = keys
                .iter()
                .filter_map(|k| st.delete(k, dry))
                .map(|(o, _)| o)
                .collect();
            let list = json!({"apiVersion": t.res.api_version, "kind": format!("{}List", t.res.kind),
                              "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
            Ok(respond(200, &list))
        }
        (m, _) => Err(err(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {}", parts.uri.path()),
        )),
    }
}
