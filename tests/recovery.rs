//! Recovery from damaged logs: real segment files written by the real server, damaged on
//! disk between runs (garbage after the end, flipped bytes, truncation, missing segments),
//! then the server restarted on them.
//!
//! Every test writes with `--durability sync --threads 1` and one command at a time, so each
//! command is its own flush and flush k (1-based) holds LSN k: the expected outcome of each
//! kind of damage is exact. The decision table these tests follow is in `docs/WAL.md`.

mod common;
mod durability_common;

use common::*;
use durability_common::*;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn seed() -> u64 {
    let s = std::env::var("DURTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {s} (rerun with DURTEST_SEED={s})");
    s
}

fn key(i: usize) -> String {
    format!("k{i:04}")
}

/// Value of key i: sizes vary so that some flushes take several blocks.
fn value(i: usize) -> String {
    let len = match i % 7 {
        3 => 5000 + i * 13,
        5 => 9000,
        _ => 10 + (i * 31) % 300,
    };
    let mut v = format!("v{i}:");
    while v.len() < len {
        v.push((b'a' + (i % 26) as u8) as char);
    }
    v
}

/// Starts a sync, single-shard server on `dir`, writes keys `from..to` one SET at a time (one
/// flush each), and stops it gracefully.
fn write_keys(dir: &Path, from: usize, to: usize) {
    let mut server = start(dir, "sync", 1, &[]);
    let mut c = server.client();
    for i in from..to {
        let _: () = redis::cmd("SET").arg(key(i)).arg(value(i)).query(&mut c).unwrap();
    }
    drop(c);
    stop(&mut server);
}

/// The single segment of shard 0 with its bytes and flushes, checked to be one flush per key.
fn only_segment(dir: &Path, keys: usize) -> (PathBuf, Vec<u8>, Vec<Flush>) {
    let segs = segments(&shard_dir(dir, 0));
    assert_eq!(segs.len(), 1, "expected one segment: {segs:?}");
    let bytes = std::fs::read(&segs[0]).unwrap();
    let fl = flushes(&bytes);
    assert_eq!(fl.len(), keys, "one flush per SET");
    for (k, f) in fl.iter().enumerate() {
        assert_eq!((f.first_lsn, f.records), (k as u64 + 1, 1), "flush {k}: {f:?}");
    }
    assert_eq!(written_end(&bytes), fl.last().unwrap().end, "first zero block = end of the last flush");
    assert!(fl.iter().any(|f| f.end - f.offset > BLOCK), "some flushes should span several blocks");
    (segs[0].clone(), bytes, fl)
}

/// The keys the server holds must be exactly key(0..m) with their values.
fn assert_exactly(c: &mut redis::Connection, m: usize, total: usize, what: &str) {
    let keys: Vec<String> = (0..total).map(key).collect();
    let vals = mget(c, &keys);
    for (i, v) in vals.iter().enumerate() {
        if i < m {
            assert_eq!(v.as_deref(), Some(value(i).as_str()), "{what}: {} missing or wrong", key(i));
        } else {
            assert_eq!(v, &None, "{what}: {} present, expected only the first {m} keys", key(i));
        }
    }
    assert_eq!(dbsize(c), m as u64, "{what}: DBSIZE");
}

fn assert_no_panic(text: &str) {
    assert!(!text.contains("panicked"), "the server panicked:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// Torn tails.
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_after_the_last_flush_is_a_torn_tail() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    let dir = DataDir::new("torn-garbage");
    write_keys(&dir.path, 0, N);
    let (seg, bytes, _) = only_segment(&dir.path, N);
    let end = written_end(&bytes);
    assert!(end + BLOCK <= bytes.len(), "room for a torn block inside the preallocated segment");
    // A half-written next flush: non-zero bytes in the block after the last flush.
    let mut rng = StdRng::seed_from_u64(seed());
    let mut damaged = bytes.clone();
    for b in &mut damaged[end..end + BLOCK] {
        *b = rng.gen_range(1..=255);
    }
    std::fs::write(&seg, &damaged).unwrap();

    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "recovery_torn_tails"), 1, "{i:?}");
    assert_eq!(info_u64(&i, "recovery_corrupt_segments"), 0, "{i:?}");
    assert_eq!(info_u64(&i, "recovery_keys_loaded"), N as u64, "{i:?}");
    assert_exactly(&mut c, N, N + 1, "after a torn tail");
    // The torn bytes were cut off (recovery acts before anything new is written).
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, end, "segment truncated at the torn flush");
    let _: () = redis::cmd("SET").arg(key(N)).arg(value(N)).query(&mut c).unwrap();
    drop(c);
    stop(&mut server);

    server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    assert_eq!(info_u64(&info(&mut c), "recovery_torn_tails"), 0, "the log is clean after the repair");
    assert_exactly(&mut c, N + 1, N + 2, "after the repair and one more write");
    assert_no_panic(&server.log_text());
    drop(c);
    stop(&mut server);
}

/// A multi-block last flush whose final block never reached the disk: the surviving blocks
/// hold valid-looking records, but the flush's declared length is not met, so the whole flush
/// is dropped.
#[test]
fn multi_block_flush_missing_its_last_block_is_dropped_whole() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    let dir = DataDir::new("torn-multiblock");
    // key(N-1) = key(19): 19 % 7 == 5, a 9000-byte value: a 3-block flush.
    write_keys(&dir.path, 0, N);
    let (seg, mut bytes, fl) = only_segment(&dir.path, N);
    let last = *fl.last().unwrap();
    assert_eq!((last.end - last.offset) / BLOCK, 3, "last flush spans 3 blocks: {last:?}");
    bytes[last.end - BLOCK..last.end].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    assert_eq!(info_u64(&info(&mut c), "recovery_torn_tails"), 1);
    assert_exactly(&mut c, N - 1, N, "last flush torn");
    drop(c);
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// Mid-log corruption.
// ---------------------------------------------------------------------------------------------

#[test]
fn mid_log_corruption_strict_refuses_and_changes_nothing() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    let dir = DataDir::new("corrupt-strict");
    write_keys(&dir.path, 0, N);
    let (seg, mut bytes, fl) = only_segment(&dir.path, N);
    // Byte 8 of the first record of the first flush (its LSN field, under the checksum).
    let at = BLOCK + 40;
    assert!(at < fl[0].offset + 32 + fl[0].records_len);
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let before = snapshot(&dir.path);

    let out = run_to_exit(&server_args(&dir.path, "sync", 1, &[]), Duration::from_secs(60));
    assert!(matches!(out.code, Some(c) if c != 0), "strict recovery must refuse to start: {out:?}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let msg = &out.stderr;
    assert!(msg.contains(&name), "stderr should name the file {name}:\n{msg}");
    // The first bad frame is the record at 4096 + 32, LSN 1.
    assert!(msg.contains("offset 4128"), "stderr should give the offset of the bad record (4128):\n{msg}");
    assert!(msg.contains("LSN 1"), "stderr should give the LSN (1):\n{msg}");
    assert!(msg.contains("--recovery tolerate-corruption"), "stderr should point to the option:\n{msg}");
    assert!(!msg.contains("listening on"), "{msg}");
    assert_no_panic(msg);
    assert_eq!(snapshot(&dir.path), before, "a refused start must not change any file in the data dir");
}

#[test]
fn mid_log_corruption_tolerated_cuts_the_log_and_sets_the_rest_aside() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    const BAD: usize = 5; // 0-based: flushes 0..5 (keys 0..5) are before the damage
    let dir = DataDir::new("corrupt-tolerate");
    write_keys(&dir.path, 0, N);
    let (seg, mut bytes, fl) = only_segment(&dir.path, N);
    bytes[fl[BAD].offset + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let tolerate = ["--recovery", "tolerate-corruption"];
    let mut server = start(&dir.path, "sync", 1, &tolerate);
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "recovery_corrupt_segments"), 1, "{i:?}");
    assert_eq!(info_u64(&i, "recovery_torn_tails"), 0, "{i:?}");
    assert_exactly(&mut c, BAD, N, "tolerated corruption: the log is cut at the damaged flush");
    // The cut-off bytes (the damaged flush and all later ones) are kept aside, byte for byte.
    let aside = find_files(&dir.path, ".corrupt");
    assert_eq!(aside.len(), 1, "one .corrupt file: {aside:?}");
    let kept = std::fs::read(&aside[0]).unwrap();
    assert!(kept == bytes[fl[BAD].offset..], "the .corrupt file must hold the segment from the cut to its end");
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, fl[BAD].offset, "segment truncated at the cut");
    // New writes continue the log.
    for n in 0..3 {
        let _: () = redis::cmd("SET").arg(format!("after:{n}")).arg(n).query(&mut c).unwrap();
    }
    drop(c);
    stop(&mut server);

    // Strict again: the log is clean now.
    server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let i = info(&mut c);
    assert_eq!(info_u64(&i, "recovery_corrupt_segments"), 0, "{i:?}");
    assert_eq!(info_u64(&i, "recovery_torn_tails"), 0, "{i:?}");
    for n in 0..3 {
        assert_eq!(get(&mut c, &format!("after:{n}")), Some(n.to_string()));
    }
    assert_eq!(dbsize(&mut c), BAD as u64 + 3);
    assert_eq!(std::fs::read(&aside[0]).unwrap(), kept, "the .corrupt file is left alone");
    drop(c);
    stop(&mut server);
}

/// Damage in the very first flush under tolerate-corruption: nothing before it, the segment is
/// removed and its content kept aside; the server starts empty and the log continues cleanly.
#[test]
fn corruption_in_the_first_flush_tolerated_starts_empty() {
    if Server::own_only() {
        return;
    }
    const N: usize = 8;
    let dir = DataDir::new("corrupt-first");
    write_keys(&dir.path, 0, N);
    let (seg, mut bytes, _) = only_segment(&dir.path, N);
    bytes[BLOCK + 40] ^= 0x80;
    std::fs::write(&seg, &bytes).unwrap();
    let mut server = start(&dir.path, "sync", 1, &["--recovery", "tolerate-corruption"]);
    let mut c = server.client();
    assert_eq!(info_u64(&info(&mut c), "recovery_corrupt_segments"), 1);
    assert_exactly(&mut c, 0, N, "damage in flush 1");
    assert_eq!(find_files(&dir.path, ".corrupt").len(), 1);
    let _: () = redis::cmd("SET").arg(key(0)).arg(value(0)).query(&mut c).unwrap();
    drop(c);
    stop(&mut server);
    server = start(&dir.path, "sync", 1, &[]);
    assert_exactly(&mut server.client(), 1, N, "strict restart after the cut");
    stop(&mut server);
}

/// A segment missing from the middle of the log (LSN gap between segments) is corruption:
/// strict refuses; tolerate keeps the segments before the gap and sets the later ones aside.
#[test]
fn missing_middle_segment_is_corruption() {
    if Server::own_only() {
        return;
    }
    const N: usize = 60;
    let dir = DataDir::new("missing-segment");
    let mut server = start(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb"]);
    let mut c = server.client();
    for i in 0..N {
        let _: () = redis::cmd("SET").arg(key(i)).arg(value(i)).query(&mut c).unwrap();
    }
    drop(c);
    stop(&mut server);
    let segs = segments(&shard_dir(&dir.path, 0));
    assert!(segs.len() >= 3, "expected at least 3 segments: {segs:?}");
    // Keys in the first segment: one flush per key.
    let first = flushes(&std::fs::read(&segs[0]).unwrap()).len();
    std::fs::remove_file(&segs[1]).unwrap();
    let before = snapshot(&dir.path);

    let out =
        run_to_exit(&server_args(&dir.path, "sync", 1, &["--wal-segment-bytes", "64kb"]), Duration::from_secs(60));
    assert!(matches!(out.code, Some(c) if c != 0), "a gap in the log must be refused: {out:?}");
    assert!(out.stderr.contains("--recovery tolerate-corruption"), "{}", out.stderr);
    assert_no_panic(&out.stderr);
    assert_eq!(snapshot(&dir.path), before);

    let extra = ["--wal-segment-bytes", "64kb", "--recovery", "tolerate-corruption"];
    server = start(&dir.path, "sync", 1, &extra);
    let mut c = server.client();
    assert_eq!(info_u64(&info(&mut c), "recovery_corrupt_segments"), 1);
    assert_exactly(&mut c, first, N, "log cut at the gap");
    let aside = find_files(&dir.path, ".corrupt");
    assert_eq!(aside.len(), segs.len() - 2, "every segment after the gap is set aside: {aside:?}");
    drop(c);
    stop(&mut server);
}

// ---------------------------------------------------------------------------------------------
// Many damaged copies of one log: exact outcomes.
// ---------------------------------------------------------------------------------------------

/// A pristine single-segment log of `N` keys, one flush each.
fn pristine(name: &str, n: usize) -> (DataDir, PathBuf, Vec<u8>, Vec<Flush>) {
    let dir = DataDir::new(name);
    write_keys(&dir.path, 0, n);
    let (seg, bytes, fl) = only_segment(&dir.path, n);
    (dir, seg, bytes, fl)
}

/// Starts a strict server on `copy`; returns how many keys it serves and its torn-tail count,
/// or the refusal.
fn recover_copy(copy: &Path, total: usize, what: &str) -> Result<(usize, u64), Refused> {
    let mut p = try_start(&server_args(copy, "sync", 1, &[]))?;
    let mut c = p.client();
    let m = dbsize(&mut c) as usize;
    assert_exactly(&mut c, m, total, what);
    let torn = info_u64(&info(&mut c), "recovery_torn_tails");
    drop(c);
    assert_no_panic(&p.log_text());
    p.kill9();
    Ok((m, torn))
}

#[test]
fn truncation_at_many_offsets_recovers_exactly_the_complete_flushes() {
    if Server::own_only() {
        return;
    }
    const N: usize = 30;
    let (dir, seg, bytes, fl) = pristine("truncate-many", N);
    let end = fl.last().unwrap().end;
    let rel = seg.strip_prefix(&dir.path).unwrap().to_path_buf();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut offsets: Vec<usize> = vec![0, 1, 100, BLOCK - 1, BLOCK, BLOCK + 1, BLOCK + 32, end - 1, end];
    for f in fl.iter().take(3).chain(fl.iter().rev().take(3)) {
        offsets.extend([f.offset + 32 + f.records_len, f.end - 1, f.end]);
    }
    while offsets.len() < 40 {
        offsets.push(rng.gen_range(0..=end));
    }
    let scratch = DataDir::new("truncate-many-copy");
    for &off in &offsets {
        copy_dir(&dir.path, &scratch.path);
        let f = std::fs::OpenOptions::new().write(true).open(scratch.path.join(&rel)).unwrap();
        f.set_len(off as u64).unwrap();
        drop(f);
        // A flush is recovered iff all of it, padding included, is in the file.
        let expect_m = fl.iter().filter(|f| f.end <= off).count();
        // Where the scan stops, and whether it finds bytes there (torn) or zeros / the end of
        // the file (clean). Below one block the header is short: the file is dropped as torn.
        let base = fl.iter().filter(|f| f.end <= off).map(|f| f.end).max().unwrap_or(BLOCK);
        let clean = off >= BLOCK && bytes[base..off.min(base + BLOCK)].iter().all(|&b| b == 0);
        let what = format!("truncated at {off}");
        match recover_copy(&scratch.path, N, &what) {
            Ok((m, torn)) => {
                assert_eq!(m, expect_m, "{what}: recovered {m} flushes, expected {expect_m}");
                assert_eq!(torn, !clean as u64, "{what}: recovery_torn_tails");
            }
            Err(r) => panic!("{what}: a truncated log must always start (torn tail), got {r:?}"),
        }
    }
    eprintln!("{} truncations checked", offsets.len());
}

/// One flipped byte anywhere in the written part (or just after it). Exact outcome:
/// - in the segment header: unreadable header with data after it: corruption, refused;
/// - in the last flush: indistinguishable from a torn write: torn tail, that flush lost;
/// - in any earlier flush: a valid flush follows: corruption, refused, nothing changed;
/// - in the block right after the last flush: torn tail, nothing lost;
/// - further out in the zeros: clean.
#[test]
fn byte_flips_at_many_offsets_are_refused_or_torn_exactly_as_specified() {
    if Server::own_only() {
        return;
    }
    const N: usize = 30;
    let (dir, seg, bytes, fl) = pristine("flip-many", N);
    let end = fl.last().unwrap().end;
    let rel = seg.strip_prefix(&dir.path).unwrap().to_path_buf();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut offsets: Vec<usize> =
        vec![0, 9, 40, 100, BLOCK, BLOCK + 4, BLOCK + 8, BLOCK + 31, BLOCK + 32, end - 1, end, end + BLOCK];
    // The padding of a flush, and the last flush's header.
    let padded = fl.iter().find(|f| f.offset + 32 + f.records_len < f.end - 1).unwrap();
    offsets.extend([padded.end - 1, fl.last().unwrap().offset + 20]);
    while offsets.len() < 40 {
        offsets.push(rng.gen_range(0..end + 2 * BLOCK));
    }
    let scratch = DataDir::new("flip-many-copy");
    let (mut refused, mut torn_n, mut clean_n) = (0, 0, 0);
    for &off in &offsets {
        copy_dir(&dir.path, &scratch.path);
        let path = scratch.path.join(&rel);
        let mut damaged = bytes.clone();
        damaged[off] ^= rng.gen_range(1..=255u8);
        std::fs::write(&path, &damaged).unwrap();
        let in_flush = fl.iter().position(|f| f.offset <= off && off < f.end);
        // (recovered flushes, torn tails) when it must start; None when it must refuse.
        let expect: Option<(usize, u64)> = if off < BLOCK {
            None
        } else if let Some(k) = in_flush {
            if k == N - 1 {
                Some((N - 1, 1))
            } else {
                None
            }
        } else if off < end + BLOCK {
            Some((N, 1))
        } else {
            Some((N, 0))
        };
        let what = format!("byte {off} flipped (flush {in_flush:?})");
        let before = snapshot(&scratch.path);
        match (recover_copy(&scratch.path, N, &what), expect) {
            (Ok(got), Some(exp)) => {
                assert_eq!(got, exp, "{what}: (recovered keys, torn tails)");
                if got.1 == 1 {
                    torn_n += 1;
                } else {
                    clean_n += 1;
                }
            }
            (Err(r), None) => {
                assert!(matches!(r.code, Some(c) if c != 0), "{what}: {r:?}");
                assert!(r.stderr.contains("corruption"), "{what}: refusal should say corruption:\n{}", r.stderr);
                assert!(r.stderr.contains("--recovery tolerate-corruption"), "{what}:\n{}", r.stderr);
                assert_no_panic(&r.stderr);
                assert_eq!(snapshot(&scratch.path), before, "{what}: a refused start changed files");
                refused += 1;
            }
            (Ok(got), None) => panic!("{what}: must refuse to start (corruption), but started with {got:?}"),
            (Err(r), Some(exp)) => panic!("{what}: must start with {exp:?}, but refused: {r:?}"),
        }
    }
    eprintln!("{} flips: {refused} refused, {torn_n} torn tails, {clean_n} clean", offsets.len());
    assert!(refused > 5 && torn_n > 0, "the random offsets should cover both outcomes");
}

// ---------------------------------------------------------------------------------------------
// What tolerate-corruption keeps aside must never be deleted.
// ---------------------------------------------------------------------------------------------

/// `--recovery tolerate-corruption` promises to move the cut-off part "to a .corrupt file, never
/// deleted". A second corruption in the same segment must not overwrite the first set-aside file.
#[test]
fn second_tolerated_corruption_keeps_the_first_set_aside_bytes() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    let (dir, seg, mut bytes, fl) = pristine("corrupt-twice", N);
    let tolerate = ["--recovery", "tolerate-corruption"];
    bytes[fl[12].offset + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let mut server = start(&dir.path, "sync", 1, &tolerate);
    assert_exactly(&mut server.client(), 12, N, "first cut");
    let first_aside = std::fs::read(&find_files(&dir.path, ".corrupt")[0]).unwrap();
    assert!(first_aside == bytes[fl[12].offset..]);
    let _: () = redis::cmd("SET").arg("later").arg("1").query(&mut server.client()).unwrap();
    stop(&mut server);

    // Bit rot again, earlier in the same (now truncated) segment.
    let mut again = std::fs::read(&seg).unwrap();
    again[fl[4].offset + 40] ^= 0x01;
    std::fs::write(&seg, &again).unwrap();
    server = start(&dir.path, "sync", 1, &tolerate);
    assert_exactly(&mut server.client(), 4, N, "second cut");
    stop(&mut server);
    let kept: Vec<Vec<u8>> = find_files(&dir.path, ".corrupt").iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(
        kept.contains(&first_aside),
        "the bytes set aside by the first recovery ({} bytes) are gone; .corrupt files now: {:?}",
        first_aside.len(),
        find_files(&dir.path, ".corrupt")
    );
}

/// Tolerated corruption while the shard count changes: the new generation is built from the
/// valid prefix, and the old generation (damaged flush and every acknowledged write after it)
/// is then deleted instead of being set aside.
#[test]
fn tolerated_corruption_during_thread_change_keeps_the_damaged_log() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    let (dir, seg, mut bytes, fl) = pristine("corrupt-threads", N);
    bytes[fl[8].offset + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let before = snapshot(&dir.path);
    // Changing the shard count over a damaged log is refused even when tolerating corruption:
    // setting damage aside is done by a start with the old shard count, never by dropping it.
    let out = run_to_exit(
        &server_args(&dir.path, "sync", 2, &["--recovery", "tolerate-corruption"]),
        Duration::from_secs(60),
    );
    assert!(matches!(out.code, Some(c) if c != 0), "{out:?}");
    assert!(out.stderr.contains("--threads 1"), "the refusal names the previous shard count: {}", out.stderr);
    assert_no_panic(&out.stderr);
    assert_eq!(snapshot(&dir.path), before, "nothing on disk changes");
    // The documented way out: tolerate with the old count (sets the damage aside), then change.
    let mut server = start(&dir.path, "sync", 1, &["--recovery", "tolerate-corruption"]);
    stop(&mut server);
    let tail = &bytes[fl[8].offset..];
    let aside = find_files(&dir.path, ".corrupt");
    assert!(aside.iter().any(|p| std::fs::read(p).unwrap() == tail), "the damaged tail is kept aside: {aside:?}");
    let mut server = start(&dir.path, "sync", 2, &[]);
    let mut c = server.client();
    assert_exactly(&mut c, 8, N, "after setting the damage aside, 1 -> 2 shards");
    drop(c);
    stop(&mut server);
    let kept = find_files(&dir.path, ".corrupt");
    assert!(
        kept.iter().any(|p| std::fs::read(p).unwrap() == tail),
        "the old generation's set-aside bytes survive its removal: {kept:?}"
    );
    let _ = seg;
}

/// Strict mode refuses corruption during a shard-count change too, and touches nothing.
#[test]
fn strict_refuses_corruption_during_thread_change() {
    if Server::own_only() {
        return;
    }
    const N: usize = 20;
    let (dir, seg, mut bytes, fl) = pristine("corrupt-threads-strict", N);
    bytes[fl[8].offset + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let before = snapshot(&dir.path);
    let out = run_to_exit(&server_args(&dir.path, "sync", 2, &[]), Duration::from_secs(60));
    assert!(matches!(out.code, Some(c) if c != 0), "{out:?}");
    assert!(out.stderr.contains("--recovery tolerate-corruption"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("offset {}", fl[8].offset + 32)), "{}", out.stderr);
    assert!(out.stderr.contains("LSN 9"), "{}", out.stderr);
    assert_no_panic(&out.stderr);
    assert_eq!(snapshot(&dir.path), before);
    assert_eq!(layout(&dir.path), (1, 0), "LAYOUT unchanged");
    let _ = seg;
}
