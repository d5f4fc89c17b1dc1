//! Byte layout of a snapshot file, its encoder and its verifying decoder.
//!
//! ```text
//! snap-<lsn, 20 digits>.snap
//! +--------+-----------------------+-------------------------------------+-----+--------+-----------+
//! | header | chunk                 | large value                         | ... | footer | zero pad  |
//! | 64 B   | 32 B hdr, rkyv, pad16 | 32 B hdr, key, value, pad16, 16 B   |     | 64 B   | to 4096   |
//! +--------+-----------------------+-------------------------------------+-----+--------+-----------+
//! ```
//!
//! Every frame (header, chunk, large value, footer) carries its own xxh3-64 checksum, and the
//! footer carries one over every byte before it. A chunk's payload is an rkyv archive of its
//! entries, optionally lz4-compressed. A *large-value frame* (version 2) holds one entry whose
//! value the store keeps out of line ([`crate::large`], 1 MiB or more), written raw: the writer
//! streams it from the entry's shared buffer in bounded pieces ([`Encoder::begin_large`]), so a
//! 512 MiB value never passes through an archive, a compression buffer or a write buffer of its
//! size; its checksum is in a trailer because it is known only at the end. Every frame is a
//! multiple of 16 bytes long, so an uncompressed payload sits at a 16-byte aligned offset and
//! can be accessed in place (zero-copy) when the file is read into an aligned buffer. The byte
//! tables are in `docs/SNAPSHOT.md`; this file and that document must change together.
//!
//! Everything here is pure: no I/O, no clock. Decoding never indexes out of bounds, checks every
//! length against its limit before using it, allocates only after the checksum covering a
//! length has been verified, and uses rkyv's *checked* access (bytecheck) on file bytes only.
//! Long reads (verification, a large value's copy) report their progress through a callback, so
//! that the caller can give back the pages of a mapped file behind them.

use crate::store::Entry;
use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Files are padded to whole blocks (O_DIRECT writes whole 4096-byte blocks).
pub const BLOCK_SIZE: usize = 4096;
/// Current format version (what the encoder writes): 2 added the large-value frame.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest version decoding accepts. Version 1 is version 2 without large-value frames (and
/// with the footer's bytes 40..48 zero), so it is read by the same code.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// First 8 bytes of every snapshot file, whatever its version (the name is historical: the
/// version is the header's `version` field).
pub const HEADER_MAGIC: [u8; 8] = *b"RCSNAPv1";
/// First 4 bytes of every chunk frame.
pub const CHUNK_MAGIC: [u8; 4] = *b"RCCK";
/// First 4 bytes of every large-value frame (version 2).
pub const LARGE_MAGIC: [u8; 4] = *b"RCLV";
/// Size of a large-value frame's header.
pub const LARGE_HEADER_BYTES: usize = 32;
/// Size of a large-value frame's trailer (its body checksum).
pub const LARGE_TRAILER_BYTES: usize = 16;
/// Bytes a long read (verification, a large value's copy) goes through before it reports its
/// progress: the caller gives back mapped pages at most this far behind the reader.
pub const READ_PIECE_BYTES: usize = 1 << 20;
/// Capacity the encoder's lz4 buffer keeps between chunks. Large values bypass it (they are
/// written raw), so a chunk is at most 256 KiB of entries plus one entry below 1 MiB; a chunk
/// with a long key may grow the buffer beyond this, and it is given back right after.
pub const LZ4_BUFFER_KEEP_BYTES: usize = 2 << 20;
/// First 8 bytes of the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"RCSNAPFT";
/// Size of the file header.
pub const HEADER_BYTES: usize = 64;
/// Size of a chunk frame's header.
pub const CHUNK_HEADER_BYTES: usize = 32;
/// Size of the footer.
pub const FOOTER_BYTES: usize = 64;
/// Frames are padded to this alignment so that payloads are aligned for rkyv.
pub const FRAME_ALIGN: usize = 16;
/// Largest uncompressed payload of one chunk: room for one entry with the largest key and
/// value (512 MiB each) and the archive's own overhead. Fits the header's `u32`.
pub const MAX_CHUNK_RAW_BYTES: usize = (1 << 31) - 1;
/// Largest number of entries in one chunk (the writer targets far fewer).
pub const MAX_CHUNK_ENTRIES: u32 = 1 << 24;
/// Largest key or value in an entry (the protocol's 512 MiB limit).
pub const MAX_ITEM_BYTES: usize = 512 << 20;

const _: () = assert!(HEADER_BYTES % FRAME_ALIGN == 0 && CHUNK_HEADER_BYTES % FRAME_ALIGN == 0);
const _: () = assert!(FOOTER_BYTES % FRAME_ALIGN == 0);
const _: () = assert!(LARGE_HEADER_BYTES % FRAME_ALIGN == 0 && LARGE_TRAILER_BYTES % FRAME_ALIGN == 0);

/// How chunk payloads are compressed (`--snapshot-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Payloads are stored as the rkyv archive itself and read in place.
    None,
    /// Each payload is an lz4 block (`lz4_flex`); it is decompressed into an aligned buffer
    /// before access. Fast enough to cost less than the disk time it saves on compressible data.
    #[default]
    Lz4,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }

    fn from_code(c: u8) -> Option<Compression> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

/// Name of the snapshot file that holds a shard's state at `lsn`.
pub fn snapshot_file_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.snap")
}

/// Name of the temporary file a snapshot is written to before its rename.
pub fn temp_file_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.tmp")
}

/// The LSN in a snapshot file name, or `None` if `name` is not exactly `snap-<20 digits>.snap`.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One entry handed to the encoder, borrowed from the store while encoding.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
    /// Absolute expiry in Unix ms.
    pub expire_at_ms: Option<u64>,
    /// The buffer the store shares the value from when it keeps it out of line (a large
    /// value): the snapshot writer clones it (a reference, not a copy), which keeps this
    /// version of the value alive until it is written whatever happens to the entry, and
    /// streams it as a large-value frame.
    pub shared: Option<&'a Bytes>,
}

impl<'a> EntryRef<'a> {
    /// An entry with an inline value (no shared buffer).
    pub fn new(key: &'a [u8], value: &'a [u8], expire_at_ms: Option<u64>) -> EntryRef<'a> {
        EntryRef { key, value, expire_at_ms, shared: None }
    }

    /// The entry `e` of the store.
    pub fn of(e: &'a Entry) -> EntryRef<'a> {
        EntryRef { key: e.key(), value: e.value(), expire_at_ms: e.expire_at_ms(), shared: e.shared_value() }
    }
}

/// One entry as a chunk archives it (the same archived layout in every version).
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy)]
pub struct StoredEntry<'a> {
    /// Key bytes.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub key: &'a [u8],
    /// Value bytes.
    #[rkyv(with = rkyv::with::InlineAsBox)]
    pub value: &'a [u8],
    /// Absolute expiry in Unix ms.
    pub expire_at_ms: Option<u64>,
}

/// The archived form of a chunk's entries, accessed in place.
pub type ArchivedEntries = rkyv::vec::ArchivedVec<ArchivedStoredEntry<'static>>;

impl ArchivedStoredEntry<'_> {
    /// Key bytes.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key
    }
    /// Value bytes.
    pub fn value_bytes(&self) -> &[u8] {
        &self.value
    }
    /// Absolute expiry in Unix ms.
    pub fn expire_at(&self) -> Option<u64> {
        self.expire_at_ms.as_ref().map(|t| t.to_native())
    }
}

/// The file header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Shard that wrote the snapshot; `< shard_count`.
    pub shard_id: u32,
    /// Number of shards of the server that wrote it.
    pub shard_count: u32,
    /// The snapshot holds the shard's state after every record with an LSN `<= lsn`.
    pub lsn: u64,
    /// Unix ms when the snapshot started.
    pub created_ms: u64,
    /// Compression of the chunks.
    pub compression: Compression,
}

/// What the footer says (and verification confirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The header's format version.
    pub version: u32,
    /// Entries in all chunks and large-value frames.
    pub entries: u64,
    /// Chunks in the file.
    pub chunks: u64,
    /// Large-value frames in the file (one entry each).
    pub large_values: u64,
    /// Offset of the footer (bytes of header and chunks).
    pub footer_offset: u64,
}

/// Why bytes are not a valid snapshot. Every variant is corruption (or a file of another
/// version), never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Invalid {
    /// Fewer bytes than the structure being read.
    #[error("file ends inside a frame")]
    Truncated,
    /// Not a snapshot file (first bytes).
    #[error("bad magic")]
    Magic,
    /// Header checksum mismatch.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// A valid header of a version this build cannot read.
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u32),
    /// A checksummed header with impossible fields.
    #[error("impossible header fields")]
    HeaderFields,
    /// A chunk frame's fields are out of bounds.
    #[error("impossible chunk header fields")]
    ChunkFields,
    /// Chunk checksum mismatch.
    #[error("chunk checksum mismatch")]
    ChunkChecksum,
    /// Neither a chunk nor the footer where a frame should start.
    #[error("no chunk or footer where a frame should start")]
    FrameMagic,
    /// Non-zero padding bytes.
    #[error("non-zero padding")]
    Padding,
    /// Footer checksum mismatch.
    #[error("footer checksum mismatch")]
    FooterChecksum,
    /// The checksum over the whole file does not match.
    #[error("whole-file checksum mismatch")]
    FileChecksum,
    /// Footer counts differ from the chunks read.
    #[error("footer counts do not match the chunks")]
    Counts,
    /// The payload does not decompress to its declared size.
    #[error("chunk does not decompress")]
    Decompress,
    /// The payload is not a valid archive (bytecheck), or its entry count is wrong.
    #[error("chunk archive invalid")]
    Archive,
    /// A large-value frame's header checksum does not match.
    #[error("large-value frame header checksum mismatch")]
    LargeHeaderChecksum,
    /// A large-value frame's checksummed header has impossible fields.
    #[error("impossible large-value frame fields")]
    LargeFields,
    /// A large-value frame's key and value do not match its trailer's checksum.
    #[error("large value checksum mismatch")]
    LargeChecksum,
}

/// Corruption at a file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{reason} at offset {offset}")]
pub struct Corrupt {
    /// Offset of the frame (or field) where it was found.
    pub offset: u64,
    /// What is wrong.
    pub reason: Invalid,
}

fn corrupt(offset: usize, reason: Invalid) -> Corrupt {
    Corrupt { offset: offset as u64, reason }
}

/// Why an entry batch cannot be encoded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A key or value over [`MAX_ITEM_BYTES`], or a chunk over its limits.
    #[error("chunk too large: {0}")]
    TooLarge(String),
    /// rkyv failed (allocation).
    #[error("archive: {0}")]
    Archive(String),
    /// The calls do not follow begin, body, end for a large value (a bug in the caller).
    #[error("large-value frame out of order: {0}")]
    Sequence(&'static str),
}

fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

impl Header {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&HEADER_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.shard_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.shard_count.to_le_bytes());
        b[20] = self.compression.code();
        b[24..32].copy_from_slice(&self.lsn.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_ms.to_le_bytes());
        let sum = xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and checks the header at the start of `b`: magic, checksum, version, fields.
    pub fn decode(b: &[u8]) -> Result<Header, Corrupt> {
        let h = b.get(..HEADER_BYTES).ok_or(corrupt(0, Invalid::Truncated))?;
        if h.get(..8) != Some(&HEADER_MAGIC[..]) {
            return Err(corrupt(0, Invalid::Magic));
        }
        let sum = u64_at(h, 56).ok_or(corrupt(0, Invalid::Truncated))?;
        if xxh3_64(h.get(..56).unwrap_or_default()) != sum {
            return Err(corrupt(0, Invalid::HeaderChecksum));
        }
        let version = u32_at(h, 8).unwrap_or(0);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(corrupt(8, Invalid::UnsupportedVersion(version)));
        }
        let bad = corrupt(0, Invalid::HeaderFields);
        let shard_id = u32_at(h, 12).ok_or(bad)?;
        let shard_count = u32_at(h, 16).ok_or(bad)?;
        let compression = h.get(20).copied().and_then(Compression::from_code).ok_or(bad)?;
        if shard_id >= shard_count || !is_zero(h.get(21..24).unwrap_or(&[1])) || !is_zero(h.get(40..56).unwrap_or(&[1]))
        {
            return Err(bad);
        }
        Ok(Header {
            shard_id,
            shard_count,
            compression,
            lsn: u64_at(h, 24).ok_or(bad)?,
            created_ms: u64_at(h, 32).ok_or(bad)?,
        })
    }
}

/// Encodes a snapshot as a stream of bytes: the header, chunks and large-value frames, then the
/// footer. Keeps the whole-file checksum and the counts as it goes; the caller writes the bytes
/// it appends to `out` in order (and may take them out of `out` between calls).
pub struct Encoder {
    hasher: Xxh3,
    len: u64,
    entries: u64,
    chunks: u64,
    large_values: u64,
    compression: Compression,
    lz4_buf: Vec<u8>,
    /// The large-value frame being streamed, if any.
    open: Option<OpenLarge>,
}

/// A large-value frame between [`Encoder::begin_large`] and [`Encoder::end_large`].
struct OpenLarge {
    body: Xxh3,
    /// Key and value bytes still to come.
    remaining: u64,
    body_len: u64,
}

impl Encoder {
    /// Starts a snapshot: appends the header to `out`.
    pub fn new(header: &Header, out: &mut Vec<u8>) -> Encoder {
        let h = header.encode();
        let mut enc = Encoder {
            hasher: Xxh3::new(),
            len: 0,
            entries: 0,
            chunks: 0,
            large_values: 0,
            compression: header.compression,
            lz4_buf: Vec::new(),
            open: None,
        };
        enc.emit(&h, out);
        enc
    }

    fn emit(&mut self, b: &[u8], out: &mut Vec<u8>) {
        self.hasher.update(b);
        self.len += b.len() as u64;
        out.extend_from_slice(b);
    }

    /// Bytes emitted so far.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Entries encoded so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Appends one chunk holding `entries` to `out` (their values inline, whether shared or
    /// not). An empty slice appends nothing.
    pub fn chunk(&mut self, entries: &[EntryRef<'_>], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.open.is_some() {
            return Err(EncodeError::Sequence("chunk inside a large-value frame"));
        }
        if entries.len() > MAX_CHUNK_ENTRIES as usize {
            return Err(EncodeError::TooLarge(format!("{} entries", entries.len())));
        }
        if let Some(e) = entries.iter().find(|e| e.key.len() > MAX_ITEM_BYTES || e.value.len() > MAX_ITEM_BYTES) {
            return Err(EncodeError::TooLarge(format!("key {} / value {} bytes", e.key.len(), e.value.len())));
        }
        let stored: Vec<StoredEntry<'_>> =
            entries.iter().map(|e| StoredEntry { key: e.key, value: e.value, expire_at_ms: e.expire_at_ms }).collect();
        let raw = rkyv::to_bytes::<rancor::Error>(&stored).map_err(|e| EncodeError::Archive(e.to_string()))?;
        drop(stored);
        if raw.len() > MAX_CHUNK_RAW_BYTES {
            return Err(EncodeError::TooLarge(format!("{} archive bytes", raw.len())));
        }
        let payload: &[u8] = match self.compression {
            Compression::None => &raw,
            Compression::Lz4 => {
                let bound = lz4_flex::block::get_maximum_output_size(raw.len());
                if self.lz4_buf.capacity() > LZ4_BUFFER_KEEP_BYTES.max(bound) {
                    // An earlier chunk (a long key) grew it: give the memory back.
                    self.lz4_buf = Vec::new();
                }
                self.lz4_buf.clear();
                self.lz4_buf.resize(bound, 0);
                let n = lz4_flex::block::compress_into(&raw, &mut self.lz4_buf)
                    .map_err(|e| EncodeError::Archive(e.to_string()))?;
                self.lz4_buf.truncate(n);
                &self.lz4_buf
            }
        };
        if payload.len() > MAX_CHUNK_RAW_BYTES {
            return Err(EncodeError::TooLarge(format!("{} payload bytes", payload.len())));
        }
        let mut h = [0u8; CHUNK_HEADER_BYTES];
        h[0..4].copy_from_slice(&CHUNK_MAGIC);
        h[4] = self.compression.code();
        h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        let mut sum = Xxh3::new();
        sum.update(&h[..24]);
        sum.update(payload);
        h[24..32].copy_from_slice(&sum.digest().to_le_bytes());
        let pad = align_up(payload.len(), FRAME_ALIGN) - payload.len();
        // `payload` borrows `self.lz4_buf`: hash and append without going through `emit`.
        let zeros = [0u8; FRAME_ALIGN];
        for part in [&h[..], payload, zeros.get(..pad).unwrap_or_default()] {
            self.hasher.update(part);
            self.len += part.len() as u64;
            out.extend_from_slice(part);
        }
        if self.lz4_buf.capacity() > LZ4_BUFFER_KEEP_BYTES {
            self.lz4_buf = Vec::new();
        }
        self.entries += entries.len() as u64;
        self.chunks += 1;
        Ok(())
    }

    /// Starts a large-value frame for an entry with a key of `key_len` bytes and a value of
    /// `value_len` bytes: appends its header to `out`. The key and then the value follow in
    /// any number of [`large_body`](Self::large_body) calls, then [`end_large`](Self::end_large).
    /// Nothing else may be encoded in between.
    pub fn begin_large(
        &mut self,
        key_len: usize,
        value_len: usize,
        expire_at_ms: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if self.open.is_some() {
            return Err(EncodeError::Sequence("large-value frame inside another"));
        }
        if key_len > MAX_ITEM_BYTES || value_len > MAX_ITEM_BYTES {
            return Err(EncodeError::TooLarge(format!("key {key_len} / value {value_len} bytes")));
        }
        let mut h = [0u8; LARGE_HEADER_BYTES];
        h[0..4].copy_from_slice(&LARGE_MAGIC);
        h[4] = u8::from(expire_at_ms.is_some());
        h[8..12].copy_from_slice(&(key_len as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(value_len as u32).to_le_bytes());
        h[16..24].copy_from_slice(&expire_at_ms.unwrap_or(0).to_le_bytes());
        let sum = xxh3_64(&h[..24]);
        h[24..32].copy_from_slice(&sum.to_le_bytes());
        self.emit(&h, out);
        let body_len = (key_len + value_len) as u64;
        self.open = Some(OpenLarge { body: Xxh3::new(), remaining: body_len, body_len });
        Ok(())
    }

    /// Appends the next `piece` of the open large-value frame's key and value to `out`.
    pub fn large_body(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let Some(open) = self.open.as_mut() else {
            return Err(EncodeError::Sequence("large-value body without a frame"));
        };
        if piece.len() as u64 > open.remaining {
            return Err(EncodeError::Sequence("more large-value body than declared"));
        }
        open.remaining -= piece.len() as u64;
        open.body.update(piece);
        self.emit(piece, out);
        Ok(())
    }

    /// Ends the open large-value frame: appends the padding and the trailer to `out`.
    pub fn end_large(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let Some(open) = self.open.take_if(|o| o.remaining == 0) else {
            return Err(EncodeError::Sequence("large-value frame ended early or never begun"));
        };
        let pad = align_up(open.body_len as usize, FRAME_ALIGN) - open.body_len as usize;
        let zeros = [0u8; FRAME_ALIGN];
        self.emit(zeros.get(..pad).unwrap_or_default(), out);
        let mut t = [0u8; LARGE_TRAILER_BYTES];
        t[0..8].copy_from_slice(&open.body.digest().to_le_bytes());
        self.emit(&t, out);
        self.entries += 1;
        self.large_values += 1;
        Ok(())
    }

    /// One whole large-value frame (tests and fuzzing; the snapshot writer streams the value
    /// with [`begin_large`](Self::begin_large) instead).
    pub fn large(&mut self, e: &EntryRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.begin_large(e.key.len(), e.value.len(), e.expire_at_ms, out)?;
        self.large_body(e.key, out)?;
        self.large_body(e.value, out)?;
        self.end_large(out)
    }

    /// Appends the footer and zero padding to the next block boundary. Returns the summary
    /// (the file is `footer_offset + 64` bytes plus padding).
    pub fn finish(mut self, lsn: u64, out: &mut Vec<u8>) -> Result<Summary, EncodeError> {
        if self.open.is_some() {
            return Err(EncodeError::Sequence("footer inside a large-value frame"));
        }
        let footer_offset = self.len;
        let mut f = [0u8; FOOTER_BYTES];
        f[0..8].copy_from_slice(&FOOTER_MAGIC);
        f[8..16].copy_from_slice(&self.entries.to_le_bytes());
        f[16..24].copy_from_slice(&self.chunks.to_le_bytes());
        f[24..32].copy_from_slice(&lsn.to_le_bytes());
        f[32..40].copy_from_slice(&self.hasher.digest().to_le_bytes());
        f[40..48].copy_from_slice(&self.large_values.to_le_bytes());
        let sum = xxh3_64(&f[..56]);
        f[56..64].copy_from_slice(&sum.to_le_bytes());
        self.emit(&f, out);
        let total = align_up(self.len as usize, BLOCK_SIZE);
        let pad = total - self.len as usize;
        out.resize(out.len() + pad, 0);
        Ok(Summary {
            version: FORMAT_VERSION,
            entries: self.entries,
            chunks: self.chunks,
            large_values: self.large_values,
            footer_offset,
        })
    }
}

/// One chunk frame, checksum verified.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Offset of the frame in the file.
    pub offset: u64,
    /// Offset just after the frame (its padding included).
    pub end: u64,
    /// How the payload is compressed.
    pub compression: Compression,
    /// Uncompressed (archive) length.
    pub raw_len: usize,
    /// Entries the archive must hold.
    pub entry_count: u32,
    /// The stored payload.
    pub payload: &'a [u8],
}

/// One large-value frame: header checked, lengths bounded, padding and trailer in place. The
/// body checksum is checked by whoever reads the body ([`verify_with`] while hashing the file,
/// [`Large::copy_value`] while copying), so that 512 MiB are not read one extra time for it.
#[derive(Debug, Clone, Copy)]
pub struct Large<'a> {
    /// Offset of the frame in the file.
    pub offset: u64,
    /// Offset just after the frame (its trailer included).
    pub end: u64,
    /// Key bytes (not yet checked against the body checksum).
    pub key: &'a [u8],
    /// Value bytes (not yet checked against the body checksum).
    pub value: &'a [u8],
    /// Absolute expiry in Unix ms.
    pub expire_at_ms: Option<u64>,
    body_sum: u64,
}

impl Large<'_> {
    /// File offset of the key (the value follows it).
    fn body_offset(&self) -> usize {
        self.offset as usize + LARGE_HEADER_BYTES
    }

    /// Copies the value into `dst` (exactly `value.len()` bytes) in pieces of
    /// [`READ_PIECE_BYTES`], checking the body checksum on the way, and calls `consumed` with
    /// the file offset reached after each piece (all bytes before it are read). On a checksum
    /// mismatch `dst` holds unchecked bytes: the caller drops it.
    pub fn copy_value(&self, dst: &mut [u8], consumed: &mut dyn FnMut(usize)) -> Result<(), Corrupt> {
        if dst.len() != self.value.len() {
            return Err(corrupt(self.offset as usize, Invalid::LargeFields));
        }
        let mut sum = Xxh3::new();
        sum.update(self.key);
        let mut at = self.body_offset() + self.key.len();
        for (src, d) in self.value.chunks(READ_PIECE_BYTES).zip(dst.chunks_mut(READ_PIECE_BYTES)) {
            sum.update(src);
            d.copy_from_slice(src);
            at += src.len();
            consumed(at);
        }
        if sum.digest() != self.body_sum {
            return Err(corrupt(self.offset as usize, Invalid::LargeChecksum));
        }
        Ok(())
    }
}

/// A frame of a snapshot file, as [`frames`] hands them out.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    /// A chunk of entries.
    Chunk(Chunk<'a>),
    /// One entry with a large value.
    Large(Large<'a>),
}

impl Frame<'_> {
    /// Offset just after the frame.
    pub fn end(&self) -> u64 {
        match self {
            Frame::Chunk(c) => c.end,
            Frame::Large(l) => l.end,
        }
    }
}

enum Raw<'a> {
    Frame(Frame<'a>),
    Footer { entries: u64, chunks: u64, lsn: u64, file_sum: u64, large_values: u64 },
}

/// Reads the frame at `pos`: a verified chunk, a large-value frame (body unchecked, see
/// [`Large`]) or the footer.
fn frame_at(b: &[u8], pos: usize) -> Result<Raw<'_>, Corrupt> {
    let magic = b.get(pos..pos + 4).ok_or(corrupt(pos, Invalid::Truncated))?;
    if magic == CHUNK_MAGIC {
        let h = b.get(pos..pos + CHUNK_HEADER_BYTES).ok_or(corrupt(pos, Invalid::Truncated))?;
        let fields = corrupt(pos, Invalid::ChunkFields);
        let compression = h.get(4).copied().and_then(Compression::from_code).ok_or(fields)?;
        let stored = u32_at(h, 8).ok_or(fields)? as usize;
        let raw_len = u32_at(h, 12).ok_or(fields)? as usize;
        let entry_count = u32_at(h, 16).ok_or(fields)?;
        let sum = u64_at(h, 24).ok_or(fields)?;
        if !is_zero(h.get(5..8).unwrap_or(&[1]))
            || !is_zero(h.get(20..24).unwrap_or(&[1]))
            || stored > MAX_CHUNK_RAW_BYTES
            || raw_len > MAX_CHUNK_RAW_BYTES
            || entry_count == 0
            || entry_count > MAX_CHUNK_ENTRIES
            || (compression == Compression::None && stored != raw_len)
        {
            return Err(fields);
        }
        let start = pos + CHUNK_HEADER_BYTES;
        let payload = b.get(start..start + stored).ok_or(corrupt(pos, Invalid::Truncated))?;
        let mut hasher = Xxh3::new();
        hasher.update(h.get(..24).unwrap_or_default());
        hasher.update(payload);
        if hasher.digest() != sum {
            return Err(corrupt(pos, Invalid::ChunkChecksum));
        }
        let end = start + align_up(stored, FRAME_ALIGN);
        let pad = b.get(start + stored..end).ok_or(corrupt(pos, Invalid::Truncated))?;
        if !is_zero(pad) {
            return Err(corrupt(start + stored, Invalid::Padding));
        }
        let chunk = Chunk { offset: pos as u64, end: end as u64, compression, raw_len, entry_count, payload };
        return Ok(Raw::Frame(Frame::Chunk(chunk)));
    }
    if magic == LARGE_MAGIC {
        return large_at(b, pos).map(|l| Raw::Frame(Frame::Large(l)));
    }
    let f = b.get(pos..pos + FOOTER_BYTES).ok_or(corrupt(pos, Invalid::Truncated))?;
    if f.get(..8) != Some(&FOOTER_MAGIC[..]) {
        return Err(corrupt(pos, Invalid::FrameMagic));
    }
    let bad = corrupt(pos, Invalid::FooterChecksum);
    if xxh3_64(f.get(..56).unwrap_or_default()) != u64_at(f, 56).ok_or(bad)? {
        return Err(bad);
    }
    if !is_zero(f.get(48..56).unwrap_or(&[1])) {
        return Err(corrupt(pos, Invalid::Counts));
    }
    Ok(Raw::Footer {
        entries: u64_at(f, 8).ok_or(bad)?,
        chunks: u64_at(f, 16).ok_or(bad)?,
        lsn: u64_at(f, 24).ok_or(bad)?,
        file_sum: u64_at(f, 32).ok_or(bad)?,
        large_values: u64_at(f, 40).ok_or(bad)?,
    })
}

/// The large-value frame at `pos` (its magic already seen).
fn large_at(b: &[u8], pos: usize) -> Result<Large<'_>, Corrupt> {
    let h = b.get(pos..pos + LARGE_HEADER_BYTES).ok_or(corrupt(pos, Invalid::Truncated))?;
    let sum = u64_at(h, 24).ok_or(corrupt(pos, Invalid::Truncated))?;
    if xxh3_64(h.get(..24).unwrap_or_default()) != sum {
        return Err(corrupt(pos, Invalid::LargeHeaderChecksum));
    }
    let fields = corrupt(pos, Invalid::LargeFields);
    let flags = h.get(4).copied().ok_or(fields)?;
    let key_len = u32_at(h, 8).ok_or(fields)? as usize;
    let value_len = u32_at(h, 12).ok_or(fields)? as usize;
    let expire = u64_at(h, 16).ok_or(fields)?;
    if flags > 1
        || !is_zero(h.get(5..8).unwrap_or(&[1]))
        || key_len > MAX_ITEM_BYTES
        || value_len > MAX_ITEM_BYTES
        || (flags == 0 && expire != 0)
    {
        return Err(fields);
    }
    // Both lengths are below 2^29: no overflow on any target we build for (64-bit).
    let body = pos + LARGE_HEADER_BYTES;
    let key = b.get(body..body + key_len).ok_or(corrupt(pos, Invalid::Truncated))?;
    let value = b.get(body + key_len..body + key_len + value_len).ok_or(corrupt(pos, Invalid::Truncated))?;
    let body_end = body + key_len + value_len;
    let trailer = body + align_up(key_len + value_len, FRAME_ALIGN);
    let t = b.get(trailer..trailer + LARGE_TRAILER_BYTES).ok_or(corrupt(pos, Invalid::Truncated))?;
    if !is_zero(b.get(body_end..trailer).unwrap_or(&[1])) {
        return Err(corrupt(body_end, Invalid::Padding));
    }
    if !is_zero(t.get(8..).unwrap_or(&[1])) {
        return Err(corrupt(trailer + 8, Invalid::Padding));
    }
    Ok(Large {
        offset: pos as u64,
        end: (trailer + LARGE_TRAILER_BYTES) as u64,
        key,
        value,
        expire_at_ms: (flags == 1).then_some(expire),
        body_sum: u64_at(t, 0).ok_or(fields)?,
    })
}

/// Verifies a whole snapshot: header, every frame's checksum and fields, the footer, its
/// counts, the checksum over the whole and the zero padding. Reads no archive.
pub fn verify(b: &[u8]) -> Result<(Header, Summary), Corrupt> {
    verify_with(b, &mut |_| {})
}

/// [`verify`], calling `consumed` with the offset reached after each frame and after each
/// [`READ_PIECE_BYTES`] of a large value: verification reads nothing before that offset again.
pub fn verify_with(b: &[u8], consumed: &mut dyn FnMut(usize)) -> Result<(Header, Summary), Corrupt> {
    let header = Header::decode(b)?;
    let version = u32_at(b, 8).unwrap_or(0);
    let mut file = Xxh3::new();
    file.update(b.get(..HEADER_BYTES).unwrap_or_default());
    let mut pos = HEADER_BYTES;
    let (mut entries, mut chunks, mut large_values) = (0u64, 0u64, 0u64);
    loop {
        match frame_at(b, pos)? {
            Raw::Frame(Frame::Chunk(c)) => {
                let end = c.end as usize;
                file.update(b.get(pos..end).unwrap_or_default());
                entries += u64::from(c.entry_count);
                chunks += 1;
                pos = end;
            }
            Raw::Frame(Frame::Large(l)) => {
                if version < 2 {
                    // Version 1 has no such frame.
                    return Err(corrupt(pos, Invalid::FrameMagic));
                }
                let body = l.body_offset();
                file.update(b.get(pos..body).unwrap_or_default());
                let mut sum = Xxh3::new();
                let mut at = body;
                for piece in
                    b.get(body..body + l.key.len() + l.value.len()).unwrap_or_default().chunks(READ_PIECE_BYTES)
                {
                    sum.update(piece);
                    file.update(piece);
                    at += piece.len();
                    consumed(at);
                }
                if sum.digest() != l.body_sum {
                    return Err(corrupt(pos, Invalid::LargeChecksum));
                }
                let end = l.end as usize;
                file.update(b.get(at..end).unwrap_or_default());
                entries += 1;
                large_values += 1;
                pos = end;
            }
            Raw::Footer { entries: fe, chunks: fc, lsn, file_sum, large_values: fl } => {
                if fe != entries || fc != chunks || fl != large_values || lsn != header.lsn {
                    return Err(corrupt(pos, Invalid::Counts));
                }
                if file.digest() != file_sum {
                    return Err(corrupt(pos, Invalid::FileChecksum));
                }
                let end = pos + FOOTER_BYTES;
                let rest = b.get(end..).unwrap_or_default();
                if rest.len() >= BLOCK_SIZE || !is_zero(rest) {
                    return Err(corrupt(end, Invalid::Padding));
                }
                consumed(b.len());
                let summary = Summary { version, entries, chunks, large_values, footer_offset: pos as u64 };
                return Ok((header, summary));
            }
        }
        consumed(pos);
    }
}

/// The frames of a snapshot, in order (each frame re-checked; a large value's body is checked
/// when it is read, see [`Large`]). Use after [`verify`].
pub fn frames(b: &[u8]) -> impl Iterator<Item = Result<Frame<'_>, Corrupt>> + '_ {
    let mut pos = Some(HEADER_BYTES);
    std::iter::from_fn(move || {
        let p = pos?;
        match frame_at(b, p) {
            Ok(Raw::Frame(f)) => {
                pos = Some(f.end() as usize);
                Some(Ok(f))
            }
            Ok(Raw::Footer { .. }) => {
                pos = None;
                None
            }
            Err(e) => {
                pos = None;
                Some(Err(e))
            }
        }
    })
}

/// The entries of a chunk, through rkyv's checked access. Uncompressed payloads are accessed in
/// place when they are 16-byte aligned in memory (they are when the file was read into an
/// aligned buffer), otherwise copied into `scratch`; lz4 payloads are decompressed into
/// `scratch`.
pub fn entries<'a>(chunk: &Chunk<'a>, scratch: &'a mut AlignedVec) -> Result<&'a ArchivedEntries, Corrupt> {
    let at = chunk.offset as usize;
    let bytes: &[u8] = match chunk.compression {
        Compression::None if (chunk.payload.as_ptr() as usize) % FRAME_ALIGN == 0 => chunk.payload,
        Compression::None => {
            scratch.clear();
            scratch.extend_from_slice(chunk.payload);
            scratch
        }
        Compression::Lz4 => {
            scratch.clear();
            scratch.resize(chunk.raw_len, 0);
            match lz4_flex::block::decompress_into(chunk.payload, scratch) {
                Ok(n) if n == chunk.raw_len => {}
                _ => return Err(corrupt(at, Invalid::Decompress)),
            }
            scratch
        }
    };
    let archived = rkyv::access::<ArchivedEntries, rancor::Error>(bytes).map_err(|_| corrupt(at, Invalid::Archive))?;
    if archived.len() != chunk.entry_count as usize {
        return Err(corrupt(at, Invalid::Archive));
    }
    Ok(archived)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Item = (Vec<u8>, Vec<u8>, Option<u64>);

    fn sample(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| {
                let exp = (i % 3 == 0).then_some(1_000 + i as u64);
                (format!("key:{i}").into_bytes(), format!("value-{i}-{}", "x".repeat(i % 17)).into_bytes(), exp)
            })
            .collect()
    }

    fn encode(items: &[Item], compression: Compression, per_chunk: usize) -> Vec<u8> {
        encode_mixed(items, compression, per_chunk, usize::MAX)
    }

    /// Items whose value has `large_min` bytes or more go into large-value frames (streamed in
    /// pieces of 7 bytes, as the writer streams in pieces), the rest into chunks of `per_chunk`.
    fn encode_mixed(items: &[Item], compression: Compression, per_chunk: usize, large_min: usize) -> Vec<u8> {
        let header = Header { shard_id: 1, shard_count: 3, lsn: 42, created_ms: 7, compression };
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header, &mut out);
        for c in items.chunks(per_chunk.max(1)) {
            let (large, small): (Vec<&Item>, Vec<&Item>) = c.iter().partition(|(_, v, _)| v.len() >= large_min);
            let refs: Vec<EntryRef<'_>> = small.iter().map(|(k, v, e)| EntryRef::new(k, v, *e)).collect();
            enc.chunk(&refs, &mut out).unwrap();
            for (k, v, e) in large {
                enc.begin_large(k.len(), v.len(), *e, &mut out).unwrap();
                for piece in k.chunks(7).chain(v.chunks(7)) {
                    enc.large_body(piece, &mut out).unwrap();
                }
                enc.end_large(&mut out).unwrap();
            }
        }
        enc.finish(42, &mut out).unwrap();
        out
    }

    /// `sample(n)` with every fifth value long enough to go into a large-value frame with
    /// `encode_mixed(.., MIXED_LARGE_MIN)`.
    const MIXED_LARGE_MIN: usize = 40;
    fn mixed_sample(n: usize) -> Vec<Item> {
        let mut items = sample(n);
        for (i, it) in items.iter_mut().enumerate().filter(|(i, _)| i % 5 == 2) {
            it.1 = (0..MIXED_LARGE_MIN + i * 3).map(|j| (i * 31 + j) as u8).collect();
        }
        items
    }

    fn sorted(mut items: Vec<Item>) -> Vec<Item> {
        items.sort();
        items
    }

    /// Rewrites the version field of an encoded file and every checksum that covers it.
    fn with_version(b: &[u8], version: u32) -> Vec<u8> {
        let mut b = b.to_vec();
        let footer = verify(&aligned(&b)).map(|(_, s)| s.footer_offset as usize);
        b[8..12].copy_from_slice(&version.to_le_bytes());
        let sum = xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        if let Ok(f) = footer {
            let file_sum = xxh3_64(&b[..f]);
            b[f + 32..f + 40].copy_from_slice(&file_sum.to_le_bytes());
            let sum = xxh3_64(&b[f..f + 56]);
            b[f + 56..f + 64].copy_from_slice(&sum.to_le_bytes());
        }
        b
    }

    fn aligned(b: &[u8]) -> AlignedVec {
        let mut v = AlignedVec::new();
        v.extend_from_slice(b);
        v
    }

    /// Every entry of a verified file, in file order.
    fn decode(b: &[u8]) -> Result<Vec<Item>, Corrupt> {
        verify(b)?;
        read_frames(b)
    }

    fn read_frames(b: &[u8]) -> Result<Vec<Item>, Corrupt> {
        let mut got = Vec::new();
        for f in frames(b) {
            match f? {
                Frame::Chunk(c) => {
                    let mut scratch = AlignedVec::new();
                    for e in entries(&c, &mut scratch)?.iter() {
                        got.push((e.key_bytes().to_vec(), e.value_bytes().to_vec(), e.expire_at()));
                    }
                }
                Frame::Large(l) => {
                    let mut v = vec![0u8; l.value.len()];
                    l.copy_value(&mut v, &mut |_| {})?;
                    got.push((l.key.to_vec(), v, l.expire_at_ms));
                }
            }
        }
        Ok(got)
    }

    #[test]
    fn roundtrip_with_and_without_lz4() {
        let items = sample(1000);
        for compression in [Compression::None, Compression::Lz4] {
            let b = aligned(&encode(&items, compression, 64));
            assert_eq!(b.len() % BLOCK_SIZE, 0);
            let (h, s) = verify(&b).unwrap();
            assert_eq!((h.shard_id, h.shard_count, h.lsn, h.created_ms, h.compression), (1, 3, 42, 7, compression));
            assert_eq!((s.entries, s.chunks), (1000, 16));
            assert_eq!(decode(&b).unwrap(), items);
        }
    }

    #[test]
    fn empty_snapshot_roundtrips() {
        let b = aligned(&encode(&[], Compression::Lz4, 1));
        assert_eq!(verify(&b).unwrap().1.entries, 0);
        assert!(decode(&b).unwrap().is_empty());
    }

    #[test]
    fn unaligned_uncompressed_payload_is_copied() {
        let b = encode(&sample(10), Compression::None, 4);
        let mut shifted = AlignedVec::<16>::new();
        shifted.push(0);
        shifted.extend_from_slice(&b);
        let shifted = &shifted[1..];
        assert_eq!(decode(shifted).unwrap(), sample(10));
    }

    #[test]
    fn file_names() {
        assert_eq!(snapshot_file_name(5), "snap-00000000000000000005.snap");
        assert_eq!(parse_snapshot_file_name("snap-00000000000000000005.snap"), Some(5));
        assert_eq!(parse_snapshot_file_name("snap-5.snap"), None);
        assert_eq!(parse_snapshot_file_name("snap-00000000000000000005.tmp"), None);
    }

    /// Every truncation of a small multi-chunk file is corruption (never a panic, never accepted).
    #[test]
    fn every_truncation_is_detected() {
        for (compression, large_min) in
            [(Compression::None, usize::MAX), (Compression::Lz4, usize::MAX), (Compression::Lz4, MIXED_LARGE_MIN)]
        {
            let b = encode_mixed(&mixed_sample(40), compression, 8, large_min);
            let logical = verify(&aligned(&b)).unwrap().1.footer_offset as usize + FOOTER_BYTES;
            for cut in 0..b.len() {
                let r = decode(&aligned(&b[..cut]));
                if cut >= logical {
                    // Only padding removed: still the whole snapshot.
                    assert_eq!(r.unwrap().len(), 40, "cut {cut}");
                } else {
                    assert!(r.is_err(), "truncation at {cut} of {} accepted", b.len());
                }
            }
        }
    }

    /// Every single-bit flip anywhere in the file is detected.
    #[test]
    fn every_bit_flip_is_detected() {
        for (compression, large_min) in
            [(Compression::None, usize::MAX), (Compression::Lz4, usize::MAX), (Compression::None, MIXED_LARGE_MIN)]
        {
            let b = encode_mixed(&mixed_sample(12), compression, 5, large_min);
            for i in 0..b.len() {
                for bit in 0..8 {
                    let mut m = aligned(&b);
                    m[i] ^= 1 << bit;
                    assert!(decode(&m).is_err(), "flip of bit {bit} at {i} accepted");
                }
            }
        }
    }

    /// Random garbage and random overwrites never panic.
    #[test]
    fn random_damage_never_panics() {
        let b = encode_mixed(&mixed_sample(30), Compression::Lz4, 7, MIXED_LARGE_MIN);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut m = aligned(&b);
            for _ in 0..(next() % 8 + 1) {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            let _ = decode(&m);
            // Bypass the checksums: the archive checks alone must not panic either.
            let _ = read_frames(&m);
        }
        let garbage: Vec<u8> = (0..9000).map(|_| next() as u8).collect();
        assert!(decode(&aligned(&garbage)).is_err());
    }

    /// A chunk with a valid checksum but a payload that is not an archive is `Archive`, not a
    /// panic (checked access on file bytes).
    #[test]
    fn checksummed_garbage_payload_is_rejected_by_bytecheck() {
        let payload = [0xffu8; 48];
        let mut h = [0u8; CHUNK_HEADER_BYTES];
        h[0..4].copy_from_slice(&CHUNK_MAGIC);
        h[8..12].copy_from_slice(&48u32.to_le_bytes());
        h[12..16].copy_from_slice(&48u32.to_le_bytes());
        h[16..20].copy_from_slice(&1u32.to_le_bytes());
        let mut s = Xxh3::new();
        s.update(&h[..24]);
        s.update(&payload);
        h[24..32].copy_from_slice(&s.digest().to_le_bytes());
        let mut file = aligned(&[0u8; HEADER_BYTES]);
        file.extend_from_slice(&h);
        file.extend_from_slice(&payload);
        let Some(Ok(Frame::Chunk(c))) = frames(&file).next() else { panic!("a chunk") };
        let mut scratch = AlignedVec::new();
        assert_eq!(entries(&c, &mut scratch).err().map(|e| e.reason), Some(Invalid::Archive));
    }

    #[test]
    fn large_value_frames_roundtrip_beside_chunks() {
        let items = mixed_sample(200);
        for compression in [Compression::None, Compression::Lz4] {
            let b = aligned(&encode_mixed(&items, compression, 16, MIXED_LARGE_MIN));
            let (_, s) = verify(&b).unwrap();
            assert_eq!((s.version, s.entries, s.chunks, s.large_values), (FORMAT_VERSION, 200, 13, 40));
            assert_eq!(sorted(decode(&b).unwrap()), sorted(items.clone()));
        }
    }

    /// A value of several read pieces: copied whole, progress reported piece by piece, up to
    /// the end of the value, and verification reports progress inside it too.
    #[test]
    fn a_multi_megabyte_value_is_read_in_pieces() {
        let value: Vec<u8> = (0..(3 << 20) + 77).map(|i| (i % 251) as u8).collect();
        let items = vec![(b"big".to_vec(), value.clone(), Some(5)), (b"small".to_vec(), b"v".to_vec(), None)];
        let b = aligned(&encode_mixed(&items, Compression::Lz4, 2, 1 << 20));
        let mut seen = Vec::new();
        let (_, s) = verify_with(&b, &mut |at| seen.push(at)).unwrap();
        assert_eq!(s.large_values, 1);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress only moves forward: {seen:?}");
        assert!(seen.len() >= 4 && seen.last() == Some(&b.len()));
        let Some(Ok(Frame::Large(l))) = frames(&b).nth(1) else { panic!("the large frame follows the chunk") };
        assert_eq!((l.key, l.expire_at_ms), (&b"big"[..], Some(5)));
        let mut dst = vec![0u8; value.len()];
        let mut offsets = Vec::new();
        l.copy_value(&mut dst, &mut |at| offsets.push(at)).unwrap();
        assert_eq!(dst, value);
        assert_eq!(offsets.len(), 4);
        assert_eq!(*offsets.last().unwrap(), l.offset as usize + LARGE_HEADER_BYTES + 3 + value.len());
    }

    /// Damage in a large-value frame is reported as the frame's own error at its offset, by
    /// verification and by the copy (which checks the body on its own).
    #[test]
    fn damaged_large_frames_are_corruption_with_their_reason() {
        let items = vec![(b"k".to_vec(), vec![9u8; 5000], None)];
        let b = encode_mixed(&items, Compression::Lz4, 1, 100);
        let at = HEADER_BYTES;
        let reason = |m: &[u8]| verify(&aligned(m)).err().map(|c| (c.offset as usize, c.reason));
        // The value.
        let mut m = b.clone();
        m[at + LARGE_HEADER_BYTES + 1 + 4000] ^= 1;
        assert_eq!(reason(&m), Some((at, Invalid::LargeChecksum)));
        let m = aligned(&m);
        let Some(Ok(Frame::Large(l))) = frames(&m).next() else { panic!("a large frame") };
        let mut dst = vec![0u8; 5000];
        assert_eq!(l.copy_value(&mut dst, &mut |_| {}).err().map(|c| c.reason), Some(Invalid::LargeChecksum));
        // The key, the length, the trailer's checksum and its reserved bytes.
        let trailer = at + LARGE_HEADER_BYTES + (5001usize).next_multiple_of(16);
        for (i, want) in [
            (at + LARGE_HEADER_BYTES, Invalid::LargeChecksum),
            (at + 13, Invalid::LargeHeaderChecksum),
            (trailer, Invalid::LargeChecksum),
        ] {
            let mut m = b.clone();
            m[i] ^= 0x10;
            assert_eq!(reason(&m).map(|r| r.1), Some(want), "flip at {i}");
        }
        let mut m = b.clone();
        m[trailer + 9] = 1;
        assert_eq!(reason(&m), Some((trailer + 8, Invalid::Padding)));
        // A checksummed header with a length beyond the limit, and one beyond the file.
        for (value_len, want) in [(MAX_ITEM_BYTES as u32 + 1, Invalid::LargeFields), (1 << 20, Invalid::Truncated)] {
            let mut m = b.clone();
            m[at + 12..at + 16].copy_from_slice(&value_len.to_le_bytes());
            let sum = xxh3_64(&m[at..at + 24]);
            m[at + 24..at + 32].copy_from_slice(&sum.to_le_bytes());
            assert_eq!(reason(&m), Some((at, want)));
        }
        // Cut inside the value.
        assert_eq!(reason(&b[..at + 1000]), Some((at, Invalid::Truncated)));
    }

    /// Version 1 files (chunks only) still verify and load; a large-value frame in one is
    /// damage; a version this build does not know is refused as such.
    #[test]
    fn version_1_files_are_read_and_newer_versions_refused() {
        let items = sample(50);
        let v1 = aligned(&with_version(&encode(&items, Compression::Lz4, 8), 1));
        let (_, s) = verify(&v1).unwrap();
        assert_eq!((s.version, s.entries, s.large_values), (1, 50, 0));
        assert_eq!(decode(&v1).unwrap(), items);
        let mixed = with_version(&encode_mixed(&mixed_sample(10), Compression::Lz4, 5, MIXED_LARGE_MIN), 1);
        assert_eq!(verify(&aligned(&mixed)).err().map(|c| c.reason), Some(Invalid::FrameMagic));
        let v3 = with_version(&encode(&items, Compression::Lz4, 8), 3);
        assert_eq!(verify(&aligned(&v3)).err().map(|c| c.reason), Some(Invalid::UnsupportedVersion(3)));
    }

    #[test]
    fn the_encoder_refuses_frames_out_of_order() {
        let header = Header { shard_id: 0, shard_count: 1, lsn: 1, created_ms: 0, compression: Compression::Lz4 };
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header, &mut out);
        let one = [EntryRef::new(b"k", b"v", None)];
        assert!(matches!(enc.large_body(b"x", &mut out), Err(EncodeError::Sequence(_))));
        enc.begin_large(1, 2, None, &mut out).unwrap();
        assert!(matches!(enc.chunk(&one, &mut out), Err(EncodeError::Sequence(_))));
        assert!(matches!(enc.begin_large(1, 1, None, &mut out), Err(EncodeError::Sequence(_))));
        assert!(matches!(enc.large_body(b"four", &mut out), Err(EncodeError::Sequence(_))));
        enc.large_body(b"kv", &mut out).unwrap();
        assert!(matches!(enc.end_large(&mut out), Err(EncodeError::Sequence(_))), "one byte missing");
        enc.large_body(b"v", &mut out).unwrap();
        enc.end_large(&mut out).unwrap();
        enc.begin_large(0, 0, None, &mut out).unwrap();
        assert!(matches!(enc.finish(1, &mut out), Err(EncodeError::Sequence(_))));
    }

    /// A chunk with a long key grows the lz4 buffer; it is given back at once.
    #[test]
    fn the_lz4_buffer_keeps_no_capacity_beyond_its_bound() {
        let header = Header { shard_id: 0, shard_count: 1, lsn: 1, created_ms: 0, compression: Compression::Lz4 };
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header, &mut out);
        let key = vec![3u8; 5 << 20];
        enc.chunk(&[EntryRef::new(&key, b"v", None)], &mut out).unwrap();
        assert!(enc.lz4_buf.capacity() <= LZ4_BUFFER_KEEP_BYTES, "kept {}", enc.lz4_buf.capacity());
        enc.chunk(&[EntryRef::new(b"k", b"v", None)], &mut out).unwrap();
        assert!(enc.lz4_buf.capacity() <= LZ4_BUFFER_KEEP_BYTES);
    }
}
