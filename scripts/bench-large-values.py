#!/usr/bin/env python3
"""Peak server memory around one SET and one GET of a large value (used by
scripts/bench-large-values.sh; docs/PERFORMANCE.md "Large values").

usage: bench-large-values.py PORT PID SIZE_BYTES

Resets the server's peak RSS (/proc/PID/clear_refs, 5), SETs a SIZE-byte value streamed in 1 MiB
pieces, reads VmHWM; then the same around a GET whose reply is checked byte by byte. Prints one
line: `rss_before_mib set_peak_growth_mib set_s get_peak_growth_mib get_s`.
"""
import socket
import sys
import time

MIB = 1 << 20


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise SystemExit(f"{field} not in /proc/{pid}/status")


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return status_kb(pid, "VmRSS:") * 1024


def piece(at, n):
    # The same bytes for the same offsets: cheap to generate and to check.
    block = bytes((i * 31 + (i >> 13)) & 0xFF for i in range(MIB))
    assert at % MIB == 0
    return block[:n]


def read_line(s, buf):
    while b"\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise SystemExit("server closed the connection")
        buf += d
    line, rest = buf.split(b"\r\n", 1)
    return line, rest


def main():
    port, pid, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection(("127.0.0.1", port))
    block = piece(0, MIB)
    before = reset_peak(pid)
    t = time.time()
    s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % size)
    at = 0
    while at < size:
        n = min(MIB, size - at)
        s.sendall(block[:n])
        at += n
    s.sendall(b"\r\n")
    line, rest = read_line(s, b"")
    if line != b"+OK":
        raise SystemExit(f"SET replied {line!r}")
    set_s = time.time() - t
    set_growth = status_kb(pid, "VmHWM:") * 1024 - before

    before_get = reset_peak(pid)
    t = time.time()
    s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
    line, rest = read_line(s, rest)
    if line != b"$%d" % size:
        raise SystemExit(f"GET replied {line[:40]!r}")
    got = bytearray(rest)
    at = 0
    while at < size:
        while len(got) < min(MIB, size - at) + (2 if size - at <= MIB else 0):
            d = s.recv(4 * MIB)
            if not d:
                raise SystemExit("closed during GET")
            got += d
        n = min(MIB, size - at)
        if bytes(got[:n]) != block[:n]:
            raise SystemExit(f"GET: bytes {at}..{at + n} differ")
        del got[:n]
        at += n
    get_s = time.time() - t
    get_growth = status_kb(pid, "VmHWM:") * 1024 - before_get
    # The peak is reset to the RSS of that moment, so growth is never below 0 but for the kB
    # the RSS moved between the reset and reading it.
    set_growth, get_growth = max(0, set_growth), max(0, get_growth)
    print(f"{before / MIB:.0f} {set_growth / MIB:.0f} {set_s:.2f} {get_growth / MIB:.0f} {get_s:.2f}")


main()
