//! Reply encoding for RESP2 and RESP3.
//!
//! A [`ReplyWriter`] appends to a caller-owned `Vec<u8>`: the connection's output buffer for
//! local commands, or a batch buffer that travels back from another shard. Encoding straight
//! into the buffer avoids building a reply tree per command.
//!
//! A large value (see [`crate::large`]) is not copied into the buffer: a writer made with
//! [`ReplyWriter::with_large`] writes the bulk header and trailing CRLF and records *where*
//! the value's bytes go ([`LargeRefs`]); the connection sends the buffer and the values in
//! order. So GET of a 512 MiB value costs no second 512 MiB.
//!
//! Where RESP3 has a richer type (null, map, set, double, boolean, verbatim string) the writer
//! emits it for `Protocol::Resp3` and the Redis 7 RESP2 equivalent otherwise.

use bytes::Bytes;

/// The protocol a connection speaks, chosen by `HELLO` (RESP2 until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Large values a reply buffer refers to: `(offset, value)` means the value's bytes belong at
/// `offset` of the buffer (before the byte there), in increasing offset order.
pub type LargeRefs = Vec<(usize, Bytes)>;

/// Total bytes of the values in `refs`.
pub fn large_bytes(refs: &LargeRefs) -> usize {
    refs.iter().map(|(_, v)| v.len()).sum()
}

/// Appends `buf[start..end]` (whole replies) to `out`, and the large values that belong in
/// that range to `out_refs`, with their offsets moved along.
pub fn append_replies(
    out: &mut Vec<u8>,
    out_refs: &mut LargeRefs,
    buf: &[u8],
    refs: &LargeRefs,
    start: usize,
    end: usize,
) {
    let base = out.len();
    out.extend_from_slice(&buf[start..end]);
    // A large value sits strictly inside its reply: after the `$n` line, before the CRLF.
    // `refs` is in offset order: find the first one in the range, take while inside it.
    let first = refs.partition_point(|(at, _)| *at <= start);
    let inside = refs[first..].iter().take_while(|(at, _)| *at < end);
    out_refs.extend(inside.map(|(at, v)| (base + at - start, v.clone())));
}

/// Appends replies to a buffer.
pub struct ReplyWriter<'a> {
    pub buf: &'a mut Vec<u8>,
    pub proto: Protocol,
    /// Where large values are referred to instead of copied (`None`: they are copied).
    large: Option<&'a mut LargeRefs>,
}

impl<'a> ReplyWriter<'a> {
    pub fn new(buf: &'a mut Vec<u8>, proto: Protocol) -> Self {
        ReplyWriter { buf, proto, large: None }
    }

    /// A writer that refers to large values in `large` instead of copying them into `buf`.
    pub fn with_large(buf: &'a mut Vec<u8>, large: &'a mut LargeRefs, proto: Protocol) -> Self {
        ReplyWriter { buf, proto, large: Some(large) }
    }

    /// A bulk string of a stored value: `data`, which is `shared`'s bytes when the value is a
    /// large one (`Entry::shared_value`). Refers to a large value instead of copying it when
    /// the writer allows.
    pub fn bulk_value(&mut self, data: &[u8], shared: Option<&Bytes>) {
        match (shared, self.large.is_some()) {
            (Some(v), true) => {
                self.line(b'$', v.len() as i64);
                let at = self.buf.len();
                if let Some(large) = self.large.as_mut() {
                    large.push((at, v.clone()));
                }
                self.buf.extend_from_slice(b"\r\n");
            }
            _ => self.bulk(data),
        }
    }

    fn line(&mut self, prefix: u8, n: i64) {
        self.buf.push(prefix);
        let mut b = itoa::Buffer::new();
        self.buf.extend_from_slice(b.format(n).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// `+OK`-style status reply. `s` must not contain CR or LF.
    pub fn simple(&mut self, s: &str) {
        self.buf.push(b'+');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    /// Error reply. `msg` starts with the error code (`ERR ...`, `WRONGTYPE ...`); CR and LF
    /// in it are replaced by spaces, as Redis does, so a reply can never be split.
    pub fn error(&mut self, msg: &str) {
        self.error_bytes(msg.as_bytes());
    }

    /// Error reply from raw bytes: client-sent bytes in it (an unknown command's name) are
    /// echoed as sent, not re-encoded, exactly as Redis does.
    pub fn error_bytes(&mut self, msg: &[u8]) {
        self.buf.push(b'-');
        self.buf.extend(msg.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }));
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn integer(&mut self, n: i64) {
        self.line(b':', n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.line(b'$', data.len() as i64);
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&mut self) {
        match self.proto {
            Protocol::Resp2 => self.buf.extend_from_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.buf.extend_from_slice(b"_\r\n"),
        }
    }

    /// The null array: `*-1` in RESP2, `_` in RESP3.
    pub fn null_array(&mut self) {
        match self.proto {
            Protocol::Resp2 => self.buf.extend_from_slice(b"*-1\r\n"),
            Protocol::Resp3 => self.buf.extend_from_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.line(b'*', len as i64);
    }

    /// A map of `len` pairs: `%len` in RESP3, a flat array of `2*len` in RESP2.
    pub fn map(&mut self, len: usize) {
        match self.proto {
            Protocol::Resp2 => self.line(b'*', 2 * len as i64),
            Protocol::Resp3 => self.line(b'%', len as i64),
        }
    }

    /// A set: `~len` in RESP3, an array in RESP2.
    pub fn set(&mut self, len: usize) {
        match self.proto {
            Protocol::Resp2 => self.line(b'*', len as i64),
            Protocol::Resp3 => self.line(b'~', len as i64),
        }
    }

    /// A double: `,` in RESP3, a bulk string in RESP2 (formatted like Redis's `%.17g`).
    pub fn double(&mut self, v: f64) {
        let s = format_double(v);
        match self.proto {
            Protocol::Resp2 => self.bulk(s.as_bytes()),
            Protocol::Resp3 => {
                self.buf.push(b',');
                self.buf.extend_from_slice(s.as_bytes());
                self.buf.extend_from_slice(b"\r\n");
            }
        }
    }

    /// A boolean: `#t`/`#f` in RESP3, `:1`/`:0` in RESP2.
    pub fn boolean(&mut self, v: bool) {
        match self.proto {
            Protocol::Resp2 => self.integer(v as i64),
            Protocol::Resp3 => self.buf.extend_from_slice(if v { b"#t\r\n" } else { b"#f\r\n" }),
        }
    }

    /// A verbatim string (`=len\r\ntxt:...` in RESP3), a bulk string in RESP2. Used by INFO
    /// and CLIENT INFO/LIST, as in Redis.
    pub fn verbatim(&mut self, text: &[u8]) {
        match self.proto {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.line(b'=', text.len() as i64 + 4);
                self.buf.extend_from_slice(b"txt:");
                self.buf.extend_from_slice(text);
                self.buf.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Appends already-encoded reply bytes.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// Formats a double the way Redis replies to RESP3 doubles and `INCRBYFLOAT`-style values:
/// shortest round-trip representation, `inf`/`-inf`, integers without a fraction.
pub fn format_double(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v.is_nan() {
        return "nan".into();
    }
    if v == v.trunc() && v.abs() < 1e17 {
        return format!("{}", v as i64);
    }
    let mut b = ryu::Buffer::new();
    let s = b.format_finite(v);
    // ryu writes `1e20` style exponents as `1e20`; Redis's %.17g would write `1e+20`.
    if let Some(pos) = s.find('e') {
        let (m, e) = s.split_at(pos);
        let e = &e[1..];
        if let Some(stripped) = e.strip_prefix('-') {
            return format!("{m}e-{stripped:0>2}");
        }
        return format!("{m}e+{e:0>2}");
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_differs_by_protocol() {
        let mut b = Vec::new();
        ReplyWriter::new(&mut b, Protocol::Resp2).null();
        assert_eq!(b, b"$-1\r\n");
        b.clear();
        ReplyWriter::new(&mut b, Protocol::Resp3).null();
        assert_eq!(b, b"_\r\n");
    }

    #[test]
    fn map_is_flat_array_in_resp2() {
        let mut b = Vec::new();
        ReplyWriter::new(&mut b, Protocol::Resp2).map(2);
        assert_eq!(b, b"*4\r\n");
    }

    #[test]
    fn error_never_contains_newlines() {
        let mut b = Vec::new();
        ReplyWriter::new(&mut b, Protocol::Resp2).error("ERR a\r\nb");
        assert_eq!(b, b"-ERR a  b\r\n");
    }

    #[test]
    fn doubles() {
        assert_eq!(format_double(3.0), "3");
        assert_eq!(format_double(10.5), "10.5");
        assert_eq!(format_double(f64::INFINITY), "inf");
        assert_eq!(format_double(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn large_values_are_referred_to_and_move_with_their_replies() {
        let big = Bytes::from(vec![7u8; 10]);
        let (mut buf, mut refs) = (Vec::new(), Vec::new());
        let mut w = ReplyWriter::with_large(&mut buf, &mut refs, Protocol::Resp2);
        w.ok();
        w.bulk_value(&big, Some(&big));
        w.bulk_value(b"small", None);
        w.bulk_value(&big, Some(&big));
        assert_eq!(buf, b"+OK\r\n$10\r\n\r\n$5\r\nsmall\r\n$10\r\n\r\n");
        assert_eq!(refs.iter().map(|(at, v)| (*at, v.len())).collect::<Vec<_>>(), vec![(10, 10), (28, 10)]);
        // Without a place for references, the bytes are copied.
        let mut copied = Vec::new();
        ReplyWriter::new(&mut copied, Protocol::Resp2).bulk_value(&big, Some(&big));
        assert_eq!(copied, [b"$10\r\n".as_slice(), &[7u8; 10], b"\r\n"].concat());
        // Replies 2 to 4 (offsets 5..30) appended after 3 bytes: their references move along.
        let (mut out, mut out_refs) = (b"abc".to_vec(), Vec::new());
        append_replies(&mut out, &mut out_refs, &buf, &refs, 5, 30);
        assert_eq!(&out[3..], &buf[5..30]);
        assert_eq!(out_refs.iter().map(|(at, _)| *at).collect::<Vec<_>>(), vec![8, 26]);
        // A range without a large value takes none.
        let mut none = Vec::new();
        append_replies(&mut Vec::new(), &mut none, &buf, &refs, 0, 5);
        assert!(none.is_empty());
    }
}
