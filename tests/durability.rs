//! Durability of the write-ahead log, end to end: the real binary, real files on the real
//! filesystem (O_DIRECT where it works), real `kill -9`.
//!
//! Every test uses its own data directory under the temp dir (removed when the test passes)
//! and small segments (`--wal-segment-bytes 256kb` or less), so restarts read little.

mod common;
mod durability_common;

use common::*;
use durability_common::*;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn seed() -> u64 {
    let s = std::env::var("DURTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {s} (rerun with DURTEST_SEED={s})");
    s
}

/// A server error reply (not a dropped connection) is a failure in every test here.
fn crashed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

// ---------------------------------------------------------------------------------------------
// 1. sync: kill -9 at random moments, many cycles, with an exact per-key oracle.
// ---------------------------------------------------------------------------------------------

/// What one key holds: its value (None: absent) and whether it has a TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KState {
    val: Option<String>,
    ttl: bool,
}

const ABSENT: KState = KState { val: None, ttl: false };

/// The keys one writer owns and what the server acknowledged for each. Slot `KEYS` is a
/// counter (INCR only).
struct WriterModel {
    id: usize,
    keys: Vec<String>,
    acked: Vec<KState>,
    seq: u64,
}

const KEYS: usize = 4;
const WRITERS: usize = 8;
const READERS: usize = 2;

impl WriterModel {
    fn new(id: usize) -> WriterModel {
        let mut keys: Vec<String> = (0..KEYS).map(|k| format!("kc:w{id}:k{k}")).collect();
        keys.push(format!("kc:w{id}:ctr"));
        WriterModel { id, keys, acked: vec![ABSENT; KEYS + 1], seq: 0 }
    }
}

/// How one writer's cycle ended.
struct WriterRun {
    model: WriterModel,
    /// The state each touched slot has if the unacknowledged command took effect.
    inflight: Vec<(usize, KState)>,
    acked_ops: u64,
    failure: Option<String>,
}

/// Issues random writes on the writer's own keys until the connection dies. Every reply is
/// checked against the model; an acknowledged write updates `acked`.
fn writer_cycle(
    addr: std::net::SocketAddr,
    mut m: WriterModel,
    rng_seed: u64,
    start: Arc<Barrier>,
    acks: Arc<AtomicU64>,
) -> WriterRun {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut c = connect(addr);
    start.wait();
    let mut acked_ops = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            return WriterRun { model: m, inflight: vec![], acked_ops, failure: Some("server never died".into()) };
        }
        m.seq += 1;
        let w = m.id;
        let seq = m.seq;
        let val = |k: usize| format!("kc:w{w}:k{k}:s{seq}");
        let i = rng.gen_range(0..KEYS);
        let roll = rng.gen_range(0..100);
        // (command, the slots it changes with their new state, the reply expected)
        let (cmd, new, expect): (redis::Cmd, Vec<(usize, KState)>, redis::Value) = if roll < 50 {
            let v = val(i);
            let mut cmd = redis::cmd("SET");
            cmd.arg(&m.keys[i]).arg(&v);
            (cmd, vec![(i, KState { val: Some(v), ttl: false })], redis::Value::Okay)
        } else if roll < 60 {
            let j = (i + rng.gen_range(1..KEYS)) % KEYS;
            let (vi, vj) = (val(i), format!("{}m", val(j)));
            let mut cmd = redis::cmd("MSET");
            cmd.arg(&m.keys[i]).arg(&vi).arg(&m.keys[j]).arg(&vj);
            let new = vec![(i, KState { val: Some(vi), ttl: false }), (j, KState { val: Some(vj), ttl: false })];
            (cmd, new, redis::Value::Okay)
        } else if roll < 75 {
            let cur: i64 = m.acked[KEYS].val.as_deref().map_or(0, |v| v.parse().expect("counter value"));
            let mut cmd = redis::cmd("INCR");
            cmd.arg(&m.keys[KEYS]);
            (cmd, vec![(KEYS, KState { val: Some((cur + 1).to_string()), ttl: false })], redis::Value::Int(cur + 1))
        } else if roll < 83 {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&m.keys[i]);
            let existed = m.acked[i].val.is_some();
            (cmd, vec![(i, ABSENT)], redis::Value::Int(existed as i64))
        } else if roll < 91 {
            let mut cmd = redis::cmd("EXPIRE");
            cmd.arg(&m.keys[i]).arg(100_000);
            let cur = m.acked[i].clone();
            let exists = cur.val.is_some();
            let new = if exists { KState { ttl: true, ..cur } } else { cur };
            (cmd, vec![(i, new)], redis::Value::Int(exists as i64))
        } else {
            let mut cmd = redis::cmd("PERSIST");
            cmd.arg(&m.keys[i]);
            let cur = m.acked[i].clone();
            let had = cur.val.is_some() && cur.ttl;
            (cmd, vec![(i, KState { ttl: false, ..cur })], redis::Value::Int(had as i64))
        };
        match cmd.query::<redis::Value>(&mut c) {
            Ok(reply) => {
                if reply != expect {
                    let f = format!("writer {w}: {:?} replied {reply:?}, model expected {expect:?}", cmd_text(&cmd));
                    return WriterRun { model: m, inflight: vec![], acked_ops, failure: Some(f) };
                }
                for (slot, st) in new {
                    m.acked[slot] = st;
                }
                acked_ops += 1;
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) if crashed(&e) => return WriterRun { model: m, inflight: new, acked_ops, failure: None },
            Err(e) => {
                let f = format!("writer {w}: {:?} failed: {e}", cmd_text(&cmd));
                return WriterRun { model: m, inflight: vec![], acked_ops, failure: Some(f) };
            }
        }
    }
}

fn cmd_text(cmd: &redis::Cmd) -> String {
    String::from_utf8_lossy(&cmd.get_packed_command()).replace("\r\n", " ")
}

/// Reads other writers' keys (GET on any shard, MGET across shards) and records every value a
/// reply showed. In sync mode a reply may reveal a write only once it is durable, so a value
/// seen here must survive the crash even if its writer never got its own reply.
fn reader_cycle(
    addr: std::net::SocketAddr,
    rng_seed: u64,
    start: Arc<Barrier>,
) -> Result<Vec<(String, String)>, String> {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut c = connect(addr);
    start.wait();
    let mut seen = Vec::new();
    let key = |rng: &mut StdRng| {
        let w = rng.gen_range(0..WRITERS);
        let k = rng.gen_range(0..=KEYS);
        if k == KEYS {
            format!("kc:w{w}:ctr")
        } else {
            format!("kc:w{w}:k{k}")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let keys: Vec<String> = (0..if rng.gen_bool(0.5) { 1 } else { 3 }).map(|_| key(&mut rng)).collect();
        let r: redis::RedisResult<Vec<Option<String>>> = if keys.len() == 1 {
            redis::cmd("GET").arg(&keys[0]).query::<Option<String>>(&mut c).map(|v| vec![v])
        } else {
            redis::cmd("MGET").arg(&keys).query(&mut c)
        };
        match r {
            Ok(vals) => {
                for (k, v) in keys.into_iter().zip(vals) {
                    if let Some(v) = v {
                        seen.push((k, v));
                    }
                }
            }
            Err(e) if crashed(&e) => return Ok(seen),
            Err(e) => return Err(format!("reader: {e}")),
        }
    }
    Err("reader: server never died".into())
}

/// What the server holds for `key` now: GET and PTTL.
fn observe(c: &mut redis::Connection, key: &str) -> KState {
    let (val, pttl): (Option<String>, i64) =
        redis::pipe().cmd("GET").arg(key).cmd("PTTL").arg(key).query(c).expect("GET+PTTL");
    match (&val, pttl) {
        (None, -2) => ABSENT,
        (Some(_), -1) => KState { val, ttl: false },
        (Some(_), t) if t > 0 => KState { val, ttl: true },
        _ => panic!("{key}: GET {val:?} but PTTL {pttl}"),
    }
}

#[test]
fn sync_kill9_cycles_keep_every_acknowledged_write() {
    if Server::own_only() {
        return;
    }
    const CYCLES: usize = 24;
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = DataDir::new("kill9-cycles");
    // 64kb segments: the log rotates every ~15 flushes, so crashes also hit segment creation.
    let extra = ["--wal-segment-bytes", "64kb"];
    let mut server = start(&dir.path, "sync", 2, &extra);
    {
        let mut c = server.client();
        let i = info(&mut c);
        assert_eq!(i["durability"], "sync");
        assert_eq!(i["wal_io"], "direct", "the temp dir is expected to support O_DIRECT: {i:?}");
    }
    let mut models: Vec<WriterModel> = (0..WRITERS).map(WriterModel::new).collect();
    let began = Instant::now();
    let mut total_acked = 0;
    let mut total_inflight_applied = 0;
    let mut total_seen = 0;
    let mut first_ack_wait = Duration::ZERO;
    let (mut total_seen_inflight, mut total_torn) = (0, 0);
    for cycle in 0..CYCLES {
        let addr = server.addr;
        let barrier = Arc::new(Barrier::new(WRITERS + READERS + 1));
        let acks = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = models
            .drain(..)
            .map(|m| {
                let (b, s, a) = (barrier.clone(), rng.gen(), acks.clone());
                std::thread::spawn(move || writer_cycle(addr, m, s, b, a))
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (b, s) = (barrier.clone(), rng.gen());
                std::thread::spawn(move || reader_cycle(addr, s, b))
            })
            .collect();
        barrier.wait();
        let cycle_start = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
        // Under load (other tests share the disk) the first flush of a cycle, which creates a
        // segment, can take longer than the delay: then kill right after the first ack.
        while acks.load(Ordering::SeqCst) == 0 && cycle_start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        first_ack_wait = first_ack_wait.max(cycle_start.elapsed());
        crash(&mut server);
        let runs: Vec<WriterRun> = writers.into_iter().map(|h| h.join().expect("writer thread")).collect();
        let mut seen: Vec<(String, String)> = Vec::new();
        for r in readers {
            seen.extend(r.join().expect("reader thread").unwrap_or_else(|e| panic!("cycle {cycle}: {e}")));
        }
        total_seen += seen.len();
        let cycle_acked: u64 = runs.iter().map(|r| r.acked_ops).sum();
        total_acked += cycle_acked;
        for r in &runs {
            assert!(r.failure.is_none(), "cycle {cycle}: {}; log:\n{}", r.failure.as_ref().unwrap(), server.log_text());
        }
        assert!(cycle_acked > 0, "cycle {cycle}: no write was acknowledged before the kill");

        server = start(&dir.path, "sync", 2, &extra);
        let mut c = server.client();
        let mut errors = Vec::new();
        let mut live = 0;
        let seen_by_key: HashMap<&str, Vec<&str>> = seen.iter().fold(HashMap::new(), |mut m, (k, v)| {
            m.entry(k.as_str()).or_default().push(v.as_str());
            m
        });
        for mut run in runs {
            for (slot, key) in run.model.keys.iter().enumerate() {
                let now = observe(&mut c, key);
                let acked = &run.model.acked[slot];
                let inflight = run.inflight.iter().find(|(s, _)| *s == slot).map(|(_, st)| st);
                if &now != acked {
                    if inflight == Some(&now) {
                        total_inflight_applied += 1;
                    } else {
                        errors
                            .push(format!("{key}: holds {now:?}; last acknowledged {acked:?}; in flight {inflight:?}"));
                    }
                }
                // A value some reply revealed before the crash must not be lost.
                if let (Some(inf), Some(vals)) = (inflight, seen_by_key.get(key.as_str())) {
                    if let Some(v) = &inf.val {
                        let revealed = acked.val.as_ref() != Some(v) && vals.contains(&v.as_str());
                        total_seen_inflight += revealed as usize;
                        if revealed && now.val.as_ref() != Some(v) {
                            errors.push(format!(
                                "{key}: a reader was shown {v:?} (in-flight write) before the crash, but after \
                                 recovery the key holds {now:?}"
                            ));
                        }
                    }
                }
                if now.val.is_some() {
                    live += 1;
                }
                run.model.acked[slot] = now;
            }
            models.push(run.model);
        }
        let db = dbsize(&mut c);
        let i = info(&mut c);
        assert_eq!(
            info_u64(&i, "recovery_corrupt_segments"),
            0,
            "cycle {cycle}: kill -9 must never look like corruption"
        );
        total_torn += info_u64(&i, "recovery_torn_tails");
        assert!(
            errors.is_empty(),
            "cycle {cycle} (seed {seed}): recovery lost acknowledged writes or invented values:\n{}\nrecovery log:\n{}",
            errors.join("\n"),
            server.log_text()
        );
        assert_eq!(db, live, "cycle {cycle}: DBSIZE counts keys no writer owns (or misses some)");
    }
    let i = info(&mut server.client());
    eprintln!(
        "{CYCLES} cycles in {:?}: {total_acked} acknowledged writes, {total_inflight_applied} in-flight writes \
         recovered, {total_seen} values seen by readers ({total_seen_inflight} of them before their writer's ack), \
         {total_torn} torn tails, longest cycle {first_ack_wait:?}; last recovery: {} segments, {} records, {} ms",
        began.elapsed(),
        i["recovery_segments"],
        i["recovery_records"],
        i["recovery_ms"]
    );
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 2. async: what survives a crash is a prefix of the history.
// ---------------------------------------------------------------------------------------------

/// Writes `SET seq:i i` for i = from, from+1, ... one at a time until `stop` is set or the
/// connection dies; `acked` holds the last acknowledged i. Returns the last acknowledged i.
fn seq_writer(addr: std::net::SocketAddr, from: u64, acked: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u64 {
    let mut c = connect(addr);
    let mut i = from;
    while !stop.load(Ordering::SeqCst) {
        match redis::cmd("SET").arg(format!("seq:{i}")).arg(i).query::<()>(&mut c) {
            Ok(()) => acked.store(i, Ordering::SeqCst),
            Err(e) if crashed(&e) => break,
            Err(e) => panic!("SET seq:{i}: {e}"),
        }
        i += 1;
    }
    acked.load(Ordering::SeqCst)
}

/// The recovered keys must be exactly seq:1..=m; returns m.
fn assert_seq_prefix(c: &mut redis::Connection, upper: u64) -> u64 {
    let m = dbsize(c);
    assert!(m <= upper, "recovered {m} keys, but only {upper} SETs were ever sent");
    let keys: Vec<String> = (1..=upper + 1).map(|i| format!("seq:{i}")).collect();
    let vals = mget(c, &keys);
    for (i, v) in (1..=upper + 1).zip(vals) {
        if i <= m {
            assert_eq!(v, Some(i.to_string()), "hole in the recovered prefix: seq:{i} (DBSIZE {m})");
        } else {
            assert_eq!(v, None, "seq:{i} survived but the DBSIZE says {m}: not a prefix");
        }
    }
    m
}

/// The async contract on the flush *interval*: writes are on disk at most
/// `--wal-flush-interval-ms` after they were acknowledged.
#[test]
fn async_crash_loses_at_most_the_flush_window() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("async-prefix");
    let extra = ["--wal-flush-interval-ms", "20"];
    let mut server = start(&dir.path, "async", 1, &extra);
    let acked = Arc::new(AtomicU64::new(0));
    let stop_flag = Arc::new(AtomicBool::new(false));
    let (a, s, addr) = (acked.clone(), stop_flag.clone(), server.addr);
    let writer = std::thread::spawn(move || seq_writer(addr, 1, a, s));
    // Crash mid-stream: everything acknowledged 1 s before the kill (50 flush intervals) must
    // be there; the rest may or may not be, but only as a prefix.
    std::thread::sleep(Duration::from_millis(500));
    let safe = acked.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1000));
    crash(&mut server);
    let last = writer.join().unwrap();
    assert!(safe > 0, "nothing acknowledged in 500 ms");
    server = start(&dir.path, "async", 1, &extra);
    let m = assert_seq_prefix(&mut server.client(), last + 1);
    eprintln!("async crash 1: acknowledged {last}, safe bound {safe}, recovered prefix {m}");
    assert!(m >= safe, "lost writes acknowledged 1 s before the crash: recovered {m}, acknowledged {safe} by then");

    // Continue the sequence, then go idle for 300 ms (15 flush intervals) before the kill:
    // everything acknowledged must then be durable.
    acked.store(m, Ordering::SeqCst);
    stop_flag.store(false, Ordering::SeqCst);
    let (a, s, addr) = (acked.clone(), stop_flag.clone(), server.addr);
    let writer = std::thread::spawn(move || seq_writer(addr, m + 1, a, s));
    std::thread::sleep(Duration::from_millis(300));
    stop_flag.store(true, Ordering::SeqCst);
    let last = writer.join().unwrap();
    assert!(last > m, "second phase acknowledged nothing");
    std::thread::sleep(Duration::from_millis(300));
    crash(&mut server);
    server = start(&dir.path, "async", 1, &extra);
    let m2 = assert_seq_prefix(&mut server.client(), last);
    assert_eq!(m2, last, "idle for 15 flush intervals before the crash, yet acknowledged writes were lost");
    stop(&mut server);
}

/// The smallest reproducer of the async timer bug: one write, then 25 flush intervals of
/// silence; the write must have been flushed (INFO) and must survive kill -9.
#[test]
fn async_flush_interval_flushes_an_idle_write() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("async-timer");
    let extra = ["--wal-flush-interval-ms", "20"];
    let mut server = start(&dir.path, "async", 1, &extra);
    let mut c = server.client();
    let _: () = redis::cmd("SET").arg("lonely").arg("write").query(&mut c).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let i = info(&mut c);
    let (pending, fsyncs) = (info_u64(&i, "wal_pending_records"), info_u64(&i, "wal_fsyncs"));
    drop(c);
    crash(&mut server);
    server = start(&dir.path, "async", 1, &extra);
    let survived = get(&mut server.client(), "lonely");
    stop(&mut server);
    assert_eq!(
        (pending, fsyncs, survived.as_deref()),
        (0, 1, Some("write")),
        "(wal_pending_records, wal_fsyncs, value after kill -9) 500 ms after a write with a 20 ms flush interval"
    );
}

/// The async contract on *what* survives: a prefix of the history, and no more than the
/// buffered window lost. A small `--wal-buffer-bytes` makes flushes happen by buffer size
/// (writers wait once twice the buffer is pending), independently of the flush timer.
#[test]
fn async_crash_keeps_a_prefix() {
    if Server::own_only() {
        return;
    }
    const BUFFER: u64 = 16 * 1024;
    let dir = DataDir::new("async-prefix-buf");
    let extra = ["--wal-flush-interval-ms", "20", "--wal-buffer-bytes", "16kb"];
    let mut total_lost = 0;
    let mut server = start(&dir.path, "async", 1, &extra);
    let mut next = 1;
    for round in 0..3 {
        let acked = Arc::new(AtomicU64::new(next - 1));
        let stop_flag = Arc::new(AtomicBool::new(false));
        let (a, s, addr) = (acked.clone(), stop_flag.clone(), server.addr);
        let writer = std::thread::spawn(move || seq_writer(addr, next, a, s));
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        crash(&mut server);
        let last = writer.join().unwrap();
        assert!(last >= next, "round {round}: nothing acknowledged in 300 ms");
        server = start(&dir.path, "async", 1, &extra);
        let m = assert_seq_prefix(&mut server.client(), last + 1);
        // Unwritten at the crash: at most twice the buffer pending (then writers wait) plus
        // the flush being written (at most that much again); a record is at least 24 bytes.
        let bound = 4 * BUFFER / 24;
        eprintln!("async round {round}: acknowledged up to {last}, recovered prefix 1..={m}");
        assert!(m > next - 1, "round {round}: nothing written this round survived (recovered 1..={m})");
        assert!(
            last.saturating_sub(m) <= bound,
            "round {round}: lost {} acknowledged writes, more than the buffer allows ({bound})",
            last - m
        );
        total_lost += last.saturating_sub(m);
        next = m + 1;
    }
    eprintln!("async: {total_lost} acknowledged writes lost over 3 crashes");
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 3. Rotation: many segments, flushes larger than a segment, restart after stop and crash.
// ---------------------------------------------------------------------------------------------

fn rot_value(i: usize, round: u32) -> String {
    let len = if i % 500 == 7 { 100_000 } else { 2000 + (i * 37) % 2000 };
    let head = format!("r{round}:{i}:");
    let fill = (b'a' + (i % 26) as u8) as char;
    let mut v = head;
    while v.len() < len {
        v.push(fill);
    }
    v
}

fn verify_rotation(c: &mut redis::Connection, expected: &[String], what: &str) {
    let keys: Vec<String> = (0..expected.len()).map(|i| format!("rot:{i}")).collect();
    let vals = mget(c, &keys);
    for (i, v) in vals.iter().enumerate() {
        match v {
            Some(v) if *v == expected[i] => {}
            other => panic!(
                "{what}: rot:{i} holds {:?}, expected {:?}",
                other.as_ref().map(|s| &s[..s.len().min(40)]),
                &expected[i][..40]
            ),
        }
    }
    assert_eq!(dbsize(c), expected.len() as u64, "{what}: DBSIZE");
}

#[test]
fn rotation_many_segments_survive_stop_and_crash() {
    if Server::own_only() {
        return;
    }
    const N: usize = 1700;
    let dir = DataDir::new("rotation");
    let extra = ["--wal-segment-bytes", "64kb"];
    let mut server = start(&dir.path, "sync", 1, &extra);
    let mut c = server.client();
    let mut expected: Vec<String> = (0..N).map(|i| rot_value(i, 1)).collect();
    // Pipelines of 10 (one flush each, ~30 KB: two per 64 KB segment); every 500th value is
    // 100 KB, a flush larger than a whole segment.
    let mut bytes = 0;
    for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("SET").arg(format!("rot:{i}")).arg(&expected[i]).ignore();
            bytes += expected[i].len();
        }
        p.query::<()>(&mut c).expect("pipeline");
    }
    assert!(bytes > 4_500_000, "wrote only {bytes} bytes");
    let segs = segments(&shard_dir(&dir.path, 0));
    assert!(
        segs.len() > 10,
        "expected more than 10 segments for {bytes} bytes in 64 KB segments, found {}",
        segs.len()
    );
    let big = segs.iter().filter(|p| std::fs::metadata(p).unwrap().len() > 64 * 1024).count();
    assert!(big >= 1, "a 100 KB flush should have grown a segment past 64 KB");
    drop(c);
    stop(&mut server);

    server = start(&dir.path, "sync", 1, &extra);
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "recovery_keys_loaded"), N as u64, "{i:?}");
    assert_eq!(info_u64(&i, "recovery_torn_tails"), 0);
    assert!(info_u64(&i, "recovery_segments") > 10, "{i:?}");
    verify_rotation(&mut c, &expected, "after SIGTERM");

    // Overwrite a third of the keys (new segments again), then kill -9.
    for chunk in (0..N).filter(|i| i % 3 == 0).collect::<Vec<_>>().chunks(10) {
        let mut p = redis::pipe();
        for &i in chunk {
            expected[i] = rot_value(i, 2);
            p.cmd("SET").arg(format!("rot:{i}")).arg(&expected[i]).ignore();
        }
        p.query::<()>(&mut c).expect("pipeline");
    }
    drop(c);
    crash(&mut server);
    let segs2 = segments(&shard_dir(&dir.path, 0));
    assert!(
        segs2.len() > segs.len() + 5,
        "the overwrites should have added segments: {} -> {}",
        segs.len(),
        segs2.len()
    );
    server = start(&dir.path, "sync", 1, &extra);
    verify_rotation(&mut server.client(), &expected, "after kill -9");
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 4. Changing --threads re-routes the log.
// ---------------------------------------------------------------------------------------------

/// Expected state of the thread-change test: key -> (value, has TTL).
type Expect = std::collections::BTreeMap<String, (String, bool)>;

fn verify_expect(c: &mut redis::Connection, exp: &Expect, gone: &[String], what: &str) {
    let mut errors = Vec::new();
    for (k, (v, ttl)) in exp {
        let (got, pttl): (Option<String>, i64) =
            redis::pipe().cmd("GET").arg(k).cmd("PTTL").arg(k).query(c).expect("GET+PTTL");
        if got.as_ref() != Some(v) {
            errors.push(format!("{k}: {got:?}, expected {v:?}"));
        }
        if *ttl && !(pttl > 0 && pttl <= 3_600_000) {
            errors.push(format!("{k}: PTTL {pttl}, expected a TTL in (0, 3600000]"));
        }
        if !*ttl && pttl != -1 {
            errors.push(format!("{k}: PTTL {pttl}, expected -1 (no TTL)"));
        }
    }
    for k in gone {
        let got: Option<String> = get(c, k);
        if got.is_some() {
            errors.push(format!("{k}: deleted or expired, but holds {got:?}"));
        }
    }
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
    assert_eq!(dbsize(c), exp.len() as u64, "{what}: DBSIZE");
}

fn gen_dirs(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    v.sort();
    v
}

#[test]
fn thread_count_change_keeps_values_and_ttls() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("threads");
    let mut exp = Expect::new();
    let mut gone = Vec::new();

    // Phase 1: 2 shards.
    let mut server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    // Pipelined (one flush per batch) to keep the test fast on a busy disk.
    let mut p = redis::pipe();
    for i in 0..300 {
        let k = format!("tc:{i}");
        let v = format!("v1-{i}");
        if i % 3 == 0 {
            p.cmd("SET").arg(&k).arg(&v).arg("EX").arg(3600).ignore();
        } else {
            p.cmd("SET").arg(&k).arg(&v).ignore();
        }
        exp.insert(k, (v, i % 3 == 0));
    }
    p.query::<()>(&mut c).unwrap();
    for i in (0..300).step_by(10) {
        let k = format!("tc:{i}");
        let n: i64 = redis::cmd("DEL").arg(&k).query(&mut c).unwrap();
        assert_eq!(n, 1);
        exp.remove(&k);
        gone.push(k);
    }
    for i in 0..20 {
        let k = format!("ctr:{i}");
        let n: i64 = redis::cmd("INCRBY").arg(&k).arg(i + 1).query(&mut c).unwrap();
        exp.insert(k, (n.to_string(), false));
    }
    let _: () = redis::cmd("SET").arg("tc:short").arg("x").arg("PX").arg(300).query(&mut c).unwrap();
    gone.push("tc:short".into());
    let short_set = Instant::now();
    drop(c);
    stop(&mut server);
    assert_eq!(layout(&dir.path), (2, 0));
    std::thread::sleep(Duration::from_millis(400).saturating_sub(short_set.elapsed()));

    // Phase 2: 3 shards.
    server = start(&dir.path, "sync", 3, &[]);
    let mut c = server.client();
    verify_expect(&mut c, &exp, &gone, "2 -> 3 shards");
    assert_eq!(layout(&dir.path), (3, 1), "LAYOUT after the change to 3 shards");
    assert_eq!(gen_dirs(&dir.path), vec!["gen-1"], "only the new generation remains");
    let mut p = redis::pipe();
    for i in (1..300).step_by(4) {
        let k = format!("tc:{i}");
        if let Some(e) = exp.get_mut(&k) {
            e.0 = format!("v2-{i}");
            e.1 = false;
            p.cmd("SET").arg(&k).arg(&e.0).ignore();
        }
    }
    let mut expires = 0;
    for i in 300..400 {
        let k = format!("tc:{i}");
        let v = format!("v2-{i}");
        p.cmd("SET").arg(&k).arg(&v).ignore();
        let ttl = i % 2 == 0;
        if ttl {
            p.cmd("EXPIRE").arg(&k).arg(3000);
            expires += 1;
        }
        exp.insert(k, (v, ttl));
    }
    let r: Vec<i64> = p.query(&mut c).unwrap();
    assert_eq!(r, vec![1; expires], "EXPIRE replies");
    // PERSIST some keys that got a TTL in phase 1 and were not overwritten.
    for i in (3..300).step_by(9) {
        let k = format!("tc:{i}");
        if let Some(e) = exp.get_mut(&k) {
            let n: i64 = redis::cmd("PERSIST").arg(&k).query(&mut c).unwrap();
            assert_eq!(n, e.1 as i64, "PERSIST {k}");
            e.1 = false;
        }
    }
    drop(c);
    // Sync mode: everything acknowledged survives kill -9 too.
    crash(&mut server);

    // Phase 3: 1 shard.
    server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    verify_expect(&mut c, &exp, &gone, "3 -> 1 shard (after kill -9)");
    assert_eq!(layout(&dir.path), (1, 2), "LAYOUT after the change to 1 shard");
    assert_eq!(gen_dirs(&dir.path), vec!["gen-2"], "only the new generation remains");
    drop(c);
    stop(&mut server);

    // Same count again: no new generation, same data.
    server = start(&dir.path, "sync", 1, &[]);
    verify_expect(&mut server.client(), &exp, &gone, "1 -> 1 shard");
    assert_eq!(layout(&dir.path), (1, 2));
    assert_eq!(gen_dirs(&dir.path), vec!["gen-2"]);
    stop(&mut server);
}

/// FLUSHALL is logged by every shard. When the shard count changes, each new shard replays
/// the old logs one after the other, so a FLUSHALL record in old shard 1's log must not wipe
/// keys it already loaded from old shard 0's log that were written *after* the FLUSHALL.
#[test]
fn flushall_before_thread_change_keeps_later_writes() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("flushall-threads");
    let mut server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    for i in 0..20 {
        let _: () = redis::cmd("SET").arg(format!("old:{i}")).arg(i).query(&mut c).unwrap();
    }
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("new:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut c).unwrap();
    }
    assert_eq!(dbsize(&mut c), 40);
    drop(c);
    stop(&mut server);
    // Sanity: the same shard count recovers everything.
    server = start(&dir.path, "sync", 2, &[]);
    assert_eq!(dbsize(&mut server.client()), 40, "same shard count");
    stop(&mut server);

    server = start(&dir.path, "sync", 3, &[]);
    let mut c = server.client();
    let vals = mget(&mut c, &keys);
    let lost: Vec<&String> =
        keys.iter().zip(&vals).filter(|(k, v)| v.as_deref() != Some(k.as_str())).map(|(k, _)| k).collect();
    assert!(
        lost.is_empty(),
        "after 2 -> 3 shards, {} of 40 keys written after FLUSHALL are gone: {lost:?}",
        lost.len()
    );
    assert_eq!(dbsize(&mut c), 40);
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 5. tmpfs: no O_DIRECT, buffered writes + fdatasync, still durable across kill -9.
// ---------------------------------------------------------------------------------------------

#[test]
fn tmpfs_falls_back_to_buffered_io_and_stays_durable() {
    if Server::own_only() {
        return;
    }
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() || !is_tmpfs(shm) {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    }
    let dir = DataDir::under(shm, "tmpfs");
    // Linux >= 6.6 supports O_DIRECT on tmpfs: then there is no fallback to exercise here, and
    // the server must use direct I/O without a warning (the durability check still runs).
    let direct = supports_o_direct(&dir.path);
    if direct {
        eprintln!("note: tmpfs accepts O_DIRECT on this kernel; the buffered fallback is not exercised");
    }
    let mut server = start(&dir.path, "sync", 2, &[]);
    let log = server.log_text();
    let warned = log.lines().any(|l| l.contains("WARN") && l.contains("O_DIRECT"));
    assert_eq!(warned, !direct, "O_DIRECT works here: {direct}; log:\n{log}");
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(i["wal_io"], if direct { "direct" } else { "buffered" }, "{i:?}");
    for n in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("shm:{n}")).arg(n).query(&mut c).unwrap();
    }
    assert!(info_u64(&info(&mut c), "wal_fsyncs") > 0);
    drop(c);
    crash(&mut server);
    server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    let keys: Vec<String> = (0..200).map(|n| format!("shm:{n}")).collect();
    let vals = mget(&mut c, &keys);
    for (n, v) in vals.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(n.to_string().as_str()), "shm:{n} after kill -9");
    }
    assert_eq!(info_u64(&info(&mut c), "recovery_keys_loaded"), 200);
    drop(c);
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 6. WAITAOF.
// ---------------------------------------------------------------------------------------------

#[test]
fn waitaof_in_async_mode_makes_writes_durable() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("waitaof");
    // A 10 s flush interval: only WAITAOF can make these writes durable before the kill.
    let extra = ["--wal-flush-interval-ms", "10000"];
    let mut server = start(&dir.path, "async", 2, &extra);
    let mut c = server.client();
    let keys: Vec<String> = (0..50).map(|i| format!("wa:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(k).query(&mut c).unwrap();
    }
    let pending = info_u64(&info(&mut c), "wal_pending_records");
    assert!(pending > 0, "writes should still be pending with a 10 s interval");
    let t = Instant::now();
    let r: Vec<i64> = redis::cmd("WAITAOF").arg(1).arg(0).arg(0).query(&mut c).unwrap();
    assert_eq!(r, vec![1, 0]);
    assert!(t.elapsed() < Duration::from_secs(3), "WAITAOF waited for the timer ({:?})", t.elapsed());
    assert_eq!(info_u64(&info(&mut c), "wal_pending_records"), 0, "WAITAOF returned before everything was durable");
    let r: Vec<i64> = redis::cmd("WAITAOF").arg(1).arg(0).arg(100).query(&mut c).unwrap();
    assert_eq!(r, vec![1, 0], "WAITAOF with a timeout, nothing pending");
    drop(c);
    crash(&mut server);
    server = start(&dir.path, "async", 2, &extra);
    let mut c = server.client();
    let vals = mget(&mut c, &keys);
    for (k, v) in keys.iter().zip(vals) {
        assert_eq!(v.as_deref(), Some(k.as_str()), "{k} was covered by WAITAOF but lost in a crash");
    }
    drop(c);
    stop(&mut server);
}

#[test]
fn waitaof_without_durability_is_refused_for_numlocal() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(1, &[]);
    let mut raw = server.raw();
    assert_eq!(
        raw.cmd(&resp(&[b"WAITAOF", b"1", b"0", b"0"])),
        Reply::Error("ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.".into())
    );
    assert_eq!(raw.cmd(&resp(&[b"WAITAOF", b"0", b"0", b"0"])), Reply::Array(Some(vec![Reply::Int(0), Reply::Int(0)])));
}

// ---------------------------------------------------------------------------------------------
// 7. One server per data directory.
// ---------------------------------------------------------------------------------------------

#[test]
fn second_server_on_a_locked_data_dir_exits_nonzero() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("lock");
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let _: () = redis::cmd("SET").arg("owner").arg("first").query(&mut c).unwrap();
    let before = snapshot(&dir.path);
    let out = run_to_exit(&server_args(&dir.path, "sync", 1, &[]), Duration::from_secs(60));
    assert!(matches!(out.code, Some(c) if c != 0), "second server must exit non-zero: {out:?}");
    assert!(out.stderr.contains("locked"), "stderr should say the data dir is locked: {}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_eq!(snapshot(&dir.path), before, "the refused server changed files in the data dir");
    // The first server is unaffected.
    assert_eq!(get(&mut c, "owner").as_deref(), Some("first"));
    drop(c);
    // kill -9 releases the lock (flock dies with the process).
    crash(&mut server);
    server = start(&dir.path, "sync", 1, &[]);
    assert_eq!(get(&mut server.client(), "owner").as_deref(), Some("first"));
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// 8. Graceful shutdown writes what is pending.
// ---------------------------------------------------------------------------------------------

#[test]
fn graceful_shutdown_flushes_pending_async_writes() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("graceful");
    let extra = ["--wal-flush-interval-ms", "10000"];
    let mut server = start(&dir.path, "async", 2, &extra);
    let mut c = server.client();
    let keys: Vec<String> = (0..500).map(|i| format!("gs:{i}")).collect();
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(format!("val-{k}")).query(&mut c).unwrap();
    }
    let _: i64 = redis::cmd("INCR").arg("gs:counter").query(&mut c).unwrap();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "wal_pending_records"), 501, "all writes should still be in memory: {i:?}");
    assert_eq!(info_u64(&i, "wal_fsyncs"), 0, "{i:?}");
    drop(c);
    stop(&mut server);
    server = start(&dir.path, "async", 2, &extra);
    let mut c = server.client();
    let vals = mget(&mut c, &keys);
    for (k, v) in keys.iter().zip(vals) {
        assert_eq!(v, Some(format!("val-{k}")), "{k} lost by a graceful shutdown");
    }
    assert_eq!(get(&mut c, "gs:counter").as_deref(), Some("1"));
    assert_eq!(dbsize(&mut c), 501);
    drop(c);
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// More crash points.
// ---------------------------------------------------------------------------------------------

/// FLUSHALL and cross-shard MSET in sync mode are durable once acknowledged.
#[test]
fn sync_flushall_and_cross_shard_mset_survive_kill9() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("flushall-kill");
    let mut server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(format!("before:{i}")).arg(i).query(&mut c).unwrap();
    }
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let mut mset = redis::cmd("MSET");
    for i in 0..20 {
        mset.arg(format!("after:{i}")).arg(format!("a{i}"));
    }
    let _: () = mset.query(&mut c).unwrap();
    drop(c);
    crash(&mut server);
    server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    assert_eq!(dbsize(&mut c), 20, "FLUSHALL then MSET of 20 keys");
    let keys: Vec<String> = (0..20).map(|i| format!("after:{i}")).collect();
    for (i, v) in mget(&mut c, &keys).into_iter().enumerate() {
        assert_eq!(v, Some(format!("a{i}")));
    }
    drop(c);
    stop(&mut server);
}

/// Spawns the binary and SIGKILLs it after `delay`, whatever it is doing (it may not have
/// finished recovery yet). Ephemeral port, like the harness.
fn spawn_and_kill_after(args: &[String], delay: Duration) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ringcache");
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

/// A change of `--threads` rewrites the whole state into a new generation and switches LAYOUT
/// only when that is durable. A kill -9 at any moment of that restart must lose nothing.
#[test]
fn kill9_during_thread_change_loses_nothing() {
    if Server::own_only() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed());
    let dir = DataDir::new("threads-kill");
    let mut server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    // Enough data (~3 MB) that the rewrite takes a while.
    let keys: Vec<String> = (0..3000).map(|i| format!("tk:{i}")).collect();
    let val = |i: usize| format!("{i}:{}", "x".repeat(1000));
    for chunk in (0..keys.len()).collect::<Vec<_>>().chunks(100) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("SET").arg(&keys[i]).arg(val(i)).ignore();
        }
        p.query::<()>(&mut c).unwrap();
    }
    drop(c);
    stop(&mut server);
    // How long a re-routing start takes here (on a copy), to spread the kills over it.
    let copy = DataDir::new("threads-kill-probe");
    copy_dir(&dir.path, &copy.path);
    let t = Instant::now();
    let mut probe = start(&copy.path, "sync", 3, &[]);
    let full = t.elapsed();
    stop(&mut probe);
    let mut layouts = Vec::new();
    for attempt in 0..8 {
        let threads = 3 + attempt % 2;
        let delay = full.mul_f64(rng.gen_range(0.1..1.3));
        spawn_and_kill_after(&server_args(&dir.path, "sync", threads, &[]), delay);
        layouts.push((threads, delay, layout(&dir.path)));
    }
    eprintln!("re-routing start takes {full:?}; (threads, kill after, LAYOUT after the kill): {layouts:?}");
    server = start(&dir.path, "sync", 3, &[]);
    let mut c = server.client();
    let vals = mget(&mut c, &keys);
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(val(i).as_str()), "{} after killed re-routing restarts", keys[i]);
    }
    assert_eq!(dbsize(&mut c), keys.len() as u64);
    assert_eq!(layout(&dir.path).0, 3);
    assert_eq!(gen_dirs(&dir.path).len(), 1, "one generation left: {:?}", gen_dirs(&dir.path));
    drop(c);
    stop(&mut server);
}

/// Values far larger than a segment and than the io_uring buffer memory (512 KiB by default).
#[test]
fn large_values_survive_kill9() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("large");
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let sizes = [300 * 1024, 1 << 20, 5 << 20, 12 << 20];
    let big = |i: usize, n: usize| -> Vec<u8> { (0..n).map(|j| (j * 7 + i * 13) as u8 | 1).collect() };
    for (i, &n) in sizes.iter().enumerate() {
        let _: () = redis::cmd("SET").arg(format!("big:{i}")).arg(big(i, n)).query(&mut c).unwrap();
    }
    // And one flush holding several of them (a pipeline).
    let mut p = redis::pipe();
    for i in 0..4 {
        p.cmd("SET").arg(format!("pipe:{i}")).arg(big(10 + i, 2 << 20)).ignore();
    }
    p.query::<()>(&mut c).unwrap();
    drop(c);
    crash(&mut server);
    server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    for (i, &n) in sizes.iter().enumerate() {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(format!("big:{i}")).query(&mut c).unwrap();
        assert!(v.as_deref() == Some(&big(i, n)[..]), "big:{i} ({n} bytes) wrong after kill -9");
    }
    for i in 0..4 {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(format!("pipe:{i}")).query(&mut c).unwrap();
        assert!(v.as_deref() == Some(&big(10 + i, 2 << 20)[..]), "pipe:{i} wrong after kill -9");
    }
    drop(c);
    stop(&mut server);
}
