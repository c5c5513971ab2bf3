"""Constants of the Flyte layer: names, ceilings, timeouts and install hints."""

from __future__ import annotations

import datetime
from typing import Final

from union.sandbox.core.constants import SANDBOX_PORT

#: The task every SandboxEnvironment registers; its fully qualified name is ``<env>.<this>``.
TASK_FUNCTION: Final = "sandbox_server"
#: Hard ceiling on the task decorator: the Flyte backend ends the action after this, whatever
#: the soft timeout says.
HARD_CEILING: Final = datetime.timedelta(hours=24)

#: ``sandbox_mode`` -> the ``sandbox-server --backend`` it runs.
SANDBOX_MODES: Final = {"userns": "userns", "bwrap": "bubblewrap"}
RUNTIMES: Final = ("container", "gvisor")

DEFAULT_ENV_NAME: Final = "union-sandbox"
#: A SandboxEnvironment's resources when it names none.
DEFAULT_CPU: Final = "2"
DEFAULT_MEMORY: Final = "2Gi"
DEFAULT_ENV_NAME_BWRAP: Final = "union-sandbox-bwrap"

#: What the pod keeps for itself (the task runtime, the server, the supervisor) when the
#: sandbox ceilings are derived from the environment's resources.
SUPERVISOR_CPU_RESERVE_MILLI: Final = 200
SUPERVISOR_MEM_RESERVE_MB: Final = 256
#: Ceilings used when the resources name no cpu / memory (the server's own defaults).
FALLBACK_CPU_CEILING_MILLI: Final = 4000
FALLBACK_MEM_CEILING_MB: Final = 1024
DEFAULT_FSIZE_CEILING_MB: Final = 4096
DEFAULT_MAX_RUNTIME_S: Final = 300.0

#: Soft timeout / abort: SIGTERM to the server, SIGKILL this many seconds later.
TERM_GRACE_S: Final = 10.0
#: ``terminationGracePeriodSeconds`` of the sandbox pod: the kubelet's SIGKILL comes this long
#: after its SIGTERM, well after the body's own SIGTERM -> SIGKILL ladder has finished.
POD_GRACE_S: Final = 30
PRIMARY_CONTAINER: Final = "primary"
PORT_NAME: Final = "http1"

#: ``await sbx``: how long the owner waits for the sandbox's pod to become addressable.
RESOLVE_DEADLINE_S: Final = 180.0
#: The first call: how long the health check retries while the server starts.
HEALTH_DEADLINE_S: Final = 60.0

#: Environment variables the task body reads (set by a launcher or a test, never needed in a
#: pod): where the server listens and its work dir.
ADDR_ENV: Final = "UNION_SANDBOX_ADDR"
WORK_DIR_ENV: Final = "UNION_SANDBOX_WORK_DIR"
DEFAULT_ADDR: Final = f"0.0.0.0:{SANDBOX_PORT}"

DEPLOY_HINT: Final = (
    "building a SandboxEnvironment's pod template needs the kubernetes package: "
    "pip install 'unionai-sandbox[deploy]'"
)
