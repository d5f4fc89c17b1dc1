//! A small RESP client codec: request encoding and an incremental reply parser.
//!
//! Pure code over byte slices (no sockets), so every edge is unit-testable.
//!
//! The parser is *incremental*: [`parse_reply`] looks at the bytes received so far and either
//! returns one complete reply plus the number of bytes it used, or says "incomplete" so the caller
//! reads more and tries again. Nothing in the stream is trusted: declared lengths and element
//! counts are checked against [`Limits`] before anything is skipped or allocated, nesting is
//! bounded, and a line that never ends is an error once it passes the line limit.
//!
//! Both RESP2 and the common RESP3 types are understood, so the load generator keeps working
//! against a server that answers in RESP3.

use std::fmt;

/// Bounds on what a server may declare. A reply past one of these is a protocol error: the
/// connection is dropped instead of waiting for (or allocating) a gigabyte that never comes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string accepted, in bytes.
    pub max_bulk_bytes: usize,
    /// Largest array/map/set element count accepted.
    pub max_elements: usize,
    /// Deepest nesting of aggregates accepted.
    pub max_depth: usize,
    /// Longest simple line (`+`, `-`, `:` ...) accepted, in bytes.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk_bytes: 512 * 1024 * 1024, max_elements: 1 << 20, max_depth: 16, max_line_bytes: 64 * 1024 }
    }
}

/// One parsed reply. Strings borrow from the receive buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<'a> {
    /// `+OK`
    Simple(&'a [u8]),
    /// `-ERR ...` or RESP3 `!` blob error.
    Error(&'a [u8]),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo\r\n` (also RESP3 `=` verbatim strings, `,` doubles and `(` big numbers as text).
    Bulk(&'a [u8]),
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    /// RESP3 `#t` / `#f`.
    Bool(bool),
    /// `*`, `~` (set), `>` (push); a RESP3 `%` map is flattened to key, value, key, value ...
    Array(Vec<Reply<'a>>),
}

impl Reply<'_> {
    /// The error kind of an error reply: its first word (`ERR`, `MISCONF`, `OOM`, ...).
    pub fn error_kind(&self) -> Option<String> {
        match self {
            Reply::Error(msg) => Some(error_kind(msg)),
            _ => None,
        }
    }
}

/// The first word of an error message, upper-cased and capped, e.g. `MISCONF`.
pub fn error_kind(msg: &[u8]) -> String {
    let word: Vec<u8> = msg.iter().copied().take_while(|b| !b.is_ascii_whitespace()).take(32).collect();
    if word.is_empty() {
        return "ERR(empty)".to_string();
    }
    String::from_utf8_lossy(&word).to_ascii_uppercase()
}

/// Why a reply stream cannot be parsed. The connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A first byte that is no RESP type.
    UnknownType(u8),
    /// A length or integer that is not a number.
    BadNumber,
    /// A declared length or count over the limit.
    TooLarge { what: &'static str, declared: i64, limit: usize },
    /// Nesting deeper than allowed.
    TooDeep,
    /// A line longer than allowed without CRLF.
    LineTooLong,
    /// A bulk string not followed by CRLF.
    MissingCrlf,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            ProtocolError::BadNumber => write!(f, "malformed number in reply"),
            ProtocolError::TooLarge { what, declared, limit } => {
                write!(f, "{what} declares {declared}, over the limit of {limit}")
            }
            ProtocolError::TooDeep => write!(f, "reply nested too deeply"),
            ProtocolError::LineTooLong => write!(f, "reply line too long"),
            ProtocolError::MissingCrlf => write!(f, "bulk string not terminated by CRLF"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Parse one reply from the front of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((reply, used)))`: `used` bytes form `reply`.
pub fn parse_reply<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<(Reply<'a>, usize)>, ProtocolError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, limits, 0)? {
        Some(r) => Ok(Some((r, pos))),
        None => Ok(None),
    }
}

/// Find the CRLF-terminated line starting at `start`; returns the line (without CRLF) and the
/// position just after the CRLF.
fn line<'a>(buf: &'a [u8], start: usize, limits: &Limits) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let rest = &buf[start..];
    let window = &rest[..rest.len().min(limits.max_line_bytes + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], start + i + 2))),
        None if rest.len() > limits.max_line_bytes + 1 => Err(ProtocolError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_int(s: &[u8]) -> Result<i64, ProtocolError> {
    // Strict: optional '-', then 1..=19 digits. No '+', no spaces.
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::BadNumber);
    }
    let mut v: i64 = 0;
    for d in digits {
        v = v.checked_mul(10).and_then(|v| v.checked_add(i64::from(d - b'0'))).ok_or(ProtocolError::BadNumber)?;
    }
    Ok(if neg { -v } else { v })
}

fn parse_at<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<Reply<'a>>, ProtocolError> {
    if depth > limits.max_depth {
        return Err(ProtocolError::TooDeep);
    }
    let Some(&ty) = buf.get(*pos) else {
        return Ok(None);
    };
    let Some((body, next)) = line(buf, *pos + 1, limits)? else {
        return Ok(None);
    };
    match ty {
        b'+' => {
            *pos = next;
            Ok(Some(Reply::Simple(body)))
        }
        b'-' => {
            *pos = next;
            Ok(Some(Reply::Error(body)))
        }
        b':' => {
            let v = parse_int(body)?;
            *pos = next;
            Ok(Some(Reply::Integer(v)))
        }
        b',' | b'(' => {
            *pos = next;
            Ok(Some(Reply::Bulk(body)))
        }
        b'_' => {
            *pos = next;
            Ok(Some(Reply::Nil))
        }
        b'#' => {
            let v = match body {
                b"t" => true,
                b"f" => false,
                _ => return Err(ProtocolError::BadNumber),
            };
            *pos = next;
            Ok(Some(Reply::Bool(v)))
        }
        b'$' | b'=' | b'!' => {
            let n = parse_int(body)?;
            if n < 0 {
                if n == -1 && ty == b'$' {
                    *pos = next;
                    return Ok(Some(Reply::Nil));
                }
                return Err(ProtocolError::BadNumber);
            }
            if n as u64 > limits.max_bulk_bytes as u64 {
                return Err(ProtocolError::TooLarge { what: "bulk string", declared: n, limit: limits.max_bulk_bytes });
            }
            let n = n as usize;
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf);
            }
            *pos = end + 2;
            let data = &buf[next..end];
            Ok(Some(if ty == b'!' { Reply::Error(data) } else { Reply::Bulk(data) }))
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = parse_int(body)?;
            if n < 0 {
                if n == -1 && ty == b'*' {
                    *pos = next;
                    return Ok(Some(Reply::Nil));
                }
                return Err(ProtocolError::BadNumber);
            }
            let per = if ty == b'%' { 2 } else { 1 };
            if (n as u64).saturating_mul(per) > limits.max_elements as u64 {
                return Err(ProtocolError::TooLarge { what: "aggregate", declared: n, limit: limits.max_elements });
            }
            let count = n as usize * per as usize;
            // Each element needs at least 3 bytes ("_\r\n"): do not reserve for elements that
            // cannot possibly be in the buffer yet.
            let mut items = Vec::with_capacity(count.min((buf.len() - next) / 3 + 1));
            let mut p = next;
            for _ in 0..count {
                match parse_at(buf, &mut p, limits, depth + 1)? {
                    Some(r) => items.push(r),
                    None => return Ok(None),
                }
            }
            *pos = p;
            Ok(Some(Reply::Array(items)))
        }
        other => Err(ProtocolError::UnknownType(other)),
    }
}

/// Append a decimal number.
fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Append one bulk string argument: `$<len>\r\n<data>\r\n`.
pub fn push_bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'$');
    push_decimal(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Append a command as a RESP multibulk array.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for a in args {
        push_bulk(out, a);
    }
}

/// Append the key `<prefix><id>` as a bulk string without building it separately.
fn push_key(out: &mut Vec<u8>, prefix: &[u8], id: u64) {
    let mut digits = Vec::with_capacity(20);
    push_decimal(&mut digits, id);
    out.push(b'$');
    push_decimal(out, (prefix.len() + digits.len()) as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(prefix);
    out.extend_from_slice(&digits);
    out.extend_from_slice(b"\r\n");
}

/// Append `GET <prefix><id>`.
pub fn encode_get(out: &mut Vec<u8>, prefix: &[u8], id: u64) {
    out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
    push_key(out, prefix, id);
}

/// Append `SET <prefix><id> <value> [EX ttl]`.
pub fn encode_set(out: &mut Vec<u8>, prefix: &[u8], id: u64, value: &[u8], ttl_s: Option<u64>) {
    match ttl_s {
        Some(_) => out.extend_from_slice(b"*5\r\n$3\r\nSET\r\n"),
        None => out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n"),
    }
    push_key(out, prefix, id);
    push_bulk(out, value);
    if let Some(ttl) = ttl_s {
        push_bulk(out, b"EX");
        let mut t = Vec::with_capacity(20);
        push_decimal(&mut t, ttl);
        push_bulk(out, &t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ProtocolError> {
        parse_reply(buf, &Limits::default())
    }

    #[test]
    fn simple_types() {
        assert_eq!(p(b"+OK\r\n"), Ok(Some((Reply::Simple(b"OK"), 5))));
        assert_eq!(p(b"-MISCONF no disk\r\n"), Ok(Some((Reply::Error(b"MISCONF no disk"), 18))));
        assert_eq!(p(b":-42\r\n"), Ok(Some((Reply::Integer(-42), 6))));
        assert_eq!(p(b"$3\r\nfoo\r\n"), Ok(Some((Reply::Bulk(b"foo"), 9))));
        assert_eq!(p(b"$0\r\n\r\n"), Ok(Some((Reply::Bulk(b""), 6))));
        assert_eq!(p(b"$-1\r\n"), Ok(Some((Reply::Nil, 5))));
        assert_eq!(p(b"*-1\r\n"), Ok(Some((Reply::Nil, 5))));
        assert_eq!(p(b"_\r\n"), Ok(Some((Reply::Nil, 3))));
        assert_eq!(p(b"#t\r\n"), Ok(Some((Reply::Bool(true), 4))));
        assert_eq!(p(b",1.5\r\n"), Ok(Some((Reply::Bulk(b"1.5"), 6))));
        assert_eq!(p(b"!3\r\nERR\r\n"), Ok(Some((Reply::Error(b"ERR"), 9))));
    }

    #[test]
    fn arrays_and_maps() {
        let (r, n) = p(b"*2\r\n$1\r\na\r\n:1\r\nrest").unwrap().unwrap();
        assert_eq!(n, 15);
        assert_eq!(r, Reply::Array(vec![Reply::Bulk(b"a"), Reply::Integer(1)]));
        let (r, _) = p(b"%1\r\n+k\r\n+v\r\n").unwrap().unwrap();
        assert_eq!(r, Reply::Array(vec![Reply::Simple(b"k"), Reply::Simple(b"v")]));
        let (r, _) = p(b"*1\r\n*1\r\n*0\r\n").unwrap().unwrap();
        assert_eq!(r, Reply::Array(vec![Reply::Array(vec![Reply::Array(vec![])])]));
    }

    #[test]
    fn every_prefix_is_incomplete_and_whole_is_complete() {
        let whole: &[u8] = b"*3\r\n$5\r\nhello\r\n-ERR x\r\n*1\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(p(&whole[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        let (_, used) = p(whole).unwrap().unwrap();
        assert_eq!(used, whole.len());
    }

    #[test]
    fn pipelined_replies_parse_one_at_a_time() {
        let buf = b"+OK\r\n$2\r\nhi\r\n-OOM full\r\n";
        let mut pos = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = p(&buf[pos..]).unwrap() {
            got.push(format!("{r:?}"));
            pos += used;
        }
        assert_eq!(pos, buf.len());
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn lengths_are_not_trusted() {
        let small = Limits { max_bulk_bytes: 10, max_elements: 4, max_depth: 2, max_line_bytes: 16 };
        assert!(matches!(parse_reply(b"$11\r\n", &small), Err(ProtocolError::TooLarge { .. })));
        assert!(matches!(parse_reply(b"*5\r\n", &small), Err(ProtocolError::TooLarge { .. })));
        assert!(matches!(parse_reply(b"%3\r\n", &small), Err(ProtocolError::TooLarge { .. })));
        assert_eq!(parse_reply(b"*1\r\n*1\r\n*1\r\n*0\r\n", &small), Err(ProtocolError::TooDeep));
        assert_eq!(parse_reply(b"+aaaaaaaaaaaaaaaaaaaaaaaaaaaa", &small), Err(ProtocolError::LineTooLong));
        // A huge declared array whose elements have not arrived allocates little and waits.
        assert_eq!(p(b"*1000000\r\n:1\r\n"), Ok(None));
        assert_eq!(p(b"$99999999999999999999\r\n"), Err(ProtocolError::BadNumber));
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(p(b"?x\r\n"), Err(ProtocolError::UnknownType(b'?')));
        assert_eq!(p(b":12a\r\n"), Err(ProtocolError::BadNumber));
        assert_eq!(p(b":\r\n"), Err(ProtocolError::BadNumber));
        assert_eq!(p(b"$-2\r\n"), Err(ProtocolError::BadNumber));
        assert_eq!(p(b"$3\r\nfooXY"), Err(ProtocolError::MissingCrlf));
        assert_eq!(p(b"#x\r\n"), Err(ProtocolError::BadNumber));
    }

    #[test]
    fn error_kinds() {
        assert_eq!(error_kind(b"MISCONF Redis is configured"), "MISCONF");
        assert_eq!(error_kind(b"oom command not allowed"), "OOM");
        assert_eq!(error_kind(b""), "ERR(empty)");
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"INFO", b"persistence"]);
        assert_eq!(out, b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n");
        out.clear();
        encode_get(&mut out, b"key:", 1234);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$8\r\nkey:1234\r\n");
        out.clear();
        encode_set(&mut out, b"k", 0, b"vv", Some(60));
        assert_eq!(out, b"*5\r\n$3\r\nSET\r\n$2\r\nk0\r\n$2\r\nvv\r\n$2\r\nEX\r\n$2\r\n60\r\n");
        out.clear();
        encode_set(&mut out, b"k", 7, b"", None);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk7\r\n$0\r\n\r\n");
    }
}
