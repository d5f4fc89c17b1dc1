//! The command table: one row per command with Redis's arity, flags and key positions.
//!
//! The table drives three things: the arity check (done once, before any command code runs),
//! routing (which shard owns the keys: see [`Route`]), and the `COMMAND INFO/DOCS` replies
//! client libraries and `redis-cli` read.

/// How a command finds the shard(s) it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Runs on the connection's own shard and touches no key (PING, ECHO).
    Local,
    /// Needs connection state or every shard (HELLO, CLIENT, INFO, DBSIZE, SCAN, ...): executed
    /// by the connection after the commands before it have completed.
    Connection,
    /// Keys at positions `first_key..=last_key` stepping by `step` (negative last counts from
    /// the end). If they all belong to one shard the whole command runs there; otherwise it is
    /// split per shard under the multi-shard gate (see `shard`).
    Keys,
}

/// One row of the command table.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case name, as Redis reports it.
    pub name: &'static str,
    /// Redis arity: `n` means exactly n arguments (name included), `-n` at least n.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub route: Route,
    pub group: &'static str,
    pub since: &'static str,
    pub summary: &'static str,
    pub complexity: &'static str,
    /// Subcommands (`CLIENT SETNAME`, ...) as `(name, arity, summary)`.
    pub subcommands: &'static [(&'static str, i32, &'static str)],
}

impl CommandSpec {
    /// Whether the command may change the keyspace (refused while the log cannot take writes).
    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }

    /// Whether the command may add memory: refused with the OOM error when the store is over
    /// `maxmemory` and nothing can be evicted (Redis's `denyoom`).
    pub fn denies_oom(&self) -> bool {
        self.flags.contains(&"denyoom")
    }

    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i32;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Indices of the key arguments in a command of `argc` arguments.
    pub fn key_indices(&self, argc: usize) -> impl Iterator<Item = usize> {
        let argc = argc as i32;
        let last = if self.last_key < 0 { argc + self.last_key } else { self.last_key.min(argc - 1) };
        let (first, step) = (self.first_key, self.step.max(1));
        (first..=last).step_by(step as usize).filter(move |_| first > 0).map(|i| i as usize)
    }
}

macro_rules! cmd {
    ($name:literal, $arity:expr, [$($flag:literal),*], $fk:expr, $lk:expr, $st:expr, $route:ident,
     $group:literal, $since:literal, $summary:literal, $cx:literal) => {
        CommandSpec {
            name: $name, arity: $arity, flags: &[$($flag),*], first_key: $fk, last_key: $lk,
            step: $st, route: Route::$route, group: $group, since: $since, summary: $summary,
            complexity: $cx, subcommands: &[],
        }
    };
}

/// Every command the server knows.
pub static COMMANDS: &[CommandSpec] = &[
    // connection
    cmd!(
        "ping",
        -1,
        ["fast", "sentinel"],
        0,
        0,
        0,
        Local,
        "connection",
        "1.0.0",
        "Returns the server's liveliness response.",
        "O(1)"
    ),
    cmd!("echo", 2, ["fast"], 0, 0, 0, Local, "connection", "1.0.0", "Returns the given string.", "O(1)"),
    cmd!(
        "quit",
        -1,
        ["allow_busy", "fast", "no_auth"],
        0,
        0,
        0,
        Connection,
        "connection",
        "1.0.0",
        "Closes the connection.",
        "O(1)"
    ),
    cmd!(
        "hello",
        -1,
        ["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"],
        0,
        0,
        0,
        Connection,
        "connection",
        "6.0.0",
        "Handshakes with the Redis server.",
        "O(1)"
    ),
    cmd!(
        "select",
        2,
        ["loading", "stale", "fast"],
        0,
        0,
        0,
        Connection,
        "connection",
        "1.0.0",
        "Changes the selected database.",
        "O(1)"
    ),
    cmd!(
        "auth",
        -2,
        ["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"],
        0,
        0,
        0,
        Connection,
        "connection",
        "1.0.0",
        "Authenticates the connection.",
        "O(N) where N is the number of passwords defined for the user"
    ),
    CommandSpec {
        name: "client",
        arity: -2,
        flags: &[],
        first_key: 0,
        last_key: 0,
        step: 0,
        route: Route::Connection,
        group: "connection",
        since: "2.4.0",
        summary: "A container for client connection commands.",
        complexity: "Depends on subcommand.",
        subcommands: &[
            ("id", 2, "Returns the unique client ID of the connection."),
            ("getname", 2, "Returns the name of the connection."),
            ("setname", 3, "Sets the connection name."),
            ("setinfo", 4, "Sets information specific to the client or connection."),
            ("info", 2, "Returns information about the connection."),
            ("list", -2, "Lists open connections."),
            ("help", 2, "Returns helpful text about the different subcommands."),
        ],
    },
    // server
    CommandSpec {
        name: "command",
        arity: -1,
        flags: &["loading", "stale"],
        first_key: 0,
        last_key: 0,
        step: 0,
        route: Route::Connection,
        group: "server",
        since: "2.8.13",
        summary: "Returns detailed information about all commands.",
        complexity: "O(N) where N is the total number of Redis commands",
        subcommands: &[
            ("count", 2, "Returns a count of commands."),
            ("info", -2, "Returns information about one, multiple or all commands."),
            ("docs", -2, "Returns documentary information about one, multiple or all commands."),
            ("list", -2, "Returns a list of command names."),
            ("help", 2, "Returns helpful text about the different subcommands."),
        ],
    },
    CommandSpec {
        name: "config",
        arity: -2,
        flags: &[],
        first_key: 0,
        last_key: 0,
        step: 0,
        route: Route::Connection,
        group: "server",
        since: "2.0.0",
        summary: "A container for server configuration commands.",
        complexity: "Depends on subcommand.",
        subcommands: &[
            ("get", -3, "Returns the effective values of configuration parameters."),
            ("set", -4, "Sets configuration parameters in-flight."),
            ("resetstat", 2, "Resets the server's statistics."),
            ("rewrite", 2, "Persists the effective configuration to file."),
            ("help", 2, "Returns helpful text about the different subcommands."),
        ],
    },
    cmd!(
        "info",
        -1,
        ["loading", "stale"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Returns information and statistics about the server.",
        "O(1)"
    ),
    cmd!(
        "dbsize",
        1,
        ["readonly", "fast"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Returns the number of keys in the database.",
        "O(1)"
    ),
    cmd!(
        "flushdb",
        -1,
        ["write"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Removes all keys from the current database.",
        "O(N) where N is the total number of keys in all databases"
    ),
    cmd!(
        "flushall",
        -1,
        ["write"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Removes all keys from all databases.",
        "O(N) where N is the total number of keys in all databases"
    ),
    cmd!("waitaof", 4, ["noscript"], 0, 0, 0, Connection, "generic", "7.2.0", "Blocks until all of the preceding write commands sent by the connection are written to the append-only file of the master and/or replicas.", "O(1)"),
    cmd!(
        "time",
        1,
        ["loading", "stale", "fast"],
        0,
        0,
        0,
        Local,
        "server",
        "2.6.0",
        "Returns the server time.",
        "O(1)"
    ),
    cmd!(
        "save",
        1,
        ["admin", "noscript", "no_async_loading", "no_multi"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Synchronously saves the database(s) to disk.",
        "O(N) where N is the total number of keys in all databases"
    ),
    cmd!(
        "bgsave",
        -1,
        ["admin", "noscript", "no_async_loading"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Asynchronously saves the database(s) to disk.",
        "O(1)"
    ),
    cmd!(
        "lastsave",
        1,
        ["loading", "stale", "fast"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Returns the Unix timestamp of the last successful save to disk.",
        "O(1)"
    ),
    cmd!(
        "shutdown",
        -1,
        ["admin", "noscript", "loading", "stale", "no_multi", "sentinel", "allow_busy"],
        0,
        0,
        0,
        Connection,
        "server",
        "1.0.0",
        "Synchronously saves the database(s) to disk and shuts down the Redis server.",
        "O(N) when saving, where N is the total number of keys in all databases when saving data, otherwise O(1)"
    ),
    // strings
    cmd!(
        "get",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Returns the string value of a key.",
        "O(1)"
    ),
    cmd!(
        "set",
        -3,
        ["write", "denyoom"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "setnx",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Set the string value of a key only when the key doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "setex",
        4,
        ["write", "denyoom"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.0.0",
        "Sets the string value and expiration time of a key. Creates the key if it doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "psetex",
        4,
        ["write", "denyoom"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.6.0",
        "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "getset",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Returns the previous string value of a key after setting it to a new value.",
        "O(1)"
    ),
    cmd!(
        "getdel",
        2,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "6.2.0",
        "Returns the string value of a key after deleting the key.",
        "O(1)"
    ),
    cmd!(
        "getex",
        -2,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "6.2.0",
        "Returns the string value of a key after setting its expiration time.",
        "O(1)"
    ),
    cmd!(
        "mget",
        -2,
        ["readonly", "fast"],
        1,
        -1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Atomically returns the string values of one or more keys.",
        "O(N) where N is the number of keys to retrieve."
    ),
    cmd!(
        "mset",
        -3,
        ["write", "denyoom"],
        1,
        -1,
        2,
        Keys,
        "string",
        "1.0.1",
        "Atomically creates or modifies the string values of one or more keys.",
        "O(N) where N is the number of keys to set."
    ),
    cmd!(
        "msetnx",
        -3,
        ["write", "denyoom"],
        1,
        -1,
        2,
        Keys,
        "string",
        "1.0.1",
        "Atomically modifies the string values of one or more keys only when all keys don't exist.",
        "O(N) where N is the number of keys to set."
    ),
    cmd!(
        "append",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.0.0",
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "strlen",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.2.0",
        "Returns the length of a string value.",
        "O(1)"
    ),
    cmd!(
        "getrange",
        4,
        ["readonly"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.4.0",
        "Returns a substring of the string stored at a key.",
        "O(N) where N is the length of the returned string."
    ),
    cmd!(
        "setrange",
        4,
        ["write", "denyoom"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.2.0",
        "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist.",
        "O(1), not counting the time taken to copy the new string in place."
    ),
    cmd!(
        "incr",
        2,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "decr",
        2,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "incrby",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "decrby",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "1.0.0",
        "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.",
        "O(1)"
    ),
    cmd!(
        "incrbyfloat",
        3,
        ["write", "denyoom", "fast"],
        1,
        1,
        1,
        Keys,
        "string",
        "2.6.0",
        "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
        "O(1)"
    ),
    // keys
    cmd!(
        "del",
        -2,
        ["write"],
        1,
        -1,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Deletes one or more keys.",
        "O(N) where N is the number of keys that will be removed."
    ),
    cmd!(
        "unlink",
        -2,
        ["write", "fast"],
        1,
        -1,
        1,
        Keys,
        "generic",
        "4.0.0",
        "Asynchronously deletes one or more keys.",
        "O(1) for each key removed regardless of its size."
    ),
    cmd!(
        "exists",
        -2,
        ["readonly", "fast"],
        1,
        -1,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Determines whether one or more keys exist.",
        "O(N) where N is the number of keys to check."
    ),
    cmd!(
        "type",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Determines the type of value stored at a key.",
        "O(1)"
    ),
    cmd!(
        "expire",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Sets the expiration time of a key in seconds.",
        "O(1)"
    ),
    cmd!(
        "pexpire",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "2.6.0",
        "Sets the expiration time of a key in milliseconds.",
        "O(1)"
    ),
    cmd!(
        "expireat",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "1.2.0",
        "Sets the expiration time of a key to a Unix timestamp.",
        "O(1)"
    ),
    cmd!(
        "pexpireat",
        -3,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "2.6.0",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
        "O(1)"
    ),
    cmd!(
        "ttl",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Returns the expiration time in seconds of a key.",
        "O(1)"
    ),
    cmd!(
        "pttl",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "2.6.0",
        "Returns the expiration time in milliseconds of a key.",
        "O(1)"
    ),
    cmd!(
        "expiretime",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "7.0.0",
        "Returns the expiration time of a key as a Unix timestamp.",
        "O(1)"
    ),
    cmd!(
        "pexpiretime",
        2,
        ["readonly", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "7.0.0",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
        "O(1)"
    ),
    cmd!(
        "persist",
        2,
        ["write", "fast"],
        1,
        1,
        1,
        Keys,
        "generic",
        "2.2.0",
        "Removes the expiration time of a key.",
        "O(1)"
    ),
    cmd!(
        "keys",
        2,
        ["readonly"],
        0,
        0,
        0,
        Connection,
        "generic",
        "1.0.0",
        "Returns all key names that match a pattern.",
        "O(N) with N being the number of keys in the database"
    ),
    cmd!(
        "scan",
        -2,
        ["readonly"],
        0,
        0,
        0,
        Connection,
        "generic",
        "2.8.0",
        "Iterates over the key names in the database.",
        "O(1) for every call. O(N) for a complete iteration."
    ),
    cmd!(
        "randomkey",
        1,
        ["readonly"],
        0,
        0,
        0,
        Connection,
        "generic",
        "1.0.0",
        "Returns a random key name from the database.",
        "O(1)"
    ),
    cmd!(
        "rename",
        3,
        ["write"],
        1,
        2,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Renames a key and overwrites the destination.",
        "O(1)"
    ),
    cmd!(
        "renamenx",
        3,
        ["write", "fast"],
        1,
        2,
        1,
        Keys,
        "generic",
        "1.0.0",
        "Renames a key only when the target key name doesn't exist.",
        "O(1)"
    ),
];

/// Looks up a command by name, case-insensitively, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 16];
    if name.len() > buf.len() {
        return None;
    }
    let lower = &mut buf[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    index().get(&*lower).copied()
}

fn index() -> &'static std::collections::HashMap<&'static [u8], &'static CommandSpec> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static [u8], &'static CommandSpec>> =
        std::sync::OnceLock::new();
    INDEX.get_or_init(|| COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(lookup(b"GeT").map(|c| c.name), Some("get"));
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"averyveryverylongcommandname").is_none());
    }

    #[test]
    fn key_positions() {
        let mset = lookup(b"mset").unwrap();
        assert_eq!(mset.key_indices(5).collect::<Vec<_>>(), vec![1, 3]);
        let rename = lookup(b"rename").unwrap();
        assert_eq!(rename.key_indices(3).collect::<Vec<_>>(), vec![1, 2]);
        let ping = lookup(b"ping").unwrap();
        assert_eq!(ping.key_indices(2).count(), 0);
    }
}
