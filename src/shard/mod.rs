//! A shard: one executor's slice of the keyspace, and how shards talk to each other.
//!
//! # Ownership
//! Each glommio executor (one per core) owns exactly one [`Shard`]: its [`Store`], its gate, its
//! clients. Nothing here is shared between threads except [`Global`] (settings and counters
//! behind atomics). A key belongs to shard `xxh3(key) % N` ([`shard_of`]), with a fixed seed so
//! that a key keeps its shard across restarts.
//!
//! # Talking to other shards
//! Shards form a full mesh of bounded glommio channels ([`mesh`]). A connection that needs another shard
//! sends a [`Request`] and awaits the [`Response`], matched by a per-shard request id. Requests
//! are handled by one receive task per peer; a request that can run at once (the common case)
//! runs inline in that task, anything that must wait (for the gate) is spawned so the receive
//! loop never blocks, and responses go back with `try_send` falling back to a spawned send. So
//! two shards waiting on each other's full channels cannot deadlock.
//!
//! # The gate: atomic multi-shard commands
//! MSET, MGET, DEL, EXISTS, MSETNX, RENAME... whose keys span shards take each involved shard's
//! gate in ascending shard order ([`Request::Lock`]), run their per-shard parts, then release
//! the gates. While a shard's gate is held, every other command on that shard waits. Ascending
//! order makes deadlock impossible (the holder of the highest gate never waits for a lower one);
//! holding every gate while the parts run makes the command atomic: no client can observe some
//! keys of an MSET updated and others not, even across separate commands. Single-shard commands
//! never take a gate; they only check that it is free (one `Cell` read).

pub mod mesh;
pub mod metrics;
pub mod ops;

use crate::config::Config;
use crate::resp::Protocol;
use crate::store::Store;
use bytes::Bytes;
use glommio::channels::shared_channel::ConnectedReceiver;
use mesh::Senders;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

pub use ops::{AdminOp, AdminResult, PartOp, PartResult};

/// Why SAVE/BGSAVE cannot run: no data directory is in use.
pub const SNAPSHOTS_DISABLED: &str =
    "snapshots are disabled: start with --durability async|sync, or --snapshot-interval-s N with --durability off";

/// Capacity of each shard-to-shard channel (messages).
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// The shard that owns `key` among `n` shards.
pub fn shard_of(key: &[u8], n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64(key) % n as u64) as usize
}

/// Process-wide state: settings that CONFIG SET may change, and counters. Atomics only.
pub struct Global {
    pub config: Config,
    pub shards: usize,
    pub maxclients: AtomicUsize,
    pub proto_max_bulk_len: AtomicUsize,
    pub client_query_buffer_limit: AtomicUsize,
    pub connected_clients: AtomicUsize,
    pub next_client_id: AtomicU64,
    pub total_connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub shutdown: AtomicBool,
    pub started: std::time::Instant,
    pub run_id: String,
    /// The address actually bound (port resolved when `--bind` used port 0).
    pub listen_addr: std::net::SocketAddr,
    /// What SHUTDOWN asked about the shutdown snapshot: [`SHUTDOWN_DEFAULT`], [`SHUTDOWN_NOSAVE`]
    /// or [`SHUTDOWN_SAVE`].
    pub shutdown_save: std::sync::atomic::AtomicU8,
    /// A BGSAVE is running (Redis allows one at a time).
    pub bgsave_in_progress: AtomicBool,
    /// Whether the last SAVE/BGSAVE succeeded on every shard (INFO `rdb_last_bgsave_status`).
    pub last_save_ok: AtomicBool,
    /// Per shard: Unix seconds when its last successful snapshot ended (the start time until
    /// then). LASTSAVE is the minimum: the last time every shard had a snapshot.
    pub shard_lastsave_s: Vec<AtomicU64>,
    /// `client-output-buffer-limit` (CONFIG SET changes it).
    pub client_output_buffer_limit: crate::config::OutputLimitCell,
    /// `maxmemory` in bytes (0: none); each shard keeps to its share (see [`Global::shard_limit_bytes`]).
    pub maxmemory_bytes: AtomicU64,
    /// `maxmemory-policy`, as [`crate::store::Policy::code`].
    pub maxmemory_policy: std::sync::atomic::AtomicU8,
    pub maxmemory_samples: AtomicUsize,
    /// Each shard's figures as of its last housekeeping tick, for the metrics endpoint, health
    /// and the systemd watchdog (see [`crate::metrics`]).
    pub published: crate::metrics::Published,
    /// The default user's password (`--requirepass`, CONFIG SET requirepass); see [`crate::auth`].
    pub auth: crate::auth::Auth,
}

/// SHUTDOWN without SAVE/NOSAVE: `--snapshot-on-shutdown` decides.
pub const SHUTDOWN_DEFAULT: u8 = 0;
/// SHUTDOWN NOSAVE: no snapshot.
pub const SHUTDOWN_NOSAVE: u8 = 1;
/// SHUTDOWN SAVE: a snapshot even if `--snapshot-on-shutdown no`.
pub const SHUTDOWN_SAVE: u8 = 2;

impl Global {
    pub fn new(config: Config, shards: usize, listen_addr: std::net::SocketAddr) -> Self {
        let run_id: String = (0..40).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
        Global {
            maxclients: AtomicUsize::new(config.maxclients),
            proto_max_bulk_len: AtomicUsize::new(config.proto_max_bulk_len),
            client_query_buffer_limit: AtomicUsize::new(config.client_query_buffer_limit),
            connected_clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            total_connections_received: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            started: std::time::Instant::now(),
            run_id,
            listen_addr,
            shutdown_save: std::sync::atomic::AtomicU8::new(SHUTDOWN_DEFAULT),
            bgsave_in_progress: AtomicBool::new(false),
            last_save_ok: AtomicBool::new(true),
            shard_lastsave_s: (0..shards).map(|_| AtomicU64::new(crate::store::now_ms() / 1000)).collect(),
            client_output_buffer_limit: crate::config::OutputLimitCell::new(config.client_output_buffer_limit),
            maxmemory_bytes: AtomicU64::new(config.maxmemory as u64),
            maxmemory_policy: std::sync::atomic::AtomicU8::new(config.maxmemory_policy.code()),
            maxmemory_samples: AtomicUsize::new(usize::from(config.maxmemory_samples)),
            published: crate::metrics::Published::new(shards),
            auth: crate::auth::Auth::new(config.requirepass.as_ref(), config.protected_mode),
            shards,
            config,
        }
    }

    /// Each shard's share of `maxmemory` (0: no limit). Keys spread evenly by hash.
    pub fn shard_limit_bytes(&self) -> usize {
        match self.maxmemory_bytes.load(Ordering::Relaxed) {
            0 => 0,
            m => (m / self.shards as u64).max(1) as usize,
        }
    }

    /// Brings a shard's store up to date with the eviction settings (CONFIG SET may change them).
    pub fn apply_eviction(&self, store: &mut Store) {
        store.set_eviction(
            self.shard_limit_bytes(),
            crate::store::Policy::from_code(self.maxmemory_policy.load(Ordering::Relaxed)),
            self.maxmemory_samples.load(Ordering::Relaxed),
        );
    }

    /// LASTSAVE: when every shard last had a successful snapshot (Unix seconds).
    pub fn lastsave_s(&self) -> u64 {
        self.shard_lastsave_s.iter().map(|a| a.load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    pub fn request_shutdown(&self) {
        if !self.shutdown.swap(true, Ordering::SeqCst) {
            crate::notify::stopping();
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

/// A message between shards.
pub enum Msg {
    Request { id: u64, from: usize, req: Request },
    Response { id: u64, resp: Response },
}

/// Work one shard asks of another.
pub enum Request {
    /// Run single-shard commands in order; reply with their encoded replies.
    Batch { proto: Protocol, cmds: Vec<Vec<Bytes>> },
    /// Take the gate for multi-shard transaction `tx` (waits while another holds it).
    Lock { tx: u64 },
    /// Release the gate held by `tx`. No response.
    Unlock { tx: u64 },
    /// One shard's part of a multi-shard command, run under the gate `tx` holds.
    Part { tx: u64, op: PartOp },
    /// Server-wide commands (DBSIZE, SCAN, INFO, ...) that visit every shard.
    Admin(AdminOp),
    /// Respond once everything logged on the shard so far is durable (WAITAOF).
    WaitDurable,
    /// Take a snapshot now (after a running one ends) and respond when it is durable (SAVE,
    /// BGSAVE).
    Snapshot,
}

pub enum Response {
    /// Encoded replies back to back; `ends[i]` is the end offset of reply `i`; the large
    /// values they refer to (see `crate::resp::encode::LargeRefs`).
    Batch {
        out: Vec<u8>,
        ends: Vec<usize>,
        large: crate::resp::LargeRefs,
    },
    Locked,
    Part(PartResult),
    Admin(AdminResult),
    /// The shard could not be reached (shutting down).
    Unavailable,
    /// The shard's log failed before the request's effects became durable: nothing may be
    /// acknowledged (sync mode).
    Failed(String),
    /// A snapshot's outcome: its LSN, or the error.
    Snapshot(Result<u64, String>),
}

/// Per-shard counters for INFO stats.
#[derive(Default)]
pub struct ShardStats {
    pub commands_processed: Cell<u64>,
    pub net_input_bytes: Cell<u64>,
    pub net_output_bytes: Cell<u64>,
    /// Per-command calls, failures and latency (INFO commandstats, latencystats).
    pub commands: crate::cmd::stats::CommandStats,
}

/// What CLIENT LIST shows about one connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub fd: i32,
    pub name: Option<Vec<u8>>,
    pub lib_name: Option<Vec<u8>>,
    pub lib_ver: Option<Vec<u8>>,
    pub created: std::time::Instant,
    pub last_active: std::time::Instant,
    pub last_cmd: &'static str,
    pub proto: Protocol,
    pub qbuf: usize,
    /// Where the connection's task is (`read`, `exec`, `write`): shown as `events=` so a
    /// stuck connection says where it is stuck.
    pub phase: &'static str,
}

impl ClientInfo {
    /// One line in Redis 7's CLIENT LIST format (without the trailing newline).
    pub fn line(&self) -> String {
        let name = self.name.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        let lib_name = self.lib_name.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        let lib_ver = self.lib_ver.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 \
             qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=16384 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events={} \
             cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            name,
            self.created.elapsed().as_secs(),
            self.last_active.elapsed().as_secs(),
            self.qbuf,
            self.phase,
            self.last_cmd,
            self.proto.version(),
            lib_name,
            lib_ver,
        )
    }
}

/// A one-shot event on one executor: set once, wakes every waiter.
///
/// Each [`LocalEvent::wait`] future owns at most one waker slot: polling it again refreshes the
/// slot in place, and dropping it (for example when it loses a `future::or` race) frees the
/// slot. So the number of stored wakers is bounded by the number of live wait futures, however
/// often they are polled or re-created.
///
/// This matters beyond memory: every stored clone of a glommio waker holds a reference on its
/// task, and glommio 0.9 counts those references in an `i16`. A connection task that raced
/// each read against `wait()` while this event kept every waker ever registered reached 32767
/// references after ~32k pending reads; the next wake-up then panicked inside glommio's
/// `schedule` (caught and logged by the reactor as "Panic while calling waker!") after the
/// task had been marked scheduled, so the task was never polled again: a connection stuck in
/// phase `r` forever, even after its client closed the socket.
#[derive(Default)]
pub struct LocalEvent {
    set: Cell<bool>,
    waiters: RefCell<WakerSlots>,
}

/// Waker slots of a [`LocalEvent`]; freed slots are reused.
#[derive(Default)]
struct WakerSlots {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl LocalEvent {
    pub fn set(&self) {
        self.set.set(true);
        // Take the wakers out before waking: a woken waker may run code that touches `waiters`.
        let slots = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in slots.slots.into_iter().flatten() {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the event is set. Dropping the future unregisters its waker.
    pub fn wait(&self) -> EventWait<'_> {
        EventWait { event: self, slot: None }
    }

    /// Wakers currently registered (live, pending `wait` futures).
    pub fn waiter_count(&self) -> usize {
        let w = self.waiters.borrow();
        w.slots.len() - w.free.len()
    }
}

/// The future returned by [`LocalEvent::wait`].
pub struct EventWait<'a> {
    event: &'a LocalEvent,
    slot: Option<usize>,
}

impl Future for EventWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let event = self.event;
        if event.set.get() {
            // `set` already dropped every slot.
            self.slot = None;
            return Poll::Ready(());
        }
        // Wakers are dropped only after the borrow ends: dropping one may run executor code.
        let mut w = event.waiters.borrow_mut();
        match self.slot {
            Some(i) => {
                let cur = &mut w.slots[i];
                if !cur.as_ref().is_some_and(|c| c.will_wake(cx.waker())) {
                    let old = cur.replace(cx.waker().clone());
                    drop(w);
                    drop(old);
                }
            }
            None => {
                let waker = Some(cx.waker().clone());
                let i = match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = waker;
                        i
                    }
                    None => {
                        w.slots.push(waker);
                        w.slots.len() - 1
                    }
                };
                drop(w);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        // Once set, the slots are gone (and never handed out again): nothing to free.
        if let (Some(i), false) = (self.slot, self.event.set.get()) {
            let mut w = self.event.waiters.borrow_mut();
            let old = w.slots[i].take();
            w.free.push(i);
            drop(w);
            drop(old);
        }
    }
}

/// The multi-shard gate (see the module docs).
#[derive(Default)]
pub struct Gate {
    holder: Cell<Option<u64>>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl Gate {
    pub fn is_held(&self) -> bool {
        self.holder.get().is_some()
    }

    pub fn held_by(&self, tx: u64) -> bool {
        self.holder.get() == Some(tx)
    }

    /// Waits until no transaction holds the gate.
    pub fn wait_free(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.holder.get().is_none() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Takes the gate for `tx` if it is free.
    pub fn try_acquire(&self, tx: u64) -> bool {
        if self.holder.get().is_none() {
            self.holder.set(Some(tx));
            true
        } else {
            false
        }
    }

    /// Takes the gate for `tx`, waiting while another transaction holds it.
    pub fn acquire(&self, tx: u64) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.holder.get().is_none() {
                self.holder.set(Some(tx));
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    pub fn release(&self, tx: u64) {
        if self.holder.get() == Some(tx) {
            self.holder.set(None);
            // Wake everyone: waiters re-check, and the first to run takes the gate.
            for w in self.waiters.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

struct Slot {
    resp: RefCell<Option<Response>>,
    waker: RefCell<Option<Waker>>,
}

/// One executor's shard.
pub struct Shard {
    pub id: usize,
    pub global: Arc<Global>,
    pub store: RefCell<Store>,
    pub gate: Gate,
    pub stats: ShardStats,
    /// Connections accepted by this shard, for CLIENT LIST.
    pub clients: RefCell<HashMap<u64, Rc<RefCell<ClientInfo>>>>,
    /// Set when the server shuts down: accept loops and idle connections stop.
    pub shutdown: LocalEvent,
    /// The write-ahead log (None with `--durability off`).
    pub wal: Option<Rc<crate::wal::ShardLog>>,
    /// What recovery found at startup.
    pub recovery: RefCell<crate::wal::replay::RecoveryStats>,
    /// Snapshot state (None when persistence is off).
    pub snapshots: Option<Rc<crate::snapshot::task::SnapshotCtl>>,
    senders: Option<Senders>,
    pending: RefCell<HashMap<u64, Rc<Slot>>>,
    next_id: Cell<u64>,
}

impl Shard {
    pub fn new(
        id: usize,
        global: Arc<Global>,
        senders: Option<Senders>,
        store: Store,
        wal: Option<Rc<crate::wal::ShardLog>>,
        snapshots: Option<Rc<crate::snapshot::task::SnapshotCtl>>,
        recovery: crate::wal::replay::RecoveryStats,
    ) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            global,
            wal,
            snapshots,
            recovery: RefCell::new(recovery),
            store: RefCell::new(store),
            gate: Gate::default(),
            stats: ShardStats::default(),
            clients: RefCell::default(),
            shutdown: LocalEvent::default(),
            senders,
            pending: RefCell::default(),
            next_id: Cell::new(1),
        })
    }

    pub fn shards(&self) -> usize {
        self.global.shards
    }

    /// The execution context for key commands on this shard.
    pub fn exec<'a>(&'a self, store: &'a mut Store) -> crate::cmd::Exec<'a> {
        self.global.apply_eviction(store);
        crate::cmd::Exec {
            store,
            wal: self.wal.as_deref(),
            now_ms: crate::store::now_ms(),
            max_value_bytes: self.global.proto_max_bulk_len.load(Ordering::Relaxed),
            observed_lsn: 0,
        }
    }

    /// Takes a snapshot of this shard (waiting for a running one first) and records the
    /// outcome for LASTSAVE. `Err` when persistence is off or the snapshot failed.
    pub async fn snapshot(self: &Rc<Self>) -> Result<u64, String> {
        let Some(ctl) = &self.snapshots else {
            return Err(SNAPSHOTS_DISABLED.to_string());
        };
        let r =
            crate::snapshot::task::take_snapshot(ctl, &self.store, self.wal.as_ref(), &self.stats.commands_processed)
                .await;
        match r {
            Ok(d) => {
                if let Some(a) = self.global.shard_lastsave_s.get(self.id) {
                    a.store(crate::store::now_ms() / 1000, Ordering::Relaxed);
                }
                Ok(d.lsn)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The log, if in `sync` mode.
    pub fn sync_wal(&self) -> Option<&Rc<crate::wal::ShardLog>> {
        self.wal.as_ref().filter(|w| w.durability() == crate::wal::Durability::Sync)
    }

    /// Responds once the log is durable up to `lsn` (the LSN the response depends on, see
    /// `Exec::observed_lsn`; 0: nothing), at once otherwise. Waits in a task, so the receive
    /// loop goes on. A log that fails first turns the response into `Failed`.
    fn respond_when_durable(self: &Rc<Self>, to: usize, id: u64, resp: Response, lsn: u64) {
        if let Some(w) = self.wal.as_ref().filter(|w| lsn > 0 && lsn >= w.durable_lsn()) {
            let (me, w) = (self.clone(), w.clone());
            glommio::spawn_local(async move {
                let resp = match w.wait_durable(lsn).await {
                    Ok(()) => resp,
                    Err(e) => Response::Failed(e),
                };
                me.respond(to, id, resp);
            })
            .detach();
            return;
        }
        self.respond(to, id, resp);
    }

    /// The LSN a response must wait for in `sync` mode: `observed` (or, for operations that
    /// read every key, everything logged so far).
    fn sync_lsn(&self, observed: u64) -> u64 {
        match self.sync_wal() {
            Some(w) if observed == u64::MAX => w.last_lsn(),
            Some(_) => observed,
            None => 0,
        }
    }

    /// A transaction id unique across shards.
    pub fn new_tx(&self) -> u64 {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        ((self.id as u64) << 48) | (n & ((1 << 48) - 1))
    }

    /// Sends `req` to shard `to` and returns a future for the response.
    pub async fn call(self: &Rc<Self>, to: usize, req: Request) -> Response {
        match self.send(to, req).await {
            Some(call) => call.await,
            None => Response::Unavailable,
        }
    }

    /// Sends `req` without waiting for the response; await the returned [`Call`] later. Lets a
    /// connection have requests to several shards in flight at once.
    pub async fn send(self: &Rc<Self>, to: usize, req: Request) -> Option<Call> {
        let senders = self.senders.as_ref()?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let slot = Rc::new(Slot { resp: RefCell::new(None), waker: RefCell::new(None) });
        self.pending.borrow_mut().insert(id, slot.clone());
        if senders.send_to(to, Msg::Request { id, from: self.id, req }).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return None;
        }
        Some(Call { shard: self.clone(), id, slot })
    }

    /// Sends a message that has no response.
    pub fn notify(self: &Rc<Self>, to: usize, req: Request) {
        let Some(senders) = self.senders.as_ref() else {
            return;
        };
        let msg = Msg::Request { id: 0, from: self.id, req };
        if let Err(msg) = senders.try_send_to(to, msg).map_err(full_channel_msg) {
            let Some(msg) = msg else { return };
            let me = self.clone();
            glommio::spawn_local(async move {
                if let Some(s) = me.senders.as_ref() {
                    let _ = s.send_to(to, msg).await;
                }
            })
            .detach();
        }
    }

    fn respond(self: &Rc<Self>, to: usize, id: u64, resp: Response) {
        let Some(senders) = self.senders.as_ref() else {
            return;
        };
        if let Err(msg) = senders.try_send_to(to, Msg::Response { id, resp }).map_err(full_channel_msg) {
            let Some(msg) = msg else { return };
            let me = self.clone();
            glommio::spawn_local(async move {
                if let Some(s) = me.senders.as_ref() {
                    let _ = s.send_to(to, msg).await;
                }
            })
            .detach();
        }
    }

    /// Starts one receive task per peer. Called once when the executor starts.
    pub fn start_receivers(self: &Rc<Self>, receivers: Vec<(usize, ConnectedReceiver<Msg>)>) {
        for (_peer, rx) in receivers {
            let me = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    me.handle(msg);
                }
            })
            .detach();
        }
    }

    fn handle(self: &Rc<Self>, msg: Msg) {
        match msg {
            Msg::Response { id, resp } => {
                if let Some(slot) = self.pending.borrow_mut().remove(&id) {
                    *slot.resp.borrow_mut() = Some(resp);
                    if let Some(w) = slot.waker.borrow_mut().take() {
                        w.wake();
                    }
                }
            }
            Msg::Request { id, from, req } => match req {
                Request::Unlock { tx } => self.gate.release(tx),
                Request::Lock { tx } => {
                    if self.gate.try_acquire(tx) {
                        self.respond(from, id, Response::Locked);
                    } else {
                        let me = self.clone();
                        glommio::spawn_local(async move {
                            me.gate.acquire(tx).await;
                            me.respond(from, id, Response::Locked);
                        })
                        .detach();
                    }
                }
                Request::Part { tx, op } => {
                    let (r, observed) = ops::run_part(self, tx, op);
                    self.respond_when_durable(from, id, Response::Part(r), self.sync_lsn(observed));
                }
                Request::Admin(op) => {
                    let reads_keys = op.reads_keys();
                    let r = ops::run_admin(self, op);
                    // Taken after the operation, so FLUSHALL's own record is included.
                    let lsn = if reads_keys { self.sync_lsn(u64::MAX) } else { 0 };
                    self.respond_when_durable(from, id, Response::Admin(r), lsn);
                }
                Request::Snapshot => {
                    let me = self.clone();
                    glommio::spawn_local(async move {
                        let r = me.snapshot().await;
                        me.respond(from, id, Response::Snapshot(r));
                    })
                    .detach();
                }
                Request::WaitDurable => {
                    let lsn = self.wal.as_ref().map_or(0, |w| w.last_lsn());
                    self.respond_when_durable(from, id, Response::Locked, lsn);
                }
                Request::Batch { proto, mut cmds } => {
                    if !self.gate.is_held() {
                        let (resp, observed) = ops::run_batch(self, proto, &mut cmds);
                        self.respond_when_durable(from, id, resp, self.sync_lsn(observed));
                    } else {
                        let me = self.clone();
                        glommio::spawn_local(async move {
                            me.gate.wait_free().await;
                            let (resp, observed) = ops::run_batch(&me, proto, &mut cmds);
                            me.respond_when_durable(from, id, resp, me.sync_lsn(observed));
                        })
                        .detach();
                    }
                }
            },
        }
    }
}

/// The message back from a failed `try_send`, if it failed because the channel was full (the
/// caller then sends it from a task). A closed channel means the peer is shutting down: the
/// message is dropped and the waiting side sees `Unavailable` when its executor stops.
fn full_channel_msg(e: glommio::GlommioError<Msg>) -> Option<Msg> {
    match e {
        glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m)) => Some(m),
        _ => None,
    }
}

/// A request in flight; resolves to its [`Response`].
pub struct Call {
    shard: Rc<Shard>,
    id: u64,
    slot: Rc<Slot>,
}

impl Future for Call {
    type Output = Response;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        if let Some(r) = self.slot.resp.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.shard.pending.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn event_wait_keeps_one_waker_per_future_and_frees_it_on_drop() {
        let ev = LocalEvent::default();
        {
            let mut a = std::pin::pin!(ev.wait());
            for _ in 0..100_000 {
                assert!(poll_once(a.as_mut()).is_pending());
            }
            assert_eq!(ev.waiter_count(), 1);
            // Re-created every time, as a read loop racing each read against the event does.
            for _ in 0..100_000 {
                let mut b = std::pin::pin!(ev.wait());
                assert!(poll_once(b.as_mut()).is_pending());
            }
            assert_eq!(ev.waiter_count(), 1);
            ev.set();
            assert!(poll_once(a.as_mut()).is_ready());
        }
        assert_eq!(ev.waiter_count(), 0);
        let mut c = std::pin::pin!(ev.wait());
        assert!(poll_once(c.as_mut()).is_ready());
    }

    #[test]
    fn event_wait_dropped_after_set_is_harmless() {
        let ev = LocalEvent::default();
        let mut a = Box::pin(ev.wait());
        let mut b = Box::pin(ev.wait());
        assert!(poll_once(a.as_mut()).is_pending());
        assert!(poll_once(b.as_mut()).is_pending());
        assert_eq!(ev.waiter_count(), 2);
        drop(a);
        assert_eq!(ev.waiter_count(), 1);
        ev.set();
        drop(b);
        assert_eq!(ev.waiter_count(), 0);
    }
}
