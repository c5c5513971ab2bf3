"""What one run may hand the kernel (docs/running-commands.md, "Size limits"): the same
limits and the same errors on both transports, raised before anything runs; the session
carries on."""

from __future__ import annotations

import os
from typing import Any

import pytest

from union.sandbox.core.request_size import MAX_ARGS_BYTES, MAX_PATH_BYTES

pytestmark = pytest.mark.anyio

KiB = 1024


async def _nothing_ran(sbx: Any, marker: str) -> bool:
    result = await sbx.exec(f"test -e {marker} && echo ran || echo nothing")
    return bool(result.stdout == "nothing\n")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"env": {"BIG": "x" * 200 * KiB}}, f"at most {MAX_ARGS_BYTES} bytes"),
        ({"env": {f"V{i}": "x" * 16 for i in range(8000)}}, f"at most {MAX_ARGS_BYTES} bytes"),
        ({"argv": ["/bin/sh", "-c", "touch {marker}", "x" * 140 * KiB]}, "in argv"),
        ({"argv": ["/bin/sh", "-c", "touch {marker}", "a\0b"]}, r"argv\[3\] contains a NUL"),
        ({"argv": ["/" + "x" * MAX_PATH_BYTES]}, "argv\\[0\\] is the program to run"),
        ({"cmd": "touch {marker}; echo a\0b"}, "cmd contains a NUL byte"),
        ({"cwd": "a\0b"}, "cwd contains a NUL byte"),
        ({"cwd": "x" * 5000}, f"at most {MAX_PATH_BYTES} bytes"),
    ],
    ids=[
        "env-200KiB",
        "8000-variables",
        "argv-140KiB",
        "argv-nul",
        "long-program",
        "cmd-nul",
        "cwd-nul",
        "cwd-5000",
    ],
)
async def test_requests_beyond_the_limits_fail_before_anything_runs(
    sbx: Any, unique: str, kwargs: dict[str, Any], message: str
) -> None:
    marker = os.path.join(sbx.work_dir, unique)
    kwargs = {k: _fill(v, marker) for k, v in kwargs.items()}
    cmd = kwargs.pop("cmd", f"touch {marker}")
    with pytest.raises(ValueError, match=message):
        await sbx.run(cmd, **kwargs)
    assert await _nothing_ran(sbx, marker)


def _fill(value: Any, marker: str) -> Any:
    if isinstance(value, str):
        return value.replace("{marker}", marker)
    if isinstance(value, list):
        return [_fill(item, marker) for item in value]
    return value


async def test_up_to_the_limit_reaches_the_command(sbx: Any) -> None:
    # The environment as big as a run takes, less room for the session's own variables.
    big = "x" * (MAX_ARGS_BYTES - 4 * KiB)
    result = await sbx.exec("echo ${#BIG}", env={"BIG": big})
    assert (result.returncode, result.stdout) == (0, f"{len(big)}\n"), result.stderr
    # A script longer than fits beside that environment goes to the command another way.
    script = "n=0\n" + "n=$((n+1))\n" * 20000 + "echo $n ${#BIG}\n"
    result = await sbx.exec(script, env={"BIG": "y" * 100 * KiB})
    assert (result.returncode, result.stdout) == (0, f"20000 {100 * KiB}\n"), result.stderr
