//! Access control as in Redis with only the `default` user: `--requirepass` (or CONFIG SET
//! requirepass) gives it a password, `AUTH [default] <password>` and `HELLO <proto> AUTH
//! default <password>` authenticate a connection, and until then every command but AUTH,
//! HELLO and QUIT is refused with `-NOAUTH` (Redis's `no-auth` commands).
//!
//! # Protected mode
//! With no password and `--protected-mode yes` (the default), a connection from an address that
//! is not loopback is refused at accept with Redis's `-DENIED` text, whatever `--bind` says:
//! binding a public address without a password is the mistake it guards against. The check is
//! on the client's address, exactly as Redis does it.
//!
//! # Secrets
//! Passwords are compared in constant time: both sides are hashed to 128 bits and the digests
//! compared without early exit, so the time depends neither on where they differ nor on the
//! password's length. The password is never logged; its `Debug` form is redacted. CONFIG GET
//! requirepass returns it, as Redis does (the caller is authenticated by then).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Redis's reply to a command sent before AUTH.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// Redis's reply to HELLO without AUTH on a connection that is not authenticated.
pub const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                                HELLO AUTH <user> <pass> option can be used to authenticate the client and select \
                                the RESP protocol version at the same time";
/// Redis's reply to a wrong user or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Redis's reply to `AUTH <password>` when the default user has no password.
pub const NO_PASSWORD_CONFIGURED: &str = "ERR AUTH <password> called without any password configured for the \
                                          default user. Are you sure your configuration is correct?";
/// Longest password accepted (Redis has none; ours bounds what is hashed per AUTH).
pub const PASSWORD_MAX_BYTES: usize = 4096;

/// Redis 7's refusal of a non-loopback client in protected mode (written, then the connection
/// is closed).
pub const DENIED: &str = concat!(
    "DENIED Redis is running in protected mode because protected mode is enabled and no ",
    "password is set for the default user. In this mode connections are only accepted from the ",
    "loopback interface. If you want to connect from external computers to Redis you may adopt ",
    "one of the following solutions: 1) Just disable protected mode sending the command 'CONFIG ",
    "SET protected-mode no' from the loopback interface by connecting to Redis from the same ",
    "host the server is running, however MAKE SURE Redis is not publicly accessible from ",
    "internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively ",
    "you can just disable the protected mode by editing the Redis configuration file, and ",
    "setting the protected mode option to 'no', and then restarting the server. 3) If you ",
    "started the server manually just for testing, restart it with the '--protected-mode no' ",
    "option. 4) Setup a an authentication password for the default user. NOTE: You only need to ",
    "do one of the above things in order for the server to start accepting connections from the ",
    "outside.",
);

/// A password from the command line or the environment: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > PASSWORD_MAX_BYTES {
            return Err(format!("a password is at most {PASSWORD_MAX_BYTES} bytes"));
        }
        Ok(Secret(s.to_string()))
    }
}

/// Commands a connection may send before it is authenticated (Redis's `no-auth` flag).
pub fn allowed_before_auth(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit" | "reset")
}

/// The default user's password and the protected-mode switch, shared by every shard.
pub struct Auth {
    /// `None`: no password (every connection starts authenticated).
    password: RwLock<Option<Arc<[u8]>>>,
    protected_mode: AtomicBool,
}

impl Auth {
    pub fn new(requirepass: Option<&Secret>, protected_mode: bool) -> Self {
        let pw = requirepass.filter(|s| !s.0.is_empty()).map(|s| Arc::from(s.0.as_bytes()));
        Auth { password: RwLock::new(pw), protected_mode: AtomicBool::new(protected_mode) }
    }

    fn password(&self) -> Option<Arc<[u8]>> {
        self.password.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a new connection must authenticate first.
    pub fn required(&self) -> bool {
        self.password().is_some()
    }

    /// CONFIG SET requirepass: an empty value removes the password. Connections already
    /// authenticated stay so, as in Redis.
    pub fn set_password(&self, pw: &[u8]) {
        let v = (!pw.is_empty()).then(|| Arc::from(pw));
        *self.password.write().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// CONFIG GET requirepass (empty when none).
    pub fn password_for_config(&self) -> String {
        self.password().map(|p| String::from_utf8_lossy(&p).into_owned()).unwrap_or_default()
    }

    pub fn protected_mode(&self) -> bool {
        self.protected_mode.load(Ordering::Relaxed)
    }

    pub fn set_protected_mode(&self, on: bool) {
        self.protected_mode.store(on, Ordering::Relaxed);
    }

    /// Whether protected mode refuses a client connecting from `peer`.
    pub fn refuses(&self, peer: IpAddr) -> bool {
        self.protected_mode() && !self.required() && !is_loopback(peer)
    }

    /// Checks `user`/`password` against the default user. `Err` is the error reply.
    pub fn check(&self, user: &[u8], password: &[u8]) -> Result<(), &'static str> {
        let expected = self.password();
        // Compare the user in constant time too (no early exit on a wrong name).
        let user_ok = constant_time_eq(user, b"default");
        let pass_ok = match &expected {
            None => true,
            Some(p) => constant_time_eq(password, p),
        };
        if user_ok & pass_ok {
            Ok(())
        } else {
            Err(WRONGPASS)
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Equality whose time does not depend on the contents or the lengths: both sides are
/// hashed to 128 bits, and the digests are compared without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let da = xxhash_rust::xxh3::xxh3_128_with_seed(a, 0x5eed).to_le_bytes();
    let db = xxhash_rust::xxh3::xxh3_128_with_seed(b, 0x5eed).to_le_bytes();
    let mut diff = 0u8;
    for (x, y) in da.iter().zip(db.iter()) {
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// The AUTH command on a connection: `AUTH <password>` or `AUTH <user> <password>`.
/// Returns the error reply, or `Ok` when the connection is now authenticated.
pub fn auth_command(auth: &Auth, args: &[bytes::Bytes]) -> Result<(), &'static str> {
    match args.len() {
        2 if !auth.required() => Err(NO_PASSWORD_CONFIGURED),
        2 => auth.check(b"default", &args[1]),
        3 => auth.check(&args[1], &args[2]),
        _ => Err(crate::cmd::err::SYNTAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect()
    }

    #[test]
    fn auth_replies_as_redis() {
        let none = Auth::new(None, true);
        assert_eq!(auth_command(&none, &args(&["auth", "x"])), Err(NO_PASSWORD_CONFIGURED));
        assert_eq!(auth_command(&none, &args(&["auth", "default", "x"])), Ok(()));
        assert_eq!(auth_command(&none, &args(&["auth", "bob", "x"])), Err(WRONGPASS));
        let pw = Auth::new(Some(&Secret("s3cret".into())), true);
        assert_eq!(auth_command(&pw, &args(&["auth", "s3cret"])), Ok(()));
        assert_eq!(auth_command(&pw, &args(&["auth", "s3cre"])), Err(WRONGPASS));
        assert_eq!(auth_command(&pw, &args(&["auth", "default", "s3cret"])), Ok(()));
        assert_eq!(auth_command(&pw, &args(&["auth", "bob", "s3cret"])), Err(WRONGPASS));
        assert_eq!(auth_command(&pw, &args(&["auth", "a", "b", "c"])), Err(crate::cmd::err::SYNTAX));
        pw.set_password(b"");
        assert!(!pw.required());
    }

    #[test]
    fn protected_mode_only_refuses_remote_clients_without_password() {
        let a = Auth::new(None, true);
        assert!(!a.refuses("127.0.0.1".parse().unwrap()));
        assert!(!a.refuses("::1".parse().unwrap()));
        assert!(!a.refuses("::ffff:127.0.0.1".parse().unwrap()));
        assert!(a.refuses("192.0.2.7".parse().unwrap()));
        a.set_password(b"x");
        assert!(!a.refuses("192.0.2.7".parse().unwrap()));
        let off = Auth::new(None, false);
        assert!(!off.refuses("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        assert_eq!(format!("{:?}", Some(Secret("hunter2".into()))), "Some(Secret(<redacted>))");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
