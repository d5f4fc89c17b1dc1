//! Helpers shared by `tests/durability.rs` and `tests/recovery.rs`: per-test data directories,
//! starting the real binary on them (ephemeral ports, through `tests/common`), crashing and
//! stopping it, INFO parsing, and reading the WAL files on disk (LAYOUT, segments, flushes).
//!
//! The on-disk layout these helpers read is the one `docs/WAL.md` specifies: `LAYOUT` says
//! `shards=N generation=G`, segments live in `gen-G/shard-NNN/wal-<20-digit lsn>.log`, block 0
//! (4096 bytes) is the segment header and each flush starts on a 4096-byte boundary with a
//! 32-byte header (`crc u32, "RCFL", offset u64, first_lsn u64, records_len u32, count u32`).
#![allow(dead_code)]

use crate::common::*;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BLOCK: usize = 4096;
/// Segment size used unless a test picks another: small, so restarts read little.
pub const SEGMENT: &str = "256kb";

/// A fresh data directory for one test, removed when the test passes (kept, and its path
/// printed, when it fails, for inspection).
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(name: &str) -> DataDir {
        Self::under(&std::env::temp_dir(), name)
    }

    pub fn under(base: &Path, name: &str) -> DataDir {
        let path = base.join(format!("ringcache-dur-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create data dir");
        DataDir { path }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: data dir kept at {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Command line for a durable server on `dir`. Adds `--wal-segment-bytes 256kb` unless
/// `extra` sets the segment size, and turns the snapshot triggers off unless `extra` names
/// them: the WAL suites test the log alone (a shutdown snapshot would make every restart
/// replay nothing, and the size trigger would compact the segments they inspect).
pub fn server_args(dir: &Path, durability: &str, threads: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--threads".into(),
        threads.to_string(),
        "--durability".into(),
        durability.into(),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    if !extra.contains(&"--wal-segment-bytes") {
        a.extend(["--wal-segment-bytes".to_string(), SEGMENT.to_string()]);
    }
    if !extra.contains(&"--snapshot-on-shutdown") {
        a.extend(["--snapshot-on-shutdown".to_string(), "no".to_string()]);
    }
    if !extra.contains(&"--snapshot-wal-bytes") {
        a.extend(["--snapshot-wal-bytes".to_string(), "0".to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Starts a server through the harness (waits for its `listening on` line).
///
/// On this test VM the `sched_setaffinity` system call (glommio pins each executor with it)
/// occasionally stalls for many seconds, independently of ringcache (a Python loop calling
/// `os.sched_setaffinity` shows the same 9 s stalls), and a process caught there cannot be
/// killed until the stall ends. The harness gives up on a start after 20 s; such a start is
/// retried here (twice at most, with a loud warning) once the data dir's LOCK is free again, so
/// that the durability tests test durability. A start that fails by exiting is never retried.
pub fn start(dir: &Path, durability: &str, threads: usize, extra: &[&str]) -> Server {
    let args = server_args(dir, durability, threads, extra);
    let mut attempt = 1;
    loop {
        let t = Instant::now();
        match std::panic::catch_unwind(|| Server::spawn(&args)) {
            Ok(s) => return s,
            Err(e) if attempt < 3 && t.elapsed() >= Duration::from_secs(19) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("WARNING: server start hung for {:?}; retrying. {msg}", t.elapsed());
                STARTUP_HANGS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The harness SIGKILLed the hung process; wait until it is gone.
                wait_lock_free(dir, Duration::from_secs(90));
                attempt += 1;
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

/// Waits until no process holds the flock on `<dir>/LOCK`.
pub fn wait_lock_free(dir: &Path, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let Ok(f) = std::fs::OpenOptions::new().read(true).open(dir.join("LOCK")) else {
        return;
    };
    loop {
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        assert!(Instant::now() < deadline, "{}/LOCK still held after {timeout:?}", dir.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many starts [`start`] had to retry because the server hung before listening.
pub static STARTUP_HANGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// SIGTERM, and the process must exit 0 within 15 s.
pub fn stop(server: &mut Server) {
    server.signal(SIGTERM);
    let code = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "graceful stop must exit 0; log:\n{}", server.log_text());
}

/// SIGKILL, and wait until the process is gone (its data-dir lock is then released).
pub fn crash(server: &mut Server) {
    server.signal(SIGKILL);
    let _ = server.wait_exit(Duration::from_secs(60));
    assert!(server.pid().is_none(), "server did not die after SIGKILL");
}

/// A process started with [`try_start`]: like the harness's `Server`, but a start may fail.
pub struct Proc {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

/// How a [`try_start`] ended when the server did not start.
#[derive(Debug)]
pub struct Refused {
    pub code: Option<i32>,
    pub stderr: String,
}

/// Starts the binary with `args` (which must bind `127.0.0.1:0`); `Err` with the exit code and
/// stderr when it exits before listening.
pub fn try_start(args: &[String]) -> Result<Proc, Refused> {
    try_start_within(args, Duration::from_secs(60))
        .unwrap_or_else(|log| panic!("server neither started nor exited within 60 s; log:\n{log}"))
}

/// As [`try_start`]; `Err(log)` if the server neither listens nor exits within `timeout` (it is
/// killed).
pub fn try_start_within(args: &[String], timeout: Duration) -> Result<Result<Proc, Refused>, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcache");
    let stderr = child.stderr.take().expect("stderr");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            log2.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(a) => Ok(Ok(Proc { addr: a.parse().expect("address"), child: Some(child), log })),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().expect("wait");
            let stderr = log.lock().unwrap().join("\n");
            Ok(Err(Refused { code: status.code(), stderr }))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let text = log.lock().unwrap().join("\n");
            Err(text)
        }
    }
}

/// Runs the binary to its exit (it must exit by itself within `timeout`): exit code, stderr.
pub fn run_to_exit(args: &[String], timeout: Duration) -> Refused {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcache"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcache");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return Refused { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "ringcache {args:?} did not exit within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Proc {
    pub fn client(&self) -> redis::Connection {
        connect(self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; must exit 0.
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                assert_eq!(st.code(), Some(0), "graceful stop must exit 0; log:\n{}", self.log_text());
                return;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn connect(addr: SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("client");
    let c = client.get_connection_with_timeout(Duration::from_secs(10)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// `INFO persistence` as a map.
pub fn info(c: &mut redis::Connection) -> HashMap<String, String> {
    let text: String = redis::cmd("INFO").arg("persistence").query(c).expect("INFO persistence");
    text.lines().filter_map(|l| l.trim_end().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn info_u64(info: &HashMap<String, String>, field: &str) -> u64 {
    info.get(field)
        .unwrap_or_else(|| panic!("INFO persistence has no {field}: {info:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("INFO {field} is not a number: {info:?}"))
}

pub fn get(c: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(c).expect("GET")
}

pub fn dbsize(c: &mut redis::Connection) -> u64 {
    redis::cmd("DBSIZE").query(c).expect("DBSIZE")
}

/// MGET in chunks of 500.
pub fn mget(c: &mut redis::Connection, keys: &[String]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let v: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(c).expect("MGET");
        out.extend(v);
    }
    out
}

/// `(shards, generation)` from `<dir>/LAYOUT`.
pub fn layout(dir: &Path) -> (u32, u64) {
    let text = std::fs::read_to_string(dir.join("LAYOUT")).expect("read LAYOUT");
    let mut shards = None;
    let mut generation = None;
    for f in text.split_whitespace() {
        match f.split_once('=') {
            Some(("shards", v)) => shards = v.parse().ok(),
            Some(("generation", v)) => generation = v.parse().ok(),
            _ => panic!("unexpected LAYOUT field {f:?} in {text:?}"),
        }
    }
    (shards.expect("shards= in LAYOUT"), generation.expect("generation= in LAYOUT"))
}

/// `gen-G/shard-NNN` of the current layout.
pub fn shard_dir(dir: &Path, shard: u32) -> PathBuf {
    let (_, g) = layout(dir);
    dir.join(format!("gen-{g}")).join(format!("shard-{shard:03}"))
}

/// The `wal-*.log` files of a shard directory, in name (LSN) order.
pub fn segments(shard_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(shard_dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", shard_dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("wal-") && n.ends_with(".log")
        })
        .collect();
    v.sort();
    v
}

/// Every regular file under `dir` (recursively) with its bytes, keyed by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Files under `dir` whose name ends with `suffix`.
pub fn find_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    snapshot(dir).into_keys().filter(|p| p.to_string_lossy().ends_with(suffix)).map(|p| dir.join(p)).collect()
}

/// Recursive copy of a directory (not the LOCK file's lock, which is per process anyway).
pub fn copy_dir(src: &Path, dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let p = e.path();
        let to = dst.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &to);
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
}

/// One flush found in a segment written by the server (fields read, checksum not verified).
#[derive(Debug, Clone, Copy)]
pub struct Flush {
    pub offset: usize,
    /// First byte after the flush's padding (next block boundary).
    pub end: usize,
    pub first_lsn: u64,
    pub records: u32,
    pub records_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The flushes of an undamaged segment, walking flush headers from offset 4096.
pub fn flushes(seg: &[u8]) -> Vec<Flush> {
    assert_eq!(&seg[..8], b"RCWALSEG", "segment magic");
    let mut out = Vec::new();
    let mut pos = BLOCK;
    while pos + 32 <= seg.len() && &seg[pos + 4..pos + 8] == b"RCFL" {
        assert_eq!(u64_at(seg, pos + 8) as usize, pos, "flush header offset field");
        let records_len = u32_at(seg, pos + 24) as usize;
        let end = (pos + 32 + records_len).next_multiple_of(BLOCK);
        out.push(Flush {
            offset: pos,
            end,
            first_lsn: u64_at(seg, pos + 16),
            records: u32_at(seg, pos + 28),
            records_len,
        });
        pos = end;
    }
    out
}

/// Offset of the first all-zero block after the header block (the end of the written part of
/// a preallocated segment), or the file length.
pub fn written_end(seg: &[u8]) -> usize {
    let mut pos = BLOCK;
    while pos < seg.len() {
        let end = (pos + BLOCK).min(seg.len());
        if seg[pos..end].iter().all(|&b| b == 0) {
            return pos;
        }
        pos += BLOCK;
    }
    seg.len()
}

/// Whether `path` is on tmpfs (statfs magic).
pub fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == 0x0102_1994
}

/// Whether files in `dir` can be opened with O_DIRECT (probes with a temporary file).
pub fn supports_o_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".test-o-direct-probe");
    let r =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&probe);
    let _ = std::fs::remove_file(&probe);
    match r {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => panic!("probe O_DIRECT in {}: {e}", dir.display()),
    }
}
