//! The reliability suite's crash loop (issue 8): mixed load from several writer connections
//! (SET, MSET across shards, INCR, DEL, EXPIREAT, PERSIST) and readers, `kill -9` at a random
//! moment, `ringcache check` on the directory (no holes, nothing but a torn tail), restart on
//! the same data directory, and every key checked by the oracle (`tests/reliability_common`).
//!
//! The fast tiers here run in the test command. The long run is
//! `scripts/crash-loop.sh --cycles 1000 [--durability sync|async] [--snapshots]`, which runs
//! [`crash_loop_long`] with its settings from the environment and prints the figures.

mod common;
mod durability_common;
mod reliability_common;

use common::*;
use durability_common::*;
use reliability_common::*;

fn fast(durability: &'static str, cycles: usize, snapshots: bool) -> LoopConfig {
    LoopConfig {
        cycles,
        durability,
        threads: 2,
        writers: 6,
        readers: 1,
        kill_after_ms: (20, 250),
        snapshots,
        check_each_cycle: true,
        ballast_keys: if snapshots { 100_000 } else { 0 },
        seed: seed(),
    }
}

/// `sync`: 0 acknowledged writes lost, 0 phantom values, over 20 kills; snapshots and
/// compaction run all the time (a snapshot every 64 KiB of log), so kills land in them too.
#[test]
fn crash_loop_sync_loses_no_acknowledged_write() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("crash-loop-sync");
    let fig = crash_loop(&fast("sync", 20, true), &dir.path);
    assert_eq!((fig.lost_acked, fig.phantom), (0, 0), "{fig}");
    assert!(fig.acked_ops >= 20, "too little load to mean anything: {fig}");
}

/// `async`: loss only inside the flush window, and each shard keeps a prefix of every
/// writer's commands.
#[test]
fn crash_loop_async_keeps_a_prefix_and_loses_only_the_flush_window() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("crash-loop-async");
    let fig = crash_loop(&fast("async", 20, false), &dir.path);
    assert_eq!(fig.phantom, 0, "{fig}");
}

/// The long tier: `scripts/crash-loop.sh` sets `RELIAB_CYCLES`, `RELIAB_DURABILITY`,
/// `RELIAB_SNAPSHOTS`; prints `FIGURES ...` at the end.
#[test]
#[ignore = "long run: scripts/crash-loop.sh"]
fn crash_loop_long() {
    let env = |k: &str| std::env::var(k).ok();
    let cycles = env("RELIAB_CYCLES").and_then(|s| s.parse().ok()).unwrap_or(1000);
    let durability = match env("RELIAB_DURABILITY").as_deref() {
        Some("async") => "async",
        _ => "sync",
    };
    let snapshots = env("RELIAB_SNAPSHOTS").is_some_and(|s| s == "1");
    let cfg = LoopConfig { kill_after_ms: (20, 500), ..fast(durability, cycles, snapshots) };
    let dir = DataDir::new("crash-loop-long");
    let began = std::time::Instant::now();
    let fig = crash_loop(&cfg, &dir.path);
    println!(
        "FIGURES durability={durability} snapshots={snapshots} seed={} elapsed_s={} {fig}",
        cfg.seed,
        began.elapsed().as_secs()
    );
    if durability == "sync" {
        assert_eq!((fig.lost_acked, fig.phantom), (0, 0), "{fig}");
    } else {
        assert_eq!(fig.phantom, 0, "{fig}");
    }
}

/// The k-th I/O operation on the log (preallocation or durable write) fails with EIO, for
/// every k of a small workload, once and for good (`RINGCACHE_TEST_FAULTS=op_eio_once=K`,
/// `op_eio_from=K`), through the real server: no `+OK` for a write that is not durable, the
/// shard fail-stops (`-IOERR` for every later write, even when the disk works again), reads go
/// on, and a restart without faults recovers every acknowledged write and nothing else. The
/// same sweep over every operation of the writer, with power-loss images, is
/// `tests/power_loss.rs`.
#[test]
fn kth_log_io_failure_through_the_server_never_acknowledges_without_durability() {
    if Server::own_only() {
        return;
    }
    const WRITES: usize = 5;
    // The first SET's flush creates the segment: preallocate (op 1), header (op 2), flush
    // (op 3); each later SET is one flush.
    let total = WRITES as u64 + 2;
    for from in [false, true] {
        for k in 1..=total {
            let what = format!("op {k} fails {}", if from { "for good" } else { "once" });
            let dir = DataDir::new(&format!("kth-{from}-{k}"));
            let fault = format!("op_eio_{}={k}", if from { "from" } else { "once" });
            let args = server_args(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb"]);
            let mut s = Server::spawn_with_env(&args, &[("RINGCACHE_TEST_FAULTS", fault.as_str())]);
            let mut c = s.client();
            let mut acked = Vec::new();
            let mut failed_at = None;
            for i in 0..WRITES {
                let r: redis::RedisResult<redis::Value> = redis::cmd("SET").arg(format!("k{i}")).arg("v").query(&mut c);
                match (r, failed_at) {
                    (Ok(redis::Value::Okay), None) => acked.push(i),
                    (Ok(v), _) => panic!("{what}: SET k{i} replied {v:?} (failed at {failed_at:?})"),
                    (Err(e), None) => {
                        // The write in flight: its connection is closed without a reply.
                        assert!(reliability_common::crashed(&e), "{what}: SET k{i}: {e}");
                        failed_at = Some(i);
                        c = s.client();
                    }
                    (Err(e), Some(_)) => assert!(e.to_string().contains("IOERR"), "{what}: SET k{i}: {e}"),
                }
            }
            assert_eq!(failed_at, Some(k.saturating_sub(3) as usize), "{what}: acked {acked:?}");
            assert!(info(&mut c)["wal_shard0"].contains("state=failed"), "{what}");
            if let Some(&i) = acked.last() {
                let v: String = redis::cmd("GET").arg(format!("k{i}")).query(&mut c).unwrap();
                assert_eq!(v, "v", "{what}: reads go on");
            }
            drop(c);
            crash(&mut s);
            let s = start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb"]);
            let mut c = s.client();
            let keys: Vec<String> = (0..WRITES).map(|i| format!("k{i}")).collect();
            let got = mget(&mut c, &keys);
            for (i, v) in got.iter().enumerate() {
                if acked.contains(&i) {
                    assert_eq!(v.as_deref(), Some("v"), "{what}: acknowledged k{i} lost");
                } else if Some(i) != failed_at {
                    assert_eq!(v, &None, "{what}: k{i} was refused but recovered");
                }
            }
            // The reopened log takes writes.
            let _: () = redis::cmd("SET").arg("after").arg("restart").query(&mut c).unwrap();
        }
    }
}

// The oracle itself: it must reject what recovery must never produce.

use reliability_common::oracle::{encode_value, Figures, KState, WriterModel, ABSENT};

fn set(m: &WriterModel, slot: usize, seq: u64) -> KState {
    KState { val: Some(encode_value(&m.keys[slot], m.id, seq)), expire_at_s: None }
}

/// A writer on one shard with three acknowledged SETs of slot 0, 1, 0 and one in flight on
/// slot 1.
fn history() -> (WriterModel, [KState; 4]) {
    let mut m = WriterModel::new(3, 1);
    let s = [set(&m, 0, 1), set(&m, 1, 2), set(&m, 0, 3), set(&m, 1, 4)];
    for (i, (slot, st)) in [(0, &s[0]), (1, &s[1]), (0, &s[2])].into_iter().enumerate() {
        m.issue(i as u64 + 1, format!("SET {slot}"), vec![(slot, st.clone())]);
        m.ack();
    }
    m.issue(4, "SET 1".into(), vec![(1, s[3].clone())]);
    (m, s)
}

fn state(s0: &KState, s1: &KState) -> Vec<KState> {
    vec![s0.clone(), s1.clone(), ABSENT, ABSENT, ABSENT]
}

#[test]
fn oracle_sync_accepts_acked_or_in_flight_and_rejects_loss_and_phantoms() {
    let t = std::time::Instant::now();
    let verify = |now: Vec<KState>| {
        let (mut m, _) = history();
        let mut f = Figures::default();
        (m.verify(&now, true, t, &[], &mut f), f)
    };
    let (_, s) = history();
    assert!(verify(state(&s[2], &s[1])).0.is_empty(), "the acknowledged state");
    let (e, f) = verify(state(&s[2], &s[3]));
    assert!(e.is_empty() && f.inflight_survived == 1, "the in-flight write may survive");
    let (e, f) = verify(state(&s[0], &s[1]));
    assert!(!e.is_empty() && f.lost_acked == 1, "an acknowledged write lost: {e:?}");
    let forged = KState { val: Some("rl:w3:k0|w3|s9|0000000000000000".into()), expire_at_s: None };
    let (e, f) = verify(state(&forged, &s[1]));
    assert!(!e.is_empty() && f.phantom == 1, "a value never written: {e:?}");
    // A reader saw the in-flight value: it must survive.
    let (mut m, s) = history();
    let mut f = Figures::default();
    let e = m.verify(&state(&s[2], &s[1]), true, t, &[(1, s[3].val.clone().unwrap())], &mut f);
    assert!(!e.is_empty(), "a value a reader was shown was lost");
}

#[test]
fn oracle_async_accepts_prefixes_only() {
    let t = std::time::Instant::now();
    let (_, s) = history();
    let run = |now: Vec<KState>| {
        let (mut m, _) = history();
        let mut f = Figures::default();
        (m.verify(&now, false, t, &[], &mut f), f)
    };
    let (e, f) = run(state(&s[0], &s[1]));
    assert!(e.is_empty() && f.lost_acked == 1, "a prefix (the last SET lost): {e:?} {f}");
    let (e, f) = run(state(&ABSENT, &ABSENT));
    assert!(e.is_empty() && f.lost_acked == 3, "the empty prefix: {e:?} {f}");
    // SET 3 kept while SET 2 on the same shard was lost: not a prefix.
    let (e, f) = run(state(&s[2], &ABSENT));
    assert!(!e.is_empty() && f.phantom == 1, "a hole: {e:?}");
}
