"""A small proto3 runtime: binary wire format and the canonical JSON mapping.

Just what ``sandbox.proto`` uses: scalar fields (``string``, ``bytes``, ``bool``, ``int32``,
``uint32``, ``int64``, ``uint64``, ``double``, enums), ``optional`` scalars, embedded
messages (singular and repeated), ``repeated string``, ``map<string, string>`` and a
``oneof``. Decoding follows the protobuf rules a conforming parser applies: unknown fields (of
any wire type, groups included) are skipped, the last value of a singular scalar wins,
repeated occurrences of a singular embedded message merge (a repeated message field collects
one element per occurrence), packed and unpacked repeated scalars are both accepted.

The JSON mapping is proto3's: ``lowerCamelCase`` names (the original names are accepted on
input too), enums by name, ``bytes`` as base64, 64-bit integers as strings, default values
omitted, unknown JSON fields ignored (so that the schema can grow).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import json
import math
import struct
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

__all__ = ["DecodeError", "Field", "Kind", "Message", "encode_varint"]

_M = TypeVar("_M", bound="Message")

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_DOUBLE = struct.Struct("<d")
_FIXED32 = struct.Struct("<I")
_FIXED64 = struct.Struct("<Q")

WT_VARINT = 0
WT_I64 = 1
WT_LEN = 2
WT_SGROUP = 3
WT_EGROUP = 4
WT_I32 = 5


class DecodeError(ValueError):
    """A binary or JSON message that does not match the schema."""


class Kind(enum.Enum):
    STRING = "string"
    BYTES = "bytes"
    BOOL = "bool"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    DOUBLE = "double"
    ENUM = "enum"
    MESSAGE = "message"
    MAP = "map"
    """``map<string, string>``."""


_RANGES = {
    Kind.INT32: (-(1 << 31), (1 << 31) - 1),
    Kind.UINT32: (0, _MASK32),
    Kind.INT64: (-(1 << 63), (1 << 63) - 1),
    Kind.UINT64: (0, _MASK64),
    Kind.ENUM: (-(1 << 31), (1 << 31) - 1),
}
_VARINT_KINDS = frozenset({Kind.BOOL, Kind.INT32, Kind.UINT32, Kind.INT64, Kind.UINT64, Kind.ENUM})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a message: its number, name and type."""

    number: int
    name: str
    kind: Kind
    repeated: bool = False
    message: Any = None
    """The :class:`Message` subclass of a ``MESSAGE`` field (a zero-argument callable
    returning it is accepted too, for forward references)."""
    enum: Any = None
    """The :class:`enum.IntEnum` of an ``ENUM`` field."""
    oneof: str | None = None
    optional: bool = False
    """``optional`` (explicit presence): ``None`` when unset."""

    @functools.cached_property  # read per field per message: computed once
    def json_name(self) -> str:
        return _camel(self.name)

    @functools.cached_property  # read per field per message: computed once
    def has_presence(self) -> bool:
        return (
            self.oneof is not None
            or self.optional
            or (self.kind is Kind.MESSAGE and not self.repeated)
        )

    @functools.cached_property  # read per field per message: computed once
    def wire_type(self) -> int:
        if self.kind in _VARINT_KINDS:
            return WT_VARINT
        if self.kind is Kind.DOUBLE:
            return WT_I64
        return WT_LEN

    def message_type(self) -> type[Message]:
        target = self.message
        if isinstance(target, type):
            return target
        resolved: type[Message] = target()
        return resolved


def encode_varint(value: int) -> bytes:
    """The base-128 varint of ``value`` (negative values as 10-byte two's complement)."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= _MASK64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos < end and buf[pos] < 0x80:  # one byte: tags and small values, the common case
        return buf[pos], pos + 1
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _skip_field(buf: memoryview, pos: int, end: int, wire_type: int, number: int) -> int:
    """Position after an unknown field whose tag was just read."""
    if wire_type == WT_VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire_type == WT_I64:
        pos += 8
    elif wire_type == WT_I32:
        pos += 4
    elif wire_type == WT_LEN:
        length, pos = _read_varint(buf, pos, end)
        pos += length
    elif wire_type == WT_SGROUP:
        while True:
            tag, pos = _read_varint(buf, pos, end)
            inner_type = tag & 7
            if inner_type == WT_EGROUP:
                if tag >> 3 != number:
                    raise DecodeError("mismatched end-group tag")
                return pos
            pos = _skip_field(buf, pos, end, inner_type, tag >> 3)
    else:
        raise DecodeError(f"invalid wire type {wire_type}")
    if pos > end:
        raise DecodeError("truncated field")
    return pos


_SCALAR_DEFAULTS: dict[Kind, Any] = {
    Kind.STRING: "",
    Kind.BYTES: b"",
    Kind.BOOL: False,
    Kind.INT32: 0,
    Kind.UINT32: 0,
    Kind.INT64: 0,
    Kind.UINT64: 0,
    Kind.DOUBLE: 0.0,
    Kind.ENUM: 0,
}


def _is_default(field: Field, value: Any) -> bool:
    if field.has_presence:
        return value is None
    if field.repeated or field.kind is Kind.MAP:
        return not value
    if field.kind is Kind.DOUBLE:
        return bool(value == 0.0 and math.copysign(1.0, value) > 0)
    return bool(value == _SCALAR_DEFAULTS[field.kind])


class Message:
    """Base of the schema's messages (dataclasses). Subclasses set :attr:`FIELDS`."""

    __slots__ = ()

    FIELDS: ClassVar[tuple[Field, ...]] = ()
    FULL_NAME: ClassVar[str] = ""
    _BY_NUMBER: ClassVar[dict[int, Field]]
    _BY_JSON: ClassVar[dict[str, Field]]
    _TAGS: ClassVar[dict[int, bytes]]
    _ONEOFS: ClassVar[dict[str, tuple[Field, ...]]]

    @classmethod
    def _setup(cls, full_name: str, fields: Iterable[Field]) -> None:
        cls.FULL_NAME = full_name
        cls.FIELDS = tuple(fields)
        cls._BY_NUMBER = {f.number: f for f in cls.FIELDS}
        cls._BY_JSON = {}
        for f in cls.FIELDS:
            cls._BY_JSON[f.name] = f
            cls._BY_JSON[f.json_name] = f
        cls._TAGS = {f.number: encode_varint(f.number << 3 | f.wire_type) for f in cls.FIELDS}
        oneofs: dict[str, list[Field]] = {}
        for f in cls.FIELDS:
            if f.oneof is not None:
                oneofs.setdefault(f.oneof, []).append(f)
        cls._ONEOFS = {name: tuple(group) for name, group in oneofs.items()}

    # -- binary ----------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The binary wire form."""
        parts: list[bytes] = []
        self._encode_into(parts)
        return b"".join(parts)

    def _encode_into(self, parts: list[bytes]) -> None:
        tags = self._TAGS
        for field in self.FIELDS:
            value = getattr(self, field.name)
            if _is_default(field, value):
                continue
            tag = tags[field.number]
            kind = field.kind
            if kind is Kind.MAP:
                for key, item in value.items():
                    entry = _encode_map_entry(key, item)
                    parts += (tag, encode_varint(len(entry)), entry)
            elif field.repeated:
                for item in value:
                    _encode_value(parts, tag, field, item)
            else:
                _encode_value(parts, tag, field, value)

    @classmethod
    def decode(cls: type[_M], data: bytes | bytearray | memoryview, *, borrow: bool = False) -> _M:
        """Parse the binary wire form. ``borrow=True`` leaves ``bytes`` fields as
        :class:`memoryview` slices of ``data`` (no copy), for large payloads."""
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        return cls._decode(view, 0, len(view), borrow)

    @classmethod
    def _decode(cls: type[_M], buf: memoryview, pos: int, end: int, borrow: bool) -> _M:
        values: dict[str, Any] = {}
        pending: dict[str, list[memoryview]] = {}
        by_number = cls._BY_NUMBER
        while pos < end:
            tag, pos = _read_varint(buf, pos, end)
            number = tag >> 3
            wire_type = tag & 7
            if number == 0:
                raise DecodeError("field number 0 is invalid")
            field = by_number.get(number)
            if field is None:
                pos = _skip_field(buf, pos, end, wire_type, number)
                continue
            kind = field.kind
            if wire_type == WT_LEN and field.wire_type == WT_LEN:
                length, pos = _read_varint(buf, pos, end)
                stop = pos + length
                if stop > end:
                    raise DecodeError(f"{cls.FULL_NAME}.{field.name}: truncated")
                if kind is Kind.STRING:
                    try:
                        value: Any = str(buf[pos:stop], "utf-8")
                    except UnicodeDecodeError:
                        raise DecodeError(f"{cls.FULL_NAME}.{field.name}: invalid UTF-8") from None
                elif kind is Kind.BYTES:
                    value = buf[pos:stop] if borrow else bytes(buf[pos:stop])
                elif kind is Kind.MESSAGE:
                    if field.oneof is not None:
                        _clear_oneof(cls, field, values, pending)
                    pending.setdefault(field.name, []).append(buf[pos:stop])
                    pos = stop
                    continue
                else:  # Kind.MAP
                    key, item = _decode_map_entry(buf, pos, stop)
                    values.setdefault(field.name, {})[key] = item
                    pos = stop
                    continue
                pos = stop
            elif wire_type == WT_LEN and field.repeated:
                # A packed repeated scalar.
                length, pos = _read_varint(buf, pos, end)
                stop = pos + length
                if stop > end:
                    raise DecodeError(f"{cls.FULL_NAME}.{field.name}: truncated")
                items = values.setdefault(field.name, [])
                while pos < stop:
                    item, pos = _decode_scalar(buf, pos, stop, field)
                    items.append(item)
                continue
            elif wire_type == field.wire_type:
                value, pos = _decode_scalar(buf, pos, end, field)
            else:
                # The wrong wire type for a known field: treat it as unknown.
                pos = _skip_field(buf, pos, end, wire_type, number)
                continue
            if field.repeated:
                values.setdefault(field.name, []).append(value)
            else:
                if field.oneof is not None:
                    _clear_oneof(cls, field, values, pending)
                values[field.name] = value
        if pos != end:
            raise DecodeError(f"{cls.FULL_NAME}: truncated message")
        for name, chunks in pending.items():
            field = cls._BY_JSON[name]
            decode = field.message_type()._decode
            if field.repeated:
                # Each occurrence of a repeated message field is one element.
                values[name] = [decode(chunk, 0, len(chunk), borrow) for chunk in chunks]
                continue
            joined = chunks[0] if len(chunks) == 1 else memoryview(b"".join(chunks))
            values[name] = decode(joined, 0, len(joined), borrow)
        return cls(**values)

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The proto3 JSON form, as a dict ready for :func:`json.dumps`."""
        out: dict[str, Any] = {}
        for field in self.FIELDS:
            value = getattr(self, field.name)
            if _is_default(field, value):
                continue
            if field.kind is Kind.MAP:
                out[field.json_name] = dict(value)
            elif field.repeated:
                out[field.json_name] = [_json_value(field, item) for item in value]
            else:
                out[field.json_name] = _json_value(field, value)
        return out

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls: type[_M], obj: Any) -> _M:
        """Parse the proto3 JSON form (a dict); both field name spellings are accepted and
        unknown fields are ignored."""
        if not isinstance(obj, dict):
            raise DecodeError(f"{cls.FULL_NAME}: expected a JSON object, got {_jtype(obj)}")
        values: dict[str, Any] = {}
        seen_oneofs: dict[str, str] = {}
        for key, raw in obj.items():
            field = cls._BY_JSON.get(key)
            if field is None or raw is None:
                continue
            if field.name in values:
                raise DecodeError(f"{cls.FULL_NAME}: field {field.name!r} given twice")
            if field.oneof is not None:
                other = seen_oneofs.setdefault(field.oneof, field.name)
                if other != field.name:
                    raise DecodeError(
                        f"{cls.FULL_NAME}: oneof {field.oneof!r} has both {other!r} and "
                        f"{field.name!r}"
                    )
            where = f"{cls.FULL_NAME}.{field.json_name}"
            if field.kind is Kind.MAP:
                if not isinstance(raw, dict):
                    raise DecodeError(f"{where}: expected an object, got {_jtype(raw)}")
                mapping: dict[str, str] = {}
                for k, v in raw.items():
                    if not isinstance(v, str):
                        raise DecodeError(f"{where}[{k!r}]: expected a string, got {_jtype(v)}")
                    mapping[k] = v
                values[field.name] = mapping
            elif field.repeated:
                if not isinstance(raw, list):
                    raise DecodeError(f"{where}: expected an array, got {_jtype(raw)}")
                values[field.name] = [_from_json_value(field, item, where) for item in raw]
            else:
                values[field.name] = _from_json_value(field, raw, where)
        return cls(**values)

    @classmethod
    def from_json_bytes(cls: type[_M], data: bytes | bytearray | memoryview | str) -> _M:
        try:
            obj = json.loads(bytes(data) if not isinstance(data, (bytes, str)) else data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{cls.FULL_NAME}: invalid JSON: {exc}") from None
        return cls.from_json(obj)


def _clear_oneof(
    cls: type[Message], field: Field, values: dict[str, Any], pending: dict[str, Any]
) -> None:
    assert field.oneof is not None
    for other in cls._ONEOFS[field.oneof]:
        if other is not field:
            values.pop(other.name, None)
            pending.pop(other.name, None)


def _encode_value(parts: list[bytes], tag: bytes, field: Field, value: Any) -> None:
    kind = field.kind
    if kind is Kind.STRING:
        raw = value.encode("utf-8")
        parts += (tag, encode_varint(len(raw)), raw)
    elif kind is Kind.BYTES:
        parts += (tag, encode_varint(len(value)), value)
    elif kind is Kind.MESSAGE:
        inner: list[bytes] = []
        value._encode_into(inner)
        body = b"".join(inner)
        parts += (tag, encode_varint(len(body)), body)
    elif kind is Kind.BOOL:
        parts += (tag, b"\x01" if value else b"\x00")
    elif kind is Kind.DOUBLE:
        parts += (tag, _DOUBLE.pack(value))
    else:
        low, high = _RANGES[kind]
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"{field.name}={number} is out of range for {kind.value}")
        parts += (tag, encode_varint(number))


def _encode_map_entry(key: str, value: str) -> bytes:
    k = key.encode("utf-8")
    v = value.encode("utf-8")
    out = b""
    if k:
        out += b"\x0a" + encode_varint(len(k)) + k
    if v:
        out += b"\x12" + encode_varint(len(v)) + v
    return out


def _decode_map_entry(buf: memoryview, pos: int, end: int) -> tuple[str, str]:
    key = value = ""
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number in (1, 2) and wire_type == WT_LEN:
            length, pos = _read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("map entry: truncated")
            try:
                text = str(buf[pos:stop], "utf-8")
            except UnicodeDecodeError:
                raise DecodeError("map entry: invalid UTF-8") from None
            if number == 1:
                key = text
            else:
                value = text
            pos = stop
        else:
            pos = _skip_field(buf, pos, end, wire_type, number)
    if pos != end:
        raise DecodeError("map entry: truncated")
    return key, value


def _decode_scalar(buf: memoryview, pos: int, end: int, field: Field) -> tuple[Any, int]:
    kind = field.kind
    if kind is Kind.DOUBLE:
        if pos + 8 > end:
            raise DecodeError(f"{field.name}: truncated double")
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
    raw, pos = _read_varint(buf, pos, end)
    if kind is Kind.BOOL:
        return raw != 0, pos
    if kind is Kind.UINT32:
        return raw & _MASK32, pos
    if kind is Kind.UINT64:
        return raw, pos
    if kind is Kind.INT64:
        return _signed(raw, 64), pos
    value = _signed(raw, 32)  # int32 and enums
    if kind is Kind.ENUM and field.enum is not None:
        try:
            return field.enum(value), pos
        except ValueError:
            return value, pos  # proto3 enums are open: keep the number
    return value, pos


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), "a number"
    )


def _json_value(field: Field, value: Any) -> Any:
    kind = field.kind
    if kind is Kind.BYTES:
        return base64.b64encode(value).decode("ascii")
    if kind in (Kind.INT64, Kind.UINT64):
        return str(int(value))
    if kind is Kind.ENUM:
        if field.enum is not None:
            try:
                return field.enum(value).name
            except ValueError:
                pass
        return int(value)
    if kind is Kind.DOUBLE:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if kind is Kind.MESSAGE:
        return value.to_json()
    return value


def _from_json_value(field: Field, raw: Any, where: str) -> Any:
    kind = field.kind
    if kind is Kind.STRING:
        if not isinstance(raw, str):
            raise DecodeError(f"{where}: expected a string, got {_jtype(raw)}")
        return raw
    if kind is Kind.BOOL:
        if not isinstance(raw, bool):
            raise DecodeError(f"{where}: expected true or false, got {_jtype(raw)}")
        return raw
    if kind is Kind.BYTES:
        if not isinstance(raw, str):
            raise DecodeError(f"{where}: expected a base64 string, got {_jtype(raw)}")
        text = raw.strip().replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError(f"{where}: invalid base64") from None
    if kind is Kind.MESSAGE:
        return field.message_type().from_json(raw)
    if kind is Kind.DOUBLE:
        if isinstance(raw, bool):
            raise DecodeError(f"{where}: expected a number, got a boolean")
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
            if raw in special:
                return special[raw]
            try:
                return float(raw)
            except ValueError:
                pass
        raise DecodeError(f"{where}: expected a number, got {raw!r}")
    if kind is Kind.ENUM and isinstance(raw, str) and field.enum is not None:
        try:
            return field.enum[raw]
        except KeyError:
            raise DecodeError(f"{where}: unknown enum value {raw!r}") from None
    return _json_int(field, raw, where)


def _json_int(field: Field, raw: Any, where: str) -> int:
    if isinstance(raw, bool):
        raise DecodeError(f"{where}: expected an integer, got a boolean")
    number: int | None = None
    if isinstance(raw, int):
        number = raw
    elif isinstance(raw, float) and raw.is_integer():
        number = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = math.nan
            if as_float.is_integer():
                number = int(as_float)
    if number is None:
        raise DecodeError(f"{where}: expected an integer, got {raw!r}")
    low, high = _RANGES[field.kind]
    if not low <= number <= high:
        raise DecodeError(f"{where}: {number} is out of range for {field.kind.value}")
    if field.kind is Kind.ENUM and field.enum is not None:
        try:
            member: int = field.enum(number)
            return member
        except ValueError:
            return number
    return number
