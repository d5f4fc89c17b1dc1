//! Generic key commands: DEL, EXISTS, TYPE, the EXPIRE family, TTL family, PERSIST, RENAME;
//! and the glob matcher KEYS and SCAN use.

use super::{err, int_arg, Exec};
use crate::resp::ReplyWriter;
use crate::store::Entry;
use bytes::Bytes;

pub fn del(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let n = args[1..].iter().filter(|k| cx.write_del(k)).count();
    out.integer(n as i64);
}

pub fn exists(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    // Duplicates count as often as they are named, as in Redis.
    let n = args[1..].iter().filter(|k| cx.exists(k)).count();
    out.integer(n as i64);
}

pub fn type_(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    out.simple(if cx.exists(&args[1]) { "string" } else { "none" });
}

#[derive(Clone, Copy, PartialEq)]
pub enum ExpireUnit {
    Seconds,
    Millis,
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT with NX/XX/GT/LT (Redis 7 `expireGenericCommand`).
pub fn expire(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter, unit: ExpireUnit, absolute: bool) {
    let name = match (unit, absolute) {
        (ExpireUnit::Seconds, false) => "expire",
        (ExpireUnit::Millis, false) => "pexpire",
        (ExpireUnit::Seconds, true) => "expireat",
        (ExpireUnit::Millis, true) => "pexpireat",
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        match opt.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => return out.error(&format!("ERR Unsupported option {}", String::from_utf8_lossy(opt))),
        }
    }
    if nx && (xx || gt || lt) {
        return out.error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return out.error("ERR GT and LT options at the same time are not compatible");
    }
    let mut when = match int_arg(&args[2]) {
        Ok(v) => v,
        Err(e) => return out.error(e),
    };
    let invalid = || format!("ERR invalid expire time in '{name}' command");
    if unit == ExpireUnit::Seconds {
        match when.checked_mul(1000) {
            Some(w) => when = w,
            None => return out.error(&invalid()),
        }
    }
    if !absolute {
        match when.checked_add(cx.now_ms as i64) {
            Some(w) => when = w,
            None => return out.error(&invalid()),
        }
    }
    let key = &args[1];
    let Some(current) = cx.get(key).map(Entry::expire_at_ms) else {
        return out.integer(0);
    };
    // A key without a TTL counts as an infinite TTL for GT and LT.
    let cur = current.map_or(i128::MAX, i128::from);
    let w = i128::from(when);
    if (nx && current.is_some()) || (xx && current.is_none()) || (gt && w <= cur) || (lt && w >= cur) {
        return out.integer(0);
    }
    let at = if when <= 0 { 0 } else { when as u64 };
    cx.write_expire(key, Some(at));
    out.integer(1);
}

#[derive(Clone, Copy)]
pub enum TtlForm {
    RemainingSeconds,
    RemainingMillis,
    AbsoluteSeconds,
    AbsoluteMillis,
}

pub fn ttl(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter, form: TtlForm) {
    let now = cx.now_ms;
    let Some(t) = cx.get(&args[1]).map(Entry::expire_at_ms) else {
        return out.integer(-2);
    };
    let Some(t) = t else {
        return out.integer(-1);
    };
    let remaining = t.saturating_sub(now) as i64;
    out.integer(match form {
        TtlForm::RemainingSeconds => (remaining + 500) / 1000,
        TtlForm::RemainingMillis => remaining,
        // Rounded to the nearest second, as Redis does.
        TtlForm::AbsoluteSeconds => (t.saturating_add(500) / 1000) as i64,
        TtlForm::AbsoluteMillis => t as i64,
    });
}

pub fn persist(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    let has_ttl = cx.get(&args[1]).is_some_and(Entry::has_ttl);
    if has_ttl {
        cx.write_expire(&args[1], None);
    }
    out.integer(has_ttl as i64);
}

/// RENAME/RENAMENX when both keys live on this shard.
pub fn rename(args: &[Bytes], cx: &mut Exec, out: &mut ReplyWriter, nx: bool) {
    let (src, dst) = (&args[1], &args[2]);
    if !cx.exists(src) {
        return out.error(err::NO_SUCH_KEY);
    }
    if src == dst {
        return if nx { out.integer(0) } else { out.ok() };
    }
    if nx && cx.exists(dst) {
        return out.integer(0);
    }
    let Some(e) = cx.write_take(src) else {
        return out.error(err::NO_SUCH_KEY);
    };
    // The value moves to the new key; a large one is shared, not copied.
    cx.write_set_bytes(dst, e.value_bytes(), e.expire_at_ms());
    if nx {
        out.integer(1)
    } else {
        out.ok()
    }
}

/// Redis's glob matcher (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
/// Iterative with backtracking on the last `*`, so hostile patterns cannot blow the stack.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p + 1 < pattern.len() && pattern[p + 1] == b'*' {
                        p += 1;
                    }
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                _ if i < s.len() => {
                    if let Some(next_p) = match_one(pattern, p, s[i]) {
                        p = next_p;
                        i += 1;
                        continue;
                    }
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more byte.
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp + 1;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches one byte `c` against the pattern element at `p`; returns the index after it.
fn match_one(pat: &[u8], mut p: usize, c: u8) -> Option<usize> {
    match pat[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pat.len() => (pat[p + 1] == c).then_some(p + 2),
        b'[' => {
            p += 1;
            let not = pat.get(p) == Some(&b'^');
            if not {
                p += 1;
            }
            let mut matched = false;
            loop {
                match pat.get(p) {
                    None => {
                        // Unterminated class: Redis treats the end as closing it.
                        p = pat.len();
                        break;
                    }
                    Some(b'\\') if p + 1 < pat.len() => {
                        if pat[p + 1] == c {
                            matched = true;
                        }
                        p += 2;
                    }
                    Some(b']') => {
                        p += 1;
                        break;
                    }
                    Some(&lo) if pat.get(p + 1) == Some(&b'-') && p + 2 < pat.len() => {
                        let hi = pat[p + 2];
                        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                        if (a..=b).contains(&c) {
                            matched = true;
                        }
                        p += 3;
                    }
                    Some(&x) => {
                        if x == c {
                            matched = true;
                        }
                        p += 1;
                    }
                }
            }
            (matched != not).then_some(p)
        }
        x => (x == c).then_some(p + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn globs() {
        assert!(m(b"*", b"anything"));
        assert!(m(b"h?llo", b"hello"));
        assert!(!m(b"h?llo", b"hllo"));
        assert!(m(b"h*llo", b"heeeello"));
        assert!(m(b"h[ae]llo", b"hallo"));
        assert!(!m(b"h[ae]llo", b"hillo"));
        assert!(m(b"h[^e]llo", b"hallo"));
        assert!(!m(b"h[^e]llo", b"hello"));
        assert!(m(b"h[a-b]llo", b"hbllo"));
        assert!(m(b"a\\*b", b"a*b"));
        assert!(!m(b"a\\*b", b"axb"));
        assert!(m(b"user:*:name", b"user:42:name"));
        assert!(!m(b"user:*:name", b"user:42:age"));
        assert!(m(b"", b""));
        assert!(!m(b"", b"a"));
        assert!(m(b"**a", b"bba"));
    }
}
