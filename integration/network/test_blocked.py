"""``blocked`` runs (the default, and the hard boundary): the targets that ``allowlist`` runs
reach through their proxies fail at once, names do not resolve, and no proxy is offered."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

FAST_S = 1.0


@pytest.fixture(params=["session-default", "per-call-override"])
def blocked(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """(session kwargs, run kwargs) that make a run ``blocked``: the session default, or a
    per-call override of an ``allowlist`` session that would allow the targets."""
    if request.param == "session-default":
        return {}, {}
    session = {"network_mode": "allowlist", "network_allowlist": ["127.0.0.0/8"]}
    return session, {"network_mode": "blocked"}


async def test_no_proxy_variables(open_session: Any, net: Any, blocked: Any) -> None:
    session_kwargs, run_kwargs = blocked
    async with open_session(**session_kwargs) as sbx:
        proc = await sbx.run("env", **run_kwargs)
        out, _ = await proc.communicate_text()
    assert proc.returncode == 0
    assert net.proxy_vars(out) == {}
    assert proc.network_decisions == []


async def test_curl_fails_fast(open_session: Any, net: Any, blocked: Any) -> None:
    session_kwargs, run_kwargs = blocked
    token = net.token()
    commands = [
        net.curl(net.http_url(token)),
        net.curl(net.https_url(token)),
        net.curl(net.http_url(token), noproxy="*"),
        net.curl(f"http://{net.unlisted}:{net.http_port}/hello/{token}"),
        # SOCKS5 to where an allowlist run's proxy would be: there is none.
        net.curl(net.http_url(token), "--socks5-hostname", "127.0.0.1:1080"),
    ]
    async with open_session(**session_kwargs) as sbx:
        for command in commands:
            start = time.monotonic()
            proc = await sbx.run(command, **run_kwargs)
            out, err = await proc.communicate_text()
            elapsed = time.monotonic() - start
            assert net.field(out, "RC") in ("7", "97"), (command, out, err)
            assert elapsed < FAST_S + 0.5, f"{command}: {elapsed:.2f} s"
            assert proc.network_decisions == []
    assert not net.reached(token)


async def test_connections_fail_at_once(open_session: Any, net: Any, blocked: Any) -> None:
    session_kwargs, run_kwargs = blocked
    targets = [
        ("127.0.0.1", net.http_port),
        ("127.0.0.1", net.https_port),
        ("127.0.0.1", net.echo_port),
        (net.unlisted, 80),
        ("::1", net.http_port),
    ]
    async with open_session(**session_kwargs) as sbx:
        proc = await sbx.run(net.connect_probe(targets), script_type="python", **run_kwargs)
        out, err = await proc.communicate_text()
    results = net.probe_result(out)
    assert len(results) == len(targets), err
    for (host, port), (outcome, seconds) in zip(targets, results, strict=True):
        expected = ("ENETUNREACH",) if host == net.unlisted else ("ECONNREFUSED",)
        assert outcome in expected, (host, port, outcome)
        assert seconds < FAST_S, (host, port, seconds)


async def test_dns_fails_fast(open_session: Any, net: Any, blocked: Any) -> None:
    session_kwargs, run_kwargs = blocked
    code = """
import socket, time
for name in ("example.com", "pypi.org"):
    start = time.monotonic()
    try:
        socket.getaddrinfo(name, 443)
        outcome = "resolved"
    except socket.gaierror as exc:
        outcome = "gaierror %s" % exc.args[0]
    print("%s %s %.3f" % (name, outcome.replace(" ", "_"), time.monotonic() - start))
"""
    async with open_session(**session_kwargs) as sbx:
        start = time.monotonic()
        getent = await sbx.exec("getent hosts example.com", **run_kwargs)
        getent_s = time.monotonic() - start
        proc = await sbx.run(code, script_type="python", **run_kwargs)
        out, err = await proc.communicate_text()
    assert getent.returncode != 0
    assert getent.stdout == ""
    assert getent_s < FAST_S + 0.5
    lines = out.split("\n")[:2]
    assert len(lines) == 2, err
    for line in lines:
        _name, outcome, seconds = line.split()
        assert outcome.startswith("gaierror"), line
        assert float(seconds) < FAST_S, line


async def test_uv_pip_install_fails_fast(open_session: Any, net: Any, blocked: Any) -> None:
    session_kwargs, run_kwargs = blocked
    env = {"NO_PROXY": "", "no_proxy": "", "UV_HTTP_RETRIES": "0"}
    async with open_session(**session_kwargs) as sbx:
        start = time.monotonic()
        result = await sbx.exec(
            f"uv pip install --index-url {net.index_url} {net.pkg_name}", env=env, **run_kwargs
        )
        elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "Connection refused" in result.stderr, result.stderr
    assert elapsed < 5, elapsed
    assert not net.http.recorder.saw(f"/simple/{net.pkg_name}")
