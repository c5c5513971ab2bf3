"""Size limits of what one run hands the kernel: its arguments, environment and cwd.

A run's request travels to the session's sandbox supervisor as one message on a unix
socket, whose send buffer bounds it (about 208 KB with Linux's default
``net.core.wmem_default``), and then becomes an ``execve``, which refuses a single argument
or variable over 128 KiB (``MAX_ARG_STRLEN``) and any string with a NUL byte. We take the
smaller of those as one documented limit and check it before anything runs, on the caller's
side and again on the server's, so that an oversized request is a clear ``ValueError``
rather than a failed run or a "dead" supervisor. A script longer than fits goes to the
command through a file descriptor instead of ``argv``, so ``cmd`` itself is not limited.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = [
    "MAX_ARGS_BYTES",
    "MAX_PATH_BYTES",
    "args_fit",
    "args_size",
    "check_cmd",
    "check_run_args",
]

#: The command's arguments and environment together, counted as the kernel does: each
#: string's bytes plus its NUL terminator, an environment entry as ``KEY=value``. It is also
#: the kernel's limit on one string.
MAX_ARGS_BYTES = 128 * 1024
#: A path the kernel accepts (``PATH_MAX`` with its NUL): the cwd, and the program of ``argv``.
MAX_PATH_BYTES = 4095


def _encoded(value: str) -> bytes:
    return os.fsencode(value)


def args_size(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Bytes ``argv`` and ``env`` take in an ``execve``."""
    size = sum(len(_encoded(arg)) + 1 for arg in argv)
    return size + sum(len(_encoded(k)) + len(_encoded(v)) + 2 for k, v in env.items())


def args_fit(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether ``argv`` and ``env`` are within :data:`MAX_ARGS_BYTES`. Counts characters
    first (a character is at most 4 bytes): only a request near the limit is encoded."""
    chars = len("".join(argv)) + len("".join(env)) + len("".join(env.values()))
    if 4 * (chars + len(argv) + 2 * len(env)) <= MAX_ARGS_BYTES:
        return True
    return args_size(argv, env) <= MAX_ARGS_BYTES


def check_cmd(cmd: str) -> None:
    """``cmd`` (a shell or Python script) is text: no NUL byte."""
    if "\0" in cmd:
        raise ValueError(
            f"cmd contains a NUL byte (at offset {cmd.index(chr(0))}), which a shell or "
            "Python script cannot carry; remove it (pass binary data through stdin or a file)"
        )


def check_run_args(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    *,
    argv_given: bool = True,
    fits: bool | None = None,
) -> None:
    """Raise ``ValueError`` naming the problem and the fix when a run's ``argv``, ``env``
    (keys and values already checked by ``validate_env``) or ``cwd`` cannot reach the
    command. ``argv_given``: the caller passed ``argv`` (else it is the session's
    interpreter with the caller's ``cmd``, checked by :func:`check_cmd`). ``fits``: what
    :func:`args_fit` said of these, when the caller already asked (every run pays this)."""
    if argv_given:
        for index, arg in enumerate(argv):
            if "\0" in arg:
                raise ValueError(
                    f"argv[{index}] contains a NUL byte, which no program can receive in its "
                    "arguments; remove it (pass binary data through stdin or a file)"
                )
        if argv and len(_encoded(argv[0])) > MAX_PATH_BYTES:
            raise ValueError(
                f"argv[0] is the program to run, a path of at most {MAX_PATH_BYTES} bytes; "
                f"got {len(_encoded(argv[0]))} bytes"
            )
    if "\0" in cwd:
        raise ValueError(f"cwd contains a NUL byte: {cwd[:200]!r}")
    if 4 * len(cwd) > MAX_PATH_BYTES and len(_encoded(cwd)) > MAX_PATH_BYTES:
        raise ValueError(
            f"cwd is {len(_encoded(cwd))} bytes; a path is at most {MAX_PATH_BYTES} bytes"
        )
    if not (args_fit(argv, env) if fits is None else fits):
        size = args_size(argv, env)
        env_size = args_size((), env)
        what = "argv" if argv_given else "arguments"
        raise ValueError(
            f"this run's {what} and environment come to {size} bytes ({size - env_size} in "
            f"{what}, {env_size} in env, counted as the kernel does: each string plus a NUL, "
            f"a variable as KEY=value); a run takes at most {MAX_ARGS_BYTES} bytes of them. "
            "Pass large data through stdin, put_bytes or a file in the work dir instead"
        )
