//! A really full disk (issue 8): the data directory on a small ext4 file system, loop-mounted,
//! filled up for real (no injected faults).
//!
//! Needs root, `mkfs.ext4` and loop devices: otherwise the test prints why and passes without
//! running (CI runs as root). The mount is undone on every path, a failing one included
//! ([`LoopMount`]'s `Drop`).
//!
//! What it checks, in `sync` mode:
//! - a snapshot that hits ENOSPC fails cleanly and leaves the previous snapshot intact;
//! - when the log cannot get space for its next segment, write commands get a clear
//!   `-MISCONF` error that says the disk is full, the pending write's reply is held (it is not
//!   durable), reads are still served;
//! - once space is freed, the held write completes and writes resume by themselves;
//! - after `kill -9`, every acknowledged write is there.

mod common;
mod durability_common;

use common::*;
use durability_common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A small ext4 image mounted on a loop device; unmounted and removed on drop.
struct LoopMount {
    image: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl LoopMount {
    /// `Err(why)` when this machine cannot do it (not root, no mkfs.ext4, no loop devices).
    fn new(name: &str, size_mib: u64) -> Result<LoopMount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (loop mounts need root)".into());
        }
        let base = std::env::temp_dir().join(format!("ringcache-diskfull-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let mut m = LoopMount { image: base.join("fs.img"), mnt: base.join("mnt"), mounted: false };
        std::fs::create_dir_all(&m.mnt).map_err(|e| e.to_string())?;
        let f = std::fs::File::create(&m.image).map_err(|e| e.to_string())?;
        f.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        run("mkfs.ext4", &["-q", "-F", "-m", "0", m.image.to_str().unwrap()])?;
        run("mount", &["-o", "loop", m.image.to_str().unwrap(), m.mnt.to_str().unwrap()])?;
        m.mounted = true;
        Ok(m)
    }

    fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.mnt.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path and an out-parameter we own.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
        st.f_bavail * st.f_frsize
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = run("umount", &[self.mnt.to_str().unwrap()]) {
                eprintln!("umount failed ({e}); lazy unmount");
                let _ = run("umount", &["-l", self.mnt.to_str().unwrap()]);
            }
        }
        if let Some(base) = self.image.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Takes all free space but `leave` bytes with one preallocated file.
fn fill(m: &LoopMount, leave: u64) -> PathBuf {
    use std::os::fd::AsRawFd;
    let path = m.mnt.join("filler");
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).unwrap();
    let cur = f.metadata().unwrap().len();
    let want = cur + m.free_bytes().saturating_sub(leave);
    // SAFETY: fallocate on a descriptor we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, want as libc::off_t) };
    assert_eq!(r, 0, "fallocate filler: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    path
}

fn value(i: usize) -> String {
    // Incompressible enough that a snapshot is about as large as the data.
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

#[test]
fn full_disk_refuses_writes_clearly_keeps_reads_and_snapshots_and_resumes_without_loss() {
    if Server::own_only() {
        return;
    }
    let m = match LoopMount::new("full", 96) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED full_disk test: {why}");
            return;
        }
    };
    let t0 = Instant::now();
    let dir = m.mnt.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    // 4 MiB segments: the log needs 4 MiB of free space for each new one.
    let extra = ["--wal-segment-bytes", "4mb", "--snapshot-compression", "none"];
    let mut server = start(&dir, "sync", 1, &extra);
    let mut c = server.client();
    assert_eq!(info(&mut c)["wal_io"], "direct", "ext4 supports O_DIRECT");
    let mut acked: Vec<usize> = Vec::new();
    for batch in 0..30 {
        let mut cmd = redis::cmd("MSET");
        for i in batch * 100..(batch + 1) * 100 {
            cmd.arg(format!("k{i}")).arg(value(i));
            acked.push(i);
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
    eprintln!("{:?}: loaded", t0.elapsed());
    let _: String = redis::cmd("SAVE").query(&mut c).expect("first SAVE");
    eprintln!("{:?}: saved", t0.elapsed());
    let shard = shard_dir(&dir, 0);
    let snaps = find_files(&shard, ".snap");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let snap_bytes = std::fs::read(&snaps[0]).unwrap();

    // Leave 1 MiB: less than a snapshot (~3 MiB) and than a segment (4 MiB).
    let filler = fill(&m, 1 << 20);
    eprintln!("{:?}: filled, {} bytes free", t0.elapsed(), m.free_bytes());

    // The log still has room in its preallocated segment.
    for i in 3000..3010 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(value(i)).query(&mut c).unwrap();
        acked.push(i);
    }
    // A snapshot that hits ENOSPC fails and leaves the previous one.
    let e = redis::cmd("SAVE").query::<String>(&mut c).unwrap_err();
    assert_eq!(e.code(), Some("ERR"), "Redis's reply to a failed SAVE: {e}");
    let i = info(&mut c);
    assert!(i["snapshot_shard0"].contains("No space left"), "{i:?}");
    assert_eq!(find_files(&shard, ".snap"), snaps, "the previous snapshot must stay");
    assert_eq!(std::fs::read(&snaps[0]).unwrap(), snap_bytes, "the previous snapshot must not change");
    assert!(find_files(&dir, ".tmp").is_empty(), "the temporary snapshot file must be removed");

    // Writes go on in the current (preallocated) segment until it is full; the next segment
    // cannot be allocated. One writer's reply is then held.
    let addr = server.addr;
    let stop_writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop_writing.clone();
    let writer = std::thread::spawn(move || {
        let mut c = connect(addr);
        let mut done = Vec::new();
        for i in 3010..20_000 {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let r: redis::RedisResult<()> = redis::cmd("SET").arg(format!("k{i}")).arg(value(i)).query(&mut c);
            match r {
                Ok(()) => done.push(i),
                Err(e) => return (done, Some((i, e.to_string()))),
            }
        }
        (done, None)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !info(&mut c)["wal_shard0"].contains("state=no_space") {
        assert!(!writer.is_finished(), "the writer stopped before the log reported a full disk");
        assert!(Instant::now() < deadline, "the log never reported a full disk");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{:?}: the log reports a full disk", t0.elapsed());
    let e = redis::cmd("SET").arg("new").arg("x").query::<String>(&mut c).unwrap_err();
    let msg = e.to_string();
    eprintln!("reply to a write on a full disk: {msg}");
    assert!(msg.contains("MISCONF") && msg.contains("No space left on device"), "{msg}");
    assert!(msg.contains("disk space"), "the reply must say what to do: {msg}");
    let v: String = redis::cmd("GET").arg("k7").query(&mut c).unwrap();
    assert_eq!(v, value(7), "reads are served while the disk is full");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!writer.is_finished(), "a write was acknowledged (or failed) while its flush could not be written");

    // Free the space: the held write completes, writes resume.
    stop_writing.store(true, std::sync::atomic::Ordering::SeqCst);
    std::fs::remove_file(&filler).unwrap();
    let (done, failed) = writer.join().unwrap();
    eprintln!("{:?}: space freed, the held write completed", t0.elapsed());
    assert!(failed.is_none(), "a write failed instead of waiting for space: {failed:?}");
    acked.extend(done);
    let _: () = redis::cmd("SET").arg("new").arg("x").query(&mut c).unwrap();
    assert!(info(&mut c)["wal_shard0"].contains("state=ok"));
    let _: String = redis::cmd("SAVE").query(&mut c).expect("SAVE after space returned");
    drop(c);

    crash(&mut server);
    let mut server = start(&dir, "sync", 1, &extra);
    let mut c = server.client();
    let keys: Vec<String> = acked.iter().map(|i| format!("k{i}")).collect();
    for (i, v) in acked.iter().zip(mget(&mut c, &keys)) {
        assert_eq!(v.as_deref(), Some(value(*i).as_str()), "acknowledged k{i} lost");
    }
    let v: String = redis::cmd("GET").arg("new").query(&mut c).unwrap();
    assert_eq!(v, "x");
    eprintln!("full disk: {} acknowledged writes, all recovered", acked.len());
    drop(c);
    stop(&mut server);
    drop(m);
}
