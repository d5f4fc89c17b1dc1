//! What one shard does for another: batches of single-shard commands, the parts of
//! multi-shard commands, and server-wide operations.
//!
//! Each function here runs synchronously on the owning executor, so each is atomic on its
//! shard. The same functions serve the local shard (called directly) and remote ones (called
//! from the receive loop), so there is one code path per operation.

use super::{Request, Response, Shard};
use crate::cmd::{self, keys::glob_match, Exec};
use crate::resp::{Protocol, ReplyWriter};
use crate::store::{now_ms, Entry, StoreStats};
use bytes::Bytes;
use std::rc::Rc;

/// One shard's part of a multi-shard command. Runs while the transaction holds the shard's gate.
pub enum PartOp {
    /// Values of these keys (None when missing).
    Mget(Vec<Bytes>),
    /// Set these pairs (no TTL).
    Mset(Vec<(Bytes, Bytes)>),
    /// Delete these keys; count removed.
    Del(Vec<Bytes>),
    /// Count existing keys (duplicates count each time).
    Exists(Vec<Bytes>),
    /// Remove and return a key (RENAME's source).
    Take(Bytes),
    /// Store a key with an absolute expiry (RENAME's destination).
    Put { key: Bytes, value: Bytes, expire_at_ms: Option<u64> },
    /// The OOM check of a command that may add memory, before any part of it runs: evict down
    /// to the limit, or refuse (see `Exec::admit`).
    Admit,
}

pub enum PartResult {
    /// Values read (a large value is shared, not copied).
    Values(Vec<Option<Bytes>>),
    Count(i64),
    Taken(Option<(Bytes, Option<u64>)>),
    Done,
    /// The transaction did not hold this shard's gate: a bug, reported rather than ignored.
    NotLocked,
    /// The shard's log cannot take writes now (the error reply to give).
    Refused(String),
}

/// Server-wide operations, sent to every shard.
pub enum AdminOp {
    DbSize,
    Flush,
    Keys(Bytes),
    /// One SCAN step on this shard's table.
    Scan {
        cursor: u64,
        count: usize,
        pattern: Option<Bytes>,
        only_strings: bool,
    },
    RandomKey,
    Report,
    ClientList,
    ResetStats,
}

impl AdminOp {
    /// Whether the result depends on keys (and so, in `sync` mode, waits for the shard's
    /// undurable writes before it is returned). INFO and CLIENT LIST do not.
    pub fn reads_keys(&self) -> bool {
        matches!(self, AdminOp::DbSize | AdminOp::Flush | AdminOp::Keys(_) | AdminOp::Scan { .. } | AdminOp::RandomKey)
    }
}

/// A shard's figures for INFO.
#[derive(Debug, Default, Clone)]
pub struct ShardReport {
    pub store: StoreStats,
    pub commands_processed: u64,
    pub net_input_bytes: u64,
    pub net_output_bytes: u64,
    pub connected_clients: u64,
    pub wal: Option<WalReport>,
    pub snapshot: Option<SnapshotReport>,
    pub commands: crate::cmd::stats::CommandStatsSnapshot,
}

/// A shard's snapshot figures for INFO persistence.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub stats: crate::snapshot::task::SnapshotStats,
    pub running: bool,
    pub preserved_bytes: u64,
    pub preserved_peak_bytes: u64,
    pub recovery: crate::wal::replay::RecoveryStats,
}

/// A shard's log figures for INFO persistence.
#[derive(Debug, Clone)]
pub struct WalReport {
    pub io_mode: crate::wal::file::IoMode,
    pub fault: Option<crate::wal::LogFault>,
    pub last_lsn: u64,
    pub durable_lsn: u64,
    pub stats: crate::wal::writer::LogStats,
    pub recovery: crate::wal::replay::RecoveryStats,
}

pub enum AdminResult {
    Count(i64),
    Keys(Vec<Vec<u8>>),
    Scan {
        next: u64,
        keys: Vec<Vec<u8>>,
    },
    Key(Option<Vec<u8>>),
    Report(Box<ShardReport>),
    Clients(Vec<String>),
    Done,
    /// A write refused because the log cannot take writes (the error reply to give).
    Refused(String),
    /// The log failed before the effects became durable (sync mode).
    Failed(String),
}

fn exec<'a>(shard: &'a Shard, store: &'a mut crate::store::Store) -> Exec<'a> {
    shard.exec(store)
}

/// Runs single-shard key commands in order and returns their encoded replies and the log LSN
/// the replies depend on (see `Exec::observed_lsn`).
pub fn run_batch(shard: &Shard, proto: Protocol, cmds: &mut [Vec<Bytes>]) -> (Response, u64) {
    let mut out = Vec::with_capacity(cmds.len() * 16);
    let mut ends = Vec::with_capacity(cmds.len());
    let mut large = Vec::new();
    let mut store = shard.store.borrow_mut();
    let mut observed = 0;
    let hard_bytes = shard.global.client_output_buffer_limit.normal().hard_bytes;
    for args in cmds {
        // Replies at the client's hard output limit close its connection without replies
        // (`conn`): as Redis does for a client over its limit, run nothing more for it.
        if hard_bytes > 0 && (out.len() + crate::resp::encode::large_bytes(&large)) as u64 >= hard_bytes {
            ends.push(out.len());
            continue;
        }
        let mut w = ReplyWriter::with_large(&mut out, &mut large, proto);
        match cmd::lookup(&args[0]) {
            Some(spec) => {
                let (start, at) = (std::time::Instant::now(), w.buf.len());
                let mut cx = exec(shard, &mut store);
                cmd::execute_keyed(spec, args, &mut cx, &mut w);
                observed = observed.max(cx.observed_lsn);
                shard.stats.commands.record(spec, start, cmd::stats::is_error_reply(w.buf, at));
            }
            None => w.error_bytes(&cmd::unknown_command_error(args)),
        }
        ends.push(out.len());
    }
    (Response::Batch { out, ends, large }, observed)
}

/// Runs one part; returns its result and the log LSN it depends on.
pub fn run_part(shard: &Shard, tx: u64, op: PartOp) -> (PartResult, u64) {
    if !shard.gate.held_by(tx) {
        return (PartResult::NotLocked, 0);
    }
    let mut store = shard.store.borrow_mut();
    let mut cx = exec(shard, &mut store);
    let writes = !matches!(op, PartOp::Mget(_) | PartOp::Exists(_) | PartOp::Admit);
    if let Some(refusal) = cx.wal.and_then(|w| w.write_refusal()).filter(|_| writes) {
        return (PartResult::Refused(refusal), 0);
    }
    let r = match op {
        PartOp::Mget(keys) => {
            PartResult::Values(keys.iter().map(|k| cx.lookup_read(k).map(Entry::value_bytes)).collect())
        }
        PartOp::Mset(pairs) => {
            for (k, v) in pairs {
                cx.write_set_bytes(&k, v, None);
            }
            PartResult::Done
        }
        PartOp::Del(keys) => PartResult::Count(keys.iter().filter(|k| cx.write_del(k)).count() as i64),
        PartOp::Exists(keys) => PartResult::Count(keys.iter().filter(|k| cx.exists(k)).count() as i64),
        PartOp::Take(key) => PartResult::Taken(cx.write_take(&key).map(|e| (e.value_bytes(), e.expire_at_ms()))),
        PartOp::Put { key, value, expire_at_ms } => {
            cx.write_entry(Entry::from_bytes(&key, value, expire_at_ms));
            PartResult::Done
        }
        PartOp::Admit => match cx.admit() {
            true => PartResult::Done,
            false => PartResult::Refused(cmd::err::OOM.to_string()),
        },
    };
    (r, cx.observed_lsn)
}

pub fn run_admin(shard: &Shard, op: AdminOp) -> AdminResult {
    let now = now_ms();
    match op {
        AdminOp::DbSize => AdminResult::Count(shard.store.borrow().len() as i64),
        AdminOp::Flush => {
            let mut store = shard.store.borrow_mut();
            let mut cx = exec(shard, &mut store);
            if let Some(refusal) = cx.wal.and_then(|w| w.write_refusal()) {
                return AdminResult::Refused(refusal);
            }
            cx.write_flush();
            AdminResult::Done
        }
        AdminOp::Keys(pattern) => {
            let store = shard.store.borrow();
            let mut keys = Vec::new();
            let mut cursor = 0;
            loop {
                cursor = store.scan(cursor, now, |e| {
                    if glob_match(&pattern, e.key()) {
                        keys.push(e.key().to_vec());
                    }
                });
                if cursor == 0 {
                    break;
                }
            }
            AdminResult::Keys(keys)
        }
        AdminOp::Scan { cursor, count, pattern, only_strings } => {
            let store = shard.store.borrow();
            let mut keys = Vec::new();
            let mut next = cursor;
            // Like Redis: visit buckets until about `count` entries were seen (bounded to
            // count*10 bucket visits so sparse tables stay cheap per call).
            let mut visits = 0usize;
            loop {
                next = store.scan(next, now, |e| {
                    if only_strings && pattern.as_ref().is_none_or(|p| glob_match(p, e.key())) {
                        keys.push(e.key().to_vec());
                    }
                });
                visits += 1;
                if next == 0 || keys.len() >= count || visits >= count.saturating_mul(10) {
                    break;
                }
            }
            AdminResult::Scan { next, keys }
        }
        AdminOp::RandomKey => AdminResult::Key(shard.store.borrow_mut().random_key(now)),
        AdminOp::Report => AdminResult::Report(Box::new(ShardReport {
            store: shard.store.borrow().stats(),
            commands_processed: shard.stats.commands_processed.get(),
            net_input_bytes: shard.stats.net_input_bytes.get(),
            net_output_bytes: shard.stats.net_output_bytes.get(),
            connected_clients: shard.clients.borrow().len() as u64,
            wal: shard.wal.as_ref().map(|w| WalReport {
                io_mode: w.io_mode(),
                fault: w.fault(),
                last_lsn: w.last_lsn(),
                // The log's `durable_lsn` is the first LSN not yet durable; report the last
                // durable one, comparable with `last_lsn`.
                durable_lsn: w.durable_lsn().saturating_sub(1),
                stats: w.stats(),
                recovery: shard.recovery.borrow().clone(),
            }),
            snapshot: shard.snapshots.as_ref().map(|c| {
                let store = shard.store.borrow();
                SnapshotReport {
                    stats: c.stats(),
                    running: c.is_running(),
                    preserved_bytes: store.snapshot_preserved_bytes() as u64,
                    preserved_peak_bytes: store.snapshot_preserved_peak_bytes() as u64,
                    recovery: shard.recovery.borrow().clone(),
                }
            }),
            commands: shard.stats.commands.snapshot(),
        })),
        AdminOp::ClientList => {
            let clients = shard.clients.borrow();
            let mut v: Vec<_> = clients.values().map(|c| (c.borrow().id, c.borrow().line())).collect();
            v.sort_by_key(|(id, _)| *id);
            AdminResult::Clients(v.into_iter().map(|(_, l)| l).collect())
        }
        AdminOp::ResetStats => {
            shard.store.borrow_mut().reset_stats();
            shard.stats.commands_processed.set(0);
            shard.stats.net_input_bytes.set(0);
            shard.stats.net_output_bytes.set(0);
            shard.stats.commands.reset();
            AdminResult::Done
        }
    }
}

/// Runs `op` on every shard (the local one directly, the others in parallel over the mesh)
/// and returns the results in shard order.
pub async fn on_all_shards(shard: &Rc<Shard>, op: impl Fn() -> AdminOp) -> Vec<AdminResult> {
    let mut calls = Vec::new();
    for s in 0..shard.shards() {
        if s != shard.id {
            calls.push(shard.send(s, Request::Admin(op())).await);
        }
    }
    let mut results = Vec::with_capacity(shard.shards());
    let mut calls = calls.into_iter();
    for s in 0..shard.shards() {
        if s == shard.id {
            let this = op();
            let reads_keys = this.reads_keys();
            let r = run_admin(shard, this);
            let waited = if reads_keys { wait_local_durable(shard).await } else { Ok(()) };
            let r = match waited {
                Ok(()) => r,
                Err(e) => AdminResult::Failed(e),
            };
            results.push(r);
        } else if let Some(Some(call)) = calls.next() {
            match call.await {
                Response::Admin(r) => results.push(r),
                Response::Failed(e) => results.push(AdminResult::Failed(e)),
                _ => results.push(AdminResult::Done),
            }
        } else {
            results.push(AdminResult::Done);
        }
    }
    results
}

/// In `sync` mode, waits until everything logged on this shard so far is durable.
pub async fn wait_local_durable(shard: &Shard) -> Result<(), String> {
    match shard.sync_wal() {
        Some(w) => w.wait_all_durable().await,
        None => Ok(()),
    }
}

/// Runs `op` on shard `to` (directly when it is this shard).
pub async fn on_shard(shard: &Rc<Shard>, to: usize, op: AdminOp) -> AdminResult {
    if to == shard.id {
        let reads_keys = op.reads_keys();
        let r = run_admin(shard, op);
        let waited = if reads_keys { wait_local_durable(shard).await } else { Ok(()) };
        return match waited {
            Ok(()) => r,
            Err(e) => AdminResult::Failed(e),
        };
    }
    match shard.call(to, Request::Admin(op)).await {
        Response::Admin(r) => r,
        Response::Failed(e) => AdminResult::Failed(e),
        _ => AdminResult::Done,
    }
}
