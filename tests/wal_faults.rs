//! Failure paths of the write-ahead log through the real binary, with failures injected under
//! the real log file (`RINGCACHE_TEST_FAULTS`, see `src/wal/file.rs`):
//! - a failed durable write (as a failed fsync) fail-stops the shard: the write in flight is
//!   never acknowledged, later writes get `-IOERR`, reads go on, and a restart recovers every
//!   acknowledged write;
//! - ENOSPC refuses new writes with `-MISCONF`, keeps reads, holds the pending write's reply,
//!   and resumes by itself once space returns, losing nothing.

mod common;
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringcache-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn args(dir: &std::path::Path) -> Vec<String> {
    [
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--durability",
        "sync",
        "--wal-segment-bytes",
        "256kb",
        "--data-dir",
        dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn info_persistence(s: &Server) -> String {
    let mut c = s.client();
    redis::cmd("INFO").arg("persistence").query(&mut c).unwrap()
}

#[test]
fn failed_durable_write_is_never_acknowledged_and_fail_stops_the_shard() {
    if Server::own_only() {
        return;
    }
    let dir = data_dir("eio");
    // Durable write 1 is the segment header, 2 and 3 are the first two SETs' flushes.
    let mut s = Server::spawn_with_env(&args(&dir), &[("RINGCACHE_TEST_FAULTS", "eio_at=4")]);
    let mut c = s.client();
    let _: () = redis::cmd("SET").arg("k1").arg("v1").query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg("k2").arg("v2").query(&mut c).unwrap();
    // The third write's flush fails: no +OK may come back; the connection is closed instead.
    let r: redis::RedisResult<String> = redis::cmd("SET").arg("k3").arg("v3").query(&mut c);
    assert!(r.is_err(), "a write whose flush failed was acknowledged: {r:?}");

    let mut c = s.client();
    let v: String = redis::cmd("GET").arg("k1").query(&mut c).unwrap();
    assert_eq!(v, "v1", "reads keep working on a fail-stopped shard");
    let e = redis::cmd("SET").arg("k4").arg("v4").query::<String>(&mut c).unwrap_err();
    assert!(e.to_string().contains("IOERR"), "new writes must be refused with IOERR, got {e}");
    let info = info_persistence(&s);
    assert!(info.contains("wal_shard0:state=failed"), "{info}");
    // Even after the disk "recovers" nothing is acknowledged on this log again.
    let e = redis::cmd("SET").arg("k5").arg("v5").query::<String>(&mut c).unwrap_err();
    assert!(e.to_string().contains("IOERR"), "{e}");

    s.signal(SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    let s = Server::spawn(&args(&dir));
    let mut c = s.client();
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&["k1", "k2", "k4", "k5"]).query(&mut c).unwrap();
    assert_eq!(got, vec![Some("v1".into()), Some("v2".into()), None, None]);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn full_disk_refuses_writes_keeps_reads_and_resumes_without_loss() {
    if Server::own_only() {
        return;
    }
    let dir = data_dir("enospc");
    let full = dir.join("disk-is-full");
    let fault = format!("enospc_while={}", full.display());
    let mut s = Server::spawn_with_env(&args(&dir), &[("RINGCACHE_TEST_FAULTS", fault.as_str())]);
    let mut c = s.client();
    let _: () = redis::cmd("SET").arg("a").arg("1").query(&mut c).unwrap();

    std::fs::write(&full, b"").unwrap();
    // This write's flush hits ENOSPC: its reply waits (it is not durable) until space returns.
    let addr = s.addr;
    let blocked = std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut c = client.get_connection().unwrap();
        let start = Instant::now();
        let r: redis::RedisResult<String> = redis::cmd("SET").arg("b").arg("2").query(&mut c);
        (r, start.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !info_persistence(&s).contains("state=no_space") {
        assert!(Instant::now() < deadline, "the shard never reported no_space");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = redis::cmd("SET").arg("c").arg("3").query::<String>(&mut c).unwrap_err();
    assert!(e.to_string().contains("MISCONF"), "writes must be refused with MISCONF, got {e}");
    let v: String = redis::cmd("GET").arg("a").query(&mut c).unwrap();
    assert_eq!(v, "1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!blocked.is_finished(), "the pending write was acknowledged while the disk was full");

    std::fs::remove_file(&full).unwrap();
    let (r, waited) = blocked.join().unwrap();
    assert_eq!(r.unwrap(), "OK", "the pending write completes once space returns");
    assert!(waited >= Duration::from_millis(300));
    let _: () = redis::cmd("SET").arg("c").arg("3").query(&mut c).unwrap();
    assert!(info_persistence(&s).contains("wal_shard0:state=ok"));

    s.signal(SIGKILL);
    s.wait_exit(Duration::from_secs(5));
    let s = Server::spawn(&args(&dir));
    let mut c = s.client();
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&["a", "b", "c"]).query(&mut c).unwrap();
    assert_eq!(got, vec![Some("1".into()), Some("2".into()), Some("3".into())]);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
