//! String commands: replies and error strings exactly as Redis 7 gives them.
//!
//! Every expectation here was checked against redis-server 7.0.15:
//! `RINGCACHE_TEST_EXTERNAL=127.0.0.1:7777 cargo test --test strings -- --test-threads=1`.
//! Most tests talk raw RESP so that the reply *type* is checked too (`+OK` versus a bulk
//! string, a nil bulk versus an empty one).

mod common;
use common::*;

use std::ops::RangeInclusive;

// ---------------------------------------------------------------------------------------------
// Helpers (local to this file: tests/common is shared and owned by someone else).

fn q(c: &mut Raw, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.cmd(&resp(&args))
}

fn qb(c: &mut Raw, args: &[&[u8]]) -> Reply {
    c.cmd(&resp(args))
}

/// Sends `args` and asserts the reply, naming the command on failure.
#[track_caller]
fn check(c: &mut Raw, args: &[&str], want: Reply) {
    let got = q(c, args);
    assert_eq!(got, want, "reply to {args:?}");
}

#[track_caller]
fn check_int_in(c: &mut Raw, args: &[&str], range: RangeInclusive<i64>) {
    match q(c, args) {
        Reply::Int(n) => assert!(range.contains(&n), "reply to {args:?}: {n} not in {range:?}"),
        other => panic!("reply to {args:?}: expected an integer, got {other:?}"),
    }
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn nil() -> Reply {
    Reply::Bulk(None)
}

fn bulk(s: impl AsRef<[u8]>) -> Reply {
    Reply::Bulk(Some(s.as_ref().to_vec()))
}

fn int(n: i64) -> Reply {
    Reply::Int(n)
}

fn err(s: &str) -> Reply {
    Reply::Error(s.into())
}

fn arr(items: Vec<Reply>) -> Reply {
    Reply::Array(Some(items))
}

fn syntax() -> Reply {
    err("ERR syntax error")
}

fn not_int() -> Reply {
    err("ERR value is not an integer or out of range")
}

fn not_float() -> Reply {
    err("ERR value is not a valid float")
}

fn invalid_expire(cmd: &str) -> Reply {
    err(&format!("ERR invalid expire time in '{cmd}' command"))
}

fn arity(cmd: &str) -> Reply {
    err(&format!("ERR wrong number of arguments for '{cmd}' command"))
}

/// A value of `len` bytes that contains every byte value, including `\0`, `\r` and `\n`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// GET / SET basics

#[test]
fn get_of_missing_key_is_nil() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["GET", "nope"], nil());
}

#[test]
fn set_replies_ok_and_get_returns_the_value() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "hello"], ok());
    check(&mut c, &["GET", "k"], bulk("hello"));
    check(&mut c, &["SET", "k", "world"], ok());
    check(&mut c, &["GET", "k"], bulk("world"));
}

#[test]
fn commands_are_case_insensitive() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["sEt", "k", "v", "ex", "100", "nX"], ok());
    check(&mut c, &["gEt", "k"], bulk("v"));
    check(&mut c, &["set", "k", "w", "Xx", "Get"], bulk("v"));
    check(&mut c, &["GET", "k"], bulk("w"));
    // Keys are case sensitive.
    check(&mut c, &["GET", "K"], nil());
}

#[test]
fn empty_string_value_is_stored_and_differs_from_missing() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "e", ""], ok());
    check(&mut c, &["GET", "e"], bulk(""));
    check(&mut c, &["STRLEN", "e"], int(0));
    check(&mut c, &["EXISTS", "e"], int(1));
    check(&mut c, &["APPEND", "e", ""], int(0));
    check(&mut c, &["EXISTS", "e"], int(1));
    // The empty key name is a valid key too.
    check(&mut c, &["SET", "", "empty-name"], ok());
    check(&mut c, &["GET", ""], bulk("empty-name"));
}

#[test]
fn values_and_keys_are_binary_safe() {
    let s = Server::start();
    let mut c = s.raw();
    let key: &[u8] = b"k\0ey\r\n*1\r\n";
    let value: &[u8] = b"\0\r\n$3\r\nfoo\r\n\xff\xfe\0";
    assert_eq!(qb(&mut c, &[b"SET", key, value]), ok());
    assert_eq!(qb(&mut c, &[b"GET", key]), bulk(value));
    assert_eq!(qb(&mut c, &[b"STRLEN", key]), int(value.len() as i64));
    // A key differing only after the NUL byte is a different key.
    assert_eq!(qb(&mut c, &[b"GET", b"k\0ex\r\n*1\r\n"]), nil());
    assert_eq!(qb(&mut c, &[b"GET", b"k"]), nil());
    assert_eq!(qb(&mut c, &[b"APPEND", key, b"\0\0"]), int(value.len() as i64 + 2));
    let mut want = value.to_vec();
    want.extend_from_slice(b"\0\0");
    assert_eq!(qb(&mut c, &[b"GET", key]), bulk(&want));
    assert_eq!(qb(&mut c, &[b"GETRANGE", key, b"0", b"2"]), bulk(b"\0\r\n"));
    assert_eq!(qb(&mut c, &[b"SETRANGE", key, b"1", b"\0"]), int(want.len() as i64));
    assert_eq!(qb(&mut c, &[b"GETRANGE", key, b"0", b"2"]), bulk(b"\0\0\n"));
    assert_eq!(qb(&mut c, &[b"GETDEL", key]), bulk(b"\0\0\n$3\r\nfoo\r\n\xff\xfe\0\0\0"));
    assert_eq!(qb(&mut c, &[b"EXISTS", key]), int(0));
}

#[test]
fn large_values_of_1_mib_and_10_mib_round_trip() {
    let s = Server::start();
    let mut c = s.raw();
    for (key, len, seed) in [("one", 1usize << 20, 1), ("ten", 10 << 20, 2)] {
        let v = pattern(len, seed);
        assert_eq!(qb(&mut c, &[b"SET", key.as_bytes(), &v]), ok());
        assert_eq!(qb(&mut c, &[b"STRLEN", key.as_bytes()]), int(len as i64));
        let got = qb(&mut c, &[b"GET", key.as_bytes()]);
        assert!(got == bulk(&v), "{key}: large value differs after round trip");
        let tail = qb(&mut c, &[b"GETRANGE", key.as_bytes(), b"-5", b"-1"]);
        assert_eq!(tail, bulk(&v[len - 5..]));
    }
    // Appending to a large value.
    let extra = pattern(1 << 20, 7);
    assert_eq!(qb(&mut c, &[b"APPEND", b"ten", &extra]), int((11 << 20) as i64));
    let mut want = pattern(10 << 20, 2);
    want.extend_from_slice(&extra);
    assert!(qb(&mut c, &[b"GET", b"ten"]) == bulk(&want), "appended large value differs");
    // Several large values in one MGET reply.
    let got = qb(&mut c, &[b"MGET", b"one", b"missing", b"ten"]);
    assert!(got == arr(vec![bulk(pattern(1 << 20, 1)), nil(), bulk(&want)]), "MGET of large values differs");
}

// ---------------------------------------------------------------------------------------------
// SET options

#[test]
fn set_with_ex_sets_a_ttl_in_seconds() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check_int_in(&mut c, &["PTTL", "k"], 99_000..=100_000);
    check(&mut c, &["GET", "k"], bulk("v"));
}

#[test]
fn set_with_px_sets_a_ttl_in_milliseconds() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "PX", "50000"], ok());
    check_int_in(&mut c, &["PTTL", "k"], 49_000..=50_000);
    check_int_in(&mut c, &["TTL", "k"], 49..=50);
}

#[test]
fn set_with_exat_and_pxat_sets_an_absolute_expiry() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "a", "v", "EXAT", "4000000000"], ok());
    check(&mut c, &["EXPIRETIME", "a"], int(4_000_000_000));
    check(&mut c, &["PEXPIRETIME", "a"], int(4_000_000_000_000));
    check(&mut c, &["SET", "b", "v", "PXAT", "4000000000123"], ok());
    check(&mut c, &["PEXPIRETIME", "b"], int(4_000_000_000_123));
    check(&mut c, &["GET", "b"], bulk("v"));
}

#[test]
fn set_with_expiry_in_the_past_deletes_the_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "old"], ok());
    // Redis replies OK and the key is gone at once.
    check(&mut c, &["SET", "k", "new", "EXAT", "1"], ok());
    check(&mut c, &["EXISTS", "k"], int(0));
    check(&mut c, &["GET", "k"], nil());
    check(&mut c, &["SET", "k", "old"], ok());
    check(&mut c, &["SET", "k", "new", "PXAT", "1", "GET"], bulk("old"));
    check(&mut c, &["EXISTS", "k"], int(0));
}

#[test]
fn set_with_nx_does_not_overwrite_an_existing_key() {
    let s = Server::start();
    let mut c = s.raw();
    // NX on a missing key sets it and replies OK.
    check(&mut c, &["SET", "k", "first", "NX"], ok());
    // NX on an existing key replies nil (not an error, not 0).
    check(&mut c, &["SET", "k", "second", "NX"], nil());
    check(&mut c, &["GET", "k"], bulk("first"));
    // A refused SET NX ... EX must not touch the TTL either.
    check(&mut c, &["SET", "k", "third", "NX", "EX", "100"], nil());
    check(&mut c, &["TTL", "k"], int(-1));
}

#[test]
fn set_with_xx_only_overwrites_an_existing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "XX"], nil());
    check(&mut c, &["EXISTS", "k"], int(0));
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["SET", "k", "w", "XX"], ok());
    check(&mut c, &["GET", "k"], bulk("w"));
}

#[test]
fn set_with_get_returns_the_previous_value() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v1", "GET"], nil());
    check(&mut c, &["GET", "k"], bulk("v1"));
    check(&mut c, &["SET", "k", "v2", "GET"], bulk("v1"));
    check(&mut c, &["GET", "k"], bulk("v2"));
    check(&mut c, &["SET", "k", "v3", "EX", "100", "GET"], bulk("v2"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn set_with_get_and_nx_or_xx_is_allowed_since_redis_7() {
    let s = Server::start();
    let mut c = s.raw();
    // NX GET on a missing key: replies nil (the old value) and sets.
    check(&mut c, &["SET", "k", "v1", "NX", "GET"], nil());
    check(&mut c, &["GET", "k"], bulk("v1"));
    // NX GET on an existing key: replies the old value and does not set.
    check(&mut c, &["SET", "k", "v2", "NX", "GET"], bulk("v1"));
    check(&mut c, &["GET", "k"], bulk("v1"));
    // XX GET: replies the old value and sets.
    check(&mut c, &["SET", "k", "v3", "GET", "XX"], bulk("v1"));
    check(&mut c, &["GET", "k"], bulk("v3"));
    // XX GET on a missing key: nil, nothing created.
    check(&mut c, &["SET", "m", "v", "XX", "GET"], nil());
    check(&mut c, &["EXISTS", "m"], int(0));
}

#[test]
fn set_without_keepttl_clears_the_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["SET", "k", "w"], ok());
    check(&mut c, &["TTL", "k"], int(-1));
    check(&mut c, &["SET", "k", "v", "PX", "100000"], ok());
    check(&mut c, &["SET", "k", "w", "XX"], ok());
    check(&mut c, &["TTL", "k"], int(-1));
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["SET", "k", "w", "GET"], bulk("v"));
    check(&mut c, &["TTL", "k"], int(-1));
}

#[test]
fn set_with_keepttl_keeps_the_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["SET", "k", "w", "KEEPTTL"], ok());
    check(&mut c, &["GET", "k"], bulk("w"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["SET", "k", "x", "KEEPTTL", "GET"], bulk("w"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    // KEEPTTL on a key without TTL (or a missing key) leaves it persistent.
    check(&mut c, &["SET", "p", "v", "KEEPTTL"], ok());
    check(&mut c, &["TTL", "p"], int(-1));
}

#[test]
fn set_with_conflicting_or_unknown_options_is_a_syntax_error() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "orig", "EX", "100"], ok());
    let cases: &[&[&str]] = &[
        &["NX", "XX"],
        &["XX", "NX"],
        &["EX", "10", "PX", "100"],
        &["PX", "100", "EX", "10"],
        &["EX", "10", "EXAT", "4000000000"],
        &["PX", "100", "PXAT", "4000000000000"],
        &["EXAT", "4000000000", "PXAT", "4000000000000"],
        &["EX", "10", "KEEPTTL"],
        &["KEEPTTL", "PX", "100"],
        &["KEEPTTL", "EXAT", "4000000000"],
        &["NX", "GET", "XX"],
        &["EX"],
        &["PX"],
        &["EXAT"],
        &["PXAT"],
        &["FOO"],
        &["PERSIST"],
        &["GET", "FOO"],
        // Option parsing comes first: a bad number in a conflicting line is still a syntax error.
        &["EX", "abc", "NX", "XX"],
        &["EX", "0", "NX", "XX"],
        &["FOO", "EX", "0"],
    ];
    for opts in cases {
        let mut args = vec!["SET", "k", "new"];
        args.extend_from_slice(opts);
        check(&mut c, &args, syntax());
    }
    // None of them touched the key.
    check(&mut c, &["GET", "k"], bulk("orig"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn set_with_a_repeated_option_is_accepted_and_the_last_wins() {
    // Redis quirk: the same flag twice is not a conflict (only different ones are).
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "10", "EX", "100"], ok());
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["SET", "k", "w", "KEEPTTL", "KEEPTTL"], ok());
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["SET", "k", "x", "GET", "GET"], bulk("w"));
    check(&mut c, &["TTL", "k"], int(-1));
    check(&mut c, &["SET", "k", "y", "NX", "NX"], nil());
    check(&mut c, &["SET", "k", "z", "XX", "XX"], ok());
    check(&mut c, &["GET", "k"], bulk("z"));
}

#[test]
fn set_with_invalid_expire_times_is_rejected_with_redis_messages() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "orig"], ok());
    // Zero, negative, or overflowing (when converted to absolute milliseconds) times.
    for opts in [
        ["EX", "0"],
        ["EX", "-1"],
        ["PX", "0"],
        ["PX", "-5"],
        ["EXAT", "0"],
        ["EXAT", "-1"],
        ["PXAT", "0"],
        ["PXAT", "-1"],
        ["EX", "9223372036854775807"],
        ["PX", "9223372036854775807"],
        ["EX", "-9223372036854775808"],
    ] {
        check(&mut c, &["SET", "k", "new", opts[0], opts[1]], invalid_expire("set"));
    }
    // Not a (strict, canonical) 64-bit integer.
    for bad in ["abc", "1.5", "1.0", "", " 10", "10 ", "+10", "010", "0x10", "9223372036854775808"] {
        check(&mut c, &["SET", "k", "new", "PX", bad], not_int());
        check(&mut c, &["SET", "k", "new", "EX", bad], not_int());
    }
    check(&mut c, &["GET", "k"], bulk("orig"));
    check(&mut c, &["TTL", "k"], int(-1));
}

// ---------------------------------------------------------------------------------------------
// SETNX, SETEX, PSETEX, GETSET, GETDEL

#[test]
fn setnx_sets_only_a_missing_key_and_replies_an_integer() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SETNX", "k", "first"], int(1));
    check(&mut c, &["SETNX", "k", "second"], int(0));
    check(&mut c, &["GET", "k"], bulk("first"));
}

#[test]
fn setex_and_psetex_set_value_and_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SETEX", "a", "100", "v"], ok());
    check(&mut c, &["GET", "a"], bulk("v"));
    check_int_in(&mut c, &["TTL", "a"], 99..=100);
    check(&mut c, &["PSETEX", "b", "100000", "w"], ok());
    check(&mut c, &["GET", "b"], bulk("w"));
    check_int_in(&mut c, &["PTTL", "b"], 99_000..=100_000);
    // Overwrites value and TTL of an existing key.
    check(&mut c, &["SETEX", "b", "5000", "x"], ok());
    check(&mut c, &["GET", "b"], bulk("x"));
    check_int_in(&mut c, &["TTL", "b"], 4999..=5000);
}

#[test]
fn setex_and_psetex_reject_invalid_times() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "orig"], ok());
    for t in ["0", "-5", "9223372036854775807"] {
        check(&mut c, &["SETEX", "k", t, "v"], invalid_expire("setex"));
    }
    for t in ["0", "-1", "9223372036854775807"] {
        check(&mut c, &["PSETEX", "k", t, "v"], invalid_expire("psetex"));
    }
    check(&mut c, &["SETEX", "k", "abc", "v"], not_int());
    check(&mut c, &["PSETEX", "k", "1.5", "v"], not_int());
    check(&mut c, &["GET", "k"], bulk("orig"));
    check(&mut c, &["TTL", "k"], int(-1));
}

#[test]
fn getset_returns_the_old_value_and_clears_the_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["GETSET", "k", "v1"], nil());
    check(&mut c, &["GET", "k"], bulk("v1"));
    check(&mut c, &["EXPIRE", "k", "100"], int(1));
    check(&mut c, &["GETSET", "k", "v2"], bulk("v1"));
    check(&mut c, &["GET", "k"], bulk("v2"));
    check(&mut c, &["TTL", "k"], int(-1));
}

#[test]
fn getdel_returns_the_value_and_deletes_the_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["GETDEL", "k"], nil());
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["GETDEL", "k"], bulk("v"));
    check(&mut c, &["EXISTS", "k"], int(0));
    check(&mut c, &["TTL", "k"], int(-2));
    check(&mut c, &["GETDEL", "k"], nil());
}

// ---------------------------------------------------------------------------------------------
// GETEX

#[test]
fn getex_without_options_returns_the_value_and_keeps_the_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["GETEX", "k"], nil());
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["GETEX", "k"], bulk("v"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn getex_sets_relative_and_absolute_expiry() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["GETEX", "k", "EX", "100"], bulk("v"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["GETEX", "k", "PX", "5000"], bulk("v"));
    check_int_in(&mut c, &["PTTL", "k"], 4000..=5000);
    check(&mut c, &["GETEX", "k", "EXAT", "4000000000"], bulk("v"));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_000));
    check(&mut c, &["GETEX", "k", "PXAT", "4000000000123"], bulk("v"));
    check(&mut c, &["PEXPIRETIME", "k"], int(4_000_000_000_123));
    check(&mut c, &["GETEX", "k", "PERSIST"], bulk("v"));
    check(&mut c, &["TTL", "k"], int(-1));
    // Repeating the same option is accepted (last wins), like SET.
    check(&mut c, &["GETEX", "k", "EX", "10", "EX", "100"], bulk("v"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["GETEX", "k", "PERSIST", "PERSIST"], bulk("v"));
    check(&mut c, &["TTL", "k"], int(-1));
}

#[test]
fn getex_with_a_past_absolute_time_returns_the_value_and_deletes_the_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["GETEX", "k", "EXAT", "1"], bulk("v"));
    check(&mut c, &["EXISTS", "k"], int(0));
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["GETEX", "k", "PXAT", "1"], bulk("v"));
    check(&mut c, &["EXISTS", "k"], int(0));
}

#[test]
fn getex_rejects_bad_options_with_redis_messages() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    for opts in [
        &["PERSIST", "EX", "10"][..],
        &["EX", "10", "PERSIST"],
        &["EX", "10", "PX", "20000"],
        &["EXAT", "4000000000", "PXAT", "4000000000000"],
        &["FOO"],
        &["EX"],
        &["KEEPTTL"],
        &["NX"],
        &["EX", "abc", "PERSIST"],
    ] {
        let mut args = vec!["GETEX", "k"];
        args.extend_from_slice(opts);
        check(&mut c, &args, syntax());
    }
    for opts in [["EX", "0"], ["EX", "-1"], ["PX", "-1"], ["EXAT", "0"], ["PXAT", "-1"], ["EX", "9223372036854775807"]]
    {
        check(&mut c, &["GETEX", "k", opts[0], opts[1]], invalid_expire("getex"));
    }
    check(&mut c, &["GETEX", "k", "EXAT", "abc"], not_int());
    check(&mut c, &["GETEX", "k", "PX", "1.5"], not_int());
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn getex_on_a_missing_key_is_nil_before_the_time_is_validated() {
    // Redis quirk: GETEX checks option syntax, then looks the key up, and only validates the
    // number when the key exists. A missing key therefore gives nil even for `EX 0`.
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["GETEX", "nokey", "EX", "0"], nil());
    check(&mut c, &["GETEX", "nokey", "PX", "abc"], nil());
    check(&mut c, &["GETEX", "nokey", "PERSIST"], nil());
    check(&mut c, &["GETEX", "nokey", "FOO"], syntax());
    check(&mut c, &["EXISTS", "nokey"], int(0));
}

// ---------------------------------------------------------------------------------------------
// MGET / MSET / MSETNX (also across shards)

fn mget_returns_values_in_order_with_nil_for_missing(s: &Server) {
    let mut c = s.raw();
    check(&mut c, &["MSET", "a", "1", "b", "2", "c", ""], ok());
    check(
        &mut c,
        &["MGET", "a", "missing", "b", "a", "c"],
        arr(vec![bulk("1"), nil(), bulk("2"), bulk("1"), bulk("")]),
    );
    check(&mut c, &["MGET", "missing"], arr(vec![nil()]));
}

#[test]
fn mget_returns_values_in_order_with_nil_for_missing_one_shard() {
    mget_returns_values_in_order_with_nil_for_missing(&Server::start());
}

#[test]
fn mget_returns_values_in_order_with_nil_for_missing_sharded() {
    mget_returns_values_in_order_with_nil_for_missing(&Server::start_sharded());
}

fn mset_sets_every_pair_and_clears_ttls(s: &Server) {
    let mut c = s.raw();
    check(&mut c, &["SET", "a", "old", "EX", "100"], ok());
    check(&mut c, &["MSET", "a", "1", "b", "2"], ok());
    check(&mut c, &["MGET", "a", "b"], arr(vec![bulk("1"), bulk("2")]));
    check(&mut c, &["TTL", "a"], int(-1));
    // A repeated key: the last value wins.
    check(&mut c, &["MSET", "d", "first", "d", "last"], ok());
    check(&mut c, &["GET", "d"], bulk("last"));
}

#[test]
fn mset_sets_every_pair_and_clears_ttls_one_shard() {
    mset_sets_every_pair_and_clears_ttls(&Server::start());
}

#[test]
fn mset_sets_every_pair_and_clears_ttls_sharded() {
    mset_sets_every_pair_and_clears_ttls(&Server::start_sharded());
}

#[test]
fn mset_and_msetnx_with_an_odd_argument_count_are_arity_errors() {
    let s = Server::start();
    let mut c = s.raw();
    // Redis reports an unpaired key as a wrong number of arguments, and sets nothing.
    check(&mut c, &["MSET", "a", "1", "b"], arity("mset"));
    check(&mut c, &["MSET", "a"], arity("mset"));
    check(&mut c, &["MSETNX", "a", "1", "b"], arity("msetnx"));
    check(&mut c, &["MSETNX", "a"], arity("msetnx"));
    check(&mut c, &["EXISTS", "a", "b"], int(0));
}

fn msetnx_sets_all_or_nothing(s: &Server) {
    let mut c = s.raw();
    check(&mut c, &["MSETNX", "a", "1", "b", "2"], int(1));
    check(&mut c, &["MGET", "a", "b"], arr(vec![bulk("1"), bulk("2")]));
    // One existing key: nothing is set.
    check(&mut c, &["MSETNX", "c", "3", "a", "x", "d", "4"], int(0));
    check(&mut c, &["MGET", "a", "c", "d"], arr(vec![bulk("1"), nil(), nil()]));
    // A key repeated in one call: still all new, the last value wins.
    check(&mut c, &["MSETNX", "e", "first", "e", "last"], int(1));
    check(&mut c, &["GET", "e"], bulk("last"));
}

#[test]
fn msetnx_sets_all_or_nothing_one_shard() {
    msetnx_sets_all_or_nothing(&Server::start());
}

#[test]
fn msetnx_sets_all_or_nothing_sharded() {
    msetnx_sets_all_or_nothing(&Server::start_sharded());
}

fn keys_n(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

fn multi_key_commands_over_100_keys(s: &Server) {
    let mut c = s.raw();
    let keys = keys_n("many", 100);
    let vals: Vec<String> = (0..100).map(|i| format!("value-{i}")).collect();
    let mut mset = vec!["MSET"];
    for (k, v) in keys.iter().zip(&vals) {
        mset.push(k);
        mset.push(v);
    }
    check(&mut c, &mset, ok());
    check(&mut c, &["DBSIZE"], int(100));

    // MGET of all of them, interleaved with missing keys, keeps the order.
    let mut mget = vec!["MGET"];
    let mut want = Vec::new();
    for (i, (k, v)) in keys.iter().zip(&vals).enumerate() {
        mget.push(k);
        want.push(bulk(v));
        if i % 10 == 0 {
            mget.push("absent");
            want.push(nil());
        }
    }
    check(&mut c, &mget, arr(want));

    // MSETNX over 100 new keys, then over 100 keys of which only one exists.
    let fresh = keys_n("fresh", 100);
    let mut msetnx = vec!["MSETNX"];
    for k in &fresh {
        msetnx.push(k);
        msetnx.push("nx");
    }
    check(&mut c, &msetnx, int(1));
    let mut mget = vec!["MGET"];
    mget.extend(fresh.iter().map(|k| k.as_str()));
    check(&mut c, &mget, arr(vec![bulk("nx"); 100]));

    let other = keys_n("other", 100);
    let mut msetnx = vec!["MSETNX"];
    for k in &other {
        msetnx.push(k);
        msetnx.push("x");
    }
    msetnx.push("many:57");
    msetnx.push("x");
    check(&mut c, &msetnx, int(0));
    let mut exists = vec!["EXISTS"];
    exists.extend(other.iter().map(|k| k.as_str()));
    check(&mut c, &exists, int(0));
    check(&mut c, &["GET", "many:57"], bulk("value-57"));
    check(&mut c, &["DBSIZE"], int(200));
}

#[test]
fn multi_key_commands_over_100_keys_one_shard() {
    multi_key_commands_over_100_keys(&Server::start());
}

#[test]
fn multi_key_commands_over_100_keys_sharded() {
    multi_key_commands_over_100_keys(&Server::start_sharded());
}

// ---------------------------------------------------------------------------------------------
// APPEND, STRLEN

#[test]
fn append_creates_or_extends_and_replies_the_new_length() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["APPEND", "k", "Hello"], int(5));
    check(&mut c, &["GET", "k"], bulk("Hello"));
    check(&mut c, &["APPEND", "k", " World"], int(11));
    check(&mut c, &["GET", "k"], bulk("Hello World"));
    check(&mut c, &["APPEND", "k", ""], int(11));
}

#[test]
fn append_setrange_and_incr_keep_the_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["APPEND", "k", "x"], int(2));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["SETRANGE", "k", "0", "z"], int(2));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["SET", "n", "1", "EX", "100"], ok());
    check(&mut c, &["INCR", "n"], int(2));
    check(&mut c, &["INCRBY", "n", "5"], int(7));
    check(&mut c, &["DECR", "n"], int(6));
    check(&mut c, &["INCRBYFLOAT", "n", "1.5"], bulk("7.5"));
    check_int_in(&mut c, &["TTL", "n"], 99..=100);
}

#[test]
fn strlen_counts_bytes_and_is_zero_for_a_missing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["STRLEN", "nokey"], int(0));
    check(&mut c, &["SET", "k", "Hello World"], ok());
    check(&mut c, &["STRLEN", "k"], int(11));
    // Bytes, not characters: "é" is two bytes in UTF-8.
    check(&mut c, &["SET", "u", "\u{e9}t\u{e9}"], ok());
    check(&mut c, &["STRLEN", "u"], int(5));
    // An integer-looking value counts its decimal digits.
    check(&mut c, &["SET", "n", "-12345"], ok());
    check(&mut c, &["STRLEN", "n"], int(6));
    check(&mut c, &["INCR", "n"], int(-12344));
    check(&mut c, &["STRLEN", "n"], int(6));
}

// ---------------------------------------------------------------------------------------------
// GETRANGE, SETRANGE

#[test]
fn getrange_handles_positive_negative_and_out_of_range_indexes() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "s", "Hello World"], ok());
    for (start, end, want) in [
        ("0", "4", "Hello"),
        ("-5", "-1", "World"),
        ("0", "-1", "Hello World"),
        ("-100", "-1", "Hello World"),
        ("0", "100", "Hello World"),
        ("10", "10", "d"),
        ("-1", "-1", "d"),
        ("5", "2", ""),
        ("11", "20", ""),
        ("-1", "-5", ""),
        ("3", "-100", ""),
        ("0", "9223372036854775807", "Hello World"),
        ("-9223372036854775808", "-1", "Hello World"),
        // Redis 7.0 quirk: a negative end before the start of the string is clamped to 0, so
        // these return the first byte rather than an empty string.
        ("0", "-100", "H"),
        ("-100", "-100", "H"),
    ] {
        check(&mut c, &["GETRANGE", "s", start, end], bulk(want));
    }
}

#[test]
fn getrange_on_missing_or_empty_value_is_an_empty_string() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["GETRANGE", "nokey", "0", "-1"], bulk(""));
    check(&mut c, &["SET", "e", ""], ok());
    check(&mut c, &["GETRANGE", "e", "0", "-1"], bulk(""));
    check(&mut c, &["GETRANGE", "e", "-1", "-1"], bulk(""));
    check(&mut c, &["GETRANGE", "e", "0", "0"], bulk(""));
}

#[test]
fn getrange_works_on_integer_values_and_rejects_non_integer_indexes() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "n", "1234"], ok());
    check(&mut c, &["INCR", "n"], int(1235));
    check(&mut c, &["GETRANGE", "n", "1", "2"], bulk("23"));
    check(&mut c, &["GETRANGE", "n", "a", "1"], not_int());
    check(&mut c, &["GETRANGE", "n", "0", "1.5"], not_int());
}

#[test]
fn setrange_overwrites_and_pads_with_zero_bytes() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "Hello World"], ok());
    check(&mut c, &["SETRANGE", "k", "6", "Redis"], int(11));
    check(&mut c, &["GET", "k"], bulk("Hello Redis"));
    check(&mut c, &["SETRANGE", "k", "9", "xyz"], int(12));
    check(&mut c, &["GET", "k"], bulk("Hello Redxyz"));
    // Past the end: the gap is filled with NUL bytes.
    check(&mut c, &["SETRANGE", "k", "15", "!"], int(16));
    check(&mut c, &["GET", "k"], bulk(b"Hello Redxyz\0\0\0!"));
    // On a missing key the value is padded from offset 0.
    check(&mut c, &["SETRANGE", "new", "5", "xy"], int(7));
    check(&mut c, &["GET", "new"], bulk(b"\0\0\0\0\0xy"));
    check(&mut c, &["SETRANGE", "new0", "0", "abc"], int(3));
    check(&mut c, &["GET", "new0"], bulk("abc"));
}

#[test]
fn setrange_with_an_empty_value_does_not_create_or_grow_the_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SETRANGE", "nokey", "0", ""], int(0));
    check(&mut c, &["SETRANGE", "nokey", "10", ""], int(0));
    check(&mut c, &["EXISTS", "nokey"], int(0));
    check(&mut c, &["SET", "k", "abc"], ok());
    check(&mut c, &["SETRANGE", "k", "100", ""], int(3));
    check(&mut c, &["GET", "k"], bulk("abc"));
}

#[test]
fn setrange_rejects_negative_offsets_and_values_over_512_mib() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "abc"], ok());
    check(&mut c, &["SETRANGE", "k", "-1", "x"], err("ERR offset is out of range"));
    check(&mut c, &["SETRANGE", "k", "abc", "x"], not_int());
    let too_big = err("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
    // 536870911 + 2 bytes = 512 MiB + 1 byte: over the limit (checked before allocating).
    check(&mut c, &["SETRANGE", "k", "536870911", "xy"], too_big.clone());
    check(&mut c, &["SETRANGE", "k", "536870912", "x"], too_big.clone());
    check(&mut c, &["SETRANGE", "k", "9223372036854775807", "x"], too_big.clone());
    check(&mut c, &["SETRANGE", "nokey", "536870912", "x"], too_big);
    check(&mut c, &["EXISTS", "nokey"], int(0));
    check(&mut c, &["GET", "k"], bulk("abc"));
}

// ---------------------------------------------------------------------------------------------
// INCR family

#[test]
fn incr_decr_family_counts_from_zero_on_a_missing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["INCR", "n"], int(1));
    check(&mut c, &["INCRBY", "n", "10"], int(11));
    check(&mut c, &["DECR", "n"], int(10));
    check(&mut c, &["DECRBY", "n", "5"], int(5));
    check(&mut c, &["INCRBY", "n", "-3"], int(2));
    check(&mut c, &["DECRBY", "n", "-3"], int(5));
    // The stored value is the decimal string.
    check(&mut c, &["GET", "n"], bulk("5"));
    check(&mut c, &["DECR", "m"], int(-1));
    check(&mut c, &["DECRBY", "d", "7"], int(-7));
    check(&mut c, &["INCRBY", "i", "0"], int(0));
    check(&mut c, &["GET", "i"], bulk("0"));
    check(&mut c, &["SET", "s", "-0"], ok());
    check(&mut c, &["GET", "s"], bulk("-0"));
}

#[test]
fn incr_on_a_non_integer_value_is_an_error_and_keeps_the_value() {
    let s = Server::start();
    let mut c = s.raw();
    // Redis parses strictly: no spaces, no '+', no leading zeros, no decimals, fits in i64.
    for v in ["abc", " 1", "1 ", "+1", "1.5", "1e3", "007", "", "12345678901234567890"] {
        check(&mut c, &["SET", "s", v], ok());
        check(&mut c, &["INCR", "s"], not_int());
        check(&mut c, &["DECR", "s"], not_int());
        check(&mut c, &["INCRBY", "s", "1"], not_int());
        check(&mut c, &["DECRBY", "s", "1"], not_int());
        check(&mut c, &["GET", "s"], bulk(v));
    }
}

#[test]
fn incrby_with_a_non_integer_increment_is_an_error() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "n", "5"], ok());
    for inc in ["abc", "1.5", "", "99999999999999999999", "9223372036854775808"] {
        check(&mut c, &["INCRBY", "n", inc], not_int());
        check(&mut c, &["DECRBY", "n", inc], not_int());
    }
    check(&mut c, &["GET", "n"], bulk("5"));
}

#[test]
fn incr_overflow_is_an_error_and_keeps_the_value() {
    let s = Server::start();
    let mut c = s.raw();
    let overflow = err("ERR increment or decrement would overflow");
    check(&mut c, &["SET", "n", "9223372036854775807"], ok());
    check(&mut c, &["INCR", "n"], overflow.clone());
    check(&mut c, &["INCRBY", "n", "1"], overflow.clone());
    check(&mut c, &["DECRBY", "n", "-1"], overflow.clone());
    check(&mut c, &["GET", "n"], bulk("9223372036854775807"));
    check(&mut c, &["SET", "n", "-9223372036854775808"], ok());
    check(&mut c, &["DECR", "n"], overflow.clone());
    check(&mut c, &["DECRBY", "n", "1"], overflow.clone());
    check(&mut c, &["INCRBY", "n", "-1"], overflow);
    check(&mut c, &["GET", "n"], bulk("-9223372036854775808"));
    // Negating i64::MIN for DECRBY has its own message.
    check(&mut c, &["SET", "n", "0"], ok());
    check(&mut c, &["DECRBY", "n", "-9223372036854775808"], err("ERR decrement would overflow"));
    check(&mut c, &["GET", "n"], bulk("0"));
    // Reaching the limits exactly is fine.
    check(&mut c, &["INCRBY", "n", "-9223372036854775808"], int(i64::MIN));
    check(&mut c, &["SET", "n", "0"], ok());
    check(&mut c, &["DECRBY", "n", "9223372036854775807"], int(-i64::MAX));
    check(&mut c, &["INCRBY", "n", "9223372036854775807"], int(0));
    check(&mut c, &["INCRBY", "n", "9223372036854775807"], int(i64::MAX));
}

#[test]
fn incrbyfloat_formats_results_like_redis() {
    // Redis computes in `long double` and prints with "%.17Lf" minus trailing zeros (never in
    // exponent notation, no trailing ".0"). The cases here were chosen so that a correct f64
    // implementation gives the same digits as Redis on x86-64.
    let s = Server::start();
    let mut c = s.raw();
    // The examples from the INCRBYFLOAT documentation.
    check(&mut c, &["SET", "k", "10.50"], ok());
    check(&mut c, &["INCRBYFLOAT", "k", "0.1"], bulk("10.6"));
    check(&mut c, &["INCRBYFLOAT", "k", "-5"], bulk("5.6"));
    check(&mut c, &["SET", "k", "5.0e3"], ok());
    check(&mut c, &["INCRBYFLOAT", "k", "2.0e2"], bulk("5200"));
    check(&mut c, &["GET", "k"], bulk("5200"));
    // Missing key counts from 0; integral results have no decimal point.
    check(&mut c, &["INCRBYFLOAT", "m", "3"], bulk("3"));
    check(&mut c, &["INCRBYFLOAT", "m", "1.5"], bulk("4.5"));
    check(&mut c, &["INCRBYFLOAT", "m", "0.5"], bulk("5"));
    check(&mut c, &["GET", "m"], bulk("5"));
    check(&mut c, &["INCRBYFLOAT", "neg", "-2.75"], bulk("-2.75"));
    check(&mut c, &["SET", "t", "10"], ok());
    check(&mut c, &["INCRBYFLOAT", "t", "0.25"], bulk("10.25"));
    check(&mut c, &["SET", "z", "3.0"], ok());
    check(&mut c, &["INCRBYFLOAT", "z", "0"], bulk("3"));
    check(&mut c, &["SET", "e", "1e3"], ok());
    check(&mut c, &["INCRBYFLOAT", "e", "0"], bulk("1000"));
    // No exponent notation for large or small results.
    check(&mut c, &["SET", "big", "1"], ok());
    check(&mut c, &["INCRBYFLOAT", "big", "1e15"], bulk("1000000000000001"));
    check(&mut c, &["INCRBYFLOAT", "small", "0.000123"], bulk("0.000123"));
    // The result is a string, so INCR on a fractional one fails.
    check(&mut c, &["SET", "f", "3.5"], ok());
    check(&mut c, &["INCR", "f"], not_int());
}

#[test]
fn incrbyfloat_rejects_non_floats_and_infinite_results() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "1.5"], ok());
    for inc in ["abc", "nan", "", " 1", "1 "] {
        check(&mut c, &["INCRBYFLOAT", "k", inc], not_float());
    }
    let infinite = err("ERR increment would produce NaN or Infinity");
    check(&mut c, &["INCRBYFLOAT", "k", "inf"], infinite.clone());
    check(&mut c, &["INCRBYFLOAT", "k", "-inf"], infinite.clone());
    check(&mut c, &["GET", "k"], bulk("1.5"));
    // A stored value that is not a float.
    check(&mut c, &["SET", "s", "abc"], ok());
    check(&mut c, &["INCRBYFLOAT", "s", "1"], not_float());
    check(&mut c, &["GET", "s"], bulk("abc"));
    // "inf" parses as a float, but the result is infinite.
    check(&mut c, &["SET", "i", "inf"], ok());
    check(&mut c, &["INCRBYFLOAT", "i", "1"], infinite);
    check(&mut c, &["GET", "i"], bulk("inf"));
}

// ---------------------------------------------------------------------------------------------
// Arity

#[test]
fn wrong_arity_of_string_commands_names_the_command_in_lower_case() {
    let s = Server::start();
    let mut c = s.raw();
    let cases: &[(&str, &[&str])] = &[
        ("get", &["GET"]),
        ("get", &["GET", "a", "b"]),
        ("get", &["gEt"]),
        ("set", &["SET"]),
        ("set", &["SET", "a"]),
        ("setnx", &["SETNX", "a"]),
        ("setnx", &["SETNX", "a", "b", "c"]),
        ("setex", &["SETEX", "a", "10"]),
        ("setex", &["SETEX", "a", "10", "v", "extra"]),
        ("psetex", &["PSETEX", "a", "10"]),
        ("getset", &["GETSET", "a"]),
        ("getset", &["GETSET", "a", "b", "c"]),
        ("getdel", &["GETDEL"]),
        ("getdel", &["GETDEL", "a", "b"]),
        ("getex", &["GETEX"]),
        ("mget", &["MGET"]),
        ("mset", &["MSET"]),
        ("msetnx", &["MSETNX"]),
        ("append", &["APPEND", "a"]),
        ("append", &["APPEND", "a", "b", "c"]),
        ("strlen", &["STRLEN"]),
        ("strlen", &["STRLEN", "a", "b"]),
        ("getrange", &["GETRANGE", "a", "0"]),
        ("getrange", &["GETRANGE", "a", "0", "1", "2"]),
        ("setrange", &["SETRANGE", "a", "0"]),
        ("setrange", &["SETRANGE", "a", "0", "x", "y"]),
        ("incr", &["INCR"]),
        ("incr", &["INCR", "a", "b"]),
        ("decr", &["DECR"]),
        ("incrby", &["INCRBY", "a"]),
        ("incrby", &["INCRBY", "a", "1", "2"]),
        ("decrby", &["DECRBY", "a"]),
        ("incrbyfloat", &["INCRBYFLOAT", "a"]),
        ("incrbyfloat", &["INCRBYFLOAT", "a", "1", "2"]),
    ];
    for (name, args) in cases {
        check(&mut c, args, arity(name));
    }
    // Nothing was created by any of them.
    check(&mut c, &["DBSIZE"], int(0));
}
