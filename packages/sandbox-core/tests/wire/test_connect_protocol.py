"""The I/O-free Connect pieces: envelopes, end-of-stream, errors, gzip, timeouts."""

from __future__ import annotations

import json

import pytest

from union.sandbox.core.wire import connect as c
from union.sandbox.core.wire import messages as m


def test_envelope_layout() -> None:
    # flags byte, then the length as a 4-byte big-endian integer, then the payload.
    assert c.envelope(b"abc").hex() == "00" + "00000003" + "616263"
    assert c.envelope(b"{}", c.FLAG_END_STREAM).hex() == "02" + "00000002" + "7b7d"
    assert c.envelope(m.Resources(cpu_milli=500)) == bytes.fromhex("0000000003" + "08f403")


def test_envelope_reader_reassembles_split_messages() -> None:
    stream = c.envelope(b"a" * 10) + c.envelope(b"") + c.envelope(b"{}", c.FLAG_END_STREAM)
    reader = c.EnvelopeReader()
    got = []
    for i in range(len(stream)):
        got += list(reader.feed(stream[i : i + 1]))
    assert got == [(0, b"a" * 10), (0, b""), (2, b"{}")]
    assert reader.pending == 0


def test_envelope_reader_refuses_oversized_messages_before_buffering() -> None:
    reader = c.EnvelopeReader(max_size=4)
    with pytest.raises(c.MessageTooLarge, match="exceeds the limit of 4 bytes"):
        list(reader.feed(c.envelope_header(0, 2**31)))


def test_error_json_round_trip_with_detail() -> None:
    detail = m.ErrorDetail(exception="FileNotFoundError", message="gone", errno=2)
    error = c.ConnectError(c.Code.NOT_FOUND, "gone", detail=detail)
    obj = error.to_json()
    assert obj["code"] == "not_found"
    assert obj["message"] == "gone"
    assert obj["details"][0]["type"] == "sandbox.v2.ErrorDetail"
    back = c.ConnectError.from_json(json.loads(error.to_json_bytes()))
    assert back.code is c.Code.NOT_FOUND
    assert back.detail == detail
    assert str(back) == "[not_found] gone"


def test_error_parsing_never_raises() -> None:
    assert c.ConnectError.from_json_bytes(b"<html>", http_status=502).code is c.Code.UNAVAILABLE
    assert c.ConnectError.from_json({"code": "bogus"}).code is c.Code.UNKNOWN
    assert c.ConnectError.from_json([1]).code is c.Code.UNKNOWN


def test_http_statuses() -> None:
    assert c.Code.UNAUTHENTICATED.http_status == 401
    assert c.Code.INVALID_ARGUMENT.http_status == 400
    assert c.Code.RESOURCE_EXHAUSTED.http_status == 429
    assert c.Code.UNIMPLEMENTED.http_status == 501
    assert c.Code.NOT_FOUND.http_status == 404
    assert c.code_for_http_status(401) is c.Code.UNAUTHENTICATED
    assert c.code_for_http_status(418) is c.Code.UNKNOWN


def test_end_stream() -> None:
    assert c.parse_end_stream(c.end_stream()) is None
    assert c.parse_end_stream(b"") is None
    error = c.parse_end_stream(c.end_stream(c.ConnectError(c.Code.INTERNAL, "boom")))
    assert error is not None
    assert error.code is c.Code.INTERNAL
    assert error.message == "boom"
    bad = c.parse_end_stream(b"not json")
    assert bad is not None
    assert bad.code is c.Code.INTERNAL


def test_gzip_round_trip_and_bomb_limit() -> None:
    data = b"x" * 100_000
    packed = c.gzip(data)
    assert len(packed) < 1000
    assert c.gunzip(packed) == data
    assert c.gunzip(packed, max_size=100_000) == data
    with pytest.raises(c.GzipLimitError):
        c.gunzip(packed, max_size=99_999)
    with pytest.raises(ValueError, match="invalid gzip"):
        c.gunzip(b"not gzip")
    with pytest.raises(ValueError, match="truncated"):
        c.gunzip(packed[:-10])


@pytest.mark.parametrize(("header", "seconds"), [(None, None), ("1500", 1.5), ("0", 0.0)])
def test_timeout_header(header: str | None, seconds: float | None) -> None:
    assert c.parse_timeout_ms(header) == seconds


@pytest.mark.parametrize("header", ["-1", "1.5", "12345678901", "", "soon"])
def test_bad_timeout_header(header: str) -> None:
    with pytest.raises(ValueError, match="Connect-Timeout-Ms"):
        c.parse_timeout_ms(header)
