"""``unionai-sandbox run --network ... --allow/--deny``: the postures behave as the library's,
against an HTTP server on the host's own loopback."""

from __future__ import annotations

import shlex
import shutil
import sys
from typing import Any

import anyio
import pytest

ISOLATING = ("bubblewrap", "userns")
HOST_BODY = "hello from the host\n"
# A private address that no rule here names (and that nothing answers on).
UNLISTED = "http://10.1.2.3/"
CURL = ["curl", "-sS", "--noproxy", ""]

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Linux backends"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]


@pytest.mark.parametrize("backend", ISOLATING)
def test_allowlisted_host_is_reached(cli: Any, host_url: str, backend: str) -> None:
    out = cli(
        "run",
        "--backend",
        backend,
        "--network",
        "allowlist",
        "--allow",
        "127.0.0.1/32",
        "--",
        *CURL,
        host_url,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == HOST_BODY


def test_allow_implies_allowlist(cli: Any, json_summary: Any, host_url: str) -> None:
    out = cli("run", "--allow", "127.0.0.1/32", "--json", "--", *CURL, host_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HOST_BODY
    assert json_summary(out.stderr)["isolation"]["network"] == "allowlist"


def test_clearing_no_proxy_through_env(cli: Any, host_url: str) -> None:
    """The docs' other way to reach the host loopback: clear NO_PROXY for the run."""
    out = cli(
        "run",
        "--allow",
        "127.0.0.1/32",
        "--env",
        "NO_PROXY=",
        "--env",
        "no_proxy=",
        "--",
        "curl",
        "-sS",
        host_url,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == HOST_BODY


@pytest.mark.parametrize("backend", ISOLATING)
def test_unlisted_address_gets_403(cli: Any, backend: str) -> None:
    out = cli(
        "run",
        "--backend",
        backend,
        "--network",
        "allowlist",
        "--allow",
        "127.0.0.1/32",
        "--",
        *CURL,
        "-i",
        UNLISTED,
    )
    assert out.returncode == 0, out.stderr  # curl got an HTTP answer
    assert out.stdout.startswith("HTTP/1.1 403 Forbidden")
    assert "X-Union-Sandbox-Refused: 10.1.2.3:80 is not on the allow-list" in out.stdout
    assert "refused by the sandbox network policy" in out.stdout


def test_unlisted_port_gets_403(cli: Any, host_url: str) -> None:
    port = int(host_url.rsplit(":", 1)[1].strip("/"))
    out = cli(
        "run",
        "--allow",
        f"127.0.0.1/32:{port + 1 if port < 65535 else port - 1}",
        "--",
        *CURL,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        host_url,
    )
    assert out.stdout == "403", out.stderr


def test_hostname_rule_does_not_allow_an_ip(cli: Any, host_url: str) -> None:
    out = cli("run", "--allow", "localhost", "--", *CURL, "-i", host_url)
    assert out.stdout.startswith("HTTP/1.1 403 Forbidden"), out.stderr
    assert "never by a hostname rule" in out.stdout


def test_deny_wins_over_allow(cli: Any, host_url: str) -> None:
    out = cli(
        "run",
        "--allow",
        "127.0.0.0/8",
        "--deny",
        "127.0.0.1",
        "--",
        *CURL,
        "-i",
        host_url,
    )
    assert out.stdout.startswith("HTTP/1.1 403 Forbidden"), out.stderr
    assert "matches deny-list rule '127.0.0.1'" in out.stdout
    assert HOST_BODY not in out.stdout


@pytest.mark.parametrize("backend", ISOLATING)
@pytest.mark.parametrize("via", ["no-flag", "flag"])
def test_blocked_refuses(cli: Any, host_url: str, backend: str, via: str) -> None:
    flags = ["--network", "blocked"] if via == "flag" else []
    out = cli("run", "--backend", backend, *flags, "--", *CURL, host_url)
    assert out.returncode != 0
    assert HOST_BODY not in out.stdout
    assert "curl: (7)" in out.stderr  # could not connect: no route, no proxy


@pytest.mark.parametrize("backend", ISOLATING)
def test_blocked_has_no_proxy_variables(cli: Any, backend: str) -> None:
    out = cli("run", "--backend", backend, "--", "sh", "-c", "env | grep -ci proxy || true")
    assert out.stdout.strip() == "0", out.stdout


@pytest.mark.parametrize("backend", ISOLATING)
def test_open_reaches_the_host(cli: Any, host_url: str, backend: str) -> None:
    out = cli("run", "--backend", backend, "--network", "open", "--", "curl", "-sS", host_url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HOST_BODY


def test_open_with_denylist(cli: Any, host_url: str) -> None:
    out = cli(
        "run",
        "--network",
        "open",
        "--deny",
        "127.0.0.1",
        "--",
        *CURL,
        "-i",
        host_url,
    )
    assert out.stdout.startswith("HTTP/1.1 403 Forbidden"), out.stderr


def test_cli_matches_the_library(cli: Any, host_url: str) -> None:
    """The same commands under the same posture give the same output through the library
    and through ``unionai-sandbox run``."""
    from union import sandbox as sb

    commands = {
        "allowed": [*CURL, host_url],
        "refused": [*CURL, "-o", "/dev/null", "-w", "%{http_code}", UNLISTED],
    }

    async def library() -> dict[str, tuple[int, str]]:
        results = {}
        async with sb.on_device.session(
            backend="bubblewrap", network_mode="allowlist", network_allowlist=["127.0.0.1/32"]
        ) as sbx:
            for name, argv in commands.items():
                result = await sbx.exec(shlex.join(argv))
                results[name] = (result.returncode, result.stdout)
        return results

    expected = anyio.run(library)
    assert expected["allowed"] == (0, HOST_BODY)
    assert expected["refused"] == (0, "403")
    for name, argv in commands.items():
        out = cli("run", "--backend", "bubblewrap", "--allow", "127.0.0.1/32", "--", *argv)
        assert (out.returncode, out.stdout) == expected[name], (name, out.stderr)
