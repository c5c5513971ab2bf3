"""The session venv: "install is just a run()" (reference-api §1.2, §2.4, §3.3;
ARCHITECTURE: "Python runs and `uv pip install` inside the session must work regardless")."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
import secrets
import sys
import zipfile

import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio


def build_wheel(dist: str, version: str = "0.1", body: str = "VALUE = 42\n") -> tuple[str, bytes]:
    """A minimal pure-Python wheel, built by hand (no build backend, no network).
    Returns (file name, wheel bytes); the import package has the same name as ``dist``."""
    files = {
        f"{dist}/__init__.py": body.encode(),
        f"{dist}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        ).encode(),
        f"{dist}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: union-sandbox-tests\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record_lines = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{name},sha256={digest},{len(data)}")
    record_name = f"{dist}-{version}.dist-info/RECORD"
    record_lines.append(f"{record_name},,")
    files[record_name] = ("\n".join(record_lines) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


@pytest.fixture
def dist_name() -> str:
    return f"union_sbx_probe_{secrets.token_hex(4)}"


async def test_session_venv_is_the_default_python(sbx) -> None:
    venv = os.path.join(sbx.work_dir, ".session-venv")
    out = await sbx.run_code("import sys, os; print(sys.prefix); print(os.environ['VIRTUAL_ENV'])")
    assert out == f"{venv}\n{venv}\n"
    result = await sbx.exec('python -c "import sys; print(sys.prefix)"; command -v python')
    assert result.stdout == f"{venv}\n{venv}/bin/python\n", result


async def test_python_version_matches_the_host(sbx) -> None:
    out = await sbx.run_code("import sys; print(sys.version_info[:2])")
    assert out == f"{tuple(sys.version_info[:2])}\n"


async def test_uv_is_available(sbx) -> None:
    result = await sbx.exec("uv --version")
    assert result.ok, result
    assert result.stdout.startswith("uv ")


async def test_uv_pip_install_of_a_local_wheel(sbx, dist_name: str) -> None:
    wheel_name, wheel = build_wheel(dist_name)
    path = f"{sbx.work_dir}/{wheel_name}"
    assert await sbx.put_bytes(path, wheel) == len(wheel)
    result = await sbx.exec(f"uv pip install --offline --no-index {path}", timeout_s=120)
    assert result.ok, result
    # A later run sees the package, from the session venv.
    out = await sbx.run_code(
        f"import {dist_name} as m, os; print(m.VALUE); print(os.path.dirname(m.__file__))"
    )
    value, location = out.splitlines()
    assert value == "42"
    assert location.startswith(os.path.join(sbx.work_dir, ".session-venv") + "/")
    # And so does a shell run of python.
    result = await sbx.exec(f"python -c 'import {dist_name}; print({dist_name}.VALUE)'")
    assert result.stdout == "42\n", result
    # The caller's environment is untouched.
    assert importlib.util.find_spec(dist_name) is None
    for entry in sys.path:
        assert not os.path.exists(os.path.join(entry, dist_name))


async def test_install_is_per_session(backend: str, dist_name: str) -> None:
    wheel_name, wheel = build_wheel(dist_name)
    async with sb.on_device.session(backend=backend) as one:
        await one.put_bytes(f"{one.work_dir}/{wheel_name}", wheel)
        await one.exec(
            f"uv pip install --offline --no-index {one.work_dir}/{wheel_name}",
            check=True,
            timeout_s=120,
        )
        assert await one.run_code(f"import {dist_name}; print('ok')") == "ok\n"
        async with sb.on_device.session(backend=backend) as two:
            with pytest.raises(sb.SandboxCommandError, match="ModuleNotFoundError"):
                await two.run_code(f"import {dist_name}")


async def test_callers_packages_are_importable(sbx) -> None:
    """The session venv sees the owner's packages (``--system-site-packages`` semantics)."""
    out = await sbx.run_code("import anyio, sys; print(anyio.__name__)")
    assert out == "anyio\n"


async def test_callers_environment_is_read_only(sbx) -> None:
    site_dir = os.path.dirname(os.path.dirname(os.path.abspath(pytest.__file__)))
    target = os.path.join(site_dir, f"union_sbx_evil_{secrets.token_hex(4)}.pth")
    result = await sbx.exec(f"echo 'import os' > {target}")
    assert result.returncode != 0
    assert not os.path.exists(target)
    interpreter = os.path.realpath(sys.executable)
    result = await sbx.exec(f"echo pwned >> {interpreter}")
    assert result.returncode != 0


async def test_uv_pip_uninstall(sbx, dist_name: str) -> None:
    wheel_name, wheel = build_wheel(dist_name)
    await sbx.put_bytes(f"{sbx.work_dir}/{wheel_name}", wheel)
    await sbx.exec(
        f"uv pip install --offline --no-index {sbx.work_dir}/{wheel_name}",
        check=True,
        timeout_s=120,
    )
    await sbx.exec(f"uv pip uninstall {dist_name}", check=True, timeout_s=120)
    with pytest.raises(sb.SandboxCommandError, match="ModuleNotFoundError"):
        await sbx.run_code(f"import {dist_name}")


async def test_install_without_network_fails_cleanly(sbx) -> None:
    """A default (blocked) session cannot reach an index: the install fails, as a result."""
    result = await sbx.exec(
        "uv pip install --no-cache some-package-that-does-not-matter",
        env={"UV_HTTP_RETRIES": "0", "UV_HTTP_TIMEOUT": "5"},
        timeout_s=120,
    )
    assert result.returncode != 0
