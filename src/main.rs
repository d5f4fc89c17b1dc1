use clap::Parser;
use ringcache::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!("ringcache: invalid --log-level '{}': {e}", config.log_level);
        std::process::exit(2);
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), bind = %config.bind, "starting ringcache");
    if let Err(e) = ringcache::server::run(config) {
        eprintln!("ringcache: {e}");
        std::process::exit(1);
    }
}
