"""netproxy throughput (issue 4 figure), against a direct download measured in the same run.

    uv run python tools/bench/bench_netproxy.py [--size-mib 256] [--rounds 5]
        [--clients curl,python] [--relay splice,copy] [--json out.json]

A loopback HTTP server sends a ``--size-mib`` file (from /dev/shm, with ``sendfile``) to:
- ``direct``: the client straight to the server (the baseline);
- ``connect``: through the HTTP proxy's ``CONNECT`` tunnel (``curl -p -x``);
- ``forward``: through the HTTP proxy as an absolute-form ``GET http://...`` (``curl -x``);
- ``socks5``: through the SOCKS5 proxy (``curl --socks5-hostname``).

Clients: ``curl -o /dev/null``, and a small Python client reading with a 1 MiB buffer (curl's
own 16-100 KiB reads make it the bottleneck on a small machine, which hides the proxy's
cost). Each (path, client) is measured ``--rounds`` times, interleaved, and reported as
median and best GB/s (10^9 bytes per second), with the relay method(s) compared.

Not a test: nothing here asserts a speed. Run it on an idle machine; on a shared 2-core VM
the spread between rounds is large, so compare medians from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Literal

from union.sandbox.core.netproxy import DecisionLog, ProxyHost, RuleSet, make_listeners

RelayMethod = Literal["splice", "copy"]


def make_blob(size: int) -> str:
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="bench-netproxy-", dir=directory)
    chunk = os.urandom(1 << 20)
    with os.fdopen(fd, "wb") as f:
        for _ in range(size >> 20):
            f.write(chunk)
        f.write(chunk[: size & ((1 << 20) - 1)])
    return path


class BlobServer:
    """``GET /anything`` answers the blob with ``sendfile`` (zero-copy), one thread each."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % self.size
            )
            with open(self.path, "rb") as f:
                conn.sendfile(f)
            conn.shutdown(socket.SHUT_WR)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass


def curl_download(path: str, proxy: dict[str, int], server_port: int, size: int) -> float:
    url = f"http://127.0.0.1:{server_port}/blob"
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}"]
    if path == "connect":
        args += ["-p", "-x", f"http://127.0.0.1:{proxy['http']}"]
    elif path == "forward":
        args += ["-x", f"http://127.0.0.1:{proxy['http']}"]
    elif path == "socks5":
        args += ["--socks5-hostname", f"127.0.0.1:{proxy['socks5']}"]
    start = time.perf_counter()
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    if int(out.stdout) != size:
        raise RuntimeError(f"curl got {out.stdout} bytes, expected {size}")
    return size / elapsed / 1e9


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("connection closed during the proxy handshake")
        data += chunk
    return data


def python_download(path: str, proxy: dict[str, int], server_port: int, size: int) -> float:
    start = time.perf_counter()
    target = ("127.0.0.1", server_port)
    request_target = "/blob"
    if path == "direct":
        sock = socket.create_connection(target)
    elif path == "connect":
        sock = socket.create_connection(("127.0.0.1", proxy["http"]))
        sock.sendall(f"CONNECT 127.0.0.1:{server_port} HTTP/1.1\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += _recv_exactly(sock, 1)
        if not reply.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"CONNECT failed: {reply!r}")
    elif path == "forward":
        sock = socket.create_connection(("127.0.0.1", proxy["http"]))
        request_target = f"http://127.0.0.1:{server_port}/blob"
    else:
        sock = socket.create_connection(("127.0.0.1", proxy["socks5"]))
        sock.sendall(b"\x05\x01\x00")
        if _recv_exactly(sock, 2) != b"\x05\x00":
            raise RuntimeError("SOCKS5 method negotiation failed")
        sock.sendall(
            b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + server_port.to_bytes(2, "big")
        )
        reply = _recv_exactly(sock, 10)
        if reply[1] != 0:
            raise RuntimeError(f"SOCKS5 CONNECT failed: code {reply[1]}")
    with sock:
        sock.sendall(f"GET {request_target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        buf = bytearray(1 << 20)
        received = 0
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            received += n
    elapsed = time.perf_counter() - start
    if received < size:
        raise RuntimeError(f"got {received} bytes, expected at least {size}")
    return size / elapsed / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="curl,python")
    parser.add_argument("--relay", default="splice,copy")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    size = args.size_mib << 20
    clients = [c for c in args.clients.split(",") if c]
    methods: list[RelayMethod] = [m for m in ("splice", "copy") if m in args.relay.split(",")]
    blob = make_blob(size)
    server = BlobServer(blob)
    hosts: dict[str, ProxyHost] = {}
    proxies: dict[str, dict[str, int]] = {}
    try:
        for method in methods:
            host = ProxyHost(relay_method=method)
            listeners = make_listeners()
            proxies[method] = {kind: sock.getsockname()[1] for kind, sock in listeners}
            host.serve("bench", listeners, RuleSet.parse(["127.0.0.1/32"], []), DecisionLog())
            hosts[method] = host
        cases: list[tuple[str, str, str]] = [(c, "direct", "-") for c in clients]
        cases += [
            (c, p, m) for c in clients for m in methods for p in ("connect", "forward", "socks5")
        ]
        results: dict[tuple[str, str, str], list[float]] = {case: [] for case in cases}
        download = {"curl": curl_download, "python": python_download}
        for client, path, relay in cases:  # warm-up: page cache, pipe sizes, worker threads
            download[client](path, proxies.get(relay, {}), server.port, size)
        for _ in range(args.rounds):
            for case in cases:
                client, path, relay = case
                results[case].append(
                    download[client](path, proxies.get(relay, {}), server.port, size)
                )
    finally:
        for host in hosts.values():
            host.close()
        os.unlink(blob)
    print(
        f"{args.size_mib} MiB download over loopback, {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    header = ("client", "path", "relay", "median GB/s", "best GB/s", "vs direct")
    print(
        f"{header[0]:8} {header[1]:8} {header[2]:7} {header[3]:>12} {header[4]:>10} {header[5]:>10}"
    )
    table = []
    for (client, path, relay), values in results.items():
        median = statistics.median(values)
        direct = statistics.median(results[(client, "direct", "-")])
        row = {
            "client": client,
            "path": path,
            "relay": relay,
            "median_gbps": round(median, 3),
            "best_gbps": round(max(values), 3),
            "vs_direct": round(median / direct, 3),
        }
        table.append(row)
        print(
            f"{client:8} {path:8} {relay:7} {median:12.2f} {max(values):10.2f} "
            f"{median / direct:10.0%}"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                {"size_mib": args.size_mib, "rounds": args.rounds, "rows": table}, f, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
