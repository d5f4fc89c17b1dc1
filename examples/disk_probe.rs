//! The disk's own durable-write latency, without ringcache: what a `sync` reply cannot beat.
//!
//! ```sh
//! cargo run --release --example disk_probe -- /var/tmp 2000
//! ```
//!
//! In a fresh file under DIR (which must be on the disk to measure, not tmpfs), times COUNT
//! sequential 4 KiB writes from an aligned buffer with `O_DIRECT`, one at a time, in three ways:
//!
//! | name | each operation | like |
//! |---|---|---|
//! | `write+fdatasync` | `pwrite` over blocks written before, then `fdatasync` | fio `--direct=1 --fdatasync=1` |
//! | `dsync-overwrite` | `pwrite` with `O_DSYNC` over blocks written before | — |
//! | `dsync-fallocated` | `pwrite` with `O_DSYNC` into `fallocate`d, never-written space | the WAL: segments are preallocated with `fallocate` and each flush is one `O_DSYNC` write |
//!
//! Writing into fallocated space converts an unwritten extent, a metadata change that the
//! filesystem must also make durable (a journal commit on ext4/xfs), so the third is often
//! slower than the first two. Prints one line per way: `name n p50_us p90_us p99_us max_us
//! mean_us`, all from a sorted list of every operation's wall time (`Instant` around the
//! syscalls). The file is removed at the end.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const BLOCK: usize = 4096;

fn check(r: libc::c_int, what: &str, path: &Path) -> libc::c_int {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("disk_probe: {what} {}: {e}", path.display());
        std::process::exit(1);
    }
    r
}

fn open(path: &Path, flags: libc::c_int) -> libc::c_int {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: a valid NUL-terminated path; the fd is closed by the caller.
    check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) }, "open", path)
}

/// Times `count` 4 KiB writes at offsets 0, 4096, ...; `sync` adds an fdatasync after each.
fn time_writes(fd: libc::c_int, buf: *const libc::c_void, count: usize, sync: bool, path: &Path) -> Vec<u64> {
    let mut ns = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        // SAFETY: `buf` points to BLOCK aligned, initialised bytes that outlive the call.
        let n = unsafe { libc::pwrite(fd, buf, BLOCK, (i * BLOCK) as libc::off_t) };
        if n != BLOCK as isize {
            check(-1, "pwrite", path);
        }
        if sync {
            // SAFETY: a valid open fd.
            check(unsafe { libc::fdatasync(fd) }, "fdatasync", path);
        }
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns
}

fn report(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() as f64 * p).ceil() as usize).clamp(1, ns.len()) - 1] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    println!("{name} {} {:.1} {:.1} {:.1} {:.1} {:.1}", ns.len(), pct(0.5), pct(0.9), pct(0.99), pct(1.0), mean);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/var/tmp".into()));
    let count: usize = args.next().map_or(2000, |s| s.parse().expect("COUNT must be a number"));
    assert!(count > 0, "COUNT must be positive");
    let path = dir.join(format!(".ringcache-disk-probe-{}", std::process::id()));
    let bytes = (count * BLOCK) as libc::off_t;

    let mut buf: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; alignment is a power of two multiple of the pointer size.
    if unsafe { libc::posix_memalign(&mut buf, BLOCK, BLOCK) } != 0 {
        eprintln!("disk_probe: posix_memalign failed");
        std::process::exit(1);
    }
    // SAFETY: `buf` is BLOCK writable bytes.
    unsafe { std::ptr::write_bytes(buf as *mut u8, 0xA5, BLOCK) };

    // Lay the file out (written, synced), then overwrite it: with and without O_DSYNC.
    let fd = open(&path, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_DIRECT);
    time_writes(fd, buf, count, false, &path);
    // SAFETY: a valid open fd.
    check(unsafe { libc::fsync(fd) }, "fsync", &path);
    report("write+fdatasync", time_writes(fd, buf, count, true, &path));
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    let fd = open(&path, libc::O_WRONLY | libc::O_DIRECT | libc::O_DSYNC);
    report("dsync-overwrite", time_writes(fd, buf, count, false, &path));
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };

    // Fresh file, fallocated (size made durable), then O_DSYNC writes into it, as the WAL does.
    let _ = std::fs::remove_file(&path);
    let fd = open(&path, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_DIRECT | libc::O_DSYNC);
    // SAFETY: a valid open fd.
    check(unsafe { libc::fallocate(fd, 0, 0, bytes) }, "fallocate", &path);
    // SAFETY: a valid open fd.
    check(unsafe { libc::fsync(fd) }, "fsync", &path);
    report("dsync-fallocated", time_writes(fd, buf, count, false, &path));
    // SAFETY: closing our own fd; `buf` came from posix_memalign.
    unsafe {
        libc::close(fd);
        libc::free(buf);
    }
    let _ = std::fs::remove_file(&path);
}
