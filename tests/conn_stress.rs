//! Connection tasks under stress: tens of thousands of reads on one connection, idle gaps,
//! clients that vanish mid-command or mid-reply. Every connection must keep being served, and
//! once its client is gone it must leave CLIENT LIST and `connected_clients`.
//!
//! Regression for a hang: each pending read raced the socket against the shard's shutdown
//! event, whose `wait()` stored a fresh clone of the task's waker on every poll and never
//! removed it. glommio counts a task's waker references in an `i16`, so after ~32k pending
//! reads on one connection the next wake-up panicked inside glommio (the reactor catches and
//! logs it: "Panic while calling waker!") and the task was never polled again: the connection
//! stayed in CLIENT LIST with `events=r` forever, even after its client closed the socket.
//! (The accept loop raced each accept against the same event and wedged the same way after
//! ~32k connections; that takes too long to exercise here.)

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Round trips on one connection in the many-reads test. Each one is a read the server has to
/// wait for (the client sends the next request only after the reply), so with the old
/// shutdown-event waker leak the connection wedged at ~32.7k: comfortably past that.
const ROUND_TRIPS: usize = 34_000;

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_exact(s: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    if let Err(e) = s.read_exact(&mut buf) {
        panic!("{what}: no reply ({e}): the server stopped serving this connection");
    }
    buf
}

/// `ROUND_TRIPS` PINGs on one connection, one at a time.
fn ping_round_trips(server: &Server, ctl: &mut Raw) {
    let mut s = connect(server);
    let mut buf = [0u8; 7];
    for i in 0..ROUND_TRIPS {
        s.write_all(b"PING\r\n").unwrap();
        if let Err(e) = s.read_exact(&mut buf) {
            let (list, connected) = clients(ctl);
            panic!(
                "PING {i}: no reply ({e}): the server stopped serving this connection; \
                 connected_clients={connected}, CLIENT LIST:\n{}\nserver log:\n{}",
                list.join("\n"),
                server.log_text()
            );
        }
        assert_eq!(&buf, b"+PONG\r\n");
    }
}

/// The CLIENT LIST lines and `connected_clients`, as seen from `ctl`.
fn clients(ctl: &mut Raw) -> (Vec<String>, usize) {
    let list = match ctl.cmd(&resp(&[b"CLIENT", b"LIST"])) {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        r => panic!("CLIENT LIST: {r:?}"),
    };
    let info = match ctl.cmd(&resp(&[b"INFO", b"clients"])) {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        r => panic!("INFO clients: {r:?}"),
    };
    let connected = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .expect("connected_clients in INFO")
        .trim()
        .parse()
        .unwrap();
    (list.lines().map(str::to_string).collect(), connected)
}

/// Waits (bounded) until the only client left is `ctl` itself, in CLIENT LIST and in INFO.
fn assert_only_ctl_left(server: &Server, ctl: &mut Raw) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (list, connected) = clients(ctl);
        if list.len() == 1 && connected == 1 {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "clients never went away: connected_clients={connected}, CLIENT LIST:\n{}\nserver log:\n{}",
                list.join("\n"),
                server.log_text()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A connection doing 34k request/reply round trips after the server has been idle keeps being
/// served, and leaves when closed.
#[test]
fn connection_keeps_being_served_after_tens_of_thousands_of_reads() {
    if Server::own_only() {
        return;
    }
    let server = Server::start();
    let mut ctl = server.raw();
    thread::sleep(Duration::from_millis(300));
    ping_round_trips(&server, &mut ctl);
    assert_only_ctl_left(&server, &mut ctl);
    assert!(!server.log_text().contains("Panic while calling waker"), "{}", server.log_text());
}

/// Short-lived clients that close normally, vanish mid-command, vanish with replies unread
/// (the server's write fails), or sit idle first: none is left behind, and the counts match.
#[test]
fn vanished_and_idle_clients_leave_client_list_and_count() {
    if Server::own_only() {
        return;
    }
    let server = Server::start();
    let mut ctl = server.raw();
    let big = vec![b'x'; 128 * 1024];
    assert_eq!(ctl.cmd(&resp(&[b"SET", b"big", &big])), Reply::Simple("OK".into()));

    // Idle connections, used once after a gap, then closed.
    let mut idle: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for round in 0..3 {
        // Clean closes after a few commands.
        for i in 0..10 {
            let mut s = connect(&server);
            let key = format!("k:{round}:{i}");
            s.write_all(&resp(&[b"SET", key.as_bytes(), b"v"])).unwrap();
            s.write_all(&resp(&[b"GET", key.as_bytes()])).unwrap();
            assert_eq!(read_exact(&mut s, 5 + 7, "SET+GET"), b"+OK\r\n$1\r\nv\r\n");
        }
        // Gone in the middle of a command (the server holds a partial query).
        for i in 0..10 {
            let mut s = connect(&server);
            s.write_all(format!("*3\r\n$3\r\nSET\r\n$4\r\npart\r\n$100\r\n{i}").as_bytes()).unwrap();
            if i % 2 == 0 {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Killed mid-run: a pipeline whose replies (16 MB) cannot fit in the socket buffers,
        // then gone with replies unread (reset): the server is blocked writing when it happens.
        for _ in 0..2 {
            let mut s = connect(&server);
            let get = resp(&[b"GET", b"big"]);
            s.write_all(&get.repeat(128)).unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            drop(s);
        }
        // Idle gap, then the idle connections and a fresh one work.
        thread::sleep(Duration::from_millis(400));
        for s in idle.iter_mut().chain(std::iter::once(&mut connect(&server))) {
            s.write_all(b"PING\r\n").unwrap();
            assert_eq!(read_exact(s, 7, "PING after idle gap"), b"+PONG\r\n");
        }
    }
    for s in idle.drain(..) {
        drop(s);
    }
    assert_only_ctl_left(&server, &mut ctl);

    // Everything still works for a new client.
    let mut s = connect(&server);
    s.write_all(b"PING\r\n").unwrap();
    match s.read(&mut [0u8; 7]) {
        Ok(7) => {}
        Ok(n) => panic!("short PING reply: {n} bytes"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => panic!("no PING reply"),
        Err(e) => panic!("PING: {e}"),
    }
}
