//! Connection and server commands: PING, ECHO, QUIT, HELLO, SELECT, CLIENT, COMMAND, INFO,
//! DBSIZE, FLUSHDB, FLUSHALL, TIME, CONFIG, and the generic error replies.
//!
//! Expected replies were checked against redis-server 7.0.15 with
//! `RINGCACHE_TEST_EXTERNAL=127.0.0.1:PORT cargo test --test server_cmds -- --test-threads=1`;
//! tests that start with `Server::own_only()` assert where ringcache deliberately differs.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Helpers (local to this file).
// ---------------------------------------------------------------------------------------------

/// A connection that returns each reply as its exact bytes (RESP2 or RESP3).
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Wire {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        Wire { s, buf: Vec::new() }
    }

    /// Sends one command and returns the exact bytes of its reply.
    fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.s.write_all(&resp(args)).expect("write");
        self.frame()
    }

    fn frame(&mut self) -> Vec<u8> {
        loop {
            if let Some(n) = frame_len(&self.buf) {
                return self.buf.drain(..n).collect();
            }
            let mut tmp = [0u8; 65536];
            let n = self.s.read(&mut tmp).expect("read");
            assert!(n > 0, "connection closed; have {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// True when the server closed the connection (nothing else arrives first).
    fn closed(&mut self) -> bool {
        assert!(self.buf.is_empty(), "unread bytes {:?}", String::from_utf8_lossy(&self.buf));
        let mut tmp = [0u8; 1024];
        match self.s.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => panic!("expected close, got {:?}", String::from_utf8_lossy(&tmp[..n])),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            Err(_) => false,
        }
    }
}

/// Length of the first complete RESP2/RESP3 frame in `b`, if there is one.
fn frame_len(b: &[u8]) -> Option<usize> {
    let nl = b.windows(2).position(|w| w == b"\r\n")?;
    let rest = nl + 2;
    let line = std::str::from_utf8(&b[1..nl]).ok()?;
    match b[0] {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(rest),
        b'$' | b'=' | b'!' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some(rest);
            }
            let end = rest + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n: i64 = line.parse().ok()?;
            let items = if b[0] == b'%' || b[0] == b'|' { n * 2 } else { n.max(0) };
            let mut off = rest;
            for _ in 0..items {
                off += frame_len(&b[off..])?;
            }
            Some(off)
        }
        other => panic!("unknown RESP type byte {:?}", other as char),
    }
}

fn simple(s: &str) -> Reply {
    Reply::Simple(s.into())
}

fn err(s: &str) -> Reply {
    Reply::Error(s.into())
}

fn bulk(v: &[u8]) -> Reply {
    Reply::Bulk(Some(v.to_vec()))
}

fn bulk_str(r: &Reply) -> String {
    match r {
        Reply::Bulk(Some(b)) => String::from_utf8(b.clone()).expect("utf-8 bulk"),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

fn array(r: Reply) -> Vec<Reply> {
    match r {
        Reply::Array(Some(items)) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Turns a flat key/value array (a RESP2 map, or a RESP3 map as the harness decodes it) into
/// pairs with string keys.
fn pairs(items: Vec<Reply>) -> Vec<(String, Reply)> {
    assert!(items.len() % 2 == 0, "odd number of map items: {items:?}");
    let mut out = Vec::new();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let key = match k {
            Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
            Reply::Simple(s) => s,
            other => panic!("map key {other:?}"),
        };
        out.push((key, v));
    }
    out
}

fn cmd(c: &mut Raw, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.cmd(&resp(&args))
}

fn client_id(c: &mut Raw) -> i64 {
    match cmd(c, &["CLIENT", "ID"]) {
        Reply::Int(n) => n,
        other => panic!("CLIENT ID gave {other:?}"),
    }
}

fn info(c: &mut Raw, args: &[&str]) -> String {
    let mut full = vec!["INFO"];
    full.extend_from_slice(args);
    bulk_str(&cmd(c, &full))
}

// ---------------------------------------------------------------------------------------------
// PING, ECHO, QUIT
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_replies_pong_or_echoes_its_argument() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    assert_eq!(w.call(&[b"PING"]), b"+PONG\r\n");
    assert_eq!(w.call(&[b"ping"]), b"+PONG\r\n");
    // With an argument PING replies a bulk string, not a simple string.
    assert_eq!(w.call(&[b"PING", b"hello world"]), b"$11\r\nhello world\r\n");
    assert_eq!(w.call(&[b"PING", b""]), b"$0\r\n\r\n");
    assert_eq!(w.call(&[b"PING", b"a", b"b"]), b"-ERR wrong number of arguments for 'ping' command\r\n");
}

#[test]
fn echo_is_binary_safe_and_checks_arity() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    assert_eq!(w.call(&[b"ECHO", b"x"]), b"$1\r\nx\r\n");
    assert_eq!(w.call(&[b"ECHO", b"a\r\n\x00\xffb"]), b"$6\r\na\r\n\x00\xffb\r\n");
    assert_eq!(w.call(&[b"ECHO", b""]), b"$0\r\n\r\n");
    assert_eq!(w.call(&[b"ECHO"]), b"-ERR wrong number of arguments for 'echo' command\r\n");
    assert_eq!(w.call(&[b"ECHO", b"a", b"b"]), b"-ERR wrong number of arguments for 'echo' command\r\n");
}

#[test]
fn quit_replies_ok_then_closes_the_connection() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    assert_eq!(w.call(&[b"SET", b"q", b"1"]), b"+OK\r\n");
    assert_eq!(w.call(&[b"QUIT"]), b"+OK\r\n");
    assert!(w.closed());
    // QUIT accepts (and ignores) arguments.
    let mut w = Wire::connect(server.addr);
    assert_eq!(w.call(&[b"QUIT", b"now"]), b"+OK\r\n");
    assert!(w.closed());
    // Commands pipelined after QUIT are not executed.
    let mut w = Wire::connect(server.addr);
    w.s.write_all(b"QUIT\r\nSET q 2\r\n").unwrap();
    assert_eq!(w.frame(), b"+OK\r\n");
    assert!(w.closed());
    let mut c = server.raw();
    assert_eq!(cmd(&mut c, &["GET", "q"]), bulk(b"1"));
}

// ---------------------------------------------------------------------------------------------
// HELLO
// ---------------------------------------------------------------------------------------------

/// Checks the HELLO reply fields, in Redis's order, and returns them.
fn check_hello(reply: Reply, proto: i64, id: i64) -> Vec<(String, Reply)> {
    let fields = pairs(array(reply));
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["server", "version", "proto", "id", "mode", "role", "modules"]);
    // Redis says server=redis, version=7.0.15; ours may say its own name and version.
    assert!(!bulk_str(&fields[0].1).is_empty());
    assert!(!bulk_str(&fields[1].1).is_empty());
    assert_eq!(fields[2].1, Reply::Int(proto));
    assert_eq!(fields[3].1, Reply::Int(id));
    assert_eq!(fields[4].1, bulk(b"standalone"));
    assert_eq!(fields[5].1, bulk(b"master"));
    assert_eq!(fields[6].1, Reply::Array(Some(vec![])));
    fields
}

#[test]
fn hello_2_reports_server_fields_as_a_flat_array() {
    let server = Server::start();
    let mut c = server.raw();
    let id = client_id(&mut c);
    check_hello(cmd(&mut c, &["HELLO", "2"]), 2, id);
    // Without a version HELLO just reports the current protocol.
    check_hello(cmd(&mut c, &["HELLO"]), 2, id);
    let mut w = Wire::connect(server.addr);
    let raw = w.call(&[b"HELLO", b"2"]);
    assert!(raw.starts_with(b"*14\r\n$6\r\nserver\r\n"), "{:?}", String::from_utf8_lossy(&raw));
}

#[test]
fn hello_3_switches_the_connection_to_resp3() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    let raw = w.call(&[b"HELLO", b"3"]);
    assert!(raw.starts_with(b"%7\r\n$6\r\nserver\r\n"), "{:?}", String::from_utf8_lossy(&raw));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    assert!(
        text.ends_with("$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"),
        "{text}"
    );
    // RESP3 null.
    assert_eq!(w.call(&[b"GET", b"hello:missing"]), b"_\r\n");
    assert_eq!(w.call(&[b"PING"]), b"+PONG\r\n");
    // HELLO without arguments keeps (and reports) RESP3.
    assert!(w.call(&[b"HELLO"]).starts_with(b"%7\r\n"));
    // Back to RESP2.
    assert!(w.call(&[b"HELLO", b"2"]).starts_with(b"*14\r\n"));
    assert_eq!(w.call(&[b"GET", b"hello:missing"]), b"$-1\r\n");

    let mut c = server.raw();
    let id = client_id(&mut c);
    check_hello(cmd(&mut c, &["HELLO", "3"]), 3, id);
}

#[test]
fn resp3_replies_use_maps_nulls_and_verbatim_strings() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    assert!(w.call(&[b"HELLO", b"3"]).starts_with(b"%7\r\n"));
    // CONFIG GET is a map; COMMAND DOCS is a map of maps.
    assert_eq!(w.call(&[b"CONFIG", b"GET", b"nosuchparameter"]), b"%0\r\n");
    let cfg = w.call(&[b"CONFIG", b"GET", b"maxclients"]);
    assert!(cfg.starts_with(b"%1\r\n$10\r\nmaxclients\r\n$"), "{:?}", String::from_utf8_lossy(&cfg));
    let docs = w.call(&[b"COMMAND", b"DOCS", b"GET"]);
    assert!(docs.starts_with(b"%1\r\n$3\r\nget\r\n%"), "{:?}", String::from_utf8_lossy(&docs));
    // A missing name is the RESP3 null.
    assert_eq!(w.call(&[b"CLIENT", b"GETNAME"]), b"_\r\n");
    // INFO and CLIENT INFO/LIST are verbatim strings of format "txt".
    assert_eq!(w.call(&[b"INFO", b"keyspace"]), b"=16\r\ntxt:# Keyspace\r\n\r\n");
    let info = w.call(&[b"CLIENT", b"INFO"]);
    assert!(
        info.starts_with(b"=") && info.windows(8).any(|x| x == b"\r\ntxt:id"),
        "{:?}",
        String::from_utf8_lossy(&info)
    );
    // TIME stays an array of two bulk strings.
    assert!(w.call(&[b"TIME"]).starts_with(b"*2\r\n$"));
}

#[test]
fn hello_with_unsupported_or_bad_version_is_rejected() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    assert_eq!(w.call(&[b"HELLO", b"4"]), b"-NOPROTO unsupported protocol version\r\n");
    assert_eq!(w.call(&[b"HELLO", b"1"]), b"-NOPROTO unsupported protocol version\r\n");
    assert_eq!(w.call(&[b"HELLO", b"x"]), b"-ERR Protocol version is not an integer or out of range\r\n");
    assert_eq!(w.call(&[b"HELLO", b"2", b"x"]), b"-ERR Syntax error in HELLO option 'x'\r\n");
    // A failed HELLO leaves the connection on RESP2.
    assert_eq!(w.call(&[b"GET", b"hello:missing"]), b"$-1\r\n");
}

#[test]
fn hello_setname_names_the_connection() {
    let server = Server::start();
    let mut c = server.raw();
    let id = client_id(&mut c);
    check_hello(cmd(&mut c, &["HELLO", "2", "SETNAME", "viahello"]), 2, id);
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), bulk(b"viahello"));
    assert_eq!(
        cmd(&mut c, &["HELLO", "3", "SETNAME", "a b"]),
        err("ERR Client names cannot contain spaces, newlines or special characters.")
    );
    // The failed HELLO changed neither the name nor the protocol.
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), bulk(b"viahello"));
    assert_eq!(cmd(&mut c, &["GET", "hello:missing"]), Reply::Bulk(None));
}

// ---------------------------------------------------------------------------------------------
// SELECT
// ---------------------------------------------------------------------------------------------

#[test]
fn select_accepts_db_0_and_rejects_bad_indexes() {
    let server = Server::start();
    let mut c = server.raw();
    assert_eq!(cmd(&mut c, &["SELECT", "0"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["SELECT", "abc"]), err("ERR value is not an integer or out of range"));
    assert_eq!(cmd(&mut c, &["SELECT", "16"]), err("ERR DB index is out of range"));
    assert_eq!(cmd(&mut c, &["SELECT", "-1"]), err("ERR DB index is out of range"));
    assert_eq!(cmd(&mut c, &["SELECT"]), err("ERR wrong number of arguments for 'select' command"));
    assert_eq!(cmd(&mut c, &["SELECT", "0", "1"]), err("ERR wrong number of arguments for 'select' command"));
    // Still on db 0.
    assert_eq!(cmd(&mut c, &["SET", "sel", "v"]), simple("OK"));
    let mut other = server.raw();
    assert_eq!(cmd(&mut other, &["GET", "sel"]), bulk(b"v"));
}

#[test]
fn select_of_a_nonzero_db_is_out_of_range_in_ringcache() {
    // Redis has 16 databases and answers +OK here; ringcache only has db 0.
    if Server::own_only() {
        return;
    }
    let server = Server::start();
    let mut c = server.raw();
    assert_eq!(cmd(&mut c, &["SELECT", "1"]), err("ERR DB index is out of range"));
    assert_eq!(cmd(&mut c, &["SET", "sel1", "v"]), simple("OK"));
    let mut other = server.raw();
    assert_eq!(cmd(&mut other, &["GET", "sel1"]), bulk(b"v"));
}

// ---------------------------------------------------------------------------------------------
// CLIENT
// ---------------------------------------------------------------------------------------------

#[test]
fn client_setname_and_getname_round_trip() {
    let server = Server::start();
    let mut c = server.raw();
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), Reply::Bulk(None));
    assert_eq!(cmd(&mut c, &["CLIENT", "SETNAME", "worker-1"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), bulk(b"worker-1"));
    // Punctuation is fine; only characters outside '!'..'~' are refused.
    assert_eq!(cmd(&mut c, &["client", "setname", "a~b!"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), bulk(b"a~b!"));
    let invalid = err("ERR Client names cannot contain spaces, newlines or special characters.");
    for bad in ["a b", "a\nb", "a\x01b", "é"] {
        assert_eq!(cmd(&mut c, &["CLIENT", "SETNAME", bad]), invalid, "name {bad:?}");
    }
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), bulk(b"a~b!"));
    // An empty name removes the name.
    assert_eq!(cmd(&mut c, &["CLIENT", "SETNAME", ""]), simple("OK"));
    assert_eq!(cmd(&mut c, &["CLIENT", "GETNAME"]), Reply::Bulk(None));
    // Names belong to connections.
    assert_eq!(cmd(&mut c, &["CLIENT", "SETNAME", "mine"]), simple("OK"));
    let mut other = server.raw();
    assert_eq!(cmd(&mut other, &["CLIENT", "GETNAME"]), Reply::Bulk(None));
}

#[test]
fn client_ids_increase_across_connections() {
    let server = Server::start_sharded();
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut c = server.raw();
        let id = client_id(&mut c);
        // Stable for the life of the connection.
        assert_eq!(client_id(&mut c), id);
        ids.push(id);
        conns.push(c);
    }
    assert!(ids[0] > 0);
    for pair in ids.windows(2) {
        assert!(pair[1] > pair[0], "ids not increasing: {ids:?}");
    }
    // Ids are not reused after a disconnect.
    drop(conns);
    let mut c = server.raw();
    assert!(client_id(&mut c) > *ids.last().unwrap());
}

#[test]
fn client_info_and_list_describe_the_connections() {
    let server = Server::start_sharded();
    let mut a = server.raw();
    let mut b = server.raw();
    let a_id = client_id(&mut a);
    let b_id = client_id(&mut b);
    assert_eq!(cmd(&mut a, &["CLIENT", "SETNAME", "alpha"]), simple("OK"));
    let a_port = a.s.local_addr().unwrap().port();

    let line = bulk_str(&cmd(&mut a, &["CLIENT", "INFO"]));
    // One line, ending in "\n", of space separated field=value pairs.
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
    let fields: Vec<&str> = line.trim_end().split(' ').collect();
    assert!(fields.contains(&format!("id={a_id}").as_str()), "{line}");
    assert!(fields.contains(&format!("addr=127.0.0.1:{a_port}").as_str()), "{line}");
    assert!(fields.contains(&"name=alpha"), "{line}");

    let list = bulk_str(&cmd(&mut b, &["CLIENT", "LIST"]));
    assert!(list.ends_with('\n'), "{list:?}");
    let a_line = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == format!("id={a_id}")))
        .unwrap_or_else(|| panic!("no line for id={a_id} in {list}"));
    assert!(a_line.split(' ').any(|f| f == "name=alpha"), "{a_line}");
    assert!(a_line.split(' ').any(|f| f == format!("addr=127.0.0.1:{a_port}")), "{a_line}");
    let b_line = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == format!("id={b_id}")))
        .unwrap_or_else(|| panic!("no line for id={b_id} in {list}"));
    // An unnamed client shows an empty name.
    assert!(b_line.split(' ').any(|f| f == "name="), "{b_line}");
    for l in list.lines() {
        assert!(l.starts_with("id="), "{l}");
        assert!(l.contains(" addr=") && l.contains(" name="), "{l}");
    }
    // Every connection, whichever shard serves it, appears in the list.
    drop(b);
    let mut more: Vec<Raw> = (0..6).map(|_| server.raw()).collect();
    let more_ids: Vec<i64> = more.iter_mut().map(client_id).collect();
    let list = bulk_str(&cmd(&mut a, &["CLIENT", "LIST"]));
    for id in more_ids {
        assert!(list.lines().any(|l| l.starts_with(&format!("id={id} "))), "id {id} missing from {list}");
    }
}

#[test]
fn client_subcommand_errors_match_redis() {
    let server = Server::start();
    let mut c = server.raw();
    assert_eq!(cmd(&mut c, &["CLIENT", "SETNAME"]), err("ERR wrong number of arguments for 'client|setname' command"));
    assert_eq!(
        cmd(&mut c, &["Client", "SetName", "x", "y"]),
        err("ERR wrong number of arguments for 'client|setname' command")
    );
    assert_eq!(
        cmd(&mut c, &["CLIENT", "GETNAME", "x"]),
        err("ERR wrong number of arguments for 'client|getname' command")
    );
    assert_eq!(cmd(&mut c, &["CLIENT", "ID", "x"]), err("ERR wrong number of arguments for 'client|id' command"));
    assert_eq!(cmd(&mut c, &["CLIENT"]), err("ERR wrong number of arguments for 'client' command"));
    // The unknown subcommand is quoted with its original case.
    assert_eq!(cmd(&mut c, &["CLIENT", "FOO"]), err("ERR unknown subcommand 'FOO'. Try CLIENT HELP."));
    assert_eq!(cmd(&mut c, &["cLiEnT", "fOo", "bar"]), err("ERR unknown subcommand 'fOo'. Try CLIENT HELP."));
}

// ---------------------------------------------------------------------------------------------
// COMMAND
// ---------------------------------------------------------------------------------------------

#[test]
fn command_count_info_and_docs_describe_get() {
    let server = Server::start();
    let mut c = server.raw();
    match cmd(&mut c, &["COMMAND", "COUNT"]) {
        Reply::Int(n) => assert!(n > 0, "COMMAND COUNT {n}"),
        other => panic!("COMMAND COUNT gave {other:?}"),
    }

    let infos = array(cmd(&mut c, &["COMMAND", "INFO", "GET"]));
    assert_eq!(infos.len(), 1);
    let get = array(infos[0].clone());
    assert!(get.len() >= 6, "{get:?}");
    assert_eq!(get[0], bulk(b"get"));
    assert_eq!(get[1], Reply::Int(2), "arity");
    assert!(matches!(&get[2], Reply::Array(Some(_))), "flags: {:?}", get[2]);
    assert_eq!(&get[3..6], &[Reply::Int(1), Reply::Int(1), Reply::Int(1)], "first, last, step");

    // Unknown names give a null in their slot; names are case-insensitive.
    let infos = array(cmd(&mut c, &["COMMAND", "INFO", "get", "nosuchcommand"]));
    assert_eq!(infos.len(), 2);
    assert_eq!(array(infos[0].clone())[0], bulk(b"get"));
    // Redis answers a null bulk string ($-1) for an unknown name.
    assert_eq!(infos[1], Reply::Bulk(None));

    // COMMAND DOCS: a map from command name to a map of doc fields (flat arrays in RESP2).
    let docs = pairs(array(cmd(&mut c, &["COMMAND", "DOCS", "GET"])));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].0, "get");
    let fields = pairs(array(docs[0].1.clone()));
    let summary = fields.iter().find(|(k, _)| k == "summary").expect("summary field");
    // Redis: "Get the value of a key".
    assert!(!bulk_str(&summary.1).is_empty());
    assert_eq!(array(cmd(&mut c, &["COMMAND", "DOCS", "nosuchcommand"])), vec![]);

    assert_eq!(cmd(&mut c, &["COMMAND", "FOO"]), err("ERR unknown subcommand 'FOO'. Try COMMAND HELP."));
    assert_eq!(
        cmd(&mut c, &["COMMAND", "COUNT", "x"]),
        err("ERR wrong number of arguments for 'command|count' command")
    );
}

// ---------------------------------------------------------------------------------------------
// INFO, DBSIZE, FLUSHDB, FLUSHALL
// ---------------------------------------------------------------------------------------------

#[test]
fn info_has_the_standard_sections() {
    let server = Server::start();
    let mut c = server.raw();
    let text = info(&mut c, &[]);
    for section in ["# Server\r\n", "# Clients\r\n", "# Memory\r\n", "# Stats\r\n", "# Keyspace\r\n"] {
        assert!(text.contains(section), "missing {section:?} in {text}");
    }
    // Lines end in CRLF; sections are separated by an empty line.
    assert!(!text.replace("\r\n", "").contains('\n'), "bare LF in INFO");
    assert!(text.contains("\r\n\r\n# Clients\r\n"), "{text}");
    assert!(text.contains("connected_clients:"), "{text}");

    // One section only, case-insensitively.
    for name in ["keyspace", "KEYSPACE"] {
        let ks = info(&mut c, &[name]);
        assert!(ks.starts_with("# Keyspace\r\n"), "{ks:?}");
        assert!(!ks.contains("# Server") && !ks.contains("# Clients"), "{ks}");
    }
    let two = info(&mut c, &["server", "clients"]);
    assert!(two.starts_with("# Server\r\n") && two.contains("# Clients\r\n"), "{two}");
    assert!(!two.contains("# Keyspace"), "{two}");
    // An unknown section gives an empty string, not an error.
    assert_eq!(cmd(&mut c, &["INFO", "nosuchsection"]), bulk(b""));
}

fn keyspace_line(c: &mut Raw) -> Option<String> {
    let ks = info(c, &["keyspace"]);
    ks.lines().find(|l| l.starts_with("db0:")).map(|l| l.to_string())
}

/// `db0:keys=N,expires=M` followed by nothing or by more `,field=value` (Redis adds avg_ttl).
fn assert_keyspace(c: &mut Raw, keys: usize, expires: usize) {
    let line = keyspace_line(c).expect("db0 line");
    let want = format!("db0:keys={keys},expires={expires}");
    assert!(line == want || line.starts_with(&format!("{want},")), "got {line:?}, want {want:?}");
}

#[test]
fn info_keyspace_counts_keys_and_expires_across_shards() {
    let server = Server::start_sharded();
    let mut c = server.raw();
    // An empty database has no db0 line at all: the section is just its header.
    assert_eq!(keyspace_line(&mut c), None);
    assert_eq!(info(&mut c, &["keyspace"]), "# Keyspace\r\n");
    for i in 0..100 {
        let k = format!("ks:{i}");
        if i % 10 == 0 {
            assert_eq!(cmd(&mut c, &["SET", &k, "v", "EX", "1000"]), simple("OK"));
        } else {
            assert_eq!(cmd(&mut c, &["SET", &k, "v"]), simple("OK"));
        }
    }
    assert_keyspace(&mut c, 100, 10);
    assert_eq!(cmd(&mut c, &["DEL", "ks:0", "ks:1"]), Reply::Int(2));
    assert_keyspace(&mut c, 98, 9);
}

#[test]
fn dbsize_flushdb_and_flushall_across_shards() {
    let server = Server::start_sharded();
    let mut c = server.raw();
    assert_eq!(cmd(&mut c, &["DBSIZE"]), Reply::Int(0));
    for i in 0..100 {
        assert_eq!(cmd(&mut c, &["SET", &format!("db:{i}"), "v"]), simple("OK"));
    }
    assert_eq!(cmd(&mut c, &["DBSIZE"]), Reply::Int(100));
    assert_eq!(cmd(&mut c, &["FLUSHDB"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["DBSIZE"]), Reply::Int(0));
    assert_eq!(cmd(&mut c, &["GET", "db:7"]), Reply::Bulk(None));

    for i in 0..50 {
        assert_eq!(cmd(&mut c, &["SET", &format!("db:{i}"), "v"]), simple("OK"));
    }
    // Another connection sees the same count.
    let mut other = server.raw();
    assert_eq!(cmd(&mut other, &["DBSIZE"]), Reply::Int(50));
    assert_eq!(cmd(&mut c, &["FLUSHALL"]), simple("OK"));
    assert_eq!(cmd(&mut other, &["DBSIZE"]), Reply::Int(0));

    assert_eq!(cmd(&mut c, &["SET", "db:x", "v"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["FLUSHDB", "ASYNC"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["DBSIZE"]), Reply::Int(0));
    assert_eq!(cmd(&mut c, &["FLUSHDB", "SYNC"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["FLUSHALL", "sync"]), simple("OK"));
    assert_eq!(cmd(&mut c, &["FLUSHDB", "x"]), err("ERR syntax error"));
    assert_eq!(cmd(&mut c, &["FLUSHALL", "x"]), err("ERR syntax error"));
    assert_eq!(cmd(&mut c, &["DBSIZE", "x"]), err("ERR wrong number of arguments for 'dbsize' command"));
}

// ---------------------------------------------------------------------------------------------
// TIME, CONFIG
// ---------------------------------------------------------------------------------------------

#[test]
fn time_returns_seconds_and_microseconds_as_bulk_strings() {
    let server = Server::start();
    let mut c = server.raw();
    let items = array(cmd(&mut c, &["TIME"]));
    assert_eq!(items.len(), 2);
    // Both are bulk strings holding integers, not RESP integers.
    let secs: u64 = bulk_str(&items[0]).parse().expect("seconds");
    let micros: u64 = bulk_str(&items[1]).parse().expect("microseconds");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(secs.abs_diff(now) <= 5, "TIME {secs}, now {now}");
    assert!(micros < 1_000_000);
    assert_eq!(cmd(&mut c, &["TIME", "x"]), err("ERR wrong number of arguments for 'time' command"));
}

#[test]
fn config_get_supports_exact_names_globs_and_unknown_names() {
    let server = Server::start();
    let mut c = server.raw();
    let got = pairs(array(cmd(&mut c, &["CONFIG", "GET", "maxclients"])));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "maxclients");
    let max: u64 = bulk_str(&got[0].1).parse().expect("integer maxclients");
    if external().is_none() {
        assert_eq!(max, 10000, "default --maxclients");
    }
    // Names are case-insensitive (Redis echoes the name as asked for).
    let got = pairs(array(cmd(&mut c, &["CONFIG", "GET", "MAXCLIENTS"])));
    assert_eq!(got.len(), 1);
    assert!(got[0].0.eq_ignore_ascii_case("maxclients"));

    let glob = pairs(array(cmd(&mut c, &["CONFIG", "GET", "max*"])));
    assert!(glob.iter().all(|(k, _)| k.starts_with("max")), "{glob:?}");
    let (_, v) = glob.iter().find(|(k, _)| k == "maxclients").expect("maxclients in max*");
    assert_eq!(bulk_str(v), max.to_string());

    assert_eq!(cmd(&mut c, &["CONFIG", "GET", "nosuchparameter"]), Reply::Array(Some(vec![])));
    assert_eq!(cmd(&mut c, &["CONFIG", "GET"]), err("ERR wrong number of arguments for 'config|get' command"));
    assert_eq!(cmd(&mut c, &["CONFIG"]), err("ERR wrong number of arguments for 'config' command"));
    assert_eq!(cmd(&mut c, &["CONFIG", "FOO"]), err("ERR unknown subcommand 'FOO'. Try CONFIG HELP."));
}

#[test]
fn config_set_maxclients_is_visible_to_config_get() {
    let server = Server::start();
    let mut c = server.raw();
    let original = bulk_str(&pairs(array(cmd(&mut c, &["CONFIG", "GET", "maxclients"])))[0].1);

    assert_eq!(cmd(&mut c, &["CONFIG", "SET", "maxclients", "500"]), simple("OK"));
    let got = pairs(array(cmd(&mut c, &["CONFIG", "GET", "maxclients"])));
    assert_eq!(got[0].1, bulk(b"500"));
    // Visible from every connection, whichever shard serves it.
    let mut other = server.raw();
    assert_eq!(pairs(array(cmd(&mut other, &["CONFIG", "GET", "maxclients"])))[0].1, bulk(b"500"));

    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "maxclients", "abc"]),
        err("ERR CONFIG SET failed (possibly related to argument 'maxclients') - argument couldn't be parsed into an integer")
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "nosuchparameter", "1"]),
        err("ERR Unknown option or number of arguments for CONFIG SET - 'nosuchparameter'")
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "maxclients"]),
        err("ERR wrong number of arguments for 'config|set' command")
    );
    assert_eq!(pairs(array(cmd(&mut c, &["CONFIG", "GET", "maxclients"])))[0].1, bulk(b"500"));

    assert_eq!(cmd(&mut c, &["CONFIG", "SET", "maxclients", &original]), simple("OK"));
    assert_eq!(pairs(array(cmd(&mut c, &["CONFIG", "GET", "maxclients"])))[0].1, bulk(original.as_bytes()));
}

#[test]
fn config_set_memory_limits_are_bounded_like_redis() {
    let server = Server::start();
    let mut c = server.raw();
    let failed = |name: &str, why: &str| {
        err(&format!("ERR CONFIG SET failed (possibly related to argument '{name}') - argument {why}"))
    };
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "5"]),
        failed("proto-max-bulk-len", "must be between 1048576 and 536870912 inclusive")
    );
    // Redis accepts up to 2^63-1; our bound is the largest value the log can hold.
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "1gb"]),
        failed("proto-max-bulk-len", "must be between 1048576 and 536870912 inclusive")
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "abc"]),
        failed("proto-max-bulk-len", "must be a memory value")
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "-5"]),
        failed("proto-max-bulk-len", "must be a memory value")
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "client-query-buffer-limit", "5"]),
        failed("client-query-buffer-limit", "must be between 1048576 and 9223372036854775807 inclusive")
    );
    assert_eq!(
        cmd(&mut c, &["CONFIG", "SET", "maxclients", "0"]),
        failed("maxclients", "must be between 1 and 4294967295 inclusive")
    );
    // Nothing changed by the refused calls; a value in range is taken.
    let get = |c: &mut _, name: &str| bulk_str(&pairs(array(cmd(c, &["CONFIG", "GET", name])))[0].1);
    assert_eq!(get(&mut c, "proto-max-bulk-len"), "536870912");
    assert_eq!(cmd(&mut c, &["CONFIG", "SET", "proto-max-bulk-len", "2mb"]), simple("OK"));
    assert_eq!(get(&mut c, "proto-max-bulk-len"), "2097152");
}

// ---------------------------------------------------------------------------------------------
// Generic errors
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_command_error_quotes_name_and_first_arguments() {
    let server = Server::start();
    let mut w = Wire::connect(server.addr);
    // Note the trailing space after each quoted argument, and after "with:" when there are none.
    assert_eq!(w.call(&[b"foo", b"a", b"b"]), b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n");
    assert_eq!(w.call(&[b"FOO"]), b"-ERR unknown command 'FOO', with args beginning with: \r\n");
    assert_eq!(
        w.call(&[b"FOO", b"a", b"b", b"c", b"d"]),
        b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' 'c' 'd' \r\n"
    );
    // The argument list is cut once it reaches 128 bytes: each argument is printed with at most
    // 128 - (length so far) bytes, and no more arguments follow.
    let a200 = "a".repeat(200);
    let want = format!("-ERR unknown command 'FOO', with args beginning with: '{}' \r\n", "a".repeat(128));
    assert_eq!(w.call(&[b"FOO", a200.as_bytes(), b"more"]), want.as_bytes());
    let (a100, b100) = ("a".repeat(100), "b".repeat(100));
    let want = format!(
        "-ERR unknown command 'FOO', with args beginning with: '{}' '{}' \r\n",
        "a".repeat(100),
        "b".repeat(25)
    );
    assert_eq!(w.call(&[b"FOO", a100.as_bytes(), b100.as_bytes(), b"c"]), want.as_bytes());
    // The command name is cut at 128 bytes.
    let long_name = "n".repeat(300);
    let want = format!("-ERR unknown command '{}', with args beginning with: \r\n", "n".repeat(128));
    assert_eq!(w.call(&[long_name.as_bytes()]), want.as_bytes());
    // CR and LF inside the name or arguments become spaces, so the error stays one line.
    assert_eq!(
        w.call(&[b"FOO\nBAR", b"x\r\ny"]),
        b"-ERR unknown command 'FOO BAR', with args beginning with: 'x  y' \r\n"
    );
    assert_eq!(w.call(&[b""]), b"-ERR unknown command '', with args beginning with: \r\n");
    // The connection stays usable.
    assert_eq!(w.call(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn wrong_arity_errors_name_the_command_in_lowercase() {
    let server = Server::start();
    let mut c = server.raw();
    for (args, name) in [
        (&["GET"][..], "get"),
        (&["gEt"][..], "get"),
        (&["SET", "a"][..], "set"),
        (&["PING", "a", "b", "c"][..], "ping"),
        (&["ECHO"][..], "echo"),
        (&["INCR"][..], "incr"),
        (&["DBSIZE", "x"][..], "dbsize"),
        (&["SELECT"][..], "select"),
    ] {
        assert_eq!(cmd(&mut c, args), err(&format!("ERR wrong number of arguments for '{name}' command")), "{args:?}");
    }
}
