"""``unionai-sandbox doctor``: the report on this host, and on the same host with a backend
blocked (bwrap removed from reach, or a seccomp filter that denies namespace creation).

Every report is also checked against reality: a backend the doctor calls available must run
``true`` through ``unionai-sandbox run``, and one it calls unavailable must be refused with
exit code 125 and the same problem text.
"""

from __future__ import annotations

import json
import os
import platform
import re
import stat
from pathlib import Path
from typing import Any

import pytest

LINUX_BACKENDS = ("bubblewrap", "userns", "none")
ALL_BACKENDS = ("bubblewrap", "userns", "sandbox-exec", "none")
NO_BWRAP = {"UNION_SANDBOX_BWRAP": ""}
MACOS_ONLY = "sandbox-exec is the macOS backend"
INSTALL_FIX = "pip install 'unionai-sandbox-core[bwrap]'"

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="Linux backends")


def _backends(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [b["name"] for b in report["backends"]]
    assert names == list(ALL_BACKENDS)
    return {b["name"]: b for b in report["backends"]}


def _doctor_json(cli: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    out = cli("doctor", "--json", **kwargs)
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"host", "backends"}
    return out.returncode, report


def _backend_lines(text: str) -> dict[str, tuple[str, list[str]]]:
    """``{name: (status, [problem, ...])}`` from the text report's ``backends:`` section."""
    section = text.split("\nbackends:\n", 1)[1]
    result: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in section.splitlines():
        head = re.match(r"^  (\S+)\s+(ok|UNAVAILABLE)\b", line)
        if head:
            current = head.group(1)
            result[current] = (head.group(2), [])
        elif line.startswith("      - "):
            result[current][1].append(line[len("      - ") :])
    return result


def _expected_cgroup_version() -> str:
    return "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"


# ------------------------------------------------------------------ this host


def test_doctor_text_reports_every_backend_here(cli: Any) -> None:
    out = cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert text.startswith("unionai-sandbox doctor\n")
    lines = _backend_lines(text)
    assert list(lines) == list(ALL_BACKENDS)
    assert lines["bubblewrap"] == ("ok", [])
    assert lines["userns"] == ("ok", [])
    assert lines["none"] == ("ok", [])
    status, problems = lines["sandbox-exec"]
    assert status == "UNAVAILABLE"
    assert len(problems) == 1
    assert MACOS_ONLY in problems[0]
    assert re.search(r"^  none\s+ok\s+\(no isolation: development only\)$", text, re.M)
    # Host facts.
    assert re.search(rf"^  kernel\s+{re.escape(platform.release())} \(", text, re.M)
    assert re.search(r"^  landlock\s+ABI [1-9]\d*$", text, re.M)
    assert re.search(r"^  seccomp\s+available$", text, re.M)
    version = _expected_cgroup_version()
    assert re.search(rf"^  cgroups\s+{version} \(", text, re.M), text
    assert re.search(r"^  bwrap\s+/\S+ \(bubblewrap \d", text, re.M), text
    if os.getuid() == 0:
        assert "running as root: sandboxes run as uid 65534" in text


def test_doctor_json_host_facts(cli: Any) -> None:
    code, report = _doctor_json(cli)
    assert code == 0
    host = report["host"]
    assert host["kernel"] == platform.release()
    assert host["machine"] == platform.machine()
    assert host["root"] is (os.getuid() == 0)
    assert os.path.isabs(host["python"])
    assert isinstance(host["landlock_abi"], int)
    assert host["landlock_abi"] > 0
    assert host["seccomp"] is True
    bwrap = host["bwrap"]
    assert bwrap
    assert os.access(bwrap, os.X_OK)
    assert host["bwrap_version"].startswith("bubblewrap ")
    userns = host["user_namespaces"]
    assert set(userns) == {
        "max_user_namespaces",
        "unprivileged_userns_clone",
        "apparmor_restrict_unprivileged_userns",
    }
    max_ns = Path("/proc/sys/user/max_user_namespaces")
    if max_ns.exists():
        assert userns["max_user_namespaces"] == max_ns.read_text().strip()
    cgroups = host["cgroups"]
    assert cgroups["version"] == _expected_cgroup_version()
    assert cgroups["problem"] is None
    assert cgroups["controllers"] == sorted(cgroups["controllers"])
    assert set(cgroups["controllers"]) <= {"cpu", "memory", "pids"}
    assert cgroups["controllers"]


def test_doctor_json_backends_here(cli: Any) -> None:
    code, report = _doctor_json(cli)
    assert code == 0
    backends = _backends(report)
    for name in LINUX_BACKENDS:
        assert backends[name]["available"] is True, backends[name]
        assert backends[name]["problems"] == []
    assert backends["sandbox-exec"]["available"] is False
    assert len(backends["sandbox-exec"]["problems"]) == 1
    assert MACOS_ONLY in backends["sandbox-exec"]["problems"][0]


def test_doctor_text_and_json_agree(cli: Any) -> None:
    _, report = _doctor_json(cli)
    lines = _backend_lines(cli("doctor").stdout)
    for backend in report["backends"]:
        status, problems = lines[backend["name"]]
        assert status == ("ok" if backend["available"] else "UNAVAILABLE")
        assert problems == backend["problems"]


# ------------------------------------------------------------------ bwrap out of reach


@pytest.mark.parametrize(
    "override",
    [
        pytest.param("", id="empty"),
        pytest.param("/nonexistent/bin/bwrap", id="missing-path"),
    ],
)
def test_doctor_without_bwrap(cli: Any, override: str) -> None:
    code, report = _doctor_json(cli, env={"UNION_SANDBOX_BWRAP": override})
    assert code == 0  # userns still isolates
    assert report["host"]["bwrap"] is None
    assert report["host"]["bwrap_version"] is None
    backends = _backends(report)
    bwrap = backends["bubblewrap"]
    assert bwrap["available"] is False
    assert len(bwrap["problems"]) == 1
    problem = bwrap["problems"][0]
    assert "no bwrap binary" in problem
    assert INSTALL_FIX in problem
    assert "apt-get install bubblewrap" in problem
    assert backends["userns"] == {"name": "userns", "available": True, "problems": []}
    assert backends["none"]["available"] is True


def test_doctor_text_without_bwrap(cli: Any) -> None:
    out = cli("doctor", env=NO_BWRAP)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^  bwrap\s+not found$", out.stdout, re.M)
    lines = _backend_lines(out.stdout)
    status, problems = lines["bubblewrap"]
    assert status == "UNAVAILABLE"
    assert "no bwrap binary" in problems[0]
    assert INSTALL_FIX in problems[0]
    assert lines["userns"] == ("ok", [])


def test_doctor_bwrap_not_executable(cli: Any, tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o644)
    code, report = _doctor_json(cli, env={"UNION_SANDBOX_BWRAP": str(fake)})
    assert code == 0
    assert report["host"]["bwrap"] is None
    assert "no bwrap binary" in _backends(report)["bubblewrap"]["problems"][0]


def test_doctor_bwrap_that_cannot_create_namespaces(cli: Any, tmp_path: Path) -> None:
    """A bwrap that fails the way it does on a host without unprivileged user namespaces:
    the doctor turns its stderr into the namespace problem."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'bwrap: No permissions to create new namespace, likely because the kernel "
        "does not allow non-privileged user namespaces.' >&2\n"
        "exit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    code, report = _doctor_json(cli, env={"UNION_SANDBOX_BWRAP": str(fake)})
    assert code == 0
    bwrap = _backends(report)["bubblewrap"]
    assert bwrap["available"] is False
    text = " ".join(bwrap["problems"])
    assert "creating namespaces was refused" in text
    assert "No permissions to create new namespace" in text
    assert _backends(report)["userns"]["available"] is True


# ------------------------------------------------------------------ seccomp filter


def test_doctor_under_seccomp_filter_json(cli: Any, seccomp_prefix: list[str]) -> None:
    code, report = _doctor_json(cli, prefix=seccomp_prefix)
    assert code == 1  # no isolating backend can run
    backends = _backends(report)
    for name in ("bubblewrap", "userns"):
        backend = backends[name]
        assert backend["available"] is False, backend
        text = " ".join(backend["problems"])
        assert "creating namespaces was refused" in text
        assert "seccomp filter" in text
        assert "Seccomp: 2" in text
        assert "namespace creation" in text
    # The blocker is the filter, not a missing binary.
    assert "no bwrap binary" not in " ".join(backends["bubblewrap"]["problems"])
    assert "unshare" in " ".join(backends["userns"]["problems"])
    assert backends["none"]["available"] is True
    assert backends["sandbox-exec"]["available"] is False


def test_doctor_under_seccomp_filter_text(cli: Any, seccomp_prefix: list[str]) -> None:
    out = cli("doctor", prefix=seccomp_prefix)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = _backend_lines(out.stdout)
    for name in ("bubblewrap", "userns"):
        status, problems = lines[name]
        assert status == "UNAVAILABLE"
        assert any("seccomp filter" in p and "namespace" in p for p in problems), problems
    assert lines["none"][0] == "ok"


def test_doctor_under_seccomp_filter_without_bwrap(cli: Any, seccomp_prefix: list[str]) -> None:
    code, report = _doctor_json(cli, prefix=seccomp_prefix, env=NO_BWRAP)
    assert code == 1
    backends = _backends(report)
    assert "no bwrap binary" in backends["bubblewrap"]["problems"][0]
    assert "seccomp filter" in " ".join(backends["userns"]["problems"])


# ------------------------------------------------------------------ doctor vs run


@pytest.mark.parametrize("scenario", ["host", "no-bwrap", "seccomp"])
def test_doctor_agrees_with_run(cli: Any, seccomp_prefix: list[str], scenario: str) -> None:
    """What the doctor says about each backend is what ``run --backend`` then does."""
    kwargs: dict[str, Any] = {}
    if scenario == "no-bwrap":
        kwargs["env"] = NO_BWRAP
    elif scenario == "seccomp":
        kwargs["prefix"] = seccomp_prefix
    _, report = _doctor_json(cli, **kwargs)
    for backend in report["backends"]:
        out = cli("run", "--backend", backend["name"], "--", "echo", "probe-ok", **kwargs)
        if backend["available"]:
            assert out.returncode == 0, (backend, out.stderr)
            assert out.stdout == "probe-ok\n"
        else:
            assert out.returncode == 125, (backend, out.stdout, out.stderr)
            assert "probe-ok" not in out.stdout
            assert f"sandbox backend '{backend['name']}' is not available" in out.stderr
            for problem in backend["problems"]:
                assert problem in out.stderr
            assert "unionai-sandbox doctor" in out.stderr
