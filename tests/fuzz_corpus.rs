//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets'
//! bodies (`ringcache::fuzzing`), so the stable test suite runs every input the fuzzer kept,
//! including the inputs that once found a bug. See `fuzz/README.md` for running the fuzzer.
//!
//! `RINGCACHE_WRITE_FUZZ_SEEDS=1 cargo test --release --test fuzz_corpus -- --ignored` rewrites
//! the hand-made seed files (`seed-*`) from the encoders, for when a format changes.

use std::path::{Path, PathBuf};

/// A fuzz target: its name (the corpus directory) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 4] = [
    ("resp_parse", ringcache::fuzzing::resp_parse),
    ("command_parse", ringcache::fuzzing::command_parse),
    ("wal_scan", ringcache::fuzzing::wal_scan),
    ("snapshot_load", ringcache::fuzzing::snapshot_load),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    v.sort();
    v
}

fn replay(target: &str, f: fn(&[u8])) {
    let dir = corpus_dir(target);
    let files = files(&dir);
    assert!(files.len() >= 5, "{}: corpus has only {} files", dir.display(), files.len());
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            panic!("{target}: {} fails (run it with `cargo fuzz run {target} {}`)", path.display(), path.display());
        }
    }
    eprintln!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn resp_parse_corpus_replays() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn command_parse_corpus_replays() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn wal_scan_corpus_replays() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn snapshot_load_corpus_replays() {
    replay(TARGETS[3].0, TARGETS[3].1);
}

/// The corpus stays small enough to keep in git.
#[test]
fn corpus_is_small() {
    let total: u64 = TARGETS
        .iter()
        .flat_map(|(t, _)| files(&corpus_dir(t)))
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert!(total < 2 * 1024 * 1024, "fuzz corpus is {total} bytes; minimize it (fuzz/README.md)");
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Hand-made starting points: real client traffic, a real segment and a real snapshot, and
/// recipes for the structured modes.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use ringcache::snapshot::format as snap;
    use ringcache::wal::format::{FlushBuf, Record, SegmentHeader};
    let mut out = Vec::new();
    let mut traffic = resp(&[b"SET", b"k", b"v", b"EX", b"100", b"NX"]);
    traffic.extend(resp(&[b"GET", b"k"]));
    traffic.extend(b"INCRBY n 9223372036854775807\r\nMSET a 1 b 2\r\nAPPEND k \"x\\x41\"\r\n");
    traffic.extend(resp(&[b"SETRANGE", b"k", b"5", b"zz"]));
    traffic.extend(resp(&[b"GETEX", b"k", b"PXAT", b"1"]));
    traffic.extend(resp(&[b"RENAME", b"a", b"c"]));
    traffic.extend(resp(&[b"EXPIRE", b"c", b"-1"]));
    traffic.extend(resp(&[b"INCRBYFLOAT", b"f", b"1.5e3"]));
    traffic.extend(resp(&[b"GETRANGE", b"k", b"-100", b"100"]));
    traffic.extend(resp(&[b"PING", b"x"]));
    for target in ["resp_parse", "command_parse"] {
        out.push((target, "seed-traffic", traffic.clone()));
        out.push((target, "seed-inline", b"set a 'b c'\r\nget \"a\"\r\n\r\n*0\r\n*-1\r\nPING\n".to_vec()));
        out.push((target, "seed-errors", b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$-5\r\n".to_vec()));
        out.push((target, "seed-nested", b"*2\r\n*1\r\n$4\r\nPING\r\n".to_vec()));
        out.push((target, "seed-counts", b"*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$0\r\n\r\n*1\r\n$1\r\n".to_vec()));
    }
    // A segment of two flushes with the real encoder (raw mode: even first byte, the magic).
    let header = SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: 10, segment_id: 0xfeed };
    let mut seg = header.to_block().expect("header");
    let mut fb = FlushBuf::new(10);
    let flushes: [&[Record]; 2] = [
        &[Record::Set { key: b"a", value: b"1", expire_at_ms: None }, Record::Del { key: b"b" }],
        &[Record::Expire { key: b"a", expire_at_ms: Some(5) }, Record::FlushAll],
    ];
    for recs in flushes {
        fb.reset(fb.next_lsn());
        for r in recs {
            fb.append(r).expect("append");
        }
        let off = seg.len() as u64;
        seg.extend_from_slice(&fb.finish(0xfeed, off).expect("finish").to_vec());
    }
    seg.resize(seg.len() + 4096, 0);
    out.push(("wal_scan", "seed-segment", seg));
    for (i, recipe) in [
        [1u8, 3, 0, 7, 0, 4, 2, 1, b'k', 1, 3, 5, b'v', b'a', b'l', b'u', b'e'].as_slice(),
        &[1, 0, 0, 1, 0, 2, 3, 3, 0, 0x10, 0x20, 9, 1, 0, 0, 2, 0x10, 0, 1, 0],
    ]
    .iter()
    .enumerate()
    {
        out.push(("wal_scan", ["seed-recipe-0", "seed-recipe-1"][i], recipe.to_vec()));
    }
    let h = snap::Header { shard_id: 0, shard_count: 1, lsn: 3, created_ms: 1, compression: snap::Compression::Lz4 };
    let mut file = Vec::new();
    let mut enc = snap::Encoder::new(&h, &mut file);
    let entries = [snap::EntryRef::new(b"k1", b"hello", None), snap::EntryRef::new(b"k2", &[7; 300], Some(u64::MAX))];
    enc.chunk(&entries[..1], &mut file).expect("chunk");
    enc.chunk(&entries[1..], &mut file).expect("chunk");
    enc.large(&snap::EntryRef::new(b"k3", &[5; 1500], Some(9)), &mut file).expect("large value");
    enc.finish(3, &mut file).expect("finish");
    // Raw mode needs an even first byte: the magic starts with 'R' (0x52).
    out.push(("snapshot_load", "seed-snapshot", file));
    out.push(("snapshot_load", "seed-recipe-0", vec![1, 0, 3, 6, 2, b'k', b'1', 0, 3, b'a', b'b', b'c', 1, 9]));
    out.push((
        "snapshot_load",
        "seed-recipe-1",
        vec![1, 1, 1, 9, 1, b'x', 4, 0, 1, 2, 0, 0, 0, 1, 0x80, 0, 2, 1, 1, 0, 0],
    ));
    out
}

#[test]
#[ignore = "writes seed files into fuzz/corpus; run with RINGCACHE_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    if std::env::var_os("RINGCACHE_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

/// The seeds in git are what the encoders produce today (a format change that forgets to
/// refresh them would leave the fuzzer starting from invalid files).
#[test]
fn seeds_are_current() {
    for (target, name, bytes) in seeds() {
        let path = corpus_dir(target).join(name);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(on_disk == bytes, "{} is stale: rewrite the seeds (see the module docs)", path.display());
    }
}
