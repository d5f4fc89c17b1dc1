//! End-to-end: the built binary against real `redis-server` processes on ephemeral ports, and
//! against a tiny in-test RESP server that reports ringcache-style WAL counters.
//!
//! The redis tests are skipped (with a printed reason) when `/usr/bin/redis-server` is missing.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const REDIS: &str = "/usr/bin/redis-server";
const BIN: &str = env!("CARGO_BIN_EXE_ringcache-loadgen");

/// A redis-server child, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(extra: &[&str]) -> Redis {
        let port = free_port();
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".to_string(),
            "127.0.0.1".to_string(),
            "--save".to_string(),
            String::new(),
            "--appendonly".to_string(),
            "no".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(REDIS)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn have_redis() -> bool {
    if Path::new(REDIS).exists() {
        true
    } else {
        println!("SKIPPED: {REDIS} is not installed");
        false
    }
}

fn tmp(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "loadgen-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("run loadgen");
    if !out.status.success() {
        panic!(
            "loadgen {args:?} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).expect("json written");
    serde_json::from_str(&text).expect("json parses")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// sent = ok + errors + in flight at cutoff, and the error kinds sum to the errors.
fn assert_counts_add_up(t: &Value) {
    let c = &t["counts"];
    assert_eq!(u(&c["sent"]), u(&c["ok"]) + u(&c["errors"]) + u(&c["inflight_at_cutoff"]), "counts: {c}");
    assert_eq!(c["balanced"], Value::Bool(true));
    let kinds: u64 = t["error_kinds"].as_object().expect("error_kinds object").values().map(u).sum();
    assert_eq!(kinds, u(&c["errors"]));
}

#[test]
fn closed_loop_run_writes_consistent_json_and_a_plot() {
    if !have_redis() {
        return;
    }
    let r = Redis::start(&[]);
    let json = tmp("run.json");
    let svg = tmp("run.svg");
    let out = run(&[
        "run",
        "--target",
        &r.addr(),
        "--duration-s",
        "2",
        "--warmup-s",
        "0.5",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--keys",
        "1000",
        "--prefill",
        "--key-dist",
        "zipf:0.99",
        "--seed",
        "7",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("redis_version="), "provenance printed:\n{stdout}");
    assert!(stdout.contains("adds up"), "{stdout}");
    let v = read_json(&json);
    assert_eq!(v["config"]["seed"], 7);
    let t = &v["targets"][0];
    assert_counts_add_up(t);
    assert!(u(&t["counts"]["ok"]) > 0, "ops > 0");
    assert_eq!(u(&t["counts"]["errors"]), 0);
    // Prefill wrote every key, so no GET misses.
    assert_eq!(u(&t["prefill"]["ok"]), 1000);
    assert_eq!(u(&t["counts"]["get_misses"]), 0);
    assert!(t["info"]["fields"]["redis_version"].is_string());
    let get = t["ops"].as_array().unwrap().iter().find(|o| o["op"] == "GET").unwrap();
    let p50 = get["latency"]["percentiles_us"]["p50"].as_f64().unwrap();
    let p99 = get["latency"]["percentiles_us"]["p99"].as_f64().unwrap();
    let max = get["latency"]["max_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
    assert!(!t["per_second"].as_array().unwrap().is_empty());
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.contains("<svg"));
    assert!(plot.contains("<path"));
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(svg);
}

#[test]
fn compare_two_servers_reports_ratios() {
    if !have_redis() {
        return;
    }
    let a = Redis::start(&[]);
    let b = Redis::start(&[]);
    let json = tmp("cmp.json");
    let out = run(&[
        "compare",
        "--target",
        &format!("a={}", a.addr()),
        "--target",
        &format!("b={}", b.addr()),
        "--rounds",
        "2",
        "--duration-s",
        "1",
        "--warmup-s",
        "0.2",
        "--connections",
        "2",
        "--keys",
        "500",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("b/a"), "ratio column:\n{stdout}");
    let v = read_json(&json);
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert_counts_add_up(t);
        assert!(u(&t["counts"]["ok"]) > 0);
        assert_eq!(t["rounds"].as_array().unwrap().len(), 2);
    }
    let r = &v["ratios"]["GET"]["p50"];
    assert_eq!(r[0].as_f64(), Some(1.0));
    assert!(r[1].as_f64().unwrap() > 0.0);
    assert!(v["ratios"]["ALL"]["ops/s"][1].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(json);
}

#[test]
fn open_loop_reports_offered_and_achieved_rate() {
    if !have_redis() {
        return;
    }
    let r = Redis::start(&[]);
    let json = tmp("open.json");
    run(&[
        "run",
        "--target",
        &r.addr(),
        "--rate",
        "2000",
        "--duration-s",
        "1.5",
        "--warmup-s",
        "0.3",
        "--connections",
        "4",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let v = read_json(&json);
    let t = &v["targets"][0];
    assert_counts_add_up(t);
    assert_eq!(t["offered_rate"].as_f64(), Some(2000.0));
    let achieved = t["achieved_rate"].as_f64().unwrap();
    assert!(achieved > 1000.0 && achieved < 2400.0, "achieved {achieved}");
    assert!(t["send_lag"]["count"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_file(json);
}

#[test]
fn error_replies_are_counted_by_kind() {
    if !have_redis() {
        return;
    }
    // 1 MB of memory and no eviction: SETs of 10 kB values soon fail with -OOM.
    let r = Redis::start(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let json = tmp("oom.json");
    run(&[
        "run",
        "--target",
        &r.addr(),
        "--ratio",
        "1:0",
        "--value-bytes",
        "10000",
        "--keys",
        "100000",
        "--duration-s",
        "1",
        "--warmup-s",
        "0",
        "--connections",
        "2",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let v = read_json(&json);
    let t = &v["targets"][0];
    assert_counts_add_up(t);
    assert!(u(&t["error_kinds"]["OOM"]) > 0, "{}", t["error_kinds"]);
    let _ = std::fs::remove_file(json);
}

#[test]
fn a_server_dying_mid_run_is_counted_not_dropped() {
    if !have_redis() {
        return;
    }
    let mut r = Redis::start(&[]);
    let json = tmp("kill.json");
    let child = Command::new(BIN)
        .args([
            "run",
            "--target",
            &r.addr(),
            "--duration-s",
            "2.5",
            "--warmup-s",
            "0",
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    std::thread::sleep(Duration::from_millis(1000));
    r.kill();
    let out = child.wait_with_output().expect("loadgen finishes");
    assert!(out.status.success(), "loadgen must finish and report: {}", String::from_utf8_lossy(&out.stderr));
    let v = read_json(&json);
    let t = &v["targets"][0];
    assert_counts_add_up(t);
    assert!(u(&t["counts"]["ok"]) > 0);
    let events = t["conn_events"].as_object().unwrap();
    assert!(!events.is_empty(), "connection failures recorded");
    let _ = std::fs::remove_file(json);
}

/// A minimal fake RESP server with ringcache-style WAL counters in `INFO persistence`:
/// every SET is one WAL record and every 10th record is an fsync. GETs answer nil.
fn fake_wal_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(AtomicU64::new(0));
    let stop2 = stop.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let records = records.clone();
            let stop3 = stop2.clone();
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                let mut buf: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 65536];
                while !stop3.load(Ordering::Relaxed) {
                    match s.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => continue,
                    }
                    let mut out = Vec::new();
                    while let Some((args, used)) = parse_command(&buf) {
                        buf.drain(..used);
                        let name = args.first().map(|a| a.to_ascii_uppercase());
                        match name.as_deref() {
                            Some(b"SET") => {
                                records.fetch_add(1, Ordering::Relaxed);
                                out.extend_from_slice(b"+OK\r\n");
                            }
                            Some(b"GET") => out.extend_from_slice(b"$-1\r\n"),
                            Some(b"INFO") => {
                                let r = records.load(Ordering::Relaxed);
                                let body = format!(
                                    "# Server\r\nredis_version:7.2.0\r\nringcache_version:0.0.0-fake\r\ndurability:wal-group\r\n# Persistence\r\nwal_records:{r}\r\nwal_fsyncs:{}\r\n",
                                    r / 10
                                );
                                out.extend_from_slice(format!("${}\r\n{body}\r\n", body.len()).as_bytes());
                            }
                            _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
                        }
                    }
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, stop)
}

/// Parse one `*N\r\n$len\r\narg\r\n...` command; None if incomplete.
fn parse_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let i = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[at..at + i], at + i + 2))
    }
    let (head, mut pos) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?).ok()?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, p) = line(buf, pos)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?).ok()?.parse().ok()?;
        if buf.len() < p + len + 2 {
            return None;
        }
        args.push(buf[p..p + len].to_vec());
        pos = p + len + 2;
    }
    Some((args, pos))
}

#[test]
fn wal_counters_give_fsyncs_per_second_and_records_per_fsync() {
    let (port, stop) = fake_wal_server();
    let json = tmp("wal.json");
    let out = run(&[
        "run",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--ratio",
        "1:1",
        "--duration-s",
        "1",
        "--warmup-s",
        "0.2",
        "--connections",
        "2",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    stop.store(true, Ordering::Relaxed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ringcache_version=0.0.0-fake"), "{stdout}");
    assert!(stdout.contains("durability=wal-group"), "{stdout}");
    let v = read_json(&json);
    let t = &v["targets"][0];
    assert_counts_add_up(t);
    let fps = t["fsyncs_per_s"].as_f64().expect("fsyncs/s reported");
    assert!(fps > 0.0, "{fps}");
    let rpf = t["records_per_fsync"].as_f64().expect("records/fsync reported");
    assert!((rpf - 10.0).abs() < 1.0, "records per fsync {rpf}");
    assert_eq!(t["persistence"]["fsync_field"], "wal_fsyncs");
    // Every GET missed on this server.
    assert!(u(&t["counts"]["get_misses"]) > 0);
    let _ = std::fs::remove_file(json);
}
