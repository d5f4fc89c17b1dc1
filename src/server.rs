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
use crate::shard::{Global, Shard, MESH_CHANNEL_CAPACITY};
use crate::snapshot::task::{SnapshotConfig, SnapshotCtl};
use crate::store::Store;
use crate::wal::file::{probe_direct_io, IoMode};
use crate::wal::replay::{recover_shard, remove_other_generations, Layout, RecoveryStats};
use crate::wal::{Durability, LogConfig, Record, RecoveryMode, ShardLog};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
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
/// Time budget of eviction per cron tick (after a lowered limit; writes evict for themselves).
pub const EVICT_BUDGET_US: u64 = 2_000;
/// Time budget of incremental rehashing per cron tick.
pub const REHASH_BUDGET_US: u64 = 1_000;

fn bind_error(addr: SocketAddr, e: std::io::Error) -> StartError {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => StartError::AddrInUse { addr },
        std::io::ErrorKind::PermissionDenied => StartError::BindPermission { addr },
        _ => StartError::Bind { addr, source: e },
    }
}

/// Checks that the address is free with an ordinary socket (no `SO_REUSEPORT`, so another
/// server's port group is detected) and resolves port 0.
fn probe_address(config: &Config) -> Result<SocketAddr, StartError> {
    let requested = config.bind;
    let probe = std::net::TcpListener::bind(requested).map_err(|e| bind_error(requested, e))?;
    probe.local_addr().map_err(|e| bind_error(requested, e))
}

/// Binds `n` listening sockets sharing one address with SO_REUSEPORT.
fn bind_listeners(addr: SocketAddr, n: usize) -> Result<Vec<RawFd>, StartError> {
    // Re-check with a plain socket: someone may have taken the port during recovery.
    drop(std::net::TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?);
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
    Ok(fds)
}

enum Event {
    /// A shard finished recovery (its store is loaded, its log open).
    Recovered(usize, Result<RecoveryStats, String>),
    Ready,
    Exited(usize, Result<(), StartError>),
}

/// What each shard needs to recover.
#[derive(Clone)]
struct RecoveryPlan {
    data_dir: PathBuf,
    layout: Option<Layout>,
    /// Generation the shards write to (the current one, or the next on a layout change).
    generation: u64,
    mode: RecoveryMode,
    io_mode: IoMode,
}

/// Locks the data directory for this process (released when the process exits).
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir { dir: dir.to_path_buf(), source: e })?;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::DataDir { dir: dir.to_path_buf(), source: e })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StartError::DataDirLocked { dir: dir.to_path_buf() });
    }
    Ok(f)
}

/// File descriptors kept free for the server's own use: 32 like Redis
/// (`CONFIG_MIN_RESERVED_FDS`), plus per shard its io_uring rings, eventfds, listener, mesh
/// notifiers and log files.
const RESERVED_FDS: u64 = 32;
const RESERVED_FDS_PER_SHARD: u64 = 16;

/// Raises `RLIMIT_NOFILE` so that `maxclients` clients fit, as Redis does at startup: the soft
/// limit first (and the hard one, which root may raise) up to what is needed. When the limit
/// cannot go that high, lowers `maxclients` to what fits and says so in one line. Returns the
/// `maxclients` to use.
fn fit_open_files_limit(maxclients: usize, shards: usize) -> usize {
    let need = maxclients as u64 + RESERVED_FDS + RESERVED_FDS_PER_SHARD * shards as u64;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= need {
        return maxclients;
    }
    let attempts = [
        libc::rlimit { rlim_cur: need, rlim_max: lim.rlim_max.max(need) },
        libc::rlimit { rlim_cur: need.min(lim.rlim_max), rlim_max: lim.rlim_max },
    ];
    let before = lim.rlim_cur;
    for want in attempts {
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim = want;
            if lim.rlim_cur >= need {
                tracing::info!(
                    "raised the open files limit (RLIMIT_NOFILE) from {before} to {need} for maxclients {maxclients}"
                );
                return maxclients;
            }
            break;
        }
    }
    let reserved = RESERVED_FDS + RESERVED_FDS_PER_SHARD * shards as u64;
    let fit = lim.rlim_cur.saturating_sub(reserved).max(1) as usize;
    tracing::warn!(
        "maxclients {maxclients} needs {need} open files but the limit (RLIMIT_NOFILE) is {}: maxclients lowered to {fit}; raise it with `ulimit -n {need}` or LimitNOFILE= in the systemd unit",
        lim.rlim_cur
    );
    fit
}

/// Runs the server until shutdown. Returns an error only for startup failures.
pub fn run(mut config: Config) -> Result<(), StartError> {
    let n = config.shard_count();
    config.maxclients = fit_open_files_limit(config.maxclients, n);
    // Fail fast on a taken port, before any recovery work.
    let addr = probe_address(&config)?;
    let mut _lock = None;
    let plan = if config.persistence() {
        _lock = Some(lock_data_dir(&config.data_dir)?);
        let layout = Layout::read(&config.data_dir).map_err(|e| StartError::Recovery(e.to_string()))?;
        let generation = match layout {
            Some(l) if l.shards as usize == n => l.generation,
            Some(l) => l.generation + 1,
            None => 0,
        };
        // Remove leftovers of an interrupted layout change (never the current generation).
        if let Some(l) = layout {
            remove_other_generations(&config.data_dir, l.generation)
                .map_err(|e| StartError::Recovery(e.to_string()))?;
        }
        let io_mode = probe_direct_io(&config.data_dir)
            .map_err(|e| StartError::DataDir { dir: config.data_dir.clone(), source: e })?;
        if io_mode == IoMode::Buffered {
            tracing::warn!(dir = %config.data_dir.display(), "O_DIRECT is not supported here (tmpfs or FUSE?): the log and snapshots use buffered writes with fdatasync");
        }
        if let Some(l) = layout {
            if l.shards as usize != n {
                tracing::info!(from = l.shards, to = n, "shard count changed: re-routing the log to the new shards");
            }
        }
        Some(RecoveryPlan {
            data_dir: config.data_dir.clone(),
            layout,
            generation,
            mode: config.recovery.mode(),
            io_mode,
        })
    } else {
        None
    };
    let global = Arc::new(Global::new(config.clone(), n, addr));
    install_signal_handlers(global.clone());
    if let Some(m) = config.metrics_bind {
        crate::metrics::http::spawn(m, global.clone())?;
    }
    if global.auth.protected_mode() && !global.auth.required() && !addr.ip().is_loopback() {
        tracing::warn!(
            "protected mode: no password is set (--requirepass), so clients connecting from other hosts to {addr} \
             are refused; set a password, or --protected-mode no on a trusted network"
        );
    }
    if plan.is_some() {
        crate::notify::status(&format!("recovering {n} shards from {}", config.data_dir.display()));
    }
    let cpus = allowed_cpus();
    let mut mesh = if n > 1 { crate::shard::mesh::full(n, MESH_CHANNEL_CAPACITY) } else { Vec::new() }.into_iter();
    let drained = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Event>();
    let mut fd_senders = Vec::with_capacity(n);
    for id in 0..n {
        let g = global.clone();
        let mesh = mesh.next();
        let drained = drained.clone();
        let events = tx.clone();
        let plan = plan.clone();
        let (fd_tx, fd_rx) = mpsc::channel::<RawFd>();
        fd_senders.push(fd_tx);
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[id % cpus.len()]))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.spin_before_park_us))
            .spawn(move || async move { shard_main(id, g, mesh, plan, fd_rx, events, drained).await })
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
    let (mut recovered, mut ready, mut exited) = (0, 0, 0);
    while let Ok(ev) = rx.recv() {
        match ev {
            Event::Recovered(id, r) => {
                let stats = r.map_err(|e| StartError::Recovery(format!("shard {id}: {e}")))?;
                if plan.is_some() {
                    tracing::info!(
                        shard = id,
                        snapshot_lsn = stats.snapshot_lsn,
                        snapshot_keys = stats.snapshot_keys,
                        snapshot_bytes = stats.snapshot_bytes,
                        snapshot_fallbacks = stats.snapshot_fallbacks,
                        segments = stats.segments,
                        records = stats.records,
                        bytes = stats.bytes_read,
                        torn = stats.torn_tails,
                        corrupt = stats.corrupt_segments,
                        keys = stats.keys_loaded,
                        ms = stats.duration_ms,
                        mb_per_s = format!(
                            "{:.0}",
                            crate::wal::replay::mb_per_s(stats.snapshot_bytes + stats.bytes_read, stats.duration_ms)
                        ),
                        "recovered"
                    );
                }
                recovered += 1;
                global.published.recovered.store(recovered, Ordering::SeqCst);
                if plan.is_some() {
                    crate::notify::status(&format!(
                        "recovering: {recovered} of {n} shards recovered (shard {id}: {} keys in {} ms)",
                        stats.keys_loaded, stats.duration_ms
                    ));
                }
                if recovered == n {
                    // Every shard's log is open and durable in the target generation: commit
                    // the layout (the commit point of a shard-count change), then open the port.
                    if let Some(p) = &plan {
                        let layout = Layout { shards: n as u32, generation: p.generation };
                        if p.layout != Some(layout) {
                            layout.write(&p.data_dir).map_err(|e| StartError::Recovery(e.to_string()))?;
                            remove_other_generations(&p.data_dir, p.generation)
                                .map_err(|e| StartError::Recovery(e.to_string()))?;
                        }
                    }
                    let fds = bind_listeners(addr, n)?;
                    for (fd, s) in fds.into_iter().zip(&fd_senders) {
                        let _ = s.send(fd);
                    }
                }
            }
            Event::Ready => {
                ready += 1;
                if ready == n {
                    global.published.ready.store(true, Ordering::SeqCst);
                    tracing::info!(shards = n, durability = ?config.durability, "ready: listening on {addr}");
                    crate::notify::ready(&format!("ready: {n} shards listening on {addr}"));
                    let g = global.clone();
                    crate::notify::spawn_watchdog(move || g.published.all_alive());
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
    mesh: Option<crate::shard::mesh::MeshEnds>,
    plan: Option<RecoveryPlan>,
    fd_rx: mpsc::Receiver<RawFd>,
    events: mpsc::Sender<Event>,
    drained: Arc<AtomicUsize>,
) {
    let n = global.shards;
    tracing::debug!(shard = id, "executor started");
    let (senders, receivers) = match mesh {
        Some(m) => {
            let (s, r) = m.connect().await;
            tracing::debug!(shard = id, "mesh connected");
            (Some(s), Some(r))
        }
        None => (None, None),
    };
    let mut store = Store::new(rand::random());
    // The limit holds during recovery too: a data directory larger than it is evicted as it
    // loads.
    global.apply_eviction(&mut store);
    let (wal, snapshots, stats) = match &plan {
        None => (None, None, RecoveryStats::default()),
        Some(p) => match recover(id, n, &global.config, p, &mut store).await {
            Ok((wal, ctl, stats)) => (wal, Some(ctl), stats),
            Err(e) => {
                let _ = events.send(Event::Recovered(id, Err(e)));
                return;
            }
        },
    };
    let _ = events.send(Event::Recovered(id, Ok(stats.clone())));
    let shard = Shard::new(id, global.clone(), senders, store, wal.clone(), snapshots, stats);
    // Wait for the listener: it is bound only once every shard has recovered. The executor
    // has nothing else to do meanwhile.
    // Poll rather than block: a blocked thread would stall this executor's side of the mesh.
    let fd = loop {
        match fd_rx.try_recv() {
            Ok(fd) => break fd,
            Err(mpsc::TryRecvError::Empty) => glommio::timer::sleep(Duration::from_millis(1)).await,
            Err(mpsc::TryRecvError::Disconnected) => return,
        }
    };
    if let Some(r) = receivers {
        shard.start_receivers(r);
    }
    publish(&shard);
    let flusher_stop = Rc::new(crate::shard::LocalEvent::default());
    let flusher = wal.map(|w| glommio::spawn_local(w.run_flusher(flusher_stop.clone())));
    // SAFETY: `fd` is a listening socket created for this shard and owned by nobody else.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    glommio::spawn_local(cron(shard.clone())).detach();
    let accept = glommio::spawn_local(accept_loop(shard.clone(), listener));
    let _ = events.send(Event::Ready);
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
    // The shutdown snapshot: no client is left, so the walk runs without competition.
    let save = match shard.global.shutdown_save.load(Ordering::SeqCst) {
        crate::shard::SHUTDOWN_NOSAVE => false,
        crate::shard::SHUTDOWN_SAVE => true,
        _ => shard.global.config.snapshot_on_shutdown,
    };
    if save && shard.snapshots.is_some() {
        if let Err(e) = shard.snapshot().await {
            tracing::error!(shard = id, "shutdown snapshot failed: {e}; the next start replays the log");
        }
    }
    // Everything acknowledged or not, flush what is pending before exiting.
    flusher_stop.set();
    if let Some(f) = flusher {
        f.await;
    }
}

/// Tests only (never set it in production): `RINGCACHE_TEST_RECOVERY_HOLD=PATH` holds each
/// shard's recovery while the file PATH exists (at most 60 s), so that tests can watch the
/// server while it recovers (health endpoint, systemd status). Blocking is fine here: the
/// executor has nothing else to run before its recovery.
fn hold_recovery_for_tests() {
    let Some(path) = std::env::var_os("RINGCACHE_TEST_RECOVERY_HOLD") else { return };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Recovers this shard's store (newest snapshot, then the log) and opens its log for writing
/// (none with `--durability off`).
async fn recover(
    id: usize,
    n: usize,
    config: &Config,
    plan: &RecoveryPlan,
    store: &mut Store,
) -> Result<(Option<Rc<ShardLog>>, Rc<SnapshotCtl>, RecoveryStats), String> {
    hold_recovery_for_tests();
    let mut stats =
        recover_shard(&plan.data_dir, plan.layout, id as u32, n as u32, plan.mode, store).map_err(|e| e.to_string())?;
    let dir = Layout::shard_dir(&plan.data_dir, plan.generation, id as u32);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for d in [dir.parent(), Some(dir.as_path())].into_iter().flatten() {
        crate::wal::file::sync_dir(d).map_err(|e| format!("fsync {}: {e}", d.display()))?;
    }
    let rewrite = plan.layout.is_some_and(|l| l.generation != plan.generation);
    let next_lsn = if rewrite { 1 } else { stats.next_lsn.max(1) };
    let snap_cfg = SnapshotConfig {
        dir: dir.clone(),
        shard_id: id as u32,
        shard_count: n as u32,
        compression: config.snapshot_compression.compression(),
        retain: config.snapshot_retain as usize,
        io_mode: plan.io_mode,
    };
    let ctl = SnapshotCtl::new(snap_cfg, next_lsn - 1);
    if config.durability == Durability::Off {
        if rewrite {
            // A new generation without a log: its state is a snapshot, durable before the
            // layout switches to it.
            let cell = std::cell::RefCell::new(std::mem::replace(store, Store::new(0)));
            let r = crate::snapshot::task::take_snapshot(&ctl, &cell, None, &std::cell::Cell::new(0)).await;
            *store = cell.into_inner();
            r.map_err(|e| format!("write the new generation's snapshot: {e}"))?;
        }
        return Ok((None, ctl, stats));
    }
    let cfg = LogConfig {
        dir,
        shard_id: id as u32,
        shard_count: n as u32,
        durability: config.durability,
        io_mode: plan.io_mode,
        segment_bytes: config.wal_segment_bytes,
        buffer_bytes: config.wal_buffer_bytes,
        flush_interval_ms: config.wal_flush_interval_ms,
    };
    let wal = ShardLog::new(cfg, next_lsn);
    // Keys evicted while loading are logged as deletions, so a later recovery (perhaps with a
    // higher limit) does not bring them back. A new generation holds only what is left anyway.
    let evicted = store.take_recovery_evictions();
    if !rewrite && !evicted.is_empty() {
        tracing::info!(shard = id, keys = evicted.len(), "evicted during recovery: over --maxmemory");
        for k in &evicted {
            wal.append(&Record::Del { key: k });
        }
    }
    if rewrite {
        // A new generation: write the whole recovered state as its log, durably, before the
        // layout switches to it.
        let now = crate::store::now_ms();
        let mut cursor = 0;
        loop {
            cursor = store.scan(cursor, now, |e| {
                let rec = Record::Set { key: e.key(), value: e.value(), expire_at_ms: e.expire_at_ms() };
                wal.append_with(&rec, e.shared_value());
            });
            if wal.pending_bytes() >= config.wal_buffer_bytes.max(1 << 20) {
                wal.flush_now().await.map_err(|e| format!("write rewritten log: {e}"))?;
            }
            if cursor == 0 {
                break;
            }
        }
        wal.flush_now().await.map_err(|e| format!("write rewritten log: {e}"))?;
        stats.next_lsn = wal.durable_lsn();
    }
    Ok((Some(wal), ctl, stats))
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
        if stream.peer_addr().is_ok_and(|p| g.auth.refuses(p.ip())) {
            // Redis's protected mode: the refusal, then close.
            g.connected_clients.fetch_sub(1, Ordering::Relaxed);
            glommio::spawn_local(async move {
                use futures_lite::AsyncWriteExt;
                let mut stream = stream;
                let msg = format!("-{}\r\n", crate::auth::DENIED);
                let _ = stream.write_all(msg.as_bytes()).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        glommio::spawn_local(conn::serve(shard.clone(), stream)).detach();
    }
}

/// Publishes the shard's figures for the metrics endpoint, health and the watchdog (see
/// [`crate::metrics`]); the publication time is also the shard's heartbeat.
fn publish(shard: &Shard) {
    if let crate::shard::AdminResult::Report(r) = crate::shard::ops::run_admin(shard, crate::shard::AdminOp::Report) {
        shard.global.published.publish(shard.id, *r);
    }
}

/// Housekeeping: notices shutdown, expires keys actively, advances rehashing.
async fn cron(shard: Rc<Shard>) {
    let mut last_tick = Instant::now();
    let mut expired = Vec::new();
    // The last expiry cycle ran out of budget while most of what it met was expired: run the
    // next one at the next 10 ms wake-up instead of a full interval later (Redis's fast cycle),
    // so a backlog of expired keys is reclaimed at up to a fifth of a core, not a fiftieth.
    let mut expire_backlog = false;
    loop {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        if shard.global.shutting_down() {
            shard.shutdown.set();
            return;
        }
        if last_tick.elapsed() < Duration::from_millis(CRON_INTERVAL_MS) && !expire_backlog {
            continue;
        }
        last_tick = Instant::now();
        publish(&shard);
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
            // Keys removed by the active cycle are logged as deletions, so replay does not
            // depend on clocks to drop them.
            if let Some(w) = &shard.wal {
                for k in &expired {
                    w.append(&Record::Del { key: k });
                }
            }
            // Buckets without TTL keys (a sparse tail after most keys expired) say nothing:
            // keep walking within the budget rather than wait for the next tick.
            let mostly_live = seen > 0 && removed * 10 < seen;
            let out_of_budget = start.elapsed() > Duration::from_micros(EXPIRE_BUDGET_US);
            expire_backlog = out_of_budget && !mostly_live && store.keys_with_ttl() > 0;
            if mostly_live || store.keys_with_ttl() == 0 || out_of_budget {
                break;
            }
        }
        // Eviction: a lowered limit (CONFIG SET) is reached without waiting for writes.
        shard.global.apply_eviction(&mut store);
        let start = Instant::now();
        while store.over_limit(0) && start.elapsed() < Duration::from_micros(EVICT_BUDGET_US) {
            expired.clear();
            let fits = store.evict(0, crate::store::now_ms(), None, 64, &mut expired);
            if let Some(w) = &shard.wal {
                for k in &expired {
                    w.append(&Record::Del { key: k });
                }
            }
            if fits || expired.is_empty() {
                break;
            }
        }
        let start = Instant::now();
        while store.rehash(100) && start.elapsed() < Duration::from_micros(REHASH_BUDGET_US) {}
        drop(store);
        // Snapshot triggers: the interval and the log bytes written since the last one.
        if let Some(ctl) = &shard.snapshots {
            let c = &shard.global.config;
            let written = shard.wal.as_ref().map_or(0, |w| w.stats().bytes_written);
            if ctl.due(c.snapshot_interval_s, c.snapshot_wal_bytes as u64, written) {
                let me = shard.clone();
                glommio::spawn_local(async move {
                    let _ = me.snapshot().await;
                })
                .detach();
            }
        }
    }
}
