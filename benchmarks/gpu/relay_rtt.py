#!/usr/bin/env python3
"""What the relay really adds to a round trip on this machine, next to what it was asked to add.

A row "behind the 0.3 ms relay" is only as honest as the relay: its own hops (two more loopback
crossings, its threads waking) and a late wake from its timed waits add to the round trip it was
told to add. This script starts a TCP echo server, a `lan-relay` in front of it with the given
RTT, and one with no added RTT, pings each with 500-byte messages (an HTTP request's size) and
prints one JSON line: the nominal RTT and the medians (ms) of what each relay adds over pinging the
echo server directly.

Usage: relay_rtt.py --relay-bin PATH --rtt-ms 0.3 [--pings 400]
"""
import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

MESSAGE = b"x" * 500


def echo_server(port: int):
    """Echo every byte back, one thread per connection (run in its own process: sharing the
    pinging process's interpreter lock made the direct pings vary tenfold)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()

    def serve(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    accept()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ping_ms(port: int, n: int) -> float:
    """Median round trip of `n` pings (after 20 to warm up) on one connection."""
    for _ in range(100):
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit(f"nothing listens on port {port}")
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n + 20):
        t = time.perf_counter()
        conn.sendall(MESSAGE)
        got = 0
        while got < len(MESSAGE):
            chunk = conn.recv(65536)
            if not chunk:
                raise SystemExit("the relay closed the connection")
            got += len(chunk)
        times.append((time.perf_counter() - t) * 1e3)
    conn.close()
    return statistics.median(times[20:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay-bin", required=True)
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--pings", type=int, default=400)
    ap.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.echo:
        echo_server(a.echo)
        return
    echo = free_port()
    relays = {}
    procs = [subprocess.Popen([sys.executable, __file__, "--relay-bin", a.relay_bin,
                               "--rtt-ms", "0", "--echo", str(echo)])]
    try:
        for name, rtt in (("nominal", a.rtt_ms), ("zero", 0.0)):
            port = free_port()
            procs.append(subprocess.Popen(
                [a.relay_bin, "--listen", f"127.0.0.1:{port}", "--to", f"127.0.0.1:{echo}",
                 "--rtt-ms", str(rtt)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            relays[name] = port
        # Interleaved, three rounds, the lowest median of each: a machine's first pings after
        # idling can run 10x slower (seen: the direct ping at 0.085 ms, then 0.007).
        direct, through, zero = ([], [], [])
        for _ in range(3):
            direct.append(ping_ms(echo, a.pings))
            through.append(ping_ms(relays["nominal"], a.pings))
            zero.append(ping_ms(relays["zero"], a.pings))
        direct, through, zero = min(direct), min(through), min(zero)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    print(json.dumps({
        "nominal_rtt_ms": a.rtt_ms,
        "added_rtt_ms": round(through - direct, 3),
        "zero_relay_added_ms": round(zero - direct, 3),
        "direct_ping_ms": round(direct, 3),
        "pings": a.pings,
    }))


if __name__ == "__main__":
    main()
