"""The MCP wiring: a low-level ``mcp`` :class:`~mcp.server.Server` whose ``tools/list``
and ``tools/call`` are the :class:`~.tools.Toolbox`, and where each call finds its session.

- stdio: one client per process, so one :class:`~.slot.SessionSlot` for the server's life
  (:class:`OneSlot`), closed by the transport's owner when the client goes.
- streamable HTTP: one slot per MCP session (:class:`PerConnection`), kept in the SDK's
  per-connection state and closed by the connection's exit stack when the MCP session ends
  (the client's DELETE, the idle timeout, the server's shutdown). The SDK 2.x hands request
  handlers that connection only through ``ctx.session`` (its ``Context`` rework will make it
  public); :func:`_connection` is the one place that reaches it. A stateless request of the
  2026 protocol has no connection to keep a sandbox in, so over HTTP the server declines
  ``server/discover`` (clients then use the session-based handshake) and refuses such calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import mcp_types as types
from mcp.server import Server
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from union.sandbox.core import __version__

from .runs import Progress
from .schema import instructions
from .slot import SessionSlot
from .tools import Toolbox, UnknownTool

__all__ = ["OneSlot", "PerConnection", "build_server"]

_STATE_KEY = "union.sandbox.session"


class Slots(Protocol):
    def for_request(self, ctx: ServerRequestContext[Any, Any]) -> SessionSlot: ...


class OneSlot:
    """The stdio server's single session."""

    def __init__(self, slot: SessionSlot) -> None:
        self.slot = slot

    def for_request(self, ctx: ServerRequestContext[Any, Any]) -> SessionSlot:
        return self.slot


class NoConnection(RuntimeError):
    """A call that came without an MCP session to keep a sandbox in."""


class PerConnection:
    """A session per MCP session of the HTTP transport; :meth:`close_all` closes the ones
    the connections did not (the server is stopping)."""

    def __init__(
        self,
        opener: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
        *,
        limit: int,
    ) -> None:
        self._opener = opener
        self._limit = limit
        self._live: set[SessionSlot] = set()

    def for_request(self, ctx: ServerRequestContext[Any, Any]) -> SessionSlot:
        connection = _connection(ctx)
        slot = connection.state.get(_STATE_KEY)
        if isinstance(slot, SessionSlot):
            return slot
        if connection.session_id is None:
            raise NoConnection(
                "this server keeps a sandbox session per MCP session, and this request "
                "came without one (a stateless request): connect with the session-based "
                "protocol (an initialize handshake, protocol version 2025-11-25 or earlier)"
            )
        if len(self._live) >= self._limit:
            raise NoConnection(
                f"this server already holds {self._limit} sandbox sessions (its "
                "--max-sessions): close another MCP session first"
            )
        slot = SessionSlot(self._opener)
        self._live.add(slot)
        connection.state[_STATE_KEY] = slot

        async def drop() -> None:
            self._live.discard(slot)
            await slot.close()

        connection.exit_stack.push_async_callback(drop)
        return slot

    async def close_all(self) -> None:
        for slot in list(self._live):
            self._live.discard(slot)
            await slot.close()


def _connection(ctx: ServerRequestContext[Any, Any]) -> Connection:
    connection = getattr(ctx.session, "_connection", None)
    if isinstance(connection, Connection):
        return connection
    raise RuntimeError(
        "this version of the mcp SDK does not give request handlers their connection "
        "the way 2.x does; install the version unionai-sandbox[mcp] names (mcp>=2.3,<3)"
    )


def build_server(toolbox: Toolbox, slots: Slots, *, http: bool) -> Server[Any]:
    """The MCP server for ``toolbox``, finding each call's session through ``slots``."""
    listed = types.ListToolsResult(
        tools=[
            types.Tool(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema=spec.schema,
                annotations=types.ToolAnnotations(
                    title=spec.title,
                    read_only_hint=spec.read_only,
                    destructive_hint=spec.destructive,
                    idempotent_hint=spec.idempotent,
                    open_world_hint=spec.open_world,
                ),
            )
            for spec in toolbox.specs.values()
        ]
    )

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return listed

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            toolbox.spec(params.name)
        except UnknownTool as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=str(exc)) from None
        try:
            slot = slots.for_request(ctx)
        except (NoConnection, RuntimeError) as exc:
            return _error(str(exc))
        result = await toolbox.call(params.name, params.arguments, slot, _progress(ctx))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=result.text)],
            structured_content=result.structured,
            is_error=result.is_error,
        )

    server: Server[Any] = Server(
        "unionai-sandbox",
        version=__version__,
        title="unionai-sandbox",
        instructions=instructions(toolbox.ceiling),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    # The SDK's per-message OpenTelemetry middleware: a no-op without an exporter (this
    # command installs none), yet about 0.2 ms of CPU per call (a tenth of the overhead).
    server.middleware.clear()
    if http:
        server.add_request_handler("server/discover", types.RequestParams, _no_discover)
    return server


def _progress(ctx: ServerRequestContext[Any, Any]) -> Progress | None:
    meta: Any = ctx.meta or {}
    if meta.get("progress_token", meta.get("progressToken")) is None:
        return None  # the client asked for no progress: no reporter task per run

    async def report(elapsed: float, total: float, message: str | None) -> None:
        await ctx.session.report_progress(elapsed, total, message)

    return report


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


async def _no_discover(
    ctx: ServerRequestContext[Any, Any], params: types.RequestParams
) -> types.EmptyResult:
    raise MCPError(
        code=types.METHOD_NOT_FOUND,
        message="this server keeps a sandbox per MCP session: use the initialize handshake",
    )
