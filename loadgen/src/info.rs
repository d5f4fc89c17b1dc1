//! Provenance: what the targets and the client machine are, read before (and around) the run.
//!
//! Uses a tiny blocking client on its own connection, separate from the load connections.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::connect_blocking;
use crate::resp::{self, Limits, Reply};

/// INFO fields printed when present (any subset; none is required).
pub const INTERESTING: &[&str] = &[
    "redis_version",
    "ringcache_version",
    "durability",
    "threads",
    "shards",
    "io_threads_active",
    "aof_enabled",
    "appendfsync",
    "maxmemory_policy",
];

/// Candidate names of the fsync and record counters in `INFO persistence`.
pub const FSYNC_FIELDS: &[&str] = &["wal_fsyncs", "wal_fsync_count", "fsyncs"];
pub const RECORD_FIELDS: &[&str] = &["wal_records", "wal_records_written", "wal_appends"];

/// A blocking control connection.
pub struct ControlConn {
    stream: TcpStream,
    buf: Vec<u8>,
    addr: SocketAddr,
}

/// An owned reply, as far as the control connection needs one.
#[derive(Debug, Clone, PartialEq)]
pub enum Owned {
    Text(String),
    Error(String),
    Int(i64),
    Nil,
    Array(Vec<Owned>),
}

fn to_owned(r: &Reply<'_>) -> Owned {
    match r {
        Reply::Simple(s) | Reply::Bulk(s) => Owned::Text(String::from_utf8_lossy(s).into_owned()),
        Reply::Error(s) => Owned::Error(String::from_utf8_lossy(s).into_owned()),
        Reply::Integer(i) => Owned::Int(*i),
        Reply::Nil => Owned::Nil,
        Reply::Bool(b) => Owned::Int(i64::from(*b)),
        Reply::Array(v) => Owned::Array(v.iter().map(to_owned).collect()),
    }
}

impl ControlConn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<ControlConn> {
        let stream = connect_blocking(addr, timeout)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(ControlConn { stream, buf: Vec::new(), addr })
    }

    /// Send one command and wait (at most 5 s) for its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> io::Result<Owned> {
        let mut out = Vec::new();
        resp::encode_command(&mut out, args);
        self.stream.write_all(&out).map_err(|e| io::Error::new(e.kind(), format!("sending to {}: {e}", self.addr)))?;
        let limits = Limits { max_bulk_bytes: 16 * 1024 * 1024, ..Limits::default() };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match resp::parse_reply(&self.buf, &limits) {
                Ok(Some((r, used))) => {
                    let o = to_owned(&r);
                    self.buf.drain(..used);
                    return Ok(o);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply from {}: {e}", self.addr),
                    ))
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no reply from {} within 5 s", self.addr)));
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| io::Error::new(e.kind(), format!("reading from {}: {e}", self.addr)))?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} closed the connection", self.addr),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `INFO [section]` parsed into `field -> value`.
    pub fn info(&mut self, section: Option<&str>) -> io::Result<BTreeMap<String, String>> {
        let reply = match section {
            Some(s) => self.command(&[b"INFO", s.as_bytes()])?,
            None => self.command(&[b"INFO"])?,
        };
        match reply {
            Owned::Text(t) => Ok(parse_info(&t)),
            Owned::Error(e) => Err(io::Error::other(format!("INFO refused: {e}"))),
            other => Err(io::Error::other(format!("unexpected INFO reply: {other:?}"))),
        }
    }
}

/// Parse `INFO` text: `field:value` lines; `#` section headers and blanks are skipped.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What a target said about itself before the run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TargetInfo {
    /// The [`INTERESTING`] fields that exist (`appendfsync` from `CONFIG GET` if not in INFO).
    pub fields: BTreeMap<String, String>,
    /// Why INFO could not be read, if it could not.
    pub error: Option<String>,
}

/// Read the target's identity. Never fails the run: a server without INFO is still a target.
pub fn target_info(addr: SocketAddr, timeout: Duration) -> TargetInfo {
    let mut out = TargetInfo::default();
    let mut conn = match ControlConn::connect(addr, timeout) {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    match conn.info(None) {
        Ok(all) => {
            for f in INTERESTING {
                if let Some(v) = all.get(*f) {
                    out.fields.insert(f.to_string(), v.clone());
                }
            }
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    if !out.fields.contains_key("appendfsync") && out.fields.contains_key("aof_enabled") {
        if let Ok(Owned::Array(v)) = conn.command(&[b"CONFIG", b"GET", b"appendfsync"]) {
            if let [Owned::Text(_), Owned::Text(val)] = v.as_slice() {
                out.fields.insert("appendfsync".to_string(), format!("{val} (CONFIG GET)"));
            }
        }
    }
    out
}

/// A reading of `INFO persistence` with the time it was taken.
#[derive(Debug, Clone)]
pub struct PersistenceSample {
    pub at: Instant,
    pub fields: BTreeMap<String, String>,
}

pub fn persistence_sample(addr: SocketAddr, timeout: Duration) -> Option<PersistenceSample> {
    let mut c = ControlConn::connect(addr, timeout).ok()?;
    let fields = c.info(Some("persistence")).ok()?;
    Some(PersistenceSample { at: Instant::now(), fields })
}

fn counter(fields: &BTreeMap<String, String>, names: &[&str]) -> Option<(String, u64)> {
    names.iter().find_map(|n| fields.get(*n).and_then(|v| v.parse().ok()).map(|v| (n.to_string(), v)))
}

/// Change of the WAL counters across the measured window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PersistenceDelta {
    pub seconds: f64,
    pub fsync_field: Option<String>,
    pub record_field: Option<String>,
    pub fsyncs: Option<u64>,
    pub records: Option<u64>,
}

impl PersistenceDelta {
    pub fn between(a: &PersistenceSample, b: &PersistenceSample) -> PersistenceDelta {
        let fa = counter(&a.fields, FSYNC_FIELDS);
        let fb = counter(&b.fields, FSYNC_FIELDS);
        let ra = counter(&a.fields, RECORD_FIELDS);
        let rb = counter(&b.fields, RECORD_FIELDS);
        PersistenceDelta {
            seconds: b.at.saturating_duration_since(a.at).as_secs_f64(),
            fsync_field: fb.as_ref().map(|x| x.0.clone()),
            record_field: rb.as_ref().map(|x| x.0.clone()),
            fsyncs: fa.zip(fb).map(|(a, b)| b.1.saturating_sub(a.1)),
            records: ra.zip(rb).map(|(a, b)| b.1.saturating_sub(a.1)),
        }
    }

    /// Sum of several windows (rounds).
    pub fn add(&mut self, o: &PersistenceDelta) {
        let first = self.seconds == 0.0 && self.fsyncs.is_none() && self.records.is_none();
        self.seconds += o.seconds;
        if first {
            self.fsyncs = o.fsyncs;
            self.records = o.records;
            self.fsync_field = o.fsync_field.clone();
            self.record_field = o.record_field.clone();
        } else {
            self.fsyncs = self.fsyncs.zip(o.fsyncs).map(|(a, b)| a + b);
            self.records = self.records.zip(o.records).map(|(a, b)| a + b);
        }
    }

    pub fn fsyncs_per_s(&self) -> Option<f64> {
        self.fsyncs.filter(|_| self.seconds > 0.0).map(|f| f as f64 / self.seconds)
    }

    pub fn records_per_fsync(&self) -> Option<f64> {
        match (self.records, self.fsyncs) {
            (Some(r), Some(f)) if f > 0 => Some(r as f64 / f as f64),
            _ => None,
        }
    }
}

/// The machine the client runs on.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub hostname: String,
}

pub fn client_info() -> ClientInfo {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    ClientInfo {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: format!(
            "{} {}",
            read("/proc/sys/kernel/ostype").unwrap_or_else(|_| std::env::consts::OS.to_string()),
            read("/proc/sys/kernel/osrelease").unwrap_or_else(|_| "unknown".to_string())
        ),
        cpu_model,
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|_| "unknown".to_string()),
    }
}

/// The exact command line, shell-quoted where needed so it can be pasted back.
pub fn command_line() -> String {
    std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ")
}

fn shell_quote(a: &str) -> String {
    let safe = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c));
    if safe {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_text_parses() {
        let m =
            parse_info("# Server\r\nredis_version:7.0.15\r\n\r\n# Persistence\r\naof_enabled:0\r\nwal_fsyncs:10\r\n");
        assert_eq!(m.get("redis_version").map(String::as_str), Some("7.0.15"));
        assert_eq!(m.get("aof_enabled").map(String::as_str), Some("0"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn persistence_delta() {
        let t = Instant::now();
        let mk = |at, f: &[(&str, &str)]| PersistenceSample {
            at,
            fields: f.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        };
        let a = mk(t, &[("wal_fsyncs", "100"), ("wal_records", "1000")]);
        let b = mk(t + Duration::from_secs(2), &[("wal_fsyncs", "300"), ("wal_records", "5000")]);
        let d = PersistenceDelta::between(&a, &b);
        assert_eq!(d.fsyncs_per_s(), Some(100.0));
        assert_eq!(d.records_per_fsync(), Some(20.0));
        let none = PersistenceDelta::between(&mk(t, &[]), &mk(t + Duration::from_secs(1), &[]));
        assert_eq!(none.fsyncs_per_s(), None);
        assert_eq!(none.records_per_fsync(), None);
        let mut sum = PersistenceDelta::default();
        sum.add(&d);
        sum.add(&d);
        assert_eq!(sum.fsyncs, Some(400));
        assert_eq!(sum.fsyncs_per_s(), Some(100.0));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--ratio"), "--ratio");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
