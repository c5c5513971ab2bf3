"""Every RPC, of every kind, refuses a call without the bearer token or with a wrong one
before it does anything: no command runs, no file is written or read, a live run is neither
fed, signalled nor killed. Over both codecs, with raw HTTP against a real server.

The RPCs are read from ``sandbox.proto``, so an RPC added there without a case here fails
:func:`test_every_rpc_of_the_schema_is_covered`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from union.sandbox.core.wire import Message, proto_source
from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import (
    FLAG_END_STREAM,
    EnvelopeReader,
    envelope,
    parse_end_stream,
)
from union.sandbox.server.testing import RunningServer

from .conftest import SERVICE

CODECS = ("proto", "json")
#: Authorization header values that must all be refused (None: no header at all).
WRONG_AUTH: dict[str, Callable[[str], str | None]] = {
    "missing": lambda token: None,
    "wrong-token": lambda token: f"Bearer {secrets.token_urlsafe(24)}",
    "token-as-basic": lambda token: f"Basic {token}",
    "token-prefix": lambda token: f"Bearer {token[:-1]}",
}
SECRET = b"auth-test-secret-" + secrets.token_hex(8).encode()


@dataclasses.dataclass
class Live:
    """A run started with the right token, waiting on its stdin."""

    execution_id: str
    stream: httpx.Response
    reader: EnvelopeReader
    chunks: Iterator[bytes]


@dataclasses.dataclass
class Case:
    """One RPC: its kind, the request a refused caller sends, and what must not happen."""

    kind: str  # unary, server_stream, client_stream
    requests: Callable[[Path, Live], list[Message]]
    nothing_happened: Callable[[Path, httpx.Response], None]


def _absent(marker: Path, response: httpx.Response) -> None:
    assert not marker.exists(), f"{marker.name} was created by an unauthenticated call"


def _no_secret(marker: Path, response: httpx.Response) -> None:
    assert SECRET not in response.content
    assert base64.b64encode(SECRET)[:16] not in response.content


def _nothing_to_see(marker: Path, response: httpx.Response) -> None:
    pass  # the refusal itself is the check (the live run is checked after every case)


CASES: dict[str, Case] = {
    "Execute": Case(
        "server_stream",
        lambda marker, live: [pb.ExecuteRequest(input=f"touch {marker}".encode())],
        _absent,
    ),
    "FetchFile": Case(
        "unary",
        lambda marker, live: [pb.FetchFileRequest(uri="file:///etc/hostname")],
        _nothing_to_see,
    ),
    "FetchDir": Case(
        "unary",
        lambda marker, live: [pb.FetchDirRequest(uri="file:///etc")],
        _nothing_to_see,
    ),
    "PutBytes": Case(
        "unary",
        lambda marker, live: [
            pb.PutBytesRequest(target_path=str(marker), data=b"written", overwrite=True)
        ],
        _absent,
    ),
    "GetBytes": Case(
        "unary",
        lambda marker, live: [pb.GetBytesRequest(source_path=str(marker.parent / "secret"))],
        _no_secret,
    ),
    "Health": Case("unary", lambda marker, live: [pb.HealthRequest()], _nothing_to_see),
    "WriteStdin": Case(
        "unary",
        lambda marker, live: [
            pb.WriteStdinRequest(execution_id=live.execution_id, data=b"injected\n", eof=True)
        ],
        _nothing_to_see,
    ),
    "Signal": Case(
        "unary",
        lambda marker, live: [pb.SignalRequest(execution_id=live.execution_id, signal=9)],
        _nothing_to_see,
    ),
    "Kill": Case(
        "unary",
        lambda marker, live: [pb.KillRequest(execution_id=live.execution_id)],
        _nothing_to_see,
    ),
    "ReleaseIdle": Case("unary", lambda marker, live: [pb.ReleaseIdleRequest()], _nothing_to_see),
    "PutBytesStream": Case(
        "client_stream",
        lambda marker, live: [
            pb.PutBytesRequest(target_path=str(marker), data=b"first", overwrite=True),
            pb.PutBytesRequest(data=b"second"),
        ],
        _absent,
    ),
    "GetBytesStream": Case(
        "server_stream",
        lambda marker, live: [pb.GetBytesRequest(source_path=str(marker.parent / "secret"))],
        _no_secret,
    ),
}


def schema_rpcs() -> dict[str, str]:
    """RPC name -> kind, from the ``.proto`` the server implements."""
    kinds = {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }
    found = re.findall(
        r"^\s*rpc\s+(\w+)\s*\(\s*(stream\s+)?\w+\s*\)\s*returns\s*\(\s*(stream\s+)?\w+\s*\)",
        proto_source(),
        re.M,
    )
    return {name: kinds[(bool(client), bool(server))] for name, client, server in found}


def test_every_rpc_of_the_schema_is_covered() -> None:
    rpcs = schema_rpcs()
    assert len(rpcs) >= 12
    assert {name: case.kind for name, case in CASES.items()} == rpcs


def _body(codec: str, kind: str, requests: list[Message]) -> bytes:
    payloads = [m.encode() if codec == "proto" else m.to_json_bytes() for m in requests]
    if kind == "unary":
        [payload] = payloads
        return payload
    return b"".join(envelope(p) for p in payloads)


def _content_type(codec: str, kind: str) -> str:
    return f"application/{codec}" if kind == "unary" else f"application/connect+{codec}"


@pytest.fixture
def live(http: httpx.Client) -> Iterator[Live]:
    """``cat`` in a run with its stdin kept open; the test ends it (or it is killed)."""
    request = pb.ExecuteRequest(input=b"cat", stdin_pipe=True, stream_stdout=True)
    with http.stream(
        "POST",
        f"/{SERVICE}/Execute",
        content=envelope(request),
        headers={"content-type": "application/connect+proto"},
    ) as response:
        assert response.status_code == 200
        reader = EnvelopeReader()
        chunks = response.iter_raw()
        first: list[tuple[int, bytes]] = []
        while not first:
            first = list(reader.feed(next(chunks)))
        flags, payload = first[0]
        assert not flags & FLAG_END_STREAM
        info = pb.ExecuteResponse.decode(payload).session_info
        assert info is not None and info.execution_id
        run = Live(info.execution_id, response, reader, chunks)
        try:
            yield run
        finally:
            http.post(
                f"/{SERVICE}/Kill",
                content=pb.KillRequest(execution_id=run.execution_id).encode(),
                headers={"content-type": "application/proto"},
            )


def _finish(http: httpx.Client, run: Live) -> tuple[bytes, pb.Termination | None]:
    """Feed the live run ``hello`` and close its stdin; its output and termination."""
    response = http.post(
        f"/{SERVICE}/WriteStdin",
        content=pb.WriteStdinRequest(
            execution_id=run.execution_id, data=b"hello\n", eof=True
        ).encode(),
        headers={"content-type": "application/proto"},
    )
    assert response.status_code == 200, response.text
    out = bytearray()
    termination = None
    for chunk in run.chunks:
        for flags, payload in run.reader.feed(chunk):
            if flags & FLAG_END_STREAM:
                assert parse_end_stream(payload) is None
                return bytes(out), termination
            message = pb.ExecuteResponse.decode(payload)
            out += message.stdout or b""
            termination = message.termination or termination
    return bytes(out), termination


@pytest.mark.parametrize("auth", WRONG_AUTH)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rpc", CASES)
def test_refused_without_the_right_token(
    rpc: str,
    codec: str,
    auth: str,
    *,
    server: RunningServer,
    http: httpx.Client,
    live: Live,
) -> None:
    assert server.token is not None
    case = CASES[rpc]
    work = Path(server.work_dir)
    (work / "secret").write_bytes(SECRET)
    marker = work / f"auth-{rpc}-{codec}-{auth}-{secrets.token_hex(4)}"
    headers = {"content-type": _content_type(codec, case.kind)}
    authorization = WRONG_AUTH[auth](server.token)
    if authorization is not None:
        headers["authorization"] = authorization
    response = httpx.post(
        f"{server.endpoint}/{SERVICE}/{rpc}",
        content=_body(codec, case.kind, case.requests(marker, live)),
        headers=headers,
        timeout=60,
    )
    if case.kind == "unary":
        # Connect unary errors: an HTTP status and a JSON body, whatever the codec.
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")
    else:
        # Streams: 200, and the error in the end-of-stream message, with nothing before it.
        assert response.status_code == 200
        [(flags, payload)] = EnvelopeReader().feed(response.content)
        assert flags & FLAG_END_STREAM
        error = parse_end_stream(payload)
        assert error is not None
        assert error.code.value == "unauthenticated"
    case.nothing_happened(marker, response)
    # The live run was neither fed, signalled nor killed: it echoes what the right caller
    # sends it and exits 0.
    out, termination = _finish(http, live)
    assert out == b"hello\n"
    assert termination is not None
    assert termination.kind == pb.TerminationKind.TERMINATION_KIND_EXIT
    assert termination.exit_code == 0
    assert not os.path.exists(marker)
