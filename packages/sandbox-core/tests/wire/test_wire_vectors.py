"""Byte-exact vectors worked out by hand from the protobuf encoding rules (tag =
``number << 3 | wire_type``, base-128 varints, little-endian fixed64, length-delimited
strings/bytes/messages, maps as repeated ``{key = 1, value = 2}`` entries), and the proto3
JSON mapping. These run without any protobuf library."""

from __future__ import annotations

import math

import pytest

from union.sandbox.core.wire import DecodeError
from union.sandbox.core.wire import messages as m
from union.sandbox.core.wire._proto import encode_varint


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (2**32 - 1, "ffffffff0f"),
        (-1, "ffffffffffffffffff01"),
    ],
)
def test_varint(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded


VECTORS = [
    (m.HealthRequest(), ""),
    # cpu_milli=500: tag 1<<3|0 = 08, varint(500) = f4 03.
    (m.Resources(cpu_milli=500), "08f403"),
    # memory_bytes=2**30: tag 10, varint(2**30) = 80 80 80 80 04.
    (m.Resources(memory_bytes=2**30), "108080808004"),
    # input=b"echo hi": tag 1<<3|2 = 0a, length 07.
    (m.ExecuteRequest(input=b"echo hi"), "0a07" + b"echo hi".hex()),
    # env={"A": "b"}: tag 12, entry length 06: [0a 01 'A'] [12 01 'b'].
    (m.ExecuteRequest(env={"A": "b"}), "1206" + "0a0141" + "120162"),
    # script_type=SHELL: tag 5<<3 = 28, 02.
    (m.ExecuteRequest(script_type=m.ScriptType.SCRIPT_TYPE_SHELL), "2802"),
    # stream_stdout: tag 7<<3 = 38, 01.
    (m.ExecuteRequest(stream_stdout=True, stream_stderr=True), "38014001"),
    # resources (field 10, tag 52) containing cpu_milli=500.
    (m.ExecuteRequest(resources=m.Resources(cpu_milli=500)), "5203" + "08f403"),
    # An empty embedded message is still present: 52 00.
    (m.ExecuteRequest(resources=m.Resources()), "5200"),
    # network_mode=ALLOWLIST: tag 14<<3 = 70, 03; allowlist: tag 15<<3|2 = 7a.
    (
        m.ExecuteRequest(
            network_mode=m.NetworkMode.NETWORK_MODE_ALLOWLIST, network_allowlist=["a.b", "c"]
        ),
        "7003" + "7a03612e62" + "7a0163",
    ),
    # timeout_s=1.5: tag 16<<3|1 = 129 = 81 01, then the IEEE-754 double, little-endian.
    (m.ExecuteRequest(timeout_s=1.5), "8101" + "000000000000f83f"),
    # network_denylist: tag 17<<3|2 = 138 = 8a 01.
    (m.ExecuteRequest(network_denylist=["x"]), "8a010178"),
    # Extension stdin=b"hi": tag 100<<3|2 = 802 = a2 06.
    (m.ExecuteRequest(stdin=b"hi"), "a2060268" + "69"),
    # Extension argv: tag 102<<3|2 = 818 = b2 06.
    (m.ExecuteRequest(argv=["ls"]), "b206026c73"),
    # A oneof member set to its default value is still encoded: stdout=b"" -> 12 00.
    (m.ExecuteResponse(stdout=b""), "1200"),
    (m.ExecuteResponse(stderr=b"x"), "1a0178"),
    # termination (field 4, tag 22) with exit_code=-1 (int32 sign-extended to 10 bytes).
    (m.ExecuteResponse(termination=m.Termination(exit_code=-1)), "220b" + "08ffffffffffffffffff01"),
    # exit_code=3, reason "exit=3", runtime_ms=12, kind EXIT (tag 100<<3 = a0 06).
    (
        m.Termination(
            exit_code=3,
            reason="exit=3",
            runtime_ms=12,
            kind=m.TerminationKind.TERMINATION_KIND_EXIT,
        ),
        "0803" + "1206" + b"exit=3".hex() + "180c" + "a00601",
    ),
    # session_info (tag 0a) with backend "userns" (tag 12) and execution_id (tag a2 06).
    (
        m.ExecuteResponse(session_info=m.SessionInfo(backend="userns", execution_id="e1")),
        "0a0d" + "1206" + b"userns".hex() + "a206026531",
    ),
    # optional uid=0 is present (explicit presence): tag 7<<3 = 38, 00.
    (m.IsolationReport(uid=0), "3800"),
    (
        m.PutBytesRequest(target_path="/w/f", data=b"\x00\x01", mode=0o644, overwrite=True),
        "0a04" + b"/w/f".hex() + "12020001" + "18a403" + "2001",
    ),
    (m.GetBytesRequest(source_path="/w/f", max_bytes=10), "0a04" + b"/w/f".hex() + "100a"),
]


@pytest.mark.parametrize(("message", "hex_bytes"), VECTORS)
def test_encode_vectors(message: m.Message, hex_bytes: str) -> None:
    assert message.encode().hex() == hex_bytes
    assert type(message).decode(bytes.fromhex(hex_bytes)) == message


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    unknown = (
        "c80396 01"  # field 57 varint 150
        "d103 0102030405060708"  # field 58 fixed64
        "dd03 01020304"  # field 59 fixed32
        "e203 03 616263"  # field 60 length-delimited
        "eb03 0801 ec03"  # field 61: start group, field 1 varint, end group
    ).replace(" ", "")
    data = bytes.fromhex(unknown + "08f403" + unknown)
    assert m.Resources.decode(data) == m.Resources(cpu_milli=500)


def test_wrong_wire_type_for_a_known_field_is_skipped() -> None:
    # cpu_milli (field 1) sent as length-delimited: ignored like an unknown field.
    assert m.Resources.decode(bytes.fromhex("0a0161" + "1005")) == m.Resources(memory_bytes=5)


def test_last_scalar_wins_and_messages_merge() -> None:
    data = bytes.fromhex("0801" + "0802")
    assert m.Resources.decode(data).cpu_milli == 2
    # Two occurrences of `resources` merge: cpu from the first, gpu from the second.
    data = bytes.fromhex("5202" + "0805" + "5202" + "1801")
    assert m.ExecuteRequest.decode(data).resources == m.Resources(cpu_milli=5, gpu=1)


def test_oneof_last_member_wins() -> None:
    data = bytes.fromhex("1201" + "61" + "1a01" + "62")
    assert m.ExecuteResponse.decode(data) == m.ExecuteResponse(stderr=b"b")


def test_unknown_enum_numbers_are_kept() -> None:
    decoded = m.ExecuteRequest.decode(bytes.fromhex("2809"))
    assert decoded.script_type == 9
    assert decoded.encode().hex() == "2809"
    assert decoded.to_json() == {"scriptType": 9}


def test_uint32_truncates_and_int32_sign_extends() -> None:
    assert m.Resources.decode(bytes.fromhex("08ffffffffffffffffff01")).cpu_milli == 2**32 - 1
    assert m.Termination.decode(bytes.fromhex("08ffffffff0f")).exit_code == -1


@pytest.mark.parametrize(
    "hex_bytes",
    [
        "0a05616263",  # length beyond the end
        "08",  # truncated varint
        "08ffffffffffffffffffff01",  # varint longer than 10 bytes
        "3202c328",  # invalid UTF-8 in a string (working_dir)
        "00",  # field number 0
        "0f",  # wire type 7
        "8101000000",  # truncated double
    ],
)
def test_malformed_binary_raises_decode_error(hex_bytes: str) -> None:
    with pytest.raises(DecodeError):
        m.ExecuteRequest.decode(bytes.fromhex(hex_bytes))


def test_borrow_leaves_bytes_as_views() -> None:
    data = m.PutBytesRequest(target_path="/a", data=b"xyz").encode()
    decoded = m.PutBytesRequest.decode(data, borrow=True)
    assert isinstance(decoded.data, memoryview)
    assert bytes(decoded.data) == b"xyz"


# -- JSON ----------------------------------------------------------------------------------


def test_json_names_types_and_defaults() -> None:
    req = m.ExecuteRequest(
        input=b"echo hi",
        env={"A": "b"},
        script_type=m.ScriptType.SCRIPT_TYPE_PYTHON,
        working_dir="sub",
        stream_stdout=True,
        resources=m.Resources(memory_bytes=2**40, cpu_milli=0),
        network_mode=m.NetworkMode.NETWORK_MODE_OPEN,
        timeout_s=2.0,
    )
    assert req.to_json() == {
        "input": "ZWNobyBoaQ==",
        "env": {"A": "b"},
        "scriptType": "SCRIPT_TYPE_PYTHON",
        "workingDir": "sub",
        "streamStdout": True,
        "resources": {"memoryBytes": "1099511627776"},
        "networkMode": "NETWORK_MODE_OPEN",
        "timeoutS": 2.0,
    }
    assert m.ExecuteResponse(stdout=b"").to_json() == {"stdout": ""}
    assert m.Termination(runtime_ms=5).to_json() == {"runtimeMs": "5"}


def test_json_input_is_lenient_where_proto3_json_allows() -> None:
    parsed = m.ExecuteRequest.from_json(
        {
            "input": "ZWNobyBoaQ",  # no padding
            "script_type": "SCRIPT_TYPE_SHELL",  # original field name
            "streamStdout": True,
            "timeoutS": "1.5",  # numbers may be strings
            "resources": {"memoryBytes": 1024, "cpu_milli": "500", "gpu": 1.0},
            "networkMode": 2,  # enum by number
            "workingDir": None,  # null means default
            "someFutureField": {"x": 1},  # unknown fields are ignored
            "stdin": "_-8",  # URL-safe base64
        }
    )
    assert parsed == m.ExecuteRequest(
        input=b"echo hi",
        script_type=m.ScriptType.SCRIPT_TYPE_SHELL,
        stream_stdout=True,
        timeout_s=1.5,
        resources=m.Resources(memory_bytes=1024, cpu_milli=500, gpu=1),
        network_mode=m.NetworkMode.NETWORK_MODE_OPEN,
        stdin=bytes([0xFF, 0xEF]),
    )
    assert math.isnan(m.ExecuteRequest.from_json({"timeoutS": "NaN"}).timeout_s)
    assert m.ExecuteRequest.from_json({"timeoutS": "Infinity"}).to_json() == {
        "timeoutS": "Infinity"
    }


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"input": 5},
        {"input": "!!!"},
        {"env": ["a"]},
        {"env": {"a": 1}},
        {"scriptType": "SCRIPT_TYPE_NOPE"},
        {"streamStdout": "yes"},
        {"resources": {"cpuMilli": -1}},
        {"resources": {"cpuMilli": 2**32}},
        {"resources": {"memoryBytes": "1.5"}},
        {"networkAllowlist": "pypi.org"},
        {"timeoutS": "soon"},
        {"workingDir": "a", "working_dir": "b"},
    ],
)
def test_malformed_json_raises_decode_error(obj: object) -> None:
    with pytest.raises(DecodeError):
        m.ExecuteRequest.from_json(obj)


def test_json_oneof_conflict_and_invalid_text() -> None:
    with pytest.raises(DecodeError, match="oneof"):
        m.ExecuteResponse.from_json({"stdout": "", "stderr": ""})
    with pytest.raises(DecodeError, match="invalid JSON"):
        m.ExecuteRequest.from_json_bytes(b"{nope")
