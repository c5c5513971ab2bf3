"""Install a package through the allow-list proxy, then run it with the network blocked.

    uv run examples/install_then_run_offline.py [--backend userns|bubblewrap]

The usual pattern for untrusted code that needs a dependency: let *one* honest tool
(``uv pip install``) reach *one* package index through the sandbox's filtering proxy, then
run the code itself with no network at all. To stay offline and fast, this example plays
the package index too:

1. it builds a tiny pure-Python wheel by hand (a wheel is a zip file with the package code
   and three metadata files: ``METADATA``, ``WHEEL`` and ``RECORD``);
2. it serves that wheel from a PEP 503 "simple" index (``/simple/<name>/`` lists links to
   the files) on ``127.0.0.1``, from ``http.server`` in a thread of this script;
3. it opens a session with ``network_mode="allowlist"`` and ``network_allowlist=
   ["127.0.0.1/32"]`` and runs ``uv pip install --index-url http://127.0.0.1:<port>/simple``:
   the request leaves the sandbox only through the proxy, which checks it against the list
   and logs its decision (``proc.network_decisions``);
4. it runs code that imports the installed package with ``network_mode="blocked"``, and shows
   that the index is out of reach from that run.

In production the allow-list would be ``sb.PYPI_HOSTS`` and the index PyPI itself.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import io
import socketserver
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from union import sandbox as sb

NAME = "sandbox_demo_greeter"  # the distribution and import name
VERSION = "1.0.0"
WHEEL_NAME = f"{NAME}-{VERSION}-py3-none-any.whl"

PACKAGE_CODE = '''\
"""A tiny package that exists only in this example's private index."""

__version__ = "1.0.0"


def greet(name: str) -> str:
    return f"hello, {name}, from an offline sandbox"
'''


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel() -> bytes:
    """A valid pure-Python wheel, built in memory: the files and their RECORD."""
    dist_info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}/__init__.py": PACKAGE_CODE.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
            "Summary: A demo package served from a local index\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hand-made\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")  # RECORD does not list its own hash
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return buf.getvalue()


@contextmanager
def serve_index(wheel: bytes) -> Iterator[tuple[str, list[str]]]:
    """A PEP 503 simple index on a free loopback port: (index URL, paths requested)."""
    project = NAME.replace("_", "-")  # PEP 503 normalised project name
    sha = hashlib.sha256(wheel).hexdigest()
    pages = {
        "/simple/": f'<a href="/simple/{project}/">{project}</a>\n'.encode(),
        f"/simple/{project}/": (
            f'<a href="/files/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>\n'
        ).encode(),
    }
    requested: list[str] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = self._head()
            if body is not None:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # uv asks HEAD first (to see if it can fetch a range)
            self._head()

        def _head(self) -> bytes | None:
            requested.append(f"{self.command} {self.path}")
            if self.path == f"/files/{WHEEL_NAME}":
                body, ctype = wheel, "application/octet-stream"
            elif self.path in pages:
                body, ctype = pages[self.path], "text/html"
            else:
                self.send_error(404)
                return None
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body

        def log_message(self, *args: object) -> None:  # keep the demo's output readable
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Index)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", requested
    finally:
        server.shutdown()
        server.server_close()


async def main(backend: str) -> None:
    wheel = build_wheel()
    print(f"built {WHEEL_NAME} ({len(wheel)} bytes) by hand")
    with serve_index(wheel) as (index_url, requested):
        print(f"serving a PEP 503 simple index at {index_url}")
        async with sb.on_device.session(
            backend=backend,
            network_mode="allowlist",
            network_allowlist=["127.0.0.1/32"],  # the index, and nothing else
        ) as sbx:
            print(f"session work dir: {sbx.work_dir} (backend {backend})")

            # The run gets HTTP_PROXY/HTTPS_PROXY pointing at the proxy on its own loopback.
            env = await sbx.exec("env | grep -i _proxy= | sort")
            print("  proxy variables the run sees:")
            for line in env.stdout.splitlines():
                print(f"    {line}")

            # 1. Install through the filtering proxy. The sandbox sets NO_PROXY=127.0.0.1,
            #    localhost, ::1 so a program can talk to servers *inside* its own sandbox
            #    directly. Our index is on the *host's* 127.0.0.1, which is a different
            #    network namespace: a direct connection from the sandbox would reach the
            #    sandbox's own loopback, where nothing listens. Clearing NO_PROXY for this
            #    one run sends the request through the proxy, which dials the host's
            #    loopback (allowed by "127.0.0.1/32"). With a real index such as PyPI the
            #    NO_PROXY override is not needed.
            print(f"\n$ uv pip install --index-url {index_url} {NAME}")
            proc = await sbx.run(
                f"uv pip install --index-url {index_url} {NAME}",
                env={"NO_PROXY": "", "no_proxy": ""},
                timeout_s=60,
            )
            out, err = await proc.communicate_text()
            for line in (out + err).strip().splitlines():
                print(f"  | {line}")
            print(f"  exit {proc.returncode}")
            if proc.returncode != 0:
                raise SystemExit(f"install failed: {err.strip()}")
            print("  the proxy's decisions for that run (proc.network_decisions):")
            for d in proc.network_decisions:
                verdict = "allowed" if d.allowed else "REFUSED"
                why = d.rule or d.reason
                print(
                    f"    {verdict} {d.protocol} {d.host}:{d.port} ({why}) "
                    f"up={d.bytes_up}B down={d.bytes_down}B"
                )
            print(f"  the index served: {', '.join(requested)}")
            if not any(d.allowed for d in proc.network_decisions):
                raise SystemExit("the install did not go through the sandbox's proxy")

            # Anything not on the list is refused by the proxy: a 403, logged with a reason.
            proc = await sbx.run(
                "curl -sS --noproxy '' -o /dev/null -w '%{http_code}' http://10.1.2.3/",
                timeout_s=30,
            )
            out, _ = await proc.communicate_text()
            print(f"\nallowlist run fetching http://10.1.2.3/ (not on the list) -> HTTP {out}")
            for d in proc.network_decisions:
                print(f"  {'allowed' if d.allowed else 'REFUSED'} {d.host}:{d.port}: {d.reason}")

            # 2. Run code that uses the package, with no network at all.
            code = (
                f"import {NAME}\n"
                f"print({NAME}.greet('newcomer'))\n"
                f"print('version', {NAME}.__version__, 'from', {NAME}.__file__)\n"
            )
            print("\nrun_code(...) with network_mode='blocked':")
            output = await sbx.run_code(code, network_mode="blocked")
            for line in output.splitlines():
                print(f"  {line}")

            # 3. The same index is unreachable from a blocked run: there is no proxy and
            #    no route out (the sandbox's loopback has nothing on that port).
            probe = await sbx.exec(
                f"curl -sS --max-time 5 --noproxy '' {index_url}/",
                network_mode="blocked",
            )
            print(
                f"\nblocked run fetching the index -> exit {probe.returncode}: "
                f"{probe.stderr.strip()}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="userns", choices=["bubblewrap", "userns"])
    args = parser.parse_args()
    anyio.run(main, args.backend)
