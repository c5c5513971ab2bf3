"""Network namespaces: the host's loopback is not the run's loopback.

A server on the host's ``127.0.0.1`` is out of direct reach of ``blocked`` and ``allowlist``
runs (each has its own network namespace); an ``allowlist`` run reaches it only through its
proxy, and only when a rule names it. A run's proxies listen in that run's namespace, so no
other run (nor the host) can ride them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "posture",
    [
        {"network_mode": "blocked"},
        {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]},
        {"network_mode": "allowlist", "network_allowlist": ["10.9.9.9/32"]},
    ],
    ids=["blocked", "allowlist-listed", "allowlist-unlisted"],
)
async def test_host_loopback_is_not_reachable_directly(
    open_session: Any, net: Any, posture: dict[str, Any]
) -> None:
    token = net.token()
    targets = [("127.0.0.1", p) for p in (net.http_port, net.https_port, net.echo_port)]
    async with open_session(**posture) as sbx:
        direct = await sbx.exec(net.curl(net.http_url(token), noproxy="*"))
        direct_tls = await sbx.exec(net.curl(net.https_url(token), noproxy="*"))
        probe = await sbx.exec(net.connect_probe(targets), script_type="python")
        proxied = await sbx.run(net.curl(net.http_url(token)))
        proxied_out, _ = await proxied.communicate_text()
    for result in (direct, direct_tls):
        assert net.field(result.stdout, "RC") == "7", result
        assert "Couldn't connect to server" in result.stderr
    for outcome, seconds in net.probe_result(probe.stdout):
        assert outcome == "ECONNREFUSED"
        assert seconds < 1.0
    if posture.get("network_allowlist") == ["127.0.0.1/32"]:
        # Explicitly allowed: through the proxy, and only through it.
        assert net.field(proxied_out, "CODE") == "200"
        assert f"hello {token} via http" in proxied_out
        assert [d.allowed for d in proxied.network_decisions] == [True]
        assert net.reached(token)
    else:
        assert net.field(proxied_out, "CODE") in ("000", "403")
        assert not any(d.allowed for d in proxied.network_decisions)
        assert not net.reached(token)


RIDE = """
import json, os, socket
from urllib.parse import urlsplit
mine = set()
for name in ("HTTP_PROXY", "ALL_PROXY"):
    if os.environ.get(name):
        mine.add(urlsplit(os.environ[name]).port)
out = {}
for kind, port in PORTS:
    if port in mine:
        out[str(port)] = "own port (collision)"
        continue
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
    except OSError as exc:
        out[str(port)] = "refused" if exc.errno == 111 else "error %s" % exc.errno
        continue
    try:
        if kind == "http":
            s.sendall(b"CONNECT 127.0.0.1:ECHO HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        else:
            s.sendall(b"\\x05\\x01\\x00")
        data = s.recv(1024)
    except OSError as exc:
        data = b""
    s.close()
    rode = b"X-Union-Sandbox" in data or b"200 Connection established" in data
    rode = rode or (kind == "socks" and data[:2] == b"\\x05\\x00")
    out[str(port)] = "RODE THE PROXY" if rode else "foreign listener %r" % data[:40]
print("RIDE=" + json.dumps(out))
"""


def ride_code(ports: list[tuple[str, int]], echo_port: int) -> str:
    return f"PORTS = {ports!r}\n" + RIDE.replace("ECHO", str(echo_port))


#: The positive control: run A rides its own proxies with the same probe (forgetting that
#: they are its own), which shows the probe sees a ride when there is one.
CONTROL = """
import os
from urllib.parse import urlsplit
PORTS = [("http", urlsplit(os.environ.pop("HTTP_PROXY")).port),
         ("socks", urlsplit(os.environ.pop("ALL_PROXY")).port)]
"""


async def test_a_runs_proxies_serve_only_that_run(open_session: Any, net: Any) -> None:
    """Run A publishes its proxy ports and waits; concurrent runs of the same session
    (``allowlist``, ``blocked``, ``open``) and the host try to use them; then A uses its own
    proxy, which shows it was alive all along."""
    token = net.token()
    control = CONTROL + RIDE.replace("ECHO", str(net.echo_port))
    a_script = (
        f'{net.py(control)} > "$HOME/control"; '
        'printf "%s %s" "$HTTP_PROXY" "$ALL_PROXY" > "$HOME/ports.tmp" && '
        'mv "$HOME/ports.tmp" "$HOME/ports"; '
        'i=0; while [ ! -e "$HOME/go" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
        + net.curl(net.http_url(token))
    )
    async with open_session(network_mode="allowlist", network_allowlist=["127.0.0.1/32"]) as sbx:
        a = await sbx.run(a_script, timeout_s=60)
        ports_file = anyio.Path(sbx.work_dir, "ports")
        for _ in range(750):
            if await ports_file.exists():
                break
            await anyio.sleep(0.02)
        http_url, socks_url = (await ports_file.read_text()).split()
        ports = [
            ("http", int(http_url.rsplit(":", 1)[1])),
            ("socks", int(socks_url.rsplit(":", 1)[1])),
        ]
        code = ride_code(ports, net.echo_port)
        outcomes = {}
        for mode in ("allowlist", "blocked", "open"):
            result = await sbx.exec(code, script_type="python", network_mode=mode)
            assert result.returncode == 0, result
            outcomes[mode] = json.loads(net.field(result.stdout, "RIDE"))
        # The host itself: the listeners are not in its namespace either.
        host_outcomes = {}
        for kind, port in ports:
            with socket.socket() as s:
                s.settimeout(3)
                try:
                    s.connect(("127.0.0.1", port))
                    s.sendall(
                        b"\x05\x01\x00" if kind == "socks" else b"CONNECT x:1 HTTP/1.1\r\n\r\n"
                    )
                    data = s.recv(1024)
                    host_outcomes[port] = (
                        "RODE THE PROXY"
                        if b"X-Union-Sandbox" in data or data[:2] == b"\x05\x00"
                        else "foreign listener"
                    )
                except OSError:
                    host_outcomes[port] = "refused"
        assert a.returncode is None, "run A ended before the others tried its proxies"
        await sbx.put_bytes(os.path.join(sbx.work_dir, "go"), b"")
        a_out, a_err = await a.communicate_text()
        control_out = await sbx.get_bytes(os.path.join(sbx.work_dir, "control"))
    control_seen = json.loads(net.field(control_out.decode(), "RIDE"))
    assert list(control_seen.values()) == ["RODE THE PROXY"] * 2, control_seen
    for mode, seen in outcomes.items():
        for port, outcome in seen.items():
            if mode == "open":
                # The host namespace: an unrelated host service could hold the number.
                assert outcome != "RODE THE PROXY", (mode, port)
            else:
                assert outcome in ("refused", "own port (collision)"), (mode, port, outcome)
    assert "RODE THE PROXY" not in host_outcomes.values(), host_outcomes
    assert net.field(a_out, "CODE") == "200", a_err
    assert f"hello {token} via http" in a_out
    # The control's CONNECT, then A's own request: nothing from the other runs.
    assert [(d.port, d.allowed) for d in a.network_decisions] == [
        (net.echo_port, True),
        (net.http_port, True),
    ]


async def test_open_mode_shares_the_host_loopback(open_session: Any, net: Any) -> None:
    """The positive control of the tests above: ``open`` sees the host's servers."""
    token = net.token()
    async with open_session(network_mode="open") as sbx:
        start = time.monotonic()
        result = await sbx.exec(net.curl(net.http_url(token), noproxy="*"))
        elapsed = time.monotonic() - start
    assert net.field(result.stdout, "CODE") == "200", result
    assert net.reached(token)
    assert elapsed < 5
