//! Byte layout of a WAL segment and the encoder that frames records into whole blocks.
//!
//! ```text
//! segment file  wal-<first lsn, 20 digits>.log
//! +-------------------+-----------------------------+-----------------+----------------------+
//! | segment header    | flush 1                     | flush 2         | zero-filled          |
//! | block 0           | hdr rec rec rec ... padding | hdr rec padding | (preallocated space) |
//! +-------------------+-----------------------------+-----------------+----------------------+
//!                     ^ block boundary              ^ block boundary
//! ```
//!
//! Every flush starts on a block boundary with a 32-byte flush header that declares how many
//! record bytes and records follow; the tail of its last block is zero padding. All frames
//! (flush headers and records) carry a CRC-32 seeded with the segment's random id, so bytes left
//! over from another segment never validate. The byte tables are in `docs/WAL.md`; this file and
//! that document must change together.
//!
//! Everything here is pure: no I/O, no clock, no randomness (the caller supplies the segment id).
//! Decoding never indexes out of bounds and never allocates on a length read from the input.

use thiserror::Error;

/// Unit of every write and of alignment: O_DIRECT writes whole 4096-byte blocks at 4096-byte
/// offsets, and a block that holds acknowledged records is never written again.
pub const BLOCK_SIZE: usize = 4096;
/// The segment header occupies block 0; the first flush starts at this offset.
pub const SEGMENT_HEADER_BYTES: usize = BLOCK_SIZE;
/// Size the I/O layer preallocates for a segment. A segment may grow past it when one flush
/// does not fit (a record may be up to [`MAX_RECORD_BYTES`]); the scanner accepts any length.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 << 20;
/// Current on-disk format version, stored in every segment header.
pub const FORMAT_VERSION: u32 = 1;
/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RCWALSEG";
/// Bytes 4..8 of every flush header ("RCFL").
pub const FLUSH_MAGIC: [u8; 4] = *b"RCFL";
/// Size of the fields of the segment header that the header checksum covers.
const SEGMENT_FIELDS_BYTES: usize = 40;
/// Size of the flush header at the start of every flush.
pub const FLUSH_HEADER_BYTES: usize = 32;
/// Size of the fixed part of every record.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Size of the optional absolute expiry time that follows a record header.
pub const EXPIRE_AT_BYTES: usize = 8;
/// Largest key a record may carry.
pub const MAX_KEY_BYTES: usize = 512 << 20;
/// Largest value a record may carry.
pub const MAX_VALUE_BYTES: usize = 512 << 20;
/// Largest record: a SET with the largest key, value and an expiry (1 GiB + 32 bytes).
pub const MAX_RECORD_BYTES: usize = RECORD_HEADER_BYTES + EXPIRE_AT_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES;
/// Largest record area of one flush (the bytes after its flush header, before padding). Holds
/// at least one record of [`MAX_RECORD_BYTES`]; fits the header's `u32` field.
pub const MAX_FLUSH_RECORDS_BYTES: usize = 1 << 31;

/// Record flag: an 8-byte `expire_at_ms` follows the record header.
const FLAG_EXPIRE_AT: u8 = 1;

// Compile-time checks of the relations the decoder relies on.
const _: () = assert!(MAX_RECORD_BYTES <= u32::MAX as usize);
const _: () = assert!(MAX_FLUSH_RECORDS_BYTES <= u32::MAX as usize);
const _: () = assert!(MAX_RECORD_BYTES + FLUSH_HEADER_BYTES <= MAX_FLUSH_RECORDS_BYTES);
const _: () = assert!(BLOCK_SIZE.is_power_of_two());

/// Name of the segment file whose first record has LSN `first_lsn`. Zero-padded to 20 digits
/// (the width of `u64::MAX`) so that names sort like LSNs.
pub fn segment_file_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// The first LSN encoded in a segment file name, or `None` if `name` is not exactly
/// `wal-<20 digits>.log`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a record's kind byte says. Zero is not a kind, so zero-filled space never decodes as
/// a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// The key now holds this value (and this expiry, or none).
    Set = 1,
    /// The key no longer exists.
    Del = 2,
    /// The key's expiry was set or cleared; its value is unchanged.
    Expire = 3,
    /// Every key of the shard was removed.
    FlushAll = 4,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Set),
            2 => Some(RecordKind::Del),
            3 => Some(RecordKind::Expire),
            4 => Some(RecordKind::FlushAll),
            _ => None,
        }
    }
}

/// One logged change, as an after-image: replaying it gives the same state whatever the store
/// held before (commands like INCR or APPEND log the resulting value, not the command).
///
/// Decoded records borrow key and value from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// The key now holds `value`, expiring at `expire_at_ms` (absolute Unix ms) if set.
    Set {
        /// Key bytes (≤ [`MAX_KEY_BYTES`]).
        key: &'a [u8],
        /// Value bytes (≤ [`MAX_VALUE_BYTES`]).
        value: &'a [u8],
        /// Absolute expiry time in Unix milliseconds, or `None` for no expiry.
        expire_at_ms: Option<u64>,
    },
    /// The key no longer exists.
    Del {
        /// Key bytes (≤ [`MAX_KEY_BYTES`]).
        key: &'a [u8],
    },
    /// The key's expiry is now `expire_at_ms` (`None`: the expiry was cleared, as by PERSIST).
    Expire {
        /// Key bytes (≤ [`MAX_KEY_BYTES`]).
        key: &'a [u8],
        /// New absolute expiry time in Unix milliseconds, or `None` to clear it.
        expire_at_ms: Option<u64>,
    },
    /// Every key of the shard was removed.
    FlushAll,
}

impl Record<'_> {
    /// The kind byte this record is encoded with.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Set { .. } => RecordKind::Set,
            Record::Del { .. } => RecordKind::Del,
            Record::Expire { .. } => RecordKind::Expire,
            Record::FlushAll => RecordKind::FlushAll,
        }
    }

    /// (key, value, expire_at_ms) of any kind; absent parts are empty / `None`.
    fn parts(&self) -> (&[u8], &[u8], Option<u64>) {
        match *self {
            Record::Set { key, value, expire_at_ms } => (key, value, expire_at_ms),
            Record::Del { key } => (key, &[], None),
            Record::Expire { key, expire_at_ms } => (key, &[], expire_at_ms),
            Record::FlushAll => (&[], &[], None),
        }
    }

    /// Encoded size in bytes, after checking the key and value limits.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let (key, value, expire_at_ms) = self.parts();
        encoded_len(key.len(), value.len(), expire_at_ms.is_some())
    }
}

/// Size of a record with these parts, or the limit it exceeds. The sum cannot overflow once
/// both lengths are within their limits.
pub fn encoded_len(key_len: usize, value_len: usize, has_expire: bool) -> Result<usize, EncodeError> {
    if key_len > MAX_KEY_BYTES {
        return Err(EncodeError::KeyTooLarge { len: key_len });
    }
    if value_len > MAX_VALUE_BYTES {
        return Err(EncodeError::ValueTooLarge { len: value_len });
    }
    let expire = if has_expire { EXPIRE_AT_BYTES } else { 0 };
    Ok(RECORD_HEADER_BYTES + expire + key_len + value_len)
}

/// A record read back from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// Log sequence number: per shard, starting anywhere, +1 per record, no gaps.
    pub lsn: u64,
    /// File offset of the record header.
    pub offset: u64,
    /// The change itself, borrowing from the segment bytes.
    pub record: Record<'a>,
}

/// Why a record or flush could not be encoded. These are caller errors or limits, never a
/// property of data on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The key exceeds [`MAX_KEY_BYTES`].
    #[error("key of {len} bytes exceeds the WAL limit of {MAX_KEY_BYTES}")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
    },
    /// The value exceeds [`MAX_VALUE_BYTES`].
    #[error("value of {len} bytes exceeds the WAL limit of {MAX_VALUE_BYTES}")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
    },
    /// Appending would take the flush past [`MAX_FLUSH_RECORDS_BYTES`] or `u32::MAX` records:
    /// finish this flush and append to the next one.
    #[error("flush buffer full ({records_bytes} bytes, {records} records)")]
    FlushFull {
        /// Record bytes already in the flush.
        records_bytes: usize,
        /// Records already in the flush.
        records: u32,
    },
    /// The next LSN would not fit in a `u64`.
    #[error("LSN overflow")]
    LsnOverflow,
    /// A flush must start on a block boundary after the segment header.
    #[error("flush offset {offset} is not a block boundary after the segment header")]
    BadOffset {
        /// The rejected offset.
        offset: u64,
    },
    /// Segment ids are random and non-zero; shard ids are below the shard count.
    #[error("invalid segment header fields")]
    BadHeader,
}

/// Why block 0 of a file is not a segment header this build can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The file is shorter than one block.
    #[error("file is {len} bytes, shorter than the {BLOCK_SIZE}-byte header block")]
    Short {
        /// File length.
        len: usize,
    },
    /// Bytes 0..8 are not [`SEGMENT_MAGIC`].
    #[error("no segment magic")]
    Magic,
    /// The header checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
    /// A checksummed header of another format version. Not corruption: refuse to run.
    #[error("segment format version {0}, this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u32),
    /// Checksummed but impossible fields (non-zero reserved bytes, segment id 0, shard id not
    /// below the shard count).
    #[error("invalid segment header fields")]
    Fields,
}

/// The contents of a segment's header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Which shard wrote this segment.
    pub shard_id: u32,
    /// How many shards the server had: keys map to shards by hash, so a log written with another
    /// count must not be replayed.
    pub shard_count: u32,
    /// LSN of the first record in the segment (also in the file name).
    pub first_lsn: u64,
    /// Random, non-zero, fresh for every segment. Seeds every checksum in the segment.
    pub segment_id: u64,
}

impl SegmentHeader {
    fn fields_ok(&self) -> bool {
        self.segment_id != 0 && self.shard_id < self.shard_count
    }

    /// The header block (exactly [`BLOCK_SIZE`] bytes) to write at offset 0 of a new segment.
    pub fn to_block(&self) -> Result<Vec<u8>, EncodeError> {
        if !self.fields_ok() {
            return Err(EncodeError::BadHeader);
        }
        let mut block = Vec::with_capacity(BLOCK_SIZE);
        block.extend_from_slice(&SEGMENT_MAGIC);
        block.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        block.extend_from_slice(&self.shard_id.to_le_bytes());
        block.extend_from_slice(&self.shard_count.to_le_bytes());
        block.extend_from_slice(&0u32.to_le_bytes());
        block.extend_from_slice(&self.first_lsn.to_le_bytes());
        block.extend_from_slice(&self.segment_id.to_le_bytes());
        debug_assert_eq!(block.len(), SEGMENT_FIELDS_BYTES);
        let crc = crc32fast::hash(&block);
        block.extend_from_slice(&crc.to_le_bytes());
        block.resize(BLOCK_SIZE, 0);
        Ok(block)
    }

    /// Reads the header from the start of a segment file.
    ///
    /// The checksum is verified before the version is looked at, so a damaged version field is
    /// reported as [`HeaderError::Checksum`] (corruption) and only a well-formed header of another
    /// version as [`HeaderError::UnsupportedVersion`]. Later versions keep bytes 0..12 and the
    /// checksum at 40..44 over 0..40 so that this rule keeps working.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let short = HeaderError::Short { len: bytes.len() };
        let block = bytes.get(..BLOCK_SIZE).ok_or(short)?;
        if block.get(..8) != Some(&SEGMENT_MAGIC[..]) {
            return Err(HeaderError::Magic);
        }
        let fields = block.get(..SEGMENT_FIELDS_BYTES).ok_or(short)?;
        let crc = u32_at(block, SEGMENT_FIELDS_BYTES).ok_or(short)?;
        if crc32fast::hash(fields) != crc {
            return Err(HeaderError::Checksum);
        }
        let version = u32_at(block, 8).ok_or(short)?;
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let header = SegmentHeader {
            shard_id: u32_at(block, 12).ok_or(short)?,
            shard_count: u32_at(block, 16).ok_or(short)?,
            first_lsn: u64_at(block, 24).ok_or(short)?,
            segment_id: u64_at(block, 32).ok_or(short)?,
        };
        let reserved_zero = u32_at(block, 20) == Some(0) && block.get(SEGMENT_FIELDS_BYTES + 4..).is_some_and(is_zero);
        if !reserved_zero || !header.fields_ok() {
            return Err(HeaderError::Fields);
        }
        Ok(header)
    }
}

/// CRC state after hashing the segment id: every frame checksum in the segment continues from
/// it, so `crc = CRC-32(segment_id as 8 LE bytes ‖ frame bytes 4..end)`.
pub fn checksum_seed(segment_id: u64) -> u32 {
    crc32fast::hash(&segment_id.to_le_bytes())
}

/// CRC-32 of `seed`'s prefix followed by `bytes`.
pub(crate) fn frame_crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(bytes);
    h.finalize()
}

/// Rounds `n` up to a block boundary; `None` on overflow.
pub(crate) fn align_up(n: usize) -> Option<usize> {
    Some(n.checked_add(BLOCK_SIZE - 1)? & !(BLOCK_SIZE - 1))
}

/// Whether every byte is zero. Written as an OR-fold over 16-byte chunks so it vectorizes.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let body = chunks.by_ref().all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

pub(crate) fn array_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    array_at(b, at).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    array_at(b, at).map(u64::from_le_bytes)
}

/// Fills a fixed-size array field by field, left to right (keeps encoding free of indexing).
struct Fields<const N: usize> {
    buf: [u8; N],
    at: usize,
}

impl<const N: usize> Fields<N> {
    fn new() -> Self {
        Fields { buf: [0; N], at: 0 }
    }

    fn put(mut self, bytes: &[u8]) -> Self {
        let end = self.at + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.at..end) {
            dst.copy_from_slice(bytes);
        }
        self.at = end;
        self
    }

    fn done(self) -> [u8; N] {
        debug_assert_eq!(self.at, N, "fields do not fill the frame");
        self.buf
    }
}

/// A flush header as stored, after its checksum has been verified.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlushHeader {
    pub first_lsn: u64,
    pub records_len: u32,
    pub record_count: u32,
}

impl FlushHeader {
    fn encode(&self, seed: u32, offset: u64) -> [u8; FLUSH_HEADER_BYTES] {
        let tail: [u8; FLUSH_HEADER_BYTES - 4] = Fields::new()
            .put(&FLUSH_MAGIC)
            .put(&offset.to_le_bytes())
            .put(&self.first_lsn.to_le_bytes())
            .put(&self.records_len.to_le_bytes())
            .put(&self.record_count.to_le_bytes())
            .done();
        Fields::new().put(&frame_crc(seed, &tail).to_le_bytes()).put(&tail).done()
    }

    /// The flush header at `offset`, if the bytes there are one written for this segment (seed)
    /// at this very offset. Checks the magic first so that zeros and stale bytes are rejected
    /// without hashing.
    pub fn read(bytes: &[u8], offset: usize, seed: u32) -> Option<FlushHeader> {
        let h: [u8; FLUSH_HEADER_BYTES] = array_at(bytes, offset)?;
        let tail = h.get(4..)?;
        if tail.get(..4)? != FLUSH_MAGIC || u64_at(&h, 8)? != offset as u64 {
            return None;
        }
        if frame_crc(seed, tail) != u32_at(&h, 0)? {
            return None;
        }
        FlushHeader::read_verified(&h, 0)
    }

    /// The fields of a flush header that [`read`](Self::read) already verified.
    pub fn read_verified(bytes: &[u8], offset: usize) -> Option<FlushHeader> {
        Some(FlushHeader {
            first_lsn: u64_at(bytes, offset.checked_add(16)?)?,
            records_len: u32_at(bytes, offset.checked_add(24)?)?,
            record_count: u32_at(bytes, offset.checked_add(28)?)?,
        })
    }
}

/// Why a frame failed validation. Checksummed-but-impossible field values are reported as
/// their own reasons: they mean a writer bug or a forged frame rather than a torn write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Invalid {
    /// The segment header cannot be read.
    #[error("segment header: {0}")]
    SegmentHeader(HeaderError),
    /// A well-formed header whose first LSN is not the one in the file name: the file was
    /// recycled and the new header never made it to disk.
    #[error("segment header is for LSN {header_lsn}, not the LSN in the file name")]
    StaleSegmentHeader {
        /// First LSN the header claims.
        header_lsn: u64,
    },
    /// A segment or flush starts at another LSN than the one after the previous record.
    #[error("LSN gap: expected {expected}, found {found}")]
    LsnGap {
        /// LSN that should come next.
        expected: u64,
        /// LSN found instead.
        found: u64,
    },
    /// Zero-filled space where a flush should be, yet a valid flush follows.
    #[error("zero-filled block where a flush should be")]
    Hole,
    /// Not a flush header of this segment at this offset (magic, offset or checksum).
    #[error("invalid flush header")]
    FlushHeader,
    /// A checksummed flush header with impossible fields (no records, lengths out of bounds,
    /// LSN overflow).
    #[error("impossible flush header fields")]
    FlushFields,
    /// The flush extends past the end of the file.
    #[error("flush extends past the end of the file")]
    Truncated,
    /// Zero-filled space where a record should be.
    #[error("zero-filled space where a record should be")]
    RecordZeroed,
    /// A record length out of bounds (below the header size, above the limit, or past the
    /// flush's declared end).
    #[error("record length out of bounds")]
    RecordLength,
    /// Record checksum mismatch.
    #[error("record checksum mismatch")]
    RecordChecksum,
    /// A checksummed record with another LSN than its position implies.
    #[error("record LSN {found}, expected {expected}")]
    RecordLsn {
        /// LSN implied by the flush header and the record's position.
        expected: u64,
        /// LSN in the record.
        found: u64,
    },
    /// A checksummed record with impossible fields (kind, flags, reserved bytes, lengths).
    #[error("impossible record fields")]
    RecordFields,
    /// The records do not exactly fill the length the flush header declares.
    #[error("records do not match the flush's declared length and count")]
    RecordCount,
    /// A non-zero byte in the padding after the last record of a flush.
    #[error("non-zero padding")]
    Padding,
}

/// How often a scan reports its progress ([`Progress`]): at least once per this many bytes
/// read, inside a large record too.
pub const SCAN_PROGRESS_BYTES: usize = 1 << 20;

/// Called by a scan with an offset it has read everything before. The pure scan ignores what
/// the caller does with it; recovery drops those pages of its read-only mapping from memory,
/// so that a huge segment is never resident as a whole (`replay`).
pub type Progress<'p> = &'p mut dyn FnMut(usize);

/// Parses the record at `at`, which must end by `end` (the flush's declared end of records).
/// Verifies the checksum when `seed` is given (the scan's first pass, which reports its
/// progress through a large record to `progress`; the record iterator re-reads already
/// verified bytes without it). Returns the record and its length.
pub(crate) fn parse_record<'a>(
    bytes: &'a [u8],
    at: usize,
    end: usize,
    seed: Option<(u32, Progress<'_>)>,
    lsn: u64,
) -> Result<(Record<'a>, usize), Invalid> {
    if at.checked_add(RECORD_HEADER_BYTES).is_none_or(|e| e > end) {
        return Err(Invalid::RecordCount);
    }
    let h: [u8; RECORD_HEADER_BYTES] = array_at(bytes, at).ok_or(Invalid::Truncated)?;
    if h == [0; RECORD_HEADER_BYTES] {
        return Err(Invalid::RecordZeroed);
    }
    let field = |o| u32_at(&h, o).ok_or(Invalid::RecordLength);
    let len = usize::try_from(field(4)?).map_err(|_| Invalid::RecordLength)?;
    if !(RECORD_HEADER_BYTES..=MAX_RECORD_BYTES).contains(&len) || end - at < len {
        return Err(Invalid::RecordLength);
    }
    let rec = bytes.get(at..at + len).ok_or(Invalid::Truncated)?;
    if let Some((seed, progress)) = seed {
        let body = rec.get(4..).ok_or(Invalid::RecordLength)?;
        let mut crc = crc32fast::Hasher::new_with_initial(seed);
        let mut read = at + 4;
        for piece in body.chunks(SCAN_PROGRESS_BYTES) {
            crc.update(piece);
            read += piece.len();
            if piece.len() == SCAN_PROGRESS_BYTES {
                progress(read);
            }
        }
        if crc.finalize() != field(0)? {
            return Err(Invalid::RecordChecksum);
        }
    }
    let found = u64_at(&h, 8).ok_or(Invalid::RecordLength)?;
    if found != lsn {
        return Err(Invalid::RecordLsn { expected: lsn, found });
    }
    let record = decode_body(&h, rec.get(RECORD_HEADER_BYTES..).unwrap_or(&[])).ok_or(Invalid::RecordFields)?;
    Ok((record, len))
}

/// Interprets a record's kind, flags and body; `None` if they are inconsistent.
fn decode_body<'a>(h: &[u8; RECORD_HEADER_BYTES], body: &'a [u8]) -> Option<Record<'a>> {
    let [kind, flags, r0, r1] = array_at(h, 16)?;
    if flags & !FLAG_EXPIRE_AT != 0 || r0 != 0 || r1 != 0 {
        return None;
    }
    let key_len = usize::try_from(u32_at(h, 20)?).ok()?;
    if key_len > MAX_KEY_BYTES {
        return None;
    }
    let (expire_at_ms, rest) =
        if flags & FLAG_EXPIRE_AT != 0 { (Some(u64_at(body, 0)?), body.get(EXPIRE_AT_BYTES..)?) } else { (None, body) };
    let key = rest.get(..key_len)?;
    let tail = rest.get(key_len..)?;
    let record = match RecordKind::from_u8(kind)? {
        RecordKind::Set if tail.len() <= MAX_VALUE_BYTES => Record::Set { key, value: tail, expire_at_ms },
        RecordKind::Del if tail.is_empty() && expire_at_ms.is_none() => Record::Del { key },
        RecordKind::Expire if tail.is_empty() => Record::Expire { key, expire_at_ms },
        RecordKind::FlushAll if key.is_empty() && tail.is_empty() && expire_at_ms.is_none() => Record::FlushAll,
        _ => return None,
    };
    Some(record)
}

/// Builds one flush: records are appended as they are logged, then [`FlushBuf::finish`] adds
/// the flush header, the checksums and the padding, and hands out whole blocks to write.
///
/// LSNs are assigned here, one per record with no gaps. While one flush is being written the
/// shard appends to a second `FlushBuf` started at this one's [`next_lsn`](Self::next_lsn).
///
/// Appending copies key and value into the buffer and allocates nothing else; the buffer keeps
/// its capacity across [`reset`](Self::reset) (the writer bounds what it keeps with
/// [`shrink_to`](Self::shrink_to)). A large value the store already holds as a refcounted
/// [`bytes::Bytes`] can be *shared* instead ([`append_with`](Self::append_with)): the buffer
/// keeps a clone of the handle, not a copy of the bytes. The flush is then a sequence of inline
/// runs and shared pieces ([`Sealed`]); the bytes it stands for are exactly those of the same
/// records appended by copy, so sharing changes nothing on disk.
///
/// Checksums are computed in `finish`, because they are seeded with the id of the segment the
/// flush lands in, which the writer may only decide (segment full, roll over) when it writes.
#[derive(Debug, Clone)]
pub struct FlushBuf {
    /// Inline bytes: `[flush header placeholder][records, minus shared values][padding, after
    /// finish]`.
    buf: Vec<u8>,
    /// Shared values, in order; each goes into the flush just before inline position
    /// `at_inline`, which is the end of its record's inline part (a SET's value is the last
    /// field of its record).
    shared: Vec<SharedPiece>,
    /// Sum of the lengths of `shared`.
    shared_bytes: usize,
    /// Record bytes as they will be on disk (inline and shared).
    records_len: usize,
    record_count: u32,
    first_lsn: u64,
    next_lsn: u64,
}

/// A value held by reference in a [`FlushBuf`].
#[derive(Debug, Clone)]
struct SharedPiece {
    /// Position in the inline bytes before which the value goes.
    at_inline: usize,
    bytes: bytes::Bytes,
}

impl FlushBuf {
    /// An empty flush whose first record will get LSN `first_lsn`.
    pub fn new(first_lsn: u64) -> FlushBuf {
        FlushBuf::with_capacity(first_lsn, BLOCK_SIZE)
    }

    /// As [`new`](Self::new), with room for `bytes` bytes before the buffer grows.
    pub fn with_capacity(first_lsn: u64, bytes: usize) -> FlushBuf {
        let mut buf = Vec::with_capacity(bytes.max(FLUSH_HEADER_BYTES));
        buf.resize(FLUSH_HEADER_BYTES, 0);
        FlushBuf {
            buf,
            shared: Vec::new(),
            shared_bytes: 0,
            records_len: 0,
            record_count: 0,
            first_lsn,
            next_lsn: first_lsn,
        }
    }

    /// Empties the buffer (keeping its capacity, dropping its shared values) for a flush
    /// starting at `first_lsn`.
    pub fn reset(&mut self, first_lsn: u64) {
        self.buf.clear();
        self.buf.resize(FLUSH_HEADER_BYTES, 0);
        self.shared.clear();
        self.shared_bytes = 0;
        self.records_len = 0;
        self.record_count = 0;
        self.first_lsn = first_lsn;
        self.next_lsn = first_lsn;
    }

    /// Gives back capacity beyond `bytes` (counting the inline buffer and the list of shared
    /// pieces), keeping what the current contents need.
    pub fn shrink_to(&mut self, bytes: usize) {
        self.buf.shrink_to(bytes);
        let left = bytes.saturating_sub(self.buf.capacity());
        self.shared.shrink_to(left / std::mem::size_of::<SharedPiece>());
    }

    /// Heap bytes this buffer holds for itself: the inline buffer's and the piece list's
    /// capacity. Shared values are not counted: they belong to the store, the buffer only
    /// holds a reference.
    pub fn capacity_bytes(&self) -> usize {
        self.buf.capacity() + self.shared.capacity() * std::mem::size_of::<SharedPiece>()
    }

    /// LSN of the first record of this flush.
    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    /// LSN the next appended record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Records appended so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Whether no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes of records appended so far (shared values included). The next record starts at
    /// `flush offset + FLUSH_HEADER_BYTES + records_bytes()`.
    pub fn records_bytes(&self) -> usize {
        self.records_len
    }

    /// Bytes of shared values (held by reference, not copied) among [`records_bytes`](Self::records_bytes).
    pub fn shared_bytes(&self) -> usize {
        self.shared_bytes
    }

    /// End of the inline record bytes (before any padding).
    fn inline_end(&self) -> usize {
        FLUSH_HEADER_BYTES + self.records_len - self.shared_bytes
    }

    /// Bytes `finish` will return: the flush header and records rounded up to whole blocks
    /// (0 when empty). The writer compares it with the space left in the segment.
    pub fn padded_len_bytes(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        // At most 2 GiB + 4 KiB: no overflow, even for a 32-bit usize.
        (FLUSH_HEADER_BYTES + self.records_len).next_multiple_of(BLOCK_SIZE)
    }

    /// Appends `record` (copying it) and returns its LSN.
    pub fn append(&mut self, record: &Record<'_>) -> Result<u64, EncodeError> {
        self.append_with(record, None)
    }

    /// Appends `record` and returns its LSN. `shared_value`, if given, holds exactly the bytes
    /// of the record's value (a SET's): the buffer keeps a clone of that handle (a refcount,
    /// no copy) instead of copying the value. A handle that cannot be that value (another
    /// length, an empty value, or a record without a value) is ignored and the value copied.
    pub fn append_with(
        &mut self,
        record: &Record<'_>,
        shared_value: Option<&bytes::Bytes>,
    ) -> Result<u64, EncodeError> {
        let (key, value, expire_at_ms) = record.parts();
        let len = encoded_len(key.len(), value.len(), expire_at_ms.is_some())?;
        let full = EncodeError::FlushFull { records_bytes: self.records_len, records: self.record_count };
        if len > MAX_FLUSH_RECORDS_BYTES - self.records_len || self.record_count == u32::MAX {
            return Err(full);
        }
        let lsn = self.next_lsn;
        let next_lsn = lsn.checked_add(1).ok_or(EncodeError::LsnOverflow)?;
        let flags = if expire_at_ms.is_some() { FLAG_EXPIRE_AT } else { 0 };
        let share = shared_value.filter(|b| {
            let fits = matches!(record, Record::Set { .. }) && !value.is_empty() && b.len() == value.len();
            debug_assert!(fits, "shared value does not match the record's value");
            fits
        });
        // Lengths are within the u32 range: checked by `encoded_len` and the constants above.
        let header: [u8; RECORD_HEADER_BYTES] = Fields::new()
            .put(&0u32.to_le_bytes()) // checksum, filled in by `finish`
            .put(&(len as u32).to_le_bytes())
            .put(&lsn.to_le_bytes())
            .put(&[record.kind() as u8, flags, 0, 0])
            .put(&(key.len() as u32).to_le_bytes())
            .done();
        // Drop the padding of an earlier `finish`, if any.
        self.buf.truncate(self.inline_end());
        // Room for the padding `finish` adds too: growing a buffer of a large record there
        // would reallocate it, holding it twice for the copy.
        self.buf.reserve(len - share.map_or(0, |b| b.len()) + BLOCK_SIZE);
        self.buf.extend_from_slice(&header);
        if let Some(t) = expire_at_ms {
            self.buf.extend_from_slice(&t.to_le_bytes());
        }
        self.buf.extend_from_slice(key);
        match share {
            Some(b) => {
                self.shared.push(SharedPiece { at_inline: self.buf.len(), bytes: b.clone() });
                self.shared_bytes += b.len();
            }
            None => self.buf.extend_from_slice(value),
        }
        self.records_len += len;
        self.record_count += 1;
        self.next_lsn = next_lsn;
        Ok(lsn)
    }

    /// Appends every record of `later`, a flush started at this one's [`next_lsn`](Self::next_lsn)
    /// (records appended while this flush was being written and failed with ENOSPC), so that a
    /// retry writes them all in LSN order. Shared values stay shared. A `later` that does not
    /// continue this flush is ignored.
    pub fn absorb(&mut self, later: &FlushBuf) {
        if later.first_lsn != self.next_lsn {
            return;
        }
        let Some(records) = later.buf.get(FLUSH_HEADER_BYTES..later.inline_end()) else {
            return;
        };
        self.buf.truncate(self.inline_end());
        // Inline position `p` of `later` lands at `base + p` here.
        let base = self.buf.len() - FLUSH_HEADER_BYTES;
        self.buf.extend_from_slice(records);
        self.shared
            .extend(later.shared.iter().map(|s| SharedPiece { at_inline: base + s.at_inline, bytes: s.bytes.clone() }));
        self.shared_bytes += later.shared_bytes;
        self.records_len += later.records_len;
        self.record_count += later.record_count;
        self.next_lsn = later.next_lsn;
    }

    /// Seals the flush for the segment with id `segment_id` at file offset `offset` (a block
    /// boundary after the segment header): fills in the record checksums and the flush header,
    /// zero-pads to a whole number of blocks, and returns the bytes to write at `offset`.
    /// Returns an empty flush when there is nothing to write.
    ///
    /// May be called again (after a failed write, or for another segment or offset); it reseals
    /// from scratch. Appending after `finish` continues the same flush.
    pub fn finish(&mut self, segment_id: u64, offset: u64) -> Result<Sealed<'_>, EncodeError> {
        let aligned = offset % BLOCK_SIZE as u64 == 0 && offset >= SEGMENT_HEADER_BYTES as u64;
        if !aligned {
            return Err(EncodeError::BadOffset { offset });
        }
        if segment_id == 0 {
            return Err(EncodeError::BadHeader);
        }
        if self.is_empty() {
            return Ok(Sealed { inline: &[], shared: &[], len: 0 });
        }
        let seed = checksum_seed(segment_id);
        let end = self.inline_end();
        self.buf.truncate(end);
        // Walk our own records by their length fields and fill in each checksum; a record whose
        // value is shared is hashed as its inline part followed by the value.
        let mut at = FLUSH_HEADER_BYTES;
        let mut pieces = self.shared.iter().peekable();
        while at < end {
            let len = u32_at(&self.buf, at + 4).map_or(0, |l| l as usize);
            if len < RECORD_HEADER_BYTES {
                break;
            }
            let piece = pieces.next_if(|p| p.at_inline > at && p.at_inline - at + p.bytes.len() == len);
            let inline_len = len - piece.map_or(0, |p| p.bytes.len());
            let Some(body) = self.buf.get(at + 4..at + inline_len) else {
                break;
            };
            let mut h = crc32fast::Hasher::new_with_initial(seed);
            h.update(body);
            if let Some(p) = piece {
                h.update(&p.bytes);
            }
            let crc = h.finalize();
            if let Some(slot) = self.buf.get_mut(at..at + 4) {
                slot.copy_from_slice(&crc.to_le_bytes());
            }
            at += inline_len;
        }
        debug_assert_eq!(at, end, "record lengths do not add up");
        debug_assert!(pieces.next().is_none(), "a shared value outside its record");
        let header = FlushHeader {
            first_lsn: self.first_lsn,
            records_len: self.records_len as u32,
            record_count: self.record_count,
        }
        .encode(seed, offset);
        if let Some(slot) = self.buf.get_mut(..FLUSH_HEADER_BYTES) {
            slot.copy_from_slice(&header);
        }
        let len = self.padded_len_bytes();
        self.buf.resize(len - self.shared_bytes, 0);
        Ok(Sealed { inline: &self.buf, shared: &self.shared, len })
    }
}

/// A sealed flush, ready to write: whole blocks, as inline runs with shared values between
/// them. [`parts`](Self::parts) yields its bytes in order; [`copy_to`](Self::copy_to) copies any
/// range of them (the writer's bounded staging).
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    inline: &'a [u8],
    shared: &'a [SharedPiece],
    len: usize,
}

impl<'a> Sealed<'a> {
    /// Bytes of the flush (a multiple of [`BLOCK_SIZE`]; 0 when there is nothing to write).
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The flush as one slice, when it holds no shared value.
    pub fn as_contiguous(&self) -> Option<&'a [u8]> {
        self.shared.is_empty().then_some(self.inline)
    }

    /// The flush's bytes as consecutive slices, in order (none empty).
    pub fn parts(&self) -> Parts<'a> {
        Parts { inline: self.inline, shared: self.shared.iter(), from: 0, piece: None }
    }

    /// Copies the flush's bytes `from..from + dst.len()` (cut at the end of the flush) into
    /// `dst`; returns how many were copied.
    pub fn copy_to(&self, from: usize, dst: &mut [u8]) -> usize {
        let mut part_start = 0;
        let mut copied = 0;
        for part in self.parts() {
            let part_end = part_start + part.len();
            let want = from + copied;
            if copied < dst.len() && want < part_end {
                let src = part.get(want - part_start..).unwrap_or(&[]);
                let n = src.len().min(dst.len() - copied);
                if let (Some(d), Some(s)) = (dst.get_mut(copied..copied + n), src.get(..n)) {
                    d.copy_from_slice(s);
                }
                copied += n;
            }
            if copied == dst.len() {
                break;
            }
            part_start = part_end;
        }
        copied
    }

    /// The flush as one owned buffer (tests and tools; the writer never makes one).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for part in self.parts() {
            v.extend_from_slice(part);
        }
        v
    }
}

/// The bytes of a [`Sealed`] flush as consecutive slices: inline runs and shared values.
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    inline: &'a [u8],
    shared: std::slice::Iter<'a, SharedPiece>,
    /// Inline bytes before this position were yielded.
    from: usize,
    /// The shared value to yield next.
    piece: Option<&'a [u8]>,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(p) = self.piece.take() {
                if !p.is_empty() {
                    return Some(p);
                }
            }
            let to = match self.shared.next() {
                Some(s) => {
                    self.piece = Some(s.bytes.as_ref());
                    s.at_inline.max(self.from).min(self.inline.len())
                }
                None if self.from < self.inline.len() => self.inline.len(),
                None => return None,
            };
            let run = self.inline.get(self.from..to).unwrap_or(&[]);
            self.from = to;
            if !run.is_empty() {
                return Some(run);
            }
        }
    }
}
