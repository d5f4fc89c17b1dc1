//! Recovery over a shard's whole log: segment order, LSN continuity across segments, and the
//! decision a [`RecoveryMode`] makes from what the scan found.
//!
//! The I/O layer lists `wal-*.log`, sorts by the LSN in the name, and feeds each file's bytes to
//! [`LogScanner::push`] in order, replaying the records it hands back. Records are handed back
//! only when no later finding can move the cut point before them, so they can be applied as the
//! scan goes. [`LogScanner::finish`] gives the [`LogOutcome`], and [`RecoveryMode::decide`] turns
//! it into a [`RecoveryAction`] (or refuses to start). Moving and truncating files is the I/O
//! layer's job; nothing here touches a file.

use thiserror::Error;

use super::format::{is_zero, HeaderError, Invalid, Progress, SegmentHeader, BLOCK_SIZE, SCAN_PROGRESS_BYTES};
use super::scan::{scan_segment_with, Damage, LaterFlush, SegmentEnd, SegmentScan};

/// What to do when the log is damaged in the middle: data that was acknowledged is gone or
/// unreadable, and only a prefix of the log can be trusted.
///
/// Torn tails (the last flush's write did not complete) are not damage: that flush was never
/// acknowledged, and every mode drops it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to start on mid-log corruption: the operator inspects the files and decides
    /// (restore from a replica or backup, or restart with `TolerateCorruption`). Guarantees that
    /// a started shard holds every acknowledged write.
    #[default]
    Strict,
    /// Keep the longest valid prefix: truncate at the start of the flush holding the first bad
    /// record and set aside (move out of the log, never delete) everything after it, including
    /// later segments. Starts with a state the shard really had at some point (a prefix of its
    /// history, cut between flushes), but acknowledged writes after the cut are lost.
    TolerateCorruption,
}

/// What recovery must do to the files before the shard writes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryAction {
    /// The log ends cleanly. New records start at `next_lsn` (`None`: no segment was found, the
    /// starting LSN comes from the snapshot).
    Continue {
        /// LSN of the next record.
        next_lsn: Option<u64>,
    },
    /// Drop the torn last flush: truncate segment `segment_lsn` (the LSN in its file name) at
    /// `offset`, then write new records from `next_lsn`. `offset == 0` means the segment's
    /// creation was interrupted: remove the file. No later segment exists.
    TruncateTail {
        /// File-name LSN of the segment to truncate.
        segment_lsn: u64,
        /// Block-aligned offset to truncate at.
        offset: u64,
        /// LSN of the next record.
        next_lsn: u64,
    },
    /// Only under [`RecoveryMode::TolerateCorruption`]: copy bytes from `offset` of segment
    /// `segment_lsn` and every later segment out of the log directory, truncate that segment at
    /// `offset` (remove it if 0), remove the later segments, sync, then write from `next_lsn`.
    /// Must complete before anything new is written: the bytes set aside include valid flushes
    /// of the same segment that would otherwise be read again.
    SetAsideFrom {
        /// File-name LSN of the segment holding the cut.
        segment_lsn: u64,
        /// Block-aligned offset of the cut.
        offset: u64,
        /// LSN of the next record.
        next_lsn: u64,
    },
}

impl RecoveryMode {
    /// The decision table's last column (see `docs/WAL.md`).
    pub fn decide(self, outcome: &LogOutcome) -> Result<RecoveryAction, WalError> {
        match (*outcome, self) {
            (LogOutcome::Clean { next_lsn }, _) => Ok(RecoveryAction::Continue { next_lsn }),
            (LogOutcome::TornTail { segment_lsn, damage }, _) => Ok(RecoveryAction::TruncateTail {
                segment_lsn,
                offset: damage.flush_offset,
                next_lsn: damage.flush_lsn,
            }),
            (LogOutcome::Corruption(c), RecoveryMode::Strict) => Err(WalError::Corruption(c)),
            (LogOutcome::Corruption(c), RecoveryMode::TolerateCorruption) => Ok(RecoveryAction::SetAsideFrom {
                segment_lsn: c.segment_lsn,
                offset: c.damage.flush_offset,
                next_lsn: c.damage.flush_lsn,
            }),
        }
    }
}

/// What shows that damage hit acknowledged data rather than a write in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A valid flush of the same segment follows the damage.
    LaterFlush {
        /// File offset of that flush.
        offset: u64,
        /// Its first LSN.
        first_lsn: u64,
    },
    /// A later segment exists (file-name LSN `segment_lsn`) and does not continue at the damaged
    /// LSN. The writer creates a segment only once the previous one is complete and durable.
    LaterSegment {
        /// File-name LSN of that segment.
        segment_lsn: u64,
    },
    /// The segment header is unreadable but the rest of the segment is not empty, so it may hold
    /// acknowledged records that cannot be verified without the header's segment id.
    UnreadableHeader,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Evidence::LaterFlush { offset, first_lsn } => {
                write!(f, "a valid flush follows at offset {offset} (LSN {first_lsn})")
            }
            Evidence::LaterSegment { segment_lsn } => {
                write!(f, "segment wal-{segment_lsn:020}.log follows")
            }
            Evidence::UnreadableHeader => write!(f, "the segment is not empty"),
        }
    }
}

/// Damage in the middle of the log: bytes that were acknowledged as durable are invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "wal-{segment_lsn:020}.log offset {} (LSN {}): {}; {evidence}",
    damage.offset,
    damage.lsn,
    damage.reason
)]
pub struct Corruption {
    /// File-name LSN of the segment holding the first bad record.
    pub segment_lsn: u64,
    /// The first bad record (`offset`, `lsn`) and the cut point (`flush_offset`, `flush_lsn`).
    pub damage: Damage,
    /// Why this is corruption and not a torn tail.
    pub evidence: Evidence,
}

/// Errors of recovery. [`WalError::Corruption`] is the only one about damaged data; the others
/// are configuration or caller errors that no recovery mode may paper over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WalError {
    /// Mid-log corruption under [`RecoveryMode::Strict`].
    #[error("WAL corruption: {0}")]
    Corruption(Corruption),
    /// A segment with a valid header from another shard or shard count.
    #[error(
        "wal-{segment_lsn:020}.log was written by shard {found_shard_id} of {found_shard_count}; \
         this is shard {shard_id} of {shard_count}"
    )]
    ShardMismatch {
        /// File-name LSN of the segment.
        segment_lsn: u64,
        /// Shard id in its header.
        found_shard_id: u32,
        /// Shard count in its header.
        found_shard_count: u32,
        /// This shard's id.
        shard_id: u32,
        /// This server's shard count.
        shard_count: u32,
    },
    /// A segment written in a format version this build does not read.
    #[error(
        "wal-{segment_lsn:020}.log has format version {version}; this build reads version {}",
        super::format::FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// File-name LSN of the segment.
        segment_lsn: u64,
        /// Its version.
        version: u32,
    },
    /// Segments were not pushed in increasing file-name LSN order (a caller bug).
    #[error("segment wal-{segment_lsn:020}.log pushed after wal-{previous_lsn:020}.log")]
    SegmentOrder {
        /// File-name LSN of the segment pushed before.
        previous_lsn: u64,
        /// File-name LSN of the segment pushed now.
        segment_lsn: u64,
    },
}

/// How the whole log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutcome {
    /// Every record found is valid and continuous, and the log ends in unused space.
    Clean {
        /// LSN after the last record (`None` if no segment was pushed).
        next_lsn: Option<u64>,
    },
    /// The last segment ends in a torn flush, or its creation was interrupted (offset 0).
    TornTail {
        /// File-name LSN of that segment.
        segment_lsn: u64,
        /// Where the valid log ends and why.
        damage: Damage,
    },
    /// Mid-log corruption.
    Corruption(Corruption),
}

/// Damage at the end of a segment that is harmless only if nothing follows it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    segment_lsn: u64,
    damage: Damage,
}

/// Walks a shard's segments in order, checking each and the joins between them.
#[derive(Debug, Clone)]
pub struct LogScanner {
    shard_id: u32,
    shard_count: u32,
    previous_lsn: Option<u64>,
    /// LSN the next segment must start with, after a segment that ended cleanly.
    next_lsn: Option<u64>,
    /// A torn tail or unreadable header in the previous segment: a torn tail if that segment is
    /// the last, corruption if anything follows — except a segment that starts exactly at the
    /// torn LSN, which a recovery wrote after dropping that tail.
    pending: Option<Pending>,
    /// Once set, every later segment is set aside and nothing more is replayed.
    corruption: Option<Corruption>,
}

impl LogScanner {
    /// A scanner for the log of shard `shard_id` of `shard_count`.
    pub fn new(shard_id: u32, shard_count: u32) -> LogScanner {
        LogScanner { shard_id, shard_count, previous_lsn: None, next_lsn: None, pending: None, corruption: None }
    }

    /// The corruption found so far, if any. Once corruption is found, later segments need not
    /// be read: [`push`](Self::push) would set them aside.
    pub fn corruption(&self) -> Option<&Corruption> {
        self.corruption.as_ref()
    }

    /// Checks the next segment, whose file name carries `segment_lsn`, given all its bytes.
    ///
    /// Returns the scan whose [`records`](SegmentScan::records) are to be replayed, or `None` if
    /// nothing in this segment may be replayed (it is set aside, or its header is unreadable).
    pub fn push<'a>(&mut self, segment_lsn: u64, bytes: &'a [u8]) -> Result<Option<SegmentScan<'a>>, WalError> {
        self.push_with(segment_lsn, bytes, &mut |_| {})
    }

    /// [`push`](Self::push), reporting the scan's progress through the segment to `progress`
    /// (see [`Progress`]).
    pub fn push_with<'a>(
        &mut self,
        segment_lsn: u64,
        bytes: &'a [u8],
        progress: Progress<'_>,
    ) -> Result<Option<SegmentScan<'a>>, WalError> {
        if let Some(previous_lsn) = self.previous_lsn {
            if segment_lsn <= previous_lsn {
                return Err(WalError::SegmentOrder { previous_lsn, segment_lsn });
            }
        }
        self.previous_lsn = Some(segment_lsn);
        if self.corruption.is_some() {
            return Ok(None);
        }
        // The join with the previous segment.
        if let Some(p) = self.pending.take() {
            if segment_lsn != p.damage.flush_lsn {
                let evidence = Evidence::LaterSegment { segment_lsn };
                return Ok(self.corrupt(p.segment_lsn, p.damage, evidence));
            }
            // A recovery dropped that torn tail and started this segment at its LSN.
        } else if let Some(expected) = self.next_lsn {
            if segment_lsn != expected {
                let damage = Damage {
                    offset: 0,
                    lsn: expected,
                    flush_offset: 0,
                    flush_lsn: expected,
                    reason: Invalid::LsnGap { expected, found: segment_lsn },
                };
                return Ok(self.corrupt(segment_lsn, damage, Evidence::LaterSegment { segment_lsn }));
            }
        }
        self.next_lsn = None;
        let unreadable =
            |reason| Damage { offset: 0, lsn: segment_lsn, flush_offset: 0, flush_lsn: segment_lsn, reason };
        let header = match SegmentHeader::decode(bytes) {
            Ok(h) => h,
            Err(HeaderError::UnsupportedVersion(version)) => {
                return Err(WalError::UnsupportedVersion { segment_lsn, version });
            }
            Err(e) => {
                let damage = unreadable(Invalid::SegmentHeader(e));
                // Creation interrupted before the header was durable: nothing else was written.
                let rest = bytes.get(BLOCK_SIZE..).unwrap_or(&[]);
                let mut read = BLOCK_SIZE;
                let zeros = rest.chunks(SCAN_PROGRESS_BYTES).all(|c| {
                    // Read the chunk before reporting it read (the report may release its pages).
                    let zero = is_zero(c);
                    read += c.len();
                    progress(read);
                    zero
                });
                if zeros {
                    self.pending = Some(Pending { segment_lsn, damage });
                    return Ok(None);
                }
                return Ok(self.corrupt(segment_lsn, damage, Evidence::UnreadableHeader));
            }
        };
        if header.shard_id != self.shard_id || header.shard_count != self.shard_count {
            return Err(WalError::ShardMismatch {
                segment_lsn,
                found_shard_id: header.shard_id,
                found_shard_count: header.shard_count,
                shard_id: self.shard_id,
                shard_count: self.shard_count,
            });
        }
        if header.first_lsn != segment_lsn {
            // A recycled file whose new header never reached the disk: what follows is the old
            // segment's data under the old id. Harmless if this is the last segment.
            let reason = Invalid::StaleSegmentHeader { header_lsn: header.first_lsn };
            self.pending = Some(Pending { segment_lsn, damage: unreadable(reason) });
            return Ok(None);
        }
        // The header just decoded, so the scan cannot fail on it.
        let Ok(scan) = scan_segment_with(bytes, progress) else {
            return Ok(None);
        };
        match scan.end {
            SegmentEnd::Clean => self.next_lsn = Some(scan.next_lsn),
            SegmentEnd::Torn(damage) => self.pending = Some(Pending { segment_lsn, damage }),
            SegmentEnd::Corrupt { damage, later: LaterFlush { offset, first_lsn } } => {
                self.corruption =
                    Some(Corruption { segment_lsn, damage, evidence: Evidence::LaterFlush { offset, first_lsn } });
            }
        }
        Ok(Some(scan))
    }

    fn corrupt<'a>(&mut self, segment_lsn: u64, damage: Damage, evidence: Evidence) -> Option<SegmentScan<'a>> {
        self.corruption = Some(Corruption { segment_lsn, damage, evidence });
        None
    }

    /// How the log ends, after the last segment was pushed.
    pub fn finish(self) -> LogOutcome {
        if let Some(c) = self.corruption {
            LogOutcome::Corruption(c)
        } else if let Some(Pending { segment_lsn, damage }) = self.pending {
            LogOutcome::TornTail { segment_lsn, damage }
        } else {
            LogOutcome::Clean { next_lsn: self.next_lsn }
        }
    }
}
