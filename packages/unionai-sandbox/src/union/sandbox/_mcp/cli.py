"""``unionai-sandbox mcp``: the command line of the MCP server.

    unionai-sandbox mcp [sandbox options] [--allow-install] [--max-output BYTES]
    unionai-sandbox mcp --http HOST:PORT [...]   (token: $UNION_SANDBOX_MCP_TOKEN)

The sandbox options are ``run``'s (``--backend``, ``--network`` / ``--allow`` / ``--deny``,
``--timeout``, ``--memory``..., ``--endpoint URL`` or ``--flyte [--env NAME]``), and they
are the ceiling of every tool call. Everything is checked before the server starts, and
the ``mcp`` SDK is imported only then, so a usage error is immediate and a missing SDK
names the extra to install.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from union.sandbox._cli import _parse_env, _session_options
from union.sandbox._cli_sessions import (
    UsageError,
    _network,
    flyte_environment,
    open_session,
    validate_target,
)
from union.sandbox.core.netproxy.rules import parse_rule
from union.sandbox.core.policy import validate_network

from .ceiling import Ceiling
from .runs import OutputLimits

__all__ = ["TOKEN_ENV", "build_parser", "is_loopback", "main"]

#: The bearer token HTTP clients must send.
TOKEN_ENV = "UNION_SANDBOX_MCP_TOKEN"
_MIN_TOKEN = 16
_DEFAULT_MAX_OUTPUT = 16 * 1024
_DEFAULT_MAX_SESSIONS = 16
#: Idle MCP sessions over HTTP (and their sandboxes) are closed after this long.
_IDLE_TIMEOUT_S = 30 * 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unionai-sandbox mcp",
        description="A Model Context Protocol server over one live sandbox session (per "
        "client over HTTP). Its tools run shell commands and Python, move files and install "
        "packages; the sandbox options below are the ceiling every tool call stays within "
        "(a call may narrow them, never widen them). Serves stdio unless --http is given.",
    )
    _session_options(parser)
    group = parser.add_argument_group("MCP server")
    group.add_argument(
        "--allow-install",
        action="store_true",
        help="let the install_packages tool reach PyPI (sb.PYPI_HOSTS) through the filtering "
        "proxy even when runs may not (without it, installs need a network ceiling that "
        "covers PyPI)",
    )
    group.add_argument(
        "--max-output",
        type=int,
        default=_DEFAULT_MAX_OUTPUT,
        metavar="BYTES",
        help="bytes of each output stream a result shows, head and tail halves; the whole "
        f"stream goes to a file of the work dir (default {_DEFAULT_MAX_OUTPUT})",
    )
    group.add_argument(
        "--event-loop",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop of the stdio server (default asyncio; --http runs on asyncio)",
    )
    http = parser.add_argument_group("streamable HTTP (instead of stdio)")
    http.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=f"serve streamable HTTP at http://HOST:PORT/mcp; clients must send the bearer "
        f"token in ${TOKEN_ENV}. One sandbox session per MCP session",
    )
    http.add_argument(
        "--http-token",
        metavar="TOKEN",
        help=f"the bearer token (prefer ${TOKEN_ENV}: arguments are visible to other users)",
    )
    http.add_argument(
        "--no-auth",
        action="store_true",
        help="accept requests without a token: only on a loopback address (local "
        "development), never elsewhere",
    )
    http.add_argument(
        "--max-sessions",
        type=int,
        default=_DEFAULT_MAX_SESSIONS,
        metavar="N",
        help=f"most MCP sessions (each with its sandbox) at once (default {_DEFAULT_MAX_SESSIONS})",
    )
    return parser


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the server needs, checked."""

    ceiling: Ceiling
    limits: OutputLimits
    env: dict[str, str]
    opener: Callable[[], Any]
    reset_note: str
    http: tuple[str, int] | None
    token: str | None


def configure(args: argparse.Namespace) -> Config:
    """Check ``args`` (:class:`UsageError` names the problem) and derive the server's
    configuration: nothing has started yet."""
    env = _parse_env(args.env)
    validate_target(args)
    flyte_environment(args)
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.event_loop == "trio" and importlib.util.find_spec("trio") is None:
        raise UsageError("--event-loop trio needs trio: pip install trio")
    if args.max_output < 2:
        raise UsageError(f"--max-output must be at least 2 bytes, got {args.max_output}")
    mode, allow, deny = _network(args)
    try:
        validate_network(mode, allow, deny)
        for rule in [*(allow or ()), *(deny or ())]:
            parse_rule(rule)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    ceiling = Ceiling(
        mode=mode,
        allow=tuple(allow or ()),
        deny=tuple(deny or ()),
        timeout_s=float(args.timeout),
        allow_install=args.allow_install,
    )
    session_args = _session_args(args, ceiling)
    if not (args.endpoint or args.flyte):
        from union.sandbox._cli_sessions import _on_device

        try:
            _on_device(session_args)  # checks paths, limits and rules; opens nothing
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    http, token = _http_options(args)
    head = args.max_output // 2
    return Config(
        ceiling=ceiling,
        limits=OutputLimits(head=head, tail=args.max_output - head),
        env=env,
        opener=lambda: open_session(session_args),
        reset_note=_reset_note(args),
        http=http,
        token=token,
    )


def _session_args(args: argparse.Namespace, ceiling: Ceiling) -> argparse.Namespace:
    """The options a session opens with: the widest posture any allowed call may use (a
    remote sandbox's network is fixed when it opens; each run then narrows it)."""
    opened = ceiling.session_network()
    session_args = copy.copy(args)
    session_args.network = opened.mode
    session_args.allow = list(opened.allow or ())
    session_args.deny = list(opened.deny or ())
    return session_args


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listening address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _http_options(args: argparse.Namespace) -> tuple[tuple[str, int] | None, str | None]:
    if not args.http:
        for flag, given in (
            ("--http-token", args.http_token),
            ("--no-auth", args.no_auth),
            ("--max-sessions", args.max_sessions != _DEFAULT_MAX_SESSIONS),
        ):
            if given:
                raise UsageError(f"{flag} goes with --http")
        return None, None
    host, sep, port_text = args.http.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise UsageError(f"--http takes HOST:PORT (e.g. 127.0.0.1:8765), got {args.http!r}")
    if args.work_dir:
        raise UsageError(
            "--work-dir pins one directory, and --http opens a sandbox per client: use "
            "--work-dir with the stdio server"
        )
    if args.event_loop != "asyncio":
        raise UsageError("--http serves on asyncio (uvicorn): leave --event-loop out")
    if args.max_sessions < 1:
        raise UsageError(f"--max-sessions must be at least 1, got {args.max_sessions}")
    token = args.http_token or os.environ.get(TOKEN_ENV) or None
    if args.no_auth:
        if token is not None:
            raise UsageError(f"--no-auth and a token (${TOKEN_ENV} / --http-token): pick one")
        if not is_loopback(host):
            raise UsageError(
                f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, "
                f"localhost), not {host!r}: anyone who can reach {host} could run code. Set "
                f"${TOKEN_ENV} instead"
            )
    elif token is None:
        raise UsageError(
            f"--http needs a bearer token: set ${TOKEN_ENV} (at least {_MIN_TOKEN} "
            "characters; clients send it as 'Authorization: Bearer <token>'), or, on a "
            "loopback address only, pass --no-auth"
        )
    elif len(token) < _MIN_TOKEN or not token.isprintable() or " " in token:
        raise UsageError(
            f"the bearer token must be at least {_MIN_TOKEN} printable characters without spaces"
        )
    return (host, int(port_text)), token


def _reset_note(args: argparse.Namespace) -> str:
    if args.endpoint:
        return (
            f"Running commands were stopped; the sandbox-server at {args.endpoint} serves one "
            "sandbox and keeps its work dir and files."
        )
    if args.flyte:
        return "Its Flyte run was aborted; the next call launches a new sandbox."
    if args.work_dir:
        return (
            f"Running commands were killed; the work dir {os.path.abspath(args.work_dir)} was "
            "pinned by the operator (--work-dir) and keeps its files."
        )
    return "Running commands were killed; its work dir and installed packages are gone."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = configure(args)
    except UsageError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="unionai-sandbox mcp: %(levelname)s %(name)s: %(message)s",
    )
    try:
        from . import server  # the mcp SDK, from here on
    except ImportError as exc:
        print(
            f"unionai-sandbox mcp needs the MCP SDK: pip install 'unionai-sandbox[mcp]' ({exc})",
            file=sys.stderr,
        )
        return 1
    from .tools import Toolbox

    toolbox = Toolbox(config.ceiling, config.limits, env=config.env, reset_note=config.reset_note)
    try:
        if config.http is not None:
            return _run_http(server, toolbox, config, args.max_sessions)
        return int(anyio.run(_serve_stdio, server, toolbox, config, backend=args.event_loop))
    except KeyboardInterrupt:
        return 130


async def _serve_stdio(server: Any, toolbox: Any, config: Config) -> int:
    from .slot import SessionSlot
    from .stdio import stdio_transport

    slot = SessionSlot(config.opener)
    mcp_server = server.build_server(toolbox, server.OneSlot(slot), http=False)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, tg.cancel_scope)
            async with stdio_transport() as (read_stream, write_stream):
                await mcp_server.run(
                    read_stream, write_stream, mcp_server.create_initialization_options()
                )
            tg.cancel_scope.cancel()  # the client closed stdin: done
    finally:
        await slot.close()
    return 0


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            scope.cancel()
            return


def _run_http(server: Any, toolbox: Any, config: Config, max_sessions: int) -> int:
    from .http import MCP_PATH, bind, serve_http

    assert config.http is not None
    host, port = config.http
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"unionai-sandbox mcp: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    auth = "bearer token required" if config.token else "NO authentication (loopback only)"
    print(
        f"unionai-sandbox mcp: streamable HTTP at http://{shown}:{bound[1]}{MCP_PATH} ({auth})",
        file=sys.stderr,
        flush=True,
    )
    registry = server.PerConnection(config.opener, limit=max_sessions)
    mcp_server = server.build_server(toolbox, registry, http=True)

    async def serve() -> None:
        try:
            await serve_http(
                mcp_server,
                sock,
                token=config.token,
                max_sessions=max_sessions,
                idle_timeout_s=_IDLE_TIMEOUT_S,
                on_stop=registry.close_all,
            )
        finally:
            await registry.close_all()

    anyio.run(serve, backend="asyncio")
    return 0
