//! Bodies of the fuzz targets: one function per target, over untrusted bytes.
//!
//! The `cargo fuzz` targets in `fuzz/fuzz_targets/` are one-line wrappers around these, and
//! `tests/fuzz_corpus.rs` replays every file of the checked-in corpus (`fuzz/corpus/<target>/`)
//! through the same functions, so the stable test suite runs exactly what the fuzzer ran.
//!
//! Each function must never panic on any input; a panic (or a failed assertion below) is a
//! bug. Besides "no panic", each checks a property that only holds if the code is right:
//!
//! | target | input | property |
//! |---|---|---|
//! | [`resp_parse`] | bytes a client sends | parsing the bytes whole or split in two gives the same commands and the same error; every argument is within the limits; re-encoding a command as RESP parses back to it |
//! | [`command_parse`] | bytes a client sends | every parsed command, run against an in-memory store, writes exactly one well-formed RESP2 reply |
//! | [`wal_scan`] | a segment file, or a recipe for one | raw bytes: the scan is self-consistent; a segment written by the encoder and then truncated or hit by one burst of ≤ 32 bits: what recovery hands back is a prefix of what was written, whole flushes only, and a truncation is never called corruption |
//! | [`snapshot_load`] | a snapshot file, or a recipe for one | raw bytes: nothing is inserted unless the file verifies; a snapshot written by the encoder and then damaged the same way: every loaded entry is one that was written, and an undamaged file loads entirely |
//!
//! The first byte of `wal_scan` and `snapshot_load` inputs picks the mode (even: raw file,
//! odd: recipe), so the fuzzer can reach the deep paths that checksums hide from random bytes.
//! Damage in recipe mode is limited to one truncation or one burst of at most 4 bytes: a
//! CRC-32 detects every burst of up to 32 bits, so a record that was never written cannot
//! appear without a forged checksum (which a fuzzer that solves comparisons could produce,
//! and which no checksum prevents). Nothing here does I/O.

use crate::cmd::{self, table::Route};
use crate::resp::{Limits, Parser, Protocol, ReplyWriter};
use crate::snapshot::format as snap;
use crate::store::Store;
use crate::wal::format::{FlushBuf, Record, SegmentHeader, BLOCK_SIZE};
use crate::wal::{LogOutcome, LogScanner, RecoveryMode};
use bytes::{Bytes, BytesMut};

/// Limits used by the targets: small, so that declared lengths are exercised on both sides of
/// them without megabyte inputs, and bulks of 64 bytes or more take the large-bulk path.
const FUZZ_LIMITS: Limits = Limits { max_bulk_bytes: 4096, max_args: 64, large_bulk_min_bytes: 64 };
/// Largest value a fuzzed command may create (SETRANGE/APPEND past it must fail cleanly).
const FUZZ_MAX_VALUE_BYTES: usize = 64 * 1024;
/// Fixed clock for the targets, so that runs are reproducible.
const FUZZ_NOW_MS: u64 = 1_700_000_000_000;

/// Parses `data` as client input, whole and split in two, and checks that both agree.
pub fn resp_parse(data: &[u8]) {
    let whole = parse_pieces(data, &[]);
    // Split where the first byte says (anywhere in the input), and byte by byte for short inputs.
    // (Past 64 KiB the split matters: a line-length limit applies to what is buffered, in Redis
    // too.)
    if let Some(&b) = data.first().filter(|_| data.len() <= crate::resp::parse::MAX_LINE_BYTES) {
        let cut = usize::from(b) * data.len() / 256;
        assert_eq!(parse_pieces(data, &[cut]), whole, "split at {cut}");
    }
    if data.len() <= 64 {
        let cuts: Vec<usize> = (1..data.len()).collect();
        assert_eq!(parse_pieces(data, &cuts), whole, "byte by byte");
    }
    for args in &whole.0 {
        assert!(!args.is_empty() && args.len() <= FUZZ_LIMITS.max_args);
        assert!(args.iter().all(|a| a.len() <= FUZZ_LIMITS.max_bulk_bytes.max(crate::resp::parse::MAX_LINE_BYTES)));
        // A multibulk encoding of the command parses back to the same arguments.
        let mut wire = BytesMut::from(&encode_multibulk(args)[..]);
        let mut out = Vec::new();
        let limits = Limits { max_bulk_bytes: data.len(), ..FUZZ_LIMITS };
        Parser::new(limits).parse(&mut wire, &mut out).expect("re-encoded command parses");
        assert_eq!(out.as_slice(), std::slice::from_ref(args));
        assert!(wire.is_empty());
    }
}

/// The commands and the result of feeding `data` to one parser in pieces ending at `cuts`.
/// Stops at the first error, like a connection (which replies and closes).
fn parse_pieces(data: &[u8], cuts: &[usize]) -> (Vec<Vec<Bytes>>, Result<(), crate::resp::ParseError>) {
    let mut parser = Parser::new(FUZZ_LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.clamp(from, data.len());
        buf.extend_from_slice(&data[from..cut]);
        from = cut;
        if let Err(e) = parser.parse(&mut buf, &mut out) {
            return (out, Err(e));
        }
    }
    (out, Ok(()))
}

fn encode_multibulk(args: &[Bytes]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Parses `data` as client input and runs every command that needs no connection or server
/// state (key commands and PING/ECHO/TIME) against a fresh in-memory store, as a connection
/// would: lookup, arity check, execute. Every command must write exactly one reply.
pub fn command_parse(data: &[u8]) {
    let mut parser =
        Parser::new(Limits { max_bulk_bytes: FUZZ_MAX_VALUE_BYTES, max_args: 1024, large_bulk_min_bytes: 64 });
    let mut buf = BytesMut::from(data);
    let mut cmds = Vec::new();
    let _ = parser.parse(&mut buf, &mut cmds);
    let mut store = Store::new(0x5eed);
    let mut reply = Vec::new();
    for args in &mut cmds {
        reply.clear();
        let mut w = ReplyWriter::new(&mut reply, Protocol::Resp2);
        // The same checks, in the same order, as `conn::execute_all`.
        match cmd::lookup(&args[0]) {
            None => w.error_bytes(&cmd::unknown_command_error(args)),
            Some(spec)
                if !spec.arity_ok(args.len()) || (matches!(spec.name, "mset" | "msetnx") && args.len() % 2 == 0) =>
            {
                w.error(&cmd::arity_error(spec.name))
            }
            Some(spec) => match spec.route {
                Route::Local => cmd::server::run_local(spec, args, &mut w),
                Route::Keys => {
                    let mut cx = cmd::Exec {
                        store: &mut store,
                        wal: None,
                        now_ms: FUZZ_NOW_MS,
                        max_value_bytes: FUZZ_MAX_VALUE_BYTES,
                        observed_lsn: 0,
                    };
                    cmd::execute_keyed(spec, args, &mut cx, &mut w);
                }
                // Connection commands need a live connection and server; not fuzzed here.
                Route::Connection => continue,
            },
        }
        assert_eq!(resp2_reply_len(&reply), Some(reply.len()), "one reply for {args:?}: {reply:?}");
    }
}

/// Length of the one complete RESP2 reply at the start of `b`, if it is one.
fn resp2_reply_len(b: &[u8]) -> Option<usize> {
    let nl = memchr::memmem::find(b, b"\r\n")?;
    let line = b.get(1..nl)?;
    let rest = nl + 2;
    let int = || std::str::from_utf8(line).ok()?.parse::<i64>().ok();
    match b.first()? {
        b'+' | b'-' => (!line.contains(&b'\n')).then_some(rest),
        b':' => int().map(|_| rest),
        b'$' => match int()? {
            -1 => Some(rest),
            n if n >= 0 => {
                let end = rest.checked_add(usize::try_from(n).ok()?)?;
                (b.get(end..end + 2)? == b"\r\n").then_some(end + 2)
            }
            _ => None,
        },
        b'*' => match int()? {
            -1 => Some(rest),
            n if n >= 0 => {
                let mut at = rest;
                for _ in 0..n {
                    at += resp2_reply_len(b.get(at..)?)?;
                }
                Some(at)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Reads fuzzer bytes as a recipe: numbers and byte strings, zeros once exhausted.
struct Recipe<'a>(&'a [u8]);

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | (u16::from(self.byte()) << 8)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.byte()) % (max + 1);
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Damage applied to an encoded file in recipe mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    None,
    /// Keep only the first `n` bytes.
    Truncate(usize),
    /// XOR up to 4 bytes (`mask`, little-endian, non-zero) in at `offset`: one burst of ≤ 32 bits.
    Burst {
        offset: usize,
        mask: u32,
    },
}

impl Damage {
    fn read(r: &mut Recipe, len: usize) -> Damage {
        if len == 0 {
            return Damage::None;
        }
        let pos = (usize::from(r.u16()) << 8 | usize::from(r.byte())) % len;
        match r.byte() % 3 {
            0 => Damage::None,
            1 => Damage::Truncate(pos),
            _ => {
                let mask = u32::from_le_bytes([r.byte(), r.byte(), r.byte(), r.byte()]);
                if mask == 0 {
                    Damage::None
                } else {
                    Damage::Burst { offset: pos, mask }
                }
            }
        }
    }

    fn apply(self, file: &mut Vec<u8>) {
        match self {
            Damage::None => {}
            Damage::Truncate(n) => file.truncate(n),
            Damage::Burst { offset, mask } => {
                for (i, m) in mask.to_le_bytes().into_iter().enumerate() {
                    if let Some(b) = file.get_mut(offset + i) {
                        *b ^= m;
                    }
                }
            }
        }
    }
}

/// An owned WAL record, to compare what was written with what recovery hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedRecord {
    Set(Vec<u8>, Vec<u8>, Option<u64>),
    Del(Vec<u8>),
    Expire(Vec<u8>, Option<u64>),
    FlushAll,
}

impl OwnedRecord {
    fn of(r: &Record<'_>) -> OwnedRecord {
        match *r {
            Record::Set { key, value, expire_at_ms } => OwnedRecord::Set(key.to_vec(), value.to_vec(), expire_at_ms),
            Record::Del { key } => OwnedRecord::Del(key.to_vec()),
            Record::Expire { key, expire_at_ms } => OwnedRecord::Expire(key.to_vec(), expire_at_ms),
            Record::FlushAll => OwnedRecord::FlushAll,
        }
    }

    fn record(&self) -> Record<'_> {
        match self {
            OwnedRecord::Set(k, v, t) => Record::Set { key: k, value: v, expire_at_ms: *t },
            OwnedRecord::Del(k) => Record::Del { key: k },
            OwnedRecord::Expire(k, t) => Record::Expire { key: k, expire_at_ms: *t },
            OwnedRecord::FlushAll => Record::FlushAll,
        }
    }
}

/// Scans `data` as a WAL segment (even first byte) or builds a segment from the recipe in
/// `data`, damages it once, and checks what recovery hands back (odd first byte).
pub fn wal_scan(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => wal_recipe(rest),
        _ => wal_raw(data),
    }
}

/// Recovery over one segment of arbitrary bytes: records of a valid prefix, in LSN order, as
/// many as the scan counted; both recovery modes decide without panicking.
fn wal_raw(data: &[u8]) {
    let name_lsn = SegmentHeader::decode(data).map_or(0, |h| h.first_lsn);
    let mut scanner = LogScanner::new(0, 1);
    if let Ok(Some(scan)) = scanner.push(name_lsn, data) {
        let mut lsn = scan.header.first_lsn;
        let mut n = 0u64;
        for r in scan.records() {
            assert_eq!(r.lsn, lsn);
            assert!(r.offset < scan.valid_end);
            lsn = lsn.wrapping_add(1);
            n += 1;
        }
        assert_eq!(n, scan.record_count);
        assert_eq!(lsn, scan.next_lsn);
    }
    let outcome = scanner.finish();
    let _ = RecoveryMode::Strict.decide(&outcome);
    let _ = RecoveryMode::TolerateCorruption.decide(&outcome);
}

fn wal_recipe(data: &[u8]) {
    let mut r = Recipe(data);
    let first_lsn = u64::from(r.u16());
    let segment_id = u64::from(r.u16()) | 1 << 40;
    let header = SegmentHeader { shard_id: 0, shard_count: 1, first_lsn, segment_id };
    let Ok(mut file) = header.to_block() else { return };
    let mut written: Vec<OwnedRecord> = Vec::new();
    // Records written before each flush boundary: recovery may stop only at one of these.
    let mut boundaries = vec![0usize];
    let mut fb = FlushBuf::new(first_lsn);
    let flushes = 1 + r.byte() % 6;
    for _ in 0..flushes {
        fb.reset(fb.next_lsn());
        for _ in 0..1 + r.byte() % 5 {
            let key = r.bytes(24);
            let expire = (r.byte() % 2 == 1).then(|| FUZZ_NOW_MS + u64::from(r.u16()));
            let rec = match r.byte() % 7 {
                0 => OwnedRecord::Del(key),
                1 => OwnedRecord::Expire(key, expire),
                2 => OwnedRecord::FlushAll,
                // Some values span blocks, so flushes of several blocks are covered.
                3 => OwnedRecord::Set(key, vec![r.byte(); usize::from(r.u16()) % 9000], expire),
                _ => OwnedRecord::Set(key, r.bytes(64), expire),
            };
            if fb.append(&rec.record()).is_err() {
                return;
            }
            written.push(rec);
        }
        let offset = file.len() as u64;
        let Ok(blocks) = fb.finish(segment_id, offset) else { return };
        file.extend_from_slice(&blocks.to_vec());
        boundaries.push(written.len());
        if r.is_empty() {
            break;
        }
    }
    // Preallocated space after the last flush.
    file.resize(file.len() + BLOCK_SIZE * usize::from(r.byte() % 3), 0);
    let damage = Damage::read(&mut r, file.len());
    damage.apply(&mut file);

    let mut scanner = LogScanner::new(0, 1);
    let mut got = Vec::new();
    if let Ok(Some(scan)) = scanner.push(first_lsn, &file) {
        got.extend(scan.records().map(|x| (x.lsn, OwnedRecord::of(&x.record))));
    }
    let outcome = scanner.finish();
    // Never a record that was not written: a prefix of the log, in order, with its LSNs.
    assert!(got.len() <= written.len(), "{damage:?}: more records than written");
    for (i, (lsn, rec)) in got.iter().enumerate() {
        assert_eq!(*lsn, first_lsn + i as u64, "{damage:?}");
        assert_eq!(rec, &written[i], "{damage:?}: record {i} was never written");
    }
    // Whole flushes only.
    assert!(boundaries.contains(&got.len()), "{damage:?}: recovery stopped inside a flush");
    match damage {
        Damage::None => {
            assert_eq!(got.len(), written.len());
            assert!(matches!(outcome, LogOutcome::Clean { .. }), "{outcome:?}");
        }
        // A cut is a torn tail or a clean end, never corruption.
        Damage::Truncate(_) => assert!(!matches!(outcome, LogOutcome::Corruption(_)), "{damage:?}: {outcome:?}"),
        Damage::Burst { .. } => {}
    }
    let _ = RecoveryMode::Strict.decide(&outcome);
    let _ = RecoveryMode::TolerateCorruption.decide(&outcome);
}

/// Loads `data` as a snapshot file (even first byte) or builds a snapshot from the recipe in
/// `data`, damages it once, and checks what loading inserts (odd first byte).
pub fn snapshot_load(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => snapshot_recipe(rest),
        _ => {
            let mut store = Store::new(1);
            if let Some(n) = load_like_recovery(data, &mut store) {
                // Keys may repeat in a file (the last wins), so at most `n` distinct keys.
                assert!(store.len() as u64 <= n);
            }
        }
    }
}

/// What recovery does with one snapshot file's bytes: verify, then insert. Returns the entries
/// inserted, or `None` if the file was rejected (entries inserted before a late rejection stay
/// in `store`, where recovery's undo would remove them).
fn load_like_recovery(data: &[u8], store: &mut Store) -> Option<u64> {
    // Mapped files are page-aligned; so is this copy.
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    snap::verify(&aligned).ok()?;
    crate::snapshot::load::insert_entries(&aligned, store, FUZZ_NOW_MS, &|_| true).ok()
}

fn snapshot_recipe(data: &[u8]) {
    let mut r = Recipe(data);
    let compression = if r.byte() % 2 == 0 { snap::Compression::None } else { snap::Compression::Lz4 };
    let per_chunk = 1 + usize::from(r.byte() % 8);
    let mut written: std::collections::HashMap<Vec<u8>, (Vec<u8>, Option<u64>)> = Default::default();
    let mut items = Vec::new();
    for _ in 0..r.byte() % 40 {
        let key = r.bytes(16);
        if written.contains_key(&key) {
            continue;
        }
        let value = if r.byte() % 4 == 0 { vec![r.byte(); usize::from(r.u16()) % 5000] } else { r.bytes(48) };
        // Some entries already expired at load time: they must not be inserted.
        let expire = match r.byte() % 3 {
            0 => None,
            1 => Some(FUZZ_NOW_MS + 1 + u64::from(r.byte())),
            _ => Some(FUZZ_NOW_MS - u64::from(r.byte())),
        };
        written.insert(key.clone(), (value.clone(), expire));
        items.push((key, value, expire));
    }
    let header = snap::Header { shard_id: 0, shard_count: 1, lsn: 7, created_ms: FUZZ_NOW_MS, compression };
    let mut file = Vec::new();
    let mut enc = snap::Encoder::new(&header, &mut file);
    for c in items.chunks(per_chunk) {
        let refs: Vec<snap::EntryRef<'_>> = c.iter().map(|(k, v, t)| snap::EntryRef::new(k, v, *t)).collect();
        // Values of 1000 bytes or more go into large-value frames (the server uses them from
        // 1 MiB on; the format does not care), so the recipes cover both kinds of frame.
        let (large, small): (Vec<_>, Vec<_>) = refs.into_iter().partition(|r| r.value.len() >= 1000);
        if enc.chunk(&small, &mut file).is_err() || large.iter().any(|r| enc.large(r, &mut file).is_err()) {
            return;
        }
    }
    if enc.finish(7, &mut file).is_err() {
        return;
    }
    let damage = Damage::read(&mut r, file.len());
    damage.apply(&mut file);

    let mut store = Store::new(2);
    let inserted = load_like_recovery(&file, &mut store);
    // Every entry in the store is one that was written, with its value and expiry.
    let mut seen = 0u64;
    let mut cursor = 0;
    loop {
        cursor = store.scan(cursor, FUZZ_NOW_MS, |e| {
            let w = written.get(e.key());
            assert_eq!(w, Some(&(e.value().to_vec(), e.expire_at_ms())), "{damage:?}: entry never written");
            seen += 1;
        });
        if cursor == 0 {
            break;
        }
    }
    let live = written.values().filter(|(_, t)| t.is_none_or(|t| t > FUZZ_NOW_MS)).count() as u64;
    if let Some(n) = inserted {
        assert_eq!(n, seen);
    }
    if damage == Damage::None {
        assert_eq!(inserted, Some(live), "an undamaged snapshot loads entirely");
    }
}
