//! Corruption sweeps over files the real server wrote: a WAL segment and a snapshot, each cut
//! at every byte offset and hit by a bit flip at every byte offset, then read back by the same
//! code recovery uses (`LogScanner` for the log, `snapshot::load::load_newest` with its mmap
//! and checked rkyv access for snapshots).
//!
//! For every damaged copy: no panic; every value recovered is one that was written for that
//! key (never a value that was never written); and the damage is classified as the recovery
//! decision table in `docs/WAL.md` says: a cut is a torn tail or a clean end (never
//! corruption), a flip in the last flush is a torn tail, a flip anywhere before it is
//! corruption, a flip in unused space changes nothing. A snapshot is renamed into place only
//! once complete and synced, so any damage to one is corruption: it is rejected whole (the
//! previous one is used) and nothing of it stays in the store.
//!
//! The unit tests in `src/wal/tests.rs` and `src/snapshot/format.rs` sweep fixtures built with
//! the encoders; these sweep what the I/O layer really wrote (headers, padding, preallocated
//! space, multi-block flushes, a multi-record MSET flush).

mod common;
mod durability_common;

use durability_common::*;

use ringcache::store::Store;
use ringcache::wal::{LogOutcome, LogScanner, Record};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Every value ever written to each key (a key never written has no entry).
type Written = HashMap<Vec<u8>, HashSet<Vec<u8>>>;

/// Value number `i`; every fifth is `big_bytes` long or more.
fn value(i: usize, big_bytes: usize) -> Vec<u8> {
    let len = match i % 5 {
        2 => big_bytes + i * 7,
        _ => 8 + (i * 37) % 200,
    };
    let mut v = format!("v{i}:").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

/// Runs a mixed workload one command at a time (one flush per command, MSET's records in one
/// flush) and returns what was written. Overwrites, deletes, counters and expiries included.
/// Values of `big_bytes` make flushes span several 4 KiB blocks.
fn workload(c: &mut redis::Connection, big_bytes: usize) -> Written {
    let mut w = Written::new();
    let put = |w: &mut Written, k: &str, v: Vec<u8>| {
        w.entry(k.as_bytes().to_vec()).or_default().insert(v);
    };
    for i in 0..24 {
        let k = format!("k{}", i % 16);
        let v = value(i, big_bytes);
        let _: () = redis::cmd("SET").arg(&k).arg(&v).query(c).unwrap();
        put(&mut w, &k, v);
    }
    let _: () = redis::cmd("DEL").arg("k3").query(c).unwrap();
    for n in 1..=5 {
        let _: i64 = redis::cmd("INCR").arg("counter").query(c).unwrap();
        put(&mut w, "counter", n.to_string().into_bytes());
    }
    let _: () = redis::cmd("MSET")
        .arg("m1")
        .arg("one")
        .arg("m2")
        .arg(value(7, big_bytes))
        .arg("m3")
        .arg("three")
        .query(c)
        .unwrap();
    put(&mut w, "m1", b"one".to_vec());
    put(&mut w, "m2", value(7, big_bytes));
    put(&mut w, "m3", b"three".to_vec());
    let _: i64 = redis::cmd("EXPIRE").arg("m1").arg(100_000).query(c).unwrap();
    let _: i64 = redis::cmd("APPEND").arg("k5").arg("+tail").query(c).unwrap();
    let mut appended = value(21, big_bytes);
    appended.extend_from_slice(b"+tail");
    put(&mut w, "k5", appended);
    w
}

/// Replays records into a map the way recovery applies them.
fn apply(state: &mut HashMap<Vec<u8>, Vec<u8>>, r: &Record<'_>) {
    match *r {
        Record::Set { key, value, .. } => {
            state.insert(key.to_vec(), value.to_vec());
        }
        Record::Del { key } => {
            state.remove(key);
        }
        Record::Expire { .. } => {}
        Record::FlushAll => state.clear(),
    }
}

/// What recovery reads from one segment: the records handed back and the outcome.
fn recover(name_lsn: u64, bytes: &[u8]) -> (Vec<(u64, Record<'_>)>, LogOutcome) {
    let mut scanner = LogScanner::new(0, 1);
    let mut out = Vec::new();
    if let Some(scan) = scanner.push(name_lsn, bytes).expect("no configuration error") {
        out.extend(scan.records().map(|r| (r.lsn, r.record)));
    }
    (out, scanner.finish())
}

fn assert_only_written(records: &[(u64, Record<'_>)], written: &Written, what: &str) {
    let mut state = HashMap::new();
    for (_, r) in records {
        apply(&mut state, r);
    }
    for (k, v) in &state {
        let ok = written.get(k).is_some_and(|vals| vals.contains(v));
        assert!(ok, "{what}: key {:?} recovered with a value that was never written", String::from_utf8_lossy(k));
    }
}

#[test]
fn wal_segment_written_by_the_server_survives_every_cut_and_bit_flip() {
    let dir = DataDir::new("sweep-wal");
    let mut server = start(&dir.path, "sync", 1, &[]);
    let mut c = server.client();
    let written = workload(&mut c, 6000);
    drop(c);
    stop(&mut server);

    let segs = segments(&shard_dir(&dir.path, 0));
    assert_eq!(segs.len(), 1, "{segs:?}");
    let name = segs[0].file_name().unwrap().to_string_lossy().into_owned();
    let name_lsn = ringcache::wal::format::parse_segment_file_name(&name).expect("segment name");
    let pristine = std::fs::read(&segs[0]).unwrap();
    let fl = flushes(&pristine);
    let (all, outcome) = recover(name_lsn, &pristine);
    assert!(matches!(outcome, LogOutcome::Clean { .. }), "{outcome:?}");
    assert_only_written(&all, &written, "pristine");
    assert!(fl.len() >= 30 && fl.iter().any(|f| f.records > 1) && fl.iter().any(|f| f.end - f.offset > BLOCK));
    let written_end = fl.last().unwrap().end;
    // Every byte of the written part and two blocks of the preallocated space after it (the
    // rest of the 256 KiB segment is more of the same zeros).
    let swept = (written_end + 2 * BLOCK).min(pristine.len());
    // Records recovered when the log ends cleanly or torn at flush `k` (0-based): those of
    // the flushes before it.
    let records_before = |k: usize| fl[..k].iter().map(|f| f.records as usize).sum::<usize>();
    let flush_at = |offset: usize| fl.iter().position(|f| f.offset <= offset && offset < f.end);

    let (mut cuts, mut flips, mut torn, mut corrupt) = (0, 0, 0, 0);
    for cut in 0..=swept {
        let (got, outcome) = recover(name_lsn, &pristine[..cut]);
        let what = format!("cut at {cut}");
        assert!(got.len() <= all.len() && got[..] == all[..got.len()], "{what}: not a prefix");
        assert_only_written(&got, &written, &what);
        let complete = fl.iter().filter(|f| f.end <= cut).count();
        assert_eq!(got.len(), records_before(complete), "{what}: whole flushes only");
        // Inside the header block or strictly inside a flush: torn; anywhere else: clean. A cut
        // that leaves only zero bytes of a flush (its header's checksum can start with a zero
        // byte) is a zero-filled end: clean, as docs/WAL.md says of a torn write that kept only
        // zeros.
        let inside = cut < BLOCK
            || fl.iter().any(|f| f.offset < cut && cut < f.end && pristine[f.offset..cut].iter().any(|&b| b != 0));
        match outcome {
            LogOutcome::Corruption(c) => panic!("{what}: a cut is never corruption: {c}"),
            LogOutcome::TornTail { .. } => {
                assert!(inside, "{what}: torn at a flush boundary");
                torn += 1;
            }
            LogOutcome::Clean { .. } => assert!(!inside, "{what}: clean inside a flush"),
        }
        cuts += 1;
    }
    let mut bytes = pristine.clone();
    for at in 0..swept {
        let mask = 1u8 << (at % 8);
        bytes[at] ^= mask;
        let (got, outcome) = recover(name_lsn, &bytes);
        let what = format!("bit {} flipped at {at}", at % 8);
        assert!(got.len() <= all.len() && got[..] == all[..got.len()], "{what}: not a prefix");
        assert_only_written(&got, &written, &what);
        match (at < BLOCK, flush_at(at)) {
            (true, _) => {
                assert!(matches!(outcome, LogOutcome::Corruption(_)), "{what}: header damage: {outcome:?}");
                assert!(got.is_empty());
                corrupt += 1;
            }
            (false, Some(k)) if k + 1 == fl.len() => {
                assert!(matches!(outcome, LogOutcome::TornTail { .. }), "{what}: last flush: {outcome:?}");
                assert_eq!(got.len(), records_before(k), "{what}");
                torn += 1;
            }
            (false, Some(k)) => {
                let LogOutcome::Corruption(c) = outcome else {
                    panic!("{what}: flush {k} of {}: {outcome:?}", fl.len())
                };
                assert_eq!(c.damage.flush_offset as usize, fl[k].offset, "{what}: cut at the damaged flush");
                assert_eq!(got.len(), records_before(k), "{what}");
                corrupt += 1;
            }
            (false, None) => {
                // Preallocated space: nothing lost. A flip in the block at the write head looks
                // like a torn write there (harmless: the same action as a clean end).
                assert!(!matches!(outcome, LogOutcome::Corruption(_)), "{what}: unused space: {outcome:?}");
                assert_eq!(got.len(), all.len(), "{what}");
                assert!(at >= written_end);
            }
        }
        bytes[at] ^= mask;
        flips += 1;
    }
    eprintln!(
        "WAL segment, {swept} of {} bytes swept ({} flushes, {} records): {cuts} cuts and {flips} bit \
         flips, {torn} torn, {corrupt} corrupt, 0 panics, 0 unwritten values",
        pristine.len(),
        fl.len(),
        all.len()
    );
}

/// Loads the snapshot in `dir` as recovery does; the store is emptied again if a file turns
/// out bad after entries were inserted.
fn load(dir: &Path, store: &mut Store) -> Option<ringcache::snapshot::load::Loaded> {
    let now = ringcache::store::now_ms();
    ringcache::snapshot::load::load_newest(dir, 0, 1, false, store, now, &|_| true, &mut |s: &mut Store| s.clear())
        .expect("a damaged snapshot is skipped, not an error")
}

fn store_contents(store: &Store) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut m = HashMap::new();
    let mut cursor = 0;
    loop {
        cursor = store.scan(cursor, ringcache::store::now_ms(), |e| {
            m.insert(e.key().to_vec(), e.value().to_vec());
        });
        if cursor == 0 {
            return m;
        }
    }
}

#[test]
fn snapshot_written_by_the_server_survives_every_cut_and_bit_flip() {
    for compression in ["lz4", "none"] {
        let started = std::time::Instant::now();
        let dir = DataDir::new(&format!("sweep-snap-{compression}"));
        let mut server = start(&dir.path, "sync", 1, &["--snapshot-compression", compression]);
        let mut c = server.client();
        let written = workload(&mut c, 600);
        let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
        drop(c);
        stop(&mut server);
        let snaps = find_files(&dir.path, ".snap");
        assert_eq!(snaps.len(), 1, "{snaps:?}");
        let name = snaps[0].file_name().unwrap().to_owned();
        let pristine = std::fs::read(&snaps[0]).unwrap();

        let work = DataDir::new(&format!("sweep-snap-{compression}-work"));
        let file = work.path.join(&name);
        std::fs::write(&file, &pristine).unwrap();
        let mut store = Store::new(1);
        let loaded = load(&work.path, &mut store).expect("the pristine snapshot loads");
        let full = store_contents(&store);
        assert_eq!(loaded.keys as usize, full.len());
        assert!(full.len() >= 15);
        for (k, v) in &full {
            assert!(written.get(k).is_some_and(|vals| vals.contains(v)), "pristine: {k:?}");
        }
        let (header, summary) = ringcache::snapshot::format::verify(&pristine).unwrap();
        assert_eq!(header.compression == ringcache::snapshot::format::Compression::Lz4, compression == "lz4");
        let logical_end = summary.footer_offset as usize + ringcache::snapshot::format::FOOTER_BYTES;

        let (mut rejected, mut accepted) = (0, 0);
        // Damage is applied in place and undone after each load (cheaper than rewriting).
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let mut check = |expect_whole: bool, what: &str| {
            let mut store = Store::new(1);
            match load(&work.path, &mut store) {
                Some(_) => {
                    assert!(expect_whole, "{what}: a damaged snapshot was loaded");
                    assert_eq!(store_contents(&store), full, "{what}");
                    accepted += 1;
                }
                None => {
                    assert!(!expect_whole, "{what}: rejected");
                    assert!(store.is_empty(), "{what}: entries of a rejected snapshot stayed in the store");
                    rejected += 1;
                }
            }
        };
        for cut in 0..pristine.len() {
            f.set_len(cut as u64).unwrap();
            // Cutting only zero padding after the footer leaves the whole snapshot.
            check(cut >= logical_end, &format!("{compression}: cut at {cut}"));
            f.write_all_at(&pristine[cut..], cut as u64).unwrap();
        }
        for at in 0..pristine.len() {
            f.write_all_at(&[pristine[at] ^ (1 << (at % 8))], at as u64).unwrap();
            check(false, &format!("{compression}: bit flipped at {at}"));
            f.write_all_at(&pristine[at..at + 1], at as u64).unwrap();
        }
        assert_eq!(std::fs::read(&file).unwrap(), pristine);
        eprintln!(
            "snapshot ({compression}) of {} bytes, {} keys: {} cuts and {} bit flips, {rejected} rejected whole, \
             {accepted} loaded whole (cuts in the padding), 0 partial loads, 0 panics, in {:?}",
            pristine.len(),
            full.len(),
            pristine.len(),
            pristine.len(),
            started.elapsed()
        );
    }
}
