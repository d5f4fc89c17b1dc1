//! String commands: GET, SET and its variants, MGET/MSET, APPEND, ranges, counters.
//!
//! Values are byte strings; counters are values that parse as integers (or floats), exactly
//! as in Redis. Every write goes through `Exec::write_*`.

use super::{err, int_arg, Exec};
use crate::resp::ReplyWriter;
use crate::store::Entry;
use bytes::Bytes;

fn upper(a: &[u8]) -> Vec<u8> {
    a.to_ascii_uppercase()
}

/// Parsed options of SET and GETEX.
#[derive(Default)]
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    /// The expiry option (`EX`, `PX`, `EXAT`, `PXAT`) and its unparsed value. Repeating the
    /// same option is allowed (the last wins); mixing two is a syntax error.
    expire: Option<(&'static [u8], Bytes)>,
}

#[derive(PartialEq, Clone, Copy)]
enum Form {
    Set,
    GetEx,
}

/// Parses SET/GETEX options with Redis's rules (`parseExtendedStringArgumentsOrReply`): only
/// the syntax is checked here; the expiry value is parsed later, as Redis does, so that
/// `SET k v EX abc NX XX` is a syntax error and `GETEX missing EX 0` is nil.
fn parse_set_options(args: &[Bytes], form: Form) -> Result<SetOptions, &'static str> {
    let mut o = SetOptions::default();
    let mut i = 0;
    while i < args.len() {
        let a = upper(&args[i]);
        let next = args.get(i + 1);
        let unit: Option<&'static [u8]> = match a.as_slice() {
            b"EX" => Some(b"EX"),
            b"PX" => Some(b"PX"),
            b"EXAT" => Some(b"EXAT"),
            b"PXAT" => Some(b"PXAT"),
            _ => None,
        };
        match (a.as_slice(), unit) {
            (b"NX", _) if form == Form::Set && !o.xx => o.nx = true,
            (b"XX", _) if form == Form::Set && !o.nx => o.xx = true,
            (b"GET", _) if form == Form::Set => o.get = true,
            (b"KEEPTTL", _) if form == Form::Set && !o.persist && o.expire.is_none() => o.keepttl = true,
            (b"PERSIST", _) if form == Form::GetEx && !o.keepttl && o.expire.is_none() => o.persist = true,
            (_, Some(u))
                if !o.keepttl
                    && !o.persist
                    && o.expire.as_ref().is_none_or(|(prev, _)| *prev == u)
                    && next.is_some() =>
            {
                o.expire = next.map(|v| (u, v.clone()));
                i += 1;
            }
            _ => return Err(err::SYNTAX),
        }
        i += 1;
    }
    Ok(o)
}

/// Turns the expiry option of SET/GETEX into absolute Unix ms, with Redis's error replies.
fn expire_option_ms(expire: &Option<(&'static [u8], Bytes)>, now_ms: u64, cmd: &str) -> Result<Option<u64>, String> {
    let Some((unit, value)) = expire else {
        return Ok(None);
    };
    let v = int_arg(value).map_err(str::to_string)?;
    expire_to_abs_ms(v, unit, now_ms).map(Some).ok_or_else(|| invalid_expire(cmd))
}

pub(crate) fn invalid_expire(cmd: &str) -> String {
    format!("ERR invalid expire time in '{cmd}' command")
}

/// Converts an EX/PX/EXAT/PXAT value to absolute Unix ms; `None` if not positive or if it
/// overflows (Redis's `getExpireMillisecondsOrReply`).
fn expire_to_abs_ms(v: i64, unit: &[u8], now_ms: u64) -> Option<u64> {
    if v <= 0 {
        return None;
    }
    let seconds = matches!(unit, b"EX" | b"EXAT");
    let ms = if seconds { v.checked_mul(1000)? } else { v };
    let abs = if matches!(unit, b"EX" | b"PX") { ms.checked_add(now_ms as i64)? } else { ms };
    (abs > 0).then_some(abs as u64)
}

pub fn get(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    match cx.lookup_read(&args[1]) {
        Some(e) => out.bulk_value(e.value(), e.shared_value()),
        None => out.null(),
    }
}

pub fn set(args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let o = match parse_set_options(&args[3..], Form::Set) {
        Ok(o) => o,
        Err(e) => return out.error(e),
    };
    let expire_at_ms = match expire_option_ms(&o.expire, cx.now_ms, "set") {
        Ok(t) => t,
        Err(e) => return out.error(&e),
    };
    let key = &args[1];
    // Only what the options need: existence, the TTL for KEEPTTL, the value for GET.
    let (exists, old_ttl) = match cx.get(key) {
        Some(e) => {
            if o.get {
                out.bulk_value(e.value(), e.shared_value());
            }
            (true, e.expire_at_ms())
        }
        None => {
            if o.get {
                out.null();
            }
            (false, None)
        }
    };
    if (o.nx && exists) || (o.xx && !exists) {
        if !o.get {
            out.null();
        }
        return;
    }
    let expire = if o.keepttl { old_ttl } else { expire_at_ms };
    let value = std::mem::take(&mut args[2]);
    cx.write_set_bytes(&args[1], value, expire);
    if !o.get {
        out.ok();
    }
}

pub fn setnx(args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    if cx.exists(&args[1]) {
        return out.integer(0);
    }
    let value = std::mem::take(&mut args[2]);
    cx.write_set_bytes(&args[1], value, None);
    out.integer(1);
}

pub fn setex(args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter, millis: bool) {
    let name = if millis { "psetex" } else { "setex" };
    let v = match int_arg(&args[2]) {
        Ok(v) => v,
        Err(e) => return out.error(e),
    };
    let unit: &[u8] = if millis { b"PX" } else { b"EX" };
    match expire_to_abs_ms(v, unit, cx.now_ms) {
        Some(t) => {
            let value = std::mem::take(&mut args[3]);
            cx.write_set_bytes(&args[1], value, Some(t));
            out.ok();
        }
        None => out.error(&invalid_expire(name)),
    }
}

pub fn getset(args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    match cx.get(&args[1]) {
        Some(e) => out.bulk_value(e.value(), e.shared_value()),
        None => out.null(),
    }
    let value = std::mem::take(&mut args[2]);
    cx.write_set_bytes(&args[1], value, None);
}

pub fn getdel(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    match cx.write_take(&args[1]) {
        Some(e) => out.bulk_value(e.value(), e.shared_value()),
        None => out.null(),
    }
}

pub fn getex(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let o = match parse_set_options(&args[2..], Form::GetEx) {
        Ok(o) => o,
        Err(e) => return out.error(e),
    };
    let key = &args[1];
    if cx.lookup_read(key).is_none() {
        return out.null();
    }
    let expire_at_ms = match expire_option_ms(&o.expire, cx.now_ms, "getex") {
        Ok(t) => t,
        Err(e) => return out.error(&e),
    };
    let Some(e) = cx.get(key) else {
        return out.null();
    };
    out.bulk_value(e.value(), e.shared_value());
    let has_ttl = e.has_ttl();
    if let Some(t) = expire_at_ms {
        cx.write_expire(key, Some(t));
    } else if o.persist && has_ttl {
        cx.write_expire(key, None);
    }
}

pub fn mget(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    out.array(args.len() - 1);
    for k in &args[1..] {
        match cx.lookup_read(k) {
            Some(e) => out.bulk_value(e.value(), e.shared_value()),
            None => out.null(),
        }
    }
}

/// MSET's pairs must come in twos; Redis reports an odd count as an arity error.
pub fn mset_pairs_ok(args: &[Bytes]) -> bool {
    args.len() % 2 == 1
}

pub fn mset(args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    if !mset_pairs_ok(args) {
        return out.error(&super::arity_error("mset"));
    }
    for kv in args[1..].chunks_exact_mut(2) {
        let value = std::mem::take(&mut kv[1]);
        cx.write_set_bytes(&kv[0], value, None);
    }
    out.ok();
}

pub fn msetnx(args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    if !mset_pairs_ok(args) {
        return out.error(&super::arity_error("msetnx"));
    }
    if args[1..].chunks_exact(2).any(|kv| cx.exists(&kv[0])) {
        return out.integer(0);
    }
    for kv in args[1..].chunks_exact_mut(2) {
        let value = std::mem::take(&mut kv[1]);
        cx.write_set_bytes(&kv[0], value, None);
    }
    out.integer(1);
}

pub fn append(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let (key, add) = (&args[1], &args[2]);
    let max = cx.max_value_bytes;
    let (new, len) = match cx.get(key) {
        None => (Entry::new(key, add, None), add.len()),
        Some(e) => {
            let len = e.value_len() + add.len();
            if len > max {
                return out.error(err::TOO_BIG);
            }
            let old = e.value();
            let new = Entry::with_value_len(key, len, e.expire_at_ms(), |dst| {
                dst[..old.len()].copy_from_slice(old);
                dst[old.len()..].copy_from_slice(add);
            });
            (new, len)
        }
    };
    cx.write_entry(new);
    out.integer(len as i64);
}

pub fn strlen(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    out.integer(cx.get(&args[1]).map_or(0, |e| e.value_len() as i64));
}

pub fn getrange(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let (start, end) = match (int_arg(&args[2]), int_arg(&args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        _ => return out.error(err::NOT_INT),
    };
    let Some(e) = cx.get(&args[1]) else {
        return out.bulk(b"");
    };
    let v = e.value();
    let len = v.len() as i64;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return out.bulk(b"");
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut en = if end < 0 { len + end } else { end };
    s = s.max(0);
    en = en.max(0);
    if en >= len {
        en = len - 1;
    }
    if s > en {
        return out.bulk(b"");
    }
    out.bulk(&v[s as usize..=en as usize]);
}

pub fn setrange(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let offset = match int_arg(&args[2]) {
        Ok(o) => o,
        Err(e) => return out.error(e),
    };
    if offset < 0 {
        return out.error("ERR offset is out of range");
    }
    let (key, patch) = (&args[1], &args[3]);
    let offset = offset as usize;
    let current = cx.get(key).map(|e| (e.value_len(), e.expire_at_ms()));
    if patch.is_empty() {
        // Nothing to write: Redis returns the current length and creates nothing.
        return out.integer(current.map_or(0, |(l, _)| l as i64));
    }
    let Some(needed) = offset.checked_add(patch.len()).filter(|&n| n <= cx.max_value_bytes) else {
        return out.error(err::TOO_BIG);
    };
    let (old_len, ttl) = current.unwrap_or((0, None));
    let new_len = old_len.max(needed);
    // A large old value is shared, not copied: only the new value is built.
    let old = cx.get(key).map(Entry::value_bytes).unwrap_or_default();
    let entry = Entry::with_value_len(key, new_len, ttl, |dst| {
        dst[..old.len()].copy_from_slice(&old);
        dst[old.len()..].fill(0);
        dst[offset..needed].copy_from_slice(patch);
    });
    cx.write_entry(entry);
    out.integer(new_len as i64);
}

pub fn incr_by(key: &Bytes, by: Result<i64, &'static str>, cx: &mut Exec, out: &mut ReplyWriter) {
    let by = match by {
        Ok(b) => b,
        Err(e) => return out.error(e),
    };
    let (cur, ttl) = match cx.get(key) {
        None => (0, None),
        Some(e) => match crate::resp::parse::parse_i64(e.value()) {
            Some(v) => (v, e.expire_at_ms()),
            None => return out.error(err::NOT_INT),
        },
    };
    let Some(new) = cur.checked_add(by) else {
        return out.error(err::OVERFLOW);
    };
    let mut b = itoa::Buffer::new();
    cx.write_set(key, b.format(new).as_bytes(), ttl);
    out.integer(new);
}

pub fn decr_by(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    match int_arg(&args[2]) {
        Ok(i64::MIN) => out.error("ERR decrement would overflow"),
        Ok(v) => incr_by(&args[1], Ok(-v), cx, out),
        Err(e) => out.error(e),
    }
}

pub fn incrbyfloat(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let Some(by) = crate::cmd::strings::Decimal::parse(&args[2]) else {
        return out.error(err::NOT_FLOAT);
    };
    let (cur, ttl) = match cx.get(&args[1]) {
        None => (Decimal::zero(), None),
        Some(e) => match Decimal::parse(e.value()) {
            Some(v) => (v, e.expire_at_ms()),
            None => return out.error(err::NOT_FLOAT),
        },
    };
    let Some(text) = cur.add(&by) else {
        return out.error("ERR increment would produce NaN or Infinity");
    };
    cx.write_set(&args[1], text.as_bytes(), ttl);
    out.bulk(text.as_bytes());
}

/// A number as INCRBYFLOAT sees it. Redis adds in `long double` and prints with `%.17Lf`
/// stripping trailing zeros; for decimal inputs of up to 17 fractional digits that is the
/// exact decimal sum, which we compute exactly in 128-bit fixed point. Anything beyond
/// (huge exponents, more digits) falls back to `f64`, which can differ from Redis in the last
/// digits.
#[derive(Debug, Clone, Copy)]
pub enum Decimal {
    /// `mantissa * 10^-17`
    Fixed(i128),
    Float(f64),
}

const SCALE_DIGITS: i32 = 17;

impl Decimal {
    fn zero() -> Self {
        Decimal::Fixed(0)
    }

    pub fn parse(s: &[u8]) -> Option<Decimal> {
        if s.is_empty() || s.len() > 5000 || s[0].is_ascii_whitespace() || s[s.len() - 1].is_ascii_whitespace() {
            return None;
        }
        let text = std::str::from_utf8(s).ok()?;
        let f: f64 = text.parse().ok()?;
        if f.is_nan() {
            return None;
        }
        Some(Self::parse_fixed(s).map(Decimal::Fixed).unwrap_or(Decimal::Float(f)))
    }

    /// `[-+]digits[.digits][e[-+]digits]` into fixed point, if it fits exactly.
    fn parse_fixed(s: &[u8]) -> Option<i128> {
        let mut i = 0;
        let neg = match s.first()? {
            b'-' => {
                i += 1;
                true
            }
            b'+' => {
                i += 1;
                false
            }
            _ => false,
        };
        let mut mant: i128 = 0;
        let mut frac_digits: i32 = 0;
        let mut seen_dot = false;
        let mut digits = 0;
        while i < s.len() {
            match s[i] {
                c @ b'0'..=b'9' => {
                    mant = mant.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
                    digits += 1;
                    if seen_dot {
                        frac_digits += 1;
                    }
                }
                b'.' if !seen_dot => seen_dot = true,
                b'e' | b'E' => break,
                _ => return None,
            }
            i += 1;
        }
        if digits == 0 {
            return None;
        }
        let mut exp: i32 = 0;
        if i < s.len() {
            let e = std::str::from_utf8(&s[i + 1..]).ok()?;
            exp = e.parse().ok()?;
        }
        let shift = SCALE_DIGITS - frac_digits + exp;
        if !(0..=38).contains(&shift) {
            return None;
        }
        let v = mant.checked_mul(10i128.checked_pow(shift as u32)?)?;
        // Keep within what a long double represents exactly enough (about 19 digits) plus
        // the scale.
        if v.unsigned_abs() >= 10u128.pow(19 + SCALE_DIGITS as u32) {
            return None;
        }
        Some(if neg { -v } else { v })
    }

    fn to_f64(self) -> f64 {
        match self {
            Decimal::Fixed(v) => v as f64 / 1e17,
            Decimal::Float(f) => f,
        }
    }

    /// The sum formatted as Redis would store it, or `None` for NaN/infinite results.
    fn add(&self, other: &Decimal) -> Option<String> {
        if let (Decimal::Fixed(a), Decimal::Fixed(b)) = (self, other) {
            if let Some(sum) = a.checked_add(*b) {
                return Some(format_fixed(sum));
            }
        }
        let r = self.to_f64() + other.to_f64();
        if !r.is_finite() {
            return None;
        }
        let s = format!("{r:.17}");
        Some(strip_zeros(&s))
    }
}

fn format_fixed(v: i128) -> String {
    let scale = 10u128.pow(SCALE_DIGITS as u32);
    let a = v.unsigned_abs();
    let s = format!("{}{}.{:017}", if v < 0 { "-" } else { "" }, a / scale, a % scale);
    let s = strip_zeros(&s);
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn strip_zeros(s: &str) -> String {
    if !s.contains('.') {
        return s.to_string();
    }
    let t = s.trim_end_matches('0');
    t.trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: &str, b: &str) -> String {
        Decimal::parse(a.as_bytes()).unwrap().add(&Decimal::parse(b.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn incrbyfloat_matches_redis_formatting() {
        assert_eq!(add("10.50", "0.1"), "10.6");
        assert_eq!(add("0.1", "0.2"), "0.3");
        assert_eq!(add("5.0e3", "2.0e2"), "5200");
        assert_eq!(add("0", "3"), "3");
        assert_eq!(add("-1.5", "1.5"), "0");
        assert_eq!(add("1", "-3.25"), "-2.25");
    }

    #[test]
    fn incrbyfloat_rejects_garbage() {
        assert!(Decimal::parse(b"abc").is_none());
        assert!(Decimal::parse(b" 1").is_none());
        assert!(Decimal::parse(b"nan").is_none());
        assert!(Decimal::parse(b"").is_none());
    }
}
