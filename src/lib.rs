//! ringcache: a thread-per-core, io_uring cache server that speaks the Redis protocol.
//!
//! # Layout
//! One module per concept; read them in this order.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | command-line options and their defaults |
//! | [`server`] | startup and shutdown: listeners, one pinned glommio executor per shard, signals |
//! | [`conn`] | one client connection: read, parse, execute in rounds, write |
//! | [`resp`] | the RESP protocol: request parser and reply encoder (pure, no I/O) |
//! | [`cmd`] | the command table and every command, one file per family |
//! | [`shard`] | a shard's state, the multi-shard gate; `shard::mesh`: the channels between shards; `shard::ops`: work run on behalf of other shards |
//! | [`coord`] | multi-key commands whose keys span shards |
//! | [`large`] | values of 1 MiB or more: page-mapped buffers that grow and are shared without copies |
//! | [`store`] | a shard's keyspace: the hash table and its entries; `store::evict`: eviction policies (`maxmemory`) |
//! | [`wal`] | the write-ahead log: record encoding, segment scanning, recovery decisions (pure: `format`, `scan`, `recovery`); segment files, group commit, replay at startup (I/O: `file`, `writer`, `replay`, `mapped`); `sim`: a simulated disk for power-loss tests |
//! | [`snapshot`] | forkless point-in-time snapshots: file format (pure: `format`), DMA file, taking one on a running shard with retention and log compaction (`task`), loading at recovery (`load`) |
//! | [`check`] | `ringcache check` and `ringcache repair`: the offline verifier and repairer of a data directory |
//! | [`error`] | startup errors, each with the fix |
//! | [`fuzzing`] | bodies of the `cargo fuzz` targets (parser, commands, WAL scan, snapshot load), shared with the corpus replay test |
//! | [`auth`] | `--requirepass`, AUTH, protected mode |
//! | [`metrics`] | typed counters and histograms, the Prometheus exposition; `metrics::http`: the `/metrics` and health endpoint |
//! | [`notify`] | the systemd notification protocol (READY, STATUS, STOPPING, WATCHDOG) |
//! | [`build_info`] | version, git commit, toolchain (`--version`) |
//!
//! `docs/ARCHITECTURE.md` draws how they fit together.

pub mod auth;
pub mod build_info;
pub mod check;
pub mod cmd;
pub mod config;
pub mod conn;
pub mod coord;
pub mod error;
pub mod fuzzing;
pub mod large;
pub mod metrics;
pub mod notify;
pub mod resp;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod store;
pub mod wal;
