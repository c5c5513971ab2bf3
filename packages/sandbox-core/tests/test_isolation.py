"""What a sandboxed run can and cannot see or touch (reference-api §1.3, §2.4, §3.2, §3.5;
ARCHITECTURE "Isolation per backend", "Running as root must not mean root's files").

Host-side fixtures (a secret under /root, a root-only file under /etc, a listening socket on
the host loopback) are created by the test and removed after it."""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import socket
from collections.abc import Iterator

import pytest

from union import sandbox as sb

pytestmark = pytest.mark.anyio


def read_host(path: str) -> bytes:
    """Read a host file (synchronously: tests check host state between awaits)."""
    with open(path, "rb") as f:
        return f.read()


def _make_file(path: str, content: str, mode: int) -> None:
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, mode)


@pytest.fixture
def secret() -> str:
    return f"secret-{secrets.token_hex(12)}"


@pytest.fixture
def root_secret_file(secret: str) -> Iterator[str]:
    path = f"/root/union-sbx-test-{secrets.token_hex(6)}.txt"
    _make_file(path, secret, 0o644)
    yield path
    os.unlink(path)


@pytest.fixture
def home_secret_file(secret: str) -> Iterator[str]:
    homes = sorted(
        p.pw_dir
        for p in pwd.getpwall()
        if p.pw_dir.startswith("/home/") and os.path.isdir(p.pw_dir)
    )
    if homes:
        home, created = homes[0], False
    else:
        home, created = f"/home/union-sbx-test-{secrets.token_hex(4)}", True
        os.makedirs(home, mode=0o755)
    path = os.path.join(home, f"union-sbx-test-{secrets.token_hex(6)}.txt")
    _make_file(path, secret, 0o644)
    yield path
    os.unlink(path)
    if created:
        os.rmdir(home)


@pytest.fixture(params=["/etc", "/usr/local/share"])
def root_only_file(request: pytest.FixtureRequest, secret: str) -> Iterator[str]:
    """A root-owned 0600 file inside a directory the sandbox may read."""
    directory = request.param
    path = os.path.join(directory, f"union-sbx-test-{secrets.token_hex(6)}")
    _make_file(path, secret, 0o600)
    yield path
    os.unlink(path)


@pytest.fixture
def public_etc_file(secret: str) -> Iterator[str]:
    path = f"/etc/union-sbx-test-public-{secrets.token_hex(6)}"
    _make_file(path, secret, 0o644)
    yield path
    os.unlink(path)


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP listener on the host loopback; returns its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def _connect_code(port: int) -> str:
    return (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )


# -- reading host files ----------------------------------------------------------------


async def test_cannot_read_or_list_root_home(sbx, root_secret_file: str, secret: str) -> None:
    name = os.path.basename(root_secret_file)
    result = await sbx.exec(f"cat {root_secret_file}; echo; ls -a /root")
    assert secret not in result.stdout
    assert name not in result.stdout
    # Whatever the sandbox sees at /root (nothing, or a mask), root's real files are absent.
    for real in os.listdir("/root"):
        if real not in (".pyenv", ".local", ".cache"):  # may hold a bound interpreter / uv
            assert f"\n{real}\n" not in f"\n{result.stdout}", (real, result)


async def test_cannot_read_or_list_user_homes(sbx, home_secret_file: str, secret: str) -> None:
    home = os.path.dirname(home_secret_file)
    name = os.path.basename(home_secret_file)
    result = await sbx.exec(f"cat {home_secret_file}; ls -a {home}; ls -a /home")
    assert secret not in result.stdout
    assert name not in result.stdout
    assert result.returncode != 0


async def test_root_only_file_in_an_allowed_dir_is_unreadable(
    sbx, root_only_file: str, secret: str
) -> None:
    result = await sbx.exec(f"cat {root_only_file}")
    assert result.returncode != 0
    assert secret not in result.stdout
    out = await sbx.run_code(
        f"try:\n    print(open({root_only_file!r}).read())\nexcept OSError as e:\n"
        "    print('denied', e.errno)"
    )
    assert secret not in out
    assert out.startswith("denied")


async def test_world_readable_file_in_etc_is_readable(
    sbx, public_etc_file: str, secret: str
) -> None:
    """Positive control for the test above: /etc itself is readable."""
    assert (await sbx.exec(f"cat {public_etc_file}")).stdout == secret


async def test_shadow_is_unreadable(sbx) -> None:
    result = await sbx.exec("cat /etc/shadow")
    assert result.returncode != 0
    assert result.stdout == ""


async def test_files_outside_the_allow_list_are_invisible(sbx, secret: str) -> None:
    """A world-readable host file in a directory that is not granted (here /var/tmp and the
    repository checkout) cannot be read."""
    path = f"/var/tmp/union-sbx-test-{secrets.token_hex(6)}"
    _make_file(path, secret, 0o644)
    try:
        result = await sbx.exec(f"cat {path}; cat {os.path.abspath(__file__)} | head -c 100")
    finally:
        os.unlink(path)
    assert secret not in result.stdout
    assert "What a sandboxed run" not in result.stdout


async def test_host_tmp_is_not_visible(sbx, secret: str) -> None:
    path = f"/tmp/union-sbx-test-hostfile-{secrets.token_hex(6)}"
    _make_file(path, secret, 0o644)
    try:
        result = await sbx.exec(f"cat {path}; ls /tmp")
    finally:
        os.unlink(path)
    assert secret not in result.stdout
    assert os.path.basename(path) not in result.stdout


async def test_other_sessions_work_dirs_are_invisible(backend: str) -> None:
    async with (
        sb.on_device.session(backend=backend) as one,
        sb.on_device.session(backend=backend) as two,
    ):
        await one.put_bytes(f"{one.work_dir}/private.txt", b"one's data")
        result = await two.exec(f"cat {one.work_dir}/private.txt; ls {one.work_dir}")
        assert "one's data" not in result.stdout
        assert "private.txt" not in result.stdout


# -- writing ---------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["/usr", "/usr/local", "/etc", "/var/tmp", "/", "/opt"])
async def test_cannot_write_outside_the_work_dir(sbx, directory: str) -> None:
    name = f"union-sbx-test-{secrets.token_hex(6)}"
    target = os.path.join(directory, name)
    result = await sbx.exec(f"echo x > {target} || touch {target} || mkdir {target}")
    assert result.returncode != 0
    assert not os.path.exists(target)


async def test_cannot_modify_system_files(sbx) -> None:
    before = read_host("/etc/hostname")
    result = await sbx.exec("echo pwned >> /etc/hostname; rm -f /etc/hostname")
    assert result.returncode != 0
    assert read_host("/etc/hostname") == before


async def test_tmp_writes_stay_in_the_run(sbx) -> None:
    name = f"union-sbx-test-{secrets.token_hex(6)}"
    first = await sbx.exec(
        f"echo a > /tmp/{name} && echo b > /dev/shm/{name} && cat /tmp/{name} /dev/shm/{name}"
    )
    assert first.stdout == "a\nb\n", first
    assert not os.path.exists(f"/tmp/{name}")
    assert not os.path.exists(f"/dev/shm/{name}")
    second = await sbx.exec(f"ls /tmp/{name} /dev/shm/{name}")
    assert second.returncode != 0
    assert name not in second.stdout


async def test_tmp_starts_empty_each_run(sbx) -> None:
    await sbx.exec("touch /tmp/leftover /dev/shm/leftover", check=True)
    result = await sbx.exec("ls -A /tmp /dev/shm")
    assert "leftover" not in result.stdout


async def test_work_dir_persists_across_runs(sbx) -> None:
    await sbx.exec("mkdir -p state && echo 1 > state/counter", check=True)
    await sbx.exec("echo $(( $(cat state/counter) + 1 )) > state/counter", check=True)
    assert (await sbx.exec("cat state/counter")).stdout == "2\n"
    assert read_host(f"{sbx.work_dir}/state/counter") == b"2\n"


async def test_extra_read_only_and_read_write_paths(backend: str, public_tmp: str) -> None:
    ro = os.path.join(public_tmp, "models")
    rw = os.path.join(public_tmp, "scratch")
    os.makedirs(ro)
    os.makedirs(rw)
    os.chmod(ro, 0o755)
    os.chmod(rw, 0o777)
    _make_file(os.path.join(ro, "weights.bin"), "weights", 0o644)
    async with sb.on_device.session(
        backend=backend, read_only_paths=[ro], read_write_paths=[rw]
    ) as sbx:
        allow = sbx.fs_allowlist()
        assert ro in allow["read_only"]
        assert rw in allow["read_write"]
        assert sbx.work_dir in allow["read_write"]
        for default in ("/usr", "/etc"):
            assert default in allow["read_only"]  # additions never replace defaults
        result = await sbx.exec(f"cat {ro}/weights.bin")
        assert result.stdout == "weights", result
        result = await sbx.exec(f"touch {ro}/new")
        assert result.returncode != 0
        assert not os.path.exists(f"{ro}/new")
        result = await sbx.exec(f"echo out > {rw}/result.txt && echo ok")
        assert result.stdout == "ok\n", result
    assert read_host(f"{rw}/result.txt") == b"out\n"


# -- processes, identity ---------------------------------------------------------------


async def test_sees_only_its_own_processes(sbx) -> None:
    # The glob is expanded by the shell itself: no other process exists while it runs.
    result = await sbx.exec('for p in /proc/[0-9]*; do echo "${p#/proc/}"; done; echo "self=$$"')
    lines = result.stdout.split()
    self_pid = lines.pop().split("=")[1]
    assert set(lines) == {"1", self_pid}, result
    assert str(os.getpid()) not in lines


async def test_ps_shows_only_the_sandbox(sbx) -> None:
    result = await sbx.exec("ps -e -o pid=,args=")
    pids = {int(line.split()[0]) for line in result.stdout.splitlines() if line.strip()}
    assert 1 in pids
    assert "pytest" not in result.stdout
    assert len(pids) <= 4, result.stdout  # init, sh, ps (and nothing from the host)


async def test_cannot_signal_host_processes(sbx) -> None:
    result = await sbx.exec(f"kill -0 {os.getpid()} && echo reachable")
    assert "reachable" not in result.stdout


async def test_hostname_is_sandbox(sbx) -> None:
    result = await sbx.exec("uname -n; cat /proc/sys/kernel/hostname")
    assert result.stdout == "sandbox\nsandbox\n", result


async def test_cannot_create_namespaces_or_mount(sbx) -> None:
    result = await sbx.exec(
        "unshare --user --map-root-user true && echo userns-ok; "
        "unshare --mount true && echo mountns-ok; "
        "mount -t tmpfs none /tmp && echo mount-ok; true"
    )
    assert "userns-ok" not in result.stdout
    assert "mountns-ok" not in result.stdout
    assert "mount-ok" not in result.stdout


# -- network ---------------------------------------------------------------------------


async def test_network_blocked_by_default(sbx, host_server: int) -> None:
    out = await sbx.run_code(_connect_code(host_server))
    assert out.startswith("refused"), out


async def test_only_loopback_exists(sbx) -> None:
    result = await sbx.exec("cat /proc/net/dev")
    interfaces = {
        line.split(":")[0].strip() for line in result.stdout.splitlines()[2:] if ":" in line
    }
    assert interfaces == {"lo"}, result


async def test_loopback_inside_the_run_works(sbx) -> None:
    code = (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "c = socket.create_connection(s.getsockname(), timeout=3)\n"
        "a, _ = s.accept(); c.sendall(b'ping'); print(a.recv(4).decode())\n"
    )
    assert await sbx.run_code(code) == "ping\n"


async def test_dns_fails_when_blocked(sbx) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443)\n"
        "    print('resolved')\n"
        "except OSError as exc:\n"
        "    print('failed', type(exc).__name__)\n"
    )
    out = await sbx.run_code(code, timeout_s=20)
    assert out.startswith("failed"), out


async def test_open_network_reaches_the_host(sbx, host_server: int) -> None:
    """Positive control: with ``network_mode="open"`` the same connection succeeds."""
    out = await sbx.run_code(_connect_code(host_server), network_mode="open")
    assert out == "connected\n"


async def test_per_call_override_of_the_session_posture(backend: str, host_server: int) -> None:
    async with sb.on_device.session(backend=backend, network_mode="open") as sbx:
        assert await sbx.run_code(_connect_code(host_server)) == "connected\n"
        out = await sbx.run_code(_connect_code(host_server), network_mode="blocked")
        assert out.startswith("refused")
    async with sb.on_device.session(backend=backend) as sbx:
        out = await sbx.run_code(_connect_code(host_server), network_mode="open")
        assert out == "connected\n"


async def test_network_blocked_under_shell_tools(sbx, host_server: int) -> None:
    cmd = f"exec 3<>/dev/tcp/127.0.0.1/{host_server} && echo connected"
    result = await sbx.exec(f"bash -c {shlex.quote(cmd)}")
    assert "connected" not in result.stdout


# -- allow-list and deny-list postures --------------------------------------------------


def _host_address() -> str | None:
    """This host's own non-loopback IPv4 address. A test server must not listen on loopback
    for proxy tests: inside a run 127.0.0.1 is the run's own loopback (and NO_PROXY)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # UDP connect sends nothing
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.fixture
def lan_server() -> Iterator[tuple[str, int]]:
    """An HTTP server on this host's non-loopback address answering every GET with
    ``hello-from-host``. Returns (address, port)."""
    import http.server
    import threading

    address = _host_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this host")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello-from-host"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield address, server.server_address[1]
    server.shutdown()
    server.server_close()


def _fetch_code(url: str) -> str:
    """Python that GETs ``url`` the way ordinary clients do (honouring the proxy env vars)
    and prints ``status body`` or ``error <type> <detail>``."""
    return (
        "import urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=10)\n"
        "    print(r.status, r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print('error', 'HTTPError', e.code)\n"
        "except Exception as e:\n"
        "    print('error', type(e).__name__, e)\n"
    )


async def test_allowlist_reaches_a_listed_host(backend: str, lan_server) -> None:
    address, port = lan_server
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=[f"{address}/32"]
    ) as sbx:
        out = await sbx.run_code(_fetch_code(f"http://{address}:{port}/x"))
        assert out == "200 hello-from-host\n"
        env = (await sbx.exec("env")).stdout
        assert "HTTP_PROXY=" in env or "http_proxy=" in env


async def test_allowlist_refuses_an_unlisted_host(backend: str, lan_server) -> None:
    address, port = lan_server
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=["pypi.org"]
    ) as sbx:
        out = await sbx.run_code(_fetch_code(f"http://{address}:{port}/x"))
    assert out.startswith("error"), out
    assert "hello-from-host" not in out


async def test_allowlist_has_no_direct_route_around_the_proxy(backend: str, lan_server) -> None:
    address, port = lan_server
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=[f"{address}/32"]
    ) as sbx:
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(({address!r}, {port}), timeout=3).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
        )
        out = await sbx.run_code(code)
    assert out.startswith("refused"), out


async def test_per_call_allowlist_on_a_blocked_session(backend: str, lan_server) -> None:
    """On-device, each run gets its own network namespace, so a per-call posture may differ
    from the session default (reference-api §2.4)."""
    address, port = lan_server
    async with sb.on_device.session(backend=backend) as sbx:
        url = f"http://{address}:{port}/x"
        out = await sbx.run_code(
            _fetch_code(url), network_mode="allowlist", network_allowlist=[f"{address}/32"]
        )
        assert out == "200 hello-from-host\n"
        out = await sbx.run_code(_fetch_code(url))  # the session default: blocked
        assert out.startswith("error"), out


async def test_denylist_applies_in_open_mode(backend: str, lan_server) -> None:
    address, port = lan_server
    url = f"http://{address}:{port}/x"
    async with sb.on_device.session(
        backend=backend, network_mode="open", network_denylist=[f"{address}/32"]
    ) as sbx:
        # Loudly documented: in "open" mode the deny-list binds only proxy-aware clients.
        with pytest.warns(UserWarning, match="proxy"):
            out = await sbx.run_code(_fetch_code(url))
    assert out.startswith("error"), out
    assert "hello-from-host" not in out
    async with sb.on_device.session(backend=backend, network_mode="open") as sbx:
        assert await sbx.run_code(_fetch_code(url)) == "200 hello-from-host\n"


async def test_denylist_wins_over_allowlist(backend: str, lan_server) -> None:
    address, port = lan_server
    async with sb.on_device.session(
        backend=backend,
        network_mode="allowlist",
        network_allowlist=[f"{address}/32"],
        network_denylist=[f"{address}/32"],
    ) as sbx:
        out = await sbx.run_code(_fetch_code(f"http://{address}:{port}/x"))
    assert out.startswith("error"), out


async def test_proxy_refusal_is_a_403(backend: str, lan_server) -> None:
    address, port = lan_server
    async with sb.on_device.session(
        backend=backend, network_mode="allowlist", network_allowlist=["pypi.org"]
    ) as sbx:
        out = await sbx.run_code(_fetch_code(f"http://{address}:{port}/x"))
    assert out == "error HTTPError 403\n", out


async def test_commands_get_the_normal_scheduling_policy(sbx) -> None:
    """The supervisor and inits run as SCHED_BATCH; the command must not inherit it."""
    result = await sbx.exec("python3 -c 'import os; print(os.sched_getscheduler(0))'", check=True)
    assert int(result.stdout) == os.SCHED_OTHER


async def test_commands_hold_only_their_stdio(any_sbx) -> None:
    """A run's command (fresh init or reused one) holds stdin, stdout and stderr and nothing
    else of the sandbox's: not the run's status pipe (it could forge its end), not another
    run's pipes, not the supervisor's sockets."""
    for _ in range(3):
        result = await any_sbx.exec("ls /proc/self/fd", check=True)
        # ls's own directory handle on /proc/self/fd is the one extra entry.
        assert len(result.stdout.split()) == 4, result.stdout
