//! Snapshots through the real binary on real files: roundtrips at scale, point in time under
//! concurrent writes, kill -9 during snapshots and compaction, fallback from a damaged newest
//! snapshot, compaction without gaps, expiry on load, write failures, thread-count changes, and
//! the SAVE/BGSAVE/LASTSAVE/SHUTDOWN replies. The format and the decision tables are in
//! `docs/SNAPSHOT.md`.

mod common;
mod durability_common;

use common::*;
use durability_common::*;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn seed() -> u64 {
    let s = std::env::var("DURTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {s} (rerun with DURTEST_SEED={s})");
    s
}

fn key(i: usize) -> String {
    format!("key:{i:07}")
}

fn value(i: usize, round: usize) -> String {
    format!("value-{round}-{i}-{}", "x".repeat(i % 23))
}

/// Sets keys `from..to` to `value(i, round)` with pipelined MSETs of 200 pairs on one raw
/// connection (fast enough for a million keys).
fn bulk_set(addr: SocketAddr, from: usize, to: usize, round: usize) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let ids: Vec<usize> = (from..to).collect();
    for window in ids.chunks(200 * 50) {
        let mut out = Vec::new();
        let mut cmds = 0;
        for batch in window.chunks(200) {
            out.extend_from_slice(format!("*{}\r\n$4\r\nMSET\r\n", 1 + batch.len() * 2).as_bytes());
            for &i in batch {
                let (k, v) = (key(i), value(i, round));
                out.extend_from_slice(format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()).as_bytes());
            }
            cmds += 1;
        }
        s.write_all(&out).unwrap();
        let want = cmds * 5;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"+OK\r\n".repeat(cmds), "MSET replies");
    }
}

fn query<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c)
}

/// One command on a raw connection: the exact reply.
fn raw(r: &mut Raw, args: &[&str]) -> Reply {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    r.cmd(&resp(&a))
}

fn err(s: &str) -> Reply {
    Reply::Error(s.to_string())
}

fn save(c: &mut redis::Connection) {
    let r: String = query(c, &["SAVE"]).expect("SAVE");
    assert_eq!(r, "OK");
}

/// `snap-*.snap` files of a shard directory, ascending.
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    v.sort();
    v
}

fn lsn_of(p: &Path) -> u64 {
    let n = p.file_name().unwrap().to_string_lossy().into_owned();
    n.trim_start_matches("snap-").trim_start_matches("wal-").split('.').next().unwrap().parse().unwrap()
}

/// Every key `0..n` has `value(i, round)`.
fn assert_all(c: &mut redis::Connection, n: usize, round: usize, what: &str) {
    let keys: Vec<String> = (0..n).map(key).collect();
    for (i, v) in mget(c, &keys).into_iter().enumerate() {
        assert_eq!(v.as_deref(), Some(value(i, round).as_str()), "{what}: key {i}");
    }
    assert_eq!(dbsize(c), n as u64, "{what}: DBSIZE");
}

// 1. Roundtrip at scale.

fn roundtrip(name: &str, durability: &str, compression: &str, n: usize) {
    let dir = DataDir::new(name);
    let extra = ["--snapshot-compression", compression, "--snapshot-interval-s", "3600"];
    let mut server = start(&dir.path, durability, 2, &extra);
    let t = Instant::now();
    bulk_set(server.addr, 0, n, 1);
    eprintln!("{name}: loaded {n} keys in {:?}", t.elapsed());
    let mut c = server.client();
    let t = Instant::now();
    save(&mut c);
    eprintln!("{name}: SAVE took {:?}", t.elapsed());
    drop(c);
    // kill -9: nothing but the snapshot (and, with a log, records after it: none) can restore.
    crash(&mut server);
    let mut server = start(&dir.path, durability, 2, &extra);
    let mut c = server.client();
    let info = info(&mut c);
    assert_eq!(info_u64(&info, "recovery_snapshot_keys"), n as u64, "{info:?}");
    assert_eq!(info_u64(&info, "recovery_snapshots_loaded"), 2);
    if durability != "off" {
        assert_eq!(info_u64(&info, "recovery_records"), 0, "the log after the snapshot is empty");
    }
    eprintln!(
        "{name}: recovery {} ms, {} snapshot bytes, {} MB/s",
        info["recovery_total_ms_max"], info["recovery_snapshot_bytes"], info["recovery_snapshot_mb_per_s"]
    );
    assert_all(&mut c, n, 1, name);
    drop(c);
    stop(&mut server);
}

#[test]
fn roundtrip_of_a_million_keys_with_lz4_and_a_log() {
    roundtrip("rt-lz4", "async", "lz4", 1_000_000);
}

#[test]
fn roundtrip_of_a_million_keys_uncompressed_without_a_log() {
    // `--durability off` with snapshots: Redis with RDB and no AOF.
    roundtrip("rt-none", "off", "none", 1_000_000);
}

// 2. Point in time under concurrent writes.

/// One shard, `sync`, one writer doing one command at a time: the i-th logged record has LSN i,
/// so the model knows the state at every LSN. A BGSAVE starts while the writer overwrites and
/// deletes keys the walk has not reached yet; the snapshot alone (the log removed from a copy)
/// must load exactly the model's state at the snapshot's LSN, and the preserve path must have
/// been used.
#[test]
fn snapshot_under_concurrent_writes_equals_the_state_at_its_lsn() {
    let seed = seed();
    let dir = DataDir::new("pit");
    let extra = ["--snapshot-compression", "none"];
    let mut server = start(&dir.path, "sync", 1, &extra);
    let preload = 200_000;
    bulk_set(server.addr, 0, preload, 0);
    // Model: state after each LSN, as a list of changes (lsn, key, Some(value) | None).
    let mut state: HashMap<String, String> = (0..preload).map(|i| (key(i), value(i, 0))).collect();
    let mut changes: Vec<(u64, String, Option<String>)> = Vec::new();
    let mut lsn = preload as u64;
    let addr = server.addr;
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saver = {
        let stop_flag = stop_flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut c = connect(addr);
            let r: String = query(&mut c, &["BGSAVE"]).unwrap();
            assert_eq!(r, "Background saving started");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let i = info(&mut c);
                if i["rdb_bgsave_in_progress"] == "0" && info_u64(&i, "snapshots_taken") >= 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "BGSAVE never finished: {i:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
            stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut c = server.client();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = 0;
    while !stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
        let k = key(rng.gen_range(0..preload + 1000));
        ops += 1;
        if rng.gen_bool(0.25) {
            let n: i64 = query(&mut c, &["DEL", &k]).unwrap();
            assert_eq!(n == 1, state.contains_key(&k));
            if state.remove(&k).is_some() {
                lsn += 1;
                changes.push((lsn, k, None));
            }
        } else {
            let v = format!("w{ops}");
            let _: () = query(&mut c, &["SET", &k, &v]).unwrap();
            lsn += 1;
            state.insert(k.clone(), v.clone());
            changes.push((lsn, k, Some(v)));
        }
    }
    saver.join().unwrap();
    let i = info(&mut c);
    let peak = info_u64(&i, "snapshot_preserved_peak_bytes_max");
    eprintln!("{ops} writes, {} changes; preserved peak {peak} bytes", changes.len());
    assert!(peak > 0, "no write hit an entry the walk had not reached: the test proved nothing ({i:?})");
    drop(c);
    crash(&mut server);

    let shard = shard_dir(&dir.path, 0);
    let snaps = snapshots(&shard);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let snap_lsn = lsn_of(&snaps[0]);
    assert!(snap_lsn > preload as u64 && snap_lsn < lsn, "snapshot at {snap_lsn}, writes {preload}..{lsn}");
    // The model at the snapshot's LSN.
    let mut at: HashMap<String, String> = (0..preload).map(|i| (key(i), value(i, 0))).collect();
    for (l, k, v) in &changes {
        if *l > snap_lsn {
            break;
        }
        match v {
            Some(v) => at.insert(k.clone(), v.clone()),
            None => at.remove(k),
        };
    }
    // The snapshot alone, in a copy without the log.
    let copy = DataDir::new("pit-copy");
    copy_dir(&dir.path, &copy.path);
    for seg in segments(&shard_dir(&copy.path, 0)) {
        std::fs::remove_file(seg).unwrap();
    }
    let mut p = start(&copy.path, "sync", 1, &[]);
    let mut c = p.client();
    assert_eq!(dbsize(&mut c), at.len() as u64, "snapshot at LSN {snap_lsn}: key count");
    let keys: Vec<String> = (0..preload + 1000).map(key).collect();
    for (k, v) in keys.iter().zip(mget(&mut c, &keys)) {
        assert_eq!(v.as_ref(), at.get(k), "snapshot at LSN {snap_lsn}: {k}");
    }
    drop(c);
    stop(&mut p);
    // With the log: every acknowledged write.
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    assert_eq!(dbsize(&mut c), state.len() as u64);
    for (k, v) in keys.iter().zip(mget(&mut c, &keys)) {
        assert_eq!(v.as_ref(), state.get(k), "after replay: {k}");
    }
    drop(c);
    stop(&mut server);
}

// 3. kill -9 at random points during snapshots and compaction.

#[test]
fn kill9_during_snapshots_and_compaction_loses_no_acknowledged_write() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = DataDir::new("kill9");
    // Tiny segments and a snapshot every 64 KiB of log: snapshots, retention and compaction run
    // all the time, so the kills land in the middle of them.
    let extra = ["--wal-segment-bytes", "64kb", "--snapshot-wal-bytes", "64kb", "--snapshot-retain", "2"];
    let mut acked: HashMap<String, String> = HashMap::new();
    // The write in flight at each kill: it may or may not have happened.
    let mut in_flight: HashMap<String, String> = HashMap::new();
    let (mut taken, mut deleted) = (0, 0);
    for cycle in 0..6 {
        let mut server = start(&dir.path, "sync", 2, &extra);
        let mut c = server.client();
        // Everything acknowledged so far is there.
        check_acked(&mut c, &acked, &in_flight, &format!("cycle {cycle}"));
        assert!(find_files(&dir.path, ".tmp").is_empty(), "stray .tmp files survived recovery");
        let addr = server.addr;
        let kill_after = Duration::from_millis(rng.gen_range(300..1500));
        let writer = std::thread::spawn(move || {
            let mut c = connect(addr);
            let mut done = Vec::new();
            let start = Instant::now();
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(10) {
                let k = format!("c{cycle}:{}", i % 3000);
                let v = format!("{cycle}-{i}-{}", "y".repeat(i % 200));
                i += 1;
                match query::<()>(&mut c, &["SET", &k, &v]) {
                    Ok(()) => done.push((k, v)),
                    Err(_) => return (done, Some((k, v))),
                }
            }
            (done, None)
        });
        std::thread::sleep(kill_after);
        let i = info(&mut c);
        taken += info_u64(&i, "snapshots_taken");
        deleted += info_u64(&i, "snapshot_wal_segments_deleted");
        crash(&mut server);
        let (done, pending) = writer.join().unwrap();
        for (k, v) in done {
            acked.insert(k, v);
        }
        in_flight.extend(pending);
    }
    let mut server = start(&dir.path, "sync", 2, &extra);
    let mut c = server.client();
    check_acked(&mut c, &acked, &in_flight, "final");
    eprintln!("{} keys acknowledged; {taken} snapshots, {deleted} segments compacted", acked.len());
    // Typically dozens of each; the floor only proves that kills could land in them.
    assert!(taken >= 3 && deleted >= 1, "snapshots {taken}, segments deleted {deleted}: compaction never ran");
    drop(c);
    stop(&mut server);
}

/// Every acknowledged write is there; a key whose last write was in flight at a kill may hold
/// that value instead.
fn check_acked(
    c: &mut redis::Connection,
    acked: &HashMap<String, String>,
    in_flight: &HashMap<String, String>,
    what: &str,
) {
    let keys: Vec<String> = acked.keys().cloned().collect();
    for (k, v) in keys.iter().zip(mget(c, &keys)) {
        let ok = v.as_ref() == acked.get(k) || (v.is_some() && v.as_ref() == in_flight.get(k));
        assert!(ok, "{what}: acknowledged write of {k} lost: found {v:?}, acknowledged {:?}", acked.get(k));
    }
}

// 4. A damaged newest snapshot falls back to the previous one.

fn write_round(c: &mut redis::Connection, from: usize, to: usize) {
    for i in from..to {
        let _: () = query(c, &["SET", &key(i), &value(i, 7)]).unwrap();
    }
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = DataDir::new("fallback");
    let mut server = start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb"]);
    let mut c = server.client();
    write_round(&mut c, 0, 1500);
    save(&mut c);
    write_round(&mut c, 1500, 3000);
    save(&mut c);
    write_round(&mut c, 3000, 3500);
    drop(c);
    crash(&mut server);
    let shard = shard_dir(&dir.path, 0);
    let snaps = snapshots(&shard);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    // Compaction kept the log from the older snapshot on.
    assert!(lsn_of(&segments(&shard)[0]) <= lsn_of(&snaps[0]) + 1);
    let newest = snaps[1].clone();
    let bytes = std::fs::read(&newest).unwrap();
    let damage: Vec<(&str, Vec<u8>)> = vec![
        ("bit flip in a chunk", {
            let mut b = bytes.clone();
            b[200] ^= 0x10;
            b
        }),
        ("bit flip in the header", {
            let mut b = bytes.clone();
            b[25] ^= 1;
            b
        }),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, damaged) in damage {
        let copy = DataDir::new("fallback-copy");
        copy_dir(&dir.path, &copy.path);
        let target = shard_dir(&copy.path, 0).join(newest.file_name().unwrap());
        std::fs::write(&target, &damaged).unwrap();
        let mut p = start(&copy.path, "sync", 1, &[]);
        let mut c = p.client();
        let i = info(&mut c);
        assert_eq!(info_u64(&i, "recovery_snapshot_fallbacks"), 1, "{what}: {i:?}");
        assert_eq!(info_u64(&i, "recovery_snapshot_keys"), 1500, "{what}: the older snapshot was loaded");
        let keys: Vec<String> = (0..3500).map(key).collect();
        for (n, v) in mget(&mut c, &keys).into_iter().enumerate() {
            assert_eq!(v, Some(value(n, 7)), "{what}: key {n}");
        }
        assert!(p.log_text().contains("falling back to the previous snapshot"), "{what}: no warning");
        assert!(target.with_extension("snap.corrupt").exists(), "{what}: damaged file not set aside");
        drop(c);
        stop(&mut p);
    }
}

// 5. Compaction never leaves a gap.

#[test]
fn compaction_keeps_the_log_the_oldest_retained_snapshot_needs() {
    let dir = DataDir::new("gap");
    let mut server = start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb", "--snapshot-retain", "2"]);
    let mut c = server.client();
    let shard = shard_dir(&dir.path, 0);
    for round in 0..5 {
        write_round(&mut c, round * 600, (round + 1) * 600);
        save(&mut c);
        let snaps = snapshots(&shard);
        assert!(snaps.len() <= 2, "retention: {snaps:?}");
        let segs = segments(&shard);
        let oldest = lsn_of(&snaps[0]);
        assert!(lsn_of(&segs[0]) <= oldest + 1, "round {round}: log starts at {:?}, oldest snapshot {oldest}", segs[0]);
        // Consecutive segments: each name is after the previous one (no segment in the middle
        // is ever deleted).
        for w in segs.windows(2) {
            assert!(lsn_of(&w[0]) < lsn_of(&w[1]));
        }
    }
    let i = info(&mut c);
    assert!(info_u64(&i, "snapshot_wal_segments_deleted") > 0, "no segment was compacted: {i:?}");
    assert_eq!(info_u64(&i, "snapshots_deleted"), 3);
    write_round(&mut c, 3000, 3100);
    drop(c);
    crash(&mut server);
    // Recovery from the OLDEST retained snapshot alone (the newest removed) has everything.
    let copy = DataDir::new("gap-copy");
    copy_dir(&dir.path, &copy.path);
    let snaps = snapshots(&shard_dir(&copy.path, 0));
    std::fs::remove_file(&snaps[1]).unwrap();
    let mut p = start(&copy.path, "sync", 1, &[]);
    let mut c = p.client();
    let keys: Vec<String> = (0..3100).map(key).collect();
    for (n, v) in mget(&mut c, &keys).into_iter().enumerate() {
        assert_eq!(v, Some(value(n, 7)), "key {n}");
    }
    drop(c);
    stop(&mut p);
}

// 6. Expired keys are dropped on load.

#[test]
fn expired_keys_are_dropped_when_a_snapshot_loads() {
    let dir = DataDir::new("expiry");
    let mut server = start(&dir.path, "async", 2, &[]);
    let mut c = server.client();
    for i in 0..100 {
        let _: () = query(&mut c, &["SET", &format!("short{i}"), "v", "PX", "1000"]).unwrap();
        let _: () = query(&mut c, &["SET", &format!("long{i}"), "v", "EX", "3600"]).unwrap();
        let _: () = query(&mut c, &["SET", &format!("plain{i}"), "v"]).unwrap();
    }
    save(&mut c);
    drop(c);
    crash(&mut server);
    std::thread::sleep(Duration::from_millis(1200));
    let mut server = start(&dir.path, "async", 2, &[]);
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "recovery_snapshot_keys"), 200, "expired entries were inserted: {i:?}");
    assert_eq!(dbsize(&mut c), 200);
    let ttl: i64 = query(&mut c, &["TTL", "long5"]).unwrap();
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");
    drop(c);
    stop(&mut server);
}

// 7. Replies.

#[test]
fn save_bgsave_lastsave_and_shutdown_reply_as_redis() {
    let dir = DataDir::new("replies");
    let mut server = start(&dir.path, "async", 2, &[]);
    let mut c = server.client();
    let before: i64 = query(&mut c, &["LASTSAVE"]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - 60..=now).contains(&before), "LASTSAVE at start is the start time: {before}");
    let mut r = server.raw();
    assert_eq!(raw(&mut r, &["SAVE", "x"]), err("ERR wrong number of arguments for 'save' command"));
    assert_eq!(raw(&mut r, &["BGSAVE", "x"]), err("ERR syntax error"));
    assert_eq!(raw(&mut r, &["BGSAVE", "SCHEDULE", "x"]), err("ERR syntax error"));
    assert_eq!(raw(&mut r, &["LASTSAVE", "x"]), err("ERR wrong number of arguments for 'lastsave' command"));
    bulk_set(server.addr, 0, 1000, 0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(raw(&mut r, &["SAVE"]), Reply::Simple("OK".into()));
    let after: i64 = query(&mut c, &["LASTSAVE"]).unwrap();
    assert!(after > before, "LASTSAVE moved: {before} -> {after}");
    assert_eq!(raw(&mut r, &["BGSAVE"]), Reply::Simple("Background saving started".into()));
    // A second BGSAVE while one runs: Redis's error, or (if it already ended) started again;
    // SCHEDULE is accepted either way.
    let again = raw(&mut r, &["BGSAVE"]);
    assert!(
        again == Reply::Simple("Background saving started".into())
            || again == err("ERR Background save already in progress"),
        "{again:?}"
    );
    let sched = raw(&mut r, &["BGSAVE", "SCHEDULE"]);
    assert!(
        sched == Reply::Simple("Background saving started".into())
            || sched == Reply::Simple("Background saving scheduled".into()),
        "{sched:?}"
    );
    let cfg: Vec<String> = query(&mut c, &["CONFIG", "GET", "save"]).unwrap();
    assert_eq!(cfg, vec!["save".to_string(), String::new()]);
    assert_eq!(raw(&mut r, &["SHUTDOWN", "NOSAVE", "SAVE"]), err("ERR syntax error"));
    // Wait for the BGSAVEs to end (a scheduled one starts within 10 ms of the previous one's
    // end, so "not in progress" must hold for a while), then SHUTDOWN NOSAVE: no new snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut idle_polls = 0;
    while idle_polls < 10 {
        assert!(Instant::now() < deadline, "BGSAVEs never ended");
        idle_polls = if info(&mut c)["rdb_bgsave_in_progress"] == "0" { idle_polls + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(50));
    }
    let _: () = query(&mut c, &["SET", "after-save", "1"]).unwrap();
    let before_files = find_files(&dir.path, ".snap");
    let _ = query::<()>(&mut c, &["SHUTDOWN", "NOSAVE"]);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(find_files(&dir.path, ".snap"), before_files, "SHUTDOWN NOSAVE wrote a snapshot");
    // Plain SHUTDOWN (default --snapshot-on-shutdown yes) writes one per shard.
    let mut server = start(&dir.path, "async", 2, &["--snapshot-on-shutdown", "yes"]);
    let mut c = server.client();
    let _: () = query(&mut c, &["SET", "after-restart", "1"]).unwrap();
    let _ = query::<()>(&mut c, &["SHUTDOWN"]);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let after_files = find_files(&dir.path, ".snap");
    assert_ne!(after_files, before_files, "SHUTDOWN wrote no snapshot");
}

#[test]
fn save_without_persistence_is_refused_with_the_reason() {
    if Server::own_only() {
        return;
    }
    let s = Server::start();
    let mut r = s.raw();
    for cmd in ["SAVE", "BGSAVE"] {
        match raw(&mut r, &[cmd]) {
            Reply::Error(e) => assert!(e.starts_with("ERR snapshots are disabled"), "{e}"),
            other => panic!("{cmd} without persistence: {other:?}"),
        }
    }
    assert!(matches!(raw(&mut r, &["LASTSAVE"]), Reply::Int(_)));
}

// 8. A failed snapshot write keeps the previous snapshot and the whole log.

#[test]
fn failed_snapshot_write_keeps_the_previous_snapshot_and_the_log() {
    let dir = DataDir::new("enospc");
    let flag = dir.path.join("no-space");
    let fault = format!("snap_enospc_while={}", flag.display());
    let args = server_args(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb"]);
    let mut server = Server::spawn_with_env(&args, &[("RINGCACHE_TEST_FAULTS", fault.as_str())]);
    let mut c = server.client();
    write_round(&mut c, 0, 500);
    save(&mut c);
    let shard = shard_dir(&dir.path, 0);
    let snaps_before = snapshots(&shard);
    write_round(&mut c, 500, 1500);
    let segs_before = segments(&shard);
    std::fs::write(&flag, b"").unwrap();
    let mut r = server.raw();
    assert_eq!(raw(&mut r, &["SAVE"]), err("ERR"), "Redis's reply to a failed SAVE");
    let i = info(&mut c);
    assert_eq!(i["rdb_last_bgsave_status"], "err");
    assert!(i["snapshot_shard0"].contains("No space left"), "{i:?}");
    assert_eq!(snapshots(&shard), snaps_before, "the previous snapshot must stay");
    assert_eq!(segments(&shard), segs_before, "no log data may be deleted");
    assert!(find_files(&dir.path, ".tmp").is_empty(), "the temporary file must be removed");
    assert!(server.log_text().contains("snapshot failed"), "not logged");
    std::fs::remove_file(&flag).unwrap();
    save(&mut c);
    assert_eq!(info(&mut c)["rdb_last_bgsave_status"], "ok");
    drop(c);
    crash(&mut server);
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let keys: Vec<String> = (0..1500).map(key).collect();
    for (n, v) in mget(&mut c, &keys).into_iter().enumerate() {
        assert_eq!(v, Some(value(n, 7)), "key {n}");
    }
    drop(c);
    stop(&mut server);
}

// 9. Thread-count changes re-route snapshots and logs.

#[test]
fn thread_count_change_reroutes_snapshot_and_log() {
    // `sync`: the records after the snapshot are acknowledged durable before the kill.
    for durability in ["sync", "off"] {
        let dir = DataDir::new(&format!("threads-{durability}"));
        let extra = ["--snapshot-interval-s", "3600"];
        let mut server = start(&dir.path, durability, 2, &extra);
        bulk_set(server.addr, 0, 20_000, 3);
        let mut c = server.client();
        save(&mut c);
        if durability != "off" {
            // Records after the snapshot, replayed from the log.
            write_round(&mut c, 20_000, 20_500);
        }
        let _: i64 = query(&mut c, &["DEL", &key(7)]).unwrap();
        if durability == "off" {
            save(&mut c);
        }
        drop(c);
        crash(&mut server);
        for threads in [3, 1] {
            let mut server = start(&dir.path, durability, threads, &extra);
            let mut c = server.client();
            let n = if durability == "off" { 20_000 } else { 20_500 };
            let keys: Vec<String> = (0..n).map(key).collect();
            for (i, v) in mget(&mut c, &keys).into_iter().enumerate() {
                let want = match i {
                    7 => None,
                    i if i >= 20_000 => Some(value(i, 7)),
                    i => Some(value(i, 3)),
                };
                assert_eq!(v, want, "{durability}, {threads} threads: key {i}");
            }
            assert_eq!(dbsize(&mut c), n as u64 - 1);
            assert_eq!(layout(&dir.path).0, threads as u32);
            drop(c);
            stop(&mut server);
        }
    }
}

// 10. The offline check tool.

fn run_check(dir: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["check", "--data-dir", &dir.display().to_string()])
        .output()
        .expect("run ringcache check");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_reports_what_recovery_would_do_and_exits_nonzero_on_any_damage() {
    let dir = DataDir::new("check");
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    write_round(&mut c, 0, 100);
    save(&mut c);
    write_round(&mut c, 100, 130);
    drop(c);
    crash(&mut server);
    let (code, text) = run_check(&dir.path);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("recovery loads this one") && text.contains("100 entries"), "{text}");
    assert!(text.contains("30 record(s) to replay after LSN 100"), "{text}");
    assert!(text.contains("no damage found"), "{text}");

    // Garbage after the last flush: a torn tail recovery truncates, still damage for check.
    let torn = DataDir::new("check-torn");
    copy_dir(&dir.path, &torn.path);
    let seg = segments(&shard_dir(&torn.path, 0)).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = written_end(&bytes);
    bytes[end + 100] = 0x5a;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, text) = run_check(&torn.path);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("TORN TAIL") && text.contains(&format!("at offset {end}")), "{text}");
    // `repair` truncates it as recovery would; then the directory checks clean.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(["repair", "--data-dir", &torn.path.display().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("1 torn tail(s) truncated") && text.contains("130 keys"), "{text}");
    let (code, text) = run_check(&torn.path);
    assert_eq!(code, Some(0), "after repair: {text}");

    // A damaged snapshot, and a stray temporary file.
    let bad = DataDir::new("check-bad");
    copy_dir(&dir.path, &bad.path);
    let shard = shard_dir(&bad.path, 0);
    let snap = snapshots(&shard).pop().unwrap();
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[100] ^= 4;
    std::fs::write(&snap, &bytes).unwrap();
    std::fs::write(shard.join("snap-00000000000000000999.tmp"), b"partial").unwrap();
    let (code, text) = run_check(&bad.path);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("DAMAGED: chunk checksum mismatch at offset 64"), "{text}");
    assert!(text.contains("interrupted snapshot"), "{text}");
    assert!(text.contains("no valid snapshot: recovery replays the whole log"), "{text}");
    // Compaction had deleted the log the damaged (only) snapshot covered: refused, never guessed.
    assert!(text.contains("records are missing; recovery refuses to start"), "{text}");
    // check changed nothing.
    assert_eq!(std::fs::read(&snap).unwrap(), bytes);

    let (code, text) = run_check(&dir.path.join("missing"));
    assert_eq!(code, Some(2), "{text}");
}

// 11. docs/OPERATIONS.md's backup and restore, while the server runs and writes.

/// The backup procedure of docs/OPERATIONS.md, steps 2 to 4. Returns false if a file
/// disappeared (the caller starts over).
fn backup(src: &Path, dst: &Path) -> bool {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("LAYOUT"), dst.join("LAYOUT")).unwrap();
    let (shards, g) = layout(dst);
    for shard in 0..shards {
        let rel = PathBuf::from(format!("gen-{g}")).join(format!("shard-{shard:03}"));
        let (from, to) = (src.join(&rel), dst.join(&rel));
        std::fs::create_dir_all(&to).unwrap();
        let Some(snap) = snapshots(&from).pop() else {
            return false;
        };
        if std::fs::copy(&snap, to.join(snap.file_name().unwrap())).is_err() {
            return false;
        }
        let segs = segments(&from);
        let first = segs.iter().rposition(|p| lsn_of(p) <= lsn_of(&snap) + 1).unwrap_or(0);
        for seg in &segs[first..] {
            if std::fs::copy(seg, to.join(seg.file_name().unwrap())).is_err() {
                return false;
            }
        }
    }
    true
}

#[test]
fn backup_while_running_then_restore_keeps_every_write_acknowledged_before_it() {
    let dir = DataDir::new("backup");
    // Small segments and a low log-size trigger, so rotation, snapshots and compaction happen
    // during the copy.
    let extra = ["--wal-segment-bytes", "64kb", "--snapshot-wal-bytes", "256kb"];
    let mut server = start(&dir.path, "sync", 2, &extra);
    bulk_set(server.addr, 0, 20_000, 5);
    let addr = server.addr;
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let writer = {
        let (stop_flag, acked) = (stop_flag.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut c = connect(addr);
            let mut i = 0;
            while !stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
                let (k, v) = (format!("w:{}", i % 5000), format!("w{i}"));
                let _: () = query(&mut c, &["SET", &k, &v]).unwrap();
                acked.lock().unwrap().push((k, v));
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    // Step 1.
    let before_backup: Vec<(String, String)> = acked.lock().unwrap().clone();
    let mut c = server.client();
    save(&mut c);
    std::thread::sleep(Duration::from_millis(200));
    let copy = DataDir::new("backup-copy");
    let mut tries = 0;
    while !backup(&dir.path, &copy.path) {
        tries += 1;
        assert!(tries < 20, "the backup never completed");
    }
    stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    drop(c);
    stop(&mut server);
    // Restore: a server on the copy, with another shard count for good measure.
    let mut restored = start(&copy.path, "sync", 3, &[]);
    let mut c = restored.client();
    let keys: Vec<String> = (0..20_000).map(key).collect();
    for (i, v) in mget(&mut c, &keys).into_iter().enumerate() {
        assert_eq!(v, Some(value(i, 5)), "preloaded key {i}");
    }
    // Each key written before the backup holds its last value from before the backup or a
    // later one the writer made.
    let all = acked.lock().unwrap().clone();
    let mut last_before: HashMap<String, usize> = HashMap::new();
    for (n, (k, _)) in before_backup.iter().enumerate() {
        last_before.insert(k.clone(), n);
    }
    let wkeys: Vec<String> = last_before.keys().cloned().collect();
    for (k, v) in wkeys.iter().zip(mget(&mut c, &wkeys)) {
        let v = v.unwrap_or_else(|| panic!("{k}: written before the backup, missing after the restore"));
        let pos =
            all.iter().rposition(|(kk, vv)| kk == k && *vv == v).unwrap_or_else(|| panic!("{k}={v} never written"));
        assert!(pos >= last_before[k], "{k}: restored {v}, older than what was acknowledged before the backup");
    }
    eprintln!("backup: {} writes before it, {} in all, {tries} retries", before_backup.len(), all.len());
    drop(c);
    stop(&mut restored);
}

/// The README's run command uses the default `--data-dir ./data`, a relative path. Directory
/// syncs through glommio's `Directory` failed there with EBADF, so every snapshot (SAVE and the
/// shutdown one) failed while the tests, which use absolute paths, passed.
#[test]
fn snapshots_work_with_a_relative_data_dir() {
    if Server::own_only() {
        return;
    }
    let rel = format!("target/tmp-relative-data-{}", std::process::id());
    let _ = std::fs::remove_dir_all(&rel);
    let args: Vec<String> = ["--bind", "127.0.0.1:0", "--threads", "1", "--durability", "async", "--data-dir", &rel]
        .map(String::from)
        .to_vec();
    let mut server = Server::spawn(&args);
    let mut c = server.client();
    let () = redis::cmd("SET").arg("k").arg("v").query(&mut c).expect("SET");
    let saved: String = redis::cmd("SAVE").query(&mut c).expect("SAVE");
    assert_eq!(saved, "OK", "log: {}", server.log_text());
    let () = redis::cmd("SET").arg("k2").arg("v2").query(&mut c).expect("SET");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let log = server.log_text();
    assert!(!log.contains("snapshot failed"), "log: {log}");
    let snaps: Vec<_> = std::fs::read_dir(format!("{rel}/gen-0/shard-000"))
        .expect("shard dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .collect();
    assert_eq!(snaps.len(), 2, "the SAVE snapshot and the shutdown one; log: {log}");
    let _ = std::fs::remove_dir_all(&rel);
}

// 13. Large values: written as large-value frames, straight from the entries; byte-identical
// after kill -9; a snapshot taken while they change holds their versions at its LSN.

/// `len` deterministic bytes that differ for every `seed` (a byte-for-byte check means something).
fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// An entry as a snapshot file holds it: value, expiry, stored as a large-value frame.
type Stored = (Vec<u8>, Option<u64>, bool);

/// Every entry of a snapshot file, by key, and the file's LSN.
fn snapshot_entries(path: &Path) -> (u64, HashMap<Vec<u8>, Stored>) {
    use ringcache::snapshot::format::{self, Frame};
    let bytes = std::fs::read(path).unwrap();
    let mut b = rkyv::util::AlignedVec::<16>::new();
    b.extend_from_slice(&bytes);
    let (header, _) = format::verify(&b).unwrap();
    let mut out = HashMap::new();
    let mut scratch = rkyv::util::AlignedVec::new();
    for f in format::frames(&b) {
        match f.unwrap() {
            Frame::Chunk(c) => {
                for e in format::entries(&c, &mut scratch).unwrap().iter() {
                    out.insert(e.key_bytes().to_vec(), (e.value_bytes().to_vec(), e.expire_at(), false));
                }
            }
            Frame::Large(l) => {
                let mut v = vec![0u8; l.value.len()];
                l.copy_value(&mut v, &mut |_| {}).unwrap();
                out.insert(l.key.to_vec(), (v, l.expire_at_ms, true));
            }
        }
    }
    (header.lsn, out)
}

fn get_bytes(c: &mut redis::Connection, k: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(k).query(c).unwrap()
}

#[test]
fn large_values_survive_snapshot_and_kill9_byte_identical() {
    let dir = DataDir::new("large-values");
    let mut server = start(&dir.path, "sync", 1, &["--snapshot-interval-s", "3600"]);
    let mut c = server.client();
    let sizes = [3 << 20, (7 << 20) + 3, 40 << 20];
    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, &n) in sizes.iter().enumerate() {
        let (k, v) = (format!("big:{i}"), blob(i as u64, n));
        let mut cmd = redis::cmd("SET");
        cmd.arg(&k).arg(&v[..]);
        if i == 2 {
            cmd.arg("EX").arg(3600);
        }
        let _: () = cmd.query(&mut c).unwrap();
        model.insert(k, v);
    }
    for i in 0..300 {
        let _: () = query(&mut c, &["SET", &key(i), &value(i, 1)]).unwrap();
        model.insert(key(i), value(i, 1).into_bytes());
    }
    save(&mut c);
    let shard = shard_dir(&dir.path, 0);
    let (lsn_a, first) = snapshot_entries(snapshots(&shard).last().unwrap());
    assert_eq!(first.len(), model.len());
    for (k, v) in &model {
        let (got, exp, large) = &first[k.as_bytes()];
        assert!(got == v, "{k}: value differs in the snapshot");
        assert_eq!(*large, k.starts_with("big:"), "{k}: values of 1 MiB or more are large-value frames");
        assert_eq!(exp.is_some(), k == "big:2", "{k}: expiry");
    }

    // A second snapshot while the large values change: it must hold them as they were at its
    // LSN (the walk keeps the old version by reference until it is written).
    let _: () = query(&mut c, &["SET", "marker", "1"]).unwrap(); // LSN lsn_a + 1
    let new0 = blob(100, 5 << 20);
    let mut p = redis::pipe();
    p.cmd("BGSAVE").cmd("SET").arg("big:0").arg(&new0[..]).ignore().cmd("DEL").arg("big:1").ignore();
    let (started,): (String,) = p.query(&mut c).unwrap();
    assert_eq!(started, "Background saving started");
    let t = Instant::now();
    while snapshots(&shard).len() < 2 || info_u64(&info(&mut c), "rdb_bgsave_in_progress") != 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "BGSAVE did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (lsn_b, second) = snapshot_entries(snapshots(&shard).last().unwrap());
    // LSNs after lsn_a: the marker, then SET big:0, then DEL big:1.
    assert!((lsn_a + 1..=lsn_a + 3).contains(&lsn_b), "snapshot LSN {lsn_b} after {lsn_a}");
    let want0 = if lsn_b >= lsn_a + 2 { &new0 } else { &model["big:0"] };
    assert!(second[&b"big:0"[..]].0 == *want0, "big:0 at LSN {lsn_b}");
    assert_eq!(second.contains_key(&b"big:1"[..]), lsn_b < lsn_a + 3, "big:1 at LSN {lsn_b}");
    assert!(second[&b"big:2"[..]].0 == model["big:2"]);
    eprintln!("second snapshot at LSN {lsn_b} (first {lsn_a})");
    model.insert("big:0".into(), new0);
    model.remove("big:1");
    model.insert("marker".into(), b"1".to_vec());

    // Writes after the snapshot are in the log only; then kill -9.
    let new2 = blob(200, (1 << 20) + 1);
    let _: () = redis::cmd("SET").arg("big:3").arg(&new2[..]).query(&mut c).unwrap();
    model.insert("big:3".into(), new2);
    drop(c);
    crash(&mut server);

    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "recovery_snapshot_keys"), second.len() as u64, "{i:?}");
    for (k, v) in &model {
        assert!(get_bytes(&mut c, k).as_ref() == Some(v), "{k}: not byte-identical after restart");
    }
    assert_eq!(get_bytes(&mut c, "big:1"), None);
    assert_eq!(dbsize(&mut c), model.len() as u64);
    let ttl: i64 = query(&mut c, &["TTL", "big:2"]).unwrap();
    assert!(ttl > 3000, "TTL of big:2: {ttl}");
    drop(c);
    stop(&mut server);
    let (code, text) = run_check(&dir.path);
    assert_eq!(code, Some(0), "{text}");
    let large_in_b = second.values().filter(|e| e.2).count();
    assert!(text.contains(&format!("version 2, LSN {lsn_b}, {} entries", second.len())), "{text}");
    assert!(text.contains(&format!("and {large_in_b} large values (recovery loads this one)")), "{text}");
}

/// Rewrites a snapshot file as version 1 (the format before large-value frames: the same bytes
/// without them), with the checksums that cover the version.
fn as_version_1(path: &Path) {
    use xxhash_rust::xxh3::xxh3_64;
    let mut b = std::fs::read(path).unwrap();
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&b);
    let (_, s) = ringcache::snapshot::format::verify(&aligned).unwrap();
    assert_eq!(s.large_values, 0, "a version 1 file has no large values");
    let f = s.footer_offset as usize;
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let sum = xxh3_64(&b[..56]);
    b[56..64].copy_from_slice(&sum.to_le_bytes());
    let sum = xxh3_64(&b[..f]);
    b[f + 32..f + 40].copy_from_slice(&sum.to_le_bytes());
    let sum = xxh3_64(&b[f..f + 56]);
    b[f + 56..f + 64].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_version_1_snapshot_still_loads_and_checks() {
    let dir = DataDir::new("snapshot-v1");
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    write_round(&mut c, 0, 200);
    save(&mut c);
    drop(c);
    crash(&mut server);
    let snap = snapshots(&shard_dir(&dir.path, 0)).pop().unwrap();
    as_version_1(&snap);
    let (code, text) = run_check(&dir.path);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("version 1") && text.contains("200 entries"), "{text}");
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    assert_eq!(info_u64(&info(&mut c), "recovery_snapshot_keys"), 200);
    let keys: Vec<String> = (0..200).map(key).collect();
    for (n, v) in mget(&mut c, &keys).into_iter().enumerate() {
        assert_eq!(v, Some(value(n, 7)), "key {n}");
    }
    drop(c);
    stop(&mut server);
}
