//! The Redis commands the node cache serves (RESP2), against the store.
//!
//! Enough of Redis for LMCache's `redis://` backend (`SET`/`GET`/`EXISTS` of
//! `<key>kv_bytes` and `<key>metadata`), for redis-cli, redis-py and
//! redis-benchmark: their connection handshakes (`HELLO`, `CLIENT SETINFO`,
//! `COMMAND DOCS`, `CONFIG GET`) get answers that keep them on RESP2.
//! Errors use Redis's wording, so client libraries classify them right.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::metrics::{DISK, NodeCacheMetrics, ProtocolLabels, RAM};
use super::resp::ReplyBuf;
use super::store::{Entry, LmMeta, Store, StoreError, now_ms};

/// What every Redis connection shares.
#[derive(Debug)]
pub struct RedisContext {
    pub store: Arc<Store>,
    pub metrics: NodeCacheMetrics,
    pub password: Option<String>,
    pub started: Instant,
    pub commands: AtomicU64,
    pub next_client_id: AtomicU64,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub authenticated: bool,
    pub name: Option<Bytes>,
    /// Commands queued since MULTI.
    pub queued: Option<Vec<(&'static str, Vec<Bytes>)>>,
    /// A command queued since MULTI was unknown: EXEC aborts.
    pub queue_failed: bool,
}

impl Session {
    /// A new connection's state: authenticated when no password is set.
    pub fn new(ctx: &RedisContext) -> Self {
        Self {
            id: ctx.next_client_id.fetch_add(1, Ordering::Relaxed) + 1,
            authenticated: ctx.password.is_none(),
            name: None,
            queued: None,
            queue_failed: false,
        }
    }
}

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// Known commands: (name, metric label).
const COMMANDS: &[(&str, &str)] = &[
    ("PING", "ping"),
    ("ECHO", "echo"),
    ("GET", "get"),
    ("SET", "set"),
    ("EXISTS", "exists"),
    ("DEL", "del"),
    ("UNLINK", "unlink"),
    ("MGET", "mget"),
    ("MSET", "mset"),
    ("STRLEN", "strlen"),
    ("DBSIZE", "dbsize"),
    ("FLUSHALL", "flushall"),
    ("FLUSHDB", "flushdb"),
    ("INFO", "info"),
    ("SELECT", "select"),
    ("QUIT", "quit"),
    ("AUTH", "auth"),
    ("HELLO", "hello"),
    ("CLIENT", "client"),
    ("COMMAND", "command"),
    ("CONFIG", "config"),
    ("MULTI", "multi"),
    ("EXEC", "exec"),
    ("DISCARD", "discard"),
];

/// A known command's name and metric label, matched without regard to case.
fn command_name(raw: &[u8]) -> Option<(&'static str, &'static str)> {
    COMMANDS
        .iter()
        .find(|(c, _)| c.as_bytes().eq_ignore_ascii_case(raw))
        .copied()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wrong_args(out: &mut ReplyBuf, name: &str) {
    out.error(&format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ));
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// Runs one command, appending its reply to `out`.
pub async fn execute(
    ctx: &RedisContext,
    session: &mut Session,
    args: Vec<Bytes>,
    out: &mut ReplyBuf,
) -> Flow {
    let Some(first) = args.first() else {
        return Flow::Continue;
    };
    ctx.commands.fetch_add(1, Ordering::Relaxed);
    let Some((name, label)) = command_name(first) else {
        ctx.metrics.command("redis", "unknown");
        ctx.metrics.error("redis", "unknown_command");
        if session.queued.is_some() {
            session.queue_failed = true;
        }
        let mut msg = format!(
            "ERR unknown command '{}', with args beginning with: ",
            lossy(&first[..first.len().min(128)])
        );
        for a in args.iter().skip(1).take(8) {
            msg.push_str(&format!("'{}' ", lossy(&a[..a.len().min(128)])));
        }
        out.error(&msg);
        return Flow::Continue;
    };
    ctx.metrics.command("redis", label);
    if !session.authenticated && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
        ctx.metrics.error("redis", "auth");
        out.error("NOAUTH Authentication required.");
        return Flow::Continue;
    }
    // MULTI … EXEC: queue, then run in order. Each command is atomic on
    // its own; the block is not isolated from other connections (no WATCH).
    match (name, session.queued.is_some()) {
        ("MULTI", true) => {
            out.error("ERR MULTI calls can not be nested");
            return Flow::Continue;
        }
        ("MULTI", false) => {
            session.queued = Some(Vec::new());
            out.simple("OK");
            return Flow::Continue;
        }
        ("EXEC" | "DISCARD", false) => {
            out.error(&format!("ERR {name} without MULTI"));
            return Flow::Continue;
        }
        ("DISCARD", true) => {
            session.queued = None;
            session.queue_failed = false;
            out.simple("OK");
            return Flow::Continue;
        }
        ("EXEC", true) => {
            let queued = session.queued.take().unwrap_or_default();
            if std::mem::take(&mut session.queue_failed) {
                out.error("EXECABORT Transaction discarded because of previous errors.");
                return Flow::Continue;
            }
            out.array(queued.len());
            let mut flow = Flow::Continue;
            for (name, args) in queued {
                if run(ctx, session, name, args, out).await == Flow::Close {
                    flow = Flow::Close;
                }
            }
            return flow;
        }
        (_, true) if name != "QUIT" => {
            session.queued.get_or_insert_default().push((name, args));
            out.simple("QUEUED");
            return Flow::Continue;
        }
        _ => {}
    }
    run(ctx, session, name, args, out).await
}

/// Runs one known command.
async fn run(
    ctx: &RedisContext,
    session: &mut Session,
    name: &'static str,
    args: Vec<Bytes>,
    out: &mut ReplyBuf,
) -> Flow {
    let store = &ctx.store;
    let argc = args.len();
    match name {
        "PING" => match argc {
            1 => out.simple("PONG"),
            2 => out.bulk(&args[1]),
            _ => wrong_args(out, name),
        },
        "ECHO" if argc == 2 => out.bulk(&args[1]),
        "GET" if argc == 2 => match store.get(&args[1]).await {
            Some(e) => out.bulk_bytes(e.data),
            None => out.nil(),
        },
        "SET" if argc >= 3 => set(ctx, &args, out).await,
        "EXISTS" if argc >= 2 => {
            let n = args[1..].iter().filter(|k| store.contains(k)).count();
            out.int(n as i64);
        }
        "DEL" | "UNLINK" if argc >= 2 => {
            let n = args[1..].iter().filter(|k| store.remove(k)).count();
            out.int(n as i64);
        }
        "MGET" if argc >= 2 => {
            out.array(argc - 1);
            for k in &args[1..] {
                match store.get(k).await {
                    Some(e) => out.bulk_bytes(e.data),
                    None => out.nil(),
                }
            }
        }
        "MSET" if argc >= 3 && argc % 2 == 1 => {
            let mut result = Ok(());
            for pair in args[1..].chunks(2) {
                let entry = Entry::new(pair[1].clone(), LmMeta::default(), 0);
                if let Err(e) = store.put(pair[0].clone(), entry) {
                    result = Err(e);
                }
            }
            match result {
                Ok(()) => out.simple("OK"),
                Err(e) => store_error(ctx, out, &e),
            }
        }
        "STRLEN" if argc == 2 => {
            let n = store.get(&args[1]).await.map_or(0, |e| e.data.len());
            out.int(n as i64);
        }
        "DBSIZE" if argc == 1 => out.int(store.key_count() as i64),
        "FLUSHALL" | "FLUSHDB" if argc <= 2 => {
            store.clear();
            out.simple("OK");
        }
        "INFO" if argc <= 2 => {
            let text = info(ctx);
            out.bulk(text.as_bytes());
        }
        "SELECT" if argc == 2 => match parse_int(&args[1]) {
            Some(0) => out.simple("OK"),
            Some(_) => out.error("ERR DB index is out of range"),
            None => out.error(NOT_INTEGER),
        },
        "QUIT" => {
            out.simple("OK");
            return Flow::Close;
        }
        "AUTH" if argc == 2 || argc == 3 => {
            auth(ctx, session, &args[argc - 1], out, true);
        }
        "HELLO" => hello(ctx, session, &args, out),
        "CLIENT" if argc >= 2 => client(session, &args, out),
        "COMMAND" => {
            let sub = args.get(1).map(|s| s.to_ascii_uppercase());
            match sub.as_deref() {
                Some(b"COUNT") => out.int(COMMANDS.len() as i64),
                _ => out.array(0),
            }
        }
        "CONFIG" if argc >= 2 => config(ctx, &args, out),
        _ => wrong_args(out, name),
    }
    Flow::Continue
}

fn store_error(ctx: &RedisContext, out: &mut ReplyBuf, e: &StoreError) {
    ctx.metrics.error("redis", "too_large");
    out.error(&format!("ERR {e}"));
}

async fn set(ctx: &RedisContext, args: &[Bytes], out: &mut ReplyBuf) {
    let (mut nx, mut xx, mut keep_ttl, mut get) = (false, false, false, false);
    let mut expires_at_ms = 0u64;
    let mut expiry_given = false;
    let mut i = 3;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        let next = args.get(i + 1);
        match (opt.as_slice(), next) {
            (b"NX", _) if !xx => nx = true,
            (b"XX", _) if !nx => xx = true,
            (b"GET", _) => get = true,
            (b"KEEPTTL", _) if !expiry_given => keep_ttl = true,
            (b"EX" | b"PX" | b"EXAT" | b"PXAT", Some(v)) if !expiry_given && !keep_ttl => {
                let Some(n) = parse_int(v) else {
                    return out.error(NOT_INTEGER);
                };
                if n <= 0 {
                    return out.error("ERR invalid expire time in 'set' command");
                }
                let n = n as u64;
                expires_at_ms = match opt.as_slice() {
                    b"EX" => now_ms().saturating_add(n.saturating_mul(1000)),
                    b"PX" => now_ms().saturating_add(n),
                    b"EXAT" => n.saturating_mul(1000),
                    _ => n,
                };
                expiry_given = true;
                i += 1;
            }
            _ => return out.error("ERR syntax error"),
        }
        i += 1;
    }
    let store = &ctx.store;
    let key = &args[1];
    let old = if get || keep_ttl {
        store.get(key).await
    } else {
        None
    };
    let exists = if get || keep_ttl {
        old.is_some()
    } else if nx || xx {
        store.contains(key)
    } else {
        false
    };
    let reply_old = |out: &mut ReplyBuf, old: Option<Entry>| match old {
        Some(e) => out.bulk_bytes(e.data),
        None => out.nil(),
    };
    if (nx && exists) || (xx && !exists) {
        return if get { reply_old(out, old) } else { out.nil() };
    }
    if keep_ttl && let Some(o) = &old {
        expires_at_ms = o.expires_at_ms;
    }
    let entry = Entry::new(args[2].clone(), LmMeta::default(), expires_at_ms);
    match store.put(key.clone(), entry) {
        Ok(()) if get => reply_old(out, old),
        Ok(()) => out.simple("OK"),
        Err(e) => store_error(ctx, out, &e),
    }
}

fn auth(
    ctx: &RedisContext,
    session: &mut Session,
    given: &[u8],
    out: &mut ReplyBuf,
    reply: bool,
) -> bool {
    let ok = match &ctx.password {
        None => {
            out.error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
            return false;
        }
        Some(p) => p.as_bytes() == given,
    };
    if ok {
        session.authenticated = true;
        if reply {
            out.simple("OK");
        }
    } else {
        ctx.metrics.error("redis", "auth");
        out.error("WRONGPASS invalid username-password pair or user is disabled.");
    }
    ok
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`. Versions 2 and 3 are
/// both served: the commands here differ between them only in the null and
/// map types, and redis-py ≥ 8 opens with `HELLO 3` and gives up on `NOPROTO`
/// instead of falling back. Other versions get `NOPROTO`, on which clients
/// that do fall back (go-redis, lettuce) carry on with RESP2.
fn hello(ctx: &RedisContext, session: &mut Session, args: &[Bytes], out: &mut ReplyBuf) {
    let mut proto = if out.resp3 { 3 } else { 2 };
    if let Some(v) = args.get(1) {
        match parse_int(v) {
            Some(v @ (2 | 3)) => proto = v,
            Some(_) => return out.error("NOPROTO unsupported protocol version"),
            None => return out.error("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 2;
    let mut name = None;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"AUTH" if i + 2 < args.len() => {
                if !auth(ctx, session, &args[i + 2], out, false) {
                    return;
                }
                i += 3;
            }
            b"SETNAME" if i + 1 < args.len() => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return out.error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    lossy(&args[i])
                ));
            }
        }
    }
    if !session.authenticated {
        ctx.metrics.error("redis", "auth");
        return out.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if name.is_some() {
        session.name = name;
    }
    out.resp3 = proto == 3;
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(b"7.2.0");
    out.bulk(b"proto");
    out.int(proto);
    out.bulk(b"id");
    out.int(session.id as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
}

fn client(session: &mut Session, args: &[Bytes], out: &mut ReplyBuf) {
    let sub = args[1].to_ascii_uppercase();
    match (sub.as_slice(), args.len()) {
        (b"SETNAME", 3) => {
            session.name = Some(args[2].clone());
            out.simple("OK");
        }
        (b"SETINFO", 4) => out.simple("OK"),
        (b"GETNAME", 2) => match &session.name {
            Some(n) => out.bulk(n),
            None => out.nil(),
        },
        (b"ID", 2) => out.int(session.id as i64),
        _ => out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            lossy(&args[1])
        )),
    }
}

fn config(ctx: &RedisContext, args: &[Bytes], out: &mut ReplyBuf) {
    let sub = args[1].to_ascii_uppercase();
    if sub != b"GET" {
        return out.error("ERR CONFIG SET and REWRITE are not supported: kvmesh node-cache is configured by its flags");
    }
    let stats = ctx.store.stats();
    let known = [
        ("maxmemory", stats.ram_capacity.to_string()),
        ("maxmemory-policy", "allkeys-lru".to_string()),
        ("save", String::new()),
        ("appendonly", "no".to_string()),
        ("databases", "1".to_string()),
    ];
    let mut pairs = Vec::new();
    for pattern in &args[2..] {
        for (k, v) in &known {
            if pattern.eq_ignore_ascii_case(k.as_bytes()) || &pattern[..] == b"*" {
                pairs.push((*k, v.clone()));
            }
        }
    }
    out.map(pairs.len());
    for (k, v) in pairs {
        out.bulk(k.as_bytes());
        out.bulk(v.as_bytes());
    }
}

fn info(ctx: &RedisContext) -> String {
    let m = &ctx.metrics;
    let stats = ctx.store.stats();
    let hits = m.hits.get_or_create(&RAM).get() + m.hits.get_or_create(&DISK).get();
    let misses = if ctx.store.has_disk() {
        m.misses.get_or_create(&DISK).get()
    } else {
        m.misses.get_or_create(&RAM).get()
    };
    let clients = m
        .connections
        .get_or_create(&ProtocolLabels { protocol: "redis" })
        .get();
    let keys = ctx.store.key_count();
    format!(
        "# Server\r\nredis_version:7.2.0\r\nredis_mode:standalone\r\nkvmesh_version:{}\r\nuptime_in_seconds:{}\r\n\r\n\
         # Clients\r\nconnected_clients:{}\r\n\r\n\
         # Memory\r\nused_memory:{}\r\nmaxmemory:{}\r\nmaxmemory_policy:allkeys-lru\r\nkvmesh_disk_bytes:{}\r\nkvmesh_disk_capacity:{}\r\nkvmesh_spill_queue_bytes:{}\r\n\r\n\
         # Stats\r\ntotal_commands_processed:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\nevicted_keys:{}\r\n\r\n\
         # Keyspace\r\n{}",
        env!("CARGO_PKG_VERSION"),
        ctx.started.elapsed().as_secs(),
        clients,
        stats.ram_bytes,
        stats.ram_capacity,
        stats.disk_bytes,
        stats.disk_capacity,
        stats.spill_queue_bytes,
        ctx.commands.load(Ordering::Relaxed),
        hits,
        misses,
        m.evictions.get_or_create(&RAM).get(),
        if keys > 0 {
            format!("db0:keys={keys},expires=0,avg_ttl=0\r\n")
        } else {
            String::new()
        },
    )
}
