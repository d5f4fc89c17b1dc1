//! Multi-key commands are atomic across shards: concurrent readers never see a half-applied
//! MSET, DEL, MSETNX or RENAME. Each test runs for a bounded time (about 1.5 s) on a sharded
//! server; against real Redis (`RINGCACHE_TEST_EXTERNAL`) they hold trivially.

mod common;
use common::*;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

const RUN_FOR: Duration = Duration::from_millis(1500);

fn q(c: &mut Raw, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.cmd(&resp(&args))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

/// `MGET keys...` as a list of optional values.
#[track_caller]
fn mget(c: &mut Raw, keys: &[String]) -> Vec<Option<Vec<u8>>> {
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(|k| k.as_str()));
    match q(c, &args) {
        Reply::Array(Some(items)) => items
            .into_iter()
            .map(|i| match i {
                Reply::Bulk(b) => b,
                other => panic!("MGET element: {other:?}"),
            })
            .collect(),
        other => panic!("MGET: {other:?}"),
    }
}

#[track_caller]
fn mset_all(c: &mut Raw, keys: &[String], value: &str) {
    let mut args = vec!["MSET"];
    for k in keys {
        args.push(k);
        args.push(value);
    }
    assert_eq!(q(c, &args), ok(), "MSET");
}

/// k1..k8: with 4 shards, eight keys all hashing to one shard has probability 4^-7.
fn eight_keys() -> Vec<String> {
    (1..=8).map(|i| format!("k{i}")).collect()
}

/// Runs `readers` threads calling `check(MGET keys)` until the deadline while the current
/// thread runs `write` in a loop; returns (writes, reads).
fn race(
    s: &Server,
    keys: &[String],
    readers: usize,
    mut write: impl FnMut(&mut Raw, u64),
    check: impl Fn(&[Option<Vec<u8>>]) + Sync,
) -> (u64, u64) {
    let deadline = Instant::now() + RUN_FOR;
    let mut writer = s.raw();
    let reader_conns: Vec<Raw> = (0..readers).map(|_| s.raw()).collect();
    thread::scope(|scope| {
        let handles: Vec<_> = reader_conns
            .into_iter()
            .map(|mut c| {
                let check = &check;
                scope.spawn(move || {
                    let mut reads = 0u64;
                    while Instant::now() < deadline {
                        check(&mget(&mut c, keys));
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let mut writes = 0u64;
        while Instant::now() < deadline {
            write(&mut writer, writes);
            writes += 1;
        }
        let reads = handles.into_iter().map(|h| h.join().expect("reader panicked")).sum();
        (writes, reads)
    })
}

#[test]
fn mget_never_sees_a_partial_mset() {
    let s = Server::start_sharded();
    let keys = eight_keys();
    mset_all(&mut s.raw(), &keys, "initial");
    // A second writer with its own values makes interleaved (non-atomic) MSETs detectable in
    // the final state too.
    let deadline = Instant::now() + RUN_FOR;
    let mut other = s.raw();
    let (writes, reads) = thread::scope(|scope| {
        let keys2 = &keys;
        let second = scope.spawn(move || {
            let mut n = 0u64;
            while Instant::now() < deadline {
                mset_all(&mut other, keys2, &format!("b-{n}"));
                n += 1;
            }
            n
        });
        let (w, r) = race(
            &s,
            &keys,
            2,
            |c, n| mset_all(c, &keys, &format!("a-{n}")),
            |vals| {
                assert!(vals[0].is_some(), "MGET saw a missing key: {vals:?}");
                assert!(vals.iter().all(|v| v == &vals[0]), "MGET saw a partial MSET: {vals:?}");
            },
        );
        (w + second.join().expect("second writer panicked"), r)
    });
    eprintln!("{writes} MSETs, {reads} MGETs");
    let last = mget(&mut s.raw(), &keys);
    assert!(last.iter().all(|v| v == &last[0]), "final values differ: {last:?}");
    assert!(writes >= 20 && reads >= 20, "too little concurrency: {writes} writes, {reads} reads");
}

#[test]
fn mget_never_sees_a_partial_del() {
    let s = Server::start_sharded();
    let keys = eight_keys();
    let (writes, reads) = race(
        &s,
        &keys,
        2,
        |c, n| {
            if n % 2 == 0 {
                mset_all(c, &keys, &format!("v-{n}"));
            } else {
                let mut args = vec!["DEL"];
                args.extend(keys.iter().map(|k| k.as_str()));
                assert_eq!(q(c, &args), Reply::Int(8), "DEL of 8 set keys");
            }
        },
        |vals| {
            assert!(vals.iter().all(|v| v == &vals[0]), "MGET saw a partial MSET or DEL: {vals:?}");
        },
    );
    eprintln!("{writes} MSETs/DELs, {reads} MGETs");
    assert!(writes >= 20 && reads >= 20, "too little concurrency: {writes} writes, {reads} reads");
}

#[test]
fn concurrent_msetnx_on_the_same_keys_has_exactly_one_winner() {
    let s = Server::start_sharded();
    let keys = eight_keys();
    let mut ctl = s.raw();
    let mut racers = [s.raw(), s.raw()];
    let deadline = Instant::now() + RUN_FOR;
    let mut rounds = 0;
    while Instant::now() < deadline && rounds < 2000 {
        let mut del = vec!["DEL"];
        del.extend(keys.iter().map(|k| k.as_str()));
        q(&mut ctl, &del);
        let barrier = Barrier::new(2);
        let results: Vec<Reply> = thread::scope(|scope| {
            let handles: Vec<_> = racers
                .iter_mut()
                .enumerate()
                .map(|(id, c)| {
                    let (keys, barrier) = (&keys, &barrier);
                    scope.spawn(move || {
                        let value = format!("racer-{id}");
                        let mut args = vec!["MSETNX"];
                        for k in keys {
                            args.push(k);
                            args.push(&value);
                        }
                        barrier.wait();
                        q(c, &args)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("racer panicked")).collect()
        });
        let winners: Vec<usize> = (0..2).filter(|&i| results[i] == Reply::Int(1)).collect();
        assert_eq!(winners.len(), 1, "round {rounds}: MSETNX replies {results:?}");
        for r in &results {
            assert!(matches!(r, Reply::Int(0 | 1)), "round {rounds}: MSETNX reply {r:?}");
        }
        let want = Some(format!("racer-{}", winners[0]).into_bytes());
        let vals = mget(&mut ctl, &keys);
        assert!(vals.iter().all(|v| v == &want), "round {rounds}: winner {want:?}, values {vals:?}");
        rounds += 1;
    }
    eprintln!("{rounds} MSETNX rounds");
    assert!(rounds >= 20, "only {rounds} rounds");
}

#[test]
fn concurrent_cross_shard_renames_never_lose_or_duplicate_a_key() {
    // Invariant: for each pair, exactly one of `a:i` / `b:i` exists at every instant and holds
    // the pair's token. One thread renames a→b, another b→a (so they also race each other:
    // "no such key" is the expected loser's reply); readers check the pairs with one MGET.
    // Four pairs, so that (with 4 shards) some pair almost surely spans two shards.
    let s = Server::start_sharded();
    let pairs = 4;
    let a: Vec<String> = (0..pairs).map(|i| format!("a:{i}")).collect();
    let b: Vec<String> = (0..pairs).map(|i| format!("b:{i}")).collect();
    let mut setup = s.raw();
    for (i, k) in a.iter().enumerate() {
        assert_eq!(q(&mut setup, &["SET", k, &format!("token-{i}")]), ok());
    }
    let mut all = Vec::new();
    for i in 0..pairs {
        all.push(a[i].clone());
        all.push(b[i].clone());
    }
    let deadline = Instant::now() + RUN_FOR;
    let mut backward = s.raw();
    let (a2, b2) = (&a, &b);
    let (moves, reads) = thread::scope(|scope| {
        let back = scope.spawn(move || {
            let mut moved = 0u64;
            while Instant::now() < deadline {
                for i in 0..pairs {
                    match q(&mut backward, &["RENAME", &b2[i], &a2[i]]) {
                        r if r == ok() => moved += 1,
                        Reply::Error(e) if e == "ERR no such key" => {}
                        other => panic!("RENAME {} {}: {other:?}", b2[i], a2[i]),
                    }
                }
            }
            moved
        });
        let mut forward_moves = 0u64;
        let (_, reads) = race(
            &s,
            &all,
            2,
            |c, _| {
                for i in 0..pairs {
                    match q(c, &["RENAME", &a[i], &b[i]]) {
                        r if r == ok() => forward_moves += 1,
                        Reply::Error(e) if e == "ERR no such key" => {}
                        other => panic!("RENAME {} {}: {other:?}", a[i], b[i]),
                    }
                }
            },
            |vals| {
                for i in 0..pairs {
                    let token = format!("token-{i}").into_bytes();
                    let (x, y) = (&vals[2 * i], &vals[2 * i + 1]);
                    let ok = matches!((x, y), (Some(t), None) | (None, Some(t)) if *t == token);
                    assert!(ok, "pair {i}: a={x:?} b={y:?}");
                }
            },
        );
        (forward_moves + back.join().expect("backward renamer panicked"), reads)
    });
    eprintln!("{moves} successful RENAMEs, {reads} MGETs");
    let vals = mget(&mut setup, &all);
    for i in 0..pairs {
        assert_eq!(vals[2 * i].is_some() as u8 + vals[2 * i + 1].is_some() as u8, 1, "pair {i}: {vals:?}");
    }
    assert_eq!(q(&mut setup, &["DBSIZE"]), Reply::Int(pairs as i64));
    assert!(moves >= 20 && reads >= 20, "too little concurrency: {moves} renames, {reads} reads");
}
