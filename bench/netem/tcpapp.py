"""The application at each end of the emulated link: bulk sink/source and echo/request timing.

    tcpapp.py sink --port P --seconds S          # count bytes of one connection for S s
    tcpapp.py send --to HOST:PORT --seconds S    # write until the peer closes or S s pass
    tcpapp.py echo --port P                      # echo server (any number of connections)
    tcpapp.py rr --to HOST:PORT --count N --size B       # request/response latency
    tcpapp.py connect --to HOST:PORT --count N   # connect() -> first echoed byte, new conns

Plain blocking sockets: 100 Mbit/s is nothing for Python, and each mode prints one JSON line.
The sink times from its first received byte, so connection set-up (and a tunnel's token
round trip) is not counted as transfer time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time

CHUNK = 256 * 1024
CC = ""  # TCP congestion control for every socket (--cc); "" keeps the namespace default


def _tune(sock: socket.socket) -> socket.socket:
    """Per-socket congestion control: a namespace's sysctl may only pick the host's *allowed*
    algorithms, but root may set any available one with TCP_CONGESTION."""
    if CC:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, CC.encode())
    return sock


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _listen(port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _tune(srv)
    srv.bind(("0.0.0.0", port))
    srv.listen(512)
    return srv


def _connect(to: str) -> socket.socket:
    sock = _tune(socket.socket())
    sock.connect(_addr(to))
    return sock


def sink(port: int, seconds: float) -> dict[str, float]:
    srv = _listen(port)
    conn, _ = srv.accept()
    srv.close()
    got = 0
    first = conn.recv(CHUNK)
    t0 = time.monotonic()
    stop = t0 + seconds
    conn.settimeout(1.0)
    while time.monotonic() < stop:
        try:
            data = conn.recv(CHUNK)
        except TimeoutError:
            continue
        if not data:
            break
        got += len(data)
    elapsed = min(time.monotonic(), stop) - t0
    conn.close()
    return {"bytes": got + len(first), "seconds": elapsed, "mbit": got * 8 / elapsed / 1e6}


def send(to: str, seconds: float) -> dict[str, float]:
    conn = _connect(to)
    block = os.urandom(CHUNK)
    sent = 0
    stop = time.monotonic() + seconds
    conn.settimeout(1.0)
    try:
        while time.monotonic() < stop:
            try:
                sent += conn.send(block)
            except TimeoutError:
                continue
    except OSError:
        pass  # the sink closed after its window
    conn.close()
    return {"bytes_sent": sent}


def echo(port: int) -> None:
    srv = _listen(port)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _recv_exactly(conn: socket.socket, n: int) -> None:
    while n > 0:
        data = conn.recv(n)
        if not data:
            raise ConnectionError("closed")
        n -= len(data)


def _summary(samples: list[float]) -> dict[str, float]:
    samples.sort()
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
    }


def rr(to: str, count: int, size: int) -> dict[str, float]:
    conn = _connect(to)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = os.urandom(size)
    conn.sendall(msg)  # warm up: the first exchange may include a tunnel's set-up
    _recv_exactly(conn, size)
    samples = []
    for _ in range(count):
        t0 = time.monotonic()
        conn.sendall(msg)
        _recv_exactly(conn, size)
        samples.append(time.monotonic() - t0)
    conn.close()
    return _summary(samples)


def connect(to: str, count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        t0 = time.monotonic()
        conn = _connect(to)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"x")
        _recv_exactly(conn, 1)
        samples.append(time.monotonic() - t0)
        conn.close()
        time.sleep(0.05)
    return _summary(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sink", "send", "echo", "rr", "connect"])
    ap.add_argument("--port", type=int, default=5201)
    ap.add_argument("--to", default="")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size", type=int, default=1)
    ap.add_argument("--cc", default="", help="TCP congestion control (cubic, bbr, reno)")
    args = ap.parse_args()
    global CC
    CC = args.cc
    if args.mode == "sink":
        result: dict[str, float] = sink(args.port, args.seconds)
    elif args.mode == "send":
        result = send(args.to, args.seconds)
    elif args.mode == "echo":
        echo(args.port)
        return
    elif args.mode == "rr":
        result = rr(args.to, args.count, args.size)
    else:
        result = connect(args.to, args.count)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
