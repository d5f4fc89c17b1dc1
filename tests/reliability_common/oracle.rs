//! The oracle: what the server acknowledged, and what a recovered server may hold.
//!
//! Each key has exactly one writer (one connection, one command at a time), so the writer
//! knows the state of its keys exactly while the server lives. Every value a writer stores
//! encodes the key, the writer, the writer's sequence number and a checksum
//! (`<key>|w<writer>|s<seq>|<fnv64 hex>`), so a value that was never written is recognised on
//! sight. A writer records every command it issued: the slots (keys) it changes with their
//! new states, and the time its reply arrived (none: in flight when the server died).
//!
//! After a crash and recovery, [`WriterModel::verify`] compares what the server holds with the
//! history:
//! - `sync`: every slot holds its last acknowledged state, or the state the one command in
//!   flight would give it. (A multi-key command in flight may have happened on one shard and
//!   not another: each slot is judged alone.) An INCR counter thus lies in
//!   `[acked, acked + in flight]`. A value a reader was shown must survive.
//! - `async`: on each shard, the writer's slots hold the state after some prefix of its
//!   commands (nothing survives while an earlier command on that shard is lost). Acknowledged
//!   commands past the prefix are lost; they must have been acknowledged within the flush
//!   window before the kill. The oracle measures that window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one key holds: its value (None: absent) and its absolute expiry in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KState {
    pub val: Option<String>,
    pub expire_at_s: Option<i64>,
}

pub const ABSENT: KState = KState { val: None, expire_at_s: None };

/// FNV-1a, 64 bits: the checksum inside every value.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The value writer `w` stores under `key` with sequence `seq`.
pub fn encode_value(key: &str, w: usize, seq: u64) -> String {
    let body = format!("{key}|w{w}|s{seq}");
    let sum = fnv64(body.as_bytes());
    format!("{body}|{sum:016x}")
}

/// `(writer, seq)` of a value written by [`encode_value`] for `key`; `None` for anything else
/// (a value that was never written).
pub fn decode_value(key: &str, v: &str) -> Option<(usize, u64)> {
    let (body, sum) = v.rsplit_once('|')?;
    if format!("{:016x}", fnv64(body.as_bytes())) != sum {
        return None;
    }
    let mut it = body.rsplitn(3, '|');
    let seq = it.next()?.strip_prefix('s')?.parse().ok()?;
    let w = it.next()?.strip_prefix('w')?.parse().ok()?;
    (it.next()? == key).then_some((w, seq))
}

/// One command a writer issued.
#[derive(Clone, Debug)]
pub struct Op {
    pub seq: u64,
    pub text: String,
    /// The slots it changes, with their states after it.
    pub changes: Vec<(usize, KState)>,
    /// When its reply arrived; `None`: in flight at the crash.
    pub acked_at: Option<Instant>,
}

/// The keys one writer owns, their acknowledged states, and its history since the last check.
#[derive(Clone, Debug)]
pub struct WriterModel {
    pub id: usize,
    /// Key names; the last one is the INCR counter.
    pub keys: Vec<String>,
    /// Shard of each key.
    pub shard: Vec<usize>,
    /// The state of each slot once every acknowledged command is applied.
    pub acked: Vec<KState>,
    /// State of each slot when the history starts (the last verified state).
    pub base: Vec<KState>,
    pub history: Vec<Op>,
    pub seq: u64,
}

/// Totals the oracle keeps over a run.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub cycles: u64,
    pub acked_ops: u64,
    /// Acknowledged commands missing after recovery (must be 0 in `sync`).
    pub lost_acked: u64,
    /// Slots holding a state no history prefix explains: values never written, or holes.
    pub phantom: u64,
    /// Commands in flight at a kill whose effect survived.
    pub inflight_survived: u64,
    /// Longest time between a lost acknowledged command's reply and the kill, in ms.
    pub max_loss_window_ms: u64,
    /// Values readers were shown, and those that were not yet acknowledged to their writer.
    pub seen: u64,
    pub seen_inflight: u64,
    pub torn_tails: u64,
    pub snapshots_loaded: u64,
    /// Snapshots completed while the loop ran (INFO just before each kill).
    pub snapshots_taken: u64,
    /// Kills after which a snapshot's temporary file was on disk (one was being written).
    pub kills_during_snapshot: u64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cycles={} acked_writes={} lost={} phantom={} inflight_survived={} max_async_loss_window_ms={} \
             reader_values={} reader_values_before_ack={} torn_tails={} snapshots_taken={} snapshots_loaded={} kills_during_snapshot={}",
            self.cycles,
            self.acked_ops,
            self.lost_acked,
            self.phantom,
            self.inflight_survived,
            self.max_loss_window_ms,
            self.seen,
            self.seen_inflight,
            self.torn_tails,
            self.snapshots_taken,
            self.snapshots_loaded,
            self.kills_during_snapshot
        )
    }
}

/// Keys per writer besides the counter.
pub const KEYS: usize = 4;

impl WriterModel {
    pub fn new(id: usize, shards: usize) -> WriterModel {
        let mut keys: Vec<String> = (0..KEYS).map(|k| format!("rl:w{id}:k{k}")).collect();
        keys.push(format!("rl:w{id}:ctr"));
        let shard = keys.iter().map(|k| ringcache::shard::shard_of(k.as_bytes(), shards)).collect();
        WriterModel {
            id,
            keys,
            shard,
            acked: vec![ABSENT; KEYS + 1],
            base: vec![ABSENT; KEYS + 1],
            history: Vec::new(),
            seq: 0,
        }
    }

    pub fn counter(&self) -> usize {
        KEYS
    }

    /// Records the command in flight (before it is sent).
    pub fn issue(&mut self, seq: u64, text: String, changes: Vec<(usize, KState)>) {
        self.history.push(Op { seq, text, changes, acked_at: None });
    }

    /// Its reply arrived: applies it to the acknowledged state.
    pub fn ack(&mut self) {
        let op = self.history.last_mut().expect("ack without a command");
        op.acked_at = Some(Instant::now());
        for (slot, st) in &op.changes {
            self.acked[*slot] = st.clone();
        }
    }

    /// Compares `now` (what each slot holds after recovery) with the history, adds to `fig`,
    /// and returns the errors. `seen` are the values readers were shown before the crash
    /// (`sync` only: each must survive). Then starts a new history from `now`.
    pub fn verify(
        &mut self,
        now: &[KState],
        sync: bool,
        killed_at: Instant,
        seen: &[(usize, String)],
        fig: &mut Figures,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        // Values that no command of this writer wrote.
        for (slot, st) in now.iter().enumerate() {
            if let Some(v) = &st.val {
                let ok = if slot == self.counter() {
                    v.parse::<i64>().is_ok()
                } else {
                    decode_value(&self.keys[slot], v).is_some_and(|(w, _)| w == self.id)
                };
                if !ok {
                    fig.phantom += 1;
                    errors.push(format!("{}: holds {v:?}, which no writer wrote", self.keys[slot]));
                }
            }
        }
        let acked_n = self.history.iter().take_while(|o| o.acked_at.is_some()).count();
        assert!(self.history.len() <= acked_n + 1, "at most one command in flight per writer");
        let inflight = self.history.get(acked_n);
        fig.acked_ops += acked_n as u64;
        if sync {
            for (slot, st) in now.iter().enumerate() {
                let acked = &self.acked[slot];
                let pending = inflight.and_then(|o| o.changes.iter().find(|(s, _)| *s == slot)).map(|(_, s)| s);
                if st == acked {
                    continue;
                }
                if pending == Some(st) {
                    fig.inflight_survived += 1;
                    continue;
                }
                fig.lost_acked += 1;
                errors.push(format!(
                    "{}: holds {st:?}; last acknowledged {acked:?}; in flight {pending:?} ({:?})",
                    self.keys[slot],
                    inflight.map(|o| &o.text)
                ));
            }
            // A value a reader was shown before its writer's ack must survive.
            for (slot, v) in seen {
                fig.seen += 1;
                if self.acked[*slot].val.as_ref() == Some(v) {
                    continue;
                }
                let Some(op) = inflight else { continue };
                if op.changes.iter().any(|(s, st)| s == slot && st.val.as_ref() == Some(v)) {
                    fig.seen_inflight += 1;
                    if now[*slot].val.as_ref() != Some(v) {
                        fig.lost_acked += 1;
                        errors.push(format!(
                            "{}: a reader was shown {v:?} before the crash, but recovery holds {:?}",
                            self.keys[*slot], now[*slot]
                        ));
                    }
                }
            }
        } else {
            // Per shard: the longest prefix of the history whose state matches.
            let mut lost_seqs = std::collections::HashSet::new();
            let mut shards: Vec<usize> = self.shard.clone();
            shards.sort_unstable();
            shards.dedup();
            for s in shards {
                let slots: Vec<usize> = (0..self.keys.len()).filter(|&i| self.shard[i] == s).collect();
                let mut state = self.base.clone();
                let matches = |state: &[KState]| slots.iter().all(|&i| state[i] == now[i]);
                let mut best = matches(&state).then_some(0);
                for (n, op) in self.history.iter().enumerate() {
                    for (slot, st) in &op.changes {
                        state[*slot] = st.clone();
                    }
                    if matches(&state) {
                        best = Some(n + 1);
                    }
                }
                let Some(cut) = best else {
                    fig.phantom += 1;
                    errors.push(format!(
                        "writer {} shard {s}: {:?} is not the state after any prefix of its commands",
                        self.id,
                        slots.iter().map(|&i| (&self.keys[i], &now[i])).collect::<Vec<_>>()
                    ));
                    continue;
                };
                let touches = |o: &Op| o.changes.iter().any(|(slot, _)| self.shard[*slot] == s);
                if cut > acked_n && inflight.is_some_and(touches) {
                    fig.inflight_survived += 1;
                }
                let lost: Vec<&Op> = self.history[cut.min(acked_n)..acked_n].iter().filter(|o| touches(o)).collect();
                lost_seqs.extend(lost.iter().map(|o| o.seq));
                if let Some(first) = lost.first() {
                    let window = killed_at.saturating_duration_since(first.acked_at.expect("acked"));
                    fig.max_loss_window_ms = fig.max_loss_window_ms.max(window.as_millis() as u64);
                }
            }
            // A command whose parts on two shards were both lost counts once.
            fig.lost_acked += lost_seqs.len() as u64;
        }
        self.acked = now.to_vec();
        self.base = now.to_vec();
        self.history.clear();
        errors
    }
}

/// Reads every slot of `m` (GET and EXPIRETIME in one pipeline).
pub fn observe(c: &mut redis::Connection, m: &WriterModel) -> Vec<KState> {
    let mut p = redis::pipe();
    for k in &m.keys {
        p.cmd("GET").arg(k).cmd("EXPIRETIME").arg(k);
    }
    let r: Vec<redis::Value> = p.query(c).expect("GET+EXPIRETIME");
    r.chunks(2)
        .zip(&m.keys)
        .map(|(pair, key)| {
            let val: Option<String> = redis::from_redis_value(&pair[0]).expect("GET reply");
            let t: i64 = redis::from_redis_value(&pair[1]).expect("EXPIRETIME reply");
            match (&val, t) {
                (None, -2) => ABSENT,
                (Some(_), -1) => KState { val, expire_at_s: None },
                (Some(_), t) if t > 0 => KState { val, expire_at_s: Some(t) },
                _ => panic!("{key}: GET {val:?} but EXPIRETIME {t}"),
            }
        })
        .collect()
}

/// Groups reader observations `(key, value)` by writer and slot.
pub fn seen_by_writer(models: &[WriterModel], seen: &[(String, String)]) -> HashMap<usize, Vec<(usize, String)>> {
    let mut slot_of: HashMap<&str, (usize, usize)> = HashMap::new();
    for m in models {
        for (i, k) in m.keys.iter().enumerate() {
            slot_of.insert(k.as_str(), (m.id, i));
        }
    }
    let mut out: HashMap<usize, Vec<(usize, String)>> = HashMap::new();
    for (k, v) in seen {
        if let Some(&(w, slot)) = slot_of.get(k.as_str()) {
            out.entry(w).or_default().push((slot, v.clone()));
        }
    }
    out
}

/// Bound on the async loss window the oracle accepts: the flush interval, plus the time a
/// flush itself can take on a loaded test machine (a flush stalled for seconds, or no timer
/// flush at all, fails it).
pub fn async_window_bound(flush_interval_ms: u64) -> Duration {
    Duration::from_millis(flush_interval_ms + 2000)
}
