//! Running it in production: the systemd notification protocol, the metrics and health
//! endpoint, AUTH and protected mode, SHUTDOWN SAVE/NOSAVE, `--version`, and the operator docs
//! kept in step with `--help`. Everything goes through the real binary.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringcache-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A loopback port free right now (for endpoints that must be known before the server is up).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.1; returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringcache-test\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8(resp).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len(), "Content-Length matches the body");
    if path == "/metrics" && status == 200 {
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    }
    Ok((status, body.to_string()))
}

/// The metrics endpoint's address, from the server's log line.
fn metrics_addr(server: &Server) -> SocketAddr {
    let log = server.log_text();
    let rest = log.split("metrics and health endpoint on http://").nth(1).expect("metrics endpoint line in log");
    rest.split('/').next().unwrap().parse().expect("metrics address")
}

/// Receives notification messages until one satisfies `done` or `timeout` passes.
fn recv_until(sock: &UnixDatagram, got: &mut Vec<String>, timeout: Duration, done: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = done(&m);
            got.push(m);
            if hit {
                return true;
            }
        }
    }
    false
}

fn position(got: &[String], pred: impl Fn(&str) -> bool) -> Option<usize> {
    got.iter().position(|m| pred(m))
}

// ---------------------------------------------------------------------------------------------
// systemd notifications
// ---------------------------------------------------------------------------------------------

/// READY=1 comes only after recovery (STATUS lines while it runs, health says "recovering"),
/// STOPPING=1 at shutdown, in that order.
#[test]
fn notify_ready_after_recovery_then_stopping() {
    if Server::own_only() {
        return;
    }
    let dir = temp_dir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let hold = dir.join("hold-recovery");
    std::fs::write(&hold, b"").unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data = dir.join("data");
    let args = s(&[
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--durability",
        "async",
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics-bind",
        &metrics.to_string(),
    ]);
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap().to_string()),
        ("RINGCACHE_TEST_RECOVERY_HOLD", hold.to_str().unwrap().to_string()),
    ];
    let spawner = std::thread::spawn(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::spawn_with_env(&args, &env)
    });
    let mut got = Vec::new();
    assert!(
        recv_until(&sock, &mut got, Duration::from_secs(20), |m| m.starts_with("STATUS=recovering")),
        "no STATUS while recovering: {got:?}"
    );
    // While recovery is held: not ready, but alive; no READY sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        match http_get(metrics, "/ready") {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "health endpoint never answered: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("recovering: 0 of 2 shards recovered"), "{body}");
    assert_eq!(http_get(metrics, "/live").unwrap().0, 200);
    assert_eq!(http_get(metrics, "/health").unwrap().0, 503);
    recv_until(&sock, &mut got, Duration::from_millis(300), |m| m.contains("READY=1"));
    assert!(position(&got, |m| m.contains("READY=1")).is_none(), "READY before recovery ended: {got:?}");
    std::fs::remove_file(&hold).unwrap();
    let mut server = spawner.join().unwrap();
    assert!(recv_until(&sock, &mut got, Duration::from_secs(20), |m| m.contains("READY=1")), "{got:?}");
    let ready = position(&got, |m| m.contains("READY=1")).unwrap();
    let pid = server.pid().unwrap();
    assert!(got[ready].contains(&format!("MAINPID={pid}")), "{}", got[ready]);
    assert!(got[ready].contains("STATUS=ready"), "{}", got[ready]);
    let per_shard = got[..ready].iter().filter(|m| m.contains("shards recovered (shard")).count();
    assert_eq!(per_shard, 2, "one progress STATUS per shard before READY: {got:?}");
    // READY is sent once the port accepts connections.
    let mut c = server.client();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    assert_eq!(http_get(metrics, "/ready").unwrap(), (200, "ok\n".to_string()));
    let _ = redis::cmd("SHUTDOWN").query::<()>(&mut c);
    assert!(recv_until(&sock, &mut got, Duration::from_secs(20), |m| m.contains("STOPPING=1")), "{got:?}");
    let stopping = position(&got, |m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < stopping, "READY then STOPPING: {got:?}");
    assert_eq!(got.iter().filter(|m| m.contains("STOPPING=1")).count(), 1, "{got:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An abstract socket (`@name`, as systemd uses in containers), and the watchdog: WATCHDOG=1
/// pings at half the requested period while the shards run.
#[test]
fn notify_on_abstract_socket_with_watchdog() {
    if Server::own_only() {
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ringcache-test-{}-{}", std::process::id(), rand::random::<u32>());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let notify = format!("@{name}");
    let mut server = Server::spawn_with_env(
        &s(&["--bind", "127.0.0.1:0", "--threads", "2"]),
        &[("NOTIFY_SOCKET", notify.as_str()), ("WATCHDOG_USEC", "200000")],
    );
    let mut got = Vec::new();
    assert!(recv_until(&sock, &mut got, Duration::from_secs(10), |m| m.contains("READY=1")), "{got:?}");
    let pings = std::cell::Cell::new(0);
    recv_until(&sock, &mut got, Duration::from_secs(5), |m| {
        pings.set(pings.get() + (m == "WATCHDOG=1") as usize);
        pings.get() >= 3
    });
    assert!(pings.get() >= 3, "watchdog pings every 100 ms: {got:?}");
    server.signal(SIGTERM);
    assert!(recv_until(&sock, &mut got, Duration::from_secs(10), |m| m.contains("STOPPING=1")), "{got:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Checks what a lenient parser would let through: every sample's family has one HELP and one
/// TYPE line before its samples; histogram buckets are cumulative and end with +Inf equal to
/// `_count`. Returns the families' types.
fn check_exposition_strictly(text: &str) -> std::collections::HashMap<String, String> {
    use std::collections::HashMap;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, usize> = HashMap::new();
    let mut last_bucket: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            *helps.entry(name.to_string()).or_default() += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, t) = (p.next().unwrap(), p.next().unwrap());
            assert!(helps.contains_key(name), "HELP before TYPE for {name}");
            assert!(types.insert(name.to_string(), t.to_string()).is_none(), "TYPE twice for {name}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap();
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{f}{s}")))
            })
            .unwrap_or_else(|| panic!("sample {name} without TYPE before it"))
            .clone();
        if types[&family] == "counter" {
            assert!(name.ends_with("_total"), "counter {name} ends in _total");
        }
        if name.ends_with("_bucket") {
            let key = series.split(",le=").next().unwrap().to_string();
            let prev = last_bucket.get(&key).copied().unwrap_or(0.0);
            assert!(v >= prev, "buckets cumulative: {line}");
            last_bucket.insert(key, v);
        }
        if name.ends_with("_count") && types[&family] == "histogram" {
            let key = format!("{family}_bucket{}", &series[name.len()..]);
            let key = key.trim_end_matches('}').to_string();
            let key = if key.ends_with("_bucket") { format!("{key}{{") } else { format!("{key},") };
            let inf = text
                .lines()
                .find(|l| l.starts_with(&key) && l.contains("le=\"+Inf\""))
                .unwrap_or_else(|| panic!("+Inf bucket for {series}"));
            assert_eq!(inf.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap(), v, "+Inf == _count: {series}");
        }
    }
    for (name, n) in helps {
        assert_eq!(n, 1, "one HELP for {name}");
    }
    types
}

fn scrape(addr: SocketAddr) -> (String, prometheus_parse::Scrape) {
    let (code, body) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the Prometheus parser accepts the exposition");
    (body, parsed)
}

fn sample_value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .reduce(|a, b| a + b)
}

/// The endpoint's text is accepted by a Prometheus parser and by the stricter checks above, and
/// its figures match what the clients did.
#[test]
fn metrics_endpoint_counts_what_clients_did() {
    if Server::own_only() {
        return;
    }
    let dir = temp_dir("metrics");
    let data = dir.join("data");
    let server = Server::spawn(&s(&[
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--durability",
        "async",
        "--wal-flush-interval-ms",
        "5",
        "--data-dir",
        data.to_str().unwrap(),
        "--metrics-bind",
        "127.0.0.1:0",
    ]));
    let m = metrics_addr(&server);
    let mut c = server.client();
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(format!("m:{i}")).arg("v").query(&mut c).unwrap();
    }
    for i in 0..30 {
        let _: Option<String> = redis::cmd("GET").arg(format!("m:{}", i * 3)).query(&mut c).unwrap();
    }
    let mut r = server.raw();
    for _ in 0..5 {
        assert!(matches!(r.cmd(&resp(&[b"GET"])), Reply::Error(_)));
    }
    assert!(matches!(r.cmd(&resp(&[b"INCR", b"m:1"])), Reply::Error(_)), "INCR on a non-integer fails");
    let _: () = redis::cmd("BGSAVE").query(&mut c).unwrap();
    // Shards publish every 100 ms: wait until the figures are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, parsed) = loop {
        let (text, parsed) = scrape(m);
        let set = sample_value(&parsed, "ringcache_commands_total", &[("cmd", "set")]);
        let snaps = sample_value(&parsed, "ringcache_snapshots_taken_total", &[]);
        let flushed = sample_value(&parsed, "ringcache_wal_records_total", &[]);
        if set == Some(50.0) && snaps == Some(2.0) && flushed >= Some(50.0) {
            break (text, parsed);
        }
        assert!(Instant::now() < deadline, "figures never arrived: set={set:?} snaps={snaps:?}\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let types = check_exposition_strictly(&text);
    assert_eq!(types["ringcache_command_duration_seconds"], "histogram");
    assert_eq!(types["ringcache_wal_flush_duration_seconds"], "histogram");
    assert_eq!(types["ringcache_keys"], "gauge");
    assert_eq!(types["ringcache_evicted_keys_total"], "counter");
    let v = |metric: &str, labels: &[(&str, &str)]| sample_value(&parsed, metric, labels);
    assert_eq!(v("ringcache_commands_total", &[("cmd", "get")]), Some(30.0));
    assert_eq!(v("ringcache_commands_rejected_total", &[("cmd", "get")]), Some(5.0));
    assert_eq!(v("ringcache_commands_failed_total", &[("cmd", "incr")]), Some(1.0));
    assert_eq!(v("ringcache_keys", &[]), Some(50.0), "keys summed over the shards");
    assert_eq!(v("ringcache_keyspace_hits_total", &[]), Some(17.0), "GET m:0, m:3, ... m:48 hit");
    assert_eq!(v("ringcache_keyspace_misses_total", &[]), Some(13.0));
    assert_eq!(v("ringcache_ready", &[]), Some(1.0));
    assert_eq!(v("ringcache_shard_up", &[("shard", "1")]), Some(1.0));
    assert_eq!(v("ringcache_wal_fail_stopped", &[]), Some(0.0));
    assert!(v("ringcache_connected_clients", &[]) >= Some(2.0));
    // Histograms as histograms: the SET latency histogram's count is the number of SETs.
    let set_hist = parsed
        .samples
        .iter()
        .find(|s| s.metric == "ringcache_command_duration_seconds" && s.labels.get("cmd") == Some("set"))
        .expect("SET latency histogram");
    match &set_hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY).expect("+Inf bucket");
            assert_eq!(inf.count, 50.0);
            assert!(buckets.len() > 10, "real buckets: {buckets:?}");
        }
        other => panic!("SET latency is not a histogram: {other:?}"),
    }
    assert!(text.contains("ringcache_command_duration_seconds_count{cmd=\"set\"} 50\n"), "{text}");
    let wal_count: f64 = text
        .lines()
        .filter(|l| l.starts_with("ringcache_wal_flush_duration_seconds_count{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(Some(wal_count), v("ringcache_wal_flushes_total", &[]), "one flush-latency count per flush");
    // INFO tells the same story in Redis's format.
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap();
    assert!(info.contains("cmdstat_get:calls=30,usec="), "{info}");
    assert!(info.contains(",rejected_calls=5,failed_calls=0\r\n"), "{info}");
    let info: String = redis::cmd("INFO").arg("latencystats").query(&mut c).unwrap();
    let line = info.lines().find(|l| l.starts_with("latency_percentiles_usec_set:")).expect(&info);
    let fields: Vec<&str> = line.split(':').nth(1).unwrap().split(',').collect();
    assert_eq!(fields.iter().map(|f| f.split('=').next().unwrap()).collect::<Vec<_>>(), ["p50", "p99", "p99.9"]);
    let info: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
    assert!(info.contains("wal_fsync_latency_usec:p50="), "{info}");
    assert!(info.contains("rdb_last_bgsave_time_sec:"), "{info}");
    let info: String = redis::cmd("INFO").arg("stats").query(&mut c).unwrap();
    assert!(info.contains("total_error_replies:6\r\n"), "{info}");
    // Unknown paths and methods.
    assert_eq!(http_get(m, "/nope").unwrap().0, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fail-stopped log makes the server unhealthy (and not live: only a restart helps); a full
/// disk makes it not ready until space is back.
#[test]
fn health_reports_fail_stop_and_full_disk() {
    if Server::own_only() {
        return;
    }
    let dir = temp_dir("health");
    let full = dir.join("disk-full");
    let start = |name: &str, fault: String| {
        let data = dir.join(name);
        Server::spawn_with_env(
            &s(&[
                "--bind",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--durability",
                "sync",
                "--data-dir",
                data.to_str().unwrap(),
                "--metrics-bind",
                "127.0.0.1:0",
            ]),
            &[("RINGCACHE_TEST_FAULTS", fault.as_str())],
        )
    };
    let wait_for = |m: SocketAddr, path: &str, code: u16, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (c, body) = http_get(m, path).unwrap();
            if c == code && body.contains(text) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path}: {c} {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Disk full: not ready, still live; ready again once writes succeed.
    let server = start("nospace", format!("enospc_while={}", full.display()));
    let m = metrics_addr(&server);
    wait_for(m, "/health", 200, "ok");
    std::fs::write(&full, b"").unwrap();
    // This write's flush hits ENOSPC: its reply waits until space is back.
    let addr = server.addr;
    let blocked = std::thread::spawn(move || {
        let mut c = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection().unwrap();
        redis::cmd("SET").arg("a").arg("1").query::<String>(&mut c)
    });
    let body = wait_for(m, "/ready", 503, "shard 0 disk full");
    assert!(!body.starts_with("ok"), "{body}");
    wait_for(m, "/live", 200, "ok");
    std::fs::remove_file(&full).unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), "OK", "the write completes once space is back");
    wait_for(m, "/health", 200, "ok");
    drop(server);
    // EIO on the third durable write: fail-stop.
    let server = start("eio", "eio_at=3".into());
    let m = metrics_addr(&server);
    let mut c = server.client();
    for i in 0..5 {
        let _ = redis::cmd("SET").arg(format!("k{i}")).arg("v").query::<()>(&mut c);
        if redis::cmd("PING").query::<String>(&mut c).is_err() {
            c = server.client();
        }
    }
    wait_for(m, "/health", 503, "shard 0 fail-stopped");
    wait_for(m, "/live", 503, "fail-stopped");
    let (_, metrics) = http_get(m, "/metrics").unwrap();
    assert!(metrics.contains("ringcache_wal_fail_stopped{shard=\"0\"} 1\n"), "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Access control
// ---------------------------------------------------------------------------------------------

fn err(s: &str) -> Reply {
    Reply::Error(s.to_string())
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

#[test]
fn requirepass_auth_and_hello_auth_as_redis() {
    if Server::own_only() {
        return;
    }
    let password = "s3cret-pa55";
    let server = Server::spawn_with_env(
        &s(&["--bind", "127.0.0.1:0", "--threads", "2"]),
        &[("RINGCACHE_REQUIREPASS", password)],
    );
    let mut r = server.raw();
    // Unknown commands and wrong arity come first, as in Redis; then NOAUTH.
    assert!(matches!(r.cmd(&resp(&[b"NOSUCH"])), Reply::Error(e) if e.starts_with("ERR unknown command")));
    assert_eq!(r.cmd(&resp(&[b"GET"])), err("ERR wrong number of arguments for 'get' command"));
    assert_eq!(r.cmd(&resp(&[b"GET", b"k"])), err(NOAUTH));
    assert_eq!(r.cmd(&resp(&[b"PING"])), err(NOAUTH));
    assert_eq!(r.cmd(&resp(&[b"MSET", b"a", b"1", b"b", b"2"])), err(NOAUTH));
    assert_eq!(
        r.cmd(&resp(&[b"HELLO", b"3"])),
        err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> \
             <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
    );
    assert_eq!(r.cmd(&resp(&[b"AUTH", b"wrong"])), err(WRONGPASS));
    assert_eq!(r.cmd(&resp(&[b"AUTH", b"bob", password.as_bytes()])), err(WRONGPASS));
    assert_eq!(r.cmd(&resp(&[b"AUTH", b"a", b"b", b"c"])), err("ERR syntax error"));
    assert_eq!(r.cmd(&resp(&[b"HELLO", b"2", b"AUTH", b"default", b"nope"])), err(WRONGPASS));
    assert_eq!(r.cmd(&resp(&[b"GET", b"k"])), err(NOAUTH), "failed attempts do not authenticate");
    assert_eq!(r.cmd(&resp(&[b"AUTH", password.as_bytes()])), Reply::Simple("OK".into()));
    assert_eq!(r.cmd(&resp(&[b"SET", b"k", b"v"])), Reply::Simple("OK".into()));
    // HELLO ... AUTH authenticates and switches protocol in one go.
    let mut h = server.raw();
    match h.cmd(&resp(&[b"HELLO", b"3", b"AUTH", b"default", password.as_bytes()])) {
        Reply::Array(Some(items)) => assert!(items.contains(&Reply::Bulk(Some(b"proto".to_vec())))),
        other => panic!("HELLO AUTH: {other:?}"),
    }
    assert_eq!(h.cmd(&resp(&[b"GET", b"k"])), Reply::Bulk(Some(b"v".to_vec())));
    // A pipeline: AUTH in the middle takes effect for what follows.
    let mut p = server.raw();
    let mut pipe = resp(&[b"GET", b"k"]);
    pipe.extend(resp(&[b"AUTH", b"default", password.as_bytes()]));
    pipe.extend(resp(&[b"GET", b"k"]));
    p.send(&pipe);
    assert_eq!(p.read(), err(NOAUTH));
    assert_eq!(p.read(), Reply::Simple("OK".into()));
    assert_eq!(p.read(), Reply::Bulk(Some(b"v".to_vec())));
    // QUIT is allowed before AUTH.
    let mut q = server.raw();
    assert_eq!(q.cmd(&resp(&[b"QUIT"])), Reply::Simple("OK".into()));
    assert!(q.is_closed());
    // CONFIG GET returns it (as Redis does); CONFIG SET changes it for new connections only.
    match r.cmd(&resp(&[b"CONFIG", b"GET", b"requirepass"])) {
        Reply::Array(Some(v)) => assert_eq!(v[1], Reply::Bulk(Some(password.as_bytes().to_vec()))),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.cmd(&resp(&[b"CONFIG", b"SET", b"requirepass", b"other"])), Reply::Simple("OK".into()));
    assert_eq!(r.cmd(&resp(&[b"GET", b"k"])), Reply::Bulk(Some(b"v".to_vec())), "still authenticated");
    let mut n = server.raw();
    assert_eq!(n.cmd(&resp(&[b"GET", b"k"])), err(NOAUTH));
    assert_eq!(n.cmd(&resp(&[b"AUTH", password.as_bytes()])), err(WRONGPASS));
    assert_eq!(n.cmd(&resp(&[b"AUTH", b"other"])), Reply::Simple("OK".into()));
    // Removing the password: new connections need no AUTH, and AUTH says there is none.
    assert_eq!(r.cmd(&resp(&[b"CONFIG", b"SET", b"requirepass", b""])), Reply::Simple("OK".into()));
    let mut free = server.raw();
    assert_eq!(free.cmd(&resp(&[b"GET", b"k"])), Reply::Bulk(Some(b"v".to_vec())));
    assert_eq!(
        free.cmd(&resp(&[b"AUTH", b"x"])),
        err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
    );
    assert_eq!(free.cmd(&resp(&[b"AUTH", b"default", b"anything"])), Reply::Simple("OK".into()));
    // Rejected calls are counted per command, as in Redis.
    let info = match free.cmd(&resp(&[b"INFO", b"commandstats"])) {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(info.contains("cmdstat_get:calls="), "{info}");
    assert!(info.lines().any(|l| l.starts_with("cmdstat_get:") && l.contains("rejected_calls=5,")), "{info}");
    // The password never reaches the log.
    assert!(!server.log_text().contains(password), "password logged");
}

/// The first non-loopback IPv4 address of this host, if any.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free below; we only read it.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && !ip.is_unspecified() {
                found = Some(IpAddr::V4(ip));
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

#[test]
fn protected_mode_refuses_remote_clients_without_password() {
    if Server::own_only() {
        return;
    }
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED protected_mode_refuses_remote_clients_without_password: this host has no non-loopback IPv4 address to connect from");
        return;
    };
    let server = Server::spawn(&s(&["--bind", "0.0.0.0:0", "--threads", "1"]));
    let port = server.addr.port();
    assert!(server.log_text().contains("protected mode: no password is set"), "startup warning");
    let remote = SocketAddr::new(ip, port);
    let connect = || {
        let s = TcpStream::connect(remote).expect("connect from a non-loopback address");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut sock = connect();
    let _ = sock.write_all(&resp(&[b"PING"]));
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user."), "{text}");
    assert!(text.ends_with("from the outside.\r\n") && text.matches("\r\n").count() == 1, "one error line: {text}");
    // Loopback clients are served; CONFIG SET protected-mode no opens the door.
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let mut l = Raw::connect(local);
    assert_eq!(l.cmd(&resp(&[b"PING"])), Reply::Simple("PONG".into()));
    assert_eq!(l.cmd(&resp(&[b"CONFIG", b"SET", b"protected-mode", b"no"])), Reply::Simple("OK".into()));
    let mut r = Raw::from_stream(connect());
    assert_eq!(r.cmd(&resp(&[b"PING"])), Reply::Simple("PONG".into()));
    // With protected mode on again but a password set, remote clients get NOAUTH, not DENIED.
    assert_eq!(l.cmd(&resp(&[b"CONFIG", b"SET", b"protected-mode", b"yes"])), Reply::Simple("OK".into()));
    assert_eq!(l.cmd(&resp(&[b"CONFIG", b"SET", b"requirepass", b"pw"])), Reply::Simple("OK".into()));
    let mut r = Raw::from_stream(connect());
    assert_eq!(r.cmd(&resp(&[b"PING"])), err(NOAUTH));
}

// ---------------------------------------------------------------------------------------------
// Lifecycle: SHUTDOWN SAVE / NOSAVE, --version
// ---------------------------------------------------------------------------------------------

fn snapshot_files(dir: &Path) -> usize {
    fn walk(d: &Path, n: &mut usize) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.extension().is_some_and(|x| x == "snap") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// SHUTDOWN NOSAVE still flushes and fsyncs the log (nothing acknowledged is lost, even with a
/// long flush interval); SHUTDOWN SAVE snapshots even with --snapshot-on-shutdown no.
#[test]
fn shutdown_nosave_flushes_the_log_and_save_forces_a_snapshot() {
    if Server::own_only() {
        return;
    }
    let dir = temp_dir("shutdown");
    let data = dir.join("data");
    let args = s(&[
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--durability",
        "async",
        "--wal-flush-interval-ms",
        "60000",
        "--snapshot-on-shutdown",
        "no",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let mut server = Server::spawn(&args);
    let mut c = server.client();
    for i in 0..100 {
        let _: () = redis::cmd("SET").arg(format!("s:{i}")).arg(i).query(&mut c).unwrap();
    }
    let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut c);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(snapshot_files(&data), 0, "NOSAVE wrote no snapshot");
    let mut server = Server::spawn(&args);
    let mut c = server.client();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 100, "the log was flushed at shutdown");
    let _ = redis::cmd("SHUTDOWN").arg("SAVE").query::<()>(&mut c);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(snapshot_files(&data), 2, "SHUTDOWN SAVE: one snapshot per shard");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_prints_build_information() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("ringcache {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    for field in ["git: ", "profile: ", "target: ", "rustc: rustc "] {
        assert!(text.contains(field), "{field} in {text}");
    }
    let short = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache")).arg("-V").output().unwrap();
    let short = String::from_utf8(short.stdout).unwrap();
    assert_eq!(short.lines().count(), 1, "{short}");
    assert!(short.contains("(git "), "{short}");
}

// ---------------------------------------------------------------------------------------------
// Docs and the unit file
// ---------------------------------------------------------------------------------------------

/// `--help`'s long options with their defaults (`None` when there is none).
fn help_options() -> Vec<(String, Option<String>)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcache")).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // Each option starts a block at two spaces of indent; its help follows until the next one.
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if (indent == 6 && t.starts_with("--")) || (indent == 2 && t.starts_with('-')) {
            blocks.push(t.to_string());
        } else if let Some(b) = blocks.last_mut() {
            b.push(' ');
            b.push_str(t);
        }
    }
    blocks
        .iter()
        .filter_map(|b| {
            let name = b.split_whitespace().find(|w| w.starts_with("--"))?.trim_end_matches(',').to_string();
            if name == "--help" || name == "--version" {
                return None;
            }
            // clap quotes a default that holds spaces: `[default: "normal 1gb 256mb 60 ..."]`.
            let default =
                b.rsplit_once("[default: ").map(|(_, d)| d.split(']').next().unwrap().trim_matches('"').to_string());
            Some((name, default))
        })
        .collect()
}

/// docs/OPERATIONS.md's configuration guide has a row for every `--help` option with the same
/// default, and no row for an option that does not exist.
#[test]
fn operations_guide_matches_help() {
    let opts = help_options();
    assert!(opts.len() >= 20, "parsed --help: {opts:?}");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md")).unwrap();
    let guide = doc
        .split("<!-- options:begin -->")
        .nth(1)
        .and_then(|r| r.split("<!-- options:end -->").next())
        .expect("options table markers in OPERATIONS.md");
    // Rows: | `--name` | `default` | meaning |
    let mut rows = std::collections::HashMap::new();
    for line in guide.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let default = cells[2].trim_matches('`').to_string();
        assert!(rows.insert(name.clone(), default).is_none(), "{name} twice in the guide");
    }
    for (name, default) in &opts {
        let doc_default = rows.get(name).unwrap_or_else(|| panic!("{name} is missing from docs/OPERATIONS.md"));
        match default {
            Some(d) => assert_eq!(doc_default, d, "default of {name}"),
            None => assert_eq!(doc_default, "none", "{name} has no fixed default in --help"),
        }
    }
    for name in rows.keys() {
        assert!(opts.iter().any(|(n, _)| n == name), "{name} is in docs/OPERATIONS.md but not in --help");
    }
}

/// `systemd-analyze verify` accepts the unit (with ExecStart pointed at the binary just built,
/// since verify checks that the program exists) and prints no warning.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/systemd/ringcache.service")).unwrap();
    for must in [
        "Type=notify",
        "StateDirectory=ringcache",
        "LimitMEMLOCK=",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(must), "unit lacks {must:?}");
    }
    let tool = std::process::Command::new("systemd-analyze").arg("--version").output();
    if tool.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing on CI: install it with `apt-get install systemd`"
        );
        eprintln!("SKIPPED systemd_unit_verifies: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = temp_dir("unit");
    let unit = unit.replace("/usr/local/bin/ringcache", env!("CARGO_BIN_EXE_ringcache"));
    let path = dir.join("ringcache.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "verify failed: {stdout}{stderr}");
    assert!(stdout.trim().is_empty() && stderr.trim().is_empty(), "verify warned: {stdout}{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
