"""The hand-written codec agrees with ``sandbox.proto`` and with the protobuf runtime."""

from __future__ import annotations

import enum
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from union.sandbox.core.wire import messages as m
from union.sandbox.core.wire import proto_source
from union.sandbox.core.wire._proto import Kind, Message

sys.path.insert(0, str(Path(__file__).parent))
import protoschema

PROTO = protoschema.parse(proto_source())
CLASSES: dict[str, type[Message]] = {name: getattr(m, name) for name in PROTO.messages}
_KIND_OF = {
    "string": Kind.STRING,
    "bytes": Kind.BYTES,
    "bool": Kind.BOOL,
    "int32": Kind.INT32,
    "uint32": Kind.UINT32,
    "int64": Kind.INT64,
    "uint64": Kind.UINT64,
    "double": Kind.DOUBLE,
    "map<string,string>": Kind.MAP,
}


def test_published_numbers_are_exactly_the_reference() -> None:
    """reference-api §2.17: the published field numbers (a renumbering breaks every client)."""
    expected = {
        "ExecuteRequest": {
            "input": 1,
            "env": 2,
            "client_id": 3,
            "parent_request_id": 4,
            "script_type": 5,
            "working_dir": 6,
            "stream_stdout": 7,
            "stream_stderr": 8,
            "resources": 10,
            "network_mode": 14,
            "network_allowlist": 15,
            "timeout_s": 16,
            "network_denylist": 17,
        },
        "ExecuteResponse": {"session_info": 1, "stdout": 2, "stderr": 3, "termination": 4},
        "SessionInfo": {"version": 1, "backend": 2, "resources": 3},
        "Termination": {"exit_code": 1, "reason": 2, "runtime_ms": 3},
        "Resources": {"cpu_milli": 1, "memory_bytes": 2, "gpu": 3, "ephemeral_storage_bytes": 4},
        "FetchFileRequest": {"uri": 1, "target_path": 2, "mode": 3, "overwrite": 4},
        "FetchFileResponse": {"target_path": 1, "bytes_written": 2, "sha256": 3},
        "FetchDirRequest": {"uri": 1, "target_path": 2},
        "FetchDirResponse": {"target_path": 1, "file_count": 2, "bytes_written": 3},
        "PutBytesRequest": {"target_path": 1, "data": 2, "mode": 3, "overwrite": 4},
        "PutBytesResponse": {"target_path": 1, "bytes_written": 2, "sha256": 3},
        "GetBytesRequest": {"source_path": 1, "max_bytes": 2},
        "GetBytesResponse": {"source_path": 1, "data": 2, "bytes_read": 3, "sha256": 4},
        "HealthResponse": {"version": 1, "backend": 2, "resource_ceiling": 3},
    }
    for message, fields in expected.items():
        declared = {f.name: f.number for f in PROTO.messages[message].fields if f.number < 100}
        assert declared == fields, message
    assert PROTO.messages["ExecuteRequest"].reserved == [9, 11, 12, 13]
    assert PROTO.enums["ScriptType"] == {
        "SCRIPT_TYPE_UNSPECIFIED": 0,
        "SCRIPT_TYPE_PYTHON": 1,
        "SCRIPT_TYPE_SHELL": 2,
    }
    assert PROTO.enums["NetworkMode"] == {
        "NETWORK_MODE_UNSPECIFIED": 0,
        "NETWORK_MODE_BLOCKED": 1,
        "NETWORK_MODE_OPEN": 2,
        "NETWORK_MODE_ALLOWLIST": 3,
    }
    rpcs = {r.name: r for r in PROTO.services["SandboxService"]}
    assert PROTO.package == "sandbox.v2"
    assert rpcs["Execute"].server_streaming
    assert not rpcs["Execute"].client_streaming
    for unary in ("FetchFile", "FetchDir", "PutBytes", "GetBytes", "Health"):
        assert not rpcs[unary].server_streaming
        assert not rpcs[unary].client_streaming
    assert [r.name for r in PROTO.services["SandboxService"]][:6] == [
        "Execute",
        "FetchFile",
        "FetchDir",
        "PutBytes",
        "GetBytes",
        "Health",
    ]


def test_extensions_use_the_extension_range() -> None:
    """Every field added to a published message is numbered 100..199."""
    published = {
        "ExecuteRequest",
        "ExecuteResponse",
        "SessionInfo",
        "Termination",
        "Resources",
        "FetchFileRequest",
        "FetchFileResponse",
        "FetchDirRequest",
        "FetchDirResponse",
        "PutBytesRequest",
        "PutBytesResponse",
        "GetBytesRequest",
        "GetBytesResponse",
        "HealthRequest",
        "HealthResponse",
    }
    for name in published:
        for field in PROTO.messages[name].fields:
            assert field.number < 20 or 100 <= field.number < 200, (name, field.name)


@pytest.mark.parametrize("name", sorted(PROTO.messages))
def test_codec_matches_proto_text(name: str) -> None:
    cls = CLASSES[name]
    assert f"sandbox.v2.{name}" == cls.FULL_NAME
    ours = {f.number: f for f in cls.FIELDS}
    theirs = {f.number: f for f in PROTO.messages[name].fields}
    assert sorted(ours) == sorted(theirs)
    for number, pf in theirs.items():
        f = ours[number]
        assert f.name == pf.name
        assert f.repeated == (pf.label == "repeated")
        assert f.optional == (pf.label == "optional")
        assert f.oneof == pf.oneof
        if pf.type in _KIND_OF:
            assert f.kind is _KIND_OF[pf.type], (name, pf.name)
        elif pf.type in PROTO.enums:
            assert f.kind is Kind.ENUM
            assert {e.name: e.value for e in f.enum} == PROTO.enums[pf.type]
        else:
            assert f.kind is Kind.MESSAGE
            assert f"sandbox.v2.{pf.type}" == f.message_type().FULL_NAME
    # Python enums declared in the module match the .proto.
    for enum_name, values in PROTO.enums.items():
        py_enum: type[enum.IntEnum] = getattr(m, enum_name)
        assert {e.name: e.value for e in py_enum} == values


# -- cross-check with the protobuf runtime ------------------------------------------------


def _strategy(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    oneof_members: dict[str, list[tuple[str, st.SearchStrategy[Any]]]] = {}
    for f in cls.FIELDS:
        s = _value_strategy(f, depth)
        if f.repeated:
            s = st.lists(s, max_size=3)
        if f.oneof is not None:
            oneof_members.setdefault(f.oneof, []).append((f.name, s))
            continue
        if f.optional or (f.kind is Kind.MESSAGE and not f.repeated):
            s = st.none() | s
        fields[f.name] = s
    base = st.fixed_dictionaries(fields)
    for members in oneof_members.values():
        choice = st.one_of(st.just({}), *[st.builds(lambda v, n=n: {n: v}, s) for n, s in members])
        base = st.tuples(base, choice).map(lambda t: {**t[0], **t[1]})
    return base.map(lambda kw: cls(**kw))


def _value_strategy(f: Any, depth: int) -> st.SearchStrategy[Any]:
    kind = f.kind
    if kind is Kind.STRING:
        return st.text(max_size=8)
    if kind is Kind.BYTES:
        return st.binary(max_size=8)
    if kind is Kind.BOOL:
        return st.booleans()
    if kind is Kind.INT32:
        return st.integers(-(2**31), 2**31 - 1)
    if kind is Kind.UINT32:
        return st.integers(0, 2**32 - 1)
    if kind is Kind.INT64:
        return st.integers(-(2**63), 2**63 - 1)
    if kind is Kind.UINT64:
        return st.integers(0, 2**64 - 1)
    if kind is Kind.DOUBLE:
        return st.floats(allow_nan=False)
    if kind is Kind.ENUM:
        return st.sampled_from(list(f.enum))
    if kind is Kind.MAP:
        return st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
    return _strategy(f.message_type(), depth + 1)


pb = pytest.importorskip("google.protobuf", reason="protobuf runtime not installed")
from google.protobuf import json_format  # noqa: E402

PB = protoschema.message_classes(PROTO)


@pytest.mark.parametrize("name", sorted(PROTO.messages))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_binary_round_trips_through_protobuf(name: str, data: st.DataObject) -> None:
    ours = data.draw(_strategy(CLASSES[name]))
    encoded = ours.encode()
    theirs = PB[name].FromString(encoded)
    assert CLASSES[name].decode(theirs.SerializeToString()) == ours
    # Their encoding of the same value decodes to ours, and our decode of it re-encodes to
    # the bytes protobuf itself produces (maps aside, whose order is unspecified).
    assert PB[name].FromString(CLASSES[name].decode(theirs.SerializeToString()).encode()) == theirs


@pytest.mark.parametrize("name", sorted(PROTO.messages))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_json_matches_protobuf(name: str, data: st.DataObject) -> None:
    ours = data.draw(_strategy(CLASSES[name]))
    theirs = PB[name].FromString(ours.encode())
    expected = json_format.MessageToDict(theirs)
    got = ours.to_json()
    assert _normal(got) == _normal(expected)
    # Both parse each other's JSON.
    assert CLASSES[name].from_json(expected) == ours
    assert json_format.ParseDict(got, PB[name]()) == theirs
    # The original field names are accepted too.
    with_proto_names = json_format.MessageToDict(theirs, preserving_proto_field_name=True)
    assert CLASSES[name].from_json(with_proto_names) == ours


def _normal(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _normal(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normal(v) for v in obj]
    if isinstance(obj, float) and not math.isnan(obj) and obj.is_integer():
        return obj
    return obj
