//! Connection and server commands: PING, ECHO, TIME, QUIT, HELLO, SELECT, AUTH, CLIENT,
//! COMMAND, CONFIG, INFO, DBSIZE, FLUSHDB/FLUSHALL, SHUTDOWN, SAVE, BGSAVE, LASTSAVE, KEYS, SCAN,
//! RANDOMKEY.
//!
//! These run in the connection (they need its state or every shard). Server-wide ones fan out
//! to all shards with `shard::ops::on_all_shards`.

use super::table::{CommandSpec, COMMANDS};
use super::{arity_error, err, keys::glob_match};
use crate::conn::Conn;
use crate::resp::{Protocol, ReplyWriter};
use crate::shard::ops::{on_all_shards, on_shard, AdminOp, AdminResult, ShardReport};
use bytes::Bytes;
use std::sync::atomic::Ordering;

/// The Redis version we answer to in INFO and HELLO: the command set and replies follow it.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// Commands that need neither the keyspace nor connection state.
pub fn run_local(spec: &CommandSpec, args: &[Bytes], out: &mut ReplyWriter) {
    match spec.name {
        "ping" => match args.len() {
            1 => out.simple("PONG"),
            2 => out.bulk(&args[1]),
            _ => out.error(&arity_error("ping")),
        },
        "echo" => out.bulk(&args[1]),
        "time" => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            out.array(2);
            out.bulk(now.as_secs().to_string().as_bytes());
            out.bulk(now.subsec_micros().to_string().as_bytes());
        }
        other => out.error(&format!("ERR '{other}' is not a local command")),
    }
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// Checks a subcommand's arity; writes the error and returns false when wrong or unknown.
fn subcommand_ok(spec: &CommandSpec, args: &[Bytes], out: &mut ReplyWriter) -> bool {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match spec.subcommands.iter().find(|(n, _, _)| *n == sub) {
        None => {
            out.error(&format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                String::from_utf8_lossy(&args[1]),
                spec.name.to_ascii_uppercase()
            ));
            false
        }
        Some((name, arity, _)) => {
            let argc = args.len() as i32;
            let ok = if *arity >= 0 { argc == *arity } else { argc >= -arity };
            if !ok {
                out.error(&arity_error(&format!("{}|{}", spec.name, name)));
            }
            ok
        }
    }
}

/// Commands that need the connection or every shard.
pub async fn run_connection(conn: &mut Conn, spec: &CommandSpec, args: &[Bytes], buf: &mut Vec<u8>) {
    let proto = conn.proto;
    let mut out = ReplyWriter::new(buf, proto);
    let shard = conn.shard.clone();
    match spec.name {
        "quit" => {
            out.ok();
            conn.close = true;
        }
        "select" => match super::int_arg(&args[1]) {
            Ok(0) => out.ok(),
            Ok(_) => out.error("ERR DB index is out of range"),
            Err(e) => out.error(e),
        },
        "auth" => match crate::auth::auth_command(&shard.global.auth, args) {
            Ok(()) => {
                conn.authenticated = true;
                out.ok();
            }
            Err(e) => out.error(e),
        },
        "hello" => hello(conn, args, buf),
        "client" => client(conn, spec, args, buf).await,
        "command" => command(spec, args, &mut out),
        "config" => config(conn, spec, args, &mut out).await,
        "info" => {
            let text = info(conn, &args[1..]).await;
            ReplyWriter::new(buf, proto).verbatim(text.as_bytes());
        }
        "dbsize" => {
            let total: i64 = on_all_shards(&shard, || AdminOp::DbSize)
                .await
                .into_iter()
                .map(|r| if let AdminResult::Count(c) = r { c } else { 0 })
                .sum();
            out.integer(total);
        }
        "flushdb" | "flushall" => {
            if args.len() > 2 || (args.len() == 2 && !matches!(upper(&args[1]).as_str(), "ASYNC" | "SYNC")) {
                return out.error(err::SYNTAX);
            }
            let results = on_all_shards(&shard, || AdminOp::Flush).await;
            for r in results {
                match r {
                    AdminResult::Refused(e) => return out.error(&e),
                    AdminResult::Failed(e) => {
                        conn.abort = true;
                        tracing::warn!("FLUSHALL not durable: {e}");
                        return;
                    }
                    _ => {}
                }
            }
            out.ok();
        }
        "shutdown" => {
            let (mut nosave, mut save) = (false, false);
            for a in &args[1..] {
                match upper(a).as_str() {
                    "NOSAVE" => nosave = true,
                    "SAVE" => save = true,
                    "NOW" | "FORCE" => {}
                    _ => return out.error(err::SYNTAX),
                }
            }
            if nosave && save {
                return out.error(err::SYNTAX);
            }
            let flag = match (nosave, save) {
                (true, _) => crate::shard::SHUTDOWN_NOSAVE,
                (_, true) => crate::shard::SHUTDOWN_SAVE,
                _ => crate::shard::SHUTDOWN_DEFAULT,
            };
            shard.global.shutdown_save.store(flag, Ordering::SeqCst);
            tracing::info!("SHUTDOWN requested by client {}", conn.info.borrow().id);
            shard.global.request_shutdown();
            // Redis closes the connection without a reply when shutdown proceeds.
            conn.close = true;
        }
        "keys" => {
            let pattern = args[1].clone();
            let mut keys = Vec::new();
            for r in on_all_shards(&shard, || AdminOp::Keys(pattern.clone())).await {
                if let AdminResult::Keys(k) = r {
                    keys.extend(k);
                }
            }
            out.array(keys.len());
            for k in &keys {
                out.bulk(k);
            }
        }
        "scan" => scan(conn, args, &mut out).await,
        "waitaof" => waitaof(conn, args, &mut out).await,
        "save" => {
            if shard.snapshots.is_none() {
                return out.error(&format!("ERR {}", crate::shard::SNAPSHOTS_DISABLED));
            }
            if shard.global.bgsave_in_progress.load(Ordering::SeqCst) {
                return out.error("ERR Background save already in progress");
            }
            match save_all_shards(&shard).await {
                Ok(()) => out.ok(),
                // Redis replies a bare `-ERR` when the save fails; the reason is in the log.
                Err(_) => out.error("ERR"),
            }
        }
        "bgsave" => {
            let schedule = match args.get(1) {
                None => false,
                Some(a) if args.len() == 2 && upper(a) == "SCHEDULE" => true,
                Some(_) => return out.error(err::SYNTAX),
            };
            if shard.snapshots.is_none() {
                return out.error(&format!("ERR {}", crate::shard::SNAPSHOTS_DISABLED));
            }
            let g = shard.global.clone();
            let started =
                g.bgsave_in_progress.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if !started && !schedule {
                return out.error("ERR Background save already in progress");
            }
            let me = shard.clone();
            glommio::spawn_local(async move {
                if !started {
                    // SCHEDULE: run once the BGSAVE in progress has ended.
                    while me
                        .global
                        .bgsave_in_progress
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err()
                    {
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                let _ = save_all_shards(&me).await;
                me.global.bgsave_in_progress.store(false, Ordering::SeqCst);
            })
            .detach();
            out.simple(if started { "Background saving started" } else { "Background saving scheduled" });
        }
        "lastsave" => out.integer(shard.global.lastsave_s() as i64),
        "randomkey" => {
            let n = shard.shards();
            let start = rand::random::<u32>() as usize % n;
            for i in 0..n {
                if let AdminResult::Key(Some(k)) = on_shard(&shard, (start + i) % n, AdminOp::RandomKey).await {
                    return out.bulk(&k);
                }
            }
            out.null();
        }
        other => out.error(&format!("ERR '{other}' is not a connection command")),
    }
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

const BAD_NAME: &str = "ERR Client names cannot contain spaces, newlines or special characters.";

fn hello(conn: &mut Conn, args: &[Bytes], buf: &mut Vec<u8>) {
    let mut proto = conn.proto;
    let mut name = None;
    let mut credentials = None;
    if args.len() >= 2 {
        match super::int_arg(&args[1]) {
            Ok(2) => proto = Protocol::Resp2,
            Ok(3) => proto = Protocol::Resp3,
            Ok(_) => return ReplyWriter::new(buf, conn.proto).error("NOPROTO unsupported protocol version"),
            Err(_) => {
                return ReplyWriter::new(buf, conn.proto)
                    .error("ERR Protocol version is not an integer or out of range")
            }
        }
        let mut i = 2;
        while i < args.len() {
            let opt = upper(&args[i]);
            let more = args.len() - i - 1;
            if opt == "AUTH" && more >= 2 {
                credentials = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            } else if opt == "SETNAME" && more >= 1 {
                if !valid_client_name(&args[i + 1]) {
                    return ReplyWriter::new(buf, conn.proto).error(BAD_NAME);
                }
                name = Some(args[i + 1].to_vec());
                i += 2;
            } else {
                let msg = format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[i]));
                return ReplyWriter::new(buf, conn.proto).error(&msg);
            }
        }
    }
    match credentials {
        Some((user, pass)) => match conn.shard.global.auth.check(&user, &pass) {
            Ok(()) => conn.authenticated = true,
            Err(e) => return ReplyWriter::new(buf, conn.proto).error(e),
        },
        None if !conn.authenticated => return ReplyWriter::new(buf, conn.proto).error(crate::auth::NOAUTH_HELLO),
        None => {}
    }
    conn.proto = proto;
    let id = {
        let mut info = conn.info.borrow_mut();
        info.proto = proto;
        if let Some(n) = name {
            info.name = (!n.is_empty()).then_some(n);
        }
        info.id
    };
    let mut out = ReplyWriter::new(buf, proto);
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(REDIS_COMPAT_VERSION.as_bytes());
    out.bulk(b"proto");
    out.integer(proto.version());
    out.bulk(b"id");
    out.integer(id as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
}

async fn client(conn: &mut Conn, spec: &CommandSpec, args: &[Bytes], buf: &mut Vec<u8>) {
    let mut out = ReplyWriter::new(buf, conn.proto);
    if !subcommand_ok(spec, args, &mut out) {
        return;
    }
    match String::from_utf8_lossy(&args[1]).to_ascii_lowercase().as_str() {
        "id" => out.integer(conn.info.borrow().id as i64),
        "getname" => match conn.info.borrow().name.as_deref() {
            Some(n) => out.bulk(n),
            None => out.null(),
        },
        "setname" => {
            if !valid_client_name(&args[2]) {
                return out.error(BAD_NAME);
            }
            conn.info.borrow_mut().name = (!args[2].is_empty()).then(|| args[2].to_vec());
            out.ok();
        }
        "setinfo" => {
            let mut info = conn.info.borrow_mut();
            match upper(&args[2]).as_str() {
                "LIB-NAME" => info.lib_name = Some(args[3].to_vec()),
                "LIB-VER" => info.lib_ver = Some(args[3].to_vec()),
                _ => return out.error(&format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(&args[2]))),
            }
            out.ok();
        }
        "info" => {
            let line = conn.info.borrow().line() + "\n";
            out.verbatim(line.as_bytes());
        }
        "list" => {
            let mut ids: Option<Vec<u64>> = None;
            let mut i = 2;
            while i < args.len() {
                match upper(&args[i]).as_str() {
                    "TYPE" if i + 1 < args.len() => {
                        if !matches!(upper(&args[i + 1]).as_str(), "NORMAL" | "MASTER" | "REPLICA" | "PUBSUB") {
                            return out.error(&format!(
                                "ERR Unknown client type '{}'",
                                String::from_utf8_lossy(&args[i + 1])
                            ));
                        }
                        if upper(&args[i + 1]) != "NORMAL" {
                            ids = Some(Vec::new());
                        }
                        i += 2;
                    }
                    "ID" if i + 1 < args.len() => {
                        let mut v = Vec::new();
                        for a in &args[i + 1..] {
                            match super::int_arg(a) {
                                Ok(id) if id > 0 => v.push(id as u64),
                                _ => return out.error("ERR Invalid client ID"),
                            }
                        }
                        ids = Some(v);
                        i = args.len();
                    }
                    _ => return out.error(err::SYNTAX),
                }
            }
            let shard = conn.shard.clone();
            let mut lines = String::new();
            for r in on_all_shards(&shard, || AdminOp::ClientList).await {
                if let AdminResult::Clients(ls) = r {
                    for l in ls {
                        let keep =
                            ids.as_ref().is_none_or(|ids| ids.iter().any(|id| l.starts_with(&format!("id={id} "))));
                        if keep {
                            lines.push_str(&l);
                            lines.push('\n');
                        }
                    }
                }
            }
            ReplyWriter::new(buf, conn.proto).verbatim(lines.as_bytes());
        }
        "help" => help(
            &mut out,
            "CLIENT",
            &[
                "ID",
                "GETNAME",
                "SETNAME <name>",
                "SETINFO <option> <value>",
                "INFO",
                "LIST [TYPE <type>] [ID <id> ...]",
                "HELP",
            ],
        ),
        _ => unreachable_sub(&mut out),
    }
}

fn unreachable_sub(out: &mut ReplyWriter) {
    out.error("ERR unknown subcommand");
}

fn help(out: &mut ReplyWriter, name: &str, lines: &[&str]) {
    out.array(lines.len() + 1);
    out.simple(&format!("{name} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"));
    for l in lines {
        out.simple(l);
    }
}

fn acl_categories(spec: &CommandSpec) -> Vec<String> {
    let mut cats = Vec::new();
    if spec.flags.contains(&"write") {
        cats.push("@write".to_string());
    } else if spec.flags.contains(&"readonly") {
        cats.push("@read".to_string());
    }
    match spec.group {
        "string" => cats.push("@string".into()),
        "generic" => cats.push("@keyspace".into()),
        "connection" => cats.push("@connection".into()),
        _ => {}
    }
    if spec.flags.contains(&"fast") {
        cats.push("@fast".into());
    } else {
        cats.push("@slow".into());
    }
    cats
}

fn command_info(spec: &CommandSpec, out: &mut ReplyWriter) {
    out.array(10);
    out.bulk(spec.name.as_bytes());
    out.integer(spec.arity as i64);
    out.set(spec.flags.len());
    for f in spec.flags {
        out.simple(f);
    }
    out.integer(spec.first_key as i64);
    out.integer(spec.last_key as i64);
    out.integer(spec.step as i64);
    let cats = acl_categories(spec);
    out.set(cats.len());
    for c in &cats {
        out.simple(c);
    }
    out.set(0);
    out.array(0);
    out.array(spec.subcommands.len());
    for (sub, arity, _) in spec.subcommands {
        out.array(10);
        out.bulk(format!("{}|{}", spec.name, sub).as_bytes());
        out.integer(*arity as i64);
        out.set(0);
        out.integer(0);
        out.integer(0);
        out.integer(0);
        out.set(0);
        out.set(0);
        out.array(0);
        out.array(0);
    }
}

fn command_docs(spec: &CommandSpec, out: &mut ReplyWriter) {
    let has_subs = !spec.subcommands.is_empty();
    out.map(if has_subs { 5 } else { 4 });
    for (k, v) in
        [("summary", spec.summary), ("since", spec.since), ("group", spec.group), ("complexity", spec.complexity)]
    {
        out.bulk(k.as_bytes());
        out.bulk(v.as_bytes());
    }
    if has_subs {
        out.bulk(b"subcommands");
        out.map(spec.subcommands.len());
        for (sub, _, summary) in spec.subcommands {
            out.bulk(format!("{}|{}", spec.name, sub).as_bytes());
            out.map(3);
            out.bulk(b"summary");
            out.bulk(summary.as_bytes());
            out.bulk(b"since");
            out.bulk(spec.since.as_bytes());
            out.bulk(b"group");
            out.bulk(spec.group.as_bytes());
        }
    }
}

fn command(spec: &CommandSpec, args: &[Bytes], out: &mut ReplyWriter) {
    if args.len() == 1 {
        out.array(COMMANDS.len());
        for c in COMMANDS {
            command_info(c, out);
        }
        return;
    }
    if !subcommand_ok(spec, args, out) {
        return;
    }
    let names = &args[2..];
    match String::from_utf8_lossy(&args[1]).to_ascii_lowercase().as_str() {
        "count" => out.integer(COMMANDS.len() as i64),
        "list" => {
            out.array(COMMANDS.len());
            for c in COMMANDS {
                out.bulk(c.name.as_bytes());
            }
        }
        "info" => {
            if names.is_empty() {
                out.array(COMMANDS.len());
                COMMANDS.iter().for_each(|c| command_info(c, out));
            } else {
                out.array(names.len());
                for n in names {
                    match super::lookup(n) {
                        Some(c) => command_info(c, out),
                        // Redis 7 replies a null bulk here (not a null array).
                        None => out.null(),
                    }
                }
            }
        }
        "docs" => {
            let found: Vec<&CommandSpec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| super::lookup(n)).collect()
            };
            out.map(found.len());
            for c in found {
                out.bulk(c.name.as_bytes());
                command_docs(c, out);
            }
        }
        "help" => help(
            out,
            "COMMAND",
            &["(no subcommand)", "COUNT", "DOCS [<command-name> ...]", "INFO [<command-name> ...]", "LIST", "HELP"],
        ),
        _ => unreachable_sub(out),
    }
}

/// Configuration parameters CONFIG GET knows, with whether CONFIG SET may change them.
fn config_params(conn: &Conn) -> Vec<(&'static str, String, bool)> {
    let g = &conn.shard.global;
    vec![
        ("bind", g.listen_addr.ip().to_string(), false),
        ("port", g.listen_addr.port().to_string(), false),
        ("threads", g.shards.to_string(), false),
        ("databases", "1".into(), false),
        ("maxclients", g.maxclients.load(Ordering::Relaxed).to_string(), true),
        ("proto-max-bulk-len", g.proto_max_bulk_len.load(Ordering::Relaxed).to_string(), true),
        ("client-query-buffer-limit", g.client_query_buffer_limit.load(Ordering::Relaxed).to_string(), true),
        ("client-output-buffer-limit", g.client_output_buffer_limit.get().to_config_string(), true),
        ("maxmemory", g.maxmemory_bytes.load(Ordering::Relaxed).to_string(), true),
        (
            "maxmemory-policy",
            crate::store::Policy::from_code(g.maxmemory_policy.load(Ordering::Relaxed)).name().into(),
            true,
        ),
        ("maxmemory-samples", g.maxmemory_samples.load(Ordering::Relaxed).to_string(), true),
        // Redis's save points are "seconds changes"; the interval skips a snapshot when nothing
        // was logged since the last one, so "N 1" says the same.
        (
            "save",
            if g.config.persistence() && g.config.snapshot_interval_s > 0 {
                format!("{} 1", g.config.snapshot_interval_s)
            } else {
                String::new()
            },
            false,
        ),
        ("appendonly", if g.config.durability == crate::wal::Durability::Off { "no" } else { "yes" }.into(), false),
        (
            "appendfsync",
            match g.config.durability {
                crate::wal::Durability::Sync => "always",
                _ => "everysec",
            }
            .into(),
            false,
        ),
        ("durability", format!("{:?}", g.config.durability).to_ascii_lowercase(), false),
        ("dir", g.config.data_dir.display().to_string(), false),
        ("timeout", "0".into(), false),
        ("requirepass", g.auth.password_for_config(), true),
        ("protected-mode", if g.auth.protected_mode() { "yes" } else { "no" }.into(), true),
    ]
}

async fn config(conn: &mut Conn, spec: &CommandSpec, args: &[Bytes], out: &mut ReplyWriter<'_>) {
    if !subcommand_ok(spec, args, out) {
        return;
    }
    match String::from_utf8_lossy(&args[1]).to_ascii_lowercase().as_str() {
        "get" => {
            let params = config_params(conn);
            let matched: Vec<_> = params
                .iter()
                .filter(|(name, _, _)| args[2..].iter().any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes())))
                .collect();
            out.map(matched.len());
            for (name, value, _) in matched {
                out.bulk(name.as_bytes());
                out.bulk(value.as_bytes());
            }
        }
        "set" => {
            if args.len() % 2 != 0 {
                return out.error(&arity_error("config|set"));
            }
            let params = config_params(conn);
            let mut updates = Vec::new();
            let mut text_updates = Vec::new();
            for kv in args[2..].chunks_exact(2) {
                let name = String::from_utf8_lossy(&kv[0]).to_ascii_lowercase();
                let Some((pname, _, mutable)) = params.iter().find(|(n, _, _)| *n == name) else {
                    return out.error(&format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'"));
                };
                if !mutable {
                    return out.error(&format!(
                        "ERR CONFIG SET failed (possibly related to argument '{pname}') - can't set immutable config"
                    ));
                }
                if let Some(update) = text_param(pname, &kv[1]) {
                    match update {
                        Ok(u) => text_updates.push(u),
                        Err(e) => return out.error(&e),
                    }
                    continue;
                }
                let value = String::from_utf8_lossy(&kv[1]);
                if *pname == "client-output-buffer-limit" {
                    // Applied on top of the current classes, or of an update earlier in this
                    // same CONFIG SET.
                    let base = updates.iter().rev().find_map(|u| match u {
                        ConfigUpdate::OutputLimits(l) => Some(*l),
                        ConfigUpdate::Number(..) => None,
                    });
                    match base.unwrap_or_else(|| conn.shard.global.client_output_buffer_limit.get()).apply(&value) {
                        Ok(l) => updates.push(ConfigUpdate::OutputLimits(l)),
                        Err(why) => {
                            return out.error(&format!(
                                "ERR CONFIG SET failed (possibly related to argument '{pname}') - {why}"
                            ))
                        }
                    }
                    continue;
                }
                if *pname == "maxmemory-policy" {
                    match crate::store::Policy::parse(&value) {
                        Some(p) => updates.push(ConfigUpdate::Number(pname, usize::from(p.code()))),
                        None => return out.error(&crate::store::evict::config_set_policy_error()),
                    }
                    continue;
                }
                // Redis's bounds and messages, except proto-max-bulk-len's upper bound: the
                // largest value a WAL record can hold.
                let (parsed, min, max, unparsable) = match *pname {
                    "maxclients" => {
                        (value.parse::<u64>().ok(), 1, u64::from(u32::MAX), "couldn't be parsed into an integer")
                    }
                    "proto-max-bulk-len" => (
                        crate::config::parse_bytes(&value).ok().map(|v| v as u64),
                        CONFIG_MIN_MEMORY_BYTES,
                        crate::config::PROTO_MAX_BULK_LEN_MAX as u64,
                        "must be a memory value",
                    ),
                    "maxmemory" => (
                        crate::config::parse_bytes(&value).ok().map(|v| v as u64),
                        0,
                        i64::MAX as u64,
                        "must be a memory value",
                    ),
                    "maxmemory-samples" => (
                        value.parse::<u64>().ok(),
                        1,
                        crate::store::evict::MAX_SAMPLES as u64,
                        "couldn't be parsed into an integer",
                    ),
                    _ => (
                        crate::config::parse_bytes(&value).ok().map(|v| v as u64),
                        CONFIG_MIN_MEMORY_BYTES,
                        i64::MAX as u64,
                        "must be a memory value",
                    ),
                };
                let failed = |why: String| {
                    format!("ERR CONFIG SET failed (possibly related to argument '{pname}') - argument {why}")
                };
                let Some(v) = parsed else {
                    return out.error(&failed(unparsable.to_string()));
                };
                if v < min || v > max {
                    return out.error(&failed(format!("must be between {min} and {max} inclusive")));
                }
                updates.push(ConfigUpdate::Number(pname, v as usize));
            }
            let g = &conn.shard.global;
            for u in text_updates {
                match u {
                    TextUpdate::RequirePass(p) => g.auth.set_password(&p),
                    TextUpdate::ProtectedMode(on) => g.auth.set_protected_mode(on),
                }
            }
            for u in updates {
                match u {
                    ConfigUpdate::Number("maxclients", v) => g.maxclients.store(v, Ordering::Relaxed),
                    ConfigUpdate::Number("proto-max-bulk-len", v) => g.proto_max_bulk_len.store(v, Ordering::Relaxed),
                    ConfigUpdate::Number("maxmemory", v) => g.maxmemory_bytes.store(v as u64, Ordering::Relaxed),
                    ConfigUpdate::Number("maxmemory-policy", v) => g.maxmemory_policy.store(v as u8, Ordering::Relaxed),
                    ConfigUpdate::Number("maxmemory-samples", v) => g.maxmemory_samples.store(v, Ordering::Relaxed),
                    ConfigUpdate::Number(_, v) => g.client_query_buffer_limit.store(v, Ordering::Relaxed),
                    ConfigUpdate::OutputLimits(l) => g.client_output_buffer_limit.set(l),
                }
            }
            out.ok();
        }
        "resetstat" => {
            let shard = conn.shard.clone();
            on_all_shards(&shard, || AdminOp::ResetStats).await;
            out.ok();
        }
        "rewrite" => out.error("ERR The server is running without a config file"),
        "help" => help(out, "CONFIG", &["GET <pattern>", "SET <directive> <value>", "RESETSTAT", "REWRITE", "HELP"]),
        _ => unreachable_sub(out),
    }
}

/// One checked CONFIG SET change, applied once every argument is valid.
enum ConfigUpdate {
    Number(&'static str, usize),
    OutputLimits(crate::config::OutputBufferLimits),
}

/// A CONFIG SET of a parameter that is not a number.
enum TextUpdate {
    RequirePass(Vec<u8>),
    ProtectedMode(bool),
}

/// Parses CONFIG SET of a text parameter; `None` for the numeric ones.
fn text_param(name: &str, value: &[u8]) -> Option<Result<TextUpdate, String>> {
    let failed = |why: &str| format!("ERR CONFIG SET failed (possibly related to argument '{name}') - argument {why}");
    Some(match name {
        "requirepass" if value.len() > crate::auth::PASSWORD_MAX_BYTES => Err(failed("is too long")),
        "requirepass" => Ok(TextUpdate::RequirePass(value.to_vec())),
        "protected-mode" => match upper(value).as_str() {
            "YES" => Ok(TextUpdate::ProtectedMode(true)),
            "NO" => Ok(TextUpdate::ProtectedMode(false)),
            _ => Err(failed("must be 'yes' or 'no'")),
        },
        _ => return None,
    })
}

/// Smallest `proto-max-bulk-len` and `client-query-buffer-limit` CONFIG SET accepts (Redis's).
const CONFIG_MIN_MEMORY_BYTES: u64 = 1024 * 1024;

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}G", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2}M", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else {
        format!("{bytes}B")
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Builds the INFO text for the requested sections (all default ones when none given).
async fn info(conn: &Conn, sections: &[Bytes]) -> String {
    let default = ["server", "clients", "memory", "persistence", "stats", "keyspace"];
    let all = ["server", "clients", "memory", "persistence", "stats", "commandstats", "latencystats", "keyspace"];
    let wanted: Vec<String> = if sections.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        let mut w = Vec::new();
        for s in sections {
            let s = String::from_utf8_lossy(s).to_ascii_lowercase();
            if s == "default" {
                w.extend(default.iter().map(|s| s.to_string()));
            } else if matches!(s.as_str(), "all" | "everything") {
                w.extend(all.iter().map(|s| s.to_string()));
            } else {
                w.push(s);
            }
        }
        w
    };
    let shard = conn.shard.clone();
    let g = shard.global.clone();
    let mut total = ShardReport::default();
    let mut wals = Vec::new();
    let mut snaps = Vec::new();
    for r in on_all_shards(&shard, || AdminOp::Report).await {
        if let AdminResult::Report(r) = r {
            if let Some(w) = &r.wal {
                wals.push(w.clone());
            }
            if let Some(sn) = &r.snapshot {
                snaps.push(sn.clone());
            }
            total.store.keys += r.store.keys;
            total.store.keys_with_ttl += r.store.keys_with_ttl;
            total.store.used_bytes += r.store.used_bytes;
            total.store.expired_keys += r.store.expired_keys;
            total.store.evicted_keys += r.store.evicted_keys;
            total.store.keyspace_hits += r.store.keyspace_hits;
            total.store.keyspace_misses += r.store.keyspace_misses;
            total.commands_processed += r.commands_processed;
            total.net_input_bytes += r.net_input_bytes;
            total.net_output_bytes += r.net_output_bytes;
            total.commands.merge(&r.commands);
        }
    }
    let mut s = String::new();
    let mut section = |name: &str, body: String| {
        if wanted.iter().any(|w| w == name) {
            if !s.is_empty() {
                s.push_str("\r\n");
            }
            let mut title = name.to_string();
            title[..1].make_ascii_uppercase();
            s.push_str(&format!("# {title}\r\n{body}"));
        }
    };
    let uptime = g.started.elapsed().as_secs();
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let uname = uname();
    section(
        "server",
        format!(
            "redis_version:{REDIS_COMPAT_VERSION}\r\nringcache_version:{}\r\nringcache_git:{}\r\nringcache_build:{}\r\nredis_mode:standalone\r\nos:{uname}\r\n\
             arch_bits:64\r\nmultiplexing_api:io_uring\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\n\
             server_time_usec:{now_us}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nshards:{}\r\n\
             executable:{}\r\nconfig_file:\r\n",
            env!("CARGO_PKG_VERSION"),
            crate::build_info::GIT_HASH,
            crate::build_info::PROFILE,
            std::process::id(),
            g.run_id,
            g.listen_addr.port(),
            uptime / 86400,
            g.shards,
            std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
        ),
    );
    section(
        "clients",
        format!(
            "connected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\n",
            g.connected_clients.load(Ordering::Relaxed),
            g.maxclients.load(Ordering::Relaxed)
        ),
    );
    let rss = rss_bytes();
    let used = total.store.used_bytes;
    let maxmemory = g.maxmemory_bytes.load(Ordering::Relaxed);
    section(
        "memory",
        format!(
            "used_memory:{used}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\n\
             used_memory_dataset:{used}\r\nbytes_per_key:{}\r\nmaxmemory:{maxmemory}\r\nmaxmemory_human:{}\r\n\
             maxmemory_policy:{}\r\nmaxmemory_samples:{}\r\nevicted_keys:{}\r\nmem_allocator:mimalloc\r\n",
            human(used),
            human(rss),
            used.checked_div(total.store.keys).unwrap_or(0),
            human(maxmemory),
            crate::store::Policy::from_code(g.maxmemory_policy.load(Ordering::Relaxed)).name(),
            g.maxmemory_samples.load(Ordering::Relaxed),
            total.store.evicted_keys,
        ),
    );
    section("persistence", persistence(&g, &wals, &snaps));
    section(
        "stats",
        format!(
            "total_connections_received:{}\r\ntotal_commands_processed:{}\r\ntotal_net_input_bytes:{}\r\n\
             total_net_output_bytes:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\n\
             keyspace_hits:{}\r\nkeyspace_misses:{}\r\ntotal_error_replies:{}\r\n",
            g.total_connections_received.load(Ordering::Relaxed),
            total.commands_processed,
            total.net_input_bytes,
            total.net_output_bytes,
            g.rejected_connections.load(Ordering::Relaxed),
            total.store.expired_keys,
            total.store.evicted_keys,
            total.store.keyspace_hits,
            total.store.keyspace_misses,
            total.commands.error_replies,
        ),
    );
    section("commandstats", total.commands.info_commandstats());
    section("latencystats", total.commands.info_latencystats());
    let keyspace = if total.store.keys > 0 {
        format!("db0:keys={},expires={},avg_ttl=0\r\n", total.store.keys, total.store.keys_with_ttl)
    } else {
        String::new()
    };
    section("keyspace", keyspace);
    s
}

/// INFO persistence: the durability mode, the log's figures summed over shards, recovery, and
/// each shard's fault state. Redis field names where they mean the same (`aof_enabled`,
/// `loading`), `wal_*` for the rest.
fn persistence(
    g: &crate::shard::Global,
    wals: &[crate::shard::ops::WalReport],
    snaps: &[crate::shard::ops::SnapshotReport],
) -> String {
    use std::fmt::Write;
    let config = &g.config;
    let mode = format!("{:?}", config.durability).to_ascii_lowercase();
    let mut s = format!(
        "loading:0\r\ndurability:{mode}\r\naof_enabled:{}\r\nwal_dir:{}\r\n",
        (config.durability != crate::wal::Durability::Off) as u8,
        if wals.is_empty() { String::new() } else { config.data_dir.display().to_string() },
    );
    snapshot_fields(&mut s, g, snaps);
    if wals.is_empty() {
        return s;
    }
    let sum = |f: &dyn Fn(&crate::shard::ops::WalReport) -> u64| wals.iter().map(f).sum::<u64>();
    let flushes = sum(&|w| w.stats.flushes);
    let records = sum(&|w| w.stats.records);
    let us_total = sum(&|w| w.stats.flush_us_total);
    let _ = write!(
        s,
        "wal_io:{}\r\nwal_flush_interval_ms:{}\r\nwal_segment_bytes:{}\r\nwal_bytes_written:{}\r\nwal_records:{records}\r\n\
         wal_fsyncs:{flushes}\r\nwal_records_per_fsync:{:.2}\r\nwal_fsync_avg_us:{}\r\nwal_fsync_max_us:{}\r\n\
         wal_segments_created:{}\r\nwal_pending_records:{}\r\n\
         recovery_segments:{}\r\nrecovery_records:{}\r\nrecovery_bytes:{}\r\nrecovery_torn_tails:{}\r\n\
         recovery_corrupt_segments:{}\r\nrecovery_keys_loaded:{}\r\nrecovery_ms:{}\r\n",
        if wals.iter().all(|w| w.io_mode == crate::wal::file::IoMode::Direct) { "direct" } else { "buffered" },
        config.wal_flush_interval_ms,
        config.wal_segment_bytes,
        sum(&|w| w.stats.bytes_written),
        if flushes == 0 { 0.0 } else { records as f64 / flushes as f64 },
        us_total.checked_div(flushes).unwrap_or(0),
        wals.iter().map(|w| w.stats.flush_us_max).max().unwrap_or(0),
        sum(&|w| w.stats.segments_created),
        sum(&|w| w.last_lsn.saturating_sub(w.durable_lsn)),
        sum(&|w| w.recovery.segments),
        sum(&|w| w.recovery.records),
        sum(&|w| w.recovery.bytes_read),
        sum(&|w| w.recovery.torn_tails),
        sum(&|w| w.recovery.corrupt_segments),
        sum(&|w| w.recovery.keys_loaded),
        wals.iter().map(|w| w.recovery.duration_ms).max().unwrap_or(0),
    );
    // Flush (write + fsync) latency over every shard, Redis's latencystats format, and the
    // writes that waited because the log was more than twice its buffer behind.
    let mut lat = crate::metrics::HistogramSnapshot::default();
    wals.iter().for_each(|w| lat.merge(&w.stats.flush_latency));
    let q = |q: f64| lat.quantile_ns(q) as f64 / 1000.0;
    let _ = write!(
        s,
        "wal_fsync_latency_usec:p50={:.3},p99={:.3},p99.9={:.3}\r\nwal_delayed_writes:{}\r\naof_delayed_fsync:{}\r\n",
        q(0.5),
        q(0.99),
        q(0.999),
        sum(&|w| w.stats.delayed_writes),
        sum(&|w| w.stats.delayed_writes),
    );
    for (i, w) in wals.iter().enumerate() {
        let state = match &w.fault {
            None => "ok".to_string(),
            Some(crate::wal::LogFault::NoSpace(_)) => "no_space".to_string(),
            Some(crate::wal::LogFault::Failed(_)) => "failed".to_string(),
        };
        let _ = write!(s, "wal_shard{i}:state={state},last_lsn={},durable_lsn={}\r\n", w.last_lsn, w.durable_lsn);
    }
    s
}

/// INFO persistence's snapshot part: Redis's `rdb_*` fields where they mean the same, and
/// `snapshot_*` / `recovery_snapshot_*` for the rest (sums over shards unless named `_max`).
fn snapshot_fields(s: &mut String, g: &crate::shard::Global, snaps: &[crate::shard::ops::SnapshotReport]) {
    use std::fmt::Write;
    let sum = |f: &dyn Fn(&crate::shard::ops::SnapshotReport) -> u64| snaps.iter().map(f).sum::<u64>();
    let max = |f: &dyn Fn(&crate::shard::ops::SnapshotReport) -> u64| snaps.iter().map(f).max().unwrap_or(0);
    let ok = g.last_save_ok.load(Ordering::Relaxed) && snaps.iter().all(|r| r.stats.last_ok);
    let _ = write!(
        s,
        "rdb_bgsave_in_progress:{}\r\nrdb_last_save_time:{}\r\nrdb_last_bgsave_status:{}\r\nrdb_saves:{}\r\n\
         rdb_last_bgsave_time_sec:{}\r\nsnapshot_enabled:{}\r\n",
        (g.bgsave_in_progress.load(Ordering::Relaxed) || snaps.iter().any(|r| r.running)) as u8,
        g.lastsave_s(),
        if ok { "ok" } else { "err" },
        sum(&|r| r.stats.taken),
        // Redis: -1 before the first save.
        if sum(&|r| r.stats.taken) == 0 { -1 } else { (max(&|r| r.stats.last_ms) / 1000) as i64 },
        (!snaps.is_empty()) as u8,
    );
    if snaps.is_empty() {
        return;
    }
    let rec_bytes = sum(&|r| r.recovery.snapshot_bytes);
    let rec_ms = max(&|r| r.recovery.snapshot_ms);
    let _ = write!(
        s,
        "snapshot_dir:{}\r\nsnapshot_compression:{}\r\nsnapshot_retain:{}\r\nsnapshot_interval_s:{}\r\n\
         snapshot_wal_bytes:{}\r\nsnapshots_taken:{}\r\nsnapshots_failed:{}\r\nsnapshots_running:{}\r\n\
         snapshot_last_entries:{}\r\nsnapshot_last_bytes:{}\r\nsnapshot_last_ms_max:{}\r\n\
         snapshot_step_max_us:{}\r\nsnapshot_preserved_bytes:{}\r\nsnapshot_preserved_peak_bytes_max:{}\r\n\
         snapshot_preserved_limit_bytes:{}\r\nsnapshots_deleted:{}\r\nsnapshot_wal_segments_deleted:{}\r\n\
         recovery_snapshots_loaded:{}\r\nrecovery_snapshot_keys:{}\r\nrecovery_snapshot_bytes:{rec_bytes}\r\n\
         recovery_snapshot_ms_max:{rec_ms}\r\nrecovery_snapshot_mb_per_s:{:.1}\r\nrecovery_snapshot_fallbacks:{}\r\n\
         recovery_total_ms_max:{}\r\n",
        g.config.data_dir.display(),
        format!("{:?}", g.config.snapshot_compression).to_ascii_lowercase(),
        g.config.snapshot_retain,
        g.config.snapshot_interval_s,
        g.config.snapshot_wal_bytes,
        sum(&|r| r.stats.taken),
        sum(&|r| r.stats.failed),
        sum(&|r| r.running as u64),
        sum(&|r| r.stats.last_entries),
        sum(&|r| r.stats.last_bytes),
        max(&|r| r.stats.last_ms),
        max(&|r| r.stats.step_max_us),
        sum(&|r| r.preserved_bytes),
        max(&|r| r.preserved_peak_bytes),
        crate::snapshot::PRESERVED_LIMIT_BYTES,
        sum(&|r| r.stats.snapshots_deleted),
        sum(&|r| r.stats.segments_deleted),
        sum(&|r| r.recovery.snapshots_loaded),
        sum(&|r| r.recovery.snapshot_keys),
        crate::wal::replay::mb_per_s(rec_bytes, rec_ms),
        sum(&|r| r.recovery.snapshot_fallbacks),
        max(&|r| r.recovery.duration_ms),
    );
    for (i, r) in snaps.iter().enumerate() {
        let _ = write!(
            s,
            "snapshot_shard{i}:last_lsn={},status={},last_error={}\r\n",
            r.stats.last_lsn,
            if r.stats.last_ok { "ok" } else { "err" },
            r.stats.last_error.as_deref().unwrap_or("").replace(['\r', '\n', ','], " "),
        );
    }
}

/// Snapshots every shard at once (each at its own LSN) and waits until all are durable. Records
/// the outcome for INFO `rdb_last_bgsave_status`.
async fn save_all_shards(shard: &std::rc::Rc<crate::shard::Shard>) -> Result<(), String> {
    let mut calls = Vec::new();
    for s in (0..shard.shards()).filter(|&s| s != shard.id) {
        calls.push((s, shard.send(s, crate::shard::Request::Snapshot).await));
    }
    let mut result = shard.snapshot().await.map(|_| ());
    for (s, call) in calls {
        let r = match call {
            Some(c) => match c.await {
                crate::shard::Response::Snapshot(r) => r.map(|_| ()),
                _ => Err(format!("shard {s} did not answer")),
            },
            None => Err(format!("shard {s} is shutting down")),
        };
        if result.is_ok() {
            result = r;
        }
    }
    shard.global.last_save_ok.store(result.is_ok(), Ordering::SeqCst);
    if let Err(e) = &result {
        tracing::error!("save failed: {e}");
    }
    result
}

/// WAITAOF numlocal numreplicas timeout (Redis 7.2): waits until every write logged so far on
/// every shard is durable; replies `[numlocal, 0]` (there are no replicas).
async fn waitaof(conn: &Conn, args: &[Bytes], out: &mut ReplyWriter<'_>) {
    let (numlocal, numreplicas, timeout) =
        match (super::int_arg(&args[1]), super::int_arg(&args[2]), super::int_arg(&args[3])) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return out.error(err::NOT_INT),
        };
    if timeout < 0 {
        return out.error("ERR timeout is negative");
    }
    if numlocal < 0 || numreplicas < 0 {
        return out.error(err::NOT_INT);
    }
    let shard = conn.shard.clone();
    if numlocal > 0 && shard.wal.is_none() {
        return out.error("ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.");
    }
    let wait_all = async {
        let mut ok = true;
        for s in 0..shard.shards() {
            ok &= if s == shard.id {
                match &shard.wal {
                    Some(w) => w.wait_all_durable().await.is_ok(),
                    None => true,
                }
            } else {
                matches!(shard.call(s, crate::shard::Request::WaitDurable).await, crate::shard::Response::Locked)
            };
        }
        ok
    };
    let durable = if timeout == 0 || numlocal == 0 {
        wait_all.await
    } else {
        futures_lite::future::or(wait_all, async {
            glommio::timer::sleep(std::time::Duration::from_millis(timeout as u64)).await;
            false
        })
        .await
    };
    out.array(2);
    out.integer(if durable && shard.wal.is_some() { 1 } else { 0 });
    out.integer(0);
}

fn uname() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    format!("Linux {} {}", read("/proc/sys/kernel/osrelease"), std::env::consts::ARCH)
}

async fn scan(conn: &Conn, args: &[Bytes], out: &mut ReplyWriter<'_>) {
    let text = std::str::from_utf8(&args[1]).unwrap_or("x");
    let Ok(cursor) = text.parse::<u64>() else {
        return out.error("ERR invalid cursor");
    };
    if text.starts_with('+') {
        return out.error("ERR invalid cursor");
    }
    let (mut count, mut pattern, mut strings_ok) = (10usize, None, true);
    let mut i = 2;
    while i < args.len() {
        let opt = upper(&args[i]);
        if i + 1 >= args.len() {
            return out.error(err::SYNTAX);
        }
        match opt.as_str() {
            "COUNT" => match super::int_arg(&args[i + 1]) {
                Ok(c) if c >= 1 => count = c as usize,
                Ok(_) => return out.error(err::SYNTAX),
                Err(e) => return out.error(e),
            },
            "MATCH" => pattern = Some(args[i + 1].clone()).filter(|p| &p[..] != b"*"),
            "TYPE" => strings_ok = args[i + 1].eq_ignore_ascii_case(b"string"),
            _ => return out.error(err::SYNTAX),
        }
        i += 2;
    }
    let shard = conn.shard.clone();
    let n = shard.shards() as u64;
    // The cursor carries the shard in its low part: cursor = table_cursor * shards + shard.
    let (target, table_cursor) = ((cursor % n) as usize, cursor / n);
    let op = AdminOp::Scan { cursor: table_cursor, count, pattern, only_strings: strings_ok };
    let (next, keys) = match on_shard(&shard, target, op).await {
        AdminResult::Scan { next, keys } => (next, keys),
        _ => (0, Vec::new()),
    };
    let next_cursor = if next == 0 {
        if target as u64 + 1 >= n {
            0
        } else {
            target as u64 + 1
        }
    } else {
        next.saturating_mul(n) + target as u64
    };
    out.array(2);
    out.bulk(next_cursor.to_string().as_bytes());
    out.array(keys.len());
    for k in &keys {
        out.bulk(k);
    }
}
