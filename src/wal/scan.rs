//! Scanning one segment: which flushes are valid, and what lies after the last valid one.
//!
//! [`scan_segment`] makes one pass over the bytes of a segment file. It walks flush by flush
//! from the end of the header block, verifying every flush header, record checksum, record LSN
//! and the zero padding, and stops at the first flush that is not entirely valid. A flush is the
//! unit of atomicity: records are recovered only from flushes that are valid as a whole, so a
//! command that logged several records (MSET, RENAME) is recovered entirely or not at all.
//!
//! Where the walk stops it classifies the rest of the segment (see the decision table in
//! `docs/WAL.md`):
//! - the block there is zero-filled, or the file ends: [`SegmentEnd::Clean`];
//! - it holds invalid bytes: [`SegmentEnd::Torn`] — unless a valid flush header of this segment
//!   sits at any later block boundary, which can only have been written after the damaged
//!   flush was complete and durable, so the damage hit acknowledged data:
//!   [`SegmentEnd::Corrupt`]. A zero-filled block followed by a valid flush is corrupt too.
//!
//! The scan allocates nothing. [`SegmentScan::records`] then iterates the valid prefix,
//! borrowing keys and values from the input.

use super::format::{
    align_up, checksum_seed, is_zero, parse_record, FlushHeader, HeaderError, Invalid, LogRecord, Progress,
    SegmentHeader, BLOCK_SIZE, FLUSH_HEADER_BYTES, MAX_FLUSH_RECORDS_BYTES, RECORD_HEADER_BYTES, SCAN_PROGRESS_BYTES,
    SEGMENT_HEADER_BYTES,
};

/// The first invalid thing in a segment, and where the valid log ends because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// File offset of the first bad frame: a record, or the flush header (or the segment header,
    /// offset 0) when that is what failed, or the padding.
    pub offset: u64,
    /// LSN the record at `offset` should have had (for a bad flush header or padding: the LSN of
    /// the record that would come next).
    pub lsn: u64,
    /// Start of the flush holding the damage (block aligned; 0 for the segment header): the
    /// valid log ends here, and recovery truncates here.
    pub flush_offset: u64,
    /// First LSN of that flush: the first LSN that is not recovered.
    pub flush_lsn: u64,
    /// What failed.
    pub reason: Invalid,
}

/// A valid flush header found after damage: proof that the damage hit acknowledged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaterFlush {
    /// File offset of that flush.
    pub offset: u64,
    /// Its first LSN.
    pub first_lsn: u64,
}

/// How a segment's valid flushes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Zero-filled space or the end of the file, and no valid flush after it.
    Clean,
    /// Invalid bytes with no valid flush after them: the last flush's write did not complete
    /// (or bytes from a recycled file). It was never acknowledged; drop it.
    Torn(Damage),
    /// Invalid bytes (or a hole) followed by a valid flush: acknowledged data was damaged.
    Corrupt {
        /// The first bad frame.
        damage: Damage,
        /// The valid flush that follows it.
        later: LaterFlush,
    },
}

/// What [`scan_segment`] found.
#[derive(Debug, Clone)]
pub struct SegmentScan<'a> {
    bytes: &'a [u8],
    /// The segment's header.
    pub header: SegmentHeader,
    /// End of the last valid flush (block aligned; the header's size if none): where the next
    /// flush would go.
    pub valid_end: u64,
    /// LSN after the last valid record (the header's first LSN if none).
    pub next_lsn: u64,
    /// Valid flushes.
    pub flush_count: u64,
    /// Records in the valid flushes.
    pub record_count: u64,
    /// What follows the valid flushes.
    pub end: SegmentEnd,
}

impl<'a> SegmentScan<'a> {
    /// The records of the valid flushes, in LSN order.
    pub fn records(&self) -> Records<'a> {
        let valid_end = usize::try_from(self.valid_end).unwrap_or(0).min(self.bytes.len());
        Records {
            bytes: self.bytes.get(..valid_end).unwrap_or(&[]),
            next_flush: SEGMENT_HEADER_BYTES,
            at: 0,
            flush_end: 0,
            left_in_flush: 0,
            lsn: self.header.first_lsn,
        }
    }
}

/// Validates the header and the flushes of one segment file (`bytes` is the whole file).
///
/// Errors only when the header block is unusable; what that means for recovery (a segment
/// whose creation was interrupted, or corruption) depends on the segments around it and is
/// decided by [`LogScanner`](super::LogScanner).
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan<'_>, HeaderError> {
    scan_segment_with(bytes, &mut |_| {})
}

/// [`scan_segment`], reporting to `progress` the offsets it has read everything before (at
/// least every [`SCAN_PROGRESS_BYTES`]).
pub fn scan_segment_with<'a>(bytes: &'a [u8], progress: Progress<'_>) -> Result<SegmentScan<'a>, HeaderError> {
    let header = SegmentHeader::decode(bytes)?;
    let seed = checksum_seed(header.segment_id);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut lsn = header.first_lsn;
    let mut flush_count = 0u64;
    let mut record_count = 0u64;
    let end = loop {
        match check_flush(bytes, pos, lsn, seed, progress) {
            FlushCheck::Valid { next, records } => {
                pos = next;
                progress(pos);
                // Cannot overflow: `check_flush` verified `lsn + records` fits.
                lsn = lsn.saturating_add(u64::from(records));
                flush_count += 1;
                record_count += u64::from(records);
            }
            FlushCheck::End => {
                break match find_later_flush(bytes, pos.saturating_add(BLOCK_SIZE), seed, progress) {
                    None => SegmentEnd::Clean,
                    Some(later) => {
                        let at = pos as u64;
                        let damage =
                            Damage { offset: at, lsn, flush_offset: at, flush_lsn: lsn, reason: Invalid::Hole };
                        SegmentEnd::Corrupt { damage, later }
                    }
                };
            }
            FlushCheck::Invalid(damage) => {
                // A checksummed flush header with the wrong LSN is itself the later flush.
                if let Invalid::LsnGap { found, .. } = damage.reason {
                    let later = LaterFlush { offset: damage.flush_offset, first_lsn: found };
                    break SegmentEnd::Corrupt { damage, later };
                }
                break match find_later_flush(bytes, pos.saturating_add(BLOCK_SIZE), seed, progress) {
                    None => SegmentEnd::Torn(damage),
                    Some(later) => SegmentEnd::Corrupt { damage, later },
                };
            }
        }
    };
    Ok(SegmentScan { bytes, header, valid_end: pos as u64, next_lsn: lsn, flush_count, record_count, end })
}

enum FlushCheck {
    /// A valid flush; the next one would start at `next`.
    Valid {
        next: usize,
        records: u32,
    },
    /// Zero-filled block (or end of file): nothing was written here.
    End,
    Invalid(Damage),
}

/// Validates the flush that should start at block boundary `pos` with LSN `lsn`.
fn check_flush(bytes: &[u8], pos: usize, lsn: u64, seed: u32, progress: Progress<'_>) -> FlushCheck {
    let block_end = pos.saturating_add(BLOCK_SIZE).min(bytes.len());
    if bytes.get(pos..block_end).is_none_or(is_zero) {
        return FlushCheck::End;
    }
    let at = pos as u64;
    let bad = |offset: usize, rec_lsn: u64, reason: Invalid| {
        FlushCheck::Invalid(Damage { offset: offset as u64, lsn: rec_lsn, flush_offset: at, flush_lsn: lsn, reason })
    };
    let Some(h) = FlushHeader::read(bytes, pos, seed) else {
        return bad(pos, lsn, Invalid::FlushHeader);
    };
    if h.first_lsn != lsn {
        return bad(pos, lsn, Invalid::LsnGap { expected: lsn, found: h.first_lsn });
    }
    let records_len = h.records_len as usize;
    let count = h.record_count;
    let fields_ok = count > 0
        && records_len <= MAX_FLUSH_RECORDS_BYTES
        && (count as usize).saturating_mul(RECORD_HEADER_BYTES) <= records_len
        && lsn.checked_add(u64::from(count)).is_some();
    // `pos` is at most the slice length, so these additions cannot overflow on 64-bit targets;
    // checked anyway so that no input can make them wrap.
    let end = pos.checked_add(FLUSH_HEADER_BYTES).and_then(|p| p.checked_add(records_len));
    let (Some(end), Some(padded_end), true) = (end, end.and_then(align_up), fields_ok) else {
        return bad(pos, lsn, Invalid::FlushFields);
    };
    let mut rec_at = pos + FLUSH_HEADER_BYTES;
    for i in 0..u64::from(count) {
        let rec_lsn = lsn + i;
        match parse_record(bytes, rec_at, end, Some((seed, &mut *progress)), rec_lsn) {
            Ok((_, len)) => rec_at += len,
            Err(reason) => return bad(rec_at, rec_lsn, reason),
        }
    }
    let next_lsn = lsn + u64::from(count);
    if rec_at != end {
        return bad(rec_at, next_lsn, Invalid::RecordCount);
    }
    match bytes.get(end..padded_end) {
        None => bad(end, next_lsn, Invalid::Truncated),
        Some(padding) if !is_zero(padding) => bad(end, next_lsn, Invalid::Padding),
        Some(_) => FlushCheck::Valid { next: padded_end, records: count },
    }
}

/// The first valid flush header of this segment at a block boundary at or after `from`.
/// Stale bytes fail the seeded checksum and zeros fail the magic, so this is one 4-byte
/// compare per block for a preallocated segment.
fn find_later_flush(bytes: &[u8], from: usize, seed: u32, progress: Progress<'_>) -> Option<LaterFlush> {
    let from = align_up(from)?;
    (from..bytes.len()).step_by(BLOCK_SIZE).find_map(|pos| {
        if pos % SCAN_PROGRESS_BYTES == 0 {
            progress(pos);
        }
        let h = FlushHeader::read(bytes, pos, seed)?;
        Some(LaterFlush { offset: pos as u64, first_lsn: h.first_lsn })
    })
}

/// Iterator over the records of the valid flushes of a segment (see [`SegmentScan::records`]).
///
/// The bytes were verified by the scan, so this only re-parses headers; it does not recompute
/// checksums. Should it meet anything unexpected it stops rather than panic.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    /// The segment up to the end of the last valid flush.
    bytes: &'a [u8],
    next_flush: usize,
    at: usize,
    flush_end: usize,
    left_in_flush: u32,
    lsn: u64,
}

impl<'a> Records<'a> {
    /// An iterator that yields nothing.
    pub fn empty() -> Records<'a> {
        Records { bytes: &[], next_flush: 0, at: 0, flush_end: 0, left_in_flush: 0, lsn: 0 }
    }

    fn stop(&mut self) -> Option<LogRecord<'a>> {
        self.bytes = &[];
        self.left_in_flush = 0;
        None
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = LogRecord<'a>;

    fn next(&mut self) -> Option<LogRecord<'a>> {
        if self.left_in_flush == 0 {
            let pos = self.next_flush;
            if pos >= self.bytes.len() {
                return self.stop();
            }
            // The scan verified this header; the seed is not needed to read its fields.
            let Some(h) = FlushHeader::read_verified(self.bytes, pos) else {
                return self.stop();
            };
            let at = pos + FLUSH_HEADER_BYTES;
            let flush_end = at.checked_add(h.records_len as usize);
            let (Some(flush_end), true) = (flush_end, h.record_count > 0) else {
                return self.stop();
            };
            let Some(next_flush) = align_up(flush_end) else {
                return self.stop();
            };
            self.at = at;
            self.flush_end = flush_end;
            self.next_flush = next_flush;
            self.left_in_flush = h.record_count;
        }
        let Ok((record, len)) = parse_record(self.bytes, self.at, self.flush_end, None, self.lsn) else {
            return self.stop();
        };
        let item = LogRecord { lsn: self.lsn, offset: self.at as u64, record };
        self.at += len;
        self.left_in_flush -= 1;
        self.lsn = self.lsn.wrapping_add(1);
        Some(item)
    }
}
