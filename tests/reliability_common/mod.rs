//! The reliability suite's shared parts: the [`oracle`] and the crash loop that drives the real
//! binary with it (`tests/reliability.rs` runs the fast tier; `scripts/crash-loop.sh` the long
//! one, through the same code).
#![allow(dead_code)]

pub mod oracle;

use crate::durability_common::*;
use oracle::*;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A crash loop's settings.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub cycles: usize,
    /// `sync` or `async`.
    pub durability: &'static str,
    pub threads: usize,
    pub writers: usize,
    pub readers: usize,
    /// Kill after a delay drawn from this range (ms), once at least one write was acknowledged.
    pub kill_after_ms: (u64, u64),
    /// Snapshots every 64 KiB of log with two retained, so kills land in snapshots and
    /// compaction too.
    pub snapshots: bool,
    /// Run `ringcache check` on the directory after every kill (the log has no holes).
    pub check_each_cycle: bool,
    /// Keys of 100 bytes loaded before the first cycle and never written again: they make
    /// each snapshot take long enough for kills to land in it, and must all survive.
    pub ballast_keys: usize,
    pub seed: u64,
}

/// `RELIAB_SEED` or a random seed, printed so a failure can be replayed.
pub fn seed() -> u64 {
    let s = std::env::var("RELIAB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {s} (rerun with RELIAB_SEED={s})");
    s
}

/// The connection died with the server (not an error reply).
pub fn crashed(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

fn cmd_text(cmd: &redis::Cmd) -> String {
    String::from_utf8_lossy(&cmd.get_packed_command()).replace("\r\n", " ")
}

/// Issues random commands on the writer's own keys until the connection dies: SET, MSET (its
/// keys lie on several shards), INCR, DEL, EXPIREAT, PERSIST. Every reply is checked against
/// the model. Returns the model and a failure, if any.
fn writer_cycle(
    addr: std::net::SocketAddr,
    mut m: WriterModel,
    rng_seed: u64,
    start: Arc<Barrier>,
    acks: Arc<AtomicU64>,
) -> (WriterModel, Option<String>) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut c = connect(addr);
    start.wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            return (m, Some("server never died".into()));
        }
        m.seq += 1;
        let seq = m.seq;
        let i = rng.gen_range(0..KEYS);
        let roll = rng.gen_range(0..100);
        let val = |m: &WriterModel, k: usize| encode_value(&m.keys[k], m.id, seq);
        let (cmd, changes, expect): (redis::Cmd, Vec<(usize, KState)>, redis::Value) = if roll < 40 {
            let v = val(&m, i);
            let mut cmd = redis::cmd("SET");
            cmd.arg(&m.keys[i]).arg(&v);
            (cmd, vec![(i, KState { val: Some(v), expire_at_s: None })], redis::Value::Okay)
        } else if roll < 55 {
            // Two or three of its keys: usually on more than one shard.
            let n = rng.gen_range(2..=3);
            let mut cmd = redis::cmd("MSET");
            let mut changes = Vec::new();
            for j in 0..n {
                let k = (i + j) % KEYS;
                let v = val(&m, k);
                cmd.arg(&m.keys[k]).arg(&v);
                changes.push((k, KState { val: Some(v), expire_at_s: None }));
            }
            (cmd, changes, redis::Value::Okay)
        } else if roll < 70 {
            let ctr = m.counter();
            let cur: i64 = m.acked[ctr].val.as_deref().map_or(0, |v| v.parse().expect("counter"));
            let mut cmd = redis::cmd("INCR");
            cmd.arg(&m.keys[ctr]);
            let st = KState { val: Some((cur + 1).to_string()), expire_at_s: m.acked[ctr].expire_at_s };
            (cmd, vec![(ctr, st)], redis::Value::Int(cur + 1))
        } else if roll < 80 {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&m.keys[i]);
            let existed = m.acked[i].val.is_some();
            (cmd, vec![(i, ABSENT)], redis::Value::Int(existed as i64))
        } else if roll < 92 {
            // A distinct absolute time far in the future, so each EXPIREAT leaves its mark.
            let at = 4_000_000_000 + seq as i64;
            let mut cmd = redis::cmd("EXPIREAT");
            cmd.arg(&m.keys[i]).arg(at);
            let cur = m.acked[i].clone();
            let exists = cur.val.is_some();
            let st = if exists { KState { expire_at_s: Some(at), ..cur } } else { cur };
            (cmd, vec![(i, st)], redis::Value::Int(exists as i64))
        } else {
            let mut cmd = redis::cmd("PERSIST");
            cmd.arg(&m.keys[i]);
            let cur = m.acked[i].clone();
            let had = cur.val.is_some() && cur.expire_at_s.is_some();
            (cmd, vec![(i, KState { expire_at_s: None, ..cur })], redis::Value::Int(had as i64))
        };
        m.issue(seq, cmd_text(&cmd), changes);
        match cmd.query::<redis::Value>(&mut c) {
            Ok(reply) if reply == expect => {
                m.ack();
                acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(reply) => {
                let f = format!("writer {}: {:?} replied {reply:?}, model expected {expect:?}", m.id, cmd_text(&cmd));
                return (m, Some(f));
            }
            Err(e) if crashed(&e) => return (m, None),
            Err(e) => {
                let f = format!("writer {}: {:?} failed: {e}", m.id, cmd_text(&cmd));
                return (m, Some(f));
            }
        }
    }
}

/// Reads other writers' keys (GET, and MGET across shards) until the connection dies, and
/// returns every value a reply showed.
fn reader_cycle(
    addr: std::net::SocketAddr,
    keys: Vec<String>,
    rng_seed: u64,
    start: Arc<Barrier>,
) -> Result<Vec<(String, String)>, String> {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let mut c = connect(addr);
    start.wait();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let n = if rng.gen_bool(0.5) { 1 } else { 3 };
        let ks: Vec<&String> = (0..n).map(|_| &keys[rng.gen_range(0..keys.len())]).collect();
        let r: redis::RedisResult<Vec<Option<String>>> = redis::cmd("MGET").arg(&ks).query(&mut c);
        match r {
            Ok(vals) => seen.extend(ks.into_iter().zip(vals).filter_map(|(k, v)| v.map(|v| (k.clone(), v)))),
            Err(e) if crashed(&e) => return Ok(seen),
            Err(e) => return Err(format!("reader: {e}")),
        }
    }
    Err("reader: server never died".into())
}

fn extra_args(cfg: &LoopConfig) -> Vec<&'static str> {
    let mut a = vec!["--wal-segment-bytes", "64kb", "--wal-flush-interval-ms", "50"];
    if cfg.snapshots {
        a.extend(["--snapshot-wal-bytes", "64kb", "--snapshot-retain", "2"]);
    }
    a
}

/// Flush interval the loop runs `async` with.
pub const FLUSH_INTERVAL_MS: u64 = 50;

/// Snapshot temporary files under `dir` (a kill landed while a snapshot was being written).
fn snapshot_temps(dir: &Path) -> usize {
    find_files(dir, ".tmp").iter().filter(|p| !p.ends_with("LAYOUT.tmp")).count()
}

/// Runs the crash loop: load, `kill -9` at a random moment, `ringcache check`, restart on the
/// same directory, verify every key with the oracle, continue. Panics on the first cycle with
/// an error; returns the figures.
pub fn crash_loop(cfg: &LoopConfig, dir: &Path) -> Figures {
    let sync = cfg.durability == "sync";
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let extra = extra_args(cfg);
    let mut server = start(dir, cfg.durability, cfg.threads, &extra);
    let mut models: Vec<WriterModel> = (0..cfg.writers).map(|w| WriterModel::new(w, cfg.threads)).collect();
    let all_keys: Vec<String> = models.iter().flat_map(|m| m.keys.clone()).collect();
    let mut fig = Figures::default();
    let began = Instant::now();
    let ballast = |i: usize| (format!("ballast:{i}"), format!("{i:0>100}"));
    {
        let mut c = server.client();
        for chunk in (0..cfg.ballast_keys).collect::<Vec<_>>().chunks(1000) {
            let mut cmd = redis::cmd("MSET");
            for &i in chunk {
                let (k, v) = ballast(i);
                cmd.arg(k).arg(v);
            }
            let _: () = cmd.query(&mut c).expect("load ballast");
        }
    }
    for cycle in 0..cfg.cycles {
        let addr = server.addr;
        let barrier = Arc::new(Barrier::new(cfg.writers + cfg.readers + 1));
        let acks = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = models
            .drain(..)
            .map(|m| {
                let (b, s, a) = (barrier.clone(), rng.gen(), acks.clone());
                std::thread::spawn(move || writer_cycle(addr, m, s, b, a))
            })
            .collect();
        let readers: Vec<_> = (0..cfg.readers)
            .map(|_| {
                let (b, s, k) = (barrier.clone(), rng.gen(), all_keys.clone());
                std::thread::spawn(move || reader_cycle(addr, k, s, b))
            })
            .collect();
        barrier.wait();
        let cycle_start = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.gen_range(cfg.kill_after_ms.0..=cfg.kill_after_ms.1)));
        while acks.load(Ordering::SeqCst) == 0 && cycle_start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if cfg.snapshots {
            fig.snapshots_taken += info_u64(&info(&mut server.client()), "snapshots_taken");
        }
        let killed_at = Instant::now();
        crash(&mut server);
        let runs: Vec<(WriterModel, Option<String>)> = writers.into_iter().map(|h| h.join().expect("writer")).collect();
        let mut seen = Vec::new();
        for r in readers {
            seen.extend(r.join().expect("reader").unwrap_or_else(|e| panic!("cycle {cycle}: {e}")));
        }
        for (_, f) in &runs {
            assert!(f.is_none(), "cycle {cycle}: {}; log:\n{}", f.as_ref().unwrap(), server.log_text());
        }
        models = runs.into_iter().map(|(m, _)| m).collect();
        fig.kills_during_snapshot += (snapshot_temps(dir) > 0) as u64;
        if cfg.check_each_cycle {
            // The log has no holes: `check` finds nothing but (at most) a torn last flush.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache"))
                .args(["check", "--data-dir", &dir.display().to_string()])
                .output()
                .expect("run ringcache check");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let code = out.status.code();
            assert!(code == Some(0) || code == Some(1), "cycle {cycle}: check exited {code:?}: {text}");
            assert!(
                !text.contains("CORRUPTION") && !text.contains("missing") && !text.contains("DAMAGED"),
                "cycle {cycle}: kill -9 left damage that is not a torn tail:\n{text}"
            );
        }

        server = start(dir, cfg.durability, cfg.threads, &extra);
        let mut c = server.client();
        let seen = seen_by_writer(&models, &seen);
        let mut errors = Vec::new();
        let mut live = 0;
        for m in models.iter_mut() {
            let now = observe(&mut c, m);
            live += now.iter().filter(|s| s.val.is_some()).count() as u64;
            let seen_m = if sync { seen.get(&m.id).cloned().unwrap_or_default() } else { Vec::new() };
            errors.extend(m.verify(&now, sync, killed_at, &seen_m, &mut fig));
        }
        let i = info(&mut c);
        assert_eq!(
            info_u64(&i, "recovery_corrupt_segments"),
            0,
            "cycle {cycle}: a kill must never look like corruption"
        );
        assert_eq!(
            info_u64(&i, "recovery_snapshot_fallbacks"),
            0,
            "cycle {cycle}: a kill left a damaged snapshot (only complete ones may be renamed into place)"
        );
        fig.torn_tails += info_u64(&i, "recovery_torn_tails");
        fig.snapshots_loaded += info_u64(&i, "recovery_snapshots_loaded");
        fig.cycles += 1;
        assert!(
            errors.is_empty(),
            "cycle {cycle} (seed {}, {}): recovery broke the oracle:\n{}\nrecovery log:\n{}",
            cfg.seed,
            cfg.durability,
            errors.join("\n"),
            server.log_text()
        );
        assert_eq!(
            dbsize(&mut c),
            live + cfg.ballast_keys as u64,
            "cycle {cycle}: DBSIZE counts keys no writer owns (or misses some)"
        );
        if !sync {
            let bound = async_window_bound(FLUSH_INTERVAL_MS);
            assert!(
                fig.max_loss_window_ms <= bound.as_millis() as u64,
                "cycle {cycle}: async lost a write acknowledged {} ms before the kill (bound {bound:?})",
                fig.max_loss_window_ms
            );
        }
        if std::env::var("RELIAB_PROGRESS").is_ok() && (cycle + 1) % 50 == 0 {
            eprintln!("after {} cycles ({:?}): {fig}", cycle + 1, began.elapsed());
        }
    }
    let keys: Vec<String> = (0..cfg.ballast_keys).map(|i| ballast(i).0).collect();
    let got = mget(&mut server.client(), &keys);
    for (i, v) in got.into_iter().enumerate() {
        assert_eq!(v, Some(ballast(i).1), "ballast key {i} lost or changed");
    }
    stop(&mut server);
    eprintln!("crash loop {} ({:?}): {fig}", cfg.durability, began.elapsed());
    fig
}
