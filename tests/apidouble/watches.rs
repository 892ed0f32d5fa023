//! Watch streams of the API double.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::mpsc;

use super::Shared;
use super::handlers::{ApiError, Body, bad_request, status_json};
use super::store::{Filter, Store, line};

fn bookmark(f: &Filter, kind: &str, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let (api_version, kind) = match f.meta_only {
        true => (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadata".to_string(),
        ),
        false => (f.api_version.clone(), kind.to_string()),
    };
    line(
        "BOOKMARK",
        json!({"apiVersion": api_version, "kind": kind, "metadata": meta}),
    )
}

/// Starts a watch: the initial lines (current objects, or history after the
/// given resourceVersion, or a 410 ERROR event), then live events until the
/// timeout, the client leaving, `set_failing(true)` or shutdown.
pub fn watch(
    shared: &Arc<Shared>,
    mut st: std::sync::MutexGuard<'_, Store>,
    f: Filter,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let kind = st
        .resource(&f.api_version, &f.plural)
        .map(|r| r.kind)
        .unwrap_or_default();
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    // Absent or 0: no timeout (the real server then picks 30–60 minutes).
    let timeout = match q.get("timeoutSeconds").map(|s| s.parse::<u64>()) {
        Some(Ok(0)) | None => None,
        Some(Ok(secs)) => Some(Duration::from_secs(secs)),
        Some(Err(_)) => return Err(bad_request("timeoutSeconds must be an integer")),
    };
    let mut lines = Vec::new();
    let mut live = true;
    match q
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|s| !s.is_empty() && !initial_events)
    {
        None | Some("0") => {
            let current = st
                .objects
                .iter()
                .filter(|(k, o)| f.selects_type(&k.0, &k.1, &k.2) && f.matches(o));
            lines.extend(current.map(|(_, o)| line("ADDED", f.render(o))));
            if initial_events {
                lines.push(bookmark(&f, &kind, st.rv, true));
            }
        }
        Some(s) => {
            let from: u64 = s
                .parse()
                .map_err(|_| bad_request(format!("invalid resourceVersion {s:?}")))?;
            if from < st.floor {
                let msg = format!("too old resource version: {from} ({})", st.floor + 1);
                lines.push(line("ERROR", status_json(410, "Expired", &msg)));
                live = false;
            } else {
                lines.extend(
                    st.history
                        .iter()
                        .filter(|ev| ev.rv > from)
                        .filter_map(|ev| f.event_line(ev)),
                );
            }
        }
    }
    let mut events = None;
    if live {
        let (tx, rx) = mpsc::unbounded_channel();
        st.watchers.push(tx);
        events = Some(rx);
    }
    drop(st);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let shared = shared.clone();
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        for l in lines {
            if out_tx.send(l).await.is_err() {
                return;
            }
        }
        let Some(mut events) = events else { return };
        let expiry = async move {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        if let Some(l) = f.event_line(&ev)
                            && out_tx.send(l).await.is_err()
                        {
                            return;
                        }
                    }
                    None => return,
                },
                () = &mut expiry => {
                    if bookmarks {
                        // Events are sent under the lock: holding it, every event up to `rv` is queued.
                        let (queued, rv) = {
                            let st = shared.lock();
                            (std::iter::from_fn(|| events.try_recv().ok()).collect::<Vec<_>>(), st.rv)
                        };
                        for l in queued.iter().filter_map(|ev| f.event_line(ev)).chain([bookmark(&f, &kind, rv, false)]) {
                            if out_tx.send(l).await.is_err() {
                                return;
                            }
                        }
                    }
                    return;
                }
                () = super::stopped(&mut shutdown) => return,
                () = out_tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        out_rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("static response parts are valid"))
}
