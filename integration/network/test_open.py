"""``open`` runs share the host network. A deny-list adds the proxies, which refuse denied
targets for clients that use them, while code that ignores the proxy variables still has the
whole host network: the deny-list is cooperative only in ``open`` mode, and says so."""

from __future__ import annotations

import warnings
from typing import Any

import anyio
import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio

COOPERATIVE = "enforced only for clients that use the proxy variables"


async def test_open_reaches_the_host_loopback_directly(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(network_mode="open") as sbx:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            env = await sbx.exec("env")
            proc = await sbx.run(net.curl(net.http_url(token)))
            out, err = await proc.communicate_text()
            echo = await sbx.exec(
                net.connect_probe([("127.0.0.1", net.echo_port)]), script_type="python"
            )
    assert net.proxy_vars(env.stdout) == {}
    assert net.field(out, "CODE") == "200", err
    assert f"hello {token} via http" in out
    assert proc.network_decisions == []
    assert [o for o, _ in net.probe_result(echo.stdout)] == ["connected"]


async def test_open_denylist_is_enforced_by_the_proxy_only(open_session: Any, net: Any) -> None:
    token, direct_token = net.token(), net.token()
    async with open_session(network_mode="open", network_denylist=["127.0.0.1/32"]) as sbx:
        with pytest.warns(UserWarning, match=COOPERATIVE):
            env = await sbx.exec("env")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once per session, not per run
            http = await sbx.run(net.curl(net.http_url(token)))
            http_out, http_err = await http.communicate_text()
            tls = await sbx.run(net.curl(net.https_url(token)))
            tls_out, tls_err = await tls.communicate_text()
            socks = await sbx.run(net.curl(net.http_url(token), proxy='"$ALL_PROXY"'))
            socks_out, socks_err = await socks.communicate_text()
            direct = await sbx.run(net.curl(net.http_url(direct_token), noproxy="*"))
            direct_out, direct_err = await direct.communicate_text()
    assert set(net.proxy_vars(env.stdout)) >= {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    why = "matches deny-list rule '127.0.0.1/32'"
    assert net.field(http_out, "CODE") == "403", http_err
    assert why in net.header(http_err, "X-Union-Sandbox-Refused")
    assert net.field(tls_out, "CONNECT") == "403", tls_err
    assert net.field(socks_out, "RC") == "97", socks_err
    for proc in (http, tls, socks):
        [decision] = proc.network_decisions
        assert not decision.allowed
        assert decision.rule == "127.0.0.1/32"
        assert why in decision.reason
    assert not net.reached(token)
    # Cooperative only: a client that ignores the proxy variables is not constrained.
    assert net.field(direct_out, "CODE") == "200", direct_err
    assert f"hello {direct_token} via http" in direct_out
    assert direct.network_decisions == []
    assert net.reached(direct_token)


async def test_open_denylist_lets_the_rest_through(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(network_mode="open", network_denylist=[f"{net.unlisted}/32"]) as sbx:
        with pytest.warns(UserWarning, match=COOPERATIVE):
            proc = await sbx.run(net.curl(net.http_url(token)))
        out, err = await proc.communicate_text()
    assert net.field(out, "CODE") == "200", err
    [decision] = proc.network_decisions
    assert decision.allowed
    assert decision.rule is None
    assert decision.reason == "not on the deny-list"
    assert (decision.host, decision.port) == ("127.0.0.1", net.http_port)


async def test_per_call_denylist_in_open_mode(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(network_mode="open") as sbx:
        with pytest.warns(UserWarning, match=COOPERATIVE):
            proc = await sbx.run(net.curl(net.http_url(token)), network_denylist=["127.0.0.0/8"])
        out, _ = await proc.communicate_text()
        plain = await sbx.run(net.curl(net.http_url(token)))
        plain_out, _ = await plain.communicate_text()
    assert net.field(out, "CODE") == "403"
    assert [d.rule for d in proc.network_decisions] == ["127.0.0.0/8"]
    assert net.field(plain_out, "CODE") == "200"
    assert plain.network_decisions == []


METADATA_TARGETS = [
    ("169.254.169.254", "http://169.254.169.254/latest/meta-data/"),
    ("metadata.google.internal", "http://metadata.google.internal/computeMetadata/v1/"),
    ("fd00:ec2::254", "http://[fd00:ec2::254]/latest/meta-data/"),
    ("168.63.129.16", "http://168.63.129.16/machine/"),
    ("100.100.100.200", "http://100.100.100.200/latest/meta-data/"),
    ("fe80::a9fe:a9fe", "http://[fe80::a9fe:a9fe]/"),
]


async def test_cloud_metadata_deny(open_session: Any, net: Any) -> None:
    """``sb.CLOUD_METADATA_DENY`` in ``open`` mode: every metadata endpoint is refused by
    the proxy before anything is dialled or resolved; the host's server still answers."""
    token = net.token()
    command = "; ".join(net.curl(url, max_time=5) for _, url in METADATA_TARGETS)
    async with open_session(network_mode="open", network_denylist=sb.CLOUD_METADATA_DENY) as sbx:
        with pytest.warns(UserWarning, match=COOPERATIVE):
            proc = await sbx.run(command + "; " + net.curl(net.http_url(token)))
        out, err = await proc.communicate_text()
    codes = [line for line in out.splitlines() if line.startswith("CODE=")]
    assert codes == ["CODE=403"] * len(METADATA_TARGETS) + ["CODE=200"], err
    decisions = proc.network_decisions
    assert [d.host for d in decisions[:-1]] == [host for host, _ in METADATA_TARGETS]
    for decision in decisions[:-1]:
        assert not decision.allowed
        assert "deny-list" in decision.reason
        assert decision.rule in sb.CLOUD_METADATA_DENY
    assert decisions[-1].allowed
    assert net.reached(token)


RIDE_FROM_HOST = """
import socket, sys
port, target = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(("CONNECT %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % target).encode())
print("STATUS=" + s.recv(1024).split(b"\\r\\n")[0].decode())
"""


async def test_open_mode_proxies_serve_only_their_run(open_session: Any, net: Any) -> None:
    token = net.token()
    script = (
        'echo "$HTTP_PROXY" > "$HOME/p.tmp" && mv "$HOME/p.tmp" "$HOME/p"; '
        'i=0; while [ ! -e "$HOME/go" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
        + net.curl(net.http_url(token))
    )
    async with open_session(network_mode="open", network_denylist=[f"{net.unlisted}/32"]) as sbx:
        with pytest.warns(UserWarning, match=COOPERATIVE):
            a = await sbx.run(script, timeout_s=60)
        ports_file = anyio.Path(sbx.work_dir, "p")
        for _ in range(750):
            if await ports_file.exists():
                break
            await anyio.sleep(0.02)
        port = (await ports_file.read_text()).strip().rsplit(":", 1)[1]
        target = f"127.0.0.1:{net.echo_port}"
        # Another run of the session, in plain open mode (it does not use the proxy env).
        other = await sbx.exec(net.py(RIDE_FROM_HOST) + f" {port} {target}", network_mode="open")
        await sbx.put_bytes(f"{sbx.work_dir}/go", b"")
        await a.wait()
    # The listeners are on the host's loopback (an open run shares the host's network), so
    # the other run reaches them, but without the run's credentials it gets no tunnel.
    assert net.field(other.stdout, "STATUS").startswith("HTTP/1.1 407"), other.stdout
    assert [d.port for d in a.network_decisions] == [net.http_port]
