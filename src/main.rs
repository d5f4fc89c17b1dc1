use clap::Parser;
use ringcache::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "check") {
        let args = ringcache::check::CheckArgs::parse_from(std::env::args_os().skip(1));
        let (text, code) = ringcache::check::check(&args.data_dir);
        print!("{text}");
        std::process::exit(code);
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "repair") {
        let args = ringcache::check::RepairArgs::parse_from(std::env::args_os().skip(1));
        let (text, code) = ringcache::check::repair(&args.data_dir, args.recovery.mode());
        print!("{text}");
        std::process::exit(code);
    }
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
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        git = ringcache::build_info::GIT_HASH,
        bind = %config.bind,
        "starting ringcache"
    );
    if let Err(e) = ringcache::server::run(config) {
        eprintln!("ringcache: {e}");
        std::process::exit(1);
    }
}
