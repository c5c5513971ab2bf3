"""The basic probes: host secrets, host writes, host processes and host loopback services.

Hostile code inside the sandbox tries to read files and environments it was not given, to
write outside its work dir, to see and signal the caller, and to connect to services on the
host's loopback. The host side plants the bait (files, an environment variable, a process,
listening sockets) and judges what came back; a secret is never handed to the sandbox.
These run under asyncio and trio.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

BAIT = "union-conformance"
#: Labels of the targets that claim isolation (for ``hole`` markers).
ISOLATING = ("bubblewrap", "userns", "remote/bubblewrap", "remote/userns")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("this probe plants root-owned bait on the host: run the suite as root")


@pytest.fixture
def root_only_files() -> Iterator[dict[str, Any]]:
    """Root-owned 0600 files inside directories the sandbox may read (``/etc``,
    ``/usr/local/share``, the interpreter's prefix)."""
    _need_root()
    token = f"UCSECRET-{secrets.token_hex(8)}"
    paths = []
    for directory in ("/etc", "/usr/local/share", os.path.realpath(sys.base_prefix)):
        if not os.path.isdir(directory):
            continue
        path = os.path.join(directory, f"{BAIT}-{secrets.token_hex(4)}.secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, token.encode())
        os.close(fd)
        os.chown(path, 0, 0)
        paths.append(path)
    try:
        yield {"token": token, "paths": paths}
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@pytest.fixture
def other_home() -> Iterator[dict[str, str]]:
    """Another user's home with a world-readable secret: ``/home/<user>/secret``."""
    _need_root()
    token = f"UCHOME-{secrets.token_hex(8)}"
    home = f"/home/{BAIT}-{secrets.token_hex(4)}"
    os.makedirs(home, mode=0o755)
    path = os.path.join(home, "secret")
    with open(path, "w") as f:
        f.write(token)
    os.chmod(path, 0o644)
    for p in (home, path):
        os.chown(p, 4242, 4242)
    try:
        yield {"token": token, "path": path}
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def root_home_file() -> Iterator[dict[str, str]]:
    """A world-readable file in ``/root`` (mode 0700 on most hosts, but the sandbox sees
    part of ``/root`` when the interpreter lives there)."""
    _need_root()
    token = f"UCROOT-{secrets.token_hex(8)}"
    path = f"/root/{BAIT}-{secrets.token_hex(4)}.secret"
    with open(path, "w") as f:
        f.write(token)
    os.chmod(path, 0o644)
    try:
        yield {"token": token, "path": path}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


READ_PATHS = """
out = {}
for path in os.environ["PROBE_PATHS"].split(":"):
    out[path] = read_text(path, 256)
listing = {}
for path in os.environ.get("PROBE_LIST", "").split(":"):
    if path:
        listing[path] = attempt(os.listdir, path)
        try:
            listing[path] = sorted(os.listdir(path))[:20]
        except OSError:
            pass
verdict(False, "", read=out, listing=listing)
"""


def _judge_reads(result: dict[str, Any], token: str) -> tuple[bool, str]:
    leaked = [path for path, text in result["read"].items() if token in text]
    if leaked:
        return True, f"read {', '.join(leaked)}"
    seen = ", ".join(f"{os.path.dirname(p)}/*: {t[:12]}" for p, t in result["read"].items())
    return False, seen


async def test_read_root_owned_secret(
    root_only_files: dict[str, Any], sandbox: Any, probe: Any
) -> None:
    result = await probe.run_py(
        sandbox, READ_PATHS, env={"PROBE_PATHS": ":".join(root_only_files["paths"])}
    )
    let_through, detail = _judge_reads(result, root_only_files["token"])
    probe.verdict(
        "read root-owned 0600 file in a granted dir (/etc, /usr/local/share, python prefix)",
        "EACCES",
        let_through=let_through,
        detail=detail,
    )


def _shadow_lines() -> list[str]:
    _need_root()
    with open("/etc/shadow") as f:
        return [line.strip() for line in f if line.strip()]


async def test_read_shadow(sandbox: Any, probe: Any) -> None:
    lines = _shadow_lines()
    code = """
out = {"cat": read_text("/etc/shadow", 4096)}
for argv in (["su", "root", "-c", "cat /etc/shadow"], ["sudo", "-n", "cat", "/etc/shadow"]):
    try:
        cli = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
        out[argv[0]] = cli.stdout + cli.stderr
    except FileNotFoundError:
        out[argv[0]] = "<absent>"
verdict(False, "", read=out)
"""
    result = await probe.run_py(sandbox, code)
    leaked = [how for how, text in result["read"].items() if any(ln in text for ln in lines)]
    detail = (
        f"shadow read via {', '.join(leaked)}"
        if leaked
        else "; ".join(f"{k}: {v.strip()[:30]}" for k, v in result["read"].items())
    )
    probe.verdict(
        "read /etc/shadow: cat, setuid su, sudo (no_new_privs)",
        "EACCES; su/sudo fail",
        let_through=bool(leaked),
        detail=detail,
    )


async def test_read_other_users_home(other_home: dict[str, str], sandbox: Any, probe: Any) -> None:
    result = await probe.run_py(
        sandbox, READ_PATHS, env={"PROBE_PATHS": other_home["path"], "PROBE_LIST": "/home"}
    )
    let_through, detail = _judge_reads(result, other_home["token"])
    probe.verdict(
        "read another user's home (/home/<user>/secret, 0644)",
        "not visible",
        let_through=let_through,
        detail=f"{detail}; ls /home: {result['listing'].get('/home')}",
    )


async def test_read_root_home(root_home_file: dict[str, str], sandbox: Any, probe: Any) -> None:
    result = await probe.run_py(
        sandbox, READ_PATHS, env={"PROBE_PATHS": root_home_file["path"], "PROBE_LIST": "/root"}
    )
    name = os.path.basename(root_home_file["path"])
    listing = result["listing"].get("/root")
    let_through, detail = _judge_reads(result, root_home_file["token"])
    let_through = let_through or (isinstance(listing, list) and name in listing)
    probe.verdict(
        "read /root contents",
        "not visible",
        let_through=let_through,
        detail=f"{detail}; ls /root: {listing}",
    )


async def test_host_environment(
    open_sandbox: Any, probe: Any, host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's environment (inherited, or read through /proc) never reaches a run."""
    canary = f"UCENV-{secrets.token_hex(8)}"
    monkeypatch.setenv("UNION_CONFORMANCE_CANARY", canary)
    tag = host.tag()
    # A host process that holds the secret in its initial environment (what
    # /proc/<pid>/environ shows).
    helper = host.spawn(tag, env={"PATH": os.environ["PATH"], "UNION_CONFORMANCE_CANARY": canary})
    code = """
needle = b"UNION_CONFORMANCE_CANARY="
found = {}
own = os.environ.get("UNION_CONFORMANCE_CANARY")
if own:
    found["os.environ"] = own
try:
    entries = [e for e in os.listdir("/proc") if e.isdigit()]
except OSError as exc:
    entries = []
    found["ls /proc"] = err(exc.errno)
for pid in entries + ["self", "1"]:
    try:
        with open("/proc/%s/environ" % pid, "rb") as f:
            data = f.read()
    except OSError:
        continue
    for var in data.split(b"\\0"):
        if var.startswith(needle):
            found[pid] = var.decode(errors="replace")
for host in os.environ["HOST_PIDS"].split(","):
    found["/proc/<host pid %s>" % host] = read_text("/proc/%s/cmdline" % host, 200).replace(
        "\\0", " ")
verdict(False, "", found=found)
"""
    async with open_sandbox() as sbx:
        # Over the remote transport the server (started with its own canary, see
        # SERVER_CANARY) is the host process whose environment and /proc entry are at stake.
        result = await probe.run_py(
            sbx, code, env={"HOST_PIDS": probe.host_pids(sbx), "HELPER_PID": str(helper.pid)}
        )
    found = result["found"]
    canaries = [canary, probe.SERVER_CANARY]
    leaked = [where for where, value in found.items() if any(c in value for c in canaries)]
    host_proc = " ".join(v for k, v in found.items() if k.startswith("/proc/<host pid"))
    sees_host = any(
        needle in host_proc for needle in ("pytest", sys.argv[0], "union.sandbox.server")
    )
    probe.verdict(
        "read the caller's environment (inherited, /proc/*/environ, /proc/<host pid>)",
        "canary absent; /proc/<host pid> absent",
        let_through=bool(leaked) or sees_host,
        detail=(f"canary in {leaked}" if leaked else "canary absent")
        + f"; /proc/<host pid>: {host_proc[:40] or '-'}",
    )


async def test_see_host_processes(sandbox: Any, probe: Any, host: Any) -> None:
    tag = host.tag()
    host.spawn(tag)
    code = """
try:
    pids = sorted(int(e) for e in os.listdir("/proc") if e.isdigit())
except OSError as exc:
    pids = err(exc.errno)
tagged = []
for pid in pids if isinstance(pids, list) else []:
    if os.environ["TAG"] in read_text("/proc/%d/cmdline" % pid, 200):
        tagged.append(pid)
visible = [h for h in os.environ["HOST_PIDS"].split(",") if os.path.exists("/proc/" + h)]
verdict(False, "", pids=pids if not isinstance(pids, list) else len(pids), tagged=tagged,
        host_pid_visible=bool(visible))
"""
    result = await probe.run_py(
        sandbox, code, env={"TAG": tag, "HOST_PIDS": probe.host_pids(sandbox)}
    )
    let_through = bool(result["tagged"]) or result["host_pid_visible"]
    probe.verdict(
        "see host processes (/proc: a host process, the caller, the server)",
        "not visible",
        let_through=let_through,
        detail=f"/proc pids: {result['pids']}, host process seen: {bool(result['tagged'])}, "
        f"/proc/<caller pid>: {result['host_pid_visible']}",
    )


async def test_signal_host_processes(sandbox: Any, probe: Any, host: Any) -> None:
    tag = host.tag()
    helper = host.spawn(tag)
    code = """
out = {}
hosts = os.environ["HOST_PIDS"].split(",")
for i, pid in enumerate(hosts + [os.environ["HELPER_PID"]]):
    out["HELPER_PID" if i == len(hosts) else "HOST_PID" if i == 0 else "SERVER_PID"] = \
        attempt(os.kill, int(pid), 0)
sh = subprocess.run(["sh", "-c", "kill -0 %s" % " ".join(hosts)], capture_output=True)
out["kill -0 (sh)"] = "ok" if sh.returncode == 0 else "rc=%d" % sh.returncode
verdict(any(v == "ok" for v in out.values()), out)
"""
    result = await probe.run_py(
        sandbox, code, env={"HOST_PIDS": probe.host_pids(sandbox), "HELPER_PID": str(helper.pid)}
    )
    helper_alive = helper.poll() is None
    probe.verdict(
        "signal host processes (kill -0 <caller pid>, <server pid>, <host pid>)",
        "ESRCH",
        let_through=result["let_through"] or not helper_alive,
        detail=result["detail"],
    )


async def test_write_outside_work_dir(sandbox: Any, probe: Any) -> None:
    name = f"{BAIT}-{secrets.token_hex(6)}"
    prefix = os.path.realpath(sys.base_prefix)
    outside = ["/", "/usr", "/usr/local", "/etc", "/var/tmp", "/opt", prefix]
    scratch = ["/tmp", "/dev/shm"]  # a run's own, fresh: writable inside, never the host's
    code = """
out = {}
for d in os.environ["DIRS"].split(":"):
    path = os.path.join(d, os.environ["NAME"])
    out[d] = attempt(lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)))
verdict(False, "", wrote=out)
"""
    try:
        result = await probe.run_py(
            sandbox, code, env={"DIRS": ":".join(outside + scratch), "NAME": name}
        )
    finally:
        on_host = [d for d in outside + scratch if os.path.lexists(os.path.join(d, name))]
        for d in on_host:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, name))
    inside = result["wrote"]
    probe.verdict(
        "write outside the work dir (/, /usr, /etc, python prefix, host /tmp, /dev/shm)",
        "EROFS/EACCES; run's /tmp is not the host's",
        let_through=bool(on_host),
        detail=(f"on the host: {on_host}" if on_host else "nothing on the host")
        + "; inside: "
        + ", ".join(f"{d}={v}" for d, v in inside.items()),
    )


async def test_other_sessions_work_dir(sandbox: Any, open_peer_sandbox: Any, probe: Any) -> None:
    """Two sessions run as the same unprivileged host uid: only mount visibility keeps one
    session's files from the other. (Over the remote transport the other session is on
    another server: one server is one session, whose work dir all its clients share.)"""
    token = f"UCSESSION-{secrets.token_hex(8)}"
    async with open_peer_sandbox() as other:
        other_dir = await probe.work_dir(other)
        await other.put_bytes(f"{other_dir}/secret", token.encode(), mode=0o600)
        code = """
path = os.environ["OTHER"]
out = {"read": read_text(path + "/secret", 256)}
w = attempt(lambda: os.close(os.open(path + "/planted", os.O_WRONLY | os.O_CREAT, 0o644)))
verdict(False, "", read=out, write=w)
"""
        result = await probe.run_py(sandbox, code, env={"OTHER": other_dir})
        planted = os.path.lexists(f"{other_dir}/planted")
    leaked = token in result["read"]["read"]
    probe.verdict(
        "read/write another session's work dir",
        "not visible",
        let_through=leaked or planted,
        detail=f"read: {result['read']['read'][:24]}; write: {result['write']}",
    )


async def test_host_loopback_services(
    loopback_servers: dict[str, Any], sandbox: Any, probe: Any
) -> None:
    """A run in network_mode "blocked" cannot reach services on the host's loopback."""
    code = """
out = {}
def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        return "ok"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return err(exc.errno)
    finally:
        s.close()
out["127.0.0.1"] = connect(socket.AF_INET, ("127.0.0.1", int(os.environ["TCP4"])))
if os.environ.get("TCP6"):
    out["[::1]"] = connect(socket.AF_INET6, ("::1", int(os.environ["TCP6"])))
out["abstract unix"] = connect(socket.AF_UNIX, "\\0" + os.environ["ABSTRACT"])
verdict(any(v == "ok" for v in out.values()), out)
"""
    env = {"TCP4": str(loopback_servers["tcp4"]), "ABSTRACT": loopback_servers["abstract"]}
    if loopback_servers["tcp6"]:
        env["TCP6"] = str(loopback_servers["tcp6"])
    result = await probe.run_py(sandbox, code, env=env)
    probe.verdict(
        "reach host loopback: TCP 127.0.0.1, TCP [::1], abstract unix socket",
        "ECONNREFUSED",
        let_through=result["let_through"],
        detail=result["detail"],
    )


async def test_isolation_report(sandbox: Any, probe: Any) -> None:
    """The backend says what it applied; ``none`` must say it applied nothing."""
    proc = await sandbox.run("true")
    await proc.wait()
    report = proc.isolation
    if report is None:
        pytest.fail("the process handle carries no isolation report", pytrace=False)
    isolated = (
        {"user", "pid", "mount", "net"} <= set(report.namespaces)
        and report.seccomp
        and report.no_new_privs
        and report.capabilities_dropped
        and bool(report.landlock_abi)
        and report.fresh_tmp
        and (os.geteuid() != 0 or report.uid not in (None, 0))
    )
    detail = (
        f"ns={','.join(report.namespaces) or '-'} seccomp={report.seccomp} "
        f"nnp={report.no_new_privs} landlock={report.landlock_abi} uid={report.uid} "
        f"net={report.network}"
    )
    if probe.target.isolated:
        probe.verdict(
            "isolation the backend reports",
            "namespaces, seccomp, nnp, Landlock, caps dropped, unprivileged uid",
            let_through=not isolated,
            detail=detail,
        )
    else:
        # ``none`` reporting isolation would be a lie: it must report none.
        probe.verdict(
            "isolation the backend reports",
            "namespaces, seccomp, nnp, Landlock, caps dropped, unprivileged uid",
            let_through=not isolated,
            detail=detail,
            unisolated="leak",
        )


UNIX_GRANTED_HOLE = (
    "HOLE (low): a read-only grant does not stop connect() to a unix socket inside it: "
    "read-only mounts and Landlock's read rights do not cover connecting, so a world-writable "
    "socket a host service keeps under a granted dir (/usr, /etc, the interpreter prefix...) "
    "is reachable from a 'blocked' run. Layer: Landlock (no unix-connect right in ABI 7). "
    "Fix: handle the Landlock unix-socket right where the kernel offers it; until then "
    "document that granted directories must not hold service sockets."
)


@pytest.fixture
def host_unix_sockets() -> Iterator[list[str]]:
    """World-connectable (0777) pathname unix sockets of host services: one outside every
    grant (``/run``, where system services put theirs: D-Bus, journald, snapd, postgres,
    docker...) and one inside a granted read-only dir (``/usr/local/share``)."""
    _need_root()
    paths, sockets = [], []
    for directory in ("/run", "/var/run", "/usr/local/share"):
        real = os.path.realpath(directory)
        if not os.path.isdir(real) or any(os.path.dirname(p) == real for p in paths):
            continue
        path = os.path.join(real, f"{BAIT}-{secrets.token_hex(4)}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        os.chmod(path, 0o777)
        paths.append(path)
        sockets.append(sock)
    try:
        yield paths
    finally:
        for sock in sockets:
            sock.close()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("outside"),
        pytest.param(
            "granted",
            marks=pytest.mark.hole(**dict.fromkeys(ISOLATING, UNIX_GRANTED_HOLE)),
        ),
    ],
)
async def test_host_unix_sockets(
    where: str, host_unix_sockets: list[str], sandbox: Any, probe: Any
) -> None:
    """Network namespaces do not cover pathname unix sockets: only what the run can
    resolve on the filesystem decides. A blocked run must not reach a host service's socket.
    """
    code = """
out = {}
for path in os.environ["SOCKS"].split(":"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    out[os.path.dirname(path) + "/*.sock"] = attempt(s.connect, path)
    s.close()
verdict(any(v == "ok" for v in out.values()), out)
"""
    granted = where == "granted"
    socks = [p for p in host_unix_sockets if p.startswith("/usr/") == granted]
    result = await probe.run_py(sandbox, code, env={"SOCKS": ":".join(socks)})
    probe.verdict(
        "reach a host service's unix socket in a granted read-only dir (/usr/local/share)"
        if granted
        else "reach a host service's unix socket outside the grants (/run/*.sock)",
        "refused (ENOENT / EACCES)",
        let_through=result["let_through"],
        detail=result["detail"],
    )


STAT_HOLE = (
    "HOLE (low, information): in the userns backend every host path resolves (Landlock "
    "governs opening, not lookup), so a run can learn whether any host file exists and its "
    "size, owner and times with stat(2), e.g. to map other users' and services' files. "
    "Layer: userns filesystem view. Fix: the fresh-root construction proposed for unix "
    "sockets (paths outside the grants then do not exist)."
)


@pytest.mark.hole(**dict.fromkeys(["userns", "remote/userns"], STAT_HOLE))
async def test_stat_outside_grants(sandbox: Any, probe: Any) -> None:
    _need_root()
    path = f"/var/tmp/{BAIT}-{secrets.token_hex(4)}.secret"
    size = 4242 + secrets.randbelow(1000)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"\0" * size)
    os.close(fd)
    code = """
try:
    st = os.stat(os.environ["TARGET"])
    seen = "exists, %d bytes, uid %d" % (st.st_size, st.st_uid)
except OSError as exc:
    seen = err(exc.errno)
verdict(False, seen, size=seen)
"""
    try:
        result = await probe.run_py(sandbox, code, env={"TARGET": path})
    finally:
        os.unlink(path)
    probe.verdict(
        "stat a host file outside the grants (/var/tmp/<file>: existence, size)",
        "ENOENT",
        let_through=f"{size} bytes" in result["detail"],
        detail=result["detail"].replace(str(size), "<size>"),
    )


@pytest.fixture
def host_sysv_shm() -> Iterator[int]:
    """A world-readable/writable System V shared memory segment on the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x55430000 + secrets.randbelow(0xFFFF)
    shmid = libc.shmget(key, 4096, 0o1000 | 0o666)  # IPC_CREAT
    if shmid < 0:
        pytest.skip(f"cannot create a SysV segment here (errno {ctypes.get_errno()})")
    try:
        yield key
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


async def test_host_sysv_ipc(host_sysv_shm: int, sandbox: Any, probe: Any) -> None:
    code = """
libc.shmget.restype = ctypes.c_int
ctypes.set_errno(0)
r = libc.shmget(int(os.environ["KEY"]), 0, 0o666)
verdict(r >= 0, "ok" if r >= 0 else err(ctypes.get_errno()))
"""
    result = await probe.run_py(sandbox, code, env={"KEY": str(host_sysv_shm)})
    probe.verdict(
        "attach a host SysV shared memory segment (0666, by key)",
        "ENOENT (own IPC namespace)",
        let_through=result["let_through"],
        detail=result["detail"],
    )
