//! Process startup and shutdown: listeners, one pinned executor per shard, signals.
//!
//! # Startup
//! 1. Probe the address with an ordinary socket (no `SO_REUSEPORT`), so that a second server
//!    on the same port fails with "address already in use" instead of silently joining the
//!    first one's port group. The probe also resolves port 0.
//! 2. Bind one `SO_REUSEPORT` listener per shard on that address; the kernel spreads incoming
//!    connections across them, and a connection stays on the shard that accepted it.
//! 3. Start one glommio executor per shard, pinned to CPU `shard % cpus`. Each joins the channel
//!    mesh, starts its receive tasks, its cron and its accept loop, then reports ready.
//! 4. Once every shard is ready, log `listening on <addr>`.
//!
//! # Shutdown (SIGTERM, SIGINT, SHUTDOWN)
//! The flag in `Global` is set; each shard's cron notices within 10 ms and sets its local
//! shutdown event. Accept loops stop; idle connections close; a connection in the middle of a
//! pipeline finishes it and writes its replies first. Each shard then waits until every shard
//! has drained (so cross-shard requests in flight still get answers), bounded by
//! [`DRAIN_TIMEOUT`], and the process exits 0.

use crate::config::Config;
use crate::conn;
use crate::error::StartError;
use crate::shard::{Global, Msg, Shard, MESH_CHANNEL_CAPACITY};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Longest a graceful shutdown waits for connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Period of each shard's housekeeping (expiry, rehash): Redis's `hz 10`.
pub const CRON_INTERVAL_MS: u64 = 100;
/// Time budget of active expiry per cron tick.
pub const EXPIRE_BUDGET_US: u64 = 2_000;
/// Time budget of incremental rehashing per cron tick.
pub const REHASH_BUDGET_US: u64 = 1_000;

fn bind_error(addr: SocketAddr, e: std::io::Error) -> StartError {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => StartError::AddrInUse { addr },
        std::io::ErrorKind::PermissionDenied => StartError::BindPermission { addr },
        _ => StartError::Bind { addr, source: e },
    }
}

/// Binds `n` listening sockets sharing one address with SO_REUSEPORT.
fn bind_listeners(config: &Config, n: usize) -> Result<(SocketAddr, Vec<RawFd>), StartError> {
    let requested = config.bind;
    let probe = std::net::TcpListener::bind(requested).map_err(|e| bind_error(requested, e))?;
    let addr = probe.local_addr().map_err(|e| bind_error(requested, e))?;
    drop(probe);
    let mut fds = Vec::with_capacity(n);
    for _ in 0..n {
        let domain = if addr.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .map_err(|e| bind_error(addr, e))?;
        sock.set_reuse_port(true).map_err(|e| bind_error(addr, e))?;
        sock.set_reuse_address(true).map_err(|e| bind_error(addr, e))?;
        sock.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
        sock.listen(1024).map_err(|e| bind_error(addr, e))?;
        fds.push(sock.into_raw_fd());
    }
    Ok((addr, fds))
}

enum Event {
    Ready,
    Exited(usize, Result<(), StartError>),
}

/// Runs the server until shutdown. Returns an error only for startup failures.
pub fn run(config: Config) -> Result<(), StartError> {
    let n = config.shard_count();
    if n > 1024 {
        return Err(StartError::Config(format!("--threads {n} is more than the supported 1024")));
    }
    let (addr, fds) = bind_listeners(&config, n)?;
    let global = Arc::new(Global::new(config.clone(), n, addr));
    install_signal_handlers(global.clone());
    let cpus = allowed_cpus();
    let mesh = (n > 1).then(|| MeshBuilder::<Msg, _>::full(n, MESH_CHANNEL_CAPACITY));
    let drained = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Event>();
    for (id, fd) in fds.into_iter().enumerate() {
        let g = global.clone();
        let mesh = mesh.clone();
        let drained = drained.clone();
        let ready = tx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[id % cpus.len()]))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.spin_before_park_us))
            .spawn(move || async move { shard_main(id, g, mesh, fd, ready, drained).await })
            .map_err(|source| StartError::Executor { shard: id, source })?;
        let done = tx.clone();
        std::thread::spawn(move || {
            let r = match handle.join() {
                Ok(()) => Ok(()),
                Err(source) => Err(StartError::Executor { shard: id, source }),
            };
            let _ = done.send(Event::Exited(id, r));
        });
    }
    drop(tx);
    let mut ready = 0;
    let mut exited = 0;
    while let Ok(ev) = rx.recv() {
        match ev {
            Event::Ready => {
                ready += 1;
                if ready == n {
                    tracing::info!(shards = n, "ready: listening on {addr}");
                }
            }
            Event::Exited(id, r) => {
                r?;
                exited += 1;
                if ready < n && !global.shutting_down() {
                    return Err(StartError::ShardExited { shard: id });
                }
                if exited == n {
                    break;
                }
            }
        }
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// The CPUs this process may run on (its affinity mask, as set by `taskset`, systemd's
/// `CPUAffinity=` or a cpuset), in ascending order. Shard `i` is pinned to the `i % n`-th of
/// them: pinning to CPUs outside the mask would put shards on CPUs the operator reserved for
/// something else (a benchmark client, another service).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask owned by this frame; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<usize> = if rc == 0 {
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |c| c.get())).collect()
    } else {
        cpus
    }
}

fn install_signal_handlers(global: Arc<Global>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    tracing::info!("received {name}, shutting down");
                    global.request_shutdown();
                }
            });
        }
        Err(e) => tracing::warn!("cannot install signal handlers: {e}"),
    }
}

async fn shard_main(
    id: usize,
    global: Arc<Global>,
    mesh: Option<MeshBuilder<Msg, glommio::channels::channel_mesh::Full>>,
    fd: RawFd,
    ready: mpsc::Sender<Event>,
    drained: Arc<AtomicUsize>,
) {
    let n = global.shards;
    let (senders, receivers) = match mesh {
        Some(m) => match m.join().await {
            Ok((s, r)) => (Some(s), Some(r)),
            Err(e) => {
                tracing::error!(shard = id, "cannot join the shard mesh: {e}");
                return;
            }
        },
        None => (None, None),
    };
    let shard = Shard::new(id, global.clone(), senders);
    if let Some(r) = receivers {
        shard.start_receivers(r);
    }
    // SAFETY: `fd` is a listening socket created for this shard and owned by nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    glommio::spawn_local(cron(shard.clone())).detach();
    let accept = glommio::spawn_local(accept_loop(shard.clone(), listener));
    let _ = ready.send(Event::Ready);
    shard.shutdown.wait().await;
    accept.await;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !shard.clients.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    drained.fetch_add(1, Ordering::SeqCst);
    while drained.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let g = shard.global.clone();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // EMFILE and friends: log, back off briefly, keep serving existing clients.
                tracing::warn!(shard = shard.id, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        g.total_connections_received.fetch_add(1, Ordering::Relaxed);
        let max = g.maxclients.load(Ordering::Relaxed);
        if g.connected_clients.fetch_add(1, Ordering::Relaxed) >= max {
            g.connected_clients.fetch_sub(1, Ordering::Relaxed);
            g.rejected_connections.fetch_add(1, Ordering::Relaxed);
            glommio::spawn_local(async move {
                use futures_lite::AsyncWriteExt;
                let mut stream = stream;
                let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        glommio::spawn_local(conn::serve(shard.clone(), stream)).detach();
    }
}

/// Housekeeping: notices shutdown, expires keys actively, advances rehashing.
async fn cron(shard: Rc<Shard>) {
    let mut last_tick = Instant::now();
    let mut expired = Vec::new();
    loop {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        if shard.global.shutting_down() {
            shard.shutdown.set();
            return;
        }
        if last_tick.elapsed() < Duration::from_millis(CRON_INTERVAL_MS) {
            continue;
        }
        last_tick = Instant::now();
        if shard.gate.is_held() {
            continue;
        }
        let start = Instant::now();
        let mut store = shard.store.borrow_mut();
        // Active expiry: keep going while over 10% of the TTL keys met were expired, within
        // the time budget (Redis's adaptive cycle).
        loop {
            expired.clear();
            let (seen, removed) = store.active_expire(crate::store::now_ms(), 64, &mut expired);
            if seen == 0 || removed * 10 < seen || start.elapsed() > Duration::from_micros(EXPIRE_BUDGET_US) {
                break;
            }
        }
        let start = Instant::now();
        while store.rehash(100) && start.elapsed() < Duration::from_micros(REHASH_BUDGET_US) {}
    }
}
