"""Posture arguments: the session default, per-call overrides, their validation errors
(the messages of the published API), and the ``sb.PYPI_HOSTS`` / ``sb.CLOUD_METADATA_DENY``
name sets."""

from __future__ import annotations

import re
from typing import Any

import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio

BAD_MODE = "network_mode must be 'blocked', 'open', or 'allowlist'; got 'bogus'"
NEEDS_LIST = "network_mode='allowlist' requires network_allowlist=[...]"
ALLOW_ONLY = "network_allowlist=[...] is only valid with network_mode='allowlist'"
DENY_ONLY = "network_denylist=[...] is only valid with network_mode='open' or 'allowlist'"

SESSION_ERRORS = [
    ({"network_mode": "bogus"}, BAD_MODE),
    ({"network_mode": "allowlist"}, NEEDS_LIST),
    ({"network_mode": "allowlist", "network_allowlist": []}, NEEDS_LIST),
    ({"network_allowlist": ["127.0.0.1/32"]}, ALLOW_ONLY),
    ({"network_mode": "open", "network_allowlist": ["127.0.0.1/32"]}, ALLOW_ONLY),
    ({"network_denylist": ["127.0.0.1/32"]}, DENY_ONLY),
    ({"network_mode": "blocked", "network_denylist": ["127.0.0.1/32"]}, DENY_ONLY),
]


@pytest.mark.parametrize(("kwargs", "message"), SESSION_ERRORS)
async def test_session_arguments_are_checked_at_construction(
    backend: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sb.on_device.session(backend=backend, **kwargs)


RUN_ERRORS = [
    ({}, {"network_mode": "bogus"}, BAD_MODE),
    ({}, {"network_mode": "allowlist"}, NEEDS_LIST),
    ({}, {"network_allowlist": ["127.0.0.1/32"]}, ALLOW_ONLY),
    ({}, {"network_mode": "open", "network_allowlist": ["127.0.0.1/32"]}, ALLOW_ONLY),
    ({}, {"network_mode": "open", "network_allowlist": ["127.0.0.1/32"]}, ALLOW_ONLY),
    (
        {"network_mode": "open"},
        {"network_mode": "blocked", "network_allowlist": ["::1"]},
        ALLOW_ONLY,
    ),
    (
        {"network_mode": "allowlist", "network_allowlist": ["127.0.0.1/32"]},
        {"network_mode": "open", "network_allowlist": ["127.0.0.1/32"]},
        ALLOW_ONLY,
    ),
    ({"network_mode": "open"}, {"network_mode": "allowlist"}, NEEDS_LIST),
    ({"network_mode": "open"}, {"network_mode": "bogus"}, BAD_MODE),
]


@pytest.mark.parametrize(("session_kwargs", "run_kwargs", "message"), RUN_ERRORS)
async def test_per_call_arguments_are_checked_before_running(
    open_session: Any,
    net: Any,
    session_kwargs: dict[str, Any],
    run_kwargs: dict[str, Any],
    message: str,
) -> None:
    token = net.token()
    async with open_session(**session_kwargs) as sbx:
        for call in (sbx.run, sbx.exec):
            with pytest.raises(ValueError, match=re.escape(message)):
                await call(f"touch {token}", **run_kwargs)
        with pytest.raises(ValueError, match=re.escape(message)):
            await sbx.run_code(f"open({token!r}, 'w')", **run_kwargs)
        listing = await sbx.exec("ls")
    assert token not in listing.stdout  # nothing ran


@pytest.mark.parametrize("name", ["network_allowlist", "network_denylist"])
async def test_a_single_string_is_not_a_rule_list(backend: str, name: str) -> None:
    kwargs: dict[str, Any] = {
        "network_mode": "allowlist" if name == "network_allowlist" else "open",
        name: "127.0.0.1/32",
    }
    with pytest.raises(TypeError, match="must be a list of strings"):
        sb.on_device.session(backend=backend, **kwargs)


async def test_a_malformed_rule_fails_before_anything_runs(open_session: Any, backend: str) -> None:
    """The rule text is parsed at construction or, at the latest, by the first run that
    needs it; either way with a ValueError naming the rule, and nothing runs."""
    with pytest.raises(ValueError, match="not a rule!"):
        async with open_session(network_mode="allowlist", network_allowlist=["not a rule!"]) as sbx:
            await sbx.exec("touch ran")
    async with open_session() as sbx:
        with pytest.raises(ValueError, match=re.escape("10.0.0.0/33")):
            await sbx.exec("touch ran", network_mode="allowlist", network_allowlist=["10.0.0.0/33"])
        assert "ran" not in (await sbx.exec("ls")).stdout


async def test_constants() -> None:
    assert sb.PYPI_HOSTS == ["pypi.org", "files.pythonhosted.org", "*.pythonhosted.org"]
    assert sb.constants.PYPI_HOSTS == sb.PYPI_HOSTS
    published = ["169.254.0.0/16", "metadata.google.internal", "fd00:ec2::254"]
    assert sb.CLOUD_METADATA_DENY[: len(published)] == published
    # Beyond the published list (docs/networking.md): Azure's wireserver, Alibaba's
    # metadata address, IPv6 link-local.
    assert {"168.63.129.16/32", "100.100.100.200/32", "fe80::/10"} <= set(sb.CLOUD_METADATA_DENY)
    assert sb.constants.CLOUD_METADATA_DENY == sb.CLOUD_METADATA_DENY
    for rules in (sb.PYPI_HOSTS, sb.CLOUD_METADATA_DENY):
        assert all(isinstance(rule, str) for rule in rules)


async def test_pypi_hosts_do_not_match_lookalikes(open_session: Any, net: Any) -> None:
    """Names off the list are refused by name, before any DNS query (none of these names
    is ever resolved, so this runs offline)."""
    targets = ["evilpypi.org", "pypi.org.evil.net", "pythonhosted.org", "PyPI.org.x"]
    command = "; ".join(net.curl(f"http://{name}/simple/") for name in targets)
    async with open_session(network_mode="allowlist", network_allowlist=sb.PYPI_HOSTS) as sbx:
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    codes = [line for line in out.splitlines() if line.startswith("CODE=")]
    assert codes == ["CODE=403"] * len(targets), err
    decisions = proc.network_decisions
    assert [d.host for d in decisions] == [name.lower() for name in targets]
    for decision in decisions:
        assert not decision.allowed
        assert "is not on the allow-list" in decision.reason


async def test_pypi_names_match_case_and_trailing_dot(open_session: Any, net: Any) -> None:
    """The same names as deny rules, so that a match refuses by name and nothing is ever
    resolved: case and a trailing dot do not matter, ``*.`` matches subdomains only."""
    targets = ["PyPI.ORG.", "files.pythonhosted.org", "A.B.PythonHosted.org.", "pythonhosted.org"]
    command = "; ".join(net.curl(f"http://{name}/simple/") for name in targets)
    async with open_session(
        network_mode="allowlist",
        network_allowlist=[f"127.0.0.1/32:{net.http_port}"],
        network_denylist=sb.PYPI_HOSTS,
    ) as sbx:
        proc = await sbx.run(command)
        out, err = await proc.communicate_text()
    codes = [line for line in out.splitlines() if line.startswith("CODE=")]
    assert codes == ["CODE=403"] * len(targets), err
    decisions = proc.network_decisions
    assert [d.host for d in decisions] == [
        "pypi.org", "files.pythonhosted.org", "a.b.pythonhosted.org", "pythonhosted.org",
    ]  # fmt: skip
    assert [d.rule for d in decisions[:3]] == [
        "pypi.org",
        "files.pythonhosted.org",
        "*.pythonhosted.org",
    ]
    for decision in decisions[:3]:
        assert "matches deny-list rule" in decision.reason
    # The apex is not a subdomain: not denied, and not allowed either (refused, unresolved).
    assert decisions[3].rule is None
    assert "is not on the allow-list" in decisions[3].reason


# ---------------------------------------------------------------------------------------
# Session default + per-call override, live
# ---------------------------------------------------------------------------------------


async def test_per_call_allowlist_on_a_blocked_session(open_session: Any, net: Any) -> None:
    """On-device every run gets a fresh network namespace: a per-call posture may be wider
    than the session's."""
    token = net.token()
    async with open_session() as sbx:
        blocked = await sbx.exec(net.curl(net.http_url(token)))
        proc = await sbx.run(
            net.curl(net.http_url(token)),
            network_mode="allowlist",
            network_allowlist=["127.0.0.1/32"],
        )
        out, _ = await proc.communicate_text()
    assert net.field(blocked.stdout, "RC") == "7"
    assert net.field(out, "CODE") == "200"
    assert [d.rule for d in proc.network_decisions] == ["127.0.0.1/32"]


async def test_runs_inherit_the_session_posture(open_session: Any, net: Any) -> None:
    token = net.token()
    async with open_session(network_mode="allowlist", network_allowlist=["127.0.0.1/32"]) as sbx:
        inherited = await sbx.run(net.curl(net.http_url(token)))
        inherited_out, _ = await inherited.communicate_text()
        # network_mode="allowlist" without a list reuses the session's list.
        explicit = await sbx.run(net.curl(net.http_url(token)), network_mode="allowlist")
        explicit_out, _ = await explicit.communicate_text()
        # A per-call list replaces the session's for that run.
        replaced = await sbx.run(
            net.curl(net.http_url(token)), network_allowlist=[f"{net.unlisted}/32"]
        )
        replaced_out, _ = await replaced.communicate_text()
    assert net.field(inherited_out, "CODE") == "200"
    assert net.field(explicit_out, "CODE") == "200"
    assert net.field(replaced_out, "CODE") == "403"
    assert "is not on the allow-list" in replaced.network_decisions[0].reason


async def test_the_session_denylist_follows_per_call_modes(open_session: Any, net: Any) -> None:
    """The session deny-list applies to every run that has a network (deny wins), and is
    dropped, without error, by a per-call ``blocked``."""
    token = net.token()
    async with open_session(
        network_mode="allowlist",
        network_allowlist=["127.0.0.0/8"],
        network_denylist=["127.0.0.1/32"],
    ) as sbx:
        blocked = await sbx.exec(net.curl(net.http_url(token)), network_mode="blocked")
        with pytest.warns(UserWarning, match="enforced only for clients"):
            opened = await sbx.run(net.curl(net.http_url(token)), network_mode="open")
        open_out, _ = await opened.communicate_text()
    assert net.field(blocked.stdout, "RC") == "7"
    assert net.field(open_out, "CODE") == "403"
    assert [d.rule for d in opened.network_decisions] == ["127.0.0.1/32"]
    assert not net.reached(token)
