//! The systemd notification protocol (`sd_notify`), spoken directly: one datagram per state
//! change to the unix socket named by `$NOTIFY_SOCKET`. No libsystemd: the protocol is a
//! newline-separated list of `KEY=value` assignments in one `SOCK_DGRAM` message, and the
//! address is a filesystem path or, when it starts with `@`, a Linux abstract socket name.
//!
//! # What we send, and when
//! | message | when |
//! |---|---|
//! | `STATUS=recovering ...` | at startup, and after each shard finished its recovery (`k of n`) |
//! | `READY=1` + `MAINPID` + `STATUS=ready ...` | every shard recovered, the port is bound and every shard accepts connections |
//! | `STOPPING=1` + `STATUS=shutting down` | the first shutdown request (SIGTERM, SIGINT, SHUTDOWN) |
//! | `WATCHDOG=1` | every `WATCHDOG_USEC / 2` while every shard's housekeeping tick is recent (see [`spawn_watchdog`]) |
//!
//! With `Type=notify`, systemd considers the unit started only at `READY=1`, so units ordered
//! after ringcache (and `systemctl start`) wait until recovery is over and clients can connect.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every function here does nothing. A send that
//! fails is logged once at debug level and otherwise ignored: the server must never stop
//! because its supervisor went away.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

/// Longest STATUS text sent (systemd shows one line; longer ones are cut).
pub const STATUS_MAX_BYTES: usize = 200;

/// The notification socket, opened once: `None` when `$NOTIFY_SOCKET` is unset or unusable.
struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

fn notifier() -> Option<&'static Notifier> {
    static N: OnceLock<Option<Notifier>> = OnceLock::new();
    N.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match open(&path) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={}: {e}; not notifying systemd", path.to_string_lossy());
                None
            }
        }
    })
    .as_ref()
}

fn open(path: &std::ffi::OsStr) -> std::io::Result<Notifier> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?
        }
        Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(path)?,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path or an abstract (@) socket name",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    // Never block: a datagram send waits when the receiver's queue is full, and sends happen
    // on shard executors (STOPPING from the SHUTDOWN command). A lost notification is better
    // than a stalled shard.
    sock.set_nonblocking(true)?;
    Ok(Notifier { sock, addr })
}

/// Sends `state` (newline-separated `KEY=value` lines) to systemd, if it listens.
pub fn send(state: &str) {
    let Some(n) = notifier() else { return };
    if let Err(e) = n.sock.send_to_addr(state.as_bytes(), &n.addr) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// Whether `$NOTIFY_SOCKET` is set and usable.
pub fn enabled() -> bool {
    notifier().is_some()
}

/// `STATUS=<text>`: what `systemctl status` shows. Newlines become spaces (one message, one
/// status line), and the text is cut at [`STATUS_MAX_BYTES`].
pub fn status(text: &str) {
    if !enabled() {
        return;
    }
    send(&format!("STATUS={}", status_text(text)));
}

fn status_text(text: &str) -> String {
    let mut t: String = text.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    if t.len() > STATUS_MAX_BYTES {
        let mut cut = STATUS_MAX_BYTES;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

/// `READY=1`: recovery is over and the port accepts connections.
pub fn ready(status: &str) {
    if !enabled() {
        return;
    }
    send(&format!("READY=1\nMAINPID={}\nSTATUS={}", std::process::id(), status_text(status)));
}

/// `STOPPING=1`: shutdown began.
pub fn stopping() {
    if !enabled() {
        return;
    }
    send("STOPPING=1\nSTATUS=shutting down: draining clients, flushing logs");
}

/// The watchdog period systemd asked for (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID` when set), or `None`.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the watchdog thread when systemd asked for one (`WatchdogSec=` in the unit): every
/// half period it sends `WATCHDOG=1`, but only while `alive()` says every shard is making
/// progress. A shard whose executor is stuck therefore stops the pings, and systemd restarts
/// the service after `WatchdogSec`: the watchdog watches the shards, not just this thread.
pub fn spawn_watchdog(alive: impl Fn() -> bool + Send + 'static) {
    let Some(period) = watchdog_interval() else { return };
    if !enabled() {
        return;
    }
    let tick = (period / 2).max(Duration::from_millis(10));
    let spawned = std::thread::Builder::new().name("watchdog".into()).spawn(move || loop {
        if alive() {
            send("WATCHDOG=1");
        } else {
            tracing::warn!("watchdog: a shard made no progress recently; not pinging systemd");
        }
        std::thread::sleep(tick);
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the watchdog thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(status_text("a\nb\rc"), "a b c");
        let long = "é".repeat(STATUS_MAX_BYTES);
        let t = status_text(&long);
        assert!(t.len() <= STATUS_MAX_BYTES && t.is_char_boundary(t.len()));
    }

    #[test]
    fn relative_socket_paths_are_refused() {
        assert!(open(std::ffi::OsStr::new("relative/sock")).is_err());
        assert!(open(std::ffi::OsStr::new("")).is_err());
        assert!(open(std::ffi::OsStr::new("@abstract-name")).is_ok());
    }
}
