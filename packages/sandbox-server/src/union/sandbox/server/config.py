"""``sandbox-server`` settings: the flags of reference-api §2.15 and the security options."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence

from union.sandbox.core.on_device.fs import check_work_dir

__all__ = ["TOKEN_ENV", "ServerConfig", "build_parser", "parse_args"]

#: Environment variable holding the bearer token (preferred over ``--token``, which shows up
#: in ``ps`` output).
TOKEN_ENV = "UNION_SANDBOX_TOKEN"
_MIB = 1024 * 1024
BACKENDS = ("bubblewrap", "userns", "sandbox-exec", "none")
_ALIASES = {"bwrap": "bubblewrap", "userns-lite": "userns", "sandboxexec": "sandbox-exec"}


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; :func:`parse_args` builds one from the command line."""

    backend: str = "bubblewrap"
    host: str = "0.0.0.0"
    port: int = 50051
    work_dir: str = "/work"
    max_runtime_s: float = 300.0
    mem_ceiling_mb: int = 1024
    cpu_ceiling_milli: int = 4000
    gpu_ceiling: int = 0
    fsize_ceiling_mb: int = 4096
    session_pids: int = 0
    """Processes all runs together may have at once; 0 = the library's default."""
    force_no_network: bool = False
    max_put_bytes: int = 64 * _MIB
    """0 means no cap."""
    max_get_bytes: int = 64 * _MIB
    """0 means no cap."""
    max_message_bytes: int = 16 * _MIB
    """Largest request message other than file data (Execute scripts, env...)."""
    python: str | None = None
    extra_read_only: tuple[str, ...] = ()
    fetch_root: str | None = None
    token: str | None = None
    """``None`` only with ``no_auth``."""
    no_auth: bool = False
    worker_class: str = "asyncio"
    strict_limits: bool = False
    """Fail a run whose limits cannot all be enforced (default: enforce what can be, and say
    which were skipped in each run's isolation report)."""
    graceful_timeout_s: float = 5.0
    log_level: str = "info"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


def _addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--addr must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _non_negative(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value!r}")
        return number

    return parse


def build_parser(prog: str = "sandbox-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="ConnectRPC sandbox server (union-sandbox): serves one sandbox session "
        "(sandbox.v2.SandboxService) over HTTP/1.1 and h2c.",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version")
    parser.add_argument(
        "--backend",
        default="bubblewrap",
        help="isolation backend: bubblewrap, userns, none (startup fails if it cannot run "
        "here; never downgraded). Default: bubblewrap",
    )
    parser.add_argument(
        "--addr", type=_addr, default=("0.0.0.0", 50051), help="HOST:PORT (default 0.0.0.0:50051)"
    )
    parser.add_argument("--work-dir", default="/work", help="the session work dir (default /work)")
    parser.add_argument(
        "--max-runtime-s",
        type=_non_negative(float),
        default=300.0,
        help="per-Execute wall-clock cap and default timeout (default 300)",
    )
    parser.add_argument(
        "--mem-ceiling-mb",
        type=_non_negative(int),
        default=1024,
        help="memory ceiling per Execute in MiB, 0 = none (default 1024)",
    )
    parser.add_argument(
        "--cpu-ceiling-milli",
        type=_non_negative(int),
        default=4000,
        help="CPU ceiling per Execute in millicores, 0 = none (default 4000)",
    )
    parser.add_argument(
        "--gpu-ceiling",
        type=_non_negative(int),
        default=0,
        help="most GPUs one Execute may request; 0 denies GPUs (default 0)",
    )
    parser.add_argument(
        "--fsize-ceiling-mb",
        type=_non_negative(int),
        default=4096,
        help="largest file a run may write, MiB, 0 = none (default 4096)",
    )
    parser.add_argument(
        "--session-pids",
        type=_non_negative(int),
        default=0,
        help="most processes all runs together may have at once, 0 = the default "
        "(min(8192, kernel.pid_max / 4)); see docs/limits.md",
    )
    parser.add_argument(
        "--force-no-network", action="store_true", help="refuse every Execute that asks for network"
    )
    parser.add_argument(
        "--fetch-root",
        default=None,
        help="accepted for compatibility (FetchFile/FetchDir are not served)",
    )
    parser.add_argument(
        "--max-put-bytes-mb",
        type=_non_negative(int),
        default=64,
        help="largest PutBytes payload in MiB, 0 = no cap (default 64)",
    )
    parser.add_argument(
        "--max-get-bytes-mb",
        type=_non_negative(int),
        default=64,
        help="largest GetBytes payload in MiB, 0 = no cap (default 64)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=_non_negative(int),
        default=16,
        help="largest other request message in MiB (default 16)",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="base interpreter of Python runs; must be the interpreter running "
        "the server (the session venv is built from it)",
    )
    parser.add_argument(
        "--extra-read-only", default="", help="comma-separated host paths every run may read"
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token",
        default=None,
        help=f"bearer token clients must send (prefer the {TOKEN_ENV} env var)",
    )
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help="accept requests without a token (local development only)",
    )
    parser.add_argument(
        "--worker-class",
        choices=("asyncio", "uvloop", "trio"),
        default="asyncio",
        help="event loop (default asyncio)",
    )
    parser.add_argument(
        "--strict-limits",
        action="store_true",
        help="fail runs whose limits cannot all be enforced on this host",
    )
    parser.add_argument(
        "--graceful-timeout-s",
        type=_non_negative(float),
        default=5.0,
        help="how long shutdown waits for streams to finish (default 5)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = "sandbox-server") -> ServerConfig:
    """Parse the command line (and ``$UNION_SANDBOX_TOKEN``); exits with a message on errors."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"sandbox-server {__version__}")
        raise SystemExit(0)
    backend = _ALIASES.get(args.backend, args.backend)
    if backend not in BACKENDS:
        parser.error(
            f"unknown sandbox backend {args.backend!r}; expected one of "
            + ", ".join(repr(b) for b in BACKENDS)
        )
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not args.no_auth:
        parser.error(
            f"a bearer token is required: set {TOKEN_ENV} (or pass --token), or run with "
            "--no-auth to accept unauthenticated requests (local development only)"
        )
    if args.no_auth:
        token = None
    if token is not None and len(token) < 16:
        parser.error("the bearer token must be at least 16 characters")
    if not os.path.isabs(args.work_dir):
        parser.error(f"--work-dir must be an absolute path, got {args.work_dir!r}")
    try:
        check_work_dir(os.path.normpath(args.work_dir), "--work-dir")
    except ValueError as exc:
        parser.error(str(exc))
    extra = tuple(p.strip() for p in args.extra_read_only.split(",") if p.strip())
    for path in extra:
        if not os.path.isabs(path):
            parser.error(f"--extra-read-only entries must be absolute paths, got {path!r}")
    if args.python is not None:
        wanted = os.path.realpath(args.python) if os.sep in args.python else None
        mine = {
            os.path.realpath(sys.executable),
            os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        }
        if args.python != "python3" and wanted not in mine:
            parser.error(
                "--python must be the interpreter running sandbox-server (the session venv "
                f"is built from it): run `{args.python} -m union.sandbox.server ...` instead"
            )
    host, port = args.addr
    mib = _MIB
    return ServerConfig(
        backend=backend,
        host=host,
        port=port,
        work_dir=os.path.normpath(args.work_dir),
        max_runtime_s=float(args.max_runtime_s) or 300.0,
        mem_ceiling_mb=args.mem_ceiling_mb,
        cpu_ceiling_milli=args.cpu_ceiling_milli,
        gpu_ceiling=args.gpu_ceiling,
        fsize_ceiling_mb=args.fsize_ceiling_mb,
        session_pids=args.session_pids,
        force_no_network=args.force_no_network,
        max_put_bytes=args.max_put_bytes_mb * mib,
        max_get_bytes=args.max_get_bytes_mb * mib,
        max_message_bytes=max(args.max_message_mb, 1) * mib,
        python=args.python,
        extra_read_only=extra,
        fetch_root=args.fetch_root,
        token=token,
        no_auth=bool(args.no_auth),
        worker_class=args.worker_class,
        strict_limits=args.strict_limits,
        graceful_timeout_s=args.graceful_timeout_s,
        log_level=args.log_level,
    )
