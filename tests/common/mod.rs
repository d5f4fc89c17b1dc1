//! Shared harness for integration tests: starts the real `ringcache` binary on an ephemeral
//! loopback port and hands out clients.
//!
//! The server logs `listening on <addr>` (to stderr) once every shard accepts connections; the
//! harness passes `--bind 127.0.0.1:0` and reads the real port from that line.
//!
//! `RINGCACHE_TEST_EXTERNAL=host:port` runs the suite against an already running server
//! instead (for example a real `redis-server` 7, to check that expected replies are Redis's).
//! Tests that need to start, signal or inspect our own process call [`Server::own_only`] and
//! return early in that mode. Run external mode with `--test-threads=1`: tests then share one
//! server and each starts with FLUSHALL.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// Every line the server wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn external() -> Option<SocketAddr> {
    std::env::var("RINGCACHE_TEST_EXTERNAL").ok().map(|s| s.parse().expect("RINGCACHE_TEST_EXTERNAL=host:port"))
}

impl Server {
    /// Starts a server with `--threads threads` plus `extra` arguments.
    pub fn start_with(threads: usize, extra: &[&str]) -> Server {
        if let Some(addr) = external() {
            let s = Server { addr, child: None, log: Arc::default() };
            let mut c = s.client();
            let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL on external server");
            return s;
        }
        let mut args: Vec<String> =
            vec!["--bind".into(), "127.0.0.1:0".into(), "--threads".into(), threads.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args)
    }

    /// One shard.
    pub fn start() -> Server {
        Self::start_with(1, &[])
    }

    /// Several shards, so multi-key commands cross shards.
    pub fn start_sharded() -> Server {
        Self::start_with(4, &[])
    }

    /// True (and prints why) when running against an external server: the caller returns.
    pub fn own_only() -> bool {
        if external().is_some() {
            eprintln!("skipped: needs our own server process");
            return true;
        }
        false
    }

    /// Spawns the binary with `args` and waits for its `listening on` line. Unless `args` pick
    /// a durability mode, the server runs with `--durability off` (in memory, no data
    /// directory), so parallel tests never share one.
    pub fn spawn(args: &[String]) -> Server {
        Self::spawn_with_env(args, &[])
    }

    /// As [`Server::spawn`], with extra environment variables.
    pub fn spawn_with_env(args: &[String], env: &[(&str, &str)]) -> Server {
        Self::spawn_full(args, env, None)
    }

    /// As [`Server::spawn_with_env`]; `nofile` sets the child's `RLIMIT_NOFILE` (soft, hard)
    /// before it starts.
    pub fn spawn_full(args: &[String], env: &[(&str, &str)], nofile: Option<(u64, u64)>) -> Server {
        use std::os::unix::process::CommandExt;
        let mut args = args.to_vec();
        if !args.iter().any(|a| a == "--durability") {
            args.extend(["--durability".to_string(), "off".to_string()]);
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcache"));
        if let Some((soft, hard)) = nofile {
            // SAFETY: only setrlimit runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringcache");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("address in listening line"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log: {:?}", log.lock().unwrap());
            }
        };
        Server { addr, child: Some(child), log }
    }

    pub fn client(&self) -> redis::Connection {
        let url = format!("redis://{}/", self.addr);
        let client = redis::Client::open(url).expect("client");
        client.get_connection_with_timeout(Duration::from_secs(10)).expect("connect")
    }

    pub fn raw(&self) -> Raw {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("own server");
        let rc = unsafe { libc_kill(pid as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `timeout` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub const SIGTERM: i32 = 15;
pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw TCP connection that sends bytes and reads whole RESP replies.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

/// A decoded reply, for raw-protocol tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    /// RESP3 types, kept as their raw line for simple assertions.
    Other(String),
}

impl Raw {
    /// A raw connection to any address (the harness's [`Server::raw`] uses the server's).
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    pub fn from_stream(s: TcpStream) -> Raw {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    /// Reads exactly one reply.
    pub fn read(&mut self) -> Reply {
        loop {
            if let Some((r, n)) = parse_reply(&self.buf) {
                self.buf.drain(..n);
                return r;
            }
            let mut tmp = [0u8; 65536];
            let n = self.s.read(&mut tmp).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply; have {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub fn cmd(&mut self, bytes: &[u8]) -> Reply {
        self.send(bytes);
        self.read()
    }

    /// True once the server has closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Encodes a command as a RESP multibulk.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn parse_reply(b: &[u8]) -> Option<(Reply, usize)> {
    let nl = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..nl]).ok()?.to_string();
    let rest = nl + 2;
    match b.first()? {
        b'+' => Some((Reply::Simple(line), rest)),
        b'-' => Some((Reply::Error(line), rest)),
        b':' => Some((Reply::Int(line.parse().ok()?), rest)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Bulk(None), rest));
            }
            let n = n as usize;
            if b.len() < rest + n + 2 {
                return None;
            }
            Some((Reply::Bulk(Some(b[rest..rest + n].to_vec())), rest + n + 2))
        }
        b'*' | b'%' | b'~' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Array(None), rest));
            }
            let count = if b[0] == b'%' { n * 2 } else { n };
            let mut items = Vec::new();
            let mut off = rest;
            for _ in 0..count {
                let (r, used) = parse_reply(&b[off..])?;
                items.push(r);
                off += used;
            }
            Some((Reply::Array(Some(items)), off))
        }
        b'=' => {
            let n: usize = line.parse().ok()?;
            if b.len() < rest + n + 2 {
                return None;
            }
            Some((Reply::Bulk(Some(b[rest..rest + n].to_vec())), rest + n + 2))
        }
        _ => Some((Reply::Other(String::from_utf8_lossy(&b[..nl]).into_owned()), rest)),
    }
}
