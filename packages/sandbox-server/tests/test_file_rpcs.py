"""The file RPCs' server-side limits, raw over the wire: ``--max-get-bytes-mb`` bounds every
``GetBytes``/``GetBytesStream``, whatever ``max_bytes`` the client asks for."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import (
    FLAG_END_STREAM,
    EnvelopeReader,
    envelope,
    parse_end_stream,
)
from union.sandbox.server.testing import RunningServer, spawn_server

from .conftest import SERVICE

PROTO = {"content-type": "application/proto"}
STREAM_PROTO = {"content-type": "application/connect+proto"}
CAP = 1 << 20


@pytest.fixture(scope="module")
def capped() -> Iterator[tuple[RunningServer, httpx.Client]]:
    """A server whose GetBytes cap is 1 MiB."""
    with (
        spawn_server("--max-get-bytes-mb", "1") as server,
        httpx.Client(base_url=server.endpoint, timeout=60) as http,
    ):
        yield server, http


def _put(http: httpx.Client, path: str, size: int) -> None:
    request = pb.PutBytesRequest(target_path=path, data=b"x" * size, overwrite=True)
    response = http.post(f"/{SERVICE}/PutBytes", content=request.encode(), headers=PROTO)
    assert response.status_code == 200, response.text


def _get_unary(http: httpx.Client, path: str, max_bytes: int) -> tuple[str, str, int]:
    """(error code or "ok", message, bytes read)."""
    request = pb.GetBytesRequest(source_path=path, max_bytes=max_bytes)
    response = http.post(f"/{SERVICE}/GetBytes", content=request.encode(), headers=PROTO)
    if response.status_code != 200:
        error = json.loads(response.content)
        return error["code"], error["message"], 0
    return "ok", "", len(pb.GetBytesResponse.decode(response.content).data)


def _get_stream(http: httpx.Client, path: str, max_bytes: int) -> tuple[str, str, int]:
    request = pb.GetBytesRequest(source_path=path, max_bytes=max_bytes)
    response = http.post(
        f"/{SERVICE}/GetBytesStream", content=envelope(request), headers=STREAM_PROTO
    )
    assert response.status_code == 200
    read = 0
    for flags, payload in EnvelopeReader().feed(response.content):
        if flags & FLAG_END_STREAM:
            error = parse_end_stream(payload)
            if error is not None:
                return error.code.value, error.message, read
        else:
            read += len(pb.GetBytesResponse.decode(payload).data)
    return "ok", "", read


@pytest.mark.parametrize("get", [_get_unary, _get_stream], ids=["GetBytes", "GetBytesStream"])
@pytest.mark.parametrize("asked", [0, CAP + 1, 8 * CAP], ids=["none", "cap+1", "8x-cap"])
def test_the_server_cap_holds_whatever_the_client_asks(
    capped: tuple[RunningServer, httpx.Client], get: object, asked: int
) -> None:
    server, http = capped
    path = f"{server.work_dir}/over-cap-{asked}.bin"
    _put(http, path, CAP + CAP // 2)
    assert callable(get)
    code, message, read = get(http, path, asked)
    assert code == "resource_exhausted", (code, message, read)
    assert "--max-get-bytes-mb" in message
    assert read == 0  # refused before any byte of the file left the server


@pytest.mark.parametrize("get", [_get_unary, _get_stream], ids=["GetBytes", "GetBytesStream"])
def test_a_file_within_the_cap_is_served_whatever_the_client_asks(
    capped: tuple[RunningServer, httpx.Client], get: object
) -> None:
    server, http = capped
    path = f"{server.work_dir}/at-cap.bin"
    _put(http, path, CAP)
    assert callable(get)
    assert get(http, path, 8 * CAP) == ("ok", "", CAP)
    # A lower client limit still applies (and is the client's, not the server's cap).
    code, message, _ = get(http, path, CAP - 1)
    assert code != "ok"
    assert f"exceeds max_bytes={CAP - 1}" in message
    assert "--max-get-bytes-mb" not in message
