"""``allowlist`` runs: real clients through the run's own proxies to real host servers.

Allowed by CIDR (``127.0.0.1/32``), every client gets through: curl over plain HTTP
(forwarding), HTTPS (``CONNECT``) and SOCKS5 (``socks5h://``), a raw SOCKS5 TCP client, Python
``urllib`` and ``httpx``, and ``uv pip install`` from a PEP 503 index on the host. The same
targets are refused when not listed (403 with ``X-Union-Sandbox-Refused``, SOCKS reply
``0x02``), and ``proc.network_decisions`` tells which rule allowed or why it refused.

The run's ``NO_PROXY`` keeps ``127.0.0.1`` direct (the run's loopback is its own), so these
tests clear it (``curl --noproxy ''``, ``env={"NO_PROXY": "", "no_proxy": ""}``) to send
host-loopback targets through the proxy, as docs/networking.md says.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

ALLOW_LOOPBACK = {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]}
NO_PROXY_CLEARED = {"NO_PROXY": "", "no_proxy": ""}


def only_decision(proc: Any) -> Any:
    decisions = proc.network_decisions
    assert len(decisions) == 1, decisions
    return decisions[0]


def assert_allowed(decision: Any, host: str, port: int, protocol: str, rule: str) -> None:
    assert decision.allowed, decision
    assert (decision.host, decision.port, decision.protocol) == (host, port, protocol)
    assert decision.rule == rule
    assert rule in decision.reason
    assert decision.bytes_up > 0
    assert decision.bytes_down > 0


def assert_refused(decision: Any, host: str, port: int, protocol: str, why: str) -> None:
    assert not decision.allowed, decision
    assert (decision.host, decision.port, decision.protocol) == (host, port, protocol)
    assert why in decision.reason, decision.reason
    assert decision.bytes_up == decision.bytes_down == 0


async def run(sbx: Any, cmd: str, **kwargs: Any) -> tuple[Any, str, str]:
    proc = await sbx.run(cmd, **kwargs)
    out, err = await proc.communicate_text()
    return proc, out, err


# ---------------------------------------------------------------------------------------
# Allowed by CIDR
# ---------------------------------------------------------------------------------------


async def test_env_points_at_the_runs_own_proxies(open_session: Any, net: Any) -> None:
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        result = await sbx.exec("env")
    found = net.proxy_vars(result.stdout)
    assert set(found) == {
        "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
        "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
    }  # fmt: skip
    assert found["HTTP_PROXY"] == found["http_proxy"] == found["HTTPS_PROXY"]
    assert found["HTTP_PROXY"].startswith("http://127.0.0.1:")
    assert found["ALL_PROXY"] == found["all_proxy"]
    assert found["ALL_PROXY"].startswith("socks5h://127.0.0.1:")
    assert found["ALL_PROXY"].rsplit(":", 1)[1] != found["HTTP_PROXY"].rsplit(":", 1)[1]
    assert set(found["NO_PROXY"].split(",")) == {"127.0.0.1", "localhost", "::1"}


async def test_curl_http_through_the_http_proxy(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(sbx, net.curl(net.http_url(token)))
    assert net.field(out, "RC") == "0", err
    assert f"hello {token} via http" in out
    assert net.field(out, "CODE") == "200"
    assert_allowed(only_decision(proc), "127.0.0.1", net.http_port, "http-forward", "127.0.0.1/32")


async def test_curl_https_through_connect(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(sbx, net.curl(net.https_url(token)))
    assert net.field(out, "RC") == "0", err
    assert f"hello {token} via https" in out
    assert net.field(out, "CONNECT") == "200", err
    assert net.field(out, "CODE") == "200"
    assert_allowed(only_decision(proc), "127.0.0.1", net.https_port, "http-connect", "127.0.0.1/32")


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_curl_through_socks5h(open_session: Any, net: Any, scheme: str) -> None:
    token = net.token()
    url = net.http_url(token) if scheme == "http" else net.https_url(token)
    port = net.http_port if scheme == "http" else net.https_port
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(sbx, net.curl(url, proxy='"$ALL_PROXY"'))
        # The same through --socks5-hostname, the spelling of the curl manual.
        alt, alt_out, alt_err = await run(
            sbx, net.curl(url, proxy='"$ALL_PROXY"').replace("-x ", "--socks5-hostname ", 1)
        )
    assert net.field(out, "RC") == "0", err
    assert f"hello {token} via {scheme}" in out
    assert "SOCKS5" in err
    assert_allowed(only_decision(proc), "127.0.0.1", port, "socks5", "127.0.0.1/32")
    assert net.field(alt_out, "RC") == "0", alt_err
    assert_allowed(only_decision(alt), "127.0.0.1", port, "socks5", "127.0.0.1/32")


async def test_raw_tcp_through_socks5(open_session: Any, net: Any) -> None:
    """A TCP client that is not HTTP (what git, ssh or a database driver would do)."""
    token = net.token()
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        code = net.socks_exchange("127.0.0.1", net.echo_port, f"ping {token}")
        proc, out, err = await run(sbx, code, script_type="python")
    assert proc.returncode == 0, err
    assert net.field(out, "REPLY") == "0"
    assert net.field(out, "ECHO") == f"echo:ping {token}"
    assert net.echo.recorder.saw(token)
    decision = only_decision(proc)
    assert_allowed(decision, "127.0.0.1", net.echo_port, "socks5", "127.0.0.1/32")
    assert decision.bytes_up == len(f"ping {token}")
    assert decision.bytes_down == len(f"echo:ping {token}")


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_python_urllib(open_session: Any, net: Any, scheme: str) -> None:
    token = net.token()
    url = net.http_url(token) if scheme == "http" else net.https_url(token)
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(
            sbx, net.urllib_get(url), script_type="python", env=NO_PROXY_CLEARED
        )
    assert proc.returncode == 0, err
    assert net.field(out, "STATUS") == "200", out
    assert f"hello {token} via {scheme}" in out
    decision = only_decision(proc)
    protocol = "http-forward" if scheme == "http" else "http-connect"
    port = net.http_port if scheme == "http" else net.https_port
    assert_allowed(decision, "127.0.0.1", port, protocol, "127.0.0.1/32")


def httpx_get(url: str) -> str:
    return f"""
try:
    import httpx
except ImportError as exc:
    print("NOHTTPX=" + str(exc))
    raise SystemExit(0)
try:
    response = httpx.get({url!r}, verify=False, timeout=10)
except Exception as exc:
    print("ERROR=" + type(exc).__name__ + ": " + str(exc))
    raise SystemExit(0)
print("STATUS=%d" % response.status_code)
print("REFUSED=" + str(response.headers.get("X-Union-Sandbox-Refused")))
print(response.text, end="")
"""


def skip_without_httpx(net: Any, out: str) -> None:
    if net.field(out, "NOHTTPX"):
        pytest.skip(f"httpx does not import inside the sandbox: {net.field(out, 'NOHTTPX')}")


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_python_httpx(open_session: Any, net: Any, scheme: str) -> None:
    """httpx through ``HTTP(S)_PROXY``. ``ALL_PROXY`` is cleared as well: with it, httpx
    wants its SOCKS extra (see :func:`test_python_httpx_with_the_default_proxy_env`)."""
    token = net.token()
    url = net.http_url(token) if scheme == "http" else net.https_url(token)
    env = {**NO_PROXY_CLEARED, "ALL_PROXY": "", "all_proxy": ""}
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(sbx, httpx_get(url), script_type="python", env=env)
    assert proc.returncode == 0, err
    skip_without_httpx(net, out)
    assert net.field(out, "STATUS") == "200", out
    assert f"hello {token} via {scheme}" in out
    protocol = "http-forward" if scheme == "http" else "http-connect"
    port = net.http_port if scheme == "http" else net.https_port
    assert_allowed(only_decision(proc), "127.0.0.1", port, protocol, "127.0.0.1/32")


async def test_python_httpx_with_the_default_proxy_env(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(
            sbx, httpx_get(net.https_url(token)), script_type="python", env=NO_PROXY_CLEARED
        )
    assert proc.returncode == 0, err
    skip_without_httpx(net, out)
    assert net.field(out, "STATUS") == "200", out
    assert f"hello {token} via https" in out


UV_ENV = {**NO_PROXY_CLEARED, "UV_HTTP_RETRIES": "0", "UV_NO_PROGRESS": "1"}


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_uv_pip_install_from_a_local_index(open_session: Any, net: Any, scheme: str) -> None:
    if scheme == "http":
        index, protocol, port = net.index_url, "http-forward", net.http_port
        options = ""
    else:
        index, protocol, port = (
            f"https://127.0.0.1:{net.https_port}/simple",
            "http-connect",
            net.https_port,
        )
        options = "--allow-insecure-host 127.0.0.1"  # the test's self-signed certificate
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        proc, out, err = await run(
            sbx, f"uv pip install {options} --index-url {index} {net.pkg_name}", env=UV_ENV
        )
        assert proc.returncode == 0, f"{out}\n{err}"
        decisions = proc.network_decisions
        # The installed package is in the session venv: a blocked run imports it.
        value = await sbx.run_code(
            f"import {net.pkg_module}; print({net.pkg_module}.VALUE)", network_mode="blocked"
        )
    assert value.strip() == net.pkg_value
    assert decisions
    for decision in decisions:
        assert decision.allowed, decision
        assert (decision.host, decision.port) == ("127.0.0.1", port)
        assert decision.rule == "127.0.0.1/32"
        assert decision.protocol == protocol
    server = net.http if scheme == "http" else net.https
    assert server.recorder.saw(f"/files/{net.pkg_module}-{net.pkg_version}")


# ---------------------------------------------------------------------------------------
# Not listed: refused
# ---------------------------------------------------------------------------------------

NOT_LISTED = "is not on the allow-list"


@pytest.fixture(params=["other-cidr", "hostname-rule"])
def unlisting(request: pytest.FixtureRequest, net: Any) -> dict[str, Any]:
    """Allow-lists that do not name ``127.0.0.1``: another CIDR only, or a hostname rule
    (which never authorises an IP target)."""
    rules = [f"{net.unlisted}/32"] if request.param == "other-cidr" else ["localhost"]
    return {"network_mode": "allowlist", "network_allowlist": rules}


async def test_curl_http_refused_when_not_listed(
    open_session: Any, net: Any, unlisting: dict[str, Any]
) -> None:
    token = net.token()
    async with open_session(**unlisting) as sbx:
        proc, out, err = await run(sbx, net.curl(net.http_url(token)))
    assert net.field(out, "RC") == "0", err  # a 403 is a completed transfer for curl
    assert net.field(out, "CODE") == "403"
    refused = net.header(err, "X-Union-Sandbox-Refused")
    assert NOT_LISTED in refused, err
    assert "403 Forbidden: refused by the sandbox network policy" in out
    assert_refused(only_decision(proc), "127.0.0.1", net.http_port, "http-forward", NOT_LISTED)
    assert refused == only_decision(proc).reason
    assert not net.reached(token)


async def test_curl_https_connect_refused_when_not_listed(
    open_session: Any, net: Any, unlisting: dict[str, Any]
) -> None:
    token = net.token()
    async with open_session(**unlisting) as sbx:
        proc, out, err = await run(sbx, net.curl(net.https_url(token)))
    assert net.field(out, "RC") == "56", err  # CURLE_RECV_ERROR: CONNECT tunnel failed
    assert net.field(out, "CONNECT") == "403"
    assert "CONNECT tunnel failed, response 403" in err
    assert NOT_LISTED in net.header(err, "X-Union-Sandbox-Refused"), err
    assert_refused(only_decision(proc), "127.0.0.1", net.https_port, "http-connect", NOT_LISTED)
    assert not net.reached(token)


async def test_socks5_refused_when_not_listed(
    open_session: Any, net: Any, unlisting: dict[str, Any]
) -> None:
    token = net.token()
    async with open_session(**unlisting) as sbx:
        curl, out, err = await run(sbx, net.curl(net.http_url(token), proxy='"$ALL_PROXY"'))
        raw, raw_out, raw_err = await run(
            sbx,
            net.socks_exchange("127.0.0.1", net.echo_port, f"ping {token}"),
            script_type="python",
        )
    # curl: CURLE_PROXY (97), SOCKS5 reply 2 = "connection not allowed by ruleset".
    assert net.field(out, "RC") == "97", err
    assert "(2)" in err or "not allowed" in err, err
    assert_refused(only_decision(curl), "127.0.0.1", net.http_port, "socks5", NOT_LISTED)
    assert raw.returncode == 0, raw_err
    assert net.field(raw_out, "REPLY") == "2"
    assert not net.field(raw_out, "ECHO")
    assert_refused(only_decision(raw), "127.0.0.1", net.echo_port, "socks5", NOT_LISTED)
    assert not net.reached(token)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_python_clients_refused_when_not_listed(
    open_session: Any, net: Any, unlisting: dict[str, Any], scheme: str
) -> None:
    token = net.token()
    url = net.http_url(token) if scheme == "http" else net.https_url(token)
    env = {**NO_PROXY_CLEARED, "ALL_PROXY": "", "all_proxy": ""}
    async with open_session(**unlisting) as sbx:
        lib, lib_out, lib_err = await run(
            sbx, net.urllib_get(url), script_type="python", env=NO_PROXY_CLEARED
        )
        hx, hx_out, hx_err = await run(sbx, httpx_get(url), script_type="python", env=env)
    assert lib.returncode == 0, lib_err
    if scheme == "http":
        assert net.field(lib_out, "STATUS") == "403"
        assert NOT_LISTED in net.field(lib_out, "REFUSED")
    else:
        assert "Tunnel connection failed: 403" in net.field(lib_out, "URLERROR"), lib_out
    assert not only_decision(lib).allowed
    assert hx.returncode == 0, hx_err
    if not net.field(hx_out, "NOHTTPX"):
        if scheme == "http":
            assert net.field(hx_out, "STATUS") == "403"
            assert NOT_LISTED in net.field(hx_out, "REFUSED")
        else:
            assert "ProxyError" in net.field(hx_out, "ERROR"), hx_out
            assert "403" in net.field(hx_out, "ERROR")
        assert not only_decision(hx).allowed
    assert not net.reached(token)


async def test_uv_pip_install_refused_when_not_listed(
    open_session: Any, net: Any, unlisting: dict[str, Any]
) -> None:
    async with open_session(**unlisting) as sbx:
        start = time.monotonic()
        proc, out, err = await run(
            sbx,
            f"uv pip install --index-url {net.index_url} {net.pkg_name}",
            env=UV_ENV,
            timeout_s=60,
        )
        elapsed = time.monotonic() - start
        imported = await sbx.exec(f"python -c 'import {net.pkg_module}'")
    assert proc.returncode != 0, out
    assert "403" in err, err
    assert elapsed < 10, f"uv took {elapsed:.1f} s to give up on a refused index"
    assert proc.network_decisions
    for decision in proc.network_decisions:
        assert_refused(decision, "127.0.0.1", net.http_port, "http-forward", NOT_LISTED)
    assert imported.returncode != 0


async def test_refusal_reasons_say_what_is_missing(open_session: Any, net: Any) -> None:
    """Hostname rules: ``localhost`` does not authorise the IP ``127.0.0.1``, and the name
    ``localhost`` (resolved by the proxy, on the host) is refused for resolving to loopback
    unless a CIDR names the loopback range."""
    token = net.token()
    async with open_session(network_mode="allowlist", network_allowlist=["localhost"]) as sbx:
        by_ip, ip_out, _ = await run(sbx, net.curl(net.http_url(token)))
        by_name, name_out, name_err = await run(
            sbx, net.curl(net.http_url(token, host="localhost"))
        )
    assert net.field(ip_out, "CODE") == "403"
    assert "never by a hostname rule" in only_decision(by_ip).reason
    assert net.field(name_out, "CODE") == "403", name_err
    decision = only_decision(by_name)
    assert_refused(decision, "localhost", net.http_port, "http-forward", "loopback")
    assert "only an allow-list CIDR naming that range" in decision.reason
    assert not net.reached(token)


async def test_hostname_rule_with_a_cidr_naming_loopback(open_session: Any, net: Any) -> None:
    token = net.token()
    rules = ["localhost", "127.0.0.1/32"]
    async with open_session(network_mode="allowlist", network_allowlist=rules) as sbx:
        proc, out, err = await run(
            sbx, net.curl(net.http_url(token, host="localhost"), proxy='"$ALL_PROXY"')
        )
    assert net.field(out, "RC") == "0", err
    assert f"hello {token} via http" in out
    decision = only_decision(proc)
    assert_allowed(decision, "localhost", net.http_port, "socks5", "localhost")
    assert "127.0.0.1/32" in decision.reason


# ---------------------------------------------------------------------------------------
# Deny over allow, ports, network failures
# ---------------------------------------------------------------------------------------


async def test_deny_wins_over_allow(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(
        network_mode="allowlist",
        network_allowlist=["127.0.0.0/8"],
        network_denylist=["127.0.0.1/32"],
    ) as sbx:
        http, http_out, http_err = await run(sbx, net.curl(net.http_url(token)))
        tls, tls_out, tls_err = await run(sbx, net.curl(net.https_url(token)))
        socks, socks_out, _ = await run(
            sbx, net.socks_exchange("127.0.0.1", net.echo_port, token), script_type="python"
        )
    why = "matches deny-list rule '127.0.0.1/32'"
    assert net.field(http_out, "CODE") == "403"
    assert why in net.header(http_err, "X-Union-Sandbox-Refused")
    assert net.field(tls_out, "CONNECT") == "403", tls_err
    assert net.field(socks_out, "REPLY") == "2"
    for proc, port, protocol in (
        (http, net.http_port, "http-forward"),
        (tls, net.https_port, "http-connect"),
        (socks, net.echo_port, "socks5"),
    ):
        decision = only_decision(proc)
        assert_refused(decision, "127.0.0.1", port, protocol, why)
        assert decision.rule == "127.0.0.1/32"
    assert not net.reached(token)


async def test_per_call_denylist_extends_the_sessions(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(network_mode="allowlist", network_allowlist=["127.0.0.0/8"]) as sbx:
        denied, denied_out, _ = await run(
            sbx, net.curl(net.http_url(token)), network_denylist=["127.0.0.1/32"]
        )
        allowed, allowed_out, err = await run(sbx, net.curl(net.http_url(token)))
    assert net.field(denied_out, "CODE") == "403"
    assert not only_decision(denied).allowed
    assert net.field(allowed_out, "CODE") == "200", err
    assert_allowed(
        only_decision(allowed), "127.0.0.1", net.http_port, "http-forward", "127.0.0.0/8"
    )


async def test_port_rules(open_session: Any, net: Any) -> None:
    token = net.token()
    rule = f"127.0.0.1/32:{net.http_port}"
    async with open_session(network_mode="allowlist", network_allowlist=[rule]) as sbx:
        ok, ok_out, ok_err = await run(sbx, net.curl(net.http_url(token)))
        other, other_out, other_err = await run(sbx, net.curl(net.https_url(token)))
    assert net.field(ok_out, "CODE") == "200", ok_err
    assert_allowed(only_decision(ok), "127.0.0.1", net.http_port, "http-forward", rule)
    assert net.field(other_out, "CONNECT") == "403", other_err
    assert_refused(only_decision(other), "127.0.0.1", net.https_port, "http-connect", NOT_LISTED)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_allowed_but_unreachable_is_a_gateway_error(open_session: Any, net: Any) -> None:
    """A program can tell a network failure (502, SOCKS 0x05) from a policy refusal."""
    port = free_port()
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        http, out, err = await run(sbx, net.curl(f"http://127.0.0.1:{port}/"))
        socks, socks_out, _ = await run(
            sbx, net.socks_exchange("127.0.0.1", port, "x"), script_type="python"
        )
    assert net.field(out, "CODE") == "502", err
    assert not net.header(err, "X-Union-Sandbox-Refused")
    assert "connecting failed" in net.header(err, "X-Union-Sandbox-Error"), err
    decision = only_decision(http)
    assert decision.allowed
    assert decision.rule == "127.0.0.1/32"
    assert "connecting failed" in decision.reason
    assert net.field(socks_out, "REPLY") not in ("0", "2", "")
    assert only_decision(socks).allowed


async def test_dns_fails_inside_an_allowlist_run(open_session: Any, net: Any) -> None:
    """Only the proxy resolves names: the run itself has no resolver to reach."""
    code = """
import socket, time
start = time.monotonic()
try:
    socket.getaddrinfo("example.com", 443)
    print("RESOLVED")
except socket.gaierror as exc:
    print("GAIERROR=%s" % exc.args[0])
print("SECONDS=%.3f" % (time.monotonic() - start))
"""
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        getent = await sbx.exec("getent hosts example.com")
        proc, out, err = await run(sbx, code, script_type="python")
    assert getent.returncode != 0
    assert getent.stdout == ""
    assert "RESOLVED" not in out, out
    assert net.field(out, "GAIERROR"), err
    assert float(net.field(out, "SECONDS")) < 1.0
    assert proc.network_decisions == []


async def test_each_run_has_its_own_decision_log(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(**ALLOW_LOOPBACK) as sbx:
        first, _, _ = await run(sbx, net.curl(net.http_url(token)))
        second, _, _ = await run(
            sbx, net.curl(net.http_url(token)) + "; " + net.curl(net.https_url(token))
        )
        blocked, _, _ = await run(sbx, net.curl(net.http_url(token)), network_mode="blocked")
    assert len(first.network_decisions) == 1
    assert [d.port for d in second.network_decisions] == [net.http_port, net.https_port]
    assert blocked.network_decisions == []


SPELLINGS = ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "0177.0.0.1", "[::ffff:127.0.0.1]"]

SPELLING_PROBE = """
import json, os, socket, struct
from urllib.parse import urlsplit
http = urlsplit(os.environ["HTTP_PROXY"])
socks = urlsplit(os.environ["ALL_PROXY"])
def read_all(s):
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out
results = {}
for spelling in SPELLINGS:
    s = socket.create_connection((http.hostname, http.port), timeout=10)
    s.sendall(("CONNECT %s:%d HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % (spelling, PORT)).encode())
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    status = head.split(b" ")[1].decode() if head else "none"
    echo = ""
    if status == "200":
        s.sendall(b"via-connect")
        s.shutdown(socket.SHUT_WR)
        echo = read_all(s).decode()
    s.close()
    name = spelling.strip("[]").encode()
    s = socket.create_connection((socks.hostname, socks.port), timeout=10)
    s.sendall(b"\\x05\\x01\\x00")
    assert s.recv(2) == b"\\x05\\x00"
    s.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(name)]) + name + struct.pack(">H", PORT))
    reply = s.recv(4)
    socks_echo = ""
    if reply[1] == 0:
        s.recv(6 if reply[3] == 1 else 18)
        s.sendall(b"via-socks")
        s.shutdown(socket.SHUT_WR)
        socks_echo = read_all(s).decode()
    s.close()
    results[spelling] = [status, echo, reply[1], socks_echo]
print("SPELLINGS=" + json.dumps(results))
"""


@pytest.mark.parametrize("verdict", ["denied", "allowed"])
async def test_ip_spellings_are_canonicalised(open_session: Any, net: Any, verdict: str) -> None:
    """Every spelling of 127.0.0.1, named to both proxies, is the one address 127.0.0.1:
    a deny rule for it refuses them all, an allow rule for it lets them all through."""
    if verdict == "denied":
        posture = {"network_allowlist": ["127.0.0.0/8"], "network_denylist": ["127.0.0.1/32"]}
    else:
        posture = {"network_allowlist": ["127.0.0.1/32"]}
    code = f"SPELLINGS = {SPELLINGS!r}\nPORT = {net.echo_port}\n" + SPELLING_PROBE
    async with open_session(network_mode="allowlist", **posture) as sbx:
        proc, out, err = await run(sbx, code, script_type="python")
    assert proc.returncode == 0, err
    results = json.loads(net.field(out, "SPELLINGS"))
    decisions = proc.network_decisions
    assert len(decisions) == 2 * len(SPELLINGS)
    assert {d.host for d in decisions} == {"127.0.0.1"}
    for spelling in SPELLINGS:
        status, echo, socks_reply, socks_echo = results[spelling]
        if verdict == "denied":
            assert (status, socks_reply) == ("403", 2), spelling
        else:
            assert (status, echo) == ("200", "echo:via-connect"), spelling
            assert (socks_reply, socks_echo) == (0, "echo:via-socks"), spelling
    for decision in decisions:
        assert decision.allowed is (verdict == "allowed")
        assert decision.rule == "127.0.0.1/32"
