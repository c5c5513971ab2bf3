"""Loopback servers and socket helpers for the network suites.

The helpers serve the host side of a test and the Python programs a test runs in a sandbox
alike: :data:`SOCKET_HELPERS` is their source, for a program to paste in (a sandboxed run
cannot import the test suites).
"""

from __future__ import annotations

import contextlib
import inspect
import selectors
import socket
import threading

__all__ = ["SOCKET_HELPERS", "SelectEchoServer", "read_http_head", "recv_exactly"]


def read_http_head(sock: socket.socket) -> bytes:
    """Read a response head (through the blank line) one byte at a time, so that nothing
    after it is consumed; less if the peer closes first."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            break
        head += byte
    return head


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read ``n`` bytes; fewer if the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


#: The source of :func:`read_http_head` and :func:`recv_exactly`, for a sandboxed program.
SOCKET_HELPERS = "\n\n".join(inspect.getsource(f) for f in (read_http_head, recv_exactly))


class SelectEchoServer:
    """TCP echo on the host's ``127.0.0.1`` served by one thread however many connections it
    holds, so that a test can count the caller's (or the proxy's) threads with
    ``threading.active_count()`` (a thread-per-connection server would add its own)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self.sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        sock.send(data)
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                self._selector.unregister(sock)
                sock.close()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    @property
    def connections(self) -> int:
        """Connections open now (the listener not counted)."""
        return len(self._selector.get_map()) - 1

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
