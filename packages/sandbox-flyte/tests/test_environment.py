"""``SandboxEnvironment``: fields, defaults, derived pod posture, and the errors that say what
to do instead. The serialized form is in ``test_spec.py``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import flyte
import pytest

from union import sandbox as sb
from union.sandbox.flyte import Ceilings, SandboxEnvironment

Names = Callable[[], str]


def test_both_name_sets_are_the_same_objects() -> None:
    assert sb.Environment is sb.SandboxEnvironment is SandboxEnvironment
    assert sb.base_image is sb.base_sandbox_image
    assert sb.DEFAULT_ENV is sb.DEFAULT_SANDBOX_ENV
    assert sb.DEFAULT_ENV_BWRAP is sb.DEFAULT_SANDBOX_ENV_BWRAP


def test_defaults_are_the_published_ones() -> None:
    userns, bwrap = sb.DEFAULT_SANDBOX_ENV, sb.DEFAULT_SANDBOX_ENV_BWRAP
    assert isinstance(userns, flyte.TaskEnvironment)
    assert (userns.name, userns.sandbox_mode, userns.runtime) == (
        "union-sandbox",
        "userns",
        "container",
    )
    assert (bwrap.name, bwrap.sandbox_mode, bwrap.runtime) == (
        "union-sandbox-bwrap",
        "bwrap",
        "container",
    )
    assert userns.description == "Default union.sandbox userns-isolated server."
    assert bwrap.description == "Default union.sandbox bubblewrap-isolated server."
    assert userns.resources == flyte.Resources(cpu="2", memory="2Gi")
    assert userns.image is sb.base_sandbox_image
    assert (userns.cap_sys_admin, bwrap.cap_sys_admin) == (False, True)
    assert userns.task_name == "union-sandbox.sandbox_server"
    assert list(bwrap.tasks) == ["union-sandbox-bwrap.sandbox_server"]
    assert userns.task_env is userns


def test_construction_registers_the_sandbox_server_task(env_name: Names) -> None:
    env = SandboxEnvironment(name=env_name(), resources=flyte.Resources(cpu="4", memory="8Gi"))
    task = env.server_task
    assert task.name == env.task_name == f"{env.name}.sandbox_server"
    assert list(env.tasks) == [env.task_name]
    # Inputs of the task: the token has no default (never a server without auth); the
    # ceilings default to the resources minus the supervisor reserve.
    sig = task.native_interface
    assert sig.required_inputs() == ["token"]
    defaults = {k: v[1] for k, v in sig.inputs.items()}
    assert defaults["cpu_ceiling_milli"] == 3800
    assert defaults["mem_ceiling_mb"] == 8 * 1024 - 256
    assert defaults["gpu_ceiling"] == 0
    assert defaults["timeout_s"] == 3600.0
    assert defaults["network_mode"] == "blocked"
    assert env.ceilings == Ceilings(cpu_milli=3800, mem_mb=7936, gpu=0)


def test_sys_cap_admin(cap_sys_admin_case: tuple[SandboxEnvironment, bool]) -> None:
    env, granted = cap_sys_admin_case
    assert env.cap_sys_admin is granted
    assert isinstance(env.pod_template, flyte.PodTemplate)
    assert env.pod_template.pod_spec is not None
    (primary,) = env.pod_template.pod_spec.containers
    caps = primary.security_context.capabilities
    assert (caps is not None and "SYS_ADMIN" in (caps.add or [])) is granted
    assert primary.security_context.allow_privilege_escalation is False


def test_pod_template_cannot_be_set(env_name: Names) -> None:
    with pytest.raises(ValueError, match=r"derives pod_template .* sandbox_mode='bwrap'"):
        SandboxEnvironment(name=env_name(), pod_template=flyte.PodTemplate())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"sandbox_mode": "bubblewrap"},
            "sandbox_mode must be 'userns' or 'bwrap', got 'bubblewrap'",
        ),
        ({"runtime": "kata"}, "runtime must be 'container' or 'gvisor', got 'kata'"),
        ({"sys_cap_admin": "yes"}, "sys_cap_admin must be None, True or False"),
        ({"reusable": flyte.ReusePolicy(replicas=1)}, "does not support reusable"),
        ({"resources": flyte.Resources(cpu="lots")}, "could not convert|cpu"),
    ],
)
def test_bad_fields_raise_before_registering(
    env_name: Names, kwargs: dict[str, object], message: str
) -> None:
    from flyte._environment import list_loaded_environments

    name = env_name()
    with pytest.raises(ValueError, match=message):
        SandboxEnvironment(name=name, **kwargs)  # type: ignore[arg-type]
    assert name not in [e.name for e in list_loaded_environments()]
    SandboxEnvironment(name=name)  # the name is still free


def test_file_mounted_secrets_are_refused(env_name: Names) -> None:
    """A file-mounted secret lands under /etc/flyte/secrets, which a sandboxed run can read
    (/etc is in every backend's read-only view); environment-variable secrets stay with the
    task. Before this check such an environment deployed without a word."""
    mounted = flyte.Secret(key="HF_TOKEN", group="hf", mount=Path("/etc/flyte/secrets"))
    with pytest.raises(ValueError, match=r"'HF_TOKEN' is mounted as a file .* as_env_var"):
        SandboxEnvironment(name=env_name(), secrets=[mounted])
    with pytest.raises(ValueError, match="mounted as a file"):
        SandboxEnvironment(name=env_name(), secrets=mounted)
    env = SandboxEnvironment(
        name=env_name(), secrets=[flyte.Secret(key="HF_TOKEN", group="hf"), "plain-key"]
    )
    assert env.secrets is not None


def test_bad_name_is_flytes_error(env_name: Names) -> None:
    with pytest.raises(ValueError, match="snake_case or kebab-case"):
        SandboxEnvironment(name="Not OK")


def test_a_used_name_with_another_shape_is_refused(env_name: Names) -> None:
    name = env_name()
    first = SandboxEnvironment(name=name)
    again = SandboxEnvironment(name=name, description="same shape, other words")
    assert again.task_name == first.task_name
    with pytest.raises(
        ValueError, match=rf"named '{name}' is already registered with a different shape"
    ):
        SandboxEnvironment(name=name, sandbox_mode="bwrap")
    with pytest.raises(ValueError, match="unique name"):
        SandboxEnvironment(name=name, runtime="gvisor")


def test_gpu_without_bwrap_warns(env_name: Names) -> None:
    with pytest.warns(UserWarning, match="GPU sandboxes need sandbox_mode='bwrap'"):
        env = SandboxEnvironment(name=env_name(), resources=flyte.Resources(gpu="L4:1"))
    assert env.ceilings.gpu == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SandboxEnvironment(
            name=env_name(), sandbox_mode="bwrap", resources=flyte.Resources(gpu="L4:1")
        )


def test_clone_with(env_name: Names) -> None:
    base = SandboxEnvironment(name=env_name(), sandbox_mode="bwrap", env_vars={"A": "1"})
    clone = base.clone_with(env_name(), runtime="gvisor")
    assert isinstance(clone, SandboxEnvironment)
    assert (clone.sandbox_mode, clone.runtime, clone.env_vars) == ("bwrap", "gvisor", {"A": "1"})
    assert clone.pod_template.pod_spec.runtime_class_name == "gvisor"
    assert list(clone.tasks) == [clone.task_name]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_importing_builds_nothing() -> None:
    """``flyte deploy --all`` deploys every environment that exists in the process: importing
    the library must create none (and build no image)."""
    done = _run(
        """
        import flyte._environment as fe
        import union.sandbox.flyte, union.sandbox.flyte._deploy
        from union import sandbox as sb
        sb.SandboxEnvironment, sb.Environment
        import union.sandbox.flyte._image as image
        assert image.cached_base_image.cache_info().currsize == 0
        print(len(fe.list_loaded_environments()))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_without_kubernetes_the_defaults_name_the_deploy_extra() -> None:
    done = _run(
        """
        import sys
        sys.modules["kubernetes"] = None  # as in a [flyte] install, which has no kubernetes
        from union import sandbox as sb
        sb.SandboxEnvironment  # the class needs no kubernetes
        sb.base_sandbox_image  # nor does the image
        for name in ("DEFAULT_SANDBOX_ENV", "DEFAULT_ENV_BWRAP"):
            try:
                getattr(sb, name)
            except ImportError as exc:
                print(name, exc)
        try:
            sb.SandboxEnvironment(name="x")
        except ImportError as exc:
            print("construct", exc)
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert all("pip install 'unionai-sandbox[deploy]'" in line for line in lines), lines
