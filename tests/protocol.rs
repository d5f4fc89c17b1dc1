//! Raw RESP protocol tests: inline commands, pipelining, fragmentation, limits and abuse.
//!
//! Every expected reply here was checked byte for byte against redis-server 7.0.15
//! (`RINGCACHE_TEST_EXTERNAL=127.0.0.1:PORT cargo test --test protocol -- --test-threads=1`),
//! except the tests that start with `Server::own_only()`, which need our own options.
//! After each kind of abuse the tests check that the server still serves other clients.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers (local to this file: tests/common is shared and owned by someone else).
// ---------------------------------------------------------------------------------------------

/// A byte-exact connection: reads never go past what a test asks for, so replies that are not
/// valid UTF-8 (echoed garbage) can be compared exactly.
struct Wire {
    s: TcpStream,
}

enum ReadOutcome {
    Data(usize),
    Closed,
    TimedOut,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Wire {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        Wire { s }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn read_some(&mut self, buf: &mut [u8]) -> ReadOutcome {
        match self.s.read(buf) {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => ReadOutcome::Data(n),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => ReadOutcome::Closed,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => ReadOutcome::TimedOut,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads exactly `want.len()` bytes and compares them with `want`.
    fn expect(&mut self, want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        let mut have = 0;
        while have < want.len() {
            match self.read_some(&mut got[have..]) {
                ReadOutcome::Data(n) => have += n,
                ReadOutcome::Closed => break,
                ReadOutcome::TimedOut => break,
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&got[..have]),
            String::from_utf8_lossy(want),
            "unexpected reply bytes (raw: {:?})",
            &got[..have]
        );
        assert_eq!(&got[..have], want);
    }

    /// The server closes the connection without sending anything more.
    fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        match self.read_some(&mut buf) {
            ReadOutcome::Closed => {}
            ReadOutcome::Data(n) => panic!("expected close, got more bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            ReadOutcome::TimedOut => panic!("expected the server to close the connection"),
        }
    }

    /// Nothing arrives and the connection stays open for `d`.
    fn expect_silent(&mut self, d: Duration) {
        self.s.set_read_timeout(Some(d)).unwrap();
        let mut buf = [0u8; 4096];
        match self.read_some(&mut buf) {
            ReadOutcome::TimedOut => {}
            ReadOutcome::Data(n) => panic!("expected no reply yet, got {:?}", String::from_utf8_lossy(&buf[..n])),
            ReadOutcome::Closed => panic!("expected the connection to stay open"),
        }
        self.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }

    /// Reads everything until the server closes (or `timeout` passes); returns the bytes and
    /// whether the connection was closed.
    fn read_until_closed(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        self.s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        while Instant::now() < deadline {
            match self.read_some(&mut buf) {
                ReadOutcome::Data(n) => out.extend_from_slice(&buf[..n]),
                ReadOutcome::Closed => return (out, true),
                ReadOutcome::TimedOut => {}
            }
        }
        (out, false)
    }
}

static HEALTH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh connection can still PING, SET and GET: the server survived whatever came before.
fn assert_serves_others(server: &Server) {
    let n = HEALTH_SEQ.fetch_add(1, Ordering::Relaxed);
    let key = format!("health:{n}");
    let val = format!("value-{n}");
    let mut c = server.raw();
    assert_eq!(c.cmd(&resp(&[b"PING"])), Reply::Simple("PONG".into()));
    assert_eq!(c.cmd(&resp(&[b"SET", key.as_bytes(), val.as_bytes()])), Reply::Simple("OK".into()));
    assert_eq!(c.cmd(&resp(&[b"GET", key.as_bytes()])), Reply::Bulk(Some(val.into_bytes())));
}

/// Sends `bytes` on a new connection, expects exactly one `-ERR Protocol error: <msg>` and then
/// the connection closed (Redis replies once, then closes), then checks the server still works.
fn assert_protocol_error(server: &Server, bytes: &[u8], msg: &str) {
    let mut w = Wire::connect(server.addr);
    w.send(bytes);
    w.expect(format!("-ERR Protocol error: {msg}\r\n").as_bytes());
    w.expect_closed();
    assert_serves_others(server);
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(v: &[u8]) -> Reply {
    Reply::Bulk(Some(v.to_vec()))
}

/// Deterministic xorshift64* generator, so failures are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A pipeline of `n` mixed SET/GET/INCR commands over a few hundred keys, with the replies a
/// correct server must give, in order.
fn mixed_pipeline(n: usize, prefix: &str) -> (Vec<u8>, Vec<Reply>) {
    let mut strings: HashMap<String, Vec<u8>> = HashMap::new();
    let mut counters: HashMap<String, i64> = HashMap::new();
    let mut wire = Vec::new();
    let mut expected = Vec::with_capacity(n);
    for i in 0..n {
        match i % 5 {
            0 | 3 => {
                let key = format!("{prefix}:s{}", i % 211);
                let val = format!("v{i}-{}", "x".repeat(i % 23)).into_bytes();
                wire.extend(resp(&[b"SET", key.as_bytes(), &val]));
                strings.insert(key, val);
                expected.push(ok());
            }
            1 | 4 => {
                let key = format!("{prefix}:s{}", (i * 7) % 211);
                wire.extend(resp(&[b"GET", key.as_bytes()]));
                expected.push(Reply::Bulk(strings.get(&key).cloned()));
            }
            _ => {
                let key = format!("{prefix}:c{}", i % 17);
                wire.extend(resp(&[b"INCR", key.as_bytes()]));
                let c = counters.entry(key).or_insert(0);
                *c += 1;
                expected.push(Reply::Int(*c));
            }
        }
    }
    (wire, expected)
}

/// Writes `wire` from another thread (so neither side can block on full socket buffers) and
/// reads `expected.len()` replies, checking each in order.
fn run_pipeline(server: &Server, wire: Vec<u8>, expected: &[Reply]) {
    let mut c = server.raw();
    let mut writer = c.s.try_clone().unwrap();
    let t = thread::spawn(move || writer.write_all(&wire).expect("write pipeline"));
    for (i, want) in expected.iter().enumerate() {
        let got = c.read();
        assert_eq!(&got, want, "reply #{i} of {}", expected.len());
    }
    t.join().unwrap();
    // Nothing more than one reply per command.
    assert_eq!(c.cmd(&resp(&[b"PING"])), Reply::Simple("PONG".into()));
}

// ---------------------------------------------------------------------------------------------
// Inline commands
// ---------------------------------------------------------------------------------------------

#[test]
fn inline_commands_are_parsed_with_redis_quoting_rules() {
    let server = Server::start();
    let mut c = server.raw();
    assert_eq!(c.cmd(b"PING\r\n"), Reply::Simple("PONG".into()));
    // A bare LF also ends an inline command; case does not matter; runs of spaces and tabs separate.
    assert_eq!(c.cmd(b"ping\n"), Reply::Simple("PONG".into()));
    assert_eq!(c.cmd(b"   PING   \r\n"), Reply::Simple("PONG".into()));
    assert_eq!(c.cmd(b"ECHO\t  word  \r\n"), bulk(b"word"));

    assert_eq!(c.cmd(b"SET a \"b c\"\r\n"), ok());
    assert_eq!(c.cmd(b"GET a\r\n"), bulk(b"b c"));

    // Double quotes: \xHH (either case), \n \r \t \b \a, \\ and \"; any other escaped char is itself.
    assert_eq!(c.cmd(b"SET a \"\\x41\\n\"\r\n"), ok());
    assert_eq!(c.cmd(b"GET a\r\n"), bulk(b"A\n"));
    assert_eq!(c.cmd(b"ECHO \"\\x4a\\x4A\\xff\"\r\n"), bulk(b"JJ\xff"));
    assert_eq!(c.cmd(b"ECHO \"a\\tb\\\\c\\\"d\"\r\n"), bulk(b"a\tb\\c\"d"));
    assert_eq!(c.cmd(b"ECHO \"\\a\\b\\r\\n\\t\\z\"\r\n"), bulk(b"\x07\x08\r\n\tz"));
    // Surprising but true in Redis: an invalid hex escape is not an error, `\x` becomes `x`.
    assert_eq!(c.cmd(b"ECHO \"\\xzz\"\r\n"), bulk(b"xzz"));
    assert_eq!(c.cmd(b"ECHO \"\"\r\n"), bulk(b""));

    // Single quotes: only \' is an escape; everything else is literal.
    assert_eq!(c.cmd(b"SET a 'x \"y\" z'\r\n"), ok());
    assert_eq!(c.cmd(b"GET a\r\n"), bulk(b"x \"y\" z"));
    assert_eq!(c.cmd(b"ECHO 'a\\'b'\r\n"), bulk(b"a'b"));
    assert_eq!(c.cmd(b"ECHO 'a\\nb'\r\n"), bulk(b"a\\nb"));

    // A lone CR inside an inline line is whitespace (Redis splits on isspace), so this is ECHO with
    // two arguments.
    assert_eq!(c.cmd(b"ECHO a\rb\r\n"), Reply::Error("ERR wrong number of arguments for 'echo' command".into()));

    // Something that looks like a bulk header outside a multibulk is just an inline word.
    assert_eq!(c.cmd(b"$4\r\n"), Reply::Error("ERR unknown command '$4', with args beginning with: ".into()));
    assert_eq!(
        c.cmd(b"foo a b\r\n"),
        Reply::Error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
    );
    assert_serves_others(&server);
}

#[test]
fn empty_inline_lines_are_ignored_without_a_reply() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    w.send(b"\r\n\r\n\n   \r\n\t\r\nPING\r\n");
    w.expect(b"+PONG\r\n");
    w.expect_silent(Duration::from_millis(200));
    w.send(b"\r\n");
    w.expect_silent(Duration::from_millis(100));
    w.send(b"PING\r\n");
    w.expect(b"+PONG\r\n");
}

#[test]
fn unbalanced_quotes_reply_error_then_close() {
    let server = Server::start();
    let cases: &[&[u8]] = &[
        b"SET a \"b\r\n",
        b"SET a 'b\r\n",
        // A closing quote must be followed by a space or the end of the line.
        b"ECHO \"a\"b\r\n",
        b"ECHO 'a'b\r\n",
        b"ECHO \"a\"\"b\"\r\n",
    ];
    for case in cases {
        assert_protocol_error(&server, case, "unbalanced quotes in request");
    }
    // The failed SET did not happen.
    let mut c = server.raw();
    assert_eq!(c.cmd(b"GET a\r\n"), Reply::Bulk(None));
}

#[test]
fn inline_and_multibulk_commands_mix_in_one_write() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    let mut bytes = resp(&[b"PING"]);
    bytes.extend_from_slice(b"PING\r\n\r\n");
    bytes.extend(resp(&[b"ECHO", b"hi"]));
    bytes.extend_from_slice(b"ECHO x\r\n");
    bytes.extend(resp(&[b"SET", b"k", b"a\r\nb"]));
    bytes.extend_from_slice(b"GET k\n");
    w.send(&bytes);
    w.expect(b"+PONG\r\n+PONG\r\n$2\r\nhi\r\n$1\r\nx\r\n+OK\r\n$4\r\na\r\nb\r\n");
    w.expect_silent(Duration::from_millis(100));
}

// ---------------------------------------------------------------------------------------------
// Pipelining and fragmentation
// ---------------------------------------------------------------------------------------------

#[test]
fn pipeline_of_10000_mixed_commands_gets_replies_in_order() {
    let server = Server::start();
    let (wire, expected) = mixed_pipeline(10_000, "pipe1");
    run_pipeline(&server, wire, &expected);
    assert_serves_others(&server);
}

#[test]
fn pipeline_of_10000_mixed_commands_across_shards_gets_replies_in_order() {
    let server = Server::start_sharded();
    let (wire, expected) = mixed_pipeline(10_000, "pipe4");
    run_pipeline(&server, wire, &expected);
    // The state is visible from a new connection (which may be served by another shard):
    // command 9997 was the last INCR (i % 5 == 2) and hit counter 9997 % 17.
    let last = expected.iter().rev().find_map(|r| if let Reply::Int(n) = r { Some(*n) } else { None }).unwrap();
    let mut c = server.raw();
    let key = format!("pipe4:c{}", 9997 % 17);
    assert_eq!(c.cmd(&resp(&[b"GET", key.as_bytes()])), bulk(last.to_string().as_bytes()));
}

#[test]
fn several_clients_pipelining_concurrently_across_shards_get_their_own_replies() {
    let server = Server::start_sharded();
    let addr = server.addr;
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let (wire, expected) = mixed_pipeline(2_000, &format!("conc{t}"));
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut writer = s.try_clone().unwrap();
                let wt = thread::spawn(move || writer.write_all(&wire).unwrap());
                let mut raw_expected = Vec::new();
                for r in &expected {
                    raw_expected.extend(encode_reply(r));
                }
                let mut got = vec![0u8; raw_expected.len()];
                s.read_exact(&mut got).expect("all replies");
                wt.join().unwrap();
                assert!(got == raw_expected, "client {t}: replies differ");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_serves_others(&server);
}

/// RESP2 encoding of the replies used by `mixed_pipeline`.
fn encode_reply(r: &Reply) -> Vec<u8> {
    match r {
        Reply::Simple(s) => format!("+{s}\r\n").into_bytes(),
        Reply::Int(n) => format!(":{n}\r\n").into_bytes(),
        Reply::Bulk(None) => b"$-1\r\n".to_vec(),
        Reply::Bulk(Some(b)) => {
            let mut v = format!("${}\r\n", b.len()).into_bytes();
            v.extend_from_slice(b);
            v.extend_from_slice(b"\r\n");
            v
        }
        other => panic!("not used here: {other:?}"),
    }
}

#[test]
fn every_command_split_at_every_byte_offset_gets_the_right_reply() {
    let server = Server::start();
    let mut c = server.raw();
    let mut incr = 0i64;
    let commands: Vec<(Vec<u8>, Option<Reply>)> = vec![
        (resp(&[b"SET", b"split:key", b"hello world"]), Some(ok())),
        (resp(&[b"GET", b"split:key"]), Some(bulk(b"hello world"))),
        (resp(&[b"INCR", b"split:ctr"]), None),
        (resp(&[b"ECHO", b"a\r\nb\x00c$1\r\n*2"]), Some(bulk(b"a\r\nb\x00c$1\r\n*2"))),
        (resp(&[b"SET", b"split:empty", b""]), Some(ok())),
        (resp(&[b"GET", b"split:empty"]), Some(bulk(b""))),
        (b"SET split:inline \"x y\"\r\n".to_vec(), Some(ok())),
        (b"GET split:inline\r\n".to_vec(), Some(bulk(b"x y"))),
        (b"PING\n".to_vec(), Some(Reply::Simple("PONG".into()))),
        (b"\r\nPING\r\n".to_vec(), Some(Reply::Simple("PONG".into()))),
    ];
    for (bytes, want) in &commands {
        for cut in 1..bytes.len() {
            c.send(&bytes[..cut]);
            thread::sleep(Duration::from_micros(500));
            c.send(&bytes[cut..]);
            let want = match want {
                Some(w) => w.clone(),
                None => {
                    incr += 1;
                    Reply::Int(incr)
                }
            };
            assert_eq!(c.read(), want, "command {:?} split at {cut}", String::from_utf8_lossy(bytes));
        }
    }
    assert_serves_others(&server);
}

#[test]
fn pipeline_sent_one_byte_at_a_time_gets_all_replies() {
    let server = Server::start();
    let mut bytes = Vec::new();
    bytes.extend(resp(&[b"SET", b"bb:a", b"1"]));
    bytes.extend(resp(&[b"INCR", b"bb:a"]));
    bytes.extend_from_slice(b"GET bb:a\r\n");
    bytes.extend(resp(&[b"ECHO", b"\r\n\r\n"]));
    bytes.extend_from_slice(b"\r\n");
    bytes.extend(resp(&[b"GET", b"bb:missing"]));
    bytes.extend_from_slice(b"ECHO 'q w'\n");
    let mut w = Wire::connect(server.addr);
    for (i, b) in bytes.iter().enumerate() {
        w.send(std::slice::from_ref(b));
        if i % 4 == 0 {
            thread::sleep(Duration::from_micros(200));
        }
    }
    w.expect(b"+OK\r\n:2\r\n$1\r\n2\r\n$4\r\n\r\n\r\n\r\n$-1\r\n$3\r\nq w\r\n");
    w.expect_silent(Duration::from_millis(100));
}

// ---------------------------------------------------------------------------------------------
// Length limits and malformed headers
// ---------------------------------------------------------------------------------------------

#[test]
fn huge_declared_bulk_length_is_rejected() {
    let server = Server::start();
    assert_protocol_error(&server, b"*1\r\n$2147483648\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*1\r\n$99999999999999999999\r\n", "invalid bulk length");
    // The default proto-max-bulk-len is 536870912 (512 MiB): one more is rejected at once...
    assert_protocol_error(&server, b"*1\r\n$536870913\r\n", "invalid bulk length");
    // ...while exactly the limit is accepted and the server waits for the data.
    let mut w = Wire::connect(server.addr);
    w.send(b"*2\r\n$4\r\nECHO\r\n$536870912\r\nabc");
    w.expect_silent(Duration::from_millis(300));
    assert_serves_others(&server);
}

#[test]
fn negative_or_malformed_bulk_length_is_rejected() {
    let server = Server::start();
    assert_protocol_error(&server, b"*1\r\n$-1\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*1\r\n$-5\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*2\r\n$4\r\nECHO\r\n$-1\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*1\r\n$x\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*1\r\n$\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*1\r\n$+4\r\nPING\r\n", "invalid bulk length");
    // Redis's string2ll refuses leading zeros.
    assert_protocol_error(&server, b"*1\r\n$04\r\nPING\r\n", "invalid bulk length");
    assert_protocol_error(&server, b"*1\r\n$4 \r\nPING\r\n", "invalid bulk length");
}

#[test]
fn commands_before_a_protocol_error_in_the_same_write_are_answered() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    w.send(b"*1\r\n$4\r\nPING\r\nPING\r\n*3\r\n$3\r\nSET\r\n$2\r\npe\r\n$1\r\n1\r\n*1\r\n$x\r\n");
    w.expect(b"+PONG\r\n+PONG\r\n+OK\r\n-ERR Protocol error: invalid bulk length\r\n");
    w.expect_closed();
    let mut c = server.raw();
    assert_eq!(c.cmd(&resp(&[b"GET", b"pe"])), bulk(b"1"));
}

#[test]
fn negative_and_zero_multibulk_counts_are_ignored() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    w.send(b"*-1\r\n");
    w.expect_silent(Duration::from_millis(150));
    w.send(b"*0\r\n*-5\r\n*-1\r\nPING\r\n*0\r\n*1\r\n$4\r\nPING\r\n");
    w.expect(b"+PONG\r\n+PONG\r\n");
    w.expect_silent(Duration::from_millis(150));
    assert_serves_others(&server);
}

#[test]
fn invalid_multibulk_length_is_rejected() {
    let server = Server::start();
    for case in [&b"*abc\r\n"[..], b"*\r\n", b"*2147483648\r\n", b"*1 \r\n", b"*+1\r\n", b"*01\r\n", b"*1x\r\n"] {
        assert_protocol_error(&server, case, "invalid multibulk length");
    }
}

#[test]
fn missing_dollar_in_multibulk_is_rejected() {
    let server = Server::start();
    assert_protocol_error(&server, b"*1\r\nx\r\n", "expected '$', got 'x'");
    assert_protocol_error(&server, b"*2\r\n$4\r\nECHO\r\nx3\r\n", "expected '$', got 'x'");
    assert_protocol_error(&server, b"*1\r\n*4\r\nping\r\n", "expected '$', got '*'");
    assert_protocol_error(&server, b"*1\r\n:4\r\n", "expected '$', got ':'");
    // The offending byte is echoed as is, even when it is not UTF-8.
    let mut w = Wire::connect(server.addr);
    w.send(b"*1\r\n$4\r\nPING\r\n*1\r\n\xff\r\n");
    w.expect(b"+PONG\r\n-ERR Protocol error: expected '$', got '\xff'\r\n");
    w.expect_closed();
    assert_serves_others(&server);
}

#[test]
fn over_long_length_lines_are_rejected() {
    let server = Server::start();
    // More than 64 KiB (65536 bytes) buffered without a newline while reading a count line.
    let mut mbulk = b"*".to_vec();
    mbulk.extend(std::iter::repeat_n(b'1', 65536));
    assert_protocol_error(&server, &mbulk, "too big mbulk count string");

    let mut bulk_line = b"*1\r\n$".to_vec();
    bulk_line.extend(std::iter::repeat_n(b'1', 65536));
    assert_protocol_error(&server, &bulk_line, "too big bulk count string");
}

#[test]
fn inline_request_over_64k_without_newline_is_rejected() {
    let server = Server::start();
    let long = vec![b'A'; 65537];
    assert_protocol_error(&server, &long, "too big inline request");
}

#[test]
fn inline_request_of_exactly_64k_is_still_accepted() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    w.send(&vec![b'A'; 65536]);
    w.expect_silent(Duration::from_millis(300));
    w.send(b"\r\n");
    // The unknown command name is cut to 128 bytes in the error.
    let want = format!("-ERR unknown command '{}', with args beginning with: \r\n", "A".repeat(128));
    w.expect(want.as_bytes());
    w.send(b"PING\r\n");
    w.expect(b"+PONG\r\n");
}

#[test]
fn declared_but_unsent_large_bulk_leaves_the_server_responsive() {
    let server = Server::start();
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut w = Wire::connect(server.addr);
        w.send(format!("*3\r\n$3\r\nSET\r\n$5\r\nbig:{i}\r\n$100000000\r\nabc").as_bytes());
        waiting.push(w);
    }
    assert_serves_others(&server);
    // The half-sent commands are still pending: no reply, connection open, nothing stored.
    for w in &mut waiting {
        w.expect_silent(Duration::from_millis(100));
    }
    let mut c = server.raw();
    assert_eq!(c.cmd(&resp(&[b"EXISTS", b"big:0", b"big:1", b"big:2", b"big:3"])), Reply::Int(0));
    drop(waiting);
    assert_serves_others(&server);
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn declared_but_unsent_bulks_do_not_reserve_memory() {
    if Server::own_only() {
        return;
    }
    let server = Server::start();
    let pid = server.pid().unwrap();
    assert_serves_others(&server);
    let rss0 = proc_status_kb(pid, "VmRSS:");
    let vsz0 = proc_status_kb(pid, "VmSize:");
    // 8 clients each declaring a 400 MB value (under the 512 MiB default limit) and sending 3
    // bytes of it. A server that reserves the declared length up front would grow by 3.2 GB of
    // address space.
    let mut waiting = Vec::new();
    for i in 0..8 {
        let mut w = Wire::connect(server.addr);
        w.send(format!("*3\r\n$3\r\nSET\r\n$5\r\nmem:{i}\r\n$400000000\r\nabc").as_bytes());
        waiting.push(w);
    }
    thread::sleep(Duration::from_millis(300));
    assert_serves_others(&server);
    let rss1 = proc_status_kb(pid, "VmRSS:");
    let vsz1 = proc_status_kb(pid, "VmSize:");
    assert!(rss1 < rss0 + 64 * 1024, "RSS grew from {rss0} kB to {rss1} kB");
    assert!(vsz1 < vsz0 + 1024 * 1024, "address space grew from {vsz0} kB to {vsz1} kB");
    for w in &mut waiting {
        w.expect_silent(Duration::from_millis(50));
    }
}

#[test]
fn bulk_length_over_proto_max_bulk_len_is_rejected() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(1, &["--proto-max-bulk-len", "1024"]);
    let at_limit = vec![b'z'; 1024];
    let mut c = server.raw();
    assert_eq!(c.cmd(&resp(&[b"ECHO", &at_limit])), bulk(&at_limit));
    assert_eq!(c.cmd(&resp(&[b"SET", b"pm", &at_limit])), ok());
    assert_eq!(c.cmd(&resp(&[b"GET", b"pm"])), bulk(&at_limit));

    assert_protocol_error(&server, b"*2\r\n$4\r\nECHO\r\n$1025\r\n", "invalid bulk length");
    // Rejected as soon as the header is read (send only the header so no unread bytes are left).
    assert_protocol_error(&server, b"*3\r\n$3\r\nSET\r\n$2\r\npm\r\n$1025\r\n", "invalid bulk length");
    assert_eq!(c.cmd(&resp(&[b"GET", b"pm"])), bulk(&at_limit));
}

#[test]
fn client_over_query_buffer_limit_is_disconnected_and_others_keep_working() {
    if Server::own_only() {
        return;
    }
    let server = Server::start_with(1, &["--client-query-buffer-limit", "65536"]);
    let mut good = server.raw();
    let small = vec![b's'; 30_000];
    assert_eq!(good.cmd(&resp(&[b"SET", b"qb:small", &small])), ok());

    // One command whose single value is 200 kB cannot fit in a 64 KiB query buffer.
    let mut w = Wire::connect(server.addr);
    let big = resp(&[b"SET", b"qb:big", &vec![b'b'; 200_000]]);
    let mut writer = w.s.try_clone().unwrap();
    let t = thread::spawn(move || {
        // The server may close before everything is written: ignore write errors.
        let _ = writer.write_all(&big);
    });
    let (bytes, closed) = w.read_until_closed(Duration::from_secs(5));
    t.join().unwrap();
    assert!(closed, "offending client must be disconnected");
    // Redis closes silently here (it only logs); whatever is sent, it must not be a success.
    assert!(!bytes.starts_with(b"+OK"), "got {:?}", String::from_utf8_lossy(&bytes));

    assert_eq!(good.cmd(&resp(&[b"GET", b"qb:big"])), Reply::Bulk(None));
    assert_eq!(good.cmd(&resp(&[b"GET", b"qb:small"])), bulk(&small));
    assert_serves_others(&server);
}

#[test]
fn query_buffer_limit_does_not_cut_long_pipelines_of_small_commands() {
    if Server::own_only() {
        return;
    }
    // The limit is on unparsed input, not on the total a client sends: like Redis, a pipeline of
    // small complete commands far larger than the limit must go through.
    let server = Server::start_with(1, &["--client-query-buffer-limit", "65536"]);
    let (wire, expected) = mixed_pipeline(10_000, "qbpipe");
    assert!(wire.len() > 4 * 65536);
    run_pipeline(&server, wire, &expected);
}

// ---------------------------------------------------------------------------------------------
// Garbage and concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn binary_garbage_line_is_an_unknown_command_and_the_connection_survives() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    // No NUL, quote, '*', space or newline in it: one inline word of high bytes. (Redis treats a
    // NUL byte in an inline request as the end of the buffer, so garbage with NULs just waits.)
    let garbage: Vec<u8> = (0x80u8..=0xff).chain(0x01u8..0x09).collect();
    let mut bytes = garbage.clone();
    bytes.extend_from_slice(b"\r\n");
    w.send(&bytes);
    let mut want = b"-ERR unknown command '".to_vec();
    want.extend_from_slice(&garbage[..128]);
    want.extend_from_slice(b"', with args beginning with: \r\n");
    w.expect(&want);
    w.send(b"PING\r\n");
    w.expect(b"+PONG\r\n");
    assert_serves_others(&server);
}

#[test]
fn random_binary_garbage_never_takes_the_server_down() {
    let server = Server::start_sharded();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..150 {
        let len = 1 + rng.below(600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Sometimes start like a real multibulk so the parser goes deeper.
        if round % 3 == 0 {
            let head = format!("*{}\r\n${}\r\n", 1 + rng.below(4), rng.below(40));
            bytes.splice(0..0, head.into_bytes());
        }
        let mut s = TcpStream::connect(server.addr).unwrap();
        let _ = s.write_all(&bytes);
        drop(s);
        if round % 25 == 24 {
            assert_serves_others(&server);
        }
    }
    assert_serves_others(&server);
}

#[test]
fn two_hundred_concurrent_clients_read_back_their_own_writes() {
    let server = Server::start_sharded();
    let addr = server.addr;
    let handles: Vec<_> = (0..200)
        .map(|t| {
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
                    let mut con = client.get_connection_with_timeout(Duration::from_secs(20)).expect("connect");
                    for i in 0..150 {
                        let key = format!("c{t}:k{}", i % 50);
                        let val = format!("t{t}-i{i}-{}", "v".repeat(i % 40));
                        let _: () = redis::cmd("SET").arg(&key).arg(&val).query(&mut con).expect("SET");
                        let got: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).expect("GET");
                        assert_eq!(got.as_deref(), Some(val.as_str()), "client {t} key {key}");
                    }
                    let n: i64 = redis::cmd("INCRBY").arg(format!("c{t}:n")).arg(t).query(&mut con).unwrap();
                    assert_eq!(n, t as i64);
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut c = server.raw();
    assert_eq!(c.cmd(&resp(&[b"DBSIZE"])), Reply::Int(200 * 51));
    assert_eq!(c.cmd(&resp(&[b"GET", b"c199:k49"])), bulk(format!("t199-i149-{}", "v".repeat(149 % 40)).as_bytes()));
}
