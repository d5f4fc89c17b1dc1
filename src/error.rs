//! Startup errors. Each names what failed and how to fix it, because it is printed to an
//! operator as one line.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: address already in use (is another server running there? choose another address with --bind)")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE; choose another port with --bind)")]
    BindPermission { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start shard {shard}: {source} (io_uring needs locked memory: raise RLIMIT_MEMLOCK with `ulimit -l` or LimitMEMLOCK= in systemd, or lower --io-memory-bytes)")]
    Executor { shard: usize, source: glommio::GlommioError<()> },
    #[error("shard {shard} stopped during startup")]
    ShardExited { shard: usize },
    #[error("cannot use data directory {dir}: {source} (choose another with --data-dir, or --durability off for memory only)")]
    DataDir { dir: std::path::PathBuf, source: std::io::Error },
    #[error("data directory {dir} is locked by another process (is another ringcache running on it? use another --data-dir)")]
    DataDirLocked { dir: std::path::PathBuf },
    #[error("recovery failed: {0}")]
    Recovery(String),
    #[error("invalid option: {0}")]
    Config(String),
    #[error("cannot serve metrics on {addr}: {source} ({hint})")]
    MetricsBind { addr: SocketAddr, source: std::io::Error, hint: &'static str },
}
