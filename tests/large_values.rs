//! Large values (up to the 512 MiB protocol limit) never exist twice in the server's memory:
//! not while a SET is read, stored and logged, not while a GET sends it, not while a snapshot
//! writes it, not while recovery loads it (see `src/large.rs`).
//!
//! Each test measures the real server's peak resident memory (`VmHWM` in `/proc/PID/status`,
//! reset through `/proc/PID/clear_refs`) around one operation and asserts it grew by at most
//! the value plus a stated allowance: a second copy of the value would exceed it by far. Values
//! are streamed in pieces and checked byte by byte as they come back, so the test process does
//! not hold them either.

mod common;
mod durability_common;

use common::*;
use durability_common as dur;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const MIB: usize = 1 << 20;
/// What an operation on a large value may add to the server's peak RSS beyond the value itself
/// (reply and read buffers, the log's staging chunk, allocator slack). A second copy of even the
/// smallest value measured here (64 MiB) is far above it.
const ALLOWANCE_BYTES: usize = 40 * MIB;

fn status_kb(pid: u32, field: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in status"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("kB value")
}

/// Resets the peak RSS to the current RSS; returns the current RSS in bytes.
fn reset_peak(pid: u32) -> usize {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM (clear_refs)");
    status_kb(pid, "VmRSS:") * 1024
}

fn peak_bytes(pid: u32) -> usize {
    status_kb(pid, "VmHWM:") * 1024
}

/// The value of `key`, byte `i`: depends on the key and on the position, so a value stored
/// under the wrong key or shifted by any amount is caught.
fn byte_at(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add((i >> 13) as u8).wrapping_add(seed)
}

fn pattern(seed: u8, from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| byte_at(seed, i)).collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut b).expect("read reply line");
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line[..line.len() - 2]).into_owned()
}

/// SET `key` to `len` bytes of the key's pattern, streamed in 1 MiB pieces; returns the reply.
fn set_streamed(s: &mut TcpStream, key: &str, seed: u8, len: usize) -> String {
    s.write_all(format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${len}\r\n", key.len()).as_bytes()).unwrap();
    let mut at = 0;
    while at < len {
        let n = MIB.min(len - at);
        s.write_all(&pattern(seed, at, n)).expect("send value");
        at += n;
    }
    s.write_all(b"\r\n").unwrap();
    read_line(s)
}

/// GET `key` and check, piece by piece, that it is `len` bytes of the key's pattern.
fn get_streamed(s: &mut TcpStream, key: &str, seed: u8, len: usize) {
    s.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes()).unwrap();
    read_value(s, key, seed, len);
}

/// Reads a bulk reply and checks, piece by piece, that it is `len` bytes of `seed`'s pattern.
fn read_value(s: &mut TcpStream, key: &str, seed: u8, len: usize) {
    assert_eq!(read_line(s), format!("${len}"), "GET {key} header");
    let mut buf = vec![0u8; MIB];
    let mut at = 0;
    while at < len {
        let n = MIB.min(len - at);
        s.read_exact(&mut buf[..n]).expect("read value");
        assert!(buf[..n] == pattern(seed, at, n)[..], "GET {key}: bytes {at}..{} differ", at + n);
        at += n;
    }
    let mut crlf = [0u8; 2];
    s.read_exact(&mut crlf).unwrap();
    assert_eq!(&crlf, b"\r\n");
}

fn used_memory(s: &mut TcpStream) -> usize {
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n").unwrap();
    let header = read_line(s);
    let len: usize = header[1..].parse().expect("bulk length");
    let mut body = vec![0u8; len + 2];
    s.read_exact(&mut body).unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    let line = text.lines().find(|l| l.starts_with("used_memory:")).expect("used_memory");
    line["used_memory:".len()..].trim().parse().expect("number")
}

/// Asserts that the peak RSS since `reset_peak` grew by at most `value_bytes` plus the allowance.
fn assert_one_copy(pid: u32, rss_before: usize, value_bytes: usize, what: &str) {
    let grew = peak_bytes(pid).saturating_sub(rss_before);
    eprintln!("{what}: peak RSS grew by {} MiB for a {} MiB value", grew / MIB, value_bytes / MIB);
    assert!(
        grew <= value_bytes + ALLOWANCE_BYTES,
        "{what}: peak RSS grew by {} MiB for a {} MiB value (allowed: value + {} MiB)",
        grew / MIB,
        value_bytes / MIB,
        ALLOWANCE_BYTES / MIB
    );
}

#[test]
fn set_and_get_of_a_512_mib_value_hold_one_copy() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(2, &["--durability", "off"]);
    let pid = server.pid().expect("own server");
    let mut c = connect(server.addr);
    let len = 512 * MIB;

    let before = reset_peak(pid);
    assert_eq!(set_streamed(&mut c, "big", 1, len), "+OK");
    assert_one_copy(pid, before, len, "SET 512 MiB");
    let used = used_memory(&mut c);
    assert!(used >= len && used < len + 8 * MIB, "used_memory {used} for one 512 MiB value");

    let before = reset_peak(pid);
    get_streamed(&mut c, "big", 1, len);
    assert_one_copy(pid, before, 0, "GET 512 MiB");
}

#[test]
fn large_values_on_both_shards_pipelined_and_renamed_hold_one_copy() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(2, &["--durability", "off"]);
    let pid = server.pid().expect("own server");
    // Keys on both shards: whichever shard the connection is on, one is remote.
    let keys: Vec<String> = (0..64).map(|i| format!("lv:{i}")).collect();
    let on = |s: usize| keys.iter().find(|k| ringcache::shard::shard_of(k.as_bytes(), 2) == s).cloned().unwrap();
    let (k0, k1) = (on(0), on(1));
    let len = 64 * MIB;
    let mut c = connect(server.addr);

    let before = reset_peak(pid);
    assert_eq!(set_streamed(&mut c, &k0, 10, len), "+OK");
    assert_eq!(set_streamed(&mut c, &k1, 11, len), "+OK");
    assert_one_copy(pid, before, 2 * len, "SET 64 MiB on each shard");

    let before = reset_peak(pid);
    // Pipelined: both replies are built before either is sent.
    let get = |k: &str| format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len());
    c.write_all(format!("{}{}", get(&k0), get(&k1)).as_bytes()).unwrap();
    read_value(&mut c, &k0, 10, len);
    read_value(&mut c, &k1, 11, len);
    assert_one_copy(pid, before, 0, "pipelined GETs on both shards");

    let before = reset_peak(pid);
    let mut r = server.client();
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&k0).arg(&k1).arg("missing").query(&mut r).unwrap();
    assert_eq!(values.len(), 3);
    assert!(values[0].as_deref() == Some(&pattern(10, 0, len)[..]));
    assert!(values[1].as_deref() == Some(&pattern(11, 0, len)[..]));
    assert_eq!(values[2], None);
    drop(values);
    assert_one_copy(pid, before, 0, "MGET across shards");

    // RENAME across shards moves the value; the old key is gone, nothing is copied.
    let before = reset_peak(pid);
    let () = redis::cmd("RENAME").arg(&k0).arg("lv:moved").query(&mut r).unwrap();
    assert_one_copy(pid, before, 0, "RENAME");
    let gone: Option<Vec<u8>> = redis::cmd("GET").arg(&k0).query(&mut r).unwrap();
    assert_eq!(gone, None);
    get_streamed(&mut c, "lv:moved", 10, len);

    // A SETRANGE on a large value builds the new value beside the old (the old may be in a
    // reply or the log): one new copy, no more.
    let before = reset_peak(pid);
    let n: i64 = redis::cmd("SETRANGE").arg(&k1).arg(0).arg(pattern(11, 0, 10)).query(&mut r).unwrap();
    assert_eq!(n, len as i64);
    assert_one_copy(pid, before, len, "SETRANGE");
    get_streamed(&mut c, &k1, 11, len);
}

#[test]
fn a_large_bulk_counts_toward_the_query_buffer_limit() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(1, &["--client-query-buffer-limit", "4mb"]);
    let mut c = connect(server.addr);
    assert_eq!(set_streamed(&mut c, "fits", 3, 3 * MIB), "+OK");
    get_streamed(&mut c, "fits", 3, 3 * MIB);

    // 6 MiB cannot fit a 4 MiB query buffer although the server's own buffer stays small: the
    // large bulk's buffer counts.
    let mut w = connect(server.addr);
    w.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nover\r\n$6291456\r\n").unwrap();
    let mut closed = false;
    for at in 0..6 {
        if w.write_all(&pattern(4, at * MIB, MIB)).is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        let _ = w.write_all(b"\r\n");
        let mut b = [0u8; 64];
        closed = matches!(w.read(&mut b), Ok(0) | Err(_));
    }
    assert!(closed, "a client over the query buffer limit must be disconnected");
    let mut r = server.client();
    let over: Option<Vec<u8>> = redis::cmd("GET").arg("over").query(&mut r).unwrap();
    assert_eq!(over, None);
    get_streamed(&mut c, "fits", 3, 3 * MIB);
}

#[test]
fn a_durable_512_mib_value_survives_kill9_and_recovery_holds_one_copy() {
    if Server::own_only() {
        return;
    }
    let dir = dur::DataDir::new("large-values");
    let len = 512 * MIB;
    let mut s = dur::start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64mb"]);
    let pid = s.pid().expect("own server");
    let mut c = connect(s.addr);
    let before = reset_peak(pid);
    assert_eq!(set_streamed(&mut c, "big", 5, len), "+OK");
    assert_one_copy(pid, before, len, "SET 512 MiB, sync log");
    dur::crash(&mut s);

    // Recovery from the log alone.
    let s = dur::start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64mb"]);
    let pid = s.pid().expect("own server");
    let baseline = 24 * MIB;
    assert_one_copy(pid, baseline, len, "recovery from the log");
    let mut c = connect(s.addr);
    get_streamed(&mut c, "big", 5, len);

    // A snapshot of it, then recovery from the snapshot.
    let before = reset_peak(pid);
    c.write_all(b"*1\r\n$4\r\nSAVE\r\n").unwrap();
    assert_eq!(read_line(&mut c), "+OK");
    assert_one_copy(pid, before, 0, "SAVE");
    let mut s = s;
    dur::crash(&mut s);
    let s = dur::start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64mb"]);
    let pid = s.pid().expect("own server");
    assert_one_copy(pid, baseline, len, "recovery from the snapshot");
    let mut c = connect(s.addr);
    get_streamed(&mut c, "big", 5, len);
}

#[test]
fn a_large_value_the_kernel_cannot_map_gets_an_error_and_the_server_goes_on() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(1, &["--durability", "off"]);
    let pid = server.pid().expect("own server");
    let mut c = connect(server.addr);
    assert_eq!(set_streamed(&mut c, "before", 7, 2 * MIB), "+OK");
    // Connect first (its buffers are allocated), then cap the server's address space just
    // above what it uses: the first mapping of a large value (256 KiB) cannot be made.
    let mut w = connect(server.addr);
    let limit = |cur: u64| {
        let lim = libc::rlimit { rlim_cur: cur, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit on our own child with a valid rlimit.
        let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_AS, &lim, std::ptr::null_mut()) };
        assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    limit((status_kb(pid, "VmSize:") * 1024 + 128 * 1024) as u64);
    // Only the header and one byte: the server reads all that was sent before it closes, so
    // the close is a clean one and the reply arrives.
    w.write_all(format!("*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n${}\r\nx", 256 * MIB).as_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = w.read_to_end(&mut reply);
    limit(libc::RLIM_INFINITY);
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("-ERR cannot map 262144 bytes for a large value: "), "got {text:?}");

    // Nothing was stored, nothing was lost, others are served.
    let mut r = server.client();
    let huge: Option<Vec<u8>> = redis::cmd("GET").arg("huge").query(&mut r).unwrap();
    assert_eq!(huge, None);
    get_streamed(&mut c, "before", 7, 2 * MIB);
    let pong: String = redis::cmd("PING").query(&mut r).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn large_values_are_counted_exactly_and_evicted_within_maxmemory() {
    if Server::own_only() {
        return;
    }
    let server =
        Server::start_with(1, &["--durability", "off", "--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let pid = server.pid().expect("own server");
    let mut c = connect(server.addr);
    let len = 30 * MIB + 5;
    for i in 0..6u8 {
        assert_eq!(set_streamed(&mut c, &format!("lv:{i}"), i, len), "+OK");
        // A large value counts its length in whole pages plus a small owner record, and the
        // limit holds after every write.
        let used = used_memory(&mut c);
        assert!(used <= 100 * MIB, "used_memory {used} over the 100 MiB limit after value {i}");
        assert!(used >= len.min(100 * MIB), "used_memory {used} below the value it holds");
    }
    // Three 30 MiB values fit in 100 MiB, a fourth does not: the three newest are kept.
    let mut r = server.client();
    let n: i64 = redis::cmd("DBSIZE").query(&mut r).unwrap();
    assert_eq!(n, 3);
    for i in 3..6u8 {
        get_streamed(&mut c, &format!("lv:{i}"), i, len);
    }
    let rss = status_kb(pid, "VmRSS:") * 1024;
    assert!(rss < 100 * MIB + 48 * MIB, "RSS {} MiB with a 100 MiB limit", rss / MIB);
}
