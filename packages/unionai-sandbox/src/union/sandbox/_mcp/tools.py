"""The tools' bodies: each takes checked arguments and the connection's
:class:`~.slot.SessionSlot` and returns a :class:`ToolResult`.

Everything a call can get wrong (bad arguments, a widening, a missing file, a backend that
cannot run here, a server that went away) comes back as a result with ``is_error`` and a
message that says what to do; only cancellation propagates. Nothing here knows about MCP.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import logging
import posixpath
import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .ceiling import BadArgument, Ceiling, Refused, RunNetwork
from .output import utf8_end, utf8_start
from .runs import OutputLimits, Progress, RunReport, run_command
from .schema import READ_CAP, READ_FILE_MAX, WRITE_MAX, ToolSpec, check_arguments, tool_specs
from .slot import SessionSlot

__all__ = ["ToolResult", "Toolbox", "UnknownTool"]

log = logging.getLogger("union.sandbox.mcp")

#: Entries ``list_dir`` returns at most.
LIST_CAP = 1000
#: Timeout of the small helper runs (``mkdir -p``, ``find``).
_HELPER_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What a tool call returns: text for the model, the same as data, and whether the
    call failed (a refused or impossible request; a command's non-zero exit is not)."""

    text: str
    structured: dict[str, Any] | None = None
    is_error: bool = False


class UnknownTool(LookupError):
    """A call names no tool of this server."""


Body = Callable[[dict[str, Any], SessionSlot, "Progress | None"], Awaitable[ToolResult]]


class Toolbox:
    """The server's tools under one operator's limits."""

    def __init__(
        self,
        ceiling: Ceiling,
        limits: OutputLimits,
        *,
        env: Mapping[str, str],
        reset_note: str,
    ) -> None:
        self.ceiling = ceiling
        self.limits = limits
        self.specs = {spec.name: spec for spec in tool_specs(ceiling, limits)}
        self._env = dict(env)
        self._reset_note = reset_note
        self._bodies: dict[str, Body] = {
            "run_shell": functools.partial(self._run_script, "command", "shell"),
            "run_python": functools.partial(self._run_script, "code", "python"),
            "write_file": self._write_file,
            "read_file": self._read_file,
            "list_dir": self._list_dir,
            "install_packages": self._install_packages,
            "reset_session": self._reset_session,
        }
        assert set(self._bodies) == set(self.specs)

    def spec(self, name: str) -> ToolSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownTool(
                f"unknown tool {name!r}; this server's tools: {', '.join(self.specs)}"
            ) from None

    async def call(
        self,
        name: str,
        arguments: object,
        slot: SessionSlot,
        progress: Progress | None = None,
    ) -> ToolResult:
        """Run tool ``name``; :class:`UnknownTool` when there is none."""
        spec = self.spec(name)
        try:
            checked = check_arguments(spec.schema, arguments)
            return await self._bodies[name](checked, slot, progress)
        except BadArgument as exc:
            return ToolResult(f"invalid arguments for {name}: {exc}", is_error=True)
        except Refused as exc:
            return ToolResult(str(exc), {"refused": True, "flag": exc.flag}, is_error=True)
        except Exception as exc:
            if not _expected(exc):
                log.exception("tool %s failed", name)
            return ToolResult(f"{name} failed: {_describe(exc)}", is_error=True)

    # -- running -----------------------------------------------------------------------

    def _run_env(self, args: Mapping[str, Any]) -> dict[str, str]:
        # The operator's --env wins over the model's: it is configuration, not a request.
        return {**dict(args.get("env") or {}), **self._env}

    async def _run(
        self,
        slot: SessionSlot,
        cmd: str,
        *,
        script_type: str,
        network: RunNetwork,
        args: Mapping[str, Any],
        progress: Progress | None,
    ) -> ToolResult:
        report = await run_command(
            slot,
            cmd,
            script_type=script_type,
            network=network,
            timeout_s=self.ceiling.timeout(args.get("timeout_s")),
            cwd=args.get("cwd"),
            env=self._run_env(args),
            limits=self.limits,
            progress=progress,
        )
        return _run_result(report)

    async def _run_script(
        self,
        key: str,
        script_type: str,
        args: dict[str, Any],
        slot: SessionSlot,
        progress: Progress | None,
    ) -> ToolResult:
        """``run_shell`` (``key`` "command") and ``run_python`` (``key`` "code")."""
        network = self.ceiling.network(args.get("network"), args.get("allow"), args.get("deny"))
        return await self._run(
            slot, args[key], script_type=script_type, network=network, args=args,
            progress=progress,
        )  # fmt: skip

    async def _install_packages(
        self, args: dict[str, Any], slot: SessionSlot, progress: Progress | None
    ) -> ToolResult:
        network = self.ceiling.install_network()
        for spec in args["packages"]:
            if spec.startswith("-") or any(c.isspace() or not c.isprintable() for c in spec):
                raise BadArgument(
                    f"packages: {spec!r} is not a requirement specifier (a name with an "
                    "optional version, e.g. 'pandas>=2'; options such as --index-url are "
                    "the operator's to set)"
                )
        cmd = "uv pip install " + " ".join(shlex.quote(spec) for spec in args["packages"])
        return await self._run(
            slot, cmd, script_type="shell", network=network, args=args, progress=progress
        )

    async def _reset_session(
        self, args: dict[str, Any], slot: SessionSlot, progress: Progress | None
    ) -> ToolResult:
        had = await slot.reset()
        if not had:
            return ToolResult("no session was open: the next call starts a fresh one.")
        return ToolResult(f"The sandbox session was reset. {self._reset_note}")

    # -- files -------------------------------------------------------------------------

    async def _write_file(
        self, args: dict[str, Any], slot: SessionSlot, progress: Progress | None
    ) -> ToolResult:
        content: str = args["content"]
        if args.get("encoding") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadArgument(f"content is not valid base64: {exc}") from None
        else:
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadArgument(f"content is not valid text ({exc.reason}): use base64") from None
        if len(data) > WRITE_MAX:
            raise BadArgument(f"content is over {WRITE_MAX:,} bytes: write it in parts")
        session = await slot.get()
        path, shown = _in_work_dir(session, args["path"])
        mode = 0o755 if args.get("executable") else 0o644
        try:
            written = await session.put_bytes(path, data, mode=mode)
        except FileNotFoundError:
            await _make_parent(session, path)
            written = await session.put_bytes(path, data, mode=mode)
        return ToolResult(f"wrote {written:,} bytes to {shown}", {"path": shown, "bytes": written})

    async def _read_file(
        self, args: dict[str, Any], slot: SessionSlot, progress: Progress | None
    ) -> ToolResult:
        session = await slot.get()
        path, shown = _in_work_dir(session, args["path"])
        try:
            data = await session.get_bytes(path, max_bytes=READ_FILE_MAX)
        except ValueError as exc:
            if "max_bytes" not in str(exc) and "larger" not in str(exc):
                raise
            raise ValueError(
                f"{shown} is larger than {READ_FILE_MAX:,} bytes: look into it with "
                "run_shell instead (head -c, tail -c, grep, sed -n)"
            ) from exc
        size = len(data)
        offset = int(args.get("offset", 0))
        length = int(args.get("length", READ_CAP))
        piece = data[offset : offset + length]
        encoding = args.get("encoding", "text")
        if encoding == "base64":
            content = base64.b64encode(piece).decode("ascii")
            returned = len(piece)
        else:
            at_end = offset + len(piece) >= size
            content, returned = _text_piece(piece, offset > 0, at_end, shown)
        end = offset + returned
        structured = {
            "path": shown,
            "size": size,
            "offset": offset,
            "bytes": returned,
            "encoding": encoding,
            "content": content,
            "more": end < size,
        }
        if offset >= size and size:
            text = f"[{shown} has {size:,} bytes: offset {offset:,} is past its end]"
        elif end < size or offset:
            text = f"{content}\n[bytes {offset:,}-{end:,} of {size:,} in {shown}" + (
                f"; call again with offset={end} for more]" if end < size else "]"
            )
        else:
            text = content
        return ToolResult(text, structured)

    async def _list_dir(
        self, args: dict[str, Any], slot: SessionSlot, progress: Progress | None
    ) -> ToolResult:
        session = await slot.get()
        target = args.get("path") or "."
        shown = "./" + target if target.startswith("-") else target
        depth = int(args.get("depth", 1))
        quoted = shlex.quote(shown)
        # Listed by the sandbox itself: it shows what a run would see, nothing more.
        script = (
            f"[ -d {quoted} ] || {{ echo 'not a directory: '{quoted} >&2; exit 2; }}; "
            f"find -H {quoted} -mindepth 1 -maxdepth {depth} -printf '%y\\t%s\\t%P\\t%l\\0' "
            f"| head -z -n {LIST_CAP + 1}"
        )
        done = await session.exec(script, network_mode="blocked", timeout_s=_HELPER_TIMEOUT_S)
        if not done.ok:
            raise OSError(done.stderr.strip() or f"listing {target} failed ({done.returncode})")
        entries = []
        for record in done.stdout.split("\0"):
            if not record:
                continue
            kind, size, name, link = [*record.split("\t", 3), "", "", ""][:4]
            entries.append(
                {
                    "name": name,
                    "type": _KINDS.get(kind, kind),
                    "size": int(size) if size.isdigit() else None,
                    **({"target": link} if kind == "l" else {}),
                }
            )
        more = len(entries) > LIST_CAP
        entries = sorted(entries[:LIST_CAP], key=lambda e: str(e["name"]))
        lines = [_entry_line(e) for e in entries]
        header = f"{target}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        if more:
            header += f" (the first {LIST_CAP}; list a subdirectory, or less depth, for more)"
        text = header + (":\n" + "\n".join(lines) if lines else "")
        return ToolResult(text, {"path": target, "entries": entries, "truncated": more})


_KINDS = {"f": "file", "d": "dir", "l": "link", "p": "fifo", "s": "socket", "c": "chardev",
          "b": "blockdev"}  # fmt: skip


def _entry_line(entry: Mapping[str, Any]) -> str:
    name = entry["name"]
    if entry["type"] == "dir":
        return f"{name}/"
    if entry["type"] == "link":
        return f"{name} -> {entry.get('target', '')}"
    if entry["type"] == "file":
        return f"{name}  ({entry['size']:,} bytes)" if entry["size"] is not None else name
    return f"{name}  ({entry['type']})"


def _run_result(report: RunReport) -> ToolResult:
    return ToolResult(report.text(), report.structured(), is_error=report.failed_to_run)


def _in_work_dir(session: Any, path: str) -> tuple[str, str]:
    """(absolute path for the session's file API, the path as shown to the model)."""
    work = session.work_dir
    full = posixpath.normpath(path if path.startswith("/") else posixpath.join(work, path))
    inside = full == work or full.startswith(work.rstrip("/") + "/")
    shown = posixpath.relpath(full, work) if inside else full
    return full, shown


async def _make_parent(session: Any, path: str) -> None:
    """Create ``path``'s missing parents with a run, so they are the sandbox's own."""
    parent = posixpath.dirname(path)
    done = await session.exec(
        f"mkdir -p -- {shlex.quote(parent)}", network_mode="blocked", timeout_s=_HELPER_TIMEOUT_S
    )
    if not done.ok:
        raise FileNotFoundError(done.stderr.strip() or f"could not create {parent}")


def _text_piece(piece: bytes, mid_file: bool, at_end: bool, shown: str) -> tuple[str, int]:
    """A slice of a file as text: (text, bytes it covers from the slice's start), without a
    character cut in two at either end; binary data is refused (base64 reads it)."""
    start = utf8_start(piece) if mid_file else 0
    end = len(piece) if at_end else start + utf8_end(piece[start:])
    try:
        text = piece[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{shown} is not UTF-8 text; read it with encoding='base64'") from None
    if "\0" in text:
        raise ValueError(f"{shown} looks binary (it has NUL bytes); read it with encoding='base64'")
    return text, end


def _expected(exc: BaseException) -> bool:
    """Errors a call can cause by itself (reported to the model, not logged as bugs)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (OSError, ValueError, TypeError, RuntimeError)) or bool(
        names & {"ExecutionError", "SessionPolicyMismatch", "ConnectError", "SandboxLaunchError"}
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text if len(text) < 2000 else text[:2000] + "..."
