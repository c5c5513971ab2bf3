"""``unionai-sandbox``: run a command in a fresh sandbox, open an interactive sandbox shell,
check what this host supports, or serve sessions over HTTP.

    unionai-sandbox run [options] -- CMD [ARGS...]
    unionai-sandbox shell [options]
    unionai-sandbox run|shell --endpoint URL [options]   (a running sandbox-server)
    unionai-sandbox run|shell --flyte [--env NAME] [options]   (a sandbox as a Flyte run)
    unionai-sandbox doctor [--json]
    unionai-sandbox serve [sandbox-server options]
    unionai-sandbox mcp [options]   (a Model Context Protocol server; the [mcp] extra)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import shlex
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from union.sandbox.core import __version__
from union.sandbox.core.constants import DEFAULT_RUN_TIMEOUT_S, PIPE
from union.sandbox.core.errors import (
    BackendUnavailableError,
    ExecutionError,
    SessionPolicyMismatch,
    SessionTemplateMismatch,
)

from ._cli_sessions import (
    UsageError,
    flyte_environment,
    open_session,
    start_on_device,
    validate_target,
)

if TYPE_CHECKING:
    from union.sandbox.core.on_device import OnDeviceSession

# Each command imports what it needs when it runs (the on-device engine for a local run or
# shell, the client for --endpoint, the doctor's probes for doctor, the server for serve):
# a one-shot process pays for its own command only (``python -X importtime -m
# union.sandbox._cli ...``; tools/bench/bench_cli.py).

__all__ = ["main"]


def _session_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sandbox")
    group.add_argument(
        "--backend",
        default=None,
        help="isolation backend: bubblewrap (default), userns or none; with --endpoint, the "
        "backend the server must run; with --flyte, the sandbox mode (userns or bubblewrap)",
    )
    group.add_argument(
        "--network",
        default="blocked",
        choices=["blocked", "open", "allowlist"],
        help="network posture (default: blocked)",
    )
    group.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="RULE",
        help="allow-list entry (host, *.domain or CIDR); repeat; implies --network allowlist",
    )
    group.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="RULE",
        help="deny-list entry, checked before the allow-list; repeat",
    )
    group.add_argument(
        "--ro",
        action="append",
        default=[],
        metavar="PATH",
        help="extra host path readable by the sandbox; repeat",
    )
    group.add_argument(
        "--rw",
        action="append",
        default=[],
        metavar="PATH",
        help="extra host path writable by the sandbox; repeat",
    )
    group.add_argument(
        "--work-dir",
        metavar="DIR",
        help="host directory to use as the work dir (kept after exit); "
        "default: a fresh temporary one",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_RUN_TIMEOUT_S,
        metavar="S",
        help=f"per-command wall-clock limit in seconds (default {DEFAULT_RUN_TIMEOUT_S:g})",
    )
    group.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 512Mi")
    group.add_argument("--cpu", metavar="CPUS", help="CPU limit, e.g. 1 or 500m")
    group.add_argument("--pids", type=int, metavar="N", help="most processes at once")
    group.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the command; repeat. With --flyte, a bare NAME picks "
        "the sandbox environment to launch (NAME.sandbox_server)",
    )
    where = parser.add_argument_group("where the sandbox runs (default: on this machine)")
    where.add_argument(
        "--endpoint",
        metavar="URL",
        help="use the sandbox-server at URL (its bearer token: --token or $UNION_SANDBOX_TOKEN)",
    )
    where.add_argument(
        "--token",
        help="bearer token for --endpoint (prefer $UNION_SANDBOX_TOKEN: arguments are visible "
        "to other users)",
    )
    where.add_argument(
        "--flyte",
        action="store_true",
        help="launch the sandbox as a Flyte run (sb.session) with the flyte CLI's config; "
        "without one, Flyte's local mode runs it here. Shows the launch's progress",
    )
    where.add_argument("--project", help="Flyte project for --flyte (default: the config's)")
    where.add_argument("--domain", help="Flyte domain for --flyte (default: the config's)")


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            continue  # a bare NAME: the sandbox environment of --flyte
        if not key:
            raise UsageError(f"--env takes KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _split_pair(item: str, flag: str) -> tuple[str, str]:
    left, sep, right = item.partition(":")
    if not sep or not left or not right:
        raise UsageError(f"{flag} takes SOURCE:DEST, got {item!r}")
    return left, right


def _check_arguments(args: argparse.Namespace) -> None:
    """Everything checkable before a session opens, so bad input never runs anything."""
    _parse_env(args.env)
    validate_target(args)
    flyte_environment(args)
    if args.command_name == "run":
        if not args.command:
            raise UsageError(
                "nothing to run: give the command after --, e.g. "
                "`unionai-sandbox run -- python3 -c 'print(1)'`"
            )
        for item in args.put:
            _split_pair(item, "--put")
        for item in args.get:
            _split_pair(item, "--get")


def _in_work_dir(session: Any, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(session.work_dir, path)


class _StartupGc:
    """Garbage collection held off while the console script starts (:func:`console_main`);
    never for :func:`main` called from Python, whatever that program did with the
    collector."""

    held = False

    @classmethod
    def hold(cls) -> None:
        cls.held = True
        gc.disable()

    @classmethod
    def resume(cls) -> None:
        """What start-up made is frozen first (``gc.freeze()``: out of every later
        collection's way), or the first collection would walk all of it, which is the work
        the hold-off saved."""
        if cls.held:
            cls.held = False
            gc.freeze()
            gc.enable()


async def _run(args: argparse.Namespace, started: OnDeviceSession | None = None) -> int:
    _StartupGc.resume()  # the event loop's modules are loaded: from here on, the run
    env = _parse_env(args.env)
    async with open_session(args, started) as session:
        for item in args.put:
            local, remote = _split_pair(item, "--put")
            data = await anyio.Path(local).read_bytes()
            await session.put_bytes(_in_work_dir(session, remote), data)
        piped = not sys.stdin.isatty()
        proc = await session.run(
            shlex.join(args.command),
            stdout=sys.stdout,
            stderr=sys.stderr,
            stdin=PIPE if piped else None,
            env=env,
            cwd=args.cwd,
        )
        outcome = await _wait_feeding(proc) if piped else await _wait(proc)
        if isinstance(outcome, ExecutionError):
            print(f"unionai-sandbox: {outcome}", file=sys.stderr)
            return 125
        code = outcome
        for item in args.get:
            remote, local = _split_pair(item, "--get")
            try:
                data = await session.get_bytes(_in_work_dir(session, remote))
                await anyio.Path(local).write_bytes(data)
            except (OSError, ValueError) as exc:
                print(f"unionai-sandbox: --get {item}: {exc}", file=sys.stderr)
                return code or 125
        if args.json:
            import json

            assert proc.termination is not None
            report = {
                "returncode": code,
                "termination": proc.termination.kind.value,
                "reason": proc.termination_reason,
                "runtime_ms": proc.runtime_ms,
                "backend": proc.backend,
                "isolation": proc.isolation and proc.isolation.__dict__,
                "network_decisions": [d.__dict__ for d in proc.network_decisions],
            }
            print(json.dumps(report, default=str), file=sys.stderr)
        return code


async def _wait(proc: Any) -> int | ExecutionError:
    """The exit code, or the error of a run that never ran to a real exit."""
    try:
        return int(await proc.wait())
    except ExecutionError as exc:
        return exc


async def _wait_feeding(proc: Any) -> int | ExecutionError:
    """:func:`_wait`, copying our standard input to the command's meanwhile: a command that
    writes while it reads (``cat``) must have its output forwarded as it reads, or both
    pipes fill up and wait on each other. The copy stops when the command ends. Errors
    come out as they would without the copy beside the wait (not in an exception group):
    the copy's first (a server gone while it wrote says so), else the wait's."""
    errors: list[Exception] = []

    async def pump() -> None:
        try:
            await _pump_stdin(proc.stdin)
        except Exception as exc:
            errors.append(exc)

    outcome: int | ExecutionError = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        try:
            outcome = await _wait(proc)
        except Exception as exc:
            errors.append(exc)
        tg.cancel_scope.cancel()  # an ended command takes no more input
    if errors:
        raise errors[0]
    return outcome


async def _pump_stdin(stdin: Any) -> None:
    """Copy our standard input to the command's, then close it (a command that exits
    without reading all of it is fine)."""
    read = _stdin_reader(sys.stdin.fileno())
    try:
        while chunk := await read():
            await stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        with anyio.CancelScope(shield=True):
            await stdin.aclose()


def _stdin_reader(fd: int) -> Callable[[], Awaitable[bytes]]:
    """Reads of our standard input that a cancellation can stop: a pipe or socket is
    waited on by the event loop (read once readable: nobody else reads it), a regular file
    never blocks, and anything else is read in a thread that a cancellation abandons."""
    mode = os.fstat(fd).st_mode

    async def read_when_ready() -> bytes:
        await anyio.wait_readable(fd)
        return os.read(fd, _STDIN_CHUNK)

    async def read_now() -> bytes:
        return os.read(fd, _STDIN_CHUNK)

    async def read_in_thread() -> bytes:
        return await anyio.to_thread.run_sync(os.read, fd, _STDIN_CHUNK, abandon_on_cancel=True)

    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return read_when_ready
    return read_now if stat.S_ISREG(mode) else read_in_thread


_STDIN_CHUNK = 1 << 16


async def _shell(args: argparse.Namespace) -> int:
    env = _parse_env(args.env)
    async with open_session(args) as session:
        print(
            f"sandbox shell ({session.backend}); work dir {session.work_dir}. Each line runs "
            "in a fresh process of the same session: files in the work dir persist, /tmp "
            "does not. `exit` or Ctrl-D to leave.",
            file=sys.stderr,
        )
        cwd: str | None = None
        last = 0
        while True:
            try:
                line = await anyio.to_thread.run_sync(_prompt, f"sandbox [{last}]$ ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            line = line.strip()
            if not line:
                continue
            words = _words(line)
            if words and words[0] in ("exit", "quit", "logout") and len(words) <= 2:
                return int(words[1]) if len(words) == 2 and words[1].isdigit() else last
            if words and words[0] == "cd" and len(words) <= 2:
                target = words[1] if len(words) == 2 else session.work_dir
                result = await session.exec(f"cd -- {shlex.quote(target)} && pwd", cwd=cwd, env=env)
                if result.ok:
                    cwd = result.stdout.strip().splitlines()[-1]
                else:
                    print(result.stderr, end="", file=sys.stderr)
                last = result.returncode
                continue
            proc = await session.run(line, stdout=sys.stdout, stderr=sys.stderr, env=env, cwd=cwd)
            try:
                last = await proc.wait()
            except ExecutionError as exc:
                print(f"unionai-sandbox: {exc}", file=sys.stderr)
                last = 125


def _prompt(text: str) -> str:
    """Read a line, writing the prompt to stderr so that stdout carries only output."""
    sys.stderr.write(text)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def _words(line: str) -> list[str]:
    """Shell words of ``line``, or ``[]`` when it is more than one simple command."""
    if any(op in line for op in (";", "&", "|", "(", ")", "<", ">", "`", "$(")):
        return []
    try:
        return shlex.split(line)
    except ValueError:
        return []


def _doctor(args: argparse.Namespace) -> int:
    from union.sandbox.core.on_device.doctor import doctor_report, format_doctor

    report = doctor_report()
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_doctor(report))
    return 0 if any(b["available"] for b in report["backends"] if b["name"] != "none") else 1


def _serve(argv: list[str]) -> int:
    try:
        serve_main = importlib.import_module("union.sandbox.server.__main__").main
    except ImportError as exc:
        raise SystemExit(
            f"unionai-sandbox serve needs the server: pip install unionai-sandbox-server ({exc})"
        ) from exc
    result: Any = serve_main(argv)
    return int(result or 0)


def _mcp(argv: list[str]) -> int:
    # Imported here only: no other command loads the MCP server (or, through it, the SDK).
    from ._mcp.cli import main as mcp_main

    return mcp_main(argv)


def _terminal_columns() -> int:
    """The terminal's width as :func:`shutil.get_terminal_size` finds it: ``$COLUMNS``,
    else stdout's terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80
    return columns or 80  # a terminal nobody sized yet says 0


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without :mod:`shutil`: argparse makes one for every
    ``add_argument`` and would import shutil (bz2 and lzma with it) at every start."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


class _Parser(argparse.ArgumentParser):
    """An argument parser (the top one and each command's) with :class:`_HelpFormatter`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unionai-sandbox",
        description="Run untrusted code in sandbox sessions on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"unionai-sandbox {__version__}")
    commands = parser.add_subparsers(
        dest="command_name",
        required=True,
        metavar="COMMAND",
        parser_class=_Parser,
    )

    run = commands.add_parser(
        "run",
        help="run one command in a fresh sandbox session and exit with its code",
        description="Run CMD in a fresh sandbox session. Output streams live; the exit code is "
        "the command's (125 when the sandbox itself failed).",
    )
    _session_options(run)
    run.add_argument("--cwd", help="working directory (relative to the work dir)")
    run.add_argument(
        "--put",
        action="append",
        default=[],
        metavar="LOCAL:PATH",
        help="copy a local file into the work dir before running; repeat",
    )
    run.add_argument(
        "--get",
        action="append",
        default=[],
        metavar="PATH:LOCAL",
        help="copy a file out of the work dir after running; repeat",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary (termination, isolation) on stderr at the end",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    shell = commands.add_parser(
        "shell",
        help="interactive session: each line runs in the same sandbox session",
        description="A line-by-line shell over one sandbox session.",
    )
    _session_options(shell)

    doctor = commands.add_parser(
        "doctor",
        help="which backends can run here, and what blocks the others",
        description="Preflight check: probes every backend for real and names the host setting "
        "that blocks each unavailable one, with the fix.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser(
        "serve",
        help="serve sessions over HTTP (the sandbox-server)",
        add_help=False,
        description="Same as `sandbox-server`; see `unionai-sandbox serve --help`.",
    )
    commands.add_parser(
        "mcp",
        help="a Model Context Protocol server over a sandbox session (for agent hosts)",
        add_help=False,
        description="See `unionai-sandbox mcp --help`.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["run"]:
        _StartupGc.resume()  # the long-lived commands (a shell, a server) collect as usual
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:1] == ["mcp"]:
        return _mcp(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command_name == "doctor":
        return _doctor(args)
    if args.command_name == "run" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        _check_arguments(args)
    except UsageError as exc:
        build_parser().error(str(exc))
    try:
        if args.command_name == "run":
            # A session on this machine starts before the event loop: the sandbox's
            # supervisor boots in its own process while the loop's modules load.
            started = start_on_device(args)
            try:
                return anyio.run(_run, args, started)
            except BaseException:
                if started is not None:
                    anyio.run(started.close)  # idempotent: a failure before its own close
                raise
        return anyio.run(_shell, args)
    except BackendUnavailableError as exc:
        print(f"unionai-sandbox: {exc}", file=sys.stderr)
        return 125
    except UsageError as exc:
        build_parser().error(str(exc))
    except (ValueError, TypeError, PermissionError, FileNotFoundError) as exc:
        print(f"unionai-sandbox: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _sandbox_failure(exc):
            raise
        print(f"unionai-sandbox: {exc}", file=sys.stderr)
        return 125


def _sandbox_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the sandbox could not be reached or launched (exit 125): a
    transport error, a server that is not what was asked for, a launch or run error of the
    Flyte layer, a launch deadline."""
    if isinstance(exc, (TimeoutError, SessionTemplateMismatch, SessionPolicyMismatch)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectError", "SandboxLaunchError", "SandboxRunEnded"})


def console_main() -> None:
    """The ``unionai-sandbox`` console script: :func:`main`, then exit without tearing the
    interpreter down. Everything the command opened is closed by then (the session's
    ``async with`` ended it); what is left is freeing every module and object one by one,
    about a tenth of a one-shot run's time for nothing."""
    # Start-up allocates what lives as long as the process (modules, classes, the parser):
    # collecting while it runs finds nothing to free and cost ~5 ms of a one-shot run here
    # (45 collections). A one-shot run resumes collection once its event loop is up
    # (_StartupGc.resume); the other commands at once.
    _StartupGc.hold()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a reader that went away, or a closed stream: nothing more to say
    os._exit(code)


if __name__ == "__main__":
    console_main()
