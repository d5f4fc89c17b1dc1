//! Memory limit and eviction through the real binary: each policy's contract, the OOM error,
//! CONFIG SET at runtime, recovery of a data directory larger than a lowered limit (and that
//! evicted keys stay evicted across restarts), RSS while writing ten times the limit, and how
//! fast the active cycle reclaims expired keys. The design is in `docs/EVICTION.md`.

mod common;
mod durability_common;

use common::*;
use durability_common::DataDir;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

fn info_section(c: &mut redis::Connection, section: &str) -> HashMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(c).expect("INFO");
    text.lines().filter_map(|l| l.trim_end().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn field(info: &HashMap<String, String>, name: &str) -> u64 {
    info.get(name).unwrap_or_else(|| panic!("INFO has no {name}: {info:?}")).parse().expect("number")
}

fn used_memory(c: &mut redis::Connection) -> u64 {
    field(&info_section(c, "memory"), "used_memory")
}

fn evicted_keys(c: &mut redis::Connection) -> u64 {
    field(&info_section(c, "stats"), "evicted_keys")
}

fn dbsize(c: &mut redis::Connection) -> u64 {
    redis::cmd("DBSIZE").query(c).expect("DBSIZE")
}

fn config_set(c: &mut redis::Connection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query(c).expect("CONFIG SET");
}

/// Pipelines `SET <prefix>:<i> <value>` (with `PX ttl_ms` when given) for i in `range`, reading
/// the replies as it goes; returns how many were refused with the OOM error.
fn fill(
    addr: std::net::SocketAddr,
    prefix: &str,
    range: std::ops::Range<usize>,
    value_bytes: usize,
    ttl_ms: Option<u64>,
) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let value = vec![b'v'; value_bytes];
    let mut refused = 0;
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(500) {
        let mut buf = Vec::new();
        for i in chunk {
            let k = format!("{prefix}:{i}");
            let ttl = ttl_ms.map(|t| t.to_string());
            let mut args: Vec<&[u8]> = vec![b"SET", k.as_bytes(), &value];
            if let Some(t) = &ttl {
                args.extend([&b"PX"[..], t.as_bytes()]);
            }
            buf.extend(resp(&args));
        }
        s.write_all(&buf).expect("write");
        // Each reply is `+OK\r\n` or one error line.
        let mut lines = 0;
        let mut got = Vec::new();
        let mut tmp = [0u8; 65536];
        while lines < chunk.len() {
            let n = s.read(&mut tmp).expect("read");
            assert!(n > 0, "server closed the connection");
            got.extend_from_slice(&tmp[..n]);
            lines = got.windows(2).filter(|w| w == b"\r\n").count();
        }
        let text = String::from_utf8_lossy(&got);
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            if let Some(err) = line.strip_prefix('-') {
                assert_eq!(err, OOM, "unexpected error");
                refused += 1;
            } else {
                assert_eq!(line, "+OK");
            }
        }
    }
    refused
}

fn present(c: &mut redis::Connection, keys: &[String]) -> HashSet<String> {
    let mut out = HashSet::new();
    for chunk in keys.chunks(500) {
        let mut cmd = redis::cmd("MGET");
        for k in chunk {
            cmd.arg(k);
        }
        let vals: Vec<Option<Vec<u8>>> = cmd.query(c).expect("MGET");
        out.extend(chunk.iter().zip(vals).filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()));
    }
    out
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

#[test]
fn noeviction_refuses_writes_with_the_oom_error_and_serves_reads_and_deletes() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(4, &["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let mut c = s.client();
    let refused = fill(s.addr, "k", 0..20_000, 100, None);
    assert!(refused > 5_000, "only {refused} writes refused past the limit");
    let used = used_memory(&mut c);
    // Writes are refused once the limit is passed: each shard may pass it by its last write
    // (and the bucket array that write's insert grew).
    assert!(used <= 1024 * 1024 + 4 * (256 + 8 * 4096), "used_memory {used}");
    assert_eq!(evicted_keys(&mut c), 0);
    // The exact reply, raw.
    let mut raw = s.raw();
    assert_eq!(raw.cmd(&resp(&[b"SET", b"k:new", b"v"])), Reply::Error(OOM.into()));
    assert_eq!(raw.cmd(&resp(&[b"INCR", b"counter"])), Reply::Error(OOM.into()));
    // MSET spanning shards is refused as a whole.
    let r: redis::RedisResult<()> =
        redis::cmd("MSET").arg("a1").arg("x").arg("b2").arg("y").arg("c3").arg("z").query(&mut c);
    assert!(r.unwrap_err().to_string().contains("OOM"));
    let none: Vec<Option<String>> = redis::cmd("MGET").arg("a1").arg("b2").arg("c3").query(&mut c).unwrap();
    assert_eq!(none, vec![None, None, None]);
    // Reads, deletes and EXPIRE (not `denyoom`) work.
    let v: Option<Vec<u8>> = redis::cmd("GET").arg("k:0").query(&mut c).unwrap();
    assert_eq!(v, Some(vec![b'v'; 100]));
    let ok: i64 = redis::cmd("EXPIRE").arg("k:0").arg(100).query(&mut c).unwrap();
    assert_eq!(ok, 1);
    let mut del = redis::cmd("DEL");
    for k in keys("k", 20_000) {
        del.arg(k);
    }
    let removed: i64 = del.query(&mut c).unwrap();
    assert_eq!(removed as usize, 20_000 - refused);
    let _: () = redis::cmd("SET").arg("k:new").arg("v").query(&mut c).expect("writes work again after deletes");
}

#[test]
fn allkeys_policies_evict_to_stay_within_the_limit() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(2, &["--maxmemory", "1mb"]);
    let mut c = s.client();
    let policy: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query(&mut c).unwrap();
    assert_eq!(policy[1], "allkeys-s3fifo", "our policy is the default");
    for p in ["allkeys-s3fifo", "allkeys-lru", "allkeys-lfu", "allkeys-random"] {
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        config_set(&mut c, "maxmemory-policy", p);
        let before = evicted_keys(&mut c);
        assert_eq!(fill(s.addr, p, 0..40_000, 200, None), 0, "{p}: no write may be refused");
        let used = used_memory(&mut c);
        assert!(used <= 1024 * 1024, "{p}: used_memory {used}");
        let n = dbsize(&mut c);
        assert!(n > 2_000, "{p}: only {n} keys kept in 1mb");
        let evicted = evicted_keys(&mut c) - before;
        assert_eq!(evicted + n, 40_000, "{p}: every key is either kept or counted as evicted");
        let mem = info_section(&mut c, "memory");
        assert_eq!(mem["maxmemory"], "1048576");
        assert_eq!(mem["maxmemory_policy"], p);
    }
}

#[test]
fn volatile_policies_evict_only_keys_with_a_ttl_and_refuse_when_none_is_left() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(1, &["--maxmemory", "1mb"]);
    let mut c = s.client();
    for p in ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"] {
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        config_set(&mut c, "maxmemory-policy", p);
        // Persistent keys take half the limit, then keys with a TTL push past it.
        assert_eq!(fill(s.addr, "keep", 0..2_000, 200, None), 0);
        assert_eq!(fill(s.addr, "ttl", 0..20_000, 200, Some(3_600_000)), 0, "{p}");
        assert!(used_memory(&mut c) <= 1024 * 1024, "{p}");
        assert_eq!(present(&mut c, &keys("keep", 2_000)).len(), 2_000, "{p} evicted a key without a TTL");
        assert!(evicted_keys(&mut c) > 0);
        // Only persistent keys now: once they fill the limit, writes get the OOM error.
        let refused = fill(s.addr, "more", 0..20_000, 200, None);
        assert!(refused > 0, "{p}: no OOM with nothing evictable");
        assert_eq!(present(&mut c, &keys("keep", 2_000)).len(), 2_000, "{p}");
    }
}

#[test]
fn volatile_ttl_evicts_the_nearest_expiry_first() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(1, &["--maxmemory", "1mb", "--maxmemory-policy", "volatile-ttl"]);
    let mut c = s.client();
    // Key i expires after (1000 + i) seconds: later keys live longer.
    let mut raw = TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    for i in 0..12_000u64 {
        let k = format!("t:{i}");
        let ex = (1000 + i).to_string();
        buf.extend(resp(&[b"SET", k.as_bytes(), &[b'v'; 100], b"EX", ex.as_bytes()]));
    }
    raw.write_all(&buf).unwrap();
    // Every reply is `+OK\r\n`.
    let mut replies = vec![0u8; 12_000 * 5];
    raw.read_exact(&mut replies).unwrap();
    assert!(replies.chunks(5).all(|r| r == b"+OK\r\n"));
    let kept = present(&mut c, &keys("t", 12_000));
    assert!(kept.len() > 1_000 && kept.len() < 12_000);
    let oldest_kept = (0..12_000).find(|i| kept.contains(&format!("t:{i}"))).unwrap();
    let mut ids: Vec<usize> = kept.iter().map(|k| k[2..].parse().unwrap()).collect();
    ids.sort();
    let median = ids[ids.len() / 2];
    // Sampling is approximate: most of what is kept is the latest expiries.
    assert!(median > 12_000 - kept.len(), "median kept {median}, oldest kept {oldest_kept}, kept {}", kept.len());
}

/// LRU keeps the keys read recently, LFU and S3-FIFO the keys read often, while a stream of
/// new keys passes through.
#[test]
fn lru_lfu_and_s3fifo_keep_the_hot_keys() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(1, &["--maxmemory", "2mb"]);
    let mut c = s.client();
    for p in ["allkeys-lru", "allkeys-lfu", "allkeys-s3fifo"] {
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        config_set(&mut c, "maxmemory-policy", p);
        let hot = keys("hot", 200);
        for k in &hot {
            let _: () = redis::cmd("SET").arg(k).arg(vec![b'h'; 100]).query(&mut c).unwrap();
        }
        for round in 0..40 {
            fill(s.addr, &format!("cold{round}"), 0..1_000, 100, None);
            let mut get = redis::cmd("MGET");
            for k in &hot {
                get.arg(k);
            }
            let _: Vec<Option<Vec<u8>>> = get.query(&mut c).unwrap();
        }
        assert!(evicted_keys(&mut c) > 20_000);
        let kept = present(&mut c, &hot).len();
        assert!(kept >= 190, "{p} kept {kept} of 200 hot keys");
    }
}

#[test]
fn config_set_changes_the_limit_and_policy_at_runtime() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(2, &[]);
    let mut c = s.client();
    let got: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory*").query(&mut c).unwrap();
    let got: HashMap<_, _> = got.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    assert_eq!(got["maxmemory"], "0");
    assert_eq!(got["maxmemory-policy"], "allkeys-s3fifo");
    assert_eq!(got["maxmemory-samples"], "5");
    // No limit: nothing is evicted.
    assert_eq!(fill(s.addr, "k", 0..20_000, 200, None), 0);
    assert_eq!(dbsize(&mut c), 20_000);
    let before = used_memory(&mut c);
    assert!(before > 4 * 1024 * 1024);
    // Lowering the limit evicts without further writes (the cron), down to the new limit.
    config_set(&mut c, "maxmemory", "2mb");
    let got: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory").query(&mut c).unwrap();
    assert_eq!(got[1], "2097152");
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_memory(&mut c) > 2 * 1024 * 1024 {
        assert!(Instant::now() < deadline, "used_memory still {} after 10 s", used_memory(&mut c));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dbsize(&mut c) < 20_000);
    // Policy changes apply at once; a bad name gets Redis's error listing the choices.
    config_set(&mut c, "maxmemory-policy", "noeviction");
    let mut raw = s.raw();
    let _ = fill(s.addr, "more", 0..2_000, 200, None);
    assert_eq!(raw.cmd(&resp(&[b"SET", b"x", b"y"])), Reply::Error(OOM.into()));
    let err = redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("lru").query::<()>(&mut c).unwrap_err();
    assert!(err.to_string().contains("must be one of the following: volatile-lru"), "{err}");
    let err = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("lots").query::<()>(&mut c).unwrap_err();
    assert!(err.to_string().contains("argument must be a memory value"), "{err}");
    // Removing the limit lets writes in again.
    config_set(&mut c, "maxmemory", "0");
    assert_eq!(raw.cmd(&resp(&[b"SET", b"x", b"y"])), Reply::Simple("OK".into()));
    config_set(&mut c, "maxmemory-samples", "10");
    assert_eq!(field(&info_section(&mut c, "memory"), "maxmemory_samples"), 10);
}

/// A data directory written without a limit recovers under a lowered `--maxmemory`: the server
/// starts, evicting while it loads (from a snapshot, then the log), and ends within the limit.
/// Evictions, at recovery and at runtime, are logged as deletions: a later start without a
/// limit holds exactly the keys that were left, none comes back.
#[test]
fn recovery_above_a_lowered_limit_evicts_and_evicted_keys_stay_evicted() {
    if Server::own_only() {
        return;
    }
    let dir = DataDir::new("evict-recovery");
    let all = keys("k", 30_000);
    {
        // 30k keys of 200 bytes (~7 MB): half in a snapshot, half only in the log.
        let mut s = durability_common::start(&dir.path, "sync", 2, &["--snapshot-on-shutdown", "no"]);
        assert_eq!(fill(s.addr, "k", 0..15_000, 200, None), 0);
        let mut c = s.client();
        let _: String = redis::cmd("SAVE").query(&mut c).unwrap();
        assert_eq!(fill(s.addr, "k", 15_000..30_000, 200, None), 0);
        assert_eq!(dbsize(&mut c), 30_000);
        durability_common::stop(&mut s);
    }
    let left = {
        let mut s = durability_common::start(&dir.path, "sync", 2, &["--maxmemory", "2mb"]);
        let mut c = s.client();
        assert!(used_memory(&mut c) <= 2 * 1024 * 1024, "recovered above the limit: {}", used_memory(&mut c));
        let recovered = dbsize(&mut c);
        assert!(recovered < 30_000 && recovered > 3_000, "recovered {recovered} keys");
        assert_eq!(evicted_keys(&mut c) + recovered, 30_000);
        // Runtime evictions on top.
        assert_eq!(fill(s.addr, "new", 0..5_000, 200, None), 0);
        let mut left = present(&mut c, &all);
        left.extend(present(&mut c, &keys("new", 5_000)));
        assert_eq!(left.len() as u64, dbsize(&mut c));
        durability_common::stop(&mut s);
        left
    };
    let mut s = durability_common::start(&dir.path, "sync", 2, &[]);
    let mut c = s.client();
    let mut now = present(&mut c, &all);
    now.extend(present(&mut c, &keys("new", 5_000)));
    assert_eq!(dbsize(&mut c), left.len() as u64, "keys came back after a restart without a limit");
    assert!(now == left, "the key set changed across the restart");
    durability_common::stop(&mut s);
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Writing ten times `maxmemory` keeps RSS within maxmemory × 1.10 plus the fixed overhead
/// docs/EVICTION.md states: the idle process's RSS plus 16 MiB (connection and allocator
/// slack).
#[test]
fn rss_stays_within_the_limit_while_writing_ten_times_maxmemory() {
    if Server::own_only() {
        return;
    }
    const LIMIT: u64 = 32 << 20;
    const FIXED_OVERHEAD: u64 = 16 << 20;
    let s = Server::start_with(2, &["--maxmemory", "32mb"]);
    let pid = s.pid().unwrap();
    let idle = rss_bytes(pid);
    let mut peak = 0;
    // 10 × 32 MiB of values of mixed sizes (300 B and 3000 B keys alternate per batch).
    let mut written = 0u64;
    let mut round = 0;
    while written < 10 * LIMIT {
        let size = if round % 2 == 0 { 300 } else { 3000 };
        fill(s.addr, &format!("r{round}"), 0..5_000, size, None);
        written += 5_000 * size as u64;
        peak = peak.max(rss_bytes(pid));
        round += 1;
    }
    let mut c = s.client();
    let used = used_memory(&mut c);
    assert!(used <= LIMIT, "used_memory {used}");
    let bound = LIMIT + LIMIT / 10 + idle + FIXED_OVERHEAD;
    eprintln!("idle RSS {idle}, peak RSS {peak}, bound {bound}, used_memory {used}");
    assert!(peak <= bound, "peak RSS {peak} over {bound} (idle {idle})");
}

/// Keys with a short TTL that nobody reads are reclaimed by the active cycle within about a
/// second of expiring (docs/EVICTION.md states the bound).
#[test]
fn active_expiry_reclaims_unread_expired_keys_within_a_second() {
    if Server::own_only() {
        return;
    }
    let s = Server::start_with(1, &[]);
    let mut c = s.client();
    assert_eq!(fill(s.addr, "e", 0..100_000, 100, Some(200)), 0);
    let full = used_memory(&mut c);
    let written = Instant::now();
    // DBSIZE counts entries still in the table, expired or not: it falls only as the active
    // cycle removes them.
    while dbsize(&mut c) > 0 {
        assert!(
            written.elapsed() < Duration::from_millis(200 + 1000),
            "{} expired keys still held {:?} after writing",
            dbsize(&mut c),
            written.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("100k expired keys reclaimed {:?} after the last write", written.elapsed());
    assert!(used_memory(&mut c) < full / 10);
    assert_eq!(field(&info_section(&mut c, "stats"), "expired_keys"), 100_000);
}
