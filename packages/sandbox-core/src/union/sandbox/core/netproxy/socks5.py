"""The SOCKS5 front end (RFC 1928), for TCP clients that honour ``ALL_PROXY``.

Supported: the "no authentication" method, or username/password (RFC 1929) when the
run's proxy requires credentials (then the only method offered), and the CONNECT command,
with IPv4, IPv6 and domain-name targets (``socks5h://`` clients send names, which the proxy
resolves itself). Everything else is answered with the RFC's codes and the connection
closed: no acceptable method (``0xFF``), command not supported (``0x07``: BIND, UDP
ASSOCIATE), address type not supported (``0x08``), connection not allowed by ruleset
(``0x02``: a policy refusal), host unreachable (``0x04``: the name did not resolve, or
connecting timed out), connection refused (``0x05``), network unreachable (``0x03``). A
greeting that is not SOCKS5 is closed without a reply. Every read is bounded in size and
time.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import anyio

from .context import ProxyContext, tunnel
from .sockio import DialError, Reader, dial, linger_close, send_all

__all__ = ["handle_socks5", "socks_reply"]

VERSION = 5
NO_AUTH, USER_PASSWORD, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
AUTH_VERSION = 0x01  # RFC 1929's sub-negotiation
CMD_CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_DIAL_ERRORS = {
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ENETUNREACH: NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,
    errno.ETIMEDOUT: HOST_UNREACHABLE,
}


def socks_reply(code: int) -> bytes:
    """A reply with an all-zero bound address (the proxy's own address is not disclosed)."""
    return bytes((VERSION, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


class _Abort(Exception):
    """Stop the handshake; send ``reply`` (if any) and record ``reason``."""

    def __init__(self, reason: str, reply: int | None, host: str = "", port: int = 0) -> None:
        super().__init__(reason)
        self.reply = reply
        self.host = host
        self.port = port


async def _need(reader: Reader, n: int) -> bytes:
    data = await reader.read_exactly(n)
    if data is None:
        raise _Abort("", None)  # the client left mid-handshake: nothing to say or record
    return data


async def _handshake(client: socket.socket, reader: Reader, ctx: ProxyContext) -> tuple[str, int]:
    """Method negotiation (and authentication) and the request; the target ``(host,
    port)`` of a CONNECT."""
    version, count = await _need(reader, 2)
    if version != VERSION:
        # Recorded only where every client is the run's (no credentials to check).
        reason = "" if ctx.credentials else f"not a SOCKS5 greeting (version byte {version:#04x})"
        raise _Abort(reason, None)
    methods = await _need(reader, count) if count else b""
    if ctx.credentials is not None:
        await _authenticate(client, reader, methods, ctx)
    elif NO_AUTH not in methods:
        await send_all(client, bytes((VERSION, NO_ACCEPTABLE)))
        raise _Abort("the client offered no acceptable method (only 'no authentication')", None)
    else:
        await send_all(client, bytes((VERSION, NO_AUTH)))
    version, command, _reserved, atyp = await _need(reader, 4)
    if version != VERSION:
        raise _Abort(f"bad SOCKS5 request version {version:#04x}", GENERAL_FAILURE)
    if atyp == ATYP_IPV4:
        host = str(ipaddress.IPv4Address(await _need(reader, 4)))
    elif atyp == ATYP_IPV6:
        host = str(ipaddress.IPv6Address(await _need(reader, 16)))
    elif atyp == ATYP_DOMAIN:
        (length,) = await _need(reader, 1)
        if length == 0:
            raise _Abort("empty domain name in SOCKS5 request", GENERAL_FAILURE)
        # Latin-1 keeps every byte visible; non-ASCII names are then refused as invalid.
        host = (await _need(reader, length)).decode("latin-1")
    else:
        raise _Abort(f"address type {atyp:#04x} not supported", ADDRESS_TYPE_NOT_SUPPORTED)
    port = int.from_bytes(await _need(reader, 2), "big")
    if command != CMD_CONNECT:
        raise _Abort(
            f"SOCKS5 command {command:#04x} not supported (only CONNECT)",
            COMMAND_NOT_SUPPORTED,
            host,
            port,
        )
    return host, port


async def _authenticate(
    client: socket.socket, reader: Reader, methods: bytes, ctx: ProxyContext
) -> None:
    """RFC 1929 username/password, required: a client without this run's credentials is
    refused and not recorded among the run's decisions (it is not the run's)."""
    if USER_PASSWORD not in methods:
        await send_all(client, bytes((VERSION, NO_ACCEPTABLE)))
        raise _Abort("", None)
    await send_all(client, bytes((VERSION, USER_PASSWORD)))
    version, user_length = await _need(reader, 2)
    user = await _need(reader, user_length) if user_length else b""
    (password_length,) = await _need(reader, 1)
    password = await _need(reader, password_length) if password_length else b""
    if version != AUTH_VERSION or not ctx.accepts(user, password):
        await send_all(client, bytes((AUTH_VERSION, 0x01)))
        raise _Abort("", None)
    await send_all(client, bytes((AUTH_VERSION, 0x00)))


async def handle_socks5(client: socket.socket, ctx: ProxyContext) -> None:
    """Serve one connection accepted on a SOCKS5 listener; owns (closes) ``client``."""
    try:
        client.setblocking(False)
        reader = Reader(client)
        try:
            with anyio.fail_after(ctx.handshake_timeout):
                host, port = await _handshake(client, reader, ctx)
        except TimeoutError:
            return
        except _Abort as exc:
            if str(exc):
                ctx.decisions.record(
                    host=exc.host,
                    port=exc.port,
                    allowed=False,
                    rule=None,
                    reason=f"malformed SOCKS5 request: {exc}",
                    protocol="socks5",
                )
            if exc.reply is not None:
                await _answer(client, exc.reply)
            else:
                await linger_close(client, drain_s=0.2)
            return
        await _serve(client, reader, host, port, ctx)
    except OSError:
        pass  # the client went away (reset, broken pipe): nothing left to answer
    finally:
        client.close()


async def _answer(client: socket.socket, code: int) -> None:
    try:
        with anyio.move_on_after(5):
            await send_all(client, socks_reply(code))
    except OSError:
        pass
    await linger_close(client)


async def _serve(
    client: socket.socket, reader: Reader, host: str, port: int, ctx: ProxyContext
) -> None:
    decision = await ctx.rules.decide(host, port)
    index = ctx.decisions.record(
        host=decision.host,
        port=decision.port,
        allowed=decision.allowed,
        rule=decision.rule,
        reason=decision.reason,
        protocol="socks5",
    )
    if not decision.allowed:
        await _answer(client, HOST_UNREACHABLE if decision.network_error else NOT_ALLOWED)
        return
    try:
        upstream = await dial(decision.addresses, decision.port, ctx.connect_timeout)
    except DialError as exc:
        ctx.decisions.update(index, reason=f"{decision.reason}; connecting failed: {exc}")
        await _answer(client, _DIAL_ERRORS.get(exc.errno, GENERAL_FAILURE))
        return
    try:
        await send_all(client, socks_reply(SUCCEEDED))
    except OSError:
        upstream.close()
        return
    await tunnel(ctx, index, client, upstream, reader.take_rest())
