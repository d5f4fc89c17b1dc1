//! Incremental request parser.
//!
//! # Input forms
//! - Multibulk: `*<n>\r\n` followed by `n` bulk strings `$<len>\r\n<len bytes>\r\n`. This is
//!   what every client library sends.
//! - Inline: a single line of space-separated words (`PING\r\n`, `set a "b c"\n`), as typed into
//!   `telnet`. Quoting follows Redis's `sdssplitargs`.
//!
//! # Resumption
//! The parser keeps its position inside the unconsumed buffer between calls: the state of the
//! command being read (how many arguments remain, the length of the bulk being read) and the
//! byte ranges of the arguments already seen. A call with more bytes continues from there, so
//! no byte is scanned twice however the input is split (line searches also remember how far
//! they got).
//!
//! # Zero copy
//! Complete commands are split off the front of the caller's `BytesMut` and frozen once; each
//! argument is a `Bytes` slice of that region, so no argument is copied. Inline commands are the
//! exception (quotes and escapes rewrite bytes).
//!
//! # Large bulks
//! A bulk string of [`LARGE_VALUE_MIN_BYTES`] (1 MiB) or more does not stay in the caller's
//! buffer, which would grow by reallocation (holding the old and the new block at once, up to
//! 3x the value). When its `$n` line is read, the arguments before it are split off (they
//! stay `Bytes` slices) and its payload is moved, as it arrives, into a [`LargeBuf`] of its own
//! that grows without copying (see [`crate::large`]). The finished argument is that buffer,
//! exactly: the store adopts it as the value without a copy. The caller's buffer stays small.
//!
//! # Limits (all enforced before memory is committed)
//! | limit | default | error |
//! |---|---|---|
//! | bulk length | 512 MiB (`--proto-max-bulk-len`) | `Protocol error: invalid bulk length` |
//! | arguments per command | 1,048,576 | `Protocol error: invalid multibulk length` |
//! | a length line (`*n` / `$n`) | 64 KiB | `Protocol error: too big mbulk count string` / `too big bulk count string` |
//! | an inline command | 64 KiB | `Protocol error: too big inline request` |
//!
//! A declared length reserves nothing: bytes are buffered only as they arrive (a large bulk's
//! mapping grows with them), and the query buffer limit (enforced by the connection over
//! [`Parser::held_bytes`] and its buffer) bounds that.

use crate::large::{LargeBuf, MapError, LARGE_VALUE_MIN_BYTES};
use bytes::{Buf, Bytes, BytesMut};

/// A range in `ranges`/`done_ranges` whose start is this refers to `owned[end]`.
const OWNED: usize = usize::MAX;

/// Largest line (`*n`, `$n` or an inline command) before the client is cut off, as in Redis
/// (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Limits the parser enforces. See the module docs for defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted bulk string (`proto-max-bulk-len`).
    pub max_bulk_bytes: usize,
    /// Largest accepted argument count of one command.
    pub max_args: usize,
    /// Bulks of this many bytes or more are read into their own buffer (see "Large bulks");
    /// [`LARGE_VALUE_MIN_BYTES`] in the server, smaller in the fuzz targets so they reach it.
    pub large_bulk_min_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk_bytes: 512 * 1024 * 1024, max_args: 1024 * 1024, large_bulk_min_bytes: LARGE_VALUE_MIN_BYTES }
    }
}

/// A protocol violation. The connection replies with [`ParseError::message`] and closes,
/// exactly as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// The kernel refused memory for a large bulk (not a protocol error, but the request
    /// cannot be read: the client gets this and is closed).
    #[error(transparent)]
    NoMemory(#[from] MapError),
}

impl ParseError {
    /// The error reply text (without the leading `-`). Bytes: the offending byte of
    /// `expected '$', got 'x'` is echoed raw, as Redis does.
    pub fn message(&self) -> Vec<u8> {
        match self {
            ParseError::ExpectedDollar(c) => {
                let mut m = b"ERR Protocol error: expected '$', got '".to_vec();
                m.push(*c);
                m.push(b'\'');
                m
            }
            other => format!("ERR {other}").into_bytes(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands.
    Start,
    /// Inside a multibulk: `remaining` bulk strings still to read; next is a `$` header.
    BulkHeader { remaining: usize },
    /// Reading the payload of a bulk string of `len` bytes.
    BulkData { len: usize, remaining: usize },
}

/// Resumable RESP request parser. One per connection.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
    /// Offset in the caller's buffer up to which the current command has been parsed.
    pos: usize,
    /// Offset in the caller's buffer where the command being parsed starts; everything before
    /// it is complete commands not yet split off.
    cmd_start: usize,
    /// Where the current line search stopped (no byte is searched twice).
    line_scan: usize,
    /// Argument ranges of the command being parsed.
    ranges: Vec<(usize, usize)>,
    /// Ranges of complete, not yet emitted commands, as indices into `done_ranges`.
    done_ranges: Vec<(usize, usize)>,
    done_cmds: Vec<(usize, usize)>,
    /// Arguments already taken out of the caller's buffer: those of a command with a large
    /// bulk, and the large bulks themselves (ranges `(OWNED, i)` refer to them).
    owned: Vec<Bytes>,
    /// The large bulk being read, if any (`state` is then `BulkData`).
    large: Option<LargeBuf>,
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            state: State::Start,
            pos: 0,
            cmd_start: 0,
            line_scan: 0,
            ranges: Vec::new(),
            done_ranges: Vec::new(),
            done_cmds: Vec::new(),
            owned: Vec::new(),
            large: None,
        }
    }

    /// Bytes of arguments the parser holds outside the caller's buffer (large bulks, read so
    /// far or complete, and the arguments before them): part of the client's query buffer.
    pub fn held_bytes(&self) -> usize {
        self.owned.iter().map(Bytes::len).sum::<usize>() + self.large.as_ref().map_or(0, LargeBuf::len)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes at the front of the caller's buffer already examined by the parser.
    pub fn pending_bytes(&self) -> usize {
        self.pos
    }

    /// Parses every complete command at the front of `buf`, removes them from `buf` and appends
    /// them to `out`. Bytes of an incomplete command stay in `buf` and the parser remembers how
    /// far it got. On error, the commands parsed before the bad one are still in `out`; the
    /// connection must be closed after replying.
    pub fn parse(&mut self, buf: &mut BytesMut, out: &mut Vec<Vec<Bytes>>) -> Result<(), ParseError> {
        let result = self.parse_loop(buf, out);
        self.emit(buf, out);
        result
    }

    fn parse_loop(&mut self, buf: &mut BytesMut, out: &mut Vec<Vec<Bytes>>) -> Result<(), ParseError> {
        loop {
            match self.state {
                State::Start => {
                    if self.pos >= buf.len() {
                        return Ok(());
                    }
                    if buf[self.pos] != b'*' {
                        // Inline commands are rare: emit what we have so that the inline
                        // command stays in order, then parse it by copying.
                        self.emit(buf, out);
                        match self.parse_inline(buf)? {
                            Some(args) => {
                                if !args.is_empty() {
                                    out.push(args);
                                }
                                continue;
                            }
                            None => return Ok(()),
                        }
                    }
                    let Some(line_end) = self.find_line(buf, self.pos + 1) else {
                        if buf.len() - self.pos > MAX_LINE_BYTES {
                            return Err(ParseError::TooBigMultibulkCount);
                        }
                        return Ok(());
                    };
                    let n = parse_int(&buf[self.pos + 1..line_end]);
                    self.pos = line_end + 2;
                    match n {
                        Some(n) if n > self.limits.max_args as i64 => return Err(ParseError::InvalidMultibulkLength),
                        Some(n) if n <= 0 => {
                            // `*0` and `*-1` are accepted and ignored, as in Redis.
                            self.finish_empty();
                        }
                        Some(n) => {
                            self.state = State::BulkHeader { remaining: n as usize };
                        }
                        None => return Err(ParseError::InvalidMultibulkLength),
                    }
                }
                State::BulkHeader { remaining } => {
                    if self.pos >= buf.len() {
                        return Ok(());
                    }
                    if buf[self.pos] != b'$' {
                        return Err(ParseError::ExpectedDollar(buf[self.pos]));
                    }
                    let Some(line_end) = self.find_line(buf, self.pos + 1) else {
                        if buf.len() - self.pos > MAX_LINE_BYTES {
                            return Err(ParseError::TooBigBulkCount);
                        }
                        return Ok(());
                    };
                    let len = match parse_int(&buf[self.pos + 1..line_end]) {
                        Some(len) if len >= 0 && len as u64 <= self.limits.max_bulk_bytes as u64 => len as usize,
                        _ => return Err(ParseError::InvalidBulkLength),
                    };
                    self.pos = line_end + 2;
                    self.state = State::BulkData { len, remaining };
                    if len >= self.limits.large_bulk_min_bytes {
                        self.start_large(buf, out, len);
                    }
                }
                State::BulkData { len, remaining } => {
                    if let Some(large) = self.large.as_mut() {
                        // The payload goes into its own buffer as it arrives (`pos` is 0).
                        let take = large.missing().min(buf.len());
                        large.extend_from_slice(&buf[..take])?;
                        buf.advance(take);
                        if large.missing() > 0 || buf.len() < 2 {
                            return Ok(());
                        }
                        buf.advance(2);
                        let done = self.large.take().map(LargeBuf::freeze).unwrap_or_default();
                        self.ranges.push((OWNED, self.owned.len()));
                        self.owned.push(done);
                    } else {
                        // The payload is followed by two bytes (CRLF) that Redis skips unchecked.
                        if buf.len() < self.pos + len + 2 {
                            return Ok(());
                        }
                        self.ranges.push((self.pos, self.pos + len));
                        self.pos += len + 2;
                    }
                    if remaining == 1 {
                        self.finish_command();
                    } else {
                        self.state = State::BulkHeader { remaining: remaining - 1 };
                    }
                }
            }
        }
    }

    /// Room to read the large bulk being read into directly (at most `max` bytes, never past
    /// its end), when one is and the caller's buffer holds nothing after it (`buffered == 0`).
    /// After a read, [`large_filled`](Self::large_filled) says how many bytes arrived.
    pub fn large_spare(&mut self, max: usize, buffered: usize) -> Option<Result<&mut [u8], MapError>> {
        let large = self.large.as_mut().filter(|l| buffered == 0 && l.missing() > 0)?;
        Some(large.spare(max))
    }

    /// `n` bytes were read into [`large_spare`](Self::large_spare)'s room.
    pub fn large_filled(&mut self, n: usize) {
        if let Some(large) = self.large.as_mut() {
            large.filled(n);
        }
    }

    /// How many more bytes the bulk string being read needs (its CRLF included), if one is
    /// being read, given `buffered` bytes in the caller's buffer.
    pub fn bulk_bytes_missing(&self, buffered: usize) -> usize {
        match (self.state, &self.large) {
            (State::BulkData { .. }, Some(large)) => (large.missing() + 2).saturating_sub(buffered),
            (State::BulkData { len, .. }, None) => (self.pos + len + 2).saturating_sub(buffered),
            _ => 0,
        }
    }

    /// Starts reading a large bulk whose payload begins at `pos`: emits the complete commands
    /// before it, takes the current command's arguments out of `buf` (as slices, no copy) and
    /// leaves `buf` starting at the payload, which `parse_loop` then moves into a `LargeBuf`.
    fn start_large(&mut self, buf: &mut BytesMut, out: &mut Vec<Vec<Bytes>>, len: usize) {
        self.emit(buf, out);
        let head = buf.split_to(self.pos).freeze();
        for r in &mut self.ranges {
            if r.0 != OWNED {
                self.owned.push(head.slice(r.0..r.1));
                *r = (OWNED, self.owned.len() - 1);
            }
        }
        self.pos = 0;
        self.cmd_start = 0;
        self.line_scan = 0;
        self.large = Some(LargeBuf::new(len));
    }

    /// Finds the `\r` ending the line that starts at or before `from`, needing the byte after
    /// it to be present, as Redis does. Returns the offset of `\r`.
    fn find_line(&mut self, buf: &[u8], from: usize) -> Option<usize> {
        let start = self.line_scan.max(from);
        match memchr(b'\r', &buf[start.min(buf.len())..]) {
            Some(i) if start + i + 1 < buf.len() => {
                self.line_scan = 0;
                Some(start + i)
            }
            Some(i) => {
                // Found `\r` but not the byte after it: search from the `\r` next time.
                self.line_scan = start + i;
                None
            }
            None => {
                self.line_scan = buf.len();
                None
            }
        }
    }

    fn finish_command(&mut self) {
        let first = self.done_ranges.len();
        self.done_ranges.append(&mut self.ranges);
        self.done_cmds.push((first, self.done_ranges.len()));
        self.state = State::Start;
        self.line_scan = 0;
        self.cmd_start = self.pos;
    }

    fn finish_empty(&mut self) {
        self.state = State::Start;
        self.line_scan = 0;
        self.cmd_start = self.pos;
        // Nothing to emit, but the bytes are consumed: record an empty command marker.
        let at = self.done_ranges.len();
        self.done_cmds.push((at, at));
    }

    /// Splits the complete commands off `buf` in one freeze and pushes their arguments.
    fn emit(&mut self, buf: &mut BytesMut, out: &mut Vec<Vec<Bytes>>) {
        if self.done_cmds.is_empty() {
            return;
        }
        // Everything before the start of the current command is complete.
        let consumed = self.cmd_start;
        let frozen = buf.split_to(consumed).freeze();
        if self.owned.is_empty() {
            // The common case: every argument is a slice of what was just split off.
            for &(a, b) in &self.done_cmds {
                if a != b {
                    out.push(self.done_ranges[a..b].iter().map(|&(s, e)| frozen.slice(s..e)).collect());
                }
            }
        } else {
            for &(a, b) in &self.done_cmds {
                if a == b {
                    continue;
                }
                let owned = &mut self.owned;
                let arg = |&(s, e): &(usize, usize)| match s {
                    OWNED => std::mem::take(&mut owned[e]),
                    s => frozen.slice(s..e),
                };
                out.push(self.done_ranges[a..b].iter().map(arg).collect());
            }
            if !self.ranges.iter().any(|r| r.0 == OWNED) {
                self.owned.clear();
            }
        }
        self.done_cmds.clear();
        self.done_ranges.clear();
        self.pos -= consumed;
        for r in &mut self.ranges {
            if r.0 != OWNED {
                r.0 -= consumed;
                r.1 -= consumed;
            }
        }
        if self.line_scan >= consumed {
            self.line_scan -= consumed;
        } else {
            self.line_scan = 0;
        }
        self.cmd_start = 0;
    }

    /// Parses one inline command at the front of `buf` (which holds no complete multibulk
    /// command before it). Returns `None` when the line is incomplete.
    fn parse_inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ParseError> {
        debug_assert_eq!(self.pos, 0);
        let from = self.line_scan;
        let Some(nl) = memchr(b'\n', &buf[from..]).map(|i| from + i) else {
            if buf.len() > MAX_LINE_BYTES {
                return Err(ParseError::TooBigInline);
            }
            self.line_scan = buf.len();
            return Ok(None);
        };
        self.line_scan = 0;
        let line = buf.split_to(nl + 1);
        let mut line = &line[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let args = split_args(line).ok_or(ParseError::UnbalancedQuotes)?;
        if args.len() > self.limits.max_args {
            return Err(ParseError::InvalidMultibulkLength);
        }
        Ok(Some(args.into_iter().map(Bytes::from).collect()))
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

/// Parses a signed 64-bit integer exactly as Redis's `string2ll`: an optional `-`, then digits
/// with no leading zero (except `0` itself), no spaces, no `+`, no overflow.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    if neg {
        if v > i64::MAX as u64 + 1 {
            None
        } else {
            Some((v as i64).wrapping_neg())
        }
    } else {
        i64::try_from(v).ok()
    }
}

fn parse_int(s: &[u8]) -> Option<i64> {
    parse_i64(s)
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline command line into arguments with Redis's `sdssplitargs` rules: words are
/// separated by white space; `"..."` supports `\n \r \t \b \a \\ \" \xHH`; `'...'` supports
/// `\'`; a closing quote must be followed by white space or the end. `None` on bad quoting.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    let at = |i: usize| line.get(i).copied();
    loop {
        while at(i).is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let c = at(i);
            if in_dq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if at(i + 1) == Some(b'x')
                            && at(i + 2).and_then(hex_val).is_some()
                            && at(i + 3).and_then(hex_val).is_some() =>
                    {
                        let hi = at(i + 2).and_then(hex_val)?;
                        let lo = at(i + 3).and_then(hex_val)?;
                        cur.push(hi * 16 + lo);
                        i += 4;
                    }
                    Some(b'\\') if at(i + 1).is_some() => {
                        let e = at(i + 1)?;
                        cur.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        i += 2;
                    }
                    Some(b'"') => {
                        if at(i + 1).is_some_and(|n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        cur.push(other);
                        i += 1;
                    }
                }
            } else if in_sq {
                match c {
                    None => return None,
                    Some(b'\\') if at(i + 1) == Some(b'\'') => {
                        cur.push(b'\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        if at(i + 1).is_some_and(|n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        cur.push(other);
                        i += 1;
                    }
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => {
                        in_dq = true;
                        i += 1;
                    }
                    Some(b'\'') => {
                        in_sq = true;
                        i += 1;
                    }
                    Some(other) => {
                        cur.push(other);
                        i += 1;
                    }
                }
            }
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<Vec<Vec<u8>>>, Result<(), ParseError>, usize) {
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        let r = p.parse(&mut buf, &mut out);
        let cmds = out.into_iter().map(|c| c.into_iter().map(|a| a.to_vec()).collect()).collect();
        (cmds, r, buf.len())
    }

    /// Feeds `input` in pieces cut at `cuts` and returns every command parsed.
    fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> Vec<Vec<Vec<u8>>> {
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            buf.extend_from_slice(&input[prev..c]);
            prev = c;
            p.parse(&mut buf, &mut out).expect("valid input");
        }
        assert!(buf.is_empty(), "bytes left over: {:?}", buf);
        out.into_iter().map(|c| c.into_iter().map(|a| a.to_vec()).collect()).collect()
    }

    const FRAMES: &[&[u8]] = &[
        b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$5\r\nhello\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
        b"*2\r\n$4\r\nECHO\r\n$7\r\nx\r\ny\r\nz\r\n",
        b"PING\r\n",
        b"set k \"a b\\x41\"\r\n",
        b"*0\r\n",
        b"\r\n",
    ];

    #[test]
    fn every_frame_split_at_every_offset_parses_the_same() {
        let all: Vec<u8> = FRAMES.concat();
        let whole = parse_in_pieces(&all, &[]);
        assert_eq!(whole.len(), 6);
        assert_eq!(whole[0], vec![b"SET".to_vec(), b"a".to_vec(), b"hello".to_vec()]);
        assert_eq!(whole[3][1], b"x\r\ny\r\nz".to_vec());
        assert_eq!(whole[5], vec![b"set".to_vec(), b"k".to_vec(), b"a bA".to_vec()]);
        for cut in 0..=all.len() {
            assert_eq!(parse_in_pieces(&all, &[cut]), whole, "split at {cut}");
        }
        // Byte by byte: the worst case for resumption.
        let cuts: Vec<usize> = (1..all.len()).collect();
        assert_eq!(parse_in_pieces(&all, &cuts), whole);
        // Two cuts at every pair of offsets in the first frames.
        let head_frames = FRAMES[..3].concat();
        let head = &head_frames[..];
        let head_whole = parse_in_pieces(head, &[]);
        for a in 0..head.len() {
            for b in a..head.len() {
                assert_eq!(parse_in_pieces(head, &[a, b]), head_whole, "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn arguments_are_slices_of_one_frozen_buffer() {
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*1\r\n$4\r\nPI"[..]);
        let mut out = Vec::new();
        p.parse(&mut buf, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][1][..], b"key");
        // The incomplete command stays buffered.
        assert_eq!(&buf[..], b"*1\r\n$4\r\nPI");
    }

    #[test]
    fn protocol_errors_match_redis() {
        let e = |input: &[u8]| String::from_utf8(parse_all(input).1.unwrap_err().message()).unwrap();
        assert_eq!(e(b"*1\r\n$2147483648\r\n"), "ERR Protocol error: invalid bulk length");
        assert_eq!(e(b"*1\r\n$-5\r\n"), "ERR Protocol error: invalid bulk length");
        assert_eq!(e(b"*abc\r\n"), "ERR Protocol error: invalid multibulk length");
        assert_eq!(e(b"*99999999999\r\n"), "ERR Protocol error: invalid multibulk length");
        assert_eq!(e(b"*1\r\nx\r\n"), "ERR Protocol error: expected '$', got 'x'");
        assert_eq!(e(b"set \"a\r\n"), "ERR Protocol error: unbalanced quotes in request");
        let long = [b"*".as_slice(), &vec![b'1'; MAX_LINE_BYTES + 1]].concat();
        assert_eq!(e(&long), "ERR Protocol error: too big mbulk count string");
        let long = [b"*1\r\n$".as_slice(), &vec![b'1'; MAX_LINE_BYTES + 1]].concat();
        assert_eq!(e(&long), "ERR Protocol error: too big bulk count string");
        assert_eq!(e(&vec![b'a'; MAX_LINE_BYTES + 1]), "ERR Protocol error: too big inline request");
    }

    #[test]
    fn commands_before_an_error_are_still_returned() {
        let (cmds, r, _) = parse_all(b"*1\r\n$4\r\nPING\r\n*x\r\n");
        assert_eq!(cmds.len(), 1);
        assert!(r.is_err());
    }

    #[test]
    fn negative_and_zero_counts_are_ignored() {
        let (cmds, r, left) = parse_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n");
        assert!(r.is_ok());
        assert_eq!(cmds, vec![vec![b"PING".to_vec()]]);
        assert_eq!(left, 0);
    }

    #[test]
    fn declared_length_reserves_nothing() {
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$500000000\r\nabc"[..]);
        let mut out = Vec::new();
        p.parse(&mut buf, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
        assert_eq!(p.bulk_bytes_missing(buf.len()), 500_000_000 - 3 + 2);
    }

    #[test]
    fn limits_are_enforced_at_the_boundary() {
        let limits = Limits { max_bulk_bytes: 4, max_args: 2, ..Limits::default() };
        let run = |input: &[u8]| {
            let mut p = Parser::new(limits);
            let mut buf = BytesMut::from(input);
            let mut out = Vec::new();
            p.parse(&mut buf, &mut out).map(|_| out.len())
        };
        assert_eq!(run(b"*1\r\n$4\r\nabcd\r\n"), Ok(1));
        assert_eq!(run(b"*1\r\n$5\r\nabcde\r\n"), Err(ParseError::InvalidBulkLength));
        assert_eq!(run(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"), Ok(1));
        assert_eq!(run(b"*3\r\n"), Err(ParseError::InvalidMultibulkLength));
        assert_eq!(run(b"a b\r\n"), Ok(1));
        assert_eq!(run(b"a b c\r\n"), Err(ParseError::InvalidMultibulkLength));
    }

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"01"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b" 1"), None);
        assert_eq!(parse_i64(b"-0"), None);
        assert_eq!(parse_i64(b""), None);
    }

    #[test]
    fn inline_quoting() {
        let s = |l: &[u8]| {
            split_args(l).map(|v| v.into_iter().map(|a| String::from_utf8_lossy(&a).into_owned()).collect::<Vec<_>>())
        };
        assert_eq!(s(b"set a b"), Some(vec!["set".into(), "a".into(), "b".into()]));
        assert_eq!(s(b"  set   'a b'  \"c\\nd\" "), Some(vec!["set".into(), "a b".into(), "c\nd".into()]));
        assert_eq!(s(b"'it\\'s'"), Some(vec!["it's".into()]));
        assert_eq!(s(b"\"a\"b"), None);
        assert_eq!(s(b"'unterminated"), None);
        assert_eq!(s(b""), Some(vec![]));
    }

    fn multibulk(args: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    #[test]
    fn large_bulks_arrive_in_their_own_buffer_and_keep_the_order() {
        let big: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i % 241) as u8).collect();
        let big2 = vec![7u8; 1 << 20];
        let input = [
            multibulk(&[b"PING"]),
            multibulk(&[b"SET", b"k", &big, b"EX", b"100"]),
            multibulk(&[b"MSET", b"a", &big2, b"b", &big]),
            multibulk(&[b"GET", b"k"]),
        ]
        .concat();
        let expected: Vec<Vec<Vec<u8>>> = vec![
            vec![b"PING".to_vec()],
            vec![b"SET".to_vec(), b"k".to_vec(), big.clone(), b"EX".to_vec(), b"100".to_vec()],
            vec![b"MSET".to_vec(), b"a".to_vec(), big2.clone(), b"b".to_vec(), big.clone()],
            vec![b"GET".to_vec(), b"k".to_vec()],
        ];
        // All at once, and in socket-sized pieces (cut mid-header, mid-payload, mid-CRLF).
        assert_eq!(parse_all(&input).0, expected);
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut max_buffered = 0;
        for piece in input.chunks(16 * 1024 + 1) {
            buf.extend_from_slice(piece);
            p.parse(&mut buf, &mut out).unwrap();
            max_buffered = max_buffered.max(buf.capacity());
            assert!(p.held_bytes() <= big.len() + big2.len() + 64);
        }
        assert!(buf.is_empty() && p.held_bytes() == 0);
        assert!(max_buffered < 128 * 1024, "the caller's buffer grew to {max_buffered}");
        let got: Vec<Vec<Vec<u8>>> = out.iter().map(|c| c.iter().map(|a| a.to_vec()).collect()).collect();
        assert_eq!(got, expected);
        // Each large argument is a buffer of its own (page aligned), the store may adopt it.
        for arg in [&out[1][2], &out[2][2], &out[2][4]] {
            assert_eq!(arg.as_ptr() as usize % crate::large::PAGE_BYTES, 0);
        }
    }

    #[test]
    fn a_large_bulk_cut_before_its_crlf_waits_for_it() {
        let big = vec![1u8; 1 << 20];
        let input = multibulk(&[b"SET", b"k", &big]);
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::from(&input[..input.len() - 1]);
        let mut out = Vec::new();
        p.parse(&mut buf, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(p.bulk_bytes_missing(buf.len()), 1);
        assert_eq!(p.held_bytes(), 1 + 3 + big.len());
        buf.extend_from_slice(b"\n");
        p.parse(&mut buf, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][2][..], &big[..]);
    }

    #[test]
    fn large_bulk_bytes_read_into_its_room_are_the_same_as_parsed_ones() {
        let big: Vec<u8> = (0..(1 << 20) + 77).map(|i| (i % 239) as u8).collect();
        let input = [multibulk(&[b"SET", b"k", &big]), multibulk(&[b"GET", b"k"])].concat();
        let mut p = Parser::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut direct = 0;
        while at < input.len() {
            // As the connection does: while a large bulk waits for bytes and nothing is buffered
            // after it, read into its room (here in 64 KiB reads); otherwise into the buffer.
            match p.large_spare(64 * 1024, buf.len()) {
                Some(Ok(room)) => {
                    let n = room.len().min(input.len() - at);
                    room[..n].copy_from_slice(&input[at..at + n]);
                    p.large_filled(n);
                    at += n;
                    direct += n;
                }
                _ => {
                    let n = (16 * 1024).min(input.len() - at);
                    buf.extend_from_slice(&input[at..at + n]);
                    at += n;
                }
            }
            p.parse(&mut buf, &mut out).unwrap();
        }
        let got: Vec<Vec<Vec<u8>>> = out.iter().map(|c| c.iter().map(|a| a.to_vec()).collect()).collect();
        assert_eq!(got, vec![vec![b"SET".to_vec(), b"k".to_vec(), big.clone()], vec![b"GET".to_vec(), b"k".to_vec()]]);
        assert!(buf.is_empty());
        assert!(direct >= big.len() - 16 * 1024, "only {direct} bytes went straight into the bulk's buffer");
    }
}
