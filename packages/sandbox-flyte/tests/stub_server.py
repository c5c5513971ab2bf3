"""A stand-in for ``sandbox-server`` in the task body's teardown tests.

    stub_server.py MODE PARENT_PID [sandbox-server flags...]

MODE ``term``: exits on SIGTERM, like the real server. ``ignore-term``: ignores SIGTERM (a hung
server), so only the body's SIGKILL ends it. ``fail``: prints an error and exits 3 at once.
In the first two modes it also starts a helper in a session of its own that ignores SIGTERM,
as a process the server's group signal cannot reach; and it prints the server's
``listening`` record.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

mode, _parent, *flags = sys.argv[1:]
addr = flags[flags.index("--addr") + 1]
work_dir = flags[flags.index("--work-dir") + 1]
if mode == "fail":
    print("stub: cannot start: no such backend here", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", helper, work_dir], start_new_session=True)
print(json.dumps({"msg": "listening", "addr": addr, "backend": "stub"}), flush=True)
while True:
    time.sleep(1)
