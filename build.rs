//! Build information for `ringcache --version` and INFO server: the git commit (when built from
//! a git checkout; `RINGCACHE_GIT_HASH` overrides it for packagers building from a tarball), the
//! rustc version, the profile and the target. Every part falls back to "unknown": a build never
//! fails for want of git.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RINGCACHE_GIT_HASH");
    let git = std::env::var("RINGCACHE_GIT_HASH").ok().filter(|s| !s.is_empty()).or_else(|| {
        let hash = run("git", &["rev-parse", "--short=12", "HEAD"])?;
        // Rebuild when HEAD moves (a commit or a checkout): watch HEAD, the branch it names and
        // packed-refs (paths resolved by git, so worktrees work). Not the index, which `git
        // status` rewrites: that would rebuild everything after every status. So `-dirty` is
        // as of the last commit or checkout seen, not of the last edit.
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(r) = run("git", &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(r);
        }
        for w in watch {
            if let Some(path) = run("git", &["rev-parse", "--path-format=absolute", "--git-path", &w]) {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
        Some(if dirty { format!("{hash}-dirty") } else { hash })
    });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"]).unwrap_or_else(|| "rustc unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=RINGCACHE_GIT_HASH={}", git.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rustc-env=RINGCACHE_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=RINGCACHE_BUILD_PROFILE={profile}");
    println!("cargo:rustc-env=RINGCACHE_BUILD_TARGET={target}");
}
