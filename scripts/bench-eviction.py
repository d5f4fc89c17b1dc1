#!/usr/bin/env python3
"""Hit ratio of each eviction policy against the real server, beside exact LRU offline.

Replays a cache-aside trace (GET; on a miss, SET) against `ringcache --maxmemory M
--maxmemory-policy P` on one shard, for two workloads and several cache sizes, and reports the
hit ratio of every policy next to an exact LRU simulated here on the same trace with the same
number of resident keys as the server's allkeys-lru run held.

Workloads (keys `k:<n>`, values of VALUE_BYTES):
  zipf      requests drawn from a Zipf(alpha) popularity over KEYS keys
  scan      the same Zipf requests, with every SCAN_EVERY requests a scan of SCAN_LEN keys never
            requested before or again (one-hit wonders: a batch job walking a table)

Requests are sent in pipelined batches of BATCH GETs, then the SETs of that batch's misses; the
offline LRU replays exactly those batch semantics (a key missed twice in one batch misses twice).
The first WARMUP share of requests fills the cache and is not counted.

A reply that does not come within STALL_S seconds stops the run with the server's socket state
(ss), its CLIENT LIST, whether that extra connection released the reply, and the server's log
(kept in a temporary file; deleted after a clean run).

Usage: scripts/bench-eviction.py BINARY [--requests N] [--port P] [--out FILE]
"""

import argparse
import bisect
import collections
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

KEYS = 100_000
ALPHA = 0.99
VALUE_BYTES = 100
BATCH = 200
WARMUP = 0.25
SCAN_EVERY = 20_000
SCAN_LEN = 10_000
# Cache sizes as a share of the Zipf key set.
SIZES = [0.01, 0.05, 0.20]
POLICIES = ["allkeys-lru", "allkeys-lfu", "allkeys-random", "allkeys-s3fifo"]
# Bytes the server holds per resident key at these sizes (entry size class 128 + bucket slot
# 8..16 + ghost): the limit is set from it, and the resident key count is measured anyway.
BYTES_PER_KEY = 144
# A reply that takes longer than this is a stall (a batch takes milliseconds): the run stops with
# the server's socket state, its CLIENT LIST and its log instead of hanging.
STALL_S = 30


def zipf_trace(n, seed):
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** ALPHA for i in range(KEYS)]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    # Popularity rank -> key id, shuffled so hot keys are not neighbours in the table.
    ids = list(range(KEYS))
    rng.shuffle(ids)
    return [ids[min(bisect.bisect_left(cdf, rng.random()), KEYS - 1)] for _ in range(n)]


def scan_trace(n, seed):
    base = zipf_trace(n, seed)
    out, next_scan_key, i = [], KEYS, 0
    while len(out) < n:
        out.extend(base[i : i + SCAN_EVERY])
        i += SCAN_EVERY
        out.extend(range(next_scan_key, next_scan_key + SCAN_LEN))
        next_scan_key += SCAN_LEN
    return out[:n]


def key(k):
    return b"k:%d" % k


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Stall(Exception):
    pass


class Conn:
    def __init__(self, port, timeout=STALL_S):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(timeout)
        self.buf = b""

    def recv(self):
        try:
            return self.s.recv(1 << 20)
        except socket.timeout:
            raise Stall() from None

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.recv()
            if not d:
                raise RuntimeError("server closed the connection")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self.buf += self.recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def reply(self):
        line = self._line()
        if line[:1] == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            data = self._exact(n + 2)
            return data[:-2]
        if line[:1] == b"-":
            raise RuntimeError(line.decode())
        if line[:1] == b"*":
            return [self.reply() for _ in range(int(line[1:]))]
        return line

    def call(self, *args):
        self.s.sendall(resp(*args))
        return self.reply()


def stall_report(c, port, proc, log_path):
    """What the server looked like when a reply stopped coming, then whether opening one more
    connection (for CLIENT LIST) let the stuck reply through."""
    ss = subprocess.run(["ss", "-tnpi", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    try:
        clients = Conn(port, timeout=5).call(b"CLIENT", b"LIST").decode()
    except (OSError, Stall) as e:
        clients = f"(CLIENT LIST failed: {e!r})"
    c.s.settimeout(5)
    try:
        late = c.s.recv(1 << 20)
        after = f"{len(late)} reply bytes arrived within 5 s of the extra connection"
    except socket.timeout:
        after = "still nothing 5 s after the extra connection"
    with open(log_path, errors="replace") as f:
        log = f.read()[-4000:]
    return (f"no reply for {STALL_S} s (server pid {proc.pid}, exit status {proc.poll()})\n"
            f"ss (server side):\n{ss}\nCLIENT LIST:\n{clients}\n{after}\n"
            f"server log {log_path} (tail):\n{log}")


def run_server(binary, policy, maxmemory, trace, port):
    # The server's own output is kept: a panic or warning is the first thing to read after a stall.
    log = tempfile.NamedTemporaryFile(prefix="bench-eviction-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "--bind", f"127.0.0.1:{port}", "--threads", "1", "--durability", "off",
         "--maxmemory", str(maxmemory), "--maxmemory-policy", policy],
        stdout=log, stderr=subprocess.STDOUT)
    c = None
    try:
        for _ in range(200):
            try:
                c = Conn(port)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        value = b"v" * VALUE_BYTES
        warm = int(len(trace) * WARMUP)
        hits = counted = 0
        resident = []
        for start in range(0, len(trace), BATCH):
            batch = trace[start : start + BATCH]
            c.s.sendall(b"".join(resp(b"GET", key(k)) for k in batch))
            missed = []
            for i, k in enumerate(batch):
                hit = c.reply() is not None
                if start + i >= warm:
                    counted += 1
                    hits += hit
                if not hit:
                    missed.append(k)
            if missed:
                c.s.sendall(b"".join(resp(b"SET", key(k), value) for k in missed))
                for _ in missed:
                    c.reply()
            if start >= warm and (start // BATCH) % 100 == 0:
                resident.append(int(c.call(b"DBSIZE")[1:]))
        info = c.call(b"INFO", b"memory").decode()
        used = int(next(l.split(":")[1] for l in info.split("\r\n") if l.startswith("used_memory:")))
        os.unlink(log.name)
        return hits / counted, sum(resident) // max(1, len(resident)), used
    except Stall:
        raise RuntimeError(f"{policy}, maxmemory {maxmemory}: " + stall_report(c, port, proc, log.name)) from None
    finally:
        proc.terminate()
        proc.wait()
        log.close()


def exact_lru(trace, capacity):
    cache = collections.OrderedDict()
    warm = int(len(trace) * WARMUP)
    hits = counted = 0
    for start in range(0, len(trace), BATCH):
        batch = trace[start : start + BATCH]
        missed = []
        for i, k in enumerate(batch):
            hit = k in cache
            if hit:
                cache.move_to_end(k)
            else:
                missed.append(k)
            if start + i >= warm:
                counted += 1
                hits += hit
        for k in missed:
            cache[k] = True
            cache.move_to_end(k)
            while len(cache) > capacity:
                cache.popitem(last=False)
    return hits / counted


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--requests", type=int, default=400_000)
    ap.add_argument("--port", type=int, default=7210)
    ap.add_argument("--out")
    a = ap.parse_args()
    lines = []

    def emit(s):
        print(s, flush=True)
        lines.append(s)

    emit(f"# bench-eviction: {a.requests} requests per run, {KEYS} keys, Zipf alpha {ALPHA}, "
         f"{VALUE_BYTES}-byte values, batches of {BATCH}, first {int(WARMUP * 100)}% not counted")
    emit(f"# scan workload: every {SCAN_EVERY} requests a scan of {SCAN_LEN} one-time keys")
    emit("workload | cache (% of keys) | maxmemory | " + " | ".join(POLICIES) + " | exact LRU (offline) | resident keys (lru run)")
    emit("---|---|---|" + "---|" * len(POLICIES) + "---|---")
    for name, gen in [("zipf", zipf_trace), ("scan", scan_trace)]:
        trace = gen(a.requests, 42)
        for share in SIZES:
            maxmemory = int(KEYS * share * BYTES_PER_KEY)
            ratios, resident_lru = [], 0
            for p in POLICIES:
                ratio, resident, _used = run_server(a.binary, p, maxmemory, trace, a.port)
                ratios.append(ratio)
                if p == "allkeys-lru":
                    resident_lru = resident
            lru = exact_lru(trace, resident_lru)
            emit(f"{name} | {share * 100:g}% | {maxmemory} | " + " | ".join(f"{r:.3f}" for r in ratios)
                 + f" | {lru:.3f} | {resident_lru}")
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
