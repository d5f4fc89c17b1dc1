//! Scenario tests of the WAL format: roundtrips, every truncation point, every bit flip,
//! mid-log corruption, stale bytes from other segments, and the recovery decision table.
//!
//! The exhaustive loops (every byte offset, every bit) run in full in release builds
//! (`scripts/test.sh` uses `--release`; about 2 s together); debug builds test a dense sample so
//! that a debug `cargo test` stays quick.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::format::{
    checksum_seed, encoded_len, frame_crc, FLUSH_HEADER_BYTES, FORMAT_VERSION, MAX_FLUSH_RECORDS_BYTES,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::*;

const SHARD_ID: u32 = 3;
const SHARD_COUNT: u32 = 8;
const FIRST_LSN: u64 = 1_000;
/// Byte offsets tested by the truncation loop: all in release, a dense sample in debug.
const CUT_STRIDE: usize = if cfg!(debug_assertions) { 7 } else { 1 };
/// Bits tested by the bit-flip loop: all in release, a sample in debug. Odd, so every bit
/// position within a byte is covered.
const FLIP_STRIDE: usize = if cfg!(debug_assertions) { 29 } else { 1 };

/// An owned record, to compare what was written with what was recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Set(Vec<u8>, Vec<u8>, Option<u64>),
    Del(Vec<u8>),
    Expire(Vec<u8>, Option<u64>),
    FlushAll,
}

impl Op {
    fn record(&self) -> Record<'_> {
        match self {
            Op::Set(k, v, t) => Record::Set { key: k, value: v, expire_at_ms: *t },
            Op::Del(k) => Record::Del { key: k },
            Op::Expire(k, t) => Record::Expire { key: k, expire_at_ms: *t },
            Op::FlushAll => Record::FlushAll,
        }
    }
}

/// A SET whose record is exactly `len` bytes (key "k", no expiry).
fn set_of_len(len: usize) -> Op {
    Op::Set(b"k".to_vec(), vec![b'v'; len - RECORD_HEADER_BYTES - 1], None)
}

/// Deterministic mix of small records of every kind.
fn small_ops(seed: u64, n: usize) -> Vec<Op> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            let key = format!("key:{seed}:{i}").into_bytes();
            match r % 7 {
                0 => Op::Del(key),
                1 => Op::Expire(key, Some(r >> 20)),
                2 => Op::Expire(key, None),
                3 => Op::Set(key, vec![(r >> 8) as u8; (r % 90) as usize], Some(1_700_000_000_000 + r % 1000)),
                _ => Op::Set(key, vec![(r >> 8) as u8; (r % 200) as usize], None),
            }
        })
        .collect()
}

/// Where one flush landed.
#[derive(Debug, Clone)]
struct FlushInfo {
    offset: usize,
    records_end: usize,
    padded_end: usize,
    first_lsn: u64,
    /// (file offset, LSN) of each record.
    records: Vec<(usize, u64)>,
}

struct Segment {
    name_lsn: u64,
    bytes: Vec<u8>,
    flushes: Vec<FlushInfo>,
}

struct Fixture {
    segments: Vec<Segment>,
    /// `ops[i]` has LSN `FIRST_LSN + i`.
    ops: Vec<Op>,
}

/// Segment ids used by the fixtures: distinct, non-zero.
fn segment_id(i: usize) -> u64 {
    0x5EED_0000_0000_0001 + (i as u64) * 0x1_0001
}

/// Writes `ops` as one flush at the end of `bytes` with the encoder, as the writer would.
fn write_flush(bytes: &mut Vec<u8>, fb: &mut FlushBuf, id: u64, ops: &[Op]) -> FlushInfo {
    let offset = bytes.len();
    fb.reset(fb.next_lsn());
    let first_lsn = fb.first_lsn();
    let mut records = Vec::new();
    for op in ops {
        let at = offset + FLUSH_HEADER_BYTES + fb.records_bytes();
        let lsn = fb.append(&op.record()).unwrap();
        records.push((at, lsn));
    }
    let records_end = offset + FLUSH_HEADER_BYTES + fb.records_bytes();
    let out = fb.finish(id, offset as u64).unwrap().to_vec();
    assert_eq!(out.len() % BLOCK_SIZE, 0);
    bytes.extend_from_slice(&out);
    FlushInfo { offset, records_end, padded_end: bytes.len(), first_lsn, records }
}

/// Builds segments of flushes (`plan[segment][flush]` = ops) with the encoder, each followed by
/// `tail_blocks` zero-filled blocks of preallocated space.
fn build(plan: &[Vec<Vec<Op>>], tail_blocks: usize) -> Fixture {
    let mut fb = FlushBuf::new(FIRST_LSN);
    let mut segments = Vec::new();
    let mut ops = Vec::new();
    for (i, flushes) in plan.iter().enumerate() {
        let header = SegmentHeader {
            shard_id: SHARD_ID,
            shard_count: SHARD_COUNT,
            first_lsn: fb.next_lsn(),
            segment_id: segment_id(i),
        };
        let mut bytes = header.to_block().unwrap();
        let mut infos = Vec::new();
        for flush in flushes {
            infos.push(write_flush(&mut bytes, &mut fb, header.segment_id, flush));
            ops.extend(flush.iter().cloned());
        }
        bytes.resize(bytes.len() + tail_blocks * BLOCK_SIZE, 0);
        segments.push(Segment { name_lsn: header.first_lsn, bytes, flushes: infos });
    }
    Fixture { segments, ops }
}

/// Three segments, eleven flushes: small ones, multi-block ones, one whose first record ends
/// exactly on a block boundary, one with no padding at all, every kind, empty keys and values.
fn standard_fixture() -> Fixture {
    let boundary = FLUSH_HEADER_BYTES;
    let plan = vec![
        vec![
            small_ops(1, 3),
            // First record fills block 1 exactly; the next starts on the boundary.
            vec![set_of_len(BLOCK_SIZE - boundary), Op::Del(b"a".to_vec()), Op::FlushAll],
            vec![Op::Set(b"big".to_vec(), vec![7; 9_000], Some(5)), Op::Expire(b"big".to_vec(), None)],
            small_ops(2, 1),
        ],
        vec![
            small_ops(3, 5),
            vec![Op::FlushAll, Op::Del(Vec::new()), Op::Expire(Vec::new(), Some(0))],
            small_ops(4, 2),
        ],
        vec![
            vec![Op::Set(Vec::new(), Vec::new(), None), Op::Set(Vec::new(), b"v".to_vec(), Some(u64::MAX))],
            small_ops(5, 4),
            // Records end exactly at the end of the block: no padding.
            vec![set_of_len(BLOCK_SIZE - boundary - 100), set_of_len(100)],
            small_ops(6, 2),
        ],
    ];
    let f = build(&plan, 1);
    let no_padding = &f.segments[2].flushes[2];
    assert_eq!(no_padding.records_end, no_padding.padded_end);
    let on_boundary = &f.segments[0].flushes[1];
    assert_eq!(on_boundary.records[1].0 % BLOCK_SIZE, 0);
    f
}

/// Replays `segments` (name LSN, bytes) from `scanner` like the I/O layer would: records
/// handed back in order, stopping once corruption is found.
fn replay<'a>(mut scanner: LogScanner, segments: &[(u64, &'a [u8])]) -> (Vec<(u64, Record<'a>)>, LogOutcome) {
    let mut out = Vec::new();
    for &(lsn, bytes) in segments {
        if scanner.corruption().is_some() {
            break;
        }
        if let Some(scan) = scanner.push(lsn, bytes).unwrap() {
            out.extend(scan.records().map(|r| (r.lsn, r.record)));
        }
    }
    (out, scanner.finish())
}

fn replay_all(f: &Fixture) -> (Vec<(u64, Record<'_>)>, LogOutcome) {
    let segs: Vec<(u64, &[u8])> = f.segments.iter().map(|s| (s.name_lsn, &s.bytes[..])).collect();
    replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &segs)
}

/// The first `n` ops of the fixture with their LSNs.
fn prefix(f: &Fixture, n: usize) -> Vec<(u64, Record<'_>)> {
    f.ops[..n].iter().enumerate().map(|(i, op)| (FIRST_LSN + i as u64, op.record())).collect()
}

/// Number of records before `lsn`.
fn before(lsn: u64) -> usize {
    (lsn - FIRST_LSN) as usize
}

/// A scanner that has already taken segments `0..s` of `f`, and the records they gave.
fn scanner_after(f: &Fixture, s: usize) -> (LogScanner, Vec<(u64, Record<'_>)>) {
    let mut scanner = LogScanner::new(SHARD_ID, SHARD_COUNT);
    let mut out = Vec::new();
    for seg in &f.segments[..s] {
        let scan = scanner.push(seg.name_lsn, &seg.bytes).unwrap().unwrap();
        out.extend(scan.records().map(|r| (r.lsn, r.record)));
    }
    (scanner, out)
}

fn torn(outcome: &LogOutcome) -> (u64, Damage) {
    match *outcome {
        LogOutcome::TornTail { segment_lsn, damage } => (segment_lsn, damage),
        ref o => panic!("expected a torn tail, got {o:?}"),
    }
}

fn corruption(outcome: &LogOutcome) -> Corruption {
    match *outcome {
        LogOutcome::Corruption(c) => c,
        ref o => panic!("expected corruption, got {o:?}"),
    }
}

/// Recomputes the checksum of the flush header at `at` (to forge checksummed bad fields).
fn reseal_flush_header(bytes: &mut [u8], at: usize, id: u64) {
    let crc = frame_crc(checksum_seed(id), &bytes[at + 4..at + FLUSH_HEADER_BYTES]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Encoding and roundtrips

#[test]
fn every_record_kind_roundtrips() {
    let big = (0..1_048_579u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>();
    let ops = vec![
        Op::Set(b"key".to_vec(), b"value".to_vec(), None),
        Op::Set(b"key".to_vec(), b"value".to_vec(), Some(1_700_000_000_123)),
        Op::Set(Vec::new(), Vec::new(), None),
        Op::Set(Vec::new(), Vec::new(), Some(0)),
        Op::Set(b"big".to_vec(), big, Some(u64::MAX)),
        Op::Set(vec![0xFF; 3000], vec![0; 10_000], None),
        Op::Del(b"key".to_vec()),
        Op::Del(Vec::new()),
        Op::Expire(b"key".to_vec(), Some(42)),
        Op::Expire(b"key".to_vec(), None),
        Op::Expire(Vec::new(), None),
        Op::FlushAll,
    ];
    // One op per flush and all ops in one flush.
    let plan = vec![ops.iter().map(|op| vec![op.clone()]).collect(), vec![ops.clone()]];
    let f = build(&plan, 2);
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, prefix(&f, f.ops.len()));
    assert_eq!(outcome, LogOutcome::Clean { next_lsn: Some(FIRST_LSN + f.ops.len() as u64) });
    // Offsets reported by the iterator are where the encoder put the records.
    let scan = scan_segment(&f.segments[0].bytes).unwrap();
    let offsets: Vec<u64> = scan.records().map(|r| r.offset).collect();
    let expected: Vec<u64> =
        f.segments[0].flushes.iter().flat_map(|fl| fl.records.iter().map(|&(o, _)| o as u64)).collect();
    assert_eq!(offsets, expected);
    assert_eq!(scan.record_count, ops.len() as u64);
    assert_eq!(scan.flush_count, ops.len() as u64);
    assert_eq!(scan.valid_end, f.segments[0].flushes.last().unwrap().padded_end as u64);
}

#[test]
fn record_sizes_follow_the_layout() {
    let r = Record::Set { key: b"0123456789abcdef", value: &[0; 256], expire_at_ms: None };
    assert_eq!(r.encoded_len().unwrap(), 24 + 16 + 256);
    let r = Record::Set { key: b"k", value: b"v", expire_at_ms: Some(1) };
    assert_eq!(r.encoded_len().unwrap(), 24 + 8 + 2);
    assert_eq!(Record::FlushAll.encoded_len().unwrap(), 24);
    assert_eq!(Record::Del { key: b"abc" }.encoded_len().unwrap(), 27);
    assert_eq!(encoded_len(MAX_KEY_BYTES, MAX_VALUE_BYTES, true).unwrap(), MAX_RECORD_BYTES);
    assert_eq!(encoded_len(MAX_KEY_BYTES + 1, 0, false), Err(EncodeError::KeyTooLarge { len: MAX_KEY_BYTES + 1 }));
    assert_eq!(
        encoded_len(0, MAX_VALUE_BYTES + 1, false),
        Err(EncodeError::ValueTooLarge { len: MAX_VALUE_BYTES + 1 })
    );
}

#[test]
fn checksum_seed_is_the_segment_id_prefix() {
    let id = 0x0123_4567_89AB_CDEFu64;
    let frame = b"some frame bytes";
    let mut whole = id.to_le_bytes().to_vec();
    whole.extend_from_slice(frame);
    assert_eq!(frame_crc(checksum_seed(id), frame), crc32fast::hash(&whole));
}

#[test]
fn flush_is_whole_blocks_and_can_be_resealed() {
    let mut fb = FlushBuf::new(7);
    assert!(fb.finish(1, BLOCK_SIZE as u64).unwrap().is_empty());
    assert_eq!(fb.padded_len_bytes(), 0);
    assert_eq!(fb.append(&Record::Del { key: b"a" }).unwrap(), 7);
    assert_eq!(fb.append(&Record::FlushAll).unwrap(), 8);
    assert_eq!(fb.next_lsn(), 9);
    assert_eq!(fb.record_count(), 2);
    assert_eq!(fb.padded_len_bytes(), BLOCK_SIZE);
    assert_eq!(fb.finish(1, 0).err(), Some(EncodeError::BadOffset { offset: 0 }));
    assert_eq!(fb.finish(1, 4097).err(), Some(EncodeError::BadOffset { offset: 4097 }));
    assert_eq!(fb.finish(0, 4096).err(), Some(EncodeError::BadHeader));

    // Sealed for segment 1 at block 1, then resealed for segment 2 at block 2, then extended.
    let header = |id| SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: 7, segment_id: id };
    let _ = fb.finish(1, BLOCK_SIZE as u64).unwrap().to_vec();
    let mut seg = header(2).to_block().unwrap();
    seg.resize(2 * BLOCK_SIZE, 0);
    fb.append(&Record::Del { key: b"b" }).unwrap();
    seg.extend_from_slice(&fb.finish(2, 2 * BLOCK_SIZE as u64).unwrap().to_vec());
    let scan = scan_segment(&seg).unwrap();
    // Block 1 is zero, so block 2 is past a hole.
    assert!(matches!(scan.end, SegmentEnd::Corrupt { damage: Damage { reason: Invalid::Hole, .. }, .. }));

    let mut seg = header(2).to_block().unwrap();
    seg.extend_from_slice(&fb.finish(2, BLOCK_SIZE as u64).unwrap().to_vec());
    let scan = scan_segment(&seg).unwrap();
    assert_eq!(scan.end, SegmentEnd::Clean);
    let keys: Vec<Record<'_>> = scan.records().map(|r| r.record).collect();
    assert_eq!(keys, vec![Record::Del { key: b"a" }, Record::FlushAll, Record::Del { key: b"b" }]);

    fb.reset(100);
    assert!(fb.is_empty());
    assert_eq!(fb.append(&Record::FlushAll).unwrap(), 100);
}

#[test]
fn flush_buffer_limits_are_enforced() {
    let mut fb = FlushBuf::new(u64::MAX);
    assert_eq!(fb.append(&Record::FlushAll), Err(EncodeError::LsnOverflow));
    assert!(fb.is_empty());
}

#[test]
fn segment_header_roundtrips_and_rejects_damage() {
    let h = SegmentHeader { shard_id: 5, shard_count: 6, first_lsn: 123_456, segment_id: 0xABCD };
    let block = h.to_block().unwrap();
    assert_eq!(block.len(), BLOCK_SIZE);
    assert_eq!(&block[..8], b"RCWALSEG");
    assert_eq!(SegmentHeader::decode(&block), Ok(h));
    assert_eq!(SegmentHeader::decode(&block[..100]), Err(HeaderError::Short { len: 100 }));
    assert_eq!(SegmentHeader::decode(&[0; BLOCK_SIZE]), Err(HeaderError::Magic));
    let mut b = block.clone();
    b[30] ^= 1;
    assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Checksum));
    let mut b = block.clone();
    b[9] ^= 1; // version field, checksum not updated: damage, not a newer version
    assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Checksum));
    let mut b = block.clone();
    b[4000] = 1;
    assert_eq!(SegmentHeader::decode(&b), Err(HeaderError::Fields));
    let bad = SegmentHeader { shard_id: 6, ..h };
    assert_eq!(bad.to_block(), Err(EncodeError::BadHeader));
    let bad = SegmentHeader { segment_id: 0, ..h };
    assert_eq!(bad.to_block(), Err(EncodeError::BadHeader));
}

#[test]
fn segment_file_names_sort_like_lsns() {
    assert_eq!(segment_file_name(42), "wal-00000000000000000042.log");
    assert_eq!(segment_file_name(u64::MAX), "wal-18446744073709551615.log");
    assert_eq!(parse_segment_file_name("wal-00000000000000000042.log"), Some(42));
    assert_eq!(parse_segment_file_name("wal-18446744073709551615.log"), Some(u64::MAX));
    assert_eq!(parse_segment_file_name("wal-99999999999999999999.log"), None);
    assert_eq!(parse_segment_file_name("wal-42.log"), None);
    assert_eq!(parse_segment_file_name("wal-0000000000000000004x.log"), None);
    assert_eq!(parse_segment_file_name("wal-+0000000000000000042.log"), None);
    assert_eq!(parse_segment_file_name("wal-00000000000000000042.log.aside"), None);
    assert!(segment_file_name(9) < segment_file_name(10));
}

// ---------------------------------------------------------------------------------------------
// Every truncation point, every bit flip

#[test]
fn truncation_at_every_byte_recovers_the_longest_valid_prefix() {
    let f = standard_fixture();
    let all = prefix(&f, f.ops.len());
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, all);
    let next_lsn = FIRST_LSN + f.ops.len() as u64;
    assert_eq!(outcome, LogOutcome::Clean { next_lsn: Some(next_lsn) });

    let mut cuts = 0;
    for (s, seg) in f.segments.iter().enumerate() {
        // Segments before `s` are whole, segment `s` is cut, later ones do not exist.
        let (scanner, earlier) = scanner_after(&f, s);
        for cut in (0..seg.bytes.len()).step_by(CUT_STRIDE) {
            cuts += 1;
            let (mut got, outcome) = replay(scanner.clone(), &[(seg.name_lsn, &seg.bytes[..cut])]);
            got.splice(0..0, earlier.iter().cloned());
            let complete = seg.flushes.iter().rev().find(|fl| fl.padded_end <= cut);
            let next_lsn = complete.map_or(seg.name_lsn, |fl| fl.first_lsn + fl.records.len() as u64);
            assert_eq!(got.len(), before(next_lsn), "cut at segment {s} byte {cut}");
            assert!(got == all[..got.len()], "cut at segment {s} byte {cut}");
            let inside = seg.flushes.iter().find(|fl| fl.offset < cut && cut < fl.padded_end);
            if cut < SEGMENT_HEADER_BYTES {
                let (segment_lsn, damage) = torn(&outcome);
                assert_eq!((segment_lsn, damage.flush_offset, damage.flush_lsn), (seg.name_lsn, 0, seg.name_lsn));
            } else if let Some(fl) = inside {
                let (segment_lsn, damage) = torn(&outcome);
                assert_eq!(segment_lsn, seg.name_lsn, "cut {cut}");
                assert_eq!((damage.flush_offset, damage.flush_lsn), (fl.offset as u64, fl.first_lsn), "cut {cut}");
            } else {
                assert_eq!(outcome, LogOutcome::Clean { next_lsn: Some(next_lsn) }, "cut {cut}");
            }
            assert!(RecoveryMode::Strict.decide(&outcome).is_ok(), "a cut is never corruption");
        }
    }
    assert!(cuts > 1000);
}

/// What a flip at `offset` of segment `s` must be reported as.
enum Expect {
    /// Damage in this flush; `at` is the first bad frame.
    Flush { flush: FlushInfo, at: usize, lsn: u64 },
    /// Damage in the segment header.
    Header,
    /// Unused space: nothing lost, nothing added.
    Unused,
}

fn expect_for(seg: &Segment, offset: usize) -> Expect {
    if offset < SEGMENT_HEADER_BYTES {
        return Expect::Header;
    }
    let Some(fl) = seg.flushes.iter().find(|fl| fl.offset <= offset && offset < fl.padded_end) else {
        return Expect::Unused;
    };
    let next_lsn = fl.first_lsn + fl.records.len() as u64;
    let (at, lsn) = if offset < fl.offset + FLUSH_HEADER_BYTES {
        (fl.offset, fl.first_lsn)
    } else if offset >= fl.records_end {
        (fl.records_end, next_lsn)
    } else {
        *fl.records.iter().rev().find(|&&(o, _)| o <= offset).unwrap()
    };
    Expect::Flush { flush: fl.clone(), at, lsn }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let f = standard_fixture();
    let all = prefix(&f, f.ops.len());
    let last = (f.segments.len() - 1, f.segments.last().unwrap().flushes.len() - 1);
    let mut flips = 0;
    for (s, seg) in f.segments.iter().enumerate() {
        let (scanner, earlier) = scanner_after(&f, s);
        let mut bytes = seg.bytes.clone();
        for bit in (0..bytes.len() * 8).step_by(FLIP_STRIDE) {
            let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
            bytes[byte] ^= mask;
            let mut segs: Vec<(u64, &[u8])> = vec![(seg.name_lsn, &bytes[..])];
            segs.extend(f.segments[s + 1..].iter().map(|g| (g.name_lsn, &g.bytes[..])));
            let (mut got, outcome) = replay(scanner.clone(), &segs);
            got.splice(0..0, earlier.iter().cloned());
            // Never a record that was not written, always a prefix.
            assert!(got.len() <= all.len() && got == all[..got.len()], "bit {bit} of segment {s}");
            flips += 1;
            match expect_for(seg, byte) {
                Expect::Unused => {
                    assert_eq!(got.len(), f.ops.len(), "bit {bit} of segment {s}");
                    assert!(!matches!(outcome, LogOutcome::Corruption(_)), "bit {bit} of segment {s}");
                }
                Expect::Header => {
                    let c = corruption(&outcome);
                    assert_eq!((c.segment_lsn, c.damage.flush_offset), (seg.name_lsn, 0), "bit {bit}");
                    assert_eq!(c.evidence, Evidence::UnreadableHeader);
                    assert!(got == earlier, "bit {bit} of segment {s}");
                }
                Expect::Flush { flush, at, lsn } => {
                    let is_last = (s, seg.flushes.iter().position(|x| x.offset == flush.offset).unwrap()) == last;
                    let (segment_lsn, damage) = if is_last {
                        torn(&outcome)
                    } else {
                        let c = corruption(&outcome);
                        (c.segment_lsn, c.damage)
                    };
                    let here = format!("bit {bit} of segment {s}: {damage:?}");
                    assert_eq!(segment_lsn, seg.name_lsn, "{here}");
                    assert_eq!((damage.offset, damage.lsn), (at as u64, lsn), "{here}");
                    assert_eq!(
                        (damage.flush_offset, damage.flush_lsn),
                        (flush.offset as u64, flush.first_lsn),
                        "{here}"
                    );
                    assert_eq!(got.len(), before(flush.first_lsn), "{here}");
                }
            }
            bytes[byte] ^= mask;
        }
    }
    assert!(flips > 10_000);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[test]
fn damage_in_an_early_flush_is_corruption_at_the_first_bad_record() {
    let mut f = standard_fixture();
    let fl = f.segments[0].flushes[1].clone();
    let (rec_at, rec_lsn) = fl.records[1];
    f.segments[0].bytes[rec_at + RECORD_HEADER_BYTES] ^= 0x40; // the key of the 2nd record
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, prefix(&f, before(fl.first_lsn)), "the whole damaged flush is dropped");
    let c = corruption(&outcome);
    let next = &f.segments[0].flushes[2];
    assert_eq!(
        c,
        Corruption {
            segment_lsn: FIRST_LSN,
            damage: Damage {
                offset: rec_at as u64,
                lsn: rec_lsn,
                flush_offset: fl.offset as u64,
                flush_lsn: fl.first_lsn,
                reason: Invalid::RecordChecksum,
            },
            evidence: Evidence::LaterFlush { offset: next.offset as u64, first_lsn: next.first_lsn },
        }
    );
    assert_eq!(RecoveryMode::Strict.decide(&outcome), Err(WalError::Corruption(c)));
    assert_eq!(
        RecoveryMode::TolerateCorruption.decide(&outcome),
        Ok(RecoveryAction::SetAsideFrom { segment_lsn: FIRST_LSN, offset: fl.offset as u64, next_lsn: fl.first_lsn })
    );
    let msg = WalError::Corruption(c).to_string();
    assert!(msg.contains("wal-00000000000000001000.log") && msg.contains("checksum"), "{msg}");
}

#[test]
fn damage_in_the_last_flush_of_a_segment_followed_by_another_is_corruption() {
    let mut f = standard_fixture();
    let fl = f.segments[1].flushes.last().unwrap().clone();
    f.segments[1].bytes[fl.records[0].0 + 30] ^= 1;
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, prefix(&f, before(fl.first_lsn)));
    let c = corruption(&outcome);
    assert_eq!(c.segment_lsn, f.segments[1].name_lsn);
    assert_eq!(c.evidence, Evidence::LaterSegment { segment_lsn: f.segments[2].name_lsn });
}

#[test]
fn damage_in_the_last_flush_is_a_torn_tail() {
    let mut f = standard_fixture();
    let seg = f.segments.last_mut().unwrap();
    let fl = seg.flushes.last().unwrap().clone();
    seg.bytes[fl.records[1].0 + 4] ^= 0x10; // length field of the 2nd record
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, prefix(&f, before(fl.first_lsn)));
    let (segment_lsn, damage) = torn(&outcome);
    assert_eq!(segment_lsn, f.segments[2].name_lsn);
    assert_eq!((damage.offset, damage.lsn), (fl.records[1].0 as u64, fl.records[1].1));
    for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
        assert_eq!(
            mode.decide(&outcome),
            Ok(RecoveryAction::TruncateTail { segment_lsn, offset: fl.offset as u64, next_lsn: fl.first_lsn })
        );
    }
}

#[test]
fn torn_flush_whose_surviving_part_ends_on_a_block_boundary_is_not_applied() {
    // The flush's first record fills its first block; the second block never reached the disk
    // (preallocated zeros). Every record in the surviving block is valid on its own.
    let plan = vec![vec![small_ops(1, 2), vec![set_of_len(BLOCK_SIZE - FLUSH_HEADER_BYTES), Op::FlushAll]]];
    let mut f = build(&plan, 2);
    let fl = f.segments[0].flushes[1].clone();
    assert_eq!(fl.padded_end - fl.offset, 2 * BLOCK_SIZE);
    f.segments[0].bytes[fl.offset + BLOCK_SIZE..fl.padded_end].fill(0);
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, prefix(&f, 2));
    let (_, damage) = torn(&outcome);
    assert_eq!(damage.reason, Invalid::RecordZeroed);
    assert_eq!((damage.offset, damage.lsn), ((fl.offset + BLOCK_SIZE) as u64, fl.first_lsn + 1));
    assert_eq!((damage.flush_offset, damage.flush_lsn), (fl.offset as u64, fl.first_lsn));

    // Same with the file ending there (a non-preallocated file).
    let cut = &f.segments[0].bytes[..fl.offset + BLOCK_SIZE];
    let scan = scan_segment(cut).unwrap();
    assert_eq!(scan.records().count(), 2);
    assert!(matches!(scan.end, SegmentEnd::Torn(Damage { reason: Invalid::Truncated, .. })));
}

#[test]
fn a_zeroed_flush_before_valid_ones_is_a_hole() {
    let mut f = standard_fixture();
    let fl = f.segments[0].flushes[1].clone();
    f.segments[0].bytes[fl.offset..fl.padded_end].fill(0);
    let (got, outcome) = replay_all(&f);
    assert_eq!(got, prefix(&f, before(fl.first_lsn)));
    let c = corruption(&outcome);
    assert_eq!(c.damage.reason, Invalid::Hole);
    assert_eq!(c.damage.offset, fl.offset as u64);
}

#[test]
fn lsn_gap_inside_a_segment_is_corruption() {
    let id = segment_id(0);
    let header = SegmentHeader { shard_id: SHARD_ID, shard_count: SHARD_COUNT, first_lsn: 10, segment_id: id };
    let mut seg = header.to_block().unwrap();
    let mut fb = FlushBuf::new(10);
    write_flush(&mut seg, &mut fb, id, &small_ops(1, 3));
    fb.reset(14); // skips LSN 13
    fb.append(&Record::FlushAll).unwrap();
    let at = seg.len() as u64;
    seg.extend_from_slice(&fb.finish(id, at).unwrap().to_vec());
    let scan = scan_segment(&seg).unwrap();
    assert_eq!(scan.records().count(), 3);
    let SegmentEnd::Corrupt { damage, later } = scan.end else { panic!("{:?}", scan.end) };
    assert_eq!(damage.reason, Invalid::LsnGap { expected: 13, found: 14 });
    assert_eq!(later, LaterFlush { offset: at, first_lsn: 14 });
}

#[test]
fn lsn_gap_between_segments_is_corruption() {
    let f = standard_fixture();
    let segs = [(f.segments[0].name_lsn, &f.segments[0].bytes[..]), (f.segments[2].name_lsn, &f.segments[2].bytes[..])];
    let (got, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &segs);
    let seg1 = f.segments[1].name_lsn;
    assert_eq!(got, prefix(&f, before(seg1)));
    let c = corruption(&outcome);
    assert_eq!(c.segment_lsn, f.segments[2].name_lsn);
    assert_eq!(c.damage.reason, Invalid::LsnGap { expected: seg1, found: f.segments[2].name_lsn });
    assert_eq!((c.damage.flush_offset, c.damage.flush_lsn), (0, seg1));
}

#[test]
fn a_torn_tail_superseded_by_the_next_segment_is_clean() {
    // A recovery dropped segment 0's torn last flush and started segment 1 at its LSN without
    // truncating segment 0 first.
    let plan = vec![vec![small_ops(1, 2), small_ops(2, 3)]];
    let mut f = build(&plan, 1);
    let torn_flush = f.segments[0].flushes[1].clone();
    f.segments[0].bytes[torn_flush.records[2].0] ^= 1;
    let id = segment_id(9);
    let header =
        SegmentHeader { shard_id: SHARD_ID, shard_count: SHARD_COUNT, first_lsn: torn_flush.first_lsn, segment_id: id };
    let mut seg1 = header.to_block().unwrap();
    let mut fb = FlushBuf::new(torn_flush.first_lsn);
    write_flush(&mut seg1, &mut fb, id, &[Op::FlushAll]);
    let segs = [(f.segments[0].name_lsn, &f.segments[0].bytes[..]), (torn_flush.first_lsn, &seg1[..])];
    let (got, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &segs);
    let mut expected = prefix(&f, 2);
    expected.push((torn_flush.first_lsn, Record::FlushAll));
    assert_eq!(got, expected);
    assert_eq!(outcome, LogOutcome::Clean { next_lsn: Some(torn_flush.first_lsn + 1) });
}

#[test]
fn stale_flushes_of_another_segment_after_the_valid_end_are_rejected() {
    // Segment B continues segment A's history with exactly A's layout but another id. Its
    // later flushes are copied over A's unused space: right offsets, right LSNs, right
    // lengths. Only the checksum seed tells them apart.
    let plan = vec![vec![small_ops(1, 3), small_ops(2, 2), small_ops(3, 4), small_ops(4, 1)]];
    let a = build(&plan, 2);
    let mut b_plan = build(&plan, 2);
    // Rebuild B with another id: same ops, same offsets.
    let b_id = segment_id(77);
    let mut fb = FlushBuf::new(FIRST_LSN);
    let header = SegmentHeader { shard_id: SHARD_ID, shard_count: SHARD_COUNT, first_lsn: FIRST_LSN, segment_id: b_id };
    let mut b = header.to_block().unwrap();
    for ops in &plan[0] {
        write_flush(&mut b, &mut fb, b_id, ops);
    }
    b_plan.segments[0].bytes = b;
    let b = &b_plan.segments[0].bytes;

    let keep = a.segments[0].flushes[1].padded_end;
    let mut mixed = a.segments[0].bytes.clone();
    mixed[keep..b.len()].copy_from_slice(&b[keep..]);
    let (got, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &[(FIRST_LSN, &mixed[..])]);
    assert_eq!(got, prefix(&a, 5));
    let (_, damage) = torn(&outcome);
    assert_eq!((damage.flush_offset, damage.reason), (keep as u64, Invalid::FlushHeader));

    // A recycled file: the new segment's header and first flush over an old segment's blocks.
    let old = &b_plan.segments[0].bytes;
    let mut recycled = old.clone();
    let new = &a.segments[0].bytes[..a.segments[0].flushes[0].padded_end];
    recycled[..new.len()].copy_from_slice(new);
    let (got, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &[(FIRST_LSN, &recycled[..])]);
    assert_eq!(got, prefix(&a, 3));
    assert!(matches!(outcome, LogOutcome::TornTail { .. }), "{outcome:?}");

    // A recycled file whose new header never reached the disk, as the last segment: its old
    // contents are not replayed and it is dropped whole.
    let name = FIRST_LSN + 500;
    let (got, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &[(name, &old[..])]);
    assert!(got.is_empty());
    let (segment_lsn, damage) = torn(&outcome);
    assert_eq!((segment_lsn, damage.flush_offset), (name, 0));
    assert_eq!(damage.reason, Invalid::StaleSegmentHeader { header_lsn: FIRST_LSN });
}

#[test]
fn an_unreadable_last_header_is_torn_only_when_the_segment_is_empty() {
    let f = standard_fixture();
    let s0 = &f.segments[0];
    let name = f.segments[1].name_lsn;
    // Creation interrupted: preallocated zeros, or a header write torn in its first sector.
    for blank in [vec![0u8; 4 * BLOCK_SIZE], vec![], vec![0u8; 100], {
        let mut b = vec![0u8; 4 * BLOCK_SIZE];
        b[..8].copy_from_slice(b"RCWALSEG");
        b
    }] {
        let segs = [(s0.name_lsn, &s0.bytes[..]), (name, &blank[..])];
        let (got, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &segs);
        assert_eq!(got, prefix(&f, before(name)));
        let (segment_lsn, damage) = torn(&outcome);
        assert_eq!((segment_lsn, damage.flush_offset, damage.flush_lsn), (name, 0, name));
        assert_eq!(
            RecoveryMode::Strict.decide(&outcome),
            Ok(RecoveryAction::TruncateTail { segment_lsn: name, offset: 0, next_lsn: name })
        );
    }
    // The same blank segment followed by another one is corruption.
    let blank = vec![0u8; BLOCK_SIZE];
    let segs = [(s0.name_lsn, &s0.bytes[..]), (name, &blank[..]), (f.segments[2].name_lsn, &f.segments[2].bytes[..])];
    let (_, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &segs);
    assert_eq!(corruption(&outcome).segment_lsn, name);
    // A damaged header in front of records: corruption even as the last segment.
    let mut s1 = f.segments[1].bytes.clone();
    s1[0] = b'X';
    let segs = [(s0.name_lsn, &s0.bytes[..]), (name, &s1[..])];
    let (_, outcome) = replay(LogScanner::new(SHARD_ID, SHARD_COUNT), &segs);
    let c = corruption(&outcome);
    assert_eq!(c.evidence, Evidence::UnreadableHeader);
    assert_eq!(c.damage.reason, Invalid::SegmentHeader(HeaderError::Magic));
}

#[test]
fn configuration_errors_are_not_corruption() {
    let f = standard_fixture();
    let s0 = &f.segments[0];
    let mut scanner = LogScanner::new(SHARD_ID + 1, SHARD_COUNT);
    assert!(matches!(scanner.push(s0.name_lsn, &s0.bytes), Err(WalError::ShardMismatch { .. })));
    let mut scanner = LogScanner::new(SHARD_ID, SHARD_COUNT * 2);
    assert!(matches!(scanner.push(s0.name_lsn, &s0.bytes), Err(WalError::ShardMismatch { .. })));

    // A well-formed header of a newer version: refuse in every mode, never set it aside.
    let mut newer = s0.bytes.clone();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&newer[..40]);
    newer[40..44].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(SegmentHeader::decode(&newer), Err(HeaderError::UnsupportedVersion(FORMAT_VERSION + 1)));
    let mut scanner = LogScanner::new(SHARD_ID, SHARD_COUNT);
    assert_eq!(
        scanner.push(s0.name_lsn, &newer).unwrap_err(),
        WalError::UnsupportedVersion { segment_lsn: s0.name_lsn, version: FORMAT_VERSION + 1 }
    );

    let mut scanner = LogScanner::new(SHARD_ID, SHARD_COUNT);
    scanner.push(s0.name_lsn, &s0.bytes).unwrap();
    assert_eq!(
        scanner.push(s0.name_lsn, &s0.bytes).unwrap_err(),
        WalError::SegmentOrder { previous_lsn: s0.name_lsn, segment_lsn: s0.name_lsn }
    );
}

#[test]
fn corrupt_lengths_are_bounded_before_use() {
    let f = standard_fixture();
    let id = segment_id(0);
    let fl = f.segments[0].flushes[0].clone();

    // Checksummed flush header declaring 4 GiB of records.
    let mut bytes = f.segments[0].bytes.clone();
    bytes[fl.offset + 24..fl.offset + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_flush_header(&mut bytes, fl.offset, id);
    let scan = scan_segment(&bytes).unwrap();
    let SegmentEnd::Corrupt { damage, .. } = scan.end else { panic!("{:?}", scan.end) };
    assert_eq!(damage.reason, Invalid::FlushFields);

    // ... declaring more records than fit in its length.
    let mut bytes = f.segments[0].bytes.clone();
    bytes[fl.offset + 28..fl.offset + 32].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_flush_header(&mut bytes, fl.offset, id);
    let SegmentEnd::Corrupt { damage, .. } = scan_segment(&bytes).unwrap().end else { panic!() };
    assert_eq!(damage.reason, Invalid::FlushFields);

    // ... declaring a length that runs past the end of the file (2 GiB).
    let mut bytes = f.segments[0].bytes.clone();
    bytes[fl.offset + 24..fl.offset + 28].copy_from_slice(&(MAX_FLUSH_RECORDS_BYTES as u32).to_le_bytes());
    reseal_flush_header(&mut bytes, fl.offset, id);
    assert!(matches!(scan_segment(&bytes).unwrap().end, SegmentEnd::Corrupt { .. }));

    // Record length fields of u32::MAX and of less than a header.
    for len in [u32::MAX, 0, 1, RECORD_HEADER_BYTES as u32 - 1, (MAX_RECORD_BYTES + 1) as u32] {
        let mut bytes = f.segments[0].bytes.clone();
        let at = fl.records[1].0;
        bytes[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        let SegmentEnd::Corrupt { damage, .. } = scan_segment(&bytes).unwrap().end else { panic!() };
        assert_eq!(damage.reason, Invalid::RecordLength, "len {len}");
        assert_eq!(damage.offset, at as u64);
    }
}

#[test]
fn checksummed_but_impossible_record_fields_are_rejected() {
    let id = segment_id(0);
    let header = SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: 1, segment_id: id };
    let good = {
        let mut seg = header.to_block().unwrap();
        let mut fb = FlushBuf::new(1);
        write_flush(&mut seg, &mut fb, id, &[Op::Del(b"key".to_vec()), Op::FlushAll]);
        seg
    };
    let rec = BLOCK_SIZE + FLUSH_HEADER_BYTES;
    let seed = checksum_seed(id);
    // (byte offset within the record, new value)
    let cases: &[(usize, &[u8])] = &[
        (16, &[0]),          // kind 0
        (16, &[9]),          // unknown kind
        (16, &[4]),          // FLUSHALL with a key
        (17, &[2]),          // unknown flag
        (17, &[1]),          // DEL with an expiry: length no longer adds up
        (18, &[1]),          // reserved byte
        (20, &[4, 0, 0, 0]), // key length past the record
        (8, &[2]),           // LSN 2 instead of 1
    ];
    for &(off, val) in cases {
        let mut seg = good.clone();
        seg[rec + off..rec + off + val.len()].copy_from_slice(val);
        let len = u32::from_le_bytes(seg[rec + 4..rec + 8].try_into().unwrap()) as usize;
        let crc = frame_crc(seed, &seg[rec + 4..rec + len]);
        seg[rec..rec + 4].copy_from_slice(&crc.to_le_bytes());
        let scan = scan_segment(&seg).unwrap();
        let SegmentEnd::Torn(damage) = scan.end else { panic!("{off}: {:?}", scan.end) };
        assert!(matches!(damage.reason, Invalid::RecordFields | Invalid::RecordLsn { .. }), "{off}: {damage:?}");
        assert_eq!(scan.records().count(), 0);
    }
}

#[test]
fn garbage_never_panics() {
    // Pseudo-random bytes after a valid header, and a valid header over random flush headers.
    let id = segment_id(0);
    let header = SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: 0, segment_id: id };
    let mut x = 0x1234_5678_9ABC_DEF1u64;
    for round in 0..200 {
        let mut seg = header.to_block().unwrap();
        for _ in 0..(3 * BLOCK_SIZE) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seg.push(x as u8);
        }
        if round % 2 == 0 {
            // A valid-looking flush header so the record parser gets garbage records.
            seg[BLOCK_SIZE + 4..BLOCK_SIZE + 8].copy_from_slice(b"RCFL");
            seg[BLOCK_SIZE + 8..BLOCK_SIZE + 16].copy_from_slice(&(BLOCK_SIZE as u64).to_le_bytes());
            seg[BLOCK_SIZE + 16..BLOCK_SIZE + 24].copy_from_slice(&0u64.to_le_bytes());
            seg[BLOCK_SIZE + 24..BLOCK_SIZE + 28].copy_from_slice(&((x % 20_000) as u32).to_le_bytes());
            seg[BLOCK_SIZE + 28..BLOCK_SIZE + 32].copy_from_slice(&((x >> 32) as u32 % 50).to_le_bytes());
            reseal_flush_header(&mut seg, BLOCK_SIZE, id);
        }
        let scan = scan_segment(&seg).unwrap();
        assert_eq!(scan.records().count() as u64, scan.record_count);
        let (_, outcome) = replay(LogScanner::new(0, 1), &[(0, &seg[..])]);
        let _ = RecoveryMode::TolerateCorruption.decide(&outcome).unwrap();
    }
}

#[test]
fn recovery_modes_follow_the_decision_table() {
    let damage = Damage { offset: 8200, lsn: 12, flush_offset: 8192, flush_lsn: 10, reason: Invalid::RecordChecksum };
    let c = Corruption { segment_lsn: 5, damage, evidence: Evidence::LaterFlush { offset: 12288, first_lsn: 14 } };
    assert_eq!(RecoveryMode::default(), RecoveryMode::Strict);
    for mode in [RecoveryMode::Strict, RecoveryMode::TolerateCorruption] {
        assert_eq!(
            mode.decide(&LogOutcome::Clean { next_lsn: Some(9) }),
            Ok(RecoveryAction::Continue { next_lsn: Some(9) })
        );
        assert_eq!(
            mode.decide(&LogOutcome::TornTail { segment_lsn: 5, damage }),
            Ok(RecoveryAction::TruncateTail { segment_lsn: 5, offset: 8192, next_lsn: 10 })
        );
    }
    assert_eq!(RecoveryMode::Strict.decide(&LogOutcome::Corruption(c)), Err(WalError::Corruption(c)));
    assert_eq!(
        RecoveryMode::TolerateCorruption.decide(&LogOutcome::Corruption(c)),
        Ok(RecoveryAction::SetAsideFrom { segment_lsn: 5, offset: 8192, next_lsn: 10 })
    );
    assert_eq!(LogScanner::new(0, 1).finish(), LogOutcome::Clean { next_lsn: None });
}

// ---- Large values: shared (not copied) values, chunked writes, bounded buffers ----

use super::file::{probe_direct_io, IoMode, WRITE_CHUNK_BYTES};

/// A value of `len` bytes whose every 4 KiB block differs (a misplaced chunk shows).
fn patterned(len: usize, salt: u8) -> bytes::Bytes {
    (0..len).map(|i| (i / 4093) as u8 ^ (i as u8).wrapping_mul(31) ^ salt).collect::<Vec<u8>>().into()
}

/// Appends `ops` to `fb`, sharing the value of every SET whose value is in `shared` (by index).
fn append_sharing(fb: &mut FlushBuf, ops: &[Op], shared: &[(usize, bytes::Bytes)]) {
    for (i, op) in ops.iter().enumerate() {
        let share = shared.iter().find(|(j, _)| *j == i).map(|(_, b)| b);
        fb.append_with(&op.record(), share).unwrap();
    }
}

/// A mix of small records and SETs of large values (shared ones at the returned indexes).
fn mixed_with_large(sizes: &[usize]) -> (Vec<Op>, Vec<(usize, bytes::Bytes)>) {
    let mut ops = small_ops(11, 5);
    let mut shared = Vec::new();
    for (n, &len) in sizes.iter().enumerate() {
        let v = patterned(len, n as u8);
        let expire = (n % 2 == 1).then_some(1_800_000_000_000);
        shared.push((ops.len(), v.clone()));
        ops.push(Op::Set(format!("big:{n}").into_bytes(), v.to_vec(), expire));
        ops.extend(small_ops(20 + n as u64, 3));
    }
    (ops, shared)
}

#[test]
fn sharing_large_values_writes_the_same_bytes_as_copying_them() {
    let (ops, shared) = mixed_with_large(&[64 << 10, 200_001, 1 << 20]);
    let mut copied = FlushBuf::new(FIRST_LSN);
    let mut sharing = FlushBuf::new(FIRST_LSN);
    append_sharing(&mut copied, &ops, &[]);
    append_sharing(&mut sharing, &ops, &shared);
    assert_eq!(sharing.shared_bytes(), (64 << 10) + 200_001 + (1 << 20));
    assert_eq!(sharing.records_bytes(), copied.records_bytes());
    // The shared values were not copied: the inline buffer is small.
    assert!(sharing.capacity_bytes() < 64 << 10, "{}", sharing.capacity_bytes());
    for (id, offset) in [(7u64, BLOCK_SIZE as u64), (0xABCD_EF01, 40 * BLOCK_SIZE as u64)] {
        let want = copied.finish(id, offset).unwrap().to_vec();
        let sealed = sharing.finish(id, offset).unwrap();
        assert!(sealed.as_contiguous().is_none());
        assert_eq!(sealed.len_bytes(), want.len());
        assert!(sealed.to_vec() == want, "sharing changed the bytes of the flush");
        // Any range, copied out as the writer's staging does, is the same bytes.
        for (from, len) in [(0, 1), (0, 4096), (4000, 70_000), (65_000, 300_000), (want.len() - 5000, 8192)] {
            let mut dst = vec![0xEE; len];
            let n = sealed.copy_to(from, &mut dst);
            let end = (from + len).min(want.len());
            assert_eq!(n, end - from);
            assert!(dst[..n] == want[from..end], "copy_to({from}, {len})");
        }
    }
    // And the scan reads back exactly the records appended.
    let mut seg =
        SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: FIRST_LSN, segment_id: 9 }.to_block().unwrap();
    seg.extend_from_slice(&sharing.finish(9, BLOCK_SIZE as u64).unwrap().to_vec());
    let scan = scan_segment(&seg).unwrap();
    assert_eq!(scan.end, SegmentEnd::Clean);
    let got: Vec<Record<'_>> = scan.records().map(|r| r.record).collect();
    let want: Vec<Record<'_>> = ops.iter().map(Op::record).collect();
    assert!(got == want);
}

#[test]
fn a_handle_that_cannot_be_the_value_is_ignored_and_the_value_copied() {
    // Only in release builds: debug builds assert that callers never do this.
    if cfg!(debug_assertions) {
        return;
    }
    let wrong = bytes::Bytes::from(vec![1u8; 70_000]);
    let mut fb = FlushBuf::new(1);
    fb.append_with(&Record::Set { key: b"k", value: &[2u8; 69_999], expire_at_ms: None }, Some(&wrong)).unwrap();
    fb.append_with(&Record::Del { key: b"k" }, Some(&wrong)).unwrap();
    assert_eq!(fb.shared_bytes(), 0);
    let scanned = {
        let mut seg = SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: 1, segment_id: 3 }.to_block().unwrap();
        seg.extend_from_slice(&fb.finish(3, BLOCK_SIZE as u64).unwrap().to_vec());
        seg
    };
    let scan = scan_segment(&scanned).unwrap();
    let first = scan.records().next().unwrap().record;
    assert_eq!(first, Record::Set { key: b"k", value: &[2u8; 69_999], expire_at_ms: None });
}

#[test]
fn a_shared_value_spanning_several_write_chunks_is_staged_chunk_by_chunk() {
    let len = 2 * WRITE_CHUNK_BYTES + 12_345;
    let (ops, shared) = mixed_with_large(&[len]);
    let mut copied = FlushBuf::new(FIRST_LSN);
    let mut sharing = FlushBuf::new(FIRST_LSN);
    append_sharing(&mut copied, &ops, &[]);
    append_sharing(&mut sharing, &ops, &shared);
    let want = copied.finish(5, BLOCK_SIZE as u64).unwrap().to_vec();
    let sealed = sharing.finish(5, BLOCK_SIZE as u64).unwrap();
    assert!(sealed.len_bytes() > 2 * WRITE_CHUNK_BYTES);
    // The writer's loop: one staging buffer, chunks in order.
    let mut staging = vec![0u8; WRITE_CHUNK_BYTES];
    let (mut done, mut chunks) = (0, 0);
    while done < sealed.len_bytes() {
        let n = (sealed.len_bytes() - done).min(WRITE_CHUNK_BYTES);
        assert_eq!(sealed.copy_to(done, &mut staging[..n]), n);
        assert!(staging[..n] == want[done..done + n], "chunk {chunks} differs");
        done += n;
        chunks += 1;
    }
    assert_eq!(chunks, 3);
}

#[test]
fn absorb_keeps_shared_values_shared_and_in_place() {
    let (first, first_shared) = mixed_with_large(&[100_000]);
    let (later, later_shared) = mixed_with_large(&[64 << 10, 300_000]);
    let mut all = first.clone();
    all.extend(later.iter().cloned());
    let mut one = FlushBuf::new(FIRST_LSN);
    append_sharing(&mut one, &all, &[]);
    let mut a = FlushBuf::new(FIRST_LSN);
    append_sharing(&mut a, &first, &first_shared);
    // A failed write sealed `a` (padding added) before the retry absorbs `b`.
    let _ = a.finish(4, BLOCK_SIZE as u64).unwrap().to_vec();
    let mut b = FlushBuf::new(a.next_lsn());
    append_sharing(&mut b, &later, &later_shared);
    a.absorb(&b);
    assert_eq!(a.shared_bytes(), 100_000 + (64 << 10) + 300_000);
    assert_eq!((a.record_count(), a.next_lsn()), (one.record_count(), one.next_lsn()));
    assert!(
        a.finish(4, 2 * BLOCK_SIZE as u64).unwrap().to_vec() == one.finish(4, 2 * BLOCK_SIZE as u64).unwrap().to_vec()
    );
    // Appending after the absorb continues the same flush.
    let extra = Op::Set(b"after".to_vec(), patterned(70_000, 9).to_vec(), None);
    let extra_shared = patterned(70_000, 9);
    a.append_with(&extra.record(), Some(&extra_shared)).unwrap();
    one.append(&extra.record()).unwrap();
    assert!(a.finish(4, BLOCK_SIZE as u64).unwrap().to_vec() == one.finish(4, BLOCK_SIZE as u64).unwrap().to_vec());
}

#[test]
fn reset_drops_shared_values_and_shrink_bounds_the_capacity() {
    let v = patterned(1 << 20, 1);
    let mut fb = FlushBuf::new(1);
    fb.append_with(&Record::Set { key: b"k", value: &v, expire_at_ms: None }, Some(&v)).unwrap();
    assert!(!v.is_unique(), "the buffer holds a reference");
    for i in 0..2000u32 {
        fb.append(&Record::Set { key: &i.to_le_bytes(), value: &[7u8; 9000], expire_at_ms: None }).unwrap();
    }
    assert!(fb.capacity_bytes() > 16 << 20);
    fb.reset(fb.next_lsn());
    assert!(v.is_unique(), "reset must drop the reference, so the store can free the value");
    fb.shrink_to(1 << 20);
    assert!(fb.capacity_bytes() <= 1 << 20, "{}", fb.capacity_bytes());
}

fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default().spawn(f).expect("start executor").join().expect("executor panicked");
}

fn log_cfg(dir: &std::path::Path, io_mode: IoMode, buffer_bytes: usize) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        shard_id: 0,
        shard_count: 1,
        durability: Durability::Sync,
        io_mode,
        segment_bytes: 64 << 10,
        buffer_bytes,
        flush_interval_ms: 5,
    }
}

#[test]
fn the_spare_buffer_gives_back_what_a_big_flush_grew_it_to() {
    on_executor(|| async {
        let disk = std::rc::Rc::new(super::sim::SimDisk::new());
        let buffer_bytes = 4 << 20;
        let log = ShardLog::on_sim_disk(log_cfg(std::path::Path::new("/sim/s"), IoMode::Direct, buffer_bytes), 1, disk);
        let stop = std::rc::Rc::new(crate::shard::LocalEvent::default());
        let flusher = glommio::spawn_local(log.clone().run_flusher(stop.clone()));
        // Copied (not shared): the pending buffer grows to hold 20 MiB.
        let big = vec![3u8; 20 << 20];
        let lsn = log.append(&Record::Set { key: b"big", value: &big, expire_at_ms: None });
        log.wait_durable(lsn).await.unwrap();
        // Shared: the log must let go of the value once it is durable.
        let shared = patterned(10 << 20, 2);
        let lsn = log.append_with(&Record::Set { key: b"shared", value: &shared, expire_at_ms: None }, Some(&shared));
        log.wait_durable(lsn).await.unwrap();
        let lsn = log.append(&Record::Del { key: b"x" });
        log.wait_durable(lsn).await.unwrap();
        stop.set();
        flusher.await;
        assert!(log.spare_capacity_bytes() <= buffer_bytes, "spare keeps {} bytes", log.spare_capacity_bytes());
        assert!(shared.is_unique(), "the log still holds the shared value after it was durable");
    });
}

#[test]
fn a_shared_value_of_several_chunks_is_written_and_recovered_in_both_io_modes() {
    let root = std::env::temp_dir().join(format!("ringcache-wal-chunks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut modes = vec![IoMode::Buffered];
    if probe_direct_io(&root).unwrap() == IoMode::Direct {
        modes.push(IoMode::Direct);
    }
    for mode in modes {
        let dir = root.join(format!("{mode:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let d2 = dir.clone();
        let value = patterned(2 * WRITE_CHUNK_BYTES + 777, 5);
        let v2 = value.clone();
        on_executor(move || async move {
            let log = ShardLog::new(log_cfg(&d2, mode, 1 << 20), 1);
            let stop = std::rc::Rc::new(crate::shard::LocalEvent::default());
            let flusher = glommio::spawn_local(log.clone().run_flusher(stop.clone()));
            log.append(&Record::Set { key: b"before", value: b"1", expire_at_ms: None });
            let lsn = log.append_with(&Record::Set { key: b"big", value: &v2, expire_at_ms: Some(9 << 40) }, Some(&v2));
            log.append(&Record::Del { key: b"before" });
            log.wait_durable(lsn + 1).await.unwrap();
            assert!(log.stats().bytes_written > 2 * WRITE_CHUNK_BYTES as u64);
            stop.set();
            flusher.await;
        });
        let mut stats = replay::RecoveryStats::default();
        let mut got = Vec::new();
        let next = replay::replay_dir(&dir, 0, 1, RecoveryMode::Strict, true, 0, &mut stats, |r| match r {
            Record::Set { key, value, .. } => got.push((key.to_vec(), Some(value.to_vec()))),
            Record::Del { key } => got.push((key.to_vec(), None)),
            other => panic!("unexpected {other:?}"),
        })
        .unwrap();
        assert_eq!(next, 4, "{mode:?}");
        assert_eq!((stats.torn_tails, stats.corrupt_segments), (0, 0), "{mode:?}");
        assert_eq!(got.len(), 3, "{mode:?}");
        assert_eq!(got[0], (b"before".to_vec(), Some(b"1".to_vec())));
        assert!(got[1].0 == b"big" && got[1].1.as_deref() == Some(&value[..]), "{mode:?}: the big value differs");
        assert_eq!(got[2], (b"before".to_vec(), None));
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn padding_a_large_copied_record_does_not_reallocate_the_buffer() {
    // Growing a buffer that holds a large record reallocates and copies it: twice its size
    // resident for a moment. `append` leaves room for the padding `finish` adds.
    let mut fb = FlushBuf::new(1);
    let value = vec![5u8; (20 << 20) + 1];
    fb.append(&Record::Set { key: b"k", value: &value, expire_at_ms: None }).unwrap();
    let before = fb.capacity_bytes();
    let len = fb.finish(1, BLOCK_SIZE as u64).unwrap().len_bytes();
    assert_eq!(len % BLOCK_SIZE, 0);
    assert_eq!(fb.capacity_bytes(), before, "finish grew the buffer");
}
