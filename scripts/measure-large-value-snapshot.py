#!/usr/bin/env python3
"""Peak memory (VmHWM) of one ringcache process while it snapshots a 512 MiB value, and after a
restart that loads that snapshot (issue 6: large values without transient doubling).

    scripts/measure-large-value-snapshot.py target/release/ringcache 7351 /var/tmp/rc-large

DATA_DIR must be on a real disk (not tmpfs: snapshots then use O_DIRECT as in production); it is
deleted first. Uses PORT and PORT + 1. The server runs one shard, `--durability async`, 64 MiB
log segments (so compaction drops the segment holding the SET before the restart and the load
measures the snapshot, not the log), and no automatic snapshots. After the SET the script waits
for the resident memory to settle (what the SET itself used), resets the peak (`clear_refs` 5),
runs BGSAVE and reports the peak minus the memory before it; then kill -9, restart, and the
peak after recovery, and checks the value byte for byte. Figures: docs/PERFORMANCE.md."""
import os, socket, subprocess, sys, time, signal, shutil

BIN, PORT, DIR = sys.argv[1], int(sys.argv[2]), sys.argv[3]
VALUE_BYTES = 512 << 20

def status(pid):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            d[k] = int(v.split()[0]) // 1024  # MiB
    return d

def start(port=PORT):
    args = [BIN, "--bind", f"127.0.0.1:{port}", "--threads", "1", "--durability", "async",
            "--data-dir", DIR, "--snapshot-wal-bytes", "0", "--snapshot-interval-s", "0",
            "--wal-segment-bytes", "64mb"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(DIR + ".log", "a"))
    t = time.time()
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=600)
            return p, s
        except OSError:
            if time.time() - t > 120 or p.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.05)

def reply(s):
    buf = b""
    while b"\r\n" not in buf:
        buf += s.recv(65536)
    line, _, rest = buf.partition(b"\r\n")
    if line[:1] == b"$":
        n = int(line[1:])
        if n < 0:
            return None
        while len(rest) < n + 2:
            rest += s.recv(1 << 20)
        return rest[:n]
    return line

def cmd(s, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    return reply(s)

def info(s, field):
    txt = cmd(s, "INFO", "persistence").decode()
    for line in txt.split("\r\n"):
        if line.startswith(field + ":"):
            return line.split(":", 1)[1]

shutil.rmtree(DIR, ignore_errors=True)
p, s = start()
pid = p.pid
print("fresh", status(pid))
# SET big <512 MiB> streamed in 4 MiB pieces of a repeating random pattern.
piece = os.urandom(4 << 20)
s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % VALUE_BYTES)
for _ in range(VALUE_BYTES // len(piece)):
    s.sendall(piece)
s.sendall(b"\r\n")
print("SET", reply(s))
for i in range(100):  # small keys, and a log rotation past the big record
    cmd(s, "SET", f"k{i}", "x" * 100)
# Let the memory the SET itself used settle (buffers freed after the log flush, allocator purge).
last, t = status(pid)["VmRSS"], time.time()
stable = time.time()
while time.time() - stable < 3 and time.time() - t < 30:
    time.sleep(0.25)
    now = status(pid)["VmRSS"]
    if abs(now - last) > 2:
        stable = time.time()
    last = now
print("after SET", status(pid), f"settled after {time.time() - t:.1f}s")
open(f"/proc/{pid}/clear_refs", "w").write("5")
before = status(pid)
print("reset", before)
t = time.time()
print("BGSAVE", cmd(s, "BGSAVE"))
time.sleep(0.2)
while info(s, "rdb_bgsave_in_progress") != "0":
    time.sleep(0.05)
after = status(pid)
print(f"BGSAVE done in {time.time() - t:.2f}s", after, "status", info(s, "rdb_last_bgsave_status"))
print(f"SNAPSHOT VmHWM delta: {after['VmHWM'] - before['VmRSS']} MiB (HWM {after['VmHWM']} - RSS before {before['VmRSS']})")
os.system(f"ls -la {DIR}/gen-*/shard-*/")
p.send_signal(signal.SIGKILL)
p.wait()
t = time.time()
p, s = start(PORT + 1)  # the old port may still be held by the killed server's connections
print(f"restart: listening after {time.time() - t:.2f}s")
st = status(p.pid)
print("after load", st)
v = cmd(s, "GET", "big")
ok = v is not None and len(v) == VALUE_BYTES and all(v[i:i + len(piece)] == piece for i in range(0, VALUE_BYTES, len(piece)))
del v
print("value byte-identical:", ok)
print(f"LOAD VmHWM: {st['VmHWM']} MiB for a {VALUE_BYTES >> 20} MiB value")
p.send_signal(signal.SIGKILL)
p.wait()
