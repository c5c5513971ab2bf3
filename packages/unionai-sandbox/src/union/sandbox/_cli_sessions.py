"""The sessions ``unionai-sandbox run`` / ``shell`` work on, by where the sandbox lives:

- on this machine (the default): an on-device session;
- ``--endpoint URL``: a running ``sandbox-server`` (``sb.remote.session``), its token from
  ``--token`` or ``$UNION_SANDBOX_TOKEN``;
- ``--flyte``: a sandbox launched as a Flyte run (``sb.session``) with the Flyte config the
  ``flyte`` CLI would use (none: Flyte's local mode, a local process), showing the launch's
  steps on stderr while it comes up; ``--env NAME`` picks the sandbox environment.

Options that only mean something on this machine (``--ro``, ``--rw``, ``--work-dir``) are
refused with the others; ``--backend`` becomes a check of the server's backend
(``--endpoint``) or the sandbox mode (``--flyte``); ``--memory`` / ``--cpu`` / ``--pids``
are each run's resource request.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from union.sandbox.core.resources import Resources

if TYPE_CHECKING:
    from union.sandbox.core.on_device import OnDeviceSession

__all__ = [
    "TOKEN_ENV",
    "UsageError",
    "flyte_environment",
    "open_session",
    "start_on_device",
    "validate_target",
]

TOKEN_ENV = "UNION_SANDBOX_TOKEN"
_DEFAULT_BACKEND = "bubblewrap"
_LOCAL_ONLY = (("ro", "--ro"), ("rw", "--rw"), ("work_dir", "--work-dir"))
_PROGRESS_POLL_S = 0.1


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


def flyte_environment(args: argparse.Namespace) -> str | None:
    """The ``--env NAME`` of ``--flyte`` (an ``--env`` value without ``=``), if any."""
    names = [str(item) for item in args.env if "=" not in item]
    if not names:
        return None
    if not getattr(args, "flyte", False):
        raise UsageError(
            f"--env takes KEY=VALUE, got {names[0]!r} (a bare NAME picks the sandbox "
            "environment, with --flyte only)"
        )
    if len(names) > 1:
        raise UsageError(f"--flyte takes one sandbox environment (--env NAME), got {names}")
    return names[0]


def validate_target(args: argparse.Namespace) -> None:
    """Refuse option mixes that cannot mean anything, before any session opens."""
    remote = "--endpoint" if args.endpoint else "--flyte" if args.flyte else None
    if args.endpoint and args.flyte:
        raise UsageError("--endpoint and --flyte are two ways to reach a sandbox: pick one")
    if remote is None:
        for flag in ("--token", "--project", "--domain"):
            if getattr(args, flag[2:]) is not None:
                raise UsageError(f"{flag} goes with --endpoint or --flyte")
        return
    for attr, flag in _LOCAL_ONLY:
        if getattr(args, attr):
            raise UsageError(
                f"{flag} sets up a sandbox on this machine; with {remote} the sandbox is "
                "elsewhere (stage files with --put instead)"
            )
    if args.endpoint and (args.project or args.domain):
        raise UsageError("--project / --domain go with --flyte")
    if args.flyte and args.token:
        raise UsageError("--token goes with --endpoint (--flyte makes its own)")
    if args.endpoint and "://" not in args.endpoint:
        raise UsageError(f"--endpoint takes a URL such as http://host:8080, got {args.endpoint!r}")


def _network(args: argparse.Namespace) -> tuple[str, list[str] | None, list[str] | None]:
    mode = "allowlist" if args.allow and args.network == "blocked" else args.network
    return mode, args.allow or None, args.deny or None


def _resources(args: argparse.Namespace) -> Resources | None:
    if args.memory or args.cpu or args.pids is not None:
        return Resources(cpu=args.cpu, memory=args.memory, pids=args.pids)
    return None


def _on_device(args: argparse.Namespace) -> OnDeviceSession:
    # Imported here: a session elsewhere (--endpoint, --flyte) needs no on-device engine.
    from union.sandbox.core.on_device import OnDeviceSession

    mode, allow, deny = _network(args)
    return OnDeviceSession(
        backend=args.backend or _DEFAULT_BACKEND,
        network_mode=mode,
        network_allowlist=allow,
        network_denylist=deny,
        read_only_paths=args.ro,
        read_write_paths=args.rw,
        host_work_dir=os.path.abspath(args.work_dir) if args.work_dir else None,
        timeout_s=args.timeout,
        resources=_resources(args),
    )


def _say(text: str) -> None:
    print(f"unionai-sandbox: {text}", file=sys.stderr, flush=True)


def start_on_device(args: argparse.Namespace) -> OnDeviceSession | None:
    """For a sandbox on this machine, its session, started now (``OnDeviceSession.start()``,
    callable before an event loop exists, so its supervisor boots while the loop's modules
    load); ``None`` for a sandbox elsewhere. Hand it to :func:`open_session`."""
    if args.flyte or args.endpoint:
        return None
    return _on_device(args).start()


@asynccontextmanager
async def open_session(
    args: argparse.Namespace, started: OnDeviceSession | None = None
) -> AsyncIterator[Any]:
    """The session for ``args``, open for the block, closed (and, for ``--flyte``, its run
    aborted) after it. ``started``: the on-device session :func:`start_on_device` made."""
    if args.flyte:
        async with _flyte_session(args) as session:
            yield session
        return
    if args.endpoint:
        from union.sandbox.client import session as remote_session

        mode, allow, deny = _network(args)
        remote = remote_session(
            endpoint=args.endpoint,
            token=args.token or os.environ.get(TOKEN_ENV) or None,
            resources=_resources(args),
            network_mode=mode,
            network_allowlist=allow,
            network_denylist=deny,
            verify_backend=args.backend,
        )
        async with remote:
            yield remote
        return
    async with started or _on_device(args) as local:
        yield local


@asynccontextmanager
async def _flyte_session(args: argparse.Namespace) -> AsyncIterator[Any]:
    import flyte

    from union.sandbox.flyte import session

    flyte.init_from_config()  # as the flyte CLI: its config files, or none (local mode)
    mode, allow, deny = _network(args)
    sandbox_mode = {"bubblewrap": "bwrap", "bwrap": "bwrap", "userns": "userns", None: None}
    if args.backend not in sandbox_mode:
        raise UsageError(f"--flyte runs the userns or bubblewrap backend, got {args.backend!r}")
    sbx = await session(
        environment=flyte_environment(args),
        sandbox_mode=sandbox_mode[args.backend],
        project=args.project,
        domain=args.domain,
        network_mode=mode,
        network_allowlist=allow,
        network_denylist=deny,
    )
    url = sbx.url or ""
    where = f"Flyte's local mode, log {url}" if url.startswith("file:") else url or "no URL"
    _say(f"launching sandbox {sbx.name} ({where})")
    progress = _Progress(sbx)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress.follow)
            try:
                await sbx.open()  # the endpoint, then the server's health
            finally:
                tg.cancel_scope.cancel()
        progress.show()
        yield sbx
    finally:
        await sbx.close()


class _Progress:
    """Prints a launch's steps on stderr as they happen (submitted, pod scheduled, image
    pulled, server ready)."""

    def __init__(self, sbx: Any) -> None:
        self._sbx = sbx
        self._seen = 0

    def show(self) -> None:
        steps = self._sbx.progress
        for step in steps[self._seen :]:
            _say(str(step))
        self._seen = len(steps)

    async def follow(self) -> None:
        while True:
            self.show()
            await anyio.sleep(_PROGRESS_POLL_S)
