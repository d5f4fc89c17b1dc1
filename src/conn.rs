//! One client connection: read, parse, execute in rounds, write.
//!
//! # Request path
//! 1. Read whatever the socket has into the query buffer (bounded by
//!    `client-query-buffer-limit`).
//! 2. Parse every complete command in it ([`crate::resp::Parser`]).
//! 3. Execute them in a *round*: a command whose keys live on this shard runs at once; one whose
//!    keys live on another shard joins that shard's batch. Connection commands (HELLO, INFO,
//!    SCAN, ...) and multi-shard commands end the round: the batches are sent, one message per
//!    shard, all in flight together, and their replies are merged back in command order before
//!    the special command runs.
//! 4. Write every reply of the read with one send (large values are sent from where they are
//!    stored, not copied into the reply buffer: see `crate::resp::encode`).
//!
//! So a pipeline of N commands over K shards costs at most K messages per round, never one per
//! command. Commands on one shard run in pipeline order; commands of one pipeline on different
//! shards may take effect in either order relative to each other (a client that needs an order
//! across shards waits for the reply first). Replies are always in order.

use crate::cmd::{self, table::Route, CommandSpec};
use crate::coord;
use crate::resp::encode::{append_replies, large_bytes};
use crate::resp::{LargeRefs, Limits, Parser, Protocol, ReplyWriter};
use crate::shard::{ClientInfo, Request, Response, Shard};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// During shutdown, a connection with no input for this long is closed.
const SHUTDOWN_IDLE_CLOSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Largest read straight into a large bulk's buffer (see `Parser::large_spare`): big enough
/// that a 512 MiB value takes a few hundred reads, small enough that the mapping grows with
/// what arrives.
const DIRECT_READ_MAX_BYTES: usize = 4 << 20;

/// One shard's replies to a batch: the encoded replies, the end offset of each, the large
/// values they refer to.
type BatchReplies = (Vec<u8>, Vec<usize>, LargeRefs);

/// Marks a reply produced on the connection's own shard in a round's order list.
const LOCAL: u32 = u32::MAX;

/// Per-connection state that commands may change.
pub struct Conn {
    pub shard: Rc<Shard>,
    pub info: Rc<RefCell<ClientInfo>>,
    pub proto: Protocol,
    /// Close after the replies of this read are written (QUIT, protocol error).
    pub close: bool,
    /// Close *without* writing the replies: a log failed before the writes they reveal became
    /// durable, so nothing may be acknowledged (sync mode), or the replies reached the hard
    /// output buffer limit.
    pub abort: bool,
    /// Highest LSN of this shard's log that the replies being built depend on (sync mode).
    pub observed_lsn: u64,
    /// Whether the connection may run commands: set at accept when no password is required,
    /// else by AUTH or HELLO ... AUTH (see [`crate::auth`]).
    pub authenticated: bool,
}

/// Replies of one round.
#[derive(Default)]
struct Round {
    /// Commands per destination shard (indexed by shard id; unused for our own shard).
    batches: Vec<Vec<Vec<Bytes>>>,
    /// Reply order: (shard or LOCAL, index within that source).
    order: Vec<(u32, u32)>,
    /// Local replies written after the first remote command of the round.
    local: Vec<u8>,
    local_ends: Vec<usize>,
    local_large: LargeRefs,
    has_remote: bool,
}

impl Round {
    fn new(shards: usize) -> Self {
        Round { batches: vec![Vec::new(); shards], ..Default::default() }
    }
}

/// Serves one accepted connection until it closes or the server shuts down.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let g = shard.global.clone();
    let id = g.next_client_id.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let now = std::time::Instant::now();
    let info = Rc::new(RefCell::new(ClientInfo {
        id,
        addr: stream.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        laddr: stream.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
        name: None,
        lib_name: None,
        lib_ver: None,
        created: now,
        last_active: now,
        last_cmd: "NULL",
        proto: Protocol::Resp2,
        qbuf: 0,
        phase: "r",
    }));
    shard.clients.borrow_mut().insert(id, info.clone());
    let authenticated = !g.auth.required();
    let mut conn = Conn {
        shard: shard.clone(),
        info,
        proto: Protocol::Resp2,
        close: false,
        abort: false,
        observed_lsn: 0,
        authenticated,
    };
    let result = run(&mut conn, stream.buffered_with(glommio::net::Preallocated::new(16 * 1024))).await;
    if let Err(e) = result {
        tracing::debug!(client = id, error = %e, "connection ended with an error");
    }
    shard.clients.borrow_mut().remove(&id);
    g.connected_clients.fetch_sub(1, Ordering::Relaxed);
}

async fn run(conn: &mut Conn, mut stream: TcpStream<glommio::net::Preallocated>) -> std::io::Result<()> {
    let shard = conn.shard.clone();
    let g = shard.global.clone();
    let mut parser = Parser::new(limits(conn));
    // Both buffers start empty and grow with use: an idle connection holds no buffer memory
    // beyond the stream's fixed read buffer (see `IDLE_RSS_PER_CONNECTION_BYTES_MAX` in
    // tests/hostile_clients.rs).
    let mut qbuf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut large: LargeRefs = Vec::new();
    let mut cmds: Vec<Vec<Bytes>> = Vec::new();
    loop {
        conn.info.borrow_mut().phase = "r";
        // Read, unless shutdown was requested while we were idle. After shutdown is requested,
        // keep serving while input keeps arriving (a pipeline already in the socket is
        // finished); close once the client is idle. The event's waker registration lives and
        // dies with this future (see `LocalEvent`): it must not pile up one waker per read.
        let stop = async {
            shard.shutdown.wait().await;
            glommio::timer::sleep(SHUTDOWN_IDLE_CLOSE).await;
        };
        let chunk_len = match parser.large_spare(DIRECT_READ_MAX_BYTES, qbuf.len()) {
            // The payload of a large bulk is read from the socket straight into its own buffer,
            // in reads of up to `DIRECT_READ_MAX_BYTES` (glommio reads directly into a buffer
            // at least as large as its own when that is empty).
            Some(Ok(room)) => {
                let read = futures_lite::AsyncReadExt::read(&mut stream, room);
                match futures_lite::future::or(async { Some(read.await) }, async {
                    stop.await;
                    None
                })
                .await
                {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(0)) => return Ok(()),
                    Some(Ok(n)) => {
                        parser.large_filled(n);
                        n
                    }
                }
            }
            // Otherwise (or if the buffer could not grow: `parse` reports that when it moves
            // the bytes) through the stream's read buffer and the query buffer.
            _ => {
                let read = stream.fill_buf();
                let n = match futures_lite::future::or(async { Some(read.await) }, async {
                    stop.await;
                    None
                })
                .await
                {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok([])) => return Ok(()),
                    Some(Ok(data)) => {
                        qbuf.extend_from_slice(data);
                        data.len()
                    }
                };
                stream.consume(n);
                n
            }
        };
        shard.stats.net_input_bytes.set(shard.stats.net_input_bytes.get() + chunk_len as u64);
        conn.info.borrow_mut().phase = "x";
        let parsed = parser.parse(&mut qbuf, &mut cmds);
        if !cmds.is_empty() {
            execute_all(conn, &mut cmds, &mut out, &mut large).await;
            cmds.clear();
        }
        if let Err(e) = parsed {
            shard.stats.commands.error_replies.inc();
            ReplyWriter::new(&mut out, conn.proto).error_bytes(&e.message());
            conn.close = true;
        } else if qbuf.len() + parser.held_bytes() > g.client_query_buffer_limit.load(Ordering::Relaxed) {
            tracing::warn!(
                client = conn.info.borrow().id,
                bytes = qbuf.len() + parser.held_bytes(),
                "closing client that reached max query buffer length"
            );
            conn.close = true;
        }
        {
            let mut info = conn.info.borrow_mut();
            info.qbuf = qbuf.len() + parser.held_bytes();
            info.last_active = std::time::Instant::now();
        }
        if !out.is_empty() {
            let observed = std::mem::take(&mut conn.observed_lsn);
            if let Err(e) = before_reply(&shard, observed).await {
                tracing::warn!(client = conn.info.borrow().id, "closing connection without replies: {e}");
                conn.abort = true;
            }
        }
        if conn.abort {
            return Ok(());
        }
        if !out.is_empty() {
            // Let every other connection woken in this reactor pass read and execute first, so
            // replies leave in a burst (as Redis writes all replies before it sleeps): clients
            // then find many replies per wake-up instead of one.
            conn.info.borrow_mut().phase = "y";
            futures_lite::future::yield_now().await;
            conn.info.borrow_mut().phase = "w";
            if !write_replies(&mut stream, &out, &large, &g).await? {
                tracing::warn!(
                    client = conn.info.borrow().id,
                    "closing client that stayed over the soft output buffer limit (client-output-buffer-limit)"
                );
                return Ok(());
            }
            let sent = (out.len() + large_bytes(&large)) as u64;
            shard.stats.net_output_bytes.set(shard.stats.net_output_bytes.get() + sent);
            out.clear();
            large.clear();
        }
        if out.capacity() > 1024 * 1024 {
            out.shrink_to(16 * 1024);
        }
        if conn.close {
            return Ok(());
        }
        parser.set_limits(limits(conn));
        if qbuf.is_empty() {
            // No partial command: release the buffer (its bytes may still be shared with
            // arguments just executed); the next read allocates what it needs.
            qbuf = BytesMut::new();
        } else if qbuf.capacity() - qbuf.len() < 4096 {
            qbuf.reserve(16 * 1024);
        }
    }
}

/// Writes `out`, with the large values of `large` in their places, to the client. Returns
/// `Ok(false)` (the caller closes the connection) when the unwritten part stays at or over the
/// soft output limit for longer than its soft seconds: a client that does not read its replies
/// (Redis's `client-output-buffer-limit` soft limit). The hard limit is checked while the
/// replies are built (`execute_all`), since the unwritten part only shrinks here.
async fn write_replies(
    stream: &mut TcpStream<glommio::net::Preallocated>,
    out: &[u8],
    large: &LargeRefs,
    g: &crate::shard::Global,
) -> std::io::Result<bool> {
    // The buffer cut at each large value, the values in between (no allocation without any).
    let single = [out];
    let mut split: Vec<&[u8]> = Vec::new();
    if !large.is_empty() {
        let mut from = 0;
        for (at, v) in large {
            split.push(&out[from..*at]);
            split.push(v);
            from = *at;
        }
        split.push(&out[from..]);
    }
    let pieces: &[&[u8]] = if large.is_empty() { &single } else { &split };
    let mut unwritten = out.len() + large_bytes(large);
    let limit = g.client_output_buffer_limit.normal();
    let mut over_since: Option<std::time::Instant> = None;
    let mut piece = 0;
    let mut written = 0;
    while unwritten > 0 {
        while written == pieces[piece].len() {
            piece += 1;
            written = 0;
        }
        let rest = &pieces[piece][written..];
        let n = if limit.soft_bytes > 0 && unwritten as u64 >= limit.soft_bytes {
            let since = *over_since.get_or_insert_with(std::time::Instant::now);
            let allowed = std::time::Duration::from_secs(limit.soft_seconds);
            let Some(left) = allowed.checked_sub(since.elapsed()).filter(|d| !d.is_zero()) else {
                return Ok(false);
            };
            let write = async { Some(stream.write(rest).await) };
            let expire = async {
                glommio::timer::sleep(left).await;
                None
            };
            match futures_lite::future::or(write, expire).await {
                Some(r) => r?,
                None => return Ok(false),
            }
        } else {
            over_since = None;
            stream.write(rest).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n;
        unwritten -= n;
    }
    Ok(true)
}

/// True (and the connection is to close without its replies) when `pending_bytes` of replies
/// reached the hard output limit (`client-output-buffer-limit normal <hard>`), as Redis closes
/// such a client without writing what it has buffered.
fn over_hard_output_limit(conn: &mut Conn, pending_bytes: usize) -> bool {
    let hard_bytes = conn.shard.global.client_output_buffer_limit.normal().hard_bytes;
    if hard_bytes == 0 || (pending_bytes as u64) < hard_bytes {
        return false;
    }
    tracing::warn!(
        client = conn.info.borrow().id,
        bytes = pending_bytes,
        "closing client that reached the hard output buffer limit (client-output-buffer-limit)"
    );
    conn.abort = true;
    true
}

/// What a reply must wait for on this shard's log: in `sync` mode, the highest LSN the replies
/// depend on (the pipeline's own writes, and undurable writes of the keys it read); in `async`
/// mode, only backpressure when the log is more than twice its buffer behind.
async fn before_reply(shard: &Shard, observed_lsn: u64) -> Result<(), String> {
    let Some(w) = shard.wal.as_ref() else {
        return Ok(());
    };
    match w.durability() {
        crate::wal::Durability::Sync if observed_lsn > 0 => w.wait_durable(observed_lsn).await,
        crate::wal::Durability::Async if w.pending_bytes() > 2 * shard.global.config.wal_buffer_bytes => {
            w.count_delayed_write();
            let _ = w.wait_all_durable().await;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn limits(conn: &Conn) -> Limits {
    Limits { max_bulk_bytes: conn.shard.global.proto_max_bulk_len.load(Ordering::Relaxed), ..Limits::default() }
}

/// Executes parsed commands in rounds and appends their replies to `out` in order.
async fn execute_all(conn: &mut Conn, cmds: &mut [Vec<Bytes>], out: &mut Vec<u8>, large: &mut LargeRefs) {
    let shard = conn.shard.clone();
    let n = shard.shards();
    let mut round = Round::new(n);
    let mut processed = 0u64;
    let mut last_cmd = "NULL";
    for args in cmds.iter_mut() {
        let pending = out.len() + round.local.len() + large_bytes(large) + large_bytes(&round.local_large);
        if conn.close || conn.abort || over_hard_output_limit(conn, pending) {
            break;
        }
        let stats = &shard.stats.commands;
        let Some(spec) = cmd::lookup(&args[0]) else {
            stats.error_replies.inc();
            local_reply(&mut round, out, large, conn.proto, |w| w.error_bytes(&cmd::unknown_command_error(args)));
            continue;
        };
        // Redis's order: unknown command, arity, then authentication.
        if !spec.arity_ok(args.len()) || (matches!(spec.name, "mset" | "msetnx") && args.len() % 2 == 0) {
            stats.reject(spec);
            local_reply(&mut round, out, large, conn.proto, |w| w.error(&cmd::arity_error(spec.name)));
            continue;
        }
        if !conn.authenticated && !crate::auth::allowed_before_auth(spec.name) {
            stats.reject(spec);
            local_reply(&mut round, out, large, conn.proto, |w| w.error(crate::auth::NOAUTH));
            continue;
        }
        processed += 1;
        last_cmd = spec.name;
        let start = std::time::Instant::now();
        match spec.route {
            Route::Local => {
                local_reply(&mut round, out, large, conn.proto, |w| {
                    crate::cmd::server::run_local(spec, args, w);
                    stats.record(spec, start, false);
                });
            }
            Route::Keys => {
                let owner = owner_of(spec, args, n);
                match owner {
                    Some(s) if s == shard.id => {
                        if shard.gate.is_held() {
                            shard.gate.wait_free().await;
                        }
                        let proto = conn.proto;
                        let mut observed = 0;
                        local_reply(&mut round, out, large, proto, |w| {
                            let at = w.buf.len();
                            let mut store = shard.store.borrow_mut();
                            let mut cx = shard.exec(&mut store);
                            cmd::execute_keyed(spec, args, &mut cx, w);
                            observed = cx.observed_lsn;
                            stats.record(spec, start, cmd::stats::is_error_reply(w.buf, at));
                        });
                        conn.observed_lsn = conn.observed_lsn.max(observed);
                    }
                    Some(s) => {
                        let idx = round.batches[s].len() as u32;
                        round.batches[s].push(std::mem::take(args));
                        round.order.push((s as u32, idx));
                        round.has_remote = true;
                    }
                    None => {
                        conn.abort |= !flush_round(&shard, conn.proto, &mut round, out, large).await;
                        let (start, at) = (std::time::Instant::now(), out.len());
                        let mut w = ReplyWriter::with_large(out, large, conn.proto);
                        coord::run_multi(&shard, spec, args, &mut w).await;
                        stats.record(spec, start, cmd::stats::is_error_reply(out, at));
                    }
                }
            }
            Route::Connection => {
                conn.abort |= !flush_round(&shard, conn.proto, &mut round, out, large).await;
                let (start, at) = (std::time::Instant::now(), out.len());
                crate::cmd::server::run_connection(conn, spec, args, out).await;
                stats.record(spec, start, cmd::stats::is_error_reply(out, at));
            }
        }
    }
    conn.abort |= !flush_round(&shard, conn.proto, &mut round, out, large).await;
    over_hard_output_limit(conn, out.len() + large_bytes(large));
    let s = &shard.stats.commands_processed;
    s.set(s.get() + processed);
    conn.info.borrow_mut().last_cmd = last_cmd;
}

/// The single shard owning every key of the command, or `None` if they span shards.
fn owner_of(spec: &CommandSpec, args: &[Bytes], n: usize) -> Option<usize> {
    if n == 1 {
        return Some(0);
    }
    let mut keys = spec.key_indices(args.len());
    let first = crate::shard::shard_of(&args[keys.next()?], n);
    keys.all(|i| crate::shard::shard_of(&args[i], n) == first).then_some(first)
}

/// Writes a reply produced on this shard: straight into `out` while the round has no remote
/// replies before it, else into the round's local buffer to be merged in order.
fn local_reply(
    round: &mut Round,
    out: &mut Vec<u8>,
    large: &mut LargeRefs,
    proto: Protocol,
    f: impl FnOnce(&mut ReplyWriter),
) {
    if !round.has_remote {
        f(&mut ReplyWriter::with_large(out, large, proto));
        return;
    }
    f(&mut ReplyWriter::with_large(&mut round.local, &mut round.local_large, proto));
    round.order.push((LOCAL, round.local_ends.len() as u32));
    round.local_ends.push(round.local.len());
}

/// Sends every pending batch (all in flight together), waits for the replies and appends all
/// of the round's replies to `out` in command order.
async fn flush_round(
    shard: &Rc<Shard>,
    proto: Protocol,
    round: &mut Round,
    out: &mut Vec<u8>,
    large: &mut LargeRefs,
) -> bool {
    if !round.has_remote {
        return true;
    }
    let mut calls = Vec::new();
    for (s, batch) in round.batches.iter_mut().enumerate() {
        if !batch.is_empty() {
            let cmds = std::mem::take(batch);
            calls.push((s, shard.send(s, Request::Batch { proto, cmds }).await));
        }
    }
    let mut replies: Vec<Option<BatchReplies>> = vec![None; round.batches.len()];
    let mut durable = true;
    for (s, call) in calls {
        if let Some(call) = call {
            match call.await {
                Response::Batch { out, ends, large } => replies[s] = Some((out, ends, large)),
                Response::Failed(_) => durable = false,
                _ => {}
            }
        }
    }
    for &(src, idx) in &round.order {
        let (buf, ends, refs) = if src == LOCAL {
            (&round.local, &round.local_ends, &round.local_large)
        } else {
            match &replies[src as usize] {
                Some((b, e, l)) => (b, e, l),
                None => {
                    ReplyWriter::new(out, proto).error("ERR shard unavailable (server shutting down)");
                    continue;
                }
            }
        };
        let start = if idx == 0 { 0 } else { ends[idx as usize - 1] };
        append_replies(out, large, buf, refs, start, ends[idx as usize]);
    }
    round.order.clear();
    round.local.clear();
    round.local_ends.clear();
    round.local_large.clear();
    round.has_remote = false;
    durable
}
