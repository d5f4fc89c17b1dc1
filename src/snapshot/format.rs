//! Byte layout of a snapshot file, its encoder and its verifying decoder.
//!
//! ```text
//! snap-<lsn, 20 digits>.snap
//! +--------+-----------------------+-----------------------+-----+--------+--------------+
//! | header | chunk 0               | chunk 1               | ... | footer | zero padding |
//! | 64 B   | 32 B hdr, rkyv, pad16 | 32 B hdr, rkyv, pad16 |     | 64 B   | to 4096      |
//! +--------+-----------------------+-----------------------+-----+--------+--------------+
//! ```
//!
//! Every frame (header, chunk, footer) carries its own xxh3-64 checksum, and the footer carries
//! one over every byte before it. A chunk's payload is an rkyv archive of its entries, optionally
//! lz4-compressed. Every frame is a multiple of 16 bytes long, so an uncompressed payload sits at
//! a 16-byte aligned offset and can be accessed in place (zero-copy) when the file is read into
//! an aligned buffer. The byte tables are in `docs/SNAPSHOT.md`; this file and that document
//! must change together.
//!
//! Everything here is pure: no I/O, no clock. Decoding never indexes out of bounds, checks every
//! length against its limit before using it, allocates only after the checksum covering a
//! length has been verified, and uses rkyv's *checked* access (bytecheck) on file bytes only.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// Files are padded to whole blocks (O_DIRECT writes whole 4096-byte blocks).
pub const BLOCK_SIZE: usize = 4096;
/// Current format version.
pub const FORMAT_VERSION: u32 = 1;
/// First 8 bytes of every snapshot file.
pub const HEADER_MAGIC: [u8; 8] = *b"RCSNAPv1";
/// First 4 bytes of every chunk frame.
pub const CHUNK_MAGIC: [u8; 4] = *b"RCCK";
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

/// One entry as it is archived: borrowed from the store while encoding.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy)]
pub struct EntryRef<'a> {
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
pub type ArchivedEntries = rkyv::vec::ArchivedVec<ArchivedEntryRef<'static>>;

impl ArchivedEntryRef<'_> {
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
    /// Entries in all chunks.
    pub entries: u64,
    /// Chunks in the file.
    pub chunks: u64,
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
        if version != FORMAT_VERSION {
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

/// Encodes a snapshot as a stream of bytes: the header, chunks, then the footer. Keeps the
/// whole-file checksum and the counts as it goes; the caller writes the bytes it appends to
/// `out` in order.
pub struct Encoder {
    hasher: Xxh3,
    len: u64,
    entries: u64,
    chunks: u64,
    compression: Compression,
    lz4_buf: Vec<u8>,
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
            compression: header.compression,
            lz4_buf: Vec::new(),
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

    /// Appends one chunk holding `entries` to `out`. An empty slice appends nothing.
    pub fn chunk(&mut self, entries: &[EntryRef<'_>], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > MAX_CHUNK_ENTRIES as usize {
            return Err(EncodeError::TooLarge(format!("{} entries", entries.len())));
        }
        if let Some(e) = entries.iter().find(|e| e.key.len() > MAX_ITEM_BYTES || e.value.len() > MAX_ITEM_BYTES) {
            return Err(EncodeError::TooLarge(format!("key {} / value {} bytes", e.key.len(), e.value.len())));
        }
        let raw =
            rkyv::to_bytes::<rancor::Error>(&entries.to_vec()).map_err(|e| EncodeError::Archive(e.to_string()))?;
        if raw.len() > MAX_CHUNK_RAW_BYTES {
            return Err(EncodeError::TooLarge(format!("{} archive bytes", raw.len())));
        }
        let payload: &[u8] = match self.compression {
            Compression::None => &raw,
            Compression::Lz4 => {
                self.lz4_buf.clear();
                self.lz4_buf.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
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
        self.entries += entries.len() as u64;
        self.chunks += 1;
        Ok(())
    }

    /// Appends the footer and zero padding to the next block boundary. Returns the summary
    /// (the file is `footer_offset + 64` bytes plus padding).
    pub fn finish(mut self, lsn: u64, out: &mut Vec<u8>) -> Summary {
        let footer_offset = self.len;
        let mut f = [0u8; FOOTER_BYTES];
        f[0..8].copy_from_slice(&FOOTER_MAGIC);
        f[8..16].copy_from_slice(&self.entries.to_le_bytes());
        f[16..24].copy_from_slice(&self.chunks.to_le_bytes());
        f[24..32].copy_from_slice(&lsn.to_le_bytes());
        f[32..40].copy_from_slice(&self.hasher.digest().to_le_bytes());
        let sum = xxh3_64(&f[..56]);
        f[56..64].copy_from_slice(&sum.to_le_bytes());
        self.emit(&f, out);
        let total = align_up(self.len as usize, BLOCK_SIZE);
        let pad = total - self.len as usize;
        out.resize(out.len() + pad, 0);
        Summary { entries: self.entries, chunks: self.chunks, footer_offset }
    }
}

/// One chunk frame, checksum verified.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Offset of the frame in the file.
    pub offset: u64,
    /// How the payload is compressed.
    pub compression: Compression,
    /// Uncompressed (archive) length.
    pub raw_len: usize,
    /// Entries the archive must hold.
    pub entry_count: u32,
    /// The stored payload.
    pub payload: &'a [u8],
}

enum Frame<'a> {
    Chunk(Chunk<'a>, usize),
    Footer { entries: u64, chunks: u64, lsn: u64, file_sum: u64 },
}

/// Reads the frame at `pos`: a verified chunk (and the offset after it) or the footer.
fn frame_at(b: &[u8], pos: usize) -> Result<Frame<'_>, Corrupt> {
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
        let chunk = Chunk { offset: pos as u64, compression, raw_len, entry_count, payload };
        return Ok(Frame::Chunk(chunk, end));
    }
    let f = b.get(pos..pos + FOOTER_BYTES).ok_or(corrupt(pos, Invalid::Truncated))?;
    if f.get(..8) != Some(&FOOTER_MAGIC[..]) {
        return Err(corrupt(pos, Invalid::FrameMagic));
    }
    let bad = corrupt(pos, Invalid::FooterChecksum);
    if xxh3_64(f.get(..56).unwrap_or_default()) != u64_at(f, 56).ok_or(bad)? {
        return Err(bad);
    }
    if !is_zero(f.get(40..56).unwrap_or(&[1])) {
        return Err(corrupt(pos, Invalid::Counts));
    }
    Ok(Frame::Footer {
        entries: u64_at(f, 8).ok_or(bad)?,
        chunks: u64_at(f, 16).ok_or(bad)?,
        lsn: u64_at(f, 24).ok_or(bad)?,
        file_sum: u64_at(f, 32).ok_or(bad)?,
    })
}

/// Verifies a whole snapshot: header, every chunk's checksum and fields, the footer, its
/// counts, the checksum over the whole and the zero padding. Reads no archive.
pub fn verify(b: &[u8]) -> Result<(Header, Summary), Corrupt> {
    let header = Header::decode(b)?;
    let mut pos = HEADER_BYTES;
    let (mut entries, mut chunks) = (0u64, 0u64);
    loop {
        match frame_at(b, pos)? {
            Frame::Chunk(c, next) => {
                entries += u64::from(c.entry_count);
                chunks += 1;
                pos = next;
            }
            Frame::Footer { entries: fe, chunks: fc, lsn, file_sum } => {
                if fe != entries || fc != chunks || lsn != header.lsn {
                    return Err(corrupt(pos, Invalid::Counts));
                }
                if xxh3_64(b.get(..pos).unwrap_or_default()) != file_sum {
                    return Err(corrupt(pos, Invalid::FileChecksum));
                }
                let end = pos + FOOTER_BYTES;
                let rest = b.get(end..).unwrap_or_default();
                if rest.len() >= BLOCK_SIZE || !is_zero(rest) {
                    return Err(corrupt(end, Invalid::Padding));
                }
                return Ok((header, Summary { entries, chunks, footer_offset: pos as u64 }));
            }
        }
    }
}

/// The chunks of a snapshot, in order (each frame re-checked). Use after [`verify`].
pub fn chunks(b: &[u8]) -> impl Iterator<Item = Result<Chunk<'_>, Corrupt>> + '_ {
    let mut pos = Some(HEADER_BYTES);
    std::iter::from_fn(move || {
        let p = pos?;
        match frame_at(b, p) {
            Ok(Frame::Chunk(c, next)) => {
                pos = Some(next);
                Some(Ok(c))
            }
            Ok(Frame::Footer { .. }) => {
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
        let header = Header { shard_id: 1, shard_count: 3, lsn: 42, created_ms: 7, compression };
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header, &mut out);
        for c in items.chunks(per_chunk.max(1)) {
            let refs: Vec<EntryRef<'_>> =
                c.iter().map(|(k, v, e)| EntryRef { key: k, value: v, expire_at_ms: *e }).collect();
            enc.chunk(&refs, &mut out).unwrap();
        }
        enc.finish(42, &mut out);
        out
    }

    fn aligned(b: &[u8]) -> AlignedVec {
        let mut v = AlignedVec::new();
        v.extend_from_slice(b);
        v
    }

    fn decode(b: &[u8]) -> Result<Vec<Item>, Corrupt> {
        verify(b)?;
        let mut got = Vec::new();
        for c in chunks(b) {
            let c = c?;
            let mut scratch = AlignedVec::new();
            for e in entries(&c, &mut scratch)?.iter() {
                got.push((e.key_bytes().to_vec(), e.value_bytes().to_vec(), e.expire_at()));
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
        for compression in [Compression::None, Compression::Lz4] {
            let b = encode(&sample(40), compression, 8);
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
        for compression in [Compression::None, Compression::Lz4] {
            let b = encode(&sample(12), compression, 5);
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
        let b = encode(&sample(30), Compression::Lz4, 7);
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
            for c in chunks(&m).flatten() {
                let mut s = AlignedVec::new();
                let _ = entries(&c, &mut s);
            }
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
        let c = chunks(&file).next().unwrap().unwrap();
        let mut scratch = AlignedVec::new();
        assert_eq!(entries(&c, &mut scratch).err().map(|e| e.reason), Some(Invalid::Archive));
    }
}
