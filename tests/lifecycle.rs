//! Process lifecycle of the ringcache binary: graceful shutdown (SIGTERM, SIGINT, SHUTDOWN),
//! startup failures, `--maxclients` and `--help`. All tests need our own process, so they do
//! nothing when `RINGCACHE_TEST_EXTERNAL` points the suite at another server.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the binary with `args` to completion (killing it after `timeout`) and returns its output.
fn run_binary(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcache");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "ringcache {args:?} did not exit within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A startup failure: non-zero exit, a message on stderr, and no panic or backtrace.
fn assert_clean_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure, got {:?}; stderr: {stderr}", out.status);
    assert!(out.status.code().is_some(), "killed by a signal: {:?}; stderr: {stderr}", out.status);
    assert!(!stderr.trim().is_empty(), "no message on stderr");
    assert!(!stderr.contains("panicked"), "startup failure must not be a panic: {stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "startup failure must not be a panic: {stderr}");
    stderr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until EOF (or reset); returns everything read. Fails after the read timeout.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("waiting for the server to close: {e}; got {} bytes", out.len()),
        }
    }
}

fn read_exact_or_panic(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read reply");
    buf
}

/// Waits until the kernel has no unsent or unacknowledged bytes for `s`: everything written is
/// in the peer's receive queue (or already read).
fn wait_until_sent(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut queued: libc::c_int = 0;
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        assert_eq!(rc, 0, "ioctl(SIOCOUTQ)");
        if queued == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{queued} bytes still unsent");
        thread::sleep(Duration::from_millis(1));
    }
}

/// A pipeline of `n` SETs and the replies it must get.
fn set_pipeline(n: usize, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}:{i}");
        let val = format!("value-{i}");
        wire.extend(resp(&[b"SET", key.as_bytes(), val.as_bytes()]));
    }
    (wire, b"+OK\r\n".repeat(n))
}

/// Sends a pipeline, waits until every byte of it has reached the server's socket and its first
/// reply is back (so the server is in the middle of it), sends `signal`, then checks the client
/// still gets every reply, then EOF, and that the exit code is 0. Everything the client sent
/// before the signal is in flight: a server that stops after its current read chunk fails this.
fn signal_during_pipeline_finishes_it(signal: i32, threads: usize) {
    let mut server = Server::start_with(threads, &[]);
    let addr = server.addr;
    let mut idle = connect(addr);
    let mut s = connect(addr);
    let (wire, expected) = set_pipeline(1000, "sig");
    s.write_all(&wire).unwrap();
    let first = read_exact_or_panic(&mut s, 5);
    assert_eq!(first, b"+OK\r\n");
    wait_until_sent(&s);
    server.signal(signal);
    let rest = read_to_close(&mut s);
    assert_eq!(rest.len(), expected.len() - 5, "replies after the signal");
    assert!(rest == expected[5..], "all remaining replies must be +OK");
    assert_eq!(server.wait_exit(EXIT_TIMEOUT), Some(0), "exit code; log:\n{}", server.log_text());
    // The idle client is disconnected too, and nobody can connect any more.
    assert_eq!(read_to_close(&mut idle), b"");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_finishes_in_flight_pipeline_and_exits_zero() {
    if Server::own_only() {
        return;
    }
    signal_during_pipeline_finishes_it(SIGTERM, 1);
}

#[test]
fn sigterm_with_several_shards_finishes_in_flight_pipeline_and_exits_zero() {
    if Server::own_only() {
        return;
    }
    signal_during_pipeline_finishes_it(SIGTERM, 4);
}

#[test]
fn sigint_finishes_in_flight_pipeline_and_exits_zero() {
    if Server::own_only() {
        return;
    }
    signal_during_pipeline_finishes_it(SIGINT, 1);
}

#[test]
fn sigterm_with_only_idle_clients_exits_promptly() {
    if Server::own_only() {
        return;
    }
    let mut server = Server::start_sharded();
    // Idle connections, one of them with half a command sent, must not hold the shutdown.
    let mut idle: Vec<TcpStream> = (0..5).map(|_| connect(server.addr)).collect();
    idle[0].write_all(b"*2\r\n$4\r\nECHO\r\n$10\r\nabc").unwrap();
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit(EXIT_TIMEOUT), Some(0), "log:\n{}", server.log_text());
    assert!(start.elapsed() < EXIT_TIMEOUT);
    for s in &mut idle {
        assert_eq!(read_to_close(s), b"");
    }
}

#[test]
fn shutdown_command_closes_the_connection_and_exits_zero() {
    if Server::own_only() {
        return;
    }
    let mut server = Server::start_sharded();
    let mut other = connect(server.addr);
    other.write_all(&resp(&[b"PING"])).unwrap();
    assert_eq!(read_exact_or_panic(&mut other, 7), b"+PONG\r\n");

    let mut s = connect(server.addr);
    s.write_all(&resp(&[b"SET", b"k", b"v"])).unwrap();
    assert_eq!(read_exact_or_panic(&mut s, 5), b"+OK\r\n");
    s.write_all(&resp(&[b"SHUTDOWN"])).unwrap();
    // Redis sends no reply to a successful SHUTDOWN: the client just sees the connection close.
    assert_eq!(read_to_close(&mut s), b"", "SHUTDOWN must not reply");
    assert_eq!(server.wait_exit(EXIT_TIMEOUT), Some(0), "log:\n{}", server.log_text());
    assert_eq!(read_to_close(&mut other), b"");
    assert!(TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Startup failures and CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn port_already_in_use_fails_with_a_clear_message() {
    if Server::own_only() {
        return;
    }
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blocker.local_addr().unwrap().to_string();
    let out = run_binary(&["--bind", &addr, "--threads", "2"], Duration::from_secs(10));
    let stderr = assert_clean_failure(&out);
    assert!(stderr.contains("already in use"), "stderr: {stderr}");
    assert!(stderr.contains(&addr), "stderr should name {addr}: {stderr}");
    assert!(!stderr.contains("listening on"), "stderr: {stderr}");
}

#[test]
fn second_instance_on_the_same_port_fails_instead_of_sharing_it() {
    if Server::own_only() {
        return;
    }
    // Shards may use SO_REUSEPORT internally, but a second ringcache process must not be able to
    // join the first one's port (Redis refuses too): clients would hit two different caches.
    let first = Server::start_sharded();
    let addr = first.addr.to_string();
    let out = run_binary(&["--bind", &addr, "--threads", "2"], Duration::from_secs(10));
    let stderr = assert_clean_failure(&out);
    assert!(stderr.contains("already in use"), "stderr: {stderr}");
    assert!(stderr.contains(&addr), "stderr should name {addr}: {stderr}");
    let mut c = first.raw();
    assert_eq!(c.cmd(&resp(&[b"PING"])), Reply::Simple("PONG".into()));
}

#[test]
fn zero_threads_is_rejected() {
    if Server::own_only() {
        return;
    }
    // A server that accepts 0 keeps running and is killed after the timeout: keep it short.
    let out = run_binary(&["--bind", "127.0.0.1:0", "--threads", "0"], Duration::from_secs(3));
    let stderr = assert_clean_failure(&out);
    assert!(stderr.contains("threads"), "the message should name the option: {stderr}");
}

#[test]
fn invalid_option_values_are_rejected() {
    if Server::own_only() {
        return;
    }
    for args in [
        &["--bind", "127.0.0.1:0", "--maxclients", "abc"][..],
        &["--bind", "127.0.0.1:0", "--threads", "-3"][..],
        &["--bind", "127.0.0.1:0", "--proto-max-bulk-len", "lots"][..],
        &["--bind", "127.0.0.1:0", "--client-query-buffer-limit", "-1"][..],
        &["--bind", "not an address"][..],
    ] {
        let out = run_binary(args, Duration::from_secs(10));
        let stderr = assert_clean_failure(&out);
        assert!(!stderr.contains("listening on"), "{args:?}: {stderr}");
    }
}

#[test]
fn unknown_option_exits_with_usage_error_code_2() {
    if Server::own_only() {
        return;
    }
    let out = run_binary(&["--no-such-option"], Duration::from_secs(10));
    let stderr = assert_clean_failure(&out);
    assert_eq!(out.status.code(), Some(2), "clap's usage error code; stderr: {stderr}");
    assert!(stderr.contains("--no-such-option"), "{stderr}");
    let out = run_binary(&["stray-positional-argument"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn help_lists_every_option_with_its_default() {
    if Server::own_only() {
        return;
    }
    let out = run_binary(&["--help"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for option in [
        "--bind",
        "--threads",
        "--maxclients",
        "--log-level",
        "--proto-max-bulk-len",
        "--client-query-buffer-limit",
        "--help",
    ] {
        assert!(text.contains(option), "--help does not mention {option}:\n{text}");
    }
    for default in ["127.0.0.1:6379", "10000", "536870912", "1073741824"] {
        assert!(text.contains(default), "--help does not show the default {default}:\n{text}");
    }
}

#[test]
fn log_level_option_is_accepted() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(1, &["--log-level", "debug"]);
    let mut c = server.raw();
    assert_eq!(c.cmd(&resp(&[b"PING"])), Reply::Simple("PONG".into()));
    assert!(server.log_text().contains("listening on"));
}

// ---------------------------------------------------------------------------------------------
// --maxclients
// ---------------------------------------------------------------------------------------------

fn maxclients_rejects_the_extra_connection(threads: usize) {
    let server = Server::start_with(threads, &["--maxclients", "5"]);
    let mut clients: Vec<TcpStream> = Vec::new();
    for i in 0..5 {
        let mut s = connect(server.addr);
        let key = format!("mc:{i}");
        s.write_all(&resp(&[b"SET", key.as_bytes(), b"v"])).unwrap();
        assert_eq!(read_exact_or_panic(&mut s, 5), b"+OK\r\n", "client {i}");
        clients.push(s);
    }
    // The 6th gets the error as soon as it connects (before sending anything), then EOF.
    let mut extra = connect(server.addr);
    let got = read_to_close(&mut extra);
    assert_eq!(String::from_utf8_lossy(&got), "-ERR max number of clients reached\r\n");

    // The 5 accepted clients are unaffected.
    for s in &mut clients {
        s.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_exact_or_panic(s, 7), b"+PONG\r\n");
    }
    // Closing one frees its slot (the server notices the close asynchronously: retry briefly).
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut s = connect(server.addr);
        let mut buf = [0u8; 64];
        // A rejected connection may be reset by the time PING is written: that is a retry too.
        let n = match s.write_all(b"PING\r\n") {
            Ok(()) => s.read(&mut buf).unwrap_or(0),
            Err(_) => 0,
        };
        if &buf[..n] == b"+PONG\r\n" {
            break;
        }
        assert!(
            n == 0 || &buf[..n] == b"-ERR max number of clients reached\r\n",
            "unexpected reply while waiting for a free slot: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert!(Instant::now() < deadline, "slot never freed after a client disconnected");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn maxclients_5_rejects_the_sixth_connection() {
    if Server::own_only() {
        return;
    }
    maxclients_rejects_the_extra_connection(1);
}

#[test]
fn maxclients_is_a_global_limit_across_shards() {
    if Server::own_only() {
        return;
    }
    maxclients_rejects_the_extra_connection(4);
}

// ---------------------------------------------------------------------------------------------
// RLIMIT_NOFILE
// ---------------------------------------------------------------------------------------------

fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files line");
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).expect("soft limit")
}

fn config_maxclients(server: &Server) -> u64 {
    let mut c = server.client();
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxclients").query(&mut c).expect("CONFIG GET");
    v[1].parse().expect("number")
}

#[test]
fn a_low_open_files_limit_is_raised_to_fit_maxclients() {
    if Server::own_only() {
        return;
    }
    let mut own = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    if own.rlim_max < 5048 {
        eprintln!("skipped: the hard open files limit ({}) is below 5048", own.rlim_max);
        return;
    }
    // Started with a soft limit of 256 under a hard one that allows more: maxclients 5000
    // needs 5000 + 32 + 16 per shard, and the server raises the soft limit to that.
    let args: Vec<String> =
        ["--bind", "127.0.0.1:0", "--threads", "1", "--maxclients", "5000"].map(String::from).to_vec();
    let server = Server::spawn_full(&args, &[], Some((256, own.rlim_max)));
    assert_eq!(open_files_limit(server.pid().expect("pid")), 5048, "log: {}", server.log_text());
    assert_eq!(config_maxclients(&server), 5000);
    assert!(server
        .log_text()
        .contains("raised the open files limit (RLIMIT_NOFILE) from 256 to 5048 for maxclients 5000"));
}

#[test]
fn maxclients_is_lowered_when_the_open_files_limit_cannot_fit_it() {
    if Server::own_only() {
        return;
    }
    // 2^31 clients need more files than any kernel allows (fs.nr_open is at most 2^30), so
    // even root with CAP_SYS_RESOURCE cannot raise the limit that far: the server keeps the
    // hard limit, 300, and fits maxclients under it, leaving 32 + 16 for itself.
    let args: Vec<String> =
        ["--bind", "127.0.0.1:0", "--threads", "1", "--maxclients", "2147483648"].map(String::from).to_vec();
    let server = Server::spawn_full(&args, &[], Some((300, 300)));
    assert_eq!(open_files_limit(server.pid().expect("pid")), 300);
    assert_eq!(config_maxclients(&server), 300 - 48);
    let log = server.log_text();
    assert!(
        log.contains("maxclients 2147483648 needs 2147483696 open files but the limit (RLIMIT_NOFILE) is 300: maxclients lowered to 252; raise it with `ulimit -n 2147483696`"),
        "log: {log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Startup with more shards than CPUs
// ---------------------------------------------------------------------------------------------

/// An executor could sleep with its mesh connections pending and never start (glommio re-polls
/// pending connects only on reactor turns; see `shard::mesh`). With 16 shards on 2 CPUs about
/// one start in ten hung; 20 starts catch that with a probability of about 0.88.
#[test]
fn sixteen_shards_start_every_time() {
    if Server::own_only() {
        return;
    }
    for round in 0..20 {
        // Server::start_with panics if the server is not ready within 20 s.
        let server = Server::start_with(16, &[]);
        let mut c = server.client();
        let keys: Vec<String> = (0..64).map(|i| format!("k{round}-{i}")).collect();
        let pairs: Vec<(&str, usize)> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let () = redis::cmd("MSET").arg(&pairs).query(&mut c).expect("MSET over 16 shards");
        let got: Vec<usize> = redis::cmd("MGET").arg(&keys).query(&mut c).expect("MGET");
        assert_eq!(got, (0..64).collect::<Vec<_>>(), "round {round}");
    }
}
