"""A third-party Connect client (``connectrpc``, with protobuf classes built from our
``sandbox.proto``) talks to the server unchanged: binary and JSON codecs, gzip, streams,
errors. Skipped when ``connectrpc``/``protobuf`` are not installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.protobuf")
connectrpc_client = pytest.importorskip("connectrpc.client")

from connectrpc.codec import proto_json_codec  # noqa: E402
from connectrpc.errors import ConnectError as TheirError  # noqa: E402
from connectrpc.method import IdempotencyLevel, MethodInfo  # noqa: E402

from union.sandbox.core.wire import proto_source  # noqa: E402
from union.sandbox.server.testing import RunningServer, spawn_server  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[2] / "sandbox-core" / "tests" / "wire"))
import protoschema  # noqa: E402

pytestmark = pytest.mark.anyio
SERVICE = "sandbox.v2.SandboxService"
PB = protoschema.message_classes(protoschema.parse(proto_source()))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # connectrpc's client runs on asyncio only


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with spawn_server(token=True) as running:
        yield running


def method(name: str, request: str, response: str) -> MethodInfo[Any, Any]:
    return MethodInfo(
        name=name,
        service_name=SERVICE,
        input=PB[request],
        output=PB[response],
        idempotency_level=IdempotencyLevel.UNKNOWN,
    )


def headers(server: RunningServer) -> dict[str, str]:
    return {"authorization": f"Bearer {server.token}"}


@pytest.mark.parametrize("codec", ["proto", "json"])
async def test_unary_and_stream_with_connectrpc(server: RunningServer, codec: str) -> None:
    kwargs: dict[str, Any] = {"codec": proto_json_codec()} if codec == "json" else {}
    async with connectrpc_client.ConnectClient(server.endpoint, **kwargs) as client:
        health = await client.execute_unary(
            request=PB["HealthRequest"](),
            method=method("Health", "HealthRequest", "HealthResponse"),
            headers=headers(server),
        )
        assert health.backend == "userns"
        request = PB["ExecuteRequest"](
            input=b"echo from-connectrpc; echo e >&2; exit 4",
            stream_stdout=True,
            stream_stderr=True,
            script_type=PB["ExecuteRequest"]
            .DESCRIPTOR.fields_by_name["script_type"]
            .enum_type.values_by_name["SCRIPT_TYPE_SHELL"]
            .number,
        )
        got = [
            m
            async for m in client.execute_server_stream(
                request=request,
                method=method("Execute", "ExecuteRequest", "ExecuteResponse"),
                headers=headers(server),
            )
        ]
        assert got[0].WhichOneof("result") == "session_info"
        assert (
            b"".join(m.stdout for m in got if m.WhichOneof("result") == "stdout")
            == b"from-connectrpc\n"
        )
        assert got[-1].termination.exit_code == 4
        assert got[-1].termination.reason == "exit=4"
        # Large gzip-compressed request (connectrpc compresses requests by default).
        path = f"{server.work_dir}/connectrpc-{codec}.bin"
        data = b"abc" * 100_000
        put = await client.execute_unary(
            request=PB["PutBytesRequest"](target_path=path, data=data, overwrite=True),
            method=method("PutBytes", "PutBytesRequest", "PutBytesResponse"),
            headers=headers(server),
        )
        assert put.bytes_written == len(data)
        back = await client.execute_unary(
            request=PB["GetBytesRequest"](source_path=path),
            method=method("GetBytes", "GetBytesRequest", "GetBytesResponse"),
            headers=headers(server),
        )
        assert back.data == data


async def test_errors_reach_connectrpc(server: RunningServer) -> None:
    async with connectrpc_client.ConnectClient(server.endpoint) as client:
        with pytest.raises(TheirError) as info:
            await client.execute_unary(
                request=PB["GetBytesRequest"](source_path="relative"),
                method=method("GetBytes", "GetBytesRequest", "GetBytesResponse"),
                headers=headers(server),
            )
        assert info.value.code.name.lower() == "invalid_argument"
        assert "path must be absolute" in info.value.message
        with pytest.raises(TheirError) as info:
            await client.execute_unary(
                request=PB["HealthRequest"](),
                method=method("Health", "HealthRequest", "HealthResponse"),
            )
        assert info.value.code.name.lower() == "unauthenticated"
