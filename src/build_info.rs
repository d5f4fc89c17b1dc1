//! What `ringcache --version` and INFO server say about this build (set by `build.rs`).

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (`unknown` outside a git checkout; `-dirty` with local changes).
pub const GIT_HASH: &str = env!("RINGCACHE_GIT_HASH");
/// `rustc --version` of the compiler that built it.
pub const RUSTC_VERSION: &str = env!("RINGCACHE_RUSTC_VERSION");
/// Cargo profile: `release` or `debug`.
pub const PROFILE: &str = env!("RINGCACHE_BUILD_PROFILE");
/// Target triple.
pub const TARGET: &str = env!("RINGCACHE_BUILD_TARGET");

/// `ringcache -V`: one line.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("RINGCACHE_GIT_HASH"),
    ", ",
    env!("RINGCACHE_BUILD_PROFILE"),
    ")"
);

/// `ringcache --version`: the line and the toolchain.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ngit: ",
    env!("RINGCACHE_GIT_HASH"),
    "\nprofile: ",
    env!("RINGCACHE_BUILD_PROFILE"),
    "\ntarget: ",
    env!("RINGCACHE_BUILD_TARGET"),
    "\nrustc: ",
    env!("RINGCACHE_RUSTC_VERSION"),
);
