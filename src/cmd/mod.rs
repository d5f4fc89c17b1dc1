//! Commands: the table, the per-family implementations, and the glue that runs a command
//! against one shard's store.
//!
//! # Where a command runs
//! The connection looks the command up in [`table`], checks its arity, and routes it by
//! [`table::Route`]: key commands run on the shard that owns their keys (on the connection's
//! own executor or on another one over the channel mesh), connection and server commands run
//! in the connection ([`server`]). The functions in [`strings`] and [`keys`] are plain
//! synchronous code over a [`Exec`]: they never await, so a command is atomic on its shard.
//!
//! # Writes
//! Every mutation goes through the `Exec::write_*` methods. That is the single place where
//! the write-ahead log will record after-images, so no command can forget to log.

pub mod keys;
pub mod server;
pub mod stats;
pub mod strings;
pub mod table;

use crate::resp::parse::parse_i64;
use crate::resp::ReplyWriter;
use crate::store::{Entry, Store};
use crate::wal::{Record, ShardLog};
use bytes::Bytes;
pub use table::{lookup, CommandSpec, Route};

/// Error replies shared by several commands (Redis 7 texts).
pub mod err {
    pub const SYNTAX: &str = "ERR syntax error";
    pub const NOT_INT: &str = "ERR value is not an integer or out of range";
    pub const NOT_FLOAT: &str = "ERR value is not a valid float";
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    pub const NO_SUCH_KEY: &str = "ERR no such key";
    pub const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
    pub const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
}

/// What a key command gets to work with: one shard's store, its log, the time, and limits.
pub struct Exec<'a> {
    pub store: &'a mut Store,
    /// The shard's write-ahead log, when durability is on: every write appends its
    /// after-image here.
    pub wal: Option<&'a ShardLog>,
    /// The command's notion of "now" (Unix ms), taken once per command.
    pub now_ms: u64,
    /// `proto-max-bulk-len`: the largest value a command may create.
    pub max_value_bytes: usize,
    /// Highest log LSN this command's reply depends on: its own writes, and writes not yet
    /// durable that it read (`sync` mode waits for it before replying; 0: nothing).
    pub observed_lsn: u64,
}

impl Exec<'_> {
    fn observe(&mut self, key: &[u8]) {
        if let Some(w) = self.wal {
            self.observed_lsn = self.observed_lsn.max(w.observed_lsn(key));
        }
    }

    pub fn get(&mut self, key: &[u8]) -> Option<&Entry> {
        self.observe(key);
        self.store.get(key, self.now_ms)
    }

    /// Reads a value for a read command, counting the hit or miss.
    pub fn lookup_read(&mut self, key: &[u8]) -> Option<&Entry> {
        self.observe(key);
        self.store.get_counted(key, self.now_ms)
    }

    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.observe(key);
        self.store.contains(key, self.now_ms)
    }

    fn log(&mut self, rec: Record<'_>) {
        self.log_with(rec, None);
    }

    /// Logs `rec`; `shared_value` is the value's buffer when it is a large one, which the log
    /// then refers to until the flush is durable instead of copying it.
    fn log_with(&mut self, rec: Record<'_>, shared_value: Option<&Bytes>) {
        if let Some(w) = self.wal {
            let lsn = w.append_with(&rec, shared_value);
            self.observed_lsn = self.observed_lsn.max(lsn);
        }
    }

    /// Evicts (by the store's policy) until an entry of `entry_bytes` for `key` fits the
    /// limit, logging each eviction as a deletion *before* the write that caused it: replay
    /// then never holds both, and the deletion is durable no later than the write. The bytes
    /// of the version it replaces count as freed. Under `noeviction`, or with nothing to
    /// evict, the write goes ahead anyway: the OOM check before the command (see
    /// [`Exec::admit`]) is what refuses writes, as in Redis. A new key also counts the bucket
    /// array its insert may allocate.
    pub fn make_room(&mut self, key: &[u8], entry_bytes: usize) {
        if self.store.eviction().0 == 0 {
            return;
        }
        let incoming = self.store.incoming_bytes(key, entry_bytes);
        if !self.store.over_limit(incoming) {
            return;
        }
        let mut evicted = Vec::new();
        self.store.evict(incoming, self.now_ms, Some(key), usize::MAX, &mut evicted);
        for k in &evicted {
            self.log(Record::Del { key: k });
        }
    }

    /// The OOM check before a command that may add memory (`denyoom`): evicts down to the
    /// limit; false when the store stays over it (`noeviction`, or a volatile policy with no
    /// key with an expiry).
    pub fn admit(&mut self) -> bool {
        if !self.store.over_limit(0) {
            return true;
        }
        let mut evicted = Vec::new();
        let fits = self.store.evict(0, self.now_ms, None, usize::MAX, &mut evicted);
        for k in &evicted {
            self.log(Record::Del { key: k });
        }
        fits
    }

    /// Stores `key = value` with `expire_at_ms`; an expiry not in the future deletes the key
    /// instead (as Redis does for `SET ... EXAT <past>`). Room is made before the entry is
    /// built, so a large value never sits beside the data it displaces.
    pub fn write_set(&mut self, key: &[u8], value: &[u8], expire_at_ms: Option<u64>) {
        if expire_at_ms.is_none_or(|t| t > self.now_ms) {
            self.make_room(key, Entry::held_bytes_for(key.len(), value.len(), expire_at_ms.is_some()));
        }
        self.write_entry(Entry::new(key, value, expire_at_ms));
    }

    /// As [`Exec::write_set`] for a value taken from the request: a large value's bytes are
    /// adopted by the entry, not copied (see `crate::store::entry`).
    pub fn write_set_bytes(&mut self, key: &[u8], value: Bytes, expire_at_ms: Option<u64>) {
        if expire_at_ms.is_none_or(|t| t > self.now_ms) {
            self.make_room(key, Entry::held_bytes_for(key.len(), value.len(), expire_at_ms.is_some()));
        }
        self.write_entry(Entry::from_bytes(key, value, expire_at_ms));
    }

    /// Stores a prebuilt entry (values built in place by APPEND/SETRANGE/INCR).
    pub fn write_entry(&mut self, entry: Entry) {
        if entry.is_expired(self.now_ms) {
            let key = entry.key().to_vec();
            self.write_del(&key);
            return;
        }
        self.make_room(entry.key(), entry.held_bytes());
        let rec = Record::Set { key: entry.key(), value: entry.value(), expire_at_ms: entry.expire_at_ms() };
        self.log_with(rec, entry.shared_value());
        self.store.put(entry, self.now_ms);
    }

    /// Deletes `key`; returns whether a live key was removed.
    pub fn write_del(&mut self, key: &[u8]) -> bool {
        self.observe(key);
        let removed = self.store.delete(key, self.now_ms);
        if removed {
            self.log(Record::Del { key });
        }
        removed
    }

    /// Removes and returns a live key's entry (RENAME, GETDEL).
    pub fn write_take(&mut self, key: &[u8]) -> Option<Entry> {
        self.observe(key);
        let e = self.store.remove(key, self.now_ms)?;
        self.log(Record::Del { key });
        Some(e)
    }

    /// Sets (`Some`) or clears (`None`) a live key's expiry. A time not in the future deletes
    /// the key. Returns false if the key does not exist.
    pub fn write_expire(&mut self, key: &[u8], expire_at_ms: Option<u64>) -> bool {
        match expire_at_ms {
            Some(t) if t <= self.now_ms => self.write_del(key),
            _ => {
                let done = self.store.set_expiry(key, expire_at_ms, self.now_ms);
                if done {
                    self.log(Record::Expire { key, expire_at_ms });
                }
                done
            }
        }
    }

    pub fn write_flush(&mut self) {
        self.store.clear();
        self.log(Record::FlushAll);
    }
}

/// Parses an integer argument with Redis's rules (`string2ll`).
pub fn int_arg(arg: &[u8]) -> Result<i64, &'static str> {
    parse_i64(arg).ok_or(err::NOT_INT)
}

/// Runs a key command whose keys all belong to the store in `cx`. The arity has been checked.
/// A write command is refused (before it changes anything) when the shard's log cannot take
/// writes.
///
/// Commands that store an argument as a value (SET, MSET, ...) take it out of `args` (leaving
/// an empty `Bytes`), so that a large value is adopted by the store rather than copied.
pub fn execute_keyed(spec: &CommandSpec, args: &mut [Bytes], cx: &mut Exec, out: &mut ReplyWriter) {
    if let Some(refusal) = cx.wal.and_then(|w| w.write_refusal()).filter(|_| spec.is_write()) {
        return out.error(&refusal);
    }
    if spec.denies_oom() && !cx.admit() {
        return out.error(err::OOM);
    }
    match spec.name {
        "get" => strings::get(args, cx, out),
        "set" => strings::set(args, cx, out),
        "setnx" => strings::setnx(args, cx, out),
        "setex" => strings::setex(args, cx, out, false),
        "psetex" => strings::setex(args, cx, out, true),
        "getset" => strings::getset(args, cx, out),
        "getdel" => strings::getdel(args, cx, out),
        "getex" => strings::getex(args, cx, out),
        "mget" => strings::mget(args, cx, out),
        "mset" => strings::mset(args, cx, out),
        "msetnx" => strings::msetnx(args, cx, out),
        "append" => strings::append(args, cx, out),
        "strlen" => strings::strlen(args, cx, out),
        "getrange" => strings::getrange(args, cx, out),
        "setrange" => strings::setrange(args, cx, out),
        "incr" => strings::incr_by(&args[1], Ok(1), cx, out),
        "decr" => strings::incr_by(&args[1], Ok(-1), cx, out),
        "incrby" => strings::incr_by(&args[1], int_arg(&args[2]), cx, out),
        "decrby" => strings::decr_by(args, cx, out),
        "incrbyfloat" => strings::incrbyfloat(args, cx, out),
        "del" | "unlink" => keys::del(args, cx, out),
        "exists" => keys::exists(args, cx, out),
        "type" => keys::type_(args, cx, out),
        "expire" => keys::expire(args, cx, out, keys::ExpireUnit::Seconds, false),
        "pexpire" => keys::expire(args, cx, out, keys::ExpireUnit::Millis, false),
        "expireat" => keys::expire(args, cx, out, keys::ExpireUnit::Seconds, true),
        "pexpireat" => keys::expire(args, cx, out, keys::ExpireUnit::Millis, true),
        "ttl" => keys::ttl(args, cx, out, keys::TtlForm::RemainingSeconds),
        "pttl" => keys::ttl(args, cx, out, keys::TtlForm::RemainingMillis),
        "expiretime" => keys::ttl(args, cx, out, keys::TtlForm::AbsoluteSeconds),
        "pexpiretime" => keys::ttl(args, cx, out, keys::TtlForm::AbsoluteMillis),
        "persist" => keys::persist(args, cx, out),
        "rename" => keys::rename(args, cx, out, false),
        "renamenx" => keys::rename(args, cx, out, true),
        other => out.error(&format!("ERR command '{other}' cannot run on a shard")),
    }
}

/// `ERR wrong number of arguments for '<name>' command`.
pub fn arity_error(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// Redis's unknown-command error: the name (up to 128 bytes) and the first arguments, each
/// quoted and followed by a space, until about 128 bytes. Client bytes are kept raw.
pub fn unknown_command_error(args: &[Bytes]) -> Vec<u8> {
    let mut m = b"ERR unknown command '".to_vec();
    m.extend_from_slice(&args[0][..args[0].len().min(128)]);
    m.extend_from_slice(b"', with args beginning with: ");
    let mut rest: Vec<u8> = Vec::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        rest.push(b'\'');
        rest.extend_from_slice(&a[..a.len().min(room)]);
        rest.extend_from_slice(b"' ");
    }
    m.extend_from_slice(&rest);
    m
}
