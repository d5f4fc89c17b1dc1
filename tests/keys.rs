//! Key-space commands: DEL/UNLINK/EXISTS/TYPE, the EXPIRE family, TTLs and real expiry, KEYS,
//! SCAN, RANDOMKEY, RENAME/RENAMENX and DBSIZE, on one shard and across shards.
//!
//! Every expectation here was checked against redis-server 7.0.15:
//! `RINGCACHE_TEST_EXTERNAL=127.0.0.1:7777 cargo test --test keys -- --test-threads=1`.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers (local to this file: tests/common is shared and owned by someone else).

fn q(c: &mut Raw, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.cmd(&resp(&args))
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

fn syntax() -> Reply {
    err("ERR syntax error")
}

fn not_int() -> Reply {
    err("ERR value is not an integer or out of range")
}

fn no_such_key() -> Reply {
    err("ERR no such key")
}

fn invalid_expire(cmd: &str) -> Reply {
    err(&format!("ERR invalid expire time in '{cmd}' command"))
}

fn arity(cmd: &str) -> Reply {
    err(&format!("ERR wrong number of arguments for '{cmd}' command"))
}

fn set_of(items: &[&str]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// The bulk strings of an array reply, in order.
#[track_caller]
fn strings(r: Reply) -> Vec<Vec<u8>> {
    match r {
        Reply::Array(Some(items)) => items
            .into_iter()
            .map(|i| match i {
                Reply::Bulk(Some(b)) => b,
                other => panic!("expected a bulk string element, got {other:?}"),
            })
            .collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// KEYS `pattern` as a set (Redis gives no order).
#[track_caller]
fn keys(c: &mut Raw, pattern: &str) -> BTreeSet<Vec<u8>> {
    let list = strings(q(c, &["KEYS", pattern]));
    let set: BTreeSet<_> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "KEYS {pattern} returned a key twice");
    set
}

/// One SCAN call: (next cursor, keys).
#[track_caller]
fn scan_once(c: &mut Raw, cursor: &str, extra: &[&str]) -> (String, Vec<Vec<u8>>) {
    let mut args = vec!["SCAN", cursor];
    args.extend_from_slice(extra);
    match q(c, &args) {
        Reply::Array(Some(mut items)) if items.len() == 2 => {
            let keys = strings(items.pop().unwrap());
            let cursor = match items.pop().unwrap() {
                Reply::Bulk(Some(b)) => String::from_utf8(b).expect("cursor is ASCII"),
                other => panic!("SCAN cursor must be a bulk string, got {other:?}"),
            };
            (cursor, keys)
        }
        other => panic!("reply to {args:?}: expected [cursor, keys], got {other:?}"),
    }
}

/// A full SCAN iteration (bounded): every key returned, in order, duplicates included.
#[track_caller]
fn scan_all(c: &mut Raw, extra: &[&str]) -> Vec<Vec<u8>> {
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let (next, keys) = scan_once(c, &cursor, extra);
        out.extend(keys);
        if next == "0" {
            return out;
        }
        cursor = next;
    }
    panic!("SCAN {extra:?} did not return cursor 0 within 100000 calls");
}

/// MSET of `prefix:0 .. prefix:{n-1}` (value = key), in batches.
fn fill(c: &mut Raw, prefix: &str, n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}:{i}")).collect();
    for chunk in keys.chunks(500) {
        let mut args = vec!["MSET"];
        for k in chunk {
            args.push(k);
            args.push(k);
        }
        check(c, &args, ok());
    }
    keys
}

// ---------------------------------------------------------------------------------------------
// DEL, UNLINK, EXISTS, TYPE, DBSIZE

#[test]
fn del_counts_only_keys_that_existed() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["MSET", "a", "1", "b", "2"], ok());
    check(&mut c, &["DEL", "a", "missing", "b"], int(2));
    check(&mut c, &["EXISTS", "a", "b"], int(0));
    check(&mut c, &["DEL", "a"], int(0));
    // A key named twice is deleted (and counted) once.
    check(&mut c, &["SET", "c", "3"], ok());
    check(&mut c, &["DEL", "c", "c"], int(1));
}

#[test]
fn unlink_behaves_like_del() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["MSET", "a", "1", "b", "2"], ok());
    check(&mut c, &["UNLINK", "a", "a", "missing", "b"], int(2));
    check(&mut c, &["GET", "a"], nil());
    check(&mut c, &["UNLINK", "a"], int(0));
}

#[test]
fn exists_counts_every_mention_including_duplicates() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["EXISTS", "a"], int(0));
    check(&mut c, &["SET", "a", "1"], ok());
    check(&mut c, &["SET", "e", ""], ok());
    check(&mut c, &["EXISTS", "a"], int(1));
    check(&mut c, &["EXISTS", "a", "a", "a", "missing"], int(3));
    check(&mut c, &["EXISTS", "e", "a", "e"], int(3));
}

#[test]
fn type_is_string_or_none() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["TYPE", "k"], Reply::Simple("none".into()));
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["TYPE", "k"], Reply::Simple("string".into()));
    check(&mut c, &["INCR", "n"], int(1));
    check(&mut c, &["TYPE", "n"], Reply::Simple("string".into()));
}

#[test]
fn dbsize_counts_keys() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["DBSIZE"], int(0));
    check(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"], ok());
    check(&mut c, &["DBSIZE"], int(3));
    check(&mut c, &["SET", "a", "again"], ok());
    check(&mut c, &["DBSIZE"], int(3));
    check(&mut c, &["DEL", "b"], int(1));
    check(&mut c, &["DBSIZE"], int(2));
}

fn del_exists_unlink_over_100_keys(s: &Server) {
    let mut c = s.raw();
    let keys = fill(&mut c, "k", 100);
    check(&mut c, &["DBSIZE"], int(100));
    let mut exists = vec!["EXISTS"];
    exists.extend(keys.iter().map(|k| k.as_str()));
    exists.extend(["k:0", "k:99", "absent"]);
    check(&mut c, &exists, int(102));

    // DEL the even keys (plus missing ones), UNLINK the odd ones.
    let mut del = vec!["DEL", "absent1"];
    del.extend(keys.iter().step_by(2).map(|k| k.as_str()));
    del.push("absent2");
    check(&mut c, &del, int(50));
    check(&mut c, &exists, int(51));
    check(&mut c, &["DBSIZE"], int(50));
    check(&mut c, &["GET", "k:1"], bulk("k:1"));
    check(&mut c, &["GET", "k:2"], nil());
    let mut unlink = vec!["UNLINK"];
    unlink.extend(keys.iter().map(|k| k.as_str()));
    check(&mut c, &unlink, int(50));
    check(&mut c, &exists, int(0));
    check(&mut c, &["DBSIZE"], int(0));
}

#[test]
fn del_exists_unlink_over_100_keys_one_shard() {
    del_exists_unlink_over_100_keys(&Server::start());
}

#[test]
fn del_exists_unlink_over_100_keys_sharded() {
    del_exists_unlink_over_100_keys(&Server::start_sharded());
}

// ---------------------------------------------------------------------------------------------
// TTL, PTTL, EXPIRETIME, PEXPIRETIME, PERSIST

#[test]
fn ttl_family_is_minus_two_for_missing_and_minus_one_without_expiry() {
    let s = Server::start();
    let mut c = s.raw();
    for cmd in ["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"] {
        check(&mut c, &[cmd, "nokey"], int(-2));
    }
    check(&mut c, &["SET", "k", "v"], ok());
    for cmd in ["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"] {
        check(&mut c, &[cmd, "k"], int(-1));
    }
}

#[test]
fn ttl_rounds_to_the_nearest_second() {
    // Redis replies (ms + 500) / 1000, not a truncation: 1.9 s left reads as 2.
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "PX", "1900"], ok());
    check(&mut c, &["TTL", "k"], int(2));
    check_int_in(&mut c, &["PTTL", "k"], 1500..=1900);
}

#[test]
fn expiretime_and_pexpiretime_give_the_absolute_unix_time() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["EXPIREAT", "k", "4000000000"], int(1));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_000));
    check(&mut c, &["PEXPIRETIME", "k"], int(4_000_000_000_000));
    // EXPIRETIME rounds milliseconds to the nearest second.
    check(&mut c, &["PEXPIREAT", "k", "4000000000500"], int(1));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_001));
    check(&mut c, &["PEXPIRETIME", "k"], int(4_000_000_000_500));
    check(&mut c, &["PEXPIREAT", "k", "4000000000499"], int(1));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_000));
    // A relative expiry reads back as now + ttl.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let now = now.as_millis() as i64;
    check(&mut c, &["PEXPIRE", "k", "100000"], int(1));
    check_int_in(&mut c, &["PEXPIRETIME", "k"], now + 99_000..=now + 101_000);
}

#[test]
fn persist_removes_the_ttl_only_when_there_is_one() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["PERSIST", "nokey"], int(0));
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["PERSIST", "k"], int(0));
    check(&mut c, &["EXPIRE", "k", "100"], int(1));
    check(&mut c, &["PERSIST", "k"], int(1));
    check(&mut c, &["TTL", "k"], int(-1));
    check(&mut c, &["PERSIST", "k"], int(0));
    check(&mut c, &["GET", "k"], bulk("v"));
}

// ---------------------------------------------------------------------------------------------
// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT

#[test]
fn expire_family_sets_ttls_and_is_zero_for_a_missing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["EXPIRE", "k", "100"], int(1));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["PEXPIRE", "k", "50000"], int(1));
    check_int_in(&mut c, &["PTTL", "k"], 49_000..=50_000);
    check(&mut c, &["EXPIREAT", "k", "4000000000"], int(1));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_000));
    check(&mut c, &["PEXPIREAT", "k", "4000000000123"], int(1));
    check(&mut c, &["PEXPIRETIME", "k"], int(4_000_000_000_123));
    check(&mut c, &["GET", "k"], bulk("v"));
    for cmd in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        check(&mut c, &[cmd, "nokey", "4000000000000"], int(0));
        check(&mut c, &[cmd, "nokey", "100", "NX"], int(0));
    }
    check(&mut c, &["EXISTS", "nokey"], int(0));
}

#[test]
fn expire_nx_sets_only_when_there_is_no_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["EXPIRE", "k", "100", "NX"], int(1));
    check(&mut c, &["EXPIRE", "k", "200", "NX"], int(0));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["PEXPIRE", "k", "5000", "nx"], int(0));
    check(&mut c, &["EXPIREAT", "k", "4000000000", "NX"], int(0));
    check(&mut c, &["PEXPIREAT", "k", "4000000000000", "NX"], int(0));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn expire_xx_sets_only_when_there_is_a_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["EXPIRE", "k", "100", "XX"], int(0));
    check(&mut c, &["TTL", "k"], int(-1));
    check(&mut c, &["EXPIRE", "k", "100"], int(1));
    check(&mut c, &["EXPIRE", "k", "50", "XX"], int(1));
    check_int_in(&mut c, &["TTL", "k"], 49..=50);
    check(&mut c, &["PEXPIREAT", "k", "4000000000000", "XX"], int(1));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_000));
}

#[test]
fn expire_gt_only_extends_and_treats_no_ttl_as_infinite() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    // No TTL counts as infinite: nothing is greater.
    check(&mut c, &["EXPIRE", "k", "50", "GT"], int(0));
    check(&mut c, &["TTL", "k"], int(-1));
    check(&mut c, &["EXPIRE", "k", "50"], int(1));
    check(&mut c, &["EXPIRE", "k", "100", "GT"], int(1));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["EXPIRE", "k", "10", "GT"], int(0));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["EXPIREAT", "k", "4000000000", "GT"], int(1));
    check(&mut c, &["PEXPIREAT", "k", "3999999999999", "GT"], int(0));
    check(&mut c, &["EXPIRETIME", "k"], int(4_000_000_000));
    // XX combines with GT.
    check(&mut c, &["PEXPIREAT", "k", "4000000000001", "XX", "GT"], int(1));
    check(&mut c, &["PEXPIRETIME", "k"], int(4_000_000_000_001));
}

#[test]
fn expire_lt_only_shortens_and_treats_no_ttl_as_infinite() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    // No TTL counts as infinite: any time is less.
    check(&mut c, &["EXPIRE", "k", "100", "LT"], int(1));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["EXPIRE", "k", "200", "LT"], int(0));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
    check(&mut c, &["PEXPIRE", "k", "50000", "LT"], int(1));
    check_int_in(&mut c, &["PTTL", "k"], 49_000..=50_000);
    // XX combines with LT.
    check(&mut c, &["EXPIRE", "k", "10", "XX", "LT"], int(1));
    check_int_in(&mut c, &["TTL", "k"], 9..=10);
}

#[test]
fn expire_with_incompatible_options_is_an_error_even_for_a_missing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    let nx_err = err("ERR NX and XX, GT or LT options at the same time are not compatible");
    let gt_lt = err("ERR GT and LT options at the same time are not compatible");
    for cmd in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        for key in ["k", "nokey"] {
            for pair in [["NX", "XX"], ["XX", "NX"], ["NX", "GT"], ["LT", "NX"], ["nx", "lt"]] {
                check(&mut c, &[cmd, key, "5", pair[0], pair[1]], nx_err.clone());
            }
            check(&mut c, &[cmd, key, "5", "GT", "LT"], gt_lt.clone());
            check(&mut c, &[cmd, key, "5", "lt", "gt"], gt_lt.clone());
        }
    }
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn expire_with_an_unknown_option_echoes_it() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["EXPIRE", "k", "10", "foo"], err("ERR Unsupported option foo"));
    check(&mut c, &["PEXPIRE", "k", "10", "FOO"], err("ERR Unsupported option FOO"));
    check(&mut c, &["EXPIRE", "k", "10", "NX", "bar"], err("ERR Unsupported option bar"));
    // Options are parsed before the time, so these report the option, not the number.
    check(&mut c, &["EXPIRE", "k", "abc", "foo"], err("ERR Unsupported option foo"));
    check(
        &mut c,
        &["EXPIREAT", "k", "abc", "NX", "XX"],
        err("ERR NX and XX, GT or LT options at the same time are not compatible"),
    );
    // Repeating the same option is accepted.
    check(&mut c, &["EXPIRE", "k", "100", "NX", "NX"], int(1));
    check(&mut c, &["EXPIRE", "k", "200", "GT", "GT"], int(1));
    check_int_in(&mut c, &["TTL", "k"], 199..=200);
}

#[test]
fn expire_with_a_non_integer_or_overflowing_time_is_rejected() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v"], ok());
    for cmd in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        for bad in ["abc", "1.5", "", " 10", "9223372036854775808"] {
            check(&mut c, &[cmd, "k", bad], not_int());
        }
    }
    // Times that overflow once converted to absolute milliseconds.
    check(&mut c, &["EXPIRE", "k", "9223372036854775807"], invalid_expire("expire"));
    check(&mut c, &["EXPIRE", "k", "-9223372036854775808"], invalid_expire("expire"));
    check(&mut c, &["PEXPIRE", "k", "9223372036854775807"], invalid_expire("pexpire"));
    check(&mut c, &["EXPIREAT", "k", "9223372036854775807"], invalid_expire("expireat"));
    check(&mut c, &["TTL", "k"], int(-1));
    // The largest absolute millisecond time itself is accepted.
    check(&mut c, &["PEXPIREAT", "k", "9223372036854775807"], int(1));
    check(&mut c, &["PEXPIRETIME", "k"], int(i64::MAX));
    check(&mut c, &["GET", "k"], bulk("v"));
}

#[test]
fn expire_with_a_negative_or_past_time_deletes_the_key() {
    let s = Server::start();
    let mut c = s.raw();
    for args in [
        ["EXPIRE", "k", "-1"],
        ["EXPIRE", "k", "0"],
        ["PEXPIRE", "k", "-100"],
        ["PEXPIRE", "k", "0"],
        ["EXPIREAT", "k", "1"],
        ["EXPIREAT", "k", "-5"],
        ["PEXPIREAT", "k", "1000"],
        ["PEXPIREAT", "k", "-9223372036854775808"],
    ] {
        check(&mut c, &["SET", "k", "v"], ok());
        check(&mut c, &args, int(1));
        check(&mut c, &["EXISTS", "k"], int(0));
        check(&mut c, &["GET", "k"], nil());
    }
}

#[test]
fn expire_conditions_apply_before_a_past_time_deletes() {
    let s = Server::start();
    let mut c = s.raw();
    // A persistent key has an infinite TTL: a past time is not GT, but is LT.
    check(&mut c, &["SET", "k", "v"], ok());
    check(&mut c, &["EXPIRE", "k", "-1", "GT"], int(0));
    check(&mut c, &["EXPIRE", "k", "-1", "XX"], int(0));
    check(&mut c, &["EXISTS", "k"], int(1));
    check(&mut c, &["EXPIRE", "k", "-1", "LT"], int(1));
    check(&mut c, &["EXISTS", "k"], int(0));
    // A volatile key refuses NX.
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["EXPIRE", "k", "-1", "NX"], int(0));
    check(&mut c, &["EXISTS", "k"], int(1));
    check(&mut c, &["PEXPIREAT", "k", "1", "XX"], int(1));
    check(&mut c, &["EXISTS", "k"], int(0));
}

// ---------------------------------------------------------------------------------------------
// Real expiry

fn expired_keys_behave_as_missing(s: &Server) {
    let mut c = s.raw();
    let n = 16;
    let expiring: Vec<String> = (0..n).map(|i| format!("exp:{i}")).collect();
    for (i, k) in expiring.iter().enumerate() {
        // Several ways of getting a 500 ms expiry (long enough for the ~30 round trips up to the
        // reads below on a loaded machine; 100 ms was not).
        match i % 4 {
            0 => check(&mut c, &["SET", k, "v", "PX", "500"], ok()),
            1 => check(&mut c, &["PSETEX", k, "500", "v"], ok()),
            2 => {
                check(&mut c, &["SET", k, "v"], ok());
                check(&mut c, &["PEXPIRE", k, "500"], int(1));
            }
            _ => {
                check(&mut c, &["SET", k, "v"], ok());
                check(&mut c, &["GETEX", k, "PX", "500"], bulk("v"));
            }
        }
    }
    // Keys whose 500 ms TTL was removed (or replaced) must survive; KEEPTTL must not save one.
    check(&mut c, &["SET", "overwritten", "v", "PX", "500"], ok());
    check(&mut c, &["SET", "overwritten", "w"], ok());
    check(&mut c, &["SET", "persisted", "v", "PX", "500"], ok());
    check(&mut c, &["PERSIST", "persisted"], int(1));
    check(&mut c, &["SET", "extended", "v", "PX", "500"], ok());
    check(&mut c, &["EXPIRE", "extended", "100"], int(1));
    check(&mut c, &["SET", "kept", "v", "PX", "500"], ok());
    check(&mut c, &["SET", "kept", "w", "KEEPTTL"], ok());
    check(&mut c, &["GET", "exp:0"], bulk("v"));
    check(&mut c, &["EXISTS", "exp:1"], int(1));

    std::thread::sleep(Duration::from_millis(700));

    for k in &expiring {
        check(&mut c, &["GET", k], nil());
        check(&mut c, &["EXISTS", k], int(0));
        check(&mut c, &["TTL", k], int(-2));
        check(&mut c, &["PTTL", k], int(-2));
    }
    check(&mut c, &["GET", "kept"], nil());
    check(&mut c, &["GET", "overwritten"], bulk("w"));
    check(&mut c, &["GET", "persisted"], bulk("v"));
    check(&mut c, &["GET", "extended"], bulk("v"));
    let survivors = set_of(&["overwritten", "persisted", "extended"]);
    assert_eq!(keys(&mut c, "*"), survivors);
    let scanned: BTreeSet<_> = scan_all(&mut c, &[]).into_iter().collect();
    assert_eq!(scanned, survivors);
    // DBSIZE is not checked here: Redis counts expired keys until they are reclaimed.

    // Every command sees an expired key as missing. Fresh keys are used for each check.
    let mut e = expiring.iter().map(|k| k.as_str());
    let mut next = || e.next().unwrap();
    check(&mut c, &["TYPE", next()], Reply::Simple("none".into()));
    check(&mut c, &["STRLEN", next()], int(0));
    check(&mut c, &["GETRANGE", next(), "0", "-1"], bulk(""));
    check(&mut c, &["RENAME", next(), "dst"], no_such_key());
    check(&mut c, &["EXPIRE", next(), "100"], int(0));
    check(&mut c, &["PERSIST", next()], int(0));
    check(&mut c, &["DEL", next()], int(0));
    check(&mut c, &["GETDEL", next()], nil());
    let k = next();
    check(&mut c, &["SET", k, "x", "XX"], nil());
    check(&mut c, &["EXISTS", k], int(0));
    let k = next();
    check(&mut c, &["SETNX", k, "x"], int(1));
    check(&mut c, &["TTL", k], int(-1));
    let k = next();
    check(&mut c, &["INCR", k], int(1));
    check(&mut c, &["TTL", k], int(-1));
    let k = next();
    check(&mut c, &["APPEND", k, "xy"], int(2));
    check(&mut c, &["GET", k], bulk("xy"));
    let k = next();
    check(&mut c, &["GETSET", k, "x"], nil());
    check(&mut c, &["TTL", k], int(-1));
    let k = next();
    check(&mut c, &["MSETNX", k, "x", "fresh", "y"], int(1));
    check(&mut c, &["MGET", k, "fresh"], Reply::Array(Some(vec![bulk("x"), bulk("y")])));
    check(&mut c, &["SET", next(), "x", "NX", "GET"], nil());
}

#[test]
fn keys_with_px_500_expire_and_then_behave_as_missing_one_shard() {
    expired_keys_behave_as_missing(&Server::start());
}

#[test]
fn keys_with_px_500_expire_and_then_behave_as_missing_sharded() {
    expired_keys_behave_as_missing(&Server::start_sharded());
}

#[test]
fn randomkey_is_nil_when_every_key_has_expired() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "a", "v", "PX", "50"], ok());
    check(&mut c, &["SET", "b", "v", "PX", "50"], ok());
    std::thread::sleep(Duration::from_millis(150));
    check(&mut c, &["RANDOMKEY"], nil());
    check(&mut c, &["KEYS", "*"], Reply::Array(Some(vec![])));
}

// ---------------------------------------------------------------------------------------------
// KEYS

#[test]
fn keys_matches_glob_patterns() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["KEYS", "*"], Reply::Array(Some(vec![])));
    let all = ["hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "h?llo", "hbllo", "h[a]llo", "h\\llo", "H"];
    let mut mset = vec!["MSET"];
    for k in all {
        mset.push(k);
        mset.push("v");
    }
    check(&mut c, &mset, ok());
    let cases: &[(&str, &[&str])] = &[
        ("*", &all),
        ("h?llo", &["hello", "hallo", "hxllo", "hbllo", "h*llo", "h?llo", "h\\llo"]),
        ("h*llo", &["hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "h?llo", "hbllo", "h[a]llo", "h\\llo"]),
        ("h[ae]llo", &["hello", "hallo"]),
        ("h[^e]llo", &["hallo", "hxllo", "hbllo", "h*llo", "h?llo", "h\\llo"]),
        ("h[a-c]llo", &["hallo", "hbllo"]),
        // A reversed range matches the same as the forward one.
        ("h[c-a]llo", &["hallo", "hbllo"]),
        // Only '^' negates a class; '!' is an ordinary member.
        ("h[!e]llo", &["hello"]),
        ("h\\*llo", &["h*llo"]),
        ("h\\?llo", &["h?llo"]),
        ("h\\[a\\]llo", &["h[a]llo"]),
        ("h\\\\llo", &["h\\llo"]),
        ("he*o", &["hello", "heeeello"]),
        ("h??llo", &[]),
        ("H", &["H"]),
        ("h", &[]),
        ("[H]*", &["H"]),
        ("*o", &all[..10]),
        ("nomatch", &[]),
    ];
    for (pattern, want) in cases {
        assert_eq!(keys(&mut c, pattern), set_of(want), "KEYS {pattern}");
    }
}

#[test]
fn keys_are_case_sensitive_and_binary_safe() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["MSET", "Key", "1", "key", "2", "a\r\nb", "3"], ok());
    assert_eq!(keys(&mut c, "k*"), set_of(&["key"]));
    assert_eq!(keys(&mut c, "K*"), set_of(&["Key"]));
    assert_eq!(keys(&mut c, "a?\nb"), set_of(&["a\r\nb"]));
    assert_eq!(keys(&mut c, "*"), set_of(&["Key", "key", "a\r\nb"]));
}

// ---------------------------------------------------------------------------------------------
// SCAN

#[test]
fn scan_of_an_empty_database_ends_at_once() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SCAN", "0"], Reply::Array(Some(vec![bulk("0"), Reply::Array(Some(vec![]))])));
}

#[test]
fn scan_returns_every_key_of_a_small_database() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"], ok());
    let got: BTreeSet<_> = scan_all(&mut c, &[]).into_iter().collect();
    assert_eq!(got, set_of(&["a", "b", "c"]));
    // COUNT 1 still visits everything, whatever the batch sizes.
    let got: BTreeSet<_> = scan_all(&mut c, &["COUNT", "1"]).into_iter().collect();
    assert_eq!(got, set_of(&["a", "b", "c"]));
}

#[test]
fn scan_rejects_invalid_cursors_and_options() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "a", "1"], ok());
    let invalid_cursor = err("ERR invalid cursor");
    // Redis parses the cursor with strtoull, so it also accepts "", "-1", "+1" and "00"; cursor
    // values are implementation-defined, so only clearly invalid ones are checked here.
    for cursor in ["abc", "1.5", " 0", "18446744073709551616"] {
        check(&mut c, &["SCAN", cursor], invalid_cursor.clone());
    }
    for opts in
        [&["COUNT", "0"][..], &["COUNT", "-1"], &["COUNT"], &["MATCH"], &["FOO", "bar"], &["MATCH", "*", "COUNT"]]
    {
        let mut args = vec!["SCAN", "0"];
        args.extend_from_slice(opts);
        check(&mut c, &args, syntax());
    }
    check(&mut c, &["SCAN", "0", "COUNT", "abc"], not_int());
    check(&mut c, &["SCAN", "0", "COUNT", "1.5"], not_int());
}

fn full_scan_returns_every_key_at_least_once(s: &Server) {
    let mut c = s.raw();
    let keys = fill(&mut c, "scan", 5000);
    let want: BTreeSet<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    for extra in [&[][..], &["COUNT", "1000"], &["COUNT", "7"]] {
        let got = scan_all(&mut c, extra);
        let set: BTreeSet<_> = got.iter().cloned().collect();
        assert!(set == want, "SCAN {extra:?}: {} distinct keys, want 5000", set.len());
        // Duplicates are allowed by the SCAN contract, but not an unbounded number of them.
        assert!(got.len() < 2 * want.len(), "SCAN {extra:?} returned {} keys", got.len());
    }
}

#[test]
fn full_scan_returns_every_key_at_least_once_one_shard() {
    full_scan_returns_every_key_at_least_once(&Server::start());
}

#[test]
fn full_scan_returns_every_key_at_least_once_sharded() {
    full_scan_returns_every_key_at_least_once(&Server::start_sharded());
}

fn scan_with_match_returns_exactly_the_matching_keys(s: &Server) {
    let mut c = s.raw();
    fill(&mut c, "user", 200);
    fill(&mut c, "other", 200);
    let want: BTreeSet<Vec<u8>> =
        std::iter::once(1).chain(10..20).chain(100..200).map(|i| format!("user:{i}").into_bytes()).collect();
    for extra in [&["MATCH", "user:1*"][..], &["MATCH", "user:1*", "COUNT", "50"], &["COUNT", "3", "MATCH", "user:1*"]]
    {
        let got: BTreeSet<_> = scan_all(&mut c, extra).into_iter().collect();
        assert!(got == want, "SCAN {extra:?}: {} keys, want {}", got.len(), want.len());
    }
    let got: BTreeSet<_> = scan_all(&mut c, &["MATCH", "user:1[0-2]"]).into_iter().collect();
    assert_eq!(got, set_of(&["user:10", "user:11", "user:12"]));
    assert!(scan_all(&mut c, &["MATCH", "nomatch*"]).is_empty());
}

#[test]
fn scan_with_match_returns_exactly_the_matching_keys_one_shard() {
    scan_with_match_returns_exactly_the_matching_keys(&Server::start());
}

#[test]
fn scan_with_match_returns_exactly_the_matching_keys_sharded() {
    scan_with_match_returns_exactly_the_matching_keys(&Server::start_sharded());
}

// ---------------------------------------------------------------------------------------------
// RANDOMKEY

#[test]
fn randomkey_is_nil_on_an_empty_database_and_otherwise_an_existing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["RANDOMKEY"], nil());
    check(&mut c, &["SET", "only", "v"], ok());
    check(&mut c, &["RANDOMKEY"], bulk("only"));
    check(&mut c, &["DEL", "only"], int(1));
    check(&mut c, &["RANDOMKEY"], nil());
}

// ---------------------------------------------------------------------------------------------
// Keys on every shard: KEYS, SCAN, DBSIZE, RANDOMKEY

fn keyspace_commands_see_every_shard(s: &Server) {
    let mut c = s.raw();
    // A lone key must be found wherever it lives; 32 different names cover every shard.
    for i in 0..32 {
        let k = format!("lone:{i}");
        check(&mut c, &["SET", &k, "v"], ok());
        check(&mut c, &["RANDOMKEY"], bulk(&k));
        check(&mut c, &["DBSIZE"], int(1));
        assert_eq!(keys(&mut c, "*"), set_of(&[&k]));
        assert_eq!(scan_all(&mut c, &[]), vec![k.clone().into_bytes()]);
        check(&mut c, &["DEL", &k], int(1));
    }
    let keys_100 = fill(&mut c, "all", 100);
    let want: BTreeSet<Vec<u8>> = keys_100.iter().map(|k| k.as_bytes().to_vec()).collect();
    check(&mut c, &["DBSIZE"], int(100));
    assert_eq!(keys(&mut c, "*"), want);
    assert_eq!(keys(&mut c, "all:*"), want);
    let scanned: BTreeSet<_> = scan_all(&mut c, &[]).into_iter().collect();
    assert_eq!(scanned, want);
    // RANDOMKEY only returns existing keys, and not always the same one.
    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        match q(&mut c, &["RANDOMKEY"]) {
            Reply::Bulk(Some(k)) => {
                assert!(want.contains(&k), "RANDOMKEY returned unknown key {k:?}");
                seen.insert(k);
            }
            other => panic!("RANDOMKEY: {other:?}"),
        }
    }
    assert!(seen.len() >= 10, "RANDOMKEY returned only {} distinct keys out of 100", seen.len());
}

#[test]
fn keyspace_commands_see_every_shard_one_shard() {
    keyspace_commands_see_every_shard(&Server::start());
}

#[test]
fn keyspace_commands_see_every_shard_sharded() {
    keyspace_commands_see_every_shard(&Server::start_sharded());
}

// ---------------------------------------------------------------------------------------------
// RENAME, RENAMENX

#[test]
fn rename_moves_the_value_and_removes_the_source() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "src", "v"], ok());
    check(&mut c, &["RENAME", "src", "dst"], ok());
    check(&mut c, &["GET", "dst"], bulk("v"));
    check(&mut c, &["EXISTS", "src"], int(0));
    // Overwrites an existing destination.
    check(&mut c, &["SET", "other", "w"], ok());
    check(&mut c, &["RENAME", "other", "dst"], ok());
    check(&mut c, &["GET", "dst"], bulk("w"));
    check(&mut c, &["DBSIZE"], int(1));
}

#[test]
fn rename_of_a_missing_key_is_no_such_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "dst", "keep"], ok());
    check(&mut c, &["RENAME", "nokey", "dst"], no_such_key());
    check(&mut c, &["RENAMENX", "nokey", "dst"], no_such_key());
    check(&mut c, &["RENAME", "nokey", "nokey"], no_such_key());
    check(&mut c, &["RENAMENX", "nokey", "nokey"], no_such_key());
    check(&mut c, &["GET", "dst"], bulk("keep"));
}

#[test]
fn rename_to_the_same_name_is_ok_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "k", "v", "EX", "100"], ok());
    check(&mut c, &["RENAME", "k", "k"], ok());
    // RENAMENX to itself: the destination exists, so 0.
    check(&mut c, &["RENAMENX", "k", "k"], int(0));
    check(&mut c, &["GET", "k"], bulk("v"));
    check_int_in(&mut c, &["TTL", "k"], 99..=100);
}

#[test]
fn rename_keeps_the_source_ttl_and_drops_the_destination_ttl() {
    let s = Server::start();
    let mut c = s.raw();
    // Source with TTL onto persistent destination: the TTL moves along.
    check(&mut c, &["SET", "s", "v", "EX", "100"], ok());
    check(&mut c, &["SET", "d", "w"], ok());
    check(&mut c, &["RENAME", "s", "d"], ok());
    check(&mut c, &["GET", "d"], bulk("v"));
    check_int_in(&mut c, &["TTL", "d"], 99..=100);
    check(&mut c, &["TTL", "s"], int(-2));
    // Persistent source onto destination with TTL: the result is persistent.
    check(&mut c, &["SET", "s", "v"], ok());
    check(&mut c, &["SET", "d", "w", "EX", "100"], ok());
    check(&mut c, &["RENAME", "s", "d"], ok());
    check(&mut c, &["GET", "d"], bulk("v"));
    check(&mut c, &["TTL", "d"], int(-1));
    // Source TTL replaces a different destination TTL.
    check(&mut c, &["SET", "s", "v", "PX", "500000"], ok());
    check(&mut c, &["SET", "d", "w", "EX", "100"], ok());
    check(&mut c, &["RENAME", "s", "d"], ok());
    check_int_in(&mut c, &["TTL", "d"], 499..=500);
}

#[test]
fn renamenx_renames_only_onto_a_missing_key() {
    let s = Server::start();
    let mut c = s.raw();
    check(&mut c, &["SET", "s", "v", "EX", "100"], ok());
    check(&mut c, &["RENAMENX", "s", "d"], int(1));
    check(&mut c, &["GET", "d"], bulk("v"));
    check(&mut c, &["EXISTS", "s"], int(0));
    check_int_in(&mut c, &["TTL", "d"], 99..=100);
    // Destination exists: nothing changes on either side.
    check(&mut c, &["SET", "s", "other"], ok());
    check(&mut c, &["RENAMENX", "s", "d"], int(0));
    check(&mut c, &["GET", "s"], bulk("other"));
    check(&mut c, &["GET", "d"], bulk("v"));
    check_int_in(&mut c, &["TTL", "d"], 99..=100);
    check(&mut c, &["TTL", "s"], int(-1));
}

fn rename_between_many_key_pairs(s: &Server) {
    let mut c = s.raw();
    let n = 50;
    for i in 0..n {
        let v = format!("v{i}");
        if i % 2 == 0 {
            check(&mut c, &["SET", &format!("src:{i}"), &v, "EX", "1000"], ok());
        } else {
            check(&mut c, &["SET", &format!("src:{i}"), &v], ok());
        }
        if i % 3 == 0 {
            check(&mut c, &["SET", &format!("dst:{i}"), "old", "EX", "100"], ok());
        }
    }
    for i in 0..n {
        let (src, dst) = (format!("src:{i}"), format!("dst:{i}"));
        if i % 5 == 0 {
            let want = if i % 3 == 0 { 0 } else { 1 };
            check(&mut c, &["RENAMENX", &src, &dst], int(want));
        } else {
            check(&mut c, &["RENAME", &src, &dst], ok());
        }
    }
    for i in 0..n {
        let (src, dst) = (format!("src:{i}"), format!("dst:{i}"));
        let refused = i % 5 == 0 && i % 3 == 0;
        if refused {
            check(&mut c, &["GET", &dst], bulk("old"));
            check(&mut c, &["GET", &src], bulk(format!("v{i}")));
            check_int_in(&mut c, &["TTL", &dst], 99..=100);
        } else {
            check(&mut c, &["GET", &dst], bulk(format!("v{i}")));
            check(&mut c, &["EXISTS", &src], int(0));
            if i % 2 == 0 {
                check_int_in(&mut c, &["TTL", &dst], 999..=1000);
            } else {
                check(&mut c, &["TTL", &dst], int(-1));
            }
        }
    }
    // Renaming a chain of keys around and back ends where it started.
    check(&mut c, &["SET", "ring:0", "token"], ok());
    for i in 0..20 {
        check(&mut c, &["RENAME", &format!("ring:{i}"), &format!("ring:{}", i + 1)], ok());
    }
    check(&mut c, &["GET", "ring:20"], bulk("token"));
    assert_eq!(keys(&mut c, "ring:*"), set_of(&["ring:20"]));
    check(&mut c, &["RENAME", "src:1", "dst:1"], no_such_key());
}

#[test]
fn rename_between_many_key_pairs_one_shard() {
    rename_between_many_key_pairs(&Server::start());
}

#[test]
fn rename_between_many_key_pairs_sharded() {
    rename_between_many_key_pairs(&Server::start_sharded());
}

// ---------------------------------------------------------------------------------------------
// Arity

#[test]
fn wrong_arity_of_key_commands_names_the_command_in_lower_case() {
    let s = Server::start();
    let mut c = s.raw();
    let cases: &[(&str, &[&str])] = &[
        ("del", &["DEL"]),
        ("unlink", &["UNLINK"]),
        ("exists", &["EXISTS"]),
        ("type", &["TYPE"]),
        ("type", &["TYPE", "a", "b"]),
        ("expire", &["EXPIRE", "a"]),
        ("expire", &["eXpIrE"]),
        ("pexpire", &["PEXPIRE", "a"]),
        ("expireat", &["EXPIREAT", "a"]),
        ("pexpireat", &["PEXPIREAT", "a"]),
        ("ttl", &["TTL"]),
        ("ttl", &["TTL", "a", "b"]),
        ("pttl", &["PTTL"]),
        ("pttl", &["PTTL", "a", "b"]),
        ("expiretime", &["EXPIRETIME"]),
        ("expiretime", &["EXPIRETIME", "a", "b"]),
        ("pexpiretime", &["PEXPIRETIME"]),
        ("persist", &["PERSIST"]),
        ("persist", &["PERSIST", "a", "b"]),
        ("keys", &["KEYS"]),
        ("keys", &["KEYS", "a", "b"]),
        ("scan", &["SCAN"]),
        ("randomkey", &["RANDOMKEY", "a"]),
        ("rename", &["RENAME"]),
        ("rename", &["RENAME", "a"]),
        ("rename", &["RENAME", "a", "b", "c"]),
        ("renamenx", &["RENAMENX", "a"]),
        ("renamenx", &["RENAMENX", "a", "b", "c"]),
        ("dbsize", &["DBSIZE", "a"]),
    ];
    for (name, args) in cases {
        check(&mut c, args, arity(name));
    }
}
