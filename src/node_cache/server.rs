//! The two protocol listeners: accept loops and one task per connection,
//! with per-connection limits, an idle timeout and a graceful drain.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::lm::{self, Command, Framing};
use super::metrics::{NodeCacheMetrics, ProtocolLabels};
use super::redis::{self, Flow, RedisContext, Session};
use super::resp::{Decoded, Limits, ReplyBuf, RespDecoder};
use super::store::{Entry, Store};

/// Open connections per protocol at most; past it, accepting waits.
pub const MAX_CONNECTIONS: usize = 4096;
/// Replies buffered before they are written even if more requests are queued.
const FLUSH_AT: usize = 1 << 20;

/// Connection settings shared by both protocols.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// A connection that sends nothing for this long is closed (None: never).
    pub idle_timeout: Option<Duration>,
    /// On shutdown, time open connections get to finish their request.
    pub drain: Duration,
    /// lm:// header layout.
    pub framing: Framing,
}

/// The shutdown signal each task watches.
pub type Stop = watch::Receiver<bool>;

async fn stopped(stop: &mut Stop) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts on `listener` until `stop`, running `conn` for each client, then
/// waits up to `drain` for open connections to end.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    protocol: &'static str,
    metrics: NodeCacheMetrics,
    drain: Duration,
    mut stop: Stop,
    conn: F,
) where
    F: Fn(TcpStream, Stop) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let gauge = metrics
        .connections
        .get_or_create(&ProtocolLabels { protocol })
        .clone();
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = stopped(&mut stop) => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(protocol, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Engines keep one connection open for hours, mostly idle:
                // keepalive finds peers that vanished without a FIN.
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(60))
                    .with_interval(Duration::from_secs(10));
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                tracing::debug!(protocol, %peer, "connection opened");
                let gauge = gauge.clone();
                gauge.inc();
                let fut = conn(stream, stop.clone());
                tasks.spawn(async move {
                    fut.await;
                    gauge.dec();
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(
            protocol,
            open_connections = open,
            "stopped accepting; draining"
        );
    }
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            protocol,
            "drain timeout reached; closing remaining connections"
        );
        tasks.abort_all();
    }
}

/// Serves the Redis protocol on `listener` until `stop`.
pub async fn serve_redis(
    listener: TcpListener,
    ctx: Arc<RedisContext>,
    limits: Limits,
    settings: ConnSettings,
    stop: Stop,
) {
    let metrics = ctx.metrics.clone();
    let idle = settings.idle_timeout;
    accept_loop(
        listener,
        "redis",
        metrics,
        settings.drain,
        stop,
        move |s, stop| {
            let ctx = ctx.clone();
            async move {
                if let Err(e) = redis_conn(s, &ctx, limits, idle, stop).await {
                    tracing::debug!(error = %e, "redis connection ended with an error");
                }
            }
        },
    )
    .await;
}

/// Serves LMCache's lm:// protocol on `listener` until `stop`.
pub async fn serve_lm(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: NodeCacheMetrics,
    settings: ConnSettings,
    stop: Stop,
) {
    let drain = settings.drain;
    let m = metrics.clone();
    accept_loop(listener, "lm", m, drain, stop, move |s, stop| {
        let store = store.clone();
        let metrics = metrics.clone();
        let settings = settings.clone();
        async move {
            if let Err(e) = lm_conn(s, &store, &metrics, &settings, stop).await {
                tracing::debug!(error = %e, "lm connection ended with an error");
            }
        }
    })
    .await;
}

/// Reads once (into `buf`, at most `limit` bytes), bounded by the idle
/// timeout and the shutdown signal. `Ok(0)`: end of stream, idle or stopping.
async fn read_some<R, B>(
    r: &mut R,
    buf: &mut B,
    idle: Option<Duration>,
    stop: &mut Stop,
) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
    B: BufMut,
{
    let read = async {
        match idle {
            Some(t) => tokio::time::timeout(t, r.read_buf(buf))
                .await
                .unwrap_or(Ok(0)),
            None => r.read_buf(buf).await,
        }
    };
    tokio::select! {
        n = read => n,
        () = stopped(stop) => Ok(0),
    }
}

/// Writes `chunks` in order with vectored writes.
async fn write_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut chunks: VecDeque<Bytes>,
) -> io::Result<()> {
    while !chunks.is_empty() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> =
                chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

async fn redis_conn(
    stream: TcpStream,
    ctx: &RedisContext,
    limits: Limits,
    idle: Option<Duration>,
    mut stop: Stop,
) -> io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut decoder = RespDecoder::new(limits);
    let mut out = ReplyBuf::default();
    let mut session = Session::new(ctx);
    loop {
        loop {
            match decoder.decode(&mut rbuf) {
                Ok(Some(Decoded::Command(args))) => {
                    if redis::execute(ctx, &mut session, args, &mut out).await == Flow::Close {
                        return write_chunks(&mut wr, out.take()).await;
                    }
                    if out.len() >= FLUSH_AT {
                        write_chunks(&mut wr, out.take()).await?;
                    }
                }
                Ok(Some(Decoded::TooLarge)) => {
                    ctx.metrics.command("redis", "too_large");
                    ctx.metrics.error("redis", "too_large");
                    out.error(&format!(
                        "ERR value larger than the limit ({} bytes per value, {} per command)",
                        limits.max_value_bytes, limits.max_command_bytes
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    ctx.metrics.error("redis", "protocol");
                    tracing::debug!(error = %e, "closing a redis connection");
                    out.error(&e.to_string());
                    return write_chunks(&mut wr, out.take()).await;
                }
            }
        }
        if !out.is_empty() {
            write_chunks(&mut wr, out.take()).await?;
        }
        let n = match decoder.direct_target() {
            Some((dest, need)) => {
                read_some(&mut rd, &mut dest.limit(need), idle, &mut stop).await?
            }
            None => {
                if rbuf.capacity() - rbuf.len() < 4096 {
                    rbuf.reserve(16 * 1024);
                }
                read_some(&mut rd, &mut rbuf, idle, &mut stop).await?
            }
        };
        if n == 0 {
            return Ok(());
        }
    }
}

async fn lm_conn(
    stream: TcpStream,
    store: &Arc<Store>,
    metrics: &NodeCacheMetrics,
    settings: &ConnSettings,
    mut stop: Stop,
) -> io::Result<()> {
    let framing = settings.framing;
    let idle = settings.idle_timeout;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut head = BytesMut::with_capacity(lm::MAX_REQUEST_LEN);
    let reply_len = framing.reply_len();
    let reply = |code, len, meta| {
        Bytes::copy_from_slice(&lm::encode_reply(framing, code, len, meta)[..reply_len])
    };
    loop {
        head.clear();
        while head.len() < framing.request_len() {
            let need = framing.request_len() - head.len();
            if read_some(&mut rd, &mut (&mut head).limit(need), idle, &mut stop).await? == 0 {
                if !head.is_empty() {
                    metrics.error("lm", "truncated");
                }
                return Ok(());
            }
        }
        let req = match lm::parse_request(framing, &head) {
            Ok(r) => r,
            Err(e) => {
                metrics.error("lm", "protocol");
                tracing::debug!(error = %e, "closing an lm connection");
                let fail = reply(lm::FAIL, 0, lm::EMPTY_META);
                return write_chunks(&mut wr, VecDeque::from([fail])).await;
            }
        };
        metrics.command("lm", req.command.name());
        let answer = match req.command {
            Command::Put => {
                let len = req.length as u64;
                if len > store.max_value_bytes() {
                    // Skip the payload without holding it; PUT has no reply.
                    metrics.error("lm", "too_large");
                    let skipped =
                        tokio::io::copy(&mut (&mut rd).take(len), &mut tokio::io::sink()).await?;
                    if skipped < len {
                        return Ok(());
                    }
                    continue;
                }
                let mut payload = BytesMut::with_capacity(len as usize);
                while (payload.len() as u64) < len {
                    let need = len as usize - payload.len();
                    if read_some(&mut rd, &mut (&mut payload).limit(need), idle, &mut stop).await?
                        == 0
                    {
                        metrics.error("lm", "truncated");
                        return Ok(());
                    }
                }
                if let Err(e) = store.put(req.key, Entry::new(payload.freeze(), req.meta, 0)) {
                    metrics.error("lm", "too_large");
                    tracing::debug!(error = %e, "lm PUT not stored");
                }
                continue;
            }
            Command::Get => match store.get(&req.key).await {
                Some(e) => {
                    VecDeque::from([reply(lm::SUCCESS, e.data.len() as u32, e.meta), e.data])
                }
                None => VecDeque::from([reply(lm::FAIL, 0, lm::EMPTY_META)]),
            },
            Command::Exist => {
                let code = if store.contains(&req.key) {
                    lm::SUCCESS
                } else {
                    lm::FAIL
                };
                VecDeque::from([reply(code, 0, lm::EMPTY_META)])
            }
            Command::Health => VecDeque::from([reply(lm::SUCCESS, 0, lm::EMPTY_META)]),
            Command::List => VecDeque::from([reply(lm::FAIL, 0, lm::EMPTY_META)]),
        };
        write_chunks(&mut wr, answer).await?;
    }
}
