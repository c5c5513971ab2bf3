"""Non-blocking socket I/O for the handshakes, on raw sockets driven by the event loop.

The proxies work on plain ``socket.socket`` objects rather than anyio streams because, once
a handshake is done, the descriptors go to the relay threads (:mod:`.relay`) for zero-copy
``splice``; nothing else may be reading them then. Every helper here works under asyncio
and trio.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket

import anyio

__all__ = ["DialError", "Reader", "dial", "linger_close", "send_all"]


class Reader:
    """Buffered reads from a non-blocking socket; what was read but not used is kept."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    async def fill(self, max_bytes: int = 65536) -> bool:
        """Read once more (at most ``max_bytes``); False at end of stream."""
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except (BlockingIOError, InterruptedError):
                await anyio.wait_readable(self.sock)
                continue
            if not data:
                return False
            self.buffer += data
            return True

    async def read_exactly(self, n: int) -> bytes | None:
        """``n`` bytes, or None if the stream ended first."""
        while len(self.buffer) < n:
            if not await self.fill(max(n - len(self.buffer), 4096)):
                return None
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def take_rest(self) -> bytes:
        """Everything buffered but not consumed (sent on after the handshake)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking socket."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def linger_close(sock: socket.socket, drain_s: float = 1.0) -> None:
    """Close after a reply so the peer reads it: half-close, drain briefly, then close.

    Closing with unread input makes the kernel send a reset, which can destroy a reply the
    peer has not read yet (a refusal sent while the client was still writing).
    """
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        with anyio.move_on_after(drain_s):
            drained = 0
            while drained < (1 << 20):
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    await anyio.wait_readable(sock)
                    continue
                except OSError:
                    break
                if not data:
                    break
                drained += len(data)
    finally:
        sock.close()


class DialError(Exception):
    """Every address failed; ``errno`` is the last failure's (``ETIMEDOUT`` for a timeout)."""

    def __init__(self, message: str, error: int) -> None:
        super().__init__(message)
        self.errno = error


async def dial(addresses: tuple[str, ...], port: int, limit_s: float) -> socket.socket:
    """Connect to the first of ``addresses`` that answers, within ``limit_s`` overall.

    The addresses are the ones the rule check passed; nothing is resolved here.
    """
    if not addresses:
        raise DialError("no address to connect to", errno.EHOSTUNREACH)
    failures: list[str] = []
    last = errno.EHOSTUNREACH
    # An address that hangs must not use up the whole budget when others remain.
    per_try = limit_s if len(addresses) == 1 else max(limit_s / len(addresses), 2.0)
    with anyio.move_on_after(limit_s) as overall:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:  # out of descriptors, family unsupported
                last = exc.errno or errno.EHOSTUNREACH
                failures.append(f"{_join(address, port)}: {exc.strerror or exc}")
                continue
            try:
                sock.setblocking(False)
                with anyio.move_on_after(per_try) as attempt:
                    code = sock.connect_ex((address, port))
                    if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                        await anyio.wait_writable(sock)
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        return sock
                if attempt.cancelled_caught:
                    code = errno.ETIMEDOUT
            except BaseException:
                sock.close()
                raise
            sock.close()
            last = code
            failures.append(f"{_join(address, port)}: {os.strerror(code)}")
    if overall.cancelled_caught:
        last = errno.ETIMEDOUT
        failures.append(f"timed out after {limit_s:g} s")
    raise DialError("; ".join(failures), last)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
