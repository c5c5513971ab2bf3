"""The Connect protocol as any client sees it: raw HTTP against a real server."""

from __future__ import annotations

import json
import struct

import anyio
import httpx
import pytest

from union.sandbox.core.wire import messages as pb
from union.sandbox.core.wire.connect import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    EnvelopeReader,
    envelope,
    gunzip,
    gzip,
    parse_end_stream,
)
from union.sandbox.server.testing import RunningServer

from .conftest import SERVICE

PROTO = {"content-type": "application/proto"}
JSON = {"content-type": "application/json"}
STREAM_PROTO = {"content-type": "application/connect+proto"}
STREAM_JSON = {"content-type": "application/connect+json"}


def url(method: str) -> str:
    return f"/{SERVICE}/{method}"


def frames(body: bytes) -> list[tuple[int, bytes]]:
    """The envelopes of a response body, inflated."""
    return [
        (flags, gunzip(payload) if flags & FLAG_COMPRESSED else payload)
        for flags, payload in EnvelopeReader().feed(body)
    ]


def execute(
    http: httpx.Client, request: pb.ExecuteRequest, **headers: str
) -> list[pb.ExecuteResponse | Exception | None]:
    response = http.post(
        url("Execute"), content=envelope(request), headers={**STREAM_PROTO, **headers}
    )
    assert response.status_code == 200
    out: list[pb.ExecuteResponse | Exception | None] = []
    for flags, payload in frames(response.content):
        if flags & FLAG_END_STREAM:
            out.append(parse_end_stream(payload))
        else:
            out.append(pb.ExecuteResponse.decode(payload))
    return out


def assert_alive(http: httpx.Client) -> None:
    response = http.post(url("Health"), content=b"", headers=PROTO)
    assert response.status_code == 200
    assert pb.HealthResponse.decode(response.content).backend == "userns"


# -- codecs --------------------------------------------------------------------------------


def test_health_proto_and_json(http: httpx.Client, server: RunningServer) -> None:
    response = http.post(url("Health"), content=pb.HealthRequest().encode(), headers=PROTO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    health = pb.HealthResponse.decode(response.content)
    assert health.backend == "userns"
    assert health.work_dir == server.work_dir
    assert "put-bytes-stream" in health.features
    assert health.max_put_bytes == 64 << 20
    response = http.post(url("Health"), content=b"{}", headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["backend"] == "userns"
    assert body["maxPutBytes"] == str(64 << 20)  # 64-bit integers are JSON strings


def test_execute_stream_proto(http: httpx.Client) -> None:
    messages = execute(
        http,
        pb.ExecuteRequest(
            input=b"echo out; echo err >&2; exit 3", stream_stdout=True, stream_stderr=True
        ),
    )
    assert isinstance(messages[0], pb.ExecuteResponse)
    assert messages[0].session_info is not None
    info = messages[0].session_info
    assert info.backend == "userns"
    assert len(info.execution_id) == 16
    assert info.isolation is not None
    assert "net" in info.isolation.namespaces
    outputs = [m for m in messages if isinstance(m, pb.ExecuteResponse) and (m.stdout or m.stderr)]
    assert b"".join(m.stdout or b"" for m in outputs) == b"out\n"
    assert b"".join(m.stderr or b"" for m in outputs) == b"err\n"
    term = messages[-2]
    assert isinstance(term, pb.ExecuteResponse)
    assert term.termination is not None
    assert term.termination.exit_code == 3
    assert term.termination.reason == "exit=3"
    assert term.termination.kind == pb.TerminationKind.TERMINATION_KIND_EXIT
    assert messages[-1] is None  # a clean end of stream


def test_execute_stream_json(http: httpx.Client) -> None:
    request = json.dumps({"input": "ZWNobyBoaQ==", "streamStdout": True}).encode()
    body = struct.pack(">BI", 0, len(request)) + request
    response = http.post(url("Execute"), content=body, headers=STREAM_JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/connect+json"
    objects = [json.loads(payload) for _, payload in frames(response.content)]
    assert "sessionInfo" in objects[0]
    assert {"stdout": "aGkK"} in objects
    assert objects[-2]["termination"]["kind"] == "TERMINATION_KIND_EXIT"
    assert objects[-1] == {}


def test_spawn_failure_ends_the_stream_with_internal(http: httpx.Client) -> None:
    messages = execute(http, pb.ExecuteRequest(input=b"true", working_dir="no-such-dir"))
    error = messages[-1]
    assert isinstance(error, Exception)
    assert error.code.value == "internal"
    assert "No such file or directory" in error.message
    assert error.detail is not None
    assert error.detail.exception == "ExecutionError"


def test_gzip_unary_both_ways(http: httpx.Client) -> None:
    request = pb.PutBytesRequest(target_path="/nowhere", data=b"x" * 5000).encode()
    response = http.post(
        url("Health"),
        content=gzip(pb.HealthRequest().encode() or b""),
        headers={**PROTO, "content-encoding": "gzip", "accept-encoding": "gzip"},
    )
    assert response.status_code == 200
    # Health is small: sent uncompressed even though gzip is accepted.
    assert "content-encoding" not in response.headers
    response = http.post(
        url("PutBytes"),
        content=gzip(request),
        headers={**PROTO, "content-encoding": "gzip", "accept-encoding": "gzip"},
    )
    assert response.status_code == 403  # the path is outside the work dir, but it decoded
    assert response.json()["code"] == "permission_denied"


def test_gzip_stream_both_ways(http: httpx.Client) -> None:
    payload = pb.ExecuteRequest(input=b"head -c 100000 /dev/zero", stream_stdout=True).encode()
    packed = gzip(payload)
    body = struct.pack(">BI", FLAG_COMPRESSED, len(packed)) + packed
    response = http.post(
        url("Execute"),
        content=body,
        headers={
            **STREAM_PROTO,
            "connect-content-encoding": "gzip",
            "connect-accept-encoding": "gzip",
        },
    )
    assert response.status_code == 200
    assert response.headers["connect-content-encoding"] == "gzip"
    raw = list(EnvelopeReader().feed(response.content))
    assert any(flags & FLAG_COMPRESSED for flags, _ in raw)
    stdout = b"".join(
        pb.ExecuteResponse.decode(p).stdout or b""
        for flags, p in frames(response.content)
        if not flags & FLAG_END_STREAM
    )
    assert stdout == b"\0" * 100000


def test_http2_prior_knowledge(server: RunningServer) -> None:
    assert server.token is not None
    with httpx.Client(
        base_url=server.endpoint,
        http1=False,
        http2=True,
        headers={"authorization": f"Bearer {server.token}"},
    ) as h2:
        response = h2.post(url("Health"), content=b"{}", headers=JSON)
        assert response.http_version == "HTTP/2"
        assert response.json()["backend"] == "userns"
        messages = execute(h2, pb.ExecuteRequest(input=b"echo h2", stream_stdout=True))
        assert any(isinstance(m, pb.ExecuteResponse) and m.stdout == b"h2\n" for m in messages)


def test_http2_connection_outlives_a_thousand_requests(server: RunningServer) -> None:
    """hypercorn ends a connection after 1,000 requests by default: on HTTP/2 its GOAWAY cut
    every stream still in flight (a client's running Executes). The server lifts that."""
    assert server.token is not None
    headers = {"authorization": f"Bearer {server.token}"}

    async def scenario() -> tuple[list[pb.ExecuteResponse], int]:
        async with httpx.AsyncClient(
            base_url=server.endpoint, http1=False, http2=True, headers=headers
        ) as h2:
            request = pb.ExecuteRequest(input=b"sleep 2; echo survived", stream_stdout=True)
            body = envelope(request)
            call = h2.stream("POST", url("Execute"), content=body, headers=STREAM_PROTO)
            async with call as long:
                ok = 0
                limiter = anyio.Semaphore(16)

                async def health() -> None:
                    nonlocal ok
                    async with limiter:
                        response = await h2.post(url("Health"), content=b"{}", headers=JSON)
                        ok += response.status_code == 200

                async with anyio.create_task_group() as tg:
                    for _ in range(1100):
                        tg.start_soon(health)
                raw = await long.aread()
        messages = [
            pb.ExecuteResponse.decode(p) for flags, p in frames(raw) if not flags & FLAG_END_STREAM
        ]
        return messages, ok

    messages, ok = anyio.run(scenario)
    assert ok == 1100
    assert any(m.stdout == b"survived\n" for m in messages)
    assert any(m.termination is not None and m.termination.exit_code == 0 for m in messages)


def test_healthz_needs_no_token(server: RunningServer) -> None:
    response = httpx.get(f"{server.endpoint}/healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token-0123456789", "Basic abc", "Bearer"]
)
def test_wrong_or_missing_token_is_unauthenticated(
    server: RunningServer, authorization: str | None
) -> None:
    headers = {**JSON}
    if authorization is not None:
        headers["authorization"] = authorization
    response = httpx.post(f"{server.endpoint}{url('Health')}", content=b"{}", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")
    # Streams answer 200 with the error in the end-of-stream message.
    request = pb.ExecuteRequest(input=b"echo should-not-run", stream_stdout=True)
    headers = {**STREAM_PROTO}
    if authorization is not None:
        headers["authorization"] = authorization
    response = httpx.post(
        f"{server.endpoint}{url('Execute')}", content=envelope(request), headers=headers
    )
    assert response.status_code == 200
    [(flags, payload)] = frames(response.content)
    assert flags & FLAG_END_STREAM
    error = parse_end_stream(payload)
    assert error is not None
    assert error.code.value == "unauthenticated"


# -- bad requests: clear errors, and the server stays up -----------------------------------


def test_unknown_method_and_verb(http: httpx.Client) -> None:
    response = http.post(url("Nope"), content=b"{}", headers=JSON)
    assert response.status_code == 404
    assert response.json()["code"] == "unimplemented"
    response = http.post("/other.Service/Health", content=b"{}", headers=JSON)
    assert response.status_code == 404
    response = http.get(url("Health"))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    response = http.post(url("FetchFile"), content=b"{}", headers=JSON)
    assert response.status_code == 501
    assert response.json()["code"] == "unimplemented"


def test_wrong_content_type(http: httpx.Client) -> None:
    response = http.post(url("Health"), content=b"{}", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    # A unary content type on a streaming method, and the other way round.
    response = http.post(url("Execute"), content=b"{}", headers=JSON)
    assert response.status_code == 415
    response = http.post(url("Health"), content=b"", headers=STREAM_PROTO)
    assert response.status_code == 415
    assert_alive(http)


@pytest.mark.parametrize(
    ("method", "body", "headers"),
    [
        ("Health", b"\xff\xff\xff", PROTO),
        ("PutBytes", b"{not json", JSON),
        ("PutBytes", b'{"targetPath": 5}', JSON),
        ("PutBytes", b'{"data": "***"}', JSON),
        ("GetBytes", b"[]", JSON),
        ("Execute", struct.pack(">BI", 0, 3) + b"\x0a\x05a", STREAM_PROTO),  # truncated field
        ("Execute", struct.pack(">BI", 0, 10) + b"abc", STREAM_PROTO),  # truncated envelope
        ("Execute", envelope(b"") + envelope(b""), STREAM_PROTO),  # two requests
        ("Execute", b"", STREAM_PROTO),  # none
        ("Execute", struct.pack(">BI", FLAG_COMPRESSED, 3) + b"abc", STREAM_PROTO),
        ("Execute", envelope(pb.ExecuteRequest(input=b"\xff\xfe").encode()), STREAM_PROTO),
        (
            "Execute",
            envelope(pb.ExecuteRequest(input=b"true", script_type=7).encode()),
            STREAM_PROTO,
        ),
        (
            "Execute",
            envelope(pb.ExecuteRequest(input=b"true", timeout_s=-1).encode()),
            STREAM_PROTO,
        ),
        (
            "Execute",
            envelope(pb.ExecuteRequest(input=b"true", env={"A=B": "1"}).encode()),
            STREAM_PROTO,
        ),
    ],
)
def test_malformed_requests_are_invalid_argument(
    http: httpx.Client, method: str, body: bytes, headers: dict[str, str]
) -> None:
    response = http.post(url(method), content=body, headers=headers)
    if headers in (PROTO, JSON):
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_argument"
    else:
        assert response.status_code == 200
        (_flags, payload) = frames(response.content)[-1]
        error = parse_end_stream(payload)
        assert error is not None
        assert error.code.value == "invalid_argument", error
    assert_alive(http)


def test_oversized_requests_are_refused(http: httpx.Client) -> None:
    # A declared body larger than the limit (refused before it is read).
    big = b"\x00" * (17 << 20)
    response = http.post(url("Health"), content=big, headers=PROTO)
    assert response.status_code == 429
    assert response.json()["code"] == "resource_exhausted"
    # An envelope announcing a huge message.
    response = http.post(url("Execute"), content=struct.pack(">BI", 0, 2**31), headers=STREAM_PROTO)
    (_flags, payload) = frames(response.content)[-1]
    error = parse_end_stream(payload)
    assert error is not None
    assert error.code.value == "resource_exhausted"
    # A gzip bomb: 1 GiB of zeros in about 1 MiB.
    bomb = gzip(b"\0" * (1 << 30), level=9)
    response = http.post(url("Health"), content=bomb, headers={**PROTO, "content-encoding": "gzip"})
    assert response.status_code == 429
    assert_alive(http)


@pytest.mark.parametrize(
    "request_",
    [
        pb.ExecuteRequest(input=b"true", env={"BIG": "x" * (200 << 10)}),
        pb.ExecuteRequest(input=b"true", env={f"V{i}": "x" * 16 for i in range(8000)}),
        pb.ExecuteRequest(input=b"true", argv=["/bin/echo", "x" * (140 << 10)]),
        pb.ExecuteRequest(input=b"true", argv=["/bin/echo", "a\0b"]),
        pb.ExecuteRequest(input=b"echo a\0b"),
        pb.ExecuteRequest(input=b"true", working_dir="x" * 5000),
    ],
    ids=["env-200KiB", "8000-variables", "argv-140KiB", "argv-nul", "cmd-nul", "cwd-5000"],
)
def test_execute_arguments_beyond_the_kernels_limits_are_invalid_argument(
    http: httpx.Client, request_: pb.ExecuteRequest
) -> None:
    # Any Connect client, not only ours (which refuses these before sending): the server
    # says what is wrong before anything runs, and its session lives on.
    (end,) = execute(http, request_)
    assert isinstance(end, Exception)
    assert end.code.value == "invalid_argument", end
    assert "NUL" in str(end) or "bytes" in str(end), end
    assert_alive(http)


def test_unsupported_compression(http: httpx.Client) -> None:
    response = http.post(url("Health"), content=b"", headers={**PROTO, "content-encoding": "br"})
    assert response.status_code == 501
    assert response.json()["code"] == "unimplemented"


def test_protocol_version_and_timeout_headers(http: httpx.Client) -> None:
    response = http.post(
        url("Health"), content=b"", headers={**PROTO, "connect-protocol-version": "1"}
    )
    assert response.status_code == 200
    response = http.post(
        url("Health"), content=b"", headers={**PROTO, "connect-protocol-version": "2"}
    )
    assert response.status_code == 400
    response = http.post(
        url("Health"), content=b"", headers={**PROTO, "connect-timeout-ms": "soon"}
    )
    assert response.status_code == 400
    assert "Connect-Timeout-Ms" in response.json()["message"]


def test_deadline_kills_the_run(http: httpx.Client, unique_sleep: str) -> None:
    from .conftest import host_pids_with

    messages = execute(
        http,
        pb.ExecuteRequest(input=f"sleep {unique_sleep}".encode()),
        **{"connect-timeout-ms": "500"},
    )
    error = messages[-1]
    assert isinstance(error, Exception)
    assert error.code.value == "deadline_exceeded"
    assert not host_pids_with(unique_sleep)


def test_stdin_signal_kill_rpcs_for_unknown_ids(http: httpx.Client) -> None:
    for method, message in [
        ("WriteStdin", pb.WriteStdinRequest(execution_id="nope", data=b"x")),
        ("Signal", pb.SignalRequest(execution_id="nope", signal=15)),
        ("Kill", pb.KillRequest(execution_id="nope")),
    ]:
        response = http.post(url(method), content=message.encode(), headers=PROTO)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    for signo in (0, -1, 65, 1000):  # checked before the id: nothing it could deliver
        response = http.post(
            url("Signal"),
            content=pb.SignalRequest(execution_id="x", signal=signo).encode(),
            headers=PROTO,
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_argument"
        assert "signal" in response.json()["message"]


def test_put_and_get_unary_and_streamed(http: httpx.Client, server: RunningServer) -> None:
    path = f"{server.work_dir}/proto-test.bin"
    data = bytes(range(256)) * 8192  # 2 MiB
    response = http.post(
        url("PutBytes"),
        content=pb.PutBytesRequest(
            target_path=path, data=data, mode=0o600, overwrite=True
        ).encode(),
        headers=PROTO,
    )
    assert response.status_code == 200, response.text
    put = pb.PutBytesResponse.decode(response.content)
    import hashlib

    assert put.bytes_written == len(data)
    assert put.sha256 == hashlib.sha256(data).hexdigest()
    response = http.post(
        url("GetBytes"), content=pb.GetBytesRequest(source_path=path).encode(), headers=PROTO
    )
    got = pb.GetBytesResponse.decode(response.content)
    assert got.data == data
    assert got.bytes_read == len(data)
    assert got.sha256 == put.sha256
    # Streamed download: size first, then data, then the digest.
    response = http.post(
        url("GetBytesStream"),
        content=envelope(pb.GetBytesRequest(source_path=path)),
        headers=STREAM_PROTO,
    )
    parts = [
        pb.GetBytesResponse.decode(p)
        for f, p in frames(response.content)
        if not f & FLAG_END_STREAM
    ]
    assert parts[0].size == len(data)
    assert parts[0].source_path == path
    assert b"".join(p.data for p in parts) == data
    assert not parts[-1].sha256  # streamed transfers are not hashed
    assert parts[-1].bytes_read == len(data)
    # Streamed upload, in three messages.
    body = (
        envelope(pb.PutBytesRequest(target_path=path + ".2", overwrite=True, data=b"abc"))
        + envelope(pb.PutBytesRequest(data=b"def"))
        + envelope(pb.PutBytesRequest(data=b"ghi"))
    )
    response = http.post(url("PutBytesStream"), content=body, headers=STREAM_PROTO)
    [(_flags, payload), (_end, tail)] = frames(response.content)
    assert parse_end_stream(tail) is None
    assert pb.PutBytesResponse.decode(payload).bytes_written == 9
    # A first message without a path is refused.
    response = http.post(
        url("PutBytesStream"), content=envelope(pb.PutBytesRequest(data=b"x")), headers=STREAM_PROTO
    )
    error = parse_end_stream(frames(response.content)[-1][1])
    assert error is not None
    assert error.code.value == "invalid_argument"
