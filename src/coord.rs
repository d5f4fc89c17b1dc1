//! Multi-shard commands: split per shard, take the gates, run the parts, merge the replies.
//!
//! Used only when a command's keys span shards (with one shard, or keys that happen to share
//! one, the command runs whole on its shard). The protocol, per command:
//! 1. Group key positions by owning shard.
//! 2. Take each involved shard's gate in ascending shard order (the local one directly, remote
//!    ones with [`Request::Lock`]); see `shard` for why this is atomic and deadlock-free.
//! 3. Send every part at once and await them all ([`PartOp`]).
//! 4. Release the gates (remote ones with a fire-and-forget [`Request::Unlock`]).
//!
//! Cost: one round trip per remote shard to lock (sequential, to keep the order) plus one for
//! the parts (parallel). Only MGET/MSET-style commands whose keys span shards pay it.

use crate::cmd::{err, CommandSpec};
use crate::resp::ReplyWriter;
use crate::shard::ops::{run_part, PartOp, PartResult};
use crate::shard::{shard_of, Request, Response, Shard};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Runs a multi-key command whose keys span shards.
pub async fn run_multi(shard: &Rc<Shard>, spec: &CommandSpec, args: &[Bytes], out: &mut ReplyWriter<'_>) {
    let n = shard.shards();
    let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in spec.key_indices(args.len()) {
        by_shard.entry(shard_of(&args[i], n)).or_default().push(i);
    }
    let involved: Vec<usize> = by_shard.keys().copied().collect();
    let tx = shard.new_tx();
    let mut locked = Vec::with_capacity(involved.len());
    for &s in &involved {
        let ok = if s == shard.id {
            shard.gate.acquire(tx).await;
            true
        } else {
            matches!(shard.call(s, Request::Lock { tx }).await, Response::Locked)
        };
        if !ok {
            unlock(shard, tx, &locked);
            return out.error("ERR shard unavailable (server shutting down)");
        }
        locked.push(s);
    }
    let key = |i: usize| args[i].clone();
    run_locked(shard, tx, spec, args, &by_shard, &key, out).await;
    unlock(shard, tx, &locked);
    // In sync mode the reply waits until every involved shard's log is durable.
    if shard.sync_wal().is_some() {
        for &s in &involved {
            let ok = if s == shard.id {
                crate::shard::ops::wait_local_durable(shard).await.is_ok()
            } else {
                !matches!(shard.call(s, Request::WaitDurable).await, Response::Failed(_) | Response::Unavailable)
            };
            if !ok {
                out.buf.clear();
                out.error("IOERR the write-ahead log failed before this command was durable");
                return;
            }
        }
    }
}

async fn run_locked(
    shard: &Rc<Shard>,
    tx: u64,
    spec: &CommandSpec,
    args: &[Bytes],
    by_shard: &BTreeMap<usize, Vec<usize>>,
    key: &dyn Fn(usize) -> Bytes,
    out: &mut ReplyWriter<'_>,
) {
    // A write is refused before any part runs if a shard's log cannot take writes.
    if spec.is_write() {
        for &s in by_shard.keys() {
            let refusal = if s == shard.id { shard.wal.as_ref().and_then(|w| w.write_refusal()) } else { None };
            if let Some(r) = refusal {
                return out.error(&r);
            }
        }
    }
    if spec.denies_oom() {
        let admit = parts(shard, tx, by_shard.keys().map(|&s| (s, PartOp::Admit)).collect()).await;
        if let Some(r) = refused(&admit) {
            return out.error(&r);
        }
    }
    match spec.name {
        "mget" => {
            let ops = by_shard.iter().map(|(&s, idx)| (s, PartOp::Mget(idx.iter().map(|&i| key(i)).collect())));
            let results = parts(shard, tx, ops.collect()).await;
            let mut values: Vec<Option<Bytes>> = vec![None; args.len()];
            for ((_, idx), r) in by_shard.iter().zip(results) {
                if let PartResult::Values(vs) = r {
                    for (&i, v) in idx.iter().zip(vs) {
                        values[i] = v;
                    }
                }
            }
            out.array(args.len() - 1);
            for v in &values[1..] {
                match v {
                    // Only a large value comes back shared (`Entry::value_bytes`).
                    Some(v) => out.bulk_value(v, (v.len() >= crate::large::LARGE_VALUE_MIN_BYTES).then_some(v)),
                    None => out.null(),
                }
            }
        }
        "mset" | "msetnx" => {
            if spec.name == "msetnx" {
                let ops = by_shard.iter().map(|(&s, idx)| (s, PartOp::Exists(idx.iter().map(|&i| key(i)).collect())));
                if sum(parts(shard, tx, ops.collect()).await) > 0 {
                    return out.integer(0);
                }
            }
            let ops =
                by_shard.iter().map(|(&s, idx)| (s, PartOp::Mset(idx.iter().map(|&i| (key(i), key(i + 1))).collect())));
            parts(shard, tx, ops.collect()).await;
            if spec.name == "msetnx" {
                out.integer(1)
            } else {
                out.ok()
            }
        }
        "del" | "unlink" | "exists" => {
            let mk = |keys: Vec<Bytes>| {
                if spec.name == "exists" {
                    PartOp::Exists(keys)
                } else {
                    PartOp::Del(keys)
                }
            };
            let ops = by_shard.iter().map(|(&s, idx)| (s, mk(idx.iter().map(|&i| key(i)).collect())));
            let results = parts(shard, tx, ops.collect()).await;
            match refused(&results) {
                Some(r) => out.error(&r),
                None => out.integer(sum(results)),
            }
        }
        "rename" | "renamenx" => rename(shard, tx, args, spec.name == "renamenx", out).await,
        other => out.error(&format!("ERR '{other}' cannot span shards")),
    }
}

fn refused(rs: &[PartResult]) -> Option<String> {
    rs.iter().find_map(|r| if let PartResult::Refused(e) = r { Some(e.clone()) } else { None })
}

async fn rename(shard: &Rc<Shard>, tx: u64, args: &[Bytes], nx: bool, out: &mut ReplyWriter<'_>) {
    let n = shard.shards();
    let (src, dst) = (&args[1], &args[2]);
    let (s1, s2) = (shard_of(src, n), shard_of(dst, n));
    if nx {
        let exists =
            parts(shard, tx, vec![(s1, PartOp::Exists(vec![src.clone()])), (s2, PartOp::Exists(vec![dst.clone()]))])
                .await;
        let mut it = exists.into_iter();
        if count(it.next()) == 0 {
            return out.error(err::NO_SUCH_KEY);
        }
        if count(it.next()) > 0 {
            return out.integer(0);
        }
    }
    let taken = parts(shard, tx, vec![(s1, PartOp::Take(src.clone()))]).await;
    if let Some(r) = refused(&taken) {
        return out.error(&r);
    }
    let Some(PartResult::Taken(Some((value, expire_at_ms)))) = taken.into_iter().next() else {
        return out.error(err::NO_SUCH_KEY);
    };
    let put = parts(shard, tx, vec![(s2, PartOp::Put { key: dst.clone(), value: value.clone(), expire_at_ms })]).await;
    if let Some(r) = refused(&put) {
        // The destination's log refused: restore the source on its own shard (whose log just
        // accepted the removal), so the rename fails as a whole and nothing is lost.
        parts(shard, tx, vec![(s1, PartOp::Put { key: src.clone(), value, expire_at_ms })]).await;
        return out.error(&r);
    }
    if nx {
        out.integer(1)
    } else {
        out.ok()
    }
}

fn count(r: Option<PartResult>) -> i64 {
    match r {
        Some(PartResult::Count(c)) => c,
        _ => 0,
    }
}

fn sum(rs: Vec<PartResult>) -> i64 {
    rs.into_iter().map(|r| count(Some(r))).sum()
}

/// Runs parts on their shards, all in flight together; results in the order given.
async fn parts(shard: &Rc<Shard>, tx: u64, ops: Vec<(usize, PartOp)>) -> Vec<PartResult> {
    let mut pending = Vec::with_capacity(ops.len());
    for (s, op) in ops {
        if s == shard.id {
            pending.push(Err(run_part(shard, tx, op).0));
        } else {
            pending.push(Ok(shard.send(s, Request::Part { tx, op }).await));
        }
    }
    let mut results = Vec::with_capacity(pending.len());
    for p in pending {
        results.push(match p {
            Err(local) => local,
            Ok(Some(call)) => match call.await {
                Response::Part(r) => r,
                Response::Failed(e) => PartResult::Refused(format!("IOERR {e}")),
                _ => PartResult::NotLocked,
            },
            Ok(None) => PartResult::NotLocked,
        });
    }
    results
}

fn unlock(shard: &Rc<Shard>, tx: u64, locked: &[usize]) {
    for &s in locked {
        if s == shard.id {
            shard.gate.release(tx);
        } else {
            shard.notify(s, Request::Unlock { tx });
        }
    }
}
